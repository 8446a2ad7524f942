//! Throughput and latency of a `GET` of a small value through livepool-redis next to
//! deadpool-redis and bb8-redis, against one real `redis-server`.
//!
//! The program starts a `redis-server` on a free port of 127.0.0.1 (no persistence; see
//! `servers.rs`), stores `--keys` distinct keys (`redisbench:<i>`, default 1024), each holding
//! a value unique to it (`--value-bytes`, default 16: the key's index in hex, then filler), and
//! builds three pools against it, each with its documented defaults plus `max_size` 16:
//!
//! - livepool-redis: `livepool::Pool::builder(addr).protocol(Redis::new(RedisConfig::new()))
//!   .max_size(16).build()`; `get()` checks the socket with a `recv(MSG_PEEK)` (no command),
//!   the connection is the crate's own `RedisConnection` (request/reply on the pooled socket);
//! - deadpool-redis: `Config::from_url(url)` with `pool = Some(PoolConfig::new(16))`, then
//!   `create_pool(Some(Runtime::Tokio1))`; each `get()` of an existing connection recycles it
//!   with a pipelined `UNWATCH` + `PING <n>` (one round trip, always: deadpool-redis has no
//!   setting for it); the connection is the redis crate's `MultiplexedConnection`;
//! - bb8-redis 0.26 (`bb8_redis::RedisConnectionManager`, which depends on redis 1.x and so
//!   shares the redis 1.8 of the other two; its `bb8` re-export, 0.9, is the pool):
//!   `bb8::Pool::builder().max_size(16).build(RedisConnectionManager::new(url)?)`; bb8's
//!   default `test_on_check_out(true)` sends a `PING` in every `get()` (one round trip;
//!   `--bb8-test-on-check-out off` drops it); the connection is a `MultiplexedConnection`.
//!
//! All three use one copy of the redis crate (checked at compile time below: a value of one
//! crate's `redis::Value` type is passed as the others'), and every request is the same call,
//! `AsyncCommands::get::<_, Option<Vec<u8>>>(&key)`, built by the same code.
//!
//! # The workload
//!
//! N tasks (default N = 1 and N = 16) in a closed loop, each request: `get()`, one `GET` of
//! the key chosen by a per-task counter (task `t` of N starts at key `t * keys / N` and walks
//! on by one), the connection dropped (returned). The reply must equal that key's value (a
//! different value or a nil counts as *wrong*; there must be none). A request's latency runs
//! from before `get()` to after the return.
//!
//! The pools differ in what `get()` costs: deadpool-redis and bb8-redis (with their defaults)
//! make a round trip to the server in every `get()` (`UNWATCH` + `PING`, or `PING`), so a
//! request is two round trips there and one with livepool-redis. That is what their documented
//! defaults do and what the comparison is about; `--bb8-test-on-check-out off` shows bb8
//! without it. They also differ in which idle connection `get()` hands out: livepool the most
//! recently returned one, deadpool-redis and bb8 (both FIFO by default) the least recently
//! returned one, so with N = 1 and 16 connections open those two cycle through all 16
//! (`--peer-queue lifo` runs both LIFO). livepool's idle watch (on by default) is armed on an
//! idle member's socket, so a request's reply wakes it and the return wakes it again
//! (`--livepool-idle-watch off` shows livepool without it).
//!
//! # Rows in turns
//!
//! A configuration is (pool, N). After a warm-up of every configuration (default 0.5 s each:
//! connections opened), the measurement runs in rounds (default 12 rounds of 1 s per
//! configuration): in each round, for each N, the three pools run back to back, in an order
//! that cycles through all six permutations (round r uses permutation r mod 6), so that each
//! pool runs first, second and third equally often and before each other pool in half the
//! rounds (with a multiple of 6 rounds, as the default 12), and noise from the machine hits all three alike. All pools stay up for the whole
//! run; only one runs traffic at a time.
//!
//! Per configuration: requests/s (median of the rounds, and all requests over all measured
//! time), p50/p99/p99.9 of the request latency over all measured requests, wrong replies,
//! errors. Then, per N, livepool against each peer: throughput (the median of the per-round
//! ratios, each round's runs back to back, and its range), the overall ratio, p50 and p99;
//! and livepool against the best peer (the per-round ratio to whichever peer was faster in
//! that round; its median against the 0.95 target). With the defaults (6 configurations)
//! the run takes about 75 s plus the build. Progress goes to stderr, the tables (Markdown) to stdout.
//! `--pools livepool` (or `deadpool`, `bb8`) runs one pool alone, for a profiler.
//!
//! ```sh
//! cargo run --release --manifest-path compare/Cargo.toml --bin redisbench
//! cargo run --release --manifest-path compare/Cargo.toml --bin redisbench -- --help
//! ```
//!
//! Needs `redis-server` on PATH. Traffic stays on 127.0.0.1; the server and its temp dir are
//! removed on exit, also after an error or Ctrl-C.

mod report;
mod rounds;
// Shared with `restart`, which uses the restarts and the PostgreSQL cluster as well.
#[allow(dead_code)]
mod servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bb8_redis::bb8;
use livepool_redis::redis::{self, AsyncCommands};

use report::{
    choice, describe, fmt_ratio, latency_ratio, livepool_commit, markdown, percentile_us,
    ratio_stats, threads,
};
use rounds::{Counts, FIGURES, Rounds, Turns, figures, permutations};
use servers::RedisServer;

const USAGE: &str = "\
Throughput and latency of a GET of a small value: livepool-redis next to deadpool-redis
and bb8-redis.

USAGE: redisbench [OPTIONS]

  --tasks LIST      concurrent tasks per configuration, comma-separated (default 1,16)
  --rounds N        measured rounds (default 12; the pools' order cycles through all
                    permutations, 6 for three pools)
  --round-ms MS     length of one configuration's turn in a round (default 1000)
  --warmup-ms MS    warm-up per configuration before the rounds (default 500)
  --max-size N      max_size of every pool (default 16)
  --keys N          distinct keys stored and read (default 1024)
  --value-bytes N   length of each value, at least 8 (default 16)
  --peer-queue fifo|lifo
                    deadpool-redis's QueueMode and bb8's QueueStrategy (default fifo,
                    both their defaults; livepool hands out the most recently returned
                    connection first, like lifo)
  --bb8-test-on-check-out on|off
                    bb8's PING in every get() (default on, its default)
  --livepool-idle-watch on|off
                    livepool's idle watch (default on, its default; off is for finding
                    out what it costs per request)
  --pools LIST      livepool,deadpool,bb8 (default all three; fewer is for profiling,
                    the ratio tables need livepool and a peer)
  -h, --help        this text
";

/// The three crates share one redis crate: these compile only if their `redis::Value` is
/// one type.
const _: fn(redis::Value) -> (deadpool_redis::redis::Value, bb8_redis::redis::Value) =
    |v| (v.clone(), v);

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Livepool,
    Deadpool,
    Bb8,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Livepool => "livepool-redis",
            Which::Deadpool => "deadpool-redis",
            Which::Bb8 => "bb8-redis",
        }
    }
}

struct Options {
    tasks: Vec<usize>,
    turns: Turns,
    max_size: usize,
    keys: usize,
    value_bytes: usize,
    peer_lifo: bool,
    bb8_test: bool,
    lp_idle_watch: bool,
    pools: Vec<Which>,
}

fn parse_options() -> Result<Option<Options>, String> {
    let defaults = Options {
        tasks: vec![1, 16],
        turns: Turns::new(12, 1000, 500),
        max_size: 16,
        keys: 1024,
        value_bytes: 16,
        peer_lifo: false,
        bb8_test: true,
        lp_idle_watch: true,
        pools: vec![Which::Livepool, Which::Deadpool, Which::Bb8],
    };
    let on_off = [("on", true), ("off", false)];
    let parsed = report::options(defaults, |o, flag, value| {
        match flag {
            "--tasks" => o.tasks = rounds::tasks(flag, value, 1024)?,
            "--max-size" => o.max_size = report::num(flag, value)?.clamp(1, 1000) as usize,
            "--keys" => o.keys = report::num(flag, value)?.clamp(1, 10_000_000) as usize,
            "--value-bytes" => o.value_bytes = report::num(flag, value)?.clamp(8, 1 << 20) as usize,
            "--peer-queue" => o.peer_lifo = choice(flag, value, [("fifo", false), ("lifo", true)])?,
            "--bb8-test-on-check-out" => o.bb8_test = choice(flag, value, on_off)?,
            "--livepool-idle-watch" => o.lp_idle_watch = choice(flag, value, on_off)?,
            "--pools" => {
                let names = [
                    ("livepool", Which::Livepool),
                    ("deadpool", Which::Deadpool),
                    ("bb8", Which::Bb8),
                ];
                o.pools = report::pools(flag, value, &names)?;
            }
            _ => return o.turns.set(flag, value),
        }
        Ok(true)
    })?;
    if parsed
        .as_ref()
        .is_some_and(|o| o.tasks.is_empty() || o.pools.is_empty())
    {
        return Err("nothing to run".into());
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// The pools and one request through each
// ---------------------------------------------------------------------------------------------

type Bb8Pool = bb8::Pool<bb8_redis::RedisConnectionManager>;

struct Pools {
    lp: livepool_redis::Pool,
    dp: deadpool_redis::Pool,
    bb: Bb8Pool,
    /// Key `i` and the value stored under it.
    keys: Vec<String>,
    values: Vec<Vec<u8>>,
}

/// One checkout, one `GET`, the return: the reply.
async fn request(pools: &Pools, which: Which, key: &str) -> Result<Option<Vec<u8>>, String> {
    match which {
        Which::Livepool => {
            let mut conn = pools.lp.get().await.map_err(|e| describe(&e))?;
            let v = conn.get(key).await.map_err(|e| describe(&e));
            drop(conn);
            v
        }
        Which::Deadpool => {
            let mut conn = pools.dp.get().await.map_err(|e| describe(&e))?;
            let v = conn.get(key).await.map_err(|e| describe(&e));
            drop(conn);
            v
        }
        Which::Bb8 => {
            let mut conn = pools.bb.get().await.map_err(|e| describe(&e))?;
            let v = conn.get(key).await.map_err(|e| describe(&e));
            drop(conn);
            v
        }
    }
}

/// A task's result: its counts and its latencies (ns).
struct TaskOut {
    counts: Counts,
    latencies: Vec<u64>,
    finished: Instant,
}

/// Requests in a closed loop until `end`, over the keys from `first` on.
async fn task(pools: Arc<Pools>, which: Which, first: usize, end: Instant) -> TaskOut {
    let mut counts = Counts::default();
    let mut latencies = Vec::with_capacity(16 * 1024);
    let n = pools.keys.len();
    let mut i = first % n;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let res = request(&pools, which, &pools.keys[i]).await;
        latencies.push(start.elapsed().as_nanos() as u64);
        counts.requests += 1;
        match res {
            Ok(Some(v)) if v == pools.values[i] => {}
            Ok(other) => {
                counts.wrong += 1;
                counts.first_wrong.get_or_insert_with(|| {
                    format!(
                        "{}: {:?} instead of {:?}",
                        pools.keys[i],
                        other.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        String::from_utf8_lossy(&pools.values[i])
                    )
                });
            }
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert(e);
            }
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    TaskOut {
        counts,
        latencies,
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
    rounds: Rounds,
    latencies: Vec<u64>,
    counts: Counts,
}

impl Series {
    /// The configuration, for messages.
    fn label(&self) -> String {
        format!("{} N={}", self.which.name(), self.tasks)
    }
}

/// One configuration's turn of `length`; `measured` keeps its figures.
async fn turn(
    pools: &Arc<Pools>,
    s: &mut Series,
    length: Duration,
    measured: bool,
) -> Result<(), String> {
    let start = Instant::now();
    let end = start + length;
    let keys = pools.keys.len();
    let handles: Vec<_> = (0..s.tasks)
        .map(|t| tokio::spawn(task(pools.clone(), s.which, t * keys / s.tasks, end)))
        .collect();
    let mut finished = start;
    let mut counts = Counts::default();
    for h in handles {
        let out = h.await.map_err(|e| format!("task: {e}"))?;
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
    } else if counts.errors + counts.wrong > 0 {
        eprintln!(
            "  warm-up {}: {} errors, {} wrong; first error: {}; first wrong: {}",
            s.label(),
            counts.errors,
            counts.wrong,
            counts.first_error.as_deref().unwrap_or("–"),
            counts.first_wrong.as_deref().unwrap_or("–"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

/// Value `i`: its index in hex, then filler up to `len` bytes; unique per key.
fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("{i:08x}").into_bytes();
    let filler = b"-livepool-redisbench";
    while v.len() < len {
        v.push(filler[v.len() % filler.len()]);
    }
    v.truncate(len.max(8));
    v
}

async fn build_pools(addr: SocketAddr, o: &Options) -> Result<Pools, String> {
    let url = format!("redis://{addr}/");
    let lp = livepool::Pool::builder(addr)
        .protocol(livepool_redis::Redis::new(
            livepool_redis::RedisConfig::new(),
        ))
        .max_size(o.max_size)
        .idle_watch(o.lp_idle_watch)
        .build()
        .map_err(|e| format!("livepool build: {e}"))?;
    let mut cfg = deadpool_redis::Config::from_url(url.clone());
    let mut pool_cfg = deadpool_redis::PoolConfig::new(o.max_size);
    if o.peer_lifo {
        pool_cfg.queue_mode = deadpool_redis::QueueMode::Lifo;
    }
    cfg.pool = Some(pool_cfg);
    let dp = cfg
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .map_err(|e| format!("deadpool-redis build: {}", describe(&e)))?;
    let manager = bb8_redis::RedisConnectionManager::new(url.as_str())
        .map_err(|e| format!("bb8-redis manager: {}", describe(&e)))?;
    let bb = bb8::Pool::builder()
        .max_size(o.max_size as u32)
        .test_on_check_out(o.bb8_test)
        .queue_strategy(if o.peer_lifo {
            bb8::QueueStrategy::Lifo
        } else {
            bb8::QueueStrategy::Fifo
        })
        .build(manager)
        .await
        .map_err(|e| format!("bb8 build: {}", describe(&e)))?;
    Ok(Pools {
        lp,
        dp,
        bb,
        keys: (0..o.keys).map(|i| format!("redisbench:{i}")).collect(),
        values: (0..o.keys).map(|i| value(i, o.value_bytes)).collect(),
    })
}

/// Stores every key's value (through livepool, in pipelines of 1000 `SET`s) and checks the
/// count; the server's version.
async fn load(pools: &Pools) -> Result<String, String> {
    let mut conn = pools.lp.get().await.map_err(|e| describe(&e))?;
    for (keys, values) in pools.keys.chunks(1000).zip(pools.values.chunks(1000)) {
        let mut pipe = redis::pipe();
        for (k, v) in keys.iter().zip(values) {
            pipe.set(k, v.as_slice()).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| format!("SET: {}", describe(&e)))?;
    }
    let size: usize = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("DBSIZE: {}", describe(&e)))?;
    if size != pools.keys.len() {
        return Err(format!(
            "DBSIZE says {size} keys after storing {}",
            pools.keys.len()
        ));
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("INFO: {}", describe(&e)))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string())
}

async fn run(o: Options) -> Result<bool, String> {
    let wall = Instant::now();
    eprintln!("starting redis-server");
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .map_err(|e| format!("redis-server start thread: {e}"))??;
    let pools = Arc::new(build_pools(server.addr(), &o).await?);
    let server_version = load(&pools).await?;
    eprintln!(
        "redis-server {server_version} on {}: {} keys of {} bytes stored",
        server.addr(),
        o.keys,
        o.value_bytes
    );

    // Configurations in turn order: per N, the pools in `--pools` order.
    let mut series = Vec::new();
    for &tasks in &o.tasks {
        for &which in &o.pools {
            series.push(Series {
                which,
                tasks,
                rounds: Rounds::default(),
                latencies: Vec::new(),
                counts: Counts::default(),
            });
        }
    }
    let k = o.pools.len();
    let orders = permutations(k);

    eprintln!(
        "warm-up: {} configurations × {:?}",
        series.len(),
        o.turns.warmup
    );
    for s in series.iter_mut() {
        turn(&pools, s, o.turns.warmup, false).await?;
    }
    for r in 0..o.turns.rounds {
        let order = &orders[r % orders.len()];
        eprintln!(
            "round {}/{} ({})",
            r + 1,
            o.turns.rounds,
            order
                .iter()
                .map(|&j| o.pools[j].name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for i in rounds::round(series.len(), order) {
            turn(&pools, &mut series[i], o.turns.round, true).await?;
        }
    }
    let lp_stats = pools.lp.statistics();
    let dp_status = pools.dp.status();
    let bb_state = pools.bb.state();

    // Figures.
    let mut rows = Vec::new();
    let mut wrong = 0;
    for s in series.iter_mut() {
        s.latencies.sort_unstable();
        wrong += s.counts.wrong;
        let config = vec![s.which.name().to_string(), s.tasks.to_string()];
        rows.push([config, figures(&s.rounds, &s.latencies, &s.counts)].concat());
    }

    // Ratios: livepool against each peer, and against the faster peer of each round.
    let mut ratios = Vec::new();
    let mut verdicts = Vec::new();
    let lp_at = o.pools.iter().position(|&w| w == Which::Livepool);
    for group in series.chunks(k) {
        let Some(lp) = lp_at.map(|i| &group[i]) else {
            break;
        };
        let peers: Vec<&Series> = group
            .iter()
            .filter(|s| s.which != Which::Livepool)
            .collect();
        if peers.is_empty() {
            break;
        }
        for peer in &peers {
            let (mid, range) = ratio_stats(lp.rounds.ratios(&peer.rounds));
            ratios.push(vec![
                lp.tasks.to_string(),
                peer.which.name().to_string(),
                fmt_ratio(mid),
                range,
                fmt_ratio(lp.rounds.overall_rate() / peer.rounds.overall_rate()),
                latency_ratio(&lp.latencies, &peer.latencies, 0.50),
                latency_ratio(&lp.latencies, &peer.latencies, 0.99),
            ]);
        }
        // The faster peer of each round, and how often each one was.
        let mut best_count = vec![0usize; peers.len()];
        let per_round: Vec<f64> = (0..lp.rounds.len())
            .map(|r| {
                let (b, rate) = peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i, p.rounds.rate(r)))
                    .fold((0, f64::NEG_INFINITY), |a, x| if x.1 > a.1 { x } else { a });
                best_count[b] += 1;
                lp.rounds.rate(r) / rate
            })
            .collect();
        let (mid, range) = ratio_stats(per_round);
        let best_median = peers
            .iter()
            .max_by(|a, b| a.rounds.median_rate().total_cmp(&b.rounds.median_rate()))
            .expect("a peer");
        let best_overall = peers
            .iter()
            .max_by(|a, b| a.rounds.overall_rate().total_cmp(&b.rounds.overall_rate()))
            .expect("a peer");
        let faster: Vec<String> = peers
            .iter()
            .zip(&best_count)
            .map(|(p, n)| format!("{} {n}", p.which.name()))
            .collect();
        // livepool's latency at `q` against the lowest of the peers'.
        let to_best = |q| {
            let best = peers
                .iter()
                .map(|p| percentile_us(&p.latencies, q))
                .fold(f64::INFINITY, f64::min);
            fmt_ratio(percentile_us(&lp.latencies, q) / best)
        };
        ratios.push(vec![
            lp.tasks.to_string(),
            format!("best peer per round ({})", faster.join(", ")),
            fmt_ratio(mid),
            range.clone(),
            fmt_ratio(lp.rounds.overall_rate() / best_overall.rounds.overall_rate()),
            to_best(0.50),
            to_best(0.99),
        ]);
        verdicts.push(format!(
            "- {} task{}: livepool-redis at {:.3}× the faster peer of each round (median; \
             {range}); the faster by median req/s is {} ({:.0} req/s, livepool {:.0}): {} \
             the 0.95× target.",
            lp.tasks,
            if lp.tasks == 1 { "" } else { "s" },
            mid,
            best_median.which.name(),
            best_median.rounds.median_rate(),
            lp.rounds.median_rate(),
            if mid >= 0.95 { "meets" } else { "misses" },
        ));
    }

    println!("## Redis: GET through livepool-redis, deadpool-redis and bb8-redis\n");
    println!(
        "livepool {}; redis-server {server_version}; one redis crate (1.x) shared by all \
         three; {} keys of {} bytes; max_size {} each, livepool idle_watch {}, deadpool-redis \
         and bb8 queues {}, bb8 test_on_check_out {}; {} rounds × {:?} per configuration after a {:?} warm-up \
         each; {}.\n",
        livepool_commit(&["src", "Cargo.toml", "livepool-redis"]),
        o.keys,
        o.value_bytes,
        o.max_size,
        o.lp_idle_watch,
        if o.peer_lifo { "LIFO" } else { "FIFO" },
        o.bb8_test,
        o.turns.rounds,
        o.turns.round,
        o.turns.warmup,
        threads(),
    );
    let header = [&["pool", "tasks"][..], &FIGURES].concat();
    print!("{}", markdown(&header, &rows, 2));
    println!();
    if !ratios.is_empty() {
        let header = [
            "tasks",
            "livepool-redis against",
            "throughput lp/peer (median of rounds)",
            "range over rounds",
            "overall",
            "p50 lp/peer",
            "p99 lp/peer",
        ];
        print!("{}", markdown(&header, &ratios, 2));
        println!();
        for v in &verdicts {
            println!("{v}");
        }
        println!();
    }
    let pool_lines: Vec<String> = o
        .pools
        .iter()
        .map(|w| match w {
            Which::Livepool => format!(
                "livepool-redis: {} connections opened, {} connect errors, {} checkouts, {} \
                 heartbeats, {} evicted",
                lp_stats.created,
                lp_stats.connect_errors,
                lp_stats.checkouts,
                lp_stats.heartbeats,
                lp_stats.evicted_total()
            ),
            Which::Deadpool => format!(
                "deadpool-redis: {} connections in the pool at the end",
                dp_status.size
            ),
            Which::Bb8 => format!(
                "bb8-redis: {} connections at the end, {} opened, {} closed as broken or invalid",
                bb_state.connections,
                bb_state.statistics.connections_created,
                bb_state.statistics.connections_closed_broken
                    + bb_state.statistics.connections_closed_invalid
            ),
        })
        .collect();
    println!("- {}.", pool_lines.join("; "));
    for s in &series {
        if let Some(e) = &s.counts.first_error {
            println!("- {}: {} errors, first: {e}", s.label(), s.counts.errors);
        }
        if let Some(w) = &s.counts.first_wrong {
            println!("- {}: {} wrong, first: {w}", s.label(), s.counts.wrong);
        }
    }
    println!("\nTotal wall time: {:.1} s", wall.elapsed().as_secs_f64());
    pools.lp.close();
    pools.dp.close();
    drop(pools);
    drop(server);
    Ok(wrong == 0)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::main(parse_options(), USAGE, run, "wrong replies (see the table)").await
}
