//! One region's peer: a raft `RawNode` plus the bookkeeping that turns raft progress into
//! answers — pending writes matched at apply by (index, term, request id), pending reads
//! served once `applied >= read index`.
//!
//! The peer does no I/O of its own: the poller hands it write batches to stage into and an
//! outbox for raft messages, then writes and sends for many peers at once.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message as RaftMsg, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, Ready, SnapshotStatus, StateRole, Storage as _};

use super::msg::{self, ChangePeer, Command, PeerStatus, ReadOp, RegionStatus, Reply};
use super::read::read_region;
use super::StoreConfig;
use crate::engine::{
    Engine, PeerStorage, PersistedRegion, Result as EngineResult, WriteBatch, CF_DEFAULT,
};
use crate::keys;
use crate::proto::kvpb::KvResponse;
use crate::proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use crate::proto::raft_serverpb::{
    admin_cmd, AdminCmd, BatchedWrite, ChangePeerContext, Condition, RaftCmd, RaftMessage,
    SplitCmd, WriteOp,
};
use crate::region::{find_peer, find_peer_on_store, region_contains};
use crate::value::now_ms;

mod hibernate;
mod lease;

/// Upper bound on reads waiting for one peer (beyond it clients get ServerIsBusy).
const MAX_PENDING_READS: usize = 65_536;
/// Upper bound on writes in flight for one peer.
const MAX_PENDING_WRITES: usize = 65_536;
/// Recently accessed key hashes kept per leader, to split a hot region where its load halves.
const LOAD_SAMPLES: usize = 256;
/// Fewer samples than this give no load-split point.
const MIN_LOAD_SAMPLES: usize = 32;

struct PendingWrite {
    index: u64,
    term: u64,
    request_id: u64,
    /// Position among the writes of its entry (0 unless batched).
    slot: usize,
    reply: Reply,
}

/// Bounds on one batched write entry: a batch is proposed early when the next write would
/// take it past either.
const MAX_BATCH_WRITES: usize = 512;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What applying one entry answers: each of its writes' request id and response.
type EntryResponses = Vec<(u64, KvResponse)>;

struct PendingRead {
    read: ReadOp,
    reply: Reply,
}

/// Reads that share one ReadIndex round trip (ReadIndex batching).
struct ReadBatch {
    id: u64,
    read_index: Option<u64>,
    /// When the ReadIndex was issued, and in which term: a confirmation extends the lease
    /// from then.
    sent_at: std::time::Instant,
    term: u64,
    reads: Vec<PendingRead>,
}

/// User values (with their expiry, unix ms, 0 = never) written by the apply batch being built
/// (not yet visible in the engine).
#[derive(Default)]
struct Staged {
    values: HashMap<Bytes, Option<(Bytes, u64)>>,
}

impl Staged {
    fn record(&mut self, key: &Bytes, value: Option<(Bytes, u64)>) {
        self.values.insert(key.clone(), value);
    }

    /// The value `key` will hold once the batch is written, with its expiry, expired or not.
    fn get_stored(&self, engine: &Engine, key: &Bytes) -> EngineResult<Option<(Bytes, u64)>> {
        match self.values.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(engine
                .get_stored_value(key)?
                .map(|(value, expire_at_ms)| (Bytes::from(value), expire_at_ms))),
        }
    }

    /// The live value `key` will hold at `now_ms` once the batch is written.
    fn get(&self, engine: &Engine, key: &Bytes, now_ms: u64) -> EngineResult<Option<Bytes>> {
        Ok(self
            .get_stored(engine, key)?
            .filter(|(_, expire_at_ms)| !expired(*expire_at_ms, now_ms))
            .map(|(value, _)| value))
    }
}

/// Whether a value expiring at `expire_at_ms` (0 = never) is gone at `now_ms`. A command
/// without a clock (`now_ms` 0) sees nothing expired.
fn expired(expire_at_ms: u64, now_ms: u64) -> bool {
    expire_at_ms != 0 && now_ms != 0 && expire_at_ms <= now_ms
}

/// Client writes an entry carries: a write entry's context holds their count (big-endian
/// u32); any other entry is one command.
pub fn entry_writes(entry: &Entry) -> u64 {
    <[u8; 4]>::try_from(entry.get_context()).map_or(1, |count| u64::from(u32::from_be_bytes(count)))
}

/// A ready whose writes are in the engine but not yet synced (see
/// [`PeerFsm::advance_unsynced`]).
pub struct Unsynced {
    /// The peer it belongs to: a region's peer destroyed and created anew meanwhile is not
    /// told about its predecessor's writes.
    peer_id: u64,
    number: u64,
    /// What may go out only once the writes are durable (a follower's acks, votes).
    messages: Vec<RaftMessage>,
    /// A snapshot the ready applied: its file goes once the data is durable.
    snapshot: Option<Snapshot>,
}

pub struct PeerFsm {
    pub raw: RawNode<PeerStorage>,
    pub peer: Peer,
    engine: Engine,
    /// Peers learned from incoming messages: how an uninitialized peer (whose region lists
    /// nobody yet) knows where to answer the leader.
    peer_cache: HashMap<u64, Peer>,
    /// The region's range or peers changed this round (the router must learn it).
    pub region_changed: bool,
    /// This peer applied its own removal: destroy it once the apply batch is written.
    pub removed: bool,
    /// The pending peers last seen (as leader), to notice when one catches up.
    last_pending: Vec<u64>,
    /// Regions this round's splits created here (persisted in the apply batch), and whether
    /// their peer here should campaign: the poller starts them once the batch is written.
    pub split_created: Vec<(u64, bool)>,
    /// User data bytes and keys applied, and keys read here as leader, since start (see
    /// `RegionStatus`).
    written_bytes: u64,
    written_keys: u64,
    read_keys: u64,
    /// Hashes of the most recently accessed keys (as leader): where a split halves the load.
    recent_hashes: VecDeque<u64>,
    /// This store's disk-low flag (shared), and the other stores whose latest message said
    /// their disk is low (kept by the router, see `StoreConfig`).
    disk_low: std::sync::Arc<std::sync::atomic::AtomicBool>,
    low_disk_stores: std::sync::Arc<parking_lot::RwLock<std::collections::HashSet<u64>>>,
    pending_writes: VecDeque<PendingWrite>,
    /// Writes received this round, proposed together as one entry when the round collects
    /// readies (`flush_proposals`): one log entry, one engine key and one decode per batch on
    /// every replica, instead of per write.
    write_batch: Vec<(BatchedWrite, Reply)>,
    write_batch_bytes: usize,
    /// Reads received this round, not yet given to raft.
    new_reads: Vec<PendingRead>,
    read_batches: VecDeque<ReadBatch>,
    next_read_batch_id: u64,
    /// Committed entries handed out by raft and not yet applied.
    committed: Vec<Entry>,
    snapshots_applied: u64,
    was_leader: bool,
    gc_threshold: u64,
    gc_size: u64,
    /// While a split this leader proposed — or any entry its log held when it was elected —
    /// is not yet applied here (that log index, 0 = none), every commit is broadcast at once
    /// so followers apply a split — and start the new region's peers — without waiting for
    /// the next heartbeat.
    bcast_commit_until: u64,
    /// Peers sent an append since their last heartbeat: their next plain heartbeat is left
    /// out (see `wrap_messages`). A handful of ids, empty when idle.
    appended_since_heartbeat: Vec<u64>,
    lease: lease::Lease,
    /// When this store started, and how long a peer grants no vote after it or after hearing
    /// from its leader (see `lease.rs`).
    store_started: std::time::Instant,
    startup_vote_refusal: std::time::Duration,
    vote_refusal: std::time::Duration,
    /// Other stores' vote refusal windows (ms), kept by the router: the lease fits the
    /// smallest of this region's stores.
    vote_windows: std::sync::Arc<parking_lot::RwLock<HashMap<u64, u64>>>,
    /// When this peer last heard from the leader it follows (see `lease.rs`).
    leader_contact: Option<std::time::Instant>,
    /// Not ticking (see `peer/hibernate.rs`); cleared by any message or command.
    pub hibernating: bool,
    /// Quiet ticks counted toward hibernation (as leader).
    idle_ticks: usize,
}

/// Forwards raft-rs's slog records to `tracing`, tagged with the region.
struct TracingDrain {
    region_id: u64,
    peer_id: u64,
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let (region, peer) = (self.region_id, self.peer_id);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", region, peer, "{}", record.msg())
            }
            slog::Level::Warning => {
                tracing::warn!(target: "raft", region, peer, "{}", record.msg())
            }
            slog::Level::Info => tracing::info!(target: "raft", region, peer, "{}", record.msg()),
            _ => tracing::debug!(target: "raft", region, peer, "{}", record.msg()),
        }
        Ok(())
    }
}

impl PeerFsm {
    /// The peer of an initialized (bootstrapped or snapshot-filled) region on this store.
    pub fn new(storage: PeerStorage, engine: Engine, cfg: &StoreConfig) -> Result<PeerFsm, String> {
        let region = storage.region.clone();
        let peer = find_peer_on_store(&region, cfg.store_id)
            .cloned()
            .ok_or_else(|| format!("region {} has no peer on store {}", region.id, cfg.store_id))?;
        PeerFsm::with_peer(storage, engine, cfg, peer)
    }

    /// A peer this store is asked to host by a region's leader (its first message names it):
    /// empty until the leader's snapshot arrives.
    pub fn create(
        storage: PeerStorage,
        engine: Engine,
        cfg: &StoreConfig,
        peer: Peer,
    ) -> Result<PeerFsm, String> {
        PeerFsm::with_peer(storage, engine, cfg, peer)
    }

    fn with_peer(
        storage: PeerStorage,
        engine: Engine,
        cfg: &StoreConfig,
        peer: Peer,
    ) -> Result<PeerFsm, String> {
        let region = storage.region.clone();
        let raft_cfg = raft::Config {
            id: peer.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: storage.applied_index(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // Followers learn a new commit index from the next append or heartbeat instead
            // of from an append sent for nothing else: per write that saves each follower a
            // message, a raft-state write and a separate apply, and the leader a response.
            // Only stale reads on followers see writes a little later; conf changes (raft)
            // and splits (`bcast_commit_until`) still broadcast.
            skip_bcast_commit: true,
            ..Default::default()
        };
        let logger = slog::Logger::root(
            slog::Fuse(TracingDrain {
                region_id: region.id,
                peer_id: peer.id,
            }),
            slog::o!(),
        );
        let raw = RawNode::new(&raft_cfg, storage, &logger)
            .map_err(|e| format!("region {}: starting raft: {e}", region.id))?;
        Ok(PeerFsm {
            raw,
            peer,
            engine,
            peer_cache: HashMap::new(),
            region_changed: false,
            removed: false,
            last_pending: Vec::new(),
            split_created: Vec::new(),
            written_bytes: 0,
            written_keys: 0,
            read_keys: 0,
            recent_hashes: VecDeque::with_capacity(LOAD_SAMPLES),
            disk_low: cfg.disk_low.clone(),
            low_disk_stores: cfg.low_disk_stores.clone(),
            pending_writes: VecDeque::new(),
            write_batch: Vec::new(),
            write_batch_bytes: 0,
            new_reads: Vec::new(),
            read_batches: VecDeque::new(),
            next_read_batch_id: 1,
            hibernating: false,
            idle_ticks: 0,
            committed: Vec::new(),
            snapshots_applied: 0,
            was_leader: false,
            gc_threshold: cfg.raft_log_gc_threshold,
            gc_size: cfg.raft_log_gc_size,
            bcast_commit_until: 0,
            appended_since_heartbeat: Vec::new(),
            lease: lease::Lease::new(cfg.lease_duration()),
            store_started: cfg.started,
            startup_vote_refusal: cfg.startup_vote_refusal.max(cfg.vote_refusal_window()),
            vote_refusal: cfg.vote_refusal_window(),
            vote_windows: cfg.vote_windows.clone(),
            leader_contact: None,
        })
    }

    pub fn region(&self) -> &Region {
        &self.raw.store().region
    }

    pub fn region_id(&self) -> u64 {
        self.raw.store().region_id()
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn leader_peer(&self) -> Option<Peer> {
        let leader_id = self.raw.raft.leader_id;
        (leader_id != raft::INVALID_ID)
            .then(|| find_peer(self.region(), leader_id).cloned())
            .flatten()
    }

    pub fn is_initialized(&self) -> bool {
        self.raw.store().is_initialized()
    }

    fn epoch(&self) -> RegionEpoch {
        self.region().epoch.unwrap_or_default()
    }

    /// When `message` comes from a peer that is no longer in this region, and the sender's
    /// epoch shows it missed its removal: the tombstone message that tells it to go.
    pub fn tombstone_reply_for(&self, message: &RaftMessage) -> Option<RaftMessage> {
        let from = message.from_peer?;
        if !self.is_initialized() || find_peer(self.region(), from.id).is_some() {
            return None;
        }
        let theirs = message.region_epoch.unwrap_or_default();
        if theirs.conf_ver >= self.epoch().conf_ver {
            return None; // it may know more than we do (a change we have not applied yet)
        }
        Some(RaftMessage {
            region_id: self.region_id(),
            from_peer: Some(self.peer),
            to_peer: Some(from),
            region_epoch: Some(self.epoch()),
            message: Bytes::new(),
            is_tombstone: true,
            hibernate: false,
            disk_low: self.disk_low.load(std::sync::atomic::Ordering::Relaxed),
            vote_refusal_ms: self.vote_refusal.as_millis() as u64,
        })
    }

    /// Answers everything waiting here (the peer is being destroyed), and stages its
    /// destruction into `batch`.
    pub fn destroy(&mut self, delete_data: bool, batch: &mut WriteBatch) -> EngineResult<()> {
        let gone = msg::region_not_found(self.region_id());
        // A proposed write may still commit through the region's other members: its outcome
        // is unknown, and it must not be retried as if it had failed.
        for pending in self.pending_writes.drain(..) {
            let _ = pending.reply.send(msg::timeout(format!(
                "region {} left this store with the write in flight (outcome unknown)",
                self.raw.store().region_id()
            )));
        }
        for batch in self.read_batches.drain(..) {
            for read in batch.reads {
                let _ = read.reply.send(gone.clone());
            }
        }
        for read in self.new_reads.drain(..) {
            let _ = read.reply.send(gone.clone());
        }
        // Never proposed: safe to retry wherever the region is now.
        for (_, reply) in self.write_batch.drain(..) {
            let _ = reply.send(gone.clone());
        }
        self.raw.store().destroy(self.peer.id, delete_data, batch)
    }

    fn not_leader(&self) -> KvResponse {
        msg::not_leader(self.region_id(), self.leader_peer())
    }

    /// A raft message from another store.
    pub fn step(&mut self, message: RaftMessage) {
        if message.hibernate {
            self.on_hibernate_message(&message);
            return;
        }
        self.wake();
        if let Some(from) = message.from_peer {
            self.peer_cache.insert(from.id, from);
        }
        if message.to_peer.as_ref().map(|p| p.id) != Some(self.peer.id) {
            tracing::debug!(
                region = self.region_id(),
                "raft message for another peer id dropped"
            );
            return;
        }
        let raft_msg = match RaftMsg::parse_from_bytes(&message.message) {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(region = self.region_id(), %err, "undecodable raft message dropped");
                return;
            }
        };
        let (msg_type, from) = (raft_msg.get_msg_type(), raft_msg.from);
        self.on_campaign_seen(msg_type);
        if self.refuses_vote(&raft_msg) {
            tracing::debug!(
                region = self.region_id(),
                from,
                "vote request dropped: heard from the leader, or started, too recently"
            );
            return;
        }
        if let Err(err) = self.raw.step(raft_msg) {
            tracing::debug!(region = self.region_id(), %err, "raft step");
        }
        self.note_leader_contact(msg_type, from);
    }

    pub fn report_unreachable(&mut self, to_peer_id: u64) {
        self.raw.report_unreachable(to_peer_id);
    }

    pub fn report_snapshot(&mut self, to_peer_id: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to_peer_id, status);
    }

    pub fn handle_command(&mut self, command: Command) {
        self.note_activity();
        match command {
            Command::Write {
                request_id,
                epoch,
                ops,
                conditions,
                reply,
            } => self.propose_write(request_id, epoch, ops, conditions, reply),
            Command::Read { read, reply, .. } => self.queue_read(read, reply),
            Command::ChangePeer {
                epoch,
                change,
                peer,
                reply,
            } => {
                // Writes received before an admin command are proposed before it.
                self.flush_proposals();
                let response = self.propose_change_peer(epoch, change, peer);
                let _ = reply.send(response);
            }
            Command::TransferLeader { epoch, peer, reply } => {
                self.flush_proposals();
                let response = self.transfer_leader(epoch, peer);
                let _ = reply.send(response);
            }
            Command::Split {
                epoch,
                split_hash,
                new_region_id,
                new_peer_ids,
                reply,
            } => {
                self.flush_proposals();
                let response = self.propose_split(epoch, split_hash, new_region_id, new_peer_ids);
                let _ = reply.send(response);
            }
        }
    }

    /// Checks a split against the region as it is now and proposes it as an admin command.
    fn propose_split(
        &mut self,
        epoch: RegionEpoch,
        split_hash: u64,
        new_region_id: u64,
        new_peer_ids: Vec<u64>,
    ) -> KvResponse {
        if !self.is_leader() {
            return self.not_leader();
        }
        let region_id = self.region_id();
        if epoch != self.epoch() {
            return msg::epoch_not_match(
                format!("region {region_id} changed since the split was planned"),
                self.region().clone(),
            );
        }
        if self.in_joint_state() {
            return msg::server_is_busy("the region is changing membership", 100);
        }
        let region = self.region().clone();
        let split_hash = if split_hash != 0 {
            split_hash
        } else {
            match self
                .engine
                .region_data_stats(region.start_hash, region.end_hash, true)
            {
                Ok(stats) => stats
                    .middle_hash
                    .unwrap_or_else(|| range_middle(region.start_hash, region.end_hash)),
                Err(err) => {
                    return msg::other_error(format!("measuring region {region_id}: {err}"))
                }
            }
        };
        if !strictly_inside(&region, split_hash) {
            return msg::other_error(format!(
                "region {region_id}: split hash {split_hash:#x} is not strictly inside its range"
            ));
        }
        if new_peer_ids.len() != region.peers.len() || new_region_id == 0 {
            return msg::other_error(format!(
                "region {region_id}: a split needs a new region id and {} peer ids, got {}",
                region.peers.len(),
                new_peer_ids.len()
            ));
        }
        let cmd = RaftCmd {
            request_id: 0,
            region_id,
            epoch: Some(epoch),
            admin: Some(AdminCmd {
                cmd: Some(admin_cmd::Cmd::Split(SplitCmd {
                    split_hash,
                    new_region_id,
                    new_peer_ids,
                })),
            }),
            ..Default::default()
        };
        match self.raw.propose(Vec::new(), cmd.encode_to_vec()) {
            Ok(()) => {
                self.bcast_commit_until = self.raw.raft.raft_log.last_index();
                self.raw.skip_bcast_commit(false);
                metrics::counter!("ringkv_raft_proposals_total", "kind" => "split").increment(1);
                tracing::info!(
                    region = region_id,
                    split_hash,
                    new_region = new_region_id,
                    "split proposed"
                );
                msg::done()
            }
            Err(err) => msg::server_is_busy(&format!("split dropped: {err}"), 100),
        }
    }

    /// Peers the leader is still catching up: no matched log yet, a snapshot in flight, or
    /// behind the compacted log. Such a peer is not promoted or handed leadership.
    fn pending_peer_ids(&self) -> Vec<u64> {
        if !self.is_leader() {
            return Vec::new();
        }
        let truncated = self.raw.store().truncated_index();
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, progress)| {
                **id != self.peer.id
                    && (progress.matched == 0
                        || progress.matched < truncated
                        || progress.state == ProgressState::Snapshot)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the set of peers still catching up changed since the last call.
    pub fn pending_peers_changed(&mut self) -> bool {
        if !self.is_leader() && self.last_pending.is_empty() {
            return false;
        }
        let mut now = self.pending_peer_ids();
        now.sort_unstable();
        if now == self.last_pending {
            return false;
        }
        self.last_pending = now;
        true
    }

    fn in_joint_state(&self) -> bool {
        !self
            .raw
            .store()
            .raft_conf_state()
            .get_voters_outgoing()
            .is_empty()
    }

    /// Checks a membership change against the region as it is now and proposes it.
    fn propose_change_peer(
        &mut self,
        epoch: RegionEpoch,
        change: ChangePeer,
        peer: Peer,
    ) -> KvResponse {
        if !self.is_leader() {
            return self.not_leader();
        }
        if epoch != self.epoch() {
            return msg::epoch_not_match(
                format!(
                    "region {} changed since the change was planned",
                    self.region_id()
                ),
                self.region().clone(),
            );
        }
        if self.raw.raft.has_pending_conf() || self.in_joint_state() {
            return msg::server_is_busy("a membership change is still in progress", 100);
        }
        let region = self.region();
        let existing = find_peer(region, peer.id);
        let (change_type, refusal) = match change {
            ChangePeer::AddLearner => (
                ConfChangeType::AddLearnerNode,
                if existing.is_some() {
                    Some(format!("peer {} is already in the region", peer.id))
                } else if find_peer_on_store(region, peer.store_id).is_some() {
                    Some(format!(
                        "store {} already hosts a peer of the region",
                        peer.store_id
                    ))
                } else {
                    None
                },
            ),
            ChangePeer::PromoteLearner => (
                ConfChangeType::AddNode,
                match existing {
                    Some(p) if p.role == PeerRole::Learner as i32 => self
                        .pending_peer_ids()
                        .contains(&peer.id)
                        .then(|| format!("learner {} is still catching up", peer.id)),
                    _ => Some(format!("peer {} is not a learner of the region", peer.id)),
                },
            ),
            ChangePeer::RemovePeer => (
                ConfChangeType::RemoveNode,
                if existing.is_none() {
                    Some(format!("peer {} is not in the region", peer.id))
                } else if peer.id == self.peer.id {
                    Some("the leader cannot remove itself; transfer leadership first".into())
                } else {
                    None
                },
            ),
        };
        if let Some(reason) = refusal {
            return msg::other_error(format!("region {}: {reason}", self.region_id()));
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = peer.id;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.mut_changes().push(single);
        let context = ChangePeerContext {
            epoch: Some(self.epoch()),
            peers: vec![Peer {
                role: match change {
                    ChangePeer::AddLearner => PeerRole::Learner as i32,
                    _ => PeerRole::Voter as i32,
                },
                ..peer
            }],
        };
        cc.set_context(context.encode_to_vec().into());
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                metrics::counter!("ringkv_raft_proposals_total", "kind" => "conf_change")
                    .increment(1);
                tracing::info!(
                    region = self.region_id(),
                    ?change,
                    peer = peer.id,
                    store = peer.store_id,
                    "membership change proposed"
                );
                msg::done()
            }
            Err(err) => msg::server_is_busy(&format!("membership change dropped: {err}"), 100),
        }
    }

    fn transfer_leader(&mut self, epoch: RegionEpoch, peer: Peer) -> KvResponse {
        if !self.is_leader() {
            return self.not_leader();
        }
        if epoch != self.epoch() {
            return msg::epoch_not_match(
                format!(
                    "region {} changed since the transfer was planned",
                    self.region_id()
                ),
                self.region().clone(),
            );
        }
        match find_peer(self.region(), peer.id) {
            Some(p) if p.role == PeerRole::Voter as i32 => {}
            _ => {
                return msg::other_error(format!(
                    "region {}: peer {} is not a voter",
                    self.region_id(),
                    peer.id
                ))
            }
        }
        if self.pending_peer_ids().contains(&peer.id) {
            return msg::server_is_busy("the transferee is still catching up", 100);
        }
        if peer.id != self.peer.id {
            tracing::info!(
                region = self.region_id(),
                to = peer.id,
                store = peer.store_id,
                "transferring leadership"
            );
            self.revoke_lease_for_term();
            self.raw.transfer_leader(peer.id);
        }
        msg::done()
    }

    fn check_epoch(&self, epoch: Option<&RegionEpoch>) -> Option<KvResponse> {
        let current = self.region().epoch.unwrap_or_default();
        match epoch {
            Some(e) if e.version != current.version => Some(msg::epoch_not_match(
                format!(
                    "region {} epoch version {} is stale (now {})",
                    self.region_id(),
                    e.version,
                    current.version
                ),
                self.region().clone(),
            )),
            _ => None,
        }
    }

    fn read_outside_region(&self, read: &ReadOp) -> Option<KvResponse> {
        read.hashes()
            .into_iter()
            .any(|hash| !region_contains(self.region(), hash))
            .then(|| {
                msg::epoch_not_match(
                    format!("the read is not inside region {}", self.region_id()),
                    self.region().clone(),
                )
            })
    }

    fn key_outside_region(&self, key: &[u8]) -> Option<KvResponse> {
        (!region_contains(self.region(), keys::key_hash(key))).then(|| {
            msg::epoch_not_match(
                format!("key is not in region {}", self.region_id()),
                self.region().clone(),
            )
        })
    }

    fn propose_write(
        &mut self,
        request_id: u64,
        epoch: Option<RegionEpoch>,
        ops: Vec<WriteOp>,
        conditions: Vec<Condition>,
        reply: Reply,
    ) {
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        if let Some(err) = self.check_epoch(epoch.as_ref()) {
            let _ = reply.send(err);
            return;
        }
        let keys = ops.iter().map(|op| &op.key);
        if let Some(err) = keys
            .chain(conditions.iter().map(|c| &c.key))
            .find_map(|key| self.key_outside_region(key))
        {
            let _ = reply.send(err);
            return;
        }
        if self.pending_writes.len() + self.write_batch.len() >= MAX_PENDING_WRITES {
            let _ = reply.send(msg::server_is_busy("too many writes in flight", 50));
            return;
        }
        if let Some(refusal) = self.disk_refusal() {
            let _ = reply.send(refusal);
            return;
        }
        for op in &ops {
            self.sample_access(&op.key);
        }
        let write = BatchedWrite {
            request_id,
            ops,
            conditions,
        };
        let bytes = write.encoded_len();
        if !self.write_batch.is_empty() && self.write_batch_bytes + bytes > MAX_BATCH_BYTES {
            self.flush_proposals();
        }
        self.write_batch.push((write, reply));
        self.write_batch_bytes += bytes;
        if self.write_batch.len() >= MAX_BATCH_WRITES {
            self.flush_proposals();
        }
    }

    /// Answers the writes queued this round and never proposed (the store is shutting down):
    /// safe to retry elsewhere.
    pub fn refuse_queued_writes(&mut self) {
        for (_, reply) in self.write_batch.drain(..) {
            let _ = reply.send(msg::server_is_busy("the node is shutting down", 100));
        }
        self.write_batch_bytes = 0;
    }

    /// Proposes the writes received this round as one log entry (a lone write keeps the
    /// plain single-command form). Each write is answered when its slot of the entry applies.
    pub fn flush_proposals(&mut self) {
        if self.write_batch.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.write_batch);
        self.write_batch_bytes = 0;
        if !self.is_leader() {
            // Stepped down this round, before proposing: nothing reached the log.
            let response = self.not_leader();
            for (_, reply) in writes {
                let _ = reply.send(response.clone());
            }
            return;
        }
        let count = writes.len();
        let mut cmd = RaftCmd {
            region_id: self.region_id(),
            epoch: self.region().epoch,
            now_ms: now_ms(),
            ..Default::default()
        };
        let mut waiting = Vec::with_capacity(count);
        if count == 1 {
            for (write, reply) in writes {
                cmd.request_id = write.request_id;
                cmd.ops = write.ops;
                cmd.conditions = write.conditions;
                waiting.push((cmd.request_id, reply));
            }
        } else {
            cmd.batch.reserve(count);
            for (write, reply) in writes {
                waiting.push((write.request_id, reply));
                cmd.batch.push(write);
            }
        }
        let context = (count as u32).to_be_bytes().to_vec();
        if let Err(err) = self.raw.propose(context, cmd.encode_to_vec()) {
            tracing::debug!(region = self.region_id(), %err, "proposal dropped");
            let busy = msg::server_is_busy(&format!("proposal dropped: {err}"), 50);
            for (_, reply) in waiting {
                let _ = reply.send(busy.clone());
            }
            return;
        }
        metrics::counter!("ringkv_raft_proposals_total", "kind" => "write").increment(1);
        metrics::histogram!("ringkv_raft_proposal_writes").record(count as f64);
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        // Writes proposed at this index or later in an earlier term were cut from THIS log by
        // a newer leader, but another replica may still hold them and, as a later leader,
        // commit them: their outcome is unknown, never a retryable failure (a retry could
        // apply the write twice).
        while self.pending_writes.back().is_some_and(|w| w.index >= index) {
            if let Some(stale) = self.pending_writes.pop_back() {
                let _ = stale.reply.send(msg::timeout(format!(
                    "region {}: the write was cut from this leader's log by a newer leader; \
                     another replica may still commit it (outcome unknown)",
                    self.region_id()
                )));
            }
        }
        for (slot, (request_id, reply)) in waiting.into_iter().enumerate() {
            self.pending_writes.push_back(PendingWrite {
                index,
                term,
                request_id,
                slot,
                reply,
            });
        }
    }

    fn queue_read(&mut self, read: ReadOp, reply: Reply) {
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        if let Some(err) = self.read_outside_region(&read) {
            let _ = reply.send(err);
            return;
        }
        let waiting: usize = self.read_batches.iter().map(|b| b.reads.len()).sum();
        if waiting + self.new_reads.len() >= MAX_PENDING_READS {
            let _ = reply.send(msg::server_is_busy("too many reads in flight", 50));
            return;
        }
        for key in read.keys() {
            self.sample_access(key);
        }
        if let Some(read) = self.try_lease_read(PendingRead { read, reply }) {
            self.new_reads.push(read);
        }
    }

    /// A client write must not go ahead while a store holding the region is below its
    /// reserved free space: appending to the log there could fail, and a failed write stops
    /// that node. Raft's own traffic (heartbeats, elections) continues.
    fn disk_refusal(&self) -> Option<KvResponse> {
        let region_id = self.region_id();
        if self.disk_low.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(msg::disk_full(
                self.peer.store_id,
                format!(
                    "store {} is low on disk; region {region_id} refuses writes",
                    self.peer.store_id
                ),
            ));
        }
        let low_stores = self.low_disk_stores.read();
        let low = self
            .region()
            .peers
            .iter()
            .find(|p| low_stores.contains(&p.store_id))?;
        Some(msg::disk_full(
            low.store_id,
            format!(
                "store {} (a replica of region {region_id}) is low on disk; writes refused",
                low.store_id
            ),
        ))
    }

    fn sample_access(&mut self, key: &[u8]) {
        if self.recent_hashes.len() == LOAD_SAMPLES {
            self.recent_hashes.pop_front();
        }
        self.recent_hashes.push_back(keys::key_hash(key));
    }

    /// The hash that splits the recent accesses in half, if there are enough of them and it
    /// lies strictly inside the region.
    fn load_middle_hash(&self) -> Option<u64> {
        if self.recent_hashes.len() < MIN_LOAD_SAMPLES {
            return None;
        }
        let mut hashes: Vec<u64> = self.recent_hashes.iter().copied().collect();
        hashes.sort_unstable();
        let middle = hashes[hashes.len() / 2];
        strictly_inside(self.region(), middle).then_some(middle)
    }

    /// Gives this round's reads to raft as one ReadIndex request. raft-rs silently ignores
    /// ReadIndex on a leader that has not yet committed an entry of its term, so such reads
    /// wait here until it has.
    pub fn flush_reads(&mut self) {
        if self.new_reads.is_empty() {
            // Reads answered under the lease asked for it to be renewed: one ReadIndex with
            // no reads attached, unless one is in flight already.
            if self.take_lease_renewal()
                && self.is_leader()
                && self.read_batches.iter().all(|b| b.read_index.is_some())
                && self.raw.raft.commit_to_current_term()
            {
                self.issue_read_index(Vec::new());
            }
            return;
        }
        if !self.is_leader() {
            let response = self.not_leader();
            for read in self.new_reads.drain(..) {
                let _ = read.reply.send(response.clone());
            }
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        let reads = std::mem::take(&mut self.new_reads);
        self.issue_read_index(reads);
    }

    /// One ReadIndex request for `reads` (none: only to renew the lease).
    fn issue_read_index(&mut self, reads: Vec<PendingRead>) {
        // Any ReadIndex renews the lease: no separate renewal needed.
        self.take_lease_renewal();
        let id = self.next_read_batch_id;
        self.next_read_batch_id += 1;
        self.raw.read_index(id.to_be_bytes().to_vec());
        metrics::counter!("ringkv_raft_read_index_total").increment(1);
        metrics::histogram!("ringkv_raft_read_index_batch_reads").record(reads.len() as f64);
        self.read_batches.push_back(ReadBatch {
            id,
            read_index: None,
            sent_at: std::time::Instant::now(),
            term: self.raw.raft.term,
            reads,
        });
    }

    /// Answers every read whose read index has been applied.
    pub fn serve_reads(&mut self) {
        let applied = self.raw.store().applied_index();
        let ready = |batch: &ReadBatch| batch.read_index.is_some_and(|index| index <= applied);
        if !self.read_batches.iter().any(ready) {
            return;
        }
        // Each batch goes as soon as its own read index is applied: reads in flight together
        // are concurrent, so a batch still waiting for its quorum holds up none behind it.
        let (served, waiting): (VecDeque<ReadBatch>, VecDeque<ReadBatch>) =
            std::mem::take(&mut self.read_batches)
                .into_iter()
                .partition(ready);
        self.read_batches = waiting;
        for batch in served {
            for read in batch.reads {
                // A split while the read waited may have moved its key to another region,
                // whose newer writes this region's read index does not cover.
                if let Some(err) = self.read_outside_region(&read.read) {
                    let _ = read.reply.send(err);
                    continue;
                }
                self.read_keys += read.read.keys().len().max(1) as u64;
                let response = read_region(&self.engine, self.region(), &read.read, now_ms());
                let _ = read.reply.send(response);
            }
        }
    }

    /// After losing leadership, reads waiting here can never be confirmed by this peer:
    /// answer them NotLeader so the client retries at the new leader.
    fn on_role_change(&mut self) {
        self.end_lease();
        let leader = self.is_leader();
        if self.was_leader && !leader {
            let response = self.not_leader();
            for batch in self.read_batches.drain(..) {
                for read in batch.reads {
                    let _ = read.reply.send(response.clone());
                }
            }
            for read in self.new_reads.drain(..) {
                let _ = read.reply.send(response.clone());
            }
        }
        if leader && !self.was_leader {
            // Placement should hear from the new leader now.
            self.region_changed = true;
            // Entries of earlier leaders (a split among them, perhaps) commit under this one:
            // broadcast commits until they are applied, like a split proposed here.
            self.bcast_commit_until = self.raw.raft.raft_log.last_index();
            self.raw.skip_bcast_commit(false);
            tracing::info!(
                region = self.region_id(),
                term = self.raw.raft.term,
                "became leader"
            );
            metrics::counter!("ringkv_raft_leader_elected_total").increment(1);
        }
        self.was_leader = leader;
    }

    /// Phase 1a of a round: queues the messages that may go before persistence (a leader's
    /// appends), serves read states, and keeps the entries the ready committed (unless a
    /// snapshot comes first: then phase 1c keeps them).
    pub fn take_ready_messages(&mut self, ready: &mut Ready, outbox: &mut Vec<RaftMessage>) {
        let messages = ready.take_messages();
        self.wrap_messages(messages, outbox);
        if ready.ss().is_some() {
            self.on_role_change();
        }
        for state in ready.take_read_states() {
            self.on_read_state(&state.request_ctx, state.index);
        }
        if ready.snapshot().is_empty() {
            self.queue_committed(ready.take_committed_entries());
        }
    }

    /// Queues entries raft handed over as committed, for the next apply.
    fn queue_committed(&mut self, committed: Vec<Entry>) {
        metrics::counter!("ringkv_raft_committed_entries_total").increment(committed.len() as u64);
        self.committed.extend(committed);
    }

    /// Phase 1c: stages the ready's snapshot, new entries and hard state into `raft_batch`.
    pub fn handle_ready_persist(
        &mut self,
        ready: &mut Ready,
        raft_batch: &mut WriteBatch,
    ) -> EngineResult<Option<Snapshot>> {
        let mut dirty = false;
        let mut applied_snapshot = None;
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let kv_count = self.raw.mut_store().apply_snapshot(&snapshot, raft_batch)?;
            tracing::info!(
                region = self.region_id(),
                index = snapshot.get_metadata().index,
                kv_count,
                "applying snapshot"
            );
            applied_snapshot = Some(snapshot);
            self.on_region_changed();
            dirty = true;
        }
        // After a snapshot: its entries follow it.
        self.queue_committed(ready.take_committed_entries());
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries(), raft_batch)?;
            dirty = true;
        }
        if let Some(hs) = ready.hs() {
            // A commit index alone rides along with the next write that has to happen anyway
            // (etcd's "must sync" rule): no write and no fsync of its own.
            dirty |= self.raw.mut_store().set_hard_state(hs);
        }
        if dirty {
            self.raw.store().write_raft_state(raft_batch)?;
        }
        Ok(applied_snapshot)
    }

    /// Phase 1b, before the raft batch is written: a leader stages the entries the ready
    /// committed (raft hands out only entries persisted here, and a quorum has them) into
    /// `batch`, so that their clients need not wait for this round's fsync: client writes
    /// only, up to the first membership change or admin command (see `apply_committed`).
    /// True when it applied anything. A follower answers no client, and its ack (sent after
    /// the fsync) should not wait for apply work: it applies after the write, as before.
    pub fn apply_ready_committed(
        &mut self,
        batch: &mut WriteBatch,
        replies: &mut Vec<(Reply, KvResponse)>,
    ) -> EngineResult<bool> {
        if self.committed.is_empty() || !self.is_leader() {
            return Ok(false);
        }
        let queued = self.committed.len();
        self.apply_committed(batch, replies, true)?;
        Ok(self.committed.len() < queued)
    }

    /// Phase 2a, once the ready's writes are in the engine (not yet synced): raft may go on
    /// (its next ready can be taken before this one is durable); what must wait for
    /// durability — a follower's acks and votes, applying the new entries — is held in the
    /// returned [`Unsynced`] until the poller's next fsync ([`on_synced`](Self::on_synced)).
    pub fn advance_unsynced(&mut self, mut ready: Ready, snapshot: Option<Snapshot>) -> Unsynced {
        let mut messages = Vec::new();
        let persisted = ready.take_persisted_messages();
        self.wrap_messages(persisted, &mut messages);
        let number = ready.number();
        self.raw.advance_append_async(ready);
        Unsynced {
            peer_id: self.peer.id,
            number,
            messages,
            snapshot,
        }
    }

    /// Phase 2a': the writes of `unsynced` (and of every earlier ready) are durable: queue
    /// the messages that waited for them and let raft hand out what they unblocked (in the
    /// next ready).
    pub fn on_synced(&mut self, unsynced: Unsynced, outbox: &mut Vec<RaftMessage>) {
        if unsynced.peer_id != self.peer.id {
            return;
        }
        if let Some(snapshot) = unsynced.snapshot {
            self.raw.store().remove_snapshot_file(&snapshot);
            self.snapshots_applied += 1;
            metrics::counter!("ringkv_raft_snapshots_applied_total").increment(1);
        }
        self.raw.on_persist_ready(unsynced.number);
        outbox.extend(unsynced.messages);
    }

    /// Phase 2b: stage every committed entry not yet applied into `apply_batch`.
    pub fn apply_pending(
        &mut self,
        apply_batch: &mut WriteBatch,
        replies: &mut Vec<(Reply, KvResponse)>,
    ) -> EngineResult<()> {
        self.apply_committed(apply_batch, replies, false)
    }

    /// Phase 3, after the apply batch is written: tell raft, serve reads, collect garbage.
    pub fn after_apply(&mut self, gc_batch: &mut WriteBatch) -> EngineResult<()> {
        let applied = self.raw.store().applied_index();
        self.raw.advance_apply_to(applied);
        if self.bcast_commit_until != 0 && applied >= self.bcast_commit_until {
            self.bcast_commit_until = 0;
            self.raw.skip_bcast_commit(true);
        }
        self.serve_reads();
        let truncated = self.raw.store().truncated_index();
        if applied.saturating_sub(truncated) <= self.gc_threshold
            && self.raw.store().log_bytes() <= self.gc_size
        {
            return Ok(());
        }
        let mut compact_index = applied;
        if self.is_leader() {
            // Keep what a slightly lagging follower still needs; one further behind than
            // the threshold is cheaper to catch up by snapshot than to hold the log for.
            let self_id = self.peer.id;
            let min_matched = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != self_id)
                .map(|(_, progress)| progress.matched)
                .min();
            if let Some(matched) = min_matched {
                if applied.saturating_sub(matched) <= self.gc_threshold {
                    compact_index = matched.min(applied);
                }
            }
        }
        if compact_index > truncated {
            self.raw.mut_store().compact_to(compact_index, gc_batch)?;
        }
        Ok(())
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        let id = u64::from_be_bytes(bytes);
        let Some(batch) = self.read_batches.iter_mut().find(|b| b.id == id) else {
            return;
        };
        batch.read_index = Some(index);
        let (sent_at, term) = (batch.sent_at, batch.term);
        self.extend_lease(sent_at, term);
    }

    fn wrap_messages(&mut self, messages: Vec<RaftMsg>, outbox: &mut Vec<RaftMessage>) {
        for message in messages {
            if self.redundant_heartbeat(&message) {
                continue;
            }
            self.wrap_message(message, outbox);
        }
    }

    /// A plain heartbeat to a follower that was sent an append since the last heartbeat
    /// round is left out: the append reset its election timer and its answer keeps the
    /// leader's quorum check satisfied. The commit index it carried may be older than the
    /// heartbeat's; such a follower learns the newest one from its next append or the next
    /// heartbeat — up to two heartbeat intervals later (only its apply, hence stale reads
    /// there and hibernation, waits; never a client's write).
    /// With many busy regions these heartbeats (and their responses) were about a third of
    /// all raft messages. Heartbeats confirming a ReadIndex (non-empty context) always go;
    /// once appends stop, heartbeats resume on the next round.
    fn redundant_heartbeat(&mut self, message: &RaftMsg) -> bool {
        match message.get_msg_type() {
            MessageType::MsgAppend => {
                if !self.appended_since_heartbeat.contains(&message.to) {
                    self.appended_since_heartbeat.push(message.to);
                }
                false
            }
            MessageType::MsgHeartbeat if message.context.is_empty() => {
                let Some(at) = self
                    .appended_since_heartbeat
                    .iter()
                    .position(|&to| to == message.to)
                else {
                    return false;
                };
                self.appended_since_heartbeat.swap_remove(at);
                true
            }
            _ => false,
        }
    }

    fn wrap_message(&self, message: RaftMsg, outbox: &mut Vec<RaftMessage>) {
        let region = self.region();
        {
            let to_peer =
                find_peer(region, message.to).or_else(|| self.peer_cache.get(&message.to));
            let Some(to_peer) = to_peer.cloned() else {
                tracing::debug!(
                    region = region.id,
                    to = message.to,
                    "message to unknown peer dropped"
                );
                return;
            };
            if message.get_msg_type() == MessageType::MsgSnapshot {
                tracing::info!(region = region.id, to = message.to, "sending snapshot");
            }
            let bytes = match message.write_to_bytes() {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(region = region.id, %err, "cannot encode raft message");
                    return;
                }
            };
            outbox.push(RaftMessage {
                region_id: region.id,
                from_peer: Some(self.peer),
                to_peer: Some(to_peer),
                region_epoch: region.epoch,
                message: bytes.into(),
                is_tombstone: false,
                hibernate: false,
                disk_low: self.disk_low.load(std::sync::atomic::Ordering::Relaxed),
                vote_refusal_ms: self.vote_refusal.as_millis() as u64,
            });
        }
    }

    /// Applies the queued committed entries into `batch`. With `writes_only`, stops before
    /// the first membership change or admin command and leaves it, and what follows, queued
    /// for after raft has advanced past this round's Ready: raft-rs must not see its
    /// configuration change between `ready()` and its advance (a leader applying its own
    /// removal there would lose its own progress entry), and a split or merge must not reach
    /// the router before the round's regions are adopted.
    fn apply_committed(
        &mut self,
        batch: &mut WriteBatch,
        replies: &mut Vec<(Reply, KvResponse)>,
        writes_only: bool,
    ) -> EngineResult<()> {
        let mut committed = std::mem::take(&mut self.committed);
        // Values written by earlier entries of this batch, which the engine does not show
        // yet: what a conditional write later in the batch must compare against.
        let mut staged = Staged::default();
        let mut last_applied = None;
        let mut stopped_at = None;
        for (position, entry) in committed.iter().enumerate() {
            if entry.index <= self.raw.store().applied_index() {
                continue; // already applied (e.g. covered by a snapshot)
            }
            let responses = match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let cmd = self.decode_command(entry);
                    if writes_only && cmd.as_ref().is_some_and(|cmd| cmd.admin.is_some()) {
                        stopped_at = Some(position);
                        break;
                    }
                    self.apply_normal(entry, cmd, batch, &mut staged)?
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if writes_only {
                        stopped_at = Some(position);
                        break;
                    }
                    self.apply_conf_change(entry, batch)?;
                    Vec::new()
                }
            };
            self.finish_write(entry, responses, replies);
            last_applied = Some((entry.index, entry.term));
        }
        if let Some(position) = stopped_at {
            self.committed = committed.split_off(position);
        }
        if let Some((index, term)) = last_applied {
            self.raw.mut_store().set_applied(index, term, batch)?;
        }
        Ok(())
    }

    /// The command of a normal entry; `None` for a new leader's no-op, or for bytes that do
    /// not decode (every replica decodes the same bytes, so every replica skips it alike).
    fn decode_command(&self, entry: &Entry) -> Option<RaftCmd> {
        if entry.data.is_empty() {
            return None;
        }
        match RaftCmd::decode(entry.get_data()) {
            Ok(cmd) => Some(cmd),
            Err(err) => {
                tracing::error!(region = self.region_id(), index = entry.index, %err, "undecodable command skipped");
                None
            }
        }
    }

    fn apply_normal(
        &mut self,
        entry: &Entry,
        cmd: Option<RaftCmd>,
        batch: &mut WriteBatch,
        staged: &mut Staged,
    ) -> EngineResult<EntryResponses> {
        let Some(mut cmd) = cmd else {
            return Ok(Vec::new());
        };
        if let Some(admin) = cmd.admin {
            let response = self.apply_admin(entry, cmd.epoch.unwrap_or_default(), admin, batch)?;
            return Ok(vec![(cmd.request_id, response)]);
        }
        let writes = if cmd.batch.is_empty() {
            vec![BatchedWrite {
                request_id: cmd.request_id,
                ops: std::mem::take(&mut cmd.ops),
                conditions: std::mem::take(&mut cmd.conditions),
            }]
        } else {
            std::mem::take(&mut cmd.batch)
        };
        if let Some(err) = self.check_epoch(cmd.epoch.as_ref()) {
            return Ok(writes.iter().map(|w| (w.request_id, err.clone())).collect());
        }
        let mut responses = Vec::with_capacity(writes.len());
        for write in writes {
            let response = self.apply_write(&write, cmd.now_ms, batch, staged)?;
            responses.push((write.request_id, response));
        }
        Ok(responses)
    }

    /// Applies one client write of a committed entry, under the entry's epoch (checked) and
    /// clock `now_ms`.
    fn apply_write(
        &mut self,
        write: &BatchedWrite,
        now_ms: u64,
        batch: &mut WriteBatch,
        staged: &mut Staged,
    ) -> EngineResult<KvResponse> {
        let region = self.region();
        let keys = write.ops.iter().map(|op| &op.key);
        if keys
            .chain(write.conditions.iter().map(|c| &c.key))
            .any(|key| !region_contains(region, keys::key_hash(key)))
        {
            return Ok(msg::epoch_not_match(
                format!("key is not in region {}", region.id),
                region.clone(),
            ));
        }
        for condition in &write.conditions {
            let current = staged.get(&self.engine, &condition.key, now_ms)?;
            let holds = match &current {
                None => condition.absent,
                Some(value) => !condition.absent && *value == condition.value,
            };
            if !holds {
                return Ok(msg::cas_result(false, current));
            }
        }
        for op in &write.ops {
            let key = keys::data_key(&op.key);
            if op.only_if_expired {
                // The background reclaim: keep a value written since the key was found expired.
                let stored = staged.get_stored(&self.engine, &op.key)?;
                if !stored.is_some_and(|(_, expire_at_ms)| expired(expire_at_ms, now_ms)) {
                    continue;
                }
                metrics::counter!("ringkv_expired_keys_deleted_total").increment(1);
            }
            self.written_bytes += (op.key.len() + op.value.len()) as u64;
            self.written_keys += 1;
            if op.delete {
                batch.delete(&self.engine, CF_DEFAULT, &key)?;
                staged.record(&op.key, None);
            } else {
                let stored = crate::value::encode(&op.value, op.expire_at_ms);
                batch.put(&self.engine, CF_DEFAULT, &key, &stored)?;
                staged.record(&op.key, Some((op.value.clone(), op.expire_at_ms)));
            }
        }
        if write.conditions.is_empty() {
            Ok(msg::done())
        } else {
            Ok(msg::cas_result(true, None))
        }
    }

    /// Applies an admin command. Every replica decides from the same log and state, so a
    /// command refused here (stale epoch, bad hash) is refused by every replica alike.
    fn apply_admin(
        &mut self,
        entry: &Entry,
        epoch: RegionEpoch,
        admin: AdminCmd,
        batch: &mut WriteBatch,
    ) -> EngineResult<KvResponse> {
        let region_id = self.region_id();
        let Some(admin_cmd::Cmd::Split(split)) = admin.cmd else {
            tracing::error!(
                region = region_id,
                index = entry.index,
                "empty admin command skipped"
            );
            return Ok(msg::other_error("empty admin command".into()));
        };
        let region = self.region().clone();
        if epoch != self.epoch() {
            tracing::info!(
                region = region_id,
                index = entry.index,
                "stale split skipped"
            );
            return Ok(msg::epoch_not_match(
                format!("region {region_id} changed before the split applied"),
                region,
            ));
        }
        if !strictly_inside(&region, split.split_hash)
            || split.new_peer_ids.len() != region.peers.len()
        {
            tracing::error!(
                region = region_id,
                index = entry.index,
                "malformed split skipped"
            );
            return Ok(msg::other_error("malformed split".into()));
        }
        let mut parent = region.clone();
        let mut version_epoch = epoch;
        version_epoch.version += 1;
        parent.end_hash = split.split_hash;
        parent.epoch = Some(version_epoch);
        let new_region = crate::proto::metapb::Region {
            id: split.new_region_id,
            start_hash: split.split_hash,
            end_hash: region.end_hash,
            epoch: Some(version_epoch),
            peers: region
                .peers
                .iter()
                .zip(&split.new_peer_ids)
                .map(|(peer, &id)| Peer { id, ..*peer })
                .collect(),
        };
        let conf_state = self.raw.store().raft_conf_state().clone();
        self.raw.mut_store().set_region(parent, conf_state, batch)?;
        self.on_region_changed();
        // The new region's state goes in this same batch: a crash leaves both or neither.
        let existing = PersistedRegion::load(&self.engine, new_region.id)?;
        match existing {
            Some(state)
                if state.region_state.state
                    == crate::proto::raft_serverpb::PeerState::Tombstone as i32 =>
            {
                // Its peer here was created (by a faster replica's leader), moved away and
                // destroyed before this replica applied the split: the range is not ours.
                batch.delete_range(
                    &self.engine,
                    CF_DEFAULT,
                    &keys::data_range_start(new_region.start_hash),
                    &keys::data_range_end(new_region.end_hash),
                )?;
                tracing::info!(
                    region = region_id,
                    new_region = new_region.id,
                    "split: the new region's peer here was already destroyed"
                );
            }
            Some(_) => {
                tracing::info!(
                    region = region_id,
                    new_region = new_region.id,
                    "split: the new region is already here (from a snapshot)"
                );
            }
            None => {
                let earlier = PersistedRegion::load_raft_state(&self.engine, new_region.id)?;
                PersistedRegion::for_split(new_region.clone(), earlier.as_ref())
                    .write_to(&self.engine, batch)?;
                self.split_created.push((new_region.id, self.is_leader()));
            }
        }
        tracing::info!(
            region = region_id,
            new_region = new_region.id,
            split_hash = split.split_hash,
            version = version_epoch.version,
            "region split"
        );
        metrics::counter!("ringkv_raft_splits_applied_total").increment(1);
        Ok(msg::done())
    }

    /// Applies a membership change on this replica: raft's configuration, the region's peers
    /// and conf_ver, persisted in the apply batch with the applied index. A change proposed
    /// against an epoch the region no longer has is skipped — by every replica alike, since
    /// each decides from the same log.
    fn apply_conf_change(&mut self, entry: &Entry, batch: &mut WriteBatch) -> EngineResult<()> {
        let region_id = self.region_id();
        if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
            tracing::error!(
                region = region_id,
                index = entry.index,
                "conf change v1 entry skipped (never proposed by ringkv)"
            );
            return Ok(());
        }
        let cc = match ConfChangeV2::parse_from_bytes(entry.get_data()) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(region = region_id, index = entry.index, %err, "undecodable conf change skipped");
                return Ok(());
            }
        };
        let context = if cc.get_changes().is_empty() {
            ChangePeerContext::default() // raft leaving a joint state
        } else {
            match ChangePeerContext::decode(cc.get_context()) {
                Ok(context) => context,
                Err(err) => {
                    tracing::error!(region = region_id, index = entry.index, %err, "conf change without a context skipped");
                    return Ok(());
                }
            }
        };
        if let Some(proposed) = context.epoch {
            if proposed.conf_ver != self.epoch().conf_ver {
                tracing::info!(
                    region = region_id,
                    index = entry.index,
                    proposed = proposed.conf_ver,
                    now = self.epoch().conf_ver,
                    "stale membership change skipped"
                );
                return Ok(());
            }
        }
        let conf_state = match self.raw.apply_conf_change(&cc) {
            Ok(conf_state) => conf_state,
            Err(err) => {
                tracing::warn!(region = region_id, %err, "conf change rejected by raft");
                return Ok(());
            }
        };
        let mut region = self.region().clone();
        region.peers = peers_from_conf_state(&conf_state, &region.peers, &context.peers);
        let mut epoch = self.epoch();
        epoch.conf_ver += 1;
        region.epoch = Some(epoch);
        tracing::info!(
            region = region_id,
            conf_ver = epoch.conf_ver,
            peers = ?region.peers.iter().map(|p| (p.id, p.store_id, p.role)).collect::<Vec<_>>(),
            "membership changed"
        );
        self.raw.mut_store().set_region(region, conf_state, batch)?;
        self.on_region_changed();
        Ok(())
    }

    /// Follows a new region shape: this peer's own role, or its removal.
    fn on_region_changed(&mut self) {
        self.region_changed = true;
        // A membership change makes a new quorum; the next ReadIndex confirms the lease anew.
        self.end_lease();
        match find_peer(self.region(), self.peer.id) {
            Some(me) => self.peer = *me,
            None if self.is_initialized() => self.removed = true,
            None => {}
        }
    }

    /// Answers the pending writes proposed at `entry`'s position, and any older pending write
    /// this peer passed without applying its entry itself.
    ///
    /// * same index, same term: the write's own entry — the response of its slot;
    /// * same index, other term: another leader's entry replaced it — it will never apply
    ///   (NotLeader, retryable);
    /// * an older index: its entry was applied without passing through here (covered by a
    ///   snapshot), so it may well have been applied — outcome unknown (timeout), never
    ///   answered as retryable.
    fn finish_write(
        &mut self,
        entry: &Entry,
        mut responses: EntryResponses,
        replies: &mut Vec<(Reply, KvResponse)>,
    ) {
        while self
            .pending_writes
            .front()
            .is_some_and(|front| front.index <= entry.index)
        {
            let Some(pending) = self.pending_writes.pop_front() else {
                return;
            };
            if pending.index < entry.index {
                replies.push((
                    pending.reply,
                    msg::timeout(format!(
                        "region {}: the write's log position was caught up by snapshot (outcome unknown)",
                        self.region_id()
                    )),
                ));
                continue;
            }
            if pending.term != entry.term {
                let stale = msg::not_leader(self.region_id(), self.leader_peer());
                replies.push((pending.reply, stale));
                continue;
            }
            let answer = match responses.get_mut(pending.slot) {
                Some((request_id, response)) if *request_id == pending.request_id => {
                    std::mem::replace(response, msg::done())
                }
                _ => msg::timeout(format!(
                    "region {}: unexpected entry at the write's position (outcome unknown)",
                    self.region_id()
                )),
            };
            replies.push((pending.reply, answer));
        }
    }

    pub fn status(&self) -> RegionStatus {
        let region = self.region();
        let store = self.raw.store();
        let epoch = region.epoch.unwrap_or_default();
        let leader = self.leader_peer();
        RegionStatus {
            id: region.id,
            start_hash: region.start_hash,
            end_hash: region.end_hash,
            conf_ver: epoch.conf_ver,
            version: epoch.version,
            peer_id: self.peer.id,
            peers: region.peers.iter().map(peer_status).collect(),
            role: format!("{:?}", self.raw.raft.state),
            is_leader: self.is_leader(),
            leader_peer_id: leader.as_ref().map_or(0, |p| p.id),
            leader_store_id: leader.as_ref().map_or(0, |p| p.store_id),
            term: self.raw.raft.term,
            commit_index: self.raw.raft.raft_log.committed,
            applied_index: store.applied_index(),
            first_index: store.first_index().unwrap_or(0),
            last_index: store.last_log_index(),
            snapshots_applied: self.snapshots_applied,
            written_bytes: self.written_bytes,
            written_keys: self.written_keys,
            read_keys: self.read_keys,
            load_middle_hash: self.load_middle_hash().unwrap_or(0),
            pending_peers: self
                .pending_peer_ids()
                .into_iter()
                .filter_map(|id| find_peer(region, id))
                .map(peer_status)
                .collect(),
            pending_writes: self.pending_writes.len(),
            hibernating: self.hibernating,
            lease_ms: self.lease_ms(),
            pending_reads: self
                .read_batches
                .iter()
                .map(|b| b.reads.len())
                .sum::<usize>()
                + self.new_reads.len(),
        }
    }
}

/// Whether `hash` is inside the region's range and not its start (a split there would leave
/// an empty half).
fn strictly_inside(region: &Region, hash: u64) -> bool {
    hash > region.start_hash && region_contains(region, hash)
}

/// The middle of a hash range (`end` 0 = end of the ring).
fn range_middle(start: u64, end: u64) -> u64 {
    let width = if end == 0 {
        (u64::MAX - start) / 2 + 1
    } else {
        (end - start) / 2
    };
    start + width.max(1)
}

fn peer_status(peer: &Peer) -> PeerStatus {
    let role = PeerRole::try_from(peer.role).unwrap_or(PeerRole::Voter);
    PeerStatus {
        id: peer.id,
        store_id: peer.store_id,
        role: format!("{role:?}"),
    }
}

/// The region's peers after a membership change, read off raft's new configuration: every
/// peer raft still knows, with its role; stores come from the old peers or the change itself.
fn peers_from_conf_state(conf_state: &ConfState, old: &[Peer], added: &[Peer]) -> Vec<Peer> {
    let incoming = conf_state.get_voters();
    let outgoing = conf_state.get_voters_outgoing();
    let joint = !outgoing.is_empty();
    let learners = conf_state
        .get_learners()
        .iter()
        .chain(conf_state.get_learners_next());
    let mut ids: Vec<u64> = incoming
        .iter()
        .chain(outgoing)
        .chain(learners)
        .copied()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let known = added.iter().chain(old).find(|p| p.id == id)?;
            let role = match (incoming.contains(&id), outgoing.contains(&id)) {
                (true, true) => PeerRole::Voter,
                (true, false) if joint => PeerRole::IncomingVoter,
                (true, false) => PeerRole::Voter,
                (false, true) => PeerRole::DemotingVoter,
                (false, false) => PeerRole::Learner,
            };
            Some(Peer {
                id,
                store_id: known.store_id,
                role: role as i32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, store_id: u64, role: PeerRole) -> Peer {
        Peer {
            id,
            store_id,
            role: role as i32,
        }
    }

    fn conf(voters: &[u64], learners: &[u64], outgoing: &[u64], next: &[u64]) -> ConfState {
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        cs.set_learners(learners.to_vec());
        cs.set_voters_outgoing(outgoing.to_vec());
        cs.set_learners_next(next.to_vec());
        cs
    }

    #[test]
    fn region_peers_follow_the_configuration_raft_applied() {
        let old = [peer(1, 10, PeerRole::Voter), peer(2, 20, PeerRole::Voter)];
        // A learner added on store 30: its store comes from the change's context.
        let added = [peer(3, 30, PeerRole::Learner)];
        assert_eq!(
            peers_from_conf_state(&conf(&[1, 2], &[3], &[], &[]), &old, &added),
            vec![
                peer(1, 10, PeerRole::Voter),
                peer(2, 20, PeerRole::Voter),
                peer(3, 30, PeerRole::Learner)
            ]
        );
        // Promoted, then peer 1 removed: gone from the region.
        let now = [
            peer(1, 10, PeerRole::Voter),
            peer(2, 20, PeerRole::Voter),
            peer(3, 30, PeerRole::Learner),
        ];
        assert_eq!(
            peers_from_conf_state(&conf(&[2, 3], &[], &[], &[]), &now, &[]),
            vec![peer(2, 20, PeerRole::Voter), peer(3, 30, PeerRole::Voter)]
        );
        // Joint: 3 incoming, 1 demoted to learner, 2 in both halves.
        assert_eq!(
            peers_from_conf_state(&conf(&[2, 3], &[], &[1, 2], &[1]), &now, &[]),
            vec![
                peer(1, 10, PeerRole::DemotingVoter),
                peer(2, 20, PeerRole::Voter),
                peer(3, 30, PeerRole::IncomingVoter)
            ]
        );
        // A peer raft names but nobody knows the store of is left out, not invented.
        assert_eq!(
            peers_from_conf_state(&conf(&[2, 9], &[], &[], &[]), &now, &[]),
            vec![peer(2, 20, PeerRole::Voter)]
        );
    }
}

#[cfg(test)]
mod batching_tests {
    use super::*;
    use crate::engine::PersistedRegion;
    use tokio::sync::oneshot;

    /// One single-voter peer, driven round by round like the poller does.
    struct Solo {
        _dir: tempfile::TempDir,
        engine: Engine,
        peer: PeerFsm,
    }

    impl Solo {
        fn new() -> Solo {
            Solo::with_config(|_| {})
        }

        fn with_config(tweak: impl FnOnce(&mut StoreConfig)) -> Solo {
            let dir = tempfile::tempdir().expect("temp dir");
            let engine = Engine::open(&dir.path().join("db")).expect("engine");
            let region = crate::region::static_bootstrap_regions(1, &[1]).remove(0);
            let persisted = PersistedRegion::bootstrap(region);
            let mut batch = engine.batch();
            persisted.write_to(&engine, &mut batch).expect("stage");
            engine.write(batch, true).expect("bootstrap");
            let mut cfg = StoreConfig::new(1, dir.path().join("snap"));
            tweak(&mut cfg);
            let storage = PeerStorage::new(engine.clone(), 1, cfg.snap_dir.clone(), persisted);
            let mut peer = PeerFsm::new(storage, engine.clone(), &cfg).expect("peer");
            peer.raw.campaign().expect("campaign");
            let mut solo = Solo {
                _dir: dir,
                engine,
                peer,
            };
            solo.rounds();
            assert!(solo.peer.is_leader());
            solo
        }

        /// Rounds until raft has nothing left to do; sends every reply.
        fn rounds(&mut self) {
            for _ in 0..16 {
                self.peer.flush_proposals();
                self.peer.flush_reads();
                if !self.peer.raw.has_ready() {
                    return;
                }
                self.persist();
                self.apply();
            }
            panic!("raft kept producing readies");
        }

        /// Takes the Ready, writes it synced and advances raft past it, then takes the ready
        /// that durability unblocked: what they committed is queued for the apply.
        fn persist(&mut self) {
            for _ in 0..2 {
                if !self.peer.raw.has_ready() {
                    return;
                }
                let (mut raft_batch, mut outbox) = (self.engine.batch(), Vec::new());
                let mut ready = self.peer.raw.ready();
                self.peer.take_ready_messages(&mut ready, &mut outbox);
                let snapshot = self
                    .peer
                    .handle_ready_persist(&mut ready, &mut raft_batch)
                    .expect("persist");
                self.engine.write(raft_batch, true).expect("log write");
                let unsynced = self.peer.advance_unsynced(ready, snapshot);
                self.peer.on_synced(unsynced, &mut outbox);
            }
        }

        /// Applies what is queued, serves the reads it unblocks, compacts the log; sends
        /// every reply.
        fn apply(&mut self) {
            let (mut apply_batch, mut gc_batch) = (self.engine.batch(), self.engine.batch());
            let mut replies = Vec::new();
            self.peer
                .apply_pending(&mut apply_batch, &mut replies)
                .expect("apply");
            self.engine.write(apply_batch, false).expect("apply write");
            self.peer.after_apply(&mut gc_batch).expect("gc");
            self.engine.write(gc_batch, false).expect("gc write");
            for (reply, response) in replies {
                let _ = reply.send(response);
            }
        }

        fn write(
            &mut self,
            request_id: u64,
            ops: Vec<WriteOp>,
            conditions: Vec<Condition>,
        ) -> oneshot::Receiver<KvResponse> {
            let (reply, answer) = oneshot::channel();
            self.peer.handle_command(Command::Write {
                request_id,
                epoch: None,
                ops,
                conditions,
                reply,
            });
            answer
        }
    }

    impl Solo {
        fn read(&mut self, key: &str) -> oneshot::Receiver<KvResponse> {
            let (reply, answer) = oneshot::channel();
            self.peer.handle_command(Command::Read {
                request_id: 0,
                read: ReadOp::Get(Bytes::copy_from_slice(key.as_bytes())),
                reply,
            });
            answer
        }
    }

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        }
    }

    fn holds(key: &str, value: Option<&str>) -> Condition {
        Condition {
            key: Bytes::copy_from_slice(key.as_bytes()),
            absent: value.is_none(),
            value: Bytes::copy_from_slice(value.unwrap_or_default().as_bytes()),
        }
    }

    fn answer(mut rx: oneshot::Receiver<KvResponse>) -> KvResponse {
        rx.try_recv().expect("answered")
    }

    #[test]
    fn writes_of_one_round_share_one_entry_and_each_gets_its_own_answer() {
        let mut solo = Solo::new();
        let before = solo.peer.raw.raft.raft_log.last_index();
        let answers = vec![
            solo.write(11, vec![put("a", "1")], vec![]),
            // Compares against the value the write before it in the same entry staged.
            solo.write(12, vec![put("a", "2")], vec![holds("a", Some("1"))]),
            solo.write(13, vec![put("a", "3")], vec![holds("a", Some("1"))]),
            solo.write(14, vec![put("b", "x")], vec![]),
            solo.write(15, vec![put("c", "y")], vec![holds("c", None)]),
        ];
        // Nothing is proposed until the round collects readies.
        assert_eq!(solo.peer.raw.raft.raft_log.last_index(), before);
        assert_eq!(solo.peer.write_batch.len(), 5);
        solo.rounds();
        assert_eq!(
            solo.peer.raw.raft.raft_log.last_index(),
            before + 1,
            "five writes, one entry"
        );
        // The entry tells every replica how many client writes its fsync covers.
        let entry = solo
            .peer
            .raw
            .store()
            .entries(
                before + 1,
                before + 2,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .expect("the entry");
        assert_eq!(entry_writes(&entry[0]), 5);
        let got: Vec<KvResponse> = answers.into_iter().map(answer).collect();
        assert_eq!(
            got,
            vec![
                msg::done(),
                msg::cas_result(true, None),
                msg::cas_result(false, Some(Bytes::from_static(b"2"))),
                msg::done(),
                msg::cas_result(true, None),
            ]
        );
        let stored = |key: &str| {
            solo.engine
                .get(CF_DEFAULT, &keys::data_key(key.as_bytes()))
                .expect("engine read")
                .map(|raw| crate::value::decode(&raw).expect("value").value.to_vec())
        };
        assert_eq!(stored("a"), Some(b"2".to_vec()));
        assert_eq!(stored("b"), Some(b"x".to_vec()));
        assert_eq!(stored("c"), Some(b"y".to_vec()));
        assert!(solo.peer.pending_writes.is_empty());

        // A lone write keeps the plain single-command entry.
        let lone = solo.write(16, vec![put("d", "z")], vec![]);
        solo.rounds();
        assert_eq!(answer(lone), msg::done());
        let entry = solo
            .peer
            .raw
            .raft
            .raft_log
            .entries(before + 2, u64::MAX, raft::GetEntriesContext::empty(false))
            .expect("log")
            .remove(0);
        let cmd = RaftCmd::decode(entry.get_data()).expect("command");
        assert!(cmd.batch.is_empty());
        assert_eq!(cmd.request_id, 16);
        assert_eq!(entry_writes(&entry), 1);
    }

    /// Entries as a Ready would hand them over: after `last`, in `term`.
    fn committed_entries(last: u64, term: u64, kinds: &[&str]) -> Vec<Entry> {
        kinds
            .iter()
            .enumerate()
            .map(|(n, kind)| {
                let mut entry = Entry {
                    index: last + 1 + n as u64,
                    term,
                    ..Default::default()
                };
                match *kind {
                    "conf change" => entry.set_entry_type(EntryType::EntryConfChangeV2),
                    "admin" => {
                        let cmd = RaftCmd {
                            admin: Some(AdminCmd::default()),
                            ..Default::default()
                        };
                        entry.data = Bytes::from(cmd.encode_to_vec());
                    }
                    key => {
                        let cmd = RaftCmd {
                            ops: vec![put(key, "v")],
                            ..Default::default()
                        };
                        entry.data = Bytes::from(cmd.encode_to_vec());
                    }
                }
                entry
            })
            .collect()
    }

    #[test]
    fn the_early_apply_stops_at_a_membership_change_or_an_admin_command() {
        for stopper in ["conf change", "admin"] {
            let mut solo = Solo::new();
            let applied = solo.peer.raw.store().applied_index();
            let term = solo.peer.raw.raft.term;
            let entries = committed_entries(applied, term, &["k1", "k2", stopper, "k3"]);
            solo.peer.committed.extend(entries);
            let (mut batch, mut replies) = (solo.engine.batch(), Vec::new());
            assert!(solo
                .peer
                .apply_ready_committed(&mut batch, &mut replies)
                .expect("early apply"));
            solo.engine.write(batch, false).expect("apply write");
            // The writes before it are applied; it and what follows wait for the apply after
            // the raft-log write (raft must have advanced first).
            assert_eq!(
                solo.peer.raw.store().applied_index(),
                applied + 2,
                "{stopper}"
            );
            let queued: Vec<u64> = solo.peer.committed.iter().map(|e| e.index).collect();
            assert_eq!(queued, vec![applied + 3, applied + 4], "{stopper}");
            for (key, expected) in [("k1", true), ("k2", true), ("k3", false)] {
                let stored = solo
                    .engine
                    .get(CF_DEFAULT, &keys::data_key(key.as_bytes()))
                    .expect("engine read");
                assert_eq!(stored.is_some(), expected, "{stopper}: {key}");
            }
            // Nothing early when the first entry is one.
            let mut solo = Solo::new();
            let applied = solo.peer.raw.store().applied_index();
            let entries = committed_entries(applied, term, &[stopper, "k1"]);
            solo.peer.committed.extend(entries);
            let mut batch = solo.engine.batch();
            assert!(!solo
                .peer
                .apply_ready_committed(&mut batch, &mut replies)
                .expect("early apply"));
            assert_eq!(solo.peer.committed.len(), 2, "{stopper}");
        }
    }

    #[test]
    fn a_lease_read_behind_the_apply_waits_for_it_without_a_read_index() {
        // Long ticks: the lease (80% of 9 s) cannot run out during the test.
        let mut solo = Solo::with_config(|cfg| cfg.raft_tick_ms = 1000);
        let first = solo.read("k");
        solo.rounds(); // its ReadIndex (confirmed at once by the single voter) takes the lease
        assert_eq!(answer(first), msg::get_result(None));

        // A write committed but not applied yet.
        let written = solo.write(1, vec![put("k", "v")], vec![]);
        solo.peer.flush_proposals();
        solo.persist();
        let committed = solo.peer.raw.raft.raft_log.committed;
        assert!(solo.peer.raw.store().applied_index() < committed);

        let mut read = solo.read("k");
        assert!(
            solo.peer.new_reads.is_empty(),
            "no ReadIndex under the lease"
        );
        let waiting = solo.peer.read_batches.back().and_then(|b| b.read_index);
        assert_eq!(
            waiting,
            Some(committed),
            "the commit index is its read index"
        );
        assert!(read.try_recv().is_err(), "not answered before the apply");

        solo.apply();
        assert_eq!(answer(written), msg::done());
        assert_eq!(answer(read), msg::get_result(Some(b"v".to_vec())));
    }

    #[test]
    fn the_log_is_compacted_by_size_as_well_as_by_entry_count() {
        let mut solo = Solo::with_config(|cfg| cfg.raft_log_gc_size = 64 << 10);
        let value = "v".repeat(16 << 10);
        for n in 0..12u64 {
            let done = solo.write(100 + n, vec![put(&format!("k{n}"), &value)], vec![]);
            solo.rounds();
            assert_eq!(answer(done), msg::done());
        }
        // 12 entries of ~16 KiB: far below the 1024-entry threshold, over 64 KiB.
        let store = solo.peer.raw.store();
        assert!(
            store.truncated_index() > 0,
            "log not compacted: {} bytes held",
            store.log_bytes()
        );
        assert!(
            store.log_bytes() <= 64 << 10,
            "{} bytes held",
            store.log_bytes()
        );
    }

    #[test]
    fn a_batch_cut_short_by_losing_leadership_is_answered_retryable() {
        let mut solo = Solo::new();
        let before = solo.peer.raw.raft.raft_log.last_index();
        let waiting = solo.write(21, vec![put("a", "1")], vec![]);
        solo.peer
            .raw
            .raft
            .become_follower(solo.peer.raw.raft.term + 1, raft::INVALID_ID);
        solo.peer.flush_proposals();
        assert_eq!(answer(waiting), msg::not_leader(1, None));
        assert_eq!(solo.peer.raw.raft.raft_log.last_index(), before);
    }
}
