//! The helpers that livepool's tests and benches share (the core's and the integration
//! crates'): not published, a dev-dependency of each crate of the workspace.
//!
//! Here: bounded waits ([`within`], [`wait_until`]), visible skips ([`skip_without`]: a test
//! that lacks root or a program says so, and fails instead under `LIVEPOOL_REQUIRE_ALL=1`), a
//! loopback [`FaultServer`] that faults its connections on command and logs what it did, the
//! kernel's view of a socket ([`kernel_socket`], exactly, through [`diag`]), open fds, captured
//! logs, and a few pool exchanges with it. Real servers and machinery in modules:
//! [`redis_server`] (a `redis-server` child), [`pg`] (a throwaway PostgreSQL cluster),
//! [`netns`] (two network namespaces to blackhole), [`hosts`] (a test name in `/etc/hosts`,
//! always removed), [`tls`] (a self-signed certificate and rustls configurations) and
//! [`bench`](mod@bench) (the benches' runtimes, latency figures and a deadpool manager). With
//! feature `redis` (livepool-redis's tests): `redis_admin` (an admin session to a test
//! server, outside any pool) and `redis_stop` (SIGSTOP a server, always resumed).
//!
//! # One livepool
//!
//! This crate depends on `livepool`, and `livepool` dev-depends on it. Integration tests,
//! benches and examples link the same `livepool` library as this crate, so its types
//! ([`exchange`], [`idle_member`], [`expect_eviction`]) are theirs. The core's own unit tests
//! (`#[cfg(test)]` in `src/`) are another build of `livepool`, whose types are not this
//! crate's: they must not use these helpers.

pub mod bench;
pub mod diag;
pub mod hosts;
pub mod netns;
pub mod pg;
#[cfg(feature = "redis")]
pub mod redis_admin;
pub mod redis_server;
#[cfg(feature = "redis")]
pub mod redis_stop;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Awaits `fut` for at most `secs` seconds of real time, panicking with `what` otherwise.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for: {what}"),
    }
}

/// Polls `cond` every millisecond (real time) until it holds; panics after `secs` seconds.
pub async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached after {secs} s: {what}"
        );
        // Real sleep: this waits for the kernel, not for a tokio timer.
        std::thread::sleep(Duration::from_millis(1));
        tokio::task::yield_now().await;
    }
}

/// The kernel's view of one TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSocket {
    /// TCP state number (1 ESTABLISHED, 8 CLOSE_WAIT, …).
    pub state: u8,
    /// Bytes waiting to be read.
    pub rx_queue: u64,
}

pub const ESTABLISHED: u8 = 1;
pub const CLOSE_WAIT: u8 = 8;

/// The socket with this local and remote address, asked of the kernel for exactly that socket
/// (see [`diag`]): `None` means there is none, never that a read of a changing table missed it.
pub fn kernel_socket(local: SocketAddr, remote: SocketAddr) -> Option<KernelSocket> {
    diag::lookup(local, remote, None)
        .unwrap_or_else(|e| panic!("sock_diag lookup of {local} -> {remote}: {e}"))
        .map(|d| KernelSocket {
            state: d.state,
            rx_queue: d.rx_queue,
        })
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .count()
}

/// Whether a test that needs `what` must run (CI sets LIVEPOOL_REQUIRE_ALL=1) or may skip.
/// Returns true when the test should skip (after printing why).
pub fn skip_without(available: bool, what: &str) -> bool {
    if available {
        return false;
    }
    if std::env::var("LIVEPOOL_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("LIVEPOOL_REQUIRE_ALL=1 but {what} is not available");
    }
    // libtest captures the output of `print!` and `eprint!` (and so `eprintln!`) of a passing
    // test and shows nothing of it; a write to the stderr handle itself is not captured, so
    // the skip shows in the normal output of `cargo test`. libtest names each test's thread
    // after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test thread>");
    let line = format!("SKIPPED: {test}: {what} is not available on this machine\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}

/// What a tracing subscriber wrote, for reading a log line back in a test.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures tracing events up to `level` on this thread (so: a single-threaded runtime's
/// pool, reaper included) until the guard is dropped.
pub fn capture_logs(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

enum Cmd {
    Fin,
    Rst,
    Write(Vec<u8>),
    Stall,
}

/// What a server did to a connection. A stall is not one: the client's kernel cannot see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Closed normally (FIN).
    Fin,
    /// Reset (SO_LINGER 0, then close).
    Rst,
    /// Wrote bytes nobody asked for.
    Bytes,
    /// Closed because the server went away (`shutdown` or drop).
    Gone,
}

/// A fault the server applied, recorded once the close or the write had returned.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub fault: Fault,
    /// When the close or the write returned.
    pub at: tokio::time::Instant,
    /// Bytes the server had written on the connection by then, the faulting ones included.
    pub sent: u64,
}

/// One connection a server accepted.
#[derive(Debug, Clone, Copy)]
pub struct ConnRecord {
    /// The client's address.
    pub client: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// The client socket's cookie (see [`diag`]), looked up at accept: the server held the
    /// connection then, so no other client socket could have those ports, and the cookie
    /// names this one and none that reuses the ports later. `None` when the client had
    /// already closed it.
    pub cookie: Option<u64>,
    /// The first fault the server applied to it.
    pub fault: Option<Applied>,
    /// The server still holds the connection.
    pub open: bool,
}

/// Every connection a server accepted, by the id it gave it. Shared across restarts (see
/// [`FaultServer::start_logged`]) an id names one connection for the whole test, where a
/// client address does not (ephemeral ports are reused).
#[derive(Debug, Default)]
pub struct ConnLog {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, ConnRecord>>,
    changed: tokio::sync::Notify,
}

impl ConnLog {
    /// The record of connection `id`.
    pub fn get(&self, id: u64) -> Option<ConnRecord> {
        self.conns.lock().get(&id).copied()
    }

    fn accept(&self, client: SocketAddr, server: SocketAddr) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let cookie = diag::lookup(client, server, None)
            .ok()
            .flatten()
            .map(|d| d.cookie);
        self.conns.lock().insert(
            id,
            ConnRecord {
                client,
                server,
                cookie,
                fault: None,
                open: true,
            },
        );
        id
    }

    /// Records `fault` (unless an earlier one is recorded) and, with `closed`, that the server
    /// no longer holds the connection.
    fn record(&self, id: u64, fault: Option<Fault>, sent: u64, closed: bool) {
        if let Some(r) = self.conns.lock().get_mut(&id) {
            if let Some(fault) = fault
                && r.fault.is_none()
            {
                r.fault = Some(Applied {
                    fault,
                    at: tokio::time::Instant::now(),
                    sent,
                });
            }
            if closed {
                r.open = false;
            }
        }
        self.changed.notify_waiters();
    }

    /// The server went away after closing every connection it held: records [`Fault::Gone`]
    /// on those it still held; returns every connection of `ids` the going away closed.
    fn gone(&self, ids: &[u64]) -> Vec<u64> {
        let now = tokio::time::Instant::now();
        let mut conns = self.conns.lock();
        let mut closed = Vec::new();
        for id in ids {
            let Some(r) = conns.get_mut(id) else { continue };
            if r.open {
                r.open = false;
                r.fault.get_or_insert(Applied {
                    fault: Fault::Gone,
                    at: now,
                    sent: 0,
                });
            }
            if r.fault.is_some_and(|a| a.fault == Fault::Gone) {
                closed.push(*id);
            }
        }
        drop(conns);
        self.changed.notify_waiters();
        closed
    }

    /// Waits (at most `secs` seconds, then panics) until the server has applied a fault to
    /// connection `id` or no longer holds it; the fault, if one was applied.
    pub async fn wait_applied(&self, id: u64, secs: u64) -> Option<Applied> {
        within(
            secs,
            &format!("server to apply its fault to connection {id}"),
            async {
                loop {
                    let changed = self.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    let r = self.get(id).unwrap_or_else(|| panic!("no connection {id}"));
                    if r.fault.is_some() || !r.open {
                        return r.fault;
                    }
                    changed.await;
                }
            },
        )
        .await
    }
}

/// The connections a server holds: by client address, the command channel and the id.
type Served = HashMap<SocketAddr, (mpsc::UnboundedSender<Cmd>, u64)>;

/// A loopback server speaking 8-byte frames: a frame starting with 0x01 is a ping answered
/// with a pong (0x02, same seq and timestamp); one starting with 0x03 asks for the
/// connection's id, answered with 0x04 and the id (7 bytes, big-endian); any other frame is
/// echoed back after the server's current delay. Every connection can be faulted on command,
/// and [`FaultServer::log`] records what was done to each.
pub struct FaultServer {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Served>>,
    /// Every connection accepted, by id, with the faults applied to it.
    pub log: Arc<ConnLog>,
    pub accepts: Arc<AtomicUsize>,
    pub pings: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    pong: Arc<PongMode>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Vec<u64>>>,
}

/// How the server answers pings.
#[derive(Default)]
pub struct PongMode {
    /// 0 correct, 1 wrong seq, 2 wrong type.
    pub kind: std::sync::atomic::AtomicU8,
    /// Delay before each pong, in milliseconds.
    pub delay_ms: AtomicU64,
}

impl FaultServer {
    pub async fn start() -> FaultServer {
        FaultServer::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to come back on the same port after `shutdown`).
    pub async fn start_on(addr: SocketAddr) -> FaultServer {
        FaultServer::start_logged(addr, Arc::default()).await
    }

    /// Starts on a given address, recording its connections in `log` (a server coming back
    /// after `shutdown` goes on with the ids of the one before).
    pub async fn start_logged(addr: SocketAddr, log: Arc<ConnLog>) -> FaultServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Served>> = Default::default();
        let accepts = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let pong = Arc::new(PongMode::default());
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let pm = pong.clone();
        let (c, a, p, d, l) = (
            conns.clone(),
            accepts.clone(),
            pings.clone(),
            delay_ms.clone(),
            log.clone(),
        );
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut accepted = Vec::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    res = listener.accept() => {
                        let Ok((sock, peer)) = res else { continue };
                        sock.set_nodelay(true).unwrap();
                        a.fetch_add(1, Ordering::SeqCst);
                        let id = l.accept(peer, addr);
                        accepted.push(id);
                        let (tx, rx) = mpsc::unbounded_channel();
                        c.lock().insert(peer, (tx, id));
                        let conn = ServedConn { id, log: l.clone(), sent: 0 };
                        tasks.spawn(serve(sock, conn, rx, p.clone(), d.clone(), pm.clone()));
                    }
                }
            }
            // Going away: the listener and every connection close (tasks aborted → dropped).
            drop(listener);
            c.lock().clear();
            tasks.shutdown().await;
            l.gone(&accepted)
        });
        FaultServer {
            addr,
            conns,
            log,
            accepts,
            pings,
            delay_ms,
            pong,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    fn send(&self, client: SocketAddr, cmd: Cmd) {
        let entry = self.conns.lock().remove(&client);
        let (tx, id) = entry.unwrap_or_else(|| panic!("server has no connection from {client}"));
        let keep = matches!(cmd, Cmd::Write(_) | Cmd::Stall);
        tx.send(cmd).expect("server connection task alive");
        if keep {
            self.conns.lock().insert(client, (tx, id));
        }
    }

    /// The id of the connection the server holds from `client`.
    pub fn id_of(&self, client: SocketAddr) -> Option<u64> {
        self.conns.lock().get(&client).map(|(_, id)| *id)
    }

    /// Applies a fault if the server still holds a connection from `client`:
    /// 0 FIN, 1 RST, 2 unsolicited bytes, 3 stall. The connection's id, or `None` when there
    /// is none. The fault is applied by the connection's task: see [`ConnLog::wait_applied`].
    pub fn try_fault(&self, client: SocketAddr, kind: u8) -> Option<u64> {
        let (tx, id) = self.conns.lock().remove(&client)?;
        let cmd = match kind {
            0 => Cmd::Fin,
            1 => Cmd::Rst,
            2 => Cmd::Write(b"\x07zz".to_vec()),
            _ => Cmd::Stall,
        };
        let keep = kind >= 2;
        let ok = tx.send(cmd).is_ok();
        if ok && keep {
            self.conns.lock().insert(client, (tx, id));
        }
        ok.then_some(id)
    }

    /// Closes the server side of `client`'s connection normally (FIN).
    pub fn fin(&self, client: SocketAddr) {
        self.send(client, Cmd::Fin)
    }

    /// Resets `client`'s connection (SO_LINGER 0 then close → RST).
    pub fn rst(&self, client: SocketAddr) {
        self.send(client, Cmd::Rst)
    }

    /// Writes unsolicited bytes to `client`.
    pub fn write(&self, client: SocketAddr, bytes: &[u8]) {
        self.send(client, Cmd::Write(bytes.to_vec()))
    }

    /// Stops answering on `client`'s connection but keeps it open.
    pub fn stall(&self, client: SocketAddr) {
        self.send(client, Cmd::Stall)
    }

    /// Delays every echo from now on.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answer pings with a wrong seq (1), a wrong type (2) or correctly (0).
    pub fn set_pong_kind(&self, kind: u8) {
        self.pong.kind.store(kind, Ordering::SeqCst);
    }

    /// Delay every pong from now on.
    pub fn set_pong_delay(&self, d: Duration) {
        self.pong
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Client addresses the server currently holds connections from.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.conns.lock().keys().copied().collect()
    }

    /// Stops listening and closes every connection (the server process "goes away"); returns
    /// the ids of the connections that closed.
    pub async fn shutdown(mut self) -> Vec<u64> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        let closed = within(5, "server to close its connections", task)
            .await
            .expect("server task panicked");
        // Wait until the port is really closed.
        wait_until(5, "server port closed", || {
            std::net::TcpStream::connect(self.addr).is_err()
        })
        .await;
        closed
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A served connection's id and what the server has written on it.
struct ServedConn {
    id: u64,
    log: Arc<ConnLog>,
    sent: u64,
}

async fn serve(
    mut sock: TcpStream,
    mut conn: ServedConn,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    pings: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    pong: Arc<PongMode>,
) {
    let fault = serve_frames(&mut sock, &mut conn, cmds, pings, delay_ms, pong).await;
    if fault == Some(Fault::Rst) {
        socket2::SockRef::from(&sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    // Closed (FIN, or RST with linger 0) before the fault is recorded.
    drop(sock);
    conn.log.record(conn.id, fault, conn.sent, true);
}

/// Serves frames until a command closes the connection (its fault) or the client does (`None`).
async fn serve_frames(
    sock: &mut TcpStream,
    conn: &mut ServedConn,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    pings: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    pong: Arc<PongMode>,
) -> Option<Fault> {
    let mut frame = [0u8; 8];
    let mut stalled = false;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return Some(Fault::Gone),
                Some(Cmd::Fin) => return Some(Fault::Fin),
                Some(Cmd::Rst) => return Some(Fault::Rst),
                Some(Cmd::Write(b)) => {
                    // A failed write: the client is gone (a stalled connection would not
                    // notice otherwise: it reads nothing).
                    if sock.write_all(&b).await.is_err() { return None; }
                    conn.sent += b.len() as u64;
                    conn.log.record(conn.id, Some(Fault::Bytes), conn.sent, false);
                }
                Some(Cmd::Stall) => stalled = true,
            },
            res = sock.read_exact(&mut frame), if !stalled => {
                if res.is_err() { return None; }
                if frame[0] == 0x01 {
                    pings.fetch_add(1, Ordering::SeqCst);
                    frame[0] = 0x02;
                    match pong.kind.load(Ordering::SeqCst) {
                        1 => frame[4] = frame[4].wrapping_add(1),
                        2 => frame[0] = 0x7f,
                        _ => {}
                    }
                    let d = pong.delay_ms.load(Ordering::SeqCst);
                    if d > 0 { tokio::time::sleep(Duration::from_millis(d)).await; }
                } else if frame[0] == 0x03 {
                    frame = conn.id.to_be_bytes();
                    frame[0] = 0x04;
                } else {
                    let d = delay_ms.load(Ordering::SeqCst);
                    if d > 0 { tokio::time::sleep(Duration::from_millis(d)).await; }
                }
                if sock.write_all(&frame).await.is_err() { return None; }
                conn.sent += frame.len() as u64;
            }
        }
    }
}

/// A request token: 8 bytes that do not start with 0x01.
pub fn token(n: u64) -> [u8; 8] {
    let mut t = n.to_be_bytes();
    t[0] = b'T';
    t
}

/// One request/response exchange on a pooled connection (of any raw-bytes protocol: `Raw`,
/// `FramePing`, …).
pub async fn exchange(conn: &mut livepool::Io, n: u64) -> std::io::Result<[u8; 8]> {
    conn.write_all(&token(n)).await?;
    let mut buf = [0u8; 8];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Checks out one connection, does exchange `n` on it (asserting the echo), returns it to the
/// pool idle; returns its local address.
pub async fn idle_member<P: livepool::Protocol<Conn = livepool::Io>>(
    pool: &livepool::Pool<P>,
    n: u64,
) -> SocketAddr {
    let mut c = within(5, "get", pool.get()).await.expect("get");
    let reply = within(5, "exchange", exchange(&mut c, n))
        .await
        .expect("exchange");
    assert_eq!(reply, token(n));
    c.local_addr().unwrap()
}

/// Waits (bounded by `secs`) for the next eviction event and checks its reason and address.
pub async fn expect_eviction(
    events: &mut livepool::Events,
    secs: u64,
    reason: livepool::EvictReason,
    addr: SocketAddr,
) -> livepool::EvictionEvent {
    let ev = within(secs, &format!("{reason} eviction"), events.recv())
        .await
        .expect("event");
    assert_eq!(ev.reason, reason, "{ev:?}");
    assert_eq!(ev.local_addr, Some(addr), "{ev:?}");
    ev
}
