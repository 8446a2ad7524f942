//! The raw protocol over TLS (feature `tls`), against a rustls server in the test: reuse,
//! TLS 1.3 session tickets on fresh idle members (benign), close_notify (closed by the peer),
//! plaintext nobody asked for (unexpected), decrypted bytes left unread at return (unread
//! response), heartbeats through TLS, and a certificate for the wrong name (setup error).
#![cfg(feature = "tls")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use livepool::{EvictReason, FramePing, Pool};
use livepool_testkit::tls::TestCerts;
use livepool_testkit::{expect_eviction, token, wait_until, within};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

enum Cmd {
    CloseNotify,
    Write(Vec<u8>),
}

/// A TLS server speaking 8-byte frames: pings (0x01) get pongs, other frames are echoed;
/// a frame starting with 0x03 is answered twice (two frames in one TLS record). Every
/// connection takes commands, by the client's address.
struct TlsServer {
    addr: SocketAddr,
    conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Cmd>>>>,
    certs: TestCerts,
}

impl TlsServer {
    async fn start() -> TlsServer {
        let certs = TestCerts::new();
        let config = certs.server_config();
        assert!(
            config.send_tls13_tickets > 0,
            "the server must send session tickets for this test to mean anything"
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Cmd>>>> = Arc::default();
        let registry = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                tcp.set_nodelay(true).unwrap();
                let acceptor = acceptor.clone();
                let (tx, mut rx) = mpsc::unbounded_channel();
                registry.lock().insert(peer, tx);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut frame = [0u8; 8];
                    loop {
                        tokio::select! {
                            cmd = rx.recv() => match cmd {
                                Some(Cmd::CloseNotify) | None => {
                                    let _ = tls.shutdown().await;
                                    return;
                                }
                                Some(Cmd::Write(bytes)) => {
                                    if tls.write_all(&bytes).await.is_err() { return; }
                                }
                            },
                            read = tls.read_exact(&mut frame) => {
                                if read.is_err() { return; }
                                let reply = match frame[0] {
                                    0x01 => { let mut p = frame; p[0] = 0x02; p.to_vec() }
                                    0x03 => [frame, frame].concat(),
                                    _ => frame.to_vec(),
                                };
                                if tls.write_all(&reply).await.is_err() { return; }
                            }
                        }
                    }
                });
            }
        });
        TlsServer { addr, conns, certs }
    }

    fn send(&self, client: SocketAddr, cmd: Cmd) {
        let conns = self.conns.lock();
        let tx = conns.get(&client).expect("no such client connection");
        assert!(tx.send(cmd).is_ok(), "server connection gone");
    }

    fn pool(&self) -> livepool::Builder {
        Pool::builder(self.addr)
            .tls(self.certs.client_config(), "localhost")
            .breaker(None)
    }
}

async fn echo(conn: &mut livepool::Io, n: u64) -> [u8; 8] {
    conn.write_all(&token(n)).await.expect("write");
    let mut reply = [0u8; 8];
    conn.read_exact(&mut reply).await.expect("read");
    reply
}

#[tokio::test]
async fn raw_over_tls_reuses_the_connection() {
    let server = TlsServer::start().await;
    let pool = server.pool().max_size(2).build().expect("build");
    let mut ids = Vec::new();
    for n in 0..20 {
        let mut conn = within(10, "get", pool.get()).await.expect("get");
        assert!(conn.is_tls());
        assert_eq!(echo(&mut conn, n).await, token(n));
        ids.push(conn.id());
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "one connection serves every checkout: {ids:?}"
    );
    let stats = pool.statistics();
    assert_eq!(stats.created, 1);
    assert_eq!(stats.evicted_total(), 0, "{stats:?}");
}

/// Fresh TLS 1.3 members receive session tickets about one round trip after the handshake;
/// they sit encrypted in the kernel until read through TLS. The idle watch sees bytes, the
/// protocol reads them through TLS, finds no plaintext and keeps the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_on_fresh_idle_members_are_benign() {
    let server = TlsServer::start().await;
    let pool = server
        .pool()
        .max_size(8)
        .min_idle(4)
        .build()
        .expect("build");
    wait_until(10, "four idle members", || pool.status().idle == 4).await;
    wait_until(10, "every member's tickets read through TLS", || {
        pool.statistics().idle_reads_kept >= 4
    })
    .await;
    // The members stay, and work.
    let mut conns = Vec::new();
    for n in 0..4 {
        let mut conn = within(10, "get", pool.get()).await.expect("get");
        assert_eq!(echo(&mut conn, n).await, token(n));
        conns.push(conn);
    }
    drop(conns);
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 0, "{stats:?}");
    assert_eq!(stats.created, 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_on_an_idle_member_is_a_peer_close() {
    let server = TlsServer::start().await;
    let pool = server.pool().build().expect("build");
    let mut events = pool.events();
    let mut conn = within(10, "get", pool.get()).await.expect("get");
    assert_eq!(echo(&mut conn, 1).await, token(1));
    let addr = conn.local_addr().unwrap();
    drop(conn);
    server.send(addr, Cmd::CloseNotify);
    expect_eviction(&mut events, 10, EvictReason::PeerClosed, addr).await;
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_an_idle_member_is_unexpected() {
    let server = TlsServer::start().await;
    let pool = server.pool().build().expect("build");
    let mut events = pool.events();
    let mut conn = within(10, "get", pool.get()).await.expect("get");
    assert_eq!(echo(&mut conn, 1).await, token(1));
    let addr = conn.local_addr().unwrap();
    drop(conn);
    server.send(addr, Cmd::Write(b"surprise".to_vec()));
    expect_eviction(&mut events, 10, EvictReason::UnexpectedData, addr).await;
}

/// TLS reads ahead: the caller read one frame of a two-frame answer, and the second sits
/// decrypted inside TLS while the socket is empty. The return must see it.
#[tokio::test]
async fn decrypted_bytes_left_unread_keep_the_connection_out() {
    let server = TlsServer::start().await;
    let pool = server.pool().build().expect("build");
    let mut events = pool.events();
    let mut conn = within(10, "get", pool.get()).await.expect("get");
    let addr = conn.local_addr().unwrap();
    let mut request = token(7);
    request[0] = 0x03;
    conn.write_all(&request).await.expect("write");
    let mut first = [0u8; 8];
    conn.read_exact(&mut first).await.expect("read");
    assert_eq!(first, request);
    drop(conn);
    expect_eviction(&mut events, 10, EvictReason::UnreadResponse, addr).await;
    // The next caller gets a new connection and its own answer.
    let mut next = within(10, "get", pool.get()).await.expect("get");
    assert_eq!(echo(&mut next, 8).await, token(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_run_through_tls() {
    let server = TlsServer::start().await;
    let pool = server
        .pool()
        .protocol(FramePing::new())
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(90))
        .heartbeat_jitter(0.0)
        .reap_interval(Duration::from_millis(20))
        .min_idle(2)
        .build()
        .expect("build");
    wait_until(15, "heartbeats answered through TLS", || {
        pool.statistics().heartbeats >= 10
    })
    .await;
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 0, "{stats:?}");
    let mut conn = within(10, "get", pool.get()).await.expect("get");
    assert_eq!(echo(&mut conn, 3).await, token(3));
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_config_error_not_the_endpoints() {
    let server = TlsServer::start().await;
    // Breaker defaults: a name that cannot match is this client's mistake; the server is up.
    let pool = Pool::builder(server.addr)
        .tls(server.certs.client_config(), "db.example")
        .build()
        .expect("build");
    for i in 0..5 {
        let err = within(10, "get", pool.get()).await.expect_err("wrong name");
        assert!(err.is_config(), "get #{i}: {err}");
        assert!(!err.is_setup() && !err.is_circuit_open(), "get #{i}: {err}");
        let text = err.to_string();
        assert!(text.contains("TLS handshake failed"), "{text}");
        assert!(text.to_lowercase().contains("certificate"), "{text}");
    }
    let stats = pool.statistics();
    assert_eq!(
        stats.breaker_state,
        livepool::BreakerState::Closed,
        "{stats:?}"
    );
    assert_eq!(stats.breaker_transitions, 0, "{stats:?}");
    assert_eq!(stats.connect_errors, 0, "{stats:?}");
    assert!(stats.config_errors >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_bad_server_name_is_refused_at_build() {
    let certs = TestCerts::new();
    let err = Pool::builder("127.0.0.1:1")
        .tls(certs.client_config(), "not a name!")
        .build()
        .expect_err("bad name");
    assert_eq!(err.field(), "tls");
}
