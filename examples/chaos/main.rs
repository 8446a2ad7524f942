//! Chaos demo: under steady fault injection the pool never hands out a connection the kernel
//! already knows is dead, never leaks one caller's response to another, and reports how fast
//! it evicts each kind of dead connection.
//!
//! ```text
//! cargo run --release --example chaos -- [--duration SECS] [--rate REQS_PER_SEC] [--tasks N]
//!     [--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N]
//!     [--endpoints N]
//! ```
//!
//! An embedded loopback server speaks a tiny protocol. A request is 16 bytes,
//! `[b'R', 0 × 7, token: u64 big-endian]`, answered by the same 16 bytes. A heartbeat is
//! livepool's 8-byte [`FramePing`] frame: a ping (first byte `0x01`) is answered by its
//! pong (`0x02`, same sequence number). The first byte tells the two apart.
//!
//! Every `--fault-every` ms a scheduler picks a random server-side connection, idle or busy,
//! and applies one of:
//! - `fin`: close it; `rst`: reset it (SO_LINGER 0, then close); `garbage`: write 3 bytes;
//! - `stall`: stop reading and answering but keep it open for 3 s (no probe can see this: only
//!   a heartbeat timeout or the request deadline finds it);
//! - `late`: answer its next request after the client's deadline (the cancelled-request leak);
//! - `restart`: close the listener and every connection for 1 s, then listen on the same port
//!   again (at most one every 4 s, none in the first or last 2 s); meanwhile the circuit
//!   breaker opens and `get()` fails fast.
//!
//! The pool: max_size 16, min_idle 4, a `FramePing` every 500 ms with a 200 ms timeout,
//! reap_interval 100 ms, breaker open for 200–500 ms. `--tasks` workload tasks share
//! `--rate` requests per second, each request with a 300 ms deadline (a timeout drops the
//! `Conn` mid-read, which the pool must then discard), and check the echoed token.
//!
//! It prints a progress line every second, then a table: requests by outcome, faults, stale
//! handouts, leaks, evictions by reason with the pool's detection → removal latency, and
//! evictions by fault with the time from fault to removal. It exits non-zero on any
//! - **stale handout**: `get()` returned a connection that the server closed, reset or sent
//!   garbage on more than 5 ms earlier, and a peek right after checkout still shows it (the
//!   peek tells it apart from a new connection that reuses the port);
//! - **leak**: a well-formed response carrying another request's token.
//!
//! `--endpoints N` (1 to 8, default 1: the single pool above) runs N servers on 127.0.0.2,
//! 127.0.0.3, … and the workload through a [`Balancer`] over them: each endpoint's pool has
//! the settings above, plus outlier ejection after 3 consecutive failures for 1 s, 2 s, …
//! (at most 4 s), at most half of the endpoints at once. Each fault hits a connection of a
//! random server, and `restart` becomes an **endpoint outage**: one random server closes its
//! listener and every connection and refuses connects for 3 s (at most one every 8 s, none
//! in the first 2 s or the last 8 s), so that its breaker opens, the balancer ejects it and
//! sends its traffic to the others, and after the outage it returns and recovers. The
//! progress line adds each endpoint's requests in the last second and whether it is ejected,
//! its breaker open or its server down; the report adds a table per endpoint (requests,
//! connections, evictions, breaker transitions, ejections) and the balancer's events
//! (ejections with their length and last error, returns, recoveries) and breaker transitions
//! next to the outages.
//! The run also fails if an outage happened but no ejection was ever seen.
//!
//! The code, a module per job: `opts` (the command line), `servers` (the embedded servers and
//! the faults they apply), `faults` (the kinds of fault and their scheduler), `workload` (the
//! pool or balancer and the tasks with their oracles), `report` (the progress line's cells, the
//! tables and the verdict's inputs), `state` (what they all share).

mod faults;
mod opts;
mod report;
mod servers;
mod state;
mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livepool::{Balancer, BalancerEventKind, FramePing, Pool};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::faults::inject_faults;
use crate::opts::{USAGE, parse_args};
use crate::report::{Totals, collect, endpoint_cell, gather, report, report_endpoints};
use crate::servers::{listen, server};
use crate::state::{Chaos, OUTAGE, Server};
use crate::workload::{Client, ejection, settings, worker};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chaos: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let end = start + opts.duration;
    let several = opts.endpoints > 1;
    let (mut servers, mut listeners, mut restart_txs, mut restart_rxs) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..opts.endpoints {
        // One endpoint: 127.0.0.1 as ever; several: 127.0.0.2, 127.0.0.3, …
        let ip = if several { 2 + i as u8 } else { 1 };
        let listener = listen(SocketAddr::from(([127, 0, 0, ip], 0)), end)
            .await
            .expect("cannot listen on loopback");
        servers.push(Server::new(listener.local_addr().expect("bound")));
        listeners.push(listener);
        let (tx, rx) = mpsc::channel(1);
        restart_txs.push(tx);
        restart_rxs.push(rx);
    }
    let chaos = Arc::new(Chaos {
        opts: opts.clone(),
        end,
        servers,
        injected: Default::default(),
        outages: Mutex::default(),
        next_token: AtomicU64::new(1),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failures: Mutex::default(),
        stale: Mutex::default(),
        leaks: AtomicU64::new(0),
    });
    for (i, (l, rx)) in listeners.into_iter().zip(restart_rxs).enumerate() {
        tokio::spawn(server(chaos.clone(), i, l, rx));
    }
    let names: Vec<&str> = chaos.servers.iter().map(|s| s.name.as_str()).collect();

    let (client, pools) = if several {
        let balancer = Balancer::builder()
            .config(settings())
            .protocol(FramePing::new())
            .endpoints(chaos.servers.iter().map(|s| s.addr))
            .ejection(Some(ejection()))
            .build()
            .expect("valid configuration");
        let pools: Vec<Pool<FramePing>> = names
            .iter()
            .map(|n| balancer.pool(n).expect("an endpoint per server"))
            .collect();
        (Client::Balancer(balancer), pools)
    } else {
        let pool = Pool::builder(chaos.servers[0].addr)
            .config(settings())
            .protocol(FramePing::new())
            .build()
            .expect("valid configuration");
        (Client::Pool(pool.clone()), vec![pool])
    };
    let target = if several {
        format!("a balancer over {}", names.join(", "))
    } else {
        format!("server {}", names[0])
    };
    let fault_names: Vec<_> = opts.faults.iter().map(|f| f.name()).collect();
    println!(
        "livepool chaos: {target}, {:?}, {} tasks, {} req/s, a fault every {:?} from [{}], seed {}",
        opts.duration,
        opts.tasks,
        opts.rate,
        opts.fault_every,
        fault_names.join(","),
        opts.seed
    );
    if several {
        println!(
            "  ejection: {:?}; restart = a {OUTAGE:?} outage of one server",
            ejection()
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let collectors: Vec<_> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| tokio::spawn(collect(p.events(), chaos.clone(), i, stop_rx.clone())))
        .collect();
    let balancer_events = match &client {
        Client::Balancer(b) => Some(tokio::spawn(gather(b.events(), stop_rx.clone()))),
        Client::Pool(_) => None,
    };
    let breaker_events: Vec<_> = pools
        .iter()
        .filter(|_| several)
        .map(|p| tokio::spawn(gather(p.breaker_events(), stop_rx.clone())))
        .collect();
    tokio::spawn(inject_faults(chaos.clone(), restart_txs));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..opts.tasks {
        workers.spawn(worker(client.clone(), chaos.clone(), i));
    }

    let mut progress =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_ok = vec![0; pools.len()];
    while Instant::now() < chaos.end {
        tokio::select! {
            _ = progress.tick() => {}
            _ = sleep_until(chaos.end) => break,
        }
        let faults: u64 = chaos.injected.iter().map(|a| a.load(Relaxed)).sum();
        let head = format!(
            "{:>5.1}s  ok {:>7}  failed {:>5}  faults {:>4}",
            start.elapsed().as_secs_f64(),
            chaos.ok.load(Relaxed),
            chaos.failed.load(Relaxed),
            faults,
        );
        let oracles = format!(
            "stale {} leaks {}",
            chaos.stale.lock().unwrap().len(),
            chaos.leaks.load(Relaxed)
        );
        match &client {
            Client::Pool(pool) => {
                let (st, stats) = (pool.status(), pool.statistics());
                println!(
                    "{head}  evictions {:>4}  pool {:>2} ({:>2} idle)  breaker {:<9}  {oracles}",
                    stats.evicted_total(),
                    st.size,
                    st.idle,
                    st.breaker.as_str(),
                );
            }
            Client::Balancer(b) => {
                let eps = b.endpoints();
                let evictions: u64 = eps.iter().map(|e| e.statistics.evicted_total()).sum();
                let each: Vec<_> = eps
                    .iter()
                    .zip(&chaos.servers)
                    .zip(&mut last_ok)
                    .map(|((e, srv), last)| {
                        let ok = srv.ok.load(Relaxed);
                        let per_s = ok - std::mem::replace(last, ok);
                        endpoint_cell(e, srv, per_s)
                    })
                    .collect();
                println!(
                    "{head}  evictions {evictions:>4}  {oracles}  | {}",
                    each.join(" | ")
                );
            }
        }
    }
    while workers.join_next().await.is_some() {}
    let (stats, endpoints) = match &client {
        Client::Pool(pool) => (vec![pool.statistics()], vec![]),
        Client::Balancer(b) => {
            let eps = b.endpoints();
            (eps.iter().map(|e| e.statistics.clone()).collect(), eps)
        }
    };
    let _ = stop_tx.send(true);
    let (mut evictions, mut lagged) = (Vec::new(), 0);
    for c in collectors {
        let (ev, n) = c.await.expect("collector");
        evictions.extend(ev);
        lagged += n;
    }
    let (events, mut events_lagged) = match balancer_events {
        Some(c) => c.await.expect("balancer event collector"),
        None => (Vec::new(), 0),
    };
    let mut breaker = Vec::new();
    for c in breaker_events {
        let (ev, n) = c.await.expect("breaker event collector");
        breaker.extend(ev);
        events_lagged += n;
    }
    pools.iter().for_each(Pool::close);

    let secs = start.elapsed().as_secs_f64();
    report(&chaos, &Totals::of(&stats), &evictions, lagged, secs);
    let (stale, leaks) = (chaos.stale.lock().unwrap().len(), chaos.leaks.load(Relaxed));
    let mut fail = Vec::new();
    if stale > 0 || leaks > 0 {
        fail.push(format!("{stale} stale handouts, {leaks} leaks"));
    }
    let ejections = events
        .iter()
        .filter(|e| matches!(e.kind, BalancerEventKind::Ejected { .. }))
        .count();
    if several {
        let outages = report_endpoints(&chaos, &endpoints, &events, &breaker, events_lagged, start);
        if outages > 0 && ejections == 0 {
            fail.push(format!(
                "{outages} endpoint outages but no ejection: outlier ejection is broken"
            ));
        }
    }
    if fail.is_empty() {
        let ejected = match ejections {
            0 => String::new(),
            n => format!(", {n} ejections"),
        };
        println!("\nPASS: no stale handouts, no leaks{ejected}");
        ExitCode::SUCCESS
    } else {
        println!("\nFAIL: {}", fail.join("; "));
        ExitCode::FAILURE
    }
}
