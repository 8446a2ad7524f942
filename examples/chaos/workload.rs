//! The workload: the pool's (or each endpoint's) settings, the client it checks out from,
//! and the tasks that send requests, check the echoed tokens (leaks) and look for stale handouts.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use livepool::{Balancer, BreakerConfig, Conn, Ejection, FramePing, Pool, PoolConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::state::{Chaos, REQ_LEN, REQUEST};

const DEADLINE: Duration = Duration::from_millis(300);

const STALE_GRACE: Duration = Duration::from_millis(5);

/// What the workload checks out from: the pool (one endpoint) or the balancer (several).
#[derive(Clone)]
pub(crate) enum Client {
    Pool(Pool<FramePing>),
    Balancer(Balancer<FramePing>),
}

impl Client {
    pub(crate) async fn get(&self) -> Result<Conn<FramePing>, livepool::Error> {
        match self {
            Client::Pool(p) => p.get().await,
            Client::Balancer(b) => b.get().await,
        }
    }
}

/// Checks out a connection, flags it if the server had faulted it before, and runs one
/// exchange; `served` says by which server, once there is a connection.
async fn request(
    client: &Client,
    chaos: &Chaos,
    token: u64,
    served: &mut Option<usize>,
) -> Result<(), &'static str> {
    let mut conn = client.get().await.map_err(|e| match () {
        _ if e.is_all_endpoints() => "get: every endpoint failed",
        _ if e.is_circuit_open() => "get: circuit open",
        _ if e.is_connect() => "get: connect error",
        _ if e.is_timeout() => "get: timeout",
        _ => "get: other",
    })?;
    let srv = chaos.server_of(&conn);
    *served = Some(srv);
    check_stale(&conn, chaos, srv);
    let mut frame = [0u8; REQ_LEN];
    frame[0] = REQUEST;
    frame[8..].copy_from_slice(&token.to_be_bytes());
    let io_kind = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::BrokenPipe => "broken pipe",
        _ => "other i/o error",
    };
    conn.write_all(&frame).await.map_err(io_kind)?;
    let mut reply = [0u8; REQ_LEN];
    conn.read_exact(&mut reply).await.map_err(io_kind)?;
    if reply[..8] != frame[..8] {
        conn.mark_broken(); // out of step: never return it
        return Err("garbage reply");
    }
    if reply[8..] != frame[8..] {
        conn.mark_broken();
        chaos.leaks.fetch_add(1, Relaxed);
        return Err("LEAK");
    }
    Ok(())
}

/// A stale handout: the server faulted this connection more than `STALE_GRACE` ago and the
/// kernel still says so now. (The peek rules out a new connection from a reused port that the
/// server has not accepted yet.)
fn check_stale(conn: &Conn<FramePing>, chaos: &Chaos, srv: usize) {
    let now = Instant::now();
    let Ok(local) = conn.local_addr() else { return };
    let faulted = chaos.servers[srv]
        .faulted
        .lock()
        .unwrap()
        .get(&local)
        .copied();
    let Some((fault, at)) = faulted else {
        return;
    };
    if !fault.kernel_visible() || now.saturating_duration_since(at) <= STALE_GRACE {
        return;
    }
    let peek = conn.peek_socket();
    if !matches!(&peek, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
        let (id, ago) = (conn.id(), now - at);
        let msg = format!(
            "conn {id} ({local}): {} {ago:?} before checkout, peek {peek:?}",
            fault.name()
        );
        chaos.stale.lock().unwrap().push(msg);
    }
}

pub(crate) async fn worker(client: Client, chaos: Arc<Chaos>, i: u64) {
    let (rate, tasks) = (chaos.opts.rate as f64, chaos.opts.tasks as f64);
    let period = Duration::from_secs_f64(tasks / rate); // spread evenly: `rate` in all
    let offset = period.mul_f64(i as f64 / tasks);
    let mut tick = tokio::time::interval_at(Instant::now() + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(chaos.end) => return,
        }
        let token = chaos.next_token.fetch_add(1, Relaxed);
        let mut served = None;
        let res = tokio::time::timeout(DEADLINE, request(&client, &chaos, token, &mut served));
        let outcome = res.await.unwrap_or(Err("deadline"));
        if let Some(s) = served.map(|s| &chaos.servers[s]) {
            if outcome.is_ok() { &s.ok } else { &s.failed }.fetch_add(1, Relaxed);
        }
        match outcome {
            Ok(()) => chaos.ok.fetch_add(1, Relaxed),
            Err(kind) => {
                *chaos.failures.lock().unwrap().entry(kind).or_default() += 1;
                chaos.failed.fetch_add(1, Relaxed)
            }
        };
    }
}

/// Every endpoint's pool settings (the single pool's too); the protocol is `FramePing`.
pub(crate) fn settings() -> PoolConfig {
    PoolConfig {
        max_size: 16,
        min_idle: 4,
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_millis(200),
        reap_interval: Duration::from_millis(100),
        connect_timeout: Some(Duration::from_secs(1)),
        // A restart lasts 1 s: probe again soon rather than after the default 30 s.
        breaker: Some(
            BreakerConfig::new()
                .open_for(Duration::from_millis(200))
                .max_open_for(Duration::from_millis(500)),
        ),
        ..PoolConfig::default()
    }
}

/// Outlier ejection with several endpoints: quick enough that ejections, returns and
/// recoveries all happen within a 3 s outage and the seconds after it.
pub(crate) fn ejection() -> Ejection {
    Ejection::new()
        .consecutive_failures(3)
        .base(Duration::from_secs(1))
        .max(Duration::from_secs(4))
        .max_ejected_share(0.5)
}
