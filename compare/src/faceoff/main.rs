//! The face-off (issue 21): a fault matrix against real servers this program starts itself,
//! livepool next to the pools users would pick instead.
//!
//! - Redis (`redis_pools.rs`): livepool-redis, deadpool-redis, bb8-redis, the redis crate's
//!   `ConnectionManager`, each with its documented defaults, plus a row per peer with its
//!   recommended health settings where they exist.
//! - PostgreSQL (`pg_pools.rs`): livepool-postgres, deadpool-postgres (Fast and Verified),
//!   bb8-postgres, sqlx's `PgPool`.
//!
//! Every row runs the same worker loop (`harness.rs`): `--tasks` workers, each sending one
//! request after another (after a `--pace-ms` pause) with a unique token the reply must
//! carry, under a per-request deadline (`--deadline-ms`). A request ends **ok**, **failed**
//! (an error: the caller knows), **hung** (the deadline passed first) or **wrong** (a reply
//! that is not its token).
//!
//! The faults (`faults.rs`, each a few seconds on real kernels): `restart`, `kill`,
//! `idle-kill`, `idle-drop`, `blackhole`, `sigstop`, `failover`. `idle-drop` and `blackhole`
//! need a network namespace (`netns.rs`, root); without root they are skipped with a line
//! `SKIPPED: <fault>: needs root (network namespaces)`.
//!
//! Each fault is one round with fresh pools of every row, all against the same server:
//! 1. warm-up until every row has succeeded (and at least `--warmup-ms`);
//! 2. idle faults only: the workers pause, in-flight requests finish, the pools settle;
//! 3. the fault, at a recorded moment; its heal, at another;
//! 4. idle faults only: still no traffic for `--idle-ms` after the heal, while every pool's
//!    `open()` and `connects()` are polled every 10 ms: the first change is when the pool
//!    *knew* (evicted or reconnected on its own); then traffic resumes;
//! 5. the tail, until every row has succeeded with a request started after the heal (idle
//!    faults: after the resume), for at least 1.5 s, or `--max-tail-s`.
//!
//! Figures per pool and fault, over the requests that ended from the fault on (idle faults:
//! from the resume on, and times from the resume): ok, failed, hung, wrong; the time from the
//! fault to the first failed request; from the heal to the first ok request started after it;
//! connect attempts from the fault to the end; for idle faults, the time until the pool knew.
//! A row is **unhealthy** (✗) when a request hung, a reply was wrong, or it did not recover.
//! Per fault, the best value of each figure is in bold where the rows differ, among the rows
//! that got through (✓) when any did (near values tie: see `Tie`); after the tables, a list
//! of where a peer did better than every livepool row, per fault and figure.
//!
//! Servers: a `redis-server` and a PostgreSQL cluster on 127.0.0.1 (free ports), a second of
//! each for `failover`, and one of each inside the namespace (`idle-drop`, `blackhole`); all
//! are stopped and removed at exit, also after an error or Ctrl-C. Needs `redis-server` on
//! PATH and PostgreSQL's `initdb`/`pg_ctl` (as `compare/src/servers.rs` finds them). A round
//! lasts about 3 to 9 s (the slowest pool's recovery can add up to `--max-tail-s`): the whole
//! matrix, both servers, takes about 1.5 min.
//!
//! Out: Markdown tables on stdout (also `OUT/summary.md`), progress on stderr, one SVG
//! timeline per server × fault in `OUT` (`--out`, default `target/faceoff`, relative to the
//! current directory).
//!
//! ```sh
//! cargo run --release --manifest-path compare/Cargo.toml --bin faceoff
//! cargo run --release --manifest-path compare/Cargo.toml --bin faceoff -- --help
//! ```

mod faults;
mod harness;
mod netns;
mod pg_pools;
mod plot;
mod redis_pools;
#[path = "../report.rs"]
mod report;
// Shared with the other comparisons; the face-off does not use all of it.
#[allow(dead_code)]
#[path = "../servers.rs"]
mod servers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use faults::{Fault, Marks, Server, ServerKind, Target};
use harness::{Control, Figures, Outcome, Reply, Subject};
use netns::NetNs;
use report::{ErrorClass, error_class, livepool_commit, markdown};
use servers::{PG_USER, Place};

/// Each worker stops after this many requests in a round, whatever else happens.
const MAX_REQUESTS: u64 = 10_000_000;
/// The timelines' bucket.
const BUCKET_MS: u32 = 100;
/// How often the pools' `open()` and `connects()` are read during an idle fault.
const KNEW_POLL: Duration = Duration::from_millis(10);
/// A round gives up on a warm-up after this long.
const WARMUP_LIMIT: Duration = Duration::from_secs(15);
/// The tail lasts at least this long after the heal (the pictures show the recovery).
const MIN_TAIL: Duration = Duration::from_millis(1500);

const USAGE: &str = "\
The face-off: a fault matrix against real servers (started here), livepool next to
deadpool, bb8, the redis crate's ConnectionManager and sqlx. Tables on stdout, progress on
stderr, SVG timelines in --out.

USAGE: faceoff [OPTIONS]

  --servers LIST      redis,postgres (default both)
  --faults LIST       restart,kill,idle-kill,idle-drop,blackhole,sigstop,failover (default
                      all; idle-drop and blackhole need root: network namespaces)
  --tasks N           worker tasks per pool (default 4)
  --deadline-ms MS    per-request deadline; past it a request is hung (default 1000)
  --pace-ms MS        pause before each request (default 5)
  --outage-ms MS      how long a fault lasts before its heal (default 3000)
  --idle-ms MS        idle faults: no traffic for this long after the heal (default 3000)
  --warmup-ms MS      traffic before the fault, at least (default 1000)
  --max-tail-s S      give up waiting for a pool's recovery this long after the heal
                      (default 15)
  --out DIR           where the SVGs and summary.md go (default target/faceoff)
  -h, --help          this text
";

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    servers: Vec<ServerKind>,
    faults: Vec<Fault>,
    tasks: usize,
    deadline: Duration,
    pace: Duration,
    outage: Duration,
    idle: Duration,
    warmup: Duration,
    max_tail: Duration,
    out: PathBuf,
}

fn parse_options() -> Result<Option<Options>, String> {
    let o = Options {
        servers: vec![ServerKind::Redis, ServerKind::Postgres],
        faults: Fault::ALL.to_vec(),
        tasks: 4,
        deadline: Duration::from_millis(1000),
        pace: Duration::from_millis(5),
        outage: Duration::from_millis(3000),
        idle: Duration::from_millis(3000),
        warmup: Duration::from_millis(1000),
        max_tail: Duration::from_secs(15),
        out: PathBuf::from("target/faceoff"),
    };
    let Some(o) = report::options(o, |o, flag, value| {
        let num = |v: &str| report::num(flag, v);
        let ms = |v: &str| num(v).map(Duration::from_millis);
        match flag {
            "--servers" => {
                o.servers.clear();
                for s in value.split(',').map(str::trim) {
                    let kind = match s {
                        "redis" => ServerKind::Redis,
                        "postgres" => ServerKind::Postgres,
                        other => return Err(format!("--servers: unknown server {other:?}")),
                    };
                    if !o.servers.contains(&kind) {
                        o.servers.push(kind);
                    }
                }
            }
            "--faults" => {
                o.faults.clear();
                for s in value.split(',').map(str::trim) {
                    let f = Fault::parse(s).ok_or_else(|| {
                        let all: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                        format!("--faults: unknown fault {s:?} (one of {})", all.join(", "))
                    })?;
                    if !o.faults.contains(&f) {
                        o.faults.push(f);
                    }
                }
            }
            "--tasks" => o.tasks = num(value)?.clamp(1, 64) as usize,
            "--deadline-ms" => o.deadline = ms(value)?.max(Duration::from_millis(1)),
            "--pace-ms" => o.pace = ms(value)?,
            "--outage-ms" => o.outage = ms(value)?,
            "--idle-ms" => o.idle = ms(value)?,
            "--warmup-ms" => o.warmup = ms(value)?,
            "--max-tail-s" => o.max_tail = Duration::from_secs(num(value)?.max(1)),
            "--out" => o.out = PathBuf::from(value),
            _ => return Ok(false),
        }
        Ok(true)
    })?
    else {
        return Ok(None);
    };
    if o.servers.is_empty() || o.faults.is_empty() {
        return Err("nothing to run".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------------------------------------
// A row under watch: what the round needs to know while it runs
// ---------------------------------------------------------------------------------------------

/// A row's subject, watched: the pace before each request, whether (and when) it last
/// succeeded, what is in flight, and its error texts. The verdicts are the harness's; this
/// only lets the round decide when to go on.
struct Watched {
    inner: Arc<dyn Subject>,
    t0: Instant,
    pace: Duration,
    /// The start (ms since `t0`) of the latest ok request; -1: none yet.
    last_ok_start: AtomicI64,
    in_flight: AtomicUsize,
    /// Errors (as classes) and wrong replies of requests that ended from this moment on.
    count_from_ms: AtomicU32,
    errors: Mutex<HashMap<String, u64>>,
    wrong: Mutex<Option<(String, String)>>,
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Watched {
    fn new(inner: Arc<dyn Subject>, t0: Instant, pace: Duration) -> Watched {
        Watched {
            inner,
            t0,
            pace,
            last_ok_start: AtomicI64::new(-1),
            in_flight: AtomicUsize::new(0),
            count_from_ms: AtomicU32::new(0),
            errors: Mutex::new(HashMap::new()),
            wrong: Mutex::new(None),
        }
    }

    fn ms(&self) -> u32 {
        self.t0.elapsed().as_millis() as u32
    }

    /// Whether a request that started at or after `ms` succeeded.
    fn ok_since(&self, ms: u32) -> bool {
        self.last_ok_start.load(Relaxed) >= i64::from(ms)
    }
}

impl Subject for Watched {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            if !self.pace.is_zero() {
                tokio::time::sleep(self.pace).await;
            }
            let start = self.ms();
            self.in_flight.fetch_add(1, Relaxed);
            let _guard = InFlight(&self.in_flight);
            let reply = self.inner.request(token).await;
            let counting = self.ms() >= self.count_from_ms.load(Relaxed);
            match &reply {
                Ok(r) if r == token => {
                    self.last_ok_start.fetch_max(i64::from(start), Relaxed);
                }
                Ok(r) if counting => {
                    self.wrong
                        .lock()
                        .get_or_insert_with(|| (token.to_string(), r.clone()));
                }
                Err(e) if counting => {
                    *self
                        .errors
                        .lock()
                        .entry(error_class(e, ERRORS))
                        .or_default() += 1;
                }
                _ => {}
            }
            reply
        })
    }

    fn connects(&self) -> u64 {
        self.inner.connects()
    }

    fn open(&self) -> Option<usize> {
        self.inner.open()
    }
}

/// Error texts that differ only in numbers (ports, pids, durations) count as one; a dot
/// stays (`127.0.0.1` is `#.#.#.#`); at most 140 characters.
const ERRORS: ErrorClass = ErrorClass {
    dotted_numbers: false,
    max_chars: 140,
};

// ---------------------------------------------------------------------------------------------
// The servers of the run
// ---------------------------------------------------------------------------------------------

/// One kind of server: the loopback primary (and, for failover, a secondary), and one
/// inside the namespace for the faults that need it.
struct Set {
    kind: ServerKind,
    primary: Option<Server>,
    secondary: Option<Server>,
    inside: Option<Server>,
    /// A round left a server it could not bring back: the rest of this kind is skipped.
    broken: Option<String>,
}

/// Everything the run started. Fields drop in order: the servers before the namespace
/// they may run in.
struct Lab {
    sets: Vec<Set>,
    netns: Option<NetNs>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Lab {
    fn start(o: &Options, netns_ok: bool) -> Result<Lab, String> {
        let wants = |pred: fn(Fault) -> bool| o.faults.iter().any(|&f| pred(f));
        let mut lab = Lab {
            sets: Vec::new(),
            netns: None,
        };
        if netns_ok && wants(Fault::needs_netns) {
            eprintln!("creating a network namespace");
            lab.netns = Some(blocking(NetNs::create)?);
        }
        for &kind in &o.servers {
            let mut set = Set {
                kind,
                primary: None,
                secondary: None,
                inside: None,
                broken: None,
            };
            let mut password: Option<String> = None;
            let mut start = |place: Place, what: &str| -> Result<Server, String> {
                eprintln!("starting {} ({what})", kind.title());
                let s = blocking(|| Server::start(kind, place, password.as_deref()))
                    .map_err(|e| format!("{} ({what}): {e}", kind.title()))?;
                password.get_or_insert_with(|| s.password().to_string());
                Ok(s)
            };
            if wants(|f| !f.needs_netns()) {
                set.primary = Some(start(Place::default(), "primary, 127.0.0.1")?);
            }
            if wants(|f| f == Fault::Failover) {
                set.secondary = Some(start(Place::default(), "secondary, 127.0.0.1")?);
            }
            if let Some(ns) = &lab.netns {
                let port = match kind {
                    ServerKind::Redis => 6379,
                    ServerKind::Postgres => 5432,
                };
                let place = Place {
                    netns: Some(ns.name().to_string()),
                    ip: Some(ns.ip().into()),
                    port: Some(port),
                };
                set.inside = Some(start(place, "inside the network namespace")?);
            }
            lab.sets.push(set);
        }
        Ok(lab)
    }
}

// ---------------------------------------------------------------------------------------------
// One round
// ---------------------------------------------------------------------------------------------

/// When an idle fault's pool knew, in ms since the fault.
#[derive(Clone, Copy)]
enum Knew {
    /// Not an idle fault.
    NotAsked,
    At(u32),
    /// Nothing changed within the idle window (ms, from the fault to the resume).
    Never(u32),
    /// `open()` is `None` and its connects are not counted: it cannot say.
    CannotSay,
}

struct Row {
    name: String,
    f: Figures,
    /// Connect attempts from the fault to the end; `None`: not counted by the row.
    connects: Option<u64>,
    knew: Knew,
    errors: Vec<(String, u64)>,
    wrong: Option<(String, String)>,
}

impl Row {
    fn healthy(&self) -> bool {
        self.f.healthy()
    }

    fn verdict(&self) -> String {
        let mut bad = Vec::new();
        if self.f.hung > 0 {
            bad.push(format!("hung {}", self.f.hung));
        }
        if self.f.wrong > 0 {
            bad.push(format!("wrong {}", self.f.wrong));
        }
        if self.f.first_ok_after_heal_ms.is_none() {
            bad.push("no recovery".to_string());
        }
        if bad.is_empty() {
            "ok".into()
        } else {
            bad.join(", ")
        }
    }
}

struct RoundResult {
    kind: ServerKind,
    fault: Fault,
    rows: Vec<Row>,
    note: String,
    svg: PathBuf,
    seconds: f64,
}

/// What `watch_knew` compares with.
fn snapshot(rows: &[Arc<Watched>]) -> Vec<(Option<usize>, u64)> {
    rows.iter().map(|r| (r.open(), r.connects())).collect()
}

/// Polls every row's `open()` and `connects()` until `stop`: the first moment (ms since
/// `t0`) each one changed from `at_start`.
async fn watch_knew(
    rows: Vec<Arc<Watched>>,
    at_start: Vec<(Option<usize>, u64)>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Option<u32>> {
    let mut knew = vec![None; rows.len()];
    while !stop.load(Relaxed) {
        for (i, r) in rows.iter().enumerate() {
            if knew[i].is_some() {
                continue;
            }
            let (open0, connects0) = at_start[i];
            let fewer = matches!((r.open(), open0), (Some(now), Some(then)) if now < then);
            if fewer || r.connects() > connects0 {
                knew[i] = Some(t0.elapsed().as_millis() as u32);
            }
        }
        tokio::time::sleep(KNEW_POLL).await;
    }
    knew
}

async fn subjects_for(
    kind: ServerKind,
    server: &Server,
    secondary: Option<&Server>,
) -> Result<Vec<Arc<dyn Subject>>, String> {
    let second = secondary.map(Server::addr);
    match kind {
        ServerKind::Redis => redis_pools::subjects(server.addr(), second).await,
        ServerKind::Postgres => {
            pg_pools::subjects(server.addr(), second, PG_USER, server.password()).await
        }
    }
}

/// Stops the workers and gives back every row's outcomes.
async fn stop_workers(
    control: &Control,
    drives: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
) -> Vec<Vec<Outcome>> {
    control.stop.store(true, Relaxed);
    control.pause.store(false, Relaxed);
    let mut all = Vec::new();
    for d in drives {
        all.push(d.await.unwrap_or_default());
    }
    all
}

async fn round(
    set: &mut Set,
    netns: Option<&NetNs>,
    fault: Fault,
    o: &Options,
) -> Result<RoundResult, String> {
    let kind = set.kind;
    let wall = std::time::Instant::now();
    let (server, secondary) = match fault {
        f if f.needs_netns() => (set.inside.as_mut(), None),
        Fault::Failover => (set.primary.as_mut(), set.secondary.as_ref()),
        _ => (set.primary.as_mut(), None),
    };
    let server = server.ok_or("the server for this fault was not started")?;
    let inner = subjects_for(kind, &*server, secondary).await?;
    if inner.is_empty() {
        return Err("no pool takes several addresses here".into());
    }
    let t0 = Instant::now();
    let ms = || t0.elapsed().as_millis() as u32;
    let rows: Vec<Arc<Watched>> = inner
        .into_iter()
        .map(|s| Arc::new(Watched::new(s, t0, o.pace)))
        .collect();
    let control = Arc::new(Control::default());
    let drives: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(lane, r)| {
            let subject: Arc<dyn Subject> = r.clone();
            tokio::spawn(harness::drive(
                subject,
                lane,
                o.tasks,
                o.deadline,
                MAX_REQUESTS,
                t0,
                control.clone(),
            ))
        })
        .collect();

    // 1. Warm-up.
    while !(rows.iter().all(|r| r.ok_since(0)) && t0.elapsed() >= o.warmup) {
        if t0.elapsed() > WARMUP_LIMIT {
            let stuck: Vec<String> = rows
                .iter()
                .filter(|r| !r.ok_since(0))
                .map(|r| {
                    let first = r.errors.lock().keys().next().cloned();
                    format!(
                        "{} ({})",
                        r.name(),
                        first.as_deref().unwrap_or("no error: hung")
                    )
                })
                .collect();
            stop_workers(&control, drives).await;
            return Err(format!(
                "no successful request within {WARMUP_LIMIT:?} with the server up: {}",
                stuck.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 2. Idle faults: no traffic, nothing in flight, the pools settled.
    let mut paused_at = None;
    let mut knew_watch = None;
    if fault.idle() {
        paused_at = Some(ms());
        control.pause.store(true, Relaxed);
        let limit = Instant::now() + o.deadline + o.pace + Duration::from_secs(1);
        while rows.iter().any(|r| r.in_flight.load(Relaxed) > 0) && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let at_start = snapshot(&rows);
        let watch = tokio::spawn(watch_knew(rows.clone(), at_start, t0, stop.clone()));
        knew_watch = Some((watch, stop));
    }

    // 3. The fault and its heal.
    let at_fault: Vec<u64> = rows.iter().map(|r| r.connects()).collect();
    for r in &rows {
        r.errors.lock().clear();
        r.count_from_ms.store(ms(), Relaxed);
    }
    eprintln!("  {} × {}: fault", kind.name(), fault.name());
    let injected = faults::inject(fault, Target { server, netns }, t0, o.outage).await;
    let marks = match injected {
        Ok(m) => m,
        Err(e) => {
            if let Some((_, stop)) = &knew_watch {
                stop.store(true, Relaxed);
            }
            stop_workers(&control, drives).await;
            return Err(format!("the fault: {e}"));
        }
    };
    let Marks {
        fault_ms,
        heal_ms,
        mut note,
    } = marks;
    if fault == Fault::Failover {
        note += "; rows: the pools that take several addresses";
    }

    // 4. Idle faults: still no traffic for a while, then resume.
    let mut resume_ms = None;
    let mut knew_at = vec![None; rows.len()];
    if let Some((watch, stop)) = knew_watch {
        let until = t0 + Duration::from_millis(u64::from(heal_ms)) + o.idle;
        tokio::time::sleep_until(until).await;
        stop.store(true, Relaxed);
        knew_at = watch.await.unwrap_or_default();
        knew_at.resize(rows.len(), None);
        resume_ms = Some(ms());
        control.pause.store(false, Relaxed);
    }
    eprintln!(
        "  {} × {}: healed, waiting for every pool",
        kind.name(),
        fault.name()
    );

    // 5. The tail.
    let from_ms = resume_ms.unwrap_or(heal_ms);
    let from = t0 + Duration::from_millis(u64::from(from_ms));
    let mut recovered_at = None;
    loop {
        let now = Instant::now();
        if recovered_at.is_none() && rows.iter().all(|r| r.ok_since(from_ms)) {
            recovered_at = Some(now);
        }
        let done = recovered_at
            .is_some_and(|at| now >= from + MIN_TAIL && now >= at + Duration::from_millis(500));
        if done || now >= from + o.max_tail {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop_ms = ms();
    let outcomes = stop_workers(&control, drives).await;
    let end_ms = outcomes
        .iter()
        .flatten()
        .map(|x| x.end_ms)
        .max()
        .unwrap_or(stop_ms)
        .max(stop_ms);

    // The figures.
    let mut result_rows = Vec::new();
    let mut lanes = Vec::new();
    for (i, (r, out)) in rows.iter().zip(&outcomes).enumerate() {
        let f = if let Some(resume) = resume_ms {
            Figures::of(out, resume, resume)
        } else {
            Figures::of(out, fault_ms, heal_ms)
        };
        let total = r.connects();
        let connects = (total > 0).then(|| total - at_fault[i]);
        let knew = match (resume_ms, knew_at[i]) {
            (None, _) => Knew::NotAsked,
            (Some(_), Some(at)) => Knew::At(at.saturating_sub(fault_ms)),
            (Some(_), None) if r.open().is_none() && total == 0 => Knew::CannotSay,
            (Some(resume), None) => Knew::Never(resume - fault_ms),
        };
        let mut errors: Vec<(String, u64)> = r.errors.lock().drain().collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let row = Row {
            name: r.name(),
            f,
            connects,
            knew,
            errors,
            wrong: r.wrong.lock().take(),
        };
        let mut detail = format!("failed {}", row.f.failed);
        if let Some(ms) = row.f.first_ok_after_heal_ms {
            let after = match fault {
                f if f.idle() => "traffic resumed",
                Fault::Failover => "the kill",
                _ => "the heal",
            };
            detail += &format!(" · first ok {} after {after}", fmt_ms(ms));
        }
        if let Knew::At(ms) = row.knew {
            detail += &format!(" · knew after {}", fmt_ms(ms));
        }
        lanes.push(plot::Lane {
            name: row.name.clone(),
            verdict: row.verdict(),
            healthy: row.healthy(),
            detail,
            buckets: harness::timeline(out, BUCKET_MS, end_ms),
            hung: hung_spans(out),
        });
        result_rows.push(row);
    }
    let svg = o.out.join(format!("{}-{}.svg", kind.name(), fault.name()));
    let title = format!(
        "{} × {}: {}",
        kind.title(),
        fault.name(),
        fault.what(kind).replace('`', "")
    );
    let moments = plot::Moments {
        fault_ms,
        heal_ms,
        paused: paused_at.zip(resume_ms),
        end_ms,
    };
    plot::timeline_svg(&svg, &title, &lanes, BUCKET_MS, &moments)?;
    Ok(RoundResult {
        kind,
        fault,
        rows: result_rows,
        note,
        svg,
        seconds: wall.elapsed().as_secs_f64(),
    })
}

/// The spans of the requests that hung, overlapping ones merged.
fn hung_spans(outcomes: &[Outcome]) -> Vec<(u32, u32)> {
    let mut spans: Vec<(u32, u32)> = outcomes
        .iter()
        .filter(|o| o.kind == harness::Kind::Hung)
        .map(|o| (o.start_ms, o.end_ms))
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

// ---------------------------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------------------------

fn fmt_ms(ms: u32) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", f64::from(ms) / 1000.0)
    }
}

/// A figure compared per fault, lower is better.
struct Column {
    header: &'static str,
    value: fn(&Row) -> Option<u64>,
    text: fn(&Row) -> String,
    /// What counts as a tie.
    tie: Tie,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tie {
    /// Equal only (hung, wrong).
    Exact,
    /// Within a quarter of the smaller: failed requests and connects while the server is
    /// down follow the request rate (a pool that fails faster fails, and reconnects, more
    /// often in the same outage).
    Count,
    /// Within 10 ms or a tenth of the smaller, whichever is more (poll and scheduling noise).
    Time,
}

fn columns() -> Vec<Column> {
    let c = |header, value, text, tie| Column {
        header,
        value,
        text,
        tie,
    };
    vec![
        c(
            "failed",
            |r| Some(r.f.failed),
            |r| r.f.failed.to_string(),
            Tie::Count,
        ),
        c(
            "hung",
            |r| Some(r.f.hung),
            |r| r.f.hung.to_string(),
            Tie::Exact,
        ),
        c(
            "wrong",
            |r| Some(r.f.wrong),
            |r| r.f.wrong.to_string(),
            Tie::Exact,
        ),
        c(
            "1st failure",
            |r| r.f.first_failure_ms.map(u64::from),
            |r| r.f.first_failure_ms.map_or("–".into(), fmt_ms),
            Tie::Time,
        ),
        c(
            "heal → 1st ok",
            // No recovery ranks last.
            |r| Some(r.f.first_ok_after_heal_ms.map_or(u64::MAX, u64::from)),
            |r| r.f.first_ok_after_heal_ms.map_or("none".into(), fmt_ms),
            Tie::Time,
        ),
        c(
            "connects",
            |r| r.connects,
            |r| r.connects.map_or("n/c".into(), |c| c.to_string()),
            Tie::Count,
        ),
        c(
            "knew (idle)",
            |r| match r.knew {
                Knew::At(ms) => Some(u64::from(ms)),
                Knew::Never(_) => Some(u64::MAX),
                Knew::NotAsked | Knew::CannotSay => None,
            },
            |r| match r.knew {
                Knew::NotAsked => "".into(),
                Knew::At(ms) => fmt_ms(ms),
                Knew::Never(w) => format!("no ({})", fmt_ms(w)),
                Knew::CannotSay => "can't say".into(),
            },
            Tie::Time,
        ),
    ]
}

impl Column {
    /// Whether `a` and `b` are a tie (`u64::MAX`, never, ties only with itself).
    fn tie(&self, a: u64, b: u64) -> bool {
        let (lo, hi) = (a.min(b), a.max(b));
        if hi == u64::MAX {
            return lo == hi;
        }
        match self.tie {
            Tie::Exact => lo == hi,
            Tie::Count => hi - lo <= lo / 4,
            Tie::Time => hi - lo <= 10.max(lo / 10),
        }
    }

    /// The rows holding the best value among the `candidates`, when they differ on it.
    fn best(&self, rows: &[Row], candidates: &[bool]) -> Vec<bool> {
        let values: Vec<Option<u64>> = rows
            .iter()
            .zip(candidates)
            .map(|(r, &c)| if c { (self.value)(r) } else { None })
            .collect();
        let Some(min) = values.iter().flatten().min().copied() else {
            return vec![false; rows.len()];
        };
        let best = |v: &Option<u64>| v.is_some_and(|v| min != u64::MAX && self.tie(v, min));
        let differ = rows.len() > 1 && !rows.iter().map(self.value).all(|v| best(&v));
        values.iter().map(|v| differ && best(v)).collect()
    }
}

/// The rows that compete for the best values of a fault: those that got through it (✓)
/// when any did, else all of them.
fn candidates(rows: &[Row]) -> Vec<bool> {
    let any = rows.iter().any(Row::healthy);
    rows.iter().map(|r| !any || r.healthy()).collect()
}

fn is_livepool(name: &str) -> bool {
    name.starts_with("livepool")
}

fn table(results: &[&RoundResult]) -> String {
    let cols = columns();
    let mut header = vec!["fault", "pool", "ok"];
    header.extend(cols.iter().map(|c| c.header));
    header.push("verdict");
    let mut lines = Vec::new();
    for r in results {
        let competing = candidates(&r.rows);
        let flags: Vec<Vec<bool>> = cols.iter().map(|c| c.best(&r.rows, &competing)).collect();
        for (i, row) in r.rows.iter().enumerate() {
            let mut line = vec![
                if i == 0 {
                    r.fault.name().to_string()
                } else {
                    String::new()
                },
                row.name.clone(),
                row.f.ok.to_string(),
            ];
            for (c, f) in cols.iter().zip(&flags) {
                let text = (c.text)(row);
                line.push(if f[i] { format!("**{text}**") } else { text });
            }
            line.push(if row.healthy() {
                "✓ ok".into()
            } else {
                format!("✗ **{}**", row.verdict().to_uppercase())
            });
            lines.push(line);
        }
    }
    markdown(&header, &lines, 2)
}

/// Where a peer did better than every livepool row of the same fault: it got through the
/// fault (✓) where no livepool row did, or, among the rows that compete (see `candidates`),
/// its best value of a figure beats livepool's (times: by more than a tie).
fn peers_better(results: &[&RoundResult]) -> Vec<String> {
    let mut out = Vec::new();
    for r in results {
        let at = |what: &str| format!("{} × {}, {what}", r.kind.name(), r.fault.name());
        let lp = |row: &&Row| is_livepool(&row.name);
        let healthy_peers: Vec<&str> = r
            .rows
            .iter()
            .filter(|row| !lp(row) && row.healthy())
            .map(|row| row.name.as_str())
            .collect();
        let ours: Vec<&Row> = r.rows.iter().filter(lp).collect();
        if !healthy_peers.is_empty() && !ours.is_empty() && ours.iter().all(|row| !row.healthy()) {
            let verdicts: Vec<String> = ours
                .iter()
                .map(|row| format!("{} ({})", row.name, row.verdict()))
                .collect();
            out.push(format!(
                "{}: {} got through (✓), {} did not",
                at("verdict"),
                healthy_peers.join(", "),
                verdicts.join(", ")
            ));
        }
        let competing = candidates(&r.rows);
        for c in columns() {
            let best_of = |is_lp: bool| {
                r.rows
                    .iter()
                    .zip(&competing)
                    .filter(|(row, c)| **c && is_livepool(&row.name) == is_lp)
                    .filter_map(|(row, _)| (c.value)(row).map(|v| (v, row)))
                    .min_by_key(|(v, _)| *v)
            };
            if let (Some((p, peer)), Some((l, ours))) = (best_of(false), best_of(true))
                && p < l
                && !c.tie(p, l)
            {
                out.push(format!(
                    "{}: {} {} against {} {}",
                    at(c.header),
                    peer.name,
                    (c.text)(peer),
                    ours.name,
                    (c.text)(ours)
                ));
            }
        }
    }
    out
}

/// `name = "x"` followed by `version = "y"` in the compare package's lock file.
fn locked_version(name: &str) -> String {
    let lock = include_str!("../../Cargo.lock");
    let key = format!("name = \"{name}\"\n");
    lock.split("[[package]]")
        .find(|p| p.contains(&key))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into())
}

fn version_line(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn summary(o: &Options, results: &[RoundResult], skipped: &[String], wall: f64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "## The face-off\n");
    let peers: Vec<String> = [
        "deadpool-redis",
        "bb8-redis",
        "redis",
        "deadpool-postgres",
        "bb8-postgres",
        "sqlx",
    ]
    .iter()
    .map(|n| format!("{n} {}", locked_version(n)))
    .collect();
    let _ = writeln!(
        s,
        "livepool {}; peers: {}.  ",
        livepool_commit(&[
            "src",
            "livepool-redis/src",
            "livepool-postgres/src",
            "Cargo.toml"
        ]),
        peers.join(", ")
    );
    let servers: Vec<String> = o
        .servers
        .iter()
        .map(|k| match k {
            ServerKind::Redis => version_line("redis-server", "--version"),
            ServerKind::Postgres => version_line("pg_ctl", "--version"),
        })
        .collect();
    let _ = writeln!(
        s,
        "Servers: {}; Linux {}.  ",
        servers.join("; "),
        version_line("uname", "-r")
    );
    let _ = writeln!(
        s,
        "{} tasks per pool, {} ms pause before each request, per-request deadline {} ms; \
         faults last {} ms; idle faults: no traffic for {} ms after the heal.\n",
        o.tasks,
        o.pace.as_millis(),
        o.deadline.as_millis(),
        o.outage.as_millis(),
        o.idle.as_millis()
    );
    let _ = writeln!(
        s,
        "Counted: the requests that ended from the fault on (idle faults: from the moment \
         traffic resumed, and the times from then). *1st failure*: fault → end of the first \
         failed request; *heal → 1st ok*: heal → end of the first ok request started after it \
         (failover: from the kill); *connects*: connect attempts from the fault to the end of \
         the round (n/c: the pool does not count them); *knew*: fault → the pool's own count \
         of open connections dropped or it reconnected, with no traffic. **Bold**: the best \
         value of the fault's rows where they differ, among the rows that got through the \
         fault (✓) when any did; a tie counts as best (failed and connects within 25 % of each \
         other, times within 10 ms or 10 %). ✗: a request hung past the deadline, a \
         reply was wrong, or no request succeeded after the heal.\n"
    );
    for kind in &o.servers {
        let rs: Vec<&RoundResult> = results.iter().filter(|r| r.kind == *kind).collect();
        if rs.is_empty() {
            continue;
        }
        let _ = writeln!(s, "### {}\n", kind.title());
        s += &table(&rs);
        let _ = writeln!(s);
        for r in &rs {
            let _ = writeln!(
                s,
                "- {}: {}; {} ({:.1} s). Timeline: `{}`",
                r.fault.name(),
                r.fault.what(r.kind),
                r.note,
                r.seconds,
                r.svg.display()
            );
        }
        let _ = writeln!(s);
    }
    if !skipped.is_empty() {
        let _ = writeln!(s, "Skipped:\n");
        for k in skipped {
            let _ = writeln!(s, "- {k}");
        }
        let _ = writeln!(s);
    }
    let all: Vec<&RoundResult> = results.iter().collect();
    let better = peers_better(&all);
    let _ = writeln!(
        s,
        "Where a peer did better than every livepool row of the fault:\n"
    );
    if better.is_empty() {
        let _ = writeln!(s, "- nowhere");
    }
    for b in better {
        let _ = writeln!(s, "- {b}");
    }
    let _ = writeln!(
        s,
        "\nMost frequent errors per row and fault (digits as #):\n"
    );
    for r in results {
        for row in &r.rows {
            let mut parts: Vec<String> = row
                .errors
                .iter()
                .take(2)
                .map(|(e, n)| format!("{n} × `{}`", e.replace('`', "'")))
                .collect();
            if let Some((token, got)) = &row.wrong {
                parts.push(format!("wrong reply: asked `{token}`, got `{got}`"));
            }
            if !parts.is_empty() {
                let _ = writeln!(
                    s,
                    "- {} × {}, {}: {}",
                    r.kind.name(),
                    r.fault.name(),
                    row.name,
                    parts.join("; ")
                );
            }
        }
    }
    let _ = writeln!(s, "\nTotal wall time: {wall:.0} s");
    s
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async fn run(o: Options) -> Result<bool, String> {
    let wall = std::time::Instant::now();
    std::fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    let mut skipped = Vec::new();
    let netns_missing = netns::unavailable();
    if let Some(why) = &netns_missing {
        for f in o.faults.iter().filter(|f| f.needs_netns()) {
            eprintln!("SKIPPED: {}: {why}", f.name());
            skipped.push(format!("{}: {why}", f.name()));
        }
    }
    let mut lab = Lab::start(&o, netns_missing.is_none())?;
    let mut results = Vec::new();
    let mut all_ran = true;
    for i in 0..lab.sets.len() {
        for &fault in &o.faults {
            let set = &mut lab.sets[i];
            if fault.needs_netns() && lab.netns.is_none() {
                continue;
            }
            let kind = set.kind;
            if let Some(why) = &set.broken {
                eprintln!("SKIPPED: {} × {}: {why}", kind.name(), fault.name());
                skipped.push(format!("{} × {}: {why}", kind.name(), fault.name()));
                all_ran = false;
                continue;
            }
            eprintln!("round: {} × {}", kind.name(), fault.name());
            let res = round(set, lab.netns.as_ref(), fault, &o).await;
            // Whatever happened, the servers up again for the next round.
            if let Some(ns) = &lab.netns {
                let _ = blocking(|| ns.link_up());
            }
            for s in [&mut set.primary, &mut set.secondary, &mut set.inside]
                .into_iter()
                .flatten()
            {
                if let Err(e) = blocking(|| s.ensure_up()) {
                    set.broken = Some(format!("a server could not be brought back: {e}"));
                }
            }
            match res {
                Ok(r) => {
                    for row in &r.rows {
                        eprintln!(
                            "  {:<44} {}",
                            row.name,
                            if row.healthy() {
                                "ok".into()
                            } else {
                                row.verdict()
                            }
                        );
                    }
                    results.push(r);
                }
                Err(e) => {
                    eprintln!("error: {} × {}: {e}", kind.name(), fault.name());
                    skipped.push(format!("{} × {}: failed: {e}", kind.name(), fault.name()));
                    all_ran = false;
                }
            }
        }
    }
    drop(lab);
    let text = summary(&o, &results, &skipped, wall.elapsed().as_secs_f64());
    print!("{text}");
    let path = o.out.join("summary.md");
    std::fs::write(&path, &text).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("timelines and summary.md in {}", o.out.display());
    Ok(all_ran)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::main(
        parse_options(),
        USAGE,
        run,
        "some rounds did not run (see the errors above)",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness::Kind;

    fn row(name: &str, failed: u64, hung: u64, first_ok: Option<u32>) -> Row {
        Row {
            name: name.into(),
            f: Figures {
                ok: 10,
                failed,
                hung,
                wrong: 0,
                first_failure_ms: (failed > 0).then_some(5),
                first_ok_after_heal_ms: first_ok,
            },
            connects: Some(4),
            knew: Knew::NotAsked,
            errors: Vec::new(),
            wrong: None,
        }
    }

    fn result(rows: Vec<Row>) -> RoundResult {
        RoundResult {
            kind: ServerKind::Redis,
            fault: Fault::Kill,
            rows,
            note: String::new(),
            svg: PathBuf::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn only_rows_that_got_through_compete_and_ties_are_best() {
        let r = result(vec![
            row("livepool-x", 100, 0, Some(12)),
            row("peer-a", 0, 7, Some(5)),
            row("peer-b", 95, 0, Some(400)),
        ]);
        let competing = candidates(&r.rows);
        assert_eq!(competing, [true, false, true]);
        let cols = columns();
        // failed: peer-a's 0 does not count (it hung); 95 and 100 are a tie.
        assert_eq!(cols[0].best(&r.rows, &competing), [true, false, true]);
        // heal → 1st ok: 12 ms against 400 ms.
        assert_eq!(cols[4].best(&r.rows, &competing), [true, false, false]);
        // A peer that hung is not "better" on failures; livepool is not worse anywhere.
        let better = peers_better(&[&r]);
        assert!(better.is_empty(), "{better:?}");
    }

    #[test]
    fn a_peer_that_got_through_where_livepool_did_not_is_said() {
        let r = result(vec![
            row("livepool-x", 0, 3, Some(12)),
            row("peer-a", 2, 0, Some(40)),
        ]);
        let better = peers_better(&[&r]);
        assert!(
            better
                .iter()
                .any(|b| b.contains("verdict") && b.contains("peer-a")),
            "{better:?}"
        );
        let text = table(&[&r]);
        assert!(text.contains("✗ **HUNG 3**"), "{text}");
    }

    #[test]
    fn no_recovery_ranks_last_and_never_ties() {
        let cols = columns();
        let heal = &cols[4];
        assert!(heal.tie(u64::MAX, u64::MAX));
        assert!(!heal.tie(u64::MAX, 30_000));
        assert!(heal.tie(9, 15), "within 10 ms");
        assert!(!heal.tie(9, 400));
        assert!(
            cols[0].tie(688, 764) && !cols[0].tie(0, 1) && !cols[0].tie(3, 5),
            "counts: within 25 %"
        );
    }

    #[test]
    fn hung_spans_merge_and_errors_fold_numbers() {
        let o = |start_ms, end_ms, kind| Outcome {
            start_ms,
            end_ms,
            kind,
        };
        let spans = hung_spans(&[
            o(0, 5, Kind::Ok),
            o(10, 1010, Kind::Hung),
            o(500, 1500, Kind::Hung),
            o(2000, 3000, Kind::Hung),
        ]);
        assert_eq!(spans, [(10, 1500), (2000, 3000)]);
        assert_eq!(
            error_class("connect 127.0.0.1:6379 failed after  12 ms", ERRORS),
            "connect #.#.#.#:# failed after # ms"
        );
        assert_eq!(error_class("after 1.5 s", ERRORS), "after #.# s");
        let long = "x".repeat(200);
        assert_eq!(error_class(&long, ERRORS), format!("{}…", "x".repeat(140)));
    }

    #[test]
    fn a_timeline_is_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("faceoff-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        let lanes = vec![plot::Lane {
            name: "a pool".into(),
            verdict: "hung 1".into(),
            healthy: false,
            detail: "failed 0".into(),
            buckets: vec![[5, 0, 0, 0], [0, 1, 1, 0], [3, 0, 0, 0]],
            hung: vec![(100, 200)],
        }];
        let m = plot::Moments {
            fault_ms: 100,
            heal_ms: 200,
            paused: None,
            end_ms: 300,
        };
        plot::timeline_svg(&path, "test", &lanes, 100, &m).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg") && svg.contains("a pool") && svg.contains("hung 1"));
    }
}
