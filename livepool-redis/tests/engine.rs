//! The pool's engine against a real `redis-server` (started by the tests on a free loopback
//! port; skipped when `redis-server` is not installed, unless `LIVEPOOL_REQUIRE_ALL=1`),
//! through the redis crate's typed API on `livepool_redis::Pool`.
//!
//! The server side faults are Redis' own: `CLIENT KILL`, the idle `timeout`, `DEBUG SLEEP`,
//! and the server process going away and coming back on the same port. The admin commands
//! run on a plain `RedisConnection` over a `TcpStream`, outside any pool. Real time
//! throughout (a real server); every wait is bounded.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use livepool::{BreakerConfig, BreakerState, Builder, Events, EvictReason, EvictionEvent};
use livepool_redis::redis::{self, AsyncCommands, FromRedisValue};
use livepool_redis::{Conn, Pool, Redis, RedisConfig};
use livepool_testkit::redis_admin::shown;
use livepool_testkit::redis_server::RedisServer;
use livepool_testkit::{wait_until, within};

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// Commands.
// ---------------------------------------------------------------------------------------------

/// One command on a pooled connection that must succeed within 5 s, its reply typed.
async fn must<T: FromRedisValue>(conn: &mut Conn, cmd: &redis::Cmd) -> T {
    let what = format!("reply to {}", shown(cmd));
    match within(5, &what, cmd.query_async(conn)).await {
        Ok(v) => v,
        Err(e) => panic!("{what} on pooled conn {}: {e}", conn.id()),
    }
}

/// `PING` on a pooled connection, which must answer `PONG`.
async fn ping(conn: &mut Conn) {
    let pong: String = must(conn, &redis::cmd("PING")).await;
    assert_eq!(pong, "PONG", "PING on pooled conn {}", conn.id());
}

/// Redis' id of the client behind a pooled connection.
async fn client_id(conn: &mut Conn) -> i64 {
    must(conn, redis::cmd("CLIENT").arg("ID")).await
}

/// An unpooled admin connection (no response timeout: it runs DEBUG SLEEP).
type Admin = livepool_testkit::redis_admin::AdminSession;

/// One command on the admin connection that must succeed within `secs` seconds.
async fn admin_cmd<T: FromRedisValue>(admin: &mut Admin, secs: u64, cmd: &redis::Cmd) -> T {
    let what = format!("admin {}", shown(cmd));
    match within(secs, &what, cmd.query_async(admin)).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Pool helpers.
// ---------------------------------------------------------------------------------------------

fn builder(redis: &RedisServer, max_size: usize) -> Builder<Redis> {
    livepool::Pool::builder(redis.addr())
        .protocol(Redis::new(RedisConfig::new()))
        .max_size(max_size)
        .connect_timeout(Some(Duration::from_secs(2)))
        .wait_timeout(Some(Duration::from_secs(10)))
}

/// Checks out `n` connections at once (so they are `n` distinct ones), learns each one's
/// redis client id, and returns them all: the pool then holds `n` idle members.
/// Returns pool conn id → redis client id.
async fn fill(pool: &Pool, n: usize) -> HashMap<u64, i64> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            within(5, "get() while filling", pool.get())
                .await
                .expect("get()"),
        );
    }
    let mut ids = HashMap::new();
    for c in &mut conns {
        let rid = client_id(c).await;
        ids.insert(c.id(), rid);
    }
    drop(conns);
    wait_until(5, "filled connections idle in the pool", || {
        pool.status().idle == n
    })
    .await;
    ids
}

/// Collects eviction events until every id in `ids` has been evicted; panics on an event for
/// any other connection, on a lagged or closed stream, or after `secs` seconds.
async fn evictions(
    events: &mut Events,
    ids: &HashSet<u64>,
    secs: u64,
    what: &str,
) -> HashMap<u64, EvictionEvent> {
    let mut seen: HashMap<u64, EvictionEvent> = HashMap::new();
    within(secs, what, async {
        while !ids.iter().all(|id| seen.contains_key(id)) {
            let ev = events.recv().await.expect("eviction event stream");
            assert!(
                ids.contains(&ev.id),
                "{what}: unexpected eviction of conn {} ({}); expected only {ids:?}",
                ev.id,
                ev.reason
            );
            assert!(
                seen.insert(ev.id, ev.clone()).is_none(),
                "{what}: conn {} evicted twice",
                ev.id
            );
        }
    })
    .await;
    seen
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_commands_and_exact_concurrent_counter() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let pool: Pool = builder(&redis, 4).build().unwrap();

    let mut conn = within(5, "get()", pool.get()).await.unwrap();
    let () = within(5, "SET greeting", conn.set("greeting", "hello\r\nworld"))
        .await
        .expect("SET greeting");
    let greeting: Option<String> = within(5, "GET greeting", conn.get("greeting"))
        .await
        .expect("GET greeting");
    assert_eq!(greeting.as_deref(), Some("hello\r\nworld"));
    let missing: Option<String> = within(5, "GET missing", conn.get("missing"))
        .await
        .expect("GET missing");
    assert_eq!(missing, None);
    let err = within(5, "INCR greeting", conn.incr::<_, _, i64>("greeting", 1))
        .await
        .expect_err("INCR of a string that is not a number");
    assert_eq!(err.code(), Some("ERR"), "{err}");
    // An error reply is a reply: the connection is as it was set up.
    assert!(conn.is_clean(), "{:?}", *conn);
    drop(conn);

    const TASKS: usize = 16;
    const INCRS: usize = 50;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut got = Vec::with_capacity(INCRS);
            for _ in 0..INCRS {
                let mut conn = pool.get().await.expect("get()");
                got.push(must::<i64>(&mut conn, redis::cmd("INCR").arg("counter")).await);
            }
            got
        });
    }
    let mut all = Vec::with_capacity(TASKS * INCRS);
    within(60, "16 tasks × 50 INCRs", async {
        while let Some(res) = tasks.join_next().await {
            all.extend(res.expect("INCR task"));
        }
    })
    .await;
    // Every INCR reply reached the caller that sent it: the replies are exactly 1..=800.
    all.sort_unstable();
    let expected: Vec<i64> = (1..=(TASKS * INCRS) as i64).collect();
    assert_eq!(
        all, expected,
        "INCR replies are not a permutation of 1..=800"
    );

    let mut conn = within(5, "get()", pool.get()).await.unwrap();
    let counter: Option<String> = must(&mut conn, redis::cmd("GET").arg("counter")).await;
    assert_eq!(counter, Some((TASKS * INCRS).to_string()));
    drop(conn);

    let stats = pool.statistics();
    assert!(
        stats.created <= 4,
        "max_size 4 but {} created",
        stats.created
    );
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    assert_eq!(stats.checkouts, (TASKS * INCRS + 2) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_kill_evicts_and_killed_connections_are_never_used() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let pool: Pool = builder(&redis, 4).build().unwrap();
    let mut events = pool.events();
    let filled = fill(&pool, 4).await;
    let killed_redis: HashSet<i64> = filled.values().copied().collect();
    let killed_pool: HashSet<u64> = filled.keys().copied().collect();
    assert_eq!(killed_redis.len(), 4, "{filled:?}");

    let mut adm = redis.admin().await;
    for rid in &killed_redis {
        let killed: i64 = admin_cmd(
            &mut adm,
            5,
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(rid),
        )
        .await;
        assert_eq!(killed, 1, "CLIENT KILL ID {rid}");
    }

    // At once, without waiting for the evictions: redis closed those sockets before it
    // replied to the kill, so the kernel knows; no checkout may hand one out.
    for round in 0..25 {
        let mut conns = Vec::with_capacity(4);
        for _ in 0..4 {
            conns.push(
                within(5, "get() after the kills", pool.get())
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: get() failed: {e}")),
            );
        }
        for c in &mut conns {
            assert!(
                !killed_pool.contains(&c.id()),
                "round {round}: the pool handed out killed conn {}",
                c.id()
            );
            let rid = client_id(c).await;
            assert!(
                !killed_redis.contains(&rid),
                "round {round}: a command ran on killed redis client {rid}"
            );
        }
    }

    let evicted = evictions(
        &mut events,
        &killed_pool,
        5,
        "eviction events for the killed connections",
    )
    .await;
    for ev in evicted.values() {
        assert!(
            matches!(ev.reason, EvictReason::PeerClosed | EvictReason::Reset),
            "killed conn {} evicted as {}",
            ev.id,
            ev.reason
        );
    }
    let stats = pool.statistics();
    assert_eq!(
        stats.evicted(EvictReason::PeerClosed) + stats.evicted(EvictReason::Reset),
        4,
        "{:?}",
        stats.evictions()
    );
    assert_eq!(stats.evicted_total(), 4, "{:?}", stats.evictions());

    // And afterwards, still only live clients.
    for _ in 0..50 {
        let mut c = within(5, "get()", pool.get()).await.unwrap();
        let rid = client_id(&mut c).await;
        assert!(
            !killed_redis.contains(&rid),
            "command ran on killed client {rid}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_idle_timeout_is_evicted_by_the_idle_watch() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // The protocol pings idle members; with an hour between heartbeats the members really
    // go idle, as far as redis can tell.
    let pool: Pool = builder(&redis, 4)
        .heartbeat_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut events = pool.events();
    let filled = fill(&pool, 4).await;
    let ids: HashSet<u64> = filled.keys().copied().collect();
    let checkouts = pool.statistics().checkouts;

    let mut adm = redis.admin().await;
    let ok: String = admin_cmd(
        &mut adm,
        5,
        redis::cmd("CONFIG").arg("SET").arg("timeout").arg(1),
    )
    .await;
    assert_eq!(ok, "OK", "CONFIG SET timeout 1");
    drop(adm);

    // Redis checks client timeouts in its cron, spread over a second or so: allow plenty.
    let evicted = evictions(
        &mut events,
        &ids,
        20,
        "redis closing the idle connections (timeout 1)",
    )
    .await;
    for ev in evicted.values() {
        assert_eq!(ev.reason, EvictReason::PeerClosed, "conn {}", ev.id);
    }
    // Nobody checked anything out meanwhile: the idle watch found them.
    let stats = pool.statistics();
    assert_eq!(stats.checkouts, checkouts);
    assert_eq!(
        stats.evicted(EvictReason::PeerClosed),
        4,
        "{:?}",
        stats.evictions()
    );
    assert_eq!(stats.evicted_total(), 4, "{:?}", stats.evictions());
    assert_eq!(pool.status().idle, 0);

    let mut conn = within(5, "get() after the idle timeouts", pool.get())
        .await
        .unwrap();
    assert!(
        !ids.contains(&conn.id()),
        "handed out evicted conn {}",
        conn.id()
    );
    let rid = client_id(&mut conn).await;
    assert!(
        !filled.values().any(|&r| r == rid),
        "command ran on closed redis client {rid}"
    );
    ping(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debug_sleep_evicts_idle_connections_by_heartbeat_timeout() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let pool: Pool = builder(&redis, 3)
        .heartbeat_interval(500 * MS)
        .heartbeat_timeout(200 * MS)
        .heartbeat_jitter(0.0)
        .reap_interval(50 * MS)
        // Heartbeat failures feed the breaker; this test is about the evictions only.
        .breaker(None)
        .build()
        .unwrap();
    let mut events = pool.events();
    let filled = fill(&pool, 3).await;
    let ids: HashSet<u64> = filled.keys().copied().collect();

    // Redis blocks entirely for 2 s; the reply comes after. The evictions are awaited while
    // the admin connection waits for that reply.
    let mut adm = redis.admin().await;
    let sleep = redis::cmd("DEBUG").arg("SLEEP").arg(2).clone();
    let (slept, evicted) = tokio::join!(
        admin_cmd::<String>(&mut adm, 10, &sleep),
        evictions(
            &mut events,
            &ids,
            10,
            "heartbeat timeouts while redis sleeps",
        ),
    );
    for ev in evicted.values() {
        assert_eq!(ev.reason, EvictReason::HeartbeatTimeout, "conn {}", ev.id);
    }
    let stats = pool.statistics();
    assert_eq!(
        stats.evicted(EvictReason::HeartbeatTimeout),
        3,
        "{:?}",
        stats.evictions()
    );
    assert_eq!(slept, "OK", "DEBUG SLEEP 2");

    let mut conn = within(5, "get() after the sleep", pool.get())
        .await
        .unwrap();
    assert!(
        !ids.contains(&conn.id()),
        "handed out evicted conn {}",
        conn.id()
    );
    ping(&mut conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_opens_then_closes_the_breaker_and_refills() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let pool: Pool = builder(&redis, 4)
        .min_idle(2)
        .connect_timeout(Some(500 * MS))
        .reap_interval(50 * MS)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(2)
                .open_for(500 * MS)
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let mut events = pool.events();
    wait_until(10, "refill to min_idle 2", || pool.status().idle >= 2).await;
    let members = pool.status().size;
    assert_eq!(pool.status().in_use, 0);

    redis.stop();

    // Every idle member is evicted (the peer closed them all) without anyone asking.
    within(5, "idle members evicted when redis goes away", async {
        for _ in 0..members {
            let ev = events.recv().await.expect("eviction event stream");
            assert!(
                matches!(ev.reason, EvictReason::PeerClosed | EvictReason::Reset),
                "conn {} evicted as {}",
                ev.id,
                ev.reason
            );
        }
    })
    .await;
    wait_until(5, "pool empty after the evictions", || {
        pool.status().size == 0
    })
    .await;
    // get() fails (refused); after the threshold it fails fast with the breaker open.
    let mut failures = Vec::new();
    let open_err = within(10, "get() failing with the circuit open", async {
        loop {
            match pool.get().await {
                Ok(c) => panic!("get() succeeded with redis stopped: conn {}", c.id()),
                Err(e) if e.is_circuit_open() => break e,
                Err(e) => {
                    assert!(e.is_connect(), "get() with redis stopped: {e}");
                    failures.push(e.to_string());
                    tokio::time::sleep(10 * MS).await;
                }
            }
        }
    })
    .await;
    let state = pool.statistics().breaker_state;
    assert_eq!(
        state,
        BreakerState::Open,
        "breaker state right after a circuit-open error ({open_err}); earlier failures: {failures:?}"
    );
    assert!(open_err.retry_after().is_some(), "{open_err}");

    redis.restart().await;

    // Within a bounded wait a get() succeeds (the half-open probe closes the breaker).
    let mut conn = within(30, "get() succeeding after the restart", async {
        loop {
            match pool.get().await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        e.is_circuit_open() || e.is_connect(),
                        "get() after the restart: {e}"
                    );
                    tokio::time::sleep(20 * MS).await;
                }
            }
        }
    })
    .await;
    ping(&mut conn).await;
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    drop(conn);

    wait_until(30, "refill to min_idle 2 after the restart", || {
        pool.status().idle >= 2
    })
    .await;
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    // The refilled members work.
    for _ in 0..2 {
        let mut c = within(5, "get()", pool.get()).await.unwrap();
        ping(&mut c).await;
    }
}
