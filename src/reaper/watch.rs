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

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::io::Interest;
use tokio::time::Instant;

use super::idle::read_idle_bytes;
use crate::member::Shared;
use crate::member::state::Kind;
use crate::protocol::Protocol;
use crate::stats::EvictReason;
use crate::transport::probe::{self, Health};

/// After this many benign idle reads in a row with bytes still waiting, the protocol is not
/// draining what arrives: evict instead of spinning.
pub(crate) const MAX_IDLE_READS: u32 = 16;

/// Watches one member's socket while it is idle; ends when the member is dead.
pub(super) async fn watch<P: Protocol>(sh: Arc<Shared<P>>) {
    let mut reads_in_a_row = 0;
    // A revived entry gets a new watcher: this one ends with the life it was started for.
    let life = sh.life();
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
                sh.condemn(reason, Instant::now());
                let now = sh.state();
                if sh.evict_in_place(st, reason)
                    || (now.kind() == Kind::Idle && sh.evict_in_place(now, reason))
                {
                    return;
                }
            }
        }
    }
}
