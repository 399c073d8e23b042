//! Correctness under faults: concurrent clients run put/get/delete/CAS against a real 3-node
//! cluster while a nemesis kills, pauses, partitions and restarts nodes or degrades links; the
//! recorded history is then checked for linearizability (`support/linearizability.rs`), every
//! acknowledged write is looked for, and every replica must converge.
//!
//! Node-to-node traffic goes through the harness's UDP relays (`common/relay.rs`), so
//! partitions and lossy links are real packet loss under QUIC. Crash points come from the
//! `fail` crate (this file needs the `failpoints` feature, see Cargo.toml).
//!
//! Every scenario derives all its random choices from one seed. A failure prints the seed and
//! writes the history next to the node logs, so it can be replayed:
//! `RINGKV_NEMESIS_SEED=<seed> cargo test --features failpoints --test nemesis <scenario>`.
//!
//! Soak mode (not in CI): `RINGKV_SOAK_SECS=1800 RINGKV_SOAK_SEED=7 cargo test --release
//! --features failpoints --test nemesis soak -- --ignored --nocapture` runs random scenarios
//! for that long and prints a table: scenario, runs, operations checked, violations, lost
//! writes.

#[path = "support/linearizability.rs"]
mod linearizability;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::relay::LinkFaults;
use common::{run_serially, wait_until, Cluster, ClusterOptions, Failure, HttpError, NodeClient};
use linearizability::{check, CheckResult, History, Op, Outcome, Recorder, Response, Value};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Keys per scenario: few, so clients contend and CAS races are frequent.
const KEYS: usize = 4;
const CLIENTS_PER_NODE: usize = 2;
/// The server's bound on one request (leader wait + raft), short so faults surface quickly.
const SERVER_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// The client's bound on one request: above the server's, so a late answer is told apart
/// from none at all; a paused node makes requests reach it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed request before the client's next one (no busy loop on a dead node).
const CLIENT_BACKOFF: Duration = Duration::from_millis(100);
/// Bound on any awaited progress of the workload.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fault that stops all progress (no quorum) is held.
const NO_QUORUM_HOLD: Duration = Duration::from_secs(3);
const REGIONS: u64 = 2;
/// Small, so a node that was down catches up by snapshot (exercises the snapshot path).
const GC_THRESHOLD: u64 = 50;

fn cluster_options(failpoints: BTreeMap<usize, String>) -> ClusterOptions {
    ClusterOptions {
        initial_regions: Some(REGIONS),
        raft_log_gc_threshold: Some(GC_THRESHOLD),
        request_timeout_ms: Some(SERVER_REQUEST_TIMEOUT_MS),
        relays: true,
        failpoints,
        ..ClusterOptions::default()
    }
}

/// The seed of a CI run: fixed per scenario unless `RINGKV_NEMESIS_SEED` replays another.
fn seed_or(default: u64) -> u64 {
    std::env::var("RINGKV_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The workload

/// Concurrent clients recording a history until stopped.
struct Workload {
    recorder: Arc<Recorder>,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    /// Operations that got a definite answer (any client): the measure of progress.
    answered: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Workload {
    /// Starts `CLIENTS_PER_NODE` clients per node, each pinned to its node, on fresh keys
    /// named after `prefix` (so every round's history starts from absent keys), spread evenly
    /// over the regions (so every region sees writes).
    async fn start(cluster: &Cluster, prefix: &str, seed: u64) -> Workload {
        let recorder = Arc::new(Recorder::new());
        let regions = cluster.status(1).await.expect("status of node 1").regions;
        let keys: Vec<String> =
            common::keys_covering_regions(&regions, prefix, KEYS / regions.len())
                .into_values()
                .flatten()
                .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for node in cluster.node_ids() {
            for slot in 0..CLIENTS_PER_NODE {
                let client_id = (node * 10 + slot) as u64;
                let client = Client {
                    id: client_id,
                    http: cluster.client_with_timeout(node, CLIENT_TIMEOUT),
                    recorder: recorder.clone(),
                    rng: StdRng::seed_from_u64(seed ^ client_id.wrapping_mul(0x9E37_79B9)),
                    last_seen: BTreeMap::new(),
                    next_value: 0,
                };
                tasks.spawn(client.run(keys.clone(), stop.clone(), answered.clone()));
            }
        }
        Workload {
            recorder,
            keys,
            stop,
            answered,
            tasks,
        }
    }

    /// Waits until `count` more operations got a definite answer: the cluster makes progress.
    async fn wait_progress(&self, count: u64, what: &str) {
        let target = self.answered.load(Ordering::Relaxed) + count;
        let description = format!("{count} more answered operations ({what})");
        wait_until(&description, PROGRESS_TIMEOUT, async || {
            let now = self.answered.load(Ordering::Relaxed);
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target}"))
            }
        })
        .await
    }

    /// Stops the clients (each finishes or abandons its current request) and returns the
    /// history.
    async fn stop(mut self) -> (History, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
        (self.recorder.history(), self.keys)
    }
}

struct Client {
    id: u64,
    http: NodeClient,
    recorder: Arc<Recorder>,
    rng: StdRng,
    /// The last value this client read or wrote per key: what its CAS operations expect.
    last_seen: BTreeMap<String, Value>,
    next_value: u64,
}

impl Client {
    async fn run(mut self, keys: Vec<String>, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
        while !stop.load(Ordering::Relaxed) {
            let key = keys[self.rng.random_range(0..keys.len())].clone();
            let definite = self.one_operation(&key).await;
            if definite {
                answered.fetch_add(1, Ordering::Relaxed);
            } else {
                tokio::time::sleep(CLIENT_BACKOFF).await;
            }
        }
    }

    fn unique_value(&mut self) -> Vec<u8> {
        self.next_value += 1;
        format!("c{}-{}", self.id, self.next_value).into_bytes()
    }

    /// One random operation, recorded; true when it got a definite answer.
    async fn one_operation(&mut self, key: &str) -> bool {
        let roll = self.rng.random_range(0..100);
        let op = match roll {
            0..45 => Op::Get,
            45..72 => Op::Put(self.unique_value()),
            72..77 => Op::Delete,
            _ => Op::Cas {
                expected: self.last_seen.get(key).cloned().flatten(),
                new: Some(self.unique_value()),
            },
        };
        let invocation = self.recorder.invoke(self.id, key, op.clone());
        let outcome = execute(&self.http, key, &op).await;
        match (&op, &outcome) {
            (Op::Get, Outcome::Ok(Response::Read(value))) => {
                self.last_seen.insert(key.to_owned(), value.clone());
            }
            (Op::Put(value), Outcome::Ok(_)) => {
                self.last_seen.insert(key.to_owned(), Some(value.clone()));
            }
            (Op::Delete, Outcome::Ok(_)) => {
                self.last_seen.insert(key.to_owned(), None);
            }
            (Op::Cas { new, .. }, Outcome::Ok(Response::CasResult(true))) => {
                self.last_seen.insert(key.to_owned(), new.clone());
            }
            _ => {}
        }
        let definite = matches!(outcome, Outcome::Ok(_));
        self.recorder.complete(invocation, outcome);
        definite
    }
}

/// Sends `op` and classifies the answer the way the history needs it: a read that failed is
/// dropped (`Failed`), a write that did not get an answer is `Unknown` unless it provably
/// never reached the node (connection refused).
async fn execute(http: &NodeClient, key: &str, op: &Op) -> Outcome {
    let unanswered = |error: HttpError| match error.failure {
        Failure::Connect(_) => Outcome::Failed,
        Failure::Status(reply) if (400..500).contains(&reply.status) => {
            panic!(
                "the workload sent a request the node rejects: {}",
                reply.text()
            )
        }
        _ => Outcome::Unknown,
    };
    match op {
        Op::Get => match http.get(key).await {
            Ok(value) => Outcome::Ok(Response::Read(value)),
            Err(_) => Outcome::Failed,
        },
        Op::Put(value) => match http.put(key, value).await {
            Ok(()) => Outcome::Ok(Response::Written),
            Err(error) => unanswered(error),
        },
        Op::Delete => match http.delete(key).await {
            Ok(()) => Outcome::Ok(Response::Written),
            Err(error) => unanswered(error),
        },
        Op::Cas { expected, new } => {
            match http.cas(key, expected.as_deref(), new.as_deref()).await {
                Ok(swapped) => Outcome::Ok(Response::CasResult(swapped)),
                Err(error) => unanswered(error),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Nemesis scenarios

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    LeaderKill,
    FollowerKill,
    MinorityPartition,
    IsolatedLeader,
    NoQuorum,
    Pause,
    WholeClusterRestart,
    LossyLinks,
    /// A random node crashes at a random crash point and restarts.
    CrashPoint,
}

const ALL_SCENARIOS: [Scenario; 9] = [
    Scenario::LeaderKill,
    Scenario::FollowerKill,
    Scenario::MinorityPartition,
    Scenario::IsolatedLeader,
    Scenario::NoQuorum,
    Scenario::Pause,
    Scenario::WholeClusterRestart,
    Scenario::LossyLinks,
    Scenario::CrashPoint,
];

/// Region ids of the cluster (every node has every region).
async fn region_ids(cluster: &Cluster) -> Vec<u64> {
    let status = cluster.status(1).await.expect("status of node 1");
    status.regions.iter().map(|r| r.id).collect()
}

/// The node leading a random region, and that region.
async fn some_leader(cluster: &Cluster, rng: &mut StdRng) -> (usize, u64) {
    let regions = region_ids(cluster).await;
    let region = regions[rng.random_range(0..regions.len())];
    (cluster.wait_for_leader(region).await, region)
}

/// Waits until a node other than `old` leads `region` (the old one may still think it does).
async fn wait_new_leader(cluster: &Cluster, region: u64, old: usize) -> usize {
    let what = format!("a node other than {old} to lead region {region}");
    wait_until(&what, PROGRESS_TIMEOUT, async || {
        for id in cluster.running_nodes().into_iter().filter(|&id| id != old) {
            if cluster.is_paused(id) {
                continue;
            }
            if let Ok(status) = cluster.region(id, region).await {
                if status.is_leader {
                    return Ok(id);
                }
            }
        }
        Err("none yet".to_owned())
    })
    .await
}

/// Writes a fresh value to every key through the majority and then reads every key through
/// the isolated node `isolated`, recording both: the read must not return the old value (the
/// etcd stale-read case). Runs as client 900/901.
async fn probe_stale_reads(cluster: &Cluster, workload: &Workload, isolated: usize) {
    let majority: Vec<usize> = cluster
        .node_ids()
        .into_iter()
        .filter(|&id| id != isolated)
        .collect();
    let writer = cluster.client_with_timeout(majority[0], CLIENT_TIMEOUT);
    let reader = cluster.client_with_timeout(isolated, CLIENT_TIMEOUT);
    for (n, key) in workload.keys.iter().enumerate() {
        let value = format!("probe-{n}").into_bytes();
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        loop {
            let invocation = workload
                .recorder
                .invoke(900, key.as_str(), Op::Put(value.clone()));
            let outcome = execute(&writer, key, &Op::Put(value.clone())).await;
            let done = matches!(outcome, Outcome::Ok(_));
            workload.recorder.complete(invocation, outcome);
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the majority did not accept a write to {key}"
            );
            tokio::time::sleep(CLIENT_BACKOFF).await;
        }
        let invocation = workload.recorder.invoke(901, key.as_str(), Op::Get);
        let outcome = execute(&reader, key, &Op::Get).await;
        workload.recorder.complete(invocation, outcome);
    }
}

/// Runs one scenario's faults while the workload runs, and undoes them.
async fn run_nemesis(cluster: &Cluster, workload: &Workload, scenario: Scenario, rng: &mut StdRng) {
    workload.wait_progress(30, "before the fault").await;
    match scenario {
        Scenario::LeaderKill | Scenario::FollowerKill => {
            for _ in 0..2 {
                let (leader, _) = some_leader(cluster, rng).await;
                let victim = if scenario == Scenario::LeaderKill {
                    leader
                } else {
                    let others: Vec<usize> = cluster
                        .node_ids()
                        .into_iter()
                        .filter(|&id| id != leader)
                        .collect();
                    others[rng.random_range(0..others.len())]
                };
                cluster.kill(victim);
                workload
                    .wait_progress(40, &format!("node {victim} killed"))
                    .await;
                cluster.restart(victim).await;
                workload
                    .wait_progress(20, &format!("node {victim} restarted"))
                    .await;
            }
        }
        Scenario::MinorityPartition => {
            let (leader, _) = some_leader(cluster, rng).await;
            let follower = cluster
                .node_ids()
                .into_iter()
                .find(|&id| id != leader)
                .expect("a 3-node cluster has followers");
            cluster.isolate(follower);
            workload
                .wait_progress(60, &format!("node {follower} isolated"))
                .await;
            cluster.heal();
        }
        Scenario::IsolatedLeader => {
            let (leader, region) = some_leader(cluster, rng).await;
            cluster.isolate(leader);
            wait_new_leader(cluster, region, leader).await;
            probe_stale_reads(cluster, workload, leader).await;
            workload
                .wait_progress(40, &format!("old leader {leader} isolated"))
                .await;
            cluster.heal();
        }
        Scenario::NoQuorum => {
            let ids = cluster.node_ids();
            let groups: Vec<&[usize]> = ids.chunks(1).collect();
            cluster.partition(&groups);
            tokio::time::sleep(NO_QUORUM_HOLD).await;
            cluster.heal();
        }
        Scenario::Pause => {
            let (leader, region) = some_leader(cluster, rng).await;
            cluster.pause(leader);
            wait_new_leader(cluster, region, leader).await;
            workload
                .wait_progress(40, &format!("leader {leader} paused"))
                .await;
            cluster.resume(leader);
        }
        Scenario::WholeClusterRestart => {
            for id in cluster.node_ids() {
                cluster.kill(id);
            }
            cluster.restart_all_of(&cluster.node_ids()).await;
        }
        Scenario::LossyLinks => {
            cluster.set_all_links(LinkFaults {
                drop_rate: 0.1,
                duplicate_rate: 0.05,
                delay: Duration::from_millis(2),
                jitter: Duration::from_millis(10),
                cut: false,
            });
            workload.wait_progress(80, "lossy links").await;
            cluster.heal();
        }
        Scenario::CrashPoint => {
            let (point, action) = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
            let node = rng.random_range(1..=cluster.node_ids().len());
            crash_at(cluster, workload, node, point, action, rng).await;
        }
    }
    workload.wait_progress(30, "after the fault").await;
}

// ---------------------------------------------------------------------------------------------
// Checking a round

/// What one round established.
#[derive(Debug)]
struct RoundReport {
    ops_checked: usize,
    lost_writes: usize,
    verdict: CheckResult,
}

/// Heals everything, stops the workload, reads every key back (recorded, so the checker also
/// covers the final state), checks the history, counts lost acknowledged writes, and waits for
/// every replica to converge on the final values.
async fn finish_round(cluster: &Cluster, workload: Workload, label: &str) -> RoundReport {
    cluster.heal();
    for id in cluster.node_ids() {
        if cluster.is_paused(id) {
            cluster.resume(id);
        }
    }
    let stopped: Vec<usize> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| !cluster.running_nodes().contains(id))
        .collect();
    if !stopped.is_empty() {
        cluster.restart_all_of(&stopped).await;
    }
    cluster.wait_ready().await;
    let recorder = workload.recorder.clone();
    let keys = workload.keys.clone();
    let (_, _) = workload.stop().await;
    let reader = cluster.client(1);
    let mut finals = common::Model::default();
    for key in &keys {
        let invocation = recorder.invoke(999, key.as_str(), Op::Get);
        let value = reader.must_get(key).await;
        recorder.complete(invocation, Outcome::Ok(Response::Read(value.clone())));
        match &value {
            Some(v) => finals.put(key, v),
            None => finals.delete(key),
        }
    }
    let history = recorder.history();
    let verdict = check(&history, &None);
    let lost_writes = lost_acknowledged_writes(&history, &keys);
    let ops_checked = match &verdict {
        CheckResult::Linearizable { ops_checked } => *ops_checked,
        _ => history.len(),
    };
    if !verdict.is_linearizable() || lost_writes > 0 {
        let path = cluster.dir().join(format!("history-{label}.txt"));
        let text: String = history
            .events()
            .iter()
            .map(|e| format!("{e:?}\n"))
            .collect();
        let _ = std::fs::write(&path, text);
        eprintln!(
            "{label}: history of {} events written to {}",
            history.len(),
            path.display()
        );
    } else {
        for id in cluster.node_ids() {
            cluster.wait_stale_reads(id, &finals).await;
        }
    }
    RoundReport {
        ops_checked,
        lost_writes,
        verdict,
    }
}

/// Keys whose final value (the last read, client 999) is not the value of any write that might
/// be the last one: an acknowledged write that no later acknowledged write replaced, or an
/// unknown one. A necessary condition, counted on its own so a lost write is reported as such
/// even when the checker gives up.
fn lost_acknowledged_writes(history: &History, keys: &[String]) -> usize {
    let mut lost = 0;
    for key in keys {
        let events: Vec<_> = history
            .events()
            .iter()
            .filter(|e| e.key == key.as_bytes())
            .collect();
        let Some(last_read) = events.iter().rev().find(|e| e.client == 999) else {
            continue;
        };
        let Outcome::Ok(Response::Read(final_value)) = &last_read.outcome else {
            continue;
        };
        // Writes that may have taken effect, with what they leave behind.
        let writes: Vec<(&linearizability::Event, Value, bool)> = events
            .iter()
            .filter_map(|e| {
                let effect = match &e.op {
                    Op::Put(v) => Some(v.clone()),
                    Op::Delete => None,
                    Op::Cas { new, .. } => new.clone(),
                    Op::Get => return None,
                };
                match &e.outcome {
                    Outcome::Ok(Response::Written) | Outcome::Ok(Response::CasResult(true)) => {
                        Some((*e, effect, true))
                    }
                    Outcome::Unknown => Some((*e, effect, false)),
                    _ => None,
                }
            })
            .collect();
        if !writes.iter().any(|(_, _, acked)| *acked) {
            continue;
        }
        let superseded = |w: &linearizability::Event| {
            let done = w.complete_ns.unwrap_or(u64::MAX);
            writes
                .iter()
                .any(|(other, _, acked)| *acked && other.invoke_ns > done)
        };
        let explained = writes
            .iter()
            .any(|(w, effect, _)| effect == final_value && !superseded(w));
        if !explained {
            lost += 1;
        }
    }
    lost
}

/// Starts a cluster, runs `scenario` once with a workload, and asserts the outcome.
async fn run_scenario_test(scenario: Scenario, seed: u64) {
    let seed = seed_or(seed);
    eprintln!("scenario {scenario:?}, seed {seed}");
    let cluster = Cluster::start(3, cluster_options(BTreeMap::new())).await;
    cluster.wait_ready().await;
    let mut rng = StdRng::seed_from_u64(seed);
    let workload = Workload::start(&cluster, &format!("{scenario:?}"), seed).await;
    run_nemesis(&cluster, &workload, scenario, &mut rng).await;
    let report = finish_round(&cluster, workload, &format!("{scenario:?}")).await;
    eprintln!("{scenario:?} (seed {seed}): {report:?}");
    assert_sound(&report, &format!("{scenario:?} with seed {seed}"));
}

/// A round must be linearizable and must have lost no acknowledged write.
fn assert_sound(report: &RoundReport, context: &str) {
    assert!(
        report.verdict.is_linearizable(),
        "{context}: {}",
        report.verdict
    );
    assert_eq!(report.lost_writes, 0, "{context}: acknowledged writes lost");
}

#[test]
fn leader_kill() {
    run_serially(run_scenario_test(Scenario::LeaderKill, 11));
}

#[test]
fn follower_kill() {
    run_serially(run_scenario_test(Scenario::FollowerKill, 12));
}

#[test]
fn minority_partition() {
    run_serially(run_scenario_test(Scenario::MinorityPartition, 13));
}

#[test]
fn isolated_old_leader_serves_no_stale_reads() {
    run_serially(run_scenario_test(Scenario::IsolatedLeader, 14));
}

#[test]
fn no_quorum_partition() {
    run_serially(run_scenario_test(Scenario::NoQuorum, 15));
}

#[test]
fn paused_leader() {
    run_serially(run_scenario_test(Scenario::Pause, 16));
}

#[test]
fn whole_cluster_restart() {
    run_serially(run_scenario_test(Scenario::WholeClusterRestart, 17));
}

#[test]
fn lossy_duplicating_reordering_links() {
    run_serially(run_scenario_test(Scenario::LossyLinks, 18));
}

/// The suite must catch a broken read path: with every node serving linearizable reads from
/// its local replica (the `unsafe_local_read` test switch), the isolated old leader answers the
/// probe reads with values the majority has already overwritten.
#[test]
fn broken_read_path_is_caught() {
    run_serially(async {
        let failpoints: BTreeMap<usize, String> = (1..=3)
            .map(|id| (id, "unsafe_local_read=return".to_owned()))
            .collect();
        let cluster = Cluster::start(3, cluster_options(failpoints)).await;
        cluster.wait_ready().await;
        let mut rng = StdRng::seed_from_u64(seed_or(21));
        let workload = Workload::start(&cluster, "broken", 21).await;
        run_nemesis(&cluster, &workload, Scenario::IsolatedLeader, &mut rng).await;
        let report = finish_round(&cluster, workload, "broken").await;
        match &report.verdict {
            CheckResult::Violation { explanation, .. } => {
                eprintln!("caught, as it must be: {explanation}")
            }
            other => panic!("reads without ReadIndex were not caught: {other}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Crash points

/// A leader answers the writes its round commits before that round's raft-log write. Crashed
/// right after answering (every node armed; only a leader passes that point), then the whole
/// cluster restarted: every answered write is still there, and the history is linearizable.
#[test]
fn leader_crash_between_early_answers_and_log_write_loses_nothing() {
    run_serially(async {
        let seed = seed_or(33);
        let armed = "apply_early_after_write=40*off->panic".to_owned();
        let failpoints: BTreeMap<usize, String> = (1..=3).map(|id| (id, armed.clone())).collect();
        let cluster = Cluster::start(3, cluster_options(failpoints)).await;
        cluster.wait_ready().await;
        let workload = Workload::start(&cluster, "early", seed).await;
        let stopped_there = |id: usize, exit: std::process::ExitStatus| {
            let log = cluster.log(id);
            assert!(
                !exit.success() && log.contains("apply_early_after_write"),
                "node {id} exited ({exit}) but not at the crash point; log tail:\n{}",
                &log[log.len().saturating_sub(3000)..]
            );
            eprintln!("node {id} crashed after answering early ({exit})");
        };
        let (crashed, exit) = cluster.wait_any_exit(PROGRESS_TIMEOUT).await;
        stopped_there(crashed, exit);
        for id in cluster.node_ids() {
            if id != crashed {
                // Each region has its own leader, so another node may have passed the armed
                // point too (it leads some other region) and died there on its own.
                match cluster.reap_if_exited(id) {
                    Some(exit) => stopped_there(id, exit),
                    None => cluster.kill(id),
                }
            }
            cluster.set_failpoints(id, None);
        }
        cluster.restart_all_of(&cluster.node_ids()).await;
        workload.wait_progress(30, "after the restart").await;
        let report = finish_round(&cluster, workload, "early-answers").await;
        assert_sound(&report, &format!("seed {seed}"));
    });
}

/// Persistence steps a node is crashed at (`panic` aborts the process), and the crash-stop
/// path of a failed engine write.
const CRASH_POINTS: [(&str, &str); 7] = [
    ("raft_before_log_write", "panic"),
    ("raft_after_log_write", "panic"),
    ("apply_before_write", "panic"),
    ("apply_after_write", "panic"),
    ("gc_before_write", "panic"),
    ("engine_write", "return"),
    ("snapshot_after_receive", "panic"),
];

/// Restarts `node` with crash point `point` armed (`action` after a few passes), waits for it
/// to die there (it must not go on), then restarts it clean and waits for progress.
async fn crash_at(
    cluster: &Cluster,
    workload: &Workload,
    node: usize,
    point: &str,
    action: &str,
    rng: &mut StdRng,
) {
    let skip = rng.random_range(2..20);
    if point == "snapshot_after_receive" {
        // Down long enough that every leader compacts its log past this node.
        let applied: BTreeMap<u64, u64> = cluster
            .status(node)
            .await
            .expect("status")
            .regions
            .iter()
            .map(|r| (r.id, r.applied_index))
            .collect();
        cluster.kill(node);
        wait_until(
            "every region's leader to compact past the stopped node",
            PROGRESS_TIMEOUT,
            async || {
                for (&region, &index) in &applied {
                    let Some(leader) = cluster.leader_of_region(region).await else {
                        return Err(format!("region {region} has no leader"));
                    };
                    let status = cluster.region(leader, region).await?;
                    if status.first_index <= index + 1 {
                        return Err(format!(
                            "region {region}: first index {} <= {}",
                            status.first_index,
                            index + 1
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
        cluster.set_failpoints(node, Some(&format!("{point}={action}")));
    } else {
        cluster.kill(node);
        cluster.set_failpoints(node, Some(&format!("{point}={skip}*off->{action}")));
    }
    cluster.start_node(node);
    let exit = cluster.wait_exit(node, PROGRESS_TIMEOUT).await;
    assert!(
        !exit.success(),
        "node {node} exited cleanly at crash point {point}"
    );
    let log = cluster.log(node);
    let stopped_as_expected = if action == "return" {
        log.contains("crash-stop")
    } else {
        log.contains(point)
    };
    assert!(
        stopped_as_expected,
        "node {node} did not stop at {point}; log tail:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
    eprintln!("node {node} crashed at {point} ({exit})");
    cluster.set_failpoints(node, None);
    cluster.restart(node).await;
    workload
        .wait_progress(30, &format!("node {node} back after {point}"))
        .await;
}

/// Each crash point in turn fires on a node while the workload runs (the node must die, not
/// go on); the node restarts clean and must rejoin with nothing lost, and the whole history
/// must stay linearizable.
#[test]
fn crash_points_restart_consistent() {
    run_serially(async {
        let seed = seed_or(31);
        let cluster = Cluster::start(3, cluster_options(BTreeMap::new())).await;
        cluster.wait_ready().await;
        let mut rng = StdRng::seed_from_u64(seed);
        let workload = Workload::start(&cluster, "crash", seed).await;
        workload.wait_progress(30, "before the first crash").await;
        for (n, (point, action)) in CRASH_POINTS.iter().enumerate() {
            crash_at(&cluster, &workload, n % 3 + 1, point, action, &mut rng).await;
        }
        let report = finish_round(&cluster, workload, "crash-points").await;
        assert_sound(&report, &format!("seed {seed}"));
    });
}

// ---------------------------------------------------------------------------------------------
// Soak

#[derive(Default)]
struct Tally {
    runs: u64,
    ops_checked: u64,
    violations: u64,
    lost_writes: u64,
}

/// Random scenarios on one cluster until `RINGKV_SOAK_SECS` (default 1800) have passed; seed
/// from `RINGKV_SOAK_SEED` (default: the clock, printed). Fails at the first violation or
/// lost write, printing the seed and where the history was written.
#[test]
#[ignore = "soak: minutes long; run with -- --ignored"]
fn soak() {
    run_serially(async {
        let secs: u64 = std::env::var("RINGKV_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1800);
        let seed: u64 = std::env::var("RINGKV_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(1)
            });
        eprintln!("soak: {secs} s, seed {seed}");
        let cluster = Cluster::start(3, cluster_options(BTreeMap::new())).await;
        cluster.wait_ready().await;
        let mut rng = StdRng::seed_from_u64(seed);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tally: BTreeMap<Scenario, Tally> = BTreeMap::new();
        let mut round = 0u64;
        while Instant::now() < end {
            round += 1;
            let scenario = ALL_SCENARIOS[rng.random_range(0..ALL_SCENARIOS.len())];
            let round_seed = rng.random::<u64>();
            let workload = Workload::start(&cluster, &format!("r{round}"), round_seed).await;
            let mut round_rng = StdRng::seed_from_u64(round_seed);
            run_nemesis(&cluster, &workload, scenario, &mut round_rng).await;
            let label = format!("round-{round}-{scenario:?}");
            let report = finish_round(&cluster, workload, &label).await;
            let entry = tally.entry(scenario).or_default();
            entry.runs += 1;
            entry.ops_checked += report.ops_checked as u64;
            let violation = !report.verdict.is_linearizable();
            entry.violations += u64::from(violation);
            entry.lost_writes += report.lost_writes as u64;
            eprintln!(
                "round {round} {scenario:?} (seed {seed}, round seed {round_seed}): {}, lost writes {}",
                report.verdict, report.lost_writes
            );
            if violation || report.lost_writes > 0 {
                print_tally(&tally);
                if std::env::var_os("RINGKV_KEEP_TEST_DIRS").is_none() {
                    eprintln!("set RINGKV_KEEP_TEST_DIRS=1 to keep the history file");
                }
                panic!(
                    "soak seed {seed}, round {round} ({scenario:?}, round seed {round_seed}): {}",
                    report.verdict
                );
            }
        }
        print_tally(&tally);
    });
}

fn print_tally(tally: &BTreeMap<Scenario, Tally>) {
    eprintln!("| scenario | runs | operations checked | violations | lost writes |");
    eprintln!("|---|---|---|---|---|");
    for (scenario, t) in tally {
        eprintln!(
            "| {scenario:?} | {} | {} | {} | {} |",
            t.runs, t.ops_checked, t.violations, t.lost_writes
        );
    }
}
