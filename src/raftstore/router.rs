//! The router: region id → the mailbox of the poller that owns the region's peer, and
//! hash → local region, for routing client requests.
//!
//! Mailboxes are bounded; a full one refuses instead of blocking (callers answer
//! `ServerIsBusy`, raft messages are dropped and retransmitted by raft).

use std::collections::BTreeMap;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::RwLock;

use super::msg::PeerMsg;
use crate::proto::metapb::Region;
use crate::proto::raft_serverpb::RaftMessage;
use crate::region::region_contains;

/// What a poller's mailbox carries.
pub enum PollerMsg {
    Peer(u64, PeerMsg),
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
    /// Local regions by start hash.
    regions: RwLock<BTreeMap<u64, Region>>,
}

impl Router {
    pub fn new(mailboxes: Vec<Sender<PollerMsg>>) -> Router {
        assert!(!mailboxes.is_empty(), "a store needs at least one poller");
        Router {
            mailboxes,
            regions: RwLock::new(BTreeMap::new()),
        }
    }

    /// The poller that owns a region's peer. Stable for the region's lifetime.
    pub fn poller_of(&self, region_id: u64) -> usize {
        (region_id % self.mailboxes.len() as u64) as usize
    }

    pub fn poller_count(&self) -> usize {
        self.mailboxes.len()
    }

    /// Records a local region (new, or with a new range/epoch).
    pub fn update_region(&self, region: Region) {
        let mut regions = self.regions.write();
        regions.retain(|_, r| r.id != region.id);
        regions.insert(region.start_hash, region);
    }

    /// The local region whose range holds `hash`.
    pub fn region_for_hash(&self, hash: u64) -> Option<Region> {
        let regions = self.regions.read();
        let (_, region) = regions.range(..=hash).next_back()?;
        region_contains(region, hash).then(|| region.clone())
    }

    pub fn region(&self, region_id: u64) -> Option<Region> {
        self.regions
            .read()
            .values()
            .find(|r| r.id == region_id)
            .cloned()
    }

    /// Every local region, in ring order.
    pub fn regions(&self) -> Vec<Region> {
        self.regions.read().values().cloned().collect()
    }

    fn has_region(&self, region_id: u64) -> bool {
        self.regions.read().values().any(|r| r.id == region_id)
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

    /// Asks every poller to stop after its current round.
    pub fn shutdown(&self) {
        for mailbox in &self.mailboxes {
            // A blocking send: shutdown must not be lost to a full mailbox.
            let _ = mailbox.send(PollerMsg::Shutdown);
        }
    }

    /// Delivers a raft message from the transport; drops it if the region is unknown or busy
    /// (raft retransmits).
    pub fn deliver_raft(&self, msg: RaftMessage) {
        let region_id = msg.region_id;
        if let Err(err) = self.send(region_id, PeerMsg::Raft(msg)) {
            match err {
                SendError::RegionNotFound(_) => {
                    tracing::debug!(region = region_id, "raft message for unknown region dropped")
                }
                SendError::Full(_) => {
                    metrics::counter!("ringkv_raft_messages_dropped_total", "reason" => "mailbox_full")
                        .increment(1)
                }
                SendError::Closed(_) => {}
            }
        }
    }
}
