//! A hashed timing wheel: the reaper's schedule of when to look at each member again.
//!
//! Each entry sits in the slot of its due tick (modulo the slot count); advancing the wheel
//! visits only the slots whose ticks have passed, so its cost is the number of entries that
//! fall due (plus those a whole turn of the wheel ahead, visited once per turn), never the
//! number of members. This is what keeps the reaper's work per tick independent of the idle
//! count: a pass over every member each tick costs ~1 ms per 10,000 members.
//!
//! The buffers are reused: the slot emptied by a tick lends its buffer to the next slot that
//! fills (members beaten in this tick are scheduled together, one interval later), and the
//! entries handed out go through one kept buffer; either is trimmed when it is far larger
//! than what it last held, or than an eighth of all entries (a crowd of members created
//! together is not kept for).

use std::time::Duration;

use tokio::time::Instant;

/// Slots of one turn; with a 1 s tick one turn is about 17 minutes.
const SLOTS: usize = 1024;

pub(crate) struct Wheel<T> {
    /// Each entry with the turn of the wheel it is due in (its tick is `turn * SLOTS +` its
    /// slot's index): 4 bytes instead of a tick's 8, in an entry per member.
    slots: Vec<Vec<(u32, T)>>,
    start: Instant,
    tick: Duration,
    /// The last tick advanced to: every entry due at or before it has been handed out.
    current: u64,
    len: usize,
    /// The last slot emptied, cleared: the next slot that needs a buffer takes it (see the
    /// module docs).
    spare: Vec<(u32, T)>,
    /// The entries handed out by `advance`, kept between ticks.
    due: Vec<(u64, T)>,
}

impl<T> Wheel<T> {
    pub(crate) fn new(start: Instant, tick: Duration) -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            start,
            tick: tick.max(Duration::from_micros(1)),
            current: 0,
            len: 0,
            spare: Vec::new(),
            due: Vec::new(),
        }
    }

    /// Entries in the wheel.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn ticks(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Schedules `item` for the first tick at or after `due` (the next tick if that passed).
    pub(crate) fn insert(&mut self, due: Instant, item: T) {
        let due = due.saturating_duration_since(self.start).as_nanos();
        let tick = due.div_ceil(self.tick.as_nanos()) as u64;
        let tick = tick.max(self.current + 1);
        let turn = (tick / SLOTS as u64) as u32;
        let slot = &mut self.slots[(tick % SLOTS as u64) as usize];
        if slot.capacity() == 0 {
            *slot = std::mem::take(&mut self.spare);
        }
        slot.push((turn, item));
        self.len += 1;
    }

    /// Hands every entry due by `now` to `visit`, in tick order (entries inserted by `visit`
    /// go to later ticks).
    pub(crate) fn advance(&mut self, now: Instant, mut visit: impl FnMut(&mut Self, T)) {
        let target = self.ticks(now);
        if target <= self.current {
            return;
        }
        // More than a turn behind: every slot once.
        let first = self.current + 1;
        let last = target.min(self.current + SLOTS as u64);
        let mut due = std::mem::take(&mut self.due);
        // More than an eighth of all entries in one tick is a crowd (members created
        // together), not what the next ticks bring: no buffer is kept for it.
        let usual = self.len / 8;
        for t in first..=last {
            let index = t % SLOTS as u64;
            let slot = &mut self.slots[index as usize];
            let before = due.len();
            let mut i = 0;
            while i < slot.len() {
                let tick = u64::from(slot[i].0) * SLOTS as u64 + index;
                if tick <= target {
                    due.push((tick, slot.swap_remove(i).1));
                } else {
                    i += 1;
                }
            }
            if slot.is_empty() && self.spare.capacity() == 0 {
                // Its buffer goes to the next slot that fills, sized for what it held.
                self.spare = std::mem::take(slot);
                trim(&mut self.spare, (due.len() - before).min(usual));
            } else {
                // A slot that held a crowd (members created together) gives the memory back.
                trim(slot, slot.len());
            }
        }
        self.current = target;
        self.len -= due.len();
        due.sort_unstable_by_key(|e| e.0);
        let handed = due.len();
        for (_, item) in due.drain(..) {
            visit(self, item);
        }
        trim(&mut due, handed.min(usual));
        self.due = due;
    }
}

/// Gives back most of a buffer that is far larger than the `used` entries it is needed for.
fn trim<E>(v: &mut Vec<E>, used: usize) {
    if v.capacity() > 64 && used < v.capacity() / 4 {
        v.shrink_to(used * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(w: &Wheel<u32>, ms: u64) -> Instant {
        w.start + Duration::from_millis(ms)
    }

    fn run(w: &mut Wheel<u32>, ms: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(at(w, ms), |_, x| out.push(x));
        out
    }

    #[test]
    fn entries_come_due_at_their_tick_and_not_before() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(10));
        w.insert(at(&w, 25), 1);
        w.insert(at(&w, 5), 2);
        w.insert(at(&w, 100), 3);
        assert_eq!(w.len(), 3);
        assert!(run(&mut w, 9).is_empty());
        assert_eq!(run(&mut w, 10), vec![2]);
        assert!(run(&mut w, 29).is_empty());
        assert_eq!(run(&mut w, 30), vec![1]);
        assert_eq!(run(&mut w, 99), Vec::<u32>::new());
        assert_eq!(run(&mut w, 100), vec![3]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_past_due_time_goes_to_the_next_tick() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(10));
        assert!(run(&mut w, 50).is_empty());
        w.insert(at(&w, 0), 7);
        assert!(run(&mut w, 55).is_empty());
        assert_eq!(run(&mut w, 60), vec![7]);
    }

    #[test]
    fn entries_more_than_a_turn_ahead_wait_for_their_turn() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(1));
        let far = SLOTS as u64 * 3 + 5;
        w.insert(at(&w, far), 1);
        w.insert(at(&w, 5), 2);
        let mut seen = Vec::new();
        for ms in (0..far).step_by(7) {
            seen.extend(run(&mut w, ms));
        }
        assert_eq!(seen, vec![2]);
        assert_eq!(run(&mut w, far), vec![1]);
    }

    #[test]
    fn a_late_advance_hands_out_everything_due_in_order() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(1));
        for (i, ms) in [(1, 3000), (2, 10), (3, 2500), (4, 999_999)] {
            w.insert(at(&w, ms), i);
        }
        assert_eq!(run(&mut w, 5000), vec![2, 3, 1]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn visit_can_reschedule() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(10));
        w.insert(at(&w, 10), 1);
        let mut n = 0;
        w.advance(at(&w, 10), |w, x| {
            n += 1;
            let due = at(w, 40);
            w.insert(due, x);
        });
        assert_eq!(n, 1);
        assert!(run(&mut w, 30).is_empty());
        assert_eq!(run(&mut w, 40), vec![1]);
    }

    fn capacity(w: &Wheel<u32>) -> usize {
        w.slots.iter().map(Vec::capacity).sum::<usize>() + w.spare.capacity() + w.due.capacity()
    }

    #[test]
    fn buffers_are_reused_tick_after_tick_and_a_crowd_is_not_kept() {
        let mut w = Wheel::new(Instant::now(), Duration::from_millis(10));
        // A crowd: 10,000 entries due in one tick, each scheduled again 300 ms later, spread
        // over the 10 ms ticks of 300..400 ms.
        for i in 0..10_000 {
            w.insert(at(&w, 10), i);
        }
        let mut ms = 10;
        w.advance(at(&w, ms), |w, x| {
            let due = at(w, 300 + u64::from(x % 10) * 10);
            w.insert(due, x);
        });
        assert_eq!(w.len(), 10_000);
        assert!(
            capacity(&w) < 10_000 * 3 / 2,
            "the crowd's buffers are given back: {}",
            capacity(&w)
        );
        // Steady state: every tick's entries come back 100 ms (10 ticks) later.
        let mut seen = 0;
        while ms < 2_000 {
            ms += 10;
            w.advance(at(&w, ms), |w, x| {
                seen += 1;
                let due = at(w, ms + 100);
                w.insert(due, x);
            });
        }
        assert!(seen > 10_000);
        assert_eq!(w.len(), 10_000);
        // Ten slots of a thousand, one spare and the handed-out buffer, with room to grow.
        assert!(capacity(&w) <= 10_000 * 4, "{}", capacity(&w));
    }
}
