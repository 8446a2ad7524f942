//! The redis crate's typed API on a livepool pool (`livepool_redis`), with the protocol's
//! `PING` heartbeat keeping idle connections checked.
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run -p livepool-redis --example redis                  # 127.0.0.1:6379
//! cargo run -p livepool-redis --example redis -- 127.0.0.1:6380
//! ```
//!
//! It runs a few commands (`PING`, `SET`, `GET`, and concurrent `INCR`s through a small pool)
//! and prints the pool's status and statistics. Without a server it says so and exits with
//! status 1.
//!
//! The pool keeps its rules without help from the caller: a connection goes back only as it
//! was set up (every reply read, no `MULTI`, `WATCH` or `SELECT` left behind), and one that
//! failed is closed instead.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use livepool_redis::redis::{self, AsyncCommands};
use livepool_redis::{Pool, Redis, RedisConfig};

#[derive(Debug)]
enum Error {
    /// `get()` failed: no connection (server down, breaker open, pool exhausted).
    Pool(livepool::Error),
    /// The command failed: an error reply, I/O, or a reply of another type than asked for.
    Redis(redis::RedisError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Pool(e) => write!(f, "no connection: {e}"),
            Error::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Pool(e) => Some(e),
            Error::Redis(e) => Some(e),
        }
    }
}

impl From<livepool::Error> for Error {
    fn from(e: livepool::Error) -> Self {
        Error::Pool(e)
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Redis(e)
    }
}

fn pool(addr: &str) -> Result<Pool, livepool::BuildError> {
    livepool::Pool::builder(addr)
        .protocol(Redis::new(RedisConfig::new()))
        .max_size(8)
        .min_idle(1)
        .connect_timeout(Some(Duration::from_secs(2)))
        .wait_timeout(Some(Duration::from_secs(5)))
        .heartbeat_interval(Duration::from_secs(10))
        .heartbeat_timeout(Duration::from_secs(1))
        .build()
}

async fn ping(pool: &Pool) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply to PING",
            pong,
        ))))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6379".to_string());
    let pool = match pool(&addr) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bad configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = ping(&pool).await {
        eprintln!("cannot reach redis at {addr}: {e}");
        let port = addr.rsplit(':').next().unwrap_or("6379");
        eprintln!("is a server running? start one with:  redis-server --port {port} &");
        return ExitCode::FAILURE;
    }
    match run(&pool).await {
        Ok(()) => {
            print_stats(&pool);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error talking to redis at {addr}: {e}");
            print_stats(&pool);
            ExitCode::FAILURE
        }
    }
}

async fn run(pool: &Pool) -> Result<(), Error> {
    println!("PING -> PONG");

    let mut conn = pool.get().await?;
    let () = conn.set("livepool:example", "hello from livepool").await?;
    let value: Option<String> = conn.get("livepool:example").await?;
    println!("GET livepool:example -> {value:?}");
    let missing: Option<String> = conn.get("livepool:missing").await?;
    println!("GET livepool:missing -> {missing:?}");
    let () = conn.set("livepool:counter", 0).await?;
    // Back to the pool before the tasks need it.
    drop(conn);

    // 32 tasks share the pool of 8 connections, one checkout per INCR.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for _ in 0..25 {
                let mut conn = pool.get().await?;
                let _: i64 = conn.incr("livepool:counter", 1).await?;
            }
            Ok::<(), Error>(())
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("INCR task panicked")?;
    }
    let mut conn = pool.get().await?;
    let counter: i64 = conn.get("livepool:counter").await?;
    println!("32 tasks x 25 INCR -> counter = {counter}");
    Ok(())
}

fn print_stats(pool: &Pool) {
    let status = pool.status();
    let stats = pool.statistics();
    println!();
    println!(
        "pool: {} open ({} idle, {} in use) of max {}, breaker {}",
        status.size, status.idle, status.in_use, status.max_size, status.breaker
    );
    println!(
        "stats: {} created, {} checkouts, {} connect errors, {} evicted",
        stats.created,
        stats.checkouts,
        stats.connect_errors,
        stats.evicted_total()
    );
    for (reason, n) in stats.evictions() {
        println!("  evicted {reason}: {n}");
    }
}
