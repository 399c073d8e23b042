//! Nodes managed by a real `ringkv placement` process: store ids from placement kept in the
//! data dir, bootstrap of the first regions by the first store (also when several race),
//! registration and heartbeats, routing through placement for keys a node holds no replica
//! of, and KV traffic that keeps flowing while placement is down.
//!
//! Replica placement (the replica checker, conf changes) is not here yet: regions stay on the
//! store that bootstrapped them.

mod common;

use std::collections::BTreeSet;

use common::{run_serially, wait_until, Cluster, ClusterOptions, WAIT_TIMEOUT};
use serde_json::Value;

fn options(initial_nodes: Option<usize>) -> ClusterOptions {
    ClusterOptions {
        placement: true,
        initial_regions: Some(2),
        initial_nodes,
        ..ClusterOptions::default()
    }
}

fn stores_up(status: &Value) -> BTreeSet<u64> {
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
async fn wait_placement(cluster: &Cluster, regions: usize, stores: usize) -> Value {
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
fn kvctl(cluster: &Cluster, args: &[&str]) -> Result<String, String> {
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

async fn store_id_of(cluster: &Cluster, node: usize) -> u64 {
    cluster.status(node).await.expect("node status").store_id
}

#[test]
fn first_store_bootstraps_later_stores_register_and_route_through_placement() {
    run_serially(async {
        let cluster = Cluster::start(3, options(Some(1))).await;
        let status = wait_placement(&cluster, 2, 1).await;
        let first = store_id_of(&cluster, 1).await;
        assert_ne!(first, 0);
        assert_eq!(stores_up(&status), BTreeSet::from([first]));
        cluster.must_put(1, "alpha", b"1").await;

        // Two more stores join: new ids from placement, registered, heartbeating.
        cluster.restart(2).await;
        cluster.restart(3).await;
        let status = wait_placement(&cluster, 2, 3).await;
        let ids: BTreeSet<u64> = [
            first,
            store_id_of(&cluster, 2).await,
            store_id_of(&cluster, 3).await,
        ]
        .into();
        assert_eq!(ids.len(), 3, "every store has its own id: {ids:?}");
        assert_eq!(stores_up(&status), ids);

        // Store heartbeats carry the disk and the counts.
        let status = wait_until("store statistics at placement", WAIT_TIMEOUT, async || {
            let status = cluster.placement_status().await?;
            let stores = status["stores"].as_array().cloned().unwrap_or_default();
            let reported = stores.iter().all(|s| {
                s["capacity_bytes"].as_u64().unwrap_or(0) > 0
                    && s["available_bytes"].as_u64().unwrap_or(0) > 0
            });
            let first_counts = stores.iter().any(|s| {
                s["id"].as_u64() == Some(first)
                    && s["region_count"] == 2
                    && s["leader_count"] == 2
                    && s["used_bytes"].as_u64().unwrap_or(0) > 0
            });
            if reported && first_counts {
                Ok(status)
            } else {
                Err(format!("{status}"))
            }
        })
        .await;
        assert!(status["stores"].as_array().is_some_and(|s| s.len() == 3));

        // kvctl reads the same picture: JSON for scripts, tables for people, and a clear
        // failure for a region that does not exist.
        let stores = kvctl(&cluster, &["stores", "--json"]).expect("kvctl stores");
        let listed: BTreeSet<u64> = serde_json::from_str::<Value>(&stores).expect("JSON")["stores"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_u64())
            .collect();
        assert_eq!(listed, ids, "kvctl stores --json: {stores}");
        let table = kvctl(&cluster, &["regions"]).expect("kvctl regions");
        let region_id = status["regions"][0]["id"].as_u64().expect("a region id");
        assert!(
            table.starts_with("ID") && table.contains(&format!("@{first}")),
            "kvctl regions:\n{table}"
        );
        let one = kvctl(&cluster, &["region", &region_id.to_string(), "--json"]).expect("region");
        assert_eq!(
            serde_json::from_str::<Value>(&one).expect("JSON")["id"].as_u64(),
            Some(region_id)
        );
        let missing = kvctl(&cluster, &["region", "987654321"]).expect_err("unknown region");
        assert!(missing.contains("987654321"), "{missing}");

        // Nodes without a replica route through placement to the leader's store.
        cluster.must_put(2, "beta", b"2").await;
        assert_eq!(cluster.must_get(3, "alpha").await, Some(b"1".to_vec()));
        assert_eq!(cluster.must_get(2, "beta").await, Some(b"2".to_vec()));

        // A restarted node keeps its store id and its data.
        cluster.kill(1);
        cluster.restart(1).await;
        assert_eq!(store_id_of(&cluster, 1).await, first);
        assert_eq!(cluster.must_get(1, "beta").await, Some(b"2".to_vec()));

        // Placement down: KV traffic goes on (routes are cached); kvctl says what is wrong.
        let before = cluster.placement_status().await.expect("placement status");
        cluster.kill_placement();
        let down = kvctl(&cluster, &["stores"]).expect_err("placement is down");
        assert!(down.contains("cannot reach placement"), "{down}");
        cluster.must_put(3, "gamma", b"3").await;
        assert_eq!(cluster.must_get(2, "gamma").await, Some(b"3".to_vec()));

        // Placement back: same cluster, stores and regions from disk; heartbeats resume.
        cluster.restart_placement().await;
        let after = wait_placement(&cluster, 2, 3).await;
        assert_eq!(after["cluster_id"], before["cluster_id"]);
        assert_eq!(stores_up(&after), ids);
        let regions = |status: &Value| {
            status["regions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        r["id"].as_u64(),
                        r["start_hash"].as_u64(),
                        r["version"].as_u64(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(regions(&after), regions(&before));
        assert_eq!(cluster.must_get(1, "alpha").await, Some(b"1".to_vec()));
    });
}

#[test]
fn stores_racing_to_bootstrap_create_one_cluster() {
    run_serially(async {
        let cluster = Cluster::start(3, options(None)).await;
        let status = wait_placement(&cluster, 2, 3).await;
        let mut holders = BTreeSet::new();
        for node in cluster.node_ids() {
            let node_status = cluster.status(node).await.expect("node status");
            if !node_status.regions.is_empty() {
                assert_eq!(
                    node_status.regions.len(),
                    2,
                    "the winner holds both regions"
                );
                holders.insert(node_status.store_id);
            }
        }
        assert_eq!(holders.len(), 1, "exactly one store bootstrapped: {status}");
        for node in cluster.node_ids() {
            let key = format!("from-{node}");
            cluster.must_put(node, &key, key.as_bytes()).await;
        }
        for node in cluster.node_ids() {
            for writer in cluster.node_ids() {
                let key = format!("from-{writer}");
                assert_eq!(
                    cluster.must_get(node, &key).await,
                    Some(key.clone().into_bytes())
                );
            }
        }
    });
}
