//! The circuit breaker with the Redis protocol's setup: callers failing together count as
//! one failure, a server still loading its data (`-LOADING` to the setup) is retried within
//! the connect and counts once (scripted servers on loopback), and a missing password is a
//! configuration error that counts not at all (a real `redis-server`). Real time, every
//! wait bounded.

use std::net::SocketAddr;
use std::time::Duration;

use livepool::BreakerState;
use livepool_redis::{Pool, Redis, RedisConfig};
use livepool_testkit::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Eight callers connect at the same moment to a server that accepts but never answers
/// the setup: their connects time out together. One event seen eight times counts once.
#[tokio::test]
async fn many_callers_failing_together_count_as_one_failure() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            socks.push(s);
        }
    });
    let pool: Pool = livepool::Pool::builder(addr)
        .protocol(Redis::new(RedisConfig::new().client_name("burst")))
        .max_size(16)
        .connect_timeout(Some(Duration::from_millis(300)))
        .build()
        .unwrap();
    let burst = within(
        10,
        "eight gets",
        futures_util::future::join_all((0..8).map(|_| pool.get())),
    )
    .await;
    for r in burst {
        let e = r.expect_err("the server never answers");
        assert!(e.is_timeout() && e.is_connect(), "{e}");
    }
    let s = pool.statistics();
    assert_eq!(s.connect_errors, 8, "{s:?}");
    assert_eq!(s.breaker_state, BreakerState::Closed, "one event: {s:?}");
    // Two more failures, each begun after the last one was counted: three in a row.
    let e = within(10, "get", pool.get()).await.unwrap_err();
    assert!(e.is_connect(), "{e}");
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);
    let e = within(10, "get", pool.get()).await.unwrap_err();
    assert!(e.is_connect(), "{e}");
    assert_eq!(pool.statistics().breaker_state, BreakerState::Open);
    held.abort();
}

/// A server that answers `-LOADING` to the first connections' setup, then `+OK`.
async fn loading_server(loading_for: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut socks = Vec::new();
        for n in 0.. {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let reply: &[u8] = if n < loading_for {
                b"-LOADING Redis is loading the dataset in memory\r\n"
            } else {
                b"+OK\r\n"
            };
            let _ = s.write_all(reply).await;
            socks.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_server_still_loading_is_retried_within_the_connect_and_counts_once() {
    let build = |addr, connect_timeout| -> Pool {
        livepool::Pool::builder(addr)
            .protocol(Redis::new(RedisConfig::new().client_name("loading")))
            .connect_timeout(Some(connect_timeout))
            .build()
            .unwrap()
    };
    // Loading for the first two attempts: the third, after a backoff, succeeds.
    let (addr, server) = loading_server(2).await;
    let pool = build(addr, Duration::from_secs(5));
    let conn = within(10, "get while the server loads", pool.get())
        .await
        .expect("retried until the server is ready");
    assert!(conn.is_clean());
    drop(conn);
    let s = pool.statistics();
    assert_eq!((s.created, s.connect_errors), (1, 0), "{s:?}");
    assert_eq!(s.breaker_state, BreakerState::Closed);
    server.abort();

    // Loading for ever: each get() retries until its connect timeout, fails with the
    // server's words, and counts once, as a refused connect would.
    let (addr, server) = loading_server(usize::MAX).await;
    let pool = build(addr, Duration::from_millis(300));
    for i in 1..=3u64 {
        let e = within(10, "get while the server loads", pool.get())
            .await
            .expect_err("the server never finishes loading");
        assert!(e.is_server_busy(), "get #{i}: {e}");
        assert!(e.to_string().contains("LOADING"), "{e}");
        assert_eq!(pool.statistics().connect_errors, i);
        let want = if i < 3 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(pool.statistics().breaker_state, want, "after get #{i}");
    }
    server.abort();
}

/// No password configured for a server that wants one: the setup's `PING` (sent when there
/// is nothing else to set up) is answered `NOAUTH`, a configuration error at the first
/// `get()`, which leaves the breaker alone (the server is up and answering).
#[tokio::test]
async fn no_password_for_a_server_that_wants_one_is_a_config_error_at_get() {
    use livepool_testkit::redis_server::{RedisOptions, RedisServer};
    let Some(server) = RedisServer::start_with(RedisOptions::new().password("sesame-41")).await
    else {
        return;
    };
    let pool: Pool = livepool::Pool::builder(server.addr())
        .protocol(Redis::new(RedisConfig::new()))
        .build()
        .unwrap();
    let e = within(10, "get", pool.get())
        .await
        .expect_err("no password configured");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let s = pool.statistics();
    assert_eq!((s.created, s.connect_errors, s.config_errors), (0, 0, 1));
    assert_eq!(s.breaker_state, BreakerState::Closed);
}
