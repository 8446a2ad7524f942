//!
//! One-off measurements printed before the criterion cases (not criterion timings):
//! - "equivalents": deadpool (no-op recycle), bb8 (`test_on_check_out(false)` and `(true)` with
//!   a ping round trip) and livepool, each with one connection whose peer sends FIN while it is
//!   idle: how many dead connections the next checkout hands out, and what that checkout costs;
//! - "refill": with `min_idle(K)`, the time from the eviction event until the pool is back at

use livepool_testkit::bench::*;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use livepool::FramePing;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::alloc::ON_SERVER;
use crate::cases::{FaultServer, wait_event};
use crate::shared::{EVENT_DEADLINE, SETUP_DEADLINE, known_dead, process_cpu};

// ---------------------------------------------------------------------------------------------
// One-off: with `min_idle(K)`, how long until the pool is back at K idle after one eviction.

pub(crate) fn refill_one_off(k: usize) {
    let rt = current_thread();
    let mut server = FaultServer::new();
    rt.block_on(async {
        let pool = livepool::Pool::builder(server.addr)
            .max_size(k)
            .min_idle(k)
            .idle_timeout(None)
            .build()
            .expect("livepool");
        let mut events = pool.events();
        let deadline = Instant::now() + SETUP_DEADLINE;
        while pool.status().idle < k || server.socks.len() < k {
            server.accept_pending();
            assert!(Instant::now() < deadline, "initial fill did not finish");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut times = Vec::new();
        for _ in 0..5 {
            let (addr, sock) = server.take_any();
            drop(sock);
            tokio::time::timeout(EVENT_DEADLINE, wait_event(&mut events, addr))
                .await
                .expect("no eviction event");
            let start = Instant::now();
            let cpu0 = process_cpu();
            let deadline = start + SETUP_DEADLINE;
            // Busy-polls (yielding) so the reaper runs as soon as it can.
            while pool.status().idle < k {
                assert!(Instant::now() < deadline, "refill did not finish");
                tokio::task::yield_now().await;
            }
            times.push((start.elapsed(), process_cpu().saturating_sub(cpu0)));
            server.accept_pending();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s: Vec<String> = times
            .iter()
            .map(|(t, cpu)| format!("{:.0}us(cpu {:.0}us)", us(*t), us(*cpu)))
            .collect();
        eprintln!(
            "REFILL K={k}: event -> idle==K again (us, 5 runs, busy-polling bench task included): {}",
            s.join(" ")
        );
        pool.close();
    });
}

// ---------------------------------------------------------------------------------------------
// The ping server (own thread, own runtime): answers FramePing pings; can FIN any
// connection on request. Its thread is tagged so that its allocations are counted apart. (The
// scale run has its own server, in a child process: see `child_server_main`.)

struct PingServer {
    addr: SocketAddr,
    kill: Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<()>>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PingServer {
    fn start() -> PingServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let kill: Arc<Mutex<HashMap<SocketAddr, oneshot::Sender<()>>>> = Arc::default();
        let k2 = kill.clone();
        let thread = std::thread::spawn(move || {
            ON_SERVER.with(|c| c.set(true));
            let rt = current_thread();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("addr");
                tokio::pin!(stop_rx);
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, peer)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            let (tx, rx) = oneshot::channel();
                            k2.lock().expect("kill map").insert(peer, tx);
                            tokio::spawn(serve(stream, rx));
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ping server did not start");
        PingServer {
            addr,
            kill,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Closes (FIN) the server end of the connection whose client address is `client`,
    /// waiting (bounded) until the server has accepted it: a client's connect completes
    /// before the server thread runs `accept`.
    async fn fin(&self, client: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(tx) = self.kill.lock().expect("kill map").remove(&client) {
                let _ = tx.send(());
                return;
            }
            assert!(Instant::now() < deadline, "server never accepted {client}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for PingServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers each ping with a pong until EOF, an error, or a kill request (then closes: FIN).
async fn serve(mut stream: TcpStream, mut kill: oneshot::Receiver<()>) {
    let mut frame = [0u8; FramePing::LEN];
    loop {
        tokio::select! {
            _ = &mut kill => return,
            r = stream.read_exact(&mut frame) => {
                if r.is_err() {
                    return;
                }
                let (kind, seq, ts) = FramePing::decode(&frame);
                if kind != FramePing::PING {
                    return;
                }
                let pong = FramePing::encode(FramePing::PONG, seq, ts);
                if stream.write_all(&pong).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One ping round trip through any stream, bounded: true when the peer answered.
async fn ping_ok<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, seq: u32) -> bool {
    let exchange = async {
        s.write_all(&FramePing::encode(FramePing::PING, seq, 0))
            .await?;
        let mut pong = [0u8; FramePing::LEN];
        s.read_exact(&mut pong).await?;
        let (kind, echoed, _) = FramePing::decode(&pong);
        if kind != FramePing::PONG || echoed != seq {
            return Err(io::Error::other("bad pong"));
        }
        io::Result::Ok(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), exchange).await,
        Ok(Ok(()))
    )
}

// ---------------------------------------------------------------------------------------------
// Equivalents: deadpool and bb8, which have no background eviction.

struct Bb8Manager {
    addr: SocketAddr,
    seq: std::sync::atomic::AtomicU32,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    async fn is_valid(&self, conn: &mut TcpStream) -> io::Result<()> {
        let seq = self.seq.fetch_add(1, Relaxed).wrapping_add(1);
        if ping_ok(conn, seq).await {
            Ok(())
        } else {
            Err(io::Error::other("ping failed"))
        }
    }

    /// Runs on return only (never at checkout); lets the demo discard a connection it found
    /// dead, as a real client that saw an I/O error would.
    fn has_broken(&self, conn: &mut TcpStream) -> bool {
        known_dead(conn)
    }
}

#[derive(Clone, Copy, Debug)]
enum Equiv {
    Livepool,
    Deadpool,
    Bb8NoTest,
    Bb8Ping,
}

/// Per pool, with one connection: `ROUNDS` times, FIN the idle connection from the server,
/// wait 3 ms (the FIN has long arrived), then time one `get()` and check with a ping whether
/// the connection it handed out is alive. Also times `get()` + drop on a healthy pool.
pub(crate) fn equivalents() {
    const ROUNDS: usize = 200;
    let server = PingServer::start();
    let rt = current_thread();
    eprintln!(
        "EQUIV pool | dead handed out after FIN | get() after FIN p50/p99 | healthy get()+drop p50/p99"
    );
    for which in [
        Equiv::Livepool,
        Equiv::Deadpool,
        Equiv::Bb8NoTest,
        Equiv::Bb8Ping,
    ] {
        rt.block_on(async {
            let addr = server.addr;
            let lp = livepool::Pool::builder(addr)
                .max_size(1)
                .min_idle(1)
                .build()
                .expect("livepool");
            let dp = deadpool::managed::Pool::<NoopManager>::builder(NoopManager { addr })
                .max_size(1)
                .build()
                .expect("deadpool");
            let bb = bb8::Pool::builder()
                .max_size(1)
                .test_on_check_out(matches!(which, Equiv::Bb8Ping))
                .build(Bb8Manager {
                    addr,
                    seq: Default::default(),
                })
                .await
                .expect("bb8");
            let mut seq = 0u32;
            let mut healthy = Vec::with_capacity(ROUNDS);
            let mut after = Vec::with_capacity(ROUNDS);
            let mut dead = 0usize;
            // Healthy get + drop (the connection stays open and is reused).
            for _ in 0..ROUNDS {
                let start = Instant::now();
                let local = match which {
                    Equiv::Livepool => lp.get().await.expect("get").local_addr(),
                    Equiv::Deadpool => dp.get().await.expect("get").local_addr(),
                    _ => bb.get().await.expect("get").local_addr(),
                };
                healthy.push(start.elapsed());
                local.expect("local addr");
            }
            for _ in 0..ROUNDS {
                // Which connection is idle now: check it out once and note its address.
                let local = match which {
                    Equiv::Livepool => lp.get().await.expect("get").local_addr(),
                    Equiv::Deadpool => dp.get().await.expect("get").local_addr(),
                    _ => bb.get().await.expect("get").local_addr(),
                }
                .expect("local addr");
                server.fin(local).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
                seq += 1;
                let start = Instant::now();
                let alive = match which {
                    Equiv::Livepool => {
                        let mut c = lp.get().await.expect("get");
                        after.push(start.elapsed());
                        let ok = ping_ok(&mut c, seq).await;
                        if !ok {
                            c.mark_broken();
                        }
                        ok
                    }
                    Equiv::Deadpool => {
                        let mut c = dp.get().await.expect("get");
                        after.push(start.elapsed());
                        let ok = ping_ok(&mut *c, seq).await;
                        if !ok {
                            // The caller saw the error: discard it, as a real client would.
                            drop(deadpool::managed::Object::take(c));
                        }
                        ok
                    }
                    _ => {
                        let mut c = bb.get().await.expect("get");
                        after.push(start.elapsed());
                        // On return, `has_broken` discards it if the ping found it dead.
                        ping_ok(&mut *c, seq).await
                    }
                };
                if !alive {
                    dead += 1;
                }
            }
            eprintln!(
                "EQUIV {which:?} | {dead}/{ROUNDS} | {:.1} / {:.1} us | {:.2} / {:.2} us",
                us(percentile(&sorted(after.clone()), 0.5)),
                us(percentile(&sorted(after), 0.99)),
                us(percentile(&sorted(healthy.clone()), 0.5)),
                us(percentile(&sorted(healthy), 0.99)),
            );
            lp.close();
        });
    }
    drop(rt);
    drop(server);
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}
