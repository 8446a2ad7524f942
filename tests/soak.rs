//! Fault-matrix soak: random faults of every kind (FIN, RST, unsolicited bytes, a peer that
//! stops answering, the server going away and coming back) at a steady request rate.
//!
//! Asserts: zero stale handouts (a connection the client's kernel already knew was dead,
//! handed out by a later `get()`), zero cross-request leaks (each request carries a unique
//! token the server echoes; reading another request's token is a leak), every `get()`
//! answered within its deadline, no panic, and open file descriptors back to baseline.
//!
//! Runs 20 s by default; `LIVEPOOL_SOAK_SECS` changes that.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use livepool::{BreakerConfig, FrameHeartbeat, Pool};
use parking_lot::Mutex;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// A fault the client's kernel is known to have seen, per (client address, connection).
#[derive(Clone, Copy)]
struct Known {
    generation: usize,
    at: Instant,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    leaks: AtomicU64,
    faults: AtomicU64,
    restarts: AtomicU64,
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_soak() {
    let secs: u64 = std::env::var("LIVEPOOL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let base_fds = open_fds();
    let first = FaultServer::start().await;
    let addr = first.addr;
    let server: Arc<Mutex<Option<FaultServer>>> = Arc::new(Mutex::new(Some(first)));
    let known: Arc<Mutex<HashMap<SocketAddr, Known>>> = Default::default();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_token = Arc::new(AtomicU64::new(1));

    let pool = Pool::builder(addr)
        .max_size(8)
        .min_idle(2)
        .connect_timeout(Some(200 * MS))
        .wait_timeout(Some(500 * MS))
        .heartbeat(FrameHeartbeat::new())
        .heartbeat_interval(200 * MS)
        .heartbeat_timeout(80 * MS)
        .reap_interval(20 * MS)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(3)
                .open_for(100 * MS)
                .max_open_for(400 * MS),
        ))
        .build()
        .unwrap();
    // get() must always answer: wait 500 ms + connect 200 ms, plus room for a loaded machine.
    let get_deadline = Duration::from_secs(3);

    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (pool, server, known, tally, stop, next_token) = (
            pool.clone(),
            server.clone(),
            known.clone(),
            tally.clone(),
            stop.clone(),
            next_token.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9 ^ (w + 1);
            while !stop.load(SeqCst) {
                let started = Instant::now();
                let got = tokio::time::timeout(get_deadline, pool.get()).await;
                let Ok(got) = got else {
                    panic!("get() did not answer within {get_deadline:?}");
                };
                let Ok(mut conn) = got else {
                    tally.failed.fetch_add(1, SeqCst);
                    tokio::time::sleep(5 * MS).await;
                    continue;
                };
                // Stale: the kernel had reported this very connection dead before we asked.
                let local = conn.local_addr().unwrap();
                let generation = server.lock().as_ref().and_then(|s| s.generation(local));
                if let Some(k) = known.lock().get(&local).copied()
                    && Some(k.generation) == generation
                    && k.at < started
                {
                    tally.stale.fetch_add(1, SeqCst);
                    eprintln!(
                        "STALE: {local} (connection {}) handed out after its fault",
                        k.generation
                    );
                }
                let t = next_token.fetch_add(1, SeqCst);
                let res = tokio::time::timeout(50 * MS, async {
                    conn.write_all(&token(t)).await?;
                    let mut buf = [0u8; 8];
                    conn.read_exact(&mut buf).await?;
                    Ok::<_, std::io::Error>(buf)
                })
                .await;
                match res {
                    Ok(Ok(reply)) if reply == token(t) => {
                        tally.ok.fetch_add(1, SeqCst);
                    }
                    Ok(Ok(reply)) if reply[0] == b'T' => {
                        tally.leaks.fetch_add(1, SeqCst);
                        eprintln!("LEAK: request {t} read {reply:?}");
                        conn.mark_broken();
                    }
                    Ok(Ok(_garbage)) => {
                        // Unsolicited bytes that arrived during this exchange: the protocol
                        // broke, not the pool. The caller marks the connection broken.
                        conn.mark_broken();
                        tally.failed.fetch_add(1, SeqCst);
                    }
                    _ => {
                        tally.failed.fetch_add(1, SeqCst);
                    }
                }
                drop(conn);
                if rng(&mut seed).is_multiple_of(4) {
                    tokio::time::sleep(MS).await;
                }
            }
        }));
    }

    // The injector: a fault every 40 ms; the server goes away and comes back every ~3 s.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seed = 0x1234_5678u64;
    let mut next_restart = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(40 * MS).await;
        if Instant::now() >= next_restart {
            next_restart = Instant::now() + Duration::from_secs(3);
            let old = server.lock().take().expect("server present");
            let clients: Vec<_> = old
                .clients()
                .into_iter()
                .map(|c| (c, old.generation(c)))
                .collect();
            old.shutdown().await;
            for (c, g) in clients {
                note_when_known(&known, c, addr, g, 0).await;
            }
            tally.restarts.fetch_add(1, SeqCst);
            tokio::time::sleep(150 * MS).await;
            *server.lock() = Some(FaultServer::start_on(addr).await);
            continue;
        }
        let (client, generation, kind) = {
            let guard = server.lock();
            let s = guard.as_ref().expect("server present");
            let clients = s.clients();
            if clients.is_empty() {
                continue;
            }
            let client = clients[(rng(&mut seed) % clients.len() as u64) as usize];
            let kind = (rng(&mut seed) % 4) as u8;
            if !s.try_fault(client, kind) {
                continue;
            }
            (client, s.generation(client), kind)
        };
        tally.faults.fetch_add(1, SeqCst);
        if kind < 3 {
            note_when_known(&known, client, addr, generation, kind).await;
        }
    }
    stop.store(true, SeqCst);
    for w in workers {
        within(10, "worker to stop", w)
            .await
            .expect("a worker panicked");
    }

    let s = pool.statistics();
    eprintln!(
        "soak {secs} s: ok {} failed {} faults {} restarts {} stale {} leaks {}; evictions {:?}; breaker transitions {}",
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.faults.load(SeqCst),
        tally.restarts.load(SeqCst),
        tally.stale.load(SeqCst),
        tally.leaks.load(SeqCst),
        s.evictions(),
        s.breaker_transitions
    );
    assert_eq!(tally.stale.load(SeqCst), 0, "stale handouts");
    assert_eq!(tally.leaks.load(SeqCst), 0, "cross-request leaks");
    assert!(
        tally.ok.load(SeqCst) > 1000,
        "too few successful requests to mean anything"
    );
    assert!(tally.faults.load(SeqCst) > 50, "too few faults injected");

    pool.close();
    drop(pool);
    if let Some(server) = server.lock().take() {
        drop(server);
    }
    wait_until(10, "file descriptors back to baseline", || {
        open_fds() <= base_fds
    })
    .await;
}

/// Waits until the client's kernel shows the fault on this connection, then records when.
async fn note_when_known(
    known: &Mutex<HashMap<SocketAddr, Known>>,
    client: SocketAddr,
    server: SocketAddr,
    generation: Option<usize>,
    kind: u8,
) {
    let Some(generation) = generation else { return };
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let seen = match (kind, kernel_socket(client, server)) {
            (2, Some(s)) => s.rx_queue > 0,
            (2, None) => true,
            (_, s) => s.is_none_or(|s| s.state != ESTABLISHED),
        };
        if seen {
            known.lock().insert(
                client,
                Known {
                    generation,
                    at: Instant::now(),
                },
            );
            return;
        }
        tokio::time::sleep(MS).await;
    }
}
