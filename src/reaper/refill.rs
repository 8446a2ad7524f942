//! Refill to `min_idle`.
//!
//! Members evicted in place leave their entry in deadpool's queue (a husk, see the member
//! docs). The refill opens a new connection (connect, TLS, the protocol's setup, through the
//! breaker) and puts it into such an entry: O(1) per new member, whatever the idle count.
//!
//! deadpool has no way to add an idle entry, so when no husk is left (members that died at
//! checkout, which deadpool drops itself, or a pool filling up for the first time) the
//! refill checks out connections without waiting, which creates new ones once the idle
//! queue is empty, and returns them all at once: O(idle) per refill pass.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::Timeouts;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::Deadpool;
use crate::member::{Conn, Shared};
use crate::pool::shared::PoolShared;
use crate::protocol::Protocol;

/// Up to this many connects in flight. A sliding window, not batches: one slow connect (a
/// SYN retransmitted after a full listen backlog costs 1 s) must not hold up the others.
const WINDOW: usize = 16;

/// Opens connections until the pool holds `min_idle`: into husks first, then through
/// deadpool. True when it reached the target.
pub(super) async fn fill<P: Protocol>(dp: Deadpool<P>, shared: Arc<PoolShared>) -> bool {
    match revive(&dp, &shared).await {
        Some(done) => done,
        None => fill_through_deadpool(dp, shared).await,
    }
}

/// Revives husks while there are some and the pool is short. `Some(reached)` when it is
/// done (target reached, or a connect failed), `None` when the husks ran out first.
async fn revive<P: Protocol>(dp: &Deadpool<P>, shared: &PoolShared) -> Option<bool> {
    let manager = dp.manager();
    let mut inflight = FuturesUnordered::new();
    // Set when the refill stops early. The connects already started are awaited, not
    // dropped: one of them may be the breaker's half-open probe (see `fill_through_deadpool`).
    let mut stopped = None;
    let mut out_of_husks = false;
    loop {
        while stopped.is_none()
            && !out_of_husks
            && inflight.len() < WINDOW
            && shared.members() + inflight.len() < shared.min_idle()
            && shared.has_husks()
        {
            inflight.push(manager.connect());
        }
        match inflight.next().await {
            None => break,
            Some(Ok((sock, conn))) => {
                let mut conn = Box::new(conn);
                loop {
                    let Some(husk) = shared
                        .take_husk()
                        .and_then(|h| h.downcast::<Shared<P>>().ok())
                    else {
                        // Every husk was dropped by checkouts meanwhile: this connection has
                        // no entry to go to. Rare; deadpool's own path takes over.
                        tracing::debug!("refill: no entry left for a new connection");
                        out_of_husks = true;
                        break;
                    };
                    match manager.revive(&husk, &sock, conn) {
                        Ok(()) => break,
                        Err(back) => conn = back,
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "refill stopped");
                stopped = Some(false);
            }
        }
    }
    if stopped.is_some() || shared.members() >= shared.min_idle() {
        return Some(stopped.unwrap_or(true));
    }
    None
}

/// Checks out connections without waiting (creating new ones once the idle queue is empty)
/// until the pool holds `min_idle`, then returns them all to the idle queue.
async fn fill_through_deadpool<P: Protocol>(dp: Deadpool<P>, shared: Arc<PoolShared>) -> bool {
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
