//! The background reaper: one task per pool, holding only a weak reference to it.
//!
//! One job per file:
//! - `watch.rs` — the **idle watch**: one small future per member (in a `FuturesUnordered`
//!   inside this task, not a tokio task each, to keep the memory per idle connection small)
//!   awaits the idle socket's readiness and condemns the member the moment the peer closes or
//!   resets it; bytes that arrive go to the protocol, which reads them through its own
//!   stack, bounded by `heartbeat_timeout`, and keeps or evicts the member (a member
//!   operation: `member/idle.rs`, which a checkout that finds bytes runs too).
//! - `wheel.rs` + `turn.rs` — the **schedule** (`reap_interval` ticks): every member sits
//!   on a timing wheel at the time it next needs a look (its heartbeat, its lifetime end, its
//!   idle timeout), and each tick visits only the members that fall due, deciding for each
//!   alone. No pass over deadpool's queue: the work per tick follows what is due, not the
//!   idle count.
//! - `beat.rs` — one **heartbeat** through the protocol, with its deadline.
//! - `refill.rs` — **refill** to `min_idle` through the breaker (and the protocol's setup).
//!
//! A member is the reaper's own (state `Busy`) while a heartbeat or an idle read runs; a
//! checkout that pops it meanwhile waits for the result, bounded by `heartbeat_timeout`.
//! Members that die while idle are evicted in place by whoever finds them (the watch, a
//! heartbeat, the schedule), without a wake-up of the reaper.
//!
//! **Heartbeat spread.** After a return, a member's first heartbeat falls at a point of the
//! interval drawn afresh for that checkout (uniform over `(0, heartbeat_interval]`); later
//! ones every `heartbeat_interval` (shortened by up to `heartbeat_jitter`). Members created or
//! returned together are pinged evenly over the next interval instead of in one burst, and an
//! idle member is still pinged at least once per interval.

mod beat;
mod refill;
mod turn;
mod watch;
mod wheel;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::WeakPool;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::member::Shared;
use crate::member::state::Kind;
use crate::pool::manager::Manager;
use crate::pool::shared::PoolShared;
use crate::protocol::Protocol;
use wheel::Wheel;

/// A heartbeat: the member back if it is alive.
type Beat<P> = Pin<Box<dyn Future<Output = Option<Arc<Shared<P>>>> + Send>>;
/// deadpool's `WeakPool` upgrades to the pool with its default wrapper: the reaper wraps
/// what it checks out in [`Conn`](crate::Conn) itself.
pub(crate) type Deadpool<P> = deadpool::managed::Pool<Manager<P>>;

/// Heartbeats started per round of the reaper's loop (see `start_beats`).
const BEAT_BATCH: usize = 32;
const REFILL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REFILL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The reaper of one pool.
pub(crate) struct Reaper<P: Protocol> {
    pool: WeakPool<Manager<P>>,
    shared: Arc<PoolShared>,
    protocol: Arc<P>,
    beats: FuturesUnordered<Beat<P>>,
    /// Members whose heartbeat is due, started `BEAT_BATCH` at a time.
    due: VecDeque<(Arc<Shared<P>>, u32)>,
    /// Each member with the life it was scheduled in (a revived entry is scheduled anew).
    wheel: Wheel<(Arc<Shared<P>>, u32)>,
    /// Whether members need the schedule at all (a heartbeat, a lifetime or an idle timeout).
    scheduled: bool,
    refill: Option<JoinHandle<bool>>,
    backoff: Duration,
    next_refill: Instant,
}

impl<P: Protocol> Reaper<P> {
    pub(crate) fn new(
        pool: WeakPool<Manager<P>>,
        shared: Arc<PoolShared>,
        protocol: Arc<P>,
    ) -> Self {
        let cfg = &shared.config;
        let scheduled =
            cfg.has_heartbeat || cfg.max_lifetime.is_some() || cfg.idle_timeout.is_some();
        let wheel = Wheel::new(Instant::now(), cfg.reap_interval);
        Reaper {
            pool,
            shared,
            protocol,
            beats: FuturesUnordered::new(),
            due: VecDeque::new(),
            wheel,
            scheduled,
            refill: None,
            backoff: REFILL_BACKOFF_MIN,
            next_refill: Instant::now(),
        }
    }

    /// Runs until the pool is dropped or closed, or `shutdown` fires.
    pub(crate) async fn run(
        mut self,
        mut new_members: mpsc::UnboundedReceiver<Arc<Shared<P>>>,
        mut shutdown: oneshot::Receiver<()>,
    ) {
        let span = tracing::debug_span!("livepool.reaper", endpoint = %self.shared.endpoint);
        async move {
            let shared = self.shared.clone();
            let mut tick = tokio::time::interval(shared.config.reap_interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tracing::debug!("reaper started");
            // Each watcher sits in this set unboxed, in its task node: one allocation per
            // idle member, not two (the memory per idle connection is a target).
            let mut watchers = FuturesUnordered::new();
            loop {
                let mut ticked = false;
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(member) = new_members.recv() => {
                        if shared.config.idle_watch {
                            watchers.push(watch::watch(member.clone()));
                        }
                        self.adopt(member);
                    }
                    Some(()) = watchers.next(), if !watchers.is_empty() => {}
                    Some(alive) = self.beats.next(), if !self.beats.is_empty() => {
                        if let Some(sh) = alive {
                            self.schedule(sh, Instant::now());
                        }
                    }
                    // Only when nothing above is ready: the idle watch goes first.
                    _ = std::future::ready(()), if !self.due.is_empty() => self.start_beats(),
                    _ = shared.wake.notified() => {}
                    _ = tick.tick() => ticked = true,
                }
                if !self.step(ticked) {
                    break;
                }
            }
            if let Some(h) = self.refill.take() {
                h.abort();
            }
            tracing::debug!("reaper stopped");
        }
        .instrument(span)
        .await
    }

    /// A new member (or, after a restart, a live one) goes on the schedule (its watcher is
    /// started by `run`). It is usually in use (just created), so its first turn comes at
    /// the next tick.
    fn adopt(&mut self, member: Arc<Shared<P>>) {
        if self.scheduled {
            let next = Instant::now() + self.shared.config.reap_interval;
            let life = member.life();
            self.wheel.insert(next, (member, life));
        }
    }

    /// Puts a member back on the schedule at its next turn.
    fn schedule(&mut self, sh: Arc<Shared<P>>, now: Instant) {
        if let Some(at) = turn::next_turn(&sh, now) {
            let life = sh.life();
            self.wheel.insert(at, (sh, life));
        }
    }

    /// One round after a wake-up; false when the pool is gone or closed.
    fn step(&mut self, ticked: bool) -> bool {
        let shared = self.shared.clone();
        if !(ticked || shared.members() < shared.min_idle()) {
            return true;
        }
        let Some(dp) = self.pool.upgrade() else {
            return false;
        };
        if ticked {
            self.turns(Instant::now());
            #[cfg(feature = "metrics")]
            shared.metrics.status(&shared.status(dp.status()));
            if let Some(threshold) = shared.config.leak_threshold {
                leaks(&shared, threshold);
            }
        }
        if dp.is_closed() {
            return false;
        }
        self.schedule_refill(&dp);
        // The strong reference is dropped here, before the next await.
        true
    }

    /// Every member whose turn has come: evict, ping, or schedule again.
    fn turns(&mut self, now: Instant) {
        let due = &mut self.due;
        self.wheel.advance(now, |wheel, (sh, life)| {
            if sh.life() != life {
                // Revived since: its new life has its own entry.
                return;
            }
            match turn::visit(&sh, now) {
                turn::Turn::Done => {}
                turn::Turn::Again(at) => wheel.insert(at, (sh, life)),
                turn::Turn::Beat => due.push_back((sh, life)),
            }
        });
    }

    /// Starts up to `BEAT_BATCH` of the due heartbeats. A tick may hold hundreds (1 % of
    /// 100,000 members a second at a 30 s interval); starting them all in one go (a write
    /// each) would hold up the idle watch for milliseconds, and a FIN would wait that long.
    fn start_beats(&mut self) {
        let now = Instant::now();
        for _ in 0..BEAT_BATCH {
            let Some((sh, life)) = self.due.pop_front() else {
                break;
            };
            let st = sh.state();
            if sh.life() != life {
                continue;
            }
            // Checked out meanwhile, or its return moved the heartbeat: schedule it again.
            if st.kind() != Kind::Idle || now < sh.beat_due() || !sh.begin_busy(st) {
                self.schedule(sh, now);
                continue;
            }
            self.beats
                .push(Box::pin(beat::beat(sh, self.protocol.clone())));
        }
    }

    /// Refill to `min_idle`: one refill task at a time, backing off on failure.
    fn schedule_refill(&mut self, dp: &Deadpool<P>) {
        let shared = &self.shared;
        if let Some(done) = self.refill.as_mut().and_then(|h| h.now_or_never()) {
            self.refill = None;
            let now = Instant::now();
            if done.unwrap_or(false) {
                self.backoff = REFILL_BACKOFF_MIN;
            } else if let Some(open) = shared.breaker_retry_after(now) {
                // The breaker is open: the next refill is its probe, when it lets one
                // through (a refill before that would only be refused).
                self.next_refill = now + open;
            } else {
                self.next_refill = now + self.backoff;
                self.backoff = (self.backoff * 2).min(REFILL_BACKOFF_MAX);
            }
        }
        if shared.take_refill_now() {
            self.backoff = REFILL_BACKOFF_MIN;
            self.next_refill = Instant::now();
        }
        if self.refill.is_none()
            && shared.members() < shared.min_idle()
            && Instant::now() >= self.next_refill
        {
            self.refill = Some(tokio::spawn(refill::fill(dp.clone(), shared.clone())));
        }
    }
}

/// Reports members held longer than `threshold` (only with leak detection on: a scan of the
/// live members, once per tick).
fn leaks(shared: &PoolShared, threshold: Duration) {
    let now = Instant::now();
    for member in shared.live_members() {
        if member.check_leak(now, threshold) {
            shared
                .stats
                .leaks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
