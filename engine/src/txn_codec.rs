//! The encoding of a transaction as one record of the standalone store's log.
//!
//! # Encoding, versions 1 and 2
//!
//! Little-endian. `bytes` is a u32 length followed by that many bytes.
//!
//! ```text
//! u8 version (1 or 2), then the body.
//! body:
//!   u32 compare count, then each compare:
//!     bytes key, [version 2: end], u8 op (0 =, 1 !=, 2 >, 3 <),
//!     u8 target (0 value, 1 version, 2 create revision, 3 mod revision),
//!     then bytes value (target 0) or u64 (targets 1-3)
//!   u32 success op count, then each op; u32 failure op count, then each op. An op is:
//!     u8 0 put:          bytes key, bytes value, u8 flags (1 prev_kv)
//!     u8 1 delete range: bytes start, end, u8 flags (1 prev_kv)
//!     u8 2 range:        bytes start, end, u64 limit, u8 flags (1 keys only, 2 count only),
//!                        u64 min mod, u64 max mod, u64 min create, u64 max create revision,
//!                        u8 sort (0 none, else 1 + target: 0 key, 1 version, 2 create,
//!                        3 mod, 4 value), u8 order (0 ascend, 1 descend; 0 when no sort)
//!     u8 3 nested txn:   (version 2 only) the nested transaction's body
//! end: u8 0 single key, u8 1 exclusive end followed by bytes end, u8 2 unbounded
//! ```
//!
//! Version 2 added compares over a key range (the compare's `end`) and nested transactions
//! (op 3); everything else is version 1's layout. A transaction that uses neither is written
//! as version 1, byte for byte what builds before version 2 wrote and can read, so a mixed
//! cluster keeps applying every write the older build can express (and the older build stops,
//! naming the version, at one it cannot). Both versions decode. Nesting deeper than
//! [`TXN_DEPTH_MAX`] is refused when decoding, before it is followed.
//!
//! A range's `revision` has no field: reads inside a transaction are at the current revision,
//! and a transaction asking for another fails validation before it is logged.

use crate::bytes::Reader;
use crate::txn::{
    Compare, CompareOp, CompareTarget, Op, RangeEnd, RangeRequest, RangeSort, RevisionFilter,
    SortOrder, SortTarget, TXN_DEPTH_MAX, Txn,
};

/// The encoding of transactions without range compares or nested transactions.
const VERSION_1: u8 = 1;
/// Version 1 plus compare range ends and nested transactions.
const VERSION_2: u8 = 2;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths fit: the store's limits cap every key, value and transaction far below 4 GiB.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
}

fn put_end(out: &mut Vec<u8>, end: &RangeEnd) {
    match end {
        RangeEnd::Single => out.push(0),
        RangeEnd::Exclusive(e) => {
            out.push(1);
            put_bytes(out, e);
        }
        RangeEnd::Unbounded => out.push(2),
    }
}

fn put_ops(out: &mut Vec<u8>, ops: &[Op], version: u8) {
    let n = u32::try_from(ops.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for op in ops {
        match op {
            Op::Put {
                key,
                value,
                prev_kv,
            } => {
                out.push(0);
                put_bytes(out, key);
                put_bytes(out, value);
                out.push(u8::from(*prev_kv));
            }
            Op::DeleteRange {
                start,
                end,
                prev_kv,
            } => {
                out.push(1);
                put_bytes(out, start);
                put_end(out, end);
                out.push(u8::from(*prev_kv));
            }
            Op::Range(r) => {
                out.push(2);
                put_bytes(out, &r.start);
                put_end(out, &r.end);
                out.extend_from_slice(&(r.limit as u64).to_le_bytes());
                out.push(u8::from(r.keys_only) | (u8::from(r.count_only) << 1));
                let f = &r.filter;
                for v in [
                    f.min_mod_revision,
                    f.max_mod_revision,
                    f.min_create_revision,
                    f.max_create_revision,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                match r.sort {
                    None => out.extend_from_slice(&[0, 0]),
                    Some(s) => {
                        out.push(
                            1 + match s.target {
                                SortTarget::Key => 0,
                                SortTarget::Version => 1,
                                SortTarget::CreateRevision => 2,
                                SortTarget::ModRevision => 3,
                                SortTarget::Value => 4,
                            },
                        );
                        out.push(u8::from(s.order == SortOrder::Descend));
                    }
                }
            }
            Op::Txn(nested) => {
                out.push(3);
                put_body(out, nested, version);
            }
        }
    }
}

/// Whether `txn` needs version 2: a compare over a range, or a nested transaction.
fn needs_version_2(txn: &Txn) -> bool {
    txn.compares.iter().any(|c| c.end != RangeEnd::Single)
        || txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, Op::Txn(_)))
}

/// Encodes a transaction. The caller has validated it against the store's limits, so every
/// length fits its u32 field.
pub fn encode_txn(txn: &Txn) -> Vec<u8> {
    let version = if needs_version_2(txn) {
        VERSION_2
    } else {
        VERSION_1
    };
    let mut out = vec![version];
    put_body(&mut out, txn, version);
    out
}

/// Encodes the compares and both branches of `txn` in `version`'s layout.
fn put_body(out: &mut Vec<u8>, txn: &Txn, version: u8) {
    let n = u32::try_from(txn.compares.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for c in &txn.compares {
        put_bytes(out, &c.key);
        if version >= VERSION_2 {
            put_end(out, &c.end);
        }
        out.push(match c.op {
            CompareOp::Equal => 0,
            CompareOp::NotEqual => 1,
            CompareOp::Greater => 2,
            CompareOp::Less => 3,
        });
        match &c.target {
            CompareTarget::Value(v) => {
                out.push(0);
                put_bytes(out, v);
            }
            CompareTarget::Version(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            CompareTarget::CreateRevision(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_le_bytes());
            }
            CompareTarget::ModRevision(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    put_ops(out, &txn.success, version);
    put_ops(out, &txn.failure, version);
}

/// Domain reads of the transaction encoding, over the engine's byte [`Reader`].
trait TxnReader {
    fn flag(&mut self) -> Result<bool, String>;
    fn end(&mut self) -> Result<RangeEnd, String>;
    fn ops(&mut self, version: u8, depth: usize) -> Result<Vec<Op>, String>;
    fn body(&mut self, version: u8, depth: usize) -> Result<Txn, String>;
}

impl TxnReader for Reader<'_> {
    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            f => Err(format!("bad flags {f}")),
        }
    }
    fn end(&mut self) -> Result<RangeEnd, String> {
        match self.u8()? {
            0 => Ok(RangeEnd::Single),
            1 => Ok(RangeEnd::Exclusive(self.bytes()?)),
            2 => Ok(RangeEnd::Unbounded),
            t => Err(format!("bad range end tag {t}")),
        }
    }
    fn ops(&mut self, version: u8, depth: usize) -> Result<Vec<Op>, String> {
        let n = self.count(6)?;
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            ops.push(match self.u8()? {
                0 => Op::Put {
                    key: self.bytes()?,
                    value: self.bytes()?,
                    prev_kv: self.flag()?,
                },
                1 => Op::DeleteRange {
                    start: self.bytes()?,
                    end: self.end()?,
                    prev_kv: self.flag()?,
                },
                2 => {
                    let start = self.bytes()?;
                    let end = self.end()?;
                    let limit = usize::try_from(self.u64()?).map_err(|e| e.to_string())?;
                    let flags = self.u8()?;
                    if flags > 3 {
                        return Err(format!("bad range flags {flags}"));
                    }
                    let filter = RevisionFilter {
                        min_mod_revision: self.u64()?,
                        max_mod_revision: self.u64()?,
                        min_create_revision: self.u64()?,
                        max_create_revision: self.u64()?,
                    };
                    let target = self.u8()?;
                    let order = match self.u8()? {
                        0 => SortOrder::Ascend,
                        1 => SortOrder::Descend,
                        o => return Err(format!("bad sort order {o}")),
                    };
                    let sort = match target {
                        0 if order == SortOrder::Ascend => None,
                        0 => return Err("sort order without a sort target".into()),
                        1 => Some(SortTarget::Key),
                        2 => Some(SortTarget::Version),
                        3 => Some(SortTarget::CreateRevision),
                        4 => Some(SortTarget::ModRevision),
                        5 => Some(SortTarget::Value),
                        t => return Err(format!("bad sort target {t}")),
                    }
                    .map(|target| RangeSort { target, order });
                    Op::Range(RangeRequest {
                        start,
                        end,
                        limit,
                        keys_only: flags & 1 != 0,
                        count_only: flags & 2 != 0,
                        filter,
                        sort,
                        // Reads inside a transaction are at the current revision: a
                        // transaction whose read asks for another fails validation and is
                        // never logged, so the encoding has no field for it.
                        revision: 0,
                    })
                }
                3 if version >= VERSION_2 => {
                    if depth >= TXN_DEPTH_MAX {
                        return Err(format!(
                            "transactions nested deeper than TXN_DEPTH_MAX = {TXN_DEPTH_MAX}"
                        ));
                    }
                    Op::Txn(self.body(version, depth + 1)?)
                }
                t => return Err(format!("bad op tag {t} in a version {version} transaction")),
            });
        }
        Ok(ops)
    }

    /// A transaction's body at nesting level `depth` (1: the outermost).
    fn body(&mut self, version: u8, depth: usize) -> Result<Txn, String> {
        let n = self.count(10)?;
        let mut compares = Vec::with_capacity(n);
        for _ in 0..n {
            let key = self.bytes()?;
            let end = if version >= VERSION_2 {
                self.end()?
            } else {
                RangeEnd::Single
            };
            let op = match self.u8()? {
                0 => CompareOp::Equal,
                1 => CompareOp::NotEqual,
                2 => CompareOp::Greater,
                3 => CompareOp::Less,
                t => return Err(format!("bad compare op {t}")),
            };
            let target = match self.u8()? {
                0 => CompareTarget::Value(self.bytes()?),
                1 => CompareTarget::Version(self.u64()?),
                2 => CompareTarget::CreateRevision(self.u64()?),
                3 => CompareTarget::ModRevision(self.u64()?),
                t => return Err(format!("bad compare target {t}")),
            };
            compares.push(Compare {
                key,
                end,
                op,
                target,
            });
        }
        let success = self.ops(version, depth)?;
        let failure = self.ops(version, depth)?;
        Ok(Txn {
            compares,
            success,
            failure,
        })
    }
}

/// Decodes a transaction of either version; the error says what is malformed.
pub fn decode_txn(bytes: &[u8]) -> Result<Txn, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != VERSION_1 && version != VERSION_2 {
        return Err(format!(
            "unknown transaction encoding version {version} (this build reads 1 and 2)"
        ));
    }
    let txn = r.body(version, 1)?;
    r.finish()?;
    Ok(txn)
}
