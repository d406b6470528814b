//! The log's error type.

use std::io;
use std::path::PathBuf;

use crate::format::Lsn;

/// What can go wrong in the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the log was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Data on disk failed verification in a way a crash cannot explain: a damaged frame
    /// followed by valid ones, a sequence gap, a bad header in the middle of the log.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The segment file.
        path: PathBuf,
        /// Byte offset within the file.
        offset: u64,
        /// What failed.
        reason: String,
    },
    /// A torn or partially written tail, found in [`RecoveryMode::AbsoluteConsistency`]
    /// (the default mode repairs it instead).
    ///
    /// [`RecoveryMode::AbsoluteConsistency`]: crate::RecoveryMode::AbsoluteConsistency
    #[error("torn tail in {path} at offset {offset}: {reason}")]
    TornTail {
        /// The segment file.
        path: PathBuf,
        /// Byte offset where the valid data ends.
        offset: u64,
        /// What was found there.
        reason: String,
    },
    /// An earlier write or flush failed; the log accepts no more writes. Reopen it to
    /// recover what was durable.
    #[error("the log is poisoned by an earlier failed write: {cause}")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// One record is longer than `record_bytes_max`.
    #[error("record of {len} bytes exceeds record_bytes_max ({max} bytes)")]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One append encodes to more than `batch_bytes_max`.
    #[error("append of {bytes} encoded bytes exceeds batch_bytes_max ({max} bytes)")]
    BatchTooLarge {
        /// The append's encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An append with no records.
    #[error("an append needs at least one record")]
    EmptyBatch,
    /// Options that cannot work together.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A position outside the log.
    #[error("position {lsn} is outside the log [{first}, {next})")]
    OutOfRange {
        /// The position asked for.
        lsn: Lsn,
        /// The first position still in the log.
        first: Lsn,
        /// One past the last durable position.
        next: Lsn,
    },
    /// Another process (or another `Wal` in this one) has the directory open.
    #[error("{path} is locked by another open log")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A segment was written by another version of the on-disk format. Nothing is changed.
    #[error(
        "{path} was written in format version {version}; this build reads version {}",
        crate::format::FORMAT_VERSION
    )]
    UnsupportedFormat {
        /// The segment file.
        path: PathBuf,
        /// The version its header names.
        version: u32,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// A positioned read named a segment or offset that holds no durable frame (a purged
    /// segment, or an offset past the durable end).
    #[error("no durable frame at segment {segment} offset {offset}: {reason}")]
    NoFrame {
        /// The segment asked for.
        segment: u64,
        /// The offset asked for.
        offset: u64,
        /// Why there is none.
        reason: String,
    },
}

/// The log's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why a frame did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Zeros where a frame header would be: the end of written data.
    #[error("end of data (zero header)")]
    Empty,
    /// Fewer bytes remain than the frame needs.
    #[error("frame runs past the end of the segment")]
    Truncated,
    /// A header field is impossible.
    #[error("malformed frame header")]
    BadHeader,
    /// The checksum does not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// Record lengths do not add up to the frame length.
    #[error("record lengths do not fit the frame")]
    BadRecords,
}
