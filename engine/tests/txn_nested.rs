//! Nested transactions, compares over key ranges and etcd's duplicate-key rule, through the
//! memtable and the log encoding.

use keel_engine::txn_codec::{decode_txn, encode_txn};
use keel_engine::{
    Compare, CompareOp, CompareTarget, KeyMeta, KvError, KvLimits, Memtable, Op, OpResponse,
    RangeEnd, RangeRequest, TXN_DEPTH_MAX, Txn, TxnResponse,
};

fn store(pairs: &[(&str, &str)]) -> Memtable {
    let mut m = Memtable::new(KvLimits::default()).unwrap();
    for (k, v) in pairs {
        m.put(k.as_bytes(), v.as_bytes()).unwrap();
    }
    m
}

fn cmp(key: &str, end: RangeEnd, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: key.into(),
        end,
        op,
        target,
    }
}

fn value_is(key: &str, value: &str) -> Compare {
    cmp(
        key,
        RangeEnd::Single,
        CompareOp::Equal,
        CompareTarget::Value(value.into()),
    )
}

fn nested(compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Op {
    Op::Txn(Txn {
        compares,
        success,
        failure,
    })
}

fn value(m: &Memtable, key: &str) -> Option<String> {
    m.get(key.as_bytes())
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

fn nested_response(resp: &OpResponse) -> &TxnResponse {
    match resp {
        OpResponse::Txn(t) => t,
        other => panic!("expected a nested txn response, got {other:?}"),
    }
}

fn read_values(resp: &OpResponse) -> Vec<String> {
    match resp {
        OpResponse::Range(r) => r
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
            .collect(),
        other => panic!("expected a read, got {other:?}"),
    }
}

#[test]
fn nested_transactions_run_the_branch_their_compares_choose() {
    let mut m = store(&[("a", "1"), ("b", "1")]);
    let txn = Txn {
        compares: vec![value_is("a", "1")],
        success: vec![
            nested(
                vec![value_is("b", "2")],
                vec![Op::put("x", "then")],
                vec![Op::put("x", "else"), Op::Range(RangeRequest::key("x"))],
            ),
            nested(vec![value_is("b", "1")], vec![Op::put("y", "then")], vec![]),
        ],
        failure: vec![Op::put("z", "outer failure")],
    };
    let resp = m.txn(&txn).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.responses.len(), 2);
    let first = nested_response(&resp.responses[0]);
    assert!(!first.succeeded);
    assert_eq!(first.responses.len(), 2);
    assert_eq!(read_values(&first.responses[1]), ["else"]);
    let second = nested_response(&resp.responses[1]);
    assert!(second.succeeded);
    assert!(matches!(
        second.responses[..],
        [OpResponse::Put {
            prev: KeyMeta::ABSENT,
            ..
        }]
    ));
    assert_eq!(value(&m, "x").as_deref(), Some("else"));
    assert_eq!(value(&m, "y").as_deref(), Some("then"));
    assert_eq!(value(&m, "z"), None);

    // The outer failure branch holds nested transactions too.
    let resp = m
        .txn(&Txn {
            compares: vec![value_is("a", "nope")],
            success: vec![Op::put("z", "outer success")],
            failure: vec![nested(vec![], vec![Op::put("z", "nested")], vec![])],
        })
        .unwrap();
    assert!(!resp.succeeded);
    assert!(nested_response(&resp.responses[0]).succeeded);
    assert_eq!(value(&m, "z").as_deref(), Some("nested"));
}

#[test]
fn nested_compares_are_decided_before_the_outer_transaction_writes() {
    let mut m = store(&[("a", "1")]);
    // The outer put changes "a" first, but the nested compare sees the value before the
    // transaction (etcd's compareToPath); its read, an operation, sees the put.
    let resp = m
        .txn(&Txn::batch(vec![
            Op::put("a", "2"),
            nested(
                vec![value_is("a", "1")],
                vec![Op::put("seen", "before"), Op::Range(RangeRequest::key("a"))],
                vec![Op::put("seen", "after")],
            ),
        ]))
        .unwrap();
    let inner = nested_response(&resp.responses[1]);
    assert!(inner.succeeded);
    assert_eq!(read_values(&inner.responses[1]), ["2"]);
    assert_eq!(value(&m, "seen").as_deref(), Some("before"));

    // A deeper nested transaction too, and one in a branch that does not run is not
    // decided at all (its compares cannot matter).
    let resp = m
        .txn(&Txn::batch(vec![
            Op::delete("a"),
            nested(
                vec![],
                vec![nested(
                    vec![cmp(
                        "a",
                        RangeEnd::Single,
                        CompareOp::Greater,
                        CompareTarget::Version(0),
                    )],
                    vec![Op::put("deep", "a existed")],
                    vec![Op::put("deep", "a missing")],
                )],
                vec![],
            ),
        ]))
        .unwrap();
    assert!(nested_response(&nested_response(&resp.responses[1]).responses[0]).succeeded);
    assert_eq!(value(&m, "deep").as_deref(), Some("a existed"));
    assert_eq!(value(&m, "a"), None);
}

#[test]
fn a_transaction_with_nested_writes_takes_one_revision_and_keeps_its_history() {
    let mut m = store(&[("a", "1"), ("b", "1")]);
    assert_eq!(m.revision(), 2);
    let resp = m
        .txn(&Txn::batch(vec![
            Op::put("a", "2"),
            nested(
                vec![],
                vec![
                    Op::Range(RangeRequest::key("a")),
                    Op::put("b", "2"),
                    nested(vec![], vec![Op::delete("a")], vec![]),
                    Op::put("c", "new"),
                ],
                vec![],
            ),
        ]))
        .unwrap();
    assert_eq!(resp.revision, 3);
    assert_eq!(m.revision(), 3);
    let inner = nested_response(&resp.responses[1]);
    assert_eq!(inner.revision, 3);
    assert_eq!(nested_response(&inner.responses[2]).revision, 3);
    // A read after a write of the same transaction reports the transaction's revision.
    match &inner.responses[0] {
        OpResponse::Range(r) => assert_eq!(r.revision, 3),
        other => panic!("unexpected {other:?}"),
    }
    let b = m.get(b"b").unwrap().meta;
    let c = m.get(b"c").unwrap().meta;
    assert_eq!((b.mod_revision, b.version), (3, 2));
    assert_eq!((c.create_revision, c.mod_revision, c.version), (3, 3, 1));
    assert_eq!(value(&m, "a"), None);

    // The history holds the state before the transaction, whole.
    let at = |key: &str, rev| {
        m.range(&RangeRequest::key(key).at_revision(rev))
            .unwrap()
            .kvs
            .first()
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
    };
    assert_eq!(at("a", 2).as_deref(), Some("1"));
    assert_eq!(at("b", 2).as_deref(), Some("1"));
    assert_eq!(at("c", 2), None);
    assert_eq!(at("a", 3), None);
    assert_eq!(at("c", 3).as_deref(), Some("new"));

    // A nested transaction that writes nothing leaves the revision alone.
    let resp = m
        .txn(&Txn::batch(vec![nested(
            vec![],
            vec![Op::delete("missing")],
            vec![],
        )]))
        .unwrap();
    assert_eq!((resp.revision, m.revision()), (3, 3));
}

#[test]
fn a_range_compare_holds_only_for_every_key_of_its_range() {
    let mut m = store(&[("k/a", "1"), ("k/b", "1"), ("k/c", "2"), ("z", "9")]);
    let prefix = RangeEnd::Exclusive(b"k0".to_vec());
    let holds = |m: &mut Memtable, c: Compare| {
        m.txn(&Txn {
            compares: vec![c],
            success: vec![],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    };
    let is = |v: &str| CompareTarget::Value(v.into());
    let version = CompareTarget::Version;
    let first_two = RangeEnd::Exclusive(b"k/c".to_vec());
    // A range holding no key compares a missing key: a value compare fails, whatever the
    // relation; the others see 0. An inverted range is empty too.
    let empty = RangeEnd::Exclusive(b"m".to_vec());
    let inverted = RangeEnd::Exclusive(b"a".to_vec());
    let (eq, ne, lt, gt) = (
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Less,
        CompareOp::Greater,
    );
    let cases = [
        (cmp("k/", first_two, eq, is("1")), true),
        (cmp("k/", prefix.clone(), eq, is("1")), false),
        (cmp("k/", prefix.clone(), lt, is("3")), true),
        (cmp("k/", prefix.clone(), eq, version(1)), true),
        (
            cmp("k/", prefix.clone(), gt, CompareTarget::ModRevision(1)),
            false,
        ),
        // etcd's "\0" form: every key from the start on, "z" included.
        (cmp("k/", RangeEnd::Unbounded, lt, is("3")), false),
        (cmp("k/", RangeEnd::Unbounded, lt, is("a")), true),
        (cmp("l", empty.clone(), ne, is("x")), false),
        (cmp("l", empty.clone(), eq, version(0)), true),
        (cmp("l", empty, eq, CompareTarget::CreateRevision(0)), true),
        (cmp("k/", inverted.clone(), eq, is("1")), false),
        (cmp("k/", inverted, eq, version(0)), true),
    ];
    for (c, expected) in cases {
        assert_eq!(holds(&mut m, c.clone()), expected, "{c:?}");
    }

    // Compares over a range inside a nested transaction, decided before the outer writes.
    let resp = m
        .txn(&Txn::batch(vec![
            Op::put("k/c", "1"),
            nested(
                vec![cmp("k/", prefix, CompareOp::Equal, is("1"))],
                vec![Op::put("all", "ones")],
                vec![Op::put("all", "mixed")],
            ),
        ]))
        .unwrap();
    assert!(!nested_response(&resp.responses[1]).succeeded);
    assert_eq!(value(&m, "all").as_deref(), Some("mixed"));
}

#[test]
fn duplicate_keys_are_refused_as_etcd_refuses_them() {
    let dup = |key: &str| Err(KvError::DuplicateKey { key: key.into() });
    let check = |success: Vec<Op>, failure: Vec<Op>| {
        Txn {
            compares: vec![],
            success,
            failure,
        }
        .check_duplicate_keys()
    };
    // One level: two puts of a key, or a put inside a delete of the same branch, whatever
    // their order; overlapping deletes are fine, and so is a key in both outer branches.
    assert_eq!(
        check(vec![Op::put("a", "1"), Op::put("a", "2")], vec![]),
        dup("a")
    );
    assert_eq!(
        check(vec![Op::delete("a"), Op::put("a", "1")], vec![]),
        dup("a")
    );
    let range = |s: &str, e: &str| Op::delete_range(s, RangeEnd::Exclusive(e.into()));
    assert_eq!(
        check(vec![Op::put("b", "1"), range("a", "c")], vec![]),
        dup("b")
    );
    assert_eq!(
        check(vec![Op::put("c", "1"), range("a", "c")], vec![]),
        Ok(())
    );
    assert_eq!(
        check(
            vec![range("a", "c"), range("b", "d"), Op::delete("b")],
            vec![]
        ),
        Ok(())
    );
    assert_eq!(
        check(vec![Op::put("a", "1")], vec![Op::put("a", "2")]),
        Ok(())
    );
    // An unbounded delete covers every key from its start (etcd 3.5's check misses this).
    assert_eq!(
        check(
            vec![
                Op::delete_range("b", RangeEnd::Unbounded),
                Op::put("zz", "")
            ],
            vec![]
        ),
        dup("zz")
    );
    assert_eq!(
        check(
            vec![Op::delete_range("b", RangeEnd::Unbounded), Op::put("a", "")],
            vec![]
        ),
        Ok(())
    );
    // Reads never conflict.
    assert_eq!(
        check(
            vec![Op::put("a", "1"), Op::Range(RangeRequest::key("a"))],
            vec![]
        ),
        Ok(())
    );

    // Nested: both branches of one nested transaction may put a key (one of them runs)...
    let either = nested(vec![], vec![Op::put("k", "1")], vec![Op::put("k", "2")]);
    assert_eq!(check(vec![either.clone()], vec![]), Ok(()));
    // ...but not together with the outer branch, nor two nested transactions.
    assert_eq!(
        check(vec![either.clone(), Op::put("k", "3")], vec![]),
        dup("k")
    );
    assert_eq!(
        check(vec![either.clone(), either.clone()], vec![]),
        dup("k")
    );
    let else_only = nested(vec![], vec![], vec![Op::put("k", "1")]);
    let then_only = nested(vec![], vec![Op::put("k", "1")], vec![]);
    assert_eq!(
        check(vec![else_only.clone(), then_only.clone()], vec![]),
        dup("k")
    );
    assert_eq!(check(vec![else_only.clone(), else_only], vec![]), dup("k"));
    // A nested put inside an outer delete, or an outer put inside a nested delete.
    assert_eq!(
        check(vec![Op::delete("k"), then_only.clone()], vec![]),
        dup("k")
    );
    let deletes = nested(vec![], vec![range("a", "z")], vec![]);
    assert_eq!(
        check(vec![deletes.clone(), Op::put("k", "1")], vec![]),
        dup("k")
    );
    // As etcd's checkIntervals: a nested put and the delete of a later nested transaction
    // are not compared (the delete is merged after the put was checked); in one nested
    // transaction a put in one branch and a delete in the other do not conflict either.
    assert_eq!(check(vec![then_only.clone(), deletes], vec![]), Ok(()));
    let put_or_delete = nested(vec![], vec![Op::put("k", "1")], vec![Op::delete("k")]);
    assert_eq!(check(vec![put_or_delete], vec![]), Ok(()));
    // Deeper levels count as well.
    let deep = nested(
        vec![],
        vec![nested(vec![], vec![Op::put("k", "9")], vec![])],
        vec![],
    );
    assert_eq!(check(vec![deep, Op::put("k", "1")], vec![]), dup("k"));

    // The store itself applies a key written twice in order (logs written before the check
    // replay unchanged).
    let mut m = store(&[]);
    m.txn(&Txn::batch(vec![Op::put("a", "1"), Op::put("a", "2")]))
        .unwrap();
    assert_eq!(value(&m, "a").as_deref(), Some("2"));
}

#[test]
fn nesting_and_nested_operations_are_bounded() {
    let mut m = Memtable::new(KvLimits {
        txn_ops_max: 4,
        ..KvLimits::default()
    })
    .unwrap();
    // Each nested transaction counts as one operation plus its own.
    let four = Txn::batch(vec![nested(
        vec![],
        vec![Op::put("a", "1")],
        vec![Op::put("b", "1"), Op::put("c", "1")],
    )]);
    assert!(m.txn(&four).is_ok());
    let five = Txn::batch(vec![
        Op::put("d", "1"),
        nested(
            vec![],
            vec![Op::put("a", "1")],
            vec![Op::put("b", "1"), Op::put("c", "1")],
        ),
    ]);
    assert_eq!(m.txn(&five), Err(KvError::TooManyOps { ops: 5, max: 4 }));

    let mut m = store(&[]);
    let deep = |levels: usize| {
        let mut t = Txn::batch(vec![Op::put("leaf", "1")]);
        for _ in 1..levels {
            t = Txn::batch(vec![Op::Txn(t)]);
        }
        t
    };
    let deepest = deep(TXN_DEPTH_MAX);
    assert!(m.txn(&deepest).is_ok());
    assert_eq!(decode_txn(&encode_txn(&deepest)).unwrap(), deepest);
    let too_deep = deep(TXN_DEPTH_MAX + 1);
    let before = m.revision();
    assert_eq!(
        m.txn(&too_deep),
        Err(KvError::TxnTooDeep {
            depth: TXN_DEPTH_MAX + 1,
            max: TXN_DEPTH_MAX
        })
    );
    assert_eq!(m.revision(), before);
    let err = decode_txn(&encode_txn(&too_deep)).unwrap_err();
    assert!(err.contains("TXN_DEPTH_MAX"), "{err}");

    // Nested keys are validated like the outer ones.
    assert_eq!(
        m.txn(&Txn::batch(vec![nested(
            vec![],
            vec![],
            vec![Op::put("", "1")]
        )])),
        Err(KvError::EmptyKey)
    );
    let oversize = RangeEnd::Exclusive(vec![b'k'; KvLimits::default().key_bytes_max + 1]);
    assert!(matches!(
        m.txn(&Txn {
            compares: vec![cmp(
                "k",
                oversize,
                CompareOp::Equal,
                CompareTarget::Version(0)
            )],
            success: vec![],
            failure: vec![],
        }),
        Err(KvError::KeyTooLarge { .. })
    ));
}

#[test]
fn transactions_logged_before_range_compares_and_nesting_still_decode() {
    // Version 1 bytes as builds before version 2 wrote them: compare "a" version == 1,
    // success put "a"="b" with prev_kv, failure a read of ["a", "c") limit 2.
    let mut old = vec![1u8];
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&1u32.to_le_bytes());
    old.push(b'a');
    old.extend_from_slice(&[0, 1]);
    old.extend_from_slice(&1u64.to_le_bytes());
    old.extend_from_slice(&1u32.to_le_bytes());
    old.push(0);
    for b in [b"a", b"b"] {
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(b);
    }
    old.push(1);
    old.extend_from_slice(&1u32.to_le_bytes());
    old.push(2);
    old.extend_from_slice(&1u32.to_le_bytes());
    old.push(b'a');
    old.push(1);
    old.extend_from_slice(&1u32.to_le_bytes());
    old.push(b'c');
    old.extend_from_slice(&2u64.to_le_bytes());
    old.push(0);
    old.extend_from_slice(&[0; 32]);
    old.extend_from_slice(&[0, 0]);
    let txn = Txn {
        compares: vec![cmp(
            "a",
            RangeEnd::Single,
            CompareOp::Equal,
            CompareTarget::Version(1),
        )],
        success: vec![Op::put("a", "b").with_prev_kv()],
        failure: vec![Op::Range(RangeRequest::between("a", "c").with_limit(2))],
    };
    assert_eq!(decode_txn(&old).unwrap(), txn);
    // Whatever version 1 can express is still written as version 1, byte for byte.
    assert_eq!(encode_txn(&txn), old);

    // A range compare or a nested transaction needs version 2 and round-trips.
    let mut ranged = txn.clone();
    ranged.compares[0].end = RangeEnd::Unbounded;
    assert_eq!(encode_txn(&ranged)[0], 2);
    assert_eq!(decode_txn(&encode_txn(&ranged)).unwrap(), ranged);
    let with_nested = Txn::batch(vec![Op::Txn(txn.clone())]);
    let bytes = encode_txn(&with_nested);
    assert_eq!(bytes[0], 2);
    assert_eq!(decode_txn(&bytes).unwrap(), with_nested);
    // A nested transaction inside a version 1 encoding is malformed.
    let mut mislabeled = bytes.clone();
    mislabeled[0] = 1;
    let err = decode_txn(&mislabeled).unwrap_err();
    assert!(err.contains("op tag 3"), "{err}");
    let mut future = bytes;
    future[0] = 3;
    assert!(decode_txn(&future).unwrap_err().contains("version 3"));
}
