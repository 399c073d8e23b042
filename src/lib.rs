//! ringkv: a multi-raft, hash-sharded, replicated key-value store.
//!
//! Keys hash (xxh3-64) onto a u64 ring cut into regions; each region is a raft group; a node
//! drives all of its regions' peers from a few poller threads over one RocksDB, and talks to
//! other nodes over QUIC with mutual TLS. See ARCHITECTURE.md for the map of this crate.
//!
//! Dependency direction (nothing imports from a layer above it):
//! `keys`, `region`, `proto` → `engine` → `raftstore`, `transport` → `server`, `client`.
//!
//! Applications talk to a cluster through [`client::Client`], a routing client that finds
//! each key's region through placement and sends requests straight to its leader.

pub mod client;
pub mod demo;
pub mod engine;
pub mod keys;
pub mod proto;
pub mod raftstore;
pub mod region;
pub mod server;
pub mod transport;
pub mod value;
