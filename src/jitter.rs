//! The crate's one source of jitter: SplitMix64, seeded, so tests can fix or zero it.

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 53 random bits as a number in [0, 1).
fn to_unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A number in [0, 1) derived from `seed` and `id`: per-connection jitter, stable for a
/// connection's life.
pub(crate) fn unit(seed: u64, id: u64) -> f64 {
    to_unit(draw(seed, id))
}

/// `unit(seed, id) × ns`, in integers (no float conversions on the return path).
pub(crate) fn share_of(ns: u64, seed: u64, id: u64) -> u64 {
    ((u128::from(ns) * u128::from(draw(seed, id) >> 11)) >> 53) as u64
}

/// The 64 random bits of `id` under `seed`: the generator's output at step `id`.
fn draw(seed: u64, id: u64) -> u64 {
    mix(seed.wrapping_add(id.wrapping_mul(GOLDEN)))
}

/// A tiny, well-distributed PRNG; plenty for jitter.
#[derive(Debug)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_unit(&mut self) -> f64 {
        to_unit(self.next_u64())
    }
}

/// A random number from this thread's own generator (seeded at random once per thread): no
/// lock, no shared cache line; for choices that need no reproducible seed (load balancing).
pub(crate) fn thread_random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().build_hasher().finish(),
        );
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(GOLDEN);
        s.set(x);
        mix(x)
    })
}

/// A seed for a new pool's jitter that no other pool or process shares: std's
/// `RandomState` (keyed from the OS's randomness once per thread, then stepped on every
/// use) hashing a process-wide counter. Fleets of processes started together thus do not
/// expire connections, space heartbeats or probe a recovering endpoint in step.
pub(crate) fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static POOLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(POOLS.fetch_add(1, Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_seeds_differ() {
        let seeds: std::collections::HashSet<u64> = (0..1_000).map(|_| fresh_seed()).collect();
        assert_eq!(seeds.len(), 1_000);
    }

    #[test]
    fn unit_is_the_generator_seeded_one_step_back() {
        for (seed, id) in [(0, 1), (42, 7), (u64::MAX, 3)] {
            let mut g = SplitMix64(seed.wrapping_add((id - 1u64).wrapping_mul(GOLDEN)));
            assert_eq!(unit(seed, id), g.next_unit());
        }
    }

    #[test]
    fn units_are_in_range() {
        let mut g = SplitMix64(9);
        for id in 0..10_000 {
            let (a, b) = (unit(5, id), g.next_unit());
            assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
        }
    }

    #[test]
    fn share_of_is_unit_times_ns_in_integers() {
        for ns in [0, 1, 999, 30_000_000_000, u64::MAX] {
            for id in 0..1_000 {
                let s = share_of(ns, 17, id);
                assert!(s < ns.max(1), "share {s} of {ns}");
                let f = unit(17, id) * ns as f64;
                // The same 53 bits: equal up to the float's rounding.
                assert!((s as f64 - f).abs() <= f * 1e-12 + 1.0, "{s} vs {f}");
            }
        }
    }
}
