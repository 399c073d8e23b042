//! The router: region id → the mailbox of the poller that owns the region's peer, and
//! hash → local region, for routing client requests.
//!
//! Mailboxes are bounded; a full one refuses instead of blocking (callers answer
//! `ServerIsBusy`, raft messages are dropped and retransmitted by raft).
//!
//! Raft messages go to the owning poller even for a region the router does not know: the
//! poller decides whether they create a new peer (a replica being added to this store) or
//! are stale (for a peer destroyed here).

use std::collections::{BTreeMap, HashMap};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::RwLock;

use super::msg::PeerMsg;
use crate::proto::metapb::Region;
use crate::proto::raft_serverpb::RaftMessage;
use crate::region::region_contains;

/// What a poller's mailbox carries.
pub enum PollerMsg {
    Peer(u64, PeerMsg),
    /// A region created here by a split (already persisted): load and start its peer,
    /// campaigning at once when the parent's peer here was the leader.
    Adopt {
        region_id: u64,
        campaign: bool,
    },
    Shutdown,
}

/// Why a message was not queued; the message comes back to the caller.
pub enum SendError {
    RegionNotFound(PeerMsg),
    Full(PeerMsg),
    Closed(PeerMsg),
}

pub struct Router {
    mailboxes: Vec<Sender<PollerMsg>>,
    regions: RwLock<LocalRegions>,
    /// Pinged when a local region changes shape or gets a new leader here, so the placement
    /// heartbeat reports it now rather than at the next periodic round.
    changes: tokio::sync::Notify,
    /// Ranges of snapshots accepted and not yet applied: (region, start, end). Checked with
    /// the initialized regions so two snapshots (or a snapshot and a region) can never both
    /// own a hash on this store, also across pollers.
    snapshot_ranges: parking_lot::Mutex<Vec<(u64, u64, u64)>>,
    /// When each remote store's last store heartbeat arrived (see `deliver_raft`).
    store_heard: parking_lot::Mutex<HashMap<u64, std::time::Instant>>,
    /// Remote stores whose latest message said their disk is low (shared with peers).
    low_disk_stores: std::sync::Arc<parking_lot::RwLock<std::collections::HashSet<u64>>>,
    /// Remote stores' vote refusal windows in ms, as their latest message said (shared with
    /// peers, see `peer/lease.rs`), and this store's own.
    vote_windows: std::sync::Arc<parking_lot::RwLock<HashMap<u64, u64>>>,
    own_vote_window_ms: u64,
}

#[derive(Default)]
struct LocalRegions {
    /// Every local peer's region, initialized or not.
    by_id: HashMap<u64, Region>,
    /// Initialized regions (those with a range) by start hash.
    by_start: BTreeMap<u64, u64>,
}

/// A peer created to receive a snapshot has no range or peers yet.
pub fn is_initialized(region: &Region) -> bool {
    !region.peers.is_empty()
}

impl Router {
    pub fn new(
        mailboxes: Vec<Sender<PollerMsg>>,
        low_disk_stores: std::sync::Arc<parking_lot::RwLock<std::collections::HashSet<u64>>>,
        vote_windows: std::sync::Arc<parking_lot::RwLock<HashMap<u64, u64>>>,
        own_vote_window: std::time::Duration,
    ) -> Router {
        assert!(!mailboxes.is_empty(), "a store needs at least one poller");
        Router {
            mailboxes,
            regions: RwLock::new(LocalRegions::default()),
            changes: tokio::sync::Notify::new(),
            snapshot_ranges: parking_lot::Mutex::new(Vec::new()),
            store_heard: parking_lot::Mutex::new(HashMap::new()),
            low_disk_stores,
            vote_windows,
            own_vote_window_ms: own_vote_window.as_millis() as u64,
        }
    }

    /// The poller that owns a region's peer. Stable for the region's lifetime.
    pub fn poller_of(&self, region_id: u64) -> usize {
        (region_id % self.mailboxes.len() as u64) as usize
    }

    pub fn poller_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Records a local region (new, or with a new range/epoch/peers).
    pub fn update_region(&self, region: Region) {
        let mut regions = self.regions.write();
        if let Some(old) = regions.by_id.get(&region.id) {
            if is_initialized(old) && regions.by_start.get(&old.start_hash) == Some(&region.id) {
                let start = old.start_hash;
                regions.by_start.remove(&start);
            }
        }
        if is_initialized(&region) {
            regions.by_start.insert(region.start_hash, region.id);
        }
        regions.by_id.insert(region.id, region);
        drop(regions);
        self.notify_change();
    }

    /// Signals that something placement should hear about changed (see [`Router::changed`]).
    pub fn notify_change(&self) {
        self.changes.notify_one();
    }

    /// Resolves after the next [`Router::notify_change`] (or at once if one is pending).
    pub async fn changed(&self) {
        self.changes.notified().await
    }

    /// Forgets a destroyed peer's region.
    pub fn remove_region(&self, region_id: u64) {
        let mut regions = self.regions.write();
        if let Some(old) = regions.by_id.remove(&region_id) {
            if regions.by_start.get(&old.start_hash) == Some(&region_id) {
                regions.by_start.remove(&old.start_hash);
            }
        }
    }

    /// The local region whose range holds `hash`.
    pub fn region_for_hash(&self, hash: u64) -> Option<Region> {
        let regions = self.regions.read();
        let (_, id) = regions.by_start.range(..=hash).next_back()?;
        let region = regions.by_id.get(id)?;
        region_contains(region, hash).then(|| region.clone())
    }

    pub fn region(&self, region_id: u64) -> Option<Region> {
        self.regions.read().by_id.get(&region_id).cloned()
    }

    /// Every initialized local region, in ring order.
    pub fn regions(&self) -> Vec<Region> {
        let regions = self.regions.read();
        regions
            .by_start
            .values()
            .filter_map(|id| regions.by_id.get(id).cloned())
            .collect()
    }

    /// Initialized local regions other than `region_id` whose range overlaps `[start, end)`.
    pub fn overlapping(&self, region_id: u64, start: u64, end: u64) -> Vec<Region> {
        self.regions()
            .into_iter()
            .filter(|r| r.id != region_id && ranges_overlap(r, start, end))
            .collect()
    }

    /// Claims `[start, end)` for a snapshot of `region_id` about to be applied; `Err` names
    /// the local region (or pending snapshot) that already owns part of it.
    pub fn reserve_snapshot_range(&self, region_id: u64, start: u64, end: u64) -> Result<(), u64> {
        let mut reserved = self.snapshot_ranges.lock();
        if let Some(other) = self.overlapping(region_id, start, end).first() {
            return Err(other.id);
        }
        let probe = Region {
            start_hash: start,
            end_hash: end,
            ..Default::default()
        };
        if let Some((other, _, _)) = reserved
            .iter()
            .find(|(id, s, e)| *id != region_id && ranges_overlap(&probe, *s, *e))
        {
            return Err(*other);
        }
        reserved.push((region_id, start, end));
        Ok(())
    }

    /// Drops the claims of `region_ids` (their snapshots were applied, or refused by raft).
    pub fn release_snapshot_ranges(&self, region_ids: &[u64]) {
        if region_ids.is_empty() {
            return;
        }
        self.snapshot_ranges
            .lock()
            .retain(|(id, _, _)| !region_ids.contains(id));
    }

    fn has_region(&self, region_id: u64) -> bool {
        self.regions.read().by_id.contains_key(&region_id)
    }

    /// On failure the message comes back, so a command can still be answered.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, region_id: u64, msg: PeerMsg) -> Result<(), SendError> {
        if !self.has_region(region_id) {
            return Err(SendError::RegionNotFound(msg));
        }
        let mailbox = &self.mailboxes[self.poller_of(region_id)];
        match mailbox.try_send(PollerMsg::Peer(region_id, msg)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(PollerMsg::Peer(_, msg))) => Err(SendError::Full(msg)),
            Err(TrySendError::Disconnected(PollerMsg::Peer(_, msg))) => Err(SendError::Closed(msg)),
            Err(_) => unreachable!("only peer messages are sent here"),
        }
    }

    /// Hands a region a split just created here to the poller that owns it; false when that
    /// mailbox is full (the caller keeps it and tries again next round: a blocking send
    /// between pollers could deadlock).
    pub fn try_adopt(&self, region_id: u64, campaign: bool) -> bool {
        let mailbox = &self.mailboxes[self.poller_of(region_id)];
        match mailbox.try_send(PollerMsg::Adopt {
            region_id,
            campaign,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true, // shutting down
        }
    }

    /// Asks every poller to stop after its current round.
    pub fn shutdown(&self) {
        for mailbox in &self.mailboxes {
            // A blocking send: shutdown must not be lost to a full mailbox.
            let _ = mailbox.send(PollerMsg::Shutdown);
        }
    }

    /// Delivers a raft message from the transport to the poller owning its region (known or
    /// not, see the module docs); drops it if that mailbox is full (raft retransmits).
    pub fn deliver_raft(&self, msg: RaftMessage) {
        let region_id = msg.region_id;
        if let Some(from) = msg.from_peer {
            // Every message says whether its store is low on disk; one store's messages
            // arrive in order, so the set always holds the latest word of each store, for
            // every region (a hibernating one hears no raft messages of its own).
            let known_low = self.low_disk_stores.read().contains(&from.store_id);
            if known_low != msg.disk_low {
                let mut low = self.low_disk_stores.write();
                if msg.disk_low {
                    low.insert(from.store_id);
                } else {
                    low.remove(&from.store_id);
                }
            }
            if msg.vote_refusal_ms != 0 {
                self.note_vote_window(from.store_id, msg.vote_refusal_ms);
            }
        }
        if region_id == 0 {
            // A store heartbeat: the sender's store is alive.
            if let Some(from) = msg.from_peer {
                self.store_heard
                    .lock()
                    .insert(from.store_id, std::time::Instant::now());
            }
            return;
        }
        let mailbox = &self.mailboxes[self.poller_of(region_id)];
        if let Err(TrySendError::Full(_)) =
            mailbox.try_send(PollerMsg::Peer(region_id, PeerMsg::Raft(msg)))
        {
            metrics::counter!("ringkv_raft_messages_dropped_total", "reason" => "mailbox_full")
                .increment(1)
        }
    }
}

impl Router {
    /// Records the vote refusal window a store's message carried (its `--raft-tick-ms` and
    /// `--election-ticks`); leases here shrink to fit a smaller one. The smallest one heard
    /// since this store started is kept: a frame of a restarted store's old connection,
    /// delivered late, must not bring back its old, longer window.
    fn note_vote_window(&self, store_id: u64, window_ms: u64) {
        if self
            .vote_windows
            .read()
            .get(&store_id)
            .is_some_and(|&known| known <= window_ms)
        {
            return;
        }
        let previous = {
            let mut windows = self.vote_windows.write();
            let known = windows.entry(store_id).or_insert(u64::MAX);
            if *known <= window_ms {
                return; // another thread recorded as small a window meanwhile
            }
            std::mem::replace(known, window_ms)
        };
        let previous = (previous != u64::MAX).then_some(previous);
        if window_ms != self.own_vote_window_ms {
            tracing::warn!(
                store = store_id,
                window_ms,
                own_window_ms = self.own_vote_window_ms,
                ?previous,
                "a store runs other raft timing (--raft-tick-ms, --election-ticks): leases of \
                 regions it replicates are cut to 80% of the smaller vote refusal window"
            );
        }
    }

    /// Other stores' vote refusal windows (ms): the smallest heard from each, in store id order.
    pub fn vote_windows(&self) -> Vec<(u64, u64)> {
        let mut windows: Vec<(u64, u64)> = self
            .vote_windows
            .read()
            .iter()
            .map(|(s, w)| (*s, *w))
            .collect();
        windows.sort_unstable();
        windows
    }

    /// Other stores whose latest message said their disk is low, in id order.
    pub fn low_disk_stores(&self) -> Vec<u64> {
        let mut stores: Vec<u64> = self.low_disk_stores.read().iter().copied().collect();
        stores.sort_unstable();
        stores
    }

    /// Of `stores`, those whose last store heartbeat is older than `silent_after` (counted
    /// from `since` for a store never heard from).
    pub fn silent_stores(
        &self,
        stores: &[u64],
        now: std::time::Instant,
        since: std::time::Instant,
        silent_after: std::time::Duration,
    ) -> Vec<u64> {
        let heard = self.store_heard.lock();
        stores
            .iter()
            .copied()
            .filter(|store_id| {
                let last = heard.get(store_id).copied().unwrap_or(since).max(since);
                now.saturating_duration_since(last) > silent_after
            })
            .collect()
    }
}

/// Whether `region`'s range and `[start, end)` share a hash (`end == 0`: end of the ring).
pub fn ranges_overlap(region: &Region, start: u64, end: u64) -> bool {
    let starts_before_other_ends = end == 0 || region.start_hash < end;
    let other_starts_before_end = region.end_hash == 0 || start < region.end_hash;
    starts_before_other_ends && other_starts_before_end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::metapb::Peer;

    fn region(id: u64, start_hash: u64, end_hash: u64, peers: usize) -> Region {
        Region {
            id,
            start_hash,
            end_hash,
            peers: (0..peers as u64)
                .map(|i| Peer {
                    id: id * 10 + i,
                    store_id: i + 1,
                    role: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn uninitialized_regions_are_known_by_id_but_own_no_hashes() {
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let router = Router::new(
            vec![tx],
            Default::default(),
            Default::default(),
            std::time::Duration::ZERO,
        );
        router.update_region(region(1, 0, 100, 3));
        router.update_region(region(2, 0, 0, 0)); // created for a snapshot: no range yet
        assert_eq!(router.region_for_hash(5).map(|r| r.id), Some(1));
        assert_eq!(router.region_for_hash(500).map(|r| r.id), None);
        assert!(router.region(2).is_some());
        assert_eq!(
            router.regions().len(),
            1,
            "only initialized regions are listed"
        );

        // The snapshot gives region 2 its range; then it is destroyed.
        router.update_region(region(2, 100, 0, 3));
        assert_eq!(router.region_for_hash(500).map(|r| r.id), Some(2));
        assert_eq!(
            router
                .overlapping(1, 50, 150)
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![2]
        );
        router.remove_region(2);
        assert_eq!(router.region_for_hash(500).map(|r| r.id), None);
        assert_eq!(router.region_for_hash(5).map(|r| r.id), Some(1));
        assert!(router.region(2).is_none());
    }
}
