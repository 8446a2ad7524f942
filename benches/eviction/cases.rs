//! The criterion cases.
//!
//! Criterion part (`cargo bench --bench eviction`), `iter_custom`, one `BenchmarkId` per
//! (fault, K idle members):
//! - a livepool pool (idle watch on, the default) holds K idle members connected to a loopback
//!   server in this process; the server side of every connection is a plain blocking
//!   `std::net::TcpStream` in a map keyed by the client's address, accepted on demand from a
//!   non-blocking listener (backlog 4096), so no server task runs while a fault is timed;
//! - per iteration: take one idle member's server socket, start the clock, make the fault,
//!   await the eviction event for that connection (matched by `local_addr`) from
//!   `pool.events()`, stop the clock. Faults: `fin` (drop the server socket), `rst`
//!   (`SO_LINGER` 0, then drop), `bytes` (write 3 unsolicited bytes), `gone` (K = 1 only: drop
//!   the listener and the socket; the listener is bound again outside the timed interval);
//! - the pool is topped up by hand outside the timed interval (`min_idle` 0: check out every
//!   idle member and open the missing ones, then return them all) whenever it falls below
//!   K − 5 %, so a "K" case holds between 0.95·K and K idle members (K = 1: exactly 1);
//! - every single fault → event latency is also kept, and p50 / p99 / max are printed on
//!   stderr at the end of each case (warm-up iterations included).
//!
//! K: 1, 1,000 and as close to 10,000 as the open-file limit allows (the server side is in
//! this process, so K connections cost 2·K descriptors; see `max_k`). The runtime is a
//! current-thread one (the pool's reaper and the bench share one thread) except the `*-mt`

use livepool_testkit::bench::*;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use livepool::EvictReason;

use crate::shared::{EVENT_DEADLINE, SETUP_DEADLINE, listen, summary};

// ---------------------------------------------------------------------------------------------
// The fault server: server ends held as plain blocking std sockets, accepted on demand.

pub(crate) struct FaultServer {
    pub(crate) addr: SocketAddr,
    listener: Option<std::net::TcpListener>,
    /// Server end of every connection, keyed by the client's address (its `local_addr`).
    pub(crate) socks: HashMap<SocketAddr, std::net::TcpStream>,
}

impl FaultServer {
    pub(crate) fn new() -> FaultServer {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        FaultServer {
            addr: listener.local_addr().expect("addr"),
            listener: Some(listener),
            socks: HashMap::new(),
        }
    }

    /// Accepts every connection waiting in the backlog.
    pub(crate) fn accept_pending(&mut self) {
        let Some(l) = &self.listener else { return };
        loop {
            match l.accept() {
                Ok((s, peer)) => {
                    s.set_nodelay(true).expect("nodelay");
                    self.socks.insert(peer, s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    fn rebind(&mut self) {
        if self.listener.is_none() {
            self.listener = Some(listen(self.addr));
        }
    }

    pub(crate) fn take_any(&mut self) -> (SocketAddr, std::net::TcpStream) {
        let key = *self.socks.keys().next().expect("no server socket left");
        let sock = self.socks.remove(&key).expect("present");
        (key, sock)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    Fin,
    Rst,
    Bytes,
    Gone,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Fin => "fin",
            Fault::Rst => "rst",
            Fault::Bytes => "bytes",
            Fault::Gone => "gone",
        }
    }

    fn expected(self) -> EvictReason {
        match self {
            Fault::Fin | Fault::Gone => EvictReason::PeerClosed,
            Fault::Rst => EvictReason::Reset,
            Fault::Bytes => EvictReason::UnexpectedData,
        }
    }

    /// Makes the fault; returns the server socket when it must outlive the timed interval.
    fn apply(
        self,
        sock: std::net::TcpStream,
        server: &mut FaultServer,
    ) -> Option<std::net::TcpStream> {
        match self {
            Fault::Fin => None,
            Fault::Rst => {
                socket2::SockRef::from(&sock)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER");
                None
            }
            Fault::Bytes => {
                use std::io::Write;
                (&sock).write_all(b"abc").expect("write stray bytes");
                Some(sock)
            }
            Fault::Gone => {
                server.listener = None;
                None
            }
        }
    }
}

/// Checks out every idle member and opens the missing ones until `k` are held, then returns
/// them all, accepts their server ends, and lets the watchers re-arm.
async fn top_up(pool: &livepool::Pool, server: &mut FaultServer, k: usize) {
    server.rebind();
    let deadline = Instant::now() + SETUP_DEADLINE;
    let mut held = Vec::with_capacity(k);
    while held.len() < k {
        let conn = tokio::time::timeout(SETUP_DEADLINE, pool.get())
            .await
            .expect("top-up get timed out")
            .expect("top-up get");
        held.push(conn);
        if held.len() % 1024 == 0 {
            server.accept_pending();
        }
    }
    drop(held);
    loop {
        server.accept_pending();
        if server.socks.len() >= k {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server ends not accepted in time"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Watchers park while their member is checked out; give the reaper time to re-arm them.
    tokio::time::sleep(Duration::from_millis(1 + k as u64 / 500)).await;
    assert_eq!(pool.status().idle, k, "pool not topped up");
}

/// Waits for the eviction event of the connection whose client address is `addr`.
pub(crate) async fn wait_event(events: &mut livepool::Events, addr: SocketAddr) -> EvictReason {
    loop {
        match events.recv().await {
            Ok(ev) if ev.local_addr == Some(addr) => return ev.reason,
            Ok(_) | Err(livepool::EventsError::Lagged(_)) => {}
            Err(e) => panic!("event stream: {e}"),
        }
    }
}

fn eviction_pool(addr: SocketAddr, k: usize) -> livepool::Pool {
    livepool::Pool::builder(addr)
        .max_size(k)
        .min_idle(0)
        .idle_timeout(None)
        .wait_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("livepool")
}

/// One criterion case: `fault` against a pool of `k` idle members.
pub(crate) fn eviction_case(c: &mut Criterion, fault: Fault, k: usize, multi_thread: bool) {
    let rt = if multi_thread {
        two_workers()
    } else {
        current_thread()
    };
    let mut server = FaultServer::new();
    let pool = rt.block_on(async { eviction_pool(server.addr, k) });
    let mut events = pool.events();
    let low = k - k / 20;
    let mut lat: Vec<Duration> = Vec::with_capacity(16_384);
    let mut missed = 0u64;
    let mut reasons: HashMap<EvictReason, u64> = HashMap::new();
    // Samples over 1 ms: (iterations since the last top-up, ms since the pool was built mod
    // 1000, i.e. the phase of the reaper's 1 s tick).
    let mut slow: Vec<(u64, u128)> = Vec::new();
    let mut since_top_up = 0u64;
    let built = Instant::now();
    rt.block_on(top_up(&pool, &mut server, k));

    let name = if multi_thread {
        format!("{}-mt", fault.name())
    } else {
        fault.name().to_string()
    };
    let mut group = c.benchmark_group("eviction");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        // K = 1 pays a top-up (a connect) per iteration outside the timed interval, which
        // criterion's estimate does not see: give it longer to collect a few thousand samples.
        .measurement_time(Duration::from_millis(if k == 1 { 4000 } else { 600 }));
    group.bench_function(BenchmarkId::new(name.clone(), k), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if pool.status().idle < low || server.listener.is_none() {
                        top_up(&pool, &mut server, k).await;
                        since_top_up = 0;
                    }
                    since_top_up += 1;
                    let (addr, sock) = server.take_any();
                    let start = Instant::now();
                    let keep = fault.apply(sock, &mut server);
                    let got =
                        tokio::time::timeout(EVENT_DEADLINE, wait_event(&mut events, addr)).await;
                    let elapsed = start.elapsed();
                    match got {
                        Ok(reason) => *reasons.entry(reason).or_default() += 1,
                        Err(_) => missed += 1,
                    }
                    if elapsed > Duration::from_millis(1) {
                        slow.push((since_top_up, built.elapsed().as_millis() % 1000));
                    }
                    drop(keep);
                    total += elapsed;
                    lat.push(elapsed);
                }
                total
            })
        })
    });
    group.finish();
    let wrong: u64 = reasons
        .iter()
        .filter(|(r, _)| **r != fault.expected())
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "PCT eviction/{name}/{k}: {} missed={missed} wrong_reason={wrong} reasons={reasons:?} evicted_total={}",
        summary(&mut lat),
        pool.statistics().evicted_total()
    );
    let after_top_up = slow.iter().filter(|(i, _)| *i <= 3).count();
    eprintln!(
        "SLOW eviction/{name}/{k}: {} samples > 1 ms, {after_top_up} of them within 3 iterations of a top-up; (iter since top-up, tick phase ms): {:?}",
        slow.len(),
        &slow[..slow.len().min(40)]
    );
    rt.block_on(async move {
        pool.close();
        drop(pool);
    });
    drop(server);
    drop(rt);
}
