//! Ready-made pings: two protocols for raw bytes that ping idle members, and the error every
//! heartbeat returns.
//!
//! There is one way to ping: [`Protocol::heartbeat`](crate::Protocol::heartbeat). [`FramePing`]
//! (a small binary ping/pong frame) and [`RedisPing`] (`PING` → `+PONG`) are protocols whose
//! connection is the [`Io`] itself, like [`Raw`](crate::Raw), and whose heartbeat is that
//! ping. A protocol of your own can call their [`ping`](RedisPing::ping) from its heartbeat.
//!
//! The pool bounds every heartbeat with `heartbeat_timeout`, so a ping has no timeout of its
//! own. It may be dropped at any `.await`; the pool then evicts the connection, so leaving a
//! half-written ping or a half-read pong behind is acceptable.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::io::Io;

/// Why a heartbeat failed.
///
/// The kind of failure can be queried with [`is_io`](Self::is_io),
/// [`is_closed`](Self::is_closed) and [`is_bad_reply`](Self::is_bad_reply).
/// For I/O failures the underlying [`io::Error`] is available through
/// [`std::error::Error::source`].
///
/// # Example
///
/// ```
/// use std::error::Error as _;
/// use livepool::HeartbeatError;
///
/// let err = HeartbeatError::bad_reply("expected pong");
/// assert!(err.is_bad_reply());
/// assert_eq!(err.to_string(), "bad heartbeat reply: expected pong");
///
/// let err = HeartbeatError::io(std::io::ErrorKind::ConnectionReset.into());
/// assert!(err.is_io());
/// assert!(err.source().is_some());
/// ```
pub struct HeartbeatError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Io(io::Error),
    Closed,
    BadReply(String),
}

impl HeartbeatError {
    /// The heartbeat failed because of an I/O error on the socket.
    ///
    /// ```
    /// let e = livepool::HeartbeatError::io(std::io::ErrorKind::BrokenPipe.into());
    /// assert!(e.is_io());
    /// ```
    pub fn io(e: io::Error) -> Self {
        Self { kind: Kind::Io(e) }
    }

    /// The peer closed the connection (a read returned 0 bytes) mid-beat.
    ///
    /// ```
    /// assert!(livepool::HeartbeatError::closed().is_closed());
    /// ```
    pub fn closed() -> Self {
        Self { kind: Kind::Closed }
    }

    /// The peer answered, but with a wrong or garbled reply.
    ///
    /// ```
    /// assert!(livepool::HeartbeatError::bad_reply("-ERR").is_bad_reply());
    /// ```
    pub fn bad_reply(detail: impl Into<String>) -> Self {
        Self {
            kind: Kind::BadReply(detail.into()),
        }
    }

    /// Returns `true` if the heartbeat failed with an I/O error.
    ///
    /// ```
    /// assert!(!livepool::HeartbeatError::closed().is_io());
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io(_))
    }

    /// Returns `true` if the peer closed the connection during the heartbeat.
    ///
    /// ```
    /// assert!(livepool::HeartbeatError::closed().is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// Returns `true` if the peer sent a wrong or garbled reply.
    ///
    /// ```
    /// assert!(!livepool::HeartbeatError::closed().is_bad_reply());
    /// ```
    pub fn is_bad_reply(&self) -> bool {
        matches!(self.kind, Kind::BadReply(_))
    }
}

impl fmt::Debug for HeartbeatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeartbeatError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl fmt::Display for HeartbeatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Io(_) => f.write_str("heartbeat i/o error"),
            Kind::Closed => f.write_str("peer closed the connection during heartbeat"),
            Kind::BadReply(detail) => write!(f, "bad heartbeat reply: {detail}"),
        }
    }
}

impl StdError for HeartbeatError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Io(e) => Some(e),
            Kind::Closed | Kind::BadReply(_) => None,
        }
    }
}

impl From<io::Error> for HeartbeatError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Self::closed();
        }
        Self::io(e)
    }
}

/// Mask for the 24-bit timestamp carried in a [`FramePing`] frame.
const TS_MASK: u32 = 0x00FF_FFFF;

/// Milliseconds since a process-wide monotonic base, truncated to 24 bits.
fn now_ms24() -> u32 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // Truncation is intended: only the low 24 bits go on the wire.
    (base.elapsed().as_millis() as u32) & TS_MASK
}

/// Raw bytes, with idle members pinged by a fixed 8-byte binary ping/pong frame: a protocol
/// whose connection is the [`Io`] itself and whose setup does nothing, like
/// [`Raw`](crate::Raw).
///
/// Frame layout (all integers big-endian):
///
/// | bytes  | field                                          |
/// |--------|------------------------------------------------|
/// | `0`    | type: [`PING`](Self::PING) `0x01` or [`PONG`](Self::PONG) `0x02` |
/// | `1..5` | sequence number, `u32`                          |
/// | `5..8` | timestamp: low 24 bits of a millisecond clock   |
///
/// A plain `u32` timestamp would make the frame 9 bytes long. To keep the
/// frame at 8 bytes, the full sequence number is kept (the pong must echo
/// it) and only the low 24 bits of the timestamp are carried. That still
/// measures round-trip times of up to 2^24 ms (about 4.6 hours) correctly
/// with wrapping arithmetic. The timestamp is informational: the heartbeat
/// logs the round-trip time at `trace` level but does not validate it.
///
/// Each [`ping`](Self::ping) sends a ping with the next sequence number
/// (starting at 1 and wrapping) and expects a pong with the same sequence
/// number. A server answers by sending back the frame with the type changed
/// to `PONG`.
///
/// # Example
///
/// Client side: a pool whose idle members are pinged every `heartbeat_interval`, and one
/// ping by hand:
///
/// ```no_run
/// use livepool::FramePing;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = livepool::Pool::builder("127.0.0.1:7000")
///     .protocol(FramePing::new())
///     .build()?;
/// let mut conn = pool.get().await?;
/// FramePing::new().ping(&mut conn).await?;
/// # Ok(())
/// # }
/// ```
///
/// Server side, turning a ping into its pong:
///
/// ```
/// use livepool::FramePing;
///
/// let ping = FramePing::encode(FramePing::PING, 7, 1234);
/// let (kind, seq, ts) = FramePing::decode(&ping);
/// assert_eq!(kind, FramePing::PING);
/// let pong = FramePing::encode(FramePing::PONG, seq, ts);
/// assert_eq!(FramePing::decode(&pong), (FramePing::PONG, 7, 1234));
/// ```
#[derive(Debug, Default)]
pub struct FramePing {
    seq: AtomicU32,
}

impl FramePing {
    /// Frame type of a ping (client to server).
    ///
    /// ```
    /// assert_eq!(livepool::FramePing::PING, 0x01);
    /// ```
    pub const PING: u8 = 0x01;
    /// Frame type of a pong (server to client).
    ///
    /// ```
    /// assert_eq!(livepool::FramePing::PONG, 0x02);
    /// ```
    pub const PONG: u8 = 0x02;
    /// Length of a frame in bytes.
    ///
    /// ```
    /// assert_eq!(livepool::FramePing::LEN, 8);
    /// ```
    pub const LEN: usize = 8;

    /// Creates a heartbeat whose first ping carries sequence number 1.
    ///
    /// ```
    /// let hb = livepool::FramePing::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes a frame. Only the low 24 bits of `timestamp_ms` are kept.
    ///
    /// ```
    /// use livepool::FramePing;
    /// let f = FramePing::encode(FramePing::PING, 7, 1234);
    /// assert_eq!(f.len(), FramePing::LEN);
    /// ```
    pub fn encode(kind: u8, seq: u32, timestamp_ms: u32) -> [u8; 8] {
        let seq = seq.to_be_bytes();
        let ts = (timestamp_ms & TS_MASK).to_be_bytes();
        [kind, seq[0], seq[1], seq[2], seq[3], ts[1], ts[2], ts[3]]
    }

    /// Decodes a frame into `(kind, seq, timestamp24)`.
    ///
    /// The kind byte is returned as is, without validation.
    ///
    /// ```
    /// use livepool::FramePing;
    /// let f = FramePing::encode(FramePing::PONG, 7, 1234);
    /// assert_eq!(FramePing::decode(&f), (FramePing::PONG, 7, 1234));
    /// ```
    pub fn decode(frame: &[u8; 8]) -> (u8, u32, u32) {
        let seq = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
        let ts = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]);
        (frame[0], seq, ts)
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
}

impl FramePing {
    /// One ping on `io`: the next sequence number out, its pong back.
    ///
    /// # Errors
    /// [`HeartbeatError`]: an I/O error, the peer closed, or a pong that is not the answer.
    ///
    /// ```no_run
    /// # async fn demo(io: &mut livepool::Io) -> Result<(), livepool::HeartbeatError> {
    /// livepool::FramePing::new().ping(io).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self, io: &mut Io) -> Result<(), HeartbeatError> {
        let seq = self.next_seq();
        let ping = Self::encode(Self::PING, seq, now_ms24());
        io.write_all(&ping).await?;

        let mut pong = [0u8; Self::LEN];
        io.read_exact(&mut pong).await?;
        let (kind, echoed, ts) = Self::decode(&pong);
        if kind != Self::PONG {
            return Err(HeartbeatError::bad_reply(format!(
                "expected pong type 0x{:02x}, got 0x{kind:02x}",
                Self::PONG
            )));
        }
        if echoed != seq {
            return Err(HeartbeatError::bad_reply(format!(
                "pong seq {echoed} does not echo ping seq {seq}"
            )));
        }
        let rtt_ms = now_ms24().wrapping_sub(ts) & TS_MASK;
        tracing::trace!(seq, rtt_ms, "frame ping ok");
        Ok(())
    }
}

/// Raw bytes to a Redis (RESP) server, with idle members pinged by `PING` → `+PONG`: a
/// protocol whose connection is the [`Io`] itself and whose setup does nothing, like
/// [`Raw`](crate::Raw). For a Redis client, use the `livepool-redis` crate instead; this is
/// for raw RESP traffic and for protocols of your own that call [`ping`](Self::ping).
///
/// The command is sent as the RESP array `*1\r\n$4\r\nPING\r\n` and exactly
/// the 7 bytes `+PONG\r\n` are read back. Anything else is a
/// [bad reply](HeartbeatError::bad_reply), including Redis error replies such
/// as `-LOADING` or `-NOAUTH`; the error text received so far (up to 32
/// bytes, stopping at CRLF) is included in the message.
///
/// Note that a connection in RESP3 push mode or inside `SUBSCRIBE` answers
/// `PING` differently; do not use this ping for such connections.
///
/// # Example
///
/// ```no_run
/// use livepool::RedisPing;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = livepool::Pool::builder("127.0.0.1:6379").protocol(RedisPing).build()?;
/// let mut conn = pool.get().await?;
/// RedisPing.ping(&mut conn).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisPing;

impl RedisPing {
    const PING: &'static [u8] = b"*1\r\n$4\r\nPING\r\n";
    const PONG: &'static [u8; 7] = b"+PONG\r\n";
    /// Maximum number of reply bytes quoted in an error message.
    const QUOTE_MAX: usize = 32;
}

impl RedisPing {
    /// One `PING` on `io`, and its `+PONG` read back.
    ///
    /// # Errors
    /// [`HeartbeatError`]: an I/O error, the peer closed, or any reply but `+PONG` (a Redis
    /// error's text is quoted).
    ///
    /// ```no_run
    /// # async fn demo(io: &mut livepool::Io) -> Result<(), livepool::HeartbeatError> {
    /// livepool::RedisPing.ping(io).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self, io: &mut Io) -> Result<(), HeartbeatError> {
        io.write_all(Self::PING).await?;

        let mut reply = [0u8; Self::QUOTE_MAX];
        io.read_exact(&mut reply[..Self::PONG.len()]).await?;
        if &reply[..Self::PONG.len()] == Self::PONG {
            return Ok(());
        }

        // The connection is going to be evicted anyway, so take whatever
        // else has already arrived (without waiting) to make the error more
        // useful, e.g. the rest of "-LOADING Redis is loading ...".
        let mut len = Self::PONG.len();
        while len < reply.len() && !contains_crlf(&reply[..len]) {
            match io.try_read_now(&mut reply[len..]) {
                Ok(Some(n)) if n > 0 => len += n,
                _ => break,
            }
        }
        let received = &reply[..len];
        Err(HeartbeatError::bad_reply(if received[0] == b'-' {
            let line = match received.windows(2).position(|w| w == b"\r\n") {
                Some(end) => &received[1..end],
                None => &received[1..],
            };
            format!(
                "redis replied with error {:?}",
                String::from_utf8_lossy(line)
            )
        } else {
            format!(
                "expected \"+PONG\\r\\n\", got {:?}",
                String::from_utf8_lossy(received)
            )
        }))
    }
}

raw_protocol!(FramePing, ping);
raw_protocol!(RedisPing, ping);

fn contains_crlf(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    const LIMIT: Duration = Duration::from_secs(5);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        match tokio::time::timeout(LIMIT, fut).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
        }
    }

    /// Starts a one-connection server running `serve`, and connects to it.
    async fn pair<F, Fut>(serve: F) -> (Io, JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let server = tokio::spawn(async move {
            let (sock, _) = within("accept", listener.accept()).await.expect("accept");
            serve(sock).await;
        });
        let client = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        (Io::from_tcp(client), server)
    }

    /// Reads pings forever and answers each with `respond(ping)`.
    async fn frame_server(mut sock: TcpStream, respond: fn([u8; 8]) -> [u8; 8]) {
        let mut ping = [0u8; 8];
        while sock.read_exact(&mut ping).await.is_ok() {
            let (kind, _, _) = FramePing::decode(&ping);
            assert_eq!(kind, FramePing::PING, "client sent a non-ping frame");
            if sock.write_all(&respond(ping)).await.is_err() {
                break;
            }
        }
    }

    fn echo_pong(ping: [u8; 8]) -> [u8; 8] {
        let (_, seq, ts) = FramePing::decode(&ping);
        FramePing::encode(FramePing::PONG, seq, ts)
    }

    /// Reads one Redis PING and answers with `reply`.
    async fn redis_server(mut sock: TcpStream, reply: &'static [u8]) {
        let mut cmd = [0u8; 14];
        sock.read_exact(&mut cmd).await.expect("read PING command");
        assert_eq!(&cmd, b"*1\r\n$4\r\nPING\r\n");
        sock.write_all(reply).await.expect("write reply");
        // Keep the connection open until the client goes away.
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest).await;
    }

    fn assert_closed_or_io(res: Result<(), HeartbeatError>) {
        match res {
            Err(e) if e.is_closed() || e.is_io() => {}
            other => panic!("expected closed or io error, got {other:?}"),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        for (kind, seq, ts) in [
            (FramePing::PING, 0, 0),
            (FramePing::PONG, 1, 1),
            (FramePing::PING, u32::MAX, TS_MASK),
            (FramePing::PONG, 0x0102_0304, 0x00a0_b0c0),
        ] {
            let frame = FramePing::encode(kind, seq, ts);
            assert_eq!(frame.len(), FramePing::LEN);
            assert_eq!(FramePing::decode(&frame), (kind, seq, ts));
        }
        // Layout is fixed and big-endian.
        assert_eq!(
            FramePing::encode(0x01, 0x0102_0304, 0x0005_0607),
            [0x01, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]
        );
        // Only the low 24 bits of the timestamp survive.
        let frame = FramePing::encode(FramePing::PING, 9, 0xFF12_3456);
        assert_eq!(FramePing::decode(&frame), (FramePing::PING, 9, 0x12_3456));
    }

    #[test]
    fn error_kinds_and_display() {
        let io = HeartbeatError::io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(io.is_io() && !io.is_closed() && !io.is_bad_reply());
        assert!(io.source().is_some());

        let closed = HeartbeatError::closed();
        assert!(closed.is_closed() && !closed.is_io() && !closed.is_bad_reply());
        assert!(closed.source().is_none());

        let bad = HeartbeatError::bad_reply("nope");
        assert!(bad.is_bad_reply() && !bad.is_io() && !bad.is_closed());
        assert!(bad.source().is_none());

        for e in [io, closed, bad] {
            let msg = e.to_string();
            assert!(!msg.ends_with('.'), "{msg:?} ends with a period");
            assert_eq!(msg, msg.to_lowercase(), "{msg:?} is not lowercase");
        }
    }

    #[tokio::test]
    async fn frame_heartbeat_against_echo_server() {
        let (mut client, _server) = pair(|s| frame_server(s, echo_pong)).await;
        let hb = FramePing::new();
        for expected_seq in 1..=5u32 {
            within("frame ping", hb.ping(&mut client))
                .await
                .unwrap_or_else(|e| panic!("beat {expected_seq} failed: {e:?}"));
            assert_eq!(hb.seq.load(Ordering::Relaxed), expected_seq);
        }
    }

    #[tokio::test]
    async fn frame_heartbeat_sends_increasing_seq() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (mut client, _server) = pair(move |mut sock| async move {
            let mut ping = [0u8; 8];
            while sock.read_exact(&mut ping).await.is_ok() {
                let (_, seq, _) = FramePing::decode(&ping);
                let _ = tx.send(seq);
                if sock.write_all(&echo_pong(ping)).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let hb = FramePing::new();
        for _ in 0..3 {
            within("frame ping", hb.ping(&mut client))
                .await
                .expect("beat against echo server");
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(within("seq from server", rx.recv()).await.expect("seq"));
        }
        assert_eq!(seen, [1, 2, 3]);
    }

    #[tokio::test]
    async fn frame_heartbeat_wrong_type_is_bad_reply() {
        fn wrong_type(ping: [u8; 8]) -> [u8; 8] {
            let (_, seq, ts) = FramePing::decode(&ping);
            FramePing::encode(0x7f, seq, ts)
        }
        let (mut client, _server) = pair(|s| frame_server(s, wrong_type)).await;
        let err = within("frame ping", FramePing::new().ping(&mut client))
            .await
            .expect_err("wrong type must fail");
        assert!(err.is_bad_reply(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "bad heartbeat reply: expected pong type 0x02, got 0x7f"
        );
    }

    #[tokio::test]
    async fn frame_heartbeat_wrong_seq_is_bad_reply() {
        fn wrong_seq(ping: [u8; 8]) -> [u8; 8] {
            let (_, seq, ts) = FramePing::decode(&ping);
            FramePing::encode(FramePing::PONG, seq.wrapping_add(41), ts)
        }
        let (mut client, _server) = pair(|s| frame_server(s, wrong_seq)).await;
        let err = within("frame ping", FramePing::new().ping(&mut client))
            .await
            .expect_err("wrong seq must fail");
        assert!(err.is_bad_reply(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "bad heartbeat reply: pong seq 42 does not echo ping seq 1"
        );
    }

    #[tokio::test]
    async fn frame_heartbeat_server_closes() {
        let (mut client, server) = pair(|sock| async move { drop(sock) }).await;
        within("server task", server).await.expect("server task");
        assert_closed_or_io(within("frame ping", FramePing::new().ping(&mut client)).await);
    }

    #[tokio::test]
    async fn frame_heartbeat_server_closes_mid_pong() {
        let (mut client, _server) = pair(|mut sock| async move {
            let mut ping = [0u8; 8];
            sock.read_exact(&mut ping).await.expect("read ping");
            // Send half a pong, then close.
            sock.write_all(&echo_pong(ping)[..4])
                .await
                .expect("write half pong");
        })
        .await;
        assert_closed_or_io(within("frame ping", FramePing::new().ping(&mut client)).await);
    }

    #[tokio::test]
    async fn redis_heartbeat_pong_ok() {
        let (mut client, _server) = pair(|s| redis_server(s, b"+PONG\r\n")).await;
        within("redis ping", RedisPing.ping(&mut client))
            .await
            .expect("+PONG must succeed");
    }

    #[tokio::test]
    async fn redis_heartbeat_error_reply_is_bad_reply() {
        let (mut client, _server) =
            pair(|s| redis_server(s, b"-LOADING Redis is loading the dataset in memory\r\n")).await;
        let err = within("redis ping", RedisPing.ping(&mut client))
            .await
            .expect_err("-LOADING must fail");
        assert!(err.is_bad_reply(), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("LOADIN"), "{msg}");
        assert!(!msg.contains('\r'), "{msg}");
    }

    #[tokio::test]
    async fn redis_heartbeat_short_error_reply_quotes_whole_line() {
        let (mut client, _server) = pair(|s| redis_server(s, b"-NOAUTH x\r\n")).await;
        let err = within("redis ping", RedisPing.ping(&mut client))
            .await
            .expect_err("-NOAUTH must fail");
        assert!(err.is_bad_reply(), "{err:?}");
        // The whole line arrives in one segment on loopback, so it is quoted
        // in full when available; at least the first 7 bytes always are.
        assert!(err.to_string().contains("NOAUTH"), "{err}");
    }

    #[tokio::test]
    async fn redis_heartbeat_garbage_is_bad_reply() {
        let (mut client, _server) = pair(|s| redis_server(s, b"$5\r\nhello\r\n")).await;
        let err = within("redis ping", RedisPing.ping(&mut client))
            .await
            .expect_err("garbage must fail");
        assert!(err.is_bad_reply(), "{err:?}");
        assert!(err.to_string().contains("got \"$5"), "{err}");
    }

    #[tokio::test]
    async fn redis_heartbeat_peer_closed() {
        let (mut client, server) = pair(|sock| async move { drop(sock) }).await;
        within("server task", server).await.expect("server task");
        assert_closed_or_io(within("redis ping", RedisPing.ping(&mut client)).await);
    }
}
