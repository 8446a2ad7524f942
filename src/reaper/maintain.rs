//! The purge and the tick, in one deadpool `retain` pass under its lock (cheap checks only).

use std::sync::Arc;

use tokio::time::Instant;

use super::Deadpool;
use crate::member::Shared;
use crate::member::state::Kind;
use crate::pool::shared::PoolShared;
use crate::protocol::Protocol;
use crate::stats::EvictReason;

/// Removes condemned members and, on a tick, applies idle timeout and max lifetime and marks
/// the members whose heartbeat is due as busy. Returns those members, to ping outside the
/// lock.
pub(super) fn maintain<P: Protocol>(
    dp: &Deadpool<P>,
    shared: &PoolShared,
    ticked: bool,
) -> Vec<Arc<Shared<P>>> {
    let cfg = &shared.config;
    let now = Instant::now();
    let mut closable = shared.members().saturating_sub(shared.min_idle());
    let mut due = Vec::new();
    let removed = dp.retain(|m, _| {
        let sh = &m.shared;
        let st = sh.state();
        match st.kind() {
            Kind::Dead => return false,
            Kind::InUse | Kind::Busy => return true,
            Kind::Idle => {}
        }
        if !ticked {
            return true;
        }
        // Its runtime is gone: no heartbeat or checkout could use it.
        if sh.sock.driver_gone() {
            sh.condemn(EvictReason::DriverGone, now);
            return false;
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
        if cfg.has_heartbeat
            && now.saturating_duration_since(sh.last_alive()) >= cfg.heartbeat_interval_for(sh.id)
            && sh.begin_busy(st)
        {
            due.push(sh.clone());
        }
        true
    });
    // Members are dropped (sockets closed, evictions recorded) outside deadpool's lock.
    drop(removed);
    #[cfg(feature = "metrics")]
    if ticked {
        shared
            .metrics
            .status(&crate::pool::status_of(dp.status(), shared));
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
    due
}
