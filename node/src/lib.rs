//! Keel consensus node.
//!
//! The [`consensus`] module is the pure Raft core: it performs no I/O and owns no thread or
//! clock. The [`bench`](mod@bench) module drives an in-memory cluster of that core for benchmarks.
//! The [`transport`] module carries raft messages between members: the wire format and TCP
//! connections on tokio.

pub mod bench;
pub mod consensus;
pub mod transport;
