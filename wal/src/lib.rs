//! Keel's segmented write-ahead log.
//!
//! A log is a directory of preallocated, zero-filled segment files. Each append is one
//! CRC-framed, atomic batch of records, numbered by consecutive positions ([`Lsn`]).
//! Concurrent appenders (threads with [`Wal::append`], async tasks with
//! [`Wal::append_async`]) are coalesced into group commits: one aligned write and one
//! flush per batch, acknowledged only once durable, with the next batch filling while the
//! previous one is written. Writes go through io_uring where the kernel allows it and a
//! blocking writer otherwise ([`Backend`]).
//!
//! Recovery verifies every frame; a torn tail is cut ([`RecoveryMode`]), anything else that
//! fails verification is an error naming the file and offset. A failed write poisons the
//! log. The on-disk format is documented in [`format`](mod@format).
//!
//! ```no_run
//! use keel_wal::{Wal, WalOptions};
//! let wal = Wal::open("/tmp/keel-example", WalOptions::default())?;
//! let at = wal.append(&[b"hello".as_slice(), b"world".as_slice()])?;
//! assert_eq!(wal.read(at.first_lsn)?, b"hello");
//! # Ok::<(), keel_wal::Error>(())
//! ```

mod aligned;
mod error;
pub mod format;
mod io;
mod marker;
mod options;
mod reader;
mod recovery;
mod segment;
mod stats;
mod wal;

pub use error::{Error, FrameError, Result};
pub use format::{Lsn, Payload, SegmentHeader};
pub use io::{CapturedWrite, Faults};
pub use options::{Backend, RecoveryMode, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WalOptions};
pub use reader::{Record, WalIter};
pub use recovery::{
    FrameSummary, RecoveryProgress, RecoveryReport, ScanSummary, SegmentSummary, inspect,
    scan_segment_bytes, verify,
};
pub use segment::{list_segments, parse_segment_name, segment_path};
pub use stats::{HISTOGRAM_BUCKETS, Histogram, WalStats};
pub use wal::{AppendFuture, Appended, SEALED_BATCHES_MAX, SegmentInfo, Wal};
