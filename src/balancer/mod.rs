//! [`Balancer`]: one handle over several endpoints, each its own [`Pool`] with the same
//! settings and protocol, its own members, breaker, heartbeats and statistics. This file holds
//! the handle: its endpoint list, `get`/`get_for`, `add`/`remove`, and what it reports.
//!
//! The other jobs, one file each: `builder.rs` builds the balancer and each endpoint's pool;
//! `select.rs` chooses an endpoint (the power of two choices, rendezvous hashing for keys);
//! `failover.rs` moves a `get()` on to the next choice within the wait timeout; `health.rs`
//! is outlier ejection ([`Ejection`]): an endpoint that keeps failing leaves selection for a
//! while and is tried only when every endpoint in service has failed this `get()`; `dns.rs`
//! takes the endpoints from a DNS name.
//!
//! Endpoints come from a static list, from a DNS name ([`BalancerBuilder::dns`]: every
//! address is an endpoint, re-resolved every [`BalancerBuilder::dns_interval`], 5 s by
//! default as Envoy's STRICT_DNS), or from [`Balancer::add`] / [`Balancer::remove`] at run
//! time. An endpoint that leaves is drained: its idle members are closed at once, those
//! checked out when they are returned. A failed resolution keeps the endpoints of the last
//! answer (a DNS outage must not empty the balancer).

mod builder;
mod dns;
mod failover;
mod health;
mod select;

pub use builder::BalancerBuilder;
pub use health::{BalancerEvent, BalancerEventKind, BalancerEvents, Ejection};

use std::future::Future;
use std::hash::Hash;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::member::Conn;
use crate::pool::builder::{Builder, IntoAddr};
use crate::pool::error::{BuildError, Error};
use crate::pool::{Pool, Status};
use crate::protocol::{Protocol, Raw};
use crate::stats::Statistics;
use health::{Ejector, Health};

/// One endpoint: its pool and its health record.
struct Entry<P: Protocol> {
    pool: Pool<P>,
    health: Arc<Health>,
    /// Came from a DNS answer (and goes when an answer lacks it).
    from_dns: bool,
}

impl<P: Protocol> Clone for Entry<P> {
    fn clone(&self) -> Self {
        Entry {
            pool: self.pool.clone(),
            health: self.health.clone(),
            from_dns: self.from_dns,
        }
    }
}

/// What selection reads of an endpoint: its name, its ejection, its pool's breaker and load.
impl<P: Protocol> select::Observed for Entry<P> {
    fn name(&self) -> &str {
        self.pool.endpoint()
    }

    fn is_ejected(&self) -> bool {
        self.health.is_ejected()
    }

    fn breaker_refuses(&self) -> bool {
        self.pool.breaker_refuses()
    }

    fn load(&self) -> (bool, usize) {
        self.pool.load()
    }
}

struct Inner<P: Protocol> {
    /// How every endpoint's pool is built.
    template: builder::Template<P>,
    /// A snapshot that `get()` clones (an `Arc`); `add` and `remove` replace it.
    entries: RwLock<Arc<[Entry<P>]>>,
    ejector: Arc<Ejector>,
    dns: Option<Arc<dns::Dns>>,
    /// Ends the DNS task when the balancer goes.
    _dns_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One handle over several endpoints (replicas, a primary and its standby, the addresses of
/// a service), each with its own [`Pool`]: `get()` picks an endpoint by load, prefers one
/// with an idle connection, and fails over when an endpoint is down.
///
/// Cheap to clone; every clone is the same balancer.
///
/// # How an endpoint is chosen
///
/// - **`get()`**: two endpoints drawn at random, the less loaded wins: first one with an
///   idle connection (no connect needed), then the fewer connections in use plus callers
///   waiting (the power of two choices). Endpoints whose breaker is open are drawn only
///   when no other is left, ejected endpoints only once every endpoint in service has been
///   tried.
/// - **`get_for(key)`**: rendezvous hashing, for sharded caches. A key stays on its
///   endpoint; it moves to its next choice only while that endpoint is down, ejected or
///   removed, and comes back when it recovers. The other keys do not move. (The hash is
///   stable within one build, not across Rust releases.)
/// - **Failover**: a refused or timed-out connect or a failed setup moves the same `get()`
///   on to the next choice, within one wait timeout for the whole call; when every
///   endpoint fails, the error lists each one's.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let balancer = livepool::Balancer::builder()
///     .endpoints(["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"])
///     .config(livepool::PoolConfig { max_size: 8, min_idle: 1, ..Default::default() })
///     .build()?;
/// let conn = balancer.get().await?;
/// println!("served by {}", conn.endpoint());
/// # Ok(()) }
/// ```
pub struct Balancer<P: Protocol = Raw> {
    inner: Arc<Inner<P>>,
}

impl<P: Protocol> Clone for Balancer<P> {
    fn clone(&self) -> Self {
        Balancer {
            inner: self.inner.clone(),
        }
    }
}

/// One endpoint's view in [`Balancer::endpoints`].
///
/// ```no_run
/// # fn f(b: livepool::Balancer) {
/// for e in b.endpoints() {
///     println!("{}: {} in use, breaker {:?}, ejected {:?}",
///         e.endpoint, e.status.in_use, e.status.breaker, e.ejected_for);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint as configured (or the address a DNS answer gave).
    pub endpoint: String,
    /// Its pool's occupancy and breaker.
    pub status: Status,
    /// Its pool's counters (each endpoint's own: [`Statistics::server_idle_limit`] is that
    /// server's idle limit, if its pool detected one).
    pub statistics: Statistics,
    /// While ejected: how much of the ejection is left.
    pub ejected_for: Option<Duration>,
    /// Ejections in a row (one is forgiven per base ejection time in service).
    pub times_ejected: u32,
    /// Connect, setup and heartbeat failures since the last success.
    pub consecutive_failures: u32,
}

impl<P: Protocol> Balancer<P> {
    /// Checks out a connection from one endpoint (see the type's docs for how it is chosen);
    /// [`Conn::endpoint`] says which.
    ///
    /// # Errors
    /// [`Error::is_all_endpoints`] when every endpoint failed (each one's error in
    /// [`Error::endpoint_errors`]) or there is none; otherwise the chosen endpoint's error
    /// when failing over would not help (see the type's docs).
    ///
    /// # Cancel safety
    /// As [`Pool::get`].
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// match b.get().await {
    ///     Ok(conn) => println!("{}", conn.endpoint()),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Conn<P>, Error>> + Send + '_ {
        let at = Location::caller();
        async move {
            let entries = self.snapshot().await?;
            failover::get(&entries, at).await
        }
    }

    /// Checks out a connection from the endpoint that owns `key` (rendezvous hashing, see the
    /// type's docs), or from the next one in the key's order while that one is down or
    /// ejected.
    ///
    /// # Errors
    /// As [`Balancer::get`].
    ///
    /// ```no_run
    /// # async fn f(b: livepool::Balancer) {
    /// let conn = b.get_for("user:42").await.unwrap();
    /// println!("user:42 lives on {}", conn.endpoint());
    /// # }
    /// ```
    #[track_caller]
    pub fn get_for<'a, K: Hash + ?Sized + Sync>(
        &'a self,
        key: &'a K,
    ) -> impl Future<Output = Result<Conn<P>, Error>> + Send + 'a {
        let at = Location::caller();
        async move { self.get_for_at(key, at).await }
    }

    async fn get_for_at<K: Hash + ?Sized>(
        &self,
        key: &K,
        at: &'static Location<'static>,
    ) -> Result<Conn<P>, Error> {
        let entries = self.snapshot().await?;
        failover::get_for(&entries, key, at).await
    }

    /// The endpoint list; with DNS, after the first answer (or the wait timeout). An empty
    /// list with a failed lookup is an error naming the lookup's.
    async fn snapshot(&self) -> Result<Arc<[Entry<P>]>, Error> {
        let Some(dns) = &self.inner.dns else {
            return Ok(self.inner.entries.read().clone());
        };
        if !dns.answered() {
            dns.wait_answered(self.inner.template.wait_timeout()).await;
        }
        let entries = self.inner.entries.read().clone();
        if entries.is_empty() {
            let why = dns
                .last_error()
                .unwrap_or_else(|| "no DNS answer yet".into());
            let err = Error::connect(dns.name.as_str().into(), std::io::Error::other(why));
            return Err(Error::all_endpoints(vec![err]));
        }
        Ok(entries)
    }

    /// Subscribes to the balancer's events: ejections, returns and recoveries, endpoints
    /// added and removed. Only events after the call are delivered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder().endpoints(["127.0.0.1:1"]).build().unwrap();
    /// let mut events = b.events();
    /// b.add("127.0.0.2:1").unwrap();
    /// assert_eq!(events.try_recv().unwrap().unwrap().kind, livepool::BalancerEventKind::Added);
    /// # }
    /// ```
    pub fn events(&self) -> BalancerEvents {
        self.inner.ejector.subscribe()
    }

    /// Each endpoint with its pool's status and statistics and its ejection state.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder().endpoints(["127.0.0.1:1"]).build().unwrap();
    /// assert_eq!(b.endpoints()[0].endpoint, "127.0.0.1:1");
    /// assert!(b.endpoints()[0].ejected_for.is_none());
    /// # }
    /// ```
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.inner
            .entries
            .read()
            .iter()
            .map(|e| {
                let h = e.health.view();
                EndpointStatus {
                    endpoint: e.pool.endpoint().to_string(),
                    status: e.pool.status(),
                    statistics: e.pool.statistics(),
                    ejected_for: h.ejected_for,
                    times_ejected: h.times_ejected,
                    consecutive_failures: h.consecutive_failures,
                }
            })
            .collect()
    }

    /// The pool of one endpoint (for its events, or to resize it), by its name as
    /// configured.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder().endpoints(["127.0.0.1:1"]).build().unwrap();
    /// let _events = b.pool("127.0.0.1:1").unwrap().events();
    /// assert!(b.pool("127.0.0.9:1").is_none());
    /// # }
    /// ```
    pub fn pool(&self, endpoint: &str) -> Option<Pool<P>> {
        find(&self.inner.entries.read(), endpoint).map(|e| e.pool.clone())
    }

    /// Adds an endpoint, its pool built like the others'. Nothing connects here (unless
    /// `min_idle` asks for it). Adding one that is there already does nothing.
    ///
    /// # Errors
    /// Its configuration error, if any.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder().endpoints(["127.0.0.1:1"]).build().unwrap();
    /// b.add("127.0.0.2:1").unwrap();
    /// assert_eq!(b.endpoints().len(), 2);
    /// # }
    /// ```
    pub fn add(&self, endpoint: impl IntoAddr) -> Result<(), BuildError> {
        self.insert(Pool::builder(endpoint), false)
    }

    fn insert(&self, builder: Builder, from_dns: bool) -> Result<(), BuildError> {
        let name = builder.endpoint_name();
        if self.has(&name) {
            return Ok(());
        }
        let entry =
            builder::new_entry(&self.inner.template, &self.inner.ejector, builder, from_dns)?;
        let mut entries = self.inner.entries.write();
        if find(&entries, entry.pool.endpoint()).is_some() {
            drop(entries);
            entry.health.retire();
            entry.pool.close();
            return Ok(());
        }
        let mut v = entries.to_vec();
        let endpoint: Arc<str> = entry.pool.endpoint().into();
        v.push(entry);
        *entries = v.into();
        drop(entries);
        self.inner.ejector.emit(&endpoint, BalancerEventKind::Added);
        Ok(())
    }

    fn has(&self, endpoint: &str) -> bool {
        find(&self.inner.entries.read(), endpoint).is_some()
    }

    /// Removes an endpoint and drains its pool: no new checkouts, idle members closed at
    /// once, checked-out ones closed when they are returned. True if it was there.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder().endpoints(["127.0.0.1:1", "127.0.0.2:1"]).build().unwrap();
    /// assert!(b.remove("127.0.0.1:1"));
    /// assert!(!b.remove("127.0.0.1:1"));
    /// assert_eq!(b.endpoints().len(), 1);
    /// # }
    /// ```
    pub fn remove(&self, endpoint: &str) -> bool {
        self.remove_if(|e| e.pool.endpoint() == endpoint) > 0
    }

    /// Removes (and drains) every endpoint `f` selects; how many.
    fn remove_if(&self, f: impl Fn(&Entry<P>) -> bool) -> usize {
        let mut entries = self.inner.entries.write();
        let (gone, kept): (Vec<Entry<P>>, Vec<Entry<P>>) =
            entries.iter().cloned().partition(|e| f(e));
        if gone.is_empty() {
            return 0;
        }
        *entries = kept.into();
        drop(entries);
        for e in &gone {
            e.health.retire();
            e.pool.close();
            let endpoint: Arc<str> = e.pool.endpoint().into();
            self.inner
                .ejector
                .emit(&endpoint, BalancerEventKind::Removed);
        }
        gone.len()
    }
}

/// The endpoint named `endpoint` (as its pool reports it).
fn find<'a, P: Protocol>(entries: &'a [Entry<P>], endpoint: &str) -> Option<&'a Entry<P>> {
    entries.iter().find(|e| e.pool.endpoint() == endpoint)
}

impl<P: Protocol> std::fmt::Debug for Balancer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_reads_each_pools_own_numbers() {
        use select::Observed;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Balancer::builder()
                .endpoints(["127.0.0.1:1", "127.0.0.2:1"])
                .build()
                .unwrap();
            let entries = b.inner.entries.read().clone();
            assert_eq!(entries[1].name(), "127.0.0.2:1");
            // Nothing connected yet: in service, breaker closed, no idle member, none in use.
            assert!(entries.iter().all(|e| e.available()));
            assert_eq!(entries[0].load(), (true, 0));
        });
    }

    /// `get()` can be spawned.
    const _: fn(&Balancer) = |b| {
        fn send<T: Send>(_: T) {}
        send(b.get());
    };

    #[test]
    fn an_empty_balancer_says_so() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Balancer::builder().build().unwrap();
            let e = b.get().await.unwrap_err();
            assert!(e.is_all_endpoints());
            assert!(e.endpoint_errors().is_empty());
            assert_eq!(e.to_string(), "the balancer has no endpoint");
        });
    }
}
