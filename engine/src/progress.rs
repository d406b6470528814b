//! [`ReplayProgress`]: how far recovery's replay of a log has come, for both the log store
//! and the standalone store.

/// Replay progress, reported every so many records while a store opens and once at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayProgress {
    /// Records replayed so far.
    pub records: u64,
    /// LSN of the last record replayed.
    pub lsn: u64,
    /// LSN one past the last record of the log.
    pub end_lsn: u64,
}
