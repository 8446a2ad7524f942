//! [`RedisConnection`]: one Redis connection that the redis crate's typed API runs on
//! (`redis::aio::ConnectionLike`), and that knows, at every moment, whether it is as it was
//! set up.
//!
//! What it checks, and why this shape rather than hosting the redis crate's
//! `MultiplexedConnection`: the crate docs, "What the pool checks".

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::RedisConfig;
use crate::scan::{Frame, MAX_BULK, Scanner};

/// The most bytes one reply may occupy in the read buffer.
const MAX_BUFFERED: usize = MAX_BULK + (16 << 20);
/// The most push frames kept for [`RedisConnection::take_pushes`]; older ones are dropped.
const MAX_PUSHES: usize = 1024;
/// A read buffer that a large reply grew beyond this is given back once it is empty.
const KEEP_BUFFER: usize = 64 << 10;
/// The read buffer a connection starts with (and shrinks back to).
const INITIAL_BUFFER: usize = 8 << 10;

/// What a command does to the state [`RedisConnection::is_clean`] follows, judged by its
/// reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    Multi,
    Exec,
    Discard,
    Select(i64),
    Watch,
    Unwatch,
    /// Session state beyond what is followed one by one (`HELLO`, `AUTH`, `RESET`, `CLIENT
    /// TRACKING`, `CLIENT SETNAME`, `READONLY`, …): undone with `RESET` and the setup.
    Taints,
}

/// How long the server may hold a command's reply back on purpose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Block {
    No,
    For(Duration),
    Forever,
}

/// One reply owed.
#[derive(Debug, Clone, Copy)]
struct Owed {
    effect: Effect,
    block: Block,
}

fn usage(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::Client, what, detail))
}

fn protocol(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "bad reply from the server", detail))
}

fn closed() -> RedisError {
    RedisError::from(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    ))
}

/// The error of a reply (or of replies) not read within `limit`: the server did not answer
/// in time. An I/O error of kind `TimedOut`, so that `RedisError::is_timeout` holds and the
/// pool counts it against the endpoint where it may (a setup, a heartbeat).
fn no_reply(limit: Duration, what: &str) -> RedisError {
    RedisError::from(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no reply {what}within {limit:?} (RedisConfig::response_timeout)"),
    ))
}

fn arg_bytes(a: Arg<&[u8]>) -> &[u8] {
    match a {
        Arg::Simple(b) => b,
        // A cursor, or an argument kind of a later version: never a command name.
        _ => b"0",
    }
}

/// A timeout argument of a blocking command: seconds (`BLPOP`) or milliseconds (`WAIT`,
/// `XREAD BLOCK`), 0 meaning forever; unreadable counts as forever.
fn block_arg(arg: Option<&[u8]>, millis: bool) -> Block {
    let Some(n) = arg
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0)
    else {
        return Block::Forever;
    };
    if n == 0.0 {
        Block::Forever
    } else {
        Block::For(Duration::from_secs_f64(if millis { n / 1000.0 } else { n }))
    }
}

/// What one command does (or why it may not run on a pooled connection).
pub(crate) fn classify(cmd: &Cmd) -> RedisResult<(Effect, Block)> {
    let mut args = cmd.args_iter().map(arg_bytes);
    let Some(name) = args.next() else {
        return Err(usage("empty command", String::new()));
    };
    let sub = args.next();
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let sub_is = |n: &str| sub.is_some_and(|s| s.eq_ignore_ascii_case(n.as_bytes()));
    if [
        "SUBSCRIBE",
        "PSUBSCRIBE",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SUNSUBSCRIBE",
        "MONITOR",
        "SYNC",
        "PSYNC",
    ]
    .iter()
    .any(|n| is(n))
    {
        let shown = String::from_utf8_lossy(name).to_ascii_uppercase();
        return Err(usage(
            "not on a pooled connection",
            format!("{shown} breaks request/reply; use livepool_redis::Subscriber for pub/sub"),
        ));
    }
    if is("CLIENT") && sub_is("REPLY") {
        return Err(usage(
            "not on a pooled connection",
            "CLIENT REPLY: every command must get its reply".to_string(),
        ));
    }
    let effect = if is("MULTI") {
        Effect::Multi
    } else if is("EXEC") {
        Effect::Exec
    } else if is("DISCARD") {
        Effect::Discard
    } else if is("WATCH") {
        Effect::Watch
    } else if is("UNWATCH") {
        Effect::Unwatch
    } else if is("SELECT") {
        match sub.and_then(|a| std::str::from_utf8(a).ok()?.parse().ok()) {
            Some(db) => Effect::Select(db),
            None => Effect::None,
        }
    } else if ["HELLO", "AUTH", "RESET", "READONLY", "READWRITE", "SWAPDB"]
        .iter()
        .any(|n| is(n))
        || (is("CLIENT")
            && [
                "TRACKING", "SETNAME", "SETINFO", "NO-EVICT", "NO-TOUCH", "CACHING",
            ]
            .iter()
            .any(|n| sub_is(n)))
    {
        Effect::Taints
    } else {
        Effect::None
    };
    let last = || cmd.args_iter().last().map(arg_bytes);
    let block = if [
        "BLPOP",
        "BRPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BRPOPLPUSH",
        "BLMOVE",
    ]
    .iter()
    .any(|n| is(n))
    {
        block_arg(last(), false)
    } else if is("BLMPOP") || is("BZMPOP") {
        block_arg(sub, false)
    } else if is("WAIT") || is("WAITAOF") {
        block_arg(last(), true)
    } else if is("XREAD") || is("XREADGROUP") {
        let mut it = cmd.args_iter().map(arg_bytes);
        match it.position(|a| a.eq_ignore_ascii_case(b"BLOCK")) {
            Some(_) => block_arg(it.next(), true),
            None => Block::No,
        }
    } else {
        Block::No
    };
    Ok((effect, block))
}

/// Why a returned connection could not be settled.
#[derive(Debug)]
pub(crate) struct Unsettled {
    pub(crate) why: String,
    /// The server did not answer within the response timeout (evidence against it).
    pub(crate) unanswered: bool,
}

/// Why a connection's setup failed.
#[derive(Debug)]
pub(crate) enum SetupFailure {
    /// The server refused a step, in its own words (password scrubbed); the server's error
    /// itself when it did not carry the password.
    Refused(String, Option<redis::ServerError>),
    Io(io::Error),
    Protocol(String),
}

impl SetupFailure {
    fn from_redis(e: RedisError) -> Self {
        match io_kind(&e) {
            Some(kind) => SetupFailure::Io(io::Error::new(kind, e.to_string())),
            None => SetupFailure::Protocol(e.to_string()),
        }
    }
}

/// The `io::ErrorKind` behind an error from the stream, if it is one.
pub(crate) fn io_kind(e: &RedisError) -> Option<io::ErrorKind> {
    // The redis crate keeps the `io::Error` behind an `Arc`, which is the source it shows.
    let source = std::error::Error::source(e)?;
    source
        .downcast_ref::<io::Error>()
        .or_else(|| {
            source
                .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<io::Error>())
        })
        .map(io::Error::kind)
        .or_else(|| e.is_io_error().then_some(io::ErrorKind::Other))
}

/// What bytes on an idle connection turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdleOutcome {
    /// RESP3 pushes (queued) or transport bytes without payload (TLS session tickets).
    Benign,
    /// The server closed the connection.
    Closed,
    /// Anything else, described; the connection is broken.
    Unexpected(String),
}

/// A Redis connection after its setup, over any async byte stream `S` (a pooled
/// connection's [`Io`](livepool::Io) by default): the redis crate's typed API runs on it
/// through `redis::aio::ConnectionLike`.
///
/// It follows what a pool needs before reusing it (see [`is_clean`](Self::is_clean)). Pooled
/// connections ([`Conn`](crate::Conn)) deref to this type.
///
/// ```no_run
/// use livepool_redis::{RedisConfig, RedisConnection};
/// use redis::AsyncCommands;
///
/// # async fn demo() -> redis::RedisResult<()> {
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:6379").await?;
/// let mut conn = RedisConnection::setup(tcp, &RedisConfig::new().db(2)).await?;
/// let _: () = conn.set("k", 1).await?;
/// let n: i64 = conn.incr("k", 1).await?;
/// assert_eq!(n, 2);
/// assert!(conn.is_clean());
/// # Ok(()) }
/// ```
///
/// # Cancel safety
/// A call dropped after writing its commands (through the typed API or
/// [`ping`](Self::ping)) leaves their replies owed. The commands still run at the server, so
/// a retry may run them twice. The holder's next call reads and drops those replies first,
/// or the pool does when the connection goes back: nobody gets a stale reply (tests
/// `the_next_call_of_the_same_holder_drops_the_replies_owed`,
/// `pipelined_caller_stopping_early_never_leaks_a_reply`). A call dropped mid-write leaves
/// the connection out of step: later calls fail, and a pool closes it, as it closes one that
/// owes the reply of a command that may block forever, such as `BLPOP … 0` (test
/// `a_cancelled_command_that_may_block_forever_closes_the_connection`).
pub struct RedisConnection<S = livepool::Io> {
    stream: S,
    buf: Vec<u8>,
    scan: Scanner,
    /// The redis crate's parser, kept so that its buffer is reused from reply to reply.
    parser: redis::Parser,
    /// One entry per reply owed, oldest first.
    pending: VecDeque<Owed>,
    /// A write was started and has not finished (its call was dropped): out of step.
    writing: bool,
    in_multi: bool,
    /// Effects of the commands queued in the open `MULTI`, applied at `EXEC`.
    queued: Vec<Effect>,
    watching: bool,
    db: i64,
    tainted: bool,
    pushes: VecDeque<Value>,
    /// An I/O or protocol failure: the stream must not be used again.
    broken: Option<String>,
    /// Given over to pub/sub ([`Subscriber`](crate::Subscriber)): never clean again.
    subscribed: bool,
    config: Arc<RedisConfig>,
}

impl<S> fmt::Debug for RedisConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("owed", &self.pending.len())
            .field("buffered", &(self.buf.len() - self.scan.start()))
            .field("in_multi", &self.in_multi)
            .field("watching", &self.watching)
            .field("db", &self.db)
            .field("tainted", &self.tainted)
            .field("pushes", &self.pushes.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<S> RedisConnection<S> {
    /// Whether the connection is as its setup left it: no reply owed, nothing of a reply
    /// buffered, no `MULTI` open, no key watched, the setup's database selected, no session
    /// state changed (`HELLO`, `AUTH`, `CLIENT TRACKING`, …) and no failure.
    ///
    /// ```no_run
    /// # async fn demo(conn: &mut livepool_redis::RedisConnection<tokio::net::TcpStream>) -> redis::RedisResult<()> {
    /// redis::cmd("WATCH").arg("k").exec_async(conn).await?;
    /// assert!(!conn.is_clean());
    /// redis::cmd("UNWATCH").exec_async(conn).await?;
    /// assert!(conn.is_clean());
    /// # Ok(()) }
    /// ```
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty()
            && !self.writing
            && self.scan.is_idle()
            && self.buf.len() == self.scan.start()
            && !self.in_multi
            && !self.watching
            && self.db == i64::from(self.config.db)
            && !self.tainted
            && self.broken.is_none()
            && !self.subscribed
    }

    /// How many replies are owed (by calls dropped before their reply was read).
    ///
    /// ```no_run
    /// # fn demo(conn: &livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// assert_eq!(conn.owed(), 0);
    /// # }
    /// ```
    pub fn owed(&self) -> usize {
        self.pending.len()
    }

    /// The database selected now (followed through `SELECT`, including one run by `EXEC`).
    ///
    /// ```no_run
    /// # fn demo(conn: &livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// println!("on db {}", conn.db());
    /// # }
    /// ```
    pub fn db(&self) -> i64 {
        self.db
    }

    /// Takes the RESP3 push frames received so far (oldest first), such as client-tracking
    /// invalidations. At most 1024 are kept; older ones are dropped.
    ///
    /// ```no_run
    /// # fn demo(conn: &mut livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// for push in conn.take_pushes() {
    ///     println!("{push:?}");
    /// }
    /// # }
    /// ```
    pub fn take_pushes(&mut self) -> Vec<Value> {
        self.pushes.drain(..).collect()
    }

    /// The read buffer's capacity in bytes (for memory accounting: it shrinks back to a
    /// few KiB once a large reply is consumed).
    ///
    /// ```no_run
    /// # fn demo(conn: &livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// assert!(conn.buffer_capacity() <= 64 << 10);
    /// # }
    /// ```
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The underlying stream (addresses, socket options).
    ///
    /// ```no_run
    /// # fn demo(conn: &livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// let peer = conn.get_ref().peer_addr().unwrap();
    /// # }
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream for the pool's own bookkeeping.
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Whether [`settle`](Self::settle) may bring the connection back: nothing half written,
    /// no failure, and no reply owed by a command that may block forever.
    pub(crate) fn can_settle(&self) -> bool {
        !self.writing
            && self.broken.is_none()
            && !self.subscribed
            && !self.pending.iter().any(|o| o.block == Block::Forever)
    }

    fn fail(&mut self, e: RedisError) -> RedisError {
        if self.broken.is_none() {
            self.broken = Some(e.to_string());
        }
        e
    }

    fn check_usable(&self) -> RedisResult<()> {
        match (&self.broken, self.writing) {
            (Some(why), _) => Err(usage("connection broken earlier", why.clone())),
            (None, true) => Err(usage(
                "connection out of step",
                "a write was cut short by a dropped call".to_string(),
            )),
            (None, false) => Ok(()),
        }
    }

    fn queue_push(&mut self, v: Value) {
        if self.pushes.len() >= MAX_PUSHES {
            self.pushes.pop_front();
        }
        self.pushes.push_back(v);
    }

    /// Drops the bytes of frames already consumed; gives back a buffer a large reply grew.
    fn compact(&mut self) {
        let start = self.scan.start();
        if start == self.buf.len() {
            self.scan.shift(start);
            if self.buf.capacity() > KEEP_BUFFER {
                self.buf = Vec::with_capacity(INITIAL_BUFFER);
            } else {
                self.buf.clear();
            }
        } else if start >= self.buf.len() / 2 {
            self.buf.drain(..start);
            self.scan.shift(start);
        }
    }

    fn parse(&mut self, f: Frame) -> RedisResult<Value> {
        let parsed = self.parser.parse_value(&self.buf[f.start..f.end]);
        if parsed.is_err() || f.end - f.start > KEEP_BUFFER {
            // A parser that failed may hold a partial state, and one that read a large
            // reply holds a buffer as large: a fresh one.
            self.parser = redis::Parser::new();
        }
        match parsed {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(protocol(e.to_string()))),
        }
    }

    /// Applies a command's effect, judged by its reply.
    fn track(&mut self, effect: Effect, reply: &Value) {
        let ok = !matches!(reply, Value::ServerError(_));
        match effect {
            Effect::Multi => {
                if ok {
                    self.in_multi = true;
                    self.queued.clear();
                }
            }
            // Refused outside a transaction (`EXEC without MULTI`): the server keeps any
            // WATCH, and so does the tracking.
            Effect::Exec | Effect::Discard if !self.in_multi => {}
            Effect::Exec => {
                let queued = std::mem::take(&mut self.queued);
                if self.in_multi
                    && let Value::Array(items) = reply
                {
                    for (e, r) in queued.into_iter().zip(items) {
                        self.apply(e, r);
                    }
                }
                self.in_multi = false;
                // EXEC unwatches, whether it ran the transaction or not.
                self.watching = false;
            }
            Effect::Discard => {
                self.in_multi = false;
                self.queued.clear();
                self.watching = false;
            }
            _ if self.in_multi => {
                if ok {
                    self.queued.push(effect);
                }
            }
            _ => self.apply(effect, reply),
        }
    }

    fn apply(&mut self, effect: Effect, reply: &Value) {
        if matches!(reply, Value::ServerError(_)) {
            return;
        }
        match effect {
            Effect::Select(db) => self.db = db,
            Effect::Watch => self.watching = true,
            Effect::Unwatch => self.watching = false,
            Effect::Taints => self.tainted = true,
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RedisConnection<S> {
    /// Sets up a freshly connected stream: `HELLO 3 [AUTH user pass] [SETNAME name]` when
    /// RESP3 is configured, else `AUTH [user] pass` (when a password is set) and `CLIENT
    /// SETNAME`; then the `on_connect` commands and `SELECT db` when the database is not 0.
    /// The steps are pipelined (one round trip), and their replies awaited for the
    /// [response timeout](RedisConfig::response_timeout). With nothing to set up, nothing is
    /// sent (a pool's connection sends `PING` then, see [`Redis`](crate::Redis)).
    ///
    /// # Errors
    /// A step the server refuses: an error with the server's code and words (for example
    /// `WRONGPASS`), never containing the password. An I/O error of the stream; a timeout
    /// (`RedisError::is_timeout`) when the replies did not come within the response timeout.
    ///
    /// # Cancel safety
    /// The call owns the stream: dropping the future drops the stream with it (a socket
    /// closes), so nothing is left half set up. To retry, open a new stream.
    ///
    /// ```no_run
    /// use livepool_redis::{RedisConfig, RedisConnection};
    ///
    /// # async fn demo() -> redis::RedisResult<()> {
    /// let tcp = tokio::net::TcpStream::connect("127.0.0.1:6379").await?;
    /// let cfg = RedisConfig::new().username("app").password("pw").db(5);
    /// let conn = RedisConnection::setup(tcp, &cfg).await?;
    /// assert_eq!(conn.db(), 5);
    /// # Ok(()) }
    /// ```
    pub async fn setup(stream: S, config: &RedisConfig) -> RedisResult<Self> {
        Self::open(stream, Arc::new(config.clone()), false)
            .await
            .map_err(|e| match e {
                SetupFailure::Refused(_, Some(server)) => RedisError::from(server),
                SetupFailure::Refused(text, None) => {
                    let mut words = text.splitn(2, ' ');
                    let code = words.next().unwrap_or_default().to_string();
                    redis::make_extension_error(code, words.next().map(str::to_string))
                }
                SetupFailure::Io(e) => RedisError::from(e),
                SetupFailure::Protocol(detail) => protocol(detail),
            })
    }

    /// The setup's steps, each reply awaited for the response timeout. With `answered`, a
    /// setup that has nothing to send sends `PING`: the pool reports a setup that succeeded
    /// as evidence that the server serves (to its circuit breaker), and a server that
    /// accepts connections without answering (stopped, hung, behind a proxy that lost it)
    /// must fail it instead, in a response timeout, not the connect timeout.
    pub(crate) async fn open(
        stream: S,
        config: Arc<RedisConfig>,
        answered: bool,
    ) -> Result<Self, SetupFailure> {
        let mut conn = RedisConnection {
            stream,
            buf: Vec::with_capacity(INITIAL_BUFFER),
            scan: Scanner::default(),
            parser: redis::Parser::new(),
            pending: VecDeque::new(),
            writing: false,
            in_multi: false,
            queued: Vec::new(),
            watching: false,
            db: i64::from(config.db),
            tainted: false,
            pushes: VecDeque::new(),
            broken: None,
            subscribed: false,
            config,
        };
        let mut steps = conn.config.setup_steps();
        if answered && steps.is_empty() {
            steps.push(("PING", vec![b"PING".to_vec()]));
        }
        tracing::debug!(
            resp3 = conn.config.resp3,
            auth = conn.config.password.is_some(),
            db = conn.config.db,
            steps = steps.len(),
            "redis connection setup"
        );
        if let Some((text, server)) = conn.run_steps(&steps).await? {
            return Err(SetupFailure::Refused(text, server));
        }
        Ok(conn)
    }

    /// Sends `steps` in one write and reads every reply, within the response timeout: the
    /// first refusal, scrubbed of the password, or `None` when every step succeeded. Cut
    /// short by the timeout, the connection is broken (a reply is still owed).
    async fn run_steps(
        &mut self,
        steps: &[(&'static str, Vec<Vec<u8>>)],
    ) -> Result<Option<(String, Option<redis::ServerError>)>, SetupFailure> {
        if steps.is_empty() {
            return Ok(None);
        }
        let Some(limit) = self.config.response_timeout else {
            return self.send_steps(steps).await;
        };
        let res = tokio::time::timeout(limit, self.send_steps(steps)).await;
        match res {
            Ok(res) => res,
            Err(_) => {
                let e = self.fail(no_reply(limit, "to the setup "));
                Err(SetupFailure::from_redis(e))
            }
        }
    }

    async fn send_steps(
        &mut self,
        steps: &[(&'static str, Vec<Vec<u8>>)],
    ) -> Result<Option<(String, Option<redis::ServerError>)>, SetupFailure> {
        let mut out = Vec::new();
        for (_, args) in steps {
            let mut cmd = redis::Cmd::new();
            for a in args {
                cmd.arg(a.as_slice());
            }
            cmd.write_packed_command(&mut out);
        }
        self.write(&out, steps.len(), Effect::None)
            .await
            .map_err(SetupFailure::from_redis)?;
        let mut refused = None;
        for (name, _) in steps {
            // Setup replies define the initial state: they are not followed.
            let reply = self
                .recv(true)
                .await
                .map_err(SetupFailure::from_redis)?
                .expect("asked for the value");
            if let Value::ServerError(e) = reply
                && refused.is_none()
            {
                let said = match e.details() {
                    Some(d) => format!("{} {d}", e.code()),
                    None => e.code().to_string(),
                };
                let text = self.config.scrub(said.clone());
                tracing::debug!(step = *name, error = %text, "redis setup step refused");
                // The server's own error keeps its kind (`BusyLoading`, `NoPerm`, …) unless
                // it echoed the password.
                refused = Some((text.clone(), (text == said).then_some(e)));
            }
        }
        Ok(refused)
    }

    /// `PING` → `PONG` (pushes in between are queued).
    ///
    /// # Errors
    /// An error reply, another reply, or the stream's error.
    ///
    /// # Cancel safety
    /// Dropped after `PING` was written, the call leaves its reply owed: the next call drops
    /// it, or a pool does when the connection goes back. A retry is safe (`PING` changes
    /// nothing). Dropped mid-write, the connection is out of step, as after any call
    /// ([cancel safety](Self#cancel-safety)).
    ///
    /// ```no_run
    /// # async fn demo(conn: &mut livepool_redis::RedisConnection<tokio::net::TcpStream>) {
    /// conn.ping().await.unwrap();
    /// # }
    /// ```
    pub async fn ping(&mut self) -> RedisResult<()> {
        let packed = redis::cmd("PING").get_packed_command();
        let mut replies = self
            .exchange(&packed, &[(Effect::None, Block::No)], 1)
            .await?;
        match replies.pop() {
            Some(Value::SimpleString(s)) if s == "PONG" => Ok(()),
            Some(Value::ServerError(e)) => Err(e.into()),
            other => Err(protocol(format!("unexpected reply to PING: {other:?}"))),
        }
    }

    /// Writes `out`, which carries `count` commands of one `effect` (or, when `count` is 0,
    /// commands already queued in `pending`).
    async fn write(&mut self, out: &[u8], count: usize, effect: Effect) -> RedisResult<()> {
        self.check_usable()?;
        for _ in 0..count {
            self.pending.push_back(Owed {
                effect,
                block: Block::No,
            });
        }
        self.writing = true;
        let res = async {
            self.stream.write_all(out).await?;
            self.stream.flush().await
        }
        .await;
        match res {
            Ok(()) => {
                self.writing = false;
                Ok(())
            }
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// Sends packed commands (one entry of `owed` each) and returns the last `want` replies
    /// after dropping the replies still owed by earlier, cancelled calls.
    async fn exchange(
        &mut self,
        out: &[u8],
        owed: &[(Effect, Block)],
        want: usize,
    ) -> RedisResult<Vec<Value>> {
        self.check_usable()?;
        let older = self.pending.len();
        self.pending
            .extend(owed.iter().map(|&(effect, block)| Owed { effect, block }));
        let Some(limit) = self.reply_limit() else {
            return self.send_and_read(out, older, owed.len(), want).await;
        };
        match tokio::time::timeout(limit, self.send_and_read(out, older, owed.len(), want)).await {
            Ok(res) => res,
            // Cut short like a dropped call: what is owed stays owed (drained later, off the
            // caller's path), a write cut short condemns the connection.
            Err(_) => Err(no_reply(limit, "")),
        }
    }

    /// How long the replies now owed may take: the configured response timeout plus the
    /// longest block a blocking command among them announced; `None` without a timeout or
    /// when one may block forever.
    fn reply_limit(&self) -> Option<Duration> {
        let mut limit = self.config.response_timeout?;
        let mut longest = Duration::ZERO;
        for owed in &self.pending {
            match owed.block {
                Block::No => {}
                Block::For(d) => longest = longest.max(d),
                Block::Forever => return None,
            }
        }
        limit += longest;
        Some(limit)
    }

    /// Reads and drops every reply owed, within [`reply_limit`](Self::reply_limit) of
    /// them; cut short by it, the connection is broken.
    async fn drain_owed(&mut self) -> RedisResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let owed = self.pending.len();
        let limit = self.reply_limit();
        let drain = async {
            while !self.pending.is_empty() {
                self.recv(false).await?;
            }
            Ok(())
        };
        let Some(limit) = limit else {
            return drain.await;
        };
        let res = tokio::time::timeout(limit, drain).await;
        match res {
            Ok(res) => res,
            Err(_) => {
                let what = if owed == 1 {
                    "to the call that gave up ".to_string()
                } else {
                    format!("to the {owed} calls that gave up ")
                };
                Err(self.fail(no_reply(limit, &what)))
            }
        }
    }

    async fn send_and_read(
        &mut self,
        out: &[u8],
        older: usize,
        count: usize,
        want: usize,
    ) -> RedisResult<Vec<Value>> {
        self.write(out, 0, Effect::None).await?;
        for _ in 0..older {
            self.recv(false).await?;
        }
        let skip = count - want;
        let mut values = Vec::with_capacity(want);
        for i in 0..count {
            if let Some(v) = self.recv(i >= skip).await? {
                values.push(v);
            }
        }
        Ok(values)
    }

    /// Reads the next owed reply and follows its effect; its value when `want`.
    async fn recv(&mut self, want: bool) -> RedisResult<Option<Value>> {
        let owed = *self
            .pending
            .front()
            .ok_or_else(|| usage("no reply owed", String::new()))?;
        let needed = want || owed.effect != Effect::None || self.in_multi;
        let value = self.next_reply(needed).await?;
        self.pending.pop_front();
        if let Some(v) = &value {
            self.track(owed.effect, v);
        }
        Ok(if want { value } else { None })
    }

    /// The next frame that is not a push (pushes are queued), built only when `build`.
    async fn next_reply(&mut self, build: bool) -> RedisResult<Option<Value>> {
        loop {
            let frame = self.whole_frame().await?;
            if frame.push {
                let v = self.parse(frame)?;
                self.queue_push(v);
                self.compact();
                continue;
            }
            let value = if build {
                Some(self.parse(frame)?)
            } else {
                None
            };
            self.compact();
            return Ok(value);
        }
    }

    /// The next whole frame in the buffer, reading more bytes until there is one. Cancel
    /// safe: the scanner and the buffer keep a frame that arrived in part.
    async fn whole_frame(&mut self) -> RedisResult<Frame> {
        loop {
            match self.scan.next(&self.buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => self.fill().await?,
                Err(msg) => return Err(self.fail(protocol(msg))),
            }
        }
    }

    /// Reads more bytes; end of stream is an error.
    async fn fill(&mut self) -> RedisResult<()> {
        if self.buf.len() - self.scan.start() > MAX_BUFFERED {
            return Err(self.fail(protocol(format!("reply larger than {MAX_BUFFERED} bytes"))));
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            // Doubling: a large reply costs a logarithmic number of copies.
            self.buf.reserve(self.buf.len().max(16 << 10));
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(self.fail(closed())),
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// Gives the connection over to pub/sub: from now on it is never clean (a pool closes
    /// it when it comes back), and [`write_unowed`](Self::write_unowed) and
    /// [`next_frame`](Self::next_frame) are its only use.
    pub(crate) fn enter_pubsub(&mut self) {
        self.subscribed = true;
    }

    /// Pub/sub: writes packed commands whose replies are not counted (the subscriber reads
    /// every frame itself). Cut short, the connection is out of step.
    pub(crate) async fn write_unowed(&mut self, out: &[u8]) -> RedisResult<()> {
        self.write(out, 0, Effect::None).await
    }

    /// Pub/sub: the next frame of any kind (push or not), built. Cancel safe: a frame that
    /// arrived in part stays buffered for the next call.
    pub(crate) async fn next_frame(&mut self) -> RedisResult<Value> {
        self.check_usable()?;
        let frame = self.whole_frame().await?;
        let value = self.parse(frame)?;
        self.compact();
        Ok(value)
    }

    /// Brings a returned connection back to its setup state: reads and drops the replies
    /// owed, then undoes what the last holder left (`DISCARD`, `UNWATCH`, `SELECT`, or
    /// `RESET` and the setup again) in one round trip.
    ///
    /// Each part is bounded by the response timeout (the drain also by the longest block a
    /// blocking command among the replies owed announced, as the call itself was): a
    /// server that did not answer a call in time and does not answer the drain either gets
    /// the connection closed then, not after the pool's own (heartbeat) bound.
    pub(crate) async fn settle(&mut self) -> Result<(), Unsettled> {
        let other = |why: String| Unsettled {
            why,
            unanswered: false,
        };
        if !self.can_settle() {
            return Err(other("cannot be settled".to_string()));
        }
        self.drain_owed().await.map_err(|e| Unsettled {
            why: e.to_string(),
            unanswered: e.is_timeout(),
        })?;
        if !self.scan.is_idle() || self.buf.len() != self.scan.start() {
            return Err(other("bytes beyond the replies owed".to_string()));
        }
        let setup_db = i64::from(self.config.db);
        let mut steps: Vec<(&'static str, Vec<Vec<u8>>)> = Vec::new();
        if self.tainted {
            // RESET ends MULTI, WATCH, tracking, CLIENT REPLY, the name, the user and RESP3,
            // and selects 0: the setup puts back what every caller should find.
            steps.push(("RESET", vec![b"RESET".to_vec()]));
            steps.extend(self.config.setup_steps());
        } else {
            if self.in_multi {
                steps.push(("DISCARD", vec![b"DISCARD".to_vec()]));
            }
            if self.watching {
                steps.push(("UNWATCH", vec![b"UNWATCH".to_vec()]));
            }
            if self.db != setup_db {
                steps.push((
                    "SELECT",
                    vec![b"SELECT".to_vec(), setup_db.to_string().into_bytes()],
                ));
            }
        }
        let refused = self.run_steps(&steps).await.map_err(|e| match e {
            SetupFailure::Refused(t, _) | SetupFailure::Protocol(t) => other(t),
            SetupFailure::Io(e) => Unsettled {
                unanswered: e.kind() == io::ErrorKind::TimedOut,
                why: e.to_string(),
            },
        })?;
        if let Some((text, _)) = refused {
            self.broken = Some(format!("reset refused: {text}"));
            return Err(other(text));
        }
        if self.tainted {
            // Pushes the last holder's own tracking brought (its keys) are not the next one's.
            self.pushes.clear();
        }
        self.in_multi = false;
        self.queued.clear();
        self.watching = false;
        self.db = setup_db;
        self.tainted = false;
        Ok(())
    }

    /// Handles bytes that arrived while the connection was idle: reads what is there now,
    /// and awaits the rest of a frame that arrived only in part (the caller bounds it).
    pub(crate) async fn idle_bytes(&mut self) -> IdleOutcome {
        if let Some(why) = &self.broken {
            return IdleOutcome::Unexpected(format!("connection already broken: {why}"));
        }
        if !self.pending.is_empty() {
            return IdleOutcome::Unexpected(format!(
                "not idle: {} replies owed",
                self.pending.len()
            ));
        }
        loop {
            loop {
                match self.scan.next(&self.buf) {
                    Ok(Some(f)) if f.push => match self.parse(f) {
                        Ok(v) => {
                            self.queue_push(v);
                            self.compact();
                        }
                        Err(e) => return IdleOutcome::Unexpected(e.to_string()),
                    },
                    Ok(Some(f)) => {
                        let why =
                            format!("unsolicited reply while idle ({} bytes)", f.end - f.start);
                        self.broken = Some(why.clone());
                        return IdleOutcome::Unexpected(why);
                    }
                    Ok(None) => break,
                    Err(msg) => {
                        self.broken = Some(msg.clone());
                        return IdleOutcome::Unexpected(msg);
                    }
                }
            }
            let partial = self.buf.len() > self.scan.start();
            let read = if partial {
                self.fill().await
            } else {
                match self.fill().now_or_never() {
                    Some(r) => r,
                    None => return IdleOutcome::Benign,
                }
            };
            if let Err(e) = read {
                return match io_kind(&e) {
                    Some(
                        io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe,
                    ) => IdleOutcome::Closed,
                    _ => IdleOutcome::Unexpected(e.to_string()),
                };
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> redis::aio::ConnectionLike for RedisConnection<S> {
    /// Writes one packed command and reads its reply, after dropping the replies earlier
    /// calls still owe.
    ///
    /// # Cancel safety
    /// Once written, a dropped call's command still runs at the server. Its reply stays owed:
    /// the next call or the pool drops it (see
    /// [`RedisConnection`'s cancel safety](RedisConnection#cancel-safety)).
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let owed = classify(cmd)?;
            let mut out = Vec::new();
            cmd.write_packed_command(&mut out);
            let mut values = self.exchange(&out, &[owed], 1).await?;
            let value = values.pop().unwrap_or(Value::Nil);
            // A command sent without waiting for its reply still got one: it was read.
            Ok(if cmd.is_no_response() {
                Value::Nil
            } else {
                value
            })
        })
    }

    /// Writes a packed pipeline and reads its replies, after dropping the replies earlier
    /// calls still owe.
    ///
    /// # Cancel safety
    /// Once written, a dropped call's commands still run at the server. Their replies stay
    /// owed: the next call or the pool drops them (see
    /// [`RedisConnection`'s cancel safety](RedisConnection#cancel-safety)).
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut owed = Vec::with_capacity(pipeline.len() + 2);
            if pipeline.is_transaction() {
                owed.push((Effect::Multi, Block::No));
            }
            for cmd in pipeline.cmd_iter() {
                let (effect, block) = classify(cmd)?;
                // Queued inside MULTI, a blocking command does not block.
                let block = if pipeline.is_transaction() {
                    Block::No
                } else {
                    block
                };
                owed.push((effect, block));
            }
            if pipeline.is_transaction() {
                owed.push((Effect::Exec, Block::No));
            }
            if offset + count > owed.len() {
                return Err(usage(
                    "pipeline range out of bounds",
                    format!("{offset}+{count} of {}", owed.len()),
                ));
            }
            let out = pipeline.get_packed_pipeline();
            let mut values = self.exchange(&out, &owed, owed.len() - offset).await?;
            values.truncate(count);
            Ok(values)
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(c: &Cmd) -> Effect {
        classify(c).unwrap().0
    }

    fn block(c: &Cmd) -> Block {
        classify(c).unwrap().1
    }

    #[test]
    fn effects_of_commands() {
        assert_eq!(effect(redis::cmd("select").arg(3)), Effect::Select(3));
        assert_eq!(effect(redis::cmd("SELECT").arg("x")), Effect::None);
        assert_eq!(effect(&redis::cmd("Multi")), Effect::Multi);
        assert_eq!(effect(redis::cmd("watch").arg("k")), Effect::Watch);
        assert_eq!(effect(redis::cmd("hello").arg(3)), Effect::Taints);
        assert_eq!(
            effect(redis::cmd("client").arg("tracking").arg("on")),
            Effect::Taints
        );
        assert_eq!(effect(redis::cmd("CLIENT").arg("ID")), Effect::None);
        assert_eq!(effect(redis::cmd("GET").arg("k")), Effect::None);
        for refused in [
            redis::cmd("subscribe").arg("c").clone(),
            redis::cmd("MONITOR").clone(),
            redis::cmd("CLIENT").arg("reply").arg("off").clone(),
            redis::Cmd::new(),
        ] {
            let e = classify(&refused).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Client, "{e}");
        }
    }

    #[test]
    fn blocking_timeouts() {
        assert_eq!(
            block(redis::cmd("BLPOP").arg("a").arg("b").arg(1.5)),
            Block::For(Duration::from_millis(1500))
        );
        assert_eq!(block(redis::cmd("BRPOP").arg("a").arg(0)), Block::Forever);
        assert_eq!(
            block(redis::cmd("BLMPOP").arg(2).arg(1).arg("k").arg("LEFT")),
            Block::For(Duration::from_secs(2))
        );
        assert_eq!(
            block(
                redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(250)
                    .arg("STREAMS")
                    .arg("s")
                    .arg("$")
            ),
            Block::For(Duration::from_millis(250))
        );
        assert_eq!(
            block(redis::cmd("XREAD").arg("STREAMS").arg("s").arg("0")),
            Block::No
        );
        assert_eq!(
            block(redis::cmd("WAIT").arg(1).arg(100)),
            Block::For(Duration::from_millis(100))
        );
        assert_eq!(
            block(redis::cmd("BLPOP").arg("a").arg("soon")),
            Block::Forever
        );
        assert_eq!(block(redis::cmd("GET").arg("k")), Block::No);
    }

    /// A scripted server on an in-memory pipe: state followed through MULTI/EXEC, WATCH,
    /// SELECT, a cancelled call's reply dropped, pushes queued.
    #[tokio::test]
    async fn state_and_owed_replies_over_a_pipe() {
        use redis::AsyncCommands;
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            // setup: SELECT 2 → OK
            for reply in [
                &b"+OK\r\n"[..],
                // MULTI, SELECT 4, EXEC (atomic pipeline) with a push in between
                b"+OK\r\n+QUEUED\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n*1\r\n+OK\r\n",
                // WATCH k
                b"+OK\r\n",
            ] {
                let _ = server.read(&mut sink).await.unwrap();
                server.write_all(reply).await.unwrap();
            }
            server
        });
        let cfg = RedisConfig::new().db(2);
        let mut c = RedisConnection::setup(client, &cfg).await.unwrap();
        assert_eq!(c.db(), 2);
        assert!(c.is_clean());
        let _: () = redis::pipe()
            .atomic()
            .cmd("SELECT")
            .arg(4)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(c.db(), 4);
        assert!(!c.is_clean());
        assert_eq!(c.take_pushes().len(), 1);
        let _: () = redis::cmd("WATCH")
            .arg("k")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(c.watching);
        let mut server = srv.await.unwrap();
        // A GET whose call is dropped before its reply: the next call drops that reply.
        {
            let get = c.get::<_, Option<String>>("k");
            assert!(get.now_or_never().is_none(), "no reply yet");
        }
        assert_eq!(c.owed(), 1);
        server.write_all(b"$5\r\nstale\r\n:7\r\n").await.unwrap();
        let n: i64 = c.incr("n", 1).await.unwrap();
        assert_eq!(n, 7, "the stale reply was dropped, not returned");
        assert_eq!(c.owed(), 0);
    }

    /// A pool's setup with nothing to set up still waits for one reply (`PING`), within
    /// the response timeout: a server that accepts but does not answer fails it.
    #[tokio::test]
    async fn a_pooled_setup_with_nothing_to_send_pings_within_the_response_timeout() {
        let cfg = Arc::new(RedisConfig::new().response_timeout(Some(Duration::from_millis(50))));
        let (client, mut server) = tokio::io::duplex(1024);
        let srv = tokio::spawn(async move {
            let mut got = vec![0u8; 14];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"+PONG\r\n").await.unwrap();
            (got, server)
        });
        let c = RedisConnection::open(client, cfg.clone(), true)
            .await
            .unwrap();
        assert!(c.is_clean());
        let (got, _server) = srv.await.unwrap();
        assert_eq!(got, b"*1\r\n$4\r\nPING\r\n");

        // Nobody answers: a timeout, as an I/O error of kind TimedOut.
        let (client, _server) = tokio::io::duplex(1024);
        match RedisConnection::open(client, cfg.clone(), true).await {
            Err(SetupFailure::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                assert!(e.to_string().contains("no reply to the setup"), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }

        // Standalone, nothing to set up sends nothing.
        let (client, _server) = tokio::io::duplex(1024);
        let c = RedisConnection::open(client, cfg, false).await.unwrap();
        assert!(c.is_clean());
    }

    /// Settling a connection whose owed reply never comes gives up at the response timeout
    /// and leaves the connection broken (never handed out).
    #[tokio::test]
    async fn an_unanswered_drain_gives_up_at_the_response_timeout() {
        let cfg = RedisConfig::new().response_timeout(Some(Duration::from_millis(50)));
        let (client, _server) = tokio::io::duplex(1024);
        let mut c = RedisConnection::setup(client, &cfg).await.unwrap();
        let e = c.ping().await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(c.owed(), 1);
        assert!(c.can_settle());
        let e = c.settle().await.unwrap_err();
        assert!(e.unanswered, "{}", e.why);
        assert!(
            e.why.contains("no reply to the call that gave up"),
            "{}",
            e.why
        );
        assert!(!c.can_settle() && !c.is_clean());
    }

    #[tokio::test]
    async fn garbage_and_eof_are_errors_and_break_the_connection() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = RedisConnection::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        server
            .write_all(b"HTTP/1.1 400 Bad Request\r\n")
            .await
            .unwrap();
        let e = c.ping().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Parse, "{e}");
        assert!(!c.is_clean() && !c.can_settle());
        assert!(c.ping().await.is_err(), "broken stays broken");

        let (client, server) = tokio::io::duplex(1024);
        let mut c = RedisConnection::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        drop(server);
        assert_eq!(c.idle_bytes().await, IdleOutcome::Closed);

        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = RedisConnection::setup(client, &RedisConfig::new())
            .await
            .unwrap();
        server.write_all(b"$1073741824\r\n").await.unwrap();
        let e = c.ping().await.unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
