//! Key hashing and the byte layout of every RocksDB key ringkv writes.
//!
//! This module is the on-disk format: changing anything here breaks existing data.
//!
//! * user data (`default` CF): `b'd' ++ hash_be(8) ++ user_key`, so one region — a hash range —
//!   is one contiguous RocksDB range (a split moves no data; a snapshot is one range scan).
//! * raft log (`raft` CF): `region_id_be(8) ++ index_be(8)`.
//! * per-region state (`meta` CF): `kind(1) ++ region_id_be(8)`.

/// Prefix byte of every data key.
pub const DATA_PREFIX: u8 = b'd';

const RAFT_STATE_KIND: u8 = 0x01;
const APPLY_STATE_KIND: u8 = 0x02;
const REGION_STATE_KIND: u8 = 0x03;
/// The single key holding this node's store identity.
pub const STORE_IDENT_KEY: &[u8] = b"\x00store_ident";
/// The cluster id (from placement) this data dir belongs to.
pub const CLUSTER_ID_KEY: &[u8] = b"\x00cluster_id";
/// The on-disk format version of this data dir (u32 big-endian), see `engine::FORMAT_VERSION`.
pub const FORMAT_VERSION_KEY: &[u8] = b"\x00format_version";
/// The vote refusal window (ms, u64 big-endian) this store last ran with: after a restart it
/// refuses votes at least that long (see `raftstore::startup_vote_refusal`).
pub const VOTE_WINDOW_KEY: &[u8] = b"\x00vote_window_ms";

/// The ring position of a user key: xxh3-64 with seed 0. Part of the on-disk format.
pub fn key_hash(user_key: &[u8]) -> u64 {
    ringkv_proto::key_hash(user_key)
}

/// The RocksDB key of a user key.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + user_key.len());
    key.push(DATA_PREFIX);
    key.extend_from_slice(&key_hash(user_key).to_be_bytes());
    key.extend_from_slice(user_key);
    key
}

/// The user key inside a data key, or `None` if `data_key` is not one.
pub fn user_key_of(data_key: &[u8]) -> Option<&[u8]> {
    if data_key.len() < 9 || data_key[0] != DATA_PREFIX {
        return None;
    }
    Some(&data_key[9..])
}

/// The ring position recorded in a data key, or `None` if it is not one.
pub fn hash_of_data_key(data_key: &[u8]) -> Option<u64> {
    if data_key.len() < 9 || data_key[0] != DATA_PREFIX {
        return None;
    }
    let bytes: [u8; 8] = data_key[1..9].try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// First data key at ring position `hash` (inclusive bound of a region's data range).
pub fn data_range_start(start_hash: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(DATA_PREFIX);
    key.extend_from_slice(&start_hash.to_be_bytes());
    key
}

/// Exclusive end of a region's data range. `end_hash == 0` means the end of the ring.
pub fn data_range_end(end_hash: u64) -> Vec<u8> {
    if end_hash == 0 {
        return vec![DATA_PREFIX + 1];
    }
    data_range_start(end_hash)
}

/// Key of raft log entry `index` of `region_id`.
pub fn raft_log_key(region_id: u64, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&region_id.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index inside a raft log key.
pub fn raft_log_index(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn meta_key(kind: u8, region_id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind;
    key[1..].copy_from_slice(&region_id.to_be_bytes());
    key
}

/// Key of a region's `RaftLocalState` (hard state + last log position).
pub fn raft_state_key(region_id: u64) -> [u8; 9] {
    meta_key(RAFT_STATE_KIND, region_id)
}

/// Key of a region's `RaftApplyState` (applied and truncated positions).
pub fn apply_state_key(region_id: u64) -> [u8; 9] {
    meta_key(APPLY_STATE_KIND, region_id)
}

/// Key of a region's `RegionLocalState` (range, epoch, peers, conf state).
pub fn region_state_key(region_id: u64) -> [u8; 9] {
    meta_key(REGION_STATE_KIND, region_id)
}

/// Range covering every region's `RegionLocalState`, for loading all regions at start.
pub fn region_state_range() -> ([u8; 9], [u8; 9]) {
    (
        meta_key(REGION_STATE_KIND, 0),
        meta_key(REGION_STATE_KIND + 1, 0),
    )
}

/// The region id inside a region state key.
pub fn region_id_of_state_key(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_xxh3_seed_zero() {
        // Pinned: the ring position of a key is part of the on-disk format.
        assert_eq!(key_hash(b""), 0x2D06800538D394C2);
        assert_eq!(
            key_hash(b"a"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"a", 0)
        );
    }

    #[test]
    fn data_keys_sort_by_hash_then_key() {
        let a = data_key(b"alpha");
        let b = data_key(b"beta");
        assert_eq!(a.cmp(&b), key_hash(b"alpha").cmp(&key_hash(b"beta")));
        assert_eq!(user_key_of(&a), Some(&b"alpha"[..]));
        assert!(data_range_start(key_hash(b"alpha")) <= a);
        assert!(a < data_range_end(0));
    }

    #[test]
    fn region_data_range_holds_exactly_its_hashes() {
        let key = data_key(b"k");
        let h = key_hash(b"k");
        assert!(data_range_start(h) <= key && key < data_range_end(h + 1));
        assert!(key >= data_range_end(h));
    }

    #[test]
    fn raft_log_keys_order_by_region_then_index() {
        assert!(raft_log_key(1, u64::MAX) < raft_log_key(2, 0));
        assert!(raft_log_key(1, 9) < raft_log_key(1, 10));
        assert_eq!(raft_log_index(&raft_log_key(3, 42)), Some(42));
    }
}
