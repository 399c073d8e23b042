//! Multi-process cluster tests: real `ringkv node` processes on loopback, crashes by SIGKILL.
//!
//! Each test states one property of the running system. They run one at a time
//! (`run_serially`): a three-node cluster already keeps two cores busy. Waits are bounded polls
//! of the cluster's own reports (`/status`, stale reads), never fixed sleeps.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_holds_for, join_all, keys_covering_regions, kv_path, put_concurrently, put_via_any,
    run_serially, show, wait_until, Cluster, ClusterOptions, Model, NodeClient,
    INITIAL_APPLIED_INDEX, WAIT_TIMEOUT,
};
use reqwest::Method;

fn options() -> ClusterOptions {
    ClusterOptions::default()
}

/// The nodes of `cluster` other than `excluded`.
fn others(cluster: &Cluster, excluded: &[usize]) -> Vec<usize> {
    cluster
        .node_ids()
        .into_iter()
        .filter(|id| !excluded.contains(id))
        .collect()
}

#[test]
fn every_node_serves_health_status_and_metrics() {
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        // Some traffic first, so that request metrics exist on every node.
        for id in cluster.node_ids() {
            cluster.must_put(id, "metered", b"1").await;
        }
        let mut answered_early = 0.0;
        for id in cluster.node_ids() {
            let health = cluster.request(id, Method::GET, "/health", None).await;
            let health = health.unwrap_or_else(|e| panic!("health of node {id}: {e}"));
            assert_eq!(
                health.status,
                200,
                "GET /health on node {id}: {}",
                health.text()
            );

            let status = cluster.status(id).await.expect("GET /status");
            assert_eq!(
                status.store_id, id as u64,
                "node started with --id {id} reports another store id"
            );
            assert!(!status.regions.is_empty(), "node {id} reports no regions");

            let metrics = cluster.request(id, Method::GET, "/metrics", None).await;
            let metrics = metrics.unwrap_or_else(|e| panic!("metrics of node {id}: {e}"));
            assert_eq!(metrics.status, 200, "GET /metrics on node {id}");
            assert!(
                metrics.text().contains("ringkv_"),
                "node {id}'s /metrics has no ringkv_* metric:\n{}",
                metrics.text()
            );
            answered_early += counter_value(&metrics.text(), EARLY_ANSWERS);
        }
        // The leader learns a write is committed from a follower's ack and answers it before
        // that round's raft-log write (which, under load, holds only newer entries). A leader
        // change between the writes could route one answer through the later apply; not all
        // three.
        assert!(
            answered_early >= 1.0,
            "{EARLY_ANSWERS}: {answered_early} over the cluster after 3 writes"
        );
    });
}

const EARLY_ANSWERS: &str = "ringkv_raft_answered_before_log_write_total";

/// The value of the unlabelled counter `name` in a `/metrics` page, 0 if absent.
fn counter_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

#[test]
fn write_on_one_node_reads_on_every_node() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(4),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        let regions = cluster.status(1).await.expect("status of node 1").regions;
        assert_eq!(regions.len(), 4, "--initial-regions 4 gave {regions:?}");
        let applied_before: Vec<u64> = regions.iter().map(|r| r.applied_index).collect();

        // Three keys in every region, each written through a different node than the last, so
        // most writes are forwarded to a leader elsewhere.
        let keys_by_region = keys_covering_regions(&regions, "spread", 3);
        let nodes = cluster.node_ids();
        let mut model = Model::default();
        for (n, key) in keys_by_region.values().flatten().enumerate() {
            let via = nodes[n % nodes.len()];
            let value = format!("{key} written via node {via}");
            cluster.must_put(via, key, value.as_bytes()).await;
            model.put(key, value.as_bytes());
        }
        // Keys that must survive percent-encoding: slashes, spaces, non-ASCII, and characters
        // that would end the path if they were not escaped.
        for (n, key) in [
            "users/42/name",
            "with space",
            "ünïcödé",
            "100%",
            "q?x=1#frag",
        ]
        .into_iter()
        .enumerate()
        {
            let via = nodes[n % nodes.len()];
            cluster.must_put(via, key, key.as_bytes()).await;
            model.put(key, key.as_bytes());
        }

        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }
        for &id in &nodes {
            cluster.wait_stale_reads(id, &model).await;
        }

        // Every region took its writes: hashing put each key into the region the design says.
        let after = cluster.status(1).await.expect("status of node 1").regions;
        for (region, before) in regions.iter().zip(&applied_before) {
            let now = after
                .iter()
                .find(|r| r.id == region.id)
                .unwrap_or_else(|| panic!("node 1 no longer reports region {}", region.id));
            let grown = now.applied_index.saturating_sub(*before);
            let written = keys_by_region[&region.id].len() as u64;
            assert!(
                grown >= written,
                "region {} (hashes {:#x}..{:#x}) applied {grown} entries on node 1 while {written} \
                 of its keys were written: keys are not routed by xxh3 hash",
                region.id,
                region.start_hash,
                region.end_hash
            );
        }

        // Overwrite and delete through nodes other than the original writer.
        let mut spread = keys_by_region.values().flatten();
        let overwritten = spread.next().expect("a key").clone();
        let deleted = spread.next().expect("a second key").clone();
        cluster.must_put(2, &overwritten, b"second version").await;
        model.put(&overwritten, b"second version");
        cluster.must_delete(3, &deleted).await;
        model.delete(&deleted);
        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }

        // Keys are bytes, not text: a key that is not UTF-8 works too.
        let binary_path = "/kv/%FF%00binary";
        let put = cluster
            .request(1, Method::PUT, binary_path, Some(b"bytes".to_vec()))
            .await
            .expect("PUT of a binary key");
        assert_eq!(put.status, 204, "PUT {binary_path}: {}", put.text());
        for &id in &nodes {
            let got = cluster
                .request(id, Method::GET, binary_path, None)
                .await
                .expect("GET of a binary key");
            assert_eq!(
                (got.status, got.text()),
                (200, "bytes".to_owned()),
                "GET {binary_path} on node {id}"
            );
        }
    });
}

#[test]
fn writes_continue_with_a_follower_down_and_it_catches_up_after_restart() {
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        let leader = cluster.wait_for_leader(1).await;
        let follower = others(&cluster, &[leader])[0];
        let survivors = others(&cluster, &[follower]);

        let mut model = Model::default();
        for n in 0..10 {
            let (key, value) = (format!("before-{n}"), format!("value {n}"));
            cluster.must_put(leader, &key, value.as_bytes()).await;
            model.put(&key, value.as_bytes());
        }
        cluster.wait_stale_reads(follower, &model).await;

        cluster.kill(follower);
        for n in 0..60 {
            let via = survivors[n % survivors.len()];
            let (key, value) = (format!("during-{n}"), format!("value {n}"));
            cluster.must_put(via, &key, value.as_bytes()).await;
            model.put(&key, value.as_bytes());
        }
        cluster
            .must_put(survivors[1], "before-0", b"changed while node was down")
            .await;
        model.put("before-0", b"changed while node was down");
        cluster.must_delete(survivors[0], "before-1").await;
        model.delete("before-1");
        for &id in &survivors {
            cluster.assert_reads(id, &model).await;
        }

        cluster.restart(follower).await;
        cluster.wait_stale_reads(follower, &model).await;
        cluster.assert_reads(follower, &model).await;

        // The restarted node is a full member again: writes through it work.
        cluster
            .must_put(follower, "after-restart", b"welcome back")
            .await;
        model.put("after-restart", b"welcome back");
        for id in cluster.node_ids() {
            cluster.assert_reads(id, &model).await;
        }
    });
}

/// Shared between the test and its background writer.
#[derive(Default)]
struct WriterProgress {
    acknowledged: AtomicUsize,
    crash_done: AtomicBool,
}

/// Writes `{prefix}-{n}` keys one after another through any node that answers, until
/// `after_crash` writes that started after the crash were acknowledged. Returns every
/// acknowledged `(key, value)`.
async fn write_through_a_crash(
    clients: Vec<NodeClient>,
    prefix: &'static str,
    after_crash: usize,
    progress: Arc<WriterProgress>,
) -> Vec<(String, String)> {
    const MAX_WRITES: usize = 2_000;
    let mut acknowledged = vec![];
    let mut acknowledged_after_crash = 0;
    for n in 0..MAX_WRITES {
        if acknowledged_after_crash >= after_crash {
            return acknowledged;
        }
        let started_after_crash = progress.crash_done.load(Ordering::SeqCst);
        let (key, value) = (format!("{prefix}-{n:04}"), format!("value {n}"));
        if let Err(error) = put_via_any(&clients, n, &key, value.as_bytes()).await {
            panic!(
                "write {key} was never acknowledged by any node ({} acknowledged before it): \
                 {error}",
                acknowledged.len()
            );
        }
        acknowledged.push((key, value));
        progress.acknowledged.fetch_add(1, Ordering::SeqCst);
        if started_after_crash {
            acknowledged_after_crash += 1;
        }
    }
    panic!("{MAX_WRITES} writes and the test never finished its crash");
}

#[test]
fn acknowledged_writes_survive_leader_crash() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(2),
                request_timeout_ms: Some(3_000),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;

        let progress = Arc::new(WriterProgress::default());
        let writer = tokio::spawn(write_through_a_crash(
            cluster.clients(&cluster.node_ids()),
            "crash",
            50,
            progress.clone(),
        ));

        wait_until(
            "30 writes acknowledged before the crash",
            WAIT_TIMEOUT,
            async || {
                let acknowledged = progress.acknowledged.load(Ordering::SeqCst);
                if acknowledged >= 30 {
                    Ok(())
                } else {
                    Err(format!("{acknowledged} acknowledged"))
                }
            },
        )
        .await;
        let victim = cluster.wait_for_leader(1).await;
        let old_term = cluster
            .region(victim, 1)
            .await
            .unwrap_or_else(|e| panic!("region 1 on its leader, node {victim}: {e}"))
            .term;
        cluster.kill(victim);
        // Loaded before the flag is raised: every write counted here started before the crash.
        let acknowledged_at_crash = progress.acknowledged.load(Ordering::SeqCst);
        progress.crash_done.store(true, Ordering::SeqCst);

        let what =
            format!("a new leader of region 1 after node {victim} (term {old_term}) crashed");
        let new_leader = wait_until(&what, WAIT_TIMEOUT, async || {
            let leader = cluster.leader_of_region(1).await.ok_or("no leader")?;
            let term = cluster.region(leader, 1).await?.term;
            if term > old_term {
                Ok(leader)
            } else {
                Err(format!("node {leader} leads in term {term}"))
            }
        })
        .await;
        assert_ne!(new_leader, victim, "the killed node cannot lead");

        let written = writer.await.unwrap_or_else(|e| {
            std::panic::resume_unwind(e.into_panic());
        });
        assert!(
            written.len() >= acknowledged_at_crash + 50,
            "writes did not continue after the crash: {} acknowledged in all, {acknowledged_at_crash} \
             before it",
            written.len()
        );
        let mut model = Model::default();
        for (key, value) in &written {
            model.put(key, value.as_bytes());
        }
        for id in cluster.running_nodes() {
            cluster.assert_reads(id, &model).await;
        }

        // The crashed leader comes back as a follower and gets everything it missed.
        cluster.restart(victim).await;
        cluster.wait_stale_reads(victim, &model).await;
    });
}

#[test]
fn lagging_follower_catches_up_by_snapshot() {
    const GC_THRESHOLD: u64 = 20;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                raft_log_gc_threshold: Some(GC_THRESHOLD),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        let leader = cluster.wait_for_leader(1).await;
        let follower = others(&cluster, &[leader])[0];
        let survivors = others(&cluster, &[follower]);

        let mut model = Model::default();
        for n in 0..5 {
            let key = format!("early-{n}");
            cluster.must_put(leader, &key, b"early").await;
            model.put(&key, b"early");
        }
        cluster.wait_stale_reads(follower, &model).await;
        let follower_region = cluster
            .region(follower, 1)
            .await
            .expect("follower's region 1");
        assert_eq!(
            follower_region.snapshots_applied, 0,
            "node {follower} applied a snapshot before it ever fell behind"
        );
        let follower_applied = follower_region.applied_index;

        cluster.kill(follower);
        let entries = (0..200)
            .map(|n| (format!("missed-{n:03}"), format!("value {n}").into_bytes()))
            .collect();
        let missed = put_concurrently(&cluster, &survivors, entries, 4).await;
        for (key, value) in missed.iter() {
            model.put(key, value.as_deref().expect("only PUTs"));
        }

        // Precondition for the property: the survivors dropped the entries the follower lacks.
        let what = format!(
            "the leader of region 1 to compact its log past index {follower_applied}, \
             the last one node {follower} applied"
        );
        wait_until(&what, WAIT_TIMEOUT, async || {
            let leader = cluster.leader_of_region(1).await.ok_or("no leader")?;
            let region = cluster.region(leader, 1).await?;
            if region.first_index > follower_applied + 1 {
                Ok(())
            } else {
                Err(format!(
                    "node {leader}'s log starts at {}",
                    region.first_index
                ))
            }
        })
        .await;

        cluster.restart(follower).await;
        let what = format!("node {follower} to apply a snapshot of region 1");
        wait_until(&what, WAIT_TIMEOUT, async || {
            let region = cluster.region(follower, 1).await?;
            if region.snapshots_applied > 0 {
                Ok(())
            } else {
                Err(format!(
                    "snapshots_applied 0, applied index {}, log {}..={}",
                    region.applied_index, region.first_index, region.last_index
                ))
            }
        })
        .await;
        cluster.wait_stale_reads(follower, &model).await;
    });
}

#[test]
fn whole_cluster_restart_keeps_acknowledged_data() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(3),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        let nodes = cluster.node_ids();

        let mut model = Model::default();
        for n in 0..60 {
            let via = nodes[n % nodes.len()];
            let (key, value) = (format!("durable-{n:02}"), format!("value {n}"));
            cluster.must_put(via, &key, value.as_bytes()).await;
            model.put(&key, value.as_bytes());
        }
        for n in 0..10 {
            let key = format!("durable-{n:02}");
            cluster
                .must_put(nodes[(n + 1) % nodes.len()], &key, b"overwritten")
                .await;
            model.put(&key, b"overwritten");
        }
        for n in 10..20 {
            let key = format!("durable-{n:02}");
            cluster
                .must_delete(nodes[(n + 2) % nodes.len()], &key)
                .await;
            model.delete(&key);
        }

        for &id in &nodes {
            cluster.kill(id);
        }
        cluster.restart_all_of(&nodes).await;
        cluster.wait_ready().await;

        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }
        for &id in &nodes {
            cluster.wait_stale_reads(id, &model).await;
        }
        cluster
            .must_put(2, "after-restart", b"still writable")
            .await;
        model.put("after-restart", b"still writable");
        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }
    });
}

#[test]
fn node_with_foreign_ca_cannot_join() {
    const REQUEST_TIMEOUT_MS: u64 = 2_000;
    run_serially(async {
        let outsider = 3;
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                foreign_ca_nodes: vec![outsider],
                request_timeout_ms: Some(REQUEST_TIMEOUT_MS),
                ..options()
            },
        )
        .await;
        let members = [1, 2];
        cluster.wait_leaders_among(&members).await;

        let mut model = Model::default();
        for n in 0..20 {
            let (key, value) = (format!("members-only-{n:02}"), format!("value {n}"));
            cluster
                .must_put(members[n % 2], &key, value.as_bytes())
                .await;
            model.put(&key, value.as_bytes());
        }
        // Stale reads do show replicated data, so their silence on the outsider means something.
        for id in members {
            cluster.assert_reads(id, &model).await;
            cluster.wait_stale_reads(id, &model).await;
        }

        let mut member_regions: Vec<u64> = cluster
            .status(1)
            .await
            .expect("status of node 1")
            .regions
            .iter()
            .map(|r| r.id)
            .collect();
        member_regions.sort_unstable();
        let sample: Vec<&String> = model.keys().step_by(4).collect();
        assert_holds_for(
            "node 3, whose certificate comes from another CA, to stay cut off",
            Duration::from_secs(3),
            async || {
                let status = cluster.status(outsider).await.map_err(|e| e.to_string())?;
                let mut ids: Vec<u64> = status.regions.iter().map(|r| r.id).collect();
                ids.sort_unstable();
                if ids != member_regions {
                    return Err(format!(
                        "it reports regions {ids:?}, the members {member_regions:?}"
                    ));
                }
                for region in &status.regions {
                    if region.is_leader || region.leader_store_id != 0 {
                        return Err(format!(
                            "it knows a leader of region {}: {region:?}",
                            region.id
                        ));
                    }
                    if region.applied_index > INITIAL_APPLIED_INDEX {
                        return Err(format!(
                            "it applied entries of region {}: {region:?}",
                            region.id
                        ));
                    }
                }
                for key in &sample {
                    let got = cluster
                        .get_stale(outsider, key)
                        .await
                        .map_err(|e| e.to_string())?;
                    if got.is_some() {
                        return Err(format!("its replica holds {key:?} = {}", show(&got)));
                    }
                }
                Ok(())
            },
        )
        .await;

        // Without a leader, a write through the outsider fails within the request timeout
        // instead of hanging, and changes nothing.
        let started = Instant::now();
        let reply = cluster
            .request(
                outsider,
                Method::PUT,
                "/kv/from-the-outsider",
                Some(b"x".to_vec()),
            )
            .await
            .expect("the outsider answers HTTP");
        let took = started.elapsed();
        assert_eq!(
            reply.status,
            503,
            "PUT through the outsider: {}",
            reply.text()
        );
        let limit = Duration::from_millis(REQUEST_TIMEOUT_MS) + Duration::from_secs(5);
        assert!(
            took <= limit,
            "the outsider took {took:?} to answer 503 (limit {limit:?})"
        );
        assert_eq!(
            cluster.must_get(1, "from-the-outsider").await,
            None,
            "a write the outsider refused reached the cluster"
        );
    });
}

/// One malformed request and what it must get.
struct BadRequest {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
}

#[test]
fn bad_input_gets_4xx_and_changes_nothing() {
    const MAX_KEY_BYTES: usize = 64;
    const MAX_VALUE_BYTES: usize = 1024;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                max_key_bytes: Some(MAX_KEY_BYTES),
                max_value_bytes: Some(MAX_VALUE_BYTES),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        cluster.must_put(1, "existing", b"old value").await;

        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        let big_value = vec![b'v'; MAX_VALUE_BYTES + 1];
        let case = |what, method, path: &str, body: Option<Vec<u8>>, status, code| BadRequest {
            what,
            method,
            path: path.to_owned(),
            body,
            status,
            code,
        };
        let cases = [
            case(
                "PUT with an empty key",
                Method::PUT,
                "/kv/",
                Some(b"x".to_vec()),
                400,
                None,
            ),
            case(
                "GET with an empty key",
                Method::GET,
                "/kv/",
                None,
                400,
                None,
            ),
            case(
                "DELETE with an empty key",
                Method::DELETE,
                "/kv/",
                None,
                400,
                None,
            ),
            case(
                "PUT with a key over max-key-bytes",
                Method::PUT,
                &format!("/kv/{long_key}"),
                Some(b"x".to_vec()),
                400,
                Some("key_too_large"),
            ),
            case(
                "PUT of a value over max-value-bytes onto an existing key",
                Method::PUT,
                "/kv/existing",
                Some(big_value.clone()),
                413,
                None,
            ),
            case(
                "PUT of a value over max-value-bytes onto a new key",
                Method::PUT,
                "/kv/fresh",
                Some(big_value.clone()),
                413,
                None,
            ),
            case(
                "PUT with a malformed escape",
                Method::PUT,
                "/kv/a%zz",
                Some(b"x".to_vec()),
                400,
                None,
            ),
            case(
                "PUT with a truncated escape",
                Method::PUT,
                "/kv/%4",
                Some(b"x".to_vec()),
                400,
                None,
            ),
            case(
                "GET with a malformed escape",
                Method::GET,
                "/kv/a%zz",
                None,
                400,
                None,
            ),
            case(
                "GET of an unknown path",
                Method::GET,
                "/no-such-thing",
                None,
                404,
                None,
            ),
            case(
                "PUT to an unknown path",
                Method::PUT,
                "/kvx/a",
                Some(b"x".to_vec()),
                404,
                None,
            ),
            case(
                "conditional PUT with prevExist=true (only false is supported)",
                Method::PUT,
                "/kv/existing?prevExist=true",
                Some(b"x".to_vec()),
                400,
                Some("bad_query"),
            ),
            case(
                "conditional PUT with both prevValue and prevExist",
                Method::PUT,
                "/kv/existing?prevValue=old%20value&prevExist=false",
                Some(b"x".to_vec()),
                400,
                Some("bad_query"),
            ),
            case(
                "conditional PUT with a malformed prevValue escape",
                Method::PUT,
                "/kv/existing?prevValue=%zz",
                Some(b"x".to_vec()),
                400,
                Some("bad_query"),
            ),
            case(
                "conditional DELETE with prevExist=false",
                Method::DELETE,
                "/kv/existing?prevExist=false",
                None,
                400,
                Some("bad_query"),
            ),
            case(
                "GET with a prevValue condition",
                Method::GET,
                "/kv/existing?prevValue=old%20value",
                None,
                400,
                Some("bad_query"),
            ),
            case(
                "POST to a key",
                Method::POST,
                "/kv/by-post",
                Some(b"x".to_vec()),
                405,
                None,
            ),
            case(
                "PATCH of a key",
                Method::PATCH,
                "/kv/by-patch",
                Some(b"x".to_vec()),
                405,
                None,
            ),
        ];

        // Every node, leader or not, must refuse the same way (a follower must not forward
        // first and validate later).
        let mut wrong = vec![];
        for id in cluster.node_ids() {
            for case in &cases {
                let reply = cluster
                    .request(id, case.method.clone(), &case.path, case.body.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{} on node {id}: {e}", case.what));
                if reply.status != case.status {
                    wrong.push(format!(
                        "{} on node {id}: status {}, expected {}: {:?}",
                        case.what,
                        reply.status,
                        case.status,
                        reply.text()
                    ));
                    continue;
                }
                match (reply.error(), case.code) {
                    (Err(why), _) => wrong.push(format!(
                        "{} on node {id}: error body is not {{\"error\":{{\"code\",\"message\"}}}}: {why}",
                        case.what
                    )),
                    (Ok((code, _)), Some(expected)) if code != expected => wrong.push(format!(
                        "{} on node {id}: error code {code:?}, expected {expected:?}",
                        case.what
                    )),
                    (Ok(_), _) => {}
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "bad requests were not refused as specified:\n{}",
            wrong.join("\n")
        );

        // The limits are inclusive: a key and a value exactly at them are accepted.
        let longest_key = "k".repeat(MAX_KEY_BYTES);
        let largest_value = vec![b'v'; MAX_VALUE_BYTES];
        cluster.put(2, &longest_key, &largest_value).await.unwrap_or_else(|e| {
            panic!("a {MAX_KEY_BYTES}-byte key with a {MAX_VALUE_BYTES}-byte value was refused: {e}")
        });

        // Nothing the bad requests carried was stored.
        let mut model = Model::default();
        model.put("existing", b"old value");
        model.put(&longest_key, &largest_value);
        for absent in ["fresh", "by-post", "by-patch", "a", "a%zz", "%4"] {
            model.delete(absent);
        }
        for id in cluster.node_ids() {
            cluster.assert_reads(id, &model).await;
            let oversized = cluster
                .request(id, Method::GET, &format!("/kv/{long_key}"), None)
                .await
                .expect("GET of the oversized key");
            assert!(
                matches!(oversized.status, 400 | 404),
                "GET of the refused {}-byte key on node {id} answered {}: {:?}",
                long_key.len(),
                oversized.status,
                oversized.text()
            );
        }
    });
}

#[test]
fn concurrent_writes_from_many_clients_all_land() {
    const CLIENTS: usize = 8;
    const WRITES_PER_CLIENT: usize = 50;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(2),
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        let nodes = cluster.node_ids();

        // Every client writes its own keys, then all race on one shared key.
        let mut tasks = tokio::task::JoinSet::new();
        for client_number in 0..CLIENTS {
            let client = cluster.client(nodes[client_number % nodes.len()]);
            tasks.spawn(async move {
                let mut written = vec![];
                for n in 0..WRITES_PER_CLIENT {
                    let key = format!("client-{client_number}-{n:02}");
                    let value = format!("from client {client_number} via node {}", client.node);
                    client.must_put(&key, value.as_bytes()).await;
                    written.push((key, value));
                }
                let contender = format!("client {client_number}");
                client.must_put("contended", contender.as_bytes()).await;
                (written, contender)
            });
        }
        let results = join_all(tasks).await;

        let mut model = Model::default();
        let mut contenders = vec![];
        for (written, contender) in results {
            for (key, value) in written {
                model.put(&key, value.as_bytes());
            }
            contenders.push(contender);
        }
        assert_eq!(
            model.len(),
            CLIENTS * WRITES_PER_CLIENT,
            "keys are distinct"
        );
        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }

        let winner = cluster.must_get(1, "contended").await;
        let winner_text = show(&winner);
        assert!(
            winner
                .as_deref()
                .is_some_and(|w| contenders.iter().any(|c| c.as_bytes() == w)),
            "the contended key holds {winner_text}, which no client wrote"
        );
        for &id in &nodes {
            let got = cluster.must_get(id, "contended").await;
            assert_eq!(
                got,
                winner,
                "nodes disagree on the contended key: node 1 read {winner_text}, node {id} {}",
                show(&got)
            );
        }
        model.put("contended", winner.as_deref().expect("checked above"));
        for &id in &nodes {
            cluster.wait_stale_reads(id, &model).await;
        }
    });
}

/// Conditional writes over HTTP (`prevValue`, `prevExist=false`) are compare-and-swap through
/// raft: a create succeeds once, a swap only from the value it names, a failed compare
/// answers 412 and changes nothing, and every node answers the same way.
#[test]
fn conditional_writes_compare_and_swap() {
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        let key = "cas/key with spaces";
        let (first, second, third) = (cluster.client(1), cluster.client(2), cluster.client(3));

        assert!(first.cas(key, None, Some(b"v1")).await.expect("create"));
        assert!(
            !second
                .cas(key, None, Some(b"other"))
                .await
                .expect("second create"),
            "a create of an existing key must fail"
        );
        assert_eq!(cluster.must_get(3, key).await, Some(b"v1".to_vec()));

        assert!(
            !third
                .cas(key, Some(b"v0"), Some(b"v2"))
                .await
                .expect("stale swap"),
            "a swap from a value the key does not hold must fail"
        );
        assert_eq!(cluster.must_get(1, key).await, Some(b"v1".to_vec()));

        // A binary expected value survives percent-encoding.
        cluster.must_put(1, key, &[0, 0xff, b'&', b'=']).await;
        assert!(third
            .cas(key, Some(&[0, 0xff, b'&', b'=']), Some(b"v2"))
            .await
            .expect("swap from a binary value"));
        assert_eq!(cluster.must_get(2, key).await, Some(b"v2".to_vec()));

        assert!(
            !first
                .cas(key, Some(b"v1"), None)
                .await
                .expect("stale delete"),
            "a conditional delete from the wrong value must fail"
        );
        assert!(second.cas(key, Some(b"v2"), None).await.expect("delete"));
        assert_eq!(cluster.must_get(3, key).await, None);
        assert!(
            !first
                .cas(key, Some(b"v2"), Some(b"v3"))
                .await
                .expect("swap of absent"),
            "a swap of an absent key must fail"
        );
        assert_eq!(cluster.must_get(1, key).await, None);

        let reply = cluster
            .request(
                2,
                Method::PUT,
                &format!("{}?prevExist=false", kv_path("cas/two")),
                Some(b"a".to_vec()),
            )
            .await
            .expect("create");
        assert_eq!(reply.status, 204, "{}", reply.text());
        let reply = cluster
            .request(
                3,
                Method::PUT,
                &format!("{}?prevExist=false", kv_path("cas/two")),
                Some(b"b".to_vec()),
            )
            .await
            .expect("second create");
        assert_eq!(reply.status, 412, "{}", reply.text());
        let (code, _) = reply.error().expect("a JSON error body");
        assert_eq!(code, "compare_failed");
    });
}

/// Concurrent compare-and-swap increments of one counter through every node: each success is
/// counted exactly once, so the counter ends at tasks × increments. Conditional writes that
/// land in the same apply batch must see each other's effects for this to hold.
#[test]
fn concurrent_cas_increments_are_exact() {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 10;
    run_serially(async {
        let cluster = Cluster::start(3, options()).await;
        cluster.wait_ready().await;
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let client = cluster.client(task % 3 + 1);
            tasks.spawn(async move {
                let mut retries = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let current = client.must_get("counter").await;
                        let next = match &current {
                            None => 1u64,
                            Some(bytes) => {
                                let text = String::from_utf8_lossy(bytes);
                                text.parse::<u64>().expect("the counter holds a number") + 1
                            }
                        };
                        match client
                            .cas(
                                "counter",
                                current.as_deref(),
                                Some(next.to_string().as_bytes()),
                            )
                            .await
                        {
                            Ok(true) => break,
                            Ok(false) => retries += 1,
                            Err(error) => panic!("CAS failed outright: {error}"),
                        }
                    }
                }
                retries
            });
        }
        let retries: u64 = join_all(tasks).await.into_iter().sum();
        let value = cluster
            .must_get(2, "counter")
            .await
            .expect("the counter exists");
        assert_eq!(
            String::from_utf8_lossy(&value),
            (TASKS * INCREMENTS).to_string(),
            "lost or doubled increments ({retries} CAS retries)"
        );
        eprintln!(
            "{} increments with {retries} CAS retries",
            TASKS * INCREMENTS
        );
    });
}

const LOG_FSYNCS: &str = "ringkv_raft_log_fsync_total";

/// Group commit across rounds: while writes keep coming, a node fsyncs its raft log at most
/// once per `--raft-sync-interval-us` (one fsync covers the writes of many rounds, on every
/// region), and every write is still acknowledged and lands. The interval is stretched to
/// 100 ms so that the bound is far from what one fsync per round would give.
#[test]
fn writes_keep_landing_with_at_most_one_log_fsync_per_sync_interval() {
    const INTERVAL: Duration = Duration::from_millis(100);
    const CLIENTS: usize = 8;
    const WRITES_PER_CLIENT: usize = 15;
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(4),
                node_args: vec![
                    "--raft-sync-interval-us".into(),
                    INTERVAL.as_micros().to_string(),
                ],
                ..options()
            },
        )
        .await;
        cluster.wait_ready().await;
        let nodes = cluster.node_ids();
        let fsyncs = || async {
            let mut per_node = Vec::new();
            for &id in &nodes {
                let metrics = cluster.request(id, Method::GET, "/metrics", None).await;
                let metrics = metrics.unwrap_or_else(|e| panic!("metrics of node {id}: {e}"));
                per_node.push(counter_value(&metrics.text(), LOG_FSYNCS));
            }
            per_node
        };

        let started = Instant::now();
        let before = fsyncs().await;
        let mut tasks = tokio::task::JoinSet::new();
        for client_number in 0..CLIENTS {
            let client = cluster.client(nodes[client_number % nodes.len()]);
            tasks.spawn(async move {
                let mut written = Vec::new();
                for n in 0..WRITES_PER_CLIENT {
                    let key = format!("grouped-{client_number}-{n:02}");
                    client.must_put(&key, key.as_bytes()).await;
                    written.push(key);
                }
                written
            });
        }
        let results = join_all(tasks).await;
        let after = fsyncs().await;
        let elapsed = started.elapsed();

        // One in flight as the count was read, one right away after the quiet spell, then
        // at most one per interval.
        let bound = 2.0 + (elapsed.as_secs_f64() / INTERVAL.as_secs_f64()).floor();
        for ((id, before), after) in nodes.iter().zip(before).zip(after) {
            let synced = after - before;
            assert!(
                synced <= bound,
                "node {id}: {synced} raft-log fsyncs in {elapsed:?} of writes, more than one \
                 per {INTERVAL:?} allows ({bound})"
            );
        }
        let mut model = Model::default();
        for key in results.into_iter().flatten() {
            model.put(&key, key.as_bytes());
        }
        assert_eq!(model.len(), CLIENTS * WRITES_PER_CLIENT);
        for &id in &nodes {
            cluster.assert_reads(id, &model).await;
        }
    });
}
