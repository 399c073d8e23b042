//! A real [`ClusterState`] on a temp dir, driven with injected instants: the harness the
//! checker and operator tests share. It hides the plumbing (ids, bootstrap, registration) so
//! the tests read as the scenarios they pin down.

use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, PeerRole, Region, RegionEpoch, Store};
use ringkv_proto::placementpb::{ChangePeerType, RegionHeartbeatResponse, StoreStats};

use crate::state::{ClusterState, PlacementConfig, RegionReport};

pub const HALF: u64 = 1 << 63;
pub const DOWN_TIME: Duration = Duration::from_secs(60);
pub const OPERATOR_TIMEOUT: Duration = Duration::from_secs(300);

/// Balancing off: most tests pin one rule at a time, and the balancers would act on the
/// lopsided clusters they build. [`balance_config`] turns it on.
pub fn test_config() -> PlacementConfig {
    PlacementConfig {
        max_replicas: 3,
        max_store_down_time: DOWN_TIME,
        operator_timeout: OPERATOR_TIMEOUT,
        replica_schedule_limit: 16,
        balance: false,
        leader_schedule_limit: 4,
        region_schedule_limit: 4,
        hot_region_write_bytes_per_sec: 1 << 20,
        hot_region_read_keys_per_sec: 1000,
        hot_region_min_reports: 3,
        hot_region_schedule_limit: 2,
        hot_region_cooldown: Duration::from_secs(60),
    }
}

pub fn balance_config() -> PlacementConfig {
    PlacementConfig {
        balance: true,
        ..test_config()
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
    /// Every bootstrapped region in ring order (`region` and `other` are the first two).
    pub regions: Vec<Region>,
}

impl TestCluster {
    pub fn new(store_count: usize) -> TestCluster {
        TestCluster::with_config(store_count, test_config())
    }

    /// `store_count` registered stores (none has heartbeated yet) and two regions.
    pub fn with_config(store_count: usize, config: PlacementConfig) -> TestCluster {
        TestCluster::with_regions(store_count, 2, config)
    }

    /// `store_count` registered stores (none has heartbeated yet) and `region_count` (>= 2)
    /// regions of equal width, each with one voter on the first store.
    pub fn with_regions(
        store_count: usize,
        region_count: usize,
        config: PlacementConfig,
    ) -> TestCluster {
        assert!(region_count >= 2, "the harness has `region` and `other`");
        let dir = tempfile::tempdir().expect("temp dir");
        let t0 = Instant::now();
        let mut state = ClusterState::open(dir.path(), config.clone(), t0).expect("open state");
        let (first, _) = state
            .alloc_ids((store_count + 2 * region_count) as u32)
            .expect("ids");
        let stores: Vec<u64> = (first..first + store_count as u64).collect();
        let width = u64::MAX / region_count as u64 + 1;
        let regions: Vec<Region> = (0..region_count as u64)
            .map(|n| {
                let id = first + store_count as u64 + 2 * n;
                let end = if n + 1 == region_count as u64 {
                    0
                } else {
                    (n + 1) * width
                };
                shaped(id, n * width, end, 1, vec![voter(id + 1, stores[0])])
            })
            .collect();
        state
            .bootstrap(store(stores[0]), regions.clone())
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
            region: regions[0].clone(),
            other: regions[1].clone(),
            regions,
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

    /// `region` with a voter on each of `stores` (fresh peer ids where it has no peer; peers
    /// elsewhere dropped), one conf change later, led by its peer on `leader_store`.
    pub fn spread(&mut self, region: &Region, stores: &[u64], leader_store: u64) -> (Region, Peer) {
        let peers: Vec<Peer> = stores
            .iter()
            .map(
                |&store_id| match region.peers.iter().find(|p| p.store_id == store_id) {
                    Some(peer) => *peer,
                    None => voter(self.alloc(), store_id),
                },
            )
            .collect();
        let conf_ver = region.epoch.unwrap_or_default().conf_ver + 1;
        let spread = TestCluster::reshape(region, conf_ver, peers);
        let leader = on_store(&spread, leader_store);
        (spread, leader)
    }

    /// Plays the leaders of `regions` (each with the peer that leads it): reports each in
    /// turn and carries out the answer, round after round, until a whole round gets nothing
    /// to do. Learners catch up at once. Returns the steps taken; panics after `max_rounds`.
    pub fn settle(
        &mut self,
        regions: &mut [(Region, Peer)],
        at: Instant,
        max_rounds: usize,
    ) -> usize {
        let mut steps = 0;
        for _ in 0..max_rounds {
            let mut idle = true;
            for (region, leader) in regions.iter_mut() {
                let answer = self.report(region, *leader, &[], at);
                if answer != RegionHeartbeatResponse::default() {
                    idle = false;
                    steps += 1;
                    (*region, *leader) = carry_out(region, *leader, &answer);
                }
            }
            if idle {
                return steps;
            }
        }
        panic!("still scheduling after {max_rounds} rounds");
    }

    /// A leader's report (term 1) with `pending` peers; panics if refused.
    pub fn report(
        &mut self,
        region: &Region,
        leader: Peer,
        pending: &[Peer],
        at: Instant,
    ) -> RegionHeartbeatResponse {
        let report = RegionReport {
            pending_peers: pending.to_vec(),
            ..report_of(region, leader)
        };
        self.send(report, at)
    }

    /// Any report; panics if refused.
    pub fn send(&mut self, report: RegionReport, at: Instant) -> RegionHeartbeatResponse {
        let id = report.region.id;
        self.state
            .region_heartbeat(report, at)
            .unwrap_or_else(|e| panic!("report of region {id} refused: {e}"))
    }
}

/// A report of `region` by `leader` (term 1), with nothing else to say.
pub fn report_of(region: &Region, leader: Peer) -> RegionReport {
    RegionReport {
        region: region.clone(),
        leader: Some(leader),
        term: 1,
        ..RegionReport::default()
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
    assert!(
        answer.transfer_leader.is_none() && answer.split.is_none(),
        "two steps in {answer:?}"
    );
    change
        .peer
        .unwrap_or_else(|| panic!("no peer in {answer:?}"))
}

/// The leader transfer in `answer`.
#[track_caller]
pub fn expect_transfer(answer: &RegionHeartbeatResponse) -> Peer {
    assert!(
        answer.change_peer.is_none() && answer.split.is_none(),
        "{answer:?}"
    );
    answer
        .transfer_leader
        .as_ref()
        .and_then(|t| t.peer)
        .unwrap_or_else(|| panic!("expected a leader transfer, got {answer:?}"))
}

#[track_caller]
pub fn expect_nothing(answer: &RegionHeartbeatResponse, why: &str) {
    assert!(
        answer.change_peer.is_none() && answer.transfer_leader.is_none() && answer.split.is_none(),
        "{why}, yet placement answered {answer:?}"
    );
}

/// The peer of `region` on `store_id`.
#[track_caller]
pub fn on_store(region: &Region, store_id: u64) -> Peer {
    *region
        .peers
        .iter()
        .find(|p| p.store_id == store_id)
        .unwrap_or_else(|| panic!("region {} has no peer on store {store_id}", region.id))
}

/// What a leader does with placement's answer: the membership change (one conf_ver later) or
/// the leader transfer. Returns the region and its leader afterwards.
#[track_caller]
pub fn carry_out(
    region: &Region,
    leader: Peer,
    answer: &RegionHeartbeatResponse,
) -> (Region, Peer) {
    assert_eq!(
        answer.region_epoch, region.epoch,
        "a step for another epoch"
    );
    if let Some(target) = answer.transfer_leader.as_ref().and_then(|t| t.peer) {
        return (region.clone(), on_store(region, target.store_id));
    }
    let change = answer
        .change_peer
        .as_ref()
        .unwrap_or_else(|| panic!("nothing to carry out in {answer:?}"));
    let peer = change.peer.expect("a peer");
    let mut peers = region.peers.clone();
    match ChangePeerType::try_from(change.change_type).expect("a change type") {
        ChangePeerType::AddLearner => peers.push(peer),
        ChangePeerType::PromoteLearner => {
            let promoted = peers
                .iter_mut()
                .find(|p| p.id == peer.id)
                .expect("the learner");
            promoted.role = PeerRole::Voter as i32;
        }
        ChangePeerType::RemovePeer => {
            assert_ne!(
                peer.id, leader.id,
                "placement asked the leader to remove itself"
            );
            peers.retain(|p| p.id != peer.id);
        }
    }
    let conf_ver = region.epoch.unwrap_or_default().conf_ver + 1;
    (TestCluster::reshape(region, conf_ver, peers), leader)
}
