//! Move goals: "region R should have its replica on store `to` instead of store `from`"
//! (`kvctl move-region`, or the region balancer). A goal is not a plan: like the replica
//! checker, [`check_move`] looks at the region as its leader just reported it and names the
//! one step still missing, so a goal survives steps that fail, time out or get cancelled, and
//! needs no bookkeeping of how far it got. The steps, in order:
//!
//! 1. No peer on `to`: add a learner there (even when the voters are already complete).
//! 2. A learner on `to`: wait while it catches up, then promote it.
//! 3. A voter on `to`: remove the peer on `from` (a learner at once; a voter once there are
//!    more voters than `max_replicas`, handing leadership away first — to `to` if it can —
//!    when `from` leads).
//!
//! The goal is reached when `to` has a voter and `from` no peer. Pure like the checker: no
//! clock, no state of its own.

use std::time::Instant;

use ringkv_proto::metapb::{Peer, PeerRole, Region};
use ringkv_proto::placementpb::{OperatorInfo, SnapshotProgress};

use crate::checker::{remove_voter, voters, ClusterView, Decision};
use crate::operator::{is_joint, Origin, Step};
use crate::units::show_bytes;

/// The kind name of goals in metrics and `GetOperators`.
pub const MOVE_REGION_KIND: &str = "move-region";

#[derive(Clone, Debug)]
pub struct MoveGoal {
    pub region_id: u64,
    pub from_store: u64,
    pub to_store: u64,
    /// [`Origin::Admin`] or [`Origin::BalanceRegion`].
    pub origin: Origin,
    pub created: Instant,
    /// What it does or waits for now, for `GetOperators`.
    pub progress: String,
}

impl MoveGoal {
    pub fn new(
        region_id: u64,
        from_store: u64,
        to_store: u64,
        origin: Origin,
        now: Instant,
    ) -> MoveGoal {
        MoveGoal {
            region_id,
            from_store,
            to_store,
            origin,
            created: now,
            progress: "waiting for the region's next report".to_owned(),
        }
    }

    /// For `GetOperators`; `learner_note`, when its learner on `to_store` is catching up,
    /// says how far (it is newer than `progress`, which changes only when the goal is
    /// looked at).
    pub fn info(&self, now: Instant, learner_note: Option<String>) -> OperatorInfo {
        OperatorInfo {
            region_id: self.region_id,
            kind: MOVE_REGION_KIND.to_owned(),
            detail: format!(
                "from store {} to store {}: {} ({})",
                self.from_store,
                self.to_store,
                learner_note.as_deref().unwrap_or(&self.progress),
                self.origin.name()
            ),
            age_ms: now.saturating_duration_since(self.created).as_millis() as u64,
        }
    }
}

/// What a goal needs from one report of its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoalCheck {
    /// `to` has a voter and `from` no peer.
    Reached,
    /// The next step.
    Next(Decision),
    /// Nothing can be done now (a learner catching up, a joint configuration, no voter to
    /// take leadership); nothing else may touch the region either, or the replica checker
    /// would remove the goal's learner as superfluous.
    Wait(String),
    /// The goal needs another voter before it can remove the one on `from`; the replica
    /// checker may act (it adds voters where they are missing).
    Defer(String),
}

/// The next step of `goal` for `region`, reported by `leader` with `pending` peers catching up.
pub fn check_move(
    cluster: &ClusterView,
    goal: &MoveGoal,
    region: &Region,
    leader: &Peer,
    pending: &[Peer],
) -> GoalCheck {
    if is_joint(region) {
        return GoalCheck::Wait("the region is in a joint configuration".to_owned());
    }
    let on = |store_id: u64| region.peers.iter().find(|p| p.store_id == store_id);
    let (on_to, on_from) = (on(goal.to_store), on(goal.from_store));
    let reason = format!(
        "move region {} from store {} to store {}",
        region.id, goal.from_store, goal.to_store
    );
    let next = |step: Step| {
        GoalCheck::Next(Decision::Step {
            step,
            reason: reason.clone(),
        })
    };
    let Some(on_to) = on_to else {
        return GoalCheck::Next(Decision::AddLearner {
            store_id: goal.to_store,
            reason,
        });
    };
    if on_to.role == PeerRole::Learner as i32 {
        if pending.iter().any(|p| p.id == on_to.id) {
            return GoalCheck::Wait(describe_catch_up(on_to, None));
        }
        return next(Step::PromoteLearner(*on_to));
    }
    let Some(on_from) = on_from else {
        return GoalCheck::Reached;
    };
    if on_from.role == PeerRole::Learner as i32 {
        return next(Step::RemovePeer(*on_from));
    }
    let voters = voters(region);
    if voters.len() <= cluster.max_replicas {
        return GoalCheck::Defer(format!(
            "{} voters, not more than max-replicas {}: peer {} on store {} stays until another voter joins",
            voters.len(),
            cluster.max_replicas,
            on_from.id,
            on_from.store_id
        ));
    }
    match remove_voter(
        cluster,
        &voters,
        on_from,
        leader,
        Some(goal.to_store),
        reason,
    ) {
        Some(decision) => GoalCheck::Next(decision),
        None => GoalCheck::Wait(format!(
            "peer {} on store {} leads and no voter on a healthy store can take over",
            on_from.id, on_from.store_id
        )),
    }
}

/// What `learner` does while it catches up: receives `snapshot`, or (without one) replays
/// the log it is behind on.
pub fn describe_catch_up(learner: &Peer, snapshot: Option<&SnapshotProgress>) -> String {
    let who = format!("learner {} on store {}", learner.id, learner.store_id);
    match snapshot {
        None => format!("{who} is catching up"),
        Some(snapshot) if snapshot.total_bytes == 0 => format!(
            "{who} receiving snapshot: {} sent",
            show_bytes(snapshot.sent_bytes)
        ),
        Some(snapshot) => format!(
            "{who} receiving snapshot: {} of {}",
            show_bytes(snapshot.sent_bytes),
            show_bytes(snapshot.total_bytes)
        ),
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::placementpb::{ChangePeerType, SnapshotProgress};

    use crate::state::RegionReport;
    use crate::test_cluster::{
        carry_out, expect_change, expect_nothing, expect_transfer, on_store, report_of, secs,
        test_config, TestCluster, OPERATOR_TIMEOUT,
    };

    /// Four stores up at `t0 + 1s`; `region` has voters on the first three, led from the first.
    fn cluster_with_three_voters() -> (TestCluster, std::time::Instant) {
        let mut cluster = TestCluster::with_config(4, test_config());
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let (region, leader) = cluster.spread(&cluster.region.clone(), &stores[..3], stores[0]);
        expect_nothing(&cluster.report(&region, leader, &[], at), "three voters");
        cluster.region = region;
        (cluster, at)
    }

    fn goal_details(cluster: &TestCluster, at: std::time::Instant) -> Vec<String> {
        cluster
            .state
            .operators(at)
            .into_iter()
            .filter(|op| op.kind == "move-region")
            .map(|op| op.detail)
            .collect()
    }

    #[test]
    fn move_adds_a_learner_promotes_it_hands_over_leadership_and_removes_the_source() {
        let (mut cluster, at) = cluster_with_three_voters();
        let s = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = on_store(&region, s[0]);
        cluster
            .state
            .move_region(region.id, s[0], s[3], at)
            .expect("move accepted");
        let details = goal_details(&cluster, at);
        assert_eq!(details.len(), 1, "{details:?}");
        let from_to = format!("from store {} to store {}", s[0], s[3]);
        assert!(details[0].starts_with(&from_to), "{details:?}");

        // 1. A learner on the target, although the voters are complete.
        let answer = cluster.report(&region, leader, &[], at);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        assert_eq!(new.store_id, s[3]);
        assert!(
            goal_details(&cluster, at)[0].contains("add-learner"),
            "the goal shows its step: {:?}",
            goal_details(&cluster, at)
        );
        let (region, leader) = carry_out(&region, leader, &answer);

        // 2. Promoted once it caught up, not before (nor removed as superfluous).
        let answer = cluster.report(&region, leader, &[new], at + secs(1));
        expect_nothing(&answer, "the learner is catching up");
        assert!(
            goal_details(&cluster, at)[0].contains("catching up"),
            "{:?}",
            goal_details(&cluster, at)
        );
        let answer = cluster.report(&region, leader, &[], at + secs(2));
        assert_eq!(
            expect_change(&answer, ChangePeerType::PromoteLearner).id,
            new.id
        );
        let (region, leader) = carry_out(&region, leader, &answer);

        // 3. The source leads: leadership goes to the target first, then the source goes.
        let answer = cluster.report(&region, leader, &[], at + secs(3));
        assert_eq!(
            expect_transfer(&answer).store_id,
            s[3],
            "the target is preferred"
        );
        let (region, leader) = carry_out(&region, leader, &answer);
        let answer = cluster.report(&region, leader, &[], at + secs(4));
        assert_eq!(
            expect_change(&answer, ChangePeerType::RemovePeer),
            on_store(&region, s[0])
        );
        let (region, leader) = carry_out(&region, leader, &answer);

        // Reached: nothing left in flight, the region is on the other three stores.
        expect_nothing(&cluster.report(&region, leader, &[], at + secs(5)), "moved");
        assert!(cluster.state.operators(at + secs(5)).is_empty());
        let mut stores: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
        stores.sort_unstable();
        assert_eq!(stores, s[1..].to_vec());
    }

    #[test]
    fn move_and_its_add_learner_show_the_learners_snapshot_progress() {
        let (mut cluster, at) = cluster_with_three_voters();
        let s = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = on_store(&region, s[0]);
        cluster
            .state
            .move_region(region.id, s[1], s[3], at)
            .expect("move accepted");
        let answer = cluster.report(&region, leader, &[], at);
        let new = expect_change(&answer, ChangePeerType::AddLearner);
        let (region, leader) = carry_out(&region, leader, &answer);

        let snapshot = SnapshotProgress {
            peer_id: new.id,
            sent_bytes: 1_258_291,
            total_bytes: 3_565_158,
        };
        let report = RegionReport {
            pending_peers: vec![new],
            snapshots: vec![snapshot],
            ..report_of(&region, leader)
        };
        expect_nothing(&cluster.send(report, at + secs(1)), "receiving a snapshot");
        let progress = format!(
            "learner {} on store {} receiving snapshot: 1.2 MiB of 3.4 MiB",
            new.id, s[3]
        );
        let listed = cluster.state.operators(at + secs(1));
        let detail_of = |kind: &str| {
            listed
                .iter()
                .find(|op| op.kind == kind)
                .map(|op| op.detail.clone())
                .unwrap_or_else(|| panic!("no {kind} in {listed:?}"))
        };
        assert!(detail_of("move-region").contains(&progress), "{listed:?}");
        assert!(detail_of("add-learner").contains(&progress), "{listed:?}");
        assert_eq!(cluster.state.snapshots(region.id), &[snapshot]);

        // Caught up: the snapshot is gone from the report, and so is the progress.
        let answer = cluster.report(&region, leader, &[], at + secs(2));
        expect_change(&answer, ChangePeerType::PromoteLearner);
        assert!(cluster.state.snapshots(region.id).is_empty());
        let details = goal_details(&cluster, at + secs(2));
        assert!(!details[0].contains("snapshot"), "{details:?}");
    }

    #[test]
    fn move_of_a_follower_needs_no_leader_transfer() {
        let (mut cluster, at) = cluster_with_three_voters();
        let s = cluster.stores.clone();
        let mut region = cluster.region.clone();
        let mut leader = on_store(&region, s[0]);
        cluster
            .state
            .move_region(region.id, s[1], s[3], at)
            .expect("move accepted");
        let mut kinds = vec![];
        for _ in 0..3 {
            let answer = cluster.report(&region, leader, &[], at);
            kinds.push(answer.change_peer.map(|c| c.change_type));
            (region, leader) = carry_out(&region, leader, &answer);
        }
        let expected = [
            ChangePeerType::AddLearner,
            ChangePeerType::PromoteLearner,
            ChangePeerType::RemovePeer,
        ];
        assert_eq!(kinds, expected.map(|k| Some(k as i32)).to_vec());
        assert_eq!(leader.store_id, s[0]);
        expect_nothing(&cluster.report(&region, leader, &[], at), "moved");
        assert!(region.peers.iter().all(|p| p.store_id != s[1]));
    }

    #[test]
    fn move_is_given_up_after_three_operator_timeouts() {
        let (mut cluster, at) = cluster_with_three_voters();
        let s = cluster.stores.clone();
        let region = cluster.region.clone();
        let leader = on_store(&region, s[0]);
        cluster
            .state
            .move_region(region.id, s[1], s[3], at)
            .expect("move accepted");
        expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        // The region never takes the step; each time the step times out it is retried...
        let once = at + OPERATOR_TIMEOUT + secs(1);
        cluster.heartbeat_stores(&s, once);
        expect_change(
            &cluster.report(&region, leader, &[], once),
            ChangePeerType::AddLearner,
        );
        assert_eq!(goal_details(&cluster, once).len(), 1, "still moving");
        // ... until the goal itself is past three operator timeouts.
        let late = at + OPERATOR_TIMEOUT * 3 + secs(1);
        cluster.heartbeat_stores(&s, late);
        expect_nothing(
            &cluster.report(&region, leader, &[], late),
            "the move is given up",
        );
        assert!(cluster.state.operators(late).is_empty());
    }

    #[test]
    fn admin_move_cancels_the_checkers_operator_and_replaces_an_earlier_move() {
        let mut cluster = TestCluster::with_config(4, test_config());
        let at = cluster.t0 + secs(1);
        let s = cluster.stores.clone();
        cluster.heartbeat_stores(&s, at);
        // Two voters of three: the checker adds a learner somewhere.
        let (region, leader) = cluster.spread(&cluster.region.clone(), &s[..2], s[0]);
        let planned = expect_change(
            &cluster.report(&region, leader, &[], at),
            ChangePeerType::AddLearner,
        );
        let elsewhere = if planned.store_id == s[2] { s[3] } else { s[2] };
        cluster
            .state
            .move_region(region.id, s[1], planned.store_id, at)
            .expect("move accepted");
        cluster
            .state
            .move_region(region.id, s[1], elsewhere, at)
            .expect("a second move replaces the first");
        let listed = cluster.state.operators(at);
        assert_eq!(
            listed.len(),
            1,
            "the checker's operator is cancelled: {listed:?}"
        );
        assert!(
            listed[0].detail.contains(&format!("to store {elsewhere}")),
            "{listed:?}"
        );
        let answer = cluster.report(&region, leader, &[], at);
        assert_eq!(
            expect_change(&answer, ChangePeerType::AddLearner).store_id,
            elsewhere
        );
    }
}
