//! The pure Raft consensus core, in the style of etcd-io/raft.
//!
//! Nothing in this module performs I/O, reads a clock, spawns a thread or touches an async
//! runtime (a test enforces it): time is [`RawNode::tick`], the network is [`Message`] values,
//! and storage is read through [`LogStorage`] and written by the host from the work in a
//! [`Ready`], which it acknowledges with [`AppendAck`] and [`ApplyAck`].

mod confchange;
pub mod config;
mod inflights;
mod log_unstable;
pub mod message;
pub mod prng;
mod progress;
mod quorum;
mod raft;
mod raft_log;
pub mod raw_node;
mod read_only;
pub mod status;
pub mod storage;
mod tracker;

pub use confchange::ConfChangeError;
pub use config::{Config, ConfigError};
pub use message::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfState, Entry, EntryId, EntryType,
    HardState, Message, MessageType, NO_NODE, NodeId, Payload, Snapshot, SnapshotMetadata,
};
pub use progress::ProgressState;
pub use raft::{RaftError, SoftState, StateRole};
pub use raw_node::{AppendAck, AppendWork, ApplyAck, ApplyWork, RawNode, Ready};
pub use read_only::{ReadOnlyOption, ReadState};
pub use status::{BasicStatus, PeerStatus, Status, UnstableStatus};
pub use storage::{LogStorage, MemStorage, StorageError};
