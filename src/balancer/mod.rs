//! [`Balancer`]: one handle over several endpoints, each its own [`Pool`] with the same
//! settings and protocol, its own members, breaker, heartbeats and statistics.
//!
//! Selection is the power of two choices: two endpoints drawn at random among those not yet
//! tried for this `get()` (and, while there are any, among those whose breaker would let a
//! connect through: an endpoint whose open period has passed is a candidate again, and its
//! next connect is the breaker's probe),
//! and the one with the lower load wins: first an endpoint with an idle member (a checkout
//! there needs no connect), then the fewer connections in use plus callers waiting. Two
//! random choices keep most of the benefit of always taking the least loaded (the classic
//! result: the maximum load drops from log n / log log n to log log n) without every caller
//! piling onto the same endpoint between two snapshots.
//!
//! Keyed selection (`get_for`, for sharded caches): rendezvous hashing. Each endpoint scores
//! `hash(endpoint, key)` and the key goes to the highest score among the endpoints whose
//! breaker lets a connect through; when that one is down, to the next. So a key moves only
//! when its own endpoint is down (or removed), and comes back when it recovers; the keys of
//! the others stay where they are. The hash is std's SipHash with fixed keys: stable within
//! one build, not across Rust releases (keys move after an upgrade, as after a restart of a
//! cache ring).
//!
//! Failover: a `get()` that meets a refused or timed-out connect, a failed setup or an open
//! breaker on its endpoint moves on to the next choice, within the wait timeout of the
//! pools; when every endpoint failed, the error lists each one with its error
//! ([`Error::endpoint_errors`]). An endpoint removed meanwhile (its pool closed) is failed
//! over too. Other errors (the pool is full and stayed full, a local resource ran out) are
//! returned as they are: another endpoint would not help.

//!
//! Health: each endpoint keeps its pool's breaker, and outlier ejection ([`Ejection`], in
//! `health.rs`) takes an endpoint that keeps failing out of selection for a while; an ejected
//! endpoint is tried only when every endpoint in service has failed this `get()`.
//!
//! Endpoints come from a static list, from a DNS name ([`BalancerBuilder::dns`]: every
//! address is an endpoint, re-resolved every [`BalancerBuilder::dns_interval`], 5 s by
//! default as Envoy's STRICT_DNS), or from [`Balancer::add`] / [`Balancer::remove`] at run
//! time. An endpoint that leaves is drained: its idle members are closed at once, those
//! checked out when they are returned. A failed resolution keeps the endpoints of the last
//! answer (a DNS outage must not empty the balancer).
//!
//! Cost of a selection: one read lock and an `Arc` clone of the endpoint list, two random
//! numbers from a per-thread generator, and for the two choices an atomic load each for the
//! ejection and (while closed) the breaker, plus their pools' occupancy (one uncontended
//! lock each). Nothing is allocated unless a choice has to be remade.

mod dns;
mod health;

pub use health::{BalancerEvent, BalancerEventKind, BalancerEvents, Ejection};

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::Location;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::jitter::thread_random;
use crate::member::Conn;
use crate::pool::builder::{Builder, IntoAddr};
use crate::pool::error::{BuildError, Error};
use crate::pool::{Pool, Status};
use crate::protocol::{Protocol, Raw};
use crate::stats::Statistics;
use health::{Ejector, Health};

/// Builds an endpoint's pool from the builder `Pool::builder(addr)` returns.
type Configure<P> = dyn Fn(Builder) -> Builder<P> + Send + Sync;

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

struct Inner<P: Protocol> {
    configure: Box<Configure<P>>,
    /// A snapshot that `get()` clones (an `Arc`); `add` and `remove` replace it.
    entries: RwLock<Arc<[Entry<P>]>>,
    ejector: Arc<Ejector>,
    dns: Option<Arc<dns::Dns>>,
    /// The pools' wait timeout, for the wait on the first DNS answer (before any pool).
    wait_timeout: Option<Duration>,
    /// Ends the DNS task when the balancer goes.
    _dns_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// One handle over several endpoints (replicas, a primary and its standby, the addresses of
/// a service), each with its own [`Pool`]: `get()` picks an endpoint by load, prefers one
/// with an idle connection, and fails over when an endpoint is down.
///
/// Cheap to clone; every clone is the same balancer.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let balancer = livepool::Balancer::new(
///     ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"],
///     |b| b.max_size(8).min_idle(1),
/// )?;
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

/// Configures a [`Balancer`]: where its endpoints come from, outlier ejection, and how every
/// endpoint's pool is built. `build()` validates it.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let b = livepool::Balancer::builder(|b| b.max_size(8))
///     .endpoints(["127.0.0.1:7000", "127.0.0.2:7000"])
///     .ejection(Some(livepool::Ejection::new().consecutive_failures(3)))
///     .build()
///     .unwrap();
/// assert_eq!(b.endpoints().len(), 2);
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct BalancerBuilder<P: Protocol = Raw> {
    configure: Box<Configure<P>>,
    endpoints: Vec<Builder>,
    dns: Option<String>,
    dns_interval: Duration,
    ejection: Option<Ejection>,
}

impl Balancer {
    /// A balancer over `endpoints`, each endpoint's pool built by `configure` from
    /// `Pool::builder(endpoint)` (so every endpoint gets the same settings and protocol),
    /// with the default [`Ejection`]. Nothing connects here.
    ///
    /// # Errors
    /// The first endpoint's configuration error, if `configure` makes an invalid one.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::new(["127.0.0.1:1", "127.0.0.2:1"], |b| b.max_size(4)).unwrap();
    /// assert_eq!(b.endpoints().len(), 2);
    /// # }
    /// ```
    pub fn new<P, A, F>(
        endpoints: impl IntoIterator<Item = A>,
        configure: F,
    ) -> Result<Balancer<P>, BuildError>
    where
        P: Protocol,
        A: IntoAddr,
        F: Fn(Builder) -> Builder<P> + Send + Sync + 'static,
    {
        Balancer::builder(configure).endpoints(endpoints).build()
    }

    /// A builder: endpoints from a list and/or a DNS name, outlier ejection, and `configure`
    /// to build each endpoint's pool from `Pool::builder(endpoint)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder(|b| b.max_size(4))
    ///     .dns("localhost:6379")
    ///     .dns_interval(std::time::Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// # }
    /// ```
    pub fn builder<P, F>(configure: F) -> BalancerBuilder<P>
    where
        P: Protocol,
        F: Fn(Builder) -> Builder<P> + Send + Sync + 'static,
    {
        BalancerBuilder {
            configure: Box::new(configure),
            endpoints: Vec::new(),
            dns: None,
            dns_interval: Duration::from_secs(5),
            ejection: Some(Ejection::default()),
        }
    }
}

impl<P: Protocol> BalancerBuilder<P> {
    /// Adds endpoints from a list (each as [`Pool::builder`] takes it).
    ///
    /// ```
    /// let b = livepool::Balancer::builder(|b| b).endpoints(["10.0.0.1:5432", "10.0.0.2:5432"]);
    /// ```
    pub fn endpoints<A: IntoAddr>(mut self, endpoints: impl IntoIterator<Item = A>) -> Self {
        self.endpoints
            .extend(endpoints.into_iter().map(Pool::builder));
        self
    }

    /// Every address `name` (`"host:port"`) resolves to is an endpoint, re-resolved every
    /// [`dns_interval`](Self::dns_interval): addresses that appear are added, those that
    /// disappear are drained. Until the first answer, `get()` waits for it (within the wait
    /// timeout). Endpoints are named by address (`"10.0.0.7:6379"`); for TLS, give the
    /// server name in `configure` (`.tls(config, "redis.internal")`).
    ///
    /// ```
    /// let b = livepool::Balancer::builder(|b| b).dns("redis.internal:6379");
    /// ```
    pub fn dns(mut self, name: &str) -> Self {
        self.dns = Some(name.to_string());
        self
    }

    /// How often the DNS name is resolved again. Not zero.
    ///
    /// ```
    /// let b = livepool::Balancer::builder(|b| b).dns("redis.internal:6379")
    ///     .dns_interval(std::time::Duration::from_secs(30));
    /// ```
    /// Default: 5 s (Envoy's STRICT_DNS refresh rate): a change reaches new checkouts within
    /// seconds, at one lookup per interval.
    pub fn dns_interval(mut self, every: Duration) -> Self {
        self.dns_interval = every;
        self
    }

    /// Outlier ejection, or `None` to rely on the breakers alone.
    ///
    /// ```
    /// let b = livepool::Balancer::builder(|b| b).ejection(None);
    /// ```
    /// Default: [`Ejection::default`].
    pub fn ejection(mut self, ejection: Option<Ejection>) -> Self {
        self.ejection = ejection;
        self
    }

    /// Validates the settings and builds the balancer (and each static endpoint's pool).
    /// Must be called within a tokio runtime. Nothing connects here (unless `min_idle`
    /// asks for it).
    ///
    /// # Errors
    /// The first wrong setting: an endpoint's pool configuration, the DNS name or
    /// interval, or the ejection settings (fields `ejection.*`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let err = livepool::Balancer::builder(|b| b).dns("no port").build().unwrap_err();
    /// assert_eq!(err.field(), "dns");
    /// # }
    /// ```
    pub fn build(self) -> Result<Balancer<P>, BuildError> {
        if let Some(e) = &self.ejection {
            e.validate()?;
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BuildError::new("runtime", "build() must be called within a tokio runtime")
        })?;
        let dns = match &self.dns {
            Some(name) => {
                if self.dns_interval.is_zero() {
                    return Err(BuildError::new("dns_interval", "must not be zero"));
                }
                Some(Arc::new(dns::Dns::new(name, self.dns_interval)?))
            }
            None => None,
        };
        let ejector = Ejector::new(self.ejection, runtime.clone());
        let entries = self
            .endpoints
            .into_iter()
            .map(|b| new_entry(&*self.configure, &ejector, b, false))
            .collect::<Result<Vec<_>, _>>()?;
        let wait_timeout = (self.configure)(Pool::builder("0.0.0.0:0")).wait_timeout_setting();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = Arc::new(Inner {
            wait_timeout,
            configure: self.configure,
            entries: RwLock::new(entries.into()),
            ejector,
            dns: dns.clone(),
            _dns_stop: dns.is_some().then_some(stop_tx),
        });
        if let Some(d) = dns {
            let weak = Arc::downgrade(&inner);
            runtime.spawn(dns::run(d, stop_rx, move |addrs| {
                weak.upgrade()
                    .map(|inner| Balancer { inner }.apply_dns(addrs))
            }));
        }
        Ok(Balancer { inner })
    }
}

/// Builds an endpoint's pool with the balancer's settings and joins it to the ejector.
fn new_entry<P: Protocol>(
    configure: &Configure<P>,
    ejector: &Arc<Ejector>,
    builder: Builder,
    from_dns: bool,
) -> Result<Entry<P>, BuildError> {
    // Validate before joining, so that a bad endpoint leaves no count behind.
    let b = configure(builder);
    let endpoint: Arc<str> = b.endpoint_name().into();
    // Each endpoint its own jitter (breaker periods, lifetimes), stable for its name.
    let salt = rendezvous(&endpoint, "jitter");
    let health = ejector.join(endpoint);
    match b.salt_jitter_seed(salt).observer(health.clone()).build() {
        Ok(pool) => {
            health.set_kick(pool.on_return_from_ejection());
            Ok(Entry {
                pool,
                health,
                from_dns,
            })
        }
        Err(e) => {
            health.retire();
            Err(e)
        }
    }
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
            let mut deadline = Deadline::new(&entries);
            // The common case: both choices in service, the better one serves.
            let first = match pick_two(&entries) {
                Some(i) => match checkout(&entries[i].pool, at, &mut deadline).await {
                    Ok(conn) => return Ok(conn),
                    Err(e) if fails_over(&e) => Some((i, e)),
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let mut tried = vec![false; entries.len()];
            let mut failures = Vec::new();
            if let Some((i, e)) = first {
                tried[i] = true;
                note_failover(&entries[i], &e);
                failures.push(e);
                if deadline.passed() {
                    return Err(Error::all_endpoints(failures));
                }
            }
            let order = std::iter::from_fn(|| {
                let i = pick(&entries, &tried)?;
                tried[i] = true;
                Some(i)
            });
            try_in_order(&entries, order, at, deadline, failures).await
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
        let mut order: Vec<(u64, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (rendezvous(e.pool.endpoint(), key), i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        // Those in service whose breaker lets a connect through first, then the rest, each
        // group in the key's order.
        let (up, down): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .map(|(_, i)| i)
            .partition(|&i| entries[i].available());
        let deadline = Deadline::new(&entries);
        try_in_order(
            &entries,
            up.into_iter().chain(down),
            at,
            deadline,
            Vec::new(),
        )
        .await
    }

    /// The endpoint list; with DNS, after the first answer (or the wait timeout). An empty
    /// list with a failed lookup is an error naming the lookup's.
    async fn snapshot(&self) -> Result<Arc<[Entry<P>]>, Error> {
        let Some(dns) = &self.inner.dns else {
            return Ok(self.inner.entries.read().clone());
        };
        if !dns.answered() {
            dns.wait_answered(self.inner.wait_timeout).await;
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
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
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
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
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
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
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
    /// let b = livepool::Balancer::new(["127.0.0.1:1"], |b| b).unwrap();
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
        let entry = new_entry(
            &*self.inner.configure,
            &self.inner.ejector,
            builder,
            from_dns,
        )?;
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
    /// let b = livepool::Balancer::new(["127.0.0.1:1", "127.0.0.2:1"], |b| b).unwrap();
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

    /// Makes the DNS endpoints those of `addrs` (a new answer).
    fn apply_dns(&self, addrs: &[std::net::SocketAddr]) {
        let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        self.remove_if(|e| e.from_dns && !names.iter().any(|n| n == e.pool.endpoint()));
        for &a in addrs {
            if let Err(e) = self.insert(Pool::builder(a), true) {
                // The same settings built every other endpoint: cannot happen but for a
                // `configure` that looks at the address.
                tracing::warn!(endpoint = %a, error = %e, "DNS endpoint not added");
            }
        }
    }
}

impl<P: Protocol> Entry<P> {
    /// In service and its breaker lets a connect through.
    fn available(&self) -> bool {
        !self.health.is_ejected() && !self.pool.breaker_refuses()
    }
}

/// The deadline of one `get()`: the pools' wait timeout from the first time it has to wait
/// (a checkout that is ready at once reads no clock and arms no timer).
struct Deadline {
    wait: Option<Duration>,
    at: Option<Option<Instant>>,
}

impl Deadline {
    fn new<P: Protocol>(entries: &[Entry<P>]) -> Self {
        Deadline {
            wait: entries.first().and_then(|e| e.pool.wait_timeout()),
            at: None,
        }
    }

    fn get(&mut self) -> Option<Instant> {
        let wait = self.wait;
        *self
            .at
            .get_or_insert_with(|| wait.map(|t| Instant::now() + t))
    }

    fn passed(&mut self) -> bool {
        self.get().is_some_and(|d| Instant::now() >= d)
    }
}

fn note_failover<P: Protocol>(entry: &Entry<P>, e: &Error) {
    tracing::debug!(endpoint = entry.pool.endpoint(), error = %e, "failing over");
}

/// Tries `order` one after the other, failing over as `get` does; `failures` are those of
/// endpoints tried before.
async fn try_in_order<P: Protocol>(
    entries: &[Entry<P>],
    order: impl Iterator<Item = usize>,
    at: &'static Location<'static>,
    mut deadline: Deadline,
    mut failures: Vec<Error>,
) -> Result<Conn<P>, Error> {
    for i in order {
        match checkout(&entries[i].pool, at, &mut deadline).await {
            Ok(conn) => return Ok(conn),
            Err(e) if fails_over(&e) => {
                note_failover(&entries[i], &e);
                failures.push(e);
                if deadline.passed() {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::all_endpoints(failures))
}

/// Two distinct random indices below `n` (n ≥ 2).
fn two_random(n: usize) -> (usize, usize) {
    let r = thread_random();
    let a = ((r & 0xffff_ffff) % n as u64) as usize;
    let b = ((r >> 32) % (n as u64 - 1)) as usize;
    (a, if b >= a { b + 1 } else { b })
}

/// The first choice of a `get()` without allocating: two random endpoints, both available,
/// the less loaded wins. `None` when the fast path does not apply (one of them unavailable,
/// or fewer than two endpoints and that one unavailable): the general `pick` decides then.
fn pick_two<P: Protocol>(entries: &[Entry<P>]) -> Option<usize> {
    match entries.len() {
        0 => None,
        1 => entries[0].available().then_some(0),
        n => {
            let (a, b) = two_random(n);
            if !entries[a].available() || !entries[b].available() {
                return None;
            }
            Some(less_loaded(entries, a, b))
        }
    }
}

/// The endpoint to try next, or `None` when all were tried: two random choices among the
/// untried endpoints in service whose breaker lets a connect through; failing that, the
/// untried in service (their breakers fail fast, so that the error names every one); last,
/// the ejected ones.
fn pick<P: Protocol>(entries: &[Entry<P>], tried: &[bool]) -> Option<usize> {
    let untried = || (0..entries.len()).filter(|&i| !tried[i]);
    let mut candidates: Vec<usize> = untried().filter(|&i| entries[i].available()).collect();
    if candidates.is_empty() {
        candidates = untried()
            .filter(|&i| !entries[i].health.is_ejected())
            .collect();
    }
    if candidates.is_empty() {
        candidates = untried().collect();
    }
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let (a, b) = two_random(n);
            let (a, b) = (candidates[a], candidates[b]);
            Some(less_loaded(entries, a, b))
        }
    }
}

/// One endpoint's `get()`, cut short at the caller's deadline. Polled once first: an idle
/// member is handed out then, without a timer.
async fn checkout<P: Protocol>(
    pool: &Pool<P>,
    at: &'static Location<'static>,
    deadline: &mut Deadline,
) -> Result<Conn<P>, Error> {
    let mut fut = std::pin::pin!(pool.get_from(at));
    if let Poll::Ready(res) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return res;
    }
    match deadline.get() {
        Some(d) => match tokio::time::timeout_at(d, fut).await {
            Ok(res) => res,
            // The wait timeout ran out during this endpoint's connect: what it did is the
            // answer, not the time.
            Err(_) => Err(pool.timeout_error()),
        },
        None => fut.await,
    }
}

/// The rendezvous score of `key` on `endpoint`.
fn rendezvous<K: Hash + ?Sized>(endpoint: &str, key: &K) -> u64 {
    // `new()` is keyed the same in every instance (unlike a `HashMap`'s `RandomState`).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// Whether another endpoint could do better than this error. A closed pool is an endpoint
/// removed while this `get()` held the old list.
fn fails_over(e: &Error) -> bool {
    e.is_connect()
        || e.is_setup()
        || e.is_config()
        || e.is_server_busy()
        || e.is_circuit_open()
        || e.is_closed()
}

/// The endpoint named `endpoint` (as its pool reports it).
fn find<'a, P: Protocol>(entries: &'a [Entry<P>], endpoint: &str) -> Option<&'a Entry<P>> {
    entries.iter().find(|e| e.pool.endpoint() == endpoint)
}

/// The better of two choices: one with an idle member first, then fewer in use plus waiting
/// (`a` on a tie).
fn less_loaded<P: Protocol>(entries: &[Entry<P>], a: usize, b: usize) -> usize {
    if entries[b].pool.load() < entries[a].pool.load() {
        b
    } else {
        a
    }
}

impl<P: Protocol> std::fmt::Debug for Balancer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl<P: Protocol> std::fmt::Debug for BalancerBuilder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerBuilder")
            .field("endpoints", &self.endpoints.len())
            .field("dns", &self.dns)
            .field("dns_interval", &self.dns_interval)
            .field("ejection", &self.ejection)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_are_distinct_and_cover_every_candidate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Balancer::new(["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"], |b| b).unwrap();
            let entries = b.inner.entries.read().clone();
            let (mut seen, mut first) = ([0usize; 3], [0usize; 3]);
            for _ in 0..300 {
                seen[pick(&entries, &[false; 3]).unwrap()] += 1;
                first[pick_two(&entries).unwrap()] += 1;
            }
            // Equal loads: every endpoint is chosen, roughly a third each.
            assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
            assert!(first.iter().all(|&n| n > 50), "{first:?}");
            assert_eq!(pick(&entries, &[true, false, true]), Some(1));
            assert_eq!(pick(&entries, &[true; 3]), None);
            for _ in 0..100 {
                let (a, b) = two_random(2);
                assert!(a < 2 && b < 2 && a != b);
            }
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
            let b = Balancer::new(Vec::<&str>::new(), |b| b).unwrap();
            let e = b.get().await.unwrap_err();
            assert!(e.is_all_endpoints());
            assert!(e.endpoint_errors().is_empty());
            assert_eq!(e.to_string(), "the balancer has no endpoint");
        });
    }
}
