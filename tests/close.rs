//! `close()` and dropping the pool: waiters fail with a closed error, returned connections
//! are closed, the reaper task ends and no file descriptor is left behind. One test per
//! binary, because it counts the whole process's file descriptors.

use std::time::Duration;

use livepool::{EvictReason, FramePing, Pool};
use livepool_testkit::*;

#[tokio::test]
async fn close_and_drop_leave_nothing_behind() {
    let server = FaultServer::start().await;
    let rt = tokio::runtime::Handle::current();
    let before_any_pool = rt.metrics().num_alive_tasks();
    // The first connection livepool opens on a runtime spawns that runtime's liveness task
    // (see `Pool`'s docs), which lives as long as the runtime: one per runtime, never one per
    // pool. A first pool makes it; the pools below must leave nothing beyond it.
    let first = Pool::builder(server.addr).build().unwrap();
    drop(first.get().await.unwrap());
    drop(first);
    wait_until(5, "the first pool's reaper ended", || {
        rt.metrics().num_alive_tasks() <= before_any_pool + 1
    })
    .await;
    let base_tasks = rt.metrics().num_alive_tasks();
    assert_eq!(
        base_tasks,
        before_any_pool + 1,
        "exactly one task stays per runtime"
    );
    let base_fds = open_fds();

    // 1. close(): a waiter fails, a held connection is closed when returned.
    let pool = Pool::builder(server.addr)
        .max_size(2)
        .min_idle(1)
        .wait_timeout(None)
        .protocol(FramePing::new())
        .heartbeat_interval(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(20))
        .reap_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();
    exchange(&mut a, 1).await.unwrap();
    exchange(&mut b, 2).await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    wait_until(5, "waiter queued", || pool.status().waiting == 1).await;
    drop(a); // back to the pool, idle
    // The waiter may have taken `a`; either way close() must end everything.
    pool.close();
    let res = within(5, "waiter result", waiter).await.unwrap();
    if let Err(e) = &res {
        assert!(e.is_closed(), "waiter got {e}");
    }
    assert!(pool.get().await.unwrap_err().is_closed());
    drop(b);
    wait_until(5, "all members closed", || pool.status().size == 0).await;
    let s = pool.statistics();
    assert_eq!(
        s.evicted(EvictReason::PoolClosed),
        s.created,
        "{:?}",
        s.evictions()
    );
    drop(pool);
    wait_until(5, "reaper task ended", || {
        rt.metrics().num_alive_tasks() <= base_tasks
    })
    .await;
    wait_until(5, "fds back to baseline after close", || {
        open_fds() <= base_fds
    })
    .await;

    // 2. Dropping the last handle without close(): same outcome.
    let pool = Pool::builder(server.addr)
        .max_size(4)
        .min_idle(2)
        .build()
        .unwrap();
    wait_until(5, "refill", || pool.status().idle == 2).await;
    let mut c = pool.get().await.unwrap();
    exchange(&mut c, 3).await.unwrap();
    let weak_status = pool.clone();
    drop(pool);
    drop(weak_status);
    drop(c); // returned after the pool is gone: closed
    wait_until(5, "reaper task ended after drop", || {
        rt.metrics().num_alive_tasks() <= base_tasks
    })
    .await;
    wait_until(5, "fds back to baseline after drop", || {
        open_fds() <= base_fds
    })
    .await;
}
