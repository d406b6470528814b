//! Snapshots of a shard's groups: checkpoints written off the shard thread, transfers of a
//! checkpoint to a lagging follower in chunks, and installs of received ones.
//!
//! # Checkpoints
//!
//! A group's checkpoint is a `keel_engine::checkpoint` file of its memtable at its applied
//! index, with the raft term of that entry, its conf state and, as the file's app state, its
//! exactly-once session table ([`super::Sessions::encode`]). Files live in
//! `<dir>/group-<g>/checkpoint-<index, 20 digits>.ckpt`; the newest
//! [`SnapshotOptions::checkpoints_kept`] are kept, and always the one the log records as the
//! group's snapshot. Installed files raft refused are deleted.
//!
//! The shard thread never writes or fsyncs a checkpoint itself. It opens a consistent
//! snapshot of the memtable (`Memtable::begin_snapshot`: writes go on meanwhile), reads it
//! in chunks of at most `checkpoint_round_entries_max` entries per round, and hands each
//! chunk through a bounded channel (`CHECKPOINT_CHUNKS_QUEUED_MAX` chunks) to a helper
//! thread that writes, fsyncs and publishes the file. At most one checkpoint is being
//! written per shard. (With [`Helpers::Inline`], for simulations, the chunks are collected
//! instead and the file is written on the shard's thread when the last one is handed over;
//! see [`Helpers`].) When the helper reports the file durable, the shard records it in its
//! next staged log write (see `Shard::round`): the snapshot metadata, the group's hard state
//! again (so that no old hard-state record pins the log), and a compaction up to the
//! checkpoint index minus `catchup_entries`.
//!
//! # Transfers
//!
//! When raft asks to send a snapshot, the shard opens the group's checkpoint file at the
//! snapshot's index and sends it as [`SnapshotChunk`]s of at most `chunk_bytes_max` bytes,
//! one chunk per transfer each time the host asks ([`super::Shard::take_snapshot_chunks`]),
//! at most `transfers_max` transfers at once. The receiver assembles a transfer in memory
//! (at most `receive_bytes_max` bytes each, `receives_max` at once), verifies and publishes
//! it on a helper thread (`CheckpointDir::install` checks every CRC and the structure;
//! inline with [`Helpers::Inline`]), loads the memtable and the sessions there too, and
//! only then steps the raft snapshot message into the group (in a later round, when the
//! helper's report is picked up). At most one install per group runs at once, and at most
//! [`INSTALLS_MAX`] per shard; a transfer completed beyond that is dropped. A damaged or incomplete transfer is dropped with an error the
//! host logs; raft sends the snapshot again later.
//!
//! # Log space
//!
//! A group that applies little may pin old log segments with its first records. The host
//! calls `Shard::check_log_space` now and then: groups that pin a segment older than the
//! log store's newest `segments_live_max` checkpoint at once and keep no catch-up entries,
//! and a group with nothing applied since its recorded checkpoint writes that checkpoint's
//! records (and its hard state and compaction point) again at the head of the log. The host
//! purges the log below `Shard::purge_lsn` off the shard thread.
//!
//! # Restart
//!
//! At start each group loads the newest checkpoint the log continues from (its index
//! between the log's compaction point and last entry, with the same term there), restores
//! its memtable and sessions from it, and tells raft it applied up to that index: only the
//! entries after it are applied again. The commit index starts at least there (those
//! entries were applied, so committed, even if the hard state saying so was not written).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::task::Waker;

use keel_engine::checkpoint::{CheckpointDir, CheckpointMeta};
use keel_engine::{KeyValue, KvLimits, Memtable};

use super::sessions::Sessions;
use crate::consensus::NodeId;

/// Default [`SnapshotOptions::snapshot_entries`].
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 10_000;
/// Default [`SnapshotOptions::snapshot_bytes`]: 64 MiB.
pub const DEFAULT_SNAPSHOT_BYTES: u64 = 64 << 20;
/// Default [`SnapshotOptions::catchup_entries`].
pub const DEFAULT_CATCHUP_ENTRIES: u64 = 5_000;
/// Default [`SnapshotOptions::chunk_bytes_max`]: 1 MiB.
pub const DEFAULT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Default [`SnapshotOptions::transfers_max`].
pub const DEFAULT_TRANSFERS_MAX: usize = 4;
/// Default [`SnapshotOptions::receives_max`].
pub const DEFAULT_RECEIVES_MAX: usize = 2;
/// Default [`SnapshotOptions::receive_bytes_max`]: 512 MiB.
pub const DEFAULT_RECEIVE_BYTES_MAX: u64 = 512 << 20;
/// Default [`SnapshotOptions::checkpoint_round_entries_max`].
pub const DEFAULT_CHECKPOINT_ROUND_ENTRIES_MAX: usize = 4096;
/// Default [`SnapshotOptions::checkpoints_kept`].
pub const DEFAULT_CHECKPOINTS_KEPT: usize = 2;
/// Received snapshots a shard verifies and loads at once, at most (each holds its bytes
/// and a loaded state machine in memory until raft decides); a completed transfer beyond
/// it is dropped, and raft sends the snapshot again later. At most one per group.
pub const INSTALLS_MAX: usize = 2;
/// Chunks of a checkpoint being written that wait for the helper thread, at most: with
/// `checkpoint_round_entries_max` entries each, the memory a checkpoint write holds.
pub const CHECKPOINT_CHUNKS_QUEUED_MAX: usize = 4;

/// Where a shard writes its checkpoints and installs received snapshots.
///
/// Either way the result comes back the same way: as a report the shard picks up at the
/// start of a later round (`Shard::round`), never in the middle of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Helpers {
    /// On helper threads, which wake the host through `Shard::set_waker`: the shard's
    /// thread never writes, fsyncs or verifies a file. When a report arrives depends on the
    /// machine. The default, and what `keel server` runs.
    #[default]
    Threads,
    /// On the calling thread, at fixed points, for simulations that must replay from a
    /// seed: a checkpoint's chunks are collected as the rounds hand them over (none is
    /// ever refused, so a checkpoint holds its whole state machine in memory once) and the
    /// file is written, fsynced and published when the last one is; a completed transfer
    /// is verified, published and loaded inside `Shard::receive_snapshot_chunk`. Each
    /// queues its report for the next round, as a helper thread would.
    Inline,
}

/// How a shard snapshots its groups. Every limit has its unit last and its default in its
/// doc; [`SnapshotOptions::validate`] checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Where the groups' checkpoints live (`<dir>/group-<g>/`). `None` turns snapshots off:
    /// no checkpoint, no compaction, and a lagging follower is caught up from the log
    /// alone, which then grows without bound. Default `None`; `keel server` sets
    /// `DATA_DIR/shard-<s>/checkpoints`.
    pub dir: Option<PathBuf>,
    /// A group checkpoints once it applied this many entries since its last checkpoint
    /// (etcd's `--snapshot-count`). Default 10,000.
    pub snapshot_entries: u64,
    /// ... or once it applied this many bytes of entries since its last checkpoint.
    /// Default 64 MiB.
    pub snapshot_bytes: u64,
    /// Entries kept in the log behind a checkpoint, so that a follower that lags a little
    /// is caught up from the log rather than by a snapshot (etcd's
    /// `--snapshot-catchup-entries`). A group checkpointed because it pins old log
    /// segments keeps none. Default 5,000.
    pub catchup_entries: u64,
    /// The most bytes of a checkpoint file in one [`SnapshotChunk`]. Default 1 MiB.
    pub chunk_bytes_max: usize,
    /// The most snapshot transfers a shard sends at once; raft is told that one more failed
    /// and retries it later. Default 4.
    pub transfers_max: usize,
    /// The most snapshot transfers a shard receives at once (each held in memory until it
    /// is complete); one more replaces the oldest. Default 2.
    pub receives_max: usize,
    /// The largest snapshot a shard accepts, in bytes. Default 512 MiB.
    pub receive_bytes_max: u64,
    /// The most memtable entries a round reads into the checkpoint being written.
    /// Default 4096.
    pub checkpoint_round_entries_max: usize,
    /// Checkpoints kept per group (the newest). Default 2.
    pub checkpoints_kept: usize,
    /// Where checkpoints are written and received snapshots installed: helper threads, or
    /// inline for a deterministic simulation. Default [`Helpers::Threads`].
    pub helpers: Helpers,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            dir: None,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_bytes: DEFAULT_SNAPSHOT_BYTES,
            catchup_entries: DEFAULT_CATCHUP_ENTRIES,
            chunk_bytes_max: DEFAULT_CHUNK_BYTES_MAX,
            transfers_max: DEFAULT_TRANSFERS_MAX,
            receives_max: DEFAULT_RECEIVES_MAX,
            receive_bytes_max: DEFAULT_RECEIVE_BYTES_MAX,
            checkpoint_round_entries_max: DEFAULT_CHECKPOINT_ROUND_ENTRIES_MAX,
            checkpoints_kept: DEFAULT_CHECKPOINTS_KEPT,
            helpers: Helpers::Threads,
        }
    }
}

impl SnapshotOptions {
    /// Checks that every count and size is positive and that a chunk fits a received
    /// snapshot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("snapshot_entries", self.snapshot_entries),
            ("snapshot_bytes", self.snapshot_bytes),
            ("chunk_bytes_max", self.chunk_bytes_max as u64),
            ("transfers_max", self.transfers_max as u64),
            ("receives_max", self.receives_max as u64),
            ("receive_bytes_max", self.receive_bytes_max),
            (
                "checkpoint_round_entries_max",
                self.checkpoint_round_entries_max as u64,
            ),
            ("checkpoints_kept", self.checkpoints_kept as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("snapshot option {name} must be positive"));
            }
        }
        Ok(())
    }

    /// The checkpoint directory of `group`, when snapshots are on.
    pub fn group_dir(&self, group: u64) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("group-{group}")))
    }
}

/// A piece of a checkpoint file on its way from a group's leader to a lagging follower.
/// The peer wire carries it as a frame of its own (kind 4, see `transport::wire`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The group.
    pub group_id: u64,
    /// The receiving member.
    pub to: NodeId,
    /// The sending member (the group's leader).
    pub from: NodeId,
    /// The leader's term when it sent the snapshot (the raft message's term).
    pub term: u64,
    /// The snapshot's index: the last entry the checkpoint covers.
    pub index: u64,
    /// The raft term of the entry at `index`.
    pub snapshot_term: u64,
    /// Bytes of the whole checkpoint file.
    pub total_bytes: u64,
    /// Where `data` starts in the file.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Why a received chunk was dropped. The transfer it belongs to is abandoned; raft sends
/// the snapshot again later.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Snapshots are off on this member, or it does not host the group.
    #[error("group {group} does not take snapshots here")]
    NotAccepted {
        /// The group.
        group: u64,
    },
    /// The chunk is not the next one of a transfer in progress, or does not fit the
    /// transfer's announced size.
    #[error(
        "snapshot chunk of group {group} from member {from} at offset {offset} does not \
         follow the transfer ({reason})"
    )]
    OutOfOrder {
        /// The group.
        group: u64,
        /// The sender.
        from: NodeId,
        /// The chunk's offset.
        offset: u64,
        /// What does not match.
        reason: String,
    },
    /// The snapshot is larger than `receive_bytes_max`.
    #[error(
        "snapshot of group {group} from member {from} has {bytes} bytes, more than receive_bytes_max ({max})"
    )]
    TooLarge {
        /// The group.
        group: u64,
        /// The sender.
        from: NodeId,
        /// Its announced size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

/// What a helper thread reports back to the shard.
pub(super) enum Done {
    /// A checkpoint write ended.
    Checkpoint {
        group: u64,
        /// The checkpoint's metadata, or why it was not written.
        result: Result<CheckpointMeta, String>,
        /// Whether the group asked for it because it pins old log segments (it then keeps
        /// no catch-up entries).
        urgent: bool,
    },
    /// A received snapshot was verified, published and loaded.
    Installed(Box<Installed>),
    /// A received snapshot failed verification or could not be published.
    InstallFailed {
        group: u64,
        from: NodeId,
        error: String,
    },
}

/// A verified, published snapshot with the state loaded from it, waiting for raft to
/// accept it.
pub(super) struct Installed {
    pub(super) group: u64,
    pub(super) from: NodeId,
    pub(super) term: u64,
    pub(super) meta: CheckpointMeta,
    pub(super) kv: Memtable,
    pub(super) sessions: Sessions,
}

/// One piece of a checkpoint being written, from the shard thread to its helper.
pub(super) enum Piece {
    Entries(Vec<KeyValue>),
    /// Every entry was sent: publish the file. A channel closed without it aborts.
    End,
}

/// A checkpoint being written: the shard's side.
pub(super) struct Writing {
    pub(super) group: u64,
    /// The last key handed over (`None`: none yet).
    pub(super) after: Option<Vec<u8>>,
    /// A chunk read but not yet taken by the channel.
    pub(super) held: Option<Piece>,
    /// Whether every entry was read (then `End` is sent and the snapshot closed).
    pub(super) read_all: bool,
    pub(super) pieces: PieceSink,
}

/// Where the shard hands the pieces of a checkpoint being written.
pub(super) enum PieceSink {
    /// The helper thread's bounded channel ([`Helpers::Threads`]).
    Thread(mpsc::SyncSender<Piece>),
    /// Collected here, and written at `End` ([`Helpers::Inline`]).
    Inline(InlineWriter),
}

impl PieceSink {
    /// Hands `piece` over; `Full` hands it back (send it again next round), `Disconnected`
    /// means the writer stopped (its report says why).
    pub(super) fn try_send(&mut self, piece: Piece) -> Result<(), mpsc::TrySendError<Piece>> {
        match self {
            PieceSink::Thread(tx) => tx.try_send(piece),
            PieceSink::Inline(writer) => {
                writer.take(piece);
                Ok(())
            }
        }
    }
}

/// A checkpoint written on the shard's thread: its pieces so far, written out when `End`
/// arrives. Dropped before that, it reports the checkpoint abandoned, as a helper thread
/// whose channel closed does.
pub(super) struct InlineWriter {
    group: u64,
    dir: CheckpointDir,
    header: Option<CheckpointMeta>,
    urgent: bool,
    kept: usize,
    recorded: u64,
    pieces: Vec<Piece>,
    done: mpsc::Sender<Done>,
}

impl InlineWriter {
    fn take(&mut self, piece: Piece) {
        let end = matches!(piece, Piece::End);
        self.pieces.push(piece);
        if !end {
            return;
        }
        let Some(header) = self.header.take() else {
            return;
        };
        let mut pieces = std::mem::take(&mut self.pieces).into_iter();
        let result = write_checkpoint(
            &self.dir,
            header,
            &mut || pieces.next(),
            self.kept,
            self.recorded,
        );
        let _ = self.done.send(Done::Checkpoint {
            group: self.group,
            result,
            urgent: self.urgent,
        });
    }
}

impl Drop for InlineWriter {
    fn drop(&mut self) {
        if self.header.is_some() {
            let _ = self.done.send(Done::Checkpoint {
                group: self.group,
                result: Err(ABANDONED.to_string()),
                urgent: self.urgent,
            });
        }
    }
}

/// Why a checkpoint whose pieces stopped before `End` was not written.
const ABANDONED: &str =
    "the checkpoint was abandoned (its group's state was replaced, or the shard stopped)";

/// A transfer this shard sends.
pub(super) struct Outbound {
    pub(super) group: u64,
    pub(super) to: NodeId,
    pub(super) term: u64,
    pub(super) index: u64,
    pub(super) snapshot_term: u64,
    pub(super) file: File,
    pub(super) total: u64,
    pub(super) offset: u64,
}

/// A transfer this shard receives.
pub(super) struct Inbound {
    pub(super) term: u64,
    pub(super) index: u64,
    pub(super) snapshot_term: u64,
    pub(super) total: u64,
    pub(super) bytes: Vec<u8>,
    /// When it started, in transfers started by this shard (to find the oldest).
    pub(super) started: u64,
}

/// The shard's snapshot machinery: options, the helper threads' results, transfers.
pub(super) struct Snapshots {
    pub(super) options: SnapshotOptions,
    /// Each hosted group's checkpoint directory, opened at start.
    pub(super) dirs: BTreeMap<u64, CheckpointDir>,
    pub(super) done_tx: mpsc::Sender<Done>,
    pub(super) done_rx: mpsc::Receiver<Done>,
    pub(super) waker: Option<Waker>,
    pub(super) writing: Option<Writing>,
    /// The group whose checkpoint writer thread has not reported back yet.
    pub(super) writer_busy: Option<u64>,
    /// Groups whose checkpoint is durable, waiting for the next staged write to record it:
    /// (group, metadata, whether to keep no catch-up entries).
    pub(super) to_record: Vec<(u64, CheckpointMeta, bool)>,
    /// Groups that pin old log segments and should checkpoint now.
    pub(super) urgent: Vec<u64>,
    pub(super) outbound: Vec<Outbound>,
    pub(super) inbound: BTreeMap<(u64, NodeId), Inbound>,
    pub(super) transfers_started: u64,
    /// Installs handed to helper threads and not reported back yet: group → snapshot
    /// index (at most one per group, [`INSTALLS_MAX`] in all).
    pub(super) installing: BTreeMap<u64, u64>,
    /// Counters (see [`super::SnapshotStats`]).
    pub(super) stats: super::SnapshotStats,
}

impl Snapshots {
    pub(super) fn new(options: SnapshotOptions) -> Snapshots {
        let (done_tx, done_rx) = mpsc::channel();
        Snapshots {
            options,
            dirs: BTreeMap::new(),
            done_tx,
            done_rx,
            waker: None,
            writing: None,
            writer_busy: None,
            to_record: Vec::new(),
            urgent: Vec::new(),
            outbound: Vec::new(),
            inbound: BTreeMap::new(),
            transfers_started: 0,
            installing: BTreeMap::new(),
            stats: super::SnapshotStats::default(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.options.dir.is_some()
    }

    /// Starts writing a checkpoint of `group` with `header` from the pieces the shard hands
    /// over: on a helper thread, or inline ([`SnapshotOptions::helpers`]). Returns where the
    /// shard hands the pieces.
    pub(super) fn start_writer(
        &self,
        group: u64,
        dir: CheckpointDir,
        header: CheckpointMeta,
        urgent: bool,
        recorded: u64,
    ) -> Result<PieceSink, String> {
        let kept = self.options.checkpoints_kept;
        if self.options.helpers == Helpers::Inline {
            return Ok(PieceSink::Inline(InlineWriter {
                group,
                dir,
                header: Some(header),
                urgent,
                kept,
                recorded,
                pieces: Vec::new(),
                done: self.done_tx.clone(),
            }));
        }
        let (tx, rx) = mpsc::sync_channel::<Piece>(CHECKPOINT_CHUNKS_QUEUED_MAX);
        let done = self.done_tx.clone();
        let waker = self.waker.clone();
        std::thread::Builder::new()
            .name(format!("keel-ckpt-g{group}"))
            .spawn(move || {
                // Wakes the shard after each piece so that it sends the next.
                let mut next = || {
                    let piece = rx.recv().ok();
                    if let Some(w) = &waker {
                        w.wake_by_ref();
                    }
                    piece
                };
                let result = write_checkpoint(&dir, header, &mut next, kept, recorded);
                let _ = done.send(Done::Checkpoint {
                    group,
                    result,
                    urgent,
                });
                if let Some(w) = waker {
                    w.wake();
                }
            })
            .map_err(|e| format!("starting a checkpoint writer: {e}"))?;
        Ok(PieceSink::Thread(tx))
    }

    /// Verifies, publishes and loads a received snapshot: on a helper thread, or inline
    /// ([`SnapshotOptions::helpers`]). Either way its report is picked up by a later round.
    pub(super) fn start_install(
        &mut self,
        group: u64,
        from: NodeId,
        transfer: Inbound,
        limits: KvLimits,
        sessions_max: usize,
    ) {
        let Some(dir) = self.dirs.get(&group).cloned() else {
            return;
        };
        let index = transfer.index;
        if self.options.helpers == Helpers::Inline {
            let report = install_report(&dir, group, from, transfer, limits, sessions_max);
            let _ = self.done_tx.send(report);
            self.installing.insert(group, index);
            return;
        }
        let done = self.done_tx.clone();
        let waker = self.waker.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("keel-install-g{group}"))
            .spawn(move || {
                let report = install_report(&dir, group, from, transfer, limits, sessions_max);
                let _ = done.send(report);
                if let Some(w) = waker {
                    w.wake();
                }
            });
        match spawned {
            Ok(_) => {
                self.installing.insert(group, index);
            }
            Err(e) => {
                tracing::warn!(group, from, error = %e, "a received snapshot could not be installed");
            }
        }
    }

    /// Why a completed transfer of `group` at `index` cannot be installed now, if it
    /// cannot: an install of the group is in flight, or [`INSTALLS_MAX`] are.
    pub(super) fn install_refused(&self, group: u64, index: u64) -> Option<String> {
        if let Some(&busy) = self.installing.get(&group) {
            return Some(format!(
                "the install of snapshot {busy} of the group is in flight (this one is {index})"
            ));
        }
        (self.installing.len() >= INSTALLS_MAX).then(|| {
            format!(
                "{} installs in flight on this shard (INSTALLS_MAX)",
                self.installing.len()
            )
        })
    }

    /// Takes a received chunk; returns the completed transfer once its last chunk is in.
    pub(super) fn receive(
        &mut self,
        chunk: SnapshotChunk,
    ) -> Result<Option<(NodeId, Inbound)>, SnapshotError> {
        let key = (chunk.group_id, chunk.from);
        let out_of_order = |reason: String| SnapshotError::OutOfOrder {
            group: chunk.group_id,
            from: chunk.from,
            offset: chunk.offset,
            reason,
        };
        if chunk.offset == 0 {
            if chunk.total_bytes > self.options.receive_bytes_max {
                self.inbound.remove(&key);
                return Err(SnapshotError::TooLarge {
                    group: chunk.group_id,
                    from: chunk.from,
                    bytes: chunk.total_bytes,
                    max: self.options.receive_bytes_max,
                });
            }
            self.inbound.remove(&key);
            if self.inbound.len() >= self.options.receives_max {
                // The oldest transfer is the likeliest to have been abandoned by its sender.
                let oldest = self
                    .inbound
                    .iter()
                    .min_by_key(|(_, t)| t.started)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.inbound.remove(&oldest);
                }
            }
            self.transfers_started += 1;
            self.inbound.insert(
                key,
                Inbound {
                    term: chunk.term,
                    index: chunk.index,
                    snapshot_term: chunk.snapshot_term,
                    total: chunk.total_bytes,
                    // Exactly the announced size (at most receive_bytes_max, checked above):
                    // growing by doubling could reach twice that.
                    bytes: Vec::with_capacity(
                        usize::try_from(chunk.total_bytes.min(self.options.receive_bytes_max))
                            .unwrap_or(0),
                    ),
                    started: self.transfers_started,
                },
            );
        }
        let Some(transfer) = self.inbound.get_mut(&key) else {
            return Err(out_of_order("no transfer in progress".into()));
        };
        let len = chunk.data.len() as u64;
        let matches = transfer.index == chunk.index
            && transfer.term == chunk.term
            && transfer.snapshot_term == chunk.snapshot_term
            && transfer.total == chunk.total_bytes;
        let received = transfer.bytes.len() as u64;
        if !matches || chunk.offset != received || received + len > transfer.total {
            let reason = format!(
                "{received} of {} bytes of snapshot {} received; chunk of {len} bytes for \
                 snapshot {} of {} bytes",
                transfer.total, transfer.index, chunk.index, chunk.total_bytes
            );
            self.inbound.remove(&key);
            return Err(out_of_order(reason));
        }
        transfer.bytes.extend_from_slice(&chunk.data);
        if transfer.bytes.len() as u64 == transfer.total {
            let done = self.inbound.remove(&key);
            return Ok(done.map(|t| (chunk.from, t)));
        }
        Ok(None)
    }

    /// The next chunk of `transfer`, read from its file; `Err` if the file cannot be read.
    pub(super) fn next_chunk(
        &self,
        t: &mut Outbound,
        from: NodeId,
    ) -> Result<SnapshotChunk, String> {
        let left = t.total - t.offset;
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.options.chunk_bytes_max);
        let mut data = vec![0u8; n];
        t.file
            .read_exact_at(&mut data, t.offset)
            .map_err(|e| format!("reading the checkpoint at offset {}: {e}", t.offset))?;
        let chunk = SnapshotChunk {
            group_id: t.group,
            to: t.to,
            from,
            term: t.term,
            index: t.index,
            snapshot_term: t.snapshot_term,
            total_bytes: t.total,
            offset: t.offset,
            data,
        };
        t.offset += n as u64;
        Ok(chunk)
    }
}

/// A checkpoint write: pieces from `next` into the file, then retention. `next` returning
/// `None` before `End` abandons the write (nothing is published).
fn write_checkpoint(
    ckpts: &CheckpointDir,
    header: CheckpointMeta,
    next: &mut dyn FnMut() -> Option<Piece>,
    kept: usize,
    recorded: u64,
) -> Result<CheckpointMeta, String> {
    let (_, meta) = ckpts
        .write_with(header, &mut |sink| {
            loop {
                match next() {
                    Some(Piece::Entries(entries)) => {
                        for kv in &entries {
                            sink.push(&kv.key, &kv.value, kv.meta)?;
                        }
                    }
                    Some(Piece::End) => return Ok(()),
                    None => {
                        return Err(keel_engine::CheckpointError::BadSource {
                            reason: ABANDONED.into(),
                        });
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;
    // The file the log records as the group's snapshot stays until a newer one is recorded:
    // a restart falls back to it when newer files are damaged. The new checkpoint is
    // durable and published whatever retention does, so a failure here is only logged.
    if let Err(error) = ckpts.retain_keeping(kept, &[recorded, meta.index]) {
        tracing::warn!(
            dir = %ckpts.path().display(),
            %error,
            "old checkpoints not removed; retried after the next checkpoint"
        );
    }
    Ok(meta)
}

/// An install's report: the transfer verified, published and loaded, or why not.
fn install_report(
    dir: &CheckpointDir,
    group: u64,
    from: NodeId,
    transfer: Inbound,
    limits: KvLimits,
    sessions_max: usize,
) -> Done {
    match install(dir, transfer.bytes, limits, sessions_max) {
        Ok((meta, kv, sessions)) => {
            if meta.index != transfer.index || meta.term != transfer.snapshot_term {
                Done::InstallFailed {
                    group,
                    from,
                    error: format!(
                        "the checkpoint covers index {} term {}, the transfer announced index \
                         {} term {}",
                        meta.index, meta.term, transfer.index, transfer.snapshot_term
                    ),
                }
            } else {
                Done::Installed(Box::new(Installed {
                    group,
                    from,
                    term: transfer.term,
                    meta,
                    kv,
                    sessions,
                }))
            }
        }
        Err(error) => Done::InstallFailed { group, from, error },
    }
}

/// An install: verify and publish the bytes, then load the state.
fn install(
    ckpts: &CheckpointDir,
    bytes: Vec<u8>,
    limits: KvLimits,
    sessions_max: usize,
) -> Result<(CheckpointMeta, Memtable, Sessions), String> {
    let reader = ckpts.install(bytes).map_err(|e| e.to_string())?;
    let kv = reader.to_memtable(limits).map_err(|e| e.to_string())?;
    let sessions = Sessions::decode(&reader.meta().app_state, sessions_max)
        .map_err(|e| format!("the snapshot's session table: {e}"))?;
    Ok((reader.meta().clone(), kv, sessions))
}

/// A group's state loaded from its newest usable checkpoint at start.
pub(super) struct Restored {
    pub(super) index: u64,
    /// The group's membership as of `index`.
    pub(super) conf_state: crate::consensus::ConfState,
    pub(super) kv: Memtable,
    pub(super) sessions: Sessions,
}

/// Loads the newest checkpoint of a group that the log can continue from: its index lies
/// between the log's compaction point and its last entry, with the same term there (a
/// checkpoint published by an install whose log write never happened does not). Corrupt
/// files are skipped with a warning; any other error stops the start. Also returns every
/// file considered and refused, with why (the caller names them when it cannot start).
pub(super) fn restore(
    ckpts: &CheckpointDir,
    limits: &KvLimits,
    sessions_max: usize,
    fits_log: &dyn Fn(u64, u64) -> bool,
) -> Result<(Option<Restored>, Vec<String>), String> {
    let list = ckpts.list().map_err(|e| e.to_string())?;
    let mut refused = Vec::new();
    for (index, path) in list.into_iter().rev() {
        let reader = match keel_engine::CheckpointReader::open(&path) {
            Ok(r) => r,
            Err(e @ keel_engine::CheckpointError::Corruption { .. }) => {
                tracing::warn!(path = %path.display(), error = %e, "corrupt checkpoint skipped");
                refused.push(format!("{}: {e}", path.display()));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let meta = reader.meta();
        if meta.index != index || !fits_log(meta.index, meta.term) {
            tracing::info!(
                path = %path.display(),
                "checkpoint skipped: the log does not continue from it"
            );
            refused.push(format!(
                "{}: covers index {} term {}, which the log does not continue from",
                path.display(),
                meta.index,
                meta.term
            ));
            continue;
        }
        let sessions = Sessions::decode(&meta.app_state, sessions_max)
            .map_err(|e| format!("{}: its session table: {e}", path.display()))?;
        let conf_state = super::decode_conf_state(&meta.conf_state)
            .map_err(|e| format!("{}: its membership: {e}", path.display()))?;
        let kv = reader
            .to_memtable(limits.clone())
            .map_err(|e| e.to_string())?;
        return Ok((
            Some(Restored {
                index: meta.index,
                conf_state,
                kv,
                sessions,
            }),
            refused,
        ));
    }
    Ok((None, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_buffer_holds_exactly_the_announced_size() {
        let mut sn = Snapshots::new(SnapshotOptions {
            dir: Some(PathBuf::from("unused")),
            ..SnapshotOptions::default()
        });
        let total = 1000u64;
        let chunk = |offset: u64, len: usize| SnapshotChunk {
            group_id: 0,
            to: 2,
            from: 1,
            term: 1,
            index: 10,
            snapshot_term: 1,
            total_bytes: total,
            offset,
            data: vec![7; len],
        };
        assert!(sn.receive(chunk(0, 300)).unwrap().is_none());
        assert!(sn.receive(chunk(300, 300)).unwrap().is_none());
        let (_, transfer) = sn.receive(chunk(600, 400)).unwrap().expect("complete");
        assert_eq!(transfer.bytes.len(), 1000);
        assert_eq!(transfer.bytes.capacity(), 1000);
    }
}
