//! A minimal PostgreSQL wire-protocol (v3) client session, generic over its transport.
//!
//! [`PgSession`] performs the startup handshake (SCRAM-SHA-256, md5 or cleartext password),
//! answers liveness pings with a bare `Sync`, runs simple queries with text results, and
//! classifies bytes that arrive on an idle session (notifications, notices, a `FATAL` from
//! `pg_terminate_backend`, end of stream) without blocking on them.
//!
//! Every message read from the server is length-checked before any memory is reserved for it
//! ([`MAX_MESSAGE_LEN`]), so a misbehaving server yields a [`PgError`], never a panic or an
//! unbounded allocation. Passwords never appear in `Debug` output or in errors.
//!
//! ```no_run
//! use livepool::postgres::{PgConfig, PgSession};
//! use tokio::net::TcpStream;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = PgConfig::new("app").password("secret").database("appdb");
//! let stream = TcpStream::connect("127.0.0.1:5432").await?;
//! let mut session = PgSession::startup(stream, &cfg).await?;
//! let rows = session.simple_query("SELECT 1").await?;
//! assert_eq!(rows, vec![vec![Some("1".to_string())]]);
//! session.ping().await?;
//! assert!(session.is_idle());
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::io;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use futures_util::FutureExt;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{self, ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest backend message accepted (length field included): 64 MiB.
///
/// A larger length field is treated as a protocol violation before any memory is reserved.
///
/// ```
/// assert_eq!(livepool::postgres::MAX_MESSAGE_LEN, 64 * 1024 * 1024);
/// ```
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// Most bytes reserved ahead of one read; the buffer grows with the data actually received.
const READ_CHUNK_MAX: usize = 1024 * 1024;
/// Least bytes reserved ahead of one read.
const READ_CHUNK_MIN: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Startup parameters and credentials of a PostgreSQL session.
///
/// The password is a secret: `Debug` prints it as `<redacted>` and no error ever contains it.
///
/// ```
/// use livepool::postgres::PgConfig;
///
/// let cfg = PgConfig::new("app")
///     .password("hunter2")
///     .database("appdb")
///     .application_name("livepool");
/// let shown = format!("{cfg:?}");
/// assert!(shown.contains("<redacted>"));
/// assert!(!shown.contains("hunter2"));
/// ```
#[derive(Clone)]
pub struct PgConfig {
    user: String,
    password: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
}

impl PgConfig {
    /// A configuration for `user`, with no password, the server's default database (the user
    /// name) and no application name.
    ///
    /// ```
    /// let cfg = livepool::postgres::PgConfig::new("app");
    /// assert_eq!(cfg.get_user(), "app");
    /// ```
    pub fn new(user: impl Into<String>) -> Self {
        PgConfig {
            user: user.into(),
            password: None,
            database: None,
            application_name: None,
        }
    }

    /// Sets the password used for SCRAM-SHA-256, md5 or cleartext authentication.
    ///
    /// ```
    /// let cfg = livepool::postgres::PgConfig::new("app").password("hunter2");
    /// # let _ = cfg;
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the database to connect to.
    ///
    /// ```
    /// let cfg = livepool::postgres::PgConfig::new("app").database("appdb");
    /// assert_eq!(cfg.get_database(), Some("appdb"));
    /// ```
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Sets the `application_name` reported to the server (visible in `pg_stat_activity`).
    ///
    /// ```
    /// let cfg = livepool::postgres::PgConfig::new("app").application_name("worker-3");
    /// assert_eq!(cfg.get_application_name(), Some("worker-3"));
    /// ```
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The user name.
    ///
    /// ```
    /// assert_eq!(livepool::postgres::PgConfig::new("app").get_user(), "app");
    /// ```
    pub fn get_user(&self) -> &str {
        &self.user
    }

    /// The database, if one was set.
    ///
    /// ```
    /// assert_eq!(livepool::postgres::PgConfig::new("app").get_database(), None);
    /// ```
    pub fn get_database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The application name, if one was set.
    ///
    /// ```
    /// assert_eq!(livepool::postgres::PgConfig::new("app").get_application_name(), None);
    /// ```
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error from a PostgreSQL session.
///
/// Either an I/O error of the transport, an `ErrorResponse` from the server (with the server's
/// own severity, SQLSTATE code and message), a protocol violation by the server, a client-side
/// authentication failure, or a request on a session that an earlier failure left unusable.
///
/// ```no_run
/// use livepool::postgres::{PgConfig, PgSession};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
/// match PgSession::startup(stream, &PgConfig::new("app").password("wrong")).await {
///     Err(e) if e.code() == Some("28P01") => eprintln!("bad credentials: {e}"),
///     Err(e) => return Err(e.into()),
///     Ok(_) => {}
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PgError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Io(io::Error),
    Server(ServerError),
    Protocol(String),
    Auth(String),
    Invalid(&'static str),
    Broken,
}

#[derive(Debug, Clone)]
struct ServerError {
    severity: String,
    code: String,
    message: String,
}

impl ServerError {
    fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

impl PgError {
    fn io(e: io::Error) -> Self {
        PgError { kind: Kind::Io(e) }
    }

    fn eof() -> Self {
        PgError::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection",
        ))
    }

    fn protocol(what: impl Into<String>) -> Self {
        PgError {
            kind: Kind::Protocol(what.into()),
        }
    }

    fn auth(what: impl Into<String>) -> Self {
        PgError {
            kind: Kind::Auth(what.into()),
        }
    }

    fn server(e: ServerError) -> Self {
        PgError {
            kind: Kind::Server(e),
        }
    }

    /// Whether the transport failed (including the server closing the connection).
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// if let Err(e) = s.ping().await {
    ///     if e.is_io() {
    ///         eprintln!("connection lost: {e}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io(_))
    }

    /// Whether the server answered with an `ErrorResponse`.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let e = s.simple_query("SELEC 1").await.unwrap_err();
    /// assert!(e.is_server());
    /// assert_eq!(e.code(), Some("42601"));
    /// # }
    /// ```
    pub fn is_server(&self) -> bool {
        matches!(self.kind, Kind::Server(_))
    }

    /// Whether the server sent bytes that break the protocol (garbage, bad lengths, unknown
    /// or unexpected messages).
    ///
    /// ```no_run
    /// # async fn run(stream: tokio::net::TcpStream) {
    /// use livepool::postgres::{PgConfig, PgSession};
    /// if let Err(e) = PgSession::startup(stream, &PgConfig::new("app")).await {
    ///     if e.is_protocol() {
    ///         eprintln!("not a PostgreSQL server? {e}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }

    /// Whether authentication failed on the client side: an unsupported method, a missing
    /// password, or a server signature that did not verify. (A password the server rejects is
    /// a server error with code `28P01`.)
    ///
    /// ```no_run
    /// # async fn run(stream: tokio::net::TcpStream) {
    /// use livepool::postgres::{PgConfig, PgSession};
    /// if let Err(e) = PgSession::startup(stream, &PgConfig::new("app")).await {
    ///     if e.is_auth() {
    ///         eprintln!("cannot authenticate: {e}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_auth(&self) -> bool {
        matches!(self.kind, Kind::Auth(_))
    }

    /// Whether the request was refused because an earlier failure (I/O, protocol violation,
    /// fatal server error, cancelled write) left the session unusable.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// if let Err(e) = s.ping().await {
    ///     if e.is_broken() {
    ///         drop(s); // the session cannot be reused
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_broken(&self) -> bool {
        matches!(self.kind, Kind::Broken)
    }

    /// The SQLSTATE code of a server error (`28P01`, `57P01`, …).
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let e = s.simple_query("SELECT 1/0").await.unwrap_err();
    /// assert_eq!(e.code(), Some("22012"));
    /// # }
    /// ```
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            Kind::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The (non-localized) severity of a server error: `ERROR`, `FATAL` or `PANIC`.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let e = s.simple_query("SELECT 1/0").await.unwrap_err();
    /// assert_eq!(e.severity(), Some("ERROR"));
    /// # }
    /// ```
    pub fn severity(&self) -> Option<&str> {
        match &self.kind {
            Kind::Server(e) => Some(&e.severity),
            _ => None,
        }
    }

    /// The primary message of a server error.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let e = s.simple_query("SELECT 1/0").await.unwrap_err();
    /// assert_eq!(e.server_message(), Some("division by zero"));
    /// # }
    /// ```
    pub fn server_message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Server(e) => Some(&e.message),
            _ => None,
        }
    }

    /// Whether this error makes the session unusable.
    fn breaks_session(&self) -> bool {
        match &self.kind {
            Kind::Server(e) => e.is_fatal(),
            Kind::Invalid(_) => false,
            _ => true,
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Io(e) => write!(f, "postgres i/o error: {e}"),
            Kind::Server(e) => write!(f, "{} {} {}", e.severity, e.code, e.message),
            Kind::Protocol(what) => write!(f, "postgres protocol violation: {what}"),
            Kind::Auth(what) => write!(f, "postgres authentication failed: {what}"),
            Kind::Invalid(what) => write!(f, "invalid postgres request: {what}"),
            Kind::Broken => f.write_str("postgres session is unusable after an earlier failure"),
        }
    }
}

impl StdError for PgError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Io(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------------

/// An asynchronous notification received after `LISTEN`.
///
/// ```no_run
/// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
/// for n in s.take_notifications() {
///     println!("{} from pid {}: {}", n.channel, n.pid, n.payload);
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notification {
    /// The channel named in `NOTIFY`.
    pub channel: String,
    /// The payload string (empty when none was given).
    pub payload: String,
    /// Process id of the notifying backend.
    pub pid: i32,
}

/// What arrived on an idle session, as classified by [`PgSession::idle_bytes`].
///
/// ```no_run
/// use livepool::postgres::IdleOutcome;
///
/// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
/// s.get_ref().readable().await.unwrap();
/// match s.idle_bytes().await {
///     IdleOutcome::Benign => {} // keep the session
///     IdleOutcome::Terminated { code, message } => eprintln!("terminated: {code} {message}"),
///     IdleOutcome::Closed => eprintln!("server closed the connection"),
///     IdleOutcome::Unexpected(what) => eprintln!("unexpected: {what}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleOutcome {
    /// Only notifications (now queued), notices or parameter changes: the session stays usable.
    Benign,
    /// The server sent a `FATAL` or `PANIC` error, e.g. `57P01` from `pg_terminate_backend`.
    Terminated {
        /// SQLSTATE code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server closed (or reset) the connection.
    Closed,
    /// Anything else: a non-fatal error, an unexpected message or bytes that are not a message.
    Unexpected(String),
}

/// A PostgreSQL client session over a transport `S` (TCP, TLS, Unix socket, …).
///
/// It tracks the transaction status from the latest `ReadyForQuery`, how many
/// `ReadyForQuery` are still owed by the server (a request whose future was dropped leaves
/// one owed; the next request first reads it), the backend's process id, the server's
/// parameters and queued notifications.
///
/// ```no_run
/// use livepool::postgres::{PgConfig, PgSession};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
/// let mut s = PgSession::startup(stream, &PgConfig::new("app").password("pw")).await?;
/// s.simple_query("BEGIN").await?;
/// assert!(!s.is_idle());
/// s.simple_query("COMMIT").await?;
/// assert!(s.is_idle());
/// # Ok(())
/// # }
/// ```
pub struct PgSession<S> {
    stream: S,
    buf: BytesMut,
    status: u8,
    owed: usize,
    pid: i32,
    secret_key: i32,
    params: HashMap<String, String>,
    notifications: VecDeque<Notification>,
    /// Set by any failure that desynchronizes the stream, and for the duration of every
    /// write (a write cancelled halfway leaves it set).
    broken: bool,
}

impl<S> fmt::Debug for PgSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSession")
            .field("backend_pid", &self.pid)
            .field("status", &char::from(self.status))
            .field("owed", &self.owed)
            .field("buffered", &self.buf.len())
            .field("notifications", &self.notifications.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Authentication progress during startup.
enum Auth {
    None,
    Scram(Box<sasl::ScramSha256>),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PgSession<S> {
    /// Sends the startup message, authenticates (SCRAM-SHA-256, md5 or cleartext password)
    /// and waits for the first `ReadyForQuery`.
    ///
    /// An `ErrorResponse` becomes a server error carrying the server's severity, SQLSTATE and
    /// message (`FATAL 28P01 password authentication failed for user "app"`). The caller
    /// bounds the call with its own deadline.
    ///
    /// ```no_run
    /// use livepool::postgres::{PgConfig, PgSession};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let cfg = PgConfig::new("app").password("pw");
    /// let stream = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
    /// let session = tokio::time::timeout(
    ///     std::time::Duration::from_secs(5),
    ///     PgSession::startup(stream, &cfg),
    /// )
    /// .await??;
    /// println!("backend pid {}", session.backend_pid());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn startup(stream: S, cfg: &PgConfig) -> Result<Self, PgError> {
        let mut s = PgSession {
            stream,
            buf: BytesMut::new(),
            status: b'I',
            owed: 1,
            pid: 0,
            secret_key: 0,
            params: HashMap::new(),
            notifications: VecDeque::new(),
            broken: false,
        };
        s.handshake(cfg).await?;
        Ok(s)
    }

    async fn handshake(&mut self, cfg: &PgConfig) -> Result<(), PgError> {
        let mut params: Vec<(&str, &str)> = vec![("user", &cfg.user), ("client_encoding", "UTF8")];
        if let Some(db) = &cfg.database {
            params.push(("database", db));
        }
        if let Some(app) = &cfg.application_name {
            params.push(("application_name", app));
        }
        if params.iter().any(|(_, v)| v.contains('\0')) {
            return Err(PgError {
                kind: Kind::Invalid("startup parameter contains a nul byte"),
            });
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params, &mut out).map_err(|_| PgError {
            kind: Kind::Invalid("startup message too large"),
        })?;
        self.send(&out).await?;

        let mut auth = Auth::None;
        loop {
            let msg = self.recv().await?;
            let Some(msg) = self.handle_async(msg)? else {
                continue;
            };
            let mut out = BytesMut::new();
            match msg {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = need_password(cfg, "cleartext password")?;
                    frontend::password_message(pw.as_bytes(), &mut out)
                        .map_err(|_| PgError::auth("password cannot be encoded"))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = need_password(cfg, "md5")?;
                    let hash = md5_hash(cfg.user.as_bytes(), pw.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|_| PgError::auth("md5 response cannot be encoded"))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms
                        .next()
                        .map_err(|e| PgError::protocol(format!("bad SASL mechanism list: {e}")))?
                    {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(PgError::auth(format!(
                            "no supported SASL mechanism among {offered:?}"
                        )));
                    }
                    let pw = need_password(cfg, sasl::SCRAM_SHA_256)?;
                    let scram =
                        sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut out)
                        .map_err(|_| PgError::auth("SASL response cannot be encoded"))?;
                    auth = Auth::Scram(Box::new(scram));
                }
                Message::AuthenticationSaslContinue(body) => {
                    let Auth::Scram(scram) = &mut auth else {
                        return Err(self.fail(PgError::protocol("SASL continue without SASL")));
                    };
                    scram
                        .update(body.data())
                        .map_err(|e| PgError::auth(format!("SCRAM server-first message: {e}")))?;
                    frontend::sasl_response(scram.message(), &mut out)
                        .map_err(|_| PgError::auth("SASL response cannot be encoded"))?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let Auth::Scram(scram) = &mut auth else {
                        return Err(self.fail(PgError::protocol("SASL final without SASL")));
                    };
                    scram
                        .finish(body.data())
                        .map_err(|e| PgError::auth(format!("SCRAM server-final message: {e}")))?;
                    auth = Auth::None;
                }
                Message::AuthenticationKerberosV5 => return Err(unsupported("Kerberos V5")),
                Message::AuthenticationScmCredential => {
                    return Err(unsupported("SCM credentials"));
                }
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    return Err(unsupported("GSSAPI"));
                }
                Message::AuthenticationSspi => return Err(unsupported("SSPI")),
                Message::BackendKeyData(body) => {
                    self.pid = body.process_id();
                    self.secret_key = body.secret_key();
                }
                Message::ErrorResponse(body) => {
                    let e = self.server_error(&body)?;
                    return Err(self.fail(PgError::server(e)));
                }
                Message::ReadyForQuery(body) => {
                    self.ready(body.status())?;
                    return Ok(());
                }
                other => {
                    return Err(self.fail(PgError::protocol(format!(
                        "unexpected {} during startup",
                        describe(&other)
                    ))));
                }
            }
            if !out.is_empty() {
                self.send(&out).await?;
            }
        }
    }

    /// A cheap liveness check: sends `Sync` and waits for `ReadyForQuery`, tolerating
    /// notices, parameter changes and notifications (queued) before it.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.ping().await.expect("server alive");
    /// assert!(s.is_idle());
    /// # }
    /// ```
    pub async fn ping(&mut self) -> Result<(), PgError> {
        self.catch_up().await?;
        let mut out = BytesMut::new();
        frontend::sync(&mut out);
        self.owed += 1;
        self.send(&out).await?;
        loop {
            let msg = self.recv().await?;
            let Some(msg) = self.handle_async(msg)? else {
                continue;
            };
            match msg {
                Message::ReadyForQuery(body) => {
                    self.ready(body.status())?;
                    if self.owed == 0 {
                        return Ok(());
                    }
                }
                Message::ErrorResponse(body) => {
                    let e = self.server_error(&body)?;
                    return Err(self.fail(PgError::server(e)));
                }
                other => {
                    return Err(self.fail(PgError::protocol(format!(
                        "unexpected {} in reply to Sync",
                        describe(&other)
                    ))));
                }
            }
        }
    }

    /// Runs `sql` with the simple query protocol and returns the rows of every result set, in
    /// order, as text (`None` for SQL `NULL`).
    ///
    /// An `ErrorResponse` is returned as a server error once the server is ready again, so the
    /// session stays usable (unless the error was `FATAL`). `COPY FROM STDIN` is refused with
    /// `CopyFail`; `COPY TO STDOUT` data is discarded.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let rows = s.simple_query("SELECT 1, NULL; SELECT 'x'").await.unwrap();
    /// assert_eq!(
    ///     rows,
    ///     vec![vec![Some("1".into()), None], vec![Some("x".into())]]
    /// );
    /// # }
    /// ```
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        if sql.contains('\0') {
            return Err(PgError {
                kind: Kind::Invalid("query contains a nul byte"),
            });
        }
        self.catch_up().await?;
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|_| PgError {
            kind: Kind::Invalid("query too large"),
        })?;
        self.owed += 1;
        self.send(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let msg = self.recv().await?;
            let Some(msg) = self.handle_async(msg)? else {
                continue;
            };
            match msg {
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse
                | Message::CopyOutResponse(_)
                | Message::CopyData(_)
                | Message::CopyDone => {}
                Message::DataRow(body) => match decode_row(&body) {
                    Ok(row) => rows.push(row),
                    Err(e) => return Err(self.fail(e)),
                },
                Message::ErrorResponse(body) => {
                    let e = self.server_error(&body)?;
                    if e.is_fatal() {
                        return Err(self.fail(PgError::server(e)));
                    }
                    error.get_or_insert(e);
                }
                Message::CopyInResponse(_) => {
                    let mut out = BytesMut::new();
                    frontend::copy_fail("COPY FROM STDIN is not supported", &mut out)
                        .map_err(|_| PgError::protocol("cannot encode CopyFail"))?;
                    self.send(&out).await?;
                }
                Message::ReadyForQuery(body) => {
                    self.ready(body.status())?;
                    if self.owed == 0 {
                        return match error {
                            Some(e) => Err(PgError::server(e)),
                            None => Ok(rows),
                        };
                    }
                }
                other => {
                    return Err(self.fail(PgError::protocol(format!(
                        "unexpected {} in reply to a simple query",
                        describe(&other)
                    ))));
                }
            }
        }
    }

    /// Whether the session can be handed out as is: not broken, at a message boundary with
    /// nothing buffered, no `ReadyForQuery` owed, and transaction status `I` (not inside a
    /// transaction block).
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.simple_query("BEGIN").await.unwrap();
    /// assert!(!s.is_idle());
    /// # }
    /// ```
    pub fn is_idle(&self) -> bool {
        !self.broken && self.owed == 0 && self.status == b'I' && self.buf.is_empty()
    }

    /// The transaction status from the latest `ReadyForQuery`: `b'I'` idle, `b'T'` in a
    /// transaction block, `b'E'` in a failed transaction block.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.simple_query("BEGIN").await.unwrap();
    /// assert_eq!(s.transaction_status(), b'T');
    /// # }
    /// ```
    pub fn transaction_status(&self) -> u8 {
        self.status
    }

    /// Classifies bytes that arrived on an idle session (call it when the transport shows
    /// readable bytes).
    ///
    /// Reads whatever has arrived without waiting for more; only a message that is partly
    /// there is awaited to its end, so the caller should bound the call with a deadline.
    /// Notifications are queued (see [`take_notifications`](Self::take_notifications));
    /// notices and parameter changes are absorbed. A `FATAL`/`PANIC` error gives
    /// [`IdleOutcome::Terminated`], end of stream [`IdleOutcome::Closed`], anything else
    /// [`IdleOutcome::Unexpected`]; those three leave the session unusable.
    ///
    /// ```no_run
    /// use livepool::postgres::IdleOutcome;
    ///
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.get_ref().readable().await.unwrap();
    /// let outcome = tokio::time::timeout(std::time::Duration::from_secs(1), s.idle_bytes())
    ///     .await
    ///     .unwrap_or(IdleOutcome::Unexpected("partial message stalled".into()));
    /// assert_eq!(outcome, IdleOutcome::Benign);
    /// # }
    /// ```
    pub async fn idle_bytes(&mut self) -> IdleOutcome {
        if self.broken {
            return IdleOutcome::Unexpected("session already failed".into());
        }
        let outcome = self.idle_bytes_inner().await;
        if outcome != IdleOutcome::Benign {
            self.broken = true;
        }
        outcome
    }

    async fn idle_bytes_inner(&mut self) -> IdleOutcome {
        loop {
            // Classify every complete message already buffered.
            loop {
                let msg = match self.try_parse() {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => return IdleOutcome::Unexpected(e.to_string()),
                };
                let msg = match self.handle_async(msg) {
                    Ok(None) => continue,
                    Ok(Some(msg)) => msg,
                    Err(e) => return IdleOutcome::Unexpected(e.to_string()),
                };
                return match msg {
                    Message::ErrorResponse(body) => match parse_server_error(body.fields()) {
                        Ok(e) if e.is_fatal() => IdleOutcome::Terminated {
                            code: e.code,
                            message: e.message,
                        },
                        Ok(e) => IdleOutcome::Unexpected(format!(
                            "server error while idle: {}",
                            PgError::server(e)
                        )),
                        Err(e) => IdleOutcome::Unexpected(e.to_string()),
                    },
                    other => IdleOutcome::Unexpected(format!("{} while idle", describe(&other))),
                };
            }
            let read = if self.buf.is_empty() {
                // At a boundary: take only what is there right now.
                match self.read_more().now_or_never() {
                    None => return IdleOutcome::Benign,
                    Some(r) => r,
                }
            } else {
                // Partly received message: wait for the rest (the caller bounds this).
                self.read_more().await
            };
            match read {
                Ok(0) => return IdleOutcome::Closed,
                Ok(_) => {}
                Err(e) if is_disconnect(&e) => return IdleOutcome::Closed,
                Err(e) => return IdleOutcome::Unexpected(format!("read failed: {e}")),
            }
        }
    }

    /// Removes and returns the queued notifications, oldest first.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.simple_query("LISTEN jobs").await.unwrap();
    /// // … later, after idle_bytes() returned Benign:
    /// let pending = s.take_notifications();
    /// # let _ = pending;
    /// # }
    /// ```
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        self.notifications.drain(..).collect()
    }

    /// The process id of the server backend serving this session (from `BackendKeyData`).
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let rows = s.simple_query("SELECT pg_backend_pid()").await.unwrap();
    /// assert_eq!(rows[0][0].as_deref(), Some(s.backend_pid().to_string().as_str()));
    /// # }
    /// ```
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// A server parameter reported with `ParameterStatus` (`server_version`, `TimeZone`, …).
    ///
    /// ```no_run
    /// # async fn run(s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// println!("server {}", s.parameter("server_version").unwrap_or("?"));
    /// # }
    /// ```
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Sends `Terminate` and shuts the transport down for writing. The session is unusable
    /// afterwards.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let _ = s.terminate().await;
    /// # }
    /// ```
    pub async fn terminate(&mut self) -> Result<(), PgError> {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let res = async {
            self.stream.write_all(&out).await?;
            self.stream.shutdown().await
        }
        .await;
        self.broken = true;
        res.map_err(PgError::io)
    }

    /// The transport.
    ///
    /// ```no_run
    /// # async fn run(s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// println!("connected to {:?}", s.get_ref().peer_addr());
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The transport, mutably. Reading or writing through it desynchronizes the session.
    ///
    /// ```no_run
    /// # async fn run(mut s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// s.get_mut().set_nodelay(true).unwrap();
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        // Whatever the caller does with it, the session can no longer vouch for the stream.
        self.broken = true;
        &mut self.stream
    }

    /// The stream for the pool's own bookkeeping (does not break the session).
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Gives the transport back, dropping any buffered bytes.
    ///
    /// ```no_run
    /// # async fn run(s: livepool::postgres::PgSession<tokio::net::TcpStream>) {
    /// let stream: tokio::net::TcpStream = s.into_inner();
    /// # let _ = stream;
    /// # }
    /// ```
    pub fn into_inner(self) -> S {
        self.stream
    }

    // -- internals ------------------------------------------------------------------------

    /// Marks the session unusable when `e` desynchronizes it; returns `e`.
    fn fail(&mut self, e: PgError) -> PgError {
        if e.breaks_session() {
            self.broken = true;
        }
        e
    }

    /// Reads and discards the replies of earlier requests whose futures were dropped.
    async fn catch_up(&mut self) -> Result<(), PgError> {
        if self.broken {
            return Err(PgError { kind: Kind::Broken });
        }
        while self.owed > 0 {
            let msg = self.recv().await?;
            let Some(msg) = self.handle_async(msg)? else {
                continue;
            };
            match msg {
                Message::ReadyForQuery(body) => self.ready(body.status())?,
                Message::ErrorResponse(body) => {
                    let e = self.server_error(&body)?;
                    if e.is_fatal() {
                        return Err(self.fail(PgError::server(e)));
                    }
                }
                Message::CopyInResponse(_) => {
                    let mut out = BytesMut::new();
                    frontend::copy_fail("COPY FROM STDIN is not supported", &mut out)
                        .map_err(|_| PgError::protocol("cannot encode CopyFail"))?;
                    self.send(&out).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Decodes an `ErrorResponse`; a malformed one breaks the session.
    fn server_error(&mut self, body: &backend::ErrorResponseBody) -> Result<ServerError, PgError> {
        parse_server_error(body.fields()).map_err(|e| self.fail(e))
    }

    /// Records a `ReadyForQuery`.
    fn ready(&mut self, status: u8) -> Result<(), PgError> {
        if !matches!(status, b'I' | b'T' | b'E') {
            return Err(self.fail(PgError::protocol(format!(
                "invalid transaction status {}",
                show_byte(status)
            ))));
        }
        if self.owed == 0 {
            return Err(self.fail(PgError::protocol("unsolicited ReadyForQuery")));
        }
        self.owed -= 1;
        self.status = status;
        Ok(())
    }

    /// Absorbs the messages the server may send at any time; returns the others.
    fn handle_async(&mut self, msg: Message) -> Result<Option<Message>, PgError> {
        match msg {
            Message::NoticeResponse(_) => Ok(None),
            Message::ParameterStatus(body) => {
                let (name, value) = match (body.name(), body.value()) {
                    (Ok(n), Ok(v)) => (n.to_string(), v.to_string()),
                    _ => return Err(self.fail(PgError::protocol("ParameterStatus is not UTF-8"))),
                };
                self.params.insert(name, value);
                Ok(None)
            }
            Message::NotificationResponse(body) => {
                let (channel, payload) = match (body.channel(), body.message()) {
                    (Ok(c), Ok(p)) => (c.to_string(), p.to_string()),
                    _ => return Err(self.fail(PgError::protocol("notification is not UTF-8"))),
                };
                self.notifications.push_back(Notification {
                    channel,
                    payload,
                    pid: body.process_id(),
                });
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Writes all of `bytes`. The session counts as broken while the write is in progress.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        self.broken = true;
        self.stream.write_all(bytes).await.map_err(PgError::io)?;
        self.stream.flush().await.map_err(PgError::io)?;
        self.broken = false;
        Ok(())
    }

    /// The next complete message, reading as needed.
    async fn recv(&mut self) -> Result<Message, PgError> {
        loop {
            if let Some(msg) = self.try_parse()? {
                return Ok(msg);
            }
            match self.read_more().await {
                Ok(0) => return Err(self.fail(PgError::eof())),
                Ok(_) => {}
                Err(e) => return Err(self.fail(PgError::io(e))),
            }
        }
    }

    /// Decodes one message if a complete one is buffered; checks the length field first.
    fn try_parse(&mut self) -> Result<Option<Message>, PgError> {
        let Some(len) = self.header_len() else {
            return Ok(None);
        };
        let len = match len {
            Ok(len) => len,
            Err(e) => return Err(self.fail(e)),
        };
        if self.buf.len() < len + 1 {
            return Ok(None);
        }
        let tag = self.buf[0];
        match backend::Message::parse(&mut self.buf) {
            Ok(Some(msg)) => Ok(Some(msg)),
            Ok(None) => Err(self.fail(PgError::protocol("incomplete message"))),
            Err(e) => Err(self.fail(PgError::protocol(format!(
                "malformed message (tag {}): {e}",
                show_byte(tag)
            )))),
        }
    }

    /// The length field of the buffered message header (tag excluded), once 5 bytes are in.
    fn header_len(&self) -> Option<Result<usize, PgError>> {
        let header: [u8; 5] = self.buf.get(..5)?.try_into().ok()?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        Some(if len < 4 {
            Err(PgError::protocol(format!(
                "message length {len} below 4 (tag {})",
                show_byte(header[0])
            )))
        } else if len > MAX_MESSAGE_LEN {
            Err(PgError::protocol(format!(
                "message length {len} exceeds the {MAX_MESSAGE_LEN}-byte limit (tag {})",
                show_byte(header[0])
            )))
        } else {
            Ok(len)
        })
    }

    /// Reads once into the buffer, reserving only what the pending message still needs.
    async fn read_more(&mut self) -> io::Result<usize> {
        let missing = match self.header_len() {
            Some(Ok(len)) => (len + 1).saturating_sub(self.buf.len()),
            _ => 5usize.saturating_sub(self.buf.len()),
        };
        self.buf
            .reserve(missing.clamp(READ_CHUNK_MIN, READ_CHUNK_MAX));
        self.stream.read_buf(&mut self.buf).await
    }
}

fn need_password<'a>(cfg: &'a PgConfig, method: &str) -> Result<&'a str, PgError> {
    cfg.password.as_deref().ok_or_else(|| {
        PgError::auth(format!(
            "server requested {method} authentication but no password is configured"
        ))
    })
}

fn unsupported(method: &str) -> PgError {
    PgError::auth(format!("unsupported authentication method {method}"))
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn parse_server_error(mut fields: ErrorFields<'_>) -> Result<ServerError, PgError> {
    let (mut severity, mut localized, mut code, mut message) = (None, None, None, None);
    while let Some(field) = fields
        .next()
        .map_err(|e| PgError::protocol(format!("malformed ErrorResponse: {e}")))?
    {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => severity = Some(value),
            b'S' => localized = Some(value),
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
    }
    Ok(ServerError {
        severity: severity.or(localized).unwrap_or_else(|| "ERROR".into()),
        code: code.unwrap_or_else(|| "XX000".into()),
        message: message.unwrap_or_default(),
    })
}

fn decode_row(body: &backend::DataRowBody) -> Result<Vec<Option<String>>, PgError> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges
        .next()
        .map_err(|e| PgError::protocol(format!("malformed DataRow: {e}")))?
    {
        row.push(match range {
            None => None,
            Some(r) => {
                let bytes = buf
                    .get(r)
                    .ok_or_else(|| PgError::protocol("DataRow field out of bounds"))?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| PgError::protocol("DataRow field is not UTF-8"))?;
                Some(text.to_string())
            }
        });
    }
    Ok(row)
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("0x{b:02x}")
    }
}

/// A short name for a backend message, for errors.
fn describe(msg: &Message) -> &'static str {
    match msg {
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_)
        | Message::AuthenticationGss
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi => "Authentication",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unknown message",
    }
}

/// The Postgres protocol for a [`Pool`](crate::Pool): every new connection runs the startup
/// and authentication (SCRAM-SHA-256, md5 or cleartext) before anyone sees it; idle members
/// are pinged with a `Sync` (answered by `ReadyForQuery`, no query parsed); a connection goes
/// back only at `ReadyForQuery` idle, outside a transaction block, with nothing owed; on an
/// idle member, `NotificationResponse`, `NoticeResponse` and `ParameterStatus` are benign and
/// a `FATAL` error (57P01 from `pg_terminate_backend` or a fast shutdown) evicts it as
/// [`EvictReason::Terminated`](crate::EvictReason::Terminated).
///
/// Postgres TLS starts inside the protocol (`SSLRequest`), so [`Builder::tls`](crate::Builder)
/// does not apply to it; this protocol speaks plain TCP or a Unix socket.
///
/// ```no_run
/// use livepool::postgres::{PgConfig, Postgres};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = livepool::Pool::builder("127.0.0.1:5432")
///     .protocol(Postgres::new(PgConfig::new("app").password("s3cret").database("app")))
///     .build()?;
/// let mut conn = pool.get().await?;
/// let rows = conn.simple_query("SELECT 1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Postgres {
    config: PgConfig,
}

impl Postgres {
    /// The protocol with this configuration.
    ///
    /// ```
    /// let p = livepool::postgres::Postgres::new(livepool::postgres::PgConfig::new("app"));
    /// # let _ = p;
    /// ```
    pub fn new(config: PgConfig) -> Self {
        Postgres { config }
    }
}

/// What a server error during startup means for the pool: a configuration mistake (wrong
/// password, no `pg_hba.conf` entry, unknown database or role: the server is fine), a
/// server not ready yet (starting up or shutting down, out of connection slots: retried
/// with backoff), or a refusal.
fn setup_refusal(code: &str, text: String) -> crate::SetupError {
    match code {
        // invalid_password, invalid_authorization_specification, invalid_catalog_name.
        "28P01" | "28000" | "3D000" => crate::SetupError::config(text),
        // cannot_connect_now (starting up, shutting down, recovery), too_many_connections.
        "57P03" | "53300" => crate::SetupError::busy(text),
        _ => crate::SetupError::rejected(text),
    }
}

impl crate::Protocol for Postgres {
    type Conn = PgSession<crate::Io>;

    fn io(conn: &Self::Conn) -> &crate::Io {
        conn.get_ref()
    }

    fn io_mut(conn: &mut Self::Conn) -> &mut crate::Io {
        conn.stream_mut()
    }

    async fn setup(&self, io: crate::Io) -> Result<Self::Conn, crate::SetupError> {
        PgSession::startup(io, &self.config).await.map_err(|e| {
            if e.is_auth() {
                crate::SetupError::config(e.to_string())
            } else if e.is_server() {
                setup_refusal(e.code().unwrap_or_default(), e.to_string())
            } else if e.is_io() {
                crate::SetupError::io(std::io::Error::other(e.to_string()))
            } else {
                crate::SetupError::protocol(e.to_string())
            }
        })
    }

    fn has_heartbeat(&self) -> bool {
        true
    }

    async fn heartbeat(&self, conn: &mut Self::Conn) -> Result<(), crate::HeartbeatError> {
        conn.ping().await.map_err(|e| {
            if e.is_io() {
                crate::HeartbeatError::closed()
            } else {
                crate::HeartbeatError::bad_reply(e.to_string())
            }
        })
    }

    fn is_clean(&self, conn: &Self::Conn) -> bool {
        conn.is_idle()
    }

    async fn idle_bytes(&self, conn: &mut Self::Conn) -> crate::IdleVerdict {
        match conn.idle_bytes().await {
            IdleOutcome::Benign => crate::IdleVerdict::Keep,
            IdleOutcome::Terminated { code, message } => {
                tracing::debug!(code = %code, message = %message, "server terminated an idle connection");
                crate::IdleVerdict::Evict(crate::EvictReason::Terminated)
            }
            IdleOutcome::Closed => crate::IdleVerdict::Evict(crate::EvictReason::PeerClosed),
            IdleOutcome::Unexpected(what) => {
                tracing::debug!(what = %what, "unexpected message on an idle postgres connection");
                crate::IdleVerdict::Evict(crate::EvictReason::UnexpectedData)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn startup_refusals_are_classified() {
        let c = |code: &str| super::setup_refusal(code, format!("FATAL {code}"));
        for code in ["28P01", "28000", "3D000"] {
            assert!(c(code).is_config(), "{code}");
        }
        for code in ["57P03", "53300"] {
            assert!(c(code).is_busy(), "{code}");
        }
        for code in ["XX000", "08P01", ""] {
            assert!(c(code).is_rejected(), "{code}");
        }
    }
}
