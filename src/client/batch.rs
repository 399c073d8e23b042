//! Cutting a batch into per-region parts (pure): items grouped by the cached region holding
//! their key, each group cut to the node's batch limits, request order kept inside a part.

use std::collections::BTreeMap;

use super::region_cache::{CachedRegion, RegionCache};
use crate::server::limits::Limits;

/// The most a part may hold: the node refuses larger batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartLimits {
    pub max_keys: usize,
    pub max_bytes: usize,
}

impl Default for PartLimits {
    fn default() -> PartLimits {
        let node = Limits::default();
        PartLimits {
            max_keys: node.max_batch_keys,
            max_bytes: node.max_batch_bytes,
        }
    }
}

/// Items of a batch (indices into the caller's request) to send to one region.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPart {
    pub region: CachedRegion,
    pub items: Vec<usize>,
}

/// The parts for the `pending` items (ascending indices) and the items no cached region
/// holds. `hashes[i]` is item i's ring position, `sizes[i]` its key + value bytes. Parts come
/// in ring order; an item bigger than `max_bytes` still gets a part of its own (the node
/// refuses it with a clear message).
pub fn split_by_region(
    cache: &RegionCache,
    hashes: &[u64],
    sizes: &[usize],
    pending: &[usize],
    limits: PartLimits,
) -> (Vec<BatchPart>, Vec<usize>) {
    debug_assert!(pending.windows(2).all(|w| w[0] < w[1]), "pending is sorted");
    let mut by_region: BTreeMap<u64, (CachedRegion, Vec<usize>)> = BTreeMap::new();
    let mut uncached = Vec::new();
    for &i in pending {
        match cache.lookup(hashes[i]) {
            Some(region) => by_region
                .entry(region.region.start_hash)
                .or_insert_with(|| (region.clone(), Vec::new()))
                .1
                .push(i),
            None => uncached.push(i),
        }
    }
    let mut parts = Vec::new();
    for (region, items) in by_region.into_values() {
        let mut current: Vec<usize> = Vec::new();
        let mut bytes = 0usize;
        for i in items {
            let full = current.len() == limits.max_keys
                || (!current.is_empty() && bytes + sizes[i] > limits.max_bytes);
            if full {
                parts.push(BatchPart {
                    region: region.clone(),
                    items: std::mem::take(&mut current),
                });
                bytes = 0;
            }
            current.push(i);
            bytes += sizes[i];
        }
        parts.push(BatchPart {
            region,
            items: current,
        });
    }
    (parts, uncached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::metapb::{Region, RegionEpoch};

    fn cache_of(ranges: &[(u64, u64, u64)]) -> RegionCache {
        let mut cache = RegionCache::new();
        for &(id, start, end) in ranges {
            cache.insert(
                Region {
                    id,
                    start_hash: start,
                    end_hash: end,
                    epoch: Some(RegionEpoch {
                        conf_ver: 1,
                        version: 1,
                    }),
                    peers: vec![],
                },
                None,
            );
        }
        cache
    }

    fn summary(parts: &[BatchPart]) -> Vec<(u64, Vec<usize>)> {
        parts
            .iter()
            .map(|p| (p.region.id(), p.items.clone()))
            .collect()
    }

    #[test]
    fn items_are_grouped_by_region_in_ring_order_keeping_request_order() {
        let cache = cache_of(&[(1, 0, 100), (2, 100, 200), (3, 200, 0)]);
        let hashes = [250, 5, 150, 99, 100, u64::MAX];
        let sizes = [1; 6];
        let pending: Vec<usize> = (0..6).collect();
        let (parts, uncached) =
            split_by_region(&cache, &hashes, &sizes, &pending, PartLimits::default());
        assert_eq!(
            summary(&parts),
            vec![(1, vec![1, 3]), (2, vec![2, 4]), (3, vec![0, 5])]
        );
        assert!(uncached.is_empty());
    }

    #[test]
    fn only_pending_items_are_sent_and_uncached_ones_are_reported() {
        let cache = cache_of(&[(1, 0, 100), (3, 200, 0)]);
        let hashes = [5, 150, 250, 160, 6];
        let sizes = [1; 5];
        let (parts, uncached) = split_by_region(
            &cache,
            &hashes,
            &sizes,
            &[1, 2, 3, 4],
            PartLimits::default(),
        );
        assert_eq!(summary(&parts), vec![(1, vec![4]), (3, vec![2])]);
        assert_eq!(uncached, vec![1, 3], "no cached region holds [100, 200)");
    }

    #[test]
    fn parts_stay_within_the_key_and_byte_limits() {
        let cache = cache_of(&[(1, 0, 0)]);
        let hashes = [1; 7];
        let limits = PartLimits {
            max_keys: 3,
            max_bytes: 10,
        };
        let pending: Vec<usize> = (0..7).collect();
        let (parts, _) = split_by_region(&cache, &hashes, &[1; 7], &pending, limits);
        assert_eq!(
            summary(&parts),
            vec![(1, vec![0, 1, 2]), (1, vec![3, 4, 5]), (1, vec![6])]
        );
        let sizes = [4, 4, 4, 20, 1, 1, 1];
        let (parts, _) = split_by_region(&cache, &hashes, &sizes, &pending, limits);
        assert_eq!(
            summary(&parts),
            vec![
                (1, vec![0, 1]),
                (1, vec![2]),
                (1, vec![3]),
                (1, vec![4, 5, 6])
            ],
            "an oversized item goes alone"
        );
    }

    #[test]
    fn the_default_limits_are_the_nodes() {
        let cache = cache_of(&[(1, 0, 0)]);
        let n = 2500;
        let pending: Vec<usize> = (0..n).collect();
        let (parts, _) = split_by_region(
            &cache,
            &vec![7; n],
            &vec![10; n],
            &pending,
            PartLimits::default(),
        );
        let sizes: Vec<usize> = parts.iter().map(|p| p.items.len()).collect();
        assert_eq!(sizes, vec![1024, 1024, 452]);
    }
}
