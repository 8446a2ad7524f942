//! What the benches share: their runtimes, livepool's own kernel check at checkout (for
//! peers that have none), latency figures and deadpool as most users run it.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleResult};

use tokio::net::TcpStream;
use tokio::runtime::Runtime;

pub fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("current-thread runtime")
}

pub fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
}

/// The same non-blocking one-byte `recv(MSG_PEEK)` that livepool runs at checkout:
/// `Ok(0)` is EOF, WouldBlock is alive.
pub fn peek(stream: &TcpStream) -> io::Result<usize> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(stream).recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// The `p` quantile of a sorted sample (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A deadpool manager over plain `TcpStream`s (`TCP_NODELAY`, as livepool sets by default)
/// whose recycle checks nothing: deadpool as most users run it.
#[derive(Debug)]
pub struct NoopManager {
    pub addr: SocketAddr,
}

impl deadpool::managed::Manager for NoopManager {
    type Type = TcpStream;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<io::Error> {
        Ok(())
    }
}
