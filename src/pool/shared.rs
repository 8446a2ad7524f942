//! [`PoolShared`]: the state every part of one pool shares — configuration, counters, the
//! breaker glue, the member count and registry, and the reaper's wake-up.
//!
//! It is a leaf: it imports configuration, statistics and the breaker, never the parts that
//! use it (members, manager, reaper, the pool handle), and it is not generic over the
//! protocol. Members reach it through an `Arc`; it reaches members only through the
//! object-safe [`MemberOps`] in its registry.
//!
//! Its locks (registry, husk list, breaker, last error, configuration hold) are leaves of the
//! pool's lock order (see "Locks" in the member module's docs): each is held alone, and
//! nothing is sent out (events, tracing, the observer) while one is held.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::breaker::{Admit, Breaker, BreakerState, Evidence, Outcome, Transition};
use crate::pool::config::Config;
use crate::pool::status::Status;
use crate::stats::{BreakerEvent, EvictionEvent, Stats};

/// How long a configuration error found at setup is remembered: `get()` answers with it
/// meanwhile instead of connecting (the server is up; a mistake does not fix itself).
const CONFIG_HOLD: Duration = Duration::from_secs(1);

/// What the pool needs of a member it does not otherwise hold (leak reports, forced drain).
pub(crate) trait MemberOps: Send + Sync {
    /// Reports (once per checkout) a member held longer than `threshold`. True when it did.
    fn check_leak(&self, now: Instant, threshold: Duration) -> bool;
    /// Shuts the socket down so that its holder's I/O fails.
    fn force_close(&self);
    fn id(&self) -> u64;
    /// The member itself, for the typed parts of the pool (a restarted reaper's idle watch).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// State shared by the pool handle, the manager, every member and the reaper.
pub(crate) struct PoolShared {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    /// The endpoint as text, for errors and events (cloned into every error: an `Arc`).
    pub(crate) endpoint: Arc<str>,
    epoch: Instant,
    members: AtomicUsize,
    /// Entries of deadpool's queue whose member was evicted in place (see the member docs).
    husks: AtomicUsize,
    next_id: AtomicU64,
    refill_now: AtomicBool,
    /// True from the reaper's spawn until its task is gone: finished, panicked, or dropped
    /// unfinished with its runtime (see [`ReaperRunning`]).
    reaper_running: AtomicBool,
    /// Wakes the reaper: the pool fell below `min_idle`.
    pub(crate) wake: Notify,
    /// Wakes `drain()` whenever a member goes.
    pub(crate) gone: Notify,
    min_idle: AtomicUsize,
    max_size: AtomicUsize,
    /// Husks a refill may revive (see the member docs): kept only while `min_idle` is set,
    /// at most `min_idle` of them.
    husk_list: Mutex<Vec<Weak<dyn std::any::Any + Send + Sync>>>,
    /// Every live member, for leak detection, forced drain and a restarted reaper (touched
    /// on create and eviction only).
    registry: Mutex<Registry>,
    breaker: Option<Mutex<Breaker>>,
    /// True while the breaker is closed (or there is none): selection reads it without the
    /// breaker's lock.
    breaker_closed: AtomicBool,
    pub(crate) breaker_transitions: AtomicU64,
    last_error: Mutex<Option<(io::ErrorKind, Option<i32>, String)>>,
    /// The last configuration error found at setup and when, while it is remembered.
    config_hold: Mutex<Option<(Instant, String)>>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Metrics,
}

impl PoolShared {
    pub(crate) fn new(config: Config) -> Self {
        let breaker = config
            .breaker
            .clone()
            .map(|b| Mutex::new(Breaker::new(b, config.seed)));
        let endpoint: Arc<str> = config.endpoint.to_string().into();
        PoolShared {
            stats: Stats::new(),
            epoch: Instant::now(),
            members: AtomicUsize::new(0),
            husks: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            refill_now: AtomicBool::new(false),
            reaper_running: AtomicBool::new(false),
            wake: Notify::new(),
            gone: Notify::new(),
            min_idle: AtomicUsize::new(config.min_idle),
            max_size: AtomicUsize::new(config.max_size),
            husk_list: Mutex::new(Vec::new()),
            registry: Mutex::new(Registry::default()),
            breaker,
            breaker_closed: AtomicBool::new(true),
            breaker_transitions: AtomicU64::new(0),
            last_error: Mutex::new(None),
            config_hold: Mutex::new(None),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Metrics::new(endpoint.to_string()),
            endpoint,
            config,
        }
    }

    pub(crate) fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    pub(crate) fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    pub(crate) fn members(&self) -> usize {
        self.members.load(Relaxed)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn min_idle(&self) -> usize {
        self.min_idle.load(Relaxed)
    }

    pub(crate) fn set_min_idle(&self, n: usize) {
        self.min_idle.store(n, Relaxed);
        self.wake.notify_one();
    }

    pub(crate) fn max_size(&self) -> usize {
        self.max_size.load(Relaxed)
    }

    pub(crate) fn set_max_size(&self, n: usize) {
        self.max_size.store(n, Relaxed);
    }

    /// Live members that are still alive, for scans outside deadpool's queue.
    pub(crate) fn live_members(&self) -> Vec<Arc<dyn MemberOps>> {
        self.registry
            .lock()
            .slots
            .iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Registers a new member; returns its place in the registry, for `member_gone`.
    pub(crate) fn member_created(&self, member: Weak<dyn MemberOps>) -> u32 {
        let place = self.registry.lock().insert(member);
        self.members.fetch_add(1, Relaxed);
        self.stats.created.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.created();
        place
    }

    /// A member's life ended (`place` from `member_created`, once per life).
    pub(crate) fn member_gone(&self, place: u32) {
        self.registry.lock().remove(place);
        let left = self.members.fetch_sub(1, Relaxed) - 1;
        if left < self.min_idle() {
            self.wake.notify_one();
        }
        self.gone.notify_waiters();
    }

    pub(crate) fn record_eviction(&self, ev: EvictionEvent) {
        #[cfg(feature = "metrics")]
        self.metrics.evicted(ev.reason, ev.latency());
        self.stats.record_eviction(ev);
    }

    /// Empty entries in deadpool's queue, which `status()` does not count.
    pub(crate) fn husks(&self) -> usize {
        self.husks.load(Relaxed)
    }

    /// The pool's [`Status`] from deadpool's (`s`), without the husks.
    pub(crate) fn status(&self, s: deadpool::Status) -> Status {
        Status::new(&s, self.husks(), self.breaker_state())
    }

    /// Keeps a husk for the refill (dropping entries that are gone when the list is full).
    pub(crate) fn offer_husk(&self, husk: Weak<dyn std::any::Any + Send + Sync>) {
        let mut list = self.husk_list.lock();
        let cap = self.min_idle();
        if list.len() >= cap {
            list.retain(|h| h.strong_count() > 0);
        }
        if list.len() < cap {
            list.push(husk);
        }
    }

    /// A husk to revive, if one is still in the queue.
    pub(crate) fn take_husk(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let mut list = self.husk_list.lock();
        while let Some(h) = list.pop() {
            if let Some(h) = h.upgrade() {
                return Some(h);
            }
        }
        None
    }

    /// Whether a husk may be waiting for the refill.
    pub(crate) fn has_husks(&self) -> bool {
        !self.husk_list.lock().is_empty()
    }

    pub(crate) fn husk_added(&self) {
        self.husks.fetch_add(1, Relaxed);
    }

    pub(crate) fn husk_gone(&self) {
        self.husks.fetch_sub(1, Relaxed);
    }

    /// Whether the reaper's task still exists (one atomic load: `get()` asks every time).
    pub(crate) fn reaper_running(&self) -> bool {
        self.reaper_running.load(Ordering::Acquire)
    }

    pub(crate) fn take_refill_now(&self) -> bool {
        self.refill_now.swap(false, Relaxed)
    }

    /// Asks the breaker whether a connect may start; with the attempt's ticket (see the
    /// breaker's "Evidence, not a burst").
    pub(crate) fn admit(&self, now: Instant) -> (Admit, Evidence) {
        let Some(b) = &self.breaker else {
            return (Admit::Yes, Evidence::NONE);
        };
        let (admit, tr, ev) = {
            let mut b = b.lock();
            let (admit, tr) = b.admit(now);
            self.publish_state(&tr);
            (admit, tr, b.evidence())
        };
        if let Some(tr) = tr {
            self.transitioned(tr);
        }
        (admit, ev)
    }

    /// The ticket of a heartbeat starting now.
    pub(crate) fn evidence(&self) -> Evidence {
        self.breaker
            .as_ref()
            .map_or(Evidence::NONE, |b| b.lock().evidence())
    }

    /// Lets the breaker's next admit probe at once (the balancer's ejection ended).
    pub(crate) fn end_open_period(&self) {
        if let Some(b) = &self.breaker {
            b.lock().end_open_period(Instant::now());
        }
    }

    pub(crate) fn probe_abandoned(&self) {
        if let Some(b) = &self.breaker {
            b.lock().probe_abandoned();
        }
    }

    /// Counts a connect or heartbeat that failed for want of a local resource. The breaker
    /// hears nothing of it (see the breaker module's docs); a connect that was the half-open
    /// probe hands the probe back itself.
    pub(crate) fn local_resource_error(&self, err: &io::Error) {
        self.stats.local_resource_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.local_resource_error();
        tracing::debug!(endpoint = %self.endpoint, error = %err, "local resource exhausted: not counted against the endpoint");
    }

    /// Counts and remembers a configuration error found at setup (see `Error::is_config`):
    /// with a breaker, connects are paced to one per `CONFIG_HOLD` while it lasts.
    pub(crate) fn config_error(&self, err: &io::Error) {
        self.stats.config_errors.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.metrics.config_error();
        tracing::warn!(endpoint = %self.endpoint, error = %err, "configuration error: not counted against the endpoint");
        if self.breaker.is_some() {
            *self.config_hold.lock() = Some((Instant::now(), err.to_string()));
        }
    }

    /// The remembered configuration error, if the last connect met one less than
    /// `CONFIG_HOLD` ago.
    pub(crate) fn config_held(&self, now: Instant) -> Option<crate::pool::error::Error> {
        let mut hold = self.config_hold.lock();
        let (at, text) = hold.as_ref()?;
        let left = CONFIG_HOLD.saturating_sub(now.saturating_duration_since(*at));
        if left.is_zero() {
            *hold = None;
            return None;
        }
        Some(crate::pool::error::Error::config(
            self.endpoint.clone(),
            Box::new(io::Error::other(text.clone())),
            Some(left),
        ))
    }

    /// Feeds a connect, setup or heartbeat outcome to the breaker, with the ticket the
    /// attempt took when it started.
    pub(crate) fn report(&self, outcome: Outcome, err: Option<&io::Error>, seen: Evidence) {
        if let Some(e) = err {
            *self.last_error.lock() = Some((e.kind(), e.raw_os_error(), e.to_string()));
        }
        let success = outcome == Outcome::Success;
        // A failure seen by an attempt that began before the last counted one is the same
        // event again: the balancer's ejection count does not hear it either.
        let (counted, tr) = match &self.breaker {
            None => (true, None),
            Some(b) => {
                let mut b = b.lock();
                let counted = success || b.evidence() == seen;
                let tr = b.on_event(outcome, Instant::now(), seen);
                self.publish_state(&tr);
                (counted, tr)
            }
        };
        if counted && let Some(o) = &self.config.observer {
            o.outcome(success, err);
        }
        if let Some(tr) = tr {
            self.transitioned(tr);
        }
    }

    /// Called under the breaker's lock with its latest transition, so that the flag follows
    /// the state in order.
    fn publish_state(&self, tr: &Option<Transition>) {
        if let Some(tr) = tr {
            self.breaker_closed
                .store(tr.to == BreakerState::Closed, Relaxed);
        }
    }

    fn transitioned(&self, tr: Transition) {
        self.breaker_transitions.fetch_add(1, Relaxed);
        if tr.to == BreakerState::Closed {
            // The endpoint is back: refill now, not after the refill backoff grown while down.
            self.refill_soon();
        }
        let last = self.last_error.lock().as_ref().map(|e| e.2.clone());
        if let (BreakerState::Open, Some(o)) = (tr.to, &self.config.observer) {
            o.breaker_opened(last.as_deref());
        }
        self.stats.record_transition(BreakerEvent {
            endpoint: self.endpoint.clone(),
            transition: tr,
            at: Instant::now(),
            last_error: last.clone(),
        });
        tracing::info!(
            endpoint = %self.endpoint,
            from = tr.from.as_str(),
            to = tr.to.as_str(),
            open_for = ?tr.open_for,
            last_error = ?last,
            "circuit breaker transition"
        );
    }

    /// A copy of the last connect, setup or heartbeat error.
    pub(crate) fn last_error(&self) -> Option<io::Error> {
        self.last_error
            .lock()
            .as_ref()
            .map(|(kind, os, msg)| match os {
                Some(code) => io::Error::from_raw_os_error(*code),
                None => io::Error::new(*kind, msg.clone()),
            })
    }

    /// How long until the breaker lets a connect through (`None`: now).
    pub(crate) fn breaker_retry_after(&self, now: Instant) -> Option<Duration> {
        if self.breaker_closed.load(Relaxed) {
            return None;
        }
        self.breaker
            .as_ref()
            .and_then(|b| b.lock().retry_after(now))
    }

    /// Asks the reaper for a refill now (not after its backoff).
    pub(crate) fn refill_soon(&self) {
        self.refill_now.store(true, Relaxed);
        self.wake.notify_one();
    }

    /// True while the breaker would refuse a connect now (open, or half-open with its probe
    /// out); false once an open period has passed, so that the next connect is the probe.
    pub(crate) fn breaker_refuses(&self) -> bool {
        // The flag first: no clock read while the breaker is closed.
        !self.breaker_closed.load(Relaxed)
            && self
                .breaker_retry_after(Instant::now())
                .is_some_and(|d| !d.is_zero())
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker
            .as_ref()
            .map_or(BreakerState::Closed, |b| b.lock().state())
    }
}

impl fmt::Debug for PoolShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolShared")
            .field("config", &self.config)
            .field("members", &self.members())
            .finish_non_exhaustive()
    }
}

/// Held by the reaper's task (moved into its future before the spawn): the pool's flag says
/// the reaper runs from its creation until it is dropped. A task that finishes, panics, or is
/// dropped unfinished because its runtime shut down drops it, and so does a spawn onto a
/// runtime that is already shutting down (the future is dropped unpolled).
pub(crate) struct ReaperRunning(Arc<PoolShared>);

impl ReaperRunning {
    /// Sets the flag; the caller spawns the task holding the result.
    pub(crate) fn new(shared: Arc<PoolShared>) -> Self {
        shared.reaper_running.store(true, Ordering::Release);
        ReaperRunning(shared)
    }
}

impl Drop for ReaperRunning {
    fn drop(&mut self) {
        self.0.reaper_running.store(false, Ordering::Release);
    }
}

impl fmt::Debug for ReaperRunning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReaperRunning")
    }
}

/// Live members by place: a slab (16 bytes a member) rather than a map by id.
#[derive(Default)]
struct Registry {
    slots: Vec<Option<Weak<dyn MemberOps>>>,
    free: Vec<u32>,
}

impl Registry {
    fn insert(&mut self, member: Weak<dyn MemberOps>) -> u32 {
        match self.free.pop() {
            Some(place) => {
                self.slots[place as usize] = Some(member);
                place
            }
            None => {
                self.slots.push(Some(member));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, place: u32) {
        if let Some(slot) = self.slots.get_mut(place as usize)
            && slot.take().is_some()
        {
            self.free.push(place);
        }
    }
}
