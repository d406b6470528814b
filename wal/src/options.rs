//! Options, limits and their defaults.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{BLOCK_BYTES, FRAME_HEADER_BYTES, RECORD_PREFIX_BYTES, SEGMENT_HEADER_BYTES};
use crate::io::Faults;

/// What recovery does with data that does not verify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// A torn last write (what a crash leaves) is cut off and zeroed; recovering twice gives
    /// the same log. Damage followed by valid frames is still an error. The default.
    #[default]
    TolerateTornTail,
    /// Any data that does not verify, even a torn tail, is an error; nothing is changed.
    AbsoluteConsistency,
}

/// Which I/O backend performs the writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring where the kernel allows it, otherwise the blocking backend. The default.
    #[default]
    Auto,
    /// io_uring (`IORING_OP_WRITE` with `RWF_DSYNC`); opening fails if unavailable.
    Uring,
    /// A writer thread calling `pwrite` on a file opened `O_DSYNC`.
    Blocking,
}

/// Options of a log. Every field documents its default; [`WalOptions::validate`] checks
/// their relations and [`Wal::open`](crate::Wal::open) calls it.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of each segment file. Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest single record. Default 2 MiB.
    pub record_bytes_max: usize,
    /// Largest amount of encoded data in one write (one group-commit batch); one append
    /// must fit in it. Default 4 MiB.
    pub batch_bytes_max: usize,
    /// Most appends that may wait in the filling batch; more appenders block until the
    /// writer takes the batch (back-pressure). Default 4096.
    pub queue_appends_max: usize,
    /// The I/O backend. Default [`Backend::Auto`].
    pub backend: Backend,
    /// Make each write durable before acknowledging it (`O_DSYNC`/`RWF_DSYNC`). Turning it
    /// off is for measurements only: an acknowledged append may then be lost. Default true.
    pub sync: bool,
    /// Bypass the page cache with `O_DIRECT` where the filesystem supports it (it falls
    /// back to buffered writes where it does not, such as tmpfs). Default true.
    pub direct_io: bool,
    /// What recovery does with damaged data. Default [`RecoveryMode::TolerateTornTail`].
    pub recovery_mode: RecoveryMode,
    /// Reuse the files of purged segments as new segments instead of zero-filling new
    /// files, which halves the bytes written per byte logged once the log is purged
    /// behind. Default true.
    pub recycle_segments: bool,
    /// Fault injection for tests: when set, every write asks it whether to fail.
    /// Default none.
    pub faults: Option<Arc<Faults>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            record_bytes_max: 2 << 20,
            batch_bytes_max: 4 << 20,
            queue_appends_max: 4096,
            backend: Backend::Auto,
            sync: true,
            direct_io: true,
            recovery_mode: RecoveryMode::TolerateTornTail,
            recycle_segments: true,
            faults: None,
        }
    }
}

/// Smallest segment accepted: the header block and one full batch must fit.
pub const SEGMENT_BYTES_MIN: u64 = 16 * BLOCK_BYTES as u64;
/// Largest segment accepted: frame offsets are kept in `u32`.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

const _: () = assert!(SEGMENT_BYTES_MIN >= 2 * SEGMENT_HEADER_BYTES as u64);

impl WalOptions {
    /// Checks every limit and their relations.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidOptions(msg));
        if self.segment_bytes < SEGMENT_BYTES_MIN || self.segment_bytes > SEGMENT_BYTES_MAX {
            return fail(format!(
                "segment_bytes is {} but must be within [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}]",
                self.segment_bytes
            ));
        }
        if self.segment_bytes % BLOCK_BYTES as u64 != 0 {
            return fail(format!(
                "segment_bytes ({}) must be a multiple of {BLOCK_BYTES}",
                self.segment_bytes
            ));
        }
        if self.record_bytes_max == 0 {
            return fail("record_bytes_max must be at least 1".into());
        }
        if self.queue_appends_max == 0 {
            return fail("queue_appends_max must be at least 1".into());
        }
        let one_record = self.frame_bytes_for_record_max();
        if self.batch_bytes_max < one_record {
            return fail(format!(
                "batch_bytes_max ({}) must hold one frame with a record of record_bytes_max \
                 ({} bytes encoded)",
                self.batch_bytes_max, one_record
            ));
        }
        let usable = self.segment_bytes - SEGMENT_HEADER_BYTES as u64;
        if self.batch_bytes_max as u64 > usable {
            return fail(format!(
                "batch_bytes_max ({}) must fit in a segment after its header ({usable} bytes)",
                self.batch_bytes_max
            ));
        }
        if self.batch_bytes_max > u32::MAX as usize / 2 {
            return fail(format!(
                "batch_bytes_max ({}) is over 2 GiB",
                self.batch_bytes_max
            ));
        }
        Ok(())
    }

    fn frame_bytes_for_record_max(&self) -> usize {
        crate::format::align_up(
            FRAME_HEADER_BYTES + RECORD_PREFIX_BYTES + self.record_bytes_max,
            crate::format::FRAME_ALIGN,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        WalOptions::default().validate().unwrap();
    }

    #[test]
    fn bad_relations_are_named() {
        let opts = WalOptions {
            record_bytes_max: 8 << 20,
            ..WalOptions::default()
        };
        let err = opts.validate().unwrap_err().to_string();
        assert!(err.contains("batch_bytes_max"), "{err}");
        let opts = WalOptions {
            segment_bytes: 1000,
            ..WalOptions::default()
        };
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("segment_bytes")
        );
    }
}
