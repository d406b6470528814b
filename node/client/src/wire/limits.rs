//! The sizes the protocol accepts, checked on both sides.

use super::{FRAME_BYTES_MAX, REQUEST_BODY_BYTES_MIN, RESPONSE_BODY_BYTES_MIN};

/// The sizes the protocol accepts. Both sides check them: the client before sending, the
/// server before allocating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest request frame body, in bytes. Default 1.5 MiB, etcd's `--max-request-bytes`.
    pub request_bytes_max: u32,
    /// Largest response frame body, in bytes. Default 64 MiB; a server answers a read that
    /// would not fit with [`ErrorStatus::TooLarge`](super::ErrorStatus::TooLarge).
    pub response_bytes_max: u32,
    /// Largest key, in bytes. Default 64 KiB.
    pub key_bytes_max: u32,
    /// Largest value, in bytes. Default 1.5 MiB less 1 KiB, so that a put of a value this
    /// large and a small key fits in one request.
    pub value_bytes_max: u32,
    /// Most compares, and most operations in each branch, of a transaction. Default 128,
    /// etcd's `--max-txn-ops`.
    pub ops_per_txn_max: u32,
    /// Most requests in flight on one connection: the client waits for a slot before
    /// sending more, the server refuses more with [`ErrorStatus::Busy`](super::ErrorStatus::Busy). Default 1024.
    pub in_flight_per_connection_max: u32,
    /// Longest string (error message, member address), in bytes. Default 4 KiB.
    pub string_bytes_max: u32,
    /// Most members in a status response. Default 1024.
    pub members_max: u32,
    /// Most raft groups. Default 65536.
    pub groups_max: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            ops_per_txn_max: 128,
            in_flight_per_connection_max: 1024,
            string_bytes_max: 4096,
            members_max: 1024,
            groups_max: 65536,
        }
    }
}

const REQUEST_BYTES_MAX_DEFAULT: u32 = 1536 * 1024;
const RESPONSE_BYTES_MAX_DEFAULT: u32 = 64 * 1024 * 1024;
const KEY_BYTES_MAX_DEFAULT: u32 = 64 * 1024;
const VALUE_BYTES_MAX_DEFAULT: u32 = 1535 * 1024;

// The defaults' relations that `validate` checks.
const _: () = assert!(KEY_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(VALUE_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);
const _: () = assert!(REQUEST_BYTES_MAX_DEFAULT <= RESPONSE_BYTES_MAX_DEFAULT);
const _: () = assert!(RESPONSE_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX);

impl ClientLimits {
    /// Checks every limit is non-zero and the limits fit together: a key and a value each fit
    /// in a request, requests and responses fit under [`FRAME_BYTES_MAX`], and a status
    /// response fits in a response.
    pub fn validate(&self) -> Result<(), String> {
        let named = [
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
            ("key_bytes_max", self.key_bytes_max),
            ("value_bytes_max", self.value_bytes_max),
            ("ops_per_txn_max", self.ops_per_txn_max),
            (
                "in_flight_per_connection_max",
                self.in_flight_per_connection_max,
            ),
            ("string_bytes_max", self.string_bytes_max),
            ("members_max", self.members_max),
            ("groups_max", self.groups_max),
        ];
        if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be greater than 0"));
        }
        for (name, v) in [
            ("request_bytes_max", self.request_bytes_max),
            ("response_bytes_max", self.response_bytes_max),
        ] {
            if v > FRAME_BYTES_MAX {
                return Err(format!(
                    "{name} {v} exceeds the frame limit {FRAME_BYTES_MAX}"
                ));
            }
            if (v as usize) < REQUEST_BODY_BYTES_MIN.max(RESPONSE_BODY_BYTES_MIN) {
                return Err(format!("{name} {v} is too small for any frame"));
            }
        }
        for (name, v) in [
            ("key_bytes_max", self.key_bytes_max),
            ("value_bytes_max", self.value_bytes_max),
        ] {
            if v >= self.request_bytes_max {
                return Err(format!(
                    "{name} {v} must be below request_bytes_max {}",
                    self.request_bytes_max
                ));
            }
        }
        if self.response_bytes_max < self.request_bytes_max {
            return Err(format!(
                "response_bytes_max {} must be at least request_bytes_max {}, so that a \
                 read can return what a write stored",
                self.response_bytes_max, self.request_bytes_max
            ));
        }
        Ok(())
    }
}
