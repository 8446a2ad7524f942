//! What the user holds ([`Conn`]), the pooled member behind it, and their shared state.
//!
//! The socket lives in an `Arc<Shared>` so that the reaper can watch and ping an idle member
//! in place while it stays in deadpool's queue. One atomic word holds the member's state
//! (idle / in use / heartbeat / dead) and a generation that every checkout and every finished
//! heartbeat bumps: a watcher or heartbeat that acts on an old snapshot of the state fails its
//! compare-and-swap instead of killing a connection someone has since checked out.
//!
//! deadpool has no return hook, so [`Conn`]'s `Drop` is the return path: it decides whether
//! the connection is clean (DESIGN.md rule 1) and either releases it to the pool or takes it
//! out and drops it. Every member is dropped exactly once, and `Member::drop` is where every
//! eviction is recorded, with the reason whoever condemned it stored first.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::Deref;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool::managed::Object;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::manager::Manager;
use crate::pool::PoolShared;
use crate::probe::{self, Health};
use crate::stats::{EvictReason, EvictionEvent};

const KIND_MASK: u64 = 0b11;
pub(crate) const IDLE: u64 = 0;
pub(crate) const IN_USE: u64 = 1;
pub(crate) const HEARTBEAT: u64 = 2;
pub(crate) const DEAD: u64 = 3;
const GEN: u64 = 1 << 2;

pub(crate) fn kind(state: u64) -> u64 {
    state & KIND_MASK
}

/// The part of a member that the reaper shares.
pub(crate) struct Shared {
    pub(crate) stream: TcpStream,
    pub(crate) id: u64,
    state: AtomicU64,
    /// 0 while no reason is stored, else `EvictReason::index() + 1`.
    reason: AtomicU8,
    detected_ns: AtomicU64,
    last_alive_ns: AtomicU64,
    returned_ns: AtomicU64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) notify: Notify,
    /// Where and when the current checkout happened (only with leak detection on).
    checkout: parking_lot::Mutex<Option<(Instant, &'static Location<'static>)>>,
    leak_reported: AtomicBool,
    watcher_parked: AtomicBool,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    pub(crate) pool: Arc<PoolShared>,
}

impl Shared {
    pub(crate) fn new(stream: TcpStream, id: u64, pool: Arc<PoolShared>) -> Self {
        let now = Instant::now();
        let now_ns = pool.ns(now);
        Shared {
            local: stream.local_addr().ok(),
            peer: stream.peer_addr().ok(),
            stream,
            id,
            state: AtomicU64::new(IN_USE),
            reason: AtomicU8::new(0),
            detected_ns: AtomicU64::new(0),
            last_alive_ns: AtomicU64::new(now_ns),
            returned_ns: AtomicU64::new(now_ns),
            deadline: pool.config.lifetime_for(id).map(|l| now + l),
            notify: Notify::new(),
            checkout: parking_lot::Mutex::new(None),
            leak_reported: AtomicBool::new(false),
            watcher_parked: AtomicBool::new(false),
            pool,
        }
    }

    pub(crate) fn state(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }

    fn cas(&self, from: u64, to: u64) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Stores why this member must go, unless a reason is stored already.
    pub(crate) fn condemn(&self, reason: EvictReason, now: Instant) {
        if self
            .reason
            .compare_exchange(
                0,
                reason.index() as u8 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.detected_ns.store(self.pool.ns(now), Ordering::Release);
        }
    }

    pub(crate) fn reason(&self) -> Option<EvictReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            r => EvictReason::from_index(r as usize - 1),
        }
    }

    /// Idle → in use, bumping the generation. False if the state moved on since `seen`.
    pub(crate) fn checkout(&self, seen: u64) -> bool {
        kind(seen) == IDLE && self.cas(seen, (seen & !KIND_MASK) + GEN + IN_USE)
    }

    /// In use → idle, stamping the return time; wakes a parked watcher.
    fn release(&self, now: Instant) {
        let ns = self.pool.ns(now);
        self.returned_ns.store(ns, Ordering::Relaxed);
        self.last_alive_ns.store(ns, Ordering::Relaxed);
        let st = self.state();
        if kind(st) == IN_USE
            && self
                .state
                .compare_exchange(st, st & !KIND_MASK, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            // Only a watcher that parked because it saw the checkout needs waking; one still
            // armed on readiness costs nothing here (no lock, no wake-up).
            && self.watcher_parked.load(Ordering::SeqCst)
        {
            self.notify.notify_waiters();
        }
    }

    /// The idle watcher parks until the member is idle again. Returns at once if it already
    /// is (or the state moved on from `seen`). With `release` this is a Dekker pair: either
    /// release sees the flag, or the watcher sees the new state.
    pub(crate) async fn park_watcher(
        &self,
        seen: u64,
        notified: Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) {
        self.watcher_parked.store(true, Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) == seen {
            notified.await;
        }
        self.watcher_parked.store(false, Ordering::SeqCst);
    }

    /// Idle → heartbeat running. False if the member is not idle in state `seen`.
    pub(crate) fn begin_heartbeat(&self, seen: u64) -> bool {
        let ok = kind(seen) == IDLE && self.cas(seen, (seen & !KIND_MASK) | HEARTBEAT);
        if ok {
            self.notify.notify_waiters();
        }
        ok
    }

    /// Heartbeat running → idle (answered; new generation) or dead (with `failure`).
    pub(crate) fn end_heartbeat(&self, failure: Option<EvictReason>) {
        let now = Instant::now();
        let st = self.state();
        if kind(st) != HEARTBEAT {
            return;
        }
        match failure {
            None => {
                self.last_alive_ns
                    .store(self.pool.ns(now), Ordering::Relaxed);
                self.cas(st, (st & !KIND_MASK) + GEN);
            }
            Some(reason) => {
                self.condemn(reason, now);
                self.cas(st, st | DEAD);
                self.pool.request_purge();
            }
        }
        self.notify.notify_waiters();
    }

    /// Idle (exactly as `seen`) → dead, for `reason`. False if it was checked out meanwhile.
    pub(crate) fn mark_dead(&self, seen: u64, reason: EvictReason) -> bool {
        if kind(seen) != IDLE || !self.cas(seen, seen | DEAD) {
            return false;
        }
        self.condemn(reason, Instant::now());
        self.notify.notify_waiters();
        true
    }

    pub(crate) fn stamp_checkout(&self, now: Instant, at: &'static Location<'static>) {
        *self.checkout.lock() = Some((now, at));
        self.leak_reported.store(false, Ordering::Relaxed);
    }

    /// With leak detection on: reports (once per checkout) a member held longer than
    /// `threshold`. True when it reported.
    pub(crate) fn check_leak(&self, now: Instant, threshold: Duration) -> bool {
        if kind(self.state()) != IN_USE {
            return false;
        }
        let Some((since, at)) = *self.checkout.lock() else {
            return false;
        };
        let held = now.saturating_duration_since(since);
        if held < threshold || self.leak_reported.swap(true, Ordering::Relaxed) {
            return false;
        }
        tracing::warn!(
            conn.id = self.id,
            peer.addr = ?self.peer,
            held_ms = held.as_millis() as u64,
            checked_out_at = %at,
            "connection held longer than the leak threshold"
        );
        true
    }

    /// Shuts the socket down (both directions) so that its holder's I/O fails.
    pub(crate) fn force_close(&self) {
        self.condemn(EvictReason::PoolClosed, Instant::now());
        let _ = SockRef::from(&self.stream).shutdown(Shutdown::Both);
    }

    pub(crate) fn returned_at(&self) -> Instant {
        self.pool.instant(self.returned_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn last_alive(&self) -> Instant {
        self.pool
            .instant(self.last_alive_ns.load(Ordering::Relaxed))
    }

    /// The checks of an idle member at checkout, cheapest first (after the state word):
    /// lifetime, idle timeout, then one peek syscall.
    pub(crate) fn check_idle(&self, now: Instant) -> Health {
        if self.deadline.is_some_and(|d| now >= d) {
            return Health::Dead(EvictReason::MaxLifetime);
        }
        let cfg = &self.pool.config;
        if let Some(t) = cfg.idle_timeout
            && now.saturating_duration_since(self.returned_at()) >= t
            && self.pool.members() > self.pool.min_idle()
        {
            return Health::Dead(EvictReason::IdleTimeout);
        }
        probe::check(&self.stream)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("state", &kind(self.state()))
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A pooled connection as deadpool stores it. Its drop is the one place an eviction is
/// recorded.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let sh = &self.shared;
        let now = Instant::now();
        sh.state.fetch_or(DEAD, Ordering::AcqRel);
        sh.condemn(EvictReason::PoolClosed, now);
        // The reaper may still hold the Arc for a moment; the peer sees the close now.
        let _ = SockRef::from(&sh.stream).shutdown(Shutdown::Both);
        sh.notify.notify_waiters();
        let pool = &sh.pool;
        pool.member_gone(sh.id);
        pool.record_eviction(EvictionEvent {
            reason: sh.reason().unwrap_or(EvictReason::PoolClosed),
            id: sh.id,
            local_addr: sh.local,
            peer_addr: sh.peer,
            last_alive: sh.last_alive(),
            detected_at: pool.instant(sh.detected_ns.load(Ordering::Acquire)),
            evicted_at: now,
        });
    }
}

const READ_PENDING: u8 = 1;
const WRITE_PENDING: u8 = 1 << 1;
const IO_ERROR: u8 = 1 << 2;
const BROKEN: u8 = 1 << 3;
const UNREAD: u8 = 1 << 4;
const EOF: u8 = 1 << 5;

/// A connection checked out of a [`Pool`](crate::Pool).
///
/// Read and write it with tokio's `AsyncReadExt`/`AsyncWriteExt`; it derefs to `&TcpStream`
/// for addresses and socket options. When dropped it goes back to the pool only if it is
/// clean:
/// - no I/O error was seen and no read returned end-of-file;
/// - no read or write was pending (a caller's future was cancelled mid-operation — this
///   includes a read that lost a `select!`: the safe side of the trade);
/// - with the default request/response policy, no write is left without a read after it;
/// - [`Conn::mark_broken`] was not called, and the connection is within its lifetime.
///
/// Otherwise it is closed, and the eviction counted with its reason.
///
/// The pool cannot see message boundaries: a client that stops reading in the middle of a
/// response and drops the connection without an error must call [`Conn::mark_broken`], or
/// the rest of that response reaches the next caller. (Unread bytes that have already arrived
/// are found by the peek at the next checkout, or at once by the idle watch.)
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
pub struct Conn {
    obj: Option<Object<Manager>>,
    flags: u8,
}

impl From<Object<Manager>> for Conn {
    fn from(obj: Object<Manager>) -> Self {
        Conn {
            obj: Some(obj),
            flags: 0,
        }
    }
}

impl Conn {
    fn shared(&self) -> &Shared {
        // Present from construction until drop.
        &self.obj.as_ref().expect("Conn used after drop").shared
    }

    /// This connection's id, unique within its pool and stable for its life.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("using connection {}", conn.id());
    /// # }
    /// ```
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    /// Our address of the connection.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.local_addr().unwrap());
    /// # }
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared().stream.local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    /// As `getpeername(2)` (`NotConnected` once the connection is gone).
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.peer_addr().unwrap());
    /// # }
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.shared().stream.peer_addr()
    }

    /// Marks the connection unusable: it is closed instead of returned when dropped. Call it
    /// when a protocol error leaves the stream out of step (for example after reading only
    /// part of a response).
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let mut conn = pool.get().await.unwrap();
    /// conn.mark_broken();
    /// assert!(conn.is_broken());
    /// # }
    /// ```
    pub fn mark_broken(&mut self) {
        self.flags |= BROKEN;
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
        let stream = self.stream();
        loop {
            match stream.ready(tokio::io::Interest::READABLE).await {
                Ok(r) if r.is_read_closed() || r.is_error() => return,
                Ok(_) => {}
                Err(_) => return,
            }
            let res = stream.try_io(tokio::io::Interest::READABLE, || probe::peek(stream));
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
        let f = self.flags;
        if f & BROKEN != 0 {
            Some(EvictReason::MarkedBroken)
        } else if f & IO_ERROR != 0 {
            Some(EvictReason::IoError)
        } else if f & EOF != 0 {
            Some(EvictReason::Eof)
        } else if f & (READ_PENDING | WRITE_PENDING) != 0 {
            Some(EvictReason::Cancelled)
        } else if f & UNREAD != 0 && self.shared().pool.config.request_response {
            Some(EvictReason::UnreadResponse)
        } else {
            None
        }
    }

    fn io_result<T>(&mut self, res: io::Result<T>) -> io::Result<T> {
        if res.is_err() {
            self.flags |= IO_ERROR;
        }
        res
    }
}

impl Deref for Conn {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.shared().stream
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.obj {
            Some(obj) => f
                .debug_struct("Conn")
                .field("id", &obj.shared.id)
                .field("local", &obj.shared.local)
                .field("peer", &obj.shared.peer)
                .field("broken", &self.is_broken())
                .finish(),
            None => f.write_str("Conn(dropped)"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let reason = self.dirty_reason();
        let Some(obj) = self.obj.take() else { return };
        let now = Instant::now();
        let reason = reason.or_else(|| {
            obj.shared
                .deadline
                .filter(|d| now >= *d)
                .map(|_| EvictReason::MaxLifetime)
        });
        match reason {
            Some(reason) => {
                obj.shared.condemn(reason, now);
                drop(Object::take(obj));
            }
            None => {
                obj.shared.release(now);
                drop(obj);
            }
        }
    }
}

impl Conn {
    fn stream(&self) -> &TcpStream {
        &self.shared().stream
    }

    pub(crate) fn stamp_checkout(&self, at: &'static Location<'static>) {
        self.shared().stamp_checkout(Instant::now(), at);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.stream().poll_read_ready(cx) {
                Poll::Pending => {
                    this.flags |= READ_PENDING;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.flags &= !READ_PENDING;
                    return Poll::Ready(this.io_result(Err(e)));
                }
                Poll::Ready(Ok(())) => {}
            }
            // try_read is a real recv; WouldBlock clears tokio's readiness, so we loop to
            // register for the next wake-up.
            match this.stream().try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    this.flags &= !(READ_PENDING | UNREAD);
                    if n == 0 && buf.remaining() > 0 {
                        this.flags |= EOF;
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    this.flags &= !READ_PENDING;
                    return Poll::Ready(this.io_result(Err(e)));
                }
            }
        }
    }
}

impl Conn {
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.stream().poll_write_ready(cx) {
                Poll::Pending => {
                    self.flags |= WRITE_PENDING;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    self.flags &= !WRITE_PENDING;
                    return Poll::Ready(self.io_result(Err(e)));
                }
                Poll::Ready(Ok(())) => {}
            }
            match write(self.stream()) {
                Ok(n) => {
                    self.flags &= !WRITE_PENDING;
                    if n > 0 {
                        self.flags |= UNREAD;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    self.flags &= !WRITE_PENDING;
                    return Poll::Ready(self.io_result(Err(e)));
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the kernel: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A half-closed connection can never go back to the pool.
        this.flags |= EOF;
        let res = SockRef::from(this.stream()).shutdown(Shutdown::Write);
        Poll::Ready(this.io_result(res))
    }
}
