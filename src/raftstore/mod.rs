//! The raftstore: every region's peer on this node, driven by a small batch system.
//!
//! * `router` — region id → poller mailbox; hash → local region.
//! * `poller` — the batch loop (group commit across regions, batched apply).
//! * `peer` — one region's raft node and its pending writes/reads.
//! * `msg` — what goes into mailboxes and what comes back.
//! * `read` — serving a read (get, batch get, scan page) from the local replica.
//!
//! This room uses `engine` for storage and sends raft messages through the `RaftSender`
//! seam, which the transport implements; it never touches sockets itself.

mod msg;
mod peer;
mod poller;
mod read;
mod router;

pub use msg::{
    batch_get_result, cursor_hash, done, epoch_not_match, get_result, not_leader, other_error,
    region_not_found, scan_result, server_is_busy, timeout, ChangePeer, Command, PeerMsg,
    PeerStatus, ReadOp, RegionStatus, Reply,
};
pub use read::{read_region, MAX_SCAN_EXAMINED};
pub use router::{Router, SendError};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::{Engine, EngineError, PeerStorage, PersistedRegion};
use crate::keys;
use crate::proto::metapb::Region;
use crate::proto::raft_serverpb::{PeerState, RaftMessage};

/// Where a peer's outgoing raft messages go. Must not block (called from poller threads).
pub trait RaftSender: Send + Sync + 'static {
    fn send(&self, msg: RaftMessage);
}

/// Raftstore settings. Defaults suit a production LAN; tests shorten the tick.
/// See `StoreConfig::raft_sync_interval`.
pub const DEFAULT_RAFT_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// See `StoreConfig::raft_sync_batch_writes`.
pub const DEFAULT_RAFT_SYNC_BATCH_WRITES: u64 = 24;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub store_id: u64,
    /// One raft logical clock tick.
    pub raft_tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (randomized up to 2x by raft).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// A peer compacts its log once it holds more than this many applied entries, or more
    /// than `raft_log_gc_size` bytes of log (batched write entries can be large).
    pub raft_log_gc_threshold: u64,
    pub raft_log_gc_size: u64,
    /// Poller threads; each owns the regions with `region_id % pollers == index`.
    pub pollers: usize,
    /// Messages each poller's mailbox holds before refusing more.
    pub mailbox_capacity: usize,
    /// Where snapshot files are generated and received.
    pub snap_dir: PathBuf,
    /// Set while this store's disk is below its reserved free space (kept current by the
    /// server's disk monitor): client writes to regions with a replica here are refused.
    pub disk_low: Arc<std::sync::atomic::AtomicBool>,
    /// Other stores whose latest message (raft or store heartbeat) said they are low on disk
    /// (kept by the router): leaders refuse writes to regions with a replica there, also
    /// while no raft message of the region flows (hibernation).
    pub low_disk_stores: Arc<parking_lot::RwLock<std::collections::HashSet<u64>>>,
    /// Other stores' vote refusal windows (ms), as their latest message said (kept by the
    /// router): a leader's lease stays within the smallest of its region's stores.
    pub vote_windows: Arc<parking_lot::RwLock<std::collections::HashMap<u64, u64>>>,
    /// Idle regions stop ticking (see `hibernate` in peer.rs): an idle store costs almost
    /// nothing however many regions it holds.
    pub hibernate_regions: bool,
    /// Leaders answer linearizable reads under a quorum-confirmed lease (see
    /// `peer/lease.rs`) instead of a ReadIndex round trip per batch.
    pub lease_reads: bool,
    /// Group commit across rounds: a poller syncs its raft log at most once per interval
    /// while writes keep coming (rounds in between write without an fsync and hold back
    /// what must wait for durability: acks, votes, applying). A write after a quiet spell
    /// syncs at once. Zero syncs every round.
    pub raft_sync_interval: std::time::Duration,
    /// The fsync comes at once, before the interval has passed, once this many client writes
    /// wait for it (the batch is worth one; under heavy load the interval would only add
    /// latency).
    pub raft_sync_batch_writes: u64,
    /// When this store started: it refuses votes for a while after (lease safety), for
    /// `startup_vote_refusal` — the longer of its window and the one it ran with before the
    /// restart (set by `RaftStore::start`; see `startup_vote_refusal`).
    pub started: std::time::Instant,
    pub startup_vote_refusal: std::time::Duration,
}

impl StoreConfig {
    /// Quiet ticks after which an idle, caught-up leader hibernates its region.
    pub fn hibernate_after_ticks(&self) -> usize {
        self.election_ticks * 2
    }

    /// Ticks between store heartbeats (what hibernating followers watch their leader by).
    pub fn store_heartbeat_ticks(&self) -> usize {
        self.heartbeat_ticks.max(1)
    }

    /// How long a store may stay silent before hibernating followers of its leaders wake
    /// (and elect a new leader if it is really gone): two election timeouts.
    pub fn store_silent_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.raft_tick_ms * self.election_ticks as u64 * 2)
    }

    /// How long a peer grants no (pre-)vote after hearing from its leader or after its store
    /// started: `election_ticks - 1` tick intervals (a follower's election timer runs at
    /// least that long too, so elections are not slowed).
    pub fn vote_refusal_window(&self) -> std::time::Duration {
        let ticks = self.election_ticks.saturating_sub(1) as u64;
        std::time::Duration::from_millis(self.raft_tick_ms * ticks)
    }

    /// How long a leader's lease lasts from the ReadIndex that confirmed it: 80% of the vote
    /// refusal window of the voters that confirmed it. `None` when lease reads are off (or
    /// the window is too short for one).
    pub fn lease_duration(&self) -> Option<std::time::Duration> {
        let lease = self.vote_refusal_window() * 4 / 5;
        (self.lease_reads && !lease.is_zero()).then_some(lease)
    }

    pub fn new(store_id: u64, snap_dir: PathBuf) -> StoreConfig {
        StoreConfig {
            store_id,
            raft_tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            raft_log_gc_threshold: 1024,
            raft_log_gc_size: 64 << 20,
            pollers: 1,
            mailbox_capacity: 65_536,
            snap_dir,
            disk_low: Arc::default(),
            low_disk_stores: Arc::default(),
            vote_windows: Arc::default(),
            hibernate_regions: true,
            lease_reads: true,
            raft_sync_interval: DEFAULT_RAFT_SYNC_INTERVAL,
            raft_sync_batch_writes: DEFAULT_RAFT_SYNC_BATCH_WRITES,
            started: std::time::Instant::now(),
            startup_vote_refusal: std::time::Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("data directory belongs to store {found}, not {expected}")]
    WrongStore { expected: u64, found: u64 },
    #[error("starting peer: {0}")]
    Peer(String),
    #[error("snapshot directory {path}: {source}")]
    SnapDir {
        path: String,
        source: std::io::Error,
    },
    #[error("spawning poller thread: {0}")]
    Spawn(std::io::Error),
}

/// A running raftstore.
pub struct RaftStore {
    pub router: Arc<Router>,
    pub engine: Engine,
    pollers: Vec<JoinHandle<()>>,
}

impl RaftStore {
    /// Opens the store's regions (bootstrapping `initial_regions` when the engine has none)
    /// and starts the pollers.
    pub fn start(
        mut cfg: StoreConfig,
        engine: Engine,
        initial_regions: Vec<Region>,
        sender: Arc<dyn RaftSender>,
    ) -> Result<RaftStore, StoreError> {
        check_store_ident(&engine, cfg.store_id)?;
        prepare_snap_dir(&cfg.snap_dir)?;
        cfg.startup_vote_refusal = startup_vote_refusal(&engine, cfg.vote_refusal_window())?;
        let mut persisted = PersistedRegion::load_all(&engine)?;
        if persisted.is_empty() && !initial_regions.is_empty() {
            persisted = bootstrap(&engine, initial_regions)?;
        }
        let pollers = cfg.pollers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..pollers)
            .map(|_| crossbeam_channel::bounded(cfg.mailbox_capacity))
            .unzip();
        let router = Arc::new(Router::new(
            senders,
            cfg.low_disk_stores.clone(),
            cfg.vote_windows.clone(),
            cfg.vote_refusal_window(),
        ));
        let mut peers_by_poller: Vec<HashMap<u64, peer::PeerFsm>> =
            (0..pollers).map(|_| HashMap::new()).collect();
        for region in persisted {
            if region.region_state.state == PeerState::Tombstone as i32 {
                continue;
            }
            let storage =
                PeerStorage::new(engine.clone(), cfg.store_id, cfg.snap_dir.clone(), region);
            if crate::region::find_peer_on_store(&storage.region, cfg.store_id).is_none() {
                // It applied its own removal and crashed before destroying itself.
                let mut batch = engine.batch();
                storage.destroy(0, true, &mut batch)?;
                engine.write(batch, true)?;
                tracing::info!(
                    region = storage.region.id,
                    "destroyed a peer removed before the restart"
                );
                continue;
            }
            let fsm =
                peer::PeerFsm::new(storage, engine.clone(), &cfg).map_err(StoreError::Peer)?;
            let region = fsm.region().clone();
            peers_by_poller[router.poller_of(region.id)].insert(region.id, fsm);
            router.update_region(region);
        }
        // Started from the node's runtime, the pollers hand their answers to it in batches.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut handles = Vec::with_capacity(pollers);
        for (index, (peers, mailbox)) in peers_by_poller.into_iter().zip(receivers).enumerate() {
            let poller = poller::Poller {
                peers,
                mailbox,
                engine: engine.clone(),
                sender: sender.clone(),
                router: router.clone(),
                cfg: cfg.clone(),
                index,
                claimed_snapshot_ranges: Vec::new(),
                adopt_later: Vec::new(),
                ticks: 0,
                known_stores: Vec::new(),
                awake: std::collections::HashSet::new(),
                runtime: runtime.clone(),
                unsynced: Vec::new(),
                log_dirty: false,
                unsynced_writes: 0,
                last_sync: None,
            };
            let handle = std::thread::Builder::new()
                .name(format!("raft-poller-{}-{index}", cfg.store_id))
                .spawn(move || poller.run())
                .map_err(StoreError::Spawn)?;
            handles.push(handle);
        }
        Ok(RaftStore {
            router,
            engine,
            pollers: handles,
        })
    }

    /// Stops the pollers after their current round and waits for them.
    pub fn shutdown(&mut self) {
        self.router.shutdown();
        for handle in self.pollers.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for RaftStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long this store refuses votes after starting: its vote refusal window, or the one it
/// advertised before this restart if that was longer — leaders elsewhere may hold leases
/// sized by the old window (e.g. `--raft-tick-ms` was just lowered). Records the new window,
/// synced, before any message advertises it.
fn startup_vote_refusal(
    engine: &Engine,
    window: std::time::Duration,
) -> Result<std::time::Duration, StoreError> {
    let window_ms = window.as_millis() as u64;
    let before_ms = match engine.get(crate::engine::CF_META, keys::VOTE_WINDOW_KEY)? {
        None => 0,
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| EngineError::Corruption("vote refusal window".into()))?,
    };
    if before_ms != window_ms {
        let mut batch = engine.batch();
        batch.put(
            engine,
            crate::engine::CF_META,
            keys::VOTE_WINDOW_KEY,
            &window_ms.to_be_bytes(),
        )?;
        engine.write(batch, true)?;
    }
    Ok(std::time::Duration::from_millis(window_ms.max(before_ms)))
}

fn check_store_ident(engine: &Engine, store_id: u64) -> Result<(), StoreError> {
    match stored_ident(engine)?.0 {
        Some(found) if found != store_id => Err(StoreError::WrongStore {
            expected: store_id,
            found,
        }),
        Some(_) => Ok(()),
        None => write_ident(engine, store_id, None),
    }
}

/// Snapshot files left from before a restart are useless (senders regenerate, receivers
/// get them again): start empty.
fn prepare_snap_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    let io = |source| StoreError::SnapDir {
        path: dir.display().to_string(),
        source,
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)
}

/// The regions persisted in `engine` (tombstones included).
pub fn stored_regions(engine: &Engine) -> Result<Vec<Region>, StoreError> {
    Ok(PersistedRegion::load_all(engine)?
        .into_iter()
        .filter_map(|r| r.region_state.region)
        .collect())
}

/// Writes `regions` as freshly bootstrapped (synced), before placement is told about them.
pub fn bootstrap_regions(engine: &Engine, regions: Vec<Region>) -> Result<(), StoreError> {
    bootstrap(engine, regions).map(drop)
}

/// Undoes [`bootstrap_regions`] for regions nothing ever used (another store won the race to
/// bootstrap the cluster).
pub fn clear_bootstrapped(engine: &Engine, regions: &[Region]) -> Result<(), StoreError> {
    let mut batch = engine.batch();
    for region in regions {
        for key in [
            keys::region_state_key(region.id),
            keys::raft_state_key(region.id),
            keys::apply_state_key(region.id),
        ] {
            batch.delete(engine, crate::engine::CF_META, &key)?;
        }
    }
    engine.write(batch, true)?;
    Ok(())
}

/// The store id and cluster id recorded in this data dir, if any.
pub fn stored_ident(engine: &Engine) -> Result<(Option<u64>, Option<u64>), StoreError> {
    let read = |key: &[u8], what: &str| -> Result<Option<u64>, StoreError> {
        match engine.get(crate::engine::CF_META, key)? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(u64::from_be_bytes(b)))
                .map_err(|_| EngineError::Corruption(what.into()).into()),
        }
    };
    Ok((
        read(keys::STORE_IDENT_KEY, "store ident")?,
        read(keys::CLUSTER_ID_KEY, "cluster id")?,
    ))
}

/// Records which store (and, under placement, which cluster) this data dir belongs to, synced.
pub fn write_ident(
    engine: &Engine,
    store_id: u64,
    cluster_id: Option<u64>,
) -> Result<(), StoreError> {
    let mut batch = engine.batch();
    let entries = std::iter::once((keys::STORE_IDENT_KEY, store_id))
        .chain(cluster_id.map(|id| (keys::CLUSTER_ID_KEY, id)));
    for (key, value) in entries {
        batch.put(engine, crate::engine::CF_META, key, &value.to_be_bytes())?;
    }
    engine.write(batch, true)?;
    Ok(())
}

fn bootstrap(engine: &Engine, regions: Vec<Region>) -> Result<Vec<PersistedRegion>, StoreError> {
    let mut batch = engine.batch();
    let persisted: Vec<PersistedRegion> = regions
        .into_iter()
        .map(PersistedRegion::bootstrap)
        .collect();
    for region in &persisted {
        region.write_to(engine, &mut batch)?;
    }
    engine.write(batch, true)?;
    tracing::info!(regions = persisted.len(), "bootstrapped regions");
    Ok(persisted)
}

/// Answers a command for a region this store does not have.
pub(crate) fn reply_region_not_found(command: Command, region_id: u64) {
    let _ = command.into_reply().send(region_not_found(region_id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_keeps_its_store_and_cluster_and_refuses_another_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db")).expect("engine");
        assert_eq!(stored_ident(&engine).expect("ident"), (None, None));
        check_store_ident(&engine, 3).expect("first start records the id");
        check_store_ident(&engine, 3).expect("the same id again");
        match check_store_ident(&engine, 4) {
            Err(StoreError::WrongStore {
                expected: 4,
                found: 3,
            }) => {}
            other => panic!("another store's data dir must be refused, got {other:?}"),
        }
        write_ident(&engine, 7, Some(99)).expect("write ident");
        assert_eq!(stored_ident(&engine).expect("ident"), (Some(7), Some(99)));
    }

    #[test]
    fn a_restart_with_a_shorter_vote_window_refuses_votes_as_long_as_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(&dir.path().join("db")).expect("engine");
        let ms = std::time::Duration::from_millis;
        let refusal = |window| startup_vote_refusal(&engine, window).expect("startup refusal");
        assert_eq!(refusal(ms(950)), ms(950), "first start: its own window");
        // Restarted ticking twice as fast: leases elsewhere may still count on 950 ms.
        assert_eq!(refusal(ms(475)), ms(950));
        // The next restart knows the shorter window was the one advertised.
        assert_eq!(refusal(ms(475)), ms(475));
        assert_eq!(refusal(ms(2000)), ms(2000));
    }
}
