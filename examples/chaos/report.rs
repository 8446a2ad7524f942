//! What is printed: the eviction events matched with their faults, the progress line's
//! endpoint cells, the final tables and the balancer's and breakers' events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use livepool::{
    BalancerEvent, BalancerEventKind, BreakerEvent, BreakerState, EndpointStatus, Events,
    EventsError, EvictReason, Statistics,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::faults::Fault;
use crate::state::{Chaos, Outage, Server};

/// One eviction event, matched with the fault that caused it (if any).
pub(crate) struct Eviction {
    reason: EvictReason,
    /// Detection → removal, as the pool reports it.
    latency: Duration,
    /// The server's last fault on this connection, and fault → removal.
    fault: Option<(Fault, Duration)>,
}

/// Collects server `srv`'s eviction events until `stop`; returns them and the number missed.
pub(crate) async fn collect(
    mut events: Events,
    chaos: Arc<Chaos>,
    srv: usize,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Eviction>, u64) {
    let (mut out, mut lagged) = (Vec::new(), 0);
    let faulted = &chaos.servers[srv].faulted;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(ev) => {
                let fault = ev
                    .local_addr
                    .and_then(|a| faulted.lock().unwrap().get(&a).copied());
                let caused = fault
                    .filter(|&(_, at)| at <= ev.evicted_at)
                    .map(|(f, at)| (f, ev.evicted_at - at));
                out.push(Eviction {
                    reason: ev.reason,
                    latency: ev.latency(),
                    fault: caused,
                });
            }
            Err(EventsError::Lagged(n)) => lagged += n,
            Err(_) => break,
        }
    }
    (out, lagged)
}

fn fmt_d(d: Duration) -> String {
    match d.as_secs_f64() {
        s if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        s if s < 1.0 => format!("{:.1}ms", s * 1e3),
        s => format!("{s:.2}s"),
    }
}

/// "p50 p99 max" cells of a latency sample.
fn cells(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return String::new();
    }
    v.sort();
    let at = |q: f64| fmt_d(v[((v.len() - 1) as f64 * q).round() as usize]);
    format!("{:>9} {:>9} {:>9}", at(0.5), at(0.99), at(1.0))
}

/// "a 1, b 2"
fn joined<K: std::fmt::Display>(items: impl IntoIterator<Item = (K, u64)>) -> String {
    let v: Vec<_> = items.into_iter().map(|(k, n)| format!("{k} {n}")).collect();
    v.join(", ")
}

/// The endpoints' statistics added up (evictions by reason in `EvictReason::ALL` order).
pub(crate) struct Totals {
    created: u64,
    connect_errors: u64,
    checkouts: u64,
    breaker_transitions: u64,
    /// Each endpoint's breaker state.
    breaker: String,
    evictions: Vec<(EvictReason, u64)>,
}

impl Totals {
    pub(crate) fn of(stats: &[Statistics]) -> Self {
        let sum = |f: fn(&Statistics) -> u64| stats.iter().map(f).sum();
        let states: Vec<_> = stats.iter().map(|s| s.breaker_state.as_str()).collect();
        Totals {
            created: sum(|s| s.created),
            connect_errors: sum(|s| s.connect_errors),
            checkouts: sum(|s| s.checkouts),
            breaker_transitions: sum(|s| s.breaker_transitions),
            breaker: states.join(", "),
            evictions: EvictReason::ALL
                .into_iter()
                .map(|r| (r, stats.iter().map(|s| s.evicted(r)).sum()))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

pub(crate) fn report(
    chaos: &Chaos,
    stats: &Totals,
    evictions: &[Eviction],
    lagged: u64,
    secs: f64,
) {
    let (ok, failed) = (chaos.ok.load(Relaxed), chaos.failed.load(Relaxed));
    let injected = Fault::ALL.map(|f| (f.name(), chaos.injected[f as usize].load(Relaxed)));
    println!("\n=== livepool chaos: {secs:.1} s ===");
    println!("requests ok         {ok} ({:.0}/s)", ok as f64 / secs);
    println!(
        "requests failed     {failed} [{}]",
        joined(chaos.failures.lock().unwrap().clone())
    );
    println!("faults injected     {}", joined(injected));
    let stale = chaos.stale.lock().unwrap();
    println!("STALE handouts      {}", stale.len());
    stale.iter().for_each(|s| println!("    {s}"));
    println!("LEAKS               {}", chaos.leaks.load(Relaxed));
    println!(
        "connections         created {}, connect errors {}, checkouts {}",
        stats.created, stats.connect_errors, stats.checkouts
    );
    println!(
        "breaker             {} transitions, now {}",
        stats.breaker_transitions, stats.breaker
    );

    let header = format!("{:>6} {:>9} {:>9} {:>9}", "count", "p50", "p99", "max");
    println!(
        "\n{:<22}{header}   (detection → removal)",
        "evictions by reason"
    );
    for &(reason, n) in &stats.evictions {
        let lat = evictions
            .iter()
            .filter(|e| e.reason == reason)
            .map(|e| e.latency);
        println!("  {:<20}{n:>6} {}", reason.as_str(), cells(lat.collect()));
    }
    if lagged > 0 {
        println!("  (the event stream lagged: {lagged} events missed)");
    }
    println!(
        "\n{:<22}{header}   (fault → removal) by reason",
        "evictions by fault"
    );
    for f in Fault::ALL {
        let hits: Vec<_> = evictions
            .iter()
            .filter_map(|e| Some((e.reason, e.fault.filter(|c| c.0 == f)?.1)))
            .collect();
        if hits.is_empty() {
            continue;
        }
        let mut reasons = BTreeMap::new();
        hits.iter()
            .for_each(|h| *reasons.entry(h.0).or_insert(0) += 1);
        let lat = cells(hits.iter().map(|h| h.1).collect());
        println!(
            "  {:<20}{:>6} {lat}   {}",
            f.name(),
            hits.len(),
            joined(reasons)
        );
    }
}

/// Collects a stream's events until `stop`; returns them and the number missed.
pub(crate) async fn gather<T, S>(mut events: S, mut stop: watch::Receiver<bool>) -> (Vec<T>, u64)
where
    S: futures_util::Stream<Item = Result<T, EventsError>> + Unpin,
{
    use futures_util::StreamExt;
    let (mut out, mut lagged) = (Vec::new(), 0);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(ev)) => out.push(ev),
                Some(Err(EventsError::Lagged(n))) => lagged += n,
                Some(Err(_)) | None => break,
            },
            _ = stop.changed() => break,
        }
    }
    (out, lagged)
}

/// One endpoint in the progress line: its requests in the last second, its pool's size, and
/// whether it is ejected, its breaker open, its server down.
pub(crate) fn endpoint_cell(e: &EndpointStatus, srv: &Server, per_s: u64) -> String {
    let mut flags = Vec::new();
    if let Some(left) = e.ejected_for {
        flags.push(format!("EJECTED {}", fmt_d(left)));
    }
    if e.status.breaker != BreakerState::Closed {
        flags.push(format!("breaker {}", e.status.breaker.as_str()));
    }
    if srv.down.load(Relaxed) {
        flags.push("server down".to_string());
    }
    format!(
        "{} {per_s:>4}/s {:>2} conns{}{}",
        srv.addr.ip(),
        e.status.size,
        if flags.is_empty() { "" } else { " " },
        flags.join(", ")
    )
}

/// "1st", "2nd", …
fn nth(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The per-endpoint table, the outages and the balancer's events; returns how many outages.
pub(crate) fn report_endpoints(
    chaos: &Chaos,
    endpoints: &[EndpointStatus],
    events: &[BalancerEvent],
    breaker: &[BreakerEvent],
    lagged: u64,
    start: Instant,
) -> usize {
    let count = |name: &str, f: fn(&BalancerEventKind) -> bool| {
        events
            .iter()
            .filter(|e| &*e.endpoint == name && f(&e.kind))
            .count()
    };
    println!(
        "\n{:<22}{:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}   now",
        "endpoint",
        "ok",
        "failed",
        "created",
        "evictions",
        "breaker",
        "ejected",
        "returned",
        "recovered"
    );
    for (e, srv) in endpoints.iter().zip(&chaos.servers) {
        let st = &e.statistics;
        let now = match e.ejected_for {
            Some(left) => format!("ejected for {}", fmt_d(left)),
            None => format!("in service, breaker {}", e.status.breaker.as_str()),
        };
        println!(
            "  {:<20}{:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9}   {now}",
            e.endpoint,
            srv.ok.load(Relaxed),
            srv.failed.load(Relaxed),
            st.created,
            st.evicted_total(),
            st.breaker_transitions,
            count(&e.endpoint, |k| matches!(
                k,
                BalancerEventKind::Ejected { .. }
            )),
            count(&e.endpoint, |k| *k == BalancerEventKind::Returned),
            count(&e.endpoint, |k| *k == BalancerEventKind::Recovered),
        );
    }
    println!(
        "  (ok and failed: requests whose connection came from the endpoint; breaker: transitions)"
    );

    // The outages and the balancer's events, in time order.
    let since = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
    let outages = chaos.outages.lock().unwrap();
    let mut lines: Vec<(f64, String)> = Vec::new();
    for o in outages.iter() {
        let name = &chaos.servers[o.server].name;
        lines.push((
            since(o.down),
            format!("{:<10}{name}  listener and connections closed", "OUTAGE"),
        ));
        if let Some(back) = o.back {
            lines.push((
                since(back),
                format!(
                    "{:<10}{name}  listening again after {}",
                    "back",
                    fmt_d(back - o.down)
                ),
            ));
        }
    }
    for ev in events {
        let what = match &ev.kind {
            BalancerEventKind::Ejected {
                duration,
                times,
                failures,
                last_error,
            } => format!(
                "for {} ({} in a row) after {failures} failures: {}",
                fmt_d(*duration),
                nth(*times),
                last_error.as_deref().unwrap_or("-")
            ),
            _ => String::new(),
        };
        let kind = match ev.kind {
            BalancerEventKind::Ejected { .. } => "ejected",
            BalancerEventKind::Returned => "returned",
            BalancerEventKind::Recovered => "recovered",
            BalancerEventKind::Added => "added",
            BalancerEventKind::Removed => "removed",
            _ => "other",
        };
        lines.push((since(ev.at), format!("{kind:<10}{}  {what}", ev.endpoint)));
    }
    for ev in breaker {
        let t = ev.transition;
        let open_for = t.open_for.map(|d| format!(" for {}", fmt_d(d)));
        lines.push((
            since(ev.at),
            format!(
                "{:<10}{}  {} → {}{}",
                "breaker",
                ev.endpoint,
                t.from.as_str(),
                t.to.as_str(),
                open_for.unwrap_or_default()
            ),
        ));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("\nbalancer events (and outages), since start");
    if lines.is_empty() {
        println!("  none");
    }
    for (t, line) in &lines {
        println!("  {t:>7.3}s  {}", line.trim_end());
    }
    if lagged > 0 {
        println!("  (the event stream lagged: {lagged} events missed)");
    }
    // Each outage should eject its endpoint before it is back (or soon after).
    let ejected_in = |o: &Outage| {
        let name = chaos.servers[o.server].name.as_str();
        let until = o.back.map_or(chaos.end, |b| b + Duration::from_secs(1));
        events.iter().find(|e| {
            &*e.endpoint == name
                && e.at >= o.down
                && e.at <= until
                && matches!(e.kind, BalancerEventKind::Ejected { .. })
        })
    };
    for o in outages.iter() {
        let name = &chaos.servers[o.server].name;
        match ejected_in(o) {
            Some(e) => println!(
                "outage of {name} at {:.2}s: ejected {} after it began",
                since(o.down),
                fmt_d(e.at - o.down)
            ),
            None => println!(
                "outage of {name} at {:.2}s: NOT ejected (another endpoint out, or ejection broken?)",
                since(o.down)
            ),
        }
    }
    outages.len()
}
