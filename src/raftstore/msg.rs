//! What flows into a peer's mailbox, and how answers flow back.

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::proto::kvpb::{self, KvResponse, RegionError};
use crate::proto::metapb::{Peer, Region, RegionEpoch};
use crate::proto::raft_serverpb::{Condition, RaftMessage, WriteOp};

/// Where the answer to a client command goes. Dropping it unanswered makes the waiting
/// request fail as "dropped", so every path either answers or drops.
pub type Reply = oneshot::Sender<KvResponse>;

/// A client command for one region.
pub enum Command {
    /// Replicate and apply `ops`; answered after apply. With `conditions`, the ops apply only
    /// if every condition holds at apply time, and the answer is a `CasResponse`.
    Write {
        request_id: u64,
        epoch: Option<RegionEpoch>,
        ops: Vec<WriteOp>,
        conditions: Vec<Condition>,
        reply: Reply,
    },
    /// Linearizable read through raft ReadIndex.
    Read {
        request_id: u64,
        read: ReadOp,
        reply: Reply,
    },
    /// A membership change (from a placement operator), proposed only if the region still
    /// has `epoch`. Answered once proposed: placement follows it to completion through the
    /// region's heartbeats.
    ChangePeer {
        epoch: RegionEpoch,
        change: ChangePeer,
        peer: Peer,
        reply: Reply,
    },
    /// Hands leadership to `peer` (a caught-up voter), if the region still has `epoch`.
    TransferLeader {
        epoch: RegionEpoch,
        peer: Peer,
        reply: Reply,
    },
    /// Splits the region at `split_hash` (0: where its data halves) into itself and region
    /// `new_region_id` with `new_peer_ids` (one per current peer, in order), if it still has
    /// `epoch`. Answered once proposed.
    Split {
        epoch: RegionEpoch,
        split_hash: u64,
        new_region_id: u64,
        new_peer_ids: Vec<u64>,
        reply: Reply,
    },
}

/// What a read looks at, once the region has applied the read's index (or at once, for a
/// stale read of the local replica).
#[derive(Clone, Debug)]
pub enum ReadOp {
    /// One key: answered with a `GetResponse`.
    Get(Bytes),
    /// Keys of one region: answered with a `BatchGetResponse` (found pairs only).
    BatchGet(Vec<Bytes>),
    /// One page of the region from position `cursor` (see `kvpb::ScanRequest`): answered
    /// with a `ScanResponse` whose cursor is where the next page starts.
    Scan {
        cursor: Bytes,
        prefix: Bytes,
        limit: usize,
    },
}

impl ReadOp {
    /// The ring positions the read needs to find in its region.
    pub fn hashes(&self) -> Vec<u64> {
        match self {
            ReadOp::Get(key) => vec![crate::keys::key_hash(key)],
            ReadOp::BatchGet(keys) => keys.iter().map(|k| crate::keys::key_hash(k)).collect(),
            ReadOp::Scan { cursor, .. } => vec![cursor_hash(cursor)],
        }
    }

    /// Keys the read names (for load sampling).
    pub fn keys(&self) -> &[Bytes] {
        match self {
            ReadOp::Get(key) => std::slice::from_ref(key),
            ReadOp::BatchGet(keys) => keys,
            ReadOp::Scan { .. } => &[],
        }
    }
}

/// The ring position a scan cursor starts at (an empty cursor is the start of the ring).
pub fn cursor_hash(cursor: &[u8]) -> u64 {
    let mut be = [0u8; 8];
    let n = cursor.len().min(8);
    be[..n].copy_from_slice(&cursor[..n]);
    u64::from_be_bytes(be)
}

/// The membership changes a peer can be asked to propose, one at a time (a single change
/// never needs joint consensus; raft leaves any joint state on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangePeer {
    AddLearner,
    PromoteLearner,
    RemovePeer,
}

impl Command {
    /// Where the answer goes.
    pub fn into_reply(self) -> Reply {
        match self {
            Command::Write { reply, .. }
            | Command::Read { reply, .. }
            | Command::ChangePeer { reply, .. }
            | Command::TransferLeader { reply, .. }
            | Command::Split { reply, .. } => reply,
        }
    }
}

/// A message for one peer (one region on this store).
pub enum PeerMsg {
    /// A raft message from another store.
    Raft(RaftMessage),
    Command(Command),
    /// The transport could not deliver to this peer: raft should probe it.
    Unreachable {
        to_peer_id: u64,
    },
    /// Outcome of streaming a snapshot to a peer.
    SnapshotStatus {
        to_peer_id: u64,
        ok: bool,
    },
    /// A consistent view of the peer for `/status`.
    Status(oneshot::Sender<RegionStatus>),
}

/// A region as seen by one of its peers, for status pages and tests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionStatus {
    pub id: u64,
    pub start_hash: u64,
    pub end_hash: u64,
    pub conf_ver: u64,
    pub version: u64,
    pub peer_id: u64,
    pub peers: Vec<PeerStatus>,
    pub role: String,
    pub is_leader: bool,
    pub leader_peer_id: u64,
    pub leader_store_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub snapshots_applied: u64,
    /// Bytes of user data (keys + values) this replica applied since it started: what the
    /// split check watches to decide when to measure the region again.
    pub written_bytes: u64,
    /// User keys written (applied) and read (served as leader) here since start.
    pub written_keys: u64,
    pub read_keys: u64,
    /// Where a split would halve the recent load (median hash of recently accessed keys;
    /// 0 when there is too little to tell).
    pub load_middle_hash: u64,
    /// Peers still catching up (log not matched yet, or behind the compacted log).
    pub pending_peers: Vec<PeerStatus>,
    pub pending_writes: usize,
    pub pending_reads: usize,
    /// Not ticking: idle, its leader and followers quiet (see `peer/hibernate.rs`).
    pub hibernating: bool,
    /// The length of the read lease this leader holds now (0: none; see `peer/lease.rs`).
    pub lease_ms: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    pub id: u64,
    pub store_id: u64,
    /// "Voter", "Learner", "IncomingVoter" or "DemotingVoter".
    pub role: String,
}

/// Builders for the region errors a peer answers with.
pub fn not_leader(region_id: u64, leader: Option<Peer>) -> KvResponse {
    region_error(
        format!("this peer of region {region_id} is not its leader"),
        kvpb::region_error::Error::NotLeader(kvpb::NotLeader { region_id, leader }),
    )
}

pub fn epoch_not_match(message: String, current: Region) -> KvResponse {
    region_error(
        message,
        kvpb::region_error::Error::EpochNotMatch(kvpb::EpochNotMatch {
            current_regions: vec![current],
        }),
    )
}

pub fn region_not_found(region_id: u64) -> KvResponse {
    region_error(
        format!("region {region_id} is not on this store"),
        kvpb::region_error::Error::RegionNotFound(kvpb::RegionNotFound { region_id }),
    )
}

pub fn server_is_busy(reason: &str, backoff_ms: u64) -> KvResponse {
    region_error(
        reason.to_string(),
        kvpb::region_error::Error::ServerIsBusy(kvpb::ServerIsBusy {
            reason: reason.to_string(),
            backoff_ms,
        }),
    )
}

pub fn timeout(reason: String) -> KvResponse {
    region_error(
        reason.clone(),
        kvpb::region_error::Error::Timeout(kvpb::Timeout { reason }),
    )
}

fn region_error(message: String, error: kvpb::region_error::Error) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::RegionError(RegionError {
            message,
            error: Some(error),
        })),
    }
}

pub fn done() -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::Done(true)),
    }
}

pub fn get_result(value: Option<Vec<u8>>) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::Get(kvpb::GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default().into(),
        })),
    }
}

/// The answer to an applied conditional write: swapped, or what the key held instead.
pub fn cas_result(succeeded: bool, current: Option<Bytes>) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::Cas(kvpb::CasResponse {
            succeeded,
            found: current.is_some(),
            current: current.unwrap_or_default(),
        })),
    }
}

pub fn batch_get_result(pairs: Vec<kvpb::KvPair>) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::BatchGet(
            kvpb::BatchGetResponse { pairs },
        )),
    }
}

pub fn scan_result(pairs: Vec<kvpb::KvPair>, next_cursor: Option<Vec<u8>>) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::Scan(kvpb::ScanResponse {
            pairs,
            done: next_cursor.is_none(),
            next_cursor: next_cursor.unwrap_or_default().into(),
        })),
    }
}

pub fn disk_full(store_id: u64, message: String) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::DiskFull(kvpb::DiskFull {
            store_id,
            message,
        })),
    }
}

pub fn other_error(message: String) -> KvResponse {
    KvResponse {
        result: Some(kvpb::kv_response::Result::OtherError(message)),
    }
}
