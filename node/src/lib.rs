//! Keel consensus node.
//!
//! The [`consensus`] module is the pure Raft core: it performs no I/O and owns no thread or
//! clock. The [`bench`](mod@bench) module drives an in-memory cluster of that core for benchmarks.

pub mod bench;
pub mod consensus;
pub mod transport;
