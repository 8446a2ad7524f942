#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    rustdoc::broken_intra_doc_links
)]

// Layers, bottom up. Each file imports only from its own layer and the ones before it
// (check with `grep -rn "crate::" src`); the one exception is a re-export of a module's own
// file in its mod.rs (member/mod.rs re-exports `Conn`):
//   jitter; breaker; stats; transport; io; protocol;
//   pool's leaves (error.rs, status.rs, config.rs); metrics; pool/shared.rs;
//   member (the state word, the entry machine, `Shared`, idle bytes);
//   pool/manager.rs (deadpool's `Manager`); member/conn.rs (`Conn`, the return path);
//   reaper; pool/mod.rs with pool/builder.rs (`Pool`, `Builder`); balancer.
// `pool` and `member` hold files of more than one layer, so as whole modules they import
// each other, and `reaper` and `metrics` import `pool`, which imports them; file by file
// the order holds.
mod balancer; //  one handle over several endpoints' pools: selection, failover
mod breaker; //   the pure circuit-breaker machine
mod io; //        tracked I/O: the clean-return bookkeeping, above TLS
mod jitter; //    the one seeded PRNG behind every jitter
mod member; //    the state word, the entry machine, a member's shared state, idle bytes, Conn
#[cfg(feature = "metrics")]
mod metrics;
mod pool; //      leaf shared state, Status, the deadpool manager, builder, config, errors, Pool
mod protocol; //   the Protocol trait, the raw default, ready-made protocols
mod reaper; //    the background task: watch, schedule (wheel), heartbeat, refill
mod stats; //     counters, histograms, event streams
mod transport; // sockets (TCP, Unix), DNS at every connect, TLS, the kernel probe, blame

pub use balancer::{
    Balancer, BalancerBuilder, BalancerEvent, BalancerEventKind, BalancerEvents, Ejection,
    EndpointStatus,
};
pub use breaker::{BreakerConfig, BreakerState, Transition};
pub use io::Io;
pub use member::Conn;
pub use pool::builder::{Builder, IntoAddr};
pub use pool::config::PoolConfig;
pub use pool::error::{BuildError, Error, SizeError, TimeoutPhase};
pub use pool::{Pool, Status};
pub use protocol::{
    Driven, Driver, DriverEnd, FramePing, HeartbeatError, Hosted, HostedConn, IdleVerdict,
    Protocol, Raw, RedisPing, SetupError, discard_idle,
};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
pub use stats::{
    BreakerEvent, BreakerEvents, Events, EventsError, EvictReason, EvictionEvent, Statistics,
};
pub use transport::TcpOptions;
