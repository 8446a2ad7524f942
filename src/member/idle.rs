//! Bytes that arrived on an idle member: the protocol reads them through its own stack
//! (TLS included) and keeps the member or evicts it with a reason. A member operation, run
//! by whoever found the bytes: the reaper's idle watch, or a checkout's peek
//! (`Manager::recycle`).

use std::sync::Arc;

use super::Shared;
use crate::protocol::{IdleVerdict, Protocol};
use crate::stats::EvictReason;

/// After this many benign idle reads in a row with bytes still waiting, the protocol is not
/// draining what arrives: evict instead of spinning.
pub(crate) const MAX_IDLE_READS: u32 = 16;

/// Runs the protocol's `idle_bytes` on a member the caller made busy, bounded by
/// `heartbeat_timeout`, and ends the busy state with its verdict. Returns true when the
/// member was kept. `fresh`: the bytes were seen by a peek, not by the reactor, so wait for
/// the socket's readiness first (tokio's reads answer from cached readiness).
pub(crate) async fn read_idle_bytes<P: Protocol>(sh: Arc<Shared<P>>, fresh: bool) -> bool {
    let Some(mut conn) = sh.take_conn() else {
        sh.end_busy(Some(EvictReason::UnexpectedData));
        return false;
    };
    let timeout = sh.pool.config.heartbeat_timeout;
    let protocol = sh.protocol.clone();
    let res = tokio::time::timeout(timeout, async {
        if fresh {
            let _ = P::io(&conn).socket().readable().await;
        }
        protocol.idle_bytes(&mut conn).await
    })
    .await;
    if matches!(res, Ok(IdleVerdict::Keep)) {
        // Reading what is there now ends with a read that found nothing more (after a RESP3
        // push or TLS session tickets): that read was given up, not cut off halfway.
        P::io_mut(&mut conn).clear_read_pending();
    }
    let verdict = match res {
        Ok(IdleVerdict::Keep) => match P::io(&conn).dirty_reason(false) {
            Some(_) => IdleVerdict::Evict(EvictReason::UnexpectedData),
            None => IdleVerdict::Keep,
        },
        Ok(v) => v,
        // Half a message that never completed.
        Err(_) => IdleVerdict::Evict(EvictReason::UnexpectedData),
    };
    match verdict {
        IdleVerdict::Keep => {
            tracing::trace!(conn.id = sh.id(), "benign bytes on an idle connection");
            sh.pool
                .stats
                .idle_reads_kept
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            P::io_mut(&mut conn).clear_pending();
            sh.put_conn(conn);
            sh.end_busy(None);
            true
        }
        IdleVerdict::Evict(reason) => {
            tracing::debug!(
                conn.id = sh.id(),
                reason = reason.as_str(),
                "bytes on an idle connection evict it"
            );
            drop(conn);
            sh.end_busy(Some(reason));
            false
        }
    }
}
