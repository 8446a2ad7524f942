//! The [redis](https://docs.rs/redis) crate's typed API on [livepool]: a pool that never hands
//! out a dead connection, evicts a killed idle connection without waiting for a checkout,
//! brings a connection back after a cancelled command without reconnecting, and never lets
//! one caller's `WATCH`, `SELECT` or transaction reach the next.
//!
//! ```no_run
//! use livepool_redis::{Pool, Redis, RedisConfig, redis::AsyncCommands};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool: Pool = livepool::Pool::builder("127.0.0.1:6379")
//!     .protocol(Redis::new(RedisConfig::new().password("s3cret").db(2)))
//!     .max_size(16)
//!     .build()?;
//! let mut conn = pool.get().await?;
//! let _: () = conn.set("greeting", "hello").await?;
//! let greeting: String = conn.get("greeting").await?;
//! let (a, b): (i64, i64) = redis::pipe()
//!     .atomic()
//!     .incr("a", 1)
//!     .incr("b", 2)
//!     .query_async(&mut conn)
//!     .await?;
//! # let _ = (greeting, a, b);
//! # Ok(()) }
//! ```
//!
//! The crate re-exports [`redis`], so no second version needs matching. A pooled
//! connection ([`Conn`]) implements `redis::aio::ConnectionLike` (through livepool's `redis`
//! feature) and derefs to [`RedisConnection`]. For pub/sub, a [`Subscriber`] holds its own
//! connection and subscribes again after a reconnect.
//!
//! # What the pool checks
//!
//! The typed API packs each command; the connection writes it, reads exactly the replies
//! owed, and follows the session state the server confirms. The redis crate builds the
//! values; a frame scanner of this crate finds where a frame ends, and whether it is a RESP3
//! push, before anything is built (what counting, draining and classifying need).
//! - **Checkout**: one `recv(MSG_PEEK)`; a closed, reset or chattering idle member is never
//!   handed out. An idle member the server kills (`CLIENT KILL`, its `timeout`) is evicted at
//!   once, without a checkout.
//! - **Replies owed** are counted per command. A call dropped before its reply (a
//!   `tokio::time::timeout` around a `BLPOP`) leaves them owed: they are read and dropped by
//!   the holder's next call, or off the caller's path when the connection goes back
//!   (bounded by the response timeout, plus a blocking command's own; a command that may
//!   block forever, such as `BLPOP … 0`, closes the connection instead). No reconnect,
//!   never a stale reply.
//! - **Session state** the server confirmed is undone before the next caller, on the same
//!   connection: `DISCARD` for an open `MULTI`, `UNWATCH`, `SELECT` of the setup's database,
//!   and for `CLIENT TRACKING`, `CLIENT SETNAME`, `HELLO`, `AUTH`, `READONLY`: `RESET` and
//!   the setup again, in one round trip.
//! - **Commands that would break request/reply** (`SUBSCRIBE` and friends, `MONITOR`,
//!   `CLIENT REPLY`, `SYNC`) are refused before they are sent (`ErrorKind::Client`).
//! - **Bytes on an idle member**: RESP3 pushes (tracking invalidations) are benign and
//!   queued ([`RedisConnection::take_pushes`]); anything else evicts the member.
//! - **Memory**: a read buffer grown by a large reply shrinks back once it is consumed.
//!
//! Hosting the redis crate's `MultiplexedConnection` instead (its reader runs in a task of
//! its own, as [`livepool::Hosted`] allows) would give up the reply counting, the push
//! classification and the session tracking: the pool could only watch the task end.
//!
//! Replies are awaited for [`RedisConfig::response_timeout`] (500 ms by default, as in the
//! redis crate), and a blocking command (`BLPOP k 5`, `XREAD BLOCK`, `WAIT`) gets its own
//! timeout on top, so it is never cut short. A call that times out fails cleanly and costs
//! no reconnect: its reply is drained off the caller's path, never handed to anyone.
//!
//! # A server that does not answer
//!
//! Stopped (`SIGSTOP`), hung, or behind a path that lost it (a blackhole), a server fails
//! each call in flight at its response timeout. Then:
//! - the drain of each timed-out call's reply gets one more response timeout (a slow
//!   server answers within it: no reconnect); unanswered, the connection is closed then
//!   (`unanswered`), not after the pool's `heartbeat_timeout`, and that counts toward the
//!   circuit breaker (the drains of one outage begin together, so they count once);
//! - a new connection's setup waits for its replies for the response timeout too, and a
//!   setup that has nothing to send (no password, database, name or `on_connect` command)
//!   sends `PING`, so the pool never counts a connection the server did not answer as a
//!   healthy connect (a server that wants a password answers `NOAUTH`: a configuration
//!   error, [`livepool::Error::is_config`], at the first `get()`): a
//!   server that accepts but does not answer fails each connect at the response timeout,
//!   not the connect timeout, and each failure counts toward the circuit breaker. Once it
//!   is open, callers get [`livepool::Error::is_circuit_open`] at once, with the last
//!   error ("no reply to the setup within 500ms") as its source, until a probe's setup is
//!   answered;
//! - idle members' heartbeats (`PING`) time out at the response timeout, and count too.
//!
//! A call's own timeout is not counted toward the breaker (the drain that follows it is).
//! A server that does not even complete the TCP handshake (a blackhole) is bounded by the
//! pool's `connect_timeout`.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    rustdoc::broken_intra_doc_links
)]

mod config;
mod connection;
mod scan;
mod subscriber;

use std::io;
use std::sync::Arc;

pub use config::RedisConfig;
pub use connection::RedisConnection;
pub use redis;
pub use subscriber::{Subscriber, SubscriberError, SubscriberMessage};

use connection::{IdleOutcome, SetupFailure, io_kind};

/// A pool of Redis connections.
///
/// ```no_run
/// # fn demo() -> Result<(), livepool::BuildError> {
/// let pool: livepool_redis::Pool = livepool::Pool::builder("127.0.0.1:6379")
///     .protocol(livepool_redis::Redis::new(livepool_redis::RedisConfig::new()))
///     .build()?;
/// # Ok(()) }
/// ```
pub type Pool = livepool::Pool<Redis>;

/// A pooled Redis connection: the typed API runs on it (`redis::AsyncCommands`,
/// `redis::pipe().query_async(&mut conn)`), and it derefs to [`RedisConnection`].
///
/// ```no_run
/// use livepool_redis::redis::AsyncCommands;
/// # async fn demo(pool: livepool_redis::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn: livepool_redis::Conn = pool.get().await?;
/// let n: i64 = conn.incr("counter", 1).await?;
/// # let _ = n; Ok(()) }
/// ```
pub type Conn = livepool::Conn<Redis>;

/// The Redis protocol for a [`livepool::Pool`]: every new connection is set up (AUTH with a
/// password or an ACL user, `HELLO 3`, `CLIENT SETNAME`, `SELECT`; `PING` when there is
/// nothing to set up, so that the server has answered) before anyone sees it,
/// idle members are pinged (`PING`), a returned connection that is not as set up is brought
/// back off the caller's path (replies owed drained, `DISCARD`, `UNWATCH`, `SELECT`, or
/// `RESET` and the setup again) or closed, and RESP3 pushes on an idle member are benign.
///
/// ```no_run
/// use livepool_redis::{Redis, RedisConfig};
/// # fn demo() -> Result<(), livepool::BuildError> {
/// let pool = livepool::Pool::builder("127.0.0.1:6379")
///     .protocol(Redis::new(RedisConfig::new().username("app").password("pw").resp3(true)))
///     .min_idle(2)
///     .build()?;
/// # let _ = pool; Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Redis {
    config: Arc<RedisConfig>,
}

impl Redis {
    /// The protocol with this configuration.
    ///
    /// ```
    /// let p = livepool_redis::Redis::new(livepool_redis::RedisConfig::new().db(1));
    /// assert_eq!(p.config().db, 1);
    /// ```
    pub fn new(config: RedisConfig) -> Self {
        Redis {
            config: Arc::new(config),
        }
    }

    /// The configuration every connection is set up with.
    ///
    /// ```
    /// let p = livepool_redis::Redis::new(livepool_redis::RedisConfig::new().resp3(true));
    /// assert!(p.config().resp3);
    /// ```
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}

/// What an error reply during setup means for the pool: a configuration mistake (no or a
/// wrong password, an ACL user without the right, a database index out of range: the
/// server is fine), a server not ready yet (loading its data, busy with a script, a
/// replica without its primary: retried with backoff), or a refusal.
fn setup_refusal(server_says: String) -> livepool::SetupError {
    let code = server_says.split_whitespace().next().unwrap_or_default();
    match code {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => livepool::SetupError::config(server_says),
        "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" => livepool::SetupError::busy(server_says),
        // Older servers: `ERR invalid password`, `ERR Client sent AUTH, but no password is
        // set`, `ERR AUTH <password> called without any password configured`, `ERR DB
        // index is out of range`, `ERR invalid DB index`.
        "ERR" => {
            let lower = server_says.to_ascii_lowercase();
            if ["password", "auth", "db index"]
                .iter()
                .any(|w| lower.contains(w))
            {
                livepool::SetupError::config(server_says)
            } else {
                livepool::SetupError::rejected(server_says)
            }
        }
        _ => livepool::SetupError::rejected(server_says),
    }
}

impl livepool::Protocol for Redis {
    type Conn = RedisConnection<livepool::Io>;

    fn io(conn: &Self::Conn) -> &livepool::Io {
        conn.get_ref()
    }

    fn io_mut(conn: &mut Self::Conn) -> &mut livepool::Io {
        conn.stream_mut()
    }

    async fn setup(&self, io: livepool::Io) -> Result<Self::Conn, livepool::SetupError> {
        // With a `PING` when there is nothing else to set up: a connection the pool counts
        // as a success for its breaker is one the server answered.
        RedisConnection::open(io, self.config.clone(), true)
            .await
            .map_err(|e| match e {
                SetupFailure::Refused(text, _) => setup_refusal(text),
                SetupFailure::Io(e) => livepool::SetupError::io(e),
                SetupFailure::Protocol(detail) => livepool::SetupError::protocol(detail),
            })
    }

    fn has_heartbeat(&self) -> bool {
        true
    }

    async fn heartbeat(&self, conn: &mut Self::Conn) -> Result<(), livepool::HeartbeatError> {
        // The I/O error keeps its kind (the pool tells a closed or reset member from a
        // timeout or a refusal, which count against the endpoint); anything else is a reply.
        conn.ping().await.map_err(|e| match io_kind(&e) {
            Some(kind) => livepool::HeartbeatError::io(io::Error::new(kind, e.to_string())),
            None => livepool::HeartbeatError::bad_reply(e.to_string()),
        })
    }

    fn is_clean(&self, conn: &Self::Conn) -> bool {
        conn.is_clean()
    }

    fn can_settle(&self, conn: &Self::Conn) -> bool {
        conn.can_settle()
    }

    async fn settle(&self, conn: &mut Self::Conn) -> Result<(), livepool::EvictReason> {
        conn.settle().await.map_err(|e| {
            tracing::debug!(why = %e.why, "a returned redis connection could not be settled");
            if e.unanswered {
                livepool::EvictReason::Unanswered
            } else {
                livepool::EvictReason::NotClean
            }
        })
    }

    async fn idle_bytes(&self, conn: &mut Self::Conn) -> livepool::IdleVerdict {
        match conn.idle_bytes().await {
            IdleOutcome::Benign => livepool::IdleVerdict::Keep,
            IdleOutcome::Closed => livepool::IdleVerdict::Evict(livepool::EvictReason::PeerClosed),
            IdleOutcome::Unexpected(what) => {
                tracing::debug!(what = %what, "unexpected bytes on an idle redis connection");
                livepool::IdleVerdict::Evict(livepool::EvictReason::UnexpectedData)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn setup_refusals_are_classified() {
        for msg in [
            "NOAUTH Authentication required.",
            "WRONGPASS invalid username-password pair or user is disabled.",
            "NOPERM this user has no permissions to run the 'select' command",
            "ERR invalid password",
            "ERR AUTH <password> called without any password configured for the default user.",
            "ERR DB index is out of range",
        ] {
            assert!(super::setup_refusal(msg.into()).is_config(), "{msg}");
        }
        for msg in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        ] {
            assert!(super::setup_refusal(msg.into()).is_busy(), "{msg}");
        }
        for msg in ["ERR unknown command 'HELLO'", "OOM command not allowed", ""] {
            assert!(super::setup_refusal(msg.into()).is_rejected(), "{msg}");
        }
    }
}
