//! [`Status`]: the pool's occupancy as users see it, from deadpool's status, the husk count
//! and the breaker (`PoolShared::status` gathers them).

use crate::breaker::BreakerState;

/// A snapshot of the pool's occupancy, eventually consistent. It counts live members only:
/// a member evicted while idle is gone from it at once, although its empty entry may stay
/// in the underlying queue until a checkout or the refill reuses it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
/// let s = pool.status();
/// assert_eq!((s.size, s.idle, s.in_use, s.waiting), (0, 0, 0, 0));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Status {
    /// Most connections allowed.
    pub max_size: usize,
    /// Connections open now, idle or in use.
    pub size: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The circuit breaker's state (always closed when the breaker is off).
    pub breaker: BreakerState,
}

impl Status {
    /// The pool's occupancy from deadpool's status and the breaker's state, without the
    /// `husks` (entries of members evicted in place, which deadpool still counts).
    pub(crate) fn new(s: &deadpool::Status, husks: usize, breaker: BreakerState) -> Status {
        let (size, idle) = occupancy(s, husks);
        Status {
            max_size: s.max_size,
            size,
            idle,
            in_use: size - idle,
            waiting: s.waiting,
            breaker,
        }
    }
}

/// Members (live, `husks` excluded) and idle members from deadpool's status.
pub(crate) fn occupancy(s: &deadpool::Status, husks: usize) -> (usize, usize) {
    let idle = s.available.saturating_sub(husks);
    let size = s.size.saturating_sub(husks).max(s.size - s.available);
    (size, idle)
}
