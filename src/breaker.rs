//! Per-endpoint circuit breaker: a pure state machine with time passed in.
//!
//! ```text
//!            failure_threshold failures, each seen
//!            by an attempt started after the last
//!   Closed ─────────────────────────────────────────▶ Open
//!     ▲                                                │ ▲
//!     │ probe success            open period elapsed   │ │ probe failure
//!     │                          (on the next admit)   ▼ │ (period follows the outage)
//!     └──────────────────────────────────────────── HalfOpen
//! ```
//!
//! The breaker never reads the clock and never sleeps: every call that depends on
//! time takes `now`, so it can be driven by tests with arbitrary instants.
//!
//! # Open periods: recovery follows the server
//!
//! The breaker promises two things that pull against each other: callers fail fast and
//! the endpoint sees few connects while it is down, yet the pool serves again soon after
//! the server is back. A fixed or doubling period cannot keep both: 30 s turns a 3 s
//! restart into half a minute of refusals, and a short period doubled per failed probe
//! strands a server that came back just after a probe for as long as the last period.
//!
//! So each open period is a share of the outage so far: it lasts
//! `min(max(open_for, outage_fraction × outage), max_open_for)`, then shifted at random
//! by up to `± jitter` of itself, where `outage` is the time since the breaker last left
//! the closed state. The wait between the server's return and the first connect let
//! through is at most one period, so it is bounded by a fixed fraction of the outage:
//! short outages cost little, long ones are probed rarely. With the defaults (200 ms,
//! 0.1, 30 s, ± 10 %):
//!
//! | outage | probe every | first connect after the server is back | connects per minute while down |
//! |---|---|---|---|
//! | 1 s | 200 ms | ≤ 0.22 s | — |
//! | 10 s | ≤ 1 s | ≤ 1.1 s | — |
//! | 10 min | 30 s (the cap) | ≤ 33 s | 2 |
//!
//! A 60 s outage costs about 45 connects while callers keep asking (deadpool connects on
//! every `get()` that finds no idle connection: thousands). A probe happens only when a
//! caller (or the refill of `min_idle`) asks for a connection; with no demand, there is
//! no traffic at all.
//!
//! # Evidence, not a burst
//!
//! What the breaker counts is *independent* evidence. When a server goes down, every
//! caller that was connecting at that moment fails within the same millisecond: that is
//! one event seen many times, not many failures. Each attempt (connect or heartbeat)
//! takes an [`Evidence`] ticket when it starts; a failure counts only if no failure was
//! counted since its ticket was issued, that is, only if the attempt started after the
//! last counted failure. N callers failing together count once; `failure_threshold`
//! failures in a row then mean that many attempts, one after another, each started after
//! the previous one had already failed. Every transition also invalidates older tickets:
//! a heartbeat begun before the breaker opened cannot decide a later probe.
//!
//! # Event attribution
//!
//! [`Breaker::on_event`] does not say whether an outcome came from a connect or from a
//! heartbeat, so the rules are:
//!
//! * **Closed**: a failure with a current ticket counts towards `failure_threshold`; a
//!   stale one is ignored (see above); a success resets the count.
//! * **Open**: every outcome is ignored. A heartbeat of a connection that was
//!   established before the breaker opened proves little about new connects, and
//!   late failures must not extend or shorten the open period. Only a probe may
//!   close the breaker.
//! * **HalfOpen with a probe in flight**: the next outcome with a current ticket (an
//!   attempt started in this half-open state) is taken to be the probe's. Success
//!   closes the breaker; failure re-opens it. (A heartbeat started after the probe that
//!   happens to report first is thus treated as the probe's verdict; both are evidence
//!   about the same endpoint, so this is acceptable, and the probe's own later report is
//!   then handled by the new state's rules.)
//! * **HalfOpen without a probe in flight**: outcomes are ignored; the state
//!   waits for a caller to take the probe.
//!
//! Transitions to half-open happen lazily, in [`Breaker::admit`]; every
//! transition is returned exactly once, from the call that caused it.
//! [`Breaker::end_open_period`] lets the next admit probe at once (a balancer's
//! ejection of the endpoint ended: the two must agree).
//!
//! # What feeds the breaker
//!
//! The breaker answers one question: *will a new connect to this endpoint
//! succeed?* So only evidence about that question is fed to it; the pool decides
//! what to report, the machine above only counts.
//!
//! Failures (counted towards `failure_threshold`, or the probe's verdict):
//!
//! * a connect error or connect timeout, a failed TLS handshake, a failed
//!   protocol setup: exactly what a new connection would meet;
//! * a server that answers it cannot serve yet (Postgres `57P03`, Redis `LOADING`,
//!   `BUSY`): the connect retries with backoff inside its timeout, and the whole
//!   attempt counts once, as a refused connect would;
//! * a heartbeat that gets no answer within its deadline: a hung or
//!   blackholed server or path, which new connections would meet too;
//! * a heartbeat that fails with an I/O error other than a close or reset by
//!   the peer (for example `ETIMEDOUT` or `EHOSTUNREACH` from the kernel): the
//!   path to the endpoint is broken.
//!
//! Successes (reset the count; close a half-open breaker through its probe): a
//! connect with setup done, a correctly answered heartbeat.
//!
//! Neither — the member is evicted (or the caller gets the error), the breaker
//! hears nothing:
//!
//! * **a configuration mistake found at setup**: no password for the server's
//!   authentication method, credentials the server rejects, an unknown database, a
//!   certificate that does not verify for the configured name. The endpoint is up and
//!   answering; refusing connects to it would only hide the real error behind "circuit
//!   open". The caller gets an error for which
//!   [`Error::is_config`](crate::Error::is_config) is true, and the pool paces its
//!   connects while the mistake lasts (at most one per second), without opening the
//!   breaker or counting against the endpoint in a balancer.
//! * **a wrong or garbled heartbeat reply.** The server answered, so it is up
//!   and reachable; what is wrong is this member's session (a protocol state
//!   out of step, a reply meant for another request) or the configuration (a
//!   heartbeat that needs `AUTH` on a server that demands it: `-NOAUTH`). A new
//!   connection goes through setup, which either fixes the session or fails —
//!   and a failing setup *is* fed. Counting bad replies let a few `-NOAUTH`
//!   answers on idle members open the breaker against a healthy server and
//!   refuse connects that would have worked.
//! * **a peer close or reset during a heartbeat** (or found at checkout): one
//!   dead member is not a dead endpoint; servers close idle connections
//!   routinely (`timeout`, restarts of one worker, load balancers).
//! * **a local resource failure** (`transport::blame` says `Blame::Local`):
//!   `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, `EADDRNOTAVAIL`. This process
//!   ran out of file descriptors, buffers, memory or ephemeral ports; the
//!   endpoint was never reached. Counting these would open the breaker and
//!   keep refusing connects for a whole open period after the resource is free
//!   again. They are counted on their own (`local_resource_errors`).
//!
//! A half-open probe that fails locally did not test the endpoint: it is
//! neither the probe's failure (no re-open, no longer period) nor its success
//! (no close). The pool hands the probe back
//! ([`Breaker::probe_abandoned`]), so the next caller may probe once the
//! resource is free. Heartbeats never report a local failure to the machine,
//! since in half-open the next outcome is taken to be the probe's and a
//! heartbeat must not release the probe of a connect still in flight.

use crate::jitter::SplitMix64;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// How long callers refused because a half-open probe is in flight should wait
/// before asking again (capped at the configured base open period).
///
/// The breaker does not know the connect timeout that bounds the probe, so it
/// cannot say exactly when the probe will resolve; a short fixed interval keeps
/// refused callers cheap while letting them notice promptly when the breaker
/// closes.
const PROBE_IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// The default longest open period: probes are never further apart than this, whatever the
/// outage (gRPC's connection backoff caps at 120 s; a pool in front of a database should
/// notice a recovery sooner).
const DEFAULT_MAX_OPEN_FOR: Duration = Duration::from_secs(30);

/// Circuit-breaker settings for each endpoint of a pool.
///
/// A breaker opens after [`failure_threshold`](Self::failure_threshold)
/// consecutive failures (connect errors, connect timeouts, failed heartbeats; many
/// callers failing at the same moment count once) and then refuses new connects to that
/// endpoint for an *open period*. When the period has passed, one probe connect is let
/// through (the *half-open* state): its success closes the breaker, its failure re-opens
/// it.
///
/// Each open period lasts `min(max(open_for, outage_fraction × outage), max_open_for)`,
/// where `outage` is the time since the breaker opened from closed, then shifted at
/// random by up to `± jitter` of itself so that many pools do not probe a recovering
/// endpoint in lockstep.
///
/// # What a user gets after an outage
///
/// The wait between the server's return and the first connect let through is at most one
/// open period, so it is bounded by a fixed fraction of the outage: short outages cost
/// little, long ones are probed rarely. A fixed or doubling period cannot do both: 30 s
/// turns a 3 s restart into half a minute of refusals, and a short period doubled per failed
/// probe strands a server that returns just after a probe for the whole next period. With
/// the defaults (200 ms, 0.1, 30 s, ± 10 %):
///
/// | outage | probes while down | the pool serves again after the server is back |
/// |---|---|---|
/// | 1 s | every 200 ms | ≤ 0.22 s |
/// | 10 s | every 0.2–1 s | ≤ 1.1 s |
/// | 10 min | then every 30 s (the cap) | ≤ 33 s |
///
/// A 60 s outage costs about 45 connects while callers keep asking (deadpool connects on
/// every `get()` that finds no idle connection: thousands). Probes happen only when a caller
/// or the refill of `min_idle` asks for a connection. Callers refused meanwhile get
/// [`Error::is_circuit_open`](crate::Error::is_circuit_open) at once, with the rest of the
/// period as [`Error::retry_after`](crate::Error::retry_after).
///
/// # What counts
///
/// Independent evidence, not a burst: when a server goes down, every caller connecting at
/// that moment fails within the same millisecond — one event seen many times. A failure
/// counts only if the attempt (a connect, or a heartbeat) started after the last counted
/// failure; `failure_threshold` failures in a row are that many attempts, each begun after
/// the previous one had failed. A configuration mistake found at setup
/// ([`Error::is_config`](crate::Error::is_config)), a member closed by its peer, a wrong
/// heartbeat reply and a local resource shortage (`EMFILE`, …) do not count at all: none of
/// them says that a new connect would fail.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use livepool::BreakerConfig;
///
/// let config = BreakerConfig::new()
///     .failure_threshold(5)
///     .open_for(Duration::from_millis(500))
///     .max_open_for(Duration::from_secs(120))
///     .outage_fraction(0.2)
///     .jitter(0.2);
///
/// assert_ne!(config, BreakerConfig::default());
/// assert_eq!(BreakerConfig::new(), BreakerConfig::default());
/// ```
///
/// The fields are public, for reading (`config.open_for`) and for building from your own
/// configuration with `..BreakerConfig::default()`; each setter has its field's name.
/// `build()` checks them.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (see [`failure_threshold`](Self::failure_threshold())).
    pub failure_threshold: u32,
    /// The shortest open period (see [`open_for`](Self::open_for())).
    pub open_for: Duration,
    /// The longest open period; `None`: 30 s, or `open_for` if that is longer (see
    /// [`max_open_for`](Self::max_open_for())).
    pub max_open_for: Option<Duration>,
    /// How the open period grows with the outage (see
    /// [`outage_fraction`](Self::outage_fraction())).
    pub outage_fraction: f64,
    /// The random spread of each open period (see [`jitter`](Self::jitter())).
    pub jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            // One failure can be a blip; three in a row, each seen by an attempt started
            // after the last, is a pattern.
            failure_threshold: 3,
            // Callers fail fast, yet a blip or a quick restart costs a fifth of a second.
            open_for: Duration::from_millis(200),
            // DEFAULT_MAX_OPEN_FOR (see there).
            max_open_for: None,
            // The wait after the server's return is at most a tenth of the outage; a
            // minute down costs about 45 connects.
            outage_fraction: 0.1,
            // Enough spread to de-synchronise pools, small enough to keep
            // periods predictable.
            jitter: 0.1,
        }
    }
}

impl BreakerConfig {
    /// Creates the default configuration (same as [`BreakerConfig::default`]).
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new();
    /// assert_eq!(c, livepool::BreakerConfig::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many consecutive failures open the breaker. Must be at least 1.
    ///
    /// Any success while closed resets the count. Failures of attempts that were already
    /// under way when a failure was counted do not count again (see "What counts" in the
    /// [`BreakerConfig`] docs).
    ///
    /// Default: 3.
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new().failure_threshold(5);
    /// ```
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Sets the shortest open period (before jitter): the first one, and every one while
    /// the outage is young. Must not be zero.
    ///
    /// Default: 200 milliseconds.
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new().open_for(std::time::Duration::from_secs(1));
    /// ```
    pub fn open_for(mut self, d: Duration) -> Self {
        self.open_for = d;
        self
    }

    /// Sets the longest open period (before jitter), however long the outage. Must not be
    /// less than [`open_for`](Self::open_for).
    ///
    /// Default: 30 seconds, or [`open_for`](Self::open_for) if that is longer.
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new().max_open_for(std::time::Duration::from_secs(60));
    /// ```
    pub fn max_open_for(mut self, d: Duration) -> Self {
        self.max_open_for = Some(d);
        self
    }

    /// The longest open period in effect.
    fn cap(&self) -> Duration {
        self.max_open_for
            .unwrap_or(DEFAULT_MAX_OPEN_FOR.max(self.open_for))
    }

    /// Sets how the open period grows with the outage: each period lasts at least this
    /// fraction of the time since the breaker opened from closed. It bounds the wait
    /// between the server's return and the first connect let through to about this
    /// fraction of the outage. Must be within `0.0..=1.0`; 0.0 keeps every period at
    /// [`open_for`](Self::open_for).
    ///
    /// Default: 0.1.
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new().outage_fraction(0.25);
    /// ```
    pub fn outage_fraction(mut self, fraction: f64) -> Self {
        self.outage_fraction = fraction;
        self
    }

    /// Sets the random spread of each open period, as a fraction of it: a period
    /// `p` becomes a value in `[p * (1 - fraction), p * (1 + fraction)]`. Must be
    /// within `0.0..=1.0`; 0.0 disables jitter.
    ///
    /// Default: 0.1 (± 10 %).
    ///
    /// ```
    /// let c = livepool::BreakerConfig::new().jitter(0.0);
    /// ```
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Checks the values; returns `Err((field, why))` for the first invalid field.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.failure_threshold == 0 {
            return Err(("failure_threshold", "must be at least 1"));
        }
        if self.open_for.is_zero() {
            return Err(("open_for", "must be greater than zero"));
        }
        if self.max_open_for.is_some_and(|m| m < self.open_for) {
            return Err(("max_open_for", "must not be less than open_for"));
        }
        // `contains` is false for NaN.
        if !(0.0..=1.0).contains(&self.outage_fraction) {
            return Err(("outage_fraction", "must be within 0.0..=1.0"));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(("jitter", "must be within 0.0..=1.0"));
        }
        Ok(())
    }

    /// The un-jittered length of an open period that starts `outage` after the breaker
    /// opened from closed.
    fn base_period(&self, outage: Duration) -> Duration {
        let cap = self.cap();
        let grown = outage.as_secs_f64() * self.outage_fraction;
        let grown = if grown.is_finite() && grown < cap.as_secs_f64() {
            Duration::try_from_secs_f64(grown).unwrap_or(cap)
        } else {
            cap
        };
        grown.max(self.open_for).min(cap)
    }
}

/// The state of an endpoint's circuit breaker.
///
/// # Examples
///
/// ```
/// use livepool::BreakerState;
///
/// assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
/// assert_eq!(BreakerState::Open.to_string(), "open");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Connects are allowed; consecutive failures are being counted.
    Closed,
    /// Connects are refused until the open period has passed.
    Open,
    /// The open period has passed; a single probe connect decides whether the
    /// breaker closes or opens again.
    HalfOpen,
}

impl BreakerState {
    /// A stable lower-case name for logs and metrics: `"closed"`, `"open"` or
    /// `"half_open"`.
    ///
    /// ```
    /// assert_eq!(livepool::BreakerState::HalfOpen.as_str(), "half_open");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of an endpoint's circuit-breaker state.
///
/// The possible transitions are closed → open, open → half-open,
/// half-open → closed and half-open → open.
///
/// # Examples
///
/// ```
/// use livepool::{BreakerState, Transition};
///
/// fn describe(t: &Transition) -> String {
///     match t.open_for {
///         Some(d) if t.to == BreakerState::Open => {
///             format!("{} -> {} for {:?}", t.from, t.to, d)
///         }
///         _ => format!("{} -> {}", t.from, t.to),
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The state before the transition.
    pub from: BreakerState,
    /// The state after the transition.
    pub to: BreakerState,
    /// When `to` is [`BreakerState::Open`]: how long it stays open (jitter
    /// included). `None` otherwise.
    pub open_for: Option<Duration>,
}

/// The result of a connect attempt or heartbeat, as reported to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

/// The breaker's answer to "may a connect attempt start now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go ahead.
    Yes,
    /// Half-open: this caller is the one probe; it must report an outcome via
    /// [`Breaker::on_event`] or, if abandoned, call [`Breaker::probe_abandoned`].
    Probe,
    /// Open (or half-open with the probe in flight): refuse, retry after this
    /// long.
    No { retry_after: Duration },
}

/// A ticket taken when a connect or heartbeat starts, handed back with its outcome: it
/// tells the breaker whether anything was counted (or the state changed) since the
/// attempt began. See "Evidence, not a burst" in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Evidence(u64);

impl Evidence {
    /// The ticket where there is no breaker (nothing reads it).
    pub(crate) const NONE: Evidence = Evidence(0);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { since: Instant, period: Duration },
    HalfOpen { probe_in_flight: bool },
}

/// Circuit breaker for one endpoint. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    inner: Inner,
    /// When the breaker last opened from closed: the start of the outage that the open
    /// periods follow.
    outage_since: Option<Instant>,
    /// Bumped on every counted failure and every transition; a ticket that no longer
    /// matches is stale.
    epoch: u64,
    rng: SplitMix64,
}

impl Breaker {
    /// Creates a closed breaker. `seed` seeds the jitter; with a jitter of 0 the
    /// breaker is fully deterministic whatever the seed.
    ///
    /// `config` is expected to have passed [`BreakerConfig::validate`].
    pub(crate) fn new(config: BreakerConfig, seed: u64) -> Self {
        debug_assert_eq!(config.validate(), Ok(()));
        Self {
            config,
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
            outage_since: None,
            epoch: 0,
            rng: SplitMix64(seed),
        }
    }

    /// The current state. An open breaker whose period has passed still reports
    /// `Open` until the next [`admit`](Self::admit) moves it to half-open.
    pub(crate) fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The ticket for an attempt starting now (after its [`admit`](Self::admit), if it
    /// needed one).
    pub(crate) fn evidence(&self) -> Evidence {
        Evidence(self.epoch)
    }

    /// Asks whether a connect attempt may start at `now`.
    ///
    /// Moves open → half-open when the open period has passed, returning that
    /// transition; the caller is then the probe. At most one [`Admit::Probe`] is
    /// outstanding at a time; others get [`Admit::No`] with a short
    /// `retry_after` (1 s, or the base open period if shorter).
    pub(crate) fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match self.inner {
            Inner::Closed { .. } => (Admit::Yes, None),
            Inner::Open { since, period } => {
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= period {
                    self.inner = Inner::HalfOpen {
                        probe_in_flight: true,
                    };
                    self.epoch += 1;
                    let transition = Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        open_for: None,
                    };
                    (Admit::Probe, Some(transition))
                } else {
                    let retry_after = period - elapsed;
                    (Admit::No { retry_after }, None)
                }
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => (
                Admit::No {
                    retry_after: self.probe_in_flight_retry(),
                },
                None,
            ),
            Inner::HalfOpen {
                probe_in_flight: false,
            } => {
                self.inner = Inner::HalfOpen {
                    probe_in_flight: true,
                };
                (Admit::Probe, None)
            }
        }
    }

    /// Reports the outcome of a connect or heartbeat at `now`, with the ticket the
    /// attempt took when it started; returns the transition it caused, if any. See the
    /// module docs for how outcomes are attributed in each state.
    pub(crate) fn on_event(
        &mut self,
        outcome: Outcome,
        now: Instant,
        seen: Evidence,
    ) -> Option<Transition> {
        let current = seen.0 == self.epoch;
        match (self.inner, outcome) {
            (Inner::Closed { .. }, Outcome::Success) => {
                self.inner = Inner::Closed {
                    consecutive_failures: 0,
                };
                None
            }
            // Already counted: an attempt under way when a failure was counted saw the
            // same event.
            (Inner::Closed { .. }, Outcome::Failure) if !current => None,
            (
                Inner::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                self.epoch += 1;
                let consecutive_failures = consecutive_failures.saturating_add(1);
                if consecutive_failures >= self.config.failure_threshold {
                    self.outage_since = Some(now);
                    Some(self.open(BreakerState::Closed, now))
                } else {
                    self.inner = Inner::Closed {
                        consecutive_failures,
                    };
                    None
                }
            }
            // Only the probe decides; see the module docs.
            (Inner::Open { .. }, _)
            | (
                Inner::HalfOpen {
                    probe_in_flight: false,
                },
                _,
            ) => None,
            // Started before this half-open state: not the probe's verdict.
            (Inner::HalfOpen { .. }, _) if !current => None,
            (
                Inner::HalfOpen {
                    probe_in_flight: true,
                },
                Outcome::Success,
            ) => {
                self.inner = Inner::Closed {
                    consecutive_failures: 0,
                };
                self.epoch += 1;
                self.outage_since = None;
                Some(Transition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Closed,
                    open_for: None,
                })
            }
            (
                Inner::HalfOpen {
                    probe_in_flight: true,
                },
                Outcome::Failure,
            ) => Some(self.open(BreakerState::HalfOpen, now)),
        }
    }

    /// Reports that the admitted probe was abandoned without an outcome (e.g.
    /// its future was dropped), so the next [`admit`](Self::admit) may hand out
    /// a new probe. A no-op unless half-open with a probe in flight.
    ///
    /// Call it only for a probe that has not reported an outcome.
    pub(crate) fn probe_abandoned(&mut self) {
        if let Inner::HalfOpen {
            probe_in_flight: true,
        } = self.inner
        {
            self.inner = Inner::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Ends the current open period at `now`, so that the next [`admit`](Self::admit)
    /// hands out the probe at once. A no-op unless open. (A balancer's ejection of the
    /// endpoint ended: the endpoint is to be tried now, not after the rest of a period.)
    pub(crate) fn end_open_period(&mut self, now: Instant) {
        if let Inner::Open { since, period } = self.inner {
            let elapsed = now.saturating_duration_since(since);
            self.inner = Inner::Open {
                since,
                period: period.min(elapsed),
            };
        }
    }

    /// How long a caller should wait before [`admit`](Self::admit) may succeed.
    ///
    /// `Some` while open (the remaining open period, zero once it has passed
    /// but no admit has moved the breaker to half-open yet) and while half-open
    /// with the probe in flight; `None` when an admit now would be granted.
    pub(crate) fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self.inner {
            Inner::Closed { .. }
            | Inner::HalfOpen {
                probe_in_flight: false,
            } => None,
            Inner::Open { since, period } => {
                Some(period.saturating_sub(now.saturating_duration_since(since)))
            }
            Inner::HalfOpen {
                probe_in_flight: true,
            } => Some(self.probe_in_flight_retry()),
        }
    }

    fn probe_in_flight_retry(&self) -> Duration {
        PROBE_IN_FLIGHT_RETRY.min(self.config.open_for)
    }

    /// Enters the open state at `now` with the next (outage-grown, jittered) period.
    fn open(&mut self, from: BreakerState, now: Instant) -> Transition {
        self.epoch += 1;
        let outage = self
            .outage_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let period = self.jittered(self.config.base_period(outage));
        self.inner = Inner::Open { since: now, period };
        Transition {
            from,
            to: BreakerState::Open,
            open_for: Some(period),
        }
    }

    /// Applies `± jitter` to `base`, never going below zero.
    fn jittered(&mut self, base: Duration) -> Duration {
        let jitter = self.config.jitter;
        if jitter <= 0.0 || base.is_zero() {
            return base;
        }
        // Uniform in [-1, 1).
        let unit = self.rng.next_unit() * 2.0 - 1.0;
        let factor = (1.0 + jitter * unit).max(0.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);

    fn t0() -> Instant {
        Instant::now()
    }

    /// Fixed 30 s periods, no jitter: the state logic alone.
    fn no_jitter() -> BreakerConfig {
        BreakerConfig::new()
            .jitter(0.0)
            .open_for(30 * SEC)
            .max_open_for(300 * SEC)
            .outage_fraction(0.0)
    }

    fn fail_n(b: &mut Breaker, n: u32, now: Instant) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            last = b.on_event(Outcome::Failure, now, b.evidence());
        }
        last
    }

    fn to_open(from: BreakerState, d: Duration) -> Option<Transition> {
        Some(Transition {
            from,
            to: BreakerState::Open,
            open_for: Some(d),
        })
    }

    const OPEN_TO_HALF: Transition = Transition {
        from: BreakerState::Open,
        to: BreakerState::HalfOpen,
        open_for: None,
    };
    const HALF_TO_CLOSED: Transition = Transition {
        from: BreakerState::HalfOpen,
        to: BreakerState::Closed,
        open_for: None,
    };

    // ---- config ----

    #[test]
    fn defaults() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_threshold, 3);
        assert_eq!(c.open_for, Duration::from_millis(200));
        assert_eq!(c.cap(), 30 * SEC);
        assert_eq!(c.outage_fraction, 0.1);
        // A longer first period raises the default cap with it...
        assert_eq!(c.clone().open_for(60 * SEC).cap(), 60 * SEC);
        assert_eq!(c.clone().open_for(60 * SEC).validate(), Ok(()));
        assert_eq!(c.jitter, 0.1);
        assert_eq!(BreakerConfig::new(), c);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn setters() {
        let c = BreakerConfig::new()
            .failure_threshold(7)
            .open_for(2 * SEC)
            .max_open_for(9 * SEC)
            .outage_fraction(0.5)
            .jitter(0.25);
        assert_eq!(c.failure_threshold, 7);
        assert_eq!(c.open_for, 2 * SEC);
        assert_eq!(c.cap(), 9 * SEC);
        assert_eq!(c.outage_fraction, 0.5);
        assert_eq!(c.jitter, 0.25);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_each_bad_field() {
        let field = |c: BreakerConfig| c.validate().unwrap_err().0;
        let d = BreakerConfig::new;
        assert_eq!(field(d().failure_threshold(0)), "failure_threshold");
        assert_eq!(
            field(d().open_for(Duration::ZERO).max_open_for(Duration::ZERO)),
            "open_for"
        );
        assert_eq!(field(d().open_for(Duration::ZERO)), "open_for");
        assert_eq!(
            field(d().max_open_for(Duration::from_millis(199))),
            "max_open_for"
        );
        assert_eq!(field(d().outage_fraction(1.01)), "outage_fraction");
        assert_eq!(field(d().outage_fraction(-0.1)), "outage_fraction");
        assert_eq!(field(d().outage_fraction(f64::NAN)), "outage_fraction");
        assert_eq!(field(d().outage_fraction(f64::INFINITY)), "outage_fraction");
        assert_eq!(field(d().jitter(-0.01)), "jitter");
        assert_eq!(field(d().jitter(1.01)), "jitter");
        assert_eq!(field(d().jitter(f64::NAN)), "jitter");
        assert_eq!(field(d().jitter(f64::INFINITY)), "jitter");
        // First invalid field wins.
        assert_eq!(
            field(d().failure_threshold(0).jitter(5.0)),
            "failure_threshold"
        );
        // Reasons are non-empty.
        assert!(!d().jitter(2.0).validate().unwrap_err().1.is_empty());
    }

    #[test]
    fn validate_accepts_edges() {
        let d = BreakerConfig::new;
        assert_eq!(d().failure_threshold(1).validate(), Ok(()));
        assert_eq!(
            d().max_open_for(Duration::from_millis(200)).validate(),
            Ok(())
        );
        assert_eq!(d().outage_fraction(0.0).validate(), Ok(()));
        assert_eq!(d().outage_fraction(1.0).validate(), Ok(()));
        assert_eq!(d().jitter(0.0).validate(), Ok(()));
        assert_eq!(d().jitter(1.0).validate(), Ok(()));
        assert_eq!(d().open_for(Duration::from_nanos(1)).validate(), Ok(()));
    }

    #[test]
    fn base_period_follows_the_outage_and_caps() {
        let c = BreakerConfig::new();
        let ms = |d: Duration| d.as_millis();
        // A young outage: the shortest period.
        assert_eq!(ms(c.base_period(Duration::ZERO)), 200);
        assert_eq!(ms(c.base_period(SEC)), 200);
        // Then a tenth of the outage so far...
        assert_eq!(ms(c.base_period(3 * SEC)), 300);
        assert_eq!(ms(c.base_period(10 * SEC)), 1_000);
        // ...up to the cap.
        assert_eq!(ms(c.base_period(600 * SEC)), 30_000);
        assert_eq!(c.base_period(Duration::MAX), 30 * SEC);
        let flat = BreakerConfig::new().outage_fraction(0.0);
        assert_eq!(ms(flat.base_period(3_600 * SEC)), 200);
        let huge = BreakerConfig::new()
            .outage_fraction(1.0)
            .max_open_for(Duration::MAX);
        assert_eq!(huge.base_period(Duration::MAX), Duration::MAX);
    }

    // ---- state names ----

    #[test]
    fn state_names() {
        assert_eq!(BreakerState::Closed.as_str(), "closed");
        assert_eq!(BreakerState::Open.as_str(), "open");
        assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    }

    // ---- transitions ----

    #[test]
    fn starts_closed_and_admits() {
        let now = t0();
        let mut b = Breaker::new(BreakerConfig::new(), 1);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(now), (Admit::Yes, None));
        assert_eq!(b.retry_after(now), None);
    }

    #[test]
    fn closed_opens_after_threshold_consecutive_failures() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        assert_eq!(fail_n(&mut b, 2, now), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            b.on_event(Outcome::Failure, now, b.evidence()),
            to_open(BreakerState::Closed, 30 * SEC)
        );
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn success_while_closed_resets_count() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 2, now);
        assert_eq!(b.on_event(Outcome::Success, now, b.evidence()), None);
        assert_eq!(fail_n(&mut b, 2, now), None);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_event(Outcome::Failure, now, b.evidence()).is_some());
    }

    #[test]
    fn threshold_one_opens_on_first_failure() {
        let now = t0();
        let mut b = Breaker::new(no_jitter().failure_threshold(1), 1);
        assert_eq!(
            b.on_event(Outcome::Failure, now, b.evidence()),
            to_open(BreakerState::Closed, 30 * SEC)
        );
    }

    #[test]
    fn open_refuses_with_remaining_time() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        assert_eq!(
            b.admit(now),
            (
                Admit::No {
                    retry_after: 30 * SEC
                },
                None
            )
        );
        assert_eq!(
            b.admit(now + 10 * SEC),
            (
                Admit::No {
                    retry_after: 20 * SEC
                },
                None
            )
        );
        assert_eq!(b.retry_after(now + 10 * SEC), Some(20 * SEC));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_ignores_outcomes() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        // A healthy old connection's heartbeat does not close it...
        assert_eq!(b.on_event(Outcome::Success, now + SEC, b.evidence()), None);
        // ...and late failures do not extend or shorten it.
        assert_eq!(
            b.on_event(Outcome::Failure, now + 20 * SEC, b.evidence()),
            None
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.retry_after(now + 20 * SEC), Some(10 * SEC));
        assert_eq!(b.admit(now + 30 * SEC), (Admit::Probe, Some(OPEN_TO_HALF)));
    }

    #[test]
    fn open_becomes_half_open_lazily_on_admit() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        let later = now + 30 * SEC;
        // Period passed but nobody asked yet.
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.retry_after(later), Some(Duration::ZERO));
        assert_eq!(b.admit(later), (Admit::Probe, Some(OPEN_TO_HALF)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_one_probe() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        let later = now + 31 * SEC;
        assert_eq!(b.admit(later).0, Admit::Probe);
        for i in 0..5 {
            assert_eq!(
                b.admit(later + i * SEC),
                (Admit::No { retry_after: SEC }, None)
            );
        }
        assert_eq!(b.retry_after(later), Some(SEC));
    }

    #[test]
    fn probe_retry_is_capped_by_open_for() {
        let now = t0();
        let short = Duration::from_millis(200);
        let mut b = Breaker::new(no_jitter().open_for(short), 1);
        fail_n(&mut b, 3, now);
        assert_eq!(b.admit(now + short).0, Admit::Probe);
        assert_eq!(b.admit(now + short).0, Admit::No { retry_after: short });
    }

    #[test]
    fn probe_success_closes_and_resets_growth() {
        let now = t0();
        let mut b = Breaker::new(no_jitter().outage_fraction(1.0), 1);
        fail_n(&mut b, 3, now);
        let mut t = now + 30 * SEC;
        b.admit(t);
        // Probe fails 30 s into the outage: re-open for max(30 s, 30 s).
        assert_eq!(
            b.on_event(Outcome::Failure, t, b.evidence()),
            to_open(BreakerState::HalfOpen, 30 * SEC)
        );
        t += 30 * SEC;
        b.admit(t);
        // 60 s into the outage: 60 s.
        assert_eq!(
            b.on_event(Outcome::Failure, t, b.evidence()),
            to_open(BreakerState::HalfOpen, 60 * SEC)
        );
        t += 60 * SEC;
        assert_eq!(b.admit(t), (Admit::Probe, Some(OPEN_TO_HALF)));
        assert_eq!(
            b.on_event(Outcome::Success, t, b.evidence()),
            Some(HALF_TO_CLOSED)
        );
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t), (Admit::Yes, None));
        assert_eq!(b.retry_after(t), None);
        // Failure count starts from zero, the outage (and so the period) from the base
        // again.
        assert_eq!(fail_n(&mut b, 2, t), None);
        assert_eq!(
            b.on_event(Outcome::Failure, t, b.evidence()),
            to_open(BreakerState::Closed, 30 * SEC)
        );
    }

    #[test]
    fn probe_failures_grow_period_with_the_outage_up_to_cap() {
        let now = t0();
        let mut b = Breaker::new(no_jitter().outage_fraction(1.0), 1);
        let mut t = now;
        let mut periods = vec![fail_n(&mut b, 3, t).unwrap().open_for.unwrap()];
        for _ in 0..6 {
            t += *periods.last().unwrap();
            assert_eq!(b.admit(t), (Admit::Probe, Some(OPEN_TO_HALF)));
            let tr = b.on_event(Outcome::Failure, t, b.evidence()).unwrap();
            assert_eq!(
                (tr.from, tr.to),
                (BreakerState::HalfOpen, BreakerState::Open)
            );
            periods.push(tr.open_for.unwrap());
        }
        let secs: Vec<u64> = periods.iter().map(Duration::as_secs).collect();
        // Each period is the outage so far (fraction 1.0), at least 30 s, at most 300 s.
        assert_eq!(secs, [30, 30, 60, 120, 240, 300, 300]);
    }

    #[test]
    fn abandoned_probe_lets_another_through() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        let t = now + 30 * SEC;
        assert_eq!(b.admit(t).0, Admit::Probe);
        assert!(matches!(b.admit(t).0, Admit::No { .. }));
        b.probe_abandoned();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.retry_after(t), None);
        // No second open -> half-open transition is reported.
        assert_eq!(b.admit(t), (Admit::Probe, None));
        assert!(matches!(b.admit(t).0, Admit::No { .. }));
        assert_eq!(
            b.on_event(Outcome::Success, t, b.evidence()),
            Some(HALF_TO_CLOSED)
        );
    }

    #[test]
    fn probe_abandoned_is_noop_elsewhere() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        b.probe_abandoned();
        assert_eq!(b.state(), BreakerState::Closed);
        fail_n(&mut b, 3, now);
        b.probe_abandoned();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.retry_after(now), Some(30 * SEC));
        // Half-open without a probe stays without one.
        b.admit(now + 30 * SEC);
        b.probe_abandoned();
        b.probe_abandoned();
        assert_eq!(b.admit(now + 30 * SEC), (Admit::Probe, None));
        assert!(matches!(b.admit(now + 30 * SEC).0, Admit::No { .. }));
    }

    #[test]
    fn half_open_without_probe_ignores_outcomes() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        let t = now + 30 * SEC;
        b.admit(t);
        b.probe_abandoned();
        assert_eq!(b.on_event(Outcome::Success, t, b.evidence()), None);
        assert_eq!(b.on_event(Outcome::Failure, t, b.evidence()), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    // ---- evidence ----

    #[test]
    fn a_burst_of_failures_seen_together_counts_once() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        // Eight callers start connecting at the same moment; the server is down.
        let tickets: Vec<Evidence> = (0..8).map(|_| b.evidence()).collect();
        for ev in tickets {
            assert_eq!(b.on_event(Outcome::Failure, now, ev), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // Two more failures, each of an attempt started after the last one counted, open it.
        assert_eq!(fail_n(&mut b, 1, now), None);
        assert_eq!(
            fail_n(&mut b, 1, now),
            to_open(BreakerState::Closed, 30 * SEC)
        );
    }

    #[test]
    fn a_stale_outcome_does_not_decide_the_probe() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        // A heartbeat starts while closed and hangs.
        let heartbeat = b.evidence();
        fail_n(&mut b, 3, now);
        let t = now + 30 * SEC;
        assert_eq!(b.admit(t), (Admit::Probe, Some(OPEN_TO_HALF)));
        let probe = b.evidence();
        // The old heartbeat's verdict arrives first: ignored either way.
        assert_eq!(b.on_event(Outcome::Success, t, heartbeat), None);
        assert_eq!(b.on_event(Outcome::Failure, t, heartbeat), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // The probe decides.
        assert_eq!(b.on_event(Outcome::Success, t, probe), Some(HALF_TO_CLOSED));
        // And a failure begun before the close does not count in the new closed state.
        assert_eq!(b.on_event(Outcome::Failure, t, probe), None);
        assert_eq!(fail_n(&mut b, 2, t), None);
    }

    #[test]
    fn end_open_period_lets_the_next_admit_probe() {
        let now = t0();
        let mut b = Breaker::new(no_jitter(), 1);
        // Closed: nothing to end.
        b.end_open_period(now);
        assert_eq!(b.admit(now), (Admit::Yes, None));
        fail_n(&mut b, 3, now);
        let t = now + 2 * SEC;
        assert_eq!(b.retry_after(t), Some(28 * SEC));
        b.end_open_period(t);
        assert_eq!(b.retry_after(t), Some(Duration::ZERO));
        assert_eq!(b.admit(t), (Admit::Probe, Some(OPEN_TO_HALF)));
        // Half-open: a no-op (the probe is out).
        b.end_open_period(t);
        assert!(matches!(b.admit(t).0, Admit::No { .. }));
    }

    /// Simulates callers asking every millisecond through an outage of `outage` (connects
    /// fail at once while the server is down, succeed after): returns the time from the
    /// server's return to the first admitted connect, and the connects let through while
    /// it was down.
    fn recover(config: BreakerConfig, seed: u64, outage: Duration) -> (Duration, u32) {
        let start = t0();
        let back = start + outage;
        let mut b = Breaker::new(config, seed);
        let mut now = start;
        let mut connects = 0;
        loop {
            let admitted = !matches!(b.admit(now).0, Admit::No { .. });
            if admitted {
                let ev = b.evidence();
                if now >= back {
                    b.on_event(Outcome::Success, now, ev);
                    return (now - back, connects);
                }
                connects += 1;
                b.on_event(Outcome::Failure, now, ev);
            }
            now += Duration::from_millis(1);
        }
    }

    #[test]
    fn recovery_follows_the_server_with_the_defaults() {
        let ms = Duration::from_millis;
        for seed in 0..50 {
            // After a 1 s outage: within the shortest period (+ jitter).
            let (wait, _) = recover(BreakerConfig::new(), seed, SEC);
            assert!(wait <= ms(221), "1 s outage: {wait:?}");
            // After 3 s (and up to a second of restart): ≤ 0.5 s.
            for outage in [3 * SEC, 4 * SEC] {
                let (wait, _) = recover(BreakerConfig::new(), seed, outage);
                assert!(wait <= ms(441), "{outage:?} outage: {wait:?}");
            }
            // After 10 s: about a tenth of it.
            let (wait, _) = recover(BreakerConfig::new(), seed, 10 * SEC);
            assert!(wait <= ms(1_101), "10 s outage: {wait:?}");
            // During a 60 s outage, callers asking 1,000 times a second: a few dozen
            // connects, not 60,000.
            let (_, connects) = recover(BreakerConfig::new(), seed, 60 * SEC);
            assert!((30..=60).contains(&connects), "60 s outage: {connects}");
            // After 10 minutes: the cap bounds it.
            let (wait, connects) = recover(BreakerConfig::new(), seed, 600 * SEC);
            assert!(wait <= ms(33_001), "10 min outage: {wait:?}");
            assert!(connects <= 90, "10 min outage: {connects}");
        }
    }

    #[test]
    fn time_going_backwards_is_tolerated() {
        let now = t0() + 100 * SEC;
        let mut b = Breaker::new(no_jitter(), 1);
        fail_n(&mut b, 3, now);
        let earlier = now - 50 * SEC;
        assert_eq!(b.retry_after(earlier), Some(30 * SEC));
        assert_eq!(
            b.admit(earlier).0,
            Admit::No {
                retry_after: 30 * SEC
            }
        );
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies_with_seed() {
        let now = t0();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut b = Breaker::new(BreakerConfig::new(), seed);
            let d = fail_n(&mut b, 3, now).unwrap().open_for.unwrap();
            let ms = Duration::from_millis;
            assert!(d >= ms(180) && d <= ms(220), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 100);
    }

    #[test]
    fn full_jitter_never_negative() {
        let now = t0();
        for seed in 0..200 {
            let mut b = Breaker::new(BreakerConfig::new().jitter(1.0), seed);
            let d = fail_n(&mut b, 3, now).unwrap().open_for.unwrap();
            assert!(d <= Duration::from_millis(400), "{d:?}");
        }
    }

    #[test]
    fn same_seed_same_jitter() {
        let now = t0();
        let run = |seed| {
            let mut b = Breaker::new(BreakerConfig::new(), seed);
            fail_n(&mut b, 3, now).unwrap().open_for.unwrap()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn splitmix_unit_range() {
        let mut r = SplitMix64(0);
        for _ in 0..10_000 {
            let u = r.next_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    // ---- properties ----

    #[derive(Clone, Copy, Debug)]
    enum Op {
        /// Advance time by this many ms, then admit.
        Admit(u64),
        /// Advance time, then report an outcome (a heartbeat or the probe's), with a ticket
        /// taken now (true) or at the last admit (false: an attempt long under way).
        Event(bool, u64, bool),
        /// Abandon the probe, if the simulated caller holds one.
        Abandon,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..120_000).prop_map(Op::Admit),
            4 => (any::<bool>(), 0u64..120_000, any::<bool>())
                .prop_map(|(ok, dt, fresh)| Op::Event(ok, dt, fresh)),
            1 => Just(Op::Abandon),
        ]
    }

    prop_compose! {
        fn config()(
            threshold in 1u32..5,
            open_ms in 1u64..60_000,
            cap_mult in 1u64..20,
            fraction in prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0],
            jitter in prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0],
        ) -> BreakerConfig {
            BreakerConfig::new()
                .failure_threshold(threshold)
                .open_for(Duration::from_millis(open_ms))
                .max_open_for(Duration::from_millis(open_ms * cap_mult))
                .outage_fraction(fraction)
                .jitter(jitter)
        }
    }

    /// Everything observable from one step, for determinism comparisons.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Admit(Admit, Option<Transition>),
        Event(Option<Transition>),
        Abandon,
    }

    /// Runs `ops`, checking the per-step invariants, and returns what was seen.
    fn run_checked(config: &BreakerConfig, seed: u64, ops: &[Op]) -> Vec<Seen> {
        let start = Instant::now();
        let mut now = start;
        let mut b = Breaker::new(config.clone(), seed);
        let mut seen = Vec::new();
        // Simulated caller: holds the probe until it reports or abandons it.
        let mut caller_holds_probe = false;
        // Breaker-side view: a probe was handed out and not yet resolved.
        let mut probe_outstanding = false;
        let mut probes_this_half_open = 0u32;
        let mut abandons_this_half_open = 0u32;
        // When the breaker last left closed, and the ticket of the last admitted attempt.
        let mut outage_since = None;
        let mut ticket = b.evidence();

        for &op in ops {
            let before = b.state();
            let transition = match op {
                Op::Admit(dt) => {
                    now += Duration::from_millis(dt);
                    let expected_retry = b.retry_after(now);
                    let (admit, tr) = b.admit(now);
                    // Never wedged: half-open with no probe out hands one out.
                    if before == BreakerState::HalfOpen && !probe_outstanding {
                        assert_eq!(admit, Admit::Probe);
                    }
                    match admit {
                        Admit::Yes => {
                            assert_eq!(before, BreakerState::Closed);
                        }
                        Admit::Probe => {
                            assert_eq!(b.state(), BreakerState::HalfOpen);
                            // (1) at most one outstanding probe...
                            assert!(!probe_outstanding, "second outstanding probe");
                            if tr.is_some() {
                                probes_this_half_open = 0;
                                abandons_this_half_open = 0;
                            }
                            probes_this_half_open += 1;
                            // ...and one per open period, unless abandoned.
                            assert!(probes_this_half_open <= 1 + abandons_this_half_open);
                            probe_outstanding = true;
                            caller_holds_probe = true;
                        }
                        Admit::No { retry_after } => {
                            assert_ne!(before, BreakerState::Closed);
                            assert!(retry_after > Duration::ZERO);
                            assert_eq!(Some(retry_after), expected_retry);
                        }
                    }
                    if !matches!(admit, Admit::No { .. }) {
                        ticket = b.evidence();
                    }
                    seen.push(Seen::Admit(admit, tr));
                    tr
                }
                Op::Event(ok, dt, fresh) => {
                    now += Duration::from_millis(dt);
                    let outcome = if ok {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    };
                    let ev = if fresh { b.evidence() } else { ticket };
                    let current = ev == b.evidence();
                    let tr = b.on_event(outcome, now, ev);
                    // A stale ticket changes nothing.
                    if !current {
                        assert_eq!(tr, None);
                    }
                    if before == BreakerState::HalfOpen && probe_outstanding && current {
                        probe_outstanding = false;
                        caller_holds_probe = false;
                    }
                    seen.push(Seen::Event(tr));
                    tr
                }
                Op::Abandon => {
                    if caller_holds_probe {
                        b.probe_abandoned();
                        caller_holds_probe = false;
                        if probe_outstanding {
                            probe_outstanding = false;
                            abandons_this_half_open += 1;
                        }
                    }
                    seen.push(Seen::Abandon);
                    None
                }
            };

            // Every state change is reported exactly once, by the call that made it.
            let after = b.state();
            match transition {
                Some(tr) => {
                    assert_eq!((tr.from, tr.to), (before, after));
                    // (3) only the allowed edges.
                    let allowed = matches!(
                        (tr.from, tr.to),
                        (BreakerState::Closed, BreakerState::Open)
                            | (BreakerState::Open, BreakerState::HalfOpen)
                            | (BreakerState::HalfOpen, BreakerState::Closed)
                            | (BreakerState::HalfOpen, BreakerState::Open)
                    );
                    assert!(allowed, "illegal transition {tr:?}");
                    assert_eq!(tr.open_for.is_some(), tr.to == BreakerState::Open);
                    match (tr.from, tr.to) {
                        (BreakerState::Closed, BreakerState::Open) => outage_since = Some(now),
                        (BreakerState::HalfOpen, BreakerState::Closed) => outage_since = None,
                        _ => {}
                    }
                    // (2) open period bounds.
                    if let Some(d) = tr.open_for {
                        let j = config.jitter;
                        let base = config.open_for.as_secs_f64();
                        let cap = config.cap().as_secs_f64();
                        let outage = now
                            .saturating_duration_since(outage_since.expect("open from closed"))
                            .as_secs_f64();
                        let grown = (outage * config.outage_fraction).max(base).min(cap);
                        let got = d.as_secs_f64();
                        let eps = 1e-6;
                        assert!(
                            got >= grown * (1.0 - j) - eps,
                            "{got} < {grown} * (1 - {j})"
                        );
                        assert!(
                            got <= grown * (1.0 + j) + eps,
                            "{got} > {grown} * (1 + {j})"
                        );
                        assert!(got >= base * (1.0 - j) - eps);
                        assert!(got <= cap * (1.0 + j) + eps);
                    }
                }
                None => assert_eq!(before, after, "unreported transition"),
            }
            if after != BreakerState::HalfOpen {
                probe_outstanding = false;
            }
        }
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_invariants(
            config in config(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            run_checked(&config, seed, &ops);
        }

        #[test]
        fn prop_zero_jitter_is_deterministic(
            config in config(),
            seeds in (any::<u64>(), any::<u64>()),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let config = config.jitter(0.0);
            let a = run_checked(&config, seeds.0, &ops);
            let b = run_checked(&config, seeds.1, &ops);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn prop_same_seed_is_deterministic(
            config in config(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 0..100),
        ) {
            let a = run_checked(&config, seed, &ops);
            let b = run_checked(&config, seed, &ops);
            prop_assert_eq!(a, b);
        }
    }
}
