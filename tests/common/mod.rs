//! A harness for multi-process cluster tests: real `ringkv node` processes on loopback.
//!
//! A [`Cluster`] owns one temp dir per test (certificates, one data dir and one log file per
//! node) and fresh ports. Nodes are numbered from 1, like the store ids they run as, so
//! `cluster.must_put(2, ..)` talks to the node whose `/status` says `"store_id": 2`.
//!
//! Synchronization is always "poll a condition until a deadline" ([`wait_until`]); the harness
//! never sleeps for a fixed time to let something happen. Dropping a `Cluster` SIGKILLs its
//! processes; when the test is panicking it first prints the tail of every node's log (and
//! keeps the temp dir if `RINGKV_KEEP_TEST_DIRS` is set; `=always` keeps it after a pass too).
#![allow(dead_code)] // not every test binary uses every helper

pub mod placement;
pub mod relay;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const RINGKV: &str = env!("CARGO_BIN_EXE_ringkv");

/// Raft timing for tests: 50 ms ticks, election after 20 ticks (1 s). Generous, because three
/// nodes share two cores in CI and a starved heartbeat must not look like a dead leader.
pub const RAFT_TICK_MS: u64 = 50;
pub const ELECTION_TICKS: u64 = 20;

/// How long any awaited condition (startup, election, catch-up) may take before the test fails.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waited-for condition is checked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Client-side bound on one HTTP request; above any server request timeout the tests use, so
/// a server that answers late is told apart from one that never answers.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `/health` probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times `Cluster::start` tries new ports when a node finds its port taken.
const START_ATTEMPTS: usize = 3;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Applied index of every bootstrapped region before any entry is replicated
/// (`ringkv::region::RAFT_INIT_LOG_INDEX`).
pub const INITIAL_APPLIED_INDEX: u64 = ringkv::region::RAFT_INIT_LOG_INDEX;

/// Bytes escaped when a key goes into a URL path: everything but RFC 3986 unreserved
/// characters and `/` (keys may contain `/`; the server takes the whole rest of the path).
const KEY_PATH_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

static LOCK: Mutex<()> = Mutex::new(());

/// Runs one cluster test on a fresh multi-threaded runtime, never two at once: a three-node
/// cluster already keeps two cores busy, and two clusters would starve each other's
/// heartbeats. A panic in an earlier test poisons the lock; later tests still run.
pub fn run_serially(test: impl Future<Output = ()>) {
    let _serial = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime for a test");
    runtime.block_on(test);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that value. Panics
/// after `timeout` with `what` and the last `Err` (which should describe what was observed).
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}")
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

/// Checks `check` every [`POLL_INTERVAL`] for the whole `window` and panics at the first `Err`:
/// for properties that must keep holding ("node 3 never learns a leader").
pub async fn assert_holds_for(
    what: &str,
    window: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let end = Instant::now() + window;
    let started = Instant::now();
    loop {
        if let Err(violation) = check().await {
            panic!(
                "expected {what} for {window:?}, but after {:?}: {violation}",
                started.elapsed()
            );
        }
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Knobs of a test cluster; `None` leaves the node's default.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub initial_regions: Option<u64>,
    pub raft_log_gc_threshold: Option<u64>,
    pub max_key_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    /// Nodes (1-based) whose certificate and CA come from a second, unrelated CA.
    pub foreign_ca_nodes: Vec<usize>,
    /// Put a [`relay::Relay`] on every directed node-to-node path (see [`Cluster::set_link`]).
    pub relays: bool,
    /// `FAILPOINTS` for a node's first start (node id → spec); needs a binary built with the
    /// `failpoints` feature.
    pub failpoints: BTreeMap<usize, String>,
    /// Run a `ringkv placement` process and start nodes with `--placement` (store ids then
    /// come from placement: use `/status` to map harness node numbers to store ids).
    pub placement: bool,
    /// Extra flags for the placement process (e.g. `--max-store-down-time-secs 5`).
    pub placement_args: Vec<String>,
    /// Extra flags for every node process.
    pub node_args: Vec<String>,
    /// Flag values for particular nodes (node → (flag, value)), replacing the harness's own
    /// value of that flag (e.g. another `--raft-tick-ms` on one node).
    pub node_flags: BTreeMap<usize, Vec<(String, String)>>,
    /// Data dirs for particular nodes (e.g. on a small file system), instead of one in the
    /// cluster's temp dir.
    pub node_data_dirs: BTreeMap<usize, PathBuf>,
    /// How many nodes `Cluster::start` starts (the rest with [`Cluster::restart`]); all if
    /// `None`.
    pub initial_nodes: Option<usize>,
    /// Plaintext or TLS on the nodes' client port; the harness's clients follow suit.
    pub client_port: ClientPort,
}

/// How the nodes serve their client port (`--http-addr`). With TLS the certificates are the
/// ones `ringkv certs --client-tls` writes into the cluster's certificate dir, and every
/// harness client ([`Cluster::client`]) trusts `ca.pem` and presents `client.pem` if asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientPort {
    #[default]
    Plaintext,
    /// `--client-tls-cert`/`--client-tls-key`: TLS, no client certificate asked.
    Tls,
    /// TLS plus `--client-tls-client-ca client-ca.pem`: client certificates required.
    MutualTls,
}

/// Milliseconds between a node's heartbeats to placement in tests.
const PLACEMENT_HEARTBEAT_MS: u64 = 300;

/// The placement process of a cluster started with [`ClusterOptions::placement`].
struct PlacementProc {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Mutex<Option<Child>>,
}

/// One region as a node's `/status` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct RegionStatus {
    pub id: u64,
    pub start_hash: u64,
    /// Exclusive; 0 stands for the end of the ring.
    pub end_hash: u64,
    /// 0 when this node knows no leader.
    pub leader_store_id: u64,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshots_applied: u64,
    /// Not ticking: idle (see the raftstore's hibernation).
    #[serde(default)]
    pub hibernating: bool,
    /// The length of the read lease this leader holds now (0: none).
    #[serde(default)]
    pub lease_ms: u64,
}

impl RegionStatus {
    /// True when `key` hashes into this region (xxh3-64 of the key bytes, as the server routes).
    pub fn holds_key(&self, key: &[u8]) -> bool {
        let hash = ringkv::keys::key_hash(key);
        hash >= self.start_hash && (self.end_hash == 0 || hash < self.end_hash)
    }
}

/// A node's `/status`.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeStatus {
    pub store_id: u64,
    pub regions: Vec<RegionStatus>,
}

impl NodeStatus {
    pub fn region(&self, region_id: u64) -> Result<&RegionStatus, String> {
        self.regions
            .iter()
            .find(|region| region.id == region_id)
            .ok_or_else(|| {
                let ids: Vec<u64> = self.regions.iter().map(|r| r.id).collect();
                format!(
                    "store {} reports no region {region_id} (it has {ids:?})",
                    self.store_id
                )
            })
    }
}

/// `count` keys named `{prefix}-{n}` for every region, found by hashing candidates the way the
/// server routes them. Returns region id → keys.
pub fn keys_covering_regions(
    regions: &[RegionStatus],
    prefix: &str,
    count: usize,
) -> BTreeMap<u64, Vec<String>> {
    let mut keys: BTreeMap<u64, Vec<String>> = regions.iter().map(|r| (r.id, vec![])).collect();
    for n in 0..1_000_000u32 {
        if keys.values().all(|region_keys| region_keys.len() >= count) {
            return keys;
        }
        let key = format!("{prefix}-{n}");
        let owner = regions
            .iter()
            .find(|r| r.holds_key(key.as_bytes()))
            .unwrap_or_else(|| panic!("no region holds key {key:?}: regions {regions:?}"));
        let region_keys = keys.get_mut(&owner.id).expect("every region has an entry");
        if region_keys.len() < count {
            region_keys.push(key);
        }
    }
    panic!("could not find {count} keys for every region of {regions:?}");
}

/// An HTTP answer of any status.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `(code, message)` of a `{"error":{"code":..,"message":..}}` body, or why it is not one.
    pub fn error(&self) -> Result<(String, String), String> {
        let json: Value = serde_json::from_slice(&self.body)
            .map_err(|e| format!("body {:?} is not JSON: {e}", self.text()))?;
        let field = |name: &str| {
            json.pointer(&format!("/error/{name}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("body {json} has no string error.{name}"))
        };
        Ok((field("code")?, field("message")?))
    }
}

/// A request that did not get the answer its helper expects.
pub struct HttpError {
    /// e.g. `PUT /kv/a on node 2`.
    pub request: String,
    pub failure: Failure,
}

pub enum Failure {
    /// The connection could not be made: the request never reached the node.
    Connect(String),
    /// No HTTP answer at all (reset, timed out): the node may have acted on it.
    Transport(String),
    /// An answer with an unexpected status.
    Status(Reply),
}

impl HttpError {
    pub fn status(&self) -> Option<u16> {
        match &self.failure {
            Failure::Connect(_) | Failure::Transport(_) => None,
            Failure::Status(reply) => Some(reply.status),
        }
    }

    /// Worth retrying, perhaps on another node: the node is down or has no leader right now.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.status(), None | Some(503))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Connect(error) => write!(f, "{}: cannot connect: {error}", self.request),
            Failure::Transport(error) => write!(f, "{}: no answer: {error}", self.request),
            Failure::Status(reply) => {
                write!(
                    f,
                    "{} answered {}: {:?}",
                    self.request,
                    reply.status,
                    reply.text()
                )
            }
        }
    }
}

impl fmt::Debug for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `/kv/{key}` with the key percent-encoded.
pub fn kv_path(key: &str) -> String {
    format!(
        "/kv/{}",
        percent_encoding::utf8_percent_encode(key, KEY_PATH_ESCAPES)
    )
}

/// `Some(bytes)` shown as text for assertion messages.
pub fn show(value: &Option<Vec<u8>>) -> String {
    match value {
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        None => "absent".to_owned(),
    }
}

/// HTTP access to one node; cheap to clone and `'static`, so it can move into spawned tasks.
#[derive(Clone)]
pub struct NodeClient {
    pub node: usize,
    base_url: String,
    http: reqwest::Client,
    /// Per-request bound replacing the client's [`HTTP_TIMEOUT`].
    timeout: Option<Duration>,
}

impl NodeClient {
    /// Sends one request; `Err` only when no HTTP answer came back.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, HttpError> {
        let description = format!("{method} {path} on node {}", self.node);
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.body(body);
        }
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let transport = |error: reqwest::Error| HttpError {
            request: description.clone(),
            failure: if error.is_connect() {
                Failure::Connect(format!("{error:#}"))
            } else {
                Failure::Transport(format!("{error:#}"))
            },
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        Ok(Reply { status, body })
    }

    async fn expect_status(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        expected: &[u16],
    ) -> Result<Reply, HttpError> {
        let reply = self.request(method.clone(), path, body).await?;
        if expected.contains(&reply.status) {
            return Ok(reply);
        }
        Err(HttpError {
            request: format!("{method} {path} on node {}", self.node),
            failure: Failure::Status(reply),
        })
    }

    /// True when `/health` answers 200 within [`HEALTH_TIMEOUT`].
    pub async fn is_healthy(&self) -> bool {
        let probe = self
            .http
            .get(format!("{}/health", self.base_url))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await;
        matches!(probe, Ok(response) if response.status().as_u16() == 200)
    }

    pub async fn status_json(&self) -> Result<Value, HttpError> {
        let reply = self
            .expect_status(Method::GET, "/status", None, &[200])
            .await?;
        serde_json::from_slice(&reply.body).map_err(|e| HttpError {
            request: format!("GET /status on node {}", self.node),
            failure: Failure::Transport(format!("body is not JSON ({e}): {:?}", reply.text())),
        })
    }

    pub async fn status(&self) -> Result<NodeStatus, HttpError> {
        let json = self.status_json().await?;
        serde_json::from_value(json.clone()).map_err(|e| HttpError {
            request: format!("GET /status on node {}", self.node),
            failure: Failure::Transport(format!("unexpected shape ({e}): {json}")),
        })
    }

    /// PUT once; `Ok` only for 204.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), HttpError> {
        let path = kv_path(key);
        self.expect_status(Method::PUT, &path, Some(value.to_vec()), &[204])
            .await
            .map(drop)
    }

    /// Linearizable GET once: `Some` for 200, `None` for 404.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, HttpError> {
        self.get_path(&kv_path(key)).await
    }

    /// GET once from this node's own replica (`?consistency=stale`), which may be behind.
    pub async fn get_stale(&self, key: &str) -> Result<Option<Vec<u8>>, HttpError> {
        self.get_path(&format!("{}?consistency=stale", kv_path(key)))
            .await
    }

    async fn get_path(&self, path: &str) -> Result<Option<Vec<u8>>, HttpError> {
        let reply = self
            .expect_status(Method::GET, path, None, &[200, 404])
            .await?;
        Ok((reply.status == 200).then_some(reply.body))
    }

    /// Compare-and-swap once: if `key` holds `expected` (`None`: is absent), make it hold `new`
    /// (`None`: delete it). `Ok(true)` for 204 (swapped), `Ok(false)` for 412 (it did not hold
    /// `expected`).
    pub async fn cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, HttpError> {
        let condition = match expected {
            Some(value) => format!(
                "prevValue={}",
                percent_encoding::percent_encode(value, NON_ALPHANUMERIC)
            ),
            None => "prevExist=false".to_owned(),
        };
        let path = format!("{}?{condition}", kv_path(key));
        let reply = match new {
            Some(value) => {
                self.expect_status(Method::PUT, &path, Some(value.to_vec()), &[204, 412])
                    .await?
            }
            None => {
                self.expect_status(Method::DELETE, &path, None, &[204, 412])
                    .await?
            }
        };
        Ok(reply.status == 204)
    }

    /// DELETE once; `Ok` only for 204.
    pub async fn delete(&self, key: &str) -> Result<(), HttpError> {
        self.expect_status(Method::DELETE, &kv_path(key), None, &[204])
            .await
            .map(drop)
    }

    /// PUT until acknowledged, retrying while the node is down or has no leader (503 or no
    /// answer), for up to [`WAIT_TIMEOUT`]; any other answer fails the test at once.
    pub async fn must_put(&self, key: &str, value: &[u8]) {
        retry_while_unavailable(|| self.put(key, value)).await
    }

    /// Linearizable GET, retried like [`Self::must_put`].
    pub async fn must_get(&self, key: &str) -> Option<Vec<u8>> {
        retry_while_unavailable(|| self.get(key)).await
    }

    /// DELETE, retried like [`Self::must_put`].
    pub async fn must_delete(&self, key: &str) {
        retry_while_unavailable(|| self.delete(key)).await
    }
}

// A plain closure returning a future, not an async closure: the futures of async closures do
// not (yet) prove `Send` for every lifetime, which tasks moved to `tokio::spawn` need.
async fn retry_while_unavailable<T, F: Future<Output = Result<T, HttpError>>>(
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if error.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await
            }
            Err(error) if error.is_unavailable() => {
                panic!("still unavailable after {WAIT_TIMEOUT:?}: {error}")
            }
            Err(error) => panic!("unexpected answer: {error}"),
        }
    }
}

/// PUT through whichever of `clients` answers: tries them in turn, starting at `first`, while
/// they are down or without a leader, for up to [`WAIT_TIMEOUT`]. An `Err` describes the last
/// failure; a 4xx fails at once.
pub async fn put_via_any(
    clients: &[NodeClient],
    first: usize,
    key: &str,
    value: &[u8],
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    for attempt in 0.. {
        let client = &clients[(first + attempt) % clients.len()];
        match client.put(key, value).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    unreachable!("the attempt loop only ends by returning")
}

/// The data a test expects the cluster to hold: key → value, `None` for deleted keys.
#[derive(Clone, Debug, Default)]
pub struct Model {
    entries: BTreeMap<String, Option<Vec<u8>>>,
}

impl Model {
    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.entries.insert(key.to_owned(), Some(value.to_vec()));
    }

    pub fn delete(&mut self, key: &str) {
        self.entries.insert(key.to_owned(), None);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Option<Vec<u8>>)> {
        self.entries.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }
}

struct Node {
    id: usize,
    http_addr: SocketAddr,
    data_dir: PathBuf,
    certs_dir: PathBuf,
    log_path: PathBuf,
    process: Mutex<Option<Child>>,
    /// `FAILPOINTS` for the next start.
    failpoints: Mutex<Option<String>>,
    paused: Mutex<bool>,
}

impl Node {
    /// The exit status of a process that ended on its own; `None` while running or not started.
    fn exited(&self) -> Option<ExitStatus> {
        lock(&self.process)
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    fn is_running(&self) -> bool {
        lock(&self.process).is_some()
    }

    fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log_path, lines)
    }
}

/// Why a node did not come up.
enum StartFailure {
    /// The node exited and its log blames a taken address: worth trying other ports.
    PortTaken(String),
    Other(String),
}

/// A running test cluster; see the module docs.
pub struct Cluster {
    dir: TempDir,
    opts: ClusterOptions,
    raft_addrs: Vec<SocketAddr>,
    /// (from, to) → the relay node `from` reaches node `to` through; empty without relays.
    relays: BTreeMap<(usize, usize), relay::Relay>,
    placement: Option<PlacementProc>,
    nodes: Vec<Node>,
    /// For placement's plaintext HTTP.
    http: reqwest::Client,
    /// For the nodes' client port: plaintext or HTTPS as [`ClientPort`] says.
    node_http: reqwest::Client,
}

impl Cluster {
    /// Makes certificates, picks free ports and starts `node_count` nodes, returning once every
    /// node answers `/health` (use [`Self::wait_ready`] to also wait for leaders). Retries with
    /// new ports when a node finds its port taken between picking and binding.
    pub async fn start(node_count: usize, opts: ClusterOptions) -> Cluster {
        for attempt in 1..=START_ATTEMPTS {
            let cluster = Cluster::spawn(node_count, opts.clone());
            match cluster.wait_all_healthy().await {
                Ok(()) => return cluster,
                Err(StartFailure::PortTaken(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("attempt {attempt} to start the cluster hit a taken port ({why}); retrying with new ports");
                }
                Err(StartFailure::PortTaken(why) | StartFailure::Other(why)) => {
                    panic!("the cluster did not start: {why}")
                }
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn spawn(node_count: usize, opts: ClusterOptions) -> Cluster {
        assert!(node_count >= 1, "a cluster needs a node");
        let dir = tempfile::Builder::new()
            .prefix(&format!("ringkv-{}-", test_name()))
            .tempdir()
            .expect("creating the test's temp dir");
        let certs_dir = dir.path().join("certs");
        let client_tls = opts.client_port != ClientPort::Plaintext;
        make_certs(&certs_dir, node_count, client_tls);
        let foreign_certs_dir = dir.path().join("foreign-certs");
        if !opts.foreign_ca_nodes.is_empty() {
            make_certs(&foreign_certs_dir, node_count, client_tls);
        }
        let (http_addrs, raft_addrs) = pick_free_ports(node_count);
        let nodes = (1..=node_count)
            .map(|id| Node {
                id,
                http_addr: http_addrs[id - 1],
                data_dir: opts
                    .node_data_dirs
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| dir.path().join(format!("data-{id}"))),
                certs_dir: if opts.foreign_ca_nodes.contains(&id) {
                    foreign_certs_dir.clone()
                } else {
                    certs_dir.clone()
                },
                log_path: dir.path().join(format!("node-{id}.log")),
                process: Mutex::new(None),
                failpoints: Mutex::new(opts.failpoints.get(&id).cloned()),
                paused: Mutex::new(false),
            })
            .collect();
        let http = http_client(None);
        let node_http = match opts.client_port {
            ClientPort::Plaintext => http.clone(),
            ClientPort::Tls | ClientPort::MutualTls => {
                let ca = read_pem(&certs_dir.join("ca.pem"));
                let cert = read_pem(&certs_dir.join("client.pem"));
                let key = read_pem(&certs_dir.join("client.key"));
                http_client(Some(client_tls_config(
                    &ca,
                    Some((&cert, &key)),
                    &[b"http/1.1"],
                )))
            }
        };
        let mut relays = BTreeMap::new();
        if opts.relays {
            for from in 1..=node_count {
                for to in (1..=node_count).filter(|&to| to != from) {
                    let relay = relay::Relay::start(raft_addrs[to - 1])
                        .expect("starting a UDP relay on loopback");
                    relays.insert((from, to), relay);
                }
            }
        }
        let placement = opts.placement.then(|| {
            let (ports, _) = pick_free_ports(2);
            PlacementProc {
                grpc_addr: ports[0],
                http_addr: ports[1],
                data_dir: dir.path().join("placement"),
                log_path: dir.path().join("placement.log"),
                process: Mutex::new(None),
            }
        });
        let initial_nodes = opts.initial_nodes.unwrap_or(node_count);
        let cluster = Cluster {
            dir,
            opts,
            raft_addrs,
            relays,
            placement,
            nodes,
            http,
            node_http,
        };
        if cluster.placement.is_some() {
            cluster.spawn_placement();
        }
        for id in 1..=initial_nodes {
            cluster.spawn_node(id);
        }
        cluster
    }

    /// The client port of node `id` (HTTP and gRPC).
    pub fn http_addr(&self, id: usize) -> SocketAddr {
        self.node(id).http_addr
    }

    /// Where node `id` keeps its data (its RocksDB is `db` inside).
    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    fn node(&self, id: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&id),
            "there is no node {id} in a {}-node cluster",
            self.nodes.len()
        );
        &self.nodes[id - 1]
    }

    /// `1..=n`.
    pub fn node_ids(&self) -> Vec<usize> {
        (1..=self.nodes.len()).collect()
    }

    /// Nodes not killed by the test.
    pub fn running_nodes(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.id)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's certificate dir (`ringkv certs` output: `ca.pem`, node and, with
    /// [`ClientPort`] TLS, client TLS files).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// `--client-tls-*` flags as [`ClusterOptions::client_port`] asks.
    fn client_tls_args(&self) -> Vec<String> {
        let file = |name: &str| self.certs_dir().join(name).display().to_string();
        let mut args = match self.opts.client_port {
            ClientPort::Plaintext => return vec![],
            ClientPort::Tls | ClientPort::MutualTls => vec![
                "--client-tls-cert".to_owned(),
                file("client-server.pem"),
                "--client-tls-key".to_owned(),
                file("client-server.key"),
            ],
        };
        if self.opts.client_port == ClientPort::MutualTls {
            args.push("--client-tls-client-ca".to_owned());
            args.push(file("client-ca.pem"));
        }
        args
    }

    fn placement_proc(&self) -> &PlacementProc {
        self.placement
            .as_ref()
            .expect("the cluster runs no placement: start it with placement: true")
    }

    /// Starts the placement process (same data dir every time), logging to `placement.log`.
    fn spawn_placement(&self) {
        let placement = self.placement_proc();
        let mut process = lock(&placement.process);
        assert!(process.is_none(), "placement is already running");
        let args = vec![
            "placement".to_owned(),
            "--listen".to_owned(),
            placement.grpc_addr.to_string(),
            "--http-addr".to_owned(),
            placement.http_addr.to_string(),
            "--data-dir".to_owned(),
            placement.data_dir.display().to_string(),
        ]
        .into_iter()
        .chain(self.opts.placement_args.iter().cloned())
        .collect::<Vec<_>>();
        *process = Some(spawn_logged(&args, &placement.log_path, None));
    }

    /// SIGKILLs placement.
    pub fn kill_placement(&self) {
        let placement = self.placement_proc();
        let mut child = lock(&placement.process)
            .take()
            .expect("kill_placement: placement is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts placement again and waits until it answers `/health`.
    pub async fn restart_placement(&self) {
        self.spawn_placement();
        let url = format!("http://{}/health", self.placement_proc().http_addr);
        wait_until(
            "placement to answer /health",
            WAIT_TIMEOUT,
            async || match self.http.get(&url).timeout(HEALTH_TIMEOUT).send().await {
                Ok(response) if response.status().as_u16() == 200 => Ok(()),
                Ok(response) => Err(format!("status {}", response.status())),
                Err(error) => Err(error.to_string()),
            },
        )
        .await
    }

    /// Everything placement has logged so far (all its runs).
    pub fn placement_log(&self) -> String {
        fs::read_to_string(&self.placement_proc().log_path).unwrap_or_default()
    }

    /// Placement's gRPC address (what `--placement` takes).
    pub fn placement_addr(&self) -> SocketAddr {
        self.placement_proc().grpc_addr
    }

    /// Placement's `/status` (cluster id, stores, regions with their leaders).
    pub async fn placement_status(&self) -> Result<Value, String> {
        let url = format!("http://{}/status", self.placement_proc().http_addr);
        let response = self
            .http
            .get(&url)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("placement /status is not JSON: {e}"))
    }

    fn node_args(&self, id: usize) -> Vec<String> {
        let mut args = self.default_node_args(id);
        for (flag, value) in self.opts.node_flags.get(&id).into_iter().flatten() {
            match args.iter().position(|arg| arg == flag) {
                Some(at) if at + 1 < args.len() => args[at + 1] = value.clone(),
                _ => args.extend([flag.clone(), value.clone()]),
            }
        }
        args
    }

    fn default_node_args(&self, id: usize) -> Vec<String> {
        let node = self.node(id);
        if let Some(placement) = &self.placement {
            return self.placement_node_args(id, placement);
        }
        // Every other node as this node reaches it: through its relay, if there is one.
        let cluster: Vec<String> = self
            .raft_addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| match self.relays.get(&(id, index + 1)) {
                Some(relay) => relay.addr().to_string(),
                None => addr.to_string(),
            })
            .collect();
        let mut args = vec![
            "node".to_owned(),
            "--id".to_owned(),
            id.to_string(),
            "--cluster".to_owned(),
            cluster.join(","),
            "--http-addr".to_owned(),
            node.http_addr.to_string(),
            "--data-dir".to_owned(),
            node.data_dir.display().to_string(),
            "--certs-dir".to_owned(),
            node.certs_dir.display().to_string(),
            "--raft-tick-ms".to_owned(),
            RAFT_TICK_MS.to_string(),
            "--election-ticks".to_owned(),
            ELECTION_TICKS.to_string(),
        ];
        let optional = [
            (
                "--initial-regions",
                self.opts.initial_regions.map(|v| v.to_string()),
            ),
            (
                "--raft-log-gc-threshold",
                self.opts.raft_log_gc_threshold.map(|v| v.to_string()),
            ),
            (
                "--max-key-bytes",
                self.opts.max_key_bytes.map(|v| v.to_string()),
            ),
            (
                "--max-value-bytes",
                self.opts.max_value_bytes.map(|v| v.to_string()),
            ),
            (
                "--request-timeout-ms",
                self.opts.request_timeout_ms.map(|v| v.to_string()),
            ),
        ];
        for (flag, value) in optional {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value);
            }
        }
        args.extend(self.client_tls_args());
        args.extend(self.opts.node_args.iter().cloned());
        args
    }

    fn placement_node_args(&self, id: usize, placement: &PlacementProc) -> Vec<String> {
        let node = self.node(id);
        let mut args: Vec<String> = [
            "node",
            "--placement",
            &placement.grpc_addr.to_string(),
            "--raft-addr",
            &self.raft_addrs[id - 1].to_string(),
            "--placement-heartbeat-ms",
            &PLACEMENT_HEARTBEAT_MS.to_string(),
            "--http-addr",
            &node.http_addr.to_string(),
            "--data-dir",
            &node.data_dir.display().to_string(),
            "--certs-dir",
            &node.certs_dir.display().to_string(),
            "--cert-name",
            &format!("node-{id}"),
            "--raft-tick-ms",
            &RAFT_TICK_MS.to_string(),
            "--election-ticks",
            &ELECTION_TICKS.to_string(),
            "--request-timeout-ms",
            &self.opts.request_timeout_ms.unwrap_or(5000).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(regions) = self.opts.initial_regions {
            args.push("--initial-regions".to_owned());
            args.push(regions.to_string());
        }
        args.extend(self.client_tls_args());
        args.extend(self.opts.node_args.iter().cloned());
        args
    }

    /// Starts node `id`'s process (same command and data dir every time), appending its
    /// stdout and stderr to its log file.
    fn spawn_node(&self, id: usize) {
        let node = self.node(id);
        let mut process = lock(&node.process);
        assert!(process.is_none(), "node {id} is already running");
        let args = self.node_args(id);
        let failpoints = lock(&node.failpoints).clone();
        *process = Some(spawn_logged(&args, &node.log_path, failpoints.as_deref()));
    }

    async fn wait_all_healthy(&self) -> Result<(), StartFailure> {
        for id in self.running_nodes() {
            self.wait_healthy(id).await?;
        }
        Ok(())
    }

    async fn wait_healthy(&self, id: usize) -> Result<(), StartFailure> {
        let node = self.node(id);
        let client = self.client(id);
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            if let Some(exit) = node.exited() {
                let tail = node.log_tail(LOG_TAIL_LINES);
                let why = format!("node {id} exited with {exit} while starting; log tail:\n{tail}");
                let lowered = tail.to_lowercase();
                if lowered.contains("in use") || lowered.contains("addrinuse") {
                    return Err(StartFailure::PortTaken(why));
                }
                return Err(StartFailure::Other(why));
            }
            if client.is_healthy().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "node {id} did not answer GET /health with 200 within {WAIT_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every running node is healthy and every region has a leader among them.
    pub async fn wait_ready(&self) {
        self.wait_leaders_among(&self.running_nodes()).await;
    }

    /// Waits until every node in `nodes` is healthy and, for every region any of them reports,
    /// one of them says it is the leader.
    pub async fn wait_leaders_among(&self, nodes: &[usize]) {
        let what = format!("every region to have a leader among nodes {nodes:?}");
        wait_until(&what, WAIT_TIMEOUT, async || {
            let mut leaders: BTreeMap<u64, Option<usize>> = BTreeMap::new();
            for &id in nodes {
                if !self.client(id).is_healthy().await {
                    return Err(format!("node {id} is not healthy"));
                }
                let status = self.status(id).await.map_err(|e| e.to_string())?;
                if let Some(expected) = self.opts.initial_regions {
                    if status.regions.len() as u64 != expected {
                        return Err(format!(
                            "node {id} reports {} regions, expected {expected}",
                            status.regions.len()
                        ));
                    }
                }
                for region in status.regions {
                    let leader = leaders.entry(region.id).or_default();
                    if region.is_leader {
                        *leader = Some(id);
                    }
                }
            }
            if leaders.is_empty() {
                return Err("no node reports any region".to_owned());
            }
            let leaderless: Vec<u64> = leaders
                .iter()
                .filter(|(_, leader)| leader.is_none())
                .map(|(region, _)| *region)
                .collect();
            if leaderless.is_empty() {
                Ok(())
            } else {
                Err(format!("regions without a leader: {leaderless:?}"))
            }
        })
        .await
    }

    /// SIGKILLs node `id` (a crash: nothing is flushed) and reaps it. Panics if the node had
    /// already exited on its own, which would be a bug worth seeing.
    pub fn kill(&self, id: usize) {
        let node = self.node(id);
        if let Some(exit) = node.exited() {
            panic!(
                "node {id} had already exited with {exit} before the test killed it; log tail:\n{}",
                node.log_tail(LOG_TAIL_LINES)
            );
        }
        let mut child = lock(&node.process)
            .take()
            .unwrap_or_else(|| panic!("kill({id}): node {id} is not running"));
        child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL to node {id}: {e}"));
        child
            .wait()
            .unwrap_or_else(|e| panic!("reaping node {id}: {e}"));
        *lock(&node.paused) = false;
    }

    /// SIGSTOPs node `id`: it stays alive but does nothing (a long GC pause, a stuck VM).
    pub fn pause(&self, id: usize) {
        self.signal(id, "-STOP");
        *lock(&self.node(id).paused) = true;
    }

    /// SIGCONTs a paused node.
    pub fn resume(&self, id: usize) {
        self.signal(id, "-CONT");
        *lock(&self.node(id).paused) = false;
    }

    pub fn is_paused(&self, id: usize) -> bool {
        *lock(&self.node(id).paused)
    }

    fn signal(&self, id: usize, signal: &str) {
        let pid = lock(&self.node(id).process)
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("signal {signal}: node {id} is not running"));
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal} {pid}: {e}"));
        assert!(status.success(), "kill {signal} {pid} (node {id}) failed");
    }

    /// `FAILPOINTS` for node `id`'s next start (`None`: none).
    pub fn set_failpoints(&self, id: usize, failpoints: Option<&str>) {
        *lock(&self.node(id).failpoints) = failpoints.map(str::to_owned);
    }

    /// Waits until node `id` exits on its own (a crash point fired) and returns how it ended.
    pub async fn wait_exit(&self, id: usize, timeout: Duration) -> ExitStatus {
        let node = self.node(id);
        let what = format!("node {id} to exit on its own");
        let status = wait_until(&what, timeout, async || {
            node.exited()
                .ok_or_else(|| "it is still running".to_owned())
        })
        .await;
        lock(&node.process).take();
        status
    }

    /// If node `id` has exited on its own, reaps it and returns how it ended; `None` while it
    /// runs. For tests where several nodes may legitimately stop at the same crash point.
    pub fn reap_if_exited(&self, id: usize) -> Option<ExitStatus> {
        let node = self.node(id);
        let status = node.exited()?;
        lock(&node.process).take();
        Some(status)
    }

    /// Waits until some node exits on its own; its id and exit status.
    pub async fn wait_any_exit(&self, timeout: Duration) -> (usize, ExitStatus) {
        let exited = wait_until("a node to exit on its own", timeout, async || {
            self.nodes
                .iter()
                .find_map(|node| Some((node.id, node.exited()?)))
                .ok_or_else(|| "every node is still running".to_owned())
        })
        .await;
        lock(&self.node(exited.0).process).take();
        exited
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: usize) -> String {
        fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// Sets what the link from node `from` to node `to` does (both directions of `from`'s
    /// connection to `to`). Needs [`ClusterOptions::relays`].
    pub fn set_link(&self, from: usize, to: usize, faults: relay::LinkFaults) {
        self.relays
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no relay {from} -> {to}: start with relays: true"))
            .set(faults);
    }

    /// Applies `faults` to every link.
    pub fn set_all_links(&self, faults: relay::LinkFaults) {
        for relay in self.relays.values() {
            relay.set(faults.clone());
        }
    }

    /// Cuts every link between nodes of different `groups`; links inside a group pass.
    pub fn partition(&self, groups: &[&[usize]]) {
        let group_of = |id: usize| groups.iter().position(|g| g.contains(&id));
        for (&(from, to), relay) in &self.relays {
            let cut = group_of(from) != group_of(to);
            relay.set(relay::LinkFaults {
                cut,
                ..relay::LinkFaults::default()
            });
        }
    }

    /// Cuts node `id` off from every other node (clients still reach it).
    pub fn isolate(&self, id: usize) {
        let others: Vec<usize> = self.node_ids().into_iter().filter(|&n| n != id).collect();
        self.partition(&[&[id], &others]);
    }

    /// Every link passes everything again.
    pub fn heal(&self) {
        self.set_all_links(relay::LinkFaults::default());
    }

    /// Starts killed node `id` again without waiting for it (it may be meant to crash).
    pub fn start_node(&self, id: usize) {
        self.spawn_node(id);
    }

    /// Starts killed node `id` again with the same command and data dir, and waits until it
    /// answers `/health`.
    pub async fn restart(&self, id: usize) {
        self.restart_all_of(&[id]).await;
    }

    /// Starts all of `ids` first, then waits until each answers `/health`: nodes that need each
    /// other to recover are not started one after another.
    pub async fn restart_all_of(&self, ids: &[usize]) {
        for &id in ids {
            self.spawn_node(id);
        }
        for &id in ids {
            if let Err(StartFailure::PortTaken(why) | StartFailure::Other(why)) =
                self.wait_healthy(id).await
            {
                panic!("restarting node {id} failed: {why}");
            }
        }
    }

    /// HTTP access to node `id` (HTTPS with [`ClientPort`] TLS).
    pub fn client(&self, id: usize) -> NodeClient {
        self.client_using(id, self.node_http.clone())
    }

    /// Access to node `id` through `http` (e.g. a TLS client with another identity), with the
    /// scheme [`ClientPort`] says.
    pub fn client_using(&self, id: usize, http: reqwest::Client) -> NodeClient {
        let scheme = match self.opts.client_port {
            ClientPort::Plaintext => "http",
            ClientPort::Tls | ClientPort::MutualTls => "https",
        };
        NodeClient {
            node: id,
            base_url: format!("{scheme}://{}", self.node(id).http_addr),
            http,
            timeout: None,
        }
    }

    /// HTTP access to node `id` where each request gives up after `timeout`.
    pub fn client_with_timeout(&self, id: usize, timeout: Duration) -> NodeClient {
        NodeClient {
            timeout: Some(timeout),
            ..self.client(id)
        }
    }

    pub fn clients(&self, ids: &[usize]) -> Vec<NodeClient> {
        ids.iter().map(|&id| self.client(id)).collect()
    }

    pub async fn request(
        &self,
        id: usize,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, HttpError> {
        self.client(id).request(method, path, body).await
    }

    pub async fn put(&self, id: usize, key: &str, value: &[u8]) -> Result<(), HttpError> {
        self.client(id).put(key, value).await
    }

    pub async fn get(&self, id: usize, key: &str) -> Result<Option<Vec<u8>>, HttpError> {
        self.client(id).get(key).await
    }

    pub async fn get_stale(&self, id: usize, key: &str) -> Result<Option<Vec<u8>>, HttpError> {
        self.client(id).get_stale(key).await
    }

    pub async fn delete(&self, id: usize, key: &str) -> Result<(), HttpError> {
        self.client(id).delete(key).await
    }

    pub async fn must_put(&self, id: usize, key: &str, value: &[u8]) {
        self.client(id).must_put(key, value).await
    }

    pub async fn must_get(&self, id: usize, key: &str) -> Option<Vec<u8>> {
        self.client(id).must_get(key).await
    }

    pub async fn must_delete(&self, id: usize, key: &str) {
        self.client(id).must_delete(key).await
    }

    /// Node `id`'s `/status` as raw JSON.
    pub async fn status_json(&self, id: usize) -> Result<Value, HttpError> {
        self.client(id).status_json().await
    }

    /// Node `id`'s `/status`.
    pub async fn status(&self, id: usize) -> Result<NodeStatus, HttpError> {
        self.client(id).status().await
    }

    /// Region `region_id` as node `id` reports it.
    pub async fn region(&self, id: usize, region_id: u64) -> Result<RegionStatus, String> {
        let status = self.status(id).await.map_err(|e| e.to_string())?;
        status.region(region_id).cloned()
    }

    /// The running node that reports being leader of `region_id` (the highest term wins if a
    /// deposed leader has not noticed yet), if any.
    pub async fn leader_of_region(&self, region_id: u64) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for id in self.running_nodes() {
            let Ok(region) = self.region(id, region_id).await else {
                continue;
            };
            if region.is_leader && best.is_none_or(|(term, _)| region.term > term) {
                best = Some((region.term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits for a leader of `region_id` among the running nodes.
    pub async fn wait_for_leader(&self, region_id: u64) -> usize {
        let what = format!("region {region_id} to have a leader");
        wait_until(&what, WAIT_TIMEOUT, async || {
            self.leader_of_region(region_id)
                .await
                .ok_or_else(|| format!("no running node ({:?}) leads it", self.running_nodes()))
        })
        .await
    }

    /// Reads every key of `model` through node `id` with linearizable reads and panics listing
    /// every mismatch.
    pub async fn assert_reads(&self, id: usize, model: &Model) {
        let client = self.client(id);
        let mut mismatches = vec![];
        for (key, expected) in model.iter() {
            let got = client.must_get(key).await;
            if &got != expected {
                mismatches.push(format!(
                    "{key:?}: expected {}, read {}",
                    show(expected),
                    show(&got)
                ));
            }
        }
        assert!(
            mismatches.is_empty(),
            "node {id} returned {} wrong reads out of {}:\n{}",
            mismatches.len(),
            model.len(),
            first_lines(&mismatches)
        );
    }

    /// Waits until node `id`'s own replica (stale reads) holds exactly `model`: how a test
    /// sees that a particular node has caught up.
    pub async fn wait_stale_reads(&self, id: usize, model: &Model) {
        let client = self.client(id);
        let entries: Vec<(&String, &Option<Vec<u8>>)> = model.iter().collect();
        // Keys already seen right are not re-read on every poll; a final full pass then checks
        // them all at once (a deleted key also "matches" before its PUT has arrived).
        let mut cursor = 0;
        let what = format!(
            "node {id}'s replica to hold all {} expected keys",
            entries.len()
        );
        wait_until(&what, WAIT_TIMEOUT, async || {
            while cursor < entries.len() {
                let (key, expected) = entries[cursor];
                let got = client.get_stale(key).await.map_err(|e| e.to_string())?;
                if &got != expected {
                    return Err(format!(
                        "{key:?}: expected {}, stale read {}",
                        show(expected),
                        show(&got)
                    ));
                }
                cursor += 1;
            }
            for (key, expected) in &entries {
                let got = client.get_stale(key).await.map_err(|e| e.to_string())?;
                if &got != *expected {
                    cursor = 0;
                    return Err(format!(
                        "{key:?}: expected {}, stale read {} (final pass)",
                        show(expected),
                        show(&got)
                    ));
                }
            }
            Ok(())
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let mut notes = vec![];
        for node in &self.nodes {
            let Some(mut child) = lock(&node.process).take() else {
                continue;
            };
            if let Ok(Some(exit)) = child.try_wait() {
                notes.push(format!(
                    "node {} had exited on its own with {exit}",
                    node.id
                ));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(placement) = &self.placement {
            if let Some(mut child) = lock(&placement.process).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if !failing {
            if std::env::var_os("RINGKV_KEEP_TEST_DIRS").is_some_and(|v| v == "always") {
                self.dir.disable_cleanup(true);
                eprintln!("kept the test dir {}", self.dir.path().display());
            }
            return;
        }
        for note in &notes {
            eprintln!("{note}");
        }
        if let Some(placement) = &self.placement {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of placement ({}) -----\n{}",
                placement.log_path.display(),
                tail_of(&placement.log_path, LOG_TAIL_LINES)
            );
        }
        for node in &self.nodes {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of node {} ({}) -----\n{}",
                node.id,
                node.log_path.display(),
                node.log_tail(LOG_TAIL_LINES)
            );
        }
        if std::env::var_os("RINGKV_KEEP_TEST_DIRS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept the test dir {}", self.dir.path().display());
        } else {
            eprintln!("(set RINGKV_KEEP_TEST_DIRS=1 to keep the test dir with the full logs)");
        }
    }
}

/// The last `lines` lines of a log file.
fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `ringkv ARGS`, appending its stdout and stderr to `log_path` (with the command line
/// first), with `FAILPOINTS` set only if given.
fn spawn_logged(args: &[String], log_path: &Path, failpoints: Option<&str>) -> Child {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
    writeln!(log, "===== harness: starting {RINGKV} {}", args.join(" ")).expect("writing a log");
    let mut command = Command::new(RINGKV);
    command.args(args).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    // The log is a file: keep it free of terminal color codes.
    command.env("NO_COLOR", "1");
    command.env_remove("FAILPOINTS");
    if let Some(failpoints) = failpoints {
        command.env("FAILPOINTS", failpoints);
        writeln!(log, "===== harness: FAILPOINTS={failpoints}").expect("writing a log");
    }
    let stderr = log.try_clone().expect("cloning the log file handle");
    command.stdout(log).stderr(stderr);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {RINGKV} {}: {e}", args.join(" ")))
}

fn first_lines(lines: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = lines[..lines.len().min(SHOWN)].join("\n");
    if lines.len() > SHOWN {
        text.push_str(&format!("\n... and {} more", lines.len() - SHOWN));
    }
    text
}

/// The running test's name (libtest names the thread after it), for temp dir names.
fn test_name() -> String {
    let name = std::thread::current().name().unwrap_or("test").to_owned();
    name.rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// `ringkv certs --dir DIR --nodes N [--client-tls]`, checked.
fn make_certs(dir: &Path, nodes: usize, client_tls: bool) {
    let mut command = Command::new(RINGKV);
    command
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .arg("--nodes")
        .arg(nodes.to_string());
    if client_tls {
        command.arg("--client-tls");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {RINGKV} certs: {e}"));
    assert!(
        output.status.success(),
        "`ringkv certs --dir {} --nodes {nodes}` (client TLS: {client_tls}) failed with {}:\n{}{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut expected = vec!["ca.pem".to_owned(), "ca.key".to_owned()];
    for id in 1..=nodes {
        expected.push(format!("node-{id}.pem"));
        expected.push(format!("node-{id}.key"));
    }
    if client_tls {
        for name in ["client-server", "client-ca", "client"] {
            expected.push(format!("{name}.pem"));
            expected.push(format!("{name}.key"));
        }
    }
    for file in expected {
        assert!(
            dir.join(&file).is_file(),
            "`ringkv certs` succeeded but did not write {}",
            dir.join(&file).display()
        );
    }
}

/// A PEM file's text; panics naming the file.
pub fn read_pem(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The harness's HTTP client settings, over `tls` if given (see [`client_tls_config`]).
pub fn http_client(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        // Nodes are killed and restarted on the same port: a pooled connection to a dead
        // process would turn the next request into a spurious transport error.
        .pool_max_idle_per_host(0);
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().expect("building the HTTP client")
}

/// A TLS client configuration for a node's client port: trusts only `server_ca_pem` (no
/// public roots), presents `client_cert` (certificate PEM, key PEM) when given, and offers
/// the ALPN ids in `alpn` (`http/1.1` for the HTTP API, `h2` for gRPC). Ring provider, like
/// the node.
pub fn client_tls_config(
    server_ca_pem: &str,
    client_cert: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(server_ca_pem.as_bytes()) {
        roots
            .add(ca.expect("the server CA is PEM"))
            .expect("the server CA is a certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("the client certificate is PEM");
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("the client key is PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("the client key matches its certificate")
        }
    };
    config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
    config
}

/// `count` loopback TCP ports (HTTP) and `count` UDP ports (raft over QUIC) that were free a
/// moment ago. Every socket is held until all are picked so no two nodes share a port; a port
/// taken again before the node binds it is handled by `Cluster::start`'s retry.
fn pick_free_ports(count: usize) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let tcp: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a free TCP port"))
        .collect();
    let udp: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("binding a free UDP port"))
        .collect();
    let http_addrs = tcp
        .iter()
        .map(|socket| socket.local_addr().expect("local address of a TCP socket"))
        .collect();
    let raft_addrs = udp
        .iter()
        .map(|socket| socket.local_addr().expect("local address of a UDP socket"))
        .collect();
    (http_addrs, raft_addrs)
}

/// Writes every `(key, value)` with `writers` concurrent tasks spread over `via` nodes (each
/// PUT retried while unavailable), and returns the resulting model.
pub async fn put_concurrently(
    cluster: &Cluster,
    via: &[usize],
    entries: Vec<(String, Vec<u8>)>,
    writers: usize,
) -> Model {
    let mut model = Model::default();
    for (key, value) in &entries {
        model.put(key, value);
    }
    let mut batches: Vec<Vec<(String, Vec<u8>)>> = vec![vec![]; writers];
    for (n, entry) in entries.into_iter().enumerate() {
        batches[n % writers].push(entry);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (writer, batch) in batches.into_iter().enumerate() {
        let client = cluster.client(via[writer % via.len()]);
        tasks.spawn(async move {
            for (key, value) in batch {
                client.must_put(&key, &value).await;
            }
        });
    }
    join_all(tasks).await;
    model
}

/// Awaits every task, re-raising the first panic with its own message.
pub async fn join_all<T: 'static>(mut tasks: tokio::task::JoinSet<T>) -> Vec<T> {
    let mut results = vec![];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(value) => results.push(value),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a task was cancelled: {error}"),
        }
    }
    results
}
