//! tokio-postgres on livepool against a real PostgreSQL the tests start (SCRAM): typed
//! parameters and rows, pooling, COPY both ways, a connection returned in a transaction or
//! with a reply owed, a terminated idle session evicted without a checkout, a restart.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt, pin_mut};
use livepool::{BreakerConfig, BreakerState, EvictReason};
use livepool_postgres::tokio_postgres::{self, Config};
use livepool_postgres::{Pool, Postgres};
use livepool_testkit::pg::PgCluster;
use livepool_testkit::{wait_until, within};

const MS: Duration = Duration::from_millis(1);

/// One cluster at a time: each test starts its own, and the machine may have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(c: &PgCluster) -> Config {
    let mut config = Config::new();
    config
        .user(c.user())
        .password(c.password())
        .dbname("postgres")
        .application_name("livepool-postgres-test");
    config
}

fn builder(c: &PgCluster) -> livepool::Builder<livepool::Hosted<Postgres>> {
    livepool::Pool::builder(c.addr())
        .protocol(Postgres::new(config(c)))
        .connect_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .reap_interval(100 * MS)
}

/// A client outside the pool, for the test's own queries.
async fn admin(c: &PgCluster) -> tokio_postgres::Client {
    let stream = within(
        10,
        "admin connect",
        tokio::net::TcpStream::connect(c.addr()),
    )
    .await
    .expect("admin connect");
    let (client, connection) = within(
        10,
        "admin startup",
        config(c).connect_raw(stream, tokio_postgres::NoTls),
    )
    .await
    .expect("admin startup");
    tokio::spawn(connection);
    client
}

async fn pid(conn: &tokio_postgres::Client) -> i32 {
    let row = within(
        10,
        "pg_backend_pid",
        conn.query_one("SELECT pg_backend_pid()", &[]),
    )
    .await
    .expect("pg_backend_pid");
    row.get(0)
}

#[tokio::test]
async fn typed_parameters_rows_copy_and_pooling() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster).build().unwrap();

    let conn = within(10, "get", pool.get()).await.expect("get");
    let first = pid(&conn).await;
    conn.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, name text, data bytea, at timestamptz NOT NULL)",
    )
    .await
    .expect("create table");
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let insert = conn
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4)")
        .await
        .expect("prepare");
    // A name that would break a query built by hand: bound parameters never need quoting.
    let names = [Some("O'Brien; DROP TABLE t; --"), None];
    for (i, name) in names.iter().enumerate() {
        let data: Vec<u8> = vec![0, 1, 2, 255, i as u8];
        let n = conn
            .execute(&insert, &[&(i as i64), name, &data, &at])
            .await
            .expect("insert");
        assert_eq!(n, 1);
    }
    let rows = conn
        .query("SELECT id, name, data, at FROM t ORDER BY id", &[])
        .await
        .expect("select");
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i64>("id"), i as i64);
        assert_eq!(row.get::<_, Option<&str>>("name"), names[i]);
        assert_eq!(row.get::<_, Vec<u8>>("data"), vec![0, 1, 2, 255, i as u8]);
        assert_eq!(row.get::<_, SystemTime>("at"), at);
    }
    drop(conn);

    // The same backend serves the next checkout: pooled, not reconnected.
    let conn = within(10, "get again", pool.get()).await.expect("get");
    assert_eq!(pid(&conn).await, first);

    // COPY in, with a row-count check, then out.
    let sink = conn
        .copy_in("COPY t (id, name, at) FROM STDIN")
        .await
        .expect("copy in");
    pin_mut!(sink);
    let mut lines = String::new();
    for id in 10..1010 {
        lines.push_str(&format!("{id}\tname {id}\t2024-01-01 00:00:00+00\n"));
    }
    sink.send(bytes_of(lines)).await.expect("copy data");
    let copied = sink.finish().await.expect("copy done");
    assert_eq!(copied, 1000);
    let count: i64 = conn
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1002);
    let out = conn
        .copy_out("COPY (SELECT id FROM t WHERE id >= 10 ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    pin_mut!(out);
    let mut text = Vec::new();
    while let Some(chunk) = out.next().await {
        text.extend_from_slice(&chunk.expect("copy out data"));
    }
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), 1000, "every row came out");
    assert_eq!(text.lines().next(), Some("10"));
    drop(conn);

    let stats = pool.statistics();
    assert_eq!(stats.created, 1, "{stats:?}");
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
}

fn bytes_of(s: String) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(s.into_bytes())
}

#[tokio::test]
async fn a_transaction_left_open_or_a_query_abandoned_is_settled_off_the_callers_path() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster).max_size(1).build().unwrap();
    let admin = admin(&cluster).await;

    // A transaction left open: rolled back before anyone else gets the connection.
    let conn = pool.get().await.expect("get");
    let (first, first_pid) = (conn.id(), pid(&conn).await);
    conn.batch_execute(
        "BEGIN; CREATE TEMP TABLE leftover (x int); INSERT INTO leftover VALUES (1)",
    )
    .await
    .unwrap();
    assert_eq!(conn.transaction_status(), b'T');
    drop(conn);
    let conn = within(10, "get after the open transaction", pool.get())
        .await
        .expect("get");
    assert_eq!((conn.id(), pid(&conn).await), (first, first_pid), "reused");
    assert_eq!(conn.transaction_status(), b'I');
    let left: Option<String> = conn
        .query_one("SELECT to_regclass('pg_temp.leftover')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, None, "the transaction's table survived");
    drop(conn);

    // Queries abandoned halfway (their futures dropped while the server runs them): each is
    // cancelled on a connection of the pool's own, and the connection comes back. No
    // reconnect is needed.
    for i in 0..30 {
        abandon_then_query(&pool, "SELECT pg_sleep(5)", "SELECT $1::int4", i).await;
    }
    // Queries that end by themselves about when the cancel is sent: a cancel that arrived
    // late would hit the next caller's query (57014). The pool waits until the server has
    // acted on it (closed the cancel connection) before the member is idle again.
    for i in 0..30 {
        let next = "SELECT $1::int4 FROM pg_sleep(0.03)";
        abandon_then_query(&pool, "SELECT pg_sleep(0.021)", next, i).await;
    }
    // The server ran no query for longer than the cancels allowed.
    let running: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(running, 0);
    let stats = pool.statistics();
    assert_eq!(
        stats.created, 1,
        "60 cancelled queries, one connection: {stats:?}"
    );
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
}

/// Starts `abandoned`, gives up on it after 20 ms and returns the connection; then checks that
/// the next checkout runs `next` (which selects its one parameter, `i`) correctly.
async fn abandon_then_query(pool: &Pool, abandoned: &str, next: &str, i: i32) {
    let conn = within(10, "get", pool.get()).await.expect("get");
    let slow = conn.query_one(abandoned, &[]);
    assert!(tokio::time::timeout(20 * MS, slow).await.is_err());
    drop(conn);
    let conn = within(10, "get after the abandoned query", pool.get())
        .await
        .expect("get");
    let got: i32 = conn
        .query_one(next, &[&i])
        .await
        .unwrap_or_else(|e| panic!("{next} after abandoning {abandoned} (#{i}): {e}"))
        .get(0);
    assert_eq!(got, i);
}

#[tokio::test]
async fn a_terminated_idle_session_is_evicted_without_a_checkout() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster).min_idle(2).max_size(2).build().unwrap();
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let mut events = pool.events();
    let conn = pool.get().await.expect("get");
    let (id, victim) = (conn.id(), pid(&conn).await);
    drop(conn);

    let admin = admin(&cluster).await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&victim])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    // No checkout: the driver's end (FATAL 57P01, then the close) evicts it.
    let ev = within(10, "terminated eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.id, ev.reason), (id, EvictReason::Terminated), "{ev:?}");
    wait_until(20, "refill after the eviction", || {
        pool.status().idle == 2 && pool.statistics().created == 3
    })
    .await;
    let mut pids = HashSet::new();
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    for c in [&a, &b] {
        pids.insert(pid(c).await);
    }
    assert!(!pids.contains(&victim));
    assert_eq!(pids.len(), 2);
    let stats = pool.statistics();
    assert_eq!(stats.breaker_state, BreakerState::Closed, "{stats:?}");
}

#[tokio::test]
async fn a_restart_evicts_every_member_and_the_pool_recovers() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster)
        .min_idle(2)
        .max_size(4)
        .connect_timeout(Some(Duration::from_secs(2)))
        .breaker(Some(BreakerConfig::new()))
        .build()
        .unwrap();
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let before: HashSet<u64> = {
        let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        [a.id(), b.id()].into()
    };
    let mut events = pool.events();
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .expect("restart");
    // Both idle members go, each for the server's termination or close.
    let mut gone = HashSet::new();
    within(10, "both members evicted", async {
        while gone.len() < 2 {
            let ev = events.recv().await.expect("event");
            if before.contains(&ev.id) {
                assert!(
                    matches!(ev.reason, EvictReason::Terminated | EvictReason::PeerClosed),
                    "{ev:?}"
                );
                gone.insert(ev.id);
            }
        }
    })
    .await;
    // The pool serves again, with new sessions.
    let conn = within(30, "get after the restart", async {
        loop {
            match pool.get().await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        e.is_connect() || e.is_server_busy() || e.is_circuit_open(),
                        "{e}"
                    );
                    tokio::time::sleep(50 * MS).await;
                }
            }
        }
    })
    .await;
    assert!(!before.contains(&conn.id()));
    assert_eq!(
        conn.query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop(conn);
    drop(cluster);
}

/// What one caller may leave behind, as seen by the next caller on the same connection.
#[derive(Debug, PartialEq, Eq)]
struct Leftovers {
    user: String,
    search_path: String,
    listening: i64,
    temp_table: Option<String>,
    advisory_locks: i64,
    sql_prepared: i64,
}

async fn leftovers(conn: &tokio_postgres::Client) -> Leftovers {
    let row = conn
        .query_one(
            "SELECT current_user::text, current_setting('search_path'), \
             (SELECT count(*) FROM pg_listening_channels()), \
             to_regclass('pg_temp.leftover')::text, \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)",
            &[],
        )
        .await
        .expect("leftovers");
    Leftovers {
        user: row.get(0),
        search_path: row.get(1),
        listening: row.get(2),
        temp_table: row.get(3),
        advisory_locks: row.get(4),
        sql_prepared: row.get(5),
    }
}

/// Leaves session state behind: a role, a search path, a LISTEN, a temporary table, an
/// advisory lock, and (with `prepare`) an SQL-level prepared statement.
async fn leave_state(conn: &tokio_postgres::Client, prepare: bool) {
    conn.batch_execute(
        "SET ROLE other; SET search_path TO elsewhere; LISTEN jobs; \
         CREATE TEMP TABLE leftover (x int)",
    )
    .await
    .expect("session state");
    conn.query_one("SELECT pg_advisory_lock(42)", &[])
        .await
        .expect("advisory lock");
    if prepare {
        conn.batch_execute("PREPARE q AS SELECT 1")
            .await
            .expect("prepare");
    }
}

#[tokio::test]
async fn session_state_never_reaches_the_next_caller() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    admin(&cluster)
        .await
        .batch_execute("CREATE ROLE other")
        .await
        .expect("create role");
    let pool: Pool = builder(&cluster).max_size(1).build().unwrap();
    let conn = pool.get().await.expect("get");
    let (id, clean) = (conn.id(), leftovers(&conn).await);
    assert_eq!(clean.user, cluster.user());
    drop(conn);
    // With the Clean sequence (no SQL-level PREPARE), then with DISCARD ALL (after one).
    for prepare in [false, true] {
        let conn = pool.get().await.expect("get");
        let cached = conn
            .prepare_cached("SELECT $1::int4")
            .await
            .expect("prepare");
        leave_state(&conn, prepare).await;
        let dirty = leftovers(&conn).await;
        assert_eq!(dirty.user, "other");
        assert_eq!(dirty.listening, 1);
        drop(conn);
        let conn = within(10, "get after the reset", pool.get())
            .await
            .expect("get");
        assert_eq!(conn.id(), id, "reset, not reconnected");
        assert_eq!(leftovers(&conn).await, clean, "PREPARE: {prepare}");
        // The statement cache follows the reset: kept by the Clean sequence, emptied with
        // DISCARD ALL (which drops the statements themselves); either way it works.
        assert_eq!(conn.statements_cached(), usize::from(!prepare));
        let again = conn
            .prepare_cached("SELECT $1::int4")
            .await
            .expect("prepare");
        assert_eq!(format!("{again:?}") == format!("{cached:?}"), !prepare);
        let got: i32 = conn
            .query_one(&again, &[&5i32])
            .await
            .expect("cached")
            .get(0);
        assert_eq!(got, 5);
    }
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.evicted_total()), (1, 0), "{stats:?}");

    // Control: without a reset, the next caller inherits it all.
    let pool: Pool = livepool::Pool::builder(cluster.addr())
        .protocol(
            Postgres::builder(config(&cluster))
                .reset(livepool_postgres::Reset::Never)
                .build(),
        )
        .max_size(1)
        .build()
        .unwrap();
    let conn = pool.get().await.expect("get");
    leave_state(&conn, false).await;
    drop(conn);
    let conn = pool.get().await.expect("get");
    let inherited = leftovers(&conn).await;
    assert_eq!(inherited.user, "other", "{inherited:?}");
    assert_eq!(inherited.listening, 1, "{inherited:?}");
    // Let go of the inherited advisory lock before the next pool wants it.
    conn.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    drop(conn);
    pool.close();

    // Reset::Always: every return is reset, the connection kept.
    let pool: Pool = livepool::Pool::builder(cluster.addr())
        .protocol(
            Postgres::builder(config(&cluster))
                .reset(livepool_postgres::Reset::Always)
                .build(),
        )
        .max_size(1)
        .build()
        .unwrap();
    let conn = pool.get().await.expect("get");
    let id = conn.id();
    drop(conn);
    for _ in 0..3 {
        let conn = within(10, "get", pool.get()).await.expect("get");
        assert_eq!(conn.id(), id, "reset, not reconnected");
        leave_state(&conn, false).await;
        drop(conn);
    }
    let conn = within(10, "get", pool.get()).await.expect("get");
    assert_eq!(leftovers(&conn).await, clean);
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.evicted_total()), (1, 0), "{stats:?}");
}

/// Waits (bounded) for the next notification, skipping nothing else: a reconnect here fails.
async fn next_notification(listener: &mut livepool_postgres::PgListener) -> (String, String) {
    match within(10, "a notification", listener.recv()).await {
        Ok(livepool_postgres::ListenerMessage::Notification(n)) => {
            (n.channel().to_owned(), n.payload().to_owned())
        }
        other => panic!("expected a notification, got {other:?}"),
    }
}

#[tokio::test]
async fn the_listener_listens_again_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let listener_pool: Pool = builder(&cluster).max_size(1).build().unwrap();
    let mut listener = livepool_postgres::PgListener::new(listener_pool);
    listener.listen("jobs").await.expect("listen");
    listener.listen("weird \"name\"").await.expect("listen");

    let notify = |admin: tokio_postgres::Client, channel: &'static str, payload: &'static str| async move {
        admin
            .query_one("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .expect("notify");
        admin
    };
    let admin_client = admin(&cluster).await;
    let admin_client = notify(admin_client, "jobs", "one").await;
    let admin_client = notify(admin_client, "weird \"name\"", "two").await;
    assert_eq!(
        next_notification(&mut listener).await,
        ("jobs".into(), "one".into())
    );
    assert_eq!(
        next_notification(&mut listener).await,
        ("weird \"name\"".into(), "two".into())
    );
    // A pooled connection of another pool, not listening, hears nothing; the listener hears
    // only its channels.
    let admin_client = notify(admin_client, "other", "not for us").await;
    drop(admin_client);

    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .expect("restart");
    // The listener notices, reconnects through its pool and says how long it was away.
    let gap = within(30, "the listener reconnects", async {
        loop {
            match listener.recv().await {
                Ok(livepool_postgres::ListenerMessage::Reconnected { gap }) => break gap,
                Ok(other) => panic!("before the reconnect: {other:?}"),
                // The server is still starting: the pool's breaker paces the attempts.
                Err(e) => {
                    let wait = match &e {
                        livepool_postgres::ListenerError::Connect(e) => e.retry_after(),
                        _ => None,
                    };
                    tokio::time::sleep(wait.unwrap_or(50 * MS)).await
                }
            }
        }
    })
    .await;
    assert!(gap > Duration::ZERO);
    // Both channels are listened to again.
    let admin_client = admin(&cluster).await;
    let admin_client = notify(admin_client, "weird \"name\"", "three").await;
    let _admin = notify(admin_client, "jobs", "four").await;
    assert_eq!(
        next_notification(&mut listener).await,
        ("weird \"name\"".into(), "three".into())
    );
    assert_eq!(
        next_notification(&mut listener).await,
        ("jobs".into(), "four".into())
    );
}

/// The listener finds its connection gone while the server is down, then `listen` (not
/// `recv`) is what reconnects: the next `recv` still reports the reconnect first, and every
/// channel, old and new, is listened to.
#[tokio::test]
async fn a_reconnect_made_by_listen_is_reported_by_the_next_recv() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let listener_pool: Pool = builder(&cluster)
        .max_size(1)
        .connect_timeout(Some(Duration::from_secs(2)))
        .build()
        .unwrap();
    let mut listener = livepool_postgres::PgListener::new(listener_pool);
    listener.listen("before").await.expect("listen");
    cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .expect("stop");
    // recv finds the connection gone and cannot make a new one while the server is down.
    match within(30, "recv while the server is down", listener.recv()).await {
        Err(livepool_postgres::ListenerError::Connect(_)) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .expect("start again");
    within(30, "listen reconnects", async {
        loop {
            match listener.listen("after").await {
                Ok(()) => break,
                Err(livepool_postgres::ListenerError::Connect(e)) => {
                    tokio::time::sleep(e.retry_after().unwrap_or(50 * MS)).await
                }
                Err(e) => panic!("listen: {e}"),
            }
        }
    })
    .await;
    match within(10, "the reconnect is reported", listener.recv()).await {
        Ok(livepool_postgres::ListenerMessage::Reconnected { gap }) => {
            assert!(gap > Duration::ZERO)
        }
        other => panic!("expected Reconnected first, got {other:?}"),
    }
    let admin_client = admin(&cluster).await;
    for channel in ["before", "after"] {
        admin_client
            .query_one("SELECT pg_notify($1, 'x')", &[&channel])
            .await
            .expect("notify");
        assert_eq!(
            next_notification(&mut listener).await,
            (channel.to_string(), "x".to_string())
        );
    }
}

#[tokio::test]
async fn a_restart_with_queries_in_flight_gives_no_wrong_row_and_no_hang() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster).max_size(8).build().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed, wrong, hung) = (
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    let ok_after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let restarted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8i64 {
        let pool = pool.clone();
        let (stop, ok, failed, wrong, hung, ok_after, restarted) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            wrong.clone(),
            hung.clone(),
            ok_after.clone(),
            restarted.clone(),
        );
        workers.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let mut i = 0i64;
            // Bounded: the test stops it, and at most 100,000 requests per worker.
            while !stop.load(Relaxed) && i < 100_000 {
                i += 1;
                let token = w * 1_000_000 + i;
                let request = async {
                    let conn = pool.get().await.map_err(|e| e.to_string())?;
                    let row = conn
                        .query_one("SELECT $1::int8, pg_sleep(0.002)::text", &[&token])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<i64, String>(row.get(0))
                };
                match tokio::time::timeout(Duration::from_secs(10), request).await {
                    Ok(Ok(got)) if got == token => {
                        ok.fetch_add(1, Relaxed);
                        if restarted.load(Relaxed) {
                            ok_after.fetch_add(1, Relaxed);
                        }
                    }
                    Ok(Ok(_)) => {
                        wrong.fetch_add(1, Relaxed);
                    }
                    Ok(Err(_)) => {
                        failed.fetch_add(1, Relaxed);
                        tokio::time::sleep(5 * MS).await;
                    }
                    Err(_) => {
                        hung.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
    use std::sync::atomic::Ordering::Relaxed;
    wait_until(20, "requests flowing", || ok.load(Relaxed) >= 200).await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .expect("restart");
    restarted.store(true, Relaxed);
    wait_until(30, "requests flowing after the restart", || {
        ok_after.load(Relaxed) >= 200
    })
    .await;
    stop.store(true, Relaxed);
    within(20, "workers stop", async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    let (ok, failed, wrong, hung) = (
        ok.load(Relaxed),
        failed.load(Relaxed),
        wrong.load(Relaxed),
        hung.load(Relaxed),
    );
    println!(
        "restart with queries in flight: {ok} ok, {failed} failed, {wrong} wrong, {hung} hung"
    );
    assert_eq!((wrong, hung), (0, 0), "{ok} ok, {failed} failed");
    drop(cluster);
}

#[tokio::test]
async fn refill_authenticates_members_heartbeats_keep_them_and_a_notify_is_harmless() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool: Pool = builder(&cluster)
        .min_idle(2)
        .max_size(4)
        .heartbeat_interval(300 * MS)
        .heartbeat_timeout(200 * MS)
        .heartbeat_jitter(0.0)
        .build()
        .unwrap();
    let mut events = pool.events();
    // The refill opens both members in the background, SCRAM included: the server lists two
    // authenticated sessions of ours before anyone called get().
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let admin = admin(&cluster).await;
    let ours: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'livepool-postgres-test' \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ours, 2);
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.connect_errors), (2, 0), "{stats:?}");

    // Idle members are pinged through the client every 300 ms, and stay.
    let before = pool.statistics().heartbeats;
    wait_until(20, "four more heartbeats", || {
        pool.statistics().heartbeats >= before + 4
    })
    .await;

    // A member listening on a channel gets a notification while idle: its driver reads it
    // (no one is listening through it, so it is dropped), the member stays.
    let conn = pool.get().await.expect("get");
    conn.batch_execute("LISTEN ch").await.unwrap();
    let id = conn.id();
    drop(conn);
    admin.batch_execute("NOTIFY ch, 'x'").await.unwrap();
    let before = pool.statistics().heartbeats;
    wait_until(20, "heartbeats after the notification", || {
        pool.statistics().heartbeats >= before + 4
    })
    .await;
    let (a, b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    assert!(
        a.id() == id || b.id() == id,
        "the member that was notified is gone"
    );
    for c in [&a, &b] {
        let n: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(n, 1);
    }
    drop((a, b));
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    assert_eq!(stats.created, 2, "{stats:?}");
    assert!(events.try_recv().expect("events").is_none(), "an eviction");
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_a_config_error_not_the_endpoints() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let wrong = "Wr0ng-Pa55word-xyzzy";
    let mut bad = config(&cluster);
    bad.password(wrong);
    let mut none = Config::new();
    none.user(cluster.user()).dbname("postgres");
    for (cfg, words) in [(bad, "28P01"), (none, "password missing")] {
        // Breaker defaults.
        let pool: Pool = livepool::Pool::builder(cluster.addr())
            .protocol(Postgres::new(cfg))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let mut fresh = 0u64;
        for i in 0..20 {
            let e = within(15, "get with a bad password", pool.get())
                .await
                .expect_err("a bad password must not give a connection");
            let shown = format!("{e} / {e:?}");
            assert!(!shown.contains(wrong), "the password leaked: {shown}");
            assert!(!shown.contains(cluster.password()), "a password leaked");
            assert!(
                shown.contains(words),
                "get #{i}: not the real cause: {shown}"
            );
            assert!(e.is_config() && !e.is_circuit_open(), "get #{i}: {shown}");
            fresh += u64::from(e.retry_after().is_none());
        }
        let elapsed = started.elapsed();
        // Paced: at most one connect a second (plus the first), without the breaker.
        assert!(
            fresh >= 1 && fresh <= elapsed.as_secs() + 2,
            "{fresh} in {elapsed:?}"
        );
        let stats = pool.statistics();
        assert_eq!(stats.breaker_state, BreakerState::Closed, "{stats:?}");
        assert_eq!((stats.config_errors, stats.connect_errors), (fresh, 0));
    }
}

/// Postgres' own idle limit (`idle_session_timeout`, which ends a session with `57P05`) under
/// a longer heartbeat: the pool's idle-limit detector finds it from the terminations.
#[tokio::test]
async fn idle_session_timeout_is_detected_as_the_servers_idle_limit() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let mut cfg = config(&cluster);
    cfg.options("-c idle_session_timeout=1000");
    let pool: Pool = livepool::Pool::builder(cluster.addr())
        .protocol(Postgres::new(cfg))
        .connect_timeout(Some(Duration::from_secs(10)))
        .min_idle(2)
        .heartbeat_interval(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let figure = within(60, "the idle limit is detected", async {
        loop {
            if let Some(limit) = pool.statistics().server_idle_limit {
                break limit;
            }
            tokio::time::sleep(50 * MS).await;
        }
    })
    .await;
    let stats = pool.statistics();
    assert!(
        stats.evicted(EvictReason::Terminated) >= 3,
        "{:?}",
        stats.evictions()
    );
    // The pool cannot see a close before it happens, nor much later than the server's
    // timer: half the limit to three times it, whatever the machine's load.
    assert!(
        figure >= Duration::from_millis(500) && figure <= Duration::from_secs(3),
        "detected {figure:?} for a 1 s idle_session_timeout"
    );
}
