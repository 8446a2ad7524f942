//! One member's turn on the heartbeat wheel: max lifetime, idle timeout above `min_idle`, a
//! dead I/O driver, or a heartbeat that is due. Each is decided for this member alone, at the
//! time it falls due, and each eviction happens in place (see the member docs): no pass over
//! deadpool's queue.

use std::sync::Arc;

use tokio::time::Instant;

use crate::member::Shared;
use crate::member::state::Kind;
use crate::protocol::Protocol;
use crate::stats::EvictReason;

/// What to do with a member after its turn.
pub(super) enum Turn {
    /// Gone (dead or evicted now): no longer scheduled.
    Done,
    /// Look again at this time.
    Again(Instant),
    /// Its heartbeat is due: ping it (the beat schedules it again).
    Beat,
}

/// Decides one member's turn at `now`. `tick` is the wheel's granularity: how soon a member
/// that is in use (or busy elsewhere) is looked at again.
pub(super) fn visit<P: Protocol>(sh: &Arc<Shared<P>>, now: Instant) -> Turn {
    let cfg = &sh.pool.config;
    let st = sh.state();
    match st.kind() {
        Kind::Dead => return Turn::Done,
        // Its return sets when it is due again; the next turn reads that.
        Kind::InUse | Kind::Busy => return Turn::Again(now + cfg.reap_interval),
        Kind::Idle => {}
    }
    // Its runtime is gone: no heartbeat or checkout could use it.
    let reason = if sh.socket().is_none_or(|s| s.driver_gone()) {
        Some(EvictReason::DriverGone)
    } else {
        sh.expired(now)
    };
    if let Some(reason) = reason {
        return if sh.evict_in_place(st, reason) {
            Turn::Done
        } else {
            Turn::Again(now + cfg.reap_interval)
        };
    }
    if cfg.has_heartbeat && now >= sh.beat_due() {
        return Turn::Beat;
    }
    next_turn(sh, now).map_or(Turn::Done, Turn::Again)
}

/// The earliest of this member's heartbeat, lifetime end and idle timeout; `None` when the
/// configuration has none of them. An idle timeout that has passed while the pool is at
/// `min_idle` is looked at again one idle timeout later, not every tick.
pub(super) fn next_turn<P: Protocol>(sh: &Shared<P>, now: Instant) -> Option<Instant> {
    let cfg = &sh.pool.config;
    let beat = cfg.has_heartbeat.then(|| sh.beat_due());
    let idle = cfg.idle_timeout.map(|t| {
        let at = sh.returned_at() + t;
        if at > now { at } else { now + t }
    });
    [beat, sh.deadline(), idle].into_iter().flatten().min()
}
