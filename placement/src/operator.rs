//! Operators: single scheduling steps placement asks a region's leader to take, and the
//! controller that tracks them until the region's own reports show them done (TiKV PD's
//! operator controller is the reference).
//!
//! An operator is one step — add a learner, promote it, remove a peer, move leadership.
//! Longer flows (add a learner → promote it → remove the voter it replaces) are not planned
//! ahead: the replica checker looks at the region again after every finished step. That keeps
//! each operator easy to judge from one heartbeat, and a flow interrupted by a crash of
//! placement simply resumes from whatever the region looks like next.
//!
//! Operators are volatile. After a restart none is in flight; the next heartbeats show how far
//! each region got and the checker re-derives what is still missing. The controller never
//! reads a clock: every call takes the `now` its caller observed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use ringkv_proto::placementpb::{
    ChangePeer, ChangePeerType, OperatorInfo, RegionHeartbeatResponse, TransferLeader,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    AddLearner,
    PromoteLearner,
    RemovePeer,
    TransferLeader,
}

impl OperatorKind {
    /// The name in logs, metrics and `GetOperators`.
    pub fn name(self) -> &'static str {
        match self {
            OperatorKind::AddLearner => "add-learner",
            OperatorKind::PromoteLearner => "promote-learner",
            OperatorKind::RemovePeer => "remove-peer",
            OperatorKind::TransferLeader => "transfer-leader",
        }
    }
}

/// How an operator ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A report showed the step done.
    Success,
    /// The region changed (split, or another membership change) without showing the step.
    Cancelled,
    /// Not done within `operator_timeout`.
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
    pub kind: OperatorKind,
    /// The peer the step is about: the new learner, the learner to promote, the peer to
    /// remove, or the voter that should become leader.
    pub peer: Peer,
    /// The region's epoch when the operator was made; growth past it without the step
    /// showing means the region changed under the operator.
    pub epoch: RegionEpoch,
    pub created: Instant,
    /// Why the checker made it, for logs and `GetOperators`.
    pub reason: String,
}

/// What one accepted report says about an operator.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Finished(Outcome),
    /// The region is in a joint configuration, which its leader leaves by itself; the step
    /// may be half applied, so it is neither judged nor re-sent until the region is out.
    Joint,
    Pending,
}

impl Operator {
    /// The step as a heartbeat answer, for a region now at `epoch`.
    pub fn step(&self, epoch: RegionEpoch) -> RegionHeartbeatResponse {
        let change = |change_type: ChangePeerType, role: PeerRole| ChangePeer {
            change_type: change_type as i32,
            peer: Some(Peer {
                role: role as i32,
                ..self.peer
            }),
        };
        let mut response = RegionHeartbeatResponse {
            region_id: self.region_id,
            region_epoch: Some(epoch),
            ..RegionHeartbeatResponse::default()
        };
        match self.kind {
            OperatorKind::AddLearner => {
                response.change_peer = Some(change(ChangePeerType::AddLearner, PeerRole::Learner));
            }
            OperatorKind::PromoteLearner => {
                response.change_peer =
                    Some(change(ChangePeerType::PromoteLearner, PeerRole::Voter));
            }
            OperatorKind::RemovePeer => {
                response.change_peer = Some(ChangePeer {
                    change_type: ChangePeerType::RemovePeer as i32,
                    peer: Some(self.peer),
                });
            }
            OperatorKind::TransferLeader => {
                response.transfer_leader = Some(TransferLeader {
                    peer: Some(self.peer),
                });
            }
        }
        response
    }

    /// Judges the operator by an accepted report of its region (`leader` is the reporter).
    fn progress(
        &self,
        region: &Region,
        leader: &Peer,
        now: Instant,
        timeout: Duration,
    ) -> Progress {
        let epoch = region.epoch.unwrap_or_default();
        let conf_changed = epoch.conf_ver > self.epoch.conf_ver;
        let changed = conf_changed || epoch.version > self.epoch.version;
        let role_now = region
            .peers
            .iter()
            .find(|p| p.id == self.peer.id)
            .map(|p| PeerRole::try_from(p.role));
        let done = match self.kind {
            OperatorKind::AddLearner => conf_changed && role_now == Some(Ok(PeerRole::Learner)),
            OperatorKind::PromoteLearner => conf_changed && role_now == Some(Ok(PeerRole::Voter)),
            OperatorKind::RemovePeer => conf_changed && role_now.is_none(),
            OperatorKind::TransferLeader => leader.store_id == self.peer.store_id,
        };
        let joint = is_joint(region);
        if done {
            Progress::Finished(Outcome::Success)
        } else if changed && !joint {
            Progress::Finished(Outcome::Cancelled)
        } else if now.saturating_duration_since(self.created) > timeout {
            Progress::Finished(Outcome::Timeout)
        } else if joint {
            Progress::Joint
        } else {
            Progress::Pending
        }
    }

    pub fn info(&self, now: Instant) -> OperatorInfo {
        OperatorInfo {
            region_id: self.region_id,
            kind: self.kind.name().to_owned(),
            detail: format!(
                "peer {} on store {}: {}",
                self.peer.id, self.peer.store_id, self.reason
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

/// The operators in flight: at most one per region, at most `limit` in all.
pub struct OperatorController {
    in_flight: BTreeMap<u64, Operator>,
    timeout: Duration,
    limit: usize,
}

impl OperatorController {
    pub fn new(timeout: Duration, limit: u32) -> OperatorController {
        OperatorController {
            in_flight: BTreeMap::new(),
            timeout,
            limit: limit as usize,
        }
    }

    /// True when one more operator stays within the cluster-wide limit.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.limit
    }

    /// Starts tracking `operator`; returns its first step.
    pub fn add(&mut self, operator: Operator) -> RegionHeartbeatResponse {
        assert!(self.has_room(), "operator limit {} exceeded", self.limit);
        let step = operator.step(operator.epoch);
        tracing::info!(
            region = operator.region_id,
            kind = operator.kind.name(),
            peer = operator.peer.id,
            store = operator.peer.store_id,
            reason = %operator.reason,
            "operator created"
        );
        count(operator.kind, "created");
        let replaced = self.in_flight.insert(operator.region_id, operator);
        assert!(replaced.is_none(), "two operators for one region");
        self.publish_in_flight();
        step
    }

    /// Applies an accepted report of `region` to its operator. `None` when no operator is in
    /// flight for it (any that was is now finished); otherwise the answer to send while it
    /// is: its step again at the region's current epoch, or nothing while the region is in a
    /// joint configuration.
    pub fn on_region_report(
        &mut self,
        region: &Region,
        leader: &Peer,
        now: Instant,
    ) -> Option<RegionHeartbeatResponse> {
        let operator = self.in_flight.get(&region.id)?;
        match operator.progress(region, leader, now, self.timeout) {
            Progress::Finished(outcome) => {
                self.finish(region.id, outcome, now);
                None
            }
            Progress::Joint => Some(RegionHeartbeatResponse::default()),
            Progress::Pending => Some(operator.step(region.epoch.unwrap_or_default())),
        }
    }

    /// Ends operators past the timeout whose regions stopped reporting (a dead leader), so
    /// they do not hold slots of the limit for ever. Costs O(in flight) — bounded by `limit`.
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
    }

    /// Ends the operator of a region placement no longer has (replaced by an overlapping one).
    pub fn cancel(&mut self, region_id: u64, now: Instant) {
        if self.in_flight.contains_key(&region_id) {
            self.finish(region_id, Outcome::Cancelled, now);
        }
    }

    /// Every operator in flight, by region id.
    pub fn infos(&self, now: Instant) -> Vec<OperatorInfo> {
        self.in_flight.values().map(|op| op.info(now)).collect()
    }

    fn finish(&mut self, region_id: u64, outcome: Outcome, now: Instant) {
        let Some(operator) = self.in_flight.remove(&region_id) else {
            return;
        };
        tracing::info!(
            region = region_id,
            kind = operator.kind.name(),
            peer = operator.peer.id,
            store = operator.peer.store_id,
            outcome = outcome.name(),
            age_ms = now.saturating_duration_since(operator.created).as_millis() as u64,
            "operator finished"
        );
        count(operator.kind, outcome.name());
        self.publish_in_flight();
    }

    fn publish_in_flight(&self) {
        metrics::gauge!("ringkv_placement_operators_in_flight").set(self.in_flight.len() as f64);
    }
}

fn count(kind: OperatorKind, outcome: &'static str) {
    metrics::counter!(
        "ringkv_placement_operators_total",
        "kind" => kind.name(),
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

        // Done: the learner is there (still catching up, so nothing follows yet).
        let grown = TestCluster::reshape(&region, 2, vec![leader, new]);
        let answer = cluster.report(&grown, leader, &[new], at + secs(20));
        expect_nothing(&answer, "the add is done and the learner is catching up");
        assert!(kinds(&cluster, at + secs(20)).is_empty());
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
