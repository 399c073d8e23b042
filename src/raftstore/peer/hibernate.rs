//! Hibernation: a region nobody uses stops ticking, so an idle store costs almost nothing
//! however many regions it holds (TiKV's "hibernate regions").
//!
//! - A leader hibernates after `hibernate_after_ticks` quiet ticks in which the region was
//!   quiescent: nothing waiting (writes, reads, a leadership transfer or a membership change),
//!   everything applied, every peer's log matching the leader's. It tells its peers with a
//!   `hibernate` message and stops ticking, so it sends no heartbeats.
//! - A follower receiving that message from the leader it knows stops ticking too.
//! - Any raft message or client command wakes a peer: a write at a hibernating leader is
//!   proposed as usual and its appends wake the followers.
//! - A hibernating follower watches its leader's store through store heartbeats (region 0
//!   messages, sent by every store every few ticks): once that store has been silent for
//!   `store_silent_after`, the follower wakes, its election timer runs, and the region elects
//!   a new leader if the old one is really gone (pre-vote keeps a live leader in place).
//!
//! Hibernation only affects liveness: raft's safety never depends on ticks.

use bytes::Bytes;

use super::PeerFsm;
use crate::proto::raft_serverpb::RaftMessage;
use crate::region::find_peer;

impl PeerFsm {
    /// Wakes the peer (it ticks again from the next round). Raft traffic alone (heartbeats
    /// and their responses) does not restart the count toward hibernation: quiescence is
    /// judged from the log and progress at each tick.
    pub fn wake(&mut self) {
        self.hibernating = false;
    }

    /// A (pre-)vote request reached this peer: some peer lost track of the leader. A leader
    /// stays awake for a full hibernation period so its heartbeats reach everyone again
    /// (otherwise it could fall back asleep after one tick, before its next heartbeat).
    pub(super) fn on_campaign_seen(&mut self, msg_type: raft::eraftpb::MessageType) {
        use raft::eraftpb::MessageType::{MsgRequestPreVote, MsgRequestVote};
        if matches!(msg_type, MsgRequestPreVote | MsgRequestVote) {
            self.idle_ticks = 0;
        }
    }

    /// A client command or membership work: wake, and start counting quiet ticks afresh.
    pub fn note_activity(&mut self) {
        self.hibernating = false;
        self.idle_ticks = 0;
    }

    /// Counts a tick toward hibernation; true once this leader should hibernate now.
    pub fn ready_to_hibernate(&mut self, after_ticks: usize) -> bool {
        if !self.is_quiescent_leader() {
            self.idle_ticks = 0;
            return false;
        }
        self.idle_ticks += 1;
        self.idle_ticks >= after_ticks
    }

    /// Stops ticking and tells every other peer of the region to do the same.
    pub fn hibernate(&mut self, outbox: &mut Vec<RaftMessage>) {
        self.hibernating = true;
        self.raw.mut_store().clear_entry_cache();
        let region = self.region();
        for peer in region.peers.iter().filter(|p| p.id != self.peer.id) {
            outbox.push(RaftMessage {
                region_id: region.id,
                from_peer: Some(self.peer),
                to_peer: Some(*peer),
                region_epoch: region.epoch,
                message: Bytes::new(),
                is_tombstone: false,
                hibernate: true,
                disk_low: self.disk_low.load(std::sync::atomic::Ordering::Relaxed),
                vote_refusal_ms: self.vote_refusal.as_millis() as u64,
            });
        }
    }

    /// A `hibernate` message: a follower stops ticking when it comes from its leader.
    pub(super) fn on_hibernate_message(&mut self, message: &RaftMessage) {
        let from_leader = message
            .from_peer
            .is_some_and(|from| from.id == self.raw.raft.leader_id);
        if from_leader && !self.is_leader() {
            self.hibernating = true;
            self.raw.mut_store().clear_entry_cache();
        }
    }

    /// Whether a hibernating follower should wake because its leader's store is among
    /// `silent_stores` (no store heartbeat for a while), or it knows no leader at all.
    pub fn leader_store_silent(&self, silent_stores: &[u64]) -> bool {
        let Some(leader) = find_peer(self.region(), self.raw.raft.leader_id) else {
            return !self.is_leader();
        };
        leader.store_id != self.peer.store_id && silent_stores.contains(&leader.store_id)
    }

    fn is_quiescent_leader(&self) -> bool {
        if !self.is_leader()
            || !self.pending_writes.is_empty()
            || !self.new_reads.is_empty()
            || !self.write_batch.is_empty()
            || !self.read_batches.is_empty()
            || !self.committed.is_empty()
            || self.in_joint_state()
        {
            return false;
        }
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        if raft.lead_transferee.is_some()
            || raft.has_pending_conf()
            || raft.raft_log.committed != last
            || self.raw.store().applied_index() != last
        {
            return false;
        }
        // Every peer holds the whole log and knows it is committed (a follower hibernating
        // before it learned the commit index would leave its entries unapplied). A peer's
        // progress may sit in Probe after a dropped message although it matches: matching is
        // what counts.
        raft.prs()
            .iter()
            .all(|(_, pr)| pr.matched == last && pr.committed_index == last)
    }
}
