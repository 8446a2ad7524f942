//! Eviction latency: the time from a fault made by the peer to the pool's eviction event.
//!
//! Criterion part (`cargo bench --bench eviction`), `iter_custom`, one `BenchmarkId` per
//! (fault, K idle members):
//! - a livepool pool (idle watch on, the default) holds K idle members connected to a loopback
//!   server in this process; the server side of every connection is a plain blocking
//!   `std::net::TcpStream` in a map keyed by the client's address, accepted on demand from a
//!   non-blocking listener (backlog 4096), so no server task runs while a fault is timed;
//! - per iteration: take one idle member's server socket, start the clock, make the fault,
//!   await the eviction event for that connection (matched by `local_addr`) from
//!   `pool.events()`, stop the clock. Faults: `fin` (drop the server socket), `rst`
//!   (`SO_LINGER` 0, then drop), `bytes` (write 3 unsolicited bytes), `gone` (K = 1 only: drop
//!   the listener and the socket; the listener is bound again outside the timed interval);
//! - the pool is topped up by hand outside the timed interval (`min_idle` 0: check out every
//!   idle member and open the missing ones, then return them all) whenever it falls below
//!   K − 5 %, so a "K" case holds between 0.95·K and K idle members (K = 1: exactly 1);
//! - every single fault → event latency is also kept, and p50 / p99 / max are printed on
//!   stderr at the end of each case (warm-up iterations included).
//!
//! K: 1, 1,000 and as close to 10,000 as the open-file limit allows (the server side is in
//! this process, so K connections cost 2·K descriptors; see `max_k`). The runtime is a
//! current-thread one (the pool's reaper and the bench share one thread) except the `*-mt`
//! cases, which use a 2-worker multi-thread runtime.
//!
//! One-off measurements printed before the criterion cases (not criterion timings):
//! - "equivalents": deadpool (no-op recycle), bb8 (`test_on_check_out(false)` and `(true)` with
//!   a ping round trip) and livepool, each with one connection whose peer sends FIN while it is
//!   idle: how many dead connections the next checkout hands out, and what that checkout costs;
//! - "refill": with `min_idle(K)`, the time from the eviction event until the pool is back at
//!   K idle members.
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

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufRead as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use livepool::{EvictReason, FramePing};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// A counting global allocator: live heap bytes, split by "server thread" and "everything else".

struct Counting;

/// Live bytes allocated by threads other than the server's (the pool, the bench).
static POOL_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Live bytes allocated on the ping server's thread.
static SERVER_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static ON_SERVER: Cell<bool> = const { Cell::new(false) };
}

fn counter() -> &'static AtomicIsize {
    if ON_SERVER.try_with(Cell::get).unwrap_or(false) {
        &SERVER_BYTES
    } else {
        &POOL_BYTES
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            counter().fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            counter().fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        counter().fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            counter().fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Bound on waiting for one eviction event: a miss is counted and charged this much.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on any setup step (top-up, accept, fill).
const SETUP_DEADLINE: Duration = Duration::from_secs(60);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn fd_limit() -> usize {
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
fn max_k() -> usize {
    let free = fd_limit().saturating_sub(open_fds() + 100);
    (free / 2 / 50 * 50).min(10_000)
}

/// "n=… p50=… p99=… max=…" of a latency sample, in µs.
fn summary(lat: &mut [Duration]) -> String {
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
fn known_dead(stream: &TcpStream) -> bool {
    !matches!(peek(stream), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

// ---------------------------------------------------------------------------------------------
// The fault server: server ends held as plain blocking std sockets, accepted on demand.

struct FaultServer {
    addr: SocketAddr,
    listener: Option<std::net::TcpListener>,
    /// Server end of every connection, keyed by the client's address (its `local_addr`).
    socks: HashMap<SocketAddr, std::net::TcpStream>,
}

fn listen(addr: SocketAddr) -> std::net::TcpListener {
    listen_backlog(addr, 4096)
}

fn listen_backlog(addr: SocketAddr, backlog: i32) -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into()).expect("bind");
    s.listen(backlog).expect("listen");
    s.set_nonblocking(true).expect("nonblocking");
    s.into()
}

impl FaultServer {
    fn new() -> FaultServer {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        FaultServer {
            addr: listener.local_addr().expect("addr"),
            listener: Some(listener),
            socks: HashMap::new(),
        }
    }

    /// Accepts every connection waiting in the backlog.
    fn accept_pending(&mut self) {
        let Some(l) = &self.listener else { return };
        loop {
            match l.accept() {
                Ok((s, peer)) => {
                    s.set_nodelay(true).expect("nodelay");
                    self.socks.insert(peer, s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    fn rebind(&mut self) {
        if self.listener.is_none() {
            self.listener = Some(listen(self.addr));
        }
    }

    fn take_any(&mut self) -> (SocketAddr, std::net::TcpStream) {
        let key = *self.socks.keys().next().expect("no server socket left");
        let sock = self.socks.remove(&key).expect("present");
        (key, sock)
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Fin,
    Rst,
    Bytes,
    Gone,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Fin => "fin",
            Fault::Rst => "rst",
            Fault::Bytes => "bytes",
            Fault::Gone => "gone",
        }
    }

    fn expected(self) -> EvictReason {
        match self {
            Fault::Fin | Fault::Gone => EvictReason::PeerClosed,
            Fault::Rst => EvictReason::Reset,
            Fault::Bytes => EvictReason::UnexpectedData,
        }
    }

    /// Makes the fault; returns the server socket when it must outlive the timed interval.
    fn apply(
        self,
        sock: std::net::TcpStream,
        server: &mut FaultServer,
    ) -> Option<std::net::TcpStream> {
        match self {
            Fault::Fin => None,
            Fault::Rst => {
                socket2::SockRef::from(&sock)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER");
                None
            }
            Fault::Bytes => {
                use std::io::Write;
                (&sock).write_all(b"abc").expect("write stray bytes");
                Some(sock)
            }
            Fault::Gone => {
                server.listener = None;
                None
            }
        }
    }
}

/// Checks out every idle member and opens the missing ones until `k` are held, then returns
/// them all, accepts their server ends, and lets the watchers re-arm.
async fn top_up(pool: &livepool::Pool, server: &mut FaultServer, k: usize) {
    server.rebind();
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut held = Vec::with_capacity(k);
    while held.len() < k {
        let conn = tokio::time::timeout(SETUP_DEADLINE, pool.get())
            .await
            .expect("top-up get timed out")
            .expect("top-up get");
        held.push(conn);
        if held.len() % 1024 == 0 {
            server.accept_pending();
        }
    }
    drop(held);
    loop {
        server.accept_pending();
        if server.socks.len() >= k {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server ends not accepted in time"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Watchers park while their member is checked out; give the reaper time to re-arm them.
    tokio::time::sleep(Duration::from_millis(1 + k as u64 / 500)).await;
    assert_eq!(pool.status().idle, k, "pool not topped up");
}

/// Waits for the eviction event of the connection whose client address is `addr`.
async fn wait_event(events: &mut livepool::Events, addr: SocketAddr) -> EvictReason {
    loop {
        match events.recv().await {
            Ok(ev) if ev.local_addr == Some(addr) => return ev.reason,
            Ok(_) | Err(livepool::EventsError::Lagged(_)) => {}
            Err(e) => panic!("event stream: {e}"),
        }
    }
}

fn eviction_pool(addr: SocketAddr, k: usize) -> livepool::Pool {
    livepool::Pool::builder(addr)
        .max_size(k)
        .min_idle(0)
        .idle_timeout(None)
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("livepool")
}

/// One criterion case: `fault` against a pool of `k` idle members.
fn eviction_case(c: &mut Criterion, fault: Fault, k: usize, multi_thread: bool) {
    let rt = if multi_thread {
        two_workers()
    } else {
        current_thread()
    };
    let mut server = FaultServer::new();
    let pool = rt.block_on(async { eviction_pool(server.addr, k) });
    let mut events = pool.events();
    let low = k - k / 20;
    let mut lat: Vec<Duration> = Vec::with_capacity(16_384);
    let mut missed = 0u64;
    let mut reasons: HashMap<EvictReason, u64> = HashMap::new();
    // Samples over 1 ms: (iterations since the last top-up, ms since the pool was built mod
    // 1000, i.e. the phase of the reaper's 1 s tick).
    let mut slow: Vec<(u64, u128)> = Vec::new();
    let mut since_top_up = 0u64;
    let built = Instant::now();
    rt.block_on(top_up(&pool, &mut server, k));

    let name = if multi_thread {
        format!("{}-mt", fault.name())
    } else {
        fault.name().to_string()
    };
    let mut group = c.benchmark_group("eviction");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        // K = 1 pays a top-up (a connect) per iteration outside the timed interval, which
        // criterion's estimate does not see: give it longer to collect a few thousand samples.
        .measurement_time(Duration::from_millis(if k == 1 { 4000 } else { 600 }));
    group.bench_function(BenchmarkId::new(name.clone(), k), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if pool.status().idle < low || server.listener.is_none() {
                        top_up(&pool, &mut server, k).await;
                        since_top_up = 0;
                    }
                    since_top_up += 1;
                    let (addr, sock) = server.take_any();
                    let start = Instant::now();
                    let keep = fault.apply(sock, &mut server);
                    let got =
                        tokio::time::timeout(EVENT_DEADLINE, wait_event(&mut events, addr)).await;
                    let elapsed = start.elapsed();
                    match got {
                        Ok(reason) => *reasons.entry(reason).or_default() += 1,
                        Err(_) => missed += 1,
                    }
                    if elapsed > Duration::from_millis(1) {
                        slow.push((since_top_up, built.elapsed().as_millis() % 1000));
                    }
                    drop(keep);
                    total += elapsed;
                    lat.push(elapsed);
                }
                total
            })
        })
    });
    group.finish();
    let wrong: u64 = reasons
        .iter()
        .filter(|(r, _)| **r != fault.expected())
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "PCT eviction/{name}/{k}: {} missed={missed} wrong_reason={wrong} reasons={reasons:?} evicted_total={}",
        summary(&mut lat),
        pool.statistics().evicted_total()
    );
    let after_top_up = slow.iter().filter(|(i, _)| *i <= 3).count();
    eprintln!(
        "SLOW eviction/{name}/{k}: {} samples > 1 ms, {after_top_up} of them within 3 iterations of a top-up; (iter since top-up, tick phase ms): {:?}",
        slow.len(),
        &slow[..slow.len().min(40)]
    );
    rt.block_on(async move {
        pool.close();
        drop(pool);
    });
    drop(server);
    drop(rt);
}

// ---------------------------------------------------------------------------------------------
// One-off: with `min_idle(K)`, how long until the pool is back at K idle after one eviction.

fn refill_one_off(k: usize) {
    let rt = current_thread();
    let mut server = FaultServer::new();
    rt.block_on(async {
        let pool = livepool::Pool::builder(server.addr)
            .max_size(k)
            .min_idle(k)
            .idle_timeout(None)
            .build()
            .expect("livepool");
        let mut events = pool.events();
        let deadline = Instant::now() + SETUP_DEADLINE;
        while pool.status().idle < k || server.socks.len() < k {
            server.accept_pending();
            assert!(Instant::now() < deadline, "initial fill did not finish");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut times = Vec::new();
        for _ in 0..5 {
            let (addr, sock) = server.take_any();
            drop(sock);
            tokio::time::timeout(EVENT_DEADLINE, wait_event(&mut events, addr))
                .await
                .expect("no eviction event");
            let start = Instant::now();
            let cpu0 = process_cpu();
            let deadline = start + SETUP_DEADLINE;
            // Busy-polls (yielding) so the reaper runs as soon as it can.
            while pool.status().idle < k {
                assert!(Instant::now() < deadline, "refill did not finish");
                tokio::task::yield_now().await;
            }
            times.push((start.elapsed(), process_cpu().saturating_sub(cpu0)));
            server.accept_pending();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s: Vec<String> = times
            .iter()
            .map(|(t, cpu)| format!("{:.0}us(cpu {:.0}us)", us(*t), us(*cpu)))
            .collect();
        eprintln!(
            "REFILL K={k}: event -> idle==K again (us, 5 runs, busy-polling bench task included): {}",
            s.join(" ")
        );
        pool.close();
    });
}

// ---------------------------------------------------------------------------------------------
// The ping server (own thread, own runtime): answers FramePing pings; can FIN any
// connection on request. Its thread is tagged so that its allocations are counted apart. (The
// scale run has its own server, in a child process: see `child_server_main`.)

struct PingServer {
    addr: SocketAddr,
    kill: Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<()>>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PingServer {
    fn start() -> PingServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let kill: Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<()>>>> = Arc::default();
        let k2 = kill.clone();
        let thread = std::thread::spawn(move || {
            ON_SERVER.with(|c| c.set(true));
            let rt = current_thread();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("addr");
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, peer)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            let (tx, rx) = oneshot::channel();
                            k2.lock().expect("kill map").insert(peer, tx);
                            tokio::spawn(serve(stream, rx));
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ping server did not start");
        PingServer {
            addr,
            kill,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Closes (FIN) the server end of the connection whose client address is `client`,
    /// waiting (bounded) until the server has accepted it: a client's connect completes
    /// before the server thread runs `accept`.
    async fn fin(&self, client: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(tx) = self.kill.lock().expect("kill map").remove(&client) {
                let _ = tx.send(());
                return;
            }
            assert!(Instant::now() < deadline, "server never accepted {client}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for PingServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers each ping with a pong until EOF, an error, or a kill request (then closes: FIN).
async fn serve(mut stream: TcpStream, mut kill: oneshot::Receiver<()>) {
    let mut frame = [0u8; FramePing::LEN];
    loop {
        tokio::select! {
            _ = &mut kill => return,
            r = stream.read_exact(&mut frame) => {
                if r.is_err() {
                    return;
                }
                let (kind, seq, ts) = FramePing::decode(&frame);
                if kind != FramePing::PING {
                    return;
                }
                let pong = FramePing::encode(FramePing::PONG, seq, ts);
                if stream.write_all(&pong).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One ping round trip through any stream, bounded: true when the peer answered.
async fn ping_ok<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, seq: u32) -> bool {
    let exchange = async {
        s.write_all(&FramePing::encode(FramePing::PING, seq, 0))
            .await?;
        let mut pong = [0u8; FramePing::LEN];
        s.read_exact(&mut pong).await?;
        let (kind, echoed, _) = FramePing::decode(&pong);
        if kind != FramePing::PONG || echoed != seq {
            return Err(io::Error::other("bad pong"));
        }
        io::Result::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), exchange).await,
        Ok(Ok(()))
    )
}

// ---------------------------------------------------------------------------------------------
// Equivalents: deadpool and bb8, which have no background eviction.

struct Bb8Manager {
    addr: SocketAddr,
    seq: std::sync::atomic::AtomicU32,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn is_valid(&self, conn: &mut TcpStream) -> io::Result<()> {
        let seq = self.seq.fetch_add(1, Relaxed).wrapping_add(1);
        if ping_ok(conn, seq).await {
            Ok(())
        } else {
            Err(io::Error::other("ping failed"))
        }
    }

    /// Runs on return only (never at checkout); lets the demo discard a connection it found
    /// dead, as a real client that saw an I/O error would.
    fn has_broken(&self, conn: &mut TcpStream) -> bool {
        known_dead(conn)
    }
}

#[derive(Clone, Copy, Debug)]
enum Equiv {
    Livepool,
    Deadpool,
    Bb8NoTest,
    Bb8Ping,
}

/// Per pool, with one connection: `ROUNDS` times, FIN the idle connection from the server,
/// wait 3 ms (the FIN has long arrived), then time one `get()` and check with a ping whether
/// the connection it handed out is alive. Also times `get()` + drop on a healthy pool.
fn equivalents() {
    const ROUNDS: usize = 200;
    let server = PingServer::start();
    let rt = current_thread();
    eprintln!(
        "EQUIV pool | dead handed out after FIN | get() after FIN p50/p99 | healthy get()+drop p50/p99"
    );
    for which in [
        Equiv::Livepool,
        Equiv::Deadpool,
        Equiv::Bb8NoTest,
        Equiv::Bb8Ping,
    ] {
        rt.block_on(async {
            let addr = server.addr;
            let lp = livepool::Pool::builder(addr)
                .max_size(1)
                .min_idle(1)
                .build()
                .expect("livepool");
            let dp = deadpool::managed::Pool::<NoopManager>::builder(NoopManager { addr })
                .max_size(1)
                .build()
                .expect("deadpool");
            let bb = bb8::Pool::builder()
                .max_size(1)
                .test_on_check_out(matches!(which, Equiv::Bb8Ping))
                .build(Bb8Manager {
                    addr,
                    seq: Default::default(),
                })
                .await
                .expect("bb8");
            let mut seq = 0u32;
            let mut healthy = Vec::with_capacity(ROUNDS);
            let mut after = Vec::with_capacity(ROUNDS);
            let mut dead = 0usize;
            // Healthy get + drop (the connection stays open and is reused).
            for _ in 0..ROUNDS {
                let start = Instant::now();
                let local = match which {
                    Equiv::Livepool => lp.get().await.expect("get").local_addr(),
                    Equiv::Deadpool => dp.get().await.expect("get").local_addr(),
                    _ => bb.get().await.expect("get").local_addr(),
                };
                healthy.push(start.elapsed());
                local.expect("local addr");
            }
            for _ in 0..ROUNDS {
                // Which connection is idle now: check it out once and note its address.
                let local = match which {
                    Equiv::Livepool => lp.get().await.expect("get").local_addr(),
                    Equiv::Deadpool => dp.get().await.expect("get").local_addr(),
                    _ => bb.get().await.expect("get").local_addr(),
                }
                .expect("local addr");
                server.fin(local).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
                seq += 1;
                let start = Instant::now();
                let alive = match which {
                    Equiv::Livepool => {
                        let mut c = lp.get().await.expect("get");
                        after.push(start.elapsed());
                        let ok = ping_ok(&mut c, seq).await;
                        if !ok {
                            c.mark_broken();
                        }
                        ok
                    }
                    Equiv::Deadpool => {
                        let mut c = dp.get().await.expect("get");
                        after.push(start.elapsed());
                        let ok = ping_ok(&mut *c, seq).await;
                        if !ok {
                            // The caller saw the error: discard it, as a real client would.
                            drop(deadpool::managed::Object::take(c));
                        }
                        ok
                    }
                    _ => {
                        let mut c = bb.get().await.expect("get");
                        after.push(start.elapsed());
                        // On return, `has_broken` discards it if the ping found it dead.
                        ping_ok(&mut *c, seq).await
                    }
                };
                if !alive {
                    dead += 1;
                }
            }
            eprintln!(
                "EQUIV {which:?} | {dead}/{ROUNDS} | {:.1} / {:.1} us | {:.2} / {:.2} us",
                us(percentile(&sorted(after.clone()), 0.5)),
                us(percentile(&sorted(after), 0.99)),
                us(percentile(&sorted(healthy.clone()), 0.5)),
                us(percentile(&sorted(healthy), 0.99)),
            );
            lp.close();
        });
    }
    drop(rt);
    drop(server);
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------------------
// Scale run: per size (1k / 10k / 100k …), idle connections over several server ports (one pool
// each) with heartbeats every 30 s: memory, idle CPU, heartbeat spread, FIN → eviction latency
// and refill cost.

fn process_cpu() -> Duration {
    let (user, sys) = process_cpu_split();
    user + sys
}

/// This process's (user, kernel) CPU time.
fn process_cpu_split() -> (Duration, Duration) {
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
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Set in the environment of the scale run's ping server, to the number of ports it listens
/// on: this same binary, in a child process, so that the measured process holds only the
/// pools' (client) ends.
const CHILD_SERVER_ENV: &str = "LIVEPOOL_PING_SERVER_CHILD";

/// Most connections per server port (one pool each): from one client address, one server
/// `ip:port` is reached through at most the ephemeral port range (≈ 28,000 by default).
const PER_PORT: usize = 25_000;

/// Descriptors kept free next to the N client ends (the bare-TcpStream baseline's 1,000,
/// runtimes, pipes).
const FD_SPARE: usize = 1_100;

/// Backlog asked for on the child's listeners (the kernel caps it at `net.core.somaxconn`).
const CHILD_BACKLOG: i32 = 65_535;

/// Bound on one reply line of the child server.
const CHILD_REPLY_DEADLINE: Duration = Duration::from_secs(10);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

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

/// One connection held by the child server, and the way to close it: the sender gets the
/// `CLOCK_MONOTONIC` time taken just before the close.
struct ChildConn {
    id: u64,
    kill: oneshot::Sender<std::sync::mpsc::Sender<u64>>,
}

/// The child server's state, shared by its runtime thread and its command loop.
#[derive(Default)]
struct ChildState {
    /// Open connections by (listener index, client address): one client address may reach
    /// two listeners at once.
    conns: Mutex<HashMap<(usize, SocketAddr), ChildConn>>,
    /// Arrival time (`CLOCK_MONOTONIC` ns) of every ping answered.
    pings: Mutex<Vec<u64>>,
}

/// The child's main: listens on as many loopback ports as `CHILD_SERVER_ENV` says (backlog
/// `CHILD_BACKLOG`), answers `FramePing` pings on its own thread, prints
/// `addrs <a> <b> …`, then serves commands from stdin, one reply line each on stdout (`list`:
/// several), until stdin closes:
/// - `count` → `count <n>`: connections open now;
/// - `list` → `conn <port-index> <client-addr>` per connection, then `end`;
/// - `fin <port-index> <client-addr>` → `closed <port-index> <client-addr> <ns>`, where `ns`
///   is the `CLOCK_MONOTONIC` time just before the server end's close(2) (which sends the
///   FIN), or `missing …` when no such connection is open;
/// - `hist <from-ns> <to-ns>` → `hist <before> <c0> <c1> …`: pings answered before `from`,
///   then the pings answered in each 1 s of [from, to).
fn child_server_main() {
    let ports: usize = env_or(CHILD_SERVER_ENV, 1usize).max(1);
    let state = Arc::new(ChildState::default());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let st = state.clone();
    std::thread::spawn(move || {
        let rt = current_thread();
        rt.block_on(async move {
            let mut addrs = Vec::with_capacity(ports);
            for port in 0..ports {
                let l = listen_backlog(SocketAddr::from(([127, 0, 0, 1], 0)), CHILD_BACKLOG);
                let l = TcpListener::from_std(l).expect("tokio listener");
                addrs.push(l.local_addr().expect("addr"));
                tokio::spawn(child_accept(l, port, st.clone()));
            }
            addr_tx.send(addrs).expect("addrs");
            std::future::pending::<()>().await;
        });
    });
    let addrs: Vec<SocketAddr> = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("child server did not start");
    let mut out = io::stdout().lock();
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "addrs {}", shown.join(" "));
    let _ = out.flush();
    for line in io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if child_command(&line, &state, &mut out)
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
    // The runtime thread serves until the process ends: leave without joining it.
    std::process::exit(0);
}

fn child_command(line: &str, st: &ChildState, out: &mut impl io::Write) -> io::Result<()> {
    let mut words = line.split_whitespace();
    match words.next() {
        Some("count") => writeln!(out, "count {}", st.conns.lock().expect("conns").len()),
        Some("list") => {
            let keys: Vec<(usize, SocketAddr)> =
                st.conns.lock().expect("conns").keys().copied().collect();
            for (port, peer) in keys {
                writeln!(out, "conn {port} {peer}")?;
            }
            writeln!(out, "end")
        }
        Some("fin") => {
            let port = words.next().and_then(|p| p.parse::<usize>().ok());
            let peer = words.next().and_then(|a| a.parse::<SocketAddr>().ok());
            let (Some(port), Some(peer)) = (port, peer) else {
                return writeln!(out, "error {line}");
            };
            let conn = st.conns.lock().expect("conns").remove(&(port, peer));
            let (tx, rx) = std::sync::mpsc::channel();
            let closed = conn
                .and_then(|c| c.kill.send(tx).ok())
                .and_then(|()| rx.recv_timeout(Duration::from_secs(5)).ok());
            match closed {
                Some(at) => writeln!(out, "closed {port} {peer} {at}"),
                None => writeln!(out, "missing {port} {peer}"),
            }
        }
        Some("hist") => {
            let from = words.next().and_then(|x| x.parse::<u64>().ok());
            let to = words.next().and_then(|x| x.parse::<u64>().ok());
            let (Some(from), Some(to)) = (from, to) else {
                return writeln!(out, "error {line}");
            };
            let mut counts = vec![0u64; to.saturating_sub(from).div_ceil(1_000_000_000) as usize];
            let mut before = 0u64;
            for &t in st.pings.lock().expect("pings").iter() {
                if t < from {
                    before += 1;
                } else if t < to {
                    counts[((t - from) / 1_000_000_000) as usize] += 1;
                }
            }
            let shown: Vec<String> = counts.iter().map(ToString::to_string).collect();
            writeln!(out, "hist {before} {}", shown.join(" "))
        }
        _ => writeln!(out, "error {line}"),
    }
}

async fn child_accept(listener: TcpListener, port: usize, st: Arc<ChildState>) {
    let mut next = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                next += 1;
                let (tx, rx) = oneshot::channel();
                st.conns
                    .lock()
                    .expect("conns")
                    .insert((port, peer), ChildConn { id: next, kill: tx });
                tokio::spawn(child_serve(stream, (port, peer), next, rx, st.clone()));
            }
            // Out of descriptors or similar: the connection waits in the backlog meanwhile.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers each ping with a pong (noting its arrival time) until EOF, an error, or a `fin`
/// command (then closes: FIN).
async fn child_serve(
    mut stream: TcpStream,
    key: (usize, SocketAddr),
    id: u64,
    mut kill: oneshot::Receiver<std::sync::mpsc::Sender<u64>>,
    st: Arc<ChildState>,
) {
    let mut frame = [0u8; FramePing::LEN];
    loop {
        tokio::select! {
            reply = &mut kill => {
                // Err: the entry is gone without a request (not expected); close as well.
                if let Ok(reply) = reply {
                    let at = mono_ns();
                    drop(stream);
                    let _ = reply.send(at);
                }
                return;
            }
            r = stream.read_exact(&mut frame) => {
                if r.is_err() {
                    break;
                }
                let at = mono_ns();
                let (kind, seq, ts) = FramePing::decode(&frame);
                if kind != FramePing::PING {
                    break;
                }
                st.pings.lock().expect("pings").push(at);
                let pong = FramePing::encode(FramePing::PONG, seq, ts);
                if stream.write_all(&pong).await.is_err() {
                    break;
                }
            }
        }
    }
    // Closed by the client: forget it (unless the key now names a newer connection).
    let mut conns = st.conns.lock().expect("conns");
    if conns.get(&key).is_some_and(|c| c.id == id) {
        conns.remove(&key);
    }
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

fn scale_run() {
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

// ---------------------------------------------------------------------------------------------

fn bench_eviction(c: &mut Criterion) {
    let big = max_k();
    eprintln!(
        "eviction: K max = {big} (fd limit {}, {} open)",
        fd_limit(),
        open_fds()
    );
    equivalents();
    for k in [1000, big] {
        refill_one_off(k);
    }
    for k in [1, 1000, big] {
        for fault in [Fault::Fin, Fault::Rst, Fault::Bytes] {
            eviction_case(c, fault, k, false);
        }
        if k == 1 {
            eviction_case(c, Fault::Gone, 1, false);
        }
    }
    eviction_case(c, Fault::Fin, big, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_eviction
}

fn main() {
    if std::env::var_os(CHILD_SERVER_ENV).is_some() {
        child_server_main();
        return;
    }
    if std::env::var_os("LIVEPOOL_SCALE").is_some() {
        scale_run();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
