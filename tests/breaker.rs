//! The circuit breaker against a real endpoint that refuses connections, then comes back.
//! Paused time: the open periods pass with `advance`, not with sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use livepool::{BreakerConfig, BreakerState, Pool};
use livepool_testkit::*;
use tokio::time::advance;

const SEC: Duration = Duration::from_secs(1);

fn free_port() -> SocketAddr {
    // Bind, note the port, close: nothing listens there now, so connects are refused.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn pool(addr: SocketAddr, min_idle: usize) -> Pool {
    Pool::builder(addr)
        .min_idle(min_idle)
        .connect_timeout(None)
        .wait_timeout(None)
        .reap_interval(SEC)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(3)
                .open_for(10 * SEC)
                .max_open_for(40 * SEC)
                .outage_fraction(1.0)
                .jitter(0.0),
        ))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn refused_endpoint_opens_the_breaker_and_get_fails_fast() {
    let addr = free_port();
    let pool = pool(addr, 0);
    let mut transitions = pool.breaker_events();
    for i in 0..3 {
        let err = pool.get().await.unwrap_err();
        assert!(
            err.is_connect() && !err.is_circuit_open(),
            "attempt {i}: {err}"
        );
    }
    assert_eq!(pool.statistics().breaker_state, BreakerState::Open);
    assert_eq!(pool.statistics().connect_errors, 3);
    let ev = transitions.recv().await.unwrap();
    assert_eq!(
        (ev.transition.from, ev.transition.to),
        (BreakerState::Closed, BreakerState::Open)
    );
    assert_eq!(ev.transition.open_for, Some(10 * SEC));
    assert!(
        ev.last_error
            .as_deref()
            .unwrap_or("")
            .to_lowercase()
            .contains("refused"),
        "{ev:?}"
    );
    // While open: every get() fails at once, with the real cause and a retry-after.
    for _ in 0..1000 {
        let err = pool.get().await.unwrap_err();
        assert!(err.is_circuit_open(), "{err}");
        let retry = err.retry_after().expect("retry_after");
        assert!(retry <= 10 * SEC, "{retry:?}");
        let cause = err.io_error().expect("the last connect error as source");
        assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    }
    assert_eq!(
        pool.statistics().connect_errors,
        3,
        "connect attempted while open"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_one_connect_per_open_period_including_refill() {
    let addr = free_port();
    // min_idle makes the reaper try to refill in the background too: it must go through the
    // breaker like everybody else.
    let pool = pool(addr, 2);
    let mut periods = Vec::new();
    for _ in 0..3 {
        let _ = pool.get().await;
    }
    assert_eq!(pool.statistics().breaker_state, BreakerState::Open);
    let mut attempts = pool.statistics().connect_errors;
    // Open periods follow the outage (fraction 1.0, at least 10 s, at most 40 s): 10 s, 10 s,
    // 20 s, 40 s, 40 s; one probe each, however many callers ask.
    for period in [10, 10, 20, 40, 40] {
        for _ in 0..period {
            for _ in 0..20 {
                let _ = pool.get().await;
            }
            advance(SEC).await;
            tokio::task::yield_now().await;
        }
        // The period is over: the next connect is the probe (refused again): the refill's,
        // which the reaper starts when the breaker lets one through, or this caller's.
        let err = pool.get().await.unwrap_err();
        assert!(
            err.is_connect() || err.is_circuit_open(),
            "expected the probe to have failed: {err}"
        );
        // A refill's probe may still be on its way: count it in its own period.
        for _ in 0..10_000 {
            if pool.statistics().breaker_state == BreakerState::Open {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.statistics().breaker_state, BreakerState::Open);
        let now = pool.statistics().connect_errors;
        periods.push(now - attempts);
        attempts = now;
    }
    assert!(
        periods.iter().all(|&n| n == 1),
        "connect attempts per open period: {periods:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn endpoint_comes_back_probe_closes_breaker_and_pool_refills() {
    let addr = free_port();
    let pool = pool(addr, 2);
    for _ in 0..3 {
        let _ = pool.get().await;
    }
    assert_eq!(pool.statistics().breaker_state, BreakerState::Open);
    // A long outage: the background refill keeps failing and its backoff grows to its cap.
    for _ in 0..120 {
        advance(SEC).await;
        tokio::task::yield_now().await;
    }
    // The endpoint comes back on the same port.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the port");
    let accepted = tokio::spawn(async move {
        let mut socks = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            socks.push(s);
        }
    });
    advance(41 * SEC).await;
    // The half-open probe (the reaper's refill or this get) succeeds and closes the breaker.
    let conn = within(5, "get after the endpoint is back", pool.get())
        .await
        .expect("connect");
    drop(conn);
    let s = pool.statistics();
    assert_eq!(s.breaker_state, BreakerState::Closed, "{s:?}");
    assert!(
        s.breaker_transitions >= 3,
        "open → half-open → closed: {s:?}"
    );
    // The refill starts at once when the breaker closes, not after its grown backoff.
    advance(SEC / 10).await;
    tokio::task::yield_now().await;
    wait_until(5, "refill to min_idle", || pool.status().idle >= 2).await;
    accepted.abort();
}

#[tokio::test(start_paused = true)]
async fn breaker_off_tries_every_time() {
    let addr = free_port();
    let pool = Pool::builder(addr)
        .breaker(None)
        .connect_timeout(None)
        .build()
        .unwrap();
    for _ in 0..10 {
        assert!(pool.get().await.unwrap_err().is_connect());
    }
    assert_eq!(pool.statistics().connect_errors, 10);
    assert_eq!(pool.status().breaker, BreakerState::Closed);
}

#[tokio::test]
async fn open_breaker_still_hands_out_healthy_idle_members() {
    let server = FaultServer::start().await;
    let ms = Duration::from_millis(1);
    let pool = Pool::builder(server.addr)
        .max_size(2)
        .protocol(livepool::FramePing::new())
        .heartbeat_interval(100 * ms)
        .heartbeat_timeout(50 * ms)
        .heartbeat_jitter(0.0)
        .reap_interval(10 * ms)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(1)
                .open_for(60 * SEC)
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();
    exchange(&mut a, 1).await.unwrap();
    exchange(&mut b, 2).await.unwrap();
    let (healthy, stalled) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    drop((a, b));
    // One member's peer stops answering: its heartbeat timeout opens the breaker.
    server.stall(stalled);
    wait_until(10, "breaker open", || {
        pool.statistics().breaker_state == BreakerState::Open
    })
    .await;
    // The healthy idle member is still handed out while the breaker is open.
    let mut c = within(5, "get with the breaker open", pool.get())
        .await
        .expect("healthy member");
    assert_eq!(c.local_addr().unwrap(), healthy);
    assert_eq!(exchange(&mut c, 3).await.unwrap(), token(3));
    // With it held, a get() that needs a new connection fails fast instead of connecting.
    let accepts = server.accepts.load(std::sync::atomic::Ordering::SeqCst);
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(
        server.accepts.load(std::sync::atomic::Ordering::SeqCst),
        accepts
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_defaults_a_short_outage_costs_a_fifth_of_a_second() {
    let addr = free_port();
    let pool = Pool::builder(addr).build().unwrap();
    for _ in 0..3 {
        assert!(pool.get().await.unwrap_err().is_connect());
    }
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    // An honest retry-after: the rest of the first, short period (200 ms ± 10 %).
    let retry = err.retry_after().expect("retry after");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(220),
        "{retry:?}"
    );
    // The server is back: once the period has passed, the next get() is the probe and
    // succeeds.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the port");
    advance(retry).await;
    let conn = within(5, "get after the endpoint is back", pool.get())
        .await
        .expect("the probe connects");
    drop(conn);
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    drop(listener);
}
