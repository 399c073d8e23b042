//! Runs placement: the gRPC service on one address, `/status`, `/metrics` and the `/ring`
//! page over HTTP on another, both stopped by [`RunningPlacement::shutdown`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use ringkv_proto::placementpb::placement_server::PlacementServer;
use ringkv_proto::placementpb::StoreState;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{PlacementError, Result};
use crate::service::PlacementService;
use crate::state::{ClusterState, PlacementConfig};

/// Where placement listens and keeps its state.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// gRPC address (port 0 picks one; see [`RunningPlacement::grpc_addr`]).
    pub listen: SocketAddr,
    /// HTTP address for `/status`, `/metrics` and `/ring`; `None` serves no HTTP.
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub placement: PlacementConfig,
}

pub struct RunningPlacement {
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningPlacement {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops serving and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        tracing::info!("placement stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| PlacementError::Io {
            path: format!("listening on {addr}"),
            source: e,
        })
}

/// Opens the state in `cfg.data_dir` and starts serving.
pub async fn start(
    cfg: ServeConfig,
    metrics: Option<PrometheusHandle>,
) -> Result<RunningPlacement> {
    let state = Arc::new(Mutex::new(ClusterState::open(
        &cfg.data_dir,
        cfg.placement.clone(),
        Instant::now(),
    )?));
    let listener = bind(cfg.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|e| PlacementError::Io {
        path: "gRPC listener".into(),
        source: e,
    })?;
    let mut stop = vec![];
    let mut tasks = vec![];

    let (stop_grpc, stopped) = oneshot::channel::<()>();
    stop.push(stop_grpc);
    let service = PlacementServer::new(PlacementService::new(state.clone()));
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "placement gRPC server failed");
        }
    }));

    // Store state changes that no request reveals (a store going silent) are logged here.
    let watched = state.clone();
    let (stop_watch, mut stopped_watch) = oneshot::channel::<()>();
    stop.push(stop_watch);
    tasks.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker.tick() => watched.lock().log_store_state_changes(Instant::now()),
                _ = &mut stopped_watch => return,
            }
        }
    }));

    let mut http_addr = None;
    if let Some(addr) = cfg.http_addr {
        let listener = bind(addr).await?;
        http_addr = listener.local_addr().ok();
        let (stop_http, stopped) = oneshot::channel::<()>();
        stop.push(stop_http);
        let app = axum::Router::new()
            .route("/", get(|| async { Redirect::temporary("/ring") }))
            .route("/ring", get(ring_page))
            .route("/status", get(status))
            .route("/metrics", get(render_metrics))
            .route("/health", get(|| async { "ok" }))
            .with_state(HttpState { state, metrics });
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "placement HTTP server failed");
            }
        }));
    }
    tracing::info!(%grpc_addr, http = ?http_addr, "placement serving");
    Ok(RunningPlacement {
        grpc_addr,
        http_addr,
        stop,
        tasks,
    })
}

#[derive(Clone)]
struct HttpState {
    state: Arc<Mutex<ClusterState>>,
    metrics: Option<PrometheusHandle>,
}

fn store_state_name(state: i32) -> &'static str {
    match StoreState::try_from(state) {
        Ok(StoreState::Up) => "up",
        Ok(StoreState::Down) => "down",
        Ok(StoreState::Tombstone) => "tombstone",
        Ok(StoreState::Offline) => "offline",
        Err(_) => "unknown",
    }
}

async fn status(State(http): State<HttpState>) -> Response {
    let state = http.state.lock();
    let now = Instant::now();
    let stores: Vec<serde_json::Value> = state
        .stores(now)
        .into_iter()
        .map(|info| {
            let store = info.store.unwrap_or_default();
            let stats = info.stats.unwrap_or_default();
            json!({
                "id": store.id,
                "raft_addr": store.raft_addr,
                "http_addr": store.http_addr,
                "grpc_addr": store.grpc_addr,
                "state": store_state_name(info.state),
                "last_heartbeat_ms_ago": info.last_heartbeat_ms_ago,
                "region_count": stats.region_count,
                "leader_count": stats.leader_count,
                "capacity_bytes": stats.capacity_bytes,
                "available_bytes": stats.available_bytes,
                "used_bytes": stats.used_bytes,
            })
        })
        .collect();
    let regions: Vec<serde_json::Value> = state
        .scan_regions(0, 0)
        .unwrap_or_default()
        .into_iter()
        .map(|entry| {
            let region = entry.region.unwrap_or_default();
            let epoch = region.epoch.unwrap_or_default();
            let stats = entry.stats.unwrap_or_default();
            json!({
                "id": region.id,
                "start_hash": region.start_hash,
                "end_hash": region.end_hash,
                "conf_ver": epoch.conf_ver,
                "version": epoch.version,
                "peers": region.peers.iter().map(|p| json!({
                    "id": p.id, "store_id": p.store_id, "role": p.role
                })).collect::<Vec<_>>(),
                "leader_store_id": entry.leader.map_or(0, |l| l.store_id),
                "approximate_size_bytes": stats.approximate_size_bytes,
                "approximate_keys": stats.approximate_keys,
                "written_bytes_per_sec": stats.written_bytes_per_sec,
                "written_keys_per_sec": stats.written_keys_per_sec,
                "read_keys_per_sec": stats.read_keys_per_sec,
                "snapshots": state.snapshots(region.id).iter().map(|s| json!({
                    "peer_id": s.peer_id, "sent_bytes": s.sent_bytes, "total_bytes": s.total_bytes
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let operators: Vec<serde_json::Value> = state
        .operators(now)
        .into_iter()
        .map(|op| {
            json!({
                "region_id": op.region_id,
                "kind": op.kind,
                "detail": op.detail,
                "age_ms": op.age_ms,
            })
        })
        .collect();
    let stuck_joint: Vec<serde_json::Value> = state
        .stuck_joint_regions(now)
        .into_iter()
        .map(|stuck| {
            json!({
                "region_id": stuck.region_id,
                "peers": stuck.peers.iter().map(|p| json!({
                    "id": p.id, "store_id": p.store_id, "role": p.role
                })).collect::<Vec<_>>(),
                "joint_for_ms": stuck.joint_for.as_millis() as u64,
            })
        })
        .collect();
    let body = json!({
        "cluster_id": state.cluster_id(),
        "bootstrapped": state.is_bootstrapped(),
        "max_replicas": state.config().max_replicas,
        // What the ring page scales its load colors by (0: that load never makes a region hot).
        "hot_region_write_bytes_per_sec": state.config().hot_region_write_bytes_per_sec,
        "hot_region_read_keys_per_sec": state.config().hot_region_read_keys_per_sec,
        "stores": stores,
        "regions": regions,
        "operators": operators,
        "stuck_joint": stuck_joint,
    });
    drop(state);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The page an operator looks at first: the ring drawn from `/status`, which it polls. It is
/// static (all drawing happens in the browser), so it is compiled in and served as is.
const RING_PAGE: &str = include_str!("ring.html");

async fn ring_page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(RING_PAGE)).into_response()
}

async fn render_metrics(State(http): State<HttpState>) -> Response {
    let Some(handle) = &http.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled").into_response();
    };
    {
        let state = http.state.lock();
        let now = Instant::now();
        let states = [
            StoreState::Up,
            StoreState::Down,
            StoreState::Tombstone,
            StoreState::Offline,
        ];
        let infos = state.stores(now);
        for store_state in states {
            let count = infos
                .iter()
                .filter(|info| info.state == store_state as i32)
                .count();
            metrics::gauge!("ringkv_placement_stores", "state" => store_state_name(store_state as i32))
                .set(count as f64);
        }
        metrics::gauge!("ringkv_placement_regions").set(state.region_count() as f64);
        metrics::gauge!("ringkv_placement_regions_stuck_joint")
            .set(state.stuck_joint_regions(now).len() as f64);
        let oldest_ms = state
            .operators(now)
            .iter()
            .map(|op| op.age_ms)
            .max()
            .unwrap_or(0);
        metrics::gauge!("ringkv_placement_oldest_operator_age_seconds")
            .set(oldest_ms as f64 / 1000.0);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
