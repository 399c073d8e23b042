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

    /// The channel to `addr` (`host:port` or a URL). Lazy: no I/O here; a connection that
    /// cannot be set up shows as a failed call carrying tonic's `ConnectError`.
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
