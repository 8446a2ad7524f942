//! `get()` latency against a down endpoint: a loopback port with nothing listening, so every
//! connect attempt fails at once with `ECONNREFUSED`.
//!
//! One `BenchmarkId` per pool, `iter_custom`, each iteration one `get()` that must fail:
//! - `livepool-open`: the breaker (threshold 3, open for 10 min so that no half-open probe
//!   falls inside the run) is opened before timing by three refused connects; every timed
//!   `get()` must fail with "circuit open" and no connect may be attempted while it is open;
//! - `livepool-no-breaker`: `.breaker(None)`: every `get()` tries to connect (reference);
//! - `deadpool`: deadpool 0.13 whose `create` is `tokio::net::TcpStream::connect`;
//! - `bb8`: bb8 0.9, same connect. bb8's `get()` does not return a connect error: it waits for
//!   a connection until `connection_timeout` (default 30 s), whatever `retry_connection` says.
//!   It is measured with `connection_timeout(100 ms)` and `retry_connection(false)`, so each
//!   `get()` takes the timeout; with the defaults it would take 30 s.
//!
//! Every single `get()` time is also kept and p50 / p99 / max printed on stderr (warm-up
//! included). A blackholed endpoint is not measured here (with the breaker open, livepool does
//! not connect at all, so the open-breaker number is the same; deadpool and bb8 would take
//! their connect or wait timeout).
//!
//! Run: `cargo bench --bench breaker`. Results: /tmp/bench-results-eviction.md.

use livepool_testkit::bench::*;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use livepool::BreakerConfig;
use tokio::net::TcpStream;

/// Bound on one `get()`: a hang fails the bench instead of stalling it.
const GET_DEADLINE: Duration = Duration::from_secs(5);

/// A loopback port nobody listens on (bound once to get a free port, then closed).
fn down_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[derive(Debug)]
struct Bb8Manager {
    addr: SocketAddr,
}

impl bb8::ManageConnection for Bb8Manager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<TcpStream> {
        TcpStream::connect(self.addr).await
    }

    async fn is_valid(&self, _: &mut TcpStream) -> io::Result<()> {
        Ok(())
    }

    fn has_broken(&self, _: &mut TcpStream) -> bool {
        false
    }
}

enum AnyPool {
    LiveOpen(livepool::Pool),
    LiveNoBreaker(livepool::Pool),
    Dead(deadpool::managed::Pool<NoopManager>),
    Bb8(bb8::Pool<Bb8Manager>),
}

impl AnyPool {
    /// One `get()`; panics if it succeeds (nothing listens) or, for the open breaker, if it
    /// fails for another reason than the open circuit.
    async fn get_fails(&self) {
        match self {
            AnyPool::LiveOpen(p) => {
                let e = p.get().await.expect_err("get succeeded on a down port");
                assert!(e.is_circuit_open(), "expected circuit open, got {e}");
            }
            AnyPool::LiveNoBreaker(p) => {
                p.get().await.expect_err("get succeeded on a down port");
            }
            AnyPool::Dead(p) => {
                p.get().await.expect_err("get succeeded on a down port");
            }
            AnyPool::Bb8(p) => {
                p.get().await.expect_err("get succeeded on a down port");
            }
        }
    }
}

fn bench_breaker(c: &mut Criterion) {
    let addr = down_addr();
    eprintln!("breaker: down endpoint {addr}");
    let mut group = c.benchmark_group("get_down");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for name in ["livepool-open", "livepool-no-breaker", "deadpool", "bb8"] {
        let rt = current_thread();
        let pool = rt.block_on(async {
            match name {
                "livepool-open" => {
                    let p = livepool::Pool::builder(addr)
                        .breaker(Some(
                            BreakerConfig::new()
                                .failure_threshold(3)
                                .open_for(Duration::from_secs(600))
                                .max_open_for(Duration::from_secs(600)),
                        ))
                        .build()
                        .expect("livepool");
                    // Open the breaker: refused connects until it says "circuit open".
                    let mut opened = false;
                    for _ in 0..10 {
                        let e = p.get().await.expect_err("nothing listens");
                        if e.is_circuit_open() {
                            opened = true;
                            break;
                        }
                    }
                    assert!(opened, "breaker did not open after 10 refused connects");
                    AnyPool::LiveOpen(p)
                }
                "livepool-no-breaker" => AnyPool::LiveNoBreaker(
                    livepool::Pool::builder(addr)
                        .breaker(None)
                        .build()
                        .expect("livepool"),
                ),
                "deadpool" => AnyPool::Dead(
                    deadpool::managed::Pool::builder(NoopManager { addr })
                        .max_size(16)
                        .build()
                        .expect("deadpool"),
                ),
                _ => AnyPool::Bb8(
                    bb8::Pool::builder()
                        .max_size(16)
                        .connection_timeout(Duration::from_millis(100))
                        .retry_connection(false)
                        .build_unchecked(Bb8Manager { addr }),
                ),
            }
        });
        let errors_before = match &pool {
            AnyPool::LiveOpen(p) | AnyPool::LiveNoBreaker(p) => p.statistics().connect_errors,
            _ => 0,
        };
        let mut lat: Vec<Duration> = Vec::with_capacity(1 << 16);
        group.bench_function(BenchmarkId::new(name, "refused"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        tokio::time::timeout(GET_DEADLINE, pool.get_fails())
                            .await
                            .expect("get() exceeded its deadline");
                        let d = start.elapsed();
                        total += d;
                        lat.push(d);
                    }
                    total
                })
            })
        });
        lat.sort_unstable();
        let pct = |p: f64| {
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i].as_secs_f64() * 1e6
        };
        let connects = match &pool {
            AnyPool::LiveOpen(p) | AnyPool::LiveNoBreaker(p) => {
                format!(
                    " connect_attempts_during_run={}",
                    p.statistics().connect_errors - errors_before
                )
            }
            _ => String::new(),
        };
        eprintln!(
            "PCT get_down/{name}: n={} p50={:.2}us p99={:.2}us max={:.2}us{connects}",
            lat.len(),
            pct(0.5),
            pct(0.99),
            lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        );
        rt.block_on(async move { drop(pool) });
        drop(rt);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_breaker
}
criterion_main!(benches);
