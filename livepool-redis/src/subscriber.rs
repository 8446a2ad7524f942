//! [`Subscriber`]: pub/sub (`SUBSCRIBE`/`PSUBSCRIBE`) on a connection of its own, subscribed
//! again by itself after a reconnect.
//!
//! The subscriber checks one connection out of a pool given to it and holds it, given over to
//! pub/sub: the pool closes it when it comes back instead of handing it to someone else. It
//! alone reads that connection: messages, the server's confirmations and its own pings' pongs
//! (RESP2 and RESP3 alike). When the connection ends — the server restarted, the client was
//! killed (`CLIENT KILL`), a ping went unanswered — the subscriber takes a new one from the
//! pool (whose breaker paces the attempts while the server is down), subscribes to every
//! channel and pattern again, and reports the gap: messages published meanwhile are lost
//! (Redis pub/sub keeps nothing for a client that is not connected), and a consumer that cares
//! re-reads its state.
//!
//! A checked-out connection gets no heartbeat from the pool, so the subscriber pings it itself
//! (every `ping_interval`; `PING` is allowed in subscribed mode): a blackholed server is
//! noticed within the interval plus the ping timeout, not after the kernel's keepalive.
//!
//! Every command the subscriber sends owes one reply (a confirmation per channel or pattern,
//! a pong per ping), read in order: a reply that is not the one owed, or a frame that is
//! neither a message nor a reply, means the connection is out of step, and it is replaced.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::Duration;

use futures_util::Stream;
use redis::{ErrorKind, Msg, PushKind, RedisError, RedisResult, Value};
use tokio::time::Instant;

use crate::{Conn, Pool};

/// How many messages wait for [`Subscriber::recv`] before the next ones are dropped.
const QUEUE: usize = 1024;

/// What [`Subscriber::recv`] returns.
///
/// ```no_run
/// use livepool_redis::SubscriberMessage;
/// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
/// match s.recv().await? {
///     SubscriberMessage::Message(m) => println!("{}: {:?}", m.get_channel_name(), m.get_payload_bytes()),
///     SubscriberMessage::Reconnected { gap } => println!("lost {gap:?} of messages"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscriberMessage {
    /// A message on one of the channels subscribed to, or on a channel matching one of the
    /// patterns (then [`Msg::from_pattern`] is true and [`Msg::get_pattern`] says which).
    Message(Msg),
    /// The connection was lost and is back, every channel and pattern subscribed to again;
    /// messages published in the `gap` were lost.
    Reconnected {
        /// From the moment the loss was noticed to the moment the server confirmed the last
        /// channel or pattern subscribed to again.
        gap: Duration,
    },
}

/// Why a subscriber call failed.
///
/// ```no_run
/// use livepool_redis::SubscriberError;
/// # async fn f(mut s: livepool_redis::Subscriber) {
/// match s.subscribe("jobs").await {
///     Ok(()) => {}
///     Err(SubscriberError::Connect(e)) => eprintln!("no connection, retry in {:?}", e.retry_after()),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscriberError {
    /// No connection could be had from the pool (the server is down: the pool's error says
    /// why and, with the breaker open, when to try again).
    Connect(livepool::Error),
    /// The server refused a subscription, or the connection was lost while the call waited
    /// for the server's confirmation.
    Redis(RedisError),
}

impl fmt::Display for SubscriberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriberError::Connect(e) => write!(f, "subscriber cannot connect: {e}"),
            SubscriberError::Redis(e) => write!(f, "subscriber command failed: {e}"),
        }
    }
}

impl std::error::Error for SubscriberError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubscriberError::Connect(e) => Some(e),
            SubscriberError::Redis(e) => Some(e),
        }
    }
}

/// A command the subscriber sends; each owes one reply of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Subscribe,
    PSubscribe,
    Unsubscribe,
    PUnsubscribe,
    Ping,
}

impl Ask {
    fn command(self) -> &'static str {
        match self {
            Ask::Subscribe => "SUBSCRIBE",
            Ask::PSubscribe => "PSUBSCRIBE",
            Ask::Unsubscribe => "UNSUBSCRIBE",
            Ask::PUnsubscribe => "PUNSUBSCRIBE",
            Ask::Ping => "PING",
        }
    }

    /// The kind a RESP2 reply array names first.
    fn from_name(name: &[u8]) -> Option<Ask> {
        [
            Ask::Subscribe,
            Ask::PSubscribe,
            Ask::Unsubscribe,
            Ask::PUnsubscribe,
        ]
        .into_iter()
        .find(|a| a.command().as_bytes().eq_ignore_ascii_case(name))
    }
}

/// One reply owed.
#[derive(Debug)]
struct Owed {
    ticket: u64,
    ask: Ask,
    /// The channel or pattern (empty for a ping).
    name: Vec<u8>,
}

/// What a frame read from the connection is.
#[derive(Debug)]
enum Frame {
    Message(Msg),
    /// A confirmation (with the channel or pattern it names) or a pong.
    Reply(Ask, Option<Vec<u8>>),
    /// An error reply: the command owed it refused.
    Refused(redis::ServerError),
    /// A push of another kind (client-side caching, a later version's): not for us.
    Ignored,
    Unexpected(String),
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A frame's value, shortened for an error message.
fn describe(v: &Value) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn message(v: Value) -> Frame {
    let shown = describe(&v);
    match Msg::from_owned_value(v) {
        Some(m) => Frame::Message(m),
        None => Frame::Unexpected(format!("a message without channel or payload: {shown}")),
    }
}

/// Sorts a frame: RESP2 arrays (`message`, `pmessage`, `subscribe`, …, `pong`) and RESP3
/// pushes alike; a pong outside subscribed mode (or in RESP3) is `+PONG`.
fn classify(v: Value) -> Frame {
    let v = match v {
        Value::ServerError(e) => return Frame::Refused(e),
        v => v,
    };
    let (ask, name) = match &v {
        Value::Push { kind, data } => {
            let ask = match kind {
                PushKind::Message | PushKind::PMessage => return message(v),
                PushKind::Subscribe => Ask::Subscribe,
                PushKind::PSubscribe => Ask::PSubscribe,
                PushKind::Unsubscribe => Ask::Unsubscribe,
                PushKind::PUnsubscribe => Ask::PUnsubscribe,
                _ => return Frame::Ignored,
            };
            (ask, data.first())
        }
        Value::Array(items) => {
            let Some(kind) = items.first().and_then(bulk) else {
                return Frame::Unexpected(describe(&v));
            };
            if kind.eq_ignore_ascii_case(b"message") || kind.eq_ignore_ascii_case(b"pmessage") {
                return message(v);
            }
            if kind.eq_ignore_ascii_case(b"pong") {
                return Frame::Reply(Ask::Ping, None);
            }
            match Ask::from_name(kind) {
                Some(ask) => (ask, items.get(1)),
                None => return Frame::Unexpected(describe(&v)),
            }
        }
        Value::SimpleString(s) if s.eq_ignore_ascii_case("PONG") => {
            return Frame::Reply(Ask::Ping, None);
        }
        _ => return Frame::Unexpected(describe(&v)),
    };
    Frame::Reply(ask, name.and_then(bulk).map(<[u8]>::to_vec))
}

fn out_of_step(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "subscriber connection out of step",
        detail,
    ))
}

fn no_connection() -> RedisError {
    RedisError::from(io::Error::new(
        io::ErrorKind::NotConnected,
        "the subscriber's connection was lost",
    ))
}

/// The connection held, and what is owed on it.
struct Link {
    conn: Conn,
    /// The replies owed, oldest first.
    owed: VecDeque<Owed>,
    /// While a reply is owed: the server must send something by then.
    reply_by: Option<Instant>,
    next_ping: Instant,
}

/// Pub/sub (`SUBSCRIBE`/`PSUBSCRIBE`) on a connection of its own, subscribed again by itself
/// after a reconnect (sqlx's `PgListener` is the model).
///
/// It checks one connection out of the pool given to it and holds it, given over to pub/sub:
/// when it goes back, the pool closes it rather than hand it to another caller, and the
/// pool's other members never see a message. Messages come from [`Subscriber::recv`] or, as
/// a [`Stream`], from [`Subscriber::into_stream`]; those that arrive while
/// [`subscribe`](Subscriber::subscribe) and its kin wait for the server's confirmation wait
/// for `recv` (at most 1,024; later ones are dropped until `recv` catches up). A subscriber
/// that falls far behind is disconnected by the server (`client-output-buffer-limit pubsub`)
/// and reconnects.
///
/// When the connection ends — a restart, `CLIENT KILL`, a ping unanswered — the next `recv`
/// takes a new one from the pool (whose breaker paces the attempts while the server is
/// down), subscribes to every channel and pattern again and returns
/// [`SubscriberMessage::Reconnected`] with the gap: Redis keeps no messages for a client that
/// is gone, so messages published in the gap are lost, and a consumer that cares re-reads
/// its state then. The subscriber pings its connection itself every `ping` interval: the pool
/// does not heartbeat a connection that is checked out. RESP2 and RESP3
/// ([`RedisConfig::resp3`](crate::RedisConfig::resp3)) both work.
///
/// ```no_run
/// use livepool_redis::{Redis, RedisConfig, Subscriber, SubscriberMessage};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// // A pool of its own: the subscriber holds one of its connections.
/// let pool = livepool::Pool::builder("127.0.0.1:6379")
///     .protocol(Redis::new(RedisConfig::new()))
///     .max_size(1)
///     .build()?;
/// let mut subscriber = Subscriber::new(pool);
/// subscriber.subscribe("jobs").await?;
/// subscriber.psubscribe("events.*").await?;
/// loop {
///     match subscriber.recv().await {
///         Ok(SubscriberMessage::Message(m)) => {
///             let payload: String = m.get_payload()?;
///             println!("{}: {payload}", m.get_channel_name());
///         }
///         Ok(SubscriberMessage::Reconnected { gap }) => println!("lost {gap:?} of messages"),
///         Ok(_) => {}
///         Err(e) => eprintln!("{e}; trying again"),
///     }
/// }
/// # }
/// ```
pub struct Subscriber {
    pool: Pool,
    link: Option<Link>,
    channels: Vec<String>,
    patterns: Vec<String>,
    /// What `recv` returns next, oldest first.
    queue: VecDeque<SubscriberMessage>,
    /// Messages that arrived on a new connection before the server confirmed every channel
    /// and pattern again: they follow the `Reconnected` that ends the gap.
    held: Vec<Msg>,
    /// The ticket of the last subscription sent again on the connection held, until its
    /// confirmation arrives.
    resubscribing: Option<u64>,
    /// When the last connection was found gone (reported with the next reconnect).
    lost_at: Option<Instant>,
    /// When the pool's breaker lets a connect through again (said by the last connect error).
    retry_at: Option<Instant>,
    /// Commands sent so far: each owes one reply, numbered by its ticket.
    tickets: u64,
    /// The ticket of the last reply read.
    answered: u64,
    /// Refusals no call has reported yet (the call was cancelled, or it was a subscription
    /// sent again after a reconnect), with their tickets.
    refused: Vec<(u64, RedisError)>,
    /// Messages dropped because the queue was full.
    dropped: u64,
    ping_interval: Duration,
    ping_timeout: Duration,
}

impl Subscriber {
    /// A subscriber on connections from `pool` (give it a pool of its own, or count one
    /// connection out of `max_size`: it holds one for as long as it lives). It connects on
    /// the first call that needs it.
    ///
    /// ```no_run
    /// # fn f(pool: livepool_redis::Pool) {
    /// let subscriber = livepool_redis::Subscriber::new(pool);
    /// # let _ = subscriber;
    /// # }
    /// ```
    pub fn new(pool: Pool) -> Self {
        Subscriber {
            pool,
            link: None,
            channels: Vec::new(),
            patterns: Vec::new(),
            queue: VecDeque::new(),
            held: Vec::new(),
            resubscribing: None,
            lost_at: None,
            retry_at: None,
            tickets: 0,
            answered: 0,
            refused: Vec::new(),
            dropped: 0,
            // The pool's default heartbeat interval and timeout.
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(5),
        }
    }

    /// How often the subscriber pings its connection, and how long it waits for an answer
    /// (to a ping, or to a `SUBSCRIBE` and its kin) before taking the connection for lost.
    /// Both must be above zero.
    ///
    /// Default: every 30 s, 5 s timeout.
    ///
    /// ```no_run
    /// # fn f(pool: livepool_redis::Pool) {
    /// use std::time::Duration;
    /// let subscriber = livepool_redis::Subscriber::new(pool)
    ///     .ping(Duration::from_secs(10), Duration::from_secs(2));
    /// # let _ = subscriber;
    /// # }
    /// ```
    pub fn ping(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self.ping_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Subscribes to `channel` (now, and again after every reconnect), once the server
    /// confirmed it.
    ///
    /// # Errors
    /// [`SubscriberError::Connect`] if no connection could be had (the channel is not
    /// subscribed to); [`SubscriberError::Redis`] if the server refused (the channel is not
    /// subscribed to) or the connection was lost before the confirmation (the channel is
    /// kept: the next [`recv`](Self::recv) reconnects and subscribes to it with the others).
    ///
    /// # Cancel safety
    /// Dropped while it connects, the call records nothing. After that the channel is kept,
    /// even if the call is dropped. Once `SUBSCRIBE` is written, the server subscribes and
    /// the next call reads the confirmation; a refusal comes from the next
    /// [`recv`](Self::recv) (test `a_cancelled_subscribe_is_finished_by_recv`). Dropped
    /// mid-write, the connection is replaced; calling again is always safe.
    ///
    /// ```no_run
    /// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
    /// s.subscribe("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), SubscriberError> {
        self.add(Ask::Subscribe, channel).await
    }

    /// Subscribes to every channel matching `pattern` (glob-style: `events.*`), now and again
    /// after every reconnect, once the server confirmed it.
    ///
    /// # Errors
    /// As [`subscribe`](Self::subscribe).
    ///
    /// # Cancel safety
    /// As [`subscribe`](Self::subscribe), for the pattern.
    ///
    /// ```no_run
    /// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
    /// s.psubscribe("events.*").await?;
    /// # Ok(()) }
    /// ```
    pub async fn psubscribe(&mut self, pattern: &str) -> Result<(), SubscriberError> {
        self.add(Ask::PSubscribe, pattern).await
    }

    /// Unsubscribes from `channel`, once the server confirmed it. From the moment of the call,
    /// [`recv`](Self::recv) returns no message on it (not even one that arrived before).
    ///
    /// # Errors
    /// [`SubscriberError::Redis`] if the server refused `UNSUBSCRIBE` (the channel is
    /// forgotten anyway: it is not subscribed to again after a reconnect). A connection lost
    /// on the way is no error: the next one is not subscribed to the channel.
    ///
    /// # Cancel safety
    /// The first poll forgets the channel: [`recv`](Self::recv) returns no message on it from
    /// then on, and a reconnect does not subscribe to it. Dropped after `UNSUBSCRIBE` is
    /// written, the server still runs it and the next call reads the confirmation. Dropped
    /// mid-write, the connection is replaced, and the new one is not subscribed to the
    /// channel.
    ///
    /// ```no_run
    /// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
    /// s.unsubscribe("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), SubscriberError> {
        self.remove(Ask::Unsubscribe, channel).await
    }

    /// Unsubscribes from `pattern` (as given to [`psubscribe`](Self::psubscribe)), once the
    /// server confirmed it. From the moment of the call, [`recv`](Self::recv) returns no
    /// message matched by it.
    ///
    /// # Errors
    /// As [`unsubscribe`](Self::unsubscribe).
    ///
    /// # Cancel safety
    /// As [`unsubscribe`](Self::unsubscribe), for the pattern.
    ///
    /// ```no_run
    /// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
    /// s.punsubscribe("events.*").await?;
    /// # Ok(()) }
    /// ```
    pub async fn punsubscribe(&mut self, pattern: &str) -> Result<(), SubscriberError> {
        self.remove(Ask::PUnsubscribe, pattern).await
    }

    /// The channels subscribed to.
    ///
    /// ```no_run
    /// # fn f(s: livepool_redis::Subscriber) {
    /// println!("{:?}", s.channels());
    /// # }
    /// ```
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The patterns subscribed to.
    ///
    /// ```no_run
    /// # fn f(s: livepool_redis::Subscriber) {
    /// println!("{:?}", s.patterns());
    /// # }
    /// ```
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The next message; after a lost connection, first a
    /// [`SubscriberMessage::Reconnected`] once a new one is subscribed to everything again.
    /// Pings the connection when it is due.
    ///
    /// # Errors
    /// [`SubscriberError::Connect`] while no connection can be had (call again: the next call
    /// waits until the pool's breaker lets a connect through,
    /// [`livepool::Error::retry_after`]); [`SubscriberError::Redis`] if the server refused a
    /// subscription sent again after a reconnect, or one whose call was cancelled (it is
    /// dropped from [`channels`](Self::channels) or [`patterns`](Self::patterns)), or if the
    /// new connection was lost before it was subscribed again (call again).
    ///
    /// # Cancel safety
    /// Cancel safe: a message leaves the queue only when `recv` returns it, and a frame that
    /// arrived in part stays buffered for the next call (test
    /// `recv_cancelled_midway_loses_nothing`). A reconnect the dropped call began is resumed
    /// by the next call, or started over if no connection was had yet; the gap is reported
    /// once, counted from the loss. A ping dropped mid-write costs a reconnect.
    ///
    /// ```no_run
    /// # async fn f(mut s: livepool_redis::Subscriber) {
    /// if let Ok(livepool_redis::SubscriberMessage::Message(m)) = s.recv().await {
    ///     println!("{:?}", m.get_payload_bytes());
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<SubscriberMessage, SubscriberError> {
        loop {
            if !self.refused.is_empty() {
                let (_, e) = self.refused.remove(0);
                return Err(SubscriberError::Redis(e));
            }
            while let Some(m) = self.queue.pop_front() {
                if self.wants(&m) {
                    return Ok(m);
                }
            }
            if self.link.is_none() {
                self.connect().await?;
                continue;
            }
            // A lost connection is replaced on the next turn.
            let _ = self.step().await;
        }
    }

    /// The messages as a [`Stream`] of [`recv`](Self::recv)'s results: it never ends, and an
    /// error is an item (the next one tries again). The subscriber is given up: subscribe to
    /// everything before.
    ///
    /// # Cancel safety
    /// Cancel safe: the stream keeps its `recv` in flight when a `next()` is dropped, and the
    /// next `next()` goes on with it, so no message is lost. Dropping the stream drops the
    /// subscriber: its connection goes back to the pool, which closes it.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn f(mut s: livepool_redis::Subscriber) -> Result<(), livepool_redis::SubscriberError> {
    /// s.subscribe("jobs").await?;
    /// let mut messages = s.into_stream();
    /// while let Some(item) = messages.next().await {
    ///     if let Ok(livepool_redis::SubscriberMessage::Message(m)) = item {
    ///         println!("{:?}", m.get_payload_bytes());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<SubscriberMessage, SubscriberError>> + Send + Unpin + 'static
    {
        Box::pin(futures_util::stream::unfold(self, |mut s| async move {
            let item = s.recv().await;
            Some((item, s))
        }))
    }

    /// Whether `recv` may return `m`: a message on a channel or pattern still subscribed to.
    fn wants(&self, m: &SubscriberMessage) -> bool {
        match m {
            SubscriberMessage::Message(msg) => self.wants_msg(msg),
            _ => true,
        }
    }

    fn wants_msg(&self, msg: &Msg) -> bool {
        if msg.from_pattern() {
            msg.get_pattern::<Vec<u8>>()
                .is_ok_and(|p| self.patterns.iter().any(|x| x.as_bytes() == p))
        } else {
            msg.get_channel::<Vec<u8>>()
                .is_ok_and(|c| self.channels.iter().any(|x| x.as_bytes() == c))
        }
    }

    async fn add(&mut self, ask: Ask, name: &str) -> Result<(), SubscriberError> {
        if self.link.is_none() {
            self.connect().await?;
        }
        let list = match ask {
            Ask::Subscribe => &mut self.channels,
            _ => &mut self.patterns,
        };
        if !list.iter().any(|c| c == name) {
            list.push(name.to_owned());
        }
        // Sent even when already subscribed to: the confirmation says the server has it.
        let (first, last) = self
            .send(&[(ask, name)])
            .await
            .map_err(SubscriberError::Redis)?;
        self.wait_for(first, last)
            .await
            .map_err(SubscriberError::Redis)
    }

    async fn remove(&mut self, ask: Ask, name: &str) -> Result<(), SubscriberError> {
        match ask {
            Ask::Unsubscribe => self.channels.retain(|c| c != name),
            _ => self.patterns.retain(|c| c != name),
        }
        if self.link.is_none() {
            return Ok(());
        }
        let res = match self.send(&[(ask, name)]).await {
            Ok((first, last)) => self.wait_for(first, last).await,
            Err(e) => Err(e),
        };
        match res {
            Err(e) if self.link.is_some() => Err(SubscriberError::Redis(e)),
            // Lost on the way: the next connection is not subscribed to it.
            _ => Ok(()),
        }
    }

    /// Takes a connection from the pool, gives it over to pub/sub, and sends `SUBSCRIBE` and
    /// `PSUBSCRIBE` for everything subscribed to (their confirmations end the gap).
    async fn connect(&mut self) -> Result<(), SubscriberError> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let mut conn = match self.pool.get().await {
            Ok(conn) => conn,
            Err(e) => {
                self.retry_at = e.retry_after().map(|d| Instant::now() + d);
                return Err(SubscriberError::Connect(e));
            }
        };
        conn.enter_pubsub();
        self.link = Some(Link {
            conn,
            owed: VecDeque::new(),
            reply_by: None,
            next_ping: Instant::now() + self.ping_interval,
        });
        // One command per channel: a refusal answers for exactly one of them.
        let names: Vec<(Ask, String)> = self
            .channels
            .iter()
            .map(|c| (Ask::Subscribe, c.clone()))
            .chain(self.patterns.iter().map(|p| (Ask::PSubscribe, p.clone())))
            .collect();
        if names.is_empty() {
            self.resubscribed();
            return Ok(());
        }
        let asks: Vec<(Ask, &str)> = names.iter().map(|(a, n)| (*a, n.as_str())).collect();
        let (_, last) = self.send(&asks).await.map_err(SubscriberError::Redis)?;
        self.resubscribing = Some(last);
        Ok(())
    }

    /// Every channel and pattern is subscribed to again: the gap, if there was one, ends.
    fn resubscribed(&mut self) {
        if let Some(lost) = self.lost_at.take() {
            let gap = lost.elapsed();
            tracing::debug!(
                gap_ms = gap.as_millis() as u64,
                channels = self.channels.len(),
                patterns = self.patterns.len(),
                "subscriber subscribed again after a reconnect"
            );
            self.queue.push_back(SubscriberMessage::Reconnected { gap });
        }
        self.queue
            .extend(self.held.drain(..).map(SubscriberMessage::Message));
    }

    /// Gives up the connection held (closed, not returned).
    fn lose(&mut self, why: &RedisError) {
        if let Some(mut link) = self.link.take() {
            tracing::debug!(
                error = %why,
                channels = self.channels.len(),
                patterns = self.patterns.len(),
                "subscriber lost its connection"
            );
            link.conn.mark_broken();
            self.lost_at.get_or_insert_with(Instant::now);
            self.resubscribing = None;
            // Messages of the new connection, received before it was lost: real ones.
            self.queue
                .extend(self.held.drain(..).map(SubscriberMessage::Message));
        }
    }

    /// Sends `asks` in one write; each owes one reply. The first and last ticket.
    async fn send(&mut self, asks: &[(Ask, &str)]) -> RedisResult<(u64, u64)> {
        let Some(link) = self.link.as_mut() else {
            return Err(no_connection());
        };
        let first = self.tickets + 1;
        let mut out = Vec::new();
        for &(ask, name) in asks {
            let mut cmd = redis::cmd(ask.command());
            if ask != Ask::Ping {
                cmd.arg(name);
            }
            cmd.write_packed_command(&mut out);
            self.tickets += 1;
            link.owed.push_back(Owed {
                ticket: self.tickets,
                ask,
                name: name.as_bytes().to_vec(),
            });
        }
        let timeout = self.ping_timeout;
        link.reply_by
            .get_or_insert_with(|| Instant::now() + timeout);
        let res = link.conn.write_unowed(&out).await;
        if let Err(e) = &res {
            self.lose(e);
        }
        res.map(|()| (first, self.tickets))
    }

    /// Reads replies until tickets `first..=last` are answered; the first refusal among them.
    async fn wait_for(&mut self, first: u64, last: u64) -> RedisResult<()> {
        while self.answered < last {
            self.step().await?;
        }
        let mut result = Ok(());
        let mut i = 0;
        while i < self.refused.len() {
            if (first..=last).contains(&self.refused[i].0) {
                let (_, e) = self.refused.remove(i);
                if result.is_ok() {
                    result = Err(e);
                }
            } else {
                i += 1;
            }
        }
        result
    }

    /// Reads one frame and handles it, or sends the ping that is due, or finds the reply
    /// owed overdue. A failure gives up the connection (the next call reconnects).
    async fn step(&mut self) -> RedisResult<()> {
        let res = self.read_or_ping().await;
        if let Err(e) = &res {
            self.lose(e);
        }
        res
    }

    async fn read_or_ping(&mut self) -> RedisResult<()> {
        let Some(link) = self.link.as_mut() else {
            return Err(no_connection());
        };
        let overdue = link.reply_by.is_some();
        let wake = link.reply_by.unwrap_or(link.next_ping);
        // Frames first: while the server sends, it is there.
        let frame = tokio::select! {
            biased;
            frame = link.conn.next_frame() => Some(frame),
            () = tokio::time::sleep_until(wake) => None,
        };
        match frame {
            Some(frame) => self.handle(frame?),
            None if overdue => Err(RedisError::from(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no reply from the server within {:?} (ping timeout)",
                    self.ping_timeout
                ),
            ))),
            None => self.send(&[(Ask::Ping, "")]).await.map(drop),
        }
    }

    /// Handles one frame: a message is queued, a reply answers the oldest command owed.
    fn handle(&mut self, v: Value) -> RedisResult<()> {
        let now = Instant::now();
        let (interval, timeout) = (self.ping_interval, self.ping_timeout);
        let Some(link) = self.link.as_mut() else {
            return Err(no_connection());
        };
        // The server is there: a reply queued behind messages gets its time again.
        if link.reply_by.is_some() {
            link.reply_by = Some(now + timeout);
        }
        let reply = match classify(v) {
            Frame::Message(m) => {
                self.deliver(m);
                return Ok(());
            }
            Frame::Ignored => return Ok(()),
            Frame::Unexpected(what) => return Err(out_of_step(format!("unexpected {what}"))),
            Frame::Reply(ask, name) => Ok((ask, name)),
            Frame::Refused(e) => Err(e),
        };
        let Some(owed) = link.owed.pop_front() else {
            return Err(out_of_step(format!("a reply nobody asked for: {reply:?}")));
        };
        if let Ok((ask, name)) = &reply
            && (*ask != owed.ask || (*ask != Ask::Ping && name.as_deref() != Some(&owed.name)))
        {
            return Err(out_of_step(format!(
                "{} {:?} confirmed while {} {:?} was owed",
                ask.command(),
                name.as_deref().map(String::from_utf8_lossy),
                owed.ask.command(),
                String::from_utf8_lossy(&owed.name),
            )));
        }
        link.reply_by = (!link.owed.is_empty()).then_some(now + timeout);
        link.next_ping = now + interval;
        self.answered = owed.ticket;
        if let Err(e) = reply {
            let name = String::from_utf8_lossy(&owed.name).into_owned();
            tracing::debug!(command = owed.ask.command(), name = %name, error = %e, "subscriber command refused");
            match owed.ask {
                Ask::Subscribe => self.channels.retain(|c| *c != name),
                Ask::PSubscribe => self.patterns.retain(|p| *p != name),
                _ => {}
            }
            self.refused.push((owed.ticket, RedisError::from(e)));
        }
        if self.resubscribing == Some(owed.ticket) {
            self.resubscribing = None;
            self.resubscribed();
        }
        Ok(())
    }

    /// Queues a message for `recv` (after the `Reconnected` while subscribing again).
    fn deliver(&mut self, m: Msg) {
        if !self.wants_msg(&m) {
            return;
        }
        if self.queue.len() + self.held.len() >= QUEUE {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "subscriber queue full: messages dropped until recv catches up"
                );
            }
            return;
        }
        if self.resubscribing.is_some() {
            self.held.push(m);
        } else {
            self.queue.push_back(SubscriberMessage::Message(m));
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("channels", &self.channels)
            .field("patterns", &self.patterns)
            .field("connected", &self.link.is_some())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn frames_are_sorted_in_both_protocols() {
        // RESP2 arrays.
        let m = classify(Value::Array(vec![bulk("message"), bulk("c"), bulk("hi")]));
        assert!(
            matches!(&m, Frame::Message(m) if !m.from_pattern()),
            "{m:?}"
        );
        let m = classify(Value::Array(vec![
            bulk("pmessage"),
            bulk("c.*"),
            bulk("c.1"),
            bulk("hi"),
        ]));
        assert!(matches!(&m, Frame::Message(m) if m.from_pattern()), "{m:?}");
        let r = classify(Value::Array(vec![
            bulk("subscribe"),
            bulk("c"),
            Value::Int(1),
        ]));
        assert!(
            matches!(&r, Frame::Reply(Ask::Subscribe, Some(n)) if n == b"c"),
            "{r:?}"
        );
        let r = classify(Value::Array(vec![bulk("pong"), bulk("")]));
        assert!(matches!(r, Frame::Reply(Ask::Ping, None)), "{r:?}");
        // RESP3 pushes and a plain pong.
        let m = classify(Value::Push {
            kind: PushKind::Message,
            data: vec![bulk("c"), bulk("hi")],
        });
        assert!(matches!(m, Frame::Message(_)), "{m:?}");
        let r = classify(Value::Push {
            kind: PushKind::PUnsubscribe,
            data: vec![bulk("c.*"), Value::Int(0)],
        });
        assert!(
            matches!(&r, Frame::Reply(Ask::PUnsubscribe, Some(n)) if n == b"c.*"),
            "{r:?}"
        );
        let r = classify(Value::SimpleString("PONG".into()));
        assert!(matches!(r, Frame::Reply(Ask::Ping, None)), "{r:?}");
        let i = classify(Value::Push {
            kind: PushKind::Invalidate,
            data: vec![],
        });
        assert!(matches!(i, Frame::Ignored), "{i:?}");
        // Anything else is out of step.
        for v in [
            Value::Int(3),
            Value::Array(vec![bulk("hello")]),
            Value::Array(vec![bulk("message"), bulk("c")]),
        ] {
            let u = classify(v);
            assert!(matches!(u, Frame::Unexpected(_)), "{u:?}");
        }
    }
}
