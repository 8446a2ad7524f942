//! One heartbeat of an idle member, through the protocol, with its own deadline.
//!
//! What feeds the breaker (the reasoning is in the breaker module's docs): a success, a
//! timeout (a hung or blackholed peer) and an I/O error on the path (`ETIMEDOUT`,
//! `EHOSTUNREACH`, …) do. A wrong or garbled reply only evicts the member: the server
//! answered, so it is up; the member's session or the configuration is wrong. A heartbeat
//! that finds the connection closed or reset by the peer only evicts it, since one dead
//! member is not a dead endpoint (as with evictions at checkout). A local resource failure
//! (`ENOBUFS`, `ENOMEM`) evicts the member and is counted, not fed.

use std::io;
use std::sync::Arc;

use crate::breaker::Outcome;
use crate::member::Shared;
use crate::protocol::{HeartbeatError, Protocol};
use crate::stats::EvictReason;
use crate::transport::{Blame, blame};

/// Returns the member if it is alive (to schedule its next heartbeat).
pub(super) async fn beat<P: Protocol>(
    sh: Arc<Shared<P>>,
    protocol: Arc<P>,
) -> Option<Arc<Shared<P>>> {
    let shared = &sh.pool;
    let timeout = shared.config.heartbeat_timeout;
    let Some(mut conn) = sh.take_conn() else {
        // Cannot happen: an idle member's connection is in its slot.
        sh.end_busy(Some(EvictReason::HeartbeatFailed));
        return None;
    };
    let seen = shared.evidence();
    let res = tokio::time::timeout(timeout, protocol.heartbeat(&mut conn)).await;
    let failure = match res {
        Ok(Ok(())) => match P::io(&conn).dirty_reason(false) {
            // The beat itself saw an I/O error or end of stream.
            Some(_) => Some(EvictReason::HeartbeatFailed),
            None => {
                shared
                    .stats
                    .heartbeats
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.report(Outcome::Success, None, seen);
                None
            }
        },
        // The peer closed or reset this one connection during the beat: a dead member, like
        // one the idle watch finds, not evidence that the endpoint is unhealthy.
        Ok(Err(e)) if member_died(&e) => {
            tracing::debug!(conn.id = sh.id(), error = %e, "peer closed the connection during a heartbeat");
            Some(EvictReason::HeartbeatFailed)
        }
        // The server answered, wrongly: evidence against this member (or the configuration),
        // not against new connections, which go through setup. Evict only.
        Ok(Err(e)) if e.is_bad_reply() => {
            tracing::debug!(conn.id = sh.id(), error = %e, "bad heartbeat reply");
            Some(EvictReason::HeartbeatBadReply)
        }
        Ok(Err(e)) => {
            tracing::debug!(conn.id = sh.id(), error = %e, "heartbeat failed");
            match heartbeat_io(&e) {
                // Never fed, not even as "no verdict": in half-open the machine would take it
                // for the probe's (see the breaker module's docs).
                Some(io) if matches!(blame(io), Blame::Local(_)) => shared.local_resource_error(io),
                _ => shared.report(
                    Outcome::Failure,
                    Some(&io::Error::other(e.to_string())),
                    seen,
                ),
            }
            Some(EvictReason::HeartbeatFailed)
        }
        Err(_) => {
            let io = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("heartbeat unanswered within {timeout:?}"),
            );
            shared.report(Outcome::Failure, Some(&io), seen);
            Some(EvictReason::HeartbeatTimeout)
        }
    };
    match failure {
        None => {
            P::io_mut(&mut conn).clear_pending();
            sh.put_conn(conn);
            sh.end_busy(None);
            Some(sh)
        }
        Some(reason) => {
            // Closed before the eviction is recorded.
            drop(conn);
            sh.end_busy(Some(reason));
            None
        }
    }
}

/// The `io::Error` a heartbeat failed with, if it failed with one.
fn heartbeat_io(e: &HeartbeatError) -> Option<&io::Error> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>())
}

/// True when a heartbeat failed because this connection died (closed or reset by the peer),
/// which says nothing about the endpoint's health.
fn member_died(e: &HeartbeatError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    e.is_closed()
        || heartbeat_io(e).is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        })
}
