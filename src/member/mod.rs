//! A pooled member: its shared state ([`Shared`]), the object deadpool stores ([`Member`]),
//! and what the user holds ([`Conn`]).
//!
//! The socket is shared (an `Arc`) between the protocol's connection, which does all I/O
//! through [`Io`](crate::Io), and the member, which peeks it and awaits its readiness while
//! idle. The protocol's connection itself has one owner at a time, decided by the state word
//! (`state.rs`): the caller while checked out (it then lives in the [`Member`]), the reaper
//! while it heartbeats or reads idle bytes, and the idle slot in [`Shared`] otherwise.
//!
//! deadpool has no return hook, so [`Conn`]'s `Drop` is the return path: it decides whether
//! the connection is clean and either puts it back or drops the member. Every member is
//! dropped exactly once, and `Member::drop` is where every eviction is recorded, with the
//! reason whoever condemned it stored first.

mod conn;
pub(crate) mod state;

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use conn::Conn;
use state::{Kind, State, StateWord};

use crate::pool::shared::{MemberOps, PoolShared};
use crate::protocol::Protocol;
use crate::stats::{EvictReason, EvictionEvent};
use crate::transport::Socket;
use crate::transport::probe::{self, Health};

/// The part of a member that the reaper shares.
pub(crate) struct Shared<P: Protocol> {
    pub(crate) sock: Arc<Socket>,
    pub(crate) id: u64,
    pub(crate) state: StateWord,
    /// The protocol's connection while the member is idle (taken by a checkout or a reaper job).
    /// Boxed, so that a checkout moves a pointer, not the protocol's whole session.
    slot: Mutex<Option<Box<P::Conn>>>,
    /// 0 while no reason is stored, else `EvictReason::index() + 1`.
    reason: AtomicU8,
    detected_ns: AtomicU64,
    last_alive_ns: AtomicU64,
    returned_ns: AtomicU64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) notify: Notify,
    /// Where and when the current checkout happened (only with leak detection on).
    checkout: Mutex<Option<(Instant, &'static Location<'static>)>>,
    leak_reported: AtomicBool,
    watcher_parked: AtomicBool,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    pub(crate) pool: Arc<PoolShared>,
    pub(crate) protocol: Arc<P>,
}

impl<P: Protocol> Shared<P> {
    pub(crate) fn new(sock: Arc<Socket>, id: u64, pool: Arc<PoolShared>, protocol: Arc<P>) -> Self {
        let now = Instant::now();
        let now_ns = pool.ns(now);
        Shared {
            local: sock.local_addr(),
            peer: sock.peer_addr(),
            sock,
            id,
            state: StateWord::new(),
            slot: Mutex::new(None),
            reason: AtomicU8::new(0),
            detected_ns: AtomicU64::new(0),
            last_alive_ns: AtomicU64::new(now_ns),
            returned_ns: AtomicU64::new(now_ns),
            deadline: pool.config.lifetime_for(id).map(|l| now + l),
            notify: Notify::new(),
            checkout: Mutex::new(None),
            leak_reported: AtomicBool::new(false),
            watcher_parked: AtomicBool::new(false),
            pool,
            protocol,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state.load()
    }

    /// Takes the idle connection (after winning the state word).
    pub(crate) fn take_conn(&self) -> Option<Box<P::Conn>> {
        self.slot.lock().take()
    }

    /// Puts the connection back (before giving up the state word).
    pub(crate) fn put_conn(&self, conn: Box<P::Conn>) {
        *self.slot.lock() = Some(conn);
    }

    /// Stores why this member must go, unless a reason is stored already.
    pub(crate) fn condemn(&self, reason: EvictReason, now: Instant) {
        if self
            .reason
            .compare_exchange(
                0,
                reason.index() as u8 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.detected_ns.store(self.pool.ns(now), Ordering::Release);
        }
    }

    pub(crate) fn reason(&self) -> Option<EvictReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            r => EvictReason::from_index(r as usize - 1),
        }
    }

    /// In use → idle, stamping the return time; wakes a parked watcher.
    pub(crate) fn release(&self, now: Instant) {
        let ns = self.pool.ns(now);
        self.returned_ns.store(ns, Ordering::Relaxed);
        self.last_alive_ns.store(ns, Ordering::Relaxed);
        // Only a watcher that parked because it saw the checkout needs waking; one still
        // armed on readiness costs nothing here (no lock, no wake-up).
        if self.state.release() && self.watcher_parked.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// The idle watcher parks until the member is idle again. Returns at once if it already
    /// is (or the state moved on from `seen`). With `release` this is a Dekker pair: either
    /// release sees the flag, or the watcher sees the new state.
    pub(crate) async fn park_watcher(
        &self,
        seen: State,
        notified: Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) {
        self.watcher_parked.store(true, Ordering::SeqCst);
        if self.state.is_still(seen) {
            notified.await;
        }
        self.watcher_parked.store(false, Ordering::SeqCst);
    }

    /// Idle → busy with the reaper. False if the member is not idle in state `seen`.
    pub(crate) fn begin_busy(&self, seen: State) -> bool {
        let ok = self.state.begin_busy(seen);
        if ok {
            self.notify.notify_waiters();
        }
        ok
    }

    /// Busy → idle (alive; new generation) or dead (with `failure`).
    pub(crate) fn end_busy(&self, failure: Option<EvictReason>) {
        let now = Instant::now();
        match failure {
            None => {
                self.last_alive_ns
                    .store(self.pool.ns(now), Ordering::Relaxed);
                self.state.end_busy();
            }
            Some(reason) => {
                self.condemn(reason, now);
                if self.state.kill_if(self.state()) {
                    self.pool.request_purge();
                }
            }
        }
        self.notify.notify_waiters();
    }

    /// Idle (exactly as `seen`) → dead, for `reason`. False if it was checked out meanwhile.
    pub(crate) fn mark_dead(&self, seen: State, reason: EvictReason) -> bool {
        if seen.kind() != Kind::Idle || !self.state.kill_if(seen) {
            return false;
        }
        self.condemn(reason, Instant::now());
        self.notify.notify_waiters();
        true
    }

    pub(crate) fn stamp_checkout(&self, now: Instant, at: &'static Location<'static>) {
        *self.checkout.lock() = Some((now, at));
        self.leak_reported.store(false, Ordering::Relaxed);
    }

    pub(crate) fn returned_at(&self) -> Instant {
        self.pool.instant(self.returned_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn last_alive(&self) -> Instant {
        self.pool
            .instant(self.last_alive_ns.load(Ordering::Relaxed))
    }

    /// The checks of an idle member at checkout, cheapest first (after the state word):
    /// lifetime, idle timeout, whether its socket's I/O driver is still running (one atomic
    /// load in the common case), then one peek syscall (which cannot see a dead driver).
    pub(crate) fn check_idle(&self, now: Instant) -> Health {
        if self.deadline.is_some_and(|d| now >= d) {
            return Health::Dead(EvictReason::MaxLifetime);
        }
        let cfg = &self.pool.config;
        if let Some(t) = cfg.idle_timeout
            && now.saturating_duration_since(self.returned_at()) >= t
            && self.pool.members() > self.pool.min_idle()
        {
            return Health::Dead(EvictReason::IdleTimeout);
        }
        if self.sock.driver_gone() {
            return Health::Dead(EvictReason::DriverGone);
        }
        probe::check(&self.sock)
    }
}

impl<P: Protocol> MemberOps for Shared<P> {
    fn check_leak(&self, now: Instant, threshold: Duration) -> bool {
        if self.state().kind() != Kind::InUse {
            return false;
        }
        let Some((since, at)) = *self.checkout.lock() else {
            return false;
        };
        let held = now.saturating_duration_since(since);
        if held < threshold || self.leak_reported.swap(true, Ordering::Relaxed) {
            return false;
        }
        tracing::warn!(
            conn.id = self.id,
            peer.addr = ?self.peer,
            held_ms = held.as_millis() as u64,
            checked_out_at = %at,
            "connection held longer than the leak threshold"
        );
        true
    }

    fn force_close(&self) {
        self.condemn(EvictReason::PoolClosed, Instant::now());
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl<P: Protocol> fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("state", &self.state().kind())
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A pooled connection as deadpool stores it: the shared part, and the protocol's connection
/// while checked out. Its drop is the one place an eviction is recorded.
pub(crate) struct Member<P: Protocol> {
    pub(crate) shared: Arc<Shared<P>>,
    pub(crate) conn: Option<Box<P::Conn>>,
}

impl<P: Protocol> fmt::Debug for Member<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Drop for Member<P> {
    fn drop(&mut self) {
        let sh = &self.shared;
        let now = Instant::now();
        sh.state.kill();
        sh.condemn(EvictReason::PoolClosed, now);
        // The reaper may still hold the Arc for a moment; the peer sees the close now, and
        // the protocol's connection (TLS state, buffers) goes with the member.
        let _ = sh.sock.shutdown(Shutdown::Both);
        drop(self.conn.take());
        drop(sh.take_conn());
        sh.notify.notify_waiters();
        let pool = &sh.pool;
        pool.member_gone(sh.id);
        pool.record_eviction(EvictionEvent {
            reason: sh.reason().unwrap_or(EvictReason::PoolClosed),
            id: sh.id,
            local_addr: sh.local,
            peer_addr: sh.peer,
            last_alive: sh.last_alive(),
            detected_at: pool.instant(sh.detected_ns.load(Ordering::Acquire)),
            evicted_at: now,
        });
    }
}
