//! The kernel-level liveness check of an idle socket.
//!
//! One `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte, through socket2's safe `SockRef`, is the
//! only cheap check that sees FIN, RST, a pending socket error and unread bytes alike
//! (`SO_ERROR` misses FIN, `SIOCINQ` misses FIN and RST). It must be a real
//! syscall: tokio's `try_read`/`poll_peek` answer from cached readiness and miss a FIN that
//! arrived while the task did not yield. So no `unsafe` is needed here at all.

use std::io;
use std::mem::MaybeUninit;

use super::Socket;
use crate::stats::EvictReason;

/// What a peek says about an idle connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Nothing to read and no error: alive as far as the kernel knows.
    Alive,
    /// Dead or unusable, for this reason.
    Dead(EvictReason),
}

/// One non-blocking `recv(MSG_PEEK)` syscall. Reading a pending socket error clears it, so
/// its result must be acted on.
pub(crate) fn peek(sock: &Socket) -> io::Result<usize> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    sock.sock_ref()
        .recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// The one place that turns a peek result into what happens to an idle connection.
pub(crate) fn classify(res: &io::Result<usize>) -> Health {
    match res {
        Ok(0) => Health::Dead(EvictReason::PeerClosed),
        Ok(_) => Health::Dead(EvictReason::UnexpectedData),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Health::Alive,
            io::ErrorKind::ConnectionReset => Health::Dead(EvictReason::Reset),
            _ => Health::Dead(EvictReason::SocketError),
        },
    }
}

/// Peeks and classifies.
pub(crate) fn check(sock: &Socket) -> Health {
    classify(&peek(sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(&Ok(0)), Health::Dead(EvictReason::PeerClosed));
        assert_eq!(classify(&Ok(1)), Health::Dead(EvictReason::UnexpectedData));
        let wb = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(classify(&Err(wb)), Health::Alive);
        let rst = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(classify(&Err(rst)), Health::Dead(EvictReason::Reset));
        let to = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(classify(&Err(to)), Health::Dead(EvictReason::SocketError));
    }
}
