//! A real blackhole: the client pool lives in network namespace A, the server in namespace
//! B, joined by a veth pair; `blackhole()` takes B's veth down, so A's packets get no answer
//! at all (no FIN, no RST, no ICMP). Only a heartbeat deadline, TCP keepalive,
//! TCP_USER_TIMEOUT or a connect timeout can notice. Root only: without it
//! every test prints SKIPPED (or fails under `LIVEPOOL_REQUIRE_ALL=1`).
//!
//! Detection times are printed for comparison with the configuration, never asserted.

use std::error::Error as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use livepool::{BreakerConfig, Conn, EvictReason, FramePing, Pool};
use livepool_testkit::netns::Netns;
use livepool_testkit::{exchange, expect_eviction, idle_member, token, wait_until, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ping/pong + echo server whose listening socket (and so every accepted socket) lives in
/// namespace B; its tasks run on the calling runtime. A frame starting with
/// [`FramePing::PING`] gets a pong with the same seq and timestamp; any other frame is
/// echoed. Stops when dropped.
struct NsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl NsServer {
    fn start(ns: &Netns) -> NsServer {
        let ip = ns.server_ip;
        let std_listener = Netns::exec_in(&ns.b, move || {
            let l = std::net::TcpListener::bind(SocketAddrV4::new(ip, 0)).expect("bind in B");
            l.set_nonblocking(true).expect("nonblocking listener");
            l
        });
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                sock.set_nodelay(true).unwrap();
                conns.spawn(serve(sock));
            }
        });
        NsServer { addr, task }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: tokio::net::TcpStream) {
    let mut frame = [0u8; FramePing::LEN];
    while sock.read_exact(&mut frame).await.is_ok() {
        let (kind, seq, ts) = FramePing::decode(&frame);
        if kind == FramePing::PING {
            frame = FramePing::encode(FramePing::PONG, seq, ts);
        }
        if sock.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// A pool for `addr` with TCP keepalive, TCP_USER_TIMEOUT, heartbeats and the breaker all
/// off; each test turns on the one mechanism it is about.
fn quiet_pool(addr: SocketAddr) -> livepool::Builder {
    Pool::builder(addr)
        .max_size(4)
        .tcp(quiet_tcp())
        .breaker(None)
}

/// TCP keepalive and TCP_USER_TIMEOUT off.
fn quiet_tcp() -> livepool::TcpOptions {
    livepool::TcpOptions {
        keepalive: None,
        user_timeout: None,
        ..livepool::TcpOptions::default()
    }
}

#[test]
fn heartbeat_finds_blackholed_peer() {
    let Some(ns) = Netns::create() else { return };
    let interval = Duration::from_secs(1);
    let timeout = Duration::from_millis(300);
    Netns::run_in(&ns.a, || async {
        let server = NsServer::start(&ns);
        let pool = quiet_pool(server.addr)
            .protocol(FramePing::new())
            .heartbeat_interval(interval)
            .heartbeat_timeout(timeout)
            .heartbeat_jitter(0.0)
            .reap_interval(Duration::from_millis(100))
            .build()
            .expect("valid config");
        let local = idle_member(&pool, 1).await;
        let mut events = pool.events();

        ns.blackhole();
        let cut = Instant::now();
        let ev = expect_eviction(&mut events, 20, EvictReason::HeartbeatTimeout, local).await;
        let took = cut.elapsed();
        assert_eq!(pool.status().size, 0, "the member is still in the pool");
        assert_eq!(pool.statistics().evicted(EvictReason::HeartbeatTimeout), 1);
        println!(
            "heartbeat: blackhole -> eviction {took:?}, last alive -> eviction {:?} \
             (interval + timeout = {:?}, + reap interval 100ms)",
            ev.evicted_at - ev.last_alive,
            interval + timeout
        );
    });
}

#[test]
fn keepalive_alone_finds_blackholed_idle_peer() {
    let Some(ns) = Netns::create() else { return };
    Netns::run_in(&ns.a, || async {
        let server = NsServer::start(&ns);
        let pool = quiet_pool(server.addr)
            .tcp(livepool::TcpOptions {
                keepalive: Some(Duration::from_secs(1)),
                keepalive_interval: Duration::from_secs(1),
                keepalive_retries: 3,
                ..quiet_tcp()
            })
            .build()
            .expect("valid config");
        let local = idle_member(&pool, 1).await;
        let mut events = pool.events();

        ns.blackhole();
        let cut = Instant::now();
        let ev = expect_eviction(&mut events, 30, EvictReason::SocketError, local).await;
        let took = cut.elapsed();
        assert_eq!(pool.status().size, 0, "the member is still in the pool");
        assert_eq!(pool.statistics().evicted(EvictReason::SocketError), 1);
        println!(
            "keepalive 1s/1s/3: blackhole -> eviction {took:?} (measured before on this kind of machine: ~3.95 s), \
             last alive -> eviction {:?}",
            ev.evicted_at - ev.last_alive
        );
    });
}

#[test]
fn user_timeout_finds_blackhole_with_unacked_data() {
    let Some(ns) = Netns::create() else { return };
    Netns::run_in(&ns.a, || async {
        let server = NsServer::start(&ns);
        let pool = quiet_pool(server.addr)
            .tcp(livepool::TcpOptions {
                user_timeout: Some(Duration::from_secs(1)),
                ..quiet_tcp()
            })
            .build()
            .expect("valid config");
        let mut conn: Conn = within(5, "get", pool.get()).await.expect("get");
        let reply = within(5, "exchange", exchange(&mut conn, 1))
            .await
            .expect("exchange before the blackhole");
        assert_eq!(reply, token(1));

        ns.blackhole();
        let cut = Instant::now();
        // The write is only queued: nothing tells the writer the peer is gone.
        within(5, "write", conn.write_all(&token(2)))
            .await
            .expect("write into the blackhole is queued");
        let mut buf = [0u8; 8];
        let res = tokio::time::timeout(Duration::from_secs(30), conn.read_exact(&mut buf))
            .await
            .expect("read still hanging 30 s after a blackhole with TCP_USER_TIMEOUT 1 s");
        let took = cut.elapsed();
        let err = res.expect_err("a read from a blackholed peer returned data");
        println!(
            "user timeout 1s: blackhole -> read error {took:?}: {:?} {err} \
             (expected: ~UTO + first retransmission)",
            err.kind()
        );
        // ETIMEDOUT, or the soft error the kernel saw meanwhile: with B's veth down, A's
        // neighbour lookups fail and the kernel reports EHOSTUNREACH instead.
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable
            ),
            "unexpected read error: {err:?}"
        );
        drop(conn);

        wait_until(5, "io_error eviction counted", || {
            pool.statistics().evicted(EvictReason::IoError) == 1
        })
        .await;
        let stats = pool.statistics();
        assert_eq!(stats.evicted_total(), 1, "{:?}", stats.evictions());
        let status = pool.status();
        assert_eq!(
            (status.size, status.idle),
            (0, 0),
            "the failed connection went back to the pool"
        );
    });
}

#[test]
fn blackholed_connect_opens_breaker() {
    let Some(ns) = Netns::create() else { return };
    Netns::run_in(&ns.a, || async {
        let server = NsServer::start(&ns);
        let pool = Pool::builder(server.addr)
            .connect_timeout(Some(Duration::from_millis(200)))
            .breaker(Some(
                BreakerConfig::new()
                    .failure_threshold(2)
                    .open_for(Duration::from_secs(30))
                    .jitter(0.0),
            ))
            .build()
            .expect("valid config");

        ns.blackhole();
        for i in 1..=2 {
            let err = within(10, "get into the blackhole", pool.get())
                .await
                .expect_err("connected through a blackhole");
            assert!(
                err.is_connect(),
                "attempt {i}: expected a connect error: {err}"
            );
            assert!(
                !err.is_circuit_open(),
                "attempt {i}: breaker open too early: {err}"
            );
            let io = err.io_error().map(|e| e.kind());
            println!(
                "attempt {i}: {err} (timeout: {}, io: {io:?})",
                err.is_timeout()
            );
        }

        let start = Instant::now();
        let err = within(5, "get with the breaker open", pool.get())
            .await
            .expect_err("connected through a blackhole");
        let took = start.elapsed();
        assert!(err.is_circuit_open(), "expected the breaker open: {err}");
        assert!(!err.is_connect(), "{err}");
        let retry = err.retry_after().expect("retry_after while open");
        assert!(
            retry > Duration::ZERO && retry <= Duration::from_secs(30),
            "retry_after {retry:?}"
        );
        let source = err
            .source()
            .expect("circuit-open error carries the last connect error");
        let io = source
            .downcast_ref::<std::io::Error>()
            .unwrap_or_else(|| panic!("source is not an io::Error: {source:?}"));
        assert_eq!(
            io.kind(),
            std::io::ErrorKind::TimedOut,
            "last connect error: {io}"
        );
        println!("breaker open: get() answered in {took:?}: {err}");
        assert_eq!(
            pool.status().size,
            0,
            "a connection got through the blackhole"
        );
    });
}
