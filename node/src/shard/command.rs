//! What an entry of a group's raft log carries: one client write, named for exactly-once, or
//! one compaction of the group's history.
//!
//! The first byte says which ([`Action`]):
//!
//! ```text
//! kind 1, a client write:
//! offset size field
//!      0    1 kind        1
//!      1    8 client id   chosen by the client, random per client instance (0: anonymous)
//!      9    8 sequence    the client's number for this write, ascending per client
//!     17    8 floor       the client's smallest unanswered sequence when it sent this write
//!     25    . transaction keel_engine::txn_codec's encoding of the write
//!
//! kind 2, a compaction (etcd's Compact):
//! offset size field
//!      0    1 kind        2
//!      1    8 revision    drop the group's history below this store revision
//! ```
//!
//! Integers are little-endian. The transaction's encoding carries its own version
//! (`keel_engine::txn_codec`): version 2 added compares over key ranges and nested
//! transactions, and a write using neither is still encoded as version 1, so kind 1 entries
//! of earlier logs decode unchanged and a build that predates version 2 still applies every
//! write it could express. An anonymous write (client id 0) is applied every time it
//! is committed; a named one at most once (see [`super::sessions`]).
//!
//! Compatibility: the first byte was the write's format version (1) before compactions
//! existed, and kind 1 is exactly that layout, so every log written before decodes
//! unchanged. A build that predates kind 2 stops at such an entry ("command version 2
//! unknown") rather than skip it: skipping would make its replica diverge.
//!
//! A compaction is applied in log order on every replica with `Memtable::compact`. A
//! replica whose history is compacted at or beyond the revision already (restored from a
//! checkpoint, whose revision is its compact revision) applies it as a no-op, and so does one
//! asked for a revision beyond its store revision; neither is an error for the group (only
//! the answer to the client who asked says so). Every replica applies the same writes, so
//! the store revision, hence the future-revision case, is the same on all of them.

use keel_engine::txn::Txn;
use keel_engine::txn_codec;

/// Kind byte of a client write (the layout that was version 1 before compactions).
const KIND_WRITE: u8 = 1;
/// Kind byte of a compaction.
const KIND_COMPACT: u8 = 2;
const HEADER_BYTES: usize = 25;
const COMPACT_BYTES: usize = 9;

/// One client write as the log carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// The client that sent it (0: anonymous, no exactly-once).
    pub client_id: u64,
    /// The client's sequence number for it.
    pub sequence: u64,
    /// The client's smallest unanswered sequence when it sent the write: its results below
    /// may be forgotten (see [`Sessions`](super::Sessions)).
    pub floor: u64,
    /// The write.
    pub txn: Txn,
}

impl Command {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let txn = txn_codec::encode_txn(&self.txn);
        let mut out = Vec::with_capacity(HEADER_BYTES + txn.len());
        out.push(KIND_WRITE);
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&txn);
        out
    }

    /// Decodes an entry payload holding a client write; an error names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        match Action::decode(bytes)? {
            Action::Write(command) => Ok(command),
            Action::Compact { .. } => Err("the entry holds a compaction, not a write".into()),
        }
    }

    fn decode_write(bytes: &[u8]) -> Result<Command, String> {
        if bytes.len() < HEADER_BYTES {
            return Err(format!(
                "command of {} bytes is shorter than its {HEADER_BYTES}-byte header",
                bytes.len()
            ));
        }
        Ok(Command {
            client_id: u64_at(bytes, 1),
            sequence: u64_at(bytes, 9),
            floor: u64_at(bytes, 17),
            txn: txn_codec::decode_txn(&bytes[HEADER_BYTES..])?,
        })
    }
}

/// What an entry asks of the group's state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A client write (kind 1).
    Write(Command),
    /// Drop the history below `revision` (kind 2; etcd's `Compact`).
    Compact {
        /// The revision: reads below it fail afterwards, reads at it and later still work.
        revision: u64,
    },
}

impl Action {
    /// Encodes the action as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Action::Write(command) => command.encode(),
            Action::Compact { revision } => {
                let mut out = Vec::with_capacity(COMPACT_BYTES);
                out.push(KIND_COMPACT);
                out.extend_from_slice(&revision.to_le_bytes());
                out
            }
        }
    }

    /// Decodes an entry payload; an error names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Action, String> {
        match bytes.first() {
            None => Err("an empty command".into()),
            Some(&KIND_WRITE) => Command::decode_write(bytes).map(Action::Write),
            Some(&KIND_COMPACT) => {
                if bytes.len() != COMPACT_BYTES {
                    return Err(format!(
                        "compaction command of {} bytes (it has {COMPACT_BYTES})",
                        bytes.len()
                    ));
                }
                Ok(Action::Compact {
                    revision: u64_at(bytes, 1),
                })
            }
            Some(other) => Err(format!(
                "command version {other} unknown (this build reads kinds {KIND_WRITE} and \
                 {KIND_COMPACT})"
            )),
        }
    }
}

/// The little-endian u64 at `at`; the caller checked the length.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_engine::txn::Op;

    #[test]
    fn round_trip_and_bad_bytes_are_errors() {
        let command = Command {
            client_id: 7,
            sequence: 9,
            floor: 3,
            txn: Txn::batch(vec![Op::put("k", "v")]),
        };
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), command);
        for cut in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..cut]).is_err(),
                "a command cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(Command::decode(&other).unwrap_err().contains("version 9"));
        for seed in 0..200u8 {
            let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed) ^ seed).collect();
            let _ = Command::decode(&garbage);
            let _ = Action::decode(&garbage);
        }
    }

    #[test]
    fn compactions_round_trip_and_writes_of_earlier_logs_still_decode() {
        let compact = Action::Compact { revision: 0x0102 };
        let bytes = compact.encode();
        assert_eq!(bytes, [2, 2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Action::decode(&bytes).unwrap(), compact);
        for cut in 0..bytes.len() {
            assert!(Action::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Action::decode(&longer).is_err());
        assert!(Command::decode(&bytes).unwrap_err().contains("compaction"));
        // A write as builds before compactions wrote it, byte by byte: version (now kind)
        // 1, client 7, sequence 9, floor 3, then the transaction.
        let txn = Txn::batch(vec![Op::put("k", "v")]);
        let mut old = vec![1u8];
        for n in [7u64, 9, 3] {
            old.extend_from_slice(&n.to_le_bytes());
        }
        old.extend_from_slice(&txn_codec::encode_txn(&txn));
        let expected = Command {
            client_id: 7,
            sequence: 9,
            floor: 3,
            txn,
        };
        assert_eq!(
            Action::decode(&old).unwrap(),
            Action::Write(expected.clone())
        );
        assert_eq!(Action::Write(expected).encode(), old);
    }

    #[test]
    fn writes_with_nested_txns_and_range_compares_round_trip() {
        use keel_engine::txn::{Compare, CompareOp, CompareTarget, RangeEnd};
        let inner = Txn {
            compares: vec![Compare {
                key: b"a".to_vec(),
                end: RangeEnd::Exclusive(b"b".to_vec()),
                op: CompareOp::Equal,
                target: CompareTarget::Version(0),
            }],
            success: vec![Op::put("a/1", "v")],
            failure: vec![Op::delete("a/2")],
        };
        let command = Command {
            client_id: 0,
            sequence: 0,
            floor: 0,
            txn: Txn::batch(vec![Op::put("x", "1"), Op::Txn(inner)]),
        };
        let bytes = command.encode();
        // The kind, then the header, then the transaction's own version: 2.
        assert_eq!((bytes[0], bytes[HEADER_BYTES]), (KIND_WRITE, 2));
        assert_eq!(Command::decode(&bytes).unwrap(), command);
        for cut in 0..bytes.len() {
            assert!(Command::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
