//! Members evicted in place: the socket is closed when the eviction is recorded, the empty
//! entry left in deadpool's queue is never handed out and never counted by `status()`, and
//! the refill puts new connections into those entries.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use livepool::{EvictReason, Pool};
use livepool_testkit::*;

/// Checks out `n` connections at once (each with one exchange), then returns them all;
/// returns their local addresses.
async fn fill(pool: &Pool, n: usize) -> Vec<SocketAddr> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut c = within(5, "get", pool.get()).await.expect("get");
        assert_eq!(
            within(5, "exchange", exchange(&mut c, i as u64))
                .await
                .unwrap(),
            token(i as u64)
        );
        held.push(c);
    }
    held.iter().map(|c| c.local_addr().unwrap()).collect()
}

/// Waits for one eviction event per address in `addrs` (any order), each for `reason`, and
/// checks that the kernel holds no open socket for it any more: the connection was closed
/// before its eviction was recorded.
async fn expect_evicted(
    events: &mut livepool::Events,
    server: SocketAddr,
    addrs: &[SocketAddr],
    reason: EvictReason,
) {
    let mut left: HashSet<SocketAddr> = addrs.iter().copied().collect();
    while !left.is_empty() {
        let ev = within(10, "eviction event", events.recv())
            .await
            .expect("event");
        let Some(local) = ev.local_addr else { continue };
        if !left.remove(&local) {
            continue;
        }
        assert_eq!(ev.reason, reason, "{ev:?}");
        // After the peer's FIN an open socket sits in CLOSE_WAIT; ours was closed, so it is
        // gone or on its way out (LAST_ACK).
        let k = kernel_socket(local, server);
        assert!(
            k.is_none_or(|k| k.state != CLOSE_WAIT && k.state != ESTABLISHED),
            "{local}: evicted but still open: {k:?}"
        );
    }
}

#[tokio::test]
async fn idle_members_evicted_in_place_are_neither_counted_nor_handed_out() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .max_size(40)
        .idle_timeout(None)
        .build()
        .unwrap();
    let mut events = pool.events();
    let addrs = fill(&pool, 40).await;
    wait_until(5, "40 idle", || pool.status().idle == 40).await;
    let dead: Vec<SocketAddr> = addrs.iter().step_by(3).copied().collect();
    for a in &dead {
        server.fin(*a);
    }
    expect_evicted(&mut events, server.addr, &dead, EvictReason::PeerClosed).await;
    let live = 40 - dead.len();
    let st = pool.status();
    assert_eq!(
        (st.size, st.idle, st.in_use),
        (live, live, 0),
        "the empty entries are counted: {st:?}"
    );
    // Every connection handed out works: the live ones, then new ones in place of the dead.
    let mut held = Vec::new();
    for i in 0..40u64 {
        let mut c = within(5, "get", pool.get()).await.expect("get");
        let reply = within(5, "exchange", exchange(&mut c, 100 + i)).await;
        assert_eq!(
            reply.unwrap(),
            token(100 + i),
            "a dead connection was handed out"
        );
        held.push(c);
    }
    let st = pool.status();
    assert_eq!((st.size, st.idle, st.in_use), (40, 0, 40), "{st:?}");
    let stats = pool.statistics();
    assert_eq!(stats.created, 40 + dead.len() as u64);
    assert_eq!(stats.evicted(EvictReason::PeerClosed), dead.len() as u64);
    drop(held);
    wait_until(5, "all idle again", || pool.status().idle == 40).await;
    assert_eq!(pool.status().size, 40);
}

#[tokio::test]
async fn refill_puts_new_connections_into_the_entries_of_evicted_members() {
    let (captured, _guard) = capture_logs(tracing::Level::DEBUG);
    let server = FaultServer::start().await;
    let n = 30;
    let pool = Pool::builder(server.addr)
        .max_size(n)
        .min_idle(n)
        .idle_timeout(None)
        .reap_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut events = pool.events();
    wait_until(10, "filled to min_idle", || pool.status().idle == n).await;
    wait_until(5, "server holds every connection", || {
        server.clients().len() == n
    })
    .await;
    let dead: Vec<SocketAddr> = server.clients().into_iter().take(10).collect();
    for a in &dead {
        server.fin(*a);
    }
    expect_evicted(&mut events, server.addr, &dead, EvictReason::PeerClosed).await;
    wait_until(10, "refilled", || {
        pool.status().idle == n && pool.statistics().created == (n + dead.len()) as u64
    })
    .await;
    let revived = captured
        .text()
        .matches("into the entry of an evicted member")
        .count();
    assert_eq!(
        revived,
        dead.len(),
        "every new connection went into an evicted member's entry"
    );
    let st = pool.status();
    assert_eq!((st.size, st.idle), (n, n), "{st:?}");
    // The revived entries hold working connections, and nothing else is in the queue.
    let mut held = Vec::new();
    for i in 0..n as u64 {
        let mut c = within(5, "get", pool.get()).await.expect("get");
        assert_eq!(
            within(5, "exchange", exchange(&mut c, i)).await.unwrap(),
            token(i)
        );
        held.push(c);
    }
    assert_eq!(pool.statistics().created, (n + dead.len()) as u64);
    assert_eq!(pool.status().in_use, n);
}

#[tokio::test]
async fn an_unclean_return_below_min_idle_is_refilled_in_place() {
    let (captured, _guard) = capture_logs(tracing::Level::DEBUG);
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .max_size(4)
        .min_idle(4)
        .idle_timeout(None)
        .reap_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut events = pool.events();
    wait_until(10, "filled to min_idle", || pool.status().idle == 4).await;
    let mut c = pool.get().await.unwrap();
    let addr = c.local_addr().unwrap();
    c.mark_broken();
    drop(c);
    expect_evicted(&mut events, server.addr, &[addr], EvictReason::MarkedBroken).await;
    wait_until(10, "refilled", || {
        pool.status().idle == 4 && pool.statistics().created == 5
    })
    .await;
    assert_eq!(
        captured
            .text()
            .matches("into the entry of an evicted member")
            .count(),
        1
    );
    let st = pool.status();
    assert_eq!((st.size, st.idle, st.in_use), (4, 4, 0), "{st:?}");
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = within(5, "get", pool.get()).await.unwrap();
        assert_eq!(exchange(&mut c, i).await.unwrap(), token(i));
        held.push(c);
    }
    assert_eq!(pool.statistics().created, 5);
}

#[tokio::test]
async fn closing_a_pool_with_empty_entries_closes_everything_once() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .max_size(10)
        .idle_timeout(None)
        .build()
        .unwrap();
    let mut events = pool.events();
    let addrs = fill(&pool, 10).await;
    wait_until(5, "10 idle", || pool.status().idle == 10).await;
    for a in &addrs[..4] {
        server.fin(*a);
    }
    expect_evicted(
        &mut events,
        server.addr,
        &addrs[..4],
        EvictReason::PeerClosed,
    )
    .await;
    pool.close();
    let stats = pool.statistics();
    assert_eq!(stats.evicted(EvictReason::PeerClosed), 4);
    assert_eq!(stats.evicted(EvictReason::PoolClosed), 6);
    assert_eq!(stats.evicted_total(), 10, "{:?}", stats.evictions());
    let st = pool.status();
    assert_eq!((st.size, st.idle), (0, 0), "{st:?}");
}
