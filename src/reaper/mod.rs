//! The background reaper: one task per pool, holding only a weak reference to it.
//!
//! One job per file:
//! - `watch.rs` — the **idle watch**: one small future per member (in a `FuturesUnordered`
//!   inside this task, not a tokio task each, to keep the memory per idle connection small)
//!   awaits the idle socket's readiness and condemns the member the moment the peer closes or
//!   resets it; bytes that arrive go to the protocol (`idle.rs`).
//! - `idle.rs` — **idle bytes**: the protocol reads them through its own stack, bounded by
//!   `heartbeat_timeout`, and keeps or evicts the member.
//! - `maintain.rs` — the **purge** of condemned members (one deadpool `retain` pass per batch)
//!   and the **tick** (`reap_interval`): idle timeout above `min_idle`, max lifetime, and due
//!   heartbeats, all decided inside that pass.
//! - `beat.rs` — one **heartbeat** through the protocol, outside the lock, with its deadline.
//! - `refill.rs` — **refill** to `min_idle` through the breaker (and the protocol's setup).
//!
//! A member is the reaper's own (state `Busy`) while a heartbeat or an idle read runs; a
//! checkout that pops it meanwhile waits for the result, bounded by `heartbeat_timeout`.

mod beat;
pub(crate) mod idle;
mod maintain;
mod refill;
mod watch;

pub(crate) use watch::MAX_IDLE_READS;

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
use crate::pool::manager::Manager;
use crate::pool::shared::PoolShared;
use crate::protocol::Protocol;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;
/// deadpool's `WeakPool` upgrades to the pool with its default wrapper: the reaper wraps
/// what it checks out in [`Conn`] itself.
pub(crate) type Deadpool<P> = deadpool::managed::Pool<Manager<P>>;

const REFILL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REFILL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The reaper of one pool.
pub(crate) struct Reaper<P: Protocol> {
    pool: WeakPool<Manager<P>>,
    shared: Arc<PoolShared>,
    protocol: Arc<P>,
    watchers: FuturesUnordered<Task>,
    beats: FuturesUnordered<Task>,
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
        Reaper {
            pool,
            shared,
            protocol,
            watchers: FuturesUnordered::new(),
            beats: FuturesUnordered::new(),
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
            loop {
                let mut ticked = false;
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(member) = new_members.recv() => {
                        self.watchers.push(Box::pin(watch::watch(member)));
                    }
                    Some(()) = self.watchers.next(), if !self.watchers.is_empty() => {}
                    Some(()) = self.beats.next(), if !self.beats.is_empty() => {}
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

    /// One round after a wake-up; false when the pool is gone or closed.
    fn step(&mut self, ticked: bool) -> bool {
        let shared = &self.shared;
        let purge = shared.take_purge();
        if !(purge || ticked || shared.members() < shared.min_idle()) {
            return true;
        }
        let Some(dp) = self.pool.upgrade() else {
            return false;
        };
        if purge || ticked {
            for sh in maintain::maintain(&dp, shared, ticked) {
                self.beats
                    .push(Box::pin(beat::beat(sh, self.protocol.clone())));
            }
        }
        if dp.is_closed() {
            return false;
        }
        self.schedule_refill(&dp);
        // The strong reference is dropped here, before the next await.
        true
    }

    /// Refill to `min_idle`: one refill task at a time, backing off on failure.
    fn schedule_refill(&mut self, dp: &Deadpool<P>) {
        let shared = &self.shared;
        if let Some(done) = self.refill.as_mut().and_then(|h| h.now_or_never()) {
            self.refill = None;
            if done.unwrap_or(false) {
                self.backoff = REFILL_BACKOFF_MIN;
            } else {
                self.next_refill = Instant::now() + self.backoff;
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
