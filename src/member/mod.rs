//! A pooled member: its shared state ([`Shared`]), the object deadpool stores ([`Member`]),
//! and what the user holds ([`Conn`]).
//!
//! The protocol's connection owns the socket (through [`Io`](crate::Io)); the member keeps
//! only a weak reference to it, so that dropping the connection closes the descriptor. The
//! connection has one owner at a time, decided by the state word (`state.rs`): the caller
//! while checked out (it then lives in the [`Member`]), the reaper while it heartbeats or
//! reads idle bytes, and the idle slot in [`Shared`] otherwise. The checkout peeks through
//! the connection in the slot; the idle watch upgrades the weak reference while it waits.
//!
//! **Eviction in place.** A member that dies while idle (the watch saw FIN/RST, a heartbeat
//! or an idle read failed, a timeout on the heartbeat wheel) is evicted where it lies, at a
//! cost that does not depend on the idle count: under the slot's lock its state word goes
//! dead and its entry becomes a husk; then, after the lock, its connection is dropped (the
//! socket closes), the member count drops and the eviction is recorded. Its entry stays in
//! deadpool's queue as an empty *husk* (deadpool can only remove an entry by a pass over its
//! whole queue): the next checkout that pops it drops it at the cost of one pop,
//! [`Status`](crate::Status) does not count it, it is never handed out (its state is dead),
//! and the refill may put a new connection into it. What the entry holds (live, husk,
//! claimed by a checkout for deadpool to drop, gone; and which life) is one small machine,
//! drawn and tested in `entry.rs`.
//!
//! deadpool has no return hook, so [`Conn`]'s `Drop` is the return path: it decides whether
//! the connection is clean and either puts it back or drops the member. Every member is
//! dropped exactly once, and each life's eviction is recorded exactly once: by `evict_if`
//! for an eviction in place, else by `Member::drop`, with the reason whoever condemned it
//! stored first.
//!
//! # Locks
//!
//! The locks of one pool, outermost first; a lock may be taken while holding only locks
//! above it in this list, never one below it:
//!
//! 1. `PoolInner::shutdown` (the reaper's stop signal): held while a reaper is (re)started,
//!    which takes 2 and 5.
//! 2. `Manager::watch_tx` (the reaper's channel for new members): held while a member is
//!    registered (5) or a husk revived (4, then 5), so that a restarted reaper's hand-over
//!    sees each member exactly once.
//! 3. deadpool's queue lock (its `slots` mutex): deadpool drops members under it when the
//!    pool shrinks or closes, so `Member::drop` (4, then 5 after releasing 4) runs inside it.
//!    Nothing here calls into deadpool (a return, `status()`) while holding 4 or 5.
//! 4. A member's slot (`Shared::slot`): the idle connection, the entry machine, the
//!    addresses. Held only for the moves of the state word and the entry, the taking or
//!    putting of the connection and the checkout's peek, plus, in `revive`, the reset of
//!    the leak stamp and the new life's registration (5: an eviction of the new life must
//!    find its place). An eviction's side effects (the close, the registry, statistics,
//!    metrics, tracing, the event broadcast, the husk offer, wake-ups) come after it.
//! 5. Leaves, each held alone for a few instructions: a member's leak stamp, `PoolShared`'s
//!    registry, husk list, breaker, last error and configuration hold, the idle-limit
//!    detector in `Stats`, the transport's table of runtimes, and inside tokio the
//!    broadcast channels and `Notify` lists. The breaker's lock is released before a
//!    transition is told (events, tracing, the balancer's observer).
//!
//! The state word, the member's other fields and `PoolShared`'s counters are atomics, read
//! and written without a lock. A balancer's own locks (its endpoint list, then an
//! endpoint's health, then the ejector's counts) come before all of these: it reads a
//! pool's status under its list's lock, and the pool tells its observer only after
//! releasing its own locks.

mod conn;
mod entry;
mod idle;
pub(crate) mod state;

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use conn::Conn;
use entry::{Dropped, Entry};
pub(crate) use idle::{MAX_IDLE_READS, read_idle_bytes};
use state::{Kind, State, StateWord};

use crate::jitter::share_of;
use crate::pool::shared::{MemberOps, PoolShared};
use crate::protocol::Protocol;
use crate::stats::{EvictReason, EvictionEvent};
use crate::transport::Socket;
use crate::transport::probe::{self, Health};

/// The idle slot: the protocol's connection while the member is idle, what its entry in
/// deadpool's queue holds (`entry.rs`: live, a husk whose eviction is recorded, claimed for
/// deadpool to drop, gone; and which life), and the parts of its identity that a revival
/// replaces (see `Shared::revive`).
struct Slot<C> {
    /// Boxed, so that a checkout moves a pointer, not the protocol's whole session.
    conn: Option<Box<C>>,
    entry: Entry,
    /// Weak: the connection owns the socket, so dropping it closes the descriptor.
    sock: Weak<Socket>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

/// Where and when a member was checked out, for leak reports.
#[derive(Default)]
struct LeakStamp {
    checkout: Mutex<Option<(Instant, &'static Location<'static>)>>,
    reported: AtomicBool,
}

/// What a checkout found on an idle member.
pub(crate) enum Checkout<C> {
    /// Checked out: the connection is the caller's.
    Got(Box<C>),
    /// The state moved on since the caller's snapshot: look again.
    Moved,
    /// Bytes are waiting: the protocol must read them first.
    Bytes,
    /// Dead, for this reason.
    Dead(EvictReason),
}

/// The part of a member that the reaper shares.
pub(crate) struct Shared<P: Protocol> {
    /// The connection's id (a revived entry gets the new connection's).
    id: AtomicU64,
    /// The entry's life (`Entry::life`), mirrored for readers without the slot's lock: a
    /// watcher or schedule entry of an earlier life ends. Stored only under the slot's lock.
    life: AtomicU32,
    /// This life's place in the pool's registry.
    place: AtomicU32,
    pub(crate) state: StateWord,
    /// The idle connection (taken by a checkout or a reaper job) and the entry machine.
    slot: Mutex<Slot<P::Conn>>,
    /// 0 while no reason is stored, else `EvictReason::index() + 1`.
    reason: AtomicU8,
    detected_ns: AtomicU64,
    last_alive_ns: AtomicU64,
    returned_ns: AtomicU64,
    /// When the next heartbeat is due (only with a heartbeat).
    beat_due_ns: AtomicU64,
    /// End of the lifetime, in the pool's nanoseconds (0: none).
    deadline_ns: AtomicU64,
    pub(crate) notify: Notify,
    /// Where and when the current checkout happened: allocated only with leak detection on
    /// (it would cost every idle member 32 bytes otherwise).
    leak: Option<Box<LeakStamp>>,
    watcher_parked: AtomicBool,
    pub(crate) pool: Arc<PoolShared>,
    pub(crate) protocol: Arc<P>,
}

impl<P: Protocol> Shared<P> {
    pub(crate) fn new(
        sock: &Arc<Socket>,
        id: u64,
        pool: Arc<PoolShared>,
        protocol: Arc<P>,
    ) -> Self {
        let now = Instant::now();
        let now_ns = pool.ns(now);
        Shared {
            id: AtomicU64::new(id),
            life: AtomicU32::new(0),
            place: AtomicU32::new(u32::MAX),
            state: StateWord::new(),
            slot: Mutex::new(Slot {
                conn: None,
                entry: Entry::new(),
                sock: Arc::downgrade(sock),
                local: sock.local_addr(),
                peer: sock.peer_addr(),
            }),
            reason: AtomicU8::new(0),
            detected_ns: AtomicU64::new(0),
            last_alive_ns: AtomicU64::new(now_ns),
            returned_ns: AtomicU64::new(now_ns),
            beat_due_ns: AtomicU64::new(now_ns + pool.config.heartbeat_interval.as_nanos() as u64),
            deadline_ns: AtomicU64::new(deadline_ns(&pool, id, now)),
            notify: Notify::new(),
            leak: pool
                .config
                .leak_threshold
                .map(|_| Box::new(LeakStamp::default())),
            watcher_parked: AtomicBool::new(false),
            pool,
            protocol,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state.load()
    }

    /// The socket, while the connection that owns it exists.
    pub(crate) fn socket(&self) -> Option<Arc<Socket>> {
        self.slot.lock().sock.upgrade()
    }

    /// Registers this new member with the pool (its first life).
    pub(crate) fn register(self: &Arc<Self>) {
        let me: Weak<dyn MemberOps> = Arc::downgrade(self) as _;
        self.place
            .store(self.pool.member_created(me), Ordering::Relaxed);
    }

    /// The connection's id, unique within the pool.
    pub(crate) fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// Which life of this entry (see `revive`).
    pub(crate) fn life(&self) -> u32 {
        self.life.load(Ordering::Acquire)
    }

    /// When the connection's lifetime ends.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.deadline_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.pool.instant(ns)),
        }
    }

    /// Our and the peer's address.
    pub(crate) fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        let slot = self.slot.lock();
        (slot.local, slot.peer)
    }

    /// Takes the idle connection (after winning the state word).
    pub(crate) fn take_conn(&self) -> Option<Box<P::Conn>> {
        self.slot.lock().conn.take()
    }

    /// Puts the connection back (before giving up the state word).
    pub(crate) fn put_conn(&self, conn: Box<P::Conn>) {
        self.slot.lock().conn = Some(conn);
    }

    /// The checkout of an idle member seen as `seen`: the cheap checks, then (under the
    /// slot's lock, through the connection in it) whether its I/O driver still runs and one
    /// peek; if alive, the state word moves to in use and the connection is the caller's.
    /// One lock pair in all.
    pub(crate) fn try_checkout(&self, seen: State, now: Instant) -> Checkout<P::Conn> {
        if let Some(reason) = self.expired(now) {
            return Checkout::Dead(reason);
        }
        let mut slot = self.slot.lock();
        let Some(conn) = slot.conn.as_deref() else {
            // A reaper job or another checkout took it after the caller's snapshot.
            return Checkout::Moved;
        };
        let sock = P::io(conn).socket();
        if sock.driver_gone() {
            return Checkout::Dead(EvictReason::DriverGone);
        }
        let mut health = probe::check(sock);
        if let Some(end) = P::driver(conn) {
            // A hosted client: its driver's end decides, and bytes are the driver's to read.
            if let Some(reason) = end.reason() {
                return Checkout::Dead(reason);
            }
            if health == Health::Dead(EvictReason::UnexpectedData) {
                health = Health::Alive;
            }
        }
        match health {
            Health::Alive if self.state.checkout(seen) => match slot.conn.take() {
                Some(conn) => Checkout::Got(conn),
                None => Checkout::Dead(EvictReason::SocketError),
            },
            Health::Alive => Checkout::Moved,
            Health::Dead(EvictReason::UnexpectedData) => Checkout::Bytes,
            Health::Dead(reason) => Checkout::Dead(reason),
        }
    }

    /// Whether the connection in the slot is a hosted client's (`Some(Some(end))`) or not
    /// (`Some(None)`); `None` when the slot is empty (the state moved on).
    pub(crate) fn driver_end(&self) -> Option<Option<crate::DriverEnd>> {
        let slot = self.slot.lock();
        Some(P::driver(slot.conn.as_deref()?).cloned())
    }

    /// Lifetime and idle timeout (above `min_idle`), cheapest first.
    /// In the pool's nanoseconds throughout: one conversion of `now`, none of the stored
    /// times.
    pub(crate) fn expired(&self, now: Instant) -> Option<EvictReason> {
        let now_ns = self.pool.ns(now);
        if self.lifetime_over(now_ns) {
            return Some(EvictReason::MaxLifetime);
        }
        let pool = &self.pool;
        if let Some(t) = pool.config.idle_timeout
            && now_ns.saturating_sub(self.returned_ns.load(Ordering::Relaxed))
                >= t.as_nanos() as u64
            && pool.members() > pool.min_idle()
        {
            return Some(EvictReason::IdleTimeout);
        }
        None
    }

    /// True once the lifetime has ended (`now_ns` in the pool's nanoseconds).
    #[inline]
    pub(crate) fn lifetime_over(&self, now_ns: u64) -> bool {
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        deadline != 0 && now_ns >= deadline
    }

    /// Evicts an idle (exactly as `seen`) or busy member where it lies: the state word goes
    /// dead, the connection is dropped (closing the socket once the caller drops any
    /// reference of its own), the eviction is recorded and the member count drops. Its entry
    /// stays in deadpool's queue as a husk (see the module docs). False if the member was
    /// checked out or evicted meanwhile.
    pub(crate) fn evict_in_place(self: &Arc<Self>, seen: State, reason: EvictReason) -> bool {
        self.evict_if(|state| state.kill_if(seen), reason)
    }

    /// Evicts a checked-out member that is being returned unclean, leaving its entry in the
    /// queue as a husk for the refill to revive (the caller then returns the entry).
    pub(crate) fn evict_on_return(self: &Arc<Self>, reason: EvictReason) -> bool {
        self.evict_if(StateWord::kill_in_use, reason)
    }

    /// The eviction of both. Under the slot's lock: `kill` moves the state word to dead
    /// (false: it had moved on), the entry becomes a husk, and the connection and what the
    /// record needs are taken out. A drop of the entry meanwhile (a checkout popped it)
    /// waits for this and then sees the husk.
    ///
    /// The side effects come after the lock (see "Locks" in the module docs): the close,
    /// the registry, the record (statistics, metrics, tracing, the event broadcast), the
    /// offer to the refill, the wake-up. Nothing can change what they read meanwhile: only
    /// a revival replaces the member's identity, and the refill finds this husk only once
    /// it is offered, last.
    fn evict_if(
        self: &Arc<Self>,
        kill: impl FnOnce(&StateWord) -> bool,
        reason: EvictReason,
    ) -> bool {
        let mut slot = self.slot.lock();
        if !kill(&self.state) {
            return false;
        }
        let now = Instant::now();
        self.condemn(reason, now);
        let evicted = slot.entry.evict();
        debug_assert!(evicted, "a killed member's entry was {:?}", slot.entry);
        let pool = &self.pool;
        if evicted {
            // Under the lock, so that the drop of the entry (`husk_gone`) comes after it.
            pool.husk_added();
        }
        let revivable = slot.entry.revivable();
        let conn = slot.conn.take();
        let sock = slot.sock.upgrade();
        let (local, peer) = (slot.local, slot.peer);
        let place = self.place.load(Ordering::Relaxed);
        drop(slot);
        // The peer sees the close now even if the idle watch, armed on the socket's
        // readiness, holds it for the moment it takes to wake up and let go.
        if let Some(sock) = sock {
            let _ = sock.shutdown(Shutdown::Both);
        }
        // Closed before the eviction is recorded.
        drop(conn);
        pool.member_gone(place);
        self.record(now, local, peer);
        if revivable && pool.min_idle() > 0 {
            let me: Weak<dyn std::any::Any + Send + Sync> = Arc::downgrade(self) as _;
            pool.offer_husk(me);
        }
        self.notify.notify_waiters();
        true
    }

    /// Gives a husk a new connection (opened by the refill): the entry in deadpool's queue
    /// becomes an idle member again, without adding to deadpool (which cannot add an idle
    /// entry without popping every idle one first). Returns the connection if the husk was
    /// dropped or revived meanwhile.
    pub(crate) fn revive(
        self: &Arc<Self>,
        sock: &Arc<Socket>,
        conn: Box<P::Conn>,
        id: u64,
    ) -> Result<(), Box<P::Conn>> {
        let mut slot = self.slot.lock();
        // A husk's state word is dead (see `entry.rs`); checked all the same, since the
        // word is what hands the member out.
        if self.state().kind() != Kind::Dead || !slot.entry.revive() {
            return Err(conn);
        }
        let pool = &self.pool;
        let now = Instant::now();
        let ns = pool.ns(now);
        self.life.store(slot.entry.life(), Ordering::Release);
        self.id.store(id, Ordering::Relaxed);
        self.deadline_ns
            .store(deadline_ns(pool, id, now), Ordering::Relaxed);
        self.reason.store(0, Ordering::Release);
        self.detected_ns.store(0, Ordering::Relaxed);
        self.last_alive_ns.store(ns, Ordering::Relaxed);
        self.returned_ns.store(ns, Ordering::Relaxed);
        if let Some(leak) = &self.leak {
            *leak.checkout.lock() = None;
            leak.reported.store(false, Ordering::Relaxed);
        }
        slot.sock = Arc::downgrade(sock);
        slot.local = sock.local_addr();
        slot.peer = sock.peer_addr();
        slot.conn = Some(conn);
        pool.husk_gone();
        // Registered before the state word says idle: an eviction of the new life must
        // find its new place.
        let me: Weak<dyn MemberOps> = Arc::downgrade(self) as _;
        self.place.store(pool.member_created(me), Ordering::Relaxed);
        self.spread_first_beat(ns);
        self.state.revive();
        drop(slot);
        Ok(())
    }

    /// A checkout is about to hand this entry back to deadpool to be dropped: the refill
    /// must not revive it from now on (a connection revived into it would be closed at
    /// once). False if the refill revived it since the checkout saw life `life`.
    pub(crate) fn claim(&self, life: u32) -> bool {
        self.slot.lock().entry.claim(life)
    }

    /// Records this member's eviction (once: by its drop or by `evict_if`).
    fn record(&self, now: Instant, local: Option<SocketAddr>, peer: Option<SocketAddr>) {
        let pool = &self.pool;
        pool.record_eviction(EvictionEvent {
            endpoint: pool.endpoint.clone(),
            reason: self.reason().unwrap_or(EvictReason::PoolClosed),
            id: self.id(),
            local_addr: local,
            peer_addr: peer,
            last_alive: self.last_alive(),
            detected_at: pool.instant(self.detected_ns.load(Ordering::Acquire)),
            evicted_at: now,
        });
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

    /// In use → idle, stamping the return time (`ns`, in the pool's nanoseconds); wakes a
    /// parked watcher.
    pub(crate) fn release(&self, ns: u64) {
        self.returned_ns.store(ns, Ordering::Relaxed);
        self.last_alive_ns.store(ns, Ordering::Relaxed);
        self.spread_first_beat(ns);
        // Only a watcher that parked because it saw the checkout needs waking; one still
        // armed on readiness costs nothing here (no lock, no wake-up).
        if self.state.release() && self.watcher_parked.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// The first heartbeat after a return (or a revival) falls anywhere in the interval (a
    /// fresh draw per checkout), so that members returned together are not pinged together.
    fn spread_first_beat(&self, ns: u64) {
        let cfg = &self.pool.config;
        if cfg.has_heartbeat {
            let interval = cfg.heartbeat_interval.as_nanos() as u64;
            let u = share_of(interval, cfg.seed ^ self.state.load().bits(), self.id());
            // In (0, interval]: `u` is in [0, interval).
            self.beat_due_ns
                .store(ns + (interval - u), Ordering::Relaxed);
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
    pub(crate) fn end_busy(self: &Arc<Self>, failure: Option<EvictReason>) {
        let now = Instant::now();
        match failure {
            None => {
                let ns = self.pool.ns(now);
                self.last_alive_ns.store(ns, Ordering::Relaxed);
                let next = self.pool.config.heartbeat_interval_for(self.id());
                self.beat_due_ns
                    .store(ns + next.as_nanos() as u64, Ordering::Relaxed);
                self.state.end_busy();
            }
            Some(reason) => {
                // Killed meanwhile (a checkout timed out waiting): its drop records it.
                if !self.evict_in_place(self.state(), reason) {
                    self.condemn(reason, now);
                }
            }
        }
        self.notify.notify_waiters();
    }

    /// When this member's heartbeat is due.
    pub(crate) fn beat_due(&self) -> Instant {
        self.pool.instant(self.beat_due_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn stamp_checkout(&self, now: Instant, at: &'static Location<'static>) {
        if let Some(leak) = &self.leak {
            *leak.checkout.lock() = Some((now, at));
            leak.reported.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn returned_at(&self) -> Instant {
        self.pool.instant(self.returned_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn last_alive(&self) -> Instant {
        self.pool
            .instant(self.last_alive_ns.load(Ordering::Relaxed))
    }
}

impl<P: Protocol> MemberOps for Shared<P> {
    fn check_leak(&self, now: Instant, threshold: Duration) -> bool {
        if self.state().kind() != Kind::InUse {
            return false;
        }
        let Some(leak) = &self.leak else {
            return false;
        };
        let Some((since, at)) = *leak.checkout.lock() else {
            return false;
        };
        let held = now.saturating_duration_since(since);
        if held < threshold || leak.reported.swap(true, Ordering::Relaxed) {
            return false;
        }
        tracing::warn!(
            conn.id = self.id(),
            peer.addr = ?self.addrs().1,
            held_ms = held.as_millis() as u64,
            checked_out_at = %at,
            "connection held longer than the leak threshold"
        );
        true
    }

    fn force_close(&self) {
        self.condemn(EvictReason::PoolClosed, Instant::now());
        if let Some(sock) = self.socket() {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    fn id(&self) -> u64 {
        Shared::id(self)
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl<P: Protocol> fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (local, peer) = self.addrs();
        f.debug_struct("Shared")
            .field("id", &self.id())
            .field("state", &self.state().kind())
            .field("local", &local)
            .field("peer", &peer)
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
        let mut slot = sh.slot.lock();
        sh.state.kill();
        let pool = &sh.pool;
        match slot.entry.drop_entry() {
            Dropped::Live => {}
            Dropped::Husk => {
                // Evicted in place: recorded then; only the entry goes now.
                drop(slot);
                pool.husk_gone();
                return;
            }
            Dropped::Twice => return,
        }
        sh.condemn(EvictReason::PoolClosed, now);
        let sock = slot.sock.upgrade();
        let idle = slot.conn.take();
        let (local, peer) = (slot.local, slot.peer);
        let place = sh.place.load(Ordering::Relaxed);
        drop(slot);
        // A reaper job may still hold the socket for a moment; the peer sees the close now,
        // and the protocol's connection (TLS state, buffers) goes with the member.
        if let Some(sock) = sock {
            let _ = sock.shutdown(Shutdown::Both);
        }
        drop(self.conn.take());
        drop(idle);
        sh.notify.notify_waiters();
        pool.member_gone(place);
        sh.record(now, local, peer);
    }
}

/// A new connection's lifetime end in the pool's nanoseconds (0: none).
fn deadline_ns(pool: &PoolShared, id: u64, now: Instant) -> u64 {
    pool.config
        .lifetime_for(id)
        .map_or(0, |l| pool.ns(now + l).max(1))
}
