//! ringkv's placement service (TiKV's PD is the reference): the registry of stores and of the
//! regions on the hash ring, the cluster-wide id allocator, and the scheduler whose operators
//! region leaders carry out through raft.
//!
//! * `state` — the cluster as placement knows it; what survives a restart and what does not;
//!   the rules that keep it from going backwards.
//! * `storage` — the durable state file (atomic replace).
//! * `checker` — the replica checker: the next step towards `max_replicas` healthy voters.
//! * `goal` — move goals: the next step of moving a replica from one store to another.
//! * `balance` — the leader and region balancers.
//! * `hot` — the hot-region scheduler: leadership of hot regions off the most loaded store.
//! * `operator` — scheduling steps and goals in flight, judged by the regions' own reports.
//! * `service` — the gRPC `Placement` service over the state.
//! * `server` — runs gRPC plus `/status`, `/metrics` and the `/ring` page (`ring.html`) over
//!   HTTP.
//! * `units` — byte counts as people read them.

mod balance;
mod checker;
pub mod error;
mod goal;
mod hot;
mod operator;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
#[cfg(test)]
mod test_cluster;
mod units;

pub use error::PlacementError;
pub use server::{start, RunningPlacement, ServeConfig};
pub use state::{ClusterState, PlacementConfig, RegionReport};
