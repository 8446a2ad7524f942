//! `Balancer` on real sockets: endpoints on 127.0.0.2, .3 and .4, one of them refusing;
//! failover, the breaker taking the bad one out of the choice, its recovery, the error when
//! every endpoint is down, `add`/`remove` with draining, and keyed selection moving only the
//! keys of the endpoint that is down (taken out by its breaker, or by ejection). Outlier
//! ejection is off in the other tests here (they are the breaker's); tests/balancer_health.rs
//! has ejection, the blackholed endpoint and DNS.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use livepool::{Balancer, BalancerEventKind, BreakerConfig, BreakerState, Ejection, PoolConfig};
use livepool_testkit::*;

const MS: Duration = Duration::from_millis(1);

/// A loopback address on `ip` with nothing listening (connects are refused at once).
fn refusing(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

fn balancer(endpoints: &[SocketAddr]) -> Balancer {
    Balancer::builder()
        .config(PoolConfig {
            max_size: 8,
            wait_timeout: Some(Duration::from_secs(5)),
            breaker: Some(
                BreakerConfig::new()
                    .failure_threshold(2)
                    .open_for(200 * MS)
                    .max_open_for(200 * MS)
                    .jitter(0.0),
            ),
            ..PoolConfig::default()
        })
        .endpoints(endpoints.iter().copied())
        .ejection(None)
        .build()
        .unwrap()
}

/// `rounds` times: checks out `at_once` connections together (each with an exchange), then
/// returns them; counts them by endpoint. Panics on a failed `get()`.
async fn spread_held(b: &Balancer, rounds: u64, at_once: u64) -> HashMap<String, u64> {
    let mut by = HashMap::new();
    for r in 0..rounds {
        let mut held = Vec::new();
        for j in 0..at_once {
            let n = r * at_once + j;
            let mut c = within(5, "balancer get", b.get())
                .await
                .unwrap_or_else(|e| panic!("get {n} failed: {e}"));
            assert_eq!(exchange(&mut c, n).await.unwrap(), token(n));
            *by.entry(c.endpoint().to_string()).or_insert(0) += 1;
            held.push(c);
        }
    }
    by
}

#[tokio::test]
async fn a_refusing_endpoint_costs_no_failed_get_and_comes_back() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let down = refusing("127.0.0.4");
    let bal = balancer(&[a.addr, b.addr, down]);
    // Every get succeeds: a refused connect on the bad endpoint fails over at once. Six held
    // at once, so that the endpoints without idle connections are chosen too.
    let by = spread_held(&bal, 40, 6).await;
    assert_eq!(by.values().sum::<u64>(), 240);
    assert!(!by.contains_key(&down.to_string()), "{by:?}");
    assert_eq!(by.len(), 2, "both healthy endpoints served: {by:?}");
    let st = bal.pool(&down.to_string()).unwrap().statistics();
    assert!(st.connect_errors >= 2, "{st:?}");
    assert!(st.breaker_transitions >= 1, "its breaker opened: {st:?}");

    // It comes back: after the breaker's open period, the half-open probe reaches it.
    let back = FaultServer::start_on(down).await;
    let mut served = false;
    for i in 0..400 {
        // Hold several at once, so that load spreads to the third endpoint too.
        let mut held = Vec::new();
        for j in 0..6 {
            let mut c = within(5, "get", bal.get()).await.unwrap();
            assert_eq!(
                exchange(&mut c, i * 10 + j).await.unwrap(),
                token(i * 10 + j)
            );
            served |= c.endpoint() == down.to_string();
            held.push(c);
        }
        if served {
            break;
        }
        tokio::time::sleep(5 * MS).await;
    }
    assert!(
        served,
        "the recovered endpoint never served: {:?}",
        bal.endpoints()
    );
    let down_status = bal.pool(&down.to_string()).unwrap().status();
    assert_eq!(down_status.breaker, BreakerState::Closed);
    drop(back);
}

#[tokio::test]
async fn when_every_endpoint_is_down_the_error_names_each() {
    let eps = [
        refusing("127.0.0.2"),
        refusing("127.0.0.3"),
        refusing("127.0.0.4"),
    ];
    let bal = balancer(&eps);
    let e = within(5, "get", bal.get()).await.unwrap_err();
    assert!(e.is_all_endpoints(), "{e}");
    assert_eq!(e.endpoint_errors().len(), 3, "{e}");
    for ep in &eps {
        assert!(e.to_string().contains(&ep.to_string()), "{e}");
    }
    for inner in e.endpoint_errors() {
        assert!(inner.is_connect(), "{inner}");
    }
    // Once the breakers are open, the same answer comes without a connect.
    let _ = bal.get().await;
    let before: u64 = bal
        .endpoints()
        .iter()
        .map(|e| e.statistics.connect_errors)
        .sum();
    let e = bal.get().await.unwrap_err();
    assert!(
        e.endpoint_errors().iter().all(|e| e.is_circuit_open()),
        "{e}"
    );
    let after: u64 = bal
        .endpoints()
        .iter()
        .map(|e| e.statistics.connect_errors)
        .sum();
    assert_eq!(before, after);
}

#[tokio::test]
async fn load_goes_where_connections_are_idle_and_spreads_when_they_are_not() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let bal = balancer(&[a.addr, b.addr]);
    // One idle connection on a only.
    let c = bal.pool(&a.addr.to_string()).unwrap().get().await.unwrap();
    drop(c);
    // One at a time: the idle one on a is preferred every time (no connect to b).
    let by = spread_held(&bal, 50, 1).await;
    assert_eq!(by.get(&a.addr.to_string()), Some(&50), "{by:?}");
    assert_eq!(
        bal.pool(&b.addr.to_string()).unwrap().statistics().created,
        0
    );
    // Eight held at once: both endpoints get some.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(bal.get().await.unwrap());
    }
    let on_b = held
        .iter()
        .filter(|c| c.endpoint() == b.addr.to_string())
        .count();
    assert!((1..=7).contains(&on_b), "{on_b} of 8 on b");
}

#[tokio::test]
async fn removing_an_endpoint_drains_it_and_adding_one_serves() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let bal = balancer(&[a.addr]);
    let a_pool = bal.pool(&a.addr.to_string()).unwrap();
    let mut out = bal.get().await.unwrap();
    let idle = bal.get().await.unwrap();
    drop(idle);
    assert_eq!(a_pool.status().size, 2);
    bal.add(b.addr).unwrap();
    bal.add(b.addr).unwrap();
    assert_eq!(bal.endpoints().len(), 2);
    assert!(bal.remove(&a.addr.to_string()));
    // The idle member is closed at once, the checked-out one keeps working until returned.
    assert_eq!(a_pool.status().idle, 0);
    assert_eq!(exchange(&mut out, 1).await.unwrap(), token(1));
    drop(out);
    wait_until(5, "a drained", || a_pool.status().size == 0).await;
    // Everything now goes to b.
    let by = spread_held(&bal, 10, 1).await;
    assert_eq!(by.get(&b.addr.to_string()), Some(&10), "{by:?}");
}

/// Where each of `keys` is served now.
async fn owners(b: &Balancer, keys: u64) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..keys {
        let mut c = within(5, "get_for", b.get_for(&k))
            .await
            .unwrap_or_else(|e| panic!("get_for {k}: {e}"));
        assert_eq!(exchange(&mut c, k).await.unwrap(), token(k));
        out.push(c.endpoint().to_string());
    }
    out
}

#[tokio::test]
async fn keyed_selection_moves_only_the_keys_of_the_endpoint_that_is_down() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let c = FaultServer::start_on("127.0.0.4:0".parse().unwrap()).await;
    let (a_addr, c_addr) = (a.addr, c.addr);
    let bal = balancer(&[a.addr, b.addr, c.addr]);
    let before = owners(&bal, 300).await;
    for ep in [a_addr, b.addr, c_addr] {
        let n = before.iter().filter(|o| **o == ep.to_string()).count();
        assert!(n > 50, "{ep} owns {n} of 300 keys");
    }
    // Stable: asking again gives the same owners.
    assert_eq!(owners(&bal, 300).await, before);

    // b goes away: its connections close and its listener is gone.
    let b_addr = b.addr;
    b.shutdown().await;
    let during = owners(&bal, 300).await;
    for (k, (was, now)) in before.iter().zip(&during).enumerate() {
        if *was == b_addr.to_string() {
            assert_ne!(
                *now,
                b_addr.to_string(),
                "key {k} still on the endpoint that is down"
            );
        } else {
            assert_eq!(was, now, "key {k} moved although its endpoint is up");
        }
    }
    let moved: Vec<&String> = during
        .iter()
        .zip(&before)
        .filter(|(_, was)| **was == b_addr.to_string())
        .map(|(now, _)| now)
        .collect();
    assert!(
        moved.iter().any(|o| **o == a_addr.to_string())
            && moved.iter().any(|o| **o == c_addr.to_string()),
        "b's keys spread over both others"
    );

    // b comes back: once its breaker lets a probe through, its keys return.
    let _b = FaultServer::start_on(b_addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(50 * MS).await;
        if owners(&bal, 300).await == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b's keys never came back"
        );
    }
}

#[tokio::test]
async fn keyed_selection_moves_only_the_keys_of_the_ejected_endpoint() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let c = FaultServer::start_on("127.0.0.4:0".parse().unwrap()).await;
    let b_name = b.addr.to_string();
    // No breaker: only ejection moves keys here.
    let bal = Balancer::builder()
        .config(PoolConfig {
            max_size: 4,
            breaker: None,
            ..PoolConfig::default()
        })
        .endpoints([a.addr, b.addr, c.addr])
        .ejection(Some(
            Ejection::new()
                .consecutive_failures(2)
                .base(Duration::from_secs(60))
                .max_ejected_share(0.5),
        ))
        .build()
        .unwrap();
    let mut events = bal.events();
    let before = owners(&bal, 300).await;
    let b_keys = before.iter().filter(|o| **o == b_name).count();
    assert!(b_keys > 50, "b owns {b_keys} of 300 keys");
    // b goes: its keys fail over (connect refused) until two failures in a row eject it.
    let b_addr = b.addr;
    b.shutdown().await;
    let during = owners(&bal, 300).await;
    within(5, "b ejected", async {
        loop {
            let ev = events.recv().await.unwrap();
            if *ev.endpoint == b_name && matches!(ev.kind, BalancerEventKind::Ejected { .. }) {
                break;
            }
        }
    })
    .await;
    // Ejected: b is not even tried any more (no breaker here: without ejection every one of
    // its keys would try a connect first).
    let errors = bal.pool(&b_name).unwrap().statistics().connect_errors;
    let after = owners(&bal, 300).await;
    assert_eq!(
        bal.pool(&b_name).unwrap().statistics().connect_errors,
        errors
    );
    for (k, ((was, mid), now)) in before.iter().zip(&during).zip(&after).enumerate() {
        if *was == b_name {
            assert_ne!(*now, b_name, "key {k} still on the ejected endpoint");
            assert_ne!(*mid, b_name, "key {k} was served by a closed listener");
        } else {
            assert_eq!(
                was, now,
                "key {k} moved although its endpoint is in service"
            );
            assert_eq!(
                was, mid,
                "key {k} moved although its endpoint is in service"
            );
        }
    }
    // While b is ejected, its keys stay where they went (each key's next in line).
    assert_eq!(owners(&bal, 300).await, after);
    // The ejected endpoint's keys are spread over both others.
    let moved: HashSet<&String> = after
        .iter()
        .zip(&before)
        .filter(|(_, was)| **was == b_name)
        .map(|(now, _)| now)
        .collect();
    assert_eq!(moved.len(), 2, "{moved:?}");
    drop(FaultServer::start_on(b_addr).await);
}

#[tokio::test]
async fn a_get_waiting_on_an_endpoint_that_is_removed_fails_over() {
    let a = FaultServer::start_on("127.0.0.2:0".parse().unwrap()).await;
    let b = FaultServer::start_on("127.0.0.3:0".parse().unwrap()).await;
    let bal = balancer(&[a.addr, b.addr]);
    let (pa, pb) = (
        bal.pool(&a.addr.to_string()).unwrap(),
        bal.pool(&b.addr.to_string()).unwrap(),
    );
    // Both endpoints full (8 each): the next get waits on one of them.
    let mut held_a = Vec::new();
    let mut held_b = Vec::new();
    for _ in 0..8 {
        held_a.push(pa.get().await.unwrap());
        held_b.push(pb.get().await.unwrap());
    }
    let waiter = tokio::spawn({
        let bal = bal.clone();
        async move { bal.get().await.map(|c| c.endpoint().to_string()) }
    });
    wait_until(5, "the get waits", || {
        pa.status().waiting + pb.status().waiting == 1
    })
    .await;
    let (gone, other, held_other) = if pa.status().waiting == 1 {
        (a.addr, b.addr, &mut held_b)
    } else {
        (b.addr, a.addr, &mut held_a)
    };
    // Its endpoint is removed: the get moves on to the other one, which frees a connection.
    assert!(bal.remove(&gone.to_string()));
    held_other.pop();
    let served = within(5, "waiter", waiter).await.unwrap();
    assert_eq!(served.unwrap(), other.to_string());
}
