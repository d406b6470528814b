//! Model-based property test: the memtable against a plain `BTreeMap` reference that keeps
//! etcd revision rules written out the naive way, and its history against a reference that
//! keeps a full copy of the store after every revision.

use std::collections::{BTreeMap, VecDeque};

use keel_engine::{
    Compare, CompareOp, CompareTarget, HISTORY_CHANGE_OVERHEAD_BYTES, KeyMeta, KvError, KvLimits,
    Memtable, Op, OpResponse, RangeEnd, RangeRequest, RangeSort, RevisionFilter, SortOrder,
    SortTarget, Txn,
};
use proptest::prelude::*;

/// The reference: key -> (value, create, mod, version), plus the store revision.
#[derive(Default, Clone)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>,
    revision: u64,
}

impl Model {
    fn meta(&self, key: &[u8]) -> KeyMeta {
        self.map
            .get(key)
            .map_or(KeyMeta::ABSENT, |&(_, c, m, v)| KeyMeta {
                create_revision: c,
                mod_revision: m,
                version: v,
            })
    }

    fn in_range(key: &[u8], start: &[u8], end: &RangeEnd) -> bool {
        match end {
            RangeEnd::Single => key == start,
            RangeEnd::Exclusive(e) => key >= start && key < e.as_slice(),
            RangeEnd::Unbounded => key >= start,
        }
    }

    /// Whether a compare holds: for each key of its range, or for a missing key (value
    /// compares fail, the rest see zeros) when the range is empty — written out naively.
    fn holds(&self, c: &Compare) -> bool {
        let keys: Vec<&Vec<u8>> = self
            .map
            .keys()
            .filter(|k| Self::in_range(k, &c.key, &c.end))
            .collect();
        if keys.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_))
                && Self::relation_holds(c, &KeyMeta::ABSENT, &[]);
        }
        keys.iter()
            .all(|k| Self::relation_holds(c, &self.meta(k), &self.map[*k].0))
    }

    fn relation_holds(c: &Compare, m: &KeyMeta, value: &[u8]) -> bool {
        let ord = match &c.target {
            CompareTarget::Value(v) => value.cmp(v.as_slice()),
            CompareTarget::Version(v) => m.version.cmp(v),
            CompareTarget::CreateRevision(v) => m.create_revision.cmp(v),
            CompareTarget::ModRevision(v) => m.mod_revision.cmp(v),
        };
        match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Greater => ord.is_gt(),
            CompareOp::Less => ord.is_lt(),
        }
    }

    /// Applies a valid transaction; returns whether the success branch ran.
    fn txn(&mut self, t: &Txn) -> bool {
        self.txn_charged(t).0
    }

    /// Applies a valid transaction; returns whether the success branch ran and the history
    /// bytes its changes are charged, by the documented rule: per changed key, its key and
    /// previous value lengths plus the fixed overhead. As etcd: the outcomes of all compares
    /// (of the nested transactions in the chosen branches too) are listed first, depth
    /// first, on the state before the transaction; then the chosen branches run.
    fn txn_charged(&mut self, t: &Txn) -> (bool, u64) {
        let mut path = Vec::new();
        self.path(t, &mut path);
        let rev = self.revision + 1;
        let mut changed = false;
        let mut charged = 0;
        let mut path = path.into_iter();
        let ok = self.run(t, &mut path, rev, &mut changed, &mut charged);
        assert!(path.next().is_none());
        if changed {
            self.revision = rev;
        }
        (ok, charged)
    }

    fn path(&self, t: &Txn, out: &mut Vec<bool>) {
        let ok = t.compares.iter().all(|c| self.holds(c));
        out.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Op::Txn(nested) = op {
                self.path(nested, out);
            }
        }
    }

    fn run(
        &mut self,
        t: &Txn,
        path: &mut impl Iterator<Item = bool>,
        rev: u64,
        changed: &mut bool,
        charged: &mut u64,
    ) -> bool {
        let ok = path.next().expect("a decision per transaction");
        for op in if ok { &t.success } else { &t.failure } {
            match op {
                Op::Put { key, value, .. } => {
                    *changed = true;
                    let old = self.map.get(key).map_or(0, |e| e.0.len());
                    *charged += (key.len() + old) as u64 + HISTORY_CHANGE_OVERHEAD_BYTES;
                    let e = self
                        .map
                        .entry(key.clone())
                        .or_insert((Vec::new(), rev, rev, 0));
                    e.0 = value.clone();
                    e.2 = rev;
                    e.3 += 1;
                }
                Op::DeleteRange { start, end, .. } => {
                    let before = self.map.len();
                    self.map.retain(|k, (v, ..)| {
                        let gone = Self::in_range(k, start, end);
                        if gone {
                            *charged += (k.len() + v.len()) as u64 + HISTORY_CHANGE_OVERHEAD_BYTES;
                        }
                        !gone
                    });
                    *changed |= self.map.len() != before;
                }
                Op::Range(_) => {}
                Op::Txn(nested) => {
                    self.run(nested, path, rev, changed, charged);
                }
            }
        }
        ok
    }

    /// What a read of `r` returns: (count, more, key-value-metadata triples), written out
    /// the naive way — count the range, filter, stable sort (ties stay in key order), limit.
    fn expected_range(&self, r: &RangeRequest) -> ReadResult {
        let all: Vec<_> = self
            .map
            .iter()
            .filter(|(k, _)| Model::in_range(k, &r.start, &r.end))
            .collect();
        let mut want: Vec<_> = all
            .iter()
            .filter(|(k, _)| r.filter.admits(&self.meta(k)))
            .map(|(k, (v, ..))| (k.to_vec(), v.clone(), self.meta(k)))
            .collect();
        if let Some(sort) = r.sort {
            want.sort_by(|a, b| {
                let o = match sort.target {
                    SortTarget::Key => a.0.cmp(&b.0),
                    SortTarget::Version => a.2.version.cmp(&b.2.version),
                    SortTarget::CreateRevision => a.2.create_revision.cmp(&b.2.create_revision),
                    SortTarget::ModRevision => a.2.mod_revision.cmp(&b.2.mod_revision),
                    SortTarget::Value => a.1.cmp(&b.1),
                };
                if sort.order == SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        if r.count_only {
            want.clear();
        }
        let more = r.limit != 0 && want.len() > r.limit;
        if more {
            want.truncate(r.limit);
        }
        let want = want
            .into_iter()
            .map(|(k, v, meta)| (k, if r.keys_only { Vec::new() } else { v }, meta))
            .collect();
        (all.len() as u64, more, want)
    }
}

/// A read's result: count, more, and the key, value and metadata of each key returned.
type ReadResult = (u64, bool, Vec<(Vec<u8>, Vec<u8>, KeyMeta)>);

/// A read's result in the shape of [`Model::expected_range`].
fn got_range(resp: &keel_engine::RangeResponse) -> ReadResult {
    let kvs = resp
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone(), kv.meta))
        .collect();
    (resp.count, resp.more, kvs)
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 1..4)
}

fn end() -> impl Strategy<Value = RangeEnd> {
    prop_oneof![
        Just(RangeEnd::Single),
        Just(RangeEnd::Unbounded),
        key().prop_map(RangeEnd::Exclusive),
    ]
}

fn leaf_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::put(k, v)),
        2 => (key(), end(), any::<bool>()).prop_map(|(start, end, prev_kv)| Op::DeleteRange { start, end, prev_kv }),
        1 => (key(), end(), filter(), sort()).prop_map(|(start, end, filter, sort)| Op::Range(RangeRequest {
            start, end, limit: 0, keys_only: false, count_only: false, filter, sort, revision: 0 })),
    ]
}

/// An operation, now and then a transaction nested up to two levels.
fn op() -> impl Strategy<Value = Op> {
    leaf_op().prop_recursive(2, 12, 3, |inner| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(inner.clone(), 0..3),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(compares, success, failure)| {
                Op::Txn(Txn {
                    compares,
                    success,
                    failure,
                })
            })
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3).prop_map(CompareTarget::Value),
        (0u64..4).prop_map(CompareTarget::Version),
        (0u64..20).prop_map(CompareTarget::CreateRevision),
        (0u64..20).prop_map(CompareTarget::ModRevision),
    ];
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    (key(), end(), op, target).prop_map(|(key, end, op, target)| Compare {
        key,
        end,
        op,
        target,
    })
}

fn filter() -> impl Strategy<Value = RevisionFilter> {
    prop_oneof![
        3 => Just(RevisionFilter::default()),
        1 => (0u64..8, 0u64..12, 0u64..8, 0u64..12).prop_map(|(a, b, c, d)| RevisionFilter {
            min_mod_revision: a,
            max_mod_revision: b,
            min_create_revision: c,
            max_create_revision: d,
        }),
    ]
}

fn sort() -> impl Strategy<Value = Option<RangeSort>> {
    let target = prop::sample::select(vec![
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::CreateRevision,
        SortTarget::ModRevision,
        SortTarget::Value,
    ]);
    let order = prop::sample::select(vec![SortOrder::Ascend, SortOrder::Descend]);
    prop_oneof![
        2 => Just(None),
        1 => (target, order).prop_map(|(target, order)| Some(RangeSort { target, order })),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Txn(Txn),
    Range(RangeRequest),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(op(), 0..4),
            prop::collection::vec(op(), 0..3),
        ).prop_map(|(compares, success, failure)| Step::Txn(Txn { compares, success, failure })),
        2 => (key(), end(), 0usize..4, any::<bool>(), any::<bool>(), filter(), sort()).prop_map(
            |(start, end, limit, keys_only, count_only, filter, sort)| Step::Range(RangeRequest {
                start, end, limit, keys_only, count_only, filter, sort, revision: 0 })),
    ]
}

fn check_equal(m: &Memtable, model: &Model) {
    assert_eq!(m.revision(), model.revision);
    let got: Vec<_> = m
        .iter()
        .map(|(k, v, meta)| (k.to_vec(), v.to_vec(), meta))
        .collect();
    let want: Vec<_> = model
        .map
        .iter()
        .map(|(k, (v, ..))| (k.clone(), v.clone(), model.meta(k)))
        .collect();
    assert_eq!(got, want);
    let bytes: u64 = model
        .map
        .iter()
        .map(|(k, (v, ..))| (k.len() + v.len()) as u64)
        .sum();
    assert_eq!(m.data_bytes(), bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memtable_matches_model(steps in prop::collection::vec(step(), 1..60)) {
        let mut m = Memtable::new(KvLimits::default()).unwrap();
        let mut model = Model::default();
        for s in &steps {
            match s {
                Step::Txn(t) => {
                    let resp = m.txn(t).unwrap();
                    let ok = model.txn(t);
                    prop_assert_eq!(resp.succeeded, ok);
                    prop_assert_eq!(resp.revision, model.revision);
                }
                Step::Range(r) => {
                    let resp = m.range(r).unwrap();
                    prop_assert_eq!(resp.revision, model.revision);
                    prop_assert_eq!(got_range(&resp), model.expected_range(r));
                }
            }
            check_equal(&m, &model);
        }
    }
}

#[test]
fn oversize_input_is_a_clear_error_and_changes_nothing() {
    let limits = KvLimits {
        key_bytes_max: 4,
        value_bytes_max: 8,
        txn_ops_max: 2,
        txn_bytes_max: 16,
        history_bytes_max: 1 << 20,
    };
    let mut m = Memtable::new(limits).unwrap();
    m.put(b"k", b"v").unwrap();
    assert_eq!(m.put(b"", b"v"), Err(KvError::EmptyKey));
    assert_eq!(
        m.put(b"kkkkk", b"v"),
        Err(KvError::KeyTooLarge { len: 5, max: 4 })
    );
    assert_eq!(
        m.put(b"k", &[0; 9]),
        Err(KvError::ValueTooLarge { len: 9, max: 8 })
    );
    let three = Txn::batch(vec![Op::put("a", ""), Op::put("b", ""), Op::put("c", "")]);
    assert_eq!(m.txn(&three), Err(KvError::TooManyOps { ops: 3, max: 2 }));
    // The first op is fine, the second too large: nothing of the batch may be applied.
    let big = Txn::batch(vec![Op::put("a", "1"), Op::put("bbbb", [0; 9])]);
    assert_eq!(m.txn(&big), Err(KvError::ValueTooLarge { len: 9, max: 8 }));
    let big = Txn::batch(vec![Op::put("aaaa", [0; 8]), Op::put("bbbb", [0; 8])]);
    assert_eq!(
        m.txn(&big),
        Err(KvError::TxnTooLarge { bytes: 24, max: 16 })
    );
    assert!(m.get(b"a").is_none());
    assert_eq!(m.revision(), 1);
}

#[test]
fn revisions_follow_etcd_rules() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    assert_eq!(m.put(b"a", b"1").unwrap(), 1);
    assert_eq!(m.put(b"a", b"2").unwrap(), 2);
    let a = m.get(b"a").unwrap();
    assert_eq!(
        (a.meta.create_revision, a.meta.mod_revision, a.meta.version),
        (1, 2, 2)
    );
    // Deleting nothing does not advance the revision; deleting something does.
    assert!(!m.delete(b"zz").unwrap());
    assert_eq!(m.revision(), 2);
    assert!(m.delete(b"a").unwrap());
    assert_eq!(m.revision(), 3);
    assert_eq!(m.put(b"a", b"3").unwrap(), 4);
    let a = m.get(b"a").unwrap();
    assert_eq!(
        (a.meta.create_revision, a.meta.mod_revision, a.meta.version),
        (4, 4, 1)
    );
    // A compare-and-swap on the mod revision: the stale one fails and runs the failure branch.
    let cas = |rev| Txn {
        compares: vec![Compare {
            key: b"a".to_vec(),
            end: RangeEnd::Single,
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }],
        success: vec![Op::put("a", "cas")],
        failure: vec![Op::Range(RangeRequest::key("a"))],
    };
    let stale = m.txn(&cas(1)).unwrap();
    assert!(!stale.succeeded);
    match &stale.responses[0] {
        OpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"3"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(m.txn(&cas(4)).unwrap().succeeded);
    assert_eq!(m.get(b"a").unwrap().value, b"cas");
}

#[test]
fn prev_kv_returns_what_was_overwritten_or_deleted() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    m.put(b"a", b"1").unwrap();
    m.put(b"b", b"2").unwrap();
    let r = m
        .txn(&Txn::batch(vec![
            Op::put("a", "10").with_prev_kv(),
            Op::put("new", "x").with_prev_kv(),
            Op::put("b", "20"),
        ]))
        .unwrap();
    match &r.responses[..] {
        [
            OpResponse::Put {
                prev_kv: Some(a), ..
            },
            OpResponse::Put {
                prev_kv: None,
                prev: KeyMeta::ABSENT,
            },
            OpResponse::Put {
                prev_kv: None,
                prev,
            },
        ] => {
            assert_eq!(
                (a.key.as_slice(), a.value.as_slice(), a.meta.version),
                (&b"a"[..], &b"1"[..], 1)
            );
            assert_eq!(prev.mod_revision, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    let r = m
        .txn(&Txn::batch(vec![
            Op::delete_range("a", RangeEnd::Exclusive(b"c".to_vec())).with_prev_kv(),
        ]))
        .unwrap();
    match &r.responses[..] {
        [
            OpResponse::DeleteRange {
                deleted: 2,
                prev_kvs,
            },
        ] => {
            let got: Vec<_> = prev_kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (b"a".to_vec(), b"10".to_vec()),
                    (b"b".to_vec(), b"20".to_vec())
                ]
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The log encoding of a transaction round-trips, and decoding any byte string returns
    /// an error or a transaction, never a panic.
    #[test]
    fn txn_codec_round_trips_and_rejects_garbage(
        compares in prop::collection::vec(compare(), 0..3),
        success in prop::collection::vec(op().prop_map(|o| if o.is_write() { o.with_prev_kv() } else { o }), 0..4),
        failure in prop::collection::vec(op(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        cut in any::<prop::sample::Index>(),
    ) {
        let txn = Txn { compares, success, failure };
        let bytes = keel_engine::txn_codec::encode_txn(&txn);
        prop_assert_eq!(keel_engine::txn_codec::decode_txn(&bytes).unwrap(), txn);
        let cut = cut.index(bytes.len());
        prop_assert!(keel_engine::txn_codec::decode_txn(&bytes[..cut]).is_err());
        let _ = keel_engine::txn_codec::decode_txn(&garbage);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A snapshot read in chunks while transactions go on returns exactly the state at the
    /// moment it began.
    #[test]
    fn snapshot_stays_consistent_while_writes_go_on(
        before in prop::collection::vec(op(), 0..30),
        during in prop::collection::vec((prop::collection::vec(op(), 1..3), 1usize..4), 0..20),
    ) {
        let mut m = Memtable::new(KvLimits::default()).unwrap();
        for o in before {
            m.txn(&Txn::batch(vec![o])).unwrap();
        }
        m.set_applied_index(5);
        let reference: Vec<_> = m.iter().map(|(k, v, meta)| (k.to_vec(), v.to_vec(), meta)).collect();
        let info = m.begin_snapshot().unwrap();
        prop_assert!(m.begin_snapshot().is_none(), "one snapshot at a time");
        prop_assert_eq!((info.revision, info.applied_index, info.len), (m.revision(), 5, reference.len()));
        let mut got = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut steps = during.into_iter();
        loop {
            // Interleave writes between chunk reads.
            let chunk_len = match steps.next() {
                Some((ops, n)) => {
                    m.txn(&Txn::batch(ops)).unwrap();
                    n
                }
                None => 2,
            };
            let chunk = m.snapshot_chunk(after.as_deref(), chunk_len);
            let Some(last) = chunk.last() else { break };
            after = Some(last.key.clone());
            got.extend(chunk.into_iter().map(|kv| (kv.key, kv.value, kv.meta)));
        }
        prop_assert_eq!(got, reference);
        m.end_snapshot();
        prop_assert!(m.snapshot_chunk(None, 10).is_empty());
    }
}

/// A step of the history test.
#[derive(Debug, Clone)]
enum HistoryStep {
    Txn(Txn),
    /// Compact at this revision (often invalid on purpose: at or below the compact revision,
    /// or beyond the store revision).
    Compact(u64),
}

fn history_step() -> impl Strategy<Value = HistoryStep> {
    prop_oneof![
        6 => (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(op().prop_filter("writes", Op::is_write), 1..4),
            prop::collection::vec(op().prop_filter("writes", Op::is_write), 0..2),
        ).prop_map(|(compares, success, failure)| HistoryStep::Txn(Txn { compares, success, failure })),
        1 => (0u64..40).prop_map(HistoryStep::Compact),
    ]
}

fn read() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        end(),
        0usize..3,
        any::<bool>(),
        any::<bool>(),
        filter(),
        sort(),
    )
        .prop_map(
            |(start, end, limit, keys_only, count_only, filter, sort)| RangeRequest {
                start,
                end,
                limit,
                keys_only,
                count_only,
                filter,
                sort,
                revision: 0,
            },
        )
}

/// The history reference: a full copy of the store after every revision (index = revision),
/// the bytes each revision's changes are charged, and the compact revision, with the
/// compaction rules written out the naive way.
struct HistoryModel {
    snapshots: Vec<Model>,
    /// (revision, charged bytes) of the revisions kept, oldest first.
    kept: VecDeque<(u64, u64)>,
    compact: u64,
    bytes_max: u64,
}

impl HistoryModel {
    fn current(&self) -> &Model {
        self.snapshots.last().expect("revision 0 is always there")
    }

    fn bytes(&self) -> u64 {
        self.kept.iter().map(|&(_, b)| b).sum()
    }

    fn txn(&mut self, t: &Txn) -> bool {
        let mut next = self.current().clone();
        let (ok, charged) = next.txn_charged(t);
        if next.revision != self.current().revision {
            self.kept.push_back((next.revision, charged));
            self.snapshots.push(next);
            // Automatic compaction: whole revisions, oldest first, until the history fits.
            while self.bytes() > self.bytes_max {
                let (rev, _) = self.kept.pop_front().expect("bytes > 0 means a revision");
                self.compact = rev;
            }
        }
        ok
    }

    fn compact(&mut self, rev: u64) -> Result<(), KvError> {
        let current = self.current().revision;
        if rev <= self.compact {
            return Err(KvError::Compacted {
                requested: rev,
                compacted: self.compact,
            });
        }
        if rev > current {
            return Err(KvError::FutureRevision {
                requested: rev,
                current,
            });
        }
        self.kept.retain(|&(r, _)| r > rev);
        self.compact = rev;
        Ok(())
    }

    /// The store as a read at `rev` must see it, or the error it must get.
    fn at(&self, rev: u64) -> Result<&Model, KvError> {
        let current = self.current().revision;
        if rev == 0 {
            return Ok(self.current());
        }
        if rev > current {
            return Err(KvError::FutureRevision {
                requested: rev,
                current,
            });
        }
        if rev < self.compact {
            return Err(KvError::Compacted {
                requested: rev,
                compacted: self.compact,
            });
        }
        Ok(&self.snapshots[usize::try_from(rev).unwrap()])
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step of a random history with compactions, a read at every revision from
    /// 0 to one past the current one matches the full copy of the store at that revision, or
    /// fails as the compaction rules say; the history stays within its bound, and the
    /// automatic compaction lands on the revision the documented rule gives.
    #[test]
    fn reads_at_every_past_revision_match_the_store_then(
        steps in prop::collection::vec(history_step(), 1..40),
        reads in prop::collection::vec(read(), 1..4),
        bytes_max in prop_oneof![Just(0u64), 60u64..900, Just(1u64 << 20)],
    ) {
        let limits = KvLimits { history_bytes_max: bytes_max, ..KvLimits::default() };
        let mut m = Memtable::new(limits).unwrap();
        let mut model = HistoryModel {
            snapshots: vec![Model::default()],
            kept: VecDeque::new(),
            compact: 0,
            bytes_max,
        };
        for s in &steps {
            match s {
                HistoryStep::Txn(t) => {
                    let resp = m.txn(t).unwrap();
                    prop_assert_eq!(resp.succeeded, model.txn(t));
                    prop_assert_eq!(resp.revision, model.current().revision);
                }
                HistoryStep::Compact(rev) => {
                    prop_assert_eq!(m.compact(*rev), model.compact(*rev));
                }
            }
            check_equal(&m, model.current());
            prop_assert_eq!(m.compact_revision(), model.compact);
            prop_assert_eq!(m.history_bytes(), model.bytes());
            prop_assert!(m.history_bytes() <= bytes_max);
            for r in &reads {
                for rev in 0..=model.current().revision + 1 {
                    let got = m.range(&r.clone().at_revision(rev));
                    match model.at(rev) {
                        Ok(then) => {
                            let got = got.unwrap();
                            prop_assert_eq!(got.revision, model.current().revision);
                            prop_assert_eq!(got_range(&got), then.expected_range(r), "at revision {}", rev);
                        }
                        Err(e) => prop_assert_eq!(got, Err(e)),
                    }
                }
            }
        }
    }
}

/// Puts of values from empty to larger than a history block (64 KiB), and deletes.
fn big_op() -> impl Strategy<Value = Op> {
    let value = (
        prop::sample::select(vec![0usize, 900, 30_000, 70_000]),
        any::<u8>(),
    )
        .prop_map(|(len, fill)| vec![fill; len]);
    prop_oneof![
        4 => (key(), value).prop_map(|(k, v)| Op::put(k, v)),
        1 => (key(), end()).prop_map(|(start, end)| Op::delete_range(start, end)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same as above with values up to larger than a history block, so that changes
    /// fill blocks, get blocks of their own, and blocks are freed as compaction passes them.
    #[test]
    fn reads_at_past_revisions_with_large_values_match_the_store_then(
        steps in prop::collection::vec(prop_oneof![
            6 => prop::collection::vec(big_op(), 1..4).prop_map(|ops| HistoryStep::Txn(Txn::batch(ops))),
            1 => (0u64..25).prop_map(HistoryStep::Compact),
        ], 1..25),
        reads in prop::collection::vec(read(), 1..3),
        bytes_max in prop_oneof![Just(0u64), 50_000u64..400_000, Just(1u64 << 30)],
    ) {
        let limits = KvLimits { history_bytes_max: bytes_max, ..KvLimits::default() };
        let mut m = Memtable::new(limits).unwrap();
        let mut model = HistoryModel {
            snapshots: vec![Model::default()],
            kept: VecDeque::new(),
            compact: 0,
            bytes_max,
        };
        for s in &steps {
            match s {
                HistoryStep::Txn(t) => {
                    m.txn(t).unwrap();
                    model.txn(t);
                }
                HistoryStep::Compact(rev) => {
                    prop_assert_eq!(m.compact(*rev), model.compact(*rev));
                }
            }
            check_equal(&m, model.current());
            prop_assert_eq!(m.compact_revision(), model.compact);
            prop_assert_eq!(m.history_bytes(), model.bytes());
            for r in &reads {
                for rev in 0..=model.current().revision + 1 {
                    let got = m.range(&r.clone().at_revision(rev));
                    match model.at(rev) {
                        Ok(then) => prop_assert_eq!(got_range(&got.unwrap()), then.expected_range(r), "at revision {}", rev),
                        Err(e) => prop_assert_eq!(got, Err(e)),
                    }
                }
            }
        }
    }
}

fn at(m: &Memtable, key: &str, rev: u64) -> Result<Option<(Vec<u8>, KeyMeta)>, KvError> {
    let r = m.range(&RangeRequest::key(key).at_revision(rev))?;
    Ok(r.kvs.into_iter().next().map(|kv| (kv.value, kv.meta)))
}

fn meta(create_revision: u64, mod_revision: u64, version: u64) -> KeyMeta {
    KeyMeta {
        create_revision,
        mod_revision,
        version,
    }
}

#[test]
fn a_delete_is_a_tombstone_that_older_reads_look_past() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    m.put(b"a", b"1").unwrap(); // 1
    m.put(b"b", b"x").unwrap(); // 2
    m.put(b"a", b"2").unwrap(); // 3
    assert!(m.delete(b"a").unwrap()); // 4
    m.put(b"a", b"3").unwrap(); // 5
    assert_eq!(
        at(&m, "a", 1).unwrap(),
        Some((b"1".to_vec(), meta(1, 1, 1)))
    );
    assert_eq!(
        at(&m, "a", 2).unwrap(),
        Some((b"1".to_vec(), meta(1, 1, 1)))
    );
    assert_eq!(
        at(&m, "a", 3).unwrap(),
        Some((b"2".to_vec(), meta(1, 3, 2)))
    );
    assert_eq!(at(&m, "a", 4).unwrap(), None);
    assert_eq!(
        at(&m, "a", 5).unwrap(),
        Some((b"3".to_vec(), meta(5, 5, 1)))
    );
    assert_eq!(at(&m, "b", 1).unwrap(), None, "created after revision 1");
    // `count` follows the revision read, and the header revision is the current one.
    let all = |rev| {
        m.range(&RangeRequest::between("a", "c").at_revision(rev))
            .unwrap()
    };
    let counts: Vec<_> = (1..=5).map(|rev| all(rev).count).collect();
    assert_eq!(counts, [1, 2, 2, 1, 2]);
    assert!((1..=5).all(|rev| all(rev).revision == 5));
}

#[test]
fn compaction_refuses_old_and_future_revisions_and_changes_nothing_then() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    assert_eq!(
        m.compact(0),
        Err(KvError::Compacted {
            requested: 0,
            compacted: 0
        })
    );
    assert_eq!(
        m.compact(1),
        Err(KvError::FutureRevision {
            requested: 1,
            current: 0
        })
    );
    for v in ["1", "2", "3", "4"] {
        m.put(b"k", v.as_bytes()).unwrap();
    }
    assert_eq!(m.history_len(), 4);
    m.compact(2).unwrap();
    assert_eq!((m.compact_revision(), m.history_len()), (2, 2));
    assert_eq!(
        m.compact(2),
        Err(KvError::Compacted {
            requested: 2,
            compacted: 2
        })
    );
    assert_eq!(
        m.compact(5),
        Err(KvError::FutureRevision {
            requested: 5,
            current: 4
        })
    );
    assert_eq!(m.compact_revision(), 2);
    assert_eq!(
        at(&m, "k", 1),
        Err(KvError::Compacted {
            requested: 1,
            compacted: 2
        })
    );
    assert_eq!(at(&m, "k", 2).unwrap().unwrap().0, b"2");
    assert_eq!(
        at(&m, "k", 5),
        Err(KvError::FutureRevision {
            requested: 5,
            current: 4
        })
    );
    assert_eq!(
        KvError::Compacted {
            requested: 1,
            compacted: 2
        }
        .to_string(),
        "mvcc: required revision has been compacted (revision 1, compacted at 2)"
    );
    // Compacting at the current revision keeps it readable and drops all history.
    m.compact(4).unwrap();
    assert_eq!((m.history_len(), m.history_bytes()), (0, 0));
    assert_eq!(at(&m, "k", 4).unwrap().unwrap().0, b"4");
    assert_eq!(m.get(b"k").unwrap().meta, meta(1, 4, 4));
    assert_eq!(m.revision(), 4);
}

#[test]
fn the_history_bound_compacts_the_oldest_revisions() {
    // Each overwrite of "k" (1 byte) holding a 100-byte value is charged 1 + 100 + overhead.
    let change = 101 + HISTORY_CHANGE_OVERHEAD_BYTES;
    let limits = KvLimits {
        history_bytes_max: 3 * change,
        ..KvLimits::default()
    };
    let mut m = Memtable::new(limits).unwrap();
    m.put(b"k", &[0; 100]).unwrap(); // 1: charged 1 + 64 (the key did not exist)
    for i in 1..=10u8 {
        m.put(b"k", &[i; 100]).unwrap(); // 2..=11
        assert!(m.history_bytes() <= 3 * change);
    }
    // Three overwrites fit: revisions 9, 10 and 11 are kept, so 8 is the oldest readable.
    assert_eq!((m.history_len(), m.history_bytes()), (3, 3 * change));
    assert_eq!(m.compact_revision(), 8);
    assert_eq!(at(&m, "k", 8).unwrap().unwrap().0, [7; 100]);
    assert!(matches!(
        at(&m, "k", 7),
        Err(KvError::Compacted { compacted: 8, .. })
    ));
    // One transaction whose changes are charged more than the bound leaves no history: only
    // its own revision is readable.
    let four = |v: u8| {
        Txn::batch(
            (0..4u8)
                .map(|k| Op::put(vec![b'x', k], vec![v; 100]))
                .collect(),
        )
    };
    m.txn(&four(0)).unwrap(); // 12: new keys, charged 4 * (2 + 64)
    assert!(m.history_bytes() <= 3 * change);
    m.txn(&four(1)).unwrap(); // 13: overwrites, charged 4 * (2 + 100 + 64)
    assert_eq!((m.compact_revision(), m.history_len()), (13, 0));
    assert_eq!(at(&m, "k", 13).unwrap().unwrap().0, [10; 100]);
}

#[test]
fn no_history_limit_keeps_only_the_current_revision() {
    let limits = KvLimits {
        history_bytes_max: 0,
        ..KvLimits::default()
    };
    let mut m = Memtable::new(limits).unwrap();
    m.put(b"a", b"1").unwrap();
    m.put(b"a", b"2").unwrap();
    assert_eq!((m.compact_revision(), m.history_bytes()), (2, 0));
    assert_eq!(at(&m, "a", 2).unwrap().unwrap().0, b"2");
    assert!(matches!(at(&m, "a", 1), Err(KvError::Compacted { .. })));
}

#[test]
fn reads_inside_a_transaction_are_at_the_current_revision_only() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    m.put(b"a", b"1").unwrap();
    m.put(b"a", b"2").unwrap();
    let old_read = Txn::batch(vec![
        Op::put("b", "1"),
        Op::Range(RangeRequest::key("a").at_revision(1)),
    ]);
    assert_eq!(
        m.txn(&old_read),
        Err(KvError::RevisionInTxn { revision: 1 })
    );
    assert!(
        m.get(b"b").is_none(),
        "a rejected transaction writes nothing"
    );
    assert_eq!(m.revision(), 2);
}

#[test]
fn a_store_restored_from_a_checkpoint_is_compacted_at_its_revision() {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    for v in ["1", "2", "3"] {
        m.put(b"k", v.as_bytes()).unwrap();
    }
    assert!(m.delete(b"k").unwrap());
    m.put(b"j", b"x").unwrap(); // revision 5
    m.set_applied_index(9);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.ckpt");
    keel_engine::checkpoint::write_checkpoint(&path, &m, 1, b"").unwrap();
    let restored = keel_engine::CheckpointReader::open(&path)
        .unwrap()
        .to_memtable(KvLimits::default())
        .unwrap();
    assert_eq!((restored.revision(), restored.compact_revision()), (5, 5));
    assert_eq!(restored.history_len(), 0);
    assert_eq!(
        at(&restored, "k", 4),
        Err(KvError::Compacted {
            requested: 4,
            compacted: 5
        })
    );
    assert_eq!(at(&restored, "j", 5).unwrap().unwrap().0, b"x");
    // History grows again from there.
    let mut restored = restored;
    restored.put(b"j", b"y").unwrap();
    assert_eq!(at(&restored, "j", 5).unwrap().unwrap().0, b"x");
    assert_eq!(at(&restored, "j", 6).unwrap().unwrap().0, b"y");
}
