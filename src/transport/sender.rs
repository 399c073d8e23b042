//! The per-store sender task: drains one store's bounded queue into batched frames on one
//! long-lived unidirectional stream, and keeps reconnecting while the store is away.
//!
//! Invariants:
//! - the queue never stalls: while there is no connection the task keeps draining it and
//!   reports every dropped message unreachable, so raft hears about the outage promptly and
//!   `send` finds room again once the store is back;
//! - a frame holds at most [`MAX_BATCH_MESSAGES`] messages and stops growing once it passes
//!   [`MAX_BATCH_BYTES`], so one busy store cannot produce frames near the frame limit;
//! - every message taken from the queue is either written to a stream or reported unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::frame::{self, FrameError};
use super::{Shared, StreamKind, TransportError};
use crate::proto::raft_serverpb::{RaftMessage, RaftMessageBatch};

/// Messages per frame: enough to batch thousands of regions' heartbeats into one write.
const MAX_BATCH_MESSAGES: usize = 4096;
/// A batch stops taking messages once its encoded size reaches this.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Runs until the queue closes (the transport shut down).
pub(super) async fn run(
    shared: Arc<Shared>,
    store_id: u64,
    mut queue: mpsc::Receiver<RaftMessage>,
) {
    let mut backoff = Backoff::default();
    // Set while the store is known to be away: its messages are dropped instead of held.
    let mut in_outage = false;
    loop {
        let connected = if in_outage {
            connect_while_draining(&shared, store_id, &mut queue).await
        } else {
            shared.connection_to(store_id).await.map(Some)
        };
        let connection = match connected {
            Ok(Some(connection)) => connection,
            Ok(None) => return,
            Err(error) => {
                if !in_outage {
                    tracing::warn!(store_id, %error, "cannot connect to store; dropping its raft messages until it is back");
                    in_outage = true;
                }
                if !drain_for(&shared, &mut queue, backoff.next_delay()).await {
                    return;
                }
                continue;
            }
        };
        in_outage = false;
        tracing::info!(store_id, remote = %connection.remote_address(), "connected to store");
        metrics::counter!("ringkv_transport_connects_total").increment(1);
        let connected_at = Instant::now();
        match pump_batches(&shared, &connection, &mut queue).await {
            Ok(()) => return,
            Err(error) => tracing::info!(store_id, %error, "connection to store lost"),
        }
        // A connection that dies right after the handshake (e.g. the peer rejects our
        // certificate) must not make us redial in a tight loop.
        if connected_at.elapsed() >= RECONNECT_BACKOFF_MAX {
            backoff.reset();
        }
        if !drain_for(&shared, &mut queue, backoff.next_delay()).await {
            return;
        }
    }
}

/// Writes batches until the queue closes (`Ok`) or the connection fails (`Err`).
async fn pump_batches(
    shared: &Shared,
    connection: &quinn::Connection,
    queue: &mut mpsc::Receiver<RaftMessage>,
) -> Result<(), TransportError> {
    let mut stream = connection.open_uni().await?;
    stream.write_all(&[StreamKind::RaftBatches as u8]).await?;
    loop {
        let first = tokio::select! {
            message = queue.recv() => match message {
                Some(message) => message,
                None => {
                    // Best effort: the endpoint is closing anyway.
                    let _ = stream.finish();
                    return Ok(());
                }
            },
            reason = connection.closed() => return Err(reason.into()),
        };
        let batch = collect_batch(first, queue);
        let Err(error) = frame::write_frame(&mut stream, &batch).await else {
            let bytes = prost::Message::encoded_len(&batch);
            metrics::counter!("ringkv_transport_frames_sent_total").increment(1);
            metrics::counter!("ringkv_transport_messages_sent_total")
                .increment(batch.messages.len() as u64);
            metrics::counter!("ringkv_transport_sent_bytes_total").increment(bytes as u64);
            metrics::histogram!("ringkv_transport_batch_messages")
                .record(batch.messages.len() as f64);
            continue;
        };
        for message in &batch.messages {
            shared.report_unreachable(message);
        }
        match error {
            // Nothing was written, so the stream is still in sync; only this batch is lost.
            FrameError::TooLarge { size_bytes, .. } => {
                tracing::warn!(
                    size_bytes,
                    messages = batch.messages.len(),
                    "raft batch exceeds the frame limit; dropped"
                );
            }
            other => return Err(other.into()),
        }
    }
}

/// Takes `first` plus whatever else is queued right now, within the batch budget.
fn collect_batch(first: RaftMessage, queue: &mut mpsc::Receiver<RaftMessage>) -> RaftMessageBatch {
    let mut batch_bytes = prost::Message::encoded_len(&first);
    let mut messages = vec![first];
    while messages.len() < MAX_BATCH_MESSAGES && batch_bytes < MAX_BATCH_BYTES {
        let Ok(message) = queue.try_recv() else {
            break;
        };
        batch_bytes += prost::Message::encoded_len(&message);
        messages.push(message);
    }
    RaftMessageBatch { messages }
}

/// Dials the store while dropping (and reporting) whatever arrives meanwhile.
/// `Ok(None)`: the queue closed.
async fn connect_while_draining(
    shared: &Shared,
    store_id: u64,
    queue: &mut mpsc::Receiver<RaftMessage>,
) -> Result<Option<quinn::Connection>, TransportError> {
    let connecting = shared.connection_to(store_id);
    tokio::pin!(connecting);
    loop {
        tokio::select! {
            result = &mut connecting => return result.map(Some),
            message = queue.recv() => match message {
                Some(message) => shared.report_unreachable(&message),
                None => return Ok(None),
            },
        }
    }
}

/// Drops (and reports) queued messages for `delay`. Returns false if the queue closed.
async fn drain_for(
    shared: &Shared,
    queue: &mut mpsc::Receiver<RaftMessage>,
    delay: Duration,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            message = queue.recv() => match message {
                Some(message) => shared.report_unreachable(&message),
                None => return false,
            },
        }
    }
}

/// Exponential reconnect delay: 50 ms doubling up to 2 s.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: RECONNECT_BACKOFF_MIN,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RECONNECT_BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = RECONNECT_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(50));
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(
            *delays.last().unwrap_or(&Duration::ZERO),
            RECONNECT_BACKOFF_MAX
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), RECONNECT_BACKOFF_MIN);
    }

    #[tokio::test]
    async fn batches_respect_the_message_budget() {
        let (queue, mut receiver) = mpsc::channel(MAX_BATCH_MESSAGES * 2);
        for region_id in 0..(MAX_BATCH_MESSAGES as u64 + 10) {
            queue
                .try_send(RaftMessage {
                    region_id,
                    ..Default::default()
                })
                .expect("queue has room");
        }
        let first = receiver.recv().await.expect("first message");
        let batch = collect_batch(first, &mut receiver);
        assert_eq!(batch.messages.len(), MAX_BATCH_MESSAGES);
        let rest = receiver.recv().await.expect("remaining message");
        assert_eq!(collect_batch(rest, &mut receiver).messages.len(), 10);
    }

    #[tokio::test]
    async fn batches_stop_growing_past_the_byte_budget() {
        let (queue, mut receiver) = mpsc::channel(64);
        for region_id in 0..10 {
            queue
                .try_send(RaftMessage {
                    region_id,
                    message: bytes::Bytes::from(vec![0u8; MAX_BATCH_BYTES / 4]),
                    ..Default::default()
                })
                .expect("queue has room");
        }
        let first = receiver.recv().await.expect("first message");
        let batch = collect_batch(first, &mut receiver);
        // Each message is a bit over a quarter of the budget: the fourth one crosses it.
        assert_eq!(batch.messages.len(), 4);
    }
}
