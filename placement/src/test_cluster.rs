//! A real [`ClusterState`] on a temp dir, driven with injected instants: the harness the
//! checker and operator tests share. It hides the plumbing (ids, bootstrap, registration) so
//! the tests read as the scenarios they pin down.

use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, PeerRole, Region, RegionEpoch, Store};
use ringkv_proto::placementpb::{ChangePeerType, RegionHeartbeatResponse, RegionStats, StoreStats};

use crate::state::{ClusterState, PlacementConfig};

pub const HALF: u64 = 1 << 63;
pub const DOWN_TIME: Duration = Duration::from_secs(60);
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(300);

pub fn test_config() -> PlacementConfig {
    PlacementConfig {
        max_replicas: 3,
        max_store_down_time: DOWN_TIME,
        operator_timeout: OPERATOR_TIMEOUT,
        replica_schedule_limit: 16,
    }
}

pub fn voter(id: u64, store_id: u64) -> Peer {
    Peer {
        id,
        store_id,
        role: PeerRole::Voter as i32,
    }
}

pub fn learner(id: u64, store_id: u64) -> Peer {
    Peer {
        id,
        store_id,
        role: PeerRole::Learner as i32,
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub struct TestCluster {
    dir: tempfile::TempDir,
    config: PlacementConfig,
    pub state: ClusterState,
    /// When placement (first) started.
    pub t0: Instant,
    /// Registered stores; the first bootstrapped the cluster.
    pub stores: Vec<u64>,
    /// `[0, HALF)`, one voter on the first store, epoch (1, 1).
    pub region: Region,
    /// `[HALF, ring end)`, likewise; the tests use it to load stores with peers.
    pub other: Region,
}

impl TestCluster {
    pub fn new(store_count: usize) -> TestCluster {
        TestCluster::with_config(store_count, test_config())
    }

    /// `store_count` registered stores (none has heartbeated yet) and two regions.
    pub fn with_config(store_count: usize, config: PlacementConfig) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let t0 = Instant::now();
        let mut state = ClusterState::open(dir.path(), config.clone(), t0).expect("open state");
        let (first, _) = state.alloc_ids(store_count as u32 + 4).expect("ids");
        let stores: Vec<u64> = (first..first + store_count as u64).collect();
        let next = first + store_count as u64;
        let region = shaped(next, 0, HALF, 1, vec![voter(next + 1, stores[0])]);
        let other = shaped(next + 2, HALF, 0, 1, vec![voter(next + 3, stores[0])]);
        state
            .bootstrap(store(stores[0]), vec![region.clone(), other.clone()])
            .expect("bootstrap");
        for &id in &stores[1..] {
            state.put_store(store(id)).expect("register store");
        }
        TestCluster {
            dir,
            config,
            state,
            t0,
            stores,
            region,
            other,
        }
    }

    /// Placement restarts at `at`: volatile state (heartbeats, operators) is gone.
    pub fn restart(&mut self, at: Instant) {
        self.state =
            ClusterState::open(self.dir.path(), self.config.clone(), at).expect("reopen state");
    }

    pub fn alloc(&mut self) -> u64 {
        self.state.alloc_ids(1).expect("id").0
    }

    pub fn heartbeat_stores(&mut self, stores: &[u64], at: Instant) {
        for &id in stores {
            self.state
                .store_heartbeat(id, StoreStats::default(), at)
                .expect("store heartbeat");
        }
    }

    /// `region` reshaped: the same id and range with `peers` at conf_ver `conf_ver`.
    pub fn reshape(region: &Region, conf_ver: u64, peers: Vec<Peer>) -> Region {
        let version = region.epoch.unwrap_or_default().version;
        Region {
            epoch: Some(RegionEpoch { conf_ver, version }),
            peers,
            ..region.clone()
        }
    }

    /// A leader's report (term 1) with `pending` peers; panics if refused.
    pub fn report(
        &mut self,
        region: &Region,
        leader: Peer,
        pending: &[Peer],
        at: Instant,
    ) -> RegionHeartbeatResponse {
        self.state
            .region_heartbeat(
                region.clone(),
                Some(leader),
                1,
                RegionStats::default(),
                pending,
                at,
            )
            .unwrap_or_else(|e| panic!("report of region {} refused: {e}", region.id))
    }
}

fn store(id: u64) -> Store {
    Store {
        id,
        raft_addr: format!("10.0.0.{id}:20160"),
        http_addr: format!("10.0.0.{id}:20180"),
        grpc_addr: String::new(),
    }
}

fn shaped(id: u64, start: u64, end: u64, conf_ver: u64, peers: Vec<Peer>) -> Region {
    Region {
        id,
        start_hash: start,
        end_hash: end,
        epoch: Some(RegionEpoch {
            conf_ver,
            version: 1,
        }),
        peers,
    }
}

/// The membership change in `answer`, which must be of `kind`.
#[track_caller]
pub fn expect_change(answer: &RegionHeartbeatResponse, kind: ChangePeerType) -> Peer {
    let change = answer
        .change_peer
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?}, got {answer:?}"));
    assert_eq!(change.change_type, kind as i32, "{answer:?}");
    assert!(answer.transfer_leader.is_none(), "two steps in {answer:?}");
    change
        .peer
        .unwrap_or_else(|| panic!("no peer in {answer:?}"))
}

/// The leader transfer in `answer`.
#[track_caller]
pub fn expect_transfer(answer: &RegionHeartbeatResponse) -> Peer {
    assert!(answer.change_peer.is_none(), "{answer:?}");
    answer
        .transfer_leader
        .as_ref()
        .and_then(|t| t.peer)
        .unwrap_or_else(|| panic!("expected a leader transfer, got {answer:?}"))
}

#[track_caller]
pub fn expect_nothing(answer: &RegionHeartbeatResponse, why: &str) {
    assert!(
        answer.change_peer.is_none() && answer.transfer_leader.is_none(),
        "{why}, yet placement answered {answer:?}"
    );
}
