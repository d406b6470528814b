//! Between the etcd API's messages and the state machine's requests and responses, and the
//! key-space questions the API asks: which groups a range touches, and the reserved keys it
//! must never show.

use keel_client::route::{group_of, hash_tag};
use keel_engine::KeyValue as EngineKeyValue;
use keel_engine::txn::{self as kv, RangeEnd, RangeSort, RevisionFilter, SortOrder, SortTarget};
use keel_etcd_proto::etcdserverpb::{RangeRequest, range_request};
use keel_etcd_proto::mvccpb::KeyValue;
use tonic::Status;

use super::errors;
use crate::server::RESERVED_PREFIX;

/// A non-negative protocol number as the engine's; negative numbers mean "none" (0), as
/// etcd reads them.
pub fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// An engine number as the protocol's (saturating; revisions never get near it).
pub fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The protocol key-value of an engine key-value.
pub fn key_value(kv: EngineKeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        create_revision: signed(kv.meta.create_revision),
        mod_revision: signed(kv.meta.mod_revision),
        version: signed(kv.meta.version),
        value: kv.value,
        lease: 0,
    }
}

/// The engine key-value of a protocol key-value (a forwarded answer).
pub fn engine_key_value(kv: KeyValue) -> EngineKeyValue {
    EngineKeyValue {
        key: kv.key,
        value: kv.value,
        meta: keel_engine::KeyMeta {
            create_revision: unsigned(kv.create_revision),
            mod_revision: unsigned(kv.mod_revision),
            version: unsigned(kv.version),
        },
    }
}

/// The sort a range asks for (`None`: ascending by key, the engine's natural order). As in
/// etcd, a target other than the key with no order sorts ascending.
pub fn sort(r: &RangeRequest) -> Option<RangeSort> {
    let target = match r.sort_target() {
        range_request::SortTarget::Key => SortTarget::Key,
        range_request::SortTarget::Version => SortTarget::Version,
        range_request::SortTarget::Create => SortTarget::CreateRevision,
        range_request::SortTarget::Mod => SortTarget::ModRevision,
        range_request::SortTarget::Value => SortTarget::Value,
    };
    let order = match r.sort_order() {
        range_request::SortOrder::None if target == SortTarget::Key => return None,
        range_request::SortOrder::None | range_request::SortOrder::Ascend => SortOrder::Ascend,
        range_request::SortOrder::Descend => SortOrder::Descend,
    };
    if target == SortTarget::Key && order == SortOrder::Ascend {
        return None;
    }
    Some(RangeSort { target, order })
}

/// The engine's read of `[start, end)` with everything else `r` asks, at `revision` (0: the
/// current one).
pub fn engine_range(
    r: &RangeRequest,
    start: Vec<u8>,
    end: RangeEnd,
    revision: u64,
) -> kv::RangeRequest {
    kv::RangeRequest {
        start,
        end,
        limit: usize::try_from(r.limit).unwrap_or(0),
        keys_only: r.keys_only,
        count_only: r.count_only,
        filter: RevisionFilter {
            min_mod_revision: unsigned(r.min_mod_revision),
            max_mod_revision: unsigned(r.max_mod_revision),
            min_create_revision: unsigned(r.min_create_revision),
            max_create_revision: unsigned(r.max_create_revision),
        },
        sort: sort(r),
        revision,
    }
}

/// Refuses an empty key as etcd does.
pub fn check_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(errors::EMPTY_KEY));
    }
    Ok(())
}

/// The one group every key of `[key, end)` belongs to, if there is one: a single key's, or
/// that of a range whose keys all share a complete `{hash tag}`. Every key between `key`
/// and `end` starts with their longest common prefix; when that prefix holds a complete tag
/// (a `{`, later a `}`, something between), every such key has that tag.
pub fn single_group(key: &[u8], end: &RangeEnd, groups: u32) -> Option<u32> {
    if groups <= 1 {
        return Some(0);
    }
    let common: &[u8] = match end {
        RangeEnd::Single => return Some(group_of(key, groups)),
        RangeEnd::Unbounded => return None,
        // A prefix read: every key starts with the prefix itself.
        RangeEnd::Exclusive(_) if *end == RangeEnd::prefix_end(key) => key,
        RangeEnd::Exclusive(end) => {
            let n = key.iter().zip(end).take_while(|(a, b)| a == b).count();
            &key[..n]
        }
    };
    let tag = hash_tag(common);
    // `hash_tag` answers the whole input when it holds no complete tag.
    if tag.len() < common.len() {
        Some(group_of(common, groups))
    } else {
        None
    }
}

/// The groups a range reads: its one group, or all of them.
pub fn groups_of_range(key: &[u8], end: &RangeEnd, groups: u32) -> Vec<u32> {
    match single_group(key, end, groups) {
        Some(g) => vec![g],
        None => (0..groups).collect(),
    }
}

/// The end of the reserved key space: the first key after every key under
/// [`RESERVED_PREFIX`].
fn reserved_end() -> Vec<u8> {
    match RangeEnd::prefix_end(RESERVED_PREFIX) {
        RangeEnd::Exclusive(end) => end,
        // The prefix ends below 0xff, so it always has an exclusive end.
        _ => vec![0, b'k', b'e', b'e', b'l', b'0'],
    }
}

/// The parts of `[start, end)` outside the reserved key space, in key order. Cluster
/// metadata lives under the reserved prefix in group 0; the etcd API neither shows nor
/// deletes it. An empty answer means the whole range is reserved.
pub fn outside_reserved(start: &[u8], end: &RangeEnd) -> Vec<(Vec<u8>, RangeEnd)> {
    let low = RESERVED_PREFIX;
    let high = reserved_end();
    match end {
        RangeEnd::Single => {
            if start.starts_with(low) {
                Vec::new()
            } else {
                vec![(start.to_vec(), RangeEnd::Single)]
            }
        }
        RangeEnd::Exclusive(_) | RangeEnd::Unbounded => {
            let ends_after = |bound: &[u8]| match end {
                RangeEnd::Exclusive(e) => e.as_slice() > bound,
                _ => true,
            };
            let mut parts = Vec::new();
            if start < low {
                let first_end = if ends_after(low) {
                    RangeEnd::Exclusive(low.to_vec())
                } else {
                    end.clone()
                };
                parts.push((start.to_vec(), first_end));
            }
            if ends_after(&high) {
                let second_start = if start > high.as_slice() {
                    start.to_vec()
                } else {
                    high
                };
                parts.push((second_start, end.clone()));
            }
            parts
        }
    }
}

/// Whether a write to `[start, end)` would touch the reserved key space.
pub fn touches_reserved(start: &[u8], end: &RangeEnd) -> bool {
    match end {
        RangeEnd::Single => start.starts_with(RESERVED_PREFIX),
        _ => outside_reserved(start, end) != vec![(start.to_vec(), end.clone())],
    }
}

fn compare_kv(
    sort: Option<RangeSort>,
    a: &EngineKeyValue,
    b: &EngineKeyValue,
) -> std::cmp::Ordering {
    let Some(sort) = sort else {
        return a.key.cmp(&b.key);
    };
    let by = match sort.target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.meta.version.cmp(&b.meta.version),
        SortTarget::CreateRevision => a.meta.create_revision.cmp(&b.meta.create_revision),
        SortTarget::ModRevision => a.meta.mod_revision.cmp(&b.meta.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    let by = match sort.order {
        SortOrder::Ascend => by,
        SortOrder::Descend => by.reverse(),
    };
    // Ties keep key order, as a stable sort of a key-ordered list would.
    by.then_with(|| a.key.cmp(&b.key))
}

/// One answer from reads of disjoint parts of a range (groups, or the parts around the
/// reserved keys), each already sorted and limited as asked: counts add up, keys merge in
/// the asked order, the limit applies to the merge, and the revision is the largest.
pub fn merge_ranges(
    mut parts: Vec<kv::RangeResponse>,
    sort: Option<RangeSort>,
    limit: usize,
) -> kv::RangeResponse {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut merged = kv::RangeResponse::default();
    for part in parts {
        merged.count += part.count;
        merged.more |= part.more;
        merged.revision = merged.revision.max(part.revision);
        merged.kvs.extend(part.kvs);
    }
    merged.kvs.sort_by(|a, b| compare_kv(sort, a, b));
    if limit > 0 && merged.kvs.len() > limit {
        merged.kvs.truncate(limit);
        merged.more = true;
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_are_cut_out_of_ranges() {
        let all = outside_reserved(b"\0", &RangeEnd::Unbounded);
        assert_eq!(
            all,
            vec![
                (b"\0".to_vec(), RangeEnd::Exclusive(b"\0keel/".to_vec())),
                (b"\0keel0".to_vec(), RangeEnd::Unbounded),
            ]
        );
        let user = outside_reserved(b"a", &RangeEnd::Exclusive(b"b".to_vec()));
        assert_eq!(
            user,
            vec![(b"a".to_vec(), RangeEnd::Exclusive(b"b".to_vec()))]
        );
        assert!(outside_reserved(b"\0keel/members/1", &RangeEnd::Single).is_empty());
        assert!(
            outside_reserved(b"\0keel/a", &RangeEnd::Exclusive(b"\0keel/b".to_vec())).is_empty()
        );
        assert!(touches_reserved(b"\0", &RangeEnd::Unbounded));
        assert!(!touches_reserved(b"a", &RangeEnd::Unbounded));
    }

    #[test]
    fn a_range_inside_one_hash_tag_reads_one_group() {
        let prefix = b"{user7}/".to_vec();
        let end = RangeEnd::prefix_end(&prefix);
        assert_eq!(
            single_group(&prefix, &end, 8),
            Some(group_of(b"{user7}/x", 8))
        );
        let tag_prefix = b"{t}".to_vec();
        assert_eq!(
            single_group(&tag_prefix, &RangeEnd::prefix_end(&tag_prefix), 8),
            Some(group_of(b"{t}a", 8))
        );
        // A prefix that stops inside the tag spans tags, so groups.
        let partial = b"{user".to_vec();
        assert_eq!(
            single_group(&partial, &RangeEnd::prefix_end(&partial), 8),
            None
        );
        assert_eq!(single_group(b"a", &RangeEnd::Unbounded, 8), None);
        assert_eq!(single_group(b"a", &RangeEnd::Unbounded, 1), Some(0));
        assert_eq!(
            groups_of_range(b"a", &RangeEnd::Exclusive(b"b".to_vec()), 3),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn merged_ranges_keep_order_count_and_limit() {
        let kv = |k: &str, v: &str, m: u64| EngineKeyValue {
            key: k.into(),
            value: v.into(),
            meta: keel_engine::KeyMeta {
                create_revision: m,
                mod_revision: m,
                version: 1,
            },
        };
        let a = kv::RangeResponse {
            kvs: vec![kv("a", "3", 5), kv("c", "1", 1)],
            count: 3,
            more: true,
            revision: 9,
        };
        let b = kv::RangeResponse {
            kvs: vec![kv("b", "2", 7)],
            count: 1,
            more: false,
            revision: 7,
        };
        let m = merge_ranges(vec![a.clone(), b.clone()], None, 2);
        assert_eq!(
            m.kvs.iter().map(|k| k.key.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!((m.count, m.more, m.revision), (4, true, 9));
        let by_value = Some(RangeSort {
            target: SortTarget::Value,
            order: SortOrder::Descend,
        });
        let m = merge_ranges(vec![a, b], by_value, 0);
        assert_eq!(
            m.kvs.iter().map(|k| k.value.clone()).collect::<Vec<_>>(),
            vec![b"3".to_vec(), b"2".to_vec(), b"1".to_vec()]
        );
    }
}
