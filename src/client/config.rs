//! How a client is set up: where placement is, TLS, and the bounds on every operation.

use std::time::Duration;

/// Settings for [`Client::connect`](super::Client::connect).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Placement's gRPC addresses (`host:port` or a URL); tried in turn until one answers.
    pub placement_endpoints: Vec<String>,
    /// TLS for the nodes' client ports; `None` is plaintext. (Placement is reached in
    /// plaintext: it serves no TLS.)
    pub tls: Option<ClientTls>,
    /// Deadline of one operation, retries included (`Client::with_timeout` overrides it).
    pub timeout: Duration,
    /// Longest pause between two retries (pauses start small and double).
    pub max_backoff: Duration,
    /// Bound on setting up one connection.
    pub connect_timeout: Duration,
}

/// Default deadline of one operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest pause between retries.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Default bound on setting up one connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl ClientConfig {
    /// Defaults with these placement endpoints.
    pub fn new<S: Into<String>>(placement_endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            placement_endpoints: placement_endpoints.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }
}

impl Default for ClientConfig {
    /// Placement at `127.0.0.1:2379` (what `ringkv placement` and `ringkv demo` listen on),
    /// plaintext, 10 s per operation, backoff up to 1 s.
    fn default() -> ClientConfig {
        ClientConfig {
            placement_endpoints: vec!["127.0.0.1:2379".to_owned()],
            tls: None,
            timeout: DEFAULT_TIMEOUT,
            max_backoff: DEFAULT_MAX_BACKOFF,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// TLS material (PEM). Server certificates are checked against `ca_pem` under the name
/// `domain` (addresses are IPs, so the name to verify is given here).
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    /// A client certificate for servers that require one (mutual TLS).
    pub identity: Option<ClientIdentity>,
    pub domain: String,
}

/// A client certificate chain and its private key (PEM).
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}
