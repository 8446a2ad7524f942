//! The member state word: one atomic holding the member's kind (idle, in use, busy with the
//! reaper, dead) in its low two bits and a generation above them.
//!
//! Every checkout and every finished reaper job (heartbeat, reading idle bytes) bumps the
//! generation. A watcher or heartbeat that acts on an old snapshot then fails its
//! compare-and-swap instead of killing a connection that someone has since checked out.
//! Whoever moved the word to `InUse` or `Busy` has the member's connection to itself.

use std::sync::atomic::{AtomicU64, Ordering};

const KIND_MASK: u64 = 0b11;
const IDLE: u64 = 0;
const IN_USE: u64 = 1;
const BUSY: u64 = 2;
const DEAD: u64 = 3;
const GEN: u64 = 1 << 2;

/// What a member is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In the idle queue, free to check out, watch or heartbeat.
    Idle,
    /// Checked out by a caller (or being set up).
    InUse,
    /// The reaper holds it: a heartbeat, or reading bytes that arrived while idle.
    Busy,
    /// Condemned: it will never be handed out again.
    Dead,
}

/// One snapshot of the word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct State(u64);

impl State {
    pub(crate) fn kind(self) -> Kind {
        match self.0 & KIND_MASK {
            IDLE => Kind::Idle,
            IN_USE => Kind::InUse,
            BUSY => Kind::Busy,
            _ => Kind::Dead,
        }
    }

    /// The raw word (kind and generation), as a per-checkout value.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    fn with(self, kind: u64) -> u64 {
        (self.0 & !KIND_MASK) | kind
    }
}

/// The atomic word.
#[derive(Debug)]
pub(crate) struct StateWord(AtomicU64);

impl StateWord {
    /// A new member is in use by whoever created it.
    pub(crate) fn new() -> Self {
        StateWord(AtomicU64::new(IN_USE))
    }

    pub(crate) fn load(&self) -> State {
        State(self.0.load(Ordering::Acquire))
    }

    fn cas(&self, from: State, to: u64) -> bool {
        self.0
            .compare_exchange(from.0, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Idle → in use, with a new generation. False if the word moved on since `seen`.
    pub(crate) fn checkout(&self, seen: State) -> bool {
        seen.kind() == Kind::Idle && self.cas(seen, seen.with(IN_USE) + GEN)
    }

    /// In use → idle (the return). Sequentially consistent: it pairs with the watcher's
    /// parked flag (see `Shared::park_watcher`).
    pub(crate) fn release(&self) -> bool {
        let st = State(self.0.load(Ordering::SeqCst));
        st.kind() == Kind::InUse
            && self
                .0
                .compare_exchange(st.0, st.with(IDLE), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// Idle (exactly `seen`) → busy with the reaper.
    pub(crate) fn begin_busy(&self, seen: State) -> bool {
        seen.kind() == Kind::Idle && self.cas(seen, seen.with(BUSY))
    }

    /// Busy → idle with a new generation (the reaper's job found it alive).
    pub(crate) fn end_busy(&self) -> bool {
        let st = self.load();
        st.kind() == Kind::Busy && self.cas(st, st.with(IDLE) + GEN)
    }

    /// Idle exactly as `seen`, or busy, → dead. False if it was checked out meanwhile.
    pub(crate) fn kill_if(&self, seen: State) -> bool {
        matches!(seen.kind(), Kind::Idle | Kind::Busy) && self.cas(seen, seen.with(DEAD))
    }

    /// In use → dead (an unclean return left in the queue as a husk).
    pub(crate) fn kill_in_use(&self) -> bool {
        let st = self.load();
        st.kind() == Kind::InUse && self.cas(st, st.with(DEAD))
    }

    /// Dead → idle with a new generation: a husk revived with a new connection.
    pub(crate) fn revive(&self) -> bool {
        let st = self.load();
        st.kind() == Kind::Dead && self.cas(st, st.with(IDLE) + GEN)
    }

    /// Anything → dead.
    pub(crate) fn kill(&self) {
        self.0.fetch_or(DEAD, Ordering::AcqRel);
    }

    /// True while the word is exactly `seen` (the watcher's half of the parked handshake).
    pub(crate) fn is_still(&self, seen: State) -> bool {
        self.0.load(Ordering::SeqCst) == seen.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_word() -> StateWord {
        let w = StateWord::new();
        assert!(w.release());
        w
    }

    #[test]
    fn new_members_are_in_use_and_release_to_idle() {
        let w = StateWord::new();
        assert_eq!(w.load().kind(), Kind::InUse);
        assert!(w.release());
        assert_eq!(w.load().kind(), Kind::Idle);
        assert!(!w.release(), "an idle member cannot be released twice");
    }

    #[test]
    fn checkout_bumps_the_generation_so_old_snapshots_fail() {
        let w = idle_word();
        let seen = w.load();
        assert!(w.checkout(seen));
        assert!(w.release());
        let now = w.load();
        assert_eq!(now.kind(), Kind::Idle);
        assert_ne!(now, seen, "a checkout and return must change the word");
        // A watcher holding the old snapshot can neither kill nor heartbeat it.
        assert!(!w.kill_if(seen));
        assert!(!w.begin_busy(seen));
        assert!(!w.checkout(seen));
        assert!(w.kill_if(now));
        assert_eq!(w.load().kind(), Kind::Dead);
    }

    #[test]
    fn busy_excludes_checkout_and_ends_with_a_new_generation() {
        let w = idle_word();
        let seen = w.load();
        assert!(w.begin_busy(seen));
        let busy = w.load();
        assert_eq!(busy.kind(), Kind::Busy);
        assert!(!w.checkout(busy), "a busy member is not handed out");
        assert!(!w.begin_busy(busy), "one reaper job at a time");
        assert!(w.end_busy());
        let after = w.load();
        assert_eq!(after.kind(), Kind::Idle);
        assert!(!w.kill_if(seen), "the pre-heartbeat snapshot is stale");
        assert!(w.checkout(after));
    }

    #[test]
    fn busy_can_die_and_dead_is_final() {
        let w = idle_word();
        assert!(w.begin_busy(w.load()));
        assert!(w.kill_if(w.load()));
        let dead = w.load();
        assert_eq!(dead.kind(), Kind::Dead);
        assert!(!w.end_busy());
        assert!(!w.checkout(dead));
        assert!(!w.begin_busy(dead));
        assert!(!w.release());
        w.kill();
        assert_eq!(w.load().kind(), Kind::Dead);
    }

    #[test]
    fn in_use_cannot_be_killed_by_a_snapshot() {
        let w = idle_word();
        let seen = w.load();
        assert!(w.checkout(seen));
        assert!(
            !w.kill_if(w.load()),
            "only idle or busy members die by snapshot"
        );
        w.kill();
        assert_eq!(w.load().kind(), Kind::Dead);
    }

    #[test]
    fn is_still_sees_any_change() {
        let w = idle_word();
        let seen = w.load();
        assert!(w.is_still(seen));
        assert!(w.checkout(seen));
        assert!(!w.is_still(seen));
    }
}
