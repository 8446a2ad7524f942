//! The rows in turns of `redisbench`, `pgbench` and `pgsettle`: their options, what a
//! configuration's tasks count, its measured rounds, the order of each round, and the columns
//! of figures the tables share.
// Each binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use crate::report::{fmt_rate, fmt_us, median, num, percentile_us};

/// The options of the turns: `--rounds N`, `--round-ms MS`, `--warmup-ms MS`.
pub struct Turns {
    /// Measured rounds.
    pub rounds: usize,
    /// One configuration's turn in a round.
    pub round: Duration,
    /// One configuration's warm-up turn, before the rounds.
    pub warmup: Duration,
}

impl Turns {
    pub fn new(rounds: usize, round_ms: u64, warmup_ms: u64) -> Turns {
        Turns {
            rounds,
            round: Duration::from_millis(round_ms),
            warmup: Duration::from_millis(warmup_ms),
        }
    }

    /// Takes `flag` and its `value` if `flag` is one of these options; whether it was.
    pub fn set(&mut self, flag: &str, value: &str) -> Result<bool, String> {
        match flag {
            "--rounds" => self.rounds = num(flag, value)?.clamp(1, 1000) as usize,
            "--round-ms" => {
                self.round = Duration::from_millis(num(flag, value)?.clamp(10, 600_000))
            }
            "--warmup-ms" => self.warmup = Duration::from_millis(num(flag, value)?.min(600_000)),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `--tasks LIST`: comma-separated task counts, each clamped to `1..=max`.
pub fn tasks(flag: &str, value: &str, max: u64) -> Result<Vec<usize>, String> {
    value
        .split(',')
        .map(|v| num(flag, v).map(|n| n.clamp(1, max) as usize))
        .collect()
}

/// What the tasks of a configuration count besides their latencies. Each binary counts what
/// it has: no wrong reply's text in the PostgreSQL ones, no unclean returns for Redis.
#[derive(Default)]
pub struct Counts {
    pub requests: u64,
    pub wrong: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub first_wrong: Option<String>,
    /// livepool-postgres returns with a reply still owed or a transaction open.
    pub unclean: u64,
    /// Statements prepared on a cache miss (`pgbench`'s `prepared` rows).
    pub prepares: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.unclean += other.unclean;
        self.prepares += other.prepares;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        if self.first_wrong.is_none() {
            self.first_wrong = other.first_wrong;
        }
    }

    /// An error when none of a turn's requests succeeded; `what` is its configuration.
    pub fn any_succeeded(&self, what: &str) -> Result<(), String> {
        if self.requests == self.errors {
            return Err(format!(
                "{what}: no successful request ({})",
                self.first_error.as_deref().unwrap_or("no request ran")
            ));
        }
        Ok(())
    }
}

/// A configuration's measured rounds: the requests and the elapsed time of each.
#[derive(Default)]
pub struct Rounds(Vec<(u64, Duration)>);

impl Rounds {
    pub fn push(&mut self, requests: u64, elapsed: Duration) {
        self.0.push((requests, elapsed));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Requests/s in `round`.
    pub fn rate(&self, round: usize) -> f64 {
        let (n, d) = self.0[round];
        n as f64 / d.as_secs_f64()
    }

    /// The median of the rounds' requests/s.
    pub fn median_rate(&self) -> f64 {
        median((0..self.len()).map(|r| self.rate(r)).collect())
    }

    /// All requests over all measured time.
    pub fn overall_rate(&self) -> f64 {
        let n: u64 = self.0.iter().map(|r| r.0).sum();
        let d: Duration = self.0.iter().map(|r| r.1).sum();
        n as f64 / d.as_secs_f64()
    }

    /// Each round's requests/s over `other`'s in the same round.
    pub fn ratios(&self, other: &Rounds) -> Vec<f64> {
        (0..self.len())
            .map(|r| self.rate(r) / other.rate(r))
            .collect()
    }
}

/// Every order of `0..k` (k! of them), in lexicographic order.
pub fn permutations(k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for first in 0..k {
        for rest in permutations(k - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|x| if x >= first { x + 1 } else { x }));
            out.push(p);
        }
    }
    out
}

/// The turns of one round over `n` configurations in groups of `order.len()` (those that run
/// back to back): the indices of each group in `order`.
pub fn round(n: usize, order: &[usize]) -> impl Iterator<Item = usize> + '_ {
    (0..n)
        .step_by(order.len())
        .flat_map(move |first| order.iter().map(move |&j| first + j))
}

/// The columns of figures after a configuration's own ones, for [`figures`].
pub const FIGURES: [&str; 8] = [
    "req/s (median of rounds)",
    "req/s (overall)",
    "p50 µs",
    "p99 µs",
    "p99.9 µs",
    "requests",
    "wrong",
    "errors",
];

/// A configuration's [`FIGURES`]; `latencies` (ns) sorted.
pub fn figures(rounds: &Rounds, latencies: &[u64], counts: &Counts) -> Vec<String> {
    vec![
        fmt_rate(rounds.median_rate()),
        fmt_rate(rounds.overall_rate()),
        fmt_us(percentile_us(latencies, 0.50)),
        fmt_us(percentile_us(latencies, 0.99)),
        fmt_us(percentile_us(latencies, 0.999)),
        counts.requests.to_string(),
        counts.wrong.to_string(),
        counts.errors.to_string(),
    ]
}
