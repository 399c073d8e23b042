//! Reclaims the space of expired keys. Expired values already read as absent everywhere; this
//! task deletes them through raft, so every replica drops the same keys at the same log index
//! (a replica-local compaction filter could drop a key that a lagging replica's next command
//! still compares against). Each pass visits the regions this node leads.

use std::sync::Arc;
use std::time::Duration;

use super::http::collect_region_status;
use super::kv::KvService;
use crate::proto::kvpb::kv_response;
use crate::value::now_ms;

/// Most keys one delete command carries.
const KEYS_PER_COMMAND: usize = 256;
/// Most commands per region per pass (so one region cannot hog a pass).
const COMMANDS_PER_REGION: usize = 64;

/// Runs a pass every `interval` until the task is aborted.
pub async fn run(kv: Arc<KvService>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        let deleted = reclaim_once(&kv).await;
        if deleted > 0 {
            tracing::debug!(deleted, "expired keys deleted");
        }
    }
}

/// One pass over the regions this node leads; answers how many keys were deleted.
async fn reclaim_once(kv: &Arc<KvService>) -> usize {
    let mut deleted = 0;
    let statuses = collect_region_status(kv, Duration::from_secs(2)).await;
    for status in statuses.into_iter().filter(|s| s.is_leader) {
        for _ in 0..COMMANDS_PER_REGION {
            let Some(region) = kv.router().region(status.id) else {
                break;
            };
            let engine = kv.engine().clone();
            let (start, end) = (region.start_hash, region.end_hash);
            let found = tokio::task::spawn_blocking(move || {
                engine.expired_user_keys(start, end, now_ms(), KEYS_PER_COMMAND)
            })
            .await;
            let keys = match found {
                Ok(Ok(keys)) if !keys.is_empty() => keys,
                Ok(Ok(_)) => break,
                Ok(Err(err)) => {
                    tracing::warn!(region = region.id, %err, "looking for expired keys failed");
                    break;
                }
                Err(err) => {
                    tracing::warn!(region = region.id, %err, "expired-key scan task failed");
                    break;
                }
            };
            let count = keys.len();
            let response = kv.delete_expired(region, keys).await;
            if !matches!(response.result, Some(kv_response::Result::Done(_))) {
                // Lost leadership, split, busy: the next pass tries again.
                tracing::debug!(
                    region = status.id,
                    ?response,
                    "expired-key delete not applied"
                );
                break;
            }
            deleted += count;
            if count < KEYS_PER_COMMAND {
                break;
            }
        }
    }
    deleted
}
