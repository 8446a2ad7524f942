//! Chaos demo: under steady fault injection the pool never hands out a connection the kernel
//! already knows is dead, never leaks one caller's response to another, and reports how fast
//! it evicts each kind of dead connection.
//!
//! ```text
//! cargo run --release --example chaos -- [--duration SECS] [--rate REQS_PER_SEC] [--tasks N]
//!     [--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N]
//!     [--endpoints N]
//! ```
//!
//! An embedded loopback server speaks a tiny protocol. A request is 16 bytes,
//! `[b'R', 0 × 7, token: u64 big-endian]`, answered by the same 16 bytes. A heartbeat is
//! livepool's 8-byte [`FramePing`] frame: a ping (first byte `0x01`) is answered by its
//! pong (`0x02`, same sequence number). The first byte tells the two apart.
//!
//! Every `--fault-every` ms a scheduler picks a random server-side connection, idle or busy,
//! and applies one of:
//! - `fin`: close it; `rst`: reset it (SO_LINGER 0, then close); `garbage`: write 3 bytes;
//! - `stall`: stop reading and answering but keep it open for 3 s (no probe can see this: only
//!   a heartbeat timeout or the request deadline finds it);
//! - `late`: answer its next request after the client's deadline (the cancelled-request leak);
//! - `restart`: close the listener and every connection for 1 s, then listen on the same port
//!   again (at most one every 4 s, none in the first or last 2 s); meanwhile the circuit
//!   breaker opens and `get()` fails fast.
//!
//! The pool: max_size 16, min_idle 4, a `FramePing` every 500 ms with a 200 ms timeout,
//! reap_interval 100 ms, breaker open for 200–500 ms. `--tasks` workload tasks share
//! `--rate` requests per second, each request with a 300 ms deadline (a timeout drops the
//! `Conn` mid-read, which the pool must then discard), and check the echoed token.
//!
//! It prints a progress line every second, then a table: requests by outcome, faults, stale
//! handouts, leaks, evictions by reason with the pool's detection → removal latency, and
//! evictions by fault with the time from fault to removal. It exits non-zero on any
//! - **stale handout**: `get()` returned a connection that the server closed, reset or sent
//!   garbage on more than 5 ms earlier, and a peek right after checkout still shows it (the
//!   peek tells it apart from a new connection that reuses the port);
//! - **leak**: a well-formed response carrying another request's token.
//!
//! `--endpoints N` (1 to 8, default 1: the single pool above) runs N servers on 127.0.0.2,
//! 127.0.0.3, … and the workload through a [`Balancer`] over them: each endpoint's pool has
//! the settings above, plus outlier ejection after 3 consecutive failures for 1 s, 2 s, …
//! (at most 4 s), at most half of the endpoints at once. Each fault hits a connection of a
//! random server, and `restart` becomes an **endpoint outage**: one random server closes its
//! listener and every connection and refuses connects for 3 s (at most one every 8 s, none
//! in the first 2 s or the last 8 s), so that its breaker opens, the balancer ejects it and
//! sends its traffic to the others, and after the outage it returns and recovers. The
//! progress line adds each endpoint's requests in the last second and whether it is ejected,
//! its breaker open or its server down; the report adds a table per endpoint (requests,
//! connections, evictions, breaker transitions, ejections) and the balancer's events
//! (ejections with their length and last error, returns, recoveries) and breaker transitions
//! next to the outages.
//! The run also fails if an outage happened but no ejection was ever seen.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livepool::{
    Balancer, BalancerEvent, BalancerEventKind, BreakerConfig, BreakerEvent, BreakerState, Conn,
    Ejection, EndpointStatus, Events, EventsError, EvictReason, FramePing, Pool, PoolConfig,
    Statistics,
};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};

const REQUEST: u8 = b'R';
const REQ_LEN: usize = 16;
const DEADLINE: Duration = Duration::from_millis(300);
const LATE_BY: Duration = Duration::from_millis(400);
const DOWNTIME: Duration = Duration::from_secs(1);
const STALL_FOR: Duration = Duration::from_secs(3);
const RESTART_GAP: Duration = Duration::from_secs(4);
const STALE_GRACE: Duration = Duration::from_millis(5);
/// With several endpoints, a `restart` is an outage of one server this long...
const OUTAGE: Duration = Duration::from_secs(3);
/// ...at most one per this (outage, ejections, return and recovery all fit in it).
const OUTAGE_GAP: Duration = Duration::from_secs(8);
const MAX_ENDPOINTS: usize = 8;

const USAGE: &str = "usage: chaos [--duration SECS] [--rate REQS_PER_SEC] [--tasks N] \
[--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N] [--endpoints N]
  defaults: --duration 20 --rate 2000 --tasks 32 --fault-every 200 --faults all --endpoints 1
  --endpoints N (1..=8): N servers on 127.0.0.2.. behind a Balancer; restart = a 3 s outage";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Fin,
    Rst,
    Garbage,
    Stall,
    Late,
    Restart,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Self::Fin,
        Self::Rst,
        Self::Garbage,
        Self::Stall,
        Self::Late,
        Self::Restart,
    ];
    fn name(self) -> &'static str {
        ["fin", "rst", "garbage", "stall", "late", "restart"][self as usize]
    }
    /// The client's kernel sees these at once: a checkout after one is a stale handout.
    fn kernel_visible(self) -> bool {
        matches!(self, Self::Fin | Self::Rst | Self::Garbage | Self::Restart)
    }
}

#[derive(Clone)]
struct Opts {
    duration: Duration,
    rate: u64,
    tasks: u64,
    fault_every: Duration,
    faults: Vec<Fault>,
    seed: u64,
    endpoints: usize,
}

fn parse_args() -> Result<Option<Opts>, String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut o = Opts {
        duration: Duration::from_secs(20),
        rate: 2000,
        tasks: 32,
        fault_every: Duration::from_millis(200),
        faults: Fault::ALL.to_vec(),
        seed,
        endpoints: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = |what: &str| -> Result<u64, String> {
            value.parse::<u64>().ok().filter(|&n| n > 0).ok_or(format!(
                "{what}: expected a positive integer, got {value:?}"
            ))
        };
        match flag.as_str() {
            "--duration" => o.duration = Duration::from_secs(num("--duration")?),
            "--rate" => o.rate = num("--rate")?,
            "--tasks" => o.tasks = num("--tasks")?,
            "--fault-every" => o.fault_every = Duration::from_millis(num("--fault-every")?),
            "--seed" => o.seed = num("--seed")?,
            "--endpoints" => {
                o.endpoints = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ENDPOINTS).contains(n))
                    .ok_or(format!(
                        "--endpoints: expected 1 to {MAX_ENDPOINTS}, got {value:?}"
                    ))?;
            }
            "--faults" if value == "all" => o.faults = Fault::ALL.to_vec(),
            "--faults" if value == "none" => o.faults.clear(),
            "--faults" => {
                o.faults = value
                    .split(',')
                    .map(|n| {
                        Fault::ALL
                            .into_iter()
                            .find(|f| f.name() == n.trim())
                            .ok_or(format!("unknown fault {n:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Some(o))
}

/// A server-side connection the scheduler may fault.
struct ServerConn {
    tx: mpsc::UnboundedSender<Fault>,
    faulted: bool,
}

/// One embedded server (one endpoint): its connections, faults and requests.
struct Server {
    addr: SocketAddr,
    /// The endpoint's name in the pool and the balancer (`addr` as text).
    name: String,
    conns: Mutex<HashMap<u64, ServerConn>>,
    /// Client address (as the server sees it) → the last fault applied to it, and when.
    faulted: Mutex<HashMap<SocketAddr, (Fault, Instant)>>,
    down: AtomicBool,
    /// Requests whose connection came from this endpoint.
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Server {
    fn new(addr: SocketAddr) -> Self {
        Server {
            addr,
            name: addr.to_string(),
            conns: Mutex::default(),
            faulted: Mutex::default(),
            down: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// An endpoint outage (`restart` with several endpoints): which server, down when, back when.
struct Outage {
    server: usize,
    down: Instant,
    back: Option<Instant>,
}

/// Shared by the servers, the fault scheduler and the workload.
struct Chaos {
    opts: Opts,
    end: Instant,
    servers: Vec<Server>,
    injected: [AtomicU64; 6],
    outages: Mutex<Vec<Outage>>,
    next_token: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    stale: Mutex<Vec<String>>,
    leaks: AtomicU64,
}

impl Chaos {
    fn record(&self, srv: usize, peer: SocketAddr, fault: Fault) {
        self.servers[srv]
            .faulted
            .lock()
            .unwrap()
            .insert(peer, (fault, Instant::now()));
        if fault != Fault::Restart {
            self.injected[fault as usize].fetch_add(1, Relaxed);
        }
    }

    /// The server behind a connection's endpoint.
    fn server_of(&self, conn: &Conn<FramePing>) -> usize {
        let name = conn.endpoint();
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or(0)
    }

    /// How long a `restart` keeps its server down.
    fn downtime(&self) -> Duration {
        if self.servers.len() > 1 {
            OUTAGE
        } else {
            DOWNTIME
        }
    }
}

/// Binds `addr` with SO_REUSEADDR (so a restart gets the same port back), retrying until the end.
async fn listen(addr: SocketAddr, end: Instant) -> Option<TcpListener> {
    let bind = || {
        let s = TcpSocket::new_v4()?;
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(1024)
    };
    while Instant::now() < end {
        match bind() {
            Ok(l) => return Some(l),
            Err(e) => eprintln!("server: cannot listen on {addr} ({e}), retrying"),
        }
        sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Server `srv`'s accept loop; a message on `restarts` takes it down for `Chaos::downtime`.
async fn server(
    chaos: Arc<Chaos>,
    srv: usize,
    mut listener: TcpListener,
    mut restarts: mpsc::Receiver<()>,
) {
    let me = &chaos.servers[srv];
    let addr = me.addr;
    let mut next_id = 0;
    loop {
        tokio::select! {
            Ok((stream, peer)) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                let (tx, rx) = mpsc::unbounded_channel();
                next_id += 1;
                me.conns.lock().unwrap().insert(next_id, ServerConn { tx, faulted: false });
                // A new connection from a reused port starts with a clean record.
                me.faulted.lock().unwrap().remove(&peer);
                tokio::spawn(serve(chaos.clone(), srv, next_id, stream, peer, rx));
            }
            Some(()) = restarts.recv() => {
                drop(listener);
                for c in me.conns.lock().unwrap().values() {
                    let _ = c.tx.send(Fault::Restart);
                }
                let downtime = chaos.downtime();
                sleep(downtime.min(chaos.end.saturating_duration_since(Instant::now()))).await;
                let Some(l) = listen(addr, chaos.end).await else { return };
                listener = l;
                me.down.store(false, Relaxed);
                let mut outages = chaos.outages.lock().unwrap();
                if let Some(o) = outages.iter_mut().rev().find(|o| o.server == srv) {
                    o.back = Some(Instant::now());
                }
            }
            _ = sleep_until(chaos.end) => return,
        }
    }
}

/// One server-side connection: answers requests and pings, and applies the faults sent to it.
async fn serve(
    chaos: Arc<Chaos>,
    srv: usize,
    id: u64,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut faults: mpsc::UnboundedReceiver<Fault>,
) {
    let (mut buf, mut filled, mut late) = ([0u8; REQ_LEN], 0, false);
    loop {
        let need = match (filled, buf[0]) {
            (0, _) => 1,
            (_, FramePing::PING) => FramePing::LEN,
            (_, REQUEST) => REQ_LEN,
            _ => break, // not our protocol: hang up
        };
        if filled == need {
            filled = 0;
            let sent = if buf[0] == FramePing::PING {
                let (_, seq, ts) = FramePing::decode(buf[..8].try_into().expect("8 bytes"));
                stream
                    .write_all(&FramePing::encode(FramePing::PONG, seq, ts))
                    .await
            } else {
                if std::mem::take(&mut late) {
                    chaos.record(srv, peer, Fault::Late);
                    sleep(LATE_BY).await;
                }
                stream.write_all(&buf).await
            };
            if sent.is_err() {
                break;
            }
            continue;
        }
        // Both branches are cancel safe: a partial frame stays in `buf`.
        tokio::select! {
            fault = faults.recv() => match fault {
                None | Some(Fault::Fin | Fault::Restart) => {
                    if let Some(f) = fault { chaos.record(srv, peer, f) }
                    break;
                }
                Some(Fault::Rst) => {
                    chaos.record(srv, peer, Fault::Rst);
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    break;
                }
                Some(Fault::Garbage) => {
                    chaos.record(srv, peer, Fault::Garbage);
                    if stream.write_all(&[0xEE; 3]).await.is_err() { break }
                }
                Some(Fault::Stall) => {
                    chaos.record(srv, peer, Fault::Stall);
                    // Hold the socket open, unread and unanswered, for a while or until a restart.
                    let until = Instant::now() + STALL_FOR;
                    while let Ok(Some(f)) = tokio::time::timeout_at(until, faults.recv()).await {
                        if f == Fault::Restart { chaos.record(srv, peer, f); break }
                    }
                    break;
                }
                Some(Fault::Late) => late = true, // recorded when the late reply starts
            },
            read = stream.read(&mut buf[filled..need]) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            },
        }
    }
    chaos.servers[srv].conns.lock().unwrap().remove(&id);
}

/// Every `every`, applies a random enabled fault to a random unfaulted server-side connection
/// (of a random server); a `restart` goes to a random server through `restarts`.
async fn inject_faults(chaos: Arc<Chaos>, restarts: Vec<mpsc::Sender<()>>) {
    let (faults, every) = (&chaos.opts.faults, chaos.opts.fault_every);
    if faults.is_empty() {
        return;
    }
    let several = chaos.servers.len() > 1;
    // A restart takes an endpoint away for a while: at most one per gap, and none near the
    // end, so that the run ends with every endpoint recovered.
    let (gap, quiet_end) = if several {
        (OUTAGE_GAP, OUTAGE_GAP)
    } else {
        (RESTART_GAP, 2 * DOWNTIME)
    };
    let mut rng = fastrand::Rng::with_seed(chaos.opts.seed);
    let mut next_restart = Instant::now() + RESTART_GAP / 2;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(chaos.end) => return,
        }
        let mut fault = faults[rng.usize(..faults.len())];
        let near_end = chaos.end.saturating_duration_since(Instant::now()) < quiet_end;
        if fault == Fault::Restart && (Instant::now() < next_restart || near_end) {
            let others: Vec<_> = faults.iter().filter(|&&f| f != Fault::Restart).collect();
            if others.is_empty() {
                continue;
            }
            fault = *others[rng.usize(..others.len())];
        }
        if fault == Fault::Restart {
            next_restart = Instant::now() + gap;
            let srv = if several {
                rng.usize(..chaos.servers.len())
            } else {
                0
            };
            if !chaos.servers[srv].down.swap(true, Relaxed) && restarts[srv].try_send(()).is_ok() {
                chaos.injected[Fault::Restart as usize].fetch_add(1, Relaxed);
                chaos.outages.lock().unwrap().push(Outage {
                    server: srv,
                    down: Instant::now(),
                    back: None,
                });
            }
            continue;
        }
        // A random server among those with a connection to fault.
        let mut with_targets: Vec<_> = chaos
            .servers
            .iter()
            .map(|s| s.conns.lock().unwrap())
            .filter(|c| c.values().any(|c| !c.faulted))
            .collect();
        let conns = match with_targets.len() {
            0 => continue,
            1 => &mut with_targets[0],
            n => &mut with_targets[rng.usize(..n)],
        };
        let mut targets: Vec<_> = conns.values_mut().filter(|c| !c.faulted).collect();
        let i = rng.usize(..targets.len());
        targets[i].faulted = true;
        let _ = targets[i].tx.send(fault);
    }
}

/// What the workload checks out from: the pool (one endpoint) or the balancer (several).
#[derive(Clone)]
enum Client {
    Pool(Pool<FramePing>),
    Balancer(Balancer<FramePing>),
}

impl Client {
    async fn get(&self) -> Result<Conn<FramePing>, livepool::Error> {
        match self {
            Client::Pool(p) => p.get().await,
            Client::Balancer(b) => b.get().await,
        }
    }
}

/// Checks out a connection, flags it if the server had faulted it before, and runs one
/// exchange; `served` says by which server, once there is a connection.
async fn request(
    client: &Client,
    chaos: &Chaos,
    token: u64,
    served: &mut Option<usize>,
) -> Result<(), &'static str> {
    let mut conn = client.get().await.map_err(|e| match () {
        _ if e.is_all_endpoints() => "get: every endpoint failed",
        _ if e.is_circuit_open() => "get: circuit open",
        _ if e.is_connect() => "get: connect error",
        _ if e.is_timeout() => "get: timeout",
        _ => "get: other",
    })?;
    let srv = chaos.server_of(&conn);
    *served = Some(srv);
    check_stale(&conn, chaos, srv);
    let mut frame = [0u8; REQ_LEN];
    frame[0] = REQUEST;
    frame[8..].copy_from_slice(&token.to_be_bytes());
    let io_kind = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::BrokenPipe => "broken pipe",
        _ => "other i/o error",
    };
    conn.write_all(&frame).await.map_err(io_kind)?;
    let mut reply = [0u8; REQ_LEN];
    conn.read_exact(&mut reply).await.map_err(io_kind)?;
    if reply[..8] != frame[..8] {
        conn.mark_broken(); // out of step: never return it
        return Err("garbage reply");
    }
    if reply[8..] != frame[8..] {
        conn.mark_broken();
        chaos.leaks.fetch_add(1, Relaxed);
        return Err("LEAK");
    }
    Ok(())
}

/// A stale handout: the server faulted this connection more than `STALE_GRACE` ago and the
/// kernel still says so now. (The peek rules out a new connection from a reused port that the
/// server has not accepted yet.)
fn check_stale(conn: &Conn<FramePing>, chaos: &Chaos, srv: usize) {
    let now = Instant::now();
    let Ok(local) = conn.local_addr() else { return };
    let faulted = chaos.servers[srv]
        .faulted
        .lock()
        .unwrap()
        .get(&local)
        .copied();
    let Some((fault, at)) = faulted else {
        return;
    };
    if !fault.kernel_visible() || now.saturating_duration_since(at) <= STALE_GRACE {
        return;
    }
    let peek = conn.peek_socket();
    if !matches!(&peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
        let (id, ago) = (conn.id(), now - at);
        let msg = format!(
            "conn {id} ({local}): {} {ago:?} before checkout, peek {peek:?}",
            fault.name()
        );
        chaos.stale.lock().unwrap().push(msg);
    }
}

async fn worker(client: Client, chaos: Arc<Chaos>, i: u64) {
    let (rate, tasks) = (chaos.opts.rate as f64, chaos.opts.tasks as f64);
    let period = Duration::from_secs_f64(tasks / rate); // spread evenly: `rate` in all
    let offset = period.mul_f64(i as f64 / tasks);
    let mut tick = tokio::time::interval_at(Instant::now() + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(chaos.end) => return,
        }
        let token = chaos.next_token.fetch_add(1, Relaxed);
        let mut served = None;
        let res = tokio::time::timeout(DEADLINE, request(&client, &chaos, token, &mut served));
        let outcome = res.await.unwrap_or(Err("deadline"));
        if let Some(s) = served.map(|s| &chaos.servers[s]) {
            if outcome.is_ok() { &s.ok } else { &s.failed }.fetch_add(1, Relaxed);
        }
        match outcome {
            Ok(()) => chaos.ok.fetch_add(1, Relaxed),
            Err(kind) => {
                *chaos.failures.lock().unwrap().entry(kind).or_default() += 1;
                chaos.failed.fetch_add(1, Relaxed)
            }
        };
    }
}

/// One eviction event, matched with the fault that caused it (if any).
struct Eviction {
    reason: EvictReason,
    /// Detection → removal, as the pool reports it.
    latency: Duration,
    /// The server's last fault on this connection, and fault → removal.
    fault: Option<(Fault, Duration)>,
}

/// Collects server `srv`'s eviction events until `stop`; returns them and the number missed.
async fn collect(
    mut events: Events,
    chaos: Arc<Chaos>,
    srv: usize,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Eviction>, u64) {
    let (mut out, mut lagged) = (Vec::new(), 0);
    let faulted = &chaos.servers[srv].faulted;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(ev) => {
                let fault = ev
                    .local_addr
                    .and_then(|a| faulted.lock().unwrap().get(&a).copied());
                let caused = fault
                    .filter(|&(_, at)| at <= ev.evicted_at)
                    .map(|(f, at)| (f, ev.evicted_at - at));
                out.push(Eviction {
                    reason: ev.reason,
                    latency: ev.latency(),
                    fault: caused,
                });
            }
            Err(EventsError::Lagged(n)) => lagged += n,
            Err(_) => break,
        }
    }
    (out, lagged)
}

fn fmt_d(d: Duration) -> String {
    match d.as_secs_f64() {
        s if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        s if s < 1.0 => format!("{:.1}ms", s * 1e3),
        s => format!("{s:.2}s"),
    }
}

/// "p50 p99 max" cells of a latency sample.
fn cells(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return String::new();
    }
    v.sort();
    let at = |q: f64| fmt_d(v[((v.len() - 1) as f64 * q).round() as usize]);
    format!("{:>9} {:>9} {:>9}", at(0.5), at(0.99), at(1.0))
}

/// "a 1, b 2"
fn joined<K: std::fmt::Display>(items: impl IntoIterator<Item = (K, u64)>) -> String {
    let v: Vec<_> = items.into_iter().map(|(k, n)| format!("{k} {n}")).collect();
    v.join(", ")
}

/// Every endpoint's pool settings (the single pool's too); the protocol is `FramePing`.
fn settings() -> PoolConfig {
    PoolConfig {
        max_size: 16,
        min_idle: 4,
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_millis(200),
        reap_interval: Duration::from_millis(100),
        connect_timeout: Some(Duration::from_secs(1)),
        // A restart lasts 1 s: probe again soon rather than after the default 30 s.
        breaker: Some(
            BreakerConfig::new()
                .open_for(Duration::from_millis(200))
                .max_open_for(Duration::from_millis(500)),
        ),
        ..PoolConfig::default()
    }
}

/// Outlier ejection with several endpoints: quick enough that ejections, returns and
/// recoveries all happen within a 3 s outage and the seconds after it.
fn ejection() -> Ejection {
    Ejection::new()
        .consecutive_failures(3)
        .base(Duration::from_secs(1))
        .max(Duration::from_secs(4))
        .max_ejected_share(0.5)
}

/// The endpoints' statistics added up (evictions by reason in `EvictReason::ALL` order).
struct Totals {
    created: u64,
    connect_errors: u64,
    checkouts: u64,
    breaker_transitions: u64,
    /// Each endpoint's breaker state.
    breaker: String,
    evictions: Vec<(EvictReason, u64)>,
}

impl Totals {
    fn of(stats: &[Statistics]) -> Self {
        let sum = |f: fn(&Statistics) -> u64| stats.iter().map(f).sum();
        let states: Vec<_> = stats.iter().map(|s| s.breaker_state.as_str()).collect();
        Totals {
            created: sum(|s| s.created),
            connect_errors: sum(|s| s.connect_errors),
            checkouts: sum(|s| s.checkouts),
            breaker_transitions: sum(|s| s.breaker_transitions),
            breaker: states.join(", "),
            evictions: EvictReason::ALL
                .into_iter()
                .map(|r| (r, stats.iter().map(|s| s.evicted(r)).sum()))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

fn report(chaos: &Chaos, stats: &Totals, evictions: &[Eviction], lagged: u64, secs: f64) {
    let (ok, failed) = (chaos.ok.load(Relaxed), chaos.failed.load(Relaxed));
    let injected = Fault::ALL.map(|f| (f.name(), chaos.injected[f as usize].load(Relaxed)));
    println!("\n=== livepool chaos: {secs:.1} s ===");
    println!("requests ok         {ok} ({:.0}/s)", ok as f64 / secs);
    println!(
        "requests failed     {failed} [{}]",
        joined(chaos.failures.lock().unwrap().clone())
    );
    println!("faults injected     {}", joined(injected));
    let stale = chaos.stale.lock().unwrap();
    println!("STALE handouts      {}", stale.len());
    stale.iter().for_each(|s| println!("    {s}"));
    println!("LEAKS               {}", chaos.leaks.load(Relaxed));
    println!(
        "connections         created {}, connect errors {}, checkouts {}",
        stats.created, stats.connect_errors, stats.checkouts
    );
    println!(
        "breaker             {} transitions, now {}",
        stats.breaker_transitions, stats.breaker
    );

    let header = format!("{:>6} {:>9} {:>9} {:>9}", "count", "p50", "p99", "max");
    println!(
        "\n{:<22}{header}   (detection → removal)",
        "evictions by reason"
    );
    for &(reason, n) in &stats.evictions {
        let lat = evictions
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.latency);
        println!("  {:<20}{n:>6} {}", reason.as_str(), cells(lat.collect()));
    }
    if lagged > 0 {
        println!("  (the event stream lagged: {lagged} events missed)");
    }
    println!(
        "\n{:<22}{header}   (fault → removal) by reason",
        "evictions by fault"
    );
    for f in Fault::ALL {
        let hits: Vec<_> = evictions
            .iter()
            .filter_map(|e| Some((e.reason, e.fault.filter(|c| c.0 == f)?.1)))
            .collect();
        if hits.is_empty() {
            continue;
        }
        let mut reasons = BTreeMap::new();
        hits.iter()
            .for_each(|h| *reasons.entry(h.0).or_insert(0) += 1);
        let lat = cells(hits.iter().map(|h| h.1).collect());
        println!(
            "  {:<20}{:>6} {lat}   {}",
            f.name(),
            hits.len(),
            joined(reasons)
        );
    }
}

/// Collects a stream's events until `stop`; returns them and the number missed.
async fn gather<T, S>(mut events: S, mut stop: watch::Receiver<bool>) -> (Vec<T>, u64)
where
    S: futures_util::Stream<Item = Result<T, EventsError>> + Unpin,
{
    use futures_util::StreamExt;
    let (mut out, mut lagged) = (Vec::new(), 0);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(ev)) => out.push(ev),
                Some(Err(EventsError::Lagged(n))) => lagged += n,
                Some(Err(_)) | None => break,
            },
            _ = stop.changed() => break,
        }
    }
    (out, lagged)
}

/// One endpoint in the progress line: its requests in the last second, its pool's size, and
/// whether it is ejected, its breaker open, its server down.
fn endpoint_cell(e: &EndpointStatus, srv: &Server, per_s: u64) -> String {
    let mut flags = Vec::new();
    if let Some(left) = e.ejected_for {
        flags.push(format!("EJECTED {}", fmt_d(left)));
    }
    if e.status.breaker != BreakerState::Closed {
        flags.push(format!("breaker {}", e.status.breaker.as_str()));
    }
    if srv.down.load(Relaxed) {
        flags.push("server down".to_string());
    }
    format!(
        "{} {per_s:>4}/s {:>2} conns{}{}",
        srv.addr.ip(),
        e.status.size,
        if flags.is_empty() { "" } else { " " },
        flags.join(", ")
    )
}

/// "1st", "2nd", …
fn nth(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The per-endpoint table, the outages and the balancer's events; returns how many outages.
fn report_endpoints(
    chaos: &Chaos,
    endpoints: &[EndpointStatus],
    events: &[BalancerEvent],
    breaker: &[BreakerEvent],
    lagged: u64,
    start: Instant,
) -> usize {
    let count = |name: &str, f: fn(&BalancerEventKind) -> bool| {
        events
            .iter()
            .filter(|e| &*e.endpoint == name && f(&e.kind))
            .count()
    };
    println!(
        "\n{:<22}{:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}   now",
        "endpoint",
        "ok",
        "failed",
        "created",
        "evictions",
        "breaker",
        "ejected",
        "returned",
        "recovered"
    );
    for (e, srv) in endpoints.iter().zip(&chaos.servers) {
        let st = &e.statistics;
        let now = match e.ejected_for {
            Some(left) => format!("ejected for {}", fmt_d(left)),
            None => format!("in service, breaker {}", e.status.breaker.as_str()),
        };
        println!(
            "  {:<20}{:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}   {now}",
            e.endpoint,
            srv.ok.load(Relaxed),
            srv.failed.load(Relaxed),
            st.created,
            st.evicted_total(),
            st.breaker_transitions,
            count(&e.endpoint, |k| matches!(
                k,
                BalancerEventKind::Ejected { .. }
            )),
            count(&e.endpoint, |k| *k == BalancerEventKind::Returned),
            count(&e.endpoint, |k| *k == BalancerEventKind::Recovered),
        );
    }
    println!(
        "  (ok and failed: requests whose connection came from the endpoint; breaker: transitions)"
    );

    // The outages and the balancer's events, in time order.
    let since = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
    let outages = chaos.outages.lock().unwrap();
    let mut lines: Vec<(f64, String)> = Vec::new();
    for o in outages.iter() {
        let name = &chaos.servers[o.server].name;
        lines.push((
            since(o.down),
            format!("{:<10}{name}  listener and connections closed", "OUTAGE"),
        ));
        if let Some(back) = o.back {
            lines.push((
                since(back),
                format!(
                    "{:<10}{name}  listening again after {}",
                    "back",
                    fmt_d(back - o.down)
                ),
            ));
        }
    }
    for ev in events {
        let what = match &ev.kind {
            BalancerEventKind::Ejected {
                duration,
                times,
                failures,
                last_error,
            } => format!(
                "for {} ({} in a row) after {failures} failures: {}",
                fmt_d(*duration),
                nth(*times),
                last_error.as_deref().unwrap_or("-")
            ),
            _ => String::new(),
        };
        let kind = match ev.kind {
            BalancerEventKind::Ejected { .. } => "ejected",
            BalancerEventKind::Returned => "returned",
            BalancerEventKind::Recovered => "recovered",
            BalancerEventKind::Added => "added",
            BalancerEventKind::Removed => "removed",
            _ => "other",
        };
        lines.push((since(ev.at), format!("{kind:<10}{}  {what}", ev.endpoint)));
    }
    for ev in breaker {
        let t = ev.transition;
        let open_for = t.open_for.map(|d| format!(" for {}", fmt_d(d)));
        lines.push((
            since(ev.at),
            format!(
                "{:<10}{}  {} → {}{}",
                "breaker",
                ev.endpoint,
                t.from.as_str(),
                t.to.as_str(),
                open_for.unwrap_or_default()
            ),
        ));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("\nbalancer events (and outages), since start");
    if lines.is_empty() {
        println!("  none");
    }
    for (t, line) in &lines {
        println!("  {t:>7.3}s  {}", line.trim_end());
    }
    if lagged > 0 {
        println!("  (the event stream lagged: {lagged} events missed)");
    }
    // Each outage should eject its endpoint before it is back (or soon after).
    let ejected_in = |o: &Outage| {
        let name = chaos.servers[o.server].name.as_str();
        let until = o.back.map_or(chaos.end, |b| b + Duration::from_secs(1));
        events.iter().find(|e| {
            &*e.endpoint == name
                && e.at >= o.down
                && e.at <= until
                && matches!(e.kind, BalancerEventKind::Ejected { .. })
        })
    };
    for o in outages.iter() {
        let name = &chaos.servers[o.server].name;
        match ejected_in(o) {
            Some(e) => println!(
                "outage of {name} at {:.2}s: ejected {} after it began",
                since(o.down),
                fmt_d(e.at - o.down)
            ),
            None => println!(
                "outage of {name} at {:.2}s: NOT ejected (another endpoint out, or ejection broken?)",
                since(o.down)
            ),
        }
    }
    outages.len()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chaos: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let end = start + opts.duration;
    let several = opts.endpoints > 1;
    let (mut servers, mut listeners, mut restart_txs, mut restart_rxs) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..opts.endpoints {
        // One endpoint: 127.0.0.1 as ever; several: 127.0.0.2, 127.0.0.3, …
        let ip = if several { 2 + i as u8 } else { 1 };
        let listener = listen(SocketAddr::from(([127, 0, 0, ip], 0)), end)
            .await
            .expect("cannot listen on loopback");
        servers.push(Server::new(listener.local_addr().expect("bound")));
        listeners.push(listener);
        let (tx, rx) = mpsc::channel(1);
        restart_txs.push(tx);
        restart_rxs.push(rx);
    }
    let chaos = Arc::new(Chaos {
        opts: opts.clone(),
        end,
        servers,
        injected: Default::default(),
        outages: Mutex::default(),
        next_token: AtomicU64::new(1),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failures: Mutex::default(),
        stale: Mutex::default(),
        leaks: AtomicU64::new(0),
    });
    for (i, (l, rx)) in listeners.into_iter().zip(restart_rxs).enumerate() {
        tokio::spawn(server(chaos.clone(), i, l, rx));
    }
    let names: Vec<&str> = chaos.servers.iter().map(|s| s.name.as_str()).collect();

    let (client, pools) = if several {
        let balancer = Balancer::builder()
            .config(settings())
            .protocol(FramePing::new())
            .endpoints(chaos.servers.iter().map(|s| s.addr))
            .ejection(Some(ejection()))
            .build()
            .expect("valid configuration");
        let pools: Vec<Pool<FramePing>> = names
            .iter()
            .map(|n| balancer.pool(n).expect("an endpoint per server"))
            .collect();
        (Client::Balancer(balancer), pools)
    } else {
        let pool = Pool::builder(chaos.servers[0].addr)
            .config(settings())
            .protocol(FramePing::new())
            .build()
            .expect("valid configuration");
        (Client::Pool(pool.clone()), vec![pool])
    };
    let target = if several {
        format!("a balancer over {}", names.join(", "))
    } else {
        format!("server {}", names[0])
    };
    let fault_names: Vec<_> = opts.faults.iter().map(|f| f.name()).collect();
    println!(
        "livepool chaos: {target}, {:?}, {} tasks, {} req/s, a fault every {:?} from [{}], seed {}",
        opts.duration,
        opts.tasks,
        opts.rate,
        opts.fault_every,
        fault_names.join(","),
        opts.seed
    );
    if several {
        println!(
            "  ejection: {:?}; restart = a {OUTAGE:?} outage of one server",
            ejection()
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let collectors: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(collect(p.events(), chaos.clone(), i, stop_rx.clone())))
        .collect();
    let balancer_events = match &client {
        Client::Balancer(b) => Some(tokio::spawn(gather(b.events(), stop_rx.clone()))),
        Client::Pool(_) => None,
    };
    let breaker_events: Vec<_> = pools
        .iter()
        .filter(|_| several)
        .map(|p| tokio::spawn(gather(p.breaker_events(), stop_rx.clone())))
        .collect();
    tokio::spawn(inject_faults(chaos.clone(), restart_txs));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..opts.tasks {
        workers.spawn(worker(client.clone(), chaos.clone(), i));
    }

    let mut progress =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_ok = vec![0; pools.len()];
    while Instant::now() < chaos.end {
        tokio::select! {
            _ = progress.tick() => {}
            _ = sleep_until(chaos.end) => break,
        }
        let faults: u64 = chaos.injected.iter().map(|a| a.load(Relaxed)).sum();
        let head = format!(
            "{:>5.1}s  ok {:>7}  failed {:>5}  faults {:>4}",
            start.elapsed().as_secs_f64(),
            chaos.ok.load(Relaxed),
            chaos.failed.load(Relaxed),
            faults,
        );
        let oracles = format!(
            "stale {} leaks {}",
            chaos.stale.lock().unwrap().len(),
            chaos.leaks.load(Relaxed)
        );
        match &client {
            Client::Pool(pool) => {
                let (st, stats) = (pool.status(), pool.statistics());
                println!(
                    "{head}  evictions {:>4}  pool {:>2} ({:>2} idle)  breaker {:<9}  {oracles}",
                    stats.evicted_total(),
                    st.size,
                    st.idle,
                    st.breaker.as_str(),
                );
            }
            Client::Balancer(b) => {
                let eps = b.endpoints();
                let evictions: u64 = eps.iter().map(|e| e.statistics.evicted_total()).sum();
                let each: Vec<_> = eps
                    .iter()
                    .zip(&chaos.servers)
                    .zip(&mut last_ok)
                    .map(|((e, srv), last)| {
                        let ok = srv.ok.load(Relaxed);
                        let per_s = ok - std::mem::replace(last, ok);
                        endpoint_cell(e, srv, per_s)
                    })
                    .collect();
                println!(
                    "{head}  evictions {evictions:>4}  {oracles}  | {}",
                    each.join(" | ")
                );
            }
        }
    }
    while workers.join_next().await.is_some() {}
    let (stats, endpoints) = match &client {
        Client::Pool(pool) => (vec![pool.statistics()], vec![]),
        Client::Balancer(b) => {
            let eps = b.endpoints();
            (eps.iter().map(|e| e.statistics.clone()).collect(), eps)
        }
    };
    let _ = stop_tx.send(true);
    let (mut evictions, mut lagged) = (Vec::new(), 0);
    for c in collectors {
        let (ev, n) = c.await.expect("collector");
        evictions.extend(ev);
        lagged += n;
    }
    let (events, mut events_lagged) = match balancer_events {
        Some(c) => c.await.expect("balancer event collector"),
        None => (Vec::new(), 0),
    };
    let mut breaker = Vec::new();
    for c in breaker_events {
        let (ev, n) = c.await.expect("breaker event collector");
        breaker.extend(ev);
        events_lagged += n;
    }
    pools.iter().for_each(Pool::close);

    let secs = start.elapsed().as_secs_f64();
    report(&chaos, &Totals::of(&stats), &evictions, lagged, secs);
    let (stale, leaks) = (chaos.stale.lock().unwrap().len(), chaos.leaks.load(Relaxed));
    let mut fail = Vec::new();
    if stale > 0 || leaks > 0 {
        fail.push(format!("{stale} stale handouts, {leaks} leaks"));
    }
    let ejections = events
        .iter()
        .filter(|e| matches!(e.kind, BalancerEventKind::Ejected { .. }))
        .count();
    if several {
        let outages = report_endpoints(&chaos, &endpoints, &events, &breaker, events_lagged, start);
        if outages > 0 && ejections == 0 {
            fail.push(format!(
                "{outages} endpoint outages but no ejection: outlier ejection is broken"
            ));
        }
    }
    if fail.is_empty() {
        let ejected = match ejections {
            0 => String::new(),
            n => format!(", {n} ejections"),
        };
        println!("\nPASS: no stale handouts, no leaks{ejected}");
        ExitCode::SUCCESS
    } else {
        println!("\nFAIL: {}", fail.join("; "));
        ExitCode::FAILURE
    }
}
