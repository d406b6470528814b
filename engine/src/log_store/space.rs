//! Space management: what pins the log, purging, rewriting lagging groups forward.

use super::error::log_err;
use super::index::GroupLog;
use super::options::RECORD_OVERHEAD_BYTES;
use super::{GroupId, LogStore, LogStoreError};
use crate::log_backend::{LogBackend, SegmentSpan};
use crate::log_record::LogRecord;

/// What [`LogStore::maintain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Segments live before.
    pub segments_before: usize,
    /// Segments live after.
    pub segments_after: usize,
    /// Groups whose state and live entries were rewritten forward, with the number of
    /// entries rewritten. The caller should ask these groups to compact (snapshot) soon.
    pub rewritten: Vec<(GroupId, u64)>,
    /// Lagging groups whose live entries are too large to rewrite in one append
    /// (`batch_bytes_max`): they keep pinning old segments until they compact, which the
    /// caller must ask of them now.
    pub must_compact: Vec<GroupId>,
}

impl<B: LogBackend> LogStore<B> {
    /// The oldest LSN any group still needs (`next_lsn` when none needs any).
    pub fn pinned_lsn(&self) -> u64 {
        self.state
            .groups
            .values()
            .filter_map(GroupLog::pin)
            .min()
            .unwrap_or_else(|| self.log.next_lsn())
    }

    /// Drops every log segment no group needs. Returns the LSN purged below.
    pub fn purge(&mut self) -> Result<u64, LogStoreError> {
        self.check_writable()?;
        let lsn = self.pinned_lsn();
        self.log.purge_before(lsn).map_err(log_err("purge"))?;
        Ok(lsn)
    }

    /// Rewrites `group`'s state and live entries to the head of the log in one atomic append,
    /// so that it no longer pins older segments. Returns the number of entries rewritten.
    pub fn rewrite_group(&mut self, group: GroupId) -> Result<u64, LogStoreError> {
        self.check_writable()?;
        let Some(g) = self.group(group) else {
            return Ok(0);
        };
        let mut records = vec![LogRecord::Reset {
            group,
            index: g.compacted_index,
            term: g.compacted_term,
            hard_state: g.hard_state,
            snapshot: g.snapshot.clone(),
        }];
        let entries = self.entries(group, g.first_index(), g.last_index() + 1, u64::MAX)?;
        let n = entries.len() as u64;
        records.extend(
            entries
                .into_iter()
                .map(|entry| LogRecord::Entry { group, entry }),
        );
        self.commit(records)?;
        Ok(n)
    }

    /// Purges, then if more than `segments_live_max` segments remain, rewrites forward every
    /// group that pins a segment older than the newest `segments_live_max`, and purges again.
    pub fn maintain(&mut self) -> Result<MaintenanceReport, LogStoreError> {
        self.purge()?;
        let segments = self.log.segments();
        let plan = self.plan_maintenance(&segments);
        let mut report = MaintenanceReport {
            segments_before: segments.len(),
            must_compact: plan.must_compact,
            ..MaintenanceReport::default()
        };
        if !plan.rewrite.is_empty() || !report.must_compact.is_empty() {
            for group in plan.rewrite {
                match self.rewrite_group(group) {
                    Ok(n) => report.rewritten.push((group, n)),
                    Err(LogStoreError::BatchTooLarge { .. }) => report.must_compact.push(group),
                    Err(e) => return Err(e),
                }
            }
            self.purge()?;
        }
        report.segments_after = self.log.segments().len();
        Ok(report)
    }

    /// Groups that pin a segment older than the newest `segments_live_max` (the ones
    /// `maintain` would rewrite or ask to compact), ascending. A caller that frees the log
    /// by snapshots and compaction instead of rewrites (a raft node, whose shard must not
    /// block on a write of its own) snapshots these, compacts them and rewrites their hard
    /// state in its next staged write, then purges. Changes nothing.
    pub fn groups_pinning_old_segments(&self) -> Vec<GroupId> {
        let plan = self.plan_maintenance(&self.log.segments());
        let mut groups = plan.rewrite;
        groups.extend(plan.must_compact);
        groups.sort_unstable();
        groups
    }

    /// Decides, from the groups' pins and the live `segments` alone, which groups
    /// `maintain` rewrites forward and which it must ask to compact instead (their state
    /// and live entries do not fit one batch). Changes nothing.
    fn plan_maintenance(&self, segments: &[SegmentSpan]) -> MaintenancePlan {
        let mut plan = MaintenancePlan::default();
        let live_max = self.options.segments_live_max;
        let Some(target) = segments
            .len()
            .checked_sub(live_max)
            .filter(|&k| k > 0)
            .map(|k| segments[k].first_lsn)
        else {
            return plan;
        };
        for (&group, g) in &self.state.groups {
            if g.pin().is_none_or(|p| p >= target) {
                continue;
            }
            if rewrite_bytes(group, g) > self.options.batch_bytes_max {
                plan.must_compact.push(group);
            } else {
                plan.rewrite.push(group);
            }
        }
        plan
    }
}

/// What [`LogStore::maintain`] decided to do.
#[derive(Debug, Default)]
struct MaintenancePlan {
    /// Lagging groups to rewrite forward.
    rewrite: Vec<GroupId>,
    /// Lagging groups too large to rewrite in one batch.
    must_compact: Vec<GroupId>,
}

/// Encoded bytes of the records that rewrite `g`: its `Reset` and its live entries.
fn rewrite_bytes(group: GroupId, g: &GroupLog) -> usize {
    let reset = LogRecord::Reset {
        group,
        index: g.compacted_index,
        term: g.compacted_term,
        hard_state: g.hard_state,
        snapshot: g.snapshot.clone(),
    };
    let entries: u64 = g
        .entries
        .iter()
        .map(|s| RECORD_OVERHEAD_BYTES as u64 + s.len)
        .sum();
    usize::try_from(entries)
        .unwrap_or(usize::MAX)
        .saturating_add(reset.encode().len())
}
