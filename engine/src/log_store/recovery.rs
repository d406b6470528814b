//! Opening a store: rebuilding every group's index from the log.

use super::apply::{Origin, State};
use super::error::log_err;
use super::pipeline::Pipeline;
use super::{LogStore, LogStoreError, LogStoreOptions};
use crate::log_backend::LogBackend;
use crate::log_record::LogRecord;
use crate::progress::ReplayProgress;

impl<B: LogBackend> LogStore<B> {
    /// Opens a store over `log`, rebuilding every group's index from it. `progress` is called
    /// every `progress_records_interval` records and once at the end.
    pub fn open(
        log: B,
        options: LogStoreOptions,
        progress: &mut dyn FnMut(ReplayProgress),
    ) -> Result<LogStore<B>, LogStoreError> {
        options.validate()?;
        let mut state = State {
            cache_bytes_max: options.cache_bytes_max,
            cache_entries_max: options.cache_entries_max,
            ..State::default()
        };
        let end_lsn = log.next_lsn();
        let mut records = 0u64;
        let mut last_lsn = 0u64;
        let mut failure: Option<LogStoreError> = None;
        let scanned = log.scan(log.first_lsn(), &mut |lsn, bytes| {
            let applied = LogRecord::decode(bytes)
                .map_err(|reason| LogStoreError::Corruption { lsn, reason })
                .and_then(|rec| state.apply(lsn, rec, Origin::Recovery));
            if let Err(e) = applied {
                failure = Some(e);
                return Err("stopped by a corrupt record".into());
            }
            records += 1;
            last_lsn = lsn;
            if records % options.progress_records_interval == 0 {
                progress(ReplayProgress {
                    records,
                    lsn,
                    end_lsn,
                });
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(e);
        }
        scanned.map_err(log_err("scan"))?;
        for (group, g) in &mut state.groups {
            if let Some((lsn, reason)) = g.broken.take() {
                return Err(LogStoreError::Corruption { lsn, reason });
            }
            if !g.entries.is_empty() && g.start != g.compacted_index + 1 {
                return Err(LogStoreError::Corruption {
                    lsn: g.entries.front().map_or(0, |s| s.lsn),
                    reason: format!(
                        "group {group}: entries start at {} but the compaction point is {} \
                         (the log was purged too far)",
                        g.start, g.compacted_index
                    ),
                });
            }
        }
        progress(ReplayProgress {
            records,
            lsn: last_lsn,
            end_lsn,
        });
        Ok(LogStore {
            log,
            state,
            options,
            poison: None,
            pipeline: Pipeline::default(),
        })
    }
}
