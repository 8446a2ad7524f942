//! A `redis-server` killed and restarted on the same port while eight tasks send commands
//! through the pool, each checking that the reply carries its own unique token: no reply
//! reaches the wrong caller, no request outlives its deadline, and the pool serves again
//! after the restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use livepool_redis::redis;
use livepool_redis::{Redis, RedisConfig};
use livepool_testkit::redis_server::RedisServer;
use livepool_testkit::{wait_until, within};

const TASKS: u64 = 8;
/// Per request: longer than any honest answer, so a request past it is a hang.
const DEADLINE: Duration = Duration::from_secs(5);
/// Per task: the loop stops by itself even if the test's stop flag never comes.
const MAX_REQUESTS: u64 = 200_000;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    ok_after_restart: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    hung: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_commands_in_flight_is_zero_wrong_zero_hung() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let pool = livepool::Pool::builder(server.addr())
        .protocol(Redis::new(RedisConfig::new()))
        .max_size(TASKS as usize)
        .connect_timeout(Some(Duration::from_secs(2)))
        .wait_timeout(Some(Duration::from_secs(2)))
        .build()
        .expect("build the pool");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (pool, tally, stop, restarted) =
            (pool.clone(), tally.clone(), stop.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..MAX_REQUESTS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let token = format!("t{t}-r{i}");
                let after = restarted.load(Ordering::Relaxed);
                let request = async {
                    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                    redis::cmd("ECHO")
                        .arg(&token)
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                };
                match tokio::time::timeout(DEADLINE, request).await {
                    Err(_) => {
                        tally.hung.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        // Failing fast while the server is down: do not spin.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(Ok(reply)) if reply == token => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if after {
                            tally.ok_after_restart.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(_)) => {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let t = tally.clone();
    wait_until(10, "traffic before the restart", || {
        t.ok.load(Ordering::Relaxed) >= 500
    })
    .await;
    server.restart().await;
    restarted.store(true, Ordering::Relaxed);
    let t = tally.clone();
    wait_until(20, "traffic after the restart", || {
        t.ok_after_restart.load(Ordering::Relaxed) >= 500
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        within(15, "worker stops", task).await.expect("worker");
    }
    let (ok, failed, wrong, hung) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.hung.load(Ordering::Relaxed),
    );
    println!(
        "restart with commands in flight: ok {ok}, failed {failed}, wrong {wrong}, hung {hung}"
    );
    assert_eq!(wrong, 0, "a reply reached the wrong caller");
    assert_eq!(hung, 0, "a request outlived its deadline");
}
