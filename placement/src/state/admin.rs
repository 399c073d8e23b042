//! Admin requests (kvctl) and a leader's request for split ids: each is checked against what
//! placement knows, then becomes an operator, a move goal or a store state; the scheduler and
//! the regions' leaders do the rest, and `GetOperators` / `GetStore` show the progress.
//!
//! Admin operators have priority: they replace whatever operator is in flight for the region
//! (outcome "cancelled") and are not held back by `replica_schedule_limit`. A move replaces
//! the region's previous goal and the operator the checker had in flight, but lets an admin
//! operator (a split, a leader transfer) finish first.

use std::time::Instant;

use ringkv_proto::metapb::{PeerRole, Region};
use ringkv_proto::placementpb::SplitRegion;

use super::{contains, is_older, show_epoch, ClusterState};
use crate::checker::StoreHealth;
use crate::error::{PlacementError, Result};
use crate::goal::MoveGoal;
use crate::operator::{Operator, Origin, Step};

impl ClusterState {
    /// Ids for a split `region`'s leader decided on by itself: the new region's id and one
    /// peer id per peer of `region`, in the order of its peers. Refused for a region
    /// placement does not know or a report older than placement's.
    pub fn ask_split(&mut self, region: &Region) -> Result<(u64, Vec<u64>)> {
        self.require_bootstrapped()?;
        let known = self.known_region(region.id)?;
        let (epoch, known_epoch) = (
            region.epoch.unwrap_or_default(),
            known.epoch.unwrap_or_default(),
        );
        if is_older(&epoch, &known_epoch) {
            return Err(PlacementError::StaleRegion {
                region_id: region.id,
                reason: format!(
                    "epoch {} is older than the known {}",
                    show_epoch(&epoch),
                    show_epoch(&known_epoch)
                ),
            });
        }
        if region.peers.is_empty() {
            return Err(PlacementError::Invalid(format!(
                "region {} has no peers to split",
                region.id
            )));
        }
        self.split_ids(region)
    }

    /// Splits region `region_id` at `split_hash` (0: where its data halves, the leader
    /// decides), through an operator.
    pub fn split_region(&mut self, region_id: u64, split_hash: u64, now: Instant) -> Result<()> {
        self.require_bootstrapped()?;
        let region = self.known_region(region_id)?.clone();
        if split_hash != 0 && (split_hash <= region.start_hash || !contains(&region, split_hash)) {
            let end = match region.end_hash {
                0 => "the ring end".to_owned(),
                end => end.to_string(),
            };
            return Err(PlacementError::Invalid(format!(
                "split hash {split_hash} is not strictly inside region {region_id}'s range [{}, {end})",
                region.start_hash
            )));
        }
        let (new_region_id, new_peer_ids) = self.split_ids(&region)?;
        let split = SplitRegion {
            split_hash,
            new_region_id,
            new_peer_ids,
        };
        self.add_admin_operator(&region, Step::Split(split), "admin split".to_owned(), now);
        Ok(())
    }

    /// Moves region `region_id`'s leadership to its voter on store `to_store_id`.
    pub fn transfer_leader(
        &mut self,
        region_id: u64,
        to_store_id: u64,
        now: Instant,
    ) -> Result<()> {
        self.require_bootstrapped()?;
        let region = self.known_region(region_id)?.clone();
        let store = self.live_store(to_store_id)?;
        if store.offline {
            return Err(PlacementError::Invalid(format!(
                "store {to_store_id} is offline (being removed): it cannot take leadership"
            )));
        }
        let target = region
            .peers
            .iter()
            .find(|p| p.store_id == to_store_id && p.role == PeerRole::Voter as i32)
            .copied()
            .ok_or_else(|| {
                PlacementError::Invalid(format!(
                    "store {to_store_id} has no voter of region {region_id}"
                ))
            })?;
        let reason = format!("admin transfer-leader to store {to_store_id}");
        self.add_admin_operator(&region, Step::TransferLeader(target), reason, now);
        Ok(())
    }

    /// Moves region `region_id`'s replica from store `from_store_id` to store `to_store_id`
    /// (a goal the scheduler works toward, one step per heartbeat).
    pub fn move_region(
        &mut self,
        region_id: u64,
        from_store_id: u64,
        to_store_id: u64,
        now: Instant,
    ) -> Result<()> {
        self.require_bootstrapped()?;
        let region = self.known_region(region_id)?;
        for store_id in [from_store_id, to_store_id] {
            if !self.durable.stores.contains_key(&store_id) {
                return Err(PlacementError::UnknownStore(store_id));
            }
        }
        let has_peer = |store_id| region.peers.iter().any(|p| p.store_id == store_id);
        if from_store_id == to_store_id {
            return Err(PlacementError::Invalid(format!(
                "moving region {region_id} from store {from_store_id} to itself"
            )));
        }
        if !has_peer(from_store_id) {
            return Err(PlacementError::Invalid(format!(
                "store {from_store_id} has no peer of region {region_id}"
            )));
        }
        if has_peer(to_store_id) {
            return Err(PlacementError::Invalid(format!(
                "store {to_store_id} already has a peer of region {region_id}"
            )));
        }
        let to_store = &self.durable.stores[&to_store_id];
        let health = self.store_health(to_store_id, to_store, now);
        if health != StoreHealth::Up {
            return Err(PlacementError::Invalid(format!(
                "store {to_store_id} is {health:?}, not up: it cannot take a replica"
            )));
        }
        let admin_in_flight = self
            .operators
            .operator(region_id)
            .is_some_and(|op| op.origin == Origin::Admin);
        if !admin_in_flight {
            self.operators.cancel_operator(region_id, now);
        }
        let goal = MoveGoal::new(region_id, from_store_id, to_store_id, Origin::Admin, now);
        self.operators.set_goal(goal, now);
        Ok(())
    }

    /// Decommissions store `store_id`: marks it offline (durably) so the scheduler drains it;
    /// it becomes a tombstone once no region placement knows has a peer on it (at once if
    /// none has). Refused when fewer than `max_replicas` other up stores would be left to
    /// take its replicas. Asking again while it drains changes nothing.
    pub fn remove_store(&mut self, store_id: u64, now: Instant) -> Result<()> {
        self.require_bootstrapped()?;
        let store = self.live_store(store_id)?;
        if store.offline {
            return Ok(());
        }
        let remaining = self
            .store_healths(now)
            .into_iter()
            .filter(|&(id, health)| id != store_id && health == StoreHealth::Up)
            .count();
        let max_replicas = self.config.max_replicas as usize;
        if remaining < max_replicas {
            return Err(PlacementError::Refused(format!(
                "removing store {store_id} would leave {remaining} up stores, fewer than max-replicas {max_replicas}"
            )));
        }
        let mut next = self.durable.clone();
        if let Some(store) = next.stores.get_mut(&store_id) {
            store.offline = true;
        }
        self.commit(next)?;
        self.operators.cancel_toward_store(store_id, now);
        // Without peers it is a tombstone already (see `commit`).
        if let Some(&peers) = self.durable.peer_counts.get(&store_id) {
            tracing::info!(store = store_id, peers, "store offline: draining");
        }
        Ok(())
    }

    fn known_region(&self, region_id: u64) -> Result<&Region> {
        self.durable
            .regions
            .get(&region_id)
            .ok_or(PlacementError::UnknownRegion(region_id))
    }

    /// A new region id and one new peer id per peer of `region`, from the durable allocator.
    fn split_ids(&mut self, region: &Region) -> Result<(u64, Vec<u64>)> {
        let (first, count) = self.alloc_ids(1 + region.peers.len() as u32)?;
        Ok((first, (first + 1..first + u64::from(count)).collect()))
    }

    fn add_admin_operator(&mut self, region: &Region, step: Step, reason: String, now: Instant) {
        let operator = Operator {
            region_id: region.id,
            step,
            origin: Origin::Admin,
            epoch: region.epoch.unwrap_or_default(),
            created: now,
            reason,
        };
        self.operators.add(operator, now);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Instant;

    use ringkv_proto::metapb::{Peer, RegionEpoch};
    use ringkv_proto::placementpb::{ChangePeerType, StoreState, StoreStats};
    use tonic::Code;

    use super::*;
    use crate::state::PlacementConfig;
    use crate::test_cluster::{
        carry_out, expect_change, expect_nothing, expect_transfer, learner, on_store, secs,
        test_config, TestCluster, DOWN_TIME, HALF,
    };

    /// `store_count` stores heartbeating at `t0 + 1s`; `region` and `other` have voters on the
    /// first three stores, led from the first.
    fn three_voter_cluster(store_count: usize) -> (TestCluster, Instant, (Region, Peer)) {
        three_voter_cluster_with(store_count, test_config())
    }

    fn three_voter_cluster_with(
        store_count: usize,
        config: PlacementConfig,
    ) -> (TestCluster, Instant, (Region, Peer)) {
        let mut cluster = TestCluster::with_config(store_count, config);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let mut spread = vec![];
        for region in [cluster.region.clone(), cluster.other.clone()] {
            let (region, leader) = cluster.spread(&region, &stores[..3], stores[0]);
            expect_nothing(
                &cluster.report(&region, leader, &[], at),
                "three healthy voters",
            );
            spread.push((region, leader));
        }
        cluster.other = spread[1].0.clone();
        (cluster, at, spread.swap_remove(0))
    }

    fn kinds(cluster: &TestCluster, now: Instant) -> Vec<(u64, String)> {
        cluster
            .state
            .operators(now)
            .into_iter()
            .map(|op| (op.region_id, op.kind))
            .collect()
    }

    fn code(result: Result<impl std::fmt::Debug>) -> Code {
        tonic::Status::from(result.expect_err("refused")).code()
    }

    #[test]
    fn split_sends_fresh_ids_one_per_peer_and_finishes_when_the_version_grows() {
        let (mut cluster, at, (region, leader)) = three_voter_cluster(3);
        let last_id = cluster.alloc();
        let split_hash = HALF / 2;
        cluster
            .state
            .split_region(region.id, split_hash, at)
            .expect("split accepted");
        assert_eq!(kinds(&cluster, at), vec![(region.id, "split".to_owned())]);

        let answer = cluster.report(&region, leader, &[], at + secs(1));
        assert!(
            answer.change_peer.is_none() && answer.transfer_leader.is_none(),
            "{answer:?}"
        );
        assert_eq!(answer.region_epoch, region.epoch, "the current epoch");
        let split = answer.split.clone().expect("a split step");
        assert_eq!(split.split_hash, split_hash);
        assert_eq!(
            split.new_peer_ids.len(),
            region.peers.len(),
            "one new peer per peer"
        );
        let mut ids: HashSet<u64> = split.new_peer_ids.iter().copied().collect();
        ids.insert(split.new_region_id);
        assert_eq!(ids.len(), 1 + region.peers.len(), "ids repeat: {split:?}");
        assert!(
            ids.iter().all(|&id| id > last_id),
            "ids handed out before are reused: {split:?} (last id {last_id})"
        );
        let again = cluster.report(&region, leader, &[], at + secs(2));
        assert_eq!(again, answer, "re-sent until the region shows it done");

        // The leader splits: the region keeps the left half at version 2, the new region
        // (its peers on the same stores, in order) takes the right half.
        let bumped = RegionEpoch {
            version: 2,
            ..region.epoch.unwrap_or_default()
        };
        let left = Region {
            end_hash: split_hash,
            epoch: Some(bumped),
            ..region.clone()
        };
        let right = Region {
            id: split.new_region_id,
            start_hash: split_hash,
            end_hash: region.end_hash,
            epoch: Some(bumped),
            peers: region
                .peers
                .iter()
                .zip(&split.new_peer_ids)
                .map(|(peer, &id)| Peer { id, ..*peer })
                .collect(),
        };
        expect_nothing(
            &cluster.report(&left, leader, &[], at + secs(3)),
            "the split is done",
        );
        assert!(kinds(&cluster, at + secs(3)).is_empty());
        cluster.report(&right, right.peers[0], &[], at + secs(3));
        let ids: Vec<u64> = cluster
            .state
            .scan_regions(0, 0)
            .expect("scan")
            .into_iter()
            .filter_map(|r| r.region.map(|r| r.id))
            .collect();
        assert_eq!(ids, vec![region.id, right.id, cluster.other.id]);
    }

    #[test]
    fn split_is_done_when_the_new_region_reports_before_the_old_one() {
        let (mut cluster, at, (region, leader)) = three_voter_cluster(3);
        cluster
            .state
            .split_region(region.id, 0, at)
            .expect("split accepted");
        let answer = cluster.report(&region, leader, &[], at);
        let split = answer.split.expect("a split step");
        // The leader picked the middle; the new region's leader reports first and replaces
        // the old record, which ends the split operator (done, not left to time out).
        let middle = HALF / 2;
        let bumped = Some(RegionEpoch {
            version: 2,
            ..region.epoch.unwrap_or_default()
        });
        let right = Region {
            id: split.new_region_id,
            start_hash: middle,
            epoch: bumped,
            peers: region
                .peers
                .iter()
                .zip(&split.new_peer_ids)
                .map(|(peer, &id)| Peer { id, ..*peer })
                .collect(),
            ..region.clone()
        };
        cluster.report(&right, right.peers[0], &[], at + secs(1));
        assert!(kinds(&cluster, at + secs(1)).is_empty());
        let left = Region {
            end_hash: middle,
            epoch: bumped,
            ..region.clone()
        };
        expect_nothing(
            &cluster.report(&left, leader, &[], at + secs(2)),
            "the split is not sent again",
        );
        assert_eq!(cluster.state.region_count(), 3);
    }

    #[test]
    fn admin_split_preempts_the_checkers_operator_and_a_conf_change_cancels_it() {
        let mut cluster = TestCluster::new(3);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let planned = expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        cluster
            .state
            .split_region(region.id, 0, at)
            .expect("split accepted");
        assert_eq!(
            kinds(&cluster, at),
            vec![(region.id, "split".to_owned())],
            "the checker's add-learner is cancelled"
        );
        let answer = cluster.report(&region, leader, &[], at + secs(1));
        assert_eq!(
            answer.split.as_ref().map(|s| s.split_hash),
            Some(0),
            "0: the leader picks where the data halves; {answer:?}"
        );
        assert!(answer.change_peer.is_none(), "{answer:?}");

        // The learner was added after all (the old step was already on its way): the
        // membership changed without a split, so the split is cancelled and the checker
        // goes on.
        let grown = TestCluster::reshape(&region, 2, vec![leader, planned]);
        let answer = cluster.report(&grown, leader, &[], at + secs(2));
        assert_eq!(
            expect_change(&answer, ChangePeerType::PromoteLearner).id,
            planned.id
        );
        assert_eq!(
            kinds(&cluster, at + secs(2)),
            vec![(region.id, "promote-learner".to_owned())]
        );
    }

    #[test]
    fn admin_operators_are_not_held_back_by_the_schedule_limit() {
        let config = PlacementConfig {
            replica_schedule_limit: 0,
            ..test_config()
        };
        let (mut cluster, at, (region, leader)) = three_voter_cluster_with(3, config);
        let to = cluster.stores[2];
        cluster
            .state
            .transfer_leader(region.id, to, at)
            .expect("transfer accepted");
        let answer = cluster.report(&region, leader, &[], at);
        assert_eq!(expect_transfer(&answer), on_store(&region, to));
    }

    #[test]
    fn admin_transfer_leader_goes_to_the_voter_on_the_named_store() {
        let (mut cluster, at, (region, leader)) = three_voter_cluster(3);
        let to = cluster.stores[2];
        cluster
            .state
            .transfer_leader(region.id, to, at)
            .expect("transfer accepted");
        assert_eq!(
            kinds(&cluster, at),
            vec![(region.id, "transfer-leader".to_owned())]
        );
        let answer = cluster.report(&region, leader, &[], at + secs(1));
        let target = expect_transfer(&answer);
        assert_eq!(target, on_store(&region, to));
        let (region, new_leader) = carry_out(&region, leader, &answer);
        expect_nothing(
            &cluster.report(&region, new_leader, &[], at + secs(2)),
            "leadership moved",
        );
        assert!(kinds(&cluster, at + secs(2)).is_empty(), "transfer done");
    }

    #[test]
    fn ask_split_hands_out_fresh_ids_in_peer_order_and_refuses_stale_regions() {
        let (mut cluster, _, (region, leader)) = three_voter_cluster(3);
        let last_id = cluster.alloc();
        let (new_region_id, new_peer_ids) = cluster.state.ask_split(&region).expect("ids");
        assert_eq!(new_peer_ids.len(), 3);
        assert!(new_region_id > last_id && new_peer_ids.iter().all(|&id| id > new_region_id));
        let (again, _) = cluster.state.ask_split(&region).expect("ids");
        assert!(
            again > *new_peer_ids.last().expect("ids"),
            "never the same ids twice"
        );

        let older = TestCluster::reshape(&region, 1, vec![leader]);
        assert_eq!(
            code(cluster.state.ask_split(&older)),
            Code::FailedPrecondition
        );
        let unknown = Region {
            id: 999_999,
            ..region.clone()
        };
        assert_eq!(code(cluster.state.ask_split(&unknown)), Code::NotFound);
        // Ask-split is not a report: placement's view of the region is unchanged.
        let known = cluster.state.region_by_id(region.id).expect("region");
        assert_eq!(known.region.as_ref(), Some(&region));
    }

    #[test]
    fn admin_requests_with_bad_input_are_rejected_with_the_right_status() {
        let (mut cluster, at, (region, _)) = three_voter_cluster(5);
        let s = cluster.stores.clone();
        // s[3] is up, without peers; s[4] goes silent for good.
        let later = at + DOWN_TIME + secs(1);
        cluster.heartbeat_stores(&s[..4], later);
        let learner_region = TestCluster::reshape(
            &region,
            region.epoch.unwrap_or_default().conf_ver + 1,
            [region.peers.clone(), vec![learner(cluster.alloc(), s[3])]].concat(),
        );
        cluster.report(
            &learner_region,
            region.peers[0],
            &[learner_region.peers[3]],
            later,
        );
        let (id, unknown) = (region.id, 999_999);
        let state = &mut cluster.state;
        let cases: Vec<(&str, Code, Result<()>)> = vec![
            (
                "split of an unknown region",
                Code::NotFound,
                state.split_region(unknown, 5, later),
            ),
            (
                "split at the region's start",
                Code::InvalidArgument,
                state.split_region(cluster.other.id, HALF, later),
            ),
            (
                "split at the region's end",
                Code::InvalidArgument,
                state.split_region(id, HALF, later),
            ),
            (
                "split past the region's end",
                Code::InvalidArgument,
                state.split_region(id, HALF + 7, later),
            ),
            (
                "transfer of an unknown region",
                Code::NotFound,
                state.transfer_leader(unknown, s[1], later),
            ),
            (
                "transfer to an unknown store",
                Code::NotFound,
                state.transfer_leader(id, unknown, later),
            ),
            (
                "transfer to a store without a peer",
                Code::InvalidArgument,
                state.transfer_leader(id, s[4], later),
            ),
            (
                "transfer to a learner",
                Code::InvalidArgument,
                state.transfer_leader(id, s[3], later),
            ),
            (
                "move of an unknown region",
                Code::NotFound,
                state.move_region(unknown, s[0], s[3], later),
            ),
            (
                "move from an unknown store",
                Code::NotFound,
                state.move_region(id, unknown, s[3], later),
            ),
            (
                "move to an unknown store",
                Code::NotFound,
                state.move_region(id, s[0], unknown, later),
            ),
            (
                "move to the same store",
                Code::InvalidArgument,
                state.move_region(id, s[0], s[0], later),
            ),
            (
                "move from a store without a peer",
                Code::InvalidArgument,
                state.move_region(cluster.other.id, s[3], s[4], later),
            ),
            (
                "move to a store with a peer",
                Code::InvalidArgument,
                state.move_region(id, s[0], s[1], later),
            ),
            (
                "move to a down store",
                Code::InvalidArgument,
                state.move_region(cluster.other.id, s[0], s[4], later),
            ),
            (
                "removal of an unknown store",
                Code::NotFound,
                state.remove_store(unknown, later),
            ),
        ];
        for (what, expected, result) in cases {
            assert_eq!(code(result), expected, "{what}");
        }
        assert!(
            cluster.state.operators(later).is_empty(),
            "nothing refused left an operator behind"
        );

        // Only stores that are up count for what a removal leaves: s[4] is down, so removing
        // one more of the four up stores would leave 2 < 3.
        cluster
            .state
            .remove_store(s[3], later)
            .expect("3 up stores stay");
        assert_eq!(
            code(
                cluster
                    .state
                    .move_region(cluster.other.id, s[0], s[3], later)
            ),
            Code::InvalidArgument,
            "moving onto an offline store"
        );
        assert_eq!(
            code(cluster.state.remove_store(s[2], later)),
            Code::FailedPrecondition,
            "removing a store would leave too few"
        );
        let message = cluster
            .state
            .remove_store(s[2], later)
            .expect_err("refused")
            .to_string();
        assert!(message.contains(&s[2].to_string()), "{message}");

        let dir = tempfile::tempdir().expect("temp dir");
        let mut fresh = ClusterState::open(dir.path(), test_config(), at).expect("open");
        assert_eq!(code(fresh.split_region(1, 0, at)), Code::FailedPrecondition);
        assert_eq!(code(fresh.remove_store(1, at)), Code::FailedPrecondition);
    }

    #[test]
    fn remove_store_drains_its_replicas_then_makes_it_a_tombstone() {
        let (mut cluster, at, (region, leader)) = three_voter_cluster(4);
        let s = cluster.stores.clone();
        let other = cluster.other.clone();
        cluster
            .state
            .remove_store(s[0], at)
            .expect("removal accepted");
        let state_of = |cluster: &TestCluster, store| {
            StoreState::try_from(cluster.state.store_info(store, at).expect("store").state)
        };
        assert_eq!(state_of(&cluster, s[0]), Ok(StoreState::Offline));
        // The offline state is durable, and the store keeps working while drained.
        cluster.restart(at);
        assert_eq!(state_of(&cluster, s[0]), Ok(StoreState::Offline));
        cluster.heartbeat_stores(&s, at);

        // A replacement goes to the one store that is neither offline nor holding a peer;
        // it is promoted, leadership leaves the offline store, then its peer goes.
        let answer = cluster.report(&region, leader, &[], at);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(new.store_id, s[3]);
        let (region, leader) = carry_out(&region, leader, &answer);
        let answer = cluster.report(&region, leader, &[], at);
        assert_eq!(
            expect_change(&answer, ChangePeerType::PromoteLearner).id,
            new.id
        );
        let (region, leader) = carry_out(&region, leader, &answer);
        let answer = cluster.report(&region, leader, &[], at);
        let successor = expect_transfer(&answer);
        assert_ne!(successor.store_id, s[0]);
        let (region, leader) = carry_out(&region, leader, &answer);
        let answer = cluster.report(&region, leader, &[], at);
        assert_eq!(
            expect_change(&answer, ChangePeerType::RemovePeer),
            on_store(&region, s[0])
        );
        let (region, leader) = carry_out(&region, leader, &answer);
        expect_nothing(&cluster.report(&region, leader, &[], at), "drained");
        assert_eq!(
            state_of(&cluster, s[0]),
            Ok(StoreState::Offline),
            "the other region still has a peer there"
        );

        let mut rest = [(other.clone(), on_store(&other, s[0]))];
        cluster.settle(&mut rest, at, 10);
        assert!(
            rest[0].0.peers.iter().all(|p| p.store_id != s[0]),
            "{rest:?}"
        );
        assert_eq!(rest[0].0.peers.len(), 3, "{rest:?}");
        assert_eq!(state_of(&cluster, s[0]), Ok(StoreState::Tombstone));
        let refused = cluster
            .state
            .store_heartbeat(s[0], StoreStats::default(), at)
            .expect_err("a tombstone's heartbeat");
        assert_eq!(
            tonic::Status::from(refused).code(),
            Code::FailedPrecondition
        );
        cluster.restart(at);
        assert_eq!(state_of(&cluster, s[0]), Ok(StoreState::Tombstone));
    }

    #[test]
    fn removing_a_store_without_peers_makes_it_a_tombstone_at_once() {
        let (mut cluster, at, _) = three_voter_cluster(4);
        let empty = cluster.stores[3];
        cluster
            .state
            .remove_store(empty, at)
            .expect("removal accepted");
        let info = cluster.state.store_info(empty, at).expect("store");
        assert_eq!(info.state, StoreState::Tombstone as i32);
        assert_eq!(
            code(cluster.state.remove_store(empty, at)),
            Code::FailedPrecondition,
            "a tombstone is removed already"
        );
    }

    #[test]
    fn remove_store_is_refused_when_too_few_stores_would_be_left() {
        let (mut cluster, at, _) = three_voter_cluster(3);
        let store = cluster.stores[1];
        assert_eq!(
            code(cluster.state.remove_store(store, at)),
            Code::FailedPrecondition
        );
        let info = cluster.state.store_info(store, at).expect("store");
        assert_eq!(info.state, StoreState::Up as i32, "nothing changed");
    }
}
