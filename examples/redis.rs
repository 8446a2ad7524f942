//! A tiny Redis client on top of livepool: RESP over pooled connections, with the built-in
//! `PING` heartbeat keeping idle connections checked.
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --example redis                  # 127.0.0.1:6379
//! cargo run --example redis -- 127.0.0.1:6380
//! ```
//!
//! It runs a few commands (`PING`, `SET`, `GET`, and concurrent `INCR`s through a small pool)
//! and prints the pool's status and statistics. Without a server it says so and exits with
//! status 1.
//!
//! The client keeps the pool's rules: it reads each reply to the end before the connection
//! goes back, and marks the connection broken when the bytes it reads are not a RESP reply.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use livepool::{Pool, RedisHeartbeat};

#[path = "common/resp.rs"]
mod resp;
use resp::{Reply, RespError};

#[derive(Debug)]
enum RedisError {
    /// `get()` failed: no connection (server down, breaker open, pool exhausted).
    Pool(livepool::Error),
    /// I/O failed, or the bytes were not RESP.
    Resp(RespError),
    /// The server sent something that is not what the command expects.
    Protocol(String),
    /// The server answered with an error reply (`-ERR ...`).
    Server(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Pool(e) => write!(f, "no connection: {e}"),
            RedisError::Resp(e) => write!(f, "{e}"),
            RedisError::Protocol(e) => write!(f, "protocol error: {e}"),
            RedisError::Server(e) => write!(f, "redis error: {e}"),
        }
    }
}

impl StdError for RedisError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            RedisError::Pool(e) => Some(e),
            RedisError::Resp(e) => Some(e),
            _ => None,
        }
    }
}

/// A Redis client: one pool of connections to one server.
#[derive(Clone, Debug)]
struct Redis {
    pool: Pool,
}

impl Redis {
    fn new(addr: &str) -> Result<Redis, livepool::BuildError> {
        let pool = Pool::builder(addr)
            .max_size(8)
            .min_idle(1)
            .connect_timeout(Some(Duration::from_secs(2)))
            .wait_timeout(Some(Duration::from_secs(5)))
            .heartbeat(RedisHeartbeat)
            .heartbeat_interval(Duration::from_secs(10))
            .heartbeat_timeout(Duration::from_secs(1))
            .build()?;
        Ok(Redis { pool })
    }

    /// Runs one command on a pooled connection and returns its reply.
    async fn command(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut conn = self.pool.get().await.map_err(RedisError::Pool)?;
        let reply = resp::roundtrip(&mut conn, args).await;
        if matches!(reply, Err(RespError::Protocol(_) | RespError::Eof)) {
            // Out of step with the server: never let the next caller read the rest.
            conn.mark_broken();
        }
        match reply.map_err(RedisError::Resp)? {
            Reply::Error(e) => Err(RedisError::Server(e)),
            r => Ok(r),
        }
    }

    async fn ping(&self) -> Result<(), RedisError> {
        match self.command(&[b"PING"]).await? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), RedisError> {
        match self.command(&[b"SET", key.as_bytes(), value]).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(unexpected("SET", &other)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        match self.command(&[b"GET", key.as_bytes()]).await? {
            Reply::Bulk(v) => Ok(v),
            other => Err(unexpected("GET", &other)),
        }
    }

    async fn incr(&self, key: &str) -> Result<i64, RedisError> {
        match self.command(&[b"INCR", key.as_bytes()]).await? {
            Reply::Int(n) => Ok(n),
            other => Err(unexpected("INCR", &other)),
        }
    }
}

fn unexpected(cmd: &str, reply: &Reply) -> RedisError {
    RedisError::Protocol(format!("unexpected reply to {cmd}: {reply:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6379".to_string());
    let redis = match Redis::new(&addr) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bad configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = redis.ping().await {
        eprintln!("cannot reach redis at {addr}: {e}");
        let port = addr.rsplit(':').next().unwrap_or("6379");
        eprintln!("is a server running? start one with:  redis-server --port {port} &");
        return ExitCode::FAILURE;
    }
    match run(&redis).await {
        Ok(()) => {
            print_stats(&redis.pool);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error talking to redis at {addr}: {e}");
            print_stats(&redis.pool);
            ExitCode::FAILURE
        }
    }
}

async fn run(redis: &Redis) -> Result<(), RedisError> {
    println!("PING -> PONG");

    redis
        .set("livepool:example", b"hello from livepool")
        .await?;
    let value = redis.get("livepool:example").await?;
    println!(
        "GET livepool:example -> {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    println!(
        "GET livepool:missing -> {:?}",
        redis.get("livepool:missing").await?
    );

    // 32 tasks share the pool of 8 connections.
    redis.set("livepool:counter", b"0").await?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let redis = redis.clone();
        tasks.spawn(async move {
            for _ in 0..25 {
                redis.incr("livepool:counter").await?;
            }
            Ok::<(), RedisError>(())
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("INCR task panicked")?;
    }
    let counter = redis.get("livepool:counter").await?;
    println!(
        "32 tasks x 25 INCR -> counter = {}",
        counter
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
    );
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
