//! A returned connection whose owed reply never comes counts against the endpoint, as an
//! unanswered heartbeat does; any other reason a settle gives up only closes the connection.
//!
//! The server accepts and reads but never answers, so a read cut short by a timeout is
//! deterministic (nothing can arrive), and the pool's settle task is what decides.

use std::time::Duration;

use livepool::{BreakerConfig, BreakerState, EvictReason, Io, Pool, Protocol, SetupError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Raw bytes whose returned connections are always offered to `settle`, which gives up with
/// the reason it was built with.
#[derive(Debug)]
struct GivesUp(EvictReason);

impl Protocol for GivesUp {
    type Conn = Io;

    fn io(conn: &Io) -> &Io {
        conn
    }

    fn io_mut(conn: &mut Io) -> &mut Io {
        conn
    }

    async fn setup(&self, io: Io) -> Result<Io, SetupError> {
        Ok(io)
    }

    fn can_settle(&self, _: &Io) -> bool {
        true
    }

    async fn settle(&self, _: &mut Io) -> Result<(), EvictReason> {
        Err(self.0)
    }
}

/// A server that accepts every connection and reads, but never writes.
async fn silent_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// One request whose reply is cut short by the caller's own deadline, then returned.
async fn abandon_one(pool: &Pool<GivesUp>) {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), pool.get())
        .await
        .expect("get in time")
        .expect("get");
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    let cut = tokio::time::timeout(Duration::from_millis(10), conn.read(&mut buf)).await;
    assert!(cut.is_err(), "the silent server answered: {cut:?}");
}

fn pool(addr: std::net::SocketAddr, reason: EvictReason) -> Pool<GivesUp> {
    Pool::builder(addr)
        .protocol(GivesUp(reason))
        .max_size(1)
        .breaker(
            BreakerConfig::new()
                .failure_threshold(1)
                .open_for(Duration::from_secs(60))
                .jitter(0.0),
        )
        .build()
        .unwrap()
}

/// Waits (bounded) until the member is gone: the settle task has decided. `events` was
/// subscribed before the connection went back.
async fn settled(events: &mut livepool::Events, reason: EvictReason) {
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the settle task decided in time")
        .expect("an eviction event");
    assert_eq!(ev.reason, reason);
}

#[tokio::test]
async fn an_unanswered_settle_opens_the_breaker() {
    let addr = silent_server().await;
    let pool = pool(addr, EvictReason::Unanswered);
    let (mut breaker, mut events) = (pool.breaker_events(), pool.events());
    abandon_one(&pool).await;
    settled(&mut events, EvictReason::Unanswered).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), breaker.recv())
        .await
        .expect("the breaker heard of it in time")
        .expect("a breaker event");
    assert_eq!(ev.transition.to, BreakerState::Open);
    assert!(
        ev.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not answered in time")),
        "{ev:?}"
    );
    // The next caller fails fast instead of connecting to a server that does not answer.
    let err = pool.get().await.expect_err("the breaker is open");
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(pool.statistics().evicted(EvictReason::Unanswered), 1);
}

#[tokio::test]
async fn a_settle_that_gives_up_otherwise_only_closes_the_connection() {
    let addr = silent_server().await;
    let pool = pool(addr, EvictReason::NotClean);
    let (mut breaker, mut events) = (pool.breaker_events(), pool.events());
    abandon_one(&pool).await;
    settled(&mut events, EvictReason::NotClean).await;
    assert_eq!(pool.status().breaker, BreakerState::Closed);
    assert!(breaker.try_recv().unwrap().is_none());
    // A new connection is made: the endpoint is not blamed.
    drop(pool.get().await.expect("a new connection"));
    assert_eq!(pool.statistics().evicted(EvictReason::NotClean), 1);
}
