//! The batch loop. Each poller thread owns a disjoint set of peers and, every round:
//!
//! 1. drains its mailbox (raft messages, client commands) and ticks peers when due;
//! 2. collects every touched peer's `Ready`; leaders' appends go out at once. What leaders'
//!    readies commit (durable on a quorum, this store included) is applied and answered;
//! 3. stages new log entries, hard states and received snapshots of ALL touched peers into
//!    one `WriteBatch` (group commit across regions) and writes it. The fsync that makes it
//!    durable is group-committed across rounds too: at most one per `raft_sync_interval`
//!    while writes keep coming (one right away after a quiet spell, once
//!    `raft_sync_batch_writes` client writes wait, or for a snapshot). Until
//!    it, raft goes on (`advance_append_async`) while what must wait for durability is held
//!    (`Unsynced`: a follower's acks and votes; raft itself applies only durable entries);
//! 4. applies committed entries of all peers into one more batch — data and applied index
//!    together, so a crash can never separate them — and answers writes (after apply) and
//!    reads (once applied >= read index);
//! 5. once the interval has passed, syncs and releases what was held (`sync_if_due`).
//!
//! A failed write stops the node: continuing after an fsync error could acknowledge data that
//! is not durable (crash-stop).
//!
//! Crash points (`fail` crate, `failpoints` feature; `FAILPOINTS=name=panic` makes the node
//! abort there, see `tests/nemesis.rs`): `raft_before_log_write`, `raft_after_log_write`,
//! `apply_early_before_write`, `apply_early_after_write` (leaders' apply before the
//! round's raft-log write), `apply_before_write`, `apply_after_write`, `gc_before_write`.
//! The `raft_*_log_write` points bracket the fsync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMsg, MessageType};

use super::msg::{PeerMsg, Reply};
use super::peer::{entry_writes, PeerFsm, Unsynced};
use super::router::{PollerMsg, Router};
use super::{RaftSender, StoreConfig};
use crate::engine::{Engine, EngineError, PeerStorage, PersistedRegion, WriteBatch};
use crate::proto::kvpb::KvResponse;
use crate::proto::raft_serverpb::{PeerState, RaftMessage, SnapshotMeta};
use prost::Message as _;

/// Bound on mailbox messages handled before the round's Ready processing.
const MAX_MESSAGES_PER_ROUND: usize = 4096;

pub struct Poller {
    pub peers: HashMap<u64, PeerFsm>,
    pub mailbox: Receiver<PollerMsg>,
    pub engine: Engine,
    pub sender: Arc<dyn RaftSender>,
    pub router: Arc<Router>,
    pub cfg: StoreConfig,
    /// This poller's position among the store's pollers (see `Router::poller_of`).
    pub index: usize,
    /// Regions whose snapshot range this round claimed in the router (released at its end).
    pub claimed_snapshot_ranges: Vec<u64>,
    /// Split-created regions for other pollers whose mailbox was full: handed over later.
    pub adopt_later: Vec<(u64, bool)>,
    /// Ticks since start.
    pub ticks: u64,
    /// Other stores holding peers of this poller's regions: where store heartbeats go.
    pub known_stores: Vec<u64>,
    /// Peers that tick (not hibernating).
    pub awake: HashSet<u64>,
    /// The async runtime serving this store's clients, when there is one: a round's write
    /// answers go to it as one task (see `answer`).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Readies whose writes are in the engine but not yet synced, in order: what waits for
    /// the next fsync (see `sync_if_due`).
    pub unsynced: Vec<(u64, Unsynced)>,
    /// Whether raft-log writes were made since the last fsync.
    pub log_dirty: bool,
    /// Client writes in the entries written since the last fsync.
    pub unsynced_writes: u64,
    /// When the last fsync started.
    pub last_sync: Option<Instant>,
}

/// Ticks between refreshes of `known_stores`.
const KNOWN_STORES_REFRESH_TICKS: u64 = 50;

impl Poller {
    pub fn run(mut self) {
        // Every event of this store's raft work (elections, splits, membership changes,
        // snapshots, peers created and destroyed) carries the store id.
        let _store = tracing::info_span!("store", store = self.cfg.store_id).entered();
        let started = Instant::now();
        self.rebuild_awake();
        let mut next_tick = started + self.tick_interval();
        let mut touched: HashSet<u64> = HashSet::new();
        loop {
            // Peers left with work by the last round go again without waiting; a deferred
            // fsync is due by its deadline.
            let wait = if touched.is_empty() {
                let until = match self.sync_deadline() {
                    Some(deadline) => deadline.min(next_tick),
                    None => next_tick,
                };
                until.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.mailbox.recv_timeout(wait) {
                Ok(msg) => {
                    if !self.on_mailbox(msg, &mut touched) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..MAX_MESSAGES_PER_ROUND {
                match self.mailbox.try_recv() {
                    Ok(msg) => {
                        if !self.on_mailbox(msg, &mut touched) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.tick(started, &mut touched);
                next_tick = Instant::now() + self.tick_interval();
            }
            match self.process_readies(&touched) {
                Ok(again) => touched = again,
                Err(err) => crash_stop(self.cfg.store_id, &err),
            }
            if let Err(err) = self.sync_if_due(&mut touched) {
                crash_stop(self.cfg.store_id, &err);
            }
        }
    }

    /// Handles one mailbox message; false when the poller must stop.
    fn on_mailbox(&mut self, msg: PollerMsg, touched: &mut HashSet<u64>) -> bool {
        match msg {
            PollerMsg::Peer(region_id, msg) => {
                if let Err(err) = self.handle(region_id, msg, touched) {
                    crash_stop(self.cfg.store_id, &err)
                }
                self.sync_awake(region_id);
            }
            PollerMsg::Adopt {
                region_id,
                campaign,
            } => {
                self.adopt_or_stop(region_id, campaign, touched);
                self.sync_awake(region_id);
            }
            PollerMsg::Shutdown => {
                for peer in self.peers.values_mut() {
                    peer.refuse_queued_writes();
                }
                return false;
            }
        }
        true
    }

    /// One raft tick for every peer that is not hibernating; leaders quiet long enough
    /// hibernate, hibernating followers whose leader's store went silent wake up. Every few
    /// ticks, a store heartbeat to every store this poller's regions live on.
    fn tick(&mut self, started: Instant, touched: &mut HashSet<u64>) {
        let now = Instant::now();
        let silent_after = self.cfg.store_silent_after();
        let hibernate_after = self.cfg.hibernate_after_ticks();
        let mut outbox = Vec::new();
        let silent_stores =
            self.router
                .silent_stores(&self.known_stores, now, started, silent_after);
        if !silent_stores.is_empty() {
            for (region_id, peer) in &mut self.peers {
                if peer.hibernating && peer.leader_store_silent(&silent_stores) {
                    tracing::debug!(region = region_id, "leader's store silent: waking up");
                    peer.wake();
                    self.awake.insert(*region_id);
                }
            }
        }
        // Only awake peers are visited: an idle store's tick costs nothing per region.
        let awake: Vec<u64> = self.awake.iter().copied().collect();
        for region_id in awake {
            let Some(peer) = self.peers.get_mut(&region_id) else {
                self.awake.remove(&region_id);
                continue;
            };
            if peer.hibernating {
                self.awake.remove(&region_id);
                continue;
            }
            peer.raw.tick();
            touched.insert(region_id);
            if self.cfg.hibernate_regions && peer.ready_to_hibernate(hibernate_after) {
                peer.hibernate(&mut outbox);
                self.awake.remove(&region_id);
            }
        }
        self.ticks += 1;
        if self.ticks % KNOWN_STORES_REFRESH_TICKS == 1 {
            self.refresh_known_stores();
            self.rebuild_awake();
        }
        if self.ticks % self.cfg.store_heartbeat_ticks() as u64 == 0 {
            for &store_id in &self.known_stores {
                let disk_low = self.cfg.disk_low.load(std::sync::atomic::Ordering::Relaxed);
                outbox.push(store_heartbeat(&self.cfg, store_id, disk_low));
            }
        }
        for message in outbox {
            self.sender.send(message);
        }
        let hibernating = self.peers.len().saturating_sub(self.awake.len());
        metrics::gauge!("ringkv_raft_hibernating_regions", "poller" => self.index.to_string())
            .set(hibernating as f64);
    }

    /// Keeps `awake` in step with a peer after a message or command for it.
    fn sync_awake(&mut self, region_id: u64) {
        match self.peers.get(&region_id) {
            Some(peer) if !peer.hibernating => {
                self.awake.insert(region_id);
            }
            _ => {
                self.awake.remove(&region_id);
            }
        }
    }

    /// Recomputes `awake` from every peer: the safety net for any path that creates, wakes
    /// or destroys a peer without a `sync_awake` (a peer missing here would never tick).
    fn rebuild_awake(&mut self) {
        self.awake = self
            .peers
            .iter()
            .filter(|(_, peer)| !peer.hibernating)
            .map(|(id, _)| *id)
            .collect();
    }

    fn refresh_known_stores(&mut self) {
        let mut stores: Vec<u64> = self
            .peers
            .values()
            .flat_map(|peer| peer.region().peers.iter().map(|p| p.store_id))
            .filter(|&store_id| store_id != self.cfg.store_id)
            .collect();
        stores.sort_unstable();
        stores.dedup();
        self.known_stores = stores;
    }

    fn adopt_or_stop(&mut self, region_id: u64, campaign: bool, touched: &mut HashSet<u64>) {
        if let Err(err) = self.adopt(region_id, campaign, touched) {
            crash_stop(self.cfg.store_id, &err)
        }
    }

    /// Starts the peer of a region a split created here (its state is already on disk),
    /// replacing an uninitialized peer created for it by a faster replica's messages.
    fn adopt(
        &mut self,
        region_id: u64,
        campaign: bool,
        touched: &mut HashSet<u64>,
    ) -> Result<(), EngineError> {
        let mut replaced = None;
        if let Some(existing) = self.peers.get(&region_id) {
            if existing.is_initialized() {
                return Ok(()); // already here whole (a snapshot got here first)
            }
            replaced = self.peers.remove(&region_id);
        }
        let Some(mut persisted) = PersistedRegion::load(&self.engine, region_id)? else {
            tracing::error!(region = region_id, "split region to adopt is not on disk");
            return Ok(());
        };
        if persisted.region_state.state == PeerState::Tombstone as i32 {
            return Ok(());
        }
        // An uninitialized peer of the region (created by a faster replica's messages) may
        // have voted in a newer term since the split's state was written, and may have
        // written its own empty-log raft state over it: keep its term and vote, and the
        // split's log position.
        let init = crate::region::RAFT_INIT_LOG_INDEX;
        let raft_state = &mut persisted.raft_state;
        // What the replaced peer heard from the new region's leader still binds its votes
        // (leases of that leader count on it).
        let leader_contact = replaced.as_ref().and_then(|old| old.leader_contact());
        if let Some(old) = replaced {
            let (term, vote) = (old.raw.raft.term, old.raw.raft.vote);
            if term > raft_state.term {
                raft_state.term = term;
                raft_state.vote = vote;
            }
        }
        if raft_state.last_index < init {
            raft_state.last_index = init;
            raft_state.last_term = crate::region::RAFT_INIT_LOG_TERM;
        }
        raft_state.commit = raft_state.commit.max(init);
        let mut batch = self.engine.batch();
        batch.put_msg(
            &self.engine,
            crate::engine::CF_META,
            &crate::keys::raft_state_key(region_id),
            &persisted.raft_state,
        )?;
        self.engine.write(batch, true)?;
        let storage = PeerStorage::new(
            self.engine.clone(),
            self.cfg.store_id,
            self.cfg.snap_dir.clone(),
            persisted,
        );
        let mut fsm = match PeerFsm::new(storage, self.engine.clone(), &self.cfg) {
            Ok(fsm) => fsm,
            Err(err) => {
                tracing::error!(region = region_id, %err, "cannot start the split region's peer");
                return Ok(());
            }
        };
        fsm.set_leader_contact(leader_contact);
        if campaign {
            // The parent's leader was here: the new region elects at once, not after an
            // election timeout.
            if let Err(err) = fsm.raw.campaign() {
                tracing::debug!(region = region_id, %err, "campaign");
            }
        }
        self.router.update_region(fsm.region().clone());
        self.peers.insert(region_id, fsm);
        self.awake.insert(region_id);
        touched.insert(region_id);
        Ok(())
    }

    fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.raft_tick_ms)
    }

    fn handle(
        &mut self,
        region_id: u64,
        msg: PeerMsg,
        touched: &mut HashSet<u64>,
    ) -> Result<(), EngineError> {
        if let PeerMsg::Raft(message) = msg {
            return self.on_raft_message(region_id, message, touched);
        }
        let Some(peer) = self.peers.get_mut(&region_id) else {
            if let PeerMsg::Command(command) = msg {
                // The router knew the region but this poller does not: answer, don't hang.
                super::reply_region_not_found(command, region_id);
            }
            return Ok(());
        };
        match msg {
            PeerMsg::Raft(_) => {}
            PeerMsg::Command(command) => peer.handle_command(command),
            PeerMsg::Unreachable { to_peer_id } => {
                peer.wake();
                peer.report_unreachable(to_peer_id)
            }
            PeerMsg::SnapshotStatus { to_peer_id, ok } => {
                peer.wake();
                peer.report_snapshot(to_peer_id, ok)
            }
            PeerMsg::Status(reply) => {
                let _ = reply.send(peer.status());
                return Ok(());
            }
        }
        touched.insert(region_id);
        Ok(())
    }

    /// A raft message for `region_id`: stepped into the local peer, or answered with a
    /// tombstone when it comes from a removed peer, or — for a region this store has no peer
    /// of — the start of a new peer (a leader replicating to a learner added here), unless a
    /// tombstone shows it is for a peer already destroyed here.
    fn on_raft_message(
        &mut self,
        region_id: u64,
        message: RaftMessage,
        touched: &mut HashSet<u64>,
    ) -> Result<(), EngineError> {
        let Some(to_peer) = message.to_peer else {
            return Ok(());
        };
        if to_peer.store_id != self.cfg.store_id {
            tracing::debug!(
                region = region_id,
                to_store = to_peer.store_id,
                "raft message for another store dropped"
            );
            return Ok(());
        }
        let their_conf_ver = message.region_epoch.unwrap_or_default().conf_ver;
        if let Some(peer) = self.peers.get_mut(&region_id) {
            let local_id = peer.peer.id;
            if message.is_tombstone {
                let ours = peer.region().epoch.unwrap_or_default().conf_ver;
                if to_peer.id == local_id && their_conf_ver > ours {
                    self.destroy_peer(region_id, "removed from the region (told by a member)")?;
                }
                return Ok(());
            }
            if to_peer.id < local_id {
                return Ok(()); // for an earlier incarnation of our peer
            }
            if to_peer.id == local_id {
                if let Some(reply) = peer.tombstone_reply_for(&message) {
                    self.sender.send(reply);
                    return Ok(());
                }
                if !self.claim_snapshot_range(region_id, &message) {
                    return Ok(());
                }
                let Some(peer) = self.peers.get_mut(&region_id) else {
                    return Ok(());
                };
                peer.step(message);
                touched.insert(region_id);
                return Ok(());
            }
            // A newer peer of this region is being placed here: ours was removed while it
            // could not hear about it.
            self.destroy_peer(region_id, "superseded by a newer peer of the region")?;
        }
        if message.is_tombstone {
            return Ok(());
        }
        if let Some(state) = PeerStorage::load_region_state(&self.engine, region_id)? {
            let known = state.region.clone().unwrap_or_default();
            let known_epoch = known.epoch.unwrap_or_default();
            let tombstone = state.state == PeerState::Tombstone as i32;
            // A sender that is not in the region as this store last knew it, with an older
            // configuration: removed (perhaps while its store was down) and never told — the
            // members that could tell it may all be gone. Tell it (TiKV's stale-message reply).
            if let (true, Some(from)) = (tombstone, message.from_peer) {
                if their_conf_ver < known_epoch.conf_ver
                    && !known.peers.iter().any(|p| p.id == from.id)
                {
                    self.sender.send(RaftMessage {
                        region_id,
                        from_peer: None,
                        to_peer: Some(from),
                        region_epoch: Some(known_epoch),
                        message: Default::default(),
                        is_tombstone: true,
                        hibernate: false,
                        disk_low: self.cfg.disk_low.load(std::sync::atomic::Ordering::Relaxed),
                        vote_refusal_ms: self.cfg.vote_refusal_window().as_millis() as u64,
                    });
                    return Ok(());
                }
            }
            let stale =
                to_peer.id <= state.destroyed_peer_id || their_conf_ver <= known_epoch.conf_ver;
            if !tombstone || stale {
                tracing::debug!(
                    region = region_id,
                    to_peer = to_peer.id,
                    "raft message for a destroyed peer dropped"
                );
                return Ok(());
            }
        }
        if !may_create_peer(&message) || !self.claim_snapshot_range(region_id, &message) {
            return Ok(());
        }
        let storage = PeerStorage::uninitialized(
            self.engine.clone(),
            self.cfg.store_id,
            self.cfg.snap_dir.clone(),
            region_id,
        )?;
        let mut fsm = match PeerFsm::create(storage, self.engine.clone(), &self.cfg, to_peer) {
            Ok(fsm) => fsm,
            Err(err) => {
                tracing::warn!(region = region_id, %err, "cannot create peer");
                return Ok(());
            }
        };
        tracing::info!(
            region = region_id,
            peer = to_peer.id,
            "creating a peer to join the region"
        );
        metrics::counter!("ringkv_raft_peers_created_total").increment(1);
        self.router.update_region(fsm.region().clone());
        fsm.step(message);
        self.peers.insert(region_id, fsm);
        self.awake.insert(region_id);
        touched.insert(region_id);
        Ok(())
    }

    /// For a raft snapshot message: claims its range until the end of this round (when it is
    /// applied, or was refused by raft). False when another local region — or another
    /// snapshot accepted and not applied yet — owns part of it: applying it would overwrite
    /// that region's data (e.g. the new half of a split this store has not applied yet). The
    /// message is dropped and raft sends the snapshot again later.
    fn claim_snapshot_range(&mut self, region_id: u64, message: &RaftMessage) -> bool {
        let Ok(raft_msg) = RaftMsg::parse_from_bytes(&message.message) else {
            return true;
        };
        if raft_msg.get_msg_type() != MessageType::MsgSnapshot {
            return true;
        }
        let Some(region) = SnapshotMeta::decode(raft_msg.get_snapshot().get_data())
            .ok()
            .and_then(|meta| meta.region)
        else {
            return true; // raft refuses a snapshot it cannot read
        };
        match self
            .router
            .reserve_snapshot_range(region_id, region.start_hash, region.end_hash)
        {
            Ok(()) => {
                self.claimed_snapshot_ranges.push(region_id);
                true
            }
            Err(other) => {
                tracing::info!(
                    region = region_id,
                    overlaps = other,
                    "snapshot overlapping a local region dropped"
                );
                false
            }
        }
    }

    /// Ends this round's snapshot claims: the snapshots were applied (their regions are in the
    /// router now) or refused.
    fn release_claims(&mut self) {
        let claimed = std::mem::take(&mut self.claimed_snapshot_ranges);
        self.router.release_snapshot_ranges(&claimed);
    }

    /// Destroys a local peer (synced, one batch) and forgets it.
    fn destroy_peer(&mut self, region_id: u64, why: &str) -> Result<(), EngineError> {
        let Some(mut peer) = self.peers.remove(&region_id) else {
            return Ok(());
        };
        let region = peer.region().clone();
        // Another local region may already own part of the range (it was split or moved
        // here meanwhile): then its data is not ours to delete.
        let shared = !self
            .router
            .overlapping(region_id, region.start_hash, region.end_hash)
            .is_empty();
        let mut batch = self.engine.batch();
        peer.destroy(!shared, &mut batch)?;
        self.engine.write(batch, true)?;
        self.router.remove_region(region_id);
        tracing::info!(
            region = region_id,
            peer = peer.peer.id,
            data_deleted = !shared,
            reason = why,
            "peer destroyed"
        );
        metrics::counter!("ringkv_raft_peers_destroyed_total").increment(1);
        Ok(())
    }

    /// Runs one round for `touched` peers; returns the peers that still have work.
    fn process_readies(&mut self, touched: &HashSet<u64>) -> Result<HashSet<u64>, EngineError> {
        let mut again = HashSet::new();
        let mut outbox: Vec<RaftMessage> = Vec::new();
        let mut readies = Vec::new();
        for region_id in touched {
            let Some(peer) = self.peers.get_mut(region_id) else {
                continue;
            };
            peer.flush_proposals();
            peer.flush_reads();
            if peer.pending_peers_changed() {
                // E.g. a learner caught up: placement may promote it now.
                self.router.notify_change();
            }
            if !peer.raw.has_ready() {
                continue;
            }
            let mut ready = peer.raw.ready();
            peer.take_ready_messages(&mut ready, &mut outbox);
            readies.push((*region_id, ready));
        }
        // Leaders' appends go out before our own fsync (raft thesis 10.2.1), and before any
        // peer's entries are staged.
        self.flush_outbox(&mut outbox);
        let router = self.router.clone();
        self.adopt_later
            .retain(|(region_id, campaign)| !router.try_adopt(*region_id, *campaign));
        if readies.is_empty() {
            self.release_claims();
            return Ok(again);
        }
        // What leaders' readies commit was durable on a quorum, this store included, before
        // this round (raft hands out only persisted committed entries): apply it and answer
        // now rather than after this round's own fsync, which only covers newer entries.
        let mut early_batch = self.engine.batch();
        let mut early_replies = Vec::new();
        let mut early_applied = Vec::new();
        for (region_id, _) in &readies {
            if let Some(peer) = self.peers.get_mut(region_id) {
                if peer.apply_ready_committed(&mut early_batch, &mut early_replies)? {
                    early_applied.push(*region_id);
                }
            }
        }
        if !early_applied.is_empty() {
            self.write_applied(early_batch, early_replies, &early_applied, Phase::Early)?;
        }
        // Reads whose read index is applied now (by the early apply, or already when their
        // ReadIndex was confirmed in this Ready) need not wait for the log write either.
        for (region_id, _) in &readies {
            if let Some(peer) = self.peers.get_mut(region_id) {
                peer.serve_reads();
            }
        }
        let mut raft_batch = self.engine.batch();
        let mut advanced = Vec::with_capacity(readies.len());
        let mut snapshot_applied = false;
        for (region_id, mut ready) in readies {
            let Some(peer) = self.peers.get_mut(&region_id) else {
                continue;
            };
            self.unsynced_writes += ready.entries().iter().map(entry_writes).sum::<u64>();
            let snapshot = peer.handle_ready_persist(&mut ready, &mut raft_batch)?;
            snapshot_applied |= snapshot.is_some();
            let unsynced = peer.advance_unsynced(ready, snapshot);
            self.unsynced.push((region_id, unsynced));
            advanced.push(region_id);
        }
        if !raft_batch.is_empty() {
            // Synced now when due, when enough writes wait for it, or when a snapshot's data
            // must be durable before its file goes; otherwise the fsync waits for more
            // rounds' writes (`sync_if_due`).
            let sync = snapshot_applied
                || self.sync_deadline_passed()
                || self.unsynced_writes >= self.cfg.raft_sync_batch_writes;
            if sync {
                self.sync_log(Some(raft_batch))?;
            } else {
                self.write_timed(raft_batch, false, &LOG_WRITE)?;
                self.log_dirty = true;
            }
        }
        if !self.log_dirty {
            // Nothing waits for an fsync: what was held goes now (and raft goes on).
            self.release_unsynced(&mut outbox, &mut again);
        }
        self.flush_outbox(&mut outbox);
        let mut apply_batch = self.engine.batch();
        let mut replies = Vec::new();
        for region_id in &advanced {
            if let Some(peer) = self.peers.get_mut(region_id) {
                peer.apply_pending(&mut apply_batch, &mut replies)?;
            }
        }
        self.write_applied(apply_batch, replies, &advanced, Phase::AfterLogWrite)?;

        let mut gc_batch = self.engine.batch();
        let mut removed = Vec::new();
        let mut split_created = Vec::new();
        for region_id in advanced {
            if let Some(peer) = self.peers.get_mut(&region_id) {
                split_created.append(&mut peer.split_created);
                if peer.removed {
                    removed.push(region_id);
                    continue;
                }
                peer.after_apply(&mut gc_batch)?;
                // Advancing may unlock more work (entries committed meanwhile).
                if peer.raw.has_ready() {
                    again.insert(region_id);
                }
            }
        }
        fail::fail_point!("gc_before_write");
        self.engine.write(gc_batch, false)?;
        for region_id in removed {
            self.destroy_peer(region_id, "removed from the region")?;
        }
        for (region_id, campaign) in split_created {
            if self.router.poller_of(region_id) == self.index {
                let mut created = HashSet::new();
                self.adopt(region_id, campaign, &mut created)?;
                again.extend(created);
            } else {
                self.adopt_later.push((region_id, campaign));
            }
        }
        self.release_claims();
        Ok(again)
    }

    /// Writes what `regions` applied (not synced: the raft log they were applied from is
    /// durable), points the router at regions whose shape changed, then answers the clients.
    fn write_applied(
        &mut self,
        batch: WriteBatch,
        replies: Vec<(Reply, KvResponse)>,
        regions: &[u64],
        phase: Phase,
    ) -> Result<(), EngineError> {
        match phase {
            Phase::Early => fail::fail_point!("apply_early_before_write"),
            Phase::AfterLogWrite => fail::fail_point!("apply_before_write"),
        }
        self.write_timed(batch, false, &APPLY_WRITE)?;
        match phase {
            Phase::Early => fail::fail_point!("apply_early_after_write"),
            Phase::AfterLogWrite => fail::fail_point!("apply_after_write"),
        }
        for region_id in regions {
            if let Some(peer) = self.peers.get_mut(region_id) {
                if std::mem::take(&mut peer.region_changed) {
                    self.router.update_region(peer.region().clone());
                }
            }
        }
        // Counted before the answers go out, so that a client that got its answer finds it.
        let answered = replies.len() as u64;
        metrics::counter!("ringkv_raft_applied_commands_total").increment(answered);
        if phase == Phase::Early {
            metrics::counter!("ringkv_raft_answered_before_log_write_total").increment(answered);
        }
        self.answer(replies);
        Ok(())
    }

    /// Sends a round's answers. Sent from this thread, each answer that finds the runtime's
    /// worker parked wakes it on its own (an eventfd write, a cross-thread wake-up); sent from
    /// one task on the runtime, they wake the worker once and the requests they finish are
    /// scheduled locally.
    fn answer(&self, replies: Vec<(Reply, KvResponse)>) {
        match &self.runtime {
            Some(runtime) if replies.len() > 1 => {
                runtime.spawn(async move {
                    for (reply, response) in replies {
                        let _ = reply.send(response);
                    }
                });
            }
            _ => {
                for (reply, response) in replies {
                    let _ = reply.send(response);
                }
            }
        }
    }

    /// When the deferred fsync is due: `None` while nothing waits for one.
    fn sync_deadline(&self) -> Option<Instant> {
        if !self.log_dirty {
            return None;
        }
        Some(match self.last_sync {
            Some(last) => last + self.cfg.raft_sync_interval,
            None => Instant::now(),
        })
    }

    /// Whether an fsync now keeps to `raft_sync_interval`.
    fn sync_deadline_passed(&self) -> bool {
        self.last_sync
            .is_none_or(|last| last.elapsed() >= self.cfg.raft_sync_interval)
    }

    /// Makes the raft log durable: `batch` written synced, or (none) the writes made so far.
    fn sync_log(&mut self, batch: Option<WriteBatch>) -> Result<(), EngineError> {
        fail::fail_point!("raft_before_log_write");
        let started = Instant::now();
        match batch {
            Some(batch) => self.write_timed(batch, true, &LOG_WRITE)?,
            None => self.engine.sync_wal()?,
        }
        metrics::histogram!("ringkv_raft_log_sync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        fail::fail_point!("raft_after_log_write");
        metrics::counter!("ringkv_raft_log_fsync_total").increment(1);
        self.last_sync = Some(started);
        self.log_dirty = false;
        self.unsynced_writes = 0;
        Ok(())
    }

    /// Hands every held ready its durability: what waited for it joins `outbox`, and its
    /// peer goes again (raft may now hand out what the writes unblocked).
    fn release_unsynced(&mut self, outbox: &mut Vec<RaftMessage>, again: &mut HashSet<u64>) {
        for (region_id, unsynced) in self.unsynced.drain(..) {
            if let Some(peer) = self.peers.get_mut(&region_id) {
                peer.on_synced(unsynced, outbox);
                again.insert(region_id);
            }
        }
    }

    /// The deferred fsync, once due: syncs what earlier rounds wrote and releases what
    /// waited for it.
    fn sync_if_due(&mut self, touched: &mut HashSet<u64>) -> Result<(), EngineError> {
        if !self.log_dirty || !self.sync_deadline_passed() {
            return Ok(());
        }
        self.sync_log(None)?;
        let mut outbox = Vec::new();
        self.release_unsynced(&mut outbox, touched);
        self.flush_outbox(&mut outbox);
        Ok(())
    }

    /// Writes `batch`, recording its duration and size in `histograms`.
    fn write_timed(
        &self,
        batch: WriteBatch,
        sync: bool,
        histograms: &WriteHistograms,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let bytes = batch.size_bytes();
        self.engine.write(batch, sync)?;
        metrics::histogram!(histograms.duration).record(started.elapsed().as_secs_f64());
        metrics::histogram!(histograms.size).record(bytes as f64);
        Ok(())
    }

    fn flush_outbox(&self, outbox: &mut Vec<RaftMessage>) {
        for message in outbox.drain(..) {
            self.sender.send(message);
        }
    }
}

/// The histograms of one kind of write (METRICS.md).
struct WriteHistograms {
    duration: &'static str,
    size: &'static str,
}

const LOG_WRITE: WriteHistograms = WriteHistograms {
    duration: "ringkv_raft_log_write_duration_seconds",
    size: "ringkv_raft_log_write_size_bytes",
};

const APPLY_WRITE: WriteHistograms = WriteHistograms {
    duration: "ringkv_raft_apply_write_duration_seconds",
    size: "ringkv_raft_apply_write_size_bytes",
};

/// Which apply write of a round: leaders' early one, before the raft-log write, or the one
/// after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Early,
    AfterLogWrite,
}

/// Stops the process after a storage failure. Raft's safety rests on what it was told is
/// durable; after a failed write that is no longer known, so the node must not go on.
fn crash_stop(store_id: u64, err: &EngineError) -> ! {
    tracing::error!(store = store_id, %err, "storage write failed; stopping the node (crash-stop)");
    eprintln!("ringkv store {store_id}: fatal storage error: {err}; aborting");
    std::process::abort();
}

/// Only a leader's replication messages may create a peer here; anything else for an
/// unknown region is stale or misdirected.
fn may_create_peer(message: &RaftMessage) -> bool {
    match RaftMsg::parse_from_bytes(&message.message) {
        Ok(m) => matches!(
            m.get_msg_type(),
            MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
        ),
        Err(_) => false,
    }
}

/// A store heartbeat (region 0): tells `to_store` that this store is alive, whether it is low
/// on disk, and its vote refusal window.
fn store_heartbeat(cfg: &StoreConfig, to_store: u64, disk_low: bool) -> RaftMessage {
    use crate::proto::metapb::Peer;
    RaftMessage {
        region_id: 0,
        vote_refusal_ms: cfg.vote_refusal_window().as_millis() as u64,
        from_peer: Some(Peer {
            store_id: cfg.store_id,
            ..Default::default()
        }),
        to_peer: Some(Peer {
            store_id: to_store,
            ..Default::default()
        }),
        disk_low,
        ..Default::default()
    }
}
