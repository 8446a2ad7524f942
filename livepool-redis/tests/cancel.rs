//! A cancelled command costs no reconnect and never hands a stale reply to anyone (a real
//! `redis-server` the tests start): the replies it still owes are read and dropped off the
//! caller's path (or by the holder's next call), within the response timeout plus the
//! command's own block; a command that may block forever is not waited for (its connection
//! is closed). And a large reply does not stay resident in an idle member.

use std::time::Duration;

use livepool::EvictReason;
use livepool_redis::redis::{self, AsyncCommands};
use livepool_redis::{Conn, Pool, Redis, RedisConfig};
use livepool_testkit::redis_server::RedisServer;
use livepool_testkit::redis_stop::{Stopped, server_pid};
use livepool_testkit::within;

const CANCELLED: usize = 50;

fn pool_of_one(redis: &RedisServer) -> Pool {
    livepool::Pool::builder(redis.addr())
        .protocol(Redis::new(RedisConfig::new()))
        .max_size(1)
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("build the pool")
}

async fn get(pool: &Pool) -> Conn {
    within(10, "get", pool.get()).await.expect("a connection")
}

/// Polls `fut` until it is parked waiting for the server (so that dropping it cancels a
/// command that was sent and not answered), at most a few polls.
async fn cancel_once_parked<F: std::future::Future>(fut: F) {
    let mut fut = std::pin::pin!(fut);
    // One poll writes the command and parks on the reply.
    let polled = futures_util::poll!(fut.as_mut());
    assert!(polled.is_pending(), "answered before it could be cancelled");
}

/// 50 `BLPOP`s, each cancelled while the server holds it: half end by their own timeout
/// (a nil reply owed), half receive a value pushed after the cancel (an array reply owed).
/// Each next caller on the same (only) connection gets its own reply, and one connection
/// served all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cancelled_blpops_make_one_connection_and_no_stale_reply() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool_of_one(&server);
    let mut pusher = server.admin().await;
    for i in 0..CANCELLED {
        let mut conn = get(&pool).await;
        let list = format!("cancel-list-{i}");
        cancel_once_parked(conn.blpop::<_, Option<(String, String)>>(&list, 0.05)).await;
        assert_eq!(conn.owed(), 1, "the BLPOP's reply is owed");
        drop(conn);
        if i % 2 == 1 {
            // The cancelled BLPOP may still be blocked: a value for it is part of the reply
            // owed (or, if it timed out already, stays in the list).
            let _: () = pusher.rpush(&list, format!("value-{i}")).await.unwrap();
        }
        let mut next = get(&pool).await;
        let token = format!("token-{i}");
        let echoed: String = redis::cmd("ECHO")
            .arg(&token)
            .query_async(&mut next)
            .await
            .unwrap();
        assert_eq!(echoed, token, "iteration {i}: a stale reply");
        assert!(next.is_clean());
    }
    let stats = pool.statistics();
    println!(
        "connections created for {CANCELLED} cancelled BLPOPs: {} (evicted {})",
        stats.created,
        stats.evicted_total()
    );
    assert_eq!(stats.created, 1);
    assert_eq!(stats.evicted_total(), 0);
}

/// The holder's own next call drops what its cancelled call owed: a pipeline of three
/// dropped after it was sent, then a command on the same checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_call_of_the_same_holder_drops_the_replies_owed() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool_of_one(&server);
    let mut conn = get(&pool).await;
    let _: () = conn.set("k", "mine").await.unwrap();
    {
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP").arg("nothing").arg(0.05).get("k").get("k");
        cancel_once_parked(pipe.query_async::<redis::Value>(&mut conn)).await;
    }
    assert_eq!(conn.owed(), 3);
    let n: i64 = conn.incr("n", 7).await.unwrap();
    assert_eq!(n, 7, "its own reply, not the BLPOP's nil or k's value");
    assert_eq!(conn.owed(), 0);
    assert!(conn.is_clean());
}

/// A command that may block forever (`BLPOP … 0`) is not waited for: the connection is
/// closed and the next caller gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_command_that_may_block_forever_closes_the_connection() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool_of_one(&server);
    let mut conn = get(&pool).await;
    cancel_once_parked(conn.blpop::<_, Option<(String, String)>>("forever", 0.0)).await;
    drop(conn);
    let mut next = get(&pool).await;
    let pong: String = redis::cmd("PING").query_async(&mut next).await.unwrap();
    assert_eq!(pong, "PONG");
    let stats = pool.statistics();
    assert_eq!(stats.created, 2);
    assert_eq!(
        stats.evicted(EvictReason::Cancelled),
        1,
        "{:?}",
        stats.evictions()
    );
}

/// After one 64 MiB reply, the member goes back with its read buffer shrunk: the process
/// holds no copy of the reply once the caller dropped its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reply_does_not_stay_resident_in_an_idle_member() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    const SIZE: usize = 64 << 20;
    let mut loader = server.admin().await;
    let _: () = loader.set("big", vec![b'x'; SIZE]).await.unwrap();
    drop(loader);
    let pool = pool_of_one(&server);
    let mut conn = get(&pool).await;
    let small = conn.buffer_capacity();
    let rss_before = resident_bytes();
    let big: Vec<u8> = conn.get("big").await.unwrap();
    assert_eq!(big.len(), SIZE);
    drop(big);
    assert!(
        conn.buffer_capacity() <= small.max(64 << 10),
        "buffer kept {} bytes",
        conn.buffer_capacity()
    );
    drop(conn);
    let mut conn = get(&pool).await;
    assert!(conn.buffer_capacity() <= 64 << 10);
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    if let (Some(before), Some(after)) = (rss_before, resident_bytes()) {
        let kept = after.saturating_sub(before);
        println!(
            "resident memory kept after one {} MiB reply: {:.1} MiB",
            SIZE >> 20,
            kept as f64 / (1 << 20) as f64
        );
        // Freed, not merely unused: well under the reply's size (the allocator may keep
        // some pages; it must not keep the reply).
        assert!(kept < SIZE as u64 / 4, "kept {kept} bytes resident");
    }
}

/// The process's resident set (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The response timeout turns a server that does not answer (here: stopped by SIGSTOP, as
/// a server stalls) into a clean, prompt failure; the late reply is drained off the
/// caller's path within one more response timeout, so the connection serves the next
/// caller once the server answers again (no reconnect, no stale reply). A blocking command
/// gets its own timeout on top: a 1 s `BLPOP` is not cut by the 500 ms response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_timeout_fails_cleanly_and_costs_no_reconnect() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pid = server_pid(&server).await;
    let pool: Pool = livepool::Pool::builder(server.addr())
        .protocol(Redis::new(
            RedisConfig::new().response_timeout(Some(Duration::from_millis(500))),
        ))
        .max_size(1)
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("build the pool");
    let mut conn = get(&pool).await;
    let popped: Option<(String, String)> = within(5, "BLPOP 1 s", conn.blpop("none", 1.0))
        .await
        .expect("a blocking command is not cut by the response timeout");
    assert_eq!(popped, None);
    let _: () = conn.set("k", "mine").await.unwrap();

    // The server stops: the GET times out, as an error.
    let stopped = Stopped::stop(pid).await;
    let err = within(5, "the GET fails", conn.get::<_, String>("k"))
        .await
        .expect_err("the server is stopped");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(conn.owed(), 1, "its reply is still owed");
    // Given back: the drain waits for the reply off the caller's path. The server goes on
    // at once, well within the drain's bound (one more response timeout), and answers.
    drop(conn);
    stopped.resume().await;
    // The late reply was drained; the same connection serves the next caller.
    let mut next = get(&pool).await;
    let token: String = redis::cmd("ECHO")
        .arg("after-the-timeout")
        .query_async(&mut next)
        .await
        .unwrap();
    assert_eq!(token, "after-the-timeout");
    assert!(next.is_clean());
    let stats = pool.statistics();
    assert_eq!((stats.created, stats.evicted_total()), (1, 0));
}

/// A `BLPOP` of 1 s cancelled by its caller (a `tokio::time::timeout` shorter than it): the
/// drain waits for its reply as long as the command may block plus the response timeout,
/// so a slow command of a live server costs no reconnect either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_one_second_blpop_is_drained_on_the_same_connection() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pool = pool_of_one(&server);
    let mut conn = get(&pool).await;
    cancel_once_parked(conn.blpop::<_, Option<(String, String)>>("slow-list", 1.0)).await;
    assert_eq!(conn.owed(), 1);
    drop(conn);
    let mut next = get(&pool).await;
    let token: String = redis::cmd("ECHO")
        .arg("after-the-blpop")
        .query_async(&mut next)
        .await
        .unwrap();
    assert_eq!(
        token, "after-the-blpop",
        "its own reply, not the BLPOP's nil"
    );
    let stats = pool.statistics();
    assert_eq!(
        (stats.created, stats.evicted_total()),
        (1, 0),
        "{:?}",
        stats.evictions()
    );
}
