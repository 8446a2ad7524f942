//! The idle watch of one member.
//!
//! A checkout does not touch the watcher; if the owner's traffic wakes it, it sees the member
//! in use and parks until the return, which wakes it only if it parked. So a checkout never
//! waits for it or switches to it, and a checkout without traffic costs it nothing. The peek
//! runs inside `try_io`, so a WouldBlock clears tokio's readiness (no spin).
//!
//! While it waits on an idle member it holds the socket (upgraded from the member's weak
//! reference); it lets go whenever it parks, so that an eviction by someone else closes the
//! descriptor at once. A fault it sees evicts the member in place (see the member docs).
//!
//! A close or reset of an idle member also goes to the pool's idle-limit detector, with how
//! long the member had been idle (`stats/idle_limit.rs`): a server whose idle limit is
//! shorter than the heartbeat makes the pool churn, and that is said once at WARN.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::Interest;
use tokio::time::Instant;

use crate::member::state::{Kind, State};
use crate::member::{MAX_IDLE_READS, Shared, read_idle_bytes};
use crate::protocol::Protocol;
use crate::stats::EvictReason;
use crate::stats::idle_limit::{self, Sample, Settings};
use crate::transport::probe::{self, Health};

/// Watches one member's socket while it is idle; ends when the member is dead.
pub(super) async fn watch<P: Protocol>(sh: Arc<Shared<P>>) {
    let mut reads_in_a_row = 0;
    // A revived entry gets a new watcher: this one ends with the life it was started for.
    let life = sh.life();
    // Whether the connection is a hosted client's, found out the first time it is idle.
    let mut hosted_checked = false;
    loop {
        if sh.life() != life {
            return;
        }
        let st = sh.state();
        match st.kind() {
            Kind::Dead => return,
            Kind::Idle => {}
            _ => {
                reads_in_a_row = 0;
                let notified = sh.notify.notified();
                tokio::pin!(notified);
                // Registered before the state is read again: a return after this wakes us,
                // and one before it shows in the state (`park_watcher` returns at once).
                notified.as_mut().enable();
                sh.park_watcher(st, notified.as_mut()).await;
                continue;
            }
        }
        if !hosted_checked {
            match sh.driver_end() {
                // Taken from the slot since the state was read: look again.
                None => continue,
                Some(Some(end)) => return watch_driver(sh, end, life).await,
                Some(None) => hosted_checked = true,
            }
        }
        // The connection owns the socket; gone means the member was evicted meanwhile.
        let Some(sock) = sh.socket() else { return };
        // Only the socket wakes an armed watcher: a checkout's traffic (then it parks), a
        // fault, or the shutdown that every eviction by someone else does.
        let health = match sock.ready(Interest::READABLE).await {
            Ok(_) => {
                let res = sock.try_io(Interest::READABLE, || probe::peek(&sock));
                probe::classify(&res)
            }
            // tokio fails readiness waits only once the socket's I/O driver has shut down
            // (its runtime was dropped).
            Err(_) => Health::Dead(EvictReason::DriverGone),
        };
        // Let go of the socket before any eviction: it closes with the connection.
        drop(sock);
        match health {
            Health::Alive => reads_in_a_row = 0,
            // Bytes: the protocol reads them (unless the member was checked out meanwhile:
            // then they are the owner's response).
            Health::Dead(EvictReason::UnexpectedData) => {
                reads_in_a_row += 1;
                if reads_in_a_row > MAX_IDLE_READS {
                    if sh.evict_in_place(st, EvictReason::UnexpectedData) {
                        return;
                    }
                } else if sh.begin_busy(st) {
                    if !Box::pin(read_idle_bytes(sh.clone(), false)).await {
                        return;
                    }
                    // The protocol read until nothing was left (its read cleared the
                    // socket's readiness): the next bytes are a new arrival, such as the next
                    // RESP3 push, not bytes it failed to drain.
                    let Some(sock) = sh.socket() else { return };
                    if sock.readable().now_or_never().is_none() {
                        reads_in_a_row = 0;
                    }
                }
            }
            Health::Dead(reason) => {
                // EOF, RST and socket errors are permanent (and reading an error clears it):
                // record the first one even if the member was checked out meanwhile, and it
                // also holds for a newer generation of an idle member.
                let at = Instant::now();
                sh.condemn(reason, at);
                let now = sh.state();
                if evict_idle(&sh, st, reason, at)
                    || (now.kind() == Kind::Idle && evict_idle(&sh, now, reason, at))
                {
                    return;
                }
            }
        }
    }
}

/// The watch of a hosted client's member: its driver's end is the event (the socket's
/// readiness belongs to the driver; see `protocol/hosted.rs`). An idle member is evicted at
/// once with the driver's reason; one in use or heartbeating is evicted by whoever holds it,
/// which sees the end too.
async fn watch_driver<P: Protocol>(sh: Arc<Shared<P>>, end: crate::DriverEnd, life: u32) {
    let reason = end.ended().await;
    let at = Instant::now();
    if sh.life() != life {
        return;
    }
    let st = sh.state();
    if st.kind() == Kind::Idle {
        sh.condemn(reason, at);
        evict_idle(&sh, st, reason, at);
    }
}

/// Evicts a member that was idle exactly as `seen` and that the peer closed, reset or broke
/// (seen `at`); a close or reset is also told to the idle-limit detector.
fn evict_idle<P: Protocol>(
    sh: &Arc<Shared<P>>,
    seen: State,
    reason: EvictReason,
    at: Instant,
) -> bool {
    // Read before the eviction: when it succeeds, no return or heartbeat moved them since
    // `seen` (either would have changed the state word); after it, a refill may revive the
    // entry with a new connection's times.
    let (alive, returned) = (sh.last_alive(), sh.returned_at());
    if !sh.evict_in_place(seen, reason) {
        return false;
    }
    if idle_limit::counts(reason) {
        let pool = &sh.pool;
        let sample = Sample::new(
            at.saturating_duration_since(alive),
            at.saturating_duration_since(returned),
            Duration::from_nanos(pool.ns(at)),
        );
        if let Some(finding) = pool.stats.record_idle_close(sample) {
            let cfg = &pool.config;
            let settings = Settings {
                heartbeat_interval: cfg.has_heartbeat.then_some(cfg.heartbeat_interval),
                reap_interval: cfg.reap_interval,
                idle_timeout: cfg.idle_timeout,
            };
            idle_limit::warn(&pool.endpoint, &finding, &settings);
        }
    }
    true
}
