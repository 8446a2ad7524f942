//! [`Conn`]: a checked-out connection, and the return path in its `Drop`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool::managed::Object;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::time::Instant;

use super::Shared;
use crate::breaker::Outcome;
use crate::pool::manager::Manager;
use crate::protocol::{Protocol, Raw};
use crate::stats::EvictReason;
use crate::transport::probe::{self, Health};

/// A connection checked out of a [`Pool`](crate::Pool).
///
/// It derefs (mutably) to the protocol's connection: for the default [`Raw`] protocol that is
/// [`Io`](crate::Io), which reads and writes with tokio's `AsyncReadExt`/`AsyncWriteExt` (and `Conn<Raw>`
/// itself implements `AsyncRead`/`AsyncWrite` too). When dropped it goes back to the pool
/// only if it is clean:
/// - no I/O error was seen and no read returned end-of-file;
/// - no read or write was pending (a caller's future was cancelled mid-operation — this
///   includes a read that lost a `select!`: the safe side of the trade), and over TLS
///   nothing is left unsent;
/// - with the default request/response policy, no write is left without a read after it, and
///   over TLS no decrypted bytes are left unread;
/// - [`Io::mark_broken`](crate::Io::mark_broken) was not called, the protocol says it is clean
///   ([`Protocol::is_clean`]), and the connection is within its lifetime.
///
/// Otherwise it is closed, and the eviction counted with its reason.
///
/// The raw protocol cannot see message boundaries: a client that stops reading in the middle
/// of a response and drops the connection without an error must call [`Io::mark_broken`](crate::Io::mark_broken), or
/// the rest of that response reaches the next caller. (Unread bytes that have already
/// arrived are found by the peek at the next checkout, or at once by the idle watch.) A
/// protocol that tracks its replies ([`Protocol::is_clean`]) closes that gap.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # async fn demo(pool: livepool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = pool.get().await?;
/// conn.write_all(b"PING\r\n").await?;
/// let mut buf = [0u8; 7];
/// conn.read_exact(&mut buf).await?;
/// // Dropped here: clean, so it goes back to the pool.
/// # Ok(()) }
/// ```
#[must_use = "dropping a Conn returns it to the pool at once"]
pub struct Conn<P: Protocol = Raw> {
    obj: Option<Object<Manager<P>>>,
}

impl<P: Protocol> From<Object<Manager<P>>> for Conn<P> {
    fn from(obj: Object<Manager<P>>) -> Self {
        Conn { obj: Some(obj) }
    }
}

impl<P: Protocol> Conn<P> {
    fn shared(&self) -> &Shared<P> {
        // Present from construction until drop.
        &self.obj.as_ref().expect("Conn used after drop").shared
    }

    fn inner(&self) -> &P::Conn {
        self.obj
            .as_ref()
            .and_then(|o| o.conn.as_deref())
            .expect("Conn used after drop")
    }

    fn inner_mut(&mut self) -> &mut P::Conn {
        self.obj
            .as_mut()
            .and_then(|o| o.conn.as_deref_mut())
            .expect("Conn used after drop")
    }

    /// This connection's id, unique within its pool and stable for its life.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("using connection {}", conn.id());
    /// # }
    /// ```
    pub fn id(&self) -> u64 {
        self.shared().id()
    }

    /// The endpoint this connection belongs to, as configured (`"host:port"`, an address, or
    /// `"unix:/path"`): with a [`Balancer`](crate::Balancer), which server it went to.
    ///
    /// ```no_run
    /// # async fn demo(b: livepool::Balancer) { let conn = b.get().await.unwrap();
    /// println!("served by {}", conn.endpoint());
    /// # }
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.shared().pool.endpoint
    }

    /// Our address of the connection.
    ///
    /// # Errors
    /// As `getsockname(2)`; `Unsupported` on a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.local_addr().unwrap());
    /// # }
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        P::io(self.inner()).local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)` (`NotConnected` once the connection is gone); `Unsupported` on a
    /// Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.peer_addr().unwrap());
    /// # }
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        P::io(self.inner()).peer_addr()
    }

    /// Marks the connection unusable: it is closed instead of returned when dropped.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let mut conn = pool.get().await.unwrap();
    /// conn.mark_broken();
    /// assert!(conn.is_broken());
    /// # }
    /// ```
    pub fn mark_broken(&mut self) {
        P::io_mut(self.inner_mut()).mark_broken();
    }

    /// True when the connection will be closed rather than returned if dropped now.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// assert!(!conn.is_broken());
    /// # }
    /// ```
    pub fn is_broken(&self) -> bool {
        self.dirty_reason().is_some()
    }

    /// Resolves when the peer closes or resets the connection (or the socket reports an
    /// error) while you hold it, without consuming any data: `select!` on it to abandon work
    /// for a peer that is gone.
    ///
    /// It waits on the socket's readiness (no polling) and checks with a peek. While bytes
    /// you have not read yet are waiting, a FIN behind them cannot be seen by a peek; then it
    /// rechecks every 10 ms until you read them or the socket reports the close.
    ///
    /// # Cancel safety
    /// Cancel safe, and it leaves the connection as it was: tokio's read readiness is only
    /// cleared when a real peek found nothing to read.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// tokio::select! {
    ///     _ = conn.closed() => eprintln!("peer went away, abandoning the work"),
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => { /* work done */ }
    /// }
    /// # }
    /// ```
    pub async fn closed(&self) {
        let sock = P::io(self.inner()).socket();
        loop {
            match sock.ready(Interest::READABLE).await {
                Ok(r) if r.is_read_closed() || r.is_error() => return,
                Ok(_) => {}
                Err(_) => return,
            }
            let res = sock.try_io(Interest::READABLE, || probe::peek(sock));
            match probe::classify(&res) {
                Health::Alive => {}
                // Bytes for the caller: a FIN behind them is invisible to a peek.
                Health::Dead(EvictReason::UnexpectedData) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Health::Dead(_) => return,
            }
        }
    }

    fn dirty_reason(&self) -> Option<EvictReason> {
        let obj = self.obj.as_ref()?;
        let conn = obj.conn.as_ref()?;
        let pool = &obj.shared.pool;
        P::io(conn)
            .dirty_reason(pool.config.request_response)
            .or_else(|| P::driver(conn).and_then(|end| end.reason()))
            .or_else(|| (!obj.shared.protocol.is_clean(conn)).then_some(EvictReason::NotClean))
    }

    pub(crate) fn stamp_checkout(&self, at: &'static Location<'static>) {
        self.shared().stamp_checkout(Instant::now(), at);
    }
}

impl<P: Protocol> Deref for Conn<P> {
    type Target = P::Conn;
    fn deref(&self) -> &P::Conn {
        self.inner()
    }
}

impl<P: Protocol> DerefMut for Conn<P> {
    fn deref_mut(&mut self) -> &mut P::Conn {
        self.inner_mut()
    }
}

impl<P: Protocol> fmt::Debug for Conn<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.obj {
            Some(obj) => f
                .debug_struct("Conn")
                .field("id", &obj.shared.id())
                .field("local", &obj.shared.addrs().0)
                .field("peer", &obj.shared.addrs().1)
                .field("broken", &self.is_broken())
                .finish(),
            None => f.write_str("Conn(dropped)"),
        }
    }
}

impl<P: Protocol> Drop for Conn<P> {
    fn drop(&mut self) {
        let reason = self.dirty_reason();
        let Some(obj) = self.obj.take() else {
            return;
        };
        let now = Instant::now();
        let now_ns = obj.shared.pool.ns(now);
        let reason = reason.or_else(|| {
            obj.shared
                .lifetime_over(now_ns)
                .then_some(EvictReason::MaxLifetime)
        });
        // Not clean, but the protocol can bring it back: a task does that off the caller's
        // path, holding the member (still in use, so no checkout waits for it: they take
        // another idle member or a new connection), then gives it back.
        // A read cut short by a cancelled call is the protocol's to finish when it follows
        // its replies (it says so with `can_settle`).
        if (reason == Some(EvictReason::NotClean)
            || (reason == Some(EvictReason::Cancelled)
                && obj
                    .conn
                    .as_deref()
                    .is_some_and(|c| P::io(c).only_read_pending())))
            && let Some(conn) = obj.conn.as_deref()
            && obj.shared.protocol.can_settle(conn)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(settle(Settling(Some(obj))));
            return;
        }
        give_back(obj, reason, now);
    }
}

/// The end of every checkout: back to the idle queue when `reason` is `None`, otherwise
/// closed and counted (or kept as a husk for the refill).
fn give_back<P: Protocol>(mut obj: Object<Manager<P>>, reason: Option<EvictReason>, now: Instant) {
    if let Some(o) = &obj.shared.pool.config.observer {
        o.request(reason);
    }
    match (reason, obj.conn.take()) {
        (None, Some(mut conn)) => {
            // Checked clean just now: the next holder starts from a clean slate.
            P::io_mut(&mut conn).clear_pending();
            obj.shared.put_conn(conn);
            obj.shared.release(obj.shared.pool.ns(now));
            drop(obj);
        }
        (reason, conn) => {
            let reason = reason.unwrap_or(EvictReason::PoolClosed);
            // Closed now, before the eviction is recorded.
            drop(conn);
            let pool = &obj.shared.pool;
            if pool.members() <= pool.min_idle() && obj.shared.evict_on_return(reason) {
                // The refill will want an entry to revive: return it as a husk.
                drop(obj);
            } else {
                obj.shared.condemn(reason, now);
                drop(Object::take(obj));
            }
        }
    }
}

/// A returned member being settled (see [`Protocol::settle`]): given back when the task
/// finishes, closed if the task is dropped first (its runtime shut down).
struct Settling<P: Protocol>(Option<Object<Manager<P>>>);

impl<P: Protocol> Drop for Settling<P> {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            give_back(obj, Some(EvictReason::Cancelled), Instant::now());
        }
    }
}

/// Settles a returned member, bounded by the heartbeat timeout: back to the idle queue if
/// the protocol brought it to a clean state, else closed. A reply that never came
/// (`Unanswered`, or the bound reached) also counts against the endpoint, as an unanswered
/// heartbeat does: callers then fail fast on the breaker instead of waiting on a server
/// that stopped answering.
async fn settle<P: Protocol>(mut job: Settling<P>) {
    let obj = job.0.as_mut().expect("a new job holds its member");
    let pool = obj.shared.pool.clone();
    let timeout = pool.config.heartbeat_timeout;
    let protocol = obj.shared.protocol.clone();
    let seen = pool.evidence();
    let reason = match obj.conn.as_deref_mut() {
        Some(conn) => {
            // A read the last holder's call left pending is now the protocol's to finish.
            P::io_mut(conn).clear_read_pending();
            match tokio::time::timeout(timeout, protocol.settle(conn)).await {
                Ok(Ok(())) => P::io(conn).dirty_reason(false),
                Ok(Err(reason)) => Some(reason),
                Err(_) => Some(EvictReason::Unanswered),
            }
        }
        None => Some(EvictReason::NotClean),
    };
    if reason == Some(EvictReason::Unanswered) {
        let io = io::Error::new(
            io::ErrorKind::TimedOut,
            "a reply owed to a returned connection was not answered in time",
        );
        pool.report(Outcome::Failure, Some(&io), seen);
    }
    if let Some(reason) = reason {
        tracing::debug!(
            conn.id = obj.shared.id(),
            reason = reason.as_str(),
            "a returned connection could not be settled"
        );
    }
    let obj = job.0.take().expect("taken only here");
    give_back(obj, reason, Instant::now());
}

impl<P: Protocol> AsyncRead for Conn<P>
where
    P::Conn: AsyncRead + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner_mut()).poll_read(cx, buf)
    }
}

impl<P: Protocol> AsyncWrite for Conn<P>
where
    P::Conn: AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner_mut()).poll_shutdown(cx)
    }
}

/// The redis crate's typed API on a pooled connection whose protocol speaks it (as
/// `livepool-redis` does): `redis::pipe().query_async(&mut conn)` and `AsyncCommands`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl<P: Protocol> redis::aio::ConnectionLike for Conn<P>
where
    P::Conn: redis::aio::ConnectionLike,
{
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.inner_mut().req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.inner_mut()
            .req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner().get_db()
    }
}
