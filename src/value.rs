//! How a user value is stored in the `default` column family: one flag byte, then — for a
//! value written with a TTL — its expiry as big-endian unix milliseconds, then the value.
//!
//! Expiry is an absolute time chosen once by the leader (its clock plus the TTL) and carried
//! in the raft log, so every replica stores the same bytes. An expired value reads as absent;
//! the leader later deletes it through raft (`WriteOp::only_if_expired`).

use std::time::{SystemTime, UNIX_EPOCH};

const PLAIN: u8 = 0;
const EXPIRES: u8 = 1;
const EXPIRY_BYTES: usize = 8;

/// A stored value, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredValue<'a> {
    /// Unix ms after which the value is gone; 0 = never.
    pub expire_at_ms: u64,
    pub value: &'a [u8],
}

impl StoredValue<'_> {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }
}

/// The stored form of `value` (expiring at `expire_at_ms`, 0 = never).
pub fn encode(value: &[u8], expire_at_ms: u64) -> Vec<u8> {
    let mut stored = Vec::with_capacity(1 + EXPIRY_BYTES + value.len());
    if expire_at_ms == 0 {
        stored.push(PLAIN);
    } else {
        stored.push(EXPIRES);
        stored.extend_from_slice(&expire_at_ms.to_be_bytes());
    }
    stored.extend_from_slice(value);
    stored
}

/// Decodes a stored value; `None` if the bytes are not a stored value (corruption).
pub fn decode(stored: &[u8]) -> Option<StoredValue<'_>> {
    match stored.split_first()? {
        (&PLAIN, value) => Some(StoredValue {
            expire_at_ms: 0,
            value,
        }),
        (&EXPIRES, rest) if rest.len() >= EXPIRY_BYTES => {
            let (expiry, value) = rest.split_at(EXPIRY_BYTES);
            let mut be = [0u8; EXPIRY_BYTES];
            be.copy_from_slice(expiry);
            Some(StoredValue {
                expire_at_ms: u64::from_be_bytes(be).max(1),
                value,
            })
        }
        _ => None,
    }
}

/// This node's wall clock in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_and_without_expiry() {
        let plain = encode(b"hello", 0);
        assert_eq!(plain, b"\0hello");
        let decoded = decode(&plain).expect("plain value decodes");
        assert_eq!(decoded.value, b"hello");
        assert!(!decoded.is_expired(u64::MAX));

        let expiring = encode(b"", 1_000);
        let decoded = decode(&expiring).expect("expiring value decodes");
        assert_eq!((decoded.expire_at_ms, decoded.value), (1_000, &b""[..]));
        assert!(!decoded.is_expired(999));
        assert!(decoded.is_expired(1_000));
    }

    #[test]
    fn bytes_that_are_not_a_stored_value_are_refused() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x01short"), None);
        assert_eq!(decode(b"\x07x"), None);
    }
}
