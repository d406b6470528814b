//! Which raft group a key belongs to.
//!
//! The keyspace is split into `groups` raft groups by a stable hash, the same in every
//! client and server and in every version, because it decides where data lives:
//!
//! 1. The *hashed part* of a key is, as in Redis Cluster's hash tags, the bytes between its
//!    first `{` and the first `}` after it, when there are such bytes; otherwise (no `{`, no
//!    `}` after it, or `{}` empty) the whole key. So `{user42}/name` and `{user42}/mail`
//!    share a group and can be changed by one transaction.
//! 2. The hash is 64-bit FNV-1a of the hashed part: start from `0xcbf2_9ce4_8422_2325`; for
//!    each byte, xor it in, then multiply by `0x0000_0100_0000_01b3` modulo 2^64.
//! 3. The group is the hash modulo `groups`, numbered from 0.
//!
//! The tests pin known values: a change to this function moves data between groups and is a
//! breaking change of the cluster format.

/// FNV-1a 64's starting hash (its offset basis).
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The part of `key` that decides its group: the non-empty bytes between the first `{` and
/// the next `}`, or else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let after = &key[open + 1..];
        if let Some(close) = after.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &after[..close];
            }
        }
    }
    key
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    fnv1a_64_extend(FNV_OFFSET_BASIS, bytes)
}

/// FNV-1a 64 continued over `bytes` from `hash` (a hash of earlier bytes, or
/// [`FNV_OFFSET_BASIS`] to start): `fnv1a_64(a ++ b) == fnv1a_64_extend(fnv1a_64(a), b)`.
pub fn fnv1a_64_extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The group, in `0..groups`, of `key`: FNV-1a 64 of its [hash tag](hash_tag) modulo
/// `groups`. A `groups` of 0 is taken as 1 (every key in group 0), so that the function is
/// total; a cluster always has at least one group.
pub fn group_of(key: &[u8], groups: u32) -> u32 {
    let groups = u64::from(groups.max(1));
    // The remainder is below `groups`, itself a u32: the conversion never fails.
    u32::try_from(fnv1a_64(hash_tag(key)) % groups).unwrap_or(0)
}
