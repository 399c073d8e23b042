//! Placement's errors, and how they become gRPC statuses.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the saved state is corrupt: {0}")]
    Corrupt(String),
    #[error("request for cluster {got}, but this is cluster {expected}")]
    ClusterMismatch { expected: u64, got: u64 },
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    #[error("the cluster is already bootstrapped")]
    AlreadyBootstrapped,
    #[error("store {0} is not registered")]
    UnknownStore(u64),
    #[error("store {0} is a tombstone (removed for good)")]
    Tombstone(u64),
    #[error("region {0} is not known")]
    UnknownRegion(u64),
    #[error("stale region {region_id}: {reason}")]
    StaleRegion { region_id: u64, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A well-formed request the cluster cannot take as it is now (e.g. removing a store
    /// would leave too few for `max_replicas`).
    #[error("refused: {0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, PlacementError>;

impl PlacementError {
    pub fn io(path: &Path, source: std::io::Error) -> PlacementError {
        PlacementError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PlacementError::Io { .. } => "io",
            PlacementError::Corrupt(_) => "corrupt",
            PlacementError::ClusterMismatch { .. } => "cluster_mismatch",
            PlacementError::NotBootstrapped => "not_bootstrapped",
            PlacementError::AlreadyBootstrapped => "already_bootstrapped",
            PlacementError::UnknownStore(_) => "unknown_store",
            PlacementError::Tombstone(_) => "tombstone",
            PlacementError::UnknownRegion(_) => "unknown_region",
            PlacementError::StaleRegion { .. } => "stale_region",
            PlacementError::Invalid(_) => "invalid",
            PlacementError::Refused(_) => "refused",
        }
    }
}

impl From<PlacementError> for tonic::Status {
    fn from(error: PlacementError) -> tonic::Status {
        let message = error.to_string();
        match error {
            PlacementError::Io { .. } | PlacementError::Corrupt(_) => {
                tonic::Status::internal(message)
            }
            PlacementError::ClusterMismatch { .. }
            | PlacementError::NotBootstrapped
            | PlacementError::Tombstone(_)
            | PlacementError::StaleRegion { .. }
            | PlacementError::Refused(_) => tonic::Status::failed_precondition(message),
            PlacementError::AlreadyBootstrapped => tonic::Status::already_exists(message),
            PlacementError::UnknownStore(_) | PlacementError::UnknownRegion(_) => {
                tonic::Status::not_found(message)
            }
            PlacementError::Invalid(_) => tonic::Status::invalid_argument(message),
        }
    }
}
