//! A placement service alone, with a made-up cluster heartbeating into it, so that the `/ring`
//! page has something to draw (and `ops/check-ring-page.sh` something to check) without
//! building or running any node:
//!
//! ```sh
//! cargo run -p ringkv-placement --example ring_demo -- 127.0.0.1:2380 200
//! ops/check-ring-page.sh 127.0.0.1:2380
//! ```
//!
//! Arguments: the HTTP address (default `127.0.0.1:2380`) and the number of regions (default
//! 12). Three stores; regions of uneven size with a hot spot that drifts around the ring;
//! leaders spread over the stores. Two regions are left with one replica (placement answers
//! with add-learner operators, which nobody carries out, so they stay in flight), and one
//! region sits in a joint configuration (reported stuck after 20 s). State lives in a
//! temporary directory; Ctrl-C stops it.

use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::time::Duration;

use ringkv_placement::{PlacementConfig, ServeConfig};
use ringkv_proto::metapb::{Peer, PeerRole, Region, RegionEpoch, Store};
use ringkv_proto::placementpb::placement_client::PlacementClient;
use ringkv_proto::placementpb::{
    AllocIdRequest, BootstrapRequest, GetClusterInfoRequest, PutStoreRequest,
    RegionHeartbeatRequest, RegionStats, RequestHeader, StoreHeartbeatRequest, StoreStats,
};
use tonic::transport::Channel;

const STORES: u64 = 3;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const GIB: u64 = 1 << 30;

type Client = PlacementClient<Channel>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let http_addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:2380".into())
        .parse()
        .expect("the first argument is the HTTP address, e.g. 127.0.0.1:2380");
    let region_count: u64 = args.next().map_or(12, |n| {
        n.parse().expect("the second argument is a region count")
    });
    assert!(region_count >= 1, "at least one region");

    let dir = tempfile::tempdir().expect("temp dir");
    let placement = ringkv_placement::start(
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            http_addr: Some(http_addr),
            data_dir: dir.path().to_path_buf(),
            placement: PlacementConfig {
                max_replicas: 3,
                operator_timeout: Duration::from_secs(20),
                ..PlacementConfig::default()
            },
        },
        None,
    )
    .await
    .expect("placement starts");
    let mut client = PlacementClient::connect(format!("http://{}", placement.grpc_addr()))
        .await
        .expect("connecting to placement");
    let mut cluster = DemoCluster::bootstrap(&mut client, region_count).await;
    println!("ring page: http://{http_addr}/ring  ({region_count} regions; Ctrl-C stops)");

    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => cluster.heartbeat(&mut client).await,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    placement.shutdown().await;
}

struct DemoCluster {
    cluster_id: u64,
    store_ids: Vec<u64>,
    regions: Vec<Region>,
    /// Index into each region's peers of its leader.
    leaders: Vec<usize>,
    ticks: u64,
}

impl DemoCluster {
    /// Bootstraps `region_count` single-replica regions on store 1, registers the other
    /// stores, and reports most regions fully replicated (as if placement had done it).
    async fn bootstrap(client: &mut Client, region_count: u64) -> DemoCluster {
        let cluster_id = client
            .get_cluster_info(GetClusterInfoRequest {})
            .await
            .expect("cluster info")
            .into_inner()
            .cluster_id;
        let store_ids = alloc(client, cluster_id, STORES).await;
        let bounds = uneven_bounds(region_count);
        let mut regions = Vec::new();
        for n in 0..region_count as usize {
            let ids = alloc(client, cluster_id, 2).await;
            regions.push(Region {
                id: ids[0],
                start_hash: bounds[n],
                end_hash: bounds[n + 1],
                epoch: Some(RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers: vec![peer(ids[1], store_ids[0], PeerRole::Voter)],
            });
        }
        client
            .bootstrap(BootstrapRequest {
                header: header(cluster_id),
                store: Some(store(store_ids[0], 0)),
                regions: regions.clone(),
            })
            .await
            .expect("bootstrap");
        for (n, &id) in store_ids.iter().enumerate().skip(1) {
            client
                .put_store(PutStoreRequest {
                    header: header(cluster_id),
                    store: Some(store(id, n)),
                })
                .await
                .expect("register store");
        }

        let last = regions.len() - 1;
        for (n, region) in regions.iter_mut().enumerate() {
            // Two under-replicated regions (if there are enough), one in a joint config.
            if region_count > 3 && (n == 1 || n == last / 2) {
                continue;
            }
            let ids = alloc(client, cluster_id, 2).await;
            let joint = region_count > 3 && n == last;
            let roles = if joint {
                [PeerRole::IncomingVoter, PeerRole::DemotingVoter]
            } else {
                [PeerRole::Voter, PeerRole::Voter]
            };
            region.peers.push(peer(ids[0], store_ids[1], roles[0]));
            region.peers.push(peer(ids[1], store_ids[2], roles[1]));
            region.epoch = Some(RegionEpoch {
                conf_ver: 3,
                version: 1,
            });
        }
        let leaders = regions
            .iter()
            .enumerate()
            .map(|(n, region)| n % region.peers.len())
            .collect();
        DemoCluster {
            cluster_id,
            store_ids,
            regions,
            leaders,
            ticks: 0,
        }
    }

    /// One round of store and region heartbeats; answers are ignored, so operators stay.
    async fn heartbeat(&mut self, client: &mut Client) {
        self.ticks += 1;
        let mut used_bytes = [0u64; STORES as usize];
        let mut region_counts = [0u32; STORES as usize];
        let mut leader_counts = [0u32; STORES as usize];
        let store_index = |store_id: u64| {
            self.store_ids
                .iter()
                .position(|&id| id == store_id)
                .expect("a demo store")
        };
        for (n, region) in self.regions.iter().enumerate() {
            let leader = region.peers[self.leaders[n]];
            let stats = self.region_stats(n);
            for peer in &region.peers {
                let index = store_index(peer.store_id);
                used_bytes[index] += stats.approximate_size_bytes;
                region_counts[index] += 1;
            }
            leader_counts[store_index(leader.store_id)] += 1;
            let answer = client
                .region_heartbeat(RegionHeartbeatRequest {
                    header: header(self.cluster_id),
                    region: Some(region.clone()),
                    leader: Some(leader),
                    term: 1,
                    stats: Some(stats),
                    pending_peers: vec![],
                    snapshots: vec![],
                })
                .await;
            if let Err(status) = answer {
                eprintln!(
                    "region {} heartbeat refused: {}",
                    region.id,
                    status.message()
                );
            }
        }
        for (index, &store_id) in self.store_ids.iter().enumerate() {
            let stats = StoreStats {
                capacity_bytes: 100 * GIB,
                available_bytes: 100 * GIB - used_bytes[index],
                used_bytes: used_bytes[index],
                region_count: region_counts[index],
                leader_count: leader_counts[index],
            };
            client
                .store_heartbeat(StoreHeartbeatRequest {
                    header: header(self.cluster_id),
                    store_id,
                    stats: Some(stats),
                })
                .await
                .expect("store heartbeat");
        }
    }

    /// Size follows the arc's share of the ring; load is a hot spot drifting clockwise.
    fn region_stats(&self, n: usize) -> RegionStats {
        let region = &self.regions[n];
        let turn = |hash: u64| hash as f64 / 2f64.powi(64);
        let start = turn(region.start_hash);
        let end = if region.end_hash == 0 {
            1.0
        } else {
            turn(region.end_hash)
        };
        let middle = (start + end) / 2.0;
        let spot = (self.ticks as f64 / 120.0).fract();
        let distance = (middle - spot).abs().min(1.0 - (middle - spot).abs());
        let heat = (-(distance * 12.0).powi(2)).exp();
        RegionStats {
            approximate_size_bytes: ((end - start) * 40.0 * GIB as f64) as u64,
            approximate_keys: ((end - start) * 4.0e7) as u64,
            written_bytes_per_sec: (heat * 1.5 * (1 << 20) as f64) as u64,
            written_keys_per_sec: (heat * 1500.0) as u64,
            read_keys_per_sec: (heat * 600.0 + 20.0) as u64,
        }
    }
}

/// Region boundaries that cover the ring with arcs of uneven length: `count + 1` hashes from
/// 0 to 0 (the ring end), strictly increasing in between.
fn uneven_bounds(count: u64) -> Vec<u64> {
    let mut bounds = vec![0u64];
    for n in 1..count {
        let x = n as f64 / count as f64;
        // Monotonic: the derivative 1 + 0.6 cos(2πx) stays positive.
        let turn = x + 0.6 * (TAU * x).sin() / TAU;
        let hash = (turn * 2f64.powi(64)) as u64;
        let previous = *bounds.last().expect("starts with 0");
        bounds.push(hash.max(previous + 1));
    }
    bounds.push(0);
    bounds
}

async fn alloc(client: &mut Client, cluster_id: u64, count: u64) -> Vec<u64> {
    let answer = client
        .alloc_id(AllocIdRequest {
            header: header(cluster_id),
            count: count as u32,
        })
        .await
        .expect("alloc ids")
        .into_inner();
    (answer.first_id..answer.first_id + u64::from(answer.count)).collect()
}

fn header(cluster_id: u64) -> Option<RequestHeader> {
    Some(RequestHeader { cluster_id })
}

fn peer(id: u64, store_id: u64, role: PeerRole) -> Peer {
    Peer {
        id,
        store_id,
        role: role as i32,
    }
}

fn store(id: u64, n: usize) -> Store {
    let port = 12_379 + 10_000 * n;
    Store {
        id,
        raft_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("127.0.0.1:{}", port + 1),
        grpc_addr: String::new(),
    }
}
