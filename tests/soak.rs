//! Fault-matrix soak: random faults of every kind (FIN, RST, unsolicited bytes, a peer that
//! stops answering, the server going away and coming back) at a steady request rate.
//!
//! Asserts: zero stale handouts, zero cross-request leaks (each request carries a unique
//! token the server echoes; reading another request's token is a leak), every `get()`
//! answered within its deadline, no panic, and open file descriptors back to baseline.
//!
//! # The stale-handout oracle
//!
//! A stale handout is a `get()` that returns a connection whose client-side socket the kernel
//! had already shown dead (the server's FIN or RST processed) or unusable (the server's
//! unsolicited bytes received) before that `get()` began. Three exact records decide it:
//! - **which connection**: the server numbers every connection it accepts (the numbers go on
//!   across restarts); the soak's protocol asks for the number in its setup, so every
//!   checked-out connection carries the server's own name for it;
//! - **what the server did**: the server records each fault after the close or the write has
//!   returned, with the number of bytes it had written on the connection by then;
//! - **when the client's kernel showed it**: right after, the injector asks the kernel about
//!   that one client socket over netlink (`livepool_testkit::diag`: an exact lookup by ports and by the
//!   socket's cookie, taken at accept) until it is no longer ESTABLISHED, is gone (a reset
//!   socket is unhashed), or has received every byte the server sent; then it records the
//!   instant, under the lock the workers read it with.
//!
//! A worker's checkout is stale when its connection's instant is earlier than the moment its
//! `get()` began: the pool's own checkout check came later, on a socket whose state was
//! already there to see. Nothing in this is a guess about timing (no grace period), and no
//! record can name the wrong socket (an accept number is never reused, a cookie neither).
//! A checkout inside the window between the kernel learning of the fault and the injector's
//! lookup is not counted; the lookup follows the server's record with no sleep in between,
//! so the window is the injector's wake-up time. On a stale handout the worker also prints
//! its own `peek_socket()` of the connection, as a second witness.
//!
//! Runs 20 s by default; `LIVEPOOL_SOAK_SECS` changes that.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use livepool::{BreakerConfig, FramePing, HeartbeatError, Io, Pool, Protocol, SetupError};
use livepool_testkit::*;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// When the client's kernel showed the fault of each connection, by the server's id of it.
type Known = Mutex<HashMap<u64, Instant>>;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    leaks: AtomicU64,
    faults: AtomicU64,
    restarts: AtomicU64,
}

/// The fault server's frames with one setup step: ask the server for its id of the
/// connection. Otherwise raw bytes pinged as `FramePing` pings.
#[derive(Debug)]
struct Soak {
    heartbeat: FramePing,
}

struct SoakConn {
    io: Io,
    /// The server's id of this connection.
    server_id: u64,
}

impl Protocol for Soak {
    type Conn = SoakConn;

    fn io(conn: &SoakConn) -> &Io {
        &conn.io
    }

    fn io_mut(conn: &mut SoakConn) -> &mut Io {
        &mut conn.io
    }

    async fn setup(&self, mut io: Io) -> Result<SoakConn, SetupError> {
        io.write_all(&[0x03, 0, 0, 0, 0, 0, 0, 0]).await?;
        let mut reply = [0u8; 8];
        io.read_exact(&mut reply).await?;
        if reply[0] != 0x04 {
            return Err(SetupError::protocol(format!("not an id frame: {reply:?}")));
        }
        reply[0] = 0;
        Ok(SoakConn {
            io,
            server_id: u64::from_be_bytes(reply),
        })
    }

    fn has_heartbeat(&self) -> bool {
        true
    }

    async fn heartbeat(&self, conn: &mut SoakConn) -> Result<(), HeartbeatError> {
        self.heartbeat.ping(&mut conn.io).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix_soak() {
    let secs: u64 = std::env::var("LIVEPOOL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let base_fds = open_fds();
    let log = Arc::new(ConnLog::default());
    let first = FaultServer::start_logged("127.0.0.1:0".parse().unwrap(), log.clone()).await;
    let addr = first.addr;
    let server: Arc<Mutex<Option<FaultServer>>> = Arc::new(Mutex::new(Some(first)));
    let known: Arc<Known> = Default::default();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_token = Arc::new(AtomicU64::new(1));

    let pool = Pool::builder(addr)
        .protocol(Soak {
            heartbeat: FramePing::new(),
        })
        .max_size(8)
        .min_idle(2)
        .connect_timeout(Some(200 * MS))
        .wait_timeout(Some(500 * MS))
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
        let (pool, known, tally, stop, next_token) = (
            pool.clone(),
            known.clone(),
            tally.clone(),
            stop.clone(),
            next_token.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x9e37_79b9 ^ (w + 1));
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
                // Stale: the client's kernel showed this connection's fault before we asked.
                let id = conn.server_id;
                let shown = known.lock().get(&id).copied();
                if let Some(shown) = shown
                    && shown < started
                {
                    tally.stale.fetch_add(1, SeqCst);
                    eprintln!(
                        "STALE: connection {id} ({:?}) handed out {:?} after its client kernel \
                         showed the fault; our own peek of it now: {:?}",
                        conn.io.local_addr(),
                        started - shown,
                        conn.io.peek_socket()
                    );
                    conn.mark_broken();
                    continue;
                }
                let t = next_token.fetch_add(1, SeqCst);
                let res = tokio::time::timeout(50 * MS, async {
                    conn.io.write_all(&token(t)).await?;
                    let mut buf = [0u8; 8];
                    conn.io.read_exact(&mut buf).await?;
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
                if rng.usize(..4) == 0 {
                    tokio::time::sleep(MS).await;
                }
            }
        }));
    }

    // The injector: a fault every 40 ms; the server goes away and comes back every ~3 s.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng = fastrand::Rng::with_seed(0x1234_5678);
    let mut next_restart = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(40 * MS).await;
        if Instant::now() >= next_restart {
            next_restart = Instant::now() + Duration::from_secs(3);
            let old = server.lock().take().expect("server present");
            for id in old.shutdown().await {
                note_when_shown(&log, &known, id).await;
            }
            tally.restarts.fetch_add(1, SeqCst);
            // The server stays away for a while: connects fail, the breaker opens.
            tokio::time::sleep(150 * MS).await;
            *server.lock() = Some(FaultServer::start_logged(addr, log.clone()).await);
            continue;
        }
        let (id, kind) = {
            let guard = server.lock();
            let s = guard.as_ref().expect("server present");
            let clients = s.clients();
            if clients.is_empty() {
                continue;
            }
            let client = clients[rng.usize(..clients.len())];
            let kind = rng.u8(..4);
            let Some(id) = s.try_fault(client, kind) else {
                continue;
            };
            (id, kind)
        };
        tally.faults.fetch_add(1, SeqCst);
        if kind < 3 {
            note_when_shown(&log, &known, id).await;
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
        "soak {secs} s: ok {} failed {} faults {} restarts {} shown to the client {} stale {} leaks {}; evictions {:?}; breaker transitions {}",
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.faults.load(SeqCst),
        tally.restarts.load(SeqCst),
        known.lock().len(),
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

/// Waits until the server has applied its fault to connection `id` and the client's kernel
/// shows it, then records when, under the lock the workers read it with (so a worker whose
/// `get()` began after the recorded instant sees the record).
async fn note_when_shown(log: &ConnLog, known: &Known, id: u64) {
    // None: the client closed the connection before the server got to it.
    let Some(applied) = log.wait_applied(id, 5).await else {
        return;
    };
    let rec = log.get(id).expect("a record of every accepted connection");
    // None: the client had closed it before the server accepted it; nothing to hand out.
    let Some(cookie) = rec.cookie else { return };
    let shown = || match diag::lookup(rec.client, rec.server, Some(cookie))
        .unwrap_or_else(|e| panic!("sock_diag lookup of connection {id}: {e}"))
    {
        // Reset (a reset socket leaves the tables) or closed by the pool.
        None => true,
        Some(d) if d.state != ESTABLISHED => true,
        Some(d) => {
            applied.fault == Fault::Bytes && d.bytes_received.is_some_and(|n| n >= applied.sent)
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !shown() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client's kernel did not show {applied:?} on connection {id} within 5 s"
        );
        tokio::time::sleep(MS).await;
    }
    let mut known = known.lock();
    known.insert(id, Instant::now());
}
