//! Refill to `min_idle`.
//!
//! deadpool has no way to add an idle member, so a refill checks out connections without
//! waiting (creating new ones — connect, TLS and the protocol's setup — once the idle queue
//! is empty) and returns them all at once.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::Timeouts;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::Deadpool;
use crate::member::Conn;
use crate::pool::shared::PoolShared;
use crate::protocol::Protocol;

/// Opens connections until the pool holds `min_idle`, then returns them all to the idle
/// queue. True when it reached the target.
pub(super) async fn fill<P: Protocol>(dp: Deadpool<P>, shared: Arc<PoolShared>) -> bool {
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
    // Set when the refill stops early: whether that still counts as reaching the target.
    // The connects already started are then awaited, not dropped: one of them may be the
    // breaker's half-open probe, and dropping it abandons the probe. With two or more
    // connects per refill, the sibling that the half-open breaker refuses at once would
    // otherwise abandon the probe every time, and the breaker would never close.
    let mut stopped = None;
    loop {
        while stopped.is_none()
            && inflight.len() < WINDOW
            && shared.members() + inflight.len() < shared.min_idle()
            && held.len() + inflight.len() < shared.max_size()
        {
            inflight.push(dp.timeout_get(&no_wait));
        }
        match inflight.next().await {
            None => return stopped.unwrap_or(true),
            // Wrapped so that its drop is the pool's return path.
            Some(Ok(obj)) => held.push(Conn::from(obj)),
            // Every slot is checked out right now: not a failure of the endpoint; the next
            // wake-up or tick tries again, without backing off.
            Some(Err(deadpool::managed::PoolError::Timeout(_))) => {
                stopped.get_or_insert(true);
            }
            Some(Err(e)) => {
                tracing::debug!(error = ?e, "refill stopped");
                stopped = Some(false);
            }
        }
    }
}
