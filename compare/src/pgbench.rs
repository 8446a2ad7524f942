//! Throughput and latency of a one-row `SELECT $1::int8` through livepool-postgres next to
//! deadpool-postgres, against one real PostgreSQL cluster (issue 19, item 9).
//!
//! The program starts a throwaway cluster on a free port of 127.0.0.1 (`initdb`,
//! SCRAM-SHA-256; as root run as the `postgres` user; see `servers.rs`) and builds two pools
//! against it, each with its documented defaults plus `max_size` 16, from one
//! `tokio_postgres::Config` (user, password, database `postgres`; host 127.0.0.1 and the
//! port, which deadpool-postgres connects to and livepool ignores: its address is the pool's):
//!
//! - livepool-postgres: `livepool::Pool::builder(addr).protocol(Postgres::new(config))
//!   .max_size(16).build()`;
//! - deadpool-postgres: `Pool::builder(Manager::from_config(config, NoTls,
//!   ManagerConfig::default())).max_size(16).build()` (its README's example; the default
//!   recycling method is `Fast`: no query in `get()`).
//!
//! The two crates must share one tokio-postgres: the same `Config` value goes to both, so a
//! second version would not compile (with 0.7.18 in `Cargo.lock`, there is one).
//!
//! # The workload
//!
//! N tasks (default N = 1 and N = 16) in a closed loop, each request: `get()`, one query whose
//! parameter is a token unique to the request, the connection dropped (returned); the reply's
//! `int8` must equal the token (a mismatch counts as *wrong*; there must be none). A request's
//! latency runs from before `get()` to after the return. Three statement kinds:
//!
//! | kind           | call on the client                                     | wire, per request |
//! |----------------|--------------------------------------------------------|-------------------|
//! | `unnamed`      | `query_typed_one("SELECT $1::int8", &[(&token, INT8)])` | Parse (unnamed) / Bind / Describe / Execute / Sync: one round trip |
//! | `prepared`     | `query_one(&stmt, &[&token])`, `stmt` prepared once per connection | Bind / Execute / Sync: one round trip |
//! | `prepare-each` | `query_one("SELECT $1::int8", &[&token])`              | Parse / Describe / Sync, then Bind / Execute / Sync (two round trips); the statement's drop queues Close / Sync, not awaited |
//!
//! For `prepared`, each pool uses its own per-connection statement cache: deadpool-postgres's
//! `ClientWrapper::prepare_cached`, livepool-postgres's `PgClient::prepare_cached` (both keep
//! the statement for the connection's life, so after the warm-up neither prepares again; the
//! caches are not probed, so that both paths stay the documented ones).
//! `--livepool-statements task-map` replaces livepool's cache by what a caller of a pool
//! without one would do: each task keeps a map from `Conn::id()` (stable for the connection's
//! life) to the `Statement` it prepared there, preparing on a miss; the maps outlive the
//! rounds, and their misses in the measured rounds are counted (`prepares`).
//! `prepare-each` is what `client.query_one("…", …)` costs in tokio-postgres. Its Close is
//! queued to the connection's driver when the statement drops, just before the return; if
//! the driver has written it by then, livepool-postgres's wire tap sees a reply owed and the
//! return goes through the pool's settle step, otherwise the Close simply runs ahead of the
//! next caller's request. The program counts the returns the tap saw as not idle
//! (`unclean returns`, `PgClient::is_idle` read just before the drop), for every kind. None
//! of these statements makes livepool-postgres reset the session on return (its default,
//! `Reset::WhenChanged`, looks for `SET`, `PREPARE`, … in the statement texts).
//!
//! The pools differ in which idle connection `get()` hands out: livepool the most recently
//! returned one, deadpool (default `QueueMode::Fifo`) the least recently returned one, so
//! with N = 1 and 16 open connections deadpool cycles through all 16 sessions (16 driver
//! tasks, 16 server processes) where livepool reuses one. `--deadpool-queue lifo` runs
//! deadpool with `QueueMode::Lifo` to take that difference out.
//!
//! # Rows in turns
//!
//! A configuration is (pool, N, kind). After a warm-up of every configuration (default
//! 0.5 s each: connections opened, statements prepared), the measurement runs in rounds
//! (default 8 rounds of 1 s per configuration): in each round, for each (N, kind), livepool
//! and deadpool run back to back, livepool first in even rounds and deadpool first in odd
//! ones, so that noise from the machine hits both alike. Both pools stay up for the whole
//! run; only one runs traffic at a time.
//!
//! Per configuration: requests/s (median of the rounds, and all requests over all measured
//! time), p50/p99/p99.9 of the request latency over all measured requests, wrong replies,
//! errors; then livepool/deadpool ratios per (N, kind): throughput (the median of the
//! per-round ratios, each round's pair ran back to back, and its range) and p99. With the
//! defaults (12 configurations) the run takes under 2 minutes. Progress goes to stderr, the
//! tables (Markdown) to stdout. `--pools livepool` (or `deadpool`) runs one pool alone, for a
//! profiler.
//!
//! ```sh
//! cargo run --release --manifest-path compare/Cargo.toml --bin pgbench
//! cargo run --release --manifest-path compare/Cargo.toml --bin pgbench -- --help
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livepool_postgres::tokio_postgres::{self, NoTls, Statement, types::Type};

use report::{
    choice, describe, fmt_ratio, latency_ratio, livepool_commit, markdown, ratio_stats, threads,
};
use rounds::{Counts, FIGURES, Rounds, Turns, figures, permutations};
use servers::{PG_USER, PgCluster};

const SQL: &str = "SELECT $1::int8";

const USAGE: &str = "\
Throughput and latency of SELECT $1::int8: livepool-postgres next to deadpool-postgres.

USAGE: pgbench [OPTIONS]

  --tasks LIST      concurrent tasks per configuration, comma-separated (default 1,16)
  --kinds LIST      unnamed,prepared,prepare-each (default all three)
  --rounds N        measured rounds (default 8)
  --round-ms MS     length of one configuration's turn in a round (default 1000)
  --warmup-ms MS    warm-up per configuration before the rounds (default 500)
  --max-size N      max_size of both pools (default 16)
  --deadpool-queue fifo|lifo
                    deadpool's QueueMode (default fifo, its default; livepool hands
                    out the most recently returned connection first, like lifo)
  --livepool-statements cache|task-map
                    livepool's `prepared` rows: PgClient::prepare_cached (default), or
                    a map Conn::id() -> Statement per task, preparing on a miss
  --pools LIST      livepool,deadpool (default both; one alone is for profiling, without
                    the ratio table)
  -h, --help        this text
";

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Unnamed,
    Prepared,
    PrepareEach,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Unnamed => "unnamed",
            Kind::Prepared => "prepared",
            Kind::PrepareEach => "prepare-each",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Livepool,
    Deadpool,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Livepool => "livepool-postgres",
            Which::Deadpool => "deadpool-postgres",
        }
    }
}

struct Options {
    tasks: Vec<usize>,
    kinds: Vec<Kind>,
    turns: Turns,
    max_size: usize,
    dp_queue: deadpool::managed::QueueMode,
    pools: Vec<Which>,
    lp_task_map: bool,
}

fn parse_options() -> Result<Option<Options>, String> {
    let defaults = Options {
        tasks: vec![1, 16],
        kinds: vec![Kind::Unnamed, Kind::Prepared, Kind::PrepareEach],
        turns: Turns::new(8, 1000, 500),
        max_size: 16,
        dp_queue: deadpool::managed::QueueMode::default(),
        pools: vec![Which::Livepool, Which::Deadpool],
        lp_task_map: false,
    };
    let parsed = report::options(defaults, |o, flag, value| {
        match flag {
            "--tasks" => o.tasks = rounds::tasks(flag, value, 1024)?,
            "--kinds" => {
                o.kinds = value
                    .split(',')
                    .map(|k| match k.trim() {
                        "unnamed" => Ok(Kind::Unnamed),
                        "prepared" => Ok(Kind::Prepared),
                        "prepare-each" => Ok(Kind::PrepareEach),
                        other => Err(format!("--kinds: unknown kind {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--max-size" => o.max_size = report::num(flag, value)?.clamp(1, 1000) as usize,
            "--pools" => {
                let names = [("livepool", Which::Livepool), ("deadpool", Which::Deadpool)];
                o.pools = report::pools(flag, value, &names)?;
            }
            "--livepool-statements" => {
                o.lp_task_map = choice(flag, value, [("cache", false), ("task-map", true)])?;
            }
            "--deadpool-queue" => {
                use deadpool::managed::QueueMode;
                o.dp_queue = choice(
                    flag,
                    value,
                    [("fifo", QueueMode::Fifo), ("lifo", QueueMode::Lifo)],
                )?;
            }
            _ => return o.turns.set(flag, value),
        }
        Ok(true)
    })?;
    if parsed
        .as_ref()
        .is_some_and(|o| o.tasks.is_empty() || o.kinds.is_empty() || o.pools.is_empty())
    {
        return Err("nothing to run".into());
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// The pools and one request through each
// ---------------------------------------------------------------------------------------------

struct Pools {
    lp: livepool_postgres::Pool,
    dp: deadpool_postgres::Pool,
    /// livepool `prepared` through per-task maps instead of `PgClient::prepare_cached`.
    lp_task_map: bool,
}

/// livepool-postgres: one checkout, one query, the return. The reply's value.
async fn lp_request(
    pool: &livepool_postgres::Pool,
    kind: Kind,
    task_map: bool,
    token: i64,
    statements: &mut HashMap<u64, Statement>,
    counts: &mut Counts,
) -> Result<i64, String> {
    let conn = pool.get().await.map_err(|e| describe(&e))?;
    let row = match kind {
        Kind::Unnamed => conn.query_typed_one(SQL, &[(&token, Type::INT8)]).await,
        Kind::Prepared if !task_map => {
            let stmt = conn.prepare_cached(SQL).await.map_err(|e| describe(&e))?;
            conn.query_one(&stmt, &[&token]).await
        }
        Kind::Prepared => {
            let stmt = match statements.get(&conn.id()) {
                Some(s) => s.clone(),
                None => {
                    counts.prepares += 1;
                    let s = conn.prepare(SQL).await.map_err(|e| describe(&e))?;
                    statements.insert(conn.id(), s.clone());
                    s
                }
            };
            conn.query_one(&stmt, &[&token]).await
        }
        Kind::PrepareEach => conn.query_one(SQL, &[&token]).await,
    }
    .map_err(|e| describe(&e))?;
    if !conn.is_idle() {
        counts.unclean += 1;
    }
    drop(conn);
    row.try_get::<_, i64>(0).map_err(|e| describe(&e))
}

/// deadpool-postgres: one checkout, one query, the return. The reply's value.
async fn dp_request(pool: &deadpool_postgres::Pool, kind: Kind, token: i64) -> Result<i64, String> {
    let client = pool.get().await.map_err(|e| describe(&e))?;
    let row = match kind {
        Kind::Unnamed => client.query_typed_one(SQL, &[(&token, Type::INT8)]).await,
        Kind::Prepared => {
            let stmt = client.prepare_cached(SQL).await.map_err(|e| describe(&e))?;
            client.query_one(&stmt, &[&token]).await
        }
        Kind::PrepareEach => client.query_one(SQL, &[&token]).await,
    }
    .map_err(|e| describe(&e))?;
    drop(client);
    row.try_get::<_, i64>(0).map_err(|e| describe(&e))
}

/// A task's result: its counts, its latencies (ns) and its statement map back.
struct TaskOut {
    counts: Counts,
    latencies: Vec<u64>,
    statements: HashMap<u64, Statement>,
    finished: Instant,
}

/// Requests in a closed loop until `end`.
async fn task(
    pools: Arc<Pools>,
    which: Which,
    kind: Kind,
    base: i64,
    end: Instant,
    mut statements: HashMap<u64, Statement>,
) -> TaskOut {
    let mut counts = Counts::default();
    let mut latencies = Vec::with_capacity(16 * 1024);
    let mut seq: i64 = 0;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        seq += 1;
        let token = base + seq;
        let res = match which {
            Which::Livepool => {
                lp_request(
                    &pools.lp,
                    kind,
                    pools.lp_task_map,
                    token,
                    &mut statements,
                    &mut counts,
                )
                .await
            }
            Which::Deadpool => dp_request(&pools.dp, kind, token).await,
        };
        latencies.push(start.elapsed().as_nanos() as u64);
        counts.requests += 1;
        match res {
            Ok(v) if v == token => {}
            Ok(_) => counts.wrong += 1,
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert(e);
            }
        }
    }
    TaskOut {
        counts,
        latencies,
        statements,
        finished: Instant::now(),
    }
}

// ---------------------------------------------------------------------------------------------
// Configurations, rounds and figures
// ---------------------------------------------------------------------------------------------

/// One configuration's record over the run.
struct Series {
    which: Which,
    tasks: usize,
    kind: Kind,
    rounds: Rounds,
    latencies: Vec<u64>,
    counts: Counts,
    /// livepool `prepared`: each task's statement map, kept across rounds.
    statements: Vec<HashMap<u64, Statement>>,
}

impl Series {
    /// The configuration, for messages.
    fn label(&self) -> String {
        format!(
            "{} N={} {}",
            self.which.name(),
            self.tasks,
            self.kind.name()
        )
    }
}

/// One configuration's turn of `length`; `measured` keeps its figures.
async fn turn(
    pools: &Arc<Pools>,
    s: &mut Series,
    index: usize,
    length: Duration,
    measured: bool,
) -> Result<(), String> {
    let start = Instant::now();
    let end = start + length;
    let mut handles = Vec::with_capacity(s.tasks);
    for t in 0..s.tasks {
        // Tokens differ between configurations, tasks and requests.
        let base = ((index as i64) << 48) | ((t as i64) << 32);
        let statements = std::mem::take(&mut s.statements[t]);
        handles.push(tokio::spawn(task(
            pools.clone(),
            s.which,
            s.kind,
            base,
            end,
            statements,
        )));
    }
    let mut finished = start;
    let mut counts = Counts::default();
    for (t, h) in handles.into_iter().enumerate() {
        let out = h.await.map_err(|e| format!("task: {e}"))?;
        s.statements[t] = out.statements;
        finished = finished.max(out.finished);
        if measured {
            s.latencies.extend_from_slice(&out.latencies);
        }
        counts.add(out.counts);
    }
    counts.any_succeeded(&s.label())?;
    if measured {
        s.rounds.push(counts.requests, finished - start);
        s.counts.add(counts);
    } else if let Some(e) = &counts.first_error {
        eprintln!(
            "  warm-up {}: {} errors, first: {e}",
            s.label(),
            counts.errors
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn build_pools(addr: SocketAddr, password: &str, o: &Options) -> Result<Pools, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(PG_USER)
        .password(password)
        .dbname("postgres")
        .host(addr.ip().to_string())
        .port(addr.port());
    let lp = livepool::Pool::builder(addr)
        .protocol(livepool_postgres::Postgres::new(config.clone()))
        .max_size(o.max_size)
        .build()
        .map_err(|e| format!("livepool build: {e}"))?;
    // The same `Config` type: deadpool-postgres and livepool-postgres share one tokio-postgres.
    let manager = deadpool_postgres::Manager::from_config(
        config,
        NoTls,
        deadpool_postgres::ManagerConfig::default(),
    );
    let dp = deadpool_postgres::Pool::builder(manager)
        .max_size(o.max_size)
        .queue_mode(o.dp_queue)
        .build()
        .map_err(|e| format!("deadpool-postgres build: {e}"))?;
    Ok(Pools {
        lp,
        dp,
        lp_task_map: o.lp_task_map,
    })
}

async fn run(o: Options) -> Result<bool, String> {
    let wall = Instant::now();
    eprintln!("starting a PostgreSQL cluster (initdb, pg_ctl start)");
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .map_err(|e| format!("postgres start thread: {e}"))??;
    let pools = Arc::new(build_pools(cluster.addr(), cluster.password(), &o)?);
    let server_version = {
        let c = pools.dp.get().await.map_err(|e| describe(&e))?;
        let row = c
            .query_one("SHOW server_version", &[])
            .await
            .map_err(|e| describe(&e))?;
        row.get::<_, String>(0)
    };

    // Configurations in turn order: per (N, kind), livepool then deadpool.
    let mut series = Vec::new();
    for &tasks in &o.tasks {
        for &kind in &o.kinds {
            for &which in &o.pools {
                series.push(Series {
                    which,
                    tasks,
                    kind,
                    rounds: Rounds::default(),
                    latencies: Vec::new(),
                    counts: Counts::default(),
                    statements: (0..tasks).map(|_| HashMap::new()).collect(),
                });
            }
        }
    }

    eprintln!(
        "warm-up: {} configurations × {:?}",
        series.len(),
        o.turns.warmup
    );
    for (i, s) in series.iter_mut().enumerate() {
        turn(&pools, s, i, o.turns.warmup, false).await?;
    }
    // The pools of one (N, kind) back to back: livepool first in even rounds, deadpool first
    // in odd ones.
    let orders = permutations(o.pools.len());
    for r in 0..o.turns.rounds {
        eprintln!("round {}/{}", r + 1, o.turns.rounds);
        for i in rounds::round(series.len(), &orders[r % orders.len()]) {
            turn(&pools, &mut series[i], i, o.turns.round, true).await?;
        }
    }
    let lp_stats = pools.lp.statistics();
    let dp_status = pools.dp.status();

    // Figures.
    let mut rows = Vec::new();
    let mut wrong = 0;
    for s in series.iter_mut() {
        s.latencies.sort_unstable();
        wrong += s.counts.wrong;
        let config = vec![
            s.which.name().to_string(),
            s.tasks.to_string(),
            s.kind.name().to_string(),
        ];
        let counted = vec![
            match (s.which, s.kind) {
                (Which::Livepool, Kind::Prepared) if o.lp_task_map => s.counts.prepares.to_string(),
                _ => "–".to_string(),
            },
            match s.which {
                Which::Livepool => s.counts.unclean.to_string(),
                Which::Deadpool => "–".to_string(),
            },
        ];
        rows.push([config, figures(&s.rounds, &s.latencies, &s.counts), counted].concat());
    }
    let mut ratios = Vec::new();
    for pair in series.chunks(2).filter(|_| o.pools.len() == 2) {
        let (lp, dp) = (&pair[0], &pair[1]);
        let (mid, range) = ratio_stats(lp.rounds.ratios(&dp.rounds));
        ratios.push(vec![
            lp.tasks.to_string(),
            lp.kind.name().to_string(),
            fmt_ratio(mid),
            range,
            fmt_ratio(lp.rounds.overall_rate() / dp.rounds.overall_rate()),
            latency_ratio(&lp.latencies, &dp.latencies, 0.50),
            latency_ratio(&lp.latencies, &dp.latencies, 0.99),
        ]);
    }

    println!("## PostgreSQL throughput: livepool-postgres vs deadpool-postgres\n");
    println!(
        "livepool {}; PostgreSQL {server_version}; tokio-postgres shared by both pools; \
         max_size {} each, deadpool's queue mode {:?}, livepool's `prepared` through {}; \
         {} rounds × {:?} per configuration after a {:?} warm-up each; {}.\n",
        livepool_commit(&["src", "Cargo.toml", "livepool-postgres"]),
        o.max_size,
        o.dp_queue,
        if o.lp_task_map {
            "per-task maps"
        } else {
            "PgClient::prepare_cached"
        },
        o.turns.rounds,
        o.turns.round,
        o.turns.warmup,
        threads(),
    );
    let header = [
        &["pool", "tasks", "statement"][..],
        &FIGURES,
        &["prepares", "unclean returns"],
    ]
    .concat();
    print!("{}", markdown(&header, &rows, 3));
    println!();
    let header = [
        "tasks",
        "statement",
        "throughput lp/dp (median of round pairs)",
        "range over rounds",
        "overall",
        "p50 lp/dp",
        "p99 lp/dp",
    ];
    if !ratios.is_empty() {
        print!("{}", markdown(&header, &ratios, 2));
        println!();
    }
    println!(
        "- livepool-postgres: {} connections opened, {} connect errors, {} checkouts, {} \
         heartbeats; deadpool-postgres: {} connections in the pool at the end.",
        lp_stats.created,
        lp_stats.connect_errors,
        lp_stats.checkouts,
        lp_stats.heartbeats,
        dp_status.size
    );
    for s in &series {
        if let Some(e) = &s.counts.first_error {
            println!("- {}: {} errors, first: {e}", s.label(), s.counts.errors);
        }
    }
    println!("\nTotal wall time: {:.1} s", wall.elapsed().as_secs_f64());
    pools.lp.close();
    pools.dp.close();
    drop(cluster);
    Ok(wrong == 0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::main(parse_options(), USAGE, run, "wrong replies (see the table)").await
}
