//! The records the raft log store writes into its log, one per log record.
//!
//! # Encoding, version 1
//!
//! Every record starts with one kind byte; all integers are little-endian u64. The log below
//! frames each record with its own length and checksum, so these records carry neither.
//!
//! ```text
//! 1 Entry       group, index, term, then the entry data (rest of the record)
//! 2 HardState   group, term, vote, commit
//! 3 Compact     group, index, term              entries <= index are dropped
//! 4 Snapshot    group, index, term, conf state (rest)   snapshot metadata only
//! 5 Reset       group, index, term, hs term, hs vote, hs commit, has_snapshot (u8),
//!               [snapshot index, snapshot term, conf state (rest)]
//!               drops every entry: the group restarts after `index` (term `term`);
//!               written when a snapshot is applied and before a rewrite of live entries
//! 6 Remove      group                           the group and all its state are gone
//! ```
//!
//! An `Entry` at index `i` replaces the group's entries from `i` on: that is how a
//! conflicting suffix is truncated, with no separate record.

use crate::bytes::Reader;
use crate::log_store::{Entry, GroupId, HardState, SnapshotMeta};

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;
const KIND_RESET: u8 = 5;
const KIND_REMOVE: u8 = 6;

/// One decoded log store record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// A raft entry; replaces the group's entries from its index on.
    Entry {
        /// The group.
        group: GroupId,
        /// The entry.
        entry: Entry,
    },
    /// A new hard state.
    HardState {
        /// The group.
        group: GroupId,
        /// The hard state.
        hard_state: HardState,
    },
    /// Entries up to `index` are dropped; `term` is the term of the entry at `index`.
    Compact {
        /// The group.
        group: GroupId,
        /// Last dropped index.
        index: u64,
        /// Term of the entry at `index`.
        term: u64,
    },
    /// New snapshot metadata; entries are untouched.
    Snapshot {
        /// The group.
        group: GroupId,
        /// The metadata.
        meta: SnapshotMeta,
    },
    /// The group is removed (its replica was destroyed); a later record starts it afresh.
    Remove {
        /// The group.
        group: GroupId,
    },
    /// The group's entries are all dropped and it restarts after `index`.
    Reset {
        /// The group.
        group: GroupId,
        /// Index the group restarts after (its new first index is `index + 1`).
        index: u64,
        /// Term of the entry at `index`.
        term: u64,
        /// The hard state.
        hard_state: HardState,
        /// The snapshot metadata, if the group has one.
        snapshot: Option<SnapshotMeta>,
    },
}

impl LogRecord {
    /// The group the record belongs to.
    pub fn group(&self) -> GroupId {
        match self {
            LogRecord::Entry { group, .. }
            | LogRecord::HardState { group, .. }
            | LogRecord::Compact { group, .. }
            | LogRecord::Snapshot { group, .. }
            | LogRecord::Reset { group, .. }
            | LogRecord::Remove { group } => *group,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let put = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        match self {
            LogRecord::Entry { group, entry } => {
                out.push(KIND_ENTRY);
                put(out, *group);
                put(out, entry.index);
                put(out, entry.term);
                out.extend_from_slice(&entry.data);
            }
            LogRecord::HardState { group, hard_state } => {
                out.push(KIND_HARD_STATE);
                put(out, *group);
                put(out, hard_state.term);
                put(out, hard_state.vote);
                put(out, hard_state.commit);
            }
            LogRecord::Compact { group, index, term } => {
                out.push(KIND_COMPACT);
                put(out, *group);
                put(out, *index);
                put(out, *term);
            }
            LogRecord::Snapshot { group, meta } => {
                out.push(KIND_SNAPSHOT);
                put(out, *group);
                put(out, meta.index);
                put(out, meta.term);
                out.extend_from_slice(&meta.conf_state);
            }
            LogRecord::Remove { group } => {
                out.push(KIND_REMOVE);
                put(out, *group);
            }
            LogRecord::Reset {
                group,
                index,
                term,
                hard_state,
                snapshot,
            } => {
                out.push(KIND_RESET);
                put(out, *group);
                put(out, *index);
                put(out, *term);
                put(out, hard_state.term);
                put(out, hard_state.vote);
                put(out, hard_state.commit);
                match snapshot {
                    None => out.push(0),
                    Some(s) => {
                        out.push(1);
                        put(out, s.index);
                        put(out, s.term);
                        out.extend_from_slice(&s.conf_state);
                    }
                }
            }
        }
    }

    /// The encoding as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes a record; the error says what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<LogRecord, String> {
        let mut r = Reader::new(bytes);
        let kind = r.u8()?;
        let group = r.u64()?;
        let rec = match kind {
            KIND_ENTRY => LogRecord::Entry {
                group,
                entry: Entry {
                    index: r.u64()?,
                    term: r.u64()?,
                    data: r.rest().to_vec(),
                },
            },
            KIND_HARD_STATE => LogRecord::HardState {
                group,
                hard_state: HardState {
                    term: r.u64()?,
                    vote: r.u64()?,
                    commit: r.u64()?,
                },
            },
            KIND_COMPACT => LogRecord::Compact {
                group,
                index: r.u64()?,
                term: r.u64()?,
            },
            KIND_SNAPSHOT => LogRecord::Snapshot {
                group,
                meta: SnapshotMeta {
                    index: r.u64()?,
                    term: r.u64()?,
                    conf_state: r.rest().to_vec(),
                },
            },
            KIND_RESET => {
                let index = r.u64()?;
                let term = r.u64()?;
                let hard_state = HardState {
                    term: r.u64()?,
                    vote: r.u64()?,
                    commit: r.u64()?,
                };
                let snapshot = match r.u8()? {
                    0 => None,
                    1 => Some(SnapshotMeta {
                        index: r.u64()?,
                        term: r.u64()?,
                        conf_state: r.rest().to_vec(),
                    }),
                    other => return Err(format!("bad snapshot flag {other}")),
                };
                LogRecord::Reset {
                    group,
                    index,
                    term,
                    hard_state,
                    snapshot,
                }
            }
            KIND_REMOVE => LogRecord::Remove { group },
            other => return Err(format!("unknown record kind {other}")),
        };
        r.finish()?;
        Ok(rec)
    }
}
