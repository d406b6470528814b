//! A group's durable log as the consensus core reads it: [`LogStorage`] over the shard's one
//! [`LogStore`], which holds every group of the shard.
//!
//! The log store keeps opaque payloads; an entry's type rides in its first byte
//! ([`encode_entry`]). The store and the core each have their own entry and hard-state
//! types today; the conversions live here, in one place.

use std::cell::RefCell;
use std::rc::Rc;

use keel_engine::log_backend::LogBackend;
use keel_engine::{LogStore, LogStoreError};

use crate::consensus::message::{Index, Term};
use crate::consensus::{
    ConfState, Entry, EntryType, HardState, LogStorage, NodeId, Snapshot, StorageError,
};

/// The shard's log store, shared by the storages of its groups (one thread owns it all).
pub type SharedStore<B> = Rc<RefCell<LogStore<B>>>;

const TYPE_NORMAL: u8 = 0;
const TYPE_CONF_CHANGE: u8 = 1;

/// The log store's payload for a core entry: its type, then its data.
pub fn encode_entry(e: &Entry) -> keel_engine::Entry {
    let mut data = Vec::with_capacity(1 + e.data.len());
    data.push(match e.entry_type {
        EntryType::Normal => TYPE_NORMAL,
        EntryType::ConfChange => TYPE_CONF_CHANGE,
    });
    data.extend_from_slice(&e.data);
    keel_engine::Entry {
        index: e.index,
        term: e.term,
        data,
    }
}

/// The core entry of a log-store entry; `None` when its type byte is unknown (a log
/// written by a newer build).
pub fn decode_entry(e: &keel_engine::Entry) -> Option<Entry> {
    let (&kind, data) = e.data.split_first()?;
    let entry_type = match kind {
        TYPE_NORMAL => EntryType::Normal,
        TYPE_CONF_CHANGE => EntryType::ConfChange,
        _ => return None,
    };
    Some(Entry {
        term: e.term,
        index: e.index,
        entry_type,
        data: data.into(),
    })
}

/// The store's hard state for the core's.
pub fn store_hard_state(hs: &HardState) -> keel_engine::HardState {
    keel_engine::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

/// One group's view of the shard's log store.
pub struct GroupStorage<B: LogBackend> {
    group: u64,
    store: SharedStore<B>,
    /// The membership the group was created with, used until a snapshot records another.
    initial_voters: Vec<NodeId>,
}

impl<B: LogBackend> GroupStorage<B> {
    /// The storage of `group` in `store`; `initial_voters` is the group's membership at
    /// creation.
    pub fn new(group: u64, store: SharedStore<B>, initial_voters: Vec<NodeId>) -> Self {
        GroupStorage {
            group,
            store,
            initial_voters,
        }
    }
}

/// The core's error for a log-store read that failed. A failure to read (not a compacted
/// or missing index) has no place in the core's contract; it is reported as unavailable,
/// which makes the core wait and ask again rather than act on a partial view.
fn storage_error(e: &LogStoreError, index: Index, last_index: Index) -> StorageError {
    match e {
        LogStoreError::Compacted { first_index, .. } => StorageError::Compacted {
            index,
            snapshot_index: first_index.saturating_sub(1),
        },
        _ => StorageError::Unavailable { index, last_index },
    }
}

impl<B: LogBackend> LogStorage for GroupStorage<B> {
    fn initial_state(&self) -> (HardState, ConfState) {
        let store = self.store.borrow();
        let hs = store.hard_state(self.group);
        let hard_state = HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        };
        // Membership changes are not served yet: a group keeps its initial voters.
        let conf = ConfState {
            voters: self.initial_voters.clone(),
            ..ConfState::default()
        };
        (hard_state, conf)
    }

    fn entries(&self, lo: Index, hi: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        let store = self.store.borrow();
        let last_index = store.last_index(self.group);
        let entries = store
            .entries(self.group, lo, hi, bytes_max)
            .map_err(|e| storage_error(&e, lo, last_index))?;
        entries
            .iter()
            .map(|e| {
                decode_entry(e).ok_or(StorageError::Unavailable {
                    index: e.index,
                    last_index,
                })
            })
            .collect()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == 0 {
            return Ok(0);
        }
        let store = self.store.borrow();
        if let Some(snap) = store.snapshot(self.group) {
            if snap.index == index {
                return Ok(snap.term);
            }
        }
        store
            .term(self.group, index)
            .map_err(|e| storage_error(&e, index, store.last_index(self.group)))
    }

    fn first_index(&self) -> Index {
        self.store.borrow().first_index(self.group)
    }

    fn last_index(&self) -> Index {
        self.store.borrow().last_index(self.group)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        // Snapshots (a checkpoint of the group's memtable sent in chunks) come with log
        // compaction, which is not done yet: the log is never compacted, so a follower is
        // always caught up from entries.
        Err(StorageError::SnapshotTemporarilyUnavailable)
    }
}
