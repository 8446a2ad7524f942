//! Which endpoint to try: pure functions from what each endpoint shows ([`Observed`]) and a
//! random source (an `FnMut() -> u64`: `jitter::thread_random` in service, a seeded
//! `jitter::SplitMix64` in the tests below) to an index, or for a key to an order.
//!
//! Unkeyed (`get()`): the power of two choices. Two endpoints drawn at random among those
//! not yet tried for this `get()` (and, while there are any, among those whose breaker would
//! let a connect through: an endpoint whose open period has passed is a candidate again, and
//! its next connect is the breaker's probe), and the one with the lower load wins: first an
//! endpoint with an idle member (a checkout there needs no connect), then the fewer
//! connections in use plus callers waiting. Two random choices keep most of the benefit of
//! always taking the least loaded (the classic result: the maximum load drops from
//! log n / log log n to log log n) without every caller piling onto the same endpoint between
//! two snapshots. An ejected endpoint is a candidate only once every endpoint in service has
//! been tried.
//!
//! Keyed (`get_for`, for sharded caches): rendezvous hashing. Each endpoint scores
//! `hash(endpoint, key)` and the key goes to the highest score among the endpoints whose
//! breaker lets a connect through; when that one is down, to the next. So a key moves only
//! when its own endpoint is down (or removed), and comes back when it recovers; the keys of
//! the others stay where they are. The hash is std's SipHash with fixed keys: stable within
//! one build, not across Rust releases (keys move after an upgrade, as after a restart of a
//! cache ring).
//!
//! Endpoints are read through a trait, not copied into a table first, so that a `get()`
//! reads only the two it draws: an atomic load each for the ejection and (while closed) the
//! breaker, plus their pools' occupancy (one uncontended lock each), and allocates nothing
//! unless a choice has to be remade.

use std::hash::{Hash, Hasher};

/// What selection reads of one endpoint.
pub(super) trait Observed {
    /// The endpoint's name (what rendezvous hashing scores).
    fn name(&self) -> &str;
    /// Taken out of selection by outlier ejection.
    fn is_ejected(&self) -> bool;
    /// Its breaker would refuse a connect now.
    fn breaker_refuses(&self) -> bool;
    /// Lower is better: no idle member (a checkout would connect or wait), then members in
    /// use plus callers waiting.
    fn load(&self) -> (bool, usize);

    /// In service and its breaker lets a connect through.
    fn available(&self) -> bool {
        !self.is_ejected() && !self.breaker_refuses()
    }
}

/// Two distinct random indices below `n` (n ≥ 2), from one draw of `rng`.
pub(super) fn two_random(n: usize, mut rng: impl FnMut() -> u64) -> (usize, usize) {
    let r = rng();
    let a = ((r & 0xffff_ffff) % n as u64) as usize;
    let b = ((r >> 32) % (n as u64 - 1)) as usize;
    (a, if b >= a { b + 1 } else { b })
}

/// The first choice of a `get()` without allocating: two random endpoints, both available,
/// the less loaded wins. `None` when the fast path does not apply (one of them unavailable,
/// or fewer than two endpoints and that one unavailable): [`pick`] decides then.
pub(super) fn pick_two<E: Observed>(entries: &[E], rng: impl FnMut() -> u64) -> Option<usize> {
    match entries.len() {
        0 => None,
        1 => entries[0].available().then_some(0),
        n => {
            let (a, b) = two_random(n, rng);
            if !entries[a].available() || !entries[b].available() {
                return None;
            }
            Some(less_loaded(entries, a, b))
        }
    }
}

/// The endpoint to try next, or `None` when all were tried: two random choices among the
/// untried endpoints in service whose breaker lets a connect through; failing that, the
/// untried in service (their breakers fail fast, so that the error names every one); last,
/// the ejected ones.
pub(super) fn pick<E: Observed>(
    entries: &[E],
    tried: &[bool],
    rng: impl FnMut() -> u64,
) -> Option<usize> {
    let untried = || (0..entries.len()).filter(|&i| !tried[i]);
    let mut candidates: Vec<usize> = untried().filter(|&i| entries[i].available()).collect();
    if candidates.is_empty() {
        candidates = untried().filter(|&i| !entries[i].is_ejected()).collect();
    }
    if candidates.is_empty() {
        candidates = untried().collect();
    }
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let (a, b) = two_random(n, rng);
            let (a, b) = (candidates[a], candidates[b]);
            Some(less_loaded(entries, a, b))
        }
    }
}

/// The order in which `get_for(key)` tries the endpoints: those available first, then the
/// rest, each group by the key's rendezvous score, highest first.
pub(super) fn key_order<E: Observed, K: Hash + ?Sized>(entries: &[E], key: &K) -> Vec<usize> {
    let mut order: Vec<(u64, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (rendezvous(e.name(), key), i))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let (up, down): (Vec<usize>, Vec<usize>) = order
        .into_iter()
        .map(|(_, i)| i)
        .partition(|&i| entries[i].available());
    let mut order = up;
    order.extend(down);
    order
}

/// The rendezvous score of `key` on `endpoint`.
pub(super) fn rendezvous<K: Hash + ?Sized>(endpoint: &str, key: &K) -> u64 {
    // `new()` is keyed the same in every instance (unlike a `HashMap`'s `RandomState`).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    endpoint.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// The better of two choices: one with an idle member first, then fewer in use plus waiting
/// (`a` on a tie).
fn less_loaded<E: Observed>(entries: &[E], a: usize, b: usize) -> usize {
    if entries[b].load() < entries[a].load() {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jitter::SplitMix64;

    /// An endpoint as plain numbers.
    #[derive(Clone, Debug)]
    struct Fake {
        name: String,
        ejected: bool,
        open: bool,
        load: (bool, usize),
    }

    impl Observed for Fake {
        fn name(&self) -> &str {
            &self.name
        }
        fn is_ejected(&self) -> bool {
            self.ejected
        }
        fn breaker_refuses(&self) -> bool {
            self.open
        }
        fn load(&self) -> (bool, usize) {
            self.load
        }
    }

    /// `n` healthy endpoints with an idle member and nothing in use.
    fn fakes(n: usize) -> Vec<Fake> {
        (0..n)
            .map(|i| Fake {
                name: format!("10.0.0.{i}:6379"),
                ejected: false,
                open: false,
                load: (false, 0),
            })
            .collect()
    }

    /// How often each endpoint is picked first in `rounds` draws.
    fn first_counts(e: &[Fake], rounds: usize) -> Vec<usize> {
        let mut g = SplitMix64(7);
        let mut seen = vec![0; e.len()];
        for _ in 0..rounds {
            if let Some(i) = pick_two(e, || g.next_u64()) {
                seen[i] += 1;
            }
        }
        seen
    }

    /// How often each endpoint is picked by `pick` with nothing tried, in `rounds` draws.
    fn next_counts(e: &[Fake], rounds: usize) -> Vec<usize> {
        let mut g = SplitMix64(11);
        let tried = vec![false; e.len()];
        let mut seen = vec![0; e.len()];
        for _ in 0..rounds {
            seen[pick(e, &tried, || g.next_u64()).unwrap()] += 1;
        }
        seen
    }

    #[test]
    fn two_random_are_distinct_and_cover_every_pair() {
        let mut g = SplitMix64(1);
        for n in [2, 3, 5] {
            let mut pairs = vec![vec![0; n]; n];
            for _ in 0..100 * n * n {
                let (a, b) = two_random(n, || g.next_u64());
                assert!(a < n && b < n && a != b, "{a} {b} of {n}");
                pairs[a][b] += 1;
            }
            for (a, row) in pairs.iter().enumerate() {
                for (b, &k) in row.iter().enumerate() {
                    assert_eq!(k == 0, a == b, "pair ({a}, {b}) of {n}: {k}");
                }
            }
        }
    }

    #[test]
    fn equal_loads_spread_over_every_endpoint() {
        let e = fakes(3);
        for seen in [first_counts(&e, 300), next_counts(&e, 300)] {
            // Roughly a third each.
            assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        }
    }

    #[test]
    fn the_less_loaded_of_the_two_wins() {
        // Two endpoints: both are always drawn, so the lighter always wins.
        let mut e = fakes(2);
        e[0].load = (false, 5);
        e[1].load = (false, 2);
        assert_eq!(first_counts(&e, 100), [0, 100]);
        assert_eq!(next_counts(&e, 100), [0, 100]);
        // An idle member beats fewer in use: a checkout there needs no connect.
        e[0].load = (false, 9);
        e[1].load = (true, 0);
        assert_eq!(first_counts(&e, 100), [100, 0]);
        assert_eq!(next_counts(&e, 100), [100, 0]);
        // Among three, the heaviest wins no draw: it loses to either other one.
        let mut e = fakes(3);
        e[0].load = (true, 4);
        e[1].load = (false, 3);
        e[2].load = (false, 1);
        let seen = first_counts(&e, 300);
        assert_eq!(seen[0], 0, "{seen:?}");
        // The lightest wins every draw it is in (two pairs of three).
        assert!(seen[2] > seen[1], "{seen:?}");
        assert_eq!(next_counts(&e, 300)[0], 0);
    }

    #[test]
    fn ejected_endpoints_are_skipped_while_others_are_untried() {
        let mut e = fakes(3);
        e[1].ejected = true;
        // The fast path gives up on a draw with the ejected one; `pick` never takes it.
        let seen = first_counts(&e, 300);
        assert_eq!(seen[1], 0, "{seen:?}");
        assert!(seen.iter().sum::<usize>() < 300, "{seen:?}");
        let seen = next_counts(&e, 300);
        assert_eq!(seen[1], 0, "{seen:?}");
        assert!(seen[0] > 50 && seen[2] > 50, "{seen:?}");
        // Even when it is the least loaded.
        e[1].load = (false, 0);
        e[0].load = (true, 9);
        e[2].load = (true, 9);
        assert_eq!(next_counts(&e, 300)[1], 0);
        // Once the others are tried, the ejected one is the last resort.
        let mut g = SplitMix64(3);
        assert_eq!(pick(&e, &[true, false, true], || g.next_u64()), Some(1));
    }

    #[test]
    fn open_breakers_are_skipped_before_ejected_endpoints() {
        let mut e = fakes(4);
        e[0].open = true;
        e[1].ejected = true;
        let seen = next_counts(&e, 400);
        assert_eq!((seen[0], seen[1]), (0, 0), "{seen:?}");
        assert_eq!(first_counts(&e, 400)[..2], [0, 0]);
        // With the available ones tried: the open breaker (it fails fast, so the error names
        // this endpoint too) before the ejected one.
        let mut g = SplitMix64(5);
        let mut tried = [false, false, true, true];
        assert_eq!(pick(&e, &tried, || g.next_u64()), Some(0));
        tried[0] = true;
        assert_eq!(pick(&e, &tried, || g.next_u64()), Some(1));
        tried[1] = true;
        assert_eq!(pick(&e, &tried, || g.next_u64()), None);
    }

    #[test]
    fn every_endpoint_ejected_tries_them_all() {
        let mut e = fakes(3);
        for f in &mut e {
            f.ejected = true;
        }
        assert_eq!(first_counts(&e, 100), [0, 0, 0]);
        let mut g = SplitMix64(9);
        let mut tried = [false; 3];
        for _ in 0..3 {
            let i = pick(&e, &tried, || g.next_u64()).unwrap();
            assert!(!tried[i]);
            tried[i] = true;
        }
        assert_eq!(pick(&e, &tried, || g.next_u64()), None);
        // And by key: every one, in the key's order.
        let mut order = key_order(&e, "k");
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn no_endpoint_no_choice() {
        let e: Vec<Fake> = Vec::new();
        let mut rng = || -> u64 { unreachable!("nothing to draw from") };
        assert_eq!(pick_two(&e, &mut rng), None);
        assert_eq!(pick(&e, &[], &mut rng), None);
        assert!(key_order(&e, "k").is_empty());
    }

    #[test]
    fn one_endpoint_is_the_choice_without_a_draw() {
        let mut e = fakes(1);
        let mut rng = || -> u64 { unreachable!("one endpoint needs no draw") };
        assert_eq!(pick_two(&e, &mut rng), Some(0));
        assert_eq!(pick(&e, &[false], &mut rng), Some(0));
        assert_eq!(pick(&e, &[true], &mut rng), None);
        // Unavailable: not on the fast path, still the general choice (it names its error).
        e[0].open = true;
        assert_eq!(pick_two(&e, &mut rng), None);
        assert_eq!(pick(&e, &[false], &mut rng), Some(0));
        e[0].ejected = true;
        assert_eq!(pick(&e, &[false], &mut rng), Some(0));
        assert_eq!(key_order(&e, "k"), [0]);
    }

    /// The endpoint that owns `key` (the first of its order), by name.
    fn owner<'a>(e: &'a [Fake], key: &str) -> &'a str {
        &e[key_order(e, key)[0]].name
    }

    #[test]
    fn a_key_keeps_its_endpoint() {
        let e = fakes(5);
        let mut reversed = e.clone();
        reversed.reverse();
        let mut owners = std::collections::HashSet::new();
        for k in 0..200 {
            let key = format!("user:{k}");
            assert_eq!(key_order(&e, &key), key_order(&e, &key));
            // Where an endpoint sits in the list does not matter, only its name.
            assert_eq!(owner(&e, &key), owner(&reversed, &key));
            owners.insert(owner(&e, &key).to_string());
        }
        assert_eq!(owners.len(), 5, "every endpoint owns some keys");
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let e = fakes(5);
        let gone = e[2].name.clone();
        let rest: Vec<Fake> = e.iter().filter(|f| f.name != gone).cloned().collect();
        let mut moved = 0;
        for k in 0..500 {
            let key = format!("user:{k}");
            let (before, after) = (owner(&e, &key), owner(&rest, &key));
            if before == gone {
                moved += 1;
                // To the key's second choice.
                assert_eq!(after, e[key_order(&e, &key)[1]].name);
            } else {
                assert_eq!(before, after, "{key} moved");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn a_key_skips_its_endpoint_while_down_and_returns() {
        let mut e = fakes(4);
        let key = "session:9";
        let order = key_order(&e, key);
        let downs: [fn(&mut Fake); 2] = [|f| f.open = true, |f| f.ejected = true];
        for down in downs {
            let mut d = e.clone();
            down(&mut d[order[0]]);
            // The others keep their order; the owner goes last, still tried.
            let mut expected = order[1..].to_vec();
            expected.push(order[0]);
            assert_eq!(key_order(&d, key), expected);
        }
        // A key owned elsewhere does not move when this endpoint goes down.
        let other = (0..)
            .map(|k| format!("other:{k}"))
            .find(|k| key_order(&e, k)[0] != order[0])
            .unwrap();
        let before = owner(&e, &other).to_string();
        e[order[0]].open = true;
        assert_eq!(owner(&e, &other), before);
        e[order[0]].open = false;
        assert_eq!(key_order(&e, key), order);
    }
}
