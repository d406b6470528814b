//! The commit queue: writers queue their transactions, one of them leads a group commit
//! (applies the group to the memtable in queue order and writes it as one log append).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{DbError, Inner, SharedLog, lock_poisoned, poisoned};
use crate::txn::{Txn, TxnResponse};
use crate::txn_codec::encode_txn;

/// A queued write: the transaction and, once the leader ran it, its outcome.
pub(super) struct Pending {
    pub(super) txn: Txn,
    pub(super) outcome: Option<Result<TxnResponse, DbError>>,
}

/// A queued write with its log record, encoded by the submitting thread.
type Queued = (Arc<Mutex<Pending>>, Vec<u8>);

/// The writes waiting for a leader.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) pending: Vec<Queued>,
    pub(super) leader_active: bool,
}

impl<B: SharedLog> Inner<B> {
    /// Queues a write and waits for its outcome, leading a group commit when no other
    /// writer is.
    pub(super) fn submit(&self, txn: Txn) -> Result<TxnResponse, DbError> {
        let record = encode_txn(&txn);
        let me = Arc::new(Mutex::new(Pending { txn, outcome: None }));
        let mut q = self.queue.lock().map_err(lock_poisoned)?;
        q.pending.push((Arc::clone(&me), record));
        loop {
            if let Some(outcome) = me.lock().map_err(lock_poisoned)?.outcome.take() {
                return outcome;
            }
            if !q.leader_active {
                break;
            }
            q = self.queue_cv.wait(q).map_err(lock_poisoned)?;
        }
        // Lead: run groups until our own transaction is done.
        q.leader_active = true;
        loop {
            let n = q.pending.len().min(self.options.group_commit_txns_max);
            let take = self.fitting(&q.pending[..n]);
            let mut group: Vec<Queued> = q.pending.drain(..take).collect();
            drop(q);
            self.commit_group(&mut group);
            q = self.queue.lock().map_err(lock_poisoned)?;
            self.queue_cv.notify_all();
            let outcome = me.lock().map_err(lock_poisoned)?.outcome.take();
            if let Some(outcome) = outcome {
                q.leader_active = false;
                self.queue_cv.notify_all();
                return outcome;
            }
        }
    }

    /// How many of `queued` (at least one) one log append can take, by the log's own size
    /// check ([`crate::LogBackend::check_append`], for the WAL `Wal::check_append`), counting
    /// every record even though those that change nothing will not be written. Usually all
    /// fit and one check decides; otherwise the largest prefix that fits is bisected. One
    /// transaction always fits: [`super::DbOptions::validate`] checks that the largest one
    /// fits a log record.
    fn fitting(&self, queued: &[Queued]) -> usize {
        let fits = |k: usize| {
            let refs: Vec<&[u8]> = queued[..k].iter().map(|(_, r)| r.as_slice()).collect();
            self.log.check_append(&refs).is_ok()
        };
        if queued.len() <= 1 || fits(queued.len()) {
            return queued.len();
        }
        // Invariant: the first `lo` fit, the first `hi` do not.
        let (mut lo, mut hi) = (1, queued.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Applies a group of queued transactions in order, logs those that changed the store
    /// in one append, publishes durability, and fills in every outcome.
    pub(super) fn commit_group(&self, group: &mut [Queued]) {
        let set = |p: &Arc<Mutex<Pending>>, outcome| {
            if let Ok(mut p) = p.lock() {
                p.outcome = Some(outcome);
            }
        };
        if let Err(e) = self.check_poison() {
            let cause = match e {
                DbError::Poisoned { cause } => cause,
                other => other.to_string(),
            };
            for (p, _) in group.iter() {
                set(p, Err(poisoned(&cause)));
            }
            return;
        }
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut outcomes: Vec<Result<TxnResponse, DbError>> = Vec::with_capacity(group.len());
        let (first_lsn, revision) = {
            let Ok(mut m) = self.memtable.write() else {
                for (p, _) in group.iter() {
                    set(p, Err(lock_poisoned(())));
                }
                return;
            };
            // Only the leader appends, so the next LSN is known before the append.
            let first_lsn = self.log.next_lsn();
            for (p, record) in group.iter_mut() {
                let Ok(p) = p.lock() else {
                    outcomes.push(Err(lock_poisoned(())));
                    continue;
                };
                let before = m.revision();
                let outcome = m.txn(&p.txn).map_err(DbError::from);
                if outcome.as_ref().is_ok_and(|r| r.revision != before) {
                    records.push(std::mem::take(record));
                    m.set_applied_index(first_lsn + records.len() as u64 - 1);
                }
                outcomes.push(outcome);
            }
            (first_lsn, m.revision())
        };
        let mut failure = None;
        if !records.is_empty() {
            let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            match self.log.clone().append(&refs) {
                Ok(placed) if placed.first_lsn == first_lsn => {
                    self.txns_logged
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.log_appends.fetch_add(1, Ordering::Relaxed);
                    let since = self
                        .log_bytes_since_checkpoint
                        .fetch_add(bytes, Ordering::Relaxed)
                        + bytes;
                    if since >= self.options.checkpoint_log_bytes {
                        let _g = self.checkpoint_wake_lock.lock();
                        self.checkpoint_wake.notify_all();
                    }
                }
                Ok(placed) => {
                    failure = Some(format!(
                        "log placed the group at lsn {} instead of {first_lsn}",
                        placed.first_lsn
                    ))
                }
                Err(e) => failure = Some(format!("log append failed: {e}")),
            }
        }
        if let Ok(mut d) = self.durable.lock() {
            match &failure {
                Some(cause) => {
                    d.poison.get_or_insert_with(|| cause.clone());
                    self.poisoned.store(true, Ordering::Release);
                    // The checkpoint thread stops once it sees the poison.
                    let _g = self.checkpoint_wake_lock.lock();
                    self.checkpoint_wake.notify_all();
                }
                None => {
                    d.revision = revision;
                    self.durable_revision.store(revision, Ordering::Release);
                    if !records.is_empty() {
                        d.index = first_lsn + records.len() as u64 - 1;
                    }
                }
            }
            self.durable_cv.notify_all();
        }
        for ((p, _), outcome) in group.iter().zip(outcomes) {
            let outcome = match &failure {
                Some(cause) => Err(poisoned(cause)),
                None => outcome,
            };
            set(p, outcome);
        }
    }
}
