//! A pool's settings as data ([`PoolConfig`], public, with its defaults and their reasons),
//! their validation, and what a built pool runs with (`Config`: the settings plus what the
//! builder resolved around them).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::jitter::unit;
use crate::pool::error::{BuildError, SizeError};
use crate::transport::{Endpoint, TcpOptions};

/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32,767 s and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_RETRIES: u32 = 127;

/// Every setting of a pool, as data: fill it from your own configuration and hand it to
/// [`Builder::config`](crate::Builder::config) or
/// [`BalancerBuilder::config`](crate::BalancerBuilder::config), or set one field at a time
/// with the [`Builder`](crate::Builder)'s setter of the same name. Nothing is checked until
/// `build()`, which names the first wrong field.
///
/// Write it with `..PoolConfig::default()` (as below), so that a field added in a later
/// version keeps your code compiling.
///
/// ```
/// use std::time::Duration;
/// use livepool::{PoolConfig, TcpOptions};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = PoolConfig {
///     max_size: 32,
///     idle_timeout: Some(Duration::from_secs(60)),
///     tcp: TcpOptions { keepalive: Some(Duration::from_secs(30)), ..TcpOptions::default() },
///     ..PoolConfig::default()
/// };
/// let pool = livepool::Pool::builder("127.0.0.1:6379").config(config.clone()).build().unwrap();
/// assert_eq!(pool.status().max_size, 32);
/// assert_eq!(config.max_size, 32);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Most connections open at once, idle or in use. At least 1.
    ///
    /// Default: 16 (enough for a busy service on a few cores; databases cap clients at a
    /// few hundred).
    pub max_size: usize,
    /// Idle connections the reaper keeps open in the background (refilled after evictions,
    /// through the breaker; never above `max_size`). Idle timeout never closes these.
    ///
    /// Default: 0 (no background connects unless asked for).
    pub min_idle: usize,
    /// Bound on opening one connection, all of it: resolving the name, connecting (each
    /// address tried gets an even share of what is left), the TLS handshake and the
    /// protocol's setup. `None` leaves it to the kernel (and `tcp.user_timeout`, which also
    /// bounds SYN retries). Not zero.
    ///
    /// Default: 5 s (a loopback or LAN connect takes microseconds to milliseconds; 5 s
    /// covers a slow WAN).
    pub connect_timeout: Option<Duration>,
    /// Bound on waiting for a free slot when `max_size` connections are in use; `None`
    /// waits forever; zero fails at once when nothing is free.
    ///
    /// Default: 30 s (a caller hears "pool exhausted" long before a request deadline of
    /// minutes).
    pub wait_timeout: Option<Duration>,
    /// The socket options of every new TCP connection (skipped on Unix sockets).
    ///
    /// Default: [`TcpOptions::default`].
    pub tcp: TcpOptions,
    /// Close connections idle (since returned, or since their last good heartbeat) longer
    /// than this, except the `min_idle` warmest. `None` disables it. Not zero, not longer
    /// than `max_lifetime`.
    ///
    /// Default: 300 s (below common server and NAT idle limits: Redis 0 or 300 s, AWS NLB
    /// 350 s).
    pub idle_timeout: Option<Duration>,
    /// Close connections older than this (less a per-connection jitter); a connection that
    /// expires while checked out is closed when returned. `None` disables it. Not zero.
    ///
    /// Default: 30 min (rotates connections, so that DNS and failover changes — every
    /// connect resolves the name again — and server-side leaks heal).
    pub max_lifetime: Option<Duration>,
    /// Each connection's lifetime is shortened by a random fraction up to this, so that
    /// connections opened together do not expire together. In [0, 1).
    ///
    /// Default: 0.05.
    pub lifetime_jitter: f64,
    /// Request/response policy: a connection on which a write was not followed by a read
    /// is not returned to the pool (its response would reach the next caller). `false` for
    /// one-way protocols.
    ///
    /// Default: true.
    pub request_response: bool,
    /// The granularity of the reaper's schedule: idle timeout, max lifetime and heartbeats
    /// fall due on ticks this far apart. Each tick visits only the members that fall due (a
    /// timing wheel), so a short interval costs wake-ups, not passes over the pool. Not zero.
    ///
    /// Default: 1 s.
    pub reap_interval: Duration,
    /// How long an idle member may go without a heartbeat (less jitter), when the protocol
    /// pings ([`Protocol::heartbeat`](crate::Protocol::heartbeat)). Not zero.
    ///
    /// Default: 30 s (keeps NAT and load-balancer state warm and finds a hung peer within
    /// about 35 s).
    pub heartbeat_interval: Duration,
    /// Deadline of one heartbeat (a member that does not answer in time is evicted), and of
    /// the protocol's reading of bytes that arrived on an idle member. Shorter than
    /// `heartbeat_interval` when the protocol pings. Not zero.
    ///
    /// Default: 5 s (a healthy peer answers a ping in well under a second).
    pub heartbeat_timeout: Duration,
    /// Each member's heartbeat interval is shortened by a fraction up to this, so that
    /// heartbeats spread out. In [0, 1). (The first heartbeat after a return is drawn
    /// uniformly over the whole interval in any case: members returned or created together
    /// are not pinged together.)
    ///
    /// Default: 0.1.
    pub heartbeat_jitter: f64,
    /// Watch idle members' sockets and evict one the moment the peer closes or resets it,
    /// or sends bytes nobody asked for.
    ///
    /// Default: true.
    pub idle_watch: bool,
    /// The circuit breaker for this endpoint; `None` turns it off (every `get()` that needs
    /// a new connection then tries to connect).
    ///
    /// Default: `Some(BreakerConfig::default())` (3 failures in a row; open 200 ms, growing
    /// with the outage to a tenth of it, at most 30 s).
    pub breaker: Option<BreakerConfig>,
    /// Leak detection: a connection held longer than this logs a warning (once per
    /// checkout) with its id and the place of the `get()` call, and is counted in
    /// [`Statistics::leaks`](crate::Statistics::leaks). Checked every `reap_interval`.
    /// `None` turns it off (and saves a clock read per checkout). Not zero.
    ///
    /// Default: none (what counts as "held too long" depends on the application).
    pub leak_threshold: Option<Duration>,
    /// Seed of the lifetime, heartbeat and breaker jitter (deterministic per connection
    /// id). Pools with the same seed draw the same jitter, so `None` draws a fresh random
    /// seed for every pool (from the operating system's randomness): processes started
    /// together do not expire connections, ping or probe a recovering endpoint in step.
    /// Set one to make a test reproducible. A [`Balancer`](crate::Balancer) mixes each
    /// endpoint's name into it.
    ///
    /// Default: none (random, different for every pool).
    pub jitter_seed: Option<u64>,
}

impl Default for PoolConfig {
    /// The defaults each field's documentation gives, with the reason for each.
    ///
    /// ```
    /// assert_eq!(livepool::PoolConfig::default().max_size, 16);
    /// ```
    fn default() -> Self {
        PoolConfig {
            max_size: 16,
            min_idle: 0,
            connect_timeout: Some(Duration::from_secs(5)),
            wait_timeout: Some(Duration::from_secs(30)),
            tcp: TcpOptions::default(),
            idle_timeout: Some(Duration::from_secs(300)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            lifetime_jitter: 0.05,
            request_response: true,
            reap_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(5),
            heartbeat_jitter: 0.1,
            idle_watch: true,
            breaker: Some(BreakerConfig::default()),
            leak_threshold: None,
            jitter_seed: None,
        }
    }
}

/// What a built pool runs with: its settings, and what the builder resolved around them.
/// Derefs to the [`PoolConfig`], so `cfg.max_size` reads the setting.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) settings: PoolConfig,
    /// The jitter seed in effect: `settings.jitter_seed`, or a fresh random one (named
    /// apart from the setting, which the `Deref` to the settings also reaches).
    pub(crate) seed: u64,
    /// Whether the protocol pings idle members (taken from it at `build()`).
    pub(crate) has_heartbeat: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::transport::tls::TlsSettings>,
    /// Hears every outcome the breaker hears (a balancer's outlier detection).
    pub(crate) observer: Option<Arc<dyn HealthObserver>>,
}

impl std::ops::Deref for Config {
    type Target = PoolConfig;

    fn deref(&self) -> &PoolConfig {
        &self.settings
    }
}

/// Told of every connect, setup and heartbeat outcome of one pool's endpoint, as the
/// breaker is (the same filtering: a dead member or a local resource failure is not an
/// endpoint failure).
pub(crate) trait HealthObserver: Send + Sync {
    fn outcome(&self, success: bool, err: Option<&std::io::Error>);
    /// The endpoint's breaker opened (`last_error`: why).
    fn breaker_opened(&self, last_error: Option<&str>);
    /// A checked-out connection came back: clean (`None`), or evicted for a failure of the
    /// request on it (an I/O error, end of stream, or a request abandoned mid-flight).
    fn request(&self, failure: Option<crate::stats::EvictReason>);
}

impl PoolConfig {
    /// Checks every field; `has_heartbeat`: whether the protocol pings (the heartbeat
    /// timeout must then be shorter than the interval).
    pub(crate) fn validate(&self, has_heartbeat: bool) -> Result<(), BuildError> {
        let e = |f: &'static str, r: &dyn std::fmt::Display| BuildError::new(f, r.to_string());
        check_sizes(self.max_size, self.min_idle)?;
        nonzero("connect_timeout", self.connect_timeout)?;
        nonzero("tcp.keepalive", self.tcp.keepalive)?;
        nonzero("tcp.keepalive_interval", Some(self.tcp.keepalive_interval))?;
        nonzero("tcp.user_timeout", self.tcp.user_timeout)?;
        nonzero("idle_timeout", self.idle_timeout)?;
        nonzero("max_lifetime", self.max_lifetime)?;
        nonzero("reap_interval", Some(self.reap_interval))?;
        nonzero("heartbeat_interval", Some(self.heartbeat_interval))?;
        nonzero("heartbeat_timeout", Some(self.heartbeat_timeout))?;
        nonzero("leak_threshold", self.leak_threshold)?;
        let tcp = &self.tcp;
        if let Some(t) = tcp.keepalive
            && t.as_secs() > MAX_KEEPALIVE_SECS
        {
            return Err(e("tcp.keepalive", &"Linux allows at most 32767 s"));
        }
        if tcp.keepalive_interval.as_secs() > MAX_KEEPALIVE_SECS {
            return Err(e("tcp.keepalive_interval", &"Linux allows at most 32767 s"));
        }
        if tcp.keepalive_retries == 0 || tcp.keepalive_retries > MAX_KEEPALIVE_RETRIES {
            return Err(e("tcp.keepalive_retries", &"must be between 1 and 127"));
        }
        if let Some(t) = tcp.user_timeout
            && t.as_millis() > u128::from(u32::MAX)
        {
            return Err(e("tcp.user_timeout", &"must fit in u32 milliseconds"));
        }
        if tcp
            .user_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(e("tcp.user_timeout", &"must be at least 1 ms"));
        }
        if let (Some(idle), Some(life)) = (self.idle_timeout, self.max_lifetime)
            && idle > life
        {
            return Err(e(
                "idle_timeout",
                &format!("{idle:?} is longer than max_lifetime {life:?}, so it could never apply"),
            ));
        }
        fraction("lifetime_jitter", self.lifetime_jitter)?;
        fraction("heartbeat_jitter", self.heartbeat_jitter)?;
        if has_heartbeat && self.heartbeat_timeout >= self.heartbeat_interval {
            return Err(e(
                "heartbeat_timeout",
                &format!(
                    "{:?} is not shorter than heartbeat_interval {:?}",
                    self.heartbeat_timeout, self.heartbeat_interval
                ),
            ));
        }
        if let Some(b) = &self.breaker {
            b.validate().map_err(|(field, why)| {
                let field = match field {
                    "failure_threshold" => "breaker.failure_threshold",
                    "open_for" => "breaker.open_for",
                    "max_open_for" => "breaker.max_open_for",
                    "outage_fraction" => "breaker.outage_fraction",
                    "jitter" => "breaker.jitter",
                    _ => "breaker",
                };
                e(field, &why)
            })?;
        }
        Ok(())
    }
}

impl Config {
    /// What `build()` runs with: `settings` (validated by the caller), the jitter seed
    /// resolved, no TLS and no observer yet.
    pub(crate) fn new(endpoint: Endpoint, settings: PoolConfig, has_heartbeat: bool) -> Self {
        Config {
            endpoint,
            seed: settings
                .jitter_seed
                .unwrap_or_else(crate::jitter::fresh_seed),
            settings,
            has_heartbeat,
            #[cfg(feature = "tls")]
            tls: None,
            observer: None,
        }
    }

    /// This member's maximum lifetime, shortened by up to `lifetime_jitter` of it.
    pub(crate) fn lifetime_for(&self, id: u64) -> Option<Duration> {
        self.max_lifetime
            .map(|life| life.mul_f64(1.0 - self.lifetime_jitter * unit(self.seed, id)))
    }

    /// This member's heartbeat interval, shortened by up to `heartbeat_jitter` of it.
    pub(crate) fn heartbeat_interval_for(&self, id: u64) -> Duration {
        self.heartbeat_interval
            .mul_f64(1.0 - self.heartbeat_jitter * unit(self.seed ^ 0x9e37, id))
    }
}

/// The size rule at build time (the same as `resize`/`set_min_idle` apply at runtime):
/// `max_size` at least 1 and `min_idle` not above it.
fn check_sizes(max_size: usize, min_idle: usize) -> Result<(), BuildError> {
    SizeError::check(max_size, min_idle).map_err(|e| {
        let field = if max_size == 0 {
            "max_size"
        } else {
            "min_idle"
        };
        BuildError::new(field, e.to_string())
    })
}

fn nonzero(field: &'static str, d: Option<Duration>) -> Result<(), BuildError> {
    match d {
        Some(d) if d.is_zero() => Err(BuildError::new(
            field,
            "zero makes no sense here; use None to disable it where allowed",
        )),
        _ => Ok(()),
    }
}

fn fraction(field: &'static str, f: f64) -> Result<(), BuildError> {
    if (0.0..1.0).contains(&f) {
        Ok(())
    } else {
        Err(BuildError::new(
            field,
            format!("{f} is not a fraction in [0, 1)"),
        ))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoint", &self.endpoint)
            .field("settings", &self.settings)
            .field("seed", &self.seed)
            .field("has_heartbeat", &self.has_heartbeat)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(
            Endpoint::parse("127.0.0.1:1").unwrap(),
            PoolConfig::default(),
            false,
        )
    }

    #[test]
    fn defaults_are_valid() {
        PoolConfig::default().validate(true).unwrap();
    }

    #[test]
    fn each_pool_draws_its_own_jitter_by_default() {
        let (a, b) = (cfg(), cfg());
        assert_ne!(a.seed, b.seed);
        // So two pools' connections with the same id live for different times.
        let differ = (1..=10).any(|id| a.lifetime_for(id) != b.lifetime_for(id));
        assert!(differ);
    }

    #[test]
    fn jitter_is_within_bounds_and_zero_when_disabled() {
        let mut c = cfg();
        for id in 0..1000 {
            let l = c.lifetime_for(id).unwrap();
            assert!(l <= c.max_lifetime.unwrap() && l >= c.max_lifetime.unwrap().mul_f64(0.95));
        }
        c.settings.lifetime_jitter = 0.0;
        assert_eq!(c.lifetime_for(7), c.max_lifetime);
    }
}
