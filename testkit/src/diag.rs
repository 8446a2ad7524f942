//! One TCP socket's kernel state, exactly: a `SOCK_DIAG_BY_FAMILY` request over netlink for
//! one 4-tuple. The kernel answers it by looking the socket up in its hash tables the way it
//! does for an incoming packet, so a live socket is always found, and a socket that is gone
//! (or, with a cookie, replaced by another one on the same ports) is reported as gone. A read
//! of `/proc/net/tcp` is no such answer: it walks the tables while they change, and a socket
//! can be missing from one read.
//!
//! Safe code: socket2 opens the netlink socket (an unbound netlink socket sends to the kernel);
//! the request and the reply are laid out by hand after `linux/netlink.h`,
//! `linux/inet_diag.h` and `linux/tcp.h`. Needs no privilege (`ss` does the same).

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte sockid.
const REQ_LEN: usize = 4 + 4 + 48;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid, then five u32.
const MSG_LEN: usize = 4 + 48 + 20;
/// The `INET_DIAG_INFO` attribute: a `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
/// Offset of `tcpi_bytes_received` (u64) in `struct tcp_info` (Linux 4.1 and later).
const TCPI_BYTES_RECEIVED: usize = 128;
/// `INET_DIAG_NOCOOKIE`: match the socket whatever its cookie.
const NO_COOKIE: u64 = u64::MAX;

/// What the kernel says about one TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diag {
    /// TCP state number (1 ESTABLISHED, 8 CLOSE_WAIT, …).
    pub state: u8,
    /// Bytes received and not read yet.
    pub rx_queue: u64,
    /// Bytes received over the connection's life (`tcpi_bytes_received`); `None` for a
    /// socket without TCP info (TIME_WAIT).
    pub bytes_received: Option<u64>,
    /// The socket's cookie: unique to this socket for the kernel's uptime.
    pub cookie: u64,
}

/// The socket with this local and remote address (and this cookie, when given).
/// `Ok(None)`: there is no such socket (closed, reset, or a different socket on those ports).
pub fn lookup(
    local: SocketAddr,
    remote: SocketAddr,
    cookie: Option<u64>,
) -> io::Result<Option<Diag>> {
    let (family, src, dst) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s[..4].copy_from_slice(&l.octets());
            d[..4].copy_from_slice(&r.octets());
            (libc::AF_INET, s, d)
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => (libc::AF_INET6, l.octets(), r.octets()),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mixed address families",
            ));
        }
    };
    let cookie = cookie.unwrap_or(NO_COOKIE);
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    // struct nlmsghdr (host byte order)
    req.extend(((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    req.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend(NLM_F_REQUEST.to_ne_bytes()); // no NLM_F_DUMP: an exact lookup
    req.extend(1u32.to_ne_bytes()); // seq
    req.extend(0u32.to_ne_bytes()); // pid: the kernel fills it in
    // struct inet_diag_req_v2
    req.push(family as u8);
    req.push(libc::IPPROTO_TCP as u8);
    req.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext: ask for tcp_info
    req.push(0);
    req.extend(u32::MAX.to_ne_bytes()); // idiag_states: any
    // struct inet_diag_sockid (ports and addresses in network byte order)
    req.extend(local.port().to_be_bytes());
    req.extend(remote.port().to_be_bytes());
    req.extend(src);
    req.extend(dst);
    req.extend(0u32.to_ne_bytes()); // idiag_if: any interface
    req.extend((cookie as u32).to_ne_bytes());
    req.extend(((cookie >> 32) as u32).to_ne_bytes());

    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
    )?;
    // The kernel queues its answer before send() returns; the timeout only bounds a surprise.
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.send(&req)?;
    let mut buf = [0u8; 8192];
    let n = (&sock).read(&mut buf)?;
    parse(&buf[..n])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn parse(reply: &[u8]) -> io::Result<Option<Diag>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sock_diag reply {reply:?}"),
        )
    };
    let len = u32_at(reply, 0).ok_or_else(bad)? as usize;
    let msg = reply.get(..len).ok_or_else(bad)?;
    match u16_at(msg, 4).ok_or_else(bad)? {
        NLMSG_ERROR => {
            // struct nlmsgerr: a negative errno, then the request's header.
            let errno = -(u32_at(msg, NLMSG_HDRLEN).ok_or_else(bad)? as i32);
            match errno {
                // No socket on those ports, or one with another cookie.
                libc::ENOENT | libc::ESTALE => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
        SOCK_DIAG_BY_FAMILY => {
            let body = msg
                .get(NLMSG_HDRLEN..NLMSG_HDRLEN + MSG_LEN)
                .ok_or_else(bad)?;
            let cookie_lo = u32_at(body, 4 + 40).ok_or_else(bad)? as u64;
            let cookie_hi = u32_at(body, 4 + 44).ok_or_else(bad)? as u64;
            let mut diag = Diag {
                state: body[1],
                rx_queue: u32_at(body, 4 + 48 + 4).ok_or_else(bad)? as u64,
                bytes_received: None,
                cookie: cookie_hi << 32 | cookie_lo,
            };
            // Attributes (struct rtattr: u16 length, u16 type, data, padded to 4 bytes).
            let mut at = NLMSG_HDRLEN + MSG_LEN;
            while let (Some(alen), Some(atype)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
                let alen = alen as usize;
                if alen < 4 {
                    break;
                }
                if atype == INET_DIAG_INFO {
                    let info = msg.get(at + 4..at + alen).ok_or_else(bad)?;
                    diag.bytes_received = u64_at(info, TCPI_BYTES_RECEIVED);
                }
                at += (alen + 3) & !3;
            }
            Ok(Some(diag))
        }
        _ => Err(bad()),
    }
}
