//! Eviction latency: the time from a fault made by the peer to the pool's eviction event.
//!
//! One bench binary, four programs, a module each:
//! - [`cases`]: the criterion part (`cargo bench --bench eviction`), fault → eviction event
//!   latency per fault and number of idle members;
//! - [`one_off`]: the measurements printed before the criterion cases ("equivalents",
//!   "refill");
//! - [`scale`]: the scale run (`LIVEPOOL_SCALE=1 cargo bench --bench eviction`), no criterion;
//! - [`child`]: the scale run's ping server, this binary again in a child process.
//!
//! [`alloc`] counts the heap bytes the scale run reports; [`shared`] holds what several of
//! them use. Each module's docs say what it measures and how.

mod alloc;
mod cases;
mod child;
mod one_off;
mod scale;
mod shared;

use criterion::{Criterion, criterion_group};

use crate::cases::{Fault, eviction_case};
use crate::child::{CHILD_SERVER_ENV, child_server_main};
use crate::one_off::{equivalents, refill_one_off};
use crate::scale::scale_run;
use crate::shared::{fd_limit, max_k, open_fds};

fn bench_eviction(c: &mut Criterion) {
    let big = max_k();
    eprintln!(
        "eviction: K max = {big} (fd limit {}, {} open)",
        fd_limit(),
        open_fds()
    );
    equivalents();
    for k in [1000, big] {
        refill_one_off(k);
    }
    for k in [1, 1000, big] {
        for fault in [Fault::Fin, Fault::Rst, Fault::Bytes] {
            eviction_case(c, fault, k, false);
        }
        if k == 1 {
            eviction_case(c, Fault::Gone, 1, false);
        }
    }
    eviction_case(c, Fault::Fin, big, true);
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_eviction
}

fn main() {
    if std::env::var_os(CHILD_SERVER_ENV).is_some() {
        child_server_main();
        return;
    }
    if std::env::var_os("LIVEPOOL_SCALE").is_some() {
        scale_run();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
