//! Failover time of a `livepool::Balancer` after one of its three endpoints is blackholed.
//!
//! A custom `main` (no criterion), root only (network namespaces):
//!
//! ```text
//! cargo bench --bench failover
//! ```
//!
//! (about 5 s a run, at most about 13 s when no ejection comes; 5 runs take about 25 s).
//! Without root or `ip netns` it prints a `SKIPPED:` line and exits 0; under
//! `LIVEPOOL_REQUIRE_ALL=1` it panics instead.
//!
//! Setup of one run (every run has fresh namespaces, servers and balancer, so no ejection,
//! breaker or backoff carries over):
//! - two network namespaces joined by a veth pair (the testkit's `netns`, as the tests use
//!   it): the client namespace A and the server namespace B;
//! - three frame servers (8-byte frames: a `FramePing` ping is answered with its pong,
//!   anything else is echoed), each on its own thread and runtime: two on A's loopback
//!   (127.0.0.2 and 127.0.0.3, the near endpoints), one on B's veth address (the far one);
//! - in A, on a current-thread runtime: one `Balancer` over the three, each pool with
//!   `max_size` 16, `min_idle` 2, `FramePing` every H with timeout T,
//!   `reap_interval` 50 ms (the heartbeat schedule's granularity), connect timeout C, the
//!   default breaker (3 failures; open 200 ms, growing with the outage) and default
//!   heartbeat jitter (0.1); ejection after F consecutive failures, otherwise `Ejection::default()` (30 s base, so the far
//!   endpoint stays out for the rest of the run; one of three may be out);
//! - K tasks in a closed loop, each doing `get()` + one 8-byte request and its response
//!   under a per-request deadline D (`tokio::time::timeout` around both; a request past it
//!   is dropped with its connection, which the pool then closes: a write without its read).
//!   After a failure a task sleeps 1 ms before its next request.
//!
//! Printed per run besides the row: the requests before the cut and the far endpoint's share
//! of them, the failed requests after t0 by kind, the far endpoint's requests after its
//! ejection (0 expected), every balancer event and far-pool breaker transition, and the far
//! endpoint's failure counters (`Balancer::endpoints`) polled every millisecond from t0, so
//! that each failure that led to the ejection shows with its time (heartbeat or connect).
//!
//! One run: wait (≤ 5 s) until every pool holds its `min_idle`, load for the warm-up W (all
//! three endpoints serve: the `near/far` share before the cut is printed), then at t0 cut
//! B's veth (`Netns::blackhole`: packets to the far endpoint vanish, no RST, no ICMP; t0 is
//! taken just before the `ip` command, which takes a few ms: its duration is the `cut`
//! column). Load goes on until the far endpoint's `Ejected` event (`Balancer::events`) plus
//! the window A, or until t0 + the bound E without an ejection.
//!
//! Figures of a run (times in ms from t0; `BalancerEvent::at` and the far pool's
//! `breaker_events()` are on the same monotonic clock):
//! - `eject`: the far endpoint's `Ejected` event; `fails`: the failures it counted;
//! - `brk open`: the far pool's breaker opening (it also takes the endpoint out of
//!   selection, so the earlier of the two is what callers see);
//! - `last fail`: the end of the last failed or deadline-exceeded request: the caller-visible
//!   failover time; `failed`: requests that failed after t0; `fail>ej`: of those, the ones
//!   that started after the ejection (a failover that works has 0);
//! - `cut`: how long the `ip` command took (the path is cut somewhere within it);
//! - `p50/p99 before` and `after`: `get()` + request latency of every request (a failed one
//!   at its elapsed time) that started in the warm-up window, and of those that started
//!   after the ejection; `rps`: requests per second in the two windows.
//!
//! The table gives each run, then the median and the max of each column over the runs (a
//! run without an ejection shows `-` and is left out of that column's median and max).
//!
//! What bounds the ejection. The failures that count are the ones the far pool's breaker
//! hears (heartbeats unanswered after T, connects timed out after C) and the requests on the
//! far endpoint's connections that come back failed or abandoned: under this load the far
//! pool's idle members are checked out again at once, so they are never pinged; their
//! requests hang until the caller's deadline D, which drops them mid-read, and each such
//! return is a failure. With F requests in flight on the far endpoint at the cut (K = 16
//! tasks spread over three endpoints), the F-th of them ends at about t0 + D: expect the
//! ejection there, whatever `min_idle` (`LIVEPOOL_FAILOVER_MIN_IDLE=0`) and also when F is
//! above the breaker's threshold (`LIVEPOOL_FAILOVER_F=5`; an opening breaker would eject
//! at once anyway). On a quiet pool, heartbeats find a blackholed endpoint instead: a member
//! idle at t0 is pinged by t0 + H and fails at + T. Requests keep failing until the far
//! endpoint leaves selection, and one that chose it just before fails at D: so `last fail` is
//! about `eject` (or `brk open`, if earlier) plus D at most, and `failed` is about the
//! requests in flight on the far endpoint at the cut.

use livepool_testkit::bench::percentile;
use livepool_testkit::netns::Netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use livepool::{
    Balancer, BalancerEventKind, BreakerConfig, BreakerState, Ejection, EvictReason, FramePing,
    PoolConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MS: Duration = Duration::from_millis(1);
/// The pools' `max_size` (K tasks never wait for a slot).
const MAX_SIZE: usize = 16;
/// The heartbeat schedule's granularity.
const REAP: Duration = Duration::from_millis(50);

/// True (after a `SKIPPED:` line on stdout, under the bench's name) when `what` is missing,
/// a panic instead under `LIVEPOOL_REQUIRE_ALL=1`.
fn skip_without(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    if std::env::var("LIVEPOOL_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("LIVEPOOL_REQUIRE_ALL=1 but {what} is not available");
    }
    println!("SKIPPED: failover bench: {what} is not available on this machine");
    true
}

/// The settings; see the module docs.
#[derive(Clone, Debug)]
struct Settings {
    heartbeat: Duration,
    heartbeat_timeout: Duration,
    connect: Duration,
    failures: u32,
    breaker: u32,
    min_idle: usize,
    tasks: usize,
    deadline: Duration,
    runs: usize,
    warm: Duration,
    after: Duration,
    bound: Duration,
}

/// `LIVEPOOL_FAILOVER_<name>` as a number, `default` when unset; a value that does not parse
/// stops the bench (a typo must not run the defaults silently).
fn setting(name: &str, default: u64) -> u64 {
    let var = format!("LIVEPOOL_FAILOVER_{name}");
    match std::env::var(&var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let ms = |name, default| Duration::from_millis(setting(name, default));
        Settings {
            heartbeat: ms("H_MS", 500),
            heartbeat_timeout: ms("T_MS", 200),
            connect: ms("C_MS", 300),
            failures: setting("F", 3) as u32,
            breaker: setting("BREAKER", 3) as u32,
            min_idle: setting("MIN_IDLE", 2) as usize,
            tasks: setting("TASKS", 16) as usize,
            deadline: ms("DEADLINE_MS", 200),
            runs: setting("RUNS", 5) as usize,
            warm: ms("WARM_MS", 2000),
            after: ms("AFTER_MS", 2000),
            bound: ms("BOUND_MS", 8000),
        }
    }

    fn describe(&self) -> String {
        let breaker = match self.breaker {
            0 => "none".to_string(),
            n => format!("threshold {n}, default periods"),
        };
        format!(
            "H={:?} T={:?} C={:?} F={} breaker {breaker}; K={} tasks, deadline D={:?}; max_size {MAX_SIZE} min_idle {} reap {REAP:?}; R={} runs, warm-up {:?}, {:?} after the ejection, ejection awaited at most {:?}",
            self.heartbeat,
            self.heartbeat_timeout,
            self.connect,
            self.failures,
            self.tasks,
            self.deadline,
            self.min_idle,
            self.runs,
            self.warm,
            self.after,
            self.bound
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The frame servers.

/// Answers 8-byte frames on one connection: a ping with its pong, anything else echoed.
async fn serve_frames(mut sock: tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    let mut frame = [0u8; FramePing::LEN];
    while sock.read_exact(&mut frame).await.is_ok() {
        if frame[0] == FramePing::PING {
            frame[0] = FramePing::PONG;
        }
        if sock.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Frame servers on `ips` (port 0) in namespace `ns`, on their own thread and runtime;
/// stopped (every connection closed) on drop.
struct Servers {
    addrs: Vec<SocketAddr>,
    /// Stops the servers' runtime; their thread.
    running: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Servers {
    fn start(ns: &str, ips: &[IpAddr]) -> Servers {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ns, ips) = (ns.to_string(), ips.to_vec());
        let thread = std::thread::spawn(move || {
            Netns::run_in(&ns, move || async move {
                let mut addrs = Vec::new();
                for ip in ips {
                    let l = TcpListener::bind(SocketAddr::new(ip, 0))
                        .await
                        .expect("bind a frame server");
                    addrs.push(l.local_addr().expect("server address"));
                    tokio::spawn(async move {
                        loop {
                            if let Ok((sock, _)) = l.accept().await {
                                tokio::spawn(serve_frames(sock));
                            }
                        }
                    });
                }
                addr_tx.send(addrs).expect("bench waits for the addresses");
                // Dropping the runtime then drops every connection.
                let _ = stopped.await;
            })
        });
        let addrs = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("frame servers started");
        let running = Some((stop, thread));
        Servers { addrs, running }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `get()` returned an error.
    GetFailed,
    /// The request or its response failed, or the response was wrong.
    IoFailed,
    /// Past the per-request deadline.
    Deadline,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    /// The endpoint `get()` chose (0, 1 near, 2 far), if it returned a connection.
    endpoint: Option<u8>,
    outcome: Outcome,
}

/// One task of the closed loop, until `stop`.
async fn load(
    bal: Balancer<FramePing>,
    names: Arc<[String; 3]>,
    deadline: Duration,
    stop: Arc<AtomicBool>,
    task: u8,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(1 << 16);
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        // 8 bytes that never start with the ping's type byte.
        let mut req = n.to_be_bytes();
        req[0] = b'T';
        req[1] = task;
        let start = Instant::now();
        let mut endpoint = None;
        let res = tokio::time::timeout(deadline, async {
            let mut c = bal.get().await.map_err(|_| Outcome::GetFailed)?;
            endpoint = names
                .iter()
                .position(|e| e == c.endpoint())
                .map(|i| i as u8);
            c.write_all(&req).await.map_err(|_| Outcome::IoFailed)?;
            let mut resp = [0u8; 8];
            c.read_exact(&mut resp)
                .await
                .map_err(|_| Outcome::IoFailed)?;
            if resp != req {
                c.mark_broken();
                return Err(Outcome::IoFailed);
            }
            Ok(())
        })
        .await;
        let outcome = match res {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(o)) => o,
            Err(_) => Outcome::Deadline,
        };
        samples.push(Sample {
            start,
            end: Instant::now(),
            endpoint,
            outcome,
        });
        if outcome != Outcome::Ok {
            tokio::time::sleep(MS).await;
        }
    }
    samples
}

/// What one run saw, as raw as possible (the analysis is in `Figures::of`).
struct Run {
    samples: Vec<Sample>,
    warm_start: Instant,
    t0: Instant,
    cut_done: Instant,
    /// The far endpoint's first ejection: when, and the failures it counted.
    ejected: Option<(Instant, u32)>,
    breaker_open: Option<Instant>,
    /// Every balancer event of the run and the far pool's breaker transitions, as text.
    log: Vec<(Instant, String)>,
    far_connect_errors: u64,
}

/// One run in fresh namespaces.
fn run_once(ns: Arc<Netns>, s: &Settings) -> Run {
    let far = Servers::start(&ns.b, &[IpAddr::V4(ns.server_ip)]);
    let near = Servers::start(
        &ns.a,
        &[
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        ],
    );
    let names: Arc<[String; 3]> = Arc::new([
        near.addrs[0].to_string(),
        near.addrs[1].to_string(),
        far.addrs[0].to_string(),
    ]);
    let ns_a = ns.a.clone();
    let run = Netns::run_in(&ns_a, move || client(ns, names, s.clone()));
    drop(near);
    drop(far);
    run
}

/// The client side of a run, inside namespace A.
async fn client(ns: Arc<Netns>, names: Arc<[String; 3]>, s: Settings) -> Run {
    let (h, t, c, breaker) = (s.heartbeat, s.heartbeat_timeout, s.connect, s.breaker);
    let min_idle = s.min_idle;
    let bal = Balancer::builder()
        .config(PoolConfig {
            max_size: MAX_SIZE,
            min_idle,
            connect_timeout: Some(c),
            heartbeat_interval: h,
            heartbeat_timeout: t,
            reap_interval: REAP,
            breaker: (breaker > 0).then(|| BreakerConfig::new().failure_threshold(breaker)),
            ..PoolConfig::default()
        })
        .protocol(FramePing::new())
        .endpoints(names.iter().map(String::as_str))
        .ejection(Some(Ejection::new().consecutive_failures(s.failures)))
        .build()
        .expect("balancer settings");
    let far = &names[2];
    let mut events = bal.events();
    let mut breaker_events = bal.pool(far).expect("far pool").breaker_events();

    // Every pool at its min_idle before the load starts.
    let ready = Instant::now() + Duration::from_secs(5);
    while !bal.endpoints().iter().all(|e| e.status.idle >= min_idle) {
        assert!(
            Instant::now() < ready,
            "pools not filled in 5 s: {:?}",
            bal.endpoints()
        );
        tokio::time::sleep(5 * MS).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..s.tasks)
        .map(|i| {
            tokio::spawn(load(
                bal.clone(),
                names.clone(),
                s.deadline,
                stop.clone(),
                i as u8,
            ))
        })
        .collect();
    let warm_start = Instant::now();
    tokio::time::sleep(s.warm).await;

    // The cut, off the runtime's thread (`ip` and the wait for the carrier block).
    let (t0, cut_done) = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        ns.blackhole();
        (t0, Instant::now())
    })
    .await
    .expect("blackhole");

    let sampler = tokio::spawn(watch_far(bal.clone(), stop.clone()));
    let mut log = Vec::new();
    let bound = tokio::time::Instant::from_std(t0 + s.bound);
    let mut ejected = None;
    while ejected.is_none() {
        match tokio::time::timeout_at(bound, events.recv()).await {
            Ok(Ok(ev)) => {
                let at = ev.at.into_std();
                if *ev.endpoint == **far
                    && let BalancerEventKind::Ejected { failures, .. } = ev.kind
                {
                    ejected = Some((at, failures));
                }
                log.push((at, format!("{} {:?}", ev.endpoint, ev.kind)));
            }
            Ok(Err(livepool::EventsError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let end = match ejected {
        Some((at, _)) => at + s.after,
        None => Instant::now(),
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
    stop.store(true, Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("load task"));
    }
    log.extend(sampler.await.expect("sampler"));
    while let Ok(Some(ev)) = events.try_recv() {
        log.push((ev.at.into_std(), format!("{} {:?}", ev.endpoint, ev.kind)));
    }
    let mut breaker_open = None;
    while let Ok(Some(ev)) = breaker_events.try_recv() {
        let at = ev.at.into_std();
        if ev.transition.to == BreakerState::Open && breaker_open.is_none() {
            breaker_open = Some(at);
        }
        log.push((
            at,
            format!(
                "{} breaker {:?} -> {:?}",
                ev.endpoint, ev.transition.from, ev.transition.to
            ),
        ));
    }
    log.sort_by_key(|e| e.0);
    let far_connect_errors = bal
        .pool(far)
        .map(|p| p.statistics().connect_errors)
        .unwrap_or(0);
    Run {
        samples,
        warm_start,
        t0,
        cut_done,
        ejected,
        breaker_open,
        log,
        far_connect_errors,
    }
}

/// Polls the far endpoint's failure counts every millisecond until `stop`; each change with
/// when it was seen (within a millisecond or so of when it happened: the counters have no
/// timestamps of their own).
async fn watch_far(bal: Balancer<FramePing>, stop: Arc<AtomicBool>) -> Vec<(Instant, String)> {
    let mut seen = Vec::new();
    let mut last = None;
    while !stop.load(Relaxed) {
        if let Some(e) = bal.endpoints().get(2) {
            let now = (
                e.consecutive_failures,
                e.statistics.connect_errors,
                e.statistics.evicted(EvictReason::HeartbeatTimeout),
                e.statistics.evicted(EvictReason::HeartbeatFailed),
            );
            if last != Some(now) {
                last = Some(now);
                seen.push((
                    Instant::now(),
                    format!(
                        "{} polled: consecutive failures {}, connect errors {}, heartbeat timeouts {}, heartbeat failures {}",
                        e.endpoint, now.0, now.1, now.2, now.3
                    ),
                ));
            }
        }
        tokio::time::sleep(MS).await;
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// The figures.

/// One run's row; times in ms from t0.
struct Figures {
    cut: f64,
    eject: Option<f64>,
    eject_failures: Option<f64>,
    breaker_open: Option<f64>,
    last_fail: Option<f64>,
    failed: f64,
    failed_after_eject: Option<f64>,
    p50_before: f64,
    p99_before: f64,
    p50_after: Option<f64>,
    p99_after: Option<f64>,
    rps_before: f64,
    rps_after: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `a - b` in ms, negative when `a` is earlier.
fn since(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => ms(d),
        None => -ms(b - a),
    }
}

/// p50, p99 (ms) and requests per second of the samples that started in [from, to).
fn window(samples: &[Sample], from: Instant, to: Instant) -> (f64, f64, f64) {
    let mut lat: Vec<Duration> = samples
        .iter()
        .filter(|x| x.start >= from && x.start < to)
        .map(|x| x.end - x.start)
        .collect();
    lat.sort_unstable();
    let secs = (to - from).as_secs_f64().max(1e-9);
    (
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        lat.len() as f64 / secs,
    )
}

impl Figures {
    fn of(r: &Run) -> Figures {
        let failed: Vec<&Sample> = r
            .samples
            .iter()
            .filter(|x| x.outcome != Outcome::Ok && x.end >= r.t0)
            .collect();
        let end = r.samples.iter().map(|x| x.end).max().unwrap_or(r.t0);
        let (p50_before, p99_before, rps_before) = window(&r.samples, r.warm_start, r.t0);
        let after = r.ejected.map(|(at, _)| {
            let w = window(&r.samples, at, end);
            let failed_after = failed.iter().filter(|x| x.start >= at).count();
            (w, failed_after)
        });
        Figures {
            cut: since(r.cut_done, r.t0),
            eject: r.ejected.map(|(at, _)| since(at, r.t0)),
            eject_failures: r.ejected.map(|(_, f)| f64::from(f)),
            breaker_open: r.breaker_open.map(|at| since(at, r.t0)),
            last_fail: failed.iter().map(|x| since(x.end, r.t0)).reduce(f64::max),
            failed: failed.len() as f64,
            failed_after_eject: after.map(|(_, f)| f as f64),
            p50_before,
            p99_before,
            p50_after: after.map(|((p, _, _), _)| p),
            p99_after: after.map(|((_, p, _), _)| p),
            rps_before,
            rps_after: after.map(|((_, _, n), _)| n),
        }
    }

    fn columns(&self) -> [Option<f64>; 13] {
        [
            Some(self.cut),
            self.eject,
            self.eject_failures,
            self.breaker_open,
            self.last_fail,
            Some(self.failed),
            self.failed_after_eject,
            Some(self.p50_before),
            Some(self.p99_before),
            self.p50_after,
            self.p99_after,
            Some(self.rps_before),
            self.rps_after,
        ]
    }
}

const HEADER: [&str; 13] = [
    "cut",
    "eject",
    "fails",
    "brk open",
    "last fail",
    "failed",
    "fail>ej",
    "p50 bef",
    "p99 bef",
    "p50 aft",
    "p99 aft",
    "rps bef",
    "rps aft",
];

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.abs() >= 100.0 || x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn row(label: &str, cols: &[Option<f64>]) -> String {
    let mut line = format!("| {label:<6} |");
    for c in cols {
        line.push_str(&format!(" {:>9} |", cell(*c)));
    }
    line
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The command that ran this, with the settings given in the environment.
fn command() -> String {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("LIVEPOOL_FAILOVER_") || k == "LIVEPOOL_REQUIRE_ALL")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    vars.push("cargo bench --bench failover".into());
    vars.join(" ")
}

fn main() {
    println!("failover: command: {}", command());
    let s = Settings::from_env();
    println!("failover: settings: {}", s.describe());
    if skip_without(Netns::available(), "root and ip netns") {
        return;
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for i in 1..=s.runs {
        let ns = Arc::new(Netns::setup());
        let r = run_once(ns, &s);
        let f = Figures::of(&r);
        let before: Vec<&Sample> = r
            .samples
            .iter()
            .filter(|x| x.start >= r.warm_start && x.start < r.t0)
            .collect();
        let far_before = before.iter().filter(|x| x.endpoint == Some(2)).count();
        let failed_before = before.iter().filter(|x| x.outcome != Outcome::Ok).count();
        let far_after = r.ejected.map_or(0, |(at, _)| {
            r.samples
                .iter()
                .filter(|x| x.start >= at && x.endpoint == Some(2))
                .count()
        });
        let by_kind = |o: Outcome| {
            r.samples
                .iter()
                .filter(|x| x.end >= r.t0 && x.outcome == o)
                .count()
        };
        println!(
            "failover: run {i}: before the cut {} requests, {far_before} served by the far endpoint, {failed_before} failed; after t0 failed: {} deadline, {} get error, {} I/O; far endpoint served {far_after} after its ejection; far pool connect errors {}",
            before.len(),
            by_kind(Outcome::Deadline),
            by_kind(Outcome::GetFailed),
            by_kind(Outcome::IoFailed),
            r.far_connect_errors,
        );
        for (at, what) in &r.log {
            println!("failover: run {i}:   t0{:+.1} ms {what}", since(*at, r.t0));
        }
        rows.push(f);
    }
    println!(
        "failover: ---- {} runs in {:.1} s; times in ms from t0 (the blackhole), latency in ms ----",
        s.runs,
        started.elapsed().as_secs_f64()
    );
    println!("failover: settings: {}", s.describe());
    let mut head = format!("| {:<6} |", "run");
    let mut rule = "|--------|".to_string();
    for h in HEADER {
        head.push_str(&format!(" {h:>9} |"));
        rule.push_str("-----------|");
    }
    println!("{head}\n{rule}");
    for (i, f) in rows.iter().enumerate() {
        println!("{}", row(&(i + 1).to_string(), &f.columns()));
    }
    let column = |c: usize| -> Vec<f64> { rows.iter().filter_map(|f| f.columns()[c]).collect() };
    let medians: Vec<Option<f64>> = (0..HEADER.len()).map(|c| median(column(c))).collect();
    let maxes: Vec<Option<f64>> = (0..HEADER.len())
        .map(|c| column(c).into_iter().reduce(f64::max))
        .collect();
    println!("{}", row("median", &medians));
    println!("{}", row("max", &maxes));
    let missed = rows.iter().filter(|f| f.eject.is_none()).count();
    if missed > 0 {
        println!(
            "failover: {missed} of {} runs saw no ejection of the far endpoint within {:?}",
            s.runs, s.bound
        );
    }
}
