//! `ringkv demo`: a 3-node cluster in one process, for trying ringkv with one command.
//! It makes its own CA and node certificates, keeps data under one directory, and serves
//! HTTP on raftexample's ports (12380, 22380, 32380).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::{Limits, Membership, Node, NodeConfig};
use crate::transport::tls;

pub struct DemoConfig {
    pub data_dir: PathBuf,
    pub initial_regions: u64,
    pub host: String,
}

pub const DEMO_HTTP_PORTS: [u16; 3] = [12380, 22380, 32380];
pub const DEMO_RAFT_PORTS: [u16; 3] = [12379, 22379, 32379];

pub async fn run(cfg: DemoConfig) -> Result<(), Box<dyn std::error::Error>> {
    let certs_dir = cfg.data_dir.join("certs");
    tls::write_certs_dir(&certs_dir, &[1, 2, 3])?;
    let cluster: Vec<SocketAddr> = DEMO_RAFT_PORTS
        .iter()
        .map(|port| format!("{}:{port}", cfg.host).parse())
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for (i, http_port) in DEMO_HTTP_PORTS.iter().enumerate() {
        let store_id = i as u64 + 1;
        let node_cfg = NodeConfig {
            membership: Membership::Static {
                store_id,
                cluster: cluster.clone(),
            },
            http_addr: format!("{}:{http_port}", cfg.host).parse()?,
            data_dir: cfg.data_dir.join(format!("node{store_id}")),
            initial_regions: cfg.initial_regions,
            raft_tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            raft_log_gc_threshold: 1024,
            pollers: 1,
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
        };
        let material = tls::load_node_material(&certs_dir, store_id)?;
        nodes.push(Node::start(node_cfg, material).await?);
    }
    println!(
        "ringkv demo: 3 nodes, {} region(s), data in {}\n\
         \n  HTTP: http://{host}:12380  http://{host}:22380  http://{host}:32380\n\
         \n  curl -XPUT http://{host}:12380/kv/a -d hello\
         \n  curl http://{host}:32380/kv/a\
         \n  curl http://{host}:22380/status\n\
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
    println!("stopped");
    Ok(())
}
