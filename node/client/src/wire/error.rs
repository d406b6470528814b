//! Why bytes could not be decoded or a frame not encoded.

use super::ErrorStatus;

/// Why bytes could not be decoded or a frame not encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A preface did not start with [`MAGIC`](super::MAGIC): the peer does not speak this protocol.
    #[error("not a keel native connection: the preface starts with {found:02x?}")]
    BadMagic {
        /// The first bytes received.
        found: Vec<u8>,
    },
    /// A preface had a non-zero reserved field or an unknown code.
    #[error("malformed preface: {0}")]
    BadPreface(&'static str),
    /// A frame's length is out of bounds (fatal).
    #[error("frame of {len} bytes is outside {min}..={max} ({limit})")]
    FrameSize {
        /// The length read.
        len: u32,
        /// The smallest accepted: the body's fixed fields.
        min: usize,
        /// The largest accepted.
        max: u32,
        /// The limit that set `max`.
        limit: &'static str,
    },
    /// A frame's checksum does not match its body (fatal).
    #[error("frame checksum mismatch: header says {expected:#010x}, body has {found:#010x}")]
    Checksum {
        /// CRC from the header.
        expected: u32,
        /// CRC of the body.
        found: u32,
    },
    /// A frame body is too short to hold its fixed fields (fatal).
    #[error("frame body of {len} bytes is too short")]
    ShortBody {
        /// The body length.
        len: usize,
    },
    /// An earlier fatal error left the stream unusable.
    #[error("the stream is unusable after an earlier fatal error")]
    Poisoned,
    /// A sound frame whose body does not decode; answer the request and go on.
    #[error("request {request_id}: malformed: {reason}")]
    Malformed {
        /// The frame's request id.
        request_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// A field exceeds a limit; answer the request with `TooLarge` and go on.
    #[error("request {request_id}: {what} of {len} exceeds {limit} {max}")]
    TooLarge {
        /// The frame's request id (0 when encoding).
        request_id: u64,
        /// The field.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit's name.
        limit: &'static str,
        /// The limit's value.
        max: u64,
    },
}

impl WireError {
    /// Whether the connection must be closed: framing can no longer be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            WireError::Malformed { .. } | WireError::TooLarge { .. }
        )
    }

    /// The request the error concerns, for an error that is not fatal.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            WireError::Malformed { request_id, .. } | WireError::TooLarge { request_id, .. } => {
                Some(*request_id)
            }
            _ => None,
        }
    }

    /// The status a server answers a non-fatal decode error with.
    pub fn to_status(&self) -> ErrorStatus {
        match self {
            WireError::TooLarge { .. } => ErrorStatus::TooLarge(self.to_string()),
            _ => ErrorStatus::InvalidArgument(self.to_string()),
        }
    }
}
