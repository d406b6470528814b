//! Simulated twins of a shard host's seams, and a whole cluster in one thread on them.
//!
//! The runtime hosts a shard over the TCP [`Transport`](crate::transport::Transport), an
//! `Arc<Wal>` and the machine's clock; here the same host logic ([`crate::host`]) runs over
//! a [`SimNetwork`] (one [`SimTransport`] per member), a
//! [`MemLog`](keel_engine::log_backend::MemLog) and a [`SimClock`], so that a whole
//! cluster runs in one process, deterministically, from a seed:
//! - [`SimNetwork`]: delays, reordering, drops, isolations and partitions from a seed,
//!   chunks of snapshot transfers in order per link and at most
//!   [`SNAPSHOT_CHUNKS_QUEUED_MAX`](crate::transport::SNAPSHOT_CHUNKS_QUEUED_MAX) in flight
//!   per link, as over TCP;
//! - [`SimClock`]: time that moves only when the simulation moves it;
//! - [`SimCluster`]: members' shards over in-memory logs and checkpoint directories,
//!   stepped through the shared host logic; crashes, restarts, joins and removals;
//!   requests and their answers; a [`TraceDigest`] of everything that happened, so that
//!   two runs can be compared.
//!
//! Determinism needs the shards' snapshot helpers inline
//! ([`Helpers::Inline`](crate::shard::Helpers), the default of [`SimOptions`]): helper
//! threads finish when the machine lets them.
//!
//! ```
//! use keel_engine::txn::{Op, Txn};
//! use keel_node::sim::{SimCluster, SimOptions};
//!
//! let mut cluster = SimCluster::new(SimOptions::new(7, 3, 2)).unwrap();
//! while cluster.agreed_leader(0).is_none() {
//!     cluster.step();
//! }
//! let leader = cluster.agreed_leader(0).unwrap();
//! let txn = Txn::batch(vec![Op::put("k", "v")]);
//! let id = cluster
//!     .submit(leader, |shard, id| shard.write(id, 0, (1, 1, 1), txn))
//!     .unwrap();
//! while cluster.answer(id).is_none() {
//!     cluster.step();
//! }
//! ```

mod clock;
mod cluster;
mod network;
mod trace;

pub use clock::SimClock;
pub use cluster::{SimCluster, SimOptions};
pub use network::{NetworkOptions, NetworkStats, Packet, SimNetwork, SimTransport};
pub use trace::TraceDigest;
