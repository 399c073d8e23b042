//! What region leaders last said, kept in memory only (the next heartbeats rebuild it after a
//! restart): each region's leader, term and statistics, the peers catching up and the
//! snapshots streaming to them, how long it has been hot, when the hot-region scheduler last
//! moved it, and since when it is in a joint configuration; plus what is derived per store
//! from it (regions led, load led), kept with it and checked against a recount in debug
//! builds.
//!
//! A region in a joint configuration leaves it by itself (its leader proposes the leave once
//! the enter is applied). One reported joint for longer than `operator_timeout` is stuck:
//! it is logged once per episode (one joint configuration, i.e. one conf_ver), counted by
//! `/metrics` and listed by `/status`, so someone looks at it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, PeerRole, Region};
use ringkv_proto::placementpb::SnapshotProgress;

use super::{ClusterState, JointEpisode, RegionLive, RegionReport};
use crate::goal::describe_catch_up;
use crate::hot::Load;
use crate::operator::is_joint;

/// A region reported in a joint configuration for longer than `operator_timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckJoint {
    pub region_id: u64,
    /// As placement last saw them.
    pub peers: Vec<Peer>,
    /// Since the first report that showed the joint configuration.
    pub joint_for: Duration,
}

impl ClusterState {
    /// Makes an accepted report, led by `leader`, the region's live info.
    pub(super) fn update_region_live(&mut self, report: &RegionReport, leader: Peer, now: Instant) {
        let region = &report.region;
        let previous = self.regions_live.remove(&region.id);
        if let Some(previous) = &previous {
            self.remove_leader_share(previous);
        }
        let previous = previous.unwrap_or_default();
        if previous.leader != Some(leader) {
            tracing::debug!(
                region = region.id,
                leader = leader.id,
                term = report.term,
                "region leader"
            );
        }
        let live = RegionLive {
            leader: Some(leader),
            term: report.term,
            stats: report.stats,
            pending_peers: one_per_peer(region, &report.pending_peers, |p| p.id),
            snapshots: one_per_peer(region, &report.snapshots, |s| s.peer_id),
            hot_streak: previous
                .hot_streak
                .after(Load::of(&report.stats), &self.config.hot_thresholds()),
            hot_transferred_at: previous.hot_transferred_at,
            joint: self.joint_episode(region, previous.joint, now),
        };
        self.add_leader_share(&live);
        self.regions_live.insert(region.id, live);
        debug_assert_eq!(
            (&self.leader_counts, &self.leader_loads),
            (&self.count_leaders(), &self.sum_leader_loads()),
            "leader counts or loads drifted"
        );
    }

    /// Drops what the leader of a region placement no longer has last said.
    pub(super) fn forget_region_live(&mut self, region_id: u64) {
        if let Some(live) = self.regions_live.remove(&region_id) {
            self.remove_leader_share(&live);
        }
    }

    /// The joint configuration `region` is in by this report (`previous`: the one it was in
    /// by the last); warns once when it has lasted longer than `operator_timeout`.
    fn joint_episode(
        &self,
        region: &Region,
        previous: Option<JointEpisode>,
        now: Instant,
    ) -> Option<JointEpisode> {
        if !is_joint(region) {
            if previous.is_some_and(|episode| episode.warned) {
                tracing::info!(
                    region = region.id,
                    "region left the joint configuration it was stuck in"
                );
            }
            return None;
        }
        let conf_ver = region.epoch.unwrap_or_default().conf_ver;
        let mut episode = previous
            .filter(|episode| episode.conf_ver == conf_ver)
            .unwrap_or(JointEpisode {
                conf_ver,
                since: now,
                warned: false,
            });
        let joint_for = now.saturating_duration_since(episode.since);
        if !episode.warned && joint_for > self.config.operator_timeout {
            episode.warned = true;
            tracing::warn!(
                region = region.id,
                conf_ver,
                peers = %show_peers(&region.peers),
                joint_for_secs = joint_for.as_secs(),
                "region stuck in a joint configuration: its leader has not left it"
            );
        }
        Some(episode)
    }

    /// Regions reported in a joint configuration for longer than `operator_timeout` at
    /// `now`, by id.
    pub fn stuck_joint_regions(&self, now: Instant) -> Vec<StuckJoint> {
        let mut stuck: Vec<StuckJoint> = self
            .regions_live
            .iter()
            .filter_map(|(&region_id, live)| {
                let joint_for = now.saturating_duration_since(live.joint?.since);
                if joint_for <= self.config.operator_timeout {
                    return None;
                }
                let peers = self.durable.regions.get(&region_id)?.peers.clone();
                Some(StuckJoint {
                    region_id,
                    peers,
                    joint_for,
                })
            })
            .collect();
        stuck.sort_by_key(|s| s.region_id);
        stuck
    }

    /// The snapshots region `region_id`'s leader last said it was streaming.
    pub fn snapshots(&self, region_id: u64) -> &[SnapshotProgress] {
        self.regions_live
            .get(&region_id)
            .map_or(&[], |live| live.snapshots.as_slice())
    }

    /// What region `region_id`'s learner on store `store_id` does, by the last report, if it
    /// is catching up (see [`describe_catch_up`]).
    pub(super) fn learner_note(&self, region_id: u64, store_id: u64) -> Option<String> {
        let region = self.durable.regions.get(&region_id)?;
        let learner = region
            .peers
            .iter()
            .find(|p| p.store_id == store_id && p.role == PeerRole::Learner as i32)?;
        let live = self.regions_live.get(&region_id)?;
        let snapshot = live.snapshots.iter().find(|s| s.peer_id == learner.id);
        let pending = live.pending_peers.iter().any(|p| p.id == learner.id);
        (pending || snapshot.is_some()).then(|| describe_catch_up(learner, snapshot))
    }

    fn add_leader_share(&mut self, live: &RegionLive) {
        let Some(leader) = live.leader else {
            return;
        };
        *self.leader_counts.entry(leader.store_id).or_default() += 1;
        let load = Load::of(&live.stats);
        if !load.is_zero() {
            self.leader_loads
                .entry(leader.store_id)
                .or_default()
                .add(load);
        }
    }

    fn remove_leader_share(&mut self, live: &RegionLive) {
        let Some(leader) = live.leader else {
            return;
        };
        if let Some(count) = self.leader_counts.get_mut(&leader.store_id) {
            *count -= 1;
            if *count == 0 {
                self.leader_counts.remove(&leader.store_id);
            }
        }
        if let Some(load) = self.leader_loads.get_mut(&leader.store_id) {
            load.subtract(Load::of(&live.stats));
            if load.is_zero() {
                self.leader_loads.remove(&leader.store_id);
            }
        }
    }

    /// `leader_counts` recomputed from scratch, to check the incremental one.
    fn count_leaders(&self) -> BTreeMap<u64, u64> {
        let mut counts = BTreeMap::new();
        for leader in self.regions_live.values().filter_map(|live| live.leader) {
            *counts.entry(leader.store_id).or_default() += 1;
        }
        counts
    }

    /// `leader_loads` recomputed from scratch, to check the incremental one.
    fn sum_leader_loads(&self) -> BTreeMap<u64, Load> {
        let mut loads: BTreeMap<u64, Load> = BTreeMap::new();
        for live in self.regions_live.values() {
            let load = Load::of(&live.stats);
            if let Some(leader) = live.leader.filter(|_| !load.is_zero()) {
                loads.entry(leader.store_id).or_default().add(load);
            }
        }
        loads
    }
}

/// The first entry of `items` about each of `region`'s peers: whatever a report carries,
/// what is kept is bounded by the region's size.
fn one_per_peer<T: Copy>(region: &Region, items: &[T], peer_id: impl Fn(&T) -> u64) -> Vec<T> {
    let mut kept: Vec<T> = vec![];
    for item in items {
        let id = peer_id(item);
        let is_peer = region.peers.iter().any(|p| p.id == id);
        if is_peer && !kept.iter().any(|k| peer_id(k) == id) {
            kept.push(*item);
        }
    }
    kept
}

/// `[5 on store 2 (IncomingVoter), ...]`, for logs.
fn show_peers(peers: &[Peer]) -> String {
    let shown: Vec<String> = peers
        .iter()
        .map(|peer| {
            let role = PeerRole::try_from(peer.role).map_or_else(
                |_| format!("role {}", peer.role),
                |role| format!("{role:?}"),
            );
            format!("{} on store {} ({role})", peer.id, peer.store_id)
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use ringkv_proto::metapb::{Peer, PeerRole};

    use crate::test_cluster::{secs, test_config, voter, TestCluster, OPERATOR_TIMEOUT};

    fn stuck_ids(cluster: &TestCluster, at: std::time::Instant) -> Vec<u64> {
        cluster
            .state
            .stuck_joint_regions(at)
            .into_iter()
            .map(|stuck| stuck.region_id)
            .collect()
    }

    #[test]
    fn region_joint_past_operator_timeout_is_stuck_until_it_leaves() {
        let mut cluster = TestCluster::with_config(2, test_config());
        let at = cluster.t0 + secs(1);
        let stores = cluster.stores.clone();
        cluster.heartbeat_stores(&stores, at);
        let region = cluster.region.clone();
        let leader = region.peers[0];
        let incoming = Peer {
            role: PeerRole::IncomingVoter as i32,
            ..voter(cluster.alloc(), stores[1])
        };
        let joint = TestCluster::reshape(&region, 2, vec![leader, incoming]);
        cluster.report(&joint, leader, &[], at);
        let edge = at + OPERATOR_TIMEOUT;
        cluster.report(&joint, leader, &[], edge);
        assert!(stuck_ids(&cluster, edge).is_empty(), "not past the timeout");

        let late = edge + secs(1);
        cluster.report(&joint, leader, &[], late);
        let stuck = cluster.state.stuck_joint_regions(late);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].region_id, region.id);
        assert_eq!(stuck[0].peers, joint.peers);
        assert_eq!(stuck[0].joint_for, OPERATOR_TIMEOUT + secs(1));

        // Another joint configuration (a later conf_ver) is a new episode, timed anew.
        let demoting = Peer {
            role: PeerRole::DemotingVoter as i32,
            ..incoming
        };
        let again = TestCluster::reshape(&region, 4, vec![leader, demoting]);
        cluster.report(&again, leader, &[], late + secs(1));
        assert!(stuck_ids(&cluster, late + secs(1)).is_empty());
        assert_eq!(
            stuck_ids(&cluster, late + OPERATOR_TIMEOUT + secs(2)),
            vec![region.id],
            "stuck again past the timeout, even without a report"
        );

        // Out of the joint configuration: no longer listed.
        let left = TestCluster::reshape(&region, 5, vec![leader]);
        cluster.report(&left, leader, &[], late + secs(3));
        assert!(stuck_ids(&cluster, late + OPERATOR_TIMEOUT * 2).is_empty());
    }
}
