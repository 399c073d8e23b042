//! The cluster as placement knows it: stores, regions on the hash ring, the id allocator.
//!
//! State is split in two. The durable part (cluster id, bootstrap flag, id watermark, store
//! addresses, region metadata) changes only through [`ClusterState::commit`]: the change is
//! made on a copy, saved (see `storage`), and only then becomes the live state, so nothing
//! placement ever answered can be forgotten by a crash. The volatile part (heartbeat times,
//! statistics, who leads a region, the operators in flight) is rebuilt from heartbeats after a
//! restart.
//!
//! What region leaders last said (leader, statistics, peers catching up, snapshots streaming,
//! joint configurations) is volatile and kept in `live`.
//!
//! Every accepted region report is also a chance to schedule (see `scheduling`): the operator
//! in flight for the region is judged and re-sent (see `operator`), or, with none, the move
//! goal, the replica checker, the hot-region scheduler and the balancers may start one. Healing waits for
//! `max_store_down_time` counted from placement's own start too, so a placement restart alone
//! never looks like stores going down. Admin requests (split, leader transfer, move, store
//! removal) are checked and turned into operators, goals or store states in `admin`.
//!
//! A store's life: registered (up or down by its heartbeats) → offline (remove-store asked;
//! durable; drained by the checker) → tombstone (durable, once no region placement knows has
//! a peer on it; refused for good).
//!
//! Nothing goes backwards: a region heartbeat with an older epoch than placement knows, or an
//! older one than a region overlapping its range, is refused (a split or membership change
//! placement has seen must not be undone by a late report from before it); so is a leader
//! report from an older raft term.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use ringkv_proto::metapb::{Peer, Region, RegionEpoch, Store};
use ringkv_proto::placementpb::{
    OperatorInfo, PersistedState, PersistedStore, RegionHeartbeatResponse, RegionStats,
    RegionWithLeader, RequestHeader, SnapshotProgress, StoreInfo, StoreState, StoreStats,
};

use crate::error::{PlacementError, Result};
use crate::hot::{HotStreak, HotThresholds, Load};
use crate::operator::OperatorController;
use crate::storage::Storage;

mod admin;
mod live;
mod scheduling;

pub use live::StuckJoint;

/// Ids are persisted as a watermark this far ahead of the last one handed out, so most
/// allocations need no write; a restart skips the unused rest.
const ID_BATCH: u64 = 1000;

/// Placement's knobs.
#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// Replicas every region should have.
    pub max_replicas: u32,
    /// A store without a heartbeat for this long is reported down and its replicas are
    /// replaced (counted from placement's start for stores not heard from since).
    pub max_store_down_time: Duration,
    /// An operator not seen done by then is given up (default 5 minutes).
    pub operator_timeout: Duration,
    /// Operators in flight cluster-wide at most (default 16); more wait for a free slot.
    /// Admin requests are never refused for it but take slots too. 0 turns all scheduling
    /// off but admin splits and leader transfers (a move's steps wait for slots as well).
    pub replica_schedule_limit: u32,
    /// Run the balance schedulers (default true): once the replica rules have nothing to do
    /// for a region, move hot regions' leadership off the store carrying the most load (see
    /// `hot`), and even out leaders and peers per store until the counts are within 1 of
    /// each other (max - min <= 1; for leaders, among the stores holding a region's voters).
    pub balance: bool,
    /// Leader transfers of the leader balancer in flight at most (default 4).
    pub leader_schedule_limit: u32,
    /// Moves (goals) of the region balancer in flight at most (default 4).
    pub region_schedule_limit: u32,
    /// A region is hot when this many bytes per second are written to it (default 1 MiB/s;
    /// 0: writes never make a region hot)...
    pub hot_region_write_bytes_per_sec: u64,
    /// ... or this many keys per second are read from it (default 1000; 0: reads never
    /// make a region hot)...
    pub hot_region_read_keys_per_sec: u64,
    /// ... in at least this many consecutive reports of its leader (default 3).
    pub hot_region_min_reports: u32,
    /// Leader transfers of the hot-region scheduler in flight at most (default 2).
    pub hot_region_schedule_limit: u32,
    /// The hot-region scheduler moves a region's leadership at most once per this long
    /// (default 60 s), so a region's load settles before it is judged again.
    pub hot_region_cooldown: Duration,
}

impl PlacementConfig {
    pub(crate) fn hot_thresholds(&self) -> HotThresholds {
        HotThresholds {
            written_bytes_per_sec: self.hot_region_write_bytes_per_sec,
            read_keys_per_sec: self.hot_region_read_keys_per_sec,
            min_reports: self.hot_region_min_reports,
        }
    }
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            max_replicas: 3,
            max_store_down_time: Duration::from_secs(30 * 60),
            operator_timeout: Duration::from_secs(5 * 60),
            replica_schedule_limit: 16,
            balance: true,
            leader_schedule_limit: 4,
            region_schedule_limit: 4,
            hot_region_write_bytes_per_sec: 1 << 20,
            hot_region_read_keys_per_sec: 1000,
            hot_region_min_reports: 3,
            hot_region_schedule_limit: 2,
            hot_region_cooldown: Duration::from_secs(60),
        }
    }
}

/// The part of the state that survives a restart.
#[derive(Clone, Debug, Default)]
struct Durable {
    cluster_id: u64,
    bootstrapped: bool,
    id_watermark: u64,
    stores: BTreeMap<u64, PersistedStore>,
    regions: BTreeMap<u64, Region>,
    /// start_hash → region id, for every region in `regions`.
    ring: BTreeMap<u64, u64>,
    /// store id → peers on it over all `regions` (no zero entries); derived, not saved.
    peer_counts: BTreeMap<u64, u64>,
}

impl Durable {
    fn to_proto(&self) -> PersistedState {
        PersistedState {
            cluster_id: self.cluster_id,
            bootstrapped: self.bootstrapped,
            id_watermark: self.id_watermark,
            stores: self.stores.values().cloned().collect(),
            regions: self.regions.values().cloned().collect(),
        }
    }

    fn from_proto(state: PersistedState) -> Result<Durable> {
        let mut durable = Durable {
            cluster_id: state.cluster_id,
            bootstrapped: state.bootstrapped,
            id_watermark: state.id_watermark,
            ..Durable::default()
        };
        for store in state.stores {
            let id = store.store.as_ref().map_or(0, |s| s.id);
            durable.stores.insert(id, store);
        }
        for region in state.regions {
            if durable.ring.contains_key(&region.start_hash) {
                return Err(PlacementError::Corrupt(format!(
                    "two regions start at hash {}",
                    region.start_hash
                )));
            }
            durable.insert_region(region);
        }
        Ok(durable)
    }

    /// `peer_counts` recomputed from scratch, to check the incremental one.
    fn count_peers(&self) -> BTreeMap<u64, u64> {
        let mut counts = BTreeMap::new();
        for peer in self.regions.values().flat_map(|r| &r.peers) {
            *counts.entry(peer.store_id).or_default() += 1;
        }
        counts
    }

    /// Ids of regions whose range overlaps `[start, end)` (end 0 = ring end).
    fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        let mut ids = vec![];
        // The region holding `start`, if it starts before it.
        if let Some((_, &id)) = self.ring.range(..=start).next_back() {
            if let Some(region) = self.regions.get(&id) {
                if contains(region, start) {
                    ids.push(id);
                }
            }
        }
        let upper = if end == 0 {
            Bound::Unbounded
        } else {
            Bound::Excluded(end)
        };
        for (_, &id) in self.ring.range((Bound::Excluded(start), upper)) {
            ids.push(id);
        }
        ids
    }

    fn remove_region(&mut self, id: u64) {
        if let Some(region) = self.regions.remove(&id) {
            if self.ring.get(&region.start_hash) == Some(&id) {
                self.ring.remove(&region.start_hash);
            }
            for peer in &region.peers {
                if let Some(count) = self.peer_counts.get_mut(&peer.store_id) {
                    *count -= 1;
                    if *count == 0 {
                        self.peer_counts.remove(&peer.store_id);
                    }
                }
            }
        }
    }

    /// Marks every offline store with no peer left a tombstone; returns their ids.
    fn retire_drained_stores(&mut self) -> Vec<u64> {
        let mut retired = vec![];
        for (&id, store) in &mut self.stores {
            if store.offline && !self.peer_counts.contains_key(&id) {
                store.offline = false;
                store.tombstone = true;
                retired.push(id);
            }
        }
        retired
    }

    /// Adds `region`, replacing any region with its id.
    fn insert_region(&mut self, region: Region) {
        self.remove_region(region.id);
        for peer in &region.peers {
            *self.peer_counts.entry(peer.store_id).or_default() += 1;
        }
        self.ring.insert(region.start_hash, region.id);
        self.regions.insert(region.id, region);
    }
}

/// True when `hash` is in `region`'s range.
pub fn contains(region: &Region, hash: u64) -> bool {
    hash >= region.start_hash && (region.end_hash == 0 || hash < region.end_hash)
}

/// One region heartbeat: what the region's leader says about it.
#[derive(Clone, Debug, Default)]
pub struct RegionReport {
    pub region: Region,
    pub leader: Option<Peer>,
    /// The leader's raft term.
    pub term: u64,
    /// Measured by the leader over its last heartbeat interval.
    pub stats: RegionStats,
    /// Peers still catching up (no log match yet, far behind, or receiving a snapshot).
    pub pending_peers: Vec<Peer>,
    /// Snapshots the leader is streaming to peers right now.
    pub snapshots: Vec<SnapshotProgress>,
}

/// What a region's leader last told placement, and what placement concluded from its
/// reports so far (see `live`).
#[derive(Clone, Debug, Default)]
struct RegionLive {
    leader: Option<Peer>,
    term: u64,
    stats: RegionStats,
    /// Of the region's peers, those catching up...
    pending_peers: Vec<Peer>,
    /// ... and the snapshots streaming to them (at most one per peer).
    snapshots: Vec<SnapshotProgress>,
    hot_streak: HotStreak,
    /// When the hot-region scheduler last moved its leadership (for its cooldown).
    hot_transferred_at: Option<Instant>,
    /// The joint configuration it was last reported in.
    joint: Option<JointEpisode>,
}

/// One joint configuration of a region: entering and leaving one each bump conf_ver, so the
/// conf_ver names it.
#[derive(Clone, Copy, Debug)]
struct JointEpisode {
    conf_ver: u64,
    /// The first report that showed it.
    since: Instant,
    /// Logged as stuck already.
    warned: bool,
}

#[derive(Clone, Debug)]
struct StoreLive {
    stats: StoreStats,
    last_heartbeat: Instant,
}

pub struct ClusterState {
    config: PlacementConfig,
    storage: Storage,
    durable: Durable,
    /// Next id to hand out; always <= `durable.id_watermark`.
    next_id: u64,
    /// When this placement process opened the state: stores not heard from since count as
    /// silent from here, not from before the restart.
    started: Instant,
    stores_live: HashMap<u64, StoreLive>,
    regions_live: HashMap<u64, RegionLive>,
    /// store id → regions whose last report named a leader there (no zero entries); derived
    /// from `regions_live` and kept with it.
    leader_counts: BTreeMap<u64, u64>,
    /// store id → the load of the regions it leads, by their last reports (no zero
    /// entries); derived from `regions_live` and kept with it.
    leader_loads: BTreeMap<u64, Load>,
    operators: OperatorController,
    /// Stores whose going down was logged (cleared when they are back).
    logged_down: std::collections::HashSet<u64>,
}

impl ClusterState {
    /// Opens the state in `dir`, creating a new cluster (with a fresh random id) if empty;
    /// `now` is placement's start time.
    pub fn open(dir: &Path, config: PlacementConfig, now: Instant) -> Result<ClusterState> {
        let storage = Storage::open(dir)?;
        let (durable, fresh) = match storage.load()? {
            Some(saved) => (Durable::from_proto(saved)?, false),
            None => {
                let cluster_id = loop {
                    let id: u64 = rand::random();
                    if id != 0 {
                        break id;
                    }
                };
                let durable = Durable {
                    cluster_id,
                    id_watermark: 1,
                    ..Durable::default()
                };
                (durable, true)
            }
        };
        let operators =
            OperatorController::new(config.operator_timeout, config.replica_schedule_limit);
        let mut state = ClusterState {
            config,
            storage,
            next_id: durable.id_watermark.max(1),
            durable,
            started: now,
            stores_live: HashMap::new(),
            regions_live: HashMap::new(),
            leader_counts: BTreeMap::new(),
            leader_loads: BTreeMap::new(),
            operators,
            logged_down: Default::default(),
        };
        if fresh {
            state.commit(state.durable.clone())?;
            tracing::info!(
                cluster_id = state.durable.cluster_id,
                "created a new cluster"
            );
        } else {
            tracing::info!(
                cluster_id = state.durable.cluster_id,
                stores = state.durable.stores.len(),
                regions = state.durable.regions.len(),
                "recovered placement state"
            );
        }
        Ok(state)
    }

    /// Saves `next` and makes it the live durable state. Offline stores it leaves without
    /// peers become tombstones in the same save.
    fn commit(&mut self, mut next: Durable) -> Result<()> {
        debug_assert_eq!(next.peer_counts, next.count_peers(), "peer counts drifted");
        let retired = next.retire_drained_stores();
        self.storage.save(&next.to_proto())?;
        self.durable = next;
        for store in retired {
            tracing::info!(store, "offline store drained: now a tombstone");
        }
        Ok(())
    }

    pub fn cluster_id(&self) -> u64 {
        self.durable.cluster_id
    }

    pub fn is_bootstrapped(&self) -> bool {
        self.durable.bootstrapped
    }

    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Refuses requests from another cluster (or with no header).
    pub fn check_header(&self, header: Option<&RequestHeader>) -> Result<()> {
        let got = header.map_or(0, |h| h.cluster_id);
        if got != self.durable.cluster_id {
            return Err(PlacementError::ClusterMismatch {
                expected: self.durable.cluster_id,
                got,
            });
        }
        Ok(())
    }

    fn require_bootstrapped(&self) -> Result<()> {
        if self.durable.bootstrapped {
            Ok(())
        } else {
            Err(PlacementError::NotBootstrapped)
        }
    }

    /// Hands out `count` consecutive ids (at least one); returns the first.
    pub fn alloc_ids(&mut self, count: u32) -> Result<(u64, u32)> {
        let count = count.max(1);
        let first = self.next_id;
        let end = first + u64::from(count);
        if end > self.durable.id_watermark {
            let mut next = self.durable.clone();
            next.id_watermark = end + ID_BATCH;
            self.commit(next)?;
        }
        self.next_id = end;
        Ok((first, count))
    }

    /// True when `id` was handed out by [`Self::alloc_ids`].
    fn was_allocated(&self, id: u64) -> bool {
        id != 0 && id < self.next_id
    }

    fn check_store_fields(&self, store: &Store) -> Result<()> {
        if !self.was_allocated(store.id) {
            return Err(PlacementError::Invalid(format!(
                "store id {} was not allocated by this cluster",
                store.id
            )));
        }
        if store.raft_addr.is_empty() {
            return Err(PlacementError::Invalid(format!(
                "store {} has no raft address",
                store.id
            )));
        }
        let clash = self.durable.stores.values().find(|other| {
            let other_store = other.store.as_ref();
            !other.tombstone
                && other_store.is_some_and(|o| o.id != store.id && o.raft_addr == store.raft_addr)
        });
        if let Some(other) = clash {
            return Err(PlacementError::Invalid(format!(
                "raft address {} is already used by store {}",
                store.raft_addr,
                other.store.as_ref().map_or(0, |s| s.id)
            )));
        }
        Ok(())
    }

    /// Creates the cluster: registers `store` and the first `regions`, which must cover the
    /// ring in order without gaps, with allocated ids and every peer on `store`.
    pub fn bootstrap(&mut self, store: Store, regions: Vec<Region>) -> Result<()> {
        if self.durable.bootstrapped {
            return Err(PlacementError::AlreadyBootstrapped);
        }
        self.check_store_fields(&store)?;
        if regions.is_empty() {
            return Err(PlacementError::Invalid("bootstrap needs a region".into()));
        }
        let mut sorted = regions;
        sorted.sort_by_key(|r| r.start_hash);
        let mut expected_start = 0u64;
        let mut seen_ids = std::collections::HashSet::new();
        for (n, region) in sorted.iter().enumerate() {
            if region.start_hash != expected_start || (n > 0 && region.start_hash == 0) {
                return Err(PlacementError::Invalid(format!(
                    "region {} starts at {}, expected {expected_start}: regions must cover the ring in order",
                    region.id, region.start_hash
                )));
            }
            let last = n + 1 == sorted.len();
            if last != (region.end_hash == 0) || (!last && region.end_hash <= region.start_hash) {
                return Err(PlacementError::Invalid(format!(
                    "region {} ends at {}: only the last region may end at the ring end (0)",
                    region.id, region.end_hash
                )));
            }
            expected_start = region.end_hash;
            let ids = std::iter::once(region.id).chain(region.peers.iter().map(|p| p.id));
            for id in ids {
                if !self.was_allocated(id) || !seen_ids.insert(id) {
                    return Err(PlacementError::Invalid(format!(
                        "id {id} in region {} is not allocated or used twice",
                        region.id
                    )));
                }
            }
            if region.peers.is_empty() || region.peers.iter().any(|p| p.store_id != store.id) {
                return Err(PlacementError::Invalid(format!(
                    "region {} must have its peers on the bootstrapping store {}",
                    region.id, store.id
                )));
            }
        }
        let mut next = self.durable.clone();
        next.bootstrapped = true;
        next.stores.insert(
            store.id,
            PersistedStore {
                store: Some(store.clone()),
                ..PersistedStore::default()
            },
        );
        for region in sorted {
            next.insert_region(region);
        }
        self.commit(next)?;
        tracing::info!(
            store = store.id,
            regions = self.durable.regions.len(),
            "cluster bootstrapped"
        );
        Ok(())
    }

    /// Registers a store or updates its addresses.
    pub fn put_store(&mut self, store: Store) -> Result<()> {
        self.require_bootstrapped()?;
        let mut offline = false;
        if let Some(existing) = self.durable.stores.get(&store.id) {
            if existing.tombstone {
                return Err(PlacementError::Tombstone(store.id));
            }
            if existing.store.as_ref() == Some(&store) {
                return Ok(());
            }
            offline = existing.offline;
        }
        self.check_store_fields(&store)?;
        let mut next = self.durable.clone();
        let id = store.id;
        next.stores.insert(
            id,
            PersistedStore {
                store: Some(store),
                tombstone: false,
                offline,
            },
        );
        self.commit(next)?;
        tracing::info!(store = id, "store registered");
        Ok(())
    }

    fn live_store(&self, store_id: u64) -> Result<&PersistedStore> {
        match self.durable.stores.get(&store_id) {
            None => Err(PlacementError::UnknownStore(store_id)),
            Some(store) if store.tombstone => Err(PlacementError::Tombstone(store_id)),
            Some(store) => Ok(store),
        }
    }

    /// Logs each store that went down (no heartbeat for max-store-down-time) since the last
    /// call, once; its return is logged by `store_heartbeat`.
    pub fn log_store_state_changes(&mut self, now: Instant) {
        for info in self.stores(now) {
            let id = info.store.as_ref().map_or(0, |s| s.id);
            let down = info.state == StoreState::Down as i32 && self.stores_live.contains_key(&id);
            if down && self.logged_down.insert(id) {
                tracing::warn!(
                    store = id,
                    silent_ms = info.last_heartbeat_ms_ago,
                    "store down: no heartbeat for max-store-down-time; its replicas will be rebuilt elsewhere"
                );
            } else if !down {
                self.logged_down.remove(&id);
            }
        }
    }

    pub fn store_heartbeat(
        &mut self,
        store_id: u64,
        stats: StoreStats,
        now: Instant,
    ) -> Result<()> {
        self.require_bootstrapped()?;
        self.live_store(store_id)?;
        let was_down = self.stores_live.get(&store_id).is_none_or(|live| {
            now.duration_since(live.last_heartbeat) > self.config.max_store_down_time
        });
        if was_down {
            tracing::info!(store = store_id, "store up");
        }
        self.stores_live.insert(
            store_id,
            StoreLive {
                stats,
                last_heartbeat: now,
            },
        );
        Ok(())
    }

    /// Takes a leader's report about its region (see the module docs for what is refused)
    /// and answers with the step the region should take next; an empty answer (no
    /// `change_peer`, `transfer_leader` or `split`) means nothing to do.
    pub fn region_heartbeat(
        &mut self,
        report: RegionReport,
        now: Instant,
    ) -> Result<RegionHeartbeatResponse> {
        let leader = self.record_region_report(&report, now)?;
        self.schedule(&report.region, &leader, &report.pending_peers, now)
    }

    /// Validates a region report and makes it placement's view; returns its leader.
    fn record_region_report(&mut self, report: &RegionReport, now: Instant) -> Result<Peer> {
        self.require_bootstrapped()?;
        let (region, term) = (&report.region, report.term);
        let id = region.id;
        let epoch = region.epoch.unwrap_or_default();
        if id == 0 || region.peers.is_empty() {
            return Err(PlacementError::Invalid(format!(
                "region {id} has no id or no peers"
            )));
        }
        if region.end_hash != 0 && region.end_hash <= region.start_hash {
            return Err(PlacementError::Invalid(format!(
                "region {id} has an empty range [{}, {})",
                region.start_hash, region.end_hash
            )));
        }
        let Some(leader) = report.leader else {
            return Err(PlacementError::Invalid(format!(
                "heartbeat of region {id} names no leader"
            )));
        };
        if !region.peers.contains(&leader) {
            return Err(PlacementError::Invalid(format!(
                "region {id}: leader {} is not one of its peers",
                leader.id
            )));
        }
        for peer in &region.peers {
            self.live_store(peer.store_id)?;
        }
        let mut changed = true;
        if let Some(known) = self.durable.regions.get(&id) {
            let known_epoch = known.epoch.unwrap_or_default();
            if is_older(&epoch, &known_epoch) {
                return Err(PlacementError::StaleRegion {
                    region_id: id,
                    reason: format!(
                        "epoch {} is older than the known {}",
                        show_epoch(&epoch),
                        show_epoch(&known_epoch)
                    ),
                });
            }
            if epoch == known_epoch {
                if known != region {
                    return Err(PlacementError::Invalid(format!(
                        "region {id} changed without an epoch change"
                    )));
                }
                changed = false;
            }
        }
        let overlaps: Vec<u64> = self
            .durable
            .overlapping(region.start_hash, region.end_hash)
            .into_iter()
            .filter(|&other| other != id)
            .collect();
        for other in &overlaps {
            let other_version = self.durable.regions[other]
                .epoch
                .unwrap_or_default()
                .version;
            if epoch.version < other_version {
                return Err(PlacementError::StaleRegion {
                    region_id: id,
                    reason: format!(
                        "its range overlaps region {other}, which is newer (version {other_version} > {})",
                        epoch.version
                    ),
                });
            }
        }
        let known_term = self.regions_live.get(&id).map_or(0, |live| live.term);
        if term < known_term {
            return Err(PlacementError::StaleRegion {
                region_id: id,
                reason: format!("leader report from term {term}, placement has term {known_term}"),
            });
        }
        if changed || !overlaps.is_empty() {
            let mut next = self.durable.clone();
            for other in &overlaps {
                next.remove_region(*other);
            }
            next.remove_region(id);
            next.insert_region(region.clone());
            self.commit(next)?;
            for &other in &overlaps {
                self.forget_region_live(other);
                self.operators.on_region_replaced(other, region, now);
            }
            tracing::info!(
                region = id,
                epoch = %show_epoch(&epoch),
                replaced = ?overlaps,
                "region updated"
            );
        }
        self.update_region_live(report, leader, now);
        Ok(leader)
    }

    /// The operators and move goals in flight, by region id; those waiting for a learner
    /// to catch up say how far it got.
    pub fn operators(&self, now: Instant) -> Vec<OperatorInfo> {
        self.operators.infos(now, |region_id, store_id| {
            self.learner_note(region_id, store_id)
        })
    }

    fn with_leader(&self, region: &Region) -> RegionWithLeader {
        let live = self.regions_live.get(&region.id);
        RegionWithLeader {
            region: Some(region.clone()),
            leader: live.and_then(|l| l.leader),
            stats: live.map(|l| l.stats),
        }
    }

    /// The region holding ring position `hash`.
    pub fn region_by_hash(&self, hash: u64) -> Result<RegionWithLeader> {
        self.require_bootstrapped()?;
        let region = self
            .durable
            .ring
            .range(..=hash)
            .next_back()
            .and_then(|(_, id)| self.durable.regions.get(id))
            .filter(|region| contains(region, hash))
            .ok_or_else(|| PlacementError::Invalid(format!("no region holds hash {hash}")))?;
        Ok(self.with_leader(region))
    }

    pub fn region_by_id(&self, region_id: u64) -> Result<RegionWithLeader> {
        self.require_bootstrapped()?;
        let region = self
            .durable
            .regions
            .get(&region_id)
            .ok_or(PlacementError::UnknownRegion(region_id))?;
        Ok(self.with_leader(region))
    }

    /// Regions in ring order from the one holding `start_hash`; `limit` 0 = all.
    pub fn scan_regions(&self, start_hash: u64, limit: u32) -> Result<Vec<RegionWithLeader>> {
        self.require_bootstrapped()?;
        let first_start = self
            .durable
            .ring
            .range(..=start_hash)
            .next_back()
            .map_or(0, |(&start, _)| start);
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        Ok(self
            .durable
            .ring
            .range(first_start..)
            .filter_map(|(_, id)| self.durable.regions.get(id))
            .take(limit)
            .map(|region| self.with_leader(region))
            .collect())
    }

    pub fn store_info(&self, store_id: u64, now: Instant) -> Result<StoreInfo> {
        let store = self
            .durable
            .stores
            .get(&store_id)
            .ok_or(PlacementError::UnknownStore(store_id))?;
        Ok(self.info_of(store, now))
    }

    pub fn stores(&self, now: Instant) -> Vec<StoreInfo> {
        self.durable
            .stores
            .values()
            .map(|store| self.info_of(store, now))
            .collect()
    }

    fn info_of(&self, store: &PersistedStore, now: Instant) -> StoreInfo {
        let id = store.store.as_ref().map_or(0, |s| s.id);
        let live = self.stores_live.get(&id);
        let since = live.map(|l| now.duration_since(l.last_heartbeat));
        let state = if store.tombstone {
            StoreState::Tombstone
        } else if store.offline {
            StoreState::Offline
        } else if since.is_some_and(|s| s <= self.config.max_store_down_time) {
            StoreState::Up
        } else {
            StoreState::Down
        };
        StoreInfo {
            store: store.store.clone(),
            state: state as i32,
            stats: live.map(|l| l.stats),
            last_heartbeat_ms_ago: since.map_or(0, |s| s.as_millis() as u64),
        }
    }

    pub fn region_count(&self) -> usize {
        self.durable.regions.len()
    }
}

fn is_older(epoch: &RegionEpoch, known: &RegionEpoch) -> bool {
    epoch.version < known.version || epoch.conf_ver < known.conf_ver
}

fn show_epoch(epoch: &RegionEpoch) -> String {
    format!("(conf_ver {}, version {})", epoch.conf_ver, epoch.version)
}
