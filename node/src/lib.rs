//! Keel consensus node.
//!
//! The [`consensus`] module is the pure Raft core: it performs no I/O and owns no thread or
//! clock. The benchmark driver that runs a cluster of it lives with the CLI (`keel bench
//! consensus`). The [`shard`] module is one shard's logic without I/O: many raft groups
//! over one log store, driven in rounds that persist all their work in one write. The
//! [`transport`] module carries raft messages between members: the wire
//! format and TCP connections on tokio. The [`host`] module is what drives a shard between
//! its inputs and outputs, over seams for the transport, the log and the clock: the
//! [`runtime`]'s shard threads use it with TCP, a WAL and the machine's clock, and the
//! [`sim`] module with simulated twins, to run a whole cluster in one thread from a seed.
//! The [`restore`] module builds a new member's data directory from a backup.

pub mod consensus;
pub mod host;
pub mod members;
pub mod restore;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod sim;
pub mod transport;
