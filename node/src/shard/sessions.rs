//! Exactly-once writes: the last result of each client, so that a retried write is answered
//! rather than applied again.
//!
//! Every replica applies the same entries in the same order, so every replica's table is
//! the same; eviction depends only on applied indexes, never on clocks. The table is
//! bounded: past `sessions_max` clients, the one that wrote least recently is forgotten
//! (its retries are then refused as [`Duplicate::Forgotten`], never applied twice is not
//! guaranteed for a client forgotten that way — size the bound for the clients you run).

use std::collections::{BTreeSet, HashMap};

use keel_engine::txn::TxnResponse;

/// What the table knows about a write it is asked about.
#[derive(Clone, Debug, PartialEq)]
pub enum Duplicate {
    /// Not seen: apply it.
    New,
    /// The client's last write, already applied: answer with its result.
    Answered(Result<TxnResponse, String>),
    /// An older write of the client than its last: its result is no longer kept.
    Stale {
        /// The client's last applied sequence.
        last: u64,
    },
}

struct Session {
    sequence: u64,
    result: Result<TxnResponse, String>,
    /// Index of the entry that last wrote it (for eviction).
    index: u64,
}

/// The per-group table of client sessions.
pub struct Sessions {
    sessions: HashMap<u64, Session>,
    /// (index, client) of every session, oldest write first.
    by_index: BTreeSet<(u64, u64)>,
    sessions_max: usize,
}

impl Sessions {
    /// An empty table that keeps at most `sessions_max` clients.
    pub fn new(sessions_max: usize) -> Sessions {
        Sessions {
            sessions: HashMap::new(),
            by_index: BTreeSet::new(),
            sessions_max: sessions_max.max(1),
        }
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether write `sequence` of `client` was applied already.
    pub fn check(&self, client: u64, sequence: u64) -> Duplicate {
        if client == 0 {
            return Duplicate::New;
        }
        match self.sessions.get(&client) {
            Some(s) if s.sequence == sequence => Duplicate::Answered(s.result.clone()),
            Some(s) if s.sequence > sequence => Duplicate::Stale { last: s.sequence },
            _ => Duplicate::New,
        }
    }

    /// Records the result of write `sequence` of `client`, applied at `index`.
    pub fn record(
        &mut self,
        client: u64,
        sequence: u64,
        result: Result<TxnResponse, String>,
        index: u64,
    ) {
        if client == 0 {
            return;
        }
        if let Some(old) = self.sessions.insert(
            client,
            Session {
                sequence,
                result,
                index,
            },
        ) {
            self.by_index.remove(&(old.index, client));
        }
        self.by_index.insert((index, client));
        while self.sessions.len() > self.sessions_max {
            let Some((_, oldest)) = self.by_index.pop_first() else {
                break;
            };
            self.sessions.remove(&oldest);
        }
    }
}
