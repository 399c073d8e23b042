//! `ringkv demo`: placement plus a 3-node cluster in one process, for trying ringkv with one
//! command. It makes its own CA and node certificates, keeps data under one directory, serves
//! placement on 2379 (gRPC, what `kvctl` uses by default) and 2380 (HTTP), and the nodes' HTTP
//! on raftexample's ports (12380, 22380, 32380).
//!
//! The nodes start one after another: the first bootstraps the cluster with one replica per
//! region, and placement's replica checker adds the other two as the next nodes join — the
//! same path a real deployment takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::{
    Limits, Membership, Node, NodeConfig, SplitPolicy, DEFAULT_REGION_SPLIT_KEYS,
    DEFAULT_REGION_SPLIT_LOAD, DEFAULT_REGION_SPLIT_SIZE,
};
use crate::transport::tls;

pub struct DemoConfig {
    pub data_dir: PathBuf,
    pub initial_regions: u64,
    pub host: String,
}

pub const DEMO_HTTP_PORTS: [u16; 3] = [12380, 22380, 32380];
pub const DEMO_RAFT_PORTS: [u16; 3] = [12379, 22379, 32379];
pub const DEMO_PLACEMENT_PORT: u16 = 2379;
pub const DEMO_PLACEMENT_HTTP_PORT: u16 = 2380;

pub async fn run(cfg: DemoConfig) -> Result<(), Box<dyn std::error::Error>> {
    let certs_dir = cfg.data_dir.join("certs");
    tls::write_certs_dir(&certs_dir, &[1, 2, 3])?;
    let placement_addr: SocketAddr = format!("{}:{DEMO_PLACEMENT_PORT}", cfg.host).parse()?;
    let placement = ringkv_placement::start(
        ringkv_placement::ServeConfig {
            listen: placement_addr,
            http_addr: Some(format!("{}:{DEMO_PLACEMENT_HTTP_PORT}", cfg.host).parse()?),
            data_dir: cfg.data_dir.join("placement"),
            placement: ringkv_placement::PlacementConfig::default(),
        },
        crate::server::metrics_handle(),
    )
    .await?;
    let mut nodes = Vec::new();
    for (i, (http_port, raft_port)) in DEMO_HTTP_PORTS.iter().zip(DEMO_RAFT_PORTS).enumerate() {
        let n = i as u64 + 1;
        let node_cfg = NodeConfig {
            membership: Membership::Placement {
                endpoint: placement_addr.to_string(),
                raft_addr: format!("{}:{raft_port}", cfg.host).parse()?,
                heartbeat_interval: Duration::from_secs(1),
            },
            http_addr: format!("{}:{http_port}", cfg.host).parse()?,
            client_tls: None,
            data_dir: cfg.data_dir.join(format!("node{n}")),
            initial_regions: cfg.initial_regions,
            raft_tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            raft_log_gc_threshold: 1024,
            raft_log_gc_size: 64 << 20,
            engine: Default::default(),
            pollers: 1,
            hibernate_regions: true,
            lease_reads: true,
            raft_sync_interval: crate::raftstore::DEFAULT_RAFT_SYNC_INTERVAL,
            raft_sync_batch_writes: crate::raftstore::DEFAULT_RAFT_SYNC_BATCH_WRITES,
            reserve_space_bytes: crate::server::DEFAULT_RESERVE_SPACE_BYTES,
            split: SplitPolicy {
                size_bytes: DEFAULT_REGION_SPLIT_SIZE,
                keys: DEFAULT_REGION_SPLIT_KEYS,
                load_keys_per_sec: DEFAULT_REGION_SPLIT_LOAD,
            },
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
            expired_reclaim_interval: Duration::from_secs(60),
        };
        let material = tls::load_node_material(&certs_dir, n)?;
        nodes.push(Node::start(node_cfg, material).await?);
    }
    println!(
        "ringkv demo: placement + 3 nodes, {} region(s) at bootstrap, data in {}\n\
         \n  HTTP: http://{host}:12380  http://{host}:22380  http://{host}:32380\
         \n  placement: {host}:{DEMO_PLACEMENT_PORT} (gRPC), http://{host}:{DEMO_PLACEMENT_HTTP_PORT}/status\n\
         \n  curl -XPUT http://{host}:12380/kv/a -d hello\
         \n  curl http://{host}:32380/kv/a\
         \n  kvctl regions   # every region reaches 3 replicas within seconds\n\
         \nCtrl-C stops the cluster (data is kept; run again to resume).",
        cfg.initial_regions,
        cfg.data_dir.display(),
        host = cfg.host,
    );
    tokio::signal::ctrl_c().await?;
    println!("stopping...");
    for node in nodes {
        node.shutdown().await;
    }
    placement.shutdown().await;
    println!("stopped");
    Ok(())
}
