//! A node's link to the placement service: joining the cluster (store id, registration,
//! bootstrap of the first regions) and the heartbeats that keep placement's view current.
//!
//! KV traffic never waits on placement: after the join, everything here runs in a background
//! task that logs and retries while placement is away and resumes when it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::http::collect_region_status;
use super::kv::KvService;
use super::NodeError;
use crate::engine::{Engine, RegionDataStats};
use crate::proto::kvpb::kv_response;
use crate::proto::metapb::{Peer, Region, RegionEpoch, Store};
use crate::proto::placementpb::placement_client::PlacementClient;
use crate::proto::placementpb::{
    AllocIdRequest, AskSplitRequest, BootstrapRequest, ChangePeerType, GetAllStoresRequest,
    GetClusterInfoRequest, PutStoreRequest, RegionHeartbeatRequest, RegionHeartbeatResponse,
    RegionStats, RequestHeader, ScanRegionsRequest, SnapshotProgress, StoreHeartbeatRequest,
    StoreStats,
};
use crate::raftstore::{self, ChangePeer, Command, PeerMsg, RegionStatus};
use crate::region::split_ring_evenly;
use crate::transport::Transport;

/// How long the join waits between attempts while placement does not answer.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// Bound on one call to placement.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Change-triggered reports wait this long first, so a burst of changes makes one report.
const MIN_REPORT_GAP: Duration = Duration::from_millis(100);

/// A connection to placement that remembers the cluster id; cheap to clone.
#[derive(Clone)]
pub struct PlacementLink {
    client: PlacementClient<Channel>,
    cluster_id: u64,
}

fn status_error(what: &str, status: tonic::Status) -> NodeError {
    NodeError::Placement(format!("{what}: {}", status.message()))
}

impl PlacementLink {
    /// Connects to placement at `endpoint` (`host:port` or a URL), waiting until it answers.
    pub async fn connect(endpoint: &str) -> Result<PlacementLink, NodeError> {
        let url = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(url.clone())
            .map_err(|e| NodeError::Placement(format!("bad --placement {endpoint:?}: {e}")))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let mut client = PlacementClient::new(channel);
        let mut attempts = 0u64;
        loop {
            match client.get_cluster_info(GetClusterInfoRequest {}).await {
                Ok(info) => {
                    let cluster_id = info.into_inner().cluster_id;
                    tracing::info!(cluster_id, placement = %url, "connected to placement");
                    return Ok(PlacementLink { client, cluster_id });
                }
                Err(status) => {
                    if attempts % 10 == 0 {
                        tracing::warn!(placement = %url, error = %status.message(), "waiting for placement");
                    }
                    attempts += 1;
                    tokio::time::sleep(JOIN_RETRY).await;
                }
            }
        }
    }

    fn header(&self) -> Option<RequestHeader> {
        Some(RequestHeader {
            cluster_id: self.cluster_id,
        })
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    async fn alloc_ids(&self, count: u32) -> Result<Vec<u64>, NodeError> {
        let answer = self
            .client
            .clone()
            .alloc_id(AllocIdRequest {
                header: self.header(),
                count,
            })
            .await
            .map_err(|s| status_error("allocating ids", s))?
            .into_inner();
        Ok((answer.first_id..answer.first_id + u64::from(answer.count)).collect())
    }

    async fn bootstrapped(&self) -> Result<bool, NodeError> {
        Ok(self
            .client
            .clone()
            .get_cluster_info(GetClusterInfoRequest {})
            .await
            .map_err(|s| status_error("reading cluster info", s))?
            .into_inner()
            .bootstrapped)
    }
}

/// Routes keys this node holds no replica of: asks placement which store leads the region
/// holding a hash, and caches the answer (by hash range) so traffic keeps flowing while
/// placement is away.
pub struct PlacementLocator {
    link: PlacementLink,
    /// start_hash → (end_hash, leader store).
    cache: parking_lot::Mutex<std::collections::BTreeMap<u64, (u64, u64)>>,
}

impl PlacementLocator {
    pub fn new(link: PlacementLink) -> PlacementLocator {
        PlacementLocator {
            link,
            cache: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
        }
    }

    /// Replaces the cache with every region placement knows that has a leader.
    async fn refresh(&self) -> Result<(), NodeError> {
        let regions = self
            .link
            .client
            .clone()
            .scan_regions(ScanRegionsRequest {
                header: self.link.header(),
                start_hash: 0,
                limit: 0,
            })
            .await
            .map_err(|s| status_error("listing regions", s))?
            .into_inner()
            .regions;
        let routes = regions
            .into_iter()
            .filter_map(|entry| {
                let region = entry.region?;
                Some((region.start_hash, (region.end_hash, entry.leader?.store_id)))
            })
            .collect();
        *self.cache.lock() = routes;
        Ok(())
    }

    fn cached(&self, hash: u64) -> Option<u64> {
        let cache = self.cache.lock();
        let (_, &(end, store)) = cache.range(..=hash).next_back()?;
        (end == 0 || hash < end).then_some(store)
    }
}

impl super::kv::RegionLocator for PlacementLocator {
    fn leader_store(
        &self,
        hash: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send + '_>> {
        Box::pin(async move {
            if let Some(store) = self.cached(hash) {
                return Some(store);
            }
            let answer = self
                .link
                .client
                .clone()
                .get_region(crate::proto::placementpb::GetRegionRequest {
                    header: self.link.header(),
                    by: Some(crate::proto::placementpb::get_region_request::By::Hash(
                        hash,
                    )),
                })
                .await
                .ok()?
                .into_inner()
                .region?;
            let region = answer.region?;
            let store = answer.leader?.store_id;
            self.cache
                .lock()
                .insert(region.start_hash, (region.end_hash, store));
            Some(store)
        })
    }

    fn invalidate(&self, hash: u64) {
        let mut cache = self.cache.lock();
        let start = cache.range(..=hash).next_back().map(|(&start, _)| start);
        if let Some(start) = start {
            cache.remove(&start);
        }
    }
}

/// What a node tells placement about itself.
#[derive(Clone, Debug)]
pub struct Advertised {
    pub raft_addr: String,
    pub http_addr: String,
}

/// Joins the cluster: finds or gets this data dir's store id, registers the store, and — on
/// the first store of a new cluster — bootstraps the first `initial_regions` regions (locally
/// first, then at placement, so a crash in between is finished on the next start). Returns
/// the store id.
pub async fn join(
    link: &PlacementLink,
    engine: &Engine,
    advertised: &Advertised,
    initial_regions: u64,
) -> Result<u64, NodeError> {
    let (stored_store, stored_cluster) = raftstore::stored_ident(engine)?;
    if let Some(cluster) = stored_cluster {
        if cluster != link.cluster_id {
            return Err(NodeError::Placement(format!(
                "this data dir belongs to cluster {cluster}, but placement serves cluster {}",
                link.cluster_id
            )));
        }
    }
    let store_id = match (stored_store, stored_cluster) {
        (Some(store_id), Some(_)) => store_id,
        (Some(store_id), None) => {
            return Err(NodeError::Placement(format!(
                "this data dir belongs to statically configured store {store_id}; start it with --cluster"
            )))
        }
        (None, _) => {
            let store_id = link.alloc_ids(1).await?[0];
            raftstore::write_ident(engine, store_id, Some(link.cluster_id))?;
            tracing::info!(store = store_id, "new store id from placement");
            store_id
        }
    };
    let store = Store {
        id: store_id,
        raft_addr: advertised.raft_addr.clone(),
        http_addr: advertised.http_addr.clone(),
        // gRPC is served on the HTTP port.
        grpc_addr: advertised.http_addr.clone(),
    };
    let local = raftstore::stored_regions(engine)?;
    if !link.bootstrapped().await? {
        let regions = if local.is_empty() {
            let regions = new_regions(link, store_id, initial_regions).await?;
            raftstore::bootstrap_regions(engine, regions.clone())?;
            regions
        } else {
            local
        };
        let result = link
            .client
            .clone()
            .bootstrap(BootstrapRequest {
                header: link.header(),
                store: Some(store.clone()),
                regions: regions.clone(),
            })
            .await;
        match result {
            Ok(_) => {
                tracing::info!(
                    store = store_id,
                    regions = regions.len(),
                    "bootstrapped the cluster"
                );
                return Ok(store_id);
            }
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                // Another store bootstrapped first; these regions were never used.
                tracing::info!(store = store_id, "another store bootstrapped the cluster");
                raftstore::clear_bootstrapped(engine, &regions)?;
            }
            Err(status) => return Err(status_error("bootstrapping the cluster", status)),
        }
    }
    link.client
        .clone()
        .put_store(PutStoreRequest {
            header: link.header(),
            store: Some(store),
        })
        .await
        .map_err(|s| status_error("registering the store", s))?;
    Ok(store_id)
}

/// The first regions of a new cluster: the ring cut evenly, one peer each on `store_id`.
async fn new_regions(
    link: &PlacementLink,
    store_id: u64,
    count: u64,
) -> Result<Vec<Region>, NodeError> {
    let count = count.max(1);
    let ids = link.alloc_ids((2 * count) as u32).await?;
    Ok(split_ring_evenly(count)
        .into_iter()
        .zip(ids.chunks(2))
        .map(|((start, end), ids)| Region {
            id: ids[0],
            start_hash: start,
            end_hash: end,
            epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: vec![Peer {
                id: ids[1],
                store_id,
                role: 0,
            }],
        })
        .collect())
}

/// What the heartbeat task works with.
pub struct Heartbeats {
    pub link: PlacementLink,
    pub store_id: u64,
    pub kv: Arc<KvService>,
    pub transport: Transport,
    /// Its route table is refreshed with every round.
    pub locator: Arc<PlacementLocator>,
    pub engine: Engine,
    /// Where the data lives: its file system's capacity is reported.
    pub data_dir: std::path::PathBuf,
    /// When a led region is split on this node's own initiative.
    pub split: SplitPolicy,
    /// The last measurement of each led region's data and load (the split check).
    pub measured: parking_lot::Mutex<HashMap<u64, Measured>>,
}

/// Thresholds past which a region this node leads is split (each 0 = off).
#[derive(Clone, Copy, Debug, Default)]
pub struct SplitPolicy {
    /// Bytes of data (keys + values): split where the data halves.
    pub size_bytes: u64,
    /// Number of keys: split where the data halves.
    pub keys: u64,
    /// Keys read + written per second, sustained for `LOAD_SPLIT_ROUNDS` heartbeats: split
    /// where the recent accesses halve.
    pub load_keys_per_sec: u64,
}

/// One region's data as last measured, and its load since the last heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// The region's `written_bytes` and `written_keys` when measured.
    written_at: u64,
    written_keys_at: u64,
    version: u64,
    stats: RegionDataStats,
    /// Counters and time of the previous heartbeat, for rates.
    last_report: (Instant, u64, u64, u64),
    /// Consecutive heartbeats with load over the load-split threshold.
    hot_rounds: u32,
    /// When this node last asked to split the region (at `version`).
    split_asked: Option<Instant>,
}

/// Heartbeats in a row with load over the threshold before a load split.
const LOAD_SPLIT_ROUNDS: u32 = 3;
/// A region is measured again once this share of the split size was written since.
const REMEASURE_FRACTION: u64 = 8;
/// Without automatic splits, regions are measured again after this many bytes written.
const REMEASURE_BYTES_NO_SPLIT: u64 = 8 * 1024 * 1024;
/// A split asked for and not seen applied is asked for again after this long.
const SPLIT_RETRY: Duration = Duration::from_secs(30);

impl Heartbeats {
    /// Heartbeats every `interval` until the task is dropped: the store's (disk capacity and
    /// use, region and leader counts), every region this node leads, a refresh of every
    /// store's address into the transport, and of the routes the locator answers from while
    /// placement is away.
    pub async fn run(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reachable = true;
        let router = self.kv.router().clone();
        loop {
            // Periodically, and soon after a local region changed (membership, leader):
            // placement plans the next step of an operator from the report of the last one.
            tokio::select! {
                _ = ticker.tick() => {}
                _ = router.changed() => {
                    tokio::time::sleep(MIN_REPORT_GAP).await;
                }
            }
            let mut result = self.once().await;
            if result.is_ok() {
                result = self.locator.refresh().await;
            }
            match (result, reachable) {
                (Ok(()), false) => {
                    tracing::info!(store = self.store_id, "placement reachable again");
                    reachable = true;
                }
                (Err(error), true) => {
                    tracing::warn!(store = self.store_id, %error, "placement heartbeat failed; KV traffic continues, retrying");
                    reachable = false;
                }
                _ => {}
            }
        }
    }

    fn store_stats(&self, regions: usize, leaders: usize) -> StoreStats {
        let (capacity_bytes, available_bytes) = match rustix::fs::statvfs(&self.data_dir) {
            Ok(fs) => (fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize),
            Err(error) => {
                tracing::debug!(%error, "statvfs of the data dir failed");
                (0, 0)
            }
        };
        StoreStats {
            capacity_bytes,
            available_bytes,
            used_bytes: self.engine.used_bytes(),
            region_count: regions as u32,
            leader_count: leaders as u32,
        }
    }

    async fn once(&self) -> Result<(), NodeError> {
        let (link, store_id, kv) = (&self.link, self.store_id, &*self.kv);
        let mut client = link.client.clone();
        // Addresses first: an operator below may add a peer on a store that just joined.
        self.refresh_store_addrs().await?;
        let statuses = collect_region_status(kv, CALL_TIMEOUT).await;
        let leaders = statuses.iter().filter(|s| s.is_leader).count();
        client
            .store_heartbeat(StoreHeartbeatRequest {
                header: link.header(),
                store_id,
                stats: Some(self.store_stats(statuses.len(), leaders)),
            })
            .await
            .map_err(|s| status_error("store heartbeat", s))?;
        for status in statuses.iter().filter(|s| s.is_leader) {
            let Some(region) = kv.router().region(status.id) else {
                continue;
            };
            let leader = region
                .peers
                .iter()
                .find(|p| p.id == status.peer_id)
                .copied();
            let pending_peers = status
                .pending_peers
                .iter()
                .filter_map(|p| region.peers.iter().find(|r| r.id == p.id).copied())
                .collect();
            let (stats, split) = self.measure(&region, status).await;
            let snapshots = self
                .transport
                .snapshot_progress(region.id)
                .into_iter()
                .map(|(peer_id, sent_bytes, total_bytes)| SnapshotProgress {
                    peer_id,
                    sent_bytes,
                    total_bytes,
                })
                .collect();
            let request = RegionHeartbeatRequest {
                header: link.header(),
                region: Some(region.clone()),
                leader,
                term: status.term,
                stats: Some(stats),
                pending_peers,
                snapshots,
            };
            let answer = client.region_heartbeat(request).await;
            if let Some((split_hash, why)) = split {
                self.split_on_our_own(&region, split_hash, &why).await;
                continue; // the region is changing; placement's step waits for its next report
            }
            match answer {
                Ok(response) => self.execute(&region, response.into_inner()).await,
                // A refused report (e.g. placement knows a newer epoch) is placement's call;
                // the next heartbeat reports again.
                Err(status) => {
                    tracing::debug!(store = store_id, error = %status.message(), "region heartbeat refused")
                }
            }
        }
        Ok(())
    }

    /// The region's size, keys and load rates for its heartbeat. Size and keys are measured
    /// again (off the async threads) when it changed shape or enough was written since the
    /// last time, estimated otherwise. A region past a split threshold (see [`SplitPolicy`])
    /// is split, with ids asked from placement.
    async fn measure(
        &self,
        region: &Region,
        status: &RegionStatus,
    ) -> (RegionStats, Option<(u64, String)>) {
        let version = region.epoch.unwrap_or_default().version;
        let policy = self.split;
        let remeasure_after = if policy.size_bytes > 0 {
            (policy.size_bytes / REMEASURE_FRACTION).max(1)
        } else {
            REMEASURE_BYTES_NO_SPLIT
        };
        let now = Instant::now();
        let last = self
            .measured
            .lock()
            .get(&region.id)
            .copied()
            .filter(|m| m.version == version);
        let since = |m: &Measured| {
            (
                status.written_bytes.saturating_sub(m.written_at),
                status.written_keys.saturating_sub(m.written_keys_at),
            )
        };
        let over_size = |size: u64, keys: u64| {
            (policy.size_bytes > 0 && size > policy.size_bytes)
                || (policy.keys > 0 && keys > policy.keys)
        };
        let split_allowed = |m: Option<&Measured>| {
            m.and_then(|m| m.split_asked)
                .is_none_or(|asked| asked.elapsed() >= SPLIT_RETRY)
        };
        let mut measured = match last {
            Some(m)
                if since(&m).0 < remeasure_after
                    // An estimate past a threshold is checked by measuring.
                    && !(over_size(m.stats.size_bytes + since(&m).0, m.stats.keys + since(&m).1)
                        && split_allowed(Some(&m))) =>
            {
                m
            }
            _ => {
                let engine = self.engine.clone();
                let (start, end) = (region.start_hash, region.end_hash);
                let stats = match tokio::task::spawn_blocking(move || {
                    engine.region_data_stats(start, end, false)
                })
                .await
                {
                    Ok(Ok(stats)) => stats,
                    Ok(Err(error)) => {
                        tracing::warn!(region = region.id, %error, "measuring region data failed");
                        last.map(|m| m.stats).unwrap_or_default()
                    }
                    Err(_) => last.map(|m| m.stats).unwrap_or_default(),
                };
                metrics::histogram!("ringkv_region_size_bytes").record(stats.size_bytes as f64);
                Measured {
                    written_at: status.written_bytes,
                    written_keys_at: status.written_keys,
                    version,
                    stats,
                    last_report: last.map_or(
                        (
                            now,
                            status.written_bytes,
                            status.written_keys,
                            status.read_keys,
                        ),
                        |m| m.last_report,
                    ),
                    hot_rounds: last.map_or(0, |m| m.hot_rounds),
                    split_asked: last.and_then(|m| m.split_asked),
                }
            }
        };
        // Rates over the time since the previous heartbeat.
        let (then, bytes_then, keys_then, reads_then) = measured.last_report;
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let per_sec = |delta: u64| (delta as f64 / secs) as u64;
        let written_bytes_per_sec = per_sec(status.written_bytes.saturating_sub(bytes_then));
        let written_keys_per_sec = per_sec(status.written_keys.saturating_sub(keys_then));
        let read_keys_per_sec = per_sec(status.read_keys.saturating_sub(reads_then));
        measured.last_report = (
            now,
            status.written_bytes,
            status.written_keys,
            status.read_keys,
        );
        let load = written_keys_per_sec + read_keys_per_sec;
        measured.hot_rounds = if policy.load_keys_per_sec > 0 && load >= policy.load_keys_per_sec {
            measured.hot_rounds + 1
        } else {
            0
        };
        let (size, keys) = {
            let (bytes, written) = since(&measured);
            (
                measured.stats.size_bytes + bytes,
                measured.stats.keys + written,
            )
        };
        let fresh = measured.written_at == status.written_bytes;
        let split = if fresh && measured.stats.keys >= 2 && over_size(size, keys) {
            Some((0, format!("{size} bytes, {keys} keys")))
        } else if measured.hot_rounds >= LOAD_SPLIT_ROUNDS && status.load_middle_hash != 0 {
            Some((
                status.load_middle_hash,
                format!("{load} keys/s for {} heartbeats", measured.hot_rounds),
            ))
        } else {
            None
        };
        let split = split.filter(|_| split_allowed(Some(&measured)));
        self.measured.lock().insert(region.id, measured);
        let stats = RegionStats {
            approximate_size_bytes: size,
            approximate_keys: keys,
            written_bytes_per_sec,
            written_keys_per_sec,
            read_keys_per_sec,
        };
        (stats, split)
    }

    /// Splits `region` (after its heartbeat, so placement knows it) with ids from placement;
    /// once proposed, it is not asked again for `SPLIT_RETRY` unless the region changes.
    async fn split_on_our_own(&self, region: &Region, split_hash: u64, why: &str) {
        if !self.try_split(region, split_hash, why).await {
            return; // asked again at the next heartbeat
        }
        if let Some(m) = self.measured.lock().get_mut(&region.id) {
            m.split_asked = Some(Instant::now());
            m.hot_rounds = 0;
        }
    }

    /// The hash where `region`'s data halves, measured off the async threads (so the raft
    /// poller never scans a large region itself).
    async fn middle_hash(&self, region: &Region) -> Option<u64> {
        let engine = self.engine.clone();
        let (start, end) = (region.start_hash, region.end_hash);
        match tokio::task::spawn_blocking(move || engine.region_data_stats(start, end, true)).await
        {
            Ok(Ok(stats)) => stats.middle_hash,
            Ok(Err(error)) => {
                tracing::warn!(region = region.id, %error, "finding the split point failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn try_split(&self, region: &Region, split_hash: u64, why: &str) -> bool {
        let split_hash = match split_hash {
            0 => match self.middle_hash(region).await {
                Some(hash) if hash > region.start_hash => hash,
                _ => return false,
            },
            hash => hash,
        };
        let mut client = self.link.client.clone();
        let ids = match client
            .ask_split(AskSplitRequest {
                header: self.link.header(),
                region: Some(region.clone()),
            })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::info!(region = region.id, error = %status.message(), "placement refused split ids");
                return false;
            }
        };
        tracing::info!(
            region = region.id,
            why,
            "region past a split threshold; splitting"
        );
        let (reply, rx) = tokio::sync::oneshot::channel();
        let command = Command::Split {
            epoch: region.epoch.unwrap_or_default(),
            split_hash,
            new_region_id: ids.new_region_id,
            new_peer_ids: ids.new_peer_ids,
            reply,
        };
        self.send_to_region(region, command, rx).await
    }

    /// Hands `command` to the region's peer; true when it answered that it proposed it.
    async fn send_to_region(
        &self,
        region: &Region,
        command: Command,
        reply_rx: tokio::sync::oneshot::Receiver<crate::proto::kvpb::KvResponse>,
    ) -> bool {
        if self
            .kv
            .router()
            .send(region.id, PeerMsg::Command(command))
            .is_err()
        {
            return false;
        }
        match tokio::time::timeout(CALL_TIMEOUT, reply_rx).await {
            Ok(Ok(answer)) => match answer.result {
                Some(kv_response::Result::Done(_)) => true,
                other => {
                    tracing::info!(region = region.id, answer = ?other, "operator step not taken now");
                    false
                }
            },
            _ => {
                tracing::debug!(region = region.id, "operator step unanswered");
                false
            }
        }
    }

    /// Tells the transport where every other store is.
    async fn refresh_store_addrs(&self) -> Result<(), NodeError> {
        let mut client = self.link.client.clone();
        let stores = client
            .get_all_stores(GetAllStoresRequest {
                header: self.link.header(),
            })
            .await
            .map_err(|s| status_error("listing stores", s))?
            .into_inner()
            .stores;
        for info in stores {
            let Some(store) = info.store else { continue };
            if store.id == self.store_id {
                continue;
            }
            match store.raft_addr.parse() {
                Ok(addr) => self.transport.set_store_addr(store.id, addr),
                Err(_) => tracing::warn!(
                    store = store.id,
                    addr = %store.raft_addr,
                    "placement reports an unparsable raft address"
                ),
            }
        }
        Ok(())
    }

    /// Hands the operator step placement answered with to the region's leader peer. The peer
    /// checks it against the region as it is then (epoch, roles, catch-up) and proposes it;
    /// placement follows the outcome through later heartbeats.
    async fn execute(&self, region: &Region, response: RegionHeartbeatResponse) {
        let epoch = response.region_epoch.unwrap_or_default();
        if response.region_id != region.id || region.epoch != Some(epoch) {
            if response.change_peer.is_some()
                || response.transfer_leader.is_some()
                || response.split.is_some()
            {
                tracing::debug!(region = region.id, "operator for another epoch ignored");
            }
            return;
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let command = if let Some(change) = response.change_peer {
            let Some(peer) = change.peer else { return };
            let change = match ChangePeerType::try_from(change.change_type) {
                Ok(ChangePeerType::AddLearner) => ChangePeer::AddLearner,
                Ok(ChangePeerType::PromoteLearner) => ChangePeer::PromoteLearner,
                Ok(ChangePeerType::RemovePeer) => ChangePeer::RemovePeer,
                Err(_) => {
                    tracing::warn!(region = region.id, "unknown change type from placement");
                    return;
                }
            };
            Command::ChangePeer {
                epoch,
                change,
                peer,
                reply,
            }
        } else if let Some(transfer) = response.transfer_leader {
            let Some(peer) = transfer.peer else { return };
            Command::TransferLeader { epoch, peer, reply }
        } else if let Some(split) = response.split {
            // "Where the data halves" is found here rather than on the raft poller; an empty
            // region is left to the peer (it splits its range in the middle).
            let split_hash = match split.split_hash {
                0 => self.middle_hash(region).await.unwrap_or(0),
                hash => hash,
            };
            Command::Split {
                epoch,
                split_hash,
                new_region_id: split.new_region_id,
                new_peer_ids: split.new_peer_ids,
                reply,
            }
        } else {
            return;
        };
        self.send_to_region(region, command, rx).await;
    }
}
