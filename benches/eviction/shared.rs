//! What several of the programs use: bounds, descriptor counts, latency summaries, the
//! kernel's view of a socket, listeners, CPU time and the monotonic clock, settings from the
//! environment.

use livepool_testkit::bench::*;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Bound on waiting for one eviction event: a miss is counted and charged this much.
pub(crate) const EVENT_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on any setup step (top-up, accept, fill).
pub(crate) const SETUP_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

pub(crate) fn fd_limit() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur as usize
}

/// The largest K ≤ 10,000 whose 2·K descriptors (both ends in this process) fit under the
/// open-file limit, keeping 100 spare (runtimes, criterion's files) and rounded down to 50.
pub(crate) fn max_k() -> usize {
    let free = fd_limit().saturating_sub(open_fds() + 100);
    (free / 2 / 50 * 50).min(10_000)
}

/// "n=… p50=… p99=… max=…" of a latency sample, in µs.
pub(crate) fn summary(lat: &mut [Duration]) -> String {
    lat.sort_unstable();
    format!(
        "n={} p50={:.1}us p99={:.1}us max={:.1}us",
        lat.len(),
        us(percentile(lat, 0.50)),
        us(percentile(lat, 0.99)),
        us(lat.last().copied().unwrap_or_default()),
    )
}

/// True when the kernel already knows the connection is closed, reset or has stray bytes.
pub(crate) fn known_dead(stream: &TcpStream) -> bool {
    !matches!(peek(stream), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

pub(crate) fn listen(addr: SocketAddr) -> std::net::TcpListener {
    listen_backlog(addr, 4096)
}

pub(crate) fn listen_backlog(addr: SocketAddr, backlog: i32) -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into()).expect("bind");
    s.listen(backlog).expect("listen");
    s.set_nonblocking(true).expect("nonblocking");
    s.into()
}

pub(crate) fn process_cpu() -> Duration {
    let (user, sys) = process_cpu_split();
    user + sys
}

/// This process's (user, kernel) CPU time.
pub(crate) fn process_cpu_split() -> (Duration, Duration) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// `CLOCK_MONOTONIC` in ns: the same clock in the bench and in its child server.
pub(crate) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}
