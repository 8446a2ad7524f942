//! `Pool::builder(addr)` → setters → `build()`, where all validation happens.

use std::net::SocketAddr;
use std::time::Duration;

use crate::pool::Pool;
use crate::pool::config::Config;
use crate::pool::error::BuildError;
use crate::protocol::{Protocol, Raw};
use crate::transport::{Endpoint, Target};

/// An endpoint address. Nothing is resolved here: a host name is resolved again at every
/// connect (asynchronously), so that new connections follow DNS changes.
///
/// - a [`SocketAddr`] or `(IpAddr, u16)`;
/// - `"host:port"` or `"1.2.3.4:port"` or `"[::1]:port"`;
/// - `"unix:/path/to/socket"`, or a [`Path`](std::path::Path)/[`PathBuf`](std::path::PathBuf), for a Unix domain socket (the TCP
///   options are skipped there).
///
/// ```
/// let a = livepool::Pool::builder("127.0.0.1:6379");
/// let b = livepool::Pool::builder(std::net::SocketAddr::from(([127, 0, 0, 1], 6379)));
/// let c = livepool::Pool::builder("redis.internal:6379");
/// let d = livepool::Pool::builder("unix:/run/redis/redis.sock");
/// let e = livepool::Pool::builder(std::path::Path::new("/run/redis/redis.sock"));
/// ```
pub trait IntoAddr: sealed::Sealed {}

// The conversion is out of reach of other crates; `Endpoint` is crate-private on purpose.
#[allow(private_interfaces)]
mod sealed {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};

    use crate::transport::{Endpoint, Target};

    pub trait Sealed {
        fn into_endpoint(self) -> Result<Endpoint, String>;
    }

    impl Sealed for SocketAddr {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            Ok(Endpoint::Tcp(Target::Addr(self)))
        }
    }

    impl Sealed for (std::net::IpAddr, u16) {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            Sealed::into_endpoint(SocketAddr::from(self))
        }
    }

    impl Sealed for &str {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            Endpoint::parse(self)
        }
    }

    impl Sealed for String {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            Endpoint::parse(&self)
        }
    }

    impl Sealed for &Path {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            Sealed::into_endpoint(self.to_path_buf())
        }
    }

    impl Sealed for PathBuf {
        fn into_endpoint(self) -> Result<Endpoint, String> {
            if self.as_os_str().is_empty() {
                return Err("an empty Unix socket path".into());
            }
            Ok(Endpoint::Unix(self))
        }
    }
}

impl<T: sealed::Sealed> IntoAddr for T {}

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
pub struct Builder<P: Protocol = Raw> {
    endpoint: Result<Endpoint, String>,
    config: Config,
    protocol: P,
    #[cfg(feature = "tls")]
    tls: Option<Result<crate::transport::tls::TlsSettings, String>>,
}

impl Builder<Raw> {
    pub(crate) fn new(addr: impl IntoAddr) -> Self {
        let endpoint = sealed::Sealed::into_endpoint(addr);
        let placeholder = Endpoint::Tcp(Target::Addr(SocketAddr::from(([0, 0, 0, 0], 0))));
        Builder {
            config: Config::new(endpoint.clone().unwrap_or(placeholder)),
            endpoint,
            protocol: Raw,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl<P: Protocol> Builder<P> {
    /// The client protocol: setup of every new connection, its heartbeat, the clean-return
    /// check and what bytes on an idle member mean. `get()` then returns `Conn<Q>`, which
    /// derefs to the protocol's connection type.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool: livepool::Pool<livepool::RedisPing> = livepool::Pool::builder("127.0.0.1:1")
    ///     .protocol(livepool::RedisPing)
    ///     .build()
    ///     .unwrap();
    /// # }
    /// ```
    /// Default: [`Raw`] (raw bytes, no heartbeat). [`FramePing`](crate::FramePing) and
    /// [`RedisPing`](crate::RedisPing) are raw bytes with a ping.
    pub fn protocol<Q: Protocol>(self, protocol: Q) -> Builder<Q> {
        Builder {
            endpoint: self.endpoint,
            config: self.config,
            protocol,
            #[cfg(feature = "tls")]
            tls: self.tls,
        }
    }

    /// TLS (cargo feature `tls`) on every connection, with rustls: `config` says what to
    /// trust (and any client certificate); the server's certificate must be valid for
    /// `server_name` (a DNS name or an IP address). The handshake is part of opening a
    /// connection, bounded by `connect_timeout`; the protocol's setup runs over TLS.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let roots = livepool::rustls::RootCertStore::empty();
    /// let config = livepool::rustls::ClientConfig::builder_with_provider(Arc::new(
    ///         livepool::rustls::crypto::ring::default_provider()))
    ///     .with_safe_default_protocol_versions().unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let pool = livepool::Pool::builder("redis.internal:6380")
    ///     .tls(Arc::new(config), "redis.internal")
    ///     .build()
    ///     .unwrap();
    /// # }
    /// ```
    /// Default: plain TCP.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.tls = Some(crate::transport::tls::TlsSettings::new(config, server_name));
        self
    }

    /// Most connections open at once, idle or in use. Must be at least 1.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").max_size(8);
    /// ```
    /// Default: 16.
    pub fn max_size(mut self, value: usize) -> Self {
        self.config.max_size = value;
        self
    }

    /// Idle connections the reaper keeps open in the background (refilled after evictions,
    /// never above `max_size`). Idle timeout never closes these.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").min_idle(2);
    /// ```
    /// Default: 0.
    pub fn min_idle(mut self, value: usize) -> Self {
        self.config.min_idle = value;
        self
    }

    /// Bound on opening one connection, all of it: resolving the name, connecting (each
    /// address tried gets an even share of what is left), the TLS handshake and the
    /// protocol's setup. `None` leaves it to the kernel (and `tcp_user_timeout`, which also
    /// bounds SYN retries). Zero is refused.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").connect_timeout(Some(std::time::Duration::from_secs(1)));
    /// ```
    /// Default: 5 s.
    pub fn connect_timeout(mut self, value: Option<Duration>) -> Self {
        self.config.connect_timeout = value;
        self
    }

    /// Bound on waiting for a free slot when `max_size` connections are in use; `None` waits
    /// forever; zero fails at once when nothing is free.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").wait_timeout(None);
    /// ```
    /// Default: 30 s.
    pub fn wait_timeout(mut self, value: Option<Duration>) -> Self {
        self.config.wait_timeout = value;
        self
    }

    /// Sets `TCP_NODELAY` on new connections.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_nodelay(false);
    /// ```
    /// Default: true.
    pub fn tcp_nodelay(mut self, value: bool) -> Self {
        self.config.tcp_nodelay = value;
        self
    }

    /// TCP keepalive idle time (`TCP_KEEPIDLE`) before the first probe; `None` disables
    /// keepalive. At most 32,767 s.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive(Some(std::time::Duration::from_secs(30)));
    /// ```
    /// Default: 60 s.
    pub fn tcp_keepalive(mut self, value: Option<Duration>) -> Self {
        self.config.tcp_keepalive = value;
        self
    }

    /// Time between keepalive probes (`TCP_KEEPINTVL`). At most 32,767 s.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive_interval(std::time::Duration::from_secs(5));
    /// ```
    /// Default: 10 s.
    pub fn tcp_keepalive_interval(mut self, value: Duration) -> Self {
        self.config.tcp_keepalive_interval = value;
        self
    }

    /// Unanswered keepalive probes before the kernel drops the connection (`TCP_KEEPCNT`),
    /// 1 to 127. Linux ignores it when `tcp_user_timeout` is set.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_keepalive_retries(5);
    /// ```
    /// Default: 3.
    pub fn tcp_keepalive_retries(mut self, value: u32) -> Self {
        self.config.tcp_keepalive_retries = value;
        self
    }

    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// drops the connection; also bounds connect retries. `None` keeps the kernel's ~15 min.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").tcp_user_timeout(Some(std::time::Duration::from_secs(10)));
    /// ```
    /// Default: 30 s.
    pub fn tcp_user_timeout(mut self, value: Option<Duration>) -> Self {
        self.config.tcp_user_timeout = value;
        self
    }

    /// Close connections idle (since returned, or since their last good heartbeat) longer
    /// than this, except the `min_idle` warmest. `None` disables it. Not longer than
    /// `max_lifetime`.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").idle_timeout(None);
    /// ```
    /// Default: 300 s.
    pub fn idle_timeout(mut self, value: Option<Duration>) -> Self {
        self.config.idle_timeout = value;
        self
    }

    /// Close connections older than this (less a per-connection jitter); a connection
    /// that expires while checked out is closed when returned. `None` disables it.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").max_lifetime(Some(std::time::Duration::from_secs(600)));
    /// ```
    /// Default: 30 min.
    pub fn max_lifetime(mut self, value: Option<Duration>) -> Self {
        self.config.max_lifetime = value;
        self
    }

    /// Each connection's lifetime is shortened by a random fraction up to this, so that
    /// connections opened together do not expire together. In [0, 1).
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").lifetime_jitter(0.0);
    /// ```
    /// Default: 0.05.
    pub fn lifetime_jitter(mut self, value: f64) -> Self {
        self.config.lifetime_jitter = value;
        self
    }

    /// Request/response policy: a connection on which a write was not followed by a read
    /// is not returned to the pool (its response would reach the next caller). Set `false`
    /// for one-way protocols.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").request_response(false);
    /// ```
    /// Default: true.
    pub fn request_response(mut self, value: bool) -> Self {
        self.config.request_response = value;
        self
    }

    /// The granularity of the reaper's schedule: idle timeout, max lifetime and heartbeats
    /// fall due on ticks this far apart. Each tick visits only the members that fall due (a
    /// timing wheel), so a short interval costs wake-ups, not passes over the pool.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").reap_interval(std::time::Duration::from_millis(250));
    /// ```
    /// Default: 1 s.
    pub fn reap_interval(mut self, value: Duration) -> Self {
        self.config.reap_interval = value;
        self
    }

    /// How long an idle member may go without a heartbeat (less jitter).
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_interval(std::time::Duration::from_secs(10));
    /// ```
    /// Default: 30 s.
    pub fn heartbeat_interval(mut self, value: Duration) -> Self {
        self.config.heartbeat_interval = value;
        self
    }

    /// Deadline of one heartbeat (a member that does not answer in time is evicted), and of
    /// the protocol's reading of bytes that arrived on an idle member. Must be shorter than
    /// `heartbeat_interval`.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_timeout(std::time::Duration::from_secs(1));
    /// ```
    /// Default: 5 s.
    pub fn heartbeat_timeout(mut self, value: Duration) -> Self {
        self.config.heartbeat_timeout = value;
        self
    }

    /// Each member's heartbeat interval is shortened by a fraction up to this, so that
    /// heartbeats spread out. In [0, 1). (The first heartbeat after a return is drawn
    /// uniformly over the whole interval in any case: members returned or created together
    /// are not pinged together.)
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_jitter(0.0);
    /// ```
    /// Default: 0.1.
    pub fn heartbeat_jitter(mut self, value: f64) -> Self {
        self.config.heartbeat_jitter = value;
        self
    }

    /// Watch idle members' sockets and evict one the moment the peer closes or resets it,
    /// or sends bytes nobody asked for.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").idle_watch(false);
    /// ```
    /// Default: true.
    pub fn idle_watch(mut self, value: bool) -> Self {
        self.config.idle_watch = value;
        self
    }

    /// Seed of the lifetime, heartbeat and breaker jitter (deterministic per connection id).
    /// Pools with the same seed draw the same jitter, so the default is a fresh random seed
    /// for every pool (from the operating system's randomness): many processes started
    /// together do not expire connections, ping or probe a recovering endpoint in step. Set
    /// one to make a test reproducible. A [`Balancer`](crate::Balancer) mixes each
    /// endpoint's name into it.
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").jitter_seed(42);
    /// ```
    /// Default: random, different for every pool.
    pub fn jitter_seed(mut self, value: u64) -> Self {
        self.config.jitter_seed = value;
        self
    }

    /// Leak detection: a connection held longer than this logs a warning (once per
    /// checkout) with its id and the place of the `get()` call, and is counted in
    /// [`Statistics::leaks`](crate::Statistics::leaks). Checked every `reap_interval`.
    /// `None` turns it off (and saves a clock read per checkout).
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1").leak_threshold(Some(std::time::Duration::from_secs(30)));
    /// ```
    /// Default: none.
    pub fn leak_threshold(mut self, value: Option<Duration>) -> Self {
        self.config.leak_threshold = value;
        self
    }

    /// The circuit breaker for this endpoint; `None` turns it off (every `get()` that
    /// needs a new connection then tries to connect).
    ///
    /// ```
    /// let b = livepool::Pool::builder("127.0.0.1:1")
    ///     .breaker(Some(livepool::BreakerConfig::new().failure_threshold(5)));
    /// let off = livepool::Pool::builder("127.0.0.1:1").breaker(None);
    /// ```
    /// Default: `Some(BreakerConfig::default())` (3 failures in a row; open 200 ms, growing
    /// with the outage to a tenth of it, at most 30 s).
    pub fn breaker(mut self, value: Option<crate::breaker::BreakerConfig>) -> Self {
        self.config.breaker = value;
        self
    }

    /// The endpoint's name as the pool will report it (the parse error text if it has none).
    pub(crate) fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Ok(e) => e.to_string(),
            Err(e) => e.clone(),
        }
    }

    pub(crate) fn wait_timeout_setting(&self) -> Option<Duration> {
        self.config.wait_timeout
    }

    /// Mixes `salt` into the jitter seed (the balancer's endpoints must not share one).
    pub(crate) fn salt_jitter_seed(mut self, salt: u64) -> Self {
        self.config.jitter_seed ^= salt;
        self
    }

    /// Tells `observer` every outcome the breaker hears (a balancer's outlier detection).
    pub(crate) fn observer(
        mut self,
        observer: std::sync::Arc<dyn crate::pool::config::HealthObserver>,
    ) -> Self {
        self.config.observer = Some(observer);
        self
    }

    /// Validates the configuration and builds the pool. Must be called within a tokio runtime:
    /// the pool's reaper task is spawned on it.
    ///
    /// # Errors
    /// A [`BuildError`] naming the first wrong field (`addr` when the address cannot be
    /// parsed; nothing is resolved here).
    ///
    /// Outside a tokio runtime it returns an error for the field `runtime`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let err = livepool::Pool::builder("127.0.0.1:1").min_idle(5).max_size(2).build().unwrap_err();
    /// assert_eq!(err.field(), "min_idle");
    /// # }
    /// ```
    pub fn build(self) -> Result<Pool<P>, BuildError> {
        let mut config = self.config;
        config.endpoint = self.endpoint.map_err(|e| BuildError::new("addr", e))?;
        config.has_heartbeat = self.protocol.has_heartbeat();
        #[cfg(feature = "tls")]
        {
            config.tls = self
                .tls
                .transpose()
                .map_err(|e| BuildError::new("tls", e))?;
        }
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BuildError::new("runtime", "build() must be called within a tokio runtime")
        })?;
        Pool::from_config(config, self.protocol, &runtime)
    }
}
