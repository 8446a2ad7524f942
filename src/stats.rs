//! Counters, the eviction-latency histogram and the eviction event stream.
//!
//! Every member is dropped exactly once, and its drop is where its eviction is
//! recorded (see `conn::Member`), so each eviction is counted once with the
//! reason that whoever condemned it stored first.
//!
//! Idle members that the peer closes after about the same idle time, over and over, are a
//! server-side idle limit shorter than the pool's heartbeat: `idle_limit.rs` finds it from
//! those closes alone and says so once at WARN (see there).

pub(crate) mod idle_limit;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Why a connection left the pool.
///
/// ```
/// use livepool::EvictReason;
/// assert_eq!(EvictReason::PeerClosed.as_str(), "peer_closed");
/// assert!(EvictReason::ALL.contains(&EvictReason::Reset));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EvictReason {
    /// The peer closed the connection (FIN): a peek read end-of-file.
    PeerClosed,
    /// The peer reset the connection (RST).
    Reset,
    /// The kernel reported another socket error (for example `ETIMEDOUT` from keepalive).
    SocketError,
    /// Bytes arrived on an idle request/response connection that nobody asked for.
    UnexpectedData,
    /// An I/O error was seen while the connection was checked out.
    IoError,
    /// A read or write was still pending when the handle was dropped (a cancelled future).
    Cancelled,
    /// A write was not followed by a read before the handle was dropped.
    UnreadResponse,
    /// The holder read end-of-file or shut the connection down while it was checked out.
    Eof,
    /// The holder called [`Conn::mark_broken`](crate::Conn::mark_broken).
    MarkedBroken,
    /// Idle longer than the configured idle timeout.
    IdleTimeout,
    /// Older than the configured maximum lifetime.
    MaxLifetime,
    /// A heartbeat got no answer within the heartbeat timeout.
    HeartbeatTimeout,
    /// A heartbeat failed with an I/O error or the peer closed during it.
    HeartbeatFailed,
    /// A heartbeat got a wrong or garbled answer.
    HeartbeatBadReply,
    /// The pool was closed, dropped or shrunk.
    PoolClosed,
    /// On return, the protocol said the connection is not clean: replies still owed, an open
    /// transaction or `MULTI`, session state changed by the caller.
    NotClean,
    /// On return, a reply still owed did not come in time: the protocol's own deadline
    /// ([`Protocol::settle`](crate::Protocol::settle) said so) or the pool's bound on
    /// settling (`heartbeat_timeout`). Counted against the endpoint, like a heartbeat
    /// timeout: the server stopped answering.
    Unanswered,
    /// The server announced that it is closing the connection (Postgres `FATAL 57P01` from
    /// `pg_terminate_backend` or a fast shutdown, a MySQL shutdown error).
    Terminated,
    /// The tokio runtime whose I/O driver the connection's socket is registered with has shut
    /// down (for example a pool in a `static` used from a later `#[tokio::test]`): every read
    /// or write on it would fail with tokio's "being shutdown" error.
    DriverGone,
}

impl EvictReason {
    /// Every reason, in the order of their counters.
    ///
    /// ```
    /// assert_eq!(livepool::EvictReason::ALL.len(), 19);
    /// ```
    pub const ALL: [EvictReason; 19] = [
        EvictReason::PeerClosed,
        EvictReason::Reset,
        EvictReason::SocketError,
        EvictReason::UnexpectedData,
        EvictReason::IoError,
        EvictReason::Cancelled,
        EvictReason::UnreadResponse,
        EvictReason::Eof,
        EvictReason::MarkedBroken,
        EvictReason::IdleTimeout,
        EvictReason::MaxLifetime,
        EvictReason::HeartbeatTimeout,
        EvictReason::HeartbeatFailed,
        EvictReason::HeartbeatBadReply,
        EvictReason::PoolClosed,
        EvictReason::NotClean,
        EvictReason::Unanswered,
        EvictReason::Terminated,
        EvictReason::DriverGone,
    ];

    /// A stable snake_case name, used in tracing events and metric labels.
    ///
    /// ```
    /// assert_eq!(livepool::EvictReason::MaxLifetime.as_str(), "max_lifetime");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::PeerClosed => "peer_closed",
            EvictReason::Reset => "reset",
            EvictReason::SocketError => "socket_error",
            EvictReason::UnexpectedData => "unexpected_data",
            EvictReason::IoError => "io_error",
            EvictReason::Cancelled => "cancelled",
            EvictReason::UnreadResponse => "unread_response",
            EvictReason::Eof => "eof",
            EvictReason::MarkedBroken => "marked_broken",
            EvictReason::IdleTimeout => "idle_timeout",
            EvictReason::MaxLifetime => "max_lifetime",
            EvictReason::HeartbeatTimeout => "heartbeat_timeout",
            EvictReason::HeartbeatFailed => "heartbeat_failed",
            EvictReason::HeartbeatBadReply => "heartbeat_bad_reply",
            EvictReason::PoolClosed => "pool_closed",
            EvictReason::NotClean => "not_clean",
            EvictReason::Unanswered => "unanswered",
            EvictReason::Terminated => "terminated",
            EvictReason::DriverGone => "driver_gone",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(i: usize) -> Option<EvictReason> {
        EvictReason::ALL.get(i).copied()
    }
}

impl fmt::Display for EvictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection leaving the pool, as delivered by [`Pool::events`](crate::Pool::events).
///
/// ```no_run
/// # async fn demo(pool: livepool::Pool) {
/// let mut events = pool.events();
/// while let Ok(ev) = events.recv().await {
///     println!("conn {} evicted: {} after {:?}", ev.id, ev.reason, ev.latency());
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EvictionEvent {
    /// The endpoint of the connection's pool, as configured (with a
    /// [`Balancer`](crate::Balancer), which server it was on).
    pub endpoint: Arc<str>,
    /// Why it was evicted.
    pub reason: EvictReason,
    /// The connection's id (see [`Conn::id`](crate::Conn::id)).
    pub id: u64,
    /// Our address of the connection.
    pub local_addr: Option<SocketAddr>,
    /// The peer's address.
    pub peer_addr: Option<SocketAddr>,
    /// When the connection was last known alive: returned clean, or answered a heartbeat.
    pub last_alive: Instant,
    /// When the condemned connection was first found dead or unusable.
    pub detected_at: Instant,
    /// When it was removed from the pool and its socket shut down.
    pub evicted_at: Instant,
}

impl EvictionEvent {
    /// Time from detection to removal: how long a condemned connection lingered in the pool.
    ///
    /// ```no_run
    /// # fn f(ev: livepool::EvictionEvent) {
    /// assert!(ev.latency() <= ev.evicted_at - ev.last_alive);
    /// # }
    /// ```
    pub fn latency(&self) -> Duration {
        self.evicted_at.saturating_duration_since(self.detected_at)
    }
}

/// A subscription to eviction events; see [`Pool::events`](crate::Pool::events).
///
/// Events are buffered (1,024); a subscriber that falls behind gets
/// [`EventsError::Lagged`] with the number it missed, then continues. Same methods and errors
/// as [`BreakerEvents`] (and the balancer's events). Each is also a `futures::Stream` of
/// `Result<event, EventsError>` that ends when the pool is gone and every event was
/// delivered.
///
/// ```no_run
/// use futures_util::StreamExt;
/// # async fn demo(pool: livepool::Pool) {
/// let mut events = pool.events();
/// let ev = events.recv().await.unwrap();
/// // Or as a stream:
/// let mut stream = pool.events();
/// while let Some(Ok(ev)) = stream.next().await {
///     println!("{} evicted: {}", ev.id, ev.reason);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Events {
    inner: Subscription<EvictionEvent>,
}

/// Why [`Events`] or [`BreakerEvents`] returned no event.
///
/// ```
/// let e = livepool::EventsError::Lagged(3);
/// assert_eq!(e.to_string(), "event subscriber lagged behind by 3 events");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventsError {
    /// The pool is gone: no more events will come.
    Closed,
    /// The subscriber fell behind and this many events were dropped.
    Lagged(u64),
}

impl fmt::Display for EventsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventsError::Closed => f.write_str("the pool is gone"),
            EventsError::Lagged(n) => write!(f, "event subscriber lagged behind by {n} events"),
        }
    }
}

impl std::error::Error for EventsError {}

/// The one implementation behind [`Events`], [`BreakerEvents`] and the balancer's events: a
/// broadcast receiver with its errors mapped to [`EventsError`], pollable as a `Stream` (a
/// poll that has to wait keeps the receiver in a boxed `recv` future until it is answered,
/// so a dropped `next()` loses nothing). `try_recv` asks the receiver directly when no such
/// wait is in progress: it never reports "empty" for want of the task's cooperative budget.
pub(crate) struct Subscription<T> {
    rx: Option<broadcast::Receiver<T>>,
    waiting: Option<RecvFuture<T>>,
}

type RecvFuture<T> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Result<T, broadcast::error::RecvError>,
                    broadcast::Receiver<T>,
                ),
            > + Send,
    >,
>;

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

fn mapped<T>(r: Result<T, broadcast::error::RecvError>) -> Option<Result<T, EventsError>> {
    match r {
        Ok(item) => Some(Ok(item)),
        Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(EventsError::Lagged(n))),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

impl<T: Clone + Send + 'static> Subscription<T> {
    pub(crate) fn new(tx: &broadcast::Sender<T>) -> Self {
        Subscription {
            rx: Some(tx.subscribe()),
            waiting: None,
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<T, EventsError> {
        std::future::poll_fn(|cx| self.poll_next(cx))
            .await
            .unwrap_or(Err(EventsError::Closed))
    }

    pub(crate) fn try_recv(&mut self) -> Result<Option<T>, EventsError> {
        if self.waiting.is_some() {
            let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
            return match self.poll_next(&mut cx) {
                std::task::Poll::Pending => Ok(None),
                std::task::Poll::Ready(Some(item)) => item.map(Some),
                std::task::Poll::Ready(None) => Err(EventsError::Closed),
            };
        }
        let rx = self
            .rx
            .as_mut()
            .expect("the receiver is here when no wait is");
        match rx.try_recv() {
            Ok(ev) => Ok(Some(ev)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Closed) => Err(EventsError::Closed),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(EventsError::Lagged(n)),
        }
    }

    pub(crate) fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<T, EventsError>>> {
        if self.waiting.is_none() {
            match self.try_recv() {
                Ok(Some(item)) => return std::task::Poll::Ready(Some(Ok(item))),
                Err(EventsError::Closed) => return std::task::Poll::Ready(None),
                Err(e) => return std::task::Poll::Ready(Some(Err(e))),
                Ok(None) => {}
            }
            let mut rx = self
                .rx
                .take()
                .expect("the receiver is here when no wait is");
            self.waiting = Some(Box::pin(async move {
                let r = rx.recv().await;
                (r, rx)
            }));
        }
        let waiting = self.waiting.as_mut().expect("set above");
        let (r, rx) = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        self.rx = Some(rx);
        std::task::Poll::Ready(mapped(r))
    }
}

/// A subscription as a `futures::Stream`: each item is an event, or
/// [`EventsError::Lagged`] when events were missed; the stream ends when the source is gone
/// and every event was delivered.
macro_rules! subscription_stream {
    ($name:ty, $item:ty) => {
        impl futures_util::Stream for $name {
            type Item = Result<$item, crate::stats::EventsError>;

            fn poll_next(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                self.get_mut().inner.poll_next(cx)
            }
        }
    };
}
pub(crate) use subscription_stream;

subscription_stream!(Events, EvictionEvent);
subscription_stream!(BreakerEvents, BreakerEvent);

impl Events {
    /// Waits for the next eviction event.
    ///
    /// # Errors
    /// [`EventsError::Closed`] when the pool is gone and every event was delivered,
    /// [`EventsError::Lagged`] when events were missed (the next call goes on with the oldest
    /// one still buffered).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `recv` loses no event.
    ///
    /// ```no_run
    /// # async fn demo(mut events: livepool::Events) {
    /// if let Ok(ev) = events.recv().await { println!("{}", ev.reason); }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<EvictionEvent, EventsError> {
        self.inner.recv().await
    }

    /// Returns the next eviction event if one is buffered, without waiting.
    ///
    /// # Errors
    /// As [`Events::recv`]; `Ok(None)` when nothing is buffered.
    ///
    /// ```no_run
    /// # fn demo(mut events: livepool::Events) {
    /// while let Ok(Some(ev)) = events.try_recv() { println!("{}", ev.reason); }
    /// # }
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<EvictionEvent>, EventsError> {
        self.inner.try_recv()
    }
}

/// A circuit-breaker transition, as delivered by [`Pool::breaker_events`](crate::Pool::breaker_events).
///
/// ```no_run
/// # async fn demo(pool: livepool::Pool) {
/// let mut events = pool.breaker_events();
/// while let Ok(ev) = events.recv().await {
///     println!("breaker {} → {} ({:?})", ev.transition.from, ev.transition.to, ev.last_error);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BreakerEvent {
    /// The endpoint whose breaker it is, as configured.
    pub endpoint: Arc<str>,
    /// From which state to which, and for how long it stays open.
    pub transition: crate::Transition,
    /// When it happened.
    pub at: Instant,
    /// The last connect or heartbeat error seen before it, as text.
    pub last_error: Option<String>,
}

/// A subscription to breaker transitions; see [`Pool::breaker_events`](crate::Pool::breaker_events).
///
/// Transitions are buffered (64); a subscriber that falls behind gets
/// [`EventsError::Lagged`] with the number it missed, then continues. Same methods and errors
/// as [`Events`].
///
/// ```no_run
/// # async fn demo(pool: livepool::Pool) {
/// let mut events = pool.breaker_events();
/// let ev = events.recv().await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct BreakerEvents {
    inner: Subscription<BreakerEvent>,
}

impl BreakerEvents {
    /// Waits for the next breaker transition.
    ///
    /// # Errors
    /// [`EventsError::Closed`] when the pool is gone and every transition was delivered,
    /// [`EventsError::Lagged`] when transitions were missed (the next call goes on with the
    /// oldest one still buffered).
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `recv` loses no transition.
    ///
    /// ```no_run
    /// # async fn demo(mut events: livepool::BreakerEvents) {
    /// if let Ok(ev) = events.recv().await { println!("{:?}", ev.transition.to); }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<BreakerEvent, EventsError> {
        self.inner.recv().await
    }

    /// Returns the next breaker transition if one is buffered, without waiting.
    ///
    /// # Errors
    /// As [`BreakerEvents::recv`]; `Ok(None)` when nothing is buffered.
    ///
    /// ```no_run
    /// # fn demo(mut events: livepool::BreakerEvents) {
    /// while let Ok(Some(ev)) = events.try_recv() { println!("{:?}", ev.transition.to); }
    /// # }
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<BreakerEvent>, EventsError> {
        self.inner.try_recv()
    }
}

/// Number of histogram buckets: bucket `i` counts latencies below `2^i` µs (the last is open).
const BUCKETS: usize = 28;

/// The pool's live counters. Written with relaxed atomics; read through [`Statistics`].
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) checkouts: AtomicU64,
    pub(crate) get_timeouts: AtomicU64,
    pub(crate) leaks: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) idle_reads_kept: AtomicU64,
    pub(crate) local_resource_errors: AtomicU64,
    pub(crate) config_errors: AtomicU64,
    pub(crate) reaper_restarts: AtomicU64,
    evicted: [AtomicU64; EvictReason::ALL.len()],
    latency: [AtomicU64; BUCKETS],
    events: broadcast::Sender<EvictionEvent>,
    breaker_events: broadcast::Sender<BreakerEvent>,
    /// Touched only by idle closes (see `idle_limit.rs`).
    idle_limit: Mutex<idle_limit::IdleLimit>,
    /// Its latest figure in nanoseconds, 0 while none (read without the lock).
    server_idle_limit_ns: AtomicU64,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            created: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            checkouts: AtomicU64::new(0),
            get_timeouts: AtomicU64::new(0),
            leaks: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            idle_reads_kept: AtomicU64::new(0),
            local_resource_errors: AtomicU64::new(0),
            config_errors: AtomicU64::new(0),
            reaper_restarts: AtomicU64::new(0),
            evicted: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            events: broadcast::channel(1024).0,
            breaker_events: broadcast::channel(64).0,
            idle_limit: Mutex::new(idle_limit::IdleLimit::new()),
            server_idle_limit_ns: AtomicU64::new(0),
        }
    }

    /// An idle member closed or reset by the peer (see `idle_limit.rs`): the finding to warn
    /// about, if this close makes one.
    pub(crate) fn record_idle_close(&self, s: idle_limit::Sample) -> Option<idle_limit::Finding> {
        let mut detector = self.idle_limit.lock();
        let finding = detector.observe(s);
        if let Some(limit) = detector.limit() {
            // Never 0: closes sooner than `idle_limit::MIN_AGE` are not fed.
            let ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
            self.server_idle_limit_ns.store(ns, Relaxed);
        }
        finding
    }

    pub(crate) fn subscribe(&self) -> Events {
        Events {
            inner: Subscription::new(&self.events),
        }
    }

    pub(crate) fn subscribe_breaker(&self) -> BreakerEvents {
        BreakerEvents {
            inner: Subscription::new(&self.breaker_events),
        }
    }

    pub(crate) fn record_transition(&self, ev: BreakerEvent) {
        let _ = self.breaker_events.send(ev);
    }

    pub(crate) fn record_eviction(&self, ev: EvictionEvent) {
        self.evicted[ev.reason.index()].fetch_add(1, Relaxed);
        let us = ev.latency().as_micros() as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Relaxed);
        tracing::debug!(
            conn.id = ev.id,
            local.addr = ?ev.local_addr,
            peer.addr = ?ev.peer_addr,
            reason = ev.reason.as_str(),
            latency_us = us,
            "evicting connection"
        );
        // No subscriber is the common case; that error is not a problem.
        let _ = self.events.send(ev);
    }

    pub(crate) fn snapshot(&self) -> Statistics {
        Statistics {
            created: self.created.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            checkouts: self.checkouts.load(Relaxed),
            get_timeouts: self.get_timeouts.load(Relaxed),
            leaks: self.leaks.load(Relaxed),
            heartbeats: self.heartbeats.load(Relaxed),
            idle_reads_kept: self.idle_reads_kept.load(Relaxed),
            local_resource_errors: self.local_resource_errors.load(Relaxed),
            config_errors: self.config_errors.load(Relaxed),
            reaper_restarts: self.reaper_restarts.load(Relaxed),
            breaker_state: crate::BreakerState::Closed,
            breaker_transitions: 0,
            server_idle_limit: match self.server_idle_limit_ns.load(Relaxed) {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            },
            evicted: std::array::from_fn(|i| self.evicted[i].load(Relaxed)),
            latency: std::array::from_fn(|i| self.latency[i].load(Relaxed)),
        }
    }
}

/// A snapshot of the pool's counters.
///
/// Eventually consistent: each counter is read on its own, so a snapshot taken while the pool
/// is busy may show one eviction counted and its replacement not yet created.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
/// let stats = pool.statistics();
/// assert_eq!(stats.created, 0);
/// assert_eq!(stats.evicted(livepool::EvictReason::PeerClosed), 0);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct Statistics {
    /// Connections opened.
    pub created: u64,
    /// Connect attempts that failed or timed out (those that failed for want of a local
    /// resource are counted in [`local_resource_errors`](Self::local_resource_errors)
    /// instead).
    pub connect_errors: u64,
    /// Connections handed out by `get()`.
    pub checkouts: u64,
    /// `get()` calls that timed out waiting for a free slot.
    pub get_timeouts: u64,
    /// Checkouts held longer than the leak threshold.
    pub leaks: u64,
    /// Heartbeats answered correctly (failed ones are counted as evictions).
    pub heartbeats: u64,
    /// Times bytes arrived on an idle member and the protocol judged them benign (TLS session
    /// tickets, a notification, a RESP3 push): read through its stack, member kept.
    pub idle_reads_kept: u64,
    /// Connects and heartbeats that failed because this process ran out of a resource (file
    /// descriptors, socket buffers, memory, ephemeral ports): `EMFILE`, `ENFILE`, `ENOBUFS`,
    /// `ENOMEM`, `EADDRNOTAVAIL`. They do not count towards the circuit breaker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// assert_eq!(pool.statistics().local_resource_errors, 0);
    /// # }
    /// ```
    pub local_resource_errors: u64,
    /// Connects that failed for a mistake in this client's configuration, found at setup (no
    /// password for the server's authentication method, rejected credentials, an unknown
    /// database, a certificate that does not verify): see
    /// [`Error::is_config`](crate::Error::is_config). They do not count towards the circuit
    /// breaker; `get()` calls answered from the remembered error are not counted again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// assert_eq!(pool.statistics().config_errors, 0);
    /// # }
    /// ```
    pub config_errors: u64,
    /// Times `get()` found the pool's background task gone (the tokio runtime it ran on shut
    /// down) and restarted it on the caller's runtime; see [`Pool`](crate::Pool).
    pub reaper_restarts: u64,
    /// The circuit breaker's state when the snapshot was taken.
    pub breaker_state: crate::BreakerState,
    /// Breaker transitions so far.
    pub breaker_transitions: u64,
    /// The idle limit of the server (or of a proxy or load balancer on the way), as detected
    /// from idle members it closed: `None` until the idle watch has seen several idle members
    /// in a row closed or reset by the peer after about the same idle time, repeatedly, then
    /// the shortest of those idle times, counted from the member's last traffic (its return,
    /// its creation or an answered heartbeat; from its last return for a server that does
    /// not take heartbeats for activity). The detection is logged at WARN once, naming the
    /// setting to change (`heartbeat_interval`, `idle_timeout`, or the server's limit), and
    /// again only for a figure that differs by more than the detector's tolerance, at most
    /// every 10 minutes. This is the latest figure; it stays once the closes stop. Needs the
    /// idle watch ([`Builder::idle_watch`](crate::Builder::idle_watch), on by default).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// if let Some(limit) = pool.statistics().server_idle_limit {
    ///     println!("the server closes connections idle for {limit:?}: heartbeat more often");
    /// }
    /// assert_eq!(pool.statistics().server_idle_limit, None);
    /// # }
    /// ```
    pub server_idle_limit: Option<Duration>,
    evicted: [u64; EvictReason::ALL.len()],
    latency: [u64; BUCKETS],
}

impl Statistics {
    /// Connections evicted for `reason`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// assert_eq!(pool.statistics().evicted(livepool::EvictReason::Reset), 0);
    /// # }
    /// ```
    pub fn evicted(&self, reason: EvictReason) -> u64 {
        self.evicted[reason.index()]
    }

    /// All evictions, whatever the reason.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// assert_eq!(pool.statistics().evicted_total(), 0);
    /// # }
    /// ```
    pub fn evicted_total(&self) -> u64 {
        self.evicted.iter().sum()
    }

    /// Non-zero eviction counters by reason.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// for (reason, n) in pool.statistics().evictions() { println!("{reason}: {n}"); }
    /// # }
    /// ```
    pub fn evictions(&self) -> Vec<(EvictReason, u64)> {
        (0..self.evicted.len())
            .filter(|&i| self.evicted[i] > 0)
            .filter_map(|i| Some((EvictReason::from_index(i)?, self.evicted[i])))
            .collect()
    }

    /// Eviction latency (detection to removal) as `(upper bound, count)` buckets, powers of two
    /// in microseconds; empty buckets are left out and the last bound is `Duration::MAX`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let pool = livepool::Pool::builder("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap()).build().unwrap();
    /// assert!(pool.statistics().eviction_latency().is_empty());
    /// # }
    /// ```
    pub fn eviction_latency(&self) -> Vec<(Duration, u64)> {
        (0..BUCKETS)
            .filter(|&i| self.latency[i] > 0)
            .map(|i| {
                let bound = if i == BUCKETS - 1 {
                    Duration::MAX
                } else {
                    Duration::from_micros(1 << i)
                };
                (bound, self.latency[i])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BreakerState, Transition};

    fn eviction(id: u64) -> EvictionEvent {
        let now = Instant::now();
        EvictionEvent {
            endpoint: "127.0.0.1:1".into(),
            reason: EvictReason::PeerClosed,
            id,
            local_addr: None,
            peer_addr: None,
            last_alive: now,
            detected_at: now,
            evicted_at: now,
        }
    }

    fn opened() -> BreakerEvent {
        BreakerEvent {
            endpoint: "127.0.0.1:1".into(),
            transition: Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open,
                open_for: Some(Duration::from_secs(1)),
            },
            at: Instant::now(),
            last_error: None,
        }
    }

    /// Both streams answer the same way: nothing buffered, an event, a lag (then the oldest
    /// buffered one), and closed once the pool's side is gone and the buffer drained.
    #[tokio::test]
    async fn eviction_and_breaker_streams_have_one_shape() {
        let stats = Stats::new();
        let (mut ev, mut br) = (stats.subscribe(), stats.subscribe_breaker());
        assert!(ev.try_recv().unwrap().is_none());
        assert!(br.try_recv().unwrap().is_none());

        stats.record_eviction(eviction(1));
        stats.record_transition(opened());
        assert_eq!(ev.try_recv().unwrap().unwrap().id, 1);
        let t = br.try_recv().unwrap().unwrap();
        assert_eq!(t.transition.to, BreakerState::Open);

        for id in 0..1024 + 3 {
            stats.record_eviction(eviction(id));
        }
        for _ in 0..64 + 2 {
            stats.record_transition(opened());
        }
        assert_eq!(ev.try_recv().unwrap_err(), EventsError::Lagged(3));
        assert_eq!(br.try_recv().unwrap_err(), EventsError::Lagged(2));
        assert_eq!(ev.recv().await.unwrap().id, 3);
        assert!(br.recv().await.is_ok());

        drop(stats);
        while let Ok(Some(_)) = ev.try_recv() {}
        while let Ok(Some(_)) = br.try_recv() {}
        assert_eq!(ev.try_recv().unwrap_err(), EventsError::Closed);
        assert_eq!(br.try_recv().unwrap_err(), EventsError::Closed);
        assert_eq!(ev.recv().await.unwrap_err(), EventsError::Closed);
        assert_eq!(br.recv().await.unwrap_err(), EventsError::Closed);
    }
}
