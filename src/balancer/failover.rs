//! Failing over: one `get()` tries endpoints in the order `select` gives until one serves,
//! one fails in a way another endpoint would not help with, or the pools' wait timeout runs
//! out; when every endpoint failed, the error lists each one with its error.
//!
//! What fails over: a refused or timed-out connect, a failed setup, a server that says it is
//! busy, an open breaker, and an endpoint removed meanwhile (its pool closed). Anything else
//! (the pool is full and stayed full, a local resource ran out) is returned as it is.
//!
//! The wait timeout is one budget for the whole `get()`, not one per endpoint, and its clock
//! starts at the first wait: a checkout that is ready at once reads no clock and arms no timer.

use std::future::Future;
use std::hash::Hash;
use std::panic::Location;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::Entry;
use super::select::{key_order, pick, pick_two};
use crate::jitter::thread_random;
use crate::member::Conn;
use crate::pool::Pool;
use crate::pool::error::Error;
use crate::protocol::Protocol;

/// `Balancer::get` once it has the endpoint list: the first choice on the fast path, then
/// the others as `pick` orders them.
pub(super) async fn get<P: Protocol>(
    entries: &[Entry<P>],
    at: &'static Location<'static>,
) -> Result<Conn<P>, Error> {
    let mut deadline = Deadline::new(entries);
    // The common case: both choices in service, the better one serves.
    let first = match pick_two(entries, thread_random) {
        Some(i) => match checkout(&entries[i].pool, at, &mut deadline).await {
            Ok(conn) => return Ok(conn),
            Err(e) if fails_over(&e) => Some((i, e)),
            Err(e) => return Err(e),
        },
        None => None,
    };
    let mut tried = vec![false; entries.len()];
    let mut failures = Vec::new();
    if let Some((i, e)) = first {
        tried[i] = true;
        note_failover(&entries[i], &e);
        failures.push(e);
        if deadline.passed() {
            return Err(Error::all_endpoints(failures));
        }
    }
    let order = std::iter::from_fn(|| {
        let i = pick(entries, &tried, thread_random)?;
        tried[i] = true;
        Some(i)
    });
    try_in_order(entries, order, at, deadline, failures).await
}

/// `Balancer::get_for` once it has the endpoint list: the endpoints in the key's order.
pub(super) async fn get_for<P: Protocol, K: Hash + ?Sized>(
    entries: &[Entry<P>],
    key: &K,
    at: &'static Location<'static>,
) -> Result<Conn<P>, Error> {
    let order = key_order(entries, key);
    let deadline = Deadline::new(entries);
    try_in_order(entries, order.into_iter(), at, deadline, Vec::new()).await
}

/// The deadline of one `get()`: the pools' wait timeout from the first time it has to wait
/// (a checkout that is ready at once reads no clock and arms no timer).
struct Deadline {
    wait: Option<Duration>,
    at: Option<Option<Instant>>,
}

impl Deadline {
    fn new<P: Protocol>(entries: &[Entry<P>]) -> Self {
        Deadline {
            wait: entries.first().and_then(|e| e.pool.wait_timeout()),
            at: None,
        }
    }

    fn get(&mut self) -> Option<Instant> {
        let wait = self.wait;
        *self
            .at
            .get_or_insert_with(|| wait.map(|t| Instant::now() + t))
    }

    fn passed(&mut self) -> bool {
        self.get().is_some_and(|d| Instant::now() >= d)
    }
}

fn note_failover<P: Protocol>(entry: &Entry<P>, e: &Error) {
    tracing::debug!(endpoint = entry.pool.endpoint(), error = %e, "failing over");
}

/// Tries `order` one after the other, failing over as `get` does; `failures` are those of
/// endpoints tried before.
async fn try_in_order<P: Protocol>(
    entries: &[Entry<P>],
    order: impl Iterator<Item = usize>,
    at: &'static Location<'static>,
    mut deadline: Deadline,
    mut failures: Vec<Error>,
) -> Result<Conn<P>, Error> {
    for i in order {
        match checkout(&entries[i].pool, at, &mut deadline).await {
            Ok(conn) => return Ok(conn),
            Err(e) if fails_over(&e) => {
                note_failover(&entries[i], &e);
                failures.push(e);
                if deadline.passed() {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::all_endpoints(failures))
}

/// One endpoint's `get()`, cut short at the caller's deadline. Polled once first: an idle
/// member is handed out then, without a timer.
async fn checkout<P: Protocol>(
    pool: &Pool<P>,
    at: &'static Location<'static>,
    deadline: &mut Deadline,
) -> Result<Conn<P>, Error> {
    let mut fut = std::pin::pin!(pool.get_from(at));
    if let Poll::Ready(res) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return res;
    }
    match deadline.get() {
        Some(d) => match tokio::time::timeout_at(d, fut).await {
            Ok(res) => res,
            // The wait timeout ran out during this endpoint's connect: what it did is the
            // answer, not the time.
            Err(_) => Err(pool.timeout_error()),
        },
        None => fut.await,
    }
}

/// Whether another endpoint could do better than this error. A closed pool is an endpoint
/// removed while this `get()` held the old list.
fn fails_over(e: &Error) -> bool {
    e.is_connect()
        || e.is_setup()
        || e.is_config()
        || e.is_server_busy()
        || e.is_circuit_open()
        || e.is_closed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::error::TimeoutPhase;
    use crate::protocol::SetupError;

    #[test]
    fn errors_another_endpoint_could_fix_fail_over() {
        let ep = || -> std::sync::Arc<str> { "10.0.0.1:6379".into() };
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let over = [
            Error::connect(ep(), io()),
            Error::connect_timeout(ep(), io()),
            Error::setup(ep(), SetupError::rejected("WRONGPASS")),
            Error::server_busy(ep(), SetupError::rejected("LOADING")),
            Error::config(ep(), "wrong database".into(), None),
            Error::circuit_open(ep(), Duration::from_secs(1), None),
            Error::closed(),
        ];
        for e in &over {
            assert!(fails_over(e), "{e}");
        }
        let stay = [
            // The pool was full and stayed full: the caller's own wait ran out.
            Error::timeout(TimeoutPhase::Wait, Some(ep())),
            Error::local_resource(ep(), "file descriptors", io()),
        ];
        for e in &stay {
            assert!(!fails_over(e), "{e}");
        }
    }
}
