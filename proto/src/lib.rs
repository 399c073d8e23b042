//! ringkv's wire and on-disk messages, generated at build time from the `.proto` files beside
//! this crate (see build.rs): `metapb` (cluster metadata), `kvpb` (client API and region
//! errors), `raft_serverpb` (persisted raft state, inter-node envelopes), `placementpb` (the
//! placement service and its gRPC client/server).

#![allow(clippy::all, missing_docs)]

pub mod metapb {
    include!(concat!(env!("OUT_DIR"), "/metapb.rs"));
}
pub mod kvpb {
    include!(concat!(env!("OUT_DIR"), "/kvpb.rs"));
}
pub mod raft_serverpb {
    include!(concat!(env!("OUT_DIR"), "/raft_serverpb.rs"));
}
pub mod placementpb {
    include!(concat!(env!("OUT_DIR"), "/placementpb.rs"));
}

/// A key's position on the ring: xxh3-64 with seed 0 over the key bytes. Part of the on-disk
/// format (data keys are ordered by it) and of routing, so it never changes.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0)
}
