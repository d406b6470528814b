//! The prefaces that open a connection.

use super::{CLIENT_PREFACE_BYTES, MAGIC, SERVER_PREFACE_BYTES, VERSION, WireError};

/// The server's answer to a client preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefaceCode {
    /// 0: the connection is accepted.
    Accepted,
    /// 1: the server does not speak the client's version.
    VersionUnsupported,
    /// 2: the server takes no more connections.
    Busy,
}

/// The server's preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerPreface {
    /// The version the server speaks.
    pub version: u16,
    /// Whether it accepts the connection.
    pub code: PrefaceCode,
    /// The server's `request_bytes_max`.
    pub request_bytes_max: u32,
    /// The server's `in_flight_per_connection_max`.
    pub in_flight_per_connection_max: u32,
}

/// The client's preface for [`VERSION`].
pub fn client_preface() -> [u8; CLIENT_PREFACE_BYTES] {
    let mut out = [0u8; CLIENT_PREFACE_BYTES];
    out[..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out
}

/// Decodes a client preface into the version it asks for.
pub fn decode_client_preface(bytes: &[u8; CLIENT_PREFACE_BYTES]) -> Result<u16, WireError> {
    if bytes[..8] != MAGIC {
        return Err(WireError::BadMagic {
            found: bytes[..8].to_vec(),
        });
    }
    if bytes[10..12] != [0, 0] {
        return Err(WireError::BadPreface("reserved bytes are not zero"));
    }
    Ok(u16::from_le_bytes([bytes[8], bytes[9]]))
}

impl ServerPreface {
    /// The 20 bytes of the preface.
    pub fn encode(&self) -> [u8; SERVER_PREFACE_BYTES] {
        let mut out = [0u8; SERVER_PREFACE_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10] = match self.code {
            PrefaceCode::Accepted => 0,
            PrefaceCode::VersionUnsupported => 1,
            PrefaceCode::Busy => 2,
        };
        out[12..16].copy_from_slice(&self.request_bytes_max.to_le_bytes());
        out[16..20].copy_from_slice(&self.in_flight_per_connection_max.to_le_bytes());
        out
    }

    /// Decodes the 20 bytes of a server preface.
    pub fn decode(bytes: &[u8; SERVER_PREFACE_BYTES]) -> Result<ServerPreface, WireError> {
        if bytes[..8] != MAGIC {
            return Err(WireError::BadMagic {
                found: bytes[..8].to_vec(),
            });
        }
        let code = match bytes[10] {
            0 => PrefaceCode::Accepted,
            1 => PrefaceCode::VersionUnsupported,
            2 => PrefaceCode::Busy,
            _ => return Err(WireError::BadPreface("unknown preface code")),
        };
        if bytes[11] != 0 {
            return Err(WireError::BadPreface("reserved byte is not zero"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Ok(ServerPreface {
            version: u16::from_le_bytes([bytes[8], bytes[9]]),
            code,
            request_bytes_max: u32_at(12),
            in_flight_per_connection_max: u32_at(16),
        })
    }
}

/// What the first bytes of a connection on the client port say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Too few bytes to tell: read more. Only while every byte so far matches [`MAGIC`].
    NeedMore,
    /// The native protocol: the bytes start with [`MAGIC`]; read the rest of the client
    /// preface and answer with a [`ServerPreface`].
    Native,
    /// Something else (the etcd gRPC API's HTTP/2 preface starts with `PRI`): hand the bytes
    /// read so far and the connection to that protocol.
    Other,
}

/// Tells the native protocol from anything else by a connection's first bytes, without
/// consuming them: decided at the first byte for any other protocol, and after eight bytes
/// for the native one.
pub fn sniff(first_bytes: &[u8]) -> Sniffed {
    let n = first_bytes.len().min(MAGIC.len());
    if first_bytes[..n] != MAGIC[..n] {
        Sniffed::Other
    } else if n < MAGIC.len() {
        Sniffed::NeedMore
    } else {
        Sniffed::Native
    }
}
