//! Recovery after a server restart: livepool next to deadpool, in one run (issue 18, item 7).
//!
//! The program starts its own servers on free ports of 127.0.0.1 — a `redis-server` and a
//! throwaway PostgreSQL cluster (`initdb`, SCRAM-SHA-256; as root run as the `postgres` user)
//! — and points several pools at them at the same time, so that one restart hits them all:
//!
//! | server   | pool                | request (checked reply)                            |
//! |----------|---------------------|----------------------------------------------------|
//! | Redis    | `livepool raw`      | RESP `ECHO <token>` written and read by hand       |
//! | Redis    | `livepool-redis`    | `ECHO <token>` through the redis crate's typed API |
//! | Redis    | `deadpool-redis`    | `ECHO <token>` through its `MultiplexedConnection` |
//! | Postgres | `livepool-postgres` | `SELECT <token>` (simple query)                    |
//! | Postgres | `deadpool-postgres` | `SELECT <token>` (simple query)                    |
//!
//! Every pool runs with its defaults: livepool with only the address and the protocol's
//! credentials (its breaker as the source it is built from defines it), deadpool-redis and
//! deadpool-postgres with their `Config`'s default pool and manager settings. The deadpool
//! managers are wrapped in `Counting`, a `deadpool::managed::Manager` that delegates
//! `create`/`recycle`/`detach` to the real one and counts `create` calls, so the peers run their
//! own code. `--livepool-open-for-ms N` adds a livepool row per server with that breaker open
//! period.
//!
//! Each pool has 4 worker tasks; each worker loops: one request under a per-request deadline
//! (2 s: checkout and round trip together), then a 10 ms pause. A request past the deadline is
//! *hung*, an error is *failed*, a reply that is not the token asked for is *wrong*.
//!
//! For each outage length (default 1, 3 and 30 s), with fresh pools:
//! 1. warm-up (1 s; every pool must succeed at least once, else the run stops with an error);
//! 2. the fault, to both servers at once: Redis is SIGKILLed, Postgres stopped with
//!    `pg_ctl stop -m immediate`; after the outage each is started again on the same port
//!    (same directory);
//! 3. from the moment the server is gone, the harness polls a plain TCP connect to the port
//!    every 2 ms: the first one that succeeds is *accepting again*;
//! 4. the run goes on until every pool has had a successful request after that moment, plus
//!    1 s, or until 90 s after it (`--max-recovery-s`).
//!
//! Figures per pool and outage, counting the requests that ended from the kill to the end of
//! the round: ok / failed / hung / wrong; *first ok after accept*, from accepting again to the
//! end of the first successful request after the kill; *connects in outage*, the connect
//! attempts from just before the kill to accepting again, and *connects after*, from then to
//! the end of the round (livepool: `created + connect_errors` of `Pool::statistics`; deadpool:
//! `create` calls). A pool polling the port as often as the harness can get in first: its first
//! ok then shows as 0 ms and its first connect to the restarted server falls in the outage (the
//! split is as sharp as the 2 ms poll).
//! Postgres accepts TCP a moment before it accepts sessions ("the database system is starting
//! up"), so even an ideal client sees its first ok a little after accepting again there.
//!
//! The tables (one per server; rows: outage × pool) are Markdown with padded columns, readable
//! in a terminal and ready to paste. A round lasts its outage plus about 4 s (start-up,
//! warm-up, tail) plus the slowest pool's recovery: with outages 1, 3, 30 and pools that
//! recover within a second or two, under a minute; with a 30 s breaker open period, about
//! 2 min. Progress goes to stderr.
//!
//! ```sh
//! cargo run --release --manifest-path compare/Cargo.toml --bin restart -- --outages 1,3,30
//! cargo run --release --manifest-path compare/Cargo.toml --bin restart -- --help
//! ```
//!
//! Needs `redis-server` on PATH and PostgreSQL's `initdb`/`pg_ctl` (PATH, `pg_config --bindir`
//! or `/usr/lib/postgresql/*/bin`); says which is missing and exits non-zero otherwise. Servers
//! and their temp dirs are removed on exit, also after an error or Ctrl-C.

mod report;
mod servers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, RecycleResult};
use livepool_postgres::Postgres;
use livepool_redis::redis::{self, Value};
use livepool_redis::{Redis, RedisConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use report::{ErrorClass, describe, error_class, livepool_commit, markdown};
use servers::{PG_USER, PgCluster, RedisServer};

/// Each worker stops after this many requests in a round, whatever else happens.
const MAX_REQUESTS_PER_WORKER: u64 = 200_000;
/// How often the harness tries a plain TCP connect to a restarted server.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

const USAGE: &str = "\
Recovery after a server restart: livepool next to deadpool-redis and deadpool-postgres.

USAGE: restart [OPTIONS]

  --outages LIST              outage lengths in seconds, comma-separated (default 1,3,30;
                              also env LIVEPOOL_COMPARE_OUTAGES)
  --servers LIST              redis,postgres (default both)
  --workers N                 worker tasks per pool (default 4)
  --deadline-ms MS            per-request deadline; past it a request is hung (default 2000)
  --pace-ms MS                pause after each request (default 10)
  --warmup-ms MS              traffic before the kill (default 1000)
  --tail-ms MS                traffic after the last pool recovered (default 1000)
  --max-recovery-s S          give up waiting for a pool this long after accepting again
                              (default 90)
  --livepool-open-for-ms MS   also run livepool rows with BreakerConfig::new().open_for(MS)
  -h, --help                  this text
";

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

struct Options {
    outages: Vec<Duration>,
    redis: bool,
    postgres: bool,
    workers: u64,
    deadline: Duration,
    pace: Duration,
    warmup: Duration,
    tail: Duration,
    max_recovery: Duration,
    open_for: Option<Duration>,
}

fn parse_outages(list: &str) -> Result<Vec<Duration>, String> {
    list.split(',')
        .map(|s| {
            let secs: f64 = s
                .trim()
                .parse()
                .map_err(|_| format!("outage {s:?} is not a number of seconds"))?;
            if !(0.0..=600.0).contains(&secs) {
                return Err(format!("outage {s:?}: expected 0 to 600 seconds"));
            }
            Ok(Duration::from_secs_f64(secs))
        })
        .collect()
}

fn parse_options() -> Result<Option<Options>, String> {
    let mut o = Options {
        outages: parse_outages("1,3,30")?,
        redis: true,
        postgres: true,
        workers: 4,
        deadline: Duration::from_millis(2000),
        pace: Duration::from_millis(10),
        warmup: Duration::from_millis(1000),
        tail: Duration::from_millis(1000),
        max_recovery: Duration::from_secs(90),
        open_for: None,
    };
    if let Ok(list) = std::env::var("LIVEPOOL_COMPARE_OUTAGES") {
        o.outages = parse_outages(&list)?;
    }
    let Some(o) = report::options(o, |o, flag, value| {
        let num = |v: &str| report::num(flag, v);
        match flag {
            "--outages" => o.outages = parse_outages(value)?,
            "--servers" => {
                (o.redis, o.postgres) = (false, false);
                for s in value.split(',') {
                    match s.trim() {
                        "redis" => o.redis = true,
                        "postgres" => o.postgres = true,
                        other => return Err(format!("--servers: unknown server {other:?}")),
                    }
                }
            }
            "--workers" => o.workers = num(value)?.clamp(1, 64),
            "--deadline-ms" => o.deadline = Duration::from_millis(num(value)?.max(1)),
            "--pace-ms" => o.pace = Duration::from_millis(num(value)?),
            "--warmup-ms" => o.warmup = Duration::from_millis(num(value)?),
            "--tail-ms" => o.tail = Duration::from_millis(num(value)?),
            "--max-recovery-s" => o.max_recovery = Duration::from_secs(num(value)?.max(1)),
            "--livepool-open-for-ms" => {
                o.open_for = Some(Duration::from_millis(num(value)?.max(1)));
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?
    else {
        return Ok(None);
    };
    if o.outages.is_empty() || !(o.redis || o.postgres) {
        return Err("nothing to run".into());
    }
    Ok(Some(o))
}

// ---------------------------------------------------------------------------------------------
// The pools under test
// ---------------------------------------------------------------------------------------------

/// A deadpool manager that counts `create` calls and otherwise is the peer's own manager.
struct Counting<M> {
    inner: M,
    creates: AtomicU64,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Counting {
            inner,
            creates: AtomicU64::new(0),
        }
    }
}

impl<M: Manager> Manager for Counting<M> {
    type Type = M::Type;
    type Error = M::Error;

    async fn create(&self) -> Result<M::Type, M::Error> {
        self.creates.fetch_add(1, Relaxed);
        self.inner.create().await
    }

    async fn recycle(&self, obj: &mut M::Type, metrics: &Metrics) -> RecycleResult<M::Error> {
        self.inner.recycle(obj, metrics).await
    }

    fn detach(&self, obj: &mut M::Type) {
        self.inner.detach(obj);
    }
}

type DpRedis = deadpool::managed::Pool<Counting<deadpool_redis::Manager>>;
type DpPostgres = deadpool::managed::Pool<Counting<deadpool_postgres::Manager>>;

enum Pool {
    LpRaw(livepool::Pool),
    LpRedis(livepool_redis::Pool),
    DpRedis(DpRedis),
    LpPostgres(livepool_postgres::Pool),
    DpPostgres(DpPostgres),
}

enum Outcome {
    Ok,
    Failed(String),
    Wrong(String),
}

fn lp_connects(s: livepool::Statistics) -> u64 {
    s.created + s.connect_errors
}

impl Pool {
    /// Connect attempts so far.
    fn connects(&self) -> u64 {
        match self {
            Pool::LpRaw(p) => lp_connects(p.statistics()),
            Pool::LpRedis(p) => lp_connects(p.statistics()),
            Pool::LpPostgres(p) => lp_connects(p.statistics()),
            Pool::DpRedis(p) => p.manager().creates.load(Relaxed),
            Pool::DpPostgres(p) => p.manager().creates.load(Relaxed),
        }
    }

    fn close(&self) {
        match self {
            Pool::LpRaw(p) => p.close(),
            Pool::LpRedis(p) => p.close(),
            Pool::LpPostgres(p) => p.close(),
            Pool::DpRedis(p) => p.close(),
            Pool::DpPostgres(p) => p.close(),
        }
    }

    /// One checkout and one request with a reply that must carry `token`.
    async fn request(&self, token: u64) -> Outcome {
        match self {
            Pool::LpRaw(p) => raw_echo(p, token).await,
            Pool::LpRedis(p) => {
                let mut conn = match p.get().await {
                    Ok(c) => c,
                    Err(e) => return Outcome::Failed(describe(&e)),
                };
                let tok = format!("t{token}");
                // An error reply comes back as an error (`query_async` extracts it).
                let reply = redis::cmd("ECHO")
                    .arg(&tok)
                    .query_async::<Value>(&mut conn)
                    .await;
                match reply {
                    Ok(Value::BulkString(b)) if b == tok.as_bytes() => Outcome::Ok,
                    Ok(v) => {
                        conn.mark_broken();
                        Outcome::Wrong(format!("{v:?}"))
                    }
                    Err(e) => Outcome::Failed(describe(&e)),
                }
            }
            Pool::DpRedis(p) => {
                let mut conn = match p.get().await {
                    Ok(c) => c,
                    Err(e) => return Outcome::Failed(describe(&e)),
                };
                let tok = format!("t{token}");
                let reply = deadpool_redis::redis::cmd("ECHO")
                    .arg(&tok)
                    .query_async::<deadpool_redis::redis::Value>(&mut *conn)
                    .await;
                match reply {
                    Ok(deadpool_redis::redis::Value::BulkString(b)) if b == tok.as_bytes() => {
                        Outcome::Ok
                    }
                    Ok(v) => {
                        let _ = deadpool::managed::Object::take(conn);
                        Outcome::Wrong(format!("{v:?}"))
                    }
                    Err(e) => Outcome::Failed(describe(&e)),
                }
            }
            Pool::LpPostgres(p) => {
                let mut conn = match p.get().await {
                    Ok(c) => c,
                    Err(e) => return Outcome::Failed(describe(&e)),
                };
                match conn.simple_query(&format!("SELECT {token}")).await {
                    Ok(msgs) => {
                        let values = first_column(&msgs);
                        if values == [Some(token.to_string())] {
                            Outcome::Ok
                        } else {
                            conn.mark_broken();
                            Outcome::Wrong(format!("{values:?}"))
                        }
                    }
                    Err(e) => Outcome::Failed(describe(&e)),
                }
            }
            Pool::DpPostgres(p) => {
                let client = match p.get().await {
                    Ok(c) => c,
                    Err(e) => return Outcome::Failed(describe(&e)),
                };
                match client.simple_query(&format!("SELECT {token}")).await {
                    Ok(msgs) => {
                        let values = first_column(&msgs);
                        if values == [Some(token.to_string())] {
                            Outcome::Ok
                        } else {
                            let _ = deadpool::managed::Object::take(client);
                            Outcome::Wrong(format!("{values:?}"))
                        }
                    }
                    Err(e) => Outcome::Failed(describe(&e)),
                }
            }
        }
    }
}

/// `ECHO t<token>` in RESP, written and read by hand over livepool's raw protocol.
async fn raw_echo(pool: &livepool::Pool, token: u64) -> Outcome {
    let mut conn = match pool.get().await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(describe(&e)),
    };
    let tok = format!("t{token}");
    let request = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{tok}\r\n", tok.len());
    if let Err(e) = conn.write_all(request.as_bytes()).await {
        return Outcome::Failed(format!("write: {e}"));
    }
    let want = format!("${}\r\n{tok}\r\n", tok.len()).into_bytes();
    let mut got = Vec::with_capacity(want.len());
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        match conn.read(&mut buf).await {
            Ok(0) => return Outcome::Failed("read: end of stream".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Outcome::Failed(format!("read: {e}")),
        }
        if got.first() == Some(&b'-') {
            if got.ends_with(b"\r\n") {
                return Outcome::Failed(format!("server error: {}", String::from_utf8_lossy(&got)));
            }
        } else if !want.starts_with(&got) {
            conn.mark_broken();
            return Outcome::Wrong(String::from_utf8_lossy(&got).into_owned());
        }
    }
    Outcome::Ok
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

enum Server {
    Redis(RedisServer),
    Postgres(PgCluster),
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Redis(_) => "Redis",
            Server::Postgres(_) => "Postgres",
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Redis(s) => s.addr(),
            Server::Postgres(s) => s.addr(),
        }
    }

    /// Blocks.
    fn kill(&mut self) -> Result<(), String> {
        match self {
            Server::Redis(s) => {
                s.kill();
                Ok(())
            }
            Server::Postgres(s) => s.kill(),
        }
    }

    /// Blocks (Postgres: until ready; Redis: only the spawn).
    fn start_again(&mut self) -> Result<(), String> {
        match self {
            Server::Redis(s) => s.spawn(),
            Server::Postgres(s) => s.start_again(),
        }
    }

    /// Why a restarted server does not accept (a Redis process that exited: its log).
    fn why_down(&mut self) -> String {
        match self {
            Server::Redis(s) => s.check_running().err().unwrap_or_default(),
            Server::Postgres(_) => String::new(),
        }
    }

    /// Fresh pools for this server, with their row names.
    fn pools(&self, open_for: Option<Duration>) -> Result<Vec<(String, Pool)>, String> {
        let addr = self.addr();
        let build = |e: livepool::BuildError| format!("livepool build: {e}");
        let breaker = |d: Duration| Some(livepool::BreakerConfig::new().open_for(d));
        let mut pools = Vec::new();
        match self {
            Server::Redis(_) => {
                let redis = || Redis::new(RedisConfig::new());
                let lp = livepool::Pool::builder(addr).build().map_err(build)?;
                pools.push(("livepool raw".to_string(), Pool::LpRaw(lp)));
                let lp = livepool::Pool::builder(addr)
                    .protocol(redis())
                    .build()
                    .map_err(build)?;
                pools.push(("livepool-redis".to_string(), Pool::LpRedis(lp)));
                let url = format!("redis://{addr}");
                let cfg = deadpool_redis::Config::from_url(url.clone());
                let manager = deadpool_redis::Manager::new(url.as_str())
                    .map_err(|e| format!("deadpool-redis manager: {e}"))?;
                let dp = DpRedis::builder(Counting::new(manager))
                    .config(cfg.get_pool_config())
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| format!("deadpool-redis pool: {e}"))?;
                pools.push(("deadpool-redis".to_string(), Pool::DpRedis(dp)));
                if let Some(d) = open_for {
                    let lp = livepool::Pool::builder(addr)
                        .protocol(redis())
                        .breaker(breaker(d))
                        .build()
                        .map_err(build)?;
                    let name = format!("livepool-redis, open_for {} ms", d.as_millis());
                    pools.push((name, Pool::LpRedis(lp)));
                }
            }
            Server::Postgres(pg) => {
                let pg_cfg = || {
                    let mut config = livepool_postgres::tokio_postgres::Config::new();
                    config
                        .user(PG_USER)
                        .password(pg.password())
                        .dbname("postgres");
                    Postgres::new(config)
                };
                let lp = livepool::Pool::builder(addr)
                    .protocol(pg_cfg())
                    .build()
                    .map_err(build)?;
                pools.push(("livepool-postgres".to_string(), Pool::LpPostgres(lp)));
                let mut cfg = deadpool_postgres::Config::new();
                cfg.host = Some(addr.ip().to_string());
                cfg.port = Some(addr.port());
                cfg.user = Some(PG_USER.to_string());
                cfg.password = Some(pg.password().to_string());
                cfg.dbname = Some("postgres".to_string());
                let pg_config = cfg
                    .get_pg_config()
                    .map_err(|e| format!("deadpool-postgres config: {e}"))?;
                let manager = deadpool_postgres::Manager::from_config(
                    pg_config,
                    deadpool_postgres::tokio_postgres::NoTls,
                    cfg.get_manager_config(),
                );
                let dp = DpPostgres::builder(Counting::new(manager))
                    .config(cfg.get_pool_config())
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| format!("deadpool-postgres pool: {e}"))?;
                pools.push(("deadpool-postgres".to_string(), Pool::DpPostgres(dp)));
                if let Some(d) = open_for {
                    let lp = livepool::Pool::builder(addr)
                        .protocol(pg_cfg())
                        .breaker(breaker(d))
                        .build()
                        .map_err(build)?;
                    let name = format!("livepool-postgres, open_for {} ms", d.as_millis());
                    pools.push((name, Pool::LpPostgres(lp)));
                }
            }
        }
        Ok(pools)
    }
}

// ---------------------------------------------------------------------------------------------
// One round: warm-up, fault, recovery
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Failed,
    Hung,
    Wrong,
}

struct Event {
    end: Instant,
    kind: Kind,
    error: Option<String>,
}

/// What the workers of one pool saw in one round.
struct Record {
    origin: Instant,
    events: Mutex<Vec<Event>>,
    /// Nanoseconds from `origin` to the end of the latest successful request (0: none yet).
    last_ok_ns: AtomicU64,
}

impl Record {
    fn push(&self, end: Instant, kind: Kind, error: Option<String>) {
        if kind == Kind::Ok {
            let ns = end.duration_since(self.origin).as_nanos() as u64;
            self.last_ok_ns.fetch_max(ns.max(1), Relaxed);
        }
        self.events().push(Event { end, kind, error });
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn first_error(&self) -> Option<String> {
        self.events().iter().find_map(|e| e.error.clone())
    }

    fn ok_since(&self, t: Instant) -> bool {
        let last = self.last_ok_ns.load(Relaxed);
        last != 0 && self.origin + Duration::from_nanos(last) > t
    }
}

struct Subject {
    name: String,
    pool: Pool,
    record: Record,
}

async fn worker(
    subject: Arc<Subject>,
    id: u64,
    stop: Arc<AtomicBool>,
    hard_end: Instant,
    o: Arc<Options>,
) {
    for seq in 0..MAX_REQUESTS_PER_WORKER {
        if stop.load(Relaxed) || Instant::now() >= hard_end {
            break;
        }
        let token = (id << 32) | seq;
        let res = tokio::time::timeout(o.deadline, subject.pool.request(token)).await;
        let end = Instant::now();
        let (kind, error) = match res {
            Ok(Outcome::Ok) => (Kind::Ok, None),
            Ok(Outcome::Failed(e)) => (Kind::Failed, Some(e)),
            Ok(Outcome::Wrong(e)) => (Kind::Wrong, Some(format!("wrong reply: {e}"))),
            Err(_) => (Kind::Hung, None),
        };
        subject.record.push(end, kind, error);
        tokio::time::sleep(o.pace).await;
    }
}

/// Stops the workers, waits for them (each ends within a request deadline and a pause), and
/// closes the pools.
async fn stop_all(
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<()>>,
    subjects: &[Vec<Arc<Subject>>],
) {
    stop.store(true, Relaxed);
    for w in workers {
        let _ = w.await;
    }
    for s in subjects.iter().flatten() {
        s.pool.close();
    }
}

/// The times of one server's fault and the pools' connect counters at them.
struct Fault {
    killed: Instant,
    accepting: Instant,
    connects_at_kill: Vec<u64>,
    connects_at_accept: Vec<u64>,
}

/// Kills `server`, waits `outage`, starts it again; meanwhile polls for the moment it accepts
/// TCP again. Gives the server back (on error it is dropped: stopped and removed).
async fn fault(
    server: Server,
    outage: Duration,
    subjects: Vec<Arc<Subject>>,
) -> Result<(Server, Fault), String> {
    let addr = server.addr();
    let connects = || {
        subjects
            .iter()
            .map(|s| s.pool.connects())
            .collect::<Vec<_>>()
    };
    let connects_at_kill = connects();
    let (mut server, killed) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let res = server.kill();
        (server, res.map(|()| Instant::now()))
    })
    .await
    .map_err(|e| format!("kill thread: {e}"))?;
    let killed = killed?;
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(outage);
        let res = server.start_again();
        (server, res)
    });
    let limit = killed + outage + Duration::from_secs(60);
    let mut accepting = None;
    while Instant::now() < limit {
        let attempt = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), attempt).await {
            accepting = Some(Instant::now());
            break;
        }
        tokio::time::sleep(ACCEPT_POLL).await;
    }
    let connects_at_accept = connects();
    let (mut server, res) = restart.await.map_err(|e| format!("restart thread: {e}"))?;
    res?;
    let Some(accepting) = accepting else {
        return Err(format!(
            "{} did not accept TCP on {addr} again within 60 s of its restart {}",
            server.name(),
            server.why_down()
        ));
    };
    let f = Fault {
        killed,
        accepting,
        connects_at_kill,
        connects_at_accept,
    };
    Ok((server, f))
}

/// One row of a table.
struct Row {
    outage: Duration,
    pool: String,
    ok: u64,
    failed: u64,
    hung: u64,
    wrong: u64,
    first_ok: Option<Duration>,
    connects_outage: u64,
    connects_after: u64,
    errors: Vec<(String, u64)>,
}

/// A server's rows and notes so far.
struct Group {
    server: Option<Server>,
    rows: Vec<Row>,
    notes: Vec<String>,
}

/// Error texts that differ only in numbers (`12`, `3.5`, `127.0.0.1`: each one `#`) count as
/// one; at most 120 characters.
const ERRORS: ErrorClass = ErrorClass {
    dotted_numbers: true,
    max_chars: 120,
};

async fn round(groups: &mut [Group], outage: Duration, o: &Arc<Options>) -> Result<(), String> {
    let origin = Instant::now();
    let hard_end = origin + o.warmup + outage + o.max_recovery + o.tail + Duration::from_secs(120);
    let stop = Arc::new(AtomicBool::new(false));
    // Fresh pools for each server, all running together.
    let mut subjects: Vec<Vec<Arc<Subject>>> = Vec::new();
    for g in groups.iter() {
        let server = g.server.as_ref().ok_or("server lost")?;
        let pools = server.pools(o.open_for)?;
        subjects.push(
            pools
                .into_iter()
                .map(|(name, pool)| {
                    Arc::new(Subject {
                        name,
                        pool,
                        record: Record {
                            origin,
                            events: Mutex::new(Vec::new()),
                            last_ok_ns: AtomicU64::new(0),
                        },
                    })
                })
                .collect(),
        );
    }
    let mut workers = Vec::new();
    for (i, s) in subjects.iter().flatten().enumerate() {
        for w in 0..o.workers {
            let id = (i as u64) << 8 | w;
            workers.push(tokio::spawn(worker(
                s.clone(),
                id,
                stop.clone(),
                hard_end,
                o.clone(),
            )));
        }
    }

    tokio::time::sleep(o.warmup).await;
    for s in subjects.iter().flatten() {
        if !s.record.ok_since(origin) {
            let first = s.record.first_error();
            stop_all(&stop, workers, &subjects).await;
            return Err(format!(
                "{}: no successful request in the {:?} warm-up, with the server up ({})",
                s.name,
                o.warmup,
                first.as_deref().unwrap_or("no error either: requests hung")
            ));
        }
    }

    eprintln!("  outage {outage:?}: killing {} server(s)", groups.len());
    let mut jobs = Vec::new();
    for (g, subs) in groups.iter_mut().zip(&subjects) {
        let server = g.server.take().ok_or("server lost")?;
        jobs.push(tokio::spawn(fault(server, outage, subs.clone())));
    }
    let mut faults = Vec::new();
    let mut first_error = None;
    for (g, job) in groups.iter_mut().zip(jobs) {
        match job
            .await
            .map_err(|e| format!("fault task: {e}"))
            .and_then(|r| r)
        {
            Ok((server, f)) => {
                g.server = Some(server);
                faults.push(f);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        stop_all(&stop, workers, &subjects).await;
        return Err(e);
    }
    for (g, f) in groups.iter().zip(&faults) {
        let name = g.server.as_ref().map_or("?", |s| s.name());
        eprintln!(
            "  outage {outage:?}: {name} accepting again {:.3} s after the kill",
            (f.accepting - f.killed).as_secs_f64()
        );
    }

    // Until every pool has succeeded after its server accepted again (then the tail), or the
    // limit.
    let latest_accept = faults.iter().map(|f| f.accepting).max().unwrap_or(origin);
    let give_up = latest_accept + o.max_recovery;
    let recovered = || {
        subjects
            .iter()
            .zip(&faults)
            .all(|(subs, f)| subs.iter().all(|s| s.record.ok_since(f.accepting)))
    };
    while !recovered() && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if recovered() {
        tokio::time::sleep(o.tail).await;
    } else {
        eprintln!(
            "  outage {outage:?}: not every pool recovered within {:?}",
            o.max_recovery
        );
    }
    let end = Instant::now();
    stop_all(&stop, workers, &subjects).await;

    for ((g, subs), f) in groups.iter_mut().zip(&subjects).zip(&faults) {
        let name = g.server.as_ref().map_or("?", |s| s.name());
        g.notes.push(format!(
            "outage {}: {name} accepting again {:.3} s after the kill",
            secs(outage),
            (f.accepting - f.killed).as_secs_f64()
        ));
        for (i, s) in subs.iter().enumerate() {
            let events = s.record.events();
            let mut row = Row {
                outage,
                pool: s.name.clone(),
                ok: 0,
                failed: 0,
                hung: 0,
                wrong: 0,
                first_ok: None,
                connects_outage: f.connects_at_accept[i] - f.connects_at_kill[i],
                connects_after: s.pool.connects() - f.connects_at_accept[i],
                errors: Vec::new(),
            };
            let mut errors: HashMap<String, u64> = HashMap::new();
            for e in events.iter().filter(|e| e.end >= f.killed && e.end <= end) {
                match e.kind {
                    Kind::Ok => row.ok += 1,
                    Kind::Failed => row.failed += 1,
                    Kind::Hung => row.hung += 1,
                    Kind::Wrong => row.wrong += 1,
                }
                // The server is down from `killed` on: any ok is after the restart, at most one
                // poll interval before the harness saw the port accept (then counted as 0).
                if e.kind == Kind::Ok {
                    let after = e.end.saturating_duration_since(f.accepting);
                    row.first_ok = Some(row.first_ok.map_or(after, |d| d.min(after)));
                }
                let class = match (&e.error, e.kind) {
                    (Some(err), _) => error_class(err, ERRORS),
                    (None, Kind::Hung) => format!("hung past the {:?} deadline", o.deadline),
                    _ => continue,
                };
                *errors.entry(class).or_default() += 1;
            }
            row.errors = errors.into_iter().collect();
            row.errors
                .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            eprintln!(
                "  outage {outage:?}: {:<34} first ok {} after accepting again",
                s.name,
                first_ok_text(row.first_ok, o.max_recovery)
            );
            g.rows.push(row);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn first_ok_text(d: Option<Duration>, limit: Duration) -> String {
    match d {
        None => format!("none in {} s", limit.as_secs()),
        Some(d) if d < Duration::from_secs(10) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

fn print_group(g: &Group, title: &str, o: &Options) {
    let header = [
        "outage",
        "pool",
        "ok",
        "failed",
        "hung",
        "wrong",
        "first ok after accept",
        "connects in outage",
        "connects after",
    ];
    let rows: Vec<Vec<String>> = g
        .rows
        .iter()
        .map(|r| {
            vec![
                secs(r.outage),
                r.pool.clone(),
                r.ok.to_string(),
                r.failed.to_string(),
                r.hung.to_string(),
                r.wrong.to_string(),
                first_ok_text(r.first_ok, o.max_recovery),
                r.connects_outage.to_string(),
                r.connects_after.to_string(),
            ]
        })
        .collect();
    println!("### {title}\n");
    print!("{}", markdown(&header, &rows, 2));
    println!();
    for n in &g.notes {
        println!("- {n}");
    }
    println!("\nMost frequent errors per row (digits shown as #):\n");
    for r in &g.rows {
        if r.errors.is_empty() {
            continue;
        }
        let top: Vec<String> = r
            .errors
            .iter()
            .take(2)
            .map(|(e, n)| format!("{n} × `{}`", e.replace('`', "'")))
            .collect();
        println!("- {}, {}: {}", secs(r.outage), r.pool, top.join("; "));
    }
    println!();
}

fn version_line(cmd: &str, arg: &str) -> String {
    std::process::Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async fn run(o: Arc<Options>) -> Result<(), String> {
    let wall = Instant::now();
    let mut groups = Vec::new();
    if o.redis {
        eprintln!("starting redis-server");
        let s = tokio::task::spawn_blocking(RedisServer::start)
            .await
            .map_err(|e| format!("redis start thread: {e}"))??;
        groups.push(Group {
            server: Some(Server::Redis(s)),
            rows: Vec::new(),
            notes: Vec::new(),
        });
    }
    if o.postgres {
        eprintln!("starting a PostgreSQL cluster (initdb, pg_ctl start)");
        let s = tokio::task::spawn_blocking(PgCluster::start)
            .await
            .map_err(|e| format!("postgres start thread: {e}"))??;
        groups.push(Group {
            server: Some(Server::Postgres(s)),
            rows: Vec::new(),
            notes: Vec::new(),
        });
    }
    for &outage in &o.outages {
        eprintln!("round: outage {outage:?}");
        round(&mut groups, outage, &o).await?;
    }

    println!("## Recovery after a restart\n");
    println!(
        "livepool {}; its default BreakerConfig: {:?}",
        livepool_commit(&["src", "Cargo.toml"]),
        livepool::BreakerConfig::default()
    );
    let redis_v = if o.redis {
        version_line("redis-server", "--version")
    } else {
        String::new()
    };
    let pg_v = if o.postgres {
        version_line("pg_ctl", "--version")
    } else {
        String::new()
    };
    println!("servers: {redis_v} / {pg_v}");
    println!(
        "{} workers per pool, per-request deadline {:?}, {:?} pause after each request, \
         warm-up {:?}, tail {:?}.\n",
        o.workers, o.deadline, o.pace, o.warmup, o.tail
    );
    for g in &groups {
        let title = match &g.server {
            Some(Server::Redis(_)) => "Redis (redis-server SIGKILLed, restarted on the same port)",
            Some(Server::Postgres(_)) => {
                "PostgreSQL (pg_ctl stop -m immediate, restarted on the same port)"
            }
            None => "?",
        };
        print_group(g, title, &o);
    }
    println!("Total wall time: {:.1} s", wall.elapsed().as_secs_f64());
    Ok(())
}

/// The first column of each row of a simple query's result. (livepool-postgres and
/// deadpool-postgres re-export the same tokio-postgres.)
fn first_column(
    msgs: &[livepool_postgres::tokio_postgres::SimpleQueryMessage],
) -> Vec<Option<String>> {
    use livepool_postgres::tokio_postgres::SimpleQueryMessage;
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .collect()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let run = |o| async move { run(Arc::new(o)).await.map(|()| true) };
    report::main(parse_options(), USAGE, run, "").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_fold_dotted_numbers_and_stop_at_120_characters() {
        assert_eq!(
            error_class(
                "connect 127.0.0.1:6379 failed after  1.5 s (os error 111)",
                ERRORS
            ),
            "connect #:# failed after # s (os error #)"
        );
        // A dot that ends a sentence is kept.
        assert_eq!(
            error_class("timed out after 2. Retry", ERRORS),
            "timed out after #. Retry"
        );
        let long = "x".repeat(200);
        let class = error_class(&long, ERRORS);
        assert_eq!(class, format!("{}…", "x".repeat(120)));
    }
}
