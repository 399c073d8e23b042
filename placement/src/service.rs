//! The gRPC face of [`ClusterState`]: checks the cluster id, takes the lock, maps errors.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ringkv_proto::placementpb::placement_server::Placement;
use ringkv_proto::placementpb::{
    get_region_request, AllocIdRequest, AllocIdResponse, AskSplitRequest, AskSplitResponse,
    BootstrapRequest, BootstrapResponse, GetAllStoresRequest, GetAllStoresResponse,
    GetClusterInfoRequest, GetClusterInfoResponse, GetOperatorsRequest, GetOperatorsResponse,
    GetRegionRequest, GetRegionResponse, GetStoreRequest, GetStoreResponse, MoveRegionRequest,
    MoveRegionResponse, PutStoreRequest, PutStoreResponse, RegionHeartbeatRequest,
    RegionHeartbeatResponse, RemoveStoreRequest, RemoveStoreResponse, ScanRegionsRequest,
    ScanRegionsResponse, SplitRegionRequest, SplitRegionResponse, StoreHeartbeatRequest,
    StoreHeartbeatResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use tonic::{Request, Response, Status};

use crate::error::{PlacementError, Result};
use crate::state::{ClusterState, RegionReport};

/// The service; cheap to clone (shares the state).
#[derive(Clone)]
pub struct PlacementService {
    state: Arc<Mutex<ClusterState>>,
}

impl PlacementService {
    pub fn new(state: Arc<Mutex<ClusterState>>) -> PlacementService {
        PlacementService { state }
    }

    /// Runs `f` on the state after the cluster id check, counting the outcome per method.
    fn call<T>(
        &self,
        method: &'static str,
        header: Option<&ringkv_proto::placementpb::RequestHeader>,
        f: impl FnOnce(&mut ClusterState) -> Result<T>,
    ) -> std::result::Result<Response<T>, Status> {
        let mut state = self.state.lock();
        let result = state.check_header(header).and_then(|()| f(&mut state));
        drop(state);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.kind(),
        };
        metrics::counter!("ringkv_placement_requests_total", "method" => method, "outcome" => outcome)
            .increment(1);
        match result {
            Ok(value) => Ok(Response::new(value)),
            Err(error) => {
                if matches!(
                    error,
                    PlacementError::StaleRegion { .. }
                        | PlacementError::ClusterMismatch { .. }
                        | PlacementError::UnknownStore(_)
                        | PlacementError::Tombstone(_)
                ) {
                    tracing::warn!(method, %error, "request refused");
                }
                Err(error.into())
            }
        }
    }
}

#[tonic::async_trait]
impl Placement for PlacementService {
    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> std::result::Result<Response<GetClusterInfoResponse>, Status> {
        let state = self.state.lock();
        Ok(Response::new(GetClusterInfoResponse {
            cluster_id: state.cluster_id(),
            bootstrapped: state.is_bootstrapped(),
            max_replicas: state.config().max_replicas,
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> std::result::Result<Response<BootstrapResponse>, Status> {
        let request = request.into_inner();
        self.call("bootstrap", request.header.as_ref(), |state| {
            let store = request
                .store
                .ok_or_else(|| PlacementError::Invalid("bootstrap needs a store".into()))?;
            state.bootstrap(store, request.regions)?;
            Ok(BootstrapResponse {})
        })
    }

    async fn alloc_id(
        &self,
        request: Request<AllocIdRequest>,
    ) -> std::result::Result<Response<AllocIdResponse>, Status> {
        let request = request.into_inner();
        if request.count > 10_000 {
            return Err(Status::invalid_argument("at most 10000 ids per request"));
        }
        self.call("alloc_id", request.header.as_ref(), |state| {
            let (first_id, count) = state.alloc_ids(request.count)?;
            Ok(AllocIdResponse { first_id, count })
        })
    }

    async fn put_store(
        &self,
        request: Request<PutStoreRequest>,
    ) -> std::result::Result<Response<PutStoreResponse>, Status> {
        let request = request.into_inner();
        self.call("put_store", request.header.as_ref(), |state| {
            let store = request
                .store
                .ok_or_else(|| PlacementError::Invalid("no store given".into()))?;
            state.put_store(store)?;
            Ok(PutStoreResponse {})
        })
    }

    async fn get_store(
        &self,
        request: Request<GetStoreRequest>,
    ) -> std::result::Result<Response<GetStoreResponse>, Status> {
        let request = request.into_inner();
        self.call("get_store", request.header.as_ref(), |state| {
            let store = state.store_info(request.store_id, Instant::now())?;
            Ok(GetStoreResponse { store: Some(store) })
        })
    }

    async fn get_all_stores(
        &self,
        request: Request<GetAllStoresRequest>,
    ) -> std::result::Result<Response<GetAllStoresResponse>, Status> {
        let request = request.into_inner();
        self.call("get_all_stores", request.header.as_ref(), |state| {
            Ok(GetAllStoresResponse {
                stores: state.stores(Instant::now()),
            })
        })
    }

    async fn store_heartbeat(
        &self,
        request: Request<StoreHeartbeatRequest>,
    ) -> std::result::Result<Response<StoreHeartbeatResponse>, Status> {
        let request = request.into_inner();
        self.call("store_heartbeat", request.header.as_ref(), |state| {
            state.store_heartbeat(
                request.store_id,
                request.stats.unwrap_or_default(),
                Instant::now(),
            )?;
            Ok(StoreHeartbeatResponse {})
        })
    }

    async fn region_heartbeat(
        &self,
        request: Request<RegionHeartbeatRequest>,
    ) -> std::result::Result<Response<RegionHeartbeatResponse>, Status> {
        let request = request.into_inner();
        self.call("region_heartbeat", request.header.as_ref(), |state| {
            let region = request
                .region
                .ok_or_else(|| PlacementError::Invalid("no region given".into()))?;
            let report = RegionReport {
                region,
                leader: request.leader,
                term: request.term,
                stats: request.stats.unwrap_or_default(),
                pending_peers: request.pending_peers,
                snapshots: request.snapshots,
            };
            state.region_heartbeat(report, Instant::now())
        })
    }

    async fn get_operators(
        &self,
        request: Request<GetOperatorsRequest>,
    ) -> std::result::Result<Response<GetOperatorsResponse>, Status> {
        let request = request.into_inner();
        self.call("get_operators", request.header.as_ref(), |state| {
            Ok(GetOperatorsResponse {
                operators: state.operators(Instant::now()),
            })
        })
    }

    async fn get_region(
        &self,
        request: Request<GetRegionRequest>,
    ) -> std::result::Result<Response<GetRegionResponse>, Status> {
        let request = request.into_inner();
        self.call("get_region", request.header.as_ref(), |state| {
            let region = match request.by {
                Some(get_region_request::By::Key(key)) => {
                    state.region_by_hash(ringkv_proto::key_hash(&key))?
                }
                Some(get_region_request::By::Hash(hash)) => state.region_by_hash(hash)?,
                Some(get_region_request::By::RegionId(id)) => state.region_by_id(id)?,
                None => {
                    return Err(PlacementError::Invalid(
                        "give a key, a hash or a region id".into(),
                    ))
                }
            };
            Ok(GetRegionResponse {
                region: Some(region),
            })
        })
    }

    async fn scan_regions(
        &self,
        request: Request<ScanRegionsRequest>,
    ) -> std::result::Result<Response<ScanRegionsResponse>, Status> {
        let request = request.into_inner();
        self.call("scan_regions", request.header.as_ref(), |state| {
            Ok(ScanRegionsResponse {
                regions: state.scan_regions(request.start_hash, request.limit)?,
            })
        })
    }

    async fn ask_split(
        &self,
        request: Request<AskSplitRequest>,
    ) -> std::result::Result<Response<AskSplitResponse>, Status> {
        let request = request.into_inner();
        self.call("ask_split", request.header.as_ref(), |state| {
            let region = request
                .region
                .ok_or_else(|| PlacementError::Invalid("no region given".into()))?;
            let (new_region_id, new_peer_ids) = state.ask_split(&region)?;
            Ok(AskSplitResponse {
                new_region_id,
                new_peer_ids,
            })
        })
    }

    async fn split_region(
        &self,
        request: Request<SplitRegionRequest>,
    ) -> std::result::Result<Response<SplitRegionResponse>, Status> {
        let request = request.into_inner();
        self.call("split_region", request.header.as_ref(), |state| {
            state.split_region(request.region_id, request.split_hash, Instant::now())?;
            Ok(SplitRegionResponse {})
        })
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> std::result::Result<Response<TransferLeaderResponse>, Status> {
        let request = request.into_inner();
        self.call("transfer_leader", request.header.as_ref(), |state| {
            state.transfer_leader(request.region_id, request.to_store_id, Instant::now())?;
            Ok(TransferLeaderResponse {})
        })
    }

    async fn move_region(
        &self,
        request: Request<MoveRegionRequest>,
    ) -> std::result::Result<Response<MoveRegionResponse>, Status> {
        let request = request.into_inner();
        self.call("move_region", request.header.as_ref(), |state| {
            state.move_region(
                request.region_id,
                request.from_store_id,
                request.to_store_id,
                Instant::now(),
            )?;
            Ok(MoveRegionResponse {})
        })
    }

    async fn remove_store(
        &self,
        request: Request<RemoveStoreRequest>,
    ) -> std::result::Result<Response<RemoveStoreResponse>, Status> {
        let request = request.into_inner();
        self.call("remove_store", request.header.as_ref(), |state| {
            state.remove_store(request.store_id, Instant::now())?;
            Ok(RemoveStoreResponse {})
        })
    }
}
