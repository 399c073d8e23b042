//! What kvbench loads: the `--target` choice and the client each target is driven through.
//! Workers only put and get by key; how a request reaches the cluster (which endpoint, which
//! protocol, which node) is the target's business.

use std::time::Duration;

use clap::ValueEnum;

use crate::grpc::GrpcClient;
use crate::http::{HttpApi, HttpClient};

/// Per-request bound: a request slower than this counts as an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// ringkv's HTTP API (`PUT`/`GET /kv/{key}`) on the nodes' client ports.
    Ringkv,
    /// ringkv through its routing client (`ringkv::client`): gRPC sent straight to each
    /// key's region leader, found through placement.
    RingkvGrpc,
    /// etcd v3's JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`, linearizable).
    Etcd,
}

impl Target {
    /// The name `--target` takes, also used in reports.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |value| value.get_name().to_owned())
    }

    /// Endpoints used when `--endpoints` is not given; `None`: the target has no usual place.
    pub fn default_endpoints(self) -> Option<Vec<String>> {
        match self {
            Target::RingkvGrpc => Some(GrpcClient::default_placement_endpoints()),
            Target::Ringkv | Target::Etcd => None,
        }
    }
}

/// One client shared by every worker; `worker` lets a target spread workers over endpoints.
pub enum Client {
    Http(HttpClient),
    Grpc(GrpcClient),
}

impl Client {
    /// Sets up the target's client; `concurrency` sizes connection pools.
    pub async fn connect(
        target: Target,
        endpoints: &[String],
        concurrency: usize,
    ) -> Result<Client, String> {
        match target {
            Target::Ringkv => {
                HttpClient::new(HttpApi::Ringkv, endpoints, concurrency).map(Client::Http)
            }
            Target::Etcd => {
                HttpClient::new(HttpApi::EtcdGateway, endpoints, concurrency).map(Client::Http)
            }
            Target::RingkvGrpc => GrpcClient::connect(endpoints).await.map(Client::Grpc),
        }
    }

    pub async fn put(&self, worker: usize, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            Client::Http(http) => http.put(worker, key, value).await,
            Client::Grpc(grpc) => grpc.put(key, value).await,
        }
    }

    /// A read; a missing key is an answer too, not an error.
    pub async fn get(&self, worker: usize, key: &str) -> Result<(), String> {
        match self {
            Client::Http(http) => http.get(worker, key).await,
            Client::Grpc(grpc) => grpc.get(key).await,
        }
    }
}
