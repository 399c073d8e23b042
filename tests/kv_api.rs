//! The client API's surface against real clusters: TTL (expired keys never read, then deleted
//! from every replica), scans that see every key exactly once while regions split under them,
//! and malformed requests refused with documented errors over HTTP and gRPC, changing nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::placement::{kvctl, stores_up, wait_placement, wait_replicated};
use common::{run_serially, wait_until, Cluster, ClusterOptions, NodeClient, WAIT_TIMEOUT};
use reqwest::Method;
use ringkv::proto::kvpb::{
    self, kv_client::KvClient, kv_response, BatchGetRequest, BatchPutRequest, CasRequest,
    GetRequest, KvPair, PutRequest, ScanRequest,
};
use serde_json::{json, Value};

async fn grpc(cluster: &Cluster, node: usize) -> KvClient<tonic::transport::Channel> {
    let url = format!("http://{}", cluster.http_addr(node));
    KvClient::connect(url)
        .await
        .expect("gRPC connection to a node")
}

/// `POST /batch` with a JSON body; the reply's status and parsed body (if any).
async fn batch(client: &NodeClient, body: Value) -> (u16, Value) {
    let reply = client
        .request(Method::POST, "/batch", Some(body.to_string().into_bytes()))
        .await
        .expect("an HTTP answer");
    let parsed = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, parsed)
}

/// Every pair of a full scan through `client` with pages of `limit`, in the order returned.
async fn scan_all_http(client: &NodeClient, limit: usize) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10_000 {
        let page = scan_page_http(client, &cursor, limit).await;
        pairs.extend(page.0);
        match page.1 {
            Some(next) => cursor = next,
            None => return pairs,
        }
    }
    panic!("the scan did not end after 10000 pages");
}

/// One page: its pairs and the next cursor (`None` when done).
async fn scan_page_http(
    client: &NodeClient,
    cursor: &str,
    limit: usize,
) -> (Vec<(String, String)>, Option<String>) {
    let path = format!("/kv?limit={limit}&cursor={cursor}");
    let reply = client
        .request(Method::GET, &path, None)
        .await
        .expect("an HTTP answer");
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    let page: Value = serde_json::from_slice(&reply.body).expect("a JSON page");
    let pairs = page["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
            (
                p["key"].as_str().expect("utf-8 key").to_owned(),
                p["value"].as_str().expect("utf-8 value").to_owned(),
            )
        })
        .collect();
    let next = (page["done"] != true).then(|| page["cursor"].as_str().expect("cursor").to_owned());
    (pairs, next)
}

/// The value of a counter in a node's `/metrics` (0 when not exported yet).
async fn counter(client: &NodeClient, name: &str) -> Result<f64, String> {
    let reply = client
        .request(Method::GET, "/metrics", None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reply
        .text()
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// User keys physically stored in a (stopped) node's RocksDB, expired or not.
fn stored_keys(cluster: &Cluster, node: usize) -> BTreeSet<String> {
    let engine = ringkv::engine::Engine::open(&cluster.data_dir(node).join("db"))
        .expect("open the stopped node's RocksDB");
    let mut keys = BTreeSet::new();
    let (start, end) = (
        ringkv::keys::data_range_start(0),
        ringkv::keys::data_range_end(0),
    );
    engine
        .scan(ringkv::engine::CF_DEFAULT, &start, &end, |key, _| {
            let user_key = ringkv::keys::user_key_of(key).expect("a data key");
            keys.insert(String::from_utf8_lossy(user_key).into_owned());
            Ok(true)
        })
        .expect("scan the data");
    keys
}

#[test]
fn expired_keys_are_never_returned_and_are_deleted_from_every_replica() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                initial_regions: Some(4),
                node_args: ["--expired-reclaim-interval-secs", "1"]
                    .map(String::from)
                    .to_vec(),
                ..ClusterOptions::default()
            },
        )
        .await;
        cluster.wait_ready().await;
        let http = cluster.client(1);
        let mut grpc1 = grpc(&cluster, 2).await;
        const TTL_SECS: u64 = 3;

        // Keys that stay, and keys that expire: by HTTP batch, HTTP PUT ?ttl, gRPC Put and
        // gRPC BatchPut with a ttl, and a CAS creating a key with a ttl.
        let lasting: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("keep-{i}"), format!("kept-{i}")))
            .collect();
        let (status, _) = batch(&http, json!({ "put": lasting })).await;
        assert_eq!(status, 204, "batch put of lasting keys");
        let mut expiring = BTreeSet::new();
        let first_write = Instant::now();
        let batch_keys: BTreeMap<String, String> = (0..60)
            .map(|i| (format!("tmp-batch-{i}"), format!("v{i}")))
            .collect();
        let (status, _) = batch(&http, json!({ "put": batch_keys, "ttl": TTL_SECS })).await;
        assert_eq!(status, 204, "batch put with a ttl");
        expiring.extend(batch_keys.keys().cloned());
        for i in 0..20 {
            let key = format!("tmp-http-{i}");
            let path = format!("/kv/{key}?ttl={TTL_SECS}");
            let reply = http.request(Method::PUT, &path, Some(b"x".to_vec())).await;
            assert_eq!(reply.expect("answer").status, 204, "PUT {path}");
            expiring.insert(key);
        }
        for i in 0..20 {
            let key = format!("tmp-grpc-{i}");
            let response = grpc1
                .put(PutRequest {
                    key: key.clone().into(),
                    value: "y".into(),
                    ttl_secs: TTL_SECS,
                    context: None,
                })
                .await
                .expect("gRPC put")
                .into_inner();
            assert_eq!(response.result, Some(kv_response::Result::Done(true)));
            expiring.insert(key);
        }
        let pairs = (0..20)
            .map(|i| KvPair {
                key: format!("tmp-grpc-batch-{i}").into(),
                value: "z".into(),
            })
            .collect();
        let response = grpc1
            .batch_put(BatchPutRequest {
                pairs,
                ttl_secs: TTL_SECS,
                context: None,
            })
            .await
            .expect("gRPC batch put")
            .into_inner();
        assert_eq!(response.result, Some(kv_response::Result::Done(true)));
        expiring.extend((0..20).map(|i| format!("tmp-grpc-batch-{i}")));
        let reply = http
            .request(
                Method::PUT,
                &format!("/kv/tmp-cas?prevExist=false&ttl={TTL_SECS}"),
                Some(b"c".to_vec()),
            )
            .await
            .expect("answer");
        assert_eq!(reply.status, 204, "create with a ttl: {}", reply.text());
        expiring.insert("tmp-cas".into());
        let last_ack = Instant::now();
        assert!(
            last_ack < first_write + Duration::from_secs(TTL_SECS),
            "writing took longer than the ttl; the test cannot see them alive"
        );
        assert_eq!(http.must_get("tmp-cas").await.as_deref(), Some(&b"c"[..]));

        // Every expiring key's deadline is at most its acknowledgement plus the ttl. Once
        // that has passed, no read of any kind on any node may return one.
        let expired_by = last_ack + Duration::from_secs(TTL_SECS) + Duration::from_millis(50);
        tokio::time::sleep_until(tokio::time::Instant::from_std(expired_by)).await;
        for node in 1..=3 {
            let client = cluster.client(node);
            for key in &expiring {
                assert_eq!(
                    client.get(key).await.expect("get"),
                    None,
                    "{key} on node {node}"
                );
                assert_eq!(
                    client.get_stale(key).await.expect("stale get"),
                    None,
                    "stale {key} on node {node}"
                );
            }
            let (status, found) = batch(&client, json!({"get": expiring})).await;
            assert_eq!(
                (status, found),
                (200, json!({"pairs": []})),
                "batch get on node {node}"
            );
            let scanned = scan_all_http(&client, 50).await;
            let keys: BTreeSet<String> = scanned.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(
                keys,
                lasting.keys().cloned().collect(),
                "a scan on node {node} returns the lasting keys only"
            );
        }
        let mut grpc3 = grpc(&cluster, 3).await;
        let response = grpc3
            .batch_get(BatchGetRequest {
                keys: expiring.iter().map(|k| k.clone().into()).collect(),
                consistency: kvpb::Consistency::Stale as i32,
                context: None,
            })
            .await
            .expect("gRPC batch get")
            .into_inner();
        assert_eq!(
            response.result,
            Some(kv_response::Result::BatchGet(Default::default()))
        );
        // An expired key is absent to a compare-and-swap too.
        let response = grpc3
            .compare_and_swap(CasRequest {
                key: "tmp-cas".into(),
                expect_absent: true,
                new_value: "again".into(),
                ..Default::default()
            })
            .await
            .expect("gRPC cas")
            .into_inner();
        let Some(kv_response::Result::Cas(cas)) = response.result else {
            panic!("a CAS answer, got {response:?}");
        };
        assert!(
            cas.succeeded,
            "CAS expecting an expired key absent: {cas:?}"
        );
        expiring.remove("tmp-cas");

        // The background pass deletes them through raft: every replica counts the deletes.
        let expected = expiring.len() as f64;
        for node in 1..=3 {
            let client = cluster.client(node);
            wait_until(
                &format!("node {node} to delete {expected} expired keys"),
                WAIT_TIMEOUT,
                async || {
                    let deleted = counter(&client, "ringkv_expired_keys_deleted_total").await?;
                    (deleted >= expected)
                        .then_some(())
                        .ok_or(format!("{deleted} deleted"))
                },
            )
            .await;
        }
        // Followers learn a commit index from the next append or heartbeat: wait until every
        // replica applied the re-created key before looking at their disks.
        for node in 1..=3 {
            let client = cluster.client(node);
            wait_until(
                &format!("node {node} to apply the re-created tmp-cas"),
                WAIT_TIMEOUT,
                async || match client.get_stale("tmp-cas").await {
                    Ok(Some(value)) if value == b"again" => Ok(()),
                    other => Err(format!("stale read: {other:?}")),
                },
            )
            .await;
        }
        // Gone from every replica's RocksDB, while the lasting keys stay.
        for node in 1..=3 {
            cluster.kill(node);
        }
        for node in 1..=3 {
            let stored = stored_keys(&cluster, node);
            let left: Vec<&String> = stored.intersection(&expiring).collect();
            assert!(left.is_empty(), "node {node} still stores expired {left:?}");
            for key in lasting.keys() {
                assert!(stored.contains(key), "node {node} lost {key}");
            }
            assert!(
                stored.contains("tmp-cas"),
                "node {node} lost the re-created tmp-cas"
            );
        }
    });
}

#[test]
fn a_scan_returns_every_key_exactly_once_while_regions_split() {
    run_serially(async {
        let cluster = Cluster::start(
            3,
            ClusterOptions {
                placement: true,
                initial_regions: Some(2),
                placement_args: vec!["--disable-balance".into()],
                ..ClusterOptions::default()
            },
        )
        .await;
        let status = wait_placement(&cluster, 2, 3).await;
        // Splits are planned against a region's epoch: let replication settle first.
        wait_replicated(&cluster, 2, &stores_up(&status)).await;
        let present: BTreeMap<String, String> = (0..400)
            .map(|i| (format!("scan-{i:03}"), format!("value-{i}")))
            .collect();
        for chunk in present.iter().collect::<Vec<_>>().chunks(100) {
            let body: BTreeMap<&String, &String> = chunk.iter().copied().collect();
            let (status, answer) = batch(&cluster.client(1), json!({ "put": body })).await;
            assert_eq!(status, 204, "batch put: {answer}");
        }

        // A gRPC scanner pages concurrently, while the HTTP scan below splits regions
        // between its own pages.
        let grpc_scan = {
            let mut client = grpc(&cluster, 3).await;
            tokio::spawn(async move {
                let mut cursor = bytes::Bytes::new();
                let mut keys = Vec::new();
                loop {
                    let response = client
                        .scan(ScanRequest {
                            cursor: cursor.clone(),
                            limit: 7,
                            ..Default::default()
                        })
                        .await
                        .expect("gRPC scan")
                        .into_inner();
                    let Some(kv_response::Result::Scan(page)) = response.result else {
                        panic!("a scan page, got {response:?}");
                    };
                    keys.extend(page.pairs.into_iter().map(|p| p.key));
                    if page.done {
                        return keys;
                    }
                    cursor = page.next_cursor;
                }
            })
        };

        let nodes: Vec<NodeClient> = (1..=3).map(|n| cluster.client(n)).collect();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut cursor = String::new();
        let mut splits = 0;
        for page_number in 0usize.. {
            assert!(page_number < 1000, "the scan did not end");
            let (pairs, next) = scan_page_http(&nodes[page_number % 3], &cursor, 15).await;
            for (key, value) in pairs {
                if let Some(expected) = present.get(&key) {
                    assert_eq!(&value, expected, "{key} read back wrong");
                }
                *seen.entry(key).or_default() += 1;
            }
            let Some(next) = next else { break };
            cursor = next;
            // Split the region the next page starts in (a page straddling a fresh split),
            // for the first pages; regions multiply under the scan.
            if splits < 6 {
                let hash = u64::from_str_radix(&cursor[..16.min(cursor.len())], 16).unwrap_or(0);
                let region = region_holding(&cluster, hash);
                kvctl(
                    &cluster,
                    &[
                        "split",
                        &region.to_string(),
                        "--wait",
                        "--timeout-secs",
                        "60",
                    ],
                )
                .expect("kvctl split");
                splits += 1;
            }
        }
        assert_eq!(splits, 6, "the scan ended before the splits were done");
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "keys returned more than once: {twice:?}");
        let missing: Vec<_> = present.keys().filter(|k| !seen.contains_key(*k)).collect();
        assert!(missing.is_empty(), "keys never returned: {missing:?}");

        let grpc_keys = grpc_scan.await.expect("gRPC scanner");
        let distinct: BTreeSet<_> = grpc_keys.iter().cloned().collect();
        assert_eq!(
            distinct.len(),
            grpc_keys.len(),
            "the gRPC scan repeated a key"
        );
        for key in present.keys() {
            assert!(
                distinct.contains(key.as_bytes()),
                "the gRPC scan missed {key}"
            );
        }
        let status = cluster.placement_status().await.expect("placement status");
        let regions = status["regions"].as_array().map_or(0, Vec::len);
        assert!(
            regions >= 8,
            "6 splits of 2 regions make 8, placement shows {regions}"
        );
    });
}

/// The id of the region placement says holds `hash`.
fn region_holding(cluster: &Cluster, hash: u64) -> u64 {
    let listed = kvctl(cluster, &["regions", "--json"]).expect("kvctl regions");
    let regions: Value = serde_json::from_str(&listed).expect("kvctl regions --json");
    regions["regions"]
        .as_array()
        .expect("a list of regions")
        .iter()
        .find(|r| {
            let start = r["start_hash"].as_u64().unwrap_or(0);
            let end = r["end_hash"].as_u64().unwrap_or(0);
            start <= hash && (end == 0 || hash < end)
        })
        .and_then(|r| r["id"].as_u64())
        .expect("a region holds every hash")
}

/// A refused HTTP request: method, path, body, expected status and error code.
type Case = (Method, String, Option<Vec<u8>>, u16, &'static str);

#[test]
fn malformed_requests_get_documented_errors_and_change_nothing() {
    run_serially(async {
        let cluster = Cluster::start(3, ClusterOptions::default()).await;
        cluster.wait_ready().await;
        let http = cluster.client(1);
        http.must_put("existing", b"before").await;
        let before = scan_all_http(&http, 100).await;

        let long_key = "k".repeat(4097);
        let cases: Vec<Case> = vec![
            (Method::PUT, "/kv/".into(), Some(b"v".to_vec()), 400, "empty_key"),
            (Method::PUT, format!("/kv/{long_key}"), Some(b"v".to_vec()), 400, "key_too_large"),
            (Method::PUT, "/kv/big".into(), Some(vec![b'v'; (1 << 20) + 1]), 413, "value_too_large"),
            (Method::PUT, "/kv/existing?prevValue=before&prevExist=false".into(), Some(b"v".to_vec()), 400, "bad_query"),
            (Method::PUT, "/kv/existing?ttl=-1".into(), Some(b"v".to_vec()), 400, "bad_query"),
            (Method::PUT, "/kv/existing?ttl=999999999999".into(), Some(b"v".to_vec()), 400, "bad_ttl"),
            (Method::PUT, "/kv/existing?colour=red".into(), Some(b"v".to_vec()), 400, "bad_query"),
            (Method::GET, "/kv?cursor=zz".into(), None, 400, "bad_cursor"),
            (Method::GET, "/kv?cursor=0102".into(), None, 400, "bad_cursor"),
            (Method::GET, "/kv?limit=5000".into(), None, 400, "bad_limit"),
            (Method::POST, "/batch".into(), Some(b"{not json".to_vec()), 400, "bad_batch"),
            (Method::POST, "/batch".into(), Some(br#"{"put":{"a":"1"},"delete":["existing"]}"#.to_vec()), 400, "bad_batch"),
            (Method::POST, "/batch".into(), Some(br#"{"delete":[]}"#.to_vec()), 400, "empty_batch"),
            (Method::POST, "/batch".into(), Some(br#"{"delete":["existing",""]}"#.to_vec()), 400, "empty_key"),
            (Method::POST, "/batch".into(), Some(json!({"put": (0..1025).map(|i| (format!("b{i}"), "v")).collect::<BTreeMap<_, _>>()}).to_string().into_bytes()), 400, "batch_too_large"),
            (Method::PATCH, "/kv/existing".into(), None, 405, "method_not_allowed"),
        ];
        for (method, path, body, status, code) in cases {
            let shown = format!("{method} {}", &path[..path.len().min(60)]);
            let reply = http.request(method, &path, body).await.expect("an answer");
            assert_eq!(reply.status, status, "{shown}: {}", reply.text());
            let (got_code, message) = reply.error().expect("the JSON error shape");
            assert_eq!(got_code, code, "{shown}: {message}");
            assert!(!message.is_empty(), "{shown} explains itself");
        }

        let mut grpc2 = grpc(&cluster, 2).await;
        let invalid = |result: Result<tonic::Response<kvpb::KvResponse>, tonic::Status>,
                       code: &str| {
            let status = result.expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().starts_with(code), "{code}: {status:?}");
        };
        invalid(grpc2.get(GetRequest::default()).await, "empty_key");
        invalid(
            grpc2
                .put(PutRequest {
                    key: long_key.clone().into(),
                    ..Default::default()
                })
                .await,
            "key_too_large",
        );
        invalid(
            grpc2
                .compare_and_swap(CasRequest {
                    key: "existing".into(),
                    delete: true,
                    new_value: "x".into(),
                    ..Default::default()
                })
                .await,
            "bad_cas",
        );
        invalid(
            grpc2
                .compare_and_swap(CasRequest {
                    key: "existing".into(),
                    expect_absent: true,
                    expected_value: "before".into(),
                    new_value: "x".into(),
                    ..Default::default()
                })
                .await,
            "bad_cas",
        );
        let duplicate = vec![
            KvPair {
                key: "existing".into(),
                value: "1".into(),
            },
            KvPair {
                key: "existing".into(),
                value: "2".into(),
            },
        ];
        invalid(
            grpc2
                .batch_put(BatchPutRequest {
                    pairs: duplicate,
                    ..Default::default()
                })
                .await,
            "duplicate_key",
        );
        invalid(
            grpc2
                .scan(ScanRequest {
                    cursor: vec![1, 2, 3].into(),
                    ..Default::default()
                })
                .await,
            "bad_cursor",
        );

        let after = scan_all_http(&http, 100).await;
        assert_eq!(after, before, "refused requests changed the data");
        assert_eq!(
            http.must_get("existing").await.as_deref(),
            Some(&b"before"[..])
        );
    });
}
