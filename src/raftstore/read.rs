//! Serving a read from this store's replica of a region: shared by linearizable reads (once
//! the read index is applied, on the poller) and stale reads (at once, by the server).

use bytes::Bytes;

use super::msg::{self, ReadOp};
use crate::engine::{Engine, ScanBounds};
use crate::keys;
use crate::proto::kvpb::{KvPair, KvResponse};
use crate::proto::metapb::Region;

/// Most stored keys one scan page examines (expired or filtered out by the prefix included),
/// so a page with a rare prefix answers in bounded time with a cursor to continue from.
pub const MAX_SCAN_EXAMINED: usize = 10_000;

/// Reads `read` from `region`'s data in `engine` as of `now_ms` (expired values are absent).
/// The caller has checked that the read's keys (or cursor) lie in the region.
pub fn read_region(engine: &Engine, region: &Region, read: &ReadOp, now_ms: u64) -> KvResponse {
    let result = match read {
        ReadOp::Get(key) => engine.get_user_value(key, now_ms).map(msg::get_result),
        ReadOp::BatchGet(keys) => batch_get(engine, keys, now_ms),
        ReadOp::Scan {
            cursor,
            prefix,
            limit,
        } => scan_page(engine, region, cursor, prefix, *limit, now_ms),
    };
    result.unwrap_or_else(|err| msg::other_error(format!("read failed: {err}")))
}

fn batch_get(engine: &Engine, keys: &[Bytes], now_ms: u64) -> crate::engine::Result<KvResponse> {
    let mut pairs = Vec::new();
    for key in keys {
        if let Some(value) = engine.get_user_value(key, now_ms)? {
            pairs.push(KvPair {
                key: key.clone(),
                value: value.into(),
            });
        }
    }
    Ok(msg::batch_get_result(pairs))
}

/// One page of `region` from `cursor`. The next cursor is where this page stopped, or the
/// region's end when it is exhausted (the next region's start; none at the end of the ring).
fn scan_page(
    engine: &Engine,
    region: &Region,
    cursor: &[u8],
    prefix: &[u8],
    limit: usize,
    now_ms: u64,
) -> crate::engine::Result<KvResponse> {
    let region_start = keys::data_range_start(region.start_hash);
    let mut start = Vec::with_capacity(1 + cursor.len());
    start.push(keys::DATA_PREFIX);
    start.extend_from_slice(cursor);
    let start = start.max(region_start);
    let end = keys::data_range_end(region.end_hash);
    let bounds = ScanBounds {
        prefix,
        limit,
        max_examined: MAX_SCAN_EXAMINED,
        now_ms,
    };
    let (found, resume) = engine.scan_user_pairs(&start, &end, &bounds)?;
    let pairs = found
        .into_iter()
        .map(|(key, value)| KvPair {
            key: key.into(),
            value: value.into(),
        })
        .collect();
    let next_cursor = match resume {
        // A data key without its prefix byte is a position.
        Some(data_key) => Some(data_key[1..].to_vec()),
        None if region.end_hash == 0 => None,
        None => Some(region.end_hash.to_be_bytes().to_vec()),
    };
    Ok(msg::scan_result(pairs, next_cursor))
}
