//! The crate's only `unsafe`: reading from a socket into the uninitialised part of a
//! `ReadBuf`, as tokio's own `TcpStream` does. Zeroing the spare capacity on every read
//! instead (`ReadBuf::initialize_unfilled`) costs as much as the read once a client's
//! buffer has grown (a tokio-postgres `BytesMut` of a few MiB: hundreds of microseconds).

#![allow(unsafe_code)]

use std::io;

use socket2::SockRef;
use tokio::io::ReadBuf;

/// One non-blocking `recv` on `sock` into the unfilled part of `buf`; the bytes read are
/// added to its filled part. `Ok(0)` at end of stream (or when `buf` has no room).
pub(crate) fn recv_uninit(sock: SockRef<'_>, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: `recv` only writes into the slice, and nothing here de-initialises any of its
    // bytes (the one thing `unfilled_mut` forbids).
    let dst = unsafe { buf.unfilled_mut() };
    let n = sock.recv(dst)?;
    // SAFETY: the kernel wrote the first `n` bytes of the unfilled part.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}
