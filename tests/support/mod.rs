//! Shared test helpers: a loopback fault server, bounded waits, kernel socket state, fd counts.
#![allow(dead_code)]

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

/// The kernel's view of one TCP socket, from /proc/net/tcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSocket {
    /// TCP state number (1 ESTABLISHED, 8 CLOSE_WAIT, …).
    pub state: u8,
    /// Bytes waiting to be read.
    pub rx_queue: u64,
}

pub const ESTABLISHED: u8 = 1;
pub const CLOSE_WAIT: u8 = 8;

/// Looks up the socket with this local and remote port (IPv4 loopback) in /proc/net/tcp.
pub fn kernel_socket(local: SocketAddr, remote: SocketAddr) -> Option<KernelSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
        if port(f[1]) == Some(local.port()) && port(f[2]) == Some(remote.port()) {
            let state = u8::from_str_radix(f[3], 16).ok()?;
            let rx_queue = u64::from_str_radix(f[4].split(':').nth(1)?, 16).ok()?;
            return Some(KernelSocket { state, rx_queue });
        }
    }
    None
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

enum Cmd {
    Fin,
    Rst,
    Write(Vec<u8>),
    Stall,
}

/// A loopback server speaking 8-byte frames: a frame starting with 0x01 is a ping answered
/// with a pong (0x02, same seq and timestamp); any other frame is echoed back after the
/// server's current delay. Every connection can be faulted on command.
pub struct FaultServer {
    pub addr: SocketAddr,
    conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Cmd>>>>,
    /// Accept sequence number of the latest connection from each client address (ephemeral
    /// ports are reused, so the address alone does not name a connection).
    gens: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    pub accepts: Arc<AtomicUsize>,
    pub pings: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    pong: Arc<PongMode>,
    stop: Option<oneshot::Sender<()>>,
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
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Cmd>>>> = Default::default();
        let accepts = Arc::new(AtomicUsize::new(0));
        let pings = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let pong = Arc::new(PongMode::default());
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let pm = pong.clone();
        let gens: Arc<Mutex<HashMap<SocketAddr, usize>>> = Default::default();
        let g = gens.clone();
        let (c, a, p, d) = (
            conns.clone(),
            accepts.clone(),
            pings.clone(),
            delay_ms.clone(),
        );
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    res = listener.accept() => {
                        let Ok((sock, peer)) = res else { continue };
                        sock.set_nodelay(true).unwrap();
                        let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                        g.lock().insert(peer, n);
                        let (tx, rx) = mpsc::unbounded_channel();
                        c.lock().insert(peer, tx);
                        tasks.spawn(serve(sock, rx, p.clone(), d.clone(), pm.clone()));
                    }
                }
            }
            // Going away: the listener and every connection close (tasks aborted → dropped).
            c.lock().clear();
            tasks.shutdown().await;
        });
        FaultServer {
            addr,
            conns,
            gens,
            accepts,
            pings,
            delay_ms,
            pong,
            stop: Some(stop_tx),
        }
    }

    fn send(&self, client: SocketAddr, cmd: Cmd) {
        let tx = self.conns.lock().remove(&client);
        let tx = tx.unwrap_or_else(|| panic!("server has no connection from {client}"));
        let keep = matches!(cmd, Cmd::Write(_) | Cmd::Stall);
        tx.send(cmd).expect("server connection task alive");
        if keep {
            self.conns.lock().insert(client, tx);
        }
    }

    /// The accept number of the current connection from `client`.
    pub fn generation(&self, client: SocketAddr) -> Option<usize> {
        self.gens.lock().get(&client).copied()
    }

    /// Applies a fault if the server still holds a connection from `client`:
    /// 0 FIN, 1 RST, 2 unsolicited bytes, 3 stall. False when there is none.
    pub fn try_fault(&self, client: SocketAddr, kind: u8) -> bool {
        let Some(tx) = self.conns.lock().remove(&client) else {
            return false;
        };
        let cmd = match kind {
            0 => Cmd::Fin,
            1 => Cmd::Rst,
            2 => Cmd::Write(b"\x07zz".to_vec()),
            _ => Cmd::Stall,
        };
        let keep = kind >= 2;
        let ok = tx.send(cmd).is_ok();
        if ok && keep {
            self.conns.lock().insert(client, tx);
        }
        ok
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

    /// Stops listening and closes every connection (the server process "goes away").
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Wait until the port is really closed.
        wait_until(5, "server port closed", || {
            std::net::TcpStream::connect(self.addr).is_err()
        })
        .await;
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    mut sock: TcpStream,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    pings: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    pong: Arc<PongMode>,
) {
    let mut frame = [0u8; 8];
    let mut stalled = false;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Fin) => return,
                Some(Cmd::Rst) => {
                    socket2::SockRef::from(&sock).set_linger(Some(Duration::ZERO)).unwrap();
                    return;
                }
                Some(Cmd::Write(b)) => { let _ = sock.write_all(&b).await; }
                Some(Cmd::Stall) => stalled = true,
            },
            res = sock.read_exact(&mut frame), if !stalled => {
                if res.is_err() { return; }
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
                } else {
                    let d = delay_ms.load(Ordering::SeqCst);
                    if d > 0 { tokio::time::sleep(Duration::from_millis(d)).await; }
                }
                if sock.write_all(&frame).await.is_err() { return; }
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

/// One request/response exchange on a pooled connection.
pub async fn exchange(conn: &mut livepool::Conn, n: u64) -> std::io::Result<[u8; 8]> {
    conn.write_all(&token(n)).await?;
    let mut buf = [0u8; 8];
    conn.read_exact(&mut buf).await?;
    Ok(buf)
}
pub mod netns;

/// Checks out one connection, does exchange `n` on it (asserting the echo), returns it to the
/// pool idle; returns its local address.
pub async fn idle_member(pool: &livepool::Pool, n: u64) -> SocketAddr {
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
pub mod hosts;
pub mod pg;
pub mod redis_server;
pub mod tls;
