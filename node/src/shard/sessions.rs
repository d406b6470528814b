//! Exactly-once writes: the results of each client's recent writes, so that a retried write
//! is answered rather than applied again.
//!
//! A client numbers its writes and sends with each the smallest sequence it still waits an
//! answer for (`first_unanswered`, its floor): every write below the floor was answered, so
//! its result can be forgotten and a late copy of it refused. The table keeps, per client,
//! the results of applied writes at or above the client's floor (a pipelining client may
//! have many; at most `results_per_client_max`, oldest forgotten first).
//!
//! Every replica applies the same entries in the same order, so every replica's table is
//! the same; eviction depends only on applied indexes, never on clocks. The table is
//! bounded: past `sessions_max` clients, the one that wrote least recently is forgotten, and
//! a retry from a forgotten client could apply twice — size the bound for the clients you
//! run (client ids are random, so a forgotten id is not reused).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_engine::txn::TxnResponse;

/// Results kept per client above its floor.
pub const RESULTS_PER_CLIENT_MAX: usize = 4096;

/// What the table knows about a write it is asked about.
#[derive(Clone, Debug, PartialEq)]
pub enum Duplicate {
    /// Not seen: apply it.
    New,
    /// Applied already: answer with its result.
    Answered(Result<TxnResponse, String>),
    /// Below the client's floor: answered before, its result forgotten; refuse it.
    Stale {
        /// The client's floor.
        floor: u64,
    },
}

struct Session {
    /// Every write of the client below this was answered.
    floor: u64,
    results: BTreeMap<u64, Result<TxnResponse, String>>,
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
            Some(s) if sequence < s.floor => Duplicate::Stale { floor: s.floor },
            Some(s) => match s.results.get(&sequence) {
                Some(result) => Duplicate::Answered(result.clone()),
                None => Duplicate::New,
            },
            None => Duplicate::New,
        }
    }

    /// Records the result of write `sequence` of `client` (whose floor was `floor` when it
    /// sent it), applied at `index`.
    pub fn record(
        &mut self,
        client: u64,
        sequence: u64,
        floor: u64,
        result: Result<TxnResponse, String>,
        index: u64,
    ) {
        if client == 0 {
            return;
        }
        let session = self.sessions.entry(client).or_insert_with(|| Session {
            floor: 0,
            results: BTreeMap::new(),
            index,
        });
        self.by_index.remove(&(session.index, client));
        session.index = index;
        // The floor never exceeds the write's own sequence (it is still unanswered).
        session.floor = session.floor.max(floor.min(sequence));
        let keep = session.results.split_off(&session.floor);
        session.results = keep;
        session.results.insert(sequence, result);
        while session.results.len() > RESULTS_PER_CLIENT_MAX {
            session.results.pop_first();
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
