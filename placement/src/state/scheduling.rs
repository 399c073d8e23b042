//! What placement answers a region's accepted report, in order of priority:
//!
//! 1. the operator in flight for the region (judged, re-sent while pending);
//! 2. the region's move goal, if any (see `goal`);
//! 3. the replica rules (see `checker`);
//! 4. when `balance` is on, each within its own limit: the hot-region scheduler (see `hot`),
//!    then balance-leader, then balance-region (see `balance`).
//!
//! Only admin operators skip the cluster-wide limit (see `admin`); everything here needs a
//! free slot. The schedulers of step 4 see the counts and loads with what is in flight
//! already done, so that several reports in a row do not all pick the same emptiest store.
//!
//! Hot regions come first because load, not counts, is what a hot store suffers from; and
//! balance-leader leaves hot regions alone, so it can neither carry a hot region's load onto
//! the hottest store nor undo a hot-region transfer to even out the counts (and the two
//! would take turns moving the same leadership back and forth).

use std::collections::BTreeMap;
use std::time::Instant;

use ringkv_proto::metapb::{Peer, PeerRole, Region};
use ringkv_proto::placementpb::{PersistedStore, RegionHeartbeatResponse};

use super::{ClusterState, RegionLive};
use crate::balance::{balance_leader, balance_region};
use crate::checker::{check_replicas, ClusterView, Decision, StoreHealth};
use crate::error::Result;
use crate::goal::{check_move, GoalCheck, MoveGoal};
use crate::hot::{hot_region_transfer, Load};
use crate::operator::{Operator, Origin, Outcome, Step};

impl ClusterState {
    /// Judges the operator in flight for `region` by its accepted report, or decides the
    /// next one (see the module docs); returns the step to send.
    pub(super) fn schedule(
        &mut self,
        region: &Region,
        leader: &Peer,
        pending: &[Peer],
        now: Instant,
    ) -> Result<RegionHeartbeatResponse> {
        let in_flight = self
            .operators
            .on_region_report(region, leader, pending, now);
        self.operators.expire(now);
        if let Some(step) = in_flight {
            return Ok(step);
        }
        let stores = self.store_healths(now);
        let has_goal = self.operators.goal(region.id).is_some();
        if has_goal {
            if let Some(answer) = self.advance_goal(&stores, region, leader, pending, now)? {
                return Ok(answer);
            }
        }
        if !self.operators.has_room() {
            return Ok(RegionHeartbeatResponse::default());
        }
        let view = self.view(&stores, &self.durable.peer_counts);
        if let Some(decision) = check_replicas(&view, region, leader, pending) {
            return self.start_operator(region, decision, Origin::Replica, now);
        }
        if !self.config.balance || has_goal {
            return Ok(RegionHeartbeatResponse::default());
        }
        self.balance(&stores, region, leader, pending, now)
    }

    /// The goal's answer for this report, or `None` when the goal leaves the region to the
    /// replica rules (it was reached, or waits for them to add a voter).
    fn advance_goal(
        &mut self,
        stores: &BTreeMap<u64, StoreHealth>,
        region: &Region,
        leader: &Peer,
        pending: &[Peer],
        now: Instant,
    ) -> Result<Option<RegionHeartbeatResponse>> {
        let Some(goal) = self.operators.goal(region.id).cloned() else {
            return Ok(None);
        };
        let view = self.view(stores, &self.durable.peer_counts);
        let decision = match check_move(&view, &goal, region, leader, pending) {
            GoalCheck::Reached => {
                self.operators.finish_goal(region.id, Outcome::Success, now);
                return Ok(None);
            }
            GoalCheck::Defer(why) => {
                self.operators.note_goal_progress(region.id, why);
                return Ok(None);
            }
            GoalCheck::Wait(why) => {
                self.operators.note_goal_progress(region.id, why);
                return Ok(Some(RegionHeartbeatResponse::default()));
            }
            GoalCheck::Next(decision) => decision,
        };
        if !self.operators.has_room() {
            self.operators
                .note_goal_progress(region.id, "waiting for a free operator slot".to_owned());
            return Ok(Some(RegionHeartbeatResponse::default()));
        }
        let answer = self.start_operator(region, decision, Origin::MoveGoal, now)?;
        if let Some(step) = self
            .operators
            .operator(region.id)
            .map(|op| op.step.describe())
        {
            self.operators.note_goal_progress(region.id, step);
        }
        Ok(Some(answer))
    }

    /// hot-region, then balance-leader (for a region that is not hot), then balance-region,
    /// each within its limit.
    fn balance(
        &mut self,
        stores: &BTreeMap<u64, StoreHealth>,
        region: &Region,
        leader: &Peer,
        pending: &[Peer],
        now: Instant,
    ) -> Result<RegionHeartbeatResponse> {
        if let Some(answer) = self.hot_region(stores, region, leader, now)? {
            return Ok(answer);
        }
        let is_hot = self.regions_live.get(&region.id).is_some_and(|live| {
            !live
                .hot_streak
                .hot_in(&self.config.hot_thresholds())
                .is_empty()
        });
        let leader_limit = self.config.leader_schedule_limit as usize;
        if !is_hot && self.operators.in_flight_from(Origin::BalanceLeader) < leader_limit {
            let leader_counts = self.projected_leader_counts();
            let view = self.view(stores, &self.durable.peer_counts);
            if let Some(decision) = balance_leader(&view, &leader_counts, region, leader) {
                return self.start_operator(region, decision, Origin::BalanceLeader, now);
            }
        }
        let region_limit = self.config.region_schedule_limit as usize;
        if self.operators.goals_from(Origin::BalanceRegion) < region_limit {
            let peer_counts = self.projected_peer_counts();
            let view = self.view(stores, &peer_counts);
            if let Some(proposed) = balance_region(&view, region) {
                tracing::info!(
                    region = region.id,
                    from_store = proposed.from_store,
                    to_store = proposed.to_store,
                    reason = %proposed.reason,
                    "balance-region moves a replica"
                );
                let goal = MoveGoal::new(
                    region.id,
                    proposed.from_store,
                    proposed.to_store,
                    Origin::BalanceRegion,
                    now,
                );
                self.operators.set_goal(goal, now);
                let answer = self.advance_goal(stores, region, leader, pending, now)?;
                return Ok(answer.unwrap_or_default());
            }
        }
        Ok(RegionHeartbeatResponse::default())
    }

    /// The hot-region scheduler's leader transfer for `region`, if it is hot, out of its
    /// cooldown, and the scheduler has a free slot of `hot_region_schedule_limit`.
    fn hot_region(
        &mut self,
        stores: &BTreeMap<u64, StoreHealth>,
        region: &Region,
        leader: &Peer,
        now: Instant,
    ) -> Result<Option<RegionHeartbeatResponse>> {
        let Some(live) = self.regions_live.get(&region.id) else {
            return Ok(None);
        };
        let hot_in = live.hot_streak.hot_in(&self.config.hot_thresholds());
        let cooling = live
            .hot_transferred_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.hot_region_cooldown);
        let limit = self.config.hot_region_schedule_limit as usize;
        if hot_in.is_empty() || cooling || self.operators.in_flight_from(Origin::HotRegion) >= limit
        {
            return Ok(None);
        }
        let region_load = Load::of(&live.stats);
        let loads = self.projected_leader_loads();
        let view = self.view(stores, &self.durable.peer_counts);
        let Some(decision) =
            hot_region_transfer(&view, &loads, region, leader, region_load, &hot_in)
        else {
            return Ok(None);
        };
        let answer = self.start_operator(region, decision, Origin::HotRegion, now)?;
        if let Some(live) = self.regions_live.get_mut(&region.id) {
            live.hot_transferred_at = Some(now);
        }
        Ok(Some(answer))
    }

    /// Makes `decision` an operator of `origin` and returns its first step.
    fn start_operator(
        &mut self,
        region: &Region,
        decision: Decision,
        origin: Origin,
        now: Instant,
    ) -> Result<RegionHeartbeatResponse> {
        let (step, reason) = match decision {
            Decision::AddLearner { store_id, reason } => {
                // Allocated through the durable watermark: a restarted placement never hands
                // the same peer id out again, even for a learner it no longer remembers.
                let (id, _) = self.alloc_ids(1)?;
                let peer = Peer {
                    id,
                    store_id,
                    role: PeerRole::Learner as i32,
                };
                (Step::AddLearner(peer), reason)
            }
            Decision::Step { step, reason } => (step, reason),
        };
        let operator = Operator {
            region_id: region.id,
            step,
            origin,
            epoch: region.epoch.unwrap_or_default(),
            created: now,
            reason,
        };
        Ok(self.operators.add(operator, now))
    }

    fn view<'a>(
        &self,
        stores: &'a BTreeMap<u64, StoreHealth>,
        peer_counts: &'a BTreeMap<u64, u64>,
    ) -> ClusterView<'a> {
        ClusterView {
            max_replicas: self.config.max_replicas as usize,
            stores,
            peer_counts,
        }
    }

    /// The leader transfers in flight whose region is still led from another store: the
    /// region's live info, the store it leaves, the store it goes to.
    fn transfers_in_flight(&self) -> impl Iterator<Item = (&RegionLive, u64, u64)> + '_ {
        self.operators.operators().filter_map(|operator| {
            let Step::TransferLeader(to) = operator.step else {
                return None;
            };
            let live = self.regions_live.get(&operator.region_id)?;
            let from = live.leader?;
            (from.store_id != to.store_id).then_some((live, from.store_id, to.store_id))
        })
    }

    /// Regions led per store once the leader transfers in flight are done.
    fn projected_leader_counts(&self) -> BTreeMap<u64, u64> {
        let mut counts = self.leader_counts.clone();
        for (_, from, to) in self.transfers_in_flight() {
            shift(&mut counts, from, to);
        }
        counts
    }

    /// The load of the regions each store leads once the leader transfers in flight are
    /// done.
    fn projected_leader_loads(&self) -> BTreeMap<u64, Load> {
        let mut loads = self.leader_loads.clone();
        for (live, from, to) in self.transfers_in_flight() {
            let load = Load::of(&live.stats);
            loads.entry(from).or_default().subtract(load);
            loads.entry(to).or_default().add(load);
        }
        loads
    }

    /// Peers per store once the move goals in flight are reached.
    fn projected_peer_counts(&self) -> BTreeMap<u64, u64> {
        let mut counts = self.durable.peer_counts.clone();
        for goal in self.operators.goals() {
            let Some(region) = self.durable.regions.get(&goal.region_id) else {
                continue;
            };
            let has_peer = |store_id| region.peers.iter().any(|p| p.store_id == store_id);
            if has_peer(goal.from_store) {
                let from = counts.entry(goal.from_store).or_default();
                *from = from.saturating_sub(1);
            }
            if !has_peer(goal.to_store) {
                *counts.entry(goal.to_store).or_default() += 1;
            }
        }
        counts
    }

    /// Every registered store's health at `now`.
    pub(super) fn store_healths(&self, now: Instant) -> BTreeMap<u64, StoreHealth> {
        self.durable
            .stores
            .iter()
            .map(|(&id, store)| (id, self.store_health(id, store, now)))
            .collect()
    }

    /// How scheduling sees a store at `now`.
    pub(super) fn store_health(
        &self,
        store_id: u64,
        store: &PersistedStore,
        now: Instant,
    ) -> StoreHealth {
        let down_after = self.config.max_store_down_time;
        if store.tombstone {
            return StoreHealth::Tombstone;
        }
        if store.offline {
            return StoreHealth::Offline;
        }
        match self.stores_live.get(&store_id) {
            Some(live) if now.saturating_duration_since(live.last_heartbeat) <= down_after => {
                StoreHealth::Up
            }
            Some(_) => StoreHealth::Down,
            None if now.saturating_duration_since(self.started) <= down_after => {
                StoreHealth::Unknown
            }
            None => StoreHealth::Down,
        }
    }
}

/// Moves one unit of `counts` from `from` to `to`.
fn shift(counts: &mut BTreeMap<u64, u64>, from: u64, to: u64) {
    let source = counts.entry(from).or_default();
    *source = source.saturating_sub(1);
    *counts.entry(to).or_default() += 1;
}
