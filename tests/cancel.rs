//! Rule 1: a caller cancelled while awaiting a response never lets that response reach a
//! later caller (the redis-py CVE-2023-28858 class of bug).

use std::time::Duration;

use livepool::{EvictReason, Pool};
use livepool_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pool(addr: std::net::SocketAddr, max: usize) -> Pool {
    Pool::builder(addr)
        .max_size(max)
        .breaker(None)
        .build()
        .unwrap()
}

#[tokio::test]
async fn cancelled_read_never_leaks_a_late_response() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, 2);
    let mut next = 0u64;
    let mut cancelled = 0;
    // Varied delays: the late response lands before, during or after the next exchange.
    for round in 0..40u64 {
        let late_ms = 2 + round % 7;
        let wait_ms = 1 + round % 3;
        server.set_delay(Duration::from_millis(late_ms));
        let mut c = pool.get().await.unwrap();
        next += 1;
        let victim = next;
        c.write_all(&token(victim)).await.unwrap();
        let mut buf = [0u8; 8];
        let res =
            tokio::time::timeout(Duration::from_millis(wait_ms), c.read_exact(&mut buf)).await;
        if res.is_err() {
            cancelled += 1;
        }
        drop(c);
        // Let the late response arrive somewhere (it must not matter where).
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(late_ms)).await;
        }
        server.set_delay(Duration::ZERO);
        for _ in 0..3 {
            let mut c = pool.get().await.unwrap();
            next += 1;
            let reply = within(5, "exchange", exchange(&mut c, next)).await.unwrap();
            assert_eq!(
                reply,
                token(next),
                "round {round}: caller {next} read {:?}; the cancelled request was {victim}",
                reply
            );
        }
    }
    assert!(
        cancelled >= 10,
        "the delays did not cancel reads ({cancelled} of 40)"
    );
    let s = pool.statistics();
    assert_eq!(
        s.evicted(EvictReason::Cancelled),
        cancelled,
        "{:?}",
        s.evictions()
    );
}

#[tokio::test]
async fn write_without_read_is_not_returned() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, 1);
    let mut c = pool.get().await.unwrap();
    let first = c.local_addr().unwrap();
    c.write_all(&token(1)).await.unwrap();
    drop(c); // the response to token 1 is still coming
    let mut c = pool.get().await.unwrap();
    assert_ne!(c.local_addr().unwrap(), first);
    assert_eq!(exchange(&mut c, 2).await.unwrap(), token(2));
    assert_eq!(pool.statistics().evicted(EvictReason::UnreadResponse), 1);
}

#[tokio::test]
async fn one_way_policy_returns_written_connections() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .max_size(1)
        .request_response(false)
        .idle_watch(false)
        .build()
        .unwrap();
    let mut c = pool.get().await.unwrap();
    let first = c.local_addr().unwrap();
    c.write_all(&token(1)).await.unwrap();
    let mut buf = [0u8; 8];
    c.read_exact(&mut buf).await.unwrap();
    c.write_all(&[0x01, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
    let mut pong = [0u8; 8];
    c.read_exact(&mut pong).await.unwrap();
    c.write_all(b"").await.unwrap();
    drop(c);
    let c = pool.get().await.unwrap();
    assert_eq!(c.local_addr().unwrap(), first);
    assert_eq!(pool.statistics().evicted_total(), 0);
}

#[tokio::test]
async fn cancelled_write_is_not_returned() {
    let server = FaultServer::start().await;
    server.set_delay(Duration::from_secs(30));
    let pool = pool(server.addr, 1);
    let mut c = pool.get().await.unwrap();
    let first = c.local_addr().unwrap();
    // Fill the socket buffers until a write pends (the server reads one frame, then sleeps).
    let big = vec![b'T'; 1 << 20];
    let mut pended = false;
    for _ in 0..64 {
        if tokio::time::timeout(Duration::from_millis(20), c.write_all(&big))
            .await
            .is_err()
        {
            pended = true;
            break;
        }
    }
    assert!(pended, "the socket buffers never filled");
    drop(c);
    assert_eq!(pool.statistics().evicted(EvictReason::Cancelled), 1);
    let c = pool.get().await.unwrap();
    assert_ne!(c.local_addr().unwrap(), first);
}

#[tokio::test]
async fn get_cancelled_while_waiting_loses_nothing() {
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .max_size(1)
        .wait_timeout(None)
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    // A get that waits for the only slot, then is cancelled.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), pool.get())
            .await
            .is_err()
    );
    assert_eq!(
        pool.status().waiting,
        0,
        "a cancelled waiter is still counted"
    );
    drop(held);
    let c = within(5, "get after a cancelled waiter", pool.get())
        .await
        .unwrap();
    drop(c);
    assert_eq!(pool.statistics().created, 1);
    assert_eq!(pool.statistics().evicted_total(), 0);
}
