//! The validated pool configuration and its defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::jitter::unit;
use crate::pool::error::BuildError;
use crate::transport::{Endpoint, TcpOptions};

/// Linux caps TCP_KEEPIDLE and TCP_KEEPINTVL at 32,767 s and TCP_KEEPCNT at 127.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_RETRIES: u32 = 127;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) endpoint: Endpoint,
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) tcp_nodelay: bool,
    pub(crate) tcp_keepalive: Option<Duration>,
    pub(crate) tcp_keepalive_interval: Duration,
    pub(crate) tcp_keepalive_retries: u32,
    pub(crate) tcp_user_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: f64,
    pub(crate) request_response: bool,
    pub(crate) reap_interval: Duration,
    /// Whether the protocol pings idle members (taken from it at `build()`).
    pub(crate) has_heartbeat: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::transport::tls::TlsSettings>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) heartbeat_jitter: f64,
    pub(crate) idle_watch: bool,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) leak_threshold: Option<Duration>,
    pub(crate) jitter_seed: u64,
    /// Hears every outcome the breaker hears (a balancer's outlier detection).
    pub(crate) observer: Option<Arc<dyn HealthObserver>>,
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

impl Config {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Config {
            endpoint,
            // Enough for a busy service on a few cores; databases cap clients at a few hundred.
            max_size: 16,
            // No background connects unless asked for.
            min_idle: 0,
            // A loopback or LAN connect takes microseconds to milliseconds; 5 s covers a slow WAN.
            connect_timeout: Some(Duration::from_secs(5)),
            // A caller should hear "pool exhausted" long before a request deadline of minutes.
            wait_timeout: Some(Duration::from_secs(30)),
            // Request/response traffic: Nagle adds up to 40 ms per small request.
            tcp_nodelay: true,
            // Finds a blackholed idle peer in ~90 s instead of Linux's 2 h 11 min.
            tcp_keepalive: Some(Duration::from_secs(60)),
            tcp_keepalive_interval: Duration::from_secs(10),
            tcp_keepalive_retries: 3,
            // Bounds unacked data to 30 s instead of ~15 min (tcp_retries2); keepalive pauses then.
            tcp_user_timeout: Some(Duration::from_secs(30)),
            // Below common server and NAT idle limits (Redis 0/300 s, AWS NLB 350 s, PG none).
            idle_timeout: Some(Duration::from_secs(300)),
            // Rotates connections so that DNS and failover changes (every connect resolves the
            // name again) and server-side leaks heal.
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            // Spreads out the expiry of connections opened together.
            lifetime_jitter: 0.05,
            // The common case: a write is a request whose response must be read.
            request_response: true,
            // Idle/lifetime/heartbeat granularity; a tick visits only the members that are due.
            reap_interval: Duration::from_secs(1),
            // Heartbeats need a protocol; the raw protocol has none by default.
            has_heartbeat: false,
            // Plain TCP unless asked for.
            #[cfg(feature = "tls")]
            tls: None,
            // Keeps NAT/LB state warm and finds a hung peer within ~35 s.
            heartbeat_interval: Duration::from_secs(30),
            // A healthy peer answers a ping in well under a second.
            heartbeat_timeout: Duration::from_secs(5),
            // Varies later heartbeat intervals (the first after a return is spread over the
            // whole interval anyway).
            heartbeat_jitter: 0.1,
            // Event-driven eviction of idle members closed by the peer.
            idle_watch: true,
            // Fail fast after 3 failures in a row; probe every 200 ms, then a tenth of the
            // outage so far, at most every 30 s.
            breaker: Some(BreakerConfig::default()),
            // Off: what counts as "held too long" depends on the application.
            leak_threshold: None,
            // Drawn at random per pool, so that processes started together do not expire,
            // ping or probe in step; tests set one to reproduce a run.
            jitter_seed: crate::jitter::fresh_seed(),
            observer: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        let e = |f: &'static str, r: &dyn std::fmt::Display| BuildError::new(f, r.to_string());
        check_sizes(self.max_size, self.min_idle, "min_idle")?;
        nonzero("connect_timeout", self.connect_timeout)?;
        nonzero("tcp_keepalive", self.tcp_keepalive)?;
        nonzero("tcp_keepalive_interval", Some(self.tcp_keepalive_interval))?;
        nonzero("tcp_user_timeout", self.tcp_user_timeout)?;
        nonzero("idle_timeout", self.idle_timeout)?;
        nonzero("max_lifetime", self.max_lifetime)?;
        nonzero("reap_interval", Some(self.reap_interval))?;
        nonzero("heartbeat_interval", Some(self.heartbeat_interval))?;
        nonzero("heartbeat_timeout", Some(self.heartbeat_timeout))?;
        nonzero("leak_threshold", self.leak_threshold)?;
        if let Some(t) = self.tcp_keepalive
            && t.as_secs() > MAX_KEEPALIVE_SECS
        {
            return Err(e("tcp_keepalive", &"Linux allows at most 32767 s"));
        }
        if self.tcp_keepalive_interval.as_secs() > MAX_KEEPALIVE_SECS {
            return Err(e("tcp_keepalive_interval", &"Linux allows at most 32767 s"));
        }
        if self.tcp_keepalive_retries == 0 || self.tcp_keepalive_retries > MAX_KEEPALIVE_RETRIES {
            return Err(e("tcp_keepalive_retries", &"must be between 1 and 127"));
        }
        if let Some(t) = self.tcp_user_timeout
            && t.as_millis() > u128::from(u32::MAX)
        {
            return Err(e("tcp_user_timeout", &"must fit in u32 milliseconds"));
        }
        if self
            .tcp_user_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(e("tcp_user_timeout", &"must be at least 1 ms"));
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
        if self.has_heartbeat && self.heartbeat_timeout >= self.heartbeat_interval {
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

    /// The TCP options of every new connection (skipped on Unix sockets).
    pub(crate) fn tcp_options(&self) -> TcpOptions {
        TcpOptions {
            nodelay: self.tcp_nodelay,
            keepalive: self.tcp_keepalive,
            keepalive_interval: self.tcp_keepalive_interval,
            keepalive_retries: self.tcp_keepalive_retries,
            user_timeout: self.tcp_user_timeout,
        }
    }

    /// This member's maximum lifetime, shortened by up to `lifetime_jitter` of it.
    pub(crate) fn lifetime_for(&self, id: u64) -> Option<Duration> {
        self.max_lifetime
            .map(|life| life.mul_f64(1.0 - self.lifetime_jitter * unit(self.jitter_seed, id)))
    }

    /// This member's heartbeat interval, shortened by up to `heartbeat_jitter` of it.
    pub(crate) fn heartbeat_interval_for(&self, id: u64) -> Duration {
        self.heartbeat_interval
            .mul_f64(1.0 - self.heartbeat_jitter * unit(self.jitter_seed ^ 0x9e37, id))
    }
}

/// The size rule, at build time and for `resize`/`set_min_idle` at runtime: `max_size` at
/// least 1 and `min_idle` not above it. `blame` names the field reported when they conflict.
pub(crate) fn check_sizes(
    max_size: usize,
    min_idle: usize,
    blame: &'static str,
) -> Result<(), BuildError> {
    if max_size == 0 {
        return Err(BuildError::new("max_size", "must be at least 1"));
    }
    if min_idle > max_size {
        return Err(BuildError::new(
            blame,
            format!("min_idle {min_idle} is larger than max_size {max_size}"),
        ));
    }
    Ok(())
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
            .field("max_size", &self.max_size)
            .field("min_idle", &self.min_idle)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("has_heartbeat", &self.has_heartbeat)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(Endpoint::parse("127.0.0.1:1").unwrap())
    }

    #[test]
    fn defaults_are_valid() {
        cfg().validate().unwrap();
    }

    #[test]
    fn each_pool_draws_its_own_jitter_by_default() {
        let (a, b) = (cfg(), cfg());
        assert_ne!(a.jitter_seed, b.jitter_seed);
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
        c.lifetime_jitter = 0.0;
        assert_eq!(c.lifetime_for(7), c.max_lifetime);
    }
}
