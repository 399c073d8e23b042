//! The `ringkv` command: run a node, a one-process demo cluster, or make certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the system allocator: requests, raft messages and RocksDB batches are
/// allocated and freed per message on many threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ringkv::server::{ClientTls, Limits, Membership, Node, NodeConfig};
use ringkv::transport::tls;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A multi-raft, hash-sharded, replicated key-value store"
)]
struct Cli {
    /// Log filter (`tracing` syntax: a level like `debug`, or per module like
    /// `info,ringkv::raftstore=debug`). Logs go to stderr, one line per event.
    #[arg(long, global = true, env = "RINGKV_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at startup; boxing the largest variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one node: of a cluster managed by placement (--placement), or of a static one
    /// (--id with --cluster).
    Node(NodeArgs),
    /// Run a 3-node cluster in this process (HTTP on 12380, 22380, 32380).
    Demo(DemoArgs),
    /// Create a cluster CA and node certificates (keeps existing files).
    Certs(CertsArgs),
    /// Run the placement service (store and region registry, id allocator).
    Placement(PlacementArgs),
}

#[derive(Args)]
struct PlacementArgs {
    /// gRPC address nodes and clients talk to.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen: SocketAddr,
    /// HTTP address for /status and /metrics.
    #[arg(long, default_value = "127.0.0.1:2380")]
    http_addr: SocketAddr,
    /// Where placement keeps its durable state.
    #[arg(long)]
    data_dir: PathBuf,
    /// Replicas every region should have.
    #[arg(long, default_value_t = 3)]
    max_replicas: u32,
    /// Seconds without a heartbeat after which a store counts as down and its replicas are
    /// rebuilt on other stores.
    #[arg(long, default_value_t = 1800)]
    max_store_down_time_secs: u64,
    /// Seconds after which an operator (add/promote/remove peer, transfer leader) that has not
    /// completed is given up and re-planned.
    #[arg(long, default_value_t = 300)]
    operator_timeout_secs: u64,
    /// Operators in flight at once, cluster-wide (0 stops replica scheduling).
    #[arg(long, default_value_t = 16)]
    replica_schedule_limit: u32,
    /// Turn off the balance schedulers (replica and leader counts per store); replicas are
    /// still repaired and admin requests still carried out.
    #[arg(long)]
    disable_balance: bool,
    /// Leader transfers the leader balancer keeps in flight at most.
    #[arg(long, default_value_t = 4)]
    leader_schedule_limit: u32,
    /// Region moves the replica balancer keeps in flight at most.
    #[arg(long, default_value_t = 4)]
    region_schedule_limit: u32,
    /// A region writing this many bytes per second (three reports in a row) is hot: its
    /// leadership is moved off the store carrying the most hot load. 0 = ignore writes.
    #[arg(long, default_value_t = 1 << 20)]
    hot_region_write_bytes_per_sec: u64,
    /// Like --hot-region-write-bytes-per-sec, for keys read per second. 0 = ignore reads.
    #[arg(long, default_value_t = 1000)]
    hot_region_read_keys_per_sec: u64,
}

#[derive(Args)]
struct NodeArgs {
    /// Placement service address (host:port); the store id comes from placement and is kept
    /// in --data-dir.
    #[arg(long, conflicts_with_all = ["id", "cluster"], requires = "raft_addr")]
    placement: Option<String>,
    /// This node's raft (QUIC/UDP) address, with --placement.
    #[arg(long)]
    raft_addr: Option<SocketAddr>,
    /// Milliseconds between heartbeats to placement.
    #[arg(long, default_value_t = 10_000)]
    placement_heartbeat_ms: u64,
    /// Static cluster: this node's store id, its 1-based position in --cluster.
    #[arg(long, requires = "cluster")]
    id: Option<u64>,
    /// Static cluster: raft (QUIC) addresses of all nodes in id order, comma-separated:
    /// host:port or quic://host:port.
    #[arg(long, value_delimiter = ',', requires = "id")]
    cluster: Vec<String>,
    /// Which certificate of --certs-dir to use: NAME.pem and NAME.key (default node-{id} for a
    /// static cluster; required with --placement and --certs-dir).
    #[arg(long)]
    cert_name: Option<String>,
    /// Address for the client HTTP API.
    #[arg(long, default_value = "127.0.0.1:12380")]
    http_addr: SocketAddr,
    /// Serve the client port (--http-addr) over TLS with this certificate chain (PEM, leaf
    /// first); needs --client-tls-key. Plaintext connections are then refused.
    #[arg(long, requires = "client_tls_key")]
    client_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-tls-cert.
    #[arg(long, requires = "client_tls_cert")]
    client_tls_key: Option<PathBuf>,
    /// Require every client of the TLS client port to present a certificate signed by this
    /// CA (PEM; `client-ca.pem` of `ringkv certs --client-tls`); needs --client-tls-cert.
    #[arg(long, requires_all = ["client_tls_cert", "client_tls_key"])]
    client_tls_client_ca: Option<PathBuf>,
    /// Directory for this node's RocksDB and snapshots.
    #[arg(long)]
    data_dir: PathBuf,
    /// Directory with ca.pem and the node certificates (see `ringkv certs`).
    #[arg(long, conflicts_with_all = ["ca_cert", "cert", "key"])]
    certs_dir: Option<PathBuf>,
    /// Cluster CA certificate (PEM); with --cert and --key instead of --certs-dir.
    #[arg(long, requires_all = ["cert", "key"])]
    ca_cert: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the cluster CA.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Regions created, splitting the ring evenly, when the cluster is first bootstrapped.
    #[arg(long, default_value_t = 1)]
    initial_regions: u64,
    /// Length of one raft tick.
    #[arg(long, default_value_t = 100)]
    raft_tick_ms: u64,
    /// Ticks without a leader before an election (raft randomizes up to twice this).
    #[arg(long, default_value_t = 10)]
    election_ticks: usize,
    /// Ticks between leader heartbeats.
    #[arg(long, default_value_t = 2)]
    heartbeat_ticks: usize,
    /// Applied raft log entries kept per region before the log is compacted.
    #[arg(long, default_value_t = 1024)]
    raft_log_gc_threshold: u64,
    /// MiB of raft log a region keeps (appended since the node started) before the log is
    /// compacted, whatever the entry count.
    #[arg(long, default_value_t = 64)]
    raft_log_gc_size_mb: u64,
    /// MiB of one user-data memtable. Smaller makes writes cheaper (user keys are
    /// hash-ordered: each insert searches the whole memtable) and flushes more often.
    #[arg(long, default_value_t = ringkv::engine::DEFAULT_DATA_MEMTABLE_BYTES >> 20)]
    data_memtable_mb: usize,
    /// MiB the RocksDB write-ahead log may grow to before the column families holding its
    /// oldest file are flushed: bounds the replay at restart.
    #[arg(long, default_value_t = ringkv::engine::DEFAULT_MAX_WAL_BYTES >> 20)]
    max_wal_mb: u64,
    /// Raft poller threads.
    #[arg(long, default_value_t = 1)]
    pollers: usize,
    /// Threads serving clients and the raft transport (async runtime workers); default: one
    /// per CPU. Nodes sharing a machine do better with fewer each — every extra thread adds
    /// cross-thread wake-ups (3 nodes on 2 cores: 1 each is ~25% faster).
    #[arg(long)]
    async_threads: Option<usize>,
    /// Let idle regions stop ticking and heartbeating (woken by any traffic; followers wake
    /// when their leader's store goes silent). `false` keeps every region ticking.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hibernate_regions: bool,
    /// Leaders answer linearizable reads under a lease a quorum confirmed less than an
    /// election timeout ago (no round trip to followers per read); `false` sends every read
    /// batch through ReadIndex. With it on, a store refuses votes for one election timeout
    /// after it starts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lease_reads: bool,
    /// Microseconds between raft-log fsyncs while writes keep coming (group commit across
    /// rounds: one fsync covers every write of the interval, on every region). A write after
    /// a quiet spell is synced at once; 0 syncs every poller round.
    #[arg(long, default_value_t = ringkv::raftstore::DEFAULT_RAFT_SYNC_INTERVAL.as_micros() as u64)]
    raft_sync_interval_us: u64,
    /// Sync the raft log at once, before --raft-sync-interval-us has passed, once this many
    /// client writes wait for the fsync (the batch is worth one; under heavy load the
    /// interval would only add latency).
    #[arg(long, default_value_t = ringkv::raftstore::DEFAULT_RAFT_SYNC_BATCH_WRITES)]
    raft_sync_batch_writes: u64,
    /// Refuse client writes (HTTP 507 disk_full) while the data dir's file system has less
    /// free space than this; they resume once space is freed. 0 = never refuse.
    #[arg(long, default_value_t = ringkv::server::DEFAULT_RESERVE_SPACE_BYTES)]
    reserve_space_bytes: u64,
    /// With --placement: split a region this node leads once its data exceeds this many
    /// bytes (where the data halves); 0 = never on size.
    #[arg(long, default_value_t = ringkv::server::DEFAULT_REGION_SPLIT_SIZE)]
    region_split_size_bytes: u64,
    /// With --placement: split a region this node leads once it holds more keys than this
    /// (where the data halves); 0 = never on key count.
    #[arg(long, default_value_t = ringkv::server::DEFAULT_REGION_SPLIT_KEYS)]
    region_split_keys: u64,
    /// With --placement: split a region this node leads once it serves this many keys per
    /// second (reads + writes) for three heartbeats in a row, where its recent accesses
    /// halve; 0 = never on load.
    #[arg(long, default_value_t = ringkv::server::DEFAULT_REGION_SPLIT_LOAD)]
    region_split_load_keys_per_sec: u64,
    /// Largest accepted key.
    #[arg(long, default_value_t = 4096)]
    max_key_bytes: usize,
    /// Largest accepted value.
    #[arg(long, default_value_t = 1 << 20)]
    max_value_bytes: usize,
    /// Most keys in one batch request (HTTP /batch, gRPC Batch*).
    #[arg(long, default_value_t = 1024)]
    max_batch_keys: usize,
    /// Most key + value bytes in one batch request.
    #[arg(long, default_value_t = 8 << 20)]
    max_batch_bytes: usize,
    /// Seconds between passes that delete expired keys (TTL) of the regions this node leads,
    /// through raft; until then they are already invisible to reads. 0 = never.
    #[arg(long, default_value_t = 60)]
    expired_reclaim_interval_secs: u64,
    /// How long a request may wait for a leader and for raft before it fails with 503.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the three nodes keep their data.
    #[arg(long, default_value = "ringkv-demo-data")]
    data_dir: PathBuf,
    /// Regions the ring starts with.
    #[arg(long, default_value_t = 1)]
    initial_regions: u64,
    /// Interface the demo listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

#[derive(Args)]
struct CertsArgs {
    /// Output directory (ca.pem, ca.key, node-{id}.pem, node-{id}.key).
    #[arg(long)]
    dir: PathBuf,
    /// Make certificates for node ids 1..=N.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Also make what TLS on the client port needs: client-server.pem/.key (the port's
    /// certificate, signed by ca.pem, for localhost/127.0.0.1/::1), client-ca.pem/.key (a CA
    /// for client certificates only) and client.pem/.key (a client certificate it signed).
    #[arg(long)]
    client_tls: bool,
}

fn parse_cluster(cluster: &[String]) -> Result<Vec<SocketAddr>, String> {
    cluster
        .iter()
        .map(|entry| {
            let addr = entry.trim();
            let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
            let addr = addr.trim_end_matches('/');
            addr.parse()
                .map_err(|e| format!("--cluster entry {entry:?} is not host:port: {e}"))
        })
        .collect()
}

async fn run_node(args: NodeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let membership = match (&args.placement, args.id, args.raft_addr) {
        (Some(endpoint), None, Some(raft_addr)) => Membership::Placement {
            endpoint: endpoint.clone(),
            raft_addr,
            heartbeat_interval: Duration::from_millis(args.placement_heartbeat_ms.max(10)),
        },
        (None, Some(id), _) => Membership::Static {
            store_id: id,
            cluster: parse_cluster(&args.cluster)?,
        },
        _ => {
            return Err(
                "give --placement with --raft-addr, or --id with --cluster (a static cluster)"
                    .into(),
            )
        }
    };
    let cert_name = match (&args.cert_name, args.id) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(id)) => Some(format!("node-{id}")),
        (None, None) => None,
    };
    let material = match (&args.certs_dir, &args.ca_cert, &args.cert, &args.key) {
        (Some(dir), _, _, _) => {
            let name = cert_name.ok_or("with --placement and --certs-dir, give --cert-name")?;
            tls::load_named_material(dir, &name)?
        }
        (None, Some(ca), Some(cert), Some(key)) => tls::TlsMaterial::from_files(ca, cert, key)?,
        _ => return Err("give --certs-dir, or --ca-cert with --cert and --key".into()),
    };
    let client_tls = match (&args.client_tls_cert, &args.client_tls_key) {
        (Some(cert), Some(key)) => Some(ClientTls::from_files(
            cert,
            key,
            args.client_tls_client_ca.as_deref(),
        )?),
        (None, None) => None,
        _ => return Err("give --client-tls-cert and --client-tls-key together".into()),
    };
    if args.election_ticks <= args.heartbeat_ticks {
        return Err("--election-ticks must be greater than --heartbeat-ticks".into());
    }
    let cfg = NodeConfig {
        membership,
        http_addr: args.http_addr,
        client_tls,
        data_dir: args.data_dir,
        initial_regions: args.initial_regions.max(1),
        raft_tick_ms: args.raft_tick_ms.max(1),
        election_ticks: args.election_ticks,
        heartbeat_ticks: args.heartbeat_ticks.max(1),
        raft_log_gc_threshold: args.raft_log_gc_threshold.max(1),
        raft_log_gc_size: args.raft_log_gc_size_mb.max(1) << 20,
        pollers: args.pollers.max(1),
        engine: ringkv::engine::EngineOptions {
            data_memtable_bytes: args.data_memtable_mb.max(1) << 20,
            max_wal_bytes: args.max_wal_mb.max(1) << 20,
        },
        hibernate_regions: args.hibernate_regions,
        lease_reads: args.lease_reads,
        raft_sync_interval: std::time::Duration::from_micros(args.raft_sync_interval_us),
        raft_sync_batch_writes: args.raft_sync_batch_writes.max(1),
        reserve_space_bytes: args.reserve_space_bytes,
        split: ringkv::server::SplitPolicy {
            size_bytes: args.region_split_size_bytes,
            keys: args.region_split_keys,
            load_keys_per_sec: args.region_split_load_keys_per_sec,
        },
        limits: Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_batch_keys: args.max_batch_keys,
            max_batch_bytes: args.max_batch_bytes,
        },
        expired_reclaim_interval: Duration::from_secs(args.expired_reclaim_interval_secs),
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    };
    let node = Node::start(cfg, material).await?;
    wait_for_signal().await;
    node.shutdown().await;
    Ok(())
}

fn write_certs(args: &CertsArgs) -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<u64> = (1..=args.nodes).collect();
    tls::write_certs_dir(&args.dir, &ids)?;
    println!(
        "certificates for nodes 1..={} in {}",
        args.nodes,
        args.dir.display()
    );
    if args.client_tls {
        tls::write_client_tls_certs(&args.dir)?;
        println!(
            "client TLS: client-server.pem/.key for the nodes' client port, client-ca.pem \
             (--client-tls-client-ca) and client.pem/.key for clients"
        );
    }
    Ok(())
}

async fn run_placement(args: PlacementArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.max_replicas == 0 {
        return Err("--max-replicas must be at least 1".into());
    }
    let running = ringkv_placement::start(
        ringkv_placement::ServeConfig {
            listen: args.listen,
            http_addr: Some(args.http_addr),
            data_dir: args.data_dir,
            placement: ringkv_placement::PlacementConfig {
                max_replicas: args.max_replicas,
                max_store_down_time: Duration::from_secs(args.max_store_down_time_secs),
                operator_timeout: Duration::from_secs(args.operator_timeout_secs.max(1)),
                replica_schedule_limit: args.replica_schedule_limit,
                balance: !args.disable_balance,
                leader_schedule_limit: args.leader_schedule_limit,
                region_schedule_limit: args.region_schedule_limit,
                hot_region_write_bytes_per_sec: args.hot_region_write_bytes_per_sec,
                hot_region_read_keys_per_sec: args.hot_region_read_keys_per_sec,
                ..ringkv_placement::PlacementConfig::default()
            },
        },
        ringkv::server::metrics_handle(),
    )
    .await?;
    wait_for_signal().await;
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Any panic stops the whole process at once (crash-stop): a node whose poller or transport
/// thread died must not keep answering as if it were whole. Restart recovers from the engine.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("ringkv: panic; aborting the process (crash-stop)");
        std::process::abort();
    }));
}

fn main() -> ExitCode {
    abort_on_panic();
    // Crash points for fault tests: `FAILPOINTS="apply_after_write=3*off->panic"` (only in
    // builds with the `failpoints` feature; a no-op otherwise).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("ringkv: --log {:?} is not a log filter: {err}", cli.log);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Command::Node(NodeArgs {
        async_threads: Some(threads),
        ..
    }) = &cli.command
    {
        builder.worker_threads((*threads).max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ringkv: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Placement(args) => run_placement(args).await,
            Command::Demo(args) => {
                ringkv::demo::run(ringkv::demo::DemoConfig {
                    data_dir: args.data_dir,
                    initial_regions: args.initial_regions.max(1),
                    host: args.host,
                })
                .await
            }
            Command::Certs(args) => write_certs(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringkv: {err}");
            ExitCode::FAILURE
        }
    }
}
