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
//! ends before that: `sent_at` + 80% of the window. A read is served under the lease at once
//! when everything committed is applied here and the lease holds both before and after the
//! engine read (a process paused mid-read — SIGSTOP, a long stall — finds its lease gone and
//! falls back to ReadIndex; `Instant` keeps counting while a process is stopped). When the
//! apply lags, a read that arrives while the lease holds takes this leader's commit index as
//! its read index — no quorum round needed, as no other leader can have committed anything
//! (etcd's lease-based ReadIndex) — and waits with the ReadIndex reads for the apply to
//! reach it.
//!
//! What else could break the argument, and how each is closed:
//! - a voter that restarts forgets it heard from the leader: a store refuses (pre-)votes for
//!   the window after it starts — the longer of its new window and the one it ran with before
//!   (kept in its data dir), in case its timing flags were just shortened — and a split's peer replacing an uninitialized one (created
//!   by the new region's leader) keeps its predecessor's last leader contact;
//! - a leadership transfer makes the transferee campaign at once, lease or not: a leader that
//!   starts one takes no lease for the rest of its term;
//! - a membership change makes another quorum: the lease ends with every change of the
//!   region (and none is taken while one is pending).
//!
//! Stores may run different `--raft-tick-ms` and `--election-ticks`: every raft message and
//! store heartbeat carries its sender's window (`vote_refusal_ms`), and a lease lasts 80% of
//! the smallest window among this store and the region's other stores that have said theirs.
//! A store that has said nothing since this one started cannot be in the confirming quorum
//! (its acknowledgement would have carried its window), so leaving it out is safe. The router
//! keeps the smallest window each store has said since this one started, so a late frame from
//! a restarted store's old connection cannot bring back a longer one.
//!
//! Assumption: `Instant` (CLOCK_MONOTONIC) advances at the same rate everywhere. It does not advance while
//! a whole machine or VM is suspended, so a suspended leader's lease outlives real time: where
//! hosts may be suspended, run with `--lease-reads false`.
//!
//! Everything else about reads — batching, waiting for apply — is shared with the ReadIndex
//! path.
//! `--lease-reads false` turns leases off; the vote refusals stay (other stores' leases may
//! count on them).

use std::time::{Duration, Instant};

use raft::eraftpb::MessageType;

use super::super::read::read_region;
use super::{PeerFsm, PendingRead, ReadBatch};
use crate::value::now_ms;

/// The lease state of one peer.
pub(super) struct Lease {
    /// How long a confirmation lasts by this store's own window; `None`: lease reads are off.
    duration: Option<Duration>,
    /// How long the current lease lasts from its confirmation (its region's smallest window).
    granted: Duration,
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
            granted: Duration::ZERO,
            until: None,
            term: 0,
            revoked_term: 0,
            renew: false,
        }
    }
}

/// A lease of `own` (80% of this store's window), cut to 80% of any smaller window (ms) of the
/// region's other stores.
fn shortest_lease(own: Duration, other_windows_ms: impl Iterator<Item = u64>) -> Duration {
    other_windows_ms
        .map(|ms| Duration::from_millis(ms) * 4 / 5)
        .fold(own, Duration::min)
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
        if !self.lease_holds(started) {
            return Some(read);
        }
        let committed = self.raw.raft.raft_log.committed;
        if self.raw.store().applied_index() < committed {
            // Under the lease no other leader can have committed anything: this leader's
            // commit index is a read index no quorum needs to confirm (raft thesis 6.4). The
            // read waits only for the apply to reach it.
            self.wait_for_apply(read, committed, started);
            self.ask_renewal_if_half_gone(started);
            metrics::counter!("ringkv_raft_lease_reads_total").increment(1);
            return None;
        }
        let response = read_region(&self.engine, self.region(), &read.read, now_ms());
        let finished = Instant::now();
        if !self.lease_holds(finished) {
            return Some(read);
        }
        self.ask_renewal_if_half_gone(finished);
        self.read_keys += read.read.keys().len().max(1) as u64;
        metrics::counter!("ringkv_raft_lease_reads_total").increment(1);
        let _ = read.reply.send(response);
        None
    }

    /// Renew in the background once half of the lease is gone, so a steady stream of reads
    /// never waits for a ReadIndex.
    fn ask_renewal_if_half_gone(&mut self, now: Instant) {
        if let Some(until) = self.lease.until {
            if until.saturating_duration_since(now) < self.lease.granted / 2 {
                self.lease.renew = true;
            }
        }
    }

    /// Queues `read` to be served once `index` is applied (with the reads waiting for the
    /// same index, if the last batch does).
    fn wait_for_apply(&mut self, read: PendingRead, index: u64, at: Instant) {
        if let Some(last) = self.read_batches.back_mut() {
            if last.read_index == Some(index) {
                last.reads.push(read);
                return;
            }
        }
        let id = self.next_read_batch_id;
        self.next_read_batch_id += 1;
        self.read_batches.push_back(ReadBatch {
            id,
            read_index: Some(index),
            sent_at: at,
            term: self.raw.raft.term,
            reads: vec![read],
        });
    }

    /// A ReadIndex issued at `sent_at` in `term` was confirmed by a quorum.
    pub(super) fn extend_lease(&mut self, sent_at: Instant, term: u64) {
        let Some(duration) = self.lease_duration_now() else {
            return;
        };
        if term != self.raw.raft.term || term == self.lease.revoked_term || !self.is_leader() {
            return;
        }
        let until = sent_at + duration;
        if self.lease.term != term || self.lease.until.is_none_or(|old| old < until) {
            self.lease.until = Some(until);
            self.lease.term = term;
            self.lease.granted = duration;
        }
    }

    /// What a confirmation buys now: 80% of the smallest vote refusal window among this
    /// store's and those the region's other stores last said (see the module docs).
    fn lease_duration_now(&self) -> Option<Duration> {
        let own = self.lease.duration?;
        let windows = self.vote_windows.read();
        let others = self
            .region()
            .peers
            .iter()
            .filter(|peer| peer.store_id != self.peer.store_id)
            .filter_map(|peer| windows.get(&peer.store_id).copied());
        Some(shortest_lease(own, others))
    }

    /// The length of the lease held now, in ms (0: none).
    pub(super) fn lease_ms(&self) -> u64 {
        if self.lease_holds(Instant::now()) {
            self.lease.granted.as_millis() as u64
        } else {
            0
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
    /// - its store started less than the window ago (or less than the window it ran with
    ///   before the restart, if longer): its peers may have heard from a leader just before
    ///   the restart.
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
        self.store_started.elapsed() < self.startup_vote_refusal
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_fits_the_smallest_vote_refusal_window() {
        let own = Duration::from_millis(760); // 80% of 950 ms
        assert_eq!(shortest_lease(own, std::iter::empty()), own);
        assert_eq!(shortest_lease(own, [950, 2000].into_iter()), own);
        assert_eq!(
            shortest_lease(own, [950, 450].into_iter()),
            Duration::from_millis(360)
        );
    }
}
