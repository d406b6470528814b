//! Keel consensus node.
//!
//! The [`consensus`] module is the pure Raft core: it performs no I/O and owns no thread or
//! clock. The benchmark driver that runs a cluster of it lives with the CLI (`keel bench
//! consensus`).

pub mod consensus;
pub mod transport;
