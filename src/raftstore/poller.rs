//! The batch loop. Each poller thread owns a disjoint set of peers and, every round:
//!
//! 1. drains its mailbox (raft messages, client commands) and ticks peers when due;
//! 2. collects every touched peer's `Ready` and stages new log entries, hard states and
//!    received snapshots of ALL of them into one `WriteBatch`, written with ONE fsync
//!    (group commit across regions);
//! 3. sends the messages, advances raft, and applies committed entries of all peers into one
//!    more batch — data and applied index together, so a crash can never separate them;
//! 4. answers writes (after apply) and reads (once applied >= read index).
//!
//! A failed write stops the node: continuing after an fsync error could acknowledge data that
//! is not durable (crash-stop).
//!
//! Crash points (`fail` crate, `failpoints` feature; `FAILPOINTS=name=panic` makes the node
//! abort there, see `tests/nemesis.rs`): `raft_before_log_write`, `raft_after_log_write`,
//! `apply_before_write`, `apply_after_write`, `gc_before_write`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::msg::PeerMsg;
use super::peer::PeerFsm;
use super::router::PollerMsg;
use super::RaftSender;
use crate::engine::{Engine, EngineError};
use crate::proto::raft_serverpb::RaftMessage;

/// Bound on mailbox messages handled before the round's Ready processing.
const MAX_MESSAGES_PER_ROUND: usize = 4096;

pub struct Poller {
    pub peers: HashMap<u64, PeerFsm>,
    pub mailbox: Receiver<PollerMsg>,
    pub engine: Engine,
    pub sender: std::sync::Arc<dyn RaftSender>,
    pub tick_interval: Duration,
    pub store_id: u64,
}

impl Poller {
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + self.tick_interval;
        let mut touched: HashSet<u64> = HashSet::new();
        loop {
            // Peers left with work by the last round go again without waiting.
            let wait = if touched.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.mailbox.recv_timeout(wait) {
                Ok(PollerMsg::Peer(region_id, msg)) => self.handle(region_id, msg, &mut touched),
                Ok(PollerMsg::Shutdown) => return,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..MAX_MESSAGES_PER_ROUND {
                match self.mailbox.try_recv() {
                    Ok(PollerMsg::Peer(region_id, msg)) => {
                        self.handle(region_id, msg, &mut touched)
                    }
                    Ok(PollerMsg::Shutdown) => return,
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                for (region_id, peer) in &mut self.peers {
                    peer.raw.tick();
                    touched.insert(*region_id);
                }
                next_tick = Instant::now() + self.tick_interval;
            }
            match self.process_readies(&touched) {
                Ok(again) => touched = again,
                Err(err) => crash_stop(self.store_id, &err),
            }
        }
    }

    fn handle(&mut self, region_id: u64, msg: PeerMsg, touched: &mut HashSet<u64>) {
        let Some(peer) = self.peers.get_mut(&region_id) else {
            if let PeerMsg::Command(command) = msg {
                // The router knew the region but this poller does not: answer, don't hang.
                super::reply_region_not_found(command, region_id);
            }
            return;
        };
        match msg {
            PeerMsg::Raft(message) => peer.step(message),
            PeerMsg::Command(command) => peer.handle_command(command),
            PeerMsg::Unreachable { to_peer_id } => peer.report_unreachable(to_peer_id),
            PeerMsg::SnapshotStatus { to_peer_id, ok } => peer.report_snapshot(to_peer_id, ok),
            PeerMsg::Status(reply) => {
                let _ = reply.send(peer.status());
                return;
            }
        }
        touched.insert(region_id);
    }

    /// Runs one round for `touched` peers; returns the peers that still have work.
    fn process_readies(&mut self, touched: &HashSet<u64>) -> Result<HashSet<u64>, EngineError> {
        let mut again = HashSet::new();
        let mut outbox: Vec<RaftMessage> = Vec::new();
        let mut raft_batch = self.engine.batch();
        let mut readies = Vec::new();
        for region_id in touched {
            let Some(peer) = self.peers.get_mut(region_id) else {
                continue;
            };
            peer.flush_reads();
            if !peer.raw.has_ready() {
                continue;
            }
            let mut ready = peer.raw.ready();
            let snapshot = peer.handle_ready_persist(&mut ready, &mut raft_batch, &mut outbox)?;
            readies.push((*region_id, ready, snapshot));
        }
        // Leaders' appends go out before our own fsync (raft thesis 10.2.1).
        self.flush_outbox(&mut outbox);
        if readies.is_empty() {
            return Ok(again);
        }
        fail::fail_point!("raft_before_log_write");
        if !raft_batch.is_empty() {
            let started = Instant::now();
            let bytes = raft_batch.size_bytes();
            self.engine.write(raft_batch, true)?;
            metrics::histogram!("ringkv_raft_log_write_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("ringkv_raft_log_write_size_bytes").record(bytes as f64);
            metrics::counter!("ringkv_raft_log_fsync_total").increment(1);
        }
        fail::fail_point!("raft_after_log_write");

        let mut apply_batch = self.engine.batch();
        let mut replies = Vec::new();
        let mut advanced = Vec::with_capacity(readies.len());
        for (region_id, ready, snapshot) in readies {
            let Some(peer) = self.peers.get_mut(&region_id) else {
                continue;
            };
            peer.handle_ready_apply(ready, snapshot, &mut outbox, &mut apply_batch, &mut replies)?;
            advanced.push(region_id);
        }
        self.flush_outbox(&mut outbox);
        fail::fail_point!("apply_before_write");
        self.engine.write(apply_batch, false)?;
        fail::fail_point!("apply_after_write");
        let acknowledged = replies.len();
        for (reply, response) in replies {
            let _ = reply.send(response);
        }
        metrics::counter!("ringkv_raft_applied_commands_total").increment(acknowledged as u64);

        let mut gc_batch = self.engine.batch();
        for region_id in advanced {
            if let Some(peer) = self.peers.get_mut(&region_id) {
                peer.after_apply(&mut gc_batch)?;
                // Advancing may unlock more work (entries committed meanwhile).
                if peer.raw.has_ready() {
                    again.insert(region_id);
                }
            }
        }
        fail::fail_point!("gc_before_write");
        self.engine.write(gc_batch, false)?;
        Ok(again)
    }

    fn flush_outbox(&self, outbox: &mut Vec<RaftMessage>) {
        for message in outbox.drain(..) {
            self.sender.send(message);
        }
    }
}

/// Stops the process after a storage failure. Raft's safety rests on what it was told is
/// durable; after a failed write that is no longer known, so the node must not go on.
fn crash_stop(store_id: u64, err: &EngineError) -> ! {
    tracing::error!(store = store_id, %err, "storage write failed; stopping the node (crash-stop)");
    eprintln!("ringkv store {store_id}: fatal storage error: {err}; aborting");
    std::process::abort();
}
