//! Operators: single scheduling steps placement asks a region's leader to take, and the
//! controller that tracks them until the region's own reports show them done (TiKV PD's
//! operator controller is the reference).
//!
//! An operator is one step — add a learner, promote it, remove a peer, move leadership, split.
//! Longer flows (add a learner → promote it → remove the voter it replaces) are not planned
//! ahead: the checker looks at the region again after every finished step. That keeps each
//! operator easy to judge from one heartbeat, and a flow interrupted by a crash of placement
//! simply resumes from whatever the region looks like next. A move (see `goal`) is such a
//! flow with a destination: the controller keeps the goal, the checker derives its steps.
//!
//! Adding a learner is done once the learner is in the region *and* caught up (TiKV PD's
//! add-peer step is the reference): until then the operator keeps its slot, so
//! `replica_schedule_limit` also bounds the snapshots streaming at once, and `GetOperators`
//! shows how far the snapshot got.
//!
//! Priority and limits, by [`Origin`]: admin requests are never limited and replace whatever
//! else is in flight for the region; every other operator needs a free slot of
//! `replica_schedule_limit` (admin operators take slots too), and the balancers and the
//! hot-region scheduler have their own smaller limits on top (see `state`).
//!
//! Operators and goals are volatile. After a restart none is in flight; the next heartbeats
//! show how far each region got and the checker re-derives what is still missing (an
//! unfinished move is forgotten). The controller never reads a clock: every call takes the
//! `now` its caller observed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use ringkv_proto::placementpb::{
    ChangePeer, ChangePeerType, OperatorInfo, RegionHeartbeatResponse, SplitRegion, TransferLeader,
};

use crate::goal::{MoveGoal, MOVE_REGION_KIND};

/// A move goal is given up after this many operator timeouts (it takes three steps or more).
pub const GOAL_TIMEOUT_FACTOR: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    AddLearner,
    PromoteLearner,
    RemovePeer,
    TransferLeader,
    Split,
}

impl OperatorKind {
    /// The name in logs, metrics and `GetOperators`.
    pub fn name(self) -> &'static str {
        match self {
            OperatorKind::AddLearner => "add-learner",
            OperatorKind::PromoteLearner => "promote-learner",
            OperatorKind::RemovePeer => "remove-peer",
            OperatorKind::TransferLeader => "transfer-leader",
            OperatorKind::Split => "split",
        }
    }
}

/// The one step an operator asks of a region, with what it is about: the new learner, the
/// learner to promote, the peer to remove, the voter that should lead, or the split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner(Peer),
    PromoteLearner(Peer),
    RemovePeer(Peer),
    TransferLeader(Peer),
    /// `new_peer_ids[i]` is the new region's peer on the store of the region's i-th peer.
    Split(SplitRegion),
}

impl Step {
    pub fn kind(&self) -> OperatorKind {
        match self {
            Step::AddLearner(_) => OperatorKind::AddLearner,
            Step::PromoteLearner(_) => OperatorKind::PromoteLearner,
            Step::RemovePeer(_) => OperatorKind::RemovePeer,
            Step::TransferLeader(_) => OperatorKind::TransferLeader,
            Step::Split(_) => OperatorKind::Split,
        }
    }

    /// The peer the step is about (none for a split).
    pub fn peer(&self) -> Option<&Peer> {
        match self {
            Step::AddLearner(peer)
            | Step::PromoteLearner(peer)
            | Step::RemovePeer(peer)
            | Step::TransferLeader(peer) => Some(peer),
            Step::Split(_) => None,
        }
    }

    /// For logs and `GetOperators`.
    pub fn describe(&self) -> String {
        match self {
            Step::Split(split) => {
                let at = match split.split_hash {
                    0 => "where its data halves".to_owned(),
                    hash => format!("at hash {hash}"),
                };
                format!(
                    "split {at} into new region {} (peers {:?})",
                    split.new_region_id, split.new_peer_ids
                )
            }
            _ => {
                let peer = self.peer().copied().unwrap_or_default();
                format!(
                    "{} peer {} on store {}",
                    self.kind().name(),
                    peer.id,
                    peer.store_id
                )
            }
        }
    }
}

/// Who asked for an operator or a goal: decides its priority and the limit it counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The replica checker (replica count, healing, draining offline stores).
    Replica,
    /// A step towards a move goal.
    MoveGoal,
    /// The leader balancer.
    BalanceLeader,
    /// The hot-region scheduler (leader transfers off the store carrying the most load).
    HotRegion,
    /// The region balancer (makes goals, whose steps are `MoveGoal` operators).
    BalanceRegion,
    /// An admin request (kvctl): never limited, preempts everything else for the region.
    Admin,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Replica => "replica-checker",
            Origin::MoveGoal => "move-goal",
            Origin::BalanceLeader => "balance-leader",
            Origin::HotRegion => "hot-region",
            Origin::BalanceRegion => "balance-region",
            Origin::Admin => "admin",
        }
    }
}

/// How an operator or a goal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A report showed the step done (the goal reached).
    Success,
    /// The region changed (split, or another membership change) without showing the step,
    /// or something with priority replaced it.
    Cancelled,
    /// Not done within `operator_timeout` (× [`GOAL_TIMEOUT_FACTOR`] for a goal).
    Timeout,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Operator {
    pub region_id: u64,
    pub step: Step,
    pub origin: Origin,
    /// The region's epoch when the operator was made; growth past it without the step
    /// showing means the region changed under the operator.
    pub epoch: RegionEpoch,
    pub created: Instant,
    /// Why it was made, for logs and `GetOperators`.
    pub reason: String,
}

/// What one accepted report says about an operator.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Finished(Outcome),
    /// The region is in a joint configuration, which its leader leaves by itself; the step
    /// may be half applied, so it is neither judged nor re-sent until the region is out.
    Joint,
    /// The learner is added but still catching up (receiving a snapshot, or far behind):
    /// nothing to re-send, nothing else to start for the region.
    CatchingUp,
    Pending,
}

impl Operator {
    pub fn kind(&self) -> OperatorKind {
        self.step.kind()
    }

    /// The step as a heartbeat answer, for a region now at `epoch`.
    pub fn step(&self, epoch: RegionEpoch) -> RegionHeartbeatResponse {
        let change = |change_type: ChangePeerType, peer: &Peer, role: Option<PeerRole>| {
            Some(ChangePeer {
                change_type: change_type as i32,
                peer: Some(Peer {
                    role: role.map_or(peer.role, |role| role as i32),
                    ..*peer
                }),
            })
        };
        let mut response = RegionHeartbeatResponse {
            region_id: self.region_id,
            region_epoch: Some(epoch),
            ..RegionHeartbeatResponse::default()
        };
        match &self.step {
            Step::AddLearner(peer) => {
                response.change_peer =
                    change(ChangePeerType::AddLearner, peer, Some(PeerRole::Learner));
            }
            Step::PromoteLearner(peer) => {
                response.change_peer =
                    change(ChangePeerType::PromoteLearner, peer, Some(PeerRole::Voter));
            }
            Step::RemovePeer(peer) => {
                response.change_peer = change(ChangePeerType::RemovePeer, peer, None);
            }
            Step::TransferLeader(peer) => {
                response.transfer_leader = Some(TransferLeader { peer: Some(*peer) });
            }
            Step::Split(split) => response.split = Some(split.clone()),
        }
        response
    }

    /// Judges the operator by an accepted report of its region (`leader` is the reporter,
    /// `pending` the peers it says are catching up).
    fn progress(
        &self,
        region: &Region,
        leader: &Peer,
        pending: &[Peer],
        now: Instant,
        timeout: Duration,
    ) -> Progress {
        let epoch = region.epoch.unwrap_or_default();
        let conf_changed = epoch.conf_ver > self.epoch.conf_ver;
        let split = epoch.version > self.epoch.version;
        let role_now = |peer: &Peer| {
            region
                .peers
                .iter()
                .find(|p| p.id == peer.id)
                .map(|p| PeerRole::try_from(p.role))
        };
        let done = match &self.step {
            Step::AddLearner(peer) => conf_changed && role_now(peer) == Some(Ok(PeerRole::Learner)),
            Step::PromoteLearner(peer) => {
                conf_changed && role_now(peer) == Some(Ok(PeerRole::Voter))
            }
            Step::RemovePeer(peer) => conf_changed && role_now(peer).is_none(),
            Step::TransferLeader(peer) => leader.store_id == peer.store_id,
            Step::Split(_) => split,
        };
        let catching_up = done
            && matches!(&self.step, Step::AddLearner(peer) if pending.iter().any(|p| p.id == peer.id));
        let timed_out = now.saturating_duration_since(self.created) > timeout;
        let joint = is_joint(region);
        if catching_up && timed_out {
            Progress::Finished(Outcome::Timeout)
        } else if catching_up {
            Progress::CatchingUp
        } else if done {
            Progress::Finished(Outcome::Success)
        } else if (conf_changed || split) && !joint {
            Progress::Finished(Outcome::Cancelled)
        } else if timed_out {
            Progress::Finished(Outcome::Timeout)
        } else if joint {
            Progress::Joint
        } else {
            Progress::Pending
        }
    }

    /// For `GetOperators`; `note` is what its peer is doing now (a learner catching up).
    pub fn info(&self, now: Instant, note: Option<String>) -> OperatorInfo {
        let note = note.map(|note| format!("; {note}")).unwrap_or_default();
        OperatorInfo {
            region_id: self.region_id,
            kind: self.kind().name().to_owned(),
            detail: format!(
                "{} ({}): {}{note}",
                self.step.describe(),
                self.origin.name(),
                self.reason
            ),
            age_ms: now.saturating_duration_since(self.created).as_millis() as u64,
        }
    }
}

/// True while some peer has a role that exists only inside a joint configuration (or one
/// this build does not know, which is treated the same: not ours to judge).
pub fn is_joint(region: &Region) -> bool {
    region.peers.iter().any(|peer| {
        !matches!(
            PeerRole::try_from(peer.role),
            Ok(PeerRole::Voter | PeerRole::Learner)
        )
    })
}

/// The operators (at most one per region) and move goals (likewise) in flight. Operators not
/// from admin requests are at most `limit` in all.
pub struct OperatorController {
    in_flight: BTreeMap<u64, Operator>,
    goals: BTreeMap<u64, MoveGoal>,
    timeout: Duration,
    limit: usize,
}

impl OperatorController {
    pub fn new(timeout: Duration, limit: u32) -> OperatorController {
        OperatorController {
            in_flight: BTreeMap::new(),
            goals: BTreeMap::new(),
            timeout,
            limit: limit as usize,
        }
    }

    /// True when one more operator stays within the cluster-wide limit.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.limit
    }

    /// Operators in flight that `origin` made.
    pub fn in_flight_from(&self, origin: Origin) -> usize {
        self.in_flight
            .values()
            .filter(|op| op.origin == origin)
            .count()
    }

    /// Goals in flight that `origin` made.
    pub fn goals_from(&self, origin: Origin) -> usize {
        self.goals.values().filter(|g| g.origin == origin).count()
    }

    pub fn operator(&self, region_id: u64) -> Option<&Operator> {
        self.in_flight.get(&region_id)
    }

    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        self.in_flight.values()
    }

    pub fn goal(&self, region_id: u64) -> Option<&MoveGoal> {
        self.goals.get(&region_id)
    }

    pub fn goals(&self) -> impl Iterator<Item = &MoveGoal> {
        self.goals.values()
    }

    /// Starts tracking `operator`; returns its first step. An admin operator replaces
    /// (cancels) whatever is in flight for the region and ignores the limit; any other needs
    /// the region free and a slot (the caller checks both).
    pub fn add(&mut self, operator: Operator, now: Instant) -> RegionHeartbeatResponse {
        if operator.origin == Origin::Admin {
            self.cancel_operator(operator.region_id, now);
        } else {
            assert!(self.has_room(), "operator limit {} exceeded", self.limit);
        }
        let step = operator.step(operator.epoch);
        tracing::info!(
            region = operator.region_id,
            step = %operator.step.describe(),
            origin = operator.origin.name(),
            reason = %operator.reason,
            "operator created"
        );
        count(operator.kind().name(), operator.origin, "created");
        let replaced = self.in_flight.insert(operator.region_id, operator);
        assert!(replaced.is_none(), "two operators for one region");
        self.publish_in_flight();
        step
    }

    /// Applies an accepted report of `region` (with `pending` peers catching up) to its
    /// operator. `None` when no operator is in flight for it (any that was is now finished);
    /// otherwise the answer to send while it is: its step again at the region's current
    /// epoch, or nothing while the region is in a joint configuration or the operator's
    /// learner catches up.
    pub fn on_region_report(
        &mut self,
        region: &Region,
        leader: &Peer,
        pending: &[Peer],
        now: Instant,
    ) -> Option<RegionHeartbeatResponse> {
        let operator = self.in_flight.get(&region.id)?;
        match operator.progress(region, leader, pending, now, self.timeout) {
            Progress::Finished(outcome) => {
                self.finish(region.id, outcome, now);
                None
            }
            Progress::Joint | Progress::CatchingUp => Some(RegionHeartbeatResponse::default()),
            Progress::Pending => Some(operator.step(region.epoch.unwrap_or_default())),
        }
    }

    /// Ends operators and goals past their timeouts whose regions stopped reporting (a dead
    /// leader), so they do not hold slots for ever. Costs O(in flight), bounded by the limits.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .in_flight
            .values()
            .filter(|op| now.saturating_duration_since(op.created) > self.timeout)
            .map(|op| op.region_id)
            .collect();
        for region_id in expired {
            self.finish(region_id, Outcome::Timeout, now);
        }
        let goal_timeout = self.timeout * GOAL_TIMEOUT_FACTOR;
        let expired: Vec<u64> = self
            .goals
            .values()
            .filter(|goal| now.saturating_duration_since(goal.created) > goal_timeout)
            .map(|goal| goal.region_id)
            .collect();
        for region_id in expired {
            self.finish_goal(region_id, Outcome::Timeout, now);
        }
    }

    /// Ends what was in flight for a region placement no longer has: `by` (a region
    /// reporting a range that overlaps it) replaced it. A split whose new region that is
    /// succeeded; anything else is cancelled.
    pub fn on_region_replaced(&mut self, region_id: u64, by: &Region, now: Instant) {
        let split_done = self.in_flight.get(&region_id).is_some_and(
            |op| matches!(&op.step, Step::Split(split) if split.new_region_id == by.id),
        );
        if split_done {
            self.finish(region_id, Outcome::Success, now);
        }
        self.cancel_operator(region_id, now);
        if self.goals.contains_key(&region_id) {
            self.finish_goal(region_id, Outcome::Cancelled, now);
        }
    }

    /// Cancels the operator in flight for `region_id`, if any.
    pub fn cancel_operator(&mut self, region_id: u64, now: Instant) {
        if self.in_flight.contains_key(&region_id) {
            self.finish(region_id, Outcome::Cancelled, now);
        }
    }

    /// Cancels whatever would put a replica or leadership onto `store_id` (it is being
    /// drained): operators adding, promoting or handing leadership to a peer there, and
    /// goals moving regions to it.
    pub fn cancel_toward_store(&mut self, store_id: u64, now: Instant) {
        let operators: Vec<u64> = self
            .in_flight
            .values()
            .filter(|op| {
                matches!(
                    op.step,
                    Step::AddLearner(peer) | Step::PromoteLearner(peer) | Step::TransferLeader(peer)
                        if peer.store_id == store_id
                )
            })
            .map(|op| op.region_id)
            .collect();
        for region_id in operators {
            self.finish(region_id, Outcome::Cancelled, now);
        }
        let goals: Vec<u64> = self
            .goals
            .values()
            .filter(|goal| goal.to_store == store_id)
            .map(|goal| goal.region_id)
            .collect();
        for region_id in goals {
            self.finish_goal(region_id, Outcome::Cancelled, now);
        }
    }

    /// Starts tracking `goal`, replacing (cancelling) any other goal of its region.
    pub fn set_goal(&mut self, goal: MoveGoal, now: Instant) {
        if self.goals.contains_key(&goal.region_id) {
            self.finish_goal(goal.region_id, Outcome::Cancelled, now);
        }
        tracing::info!(
            region = goal.region_id,
            from_store = goal.from_store,
            to_store = goal.to_store,
            origin = goal.origin.name(),
            "move goal set"
        );
        count(MOVE_REGION_KIND, goal.origin, "created");
        self.goals.insert(goal.region_id, goal);
        self.publish_in_flight();
    }

    /// Records what the goal of `region_id` is doing now (for `GetOperators`).
    pub fn note_goal_progress(&mut self, region_id: u64, progress: String) {
        if let Some(goal) = self.goals.get_mut(&region_id) {
            goal.progress = progress;
        }
    }

    pub fn finish_goal(&mut self, region_id: u64, outcome: Outcome, now: Instant) {
        let Some(goal) = self.goals.remove(&region_id) else {
            return;
        };
        tracing::info!(
            region = region_id,
            from_store = goal.from_store,
            to_store = goal.to_store,
            origin = goal.origin.name(),
            outcome = outcome.name(),
            age_ms = now.saturating_duration_since(goal.created).as_millis() as u64,
            "move goal finished"
        );
        count(MOVE_REGION_KIND, goal.origin, outcome.name());
        self.publish_in_flight();
    }

    /// Every operator and goal in flight, by region id (a region's operator before its goal).
    /// `learner_note(region_id, store_id)` says what the region's learner on that store is
    /// doing now, if it is catching up; it is asked about the learner an add-learner
    /// operator adds and the one a goal moves to.
    pub fn infos(
        &self,
        now: Instant,
        learner_note: impl Fn(u64, u64) -> Option<String>,
    ) -> Vec<OperatorInfo> {
        let operator_info = |op: &Operator| {
            let note = match op.step {
                Step::AddLearner(peer) => learner_note(op.region_id, peer.store_id),
                _ => None,
            };
            op.info(now, note)
        };
        let goal_info =
            |goal: &MoveGoal| goal.info(now, learner_note(goal.region_id, goal.to_store));
        let mut infos: Vec<OperatorInfo> = self
            .in_flight
            .values()
            .map(operator_info)
            .chain(self.goals.values().map(goal_info))
            .collect();
        infos.sort_by_key(|info| info.region_id);
        infos
    }

    fn finish(&mut self, region_id: u64, outcome: Outcome, now: Instant) {
        let Some(operator) = self.in_flight.remove(&region_id) else {
            return;
        };
        tracing::info!(
            region = region_id,
            step = %operator.step.describe(),
            origin = operator.origin.name(),
            outcome = outcome.name(),
            age_ms = now.saturating_duration_since(operator.created).as_millis() as u64,
            "operator finished"
        );
        count(operator.kind().name(), operator.origin, outcome.name());
        self.publish_in_flight();
    }

    fn publish_in_flight(&self) {
        metrics::gauge!("ringkv_placement_operators_in_flight").set(self.in_flight.len() as f64);
        metrics::gauge!("ringkv_placement_move_goals_in_flight").set(self.goals.len() as f64);
    }
}

fn count(kind: &'static str, origin: Origin, outcome: &'static str) {
    metrics::counter!(
        "ringkv_placement_operators_total",
        "kind" => kind,
        "origin" => origin.name(),
        "outcome" => outcome
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use ringkv_proto::placementpb::ChangePeerType;

    use super::*;
    use crate::state::PlacementConfig;
    use crate::test_cluster::{
        expect_change, expect_nothing, secs, test_config, voter, TestCluster, OPERATOR_TIMEOUT,
    };

    fn up_cluster(store_count: usize, config: PlacementConfig) -> (TestCluster, Instant) {
        let mut cluster = TestCluster::with_config(store_count, config);
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        (cluster, at)
    }

    fn kinds(cluster: &TestCluster, now: Instant) -> Vec<(u64, String)> {
        cluster
            .state
            .operators(now)
            .into_iter()
            .map(|op| (op.region_id, op.kind))
            .collect()
    }

    #[test]
    fn operator_is_resent_while_in_flight_and_finishes_when_the_report_shows_it() {
        let (mut cluster, at) = up_cluster(3, test_config());
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let first = cluster.report(&region, leader, &[], at);
        let new = expect_change(&first, ChangePeerType::AddLearner);

        let again = cluster.report(&region, leader, &[], at + secs(10));
        assert_eq!(
            again, first,
            "the same step again while the region has not taken it"
        );
        let listed = cluster.state.operators(at + secs(10));
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].region_id, listed[0].kind.as_str()),
            (region.id, "add-learner")
        );
        assert_eq!(listed[0].age_ms, 10_000);
        assert!(listed[0].detail.contains(&new.id.to_string()), "{listed:?}");

        // The learner is there but catching up: not re-sent, not done yet.
        let grown = TestCluster::reshape(&region, 2, vec![leader, new]);
        let answer = cluster.report(&grown, leader, &[new], at + secs(20));
        expect_nothing(&answer, "the learner is catching up");
        assert_eq!(
            kinds(&cluster, at + secs(20)),
            vec![(region.id, "add-learner".to_owned())]
        );

        // Done once it caught up; the checker goes on at once.
        let answer = cluster.report(&grown, leader, &[], at + secs(30));
        assert_eq!(
            expect_change(&answer, ChangePeerType::PromoteLearner).id,
            new.id
        );
        assert_eq!(
            kinds(&cluster, at + secs(30)),
            vec![(region.id, "promote-learner".to_owned())]
        );
    }

    #[test]
    fn operator_times_out_after_operator_timeout() {
        let (mut cluster, at) = up_cluster(3, test_config());
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let new = expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        let stores = cluster.stores.clone();
        let edge = at + OPERATOR_TIMEOUT;
        cluster.heartbeat_stores(&stores, edge);
        let answer = cluster.report(&region, leader, &[], edge);
        assert_eq!(
            expect_change(&answer, ChangePeerType::AddLearner),
            new,
            "not timed out yet"
        );

        // Past the timeout the operator is given up and the checker starts over, with a
        // fresh peer id (the old one may exist half-made on its store).
        let late = at + OPERATOR_TIMEOUT + secs(1);
        cluster.heartbeat_stores(&stores, late);
        let answer = cluster.report(&region, leader, &[], late);
        let retry = expect_change(&answer, ChangePeerType::AddLearner);
        assert_ne!(retry.id, new.id, "a timed-out operator is not resumed");
    }

    #[test]
    fn operators_are_forgotten_on_restart_but_learner_ids_are_never_reused() {
        let (mut cluster, at) = up_cluster(3, test_config());
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let before = expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        let restarted = at + secs(5);
        cluster.restart(restarted);
        assert!(
            kinds(&cluster, restarted).is_empty(),
            "operators are volatile"
        );
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, restarted);
        let after = expect_change(
            &cluster.report(&region, leader, &[], restarted),
            ChangePeerType::AddLearner,
        );
        assert!(
            after.id > before.id,
            "peer id {} handed out again after a restart (before: {})",
            after.id,
            before.id
        );
    }

    #[test]
    fn operator_of_a_silent_region_times_out_and_frees_its_slot() {
        let config = PlacementConfig {
            replica_schedule_limit: 1,
            ..test_config()
        };
        let (mut cluster, at) = up_cluster(3, config);
        let (region, other) = (cluster.region.clone(), cluster.other.clone());
        expect_change(
            &cluster.report(&region, region.peers[0], &[], at),
            ChangePeerType::AddLearner,
        );
        let late = at + OPERATOR_TIMEOUT + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, late);
        // `region` never reports again; `other` still gets the slot.
        let answer = cluster.report(&other, other.peers[0], &[], late);
        expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(
            kinds(&cluster, late),
            vec![(other.id, "add-learner".to_owned())]
        );
    }

    #[test]
    fn region_change_under_an_operator_cancels_it() {
        let (mut cluster, at) = up_cluster(4, test_config());
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let planned = expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        // Someone else (kvctl) changed the membership: the planned learner is not there.
        let elsewhere = cluster
            .stores
            .iter()
            .copied()
            .find(|&s| s != leader.store_id && s != planned.store_id)
            .expect("a fourth store");
        let changed =
            TestCluster::reshape(&region, 2, vec![leader, voter(cluster.alloc(), elsewhere)]);
        let answer = cluster.report(&changed, leader, &[], at + secs(1));
        let next = expect_change(&answer, ChangePeerType::AddLearner);
        assert_ne!(next.id, planned.id, "the cancelled step is not re-sent");
        assert_eq!(answer.region_epoch, changed.epoch);
    }

    #[test]
    fn operator_waits_without_resending_while_the_region_is_joint() {
        let (mut cluster, at) = up_cluster(3, test_config());
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let caught_up = crate::test_cluster::learner(cluster.alloc(), cluster.stores[1]);
        let with_learner = TestCluster::reshape(&region, 2, vec![leader, caught_up]);
        let answer = cluster.report(&with_learner, leader, &[], at);
        expect_change(&answer, ChangePeerType::PromoteLearner);

        let incoming = Peer {
            role: PeerRole::IncomingVoter as i32,
            ..caught_up
        };
        let joint = TestCluster::reshape(&region, 3, vec![leader, incoming]);
        let answer = cluster.report(&joint, leader, &[], at + secs(1));
        expect_nothing(&answer, "half applied: neither judged nor re-sent");
        assert_eq!(
            kinds(&cluster, at + secs(1)),
            vec![(region.id, "promote-learner".to_owned())]
        );

        let promoted = TestCluster::reshape(
            &region,
            4,
            vec![leader, voter(caught_up.id, caught_up.store_id)],
        );
        let answer = cluster.report(&promoted, leader, &[], at + secs(2));
        let next = expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(
            next.store_id, cluster.stores[2],
            "promoted; on to the third replica"
        );
    }
}
