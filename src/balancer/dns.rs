//! Endpoints from a DNS name: every address of the answer is an endpoint, and the name is
//! resolved again every interval (asynchronously, with the system resolver, so
//! `/etc/hosts` and `nsswitch.conf` apply as for any other program).
//!
//! An answer replaces the set: addresses that appear are added, those that are gone are
//! drained. A failed lookup (or an empty answer) changes nothing: the endpoints of the last
//! good answer stay, and the error is kept for the message of a `get()` that finds no
//! endpoint at all. The system resolver gives no TTL, so the interval is the only clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::Balancer;
use crate::pool::Pool;
use crate::pool::error::BuildError;
use crate::protocol::Protocol;
use crate::transport::Target;

pub(crate) struct Dns {
    /// `"host:port"` as given.
    pub(crate) name: String,
    target: Target,
    interval: Duration,
    /// The first lookup is done (answered or failed).
    answered: AtomicBool,
    answer: Notify,
    last_error: Mutex<Option<String>>,
}

impl Dns {
    pub(crate) fn new(name: &str, interval: Duration) -> Result<Self, BuildError> {
        let target = Target::parse(name).map_err(|e| BuildError::new("dns", e))?;
        Ok(Dns {
            name: name.to_string(),
            target,
            interval,
            answered: AtomicBool::new(false),
            answer: Notify::new(),
            last_error: Mutex::new(None),
        })
    }

    pub(crate) fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Waits until the first lookup is done, at most `timeout`.
    pub(crate) async fn wait_answered(&self, timeout: Option<Duration>) {
        let notified = self.answer.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.answered() {
            return;
        }
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, notified).await;
            }
            None => notified.await,
        }
    }

    /// The last lookup's error, if it failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// One lookup: the sorted, distinct addresses, or why there are none.
    async fn lookup(&self) -> Result<Vec<SocketAddr>, String> {
        let (host, port) = match &self.target {
            Target::Addr(a) => return Ok(vec![*a]),
            Target::Host { host, port } => (host.as_str(), *port),
        };
        // A resolver that hangs must not stop the refreshes: bounded by the interval (and
        // at least a second).
        let budget = self.interval.max(Duration::from_secs(1));
        let mut addrs: Vec<SocketAddr> =
            match tokio::time::timeout(budget, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => return Err(format!("cannot resolve {}: {e}", self.name)),
                Err(_) => return Err(format!("resolving {} took over {budget:?}", self.name)),
            };
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("{} resolved to no address", self.name));
        }
        Ok(addrs)
    }
}

/// Resolves `dns` now and every interval, handing each answer to `apply`, until `stop` fires
/// (the balancer is dropped) or `apply` says the balancer is gone (`None`).
pub(crate) async fn run(
    dns: Arc<Dns>,
    mut stop: oneshot::Receiver<()>,
    apply: impl Fn(&[SocketAddr]) -> Option<()> + Send + 'static,
) {
    loop {
        let res = tokio::select! {
            _ = &mut stop => return,
            res = dns.lookup() => res,
        };
        match res {
            Ok(addrs) => {
                tracing::debug!(name = %dns.name, ?addrs, "DNS answer");
                *dns.last_error.lock() = None;
                if apply(&addrs).is_none() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(name = %dns.name, error = %e, "DNS lookup failed: endpoints unchanged");
                *dns.last_error.lock() = Some(e);
            }
        }
        if !dns.answered.swap(true, Ordering::AcqRel) {
            dns.answer.notify_waiters();
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(dns.interval) => {}
        }
    }
}

/// Makes the DNS endpoints of `balancer` those of `addrs` (a new answer): the others of the
/// last answer are drained, the new ones added; endpoints added by hand stay.
pub(super) fn apply<P: Protocol>(balancer: &Balancer<P>, addrs: &[SocketAddr]) {
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    balancer.remove_if(|e| e.from_dns && !names.iter().any(|n| n == e.pool.endpoint()));
    for &a in addrs {
        if let Err(e) = balancer.insert(Pool::builder(a), true) {
            // The same settings built every other endpoint: cannot happen but for a
            // `configure` that looks at the address.
            tracing::warn!(endpoint = %a, error = %e, "DNS endpoint not added");
        }
    }
}
