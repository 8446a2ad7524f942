//! Outlier ejection: each endpoint's run of consecutive failures, its ejections, and the
//! balancer-wide limit on how many endpoints may be out at once.
//!
//! What counts, through the pool's [`HealthObserver`]:
//! - the outcomes the endpoint's breaker hears: connects and setups (the refill's too) and
//!   heartbeats, with the breaker's filtering (a member found dead, a wrong heartbeat reply,
//!   a local resource failure are not endpoint failures);
//! - requests: a checked-out connection that comes back with an I/O error or end of stream,
//!   or with a request abandoned mid-flight (the caller's deadline dropped it: cancelled, or
//!   written and never read) is a failure; a clean return is a success. Under load this is
//!   the only signal from a blackholed endpoint: its members are never idle long enough to
//!   be pinged, and a caller's deadline shorter than the connect timeout cancels the
//!   connects before they can fail. A connection the holder marked broken, or that the
//!   protocol found unclean, says nothing about the endpoint;
//! - the breaker opening ejects at once, whatever the count (its own threshold was reached;
//!   after that no connect is tried, so the count would never grow).
//!
//! Why both a breaker and ejection: the breaker stops *connects* to an endpoint it has seen
//! fail (a few failures, a short open period, its own probe); ejection takes the endpoint out
//! of *selection*, idle members and all, for longer each time it is ejected again, and is
//! bounded across endpoints so that a wide outage (or a bug on our side) cannot empty the
//! balancer. An endpoint whose breaker refuses is skipped by selection too, ejected or not.
//!
//! States: in service → (`consecutive_failures` in a row, if the share allows) ejected for
//! `base × times ejected` (capped at `max`) → back in service *on probation* (its pool is
//! asked to refill at once, so that its min_idle connects probe it now): its first failure
//! ejects it again at once (for longer), its first success clears it. Each `base` spent in
//! service without an ejection takes one off the times ejected.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::pool::config::HealthObserver;
use crate::pool::error::BuildError;
use crate::stats::{EventsError, EvictReason, Subscription};

/// Outlier ejection settings of a [`Balancer`](crate::Balancer) (after Envoy's outlier
/// detection): an endpoint with `consecutive_failures` failures in a row (connects, setups,
/// heartbeats, requests that failed or were abandoned on its connections), or whose breaker
/// opens, is taken out of selection for `base × times ejected`, at most `max`; never more
/// than `max_ejected_share` of the endpoints at once (but one may always be ejected), and
/// never the last one in service.
///
/// ```
/// use std::time::Duration;
/// let e = livepool::Ejection::new()
///     .consecutive_failures(3)
///     .base(Duration::from_secs(10))
///     .max(Duration::from_secs(120))
///     .max_ejected_share(0.5);
/// assert_ne!(e, livepool::Ejection::default());
/// ```
///
/// The fields are public, for reading (`ejection.base`) and for building from your own
/// configuration with `..Ejection::default()`; each setter has its field's name.
/// `build()` checks them.
#[derive(Clone, Debug, PartialEq)]
pub struct Ejection {
    /// Failures in a row that eject an endpoint (see
    /// [`consecutive_failures`](Self::consecutive_failures())).
    pub consecutive_failures: u32,
    /// The first ejection's length (see [`base`](Self::base())).
    pub base: Duration,
    /// The longest ejection (see [`max`](Self::max())).
    pub max: Duration,
    /// The largest share of the endpoints ejected at once (see
    /// [`max_ejected_share`](Self::max_ejected_share())).
    pub max_ejected_share: f64,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            // Envoy's default: one failure is noise, five in a row is a pattern.
            consecutive_failures: 5,
            // Envoy's base ejection time; ×2, ×3 … for an endpoint that keeps failing.
            base: Duration::from_secs(30),
            // Envoy's default cap (300 s): a long outage is still retried every 5 minutes.
            max: Duration::from_secs(300),
            // Envoy's default (10 %, and at least one endpoint).
            max_ejected_share: 0.1,
        }
    }
}

impl Ejection {
    /// The defaults: 5 failures, 30 s base, 300 s cap, 10 % of the endpoints.
    ///
    /// ```
    /// assert_eq!(livepool::Ejection::new(), livepool::Ejection::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Consecutive failures (connect, setup, heartbeat) that eject an endpoint. At least 1.
    ///
    /// ```
    /// let e = livepool::Ejection::new().consecutive_failures(3);
    /// ```
    /// Default: 5.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// The first ejection's length; the n-th in a row lasts n times as long. Not zero.
    ///
    /// ```
    /// let e = livepool::Ejection::new().base(std::time::Duration::from_secs(10));
    /// ```
    /// Default: 30 s.
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }

    /// The longest ejection. Not less than `base`.
    ///
    /// ```
    /// let e = livepool::Ejection::new().max(std::time::Duration::from_secs(600));
    /// ```
    /// Default: 300 s.
    pub fn max(mut self, d: Duration) -> Self {
        self.max = d;
        self
    }

    /// The largest share of the endpoints ejected at once, in [0, 1]; one endpoint may be
    /// ejected whatever the share, and the last endpoint in service never is.
    ///
    /// ```
    /// let e = livepool::Ejection::new().max_ejected_share(0.5);
    /// ```
    /// Default: 0.1.
    pub fn max_ejected_share(mut self, share: f64) -> Self {
        self.max_ejected_share = share;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.consecutive_failures == 0 {
            return Err(BuildError::new(
                "ejection.consecutive_failures",
                "must be at least 1",
            ));
        }
        if self.base.is_zero() {
            return Err(BuildError::new("ejection.base", "must not be zero"));
        }
        if self.max < self.base {
            return Err(BuildError::new(
                "ejection.max",
                format!("{:?} is less than the base {:?}", self.max, self.base),
            ));
        }
        if !(0.0..=1.0).contains(&self.max_ejected_share) {
            return Err(BuildError::new(
                "ejection.max_ejected_share",
                format!("{} is not within [0, 1]", self.max_ejected_share),
            ));
        }
        Ok(())
    }

    /// How long the `times`-th ejection in a row lasts.
    fn length(&self, times: u32) -> Duration {
        self.base.saturating_mul(times).min(self.max)
    }

    /// How many of `n` endpoints may be ejected at once.
    fn allowed(&self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        ((self.max_ejected_share * n as f64).floor() as usize).clamp(1, n - 1)
    }
}

/// Something that happened to an endpoint of a [`Balancer`](crate::Balancer), from
/// [`Balancer::events`](crate::Balancer::events).
///
/// ```no_run
/// # async fn f(b: livepool::Balancer) {
/// let mut events = b.events();
/// while let Ok(ev) = events.recv().await {
///     println!("{}: {:?}", ev.endpoint, ev.kind);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BalancerEvent {
    /// The endpoint, as configured (or the address DNS gave).
    pub endpoint: Arc<str>,
    /// What happened.
    pub kind: BalancerEventKind,
    /// When.
    pub at: Instant,
}

/// What happened to an endpoint; see [`BalancerEvent`].
///
/// ```
/// let k = livepool::BalancerEventKind::Recovered;
/// assert!(matches!(k, livepool::BalancerEventKind::Recovered));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BalancerEventKind {
    /// Taken out of selection after `failures` consecutive failures, for `duration` (its
    /// `times`-th ejection in a row).
    Ejected {
        /// How long it stays out.
        duration: Duration,
        /// How many times in a row it has been ejected, this one included.
        times: u32,
        /// The failures in a row that ejected it.
        failures: u32,
        /// The last of them, as text.
        last_error: Option<String>,
    },
    /// The ejection is over: back in selection on probation (one failure ejects it again).
    Returned,
    /// A success on probation: healthy again.
    Recovered,
    /// Added (by [`Balancer::add`](crate::Balancer::add) or a DNS answer).
    Added,
    /// Removed and drained (by [`Balancer::remove`](crate::Balancer::remove) or a DNS
    /// answer without it).
    Removed,
}

/// A subscription to a balancer's events; see [`Balancer::events`](crate::Balancer::events).
/// Buffered (256); a subscriber that falls behind gets [`EventsError::Lagged`], then goes on.
///
/// ```no_run
/// # async fn f(b: livepool::Balancer) {
/// let mut events = b.events();
/// let first = events.recv().await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct BalancerEvents {
    inner: Subscription<BalancerEvent>,
}

crate::stats::subscription_stream!(BalancerEvents, BalancerEvent);

impl BalancerEvents {
    /// Waits for the next event.
    ///
    /// # Errors
    /// [`EventsError::Closed`] when the balancer is gone, [`EventsError::Lagged`] when events
    /// were missed.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `recv` loses no event.
    ///
    /// ```no_run
    /// # async fn f(mut e: livepool::BalancerEvents) {
    /// if let Ok(ev) = e.recv().await { println!("{:?}", ev.kind); }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<BalancerEvent, EventsError> {
        self.inner.recv().await
    }

    /// The next buffered event, without waiting (`Ok(None)` when there is none).
    ///
    /// # Errors
    /// As [`BalancerEvents::recv`].
    ///
    /// ```no_run
    /// # fn f(mut e: livepool::BalancerEvents) {
    /// while let Ok(Some(ev)) = e.try_recv() { println!("{:?}", ev.kind); }
    /// # }
    /// ```
    pub fn try_recv(&mut self) -> Result<Option<BalancerEvent>, EventsError> {
        self.inner.try_recv()
    }
}

/// The balancer-wide part: settings, how many endpoints are in and out, the event stream.
pub(crate) struct Ejector {
    config: Option<Ejection>,
    counts: Mutex<Counts>,
    events: broadcast::Sender<BalancerEvent>,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Counts {
    endpoints: usize,
    ejected: usize,
}

impl Ejector {
    pub(crate) fn new(config: Option<Ejection>, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Ejector {
            config,
            counts: Mutex::new(Counts::default()),
            events: broadcast::channel(256).0,
            runtime,
        })
    }

    pub(crate) fn subscribe(&self) -> BalancerEvents {
        BalancerEvents {
            inner: Subscription::new(&self.events),
        }
    }

    pub(crate) fn emit(&self, endpoint: &Arc<str>, kind: BalancerEventKind) {
        tracing::info!(endpoint = %endpoint, event = ?kind, "balancer");
        let _ = self.events.send(BalancerEvent {
            endpoint: endpoint.clone(),
            kind,
            at: Instant::now(),
        });
    }

    /// The health record of a new endpoint (counted from now on).
    pub(crate) fn join(self: &Arc<Self>, endpoint: Arc<str>) -> Arc<Health> {
        self.counts.lock().endpoints += 1;
        #[cfg(feature = "metrics")]
        let metrics = (
            metrics::counter!("livepool_endpoint_ejections_total", "endpoint" => endpoint.to_string()),
            metrics::gauge!("livepool_endpoint_ejected", "endpoint" => endpoint.to_string()),
        );
        Arc::new_cyclic(|me| Health {
            kick: std::sync::OnceLock::new(),
            #[cfg(feature = "metrics")]
            metrics,
            endpoint,
            ejected: AtomicBool::new(false),
            clean: AtomicBool::new(true),
            st: Mutex::new(State {
                since: Some(Instant::now()),
                ..State::default()
            }),
            ejector: self.clone(),
            me: me.clone(),
        })
    }
}

/// One endpoint's record.
pub(crate) struct Health {
    endpoint: Arc<str>,
    /// True while ejected (read by every selection: one load).
    ejected: AtomicBool,
    /// No failure since the last success and not on probation: a success changes nothing
    /// (one load per clean return).
    clean: AtomicBool,
    st: Mutex<State>,
    ejector: Arc<Ejector>,
    me: Weak<Health>,
    /// Asks the endpoint's pool to end its breaker's open period and refill at once (set
    /// once its pool exists): a returning endpoint is probed now, not after the rest of an
    /// open period or a refill backoff grown during the outage.
    kick: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    #[cfg(feature = "metrics")]
    metrics: (metrics::Counter, metrics::Gauge),
}

#[derive(Default)]
struct State {
    consecutive: u32,
    times: u32,
    /// The end of the current ejection.
    until: Option<Instant>,
    probation: bool,
    last_error: Option<String>,
    /// When the endpoint last returned from an ejection (the times ejected are forgiven
    /// one per `base` in service since).
    since: Option<Instant>,
    /// Removed from the balancer: counts for nothing any more.
    retired: bool,
}

/// One endpoint's health as [`Balancer::endpoints`](crate::Balancer::endpoints) shows it.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthView {
    pub(crate) ejected_for: Option<Duration>,
    pub(crate) times_ejected: u32,
    pub(crate) consecutive_failures: u32,
}

impl Health {
    pub(crate) fn set_kick(&self, kick: impl Fn() + Send + Sync + 'static) {
        let _ = self.kick.set(Box::new(kick));
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }

    pub(crate) fn view(&self) -> HealthView {
        let st = self.st.lock();
        let now = Instant::now();
        let forgiven = self
            .ejector
            .config
            .as_ref()
            .map_or(0, |c| forgiven(&st, now, c.base));
        HealthView {
            ejected_for: st.until.map(|u| u.saturating_duration_since(now)),
            times_ejected: st.times - forgiven,
            consecutive_failures: st.consecutive,
        }
    }

    /// The endpoint left the balancer.
    pub(crate) fn retire(&self) {
        let mut st = self.st.lock();
        if st.retired {
            return;
        }
        st.retired = true;
        let mut c = self.ejector.counts.lock();
        c.endpoints -= 1;
        if st.until.take().is_some() {
            c.ejected -= 1;
        }
        self.ejected.store(false, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.1.set(0.0);
    }

    /// A failure; `eject` when it ejects whatever the count (the breaker opened).
    fn failure(&self, err: Option<String>, eject: bool) {
        let Some(cfg) = &self.ejector.config else {
            return;
        };
        let mut st = self.st.lock();
        if st.retired {
            return;
        }
        self.clean.store(false, Relaxed);
        if let Some(e) = err {
            st.last_error = Some(e);
        }
        if !eject {
            // (The breaker's opening is not a failure of its own: the one that opened it
            // was counted already.)
            st.consecutive = st.consecutive.saturating_add(1);
        }
        let due = eject || st.probation || st.consecutive >= cfg.consecutive_failures;
        if st.until.is_some() || !due {
            return;
        }
        {
            let mut c = self.ejector.counts.lock();
            let allowed = cfg.allowed(c.endpoints);
            if c.ejected >= allowed {
                tracing::debug!(
                    endpoint = %self.endpoint,
                    ejected = c.ejected,
                    allowed,
                    "not ejected: the most endpoints allowed out are out"
                );
                return;
            }
            c.ejected += 1;
        }
        let now = Instant::now();
        st.times -= forgiven(&st, now, cfg.base);
        st.times = st.times.saturating_add(1);
        let duration = cfg.length(st.times);
        let until = now + duration;
        st.until = Some(until);
        st.probation = false;
        self.ejected.store(true, Relaxed);
        #[cfg(feature = "metrics")]
        {
            self.metrics.0.increment(1);
            self.metrics.1.set(1.0);
        }
        let kind = BalancerEventKind::Ejected {
            duration,
            times: st.times,
            failures: st.consecutive,
            last_error: st.last_error.clone(),
        };
        drop(st);
        self.ejector.emit(&self.endpoint, kind);
        let me = self.me.clone();
        self.ejector.runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(h) = me.upgrade() {
                h.expire(until);
            }
        });
    }

    /// The ejection that ends at `until` is over (unless a later one replaced it).
    fn expire(&self, until: Instant) {
        let mut st = self.st.lock();
        if st.retired || st.until != Some(until) {
            return;
        }
        st.until = None;
        st.probation = true;
        self.clean.store(false, Relaxed);
        // Probation starts its own count (its first failure decides).
        st.consecutive = 0;
        st.since = Some(Instant::now());
        self.ejector.counts.lock().ejected -= 1;
        self.ejected.store(false, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.1.set(0.0);
        drop(st);
        self.ejector
            .emit(&self.endpoint, BalancerEventKind::Returned);
        if let Some(kick) = self.kick.get() {
            kick();
        }
    }

    fn success(&self) {
        // Every clean return lands here: one load while nothing is to be reset.
        if self.clean.load(Relaxed) {
            return;
        }
        let mut st = self.st.lock();
        st.consecutive = 0;
        if st.retired || st.until.is_some() {
            return;
        }
        // Nothing left for a success to change until the next failure (the times ejected
        // are forgiven by the clock, see `forgiven`).
        self.clean.store(true, Relaxed);
        if st.probation {
            st.probation = false;
            drop(st);
            self.ejector
                .emit(&self.endpoint, BalancerEventKind::Recovered);
        }
    }
}

/// The ejections forgiven by now: one per `base` in service since the last return.
fn forgiven(st: &State, now: Instant, base: Duration) -> u32 {
    let Some(since) = st.since else { return 0 };
    if st.until.is_some() {
        return 0;
    }
    let periods = now.saturating_duration_since(since).as_nanos() / base.as_nanos().max(1);
    periods.min(u128::from(st.times)) as u32
}

impl HealthObserver for Health {
    fn outcome(&self, success: bool, err: Option<&io::Error>) {
        if success {
            self.success();
        } else {
            self.failure(err.map(|e| e.to_string()), false);
        }
    }

    fn breaker_opened(&self, last_error: Option<&str>) {
        self.failure(last_error.map(str::to_string), true);
    }

    fn request(&self, failure: Option<EvictReason>) {
        match failure {
            None => self.success(),
            Some(
                r @ (EvictReason::IoError
                | EvictReason::Eof
                | EvictReason::Cancelled
                | EvictReason::UnreadResponse),
            ) => self.failure(Some(format!("request failed: {}", r.as_str())), false),
            // The holder's or the protocol's verdict on the connection, the pool's own
            // limits: nothing about the endpoint.
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_share_keeps_one_in_service_and_allows_one_out() {
        let e = Ejection::new();
        assert_eq!(e.allowed(1), 0);
        assert_eq!(e.allowed(2), 1);
        assert_eq!(e.allowed(3), 1);
        assert_eq!(e.allowed(30), 3);
        let all = Ejection::new().max_ejected_share(1.0);
        assert_eq!(all.allowed(3), 2);
        let none = Ejection::new().max_ejected_share(0.0);
        assert_eq!(none.allowed(3), 1);
    }

    #[test]
    fn lengths_grow_with_times_up_to_the_cap() {
        let e = Ejection::new();
        assert_eq!(e.length(1), Duration::from_secs(30));
        assert_eq!(e.length(3), Duration::from_secs(90));
        assert_eq!(e.length(50), Duration::from_secs(300));
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let bad = [
            (
                Ejection::new().consecutive_failures(0),
                "ejection.consecutive_failures",
            ),
            (Ejection::new().base(Duration::ZERO), "ejection.base"),
            (Ejection::new().max(Duration::from_secs(1)), "ejection.max"),
            (
                Ejection::new().max_ejected_share(1.5),
                "ejection.max_ejected_share",
            ),
            (
                Ejection::new().max_ejected_share(f64::NAN),
                "ejection.max_ejected_share",
            ),
        ];
        for (e, field) in bad {
            assert_eq!(e.validate().unwrap_err().field(), field);
        }
        assert!(Ejection::new().validate().is_ok());
    }

    /// Runs `f` on a current-thread runtime with tokio's clock paused (sleeps advance it).
    fn paused<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    fn io(msg: &str) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, msg.to_string())
    }

    #[test]
    fn ejection_probation_and_recovery() {
        paused(async {
            let cfg = Ejection::new()
                .consecutive_failures(3)
                .base(Duration::from_secs(10))
                .max_ejected_share(1.0);
            let ej = Ejector::new(Some(cfg), tokio::runtime::Handle::current());
            let mut events = ej.subscribe();
            let a = ej.join("a".into());
            let _b = ej.join("b".into());
            // Two failures, a success, two failures: no run of three.
            for ok in [false, false, true, false, false] {
                a.outcome(ok, Some(&io("refused")));
            }
            assert!(!a.is_ejected());
            a.outcome(false, Some(&io("refused")));
            assert!(a.is_ejected());
            let ev = events.try_recv().unwrap().unwrap();
            assert_eq!(
                ev.kind,
                BalancerEventKind::Ejected {
                    duration: Duration::from_secs(10),
                    times: 1,
                    failures: 3,
                    last_error: Some("refused".into())
                }
            );
            tokio::time::sleep(Duration::from_secs(11)).await;
            assert!(!a.is_ejected());
            assert_eq!(
                events.try_recv().unwrap().unwrap().kind,
                BalancerEventKind::Returned
            );
            // On probation: one failure ejects it again, for twice as long.
            a.outcome(false, None);
            assert!(a.is_ejected());
            match events.try_recv().unwrap().unwrap().kind {
                BalancerEventKind::Ejected {
                    duration, times, ..
                } => {
                    assert_eq!((duration, times), (Duration::from_secs(20), 2));
                }
                k => panic!("{k:?}"),
            }
            tokio::time::sleep(Duration::from_secs(21)).await;
            assert_eq!(
                events.try_recv().unwrap().unwrap().kind,
                BalancerEventKind::Returned
            );
            a.outcome(true, None);
            assert_eq!(
                events.try_recv().unwrap().unwrap().kind,
                BalancerEventKind::Recovered
            );
            assert_eq!(a.view().times_ejected, 2);
            // Healthy for one base period: one ejection forgiven.
            tokio::time::sleep(Duration::from_secs(10)).await;
            a.outcome(true, None);
            assert_eq!(a.view().times_ejected, 1);
        });
    }

    #[test]
    fn failed_requests_count_clean_returns_reset_and_an_open_breaker_ejects() {
        paused(async {
            let cfg = Ejection::new()
                .consecutive_failures(3)
                .max_ejected_share(1.0);
            let ej = Ejector::new(Some(cfg), tokio::runtime::Handle::current());
            let a = ej.join("a".into());
            let b = ej.join("b".into());
            let _c = ej.join("c".into());
            // Abandoned and failed requests count; a clean return resets the run; what the
            // holder or the protocol decided about one connection does not count.
            a.request(Some(EvictReason::Cancelled));
            a.request(Some(EvictReason::IoError));
            a.request(None);
            a.request(Some(EvictReason::MarkedBroken));
            a.request(Some(EvictReason::NotClean));
            a.request(Some(EvictReason::UnreadResponse));
            a.request(Some(EvictReason::Eof));
            assert!(!a.is_ejected());
            assert_eq!(a.view().consecutive_failures, 2);
            a.request(Some(EvictReason::Cancelled));
            assert!(a.is_ejected());
            // An open breaker ejects at once, whatever the count.
            b.outcome(false, Some(&io("refused")));
            b.breaker_opened(Some("connection refused"));
            assert!(b.is_ejected());
            assert_eq!(b.view().consecutive_failures, 1);
        });
    }

    #[test]
    fn the_share_and_the_last_endpoint_limit_ejection() {
        paused(async {
            let cfg = Ejection::new()
                .consecutive_failures(1)
                .max_ejected_share(1.0);
            let ej = Ejector::new(Some(cfg), tokio::runtime::Handle::current());
            let a = ej.join("a".into());
            let b = ej.join("b".into());
            a.outcome(false, None);
            b.outcome(false, None);
            // Never the last one in service.
            assert!(a.is_ejected() && !b.is_ejected());
            // Once `a` leaves the balancer, `b` is the last: still not ejected.
            a.retire();
            b.outcome(false, None);
            assert!(!b.is_ejected());
            let c = ej.join("c".into());
            b.outcome(false, None);
            assert!(b.is_ejected());
            c.outcome(false, None);
            assert!(!c.is_ejected());
        });
    }
}
