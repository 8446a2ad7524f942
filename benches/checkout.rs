//! Checkout + return of an idle connection: livepool with its default checks, side by side
//! with deadpool (no-op manager), bb8 (with and without a ping round trip on checkout) and
//! livepool's `Balancer` over one and three endpoints.
//!
//! Every pool talks to the same real loopback server (its own thread and runtime), which
//! answers 8-byte ping frames with 8-byte pongs and otherwise keeps connections open. The
//! server listens on three addresses (127.0.0.1, 127.0.0.2 and 127.0.0.3, each on a port of
//! its own; all of 127.0.0.0/8 is loopback), so that the balancer rows have three endpoints;
//! every other row uses the first.
//!
//! Scenarios (one `BenchmarkId` per configuration and scenario, all in the group `checkout`):
//! - `uncontended`: one task on a current-thread runtime, `get` + drop in a loop of `iters`;
//!   the whole loop is timed.
//! - `contended`: a 2-worker multi-thread runtime, 64 tasks sharing a pool of 16 connections
//!   (`balancer-3`: 16 on each endpoint, see below), `iters` checkouts split among them;
//!   timed from the first spawn until all are done.
//!
//! Extra configurations (experiments that locate livepool's cost, not targets):
//! - `livepool-no-idle-watch`: `idle_watch(false)` (no watcher wake-up on return);
//! - `livepool-no-wait-timeout`: `wait_timeout(None)` (no timer around the semaphore wait);
//! - `livepool-lean`: all three of `idle_watch(false)`, `wait_timeout(None)`,
//!   `idle_timeout(None)` + `max_lifetime(None)`;
//! - `deadpool-peek`: deadpool whose recycle is one `recv(MSG_PEEK | MSG_DONTWAIT)` syscall,
//!   i.e. the floor for any pool that asks the kernel at checkout;
//! - `deadpool-noop-wait-timeout`: the no-op deadpool with a 30 s wait timeout, as livepool
//!   configures its inner deadpool.
//!
//! Protocol-layer rows (targets: each within 1.1x of `livepool`; the fast path is still one
//! peek):
//! - `livepool-tls` (feature `tls`): the raw protocol over TLS 1.3 to the same server behind
//!   rustls (its own listener on the server thread);
//!
//! Balancer rows (target: selection adds at most 1.2x over a single pool, i.e.
//! `balancer-3 / livepool` <= 1.2 both uncontended and contended; `balancer-1` separates the
//! balancer's fixed cost from the two-choice draw):
//! - `balancer-1`: `Balancer::builder()` with `max_size: POOL_SIZE`, one endpoint with the
//!   `livepool` row's settings: every `get()` snapshots the endpoint list and checks the
//!   breaker, but has no choice to make;
//! - `balancer-3`: the same over the server's three addresses, each endpoint's pool with
//!   `max_size(POOL_SIZE)` as well: every `get()` draws two endpoints and compares their
//!   loads (`Pool::status()` of each).
//!
//! Pool size of `balancer-3`: `POOL_SIZE` per endpoint, so up to 3x the single pool's
//! connections. Each endpoint's pool is then configured exactly as the `livepool` row's
//! (same semaphore, same idle queue), and the difference between the rows is the selection
//! alone. The total does not change what is timed: a checkout is returned without an await
//! in between, so at most one connection per worker thread is in use at once and no
//! checkout ever waits or connects, whatever the size. Splitting `POOL_SIZE` among the three
//! (5 + 5 + 6) would only make the endpoints unequal. Warm-up opens the same number on each
//! endpoint as on the single pool (1 uncontended, `POOL_SIZE` contended), directly through
//! `Balancer::pool`, and asserts that every endpoint has them idle (and that `get()` reaches
//! every endpoint) before timing.
//!
//! Run: `cargo bench --bench checkout --features tls`. Rows in turns (the ratio to
//! trust on a shared machine, see `paired`): `LIVEPOOL_PAIRED=1 cargo bench --bench checkout
//! --features tls -- paired-only` (the filter matches no criterion row). Results and
//! findings: BENCHMARKS.md.

use livepool_testkit::bench::*;

use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use livepool::FramePing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Connections in every pool.
const POOL_SIZE: usize = 16;
/// Tasks sharing the pool in the contended scenario.
const TASKS: u64 = 64;
/// Bound on one timed batch: a hung pool fails the bench instead of hanging it.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The loopback server.

/// A ping/pong server on its own thread and runtime, so that its work is not charged to the
/// pool under test's runtime. Stops when dropped.
struct Server {
    addr: SocketAddr,
    /// The same server on two more addresses (127.0.0.2 and 127.0.0.3), for the balancer's
    /// other endpoints.
    replicas: [SocketAddr; 2],
    /// The same server behind TLS (feature `tls`).
    #[cfg(feature = "tls")]
    tls: TlsSide,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The TLS listener's address and a client configuration trusting its certificate.
#[cfg(feature = "tls")]
struct TlsSide {
    addr: SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
}

#[cfg(feature = "tls")]
fn tls_configs() -> (
    std::sync::Arc<rustls::ServerConfig>,
    std::sync::Arc<rustls::ClientConfig>,
) {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

impl Server {
    fn start() -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        #[cfg(feature = "tls")]
        let (server_tls, client_tls) = tls_configs();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                #[cfg(feature = "tls")]
                {
                    let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                    let tls_addr = tls_listener.local_addr().expect("addr");
                    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
                    tokio::spawn(async move {
                        while let Ok((stream, _)) = tls_listener.accept().await {
                            let _ = stream.set_nodelay(true);
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    serve(tls).await;
                                }
                            });
                        }
                    });
                    addr_tx.send(tls_addr).expect("send addr");
                }
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                for ip in ["127.0.0.2", "127.0.0.3"] {
                    let replica = TcpListener::bind((ip, 0)).await.expect("bind replica");
                    addr_tx
                        .send(replica.local_addr().expect("addr"))
                        .expect("send addr");
                    tokio::spawn(accept_loop(replica));
                }
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(serve(stream));
                        }
                    }
                }
            });
            // Dropping the runtime closes every connection.
        });
        #[cfg(feature = "tls")]
        let tls = TlsSide {
            addr: addr_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("TLS server did not start within 10 s"),
            client: client_tls,
        };
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start within 10 s");
        let replicas = [(); 2].map(|()| {
            addr_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("replica listener did not start within 10 s")
        });
        Server {
            addr,
            replicas,
            #[cfg(feature = "tls")]
            tls,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves every connection `listener` accepts until the server's runtime is dropped.
async fn accept_loop(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream));
    }
}

/// Answers each 8-byte ping with a pong echoing its sequence number and timestamp; ends at
/// EOF or on any error (the loop is bounded by the connection's life).
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    let mut frame = [0u8; FramePing::LEN];
    while stream.read_exact(&mut frame).await.is_ok() {
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

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    // livepool sets TCP_NODELAY by default; do the same everywhere.
    s.set_nodelay(true)?;
    Ok(s)
}

/// One ping round trip: write a ping, read the pong, check it.
async fn ping(stream: &mut TcpStream, seq: u32) -> io::Result<()> {
    stream
        .write_all(&FramePing::encode(FramePing::PING, seq, 0))
        .await?;
    let mut pong = [0u8; FramePing::LEN];
    stream.read_exact(&mut pong).await?;
    let (kind, echoed, _) = FramePing::decode(&pong);
    if kind != FramePing::PONG || echoed != seq {
        return Err(io::Error::other("bad pong"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// deadpool with a no-op manager (and a peek-only variant).

struct DpManager {
    addr: SocketAddr,
    peek: bool,
}

#[derive(Clone, Copy)]
enum Dp {
    Noop,
    Peek,
    NoopWaitTimeout,
}

impl deadpool::managed::Manager for DpManager {
    type Type = TcpStream;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpStream> {
        connect(self.addr).await
    }

    async fn recycle(&self, stream: &mut TcpStream, _: &Metrics) -> RecycleResult<io::Error> {
        if !self.peek {
            return Ok(());
        }
        match peek(stream) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Ok(_) => Err(RecycleError::message("closed or unread bytes")),
            Err(e) => Err(RecycleError::Backend(e)),
        }
    }
}

type DpPool = deadpool::managed::Pool<DpManager>;

fn deadpool_pool(addr: SocketAddr, which: Dp) -> DpPool {
    let peek = matches!(which, Dp::Peek);
    // deadpool's defaults: no runtime, no timeouts, FIFO.
    let b = DpPool::builder(DpManager { addr, peek }).max_size(POOL_SIZE);
    let b = match which {
        Dp::Noop | Dp::Peek => b,
        // livepool's inner deadpool: tokio runtime, 30 s wait timeout.
        Dp::NoopWaitTimeout => b
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30))),
    };
    b.build().expect("deadpool")
}

// ---------------------------------------------------------------------------------------------
// bb8 over TcpStream, optionally validating with a ping round trip.

struct Bb8Manager {
    addr: SocketAddr,
    seq: std::sync::atomic::AtomicU32,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<TcpStream> {
        connect(self.addr).await
    }

    async fn is_valid(&self, conn: &mut TcpStream) -> io::Result<()> {
        let seq = self
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        ping(conn, seq).await
    }

    fn has_broken(&self, _: &mut TcpStream) -> bool {
        false
    }
}

async fn bb8_pool(addr: SocketAddr, test_on_check_out: bool) -> bb8::Pool<Bb8Manager> {
    bb8::Pool::builder()
        .max_size(POOL_SIZE as u32)
        .test_on_check_out(test_on_check_out)
        .build(Bb8Manager {
            addr,
            seq: Default::default(),
        })
        .await
        .expect("bb8")
}

// ---------------------------------------------------------------------------------------------
// livepool configurations.

#[derive(Clone, Copy)]
enum Lp {
    Default,
    NoIdleWatch,
    NoWaitTimeout,
    Lean,
}

fn livepool_pool(addr: SocketAddr, which: Lp) -> livepool::Pool {
    let b = livepool::Pool::builder(addr).max_size(POOL_SIZE);
    let b = match which {
        Lp::Default => b,
        Lp::NoIdleWatch => b.idle_watch(false),
        Lp::NoWaitTimeout => b.wait_timeout(None),
        Lp::Lean => b
            .idle_watch(false)
            .wait_timeout(None)
            .idle_timeout(None)
            .max_lifetime(None),
    };
    b.build().expect("livepool")
}

// ---------------------------------------------------------------------------------------------
// One enum over all pools, so that each scenario is written once.

#[derive(Clone)]
enum AnyPool {
    Live(livepool::Pool),
    Dead(DpPool),
    Bb8(bb8::Pool<Bb8Manager>),
    Balancer(livepool::Balancer),
}

impl AnyPool {
    /// One checkout + return; panics on a pool error (a bench on a broken pool is wrong).
    #[inline(always)]
    async fn get_drop(&self) {
        match self {
            AnyPool::Live(p) => drop(black_box(p.get().await.expect("livepool get"))),
            AnyPool::Dead(p) => drop(black_box(p.get().await.expect("deadpool get"))),
            AnyPool::Bb8(p) => drop(black_box(p.get().await.expect("bb8 get"))),
            AnyPool::Balancer(b) => drop(black_box(b.get().await.expect("balancer get"))),
        }
    }

    /// Opens `n` connections (holding them all at once), then returns them: from here on
    /// every checkout finds an idle connection.
    async fn warm(&self, n: usize) {
        match self {
            AnyPool::Live(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.get().await.expect("warm livepool"));
                }
                drop(held);
                // Let the reaper register its watchers before timing starts.
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(p.status().idle, n, "livepool not warm");
            }
            AnyPool::Dead(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.get().await.expect("warm deadpool"));
                }
                drop(held);
                assert_eq!(p.status().available, n, "deadpool not warm");
            }
            AnyPool::Bb8(p) => {
                let mut held = Vec::new();
                for _ in 0..n {
                    held.push(p.get().await.expect("warm bb8"));
                }
                drop(held);
                assert_eq!(p.state().idle_connections as usize, n, "bb8 not warm");
            }
            AnyPool::Balancer(b) => {
                // Each endpoint's pool directly, `n` connections each: `get()` would spread
                // them by its own choice, not evenly.
                let names: Vec<String> = b.endpoints().into_iter().map(|e| e.endpoint).collect();
                let mut held = Vec::new();
                for name in &names {
                    let p = b.pool(name).expect("endpoint's pool");
                    for _ in 0..n {
                        held.push(p.get().await.expect("warm balancer endpoint"));
                    }
                }
                drop(held);
                // Selection reaches every endpoint (the draw is seeded: same every run).
                let mut served = std::collections::BTreeSet::new();
                for _ in 0..30 * names.len() {
                    served.insert(b.get().await.expect("balancer get").endpoint().to_string());
                }
                assert_eq!(
                    served.len(),
                    names.len(),
                    "balancer skips endpoints: {served:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                for e in b.endpoints() {
                    assert_eq!(
                        e.status.idle, n,
                        "balancer endpoint {} not warm",
                        e.endpoint
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Config {
    Livepool(Lp),
    #[cfg(feature = "tls")]
    LivepoolTls,
    Deadpool(Dp),
    Bb8 {
        ping: bool,
    },
    /// A `Balancer` over the first `endpoints` of the server's addresses.
    Balancer {
        endpoints: usize,
    },
}

const CONFIGS: &[(&str, Config)] = &[
    ("livepool", Config::Livepool(Lp::Default)),
    #[cfg(feature = "tls")]
    ("livepool-tls", Config::LivepoolTls),
    ("deadpool-noop", Config::Deadpool(Dp::Noop)),
    ("bb8-no-test", Config::Bb8 { ping: false }),
    ("bb8-ping", Config::Bb8 { ping: true }),
    // Experiments: where livepool's time goes.
    ("livepool-no-idle-watch", Config::Livepool(Lp::NoIdleWatch)),
    (
        "livepool-no-wait-timeout",
        Config::Livepool(Lp::NoWaitTimeout),
    ),
    ("livepool-lean", Config::Livepool(Lp::Lean)),
    ("deadpool-peek", Config::Deadpool(Dp::Peek)),
    (
        "deadpool-noop-wait-timeout",
        Config::Deadpool(Dp::NoopWaitTimeout),
    ),
    // Selection overhead: the balancer against the `livepool` row.
    ("balancer-1", Config::Balancer { endpoints: 1 }),
    ("balancer-3", Config::Balancer { endpoints: 3 }),
];

/// Builds the pool inside `rt` (livepool's reaper and bb8's reaper run on it) and warms it.
fn make_pool(rt: &Runtime, server: &Server, cfg: Config, warm: usize) -> AnyPool {
    let addr = server.addr;
    let all = [addr, server.replicas[0], server.replicas[1]];
    #[cfg(feature = "tls")]
    let (tls_addr, tls_client) = (server.tls.addr, server.tls.client.clone());
    rt.block_on(async move {
        let pool = match cfg {
            Config::Livepool(which) => AnyPool::Live(livepool_pool(addr, which)),
            #[cfg(feature = "tls")]
            Config::LivepoolTls => AnyPool::Live(
                livepool::Pool::builder(tls_addr)
                    .max_size(POOL_SIZE)
                    .tls(tls_client, "localhost")
                    .build()
                    .expect("livepool tls"),
            ),
            Config::Deadpool(which) => AnyPool::Dead(deadpool_pool(addr, which)),
            Config::Bb8 { ping } => AnyPool::Bb8(bb8_pool(addr, ping).await),
            Config::Balancer { endpoints } => {
                let b = livepool::Balancer::builder()
                    .config(livepool::PoolConfig {
                        max_size: POOL_SIZE,
                        ..livepool::PoolConfig::default()
                    })
                    .endpoints(all[..endpoints].iter().copied())
                    .build()
                    .expect("balancer");
                assert_eq!(b.endpoints().len(), endpoints, "balancer endpoints");
                AnyPool::Balancer(b)
            }
        };
        pool.warm(warm).await;
        pool
    })
}

/// One task, `iters` checkouts in a row; the whole loop is timed.
async fn uncontended(pool: &AnyPool, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        pool.get_drop().await;
    }
    start.elapsed()
}

/// `TASKS` tasks share `iters` checkouts (the first `iters % TASKS` do one more); timed from
/// the first spawn until the last task is done.
async fn contended(pool: &AnyPool, iters: u64) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..TASKS)
        .map(|t| {
            let pool = pool.clone();
            let n = iters / TASKS + u64::from(t < iters % TASKS);
            tokio::spawn(async move {
                for _ in 0..n {
                    pool.get_drop().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task panicked");
    }
    start.elapsed()
}

fn bench_checkout(c: &mut Criterion) {
    let server = Server::start();
    let mut group = c.benchmark_group("checkout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for &(name, cfg) in CONFIGS {
        let rt = current_thread();
        let pool = make_pool(&rt, &server, cfg, 1);
        group.bench_function(BenchmarkId::new(name, "uncontended"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    tokio::time::timeout(BATCH_DEADLINE, uncontended(&pool, iters))
                        .await
                        .expect("uncontended batch exceeded its deadline")
                })
            })
        });
        rt.block_on(async move { drop(pool) });
        drop(rt);
    }

    for &(name, cfg) in CONFIGS {
        let rt = two_workers();
        let pool = make_pool(&rt, &server, cfg, POOL_SIZE);
        group.bench_function(BenchmarkId::new(name, "contended"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    tokio::time::timeout(BATCH_DEADLINE, contended(&pool, iters))
                        .await
                        .expect("contended batch exceeded its deadline")
                })
            })
        });
        rt.block_on(async move { drop(pool) });
        drop(rt);
    }

    group.finish();
    drop(server);
}

/// `LIVEPOOL_PAIRED=1`: the configurations named in `LIVEPOOL_PAIRED_ROWS` (default
/// `livepool,balancer-1,balancer-3,deadpool-peek`) measured in turns, one batch of
/// `PAIRED_BATCH` checkouts each per round, for `LIVEPOOL_PAIRED_ROUNDS` rounds (default 40),
/// uncontended and contended; prints each one's median ns per checkout and the median over
/// rounds of its ratio to the first row. On a shared machine the load changes between
/// criterion's rows (seconds apart) far more than between the batches of one round, so the
/// ratio of rows in turns is the figure to trust. Skipped (criterion runs as usual)
/// without the variable.
fn paired(_: &mut Criterion) {
    const PAIRED_BATCH: u64 = 5_000;
    if std::env::var("LIVEPOOL_PAIRED").as_deref() != Ok("1") {
        return;
    }
    let rows_env = std::env::var("LIVEPOOL_PAIRED_ROWS")
        .unwrap_or_else(|_| "livepool,balancer-1,balancer-3,deadpool-peek".into());
    let rounds: usize = std::env::var("LIVEPOOL_PAIRED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let rows: Vec<(&str, Config)> = rows_env
        .split(',')
        .map(|n| {
            *CONFIGS
                .iter()
                .find(|(name, _)| *name == n)
                .unwrap_or_else(|| panic!("no configuration {n:?}"))
        })
        .collect();
    let server = Server::start();
    for contended_run in [false, true] {
        let rts: Vec<Runtime> = rows
            .iter()
            .map(|_| {
                if contended_run {
                    two_workers()
                } else {
                    current_thread()
                }
            })
            .collect();
        let warm = if contended_run { POOL_SIZE } else { 1 };
        let pools: Vec<AnyPool> = rows
            .iter()
            .zip(&rts)
            .map(|((_, cfg), rt)| make_pool(rt, &server, *cfg, warm))
            .collect();
        let mut per_op: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
        for round in 0..rounds {
            // Rotate the order so that no row always runs first.
            for k in 0..rows.len() {
                let i = (k + round) % rows.len();
                let (rt, pool) = (&rts[i], &pools[i]);
                let took = rt.block_on(async {
                    let run = async {
                        if contended_run {
                            contended(pool, PAIRED_BATCH).await
                        } else {
                            uncontended(pool, PAIRED_BATCH).await
                        }
                    };
                    tokio::time::timeout(BATCH_DEADLINE, run)
                        .await
                        .expect("paired batch exceeded its deadline")
                });
                per_op[i].push(took.as_nanos() as f64 / PAIRED_BATCH as f64);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let scenario = if contended_run {
            "contended"
        } else {
            "uncontended"
        };
        println!("paired {scenario}: {rounds} rounds of {PAIRED_BATCH} checkouts per row");
        for (i, (name, _)) in rows.iter().enumerate() {
            let mut ratios: Vec<f64> = per_op[i]
                .iter()
                .zip(&per_op[0])
                .map(|(a, b)| a / b)
                .collect();
            let mut own = per_op[i].clone();
            println!(
                "paired {scenario}: {name:<24} {:>8.1} ns/checkout  {:>5.2}x {}",
                median(&mut own),
                median(&mut ratios),
                rows[0].0
            );
        }
        for (rt, pool) in rts.iter().zip(pools) {
            rt.block_on(async move { drop(pool) });
        }
    }
    drop(server);
    clock_cost();
}

/// What one reading of the clock livepool uses costs on this machine (median of 21 runs of
/// 200,000 reads): a checkout and its return read it twice more than deadpool does (the
/// lifetime and idle-timeout check at checkout, the return's timestamp).
fn clock_cost() {
    const READS: u32 = 200_000;
    let mut runs: Vec<f64> = (0..21)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..READS {
                black_box(tokio::time::Instant::now());
            }
            start.elapsed().as_nanos() as f64 / f64::from(READS)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "paired: one tokio::time::Instant::now() {:.1} ns",
        runs[runs.len() / 2]
    );
}

criterion_group! {
    name = benches;
    // Plots would add seconds per benchmark; the numbers are what BENCHMARKS.md records.
    config = Criterion::default().without_plots();
    targets = paired, bench_checkout
}
criterion_main!(benches);
