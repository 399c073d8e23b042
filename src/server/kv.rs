//! Executes client requests: routes a key to its local region's peer, waits for the answer
//! within a deadline, and forwards to the leader's node when this node's peer is not the
//! leader — so a client may talk to any node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::keys;
use crate::proto::kvpb::{
    self, kv_request, kv_response, region_error, Consistency, KvRequest, KvResponse,
};
use crate::proto::raft_serverpb::{Condition, ForwardRequest, ForwardResponse, WriteOp};
use crate::raftstore::{self, Command, PeerMsg, Router, SendError};
use crate::transport::{ForwardHandler, Transport};

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

    /// Executes `request` anywhere in the cluster: locally if this node leads the key's
    /// region, else at the leader's node. Retries while the leader is unknown or moving,
    /// until the deadline; a write that times out may or may not have been applied.
    pub async fn execute(&self, request: KvRequest) -> KvResponse {
        let deadline = Instant::now() + self.request_timeout;
        let mut backoff = RETRY_BACKOFF_START;
        let hash = request_key(&request).map(keys::key_hash);
        loop {
            let mut response = match (hash, self.locator.get()) {
                // No replica here: ask where the leader is and go there.
                (Some(hash), Some(locator)) if self.router.region_for_hash(hash).is_none() => {
                    match locator.leader_store(hash).await {
                        Some(store_id) if store_id != self.store_id => {
                            let response = self.forward(store_id, &request, deadline).await;
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
                _ => self.execute_local(&request, deadline).await,
            };
            if let Some(store_id) = leader_elsewhere(&response, self.store_id) {
                response = self.forward(store_id, &request, deadline).await;
            }
            if !is_retryable(&response) {
                return response;
            }
            let now = Instant::now();
            if now + backoff >= deadline {
                return raftstore::timeout(format!(
                    "no leader answered within {} ms: {}",
                    self.request_timeout.as_millis(),
                    error_message(&response)
                ));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
        }
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

    /// Executes `request` on this node only; never forwards.
    pub async fn execute_local(&self, request: &KvRequest, deadline: Instant) -> KvResponse {
        let Some(op) = &request.op else {
            return raftstore::other_error("request has no operation".into());
        };
        let Some(key) = request_key(request) else {
            return raftstore::other_error("request has no operation".into());
        };
        let Some(region) = self.router.region_for_hash(keys::key_hash(key)) else {
            // Region id 0: none here holds the key (a stale route; the caller looks again).
            return raftstore::region_not_found(0);
        };
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let command = match op {
            kv_request::Op::Get(get) if get.consistency == Consistency::Stale as i32 => {
                return self.read_local_replica(&get.key);
            }
            kv_request::Op::Get(get) => {
                // Test switch for the fault suite: a deliberately broken read path that skips
                // ReadIndex, which the linearizability checker must catch. Only compiled into
                // builds with the `failpoints` feature.
                fail::fail_point!("unsafe_local_read", |_| self.read_local_replica(&get.key));
                Command::Read {
                    request_id,
                    key: get.key.clone(),
                    reply,
                }
            }
            kv_request::Op::Put(put) => Command::Write {
                request_id,
                epoch: region.epoch,
                ops: vec![WriteOp {
                    key: put.key.clone(),
                    value: put.value.clone(),
                    delete: false,
                }],
                conditions: vec![],
                reply,
            },
            kv_request::Op::Delete(delete) => Command::Write {
                request_id,
                epoch: region.epoch,
                ops: vec![WriteOp {
                    key: delete.key.clone(),
                    value: Default::default(),
                    delete: true,
                }],
                conditions: vec![],
                reply,
            },
            kv_request::Op::Cas(cas) => Command::Write {
                request_id,
                epoch: region.epoch,
                ops: vec![WriteOp {
                    key: cas.key.clone(),
                    value: cas.new_value.clone(),
                    delete: cas.delete,
                }],
                conditions: vec![Condition {
                    key: cas.key.clone(),
                    absent: cas.expect_absent,
                    value: cas.expected_value.clone(),
                }],
                reply,
            },
        };
        match self.router.send(region.id, PeerMsg::Command(command)) {
            Ok(()) => {}
            Err(SendError::RegionNotFound(_)) => return raftstore::region_not_found(region.id),
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
                "region {} stopped before answering (outcome unknown for writes)",
                region.id
            )),
            Err(_) => raftstore::timeout(format!(
                "region {} did not answer within {} ms (outcome unknown for writes)",
                region.id,
                self.request_timeout.as_millis()
            )),
        }
    }
}

impl KvService {
    fn read_local_replica(&self, key: &[u8]) -> KvResponse {
        match self.engine.get_user_value(key) {
            Ok(value) => raftstore::get_result(value),
            Err(err) => raftstore::other_error(format!("read failed: {err}")),
        }
    }
}

fn request_key(request: &KvRequest) -> Option<&[u8]> {
    Some(match request.op.as_ref()? {
        kv_request::Op::Get(get) => &get.key,
        kv_request::Op::Put(put) => &put.key,
        kv_request::Op::Delete(delete) => &delete.key,
        kv_request::Op::Cas(cas) => &cas.key,
    })
}

fn is_write(request: &KvRequest) -> bool {
    !matches!(request.op, Some(kv_request::Op::Get(_)) | None)
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
