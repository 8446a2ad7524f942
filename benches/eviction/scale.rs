//!
//! Scale run (no criterion): idle connections with `FramePing` every 30 s, one size after
//! the other, each with its own server and pools. The 1k / 10k / 100k table in one command:
//!
//! ```text
//! LIVEPOOL_SCALE=1 LIVEPOOL_SCALE_N=1000,10000,100000 LIVEPOOL_SCALE_SECS=35 cargo bench --bench eviction
//! ```
//!
//! (several minutes; 100,000 connections need an open-file hard limit above 100,000, or root
//! with `CAP_SYS_RESOURCE` to raise it). Environment:
//! - `LIVEPOOL_SCALE=1`: run the scale run instead of the criterion part;
//! - `LIVEPOOL_SCALE_N`: a size or a comma list of sizes, run in turn (default 100000);
//! - `LIVEPOOL_SCALE_SECS`: the idle window of each size, in s (default 60; above 30 it holds
//!   a heartbeat round);
//! - `LIVEPOOL_SCALE_FINS`: server-side FINs per size (default 500);
//! - `LIVEPOOL_SCALE_PER_PORT`: most connections per server port, i.e. per pool (default and
//!   upper bound 25,000).
//!
//! Setup. The bench raises its own `RLIMIT_NOFILE` (soft to hard and, when the hard limit is
//! too low and it runs as root, the hard limit too, up to `fs.nr_open`; nothing system-wide
//! changes), and says how in its first line; when N connections still do not fit, an
//! `only … fit` line says so and the size runs with what fits. Per size, the ping server is this same binary in a child process
//! (which inherits the limit, so that this process holds only the client ends), listening on
//! ceil(N / 25,000) loopback ports (backlog 65,535 asked; the kernel caps it at
//! `net.core.somaxconn`) and driven by line commands on its stdin/stdout (see
//! `child_server_main`). One client address reaches one server `ip:port` through at most the
//! ephemeral port range (≈ 28,000), hence one `livepool::Pool` per port, each with
//! `max_size` = `min_idle` = its share (≤ 25,000, or `LIVEPOOL_SCALE_PER_PORT`). All pools
//! live in this process on one 2-worker runtime; every figure is a total over them.
//!
//! Lines of one size (prefixed `scale: [N=…]`):
//! - `bare tokio TcpStream`: the baseline, heap bytes of a bare tokio `TcpStream` (1,000 of
//!   them, to the first port);
//! - `filling` (every 5 s) and `filled … in`: the fill time, from building the pools until all
//!   hold their share, by their own `min_idle` refill;
//! - `heap growth`: heap bytes per idle connection (a counting global allocator; all pools
//!   together / N) and VmRSS growth per connection;
//! - `t=…` (every 5 s) and `window`: over the idle window, the heartbeats counted by
//!   `Statistics::heartbeats` (summed over the pools) and this process's CPU as % of one core,
//!   with the server process's CPU for reference; then the evictions during the window;
//! - `heartbeat spread`: the pings the server answered in each 1 s of the window (it notes the
//!   arrival of every ping on `CLOCK_MONOTONIC`), then max / min / mean per second, how many
//!   seconds had pings and the busiest second's share: a burst of N pings in a few seconds
//!   versus an even spread;
//! - `FIN -> eviction event`: `LIVEPOOL_SCALE_FINS` server ends chosen at random are closed
//!   (FIN) by the server one at a time; the time from the server's `CLOCK_MONOTONIC` just
//!   before close(2) to `recv` returning that connection's event (matched by `local_addr`,
//!   which is the server's peer address) from `events()` of its pool, on the same clock, as
//!   p50 / p99 / max. An event missing after 5 s counts as missed (the FIN phase is bounded
//!   too). Split by where the subscriber runs: a task on the runtime's workers (even FINs) or
//!   the main thread in `block_on` (odd ones); the event's own `detected_at` / `evicted_at`,
//!   on the same clock, for comparison;
//! - `refill`: for about 20 of those FINs, the time from the event until the pool's
//!   `status().idle` is back at its share (polled every ~20 µs from the main thread, outside
//!   the runtime) and the process CPU meanwhile. Every FIN waits for its pool's refill and
//!   for the watchers to re-arm before the next one;
//! - `SUMMARY`: all of the above in one line; every size's line is printed again at the end,
//!   as a table.

use livepool_testkit::bench::*;

use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use livepool::FramePing;
use tokio::net::TcpStream;

use crate::alloc::POOL_BYTES;
use crate::child::{CHILD_BACKLOG, CHILD_SERVER_ENV};
use crate::shared::{
    EVENT_DEADLINE, env_or, fd_limit, mono_ns, open_fds, process_cpu, process_cpu_split, summary,
};

/// Most connections per server port (one pool each): from one client address, one server
/// `ip:port` is reached through at most the ephemeral port range (≈ 28,000 by default).
const PER_PORT: usize = 25_000;

/// Descriptors kept free next to the N client ends (the bare-TcpStream baseline's 1,000,
/// runtimes, pipes).
const FD_SPARE: usize = 1_100;

/// Bound on one reply line of the child server.
const CHILD_REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// `LIVEPOOL_SCALE_N`: one size or a comma list of sizes, run in turn (default 100,000).
fn scale_sizes() -> Vec<usize> {
    let Ok(s) = std::env::var("LIVEPOOL_SCALE_N") else {
        return vec![100_000];
    };
    let sizes: Vec<usize> = s
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    assert!(
        !sizes.is_empty(),
        "LIVEPOOL_SCALE_N={s:?}: expected a number or a comma list of numbers"
    );
    sizes
}

fn read_proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (soft, hard) `RLIMIT_NOFILE` of this process.
fn nofile() -> (libc::rlim_t, libc::rlim_t) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises this process's `RLIMIT_NOFILE` (the child server inherits it) so that `want`
/// descriptors fit: the soft limit to the hard one and, when the hard one is too low and we
/// are root, the hard one too (to `want`, at most `/proc/sys/fs/nr_open`). Nothing
/// system-wide changes. Returns a line saying what was done.
fn raise_nofile(want: usize) -> String {
    let (soft0, hard0) = nofile();
    let nr_open = read_proc_u64("/proc/sys/fs/nr_open").unwrap_or(1 << 20) as libc::rlim_t;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let want = want as libc::rlim_t;
    let hard = if hard0 < want && root {
        want.min(nr_open)
    } else {
        hard0
    };
    let set = |soft: libc::rlim_t, hard: libc::rlim_t| {
        let r = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 }
    };
    // The soft limit may not exceed nr_open even under an unlimited hard one.
    let outcome = if set(hard.min(nr_open), hard) {
        "ok".to_string()
    } else {
        let e = io::Error::last_os_error();
        if hard != hard0 && set(hard0.min(nr_open), hard0) {
            format!("raising the hard limit failed ({e}), the soft one is at the hard one")
        } else {
            format!("setrlimit failed: {e}")
        }
    };
    let (soft1, hard1) = nofile();
    format!(
        "RLIMIT_NOFILE soft {soft0} -> {soft1}, hard {hard0} -> {hard1} (wanted {want}; fs.nr_open {nr_open}; root: {root}): {outcome}"
    )
}

/// The scale run's ping server in a child process (see `child_server_main`), driven over its
/// stdin/stdout; killed when dropped.
struct ChildServer {
    addrs: Vec<SocketAddr>,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// The child's stdout line by line, from a reader thread, so that every wait is bounded.
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildServer {
    fn start(ports: usize) -> ChildServer {
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().expect("bench executable"))
            .env(CHILD_SERVER_ENV, ports.to_string())
            .env_remove("LIVEPOOL_SCALE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the ping server process");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(CHILD_REPLY_DEADLINE)
            .expect("the ping server did not start");
        let addrs = first
            .strip_prefix("addrs ")
            .expect("the ping server's addresses")
            .split_whitespace()
            .map(|a| a.parse().expect("ping server address"))
            .collect();
        ChildServer {
            addrs,
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Sends one command line; returns the first reply line (None: no reply in time).
    fn request(&mut self, cmd: &str) -> Option<String> {
        if !self.send(cmd) {
            return None;
        }
        self.lines.recv_timeout(CHILD_REPLY_DEADLINE).ok()
    }

    fn count(&mut self) -> Option<usize> {
        self.request("count")?.strip_prefix("count ")?.parse().ok()
    }

    /// Every connection the server holds: (port index, client address).
    fn list(&mut self) -> Vec<(usize, SocketAddr)> {
        let mut conns = Vec::new();
        let mut line = self.request("list");
        // One line per connection, each within the reply deadline, up to "end".
        while let Some(l) = line.take()
            && conns.len() < 4_000_000
        {
            let Some((p, a)) = l.strip_prefix("conn ").and_then(|r| r.split_once(' ')) else {
                break;
            };
            if let (Ok(p), Ok(a)) = (p.parse(), a.parse()) {
                conns.push((p, a));
            }
            line = self.lines.recv_timeout(CHILD_REPLY_DEADLINE).ok();
        }
        conns
    }

    /// Sends one command line without waiting for its reply.
    fn send(&mut self, cmd: &str) -> bool {
        // A late reply to an earlier request would be taken for this one's.
        while self.lines.try_recv().is_ok() {}
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .is_ok()
    }

    /// Closes (FIN) the server end of (port, client); the `CLOCK_MONOTONIC` ns taken just
    /// before its close(2), or None when the server holds no such connection.
    fn fin(&mut self, port: usize, peer: SocketAddr) -> Option<u64> {
        if !self.send(&format!("fin {port} {peer}")) {
            return None;
        }
        self.fin_reply()
    }

    /// The reply to a `fin` sent with `send`.
    fn fin_reply(&mut self) -> Option<u64> {
        let reply = self.lines.recv_timeout(CHILD_REPLY_DEADLINE).ok()?;
        reply
            .strip_prefix("closed ")?
            .rsplit_once(' ')?
            .1
            .parse()
            .ok()
    }

    /// Pings answered before `from`, and in each 1 s of [from, to) (`CLOCK_MONOTONIC` ns).
    fn hist(&mut self, from: u64, to: u64) -> Option<(u64, Vec<u64>)> {
        let reply = self.request(&format!("hist {from} {to}"))?;
        let mut w = reply
            .strip_prefix("hist ")?
            .split_whitespace()
            .map(str::parse::<u64>);
        let before = w.next()?.ok()?;
        let counts = w.collect::<Result<Vec<_>, _>>().ok()?;
        Some((before, counts))
    }

    /// CPU time (user + system) the child has used, from /proc/PID/stat.
    fn cpu(&self) -> Duration {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                // Fields after the command name (which is in parentheses): utime is the 12th,
                // stime the 13th.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .map_or(Duration::ZERO, |t| Duration::from_secs_f64(t / ticks))
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vm_rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub(crate) fn scale_run() {
    let sizes = scale_sizes();
    let window = Duration::from_secs(env_or("LIVEPOOL_SCALE_SECS", 60u64));
    let fins: usize = env_or("LIVEPOOL_SCALE_FINS", 500usize);
    let max_n = sizes.iter().copied().max().unwrap_or(0);
    println!(
        "scale: sizes {sizes:?}, idle window {} s, {fins} FINs per size; {}",
        window.as_secs(),
        raise_nofile(max_n + 2 * FD_SPARE),
    );
    let rt = two_workers();
    let summaries: Vec<String> = sizes
        .iter()
        .map(|&n| {
            let line = scale_size(&rt, n, window, fins);
            println!("{line}");
            let _ = io::stdout().flush();
            line
        })
        .collect();
    println!("scale: ---- summary, one line per size ----");
    for line in &summaries {
        println!("{line}");
    }
    drop(rt);
}

/// One size of the scale run: its own child server and pools; returns the summary line.
fn scale_size(rt: &tokio::runtime::Runtime, asked: usize, window: Duration, fins: usize) -> String {
    let fit = fd_limit().saturating_sub(open_fds() + FD_SPARE);
    let n = asked.min(fit);
    if n < asked {
        println!(
            "scale: [N={asked}] only {fit} connections fit under the open-file limit ({}, {} open, {FD_SPARE} kept spare): running N = {n} instead of {asked}",
            fd_limit(),
            open_fds(),
        );
    }
    if n == 0 {
        return format!("scale: SUMMARY N={asked} skipped: no descriptor left");
    }
    let tag = format!("[N={n}]");
    // `LIVEPOOL_SCALE_PER_PORT` lowers the share of a port, e.g. to see several ports (one
    // pool each) under a low open-file limit.
    let per_port = env_or("LIVEPOOL_SCALE_PER_PORT", PER_PORT).clamp(1, PER_PORT);
    let ports = n.div_ceil(per_port);
    let shares: Vec<usize> = (0..ports)
        .map(|i| n / ports + usize::from(i < n % ports))
        .collect();
    let mut server = ChildServer::start(ports);
    println!(
        "scale: N = {n} idle connections over {ports} server port(s), one pool each holding {shares:?} (fd limit {}, {} open before; ping server in child process {}, listen backlog {CHILD_BACKLOG} asked, net.core.somaxconn {} caps it)",
        fd_limit(),
        open_fds(),
        server.child.id(),
        read_proc_u64("/proc/sys/net/core/somaxconn").unwrap_or(0),
    );

    // Baseline: what a bare tokio TcpStream costs on the heap (registration with the driver).
    let bare = 1000;
    let p0 = POOL_BYTES.load(Relaxed);
    let first = server.addrs[0];
    let held = rt.block_on(async {
        let mut v = Vec::with_capacity(bare);
        for _ in 0..bare {
            v.push(TcpStream::connect(first).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        v
    });
    let p1 = POOL_BYTES.load(Relaxed);
    println!(
        "scale: {tag} bare tokio TcpStream: {} B per connection (incl. its Vec slot)",
        (p1 - p0) / bare as isize,
    );
    rt.block_on(async move {
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });

    // Fill: one pool per port, each to its share by min_idle refill, all at once.
    let (p0, rss0) = (POOL_BYTES.load(Relaxed), vm_rss_kib());
    let fill_start = Instant::now();
    let fill_deadline = Duration::from_secs(120 + n as u64 / 500);
    let pools: Vec<livepool::Pool<FramePing>> = rt.block_on(async {
        server
            .addrs
            .iter()
            .zip(&shares)
            .map(|(&addr, &share)| {
                livepool::Pool::builder(addr)
                    .max_size(share)
                    .min_idle(share)
                    .protocol(FramePing::new())
                    .heartbeat_interval(Duration::from_secs(30))
                    .build()
                    .expect("livepool")
            })
            .collect()
    });
    let idle =
        |pools: &[livepool::Pool<FramePing>]| pools.iter().map(|p| p.status().idle).sum::<usize>();
    let filled = rt.block_on(async {
        let mut report = Instant::now();
        loop {
            if idle(&pools) >= n {
                return true;
            }
            if fill_start.elapsed() > fill_deadline {
                return false;
            }
            if report.elapsed() >= Duration::from_secs(5) {
                report = Instant::now();
                let stats: Vec<livepool::Statistics> =
                    pools.iter().map(livepool::Pool::statistics).collect();
                println!(
                    "scale: {tag} filling, t={:.1}s idle {} size {} created={} connect_errors={}",
                    fill_start.elapsed().as_secs_f64(),
                    idle(&pools),
                    pools.iter().map(|p| p.status().size).sum::<usize>(),
                    stats.iter().map(|s| s.created).sum::<u64>(),
                    stats.iter().map(|s| s.connect_errors).sum::<u64>(),
                );
                let _ = io::stdout().flush();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let fill = fill_start.elapsed();
    if !filled {
        let statuses: Vec<livepool::Status> = pools.iter().map(livepool::Pool::status).collect();
        let reached = idle(&pools);
        println!(
            "scale: {tag} fill stopped at {reached} of {n} idle after {:.1} s (bound): {statuses:?}; this size is skipped",
            fill.as_secs_f64(),
        );
        close_pools(rt, pools);
        return format!(
            "scale: SUMMARY N={n} ports={ports} | fill did not finish in {:.0} s ({reached} idle)",
            fill.as_secs_f64(),
        );
    }
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    let (p1, rss1) = (POOL_BYTES.load(Relaxed), vm_rss_kib());
    let heap_per = (p1 - p0) / n as isize;
    let rss_per = rss1.saturating_sub(rss0) * 1024 / n;
    println!(
        "scale: {tag} filled to {n} idle by min_idle refill in {:.2} s",
        fill.as_secs_f64()
    );
    println!(
        "scale: {tag} heap growth {} B total = {heap_per} B per connection; VmRSS +{} KiB = {rss_per} B per connection",
        p1 - p0,
        rss1.saturating_sub(rss0),
    );
    // The server accepts after the client's connect completed: wait (bounded) until it holds
    // every connection, so that the FIN phase can pick any.
    let accept_deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        let c = server.count().unwrap_or(0);
        if c >= n || Instant::now() > accept_deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if accepted != n {
        println!("scale: {tag} the server holds {accepted} connections, not {n}");
    }

    // CPU over an idle window that holds at least one heartbeat round. The whole process is
    // the pools' side; the server's CPU is read from the child for reference.
    let beats = |pools: &[livepool::Pool<FramePing>]| {
        pools.iter().map(|p| p.statistics().heartbeats).sum::<u64>()
    };
    let evicted = |pools: &[livepool::Pool<FramePing>]| {
        pools
            .iter()
            .map(|p| p.statistics().evicted_total())
            .sum::<u64>()
    };
    let (cpu0, srv0, t0, m0) = (process_cpu(), server.cpu(), Instant::now(), mono_ns());
    let split0 = process_cpu_split();
    let (beats0, evicted0) = (beats(&pools), evicted(&pools));
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5).min(window.saturating_sub(t0.elapsed())));
        println!(
            "scale: {tag} t={:>4.1}s heartbeats so far {} cpu {:.3}s (server process {:.3}s)",
            t0.elapsed().as_secs_f64(),
            beats(&pools) - beats0,
            (process_cpu() - cpu0).as_secs_f64(),
            (server.cpu().saturating_sub(srv0)).as_secs_f64(),
        );
        let _ = io::stdout().flush();
    }
    let wall = t0.elapsed();
    let (cpu, srv) = (process_cpu() - cpu0, server.cpu().saturating_sub(srv0));
    let window_beats = beats(&pools) - beats0;
    let split1 = process_cpu_split();
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    // Per heartbeat, user and kernel apart: on loopback the kernel time includes the TCP
    // receive processing of each segment, which runs in the sender's context.
    let per_beat = |d: Duration| us(d) / window_beats.max(1) as f64;
    println!(
        "scale: {tag} CPU per heartbeat: {:.1} us user + {:.1} us kernel (pool process)",
        per_beat(split1.0.saturating_sub(split0.0)),
        per_beat(split1.1.saturating_sub(split0.1)),
    );
    println!(
        "scale: {tag} window {:.1} s: {window_beats} heartbeats ({:.2} per connection); CPU: pool process {:.3} s = {:.3} % of a core; server process {:.3} s = {:.3} %",
        wall.as_secs_f64(),
        window_beats as f64 / n as f64,
        cpu.as_secs_f64(),
        pct(cpu),
        srv.as_secs_f64(),
        pct(srv),
    );
    println!(
        "scale: {tag} evictions during the window: {} (before {evicted0}), idle {} of {n}",
        evicted(&pools) - evicted0,
        idle(&pools),
    );

    // Heartbeat spread: the pings the server answered in each whole second of the window.
    let m1 = m0 + window.as_secs() * 1_000_000_000;
    let spread = match server.hist(m0, m1) {
        Some((before, counts)) if !counts.is_empty() => {
            let total: u64 = counts.iter().sum();
            let max = counts.iter().copied().max().unwrap_or(0);
            let min = counts.iter().copied().min().unwrap_or(0);
            let mean = total as f64 / counts.len() as f64;
            let busy = counts.iter().filter(|&&c| c > 0).count();
            let shown: Vec<String> = counts.iter().map(ToString::to_string).collect();
            println!(
                "scale: {tag} heartbeat spread, pings answered per 1 s of the window: {}",
                shown.join(" ")
            );
            println!(
                "scale: {tag} heartbeat spread: {total} pings in {} s ({before} before the window); per second max {max} min {min} mean {mean:.1}; {busy} of {} seconds had pings; the busiest second holds {:.1} % of them",
                counts.len(),
                counts.len(),
                100.0 * max as f64 / total.max(1) as f64,
            );
            format!(
                "pings/s max {max} min {min} mean {mean:.0} ({busy} of {} s with pings)",
                counts.len()
            )
        }
        _ => {
            println!("scale: {tag} heartbeat spread: no histogram from the server");
            "pings/s n/a".to_string()
        }
    };

    let fin = fin_phase(rt, &mut server, &pools, &shares, fins, &tag);
    close_pools(rt, pools);
    drop(server);
    format!(
        "scale: SUMMARY N={n} ports={ports} | heap {heap_per} B/conn, VmRSS {rss_per} B/conn | fill {:.1} s | idle CPU {:.3} % of a core, {window_beats} heartbeats in {:.0} s | {spread} | {fin}",
        fill.as_secs_f64(),
        pct(cpu),
        wall.as_secs_f64(),
    )
}

fn close_pools(rt: &tokio::runtime::Runtime, pools: Vec<livepool::Pool<FramePing>>) {
    rt.block_on(async move {
        for p in &pools {
            p.close();
        }
        drop(pools);
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
}

/// Waits (bounded) for the eviction event of the connection whose client address is `peer`;
/// stamps its arrival (`CLOCK_MONOTONIC` ns and `Instant`) the moment `recv` returns it.
async fn stamped_event(
    mut ev: livepool::Events,
    peer: SocketAddr,
) -> (
    livepool::Events,
    Option<(u64, Instant, livepool::EvictionEvent)>,
) {
    let got = tokio::time::timeout(EVENT_DEADLINE, async {
        loop {
            match ev.recv().await {
                Ok(e) if e.local_addr == Some(peer) => {
                    return Some((mono_ns(), Instant::now(), e));
                }
                Ok(_) | Err(livepool::EventsError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    (ev, got)
}

/// FIN → eviction event for up to `fins` server ends chosen at random, one at a time (each
/// after its pool is back at its share and has re-armed its watchers), and the refill time
/// and CPU for about 20 of them. Returns the summary line's part.
fn fin_phase(
    rt: &tokio::runtime::Runtime,
    server: &mut ChildServer,
    pools: &[livepool::Pool<FramePing>],
    shares: &[usize],
    fins: usize,
    tag: &str,
) -> String {
    const REFILLS: usize = 20;
    const PHASE_DEADLINE: Duration = Duration::from_secs(240);
    const REFILL_DEADLINE: Duration = Duration::from_secs(10);
    let mut conns = server.list();
    let listed = conns.len();
    let mut events: Vec<Option<livepool::Events>> =
        pools.iter().map(|p| Some(p.events())).collect();
    // The pool's own Instants, on CLOCK_MONOTONIC (which std's Instant reads on Linux).
    let (anchor, anchor_ns) = (Instant::now(), mono_ns() as i128);
    let mono_of = |t: Instant| match t.checked_duration_since(anchor) {
        Some(d) => anchor_ns + d.as_nanos() as i128,
        None => anchor_ns - anchor.duration_since(t).as_nanos() as i128,
    };
    let mut rng = fastrand::Rng::with_seed(0x5eed_u64 ^ listed as u64);
    let (mut delivered, mut on_workers, mut off_workers) = (Vec::new(), Vec::new(), Vec::new());
    let (mut detected, mut evicted_at) = (Vec::new(), Vec::new());
    let (mut missed, mut gone, mut late, mut done) = (0usize, 0usize, 0usize, 0usize);
    let mut refills: Vec<(Duration, Duration)> = Vec::new();
    let every = (fins / REFILLS).max(1);
    let start = Instant::now();
    for i in 0..fins {
        if conns.is_empty() || start.elapsed() > PHASE_DEADLINE {
            break;
        }
        done += 1;
        let pick = rng.usize(..conns.len());
        let (port, peer) = conns.swap_remove(pick);
        let ev = events[port].take().expect("events");
        // Even FINs: the subscriber is a task on the runtime's workers (which also run the
        // reapers and their refills); odd FINs: this thread, outside the workers, in
        // `block_on`. Either is timed when `recv` returns.
        let on_worker = i % 2 == 0;
        let (closed_at, (ev, got)) = if on_worker {
            let waiter = rt.spawn(stamped_event(ev, peer));
            let closed_at = server.fin(port, peer);
            if closed_at.is_none() {
                waiter.abort();
            }
            (
                closed_at,
                rt.block_on(waiter).unwrap_or((pools[port].events(), None)),
            )
        } else {
            let sent = server.send(&format!("fin {port} {peer}"));
            let got = if sent {
                rt.block_on(stamped_event(ev, peer))
            } else {
                (ev, None)
            };
            (server.fin_reply(), got)
        };
        events[port] = Some(ev);
        let Some(closed_at) = closed_at else {
            gone += 1;
            continue;
        };
        let Some((recv_ns, recv_at, e)) = got else {
            missed += 1;
            continue;
        };
        let recv = Duration::from_nanos(recv_ns.saturating_sub(closed_at));
        if on_worker {
            on_workers.push(recv);
        } else {
            off_workers.push(recv);
        }
        delivered.push(recv);
        let since_close = |t: tokio::time::Instant| {
            Duration::from_nanos((mono_of(t.into_std()) - closed_at as i128).max(0) as u64)
        };
        detected.push(since_close(e.detected_at));
        evicted_at.push(since_close(e.evicted_at));
        // Back to the pool's share: polled often for the measured refills, every 1 ms for
        // the others (so that no refill overlaps the next FIN).
        let pool = &pools[port];
        let measure = i % every == every / 2 && refills.len() < REFILLS;
        let poll = if measure {
            Duration::from_micros(20)
        } else {
            Duration::from_millis(1)
        };
        let cpu0 = process_cpu();
        while pool.status().idle < shares[port] && recv_at.elapsed() < REFILL_DEADLINE {
            std::thread::sleep(poll);
        }
        let (took, cpu) = (recv_at.elapsed(), process_cpu().saturating_sub(cpu0));
        if pool.status().idle < shares[port] {
            late += 1;
        } else if measure {
            refills.push((took, cpu));
        }
        // Watchers park while the refill holds their members: let the reaper re-arm them.
        std::thread::sleep(Duration::from_millis(1 + shares[port] as u64 / 500));
    }
    let got = delivered.len();
    println!(
        "scale: {tag} FIN -> eviction event received (the server's close(2) to the event in this process, CLOCK_MONOTONIC in both): {}; missed (no event in 5 s) {missed}, connection already gone on the server {gone}; {done} of {fins} FINs in {:.1} s, from {listed} listed",
        summary(&mut delivered),
        start.elapsed().as_secs_f64(),
    );
    println!(
        "scale: {tag} FIN -> event received, by where the subscriber runs: a task on the runtime's workers {}; this thread, outside the workers {}",
        summary(&mut on_workers),
        summary(&mut off_workers),
    );
    println!(
        "scale: {tag} FIN -> the event's own timestamps: detected_at {}; evicted_at {}",
        summary(&mut detected),
        summary(&mut evicted_at),
    );
    let n_ref = refills.len().max(1) as u32;
    let mean_t = refills.iter().map(|r| r.0).sum::<Duration>() / n_ref;
    let mean_cpu = refills.iter().map(|r| r.1).sum::<Duration>() / n_ref;
    let each: Vec<String> = refills
        .iter()
        .map(|(t, cpu)| format!("{:.0}us(cpu {:.0}us)", us(*t), us(*cpu)))
        .collect();
    println!(
        "scale: {tag} refill after one eviction, event -> idle back at the pool's share (polled every ~20 us from outside the runtime; CPU is the whole process's): n={} mean {:.0}us max {:.0}us, CPU mean {:.0}us; not back within 10 s: {late}; each: {}",
        refills.len(),
        us(mean_t),
        us(refills.iter().map(|r| r.0).max().unwrap_or_default()),
        us(mean_cpu),
        each.join(" "),
    );
    let p = |v: &[Duration]| {
        format!(
            "{:.0}/{:.0}/{:.0}",
            us(percentile(v, 0.50)),
            us(percentile(v, 0.99)),
            us(v.last().copied().unwrap_or_default()),
        )
    };
    format!(
        "FIN->event p50/p99/max {} us (on a worker {}, off the workers {}, the pool's evicted_at {}; {got} of {done}, missed {missed}) | refill mean {:.0} us, CPU {:.0} us (n={})",
        p(&delivered),
        p(&on_workers),
        p(&off_workers),
        p(&evicted_at),
        us(mean_t),
        us(mean_cpu),
        refills.len(),
    )
}
