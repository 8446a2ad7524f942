//! [tokio-postgres](https://docs.rs/tokio-postgres) clients on
//! [livepool](https://docs.rs/livepool): a pool that never hands out a connection the kernel
//! knows is dead, evicts an idle session the server terminated the moment its driver sees
//! it, pings idle members through the client, and recovers as fast as the server does.
//!
//! `get()` gives a [`Conn`] that derefs to [`tokio_postgres::Client`]: your tokio-postgres
//! code runs unchanged (bound parameters, typed rows, transactions, COPY, `simple_query`).
//! The crate re-exports tokio-postgres, so you need no second version to match.
//!
//! ```no_run
//! use livepool_postgres::{Postgres, tokio_postgres};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = tokio_postgres::Config::new();
//! config.user("app").password("s3cret").dbname("appdb");
//! let pool = livepool::Pool::builder("db.internal:5432")
//!     .protocol(Postgres::new(config))
//!     .max_size(16)
//!     .build()?;
//!
//! let mut conn = pool.get().await?;                       // derefs to tokio_postgres::Client
//! let row = conn.query_one("SELECT $1::int8 + 1", &[&41i64]).await?;
//! assert_eq!(row.get::<_, i64>(0), 42);
//! let tx = conn.transaction().await?;                     // transactions, COPY, prepare: as usual
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # How the connection is hosted
//!
//! tokio-postgres owns its stream and reads it from its `Connection` future. The pool hands
//! it the connection's stream (TCP or Unix, keepalive and `TCP_USER_TIMEOUT` set by the
//! pool's transport, which `connect_raw` would otherwise ignore), spawns the `Connection`
//! as the member's driver and watches its end: a server that terminates an idle session
//! (`pg_terminate_backend`, a shutdown: `57P01`) or closes it evicts the member at once, as
//! `terminated` or `peer_closed`, without waiting for a checkout. The pool never waits on the
//! socket itself beside the driver (that could steal the driver's wake-up); the checkout's
//! one `recv(MSG_PEEK)` registers nothing.
//!
//! # What comes back to the pool
//!
//! A wire tap under the client follows the message framing (see `tap.rs`): on return the
//! pool knows whether every request was answered and whether a transaction is open, without
//! a round trip. A clean connection goes back at once.
//!
//! Otherwise the connection is *settled* off the caller's path before anyone else gets it
//! (a task of the pool's holds it meanwhile, still counted in use: a `get()` takes another
//! member or opens one, it never waits for this one): a reply still
//! in flight is awaited, a query the server still runs is cancelled on a connection of the
//! pool's own (and the pool waits until the server has closed that connection, so the cancel
//! cannot land on the next caller's query), an open transaction is rolled back, and session
//! state the caller left (`SET ROLE`, `search_path`, `LISTEN`, temporary tables, advisory
//! locks, `PREPARE`) is reset as [`Reset`] says. If that does not succeed within the
//! heartbeat timeout, the connection is closed and counted. No reconnect, no new SCRAM
//! handshake.
//!
//! A request the caller queued but the driver had not yet written when the connection came
//! back is not seen by the tap; it runs before the next caller's requests, whose replies
//! still go to the right caller (tokio-postgres routes replies per request).
//!
//! # TLS
//!
//! With the feature `tls`, [`PostgresBuilder::tls`] asks every connection for TLS
//! (`SSLRequest`) and verifies the server's certificate and name with rustls (re-exported by
//! livepool). The TLS runs below the wire tap; SCRAM runs inside it.
//!
//! # Notifications
//!
//! [`PgListener`] holds a connection of its own, hands out notifications and listens again
//! by itself after a reconnect, reporting the gap. A pooled connection's notifications are
//! dropped, and `UNLISTEN *` is part of the reset: another caller's `LISTEN` never reaches
//! you.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    rustdoc::broken_intra_doc_links
)]

mod listener;
mod tap;

use std::fmt;
use std::sync::Arc;

use livepool::{Driven, Driver, EvictReason, HeartbeatError, Hosted, Io, SetupError};
use tokio_postgres::error::SqlState;

pub use listener::{ListenerError, ListenerMessage, PgListener};
pub use tokio_postgres;

/// A pool of tokio-postgres clients.
pub type Pool = livepool::Pool<Hosted<Postgres>>;

/// A pooled connection: derefs to [`tokio_postgres::Client`].
pub type Conn = livepool::Conn<Hosted<Postgres>>;

/// The tokio-postgres client of one pooled connection, with what the pool knows of its
/// session. Derefs to [`tokio_postgres::Client`].
///
/// ```no_run
/// # async fn f(pool: livepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let conn = pool.get().await?;
/// let client: &livepool_postgres::tokio_postgres::Client = &conn;
/// client.batch_execute("SELECT 1").await?;
/// assert!(conn.is_idle());
/// # Ok(()) }
/// ```
///
/// # Cancel safety
/// The client's calls are tokio-postgres's. Dropping one does not take back the request it
/// already queued: the server still runs it, and the driver reads and drops its replies. So
/// the connection stays usable, and a retry may run a statement twice. Returned to the pool
/// before those replies came, the connection is settled off your path, as
/// [the crate docs](crate#what-comes-back-to-the-pool) say (test
/// `a_transaction_left_open_or_a_query_abandoned_is_settled_off_the_callers_path`).
pub struct PgClient {
    client: tokio_postgres::Client,
    session: Arc<tap::Session>,
    /// The server's address, for a cancel request on a connection of its own (none over a
    /// Unix socket: a query still running there is not cancelled, the connection closes).
    peer: Option<std::net::SocketAddr>,
    /// Where the driver sends notifications (`LISTEN`), when someone listens (a
    /// [`PgListener`]); otherwise they are dropped, as tokio-postgres's own driver does.
    notifications: Arc<std::sync::Mutex<Option<NotificationSink>>>,
    /// Statements prepared through [`PgClient::prepare_cached`], by their text: they live as
    /// long as the connection, across checkouts.
    statements: std::sync::Mutex<std::collections::HashMap<String, tokio_postgres::Statement>>,
}

impl PgClient {
    /// Prepares `query` once per connection: later calls with the same text, by this caller
    /// or a later one that gets the same connection, return the statement prepared first
    /// (no round trip). A reset that drops prepared statements (`DISCARD ALL`, after an
    /// SQL-level `PREPARE`) empties the cache with them.
    ///
    /// # Errors
    /// The server's error when the statement does not prepare.
    ///
    /// # Cancel safety
    /// A dropped call caches nothing, and calling again prepares again. If its request was
    /// already queued, the server still prepares the statement, under a name only
    /// tokio-postgres knew. Nothing closes that statement: it stays on the connection until
    /// the connection closes or a reset runs `DISCARD ALL`.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// let stmt = conn.prepare_cached("SELECT $1::int8").await?;
    /// let row = conn.query_one(&stmt, &[&1i64]).await?;
    /// # let _ = row;
    /// # Ok(()) }
    /// ```
    pub async fn prepare_cached(
        &self,
        query: &str,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(s) = self.cached(query) {
            return Ok(s);
        }
        let statement = self.client.prepare(query).await?;
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(query.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cached(&self, query: &str) -> Option<tokio_postgres::Statement> {
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(query)
            .cloned()
    }

    /// How many statements [`PgClient::prepare_cached`] holds for this connection.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// println!("{} statements cached", conn.statements_cached());
    /// # Ok(()) }
    /// ```
    pub fn statements_cached(&self) -> usize {
        self.statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True when every request sent was answered and no transaction is open: what the pool
    /// checks when the connection comes back.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut conn = pool.get().await?;
    /// let tx = conn.transaction().await?;
    /// tx.commit().await?;
    /// assert!(conn.is_idle());
    /// # Ok(()) }
    /// ```
    pub fn is_idle(&self) -> bool {
        self.session.is_idle()
    }

    /// The transaction status the server last reported: `b'I'` idle, `b'T'` in a
    /// transaction, `b'E'` in a failed transaction.
    ///
    /// ```no_run
    /// # async fn f(pool: livepool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// conn.batch_execute("BEGIN").await?;
    /// assert_eq!(conn.transaction_status(), b'T');
    /// conn.batch_execute("ROLLBACK").await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction_status(&self) -> u8 {
        self.session.status()
    }
}

impl std::ops::Deref for PgClient {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgClient {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

impl fmt::Debug for PgClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClient")
            .field("closed", &self.client.is_closed())
            .field("session", &self.session)
            .finish()
    }
}

/// tokio-postgres as a livepool protocol: the connection's settings (user, password,
/// database, options, application name; the address and the transport options are the
/// pool's).
///
/// ```
/// use livepool_postgres::{Postgres, tokio_postgres::Config};
/// let mut config = Config::new();
/// config.user("app").password("pw").dbname("appdb");
/// let protocol = Postgres::new(config);
/// # let _ = protocol;
/// ```
pub struct Postgres {
    config: tokio_postgres::Config,
    reset: Reset,
    /// TLS through `SSLRequest`: the client configuration and the name the server's
    /// certificate must carry.
    #[cfg(feature = "tls")]
    tls: Option<(
        tokio_rustls::TlsConnector,
        livepool::rustls::pki_types::ServerName<'static>,
    )>,
}

/// Builds a [`Postgres`] protocol with settings beyond the connection's; see
/// [`Postgres::builder`].
#[must_use]
#[derive(Debug)]
pub struct PostgresBuilder {
    inner: Postgres,
}

impl PostgresBuilder {
    /// The session reset policy.
    ///
    /// Default: [`Reset::WhenChanged`].
    ///
    /// ```
    /// let b = livepool_postgres::Postgres::builder(Default::default())
    ///     .reset(livepool_postgres::Reset::Never);
    /// # let _ = b;
    /// ```
    pub fn reset(mut self, reset: Reset) -> Self {
        self.inner.reset = reset;
        self
    }

    /// TLS (feature `tls`): every connection asks for it (`SSLRequest`), fails if the
    /// server declines, and verifies the server's certificate against `config` and
    /// `server_name` (a wrong name is a configuration error, see livepool's
    /// `Error::is_config`). The pool's own `Builder::tls` is for protocols that start with
    /// TLS; do not set both.
    ///
    /// Default: no TLS.
    ///
    /// ```no_run
    /// # fn f(roots: livepool::rustls::RootCertStore) {
    /// use std::sync::Arc;
    /// use livepool::rustls;
    /// let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
    ///         rustls::crypto::ring::default_provider()))
    ///     .with_safe_default_protocol_versions().unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let name = rustls::pki_types::ServerName::try_from("db.internal").unwrap();
    /// let protocol = livepool_postgres::Postgres::builder(Default::default())
    ///     .tls(Arc::new(tls), name)
    ///     .build();
    /// # let _ = protocol;
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(
        mut self,
        config: Arc<livepool::rustls::ClientConfig>,
        server_name: livepool::rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.inner.tls = Some((tokio_rustls::TlsConnector::from(config), server_name));
        self
    }

    /// The protocol, for `livepool::Builder::protocol`.
    ///
    /// ```
    /// let protocol = livepool_postgres::Postgres::builder(Default::default()).build();
    /// # let _ = protocol;
    /// ```
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    pub fn build(mut self) -> Hosted<Postgres> {
        #[cfg(feature = "tls")]
        if self.inner.tls.is_some() {
            // The TLS is ours, below the wire tap: tokio-postgres must not ask again.
            self.inner
                .config
                .ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        Hosted::new(self.inner)
    }
}

/// What the pool does about a returned connection's session state (`SET`, `SET ROLE`,
/// `search_path`, `LISTEN`, temporary tables, advisory locks, SQL-level `PREPARE`d
/// statements) before the next caller gets it. The reset runs off the caller's path, while
/// the member is busy; a connection whose reset fails is closed.
///
/// The reset is deadpool-postgres's `RecyclingMethod::Clean` sequence (`CLOSE ALL; SET
/// SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all();
/// DISCARD TEMP; DISCARD SEQUENCES`), which keeps prepared statements valid; after a
/// SQL-level `PREPARE` or `DEALLOCATE`, `DISCARD ALL` (pgbouncer's `server_reset_query`),
/// which also drops every prepared statement of the connection.
///
/// ```
/// use livepool_postgres::{Postgres, Reset};
/// let protocol = Postgres::builder(Default::default()).reset(Reset::Always).build();
/// # let _ = protocol;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reset {
    /// Reset when a statement sent on the connection may have changed the session: one that
    /// starts with `SET`, `RESET`, `LISTEN`, `DECLARE`, `DISCARD`, `LOAD`, `PREPARE`,
    /// `DEALLOCATE` or `CREATE TEMP`, or that mentions `set_config`, a session advisory lock
    /// or `pg_temp`. The wire tap sees the statement texts; a function that changes the
    /// session when it runs is not seen (use [`Reset::Always`] if yours do). A return that
    /// changed nothing costs nothing.
    #[default]
    WhenChanged,
    /// Reset on every return: one round trip (about half a millisecond on loopback) per
    /// checkout, off the caller's path.
    Always,
    /// Never reset: the next caller may inherit the last one's session state (deadpool's
    /// default).
    Never,
}

/// pgbouncer's `server_reset_query`: everything, prepared statements too. Sent alone (it
/// cannot run inside a multi-statement query).
const DISCARD_ALL: &str = "DISCARD ALL";

/// Asks for TLS (`SSLRequest`) and runs the handshake, verifying the server's certificate.
#[cfg(feature = "tls")]
async fn start_tls(
    mut io: Io,
    connector: &tokio_rustls::TlsConnector,
    name: &livepool::rustls::pki_types::ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<Io>, SetupError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // SSLRequest: its length (8) and the code 80877103.
    io.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8];
    io.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' => {
            return Err(SetupError::config(
                "TLS is configured but the server does not accept it (it answered N to SSLRequest)",
            ));
        }
        other => {
            return Err(SetupError::protocol(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )));
        }
    }
    connector.connect(name.clone(), io).await.map_err(|e| {
        let text = format!("TLS handshake failed: {e}");
        match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<livepool::rustls::Error>())
        {
            // The certificate does not verify for this name and these roots: the server is
            // up, the configuration does not match it.
            Some(livepool::rustls::Error::InvalidCertificate(_)) => SetupError::config(text),
            _ => SetupError::io(std::io::Error::new(e.kind(), text)),
        }
    })
}

/// deadpool-postgres's `RecyclingMethod::Clean`: undoes session state, keeps prepared
/// statements.
const CLEAN: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

impl Postgres {
    /// The protocol for pools of tokio-postgres clients with `config` (its hosts, ports
    /// and TCP settings are not used: the pool connects).
    ///
    /// ```
    /// let mut config = livepool_postgres::tokio_postgres::Config::new();
    /// config.user("app");
    /// let pool = livepool::Pool::builder("127.0.0.1:5432")
    ///     .protocol(livepool_postgres::Postgres::new(config));
    /// # let _ = pool;
    /// ```
    // Returns the hosted form at once: that is what `Builder::protocol` takes.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(config: tokio_postgres::Config) -> Hosted<Postgres> {
        Self::builder(config).build()
    }

    /// A protocol with settings beyond the connection's: the session reset policy, TLS.
    ///
    /// ```
    /// use livepool_postgres::{Postgres, Reset};
    /// let mut config = livepool_postgres::tokio_postgres::Config::new();
    /// config.user("app");
    /// let pool = livepool::Pool::builder("127.0.0.1:5432")
    ///     .protocol(Postgres::builder(config).reset(Reset::Always).build());
    /// # let _ = pool;
    /// ```
    pub fn builder(config: tokio_postgres::Config) -> PostgresBuilder {
        PostgresBuilder {
            inner: Postgres {
                config,
                reset: Reset::default(),
                #[cfg(feature = "tls")]
                tls: None,
            },
        }
    }

    /// The session reset policy.
    ///
    /// ```
    /// let protocol = livepool_postgres::Postgres::new(Default::default());
    /// assert_eq!(protocol.get_ref().reset(), livepool_postgres::Reset::WhenChanged);
    /// ```
    pub fn reset(&self) -> Reset {
        self.reset
    }

    /// The statements that reset the session, if it needs a reset.
    fn reset_sql(&self, session: &tap::Session) -> Option<&'static str> {
        let changes = session.changes();
        let needed = match self.reset {
            Reset::Never => false,
            Reset::WhenChanged => changes != 0,
            Reset::Always => true,
        };
        if !needed {
            None
        } else if changes & tap::PREPARED != 0 {
            Some(DISCARD_ALL)
        } else {
            Some(CLEAN)
        }
    }

    /// The connection settings.
    ///
    /// ```
    /// let protocol = livepool_postgres::Postgres::new(Default::default());
    /// assert_eq!(protocol.get_ref().config().get_user(), None);
    /// ```
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The error with the server's own words (tokio-postgres's `Display` of a server error
    /// is just "db error"), scrubbed of the password.
    fn describe(&self, e: &tokio_postgres::Error) -> String {
        let text = match e.as_db_error() {
            Some(db) => {
                let mut t = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
                if let Some(detail) = db.detail() {
                    t.push_str(&format!(" (detail: {detail})"));
                }
                t
            }
            None => {
                let mut t = e.to_string();
                let mut cur = std::error::Error::source(e);
                while let Some(inner) = cur {
                    t.push_str(&format!(": {inner}"));
                    cur = inner.source();
                }
                t
            }
        };
        self.scrub(text)
    }

    /// `text` with every occurrence of the password replaced: a server may echo what it was
    /// sent in an error, and errors reach logs, events and callers.
    fn scrub(&self, text: String) -> String {
        match self.config.get_password() {
            Some(pw) if !pw.is_empty() => {
                let pw = String::from_utf8_lossy(pw);
                text.replace(pw.as_ref(), "<redacted>")
            }
            _ => text,
        }
    }

    /// What a failed startup means for the pool (see `Error::is_config` and
    /// `Error::is_server_busy` in livepool).
    fn setup_error(&self, e: &tokio_postgres::Error) -> SetupError {
        let text = self.describe(e);
        if let Some(code) = e.code() {
            return match *code {
                // Wrong password, no pg_hba.conf entry, unknown database: the server is fine.
                SqlState::INVALID_PASSWORD
                | SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                | SqlState::INVALID_CATALOG_NAME => SetupError::config(text),
                // Starting up or shutting down, out of connection slots.
                SqlState::CANNOT_CONNECT_NOW | SqlState::TOO_MANY_CONNECTIONS => {
                    SetupError::busy(text)
                }
                _ => SetupError::rejected(text),
            };
        }
        // tokio-postgres's own configuration errors ("password missing") and an
        // authentication method it cannot answer.
        if text.starts_with("invalid configuration") || text.contains("authentication") {
            return SetupError::config(text);
        }
        match io_kind(e) {
            Some(kind) => SetupError::io(std::io::Error::new(kind, text)),
            None => SetupError::protocol(text),
        }
    }
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Config debug redacts the password.
        let mut d = f.debug_struct("Postgres");
        d.field("config", &self.config).field("reset", &self.reset);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|(_, name)| name));
        d.finish()
    }
}

/// The kind of the I/O error behind `e`, if there is one.
fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Why a driver ended, as the member's eviction reason.
fn end_reason(res: Result<(), tokio_postgres::Error>) -> EvictReason {
    let Err(e) = res else {
        // The client went away first (the pool drops it with the member).
        return EvictReason::PoolClosed;
    };
    match e.code() {
        // Terminated by an administrator or a shutdown, crashed, or a recovery conflict.
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::IDLE_SESSION_TIMEOUT
                || *c == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT =>
        {
            EvictReason::Terminated
        }
        Some(_) => EvictReason::UnexpectedData,
        None if e.is_closed() => EvictReason::PeerClosed,
        None => match io_kind(&e) {
            Some(std::io::ErrorKind::ConnectionReset) => EvictReason::Reset,
            Some(std::io::ErrorKind::UnexpectedEof) => EvictReason::PeerClosed,
            Some(_) => EvictReason::IoError,
            // A message the client could not parse.
            None => EvictReason::UnexpectedData,
        },
    }
}

impl Driven for Postgres {
    type Client = PgClient;

    async fn connect(&self, io: Io) -> Result<(PgClient, Driver), SetupError> {
        let peer = io.peer_addr().ok();
        #[cfg(feature = "tls")]
        if let Some((connector, name)) = &self.tls {
            let stream = start_tls(io, connector, name).await?;
            return self.start(stream, peer).await;
        }
        self.start(io, peer).await
    }

    fn has_heartbeat(&self) -> bool {
        true
    }

    async fn heartbeat(&self, client: &PgClient) -> Result<(), HeartbeatError> {
        self.ping(client).await
    }

    fn is_clean(&self, client: &PgClient) -> bool {
        self.clean(client)
    }

    fn can_settle(&self, client: &PgClient) -> bool {
        !client.client.is_closed()
    }

    async fn settle(&self, client: &PgClient) -> Result<(), EvictReason> {
        self.bring_back(client).await
    }
}

impl Postgres {
    /// The startup (SCRAM) over `stream`, through the wire tap; the client and its driver.
    async fn start<S>(
        &self,
        stream: S,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(PgClient, Driver), SetupError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, session) = tap::Tap::new(stream);
        let (client, connection) = self
            .config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| self.setup_error(&e))?;
        let notifications: Arc<std::sync::Mutex<Option<NotificationSink>>> = Arc::default();
        let sink = notifications.clone();
        let mut connection = connection;
        let driver = Driver::new(async move {
            let res = std::future::poll_fn(|cx| {
                loop {
                    match connection.poll_message(cx) {
                        std::task::Poll::Ready(Some(Ok(
                            tokio_postgres::AsyncMessage::Notification(n),
                        ))) => {
                            let sink = sink
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if let Some(tx) = sink.as_ref() {
                                // A listener that does not keep up loses notifications rather
                                // than growing this queue without bound.
                                let _ = tx.try_send(n);
                            }
                        }
                        // Notices (warnings the server sends): nobody asked for them.
                        std::task::Poll::Ready(Some(Ok(_))) => {}
                        std::task::Poll::Ready(Some(Err(e))) => {
                            return std::task::Poll::Ready(Err(e));
                        }
                        std::task::Poll::Ready(None) => return std::task::Poll::Ready(Ok(())),
                        std::task::Poll::Pending => return std::task::Poll::Pending,
                    }
                }
            })
            .await;
            end_reason(res)
        });
        Ok((
            PgClient {
                client,
                session,
                peer,
                notifications,
                statements: Default::default(),
            },
            driver,
        ))
    }

    async fn ping(&self, client: &PgClient) -> Result<(), HeartbeatError> {
        client.client.check_connection().await.map_err(|e| {
            if e.is_closed() {
                HeartbeatError::closed()
            } else if let Some(kind) = io_kind(&e) {
                HeartbeatError::io(std::io::Error::new(kind, self.describe(&e)))
            } else {
                HeartbeatError::bad_reply(self.describe(&e))
            }
        })
    }

    fn clean(&self, client: &PgClient) -> bool {
        !client.client.is_closed()
            && client.session.is_idle()
            && self.reset_sql(&client.session).is_none()
    }

    /// Brings a returned connection back: a reply not read yet is waited for; a query the
    /// server still runs (its caller gave up) is cancelled on a connection of our own, and
    /// only once the server has closed that connection (so the cancel cannot land on a later
    /// query) is its answer awaited; a transaction left open is rolled back.
    async fn bring_back(&self, client: &PgClient) -> Result<(), EvictReason> {
        let session = &client.session;
        if !session.answered(ANSWER_GRACE).await {
            let peer = client.peer.ok_or(EvictReason::NotClean)?;
            cancel(client, peer).await.ok_or(EvictReason::NotClean)?;
            // Bounded by the pool's settle deadline.
            while !session.answered(std::time::Duration::from_secs(3600)).await {}
        }
        if session.status() != b'I' {
            client
                .client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|_| EvictReason::NotClean)?;
        }
        if let Some(sql) = self.reset_sql(session) {
            if sql == DISCARD_ALL {
                // It drops every prepared statement, the cached ones too.
                client
                    .statements
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
            }
            client
                .client
                .batch_execute(sql)
                .await
                .map_err(|_| EvictReason::NotClean)?;
            // The reset's own statements are what the tap saw last.
            session.clear_changes();
        }
        if client.session.is_idle() {
            Ok(())
        } else {
            Err(EvictReason::NotClean)
        }
    }
}

/// Where a connection's driver sends notifications.
type NotificationSink = tokio::sync::mpsc::Sender<tokio_postgres::Notification>;

/// How long a returned connection's owed reply may take to arrive before the query is taken
/// to be still running (a reply in flight arrives in microseconds on a LAN; on a slower
/// path a needless cancel is harmless: the server ignores it for an idle session, and the
/// pool waits until the server has acted on it).
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// Sends a cancel request for `client`'s running query on a new connection to `peer`, and
/// waits until the server has closed it: by then the server has signalled the backend. `None`
/// if that failed.
async fn cancel(client: &PgClient, peer: std::net::SocketAddr) -> Option<()> {
    use tokio::io::AsyncReadExt;
    let mut stream = tokio::net::TcpStream::connect(peer).await.ok()?;
    client
        .client
        .cancel_token()
        .cancel_query_raw(&mut stream, tokio_postgres::NoTls)
        .await
        .ok()?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Some(()),
            Ok(_) => {}
            Err(_) => return Some(()),
        }
    }
}
