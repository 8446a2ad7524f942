//! Chaos demo: under steady fault injection the pool never hands out a connection the kernel
//! already knows is dead, never leaks one caller's response to another, and reports how fast
//! it evicts each kind of dead connection.
//!
//! ```text
//! cargo run --release --example chaos -- [--duration SECS] [--rate REQS_PER_SEC] [--tasks N]
//!     [--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N]
//! ```
//!
//! An embedded loopback server speaks a tiny protocol. A request is 16 bytes,
//! `[b'R', 0 × 7, token: u64 big-endian]`, answered by the same 16 bytes. A heartbeat is
//! livepool's 8-byte [`FrameHeartbeat`] frame: a ping (first byte `0x01`) is answered by its
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
//! The pool: max_size 16, min_idle 4, a `FrameHeartbeat` every 500 ms with a 200 ms timeout,
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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livepool::{
    BreakerConfig, Conn, Events, EventsError, EvictReason, FrameHeartbeat, Pool, Statistics,
};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};

const REQUEST: u8 = b'R';
const REQ_LEN: usize = 16;
const DEADLINE: Duration = Duration::from_millis(300);
const LATE_BY: Duration = Duration::from_millis(400);
const DOWNTIME: Duration = Duration::from_secs(1);
const STALL_FOR: Duration = Duration::from_secs(3);
const RESTART_GAP: Duration = Duration::from_secs(4);
const STALE_GRACE: Duration = Duration::from_millis(5);

const USAGE: &str = "usage: chaos [--duration SECS] [--rate REQS_PER_SEC] [--tasks N] \
[--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N]
  defaults: --duration 20 --rate 2000 --tasks 32 --fault-every 200 --faults all";

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

/// SplitMix64: enough randomness for picking faults, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// A server-side connection the scheduler may fault.
struct ServerConn {
    tx: mpsc::UnboundedSender<Fault>,
    faulted: bool,
}

/// Shared by the server, the fault scheduler and the workload.
struct Chaos {
    opts: Opts,
    end: Instant,
    conns: Mutex<HashMap<u64, ServerConn>>,
    /// Client address (as the server sees it) → the last fault applied to it, and when.
    faulted: Mutex<HashMap<SocketAddr, (Fault, Instant)>>,
    injected: [AtomicU64; 6],
    down: AtomicBool,
    next_token: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    stale: Mutex<Vec<String>>,
    leaks: AtomicU64,
}

impl Chaos {
    fn record(&self, peer: SocketAddr, fault: Fault) {
        self.faulted
            .lock()
            .unwrap()
            .insert(peer, (fault, Instant::now()));
        if fault != Fault::Restart {
            self.injected[fault as usize].fetch_add(1, Relaxed);
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

/// The accept loop; a message on `restarts` takes the server down for `DOWNTIME`.
async fn server(chaos: Arc<Chaos>, mut listener: TcpListener, mut restarts: mpsc::Receiver<()>) {
    let addr = listener.local_addr().expect("bound");
    let mut next_id = 0;
    loop {
        tokio::select! {
            Ok((stream, peer)) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                let (tx, rx) = mpsc::unbounded_channel();
                next_id += 1;
                chaos.conns.lock().unwrap().insert(next_id, ServerConn { tx, faulted: false });
                // A new connection from a reused port starts with a clean record.
                chaos.faulted.lock().unwrap().remove(&peer);
                tokio::spawn(serve(chaos.clone(), next_id, stream, peer, rx));
            }
            Some(()) = restarts.recv() => {
                drop(listener);
                for c in chaos.conns.lock().unwrap().values() {
                    let _ = c.tx.send(Fault::Restart);
                }
                sleep(DOWNTIME.min(chaos.end.saturating_duration_since(Instant::now()))).await;
                let Some(l) = listen(addr, chaos.end).await else { return };
                listener = l;
                chaos.down.store(false, Relaxed);
            }
            _ = sleep_until(chaos.end) => return,
        }
    }
}

/// One server-side connection: answers requests and pings, and applies the faults sent to it.
async fn serve(
    chaos: Arc<Chaos>,
    id: u64,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut faults: mpsc::UnboundedReceiver<Fault>,
) {
    let (mut buf, mut filled, mut late) = ([0u8; REQ_LEN], 0, false);
    loop {
        let need = match (filled, buf[0]) {
            (0, _) => 1,
            (_, FrameHeartbeat::PING) => FrameHeartbeat::LEN,
            (_, REQUEST) => REQ_LEN,
            _ => break, // not our protocol: hang up
        };
        if filled == need {
            filled = 0;
            let sent = if buf[0] == FrameHeartbeat::PING {
                let (_, seq, ts) = FrameHeartbeat::decode(buf[..8].try_into().expect("8 bytes"));
                stream
                    .write_all(&FrameHeartbeat::encode(FrameHeartbeat::PONG, seq, ts))
                    .await
            } else {
                if std::mem::take(&mut late) {
                    chaos.record(peer, Fault::Late);
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
                    if let Some(f) = fault { chaos.record(peer, f) }
                    break;
                }
                Some(Fault::Rst) => {
                    chaos.record(peer, Fault::Rst);
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    break;
                }
                Some(Fault::Garbage) => {
                    chaos.record(peer, Fault::Garbage);
                    if stream.write_all(&[0xEE; 3]).await.is_err() { break }
                }
                Some(Fault::Stall) => {
                    chaos.record(peer, Fault::Stall);
                    // Hold the socket open, unread and unanswered, for a while or until a restart.
                    let until = Instant::now() + STALL_FOR;
                    while let Ok(Some(f)) = tokio::time::timeout_at(until, faults.recv()).await {
                        if f == Fault::Restart { chaos.record(peer, f); break }
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
    chaos.conns.lock().unwrap().remove(&id);
}

/// Every `every`, applies a random enabled fault to a random unfaulted server-side connection.
async fn inject_faults(chaos: Arc<Chaos>, restart: mpsc::Sender<()>) {
    let (faults, every) = (&chaos.opts.faults, chaos.opts.fault_every);
    if faults.is_empty() {
        return;
    }
    let mut rng = Rng(chaos.opts.seed);
    let mut next_restart = Instant::now() + RESTART_GAP / 2;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(chaos.end) => return,
        }
        let mut fault = faults[rng.below(faults.len())];
        // A restart takes the endpoint away for a while: at most one per RESTART_GAP, and none
        // near the end, so that the run ends with the pool recovered.
        let near_end = chaos.end.saturating_duration_since(Instant::now()) < 2 * DOWNTIME;
        if fault == Fault::Restart && (Instant::now() < next_restart || near_end) {
            let others: Vec<_> = faults.iter().filter(|&&f| f != Fault::Restart).collect();
            if others.is_empty() {
                continue;
            }
            fault = *others[rng.below(others.len())];
        }
        if fault == Fault::Restart {
            next_restart = Instant::now() + RESTART_GAP;
            if !chaos.down.swap(true, Relaxed) && restart.try_send(()).is_ok() {
                chaos.injected[Fault::Restart as usize].fetch_add(1, Relaxed);
            }
            continue;
        }
        let mut conns = chaos.conns.lock().unwrap();
        let mut targets: Vec<_> = conns.values_mut().filter(|c| !c.faulted).collect();
        if !targets.is_empty() {
            let i = rng.below(targets.len());
            targets[i].faulted = true;
            let _ = targets[i].tx.send(fault);
        }
    }
}

/// Checks out a connection, flags it if the server had faulted it before, and runs one exchange.
async fn request(pool: &Pool, chaos: &Chaos, token: u64) -> Result<(), &'static str> {
    let mut conn = pool.get().await.map_err(|e| match () {
        _ if e.is_circuit_open() => "get: circuit open",
        _ if e.is_connect() => "get: connect error",
        _ if e.is_timeout() => "get: timeout",
        _ => "get: other",
    })?;
    check_stale(&conn, chaos);
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
fn check_stale(conn: &Conn, chaos: &Chaos) {
    let now = Instant::now();
    let Ok(local) = conn.local_addr() else { return };
    let Some((fault, at)) = chaos.faulted.lock().unwrap().get(&local).copied() else {
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

async fn worker(pool: Pool, chaos: Arc<Chaos>, i: u64) {
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
        let res = tokio::time::timeout(DEADLINE, request(&pool, &chaos, token)).await;
        match res.unwrap_or(Err("deadline")) {
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

/// Collects eviction events until `stop`; returns them and the number missed.
async fn collect(mut events: Events, chaos: Arc<Chaos>, stop: Arc<Notify>) -> (Vec<Eviction>, u64) {
    let (mut out, mut lagged) = (Vec::new(), 0);
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.notified() => break,
        };
        match ev {
            Ok(ev) => {
                let fault = ev
                    .local_addr
                    .and_then(|a| chaos.faulted.lock().unwrap().get(&a).copied());
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

fn report(chaos: &Chaos, stats: &Statistics, evictions: &[Eviction], lagged: u64, secs: f64) {
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
        stats.breaker_transitions,
        stats.breaker_state.as_str()
    );

    let header = format!("{:>6} {:>9} {:>9} {:>9}", "count", "p50", "p99", "max");
    println!(
        "\n{:<22}{header}   (detection → removal)",
        "evictions by reason"
    );
    for (reason, n) in stats.evictions() {
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
    let chaos = Arc::new(Chaos {
        opts: opts.clone(),
        end: start + opts.duration,
        conns: Mutex::default(),
        faulted: Mutex::default(),
        injected: Default::default(),
        down: AtomicBool::new(false),
        next_token: AtomicU64::new(1),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failures: Mutex::default(),
        stale: Mutex::default(),
        leaks: AtomicU64::new(0),
    });
    let listener = listen("127.0.0.1:0".parse().expect("literal"), chaos.end)
        .await
        .expect("cannot listen on loopback");
    let addr = listener.local_addr().expect("bound");
    let (restart_tx, restart_rx) = mpsc::channel(1);
    tokio::spawn(server(chaos.clone(), listener, restart_rx));

    let pool = Pool::builder(addr)
        .max_size(16)
        .min_idle(4)
        .heartbeat(FrameHeartbeat::new())
        .heartbeat_interval(Duration::from_millis(500))
        .heartbeat_timeout(Duration::from_millis(200))
        .reap_interval(Duration::from_millis(100))
        .connect_timeout(Some(Duration::from_secs(1)))
        // A restart lasts 1 s: probe again soon rather than after the default 30 s.
        .breaker(Some(
            BreakerConfig::new()
                .open_for(Duration::from_millis(200))
                .max_open_for(Duration::from_millis(500)),
        ))
        .build()
        .expect("valid configuration");
    let names: Vec<_> = opts.faults.iter().map(|f| f.name()).collect();
    println!(
        "livepool chaos: server {addr}, {:?}, {} tasks, {} req/s, a fault every {:?} from [{}], seed {}",
        opts.duration,
        opts.tasks,
        opts.rate,
        opts.fault_every,
        names.join(","),
        opts.seed
    );

    let stop = Arc::new(Notify::new());
    let collector = tokio::spawn(collect(pool.events(), chaos.clone(), stop.clone()));
    tokio::spawn(inject_faults(chaos.clone(), restart_tx));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..opts.tasks {
        workers.spawn(worker(pool.clone(), chaos.clone(), i));
    }

    let mut progress =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    while Instant::now() < chaos.end {
        tokio::select! {
            _ = progress.tick() => {}
            _ = sleep_until(chaos.end) => break,
        }
        let (st, stats) = (pool.status(), pool.statistics());
        let faults: u64 = chaos.injected.iter().map(|a| a.load(Relaxed)).sum();
        println!(
            "{:>5.1}s  ok {:>7}  failed {:>5}  faults {:>4}  evictions {:>4}  pool {:>2} ({:>2} idle)  breaker {:<9}  stale {} leaks {}",
            start.elapsed().as_secs_f64(),
            chaos.ok.load(Relaxed),
            chaos.failed.load(Relaxed),
            faults,
            stats.evicted_total(),
            st.size,
            st.idle,
            st.breaker.as_str(),
            chaos.stale.lock().unwrap().len(),
            chaos.leaks.load(Relaxed)
        );
    }
    while workers.join_next().await.is_some() {}
    let stats = pool.statistics();
    stop.notify_one();
    let (evictions, lagged) = collector.await.expect("collector");
    pool.close();

    let secs = start.elapsed().as_secs_f64();
    report(&chaos, &stats, &evictions, lagged, secs);
    let (stale, leaks) = (chaos.stale.lock().unwrap().len(), chaos.leaks.load(Relaxed));
    if stale == 0 && leaks == 0 {
        println!("\nPASS: no stale handouts, no leaks");
        ExitCode::SUCCESS
    } else {
        println!("\nFAIL: {stale} stale handouts, {leaks} leaks");
        ExitCode::FAILURE
    }
}
