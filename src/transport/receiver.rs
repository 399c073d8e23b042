//! The serving side: accepts connections from other stores (TLS has already checked their
//! certificates against the cluster CA) and dispatches each stream on its kind byte.
//!
//! Bounds: quinn caps the streams a peer may open at once (see `tls::transport_config`), and
//! snapshot writes additionally wait for one of the incoming snapshot slots.

use std::sync::Arc;

use super::frame::{self, FrameError};
use super::{snapshot, Shared, StreamKind, TransportError};
use crate::proto::raft_serverpb::{ForwardRequest, RaftMessageBatch};

/// Runs until the endpoint closes.
pub(super) async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => serve_connection(shared, connection).await,
                Err(error) => tracing::warn!(%remote, %error, "refused incoming connection"),
            }
        });
    }
}

async fn serve_connection(shared: Arc<Shared>, connection: quinn::Connection) {
    let remote = connection.remote_address();
    tracing::info!(store_id = shared.store_id, %remote, "accepted connection from a store");
    let reason = loop {
        tokio::select! {
            stream = connection.accept_uni() => match stream {
                Ok(recv) => {
                    tokio::spawn(receive_raft_batches(Arc::clone(&shared), recv));
                }
                Err(reason) => break reason,
            },
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    tokio::spawn(serve_bidirectional(Arc::clone(&shared), send, recv));
                }
                Err(reason) => break reason,
            },
        }
    };
    tracing::info!(store_id = shared.store_id, %remote, %reason, "incoming connection closed");
}

async fn read_stream_kind(
    recv: &mut quinn::RecvStream,
) -> Result<Option<StreamKind>, TransportError> {
    let mut tag = [0u8; 1];
    recv.read_exact(&mut tag).await?;
    Ok(StreamKind::from_byte(tag[0]))
}

/// Delivers every message of every batch frame until the stream ends.
async fn receive_raft_batches(shared: Arc<Shared>, mut recv: quinn::RecvStream) {
    match read_stream_kind(&mut recv).await {
        Ok(Some(StreamKind::RaftBatches)) => {}
        Ok(kind) => {
            tracing::warn!(
                ?kind,
                "unexpected unidirectional stream kind; ignoring the stream"
            );
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            return;
        }
        Err(error) => {
            tracing::debug!(%error, "raft stream ended before its kind byte");
            return;
        }
    }
    loop {
        match frame::read_frame::<RaftMessageBatch, _>(&mut recv).await {
            Ok(Some(batch)) => {
                metrics::counter!("ringkv_transport_frames_received_total").increment(1);
                metrics::counter!("ringkv_transport_messages_received_total")
                    .increment(batch.messages.len() as u64);
                for message in batch.messages {
                    shared.inbox.deliver(message);
                }
            }
            Ok(None) => return,
            // The connection going away is logged once by serve_connection.
            Err(FrameError::Io(error)) => {
                tracing::debug!(%error, "raft stream ended");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "malformed raft batch; dropping the stream");
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                return;
            }
        }
    }
}

async fn serve_bidirectional(
    shared: Arc<Shared>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    match read_stream_kind(&mut recv).await {
        Ok(Some(StreamKind::Snapshot)) => snapshot::receive_snapshot(shared, send, recv).await,
        Ok(Some(StreamKind::Forward)) => {
            if let Err(error) = serve_forward(&shared, send, recv).await {
                tracing::warn!(%error, "forwarded request failed");
            }
        }
        Ok(kind) => {
            tracing::warn!(
                ?kind,
                "unexpected bidirectional stream kind; ignoring the stream"
            );
            let _ = recv.stop(quinn::VarInt::from_u32(0));
        }
        Err(error) => tracing::debug!(%error, "stream ended before its kind byte"),
    }
}

async fn serve_forward(
    shared: &Shared,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), TransportError> {
    let request = frame::read_frame::<ForwardRequest, _>(&mut recv)
        .await?
        .ok_or(TransportError::MissingFrame("a ForwardRequest"))?;
    let response = shared.forward_handler.handle(request).await;
    frame::write_frame(&mut send, &response).await?;
    send.finish()?;
    Ok(())
}
