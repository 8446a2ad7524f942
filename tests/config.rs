//! Rule 5: every bad configuration is refused at `build()` with an error naming the field.

use std::time::Duration;

use livepool::{BreakerConfig, FramePing, Pool, TcpOptions};
use proptest::prelude::*;

const Z: Duration = Duration::ZERO;

fn refused<P: livepool::Protocol>(b: livepool::Builder<P>, field: &str) {
    match b.build() {
        Ok(_) => panic!("{field}: a bad value was accepted"),
        Err(e) => {
            assert_eq!(e.field(), field, "wrong field named: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}

fn b() -> livepool::Builder {
    Pool::builder("127.0.0.1:1")
}

#[tokio::test]
async fn every_bad_field_is_named() {
    refused(b().max_size(0), "max_size");
    refused(b().max_size(2).min_idle(3), "min_idle");
    refused(b().connect_timeout(Some(Z)), "connect_timeout");
    let tcp = |f: fn(&mut TcpOptions)| {
        let mut o = TcpOptions::default();
        f(&mut o);
        b().tcp(o)
    };
    refused(tcp(|o| o.keepalive = Some(Z)), "tcp.keepalive");
    refused(
        tcp(|o| o.keepalive = Some(Duration::from_secs(40_000))),
        "tcp.keepalive",
    );
    refused(tcp(|o| o.keepalive_interval = Z), "tcp.keepalive_interval");
    refused(
        tcp(|o| o.keepalive_interval = Duration::from_secs(40_000)),
        "tcp.keepalive_interval",
    );
    refused(tcp(|o| o.keepalive_retries = 0), "tcp.keepalive_retries");
    refused(tcp(|o| o.keepalive_retries = 128), "tcp.keepalive_retries");
    refused(tcp(|o| o.user_timeout = Some(Z)), "tcp.user_timeout");
    refused(
        tcp(|o| o.user_timeout = Some(Duration::from_micros(10))),
        "tcp.user_timeout",
    );
    refused(b().idle_timeout(Some(Z)), "idle_timeout");
    refused(b().max_lifetime(Some(Z)), "max_lifetime");
    refused(
        b().idle_timeout(Some(Duration::from_secs(100)))
            .max_lifetime(Some(Duration::from_secs(50))),
        "idle_timeout",
    );
    refused(b().lifetime_jitter(1.0), "lifetime_jitter");
    refused(b().lifetime_jitter(-0.1), "lifetime_jitter");
    refused(b().lifetime_jitter(f64::NAN), "lifetime_jitter");
    refused(b().heartbeat_jitter(2.0), "heartbeat_jitter");
    refused(b().reap_interval(Z), "reap_interval");
    refused(b().heartbeat_interval(Z), "heartbeat_interval");
    refused(b().heartbeat_timeout(Z), "heartbeat_timeout");
    refused(
        b().protocol(FramePing::new())
            .heartbeat_interval(Duration::from_secs(5))
            .heartbeat_timeout(Duration::from_secs(5)),
        "heartbeat_timeout",
    );
    refused(
        b().breaker(Some(BreakerConfig::new().failure_threshold(0))),
        "breaker.failure_threshold",
    );
    refused(
        b().breaker(Some(BreakerConfig::new().open_for(Z))),
        "breaker.open_for",
    );
    refused(
        b().breaker(Some(
            BreakerConfig::new()
                .open_for(Duration::from_secs(10))
                .max_open_for(Duration::from_secs(1)),
        )),
        "breaker.max_open_for",
    );
    refused(
        b().breaker(Some(BreakerConfig::new().outage_fraction(1.5))),
        "breaker.outage_fraction",
    );
    refused(
        b().breaker(Some(BreakerConfig::new().jitter(1.5))),
        "breaker.jitter",
    );
    refused(Pool::builder("not an address"), "addr");
    refused(Pool::builder("::1:80"), "addr");
    refused(Pool::builder("host:notaport"), "addr");
    refused(Pool::builder("unix:"), "addr");
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    refused(b(), "runtime");
}

#[tokio::test]
async fn good_configurations_build() {
    b().build().unwrap();
    b().connect_timeout(None)
        .wait_timeout(Some(Z))
        .tcp(TcpOptions {
            keepalive: None,
            user_timeout: None,
            ..TcpOptions::default()
        })
        .idle_timeout(None)
        .max_lifetime(None)
        .breaker(None)
        .build()
        .unwrap();
    Pool::builder(String::from("localhost:6379"))
        .build()
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// build() never panics: it builds, or names one of the builder's fields.
    #[test]
    fn build_never_panics(
        max in 0usize..40, min in 0usize..40,
        idle in proptest::option::of(0u64..5000), life in proptest::option::of(0u64..5000),
        hb_i in 0u64..5000, hb_t in 0u64..5000, jit in -1.0f64..2.0, retries in 0u32..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let res = b()
            .max_size(max).min_idle(min)
            .idle_timeout(idle.map(Duration::from_millis))
            .max_lifetime(life.map(Duration::from_millis))
            .protocol(FramePing::new())
            .heartbeat_interval(Duration::from_millis(hb_i))
            .heartbeat_timeout(Duration::from_millis(hb_t))
            .lifetime_jitter(jit)
            .tcp(TcpOptions { keepalive_retries: retries, ..TcpOptions::default() })
            .build();
        match res {
            Ok(p) => {
                prop_assert!(max >= 1 && min <= max && (0.0..1.0).contains(&jit));
                prop_assert!(hb_t < hb_i && (1..=127).contains(&retries));
                drop(p);
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }
}

/// A host name is not resolved by `builder()` or `build()` (that would block the runtime
/// thread, and pin the address): building with a name that resolves nowhere succeeds. (Not
/// connecting: an unknown name would go to the DNS server, off loopback.)
#[tokio::test]
async fn names_are_not_resolved_at_build() {
    let pool = Pool::builder("livepool-never-resolved.invalid:80")
        .build()
        .expect("nothing is resolved at build()");
    assert_eq!(pool.status().size, 0);
}
