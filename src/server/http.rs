//! The HTTP API (raftexample's, done properly):
//!
//! | request | success | notes |
//! |---|---|---|
//! | `PUT /kv/{key}` body=value | 204 | after commit by a quorum and apply |
//! | `GET /kv/{key}` | 200 + value, 404 | linearizable (ReadIndex); `?consistency=stale` reads the local replica |
//! | `DELETE /kv/{key}` | 204 | |
//! | `PUT /kv/{key}?prevValue=V` body=value | 204, 412 | compare-and-swap: only if the key holds `V` (percent-encoded) |
//! | `PUT /kv/{key}?prevExist=false` body=value | 204, 412 | create: only if the key is absent |
//! | `DELETE /kv/{key}?prevValue=V` | 204, 412 | delete only if the key holds `V` |
//! | `GET /health` | 200 | |
//! | `GET /status` | 200 JSON | store id, regions, leaders, raft positions |
//! | `GET /metrics` | 200 | Prometheus text |
//!
//! Keys are the percent-decoded bytes of the path after `/kv/`. Every error has the body
//! `{"error":{"code":"...","message":"..."}}`; the mapping from errors to status codes lives
//! in `error_response` and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::json;
use tokio::sync::oneshot;

use super::kv::KvService;
use crate::proto::kvpb::{
    kv_request, kv_response, region_error, CasRequest, Consistency, DeleteRequest, GetRequest,
    KvRequest, KvResponse, PutRequest,
};
use crate::raftstore::{PeerMsg, RegionStatus};

/// Size limits on client input.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
        }
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub kv: Arc<KvService>,
    pub limits: Limits,
    pub store_id: u64,
    pub raft_addr: String,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Its file system's capacity and free space are exported.
    pub data_dir: std::path::PathBuf,
}

pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/kv", any(kv_handler))
        .route("/kv/", any(kv_handler))
        .route("/kv/{*key}", any(kv_handler))
        .route(
            "/health",
            get(|| async { Json200(json!({"status": "ok"})) }),
        )
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .fallback(|| async {
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /kv/{key}, /status, /health, /metrics",
            )
        })
        .with_state(state)
}

struct Json200(serde_json::Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

/// The one place errors become HTTP status codes.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
    }
    response
}

fn kv_response_to_http(response: KvResponse) -> Response {
    match response.result {
        Some(kv_response::Result::Done(_)) => StatusCode::NO_CONTENT.into_response(),
        Some(kv_response::Result::Get(get)) if get.found => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Body::from(get.value),
        )
            .into_response(),
        Some(kv_response::Result::Cas(cas)) if cas.succeeded => {
            StatusCode::NO_CONTENT.into_response()
        }
        Some(kv_response::Result::Cas(cas)) => error_response(
            StatusCode::PRECONDITION_FAILED,
            "compare_failed",
            if cas.found {
                "the key holds a different value"
            } else {
                "the key does not exist"
            },
        ),
        Some(kv_response::Result::Get(_)) => error_response(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "the key does not exist",
        ),
        Some(kv_response::Result::RegionError(err)) => {
            let code = match err.error {
                Some(region_error::Error::NotLeader(_)) => "no_leader",
                Some(region_error::Error::EpochNotMatch(_)) => "epoch_not_match",
                Some(region_error::Error::RegionNotFound(_)) => "region_not_found",
                Some(region_error::Error::ServerIsBusy(_)) => "server_is_busy",
                Some(region_error::Error::Timeout(_)) => "timeout",
                None => "unavailable",
            };
            error_response(StatusCode::SERVICE_UNAVAILABLE, code, &err.message)
        }
        Some(kv_response::Result::DiskFull(full)) => {
            error_response(StatusCode::INSUFFICIENT_STORAGE, "disk_full", &full.message)
        }
        Some(kv_response::Result::OtherError(message)) => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &message)
        }
        None => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "empty response",
        ),
    }
}

/// Strict percent-decoding: `%` must be followed by two hex digits.
pub fn percent_decode_strict(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[allow(clippy::result_large_err)]
fn consistency_of(query: Option<&str>) -> Result<Consistency, Response> {
    let mut consistency = Consistency::Linearizable;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        consistency = match (name, value) {
            ("consistency", "linearizable") => Consistency::Linearizable,
            ("consistency", "stale") => Consistency::Stale,
            ("consistency", other) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    &format!("consistency must be linearizable or stale, not {other:?}"),
                ))
            }
            _ => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    &format!("unknown query parameter {name:?}"),
                ))
            }
        };
    }
    Ok(consistency)
}

async fn kv_handler(
    State(state): State<HttpState>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let op = match method {
        Method::GET => "get",
        Method::PUT => "put",
        Method::DELETE => "delete",
        _ => {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("{method} is not supported on /kv; use GET, PUT or DELETE"),
            )
        }
    };
    let response = match build_request(&state, &method, &uri, query.as_deref(), body).await {
        Ok(request) => kv_response_to_http(state.kv.execute(request).await),
        Err(response) => response,
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("ringkv_http_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("ringkv_http_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The precondition of a conditional PUT or DELETE, from `prevValue=V` / `prevExist=false`
/// (etcd v2's names).
enum Precondition {
    None,
    Absent,
    Value(Vec<u8>),
}

#[allow(clippy::result_large_err)]
fn precondition_of(query: Option<&str>, method: &Method) -> Result<Precondition, Response> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_query", &message);
    let mut precondition = Precondition::None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let next = match name {
            "prevValue" => Precondition::Value(
                percent_decode_strict(value)
                    .ok_or_else(|| bad("prevValue is not valid percent-encoding".to_owned()))?,
            ),
            "prevExist" if value == "false" && *method == Method::PUT => Precondition::Absent,
            "prevExist" => {
                return Err(bad(format!(
                    "prevExist supports only prevExist=false on PUT, not {value:?} on {method}"
                )))
            }
            _ => return Err(bad(format!("unknown query parameter {name:?}"))),
        };
        if !matches!(precondition, Precondition::None) {
            return Err(bad("give at most one of prevValue and prevExist".to_owned()));
        }
        precondition = next;
    }
    Ok(precondition)
}

#[allow(clippy::result_large_err)]
async fn build_request(
    state: &HttpState,
    method: &Method,
    uri: &Uri,
    query: Option<&str>,
    body: Body,
) -> Result<KvRequest, Response> {
    let raw_key = uri.path().strip_prefix("/kv").unwrap_or("");
    let raw_key = raw_key.strip_prefix('/').unwrap_or(raw_key);
    let key = percent_decode_strict(raw_key).ok_or_else(|| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_key_encoding",
            "the key is not valid percent-encoding (% must be followed by two hex digits)",
        )
    })?;
    if key.is_empty() {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "empty_key",
            "the key must not be empty: use /kv/{key}",
        ));
    }
    if key.len() > state.limits.max_key_bytes {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "key_too_large",
            &format!(
                "the key has {} bytes; the limit is {}",
                key.len(),
                state.limits.max_key_bytes
            ),
        ));
    }
    let op = match *method {
        Method::GET => kv_request::Op::Get(GetRequest {
            key: key.into(),
            consistency: consistency_of(query)? as i32,
        }),
        Method::PUT => {
            let limit = state.limits.max_value_bytes;
            let value = axum::body::to_bytes(body, limit).await.map_err(|_| {
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    &format!("the value exceeds the limit of {limit} bytes"),
                )
            })?;
            match precondition_of(query, method)? {
                Precondition::None => kv_request::Op::Put(PutRequest {
                    key: key.into(),
                    value,
                }),
                Precondition::Absent => kv_request::Op::Cas(CasRequest {
                    key: key.into(),
                    expect_absent: true,
                    new_value: value,
                    ..Default::default()
                }),
                Precondition::Value(expected) => kv_request::Op::Cas(CasRequest {
                    key: key.into(),
                    expected_value: expected.into(),
                    new_value: value,
                    ..Default::default()
                }),
            }
        }
        _ => match precondition_of(query, method)? {
            Precondition::Value(expected) => kv_request::Op::Cas(CasRequest {
                key: key.into(),
                expected_value: expected.into(),
                delete: true,
                ..Default::default()
            }),
            _ => kv_request::Op::Delete(DeleteRequest { key: key.into() }),
        },
    };
    Ok(KvRequest { op: Some(op) })
}

async fn status_handler(State(state): State<HttpState>) -> Response {
    let regions = collect_region_status(&state.kv, Duration::from_secs(2)).await;
    Json200(json!({
        "store_id": state.store_id,
        "raft_addr": state.raft_addr,
        "regions": regions,
    }))
    .into_response()
}

/// Asks every local peer for its status; a peer that does not answer in time is omitted.
pub async fn collect_region_status(kv: &KvService, timeout: Duration) -> Vec<RegionStatus> {
    let mut waiting = Vec::new();
    for region in kv.router().regions() {
        let (tx, rx) = oneshot::channel();
        if kv.router().send(region.id, PeerMsg::Status(tx)).is_ok() {
            waiting.push(rx);
        }
    }
    let mut statuses = Vec::with_capacity(waiting.len());
    for rx in waiting {
        if let Ok(Ok(status)) = tokio::time::timeout(timeout, rx).await {
            statuses.push(status);
        }
    }
    statuses
}

async fn metrics_handler(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            refresh_store_gauges(&state).await;
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        ),
    }
}

/// Point-in-time figures, computed when scraped: regions and leaders here, the largest gap
/// between a region's commit and apply index, and RocksDB's memtable, SST and pending
/// compaction bytes per column family. Labelled by store (several stores may share one
/// process, as in `ringkv demo`).
async fn refresh_store_gauges(state: &HttpState) {
    let store = state.store_id.to_string();
    let statuses = collect_region_status(&state.kv, Duration::from_secs(2)).await;
    let leaders = statuses.iter().filter(|s| s.is_leader).count();
    let leaderless = statuses.iter().filter(|s| s.leader_peer_id == 0).count();
    metrics::gauge!("ringkv_store_regions_without_leader", "store" => store.clone())
        .set(leaderless as f64);
    if let Ok(fs) = rustix::fs::statvfs(&state.data_dir) {
        metrics::gauge!("ringkv_store_capacity_bytes", "store" => store.clone())
            .set((fs.f_blocks * fs.f_frsize) as f64);
        metrics::gauge!("ringkv_store_available_bytes", "store" => store.clone())
            .set((fs.f_bavail * fs.f_frsize) as f64);
    }
    let max_lag = statuses
        .iter()
        .map(|s| s.commit_index.saturating_sub(s.applied_index))
        .max()
        .unwrap_or(0);
    metrics::gauge!("ringkv_store_regions", "store" => store.clone()).set(statuses.len() as f64);
    metrics::gauge!("ringkv_store_leaders", "store" => store.clone()).set(leaders as f64);
    metrics::gauge!("ringkv_raft_max_apply_lag_entries", "store" => store.clone())
        .set(max_lag as f64);
    let engine = state.kv.engine();
    for cf in crate::engine::CF_NAMES {
        for (metric, property) in [
            (
                "ringkv_rocksdb_memtable_bytes",
                "rocksdb.cur-size-all-mem-tables",
            ),
            ("ringkv_rocksdb_sst_bytes", "rocksdb.total-sst-files-size"),
            (
                "ringkv_rocksdb_pending_compaction_bytes",
                "rocksdb.estimate-pending-compaction-bytes",
            ),
        ] {
            let value = engine.property_u64(cf, property).unwrap_or(0);
            metrics::gauge!(metric, "store" => store.clone(), "cf" => cf).set(value as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode_strict("a%2Fb"), Some(b"a/b".to_vec()));
        assert_eq!(percent_decode_strict("%00%ff"), Some(vec![0, 255]));
        assert_eq!(percent_decode_strict("plain"), Some(b"plain".to_vec()));
        assert_eq!(percent_decode_strict("a%zz"), None);
        assert_eq!(percent_decode_strict("%4"), None);
        assert_eq!(percent_decode_strict("%"), None);
        assert_eq!(percent_decode_strict("%+1"), None);
    }
}
