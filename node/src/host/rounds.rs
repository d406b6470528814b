//! The host's round logic: what runs after every input, on every completed append, and on
//! housekeeping ticks.

use std::task::{Context, Poll};

use keel_engine::log_backend::AsyncLogBackend;

use super::PeerTransport;
use crate::shard::{Outcome, RequestId, Shard, ShardError};
use crate::transport::ChunkRefused;

/// Runs rounds until the shard has nothing more to do now (at most 16): each round's
/// messages go to `transport` at once and its answers to `answer`. Then snapshot chunks
/// move: transfers whose chunks the transport lost are abandoned, the next chunk of every
/// transfer whose peer has room is sent (a refused one is handed back to the shard), and
/// the peers the transport could not reach are reported to raft. An error stops the host
/// (the shard's log failed, or a group applied an entry no build could have written).
pub fn run_rounds<B, T>(
    shard: &mut Shard<B>,
    transport: &T,
    answer: &mut dyn FnMut(RequestId, Outcome),
) -> Result<(), ShardError>
where
    B: AsyncLogBackend,
    T: PeerTransport + ?Sized,
{
    for _ in 0..16 {
        let round = shard.round()?;
        if !round.messages.is_empty() {
            transport.send(round.messages);
        }
        for (id, outcome) in shard.take_answers() {
            answer(id, outcome);
        }
        if round.staged.is_none() && !shard.has_work() {
            break;
        }
    }
    for (peer, group) in transport.take_lost_snapshot_chunks() {
        shard.snapshot_transfer_lost(group, peer);
    }
    for chunk in shard.take_snapshot_chunks_where(|to| transport.snapshot_chunk_room(to)) {
        match transport.send_snapshot_chunk(chunk) {
            Ok(()) => {}
            Err(ChunkRefused::Busy(chunk)) => shard.snapshot_chunk_refused(&chunk, true),
            Err(ChunkRefused::Unreachable(chunk)) => shard.snapshot_chunk_refused(&chunk, false),
        }
    }
    for (peer, group) in transport.take_unreachable() {
        shard.report_unreachable(group, peer);
    }
    Ok(())
}

/// Feeds the shard the next append its log store reports durable, if one is (`cx` is woken
/// when the next one is). `Ready(Err(ShardError::Log))`: the log failed (the host stops).
/// The host runs [`run_rounds`] after each: the acknowledgements it released go out.
pub fn poll_durable<B: AsyncLogBackend>(
    shard: &mut Shard<B>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ShardError>> {
    let polled = shard.store().borrow_mut().poll_durable(cx);
    match polled {
        Poll::Ready(Ok(ticket)) => Poll::Ready(shard.on_durable(ticket)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(ShardError::Log(e))),
        Poll::Pending => Poll::Pending,
    }
}

/// The housekeeping every host runs on a housekeeping tick: leadership moves to the
/// groups' preferred members, and the groups this member leads take their next step toward
/// the target membership.
pub fn housekeeping<B: AsyncLogBackend>(shard: &mut Shard<B>) {
    shard.balance_leaders();
    shard.reconcile_membership();
}

/// Frees the log behind the groups' compactions, on a housekeeping tick: groups that pin
/// old segments are asked to checkpoint, and unless a purge started earlier is still
/// running (`busy`: the position waits for the next call), the position below which the
/// log holds nothing any group needs, when it moved, goes to `purge`. The runtime purges
/// its WAL there on a blocking thread (intent file, renames, fsyncs); a simulation purges
/// its in-memory log at once.
pub fn purge_log<B: AsyncLogBackend>(shard: &mut Shard<B>, busy: bool, purge: impl FnOnce(u64)) {
    shard.check_log_space();
    if busy {
        return;
    }
    if let Some(lsn) = shard.purge_lsn() {
        purge(lsn);
    }
}
