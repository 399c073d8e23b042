//! Snapshot streaming. A raft `MsgSnapshot` carries only a [`SnapshotMeta`] (in
//! `Snapshot.data`); the key-value data is a file in the snapshot directory, streamed on its own
//! bidirectional QUIC stream so it never delays the raft batches of other regions.
//!
//! Stream layout (after the kind byte): one `RaftMessage` frame, then the file's raw bytes until
//! the sender finishes its half; the receiver answers with one ack byte.
//!
//! Crash safety on the receiver: data goes to `<file_name>.tmp`, is checked against the meta's
//! size and xxh3-64 checksum, fsynced, renamed to `<file_name>` (and the directory fsynced), and
//! only then is the message delivered to raft and the ack sent. So raft never sees a snapshot
//! whose file is missing or torn, and the sender reports success only for a durable file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use raft::eraftpb::MessageType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{frame, Shared, StreamKind, TransportError};
use crate::proto::raft_serverpb::{RaftMessage, SnapshotMeta};

/// Bytes read from the file (sender) or taken from the stream (receiver) at a time.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// The receiver must verify and fsync the whole file before it acks; allow for a slow disk.
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const ACK_OK: u8 = 1;
const ACK_REJECTED: u8 = 0;

/// Whether `message` carries a raft `MsgSnapshot`. Scans only the top-level fields of the inner
/// eraftpb message (skipping entries without copying them), because `send` calls this for every
/// outgoing message. An inner message that does not parse is not a snapshot: it goes out like
/// any other message and the receiving raft rejects it.
pub(super) fn is_snapshot(message: &RaftMessage) -> bool {
    matches!(
        raft_message_type(&message.message),
        Ok(MessageType::MsgSnapshot)
    )
}

fn raft_message_type(encoded: &[u8]) -> protobuf::ProtobufResult<MessageType> {
    /// `eraftpb.Message.msg_type` is field 1.
    const MSG_TYPE_FIELD: u32 = 1;
    let mut input = protobuf::CodedInputStream::from_bytes(encoded);
    while !input.eof()? {
        let (field_number, wire_type) = input.read_tag_unpack()?;
        if field_number == MSG_TYPE_FIELD && wire_type == protobuf::wire_format::WireTypeVarint {
            return input.read_enum();
        }
        input.skip_field(wire_type)?;
    }
    // proto3 leaves a zero enum out of the encoding.
    Ok(MessageType::MsgHup)
}

/// Streams the snapshot of `message` to `store_id` and reports the outcome to raft.
pub(super) async fn send_snapshot(shared: Arc<Shared>, store_id: u64, message: RaftMessage) {
    let region_id = message.region_id;
    let to_peer_id = message.to_peer.as_ref().map_or(0, |peer| peer.id);
    let result = match Arc::clone(&shared.outgoing_snapshot_slots)
        .acquire_owned()
        .await
    {
        Ok(_slot) => stream_snapshot(&shared, store_id, &message).await,
        Err(_closed) => Err(TransportError::Shutdown),
    };
    match &result {
        Ok(()) => tracing::info!(region_id, to_peer_id, store_id, "snapshot sent"),
        Err(error) => {
            tracing::warn!(region_id, to_peer_id, store_id, %error, "snapshot send failed")
        }
    }
    shared
        .inbox
        .report_snapshot(region_id, to_peer_id, result.is_ok());
}

async fn stream_snapshot(
    shared: &Shared,
    store_id: u64,
    message: &RaftMessage,
) -> Result<(), TransportError> {
    let meta = snapshot_meta(message)?;
    let path = shared.snap_dir.join(checked_file_name(&meta.file_name)?);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(io_error(&path))?;
    // Progress for placement (and `kvctl move-region --wait`), cleared however this ends.
    let key = (
        message.region_id,
        message.to_peer.as_ref().map_or(0, |p| p.id),
    );
    let progress = ProgressGuard { shared, key };
    progress.set(0, meta.size_bytes);

    let connection = shared.connection_to(store_id).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&[StreamKind::Snapshot as u8]).await?;
    frame::write_frame(&mut send, message).await?;
    let mut chunk = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut sent = 0u64;
    loop {
        let read_bytes = file.read(&mut chunk).await.map_err(io_error(&path))?;
        if read_bytes == 0 {
            break;
        }
        send.write_all(&chunk[..read_bytes]).await?;
        sent += read_bytes as u64;
        metrics::counter!("ringkv_transport_snapshot_sent_bytes_total")
            .increment(read_bytes as u64);
        progress.set(sent, meta.size_bytes);
    }
    send.finish()?;

    let mut ack = [0u8; 1];
    tokio::time::timeout(SNAPSHOT_ACK_TIMEOUT, recv.read_exact(&mut ack))
        .await
        .map_err(|_| TransportError::Timeout(SNAPSHOT_ACK_TIMEOUT))??;
    if ack[0] != ACK_OK {
        return Err(snapshot_error(&meta.file_name, "the receiver rejected it"));
    }
    Ok(())
}

/// One outgoing snapshot's entry in `Shared::snapshot_progress`, removed on drop.
struct ProgressGuard<'a> {
    shared: &'a Shared,
    key: (u64, u64),
}

impl ProgressGuard<'_> {
    fn set(&self, sent: u64, total: u64) {
        self.shared
            .snapshot_progress
            .lock()
            .insert(self.key, (sent, total));
    }
}

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        self.shared.snapshot_progress.lock().remove(&self.key);
    }
}

/// Serves one incoming snapshot stream (its kind byte already read).
pub(super) async fn receive_snapshot(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match Arc::clone(&shared.incoming_snapshot_slots)
        .acquire_owned()
        .await
    {
        Ok(_slot) => receive_snapshot_file(&shared, &mut recv).await,
        Err(_closed) => Err(TransportError::Shutdown),
    };
    let ack = match result {
        Ok(message) => {
            tracing::info!(region_id = message.region_id, "snapshot received");
            fail::fail_point!("snapshot_after_receive");
            shared.inbox.deliver(message);
            ACK_OK
        }
        Err(error) => {
            tracing::warn!(%error, "incoming snapshot rejected");
            // Unblocks a sender still writing data we will not read.
            let _ = recv.stop(quinn::VarInt::from_u32(0));
            ACK_REJECTED
        }
    };
    // If the ack cannot be sent the sender times out or sees the connection fail: a failure.
    if send.write_all(&[ack]).await.is_ok() {
        let _ = send.finish();
    }
}

/// Receives and persists the file; returns the raft message to deliver.
async fn receive_snapshot_file(
    shared: &Shared,
    recv: &mut quinn::RecvStream,
) -> Result<RaftMessage, TransportError> {
    let message = frame::read_frame::<RaftMessage, _>(recv)
        .await?
        .ok_or(TransportError::MissingFrame("the snapshot's RaftMessage"))?;
    let meta = snapshot_meta(&message)?;
    let file_name = checked_file_name(&meta.file_name)?;
    tokio::fs::create_dir_all(&shared.snap_dir)
        .await
        .map_err(io_error(&shared.snap_dir))?;
    let final_path = shared.snap_dir.join(file_name);
    let temp_path = shared.snap_dir.join(format!("{file_name}.tmp"));

    let written = write_verified(recv, &temp_path, &meta).await;
    if written.is_err() {
        // Best effort: a stale .tmp is overwritten by the next attempt anyway.
        let _ = tokio::fs::remove_file(&temp_path).await;
    }
    written?;
    tokio::fs::rename(&temp_path, &final_path)
        .await
        .map_err(io_error(&final_path))?;
    sync_dir(&shared.snap_dir).await?;
    Ok(message)
}

/// Copies the stream into `path`, checking size and checksum as the bytes go by, then fsyncs.
async fn write_verified(
    recv: &mut quinn::RecvStream,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<(), TransportError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(io_error(path))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut received_bytes: u64 = 0;
    while let Some(chunk) = recv.read_chunk(SNAPSHOT_CHUNK_BYTES, true).await? {
        received_bytes += chunk.bytes.len() as u64;
        if received_bytes > meta.size_bytes {
            return Err(snapshot_error(
                &meta.file_name,
                format!("more than the announced {} bytes", meta.size_bytes),
            ));
        }
        hasher.update(&chunk.bytes);
        file.write_all(&chunk.bytes).await.map_err(io_error(path))?;
    }
    if received_bytes != meta.size_bytes {
        return Err(snapshot_error(
            &meta.file_name,
            format!(
                "{received_bytes} bytes received, {} announced",
                meta.size_bytes
            ),
        ));
    }
    let checksum = hasher.digest();
    if checksum != meta.checksum {
        return Err(snapshot_error(
            &meta.file_name,
            format!("checksum {checksum:#x} != announced {:#x}", meta.checksum),
        ));
    }
    file.sync_all().await.map_err(io_error(path))?;
    Ok(())
}

/// Decodes the `SnapshotMeta` carried in the inner raft message's `Snapshot.data`.
fn snapshot_meta(message: &RaftMessage) -> Result<SnapshotMeta, TransportError> {
    let inner: raft::eraftpb::Message = protobuf::Message::parse_from_bytes(&message.message)
        .map_err(|error| snapshot_error("", format!("raft message does not decode: {error}")))?;
    SnapshotMeta::decode(inner.get_snapshot().get_data())
        .map_err(|error| snapshot_error("", format!("SnapshotMeta does not decode: {error}")))
}

/// The file name must name a file directly inside the snapshot directory: a peer must not be
/// able to make us read or write anywhere else.
fn checked_file_name(file_name: &str) -> Result<&str, TransportError> {
    let plain = !file_name.is_empty()
        && !file_name.contains(['/', '\\', '\0'])
        && !file_name.contains("..");
    if !plain {
        return Err(snapshot_error(
            file_name,
            "file name must be a plain name without path separators or '..'",
        ));
    }
    Ok(file_name)
}

fn snapshot_error(file_name: &str, reason: impl Into<String>) -> TransportError {
    TransportError::Snapshot {
        file_name: file_name.to_owned(),
        reason: reason.into(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TransportError {
    let path: PathBuf = path.to_path_buf();
    move |source| TransportError::Io { path, source }
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<(), TransportError> {
    let directory = tokio::fs::File::open(dir).await.map_err(io_error(dir))?;
    directory.sync_all().await.map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb;

    fn encoded(message_type: MessageType, entries: usize) -> bytes::Bytes {
        let mut message = eraftpb::Message::default();
        message.set_msg_type(message_type);
        message.set_term(7);
        for index in 0..entries {
            let mut entry = eraftpb::Entry::default();
            entry.set_index(index as u64);
            entry.set_data(vec![1u8; 64].into());
            message.mut_entries().push(entry);
        }
        protobuf::Message::write_to_bytes(&message)
            .expect("encode eraftpb message")
            .into()
    }

    #[test]
    fn message_type_is_read_without_decoding_entries() {
        for (message_type, entries) in [
            (MessageType::MsgSnapshot, 0),
            (MessageType::MsgAppend, 3),
            (MessageType::MsgHeartbeat, 0),
            (MessageType::MsgHup, 0),
        ] {
            assert_eq!(
                raft_message_type(&encoded(message_type, entries)).expect("parse"),
                message_type
            );
        }
    }

    #[test]
    fn only_snapshot_messages_take_the_snapshot_path() {
        let snapshot = RaftMessage {
            message: encoded(MessageType::MsgSnapshot, 0),
            ..Default::default()
        };
        let append = RaftMessage {
            message: encoded(MessageType::MsgAppend, 2),
            ..Default::default()
        };
        let garbage = RaftMessage {
            message: bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
            ..Default::default()
        };
        assert!(is_snapshot(&snapshot));
        assert!(!is_snapshot(&append));
        assert!(!is_snapshot(&garbage));
    }

    #[test]
    fn file_names_that_leave_the_snapshot_dir_are_rejected() {
        for bad in ["", "../x", "a/b", "..", "a\\b", "x..", "/etc/passwd"] {
            assert!(checked_file_name(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            checked_file_name("region-7-5-100.snap").expect("plain name"),
            "region-7-5-100.snap"
        );
    }
}
