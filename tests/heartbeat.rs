//! Heartbeats on real sockets: a peer that stops answering, a wrong pong, a checkout that
//! meets a running heartbeat, heartbeat timeouts feeding the breaker (and wrong replies not
//! feeding it), and `Conn::closed()`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use livepool::{BreakerConfig, BreakerState, EvictReason, FramePing, Pool};
use livepool_testkit::*;

const MS: Duration = Duration::from_millis(1);

fn builder(server: &FaultServer) -> livepool::Builder<FramePing> {
    Pool::builder(server.addr)
        .protocol(FramePing::new())
        .heartbeat_interval(150 * MS)
        .heartbeat_timeout(100 * MS)
        .heartbeat_jitter(0.0)
        .reap_interval(10 * MS)
        .breaker(None)
}

#[tokio::test]
async fn peer_that_stops_answering_is_evicted_by_heartbeat_timeout() {
    let server = FaultServer::start().await;
    let pool = builder(&server).build().unwrap();
    let mut events = pool.events();
    let addr = idle_member(&pool, 1).await;
    // Alive: answered pings keep it.
    wait_until(10, "two answered pings", || {
        server.pings.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(pool.statistics().evicted_total(), 0);
    // The peer's kernel keeps ACKing, but the process stops answering.
    server.stall(addr);
    expect_eviction(&mut events, 10, EvictReason::HeartbeatTimeout, addr).await;
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn wrong_pong_seq_is_evicted() {
    let server = FaultServer::start().await;
    server.set_pong_kind(1);
    let pool = builder(&server).build().unwrap();
    let mut events = pool.events();
    let addr = idle_member(&pool, 1).await;
    expect_eviction(&mut events, 10, EvictReason::HeartbeatBadReply, addr).await;
}

#[tokio::test]
async fn garbled_pong_is_evicted() {
    let server = FaultServer::start().await;
    server.set_pong_kind(2);
    let pool = builder(&server).build().unwrap();
    let mut events = pool.events();
    let addr = idle_member(&pool, 1).await;
    expect_eviction(&mut events, 10, EvictReason::HeartbeatBadReply, addr).await;
}

#[tokio::test]
async fn checkout_during_a_heartbeat_waits_for_it_and_gets_a_clean_socket() {
    let server = FaultServer::start().await;
    // Slow pongs, well within the heartbeat timeout.
    server.set_pong_delay(40 * MS);
    let pool = builder(&server)
        .heartbeat_interval(300 * MS)
        .heartbeat_timeout(200 * MS)
        .build()
        .unwrap();
    let addr = idle_member(&pool, 1).await;
    for round in 0..5u64 {
        let before = server.pings.load(Ordering::SeqCst);
        wait_until(10, "a heartbeat in flight", || {
            server.pings.load(Ordering::SeqCst) > before
        })
        .await;
        // The ping has reached the server; its pong comes 40 ms later.
        let mut c = within(5, "checkout during heartbeat", pool.get())
            .await
            .unwrap();
        assert_eq!(
            c.local_addr().unwrap(),
            addr,
            "round {round}: the healthy member was not handed out"
        );
        let reply = exchange(&mut c, 100 + round).await.unwrap();
        assert_eq!(
            reply,
            token(100 + round),
            "round {round}: read a pong instead of the response"
        );
    }
    assert_eq!(
        pool.statistics().evicted_total(),
        0,
        "{:?}",
        pool.statistics().evictions()
    );
}

#[tokio::test]
async fn heartbeat_failures_open_the_breaker() {
    let server = FaultServer::start().await;
    let pool = builder(&server)
        .max_size(4)
        // One timeout opens it: three heartbeats to one stalled server that overlap in time
        // are one event (the breaker counts evidence, not a burst), whether they do overlap
        // depends on their phases, and this test is about heartbeats feeding the breaker.
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(1)
                .open_for(Duration::from_secs(60))
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = pool.get().await.unwrap();
        exchange(&mut c, i).await.unwrap();
        held.push(c);
    }
    drop(held);
    for client in server.clients() {
        server.stall(client);
    }
    wait_until(10, "three heartbeat timeouts", || {
        pool.statistics().evicted(EvictReason::HeartbeatTimeout) == 3
    })
    .await;
    let s = pool.statistics();
    assert_eq!(s.breaker_state, BreakerState::Open, "{s:?}");
    assert_eq!(s.breaker_transitions, 1);
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert!(
        err.to_string().contains("heartbeat"),
        "the last error should be the heartbeat's: {err}"
    );
}

#[tokio::test]
async fn bad_heartbeat_replies_evict_but_do_not_open_the_breaker() {
    let server = FaultServer::start().await;
    // Every pong is wrong (like `-NOAUTH` from a server that wants AUTH on the heartbeat).
    server.set_pong_kind(1);
    let pool = builder(&server)
        .max_size(4)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(1)
                .open_for(Duration::from_secs(60))
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let mut events = pool.events();
    // Round after round of idle members, each evicted by its bad pong: far more than the
    // threshold of one.
    for round in 0..3u64 {
        let mut held = Vec::new();
        for i in 0..4 {
            let mut c = within(5, "get", pool.get())
                .await
                .unwrap_or_else(|e| panic!("round {round}: a new connection was refused: {e}"));
            exchange(&mut c, round * 10 + i).await.unwrap();
            held.push(c);
        }
        drop(held);
        for _ in 0..4 {
            let ev = within(10, "bad-reply eviction", events.recv())
                .await
                .unwrap();
            assert_eq!(ev.reason, EvictReason::HeartbeatBadReply, "{ev:?}");
        }
        let s = pool.statistics();
        assert_eq!(
            s.breaker_state,
            BreakerState::Closed,
            "round {round}: {s:?}"
        );
        assert_eq!(s.breaker_transitions, 0, "{s:?}");
    }
    assert_eq!(
        pool.statistics().evicted(EvictReason::HeartbeatBadReply),
        12
    );
    // New connections still work.
    let mut c = within(5, "get after the bad replies", pool.get())
        .await
        .expect("a wrong reply is not a dead endpoint");
    assert_eq!(exchange(&mut c, 99).await.unwrap(), token(99));
}

#[tokio::test]
async fn late_pongs_are_heartbeat_timeouts_and_open_the_breaker() {
    let server = FaultServer::start().await;
    let pool = builder(&server)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(1)
                .open_for(Duration::from_secs(60))
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let mut events = pool.events();
    let addr = idle_member(&pool, 1).await;
    // The server answers, but after the heartbeat's deadline (100 ms).
    server.set_pong_delay(300 * MS);
    expect_eviction(&mut events, 10, EvictReason::HeartbeatTimeout, addr).await;
    let s = pool.statistics();
    assert_eq!(s.breaker_state, BreakerState::Open, "{s:?}");
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
}

#[tokio::test]
async fn one_dead_member_at_checkout_does_not_feed_the_breaker() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .idle_watch(false)
        .breaker(Some(BreakerConfig::new().failure_threshold(1)))
        .build()
        .unwrap();
    for i in 0..5 {
        let addr = idle_member(&pool, i).await;
        server.rst(addr);
        wait_until(5, "reset seen", || {
            kernel_socket(addr, server.addr).is_none_or(|s| s.state != ESTABLISHED)
        })
        .await;
    }
    // Each checkout found a dead member (evicted, not a breaker failure) and connected anew.
    let c = pool.get().await.unwrap();
    drop(c);
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    assert_eq!(pool.statistics().evicted(EvictReason::Reset), 5);
}

#[tokio::test]
async fn closed_resolves_when_the_peer_goes_away_and_consumes_nothing() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr).breaker(None).build().unwrap();
    let mut c = pool.get().await.unwrap();
    assert_eq!(exchange(&mut c, 1).await.unwrap(), token(1));
    // Alive: closed() does not resolve.
    assert!(tokio::time::timeout(50 * MS, c.closed()).await.is_err());
    // Unread data does not count as closed, and closed() leaves it for the caller.
    let local = c.local_addr().unwrap();
    server.write(local, &token(4));
    assert!(
        tokio::time::timeout(50 * MS, c.closed()).await.is_err(),
        "unread data read as closed"
    );
    let mut buf = [0u8; 8];
    tokio::io::AsyncReadExt::read_exact(&mut c, &mut buf)
        .await
        .unwrap();
    assert_eq!(buf, token(4), "closed() consumed the caller's data");
    // The peer goes away: closed() resolves.
    server.fin(local);
    within(5, "closed() after FIN", c.closed()).await;
}

#[tokio::test]
async fn heartbeat_on_a_closed_connection_evicts_but_does_not_feed_the_breaker() {
    let server = FaultServer::start().await;
    // No idle watch: the heartbeat is what meets the closed connection.
    let pool = builder(&server)
        .idle_watch(false)
        .breaker(Some(BreakerConfig::new().failure_threshold(1)))
        .build()
        .unwrap();
    let mut events = pool.events();
    let addr = idle_member(&pool, 1).await;
    server.fin(addr);
    expect_eviction(&mut events, 10, EvictReason::HeartbeatFailed, addr).await;
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    let mut c = pool
        .get()
        .await
        .expect("a dead member is not a dead endpoint");
    assert_eq!(exchange(&mut c, 2).await.unwrap(), token(2));
}

#[tokio::test]
async fn get_cancelled_while_waiting_for_a_heartbeat_is_counted_and_pool_stays_consistent() {
    let server = FaultServer::start().await;
    server.set_pong_delay(150 * MS);
    let pool = builder(&server)
        .heartbeat_interval(500 * MS)
        .heartbeat_timeout(400 * MS)
        .build()
        .unwrap();
    idle_member(&pool, 1).await;
    wait_until(10, "a heartbeat in flight", || {
        server.pings.load(Ordering::SeqCst) == 1
    })
    .await;
    // The get() meets the running heartbeat and waits; it is cancelled meanwhile.
    assert!(
        tokio::time::timeout(20 * MS, pool.get()).await.is_err(),
        "get did not wait for the heartbeat"
    );
    assert_eq!(
        pool.statistics().evicted(EvictReason::Cancelled),
        1,
        "{:?}",
        pool.statistics().evictions()
    );
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());
    let mut c = within(5, "get after the cancelled one", pool.get())
        .await
        .unwrap();
    assert_eq!(exchange(&mut c, 2).await.unwrap(), token(2));
}
