//! Lease reads: a leader a quorum confirmed recently answers linearizable reads from its own
//! applied state at once, without a ReadIndex round trip to its followers.
//!
//! Why it is safe. Every ReadIndex the quorum confirms proves that, at some moment after it
//! was issued (`sent_at`), a quorum of voters heard from this leader in its term. Each of them
//! then grants no (pre-)vote, whatever its term, for the vote refusal window
//! (`election_ticks - 1` tick intervals of wall time) after hearing from its leader
//! (`refuses_vote`, enforced here: raft-rs's own check covers only higher-term votes, and a
//! stale higher-term message of another kind makes a follower forget its leader and grant a
//! vote at once). So no other leader can be elected before `sent_at` + the window; the lease
//! ends before that: `sent_at` + 80% of the window. A read is served under the lease only when
//! everything committed is applied here and the lease holds both before and after the engine
//! read (a process paused mid-read — SIGSTOP, a long stall — finds its lease gone and falls
//! back to ReadIndex; `Instant` keeps counting while a process is stopped).
//!
//! What else could break the argument, and how each is closed:
//! - a voter that restarts forgets it heard from the leader: a store refuses (pre-)votes for
//!   the window after it starts, and a split's peer replacing an uninitialized one (created
//!   by the new region's leader) keeps its predecessor's last leader contact;
//! - a leadership transfer makes the transferee campaign at once, lease or not: a leader that
//!   starts one takes no lease for the rest of its term;
//! - a membership change makes another quorum: the lease ends with every change of the
//!   region (and none is taken while one is pending).
//!
//! Assumptions: every store runs the same `--raft-tick-ms` and `--election-ticks`, and
//! `Instant` (CLOCK_MONOTONIC) advances at the same rate everywhere. It does not advance while
//! a whole machine or VM is suspended, so a suspended leader's lease outlives real time: where
//! hosts may be suspended, run with `--lease-reads false`.
//!
//! Everything else about reads — batching, waiting for apply — stays on the ReadIndex path.
//! `--lease-reads false` turns leases off; the vote refusals stay (other stores' leases may
//! count on them).

use std::time::{Duration, Instant};

use raft::eraftpb::MessageType;

use super::super::read::read_region;
use super::{PeerFsm, PendingRead};
use crate::value::now_ms;

/// The lease state of one peer.
pub(super) struct Lease {
    /// How long a confirmation lasts; `None`: lease reads are off.
    duration: Option<Duration>,
    /// Reads may be answered locally until then.
    until: Option<Instant>,
    /// The term `until` belongs to.
    term: u64,
    /// A term in which this peer started a leadership transfer: no lease in it.
    revoked_term: u64,
    /// The lease is running out while reads use it: the next round renews it.
    renew: bool,
}

impl Lease {
    pub(super) fn new(duration: Option<Duration>) -> Lease {
        Lease {
            duration,
            until: None,
            term: 0,
            revoked_term: 0,
            renew: false,
        }
    }
}

impl PeerFsm {
    /// True while this leader may answer reads from its applied state.
    fn lease_holds(&self, now: Instant) -> bool {
        let raft = &self.raw.raft;
        self.lease.until.is_some_and(|until| now < until)
            && self.lease.term == raft.term
            && self.is_leader()
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.commit_to_current_term()
    }

    /// Answers `read` under the lease, or hands it back for the ReadIndex path.
    pub(super) fn try_lease_read(&mut self, read: PendingRead) -> Option<PendingRead> {
        let started = Instant::now();
        if !self.lease_holds(started)
            || self.raw.store().applied_index() < self.raw.raft.raft_log.committed
        {
            return Some(read);
        }
        let response = read_region(&self.engine, self.region(), &read.read, now_ms());
        let finished = Instant::now();
        if !self.lease_holds(finished) {
            return Some(read);
        }
        if let (Some(until), Some(duration)) = (self.lease.until, self.lease.duration) {
            // Renew in the background once half of it is gone, so a steady stream of reads
            // never waits for a ReadIndex.
            if until.saturating_duration_since(finished) < duration / 2 {
                self.lease.renew = true;
            }
        }
        self.read_keys += read.read.keys().len().max(1) as u64;
        metrics::counter!("ringkv_raft_lease_reads_total").increment(1);
        let _ = read.reply.send(response);
        None
    }

    /// A ReadIndex issued at `sent_at` in `term` was confirmed by a quorum.
    pub(super) fn extend_lease(&mut self, sent_at: Instant, term: u64) {
        let Some(duration) = self.lease.duration else {
            return;
        };
        if term != self.raw.raft.term || term == self.lease.revoked_term || !self.is_leader() {
            return;
        }
        let until = sent_at + duration;
        if self.lease.term != term || self.lease.until.is_none_or(|old| old < until) {
            self.lease.until = Some(until);
            self.lease.term = term;
        }
    }

    /// Ends the lease (leadership lost, the region changed).
    pub(super) fn end_lease(&mut self) {
        self.lease.until = None;
        self.lease.renew = false;
    }

    /// A leadership transfer starts: no lease for the rest of this term — the transferee may
    /// win an election any time from now on, whatever its peers heard.
    pub(super) fn revoke_lease_for_term(&mut self) {
        self.end_lease();
        self.lease.revoked_term = self.raw.raft.term;
    }

    /// Takes the request to renew the lease (set by lease reads as it runs out).
    pub(super) fn take_lease_renewal(&mut self) -> bool {
        std::mem::take(&mut self.lease.renew) && self.lease.duration.is_some()
    }

    /// Notes that a message just stepped came from the leader this peer follows: the start of
    /// a vote refusal window (see `refuses_vote`).
    pub(super) fn note_leader_contact(&mut self, msg_type: MessageType, from: u64) {
        let raft = &self.raw.raft;
        if matches!(
            msg_type,
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        ) && raft.leader_id == from
            && raft.state != raft::StateRole::Leader
        {
            self.leader_contact = Some(Instant::now());
        }
    }

    /// A (pre-)vote request is dropped, whatever its term, while
    /// - this peer heard from its leader less than the vote refusal window ago (wall clock).
    ///   raft-rs refuses such votes itself only for a higher term, and a higher-term message
    ///   of another kind (a stale response) makes a follower forget its leader and then
    ///   grant a same-term vote at once; or
    /// - its store started less than the window ago: its peers may have heard from
    ///   a leader just before the restart.
    ///
    /// Either way granting a vote could elect a second leader while the first one's lease
    /// runs. Votes for a leadership transfer go through (the leader asked for them). Applies
    /// whether this store uses leases or not: other stores' leases count on its refusals.
    pub(super) fn refuses_vote(&self, message: &raft::eraftpb::Message) -> bool {
        if !matches!(
            message.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) || message.context == raft::CAMPAIGN_TRANSFER
        {
            return false;
        }
        self.store_started.elapsed() < self.vote_refusal
            || self
                .leader_contact
                .is_some_and(|at| at.elapsed() < self.vote_refusal)
    }

    /// When this peer last heard from its leader (carried over when a split's peer replaces
    /// an uninitialized one created here by the new region's leader).
    pub fn leader_contact(&self) -> Option<Instant> {
        self.leader_contact
    }

    pub fn set_leader_contact(&mut self, at: Option<Instant>) {
        self.leader_contact = at;
    }
}
