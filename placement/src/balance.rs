//! The balance schedulers: once a region needs nothing from the replica rules, even out the
//! leaders and the replicas per store. Pure like the checker; the caller passes counts that
//! already include what is in flight (transfers under way, moves not yet finished), so a
//! burst of heartbeats does not send the same surplus to the same store several times.
//!
//! * balance-leader: if the leader's store leads at least 2 regions more than the least
//!   loaded up store among the region's other voters, hand leadership to that voter.
//! * balance-region: if the store with the most peers among the region's stores has at least
//!   2 more than the up store with the fewest peers among those without a peer of the region,
//!   move the region's replica from the first to the second (a move goal).
//!
//! Tolerance: each move narrows a gap of 2 or more by 2, and none starts for a gap of 1, so
//! scheduling stops once the counts are within 1 of each other: max - min <= 1 over the up
//! stores for peers; for leaders, within each region's voter stores, which is max - min <= 1
//! over the cluster when every up store holds a voter of every region (and about that when
//! replicas are spread evenly). Ties go the same way every time, so it does not oscillate.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use ringkv_proto::metapb::{Peer, PeerRole, Region};

use crate::checker::{store_for_new_peer, voters, ClusterView, Decision, StoreHealth};
use crate::operator::{is_joint, Step};

/// Counts differing by this much or more are worth a move.
const MIN_GAP: u64 = 2;

/// A move the region balancer wants (made a goal by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedMove {
    pub from_store: u64,
    pub to_store: u64,
    pub reason: String,
}

/// balance-leader for `region` reported by `leader`; `leader_counts` are regions led per
/// store, as placement sees them with the transfers in flight done.
pub fn balance_leader(
    cluster: &ClusterView,
    leader_counts: &BTreeMap<u64, u64>,
    region: &Region,
    leader: &Peer,
) -> Option<Decision> {
    if is_joint(region) {
        return None;
    }
    let led = |store_id: u64| leader_counts.get(&store_id).copied().unwrap_or(0);
    let target = voters(region)
        .into_iter()
        .filter(|p| p.id != leader.id && cluster.health(p.store_id) == StoreHealth::Up)
        .min_by_key(|p| (led(p.store_id), cluster.peer_count(p.store_id), p.id))?;
    let (source_count, target_count) = (led(leader.store_id), led(target.store_id));
    if source_count < target_count + MIN_GAP {
        return None;
    }
    Some(Decision::Step {
        step: Step::TransferLeader(*target),
        reason: format!(
            "store {} leads {source_count} regions, store {} leads {target_count}",
            leader.store_id, target.store_id
        ),
    })
}

/// balance-region for `region`; `cluster.peer_counts` are peers per store with the moves in
/// flight done. Only a settled region (no learner, not joint) is moved.
pub fn balance_region(cluster: &ClusterView, region: &Region) -> Option<ProposedMove> {
    let has_learner = region
        .peers
        .iter()
        .any(|p| p.role == PeerRole::Learner as i32);
    if is_joint(region) || has_learner {
        return None;
    }
    let from_store = region
        .peers
        .iter()
        .map(|p| p.store_id)
        .max_by_key(|&store_id| (cluster.peer_count(store_id), Reverse(store_id)))?;
    let to_store = store_for_new_peer(cluster, region)?;
    let (from_count, to_count) = (cluster.peer_count(from_store), cluster.peer_count(to_store));
    if from_count < to_count + MIN_GAP {
        return None;
    }
    Some(ProposedMove {
        from_store,
        to_store,
        reason: format!(
            "store {from_store} has {from_count} peers, store {to_store} has {to_count}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use ringkv_proto::metapb::{Peer, Region};
    use ringkv_proto::placementpb::ChangePeerType;

    use crate::state::PlacementConfig;
    use crate::test_cluster::{
        balance_config, carry_out, expect_change, expect_nothing, expect_transfer, secs,
        TestCluster,
    };

    /// `store_count` stores up at `t0 + 1s` and `region_count` regions, each with voters on
    /// the first three stores, led from the first (placement has not seen them yet).
    fn loaded_cluster(
        store_count: usize,
        region_count: usize,
        config: PlacementConfig,
    ) -> (TestCluster, Instant, Vec<(Region, Peer)>) {
        let mut cluster = TestCluster::with_regions(store_count, region_count, config);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let regions = cluster
            .regions
            .clone()
            .iter()
            .map(|region| cluster.spread(region, &stores[..3], stores[0]))
            .collect();
        (cluster, at, regions)
    }

    fn counts<'a>(peers: impl Iterator<Item = &'a Peer>) -> BTreeMap<u64, u64> {
        let mut counts = BTreeMap::new();
        for peer in peers {
            *counts.entry(peer.store_id).or_default() += 1;
        }
        counts
    }

    #[track_caller]
    fn assert_within_one(what: &str, counts: &BTreeMap<u64, u64>, stores: &[u64]) {
        let all: Vec<u64> = stores
            .iter()
            .map(|s| counts.get(s).copied().unwrap_or(0))
            .collect();
        let (max, min) = (all.iter().max(), all.iter().min());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{what} per store not within 1: {counts:?}"
        );
    }

    #[test]
    fn balance_leader_moves_leadership_off_a_store_with_two_more_leaders() {
        let (mut cluster, at, mut regions) = loaded_cluster(3, 4, balance_config());
        let s = cluster.stores.clone();
        let (first, leader) = regions[0].clone();
        expect_nothing(
            &cluster.report(&first, leader, &[], at),
            "one leader against none is within 1",
        );
        let (second, leader) = regions[1].clone();
        let answer = cluster.report(&second, leader, &[], at);
        let target = expect_transfer(&answer);
        assert_ne!(target.store_id, s[0], "leadership leaves the loaded store");
        assert_eq!(
            cluster.state.operators(at)[0].kind,
            "transfer-leader",
            "an ordinary operator"
        );
        regions[1] = carry_out(&second, leader, &answer);

        cluster.settle(&mut regions, at, 10);
        assert!(cluster.state.operators(at).is_empty());
        let leaders = counts(regions.iter().map(|(_, leader)| leader));
        assert_within_one("leaders", &leaders, &s);
        assert!(
            regions.iter().all(|(region, _)| region.peers.len() == 3),
            "no replica moved: {regions:?}"
        );
    }

    #[test]
    fn balance_leader_keeps_to_leader_schedule_limit() {
        let config = PlacementConfig {
            leader_schedule_limit: 1,
            ..balance_config()
        };
        let (mut cluster, at, regions) = loaded_cluster(3, 6, config);
        let answers: Vec<_> = regions
            .iter()
            .map(|(region, leader)| cluster.report(region, *leader, &[], at))
            .collect();
        let transfers = answers
            .iter()
            .filter(|a| a.transfer_leader.is_some())
            .count();
        assert_eq!(transfers, 1, "one transfer in flight at most: {answers:?}");

        // Once it is done, the next region's report may start another.
        let (index, answer) = answers
            .iter()
            .enumerate()
            .find(|(_, a)| a.transfer_leader.is_some())
            .expect("a transfer");
        let (region, leader) = carry_out(&regions[index].0, regions[index].1, answer);
        cluster.report(&region, leader, &[], at);
        let next = regions
            .iter()
            .enumerate()
            .filter(|&(n, _)| n != index)
            .map(|(_, (region, leader))| cluster.report(region, *leader, &[], at))
            .find(|a| a.transfer_leader.is_some());
        assert!(next.is_some(), "a free slot is used again");
    }

    #[test]
    fn balance_region_moves_replicas_to_a_new_store_until_counts_are_within_one() {
        // Leader balancing off: it would answer first whenever leaders are uneven.
        let config = PlacementConfig {
            leader_schedule_limit: 0,
            ..balance_config()
        };
        let (mut cluster, at, mut regions) = loaded_cluster(4, 6, config);
        let s = cluster.stores.clone();
        // The first store has a peer of every region, the fourth none: the first region
        // reported moves its replica from the one to the other.
        let (region, leader) = regions[0].clone();
        let answer = cluster.report(&region, leader, &[], at);
        assert_eq!(
            expect_change(&answer, ChangePeerType::AddLearner).store_id,
            s[3]
        );
        let goals: Vec<String> = cluster
            .state
            .operators(at)
            .into_iter()
            .filter(|op| op.kind == "move-region")
            .map(|op| op.detail)
            .collect();
        assert_eq!(goals.len(), 1, "{goals:?}");
        assert!(
            goals[0].starts_with(&format!("from store {} to store {}", s[0], s[3])),
            "{goals:?}"
        );
        regions[0] = carry_out(&region, leader, &answer);

        let steps = cluster.settle(&mut regions, at, 30);
        assert!(steps > 0);
        assert!(
            cluster.state.operators(at).is_empty(),
            "{:?}",
            cluster.state.operators(at)
        );
        let peers = counts(regions.iter().flat_map(|(region, _)| &region.peers));
        assert_within_one("peers", &peers, &s);
        for (region, _) in &regions {
            let voters = region.peers.iter().filter(|p| p.role == 0).count();
            assert_eq!(voters, 3, "still three voters: {region:?}");
        }
        assert_eq!(
            cluster.settle(&mut regions, at, 2),
            0,
            "balanced: nothing more to do"
        );
    }

    #[test]
    fn balance_region_keeps_to_region_schedule_limit() {
        let config = PlacementConfig {
            region_schedule_limit: 1,
            leader_schedule_limit: 0,
            ..balance_config()
        };
        let (mut cluster, at, regions) = loaded_cluster(4, 6, config);
        for (region, leader) in &regions {
            cluster.report(region, *leader, &[], at);
        }
        let goals = cluster
            .state
            .operators(at)
            .into_iter()
            .filter(|op| op.kind == "move-region")
            .count();
        assert_eq!(goals, 1, "{:?}", cluster.state.operators(at));
    }

    #[test]
    fn leaders_and_replicas_both_even_out_with_both_balancers_on() {
        let (mut cluster, at, mut regions) = loaded_cluster(4, 8, balance_config());
        cluster.settle(&mut regions, at, 40);
        assert!(cluster.state.operators(at).is_empty());
        let s = cluster.stores.clone();
        let peers = counts(regions.iter().flat_map(|(region, _)| &region.peers));
        assert_within_one("peers", &peers, &s);
        let leaders = counts(regions.iter().map(|(_, leader)| leader));
        assert_within_one("leaders", &leaders, &s);
    }

    #[test]
    fn balancing_is_off_when_disabled() {
        let config = PlacementConfig {
            balance: false,
            ..balance_config()
        };
        let (mut cluster, at, regions) = loaded_cluster(4, 6, config);
        for (region, leader) in &regions {
            expect_nothing(&cluster.report(region, *leader, &[], at), "balance is off");
        }
    }
}
