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
//! Scale run (`LIVEPOOL_SCALE=1 cargo bench --bench eviction`; about 90 s): as many idle
//! connections as fit (≈ 10,000) with `FrameHeartbeat` every 30 s against a ping server on its
//! own thread; reports heap bytes per connection (a counting global allocator, which counts
//! the server thread's allocations separately) and CPU over a 60 s idle window (process total,
//! minus the server thread's own CPU time).
//!
//! Results and findings: /tmp/bench-results-eviction.md (merged into BENCHMARKS.md by the lead).

mod common;
use common::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group};
use livepool::{EvictReason, FrameHeartbeat};
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
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&addr.into()).expect("bind");
    s.listen(4096).expect("listen");
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
// The ping server (own thread, own runtime): answers FrameHeartbeat pings; can FIN any
// connection on request. Its thread is tagged so that its allocations are counted apart. (The
// scale run puts it in a child process instead: see `ChildServer`.)

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
    let mut frame = [0u8; FrameHeartbeat::LEN];
    loop {
        tokio::select! {
            _ = &mut kill => return,
            r = stream.read_exact(&mut frame) => {
                if r.is_err() {
                    return;
                }
                let (kind, seq, ts) = FrameHeartbeat::decode(&frame);
                if kind != FrameHeartbeat::PING {
                    return;
                }
                let pong = FrameHeartbeat::encode(FrameHeartbeat::PONG, seq, ts);
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
        s.write_all(&FrameHeartbeat::encode(FrameHeartbeat::PING, seq, 0))
            .await?;
        let mut pong = [0u8; FrameHeartbeat::LEN];
        s.read_exact(&mut pong).await?;
        let (kind, echoed, _) = FrameHeartbeat::decode(&pong);
        if kind != FrameHeartbeat::PONG || echoed != seq {
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
// Scale run: memory per idle connection and the reaper's CPU with heartbeats every 30 s.

fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Set in the environment of the scale run's ping server: this same binary, in a child
/// process, so that the measured process holds only the pool's (client) ends.
const CHILD_SERVER_ENV: &str = "LIVEPOOL_PING_SERVER_CHILD";

/// The child's main: a `PingServer`, its address on stdout, serving until stdin closes.
fn child_server_main() {
    let server = PingServer::start();
    println!("{}", server.addr);
    let _ = io::stdout().flush();
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    drop(server);
}

/// The scale run's ping server in a child process; killed when dropped.
struct ChildServer {
    addr: SocketAddr,
    child: std::process::Child,
}

impl ChildServer {
    fn start() -> ChildServer {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().expect("bench executable"))
            .env(CHILD_SERVER_ENV, "1")
            .env_remove("LIVEPOOL_SCALE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the ping server process");
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("child stdout"))
            .read_line(&mut line)
            .expect("read the ping server's address");
        let addr = line.trim().parse().expect("ping server address");
        ChildServer { addr, child }
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
        drop(self.child.stdin.take());
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
    let window = Duration::from_secs(
        std::env::var("LIVEPOOL_SCALE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let server = ChildServer::start();
    // Only the client ends live in this process: 10,000 fit under the fd limit.
    let n = fd_limit().saturating_sub(open_fds() + 1_100).min(10_000);
    println!(
        "scale: N = {n} idle connections (fd limit {}, {} open before; ping server in child process {})",
        fd_limit(),
        open_fds(),
        server.child.id()
    );
    let rt = two_workers();

    // Baseline: what a bare tokio TcpStream costs on the heap (registration with the driver).
    let bare = 1000;
    let p0 = POOL_BYTES.load(Relaxed);
    let held = rt.block_on(async {
        let mut v = Vec::with_capacity(bare);
        for _ in 0..bare {
            v.push(TcpStream::connect(server.addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        v
    });
    let p1 = POOL_BYTES.load(Relaxed);
    println!(
        "scale: bare tokio TcpStream: {} B per connection (incl. its Vec slot)",
        (p1 - p0) / bare as isize,
    );
    rt.block_on(async move {
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });

    let (p0, rss0) = (POOL_BYTES.load(Relaxed), vm_rss_kib());
    let fill_start = Instant::now();
    let pool = rt.block_on(async {
        let pool = livepool::Pool::builder(server.addr)
            .max_size(n)
            .min_idle(n)
            .heartbeat(FrameHeartbeat::new())
            .heartbeat_interval(Duration::from_secs(30))
            .build()
            .expect("livepool");
        let start = Instant::now();
        let mut report = start;
        while pool.status().idle < n {
            assert!(
                start.elapsed() < 3 * SETUP_DEADLINE,
                "fill to {n} did not finish: {:?}",
                pool.status()
            );
            if report.elapsed() >= Duration::from_secs(2) {
                report = Instant::now();
                let st = pool.statistics();
                println!(
                    "scale: filling, t={:.1}s {:?} created={} connect_errors={}",
                    start.elapsed().as_secs_f64(),
                    pool.status(),
                    st.created,
                    st.connect_errors,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        pool
    });
    let fill = fill_start.elapsed();
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    let (p1, rss1) = (POOL_BYTES.load(Relaxed), vm_rss_kib());
    println!(
        "scale: filled to {n} idle by min_idle refill in {:.2} s",
        fill.as_secs_f64()
    );
    println!(
        "scale: heap growth {} B total = {} B per connection; VmRSS +{} KiB = {} B per connection",
        p1 - p0,
        (p1 - p0) / n as isize,
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) * 1024 / n
    );

    // CPU over an idle window that holds at least one heartbeat round. The whole process is
    // the pool's side now; the server's CPU is read from the child for reference.
    let (cpu0, srv0, t0) = (process_cpu(), server.cpu(), Instant::now());
    let stats0 = pool.statistics();
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(5));
        println!(
            "scale: t={:>4.1}s heartbeats so far {} cpu {:.3}s (server process {:.3}s)",
            t0.elapsed().as_secs_f64(),
            pool.statistics().heartbeats - stats0.heartbeats,
            (process_cpu() - cpu0).as_secs_f64(),
            (server.cpu().saturating_sub(srv0)).as_secs_f64(),
        );
        let _ = io::stdout().flush();
    }
    let wall = t0.elapsed();
    let (cpu, srv) = (process_cpu() - cpu0, server.cpu().saturating_sub(srv0));
    let stats1 = pool.statistics();
    let beats = stats1.heartbeats - stats0.heartbeats;
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    println!(
        "scale: window {:.1} s: {beats} heartbeats ({:.2} per connection); CPU: pool process {:.3} s = {:.3} % of a core; server process {:.3} s = {:.3} %",
        wall.as_secs_f64(),
        beats as f64 / n as f64,
        cpu.as_secs_f64(),
        pct(cpu),
        srv.as_secs_f64(),
        pct(srv),
    );
    println!(
        "scale: evictions during the window: {} (before {}), status {:?}",
        stats1.evicted_total() - stats0.evicted_total(),
        stats0.evicted_total(),
        pool.status()
    );
    rt.block_on(async move {
        pool.close();
        drop(pool);
    });
    drop(rt);
    drop(server);
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
