//! The HTTP targets: ringkv's HTTP API and etcd v3's JSON gateway, over one pooled reqwest
//! client. Worker i talks to endpoint i mod n, so the load is spread over the given nodes (a
//! node that does not lead the key's region forwards the request itself).

use base64::Engine as _;
use serde_json::json;

use crate::target::REQUEST_TIMEOUT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpApi {
    /// `PUT`/`GET {endpoint}/kv/{key}`.
    Ringkv,
    /// `POST {endpoint}/v3/kv/put` and `/v3/kv/range`, keys and values in base64.
    EtcdGateway,
}

pub struct HttpClient {
    http: reqwest::Client,
    api: HttpApi,
    /// Base URLs; never empty.
    endpoints: Vec<String>,
}

impl HttpClient {
    pub fn new(
        api: HttpApi,
        endpoints: &[String],
        concurrency: usize,
    ) -> Result<HttpClient, String> {
        if endpoints.is_empty() {
            return Err("give --endpoints (base URLs)".to_owned());
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(concurrency)
            .build()
            .map_err(|error| format!("building the HTTP client: {error}"))?;
        Ok(HttpClient {
            http,
            api,
            endpoints: endpoints.to_vec(),
        })
    }

    fn endpoint(&self, worker: usize) -> &str {
        &self.endpoints[worker % self.endpoints.len()]
    }

    pub async fn put(&self, worker: usize, key: &str, value: &[u8]) -> Result<(), String> {
        let endpoint = self.endpoint(worker);
        let request = match self.api {
            HttpApi::Ringkv => self
                .http
                .put(format!("{endpoint}/kv/{key}"))
                .body(value.to_vec()),
            HttpApi::EtcdGateway => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = json!({"key": b64.encode(key), "value": b64.encode(value)});
                self.http
                    .post(format!("{endpoint}/v3/kv/put"))
                    .body(body.to_string())
            }
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }

    pub async fn get(&self, worker: usize, key: &str) -> Result<(), String> {
        let endpoint = self.endpoint(worker);
        let request = match self.api {
            HttpApi::Ringkv => self.http.get(format!("{endpoint}/kv/{key}")),
            HttpApi::EtcdGateway => {
                let b64 = base64::engine::general_purpose::STANDARD;
                let body = json!({"key": b64.encode(key)});
                self.http
                    .post(format!("{endpoint}/v3/kv/range"))
                    .body(body.to_string())
            }
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.bytes().await;
        // A missing key is an answer too.
        if status.is_success() || status.as_u16() == 404 {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}
