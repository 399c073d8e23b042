//! Region lifecycle with real node processes and a real placement process: `kvctl split`,
//! `move-region`, `transfer-leader` and `remove-store` under write load, automatic splits past
//! the split size, balancing onto a new store, and crashes in the middle of a move or a split.
//! Every test ends by reading back every acknowledged write and by checking that placement's
//! regions tile the ring and every node hosts exactly the regions placement puts on it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::placement::{
    kvctl, store_id_of, wait_placement, wait_settled, SettledRegion, REPLICATION_TIMEOUT,
};
use common::{run_serially, wait_until, Cluster, ClusterOptions, Model, NodeClient};
use serde_json::Value;

/// Placement flags for tests that steer replicas by hand: no balancing behind their back, and
/// a short operator timeout so a step stuck on a dead node is given up quickly.
fn manual_placement() -> Vec<String> {
    ["--disable-balance", "--operator-timeout-secs", "10"]
        .map(String::from)
        .to_vec()
}

fn options(initial_regions: u64, placement_args: Vec<String>) -> ClusterOptions {
    ClusterOptions {
        placement: true,
        initial_regions: Some(initial_regions),
        placement_args,
        ..ClusterOptions::default()
    }
}

/// Tasks writing unique keys through a set of nodes while a test reshapes the cluster;
/// only acknowledged writes are recorded (a failed or timed-out one is simply not).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Model>>,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(clients: Vec<NodeClient>, tasks: usize, prefix: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Model>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let tasks = (0..tasks)
            .map(|task| {
                let (stop, acked, count) = (stop.clone(), acked.clone(), count.clone());
                let clients = clients.clone();
                let prefix = format!("{prefix}-{task}");
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{prefix}-{n}");
                        let value = format!("{key}-value");
                        let client = &clients[(n + task) % clients.len()];
                        if client.put(&key, value.as_bytes()).await.is_ok() {
                            acked.lock().expect("model").put(&key, value.as_bytes());
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            count,
            tasks,
        }
    }

    async fn wait_acked(&self, at_least: u64) {
        let what = format!("{at_least} acknowledged writes");
        wait_until(&what, REPLICATION_TIMEOUT, async || {
            let n = self.count.load(Ordering::Relaxed);
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n} so far"))
            }
        })
        .await
    }

    /// Stops the writers and returns what they got acknowledged.
    async fn stop(self) -> Model {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("writer task");
        }
        let model = self.acked.lock().expect("model").clone();
        model
    }
}

async fn all_stores(cluster: &Cluster) -> BTreeMap<usize, u64> {
    let mut stores = BTreeMap::new();
    for node in cluster.running_nodes() {
        stores.insert(node, store_id_of(cluster, node).await);
    }
    stores
}

fn node_of(stores: &BTreeMap<usize, u64>, store: u64) -> usize {
    *stores
        .iter()
        .find(|(_, s)| **s == store)
        .map(|(node, _)| node)
        .expect("a node for the store")
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Acceptance 1: under a continuous concurrent write load, `kvctl split`, then
/// `kvctl move-region` (of a replica on the leader's store: leadership moves first), then
/// `kvctl transfer-leader` each complete, and every acknowledged write reads back.
#[test]
fn split_move_and_transfer_leader_complete_under_write_load_and_lose_nothing() {
    run_serially(async {
        let cluster = Cluster::start(4, options(1, manual_placement())).await;
        wait_placement(&cluster, 1, 4).await;
        let stores = all_stores(&cluster).await;
        let all: BTreeSet<u64> = stores.values().copied().collect();
        let settled = wait_settled(&cluster, Some(1), &all, REPLICATION_TIMEOUT).await;
        let (&region, _) = settled.iter().next().expect("one region");

        let writers = Writers::start(cluster.clients(&cluster.node_ids()), 3, "load");
        writers.wait_acked(150).await;

        let out = kvctl(
            &cluster,
            &["split", &region.to_string(), "--wait", "--json"],
        )
        .expect("kvctl split");
        let halves = json(&out)["regions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(halves.len(), 2, "split shows both halves: {out}");
        let settled = wait_settled(&cluster, Some(2), &all, REPLICATION_TIMEOUT).await;
        let split_off = *settled
            .keys()
            .find(|id| **id != region)
            .expect("a new region");

        // Move the split-off region's replica that sits on its leader's store.
        let SettledRegion { voters, leader, .. } = settled[&split_off].clone();
        let to = *all
            .difference(&voters)
            .next()
            .expect("a store without a replica");
        let out = kvctl(
            &cluster,
            &[
                "move-region",
                &split_off.to_string(),
                "--from",
                &leader.to_string(),
                "--to",
                &to.to_string(),
                "--wait",
                "--json",
            ],
        )
        .expect("kvctl move-region");
        let moved = &json(&out)["regions"][0];
        let on: BTreeSet<u64> = moved["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["store_id"].as_u64())
            .collect();
        assert!(on.contains(&to) && !on.contains(&leader), "{out}");
        let settled = wait_settled(&cluster, Some(2), &all, REPLICATION_TIMEOUT).await;
        assert!(!settled[&split_off].voters.contains(&leader));

        // Hand the other region's leadership to another of its voters.
        let other = &settled[&region];
        let target = *other
            .voters
            .iter()
            .find(|s| **s != other.leader)
            .expect("a follower");
        let out = kvctl(
            &cluster,
            &[
                "transfer-leader",
                &region.to_string(),
                "--to",
                &target.to_string(),
                "--wait",
                "--json",
            ],
        )
        .expect("kvctl transfer-leader");
        assert_eq!(
            json(&out)["regions"][0]["leader_store_id"].as_u64(),
            Some(target)
        );

        writers
            .wait_acked(writers.count.load(Ordering::Relaxed) + 50)
            .await;
        let model = writers.stop().await;
        wait_settled(&cluster, Some(2), &all, REPLICATION_TIMEOUT).await;
        for node in cluster.node_ids() {
            cluster.assert_reads(node, &model).await;
        }
        // Bad requests are refused with a clear message and change nothing.
        let err = kvctl(&cluster, &["split", "987654321"]).expect_err("unknown region");
        assert!(err.contains("987654321"), "{err}");
        let err = kvctl(
            &cluster,
            &["transfer-leader", &region.to_string(), "--to", "987654321"],
        )
        .expect_err("no voter there");
        assert!(err.contains("987654321"), "{err}");
    });
}

/// Acceptance 2: a region written past the split size splits (where its data halves), and
/// keeps splitting until every region is under the limit.
#[test]
fn a_region_written_past_the_split_size_splits_until_every_region_is_under_it() {
    const SPLIT_SIZE: u64 = 32 * 1024;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                node_args: vec!["--region-split-size-bytes".into(), SPLIT_SIZE.to_string()],
                ..options(1, manual_placement())
            },
        )
        .await;
        wait_placement(&cluster, 1, 3).await;
        let all: BTreeSet<u64> = all_stores(&cluster).await.values().copied().collect();
        wait_settled(&cluster, Some(1), &all, REPLICATION_TIMEOUT).await;

        let mut model = Model::default();
        let value = vec![b'v'; 1024];
        for n in 0..320 {
            let key = format!("big-{n}");
            cluster.must_put(1 + n % 3, &key, &value).await;
            model.put(&key, &value);
        }
        let total = 320 * (1024 + 8);
        let sizes = wait_until(
            "every region under the split size",
            REPLICATION_TIMEOUT,
            async || {
                let status = cluster.placement_status().await?;
                let regions = status["regions"].as_array().cloned().unwrap_or_default();
                let sizes: Vec<u64> = regions
                    .iter()
                    .map(|r| r["approximate_size_bytes"].as_u64().unwrap_or(0))
                    .collect();
                let sum: u64 = sizes.iter().sum();
                if sizes.len() >= (total / SPLIT_SIZE) as usize
                    && sizes.iter().all(|s| *s <= SPLIT_SIZE)
                    && sum >= total
                {
                    Ok(sizes)
                } else {
                    Err(format!("{} regions, sizes {sizes:?}", sizes.len()))
                }
            },
        )
        .await;
        let settled = wait_settled(&cluster, Some(sizes.len()), &all, REPLICATION_TIMEOUT).await;
        assert!(settled.len() >= 10, "{settled:?}");
        cluster.assert_reads(2, &model).await;
        for node in cluster.node_ids() {
            cluster.wait_stale_reads(node, &model).await;
        }
    });
}

/// Acceptance 3: a fourth store joining a 3-store cluster gets its share: replica and leader
/// counts per store end within one of each other (the balance schedulers' tolerance).
#[test]
fn a_new_store_gets_its_share_of_replicas_and_leaders() {
    run_serially(async {
        let cluster = Cluster::start(
            4,
            ClusterOptions {
                initial_nodes: Some(3),
                ..options(8, vec![])
            },
        )
        .await;
        wait_placement(&cluster, 8, 3).await;
        let three: BTreeSet<u64> = all_stores(&cluster).await.values().copied().collect();
        wait_settled(&cluster, Some(8), &three, REPLICATION_TIMEOUT).await;
        let mut model = Model::default();
        common::placement::write_keys(&cluster, &mut model, "before", 80).await;

        cluster.restart(4).await;
        let stores = all_stores(&cluster).await;
        let all: BTreeSet<u64> = stores.values().copied().collect();
        let what = "replica and leader counts per store within one of each other";
        let counts = wait_until(what, Duration::from_secs(180), async || {
            let settled = wait_settled(&cluster, Some(8), &all, REPLICATION_TIMEOUT).await;
            let mut replicas: BTreeMap<u64, usize> = all.iter().map(|s| (*s, 0)).collect();
            let mut leaders: BTreeMap<u64, usize> = all.iter().map(|s| (*s, 0)).collect();
            for region in settled.values() {
                for store in &region.voters {
                    *replicas.entry(*store).or_default() += 1;
                }
                *leaders.entry(region.leader).or_default() += 1;
            }
            let spread = |m: &BTreeMap<u64, usize>| {
                m.values().max().copied().unwrap_or(0) - m.values().min().copied().unwrap_or(0)
            };
            if spread(&replicas) <= 1 && spread(&leaders) <= 1 {
                Ok((replicas, leaders))
            } else {
                Err(format!("replicas {replicas:?}, leaders {leaders:?}"))
            }
        })
        .await;
        let new_store = stores[&4];
        assert!(
            counts.0[&new_store] >= 5,
            "the new store took its share: {counts:?}"
        );
        cluster.wait_stale_reads(4, &model).await;
        cluster.assert_reads(4, &model).await;
    });
}

/// Acceptance 4: `remove-store` drains a node completely (then tombstones it); stopping it
/// afterwards loses nothing.
#[test]
fn remove_store_drains_a_node_and_stopping_it_loses_nothing() {
    run_serially(async {
        let cluster = Cluster::start(4, options(2, vec![])).await;
        wait_placement(&cluster, 2, 4).await;
        let stores = all_stores(&cluster).await;
        let all: BTreeSet<u64> = stores.values().copied().collect();
        let settled = wait_settled(&cluster, Some(2), &all, REPLICATION_TIMEOUT).await;
        let mut model = Model::default();
        common::placement::write_keys(&cluster, &mut model, "keep", 60).await;

        // Drain a store that holds replicas (and likely a leader).
        let victim_store = settled.values().map(|r| r.leader).next().expect("a leader");
        let victim = node_of(&stores, victim_store);
        let out = kvctl(
            &cluster,
            &["remove-store", &victim_store.to_string(), "--wait"],
        )
        .expect("kvctl remove-store");
        assert!(out.contains("tombstone"), "{out}");
        let rest: BTreeSet<u64> = all.iter().copied().filter(|s| *s != victim_store).collect();
        wait_settled(&cluster, Some(2), &rest, REPLICATION_TIMEOUT).await;
        let listed = json(&kvctl(&cluster, &["stores", "--json"]).expect("kvctl stores"));
        let state = listed["stores"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"].as_u64() == Some(victim_store))
            .map(|s| s["state"].clone());
        assert_eq!(state, Some(Value::from("tombstone")), "{listed}");

        cluster.kill(victim);
        let survivors: Vec<usize> = cluster.running_nodes();
        for node in &survivors {
            cluster.assert_reads(*node, &model).await;
        }
        cluster.must_put(survivors[0], "after-removal", b"1").await;
        assert_eq!(
            cluster.must_get(survivors[1], "after-removal").await,
            Some(b"1".to_vec())
        );
        // Too few stores left for another removal: refused, nothing changes.
        let err = kvctl(
            &cluster,
            &["remove-store", &stores[&survivors[0]].to_string()],
        )
        .expect_err("would leave fewer stores than replicas");
        assert!(!err.is_empty());
    });
}

/// Acceptance 5: a node crash in the middle of a move (the target, while it receives its
/// replica) and a leader crash right after a split was asked both end consistent: the ring is
/// tiled by regions each with 3 voters, every node hosts exactly what placement says, and every
/// acknowledged write reads back.
#[test]
fn crashes_during_a_move_and_a_split_end_consistent() {
    run_serially(async {
        let cluster = Cluster::start(4, options(1, manual_placement())).await;
        wait_placement(&cluster, 1, 4).await;
        let stores = all_stores(&cluster).await;
        let all: BTreeSet<u64> = stores.values().copied().collect();
        let settled = wait_settled(&cluster, Some(1), &all, REPLICATION_TIMEOUT).await;
        let (&region, shape) = settled.iter().next().expect("one region");
        let writers = Writers::start(cluster.clients(&cluster.node_ids()), 2, "crash");
        writers.wait_acked(100).await;

        // Move a follower's replica to the fourth store; kill the target mid-move.
        let to = *all.difference(&shape.voters).next().expect("a free store");
        let from = *shape
            .voters
            .iter()
            .find(|s| **s != shape.leader)
            .expect("a follower");
        kvctl(
            &cluster,
            &[
                "move-region",
                &region.to_string(),
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
            ],
        )
        .expect("kvctl move-region");
        wait_until(
            "the target to get its learner",
            REPLICATION_TIMEOUT,
            async || {
                let status = cluster.placement_status().await?;
                let has = status["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["peers"].as_array().cloned().unwrap_or_default())
                    .any(|p| p["store_id"].as_u64() == Some(to));
                if has {
                    Ok(())
                } else {
                    Err(format!("{status}"))
                }
            },
        )
        .await;
        let target = node_of(&stores, to);
        cluster.kill(target);
        cluster.restart(target).await;
        let settled = wait_settled(&cluster, Some(1), &all, REPLICATION_TIMEOUT).await;
        let voters = &settled[&region].voters;
        assert!(
            voters.contains(&to) != voters.contains(&from),
            "the move either completed or was rolled back: {voters:?}"
        );

        // Ask for a split and kill the leader at once.
        let leader = node_of(&stores, settled[&region].leader);
        kvctl(&cluster, &["split", &region.to_string()]).expect("kvctl split");
        cluster.kill(leader);
        cluster.restart(leader).await;
        let settled = wait_settled(&cluster, None, &all, REPLICATION_TIMEOUT).await;
        assert!(
            (1..=2).contains(&settled.len()),
            "one region or its two halves: {settled:?}"
        );

        let model = writers.stop().await;
        wait_settled(&cluster, None, &all, REPLICATION_TIMEOUT).await;
        for node in cluster.node_ids() {
            cluster.assert_reads(node, &model).await;
        }
    });
}

/// Split triggers other than size: a region holding more keys than `--region-split-keys`
/// splits until each is under it.
#[test]
fn a_region_with_too_many_keys_splits_until_every_region_is_under_the_key_limit() {
    const SPLIT_KEYS: u64 = 100;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                node_args: [
                    "--region-split-keys",
                    &SPLIT_KEYS.to_string(),
                    "--region-split-load-keys-per-sec",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
                ..options(1, manual_placement())
            },
        )
        .await;
        wait_placement(&cluster, 1, 3).await;
        let all: BTreeSet<u64> = all_stores(&cluster).await.values().copied().collect();
        let mut model = Model::default();
        common::placement::write_keys(&cluster, &mut model, "many", 360).await;
        let count = wait_until(
            "every region under the key limit",
            REPLICATION_TIMEOUT,
            async || {
                let status = cluster.placement_status().await?;
                let keys: Vec<u64> = status["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| r["approximate_keys"].as_u64().unwrap_or(0))
                    .collect();
                if keys.len() >= 4
                    && keys.iter().all(|k| *k <= SPLIT_KEYS)
                    && keys.iter().sum::<u64>() >= 360
                {
                    Ok(keys.len())
                } else {
                    Err(format!("keys per region {keys:?}"))
                }
            },
        )
        .await;
        wait_settled(&cluster, Some(count), &all, REPLICATION_TIMEOUT).await;
        cluster.assert_reads(3, &model).await;
    });
}

/// Load split: a small region that serves more keys per second than
/// `--region-split-load-keys-per-sec` for a while splits where its recent accesses halve.
#[test]
fn a_region_under_sustained_load_splits_where_its_load_halves() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                node_args: [
                    "--region-split-load-keys-per-sec",
                    "40",
                    "--region-split-keys",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
                ..options(1, manual_placement())
            },
        )
        .await;
        wait_placement(&cluster, 1, 3).await;
        let all: BTreeSet<u64> = all_stores(&cluster).await.values().copied().collect();
        // Writes as fast as the clients go: little data, steady load.
        let writers = Writers::start(cluster.clients(&cluster.node_ids()), 3, "hot");
        let regions = wait_until("a load split", REPLICATION_TIMEOUT, async || {
            let status = cluster.placement_status().await?;
            let regions = status["regions"].as_array().cloned().unwrap_or_default();
            if regions.len() >= 2 {
                Ok(regions)
            } else {
                let stats: Vec<Value> = regions
                    .iter()
                    .map(|r| r["approximate_keys"].clone())
                    .collect();
                Err(format!("{} region(s): {stats:?}", regions.len()))
            }
        })
        .await;
        let model = writers.stop().await;
        assert!(regions.len() >= 2);
        wait_settled(&cluster, None, &all, REPLICATION_TIMEOUT).await;
        cluster.assert_reads(1, &model).await;
    });
}
