//! The `ringkv-grpc` target: ringkv through its routing client, `ringkv::client::Client`.
//! One client serves every worker (its clones share the region cache and one connection per
//! node, and reusing them is what this target measures); it asks placement where each key's
//! region is and sends the request straight to that region's leader, following leader hints
//! and splits by itself. Reads are linearizable (the leader confirms it still leads), like
//! the HTTP targets' reads.

use ringkv::client::{ClientConfig, Consistency};

use crate::target::REQUEST_TIMEOUT;

pub struct GrpcClient {
    client: ringkv::client::Client,
}

impl GrpcClient {
    /// Where `ringkv placement` and `ringkv demo` serve placement by default.
    pub fn default_placement_endpoints() -> Vec<String> {
        ClientConfig::default().placement_endpoints
    }

    /// Connects to the first of `placement_endpoints` that answers; nodes are connected to on
    /// first use.
    pub async fn connect(placement_endpoints: &[String]) -> Result<GrpcClient, String> {
        if placement_endpoints.is_empty() {
            return Err("give --endpoints (placement's gRPC addresses)".to_owned());
        }
        let config = ClientConfig {
            // The client's deadline covers its retries too: a request that cannot be served
            // within it counts as one error, as a timed-out HTTP request does.
            timeout: REQUEST_TIMEOUT,
            ..ClientConfig::new(placement_endpoints.iter().cloned())
        };
        let client = ringkv::client::Client::connect(config)
            .await
            .map_err(|error| {
                format!(
                    "connecting to placement at {}: {error}",
                    placement_endpoints.join(",")
                )
            })?;
        Ok(GrpcClient {
            client: client.with_consistency(Consistency::Linearizable),
        })
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.client
            .put(key, value)
            .await
            .map_err(|error| error.to_string())
    }

    /// A read; an absent key is an answer (`Ok(None)` from the client), not an error.
    pub async fn get(&self, key: &str) -> Result<(), String> {
        self.client
            .get(key)
            .await
            .map(|_value| ())
            .map_err(|error| error.to_string())
    }
}
