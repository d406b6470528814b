//! Exactly-once writes: the results of each client's recent writes, so that a retried write
//! is answered rather than applied again.
//!
//! A client numbers its writes and sends with each the smallest sequence it still waits an
//! answer for (`first_unanswered`, its floor): every write below the floor was answered, so
//! its result can be forgotten and a late copy of it refused. The table keeps, per client,
//! the results of applied writes at or above the client's floor (a pipelining client may
//! have many; at most `results_per_client_max`, oldest forgotten first).
//!
//! Every replica applies the same entries in the same order, so every replica's table is
//! the same; eviction depends only on applied indexes, never on clocks. The table is
//! bounded: past `sessions_max` clients, the one that wrote least recently is forgotten, and
//! a retry from a forgotten client could apply twice — size the bound for the clients you
//! run (client ids are random, so a forgotten id is not reused). It is bounded in bytes too
//! (a result's bytes are its encoded size, below): a result over [`RESULT_BYTES_MAX`] is kept
//! as a note that the write was applied (a retry is answered with an error saying so, and is
//! never applied again), and past [`TABLE_BYTES_MAX`] the clients that wrote least recently
//! are forgotten (the last one left loses its oldest results). A client that loses results
//! it has not acknowledged (past [`RESULTS_PER_CLIENT_MAX`] or the bytes) has its floor
//! raised past them: a retry of one (or a write below it still in flight) is refused as
//! stale, never applied twice. Decoding a
//! table bounds it by count as before but never trims it by bytes: the bytes are enforced
//! when results are recorded, at the same log index on every replica.
//!
//! # Encoding, version 1
//!
//! The table travels in a group's checkpoint (its app state, see `keel_engine::checkpoint`),
//! so that a retried write is still answered once after a snapshot install or a restart.
//! All integers are little-endian.
//!
//! ```text
//! table:     u8 version (1), u32 client count N, then N sessions in ascending client id
//! session:   u64 client, u64 floor, u64 index (of the entry that last wrote it),
//!            u32 result count R, then R results in ascending sequence
//! result:    u64 sequence, u8 outcome: 0 applied (a txn response follows),
//!            1 refused (u32 length L, then L bytes of UTF-8: the state machine's error)
//! txn resp.: u8 succeeded (0 or 1), u64 revision, u32 op count K, then K op responses
//! op resp.:  u8 kind, then by kind
//!            1 put:    u64 prev create revision, u64 prev mod revision, u64 prev version,
//!                      u8 has prev kv (0 or 1), [key-value]
//!            2 delete: u64 deleted, u32 prev kv count P, P key-values
//!            3 range:  u64 count, u8 more (0 or 1), u64 revision, u32 kv count P,
//!                      P key-values
//!            4 txn:    a nested txn response (at most TXN_DEPTH_MAX levels in all)
//! key-value: u32 key length, key, u32 value length, value, u64 create revision,
//!            u64 mod revision, u64 version
//! ```
//!
//! Kind 4 came with nested transactions; a table without it is laid out as before, so
//! tables written before still decode.
//!
//! Decoding checks every count and length against the bytes left before it allocates, so
//! a damaged table is an error, never a panic or an allocation of a lying size.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_engine::txn::{OpResponse, RangeResponse, TXN_DEPTH_MAX, TxnResponse};
use keel_engine::{KeyMeta, KeyValue};

/// The version of the table's encoding.
const ENCODING_VERSION: u8 = 1;

/// Results kept per client above its floor.
pub const RESULTS_PER_CLIENT_MAX: usize = 4096;

/// Most bytes of one write's result the table keeps for a retry (64 KiB): a larger result
/// (a transaction reading or deleting many keys with their previous values) is kept as a
/// refusal saying the write was applied.
pub const RESULT_BYTES_MAX: usize = 64 << 10;

/// Most bytes of results one group's table keeps, every client's together (64 MiB).
pub const TABLE_BYTES_MAX: usize = 64 << 20;

/// What the table knows about a write it is asked about.
#[derive(Clone, Debug, PartialEq)]
pub enum Duplicate {
    /// Not seen: apply it.
    New,
    /// Applied already: answer with its result.
    Answered(Result<TxnResponse, String>),
    /// Below the client's floor: answered before, its result forgotten; refuse it.
    Stale {
        /// The client's floor.
        floor: u64,
    },
}

struct Session {
    /// Every write of the client below this was answered.
    floor: u64,
    results: BTreeMap<u64, Result<TxnResponse, String>>,
    /// Index of the entry that last wrote it (for eviction).
    index: u64,
    /// Encoded bytes of `results`.
    bytes: usize,
}

impl Session {
    /// Forgets the results below `floor` and, oldest first, those over the per-client count;
    /// returns the bytes freed.
    fn forget_below(&mut self, floor: u64) -> usize {
        let keep = self.results.split_off(&floor);
        let mut freed: usize = self.results.values().map(result_bytes).sum();
        self.results = keep;
        self.bytes -= freed;
        while self.results.len() > RESULTS_PER_CLIENT_MAX {
            freed += self.forget_oldest();
        }
        freed
    }

    /// Forgets the oldest result, raising the floor past it so that a retry of it is
    /// refused as stale rather than applied again; returns the bytes freed.
    fn forget_oldest(&mut self) -> usize {
        let Some((sequence, r)) = self.results.pop_first() else {
            return 0;
        };
        self.floor = self.floor.max(sequence + 1);
        let freed = result_bytes(&r);
        self.bytes -= freed;
        freed
    }
}

/// The per-group table of client sessions.
pub struct Sessions {
    sessions: HashMap<u64, Session>,
    /// (index, client) of every session, oldest write first.
    by_index: BTreeSet<(u64, u64)>,
    sessions_max: usize,
    /// Encoded bytes of every session's results.
    bytes: usize,
}

impl Sessions {
    /// An empty table that keeps at most `sessions_max` clients.
    pub fn new(sessions_max: usize) -> Sessions {
        Sessions {
            sessions: HashMap::new(),
            by_index: BTreeSet::new(),
            sessions_max: sessions_max.max(1),
            bytes: 0,
        }
    }

    /// Encoded bytes of the results remembered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether write `sequence` of `client` was applied already.
    pub fn check(&self, client: u64, sequence: u64) -> Duplicate {
        if client == 0 {
            return Duplicate::New;
        }
        match self.sessions.get(&client) {
            Some(s) if sequence < s.floor => Duplicate::Stale { floor: s.floor },
            Some(s) => match s.results.get(&sequence) {
                Some(result) => Duplicate::Answered(result.clone()),
                None => Duplicate::New,
            },
            None => Duplicate::New,
        }
    }

    /// Records the result of write `sequence` of `client` (whose floor was `floor` when it
    /// sent it), applied at `index`.
    pub fn record(
        &mut self,
        client: u64,
        sequence: u64,
        floor: u64,
        result: Result<TxnResponse, String>,
        index: u64,
    ) {
        if client == 0 {
            return;
        }
        let (result, size) = match result_bytes(&result) {
            size if size > RESULT_BYTES_MAX => {
                let note = Err(format!(
                    "write {sequence} of this client was applied; its answer ({size} bytes) is \
                     over the {RESULT_BYTES_MAX} bytes kept for a retry (result_bytes_max), so \
                     it cannot be repeated: read the keys to see the write's effect"
                ));
                let note_size = result_bytes(&note);
                (note, note_size)
            }
            size => (result, size),
        };
        let session = self.sessions.entry(client).or_insert_with(|| Session {
            floor: 0,
            results: BTreeMap::new(),
            index,
            bytes: 0,
        });
        self.by_index.remove(&(session.index, client));
        session.index = index;
        // The floor never exceeds the write's own sequence (it is still unanswered).
        session.floor = session.floor.max(floor.min(sequence));
        if let Some(old) = session.results.insert(sequence, result) {
            let old_size = result_bytes(&old);
            session.bytes -= old_size;
            self.bytes -= old_size;
        }
        session.bytes += size;
        self.bytes += size;
        self.bytes -= session.forget_below(session.floor);
        self.by_index.insert((index, client));
        self.enforce_bounds();
    }

    /// Forgets the clients that wrote least recently while the table is over its count or
    /// its bytes; when one client alone is over the bytes, its oldest results.
    fn enforce_bounds(&mut self) {
        self.enforce_count();
        while self.bytes > TABLE_BYTES_MAX && self.sessions.len() > 1 && self.forget_least_recent()
        {
        }
        if self.bytes <= TABLE_BYTES_MAX {
            return;
        }
        if let Some(last) = self.sessions.values_mut().next() {
            while self.bytes > TABLE_BYTES_MAX && last.results.len() > 1 {
                self.bytes -= last.forget_oldest();
            }
        }
    }
}

impl Sessions {
    /// Forgets the clients that wrote least recently while there are more than
    /// `sessions_max`.
    fn enforce_count(&mut self) {
        while self.sessions.len() > self.sessions_max && self.forget_least_recent() {}
    }

    /// Forgets the client that wrote least recently; false when there is none to forget.
    fn forget_least_recent(&mut self) -> bool {
        let Some((_, oldest)) = self.by_index.pop_first() else {
            return false;
        };
        if let Some(gone) = self.sessions.remove(&oldest) {
            self.bytes -= gone.bytes;
        }
        true
    }
}

/// A result's bytes in the table's encoding (sequence and outcome included).
fn result_bytes(result: &Result<TxnResponse, String>) -> usize {
    let mut size = Counter(8);
    put_result(&mut size, result);
    size.0
}

impl Sessions {
    /// The table's encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        let mut clients: Vec<(&u64, &Session)> = self.sessions.iter().collect();
        clients.sort_unstable_by_key(|(c, _)| **c);
        put_len(&mut out, clients.len());
        for (&client, s) in clients {
            put_u64(&mut out, client);
            put_u64(&mut out, s.floor);
            put_u64(&mut out, s.index);
            put_len(&mut out, s.results.len());
            for (&sequence, result) in &s.results {
                put_u64(&mut out, sequence);
                put_result(&mut out, result);
            }
        }
        out
    }

    /// Decodes a table encoded by [`Sessions::encode`], keeping at most `sessions_max`
    /// clients (the ones that wrote most recently). The error says what is malformed.
    pub fn decode(bytes: &[u8], sessions_max: usize) -> Result<Sessions, String> {
        let mut r = Decoder { rest: bytes };
        let version = r.u8()?;
        if version != ENCODING_VERSION {
            return Err(format!(
                "session table of unknown encoding version {version}"
            ));
        }
        let mut table = Sessions::new(sessions_max);
        let clients = r.count(SESSION_BYTES_MIN)?;
        for _ in 0..clients {
            let client = r.u64()?;
            let floor = r.u64()?;
            let index = r.u64()?;
            let n = r.count(RESULT_BYTES_MIN)?;
            let mut results = BTreeMap::new();
            for _ in 0..n {
                let sequence = r.u64()?;
                let result = match r.u8()? {
                    0 => Ok(decode_txn_response(&mut r)?),
                    1 => Err(String::from_utf8(r.bytes()?.to_vec())
                        .map_err(|_| "a refusal in the session table is not UTF-8".to_string())?),
                    other => return Err(format!("session result outcome {other} unknown")),
                };
                results.insert(sequence, result);
            }
            let bytes = results.values().map(result_bytes).sum();
            if client == 0 || table.sessions.contains_key(&client) {
                return Err(format!("session table holds client {client} twice or as 0"));
            }
            table.by_index.insert((index, client));
            table.bytes += bytes;
            table.sessions.insert(
                client,
                Session {
                    floor,
                    results,
                    index,
                    bytes,
                },
            );
        }
        if !r.rest.is_empty() {
            return Err(format!(
                "{} bytes left over after the session table",
                r.rest.len()
            ));
        }
        table.enforce_count();
        Ok(table)
    }
}

/// Smallest encoded session (no results) and result (a refusal with no text), in bytes:
/// what a count is checked against before anything is allocated for it.
const SESSION_BYTES_MIN: usize = 28;
const RESULT_BYTES_MIN: usize = 13;
/// Smallest encoded op response (a delete with no previous key-values) and key-value.
const OP_RESPONSE_BYTES_MIN: usize = 13;
const KEY_VALUE_BYTES_MIN: usize = 32;

/// Where the encoding goes: the bytes themselves, or a count of them (a result's size).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn push(&mut self, byte: u8) {
        self.put(&[byte]);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes an encoding would take.
struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

fn put_u64(out: &mut impl Sink, v: u64) {
    out.put(&v.to_le_bytes());
}

/// Counts and lengths are u32 on the wire; the table's own bounds keep them far below.
fn put_len(out: &mut impl Sink, n: usize) {
    out.put(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(out: &mut impl Sink, b: &[u8]) {
    put_len(out, b.len());
    out.put(b);
}

fn put_kv(out: &mut impl Sink, kv: &KeyValue) {
    put_bytes(out, &kv.key);
    put_bytes(out, &kv.value);
    put_meta(out, kv.meta);
}

fn put_meta(out: &mut impl Sink, m: KeyMeta) {
    put_u64(out, m.create_revision);
    put_u64(out, m.mod_revision);
    put_u64(out, m.version);
}

/// A result after its sequence: the outcome byte, then the response or the refusal.
fn put_result(out: &mut impl Sink, result: &Result<TxnResponse, String>) {
    match result {
        Ok(resp) => {
            out.push(0);
            encode_txn_response(out, resp);
        }
        Err(e) => {
            out.push(1);
            put_bytes(out, e.as_bytes());
        }
    }
}

fn encode_txn_response(out: &mut impl Sink, resp: &TxnResponse) {
    out.push(u8::from(resp.succeeded));
    put_u64(out, resp.revision);
    put_len(out, resp.responses.len());
    for op in &resp.responses {
        match op {
            OpResponse::Put { prev, prev_kv } => {
                out.push(1);
                put_meta(out, *prev);
                match prev_kv {
                    Some(kv) => {
                        out.push(1);
                        put_kv(out, kv);
                    }
                    None => out.push(0),
                }
            }
            OpResponse::DeleteRange { deleted, prev_kvs } => {
                out.push(2);
                put_u64(out, *deleted);
                put_len(out, prev_kvs.len());
                for kv in prev_kvs {
                    put_kv(out, kv);
                }
            }
            OpResponse::Range(range) => {
                out.push(3);
                put_u64(out, range.count);
                out.push(u8::from(range.more));
                put_u64(out, range.revision);
                put_len(out, range.kvs.len());
                for kv in &range.kvs {
                    put_kv(out, kv);
                }
            }
            OpResponse::Txn(nested) => {
                out.push(4);
                encode_txn_response(out, nested);
            }
        }
    }
}

fn decode_txn_response(r: &mut Decoder<'_>) -> Result<TxnResponse, String> {
    decode_txn_response_at(r, 1)
}

/// A txn response at nesting level `depth` (1: the outermost).
fn decode_txn_response_at(r: &mut Decoder<'_>, depth: usize) -> Result<TxnResponse, String> {
    let succeeded = r.bool()?;
    let revision = r.u64()?;
    let n = r.count(OP_RESPONSE_BYTES_MIN)?;
    let mut responses = Vec::with_capacity(n);
    for _ in 0..n {
        responses.push(match r.u8()? {
            1 => {
                let prev = r.meta()?;
                let prev_kv = if r.bool()? { Some(r.kv()?) } else { None };
                OpResponse::Put { prev, prev_kv }
            }
            2 => {
                let deleted = r.u64()?;
                let prev_kvs = r.kvs()?;
                OpResponse::DeleteRange { deleted, prev_kvs }
            }
            3 => {
                let count = r.u64()?;
                let more = r.bool()?;
                let revision = r.u64()?;
                let kvs = r.kvs()?;
                OpResponse::Range(RangeResponse {
                    kvs,
                    count,
                    more,
                    revision,
                })
            }
            4 if depth < TXN_DEPTH_MAX => OpResponse::Txn(decode_txn_response_at(r, depth + 1)?),
            4 => {
                return Err(format!(
                    "txn responses nested deeper than TXN_DEPTH_MAX = {TXN_DEPTH_MAX}"
                ));
            }
            other => return Err(format!("op response kind {other} unknown")),
        });
    }
    Ok(TxnResponse {
        succeeded,
        responses,
        revision,
    })
}

/// A bounds-checked little-endian reader over the table's bytes.
struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "session table truncated: {n} bytes needed, {} left",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("session table flag {other} is neither 0 nor 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items of at least `item_bytes` each, checked against the bytes left.
    fn count(&mut self, item_bytes: usize) -> Result<usize, String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "count overflows".to_string())?;
        if n.saturating_mul(item_bytes) > self.rest.len() {
            return Err(format!(
                "session table announces {n} items but holds {} bytes",
                self.rest.len()
            ));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.count(1)?;
        self.take(n)
    }

    fn meta(&mut self) -> Result<KeyMeta, String> {
        Ok(KeyMeta {
            create_revision: self.u64()?,
            mod_revision: self.u64()?,
            version: self.u64()?,
        })
    }

    fn kv(&mut self) -> Result<KeyValue, String> {
        let key = self.bytes()?.to_vec();
        let value = self.bytes()?.to_vec();
        let meta = self.meta()?;
        Ok(KeyValue { key, value, meta })
    }

    fn kvs(&mut self) -> Result<Vec<KeyValue>, String> {
        let n = self.count(KEY_VALUE_BYTES_MIN)?;
        let mut kvs = Vec::with_capacity(n);
        for _ in 0..n {
            kvs.push(self.kv()?);
        }
        Ok(kvs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str) -> KeyValue {
        KeyValue {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            meta: KeyMeta {
                create_revision: 2,
                mod_revision: 3,
                version: 2,
            },
        }
    }

    fn table() -> Sessions {
        let mut t = Sessions::new(10);
        let put = TxnResponse {
            succeeded: true,
            responses: vec![
                OpResponse::Put {
                    prev: KeyMeta::default(),
                    prev_kv: Some(kv("a")),
                },
                OpResponse::DeleteRange {
                    deleted: 1,
                    prev_kvs: vec![kv("b")],
                },
                OpResponse::Range(RangeResponse {
                    kvs: vec![kv("c")],
                    count: 1,
                    more: false,
                    revision: 3,
                }),
                OpResponse::Txn(TxnResponse {
                    succeeded: false,
                    responses: vec![OpResponse::DeleteRange {
                        deleted: 0,
                        prev_kvs: Vec::new(),
                    }],
                    revision: 3,
                }),
            ],
            revision: 3,
        };
        t.record(7, 1, 1, Ok(put), 10);
        t.record(7, 2, 1, Err("too large".into()), 11);
        t.record(
            9,
            5,
            5,
            Ok(TxnResponse {
                succeeded: false,
                responses: Vec::new(),
                revision: 4,
            }),
            12,
        );
        t
    }

    #[test]
    fn the_table_round_trips() {
        let t = table();
        let back = Sessions::decode(&t.encode(), 10).unwrap();
        assert_eq!(back.encode(), t.encode());
        for (client, seq) in [(7, 1), (7, 2), (9, 5), (9, 4), (8, 1)] {
            assert_eq!(back.check(client, seq), t.check(client, seq));
        }
        // Decoding into a smaller table keeps the clients that wrote last.
        let small = Sessions::decode(&t.encode(), 1).unwrap();
        assert_eq!(small.len(), 1);
        assert!(matches!(small.check(9, 5), Duplicate::Answered(_)));
    }

    /// A put answered with a previous value of `value_bytes` bytes.
    fn put_with_prev(value_bytes: usize) -> Result<TxnResponse, String> {
        let mut prev = kv("k");
        prev.value = vec![7; value_bytes];
        Ok(TxnResponse {
            succeeded: true,
            responses: vec![OpResponse::Put {
                prev: prev.meta,
                prev_kv: Some(prev),
            }],
            revision: 4,
        })
    }

    #[test]
    fn the_table_counts_its_bytes_as_encoded() {
        let t = table();
        let results: usize = t
            .sessions
            .values()
            .flat_map(|s| s.results.values())
            .map(result_bytes)
            .sum();
        // Per session: client, floor, index, result count; then the results.
        let encoded = 1 + 4 + t.len() * 28 + results;
        assert_eq!(t.encode().len(), encoded);
        assert_eq!(t.bytes(), results);
        assert_eq!(
            Sessions::decode(&t.encode(), 10).unwrap().bytes(),
            t.bytes()
        );
    }

    #[test]
    fn a_result_over_its_bound_is_kept_as_a_note_that_the_write_was_applied() {
        let mut t = Sessions::new(10);
        t.record(5, 1, 1, put_with_prev(RESULT_BYTES_MAX), 1);
        match t.check(5, 1) {
            Duplicate::Answered(Err(note)) => {
                assert!(note.contains("was applied"), "{note}");
                assert!(note.contains("result_bytes_max"), "{note}");
            }
            other => panic!("expected the applied note, got {other:?}"),
        }
        assert!(t.bytes() < 1024, "{} bytes kept", t.bytes());
        // One within the bound is kept whole.
        t.record(5, 2, 1, put_with_prev(1000), 2);
        assert_eq!(t.check(5, 2), Duplicate::Answered(put_with_prev(1000)));
    }

    #[test]
    fn past_its_bytes_the_table_forgets_the_clients_that_wrote_least_recently() {
        let mut t = Sessions::new(100_000);
        let each = RESULT_BYTES_MAX - 200;
        let clients = TABLE_BYTES_MAX / each + 10;
        for c in 1..=clients as u64 {
            t.record(c, 1, 1, put_with_prev(each), c);
            assert!(t.bytes() <= TABLE_BYTES_MAX, "{} bytes", t.bytes());
        }
        assert!(t.len() < clients, "{} clients kept", t.len());
        assert_eq!(
            t.check(1, 1),
            Duplicate::New,
            "the first client is forgotten"
        );
        assert!(matches!(
            t.check(clients as u64, 1),
            Duplicate::Answered(Ok(_))
        ));
        assert_eq!(
            Sessions::decode(&t.encode(), 100_000).unwrap().bytes(),
            t.bytes()
        );
    }

    #[test]
    fn one_client_over_the_table_bytes_loses_its_oldest_results() {
        let mut t = Sessions::new(10);
        let each = RESULT_BYTES_MAX - 200;
        let writes = (TABLE_BYTES_MAX / each + 10) as u64;
        // A pipelining client that never raises its floor.
        for seq in 1..=writes {
            t.record(3, seq, 1, put_with_prev(each), seq);
            assert!(t.bytes() <= TABLE_BYTES_MAX, "{} bytes", t.bytes());
        }
        assert_eq!(t.len(), 1);
        assert!(
            matches!(t.check(3, 1), Duplicate::Stale { floor } if floor > 1),
            "a retry of a forgotten result is refused, never applied again: {:?}",
            t.check(3, 1)
        );
        assert!(matches!(t.check(3, writes), Duplicate::Answered(Ok(_))));
    }

    #[test]
    fn past_its_count_a_client_forgets_its_oldest_results_and_refuses_their_retries() {
        let mut t = Sessions::new(10);
        let n = RESULTS_PER_CLIENT_MAX as u64 + 5;
        for seq in 1..=n {
            t.record(4, seq, 1, put_with_prev(1), seq);
        }
        assert_eq!(t.check(4, 5), Duplicate::Stale { floor: 6 });
        assert!(matches!(t.check(4, 6), Duplicate::Answered(Ok(_))));
        assert_eq!(
            Sessions::decode(&t.encode(), 10).unwrap().bytes(),
            t.bytes()
        );
    }

    #[test]
    fn every_truncation_and_a_lying_count_are_errors() {
        let bytes = table().encode();
        for n in 0..bytes.len() {
            assert!(Sessions::decode(&bytes[..n], 10).is_err(), "cut at {n}");
        }
        let mut lying = vec![ENCODING_VERSION];
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Sessions::decode(&lying, 10).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Sessions::decode(&extra, 10).is_err());
    }
}
