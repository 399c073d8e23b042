//! Protobuf messages and gRPC services, generated in the `ringkv-proto` crate (`proto/`).

pub use ringkv_proto::{kvpb, metapb, placementpb, raft_serverpb};
