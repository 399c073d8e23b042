//! Length-delimited protobuf frames: a u32 big-endian body length, then the prost-encoded body.
//!
//! QUIC streams are byte streams, so messages need their own boundaries. The length prefix is
//! checked against [`MAX_FRAME_BYTES`] before anything is allocated, so a corrupt or hostile
//! peer cannot make us reserve gigabytes. The functions take any tokio byte stream; in the
//! transport they run over `quinn::SendStream` / `quinn::RecvStream`.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted in either direction. Raft batches are cut far below this
/// (see the sender's batch budget); only a single huge raft message can get close.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size_bytes} bytes exceeds the {max_bytes}-byte limit")]
    TooLarge { size_bytes: usize, max_bytes: usize },
    #[error("stream ended inside a frame ({read_bytes} of {expected_bytes} bytes read)")]
    Truncated {
        read_bytes: usize,
        expected_bytes: usize,
    },
    #[error("frame body is not a valid message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as one frame (prefix and body in one buffer, so it goes out in one write).
pub fn encode_frame(message: &impl prost::Message) -> Result<BytesMut, FrameError> {
    let body_bytes = message.encoded_len();
    check_size(body_bytes)?;
    let mut buffer = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + body_bytes);
    // Lossless: check_size bounds body_bytes by MAX_FRAME_BYTES, which fits in u32.
    buffer.put_u32(body_bytes as u32);
    // Cannot fail: the buffer has exactly the capacity the message asked for.
    message
        .encode(&mut buffer)
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    Ok(buffer)
}

/// Writes one frame. Nothing is written if the message is too large, so the stream stays usable.
pub async fn write_frame<W>(stream: &mut W, message: &impl prost::Message) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame(message)?;
    stream.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` means the peer finished the stream cleanly between frames;
/// ending inside a frame is [`FrameError::Truncated`].
pub async fn read_frame<M, R>(stream: &mut R) -> Result<Option<M>, FrameError>
where
    M: prost::Message + Default,
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut read_bytes = 0;
    while read_bytes < LENGTH_PREFIX_BYTES {
        let n = stream.read(&mut prefix[read_bytes..]).await?;
        if n == 0 {
            if read_bytes == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                read_bytes,
                expected_bytes: LENGTH_PREFIX_BYTES,
            });
        }
        read_bytes += n;
    }
    let body_bytes = u32::from_be_bytes(prefix) as usize;
    check_size(body_bytes)?;

    let mut body = BytesMut::zeroed(body_bytes);
    let mut filled = 0;
    while filled < body_bytes {
        let n = stream.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                read_bytes: LENGTH_PREFIX_BYTES + filled,
                expected_bytes: LENGTH_PREFIX_BYTES + body_bytes,
            });
        }
        filled += n;
    }
    // Decoding from `Bytes` lets prost slice `bytes` fields out of the frame without copying.
    Ok(Some(M::decode(body.freeze())?))
}

fn check_size(size_bytes: usize) -> Result<(), FrameError> {
    if size_bytes > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size_bytes,
            max_bytes: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::raft_serverpb::{RaftMessage, RaftMessageBatch};

    fn sample_batch() -> RaftMessageBatch {
        RaftMessageBatch {
            messages: (1..=3)
                .map(|region_id| RaftMessage {
                    region_id,
                    message: bytes::Bytes::from(vec![region_id as u8; 100]),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut writer, mut reader) = tokio::io::duplex(1 << 16);
        let batch = sample_batch();
        write_frame(&mut writer, &batch).await.expect("write 1");
        write_frame(&mut writer, &RaftMessageBatch::default())
            .await
            .expect("write empty");
        drop(writer);

        let first: Option<RaftMessageBatch> = read_frame(&mut reader).await.expect("read 1");
        assert_eq!(first, Some(batch));
        let empty: Option<RaftMessageBatch> = read_frame(&mut reader).await.expect("read 2");
        assert_eq!(empty, Some(RaftMessageBatch::default()));
        let end: Option<RaftMessageBatch> = read_frame(&mut reader).await.expect("read end");
        assert_eq!(end, None, "a stream finished between frames is a clean end");
    }

    #[test]
    fn encoded_frame_is_big_endian_length_then_body() {
        let batch = sample_batch();
        let frame = encode_frame(&batch).expect("encode");
        let body = prost::Message::encode_to_vec(&batch);
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], &body[..]);
    }

    #[tokio::test]
    async fn oversize_length_prefix_is_rejected_before_allocating() {
        let (mut writer, mut reader) = tokio::io::duplex(64);
        let claimed = (MAX_FRAME_BYTES + 1) as u32;
        writer
            .write_all(&claimed.to_be_bytes())
            .await
            .expect("write prefix");
        let result: Result<Option<RaftMessageBatch>, _> = read_frame(&mut reader).await;
        assert!(
            matches!(result, Err(FrameError::TooLarge { size_bytes, .. }) if size_bytes == MAX_FRAME_BYTES + 1),
            "got {result:?}"
        );
    }

    #[test]
    fn oversize_message_is_rejected_when_encoding() {
        let huge = RaftMessage {
            message: bytes::Bytes::from(vec![0u8; MAX_FRAME_BYTES + 1]),
            ..Default::default()
        };
        assert!(matches!(
            encode_frame(&huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn stream_ending_inside_a_frame_is_truncated() {
        let (mut writer, mut reader) = tokio::io::duplex(1 << 16);
        let frame = encode_frame(&sample_batch()).expect("encode");
        writer
            .write_all(&frame[..frame.len() - 10])
            .await
            .expect("write partial");
        drop(writer);
        let result: Result<Option<RaftMessageBatch>, _> = read_frame(&mut reader).await;
        assert!(
            matches!(result, Err(FrameError::Truncated { .. })),
            "got {result:?}"
        );
    }
}
