//! A ringkv node: the raftstore, the QUIC transport and the client-facing HTTP server
//! (plaintext or TLS), wired together. This is the top of the dependency stack; nothing below
//! imports it.

mod client_tls;
mod expiry;
mod grpc;
mod http;
mod kv;
pub mod limits;
mod listener;
pub mod placement;

pub use client_tls::{ClientTls, ClientTlsError};
pub use http::{collect_region_status, percent_decode_strict};
pub use kv::{KvService, RegionLocator};
pub use limits::Limits;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineOptions};
use crate::proto::raft_serverpb::RaftMessage;
use crate::raftstore::{PeerMsg, RaftSender, RaftStore, Router, StoreConfig};
use crate::region::static_bootstrap_regions;
use crate::transport::{tls::TlsMaterial, RaftInbox, Transport, TransportConfig};

/// How a node learns who is in the cluster.
#[derive(Clone, Debug)]
pub enum Membership {
    /// A fixed list: store `i + 1` listens for raft at `cluster[i]` (raftexample's way).
    Static {
        store_id: u64,
        cluster: Vec<SocketAddr>,
    },
    /// The placement service at `endpoint` hands out the store id and knows every store.
    Placement {
        endpoint: String,
        raft_addr: SocketAddr,
        /// Seconds between heartbeats to placement.
        heartbeat_interval: Duration,
    },
}

/// Default size past which a region is split (TiKV's default too).
pub const DEFAULT_REGION_SPLIT_SIZE: u64 = 96 * 1024 * 1024;
/// Default key count past which a region is split (TiKV's default too).
pub const DEFAULT_REGION_SPLIT_KEYS: u64 = 960_000;
/// Default sustained load (keys read + written per second) past which a region is split.
pub const DEFAULT_REGION_SPLIT_LOAD: u64 = 3_000;

pub use placement::SplitPolicy;

/// Default free space kept in reserve: writes stop before the disk fills up.
pub const DEFAULT_RESERVE_SPACE_BYTES: u64 = 512 * 1024 * 1024;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub membership: Membership,
    /// When a region this node leads is split on its own (placement mode).
    pub split: placement::SplitPolicy,
    /// Client writes are refused while the data dir's file system has less free space than
    /// this (0 = never).
    pub reserve_space_bytes: u64,
    pub http_addr: SocketAddr,
    /// TLS on `http_addr` (HTTP/1.1 and HTTP/2 over ALPN); `None` serves plaintext.
    pub client_tls: Option<ClientTls>,
    pub data_dir: PathBuf,
    pub initial_regions: u64,
    pub raft_tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub raft_log_gc_threshold: u64,
    /// Bytes of raft log a region keeps before compacting, whatever the entry count.
    pub raft_log_gc_size: u64,
    pub pollers: usize,
    /// How the node's RocksDB is tuned.
    pub engine: EngineOptions,
    /// Idle regions stop ticking until traffic wakes them.
    pub hibernate_regions: bool,
    /// See `StoreConfig::raft_sync_interval`.
    pub raft_sync_interval: std::time::Duration,
    /// See `StoreConfig::raft_sync_batch_writes`.
    pub raft_sync_batch_writes: u64,
    /// Leaders answer linearizable reads under a quorum-confirmed lease.
    pub lease_reads: bool,
    pub limits: Limits,
    pub request_timeout: Duration,
    /// Between passes deleting expired keys of the regions this node leads (zero: never).
    pub expired_reclaim_interval: Duration,
}

impl NodeConfig {
    pub fn raft_addr(&self) -> Option<SocketAddr> {
        match &self.membership {
            Membership::Static { store_id, cluster } => {
                let index = usize::try_from(store_id.checked_sub(1)?).ok()?;
                cluster.get(index).copied()
            }
            Membership::Placement { raft_addr, .. } => Some(*raft_addr),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("store id {0} has no address in --cluster (ids are 1-based positions in the list)")]
    NoRaftAddr(u64),
    #[error("opening the engine in {path}: {source}")]
    Engine {
        path: String,
        source: crate::engine::EngineError,
    },
    #[error("starting the raftstore: {0}")]
    Store(#[from] crate::raftstore::StoreError),
    #[error("starting the transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    #[error("binding HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("placement: {0}")]
    Placement(String),
}

/// Delivers the transport's incoming messages to the router once the store has started
/// (the transport must exist first, because the store sends through it).
#[derive(Default)]
struct RouterInbox(OnceLock<Arc<Router>>);

impl RaftInbox for RouterInbox {
    fn deliver(&self, msg: RaftMessage) {
        if let Some(router) = self.0.get() {
            router.deliver_raft(msg);
        }
    }

    fn report_unreachable(&self, region_id: u64, to_peer_id: u64) {
        if let Some(router) = self.0.get() {
            let _ = router.send(region_id, PeerMsg::Unreachable { to_peer_id });
        }
    }

    fn report_snapshot(&self, region_id: u64, to_peer_id: u64, ok: bool) {
        if let Some(router) = self.0.get() {
            let _ = router.send(region_id, PeerMsg::SnapshotStatus { to_peer_id, ok });
        }
    }
}

struct TransportSender(Transport);

impl RaftSender for TransportSender {
    fn send(&self, msg: RaftMessage) {
        self.0.send(msg);
    }
}

/// Forwarded requests arrive before the KV service exists; they wait for it.
#[derive(Default)]
struct LateForwardHandler(OnceLock<kv::ForwardedRequests>);

impl crate::transport::ForwardHandler for LateForwardHandler {
    fn handle(
        &self,
        req: crate::proto::raft_serverpb::ForwardRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::proto::raft_serverpb::ForwardResponse> + Send>,
    > {
        match self.0.get() {
            Some(handler) => handler.handle(req),
            None => Box::pin(async {
                crate::proto::raft_serverpb::ForwardResponse {
                    response: Some(crate::raftstore::server_is_busy("node is starting", 100)),
                }
            }),
        }
    }
}

/// How often the free space of the data dir is checked.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps `disk_low` current: set while the data dir's file system has less than `reserve`
/// bytes free (for unprivileged users), which makes the raftstore refuse client writes to
/// every region with a replica here — long before RocksDB could fail a write for lack of
/// space (which would stop the node). Cleared when space is freed.
async fn watch_disk(
    data_dir: PathBuf,
    reserve: u64,
    disk_low: Arc<std::sync::atomic::AtomicBool>,
    store_id: u64,
) {
    use std::sync::atomic::Ordering;
    if reserve == 0 {
        return;
    }
    let mut ticker = tokio::time::interval(DISK_CHECK_INTERVAL);
    loop {
        ticker.tick().await;
        let Ok(fs) = rustix::fs::statvfs(&data_dir) else {
            continue;
        };
        let available = fs.f_bavail * fs.f_frsize;
        let low = available < reserve;
        if low != disk_low.swap(low, Ordering::Relaxed) {
            if low {
                tracing::warn!(
                    store = store_id,
                    available,
                    reserve,
                    "disk almost full: refusing client writes until space is freed"
                );
            } else {
                tracing::info!(
                    store = store_id,
                    available,
                    reserve,
                    "disk space back above the reserve: writes accepted again"
                );
            }
        }
        metrics::gauge!("ringkv_store_disk_low", "store" => store_id.to_string()).set(if low {
            1.0
        } else {
            0.0
        });
    }
}

/// The process-wide Prometheus recorder (installed once; every node in the process shares it).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            // Histograms with buckets (not summaries), so they aggregate across nodes and
            // `histogram_quantile` works in alerts and dashboards.
            const SECONDS: [f64; 14] = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            const BYTES: [f64; 10] = [
                256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
                16777216.0, 67108864.0,
            ];
            const COUNTS: [f64; 10] = [
                1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &BYTES))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), &COUNTS)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_reads".into()), &COUNTS))
                .map_err(|err| tracing::warn!(%err, "metrics buckets not set"))
                .ok()?
                .install_recorder()
                .map_err(|err| tracing::warn!(%err, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// A running node.
pub struct Node {
    pub store_id: u64,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    store: RaftStore,
    transport: Transport,
    http: JoinHandle<()>,
    heartbeats: Option<JoinHandle<()>>,
    disk_monitor: JoinHandle<()>,
    expiry: Option<JoinHandle<()>>,
    http_shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    pub async fn start(cfg: NodeConfig, tls: TlsMaterial) -> Result<Node, NodeError> {
        let raft_addr = match &cfg.membership {
            Membership::Static { store_id, .. } => {
                cfg.raft_addr().ok_or(NodeError::NoRaftAddr(*store_id))?
            }
            Membership::Placement { raft_addr, .. } => *raft_addr,
        };
        let data_dir_error = |source| NodeError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(data_dir_error)?;
        let db_path = cfg.data_dir.join("db");
        let engine =
            Engine::open_with(&db_path, &cfg.engine).map_err(|source| NodeError::Engine {
                path: db_path.display().to_string(),
                source,
            })?;
        let snap_dir = cfg.data_dir.join("snap");

        // Who we are, whom we know, and which regions a new cluster starts with.
        let (store_id, store_addrs, initial, link) = match &cfg.membership {
            Membership::Static { store_id, cluster } => {
                let store_ids: Vec<u64> = (1..=cluster.len() as u64).collect();
                let addrs: HashMap<u64, SocketAddr> = cluster
                    .iter()
                    .enumerate()
                    .map(|(i, addr)| (i as u64 + 1, *addr))
                    .collect();
                let initial = static_bootstrap_regions(cfg.initial_regions.max(1), &store_ids);
                (*store_id, addrs, initial, None)
            }
            Membership::Placement { endpoint, .. } => {
                let link = placement::PlacementLink::connect(endpoint).await?;
                let advertised = placement::Advertised {
                    raft_addr: raft_addr.to_string(),
                    http_addr: cfg.http_addr.to_string(),
                };
                let store_id =
                    placement::join(&link, &engine, &advertised, cfg.initial_regions).await?;
                let addrs = HashMap::from([(store_id, raft_addr)]);
                (store_id, addrs, Vec::new(), Some(link))
            }
        };

        let inbox = Arc::new(RouterInbox::default());
        let forward = Arc::new(LateForwardHandler::default());
        let transport = Transport::start(
            TransportConfig {
                store_id,
                listen_addr: raft_addr,
                store_addrs,
                tls,
                snap_dir: snap_dir.clone(),
                queue_capacity: 8192,
            },
            inbox.clone(),
            forward.clone(),
        )
        .await?;

        let mut store_cfg = StoreConfig::new(store_id, snap_dir);
        store_cfg.raft_tick_ms = cfg.raft_tick_ms;
        store_cfg.election_ticks = cfg.election_ticks;
        store_cfg.heartbeat_ticks = cfg.heartbeat_ticks;
        store_cfg.raft_log_gc_threshold = cfg.raft_log_gc_threshold;
        store_cfg.raft_log_gc_size = cfg.raft_log_gc_size;
        store_cfg.pollers = cfg.pollers;
        store_cfg.hibernate_regions = cfg.hibernate_regions;
        store_cfg.raft_sync_interval = cfg.raft_sync_interval;
        store_cfg.raft_sync_batch_writes = cfg.raft_sync_batch_writes;
        store_cfg.lease_reads = cfg.lease_reads;
        let disk_monitor = tokio::spawn(watch_disk(
            cfg.data_dir.clone(),
            cfg.reserve_space_bytes,
            store_cfg.disk_low.clone(),
            store_id,
        ));
        let sender = Arc::new(TransportSender(transport.clone()));
        let store = RaftStore::start(store_cfg, engine.clone(), initial, sender)?;
        let _ = inbox.0.set(store.router.clone());

        let kv = Arc::new(KvService::new(
            store_id,
            store.router.clone(),
            engine.clone(),
            cfg.request_timeout,
        ));
        kv.set_transport(transport.clone());
        let _ = forward.0.set(kv::ForwardedRequests(kv.clone()));
        let heartbeats = match (&cfg.membership, link) {
            (
                Membership::Placement {
                    heartbeat_interval, ..
                },
                Some(link),
            ) => {
                let locator = Arc::new(placement::PlacementLocator::new(link.clone()));
                kv.set_locator(locator.clone());
                let heartbeats = placement::Heartbeats {
                    link,
                    store_id,
                    kv: kv.clone(),
                    transport: transport.clone(),
                    locator,
                    engine: engine.clone(),
                    data_dir: cfg.data_dir.clone(),
                    split: cfg.split,
                    measured: Default::default(),
                };
                Some(tokio::spawn(tracing::Instrument::instrument(
                    heartbeats.run(*heartbeat_interval),
                    tracing::info_span!("store", store = store_id),
                )))
            }
            _ => None,
        };

        let state = http::HttpState {
            kv: kv.clone(),
            limits: cfg.limits,
            store_id,
            raft_addr: raft_addr.to_string(),
            metrics: metrics_handle(),
            data_dir: cfg.data_dir.clone(),
        };
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|source| NodeError::Http {
                addr: cfg.http_addr,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| NodeError::Http {
            addr: cfg.http_addr,
            source,
        })?;
        let (http_shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let expiry = (!cfg.expired_reclaim_interval.is_zero()).then(|| {
            tokio::spawn(tracing::Instrument::instrument(
                expiry::run(kv.clone(), cfg.expired_reclaim_interval),
                tracing::info_span!("store", store = store_id),
            ))
        });
        // gRPC and HTTP share the port; tonic's router brings a fallback of its own, replaced
        // by the HTTP API's JSON 404.
        let app = grpc::routes(kv.clone(), cfg.limits)
            .merge(http::router(state))
            .fallback(http::not_found);
        let tls = cfg.client_tls.as_ref().map(ClientTls::server_config);
        let http = tokio::spawn(listener::serve(listener, app, tls, async move {
            let _ = shutdown_rx.await;
        }));
        let client_tls = match &cfg.client_tls {
            None => "off",
            Some(tls) if tls.requires_client_certificates() => "client certificates required",
            Some(_) => "server certificate only",
        };
        tracing::info!(store = store_id, %http_addr, %raft_addr, client_tls, "node started");
        Ok(Node {
            store_id,
            http_addr,
            raft_addr,
            store,
            transport,
            http,
            heartbeats,
            disk_monitor,
            expiry,
            http_shutdown: Some(http_shutdown),
        })
    }

    /// Stops serving clients, then the raftstore (its pollers finish their round), then the
    /// transport.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.http_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(heartbeats) = self.heartbeats.take() {
            heartbeats.abort();
        }
        self.disk_monitor.abort();
        if let Some(expiry) = self.expiry.take() {
            expiry.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.http).await;
        let mut store = self.store;
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .ok();
        self.transport.shutdown().await;
        tracing::info!(store = self.store_id, "node stopped");
    }
}
