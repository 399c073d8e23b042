//! One gRPC channel per address, created on first use and shared by every call after it
//! (a tonic `Channel` multiplexes concurrent calls over one HTTP/2 connection and reconnects
//! by itself after the connection breaks).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::config::ClientTls;
use super::error::{with_sources, Error, Result};

pub struct Connections {
    tls: Option<ClientTlsConfig>,
    connect_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Connections {
    pub fn new(tls: Option<&ClientTls>, connect_timeout: Duration) -> Connections {
        Connections {
            tls: tls.map(tls_config),
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The channel to `addr` (`host:port` or a URL). Lazy: no I/O here (but it must be
    /// called inside a tokio runtime); a connection that cannot be set up shows as a failed
    /// call carrying tonic's `ConnectError`.
    pub fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(channel) = self.channels.lock().get(addr) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(addr)?.connect_lazy();
        Ok(self
            .channels
            .lock()
            .entry(addr.to_owned())
            .or_insert(channel)
            .clone())
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else if self.tls.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let invalid = |e: &dyn std::error::Error| {
            Error::Transport(format!("endpoint {url}: {}", with_sources(e)))
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(&e))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| invalid(&e))?;
        }
        Ok(endpoint)
    }
}

fn tls_config(tls: &ClientTls) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .domain_name(tls.domain.clone());
    if let Some(identity) = &tls.identity {
        config = config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    config
}

/// Whether a failed call never left this process: the connection could not be set up, so
/// the request was not sent and even a write may be retried.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::config::ClientIdentity;
    use crate::proto::kvpb::{kv_request, PutRequest};

    fn put() -> kv_request::Op {
        kv_request::Op::Put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ..Default::default()
        })
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        addr
    }

    fn self_signed_tls() -> ClientTls {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a cert");
        ClientTls {
            ca_pem: certified.cert.pem().into_bytes(),
            identity: Some(ClientIdentity {
                cert_pem: certified.cert.pem().into_bytes(),
                key_pem: certified.signing_key.serialize_pem().into_bytes(),
            }),
            domain: "localhost".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_never_to_have_sent_the_request() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for tls in [None, Some(self_signed_tls())] {
            let connections = Connections::new(tls.as_ref(), Duration::from_secs(1));
            let channel = connections.channel(&closed_port()).expect("a lazy channel");
            let status = super::super::request::send(channel, put(), deadline)
                .await
                .expect_err("nothing listens there");
            assert!(never_sent(&status), "tls {}: {status:?}", tls.is_some());
        }
    }

    #[tokio::test]
    async fn a_request_to_a_silent_server_may_have_been_delivered() {
        // Accepts connections and never answers: the write may or may not have run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let connections = Connections::new(None, Duration::from_secs(1));
        let channel = connections.channel(&addr).expect("a lazy channel");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let status = super::super::request::send(channel, put(), deadline)
            .await
            .expect_err("no answer comes");
        assert!(!never_sent(&status), "{status:?}");
        silent.abort();
    }

    #[tokio::test]
    async fn channels_are_made_once_per_address_and_bad_addresses_are_refused() {
        let connections = Connections::new(None, Duration::from_secs(1));
        connections.channel("127.0.0.1:1").expect("lazy");
        connections.channel("127.0.0.1:1").expect("reused");
        assert_eq!(connections.channels.lock().len(), 1);
        let bad = connections.channel("http://[not an address");
        assert!(matches!(bad, Err(Error::Transport(_))), "{:?}", bad.err());
    }
}
