//! Export through the `metrics` facade (cargo feature `metrics`).
//!
//! Handles are registered once per pool, when it is built: install your recorder (for
//! example `metrics-exporter-prometheus`) before building pools. Every series carries the
//! label `endpoint` (the pool's address). Names and labels are listed in the README.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::breaker::BreakerState;
use crate::stats::EvictReason;

/// How a `get()` ended, for `livepool_gets_total{outcome}`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GetOutcome {
    Direct,
    Waited,
    TimedOut,
    FailedFast,
    Failed,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    created: Counter,
    local_resource_errors: Counter,
    config_errors: Counter,
    evicted: Vec<Counter>,
    gets: [Counter; 5],
    size: Gauge,
    idle: Gauge,
    in_use: Gauge,
    waiting: Gauge,
    breaker: Gauge,
    wait: Histogram,
    connect: Histogram,
    eviction_latency: Histogram,
}

impl Metrics {
    pub(crate) fn new(endpoint: String) -> Self {
        let ep = endpoint;
        let get = |outcome: &'static str| counter!("livepool_gets_total", "endpoint" => ep.clone(), "outcome" => outcome);
        Metrics {
            created: counter!("livepool_connections_created_total", "endpoint" => ep.clone()),
            local_resource_errors: counter!("livepool_local_resource_errors_total", "endpoint" => ep.clone()),
            config_errors: counter!("livepool_config_errors_total", "endpoint" => ep.clone()),
            evicted: EvictReason::ALL
                .iter()
                .map(|r| {
                    counter!("livepool_connections_evicted_total", "endpoint" => ep.clone(), "reason" => r.as_str())
                })
                .collect(),
            gets: [
                get("direct"),
                get("waited"),
                get("timed_out"),
                get("failed_fast"),
                get("failed"),
            ],
            size: gauge!("livepool_connections", "endpoint" => ep.clone(), "state" => "open"),
            idle: gauge!("livepool_connections", "endpoint" => ep.clone(), "state" => "idle"),
            in_use: gauge!("livepool_connections", "endpoint" => ep.clone(), "state" => "in_use"),
            waiting: gauge!("livepool_waiting", "endpoint" => ep.clone()),
            breaker: gauge!("livepool_breaker_state", "endpoint" => ep.clone()),
            wait: histogram!("livepool_get_wait_seconds", "endpoint" => ep.clone()),
            connect: histogram!("livepool_connect_seconds", "endpoint" => ep.clone()),
            eviction_latency: histogram!("livepool_eviction_latency_seconds", "endpoint" => ep),
        }
    }

    pub(crate) fn created(&self) {
        self.created.increment(1);
    }

    pub(crate) fn local_resource_error(&self) {
        self.local_resource_errors.increment(1);
    }

    pub(crate) fn config_error(&self) {
        self.config_errors.increment(1);
    }

    pub(crate) fn evicted(&self, reason: EvictReason, latency: Duration) {
        self.evicted[reason.index()].increment(1);
        self.eviction_latency.record(latency.as_secs_f64());
    }

    pub(crate) fn get(&self, outcome: GetOutcome, waited: Duration) {
        self.gets[outcome as usize].increment(1);
        self.wait.record(waited.as_secs_f64());
    }

    pub(crate) fn connect(&self, took: Duration) {
        self.connect.record(took.as_secs_f64());
    }

    pub(crate) fn status(&self, s: &crate::Status) {
        self.size.set(s.size as f64);
        self.idle.set(s.idle as f64);
        self.in_use.set(s.in_use as f64);
        self.waiting.set(s.waiting as f64);
        self.breaker.set(match s.breaker {
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
            _ => 0.0,
        });
    }
}
