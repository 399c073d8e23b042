//! Regions: hash ranges of the ring, their epochs and peers.

use crate::proto::metapb::{Peer, PeerRole, Region, RegionEpoch};

/// Raft log position every bootstrapped region starts from (as in TiKV): a peer created later
/// with an empty log is behind index 5 and must be caught up by snapshot, never by replaying
/// entries it cannot have.
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// Term of the initial log position.
pub const RAFT_INIT_LOG_TERM: u64 = 5;

/// True when `hash` falls in the region's half-open range `[start_hash, end_hash)`;
/// `end_hash == 0` stands for the end of the ring.
pub fn region_contains(region: &Region, hash: u64) -> bool {
    hash >= region.start_hash && (region.end_hash == 0 || hash < region.end_hash)
}

/// Cuts the ring into `count` ranges of (nearly) equal width: `(start_hash, end_hash)` pairs,
/// the last ending at 0 (the end of the ring).
pub fn split_ring_evenly(count: u64) -> Vec<(u64, u64)> {
    assert!(count >= 1, "a ring needs at least one region");
    let width = u64::MAX / count;
    (0..count)
        .map(|i| {
            let start = if i == 0 { 0 } else { width * i + 1 };
            let end = if i + 1 == count {
                0
            } else {
                width * (i + 1) + 1
            };
            (start, end)
        })
        .collect()
}

/// The regions of a statically configured cluster: `region_count` ranges splitting the ring
/// evenly, each with one voter on every store in `store_ids`. Every node computes the same
/// layout, so all replicas of a region start identical. Ids: regions `1..=region_count`, then
/// peers numbered after them.
pub fn static_bootstrap_regions(region_count: u64, store_ids: &[u64]) -> Vec<Region> {
    let stores = store_ids.len() as u64;
    split_ring_evenly(region_count)
        .into_iter()
        .enumerate()
        .map(|(i, (start_hash, end_hash))| {
            let i = i as u64;
            let peers = store_ids
                .iter()
                .enumerate()
                .map(|(j, &store_id)| Peer {
                    id: region_count + 1 + i * stores + j as u64,
                    store_id,
                    role: PeerRole::Voter as i32,
                })
                .collect();
            Region {
                id: i + 1,
                start_hash,
                end_hash,
                epoch: Some(RegionEpoch {
                    conf_ver: 1,
                    version: 1,
                }),
                peers,
            }
        })
        .collect()
}

/// The peer of `region` hosted on `store_id`, if any.
pub fn find_peer_on_store(region: &Region, store_id: u64) -> Option<&Peer> {
    region.peers.iter().find(|p| p.store_id == store_id)
}

/// The peer of `region` with raft id `peer_id`, if any.
pub fn find_peer(region: &Region, peer_id: u64) -> Option<&Peer> {
    region.peers.iter().find(|p| p.id == peer_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_covers_the_ring_without_gaps() {
        for count in [1u64, 2, 3, 7, 64] {
            let ranges = split_ring_evenly(count);
            assert_eq!(ranges.len() as u64, count);
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges.last().map(|r| r.1), Some(0));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "ranges must touch: {ranges:?}");
                assert!(pair[0].0 < pair[0].1);
            }
        }
    }

    #[test]
    fn every_hash_has_exactly_one_region() {
        let regions = static_bootstrap_regions(5, &[1, 2, 3]);
        for hash in [0, 1, u64::MAX / 5, u64::MAX / 5 + 1, u64::MAX / 2, u64::MAX] {
            let owners = regions.iter().filter(|r| region_contains(r, hash)).count();
            assert_eq!(owners, 1, "hash {hash:#x}");
        }
    }

    #[test]
    fn bootstrap_ids_are_unique() {
        let regions = static_bootstrap_regions(4, &[1, 2, 3]);
        let mut ids: Vec<u64> = regions.iter().map(|r| r.id).collect();
        ids.extend(regions.iter().flat_map(|r| r.peers.iter().map(|p| p.id)));
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
