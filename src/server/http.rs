//! The HTTP API (raftexample's, done properly):
//!
//! | request | success | notes |
//! |---|---|---|
//! | `PUT /kv/{key}` body=value | 204 | after commit by a quorum and apply; `?ttl=SECONDS` makes the key expire |
//! | `GET /kv/{key}` | 200 + value, 404 | linearizable (ReadIndex); `?consistency=stale` reads the local replica |
//! | `DELETE /kv/{key}` | 204 | |
//! | `PUT /kv/{key}?prevValue=V` body=value | 204, 412 | compare-and-swap: only if the key holds `V` (percent-encoded) |
//! | `PUT /kv/{key}?prevExist=false` body=value | 204, 412 | create: only if the key is absent |
//! | `DELETE /kv/{key}?prevValue=V` | 204, 412 | delete only if the key holds `V` |
//! | `GET /kv?cursor=C&prefix=P&limit=N` | 200 JSON | one scan page in ring order: `{"pairs":[...],"cursor":"...","done":bool}` |
//! | `POST /batch` JSON | 200 JSON, 204 | `{"get":[keys]}` → `{"pairs":[...]}`; `{"put":{key:value},"ttl":S}` or `{"delete":[keys]}` → 204 |
//! | `GET /health` | 200 | |
//! | `GET /status` | 200 JSON | store id, regions, leaders, raft positions |
//! | `GET /metrics` | 200 | Prometheus text |
//!
//! Keys are the percent-decoded bytes of the path after `/kv/`. In JSON, a key or value is a
//! string when it is UTF-8, else given as `key_base64` / `value_base64`. Every error has the
//! body `{"error":{"code":"...","message":"..."}}`; the mapping from errors to status codes
//! lives in `error_response` and `kv_response_to_http` and nowhere else.

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
use super::limits::Limits;
use crate::proto::kvpb::{
    kv_request, kv_response, region_error, BatchDeleteRequest, BatchGetRequest, BatchPutRequest,
    CasRequest, Consistency, DeleteRequest, GetRequest, KvPair, KvRequest, KvResponse, PutRequest,
    ScanRequest,
};
use crate::raftstore::{PeerMsg, RegionStatus};

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

/// The HTTP API's routes (no fallback: the caller adds `not_found` after merging gRPC).
pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/kv", any(kv_handler))
        .route("/kv/", any(kv_handler))
        .route("/kv/{*key}", any(kv_handler))
        .route("/batch", any(batch_handler))
        .route(
            "/health",
            get(|| async { Json200(json!({"status": "ok"})) }),
        )
        .route("/status", get(status_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
}

/// What a request for no known endpoint gets.
pub async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /kv/{key}, /kv?cursor=, /batch, /status, /health, /metrics",
    )
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
        Some(kv_response::Result::BatchGet(batch)) => {
            Json200(json!({"pairs": batch.pairs.iter().map(pair_json).collect::<Vec<_>>()}))
                .into_response()
        }
        Some(kv_response::Result::Scan(page)) => Json200(json!({
            "pairs": page.pairs.iter().map(pair_json).collect::<Vec<_>>(),
            "cursor": hex_encode(&page.next_cursor),
            "done": page.done,
        }))
        .into_response(),
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

/// The query parameters of a `/kv` request. Each request kind accepts only its own
/// parameters; anything else is refused (a typo must not silently change meaning).
#[derive(Default)]
struct KvQuery {
    consistency: Option<Consistency>,
    prev_value: Option<Vec<u8>>,
    prev_exist_false: bool,
    ttl_secs: Option<u64>,
    cursor: Option<Vec<u8>>,
    prefix: Option<Vec<u8>>,
    limit: Option<u32>,
}

/// Which kind of `/kv` request a query belongs to, for the parameters it may carry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KvRoute {
    Get,
    Scan,
    Put,
    Delete,
}

impl KvRoute {
    fn allows(self, name: &str) -> bool {
        match self {
            KvRoute::Get => name == "consistency",
            KvRoute::Scan => matches!(name, "consistency" | "cursor" | "prefix" | "limit"),
            KvRoute::Put => matches!(name, "prevValue" | "prevExist" | "ttl"),
            KvRoute::Delete => name == "prevValue",
        }
    }
}

#[allow(clippy::result_large_err)]
fn parse_query(query: Option<&str>, route: KvRoute) -> Result<KvQuery, Response> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_query", &message);
    let mut parsed = KvQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !route.allows(name) {
            return Err(bad(format!(
                "unknown query parameter {name:?} for this request"
            )));
        }
        let decoded = || {
            percent_decode_strict(value)
                .ok_or_else(|| bad(format!("{name} is not valid percent-encoding")))
        };
        match name {
            "consistency" => {
                parsed.consistency = Some(match value {
                    "linearizable" => Consistency::Linearizable,
                    "stale" => Consistency::Stale,
                    other => {
                        return Err(bad(format!(
                            "consistency must be linearizable or stale, not {other:?}"
                        )))
                    }
                })
            }
            "prevValue" => parsed.prev_value = Some(decoded()?),
            "prevExist" if value == "false" => parsed.prev_exist_false = true,
            "prevExist" => {
                return Err(bad(format!(
                    "prevExist supports only prevExist=false, not {value:?}"
                )))
            }
            "ttl" => {
                parsed.ttl_secs = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "ttl must be a whole number of seconds, not {value:?}"
                    ))
                })?)
            }
            "cursor" => {
                parsed.cursor = Some(hex_decode(value).ok_or_else(|| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_cursor",
                        "the cursor is not one a scan returned (hex expected)",
                    )
                })?)
            }
            "prefix" => parsed.prefix = Some(decoded()?),
            "limit" => {
                parsed.limit = Some(value.parse().map_err(|_| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_limit",
                        &format!("limit must be a number from 1 to 1000, not {value:?}"),
                    )
                })?)
            }
            _ => return Err(bad(format!("unknown query parameter {name:?}"))),
        }
    }
    if parsed.prev_value.is_some() && parsed.prev_exist_false {
        return Err(bad("give at most one of prevValue and prevExist".to_owned()));
    }
    Ok(parsed)
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
    let (op, response) = match build_request(&state, &method, &uri, query.as_deref(), body).await {
        Ok(request) => {
            let op = if matches!(request.op, Some(kv_request::Op::Scan(_))) {
                "scan"
            } else {
                op
            };
            (op, execute(&state, request).await)
        }
        Err(response) => (op, response),
    };
    record_request(op, &response, started);
    response
}

/// Checks `request` against the limits and executes it.
async fn execute(state: &HttpState, request: KvRequest) -> Response {
    match state.limits.check(&request) {
        Ok(()) => kv_response_to_http(state.kv.execute(request).await),
        Err(invalid) => error_response(StatusCode::BAD_REQUEST, invalid.code, &invalid.message),
    }
}

fn record_request(op: &'static str, response: &Response, started: std::time::Instant) {
    let status = response.status().as_u16().to_string();
    metrics::counter!("ringkv_http_requests_total", "op" => op, "status" => status).increment(1);
    metrics::histogram!("ringkv_http_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
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
    // `/kv` itself is the scan; `/kv/` names the empty key, which is refused below.
    if uri.path() == "/kv" && *method == Method::GET {
        let query = parse_query(query, KvRoute::Scan)?;
        return Ok(KvRequest {
            op: Some(kv_request::Op::Scan(ScanRequest {
                cursor: query.cursor.unwrap_or_default().into(),
                prefix: query.prefix.unwrap_or_default().into(),
                limit: query.limit.unwrap_or(0),
                consistency: query.consistency.unwrap_or_default() as i32,
                context: None,
            })),
        });
    }
    if key.is_empty() {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "empty_key",
            "the key must not be empty: use /kv/{key}",
        ));
    }
    let key = bytes::Bytes::from(key);
    let op = match *method {
        Method::GET => {
            let query = parse_query(query, KvRoute::Get)?;
            kv_request::Op::Get(GetRequest {
                key,
                consistency: query.consistency.unwrap_or_default() as i32,
                context: None,
            })
        }
        Method::PUT => {
            let query = parse_query(query, KvRoute::Put)?;
            let limit = state.limits.max_value_bytes;
            let value = axum::body::to_bytes(body, limit).await.map_err(|_| {
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "value_too_large",
                    &format!("the value exceeds the limit of {limit} bytes"),
                )
            })?;
            let ttl_secs = query.ttl_secs.unwrap_or(0);
            match (query.prev_exist_false, query.prev_value) {
                (false, None) => kv_request::Op::Put(PutRequest {
                    key,
                    value,
                    ttl_secs,
                    context: None,
                }),
                (true, _) => kv_request::Op::Cas(CasRequest {
                    key,
                    expect_absent: true,
                    new_value: value,
                    ttl_secs,
                    ..Default::default()
                }),
                (false, Some(expected)) => kv_request::Op::Cas(CasRequest {
                    key,
                    expected_value: expected.into(),
                    new_value: value,
                    ttl_secs,
                    ..Default::default()
                }),
            }
        }
        _ => match parse_query(query, KvRoute::Delete)?.prev_value {
            Some(expected) => kv_request::Op::Cas(CasRequest {
                key,
                expected_value: expected.into(),
                delete: true,
                ..Default::default()
            }),
            None => kv_request::Op::Delete(DeleteRequest { key, context: None }),
        },
    };
    Ok(KvRequest { op: Some(op) })
}

/// The body of `POST /batch`: exactly one of `get`, `put`, `delete`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    get: Option<Vec<String>>,
    put: Option<std::collections::BTreeMap<String, String>>,
    delete: Option<Vec<String>>,
    ttl: Option<u64>,
    consistency: Option<String>,
}

async fn batch_handler(State(state): State<HttpState>, method: Method, body: Body) -> Response {
    let started = std::time::Instant::now();
    if method != Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} is not supported on /batch; use POST"),
        );
    }
    let (op, response) = match batch_request(&state, body).await {
        Ok((op, request)) => (op, execute(&state, request).await),
        Err(response) => ("batch", response),
    };
    record_request(op, &response, started);
    response
}

#[allow(clippy::result_large_err)]
async fn batch_request(
    state: &HttpState,
    body: Body,
) -> Result<(&'static str, KvRequest), Response> {
    let bad = |message: String| error_response(StatusCode::BAD_REQUEST, "bad_batch", &message);
    let limit = state.limits.max_batch_bytes * 2 + 4096;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            &format!("the batch body exceeds {limit} bytes"),
        )
    })?;
    let batch: BatchBody = serde_json::from_slice(&bytes)
        .map_err(|err| bad(format!("the body is not a batch: {err}")))?;
    let consistency = match batch.consistency.as_deref() {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("stale") => Consistency::Stale,
        Some(other) => {
            return Err(bad(format!(
                "consistency must be linearizable or stale, not {other:?}"
            )))
        }
    };
    let keys = |keys: Vec<String>| keys.into_iter().map(bytes::Bytes::from).collect();
    let (op, request) = match (batch.get, batch.put, batch.delete) {
        (Some(get), None, None) if batch.ttl.is_none() => (
            "batch_get",
            kv_request::Op::BatchGet(BatchGetRequest {
                keys: keys(get),
                consistency: consistency as i32,
                context: None,
            }),
        ),
        (None, Some(put), None) if batch.consistency.is_none() => (
            "batch_put",
            kv_request::Op::BatchPut(BatchPutRequest {
                pairs: put
                    .into_iter()
                    .map(|(key, value)| KvPair {
                        key: key.into(),
                        value: value.into(),
                    })
                    .collect(),
                ttl_secs: batch.ttl.unwrap_or(0),
                context: None,
            }),
        ),
        (None, None, Some(delete)) if batch.ttl.is_none() && batch.consistency.is_none() => (
            "batch_delete",
            kv_request::Op::BatchDelete(BatchDeleteRequest {
                keys: keys(delete),
                context: None,
            }),
        ),
        _ => {
            return Err(bad(
                "give exactly one of get (with optional consistency), put (with optional ttl) \
                 or delete"
                    .into(),
            ))
        }
    };
    Ok((op, KvRequest { op: Some(request) }))
}

/// A pair in JSON: strings when UTF-8, base64 otherwise.
fn pair_json(pair: &KvPair) -> serde_json::Value {
    use base64::Engine as _;
    let mut object = serde_json::Map::new();
    for (name, bytes) in [("key", &pair.key), ("value", &pair.value)] {
        match std::str::from_utf8(bytes) {
            Ok(text) => object.insert(name.into(), text.into()),
            Err(_) => object.insert(
                format!("{name}_base64"),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            ),
        };
    }
    serde_json::Value::Object(object)
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn status_handler(State(state): State<HttpState>) -> Response {
    let regions = collect_region_status(&state.kv, Duration::from_secs(2)).await;
    Json200(json!({
        "store_id": state.store_id,
        "raft_addr": state.raft_addr,
        // Other stores whose store heartbeats say they are low on disk.
        "low_disk_stores": state.kv.router().low_disk_stores(),
        // Other stores' vote refusal windows in ms (the smallest each said): leases here fit
        // the smallest of a region's stores.
        "vote_windows_ms": state.kv.router().vote_windows().into_iter()
            .map(|(store, ms)| json!({"store_id": store, "window_ms": ms}))
            .collect::<Vec<_>>(),
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
