//! The client gRPC API (`kvpb.Kv`), served on the same port as HTTP. Requests are checked
//! against the limits (refused with INVALID_ARGUMENT, changing nothing), then executed by
//! `KvService`; every other outcome, region errors included, is a `KvResponse`.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::kv::KvService;
use super::limits::Limits;
use crate::proto::kvpb::kv_server::{Kv, KvServer};
use crate::proto::kvpb::{
    kv_request, BatchDeleteRequest, BatchGetRequest, BatchPutRequest, CasRequest, DeleteRequest,
    GetRequest, KvRequest, KvResponse, PutRequest, ScanRequest,
};

/// Largest gRPC message accepted: a full batch (`max_batch_bytes`) plus framing.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

pub struct KvGrpc {
    kv: Arc<KvService>,
    limits: Limits,
}

/// The gRPC service as axum routes, to be merged with the HTTP API's router.
pub fn routes(kv: Arc<KvService>, limits: Limits) -> axum::Router {
    let service = KvServer::new(KvGrpc { kv, limits })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::service::Routes::new(service).into_axum_router()
}

impl KvGrpc {
    async fn serve(
        &self,
        name: &'static str,
        op: kv_request::Op,
    ) -> Result<Response<KvResponse>, Status> {
        let started = Instant::now();
        let request = KvRequest { op: Some(op) };
        let outcome = match self.limits.check(&request) {
            Ok(()) => Ok(Response::new(self.kv.execute(request).await)),
            Err(invalid) => Err(Status::invalid_argument(format!(
                "{}: {}",
                invalid.code, invalid.message
            ))),
        };
        let result = match &outcome {
            Ok(response) => outcome_label(response.get_ref()),
            Err(_) => "invalid",
        };
        metrics::counter!("ringkv_grpc_requests_total", "op" => name, "result" => result)
            .increment(1);
        metrics::histogram!("ringkv_grpc_request_duration_seconds", "op" => name)
            .record(started.elapsed().as_secs_f64());
        outcome
    }
}

/// A low-cardinality label for a response.
fn outcome_label(response: &KvResponse) -> &'static str {
    use crate::proto::kvpb::kv_response::Result;
    match response.result {
        Some(Result::RegionError(_)) => "region_error",
        Some(Result::OtherError(_)) => "error",
        Some(Result::DiskFull(_)) => "disk_full",
        None => "error",
        _ => "ok",
    }
}

#[tonic::async_trait]
impl Kv for KvGrpc {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<KvResponse>, Status> {
        self.serve("get", kv_request::Op::Get(request.into_inner()))
            .await
    }

    async fn batch_get(
        &self,
        request: Request<BatchGetRequest>,
    ) -> Result<Response<KvResponse>, Status> {
        self.serve("batch_get", kv_request::Op::BatchGet(request.into_inner()))
            .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<KvResponse>, Status> {
        self.serve("put", kv_request::Op::Put(request.into_inner()))
            .await
    }

    async fn batch_put(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<KvResponse>, Status> {
        self.serve("batch_put", kv_request::Op::BatchPut(request.into_inner()))
            .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<KvResponse>, Status> {
        self.serve("delete", kv_request::Op::Delete(request.into_inner()))
            .await
    }

    async fn batch_delete(
        &self,
        request: Request<BatchDeleteRequest>,
    ) -> Result<Response<KvResponse>, Status> {
        self.serve(
            "batch_delete",
            kv_request::Op::BatchDelete(request.into_inner()),
        )
        .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<CasRequest>,
    ) -> Result<Response<KvResponse>, Status> {
        self.serve("cas", kv_request::Op::Cas(request.into_inner()))
            .await
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<KvResponse>, Status> {
        self.serve("scan", kv_request::Op::Scan(request.into_inner()))
            .await
    }
}
