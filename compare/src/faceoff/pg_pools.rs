//! The face-off's Postgres rows: livepool-postgres next to the pools users would pick instead
//! (deadpool-postgres, bb8-postgres, sqlx), each behind the harness's [`Subject`].
//!
//! Every row connects to database `postgres` with one user and password (SCRAM, as the
//! server asks), without TLS, and runs one request the same way: check a connection out,
//! `SELECT $1::text` with the token as the parameter, read the one row's text, give the
//! connection back (drop). No retry loop of ours: a request is what a caller's code does;
//! the harness puts the deadline around it.
//!
//! The tokio-postgres rows (livepool-postgres, deadpool-postgres, bb8-postgres) all call
//! `Client::query_typed_one("SELECT $1::text", &[(&token, Type::TEXT)])`: one round trip
//! (Parse unnamed / Bind / Describe / Execute / Sync), nothing left on the server, the same
//! wire for the three, so that they differ only by their pool. sqlx runs
//! `query_scalar("SELECT $1::text").bind(token).fetch_one(&pool)`, its usual call: it prepares
//! the statement once per connection (its statement cache, 100 by default) and then sends
//! Bind / Execute / Sync, one round trip too.
//!
//! # The rows and their settings
//!
//! Every pool runs at its documented defaults; only its size is set, to 4 (deadpool
//! `max_size(4)`, bb8 `max_size(4)`, sqlx `max_connections(4)`, livepool `max_size(4)`).
//!
//! | row | built as | health settings (defaults unless said) |
//! |---|---|---|
//! | `livepool-postgres` | `livepool::Pool::builder(addr).protocol(Postgres::new(config)).max_size(4)` | livepool's `Builder` defaults: connect timeout 5 s, wait timeout 30 s, TCP keepalive 60 s / `TCP_USER_TIMEOUT` 30 s, heartbeat every 30 s (5 s timeout), idle watch, breaker on; the driver's end evicts a member |
//! | `deadpool-postgres` | `Pool::builder(Manager::from_config(config, NoTls, ManagerConfig::default())).max_size(4)` | `RecyclingMethod::Fast` (only `Client::is_closed` at checkout); no timeouts (`Timeouts` all `None`) |
//! | `deadpool-postgres (Verified)` | the same with `RecyclingMethod::Verified` | `is_closed` and a test query (`simple_query("")`) at each checkout of an idle connection: its FAQ's answer to "Why are connections retrieved from the pool sometimes unuseable?" (`Fast` can miss a disconnect) |
//! | `bb8-postgres` | `bb8::Pool::builder().max_size(4).build(PostgresConnectionManager::new(config, NoTls))` | `test_on_check_out` true (`simple_query("")`), `connection_timeout` 30 s around the whole `get()`, `retry_connection` true |
//! | `sqlx PgPool` | `PgPoolOptions::new().max_connections(4).connect_lazy_with(options)` | `test_before_acquire` true (`ping`), `acquire_timeout` 30 s (inside it, a refused connect or 53300 / 57P03 is retried with backoff), `idle_timeout` 10 min, `max_lifetime` 30 min |
//!
//! No second bb8 or sqlx row: their docs recommend no other health setting. bb8's
//! `retry_connection(false)` is described as better for "applications [...] smart enough
//! to know that the server is down", which the face-off's caller (no retry loop, no outage
//! logic) is not; sqlx's docs describe `acquire_timeout` and `test_before_acquire` without
//! advising other values. deadpool's `Timeouts` are not set either: its docs do not ask for
//! them, and the harness's deadline plays the caller's.
//!
//! tokio-postgres's own defaults apply to deadpool and bb8: no `connect_timeout` (a connect
//! to a host that drops SYNs waits for the kernel), TCP keepalives on with a 2 h idle time,
//! no `tcp_user_timeout`. livepool ignores the config's hosts and TCP settings: its address
//! and transport are the pool's. sqlx connects with `PgSslMode::Disable` (its default,
//! `Prefer`, would send an `SSLRequest` first; "no TLS" for every row).
//!
//! # `connects()` and `open()`
//!
//! | row | `connects()` | `open()` |
//! |---|---|---|
//! | livepool-postgres | `statistics()`: `created + connect_errors` (every attempt) | `status().size` (open, idle and in use) |
//! | deadpool-postgres | `Manager::create` calls (a [`Counting`] wrapper around the real manager): every attempt | `status().size`: created and not yet dropped (a dead connection counts until a checkout's recycle fails) |
//! | bb8-postgres | `ManageConnection::connect` calls (the same [`Counting`] wrapper): every attempt, retries included | `state().connections`: established, not yet found broken or invalid |
//! | sqlx PgPool | `after_connect` calls: **successful connects only** (the handshake done); refused or failed attempts are not counted, sqlx has no hook for them | `size()`: includes a connection whose connect is in progress |
//!
//! # Failover (`secondary` is `Some`)
//!
//! Only the pools that take several addresses: livepool-postgres through `livepool::Balancer`
//! over both addresses (each endpoint a pool with the same settings, max size 4 *each*;
//! `get()` picks by load and fails over), and deadpool-postgres (both rows) and bb8-postgres
//! with one tokio-postgres `Config` holding both hosts and ports: tokio-postgres tries them in
//! order at each connect (`load_balance_hosts` default `Disable`), so a new connection goes
//! to the first that accepts; connections already open stay where they are. sqlx is left
//! out: `PgConnectOptions` holds one host and one port (no list, no libpq-style
//! `host=a,b`), so it has no failover of its own. Rows of this set say so in their names.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bb8_postgres::PostgresConnectionManager;
use bb8_postgres::bb8;
use deadpool::managed::{Manager, Metrics, RecycleResult};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use livepool::Hosted;
use livepool_postgres::Postgres;
use livepool_postgres::tokio_postgres::{self, NoTls, types::Type};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::harness::{Reply, Subject};

/// Every pool's size.
const MAX_SIZE: usize = 4;
/// The request, the same text for every row.
const SQL: &str = "SELECT $1::text";

/// The Postgres rows of the face-off against `primary` (and, for the failover fault,
/// `secondary`): see the module docs for the rows and their settings.
pub async fn subjects(
    primary: SocketAddr,
    secondary: Option<SocketAddr>,
    user: &str,
    password: &str,
) -> Result<Vec<Arc<dyn Subject>>, String> {
    let mut rows: Vec<Arc<dyn Subject>> = Vec::new();
    // Session settings only: what livepool takes (its hosts would be ignored).
    let mut session = tokio_postgres::Config::new();
    session.user(user).password(password).dbname("postgres");
    let mut connect = session.clone();
    let hosts: Vec<SocketAddr> = std::iter::once(primary).chain(secondary).collect();
    for a in &hosts {
        connect.host(a.ip().to_string()).port(a.port());
    }
    let failover = secondary.is_some();
    let tag = |name: &str, extra: &str| -> String {
        match (failover, extra.is_empty()) {
            (false, true) => name.to_string(),
            (false, false) => format!("{name} ({extra})"),
            (true, true) => format!("{name} (2 hosts)"),
            (true, false) => format!("{name} ({extra}, 2 hosts)"),
        }
    };

    // livepool-postgres: one pool, or a Balancer over both addresses.
    if failover {
        let balancer = livepool::Balancer::builder()
            .config(livepool::PoolConfig {
                max_size: MAX_SIZE,
                ..livepool::PoolConfig::default()
            })
            .protocol(Postgres::new(session.clone()))
            .endpoints(hosts.clone())
            .build()
            .map_err(|e| format!("livepool Balancer: {e}"))?;
        rows.push(Arc::new(LpBalancer {
            name: "livepool-postgres (Balancer)".into(),
            balancer,
        }));
    } else {
        let pool = livepool::Pool::builder(primary)
            .protocol(Postgres::new(session.clone()))
            .max_size(MAX_SIZE)
            .build()
            .map_err(|e| format!("livepool-postgres: {e}"))?;
        rows.push(Arc::new(LpPool {
            name: "livepool-postgres".into(),
            pool,
        }));
    }

    // deadpool-postgres: its default recycling method, then the verified one.
    for (method, extra) in [
        (RecyclingMethod::Fast, ""),
        (RecyclingMethod::Verified, "Verified"),
    ] {
        let manager = deadpool_postgres::Manager::from_config(
            connect.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: method,
            },
        );
        let pool = DpPool::builder(Counting::new(manager))
            .max_size(MAX_SIZE)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("deadpool-postgres: {e}"))?;
        rows.push(Arc::new(Deadpool {
            name: tag("deadpool-postgres", extra),
            pool,
        }));
    }

    // bb8-postgres: its defaults (test_on_check_out, 30 s connection_timeout, retries).
    let manager = Counting::new(PostgresConnectionManager::new(connect.clone(), NoTls));
    let connects = manager.connects.clone();
    let pool = bb8::Pool::builder()
        .max_size(MAX_SIZE as u32)
        .build(manager)
        .await
        .map_err(|e| format!("bb8-postgres: {}", describe(&e)))?;
    rows.push(Arc::new(Bb8 {
        name: tag("bb8-postgres", ""),
        pool,
        connects,
    }));

    // sqlx: one host only, so not in the failover set.
    if !failover {
        let options = PgConnectOptions::new_without_pgpass()
            .host(&primary.ip().to_string())
            .port(primary.port())
            .username(user)
            .password(password)
            .database("postgres")
            .ssl_mode(PgSslMode::Disable);
        let connects = Arc::new(AtomicU64::new(0));
        let counter = connects.clone();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_SIZE as u32)
            .after_connect(move |_conn, _meta| {
                counter.fetch_add(1, Relaxed);
                Box::pin(async { Ok(()) })
            })
            .connect_lazy_with(options);
        rows.push(Arc::new(Sqlx {
            name: "sqlx PgPool".into(),
            pool,
            connects,
        }));
    }
    Ok(rows)
}

/// An error with its sources (tokio-postgres's `Display` of a server error is "db error";
/// the server's words are in the source).
fn describe(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = source.and_then(|s| s.source());
    }
    text
}

/// The one text column of `SELECT $1::text` through a tokio-postgres client.
async fn select_token(client: &tokio_postgres::Client, token: &str) -> Result<String, String> {
    let row = client
        .query_typed_one(SQL, &[(&token, Type::TEXT)])
        .await
        .map_err(|e| describe(&e))?;
    row.try_get::<_, String>(0).map_err(|e| describe(&e))
}

// ---------------------------------------------------------------------------------------------
// Connect counting around the peers' own managers
// ---------------------------------------------------------------------------------------------

/// The peer's own manager (deadpool's `Manager`, bb8's `ManageConnection`), counting connect
/// attempts (`create` / `connect` calls, successful or not) and otherwise delegating.
/// (bb8's pool does not give its manager back: the count is shared.)
struct Counting<M> {
    inner: M,
    connects: Arc<AtomicU64>,
}

impl<M> Counting<M> {
    fn new(inner: M) -> Self {
        Counting {
            inner,
            connects: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<M: Manager> Manager for Counting<M> {
    type Type = M::Type;
    type Error = M::Error;

    async fn create(&self) -> Result<M::Type, M::Error> {
        self.connects.fetch_add(1, Relaxed);
        self.inner.create().await
    }

    async fn recycle(&self, obj: &mut M::Type, metrics: &Metrics) -> RecycleResult<M::Error> {
        self.inner.recycle(obj, metrics).await
    }

    fn detach(&self, obj: &mut M::Type) {
        self.inner.detach(obj);
    }
}

impl<M: bb8::ManageConnection> bb8::ManageConnection for Counting<M> {
    type Connection = M::Connection;
    type Error = M::Error;

    async fn connect(&self) -> Result<M::Connection, M::Error> {
        self.connects.fetch_add(1, Relaxed);
        self.inner.connect().await
    }

    async fn is_valid(&self, conn: &mut M::Connection) -> Result<(), M::Error> {
        self.inner.is_valid(conn).await
    }

    fn has_broken(&self, conn: &mut M::Connection) -> bool {
        self.inner.has_broken(conn)
    }
}

// ---------------------------------------------------------------------------------------------
// The subjects
// ---------------------------------------------------------------------------------------------

struct LpPool {
    name: String,
    pool: livepool_postgres::Pool,
}

impl Subject for LpPool {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            let conn = self.pool.get().await.map_err(|e| describe(&e))?;
            select_token(&conn, token).await
        })
    }
    fn connects(&self) -> u64 {
        let s = self.pool.statistics();
        s.created + s.connect_errors
    }
    fn open(&self) -> Option<usize> {
        Some(self.pool.status().size)
    }
}

struct LpBalancer {
    name: String,
    balancer: livepool::Balancer<Hosted<Postgres>>,
}

impl Subject for LpBalancer {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            let conn = self.balancer.get().await.map_err(|e| describe(&e))?;
            select_token(&conn, token).await
        })
    }
    /// Summed over the endpoints.
    fn connects(&self) -> u64 {
        self.balancer
            .endpoints()
            .iter()
            .map(|e| e.statistics.created + e.statistics.connect_errors)
            .sum()
    }
    /// Summed over the endpoints.
    fn open(&self) -> Option<usize> {
        Some(
            self.balancer
                .endpoints()
                .iter()
                .map(|e| e.status.size)
                .sum(),
        )
    }
}

type DpPool = deadpool::managed::Pool<Counting<deadpool_postgres::Manager>>;

struct Deadpool {
    name: String,
    pool: DpPool,
}

impl Subject for Deadpool {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| describe(&e))?;
            select_token(&client, token).await
        })
    }
    fn connects(&self) -> u64 {
        self.pool.manager().connects.load(Relaxed)
    }
    fn open(&self) -> Option<usize> {
        Some(self.pool.status().size)
    }
}

struct Bb8 {
    name: String,
    pool: bb8::Pool<Counting<PostgresConnectionManager<NoTls>>>,
    /// `ManageConnection::connect` calls, shared with the [`Counting`] manager.
    connects: Arc<AtomicU64>,
}

impl Subject for Bb8 {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| describe(&e))?;
            select_token(&client, token).await
        })
    }
    fn connects(&self) -> u64 {
        self.connects.load(Relaxed)
    }
    fn open(&self) -> Option<usize> {
        Some(self.pool.state().connections as usize)
    }
}

struct Sqlx {
    name: String,
    pool: PgPool,
    /// `after_connect` calls: successful connects only.
    connects: Arc<AtomicU64>,
}

impl Subject for Sqlx {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn request<'a>(&'a self, token: &'a str) -> Reply<'a> {
        Box::pin(async move {
            sqlx::query_scalar::<_, String>(SQL)
                .bind(token)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| describe(&e))
        })
    }
    fn connects(&self) -> u64 {
        self.connects.load(Relaxed)
    }
    fn open(&self) -> Option<usize> {
        Some(self.pool.size() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Control, Figures, drive};
    use crate::servers::{PG_USER, PgCluster};
    use std::time::Duration;

    /// A throwaway cluster, or `None` (after "SKIPPED: ...") when PostgreSQL is not installed
    /// and `LIVEPOOL_REQUIRE_ALL` is not 1.
    async fn cluster() -> Option<PgCluster> {
        let started = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
        match started {
            Ok(c) => Some(c),
            Err(e) => {
                let missing =
                    e.contains("were found neither on PATH") || e.contains("no `postgres` user");
                if !missing || std::env::var("LIVEPOOL_REQUIRE_ALL").as_deref() == Ok("1") {
                    panic!("PostgreSQL cluster: {e}");
                }
                eprintln!("SKIPPED: PostgreSQL is not available: {e}");
                None
            }
        }
    }

    /// Every subject answers 20 requests (2 workers × 10) correctly, one subject at a time.
    async fn every_row_answers(rows: &[Arc<dyn Subject>], check_connects: bool) {
        for (lane, s) in rows.iter().enumerate() {
            let outcomes = drive(
                s.clone(),
                lane,
                2,
                Duration::from_secs(10),
                10,
                tokio::time::Instant::now(),
                Arc::new(Control::default()),
            )
            .await;
            let f = Figures::of(&outcomes, 0, 0);
            if (f.ok, f.failed, f.hung, f.wrong) != (20, 0, 0, 0) {
                let probe = s.request("probe").await;
                panic!("{}: {f:?}; one more request: {probe:?}", s.name());
            }
            assert!(f.healthy(), "{}: {f:?}", s.name());
            let (connects, open) = (s.connects(), s.open());
            assert!(connects >= 1, "{}: {connects} connects", s.name());
            if check_connects {
                assert!(connects <= MAX_SIZE as u64, "{}: {connects}", s.name());
            }
            assert!(
                open.is_some_and(|n| (1..=MAX_SIZE).contains(&n)),
                "{}: open {open:?}",
                s.name()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_pools_every_row_answers_its_token() {
        let Some(pg) = cluster().await else { return };
        let rows = subjects(pg.addr(), None, PG_USER, pg.password())
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "livepool-postgres",
                "deadpool-postgres",
                "deadpool-postgres (Verified)",
                "bb8-postgres",
                "sqlx PgPool"
            ]
        );
        every_row_answers(&rows, true).await;
    }

    /// The failover set with a first address nobody listens on: every row reaches the second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg_pools_failover_rows_reach_the_second_address() {
        let Some(pg) = cluster().await else { return };
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let rows = subjects(dead, Some(pg.addr()), PG_USER, pg.password())
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "livepool-postgres (Balancer)",
                "deadpool-postgres (2 hosts)",
                "deadpool-postgres (Verified, 2 hosts)",
                "bb8-postgres (2 hosts)"
            ]
        );
        // livepool counts the refused connects to the first address too.
        every_row_answers(&rows, false).await;
    }
}
