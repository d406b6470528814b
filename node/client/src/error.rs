//! The client's errors.

use std::time::Duration;

use crate::wire::{ErrorStatus, WireError};

/// What can go wrong with a client call. Each variant carries what a user needs to act: the
/// endpoint, the group, the limit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint was given, or one is not `host:port` or `http://host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The options do not hold together.
    #[error("invalid client options: {0}")]
    InvalidOptions(String),
    /// A TCP connection could not be opened.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The server refused the connection or does not speak the protocol.
    #[error("handshake with {endpoint} failed: {reason}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The connection broke before the response arrived; whether a write was applied is
    /// unknown, and retrying it with the same write id is safe.
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The server sent bytes this client cannot decode.
    #[error("protocol error from {endpoint}: {source}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// The decoding error.
        source: WireError,
    },
    /// No response within the request timeout.
    #[error("no response from {endpoint} within {after:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// Every attempt failed; the last failure is attached.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<Error>,
    },
    /// The request makes no sense, found before sending it (or the server's answer did not
    /// match the request).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server answered a request with a response of another kind: a server bug.
    #[error("the server answered a request of kind {expected} with a response of kind {found}")]
    UnexpectedResponse {
        /// The request's kind byte.
        expected: u8,
        /// The response's kind byte.
        found: u8,
    },
    /// The request exceeds a limit, found before sending it.
    #[error("request too large: {what} of {len} bytes exceeds {limit} ({max})")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its size.
        len: u64,
        /// The limit's name.
        limit: &'static str,
        /// The limit.
        max: u64,
    },
    /// The transaction's keys belong to several groups, found before sending it: use hash
    /// tags (`{tag}` in the keys) to put keys changed together in one group.
    #[error(
        "transaction spans groups {groups:?}; keys changed together need a common {{hash tag}}"
    )]
    TxnSpansGroups {
        /// The groups, ascending.
        groups: Vec<u32>,
    },
    /// The server answered with an error that retrying will not cure.
    #[error("{endpoint} answered: {status}")]
    Server {
        /// The endpoint.
        endpoint: String,
        /// The error.
        status: ErrorStatus,
    },
}

/// The client's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the failure may go away by retrying (on another member or later).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Handshake { .. }
            | Error::ConnectionLost { .. }
            | Error::Timeout { .. } => true,
            Error::Server { status, .. } => matches!(
                status,
                ErrorStatus::NotLeader { .. }
                    | ErrorStatus::GroupUnavailable { .. }
                    | ErrorStatus::WrongGroup { .. }
                    | ErrorStatus::Busy
            ),
            _ => false,
        }
    }

    /// The server's error status, if the server answered with one.
    pub fn status(&self) -> Option<&ErrorStatus> {
        match self {
            Error::Server { status, .. } => Some(status),
            Error::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }
}

impl From<WireError> for Error {
    /// An encoding error: the request exceeds a limit.
    fn from(e: WireError) -> Error {
        match e {
            WireError::TooLarge {
                what,
                len,
                limit,
                max,
                ..
            } => Error::TooLarge {
                what,
                len,
                limit,
                max,
            },
            other => Error::Protocol {
                endpoint: String::from("(local)"),
                source: other,
            },
        }
    }
}
