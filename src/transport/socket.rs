//! The socket kinds a member can sit on (TCP or a Unix domain socket), with the
//! owner-side readiness API the tracked I/O above uses, and the shared-reference API the
//! idle watch and the kernel probe use.
//!
//! tokio keeps one waker per direction for `poll_read_ready`: the connection's owner (the
//! tracked I/O, or TLS through [`SockIo`]) uses it, and every other observer (the idle
//! watch, `Conn::closed`) uses `readable()`/`ready()`, which keep a list of waiters.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};
use tokio::net::{TcpStream, UnixStream};

use super::runtime::RuntimeAlive;

/// One connected socket, with the liveness of the runtime it is registered with.
#[derive(Debug)]
pub(crate) struct Socket {
    kind: Kind,
    /// `None` only for a socket opened outside any runtime (tokio does not allow that).
    runtime: Option<RuntimeAlive>,
}

/// The socket kinds.
#[derive(Debug)]
pub(crate) enum Kind {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match &$self.kind {
            Kind::Tcp($s) => $e,
            Kind::Unix($s) => $e,
        }
    };
}

impl Socket {
    /// A socket just opened on the current runtime.
    fn new(kind: Kind) -> Socket {
        Socket {
            kind,
            runtime: RuntimeAlive::current(),
        }
    }

    pub(crate) fn tcp(stream: TcpStream) -> Socket {
        Socket::new(Kind::Tcp(stream))
    }

    pub(crate) fn unix(stream: UnixStream) -> Socket {
        Socket::new(Kind::Unix(stream))
    }

    /// The TCP stream, for TCP.
    pub(crate) fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.kind {
            Kind::Tcp(s) => Some(s),
            Kind::Unix(_) => None,
        }
    }

    pub(crate) fn sock_ref(&self) -> SockRef<'_> {
        each!(self, s => SockRef::from(s))
    }

    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read_ready(cx))
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_write_ready(cx))
    }

    /// True when the tokio I/O driver this socket is registered with has shut down (its
    /// runtime was dropped): every readiness wait on it fails from then on with tokio's
    /// "being shutdown" error, while `try_read`/`try_write` and a peek still look fine.
    ///
    /// One atomic load: the runtime's flag (see the `runtime` module). Without one (cannot
    /// happen: tokio opens no socket outside a runtime), one poll of the write readiness.
    #[inline]
    pub(crate) fn driver_gone(&self) -> bool {
        match &self.runtime {
            Some(rt) => !rt.is_alive(),
            None => self.driver_gone_polled(),
        }
    }

    /// The driver check by a poll of the write readiness with a no-op waker: an idle socket
    /// is almost always write-ready, and tokio reports the shutdown before anything else.
    /// Otherwise it parks the no-op waker in the writer slot, which only the connection's
    /// owner uses, and nobody owns an idle member but the caller. Unconstrained, so that an
    /// exhausted coop budget cannot answer `Pending` for a dead driver.
    #[cold]
    fn driver_gone_polled(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let ready = std::future::poll_fn(|cx| self.poll_write_ready(cx));
        let ready = std::pin::pin!(tokio::task::unconstrained(ready));
        matches!(ready.poll(&mut cx), Poll::Ready(Err(_)))
    }

    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.try_write(buf))
    }

    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        each!(self, s => s.try_write_vectored(bufs))
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        each!(self, s => s.readable().await)
    }

    pub(crate) async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        each!(self, s => s.ready(interest).await)
    }

    pub(crate) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> io::Result<R>,
    ) -> io::Result<R> {
        each!(self, s => s.try_io(interest, f))
    }

    /// A real `recv`, whatever tokio's cached readiness says (the socket is non-blocking, so
    /// this never waits).
    pub(crate) fn recv_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        let sock = self.sock_ref();
        let mut s: &socket2::Socket = &sock;
        io::Read::read(&mut s, buf)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock_ref().shutdown(how)
    }

    /// Our address, for TCP.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.local_addr().ok())
    }

    /// The peer's address, for TCP.
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.peer_addr().ok())
    }

    pub(crate) fn is_tcp(&self) -> bool {
        self.as_tcp().is_some()
    }

    /// Owner-side read: waits for readiness, then a real `recv` into the uninitialised part
    /// of `buf`. A WouldBlock clears tokio's readiness and registers for the next wake-up;
    /// so does a short read (the kernel had no more), so that the next read waits for new
    /// bytes instead of paying a `recv` that finds nothing. (tokio clears readiness only up
    /// to the event it has seen: bytes that arrive meanwhile wake the reader again.)
    pub(crate) fn poll_read_owner(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            let mut read = None;
            let res = self.try_io(Interest::READABLE, || {
                let n = super::sys::recv_uninit(self.sock_ref(), buf)?;
                read = Some(n);
                if n > 0 && buf.remaining() > 0 {
                    // Short: drained. Keep the bytes, clear the readiness.
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            match (read, res) {
                (Some(_), _) => return Poll::Ready(Ok(())),
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(())) => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Owner-side write, as [`Socket::poll_read_owner`].
    pub(crate) fn poll_write_owner(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&Socket) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            match write(self) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// An owner-side `AsyncRead + AsyncWrite` over a shared socket: what TLS runs on.
///
/// A read that finds tokio's readiness stale (the reactor has not yet seen bytes the kernel
/// holds) still tries one real `recv`, so that reading an idle member's bytes through TLS
/// right after a peek saw them does not wait for the reactor.
#[derive(Debug)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) struct SockIo(pub(crate) Arc<Socket>);

impl AsyncRead for SockIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.0.poll_read_owner(cx, buf) {
            Poll::Pending => match recv_into(&self.0, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                res => Poll::Ready(res),
            },
            ready => ready,
        }
    }
}

/// One real `recv` into the unfilled part of `buf`.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) fn recv_into(sock: &Socket, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    super::sys::recv_uninit(sock.sock_ref(), buf).map(drop)
}

impl AsyncWrite for SockIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_owner(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_owner(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.shutdown(Shutdown::Write))
    }
}
