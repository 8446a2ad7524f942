//! Errors: [`Error`] from `get()`, [`BuildError`] from `build()`.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Which phase of a checkout ran out of time.
///
/// ```
/// use livepool::TimeoutPhase;
/// assert_eq!(TimeoutPhase::Connect.as_str(), "connect");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Waiting for a free slot in a full pool.
    Wait,
    /// Opening a new connection.
    Connect,
}

impl TimeoutPhase {
    /// A stable lowercase name.
    ///
    /// ```
    /// assert_eq!(livepool::TimeoutPhase::Wait.as_str(), "wait");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Wait => "wait",
            TimeoutPhase::Connect => "connect",
        }
    }
}

#[derive(Debug)]
enum Kind {
    Timeout(TimeoutPhase),
    Closed,
    Connect,
    Setup,
    /// A configuration mistake found at setup; `held`: remembered from an earlier connect,
    /// the next one is allowed after this long.
    Config {
        held: Option<Duration>,
    },
    /// The server answered that it cannot serve yet (starting up, loading, busy).
    ServerBusy,
    CircuitOpen {
        retry_after: Duration,
    },
    LocalResource {
        cause: &'static str,
    },
    /// A [`Balancer`](crate::Balancer) tried every endpoint: each one's error.
    AllEndpoints(Vec<Error>),
}

/// The error of [`Pool::get`](crate::Pool::get).
///
/// Opaque: ask it what happened with the predicates; the underlying cause (for a failed
/// connect, the real `io::Error`) is its [`source`](std::error::Error::source).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing listens on port 1 of loopback: the connect is refused at once.
/// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
/// let err = pool.get().await.unwrap_err();
/// assert!(err.is_connect());
/// assert!(err.to_string().contains("refused"), "{err}");
/// # }
/// ```
pub struct Error {
    kind: Kind,
    endpoint: Option<Arc<str>>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    pub(crate) fn timeout(phase: TimeoutPhase, endpoint: Option<Arc<str>>) -> Self {
        Error {
            kind: Kind::Timeout(phase),
            endpoint,
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, e: io::Error) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    pub(crate) fn closed() -> Self {
        Error {
            kind: Kind::Closed,
            endpoint: None,
            source: None,
        }
    }

    pub(crate) fn connect(endpoint: Arc<str>, e: io::Error) -> Self {
        Error {
            kind: Kind::Connect,
            endpoint: Some(endpoint),
            source: Some(Box::new(e)),
        }
    }

    pub(crate) fn connect_timeout(endpoint: Arc<str>, e: io::Error) -> Self {
        Error::timeout(TimeoutPhase::Connect, Some(endpoint)).with_source(e)
    }

    pub(crate) fn setup(endpoint: Arc<str>, e: crate::protocol::SetupError) -> Self {
        Error {
            kind: Kind::Setup,
            endpoint: Some(endpoint),
            source: Some(Box::new(e)),
        }
    }

    /// A configuration mistake found at setup (the source says which).
    pub(crate) fn config(
        endpoint: Arc<str>,
        e: Box<dyn StdError + Send + Sync>,
        held: Option<Duration>,
    ) -> Self {
        Error {
            kind: Kind::Config { held },
            endpoint: Some(endpoint),
            source: Some(e),
        }
    }

    /// The server said it cannot serve yet, through every retry within the connect timeout.
    pub(crate) fn server_busy(endpoint: Arc<str>, e: crate::protocol::SetupError) -> Self {
        Error {
            kind: Kind::ServerBusy,
            endpoint: Some(endpoint),
            source: Some(Box::new(e)),
        }
    }

    /// A connect (or setup) that failed because this process ran out of a resource; `cause`
    /// names it (see `transport::blame`).
    pub(crate) fn local_resource(endpoint: Arc<str>, cause: &'static str, e: io::Error) -> Self {
        Error {
            kind: Kind::LocalResource { cause },
            endpoint: Some(endpoint),
            source: Some(Box::new(e)),
        }
    }

    /// Every endpoint of a balancer failed; `failures` holds each one's error (empty: the
    /// balancer has no endpoint).
    pub(crate) fn all_endpoints(failures: Vec<Error>) -> Self {
        Error {
            kind: Kind::AllEndpoints(failures),
            endpoint: None,
            source: None,
        }
    }

    pub(crate) fn circuit_open(
        endpoint: Arc<str>,
        retry_after: Duration,
        last: Option<io::Error>,
    ) -> Self {
        Error {
            kind: Kind::CircuitOpen { retry_after },
            endpoint: Some(endpoint),
            source: last.map(|e| Box::new(e) as Box<dyn StdError + Send + Sync>),
        }
    }

    /// True when a phase timed out; [`Error::timeout_phase`] says which.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_timeout() { eprintln!("{e}"); } }
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// The phase that timed out, if this is a timeout.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { println!("{:?}", e.timeout_phase()); }
    /// # }
    /// ```
    pub fn timeout_phase(&self) -> Option<TimeoutPhase> {
        match self.kind {
            Kind::Timeout(p) => Some(p),
            _ => None,
        }
    }

    /// True when the pool is closed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// pool.close();
    /// assert!(pool.get().await.unwrap_err().is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// True when opening a connection failed (refused, unreachable, …) or timed out.
    /// The `io::Error` is the [`source`](std::error::Error::source).
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_connect() { eprintln!("endpoint down: {e}"); } }
    /// # }
    /// ```
    pub fn is_connect(&self) -> bool {
        matches!(
            self.kind,
            Kind::Connect | Kind::Timeout(TimeoutPhase::Connect)
        )
    }

    /// True when the connection opened but the protocol's setup failed (a wrong password, an
    /// unknown database, a failed TLS handshake); the [`SetupError`](crate::SetupError) or
    /// the `io::Error` with the server's words is the [`source`](std::error::Error::source).
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_setup() { eprintln!("check the credentials: {e}"); } }
    /// # }
    /// ```
    pub fn is_setup(&self) -> bool {
        matches!(self.kind, Kind::Setup)
    }

    /// True when the connection failed for a mistake in this client's configuration, found
    /// at setup: no password for the server's authentication method, credentials the server
    /// rejects, an unknown database or user, a server certificate that does not verify for
    /// the configured name or roots. The server is up and answering, so this does not open
    /// the circuit breaker or count against the endpoint in a balancer; instead the pool
    /// tries such a connect at most once a second while the mistake lasts, and a `get()` in
    /// between gets the remembered error at once, with [`Error::retry_after`] set.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_config() { eprintln!("fix the configuration: {e}"); } }
    /// # }
    /// ```
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config { .. })
    }

    /// True when the server answered that it cannot serve yet: PostgreSQL starting up or
    /// shutting down (`57P03`) or out of connection slots (`53300`), Redis loading its data
    /// (`LOADING`) or busy with a script (`BUSY`). The connect was retried with backoff
    /// within the connect timeout; the attempt counts once towards the circuit breaker, as
    /// a refused connect would.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_server_busy() { eprintln!("server not ready: {e}"); } }
    /// # }
    /// ```
    pub fn is_server_busy(&self) -> bool {
        matches!(self.kind, Kind::ServerBusy)
    }

    /// True when a new connection could not be opened because this process ran out of a
    /// resource: file descriptors (`EMFILE`, `ENFILE`), socket buffers (`ENOBUFS`), memory
    /// (`ENOMEM`) or local addresses and ephemeral ports (`EADDRNOTAVAIL`). Not the
    /// endpoint's fault: it does not count towards the circuit breaker, and the next `get()`
    /// after the resource is free connects. The `io::Error` is the
    /// [`source`](std::error::Error::source); the message names the resource, e.g. "local
    /// resource exhausted (too many open files): not the endpoint's fault".
    /// [`Statistics::local_resource_errors`](crate::Statistics::local_resource_errors)
    /// counts these.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await {
    ///     if e.is_local_resource() { eprintln!("raise the fd limit or close files: {e}"); }
    /// }
    /// # }
    /// ```
    pub fn is_local_resource(&self) -> bool {
        matches!(self.kind, Kind::LocalResource { .. })
    }

    /// True when the circuit breaker refused the checkout without trying to connect.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if e.is_circuit_open() { println!("retry in {:?}", e.retry_after()); } }
    /// # }
    /// ```
    pub fn is_circuit_open(&self) -> bool {
        matches!(self.kind, Kind::CircuitOpen { .. })
    }

    /// True when a [`Balancer`](crate::Balancer) tried every endpoint and each failed (or it
    /// has none); [`Error::endpoint_errors`] holds each one's error.
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// if let Err(e) = b.get().await {
    ///     if e.is_all_endpoints() {
    ///         for e in e.endpoint_errors() { eprintln!("{:?}: {e}", e.endpoint()); }
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_all_endpoints(&self) -> bool {
        matches!(self.kind, Kind::AllEndpoints(_))
    }

    /// Each endpoint's error when every endpoint failed (see [`Error::is_all_endpoints`]);
    /// empty otherwise.
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// if let Err(e) = b.get().await { println!("{} endpoints failed", e.endpoint_errors().len()); }
    /// # }
    /// ```
    pub fn endpoint_errors(&self) -> &[Error] {
        match &self.kind {
            Kind::AllEndpoints(v) => v,
            _ => &[],
        }
    }

    /// The endpoint this error is about, as configured (`"host:port"`, an address, or
    /// `"unix:/path"`), if it is about one.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { println!("{:?}", e.endpoint()); }
    /// # }
    /// ```
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// How long until the pool tries a connect again: while the breaker is open
    /// ([`Error::is_circuit_open`]), or while a configuration error is remembered
    /// ([`Error::is_config`]).
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { if let Some(d) = e.retry_after() { tokio::time::sleep(d).await; } }
    /// # }
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::CircuitOpen { retry_after } => Some(retry_after),
            Kind::Config { held } => held,
            _ => None,
        }
    }

    /// The `io::Error` behind a failed connect (or a local resource failure), if there is one.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool::Pool) {
    /// if let Err(e) = pool.get().await { println!("{:?}", e.io_error().map(|e| e.kind())); }
    /// # }
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()?.downcast_ref::<io::Error>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Timeout(TimeoutPhase::Wait) => {
                f.write_str("timed out waiting for a free connection")?
            }
            Kind::Timeout(TimeoutPhase::Connect) => f.write_str("timed out connecting")?,
            Kind::Closed => return f.write_str("pool is closed"),
            Kind::Connect => f.write_str("connect failed")?,
            Kind::Setup => f.write_str("connection setup failed")?,
            Kind::Config { held: None } => f.write_str("configuration error")?,
            Kind::Config { held: Some(d) } => write!(
                f,
                "configuration error (from the last connect; next attempt in {d:?})"
            )?,
            Kind::ServerBusy => f.write_str("server not ready")?,
            Kind::CircuitOpen { retry_after } => {
                write!(f, "circuit breaker open, retry after {retry_after:?}")?
            }
            Kind::LocalResource { cause } => write!(
                f,
                "local resource exhausted ({cause}): not the endpoint's fault; connect failed"
            )?,
            Kind::AllEndpoints(failures) if failures.is_empty() => {
                return f.write_str("the balancer has no endpoint");
            }
            Kind::AllEndpoints(failures) => {
                write!(f, "all {} endpoints failed", failures.len())?;
                for (i, e) in failures.iter().enumerate() {
                    f.write_str(if i == 0 { ": " } else { "; " })?;
                    write!(f, "{e}")?;
                }
                return Ok(());
            }
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, " ({endpoint})")?;
        }
        // The cause is part of the message: "connection refused" must be what a user reads.
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn StdError + 'static))
    }
}

/// A configuration refused by [`Builder::build`](crate::Builder::build), naming the field.
///
/// ```
/// let err = livepool::Pool::builder("127.0.0.1:1").max_size(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_size");
/// assert!(err.to_string().starts_with("invalid max_size"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    field: &'static str,
    reason: String,
}

impl BuildError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        BuildError {
            field,
            reason: reason.into(),
        }
    }

    /// The builder field that is wrong (the setter's name).
    ///
    /// ```
    /// let err = livepool::Pool::builder("127.0.0.1:1").connect_timeout(Some(std::time::Duration::ZERO)).build().unwrap_err();
    /// assert_eq!(err.field(), "connect_timeout");
    /// ```
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it is wrong.
    ///
    /// ```
    /// let err = livepool::Pool::builder("127.0.0.1:1").max_size(0).build().unwrap_err();
    /// assert!(!err.reason().is_empty());
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl StdError for BuildError {}

/// Sizes refused by [`Pool::resize`](crate::Pool::resize) or
/// [`Pool::set_min_idle`](crate::Pool::set_min_idle): `max_size` zero, or `min_idle` above
/// it. The pool keeps the sizes it had.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pool = livepool::Pool::builder("127.0.0.1:1").max_size(4).build().unwrap();
/// let err = pool.set_min_idle(5).unwrap_err();
/// assert_eq!((err.max_size(), err.min_idle()), (4, 5));
/// assert_eq!(err.to_string(), "min_idle 5 is larger than max_size 4");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeError {
    max_size: usize,
    min_idle: usize,
}

impl SizeError {
    /// `Some` when `max_size` and `min_idle` cannot go together.
    pub(crate) fn check(max_size: usize, min_idle: usize) -> Result<(), SizeError> {
        if max_size == 0 || min_idle > max_size {
            Err(SizeError { max_size, min_idle })
        } else {
            Ok(())
        }
    }

    /// The `max_size` that was asked for (or kept, for `set_min_idle`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").build().unwrap();
    /// assert_eq!(pool.resize(0).unwrap_err().max_size(), 0);
    /// # }
    /// ```
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The `min_idle` that was asked for (or kept, for `resize`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let pool = livepool::Pool::builder("127.0.0.1:1").max_size(2).build().unwrap();
    /// assert_eq!(pool.set_min_idle(3).unwrap_err().min_idle(), 3);
    /// # }
    /// ```
    pub fn min_idle(&self) -> usize {
        self.min_idle
    }
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max_size == 0 {
            f.write_str("max_size must be at least 1")
        } else {
            write!(
                f,
                "min_idle {} is larger than max_size {}",
                self.min_idle, self.max_size
            )
        }
    }
}

impl StdError for SizeError {}
