//! Helpers for clusters run with a placement process: waiting on placement's view, reading
//! its regions, running `kvctl` against it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::{wait_until, Cluster, ClusterOptions, Model, WAIT_TIMEOUT};

/// Generous bound for replication and healing (snapshots, several heartbeat rounds, a loaded
/// 2-core machine).
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(90);

pub fn options(initial_nodes: Option<usize>) -> ClusterOptions {
    ClusterOptions {
        placement: true,
        initial_regions: Some(2),
        initial_nodes,
        ..ClusterOptions::default()
    }
}

pub fn stores_up(status: &Value) -> BTreeSet<u64> {
    status["stores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"] == "up")
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

/// Waits until placement is bootstrapped with `regions` regions, each with a leader, and
/// `stores` stores up; returns its status.
pub async fn wait_placement(cluster: &Cluster, regions: usize, stores: usize) -> Value {
    let what = format!("placement to see {regions} led regions and {stores} stores up");
    wait_until(&what, WAIT_TIMEOUT, async || {
        let status = cluster.placement_status().await?;
        let listed = status["regions"].as_array().cloned().unwrap_or_default();
        let led = listed
            .iter()
            .filter(|r| r["leader_store_id"].as_u64().unwrap_or(0) != 0)
            .count();
        let up = stores_up(&status).len();
        if status["bootstrapped"] == true
            && listed.len() == regions
            && led == regions
            && up == stores
        {
            Ok(status)
        } else {
            Err(format!("{status}"))
        }
    })
    .await
}

/// Runs `kvctl --placement <the cluster's placement> ARGS`: stdout on success, stderr on a
/// non-zero exit.
pub fn kvctl(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--placement")
        .arg(cluster.placement_addr().to_string())
        .args(args)
        .output()
        .map_err(|e| format!("running kvctl: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        assert!(!stderr.is_empty(), "kvctl failed silently");
        Err(stderr)
    }
}

pub async fn store_id_of(cluster: &Cluster, node: usize) -> u64 {
    cluster.status(node).await.expect("node status").store_id
}

/// Waits until placement shows `regions` regions, each with exactly 3 voters on 3 distinct
/// stores of `allowed`, no learners, a leader, and no operator in flight; and every node
/// hosting a replica reports that region with the same peers. Returns region id → voter
/// stores.
pub async fn wait_replicated(
    cluster: &Cluster,
    regions: usize,
    allowed: &BTreeSet<u64>,
) -> BTreeMap<u64, BTreeSet<u64>> {
    wait_settled(cluster, Some(regions), allowed, REPLICATION_TIMEOUT)
        .await
        .into_iter()
        .map(|(id, region)| (id, region.voters))
        .collect()
}

/// One region once the cluster settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledRegion {
    pub start_hash: u64,
    pub end_hash: u64,
    pub voters: BTreeSet<u64>,
    pub leader: u64,
}

/// Waits until the cluster is settled: placement's regions tile the ring exactly (no gap, no
/// overlap; `regions` of them if given), each has 3 voters on distinct stores of `allowed`,
/// no learner, a leader, no operator in flight; and every running node hosts exactly the
/// regions placement puts on its store, with the same range. Returns region id → region.
pub async fn wait_settled(
    cluster: &Cluster,
    regions: Option<usize>,
    allowed: &BTreeSet<u64>,
    timeout: Duration,
) -> BTreeMap<u64, SettledRegion> {
    let what = format!(
        "{} regions tiling the ring, 3 voters each on stores {allowed:?}",
        regions.map_or("any number of".to_owned(), |n| n.to_string())
    );
    wait_until(&what, timeout, async || {
        let status = cluster.placement_status().await?;
        let listed = status["regions"].as_array().cloned().unwrap_or_default();
        if regions.is_some_and(|n| n != listed.len()) {
            return Err(format!("{} regions: {status}", listed.len()));
        }
        let mut placed = BTreeMap::new();
        let mut next_start = 0u64;
        for (i, r) in listed.iter().enumerate() {
            let id = r["id"].as_u64().unwrap_or(0);
            let (start_hash, end_hash) = (
                r["start_hash"].as_u64().unwrap_or(0),
                r["end_hash"].as_u64().unwrap_or(0),
            );
            if start_hash != next_start || (end_hash == 0) != (i + 1 == listed.len()) {
                return Err(format!("ring not tiled at region {id}: {status}"));
            }
            next_start = end_hash;
            let peers = r["peers"].as_array().cloned().unwrap_or_default();
            let with_role = |role: u64| -> Vec<u64> {
                peers
                    .iter()
                    .filter(|p| p["role"].as_u64() == Some(role))
                    .filter_map(|p| p["store_id"].as_u64())
                    .collect()
            };
            let (voters, learners) = (with_role(0), with_role(1));
            let leader = r["leader_store_id"].as_u64().unwrap_or(0);
            let distinct: BTreeSet<u64> = voters.iter().copied().collect();
            if voters.len() != 3
                || distinct.len() != 3
                || !learners.is_empty()
                || peers.len() != 3
                || leader == 0
                || !distinct.is_subset(allowed)
            {
                return Err(format!(
                    "region {id}: voters {voters:?}, learners {learners:?}, leader {leader}"
                ));
            }
            placed.insert(
                id,
                SettledRegion {
                    start_hash,
                    end_hash,
                    voters: distinct,
                    leader,
                },
            );
        }
        if status["operators"]
            .as_array()
            .is_some_and(|ops| !ops.is_empty())
        {
            return Err(format!("operators in flight: {}", status["operators"]));
        }
        // The stores themselves agree: each hosts exactly its regions, with the same ranges.
        for node in cluster.running_nodes() {
            let node_status = cluster.status(node).await.map_err(|e| e.to_string())?;
            let store = node_status.store_id;
            let expected: BTreeMap<u64, (u64, u64)> = placed
                .iter()
                .filter(|(_, r)| r.voters.contains(&store))
                .map(|(id, r)| (*id, (r.start_hash, r.end_hash)))
                .collect();
            let hosted: BTreeMap<u64, (u64, u64)> = node_status
                .regions
                .iter()
                .map(|r| (r.id, (r.start_hash, r.end_hash)))
                .collect();
            if hosted != expected {
                return Err(format!(
                    "store {store} hosts {hosted:?}, placement says {expected:?}"
                ));
            }
        }
        Ok(placed)
    })
    .await
}

/// Writes `keys` keys `{prefix}-{n}` through the nodes in turn, recording them in `model`.
pub async fn write_keys(cluster: &Cluster, model: &mut Model, prefix: &str, keys: usize) {
    let nodes = cluster.running_nodes();
    for n in 0..keys {
        let key = format!("{prefix}-{n}");
        let value = format!("{prefix}-value-{n}");
        cluster
            .must_put(nodes[n % nodes.len()], &key, value.as_bytes())
            .await;
        model.put(&key, value.as_bytes());
    }
}
