//! The `Postgres` protocol through the pool, against a real throwaway server (one cluster per
//! test; skipped when PostgreSQL is not installed, unless `LIVEPOOL_REQUIRE_ALL=1`): SCRAM
//! setup on refill, heartbeats, a wrong password and the breaker, a transaction left open,
//! notifications on an idle member, `pg_terminate_backend`, a server restart. Every wait is
//! bounded and panics with what it waited for.
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use livepool::postgres::{PgConfig, PgSession, Postgres};
use livepool::{BreakerConfig, BreakerState, Builder, EvictReason, Pool};
use support::pg::PgCluster;
use support::{wait_until, within};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const MS: Duration = Duration::from_millis(1);
const APP: &str = "livepool-pool-test";

/// One cluster at a time: each test starts its own, and the machine may have two cores. The
/// heartbeat test's 200 ms deadline should not compete with five `initdb` runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(c: &PgCluster) -> PgConfig {
    PgConfig::new(c.user())
        .password(c.password())
        .database("postgres")
        .application_name(APP)
}

fn builder(c: &PgCluster) -> Builder<Postgres> {
    Pool::builder(c.addr())
        .protocol(Postgres::new(config(c)))
        .connect_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .reap_interval(100 * MS)
}

/// A session outside the pool, for the test's own queries.
async fn admin(c: &PgCluster) -> PgSession<TcpStream> {
    let stream = within(10, "admin TCP connect", TcpStream::connect(c.addr()))
        .await
        .expect("admin TCP connect");
    within(10, "admin startup", PgSession::startup(stream, &config(c)))
        .await
        .expect("admin startup")
}

async fn query<S: AsyncRead + AsyncWrite + Unpin + Send>(
    s: &mut PgSession<S>,
    sql: &str,
) -> Vec<Vec<Option<String>>> {
    within(10, sql, s.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The single value of a one-row, one-column result.
async fn scalar<S: AsyncRead + AsyncWrite + Unpin + Send>(
    s: &mut PgSession<S>,
    sql: &str,
) -> String {
    let rows = query(s, sql).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    assert_eq!(rows[0].len(), 1, "{sql}: {rows:?}");
    rows[0][0].clone().unwrap_or_else(|| panic!("{sql}: NULL"))
}

#[tokio::test]
async fn scram_setup_on_refill_queries_and_heartbeats() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool = builder(&cluster)
        .min_idle(2)
        .max_size(4)
        .heartbeat_interval(300 * MS)
        .heartbeat_timeout(200 * MS)
        .heartbeat_jitter(0.0)
        .build()
        .unwrap();
    let mut events = pool.events();

    // The refill opens both members in the background, SCRAM included: the server lists two
    // authenticated backends of ours before anyone called get().
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let mut adm = admin(&cluster).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP}' \
         AND usename = '{}' AND pid <> pg_backend_pid()",
        cluster.user()
    );
    assert_eq!(scalar(&mut adm, &sql).await, "2");
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.connect_errors), (2, 0), "{stats:?}");

    // Both idle members are ready as they are: checked out together, no new connect.
    let mut a = pool.get().await.expect("get a");
    let mut b = pool.get().await.expect("get b");
    assert_eq!(pool.statistics().created, 2);
    assert!(a.is_idle() && b.is_idle(), "{:?} {:?}", *a, *b);
    assert!(a.backend_pid() > 0 && b.backend_pid() > 0);
    assert_ne!(a.backend_pid(), b.backend_pid());
    assert_eq!(scalar(&mut *a, "SELECT current_user").await, cluster.user());
    assert_eq!(
        scalar(&mut *b, "SELECT pg_backend_pid()").await,
        b.backend_pid().to_string()
    );
    drop((a, b));

    // Several tasks at once (more than min_idle: the pool grows to max_size).
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..6u32 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..5u32 {
                let mut c = pool.get().await.expect("get in task");
                let sql = format!("SELECT {t} * 100 + {i}");
                let want = (t * 100 + i).to_string();
                assert_eq!(scalar(&mut *c, &sql).await, want);
                assert_eq!(scalar(&mut *c, "SELECT 1").await, "1");
            }
        });
    }
    within(30, "query tasks", async {
        while let Some(res) = tasks.join_next().await {
            res.expect("query task");
        }
    })
    .await;
    let created = pool.statistics().created;
    assert!((2..=4).contains(&created), "created {created}");

    // Idle members are pinged (Sync → ReadyForQuery) every 300 ms.
    let before = pool.statistics().heartbeats;
    wait_until(20, "four more heartbeats", || {
        pool.statistics().heartbeats >= before + 4
    })
    .await;
    // And stay usable after their heartbeats.
    let mut c = pool.get().await.expect("get after heartbeats");
    assert_eq!(scalar(&mut *c, "SELECT 1").await, "1");
    drop(c);

    let stats = pool.statistics();
    assert_eq!(stats.breaker_state, BreakerState::Closed, "{stats:?}");
    assert_eq!(stats.breaker_transitions, 0, "{stats:?}");
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    assert_eq!(stats.connect_errors, 0, "{stats:?}");
    // Nothing was evicted: not by a heartbeat, not on return.
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    assert!(
        events.try_recv().expect("events").is_none(),
        "unexpected eviction"
    );
    assert_eq!(stats.created, created, "members were replaced: {stats:?}");
}

#[tokio::test]
async fn wrong_or_missing_password_is_a_config_error_not_the_endpoints() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let wrong = "Wr0ng-Pa55word-xyzzy";
    assert_ne!(wrong, cluster.password());
    let secret_free = |text: &str| {
        assert!(!text.contains(wrong), "the password leaked: {text}");
        assert!(
            !text.contains(cluster.password()),
            "a password leaked: {text}"
        );
    };
    // A wrong password (the server rejects it: 28P01) and none at all (the server asks for
    // SCRAM, the client has nothing to answer with).
    for (cfg, words) in [
        (
            PgConfig::new(cluster.user())
                .password(wrong)
                .database("postgres"),
            "password authentication failed",
        ),
        (
            PgConfig::new(cluster.user()).database("postgres"),
            "no password is configured",
        ),
    ] {
        // Breaker defaults.
        let pool = Pool::builder(cluster.addr())
            .protocol(Postgres::new(cfg))
            .connect_timeout(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        let mut breaker_events = pool.breaker_events();
        let started = std::time::Instant::now();
        let (mut fresh, mut held) = (0u64, 0u64);
        for i in 0..20 {
            let e = within(15, "get with a bad password", pool.get())
                .await
                .expect_err("a bad password must not give a connection");
            let shown = e.to_string();
            secret_free(&shown);
            secret_free(&format!("{e:?}"));
            assert!(
                shown.contains(words),
                "get #{i}: not the real cause: {shown}"
            );
            assert!(e.is_config(), "get #{i}: {shown}");
            assert!(
                !e.is_setup() && !e.is_circuit_open() && !e.is_connect(),
                "get #{i}: {shown}"
            );
            match e.retry_after() {
                Some(_) => held += 1,
                None => {
                    let src = std::error::Error::source(&e).expect("error source");
                    let setup = src
                        .downcast_ref::<livepool::SetupError>()
                        .unwrap_or_else(|| panic!("source is not a SetupError: {src:?}"));
                    assert!(setup.is_config(), "{setup:?}");
                    fresh += 1;
                }
            }
        }
        let elapsed = started.elapsed();
        assert!(fresh >= 1 && held >= 1, "fresh {fresh}, held {held}");
        assert!(
            fresh <= elapsed.as_secs() + 2,
            "{fresh} connects in {elapsed:?}: not paced"
        );
        // The endpoint is fine: the breaker heard nothing.
        let stats = pool.statistics();
        assert_eq!(stats.breaker_state, BreakerState::Closed, "{stats:?}");
        assert_eq!(stats.breaker_transitions, 0, "{stats:?}");
        assert_eq!(
            (stats.created, stats.connect_errors, stats.config_errors),
            (0, 0, fresh),
            "{stats:?}"
        );
        assert!(matches!(breaker_events.try_recv(), Ok(None)));
        assert_eq!(pool.status().size, 0);
    }
}

#[tokio::test]
async fn open_transaction_is_not_clean_and_never_reaches_the_next_caller() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool = builder(&cluster).max_size(1).build().unwrap();
    let mut events = pool.events();

    let mut c = pool.get().await.expect("get");
    let (id, pid) = (c.id(), c.backend_pid());
    query(&mut *c, "BEGIN").await;
    query(&mut *c, "CREATE TEMP TABLE left_open (x int)").await;
    assert_eq!(c.transaction_status(), b'T');
    assert!(c.is_broken(), "an open transaction must not go back");
    drop(c);

    let ev = within(5, "NotClean eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.reason, ev.id), (EvictReason::NotClean, id), "{ev:?}");
    assert_eq!(pool.statistics().evicted(EvictReason::NotClean), 1);

    // The next caller (same single slot) gets a new session outside any transaction.
    let mut next = pool.get().await.expect("get after the eviction");
    assert_ne!(next.id(), id);
    assert_ne!(next.backend_pid(), pid);
    assert_eq!(next.transaction_status(), b'I');
    assert!(next.is_idle());
    assert_eq!(scalar(&mut *next, "SELECT 1").await, "1");
    // The table lived only in the abandoned transaction.
    assert_eq!(
        scalar(
            &mut *next,
            "SELECT count(*) FROM pg_class WHERE relname = 'left_open'"
        )
        .await,
        "0"
    );
    drop(next);

    // The server rolled the abandoned transaction back when the pool closed its backend.
    let mut adm = admin(&cluster).await;
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    within(10, "old backend gone", async {
        while scalar(&mut adm, &gone).await != "0" {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await;
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 1, "{:?}", stats.evictions());
    assert_eq!(stats.created, 2, "{stats:?}");
}

#[tokio::test]
async fn notification_on_an_idle_member_is_kept_and_queued() {
    let _serial = SERIAL.lock().await;
    // Single-threaded runtime: the reaper (the idle watch) logs on this thread.
    let (captured, _guard) = support::capture_logs(tracing::Level::TRACE);
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool = builder(&cluster).max_size(1).build().unwrap();
    let mut events = pool.events();

    let mut c = pool.get().await.expect("get");
    let (id, pid) = (c.id(), c.backend_pid());
    query(&mut *c, "LISTEN ch").await;
    assert!(c.is_idle());
    drop(c);
    assert_eq!(pool.status().idle, 1, "LISTEN left the session clean");

    let mut adm = admin(&cluster).await;
    let admin_pid = adm.backend_pid();
    query(&mut adm, "NOTIFY ch, 'x'").await;

    // The idle watch reads the NotificationResponse while the member is idle (nobody has
    // checked it out since) and keeps it.
    let kept = "benign bytes on an idle connection";
    let evicted = "bytes on an idle connection evict it";
    wait_until(10, "the idle member read the notification", || {
        let log = captured.text();
        assert!(
            !log.lines().any(|l| l.contains(evicted)),
            "the notification evicted the member:\n{log}"
        );
        log.lines()
            .any(|l| l.contains(kept) && l.contains(&format!("conn.id={id}")))
    })
    .await;
    assert!(
        events.try_recv().expect("events").is_none(),
        "a notification evicted a member"
    );
    assert_eq!(pool.status().idle, 1);

    // The next checkout is the same member, with the notification queued.
    let mut c = pool.get().await.expect("get after the notification");
    assert_eq!(c.id(), id);
    assert_eq!(c.backend_pid(), pid);
    let got = c.take_notifications();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].channel.as_str(), got[0].payload.as_str(), got[0].pid),
        ("ch", "x", admin_pid),
        "{got:?}"
    );
    assert!(c.take_notifications().is_empty());
    assert_eq!(scalar(&mut *c, "SELECT 1").await, "1");
    drop(c);

    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    assert_eq!(stats.created, 1, "{stats:?}");
}

#[tokio::test]
async fn terminated_idle_member_is_evicted_and_refilled() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool = builder(&cluster).min_idle(2).max_size(2).build().unwrap();
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let mut events = pool.events();

    let c = pool.get().await.expect("get");
    let (id, pid) = (c.id(), c.backend_pid());
    drop(c);
    assert_eq!(pool.status().idle, 2);

    let mut adm = admin(&cluster).await;
    assert_eq!(
        scalar(&mut adm, &format!("SELECT pg_terminate_backend({pid})")).await,
        "t"
    );

    let ev = within(10, "Terminated eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.reason, ev.id), (EvictReason::Terminated, id), "{ev:?}");

    // Refilled to min_idle with a new, authenticated member.
    wait_until(20, "refill after the eviction", || {
        pool.status().idle == 2 && pool.statistics().created == 3
    })
    .await;
    let mut a = pool.get().await.expect("get a");
    let mut b = pool.get().await.expect("get b");
    for c in [&mut a, &mut b] {
        assert_ne!(c.id(), id);
        assert_ne!(c.backend_pid(), pid);
        assert_eq!(scalar(&mut **c, "SELECT 1").await, "1");
    }
    drop((a, b));
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 1, "{:?}", stats.evictions());
    assert_eq!(stats.evicted(EvictReason::Terminated), 1);
    assert_eq!(stats.breaker_state, BreakerState::Closed);
}

#[tokio::test]
async fn server_restart_opens_then_closes_the_breaker_and_refills() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = PgCluster::start().await else {
        return;
    };
    let pool = builder(&cluster)
        .min_idle(2)
        .max_size(4)
        .connect_timeout(Some(Duration::from_secs(2)))
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(3)
                .open_for(500 * MS)
                .max_open_for(Duration::from_secs(1)),
        ))
        .build()
        .unwrap();
    wait_until(20, "refill to min_idle 2", || pool.status().idle == 2).await;
    let ids: HashSet<u64> = {
        let a = pool.get().await.expect("get a");
        let b = pool.get().await.expect("get b");
        [a.id(), b.id()].into()
    };
    let mut events = pool.events();
    let mut breaker_events = pool.breaker_events();

    // Stop (fast mode: every backend sends FATAL 57P01, then closes).
    let mut cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop();
        cluster
    })
    .await
    .expect("stop thread");

    // Both idle members leave the pool, each for the server's close.
    let mut gone = HashSet::new();
    within(10, "both idle members evicted", async {
        while gone.len() < 2 {
            let ev = events.recv().await.expect("event");
            assert!(ids.contains(&ev.id), "unknown member evicted: {ev:?}");
            assert!(
                matches!(ev.reason, EvictReason::Terminated | EvictReason::PeerClosed),
                "{ev:?}"
            );
            gone.insert(ev.id);
        }
    })
    .await;

    // Checkouts fail; failed connects (refill's and ours) open the breaker, after which
    // get() fails fast.
    within(10, "breaker opens", async {
        loop {
            let e = pool.get().await.expect_err("server is down");
            assert!(
                e.is_connect() || e.is_setup() || e.is_server_busy() || e.is_circuit_open(),
                "unexpected error while down: {e}"
            );
            if e.is_circuit_open() {
                break;
            }
            tokio::time::sleep(20 * MS).await;
        }
    })
    .await;
    let ev = within(5, "breaker open event", breaker_events.recv())
        .await
        .expect("breaker event");
    assert_eq!(
        (ev.transition.from, ev.transition.to),
        (BreakerState::Closed, BreakerState::Open),
        "{ev:?}"
    );
    assert!(ev.last_error.is_some(), "{ev:?}");

    // Start again, same port. Nobody calls get(): the pool recovers on its own (the
    // refill's half-open probe succeeds).
    cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .expect("start thread");
    within(30, "breaker closes", async {
        loop {
            let ev = breaker_events.recv().await.expect("breaker event");
            if ev.transition.to == BreakerState::Closed {
                assert_eq!(ev.transition.from, BreakerState::HalfOpen, "{ev:?}");
                break;
            }
        }
    })
    .await;
    wait_until(30, "refill back to min_idle 2", || pool.status().idle == 2).await;
    assert_eq!(pool.status().breaker, BreakerState::Closed);

    let mut a = pool.get().await.expect("get a after restart");
    let mut b = pool.get().await.expect("get b after restart");
    for c in [&mut a, &mut b] {
        assert!(!ids.contains(&c.id()), "an old member survived the restart");
        assert_eq!(scalar(&mut **c, "SELECT 1").await, "1");
    }
    drop((a, b));
    drop(pool);
    drop(cluster);
}
