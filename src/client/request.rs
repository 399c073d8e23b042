//! One request on the wire: the region context it carries, which RPC sends it, and what
//! kind of operation it is (a write must never be resent once it may have been delivered).

use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use super::region_cache::CachedRegion;
use crate::proto::kvpb::kv_client::KvClient;
use crate::proto::kvpb::{kv_request, Consistency, KvResponse, RequestContext};

/// Largest gRPC message sent or accepted: a full batch part plus framing (the node's bound).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// `op` addressed to `region`: the node serves it from its replica of that region only.
pub fn addressed(mut op: kv_request::Op, region: &CachedRegion) -> kv_request::Op {
    let context = Some(RequestContext {
        region_id: region.id(),
        region_epoch: Some(region.epoch()),
    });
    match &mut op {
        kv_request::Op::Get(r) => r.context = context,
        kv_request::Op::Put(r) => r.context = context,
        kv_request::Op::Delete(r) => r.context = context,
        kv_request::Op::Cas(r) => r.context = context,
        kv_request::Op::BatchGet(r) => r.context = context,
        kv_request::Op::BatchPut(r) => r.context = context,
        kv_request::Op::BatchDelete(r) => r.context = context,
        kv_request::Op::Scan(r) => r.context = context,
    }
    op
}

/// Whether `op` changes data (and so must not be resent after a lost answer).
pub fn is_write(op: &kv_request::Op) -> bool {
    !matches!(
        op,
        kv_request::Op::Get(_) | kv_request::Op::BatchGet(_) | kv_request::Op::Scan(_)
    )
}

/// Whether any replica may serve `op`.
pub fn is_stale_read(op: &kv_request::Op) -> bool {
    let stale = Consistency::Stale as i32;
    match op {
        kv_request::Op::Get(r) => r.consistency == stale,
        kv_request::Op::BatchGet(r) => r.consistency == stale,
        kv_request::Op::Scan(r) => r.consistency == stale,
        _ => false,
    }
}

/// Less time than this left before the deadline: a request is not worth sending.
pub const MIN_SEND_TIME: Duration = Duration::from_millis(1);

/// Sends `op` on `channel`, answering by `deadline` (a local deadline error otherwise). The
/// caller checks that at least `MIN_SEND_TIME` is left: once called, a write counts as sent.
pub async fn send(
    channel: Channel,
    op: kv_request::Op,
    deadline: Instant,
) -> Result<KvResponse, tonic::Status> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_SEND_TIME);
    let mut client = KvClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let call = async move {
        fn timed<T>(message: T, left: Duration) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            request.set_timeout(left);
            request
        }
        match op {
            kv_request::Op::Get(r) => client.get(timed(r, left)).await,
            kv_request::Op::Put(r) => client.put(timed(r, left)).await,
            kv_request::Op::Delete(r) => client.delete(timed(r, left)).await,
            kv_request::Op::Cas(r) => client.compare_and_swap(timed(r, left)).await,
            kv_request::Op::BatchGet(r) => client.batch_get(timed(r, left)).await,
            kv_request::Op::BatchPut(r) => client.batch_put(timed(r, left)).await,
            kv_request::Op::BatchDelete(r) => client.batch_delete(timed(r, left)).await,
            kv_request::Op::Scan(r) => client.scan(timed(r, left)).await,
        }
    };
    match tokio::time::timeout_at(deadline, call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "no answer before the operation's deadline",
        )),
    }
}
