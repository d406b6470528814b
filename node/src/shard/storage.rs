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
    ConfState, Entry, EntryType, HardState, LogStorage, NodeId, Snapshot, SnapshotMetadata,
    StorageError,
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

/// The store's opaque configuration blob for a conf state. Little-endian, the layout of the
/// peer wire's conf state: four lists (voters, learners, outgoing voters, next learners),
/// each a u32 count then that many u64 member ids, then one byte `auto_leave` (0 or 1).
pub fn encode_conf_state(cs: &ConfState) -> Vec<u8> {
    let mut out = Vec::new();
    for list in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        out.extend_from_slice(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_le_bytes());
        for id in list {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.push(u8::from(cs.auto_leave));
    out
}

/// The conf state of a blob written by [`encode_conf_state`]; the error says what is wrong.
pub fn decode_conf_state(bytes: &[u8]) -> Result<ConfState, String> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if n > rest.len() {
            return Err(format!(
                "conf state truncated: {n} bytes needed, {} left",
                rest.len()
            ));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut lists: [Vec<NodeId>; 4] = Default::default();
    for list in &mut lists {
        let count = take(4)?;
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
        let count = usize::try_from(count).map_err(|_| "conf state count overflows")?;
        let ids = take(count.checked_mul(8).ok_or("conf state count overflows")?)?;
        *list = ids
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
    }
    let auto_leave = match take(1)?[0] {
        0 => false,
        1 => true,
        other => return Err(format!("conf state auto_leave byte {other}")),
    };
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes left over after the conf state",
            rest.len()
        ));
    }
    let [voters, learners, voters_outgoing, learners_next] = lists;
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
    })
}

/// One group's view of the shard's log store.
pub struct GroupStorage<B: LogBackend> {
    group: u64,
    store: SharedStore<B>,
    /// The membership the group was created with, used until a snapshot records another.
    initial_voters: Vec<NodeId>,
    /// The index of the checkpoint the group's state machine restarted from (0: none).
    /// Its entries were applied, so they were committed: the commit index reported at
    /// start is at least this, even if the hard state that said so had not been written.
    restored_index: Index,
    /// The membership as of the checkpoint the group restarted from (`None`: no
    /// checkpoint); the membership changes after it are applied again from the log.
    restored_conf: Option<ConfState>,
}

impl<B: LogBackend> GroupStorage<B> {
    /// The storage of `group` in `store`; `initial_voters` is the group's membership at
    /// creation.
    pub fn new(group: u64, store: SharedStore<B>, initial_voters: Vec<NodeId>) -> Self {
        GroupStorage {
            group,
            store,
            initial_voters,
            restored_index: 0,
            restored_conf: None,
        }
    }

    /// Says that the group's state machine restarts from a checkpoint at `index`, which the
    /// stored log holds, with the membership `conf_state` as of it (see the fields' docs).
    pub fn set_restored(&mut self, index: Index, conf_state: ConfState) {
        self.restored_index = index;
        self.restored_conf = Some(conf_state);
    }

    /// The membership as of the snapshot the log records, or the initial one.
    fn recorded_conf(&self, store: &LogStore<B>) -> ConfState {
        store
            .snapshot(self.group)
            .and_then(|meta| decode_conf_state(&meta.conf_state).ok())
            .unwrap_or_else(|| ConfState {
                voters: self.initial_voters.clone(),
                ..ConfState::default()
            })
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
            commit: hs.commit.max(self.restored_index),
        };
        // The membership as of the point the state machine restarts from: the membership
        // changes after it are committed entries, which the group applies again.
        let conf = match &self.restored_conf {
            Some(cs) => cs.clone(),
            None => self.recorded_conf(&store),
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

    /// The metadata of the group's latest durable checkpoint, as the log store recorded it.
    /// The data stays empty: the shard sends the checkpoint file itself, in chunks, when the
    /// core asks for the snapshot to be sent.
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        let store = self.store.borrow();
        let Some(meta) = store.snapshot(self.group) else {
            return Err(StorageError::SnapshotTemporarilyUnavailable);
        };
        // A conf state that does not decode never becomes the initial members (a shard
        // refuses to start on one; this can only be a bug): no snapshot is sent.
        let conf_state = match decode_conf_state(&meta.conf_state) {
            Ok(cs) => cs,
            Err(error) => {
                tracing::error!(
                    group = self.group,
                    index = meta.index,
                    %error,
                    "the recorded snapshot's conf state does not decode; not sent"
                );
                return Err(StorageError::SnapshotTemporarilyUnavailable);
            }
        };
        Ok(Snapshot {
            metadata: SnapshotMetadata {
                index: meta.index,
                term: meta.term,
                conf_state,
            },
            data: Vec::new(),
        })
    }
}
