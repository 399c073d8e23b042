//! Hibernation with real node processes: idle regions stop ticking on every replica, wake on
//! traffic, and followers of a crashed leader elect a new one with no client traffic at all
//! (they watch the leader's store through store heartbeats).

mod common;

use common::{run_serially, wait_until, Cluster, ClusterOptions, WAIT_TIMEOUT};

const REGIONS: u64 = 8;

fn options() -> ClusterOptions {
    ClusterOptions {
        initial_regions: Some(REGIONS),
        ..ClusterOptions::default()
    }
}

/// Waits until every region on each of `nodes` hibernates.
async fn wait_all_hibernating(cluster: &Cluster, nodes: &[usize]) {
    let what = format!("every region on nodes {nodes:?} to hibernate");
    wait_until(&what, WAIT_TIMEOUT, async || {
        for &node in nodes {
            let status = cluster.status(node).await.map_err(|e| e.to_string())?;
            let awake: Vec<u64> = status
                .regions
                .iter()
                .filter(|r| !r.hibernating)
                .map(|r| r.id)
                .collect();
            if status.regions.len() as u64 != REGIONS || !awake.is_empty() {
                return Err(format!("node {node}: regions {awake:?} awake"));
            }
        }
        Ok(())
    })
    .await
}

#[test]
fn idle_regions_hibernate_everywhere_and_wake_on_traffic() {
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        wait_all_hibernating(&cluster, &[1, 2, 3]).await;

        // Traffic through every node, to keys of every region: all served.
        let keys = common::keys_covering_regions(
            &cluster.status(1).await.expect("status").regions,
            "wake",
            2,
        );
        for (i, key) in keys.values().flatten().enumerate() {
            let node = i % 3 + 1;
            cluster.must_put(node, key, key.as_bytes()).await;
            assert_eq!(
                cluster.must_get(node % 3 + 1, key).await.as_deref(),
                Some(key.as_bytes()),
                "{key} written through node {node}"
            );
        }
        // Idle again: back to sleep, and the data is on every replica.
        wait_all_hibernating(&cluster, &[1, 2, 3]).await;
        for node in 1..=3 {
            for key in keys.values().flatten() {
                let stale = cluster
                    .client(node)
                    .get_stale(key)
                    .await
                    .expect("stale get");
                assert_eq!(
                    stale.as_deref(),
                    Some(key.as_bytes()),
                    "{key} on node {node}"
                );
            }
        }
    });
}

#[test]
fn followers_of_a_crashed_hibernating_leader_elect_a_new_one_without_traffic() {
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        wait_all_hibernating(&cluster, &[1, 2, 3]).await;
        // Crash the node leading the most regions (static cluster: store id = node number).
        let status = cluster.status(1).await.expect("status");
        let leaders: Vec<usize> = status
            .regions
            .iter()
            .map(|r| r.leader_store_id as usize)
            .collect();
        let victim = (1..=3)
            .max_by_key(|n| leaders.iter().filter(|l| *l == n).count())
            .expect("three nodes");
        let led = leaders.iter().filter(|l| **l == victim).count();
        assert!(led > 0, "some node leads a region: {leaders:?}");
        cluster.kill(victim);
        let survivors: Vec<usize> = (1..=3).filter(|n| *n != victim).collect();
        // No client request: the survivors notice the store's silence and elect leaders.
        cluster.wait_leaders_among(&survivors).await;
        let keys = common::keys_covering_regions(&status.regions, "after-crash", 1);
        for key in keys.values().flatten() {
            cluster
                .must_put(survivors[0], key, b"written after the crash")
                .await;
            assert_eq!(
                cluster.must_get(survivors[1], key).await.as_deref(),
                Some(&b"written after the crash"[..])
            );
        }
        eprintln!("node {victim} led {led} of {REGIONS} regions before the crash");
        // The restarted node rejoins; everything settles back into hibernation.
        cluster.restart(victim).await;
        cluster.wait_ready().await;
        wait_all_hibernating(&cluster, &[1, 2, 3]).await;
    });
}
