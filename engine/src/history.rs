//! The memtable's MVCC history: the pre-image of every key change since the compact revision,
//! in revision order, so that reads at an older revision can see the keys as they were.
//!
//! # Shape
//!
//! The memtable keeps the current version of every key in its main map, exactly as without
//! history, so current reads pay nothing for it and a write pays one queue push and one copy
//! per changed key. Each change of a key at revision `r` (a put, or a delete: a tombstone)
//! pushes a [`Change`] `(r, key, before)`, where `before` is the key's version just before `r`
//! (`None` if the key did not exist). Changes are pushed in revision order, so the queue is
//! sorted by revision, and several changes of one revision (one transaction) keep the order in
//! which they ran.
//!
//! A change's key and old value are copied into the newest of a queue of blocks of
//! [`BLOCK_BYTES`] (a larger change gets a block of its own), not into an allocation of their
//! own: recording a change allocates nothing most of the time, and the history is a few large
//! allocations that do not fragment the heap among the live values. A block is freed when the
//! last change in it is compacted. Besides the changes' bytes, the memory held is the partly
//! compacted oldest block, the partly filled newest one, and the tails of blocks a change did
//! not fit into (each shorter than that change: negligible for changes much smaller than a
//! block, up to as much again for changes of about half a block).
//!
//! The state of a key after revision `R` is the `before` of its first change after `R` (the
//! key did not change between `R` and that change), or its current version if it has not
//! changed since `R`. A read at `R` therefore visits the changes after `R` — found by binary
//! search — and overlays the first one of each key in its range on the current map. Its cost
//! is that of a current read plus O(changes after `R`).
//!
//! # Compaction
//!
//! Compacting at `C` drops every change at a revision `<= C`: reads at `R >= C` only need
//! changes after `R`, so they still work; reads below `C` are refused. Changes leave from the
//! front of the queue, so compaction costs O(dropped changes). The memtable compacts on
//! request (etcd's `Compact`) and automatically when the history's charged bytes pass a
//! limit: then whole revisions leave, oldest first, until the history fits again. A change is
//! charged its key and value lengths plus [`HISTORY_CHANGE_OVERHEAD_BYTES`] — a fixed figure,
//! not the platform's `size_of`, so that every replica that applied the same commands under
//! the same limits compacts at the same revision.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};

use crate::memtable::VersionRef;
use crate::revision::KeyMeta;

/// Bytes a history change is charged besides its key and value lengths, standing for its queue
/// slot (revision, position, lengths, metadata). Fixed (not `size_of`) so that automatic
/// compaction is the same on every platform.
pub const HISTORY_CHANGE_OVERHEAD_BYTES: u64 = 64;

/// Size of a block holding changes' keys and old values, in bytes.
const BLOCK_BYTES: usize = 64 * 1024;

/// One change of one key: its version just before `revision`. The key and the old value lie
/// one after the other in a block.
#[derive(Clone, Debug)]
struct Change {
    /// The revision of the transaction that changed the key.
    revision: u64,
    /// Sequence number of the block holding the key and old value (wrapping).
    block: usize,
    /// Where the key starts in the block; the old value follows it.
    offset: usize,
    key_len: usize,
    /// Length of the old value (0 when the key did not exist).
    value_len: usize,
    /// The key's metadata before the change; `None` if the key did not exist.
    before: Option<KeyMeta>,
}

impl Change {
    fn charged_bytes(&self) -> u64 {
        (self.key_len + self.value_len) as u64 + HISTORY_CHANGE_OVERHEAD_BYTES
    }
}

/// The pre-images of the changes after the compact revision, in revision order. See the
/// module documentation.
#[derive(Clone, Debug)]
pub(crate) struct History {
    /// Sorted by revision (ascending); every revision is `> compact_revision`.
    changes: VecDeque<Change>,
    /// The blocks holding the changes' bytes; `blocks[i]` has sequence number
    /// `first_block + i` (wrapping). A block is only appended to within its capacity, and the front
    /// block is the one of the oldest change (or the only, emptied, block when there is none).
    blocks: VecDeque<Vec<u8>>,
    first_block: usize,
    /// Sum of `charged_bytes` over `changes`.
    bytes: u64,
    /// Reads at revisions below this one are refused; `<=` the store revision.
    compact_revision: u64,
}

impl History {
    /// An empty history that serves reads from `compact_revision` on.
    pub(crate) fn new(compact_revision: u64) -> History {
        History {
            changes: VecDeque::new(),
            blocks: VecDeque::new(),
            first_block: 0,
            bytes: 0,
            compact_revision,
        }
    }

    /// The oldest revision reads may ask for.
    pub(crate) fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// Bytes charged for the changes kept.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of changes kept.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }

    /// Records (copying them) that `key` changed at `revision`, having been `before` until
    /// then. Revisions never go down.
    pub(crate) fn record(&mut self, revision: u64, key: &[u8], before: Option<VersionRef<'_>>) {
        debug_assert!(revision > self.compact_revision);
        debug_assert!(self.changes.back().is_none_or(|c| c.revision <= revision));
        let value = before.map_or(&[][..], |b| b.value);
        let len = key.len() + value.len();
        let fits = self
            .blocks
            .back()
            .is_some_and(|b| b.capacity() - b.len() >= len);
        if !fits {
            self.blocks
                .push_back(Vec::with_capacity(len.max(BLOCK_BYTES)));
        }
        let block = self.first_block.wrapping_add(self.blocks.len() - 1);
        let Some(bytes) = self.blocks.back_mut() else {
            unreachable!("a block was just ensured");
        };
        let offset = bytes.len();
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        let change = Change {
            revision,
            block,
            offset,
            key_len: key.len(),
            value_len: value.len(),
            before: before.map(|b| b.meta),
        };
        self.bytes += change.charged_bytes();
        self.changes.push_back(change);
    }

    /// Drops every change at or below `revision`, which becomes the compact revision. The
    /// caller has checked `compact_revision < revision <= store revision`.
    pub(crate) fn compact(&mut self, revision: u64) {
        debug_assert!(revision > self.compact_revision);
        while self.changes.front().is_some_and(|c| c.revision <= revision) {
            if let Some(c) = self.changes.pop_front() {
                self.bytes -= c.charged_bytes();
            }
        }
        self.release_blocks();
        self.compact_revision = revision;
    }

    /// Frees the blocks no change lies in any more. With no change left, the newest block is
    /// kept, emptied, for the next changes, unless it is a large change's own block.
    fn release_blocks(&mut self) {
        // How many blocks from the front no change lies in.
        let unused = match self.changes.front() {
            Some(front) => front.block.wrapping_sub(self.first_block),
            None => {
                let reusable = self
                    .blocks
                    .back()
                    .is_some_and(|b| b.capacity() <= BLOCK_BYTES);
                self.blocks.len() - usize::from(reusable)
            }
        };
        for _ in 0..unused {
            if self.blocks.pop_front().is_some() {
                self.first_block = self.first_block.wrapping_add(1);
            }
        }
        if self.changes.is_empty() {
            if let Some(b) = self.blocks.front_mut() {
                b.clear();
            }
        }
    }

    /// Drops whole revisions, oldest first, until the charged bytes are at most `bytes_max`;
    /// the last revision dropped becomes the compact revision. Returns whether it compacted.
    pub(crate) fn compact_to_fit(&mut self, bytes_max: u64) -> bool {
        let mut compacted = false;
        while self.bytes > bytes_max {
            let Some(oldest) = self.changes.front().map(|c| c.revision) else {
                break;
            };
            self.compact(oldest);
            compacted = true;
        }
        compacted
    }

    /// The bytes of a change: its key, then its old value.
    fn bytes_of(&self, c: &Change) -> (&[u8], &[u8]) {
        let block = &self.blocks[c.block.wrapping_sub(self.first_block)];
        let (key, rest) = block[c.offset..].split_at(c.key_len);
        (key, &rest[..c.value_len])
    }

    fn key_of(&self, c: &Change) -> &[u8] {
        self.bytes_of(c).0
    }

    /// The key's version before the change; `None` if it did not exist.
    fn before_of(&self, c: &Change) -> Option<VersionRef<'_>> {
        c.before.map(|meta| VersionRef {
            value: self.bytes_of(c).1,
            meta,
        })
    }

    /// Index of the first change after `revision`.
    fn first_after(&self, revision: u64) -> usize {
        self.changes.partition_point(|c| c.revision <= revision)
    }

    /// The version of `key` after `revision` if it changed since: `Some(before)` of its first
    /// change after `revision` (`Some(None)`: the key did not exist then), or `None` if it has
    /// not changed since and its current version is the one.
    pub(crate) fn version_at(&self, revision: u64, key: &[u8]) -> Option<Option<VersionRef<'_>>> {
        self.changes
            .range(self.first_after(revision)..)
            .find(|c| c.key_len == key.len() && self.key_of(c) == key)
            .map(|c| self.before_of(c))
    }

    /// For every key within `bounds` that changed after `revision`, its version after
    /// `revision` (`None`: it did not exist then). Keys absent from the result have not
    /// changed since, so their current version is the one.
    pub(crate) fn versions_at<'a>(
        &'a self,
        revision: u64,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> BTreeMap<&'a [u8], Option<VersionRef<'a>>> {
        let mut out = BTreeMap::new();
        for c in self.changes.range(self.first_after(revision)..) {
            let key = self.key_of(c);
            if bounds.contains(&key) {
                // The first change of a key after `revision` holds its version then.
                out.entry(key).or_insert_with(|| self.before_of(c));
            }
        }
        out
    }
}
