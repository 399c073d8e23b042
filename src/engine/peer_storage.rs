//! `raft::Storage` for one region's peer, over the shared engine.
//!
//! In memory it keeps only positions (hard state, last index/term, applied and truncated
//! index); entries are read from the `raft` CF. Mutations are staged into a caller's
//! `WriteBatch` and reflected in memory at once: the raftstore writes that batch before it
//! calls `advance` on the raft node, and a failed write stops the node (crash-stop), so raft
//! never observes state that is not on disk. The log keeps the "dummy entry" contract:
//! `first_index() == truncated_index + 1` and `term(truncated_index) == truncated_term`.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::mpsc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::entry_cache::EntryCache;
use super::snapshot::{self, SnapshotFile};
use super::{Engine, EngineError, Result, WriteBatch, CF_DEFAULT, CF_META, CF_RAFT};
use crate::keys;
use crate::proto::metapb::Region;
use crate::proto::raft_serverpb::{
    self as pb, PeerState, RaftApplyState, RaftLocalState, RegionLocalState,
};
use crate::region::{RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM};

/// Everything persisted about one region on this node.
#[derive(Clone, Debug, Default)]
pub struct PersistedRegion {
    pub region_state: RegionLocalState,
    pub raft_state: RaftLocalState,
    pub apply_state: RaftApplyState,
}

impl PersistedRegion {
    /// The state of a region bootstrapped on this node with every peer a voter.
    pub fn bootstrap(region: Region) -> PersistedRegion {
        let voters = region.peers.iter().map(|p| p.id).collect();
        PersistedRegion {
            region_state: RegionLocalState {
                region: Some(region),
                state: PeerState::Normal as i32,
                conf_state: Some(pb::ConfState {
                    voters,
                    ..Default::default()
                }),
                destroyed_peer_id: 0,
            },
            raft_state: RaftLocalState {
                term: RAFT_INIT_LOG_TERM,
                vote: 0,
                commit: RAFT_INIT_LOG_INDEX,
                last_index: RAFT_INIT_LOG_INDEX,
                last_term: RAFT_INIT_LOG_TERM,
            },
            apply_state: RaftApplyState {
                applied_index: RAFT_INIT_LOG_INDEX,
                applied_term: RAFT_INIT_LOG_TERM,
                truncated_index: RAFT_INIT_LOG_INDEX,
                truncated_term: RAFT_INIT_LOG_TERM,
            },
        }
    }

    /// The state of a region created on this node by a split: empty log at the initial
    /// position, like a bootstrapped one, with `region`'s voters and learners. A term and vote
    /// an uninitialized peer of the region already recorded here (it may have voted before
    /// this replica applied the split) are kept.
    pub fn for_split(region: Region, earlier: Option<&RaftLocalState>) -> PersistedRegion {
        let of_role = |role: crate::proto::metapb::PeerRole| -> Vec<u64> {
            region
                .peers
                .iter()
                .filter(|p| p.role == role as i32)
                .map(|p| p.id)
                .collect()
        };
        let conf_state = pb::ConfState {
            voters: of_role(crate::proto::metapb::PeerRole::Voter),
            learners: of_role(crate::proto::metapb::PeerRole::Learner),
            ..Default::default()
        };
        let mut persisted = PersistedRegion::bootstrap(region);
        persisted.region_state.conf_state = Some(conf_state);
        if let Some(earlier) = earlier.filter(|e| e.term > RAFT_INIT_LOG_TERM) {
            persisted.raft_state.term = earlier.term;
            persisted.raft_state.vote = earlier.vote;
        }
        persisted
    }

    /// One region's persisted state, if this node has any (tombstones included).
    pub fn load(engine: &Engine, region_id: u64) -> Result<Option<PersistedRegion>> {
        let Some(region_state) = PeerStorage::load_region_state(engine, region_id)? else {
            return Ok(None);
        };
        let raft_state = engine
            .get_msg(CF_META, &keys::raft_state_key(region_id), "RaftLocalState")?
            .unwrap_or_default();
        let apply_state = engine
            .get_msg(CF_META, &keys::apply_state_key(region_id), "RaftApplyState")?
            .unwrap_or_default();
        Ok(Some(PersistedRegion {
            region_state,
            raft_state,
            apply_state,
        }))
    }

    /// The raft state an uninitialized peer of `region_id` left here, if any.
    pub fn load_raft_state(engine: &Engine, region_id: u64) -> Result<Option<RaftLocalState>> {
        engine.get_msg(CF_META, &keys::raft_state_key(region_id), "RaftLocalState")
    }

    /// Stages all three states into `batch`.
    pub fn write_to(&self, engine: &Engine, batch: &mut WriteBatch) -> Result<()> {
        let id = self.region_id();
        batch.put_msg(
            engine,
            CF_META,
            &keys::region_state_key(id),
            &self.region_state,
        )?;
        batch.put_msg(engine, CF_META, &keys::raft_state_key(id), &self.raft_state)?;
        batch.put_msg(
            engine,
            CF_META,
            &keys::apply_state_key(id),
            &self.apply_state,
        )?;
        Ok(())
    }

    pub fn region_id(&self) -> u64 {
        self.region_state.region.as_ref().map_or(0, |r| r.id)
    }

    /// Loads every region stored on this node (tombstones included; the caller filters).
    pub fn load_all(engine: &Engine) -> Result<Vec<PersistedRegion>> {
        let (start, end) = keys::region_state_range();
        let mut region_states = Vec::new();
        engine.scan(CF_META, &start, &end, |_, value| {
            let state = prost::Message::decode(value).map_err(|source| EngineError::Decode {
                what: "RegionLocalState",
                source,
            })?;
            region_states.push(state);
            Ok(true)
        })?;
        let mut regions = Vec::with_capacity(region_states.len());
        for region_state in region_states {
            let region_state: RegionLocalState = region_state;
            let id = region_state.region.as_ref().map_or(0, |r| r.id);
            let raft_state =
                engine.get_msg(CF_META, &keys::raft_state_key(id), "RaftLocalState")?;
            let apply_state: Option<RaftApplyState> =
                engine.get_msg(CF_META, &keys::apply_state_key(id), "RaftApplyState")?;
            // A destroyed peer keeps only its tombstone: no raft or apply state.
            let tombstone = region_state.state == PeerState::Tombstone as i32;
            let (raft_state, apply_state) = match (raft_state, apply_state) {
                (Some(raft), Some(apply)) => (raft, apply),
                _ if tombstone => Default::default(),
                (None, _) => {
                    return Err(EngineError::Corruption(format!(
                        "region {id}: no raft state"
                    )))
                }
                (_, None) => {
                    return Err(EngineError::Corruption(format!(
                        "region {id}: no apply state"
                    )))
                }
            };
            regions.push(PersistedRegion {
                region_state,
                raft_state,
                apply_state,
            });
        }
        Ok(regions)
    }
}

/// Where an asynchronous snapshot generation stands.
enum SnapshotGeneration {
    Idle,
    Running(mpsc::Receiver<Result<SnapshotFile>>),
    Ready(SnapshotFile),
}

/// One region's raft storage.
pub struct PeerStorage {
    engine: Engine,
    store_id: u64,
    snap_dir: PathBuf,
    pub region: Region,
    raft_state: RaftLocalState,
    apply_state: RaftApplyState,
    conf_state: ConfState,
    generation: RefCell<SnapshotGeneration>,
    /// The newest log entries, for raft's `term`/`entries` lookups.
    cache: EntryCache,
    /// Bytes of log entries appended since this peer started and not yet compacted away (an
    /// estimate: compaction removes a proportional share): what size-based log GC watches.
    log_bytes: u64,
}

pub(super) fn conf_state_to_raft(cs: &pb::ConfState) -> ConfState {
    let mut out = ConfState::default();
    out.set_voters(cs.voters.clone());
    out.set_learners(cs.learners.clone());
    out.set_voters_outgoing(cs.voters_outgoing.clone());
    out.set_learners_next(cs.learners_next.clone());
    out.set_auto_leave(cs.auto_leave);
    out
}

/// raft-rs ConfState in our persisted form.
pub fn conf_state_from_raft(cs: &ConfState) -> pb::ConfState {
    pb::ConfState {
        voters: cs.get_voters().to_vec(),
        learners: cs.get_learners().to_vec(),
        voters_outgoing: cs.get_voters_outgoing().to_vec(),
        learners_next: cs.get_learners_next().to_vec(),
        auto_leave: cs.get_auto_leave(),
    }
}

fn storage_error(err: EngineError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(err)))
}

impl PeerStorage {
    pub fn new(
        engine: Engine,
        store_id: u64,
        snap_dir: PathBuf,
        persisted: PersistedRegion,
    ) -> PeerStorage {
        let mut raft_state = persisted.raft_state;
        // Committed entries may be applied before the commit index that covers them is
        // persisted (it rides in a later batch); applied entries are committed by definition.
        raft_state.commit = raft_state.commit.max(persisted.apply_state.applied_index);
        let conf_state = persisted
            .region_state
            .conf_state
            .as_ref()
            .map(conf_state_to_raft)
            .unwrap_or_default();
        PeerStorage {
            engine,
            store_id,
            snap_dir,
            region: persisted.region_state.region.unwrap_or_default(),
            raft_state,
            apply_state: persisted.apply_state,
            conf_state,
            generation: RefCell::new(SnapshotGeneration::Idle),
            cache: EntryCache::default(),
            log_bytes: 0,
        }
    }

    /// The storage of a peer created on this store to join region `region_id`: no range, no
    /// peers, an empty log, waiting for a snapshot. It keeps the term and vote of an earlier
    /// incarnation that never got initialized (a vote must never be forgotten).
    pub fn uninitialized(
        engine: Engine,
        store_id: u64,
        snap_dir: PathBuf,
        region_id: u64,
    ) -> Result<PeerStorage> {
        let earlier: Option<RaftLocalState> =
            engine.get_msg(CF_META, &keys::raft_state_key(region_id), "RaftLocalState")?;
        let raft_state = RaftLocalState {
            term: earlier.as_ref().map_or(0, |s| s.term),
            vote: earlier.as_ref().map_or(0, |s| s.vote),
            ..Default::default()
        };
        Ok(PeerStorage {
            engine,
            store_id,
            snap_dir,
            region: Region {
                id: region_id,
                ..Default::default()
            },
            raft_state,
            apply_state: RaftApplyState::default(),
            conf_state: ConfState::default(),
            generation: RefCell::new(SnapshotGeneration::Idle),
            cache: EntryCache::default(),
            log_bytes: 0,
        })
    }

    /// The persisted state of `region_id` on this store (tombstones included), if any.
    pub fn load_region_state(engine: &Engine, region_id: u64) -> Result<Option<RegionLocalState>> {
        engine.get_msg(
            CF_META,
            &keys::region_state_key(region_id),
            "RegionLocalState",
        )
    }

    /// Whether the peer has a range and a configuration (bootstrapped or from a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.region.peers.is_empty()
    }

    pub fn region_id(&self) -> u64 {
        self.region.id
    }

    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// Estimated bytes of log entries held (see `log_bytes`).
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    pub fn truncated_index(&self) -> u64 {
        self.apply_state.truncated_index
    }

    pub fn last_log_index(&self) -> u64 {
        self.raft_state.last_index
    }

    pub fn commit_index(&self) -> u64 {
        self.raft_state.commit
    }

    pub fn apply_state(&self) -> &RaftApplyState {
        &self.apply_state
    }

    pub fn raft_conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Stages new log entries (overwriting any conflicting suffix) into `batch`.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let region_id = self.region.id;
        debug_assert!(first.index > self.apply_state.truncated_index);
        for entry in entries {
            let bytes = entry.write_to_bytes()?;
            self.log_bytes += bytes.len() as u64;
            batch.put(
                &self.engine,
                CF_RAFT,
                &keys::raft_log_key(region_id, entry.index),
                &bytes,
            )?;
        }
        // A new leader may have truncated our uncommitted tail: drop what lies beyond.
        if last.index < self.raft_state.last_index {
            batch.delete_range(
                &self.engine,
                CF_RAFT,
                &keys::raft_log_key(region_id, last.index + 1),
                &keys::raft_log_key(region_id, self.raft_state.last_index + 1),
            )?;
        }
        self.raft_state.last_index = last.index;
        self.raft_state.last_term = last.term;
        self.cache.append(entries);
        Ok(())
    }

    /// Forgets the cached log entries (the region went idle: memory per idle region stays
    /// small).
    pub fn clear_entry_cache(&mut self) {
        self.cache.clear();
    }

    /// Records a new hard state; true when it must be made durable before raft goes on (a
    /// new term or vote). A commit index alone need not be: after a crash it is at least the
    /// applied index (see `PeerStorage::new`) and the leader tells the rest again.
    pub fn set_hard_state(&mut self, hs: &HardState) -> bool {
        let must_persist = hs.term != self.raft_state.term || hs.vote != self.raft_state.vote;
        self.raft_state.term = hs.term;
        self.raft_state.vote = hs.vote;
        self.raft_state.commit = hs.commit;
        must_persist
    }

    /// Stages the raft state (hard state + last position).
    pub fn write_raft_state(&self, batch: &mut WriteBatch) -> Result<()> {
        batch.put_msg(
            &self.engine,
            CF_META,
            &keys::raft_state_key(self.region.id),
            &self.raft_state,
        )
    }

    /// Stages the apply state; goes in the same batch as the applied data.
    pub fn set_applied(&mut self, index: u64, term: u64, batch: &mut WriteBatch) -> Result<()> {
        self.apply_state.applied_index = index;
        self.apply_state.applied_term = term;
        self.write_apply_state(batch)
    }

    fn write_apply_state(&self, batch: &mut WriteBatch) -> Result<()> {
        batch.put_msg(
            &self.engine,
            CF_META,
            &keys::apply_state_key(self.region.id),
            &self.apply_state,
        )
    }

    /// Stages a membership change: the region (new peers, new conf_ver) and raft's conf
    /// state, in the apply batch that also records the conf change entry as applied.
    pub fn set_region(
        &mut self,
        region: Region,
        conf_state: ConfState,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        self.region = region;
        self.conf_state = conf_state;
        // A cached snapshot carries the old configuration: a peer added since would find
        // itself missing from it and refuse it. (A transfer already streaming has the file
        // open and finishes.)
        if let SnapshotGeneration::Ready(file) = self.generation.replace(SnapshotGeneration::Idle) {
            file.remove();
        }
        self.write_region_state(batch)
    }

    /// Stages the destruction of this peer: a tombstone (the region as last known, so stale
    /// messages for it are recognized), its raft state and log gone, and — when `delete_data`
    /// — its data range deleted. One batch: a crash leaves the peer either whole or gone.
    pub fn destroy(&self, peer_id: u64, delete_data: bool, batch: &mut WriteBatch) -> Result<()> {
        let id = self.region.id;
        let tombstone = RegionLocalState {
            region: Some(self.region.clone()),
            state: PeerState::Tombstone as i32,
            conf_state: Some(conf_state_from_raft(&self.conf_state)),
            destroyed_peer_id: peer_id,
        };
        batch.put_msg(
            &self.engine,
            CF_META,
            &keys::region_state_key(id),
            &tombstone,
        )?;
        batch.delete(&self.engine, CF_META, &keys::raft_state_key(id))?;
        batch.delete(&self.engine, CF_META, &keys::apply_state_key(id))?;
        batch.delete_range(
            &self.engine,
            CF_RAFT,
            &keys::raft_log_key(id, 0),
            &keys::raft_log_key(id, u64::MAX),
        )?;
        if delete_data && self.is_initialized() {
            batch.delete_range(
                &self.engine,
                CF_DEFAULT,
                &keys::data_range_start(self.region.start_hash),
                &keys::data_range_end(self.region.end_hash),
            )?;
        }
        Ok(())
    }

    fn write_region_state(&self, batch: &mut WriteBatch) -> Result<()> {
        let state = RegionLocalState {
            region: Some(self.region.clone()),
            state: PeerState::Normal as i32,
            conf_state: Some(conf_state_from_raft(&self.conf_state)),
            destroyed_peer_id: 0,
        };
        batch.put_msg(
            &self.engine,
            CF_META,
            &keys::region_state_key(self.region.id),
            &state,
        )
    }

    /// Compacts the log up to and including `compact_index` (which must be applied).
    pub fn compact_to(&mut self, compact_index: u64, batch: &mut WriteBatch) -> Result<()> {
        let truncated = self.apply_state.truncated_index;
        if compact_index <= truncated {
            return Ok(());
        }
        assert!(
            compact_index <= self.apply_state.applied_index,
            "region {}: compacting past applied {compact_index} > {}",
            self.region.id,
            self.apply_state.applied_index
        );
        let term = raft::Storage::term(self, compact_index).map_err(|e| {
            EngineError::Corruption(format!(
                "region {}: term of {compact_index}: {e}",
                self.region.id
            ))
        })?;
        let (kept, held) = (
            self.raft_state.last_index.saturating_sub(compact_index),
            self.raft_state.last_index.saturating_sub(truncated).max(1),
        );
        self.log_bytes = (self.log_bytes as u128 * kept as u128 / held as u128) as u64;
        self.apply_state.truncated_index = compact_index;
        self.cache.compact_to(compact_index);
        self.apply_state.truncated_term = term;
        // Truncated state first: whatever survives a crash, first_index never points at a
        // deleted entry.
        self.write_apply_state(batch)?;
        batch.delete_range(
            &self.engine,
            CF_RAFT,
            &keys::raft_log_key(self.region.id, truncated + 1),
            &keys::raft_log_key(self.region.id, compact_index + 1),
        )
    }

    /// Stages a received snapshot: the region's data range is replaced by the snapshot's,
    /// the log is emptied, and applied = truncated = the snapshot's index — all in `batch`,
    /// which the raftstore writes synced together with the hard state.
    pub fn apply_snapshot(&mut self, snap: &Snapshot, batch: &mut WriteBatch) -> Result<u64> {
        self.cache.clear();
        self.log_bytes = 0;
        let meta = snap.get_metadata();
        let file = SnapshotFile::from_snapshot(snap, &self.snap_dir)?;
        let region = file.meta.region.clone().unwrap_or_default();
        // Only the snapshot's own range is replaced. A region's range only ever shrinks (by
        // splits), and whatever this replica held beyond the new range belongs to the regions
        // split off meanwhile: their own peers here (or their snapshots) own that data.
        batch.delete_range(
            &self.engine,
            CF_DEFAULT,
            &keys::data_range_start(region.start_hash),
            &keys::data_range_end(region.end_hash),
        )?;
        let kv_count = file.load_into(&self.engine, batch)?;
        batch.delete_range(
            &self.engine,
            CF_RAFT,
            &keys::raft_log_key(self.region.id, 0),
            &keys::raft_log_key(self.region.id, u64::MAX),
        )?;
        self.region = region;
        self.conf_state = meta.get_conf_state().clone();
        self.apply_state = RaftApplyState {
            applied_index: meta.index,
            applied_term: meta.term,
            truncated_index: meta.index,
            truncated_term: meta.term,
        };
        self.raft_state.last_index = meta.index;
        self.raft_state.last_term = meta.term;
        self.raft_state.commit = self.raft_state.commit.max(meta.index);
        self.write_region_state(batch)?;
        self.write_raft_state(batch)?;
        self.write_apply_state(batch)?;
        Ok(kv_count)
    }

    /// Removes the local snapshot file of an applied snapshot.
    pub fn remove_snapshot_file(&self, snap: &Snapshot) {
        if let Ok(file) = SnapshotFile::from_snapshot(snap, &self.snap_dir) {
            file.remove();
        }
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        if let Some(cached) = self.cache.slice(low, high, max_size) {
            return Ok(cached);
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let start = keys::raft_log_key(self.region.id, low);
        let end = keys::raft_log_key(self.region.id, high);
        let mut expected = low;
        let mut stopped_by_size = false;
        self.engine.scan(CF_RAFT, &start, &end, |_, value| {
            let entry = Entry::parse_from_bytes(value)?;
            if entry.index != expected {
                return Err(EngineError::Corruption(format!(
                    "region {}: raft log gap, expected {expected}, found {}",
                    self.region.id, entry.index
                )));
            }
            expected += 1;
            size += u64::from(entry.compute_size());
            // raft-rs contract: at least one entry even if it alone exceeds max_size.
            if !entries.is_empty() && max_size.is_some_and(|max| size > max) {
                stopped_by_size = true;
                return Ok(false);
            }
            entries.push(entry);
            Ok(true)
        })?;
        if expected < high && !stopped_by_size {
            return Err(EngineError::Corruption(format!(
                "region {}: raft log entries [{low}, {high}) missing from {expected}",
                self.region.id
            )));
        }
        Ok(entries)
    }
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hard_state = HardState {
            term: self.raft_state.term,
            vote: self.raft_state.vote,
            commit: self.raft_state.commit,
            ..Default::default()
        };
        Ok(RaftState::new(hard_state, self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply_state.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        self.read_entries(low, high, max_size.into())
            .map_err(storage_error)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let truncated = self.apply_state.truncated_index;
        if idx == truncated {
            return Ok(self.apply_state.truncated_term);
        }
        if idx < truncated {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.raft_state.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.raft_state.last_index {
            return Ok(self.raft_state.last_term);
        }
        if let Some(term) = self.cache.term(idx) {
            return Ok(term);
        }
        let entries = self
            .read_entries(idx, idx + 1, None)
            .map_err(storage_error)?;
        Ok(entries[0].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    /// Snapshots are generated off the poller thread: the first call starts a generation and
    /// answers "temporarily unavailable"; raft asks again on the follower's next response.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut generation = self.generation.borrow_mut();
        if let SnapshotGeneration::Running(rx) = &*generation {
            match rx.try_recv() {
                Ok(Ok(file)) => *generation = SnapshotGeneration::Ready(file),
                Ok(Err(err)) => {
                    tracing::warn!(region = self.region.id, %err, "snapshot generation failed");
                    *generation = SnapshotGeneration::Idle;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    return Err(raft::Error::Store(
                        StorageError::SnapshotTemporarilyUnavailable,
                    ))
                }
                Err(mpsc::TryRecvError::Disconnected) => *generation = SnapshotGeneration::Idle,
            }
        }
        if let SnapshotGeneration::Ready(file) = &*generation {
            // A snapshot older than the compacted log is useless: the follower would need
            // entries after it that are gone, and would be sent the same snapshot forever.
            let fresh = file.index() >= request_index && file.index() >= self.truncated_index();
            // One made before `to` joined the configuration would be refused by it, and one
            // made before a split or membership change describes a region that no longer is.
            let conf = file.snapshot.get_metadata().get_conf_state();
            let names_to = [
                conf.get_voters(),
                conf.get_learners(),
                conf.get_voters_outgoing(),
            ]
            .iter()
            .any(|ids| ids.contains(&to));
            let current_shape =
                file.meta.region.as_ref().map(|r| r.epoch) == Some(self.region.epoch);
            if fresh && names_to && current_shape && file.exists() {
                return Ok(file.snapshot.clone());
            }
            file.remove();
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let engine = self.engine.clone();
        let region_id = self.region.id;
        let store_id = self.store_id;
        let snap_dir = self.snap_dir.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("snap-gen-{region_id}"))
            .spawn(move || {
                let result = snapshot::generate_snapshot(&engine, store_id, region_id, &snap_dir);
                let _ = tx.send(result);
            });
        match spawned {
            Ok(_) => *generation = SnapshotGeneration::Running(rx),
            Err(err) => {
                tracing::warn!(region = region_id, %err, "cannot spawn snapshot generation");
                *generation = SnapshotGeneration::Idle;
            }
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::EntryType;
    use std::time::{Duration, Instant};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            entry_type: EntryType::EntryNormal,
            ..Default::default()
        }
    }

    /// Asks for a snapshot until the background generation delivers one.
    fn wait_snapshot(storage: &PeerStorage) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match raft::Storage::snapshot(storage, 0, 2) {
                Ok(snapshot) => return snapshot,
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(err) => panic!("snapshot: {err}"),
            }
        }
    }

    /// Regression (found by the nemesis suite): a cached snapshot older than the compacted log
    /// was handed out again and again to a follower that could never continue from it.
    #[test]
    fn a_snapshot_older_than_the_compacted_log_is_regenerated() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| EngineError::Corruption(e.to_string()))?;
        let engine = Engine::open(&dir.path().join("db"))?;
        let region = crate::region::static_bootstrap_regions(1, &[1, 2, 3]).remove(0);
        let persisted = PersistedRegion::bootstrap(region);
        let mut batch = engine.batch();
        persisted.write_to(&engine, &mut batch)?;
        engine.write(batch, true)?;
        let snap_dir = dir.path().join("snap");
        std::fs::create_dir_all(&snap_dir).map_err(|e| EngineError::Corruption(e.to_string()))?;
        let mut storage = PeerStorage::new(engine.clone(), 1, snap_dir, persisted);
        let first = crate::region::RAFT_INIT_LOG_INDEX + 1;

        let entries: Vec<Entry> = (first..first + 20).map(|i| entry(i, 6)).collect();
        let mut batch = engine.batch();
        storage.append(&entries, &mut batch)?;
        storage.set_applied(first + 9, 6, &mut batch)?;
        engine.write(batch, true)?;
        let old = wait_snapshot(&storage);
        assert_eq!(old.get_metadata().index, first + 9);

        let mut batch = engine.batch();
        storage.set_applied(first + 19, 6, &mut batch)?;
        storage.compact_to(first + 15, &mut batch)?;
        engine.write(batch, true)?;
        let new = wait_snapshot(&storage);
        assert!(
            new.get_metadata().index >= first + 15,
            "got a snapshot at {} although the log is compacted to {}",
            new.get_metadata().index,
            first + 15
        );
        Ok(())
    }
}
