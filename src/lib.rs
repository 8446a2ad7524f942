#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    rustdoc::broken_intra_doc_links
)]

mod breaker;
mod builder;
mod config;
mod conn;
mod error;
mod heartbeat;
mod manager;
#[cfg(feature = "metrics")]
mod metrics;
mod pool;
mod probe;
mod reaper;
mod stats;

pub use breaker::{BreakerConfig, BreakerState, Transition};
pub use builder::{Builder, IntoAddr};
pub use conn::Conn;
pub use error::{BuildError, Error, TimeoutPhase};
pub use heartbeat::{
    FrameHeartbeat, Heartbeat, HeartbeatError, RedisHeartbeat, read_exact, write_all,
};
pub use pool::{Pool, Status};
pub use stats::{
    BreakerEvent, BreakerEvents, Events, EventsError, EvictReason, EvictionEvent, Statistics,
};
