//! The protocol layer: what a database or RPC client tells the pool about its own protocol.
//!
//! The pool owns the socket and the cheap kernel checks; the protocol owns the bytes. A
//! [`Protocol`] builds its connection type on [`Io`] and answers four questions, each with a
//! default that keeps raw-bytes behaviour:
//! - **setup**: make a new connection ready (AUTH, HELLO, SELECT, a startup handshake) before
//!   it is handed out, heartbeated or counted idle — refill included;
//! - **heartbeat**: one ping through the protocol's own stack, while the pool holds the idle
//!   member exclusively;
//! - **clean?**: on return, is the connection at a message boundary with nothing owed and the
//!   session as set up;
//! - **idle bytes**: bytes arrived on an idle member; read them (bounded, without waiting for
//!   more than the rest of a message) and keep the member or evict it with a reason.
//!
//! The checkout fast path stays one `recv(MSG_PEEK)`: protocol code runs only on setup,
//! heartbeat, return, and when bytes are present.

// `Protocol` for a raw-bytes type (its connection is the `Io` itself, setup does nothing),
// with the type's own `ping` as its heartbeat when one is named. Defined before the modules
// that use it.
macro_rules! raw_protocol {
    ($ty:ty $(, $ping:ident)?) => {
        impl $crate::protocol::Protocol for $ty {
            type Conn = $crate::io::Io;

            fn io(conn: &$crate::io::Io) -> &$crate::io::Io {
                conn
            }

            fn io_mut(conn: &mut $crate::io::Io) -> &mut $crate::io::Io {
                conn
            }

            async fn setup(
                &self,
                io: $crate::io::Io,
            ) -> Result<$crate::io::Io, $crate::protocol::SetupError> {
                Ok(io)
            }
            $(
            fn has_heartbeat(&self) -> bool {
                true
            }

            async fn heartbeat(
                &self,
                conn: &mut $crate::io::Io,
            ) -> Result<(), $crate::protocol::HeartbeatError> {
                self.$ping(conn).await
            }
            )?
        }
    };
}

pub(crate) mod heartbeat;
pub(crate) mod hosted;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;

pub use heartbeat::{FramePing, HeartbeatError, RedisPing};
pub use hosted::{Driven, Driver, DriverEnd, Hosted, HostedConn};

use crate::io::Io;
use crate::stats::EvictReason;

/// A client protocol on top of the pool.
///
/// Implement it in a client crate to get setup, heartbeats, clean-return checks and idle-byte
/// handling on your own connection type; [`Raw`] is the default, whose connection is the
/// [`Io`] itself. `Pool<P>` hands out `Conn<P>`, which derefs to `P::Conn`.
///
/// Only the pool calls these methods, and each with the connection to itself: `setup` before
/// anyone else sees it, `heartbeat` and `idle_bytes` while the member is idle and held by the
/// reaper (a checkout waits for them), `is_clean` when the holder drops it.
///
/// # Example
///
/// A line protocol that says hello once per connection and pings with `PING`:
///
/// ```
/// use livepool::{HeartbeatError, IdleVerdict, Io, Protocol, SetupError};
/// use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
///
/// #[derive(Debug)]
/// struct Lines;
///
/// struct LineConn { io: Io }
///
/// impl Protocol for Lines {
///     type Conn = LineConn;
///     fn io(conn: &LineConn) -> &Io { &conn.io }
///     fn io_mut(conn: &mut LineConn) -> &mut Io { &mut conn.io }
///
///     async fn setup(&self, mut io: Io) -> Result<LineConn, SetupError> {
///         io.write_all(b"HELLO\n").await?;
///         let mut reply = [0u8; 3];
///         io.read_exact(&mut reply).await?;
///         if &reply != b"OK\n" {
///             return Err(SetupError::rejected(String::from_utf8_lossy(&reply)));
///         }
///         Ok(LineConn { io })
///     }
///
///     fn has_heartbeat(&self) -> bool { true }
///
///     async fn heartbeat(&self, conn: &mut LineConn) -> Result<(), HeartbeatError> {
///         conn.io.write_all(b"PING\n").await?;
///         let mut reply = [0u8; 5];
///         conn.io.read_exact(&mut reply).await?;
///         if &reply == b"PONG\n" { Ok(()) } else { Err(HeartbeatError::bad_reply("not PONG")) }
///     }
/// }
/// # let _ = Lines;
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// The client's connection: its codec and session state over the pool's [`Io`].
    type Conn: Send + 'static;

    /// The connection's [`Io`], for the pool's clean-return bookkeeping.
    fn io(conn: &Self::Conn) -> &Io;

    /// The connection's [`Io`], mutably (the pool resets what its own exchanges left).
    fn io_mut(conn: &mut Self::Conn) -> &mut Io;

    /// Makes a new connection ready: AUTH, HELLO, SELECT, a startup handshake. TLS, when
    /// configured, is done already. Runs for every new connection, refill included, within
    /// the connect timeout.
    ///
    /// # Errors
    /// A [`SetupError`] with the server's own words; it counts toward the circuit breaker
    /// like a failed connect, and the connection is closed.
    fn setup(&self, io: Io) -> impl Future<Output = Result<Self::Conn, SetupError>> + Send;

    /// True when [`Protocol::heartbeat`] pings (the pool then calls it every
    /// `heartbeat_interval` on idle members). Default: false.
    fn has_heartbeat(&self) -> bool {
        false
    }

    /// One ping through the protocol's own stack. The pool bounds it with
    /// `heartbeat_timeout`; being dropped halfway is fine (the member is then evicted).
    ///
    /// # Errors
    /// Any error evicts the member.
    fn heartbeat(
        &self,
        conn: &mut Self::Conn,
    ) -> impl Future<Output = Result<(), HeartbeatError>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// On return: true when the connection is at a message boundary with nothing owed and
    /// the session as set up. Checked after the pool's own rules (no I/O error, nothing
    /// pending, no unread response). Default: true.
    fn is_clean(&self, conn: &Self::Conn) -> bool {
        let _ = conn;
        true
    }

    /// On return, when the connection is not clean ([`Protocol::is_clean`] said no): whether
    /// [`Protocol::settle`] may bring it back instead of closing it. Checked after the pool's
    /// own rules: a connection with an I/O error, a write cut short or bytes unsent inside
    /// TLS is closed anyway; one whose only fault is a read cut short by a cancelled call is
    /// offered here, for a protocol that follows its replies and can read the rest.
    /// Default: false.
    fn can_settle(&self, conn: &Self::Conn) -> bool {
        let _ = conn;
        false
    }

    /// Brings a returned connection back to a clean state off the caller's path: drain a
    /// reply still owed, cancel what the server still runs, roll back a transaction left
    /// open, reset session state. A task of the pool's runs it while the member still counts
    /// as in use (checkouts meanwhile take another member); the pool bounds the call with
    /// `heartbeat_timeout`. `Ok` puts the member back in the idle queue (unless its [`Io`]
    /// saw an error meanwhile).
    ///
    /// # Errors
    /// The reason to evict the member with. [`EvictReason::Unanswered`] when the server did
    /// not answer in time (a drain that reached the protocol's own response deadline): it
    /// counts against the endpoint's circuit breaker, as an unanswered heartbeat does, so
    /// that callers fail fast instead of waiting on a server that stopped answering. Any
    /// other reason only closes the connection. The pool's own bound counts as
    /// `Unanswered` too.
    fn settle(
        &self,
        conn: &mut Self::Conn,
    ) -> impl Future<Output = Result<(), EvictReason>> + Send {
        let _ = conn;
        async { Err(EvictReason::NotClean) }
    }

    /// Bytes arrived on an idle member (seen by the idle watch or the checkout peek): read
    /// them through the connection's stack and decide. The pool bounds the call with
    /// `heartbeat_timeout`. Default: [`discard_idle`] (TLS records such as session tickets
    /// are benign, plaintext is unexpected, a close is a close).
    fn idle_bytes(&self, conn: &mut Self::Conn) -> impl Future<Output = IdleVerdict> + Send {
        let io = Self::io_mut(conn);
        async move { discard_idle(io) }
    }

    /// For a connection whose client reads the socket itself (see [`Hosted`]): its driver's
    /// end. The pool then never waits on the socket's readiness (it watches this instead),
    /// treats bytes seen at checkout as the driver's, and evicts the member with the
    /// driver's reason once it has ended. Default: `None` (the pool reads through [`Io`]).
    ///
    /// ```
    /// use livepool::Protocol;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// // The raw protocol has no driver.
    /// # let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// # let pool = livepool::Pool::builder(l.local_addr().unwrap()).build().unwrap();
    /// # let conn = pool.get().await.unwrap();
    /// assert!(livepool::Raw::driver(&conn).is_none());
    /// # }
    /// ```
    fn driver(conn: &Self::Conn) -> Option<&DriverEnd> {
        let _ = conn;
        None
    }
}

/// What to do with an idle member after reading the bytes that arrived on it.
///
/// ```
/// use livepool::{EvictReason, IdleVerdict};
/// let v = IdleVerdict::Evict(EvictReason::Terminated);
/// assert_ne!(v, IdleVerdict::Keep);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleVerdict {
    /// Benign (TLS session tickets, a notification the protocol queued): keep the member.
    Keep,
    /// Evict it, for this reason.
    Evict(EvictReason),
}

/// Reads everything that is there now through `io` (TLS included) and judges it for a
/// request/response connection that owes nothing: TLS-only records (session tickets,
/// KeyUpdate) leave no plaintext and are benign; a close (TLS close_notify or end of stream)
/// is [`EvictReason::PeerClosed`]; any plaintext is [`EvictReason::UnexpectedData`].
///
/// ```no_run
/// # async fn demo(pool: livepool::Pool) { let mut conn = pool.get().await.unwrap();
/// let verdict = livepool::discard_idle(&mut conn);
/// # }
/// ```
pub fn discard_idle(io: &mut Io) -> IdleVerdict {
    let mut buf = [0u8; 512];
    match io.try_read_now(&mut buf) {
        Ok(None) => IdleVerdict::Keep,
        Ok(Some(0)) => IdleVerdict::Evict(EvictReason::PeerClosed),
        Ok(Some(_)) => IdleVerdict::Evict(EvictReason::UnexpectedData),
        Err(e) => IdleVerdict::Evict(evict_reason_of(&e)),
    }
}

/// The eviction reason for an I/O error seen on an idle member.
pub(crate) fn evict_reason_of(e: &io::Error) -> EvictReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset => EvictReason::Reset,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => EvictReason::PeerClosed,
        _ => EvictReason::SocketError,
    }
}

/// The default protocol: raw bytes. Its connection is the [`Io`] itself; setup does nothing;
/// idle members get no heartbeat. [`FramePing`] and [`RedisPing`] are raw bytes with a ping.
///
/// ```
/// let pool = livepool::Pool::builder("127.0.0.1:7000").protocol(livepool::Raw);
/// # let _ = pool;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

raw_protocol!(Raw);

/// Why [`Protocol::setup`] could not make a connection ready.
///
/// Carry the server's own words (`WRONGPASS invalid username-password pair`), never a
/// secret: the text reaches error messages, tracing events and breaker events.
///
/// ```
/// let e = livepool::SetupError::rejected("WRONGPASS invalid username-password pair");
/// assert!(e.is_rejected());
/// assert_eq!(e.to_string(), "server refused: WRONGPASS invalid username-password pair");
/// ```
pub struct SetupError {
    kind: SetupKind,
}

#[derive(Debug)]
enum SetupKind {
    Io(io::Error),
    Rejected(String),
    Protocol(String),
    Config(String),
    Busy(String),
}

impl SetupError {
    /// The server refused the setup (wrong password, unknown database, …).
    ///
    /// ```
    /// assert!(livepool::SetupError::rejected("NOAUTH").is_rejected());
    /// ```
    pub fn rejected(server_says: impl Into<String>) -> Self {
        SetupError {
            kind: SetupKind::Rejected(server_says.into()),
        }
    }

    /// The server answered something the protocol does not understand.
    ///
    /// ```
    /// assert!(!livepool::SetupError::protocol("garbage").is_rejected());
    /// ```
    pub fn protocol(detail: impl Into<String>) -> Self {
        SetupError {
            kind: SetupKind::Protocol(detail.into()),
        }
    }

    /// A mistake in this client's configuration, found at setup: no password for the
    /// server's authentication method, credentials the server rejects, an unknown database.
    /// The server is up and answering: the pool does not count it against the endpoint
    /// (see [`Error::is_config`](crate::Error::is_config)).
    ///
    /// ```
    /// let e = livepool::SetupError::config("server asks for a password, none is configured");
    /// assert!(e.is_config());
    /// assert!(!e.is_rejected());
    /// ```
    pub fn config(what: impl Into<String>) -> Self {
        SetupError {
            kind: SetupKind::Config(what.into()),
        }
    }

    /// The server answered that it cannot serve yet (starting up, shutting down, loading its
    /// data, busy with a script): the pool retries the connect with backoff within its
    /// connect timeout (see [`Error::is_server_busy`](crate::Error::is_server_busy)).
    ///
    /// ```
    /// let e = livepool::SetupError::busy("LOADING Redis is loading the dataset in memory");
    /// assert!(e.is_busy());
    /// ```
    pub fn busy(server_says: impl Into<String>) -> Self {
        SetupError {
            kind: SetupKind::Busy(server_says.into()),
        }
    }

    /// An I/O error during setup.
    ///
    /// ```
    /// let e = livepool::SetupError::io(std::io::ErrorKind::ConnectionReset.into());
    /// assert!(e.is_io());
    /// ```
    pub fn io(e: io::Error) -> Self {
        SetupError {
            kind: SetupKind::Io(e),
        }
    }

    /// True when the server refused.
    ///
    /// ```
    /// assert!(livepool::SetupError::rejected("x").is_rejected());
    /// ```
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, SetupKind::Rejected(_))
    }

    /// True for a configuration mistake (see [`SetupError::config`]).
    ///
    /// ```
    /// assert!(!livepool::SetupError::rejected("x").is_config());
    /// ```
    pub fn is_config(&self) -> bool {
        matches!(self.kind, SetupKind::Config(_))
    }

    /// True when the server said it cannot serve yet (see [`SetupError::busy`]).
    ///
    /// ```
    /// assert!(!livepool::SetupError::rejected("x").is_busy());
    /// ```
    pub fn is_busy(&self) -> bool {
        matches!(self.kind, SetupKind::Busy(_))
    }

    /// True for an I/O error.
    ///
    /// ```
    /// assert!(!livepool::SetupError::rejected("x").is_io());
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(self.kind, SetupKind::Io(_))
    }

    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        match &self.kind {
            SetupKind::Io(e) => e.kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

impl fmt::Debug for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetupError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SetupKind::Io(e) => write!(f, "i/o error: {e}"),
            SetupKind::Rejected(s) => write!(f, "server refused: {s}"),
            SetupKind::Protocol(s) => write!(f, "protocol error: {s}"),
            SetupKind::Config(s) => write!(f, "configuration: {s}"),
            SetupKind::Busy(s) => write!(f, "server busy: {s}"),
        }
    }
}

impl StdError for SetupError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            SetupKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SetupError {
    fn from(e: io::Error) -> Self {
        SetupError::io(e)
    }
}
