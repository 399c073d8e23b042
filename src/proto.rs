//! Protobuf messages generated from `proto/` at build time (see build.rs).

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
