//! A server that stops answering (a real `redis-server`, SIGSTOPped: the kernel still
//! accepts its connections and acknowledges what is sent, nobody answers). The requests in
//! flight fail at the response timeout; the members they leave are given up after one more
//! response timeout (not the pool's heartbeat timeout) as `unanswered`, which counts against
//! the endpoint; new connections fail their setup at the response timeout (not the connect
//! timeout), which counts too. Those failures open the circuit breaker, so that later
//! callers fail at once, without a connect. After SIGCONT the pool
//! serves again. Every wait is bounded far below the pool's own bounds (30 s), so a wait for
//! any of those fails the test; nothing asserts a duration.

use std::time::Duration;

use livepool::{BreakerState, EvictReason};
use livepool_redis::redis::{self, RedisError};
use livepool_redis::{Conn, Pool, Redis, RedisConfig};
use livepool_testkit::redis_server::RedisServer;
use livepool_testkit::redis_stop::{Stopped, server_pid};
use livepool_testkit::{wait_until, within};

/// The pool's own bounds: the connect timeout, the wait for a member, the heartbeat timeout
/// (which bounds a settle too). Far beyond every `within` of the test.
const POOL_BOUND: Duration = Duration::from_secs(30);

/// What the last failed setup said, as the breaker repeats it.
const NO_SETUP_REPLY: &str = "no reply to the setup within";
/// What the pool says of a drain that was not answered (the breaker's last error then).
const UNANSWERED: &str = "not answered in time";

/// The breaker's error names the last failure counted: an unanswered drain or setup.
fn names_the_silence(e: &livepool::Error) -> bool {
    let text = e.to_string();
    text.contains(NO_SETUP_REPLY) || text.contains(UNANSWERED)
}

async fn echo(conn: &mut Conn, token: &str) -> Result<String, RedisError> {
    redis::cmd("ECHO").arg(token).query_async(conn).await
}

/// Connect attempts so far, successful or not.
fn connects(pool: &Pool) -> u64 {
    let s = pool.statistics();
    s.created + s.connect_errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_opens_the_breaker_and_later_callers_fail_fast_until_it_resumes() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let pid = server_pid(&server).await;
    // The defaults of livepool-redis (a response timeout of 500 ms, the breaker's three
    // failures); every bound of the pool's own is out of the test's reach.
    let pool: Pool = livepool::Pool::builder(server.addr())
        .protocol(Redis::new(RedisConfig::new()))
        .max_size(4)
        .connect_timeout(Some(POOL_BOUND))
        .wait_timeout(Some(POOL_BOUND))
        .heartbeat_interval(2 * POOL_BOUND)
        .heartbeat_timeout(POOL_BOUND)
        .build()
        .expect("build the pool");

    // Four members, each answered once.
    let mut warm = Vec::new();
    for i in 0..4 {
        let mut conn = within(10, "get", pool.get()).await.expect("get");
        let token = format!("warm-{i}");
        assert_eq!(echo(&mut conn, &token).await.expect("ECHO"), token);
        warm.push(conn);
    }
    drop(warm);
    assert_eq!(connects(&pool), 4);

    let stopped = Stopped::stop(pid).await;

    // 1. Four requests in flight: each fails cleanly at its response timeout, its reply
    //    still owed (the drain reads it, off the caller's path).
    let in_flight: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.expect("an idle member");
                let e = echo(&mut conn, &format!("in-flight-{i}"))
                    .await
                    .expect_err("the server is stopped");
                (e, conn.owed())
            })
        })
        .collect();
    for t in in_flight {
        let (e, owed) = within(10, "a request in flight", t).await.expect("task");
        assert!(e.is_timeout(), "{e}");
        assert_eq!(owed, 1);
    }

    // 2. One caller after another. The first waits for a member a drain holds (bounded by
    //    the response timeout: a drain bounded by the 30 s heartbeat timeout would not end
    //    within the 10 s of `within`). Each drain given up counts against the endpoint; a
    //    caller that gets a slot before the breaker opens opens a new connection: the
    //    kernel accepts it, the setup's `PING` is not answered, and the setup fails at the
    //    response timeout (not the 30 s connect timeout), which counts too. The third
    //    failure counted opens the breaker; at least one drain comes first (every member
    //    is held by one), so at most three setups fail before it.
    let mut failed_setups = 0;
    let opened = within(10, "the breaker opens", async {
        loop {
            match pool.get().await {
                Ok(conn) => panic!("the server is stopped, yet a connection came: {conn:?}"),
                Err(e) if e.is_circuit_open() => break e,
                Err(e) => {
                    assert!(e.is_setup(), "{e}");
                    assert!(e.to_string().contains(NO_SETUP_REPLY), "{e}");
                    failed_setups += 1;
                }
            }
        }
    })
    .await;
    assert!(
        failed_setups <= 3,
        "{failed_setups} setups failed before the breaker opened"
    );
    assert!(names_the_silence(&opened), "{opened}");
    assert!(opened.retry_after().is_some(), "{opened:?}");
    wait_until(10, "the four drains given up as unanswered", || {
        pool.statistics().evicted(EvictReason::Unanswered) == 4
    })
    .await;

    // 3. From now on callers fail at once, with the breaker's error, without a connect;
    //    only a probe (one per open period, 200 ms and more) connects. A hundred callers in
    //    a row cost a probe or two, not a connect each.
    let before = connects(&pool);
    let (mut fast, mut probes) = (0u64, 0u64);
    for _ in 0..100 {
        match within(10, "get while the breaker is open", pool.get()).await {
            Ok(conn) => panic!("the server is stopped, yet a connection came: {conn:?}"),
            Err(e) if e.is_circuit_open() => {
                assert!(names_the_silence(&e), "{e}");
                fast += 1;
            }
            Err(e) => {
                // A probe: a connect, whose setup is not answered either.
                assert!(
                    e.is_setup() && e.to_string().contains(NO_SETUP_REPLY),
                    "{e}"
                );
                probes += 1;
            }
        }
    }
    assert_eq!(
        connects(&pool) - before,
        probes,
        "a connect only for a probe"
    );
    assert!(fast >= 95, "{fast} of 100 failed fast, {probes} probed");
    println!(
        "stopped server: 4 timed out in flight, {failed_setups} failed setups opened the \
         breaker, then {fast} of 100 callers failed fast ({probes} probes)"
    );

    // 4. SIGCONT: a probe's setup is answered, the breaker closes, every caller is served.
    stopped.resume().await;
    let token = within(10, "the pool serves again", async {
        loop {
            match pool.get().await {
                Ok(mut conn) => break echo(&mut conn, "back").await.expect("ECHO"),
                // The open period's rest, or a probe that timed out just before the server
                // went on: ask again.
                Err(e) if e.is_circuit_open() || e.is_setup() => {
                    let rest = e.retry_after().unwrap_or(Duration::from_millis(10));
                    tokio::time::sleep(rest.min(Duration::from_millis(200))).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(token, "back");
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    let served: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.expect("get after the resume");
                let token = format!("after-{i}");
                (echo(&mut conn, &token).await.expect("ECHO"), token)
            })
        })
        .collect();
    for t in served {
        let (got, want) = within(10, "a request after the resume", t)
            .await
            .expect("task");
        assert_eq!(got, want);
    }
}
