//! The replica checker: looks at one region as its leader just reported it and decides the one
//! step (if any) that brings it closer to `max_replicas` voters on healthy stores.
//!
//! It is a pure function of what placement knows — no clock, no I/O, no state of its own — so
//! the caller decides what "healthy" means at which instant, and tests can pin every rule. The
//! rules, in order:
//!
//! 1. A region in a joint configuration is left alone: its leader leaves it by itself.
//! 2. A learner is dealt with first: wait while it catches up (pending), promote it when its
//!    store is up and voters are missing, remove it otherwise.
//! 3. Too few voters on healthy stores: add a learner on the best store that has none of the
//!    region's peers (fewest peers overall; ties by consistent hashing of the region id).
//! 4. Too many voters: remove one — on a down or offline store if any, else on the store with
//!    most peers; if that one leads, move leadership away first.
//!
//! An offline store (being drained by remove-store) counts as unhealthy, exactly like a down
//! one, so its replicas are replaced the same way; it is never chosen for a new one.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use hashring::HashRing;
use ringkv_proto::metapb::{Peer, PeerRole, Region};

use crate::operator::{is_joint, Step};

/// Points per store on the tie-break ring. `hashring` has no virtual nodes of its own; a few
/// per store even out the share of regions each tied store wins.
const VNODES_PER_STORE: u16 = 16;

/// A store as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// Heartbeated since placement started, within `max_store_down_time`.
    Up,
    /// No heartbeat since placement (re)started, which was less than `max_store_down_time`
    /// ago: probably fine, placement just has not heard yet. Healthy, but not chosen for new
    /// replicas.
    Unknown,
    /// No heartbeat for longer than `max_store_down_time`: its replicas get replaced.
    Down,
    /// Being drained (remove-store), whether it heartbeats or not: its replicas get replaced.
    Offline,
    Tombstone,
}

impl StoreHealth {
    pub fn is_healthy(self) -> bool {
        matches!(self, StoreHealth::Up | StoreHealth::Unknown)
    }
}

/// What the checker knows about the cluster.
pub struct ClusterView<'a> {
    pub max_replicas: usize,
    /// Every registered store.
    pub stores: &'a BTreeMap<u64, StoreHealth>,
    /// Peers per store over all regions placement knows (absent = 0).
    pub peer_counts: &'a BTreeMap<u64, u64>,
}

impl ClusterView<'_> {
    pub fn health(&self, store_id: u64) -> StoreHealth {
        self.stores
            .get(&store_id)
            .copied()
            .unwrap_or(StoreHealth::Tombstone)
    }

    pub fn peer_count(&self, store_id: u64) -> u64 {
        self.peer_counts.get(&store_id).copied().unwrap_or(0)
    }
}

/// The step the checker wants, before it becomes an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new learner on `store_id`; the caller allocates its peer id.
    AddLearner { store_id: u64, reason: String },
    /// A step about an existing peer (promote, remove, or lead).
    Step { step: Step, reason: String },
}

/// The next step for `region`, reported by `leader` with `pending` peers still catching up.
pub fn check_replicas(
    cluster: &ClusterView,
    region: &Region,
    leader: &Peer,
    pending: &[Peer],
) -> Option<Decision> {
    if is_joint(region) {
        return None;
    }
    let voters = voters(region);
    let healthy_voters = voters
        .iter()
        .filter(|p| cluster.health(p.store_id).is_healthy())
        .count();
    let learner = region
        .peers
        .iter()
        .find(|p| p.role == PeerRole::Learner as i32);
    if let Some(learner) = learner {
        return check_learner(cluster, learner, healthy_voters, pending);
    }
    if healthy_voters < cluster.max_replicas {
        if let Some(store_id) = store_for_new_peer(cluster, region) {
            return Some(Decision::AddLearner {
                store_id,
                reason: format!(
                    "{healthy_voters} voters on healthy stores, {} wanted",
                    cluster.max_replicas
                ),
            });
        }
    }
    if voters.len() > cluster.max_replicas {
        return remove_extra_voter(cluster, &voters, leader);
    }
    None
}

/// The region's voters (outside a joint configuration, every peer but the learners).
pub fn voters(region: &Region) -> Vec<&Peer> {
    region
        .peers
        .iter()
        .filter(|p| p.role == PeerRole::Voter as i32)
        .collect()
}

fn check_learner(
    cluster: &ClusterView,
    learner: &Peer,
    healthy_voters: usize,
    pending: &[Peer],
) -> Option<Decision> {
    if pending.iter().any(|p| p.id == learner.id) {
        return None;
    }
    let step = |step: fn(Peer) -> Step, reason: String| {
        Some(Decision::Step {
            step: step(*learner),
            reason,
        })
    };
    let health = cluster.health(learner.store_id);
    if healthy_voters < cluster.max_replicas {
        match health {
            StoreHealth::Up => {
                return step(
                    Step::PromoteLearner,
                    format!(
                        "caught up; {healthy_voters} voters on healthy stores, {} wanted",
                        cluster.max_replicas
                    ),
                )
            }
            // Placement restarted and has not heard from the store yet: removing the
            // learner now would undo work because of placement's restart alone.
            StoreHealth::Unknown => return None,
            StoreHealth::Down | StoreHealth::Offline | StoreHealth::Tombstone => {}
        }
    }
    let reason = if health.is_healthy() {
        format!("not needed: {healthy_voters} voters on healthy stores already")
    } else {
        format!("its store is {health:?}")
    };
    step(Step::RemovePeer, reason)
}

/// The up store with none of `region`'s peers and the fewest peers overall; ties go to the
/// store the region id hashes to on a ring of the tied stores, so the choice is stable and
/// spreads regions across equally loaded stores.
pub fn store_for_new_peer(cluster: &ClusterView, region: &Region) -> Option<u64> {
    let candidates: Vec<u64> = cluster
        .stores
        .iter()
        .filter(|&(&id, &health)| {
            health == StoreHealth::Up && !region.peers.iter().any(|p| p.store_id == id)
        })
        .map(|(&id, _)| id)
        .collect();
    let fewest = candidates.iter().map(|&id| cluster.peer_count(id)).min()?;
    let tied: Vec<u64> = candidates
        .into_iter()
        .filter(|&id| cluster.peer_count(id) == fewest)
        .collect();
    consistent_choice(region.id, &tied)
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct VirtualNode {
    store_id: u64,
    vnode: u16,
}

/// The store `region_id` falls to on a hash ring of `stores` (None when empty).
pub fn consistent_choice(region_id: u64, stores: &[u64]) -> Option<u64> {
    if stores.len() <= 1 {
        return stores.first().copied();
    }
    let mut ring = HashRing::new();
    for &store_id in stores {
        for vnode in 0..VNODES_PER_STORE {
            ring.add(VirtualNode { store_id, vnode });
        }
    }
    ring.get(&region_id).map(|node| node.store_id)
}

fn remove_extra_voter(cluster: &ClusterView, voters: &[&Peer], leader: &Peer) -> Option<Decision> {
    // Down stores first, then the most loaded store; among equals spare the leader (no
    // transfer needed), then the lowest peer id, so the choice is deterministic.
    let victim = voters.iter().copied().max_by_key(|p| {
        (
            !cluster.health(p.store_id).is_healthy(),
            cluster.peer_count(p.store_id),
            p.id != leader.id,
            Reverse(p.id),
        )
    })?;
    let health = cluster.health(victim.store_id);
    let reason = format!(
        "{} voters, {} wanted; its store is {health:?} with {} peers",
        voters.len(),
        cluster.max_replicas,
        cluster.peer_count(victim.store_id)
    );
    remove_voter(cluster, voters, victim, leader, None, reason)
}

/// Removes `victim` — or, when it leads, hands leadership to another voter first (see
/// [`leader_successor`]) and leaves the removal to a later heartbeat.
pub fn remove_voter(
    cluster: &ClusterView,
    voters: &[&Peer],
    victim: &Peer,
    leader: &Peer,
    prefer_store: Option<u64>,
    reason: String,
) -> Option<Decision> {
    if victim.id != leader.id {
        return Some(Decision::Step {
            step: Step::RemovePeer(*victim),
            reason,
        });
    }
    // The leader cannot remove itself here.
    let target = leader_successor(cluster, voters, victim, prefer_store)?;
    Some(Decision::Step {
        step: Step::TransferLeader(*target),
        reason: format!("leader peer {} is to be removed: {reason}", victim.id),
    })
}

/// The voter to take over from `leaving`: on a healthy store, on `prefer_store` if that is
/// one, else up stores first, then the least loaded, then the lowest peer id.
fn leader_successor<'a>(
    cluster: &ClusterView,
    voters: &[&'a Peer],
    leaving: &Peer,
    prefer_store: Option<u64>,
) -> Option<&'a Peer> {
    voters
        .iter()
        .copied()
        .filter(|p| p.id != leaving.id && cluster.health(p.store_id).is_healthy())
        .min_by_key(|p| {
            (
                Some(p.store_id) != prefer_store,
                cluster.health(p.store_id) != StoreHealth::Up,
                cluster.peer_count(p.store_id),
                p.id,
            )
        })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ringkv_proto::placementpb::ChangePeerType;

    use super::*;
    use crate::state::PlacementConfig;
    use crate::test_cluster::{
        expect_change, expect_nothing, expect_transfer, learner, secs, test_config, voter,
        TestCluster, DOWN_TIME,
    };

    /// A cluster of `store_count` stores, all heartbeating at `t0 + 1s`.
    fn up_cluster(store_count: usize) -> (TestCluster, Instant) {
        let mut cluster = TestCluster::new(store_count);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        (cluster, at)
    }

    /// Fresh peer ids, one per store in `stores`, as voters.
    fn voters_on(cluster: &mut TestCluster, stores: &[u64]) -> Vec<Peer> {
        stores.iter().map(|&s| voter(cluster.alloc(), s)).collect()
    }

    #[test]
    fn single_store_cluster_gets_no_operator() {
        let (mut cluster, at) = up_cluster(1);
        let region = cluster.region.clone();
        let answer = cluster.report(&region, region.peers[0], &[], at);
        expect_nothing(&answer, "a one-store cluster has nowhere to put a replica");
        assert!(cluster.state.operators(at).is_empty());
    }

    #[test]
    fn under_replicated_region_gets_a_learner_promoted_once_it_caught_up() {
        let (mut cluster, at) = up_cluster(3);
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let answer = cluster.report(&region, leader, &[], at);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        assert_ne!(
            new.store_id, leader.store_id,
            "the new learner needs a store without a peer"
        );
        assert!(cluster.stores.contains(&new.store_id), "{new:?}");
        assert_eq!(new.role, PeerRole::Learner as i32);
        assert_eq!(
            (answer.region_id, answer.region_epoch),
            (region.id, region.epoch)
        );

        let with_learner = TestCluster::reshape(&region, 2, vec![leader, new]);
        let answer = cluster.report(&with_learner, leader, &[], at + secs(1));
        let promoted = expect_change(&answer, ChangePeerType::PromoteLearner);
        assert_eq!(
            promoted.id, new.id,
            "the learner that caught up is promoted"
        );
        assert_eq!(promoted.role, PeerRole::Voter as i32);
        assert_eq!(answer.region_epoch, with_learner.epoch);

        // Two voters of three: the next learner goes to the last store without a peer.
        let two_voters =
            TestCluster::reshape(&region, 3, vec![leader, voter(new.id, new.store_id)]);
        let answer = cluster.report(&two_voters, leader, &[], at + secs(2));
        let third = expect_change(&answer, ChangePeerType::AddLearner);
        let last_store = cluster.stores[1..]
            .iter()
            .find(|&&s| s != new.store_id)
            .copied();
        assert_eq!(Some(third.store_id), last_store);
        assert!(third.id > new.id, "peer ids come from the allocator");
    }

    #[test]
    fn pending_learner_is_not_promoted_until_it_caught_up() {
        let (mut cluster, at) = up_cluster(3);
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let catching_up = learner(cluster.alloc(), cluster.stores[1]);
        let with_learner = TestCluster::reshape(&region, 2, vec![leader, catching_up]);
        let answer = cluster.report(&with_learner, leader, &[catching_up], at);
        expect_nothing(
            &answer,
            "a learner receiving a snapshot must not be promoted",
        );
        let answer = cluster.report(&with_learner, leader, &[], at + secs(1));
        let promoted = expect_change(&answer, ChangePeerType::PromoteLearner);
        assert_eq!(promoted.id, catching_up.id);
    }

    #[test]
    fn extra_voter_on_a_down_store_is_removed() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let later = at + DOWN_TIME + secs(1);
        cluster.heartbeat_stores(&stores[..3], later);
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let mut peers = vec![leader];
        peers.extend(voters_on(&mut cluster, &stores[1..]));
        let four = TestCluster::reshape(&region, 2, peers.clone());
        let answer = cluster.report(&four, leader, &[], later);
        let removed = expect_change(&answer, ChangePeerType::RemovePeer);
        assert_eq!(removed, peers[3], "the voter on the down store goes");
    }

    #[test]
    fn leader_on_a_down_store_hands_over_leadership_before_its_removal() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let later = at + DOWN_TIME + secs(1);
        cluster.heartbeat_stores(&stores[..3], later);
        let region = cluster.region.clone();
        let mut peers = vec![region.peers[0]];
        peers.extend(voters_on(&mut cluster, &stores[1..]));
        let four = TestCluster::reshape(&region, 2, peers.clone());
        // The down store still leads the region (its store heartbeats are what fail).
        let down_leader = peers[3];
        let answer = cluster.report(&four, down_leader, &[], later);
        let target = expect_transfer(&answer);
        assert!(
            peers[..3].contains(&target),
            "leadership goes to a voter on a healthy store: {target:?}"
        );
        assert_eq!(answer.region_epoch, four.epoch);

        // Once another voter leads, the old leader is removed.
        let answer = cluster.report(&four, target, &[], later + secs(1));
        let removed = expect_change(&answer, ChangePeerType::RemovePeer);
        assert_eq!(removed, down_leader);
    }

    #[test]
    fn extra_voter_comes_off_the_most_loaded_store_sparing_the_leader_on_ties() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let mut peers = vec![leader];
        peers.extend(voters_on(&mut cluster, &stores[1..]));
        // The other region puts a second peer on the leader's store and on the third store.
        let other = cluster.other.clone();
        let mut other_peers = vec![other.peers[0]];
        other_peers.extend(voters_on(&mut cluster, &stores[2..3]));
        let other = TestCluster::reshape(&other, 2, other_peers);
        cluster.report(&other, other.peers[0], &[], at);

        let four = TestCluster::reshape(&region, 2, peers.clone());
        let answer = cluster.report(&four, leader, &[], at);
        let removed = expect_change(&answer, ChangePeerType::RemovePeer);
        assert_eq!(
            removed, peers[2],
            "of the two stores with 2 peers, the non-leader's"
        );
    }

    #[test]
    fn voter_on_a_down_store_is_replaced_by_a_learner_elsewhere() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let mut peers = vec![leader];
        peers.extend(voters_on(&mut cluster, &stores[1..3]));
        let three = TestCluster::reshape(&region, 2, peers.clone());
        let answer = cluster.report(&three, leader, &[], at);
        expect_nothing(&answer, "three healthy voters");

        // The third store goes quiet; it is not down before max_store_down_time.
        let almost = at + DOWN_TIME;
        cluster.heartbeat_stores(&[stores[0], stores[1], stores[3]], almost);
        let answer = cluster.report(&three, leader, &[], almost);
        expect_nothing(
            &answer,
            "a store silent for max_store_down_time is not down yet",
        );

        let later = at + DOWN_TIME + secs(1);
        cluster.heartbeat_stores(&[stores[0], stores[1], stores[3]], later);
        let answer = cluster.report(&three, leader, &[], later);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(new.store_id, stores[3], "the only up store without a peer");

        // Learner added, caught up → promoted; then the voter on the down store goes.
        let mut grown = peers.clone();
        grown.push(new);
        let grown = TestCluster::reshape(&region, 3, grown);
        let answer = cluster.report(&grown, leader, &[], later);
        assert_eq!(
            expect_change(&answer, ChangePeerType::PromoteLearner).id,
            new.id
        );
        let mut four = peers.clone();
        four.push(voter(new.id, new.store_id));
        let four = TestCluster::reshape(&region, 4, four);
        let answer = cluster.report(&four, leader, &[], later);
        assert_eq!(expect_change(&answer, ChangePeerType::RemovePeer), peers[2]);
    }

    #[test]
    fn stores_silent_since_a_placement_restart_are_not_down_until_max_store_down_time_after_it() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let mut peers = vec![leader];
        peers.extend(voters_on(&mut cluster, &stores[1..3]));
        let three = TestCluster::reshape(&region, 2, peers);
        expect_nothing(
            &cluster.report(&three, leader, &[], at),
            "three healthy voters",
        );

        // Placement was down for a long time; after it restarts only two stores report.
        let restarted = at + DOWN_TIME * 10;
        cluster.restart(restarted);
        let reporting = [stores[0], stores[3]];
        let soon = restarted + secs(1);
        cluster.heartbeat_stores(&reporting, soon);
        let answer = cluster.report(&three, leader, &[], soon);
        expect_nothing(&answer, "a placement restart alone must not start healing");
        let edge = restarted + DOWN_TIME;
        cluster.heartbeat_stores(&reporting, edge);
        let answer = cluster.report(&three, leader, &[], edge);
        expect_nothing(
            &answer,
            "not down before max_store_down_time after the restart",
        );

        let after = restarted + DOWN_TIME + secs(1);
        cluster.heartbeat_stores(&reporting, after);
        let answer = cluster.report(&three, leader, &[], after);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(new.store_id, stores[3]);
    }

    #[test]
    fn schedule_limit_caps_operators_in_flight() {
        let config = PlacementConfig {
            replica_schedule_limit: 1,
            ..test_config()
        };
        let mut cluster = TestCluster::with_config(3, config);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let (region, other) = (cluster.region.clone(), cluster.other.clone());
        let new = expect_change(
            &cluster.report(&region, region.peers[0], &[], at),
            ChangePeerType::AddLearner,
        );
        let answer = cluster.report(&other, other.peers[0], &[], at);
        expect_nothing(&answer, "the one operator slot is taken");

        // The learner shows up but is still catching up: the operator keeps its slot (the
        // limit bounds the snapshots streaming at once) until the learner caught up.
        let grown = TestCluster::reshape(&region, 2, vec![region.peers[0], new]);
        let answer = cluster.report(&grown, region.peers[0], &[new], at + secs(1));
        expect_nothing(&answer, "the learner is still catching up");
        let answer = cluster.report(&other, other.peers[0], &[], at + secs(1));
        expect_nothing(&answer, "the slot is taken while the learner catches up");
        let answer = cluster.report(&grown, region.peers[0], &[], at + secs(2));
        expect_change(&answer, ChangePeerType::PromoteLearner);
        let answer = cluster.report(&other, other.peers[0], &[], at + secs(2));
        expect_nothing(&answer, "the promotion took the slot");
    }

    #[test]
    fn region_in_a_joint_configuration_is_left_alone() {
        let (mut cluster, at) = up_cluster(4);
        let stores = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = region.peers[0];
        for (role, conf_ver) in [(PeerRole::IncomingVoter, 2), (PeerRole::DemotingVoter, 3)] {
            let joining = Peer {
                role: role as i32,
                ..voter(cluster.alloc(), stores[1])
            };
            let joint = TestCluster::reshape(&region, conf_ver, vec![leader, joining]);
            let answer = cluster.report(&joint, leader, &[], at);
            expect_nothing(&answer, "the leader leaves the joint state by itself");
        }
        assert!(cluster.state.operators(at).is_empty());
    }

    fn view<'a>(
        stores: &'a BTreeMap<u64, StoreHealth>,
        peer_counts: &'a BTreeMap<u64, u64>,
    ) -> ClusterView<'a> {
        ClusterView {
            max_replicas: 3,
            stores,
            peer_counts,
        }
    }

    #[test]
    fn new_learner_goes_to_the_up_store_with_fewest_peers() {
        let stores = BTreeMap::from([
            (1, StoreHealth::Up),
            (2, StoreHealth::Up),
            (3, StoreHealth::Up),
            (4, StoreHealth::Unknown),
            (5, StoreHealth::Down),
            (6, StoreHealth::Offline),
        ]);
        let counts = BTreeMap::from([(1, 9), (2, 5), (3, 4)]);
        let region = Region {
            id: 7,
            peers: vec![voter(70, 1)],
            ..Region::default()
        };
        let decision = check_replicas(&view(&stores, &counts), &region, &region.peers[0], &[]);
        assert!(
            matches!(decision, Some(Decision::AddLearner { store_id: 3, .. })),
            "stores 4, 5 and 6 (no peers) are not up; 3 has fewer peers than 2: {decision:?}"
        );
    }

    #[test]
    fn ties_are_broken_by_consistent_hashing_of_the_region_id() {
        let three = [1, 2, 3];
        let mut won = BTreeMap::<u64, usize>::new();
        for region_id in 0..3000 {
            let store = consistent_choice(region_id, &three).expect("a store");
            *won.entry(store).or_default() += 1;
            let mut reordered = three;
            reordered.reverse();
            assert_eq!(consistent_choice(region_id, &reordered), Some(store));
            // A fourth store takes regions only for itself: the rest stay where they were.
            let four = consistent_choice(region_id, &[1, 2, 3, 4]).expect("a store");
            assert!(
                four == store || four == 4,
                "region {region_id}: {store} → {four}"
            );
        }
        for (store, count) in won {
            assert!(
                (600..=1400).contains(&count),
                "store {store} won {count} of 3000 ties"
            );
        }
    }
}
