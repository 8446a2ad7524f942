//! The deadpool `Manager`: `create` connects with socket2 options through the breaker gate;
//! `recycle` runs the cheap checks of an idle member, cheapest first.

use std::io;
use std::sync::Arc;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::breaker::{Admit, Outcome};
use crate::config::Config;
use crate::conn::{DEAD, HEARTBEAT, IDLE, Member, Shared, kind};
use crate::error::{Error, TimeoutPhase};
use crate::pool::PoolShared;
use crate::probe::Health;
use crate::stats::EvictReason;

/// Creates and recycles pooled members for deadpool.
#[derive(Debug)]
pub(crate) struct Manager {
    pub(crate) shared: Arc<PoolShared>,
}

impl deadpool::managed::Manager for Manager {
    type Type = Member;
    type Error = Error;

    async fn create(&self) -> Result<Member, Error> {
        let shared = &self.shared;
        let addr = shared.config.addr;
        // The breaker gate: while it is open no connect is attempted at all.
        let probe = match shared.admit(Instant::now()) {
            Admit::Yes => None,
            Admit::Probe => Some(ProbeGuard(shared)),
            Admit::No { retry_after } => {
                return Err(Error::circuit_open(addr, retry_after, shared.last_error()));
            }
        };
        #[cfg(feature = "metrics")]
        let start = Instant::now();
        let res = connect(&shared.config).await;
        #[cfg(feature = "metrics")]
        shared.metrics.connect(start.elapsed());
        if let Some(p) = probe {
            std::mem::forget(p);
        }
        match res {
            Ok(stream) => {
                shared.report(Outcome::Success, None);
                let id = shared.next_id();
                let member = Arc::new(Shared::new(stream, id, shared.clone()));
                shared.member_created(&member);
                tracing::debug!(conn.id = id, peer.addr = %addr, "connected");
                Ok(Member { shared: member })
            }
            Err(e) => {
                shared
                    .stats
                    .connect_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(peer.addr = %addr, error = %e, "connect failed");
                let timed_out = e.kind() == io::ErrorKind::TimedOut;
                shared.report(Outcome::Failure, Some(&e));
                if timed_out {
                    Err(Error::connect_timeout(addr, e))
                } else {
                    Err(Error::connect(addr, e))
                }
            }
        }
    }

    async fn recycle(&self, member: &mut Member, _: &Metrics) -> RecycleResult<Error> {
        let sh = &member.shared;
        let reason = loop {
            let mut st = sh.state();
            if kind(st) == HEARTBEAT {
                st = wait_for_heartbeat(sh).await;
            }
            match kind(st) {
                IDLE => match sh.check_idle(Instant::now()) {
                    Health::Alive => {
                        if sh.checkout(st) {
                            return Ok(());
                        }
                        // The state moved on (a watcher condemned it): look again.
                        continue;
                    }
                    Health::Dead(reason) => break reason,
                },
                DEAD => break sh.reason().unwrap_or(EvictReason::SocketError),
                // In use while in the idle queue cannot happen; refuse it rather than share it.
                _ => break EvictReason::SocketError,
            }
        };
        sh.condemn(reason, Instant::now());
        Err(RecycleError::message(reason.as_str()))
    }
}

/// Tells the breaker that an admitted probe was dropped before it finished.
struct ProbeGuard<'a>(&'a PoolShared);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.probe_abandoned();
    }
}

/// Waits (bounded by the heartbeat timeout) until a running heartbeat finishes; returns the
/// state after it. If the waiting `get()` is cancelled here, deadpool drops the member; it is
/// counted as `Cancelled`.
async fn wait_for_heartbeat(sh: &Shared) -> u64 {
    let deadline = Instant::now() + sh.pool.config.heartbeat_timeout;
    // If this wait is cancelled, deadpool drops the member: say why.
    let cancelled = CancelGuard(sh);
    let st = loop {
        let notified = sh.notify.notified();
        tokio::pin!(notified);
        // Register before re-reading the state: notify_waiters stores nothing.
        notified.as_mut().enable();
        let st = sh.state();
        if kind(st) != HEARTBEAT {
            break st;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            sh.condemn(EvictReason::HeartbeatTimeout, Instant::now());
            break st | DEAD;
        }
    };
    std::mem::forget(cancelled);
    st
}

/// Condemns the member as `Cancelled` unless forgotten.
struct CancelGuard<'a>(&'a Shared);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.0.condemn(EvictReason::Cancelled, Instant::now());
    }
}

/// Opens one connection with the configured socket options. A failed option is warned
/// about, not fatal.
pub(crate) async fn connect(cfg: &Config) -> io::Result<TcpStream> {
    let socket = if cfg.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    {
        let s = SockRef::from(&socket);
        let warn = |what: &str, r: io::Result<()>| {
            if let Err(e) = r {
                tracing::warn!(option = what, error = %e, "failed to set socket option");
            }
        };
        if cfg.tcp_nodelay {
            warn("tcp_nodelay", s.set_tcp_nodelay(true));
        }
        if let Some(time) = cfg.tcp_keepalive {
            let ka = TcpKeepalive::new()
                .with_time(time)
                .with_interval(cfg.tcp_keepalive_interval)
                .with_retries(cfg.tcp_keepalive_retries);
            warn("tcp_keepalive", s.set_tcp_keepalive(&ka));
        }
        if let Some(uto) = cfg.tcp_user_timeout {
            warn("tcp_user_timeout", s.set_tcp_user_timeout(Some(uto)));
        }
    }
    let connecting = socket.connect(cfg.addr);
    match cfg.connect_timeout {
        Some(t) => tokio::time::timeout(t, connecting).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {t:?}"))
        })?,
        None => connecting.await,
    }
}

impl Error {
    pub(crate) fn connect_timeout(addr: std::net::SocketAddr, e: io::Error) -> Self {
        Error::timeout(TimeoutPhase::Connect, Some(addr)).with_source(e)
    }
}
