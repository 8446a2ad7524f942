//! The bottom layer: where to connect ([`Endpoint`]), the socket kinds (TCP, Unix), opening
//! one connection (DNS at every connect, socket options, optional TLS), the byte stream over
//! it ([`Stream`]), the kernel probe, and whose fault a failed connect is (`blame.rs`: the
//! endpoint's or this process's). Nothing here knows about pools or protocols.

mod blame;
pub(crate) mod connect;
pub(crate) mod probe;
pub(crate) mod runtime;
pub(crate) mod socket;
mod sys;
#[cfg(feature = "tls")]
pub(crate) mod tls;

use std::fmt;
use std::io;
use std::path::PathBuf;
#[cfg(feature = "tls")]
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;
#[cfg(feature = "tls")]
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use blame::{Blame, blame};
pub(crate) use connect::Target;
pub use connect::TcpOptions;
pub(crate) use socket::Socket;

/// Where a pool connects: a TCP target (an address, or a host name resolved at every
/// connect) or a Unix domain socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp(Target),
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `"unix:/path"` as a Unix socket, anything else as a TCP target.
    pub(crate) fn parse(s: &str) -> Result<Endpoint, String> {
        match s.strip_prefix("unix:") {
            Some("") => Err("\"unix:\" needs a socket path after it".into()),
            Some(path) => Ok(Endpoint::Unix(PathBuf::from(path))),
            None => Target::parse(s).map(Endpoint::Tcp),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(t) => t.fmt(f),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Opens a socket to `endpoint` within `timeout`. TCP options apply to TCP only: a Unix
/// socket has no keepalive, user timeout or Nagle, so they are skipped there.
///
/// # Errors
/// For a literal address or a Unix path, the connect's own `io::Error`; for a host name,
/// one whose text names the host and every address tried. `TimedOut` when the budget ran
/// out.
pub(crate) async fn open(
    endpoint: &Endpoint,
    opts: &TcpOptions,
    timeout: Option<std::time::Duration>,
) -> io::Result<Socket> {
    match endpoint {
        Endpoint::Tcp(target) => connect::connect_tcp(target, opts, timeout)
            .await
            .map(Socket::tcp)
            .map_err(connect::ConnectError::into_io),
        Endpoint::Unix(path) => {
            let connecting = tokio::net::UnixStream::connect(path);
            let res = match timeout {
                Some(t) => match tokio::time::timeout(t, connecting).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {t:?}"),
                    )),
                },
                None => connecting.await,
            };
            res.map(Socket::unix)
        }
    }
}

/// The byte stream of one member: the socket itself, or a TLS session over it.
pub(crate) enum Stream {
    Plain(Arc<Socket>),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<socket::SockIo>>),
    /// The pool's handle on a connection whose bytes belong to a hosted client's driver
    /// (`protocol::hosted`): the socket (its peek, its options, its addresses), no stream.
    Detached {
        sock: Arc<Socket>,
        tls: bool,
    },
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => f.write_str("Tls"),
            Stream::Detached { sock, .. } => f.debug_tuple("Detached").field(sock).finish(),
        }
    }
}

impl Stream {
    pub(crate) fn socket(&self) -> &Arc<Socket> {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => &t.get_ref().0.0,
            Stream::Detached { sock, .. } => sock,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
            Stream::Detached { tls, .. } => *tls,
        }
    }

    /// The pool's handle on the same connection, for when the stream itself goes to a
    /// hosted client's driver.
    pub(crate) fn detached(&self) -> Stream {
        Stream::Detached {
            sock: self.socket().clone(),
            tls: self.is_tls(),
        }
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_owner(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
            Stream::Detached { .. } => Poll::Ready(Err(detached())),
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_write_owner(cx, |s| s.try_write(buf)),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
            Stream::Detached { .. } => Poll::Ready(Err(detached())),
        }
    }

    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(s) => s.poll_write_owner(cx, |s| s.try_write_vectored(bufs)),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
            Stream::Detached { .. } => Poll::Ready(Err(detached())),
        }
    }

    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
            Stream::Detached { .. } => Poll::Ready(Err(detached())),
        }
    }

    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => Poll::Ready(s.shutdown(std::net::Shutdown::Write)),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
            Stream::Detached { .. } => Poll::Ready(Err(detached())),
        }
    }

    /// Reads what is there now, through the whole stack, without waiting: `None` when nothing
    /// more can be read right now, `Some(0)` at end of stream.
    pub(crate) fn read_now(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Stream::Plain(s) => match s.recv_now(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Stream::Detached { .. } => Err(detached()),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(buf);
                match self.poll_read(&mut cx, &mut rb) {
                    Poll::Pending => Ok(None),
                    Poll::Ready(Ok(())) => Ok(Some(rb.filled().len())),
                    Poll::Ready(Err(e)) => Err(e),
                }
            }
        }
    }

    /// True when the stack holds decrypted bytes nobody has read, or has seen the peer's
    /// close: the caller left something unread.
    pub(crate) fn has_unread(&self) -> bool {
        match self {
            Stream::Plain(_) | Stream::Detached { .. } => false,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => !t.get_ref().1.wants_read(),
        }
    }

    /// True when the stack holds bytes it has not written to the socket yet.
    pub(crate) fn has_unsent(&self) -> bool {
        match self {
            Stream::Plain(_) | Stream::Detached { .. } => false,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.get_ref().1.wants_write(),
        }
    }
}

/// The error of any I/O through a detached handle: the bytes are the hosted client's.
fn detached() -> io::Error {
    io::Error::other("this connection's stream belongs to its client's driver")
}
