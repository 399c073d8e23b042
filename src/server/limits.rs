//! What client input ringkv accepts: one check for every entry point (HTTP, gRPC, forwarded
//! requests are checked where they entered). A refused request changes nothing.

use crate::proto::kvpb::{kv_request, KvRequest};

/// Longest TTL accepted: ten years (keeps `now + ttl` far from overflow).
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
/// Largest scan page.
pub const MAX_SCAN_LIMIT: u32 = 1000;
/// Scan page size when the request does not say.
pub const DEFAULT_SCAN_LIMIT: u32 = 100;

/// Size limits on client input.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most keys in one batch request.
    pub max_batch_keys: usize,
    /// Most key + value bytes in one batch request.
    pub max_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_batch_keys: 1024,
            max_batch_bytes: 8 << 20,
        }
    }
}

/// Why a request was refused, with a stable code (HTTP `error.code`) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: String) -> InvalidRequest {
    InvalidRequest { code, message }
}

impl Limits {
    /// Checks a request against the limits and its own shape.
    pub fn check(&self, request: &KvRequest) -> Result<(), InvalidRequest> {
        let Some(op) = &request.op else {
            return Err(invalid(
                "bad_request",
                "the request has no operation".into(),
            ));
        };
        match op {
            kv_request::Op::Get(get) => self.check_key(&get.key),
            kv_request::Op::Put(put) => {
                self.check_key(&put.key)?;
                self.check_value(&put.value)?;
                check_ttl(put.ttl_secs)
            }
            kv_request::Op::Delete(delete) => self.check_key(&delete.key),
            kv_request::Op::Cas(cas) => {
                self.check_key(&cas.key)?;
                self.check_value(&cas.expected_value)?;
                self.check_value(&cas.new_value)?;
                check_ttl(cas.ttl_secs)?;
                if cas.expect_absent && !cas.expected_value.is_empty() {
                    return Err(invalid(
                        "bad_cas",
                        "give either expect_absent or expected_value, not both".into(),
                    ));
                }
                if cas.delete && (!cas.new_value.is_empty() || cas.ttl_secs != 0) {
                    return Err(invalid(
                        "bad_cas",
                        "a compare-and-delete takes no new value and no ttl".into(),
                    ));
                }
                if cas.delete && cas.expect_absent {
                    return Err(invalid(
                        "bad_cas",
                        "deleting a key expected to be absent changes nothing".into(),
                    ));
                }
                Ok(())
            }
            kv_request::Op::BatchGet(batch) => {
                self.check_batch(batch.keys.iter().map(|k| (k.as_ref(), &[][..])))
            }
            kv_request::Op::BatchPut(batch) => {
                check_ttl(batch.ttl_secs)?;
                self.check_batch(
                    batch
                        .pairs
                        .iter()
                        .map(|p| (p.key.as_ref(), p.value.as_ref())),
                )?;
                check_unique(batch.pairs.iter().map(|p| p.key.as_ref()))
            }
            kv_request::Op::BatchDelete(batch) => {
                self.check_batch(batch.keys.iter().map(|k| (k.as_ref(), &[][..])))?;
                check_unique(batch.keys.iter().map(|k| k.as_ref()))
            }
            kv_request::Op::Scan(scan) => {
                if scan.limit > MAX_SCAN_LIMIT {
                    return Err(invalid(
                        "bad_limit",
                        format!(
                            "a scan page holds at most {MAX_SCAN_LIMIT} pairs, not {}",
                            scan.limit
                        ),
                    ));
                }
                if scan.prefix.len() > self.max_key_bytes {
                    return Err(invalid(
                        "key_too_large",
                        format!(
                            "the prefix has {} bytes; keys have at most {}",
                            scan.prefix.len(),
                            self.max_key_bytes
                        ),
                    ));
                }
                self.check_cursor(&scan.cursor)
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), InvalidRequest> {
        if key.is_empty() {
            return Err(invalid("empty_key", "the key must not be empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(invalid(
                "key_too_large",
                format!(
                    "the key has {} bytes; the limit is {}",
                    key.len(),
                    self.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidRequest> {
        if value.len() > self.max_value_bytes {
            return Err(invalid(
                "value_too_large",
                format!(
                    "the value has {} bytes; the limit is {}",
                    value.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_batch<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), InvalidRequest> {
        let count = items.len();
        if count == 0 {
            return Err(invalid("empty_batch", "the batch names no keys".into()));
        }
        if count > self.max_batch_keys {
            return Err(invalid(
                "batch_too_large",
                format!(
                    "the batch has {count} keys; the limit is {}",
                    self.max_batch_keys
                ),
            ));
        }
        let mut bytes = 0usize;
        for (key, value) in items {
            self.check_key(key)?;
            self.check_value(value)?;
            bytes += key.len() + value.len();
        }
        if bytes > self.max_batch_bytes {
            return Err(invalid(
                "batch_too_large",
                format!(
                    "the batch has {bytes} bytes; the limit is {}",
                    self.max_batch_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A cursor is empty (the start of the ring) or a position: an 8-byte hash and at most
    /// one key plus one byte (the position just after a key).
    fn check_cursor(&self, cursor: &[u8]) -> Result<(), InvalidRequest> {
        if cursor.is_empty() || (8..=8 + self.max_key_bytes + 1).contains(&cursor.len()) {
            return Ok(());
        }
        Err(invalid(
            "bad_cursor",
            "the cursor is not one a scan returned".into(),
        ))
    }
}

fn check_ttl(ttl_secs: u64) -> Result<(), InvalidRequest> {
    if ttl_secs > MAX_TTL_SECS {
        return Err(invalid(
            "bad_ttl",
            format!("the ttl is {ttl_secs} s; the limit is {MAX_TTL_SECS} s (ten years)"),
        ));
    }
    Ok(())
}

fn check_unique<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Result<(), InvalidRequest> {
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if !seen.insert(key) {
            return Err(invalid(
                "duplicate_key",
                "a key appears twice in one batch write (which value wins would be unclear)".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::kvpb::{BatchPutRequest, CasRequest, KvPair, PutRequest, ScanRequest};

    fn request(op: kv_request::Op) -> KvRequest {
        KvRequest { op: Some(op) }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_code() {
        let limits = Limits::default();
        let code = |op| limits.check(&request(op)).map_err(|e| e.code);
        assert_eq!(
            code(kv_request::Op::Put(PutRequest::default())),
            Err("empty_key")
        );
        let big = PutRequest {
            key: vec![b'k'; 4097].into(),
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::Put(big)), Err("key_too_large"));
        let both = CasRequest {
            key: "k".into(),
            expect_absent: true,
            expected_value: "v".into(),
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::Cas(both)), Err("bad_cas"));
        let pairs = (0..1025)
            .map(|i| KvPair {
                key: format!("k{i}").into(),
                value: "v".into(),
            })
            .collect();
        let huge = BatchPutRequest {
            pairs,
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::BatchPut(huge)), Err("batch_too_large"));
        let cursor = ScanRequest {
            cursor: vec![1, 2, 3].into(),
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::Scan(cursor)), Err("bad_cursor"));
        let ttl = PutRequest {
            key: "k".into(),
            ttl_secs: MAX_TTL_SECS + 1,
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::Put(ttl)), Err("bad_ttl"));
        assert_eq!(
            limits.check(&KvRequest { op: None }).map_err(|e| e.code),
            Err("bad_request")
        );
        let fine = PutRequest {
            key: "k".into(),
            value: "v".into(),
            ttl_secs: 5,
            ..Default::default()
        };
        assert_eq!(code(kv_request::Op::Put(fine)), Ok(()));
    }
}
