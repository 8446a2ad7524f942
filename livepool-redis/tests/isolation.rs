//! What one caller leaves on a connection never reaches the next (a real `redis-server` the
//! tests start): `WATCH`, a `SELECT`ed database, a `MULTI` left open, client tracking and a
//! changed client name are undone off the caller's path, on the same connection (no
//! reconnect); `CLIENT REPLY` and `SUBSCRIBE` are refused before they are sent.
//!
//! Each test uses a pool of one connection, so the next caller gets the very connection the
//! last one left (its `CLIENT ID` is checked), and `created == 1` shows it was brought back,
//! not replaced.

use std::time::Duration;

use livepool::EvictReason;
use livepool_redis::redis::{self, AsyncCommands, ErrorKind, Value};
use livepool_redis::{Conn, Pool, Redis, RedisConfig};
use livepool_testkit::redis_admin::AdminSession;
use livepool_testkit::redis_server::RedisServer;
use livepool_testkit::within;

fn pool_of_one(redis: &RedisServer, cfg: RedisConfig) -> Pool {
    livepool::Pool::builder(redis.addr())
        .protocol(Redis::new(cfg))
        .max_size(1)
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("build the pool")
}

async fn get(pool: &Pool) -> Conn {
    within(10, "get", pool.get()).await.expect("a connection")
}

async fn client_id(conn: &mut Conn) -> i64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(conn)
        .await
        .expect("CLIENT ID")
}

/// `WATCH k`, then someone else writes `k`, then an optimistic transaction: nil when the
/// watch is still on (the transaction did not run), the transaction's result otherwise.
async fn transaction_after_foreign_write<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    other: &mut AdminSession,
) -> Option<(i64,)> {
    let _: () = other.set("watched", "changed").await.unwrap();
    redis::pipe()
        .atomic()
        .incr("tx-counter", 1)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_left_behind_does_not_abort_the_next_callers_transaction() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let mut other = server.admin().await;

    // Control, outside the pool: a watch left on makes the next transaction return nil.
    let mut bare = server.admin().await;
    let _: () = redis::cmd("WATCH")
        .arg("watched")
        .query_async(&mut bare)
        .await
        .unwrap();
    assert_eq!(
        transaction_after_foreign_write(&mut bare, &mut other).await,
        None,
        "control: the watch aborts the transaction"
    );

    let pool = pool_of_one(&server, RedisConfig::new());
    let mut first = get(&pool).await;
    let id = client_id(&mut first).await;
    let _: () = redis::cmd("WATCH")
        .arg("watched")
        .query_async(&mut first)
        .await
        .unwrap();
    assert!(!first.is_clean());
    drop(first);

    let mut next = get(&pool).await;
    assert_eq!(
        client_id(&mut next).await,
        id,
        "the same connection, brought back"
    );
    assert!(next.is_clean());
    let ran = transaction_after_foreign_write(&mut next, &mut other).await;
    assert!(ran.is_some(), "the next caller's transaction ran");
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.evicted_total()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_multi_tracking_and_name_are_undone_on_the_same_connection() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let cfg = RedisConfig::new()
        .resp3(true)
        .client_name("isolation")
        .db(1);
    let pool = pool_of_one(&server, cfg);

    // Another database, with a key only there.
    let mut conn = get(&pool).await;
    let id = client_id(&mut conn).await;
    let _: () = redis::cmd("SELECT")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = conn.set("only-in-5", "x").await.unwrap();
    assert_eq!(conn.db(), 5);
    drop(conn);
    let mut conn = get(&pool).await;
    assert_eq!(client_id(&mut conn).await, id);
    assert_eq!(conn.db(), 1);
    let there: Option<String> = conn.get("only-in-5").await.unwrap();
    assert_eq!(there, None, "back on the setup's database");

    // A MULTI left open: the next caller's command runs, it is not queued.
    let _: () = redis::cmd("MULTI").query_async(&mut conn).await.unwrap();
    let queued: Value = redis::cmd("SET")
        .arg("in-multi")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, Value::SimpleString("QUEUED".into()));
    drop(conn);
    let mut conn = get(&pool).await;
    assert_eq!(client_id(&mut conn).await, id);
    let n: i64 = conn.incr("after-multi", 1).await.unwrap();
    assert_eq!(n, 1, "runs at once, not QUEUED");
    let discarded: Option<String> = conn.get("in-multi").await.unwrap();
    assert_eq!(discarded, None, "the abandoned transaction was discarded");

    // Client tracking and another name: RESET and the setup again (name, RESP3, db 1).
    let _: () = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("on")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("someone-else")
        .query_async(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut conn = get(&pool).await;
    assert_eq!(client_id(&mut conn).await, id);
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(info.contains(" name=isolation "), "name restored: {info}");
    assert!(
        info.contains(" db=1 ") && info.contains(" resp=3"),
        "{info}"
    );
    let tracking: Value = redis::cmd("CLIENT")
        .arg("TRACKINGINFO")
        .query_async(&mut conn)
        .await
        .unwrap();
    let shown = format!("{tracking:?}");
    assert!(shown.contains("\"off\""), "tracking off again: {shown}");
    assert!(conn.is_clean());
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.evicted_total()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_break_request_reply_are_refused_before_sending() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool_of_one(&server, RedisConfig::new());
    let mut conn = get(&pool).await;
    for cmd in [
        redis::cmd("CLIENT").arg("REPLY").arg("OFF").clone(),
        redis::cmd("SUBSCRIBE").arg("news").clone(),
        redis::cmd("PSUBSCRIBE").arg("n*").clone(),
        redis::cmd("MONITOR").clone(),
    ] {
        let err = cmd.query_async::<Value>(&mut conn).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Client, "{err}");
    }
    // Nothing was sent: the connection is in step and clean.
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    assert!(conn.is_clean());
    drop(conn);
    assert_eq!(pool.statistics().evicted(EvictReason::NotClean), 0);
}
