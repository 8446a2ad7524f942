//! A Redis session (RESP2 and RESP3) over any async byte stream: plain TCP, TLS, or a test
//! double.
//!
//! [`RedisSession::setup`] authenticates, names the client and selects the database;
//! [`cmd`](RedisSession::cmd), [`send`](RedisSession::send) and
//! [`recv`](RedisSession::recv) run commands (with pipelining); [`is_clean`](RedisSession::is_clean)
//! tells whether the session is back in the state `setup` left it in (nothing owed, no open
//! `MULTI`, the setup database), which is what a pool needs to know before reusing it; and
//! [`idle_bytes`](RedisSession::idle_bytes) classifies bytes that arrive while the session
//! is idle (RESP3 push frames are benign, end of stream is not).
//!
//! ```no_run
//! use livepool::redis::{RedisConfig, RedisSession, Value};
//! use tokio::net::TcpStream;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = TcpStream::connect("127.0.0.1:6379").await?;
//! let cfg = RedisConfig::new().password("secret").db(2).resp3(true);
//! let mut session = RedisSession::setup(stream, &cfg).await?;
//! session.cmd(&[b"SET", b"k", b"v"]).await?;
//! assert_eq!(session.cmd(&[b"GET", b"k"]).await?, Value::Bulk(Some(b"v".to_vec())));
//! assert!(session.is_clean());
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::io;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 << 20;
/// The deepest nesting of aggregates accepted.
const MAX_DEPTH: usize = 64;
/// The most elements one aggregate may announce.
const MAX_ELEMENTS: usize = 1 << 24;
/// The longest header or simple line (`+`, `-`, `:`, …) accepted.
const MAX_LINE: usize = 1 << 20;
/// The most bytes one reply may occupy in the read buffer.
const MAX_BUFFERED: usize = MAX_BULK + (16 << 20);
/// The most push frames kept for [`RedisSession::take_pushes`]; older ones are dropped.
const MAX_PUSHES: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

/// How [`RedisSession::setup`] prepares a new connection: credentials, database, protocol
/// version and client name.
///
/// The password is a secret: `Debug` prints it as `"<redacted>"`, and it never appears in
/// errors or tracing output.
///
/// ```
/// use livepool::redis::RedisConfig;
///
/// let cfg = RedisConfig::new()
///     .username("app")
///     .password("hunter2")
///     .db(5)
///     .resp3(true)
///     .client_name("worker-1");
/// assert_eq!(cfg.database(), 5);
/// let shown = format!("{cfg:?}");
/// assert!(shown.contains("<redacted>") && !shown.contains("hunter2"));
/// ```
#[derive(Clone, Default)]
pub struct RedisConfig {
    username: Option<String>,
    password: Option<String>,
    db: u32,
    resp3: bool,
    client_name: Option<String>,
    /// Extra commands of the setup, part of the session "as set up".
    on_connect: Vec<Vec<Vec<u8>>>,
}

impl RedisConfig {
    /// No credentials, database 0, RESP2, no client name.
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new();
    /// assert_eq!(cfg.database(), 0);
    /// assert!(!cfg.is_resp3());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The ACL user to authenticate as (with [`password`](Self::password)); without one,
    /// the `default` user.
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new().username("app").password("pw");
    /// assert_eq!(cfg.user(), Some("app"));
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (for `requirepass` or the ACL user). Authentication is sent only when a
    /// password is set.
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new().password("pw");
    /// assert!(cfg.has_password());
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database to `SELECT` after authenticating (0, the default, sends nothing).
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new().db(3);
    /// assert_eq!(cfg.database(), 3);
    /// ```
    pub fn db(mut self, db: u32) -> Self {
        self.db = db;
        self
    }

    /// Speak RESP3 (`HELLO 3`), which enables push frames such as client-tracking
    /// invalidations.
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new().resp3(true);
    /// assert!(cfg.is_resp3());
    /// ```
    pub fn resp3(mut self, on: bool) -> Self {
        self.resp3 = on;
        self
    }

    /// A name for `CLIENT SETNAME` (shown by `CLIENT LIST`).
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new().client_name("worker-1");
    /// assert_eq!(cfg.name(), Some("worker-1"));
    /// ```
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// One more command of every connection's setup (after AUTH/HELLO and before SELECT),
    /// for session state that every caller should find: `CLIENT TRACKING on` (client-side
    /// caching; its invalidation pushes need `resp3(true)` and are benign on an idle
    /// member), `CLIENT NO-EVICT on`, … An error reply fails the setup. The same commands
    /// sent by a caller change the session and make the connection not clean.
    ///
    /// ```
    /// let cfg = livepool::redis::RedisConfig::new()
    ///     .resp3(true)
    ///     .on_connect(&["CLIENT", "TRACKING", "on"]);
    /// # let _ = cfg;
    /// ```
    pub fn on_connect(mut self, args: &[&str]) -> Self {
        self.on_connect
            .push(args.iter().map(|a| a.as_bytes().to_vec()).collect());
        self
    }

    /// The configured ACL user, if any.
    ///
    /// ```
    /// assert_eq!(livepool::redis::RedisConfig::new().user(), None);
    /// ```
    pub fn user(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether a password is configured (the password itself is not readable back).
    ///
    /// ```
    /// assert!(!livepool::redis::RedisConfig::new().has_password());
    /// ```
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The database `setup` selects.
    ///
    /// ```
    /// assert_eq!(livepool::redis::RedisConfig::new().db(7).database(), 7);
    /// ```
    pub fn database(&self) -> u32 {
        self.db
    }

    /// Whether `setup` sends `HELLO 3`.
    ///
    /// ```
    /// assert!(!livepool::redis::RedisConfig::new().is_resp3());
    /// ```
    pub fn is_resp3(&self) -> bool {
        self.resp3
    }

    /// The configured client name, if any.
    ///
    /// ```
    /// assert_eq!(livepool::redis::RedisConfig::new().name(), None);
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// Replaces every occurrence of the password in `text` (belt and braces: servers do not
    /// echo passwords, but an error message must never carry one).
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() && text.contains(p.as_str()) => {
                text.replace(p.as_str(), "<redacted>")
            }
            _ => text,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("resp3", &self.resp3)
            .field("client_name", &self.client_name)
            .field("on_connect", &self.on_connect.len())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------------------------

/// One RESP2 or RESP3 reply.
///
/// Attributes (`|`) are parsed and dropped; push frames (`>`) are never replies (see
/// [`RedisSession::take_pushes`], where they appear as [`Value::Array`]).
///
/// ```
/// use livepool::redis::Value;
///
/// let v = Value::Array(Some(vec![Value::Int(1), Value::Bulk(None)]));
/// assert!(!v.is_error());
/// assert!(Value::Error("ERR nope".into()).is_error());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`: a simple string.
    Simple(String),
    /// `-ERR …` or a RESP3 blob error (`!`): the server's error text, which leaves the
    /// session usable.
    Error(String),
    /// `:42`: an integer.
    Int(i64),
    /// `$3\r\nabc`: a bulk string; `None` is RESP2's null bulk (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2 …`: an array; `None` is RESP2's null array (`*-1`).
    Array(Option<Vec<Value>>),
    /// `_`: RESP3 null.
    Null,
    /// `#t` / `#f`: RESP3 boolean.
    Bool(bool),
    /// `,3.14`: RESP3 double (including `inf`, `-inf` and `nan`).
    Double(f64),
    /// `(123…`: RESP3 big number, as its decimal digits.
    BigNumber(String),
    /// `=`: RESP3 verbatim string with its three-letter format (`txt`, `mkd`).
    Verbatim {
        /// The format, such as `txt`.
        format: String,
        /// The text after `format:`.
        text: Vec<u8>,
    },
    /// `%`: RESP3 map, in the server's order.
    Map(Vec<(Value, Value)>),
    /// `~`: RESP3 set, in the server's order.
    Set(Vec<Value>),
}

impl Value {
    /// Whether this is an error reply.
    ///
    /// ```
    /// assert!(livepool::redis::Value::Error("ERR x".into()).is_error());
    /// ```
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    fn is_simple(&self, s: &str) -> bool {
        matches!(self, Value::Simple(v) if v == s)
    }
}

/// Encodes a command as a RESP array of bulk strings.
fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

// ---------------------------------------------------------------------------------------------
// An incremental parser: resumes where it stopped when more bytes arrive, so that a large
// reply arriving in many reads is parsed once.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggKind {
    Array,
    Set,
    Map,
    Push,
    Attribute,
}

#[derive(Debug)]
struct Agg {
    kind: AggKind,
    remaining: usize,
    items: Vec<Value>,
}

/// One complete top-level frame.
#[derive(Debug)]
struct Frame {
    value: Value,
    push: bool,
    /// The buffer position just after the frame.
    end: usize,
}

#[derive(Debug, Default)]
struct Parser {
    /// Where the next element header starts (absolute position in the buffer).
    pos: usize,
    /// Open aggregates, outermost first.
    stack: Vec<Agg>,
    /// How many bytes from `pos` are known to hold no `\n` (so a long line is scanned once).
    scanned: usize,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A short, printable excerpt of bad bytes for an error message.
fn excerpt(b: &[u8]) -> String {
    let cut = &b[..b.len().min(32)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if b.len() > cut.len() {
        s.push('…');
    }
    s
}

fn parse_int(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("bad integer \"{}\"", excerpt(line)))
}

/// A length header: `-1` gives `None` (only where `null_ok`), anything negative or too
/// large an error.
fn parse_len(line: &[u8], null_ok: bool, max: usize, what: &str) -> Result<Option<usize>, String> {
    let n = parse_int(line).map_err(|_| format!("bad {what} length \"{}\"", excerpt(line)))?;
    if n == -1 && null_ok {
        return Ok(None);
    }
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(format!("{what} length {n} out of range (0..={max})")),
    }
}

impl Parser {
    fn is_idle(&self) -> bool {
        self.stack.is_empty()
    }

    /// Parses on from `self.pos`: `Ok(None)` when more bytes are needed.
    fn next(&mut self, buf: &[u8]) -> Result<Option<Frame>, String> {
        loop {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            let ty = buf[pos];
            if !b"+-:$!=_#,(*~%|>".contains(&ty) {
                return Err(match ty {
                    b'?' | b';' | b'.' => "streamed RESP3 types are not supported".to_string(),
                    _ => format!(
                        "unexpected type byte {ty:#04x} (\"{}\")",
                        excerpt(&buf[pos..])
                    ),
                });
            }
            // The header line.
            let from = pos + 1 + self.scanned;
            let Some(rel) = buf[from.min(buf.len())..].iter().position(|&b| b == b'\n') else {
                self.scanned = buf.len() - pos - 1;
                if self.scanned > MAX_LINE {
                    return Err(format!("line longer than {MAX_LINE} bytes"));
                }
                return Ok(None);
            };
            let nl = from + rel;
            if nl - pos > MAX_LINE {
                return Err(format!("line longer than {MAX_LINE} bytes"));
            }
            if nl < pos + 2 || buf[nl - 1] != b'\r' {
                return Err(format!(
                    "line not ended by CRLF (\"{}\")",
                    excerpt(&buf[pos..=nl])
                ));
            }
            let line = &buf[pos + 1..nl - 1];
            let mut next = nl + 1;
            let scalar = match ty {
                b'+' => Some(Value::Simple(lossy(line))),
                b'-' => Some(Value::Error(lossy(line))),
                b':' => Some(Value::Int(parse_int(line)?)),
                b'_' => {
                    if !line.is_empty() {
                        return Err(format!("bad null \"{}\"", excerpt(line)));
                    }
                    Some(Value::Null)
                }
                b'#' => Some(Value::Bool(match line {
                    b"t" => true,
                    b"f" => false,
                    _ => return Err(format!("bad boolean \"{}\"", excerpt(line))),
                })),
                b',' => {
                    let d = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| format!("bad double \"{}\"", excerpt(line)))?;
                    Some(Value::Double(d))
                }
                b'(' => {
                    let digits = line.strip_prefix(b"-").unwrap_or(line);
                    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                        return Err(format!("bad big number \"{}\"", excerpt(line)));
                    }
                    Some(Value::BigNumber(lossy(line)))
                }
                b'$' | b'!' | b'=' => {
                    match parse_len(line, ty == b'$', MAX_BULK, "bulk")? {
                        None => Some(Value::Bulk(None)),
                        Some(n) => {
                            if buf.len() < next + n + 2 {
                                // Wait for the payload; the header is re-read (it is short).
                                self.scanned = 0;
                                return Ok(None);
                            }
                            if &buf[next + n..next + n + 2] != b"\r\n" {
                                return Err("bulk payload not followed by CRLF".to_string());
                            }
                            let data = &buf[next..next + n];
                            next += n + 2;
                            Some(match ty {
                                b'$' => Value::Bulk(Some(data.to_vec())),
                                b'!' => Value::Error(lossy(data)),
                                _ => {
                                    if data.len() < 4 || data[3] != b':' {
                                        return Err(format!(
                                            "bad verbatim string \"{}\"",
                                            excerpt(data)
                                        ));
                                    }
                                    Value::Verbatim {
                                        format: lossy(&data[..3]),
                                        text: data[4..].to_vec(),
                                    }
                                }
                            })
                        }
                    }
                }
                _ => {
                    // Aggregates: * ~ % | >
                    let kind = match ty {
                        b'*' => AggKind::Array,
                        b'~' => AggKind::Set,
                        b'%' => AggKind::Map,
                        b'|' => AggKind::Attribute,
                        _ => AggKind::Push,
                    };
                    if kind == AggKind::Push && !self.stack.is_empty() {
                        return Err("push frame inside another reply".to_string());
                    }
                    match parse_len(line, ty == b'*', MAX_ELEMENTS, "aggregate")? {
                        None => Some(Value::Array(None)),
                        Some(n) => {
                            let count = match kind {
                                AggKind::Map | AggKind::Attribute => n * 2,
                                _ => n,
                            };
                            if count == 0 {
                                self.pos = next;
                                self.scanned = 0;
                                // An empty attribute vanishes (`finish` gives `None`).
                                if let Some(v) = Self::finish(kind, Vec::new())
                                    && let Some(f) = self.deliver(v, kind == AggKind::Push)
                                {
                                    return Ok(Some(f));
                                }
                                continue;
                            }
                            if self.stack.len() >= MAX_DEPTH {
                                return Err(format!("replies nested deeper than {MAX_DEPTH}"));
                            }
                            self.stack.push(Agg {
                                kind,
                                remaining: count,
                                items: Vec::with_capacity(count.min(1024)),
                            });
                            None
                        }
                    }
                }
            };
            self.pos = next;
            self.scanned = 0;
            if let Some(v) = scalar
                && let Some(f) = self.deliver(v, false)
            {
                return Ok(Some(f));
            }
        }
    }

    /// The value of a complete aggregate (`None` for an attribute, which is dropped).
    fn finish(kind: AggKind, items: Vec<Value>) -> Option<Value> {
        Some(match kind {
            AggKind::Array | AggKind::Push => Value::Array(Some(items)),
            AggKind::Set => Value::Set(items),
            AggKind::Map => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            }
            AggKind::Attribute => return None,
        })
    }

    /// Hands a finished value to the innermost open aggregate, closing every aggregate it
    /// completes; a frame when the outermost one is done.
    fn deliver(&mut self, mut value: Value, mut push: bool) -> Option<Frame> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Some(Frame {
                    value,
                    push,
                    end: self.pos,
                });
            };
            top.items.push(value);
            top.remaining -= 1;
            if top.remaining > 0 {
                return None;
            }
            let agg = self.stack.pop().expect("non-empty stack");
            push = agg.kind == AggKind::Push;
            value = Self::finish(agg.kind, agg.items)?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Io,
    Closed,
    Server,
    Protocol,
    Usage,
}

/// An error from a [`RedisSession`].
///
/// Opaque: ask it what happened with the predicates. An I/O failure carries the real
/// `io::Error` as its [`source`](std::error::Error::source); a server error carries the
/// server's own words ([`server_message`](Self::server_message)). No error ever contains the
/// configured password.
///
/// ```no_run
/// use livepool::redis::{RedisConfig, RedisSession};
///
/// # async fn demo() {
/// let stream = tokio::net::TcpStream::connect("127.0.0.1:6379").await.unwrap();
/// let cfg = RedisConfig::new().password("wrong");
/// let err = RedisSession::setup(stream, &cfg).await.unwrap_err();
/// assert!(err.is_server());
/// assert!(err.server_message().unwrap().starts_with("WRONGPASS"));
/// # }
/// ```
#[derive(Debug)]
pub struct RedisError {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

impl RedisError {
    fn io(e: io::Error) -> Self {
        RedisError {
            kind: ErrorKind::Io,
            message: String::new(),
            source: Some(e),
        }
    }

    fn closed() -> Self {
        RedisError {
            kind: ErrorKind::Closed,
            message: String::new(),
            source: None,
        }
    }

    fn server(message: String) -> Self {
        RedisError {
            kind: ErrorKind::Server,
            message,
            source: None,
        }
    }

    fn protocol(message: String) -> Self {
        RedisError {
            kind: ErrorKind::Protocol,
            message,
            source: None,
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        RedisError {
            kind: ErrorKind::Usage,
            message: message.into(),
            source: None,
        }
    }

    /// Reading or writing the stream failed.
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) { if e.is_io() { /* evict */ } }
    /// ```
    pub fn is_io(&self) -> bool {
        self.kind == ErrorKind::Io
    }

    /// The server closed the connection (end of stream) before a whole reply arrived.
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) { if e.is_closed() { /* reconnect */ } }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }

    /// The server answered a setup step (or `PING`) with an error reply.
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) { if e.is_server() { eprintln!("{e}") } }
    /// ```
    pub fn is_server(&self) -> bool {
        self.kind == ErrorKind::Server
    }

    /// The peer sent bytes that are not a valid reply (garbage, absurd lengths, too deep
    /// nesting, an unsolicited reply).
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) { assert!(!e.is_protocol()) }
    /// ```
    pub fn is_protocol(&self) -> bool {
        self.kind == ErrorKind::Protocol
    }

    /// The session was used in a way it does not support (a `recv` with no reply owed, a
    /// `cmd` while pipelined replies are owed, a pub/sub or `CLIENT REPLY` command, a
    /// session broken by an earlier failure).
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) { assert!(!e.is_usage()) }
    /// ```
    pub fn is_usage(&self) -> bool {
        self.kind == ErrorKind::Usage
    }

    /// The kind of the underlying I/O error (`UnexpectedEof` for a close).
    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        match (&self.source, self.kind) {
            (Some(e), _) => e.kind(),
            (None, ErrorKind::Closed) => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::Other,
        }
    }

    /// The server's error text, exactly as sent (for [`is_server`](Self::is_server)).
    ///
    /// ```no_run
    /// # fn f(e: livepool::redis::RedisError) {
    /// if let Some(msg) = e.server_message() { assert!(msg.starts_with("WRONGPASS")) }
    /// # }
    /// ```
    pub fn server_message(&self) -> Option<&str> {
        (self.kind == ErrorKind::Server).then_some(self.message.as_str())
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Io => match &self.source {
                Some(e) => write!(f, "redis i/o error: {e}"),
                None => f.write_str("redis i/o error"),
            },
            ErrorKind::Closed => f.write_str("redis connection closed by the server"),
            ErrorKind::Server => {
                let msg = self.message.trim_end();
                write!(
                    f,
                    "redis server error: {}",
                    msg.strip_suffix('.').unwrap_or(msg)
                )
            }
            ErrorKind::Protocol => write!(f, "redis protocol violation: {}", self.message),
            ErrorKind::Usage => write!(f, "redis session misuse: {}", self.message),
        }
    }
}

impl StdError for RedisError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn StdError + 'static))
    }
}

// ---------------------------------------------------------------------------------------------
// The session.
// ---------------------------------------------------------------------------------------------

/// What [`RedisSession::idle_bytes`] found on an idle session.
///
/// ```
/// use livepool::redis::IdleOutcome;
///
/// let outcome = IdleOutcome::Unexpected("unsolicited reply".into());
/// assert!(!outcome.is_benign());
/// assert!(IdleOutcome::Benign.is_benign());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdleOutcome {
    /// Only RESP3 push frames (queued for [`RedisSession::take_pushes`]) or transport-level
    /// bytes with no payload (such as TLS session tickets): the session is still good.
    Benign,
    /// The server closed the connection (end of stream or reset).
    Closed,
    /// Anything else (an unsolicited reply, garbage, a read error), described.
    Unexpected(String),
}

impl IdleOutcome {
    /// Whether the session may stay in the pool.
    ///
    /// ```
    /// assert!(!livepool::redis::IdleOutcome::Closed.is_benign());
    /// ```
    pub fn is_benign(&self) -> bool {
        matches!(self, IdleOutcome::Benign)
    }
}

/// What a command does to the state `is_clean` watches, judged by its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    Multi,
    Exec,
    Discard,
    Select(u32),
    /// Changes the session beyond what is tracked (`HELLO`, `AUTH`, `RESET`, `CLIENT
    /// TRACKING`, `CLIENT SETNAME`, …): never clean again once it succeeded.
    Taints,
}

fn effect_of(args: &[&[u8]]) -> Result<Effect, RedisError> {
    let Some(name) = args.first() else {
        return Err(RedisError::usage("empty command"));
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "MONITOR",
    ]
    .iter()
    .any(|n| is(n))
    {
        return Err(RedisError::usage(format!(
            "{} is not supported on a request/reply session",
            lossy(name).to_ascii_uppercase()
        )));
    }
    if is("CLIENT")
        && args
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"REPLY"))
    {
        return Err(RedisError::usage(
            "CLIENT REPLY is not supported: every command must get its reply",
        ));
    }
    Ok(if is("MULTI") {
        Effect::Multi
    } else if is("EXEC") {
        Effect::Exec
    } else if is("DISCARD") {
        Effect::Discard
    } else if is("SELECT") {
        match args
            .get(1)
            .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
        {
            Some(db) => Effect::Select(db),
            None => Effect::None,
        }
    } else if is("HELLO") || is("AUTH") || is("RESET") || is("READONLY") || is("READWRITE") {
        Effect::Taints
    } else if is("CLIENT")
        && args.get(1).is_some_and(|sub| {
            ["TRACKING", "SETNAME", "SETINFO", "NO-EVICT", "NO-TOUCH"]
                .iter()
                .any(|n| sub.eq_ignore_ascii_case(n.as_bytes()))
        })
    {
        // Session state the next caller would inherit (tracking and its pushes, a name).
        Effect::Taints
    } else {
        Effect::None
    })
}

/// A Redis connection after [`setup`](Self::setup), over any async byte stream `S`.
///
/// It tracks what a pool needs before reusing it: replies still owed (pipelining), a partial
/// reply in its buffer, an open `MULTI`, and the selected database; see
/// [`is_clean`](Self::is_clean).
///
/// A future of this type dropped halfway (a cancelled command) leaves the session unclean
/// (a reply owed, or a partial reply buffered), never silently out of step.
///
/// ```no_run
/// use livepool::redis::{RedisConfig, RedisSession, Value};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:6379").await?;
/// let mut s = RedisSession::setup(tcp, &RedisConfig::new()).await?;
/// s.send(&[b"INCR", b"n"]).await?;
/// s.send(&[b"INCR", b"n"]).await?;
/// assert_eq!(s.owed(), 2);
/// let (a, b) = (s.recv().await?, s.recv().await?);
/// assert!(matches!((a, b), (Value::Int(_), Value::Int(_))));
/// assert!(s.is_clean());
/// # Ok(()) }
/// ```
pub struct RedisSession<S> {
    stream: S,
    buf: Vec<u8>,
    parser: Parser,
    /// One entry per reply owed, oldest first.
    pending: VecDeque<Effect>,
    in_multi: bool,
    /// Effects of the commands queued in the open `MULTI`, applied at `EXEC`.
    queued: Vec<Effect>,
    db: u32,
    setup_db: u32,
    pushes: VecDeque<Value>,
    /// A state the session cannot leave (`HELLO`/`AUTH`/`RESET` ran).
    tainted: bool,
    /// An I/O or protocol failure: the stream is out of step and must not be used again.
    broken: Option<String>,
}

impl<S> fmt::Debug for RedisSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSession")
            .field("owed", &self.pending.len())
            .field("buffered", &(self.buf.len() - self.parser.pos))
            .field("in_multi", &self.in_multi)
            .field("db", &self.db)
            .field("setup_db", &self.setup_db)
            .field("pushes", &self.pushes.len())
            .field("tainted", &self.tainted)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RedisSession<S> {
    /// Prepares a freshly connected stream: `HELLO 3 [AUTH user pass] [SETNAME name]` when
    /// RESP3 is configured, else `AUTH [user] pass` (when a password is set) and
    /// `CLIENT SETNAME`; then `SELECT db` when the database is not 0. The steps are
    /// pipelined (one round trip).
    ///
    /// A step the server refuses returns [`RedisError::is_server`] with the server's own
    /// words (for example `WRONGPASS invalid username-password pair or user is disabled.`),
    /// never containing the password.
    ///
    /// ```no_run
    /// use livepool::redis::{RedisConfig, RedisSession};
    ///
    /// # async fn demo() -> Result<(), livepool::redis::RedisError> {
    /// let tcp = tokio::net::TcpStream::connect("127.0.0.1:6379").await.unwrap();
    /// let cfg = RedisConfig::new().username("app").password("pw").db(5);
    /// let s = RedisSession::setup(tcp, &cfg).await?;
    /// assert_eq!(s.db(), 5);
    /// # Ok(()) }
    /// ```
    pub async fn setup(stream: S, cfg: &RedisConfig) -> Result<Self, RedisError> {
        let mut s = RedisSession {
            stream,
            buf: Vec::with_capacity(4096),
            parser: Parser::default(),
            pending: VecDeque::new(),
            in_multi: false,
            queued: Vec::new(),
            db: 0,
            setup_db: 0,
            pushes: VecDeque::new(),
            tainted: false,
            broken: None,
        };
        let db = cfg.db.to_string();
        let mut steps: Vec<(&'static str, Vec<&[u8]>)> = Vec::new();
        if cfg.resp3 {
            let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
            if let Some(pw) = &cfg.password {
                let user = cfg.username.as_deref().unwrap_or("default");
                hello.extend([b"AUTH".as_slice(), user.as_bytes(), pw.as_bytes()]);
            }
            if let Some(name) = &cfg.client_name {
                hello.extend([b"SETNAME".as_slice(), name.as_bytes()]);
            }
            steps.push(("HELLO", hello));
        } else {
            if let Some(pw) = &cfg.password {
                let mut auth: Vec<&[u8]> = vec![b"AUTH"];
                if let Some(user) = &cfg.username {
                    auth.push(user.as_bytes());
                }
                auth.push(pw.as_bytes());
                steps.push(("AUTH", auth));
            }
            if let Some(name) = &cfg.client_name {
                steps.push((
                    "CLIENT SETNAME",
                    vec![b"CLIENT", b"SETNAME", name.as_bytes()],
                ));
            }
        }
        for cmd in &cfg.on_connect {
            steps.push(("on_connect", cmd.iter().map(Vec::as_slice).collect()));
        }
        if cfg.db != 0 {
            steps.push(("SELECT", vec![b"SELECT", db.as_bytes()]));
        }
        tracing::debug!(
            resp3 = cfg.resp3,
            auth = cfg.password.is_some(),
            db = cfg.db,
            steps = steps.len(),
            "redis session setup"
        );
        if steps.is_empty() {
            return Ok(s);
        }
        let mut out = Vec::new();
        for (_, args) in &steps {
            encode(args, &mut out);
        }
        s.write_owed(&out, steps.len()).await?;
        let mut first_err = None;
        for (name, _) in &steps {
            // Setup replies bypass the state tracking: they define the initial state.
            let reply = s.read_reply().await?;
            s.pending.pop_front();
            if let Value::Error(msg) = reply
                && first_err.is_none()
            {
                let msg = cfg.scrub(msg);
                tracing::debug!(step = *name, error = %msg, "redis setup step refused");
                first_err = Some(RedisError::server(msg));
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        s.db = cfg.db;
        s.setup_db = cfg.db;
        Ok(s)
    }

    /// Sends one command and reads its reply. An error reply (`-ERR …`) is
    /// `Ok(Value::Error(_))`: the session stays usable.
    ///
    /// Fails with [`RedisError::is_usage`] while pipelined replies are still owed (read them
    /// with [`recv`](Self::recv) first), and for pub/sub, `MONITOR` and `CLIENT REPLY`, which
    /// break request/reply.
    ///
    /// ```no_run
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// use livepool::redis::Value;
    /// assert_eq!(s.cmd(&[b"SET", b"k", b"1"]).await.unwrap(), Value::Simple("OK".into()));
    /// # }
    /// ```
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Result<Value, RedisError> {
        if !self.pending.is_empty() {
            return Err(RedisError::usage(format!(
                "{} pipelined replies still owed; recv them before cmd",
                self.pending.len()
            )));
        }
        self.send(args).await?;
        self.recv().await
    }

    /// Writes one command without reading its reply (pipelining): one more reply is owed,
    /// to be read with [`recv`](Self::recv).
    ///
    /// ```no_run
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// s.send(&[b"PING"]).await.unwrap();
    /// assert_eq!(s.owed(), 1);
    /// # }
    /// ```
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), RedisError> {
        self.check_usable()?;
        let effect = effect_of(args)?;
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode(args, &mut out);
        self.pending.push_back(effect);
        self.write_owed(&out, 0).await
    }

    /// Reads the next owed reply (RESP3 push frames that arrive in between are queued for
    /// [`take_pushes`](Self::take_pushes), never returned).
    ///
    /// ```no_run
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// s.send(&[b"ECHO", b"hi"]).await.unwrap();
    /// let hi = s.recv().await.unwrap();
    /// assert_eq!(hi, livepool::redis::Value::Bulk(Some(b"hi".to_vec())));
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<Value, RedisError> {
        self.check_usable()?;
        if self.pending.is_empty() {
            return Err(RedisError::usage("recv with no reply owed"));
        }
        let reply = self.read_reply().await?;
        let effect = self.pending.pop_front().expect("a reply was owed");
        self.track(effect, &reply);
        Ok(reply)
    }

    /// `PING` → `PONG` (RESP2 or RESP3, with push frames interleaved). Any other reply is an
    /// error ([`RedisError::is_server`] for an error reply).
    ///
    /// ```no_run
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// s.ping().await.unwrap();
    /// # }
    /// ```
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        match self.cmd(&[b"PING"]).await? {
            v if v.is_simple("PONG") => Ok(()),
            Value::Error(msg) => Err(RedisError::server(msg)),
            other => Err(RedisError::protocol(format!(
                "unexpected reply to PING: {other:?}"
            ))),
        }
    }

    /// Whether the session is as `setup` left it: no reply owed, no partial or unread reply
    /// buffered, no open `MULTI`, the setup database selected, and no `HELLO`/`AUTH`/`RESET`
    /// run and no failure since.
    ///
    /// ```no_run
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// s.cmd(&[b"MULTI"]).await.unwrap();
    /// assert!(!s.is_clean());
    /// s.cmd(&[b"EXEC"]).await.unwrap();
    /// assert!(s.is_clean());
    /// # }
    /// ```
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty()
            && self.parser.is_idle()
            && self.parser.pos == self.buf.len()
            && !self.in_multi
            && self.db == self.setup_db
            && !self.tainted
            && self.broken.is_none()
    }

    /// Handles bytes that arrived while the session was idle (the caller saw the stream
    /// readable): reads what is there now, and awaits the rest of a frame that arrived only
    /// in part (bound the call with a deadline).
    ///
    /// RESP3 push frames (such as client-tracking invalidations) and transport bytes with no
    /// payload (TLS session tickets) are [`IdleOutcome::Benign`]; end of stream or a reset
    /// is [`IdleOutcome::Closed`]; anything else is [`IdleOutcome::Unexpected`] and leaves
    /// the session broken.
    ///
    /// ```no_run
    /// use livepool::redis::IdleOutcome;
    /// # async fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// s.get_ref().readable().await.unwrap();
    /// let outcome = tokio::time::timeout(std::time::Duration::from_secs(1), s.idle_bytes())
    ///     .await
    ///     .unwrap_or(IdleOutcome::Unexpected("partial frame timed out".into()));
    /// if outcome == IdleOutcome::Benign {
    ///     let _invalidations = s.take_pushes();
    /// }
    /// # }
    /// ```
    pub async fn idle_bytes(&mut self) -> IdleOutcome {
        if let Some(why) = &self.broken {
            return IdleOutcome::Unexpected(format!("session already broken: {why}"));
        }
        if !self.pending.is_empty() {
            return IdleOutcome::Unexpected(format!(
                "not idle: {} replies owed",
                self.pending.len()
            ));
        }
        loop {
            loop {
                match self.parse_frame() {
                    Ok(Some(f)) if f.push => self.queue_push(f.value),
                    Ok(Some(f)) => {
                        let why = format!("unsolicited reply while idle: {}", describe(&f.value));
                        self.broken = Some(why.clone());
                        return IdleOutcome::Unexpected(why);
                    }
                    Ok(None) => break,
                    Err(e) => return IdleOutcome::Unexpected(e.to_string()),
                }
            }
            let partial = self.parser.pos < self.buf.len();
            let read = if partial {
                self.fill().await
            } else {
                match self.fill().now_or_never() {
                    Some(r) => r,
                    None => return IdleOutcome::Benign,
                }
            };
            match read {
                Ok(()) => {}
                Err(e) if e.is_closed() => return IdleOutcome::Closed,
                Err(e) => {
                    if let Some(io) = &e.source
                        && matches!(
                            io.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::BrokenPipe
                        )
                    {
                        return IdleOutcome::Closed;
                    }
                    return IdleOutcome::Unexpected(e.to_string());
                }
            }
        }
    }

    /// Takes the RESP3 push frames received so far (oldest first), each as a
    /// [`Value::Array`] such as `["invalidate", ["key"]]`. At most 1024 are kept; older
    /// ones are dropped.
    ///
    /// ```no_run
    /// # fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// for push in s.take_pushes() {
    ///     println!("{push:?}");
    /// }
    /// # }
    /// ```
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// How many replies are owed (sent with [`send`](Self::send), not yet read).
    ///
    /// ```no_run
    /// # fn demo(s: &livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// assert_eq!(s.owed(), 0);
    /// # }
    /// ```
    pub fn owed(&self) -> usize {
        self.pending.len()
    }

    /// The database currently selected (tracked through successful `SELECT`s, including
    /// those run by `EXEC`).
    ///
    /// ```no_run
    /// # fn demo(s: &livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// println!("on db {}", s.db());
    /// # }
    /// ```
    pub fn db(&self) -> u32 {
        self.db
    }

    /// The underlying stream (for readiness checks and addresses).
    ///
    /// ```no_run
    /// # fn demo(s: &livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// let peer = s.get_ref().peer_addr().unwrap();
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The underlying stream, mutably. Reading or writing it directly puts the session out
    /// of step, so the session is no longer clean afterwards: a pooled connection is then
    /// closed on return instead of reaching the next caller. (Socket options and addresses
    /// need only [`RedisSession::get_ref`].)
    ///
    /// ```no_run
    /// # fn demo(s: &mut livepool::redis::RedisSession<tokio::net::TcpStream>) {
    /// let raw = s.get_mut();
    /// # let _ = raw;
    /// assert!(!s.is_clean());
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        self.tainted = true;
        &mut self.stream
    }

    /// The stream for the pool's own bookkeeping (does not taint the session).
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    // -- internals ------------------------------------------------------------------------

    fn check_usable(&self) -> Result<(), RedisError> {
        match &self.broken {
            Some(why) => Err(RedisError::usage(format!("session broken earlier: {why}"))),
            None => Ok(()),
        }
    }

    /// Writes and flushes `bytes`; `extra` more replies are owed (beyond those already
    /// pushed to `pending`).
    async fn write_owed(&mut self, bytes: &[u8], extra: usize) -> Result<(), RedisError> {
        for _ in 0..extra {
            self.pending.push_back(Effect::None);
        }
        let res = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        }
        .await;
        res.map_err(|e| self.fail(RedisError::io(e)))
    }

    fn fail(&mut self, e: RedisError) -> RedisError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    /// Reads more bytes into the buffer; end of stream is a `closed` error.
    async fn fill(&mut self) -> Result<(), RedisError> {
        if self.buf.len() - self.buf_start() > MAX_BUFFERED {
            return Err(self.fail(RedisError::protocol(format!(
                "reply larger than {MAX_BUFFERED} bytes"
            ))));
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(self.fail(RedisError::closed())),
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(RedisError::io(e))),
        }
    }

    /// Where the frame being parsed starts (bytes before it are consumed).
    fn buf_start(&self) -> usize {
        if self.parser.is_idle() {
            self.parser.pos
        } else {
            0
        }
    }

    /// The next complete frame from the buffer, if there is one.
    fn parse_frame(&mut self) -> Result<Option<Frame>, RedisError> {
        match self.parser.next(&self.buf) {
            Ok(Some(f)) => {
                // Compact: drop consumed bytes when that is cheap relative to what stays.
                if f.end == self.buf.len() {
                    self.buf.clear();
                    self.parser.pos = 0;
                } else if f.end >= self.buf.len() / 2 {
                    self.buf.drain(..f.end);
                    self.parser.pos = 0;
                }
                Ok(Some(f))
            }
            Ok(None) => Ok(None),
            Err(msg) => Err(self.fail(RedisError::protocol(msg))),
        }
    }

    /// Reads up to the next frame that is not a push (pushes are queued).
    async fn read_reply(&mut self) -> Result<Value, RedisError> {
        loop {
            while let Some(f) = self.parse_frame()? {
                if f.push {
                    self.queue_push(f.value);
                } else {
                    return Ok(f.value);
                }
            }
            self.fill().await?;
        }
    }

    fn queue_push(&mut self, v: Value) {
        if self.pushes.len() >= MAX_PUSHES {
            self.pushes.pop_front();
        }
        self.pushes.push_back(v);
    }

    /// Applies a command's effect, judged by its reply.
    fn track(&mut self, effect: Effect, reply: &Value) {
        match effect {
            Effect::Multi => {
                if reply.is_simple("OK") {
                    self.in_multi = true;
                    self.queued.clear();
                }
            }
            Effect::Exec => {
                let queued = std::mem::take(&mut self.queued);
                if self.in_multi
                    && let Value::Array(Some(items)) = reply
                {
                    for (e, r) in queued.into_iter().zip(items) {
                        self.apply(e, r);
                    }
                }
                self.in_multi = false;
            }
            Effect::Discard => {
                self.in_multi = false;
                self.queued.clear();
            }
            _ if self.in_multi => {
                if reply.is_simple("QUEUED") {
                    self.queued.push(effect);
                }
            }
            _ => self.apply(effect, reply),
        }
    }

    fn apply(&mut self, effect: Effect, reply: &Value) {
        match effect {
            Effect::Select(db) if reply.is_simple("OK") => self.db = db,
            Effect::Taints if !reply.is_error() => self.tainted = true,
            _ => {}
        }
    }
}

/// A short description of a value for an error message (no payload bytes beyond 32).
fn describe(v: &Value) -> String {
    match v {
        Value::Simple(s) => format!("simple string \"{}\"", excerpt(s.as_bytes())),
        Value::Error(s) => format!("error \"{}\"", excerpt(s.as_bytes())),
        Value::Int(n) => format!("integer {n}"),
        Value::Bulk(Some(b)) => format!("bulk string of {} bytes", b.len()),
        Value::Bulk(None) => "null bulk string".to_string(),
        Value::Array(Some(a)) => format!("array of {}", a.len()),
        Value::Array(None) => "null array".to_string(),
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Double(d) => format!("double {d}"),
        Value::BigNumber(_) => "big number".to_string(),
        Value::Verbatim { text, .. } => format!("verbatim string of {} bytes", text.len()),
        Value::Map(m) => format!("map of {}", m.len()),
        Value::Set(s) => format!("set of {}", s.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Parser unit tests.
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` whole, fed all at once.
    fn one(input: &[u8]) -> Result<Option<(Value, bool)>, String> {
        let mut p = Parser::default();
        Ok(p.next(input)?.map(|f| {
            assert_eq!(f.end, input.len(), "frame should use every byte");
            (f.value, f.push)
        }))
    }

    fn val(input: &[u8]) -> Value {
        match one(input) {
            Ok(Some((v, false))) => v,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    fn err(input: &[u8]) -> String {
        match one(input) {
            Err(e) => e,
            other => panic!(
                "{:?} should fail: {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    /// Feeds `input` one byte at a time: the same value, found only at the last byte.
    fn bytewise(input: &[u8]) -> Value {
        let mut p = Parser::default();
        for n in 1..input.len() {
            assert!(
                p.next(&input[..n]).unwrap().is_none(),
                "complete early at {n}"
            );
        }
        let f = p.next(input).unwrap().expect("complete");
        assert_eq!(f.end, input.len());
        f.value
    }

    #[test]
    fn resp2_types() {
        assert_eq!(val(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(val(b"-ERR bad\r\n"), Value::Error("ERR bad".into()));
        assert_eq!(val(b":-42\r\n"), Value::Int(-42));
        assert_eq!(
            val(b"$5\r\nh\r\nlo\r\n"),
            Value::Bulk(Some(b"h\r\nlo".to_vec()))
        );
        assert_eq!(val(b"$0\r\n\r\n"), Value::Bulk(Some(vec![])));
        assert_eq!(val(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(val(b"*-1\r\n"), Value::Array(None));
        assert_eq!(val(b"*0\r\n"), Value::Array(Some(vec![])));
        assert_eq!(
            val(b"*3\r\n:1\r\n*1\r\n+x\r\n$-1\r\n"),
            Value::Array(Some(vec![
                Value::Int(1),
                Value::Array(Some(vec![Value::Simple("x".into())])),
                Value::Bulk(None)
            ]))
        );
    }

    #[test]
    fn resp3_types() {
        assert_eq!(val(b"_\r\n"), Value::Null);
        assert_eq!(val(b"#t\r\n"), Value::Bool(true));
        assert_eq!(val(b"#f\r\n"), Value::Bool(false));
        assert_eq!(val(b",3.25\r\n"), Value::Double(3.25));
        assert_eq!(val(b",-inf\r\n"), Value::Double(f64::NEG_INFINITY));
        assert_eq!(val(b",inf\r\n"), Value::Double(f64::INFINITY));
        assert!(matches!(val(b",nan\r\n"), Value::Double(d) if d.is_nan()));
        assert_eq!(
            val(b"(-3492890328409238509324850943850943825024385\r\n"),
            Value::BigNumber("-3492890328409238509324850943850943825024385".into())
        );
        assert_eq!(
            val(b"!21\r\nSYNTAX invalid syntax\r\n"),
            Value::Error("SYNTAX invalid syntax".into())
        );
        assert_eq!(
            val(b"=15\r\ntxt:Some string\r\n"),
            Value::Verbatim {
                format: "txt".into(),
                text: b"Some string".to_vec()
            }
        );
        assert_eq!(
            val(b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n"),
            Value::Map(vec![
                (Value::Simple("first".into()), Value::Int(1)),
                (Value::Bulk(Some(b"second".to_vec())), Value::Bool(false)),
            ])
        );
        assert_eq!(
            val(b"~3\r\n+a\r\n:2\r\n_\r\n"),
            Value::Set(vec![Value::Simple("a".into()), Value::Int(2), Value::Null])
        );
        assert_eq!(val(b"%0\r\n"), Value::Map(vec![]));
        assert_eq!(val(b"~0\r\n"), Value::Set(vec![]));
    }

    #[test]
    fn push_frames_are_flagged() {
        let (v, push) = one(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
            .unwrap()
            .unwrap();
        assert!(push);
        assert_eq!(
            v,
            Value::Array(Some(vec![
                Value::Bulk(Some(b"invalidate".to_vec())),
                Value::Array(Some(vec![Value::Bulk(Some(b"k".to_vec()))])),
            ]))
        );
        assert!(one(b">0\r\n").unwrap().unwrap().1);
        // An array holding a push-looking value is no push; a nested push is a violation.
        assert!(err(b"*1\r\n>0\r\n").contains("push"));
    }

    #[test]
    fn attributes_are_dropped() {
        assert_eq!(
            val(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2\r\n:3\r\n"),
            Value::Array(Some(vec![Value::Int(2), Value::Int(3)]))
        );
        // Inside an aggregate, before an element: the element count is unaffected.
        assert_eq!(
            val(b"*2\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n"),
            Value::Array(Some(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(val(b"|0\r\n:7\r\n"), Value::Int(7));
    }

    #[test]
    fn incremental_parsing_matches_whole() {
        for input in [
            b"+OK\r\n".as_slice(),
            b"$5\r\nhello\r\n",
            b"*2\r\n%1\r\n+k\r\n~1\r\n:1\r\n=7\r\ntxt:abc\r\n",
            b"|1\r\n+a\r\n+b\r\n,1.5\r\n",
        ] {
            assert_eq!(bytewise(input), val(input));
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let buf = b"+A\r\n>1\r\n+p\r\n:3\r\n";
        let mut p = Parser::default();
        let a = p.next(buf).unwrap().unwrap();
        assert_eq!(
            (a.value, a.push, a.end),
            (Value::Simple("A".into()), false, 4)
        );
        let b = p.next(buf).unwrap().unwrap();
        assert!(b.push);
        let c = p.next(buf).unwrap().unwrap();
        assert_eq!((c.value, c.end), (Value::Int(3), buf.len()));
        assert!(p.next(buf).unwrap().is_none());
    }

    #[test]
    fn garbage_is_a_clean_error() {
        assert!(err(b"hello world\r\n").contains("unexpected type byte 0x68"));
        assert!(err(b"\x00\x01\x02").contains("type byte"));
        assert!(err(b":12a\r\n").contains("bad integer"));
        assert!(err(b":\r\n").contains("bad integer"));
        assert!(err(b":99999999999999999999999\r\n").contains("bad integer"));
        assert!(err(b"+OK\n").contains("CRLF"));
        assert!(err(b"$3\r\nabcXY").contains("CRLF"));
        assert!(err(b"#x\r\n").contains("boolean"));
        assert!(err(b",pi\r\n").contains("double"));
        assert!(err(b"(12x\r\n").contains("big number"));
        assert!(err(b"_x\r\n").contains("null"));
        assert!(err(b"=2\r\nab\r\n").contains("verbatim"));
        assert!(err(b"$-2\r\n").contains("out of range"));
        assert!(err(b"!-1\r\n").contains("out of range"));
        assert!(err(b"~-1\r\n").contains("out of range"));
        assert!(err(b"$?\r\n").contains("length"));
        assert!(err(b"*?\r\n").contains("length"));
        assert!(err(b";4\r\n").contains("streamed"));
    }

    #[test]
    fn limits_are_enforced_without_allocating() {
        // A bulk over 512 MiB is refused from its header alone.
        assert!(err(b"$536870913\r\n").contains("out of range"));
        assert!(
            one(b"$536870912\r\n").unwrap().is_none(),
            "512 MiB is allowed, needs bytes"
        );
        assert!(err(b"$99999999999999999\r\n").contains("out of range"));
        assert!(err(b"*99999999999999999\r\n").contains("out of range"));
        assert!(err(b"%9223372036854775807\r\n").contains("out of range"));
        // A huge announced (but allowed) count does not preallocate it.
        let mut p = Parser::default();
        assert!(p.next(b"*16777216\r\n").unwrap().is_none());
        assert!(p.stack[0].items.capacity() <= 1024);
        // Nesting.
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).contains("nested deeper"));
        let mut ok = b"*1\r\n".repeat(MAX_DEPTH - 1);
        ok.extend_from_slice(b":1\r\n");
        assert!(matches!(val(&ok), Value::Array(Some(_))));
        // A line that never ends.
        let mut p = Parser::default();
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE + 2, b'a');
        assert!(p.next(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn long_line_scanned_once_then_completed() {
        let mut p = Parser::default();
        let mut buf = b"+".to_vec();
        buf.extend(std::iter::repeat_n(b'x', 5000));
        assert!(p.next(&buf).unwrap().is_none());
        assert_eq!(p.scanned, 5000);
        buf.extend_from_slice(b"\r\n");
        let f = p.next(&buf).unwrap().unwrap();
        assert!(matches!(f.value, Value::Simple(s) if s.len() == 5000));
    }

    #[test]
    fn effects_of_commands() {
        assert_eq!(effect_of(&[b"select", b"3"]).unwrap(), Effect::Select(3));
        assert_eq!(effect_of(&[b"SELECT", b"x"]).unwrap(), Effect::None);
        assert_eq!(effect_of(&[b"Multi"]).unwrap(), Effect::Multi);
        assert_eq!(effect_of(&[b"hello", b"3"]).unwrap(), Effect::Taints);
        assert_eq!(
            effect_of(&[b"client", b"tracking", b"on"]).unwrap(),
            Effect::Taints
        );
        assert_eq!(
            effect_of(&[b"CLIENT", b"SETNAME", b"x"]).unwrap(),
            Effect::Taints
        );
        assert_eq!(effect_of(&[b"CLIENT", b"ID"]).unwrap(), Effect::None);
        assert!(effect_of(&[b"subscribe", b"c"]).unwrap_err().is_usage());
        assert!(
            effect_of(&[b"CLIENT", b"reply", b"off"])
                .unwrap_err()
                .is_usage()
        );
        assert!(effect_of(&[]).unwrap_err().is_usage());
    }

    #[test]
    fn setup_refusals_are_classified() {
        for msg in [
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair or user is disabled.",
            "NOPERM this user has no permissions to run the 'select' command",
            "ERR invalid password",
            "ERR AUTH <password> called without any password configured for the default user.",
            "ERR DB index is out of range",
        ] {
            assert!(super::setup_refusal(msg).is_config(), "{msg}");
        }
        for msg in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        ] {
            assert!(super::setup_refusal(msg).is_busy(), "{msg}");
        }
        for msg in ["ERR unknown command 'HELLO'", "OOM command not allowed", ""] {
            assert!(super::setup_refusal(msg).is_rejected(), "{msg}");
        }
    }

    #[test]
    fn config_debug_and_errors_hide_the_password() {
        let cfg = RedisConfig::new().username("u").password("s3cr3t!");
        let dbg = format!("{cfg:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains("s3cr3t!"),
            "{dbg}"
        );
        let scrubbed = cfg.scrub("ERR bad s3cr3t! here".into());
        assert_eq!(scrubbed, "ERR bad <redacted> here");
        let e = RedisError::server("WRONGPASS invalid username-password pair.".into());
        assert_eq!(
            e.to_string(),
            "redis server error: WRONGPASS invalid username-password pair"
        );
        assert_eq!(
            e.server_message(),
            Some("WRONGPASS invalid username-password pair.")
        );
        let io = RedisError::io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(io.is_io() && io.source().is_some());
    }

    /// A scripted in-memory stream: the session over `tokio::io::duplex`.
    #[tokio::test]
    async fn session_over_duplex_tracks_state() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            // setup: SELECT 2
            let _ = server.read(&mut sink).await.unwrap();
            server.write_all(b"+OK\r\n").await.unwrap();
            // MULTI, SELECT 4 (queued), EXEC → [OK]
            for reply in [
                &b"+OK\r\n"[..],
                b"+QUEUED\r\n",
                b">1\r\n+p\r\n*1\r\n+OK\r\n",
            ] {
                let _ = server.read(&mut sink).await.unwrap();
                server.write_all(reply).await.unwrap();
            }
            // SELECT 2 → OK, then an unsolicited push and then garbage while idle.
            let _ = server.read(&mut sink).await.unwrap();
            server.write_all(b"+OK\r\n>1\r\n+q\r\n").await.unwrap();
            server
        });
        let cfg = RedisConfig::new().db(2);
        let mut s = RedisSession::setup(client, &cfg).await.unwrap();
        assert_eq!(s.db(), 2);
        assert!(s.is_clean());
        assert_eq!(
            s.cmd(&[b"MULTI"]).await.unwrap(),
            Value::Simple("OK".into())
        );
        assert!(!s.is_clean());
        assert_eq!(
            s.cmd(&[b"SELECT", b"4"]).await.unwrap(),
            Value::Simple("QUEUED".into())
        );
        assert_eq!(s.db(), 2, "queued SELECT applies at EXEC");
        s.cmd(&[b"EXEC"]).await.unwrap();
        assert_eq!(s.db(), 4);
        assert!(!s.is_clean());
        assert_eq!(s.take_pushes().len(), 1);
        s.cmd(&[b"SELECT", b"2"]).await.unwrap();
        let mut server = srv.await.unwrap();
        // The push that followed the OK is parsed by idle_bytes (already buffered).
        assert_eq!(s.idle_bytes().await, IdleOutcome::Benign);
        assert_eq!(
            s.take_pushes(),
            vec![Value::Array(Some(vec![Value::Simple("q".into())]))]
        );
        assert!(s.is_clean());
        // A partial frame is awaited; a reply while idle is unexpected.
        server.write_all(b">1\r\n+par").await.unwrap();
        let writer = tokio::spawn(async move {
            server.write_all(b"tial\r\n:5\r\n").await.unwrap();
            server
        });
        let out = s.idle_bytes().await;
        let mut server = writer.await.unwrap();
        // Depending on timing the push alone (Benign) or push + reply (Unexpected).
        if out == IdleOutcome::Benign {
            assert_eq!(s.take_pushes().len(), 1);
            let out = s.idle_bytes().await;
            assert!(
                matches!(out, IdleOutcome::Unexpected(ref m) if m.contains("unsolicited")),
                "{out:?}"
            );
        } else {
            assert!(
                matches!(out, IdleOutcome::Unexpected(ref m) if m.contains("unsolicited")),
                "{out:?}"
            );
        }
        assert!(!s.is_clean());
        assert!(s.cmd(&[b"PING"]).await.unwrap_err().is_usage());
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn eof_while_idle_is_closed_and_garbage_is_a_protocol_error() {
        let (client, server) = tokio::io::duplex(1024);
        let mut s = RedisSession::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        drop(server);
        assert_eq!(s.idle_bytes().await, IdleOutcome::Closed);

        let (client, mut server) = tokio::io::duplex(1024);
        let mut s = RedisSession::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n")
            .await
            .unwrap();
        s.send(&[b"PING"]).await.unwrap();
        let e = s.recv().await.unwrap_err();
        assert!(e.is_protocol(), "{e}");
        assert!(!s.is_clean());

        let (client, mut server) = tokio::io::duplex(1024);
        let mut s = RedisSession::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        server.write_all(b"$1073741824\r\n").await.unwrap();
        s.send(&[b"GET", b"k"]).await.unwrap();
        let e = s.recv().await.unwrap_err();
        assert!(
            e.is_protocol() && e.to_string().contains("out of range"),
            "{e}"
        );
    }
}

/// The Redis protocol for a [`Pool`](crate::Pool): every new connection is set up (AUTH with a
/// password or an ACL user, `HELLO 3`, `CLIENT SETNAME`, `SELECT`) before anyone sees it,
/// idle members are pinged through the session (TLS and RESP3 included), a connection goes
/// back only when no reply is owed, no `MULTI` is open and the database is the one set up,
/// and RESP3 pushes on an idle member are benign.
///
/// ```no_run
/// use livepool::redis::{Redis, RedisConfig};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = livepool::Pool::builder("127.0.0.1:6379")
///     .protocol(Redis::new(RedisConfig::new().password("s3cret").db(2)))
///     .min_idle(2)
///     .build()?;
/// let mut conn = pool.get().await?;
/// conn.cmd(&[b"SET", b"k", b"v"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Redis {
    config: RedisConfig,
}

impl Redis {
    /// The protocol with this configuration.
    ///
    /// ```
    /// let p = livepool::redis::Redis::new(livepool::redis::RedisConfig::new().db(1));
    /// # let _ = p;
    /// ```
    pub fn new(config: RedisConfig) -> Self {
        Redis { config }
    }
}

/// What an error reply during setup means for the pool: a configuration mistake (no or a
/// wrong password, an ACL user without the right, a database index out of range: the
/// server is fine), a server not ready yet (loading its data, busy with a script, a
/// replica without its primary: retried with backoff), or a refusal.
fn setup_refusal(server_says: &str) -> crate::SetupError {
    let code = server_says.split_whitespace().next().unwrap_or_default();
    let text = server_says.to_owned();
    match code {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => crate::SetupError::config(text),
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" => crate::SetupError::busy(text),
        // Older servers: `ERR invalid password`, `ERR Client sent AUTH, but no password is
        // set`, `ERR AUTH <password> called without any password configured`, `ERR DB
        // index is out of range`, `ERR invalid DB index`.
        "ERR" => {
            let lower = server_says.to_ascii_lowercase();
            if ["password", "auth", "db index"]
                .iter()
                .any(|w| lower.contains(w))
            {
                crate::SetupError::config(text)
            } else {
                crate::SetupError::rejected(text)
            }
        }
        _ => crate::SetupError::rejected(text),
    }
}

impl crate::Protocol for Redis {
    type Conn = RedisSession<crate::Io>;

    fn io(conn: &Self::Conn) -> &crate::Io {
        conn.get_ref()
    }

    fn io_mut(conn: &mut Self::Conn) -> &mut crate::Io {
        conn.stream_mut()
    }

    async fn setup(&self, io: crate::Io) -> Result<Self::Conn, crate::SetupError> {
        RedisSession::setup(io, &self.config).await.map_err(|e| {
            if e.is_server() {
                setup_refusal(e.server_message().unwrap_or_default())
            } else if e.is_io() || e.is_closed() {
                let kind = e.io_kind();
                crate::SetupError::io(io::Error::new(kind, e.to_string()))
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
            if e.is_closed() {
                crate::HeartbeatError::closed()
            } else if e.is_io() {
                crate::HeartbeatError::io(io::Error::new(e.io_kind(), e.to_string()))
            } else {
                crate::HeartbeatError::bad_reply(e.to_string())
            }
        })
    }

    fn is_clean(&self, conn: &Self::Conn) -> bool {
        conn.is_clean()
    }

    async fn idle_bytes(&self, conn: &mut Self::Conn) -> crate::IdleVerdict {
        match conn.idle_bytes().await {
            IdleOutcome::Benign => crate::IdleVerdict::Keep,
            IdleOutcome::Closed => crate::IdleVerdict::Evict(crate::EvictReason::PeerClosed),
            IdleOutcome::Unexpected(what) => {
                tracing::debug!(what = %what, "unexpected bytes on an idle redis connection");
                crate::IdleVerdict::Evict(crate::EvictReason::UnexpectedData)
            }
        }
    }
}
