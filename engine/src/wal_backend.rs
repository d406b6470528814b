//! [`LogBackend`] for Keel's write-ahead log, `keel_wal::Wal`, owned or shared (`Arc<Wal>`).
//!
//! The WAL already gives what the trait asks: one `append` call is one CRC-framed atomic
//! frame acknowledged once durable, records are numbered by consecutive LSNs, and
//! `purge_before` drops whole segments crash-atomically. Appends the WAL would reject for
//! size are caught by `check_append` first, so they never poison the caller. Every WAL
//! method takes `&self`, so clones of an `Arc<Wal>` are handles to one log that several
//! threads may use at once (what [`crate::Db`] needs).

use std::sync::Arc;

use keel_wal::Wal;

use crate::log_backend::{
    AppendFuture, AsyncLogBackend, BackendError, FramePos, FrameVisitor, LogBackend, Placed,
    RecordVisitor, SegmentSpan,
};

fn placed(a: keel_wal::Appended) -> Placed {
    Placed {
        first_lsn: a.first_lsn,
        frame: FramePos {
            segment: a.segment,
            offset: a.offset,
        },
    }
}

fn scan(wal: &Wal, from: u64, visit: &mut RecordVisitor<'_>) -> Result<(), BackendError> {
    for record in wal.iter_from(from)? {
        let record = record?;
        visit(record.lsn, &record.data)?;
    }
    Ok(())
}

fn segments(wal: &Wal) -> Vec<SegmentSpan> {
    wal.segments()
        .into_iter()
        .map(|s| SegmentSpan {
            first_lsn: s.first_lsn,
            end_lsn: s.end_lsn,
        })
        .collect()
}

/// The trait for an owned and a shared log alike: every `Wal` method takes `&self`.
macro_rules! wal_backend {
    ($log:ty) => {
        impl LogBackend for $log {
            fn check_append(&self, records: &[&[u8]]) -> Result<(), BackendError> {
                Wal::check_append(self, records)?;
                Ok(())
            }

            fn append(&mut self, records: &[&[u8]]) -> Result<Placed, BackendError> {
                Ok(placed(Wal::append(self, records)?))
            }

            fn read_frames(
                &self,
                segment: u64,
                first_frame: u64,
                last_frame: u64,
                visit: &mut FrameVisitor<'_>,
            ) -> Result<(), BackendError> {
                Wal::read_frames(self, segment, first_frame, last_frame, visit)?;
                Ok(())
            }

            fn scan(&self, from: u64, visit: &mut RecordVisitor<'_>) -> Result<(), BackendError> {
                scan(self, from, visit)
            }

            fn purge_before(&mut self, lsn: u64) -> Result<(), BackendError> {
                Wal::purge_before(self, lsn)?;
                Ok(())
            }

            fn segments(&self) -> Vec<SegmentSpan> {
                segments(self)
            }

            fn first_lsn(&self) -> u64 {
                Wal::first_lsn(self)
            }

            fn next_lsn(&self) -> u64 {
                Wal::next_lsn(self)
            }
        }
    };
}

wal_backend!(Wal);
wal_backend!(Arc<Wal>);

/// A shared log can hand out futures that own a handle to it; an owned `Wal` cannot (its
/// futures would borrow the store that owns it), so asynchronous appends need `Arc<Wal>`.
impl AsyncLogBackend for Arc<Wal> {
    fn append_async(&self, records: Vec<Vec<u8>>) -> AppendFuture {
        let wal = Arc::clone(self);
        Box::pin(async move { Ok(placed(Wal::append_async(&wal, &records).await?)) })
    }
}
