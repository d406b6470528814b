//! Keel consensus node.
//!
//! The [`consensus`] module is the pure Raft core: it performs no I/O and owns no thread or
//! clock. The benchmark driver that runs a cluster of it lives with the CLI (`keel bench
//! consensus`). The [`shard`] module is one shard's logic without I/O: many raft groups
//! over one log store, driven in rounds that persist all their work in one write. The
//! [`transport`] module carries raft messages between members: the wire
//! format and TCP connections on tokio. The [`restore`] module builds a new member's data
//! directory from a backup.

pub mod consensus;
pub mod members;
pub mod restore;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod transport;
