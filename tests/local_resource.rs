//! Local resource exhaustion is not the endpoint's fault: with `RLIMIT_NOFILE` lowered and
//! every free descriptor taken, `get()` fails with `EMFILE`, names the cause, is counted, and
//! the breaker neither opens (closed) nor decides (half-open: the probe is handed back). Once
//! the descriptors are free, the very next `get()` connects.
//!
//! One test in its own binary: `setrlimit` and a full descriptor table affect the whole
//! process. The limit is restored on the way out, panics included.

use std::fs::File;
use std::net::SocketAddr;
use std::time::Duration;

use livepool::{BreakerConfig, BreakerState, Pool};
use livepool_testkit::*;

/// Lowers the soft `RLIMIT_NOFILE`; restores the old limits when dropped.
struct NofileLimit(libc::rlimit);

impl NofileLimit {
    fn lower_to(soft: libc::rlim_t) -> Self {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid pointer to an rlimit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        assert!(soft <= old.rlim_cur, "limit {soft} above the current one");
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) }, 0);
        NofileLimit(old)
    }
}

impl Drop for NofileLimit {
    fn drop(&mut self) {
        // SAFETY: as above.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
        if rc != 0 && !std::thread::panicking() {
            panic!("could not restore RLIMIT_NOFILE");
        }
    }
}

/// Opens `/dev/null` until the process is out of descriptors; returns them.
fn exhaust_fds() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(e) => panic!("unexpected error while taking descriptors: {e}"),
        }
        assert!(held.len() < 10_000, "the lowered limit was not applied");
    }
}

fn assert_emfile(err: &livepool::Error, what: &str) {
    assert!(err.is_local_resource(), "{what}: {err}");
    assert!(!err.is_connect() && !err.is_circuit_open(), "{what}: {err}");
    assert_eq!(
        err.io_error().and_then(|e| e.raw_os_error()),
        Some(libc::EMFILE),
        "{what}: {err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("local resource exhausted (too many open files)")
            && text.contains("not the endpoint's fault"),
        "{what}: {text}"
    );
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn emfile_neither_opens_nor_decides_the_breaker_and_is_counted() {
    #[cfg(feature = "metrics")]
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();

    // ---- closed: many EMFILEs do not open it ----
    let server = FaultServer::start().await;
    let pool = Pool::builder(server.addr)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(3)
                .open_for(Duration::from_secs(60))
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    let limit = NofileLimit::lower_to((open_fds() + 32) as libc::rlim_t);
    let fillers = exhaust_fds();
    for i in 0..20u64 {
        let err = within(5, "get without descriptors", pool.get())
            .await
            .expect_err("connected without a free descriptor");
        assert_emfile(&err, &format!("attempt {i}"));
        let s = pool.statistics();
        assert_eq!(s.breaker_state, BreakerState::Closed, "attempt {i}: {s:?}");
        assert_eq!(s.local_resource_errors, i + 1, "{s:?}");
        assert_eq!(s.connect_errors, 0, "counted against the endpoint: {s:?}");
        assert_eq!(s.breaker_transitions, 0, "{s:?}");
    }
    drop(fillers);
    let mut c = within(5, "get after the descriptors are free", pool.get())
        .await
        .expect("the very next get() connects");
    assert_eq!(exchange(&mut c, 1).await.unwrap(), token(1));
    drop(c);
    assert_eq!(pool.statistics().breaker_state, BreakerState::Closed);

    // ---- half-open: a probe that fails locally decides nothing ----
    let addr = free_port();
    let open_for = Duration::from_millis(200);
    let pool2 = Pool::builder(addr)
        .connect_timeout(None)
        .breaker(Some(
            BreakerConfig::new()
                .failure_threshold(3)
                .open_for(open_for)
                .jitter(0.0),
        ))
        .build()
        .unwrap();
    for i in 0..3 {
        let err = pool2.get().await.unwrap_err();
        assert!(err.is_connect(), "refused attempt {i}: {err}");
    }
    assert_eq!(pool2.statistics().breaker_state, BreakerState::Open);
    let fillers = exhaust_fds();
    // Wait out the open period as the breaker tells it (bounded): the first get() after it
    // is the probe, and it fails for want of a descriptor.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let probe_err = loop {
        let err = pool2.get().await.unwrap_err();
        if !err.is_circuit_open() {
            break err;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "breaker did not let a probe through within 5 s: {err}"
        );
        tokio::time::sleep(err.retry_after().unwrap()).await;
    };
    assert_emfile(&probe_err, "the probe");
    // Neither re-opened (a failure) nor closed (a success): still half-open, and the probe
    // was handed back, so the next caller is a probe too, not refused.
    for i in 0..10 {
        let s = pool2.statistics();
        assert_eq!(s.breaker_state, BreakerState::HalfOpen, "probe {i}: {s:?}");
        assert_eq!(s.breaker_transitions, 2, "closed→open→half-open: {s:?}");
        let err = pool2.get().await.unwrap_err();
        assert_emfile(&err, &format!("probe {i}"));
    }
    assert_eq!(pool2.statistics().connect_errors, 3);
    drop(fillers);
    // The endpoint is up (it always was, as far as the probes could tell): the next probe
    // connects and closes the breaker.
    let listener = std::net::TcpListener::bind(addr).expect("rebind the port");
    let c = within(5, "the probe after the descriptors are free", pool2.get())
        .await
        .expect("the next get() connects");
    drop(c);
    let s = pool2.statistics();
    assert_eq!(s.breaker_state, BreakerState::Closed, "{s:?}");
    assert_eq!(s.breaker_transitions, 3, "{s:?}");
    drop(listener);
    drop(limit);

    #[cfg(feature = "metrics")]
    {
        let text = metrics.render();
        for (ep, n) in [(server.addr.to_string(), 20), (addr.to_string(), 11)] {
            let line = format!("livepool_local_resource_errors_total{{endpoint=\"{ep}\"}} {n}");
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
