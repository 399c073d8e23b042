//! The client's view of placement: region and store lookups over gRPC, trying the configured
//! endpoints in turn, with the store addresses cached (they change only when a node is
//! restarted elsewhere, which a failed connection reveals).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::connections::Connections;
use super::error::{with_sources, Error, Result};
use crate::proto::placementpb::placement_client::PlacementClient;
use crate::proto::placementpb::{
    get_region_request, GetAllStoresRequest, GetClusterInfoRequest, GetRegionRequest,
    GetStoreRequest, RegionWithLeader, RequestHeader, ScanRegionsRequest, StoreState,
};

/// A connected endpoint and the cluster id it answered with.
#[derive(Clone)]
struct Session {
    client: PlacementClient<Channel>,
    header: RequestHeader,
    endpoint: usize,
}

pub struct Placement {
    connections: Arc<Connections>,
    endpoints: Vec<String>,
    session: Mutex<Option<Session>>,
    store_addrs: Mutex<HashMap<u64, String>>,
}

impl Placement {
    /// Connects to the first endpoint that answers `GetClusterInfo` before `deadline`.
    pub async fn connect(
        endpoints: Vec<String>,
        connections: Arc<Connections>,
        deadline: Instant,
    ) -> Result<Placement> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "no placement endpoint given".to_owned(),
            ));
        }
        let placement = Placement {
            connections,
            endpoints,
            session: Mutex::new(None),
            store_addrs: Mutex::new(HashMap::new()),
        };
        placement.session(deadline).await?;
        Ok(placement)
    }

    /// The current session, or a new one with the next endpoints in turn.
    async fn session(&self, deadline: Instant) -> Result<Session> {
        if let Some(session) = self.session.lock().clone() {
            return Ok(session);
        }
        let mut failures = Vec::new();
        for endpoint in 0..self.endpoints.len() {
            let addr = &self.endpoints[endpoint];
            match self.open(addr, deadline).await {
                Ok((client, cluster_id)) => {
                    let session = Session {
                        client,
                        header: RequestHeader { cluster_id },
                        endpoint,
                    };
                    *self.session.lock() = Some(session.clone());
                    return Ok(session);
                }
                Err(why) => failures.push(format!("{addr}: {why}")),
            }
        }
        Err(Error::Placement(format!(
            "no endpoint answered: {}",
            failures.join("; ")
        )))
    }

    async fn open(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> std::result::Result<(PlacementClient<Channel>, u64), String> {
        let channel = self.connections.channel(addr).map_err(|e| e.to_string())?;
        let mut client = PlacementClient::new(channel);
        let info = timed(deadline, client.get_cluster_info(GetClusterInfoRequest {}))
            .await
            .map_err(|status| status_text(&status))?
            .into_inner();
        Ok((client, info.cluster_id))
    }

    /// Drops a session whose endpoint failed so that the next call tries the others.
    fn forget(&self, session: &Session) {
        let mut current = self.session.lock();
        if current
            .as_ref()
            .is_some_and(|s| s.endpoint == session.endpoint)
        {
            *current = None;
        }
    }

    /// Runs `call` on the current endpoint; on a transport failure, once more on the next
    /// endpoint that answers. Placement's answers are lookups, always safe to repeat.
    async fn call<T, F, Fut>(&self, deadline: Instant, call: F) -> Result<T>
    where
        F: Fn(PlacementClient<Channel>, RequestHeader) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut last = String::new();
        for _ in 0..2 {
            let session = self.session(deadline).await?;
            match timed(deadline, call(session.client.clone(), session.header)).await {
                Ok(answer) => return Ok(answer),
                Err(status) if is_unreachable(&status) => {
                    self.forget(&session);
                    last = status_text(&status);
                }
                Err(status) => return Err(Error::Placement(status_text(&status))),
            }
        }
        Err(Error::Placement(last))
    }

    /// The region holding ring position `hash`, with its leader if placement knows it.
    pub async fn region_at(&self, hash: u64, deadline: Instant) -> Result<RegionWithLeader> {
        self.call(deadline, |mut client, header| async move {
            client
                .get_region(GetRegionRequest {
                    header: Some(header),
                    by: Some(get_region_request::By::Hash(hash)),
                })
                .await
                .map(|r| r.into_inner().region)
        })
        .await?
        .filter(|r| r.region.is_some())
        .ok_or_else(|| Error::Placement(format!("no region holds hash {hash:#018x}")))
    }

    /// Up to `limit` regions in ring order from the one holding `start_hash`.
    pub async fn regions_from(
        &self,
        start_hash: u64,
        limit: u32,
        deadline: Instant,
    ) -> Result<Vec<RegionWithLeader>> {
        self.call(deadline, |mut client, header| async move {
            client
                .scan_regions(ScanRegionsRequest {
                    header: Some(header),
                    start_hash,
                    limit,
                })
                .await
                .map(|r| r.into_inner().regions)
        })
        .await
    }

    /// The gRPC address of a store (cached; the first miss loads every store's).
    pub async fn store_addr(&self, store_id: u64, deadline: Instant) -> Result<String> {
        if let Some(addr) = self.store_addrs.lock().get(&store_id) {
            return Ok(addr.clone());
        }
        if self.store_addrs.lock().is_empty() {
            let stores = self
                .call(deadline, |mut client, header| async move {
                    client
                        .get_all_stores(GetAllStoresRequest {
                            header: Some(header),
                        })
                        .await
                        .map(|r| r.into_inner().stores)
                })
                .await?;
            let mut addrs = self.store_addrs.lock();
            for info in stores {
                if let Some(store) = info
                    .store
                    .filter(|_| info.state != StoreState::Tombstone as i32)
                {
                    addrs.insert(store.id, grpc_addr(&store));
                }
            }
            if let Some(addr) = addrs.get(&store_id) {
                return Ok(addr.clone());
            }
        }
        let store = self
            .call(deadline, |mut client, header| async move {
                client
                    .get_store(GetStoreRequest {
                        header: Some(header),
                        store_id,
                    })
                    .await
                    .map(|r| r.into_inner().store)
            })
            .await?
            .and_then(|info| info.store)
            .ok_or_else(|| Error::Placement(format!("placement knows no store {store_id}")))?;
        let addr = grpc_addr(&store);
        if addr.is_empty() {
            return Err(Error::Placement(format!(
                "store {store_id} has no client address"
            )));
        }
        self.store_addrs.lock().insert(store_id, addr.clone());
        Ok(addr)
    }

    /// Forgets a store's address (it could not be reached there).
    pub fn forget_store(&self, store_id: u64) {
        self.store_addrs.lock().remove(&store_id);
    }
}

fn grpc_addr(store: &crate::proto::metapb::Store) -> String {
    if store.grpc_addr.is_empty() {
        store.http_addr.clone()
    } else {
        store.grpc_addr.clone()
    }
}

/// Runs a call with the time left until `deadline` (as gRPC's own timeout and locally).
async fn timed<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> std::result::Result<T, tonic::Status> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < MIN_CALL_TIME {
        return Err(tonic::Status::deadline_exceeded("no time left"));
    }
    match tokio::time::timeout_at(deadline, call).await {
        Ok(answer) => answer,
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "no answer before the deadline",
        )),
    }
}

/// Less time than this left: not worth starting a call.
const MIN_CALL_TIME: Duration = Duration::from_millis(1);

fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}

pub(crate) fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), with_sources(status))
}
