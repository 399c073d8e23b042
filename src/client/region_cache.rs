//! What the client believes about regions: hash ranges with their epoch, peers and last known
//! leader. Pure data (no I/O, no clocks): filled from placement and from the region errors
//! nodes answer with, and corrected whenever a node says it is wrong.
//!
//! Invariant: cached ranges never overlap. Inserting a region removes every entry it
//! overlaps, unless one of them is newer (a higher epoch version: a split happened that the
//! incoming description has not seen), in which case the incoming one is stale and dropped.
//! Ranges only shrink over a region's life and a split region's halves both get the bumped
//! version, so "overlaps and has a higher version" means "is a later layout of that range".

use std::collections::{BTreeMap, HashMap};

use crate::proto::metapb::{Peer, Region, RegionEpoch};

/// One cached region and the leader the client last heard of (`None`: unknown).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedRegion {
    pub region: Region,
    pub leader: Option<Peer>,
}

impl CachedRegion {
    pub fn id(&self) -> u64 {
        self.region.id
    }

    pub fn epoch(&self) -> RegionEpoch {
        self.region.epoch.unwrap_or_default()
    }

    pub fn contains(&self, hash: u64) -> bool {
        contains(&self.region, hash)
    }
}

/// Whether `hash` lies in `[start_hash, end_hash)` (`end_hash == 0` is the end of the ring).
pub fn contains(region: &Region, hash: u64) -> bool {
    hash >= region.start_hash && (region.end_hash == 0 || hash < region.end_hash)
}

/// Whether two ranges share a position.
fn overlaps(a: &Region, b: &Region) -> bool {
    let a_before_b_ends = b.end_hash == 0 || a.start_hash < b.end_hash;
    let b_before_a_ends = a.end_hash == 0 || b.start_hash < a.end_hash;
    a_before_b_ends && b_before_a_ends
}

/// Whether `cached` describes the same range later than `incoming` does.
fn is_newer(cached: &Region, incoming: &Region) -> bool {
    let (c, i) = (
        cached.epoch.unwrap_or_default(),
        incoming.epoch.unwrap_or_default(),
    );
    c.version > i.version
        || (cached.id == incoming.id && c.version == i.version && c.conf_ver > i.conf_ver)
}

/// Regions by start hash, plus an index from region id to start hash.
#[derive(Debug, Default)]
pub struct RegionCache {
    by_start: BTreeMap<u64, CachedRegion>,
    start_of: HashMap<u64, u64>,
}

impl RegionCache {
    pub fn new() -> RegionCache {
        RegionCache::default()
    }

    /// The cached region holding `hash`, if any.
    pub fn lookup(&self, hash: u64) -> Option<&CachedRegion> {
        let (_, entry) = self.by_start.range(..=hash).next_back()?;
        entry.contains(hash).then_some(entry)
    }

    /// Caches `region`, replacing every entry it overlaps; returns false (and changes
    /// nothing) when an overlapping entry is newer. A region already cached with the same
    /// epoch keeps its known leader when `leader` is `None` and that peer is still a member.
    pub fn insert(&mut self, region: Region, leader: Option<Peer>) -> bool {
        let overlapping = self.overlapping(&region);
        if overlapping
            .iter()
            .any(|start| is_newer(&self.by_start[start].region, &region))
        {
            return false;
        }
        let mut kept_leader = None;
        for start in overlapping {
            if let Some(old) = self.remove_at(start) {
                if old.id() == region.id {
                    kept_leader = old.leader;
                }
            }
        }
        let leader = leader.or(kept_leader.filter(|l| is_member(&region, l.store_id)));
        self.start_of.insert(region.id, region.start_hash);
        self.by_start
            .insert(region.start_hash, CachedRegion { region, leader });
        true
    }

    /// Forgets a region (the next request for its range asks placement again).
    pub fn invalidate(&mut self, region_id: u64) {
        if let Some(start) = self.start_of.get(&region_id).copied() {
            self.remove_at(start);
        }
    }

    /// Records `leader` as the region's leader (from a NotLeader hint); false if the region
    /// is not cached.
    pub fn update_leader(&mut self, region_id: u64, leader: Peer) -> bool {
        let Some(start) = self.start_of.get(&region_id) else {
            return false;
        };
        match self.by_start.get_mut(start) {
            Some(entry) => {
                entry.leader = Some(leader);
                true
            }
            None => false,
        }
    }

    /// Forgets who leads the region (the leader could not be reached or said it is not).
    pub fn clear_leader(&mut self, region_id: u64) {
        if let Some(start) = self.start_of.get(&region_id) {
            if let Some(entry) = self.by_start.get_mut(start) {
                entry.leader = None;
            }
        }
    }

    /// Start hashes of the entries overlapping `region`, in ring order.
    fn overlapping(&self, region: &Region) -> Vec<u64> {
        // The entry starting at or before `region`'s start may reach into it; every later one
        // that starts before its end does.
        let first = self
            .by_start
            .range(..=region.start_hash)
            .next_back()
            .map(|(start, _)| *start)
            .unwrap_or(region.start_hash);
        self.by_start
            .range(first..)
            .take_while(|(start, _)| region.end_hash == 0 || **start < region.end_hash)
            .filter(|(_, entry)| overlaps(&entry.region, region))
            .map(|(start, _)| *start)
            .collect()
    }

    fn remove_at(&mut self, start: u64) -> Option<CachedRegion> {
        let entry = self.by_start.remove(&start)?;
        self.start_of.remove(&entry.id());
        Some(entry)
    }
}

fn is_member(region: &Region, store_id: u64) -> bool {
    region.peers.iter().any(|p| p.store_id == store_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RegionCache {
        fn get(&self, region_id: u64) -> Option<&CachedRegion> {
            self.by_start.get(self.start_of.get(&region_id)?)
        }
    }

    fn region(id: u64, start: u64, end: u64, version: u64) -> Region {
        Region {
            id,
            start_hash: start,
            end_hash: end,
            epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            peers: [1, 2, 3]
                .map(|store| Peer {
                    id: id * 10 + store,
                    store_id: store,
                    role: 0,
                })
                .to_vec(),
        }
    }

    fn leader_on(store_id: u64) -> Option<Peer> {
        Some(Peer {
            id: 0,
            store_id,
            role: 0,
        })
    }

    fn ids(cache: &RegionCache) -> Vec<u64> {
        cache.by_start.values().map(CachedRegion::id).collect()
    }

    #[test]
    fn lookup_finds_the_region_holding_a_hash_and_nothing_in_gaps() {
        let mut cache = RegionCache::new();
        cache.insert(region(1, 0, 100, 1), None);
        cache.insert(region(2, 200, 0, 1), None);
        assert_eq!(cache.lookup(0).map(CachedRegion::id), Some(1));
        assert_eq!(cache.lookup(99).map(CachedRegion::id), Some(1));
        assert_eq!(cache.lookup(100), None, "the gap [100, 200) is not cached");
        assert_eq!(cache.lookup(200).map(CachedRegion::id), Some(2));
        assert_eq!(
            cache.lookup(u64::MAX).map(CachedRegion::id),
            Some(2),
            "end 0 reaches the end of the ring"
        );
    }

    #[test]
    fn a_split_replaces_the_region_it_overlaps_and_a_stale_parent_cannot_come_back() {
        let mut cache = RegionCache::new();
        cache.insert(region(1, 0, 0, 1), leader_on(1));
        // The split's halves (from an EpochNotMatch): the left replaces the whole parent.
        assert!(cache.insert(region(1, 0, 500, 2), None));
        assert_eq!(ids(&cache), vec![1]);
        assert_eq!(cache.lookup(600), None, "the right half is not known yet");
        assert!(cache.insert(region(2, 500, 0, 2), None));
        assert_eq!(ids(&cache), vec![1, 2]);
        // Placement, lagging, still describes the parent: refused.
        assert!(!cache.insert(region(1, 0, 0, 1), leader_on(3)));
        assert_eq!(ids(&cache), vec![1, 2]);
        assert_eq!(cache.get(1).map(|r| r.region.end_hash), Some(500));
        // The same epoch again keeps the known leader; a new leader replaces it.
        assert!(cache.insert(region(1, 0, 500, 2), None));
        assert_eq!(cache.get(1).and_then(|r| r.leader), leader_on(1));
        assert!(cache.insert(region(1, 0, 500, 2), leader_on(2)));
        assert_eq!(cache.get(1).and_then(|r| r.leader), leader_on(2));
    }

    #[test]
    fn a_merged_view_replaces_every_region_it_covers() {
        let mut cache = RegionCache::new();
        cache.insert(region(1, 0, 100, 3), None);
        cache.insert(region(2, 100, 200, 3), None);
        cache.insert(region(3, 200, 300, 3), None);
        cache.insert(region(4, 300, 0, 3), None);
        assert!(cache.insert(region(9, 50, 250, 4), None));
        assert_eq!(ids(&cache), vec![9, 4]);
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.get(3), None);
        assert_eq!(cache.lookup(10), None);
        assert_eq!(cache.lookup(260), None);
    }

    #[test]
    fn a_newer_membership_of_the_same_range_wins_and_an_older_one_loses() {
        let mut cache = RegionCache::new();
        let mut moved = region(1, 0, 0, 1);
        moved.epoch = Some(RegionEpoch {
            conf_ver: 5,
            version: 1,
        });
        cache.insert(moved.clone(), None);
        assert!(!cache.insert(region(1, 0, 0, 1), None), "conf_ver 1 < 5");
        moved.epoch = Some(RegionEpoch {
            conf_ver: 6,
            version: 1,
        });
        assert!(cache.insert(moved, None));
    }

    #[test]
    fn invalidate_and_leader_updates_touch_one_region() {
        let mut cache = RegionCache::new();
        cache.insert(region(1, 0, 100, 1), None);
        cache.insert(region(2, 100, 0, 1), leader_on(2));
        assert!(cache.update_leader(1, leader_on(3).unwrap()));
        assert_eq!(cache.lookup(5).and_then(|r| r.leader), leader_on(3));
        assert!(!cache.update_leader(7, leader_on(3).unwrap()), "not cached");
        cache.clear_leader(2);
        assert_eq!(cache.lookup(100).and_then(|r| r.leader), None);
        cache.invalidate(1);
        assert_eq!(cache.lookup(5), None);
        assert_eq!(ids(&cache), vec![2]);
        cache.invalidate(1);
        assert_eq!(ids(&cache), vec![2]);
    }

    #[test]
    fn a_kept_leader_that_left_the_region_is_forgotten() {
        let mut cache = RegionCache::new();
        cache.insert(region(1, 0, 0, 1), leader_on(3));
        let mut moved = region(1, 0, 0, 1);
        moved.epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 1,
        });
        moved.peers.retain(|p| p.store_id != 3);
        cache.insert(moved, None);
        assert_eq!(cache.get(1).and_then(|r| r.leader), None);
    }
}
