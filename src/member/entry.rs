//! The entry machine: what a member's place in deadpool's queue holds.
//!
//! The state word (`state.rs`) says what the member's *connection* is doing (idle, in use,
//! busy with the reaper, dead); it moves lock-free, by compare-and-swap. The entry says what
//! the *place* in deadpool's queue holds, and which life of the member it is on. It moves
//! only under the slot's lock, so its transitions are plain methods on a value: no atomics,
//! no clock, no I/O, each tested below (the refused ones too).
//!
//! ```text
//!                       evict (word → Dead)
//!   new ──▶ Live ─────────────────────────────▶ Husk
//!            │ ▲                                 │
//!            │ └──────── revive (life + 1) ──────┤
//!            │                                   │
//!            │ claim(life)                       │ claim(life)
//!            ▼                                   ▼
//!       Claimed live ───────── evict ──────▶ Claimed husk
//!
//!   drop (deadpool drops the entry): from any of them ──▶ Gone
//! ```
//!
//! - **Live**: a live member: its connection in the slot (idle), with a caller (in use) or
//!   with the reaper (busy).
//! - **Husk**: evicted in place (see the member docs): the connection is closed and the
//!   eviction recorded; the empty entry waits in deadpool's queue for a checkout to drop it
//!   or for the refill to revive it with a new connection.
//! - **Claimed**: a checkout popped the entry and hands it back to deadpool to be dropped.
//!   It is never revived: a connection put into it would be closed at once. It may still be
//!   evicted meanwhile (the idle watch does not know of the claim).
//! - **Gone**: deadpool dropped it. Nothing moves it any more.
//!
//! Refused transitions (the method returns false and the entry is unchanged):
//! - `evict` of a husk (claimed or not) or of a gone entry: one eviction per life;
//! - `revive` of anything but an unclaimed husk;
//! - `claim` with a life that is not the entry's (the refill revived it since the checkout
//!   looked: the checkout looks again), and `claim` of a gone entry.
//!
//! The state word agrees: a husk's word is dead (`evict` follows the word's kill, and only
//! `revive` brings the word back), and so is a gone entry's.
//!
//! `life` counts revivals. A watcher or schedule entry started for one life ends when it sees
//! another; they read it without the lock, from the mirror `Shared` keeps (stored under the
//! lock after each revival).

/// Where the entry is in its machine (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Live,
    Husk,
    /// `husk`: evicted (its eviction recorded) before or after the claim.
    Claimed {
        husk: bool,
    },
    Gone,
}

/// The entry: its phase and its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    phase: Phase,
    life: u32,
}

/// What the drop of an entry leaves to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A live member: close its connection, record its eviction.
    Live,
    /// A husk: its eviction was recorded when it was evicted; only the husk count drops.
    Husk,
    /// Dropped before: nothing.
    Twice,
}

impl Entry {
    /// A new member: live, first life.
    pub(crate) const fn new() -> Self {
        Entry {
            phase: Phase::Live,
            life: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn phase(self) -> Phase {
        self.phase
    }

    pub(crate) fn life(self) -> u32 {
        self.life
    }

    /// True while the entry is an empty husk (claimed or not): deadpool counts it, `status()`
    /// must not (`PoolShared::husks` counts them).
    #[cfg(test)]
    pub(crate) fn is_husk(self) -> bool {
        matches!(self.phase, Phase::Husk | Phase::Claimed { husk: true })
    }

    /// True when the refill may put a new connection into it.
    pub(crate) fn revivable(self) -> bool {
        self.phase == Phase::Husk
    }

    /// The member was evicted in place (its state word killed just now): live → husk,
    /// claimed live → claimed husk. Refused for a husk or a gone entry.
    pub(crate) fn evict(&mut self) -> bool {
        self.phase = match self.phase {
            Phase::Live => Phase::Husk,
            Phase::Claimed { husk: false } => Phase::Claimed { husk: true },
            Phase::Husk | Phase::Claimed { husk: true } | Phase::Gone => return false,
        };
        true
    }

    /// A husk gets a new connection: husk → live, in the next life. Refused for anything
    /// else (a claimed husk above all: deadpool is about to drop it).
    pub(crate) fn revive(&mut self) -> bool {
        if self.phase != Phase::Husk {
            return false;
        }
        self.phase = Phase::Live;
        self.life = self.life.wrapping_add(1);
        true
    }

    /// A checkout that saw the entry in life `seen` hands it back to deadpool to be dropped:
    /// the refill must not revive it from now on. Refused if a revival changed the life
    /// since (the checkout looks again) or the entry is gone. Claiming twice is harmless.
    pub(crate) fn claim(&mut self, seen: u32) -> bool {
        if self.life != seen {
            return false;
        }
        self.phase = match self.phase {
            Phase::Live => Phase::Claimed { husk: false },
            Phase::Husk => Phase::Claimed { husk: true },
            claimed @ Phase::Claimed { .. } => claimed,
            Phase::Gone => return false,
        };
        true
    }

    /// deadpool dropped the entry (a checkout's error, a shrink, the pool's close): → gone.
    pub(crate) fn drop_entry(&mut self) -> Dropped {
        let was = std::mem::replace(&mut self.phase, Phase::Gone);
        match was {
            Phase::Live | Phase::Claimed { husk: false } => Dropped::Live,
            Phase::Husk | Phase::Claimed { husk: true } => Dropped::Husk,
            Phase::Gone => Dropped::Twice,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(phase: Phase, life: u32) -> Entry {
        Entry { phase, life }
    }

    const LIVE: Phase = Phase::Live;
    const HUSK: Phase = Phase::Husk;
    const CLAIMED_LIVE: Phase = Phase::Claimed { husk: false };
    const CLAIMED_HUSK: Phase = Phase::Claimed { husk: true };
    const GONE: Phase = Phase::Gone;
    const ALL: [Phase; 5] = [LIVE, HUSK, CLAIMED_LIVE, CLAIMED_HUSK, GONE];

    #[test]
    fn a_new_entry_is_live_in_its_first_life() {
        let e = Entry::new();
        assert_eq!((e.phase(), e.life()), (LIVE, 0));
        assert!(!e.is_husk());
        assert!(!e.revivable());
    }

    #[test]
    fn evict_makes_a_husk_once_per_life() {
        for (from, to) in [(LIVE, Some(HUSK)), (CLAIMED_LIVE, Some(CLAIMED_HUSK))]
            .into_iter()
            .chain([HUSK, CLAIMED_HUSK, GONE].map(|p| (p, None)))
        {
            let mut e = at(from, 3);
            assert_eq!(e.evict(), to.is_some(), "evict from {from:?}");
            assert_eq!(e, at(to.unwrap_or(from), 3), "evict from {from:?}");
        }
    }

    #[test]
    fn only_an_unclaimed_husk_revives_and_it_starts_a_new_life() {
        for from in ALL {
            let mut e = at(from, 3);
            let ok = e.revive();
            assert_eq!(ok, from == HUSK, "revive from {from:?}");
            if ok {
                assert_eq!(e, at(LIVE, 4));
            } else {
                assert_eq!(e, at(from, 3), "a refused revival changes nothing");
            }
        }
    }

    #[test]
    fn revive_of_a_claimed_husk_is_refused() {
        let mut e = Entry::new();
        assert!(e.evict());
        assert!(e.claim(0));
        assert!(!e.revive(), "deadpool is about to drop it");
        assert_eq!(e, at(CLAIMED_HUSK, 0));
    }

    #[test]
    fn claim_marks_the_entry_for_deadpool_in_the_life_it_was_seen() {
        for (from, to) in [
            (LIVE, CLAIMED_LIVE),
            (HUSK, CLAIMED_HUSK),
            (CLAIMED_LIVE, CLAIMED_LIVE),
            (CLAIMED_HUSK, CLAIMED_HUSK),
        ] {
            let mut e = at(from, 3);
            assert!(e.claim(3), "claim from {from:?}");
            assert_eq!(e, at(to, 3));
            assert!(!e.revivable());
        }
        let mut e = at(GONE, 3);
        assert!(!e.claim(3), "a gone entry is not in the queue");
        assert_eq!(e, at(GONE, 3));
    }

    #[test]
    fn claim_after_a_revival_changed_the_life_is_refused() {
        let mut e = Entry::new();
        let seen = e.life();
        assert!(e.evict());
        // The refill revives the husk before the checkout that saw life 0 claims it.
        assert!(e.revive());
        assert!(!e.claim(seen), "the entry holds a new connection now");
        assert_eq!(e, at(LIVE, 1));
        // Looking again, the checkout claims the life it sees now.
        assert!(e.claim(e.life()));
        assert_eq!(e, at(CLAIMED_LIVE, 1));
    }

    #[test]
    fn drop_ends_every_phase_and_says_what_is_left_to_record() {
        for (from, left) in [
            (LIVE, Dropped::Live),
            (CLAIMED_LIVE, Dropped::Live),
            (HUSK, Dropped::Husk),
            (CLAIMED_HUSK, Dropped::Husk),
            (GONE, Dropped::Twice),
        ] {
            let mut e = at(from, 3);
            assert_eq!(e.drop_entry(), left, "drop from {from:?}");
            assert_eq!(e, at(GONE, 3));
        }
    }

    #[test]
    fn nothing_moves_a_gone_entry() {
        let mut e = at(GONE, 3);
        assert!(!e.evict());
        assert!(!e.revive());
        assert!(!e.claim(3));
        assert_eq!(e, at(GONE, 3));
        assert!(!e.is_husk());
    }

    #[test]
    fn husks_are_counted_until_revived_or_dropped() {
        for (p, husk) in [
            (LIVE, false),
            (HUSK, true),
            (CLAIMED_LIVE, false),
            (CLAIMED_HUSK, true),
            (GONE, false),
        ] {
            assert_eq!(at(p, 0).is_husk(), husk, "{p:?}");
        }
    }

    /// Any sequence of transitions keeps the machine's promises: the life only grows by
    /// revivals, a claimed entry never becomes live again, nothing leaves gone, and each
    /// life is evicted at most once.
    #[test]
    fn every_sequence_keeps_the_invariants() {
        // All sequences of up to 6 steps over evict, revive, claim (current or stale life),
        // drop: 5^6 = 15,625 runs.
        const STEPS: usize = 6;
        for mut code in 0..5usize.pow(STEPS as u32) {
            let mut e = Entry::new();
            let mut claimed = false;
            let mut evicted_this_life = false;
            for _ in 0..STEPS {
                let step = code % 5;
                code /= 5;
                let before = e;
                match step {
                    0 => {
                        let ok = e.evict();
                        assert!(!(ok && evicted_this_life), "two evictions in one life");
                        evicted_this_life |= ok;
                    }
                    1 => {
                        if e.revive() {
                            assert!(!claimed, "a claimed entry revived");
                            assert_eq!(e.life(), before.life() + 1);
                            evicted_this_life = false;
                        }
                    }
                    2 => claimed |= e.claim(e.life()),
                    3 => assert!(!e.claim(e.life().wrapping_sub(1)), "a stale claim"),
                    _ => {
                        e.drop_entry();
                    }
                }
                if before.phase() == GONE {
                    assert_eq!(e, before, "a gone entry moved");
                }
                if step != 1 {
                    assert_eq!(e.life(), before.life(), "only a revival changes the life");
                }
                if claimed && e.phase() != GONE {
                    assert!(matches!(e.phase(), Phase::Claimed { .. }), "{e:?}");
                }
            }
        }
    }
}
