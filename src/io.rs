//! Tracked I/O: [`Io`], the byte stream a protocol builds its connection on.
//!
//! It sits on top of the transport (TCP or Unix, optionally TLS) and under the protocol, so it
//! sees exactly the reads and writes of the connection's user — not TLS's own read-ahead —
//! and records what the clean-return rules need: a read or write left pending by a cancelled
//! future, an I/O error, end of stream, a write without a read after it, decrypted bytes
//! left unread inside TLS, and [`Io::mark_broken`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stats::EvictReason;
use crate::transport::{Socket, Stream};

const READ_PENDING: u8 = 1;
const WRITE_PENDING: u8 = 1 << 1;
const IO_ERROR: u8 = 1 << 2;
const BROKEN: u8 = 1 << 3;
const UNREAD: u8 = 1 << 4;
const EOF: u8 = 1 << 5;
/// Some read or write went through the stack since the last clean check: only then can TLS
/// hold decrypted bytes or unsent records (the checkout fast path skips looking).
const USED: u8 = 1 << 6;

/// A pooled connection's byte stream, with the pool's bookkeeping built in.
///
/// It is what [`Protocol::setup`](crate::Protocol::setup) receives and what the raw protocol
/// hands out: read and write it with tokio's `AsyncReadExt`/`AsyncWriteExt`. Over TLS it
/// reads and writes plaintext. It gives addresses and a few socket options, but never the
/// socket itself: every byte goes through the bookkeeping.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # async fn demo(pool: livepool::Pool) -> std::io::Result<()> {
/// let mut conn = pool.get().await.unwrap();   // Conn<Raw> derefs to Io
/// let io: &mut livepool::Io = &mut conn;
/// io.write_all(b"PING\r\n").await?;
/// let mut reply = [0u8; 7];
/// io.read_exact(&mut reply).await?;
/// println!("{} via {:?}", io.peer_addr()?, io.is_tls());
/// # Ok(()) }
/// ```
pub struct Io {
    stream: Stream,
    flags: u8,
}

impl Io {
    pub(crate) fn new(stream: Stream) -> Self {
        Io { stream, flags: 0 }
    }

    /// A plain TCP `Io` over a stream opened elsewhere (tests of heartbeats and protocols).
    #[cfg(test)]
    pub(crate) fn from_tcp(stream: tokio::net::TcpStream) -> Self {
        Io::new(Stream::Plain(Arc::new(Socket::tcp(stream))))
    }

    pub(crate) fn socket(&self) -> &Arc<Socket> {
        self.stream.socket()
    }

    /// The pool's handle on this connection for when this `Io` goes to a hosted client's
    /// driver: the same socket (kept open while the handle lives), no stream.
    pub(crate) fn detached(&self) -> Io {
        Io::new(self.stream.detached())
    }

    /// Our address of the connection.
    ///
    /// # Errors
    /// `Unsupported` on a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.local_addr().unwrap());
    /// # }
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket().local_addr().ok_or_else(not_tcp)
    }

    /// The peer's address.
    ///
    /// # Errors
    /// `Unsupported` on a Unix domain socket; `NotConnected` once the connection is gone.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("{}", conn.peer_addr().unwrap());
    /// # }
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket().as_tcp().ok_or_else(not_tcp)?.peer_addr()
    }

    /// True when the connection runs TLS.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// assert!(!conn.is_tls());
    /// # }
    /// ```
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// True when the connection is a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// assert!(!conn.is_unix());
    /// # }
    /// ```
    pub fn is_unix(&self) -> bool {
        !self.socket().is_tcp()
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// As `getsockopt(2)`; `Unsupported` on a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// assert!(conn.nodelay().unwrap());
    /// # }
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        self.tcp_only()?.tcp_nodelay()
    }

    /// Sets `TCP_NODELAY`.
    ///
    /// # Errors
    /// As `setsockopt(2)`; `Unsupported` on a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// conn.set_nodelay(false).unwrap();
    /// # }
    /// ```
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp_only()?.set_tcp_nodelay(on)
    }

    /// The IP time-to-live of outgoing packets.
    ///
    /// # Errors
    /// As `getsockopt(2)`; `Unsupported` on a Unix domain socket.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// println!("ttl {}", conn.ttl().unwrap());
    /// # }
    /// ```
    pub fn ttl(&self) -> io::Result<u32> {
        self.tcp_only()?.ttl_v4()
    }

    fn tcp_only(&self) -> io::Result<socket2::SockRef<'_>> {
        self.socket()
            .as_tcp()
            .map(socket2::SockRef::from)
            .ok_or_else(not_tcp)
    }

    /// Marks the connection unusable: it is closed instead of returned to the pool. Call it
    /// when a protocol error leaves the stream out of step (for example after reading only
    /// part of a response).
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let mut conn = pool.get().await.unwrap();
    /// conn.mark_broken();
    /// assert!(conn.is_broken());
    /// # }
    /// ```
    pub fn mark_broken(&mut self) {
        self.flags |= BROKEN;
    }

    /// True when the bookkeeping already condemns the connection: marked broken, an I/O
    /// error, end of stream, or a read or write left pending by a cancelled future. (The
    /// public answer is [`Conn::is_broken`](crate::Conn::is_broken), which also asks the
    /// protocol: one question, one answer.)
    pub(crate) fn is_broken(&self) -> bool {
        self.dirty_reason(false).is_some()
    }

    /// Reads what has arrived, through the whole stack (TLS included), without waiting:
    /// `Ok(None)` when nothing more can be read right now, `Ok(Some(0))` at end of stream.
    /// For protocols reading the bytes that arrive on an idle connection; it leaves the
    /// clean-return bookkeeping as it was.
    ///
    /// # Errors
    /// The transport's error (a reset, a TLS alert).
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let mut conn = pool.get().await.unwrap();
    /// let mut buf = [0u8; 64];
    /// match conn.try_read_now(&mut buf) {
    ///     Ok(None) => println!("nothing there"),
    ///     Ok(Some(0)) => println!("closed"),
    ///     Ok(Some(n)) => println!("{n} bytes"),
    ///     Err(e) => println!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn try_read_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.flags |= USED;
        self.stream.read_now(buf)
    }

    /// The pool's own kernel check, for your diagnostics: one non-blocking
    /// `recv(MSG_PEEK)` of one byte on the socket (under TLS it sees ciphertext). `Ok(0)`:
    /// the peer closed; `Ok(1)`: bytes are waiting; `WouldBlock`: nothing to read and no
    /// error. Consumes nothing; reading a pending socket error clears it.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is there; the socket's pending error otherwise.
    ///
    /// ```no_run
    /// # async fn demo(pool: livepool::Pool) { let conn = pool.get().await.unwrap();
    /// let alive = matches!(conn.peek_socket(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    /// # }
    /// ```
    pub fn peek_socket(&self) -> io::Result<usize> {
        crate::transport::probe::peek(self.socket())
    }

    /// Why the connection may not go back to the pool, if anything says so.
    pub(crate) fn dirty_reason(&self, request_response: bool) -> Option<EvictReason> {
        let f = self.flags;
        if f & BROKEN != 0 {
            Some(EvictReason::MarkedBroken)
        } else if f & IO_ERROR != 0 {
            Some(EvictReason::IoError)
        } else if f & EOF != 0 {
            Some(EvictReason::Eof)
        } else if f & (READ_PENDING | WRITE_PENDING) != 0
            || (f & USED != 0 && self.stream.has_unsent())
        {
            Some(EvictReason::Cancelled)
        } else if (f & UNREAD != 0 && request_response)
            || (f & USED != 0 && self.stream.has_unread())
        {
            Some(EvictReason::UnreadResponse)
        } else {
            None
        }
    }

    /// A cancelled read is all that condemns the connection (no write cut short, nothing
    /// unsent inside TLS, no error): a protocol that follows its replies can finish it.
    pub(crate) fn only_read_pending(&self) -> bool {
        let f = self.flags;
        f & READ_PENDING != 0
            && f & (WRITE_PENDING | IO_ERROR | BROKEN | EOF) == 0
            && !(f & USED != 0 && self.stream.has_unsent())
    }

    /// After the reaper's own exchange (heartbeat, idle bytes) kept the member: what that
    /// exchange left pending or unanswered is not the next caller's.
    pub(crate) fn clear_pending(&mut self) {
        self.flags &= !(READ_PENDING | WRITE_PENDING | UNREAD | USED);
    }

    /// After a protocol read "what is there now" on an idle member: the read it gave up on
    /// (nothing more had arrived) left nothing half done.
    pub(crate) fn clear_read_pending(&mut self) {
        self.flags &= !READ_PENDING;
    }

    fn record<T>(&mut self, res: io::Result<T>) -> io::Result<T> {
        if res.is_err() {
            self.flags |= IO_ERROR;
        }
        res
    }

    fn after_write(&mut self, res: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        self.flags |= USED;
        match res {
            Poll::Pending => {
                self.flags |= WRITE_PENDING;
                Poll::Pending
            }
            Poll::Ready(res) => {
                self.flags &= !WRITE_PENDING;
                if matches!(res, Ok(n) if n > 0) {
                    self.flags |= UNREAD;
                }
                Poll::Ready(self.record(res))
            }
        }
    }
}

fn not_tcp() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "not a TCP connection (Unix domain socket)",
    )
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io")
            .field("local", &self.socket().local_addr())
            .field("peer", &self.socket().peer_addr())
            .field("tls", &self.is_tls())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flags |= USED;
        let before = buf.filled().len();
        match this.stream.poll_read(cx, buf) {
            Poll::Pending => {
                this.flags |= READ_PENDING;
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                this.flags &= !(READ_PENDING | UNREAD);
                if buf.filled().len() == before && buf.remaining() > 0 {
                    this.flags |= EOF;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.flags &= !READ_PENDING;
                Poll::Ready(this.record(Err(e)))
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = this.stream.poll_write(cx, buf);
        this.after_write(res)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = this.stream.poll_write_vectored(cx, bufs);
        this.after_write(res)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.flags |= USED;
        match this.stream.poll_flush(cx) {
            Poll::Pending => {
                this.flags |= WRITE_PENDING;
                Poll::Pending
            }
            Poll::Ready(res) => {
                this.flags &= !WRITE_PENDING;
                Poll::Ready(this.record(res))
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A half-closed connection can never go back to the pool.
        this.flags |= EOF | USED;
        match this.stream.poll_shutdown(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(res) => Poll::Ready(this.record(res)),
        }
    }
}
