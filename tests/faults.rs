//! Rule 2: checkout never hands out a connection the kernel already reports as dead, and
//! every eviction is counted with its reason. Each fault is made for real on loopback, once
//! with the idle watch off (the checkout peek must catch it) and once with it on (it must be
//! evicted without any checkout).

use std::net::SocketAddr;
use std::time::Duration;

use livepool::{EvictReason, Pool};
use livepool_testkit::*;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Fin,
    Rst,
    Garbage,
    ServerGone,
}

fn pool(addr: SocketAddr, watch: bool) -> Pool {
    Pool::builder(addr)
        .max_size(4)
        .idle_watch(watch)
        .breaker(None)
        .build()
        .expect("valid config")
}

async fn inject(server: FaultServer, fault: Fault, client: SocketAddr) -> Option<FaultServer> {
    match fault {
        Fault::Fin => server.fin(client),
        Fault::Rst => server.rst(client),
        Fault::Garbage => server.write(client, b"\x07junk"),
        Fault::ServerGone => {
            server.shutdown().await;
            return None;
        }
    }
    Some(server)
}

fn expected(fault: Fault) -> EvictReason {
    match fault {
        Fault::Fin | Fault::ServerGone => EvictReason::PeerClosed,
        Fault::Rst => EvictReason::Reset,
        Fault::Garbage => EvictReason::UnexpectedData,
    }
}

/// Waits until the client's kernel knows of the fault (so rule 2 applies), from /proc/net/tcp.
async fn kernel_knows(fault: Fault, local: SocketAddr, server: SocketAddr) {
    wait_until(5, &format!("kernel sees {fault:?} on {local}"), || {
        match (fault, kernel_socket(local, server)) {
            (Fault::Garbage, Some(s)) => s.rx_queue > 0,
            (Fault::Rst, s) => s.is_none_or(|s| s.state != ESTABLISHED),
            (_, s) => s.is_none_or(|s| s.state == CLOSE_WAIT),
        }
    })
    .await;
}

async fn checkout_never_hands_out(fault: Fault) {
    let server = FaultServer::start().await;
    let addr = server.addr;
    let pool = pool(addr, false);
    let dead = idle_member(&pool, 1).await;
    let server = inject(server, fault, dead).await;
    kernel_knows(fault, dead, addr).await;

    match server {
        Some(_server) => {
            let c = within(5, "get after fault", pool.get()).await.expect("get");
            assert_ne!(
                c.local_addr().unwrap(),
                dead,
                "{fault:?}: the dead connection was handed out"
            );
        }
        None => {
            let err = within(5, "get after server gone", pool.get())
                .await
                .unwrap_err();
            assert!(
                err.is_connect(),
                "{fault:?}: expected a connect error, got {err}"
            );
        }
    }
    let stats = pool.statistics();
    assert_eq!(
        stats.evicted(expected(fault)),
        1,
        "{fault:?}: evictions {:?}",
        stats.evictions()
    );
    assert_eq!(
        stats.evicted_total(),
        1,
        "{fault:?}: evictions {:?}",
        stats.evictions()
    );
}

async fn idle_watch_evicts_without_checkout(fault: Fault) {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, true);
    let mut events = pool.events();
    let dead = idle_member(&pool, 1).await;
    let _server = inject(server, fault, dead).await;
    let ev = within(5, "eviction event", events.recv())
        .await
        .expect("event");
    assert_eq!(ev.reason, expected(fault), "{fault:?}");
    assert_eq!(ev.local_addr, Some(dead));
    assert!(ev.last_alive <= ev.detected_at && ev.detected_at <= ev.evicted_at);
    assert_eq!(
        pool.status().size,
        0,
        "{fault:?}: the member is still in the pool"
    );
    assert_eq!(pool.statistics().evicted(expected(fault)), 1);
}

#[tokio::test]
async fn fin_is_never_handed_out() {
    checkout_never_hands_out(Fault::Fin).await;
}

#[tokio::test]
async fn rst_is_never_handed_out() {
    checkout_never_hands_out(Fault::Rst).await;
}

#[tokio::test]
async fn unsolicited_bytes_are_never_handed_out() {
    checkout_never_hands_out(Fault::Garbage).await;
}

#[tokio::test]
async fn server_gone_is_never_handed_out() {
    checkout_never_hands_out(Fault::ServerGone).await;
}

#[tokio::test]
async fn idle_watch_evicts_fin() {
    idle_watch_evicts_without_checkout(Fault::Fin).await;
}

#[tokio::test]
async fn idle_watch_evicts_rst() {
    idle_watch_evicts_without_checkout(Fault::Rst).await;
}

#[tokio::test]
async fn idle_watch_evicts_unsolicited_bytes() {
    idle_watch_evicts_without_checkout(Fault::Garbage).await;
}

#[tokio::test]
async fn idle_watch_evicts_server_gone() {
    idle_watch_evicts_without_checkout(Fault::ServerGone).await;
}

#[tokio::test]
async fn many_members_one_dead_only_that_one_goes() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, false);
    // Three members at once.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = pool.get().await.unwrap();
        exchange(&mut c, i).await.unwrap();
        held.push(c);
    }
    let addrs: Vec<_> = held.iter().map(|c| c.local_addr().unwrap()).collect();
    drop(held);
    server.fin(addrs[1]);
    kernel_knows(Fault::Fin, addrs[1], server.addr).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(pool.get().await.unwrap());
    }
    let got_addrs: Vec<_> = got.iter().map(|c| c.local_addr().unwrap()).collect();
    assert!(
        !got_addrs.contains(&addrs[1]),
        "dead member handed out: {got_addrs:?}"
    );
    assert!(
        got_addrs.contains(&addrs[0]) && got_addrs.contains(&addrs[2]),
        "healthy members lost"
    );
    assert_eq!(pool.statistics().evicted(EvictReason::PeerClosed), 1);
    assert_eq!(pool.statistics().created, 4);
}

#[tokio::test]
async fn write_error_on_checked_out_connection_is_not_returned() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, true);
    let mut c = pool.get().await.unwrap();
    exchange(&mut c, 1).await.unwrap();
    let local = c.local_addr().unwrap();
    server.rst(local);
    kernel_knows(Fault::Rst, local, server.addr).await;
    // The first write after an RST fails with ECONNRESET or EPIPE; keep writing until it does.
    let mut err = None;
    for _ in 0..100 {
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut c, b"Txxxxxxx").await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writing to a reset connection never failed");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "unexpected error {err:?}"
    );
    assert!(c.is_broken());
    drop(c);
    assert_eq!(
        pool.statistics().evicted(EvictReason::IoError),
        1,
        "{:?}",
        pool.statistics().evictions()
    );
    assert_eq!(pool.status().size, 0);
    let c2 = pool.get().await.unwrap();
    assert_ne!(c2.local_addr().unwrap(), local);
}

#[tokio::test]
async fn mark_broken_is_not_returned() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, true);
    let mut c = pool.get().await.unwrap();
    exchange(&mut c, 1).await.unwrap();
    let local = c.local_addr().unwrap();
    c.mark_broken();
    drop(c);
    assert_eq!(pool.statistics().evicted(EvictReason::MarkedBroken), 1);
    let c2 = pool.get().await.unwrap();
    assert_ne!(c2.local_addr().unwrap(), local);
}

#[tokio::test]
async fn clean_connection_is_reused() {
    let server = FaultServer::start().await;
    let pool = pool(server.addr, true);
    let first = idle_member(&pool, 1).await;
    for i in 0..20 {
        let mut c = pool.get().await.unwrap();
        assert_eq!(
            c.local_addr().unwrap(),
            first,
            "round {i}: a healthy connection was not reused"
        );
        assert_eq!(exchange(&mut c, i).await.unwrap(), token(i));
    }
    assert_eq!(pool.statistics().created, 1);
    assert_eq!(pool.statistics().evicted_total(), 0);
    assert_eq!(server.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_connect_says_so() {
    // Bind then drop a listener: nothing listens on that port now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pool = Pool::builder(addr).breaker(None).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_connect() && !err.is_timeout(), "{err:?}");
    assert_eq!(
        err.io_error().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("connection refused"),
        "{err}"
    );
    let src = std::error::Error::source(&err).expect("source");
    assert!(src.to_string().to_lowercase().contains("refused"));
    assert_eq!(pool.statistics().connect_errors, 1);
}

#[tokio::test]
async fn idle_watch_names_the_reset_after_quiet_checkouts() {
    // Checkouts without I/O move the member to a new generation without waking its watcher;
    // an RST that then arrives must still be recorded as a reset, not as a later EOF.
    let server = FaultServer::start().await;
    let pool = pool(server.addr, true);
    let mut events = pool.events();
    let dead = idle_member(&pool, 1).await;
    // Let the watcher arm on the idle member (it runs in the reaper task).
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        let c = pool.get().await.unwrap();
        assert_eq!(c.local_addr().unwrap(), dead);
    }
    server.rst(dead);
    let ev = within(5, "eviction event", events.recv())
        .await
        .expect("event");
    assert_eq!(ev.reason, EvictReason::Reset, "{ev:?}");
    assert_eq!(pool.statistics().evicted(EvictReason::Reset), 1);
}
