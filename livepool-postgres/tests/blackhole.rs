//! A blackholed PostgreSQL: the pool lives in network namespace A, a real server in namespace
//! B, joined by a veth pair; taking B's veth down leaves every packet unanswered (no FIN, no
//! RST). Only the heartbeat's deadline can notice an idle member: it must evict it as
//! `heartbeat_timeout`, and stopping its driver makes the client fail fast. Root only: without
//! it the test prints SKIPPED (a failure under `LIVEPOOL_REQUIRE_ALL=1`).
//!
//! The detection time is printed for comparison with the configuration, never asserted.

use std::time::{Duration, Instant};

use livepool::EvictReason;
use livepool_postgres::Postgres;
use livepool_postgres::tokio_postgres::Config;
use livepool_testkit::netns::Netns;
use livepool_testkit::pg::PgCluster;
use livepool_testkit::within;

#[test]
fn a_blackholed_server_is_evicted_within_the_heartbeat_bound() {
    let Some(ns) = Netns::create() else { return };
    Netns::run_in(&ns.a, || async {
        let Some(cluster) = PgCluster::start_in(&ns.b, ns.server_ip).await else {
            return;
        };
        let mut config = Config::new();
        config
            .user(cluster.user())
            .password(cluster.password())
            .dbname("postgres");
        let (interval, timeout) = (Duration::from_secs(1), Duration::from_millis(300));
        let pool = livepool::Pool::builder(cluster.addr())
            .protocol(Postgres::new(config))
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
            .heartbeat_jitter(0.0)
            .reap_interval(Duration::from_millis(100))
            // Only the heartbeat: no keepalive, no TCP_USER_TIMEOUT, no breaker.
            .tcp(livepool::TcpOptions {
                keepalive: None,
                user_timeout: None,
                ..livepool::TcpOptions::default()
            })
            .breaker(None)
            .build()
            .expect("valid config");
        let conn = within(20, "get", pool.get()).await.expect("get");
        let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        let id = conn.id();
        let end = conn.driver_end().clone();
        drop(conn);
        let mut events = pool.events();

        ns.blackhole();
        let cut = Instant::now();
        let ev = within(20, "heartbeat timeout eviction", events.recv())
            .await
            .expect("event");
        let took = cut.elapsed();
        assert_eq!(
            (ev.id, ev.reason),
            (id, EvictReason::HeartbeatTimeout),
            "{ev:?}"
        );
        assert_eq!(pool.status().size, 0, "the member is still in the pool");
        // The member's driver was stopped with it: its end is known at once.
        within(5, "the driver stopped", end.ended()).await;
        println!(
            "postgres blackhole -> eviction {took:?} (interval + timeout = {:?}, + reap 100ms)",
            interval + timeout
        );
        ns.heal();
        drop(cluster);
    });
}
