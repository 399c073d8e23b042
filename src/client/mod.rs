//! `ringkv::client`: a routing client. It asks placement where regions are, sends each
//! request straight to the node leading the key's region (with the region's id and epoch, so
//! the node serves it from that region or says why not), follows leader hints, region splits
//! and moves by itself, and retries within each operation's deadline. Batches are cut by
//! region and their parts sent in parallel.
//!
//! ```no_run
//! use std::time::Duration;
//! use ringkv::client::{Client, ClientConfig};
//!
//! # async fn example() -> Result<(), ringkv::client::Error> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:2379"])).await?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?, Some(b"hello".to_vec()));
//!
//! client.put_with_ttl("session", "x", Duration::from_secs(30)).await?;
//! client.batch_put(&[("a", "1"), ("b", "2")], None).await?;
//! let found = client.batch_get(&["a", "b", "missing"]).await?; // [(a, 1), (b, 2)]
//! assert_eq!(found.len(), 2);
//!
//! // Compare-and-swap: "2" -> "3" only if b still holds "2".
//! let cas = client.compare_and_swap("b", Some(b"2"), Some(b"3")).await?;
//! assert!(cas.succeeded);
//!
//! // Every pair, region by region, a page at a time.
//! let page = client.scan(b"", b"", 100).await?;
//! println!("{} pairs, more: {}", page.pairs.len(), page.next_cursor.is_some());
//!
//! // A shorter deadline for one call; a possibly stale read from any replica.
//! let quick = client.with_timeout(Duration::from_secs(1)).get("a").await?;
//! let stale = client.get_stale("a").await?;
//! # let _ = (quick, stale);
//! # Ok(())
//! # }
//! ```
//!
//! Errors: see [`Error`]. The one to handle with care is [`Error::OutcomeUnknown`]: a write
//! whose request may have reached a node that never answered. The client never resends such
//! a write (it could apply twice); every other failure of a write means it was not applied
//! (for a batch: that part; other regions' parts may have been). Reads retry freely.
//!
//! Layout: `region_cache` (the pure cache of hash ranges), `batch` (cutting batches by
//! region), `retry` (pauses within a deadline), `request` (contexts and RPCs), `router`
//! (routing and what each answer means), `placement` (lookups), `connections` (a channel per
//! address).

mod batch;
mod config;
mod connections;
mod error;
mod placement;
mod region_cache;
mod request;
mod retry;
mod router;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub use config::{ClientConfig, ClientIdentity, ClientTls};
pub use error::{Error, Result};

use connections::Connections;
use router::Router;

use crate::keys::key_hash;
use crate::proto::kvpb::{self, kv_request, kv_response, KvResponse};
use crate::raftstore::cursor_hash;
use crate::server::limits::MAX_SCAN_LIMIT;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the region's leader after confirming it still leads (ReadIndex).
    #[default]
    Linearizable,
    /// Served by any replica from what it has applied: possibly behind, never torn.
    Stale,
}

/// What a compare-and-swap found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub succeeded: bool,
    /// What the key holds now: the new value after a swap (`None` after a delete), or the
    /// value that made the compare fail (`None`: absent).
    pub current: Option<Vec<u8>>,
}

/// One page of a scan, in ring order (key hash, then key bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the next page starts; `None` once the scan reached the end of the ring.
    pub next_cursor: Option<Vec<u8>>,
}

/// A handle to a ringkv cluster. Cheap to clone; clones share the region cache and the
/// connections, and may be used from many tasks at once.
#[derive(Clone)]
pub struct Client {
    router: Arc<Router>,
    timeout: Duration,
    consistency: Consistency,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first placement endpoint that answers (within the config's timeout).
    /// Nodes are connected to lazily, on first use.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let connections = Arc::new(Connections::new(
            config.tls.as_ref(),
            config.connect_timeout,
        ));
        let deadline = Instant::now() + config.timeout;
        // Placement serves plaintext gRPC only; TLS is for the nodes' client ports.
        let placement_connections = Arc::new(Connections::new(None, config.connect_timeout));
        let placement = placement::Placement::connect(
            config.placement_endpoints.clone(),
            placement_connections,
            deadline,
        )
        .await?;
        Ok(Client {
            router: Arc::new(Router::new(connections, placement, config.max_backoff)),
            timeout: config.timeout,
            consistency: Consistency::Linearizable,
        })
    }

    /// This client with another deadline for each operation (retries included).
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// This client with reads of another consistency (`get`, `batch_get`, `scan`).
    pub fn with_consistency(&self, consistency: Consistency) -> Client {
        Client {
            consistency,
            ..self.clone()
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn read_consistency(&self) -> i32 {
        match self.consistency {
            Consistency::Linearizable => kvpb::Consistency::Linearizable as i32,
            Consistency::Stale => kvpb::Consistency::Stale as i32,
        }
    }

    /// The value of `key`, `None` if absent (or expired).
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let op = kv_request::Op::Get(kvpb::GetRequest {
            key: key.clone(),
            consistency: self.read_consistency(),
            context: None,
        });
        match self.run_at(key_hash(&key), op).await? {
            kv_response::Result::Get(got) if got.found => Ok(Some(got.value.to_vec())),
            kv_response::Result::Get(_) => Ok(None),
            other => Err(unexpected("get", &other)),
        }
    }

    /// `get` from any replica: possibly behind the leader.
    pub async fn get_stale(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.with_consistency(Consistency::Stale).get(key).await
    }

    /// The found pairs among `keys`, in request order (absent keys are left out).
    pub async fn batch_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let keys: Vec<Bytes> = keys
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_ref()))
            .collect();
        let consistency = self.read_consistency();
        let sizes: Vec<usize> = keys.iter().map(Bytes::len).collect();
        let answered = self
            .run_batch(&keys, &sizes, |items| {
                kv_request::Op::BatchGet(kvpb::BatchGetRequest {
                    keys: items.iter().map(|&i| keys[i].clone()).collect(),
                    consistency,
                    context: None,
                })
            })
            .await?;
        let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        for (items, response) in answered {
            let Some(kv_response::Result::BatchGet(got)) = response.result else {
                return Err(unexpected_response("batch_get", response));
            };
            let values: std::collections::HashMap<Bytes, Bytes> =
                got.pairs.into_iter().map(|p| (p.key, p.value)).collect();
            for i in items {
                found[i] = values.get(&keys[i]).map(|v| v.to_vec());
            }
        }
        Ok(keys
            .iter()
            .zip(found)
            .filter_map(|(key, value)| Some((key.to_vec(), value?)))
            .collect())
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.put_with_ttl_secs(key.as_ref(), value.as_ref(), 0)
            .await
    }

    /// Sets `key` to `value` for `ttl` (rounded up to whole seconds, at least one), counted
    /// from when the leader accepts the write.
    pub async fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<()> {
        self.put_with_ttl_secs(key.as_ref(), value.as_ref(), ttl_secs(ttl)?)
            .await
    }

    async fn put_with_ttl_secs(&self, key: &[u8], value: &[u8], ttl_secs: u64) -> Result<()> {
        let op = kv_request::Op::Put(kvpb::PutRequest {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ttl_secs,
            context: None,
        });
        self.run_write_at(key_hash(key), op).await
    }

    /// Sets every pair (each region's part atomically; parts in parallel). With `ttl`, every
    /// pair expires after it. A key may appear only once.
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        pairs: &[(K, V)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ttl_secs = ttl.map(ttl_secs).transpose()?.unwrap_or(0);
        let pairs: Vec<kvpb::KvPair> = pairs
            .iter()
            .map(|(k, v)| kvpb::KvPair {
                key: Bytes::copy_from_slice(k.as_ref()),
                value: Bytes::copy_from_slice(v.as_ref()),
            })
            .collect();
        let keys: Vec<Bytes> = pairs.iter().map(|p| p.key.clone()).collect();
        check_unique(&keys)?;
        let sizes: Vec<usize> = pairs.iter().map(|p| p.key.len() + p.value.len()).collect();
        let answered = self
            .run_batch(&keys, &sizes, |items| {
                kv_request::Op::BatchPut(kvpb::BatchPutRequest {
                    pairs: items.iter().map(|&i| pairs[i].clone()).collect(),
                    ttl_secs,
                    context: None,
                })
            })
            .await?;
        expect_done("batch_put", answered.into_iter().map(|(_, r)| r))
    }

    /// Deletes `key` (absent already is fine).
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let hash = key_hash(&key);
        let op = kv_request::Op::Delete(kvpb::DeleteRequest { key, context: None });
        self.run_write_at(hash, op).await
    }

    /// Deletes every key (each region's part atomically). A key may appear only once.
    pub async fn batch_delete<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<()> {
        let keys: Vec<Bytes> = keys
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_ref()))
            .collect();
        check_unique(&keys)?;
        let sizes: Vec<usize> = keys.iter().map(Bytes::len).collect();
        let answered = self
            .run_batch(&keys, &sizes, |items| {
                kv_request::Op::BatchDelete(kvpb::BatchDeleteRequest {
                    keys: items.iter().map(|&i| keys[i].clone()).collect(),
                    context: None,
                })
            })
            .await?;
        expect_done("batch_delete", answered.into_iter().map(|(_, r)| r))
    }

    /// If `key` holds `expected` (`None`: is absent), makes it hold `new` (`None`: deletes
    /// it). Decided atomically where the write applies.
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let hash = key_hash(&key);
        let op = kv_request::Op::Cas(kvpb::CasRequest {
            key,
            expect_absent: expected.is_none(),
            expected_value: Bytes::copy_from_slice(expected.unwrap_or_default()),
            delete: new.is_none(),
            new_value: Bytes::copy_from_slice(new.unwrap_or_default()),
            ttl_secs: 0,
            context: None,
        });
        match self.run_at(hash, op).await? {
            kv_response::Result::Cas(cas) if cas.succeeded => Ok(CasOutcome {
                succeeded: true,
                current: new.map(<[u8]>::to_vec),
            }),
            kv_response::Result::Cas(cas) => Ok(CasOutcome {
                succeeded: false,
                current: cas.found.then(|| cas.current.to_vec()),
            }),
            other => Err(unexpected("compare_and_swap", &other)),
        }
    }

    /// Up to `limit` pairs (at least 1) whose key starts with `prefix`, in ring order from
    /// `cursor` (empty: the start of the ring; else a `next_cursor` a scan returned). Walks
    /// region after region until it has `limit` pairs or reaches the end of the ring. Keys
    /// written or deleted during a scan may or may not show; none shows twice.
    pub async fn scan(&self, cursor: &[u8], prefix: &[u8], limit: usize) -> Result<ScanPage> {
        if limit == 0 {
            return Err(Error::InvalidArgument(
                "a scan's limit must be at least 1".to_owned(),
            ));
        }
        let deadline = self.deadline();
        let mut cursor = Bytes::copy_from_slice(cursor);
        let prefix = Bytes::copy_from_slice(prefix);
        let mut pairs = Vec::new();
        while pairs.len() < limit {
            let op = kv_request::Op::Scan(kvpb::ScanRequest {
                cursor: cursor.clone(),
                prefix: prefix.clone(),
                limit: (limit - pairs.len()).min(MAX_SCAN_LIMIT as usize) as u32,
                consistency: self.read_consistency(),
                context: None,
            });
            let response = self
                .router
                .run_at(cursor_hash(&cursor), op, deadline)
                .await?;
            let Some(kv_response::Result::Scan(page)) = response.result else {
                return Err(unexpected_response("scan", response));
            };
            pairs.extend(
                page.pairs
                    .into_iter()
                    .map(|p| (p.key.to_vec(), p.value.to_vec())),
            );
            if page.done {
                return Ok(ScanPage {
                    pairs,
                    next_cursor: None,
                });
            }
            if page.next_cursor <= cursor {
                return Err(Error::Server(format!(
                    "a scan page did not advance past cursor {cursor:02x?}"
                )));
            }
            cursor = page.next_cursor;
        }
        Ok(ScanPage {
            pairs,
            next_cursor: Some(cursor.to_vec()),
        })
    }

    /// Every pair whose key starts with `prefix`, following scan cursors to the end of the
    /// ring (each page with its own deadline). Holds everything in memory: for large ranges
    /// page with [`Client::scan`].
    pub async fn scan_all(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pairs = Vec::new();
        let mut cursor = Vec::new();
        loop {
            let page = self.scan(&cursor, prefix, MAX_SCAN_LIMIT as usize).await?;
            pairs.extend(page.pairs);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => return Ok(pairs),
            }
        }
    }

    async fn run_at(&self, hash: u64, op: kv_request::Op) -> Result<kv_response::Result> {
        let response = self.router.run_at(hash, op, self.deadline()).await?;
        response
            .result
            .ok_or_else(|| Error::Server("an empty response".to_owned()))
    }

    async fn run_write_at(&self, hash: u64, op: kv_request::Op) -> Result<()> {
        match self.run_at(hash, op).await? {
            kv_response::Result::Done(_) => Ok(()),
            other => Err(unexpected("write", &other)),
        }
    }

    /// A batch over `keys` (empty: nothing to do), parts built by `part`.
    async fn run_batch(
        &self,
        keys: &[Bytes],
        sizes: &[usize],
        part: impl Fn(&[usize]) -> kv_request::Op,
    ) -> Result<Vec<(Vec<usize>, KvResponse)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let hashes: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        self.router
            .run_batch(&hashes, sizes, part, self.deadline())
            .await
    }
}

/// Whole seconds for a TTL, rounded up; zero is refused (it would mean "never expires").
fn ttl_secs(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(
            "a ttl must be positive (omit it for a key that never expires)".to_owned(),
        ));
    }
    Ok(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
}

/// A batch write names each key once (which value would win is unclear otherwise).
fn check_unique(keys: &[Bytes]) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    match keys.iter().find(|k| !seen.insert(*k)) {
        Some(key) => Err(Error::InvalidArgument(format!(
            "key {:?} appears twice in one batch write",
            String::from_utf8_lossy(key)
        ))),
        None => Ok(()),
    }
}

fn expect_done(what: &str, responses: impl Iterator<Item = KvResponse>) -> Result<()> {
    for response in responses {
        if !matches!(response.result, Some(kv_response::Result::Done(_))) {
            return Err(unexpected_response(what, response));
        }
    }
    Ok(())
}

fn unexpected(what: &str, result: &kv_response::Result) -> Error {
    Error::Server(format!("{what} was answered with {result:?}"))
}

fn unexpected_response(what: &str, response: KvResponse) -> Error {
    match response.result {
        Some(result) => unexpected(what, &result),
        None => Error::Server(format!("{what} was answered with nothing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds_and_zero_is_refused() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), Ok(1));
        assert_eq!(ttl_secs(Duration::from_secs(30)), Ok(30));
        assert_eq!(ttl_secs(Duration::from_millis(30_001)), Ok(31));
        assert!(matches!(
            ttl_secs(Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_batch_write_naming_a_key_twice_is_refused() {
        let keys: Vec<Bytes> = ["a", "b", "a"].into_iter().map(Bytes::from).collect();
        assert!(
            matches!(check_unique(&keys), Err(Error::InvalidArgument(m)) if m.contains("\"a\""))
        );
        assert_eq!(check_unique(&keys[..2]), Ok(()));
    }
}
