//! A pool that outlives the tokio runtime it was built in (a pool in a `static` shared by
//! `#[tokio::test]`s, each with its own runtime): built with idle members in runtime A, A
//! dropped, then used from runtime B. `get()` must never hand out a member registered with
//! A's I/O driver (evicted as `driver_gone`), and the reaper that died with A must work again
//! on B: the idle watch evicts a member the server closes, without a checkout, and refill
//! restores `min_idle`.
//!
//! The fault server runs on a runtime of its own that lives for the whole test, so that only
//! the pool's runtime goes away. Runtimes are built by hand in plain `#[test]` functions.

use std::time::Duration;

use livepool::{EvictReason, Pool};
use livepool_testkit::*;
use tokio::runtime::{Builder, Runtime};

const MIN_IDLE: usize = 2;
const FULL: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Flavor {
    MultiThread,
    CurrentThread,
}

fn runtime(flavor: Flavor) -> Runtime {
    match flavor {
        Flavor::MultiThread => Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        Flavor::CurrentThread => Builder::new_current_thread().enable_all().build(),
    }
    .expect("build runtime")
}

fn pool(server: &FaultServer) -> Pool {
    Pool::builder(server.addr)
        .max_size(FULL)
        .min_idle(MIN_IDLE)
        .idle_watch(true)
        .reap_interval(Duration::from_millis(10))
        .idle_timeout(None)
        .breaker(None)
        .build()
        .expect("build pool")
}

fn survives_its_runtime(a: Flavor, b: Flavor) {
    // The server's runtime outlives both of the pool's.
    let server_rt = runtime(Flavor::MultiThread);
    let server = server_rt.block_on(FaultServer::start());

    // Runtime A: the pool is built here, and its reaper refills it to min_idle here.
    let rt_a = runtime(a);
    let pool = rt_a.block_on(async {
        let pool = pool(&server);
        wait_until(10, "refill to min_idle on runtime A", || {
            let s = pool.status();
            s.idle == MIN_IDLE && s.size == MIN_IDLE
        })
        .await;
        // The members work on A.
        let mut c = within(5, "get on A", pool.get()).await.expect("get on A");
        let reply = within(5, "exchange on A", exchange(&mut c, 1)).await;
        assert_eq!(reply.expect("exchange on A"), token(1));
        pool
    });
    assert_eq!(pool.statistics().created, MIN_IDLE as u64);
    assert_eq!(pool.statistics().evicted_total(), 0);
    drop(rt_a);

    // Runtime B: both of A's members are still idle in the pool, their driver gone.
    let rt_b = runtime(b);
    rt_b.block_on(async {
        assert_eq!(pool.status().idle, MIN_IDLE);
        // Hold two at once: neither may be one of A's.
        let mut c1 = within(5, "first get on B", pool.get())
            .await
            .expect("get on B");
        let mut c2 = within(5, "second get on B", pool.get())
            .await
            .expect("get on B");
        for (n, c) in [(2, &mut c1), (3, &mut c2)] {
            let reply = within(5, "exchange on B", exchange(c, n)).await;
            assert_eq!(reply.expect("exchange on a conn handed out on B"), token(n));
        }
        drop((c1, c2));
        // Evicted at checkout or by the restarted idle watch, each counted once as driver_gone.
        wait_until(10, "A's two members evicted as driver_gone", || {
            pool.statistics().evicted(EvictReason::DriverGone) == MIN_IDLE as u64
        })
        .await;
        let stats = pool.statistics();
        assert_eq!(
            stats.evictions(),
            vec![(EvictReason::DriverGone, MIN_IDLE as u64)]
        );
        assert_eq!(stats.reaper_restarts, 1);

        // How many B holds now depends on whether its refill ran while the two were out:
        // raise min_idle to max_size, so that the pool is exactly full and idle after refill.
        pool.set_min_idle(FULL).unwrap();
        wait_until(10, "refill to the new min_idle on runtime B", || {
            let s = pool.status();
            s.idle == FULL && s.size == FULL
        })
        .await;

        // The restarted reaper's idle watch works on B: a server-side close of an idle member
        // is evicted without a checkout.
        let mut events = pool.events();
        let addr = idle_member(&pool, 4).await;
        let created = pool.statistics().created;
        let checkouts = pool.statistics().checkouts;
        server.fin(addr);
        expect_eviction(&mut events, 10, EvictReason::PeerClosed, addr).await;
        assert_eq!(
            pool.statistics().checkouts,
            checkouts,
            "evicted by a checkout"
        );

        // And refill restores min_idle on B, with members that work.
        wait_until(
            10,
            "refill to min_idle on runtime B after the eviction",
            || {
                let s = pool.status();
                s.idle == FULL && s.size == FULL && pool.statistics().created > created
            },
        )
        .await;
        let mut c = within(5, "get after refill", pool.get())
            .await
            .expect("get");
        let reply = within(5, "exchange after refill", exchange(&mut c, 5)).await;
        assert_eq!(reply.expect("exchange after refill"), token(5));
        drop(c);
        let stats = pool.statistics();
        assert_eq!(stats.evicted(EvictReason::DriverGone), MIN_IDLE as u64);
        assert_eq!(stats.evicted(EvictReason::PeerClosed), 1);
        assert_eq!(stats.evicted_total(), MIN_IDLE as u64 + 1);
        assert_eq!(stats.reaper_restarts, 1, "restarted again while B runs");
    });
    drop(pool);
    drop(rt_b);
    drop(server);
}

#[test]
fn multi_thread_to_multi_thread() {
    survives_its_runtime(Flavor::MultiThread, Flavor::MultiThread);
}

#[test]
fn current_thread_to_current_thread() {
    survives_its_runtime(Flavor::CurrentThread, Flavor::CurrentThread);
}

#[test]
fn multi_thread_to_current_thread() {
    survives_its_runtime(Flavor::MultiThread, Flavor::CurrentThread);
}

#[test]
fn current_thread_to_multi_thread() {
    survives_its_runtime(Flavor::CurrentThread, Flavor::MultiThread);
}
