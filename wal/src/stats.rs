//! Counters a user can read while the log runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of power-of-two buckets in a [`Histogram`]; the last one holds everything
/// from 2^30 up.
pub const HISTOGRAM_BUCKETS: usize = 32;

/// Live counters, updated by the writer with relaxed atomics.
#[derive(Default)]
pub(crate) struct Stats {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub payload_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub spare_waits: AtomicU64,
    records_per_flush: [AtomicU64; HISTOGRAM_BUCKETS],
}

impl Stats {
    pub(crate) fn record_flush(&self, appends: u64, records: u64, payload: u64, written: u64) {
        self.appends.fetch_add(appends, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.payload_bytes.fetch_add(payload, Ordering::Relaxed);
        self.written_bytes.fetch_add(written, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.records_per_flush[Histogram::bucket(records)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, backend: &'static str) -> WalStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut buckets = [0u64; HISTOGRAM_BUCKETS];
        for (b, a) in buckets.iter_mut().zip(&self.records_per_flush) {
            *b = load(a);
        }
        WalStats {
            backend,
            appends: load(&self.appends),
            records: load(&self.records),
            payload_bytes: load(&self.payload_bytes),
            written_bytes: load(&self.written_bytes),
            flushes: load(&self.flushes),
            segments_created: load(&self.segments_created),
            segments_recycled: load(&self.segments_recycled),
            spare_waits: load(&self.spare_waits),
            records_per_flush: Histogram { buckets },
        }
    }
}

/// A snapshot of the log's counters since it was opened.
#[derive(Clone, Debug)]
pub struct WalStats {
    /// The backend doing the writes: `uring` or `blocking`.
    pub backend: &'static str,
    /// Appends made durable.
    pub appends: u64,
    /// Records made durable.
    pub records: u64,
    /// Bytes of frames made durable (headers, records, padding).
    pub payload_bytes: u64,
    /// Bytes handed to the disk, including the rewritten partial block at each write's start
    /// and the padding to a whole block at its end.
    pub written_bytes: u64,
    /// Writes, each one durable flush (group commits).
    pub flushes: u64,
    /// New segments started.
    pub segments_created: u64,
    /// Purged segments whose files were reused as new segments.
    pub segments_recycled: u64,
    /// Times the writer had to wait for a zero-filled segment (should stay 0).
    pub spare_waits: u64,
    /// Records per flush.
    pub records_per_flush: Histogram,
}

/// A histogram with power-of-two buckets: bucket `i` counts values in `[2^(i-1), 2^i)`,
/// bucket 0 counts zeros.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Counts per bucket.
    pub buckets: [u64; HISTOGRAM_BUCKETS],
}

impl Histogram {
    fn bucket(value: u64) -> usize {
        let bits = (u64::BITS - value.leading_zeros()) as usize;
        bits.min(HISTOGRAM_BUCKETS - 1)
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound of the bucket holding the `q`-quantile (0.0..=1.0), or 0 if empty.
    pub fn quantile_upper_bound(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // The product is within [0, total], so the conversion cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if i == 0 { 0 } else { (1u64 << i) - 1 };
            }
        }
        u64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(Histogram::bucket(0), 0);
        assert_eq!(Histogram::bucket(1), 1);
        assert_eq!(Histogram::bucket(2), 2);
        assert_eq!(Histogram::bucket(3), 2);
        assert_eq!(Histogram::bucket(4), 3);
        let mut h = Histogram::default();
        h.buckets[Histogram::bucket(5)] += 3;
        h.buckets[Histogram::bucket(100)] += 1;
        assert_eq!(h.quantile_upper_bound(0.5), 7);
        assert_eq!(h.quantile_upper_bound(1.0), 127);
    }
}
