//! Idle timeout, max lifetime (with jitter), heartbeat scheduling and min-idle refill, on
//! tokio's paused clock with real loopback sockets.

use std::sync::atomic::Ordering;
use std::time::Duration;

use livepool::{EvictReason, FramePing, Pool};
use livepool_testkit::*;
use tokio::time::advance;

const SEC: Duration = Duration::from_secs(1);

fn builder(addr: std::net::SocketAddr) -> livepool::Builder {
    // No connect/wait timers: with a paused clock, tokio may jump to the next timer while
    // a loopback connect is in flight.
    Pool::builder(addr)
        .connect_timeout(None)
        .wait_timeout(None)
        .breaker(None)
        .lifetime_jitter(0.0)
        .heartbeat_jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_at_checkout() {
    let server = FaultServer::start().await;
    // A long reap interval: the checkout itself must apply the idle timeout.
    let pool = builder(server.addr)
        .idle_timeout(Some(60 * SEC))
        .reap_interval(3600 * SEC)
        .build()
        .unwrap();
    let first = idle_member(&pool, 1).await;
    advance(59 * SEC).await;
    assert_eq!(
        idle_member(&pool, 2).await,
        first,
        "evicted before its idle timeout"
    );
    advance(61 * SEC).await;
    assert_ne!(
        idle_member(&pool, 3).await,
        first,
        "idle past the timeout, still handed out"
    );
    assert_eq!(pool.statistics().evicted(EvictReason::IdleTimeout), 1);
}

#[tokio::test(start_paused = true)]
async fn reaper_closes_idle_members_above_min_idle_only() {
    let server = FaultServer::start().await;
    let pool = builder(server.addr)
        .max_size(4)
        .min_idle(1)
        .idle_timeout(Some(60 * SEC))
        .reap_interval(SEC)
        .build()
        .unwrap();
    let held: Vec<_> = futures_all(&pool, 3).await;
    drop(held);
    assert_eq!(pool.status().idle, 3);
    advance(62 * SEC).await;
    // Give the reaper its tick.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        pool.status().size,
        1,
        "min_idle member closed or extras kept: {:?}",
        pool.status()
    );
    assert_eq!(pool.statistics().evicted(EvictReason::IdleTimeout), 2);
}

async fn futures_all(pool: &Pool, n: usize) -> Vec<livepool::Conn> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(pool.get().await.unwrap());
    }
    v
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_idle_and_in_use() {
    let server = FaultServer::start().await;
    let pool = builder(server.addr)
        .max_lifetime(Some(600 * SEC))
        .idle_timeout(None)
        .reap_interval(3600 * SEC)
        .build()
        .unwrap();
    let first = idle_member(&pool, 1).await;
    advance(599 * SEC).await;
    // Checked out just before it expires, returned after: closed on return.
    let c = pool.get().await.unwrap();
    assert_eq!(c.local_addr().unwrap(), first);
    advance(2 * SEC).await;
    drop(c);
    assert_eq!(pool.statistics().evicted(EvictReason::MaxLifetime), 1);
    assert_eq!(pool.status().size, 0);
    // An idle one past its lifetime is refused at checkout.
    let second = idle_member(&pool, 2).await;
    advance(601 * SEC).await;
    assert_ne!(idle_member(&pool, 3).await, second);
    assert_eq!(pool.statistics().evicted(EvictReason::MaxLifetime), 2);
}

#[tokio::test(start_paused = true)]
async fn lifetime_jitter_spreads_expiry() {
    let server = FaultServer::start().await;
    let pool = builder(server.addr)
        .max_size(20)
        .max_lifetime(Some(1000 * SEC))
        .lifetime_jitter(0.5)
        .idle_timeout(None)
        .reap_interval(SEC)
        .build()
        .unwrap();
    drop(futures_all(&pool, 20).await);
    // Jitter shortens lifetimes into [500 s, 1000 s]: none expires before 500 s, all by
    // 1000 s, and they do not all expire in the same second.
    advance(499 * SEC).await;
    tokio::task::yield_now().await;
    assert_eq!(pool.statistics().evicted(EvictReason::MaxLifetime), 0);
    let mut seen = Vec::new();
    for _ in 0..502 {
        advance(SEC).await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        seen.push(pool.statistics().evicted(EvictReason::MaxLifetime));
    }
    assert_eq!(
        *seen.last().unwrap(),
        20,
        "not all expired by their lifetime"
    );
    let distinct_steps = seen.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        distinct_steps >= 5,
        "expiries were not spread out: {distinct_steps} steps"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_scheduled_per_interval_and_keep_members() {
    let server = FaultServer::start().await;
    let pool = builder(server.addr)
        .protocol(FramePing::new())
        .heartbeat_interval(10 * SEC)
        .heartbeat_timeout(2 * SEC)
        .idle_timeout(None)
        .reap_interval(SEC)
        .build()
        .unwrap();
    let first = idle_member(&pool, 1).await;
    assert_eq!(server.pings.load(Ordering::SeqCst), 0);
    for _ in 0..35 {
        advance(SEC).await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        // The pong travels over a real socket: let it arrive.
        wait_until(5, "heartbeat finished", || pool.status().idle == 1).await;
    }
    let pings = server.pings.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&pings),
        "expected a ping every 10 s over 35 s, got {pings}"
    );
    assert_eq!(pool.statistics().heartbeats, pings as u64);
    assert_eq!(
        idle_member(&pool, 2).await,
        first,
        "a healthy pinged member was lost"
    );
    assert_eq!(pool.statistics().evicted_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn min_idle_refills_after_build_and_after_evictions() {
    let server = FaultServer::start().await;
    let pool = builder(server.addr)
        .max_size(5)
        .min_idle(3)
        .reap_interval(SEC)
        .build()
        .unwrap();
    wait_until(5, "initial refill to min_idle", || pool.status().idle == 3).await;
    assert_eq!(server.accepts.load(Ordering::SeqCst), 3);
    // Kill two of them from the server side: the idle watch evicts, the reaper refills.
    let clients = server.clients();
    server.fin(clients[0]);
    server.rst(clients[1]);
    wait_until(5, "evictions", || pool.statistics().evicted_total() == 2).await;
    for _ in 0..10 {
        advance(SEC).await;
        tokio::task::yield_now().await;
        if pool.status().idle == 3 {
            break;
        }
    }
    wait_until(5, "refill after evictions", || pool.status().idle == 3).await;
    assert_eq!(server.accepts.load(Ordering::SeqCst), 5);
    assert!(pool.status().size <= 5);
}
