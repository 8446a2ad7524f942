//! Building a balancer: `Balancer::new`, `Balancer::builder` and [`BalancerBuilder`] (where
//! the endpoints come from, outlier ejection, how each endpoint's pool is built), and
//! `new_entry`, which builds one endpoint's pool: at `build()`, on `add` and on a DNS answer.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::health::Ejector;
use super::select::rendezvous;
use super::{Balancer, Configure, Ejection, Entry, Inner, dns};
use crate::pool::Pool;
use crate::pool::builder::{Builder, IntoAddr};
use crate::pool::error::BuildError;
use crate::protocol::{Protocol, Raw};

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
                    .map(|inner| dns::apply(&Balancer { inner }, addrs))
            }));
        }
        Ok(Balancer { inner })
    }
}

/// Builds an endpoint's pool with the balancer's settings and joins it to the ejector.
pub(super) fn new_entry<P: Protocol>(
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
