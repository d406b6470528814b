//! Model-based property test: the memtable against a plain `BTreeMap` reference that keeps
//! etcd revision rules written out the naive way.

use std::collections::BTreeMap;

use keel_engine::{
    Compare, CompareOp, CompareTarget, KeyMeta, KvError, KvLimits, Memtable, Op, OpResponse,
    RangeEnd, RangeRequest, RangeSort, RevisionFilter, SortOrder, SortTarget, Txn,
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

    fn holds(&self, c: &Compare) -> bool {
        let m = self.meta(&c.key);
        let ord = match &c.target {
            CompareTarget::Value(v) => match self.map.get(&c.key) {
                Some((cur, ..)) => cur.cmp(v),
                None => return false,
            },
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
        let ok = t.compares.iter().all(|c| self.holds(c));
        let rev = self.revision + 1;
        let mut changed = false;
        for op in if ok { &t.success } else { &t.failure } {
            match op {
                Op::Put { key, value, .. } => {
                    changed = true;
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
                    self.map.retain(|k, _| !Self::in_range(k, start, end));
                    changed |= self.map.len() != before;
                }
                Op::Range(_) => {}
            }
        }
        if changed {
            self.revision = rev;
        }
        ok
    }
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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Op::put(k, v)),
        2 => (key(), end(), any::<bool>()).prop_map(|(start, end, prev_kv)| Op::DeleteRange { start, end, prev_kv }),
        1 => (key(), end(), filter(), sort()).prop_map(|(start, end, filter, sort)| Op::Range(RangeRequest {
            start, end, limit: 0, keys_only: false, count_only: false, filter, sort })),
    ]
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
    (key(), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
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
                start, end, limit, keys_only, count_only, filter, sort })),
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
                    let all: Vec<_> = model.map.iter()
                        .filter(|(k, _)| Model::in_range(k, &r.start, &r.end))
                        .collect();
                    prop_assert_eq!(resp.count, all.len() as u64);
                    // The reference: filter, stable sort (ties stay in key order), limit.
                    let mut want: Vec<_> = all.iter()
                        .filter(|(k, _)| r.filter.admits(&model.meta(k)))
                        .map(|(k, (v, ..))| (k.to_vec(), v.clone(), model.meta(k)))
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
                            if sort.order == SortOrder::Descend { o.reverse() } else { o }
                        });
                    }
                    if r.count_only {
                        want.clear();
                    }
                    let more = r.limit != 0 && want.len() > r.limit;
                    if more {
                        want.truncate(r.limit);
                    }
                    prop_assert_eq!(resp.more, more);
                    let got: Vec<_> = resp.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.meta)).collect();
                    let want: Vec<_> = want.into_iter()
                        .map(|(k, v, meta)| (k, if r.keys_only { Vec::new() } else { v }, meta))
                        .collect();
                    prop_assert_eq!(got, want);
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
