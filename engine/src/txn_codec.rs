//! The encoding of a transaction as one record of the standalone store's log.
//!
//! # Encoding, version 1
//!
//! Little-endian. `bytes` is a u32 length followed by that many bytes.
//!
//! ```text
//! u8 version = 1
//! u32 compare count, then each compare:
//!     bytes key, u8 op (0 =, 1 !=, 2 >, 3 <),
//!     u8 target (0 value, 1 version, 2 create revision, 3 mod revision),
//!     then bytes value (target 0) or u64 (targets 1-3)
//! u32 success op count, then each op; u32 failure op count, then each op. An op is:
//!     u8 0 put:          bytes key, bytes value, u8 flags (1 prev_kv)
//!     u8 1 delete range: bytes start, end, u8 flags (1 prev_kv)
//!     u8 2 range:        bytes start, end, u64 limit, u8 flags (1 keys only, 2 count only),
//!                        u64 min mod, u64 max mod, u64 min create, u64 max create revision,
//!                        u8 sort (0 none, else 1 + target: 0 key, 1 version, 2 create,
//!                        3 mod, 4 value), u8 order (0 ascend, 1 descend; 0 when no sort)
//! end: u8 0 single key, u8 1 exclusive end followed by bytes end, u8 2 unbounded
//! ```
//!
//! A range's `revision` has no field: reads inside a transaction are at the current revision,
//! and a transaction asking for another fails validation before it is logged.

use crate::bytes::Reader;
use crate::txn::{
    Compare, CompareOp, CompareTarget, Op, RangeEnd, RangeRequest, RangeSort, RevisionFilter,
    SortOrder, SortTarget, Txn,
};

const VERSION: u8 = 1;

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

fn put_ops(out: &mut Vec<u8>, ops: &[Op]) {
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
        }
    }
}

/// Encodes a transaction. The caller has validated it against the store's limits, so every
/// length fits its u32 field.
pub fn encode_txn(txn: &Txn) -> Vec<u8> {
    let mut out = vec![VERSION];
    let n = u32::try_from(txn.compares.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for c in &txn.compares {
        put_bytes(&mut out, &c.key);
        out.push(match c.op {
            CompareOp::Equal => 0,
            CompareOp::NotEqual => 1,
            CompareOp::Greater => 2,
            CompareOp::Less => 3,
        });
        match &c.target {
            CompareTarget::Value(v) => {
                out.push(0);
                put_bytes(&mut out, v);
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
    put_ops(&mut out, &txn.success);
    put_ops(&mut out, &txn.failure);
    out
}

/// Domain reads of the transaction encoding, over the engine's byte [`Reader`].
trait TxnReader {
    fn flag(&mut self) -> Result<bool, String>;
    fn end(&mut self) -> Result<RangeEnd, String>;
    fn ops(&mut self) -> Result<Vec<Op>, String>;
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
    fn ops(&mut self) -> Result<Vec<Op>, String> {
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
                t => return Err(format!("bad op tag {t}")),
            });
        }
        Ok(ops)
    }
}

/// Decodes a transaction; the error says what is malformed.
pub fn decode_txn(bytes: &[u8]) -> Result<Txn, String> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(format!("unknown transaction encoding version {version}"));
    }
    let n = r.count(10)?;
    let mut compares = Vec::with_capacity(n);
    for _ in 0..n {
        let key = r.bytes()?;
        let op = match r.u8()? {
            0 => CompareOp::Equal,
            1 => CompareOp::NotEqual,
            2 => CompareOp::Greater,
            3 => CompareOp::Less,
            t => return Err(format!("bad compare op {t}")),
        };
        let target = match r.u8()? {
            0 => CompareTarget::Value(r.bytes()?),
            1 => CompareTarget::Version(r.u64()?),
            2 => CompareTarget::CreateRevision(r.u64()?),
            3 => CompareTarget::ModRevision(r.u64()?),
            t => return Err(format!("bad compare target {t}")),
        };
        compares.push(Compare { key, op, target });
    }
    let success = r.ops()?;
    let failure = r.ops()?;
    r.finish()?;
    Ok(Txn {
        compares,
        success,
        failure,
    })
}
