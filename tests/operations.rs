//! Operations: graceful drain (both outcomes), leak detection, resize and min_idle at runtime.

use std::time::Duration;

use livepool::{EvictReason, Pool};
use livepool_testkit::*;

const MS: Duration = Duration::from_millis(1);

fn builder(server: &FaultServer) -> livepool::Builder {
    Pool::builder(server.addr)
        .breaker(None)
        .reap_interval(10 * MS)
}

#[tokio::test]
async fn drain_waits_for_checked_out_connections_to_come_back() {
    let server = FaultServer::start().await;
    let pool = builder(&server).build().unwrap();
    let mut c = pool.get().await.unwrap();
    exchange(&mut c, 1).await.unwrap();
    let idle = pool.get().await.unwrap();
    drop(idle);
    let drain = tokio::spawn({
        let pool = pool.clone();
        async move { pool.drain(Duration::from_secs(10)).await }
    });
    wait_until(5, "closed to new checkouts", || pool.is_closed()).await;
    assert!(pool.get().await.unwrap_err().is_closed());
    // The holder finishes its work and returns the connection: drain completes, nothing forced.
    assert_eq!(exchange(&mut c, 2).await.unwrap(), token(2));
    drop(c);
    let forced = within(5, "drain", drain).await.unwrap();
    assert_eq!(forced, 0);
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.statistics().evicted(EvictReason::PoolClosed), 2);
}

#[tokio::test]
async fn drain_timeout_shuts_down_what_is_still_out() {
    let server = FaultServer::start().await;
    let pool = builder(&server).build().unwrap();
    let mut c = pool.get().await.unwrap();
    exchange(&mut c, 1).await.unwrap();
    let forced = within(5, "drain", pool.drain(50 * MS)).await;
    assert_eq!(forced, 1);
    // The holder's next exchange fails instead of hanging, and the connection is not reused.
    let res = within(5, "exchange on a drained connection", exchange(&mut c, 2)).await;
    assert!(
        res.is_err(),
        "a forcibly closed connection still worked: {res:?}"
    );
    drop(c);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn leak_detection_reports_once_per_checkout() {
    // This test's runtime is single-threaded, so the reaper logs on this thread.
    let (captured, _guard) = livepool_testkit::capture_logs(tracing::Level::WARN);
    let server = FaultServer::start().await;
    let pool = builder(&server)
        .leak_threshold(Some(30 * MS))
        .build()
        .unwrap();
    let short = pool.get().await.unwrap();
    drop(short);
    assert_eq!(pool.statistics().leaks, 0);
    let line = line!() + 1;
    let held = pool.get().await.unwrap();
    wait_until(5, "leak reported", || pool.statistics().leaks == 1).await;
    let log = captured.text();
    let site = format!("tests/operations.rs:{line}");
    assert!(
        log.contains(&site),
        "the warning does not name the checkout site {site}: {log}"
    );
    assert!(
        log.contains(&format!("conn.id={}", held.id())),
        "no connection id: {log}"
    );
    // Reported once per checkout, however long it is held.
    tokio::time::sleep(100 * MS).await;
    assert_eq!(pool.statistics().leaks, 1);
    drop(held);
    // A new checkout of the same connection may be reported again.
    let again = pool.get().await.unwrap();
    wait_until(5, "second leak reported", || pool.statistics().leaks == 2).await;
    drop(again);
}

#[tokio::test]
async fn resize_shrinks_idle_first_and_never_more_than_needed() {
    let server = FaultServer::start().await;
    let pool = builder(&server)
        .max_size(6)
        .idle_watch(false)
        .build()
        .unwrap();
    let mut all = Vec::new();
    for i in 0..6 {
        let mut c = pool.get().await.unwrap();
        exchange(&mut c, i).await.unwrap();
        all.push(c);
    }
    let busy = all.split_off(4); // 2 stay checked out, 4 go back idle
    drop(all);
    assert_eq!((pool.status().idle, pool.status().in_use), (4, 2));
    pool.resize(3).unwrap();
    // 6 → 3: three idle members closed, the two in use untouched.
    assert_eq!(pool.status().size, 3, "{:?}", pool.status());
    assert_eq!((pool.status().idle, pool.status().in_use), (1, 2));
    assert_eq!(pool.statistics().evicted(EvictReason::PoolClosed), 3);
    drop(busy);
    assert_eq!(pool.status().size, 3);
    pool.resize(8).unwrap();
    assert_eq!(pool.status().max_size, 8);
    let err = pool.resize(0).unwrap_err();
    assert_eq!((err.max_size(), err.min_idle()), (0, 0));
    assert_eq!(err.to_string(), "max_size must be at least 1");
    // Refused: the pool keeps its size.
    assert_eq!(pool.status().max_size, 8);
}

#[tokio::test]
async fn set_min_idle_refills_and_is_validated() {
    let server = FaultServer::start().await;
    let pool = builder(&server).max_size(4).build().unwrap();
    assert_eq!(pool.status().size, 0);
    pool.set_min_idle(3).unwrap();
    wait_until(5, "refill to the new min_idle", || pool.status().idle == 3).await;
    let err = pool.set_min_idle(5).unwrap_err();
    assert_eq!(err.to_string(), "min_idle 5 is larger than max_size 4");
    let err = pool.resize(2).unwrap_err();
    assert_eq!((err.max_size(), err.min_idle()), (2, 3));
    assert_eq!(pool.status().max_size, 4);
}
