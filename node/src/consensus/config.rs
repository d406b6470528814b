//! The options of one raft instance.

use super::message::{Index, NodeId};
use super::read_only::ReadOnlyOption;

/// Options of one raft instance. Every field documents its default ([`Config::new`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id; must not be 0.
    pub id: NodeId,
    /// The raft group this instance belongs to; copied into every message and Ready so that a
    /// runtime hosting many groups can route them. Default 0.
    pub group_id: u64,
    /// Ticks without hearing from a leader before a follower campaigns; the actual timeout is
    /// drawn from `[election_ticks, 2 * election_ticks)`. Default 10.
    pub election_ticks: u64,
    /// Ticks between leader heartbeats; must be below `election_ticks`. Default 1.
    pub heartbeat_ticks: u64,
    /// The index the state machine has applied on restart. Default 0.
    pub applied: Index,
    /// The most payload bytes in one append message (at least one entry is always sent).
    /// Default 1 MiB.
    pub msg_bytes_max: u64,
    /// The most append messages in flight to one follower. Default 256.
    pub inflight_msgs_max: usize,
    /// The most payload bytes in flight to one follower; 0 for no limit. Default 32 MiB.
    pub inflight_bytes_max: u64,
    /// The most payload bytes of uncommitted entries a leader accepts; proposals beyond are
    /// dropped. 0 for no limit. Default 64 MiB.
    pub uncommitted_bytes_max: u64,
    /// The most payload bytes of committed entries handed to the state machine in one Ready.
    /// Default 64 MiB.
    pub apply_bytes_max: u64,
    /// Whether a node runs a pre-vote round before campaigning, so that a partitioned node
    /// does not disrupt the group when it comes back. Default true.
    pub pre_vote: bool,
    /// Whether a leader steps down when it has not heard from a quorum within an election
    /// timeout (and followers ignore vote requests while they hear from a leader). Default true.
    pub check_quorum: bool,
    /// How reads are served. Default [`ReadOnlyOption::Safe`].
    pub read_only: ReadOnlyOption,
    /// Whether followers drop proposals instead of forwarding them to the leader. Default false.
    pub disable_proposal_forwarding: bool,
    /// Seed of the generator for randomized election timeouts. Default: the node id.
    pub seed: u64,
}

/// Why a [`Config`] is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `id` is 0, the marker for "no node".
    IdZero,
    /// `heartbeat_ticks` is 0.
    HeartbeatTicksZero,
    /// `election_ticks` does not exceed `heartbeat_ticks`.
    ElectionTicksNotAboveHeartbeat {
        /// The configured `election_ticks`.
        election_ticks: u64,
        /// The configured `heartbeat_ticks`.
        heartbeat_ticks: u64,
    },
    /// `inflight_msgs_max` is 0.
    InflightMsgsMaxZero,
    /// `inflight_bytes_max` is below `msg_bytes_max`, so a full message could never be sent.
    InflightBytesBelowMsgBytes {
        /// The configured `inflight_bytes_max`.
        inflight_bytes_max: u64,
        /// The configured `msg_bytes_max`.
        msg_bytes_max: u64,
    },
    /// Lease-based reads are configured without `check_quorum`, which the lease relies on.
    LeaseWithoutCheckQuorum,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::IdZero => write!(f, "id must not be 0 (0 means no node)"),
            ConfigError::HeartbeatTicksZero => write!(f, "heartbeat_ticks must be positive, got 0"),
            ConfigError::ElectionTicksNotAboveHeartbeat {
                election_ticks,
                heartbeat_ticks,
            } => write!(
                f,
                "election_ticks ({election_ticks}) must exceed heartbeat_ticks ({heartbeat_ticks})"
            ),
            ConfigError::InflightMsgsMaxZero => {
                write!(f, "inflight_msgs_max must be positive, got 0")
            }
            ConfigError::InflightBytesBelowMsgBytes {
                inflight_bytes_max,
                msg_bytes_max,
            } => write!(
                f,
                "inflight_bytes_max ({inflight_bytes_max}) must be 0 (no limit) or at least \
                 msg_bytes_max ({msg_bytes_max})"
            ),
            ConfigError::LeaseWithoutCheckQuorum => {
                write!(f, "lease-based reads require check_quorum")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The defaults for node `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            group_id: 0,
            election_ticks: 10,
            heartbeat_ticks: 1,
            applied: 0,
            msg_bytes_max: 1 << 20,
            inflight_msgs_max: 256,
            inflight_bytes_max: 32 << 20,
            uncommitted_bytes_max: 64 << 20,
            apply_bytes_max: 64 << 20,
            pre_vote: true,
            check_quorum: true,
            read_only: ReadOnlyOption::Safe,
            disable_proposal_forwarding: false,
            seed: id,
        }
    }

    /// Checks the relations between the options.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::IdZero);
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::HeartbeatTicksZero);
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::ElectionTicksNotAboveHeartbeat {
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
            });
        }
        if self.inflight_msgs_max == 0 {
            return Err(ConfigError::InflightMsgsMaxZero);
        }
        if self.inflight_bytes_max != 0 && self.inflight_bytes_max < self.msg_bytes_max {
            return Err(ConfigError::InflightBytesBelowMsgBytes {
                inflight_bytes_max: self.inflight_bytes_max,
                msg_bytes_max: self.msg_bytes_max,
            });
        }
        if self.read_only == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum);
        }
        Ok(())
    }
}
