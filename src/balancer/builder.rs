//! Building a balancer: `Balancer::builder` and [`BalancerBuilder`] (where the endpoints
//! come from, outlier ejection, the one [`PoolConfig`], protocol and TLS of every endpoint's
//! pool, kept as a `Template`), and `new_entry`, which builds one endpoint's pool: at
//! `build()`, on `add` and on a DNS answer.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::health::Ejector;
use super::select::rendezvous;
use super::{Balancer, Ejection, Entry, Inner, dns};
use crate::pool::Pool;
use crate::pool::builder::{Builder, IntoAddr};
use crate::pool::config::PoolConfig;
use crate::pool::error::BuildError;
use crate::protocol::{Protocol, Raw};

/// Configures a [`Balancer`]: where its endpoints come from, outlier ejection, and how every
/// endpoint's pool is built (one [`PoolConfig`], one protocol, TLS: the same for every
/// endpoint). `build()` validates it.
///
/// ```
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let b = livepool::Balancer::builder()
///     .config(livepool::PoolConfig { max_size: 8, ..Default::default() })
///     .endpoints(["127.0.0.1:7000", "127.0.0.2:7000"])
///     .ejection(livepool::Ejection::new().consecutive_failures(3))
///     .build()
///     .unwrap();
/// assert_eq!(b.endpoints().len(), 2);
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct BalancerBuilder<P: Protocol = Raw> {
    template: Template<P>,
    endpoints: Vec<Builder>,
    dns: Option<String>,
    dns_interval: Duration,
    ejection: Option<Ejection>,
}

/// How every endpoint's pool is built: the same settings, protocol and TLS for each.
pub(super) struct Template<P: Protocol> {
    settings: PoolConfig,
    /// One value for every endpoint's pool.
    protocol: Arc<P>,
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

impl<P: Protocol> Template<P> {
    /// `builder` (from `Pool::builder(endpoint)`) with the balancer's settings.
    fn apply(&self, builder: Builder) -> Builder<P> {
        let b = builder
            .config(self.settings.clone())
            .shared_protocol(self.protocol.clone());
        #[cfg(feature = "tls")]
        let b = match &self.tls {
            Some((config, name)) => b.tls(config.clone(), name),
            None => b,
        };
        b
    }

    /// The pools' wait timeout, for the wait on the first DNS answer (before any pool).
    pub(super) fn wait_timeout(&self) -> Option<Duration> {
        self.settings.wait_timeout
    }
}

impl Balancer {
    /// A builder: endpoints from a list and/or a DNS name, outlier ejection, and the
    /// settings, protocol and TLS of every endpoint's pool.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let b = livepool::Balancer::builder()
    ///     .dns("localhost:6379")
    ///     .dns_interval(std::time::Duration::from_secs(10))
    ///     .build()
    ///     .unwrap();
    /// # }
    /// ```
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder {
            template: Template {
                settings: PoolConfig::default(),
                protocol: Arc::new(Raw),
                #[cfg(feature = "tls")]
                tls: None,
            },
            endpoints: Vec::new(),
            dns: None,
            dns_interval: Duration::from_secs(5),
            ejection: Some(Ejection::default()),
        }
    }
}

impl<P: Protocol> BalancerBuilder<P> {
    /// The settings of every endpoint's pool.
    ///
    /// ```
    /// let b = livepool::Balancer::builder()
    ///     .config(livepool::PoolConfig { max_size: 4, min_idle: 1, ..Default::default() });
    /// ```
    /// Default: [`PoolConfig::default`].
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.template.settings = config;
        self
    }

    /// The protocol of every endpoint's pool (one value, shared by them all).
    ///
    /// ```
    /// let b = livepool::Balancer::builder().protocol(livepool::RedisPing);
    /// ```
    /// Default: [`Raw`].
    pub fn protocol<Q: Protocol>(self, protocol: Q) -> BalancerBuilder<Q> {
        BalancerBuilder {
            template: Template {
                settings: self.template.settings,
                protocol: Arc::new(protocol),
                #[cfg(feature = "tls")]
                tls: self.template.tls,
            },
            endpoints: self.endpoints,
            dns: self.dns,
            dns_interval: self.dns_interval,
            ejection: self.ejection,
        }
    }

    /// TLS on every endpoint's connections, as [`Builder::tls`]: every server's certificate
    /// must be valid for `server_name` (endpoints from DNS are named by address).
    ///
    /// ```no_run
    /// # fn demo(config: std::sync::Arc<livepool::rustls::ClientConfig>) {
    /// let b = livepool::Balancer::builder().dns("redis.internal:6380").tls(config, "redis.internal");
    /// # }
    /// ```
    /// Default: plain TCP.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.template.tls = Some((config, server_name.to_string()));
        self
    }

    /// Adds endpoints from a list (each as [`Pool::builder`] takes it).
    ///
    /// ```
    /// let b = livepool::Balancer::builder().endpoints(["10.0.0.1:5432", "10.0.0.2:5432"]);
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
    /// server name to [`tls`](Self::tls).
    ///
    /// ```
    /// let b = livepool::Balancer::builder().dns("redis.internal:6379");
    /// ```
    pub fn dns(mut self, name: &str) -> Self {
        self.dns = Some(name.to_string());
        self
    }

    /// How often the DNS name is resolved again. Not zero.
    ///
    /// ```
    /// let b = livepool::Balancer::builder().dns("redis.internal:6379")
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
    /// let b = livepool::Balancer::builder().ejection(None);
    /// let b = livepool::Balancer::builder().ejection(livepool::Ejection::new().consecutive_failures(3));
    /// ```
    /// Default: [`Ejection::default`].
    pub fn ejection(mut self, ejection: impl Into<Option<Ejection>>) -> Self {
        self.ejection = ejection.into();
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
    /// let err = livepool::Balancer::builder().dns("no port").build().unwrap_err();
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
            .map(|b| new_entry(&self.template, &ejector, b, false))
            .collect::<Result<Vec<_>, _>>()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let inner = Arc::new(Inner {
            template: self.template,
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
    template: &Template<P>,
    ejector: &Arc<Ejector>,
    builder: Builder,
    from_dns: bool,
) -> Result<Entry<P>, BuildError> {
    // Validate before joining, so that a bad endpoint leaves no count behind.
    let b = template.apply(builder);
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
