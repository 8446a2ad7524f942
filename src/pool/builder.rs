//! `Pool::builder(addr)` → setters → `build()`, where all validation happens.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::pool::Pool;
use crate::pool::config::{Config, HealthObserver, PoolConfig};
use crate::pool::error::BuildError;
use crate::protocol::{Protocol, Raw};
use crate::transport::{Endpoint, TcpOptions};

/// An endpoint address. Nothing is resolved here: a host name is resolved again at every
/// connect (asynchronously), so that new connections follow DNS changes.
///
/// - a [`SocketAddr`](std::net::SocketAddr) or `(IpAddr, u16)`;
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

/// Configures and builds a [`Pool`]: the endpoint, the protocol, TLS, and the settings of a
/// [`PoolConfig`], whole ([`config`](Self::config)) or one at a time with the setter of the
/// field's name. Setters consume the builder; nothing is checked until
/// [`Builder::build`], which names the first wrong field.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:6379")
///     .max_size(32)
///     .connect_timeout(Duration::from_secs(2))
///     .idle_timeout(Duration::from_secs(60))
///     .build()
///     .expect("valid configuration");
/// assert_eq!(pool.status().max_size, 32);
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder<P: Protocol = Raw> {
    endpoint: Result<Endpoint, String>,
    settings: PoolConfig,
    /// Shared: a balancer builds every endpoint's pool with one protocol value.
    protocol: Arc<P>,
    #[cfg(feature = "tls")]
    tls: Option<Result<crate::transport::tls::TlsSettings, String>>,
    /// Mixed into the jitter seed (a balancer's endpoints must not share one).
    salt: u64,
    /// Hears every outcome the breaker hears (a balancer's outlier detection).
    observer: Option<Arc<dyn HealthObserver>>,
}

impl Builder<Raw> {
    pub(crate) fn new(addr: impl IntoAddr) -> Self {
        Builder {
            endpoint: sealed::Sealed::into_endpoint(addr),
            settings: PoolConfig::default(),
            protocol: Arc::new(Raw),
            #[cfg(feature = "tls")]
            tls: None,
            salt: 0,
            observer: None,
        }
    }
}

/// A setter of the builder for the [`PoolConfig`] field of the same name.
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty $(=> $into:ident)?;)*) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: $ty) -> Self {
            self.settings.$field = value$(.$into())?;
            self
        }
    )*};
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
        self.shared_protocol(Arc::new(protocol))
    }

    /// The protocol, shared with other pools (a balancer's endpoints).
    pub(crate) fn shared_protocol<Q: Protocol>(self, protocol: Arc<Q>) -> Builder<Q> {
        Builder {
            endpoint: self.endpoint,
            settings: self.settings,
            protocol,
            #[cfg(feature = "tls")]
            tls: self.tls,
            salt: self.salt,
            observer: self.observer,
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
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.tls = Some(crate::transport::tls::TlsSettings::new(config, server_name));
        self
    }

    /// Every setting at once, replacing what earlier setters set (later setters change
    /// single fields of it).
    ///
    /// ```
    /// let config = livepool::PoolConfig { max_size: 8, ..livepool::PoolConfig::default() };
    /// let b = livepool::Pool::builder("127.0.0.1:1").config(config).min_idle(2);
    /// ```
    /// Default: [`PoolConfig::default`].
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.settings = config;
        self
    }

    setters! {
        /// [`PoolConfig::max_size`]: most connections open at once.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").max_size(8);
        /// ```
        max_size: usize;
        /// [`PoolConfig::min_idle`]: idle connections kept open in the background.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").min_idle(2);
        /// ```
        min_idle: usize;
        /// [`PoolConfig::connect_timeout`]: bound on opening one connection (`None`: the
        /// kernel's).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").connect_timeout(std::time::Duration::from_secs(1));
        /// ```
        connect_timeout: impl Into<Option<Duration>> => into;
        /// [`PoolConfig::wait_timeout`]: bound on waiting for a free slot (`None`: forever).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").wait_timeout(None);
        /// ```
        wait_timeout: impl Into<Option<Duration>> => into;
        /// [`PoolConfig::tcp`]: the socket options of every new TCP connection.
        ///
        /// ```
        /// let tcp = livepool::TcpOptions { nodelay: false, ..Default::default() };
        /// let b = livepool::Pool::builder("127.0.0.1:1").tcp(tcp);
        /// ```
        tcp: TcpOptions;
        /// [`PoolConfig::idle_timeout`]: close connections idle longer than this (`None`:
        /// never).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").idle_timeout(std::time::Duration::from_secs(60));
        /// ```
        idle_timeout: impl Into<Option<Duration>> => into;
        /// [`PoolConfig::max_lifetime`]: close connections older than this (`None`: never).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").max_lifetime(None);
        /// ```
        max_lifetime: impl Into<Option<Duration>> => into;
        /// [`PoolConfig::lifetime_jitter`]: the random share taken off each lifetime.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").lifetime_jitter(0.1);
        /// ```
        lifetime_jitter: f64;
        /// [`PoolConfig::request_response`]: a write must be followed by a read before the
        /// connection may go back.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").request_response(false);
        /// ```
        request_response: bool;
        /// [`PoolConfig::reap_interval`]: the granularity of the reaper's schedule.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").reap_interval(std::time::Duration::from_millis(100));
        /// ```
        reap_interval: Duration;
        /// [`PoolConfig::heartbeat_interval`]: how long an idle member may go without a
        /// heartbeat.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_interval(std::time::Duration::from_secs(10));
        /// ```
        heartbeat_interval: Duration;
        /// [`PoolConfig::heartbeat_timeout`]: the deadline of one heartbeat.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_timeout(std::time::Duration::from_secs(1));
        /// ```
        heartbeat_timeout: Duration;
        /// [`PoolConfig::heartbeat_jitter`]: the random share taken off each heartbeat
        /// interval.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").heartbeat_jitter(0.0);
        /// ```
        heartbeat_jitter: f64;
        /// [`PoolConfig::idle_watch`]: evict idle members the moment the peer closes.
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").idle_watch(false);
        /// ```
        idle_watch: bool;
        /// [`PoolConfig::breaker`]: the circuit breaker (`None`: off).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1")
        ///     .breaker(livepool::BreakerConfig::new().failure_threshold(5));
        /// let off = livepool::Pool::builder("127.0.0.1:1").breaker(None);
        /// ```
        breaker: impl Into<Option<BreakerConfig>> => into;
        /// [`PoolConfig::leak_threshold`]: warn about connections held longer than this
        /// (`None`: off).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").leak_threshold(std::time::Duration::from_secs(30));
        /// ```
        leak_threshold: impl Into<Option<Duration>> => into;
        /// [`PoolConfig::jitter_seed`]: the seed of every jitter (`None`: random per pool).
        ///
        /// ```
        /// let b = livepool::Pool::builder("127.0.0.1:1").jitter_seed(42);
        /// ```
        jitter_seed: impl Into<Option<u64>> => into;
    }

    /// The endpoint's name as the pool will report it (the parse error text if it has none).
    pub(crate) fn endpoint_name(&self) -> String {
        match &self.endpoint {
            Ok(e) => e.to_string(),
            Err(e) => e.clone(),
        }
    }

    /// Mixes `salt` into the jitter seed (the balancer's endpoints must not share one).
    pub(crate) fn salt_jitter_seed(mut self, salt: u64) -> Self {
        self.salt ^= salt;
        self
    }

    /// Tells `observer` every outcome the breaker hears (a balancer's outlier detection).
    pub(crate) fn observer(mut self, observer: Arc<dyn HealthObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates the configuration and builds the pool. Must be called within a tokio runtime:
    /// the pool's reaper task is spawned on it.
    ///
    /// # Errors
    /// A [`BuildError`] naming the first wrong field (`addr` when the address cannot be
    /// parsed; nothing is resolved here; `tcp.keepalive` and the like for a field of a
    /// nested setting).
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
        let endpoint = self.endpoint.map_err(|e| BuildError::new("addr", e))?;
        let has_heartbeat = self.protocol.has_heartbeat();
        self.settings.validate(has_heartbeat)?;
        let mut config = Config::new(endpoint, self.settings, has_heartbeat);
        config.seed ^= self.salt;
        config.observer = self.observer;
        #[cfg(feature = "tls")]
        {
            config.tls = self
                .tls
                .transpose()
                .map_err(|e| BuildError::new("tls", e))?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BuildError::new("runtime", "build() must be called within a tokio runtime")
        })?;
        Pool::from_config(config, self.protocol, &runtime)
    }
}

impl<P: Protocol> std::fmt::Debug for Builder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
