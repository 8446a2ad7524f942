//! The server's idle limit, found from the closes it causes: a pure detector with time passed
//! in, and the warning that tells the operator which setting to change.
//!
//! A server (Redis `timeout`, Postgres' or a proxy's idle limit, a load balancer) that closes
//! connections idle for longer than its limit makes a pool whose members stay idle longer
//! than that churn: the idle watch evicts the member on the FIN (`peer_closed`), the refill
//! opens a new one, and the server closes that one too after the same time. Each eviction
//! alone is routine (servers close idle connections for many reasons) and is logged at
//! DEBUG; the pattern is what the operator needs to hear about.
//!
//! **What is fed.** Only evictions by the idle watch of an *idle* member with reason
//! `peer_closed`, `reset` or `terminated` (a session the server ended with its reason, such as
//! Postgres' `idle_session_timeout`, `57P05`) ([`counts`]), each as a [`Sample`]: how long the member had been
//! quiet (since its last traffic: its return to the pool, its creation, or an answered
//! heartbeat), how long since its last return (or creation), and when the close was seen.
//! A close less than [`MIN_AGE`] after the last traffic is not fed: that is a server closing
//! after each exchange, not an idle limit. Nothing else reaches the detector (no checkout, no
//! return, no heartbeat), so its cost is one short lock per idle close.
//!
//! **The rule.** The detector keeps the last [`WINDOW`] samples (a fixed ring). After each
//! one it looks at the longest run of consecutive samples, ending with the newest, whose
//! idle ages agree: the longest is at most 5/3 of the shortest (±25 % around their middle)
//! or within 200 ms of it (±100 ms), or, when the shortest is at least [`WHOLE_FROM`],
//! within [`WHOLE_SECONDS`] of it. That last allowance is for servers that count idle time
//! in whole seconds, as Redis does: `timeout 1` closes a connection once the clock's second
//! has turned twice since the last command, 1 to 2 s after it (plus its 100 ms check), so
//! ages of 1.1 and 2.0 s are the same limit. The run is a finding when it holds at least
//! [`MIN_AGREE`] closes and they were seen over a span of at least half the shortest age and
//! at least [`MIN_SPREAD`]: one burst of closes (a server restart dropping members that
//! happened to be returned together) is not a limit; the pattern must repeat. The figure is
//! the shortest age in the run: the server closed none of them sooner.
//!
//! **Two clocks.** Ages are measured twice: since the last traffic (what the idle timers of
//! Redis, proxies and load balancers count, heartbeats included) and since the last return
//! (they differ only for members that answered a heartbeat in between). The longer run wins.
//! Of two as long, the first clock's wins when it holds a close without a heartbeat in
//! between (that close measures the limit on both clocks, and the heartbeats' closes agree
//! with it on the first), else the tighter one. A run on the second clock alone means
//! heartbeats were answered and the server closed the connections anyway, counting from
//! their last real use: it does not take heartbeats for activity. Whole seconds can mimic
//! that: Redis ignores a heartbeat in the same second as the last command and counts one in
//! the next second as one second more, so with heartbeats sent late in the server's second
//! a member that answered one is closed 1.1 s after it and one that did not 2.0 s after its
//! return; only the allowance above reads those as one limit on the first clock.
//!
//! **The warning.** The first finding is logged once at WARN with the endpoint, the figure
//! and the settings in effect, naming the setting to change ([`message`]). A later finding
//! is logged again only when its figure no longer agrees with the one last warned about (by
//! the same tolerance) and at least [`REWARN_AFTER`] has passed since: an operator who
//! changed the server's limit hears of the new one, a figure that wanders within the
//! tolerance (Redis counts idle time in whole seconds) or flaps between two servers behind a
//! proxy does not flood the log. The latest figure is always in
//! [`Statistics::server_idle_limit`](crate::Statistics::server_idle_limit); it stays there
//! once the closes stop.

use std::fmt;
use std::time::Duration;

use crate::stats::EvictReason;

/// Idle closes remembered.
pub(crate) const WINDOW: usize = 8;
/// Consecutive agreeing closes needed for a finding.
pub(crate) const MIN_AGREE: usize = 3;
/// A close this soon after the last traffic is not an idle limit.
pub(crate) const MIN_AGE: Duration = Duration::from_millis(20);
/// Ages this close agree whatever their size (±100 ms around their middle).
const SLACK: Duration = Duration::from_millis(200);
/// Ages this close agree from [`WHOLE_FROM`] on: a server that counts whole seconds closes
/// up to a second late (the rounding) plus its check interval (Redis: 100 ms), and the pool
/// reads a heartbeat's answer, which it takes for the last traffic, a little after the
/// server read the heartbeat.
pub(crate) const WHOLE_SECONDS: Duration = Duration::from_millis(1_250);
/// The shortest age [`WHOLE_SECONDS`] applies to: a limit of whole seconds is at least 1 s,
/// less the time between the server reading a heartbeat and the pool reading its answer.
pub(crate) const WHOLE_FROM: Duration = Duration::from_millis(750);
/// The agreeing closes must be seen over at least this span (and half their figure).
pub(crate) const MIN_SPREAD: Duration = Duration::from_secs(1);
/// A changed figure is warned about again at most this often.
pub(crate) const REWARN_AFTER: Duration = Duration::from_secs(600);

/// Whether an idle eviction for `reason` is the peer closing the connection (or ending the
/// session with its reason).
pub(crate) fn counts(reason: EvictReason) -> bool {
    matches!(
        reason,
        EvictReason::PeerClosed | EvictReason::Reset | EvictReason::Terminated
    )
}

/// One idle close, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Idle since the last traffic: the return (or creation), or an answered heartbeat.
    quiet: u64,
    /// Idle since the last return (or creation).
    held: u64,
    /// When the close was seen, from any fixed origin (the pool's nanoseconds).
    at: u64,
}

impl Sample {
    /// `quiet`: since the last traffic; `held`: since the last return (at least `quiet`);
    /// `at`: when the close was seen, from a fixed origin.
    pub(crate) fn new(quiet: Duration, held: Duration, at: Duration) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Sample {
            quiet: ns(quiet),
            held: ns(held).max(ns(quiet)),
            at: ns(at),
        }
    }
}

/// What the ages of a finding were measured from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Since {
    /// The last traffic (return, creation or answered heartbeat).
    Traffic,
    /// The last return, heartbeats answered in between not counted.
    Return,
}

/// A detected idle limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    /// The figure: the shortest idle age in the run.
    pub(crate) limit: Duration,
    /// The longest idle age in the run.
    pub(crate) longest: Duration,
    /// Closes in the run.
    pub(crate) closes: usize,
    pub(crate) since: Since,
}

/// The detector of one pool.
#[derive(Debug, Default)]
pub(crate) struct IdleLimit {
    /// The last `WINDOW` samples, oldest first once full (`next` is the oldest).
    ring: [Sample; WINDOW],
    len: usize,
    next: usize,
    limit: Option<Duration>,
    /// The figure last warned about, and when.
    warned: Option<(Duration, u64)>,
}

impl IdleLimit {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The latest figure, `None` until one was found.
    pub(crate) fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// Takes one idle close; returns the finding when it is to be warned about.
    pub(crate) fn observe(&mut self, s: Sample) -> Option<Finding> {
        if s.quiet < MIN_AGE.as_nanos() as u64 {
            return None;
        }
        self.ring[self.next] = s;
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
        let traffic = self.run(|s| s.quiet);
        let ret = self.run(|s| s.held);
        let f = match (traffic, ret) {
            (Some(t), Some(r)) if return_wins(&r, &t) => Finding {
                since: Since::Return,
                ..r.finding
            },
            (Some(t), _) => t.finding,
            (None, Some(r)) => Finding {
                since: Since::Return,
                ..r.finding
            },
            (None, None) => return None,
        };
        self.limit = Some(f.limit);
        let due = self.warned.is_none_or(|(figure, at)| {
            !agree(figure, f.limit) && s.at.saturating_sub(at) >= REWARN_AFTER.as_nanos() as u64
        });
        if !due {
            return None;
        }
        self.warned = Some((f.limit, s.at));
        Some(f)
    }

    /// The longest run of agreeing samples ending with the newest, by `age`, if it is a
    /// finding (measured from the last traffic; the caller relabels it).
    fn run(&self, age: impl Fn(&Sample) -> u64) -> Option<Run> {
        let (mut lo, mut hi) = (u64::MAX, 0);
        let (mut first, mut last) = (u64::MAX, 0);
        let mut n = 0;
        let mut plain = false;
        for k in 1..=self.len {
            let s = &self.ring[(self.next + WINDOW - k) % WINDOW];
            let a = age(s);
            let (l, h) = (lo.min(a), hi.max(a));
            if h > upper(l) {
                break;
            }
            (lo, hi, n) = (l, h, n + 1);
            (first, last) = (first.min(s.at), last.max(s.at));
            plain |= s.held == s.quiet;
        }
        let spread = (lo / 2).max(MIN_SPREAD.as_nanos() as u64);
        (n >= MIN_AGREE && last - first >= spread).then(|| Run {
            finding: Finding {
                limit: Duration::from_nanos(lo),
                longest: Duration::from_nanos(hi),
                closes: n,
                since: Since::Traffic,
            },
            plain,
        })
    }
}

/// A run that is a finding on one clock.
struct Run {
    finding: Finding,
    /// Whether it holds a close with no heartbeat answered in between (same age on both
    /// clocks).
    plain: bool,
}

/// The largest age that agrees with `lo` as the shortest: 5/3 of it, 200 ms more, or from
/// 750 ms on 1.25 s more (whole seconds).
fn upper(lo: u64) -> u64 {
    let u = (lo.saturating_mul(5) / 3).max(lo.saturating_add(SLACK.as_nanos() as u64));
    if lo >= WHOLE_FROM.as_nanos() as u64 {
        u.max(lo.saturating_add(WHOLE_SECONDS.as_nanos() as u64))
    } else {
        u
    }
}

/// Whether two figures agree by the detector's tolerance.
fn agree(a: Duration, b: Duration) -> bool {
    let (lo, hi) = (a.min(b).as_nanos() as u64, a.max(b).as_nanos() as u64);
    hi <= upper(lo)
}

/// Whether the run `r` on the second clock (since the return) explains the closes better
/// than `t` on the first (since the last traffic): longer, or as long and tighter unless `t`
/// holds a close without a heartbeat in between. Such a close measures the limit on both
/// clocks at once; when the heartbeats' closes agree with it on the first clock they are no
/// evidence that the server ignored the heartbeats, however much tighter the second clock
/// is (whole seconds make it so: Redis closes a member whose heartbeat came in the same
/// second as its return exactly when it closes one without a heartbeat).
fn return_wins(r: &Run, t: &Run) -> bool {
    let ratio = |f: &Finding| f.longest.as_secs_f64() / f.limit.as_secs_f64();
    let (r, plain, t) = (&r.finding, t.plain, &t.finding);
    r.closes > t.closes || (r.closes == t.closes && !plain && ratio(r) < ratio(t))
}

/// The settings the advice depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// `None` when the protocol sends no heartbeat.
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) reap_interval: Duration,
    pub(crate) idle_timeout: Option<Duration>,
}

/// A duration as an operator reads it: "300 ms", "1.0 s", "350 s".
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{} ms", d.as_millis())
        } else if d < Duration::from_secs(100) {
            write!(f, "{:.1} s", d.as_secs_f64())
        } else {
            write!(f, "{} s", d.as_secs())
        }
    }
}

/// The warning's text: what was seen, and which setting to change.
pub(crate) fn message(f: &Finding, s: &Settings) -> String {
    let limit = Human(f.limit);
    // "1.0 s to 1.6 s", or one figure when they read the same.
    let range = match (limit.to_string(), Human(f.longest).to_string()) {
        (lo, hi) if lo == hi => lo,
        (lo, hi) => format!("{lo} to {hi}"),
    };
    let idle_timeout = match s.idle_timeout {
        Some(t) => format!("now {}", Human(t)),
        None => "now none".to_string(),
    };
    let observed = match f.since {
        Since::Traffic => format!(
            "the server closed {} idle connections in a row after {range} without traffic: it \
             closes idle connections after about {limit} (a server-side idle timeout such as \
             Redis `timeout` or Postgres' `idle_session_timeout`, or a proxy's idle limit), and the pool replaces them only to have \
             them closed again",
            f.closes
        ),
        Since::Return => format!(
            "the server closed {} idle connections in a row {range} after their last use \
             although heartbeats were answered in between: it closes connections idle for about \
             {limit} and does not count heartbeats as activity, and the pool replaces them only \
             to have them closed again",
            f.closes
        ),
    };
    let advice = match (f.since, s.heartbeat_interval) {
        (Since::Return, _) => format!(
            "heartbeats cannot keep them open: set idle_timeout ({idle_timeout}) below it so \
             that the pool closes idle members above min_idle first, or raise the server's limit"
        ),
        (Since::Traffic, None) => format!(
            "this protocol sends no heartbeat: use one with a heartbeat_interval below it, set \
             idle_timeout ({idle_timeout}) below it so that the pool closes idle members above \
             min_idle first, or raise the server's limit"
        ),
        (Since::Traffic, Some(h)) => {
            let late = h + s.reap_interval;
            let seen = if h >= f.limit {
                format!("heartbeat_interval ({}) is not below it", Human(h))
            } else if late >= f.limit {
                format!(
                    "heartbeat_interval ({}) is below it, but a heartbeat is due only on the \
                     reaper's next tick (reap_interval {}) and came too late",
                    Human(h),
                    Human(s.reap_interval)
                )
            } else {
                format!(
                    "heartbeat_interval plus reap_interval ({} + {}) is below it, yet members \
                     went that long without an answered heartbeat (is the reaper's runtime \
                     starved?)",
                    Human(h),
                    Human(s.reap_interval)
                )
            };
            format!(
                "{seen}: keep heartbeat_interval plus reap_interval below it so that heartbeats \
                 keep idle connections open, set idle_timeout ({idle_timeout}) below it so that \
                 the pool closes idle members above min_idle first, or raise the server's limit"
            )
        }
    };
    format!("{observed}; {advice}")
}

/// Logs a finding at WARN: the endpoint, the figure, the settings in effect and the advice.
pub(crate) fn warn(endpoint: &str, f: &Finding, s: &Settings) {
    tracing::warn!(
        endpoint,
        server_idle_limit_ms = f.limit.as_millis() as u64,
        longest_idle_ms = f.longest.as_millis() as u64,
        closes = f.closes,
        measured_from = match f.since {
            Since::Traffic => "last_traffic",
            Since::Return => "last_return",
        },
        heartbeat_interval = ?s.heartbeat_interval,
        reap_interval = ?s.reap_interval,
        idle_timeout = ?s.idle_timeout,
        "{}",
        message(f, s)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds closes `(quiet ms, held ms, seen at ms)`; the findings to warn about, by index.
    fn feed(d: &mut IdleLimit, closes: &[(u64, u64, u64)]) -> Vec<(usize, Finding)> {
        closes
            .iter()
            .enumerate()
            .filter_map(|(i, &(q, h, at))| {
                d.observe(Sample::new(ms(q), ms(h), ms(at))).map(|f| (i, f))
            })
            .collect()
    }

    /// Closes after `ages` ms of quiet (no heartbeat in between), one every `every` ms.
    fn steady(ages: &[u64], every: u64) -> Vec<(u64, u64, u64)> {
        ages.iter()
            .enumerate()
            .map(|(i, &a)| (a, a, 10_000 + i as u64 * every))
            .collect()
    }

    #[test]
    fn only_closes_resets_and_terminations_count() {
        assert!(counts(EvictReason::PeerClosed));
        assert!(counts(EvictReason::Reset));
        assert!(counts(EvictReason::Terminated));
        for r in EvictReason::ALL {
            if !matches!(
                r,
                EvictReason::PeerClosed | EvictReason::Reset | EvictReason::Terminated
            ) {
                assert!(!counts(r), "{r}");
            }
        }
    }

    /// Redis `timeout 1` counts in whole seconds: closes after 1.0 to 2.1 s. Three in a row
    /// are a finding, the figure is the shortest, and it is warned about once.
    #[test]
    fn three_agreeing_closes_are_a_limit_warned_once() {
        let mut d = IdleLimit::new();
        let found = feed(&mut d, &steady(&[1_400, 1_050, 1_700], 700));
        assert_eq!(found.len(), 1, "{found:?}");
        let (i, f) = found[0];
        assert_eq!(i, 2, "not before the third close");
        assert_eq!(f.limit, ms(1_050));
        assert_eq!(f.longest, ms(1_700));
        assert_eq!((f.closes, f.since), (3, Since::Traffic));
        assert_eq!(d.limit(), Some(ms(1_050)));

        // More of the same: the figure follows the run, no second warning.
        let more: Vec<_> = steady(&[1_300, 1_010, 1_600, 1_200, 1_500], 700)
            .into_iter()
            .map(|(q, h, at)| (q, h, at + 3_000))
            .collect();
        assert!(feed(&mut d, &more).is_empty());
        assert_eq!(d.limit(), Some(ms(1_010)));
    }

    #[test]
    fn two_closes_are_not_a_limit() {
        let mut d = IdleLimit::new();
        assert!(feed(&mut d, &steady(&[1_000, 1_000], 2_000)).is_empty());
        assert_eq!(d.limit(), None);
    }

    /// ±100 ms for short limits: a proxy closing after 300 ms.
    #[test]
    fn short_limits_agree_within_100_ms_either_way() {
        let mut d = IdleLimit::new();
        let found = feed(&mut d, &steady(&[300, 480, 310, 305], 400));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].0, 3,
            "the first three were seen within less than a second"
        );
        assert_eq!(found[0].1.limit, ms(300));
        // 520 ms is more than 200 ms above 300 and more than 5/3 of it.
        let mut d = IdleLimit::new();
        assert!(feed(&mut d, &steady(&[300, 520, 310], 400)).is_empty());
    }

    /// An outlier (a member killed by hand, a restart) breaks the run: three agreeing closes
    /// after it are needed again.
    #[test]
    fn an_outlier_breaks_the_run() {
        let mut d = IdleLimit::new();
        let found = feed(
            &mut d,
            &steady(&[5_000, 5_100, 40_000, 5_050, 5_200], 6_000),
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(d.limit(), None);
        // The third agreeing close after the outlier, then one more.
        let found = feed(&mut d, &[(5_020, 5_020, 50_000), (5_100, 5_100, 56_000)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 0);
        assert_eq!(found[0].1.limit, ms(5_020));
        assert_eq!(found[0].1.closes, 3);
    }

    /// Random idle ages (closes for unrelated reasons) are no limit.
    #[test]
    fn scattered_ages_are_not_a_limit() {
        let mut d = IdleLimit::new();
        let ages = [
            800, 12_000, 2_500, 61_000, 4_000, 30_000, 1_500, 9_000, 90_000, 300,
        ];
        assert!(feed(&mut d, &steady(&ages, 100_000)).is_empty());
        assert_eq!(d.limit(), None);
    }

    /// A burst (a server restart) closing members that were returned together: their ages
    /// agree, but one moment is no pattern.
    #[test]
    fn one_burst_is_not_a_limit() {
        let mut d = IdleLimit::new();
        let burst: Vec<_> = (0..8)
            .map(|i| (30_000 + i, 30_000 + i, 100_000 + i))
            .collect();
        assert!(feed(&mut d, &burst).is_empty());
        assert_eq!(d.limit(), None);
        // The same ages again a round later do make one.
        let found = feed(&mut d, &[(30_100, 30_100, 130_200)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.closes, WINDOW);
    }

    /// A server closing after each exchange is not an idle limit.
    #[test]
    fn closes_right_after_use_are_ignored() {
        let mut d = IdleLimit::new();
        assert!(feed(&mut d, &steady(&[1, 2, 1, 3, 1, 2], 1_000)).is_empty());
        assert_eq!(d.limit(), None);
    }

    /// Closes counted from the last answered heartbeat (Redis counts PING as activity): the
    /// ages since the return vary with when the heartbeat came, those since the last traffic
    /// agree.
    #[test]
    fn heartbeats_in_between_are_traffic() {
        let mut d = IdleLimit::new();
        let closes = [
            (1_200, 1_200, 10_000),
            (1_100, 3_900, 11_000), // a heartbeat answered 2.8 s after the return
            (1_500, 1_500, 12_000),
            (1_050, 2_050, 13_000),
        ];
        let found = feed(&mut d, &closes);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 2);
        assert_eq!(found[0].1.since, Since::Traffic);
        assert_eq!(d.limit(), Some(ms(1_050)));
    }

    /// A server that does not take heartbeats for activity closes members a fixed time after
    /// their last return, however recently a heartbeat was answered.
    #[test]
    fn heartbeats_that_do_not_count_show_on_the_second_clock() {
        let mut d = IdleLimit::new();
        let closes = [
            (900, 2_000, 10_000),
            (150, 2_100, 12_000),
            (1_700, 2_050, 14_000),
            (600, 2_000, 16_000),
        ];
        let found = feed(&mut d, &closes);
        assert_eq!(found.len(), 1, "{found:?}");
        let (i, f) = found[0];
        assert_eq!(i, 2);
        assert_eq!(f.since, Since::Return);
        assert_eq!(f.limit, ms(2_000));
        assert_eq!(f.closes, 3);
        assert_eq!(d.limit(), Some(ms(2_000)));
    }

    /// Redis `timeout 1` with the reaper's ticks late in the server's second, as recorded
    /// from a real `redis-server` (the integration test's case): a member without a
    /// heartbeat is closed 2.0 s after its return; one that answered a heartbeat 1.9 s after
    /// it lives a second more, closed 1.1 s after the heartbeat. Redis counted the heartbeat
    /// (in whole seconds): the limit is on the first clock, and the second clock, where the
    /// ages agree by 5/3 while 1.1 and 2.0 s do not, must not win with "does not count
    /// heartbeats".
    #[test]
    fn whole_seconds_after_a_heartbeat_are_still_traffic() {
        let mut d = IdleLimit::new();
        let closes = [
            (1_964, 1_964, 3_105),
            (1_106, 2_966, 4_108),
            (2_009, 2_009, 5_115),
            (1_144, 3_037, 7_145),
            (1_153, 3_039, 8_154),
            (1_158, 3_014, 10_160),
        ];
        let found = feed(&mut d, &closes);
        assert_eq!(found.len(), 1, "{found:?}");
        let (i, f) = found[0];
        assert_eq!(i, 2);
        assert_eq!(f.since, Since::Traffic, "{f:?}");
        assert_eq!((f.limit, f.longest, f.closes), (ms(1_106), ms(2_009), 3));
        assert_eq!(d.limit(), Some(ms(1_106)));
    }

    /// A heartbeat in the same whole second as the return is not counted by Redis: that
    /// member is closed when one without a heartbeat is, 2.0 s after its return and 1.1 s
    /// after the heartbeat. The second clock is tighter (all 2.0 s), but the closes without
    /// a heartbeat agree with it on the first clock too: no evidence that heartbeats are
    /// ignored.
    #[test]
    fn a_tie_with_closes_without_heartbeat_goes_to_the_first_clock() {
        let mut d = IdleLimit::new();
        let found = feed(
            &mut d,
            &[
                (2_000, 2_000, 10_000),
                (1_100, 2_000, 11_000),
                (2_000, 2_000, 12_000),
            ],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.since, Since::Traffic);
        assert_eq!(found[0].1.limit, ms(1_100));

        // Every close after a heartbeat (one every half second, ignored by a server that
        // closes 2 s after the return): the short quiet spells agree by ±100 ms, but the
        // second clock is as long and tighter, and nothing anchors the first.
        let mut d = IdleLimit::new();
        let found = feed(
            &mut d,
            &[
                (300, 2_000, 10_000),
                (450, 2_050, 11_000),
                (400, 2_020, 12_000),
            ],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.since, Since::Return);
        assert_eq!(found[0].1.limit, ms(2_000));
    }

    /// From 750 ms on, ages a whole second (and 250 ms) apart agree; below, only by 5/3 or
    /// 200 ms.
    #[test]
    fn whole_seconds_agree_from_750_ms() {
        assert!(agree(ms(1_000), ms(2_250)));
        assert!(!agree(ms(1_000), ms(2_260)));
        assert!(agree(ms(750), ms(2_000)));
        assert!(!agree(ms(740), ms(1_240)));
        assert!(agree(ms(740), ms(1_230)));
        assert!(agree(ms(3_000), ms(5_000)), "5/3 beyond 1.875 s");
        assert!(!agree(ms(3_000), ms(5_010)));
    }

    /// A figure that moves within the tolerance is not warned about again; one that moves out
    /// of it is, but not sooner than `REWARN_AFTER` after the last warning.
    #[test]
    fn a_changed_limit_is_warned_again_at_most_every_ten_minutes() {
        let mut d = IdleLimit::new();
        assert_eq!(
            feed(&mut d, &steady(&[1_000, 1_100, 1_050], 1_000)).len(),
            1
        );
        // The server's limit raised to 10 s a minute later: a new figure, no new warning yet.
        let ten: Vec<_> = (0..4)
            .map(|i| (10_000, 10_000, 70_000 + i * 6_000))
            .collect();
        assert!(feed(&mut d, &ten).is_empty());
        assert_eq!(d.limit(), Some(ms(10_000)));
        // Ten minutes after the first warning, the next close brings it.
        let late = 12_000 + REWARN_AFTER.as_millis() as u64;
        let found = feed(&mut d, &[(10_000, 10_000, late)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1.limit, ms(10_000));
        // And the same figure later on is not warned about again.
        let later = late + 2 * REWARN_AFTER.as_millis() as u64;
        assert!(feed(&mut d, &[(10_500, 10_500, later)]).is_empty());
    }

    #[test]
    fn the_ring_is_fixed_and_keeps_the_newest() {
        let mut d = IdleLimit::new();
        let ages: Vec<u64> = (0..100).map(|i| 1_000 + (i % 3) * 100).collect();
        let found = feed(&mut d, &steady(&ages, 500));
        assert_eq!(found.len(), 1, "warned once: {found:?}");
        assert_eq!(d.len, WINDOW);
        assert_eq!(d.limit(), Some(ms(1_000)));
        assert_eq!(std::mem::size_of::<[Sample; WINDOW]>(), 192);
    }

    fn settings(heartbeat: Option<u64>, reap: u64) -> Settings {
        Settings {
            heartbeat_interval: heartbeat.map(ms),
            reap_interval: ms(reap),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }

    fn finding(limit: u64, since: Since) -> Finding {
        Finding {
            limit: ms(limit),
            longest: ms(limit * 3 / 2),
            closes: 3,
            since,
        }
    }

    #[test]
    fn the_message_names_the_setting_to_change() {
        let f = finding(1_000, Since::Traffic);
        let m = message(&f, &settings(Some(5_000), 1_000));
        assert!(
            m.contains("3 idle connections in a row after 1.0 s to 1.5 s"),
            "{m}"
        );
        assert!(m.contains("after about 1.0 s"), "{m}");
        assert!(m.contains("Redis `timeout`"), "{m}");
        assert!(
            m.contains("heartbeat_interval (5.0 s) is not below it"),
            "{m}"
        );
        assert!(m.contains("idle_timeout (now 300 s)"), "{m}");
        assert!(m.contains("raise the server's limit"), "{m}");

        // Below the figure, but late by up to a tick.
        let m = message(&f, &settings(Some(800), 1_000));
        assert!(m.contains("(800 ms) is below it, but"), "{m}");
        assert!(m.contains("reap_interval 1.0 s"), "{m}");

        // Below it even with a tick of delay: say what was seen.
        let m = message(&f, &settings(Some(300), 250));
        assert!(m.contains("(300 ms + 250 ms) is below it, yet"), "{m}");

        let m = message(&f, &settings(None, 1_000));
        assert!(m.contains("sends no heartbeat"), "{m}");
        let tight = Finding {
            longest: ms(1_020),
            ..f
        };
        let m = message(&tight, &settings(None, 1_000));
        assert!(m.contains("in a row after 1.0 s without traffic"), "{m}");

        let m = message(&finding(2_000, Since::Return), &settings(Some(500), 250));
        assert!(m.contains("does not count heartbeats as activity"), "{m}");
        assert!(m.contains("set idle_timeout (now 300 s) below it"), "{m}");
        assert!(!m.contains("heartbeat_interval"), "{m}");
    }
}
