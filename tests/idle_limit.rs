//! A server that closes idle connections sooner than the pool's heartbeat: the pool churns
//! (the idle watch evicts each member on the FIN, the refill replaces it, the server closes
//! the new one after the same time), finds the server's idle limit from those closes alone,
//! shows it in `statistics().server_idle_limit` and says so once at WARN.
//!
//! Against a loopback server in this file that closes every connection it has read nothing
//! on for a set time, and against a real `redis-server` with `timeout 1` (skipped when it is
//! not installed, unless `LIVEPOOL_REQUIRE_ALL=1`). Every wait is bounded and paced by the
//! pool's own counters; the only time asserted is the figure, within a generous band around
//! the server's configured limit. The runtimes are single-threaded, so the reaper logs on the
//! test's thread, where the logs are captured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use livepool::{EvictReason, FramePing, Pool, RedisPing};
use livepool_testkit::redis_server::{RedisOptions, RedisServer};
use livepool_testkit::{Captured, capture_logs, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MS: Duration = Duration::from_millis(1);

/// One test at a time: each captures this thread's tracing output, and tracing's per-callsite
/// interest cache is rebuilt whenever another test's capture starts or ends; with the
/// captures one after the other a warning can only go to the one listening.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every idle-limit warning carries, whichever clock found the limit (its wording
/// differs between "after about X without traffic" and "idle for about X although heartbeats
/// were answered").
const WARNING: &str = "server_idle_limit_ms=";

/// A loopback server that closes (FIN) every connection on which it has read nothing for
/// `limit` since the accept or the last frame. It answers `FramePing` pings with their
/// pong and echoes other 8-byte frames. Returns its address and how many it closed so.
async fn idle_closing_server(limit: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut frame = [0u8; 8];
                loop {
                    match tokio::time::timeout(limit, sock.read_exact(&mut frame)).await {
                        Err(_) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            return; // dropped: FIN
                        }
                        Ok(Err(_)) => return, // the client closed it
                        Ok(Ok(_)) => {
                            let (kind, seq, ts) = FramePing::decode(&frame);
                            if kind == FramePing::PING {
                                frame = FramePing::encode(FramePing::PONG, seq, ts);
                            }
                            if sock.write_all(&frame).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, closed)
}

/// Polls the pool's statistics every 10 ms until `cond` holds; panics after `secs` seconds.
async fn wait_for<P: livepool::Protocol>(
    pool: &Pool<P>,
    secs: u64,
    what: &str,
    cond: impl Fn(&livepool::Statistics) -> bool,
) {
    within(secs, what, async {
        while !cond(&pool.statistics()) {
            tokio::time::sleep(10 * MS).await;
        }
    })
    .await
}

/// The idle-limit warnings logged so far.
fn warnings(log: &Captured) -> Vec<String> {
    log.text()
        .lines()
        .filter(|l| l.contains(WARNING))
        .map(str::to_string)
        .collect()
}

/// Waits for the detection, checks the figure against the server's `limit`, lets the churn
/// go on for a few more closes and checks that the warning came once. Returns it.
async fn detect_and_warn_once<P: livepool::Protocol>(
    pool: &Pool<P>,
    log: &Captured,
    limit: Duration,
    secs: u64,
) -> String {
    wait_for(
        pool,
        secs,
        "statistics().server_idle_limit to be detected",
        |s| s.server_idle_limit.is_some(),
    )
    .await;
    let stats = pool.statistics();
    let figure = stats.server_idle_limit.unwrap();
    // The pool cannot see a close before it happens, nor much later than the server's
    // check; half the limit to three times it is plausible, whatever the machine's load.
    assert!(
        figure >= limit / 2 && figure <= limit * 3,
        "detected {figure:?} for a server that closes after {limit:?}: {:?}",
        stats.evictions()
    );
    // More churn, detected again and again: still one warning.
    let closes = stats.evicted(EvictReason::PeerClosed);
    wait_for(pool, secs, "four more idle closes", |s| {
        s.evicted(EvictReason::PeerClosed) >= closes + 4
    })
    .await;
    let found = warnings(log);
    assert_eq!(found.len(), 1, "want exactly one warning: {found:#?}");
    let line = found.into_iter().next().unwrap();
    assert!(line.contains(" WARN "), "{line}");
    line
}

#[tokio::test]
async fn a_proxy_idle_limit_is_detected_and_warned_about_once() {
    let _serial = SERIAL.lock().await;
    let (log, _guard) = capture_logs(tracing::Level::WARN);
    let limit = 300 * MS;
    let (addr, closed) = idle_closing_server(limit).await;
    // The raw protocol: no heartbeat.
    let pool = Pool::builder(addr)
        .min_idle(2)
        .breaker(None)
        .build()
        .unwrap();
    let line = detect_and_warn_once(&pool, &log, limit, 20).await;
    assert!(line.contains(&addr.to_string()), "no endpoint: {line}");
    assert!(line.contains("sends no heartbeat"), "{line}");
    assert!(line.contains("idle_timeout"), "{line}");
    assert!(closed.load(Ordering::SeqCst) >= 3);
    // The churn was all idle closes: nothing else evicted them.
    let stats = pool.statistics();
    assert_eq!(
        stats.evicted_total(),
        stats.evicted(EvictReason::PeerClosed),
        "{:?}",
        stats.evictions()
    );
}

/// The control: a heartbeat well inside the server's limit keeps the members open, so there
/// is nothing to detect (and no warning) however long they stay idle.
#[tokio::test]
async fn no_limit_is_reported_while_heartbeats_keep_members_open() {
    let _serial = SERIAL.lock().await;
    let (log, _guard) = capture_logs(tracing::Level::WARN);
    let limit = 1_000 * MS;
    let (addr, closed) = idle_closing_server(limit).await;
    let pool = Pool::builder(addr)
        .min_idle(2)
        .protocol(FramePing::new())
        .heartbeat_interval(100 * MS)
        .heartbeat_timeout(50 * MS)
        .reap_interval(20 * MS)
        .breaker(None)
        .build()
        .unwrap();
    // At least 90 ms between two heartbeats of one member (10 % jitter): 40 answered by two
    // members take more than the server's limit.
    wait_for(&pool, 20, "40 answered heartbeats", |s| s.heartbeats >= 40).await;
    let stats = pool.statistics();
    assert_eq!(stats.evicted_total(), 0, "{:?}", stats.evictions());
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    assert_eq!(stats.server_idle_limit, None);
    assert!(warnings(&log).is_empty(), "{}", log.text());
}

/// Sleeps until the wall clock's second is 90 % through. Redis counts idle time in whole
/// seconds of the wall clock, and the pool's reaper ticks (heartbeats go out on them) every
/// `reap_interval` from the pool's start: a pool started then sends its heartbeats just
/// before the server's second turns. Redis ignores such a heartbeat when it comes in the
/// same second as the connection's last command and counts one in the next second as one
/// second more, so members are closed 2 s after their return or 1.1 s after a heartbeat:
/// the timing that once made the detector report a server that does not count heartbeats.
/// Only a start time: nothing about the wall clock is asserted, and a late wake-up merely
/// tests another phase.
async fn late_in_the_second() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let late = Duration::from_millis(900);
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    let wait = if into <= late {
        late - into
    } else {
        late + Duration::from_secs(1) - into
    };
    tokio::time::sleep(wait).await;
}

/// The case of the issue: Redis `timeout 1` under a 5 s heartbeat. Redis counts idle time
/// in whole seconds, so it closes after 1 to about 2 s, and it counts heartbeats (PING) as
/// activity: the limit is found on the clock of the last traffic whenever the heartbeats
/// come, and the advice is about the heartbeat interval.
#[tokio::test]
async fn redis_timeout_is_detected_and_warned_about_once() {
    let _serial = SERIAL.lock().await;
    let (log, _guard) = capture_logs(tracing::Level::WARN);
    let Some(redis) = RedisServer::start_with(RedisOptions::new().arg("--timeout").arg("1")).await
    else {
        return;
    };
    late_in_the_second().await;
    let pool = Pool::builder(redis.addr())
        .min_idle(2)
        .protocol(RedisPing)
        .heartbeat_interval(Duration::from_secs(5))
        .heartbeat_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let line = detect_and_warn_once(&pool, &log, Duration::from_secs(1), 60).await;
    assert!(
        line.contains(&redis.addr().to_string()),
        "no endpoint: {line}"
    );
    assert!(
        line.contains("measured_from=\"last_traffic\""),
        "Redis counts heartbeats as activity: {line}"
    );
    assert!(
        line.contains("heartbeat_interval (5.0 s) is not below it"),
        "{line}"
    );
    assert!(line.contains("Redis `timeout`"), "{line}");
    assert!(line.contains("heartbeat_interval=Some(5s)"), "{line}");
}
