//! What livepool-postgres's settle step and its session reset cost, against one real PostgreSQL
//! cluster, next to a fresh connect and to deadpool-postgres (issue 19).
//!
//! The program starts a throwaway cluster on a free port of 127.0.0.1 (`initdb`,
//! SCRAM-SHA-256; as root run as the `postgres` user; see `servers.rs`). Every pool is built
//! from one `tokio_postgres::Config` (user, password, database `postgres`, host 127.0.0.1 and
//! the port: deadpool-postgres connects to those, livepool to the pool's address).
//!
//! # 1. Recovering an abandoned query
//!
//! An iteration gets a connection, starts `query_one("SELECT pg_sleep(5)")`, gives up on it
//! after 20 ms (`tokio::time::timeout` drops the future; the server keeps running the query)
//! and returns the connection. Measured: from just before that return (the drop) until the
//! next `get()` has returned and a `SELECT 1` on it has completed, each such request bounded
//! by 10 s. Rows (N = 30 iterations unless said):
//!
//! - livepool-postgres, max_size 1, defaults otherwise (`Postgres::new`): the return goes
//!   through the settle step (20 ms grace for the reply, a cancel request on a connection of
//!   its own, the wait until the server has closed that connection, the query's answer); the
//!   member stays busy meanwhile, and the next `get()` pops it and waits. The connection must
//!   be the same (`Conn::id`), and `statistics().created` must not grow.
//! - livepool-postgres, after a clean return (a `SELECT 1`, no abandoned query): the baseline.
//! - livepool-postgres, a fresh connect: the returned connection is `Conn::mark_broken()`, so
//!   the pool closes it and the next `get()` opens a new one (TCP connect, SCRAM startup).
//! - deadpool-postgres, max_size 1, `RecyclingMethod::Fast` (its default): the abandoned
//!   connection goes back as it is (`Fast` only checks `Client::is_closed`), so the next
//!   `SELECT 1` waits on the server behind the running `pg_sleep(5)`. About 5 s each, so
//!   fewer iterations (default 6, `--deadpool-iterations`).
//! - deadpool-postgres, the abandoned connection discarded instead (`Object::take` and drop):
//!   what a deadpool user can do about it. The next `get()` connects anew; the server still
//!   runs the abandoned `pg_sleep` (tokio-postgres keeps a dropped client's connection open
//!   until its pending replies arrive), which the program counts in `pg_stat_activity`.
//!
//! Per row: median, p90 and max of the recovery time, median of its `get()` part, the
//! iterations that got the same connection back, errors and timeouts.
//!
//! # 2. The session reset's cost
//!
//! A request: `get()`, `query_one("SELECT $1::int8", &[&token])` (tokio-postgres prepares
//! the text, then binds and executes it: two round trips, and a Close queued when the
//! statement drops), the return; the reply must equal the token. Latency runs from before
//! `get()` to after the return; its `get()` part is recorded too. Pools of max_size 16 each,
//! otherwise defaults:
//!
//! - livepool-postgres `Reset::WhenChanged` (its default: no reset when the statements sent
//!   changed nothing in the session);
//! - livepool-postgres `Reset::Always`: a reset round trip (deadpool's Clean statements) after
//!   every return, off the caller's path, while the member is busy;
//! - deadpool-postgres `RecyclingMethod::Fast` (no query in `get()`);
//! - deadpool-postgres `RecyclingMethod::Clean` (the reset statements inside `get()`);
//! - livepool-postgres `Reset::WhenChanged` with the statement
//!   `SELECT $1::int8, set_config('application_name', 'pgsettle', false)`: the same round
//!   trips, but the wire tap sees `set_config`, so every return is reset (the Clean
//!   statements, as with `Always`) by the policy that decides per return;
//! - livepool-postgres `Reset::Never` with that statement: the same work without a reset.
//!
//! After the rounds the program gets one connection from each livepool pool and reads its
//! `application_name`: `'pgsettle'` means a session change leaked to the next caller.
//!
//! With 1 and 16 tasks in a closed loop, rows in turns: after a warm-up of each configuration
//! (default 0.3 s), rounds (default 6 × 0.5 s per configuration) in which the six
//! configurations run one after the other for each task count, the order rotated every
//! round. Per configuration:
//! requests/s (median of rounds), p50/p99 of the request and of its `get()`, and for
//! livepool the returns the wire tap saw as not idle (`PgClient::is_idle` just before the
//! drop: they go through the settle step even without a reset). Then ratios to deadpool
//! `Fast`: throughput (median of the per-round ratios, and their range), p50, p99.
//!
//! The whole run takes about a minute with the defaults. Progress goes to stderr, the tables
//! (Markdown) to stdout.
//!
//! ```sh
//! cargo run --release --manifest-path compare/Cargo.toml --bin pgsettle
//! cargo run --release --manifest-path compare/Cargo.toml --bin pgsettle -- --help
//! ```
//!
//! Needs PostgreSQL's `initdb`/`pg_ctl` (PATH, `pg_config --bindir` or
//! `/usr/lib/postgresql/*/bin`). Traffic stays on 127.0.0.1; the cluster and its temp dir are
//! removed on exit, also after an error or Ctrl-C.

mod report;
mod rounds;
// Shared with `restart`, which uses the Redis server and the restarts as well.
#[allow(dead_code)]
mod servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use livepool_postgres::tokio_postgres::{self, NoTls};
use livepool_postgres::{Postgres, Reset};

use report::{
    fmt_rate, fmt_ratio, fmt_us, latency_ratio, livepool_commit, markdown, percentile_us,
    ratio_stats, threads,
};
use rounds::{Counts, Rounds, Turns};
use servers::{PG_USER, PgCluster};

const USAGE: &str = "\
What an abandoned query and a session reset cost: livepool-postgres next to a fresh connect
and to deadpool-postgres.

USAGE: pgsettle [OPTIONS]

  --iterations N            abandoned-query iterations per row (default 30)
  --deadpool-iterations N   for deadpool-postgres Fast, about 5 s each (default 6)
  --tasks LIST              tasks for the reset rows, comma-separated (default 1,16)
  --rounds N                measured rounds of the reset rows (default 6)
  --round-ms MS             one configuration's turn in a round (default 500)
  --warmup-ms MS            warm-up per configuration (default 300)
  -h, --help                this text
";

/// The query the caller abandons, and when.
const ABANDONED: &str = "SELECT pg_sleep(5)";
const ABANDON_AFTER: Duration = Duration::from_millis(20);
/// The bound on one measured request.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Connections of the reset rows' pools.
const MAX_SIZE: usize = 16;

struct Options {
    iterations: usize,
    dp_iterations: usize,
    tasks: Vec<usize>,
    turns: Turns,
}

fn parse_options() -> Result<Option<Options>, String> {
    let defaults = Options {
        iterations: 30,
        dp_iterations: 6,
        tasks: vec![1, 16],
        turns: Turns::new(6, 500, 300),
    };
    let parsed = report::options(defaults, |o, flag, value| {
        match flag {
            "--iterations" => o.iterations = report::num(flag, value)?.clamp(1, 1000) as usize,
            "--deadpool-iterations" => {
                o.dp_iterations = report::num(flag, value)?.min(100) as usize
            }
            "--tasks" => o.tasks = rounds::tasks(flag, value, 256)?,
            _ => return o.turns.set(flag, value),
        }
        Ok(true)
    })?;
    if parsed.as_ref().is_some_and(|o| o.tasks.is_empty()) {
        return Err("--tasks: nothing to run".into());
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An error with its sources, each one that its message does not already contain.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    if let Some(db) = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
    {
        text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    report::chain(text, e)
}

fn pg_config(addr: SocketAddr, password: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(PG_USER)
        .password(password)
        .dbname("postgres")
        .host(addr.ip().to_string())
        .port(addr.port());
    config
}

fn lp_pool(
    addr: SocketAddr,
    config: &tokio_postgres::Config,
    reset: Reset,
    max_size: usize,
) -> Result<livepool_postgres::Pool, String> {
    livepool::Pool::builder(addr)
        .protocol(Postgres::builder(config.clone()).reset(reset).build())
        .max_size(max_size)
        .build()
        .map_err(|e| format!("livepool build: {e}"))
}

fn dp_pool(
    config: &tokio_postgres::Config,
    method: RecyclingMethod,
    max_size: usize,
) -> Result<deadpool_postgres::Pool, String> {
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: method,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| format!("deadpool-postgres build: {e}"))
}

/// `fut` bounded by [`REQUEST_LIMIT`]; a timeout is an error that says so.
async fn bounded<T>(what: &str, fut: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_LIMIT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout: {what} took over {REQUEST_LIMIT:?}")),
    }
}

/// Starts the slow query and gives up on it after [`ABANDON_AFTER`].
async fn abandon(client: &tokio_postgres::Client) -> Result<(), String> {
    match tokio::time::timeout(ABANDON_AFTER, client.query_one(ABANDONED, &[])).await {
        Err(_) => Ok(()),
        Ok(r) => Err(format!(
            "{ABANDONED} ended within {ABANDON_AFTER:?}: {:?}",
            r.map_err(|e| describe(&e))
        )),
    }
}

async fn select1(client: &tokio_postgres::Client) -> Result<(), String> {
    let row = client
        .query_one("SELECT 1", &[])
        .await
        .map_err(|e| describe(&e))?;
    match row.try_get::<_, i32>(0) {
        Ok(1) => Ok(()),
        other => Err(format!("SELECT 1 answered {other:?}")),
    }
}

fn fmt_ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms.is_nan() {
        "–".into()
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// `SELECT pg_sleep(5)`s the server is running now.
async fn sleeping(admin: &tokio_postgres::Client) -> Result<i64, String> {
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE query = $1 AND state = 'active' AND pid <> pg_backend_pid()",
            &[&ABANDONED],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(row.get(0))
}

// ---------------------------------------------------------------------------------------------
// 1. Recovering an abandoned query
// ---------------------------------------------------------------------------------------------

/// One iteration's figures.
struct Sample {
    /// From the drop until the next `SELECT 1` completed.
    total: Duration,
    /// From the drop until the next `get()` returned.
    get: Duration,
    /// The next `get()` gave the same connection.
    same: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LpReturn {
    Abandoned,
    Clean,
    Broken,
}

/// livepool-postgres: a checkout left as `how` says, its return, then the next checkout and
/// its `SELECT 1`.
async fn lp_iteration(pool: &livepool_postgres::Pool, how: LpReturn) -> Result<Sample, String> {
    let mut conn = bounded("get", async { pool.get().await.map_err(|e| describe(&e)) }).await?;
    let id = conn.id();
    match how {
        LpReturn::Abandoned => abandon(&conn).await?,
        LpReturn::Clean => select1(&conn).await?,
        LpReturn::Broken => {
            select1(&conn).await?;
            conn.mark_broken();
        }
    }
    let start = Instant::now();
    drop(conn);
    bounded("get + SELECT 1 after the return", async {
        let conn = pool.get().await.map_err(|e| describe(&e))?;
        let get = start.elapsed();
        select1(&conn).await?;
        let total = start.elapsed();
        Ok(Sample {
            total,
            get,
            same: conn.id() == id,
        })
    })
    .await
}

/// deadpool-postgres: a checkout whose query is abandoned, returned as it is (or discarded),
/// then the next checkout and its `SELECT 1`.
async fn dp_iteration(pool: &deadpool_postgres::Pool, discard: bool) -> Result<Sample, String> {
    let client = bounded("get", async { pool.get().await.map_err(|e| describe(&e)) }).await?;
    let id = deadpool_postgres::Object::id(&client);
    abandon(&client).await?;
    let start = Instant::now();
    if discard {
        drop(deadpool_postgres::Object::take(client));
    } else {
        drop(client);
    }
    let next = async {
        let client = pool.get().await.map_err(|e| describe(&e))?;
        let get = start.elapsed();
        let res = tokio::time::timeout(REQUEST_LIMIT.saturating_sub(get), select1(&client)).await;
        match res {
            Ok(r) => r?,
            Err(_) => {
                // The connection still owes the abandoned query's reply: do not put it back.
                drop(deadpool_postgres::Object::take(client));
                return Err(format!(
                    "timeout: SELECT 1 after the return took over {REQUEST_LIMIT:?}"
                ));
            }
        }
        Ok(Sample {
            total: start.elapsed(),
            get,
            same: deadpool_postgres::Object::id(&client) == id,
        })
    };
    bounded("get + SELECT 1 after the return", next).await
}

/// One row of the recovery table.
#[derive(Default)]
struct Recovery {
    name: String,
    totals: Vec<u64>,
    gets: Vec<u64>,
    same: usize,
    errors: usize,
    timeouts: usize,
    first_error: Option<String>,
    /// Connections the pool opened during the row (livepool's statistics), if known.
    opened: Option<u64>,
    /// `pg_sleep`s still running on the server right after the last iteration.
    sleeping_after: Option<i64>,
}

impl Recovery {
    fn new(name: &str) -> Recovery {
        Recovery {
            name: name.into(),
            ..Recovery::default()
        }
    }

    fn record(&mut self, res: Result<Sample, String>) {
        match res {
            Ok(s) => {
                self.totals.push(s.total.as_nanos() as u64);
                self.gets.push(s.get.as_nanos() as u64);
                self.same += s.same as usize;
            }
            Err(e) => {
                if e.starts_with("timeout") {
                    self.timeouts += 1;
                } else {
                    self.errors += 1;
                }
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn row(&mut self) -> Vec<String> {
        self.totals.sort_unstable();
        self.gets.sort_unstable();
        let n = self.totals.len() + self.errors + self.timeouts;
        vec![
            self.name.clone(),
            n.to_string(),
            fmt_ms(percentile_us(&self.totals, 0.5)),
            fmt_ms(percentile_us(&self.totals, 0.9)),
            fmt_ms(percentile_us(&self.totals, 1.0)),
            fmt_ms(percentile_us(&self.gets, 0.5)),
            format!("{}/{}", self.same, self.totals.len()),
            self.opened.map_or("–".into(), |o| o.to_string()),
            self.sleeping_after.map_or("–".into(), |s| s.to_string()),
            self.errors.to_string(),
            self.timeouts.to_string(),
        ]
    }
}

async fn recovery(
    addr: SocketAddr,
    config: &tokio_postgres::Config,
    admin: &tokio_postgres::Client,
    o: &Options,
) -> Result<Vec<Recovery>, String> {
    let mut rows = Vec::new();
    let lp_rows = [
        (
            LpReturn::Abandoned,
            "livepool-postgres: abandoned pg_sleep, settled (grace, cancel, answer)",
        ),
        (
            LpReturn::Clean,
            "livepool-postgres: clean return (baseline)",
        ),
        (
            LpReturn::Broken,
            "livepool-postgres: fresh connect (mark_broken, TCP + SCRAM)",
        ),
    ];
    for (how, name) in lp_rows {
        eprintln!("recovery: {name}");
        // A pool of its own per row: `created` counts this row's connects only.
        let pool = lp_pool(addr, config, Reset::default(), 1)?;
        // Warm-up: the pool's one connection opened, the code paths run once.
        lp_iteration(&pool, how).await?;
        let before = pool.statistics().created;
        let mut row = Recovery::new(name);
        for _ in 0..o.iterations {
            row.record(lp_iteration(&pool, how).await);
        }
        row.opened = Some(pool.statistics().created - before);
        row.sleeping_after = Some(sleeping(admin).await?);
        pool.close();
        rows.push(row);
    }

    let dp_rows = [
        (
            true,
            o.iterations,
            "deadpool-postgres: abandoned pg_sleep, connection discarded (Object::take)",
        ),
        (
            false,
            o.dp_iterations,
            "deadpool-postgres Fast: abandoned pg_sleep, connection returned",
        ),
    ];
    for (discard, n, name) in dp_rows {
        if n == 0 {
            continue;
        }
        eprintln!("recovery: {name} ({n} iterations)");
        let pool = dp_pool(config, RecyclingMethod::Fast, 1)?;
        // Warm-up: the connection opened, one plain request.
        {
            let c = pool.get().await.map_err(|e| describe(&e))?;
            select1(&c).await?;
        }
        let mut row = Recovery::new(name);
        for _ in 0..n {
            row.record(dp_iteration(&pool, discard).await);
        }
        row.sleeping_after = Some(sleeping(admin).await?);
        pool.close();
        rows.push(row);
        if discard {
            // The discarded connections' queries run out (5 s) before the next row, which
            // would otherwise wait behind the last of them on no connection of its own, but
            // the server's slots and CPU are shared.
            let end = Instant::now() + Duration::from_secs(6);
            while Instant::now() < end && sleeping(admin).await? > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// 2. The session reset's cost
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cfg {
    LpWhenChanged,
    LpAlways,
    DpFast,
    DpClean,
    /// `Reset::WhenChanged` with [`SQL_SET`]: a reset after every return, as its policy says.
    LpWhenChangedSet,
    /// `Reset::Never` with [`SQL_SET`]: the same statement, no reset.
    LpNeverSet,
}

const CFGS: [Cfg; 6] = [
    Cfg::LpWhenChanged,
    Cfg::LpAlways,
    Cfg::DpFast,
    Cfg::DpClean,
    Cfg::LpWhenChangedSet,
    Cfg::LpNeverSet,
];

impl Cfg {
    fn name(self) -> &'static str {
        match self {
            Cfg::LpWhenChanged => "livepool-postgres Reset::WhenChanged",
            Cfg::LpAlways => "livepool-postgres Reset::Always",
            Cfg::DpFast => "deadpool-postgres Fast",
            Cfg::DpClean => "deadpool-postgres Clean",
            Cfg::LpWhenChangedSet => "livepool-postgres Reset::WhenChanged, set_config",
            Cfg::LpNeverSet => "livepool-postgres Reset::Never, set_config",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Cfg::LpWhenChangedSet | Cfg::LpNeverSet => SQL_SET,
            _ => SQL,
        }
    }
}

struct Pools {
    lp_when: livepool_postgres::Pool,
    /// `Reset::WhenChanged` too, for the `set_config` rows: statistics of their own.
    lp_when_set: livepool_postgres::Pool,
    lp_always: livepool_postgres::Pool,
    lp_never: livepool_postgres::Pool,
    dp_fast: deadpool_postgres::Pool,
    dp_clean: deadpool_postgres::Pool,
}

impl Pools {
    fn livepool(&self, cfg: Cfg) -> Option<&livepool_postgres::Pool> {
        match cfg {
            Cfg::LpWhenChanged => Some(&self.lp_when),
            Cfg::LpWhenChangedSet => Some(&self.lp_when_set),
            Cfg::LpAlways => Some(&self.lp_always),
            Cfg::LpNeverSet => Some(&self.lp_never),
            Cfg::DpFast | Cfg::DpClean => None,
        }
    }

    fn deadpool(&self, cfg: Cfg) -> &deadpool_postgres::Pool {
        match cfg {
            Cfg::DpClean => &self.dp_clean,
            _ => &self.dp_fast,
        }
    }
}

const SQL: &str = "SELECT $1::int8";
/// The same round trips, but the statement changes the session (the wire tap sees
/// `set_config`), so `Reset::WhenChanged` resets after every return.
const SQL_SET: &str = "SELECT $1::int8, set_config('application_name', 'pgsettle', false)";

async fn lp_request(
    pool: &livepool_postgres::Pool,
    sql: &str,
    token: i64,
    got: &mut Duration,
    start: Instant,
    counts: &mut Counts,
) -> Result<i64, String> {
    let conn = pool.get().await.map_err(|e| describe(&e))?;
    *got = start.elapsed();
    let row = conn
        .query_one(sql, &[&token])
        .await
        .map_err(|e| describe(&e))?;
    if !conn.is_idle() {
        counts.unclean += 1;
    }
    drop(conn);
    row.try_get::<_, i64>(0).map_err(|e| describe(&e))
}

async fn dp_request(
    pool: &deadpool_postgres::Pool,
    token: i64,
    got: &mut Duration,
    start: Instant,
) -> Result<i64, String> {
    let client = pool.get().await.map_err(|e| describe(&e))?;
    *got = start.elapsed();
    let row = client
        .query_one(SQL, &[&token])
        .await
        .map_err(|e| describe(&e))?;
    drop(client);
    row.try_get::<_, i64>(0).map_err(|e| describe(&e))
}

struct TaskOut {
    counts: Counts,
    latencies: Vec<u64>,
    gets: Vec<u64>,
    finished: Instant,
}

async fn task(pools: Arc<Pools>, cfg: Cfg, base: i64, end: Instant) -> TaskOut {
    let mut counts = Counts::default();
    let mut latencies = Vec::with_capacity(8 * 1024);
    let mut gets = Vec::with_capacity(8 * 1024);
    let mut seq: i64 = 0;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        seq += 1;
        let token = base + seq;
        let mut got = Duration::ZERO;
        let res = match pools.livepool(cfg) {
            Some(pool) => lp_request(pool, cfg.sql(), token, &mut got, start, &mut counts).await,
            None => dp_request(pools.deadpool(cfg), token, &mut got, start).await,
        };
        latencies.push(start.elapsed().as_nanos() as u64);
        gets.push(got.as_nanos() as u64);
        counts.requests += 1;
        match res {
            Ok(v) if v == token => {}
            Ok(_) => counts.wrong += 1,
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert(e);
                // An error storm should not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    TaskOut {
        counts,
        latencies,
        gets,
        finished: Instant::now(),
    }
}

/// One configuration's record over the run.
struct Series {
    cfg: Cfg,
    tasks: usize,
    rounds: Rounds,
    latencies: Vec<u64>,
    gets: Vec<u64>,
    counts: Counts,
}

impl Series {
    /// The configuration, for messages.
    fn label(&self) -> String {
        format!("{} N={}", self.cfg.name(), self.tasks)
    }
}

async fn turn(
    pools: &Arc<Pools>,
    s: &mut Series,
    index: usize,
    length: Duration,
    measured: bool,
) -> Result<(), String> {
    let start = Instant::now();
    let end = start + length;
    let handles: Vec<_> = (0..s.tasks)
        .map(|t| {
            // Tokens differ between configurations, tasks and requests.
            let base = ((index as i64) << 48) | ((t as i64) << 32);
            tokio::spawn(task(pools.clone(), s.cfg, base, end))
        })
        .collect();
    let mut finished = start;
    let mut counts = Counts::default();
    for h in handles {
        let out = h.await.map_err(|e| format!("task: {e}"))?;
        finished = finished.max(out.finished);
        if measured {
            s.latencies.extend_from_slice(&out.latencies);
            s.gets.extend_from_slice(&out.gets);
        }
        counts.add(out.counts);
    }
    counts.any_succeeded(&s.label())?;
    if measured {
        s.rounds.push(counts.requests, finished - start);
        s.counts.add(counts);
    }
    Ok(())
}

async fn resets(
    addr: SocketAddr,
    config: &tokio_postgres::Config,
    o: &Options,
) -> Result<(String, String, String), String> {
    let pools = Arc::new(Pools {
        lp_when: lp_pool(addr, config, Reset::WhenChanged, MAX_SIZE)?,
        lp_when_set: lp_pool(addr, config, Reset::WhenChanged, MAX_SIZE)?,
        lp_always: lp_pool(addr, config, Reset::Always, MAX_SIZE)?,
        lp_never: lp_pool(addr, config, Reset::Never, MAX_SIZE)?,
        dp_fast: dp_pool(config, RecyclingMethod::Fast, MAX_SIZE)?,
        dp_clean: dp_pool(config, RecyclingMethod::Clean, MAX_SIZE)?,
    });
    let mut series: Vec<Series> = Vec::new();
    for &tasks in &o.tasks {
        for cfg in CFGS {
            series.push(Series {
                cfg,
                tasks,
                rounds: Rounds::default(),
                latencies: Vec::new(),
                gets: Vec::new(),
                counts: Counts::default(),
            });
        }
    }
    eprintln!(
        "resets: warm-up, {} configurations × {:?}",
        series.len(),
        o.turns.warmup
    );
    for (i, s) in series.iter_mut().enumerate() {
        turn(&pools, s, i, o.turns.warmup, false).await?;
    }
    for r in 0..o.turns.rounds {
        eprintln!("resets: round {}/{}", r + 1, o.turns.rounds);
        // The configurations of one task count back to back, the order rotated each round.
        let order: Vec<usize> = (0..CFGS.len()).map(|k| (k + r) % CFGS.len()).collect();
        for i in rounds::round(series.len(), &order) {
            turn(&pools, &mut series[i], i, o.turns.round, true).await?;
        }
    }

    let mut rows = Vec::new();
    for s in series.iter_mut() {
        s.latencies.sort_unstable();
        s.gets.sort_unstable();
        let lp = pools.livepool(s.cfg).is_some();
        rows.push(vec![
            s.cfg.name().to_string(),
            s.tasks.to_string(),
            fmt_rate(s.rounds.median_rate()),
            fmt_us(percentile_us(&s.latencies, 0.50)),
            fmt_us(percentile_us(&s.latencies, 0.99)),
            fmt_us(percentile_us(&s.gets, 0.50)),
            fmt_us(percentile_us(&s.gets, 0.99)),
            s.counts.requests.to_string(),
            s.counts.wrong.to_string(),
            s.counts.errors.to_string(),
            if lp {
                s.counts.unclean.to_string()
            } else {
                "–".into()
            },
        ]);
    }
    let header = [
        "pool",
        "tasks",
        "req/s (median of rounds)",
        "p50 µs",
        "p99 µs",
        "get() p50 µs",
        "get() p99 µs",
        "requests",
        "wrong",
        "errors",
        "unclean returns",
    ];
    let table = markdown(&header, &rows, 2);

    let mut ratios = Vec::new();
    for group in series.chunks(CFGS.len()) {
        let base = group
            .iter()
            .find(|s| s.cfg == Cfg::DpFast)
            .expect("every group has deadpool Fast");
        for s in group {
            let (mid, range) = ratio_stats(s.rounds.ratios(&base.rounds));
            ratios.push(vec![
                s.cfg.name().to_string(),
                s.tasks.to_string(),
                fmt_ratio(mid),
                range,
                latency_ratio(&s.latencies, &base.latencies, 0.50),
                latency_ratio(&s.latencies, &base.latencies, 0.99),
            ]);
        }
    }
    let header = [
        "pool",
        "tasks",
        "throughput / dp Fast (median of rounds)",
        "range over rounds",
        "p50 / dp Fast",
        "p99 / dp Fast",
    ];
    let ratio_table = markdown(&header, &ratios, 2);

    let mut notes = String::new();
    let lp_pools = [
        ("WhenChanged", &pools.lp_when),
        ("WhenChanged (set_config rows)", &pools.lp_when_set),
        ("Always", &pools.lp_always),
        ("Never", &pools.lp_never),
    ];
    for (name, pool) in lp_pools {
        let st = pool.statistics();
        let reasons: Vec<String> = st
            .evictions()
            .iter()
            .map(|(r, n)| format!("{n} {}", r.as_str()))
            .collect();
        // What the next caller finds of the session: `set_config` set it to 'pgsettle'.
        let app = match pool.get().await {
            Ok(c) => c
                .query_one("SELECT current_setting('application_name')", &[])
                .await
                .map(|r| format!("{:?}", r.get::<_, String>(0)))
                .unwrap_or_else(|e| describe(&e)),
            Err(e) => describe(&e),
        };
        notes += &format!(
            "- livepool-postgres {name} pool: {} connections opened, {} evicted{}, {} \
             checkouts; `application_name` on a connection got afterwards: {app}.\n",
            st.created,
            st.evicted_total(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            st.checkouts,
        );
    }
    notes += &format!(
        "- deadpool-postgres at the end: Fast {} connections, Clean {}.\n",
        pools.dp_fast.status().size,
        pools.dp_clean.status().size,
    );
    for s in &series {
        if let Some(e) = &s.counts.first_error {
            notes += &format!("- {}: {} errors, first: {e}\n", s.label(), s.counts.errors);
        }
    }
    pools.lp_when.close();
    pools.lp_always.close();
    pools.lp_when_set.close();
    pools.lp_never.close();
    pools.dp_fast.close();
    pools.dp_clean.close();
    if series.iter().any(|s| s.counts.wrong > 0) {
        notes += "- WRONG REPLIES: see the table.\n";
    }
    Ok((table, ratio_table, notes))
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async fn run(o: Options) -> Result<bool, String> {
    let wall = Instant::now();
    eprintln!("starting a PostgreSQL cluster (initdb, pg_ctl start)");
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .map_err(|e| format!("postgres start thread: {e}"))??;
    let addr = cluster.addr();
    let config = pg_config(addr, cluster.password());

    // An administrative connection of our own, outside every pool.
    let (admin, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("admin connect: {}", describe(&e)))?;
    let admin_driver = tokio::spawn(connection);
    let server_version: String = admin
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| describe(&e))?
        .get(0);

    let mut recovered = recovery(addr, &config, &admin, &o).await?;
    let (table, ratio_table, notes) = resets(addr, &config, &o).await?;

    println!("## PostgreSQL: what a cancelled query and a session reset cost (issue 19)\n");
    println!(
        "livepool {}; PostgreSQL {server_version}; {}.\n",
        livepool_commit(&["src", "Cargo.toml", "livepool-postgres"]),
        threads(),
    );
    println!(
        "### Recovering an abandoned `{ABANDONED}` (abandoned after {ABANDON_AFTER:?}), max_size 1\n"
    );
    println!(
        "From the return (drop) of the connection until the next `get()` has returned and a \
         `SELECT 1` on it has completed; each bounded by {REQUEST_LIMIT:?}.\n"
    );
    let header = [
        "row",
        "n",
        "median ms",
        "p90 ms",
        "max ms",
        "get() median ms",
        "same connection",
        "connections opened",
        "pg_sleeps running after",
        "errors",
        "timeouts",
    ];
    let rows: Vec<Vec<String>> = recovered.iter_mut().map(Recovery::row).collect();
    print!("{}", markdown(&header, &rows, 1));
    println!();
    for r in &recovered {
        if let Some(e) = &r.first_error {
            println!("- {}: first error: {e}", r.name);
        }
    }
    println!(
        "\n### Session reset: get + `query_one(\"{SQL}\")` + return, max_size {MAX_SIZE}, {} rounds × {:?} after a {:?} warm-up\n",
        o.turns.rounds, o.turns.round, o.turns.warmup
    );
    println!("The `set_config` rows send `{SQL_SET}` instead.\n");
    print!("{table}");
    println!();
    print!("{ratio_table}");
    println!();
    print!("{notes}");
    println!("\nTotal wall time: {:.1} s", wall.elapsed().as_secs_f64());
    drop(admin);
    let _ = admin_driver.await;
    drop(cluster);
    let ok = recovered.iter().all(|r| r.errors == 0) && !notes.contains("WRONG");
    Ok(ok)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let failure = "errors or wrong replies (see the tables)";
    report::main(parse_options(), USAGE, run, failure).await
}
