//! The pool layer: [`Pool`], the handle users clone, and `get()`; its parts are the leaf
//! shared state (`shared.rs`), the occupancy snapshot ([`Status`], `status.rs`), the deadpool
//! manager (`manager.rs`), the builder, the validated configuration and the errors.

pub(crate) mod builder;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod manager;
pub(crate) mod shared;
pub(crate) mod status;

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{PoolError, QueueMode, TimeoutType, Timeouts};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::member::{Conn, Shared};
use crate::protocol::{Protocol, Raw};
use crate::reaper::Reaper;
use crate::stats::{BreakerEvents, Events, Statistics};
use builder::{Builder, IntoAddr};
use config::Config;
use error::{BuildError, Error, SizeError, TimeoutPhase};
use manager::Manager;
use shared::{PoolShared, ReaperRunning};
pub use status::Status;
use status::occupancy;

pub(crate) struct PoolInner<P: Protocol> {
    pub(crate) dp: deadpool::managed::Pool<Manager<P>, Conn<P>>,
    /// deadpool timeouts with a zero wait: try a free slot without waiting.
    no_wait: Timeouts,
    /// True when the configured wait timeout is zero already (no second attempt).
    no_wait_is_config: bool,
    pub(crate) shared: Arc<PoolShared>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
}

impl<P: Protocol> PoolInner<P> {
    pub(crate) fn status(&self) -> Status {
        self.shared.status(self.dp.status())
    }

    fn stop_reaper(&self) {
        // Dropping the sender ends the reaper.
        self.shutdown.lock().take();
    }

    /// Spawns the reaper on `runtime` with a new channel for new members, handing the new
    /// reaper every live member to watch and schedule (none on the first start). `shutdown` is the locked slot
    /// of the reaper's stop signal.
    fn start_reaper(
        &self,
        runtime: &tokio::runtime::Handle,
        shutdown: &mut Option<oneshot::Sender<()>>,
    ) {
        let manager = self.dp.manager();
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        {
            // Locked while the live members are collected: a member created meanwhile is
            // either among them or sent to the new channel after it, never both or neither.
            let mut slot = manager.watch_tx.lock();
            for member in self.shared.live_members() {
                if let Ok(member) = member.as_any().downcast::<Shared<P>>() {
                    let _ = watch_tx.send(member);
                }
            }
            *slot = Some(watch_tx);
        }
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        *shutdown = Some(shutdown_tx);
        let reaper = Reaper::new(
            self.dp.weak(),
            self.shared.clone(),
            manager.protocol.clone(),
        );
        let running = ReaperRunning::new(self.shared.clone());
        runtime.spawn(async move {
            // Dropped with the task however it ends, even unpolled.
            let _running = running;
            reaper.run(watch_rx, shutdown_rx).await;
        });
    }

    /// The reaper's task is gone while the pool is open: its runtime shut down (or it
    /// panicked). Starts a new one on the caller's runtime.
    #[cold]
    fn restart_reaper(&self) {
        let mut shutdown = self.shutdown.lock();
        // Another caller restarted it first, or the pool was closed.
        if self.shared.reaper_running() || self.dp.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::warn!(
            endpoint = %self.shared.endpoint,
            "the pool's background task is gone (the tokio runtime it ran on shut down): \
             restarting it on the caller's runtime"
        );
        self.shared.stats.reaper_restarts.fetch_add(1, Relaxed);
        self.start_reaper(&runtime, &mut shutdown);
    }
}

impl<P: Protocol> Drop for PoolInner<P> {
    fn drop(&mut self) {
        self.stop_reaper();
    }
}

/// A pool of connections to one endpoint that never hands out a connection the kernel
/// already knows is dead. Cheap to clone; every clone is the same pool. The pool closes when
/// the last clone is dropped or [`Pool::close`] is called.
///
/// `P` is the client protocol (setup, heartbeat, clean-return check, idle bytes); the default
/// [`Raw`] hands out raw byte streams. See [`Builder::protocol`].
///
/// # Runtimes that go away
/// A pool may outlive the tokio runtime it was built in: a pool in a `static` shared by
/// `#[tokio::test]`s, each with its own runtime, is the usual case. Two things die with that
/// runtime, and `get()` (from any later runtime) deals with both:
/// - **Connections registered with its I/O driver.** Their sockets are open, but every read
///   or write would fail with tokio's "A Tokio 1.x context was found, but it is being
///   shutdown". They are never handed out: the checkout finds them (one atomic load), evicts
///   them as [`EvictReason::DriverGone`](crate::EvictReason::DriverGone) and opens a new one
///   on the caller's runtime. The load reads a flag per runtime that a small task, spawned
///   on each runtime the first time livepool opens a connection there, clears when the
///   runtime drops it at shutdown (tokio drops its tasks before it stops its I/O driver).
///   That task never wakes and stays for the runtime's life, one per runtime whatever the
///   number of pools: it shows as one more alive task in tokio's runtime metrics.
/// - **The background task** (idle watch, heartbeats, idle timeout, refill to `min_idle`),
///   spawned on the runtime that called `build()`. The next `get()` notices (one atomic load)
///   and restarts it on the caller's runtime, with a `warn` trace and
///   [`Statistics::reaper_restarts`] counted; the new task watches every live member again.
///   Restarting, rather than failing every `get()`, is what such a pool's users want: the
///   pool keeps working across runtimes, at worst with the background work paused between
///   the old runtime's end and the next `get()`.
///
/// A restarted task lives on the caller's runtime and dies with it in turn; the next `get()`
/// restarts it again. Connections opened on a runtime that is still running keep working
/// from any other one.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = livepool::Pool::builder("127.0.0.1:6379").max_size(8).build()?;
/// let mut conn = pool.get().await?;
/// conn.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
/// let mut reply = [0u8; 7];
/// conn.read_exact(&mut reply).await?;
/// assert_eq!(&reply, b"+PONG\r\n");
/// # Ok(()) }
/// ```
pub struct Pool<P: Protocol = Raw> {
    inner: Arc<PoolInner<P>>,
}

impl<P: Protocol> Clone for Pool<P> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl Pool {
    /// Starts configuring a pool for `addr`: a `SocketAddr`, a `"host:port"` string (resolved
    /// at every connect, never here), or `"unix:/path"` (see [`IntoAddr`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:6379").build().unwrap();
    /// # }
    /// ```
    pub fn builder(addr: impl IntoAddr) -> Builder {
        Builder::new(addr)
    }
}

impl<P: Protocol> Pool<P> {
    pub(crate) fn from_config(
        config: Config,
        protocol: Arc<P>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Pool<P>, BuildError> {
        let shared = Arc::new(PoolShared::new(config));
        let cfg = &shared.config;
        let dp = deadpool::managed::Pool::builder(Manager {
            shared: shared.clone(),
            protocol,
            // Set by `start_reaper`.
            watch_tx: Mutex::new(None),
        })
        .max_size(cfg.max_size)
        .wait_timeout(cfg.wait_timeout)
        // The most recently returned connection is the warmest: hand it out first, and let
        // the coldest ones age out at the front of the queue.
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BuildError::new("max_size", e.to_string()))?;
        let no_wait = Timeouts {
            wait: Some(Duration::ZERO),
            ..dp.timeouts()
        };
        let inner = Arc::new(PoolInner {
            no_wait,
            no_wait_is_config: shared.config.wait_timeout == Some(Duration::ZERO),
            dp,
            shared,
            shutdown: Mutex::new(None),
        });
        inner.start_reaper(runtime, &mut inner.shutdown.lock());
        Ok(Pool { inner })
    }

    /// Checks out a connection: a healthy idle one if there is one (each idle candidate is
    /// checked with the cheap kernel checks, and dead ones are evicted on the way), else a
    /// new one, else waits up to `wait_timeout` for one to be returned.
    ///
    /// # Errors
    /// - [`Error::is_timeout`] with phase `Wait` when the pool stayed full for
    ///   `wait_timeout`, `Connect` when a new connection did not open in time;
    /// - [`Error::is_connect`] with the real `io::Error` as source when connecting failed;
    /// - [`Error::is_circuit_open`] when the breaker is open and no idle member is healthy;
    /// - [`Error::is_closed`] after [`Pool::close`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future gives back its place in the queue; a connect in
    /// progress is abandoned (and its socket closed); a member being checked is not lost
    /// unless it was waiting for its heartbeat, in which case it is closed.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) {
    /// match pool.get().await {
    ///     Ok(conn) => println!("got {}", conn.id()),
    ///     Err(e) if e.is_circuit_open() => println!("down, retry after {:?}", e.retry_after()),
    ///     Err(e) => println!("failed: {e}"),
    /// }
    /// # }
    /// ```
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Conn<P>, Error>> + Send + '_ {
        // Captured before the first await: where the caller asked, for leak reports.
        self.get_from(Location::caller())
    }

    /// `get()` for a caller at `at` (the balancer passes its own caller's location on).
    pub(crate) async fn get_from(&self, at: &'static Location<'static>) -> Result<Conn<P>, Error> {
        let shared = &self.inner.shared;
        // One atomic load: the reaper died with its runtime (see the type's docs).
        if !shared.reaper_running() {
            self.inner.restart_reaper();
        }
        #[cfg(feature = "metrics")]
        let start = Instant::now();
        #[cfg(feature = "metrics")]
        let mut direct = true;
        // A free slot first, without a timer: deadpool wraps every waiting acquire in
        // `tokio::time::timeout` (a clock read and a timer registration) even when a
        // connection is free. Only a full pool pays for the bounded wait.
        let res = match self.inner.dp.timeout_get(&self.inner.no_wait).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) if !self.inner.no_wait_is_config => {
                #[cfg(feature = "metrics")]
                {
                    direct = false;
                }
                self.inner.dp.get().await
            }
            res => res,
        };
        let res = match res {
            Ok(conn) => {
                shared.stats.checkouts.fetch_add(1, Relaxed);
                if shared.config.leak_threshold.is_some() {
                    conn.stamp_checkout(at);
                }
                Ok(conn)
            }
            Err(e) => Err(map_error(shared, e)),
        };
        #[cfg(feature = "metrics")]
        {
            use crate::metrics::GetOutcome;
            let outcome = match &res {
                Ok(_) if direct => GetOutcome::Direct,
                Ok(_) => GetOutcome::Waited,
                Err(e) if e.timeout_phase() == Some(TimeoutPhase::Wait) => GetOutcome::TimedOut,
                Err(e) if e.is_circuit_open() => GetOutcome::FailedFast,
                Err(_) => GetOutcome::Failed,
            };
            shared.metrics.get(outcome, start.elapsed());
        }
        res
    }

    /// The pool's occupancy now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").max_size(4).build().unwrap();
    /// assert_eq!(pool.status().max_size, 4);
    /// # }
    /// ```
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// A snapshot of the counters: connections created, evictions by reason, the
    /// eviction-latency histogram and the breaker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// assert_eq!(pool.statistics().evicted_total(), 0);
    /// # }
    /// ```
    pub fn statistics(&self) -> Statistics {
        let shared = &self.inner.shared;
        let mut s = shared.stats.snapshot();
        s.breaker_state = shared.breaker_state();
        s.breaker_transitions = shared.breaker_transitions.load(Relaxed);
        s
    }

    /// Subscribes to eviction events (reason, connection id, addresses, when last known
    /// alive, when evicted). Only events after the call are delivered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// let mut events = pool.events();
    /// assert!(events.try_recv().unwrap().is_none());
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        self.inner.shared.stats.subscribe()
    }

    /// Subscribes to circuit-breaker transitions (closed → open → half-open → …), each with
    /// the last error seen. Only transitions after the call are delivered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// let mut events = pool.breaker_events();
    /// assert!(events.try_recv().unwrap().is_none());
    /// # }
    /// ```
    pub fn breaker_events(&self) -> BreakerEvents {
        self.inner.shared.stats.subscribe_breaker()
    }

    /// Closes the pool: waiting and future `get()` calls fail with a closed error, idle
    /// connections are closed now, checked-out ones when they are returned, and the reaper
    /// stops.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// pool.close();
    /// assert!(pool.is_closed());
    /// # }
    /// ```
    pub fn close(&self) {
        self.inner.dp.close();
        // deadpool's close() cannot take a member whose permit a waiter already holds; that
        // waiter then fails as closed and the member would stay idle. Take everything left.
        drop(self.inner.dp.retain(|_, _| false));
        self.inner.stop_reaper();
    }

    /// Graceful drain: closes the pool to new checkouts at once (and closes idle members),
    /// then waits until every checked-out connection has come back (and been closed) or
    /// `timeout` has passed. Connections still out at the timeout are shut down, so that
    /// their holders' next I/O fails; returns how many were.
    ///
    /// # Cancel safety
    /// Cancel safe: the pool is closed by the first poll; dropping the future only skips the
    /// waiting and the forced shutdown.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// let forced = pool.drain(std::time::Duration::from_secs(5)).await;
    /// assert_eq!(forced, 0);
    /// assert!(pool.is_closed());
    /// # }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.close();
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        loop {
            let gone = shared.gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if shared.members() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                break;
            }
        }
        let out = shared.live_members();
        for member in &out {
            tracing::warn!(
                conn.id = member.id(),
                "drain timed out: shutting down a checked-out connection"
            );
            member.force_close();
        }
        out.len()
    }

    /// Changes `max_size` at runtime. Shrinking closes idle members first (the coldest),
    /// never more than needed; connections in use above the new size are closed when they
    /// are returned. Does nothing on a closed pool.
    ///
    /// # Errors
    /// A [`SizeError`]: zero, or less than the current `min_idle`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// pool.resize(4).unwrap();
    /// assert_eq!(pool.status().max_size, 4);
    /// assert!(pool.resize(0).is_err());
    /// # }
    /// ```
    pub fn resize(&self, max_size: usize) -> Result<(), SizeError> {
        let shared = &self.inner.shared;
        SizeError::check(max_size, shared.min_idle())?;
        shared.set_max_size(max_size);
        self.inner.dp.resize(max_size);
        Ok(())
    }

    /// Changes `min_idle` at runtime; the reaper refills (or lets idle timeout shrink) toward it.
    ///
    /// # Errors
    /// A [`SizeError`]: more than the current `max_size`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").max_size(4).build().unwrap();
    /// pool.set_min_idle(2).unwrap();
    /// assert!(pool.set_min_idle(5).is_err());
    /// # }
    /// ```
    pub fn set_min_idle(&self, min_idle: usize) -> Result<(), SizeError> {
        let shared = &self.inner.shared;
        SizeError::check(shared.max_size(), min_idle)?;
        shared.set_min_idle(min_idle);
        Ok(())
    }

    /// The endpoint as configured: `"host:port"`, an address, or `"unix:/path"`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:6379").build().unwrap();
    /// assert_eq!(pool.endpoint(), "127.0.0.1:6379");
    /// # }
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.inner.shared.endpoint
    }

    /// The balancer's load order: no idle member (a checkout would connect or wait), then
    /// members in use plus callers waiting. Skips the breaker's lock that `status()` takes.
    pub(crate) fn load(&self) -> (bool, usize) {
        let s = self.inner.dp.status();
        let (size, idle) = occupancy(&s, self.inner.shared.husks());
        (idle == 0, size - idle + s.waiting)
    }

    /// A handle that ends the breaker's open period and asks this pool's reaper for a
    /// refill now, without keeping the pool alive (the balancer calls it when an ejection
    /// ends: the endpoint is probed at once, not after the rest of an open period or a
    /// refill backoff grown during the outage).
    pub(crate) fn on_return_from_ejection(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::downgrade(&self.inner.shared);
        move || {
            if let Some(s) = shared.upgrade() {
                s.end_open_period();
                s.refill_soon();
            }
        }
    }

    /// True while the breaker would refuse a connect now.
    pub(crate) fn breaker_refuses(&self) -> bool {
        self.inner.shared.breaker_refuses()
    }

    pub(crate) fn wait_timeout(&self) -> Option<Duration> {
        self.inner.shared.config.wait_timeout
    }

    /// The error of a `get()` that a caller's deadline cut short (counted as a timeout).
    pub(crate) fn timeout_error(&self) -> Error {
        map_error(&self.inner.shared, PoolError::Timeout(TimeoutType::Wait))
    }

    /// True after [`Pool::close`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// assert!(!pool.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.dp.is_closed()
    }
}

fn map_error(shared: &PoolShared, e: PoolError<Error>) -> Error {
    let addr = Some(shared.endpoint.clone());
    match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(TimeoutType::Wait) => {
            shared.stats.get_timeouts.fetch_add(1, Relaxed);
            Error::timeout(TimeoutPhase::Wait, addr)
        }
        PoolError::Timeout(TimeoutType::Create) => Error::timeout(TimeoutPhase::Connect, addr),
        // No recycle timeout is configured (the checkout's checks do not wait): cannot happen.
        PoolError::Timeout(TimeoutType::Recycle) => Error::timeout(TimeoutPhase::Wait, addr),
        _ => Error::closed(),
    }
}

impl<P: Protocol> fmt::Debug for Pool<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.inner.shared.endpoint)
            .field("status", &self.status())
            .finish()
    }
}
