//! What an entry of a group's raft log carries: one client write, named for exactly-once.
//!
//! ```text
//! offset size field
//!      0    1 version     1
//!      1    8 client id   chosen by the client, random per client instance (0: anonymous)
//!      9    8 sequence    the client's number for this write, ascending per client
//!     17    8 floor       the client's smallest unanswered sequence when it sent this write
//!     25    . transaction keel_engine::txn_codec's encoding of the write
//! ```
//!
//! Integers are little-endian. An anonymous write (client id 0) is applied every time it
//! is committed; a named one at most once (see [`super::sessions`]).

use keel_engine::txn::Txn;
use keel_engine::txn_codec;

const COMMAND_VERSION: u8 = 1;
const HEADER_BYTES: usize = 25;

/// One client write as the log carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// The client that sent it (0: anonymous, no exactly-once).
    pub client_id: u64,
    /// The client's sequence number for it.
    pub sequence: u64,
    /// The client's smallest unanswered sequence when it sent the write: its results below
    /// may be forgotten (see [`Sessions`](super::Sessions)).
    pub floor: u64,
    /// The write.
    pub txn: Txn,
}

impl Command {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let txn = txn_codec::encode_txn(&self.txn);
        let mut out = Vec::with_capacity(HEADER_BYTES + txn.len());
        out.push(COMMAND_VERSION);
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&txn);
        out
    }

    /// Decodes an entry payload; an error names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        if bytes.len() < HEADER_BYTES {
            return Err(format!(
                "command of {} bytes is shorter than its {HEADER_BYTES}-byte header",
                bytes.len()
            ));
        }
        if bytes[0] != COMMAND_VERSION {
            return Err(format!(
                "command version {} unknown (this build reads {COMMAND_VERSION})",
                bytes[0]
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Command {
            client_id: u64_at(1),
            sequence: u64_at(9),
            floor: u64_at(17),
            txn: txn_codec::decode_txn(&bytes[HEADER_BYTES..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_engine::txn::Op;

    #[test]
    fn round_trip_and_bad_bytes_are_errors() {
        let command = Command {
            client_id: 7,
            sequence: 9,
            floor: 3,
            txn: Txn::batch(vec![Op::put("k", "v")]),
        };
        let bytes = command.encode();
        assert_eq!(Command::decode(&bytes).unwrap(), command);
        for cut in 0..bytes.len() {
            assert!(
                Command::decode(&bytes[..cut]).is_err(),
                "a command cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(Command::decode(&other).unwrap_err().contains("version 9"));
        for seed in 0..200u8 {
            let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed) ^ seed).collect();
            let _ = Command::decode(&garbage);
        }
    }
}
