//! The client's errors: what a caller can act on, each with the context that led to it.

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request was refused as malformed (empty or oversized key or value, a bad cursor, a
    /// bad CAS shape...). Nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation's deadline passed before it could complete; names the last cause (no
    /// leader, busy node, unreachable store...). A write that fails with this was never
    /// possibly delivered without an answer (that is `OutcomeUnknown`), so it was not applied.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A write that may or may not have been applied: it (or, for a batch, one of its parts)
    /// reached a node and no answer came back. The client never retries such a write, since
    /// it could apply twice; read the key to find out.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A write refused because a store of the key's region is low on disk; nothing changed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Placement could not be reached or refused a lookup.
    #[error("placement: {0}")]
    Placement(String),
    /// A connection could not be set up (bad endpoint, TLS material...).
    #[error("transport: {0}")]
    Transport(String),
    /// A node answered with an error that is not a routing problem.
    #[error("server error: {0}")]
    Server(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes, `outer: inner: innermost` (tonic's own messages leave them out).
pub(crate) fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
