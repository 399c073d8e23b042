//! Lease reads with real node processes: a leader a quorum confirmed recently answers
//! linearizable reads without a ReadIndex round per read, sees every acknowledged write, and
//! an isolated leader stops answering before the majority can elect another leader and take
//! writes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    run_serially, wait_until, Cluster, ClusterOptions, NodeClient, ELECTION_TICKS, RAFT_TICK_MS,
    WAIT_TIMEOUT,
};
use reqwest::Method;

/// The sum of a counter's samples in node `node`'s `/metrics` (0 if absent).
async fn counter(cluster: &Cluster, node: usize, name: &str) -> u64 {
    let metrics = cluster
        .request(node, Method::GET, "/metrics", None)
        .await
        .expect("GET /metrics")
        .text();
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

const LEASE_READS: &str = "ringkv_raft_lease_reads_total";
const READ_INDEXES: &str = "ringkv_raft_read_index_total";

#[test]
fn a_confirmed_leader_answers_reads_without_a_read_index_round_and_sees_every_write() {
    run_serially(async {
        let cluster = Cluster::start(3, ClusterOptions::default()).await;
        cluster.wait_ready().await;
        let leader = cluster.wait_for_leader(1).await;
        let follower = cluster
            .node_ids()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a follower");
        cluster.must_put(leader, "lease", b"0").await;

        let lease_before = counter(&cluster, leader, LEASE_READS).await;
        let index_before = counter(&cluster, leader, READ_INDEXES).await;
        let reads = 300;
        let mut expected = "0".to_owned();
        for n in 0..reads {
            if n % 30 == 29 {
                // A write through a follower (forwarded, acknowledged after apply on the
                // leader): the very next read at the leader must see it.
                expected = n.to_string();
                cluster
                    .must_put(follower, "lease", expected.as_bytes())
                    .await;
            }
            let got = cluster.must_get(leader, "lease").await;
            assert_eq!(
                got.as_deref(),
                Some(expected.as_bytes()),
                "read {n} at the leader"
            );
        }
        let lease_reads = counter(&cluster, leader, LEASE_READS).await - lease_before;
        let read_indexes = counter(&cluster, leader, READ_INDEXES).await - index_before;
        eprintln!("{reads} reads: {lease_reads} under the lease, {read_indexes} ReadIndex rounds");
        assert!(
            lease_reads >= reads / 2,
            "only {lease_reads} of {reads} reads were answered under the lease"
        );
        assert!(
            read_indexes <= reads / 4,
            "{read_indexes} ReadIndex rounds for {reads} reads"
        );
    });
}

#[test]
fn with_lease_reads_off_every_read_goes_through_read_index() {
    run_serially(async {
        let options = ClusterOptions {
            node_args: vec!["--lease-reads".to_owned(), "false".to_owned()],
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(3, options).await;
        cluster.wait_ready().await;
        let leader = cluster.wait_for_leader(1).await;
        cluster.must_put(leader, "lease", b"1").await;
        let index_before = counter(&cluster, leader, READ_INDEXES).await;
        let reads = 40;
        for _ in 0..reads {
            assert_eq!(
                cluster.must_get(leader, "lease").await.as_deref(),
                Some(&b"1"[..])
            );
        }
        assert_eq!(counter(&cluster, leader, LEASE_READS).await, 0);
        let read_indexes = counter(&cluster, leader, READ_INDEXES).await - index_before;
        assert!(
            read_indexes >= reads,
            "{read_indexes} ReadIndex rounds for {reads} sequential reads"
        );
    });
}

/// Every read the reader sent: when, and the value it answered (`None`: no answer).
type Reads = Arc<Mutex<Vec<(Instant, Option<Option<Vec<u8>>>)>>>;

/// Reads `key` at `client` until `stop` says so, recording each read in `reads`.
async fn read_until(
    client: NodeClient,
    key: &str,
    reads: Reads,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let sent = Instant::now();
        let answer = client.get(key).await.ok();
        reads.lock().expect("reads").push((sent, answer));
        // Pace the reads: each one is a request to a leader that may be about to lose its
        // lease, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn an_isolated_leader_stops_answering_reads_before_the_majority_takes_a_write() {
    run_serially(async {
        let options = ClusterOptions {
            relays: true,
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(3, options).await;
        cluster.wait_ready().await;
        let old_leader = cluster.wait_for_leader(1).await;
        cluster.must_put(old_leader, "k", b"old").await;
        // Reads keep the lease fresh right up to the cut.
        for _ in 0..20 {
            assert_eq!(
                cluster.must_get(old_leader, "k").await.as_deref(),
                Some(&b"old"[..])
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let reads = Reads::default();
        let reader = tokio::spawn(read_until(
            cluster.client_with_timeout(old_leader, Duration::from_millis(500)),
            "k",
            reads.clone(),
            stop_rx,
        ));
        cluster.isolate(old_leader);
        let cut_at = Instant::now();

        // The majority elects a leader and takes a new value.
        let majority: Vec<usize> = cluster
            .node_ids()
            .into_iter()
            .filter(|&id| id != old_leader)
            .collect();
        // Short client timeouts: the write is retried often, so it is acknowledged soon after
        // the majority elects its leader — well inside a lease that was too long.
        let writers: Vec<NodeClient> = majority
            .iter()
            .map(|&id| cluster.client_with_timeout(id, Duration::from_millis(300)))
            .collect();
        let mut acked_at = None;
        wait_until("the majority to take a write", WAIT_TIMEOUT, async || {
            for writer in &writers {
                if writer.put("k", b"new").await.is_ok() {
                    acked_at = Some(Instant::now());
                    return Ok(());
                }
            }
            Err("no node of the majority took it yet".to_owned())
        })
        .await;
        let acked_at = acked_at.expect("acknowledged");
        // Keep reading at the isolated leader until several reads were sent after the new
        // value was acknowledged.
        let sent_after = || {
            let reads = reads.lock().expect("reads");
            reads.iter().filter(|(sent, _)| *sent > acked_at).count()
        };
        wait_until(
            "5 reads sent to the isolated leader after the acknowledgement",
            WAIT_TIMEOUT,
            async || match sent_after() {
                n if n >= 5 => Ok(()),
                n => Err(format!("{n} so far")),
            },
        )
        .await;
        let _ = stop_tx.send(true);
        reader.await.expect("reader task");
        let answered: Vec<(Instant, Option<Vec<u8>>)> = reads
            .lock()
            .expect("reads")
            .iter()
            .filter_map(|(sent, answer)| Some((*sent, answer.clone()?)))
            .collect();

        let stale: Vec<_> = answered
            .iter()
            .filter(|(sent, value)| *sent > acked_at && value.as_deref() == Some(&b"old"[..]))
            .collect();
        assert!(
            stale.is_empty(),
            "the isolated old leader answered {} reads sent after the new value was acknowledged \
             with the old one (first at {:?} after the cut)",
            stale.len(),
            stale[0].0 - cut_at
        );
        let last_answer = answered.iter().map(|(sent, _)| *sent).max();
        eprintln!(
            "isolated leader answered {} reads, the last sent {:?} after the cut; the majority \
             took the write {:?} after the cut",
            answered.len(),
            last_answer.map(|t| t.saturating_duration_since(cut_at)),
            acked_at - cut_at
        );
        cluster.heal();
    });
}

/// Reads at region 1's leader on `node` (which takes or renews its lease) until its status
/// reports a lease of `expected_ms`.
async fn wait_for_lease(cluster: &Cluster, node: usize, expected_ms: u64, what: &str) {
    wait_until(what, WAIT_TIMEOUT, async || {
        cluster
            .get(node, "lease")
            .await
            .map_err(|e| format!("read: {e}"))?;
        let region = cluster.region(node, 1).await?;
        match region.lease_ms {
            _ if !region.is_leader => Err(format!("node {node} is no longer the leader")),
            ms if ms == expected_ms => Ok(()),
            ms => Err(format!("lease {ms} ms, expected {expected_ms}")),
        }
    })
    .await;
}

#[test]
fn a_lease_fits_the_smallest_vote_refusal_window_among_the_regions_stores() {
    run_serially(async {
        // Node 3 ticks twice as fast, so it grants votes again after half the others' window.
        // It starts after nodes 1 and 2 have elected a leader, which stays one of them.
        let mut opts = ClusterOptions {
            initial_nodes: Some(2),
            ..Default::default()
        };
        opts.node_flags.insert(
            3,
            vec![("--raft-tick-ms".to_owned(), (RAFT_TICK_MS / 2).to_string())],
        );
        let cluster = Cluster::start(3, opts).await;
        cluster.wait_leaders_among(&[1, 2]).await;
        let leader = cluster.wait_for_leader(1).await;
        assert_ne!(leader, 3);
        cluster.must_put(leader, "lease", b"1").await;
        let own_ms = (ELECTION_TICKS - 1) * RAFT_TICK_MS * 4 / 5;
        let fast_ms = (ELECTION_TICKS - 1) * (RAFT_TICK_MS / 2) * 4 / 5;
        wait_for_lease(
            &cluster,
            leader,
            own_ms,
            "a lease by the leader's own window",
        )
        .await;

        cluster.start_node(3);
        wait_for_lease(
            &cluster,
            leader,
            fast_ms,
            "the lease cut to node 3's window",
        )
        .await;
        // Reads stay correct and keep being answered under the shorter lease.
        cluster.must_put(3, "lease", b"2").await;
        assert_eq!(
            cluster.must_get(leader, "lease").await.as_deref(),
            Some(&b"2"[..])
        );
        assert!(cluster
            .log(leader)
            .contains("a store runs other raft timing"));
    });
}
