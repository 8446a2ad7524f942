//! The raw pool over a Unix domain socket, against a tokio `UnixListener` in a temporary
//! directory of its own (removed after the test): checkout and echo, addresses, a peer that
//! closes an idle member (seen by the idle watch, or by the checkout peek without it), a peer
//! that closes with our request unread (the kernel's ECONNRESET), and TCP options skipped
//! without a warning. Every wait is bounded.

use std::io;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use livepool::{Builder, EvictReason, Pool};
use livepool_testkit::{wait_until, within};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("livepool-unix-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Cmd {
    /// Stop reading from this connection (what arrives stays in its receive queue).
    StopReading(oneshot::Sender<()>),
    /// Close this connection; answers how many bytes were left unread in its receive queue.
    Close(oneshot::Sender<usize>),
}

/// An echo server on a Unix socket; each accepted connection can be commanded.
struct UnixServer {
    path: PathBuf,
    /// One command channel per accepted connection, in accept order.
    conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Cmd>>>>,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    // Last: the directory goes after the listener task is stopped.
    _dir: TempDir,
}

impl UnixServer {
    fn start(test: &str) -> UnixServer {
        let dir = TempDir::new(test);
        let path = dir.0.join("echo.sock");
        let listener = UnixListener::bind(&path).expect("bind unix listener");
        let conns: Arc<Mutex<Vec<mpsc::UnboundedSender<Cmd>>>> = Default::default();
        let accepts = Arc::new(AtomicUsize::new(0));
        let (c, a) = (conns.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                c.lock().push(tx);
                a.fetch_add(1, Ordering::SeqCst);
                tasks.spawn(serve(stream, rx));
            }
        });
        UnixServer {
            path,
            conns,
            accepts,
            task,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn conn(&self, n: usize) -> mpsc::UnboundedSender<Cmd> {
        self.conns
            .lock()
            .get(n)
            .cloned()
            .unwrap_or_else(|| panic!("the server has no connection #{n}"))
    }

    /// Connection `n` stops reading; returns once it has.
    async fn stop_reading(&self, n: usize) {
        let (tx, rx) = oneshot::channel();
        self.conn(n)
            .send(Cmd::StopReading(tx))
            .expect("connection task alive");
        within(5, "server stops reading", rx).await.expect("ack");
    }

    /// Closes connection `n`; returns (once it is closed) how many bytes it left unread.
    async fn close(&self, n: usize) -> usize {
        let (tx, rx) = oneshot::channel();
        self.conn(n)
            .send(Cmd::Close(tx))
            .expect("connection task alive");
        within(5, "server closes", rx).await.expect("ack")
    }
}

impl Drop for UnixServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops the listener and its JoinSet: every connection closes.
        self.task.abort();
    }
}

async fn serve(mut stream: UnixStream, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let mut buf = [0u8; 64];
    let mut reading = true;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::StopReading(ack)) => {
                    reading = false;
                    let _ = ack.send(());
                }
                Some(Cmd::Close(ack)) => {
                    let unread = queued(&stream);
                    drop(stream);
                    let _ = ack.send(unread);
                    return;
                }
            },
            res = stream.read(&mut buf), if reading => match res {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

/// Bytes waiting in `stream`'s receive queue, by a non-blocking peek (consumes nothing).
fn queued(stream: &UnixStream) -> usize {
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    match socket2::SockRef::from(stream)
        .recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("peek on the server side: {e}"),
    }
}

fn builder(server: &UnixServer) -> Builder {
    Pool::builder(server.addr())
        .connect_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(5)))
        .reap_interval(Duration::from_millis(50))
}

/// One echo exchange on a pooled connection.
async fn echo(conn: &mut livepool::Conn, msg: &[u8; 8]) {
    within(5, "echo write", conn.write_all(msg))
        .await
        .expect("write");
    let mut reply = [0u8; 8];
    within(5, "echo read", conn.read_exact(&mut reply))
        .await
        .expect("read");
    assert_eq!(&reply, msg);
}

#[tokio::test]
async fn checkout_and_echo_over_a_unix_socket() {
    let server = UnixServer::start("echo");
    // Both address forms: "unix:/path" and a Path.
    for pool in [
        builder(&server).max_size(1).build().unwrap(),
        Pool::builder(Path::new(&server.path))
            .max_size(1)
            .build()
            .unwrap(),
    ] {
        let mut c = within(5, "get", pool.get()).await.expect("get");
        let id = c.id();
        assert!(c.is_unix());
        assert!(!c.is_tls());
        let e = c
            .local_addr()
            .expect_err("a Unix socket has no socket address");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        let e = c
            .peer_addr()
            .expect_err("a Unix socket has no socket address");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        let _ = format!("{c:?}");
        echo(&mut c, b"hello-01").await;
        echo(&mut c, b"hello-02").await;
        drop(c);
        // Returned clean: the next checkout is the same connection.
        let mut c = within(5, "get again", pool.get()).await.expect("get");
        assert_eq!(c.id(), id);
        echo(&mut c, b"hello-03").await;
        drop(c);
        let stats = pool.statistics();
        assert_eq!(stats.created, 1, "{stats:?}");
        assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    }
    assert_eq!(server.accepts(), 2);
    // "unix:" without a path is refused by build().
    let err = Pool::builder("unix:").build().unwrap_err();
    assert_eq!(err.field(), "addr");
}

#[tokio::test]
async fn peer_closing_an_idle_member_evicts_it_as_peer_closed() {
    let server = UnixServer::start("fin");
    let pool = builder(&server).max_size(1).build().unwrap();
    let mut events = pool.events();
    let mut c = within(5, "get", pool.get()).await.expect("get");
    let id = c.id();
    echo(&mut c, b"request1").await;
    drop(c);
    assert_eq!(pool.status().idle, 1);

    // Nothing unread on the server side: a plain close, end of stream for us.
    assert_eq!(server.close(0).await, 0);
    let ev = within(5, "PeerClosed eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.reason, ev.id), (EvictReason::PeerClosed, id), "{ev:?}");
    assert_eq!((ev.local_addr, ev.peer_addr), (None, None));
    assert_eq!(pool.status().size, 0, "{:?}", pool.status());

    // The dead member is never handed out: the next caller gets a new connection.
    let mut c = within(5, "get after the close", pool.get())
        .await
        .expect("get");
    assert_ne!(c.id(), id);
    echo(&mut c, b"request2").await;
    drop(c);
    assert_eq!(server.accepts(), 2);
    assert_eq!(pool.statistics().evicted_total(), 1);
}

#[tokio::test]
async fn peer_close_is_caught_at_checkout_without_the_idle_watch() {
    let server = UnixServer::start("fin-nowatch");
    let pool = builder(&server)
        .max_size(1)
        .idle_watch(false)
        .build()
        .unwrap();
    let mut events = pool.events();
    let mut c = within(5, "get", pool.get()).await.expect("get");
    let id = c.id();
    echo(&mut c, b"request1").await;
    drop(c);
    // Closed (a Unix socket's close reaches our end before `close` returns).
    assert_eq!(server.close(0).await, 0);
    assert!(
        events.try_recv().expect("events").is_none(),
        "no watch, no eviction yet"
    );

    // The checkout's peek sees the close: a new connection is handed out instead.
    let mut c = within(5, "get after the close", pool.get())
        .await
        .expect("get");
    assert_ne!(c.id(), id);
    echo(&mut c, b"request2").await;
    let ev = within(5, "PeerClosed eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.reason, ev.id), (EvictReason::PeerClosed, id), "{ev:?}");
    drop(c);
}

/// Linux (`unix_release_sock`): a stream socket closed while its receive queue still holds
/// data sets `ECONNRESET` as the pending error of its peer (and shuts the peer down). A
/// `recv` on the peer with nothing queued returns that error first (POSIX order: error,
/// then end of stream), so the idle watch's peek reads ECONNRESET: `Reset`, not
/// `PeerClosed`. With `request_response(false)`, a member whose last write was never
/// answered is idle in the pool when that happens.
#[tokio::test]
async fn peer_closing_with_our_request_unread_is_a_reset() {
    let server = UnixServer::start("rst");
    let pool = builder(&server)
        .max_size(1)
        .request_response(false)
        .build()
        .unwrap();
    let mut events = pool.events();
    let mut c = within(5, "get", pool.get()).await.expect("get");
    let id = c.id();
    echo(&mut c, b"answered").await;

    // The server stops reading; our next request stays in its receive queue. One-way
    // policy: the member goes back idle without a reply.
    server.stop_reading(0).await;
    within(5, "one-way write", c.write_all(b"unread!!"))
        .await
        .expect("write");
    assert!(!c.is_broken());
    drop(c);
    assert_eq!(pool.status().idle, 1);
    assert!(events.try_recv().expect("events").is_none());

    // The server closes with our 8 bytes unread: the kernel resets our end.
    assert_eq!(server.close(0).await, 8, "the request was read after all");
    let ev = within(5, "Reset eviction", events.recv())
        .await
        .expect("event");
    assert_eq!((ev.reason, ev.id), (EvictReason::Reset, id), "{ev:?}");

    // Never handed out: the next caller gets a new, working connection.
    let mut c = within(5, "get after the reset", pool.get())
        .await
        .expect("get");
    assert_ne!(c.id(), id);
    echo(&mut c, b"fresh-01").await;
    drop(c);
    let stats = pool.statistics();
    assert_eq!(
        stats.evicted(EvictReason::Reset),
        1,
        "{:?}",
        stats.evictions()
    );
    assert_eq!(stats.evicted_total(), 1, "{:?}", stats.evictions());
}

#[tokio::test]
async fn tcp_options_are_skipped_on_unix_sockets_without_a_warning() {
    // Single-threaded runtime: the reaper's refill connects on this thread too.
    let (captured, _guard) = livepool_testkit::capture_logs(tracing::Level::WARN);
    let server = UnixServer::start("opts");
    // Every TCP option set explicitly (as a TCP pool would have them).
    let pool = builder(&server)
        .max_size(3)
        .min_idle(2)
        .tcp(livepool::TcpOptions {
            nodelay: true,
            keepalive: Some(Duration::from_secs(5)),
            keepalive_interval: Duration::from_secs(1),
            keepalive_retries: 3,
            user_timeout: Some(Duration::from_secs(5)),
        })
        .build()
        .unwrap();
    wait_until(5, "refill to min_idle 2", || pool.status().idle == 2).await;
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut c = within(5, "get", pool.get()).await.expect("get");
        echo(
            &mut c,
            &[b'o', b'p', b't', b's', b'-', b'0', b'0', b'0' + i],
        )
        .await;
        // Asked for on a Unix socket, TCP options are an error, not a panic.
        for e in [
            c.nodelay().expect_err("nodelay"),
            c.set_nodelay(false).expect_err("set_nodelay"),
            c.ttl().map(|_| ()).expect_err("ttl"),
        ] {
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        }
        held.push(c);
    }
    drop(held);
    assert_eq!(pool.statistics().created, 3);
    assert_eq!(server.accepts(), 3);
    let log = captured.text();
    assert!(log.is_empty(), "warnings on a Unix socket pool:\n{log}");

    // Control: the capture does see the pool's warnings (a leak report, here).
    drop(pool);
    let pool = builder(&server)
        .leak_threshold(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let held = within(5, "get", pool.get()).await.expect("get");
    wait_until(5, "leak reported", || pool.statistics().leaks == 1).await;
    drop(held);
    let log = captured.text();
    assert!(log.contains("WARN"), "the capture saw no warning: {log}");
    assert!(!log.contains("socket option"), "{log}");
}
