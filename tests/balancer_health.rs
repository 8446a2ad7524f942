//! `Balancer` health on real sockets: outlier ejection of a refusing endpoint (and its
//! limits), keyed selection around an ejected endpoint, three endpoints of which one refuses
//! and one is blackholed (network namespaces, root), and endpoints from a DNS name whose
//! address set changes (`/etc/hosts`, root; restored by the guard whatever happens).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use livepool::{
    Balancer, BalancerEventKind, BalancerEvents, BreakerConfig, Ejection, FramePing, PoolConfig,
};
use livepool_testkit::hosts::HostsGuard;
use livepool_testkit::netns::Netns;
use livepool_testkit::*;

const MS: Duration = Duration::from_millis(1);

/// A loopback address on `ip` with nothing listening (connects are refused at once).
fn refusing(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

/// Waits (bounded) for an event of `endpoint` that `want` accepts; returns it.
async fn event_of(
    events: &mut BalancerEvents,
    endpoint: &str,
    secs: u64,
    what: &str,
    want: impl Fn(&BalancerEventKind) -> bool,
) -> BalancerEventKind {
    within(secs, what, async {
        loop {
            let ev = events.recv().await.expect("balancer events");
            if &*ev.endpoint == endpoint && want(&ev.kind) {
                return ev.kind;
            }
        }
    })
    .await
}

fn is_ejected(k: &BalancerEventKind) -> bool {
    matches!(k, BalancerEventKind::Ejected { .. })
}

/// `n` gets one after the other, each with an exchange; panics on a failure. Counts by
/// endpoint.
async fn serve(b: &Balancer, n: u64, base: u64) -> HashMap<String, u64> {
    let mut by = HashMap::new();
    for i in base..base + n {
        let mut c = within(5, "get", b.get())
            .await
            .unwrap_or_else(|e| panic!("get {i} failed: {e}"));
        assert_eq!(exchange(&mut c, i).await.unwrap(), token(i));
        *by.entry(c.endpoint().to_string()).or_insert(0) += 1;
    }
    by
}

/// One get with an exchange; the connection is then marked broken, so that no endpoint ever
/// has an idle member and the two choices are a coin toss between them.
async fn serve_once_broken(b: &Balancer, i: u64) -> String {
    let mut c = within(5, "get", b.get())
        .await
        .unwrap_or_else(|e| panic!("get {i} failed: {e}"));
    assert_eq!(exchange(&mut c, i).await.unwrap(), token(i));
    c.mark_broken();
    c.endpoint().to_string()
}

/// Serves (each get from `serving`) until endpoint `which` is ejected; returns the number of
/// requests made.
async fn until_ejected(bal: &Balancer, which: usize, serving: &str) -> u64 {
    let mut i = 0u64;
    while bal.endpoints()[which].ejected_for.is_none() {
        assert_eq!(serve_once_broken(bal, i).await, serving);
        i += 1;
        assert!(i < 1000, "never ejected: {:?}", bal.endpoints());
    }
    i
}

#[tokio::test]
async fn a_refusing_endpoint_is_ejected_returns_on_probation_and_recovers() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let down = refusing("127.0.0.3");
    let down_name = down.to_string();
    // No breaker: ejection alone takes the endpoint out (a breaker would stop the connects
    // that count as failures).
    let bal = Balancer::builder()
        .config(PoolConfig {
            max_size: 4,
            breaker: None,
            ..PoolConfig::default()
        })
        .endpoints([a.addr, down])
        .ejection(Some(
            Ejection::new()
                .consecutive_failures(3)
                .base(300 * MS)
                .max(600 * MS),
        ))
        .build()
        .unwrap();
    let mut events = bal.events();
    // Every get succeeds; the refusing endpoint fails over until it is ejected.
    until_ejected(&bal, 1, &a.addr.to_string()).await;
    let kind = event_of(&mut events, &down_name, 5, "ejection", is_ejected).await;
    let BalancerEventKind::Ejected {
        duration,
        times,
        failures,
        last_error,
    } = kind
    else {
        unreachable!()
    };
    assert_eq!((duration, times, failures), (300 * MS, 1, 3));
    assert!(
        last_error.is_some_and(|e| e.contains("refused")),
        "the error is kept"
    );
    // While ejected, nothing is tried there: no connect error is added.
    let errors = bal.pool(&down_name).unwrap().statistics().connect_errors;
    for j in 0..50 {
        serve_once_broken(&bal, 1000 + j).await;
    }
    let e = &bal.endpoints()[1];
    if e.ejected_for.is_some() && e.times_ejected == 1 {
        // Still the first ejection (not ended on a slow machine meanwhile).
        assert_eq!(e.statistics.connect_errors, errors);
    }
    // Back on probation after the ejection: one failure ejects it again, for twice as long.
    event_of(&mut events, &down_name, 5, "return", |k| {
        *k == BalancerEventKind::Returned
    })
    .await;
    let mut i = 2000;
    let again = loop {
        serve_once_broken(&bal, i).await;
        i += 1;
        if let Ok(Some(ev)) = events.try_recv() {
            break ev.kind;
        }
        assert!(i < 3000, "no event after the return");
    };
    assert!(
        matches!(again, BalancerEventKind::Ejected { times: 2, failures: 1, duration, .. } if duration == 600 * MS),
        "{again:?}"
    );
    // It comes back: the next probation's first connect succeeds, and it serves again.
    let _back = FaultServer::start_on(down).await;
    event_of(&mut events, &down_name, 5, "return", |k| {
        *k == BalancerEventKind::Returned
    })
    .await;
    let mut served = false;
    for i in 0..500u64 {
        if serve_once_broken(&bal, 5000 + i).await == down_name {
            served = true;
            break;
        }
    }
    assert!(served, "the recovered endpoint never served");
    event_of(&mut events, &down_name, 5, "recovery", |k| {
        *k == BalancerEventKind::Recovered
    })
    .await;
    assert_eq!(bal.endpoints()[1].consecutive_failures, 0);
}

#[tokio::test]
async fn when_an_ejection_ends_the_breaker_lets_the_endpoint_be_probed_at_once() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let down = refusing("127.0.0.3");
    let down_name = down.to_string();
    // The breaker would hold connects for a minute; the ejection lasts 300 ms.
    let bal = Balancer::builder()
        .config(PoolConfig {
            max_size: 4,
            breaker: Some(
                BreakerConfig::new()
                    .failure_threshold(1)
                    .open_for(Duration::from_secs(60))
                    .jitter(0.0),
            ),
            ..PoolConfig::default()
        })
        .endpoints([a.addr, down])
        .ejection(Some(
            Ejection::new()
                .consecutive_failures(5)
                .base(300 * MS)
                .max(300 * MS),
        ))
        .build()
        .unwrap();
    let mut events = bal.events();
    // The refusing endpoint's breaker opens on its first refused connect, which ejects it.
    let mut i = until_ejected(&bal, 1, &a.addr.to_string()).await;
    event_of(&mut events, &down_name, 5, "ejection", is_ejected).await;
    // The endpoint comes back while ejected.
    let back = FaultServer::start_on(down).await;
    event_of(&mut events, &down_name, 5, "return from ejection", |k| {
        matches!(k, BalancerEventKind::Returned)
    })
    .await;
    // Its breaker's minute is not over, yet it is probed and serves again at once: the keys
    // it owns go to it (while its breaker refused, they went to the other endpoint).
    let mut served_by_it = 0;
    for key in 0..200u64 {
        let mut c = within(5, "get_for", bal.get_for(&key))
            .await
            .unwrap_or_else(|e| panic!("get_for({key}) failed: {e}"));
        assert_eq!(exchange(&mut c, i).await.unwrap(), token(i));
        i += 1;
        if c.endpoint() == down_name {
            served_by_it += 1;
        }
    }
    assert!(served_by_it > 0, "the returned endpoint served no key");
    let st = &bal.endpoints()[1];
    assert_eq!(st.status.breaker, livepool::BreakerState::Closed, "{st:?}");
    drop(back);
}

#[tokio::test]
async fn ejection_never_takes_more_than_the_share_nor_the_last_endpoint() {
    let eps = [
        refusing("127.0.0.2"),
        refusing("127.0.0.3"),
        refusing("127.0.0.4"),
    ];
    let build = |share: f64| {
        Balancer::builder()
            .config(PoolConfig {
                max_size: 2,
                breaker: None,
                ..PoolConfig::default()
            })
            .endpoints(eps)
            .ejection(Some(
                Ejection::new()
                    .consecutive_failures(2)
                    .base(Duration::from_secs(30))
                    .max_ejected_share(share),
            ))
            .build()
            .unwrap()
    };
    for (share, most) in [(0.1, 1), (1.0, 2)] {
        let bal = build(share);
        for _ in 0..10 {
            let e = within(5, "get", bal.get()).await.unwrap_err();
            assert!(e.is_all_endpoints(), "{e}");
            // Every endpoint is tried (the ejected ones last), so the error names all three.
            assert_eq!(e.endpoint_errors().len(), 3, "{e}");
        }
        let ejected = bal
            .endpoints()
            .iter()
            .filter(|e| e.ejected_for.is_some())
            .count();
        assert_eq!(ejected, most, "share {share}: {:?}", bal.endpoints());
    }
}

/// A frame server inside namespace `ns` (its own thread and runtime); stops when the
/// returned sender is dropped.
fn server_in(ns: &str, ip: IpAddr) -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        Netns::run_in(&ns, move || async move {
            let server = FaultServer::start_on(SocketAddr::new(ip, 0)).await;
            addr_tx.send(server.addr).unwrap();
            // Polls the stop channel (a std channel: the test thread is not in a runtime).
            while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                tokio::time::sleep(20 * MS).await;
            }
            drop(server);
        })
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server in the namespace started");
    (addr, stop_tx)
}

/// One refusing, one blackholed, one healthy endpoint: once the two bad ones are ejected no
/// `get()` fails; both come back when they are fixed.
#[test]
fn one_refusing_one_blackholed_one_healthy_endpoint() {
    let Some(ns) = Netns::create() else { return };
    let (far, stop_far) = server_in(&ns.b, IpAddr::V4(ns.server_ip));
    let (ns_a, far_name) = (ns.a.clone(), far.to_string());
    let ns = &ns;
    Netns::run_in(&ns_a, move || async move {
        let good = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
        let down = refusing("127.0.0.3");
        let down_name = down.to_string();
        let bal = Balancer::builder()
            .config(PoolConfig {
                max_size: 4,
                min_idle: 1,
                connect_timeout: Some(300 * MS),
                wait_timeout: Some(Duration::from_secs(5)),
                heartbeat_interval: 200 * MS,
                heartbeat_timeout: 150 * MS,
                reap_interval: 50 * MS,
                breaker: Some(
                    BreakerConfig::new()
                        .failure_threshold(2)
                        .open_for(300 * MS)
                        .max_open_for(300 * MS)
                        .jitter(0.0),
                ),
                ..PoolConfig::default()
            })
            .protocol(FramePing::new())
            .endpoints([good.addr, down, far])
            .ejection(Some(
                Ejection::new()
                    .consecutive_failures(2)
                    .base(Duration::from_secs(1))
                    .max(Duration::from_secs(2))
                    .max_ejected_share(1.0),
            ))
            .build()
            .unwrap();
        let mut events = bal.events();
        // The far endpoint serves before the blackhole (its min_idle member is up).
        let far_pool = bal.pool(&far_name).unwrap();
        wait_until(10, "far endpoint warm", || far_pool.status().idle >= 1).await;
        let mut c = within(5, "far get", far_pool.get()).await.unwrap();
        assert_eq!(exchange(&mut c, 1).await.unwrap(), token(1));
        drop(c);

        ns.blackhole();
        // Until both bad endpoints are ejected, a request may hang on a member to the
        // blackholed one (the caller's own timeout ends it); afterwards none may fail.
        let mut ejected = HashSet::new();
        let mut i = 10;
        while ejected.len() < 2 {
            // A failure here is allowed (and bounded by this timeout).
            let _ = tokio::time::timeout(500 * MS, async {
                if let Ok(mut c) = bal.get().await {
                    let _ = exchange(&mut c, i).await;
                }
            })
            .await;
            i += 1;
            while let Ok(Some(ev)) = events.try_recv() {
                if is_ejected(&ev.kind) {
                    ejected.insert(ev.endpoint.to_string());
                }
            }
            assert!(i < 200, "not both ejected: {:?}", bal.endpoints());
            tokio::time::sleep(20 * MS).await;
        }
        assert_eq!(
            ejected,
            HashSet::from([down_name.clone(), far_name.clone()]),
            "the two bad endpoints are ejected"
        );
        // Three seconds of traffic, through their returns on probation and re-ejections:
        // not one failed get or exchange, two held at once.
        let end = std::time::Instant::now() + Duration::from_secs(3);
        let mut n = 0u64;
        while std::time::Instant::now() < end {
            let mut c1 = within(5, "get", bal.get())
                .await
                .unwrap_or_else(|e| panic!("get failed after ejection: {e}"));
            let mut c2 = within(5, "get", bal.get())
                .await
                .unwrap_or_else(|e| panic!("get failed after ejection: {e}"));
            for c in [&mut c1, &mut c2] {
                assert_eq!(c.endpoint(), good.addr.to_string());
                let r = within(5, "exchange", exchange(c, n)).await.unwrap();
                assert_eq!(r, token(n));
                n += 1;
            }
        }
        assert!(n > 0);

        // Both are fixed: each returns, its probe succeeds, and it serves again.
        ns.heal();
        let _back = FaultServer::start_on(down).await;
        let mut recovered = HashSet::new();
        let mut served = HashSet::new();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while recovered.len() < 2 || served.len() < 3 {
            let mut held = Vec::new();
            for _ in 0..3 {
                let mut c = within(10, "get", bal.get())
                    .await
                    .unwrap_or_else(|e| panic!("get failed during recovery: {e}"));
                let r = within(5, "exchange", exchange(&mut c, n)).await.unwrap();
                assert_eq!(r, token(n));
                n += 1;
                served.insert(c.endpoint().to_string());
                held.push(c);
            }
            drop(held);
            while let Ok(Some(ev)) = events.try_recv() {
                if ev.kind == BalancerEventKind::Recovered {
                    recovered.insert(ev.endpoint.to_string());
                }
            }
            assert!(
                std::time::Instant::now() < end,
                "recovered {recovered:?}, served {served:?}: {:?}",
                bal.endpoints()
            );
            tokio::time::sleep(20 * MS).await;
        }
    });
    drop(stop_far);
}

/// Endpoints from a DNS name: an address that leaves is drained, one that appears is added,
/// a failed lookup keeps the last answer.
#[test]
fn dns_endpoints_follow_the_address_set() {
    if skip_without(HostsGuard::available(), "a writable /etc/hosts (root)") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // One port on three addresses.
        let (s2, s3, s4) = loop {
            let s2 = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
            let port = s2.addr.port();
            let at = |ip: &str| -> SocketAddr { format!("{ip}:{port}").parse().unwrap() };
            if std::net::TcpListener::bind(at("127.0.0.3")).is_err()
                || std::net::TcpListener::bind(at("127.0.0.4")).is_err()
            {
                continue;
            }
            let s3 = FaultServer::start_on(at("127.0.0.3")).await;
            let s4 = FaultServer::start_on(at("127.0.0.4")).await;
            break (s2, s3, s4);
        };
        let port = s2.addr.port();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let hosts = HostsGuard::map_all(&[ip("127.0.0.2"), ip("127.0.0.3")]);
        let bal = Balancer::builder()
            .config(PoolConfig {
                max_size: 4,
                ..PoolConfig::default()
            })
            .dns(&format!("{}:{port}", hosts.name()))
            .dns_interval(100 * MS)
            .build()
            .unwrap();
        let mut events = bal.events();
        let names = |b: &Balancer| -> HashSet<String> {
            b.endpoints().into_iter().map(|e| e.endpoint).collect()
        };
        // The first get waits for the first answer.
        let by = serve(&bal, 20, 0).await;
        assert_eq!(
            names(&bal),
            HashSet::from([s2.addr.to_string(), s3.addr.to_string()])
        );
        assert!(by.keys().all(|k| *k != s4.addr.to_string()), "{by:?}");

        // One checked out and one idle on .2, then .2 leaves the answer and .4 joins.
        let p2 = bal.pool(&s2.addr.to_string()).unwrap();
        let mut out = within(5, "get", p2.get()).await.unwrap();
        drop(within(5, "get", p2.get()).await.unwrap());
        assert_eq!(p2.status().size, 2);
        hosts.remap_all(&[ip("127.0.0.3"), ip("127.0.0.4")]);
        event_of(&mut events, &s2.addr.to_string(), 10, ".2 removed", |k| {
            *k == BalancerEventKind::Removed
        })
        .await;
        event_of(&mut events, &s4.addr.to_string(), 10, ".4 added", |k| {
            *k == BalancerEventKind::Added
        })
        .await;
        assert_eq!(
            names(&bal),
            HashSet::from([s3.addr.to_string(), s4.addr.to_string()])
        );
        // Drained: the idle member is closed at once; the checked-out one works until it
        // is returned, then closes.
        assert!(p2.is_closed());
        assert_eq!(p2.status().idle, 0);
        assert_eq!(exchange(&mut out, 99).await.unwrap(), token(99));
        drop(out);
        wait_until(5, ".2 drained", || p2.status().size == 0).await;
        let by = serve(&bal, 40, 100).await;
        assert!(!by.contains_key(&s2.addr.to_string()), "{by:?}");

        // The name disappears: lookups fail, the endpoints stay.
        hosts.remap_all(&[]);
        tokio::time::sleep(500 * MS).await;
        assert_eq!(
            names(&bal),
            HashSet::from([s3.addr.to_string(), s4.addr.to_string()])
        );
        serve(&bal, 10, 200).await;
        assert!(
            events.try_recv().unwrap().is_none(),
            "no endpoint came or went"
        );
        drop(hosts);
    });
}

#[tokio::test]
async fn a_dns_name_that_never_resolves_fails_get_with_the_reason() {
    let bal = Balancer::builder()
        .config(PoolConfig {
            wait_timeout: Some(Duration::from_secs(5)),
            ..PoolConfig::default()
        })
        .dns("no-such-host.invalid:6379")
        .dns_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let e = within(10, "get", bal.get()).await.unwrap_err();
    assert!(e.is_all_endpoints(), "{e}");
    assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
    assert!(bal.endpoints().is_empty());
}
