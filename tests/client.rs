//! The routing client (`ringkv::client`) against real node processes and a real placement
//! process: batches spanning many regions while regions split, move and change leaders; a
//! CAS counter under contention; and the single-key, scan and refusal semantics.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::placement::{
    store_id_of, wait_placement, wait_settled, SettledRegion, REPLICATION_TIMEOUT,
};
use common::{run_serially, wait_until, Cluster, ClusterOptions};
use ringkv::client::{Client, ClientConfig, Error};

/// No balancing behind the test's back; a short operator timeout.
fn manual_placement() -> Vec<String> {
    ["--disable-balance", "--operator-timeout-secs", "10"]
        .map(String::from)
        .to_vec()
}

fn options(initial_regions: u64) -> ClusterOptions {
    ClusterOptions {
        placement: true,
        initial_regions: Some(initial_regions),
        placement_args: manual_placement(),
        ..ClusterOptions::default()
    }
}

async fn connect(cluster: &Cluster) -> Client {
    Client::connect(ClientConfig::new([cluster.placement_addr().to_string()]))
        .await
        .expect("connecting the client to placement")
}

/// What a kvctl run printed.
#[derive(Debug)]
struct KvctlOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kvctl --placement <placement> ARGS` off the async threads (a `--wait` takes seconds
/// and the client tasks must keep running).
async fn run_kvctl(cluster: &Cluster, args: &[&str]) -> KvctlOutput {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command
        .arg("--placement")
        .arg(cluster.placement_addr().to_string())
        .args(args);
    let shown = format!("kvctl {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("kvctl task")
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    KvctlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `run_kvctl` that must succeed; its stdout.
async fn kvctl(cluster: &Cluster, args: &[&str]) -> String {
    let output = run_kvctl(cluster, args).await;
    assert!(
        output.success,
        "kvctl {} failed: {output:?}",
        args.join(" ")
    );
    output.stdout
}

/// Keys each worker owns (it overwrites them round after round).
const KEYS_PER_WORKER: usize = 300;
/// Keys in one batch write/read of a worker.
const BATCH: usize = 40;

/// Client tasks that write and read back their own keys in a loop, recording the last
/// acknowledged value of every key and every error any call returned.
struct Workers {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, String>>>,
}

impl Workers {
    fn start(client: &Client, count: usize) -> Workers {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..count)
            .map(|worker| {
                let (client, stop, ops, errors) =
                    (client.clone(), stop.clone(), ops.clone(), errors.clone());
                tokio::spawn(async move {
                    let mut written = BTreeMap::new();
                    let mut round = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one_round(&client, worker, round, &mut written).await;
                        ops.fetch_add(4, Ordering::Relaxed);
                        if let Err(error) = outcome {
                            errors
                                .lock()
                                .expect("errors")
                                .push(format!("worker {worker} round {round}: {error}"));
                        }
                        round += 1;
                    }
                    written
                })
            })
            .collect();
        Workers {
            stop,
            ops,
            errors,
            tasks,
        }
    }

    async fn wait_ops(&self, more: u64) {
        let target = self.ops.load(Ordering::Relaxed) + more;
        wait_until(
            &format!("{more} more client operations"),
            REPLICATION_TIMEOUT,
            async || match self.ops.load(Ordering::Relaxed) {
                n if n >= target => Ok(()),
                n => Err(format!(
                    "{n} of {target}; errors so far: {:?}",
                    self.errors.lock().expect("errors")
                )),
            },
        )
        .await
    }

    /// Stops the tasks; returns every key's last acknowledged value and the errors.
    async fn stop(self) -> (BTreeMap<String, String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut written = BTreeMap::new();
        for task in self.tasks {
            written.extend(task.await.expect("worker task"));
        }
        let errors = self.errors.lock().expect("errors").clone();
        (written, errors)
    }
}

/// One round of a worker: a batch put, a batch get of the same keys, a put and a get.
async fn one_round(
    client: &Client,
    worker: usize,
    round: usize,
    written: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let first = round * BATCH % KEYS_PER_WORKER;
    let pairs: Vec<(String, String)> = (first..first + BATCH)
        .map(|j| {
            let key = format!("w{worker}-k{:03}", j % KEYS_PER_WORKER);
            (key.clone(), format!("{key}@{round}"))
        })
        .collect();
    client
        .batch_put(&pairs, None)
        .await
        .map_err(|e| format!("batch_put: {e}"))?;
    written.extend(pairs.iter().cloned());
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let got = client
        .batch_get(&keys)
        .await
        .map_err(|e| format!("batch_get: {e}"))?;
    let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
        .collect();
    if got != expected {
        return Err(format!(
            "batch_get read {} pairs, not what was just written",
            got.len()
        ));
    }
    let key = format!("w{worker}-single");
    let value = format!("{key}@{round}");
    client
        .put(&key, &value)
        .await
        .map_err(|e| format!("put: {e}"))?;
    written.insert(key.clone(), value.clone());
    match client.get(&key).await {
        Ok(Some(read)) if read == value.as_bytes() => Ok(()),
        Ok(other) => Err(format!("get {key} read {other:?}, wrote {value}")),
        Err(e) => Err(format!("get: {e}")),
    }
}

async fn store_ids(cluster: &Cluster) -> BTreeSet<u64> {
    let mut stores = BTreeSet::new();
    for node in cluster.running_nodes() {
        stores.insert(store_id_of(cluster, node).await);
    }
    stores
}

#[test]
fn batches_across_many_regions_survive_split_move_and_leader_change_without_errors() {
    run_serially(async {
        let cluster = Cluster::start(4, options(8)).await;
        wait_placement(&cluster, 8, 4).await;
        let all = store_ids(&cluster).await;
        let settled = wait_settled(&cluster, Some(8), &all, REPLICATION_TIMEOUT).await;
        let client = connect(&cluster).await;
        let started = Instant::now();
        let workers = Workers::start(&client, 4);
        workers.wait_ops(200).await;

        // Split one region (the client's cached layout goes stale).
        let (&split, _) = settled.iter().next().expect("a region");
        kvctl(&cluster, &["split", &split.to_string(), "--wait"]).await;
        let settled = wait_settled(&cluster, Some(9), &all, REPLICATION_TIMEOUT).await;
        workers.wait_ops(200).await;

        // Move a region's replica off its leader's store (leadership moves first).
        let (&moved, SettledRegion { voters, leader, .. }) =
            settled.iter().nth(3).expect("a fourth region");
        let to = *all.difference(voters).next().expect("a store without it");
        kvctl(
            &cluster,
            &[
                "move-region",
                &moved.to_string(),
                "--from",
                &leader.to_string(),
                "--to",
                &to.to_string(),
                "--wait",
            ],
        )
        .await;
        let settled = wait_settled(&cluster, Some(9), &all, REPLICATION_TIMEOUT).await;
        workers.wait_ops(200).await;

        // Hand another region's leadership to one of its followers.
        let (&transferred, region) = settled.iter().nth(6).expect("a seventh region");
        let follower = *region
            .voters
            .iter()
            .find(|s| **s != region.leader)
            .expect("a follower");
        kvctl(
            &cluster,
            &[
                "transfer-leader",
                &transferred.to_string(),
                "--to",
                &follower.to_string(),
                "--wait",
            ],
        )
        .await;
        workers.wait_ops(200).await;

        let ops = workers.ops.load(Ordering::Relaxed);
        let (written, errors) = workers.stop().await;
        eprintln!(
            "{ops} client operations in {:.1} s across split, move and transfer",
            started.elapsed().as_secs_f64()
        );
        assert!(errors.is_empty(), "client calls failed: {errors:#?}");
        let region_errors = grpc_region_errors(&cluster).await;
        eprintln!("the nodes answered {region_errors} region errors, all handled by the client");
        assert!(
            region_errors > 0,
            "the reshaping should have sent the client stale routes to correct"
        );

        // Every key reads back its last acknowledged value, by batch and by scan.
        let keys: Vec<&String> = written.keys().collect();
        let read: BTreeMap<String, String> = client
            .batch_get(&keys)
            .await
            .expect("batch_get of every key")
            .into_iter()
            .map(|(k, v)| (utf8(k), utf8(v)))
            .collect();
        assert_eq!(read.len(), written.len(), "every written key is found");
        assert_eq!(read, written, "every key holds its last acknowledged value");
        let scanned: BTreeMap<String, String> = client
            .scan_all(b"w")
            .await
            .expect("scan of every key")
            .into_iter()
            .map(|(k, v)| (utf8(k), utf8(v)))
            .collect();
        assert_eq!(scanned, written, "a scan over all regions sees the same");
    });
}

#[test]
fn a_cas_counter_incremented_by_eight_tasks_ends_exactly_at_two_hundred() {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 25;
    run_serially(async {
        let cluster = Cluster::start(3, options(2)).await;
        wait_placement(&cluster, 2, 3).await;
        let client = connect(&cluster).await;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let client = client.clone();
            tasks.spawn(async move {
                let mut attempts = 0u64;
                for _ in 0..INCREMENTS {
                    let mut current = client.get("counter").await.expect("get counter");
                    loop {
                        attempts += 1;
                        let next = match &current {
                            Some(value) => {
                                utf8(value.clone()).parse::<u64>().expect("a number") + 1
                            }
                            None => 1,
                        };
                        let outcome = client
                            .compare_and_swap(
                                "counter",
                                current.as_deref(),
                                Some(next.to_string().as_bytes()),
                            )
                            .await
                            .expect("compare_and_swap");
                        if outcome.succeeded {
                            break;
                        }
                        current = outcome.current;
                    }
                }
                attempts
            });
        }
        let attempts: u64 = common::join_all(tasks).await.into_iter().sum();
        eprintln!(
            "{} increments in {attempts} CAS attempts, {:.1} s",
            TASKS * INCREMENTS,
            started.elapsed().as_secs_f64()
        );
        let total = client.get("counter").await.expect("final get");
        assert_eq!(
            total,
            Some((TASKS * INCREMENTS).to_string().into_bytes()),
            "every successful CAS increments exactly once"
        );
    });
}

#[test]
fn single_key_operations_scan_pages_and_refusals_behave_as_documented() {
    run_serially(async {
        let cluster = Cluster::start(3, options(4)).await;
        wait_placement(&cluster, 4, 3).await;
        let client = connect(&cluster).await;

        assert_eq!(client.get("absent").await, Ok(None));
        client.put("k", "v1").await.expect("put");
        assert_eq!(client.get("k").await, Ok(Some(b"v1".to_vec())));
        let stale = client.get_stale("k").await.expect("stale get");
        assert!(
            stale.is_none() || stale == Some(b"v1".to_vec()),
            "a stale read sees an earlier value or the latest: {stale:?}"
        );

        // CAS: a wrong expectation reports what is there; create-if-absent; delete.
        let missed = client
            .compare_and_swap("k", Some(b"nope"), Some(b"v2"))
            .await
            .expect("cas");
        assert!(!missed.succeeded);
        assert_eq!(missed.current, Some(b"v1".to_vec()));
        let swapped = client
            .compare_and_swap("k", Some(b"v1"), Some(b"v2"))
            .await
            .expect("cas");
        assert!(swapped.succeeded);
        let created = client
            .compare_and_swap("fresh", None, Some(b"1"))
            .await
            .expect("create");
        assert!(created.succeeded);
        let deleted = client
            .compare_and_swap("fresh", Some(b"1"), None)
            .await
            .expect("compare-and-delete");
        assert!(deleted.succeeded && deleted.current.is_none());
        assert_eq!(client.get("fresh").await, Ok(None));

        client.delete("k").await.expect("delete");
        assert_eq!(client.get("k").await, Ok(None));

        // A TTL'd key is there, then expires.
        client
            .put_with_ttl("brief", "x", Duration::from_secs(1))
            .await
            .expect("put with ttl");
        wait_until(
            "the ttl key to expire",
            Duration::from_secs(10),
            async || match client.get("brief").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;

        // Scans page across the four regions: small pages join up to the whole set, in
        // ring order, each key once; a prefix filters.
        let pairs: Vec<(String, String)> = (0..150)
            .map(|i| (format!("s/{i:03}"), format!("{i}")))
            .collect();
        client.batch_put(&pairs, None).await.expect("batch_put");
        client.put("other", "o").await.expect("put");
        let mut cursor = Vec::new();
        let mut paged = Vec::new();
        let mut pages = 0;
        loop {
            let page = client.scan(&cursor, b"s/", 7).await.expect("scan page");
            assert!(page.pairs.len() <= 7);
            pages += 1;
            paged.extend(page.pairs);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert!(pages >= 150 / 7, "{pages} pages");
        let positions: Vec<(u64, Vec<u8>)> = paged
            .iter()
            .map(|(k, _)| (ringkv::keys::key_hash(k), k.clone()))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "ring order, no repeats"
        );
        let mut expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect();
        expected.sort_by_key(|(k, _)| (ringkv::keys::key_hash(k), k.clone()));
        assert_eq!(paged, expected);
        assert_eq!(client.scan_all(b"s/").await.expect("scan_all"), expected);

        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        client.batch_delete(&keys).await.expect("batch_delete");
        assert_eq!(client.batch_get(&keys).await, Ok(vec![]));

        // Refusals: invalid input is an InvalidArgument error and changes nothing.
        let refused = client.put("", "v").await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("empty_key")),
            "{refused:?}"
        );
        let refused = client.put(vec![b'k'; 5000], "v").await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        let refused = client.compare_and_swap("k", None, None).await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
        let refused = client.scan(&[1, 2, 3], b"", 10).await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("bad_cursor")),
            "{refused:?}"
        );
        let refused = client.batch_put(&[("a", "1"), ("a", "2")], None).await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );

        // kvctl's data commands, on the same client.
        assert_eq!(
            kvctl(&cluster, &["put", "cli", "one"]).await,
            "cli: written\n"
        );
        assert_eq!(kvctl(&cluster, &["get", "cli"]).await, "one\n");
        assert_eq!(
            kvctl(&cluster, &["get", "cli", "--stale", "--timeout-secs", "5"])
                .await
                .len(),
            4
        );
        let missing = run_kvctl(&cluster, &["get", "nothing-here"]).await;
        assert!(
            !missing.success && missing.stderr.contains("not found"),
            "{missing:?}"
        );
        let mismatch = run_kvctl(
            &cluster,
            &["cas", "cli", "--expect", "two", "--new", "three"],
        )
        .await;
        assert!(!mismatch.success, "{mismatch:?}");
        assert_eq!(
            mismatch.stdout, "one\n",
            "a failed compare prints the current value"
        );
        kvctl(&cluster, &["cas", "cli", "--expect", "one", "--new", "two"]).await;
        kvctl(&cluster, &["cas", "cli", "--expect", "two", "--delete"]).await;
        kvctl(
            &cluster,
            &["cas", "cli", "--expect-absent", "--new", "back"],
        )
        .await;
        assert_eq!(kvctl(&cluster, &["get", "cli"]).await, "back\n");
        kvctl(&cluster, &["delete", "cli"]).await;
        assert!(!run_kvctl(&cluster, &["get", "cli"]).await.success);
        for i in 0..5 {
            client
                .put(format!("p/{i}"), format!("{i}"))
                .await
                .expect("put");
        }
        let first = run_kvctl(&cluster, &["scan", "--prefix", "p/", "--limit", "3"]).await;
        assert!(first.success, "{first:?}");
        assert_eq!(first.stdout.lines().count(), 3, "{first:?}");
        let cursor = first
            .stderr
            .trim()
            .strip_prefix("next cursor: ")
            .unwrap_or_else(|| panic!("a cursor on stderr: {first:?}"))
            .to_owned();
        let rest = kvctl(
            &cluster,
            &[
                "scan", "--prefix", "p/", "--limit", "3", "--cursor", &cursor, "--json",
            ],
        )
        .await;
        let rest: serde_json::Value = serde_json::from_str(&rest).expect("JSON");
        assert_eq!(rest["pairs"].as_array().map(Vec::len), Some(2), "{rest}");
        assert!(rest["next_cursor"].is_null(), "the ring ends: {rest}");
        let all = kvctl(
            &cluster,
            &["scan", "--prefix", "p/", "--limit", "2", "--all"],
        )
        .await;
        let mut lines: Vec<&str> = all.lines().collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            vec!["p/0\t0", "p/1\t1", "p/2\t2", "p/3\t3", "p/4\t4"]
        );

        // No placement at the address: connecting fails and says so.
        let unreachable = Client::connect(ClientConfig {
            timeout: Duration::from_millis(300),
            ..ClientConfig::new(["127.0.0.1:1"])
        })
        .await;
        assert!(
            matches!(&unreachable, Err(Error::Placement(_))),
            "no placement there: {:?}",
            unreachable.err()
        );
    });
}

/// Region errors the nodes answered over gRPC (the client saw and handled them).
async fn grpc_region_errors(cluster: &Cluster) -> u64 {
    let mut total = 0.0;
    for node in cluster.running_nodes() {
        let metrics = cluster
            .request(node, reqwest::Method::GET, "/metrics", None)
            .await
            .expect("GET /metrics")
            .text();
        total += metrics
            .lines()
            .filter(|line| {
                line.starts_with("ringkv_grpc_requests_total{")
                    && line.contains("result=\"region_error\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total as u64
}

fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("test keys and values are UTF-8")
}
