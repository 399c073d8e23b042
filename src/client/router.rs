//! Routing and retrying: finds a request's region (cache, else placement), sends it to the
//! region's leader (any replica for stale reads) with the region's context, and turns every
//! answer into done, a retry after correcting the cache, or a final error.
//!
//! The write rule: a write is resent only when the node's answer says it was not applied
//! (a region error other than Timeout) or the connection never came up. A write that may have
//! reached a node without an answer fails with `OutcomeUnknown`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::batch::{split_by_region, BatchPart, PartLimits};
use super::connections::{never_sent, Connections};
use super::error::{Error, Result};
use super::placement::{status_text, Placement};
use super::region_cache::{CachedRegion, RegionCache};
use super::request::{addressed, is_stale_read, is_write, send, MIN_SEND_TIME};
use super::retry::{Backoff, Retry};
use crate::proto::kvpb::{self, kv_request, kv_response, region_error, KvResponse};
use crate::proto::metapb::{Peer, PeerRole};

/// Regions asked of placement at once when a batch or scan needs several.
const REGIONS_PER_LOOKUP: u32 = 64;

/// What one attempt at a region came to.
enum Outcome {
    Done(KvResponse),
    Retry(Retry),
    Fail(Error),
}

pub struct Router {
    connections: Arc<Connections>,
    placement: Placement,
    cache: RwLock<RegionCache>,
    max_backoff: Duration,
    /// Spreads stale reads (and leaderless attempts) over a region's replicas.
    rotation: AtomicUsize,
}

impl Router {
    pub fn new(
        connections: Arc<Connections>,
        placement: Placement,
        max_backoff: Duration,
    ) -> Router {
        Router {
            connections,
            placement,
            cache: RwLock::new(RegionCache::new()),
            max_backoff,
            rotation: AtomicUsize::new(0),
        }
    }

    /// Runs `op`, all of which lies at ring position `hash`, until it is answered or fails.
    pub async fn run_at(
        &self,
        hash: u64,
        op: kv_request::Op,
        deadline: Instant,
    ) -> Result<KvResponse> {
        let mut backoff = Backoff::new(self.max_backoff, Instant::now(), deadline);
        loop {
            let outcome = match self.locate(hash, deadline).await {
                Ok(region) => self.attempt(&region, op.clone(), deadline).await,
                Err(err) => Outcome::Retry(Retry::after_pause(err.to_string())),
            };
            match outcome {
                Outcome::Done(response) => return Ok(response),
                Outcome::Fail(err) => return Err(err),
                Outcome::Retry(retry) => backoff.wait(retry).await?,
            }
        }
    }

    /// Runs a batch: items (`hashes[i]` the ring position of item i, `sizes[i]` its bytes)
    /// are cut into per-region parts built by `part`, sent in parallel; parts refused for a
    /// routing reason are cut again from the corrected cache and resent. Returns each
    /// answered part's items with its response. On a final error other parts may have been
    /// applied (each part is atomic on its own); a possibly delivered, unanswered part makes
    /// the whole batch `OutcomeUnknown`.
    pub async fn run_batch(
        &self,
        hashes: &[u64],
        sizes: &[usize],
        part: impl Fn(&[usize]) -> kv_request::Op,
        deadline: Instant,
    ) -> Result<Vec<(Vec<usize>, KvResponse)>> {
        let mut backoff = Backoff::new(self.max_backoff, Instant::now(), deadline);
        let mut answered = Vec::new();
        let mut pending: Vec<usize> = (0..hashes.len()).collect();
        while !pending.is_empty() {
            let (parts, uncached) = self.split(hashes, sizes, &pending, deadline).await;
            let attempts = parts
                .iter()
                .map(|BatchPart { region, items }| self.attempt(region, part(items), deadline));
            let outcomes = futures_util::future::join_all(attempts).await;
            let mut retry_items = uncached.items;
            let mut retries: Vec<Retry> = uncached.retry.into_iter().collect();
            let mut failure: Option<Error> = None;
            for (BatchPart { items, .. }, outcome) in parts.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Done(response) => answered.push((items, response)),
                    Outcome::Retry(retry) => {
                        retry_items.extend(items);
                        retries.push(retry);
                    }
                    Outcome::Fail(err) => failure = Some(worse(failure, err)),
                }
            }
            if let Some(err) = failure {
                return Err(err);
            }
            if let Some(retry) = Retry::merge(retries) {
                backoff.wait(retry).await?;
            }
            retry_items.sort_unstable();
            pending = retry_items;
        }
        Ok(answered)
    }

    /// The parts for `pending`, after asking placement for the regions the cache lacks.
    async fn split(
        &self,
        hashes: &[u64],
        sizes: &[usize],
        pending: &[usize],
        deadline: Instant,
    ) -> (Vec<BatchPart>, Uncached) {
        let limits = PartLimits::default();
        let (parts, uncached) = split_by_region(&self.cache.read(), hashes, sizes, pending, limits);
        if uncached.is_empty() {
            return (parts, Uncached::default());
        }
        let missing: Vec<u64> = uncached.iter().map(|&i| hashes[i]).collect();
        let retry = self.load_regions(missing, deadline).await.err();
        // Cut again: the parts found before and the newly loaded ones, from one cache view.
        let (parts, items) = split_by_region(&self.cache.read(), hashes, sizes, pending, limits);
        let retry = match (retry, items.is_empty()) {
            (Some(err), _) => Some(Retry::after_pause(err.to_string())),
            (None, false) => Some(Retry::after_pause(
                "placement does not yet know the regions of some keys".to_owned(),
            )),
            (None, true) => None,
        };
        (parts, Uncached { items, retry })
    }

    /// Caches the regions holding `hashes`, a run of regions per placement call.
    async fn load_regions(&self, mut hashes: Vec<u64>, deadline: Instant) -> Result<()> {
        hashes.sort_unstable();
        for hash in hashes {
            if self.cache.read().lookup(hash).is_some() {
                continue;
            }
            let regions = self
                .placement
                .regions_from(hash, REGIONS_PER_LOOKUP, deadline)
                .await?;
            let mut cache = self.cache.write();
            for entry in regions {
                if let Some(region) = entry.region {
                    cache.insert(region, entry.leader);
                }
            }
        }
        Ok(())
    }

    /// The cached region holding `hash`, asking placement on a miss.
    async fn locate(&self, hash: u64, deadline: Instant) -> Result<CachedRegion> {
        if let Some(region) = self.cache.read().lookup(hash) {
            return Ok(region.clone());
        }
        let found = self.placement.region_at(hash, deadline).await?;
        let region = found.region.unwrap_or_default();
        let mut cache = self.cache.write();
        cache.insert(region.clone(), found.leader);
        // Refused when the cache knows a later layout; the lookup then finds that instead.
        Ok(cache.lookup(hash).cloned().unwrap_or(CachedRegion {
            region,
            leader: found.leader,
        }))
    }

    /// Sends `op` to one replica of `region` and judges the answer.
    async fn attempt(
        &self,
        region: &CachedRegion,
        op: kv_request::Op,
        deadline: Instant,
    ) -> Outcome {
        let write = is_write(&op);
        let Some(peer) = self.pick_peer(region, is_stale_read(&op)) else {
            self.cache.write().invalidate(region.id());
            return Outcome::Retry(Retry::after_pause(format!(
                "region {} has no voter cached",
                region.id()
            )));
        };
        let addr = match self.placement.store_addr(peer.store_id, deadline).await {
            Ok(addr) => addr,
            Err(err) => return Outcome::Retry(Retry::after_pause(err.to_string())),
        };
        let channel = match self.connections.channel(&addr) {
            Ok(channel) => channel,
            Err(err) => return Outcome::Fail(err),
        };
        if deadline.saturating_duration_since(Instant::now()) < MIN_SEND_TIME {
            return Outcome::Retry(Retry::after_pause(format!(
                "no time left to send to region {}",
                region.id()
            )));
        }
        let where_to = format!("region {} at store {} ({addr})", region.id(), peer.store_id);
        match send(channel, addressed(op, region), deadline).await {
            Ok(response) => self.judge_response(region, peer.store_id, response, write, &where_to),
            Err(status) => self.judge_status(region, peer.store_id, status, write, &where_to),
        }
    }

    /// The replica to ask: the leader, or (stale reads, unknown leader) the voters in turn.
    fn pick_peer(&self, region: &CachedRegion, stale: bool) -> Option<Peer> {
        if !stale {
            if let Some(leader) = region.leader {
                return Some(leader);
            }
        }
        let voters: Vec<&Peer> = region
            .region
            .peers
            .iter()
            .filter(|p| p.role == PeerRole::Voter as i32)
            .collect();
        if voters.is_empty() {
            return None;
        }
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        Some(*voters[turn % voters.len()])
    }

    fn judge_status(
        &self,
        region: &CachedRegion,
        store_id: u64,
        status: tonic::Status,
        write: bool,
        where_to: &str,
    ) -> Outcome {
        if status.code() == tonic::Code::InvalidArgument {
            return Outcome::Fail(Error::InvalidArgument(status.message().to_owned()));
        }
        let what = format!("{where_to}: {}", status_text(&status));
        if never_sent(&status) {
            // Maybe the node moved or died: ask placement for its address and the region's
            // leader again, and try another replica meanwhile.
            self.placement.forget_store(store_id);
            self.cache.write().clear_leader(region.id());
            return Outcome::Retry(Retry::after_pause(format!("cannot connect to {what}")));
        }
        if write {
            return Outcome::Fail(Error::OutcomeUnknown(format!(
                "the write was sent to {what}; no answer"
            )));
        }
        match status.code() {
            tonic::Code::Unimplemented
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied => Outcome::Fail(Error::Server(what)),
            _ => {
                self.cache.write().clear_leader(region.id());
                Outcome::Retry(Retry::after_pause(what))
            }
        }
    }

    fn judge_response(
        &self,
        region: &CachedRegion,
        store_id: u64,
        response: KvResponse,
        write: bool,
        where_to: &str,
    ) -> Outcome {
        match &response.result {
            Some(kv_response::Result::RegionError(err)) => {
                self.judge_region_error(region, store_id, err, write, where_to)
            }
            Some(kv_response::Result::OtherError(message)) => {
                Outcome::Fail(Error::Server(format!("{where_to}: {message}")))
            }
            Some(kv_response::Result::DiskFull(full)) => Outcome::Fail(Error::DiskFull(format!(
                "store {} of region {}: {}",
                full.store_id,
                region.id(),
                full.message
            ))),
            None => Outcome::Fail(Error::Server(format!("{where_to}: an empty response"))),
            Some(_) => Outcome::Done(response),
        }
    }

    fn judge_region_error(
        &self,
        region: &CachedRegion,
        store_id: u64,
        err: &kvpb::RegionError,
        write: bool,
        where_to: &str,
    ) -> Outcome {
        let cause = format!("{where_to}: {}", err.message);
        let Some(kind) = &err.error else {
            return Outcome::Fail(Error::Server(cause));
        };
        let mut cache = self.cache.write();
        match kind {
            region_error::Error::NotLeader(kvpb::NotLeader {
                leader: Some(leader),
                ..
            }) if leader.store_id != store_id && leader.store_id != 0 => {
                if !cache.update_leader(region.id(), *leader) {
                    let mut known = region.clone();
                    known.leader = Some(*leader);
                    cache.insert(known.region, known.leader);
                }
                Outcome::Retry(Retry::now(cause))
            }
            region_error::Error::NotLeader(_) => {
                // No leader known there (an election is on): ask placement after a pause.
                cache.invalidate(region.id());
                Outcome::Retry(Retry::after_pause(cause))
            }
            region_error::Error::EpochNotMatch(kvpb::EpochNotMatch { current_regions }) => {
                let mut changed = false;
                for current in current_regions {
                    changed |= cache.insert(current.clone(), None);
                }
                if changed {
                    // The regions the answer did not cover are looked up again on the retry.
                    Outcome::Retry(Retry::now(cause))
                } else {
                    // The node is behind the cache (it has not applied the split yet), or
                    // told nothing new: start over from placement after a pause.
                    cache.invalidate(region.id());
                    Outcome::Retry(Retry::after_pause(cause))
                }
            }
            region_error::Error::RegionNotFound(_) => {
                cache.invalidate(region.id());
                Outcome::Retry(Retry::after_pause(cause))
            }
            region_error::Error::ServerIsBusy(busy) => Outcome::Retry(Retry::at_least(
                Duration::from_millis(busy.backoff_ms),
                cause,
            )),
            region_error::Error::Timeout(_) if write => Outcome::Fail(Error::OutcomeUnknown(cause)),
            region_error::Error::Timeout(_) => {
                cache.clear_leader(region.id());
                Outcome::Retry(Retry::after_pause(cause))
            }
        }
    }
}

/// Batch items no cached region holds, and why they wait.
#[derive(Default)]
struct Uncached {
    items: Vec<usize>,
    retry: Option<Retry>,
}

/// Of two failures of one batch, the one the caller must hear about: `OutcomeUnknown` (some
/// part may or may not have been applied) wins.
fn worse(first: Option<Error>, next: Error) -> Error {
    match first {
        Some(err @ Error::OutcomeUnknown(_)) => err,
        _ => next,
    }
}
