//! `Pool::builder(addr)` → setters → `build()`, where all validation happens.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::BuildError;
use crate::heartbeat::Heartbeat;
use crate::pool::Pool;

/// An endpoint address: a [`SocketAddr`], or a `"host:port"` string resolved at `build()`.
///
/// ```
/// let a = livepool::Pool::builder("127.0.0.1:6379");
/// let b = livepool::Pool::builder(std::net::SocketAddr::from(([127, 0, 0, 1], 6379)));
/// ```
pub trait IntoAddr: sealed::Sealed {
    #[doc(hidden)]
    fn into_addr(self) -> Result<SocketAddr, String>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::SocketAddr {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for (std::net::IpAddr, u16) {}
}

impl IntoAddr for SocketAddr {
    fn into_addr(self) -> Result<SocketAddr, String> {
        Ok(self)
    }
}

impl IntoAddr for (std::net::IpAddr, u16) {
    fn into_addr(self) -> Result<SocketAddr, String> {
        Ok(self.into())
    }
}

impl IntoAddr for &str {
    fn into_addr(self) -> Result<SocketAddr, String> {
        if let Ok(a) = self.parse() {
            return Ok(a);
        }
        let mut addrs = self
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {self:?}: {e}"))?;
        addrs
            .next()
            .ok_or_else(|| format!("{self:?} resolves to no address"))
    }
}

impl IntoAddr for String {
    fn into_addr(self) -> Result<SocketAddr, String> {
        self.as_str().into_addr()
    }
}

/// Configures and builds a [`Pool`]. Setters consume the builder; nothing is checked until
/// [`Builder::build`], which names the first wrong field.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:6379")
///     .max_size(32)
///     .connect_timeout(Some(Duration::from_secs(2)))
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .build()
///     .expect("valid configuration");
/// assert_eq!(pool.status().max_size, 32);
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
#[derive(Debug)]
pub struct Builder {
    addr: Result<SocketAddr, String>,
    config: Config,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$name = value;
            self
        }
    };
}

impl Builder {
    pub(crate) fn new(addr: impl IntoAddr) -> Self {
        let addr = addr.into_addr();
        let placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        Builder {
            config: Config::new(*addr.as_ref().unwrap_or(&placeholder)),
            addr,
        }
    }

    setter! {
        /// Most connections open at once, idle or in use. Must be at least 1.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").max_size(8);
        /// ```
        /// Default: 16.
        max_size: usize
    }

    setter! {
        /// Idle connections the reaper keeps open in the background (refilled after evictions,
        /// never above `max_size`). Idle timeout never closes these.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").min_idle(2);
        /// ```
        /// Default: 0.
        min_idle: usize
    }

    setter! {
        /// Bound on opening one connection; `None` leaves it to the kernel (and
        /// `tcp_user_timeout`, which also bounds SYN retries). Zero is refused.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").connect_timeout(Some(std::time::Duration::from_secs(1)));
        /// ```
        /// Default: 5 s.
        connect_timeout: Option<Duration>
    }

    setter! {
        /// Bound on waiting for a free slot when `max_size` connections are in use; `None` waits
        /// forever; zero fails at once when nothing is free.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").wait_timeout(None);
        /// ```
        /// Default: 30 s.
        wait_timeout: Option<Duration>
    }

    setter! {
        /// Sets `TCP_NODELAY` on new connections.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_nodelay(false);
        /// ```
        /// Default: true.
        tcp_nodelay: bool
    }

    setter! {
        /// TCP keepalive idle time (`TCP_KEEPIDLE`) before the first probe; `None` disables
        /// keepalive. At most 32,767 s.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive(Some(std::time::Duration::from_secs(30)));
        /// ```
        /// Default: 60 s.
        tcp_keepalive: Option<Duration>
    }

    setter! {
        /// Time between keepalive probes (`TCP_KEEPINTVL`). At most 32,767 s.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive_interval(std::time::Duration::from_secs(5));
        /// ```
        /// Default: 10 s.
        tcp_keepalive_interval: Duration
    }

    setter! {
        /// Unanswered keepalive probes before the kernel drops the connection (`TCP_KEEPCNT`),
        /// 1 to 127. Linux ignores it when `tcp_user_timeout` is set.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive_retries(5);
        /// ```
        /// Default: 3.
        tcp_keepalive_retries: u32
    }

    setter! {
        /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
        /// drops the connection; also bounds connect retries. `None` keeps the kernel's ~15 min.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_user_timeout(Some(std::time::Duration::from_secs(10)));
        /// ```
        /// Default: 30 s.
        tcp_user_timeout: Option<Duration>
    }

    setter! {
        /// Close connections idle (since returned, or since their last good heartbeat) longer
        /// than this, except the `min_idle` warmest. `None` disables it. Not longer than
        /// `max_lifetime`.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").idle_timeout(None);
        /// ```
        /// Default: 300 s.
        idle_timeout: Option<Duration>
    }

    setter! {
        /// Close connections older than this (less a per-connection jitter); a connection
        /// that expires while checked out is closed when returned. `None` disables it.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").max_lifetime(Some(std::time::Duration::from_secs(600)));
        /// ```
        /// Default: 30 min.
        max_lifetime: Option<Duration>
    }

    setter! {
        /// Each connection's lifetime is shortened by a random fraction up to this, so that
        /// connections opened together do not expire together. In [0, 1).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").lifetime_jitter(0.0);
        /// ```
        /// Default: 0.05.
        lifetime_jitter: f64
    }

    setter! {
        /// Request/response policy: a connection on which a write was not followed by a read
        /// is not returned to the pool (its response would reach the next caller). Set `false`
        /// for one-way protocols.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").request_response(false);
        /// ```
        /// Default: true.
        request_response: bool
    }

    setter! {
        /// How often the reaper checks idle members for idle timeout, lifetime and due heartbeats.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").reap_interval(std::time::Duration::from_millis(250));
        /// ```
        /// Default: 1 s.
        reap_interval: Duration
    }

    setter! {
        /// How long an idle member may go without a heartbeat (less jitter).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_interval(std::time::Duration::from_secs(10));
        /// ```
        /// Default: 30 s.
        heartbeat_interval: Duration
    }

    setter! {
        /// Deadline of one heartbeat; a member that does not answer in time is evicted. Must be
        /// shorter than `heartbeat_interval`.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_timeout(std::time::Duration::from_secs(1));
        /// ```
        /// Default: 5 s.
        heartbeat_timeout: Duration
    }

    setter! {
        /// Each member's heartbeat interval is shortened by a fraction up to this, so that
        /// heartbeats spread out. In [0, 1).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_jitter(0.0);
        /// ```
        /// Default: 0.1.
        heartbeat_jitter: f64
    }

    setter! {
        /// Watch idle members' sockets and evict one the moment the peer closes or resets it,
        /// or sends bytes nobody asked for.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").idle_watch(false);
        /// ```
        /// Default: true.
        idle_watch: bool
    }

    setter! {
        /// Seed of the lifetime and heartbeat jitter (deterministic per connection id).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").jitter_seed(42);
        /// ```
        /// Default: a fixed constant.
        jitter_seed: u64
    }

    /// A protocol ping for idle members, run every `heartbeat_interval` with its own
    /// `heartbeat_timeout`. Without it, idle members get no heartbeat.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:6379").heartbeat(livepool::RedisHeartbeat);
    /// ```
    /// Default: none.
    pub fn heartbeat(mut self, heartbeat: impl Heartbeat) -> Self {
        self.config.heartbeat = Some(Arc::new(heartbeat));
        self
    }

    setter! {
        /// Leak detection: a connection held longer than this logs a warning (once per
        /// checkout) with its id and the place of the `get()` call, and is counted in
        /// [`Statistics::leaks`](crate::Statistics::leaks). Checked every `reap_interval`.
        /// `None` turns it off (and saves a clock read per checkout).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").leak_threshold(Some(std::time::Duration::from_secs(30)));
        /// ```
        /// Default: none.
        leak_threshold: Option<Duration>
    }

    setter! {
        /// The circuit breaker for this endpoint; `None` turns it off (every `get()` that
        /// needs a new connection then tries to connect).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1")
        ///     .breaker(Some(livepool::BreakerConfig::new().failure_threshold(5)));
        /// let off = livepool::Pool::builder("127.0.0.1:1").breaker(None);
        /// ```
        /// Default: `Some(BreakerConfig::default())` (3 failures, 30 s open, doubling to 5 min).
        breaker: Option<crate::breaker::BreakerConfig>
    }

    /// Validates the configuration and builds the pool. Must be called within a tokio runtime:
    /// the pool's reaper task is spawned on it.
    ///
    /// # Errors
    /// A [`BuildError`] naming the first wrong field (`addr` when the address does not resolve).
    ///
    /// Outside a tokio runtime it returns an error for the field `runtime`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let err = livepool::Pool::builder("127.0.0.1:1").min_idle(5).max_size(2).build().unwrap_err();
    /// assert_eq!(err.field(), "min_idle");
    /// # }
    /// ```
    pub fn build(self) -> Result<Pool, BuildError> {
        let mut config = self.config;
        config.addr = self.addr.map_err(|e| BuildError::new("addr", e))?;
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BuildError::new("runtime", "build() must be called within a tokio runtime")
        })?;
        Pool::from_config(config, &runtime)
    }
}
