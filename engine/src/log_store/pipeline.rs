//! The staged pipeline: asynchronous writes that the store appends itself, in stage order.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll, ready};

use super::validate::{Prepared, View};
use super::{GroupId, LogStore, LogStoreError, WriteBatch};
use crate::log_backend::{AppendFuture, AsyncLogBackend};

/// Identifies a staged write (see [`LogStore::stage`]). Tickets ascend in stage order, and
/// [`LogStore::durable`] hands them back in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

impl Ticket {
    /// The write's place in stage order (the first staged write of a store is 1).
    pub fn seq(self) -> u64 {
        self.0
    }
}

/// A staged write waiting for its append.
#[derive(Debug)]
pub(super) struct Staged {
    pub(super) ticket: Ticket,
    pub(super) write: Prepared,
}

/// The one append in flight: the staged writes it carries, in stage order, and the log's
/// future for it.
pub(super) struct InFlight {
    pub(super) writes: Vec<Staged>,
    pub(super) append: AppendFuture,
}

/// The asynchronous write pipeline: staged writes go to the log one append at a time, in
/// stage order, and are applied in that order once durable.
///
/// Invariants: `queued`, then `in_flight`, then `durable` hold tickets in descending stage
/// order (`durable` the oldest); their total is at most `inflight_writes_max`; `views` is
/// empty when nothing is queued or in flight.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Staged writes not yet handed to the log, oldest first.
    pub(super) queued: VecDeque<Staged>,
    /// The append in flight, if any.
    pub(super) in_flight: Option<InFlight>,
    /// Writes durable and applied whose tickets `durable` has not returned yet.
    pub(super) durable: VecDeque<Ticket>,
    /// Ticket of the last staged write.
    pub(super) last_ticket: u64,
    /// Groups touched by staged writes, as they will be once those are applied.
    pub(super) views: HashMap<GroupId, View>,
}

impl Pipeline {
    /// Staged writes whose tickets are not handed back yet: queued, in flight or durable.
    pub(super) fn len(&self) -> usize {
        self.queued.len()
            + self.in_flight.as_ref().map_or(0, |f| f.writes.len())
            + self.durable.len()
    }

    /// Drops the views once every staged write is applied: the state is then what they
    /// foresaw, and blocking writes may change it from now on.
    fn forget_views_if_idle(&mut self) {
        if !self.busy() {
            self.views.clear();
        }
    }

    /// Whether a staged write is queued or in flight (tickets still to hand back do not
    /// count: their writes are applied).
    pub(super) fn busy(&self) -> bool {
        !self.queued.is_empty() || self.in_flight.is_some()
    }
}

/// The asynchronous write path, for a caller that must not block (a raft node's async shard
/// runtime): the store owns the appends, and the caller only awaits them.
impl<B: AsyncLogBackend> LogStore<B> {
    /// Validates `batch` and queues it for a log append (its own, or one shared with the
    /// writes staged right after it), returning its ticket. Nothing is visible to reads
    /// until [`LogStore::durable`] hands the ticket back.
    ///
    /// Up to `inflight_writes_max` staged writes may be outstanding (pipelining, as
    /// etcd-raft's asynchronous storage writes do): each is validated as if those staged
    /// before it had been applied. The store appends them itself, one log append at a time
    /// and in stage order, so the log always holds them in the order they were validated
    /// for: there is no order for the caller to get wrong. A write staged behind an append
    /// that failed never reaches the log. Blocking writes (`write`, `compact`, `maintain`,
    /// ...) are refused with [`LogStoreError::WriteInFlight`] while a staged write is
    /// queued or in flight.
    pub fn stage(&mut self, batch: WriteBatch) -> Result<Ticket, LogStoreError> {
        self.check_poison()?;
        if self.pipeline.len() >= self.options.inflight_writes_max {
            return Err(LogStoreError::TooManyInFlight {
                max: self.options.inflight_writes_max,
            });
        }
        let (records, views) = self.batch_records(batch)?;
        let write = self.prepare(records)?;
        self.pipeline.last_ticket += 1;
        let ticket = Ticket(self.pipeline.last_ticket);
        self.pipeline.views.extend(views);
        self.pipeline.queued.push_back(Staged { ticket, write });
        debug_assert!(self.pipeline.len() <= self.options.inflight_writes_max);
        Ok(ticket)
    }

    /// Waits until the oldest staged write is durable and applied, and returns its ticket.
    /// Tickets come back in stage order, each once. Pending while nothing is staged.
    ///
    /// Cancel-safe: the append in flight belongs to the store, so dropping this future and
    /// calling again later loses nothing. A failed append poisons the store: this returns
    /// the log's error once and [`LogStoreError::Poisoned`] afterwards, and no write staged
    /// at that time is acknowledged.
    pub async fn durable(&mut self) -> Result<Ticket, LogStoreError> {
        std::future::poll_fn(|cx| self.poll_durable(cx)).await
    }

    /// [`LogStore::durable`] as a poll function, for hand-written futures and event loops:
    /// drives the append in flight, starts the next one, and returns the oldest durable
    /// ticket.
    pub fn poll_durable(&mut self, cx: &mut Context<'_>) -> Poll<Result<Ticket, LogStoreError>> {
        loop {
            self.check_poison()?;
            if let Some(ticket) = self.pipeline.durable.pop_front() {
                return Poll::Ready(Ok(ticket));
            }
            let Some(in_flight) = &mut self.pipeline.in_flight else {
                if !self.start_append() {
                    return Poll::Pending;
                }
                continue;
            };
            let outcome = ready!(in_flight.append.as_mut().poll(cx));
            let writes = self
                .pipeline
                .in_flight
                .take()
                .map_or_else(Vec::new, |f| f.writes);
            let placed = match outcome {
                Ok(placed) => placed,
                Err(source) => {
                    self.pipeline = Pipeline {
                        last_ticket: self.pipeline.last_ticket,
                        ..Pipeline::default()
                    };
                    return Poll::Ready(Err(self.poison(LogStoreError::Log {
                        op: "append",
                        source,
                    })));
                }
            };
            let mut lsn = placed.first_lsn;
            for staged in writes {
                let n = staged.write.records.len() as u64;
                self.apply(lsn, placed.frame, staged.write)?;
                lsn += n;
                self.pipeline.durable.push_back(staged.ticket);
            }
            self.pipeline.forget_views_if_idle();
        }
    }

    /// Moves the oldest queued writes on: those with nothing to append become durable at
    /// once; otherwise as many as fit the store's and the log's batch limits (at least one:
    /// each fits on its own) go to the log as one append. Returns whether anything moved.
    pub(super) fn start_append(&mut self) -> bool {
        let mut writes: Vec<Staged> = Vec::new();
        let mut records: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.pipeline.queued.front() {
            if next.write.is_empty() {
                if !writes.is_empty() {
                    break;
                }
                if let Some(s) = self.pipeline.queued.pop_front() {
                    self.pipeline.durable.push_back(s.ticket);
                }
                self.pipeline.forget_views_if_idle();
                return true;
            }
            if !writes.is_empty() {
                let fits = bytes + next.write.bytes() <= self.options.batch_bytes_max && {
                    let refs: Vec<&[u8]> = records
                        .iter()
                        .chain(&next.write.encoded)
                        .map(Vec::as_slice)
                        .collect();
                    self.log.check_append(&refs).is_ok()
                };
                if !fits {
                    break;
                }
            }
            let Some(mut staged) = self.pipeline.queued.pop_front() else {
                break;
            };
            bytes += staged.write.bytes();
            records.append(&mut staged.write.encoded);
            writes.push(staged);
        }
        if writes.is_empty() {
            return false;
        }
        let append = self.log.append_async(records);
        self.pipeline.in_flight = Some(InFlight { writes, append });
        true
    }
}
