//! The face-off (placeholder while it is being built): see `harness.rs`.

mod harness;

fn main() {}
