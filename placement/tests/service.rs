//! The placement service over real gRPC on loopback, with its state in a real data dir.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringkv_placement::{PlacementConfig, RunningPlacement, ServeConfig};
use ringkv_proto::metapb::{Peer, Region, RegionEpoch, Store};
use ringkv_proto::placementpb::placement_client::PlacementClient;
use ringkv_proto::placementpb::{
    get_region_request, AllocIdRequest, AskSplitRequest, BootstrapRequest, ChangePeerType,
    GetAllStoresRequest, GetClusterInfoRequest, GetOperatorsRequest, GetRegionRequest,
    GetStoreRequest, MoveRegionRequest, PutStoreRequest, RegionHeartbeatRequest,
    RegionHeartbeatResponse, RegionWithLeader, RemoveStoreRequest, RequestHeader,
    ScanRegionsRequest, SplitRegionRequest, StoreHeartbeatRequest, StoreState, StoreStats,
    TransferLeaderRequest,
};
use tonic::transport::Channel;
use tonic::Code;

type Client = PlacementClient<Channel>;

async fn start(dir: &Path) -> RunningPlacement {
    ringkv_placement::start(
        ServeConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            http_addr: Some("127.0.0.1:0".parse().expect("address")),
            data_dir: dir.to_path_buf(),
            placement: PlacementConfig {
                max_replicas: 3,
                max_store_down_time: Duration::from_secs(60),
                ..PlacementConfig::default()
            },
        },
        None,
    )
    .await
    .expect("placement starts")
}

async fn connect(addr: SocketAddr) -> Client {
    PlacementClient::connect(format!("http://{addr}"))
        .await
        .expect("connecting to placement")
}

fn header(cluster_id: u64) -> Option<RequestHeader> {
    Some(RequestHeader { cluster_id })
}

async fn cluster_id(client: &mut Client) -> u64 {
    client
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("cluster info")
        .into_inner()
        .cluster_id
}

async fn alloc(client: &mut Client, cluster: u64, count: u32) -> Vec<u64> {
    let answer = client
        .alloc_id(AllocIdRequest {
            header: header(cluster),
            count,
        })
        .await
        .expect("alloc ids")
        .into_inner();
    (answer.first_id..answer.first_id + u64::from(answer.count)).collect()
}

fn store(id: u64, port: u16) -> Store {
    Store {
        id,
        raft_addr: format!("127.0.0.1:{port}"),
        http_addr: format!("127.0.0.1:{}", port + 1),
        grpc_addr: String::new(),
    }
}

fn region(id: u64, start: u64, end: u64, version: u64, conf_ver: u64, peers: &[Peer]) -> Region {
    Region {
        id,
        start_hash: start,
        end_hash: end,
        epoch: Some(RegionEpoch { conf_ver, version }),
        peers: peers.to_vec(),
    }
}

fn peer(id: u64, store_id: u64) -> Peer {
    Peer {
        id,
        store_id,
        role: 0,
    }
}

async fn heartbeat(
    client: &mut Client,
    cluster: u64,
    region: &Region,
    leader: Peer,
    term: u64,
) -> Result<RegionHeartbeatResponse, tonic::Status> {
    client
        .region_heartbeat(RegionHeartbeatRequest {
            header: header(cluster),
            region: Some(region.clone()),
            leader: Some(leader),
            term,
            stats: None,
            pending_peers: vec![],
            snapshots: vec![],
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn store_heartbeat(client: &mut Client, cluster: u64, store_id: u64) {
    client
        .store_heartbeat(StoreHeartbeatRequest {
            header: header(cluster),
            store_id,
            stats: None,
        })
        .await
        .expect("store heartbeat");
}

async fn scan(client: &mut Client, cluster: u64) -> Vec<RegionWithLeader> {
    client
        .scan_regions(ScanRegionsRequest {
            header: header(cluster),
            start_hash: 0,
            limit: 0,
        })
        .await
        .expect("scan")
        .into_inner()
        .regions
}

/// A bootstrapped cluster: store `s` with regions `[0, half)` and `[half, end)`, one peer each.
struct Bootstrapped {
    cluster: u64,
    store: u64,
    regions: Vec<Region>,
}

const HALF: u64 = 1 << 63;

async fn bootstrap(client: &mut Client) -> Bootstrapped {
    let cluster = cluster_id(client).await;
    let ids = alloc(client, cluster, 5).await;
    let store_id = ids[0];
    let regions = vec![
        region(ids[1], 0, HALF, 1, 1, &[peer(ids[2], store_id)]),
        region(ids[3], HALF, 0, 1, 1, &[peer(ids[4], store_id)]),
    ];
    client
        .bootstrap(BootstrapRequest {
            header: header(cluster),
            store: Some(store(store_id, 20_000)),
            regions: regions.clone(),
        })
        .await
        .expect("bootstrap");
    Bootstrapped {
        cluster,
        store: store_id,
        regions,
    }
}

#[tokio::test]
async fn bootstrap_allocate_register_and_look_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let info = client
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert!(!info.bootstrapped);
    assert_ne!(info.cluster_id, 0);

    let wrong = client
        .alloc_id(AllocIdRequest {
            header: header(info.cluster_id ^ 1),
            count: 1,
        })
        .await
        .expect_err("a wrong cluster id is refused");
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong}");

    let early = client
        .put_store(PutStoreRequest {
            header: header(info.cluster_id),
            store: Some(store(1, 1000)),
        })
        .await
        .expect_err("no stores before bootstrap");
    assert_eq!(early.code(), Code::FailedPrecondition, "{early}");

    let boot = bootstrap(&mut client).await;
    let again = client
        .bootstrap(BootstrapRequest {
            header: header(boot.cluster),
            store: Some(store(boot.store, 20_000)),
            regions: boot.regions.clone(),
        })
        .await
        .expect_err("bootstrap twice");
    assert_eq!(again.code(), Code::AlreadyExists, "{again}");

    // Ids never repeat.
    let a = alloc(&mut client, boot.cluster, 3).await;
    let b = alloc(&mut client, boot.cluster, 3).await;
    assert!(
        a.iter().all(|id| !b.contains(id)) && b[0] > a[2],
        "{a:?} then {b:?}"
    );

    // A second store registers with an allocated id; an unallocated id or a taken address is
    // refused.
    let second = alloc(&mut client, boot.cluster, 1).await[0];
    client
        .put_store(PutStoreRequest {
            header: header(boot.cluster),
            store: Some(store(second, 21_000)),
        })
        .await
        .expect("second store");
    for (bad, why) in [
        (store(second + 1_000_000, 22_000), "unallocated id"),
        (store(b[0], 20_000), "address of another store"),
    ] {
        let refused = client
            .put_store(PutStoreRequest {
                header: header(boot.cluster),
                store: Some(bad),
            })
            .await
            .expect_err(why);
        assert_eq!(refused.code(), Code::InvalidArgument, "{why}: {refused}");
    }

    // Lookups by key, hash and id agree with the bootstrap layout.
    let by = |by| GetRegionRequest {
        header: header(boot.cluster),
        by: Some(by),
    };
    let low = client
        .get_region(by(get_region_request::By::Hash(5)))
        .await
        .expect("by hash")
        .into_inner();
    assert_eq!(
        low.region.and_then(|r| r.region).map(|r| r.id),
        Some(boot.regions[0].id)
    );
    let key = b"some key";
    let expected = if ringkv_proto::key_hash(key) < HALF {
        0
    } else {
        1
    };
    let by_key = client
        .get_region(by(get_region_request::By::Key(key.to_vec().into())))
        .await
        .expect("by key")
        .into_inner();
    assert_eq!(
        by_key.region.and_then(|r| r.region).map(|r| r.id),
        Some(boot.regions[expected].id)
    );
    let missing = client
        .get_region(by(get_region_request::By::RegionId(999_999_999)))
        .await
        .expect_err("unknown region");
    assert_eq!(missing.code(), Code::NotFound, "{missing}");
    assert_eq!(scan(&mut client, boot.cluster).await.len(), 2);
    placement.shutdown().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let second = alloc(&mut client, boot.cluster, 1).await[0];
    client
        .put_store(PutStoreRequest {
            header: header(boot.cluster),
            store: Some(store(second, 21_000)),
        })
        .await
        .expect("second store");
    // Region 0 gains a peer on the second store (conf_ver 2).
    let new_peer = alloc(&mut client, boot.cluster, 1).await[0];
    let leader = boot.regions[0].peers[0];
    let mut grown = boot.regions[0].clone();
    grown.peers.push(peer(new_peer, second));
    grown.epoch = Some(RegionEpoch {
        conf_ver: 2,
        version: 1,
    });
    heartbeat(&mut client, boot.cluster, &grown, leader, 6)
        .await
        .expect("heartbeat");
    let last_id = alloc(&mut client, boot.cluster, 1).await[0];
    placement.shutdown().await;

    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let info = client
        .get_cluster_info(GetClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.cluster_id, boot.cluster, "the cluster id survives");
    assert!(info.bootstrapped);
    let stores = client
        .get_all_stores(GetAllStoresRequest {
            header: header(boot.cluster),
        })
        .await
        .expect("stores")
        .into_inner()
        .stores;
    assert_eq!(stores.len(), 2);
    let regions = scan(&mut client, boot.cluster).await;
    assert_eq!(
        regions[0].region.as_ref(),
        Some(&grown),
        "the membership change survives"
    );
    assert!(
        alloc(&mut client, boot.cluster, 1).await[0] > last_id,
        "ids never repeat"
    );
    // Still stale after the restart: the older epoch is refused.
    let stale = heartbeat(&mut client, boot.cluster, &boot.regions[0], leader, 7)
        .await
        .expect_err("an older epoch after restart");
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale}");
    placement.shutdown().await;
}

#[tokio::test]
async fn stale_and_bogus_heartbeats_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let parent = boot.regions[1].clone();
    let leader = parent.peers[0];

    // The parent splits in two (version 2 each): placement replaces it with both halves.
    let ids = alloc(&mut client, boot.cluster, 2).await;
    let quarter = HALF + (HALF >> 1);
    let mut left = parent.clone();
    left.end_hash = quarter;
    left.epoch = Some(RegionEpoch {
        conf_ver: 1,
        version: 2,
    });
    let right = region(ids[0], quarter, 0, 2, 1, &[peer(ids[1], boot.store)]);
    heartbeat(&mut client, boot.cluster, &left, leader, 6)
        .await
        .expect("left half");
    heartbeat(&mut client, boot.cluster, &right, right.peers[0], 6)
        .await
        .expect("right half");
    let before = scan(&mut client, boot.cluster).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let unknown_store = region(parent.id, HALF, quarter, 3, 1, &[peer(leader.id, 999_999)]);
    let mut not_a_peer = left.clone();
    not_a_peer.epoch = Some(RegionEpoch {
        conf_ver: 1,
        version: 3,
    });
    let mut same_epoch_other_shape = left.clone();
    same_epoch_other_shape.end_hash = quarter + 1;
    let cases: Vec<(&str, Region, Peer, u64, u64, Code)> = vec![
        (
            "the parent's pre-split report (older version than itself)",
            parent.clone(),
            leader,
            6,
            boot.cluster,
            Code::FailedPrecondition,
        ),
        (
            "a report overlapping a newer region",
            region(ids[0], quarter, 0, 1, 1, &[peer(ids[1], boot.store)]),
            peer(ids[1], boot.store),
            6,
            boot.cluster,
            Code::FailedPrecondition,
        ),
        (
            "a report from an older term",
            left.clone(),
            leader,
            5,
            boot.cluster,
            Code::FailedPrecondition,
        ),
        (
            "a wrong cluster id",
            left.clone(),
            leader,
            6,
            boot.cluster ^ 7,
            Code::FailedPrecondition,
        ),
        (
            "a peer on an unknown store",
            unknown_store,
            peer(leader.id, 999_999),
            6,
            boot.cluster,
            Code::NotFound,
        ),
        (
            "a leader that is not a peer",
            not_a_peer,
            peer(123_456, boot.store),
            6,
            boot.cluster,
            Code::InvalidArgument,
        ),
        (
            "a changed range without an epoch change",
            same_epoch_other_shape,
            leader,
            6,
            boot.cluster,
            Code::InvalidArgument,
        ),
    ];
    for (what, region, leader, term, cluster, code) in cases {
        let refused = heartbeat(&mut client, cluster, &region, leader, term)
            .await
            .expect_err(what);
        assert_eq!(refused.code(), code, "{what}: {refused}");
        assert_eq!(
            scan(&mut client, boot.cluster).await,
            before,
            "{what} changed placement's regions"
        );
    }

    // Store heartbeats: unknown store and wrong cluster refused, a known one is up.
    let store_beat = |store_id, cluster| StoreHeartbeatRequest {
        header: header(cluster),
        store_id,
        stats: Some(StoreStats {
            region_count: 3,
            ..StoreStats::default()
        }),
    };
    let refused = client
        .store_heartbeat(store_beat(999_999, boot.cluster))
        .await
        .expect_err("unknown store");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    let refused = client
        .store_heartbeat(store_beat(boot.store, boot.cluster ^ 7))
        .await
        .expect_err("wrong cluster");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    client
        .store_heartbeat(store_beat(boot.store, boot.cluster))
        .await
        .expect("heartbeat");
    let stores = client
        .get_all_stores(GetAllStoresRequest {
            header: header(boot.cluster),
        })
        .await
        .expect("stores")
        .into_inner()
        .stores;
    assert_eq!(stores[0].state, StoreState::Up as i32);
    assert_eq!(stores[0].stats.map(|s| s.region_count), Some(3));
    placement.shutdown().await;
}

#[tokio::test]
async fn status_page_lists_stores_and_regions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let http = placement.http_addr().expect("HTTP address");
    let body = http_get(http, "/status").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["cluster_id"].as_u64(), Some(boot.cluster));
    assert_eq!(json["regions"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json["stores"][0]["id"].as_u64(), Some(boot.store), "{json}");
    assert_eq!(
        json["regions"][0]["snapshots"],
        serde_json::json!([]),
        "{json}"
    );
    assert_eq!(json["stuck_joint"], serde_json::json!([]), "{json}");
    placement.shutdown().await;
}

#[tokio::test]
async fn region_heartbeat_answers_add_learner_once_more_stores_are_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let region = boot.regions[0].clone();
    let leader = region.peers[0];
    store_heartbeat(&mut client, boot.cluster, boot.store).await;
    let answer = heartbeat(&mut client, boot.cluster, &region, leader, 1)
        .await
        .expect("heartbeat");
    assert_eq!(
        answer,
        RegionHeartbeatResponse::default(),
        "one store: nowhere to add a replica"
    );

    let new_stores = alloc(&mut client, boot.cluster, 2).await;
    for (n, &id) in new_stores.iter().enumerate() {
        client
            .put_store(PutStoreRequest {
                header: header(boot.cluster),
                store: Some(store(id, 21_000 + 10 * n as u16)),
            })
            .await
            .expect("register store");
        store_heartbeat(&mut client, boot.cluster, id).await;
    }
    let answer = heartbeat(&mut client, boot.cluster, &region, leader, 1)
        .await
        .expect("heartbeat");
    assert_eq!(answer.region_id, region.id, "{answer:?}");
    assert_eq!(answer.region_epoch, region.epoch, "{answer:?}");
    let change = answer.change_peer.expect("a membership change");
    assert_eq!(change.change_type, ChangePeerType::AddLearner as i32);
    let learner = change.peer.expect("the new peer");
    assert!(
        new_stores.contains(&learner.store_id),
        "the learner goes to a new store: {learner:?}"
    );

    let operators = client
        .get_operators(GetOperatorsRequest {
            header: header(boot.cluster),
        })
        .await
        .expect("operators")
        .into_inner()
        .operators;
    assert_eq!(operators.len(), 1, "{operators:?}");
    assert_eq!(
        (operators[0].region_id, operators[0].kind.as_str()),
        (region.id, "add-learner")
    );
    let http = placement.http_addr().expect("HTTP address");
    let json: serde_json::Value =
        serde_json::from_str(&http_get(http, "/status").await).expect("JSON");
    assert_eq!(json["operators"][0]["kind"], "add-learner", "{json}");
    assert_eq!(
        json["operators"][0]["region_id"].as_u64(),
        Some(region.id),
        "{json}"
    );
    placement.shutdown().await;
}

async fn operator_kinds(client: &mut Client, cluster: u64) -> Vec<(u64, String)> {
    client
        .get_operators(GetOperatorsRequest {
            header: header(cluster),
        })
        .await
        .expect("operators")
        .into_inner()
        .operators
        .into_iter()
        .map(|op| (op.region_id, op.kind))
        .collect()
}

/// Registers `count` more stores and has them heartbeat; returns their ids.
async fn add_stores(client: &mut Client, cluster: u64, count: u32, port: u16) -> Vec<u64> {
    let ids = alloc(client, cluster, count).await;
    for (n, &id) in ids.iter().enumerate() {
        client
            .put_store(PutStoreRequest {
                header: header(cluster),
                store: Some(store(id, port + 10 * n as u16)),
            })
            .await
            .expect("register store");
        store_heartbeat(client, cluster, id).await;
    }
    ids
}

#[tokio::test]
async fn admin_requests_are_reachable_and_validate_input() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let c = boot.cluster;
    let (low, high) = (boot.regions[0].clone(), boot.regions[1].clone());
    store_heartbeat(&mut client, c, boot.store).await;
    let others = add_stores(&mut client, c, 2, 21_000).await;

    // AskSplit: ids for a split the leader decided on.
    let ask = |region: Option<Region>, cluster| AskSplitRequest {
        header: header(cluster),
        region,
    };
    let ids = client
        .ask_split(ask(Some(low.clone()), c))
        .await
        .expect("ask split")
        .into_inner();
    assert_ne!(ids.new_region_id, 0);
    assert_eq!(ids.new_peer_ids.len(), low.peers.len(), "{ids:?}");
    let unknown_region = Region {
        id: 999_999,
        ..low.clone()
    };
    for (what, request, code) in [
        (
            "an unknown region",
            ask(Some(unknown_region), c),
            Code::NotFound,
        ),
        ("no region", ask(None, c), Code::InvalidArgument),
        (
            "a wrong cluster",
            ask(Some(low.clone()), c ^ 1),
            Code::FailedPrecondition,
        ),
    ] {
        let refused = client.ask_split(request).await.expect_err(what);
        assert_eq!(refused.code(), code, "ask-split for {what}: {refused}");
    }

    // SplitRegion: validated, then sent as the region's next step.
    let split = |region_id, split_hash| SplitRegionRequest {
        header: header(c),
        region_id,
        split_hash,
    };
    for (what, request, code) in [
        ("an unknown region", split(999_999, 5), Code::NotFound),
        (
            "a hash at the region's end",
            split(low.id, HALF),
            Code::InvalidArgument,
        ),
    ] {
        let refused = client.split_region(request).await.expect_err(what);
        assert_eq!(refused.code(), code, "split of {what}: {refused}");
    }
    let refused = client
        .split_region(split(low.id, HALF + 1))
        .await
        .expect_err("a hash outside the region");
    for id in [low.id, HALF + 1] {
        assert!(
            refused.message().contains(&id.to_string()),
            "the message names {id}: {refused}"
        );
    }
    client
        .split_region(split(low.id, 5))
        .await
        .expect("split accepted");
    assert_eq!(
        operator_kinds(&mut client, c).await,
        vec![(low.id, "split".to_owned())]
    );
    let answer = heartbeat(&mut client, c, &low, low.peers[0], 1)
        .await
        .expect("heartbeat");
    assert_eq!(answer.split.map(|s| s.split_hash), Some(5));

    // TransferLeader: only to a voter of the region.
    let transfer = |region_id, to_store_id| TransferLeaderRequest {
        header: header(c),
        region_id,
        to_store_id,
    };
    for (what, request, code) in [
        (
            "an unknown region",
            transfer(999_999, boot.store),
            Code::NotFound,
        ),
        (
            "an unknown store",
            transfer(high.id, 999_999),
            Code::NotFound,
        ),
        (
            "a store without a voter",
            transfer(high.id, others[0]),
            Code::InvalidArgument,
        ),
    ] {
        let refused = client.transfer_leader(request).await.expect_err(what);
        assert_eq!(refused.code(), code, "transfer to {what}: {refused}");
    }
    client
        .transfer_leader(transfer(high.id, boot.store))
        .await
        .expect("transfer accepted");

    // MoveRegion: a goal, listed with the operators.
    let move_region = |region_id, from_store_id, to_store_id| MoveRegionRequest {
        header: header(c),
        region_id,
        from_store_id,
        to_store_id,
    };
    for (what, request, code) in [
        (
            "an unknown region",
            move_region(999_999, boot.store, others[0]),
            Code::NotFound,
        ),
        (
            "an unknown store",
            move_region(high.id, boot.store, 999_999),
            Code::NotFound,
        ),
        (
            "the same store",
            move_region(high.id, boot.store, boot.store),
            Code::InvalidArgument,
        ),
        (
            "a store without a peer",
            move_region(high.id, others[0], others[1]),
            Code::InvalidArgument,
        ),
    ] {
        let refused = client.move_region(request).await.expect_err(what);
        assert_eq!(refused.code(), code, "move with {what}: {refused}");
    }
    client
        .move_region(move_region(high.id, boot.store, others[0]))
        .await
        .expect("move accepted");
    let kinds = operator_kinds(&mut client, c).await;
    assert!(
        kinds.contains(&(high.id, "move-region".to_owned())),
        "{kinds:?}"
    );

    // RemoveStore: refused while too few stores would stay, then accepted.
    let remove = |store_id| RemoveStoreRequest {
        header: header(c),
        store_id,
    };
    let refused = client
        .remove_store(remove(999_999))
        .await
        .expect_err("unknown store");
    assert_eq!(refused.code(), Code::NotFound, "{refused}");
    let refused = client
        .remove_store(remove(others[1]))
        .await
        .expect_err("two stores would stay, three replicas wanted");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    add_stores(&mut client, c, 1, 22_000).await;
    client
        .remove_store(remove(others[1]))
        .await
        .expect("removal accepted");
    // It holds no peer: a tombstone at once.
    let removed = client
        .get_store(GetStoreRequest {
            header: header(c),
            store_id: others[1],
        })
        .await
        .expect("store")
        .into_inner()
        .store
        .expect("store info");
    assert_eq!(removed.state, StoreState::Tombstone as i32);
    placement.shutdown().await;
}

#[tokio::test]
async fn a_draining_store_shows_as_offline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let mut client = connect(placement.grpc_addr()).await;
    let boot = bootstrap(&mut client).await;
    let c = boot.cluster;
    store_heartbeat(&mut client, c, boot.store).await;
    add_stores(&mut client, c, 3, 21_000).await;
    client
        .remove_store(RemoveStoreRequest {
            header: header(c),
            store_id: boot.store,
        })
        .await
        .expect("removal accepted");
    let stores = client
        .get_all_stores(GetAllStoresRequest { header: header(c) })
        .await
        .expect("stores")
        .into_inner()
        .stores;
    let state = stores
        .iter()
        .find(|info| info.store.as_ref().map(|s| s.id) == Some(boot.store))
        .map(|info| info.state);
    assert_eq!(state, Some(StoreState::Offline as i32), "{stores:?}");
    // Still heartbeating while drained.
    store_heartbeat(&mut client, c, boot.store).await;
    let http = placement.http_addr().expect("HTTP address");
    let json: serde_json::Value =
        serde_json::from_str(&http_get(http, "/status").await).expect("JSON");
    let listed = json["stores"]
        .as_array()
        .and_then(|stores| stores.iter().find(|s| s["id"].as_u64() == Some(boot.store)))
        .map(|s| s["state"].clone());
    assert_eq!(listed, Some(serde_json::json!("offline")), "{json}");
    placement.shutdown().await;
}

#[tokio::test]
async fn ring_page_is_served_and_the_root_leads_to_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let placement = start(dir.path()).await;
    let http = placement.http_addr().expect("HTTP address");
    let (head, page) = http_request(http, "/ring").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status_code(&head), "200", "{head}");
    assert!(
        head.contains("content-type: text/html"),
        "the ring page is HTML: {head}"
    );
    assert!(
        page.contains(r#"STATUS_URL = "./status""#),
        "the page draws from /status, relatively so that it works behind a path prefix"
    );
    assert!(
        page.contains(r#"class: "region""#) && page.contains("data-region-id"),
        "the page draws every region as <path class=\"region\" data-region-id=...>"
    );
    let (head, _) = http_request(http, "/").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status_code(&head), "307", "/ redirects: {head}");
    assert!(
        head.contains("location: /ring"),
        "/ leads to the ring page: {head}"
    );
    placement.shutdown().await;
}

fn status_code(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// A minimal HTTP/1.0 GET of a page that must answer 200; returns its body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let (head, body) = http_request(addr, path).await;
    assert_eq!(status_code(&head), "200", "GET {path}: {head}");
    body
}

/// A minimal HTTP/1.0 GET (keeps the placement tests free of an HTTP client dependency);
/// returns the status line with the headers, and the body.
async fn http_request(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: placement\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_owned(), body.to_owned())
}
