//! TLS on the node's client-facing port (the HTTP API, and gRPC on the same port): the port's
//! certificate and key, and optionally a CA that every client certificate must chain to.
//!
//! PEM parsing and the crypto provider are the transport's ([`crate::transport::tls`]), so a
//! certificate is read one way everywhere. Clients of this port are not stores: their
//! certificates should come from a CA of their own (see
//! [`tls::write_client_tls_certs`]), never from the cluster CA that admits raft peers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;

use crate::transport::tls::{self, TlsError};

/// ALPN ids the client port offers, preferred first: gRPC needs HTTP/2; curl and most HTTP
/// clients are happy with either.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the client port's TLS configuration could not be built; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("reading the client TLS {role} {path}: {source}")]
    Read {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client TLS {role} {path}: {source}")]
    Invalid {
        role: &'static str,
        path: PathBuf,
        source: TlsError,
    },
    #[error("client TLS: {0}")]
    Setup(TlsError),
    #[error("client TLS certificate {cert} and key {key} do not go together: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: TlsError,
    },
}

/// A ready-to-serve TLS configuration for the client port; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ServerConfig>,
    client_auth: bool,
}

impl fmt::Debug for ClientTls {
    // The configuration holds the private key: only say what kind of TLS this is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the port's certificate chain (`cert`: leaf first, then intermediates) and private
    /// key (`key`), PEM. With `client_ca` (PEM, one CA or a bundle) every client must present a
    /// certificate chaining to it, or the handshake fails; without, no certificate is asked.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, ClientTlsError> {
        let chain = tls::parse_cert_chain(&read(cert, "certificate")?, "certificate chain")
            .map_err(invalid(cert, "certificate"))?;
        let private_key = tls::parse_private_key(&read(key, "key")?, "private key")
            .map_err(invalid(key, "key"))?;
        let provider = tls::ring_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| ClientTlsError::Setup(source.into()))?;
        let builder = match client_ca {
            Some(ca) => {
                let roots = tls::parse_trust_roots(&read(ca, "client CA")?, "CA certificates")
                    .map_err(invalid(ca, "client CA"))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(TlsError::from)
                    .map_err(invalid(ca, "client CA"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, private_key)
            .map_err(|source| ClientTlsError::Mismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source: source.into(),
            })?;
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|id| id.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            client_auth: client_ca.is_some(),
        })
    }

    /// True when every client must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_auth
    }

    /// The rustls configuration the listener accepts connections with.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

fn read(path: &Path, role: &'static str) -> Result<String, ClientTlsError> {
    std::fs::read_to_string(path).map_err(|source| ClientTlsError::Read {
        role,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid<'a>(path: &'a Path, role: &'static str) -> impl FnOnce(TlsError) -> ClientTlsError + 'a {
    move |source| ClientTlsError::Invalid {
        role,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::{write_certs_dir, write_client_tls_certs, CLIENT_CA_NAME};

    fn certs_dir() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        write_certs_dir(root.path(), &[1]).expect("cluster certificates");
        write_client_tls_certs(root.path()).expect("client TLS certificates");
        root
    }

    #[test]
    fn builds_from_the_files_ringkv_certs_writes_with_and_without_client_auth() {
        let dir = certs_dir();
        let cert = dir.path().join("client-server.pem");
        let key = dir.path().join("client-server.key");
        let ca = dir.path().join(format!("{CLIENT_CA_NAME}.pem"));
        let mutual = ClientTls::from_files(&cert, &key, Some(&ca)).expect("with a client CA");
        assert!(mutual.requires_client_certificates());
        assert_eq!(
            mutual.server_config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            "gRPC needs h2 offered first"
        );
        let one_way = ClientTls::from_files(&cert, &key, None).expect("without a client CA");
        assert!(!one_way.requires_client_certificates());
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = certs_dir();
        let cert = dir.path().join("client-server.pem");
        let key = dir.path().join("client-server.key");
        let missing = dir.path().join("no-such.pem");
        let error = ClientTls::from_files(&missing, &key, None).expect_err("missing cert");
        assert!(error.to_string().contains("no-such.pem"), "{error}");

        let not_pem = dir.path().join("not-pem.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let error = ClientTls::from_files(&cert, &key, Some(&not_pem)).expect_err("bad CA");
        assert!(
            error.to_string().contains("not-pem.pem") && error.to_string().contains("client CA"),
            "{error}"
        );

        let other_key = dir.path().join("node-1.key");
        let error = ClientTls::from_files(&cert, &other_key, None).expect_err("wrong key");
        assert!(
            error.to_string().contains("node-1.key")
                && error.to_string().contains("client-server.pem"),
            "{error}"
        );
    }
}
