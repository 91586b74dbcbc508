//! Benchmarks of traforato: shared fixtures and statistics.
//!
//! - `benches/micro.rs`: criterion micro benches that need nothing external (broker
//!   placement, worker warm claim with the fake backend, availability text, id parsing):
//!   `cargo bench -p traforato-benches`.
//! - `startup/`: the end-to-end benchmark that measures PRODUCT.md's speed ratios on this
//!   machine in one run (real HTTP shells, `container` backend, root):
//!   `cargo run --release -p traforato-benches --bin startup -- [--iterations N]`.

pub mod fixtures;
pub mod stats;
