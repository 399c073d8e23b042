//! Nodes managed by a real `ringkv placement` process: store ids from placement kept in the
//! data dir, bootstrap of the first regions by the first store (also when several race),
//! registration and heartbeats, the replica checker growing every region to 3 voters on
//! distinct stores through raft membership changes (learner, snapshot, promotion), healing
//! after a store stays down, destruction of a returning store's stale peers, and KV traffic
//! that keeps flowing while placement is down.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::placement::{
    kvctl, options, store_id_of, stores_up, wait_placement, wait_replicated, write_keys,
    REPLICATION_TIMEOUT,
};
use common::{
    assert_holds_for, run_serially, wait_until, Cluster, ClusterOptions, Model, WAIT_TIMEOUT,
};
use serde_json::Value;

#[test]
fn first_store_bootstraps_later_stores_register_and_route_through_placement() {
    run_serially(async {
        let cluster = Cluster::start(3, options(Some(1))).await;
        let status = wait_placement(&cluster, 2, 1).await;
        let first = store_id_of(&cluster, 1).await;
        assert_ne!(first, 0);
        assert_eq!(stores_up(&status), BTreeSet::from([first]));
        cluster.must_put(1, "alpha", b"1").await;
        let mut model = Model::default();
        model.put("alpha", b"1");
        write_keys(&cluster, &mut model, "before-join", 60).await;

        // Two more stores join: new ids from placement, registered, heartbeating; the replica
        // checker grows every region to 3 voters, one per store (learner, snapshot, promote).
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
        let placed = wait_replicated(&cluster, 2, &ids).await;
        assert!(placed.values().all(|stores| *stores == ids), "{placed:?}");
        // Every node's own replica holds the data written before it joined.
        for node in cluster.node_ids() {
            cluster.wait_stale_reads(node, &model).await;
            cluster.assert_reads(node, &model).await;
        }

        // Store heartbeats carry the disk and the counts.
        let status = wait_until("store statistics at placement", WAIT_TIMEOUT, async || {
            let status = cluster.placement_status().await?;
            let stores = status["stores"].as_array().cloned().unwrap_or_default();
            let reported = stores.iter().all(|s| {
                s["capacity_bytes"].as_u64().unwrap_or(0) > 0
                    && s["available_bytes"].as_u64().unwrap_or(0) > 0
            });
            let counts = stores
                .iter()
                .all(|s| s["region_count"] == 2 && s["used_bytes"].as_u64().unwrap_or(0) > 0);
            let leaders: u64 = stores
                .iter()
                .filter_map(|s| s["leader_count"].as_u64())
                .sum();
            let first_counts = counts && leaders == 2;
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
        let operators = kvctl(&cluster, &["operators", "--json"]).expect("kvctl operators");
        assert!(
            serde_json::from_str::<Value>(&operators).expect("JSON")["operators"].is_array(),
            "{operators}"
        );
        let regions_json = kvctl(&cluster, &["regions", "--json"]).expect("kvctl regions");
        let roles: BTreeSet<String> = serde_json::from_str::<Value>(&regions_json).expect("JSON")
            ["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["peers"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["role"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(
            roles,
            BTreeSet::from(["voter".to_owned()]),
            "{regions_json}"
        );
        let missing = kvctl(&cluster, &["region", "987654321"]).expect_err("unknown region");
        assert!(missing.contains("987654321"), "{missing}");

        // Writes through any node reach the leader (forwarded if it is elsewhere).
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
fn empty_stores_racing_to_bootstrap_create_one_cluster_with_three_voters_per_region() {
    run_serially(async {
        let cluster = Cluster::start(3, options(None)).await;
        wait_placement(&cluster, 2, 3).await;
        let mut ids = BTreeSet::new();
        for node in cluster.node_ids() {
            ids.insert(store_id_of(&cluster, node).await);
        }
        assert_eq!(ids.len(), 3, "three stores: {ids:?}");
        // One store won the bootstrap; the other two got their replicas from the checker.
        let placed = wait_replicated(&cluster, 2, &ids).await;
        let region_ids: BTreeSet<u64> = placed.keys().copied().collect();
        for node in cluster.node_ids() {
            let status = cluster.status(node).await.expect("node status");
            let local: BTreeSet<u64> = status.regions.iter().map(|r| r.id).collect();
            assert_eq!(
                local, region_ids,
                "node {node} hosts exactly the cluster's regions"
            );
        }
        let mut model = Model::default();
        for node in cluster.node_ids() {
            let key = format!("from-{node}");
            cluster.must_put(node, &key, key.as_bytes()).await;
            model.put(&key, key.as_bytes());
        }
        write_keys(&cluster, &mut model, "spread", 40).await;
        for node in cluster.node_ids() {
            cluster.assert_reads(node, &model).await;
            cluster.wait_stale_reads(node, &model).await;
        }
    });
}

/// Acceptance 3 and 4: with 4 stores, one stays down past max-store-down-time; its replicas
/// are rebuilt on the others (while a writer keeps going and placement itself was restarted
/// just before), nothing acknowledged is lost, and when the store returns its stale peers are
/// destroyed and stay destroyed.
#[test]
fn a_store_down_too_long_is_replaced_and_its_stale_peers_are_destroyed_on_return() {
    run_serially(async {
        let cluster = Cluster::start(
            4,
            ClusterOptions {
                // Balancing would (rightly) put new replicas on the returning empty store;
                // this test watches its old ones.
                placement_args: ["--max-store-down-time-secs", "5", "--disable-balance"]
                    .map(String::from)
                    .to_vec(),
                ..options(None)
            },
        )
        .await;
        wait_placement(&cluster, 2, 4).await;
        let mut store_of = BTreeMap::new();
        for node in cluster.node_ids() {
            store_of.insert(node, store_id_of(&cluster, node).await);
        }
        let all: BTreeSet<u64> = store_of.values().copied().collect();
        let placed = wait_replicated(&cluster, 2, &all).await;

        // The victim hosts at least one replica; the writer avoids it.
        let victim = *store_of
            .iter()
            .find(|(_, store)| placed.values().any(|stores| stores.contains(store)))
            .map(|(node, _)| node)
            .expect("some store hosts a replica");
        let victim_store = store_of[&victim];
        let writers: Vec<usize> = cluster
            .node_ids()
            .into_iter()
            .filter(|n| *n != victim)
            .collect();
        let acked: Arc<Mutex<Model>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let clients = cluster.clients(&writers);
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("load-{n}");
                    let client = &clients[n as usize % clients.len()];
                    // Only acknowledged writes are recorded; a failed one is simply not.
                    if client.put(&key, key.as_bytes()).await.is_ok() {
                        acked.lock().expect("model").put(&key, key.as_bytes());
                    }
                    n += 1;
                }
            })
        };

        // Placement restarts; KV traffic does not notice, and it resumes scheduling from its
        // disk state (the healing below is its work).
        cluster.kill_placement();
        cluster
            .must_put(writers[0], "during-placement-outage", b"1")
            .await;
        cluster.restart_placement().await;
        wait_placement(&cluster, 2, 4).await;

        cluster.kill(victim);
        let survivors: BTreeSet<u64> = all.iter().copied().filter(|s| *s != victim_store).collect();
        let healed = wait_replicated(&cluster, 2, &survivors).await;
        assert!(healed
            .values()
            .all(|stores| !stores.contains(&victim_store)));
        let status = cluster.placement_status().await.expect("placement status");
        let victim_state = status["stores"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"].as_u64() == Some(victim_store))
            .map(|s| s["state"].clone());
        assert_eq!(victim_state, Some(Value::from("down")), "{status}");
        wait_until(
            "placement to log the store going down",
            WAIT_TIMEOUT,
            async || {
                let logged = cluster.placement_log().lines().any(|line| {
                    line.contains("store down") && line.contains(&format!("store={victim_store}"))
                });
                if logged {
                    Ok(())
                } else {
                    Err("not logged yet".to_owned())
                }
            },
        )
        .await;

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.expect("writer task");
        let mut model = acked.lock().expect("model").clone();
        model.put("during-placement-outage", b"1");
        assert!(
            model.len() > 20,
            "the writer made progress: {} writes",
            model.len()
        );
        for node in &writers {
            cluster.assert_reads(*node, &model).await;
        }

        // The victim returns: its peers were removed while it was away; they learn it from
        // the region's members and destroy themselves, and nothing brings them back.
        cluster.restart(victim).await;
        wait_until(
            "the returning store's stale peers to be destroyed",
            REPLICATION_TIMEOUT,
            async || {
                let status = cluster.status(victim).await.map_err(|e| e.to_string())?;
                if status.regions.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "it still has regions {:?}",
                        status.regions.iter().map(|r| r.id).collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
        assert!(
            cluster.log(victim).contains("peer destroyed"),
            "the node logs each destruction"
        );
        assert_holds_for(
            "the destroyed peers stay destroyed",
            Duration::from_secs(3),
            async || {
                let status = cluster.status(victim).await.map_err(|e| e.to_string())?;
                if status.regions.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "regions came back: {:?}",
                        status.regions.iter().map(|r| r.id).collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
        // A node that destroyed peers (tombstones only, no raft state) restarts fine, and
        // its tombstones keep the peers from coming back.
        cluster.kill(victim);
        cluster.restart(victim).await;
        let status = cluster.status(victim).await.expect("status after restart");
        assert!(status.regions.is_empty(), "{:?}", status.regions);
        let still = wait_replicated(&cluster, 2, &survivors).await;
        assert_eq!(still, healed, "placement did not move anything back");
        // The returned node serves every acknowledged write (forwarding to the leaders).
        cluster.assert_reads(victim, &model).await;
    });
}
