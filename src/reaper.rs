//! The background reaper: one task per pool, holding only a weak reference to it.
//!
//! It does four jobs:
//! - **idle watch**: one small future per member (in a `FuturesUnordered` inside this task,
//!   not a tokio task each, to stay under 1 KiB per idle connection: 972 B measured, all in)
//!   awaits the idle socket's readiness and condemns the member the moment the peer closes
//!   or resets it or sends unsolicited bytes. A checkout does not touch the watcher; if the
//!   owner's traffic wakes it, it sees the member in use and parks until the return, which
//!   wakes it only if it parked. So a checkout never waits for it or switches to it, and a
//!   checkout without traffic costs it nothing. The peek runs inside `try_io`, so a
//!   WouldBlock clears tokio's readiness (no spin).
//! - **purge**: condemned members are removed from deadpool's queue with one `retain` pass
//!   (run once per batch, so 1,000 simultaneous FINs cost one pass).
//! - **tick** (`reap_interval`): idle timeout above `min_idle`, max lifetime, and due
//!   heartbeats, all decided inside one `retain` pass; heartbeats then run outside the lock
//!   through the shared socket, each with its own deadline.
//! - **refill** to `min_idle`, in a spawned task, through the breaker, up to 16 connects in
//!   flight, with a capped backoff after connect failures (reset when the breaker closes).
//!
//! Heartbeat outcomes feed the breaker: a success, a timeout (a hung or blackholed peer) or a
//! wrong reply does; a heartbeat that finds the connection closed or reset by the peer does
//! not, since one dead member is not a dead endpoint (as with evictions at checkout).
//!
//! deadpool has no way to add an idle member, so a refill checks out connections without
//! waiting (creating new ones once the idle queue is empty) and returns them all at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool::managed::Timeouts;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::breaker::Outcome;
use crate::conn::{DEAD, HEARTBEAT, IDLE, IN_USE, Shared, kind};
use crate::pool::{PoolInner, PoolShared};
use crate::probe::{self, Health};
use crate::stats::EvictReason;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

const REFILL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REFILL_BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(crate) async fn run(
    pool: Weak<PoolInner>,
    shared: Arc<PoolShared>,
    mut new_members: mpsc::UnboundedReceiver<Arc<Shared>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let span = tracing::debug_span!("livepool.reaper", peer.addr = %shared.config.addr);
    async move {
        let cfg = &shared.config;
        let mut watchers: FuturesUnordered<Task> = FuturesUnordered::new();
        let mut beats: FuturesUnordered<Task> = FuturesUnordered::new();
        let mut tick = tokio::time::interval(cfg.reap_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refill: Option<JoinHandle<bool>> = None;
        let mut backoff = REFILL_BACKOFF_MIN;
        let mut next_refill = Instant::now();
        tracing::debug!("reaper started");
        loop {
            let mut ticked = false;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(member) = new_members.recv() => watchers.push(Box::pin(watch(member))),
                Some(()) = watchers.next(), if !watchers.is_empty() => {}
                Some(()) = beats.next(), if !beats.is_empty() => {}
                _ = shared.wake.notified() => {}
                _ = tick.tick() => ticked = true,
            }
            let purge = shared.take_purge();
            if purge || ticked || shared.members() < shared.min_idle() {
                let Some(inner) = pool.upgrade() else { break };
                if purge || ticked {
                    maintain(&inner, ticked, &mut beats);
                }
                if inner.dp.is_closed() {
                    break;
                }
                // Refill to min_idle: one refill task at a time, backing off on failure.
                if let Some(done) = refill.as_mut().and_then(|h| h.now_or_never()) {
                    refill = None;
                    if done.unwrap_or(false) {
                        backoff = REFILL_BACKOFF_MIN;
                    } else {
                        next_refill = Instant::now() + backoff;
                        backoff = (backoff * 2).min(REFILL_BACKOFF_MAX);
                    }
                }
                if shared.take_refill_now() {
                    backoff = REFILL_BACKOFF_MIN;
                    next_refill = Instant::now();
                }
                if refill.is_none()
                    && shared.members() < shared.min_idle()
                    && Instant::now() >= next_refill
                {
                    refill = Some(tokio::spawn(fill(inner.dp.clone(), shared.clone())));
                }
                // The strong reference is dropped here, before the next await.
            }
        }
        if let Some(h) = refill {
            h.abort();
        }
        tracing::debug!("reaper stopped");
    }
    .instrument(span)
    .await
}

/// Removes condemned members and, on a tick, applies idle timeout, max lifetime and
/// schedules heartbeats, all in one pass under deadpool's lock (cheap checks only).
fn maintain(inner: &PoolInner, ticked: bool, beats: &mut FuturesUnordered<Task>) {
    let shared = &inner.shared;
    let cfg = &shared.config;
    let now = Instant::now();
    let mut closable = shared.members().saturating_sub(shared.min_idle());
    let mut due = Vec::new();
    let removed = inner.dp.retain(|m, _| {
        let sh = &m.shared;
        let st = sh.state();
        match kind(st) {
            DEAD => return false,
            IN_USE | HEARTBEAT => return true,
            _ => {}
        }
        if !ticked {
            return true;
        }
        if sh.deadline.is_some_and(|d| now >= d) {
            sh.condemn(EvictReason::MaxLifetime, now);
            return false;
        }
        // The queue's front holds the coldest members: they go first.
        if closable > 0
            && cfg
                .idle_timeout
                .is_some_and(|t| now.saturating_duration_since(sh.returned_at()) >= t)
        {
            closable -= 1;
            sh.condemn(EvictReason::IdleTimeout, now);
            return false;
        }
        if cfg.heartbeat.is_some()
            && now.saturating_duration_since(sh.last_alive()) >= cfg.heartbeat_interval_for(sh.id)
            && sh.begin_heartbeat(st)
        {
            due.push(sh.clone());
        }
        true
    });
    // Members are dropped (sockets closed, evictions recorded) outside deadpool's lock.
    drop(removed);
    #[cfg(feature = "metrics")]
    if ticked {
        shared.metrics.status(&inner.status());
    }
    if ticked && let Some(threshold) = cfg.leak_threshold {
        for member in shared.live_members() {
            if member.check_leak(now, threshold) {
                shared
                    .stats
                    .leaks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    if let Some(hb) = &cfg.heartbeat {
        for sh in due {
            beats.push(Box::pin(beat(sh, hb.clone(), shared.clone())));
        }
    }
}

/// One heartbeat of an idle member, in place, with its own deadline.
async fn beat(sh: Arc<Shared>, hb: Arc<dyn crate::Heartbeat>, shared: Arc<PoolShared>) {
    let timeout = shared.config.heartbeat_timeout;
    let res = tokio::time::timeout(timeout, hb.beat(&sh.stream)).await;
    let failure = match res {
        Ok(Ok(())) => {
            shared
                .stats
                .heartbeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.report(Outcome::Success, None);
            None
        }
        // The peer closed or reset this one connection during the beat: a dead member, like
        // one the idle watch finds, not evidence that the endpoint is unhealthy.
        Ok(Err(e)) if member_died(&e) => {
            tracing::debug!(conn.id = sh.id, error = %e, "peer closed the connection during a heartbeat");
            Some(EvictReason::HeartbeatFailed)
        }
        Ok(Err(e)) => {
            tracing::debug!(conn.id = sh.id, error = %e, "heartbeat failed");
            shared.report(
                Outcome::Failure,
                Some(&std::io::Error::other(e.to_string())),
            );
            Some(if e.is_bad_reply() {
                EvictReason::HeartbeatBadReply
            } else {
                EvictReason::HeartbeatFailed
            })
        }
        Err(_) => {
            let io = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("heartbeat unanswered within {timeout:?}"),
            );
            shared.report(Outcome::Failure, Some(&io));
            Some(EvictReason::HeartbeatTimeout)
        }
    };
    sh.end_heartbeat(failure);
}

/// True when a heartbeat failed because this connection died (closed or reset by the peer),
/// which says nothing about the endpoint's health.
fn member_died(e: &crate::HeartbeatError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    e.is_closed()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                )
            })
}

/// Watches one member's socket while it is idle; ends when the member is dead.
async fn watch(sh: Arc<Shared>) {
    loop {
        let notified = sh.notify.notified();
        tokio::pin!(notified);
        // Register before reading the state: a change after this read wakes us.
        notified.as_mut().enable();
        let st = sh.state();
        match kind(st) {
            DEAD => return,
            IDLE => {}
            _ => {
                sh.park_watcher(st, notified.as_mut()).await;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = &mut notified => {}
            ready = sh.stream.readable() => {
                let health = match ready {
                    Ok(()) => {
                        let res = sh.stream.try_io(Interest::READABLE, || probe::peek(&sh.stream));
                        probe::classify(&res)
                    }
                    Err(_) => Health::Dead(EvictReason::SocketError),
                };
                if let Health::Dead(reason) = health {
                    // EOF, RST and socket errors are permanent (and reading an error clears
                    // it): record the first one even if the member was checked out meanwhile.
                    // Unread bytes are not: while checked out they are the owner's response.
                    let permanent = reason != EvictReason::UnexpectedData;
                    if permanent {
                        sh.condemn(reason, Instant::now());
                    }
                    // A permanent death also holds for a newer generation of an idle member.
                    if sh.mark_dead(st, reason) || (permanent && sh.mark_dead(sh.state(), reason)) {
                        sh.pool.request_purge();
                        return;
                    }
                }
            }
        }
    }
}

/// Opens connections until the pool holds `min_idle`, then returns them all to the idle
/// queue. True when it reached the target.
async fn fill(
    dp: deadpool::managed::Pool<crate::manager::Manager, crate::Conn>,
    shared: Arc<PoolShared>,
) -> bool {
    // Up to this many checkouts (in effect, connects) in flight. A sliding window, not
    // batches: one slow connect (a SYN retransmitted after a full listen backlog costs 1 s)
    // must not hold up the others.
    const WINDOW: usize = 16;
    let no_wait = Timeouts {
        wait: Some(Duration::ZERO),
        ..dp.timeouts()
    };
    let mut held = Vec::new();
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < WINDOW
            && shared.members() + inflight.len() < shared.min_idle()
            && held.len() + inflight.len() < shared.max_size()
        {
            inflight.push(dp.timeout_get(&no_wait));
        }
        match inflight.next().await {
            None => return true,
            Some(Ok(conn)) => held.push(conn),
            // Every slot is checked out right now: not a failure of the endpoint; the next
            // wake-up or tick tries again, without backing off.
            Some(Err(deadpool::managed::PoolError::Timeout(_))) => return true,
            Some(Err(e)) => {
                tracing::debug!(error = ?e, "refill stopped");
                return false;
            }
        }
    }
}
