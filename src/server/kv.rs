//! Executes client requests: routes a key to its local region's peer, waits for the answer
//! within a deadline, and forwards to the leader's node when this node's peer is not the
//! leader — so a client may talk to any node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::keys;
use crate::proto::kvpb::{
    self, kv_request, kv_response, region_error, Consistency, KvRequest, KvResponse,
};
use crate::proto::metapb::{Region, RegionEpoch};
use crate::proto::raft_serverpb::{Condition, ForwardRequest, ForwardResponse, WriteOp};
use crate::raftstore::{self, Command, PeerMsg, ReadOp, Router, SendError};
use crate::region::region_contains;
use crate::server::limits::{DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT};
use crate::transport::{ForwardHandler, Transport};
use crate::value::now_ms;

/// First and largest pause between retries while a region has no reachable leader.
const RETRY_BACKOFF_START: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Finds which store leads the region holding a hash when this node has no replica of it
/// (placement, through a cache).
pub trait RegionLocator: Send + Sync + 'static {
    /// The store of the leader of the region holding `hash`, if known.
    fn leader_store(
        &self,
        hash: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + '_>>;
    /// Forgets what is cached about `hash` (the answer led nowhere).
    fn invalidate(&self, hash: u64);
}

pub struct KvService {
    store_id: u64,
    router: Arc<Router>,
    engine: Engine,
    transport: OnceLock<Transport>,
    locator: OnceLock<Arc<dyn RegionLocator>>,
    request_timeout: Duration,
    next_request_id: AtomicU64,
}

impl KvService {
    pub fn new(
        store_id: u64,
        router: Arc<Router>,
        engine: Engine,
        request_timeout: Duration,
    ) -> KvService {
        KvService {
            store_id,
            router,
            engine,
            transport: OnceLock::new(),
            locator: OnceLock::new(),
            request_timeout,
            // Unique per store; the apply path also checks (term, index), so ids only need
            // to be unique among one leader's in-flight proposals.
            next_request_id: AtomicU64::new(store_id << 48),
        }
    }

    pub fn set_transport(&self, transport: Transport) {
        let _ = self.transport.set(transport);
    }

    pub fn set_locator(&self, locator: Arc<dyn RegionLocator>) {
        let _ = self.locator.set(locator);
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Executes a client's request. With a region context (a routing client) only this
    /// node's replica of that region serves it, answering region errors for the client to act
    /// on. Without one the node routes it: single-key requests to their region's leader,
    /// batches split by region and run in parallel, scans region by region.
    pub async fn execute(&self, request: KvRequest) -> KvResponse {
        let deadline = Instant::now() + self.request_timeout;
        if let Some(context) = request_context(&request).filter(|c| c.region_id != 0) {
            return self.execute_in_region(context, &request, deadline).await;
        }
        match &request.op {
            Some(
                kv_request::Op::BatchGet(_)
                | kv_request::Op::BatchPut(_)
                | kv_request::Op::BatchDelete(_),
            ) => self.execute_batch(&request, deadline).await,
            Some(kv_request::Op::Scan(scan)) => self.execute_scan(scan, deadline).await,
            _ => match request_hash(&request) {
                Some(hash) => self.execute_routed(&request, hash, deadline).await,
                None => raftstore::other_error("request has no operation".into()),
            },
        }
    }

    /// Runs `request` (all of it in the region holding `hash`) wherever that region's leader
    /// is, retrying while the leader is unknown or moving, until the deadline. A write that
    /// times out may or may not have been applied.
    async fn execute_routed(
        &self,
        request: &KvRequest,
        hash: u64,
        deadline: Instant,
    ) -> KvResponse {
        let mut backoff = RETRY_BACKOFF_START;
        loop {
            let response = self.attempt(request, hash, deadline).await;
            if !is_retryable(&response) {
                return response;
            }
            if !self.pause_before_retry(&mut backoff, deadline).await {
                return self.gave_up(&response);
            }
        }
    }

    /// One try: here if this node has the region, else at the store placement names; then at
    /// the leader a NotLeader answer names.
    async fn attempt(&self, request: &KvRequest, hash: u64, deadline: Instant) -> KvResponse {
        let mut response = match self.locator.get() {
            // No replica here: ask where the leader is and go there.
            Some(locator) if self.router.region_for_hash(hash).is_none() => {
                match locator.leader_store(hash).await {
                    Some(store_id) if store_id != self.store_id => {
                        let response = self.forward(store_id, request, deadline).await;
                        if is_retryable(&response) {
                            locator.invalidate(hash);
                        }
                        response
                    }
                    _ => {
                        locator.invalidate(hash);
                        raftstore::server_is_busy("no known leader for the key's region", 100)
                    }
                }
            }
            _ => self.execute_local(request, deadline).await,
        };
        if let Some(store_id) = leader_elsewhere(&response, self.store_id) {
            response = self.forward(store_id, request, deadline).await;
        }
        response
    }

    /// Sleeps before the next retry; false if that would pass the deadline.
    async fn pause_before_retry(&self, backoff: &mut Duration, deadline: Instant) -> bool {
        if Instant::now() + *backoff >= deadline {
            return false;
        }
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(RETRY_BACKOFF_MAX);
        true
    }

    fn gave_up(&self, last: &KvResponse) -> KvResponse {
        raftstore::timeout(format!(
            "no leader answered within {} ms: {}",
            self.request_timeout.as_millis(),
            error_message(last)
        ))
    }

    /// A batch spanning regions: split by this node's view of the regions (keys of regions it
    /// has no replica of go one by one), the parts run in parallel; parts refused because a
    /// region moved or split are split again and retried. Each part applies atomically; if a
    /// part fails for good, the answer is that failure (other parts may have applied).
    async fn execute_batch(&self, request: &KvRequest, deadline: Instant) -> KvResponse {
        let items = BatchItems::of(request);
        let mut found: Vec<Option<kvpb::KvPair>> = vec![None; items.len()];
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut backoff = RETRY_BACKOFF_START;
        loop {
            let groups = self.group_by_region(&items, &pending);
            let attempts = groups.iter().map(|(hash, group)| {
                let part = items.part(request, group);
                async move { self.attempt(&part, *hash, deadline).await }
            });
            let answers = futures_util::future::join_all(attempts).await;
            let mut retry = Vec::new();
            let mut last_retryable = None;
            for ((_, group), answer) in groups.into_iter().zip(answers) {
                match answer.result {
                    Some(kv_response::Result::BatchGet(got)) => {
                        items.place_found(&group, got.pairs, &mut found);
                    }
                    Some(kv_response::Result::Done(_)) => {}
                    _ if is_retryable(&answer) => {
                        retry.extend(group);
                        last_retryable = Some(answer);
                    }
                    _ => return answer,
                }
            }
            let Some(last) = last_retryable else {
                return match request.op {
                    Some(kv_request::Op::BatchGet(_)) => {
                        raftstore::batch_get_result(found.into_iter().flatten().collect())
                    }
                    _ => raftstore::done(),
                };
            };
            if !self.pause_before_retry(&mut backoff, deadline).await {
                return self.gave_up(&last);
            }
            retry.sort_unstable();
            pending = retry;
        }
    }

    /// Groups item indices by the local region holding their key; items of regions this
    /// node has no replica of form groups of one. Each group comes with a hash to route it by.
    fn group_by_region(&self, items: &BatchItems<'_>, pending: &[usize]) -> Vec<(u64, Vec<usize>)> {
        let mut by_region: HashMap<u64, (u64, Vec<usize>)> = HashMap::new();
        let mut groups = Vec::new();
        for &i in pending {
            let hash = keys::key_hash(items.key(i));
            match self.router.region_for_hash(hash) {
                Some(region) => by_region
                    .entry(region.id)
                    .or_insert((hash, Vec::new()))
                    .1
                    .push(i),
                None => groups.push((hash, vec![i])),
            }
        }
        groups.extend(by_region.into_values());
        groups
    }

    /// One page of a scan without a region context: pages of successive regions are joined
    /// until the limit is reached, the ring ends, or `SCAN_REGIONS_PER_PAGE` regions were
    /// visited. Positions only grow, so a key is never returned twice, whatever splits.
    async fn execute_scan(&self, scan: &kvpb::ScanRequest, deadline: Instant) -> KvResponse {
        let limit = scan_limit(scan.limit);
        let mut cursor = scan.cursor.clone();
        let mut pairs = Vec::new();
        for _ in 0..SCAN_REGIONS_PER_PAGE {
            let page = kvpb::ScanRequest {
                cursor: cursor.clone(),
                limit: (limit - pairs.len()) as u32,
                context: None,
                ..scan.clone()
            };
            let request = KvRequest {
                op: Some(kv_request::Op::Scan(page)),
            };
            let response = self
                .execute_routed(&request, raftstore::cursor_hash(&cursor), deadline)
                .await;
            let Some(kv_response::Result::Scan(page)) = response.result else {
                return response;
            };
            pairs.extend(page.pairs);
            if page.done {
                return raftstore::scan_result(pairs, None);
            }
            cursor = page.next_cursor;
            if pairs.len() >= limit {
                break;
            }
        }
        raftstore::scan_result(pairs, Some(cursor.to_vec()))
    }

    /// A request for one region named by the client: served by this node's replica only.
    async fn execute_in_region(
        &self,
        context: &kvpb::RequestContext,
        request: &KvRequest,
        deadline: Instant,
    ) -> KvResponse {
        let Some(region) = self.router.region(context.region_id) else {
            return raftstore::region_not_found(context.region_id);
        };
        let version = |epoch: &Option<RegionEpoch>| epoch.map(|e| e.version).unwrap_or(0);
        if version(&context.region_epoch) != version(&region.epoch) {
            return raftstore::epoch_not_match(
                format!(
                    "region {} has split since the client looked it up",
                    region.id
                ),
                region,
            );
        }
        self.execute_on(region, request, deadline).await
    }

    async fn forward(&self, store_id: u64, request: &KvRequest, deadline: Instant) -> KvResponse {
        let Some(transport) = self.transport.get() else {
            return raftstore::server_is_busy("transport not started", 100);
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let forward = ForwardRequest {
            request: Some(request.clone()),
        };
        match transport.forward(store_id, forward, remaining).await {
            Ok(ForwardResponse {
                response: Some(response),
            }) => response,
            Ok(ForwardResponse { response: None }) => {
                raftstore::server_is_busy("empty forwarded response", 50)
            }
            // A write that may have run there must not run again: its outcome is unknown.
            Err(err) if err.maybe_delivered() && is_write(request) => raftstore::timeout(format!(
                "forwarded to store {store_id}, no answer (outcome unknown): {err}"
            )),
            Err(err) => {
                raftstore::server_is_busy(&format!("forwarding to store {store_id}: {err}"), 50)
            }
        }
    }

    /// Executes `request` on this node only (in the local region holding its first key or
    /// its cursor); never forwards.
    pub async fn execute_local(&self, request: &KvRequest, deadline: Instant) -> KvResponse {
        let Some(hash) = request_hash(request) else {
            return raftstore::other_error("request has no operation".into());
        };
        let Some(region) = self.router.region_for_hash(hash) else {
            // Region id 0: none here holds the key (a stale route; the caller looks again).
            return raftstore::region_not_found(0);
        };
        self.execute_on(region, request, deadline).await
    }

    /// Executes `request` at this node's peer of `region`: stale reads from the local replica
    /// at once, everything else through the peer (which answers NotLeader if it is not the
    /// leader, EpochNotMatch for keys outside the region).
    async fn execute_on(
        &self,
        region: Region,
        request: &KvRequest,
        deadline: Instant,
    ) -> KvResponse {
        let Some(op) = &request.op else {
            return raftstore::other_error("request has no operation".into());
        };
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let read = |read: ReadOp, reply| Command::Read {
            request_id,
            read,
            reply,
        };
        let write = |ops, conditions, reply| Command::Write {
            request_id,
            epoch: region.epoch,
            ops,
            conditions,
            reply,
        };
        let stale = |consistency: i32| consistency == Consistency::Stale as i32;
        let command = match op {
            kv_request::Op::Get(get) => {
                let op = ReadOp::Get(get.key.clone());
                if stale(get.consistency) {
                    return self.read_local_replica(&region, &op);
                }
                // Test switch for the fault suite: a deliberately broken read path that skips
                // ReadIndex, which the linearizability checker must catch. Only compiled into
                // builds with the `failpoints` feature.
                fail::fail_point!("unsafe_local_read", |_| self
                    .read_local_replica(&region, &op));
                read(op, reply)
            }
            kv_request::Op::BatchGet(batch) => {
                let op = ReadOp::BatchGet(batch.keys.clone());
                if stale(batch.consistency) {
                    return self.read_local_replica(&region, &op);
                }
                read(op, reply)
            }
            kv_request::Op::Scan(scan) => {
                let op = ReadOp::Scan {
                    cursor: scan.cursor.clone(),
                    prefix: scan.prefix.clone(),
                    limit: scan_limit(scan.limit),
                };
                if stale(scan.consistency) {
                    return self.read_local_replica(&region, &op);
                }
                read(op, reply)
            }
            kv_request::Op::Put(put) => {
                let expire_at_ms = expiry(put.ttl_secs);
                write(
                    vec![put_op(&put.key, &put.value, expire_at_ms)],
                    vec![],
                    reply,
                )
            }
            kv_request::Op::BatchPut(batch) => {
                let expire_at_ms = expiry(batch.ttl_secs);
                let ops = batch
                    .pairs
                    .iter()
                    .map(|pair| put_op(&pair.key, &pair.value, expire_at_ms))
                    .collect();
                write(ops, vec![], reply)
            }
            kv_request::Op::Delete(delete) => write(vec![delete_op(&delete.key)], vec![], reply),
            kv_request::Op::BatchDelete(batch) => {
                write(batch.keys.iter().map(delete_op).collect(), vec![], reply)
            }
            kv_request::Op::Cas(cas) => {
                let op = if cas.delete {
                    delete_op(&cas.key)
                } else {
                    put_op(&cas.key, &cas.new_value, expiry(cas.ttl_secs))
                };
                let condition = Condition {
                    key: cas.key.clone(),
                    absent: cas.expect_absent,
                    value: cas.expected_value.clone(),
                };
                write(vec![op], vec![condition], reply)
            }
        };
        self.send_and_wait(region.id, command, answer, deadline)
            .await
    }

    async fn send_and_wait(
        &self,
        region_id: u64,
        command: Command,
        answer: oneshot::Receiver<KvResponse>,
        deadline: Instant,
    ) -> KvResponse {
        match self.router.send(region_id, PeerMsg::Command(command)) {
            Ok(()) => {}
            Err(SendError::RegionNotFound(_)) => return raftstore::region_not_found(region_id),
            Err(SendError::Full(_)) => {
                return raftstore::server_is_busy("store mailbox is full", 20)
            }
            Err(SendError::Closed(_)) => {
                return raftstore::server_is_busy("store is shutting down", 100)
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, answer).await {
            Ok(Ok(response)) => response,
            // The peer went away (shutdown) with the request in flight: a proposed write may
            // still commit elsewhere, so this is not a definite failure.
            Ok(Err(_)) => raftstore::timeout(format!(
                "region {region_id} stopped before answering (outcome unknown for writes)"
            )),
            Err(_) => raftstore::timeout(format!(
                "region {region_id} did not answer within {} ms (outcome unknown for writes)",
                self.request_timeout.as_millis()
            )),
        }
    }

    /// Deletes `keys` of `region` that are still expired when the command applies (a value
    /// written meanwhile is kept). Used by the expired-key reclaim; proposed only here.
    pub async fn delete_expired(&self, region: Region, keys: Vec<Vec<u8>>) -> KvResponse {
        let deadline = Instant::now() + self.request_timeout;
        let (reply, answer) = oneshot::channel();
        let ops = keys
            .into_iter()
            .map(|key| WriteOp {
                key: key.into(),
                delete: true,
                only_if_expired: true,
                ..Default::default()
            })
            .collect();
        let command = Command::Write {
            request_id: self.next_request_id.fetch_add(1, Ordering::Relaxed),
            epoch: region.epoch,
            ops,
            conditions: vec![],
            reply,
        };
        self.send_and_wait(region.id, command, answer, deadline)
            .await
    }

    /// A stale read: this replica's data as it is, possibly behind the leader. Positions
    /// outside the region are refused like the leader would.
    fn read_local_replica(&self, region: &Region, read: &ReadOp) -> KvResponse {
        if read
            .hashes()
            .into_iter()
            .any(|hash| !region_contains(region, hash))
        {
            return raftstore::epoch_not_match(
                format!("the read is not inside region {}", region.id),
                region.clone(),
            );
        }
        raftstore::read_region(&self.engine, region, read, now_ms())
    }
}

/// Regions one scan call without a context visits at most before answering with a cursor.
const SCAN_REGIONS_PER_PAGE: usize = 16;

fn scan_limit(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_SCAN_LIMIT as usize,
        n => n.min(MAX_SCAN_LIMIT) as usize,
    }
}

/// The unix ms a value written now with `ttl_secs` expires at (0 = never). Chosen here, on
/// the leader's node, and carried in the log so every replica stores the same expiry.
fn expiry(ttl_secs: u64) -> u64 {
    match ttl_secs {
        0 => 0,
        ttl => now_ms().saturating_add(ttl.saturating_mul(1000)),
    }
}

fn put_op(key: &Bytes, value: &Bytes, expire_at_ms: u64) -> WriteOp {
    WriteOp {
        key: key.clone(),
        value: value.clone(),
        delete: false,
        expire_at_ms,
        only_if_expired: false,
    }
}

fn delete_op(key: &Bytes) -> WriteOp {
    WriteOp {
        key: key.clone(),
        delete: true,
        ..Default::default()
    }
}

/// The keys (and values) of a batch request, addressable by index so parts can be cut out.
struct BatchItems<'a> {
    keys: Vec<&'a Bytes>,
    values: Vec<&'a Bytes>,
}

impl<'a> BatchItems<'a> {
    fn of(request: &'a KvRequest) -> BatchItems<'a> {
        match &request.op {
            Some(kv_request::Op::BatchGet(batch)) => BatchItems {
                keys: batch.keys.iter().collect(),
                values: Vec::new(),
            },
            Some(kv_request::Op::BatchDelete(batch)) => BatchItems {
                keys: batch.keys.iter().collect(),
                values: Vec::new(),
            },
            Some(kv_request::Op::BatchPut(batch)) => BatchItems {
                keys: batch.pairs.iter().map(|p| &p.key).collect(),
                values: batch.pairs.iter().map(|p| &p.value).collect(),
            },
            _ => BatchItems {
                keys: Vec::new(),
                values: Vec::new(),
            },
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn key(&self, i: usize) -> &[u8] {
        self.keys[i]
    }

    /// The batch request for the items `group` (same kind and options as `request`).
    fn part(&self, request: &KvRequest, group: &[usize]) -> KvRequest {
        let keys = || group.iter().map(|&i| self.keys[i].clone()).collect();
        let op = match &request.op {
            Some(kv_request::Op::BatchGet(batch)) => {
                kv_request::Op::BatchGet(kvpb::BatchGetRequest {
                    keys: keys(),
                    consistency: batch.consistency,
                    context: None,
                })
            }
            Some(kv_request::Op::BatchPut(batch)) => {
                kv_request::Op::BatchPut(kvpb::BatchPutRequest {
                    pairs: group
                        .iter()
                        .map(|&i| kvpb::KvPair {
                            key: self.keys[i].clone(),
                            value: self.values[i].clone(),
                        })
                        .collect(),
                    ttl_secs: batch.ttl_secs,
                    context: None,
                })
            }
            _ => kv_request::Op::BatchDelete(kvpb::BatchDeleteRequest {
                keys: keys(),
                context: None,
            }),
        };
        KvRequest { op: Some(op) }
    }

    /// Files the pairs a part found under their items' indices (request order is kept).
    fn place_found(
        &self,
        group: &[usize],
        pairs: Vec<kvpb::KvPair>,
        found: &mut [Option<kvpb::KvPair>],
    ) {
        let mut by_key: HashMap<Bytes, kvpb::KvPair> =
            pairs.into_iter().map(|p| (p.key.clone(), p)).collect();
        for &i in group {
            if let Some(pair) = by_key.get(self.keys[i]) {
                found[i] = Some(pair.clone());
            }
        }
        by_key.clear();
    }
}

/// The region context a request carries, if any.
fn request_context(request: &KvRequest) -> Option<&kvpb::RequestContext> {
    match request.op.as_ref()? {
        kv_request::Op::Get(r) => r.context.as_ref(),
        kv_request::Op::Put(r) => r.context.as_ref(),
        kv_request::Op::Delete(r) => r.context.as_ref(),
        kv_request::Op::Cas(r) => r.context.as_ref(),
        kv_request::Op::BatchGet(r) => r.context.as_ref(),
        kv_request::Op::BatchPut(r) => r.context.as_ref(),
        kv_request::Op::BatchDelete(r) => r.context.as_ref(),
        kv_request::Op::Scan(r) => r.context.as_ref(),
    }
}

/// The ring position a request is routed by: its (first) key's hash, or its cursor.
fn request_hash(request: &KvRequest) -> Option<u64> {
    let key = match request.op.as_ref()? {
        kv_request::Op::Get(get) => &get.key,
        kv_request::Op::Put(put) => &put.key,
        kv_request::Op::Delete(delete) => &delete.key,
        kv_request::Op::Cas(cas) => &cas.key,
        kv_request::Op::BatchGet(batch) => batch.keys.first()?,
        kv_request::Op::BatchPut(batch) => &batch.pairs.first()?.key,
        kv_request::Op::BatchDelete(batch) => batch.keys.first()?,
        kv_request::Op::Scan(scan) => return Some(raftstore::cursor_hash(&scan.cursor)),
    };
    Some(keys::key_hash(key))
}

fn is_write(request: &KvRequest) -> bool {
    !matches!(
        request.op,
        Some(kv_request::Op::Get(_) | kv_request::Op::BatchGet(_) | kv_request::Op::Scan(_)) | None
    )
}

fn region_error_of(response: &KvResponse) -> Option<&region_error::Error> {
    match &response.result {
        Some(kv_response::Result::RegionError(err)) => err.error.as_ref(),
        _ => None,
    }
}

/// The store of the leader named by a NotLeader answer, when it is another store.
fn leader_elsewhere(response: &KvResponse, self_store: u64) -> Option<u64> {
    match region_error_of(response) {
        Some(region_error::Error::NotLeader(kvpb::NotLeader {
            leader: Some(leader),
            ..
        })) if leader.store_id != self_store => Some(leader.store_id),
        _ => None,
    }
}

/// Errors that a later attempt can cure: the leader is unknown or moving, or a node is busy.
fn is_retryable(response: &KvResponse) -> bool {
    matches!(
        region_error_of(response),
        Some(
            region_error::Error::NotLeader(_)
                | region_error::Error::ServerIsBusy(_)
                | region_error::Error::EpochNotMatch(_)
                | region_error::Error::RegionNotFound(_)
        )
    )
}

fn error_message(response: &KvResponse) -> String {
    match &response.result {
        Some(kv_response::Result::RegionError(err)) => err.message.clone(),
        Some(kv_response::Result::OtherError(message)) => message.clone(),
        _ => String::new(),
    }
}

/// Serves requests forwarded by other nodes: executed here, never forwarded again (the
/// origin retries), so a request cannot bounce between nodes.
pub struct ForwardedRequests(pub Arc<KvService>);

impl ForwardHandler for ForwardedRequests {
    fn handle(
        &self,
        req: ForwardRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ForwardResponse> + Send>> {
        let service = self.0.clone();
        Box::pin(async move {
            let response = match req.request {
                Some(request) => {
                    let deadline = Instant::now() + service.request_timeout;
                    service.execute_local(&request, deadline).await
                }
                None => raftstore::other_error("forwarded request is empty".into()),
            };
            ForwardResponse {
                response: Some(response),
            }
        })
    }
}
