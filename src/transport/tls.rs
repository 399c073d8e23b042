//! Mutual TLS between stores: the cluster certificate authority, node certificates, and the
//! rustls/quinn configurations built from them.
//!
//! Trust model: a store accepts a peer (in either direction) only if the peer presents a
//! certificate chaining to the cluster CA. No public roots are ever loaded, so a certificate
//! from any other authority is refused. Every node certificate is both a TLS server and a TLS
//! client certificate because one QUIC endpoint plays both roles, and every certificate names
//! the same DNS identity ([`SERVER_NAME`]) so a store can dial any address without knowing a
//! per-node host name.
//!
//! The ring provider is passed explicitly everywhere: rustls's process-wide default provider is
//! not installed in this crate (and would pull in aws-lc-rs if it were picked by features).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN protocol id of the store-to-store protocol; bump the suffix on incompatible changes so
/// mismatched binaries fail the handshake instead of misreading frames (2: batched write
/// entries, which a /1 build would apply as empty commands).
pub const ALPN_PROTOCOL: &[u8] = b"ringkv-raft/2";

/// The TLS server name every node certificate carries and every connection asks for.
pub const SERVER_NAME: &str = "ringkv-node";

/// QUIC keep-alive: well under the idle timeout so an idle but healthy link never times out.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A peer silent for this long is declared lost; raft then hears `report_unreachable`.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a peer may have open towards us at once. Raft batches use one long-lived uni stream
/// per connection; bidirectional streams carry snapshots and forwarded requests.
const MAX_CONCURRENT_UNI_STREAMS: u32 = 8;
const MAX_CONCURRENT_BIDI_STREAMS: u32 = 256;

/// How long a process waits for another process to finish publishing a certificate pair it
/// started writing (see [`write_certs_dir`]).
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Errors from certificate generation, loading and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid PEM in {what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS configuration is not usable for QUIC: {0}")]
    Quic(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate directory {0} is incomplete: {1}")]
    IncompleteDir(PathBuf, String),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything one node needs to take part in mutual TLS: the CA to trust, its own certificate
/// and the certificate's private key, all PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    // The private key must never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the three PEM files (CA certificate, node certificate, node key).
    pub fn from_files(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self> {
        Ok(Self {
            ca_cert_pem: std::fs::read_to_string(ca_cert).map_err(io_error(ca_cert))?,
            cert_pem: std::fs::read_to_string(cert).map_err(io_error(cert))?,
            key_pem: std::fs::read_to_string(key).map_err(io_error(key))?,
        })
    }

    fn ca_roots(&self) -> Result<Arc<RootCertStore>> {
        parse_trust_roots(&self.ca_cert_pem, "CA certificate")
    }

    fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        parse_cert_chain(&self.cert_pem, "node certificate")
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        parse_private_key(&self.key_pem, "node private key")
    }
}

/// The crypto provider every rustls configuration of this crate is built with (see the module
/// docs for why it is always passed explicitly).
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in `pem`, in file order: the leaf first, then any intermediates. `what`
/// names the text in errors.
pub(crate) fn parse_cert_chain(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>> {
    let pem_error = |source| TlsError::Pem { what, source };
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if chain.is_empty() {
        return Err(pem_error(PemError::NoItemsFound));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
pub(crate) fn parse_private_key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| TlsError::Pem { what, source })
}

/// A trust store of every certificate in `pem`: one CA, or a bundle of the old and the new CA
/// while a CA is being rotated.
pub(crate) fn parse_trust_roots(pem: &str, what: &'static str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in parse_cert_chain(pem, what)? {
        roots.add(ca)?;
    }
    Ok(Arc::new(roots))
}

/// The cluster certificate authority: signs node certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Makes a new self-signed CA with a fresh ECDSA P-256 key.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA (as written by [`write_certs_dir`]) so it can issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a node certificate signed by this CA (see [`CertificateRole::Node`]).
    pub fn issue(&self, node_name: &str) -> Result<TlsMaterial> {
        self.issue_as(node_name, CertificateRole::Node)
    }

    /// Issues a certificate for `role`, signed by this CA, with a fresh ECDSA P-256 key.
    pub fn issue_as(&self, common_name: &str, role: CertificateRole) -> Result<TlsMaterial> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.subject_alt_names = role.subject_alt_names()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = role.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsMaterial {
            ca_cert_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What a certificate issued by a [`CertificateAuthority`] is for; it decides the names and
/// the extended key usages the certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRole {
    /// A store on the raft transport: TLS server and TLS client (one QUIC endpoint plays
    /// both), valid for [`SERVER_NAME`], `localhost`, 127.0.0.1 and ::1.
    Node,
    /// A node's client-facing port (HTTP/gRPC): TLS server only, valid for `localhost`,
    /// 127.0.0.1 and ::1. Without client auth it can never pass as a store.
    ClientPort,
    /// A client of the client-facing port: TLS client only, no names.
    Client,
}

impl CertificateRole {
    fn subject_alt_names(self) -> Result<Vec<SanType>> {
        let loopback = [
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        Ok(match self {
            Self::Node => std::iter::once(SanType::DnsName(SERVER_NAME.try_into()?))
                .chain(loopback)
                .collect(),
            Self::ClientPort => loopback.to_vec(),
            Self::Client => Vec::new(),
        })
    }

    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Self::ClientPort => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Self::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "ringkv");
    name.push(DnType::CommonName, common_name);
    name
}

/// Builds the QUIC server side: TLS 1.3 only, ring, client certificates REQUIRED and verified
/// against the cluster CA alone.
pub fn quinn_server_config(material: &TlsMaterial) -> Result<quinn::ServerConfig> {
    let provider = ring_provider();
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(material.ca_roots()?, provider.clone())
            .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(material.cert_chain()?, material.private_key()?)?;
    tls.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok(config)
}

/// Builds the QUIC client side: trusts the cluster CA only and authenticates with the node
/// certificate. Connect with [`SERVER_NAME`] as the server name.
pub fn quinn_client_config(material: &TlsMaterial) -> Result<quinn::ClientConfig> {
    let provider = ring_provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(material.ca_roots()?)
        .with_client_auth_cert(material.cert_chain()?, material.private_key()?)?;
    tls.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config()?);
    Ok(config)
}

fn transport_config() -> Result<Arc<quinn::TransportConfig>> {
    let idle_timeout = quinn::IdleTimeout::try_from(MAX_IDLE_TIMEOUT)
        .map_err(|error| TlsError::Quic(error.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(Some(idle_timeout))
        .max_concurrent_uni_streams(MAX_CONCURRENT_UNI_STREAMS.into())
        .max_concurrent_bidi_streams(MAX_CONCURRENT_BIDI_STREAMS.into());
    Ok(Arc::new(transport))
}

/// Paths of the files [`write_certs_dir`] maintains.
fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    named_paths(dir, "ca")
}

fn node_paths(dir: &Path, node_id: u64) -> (PathBuf, PathBuf) {
    named_paths(dir, &format!("node-{node_id}"))
}

/// Makes (or completes) a development certificate directory: `ca.pem`, `ca.key`, and
/// `node-{id}.pem` / `node-{id}.key` for each id. Existing files are kept, and an existing CA
/// is reused, so running it again is harmless.
///
/// Several processes may run this at once on a fresh directory (a local 3-node cluster starting
/// together). Two mechanisms keep them from ending with mismatched CAs or key/certificate pairs:
/// - A missing directory is built complete (CA and all requested node pairs) in a temporary
///   directory next to it and renamed into place. Directory rename is atomic and fails if the
///   target is non-empty, so exactly one process wins; the others discard their work and use
///   the winner's CA.
/// - Node pairs missing from an existing directory are published key first with a hard link,
///   which fails if the name exists: the process whose link succeeds owns that pair, the others
///   wait for its certificate to appear.
pub fn write_certs_dir(dir: &Path, node_ids: &[u64]) -> Result<()> {
    let (ca_cert_path, ca_key_path) = ca_paths(dir);
    if !ca_cert_path.exists() && !ca_key_path.exists() && dir_is_missing_or_empty(dir)? {
        create_dir_atomically(dir, node_ids)?;
    }
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(TlsError::IncompleteDir(
            dir.to_path_buf(),
            "it has files but no ca.pem/ca.key pair; remove it or add the CA".into(),
        ));
    }
    let ca = load_ca(&ca_cert_path, &ca_key_path)?;
    for &node_id in node_ids {
        let (cert_path, key_path) = node_paths(dir, node_id);
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let material = ca.issue(&node_name(node_id))?;
        publish_pair(
            dir,
            &material.cert_pem,
            &material.key_pem,
            &cert_path,
            &key_path,
        )?;
    }
    Ok(())
}

/// Names (`NAME.pem` / `NAME.key`) of the files [`write_client_tls_certs`] adds.
pub const CLIENT_PORT_CERT_NAME: &str = "client-server";
pub const CLIENT_CA_NAME: &str = "client-ca";
pub const CLIENT_CERT_NAME: &str = "client";

/// Adds to a directory made by [`write_certs_dir`] what TLS on the nodes' client port needs:
/// - `client-server.pem`/`.key`: the client port's certificate, signed by the cluster CA (so
///   clients trust `ca.pem`), a TLS server certificate for `localhost`, 127.0.0.1 and ::1;
/// - `client-ca.pem`/`.key`: a CA for client certificates (the node's
///   `--client-tls-client-ca`), and `client.pem`/`.key`, a client certificate it signed.
///
/// Client certificates get their own CA because the raft transport admits any client
/// certificate chaining to the cluster CA: one signed by the cluster CA would let its holder
/// send raft messages. Existing files are kept; concurrent runs agree as in
/// [`write_certs_dir`] (each pair is published key first).
pub fn write_client_tls_certs(dir: &Path) -> Result<()> {
    let (ca_cert_path, ca_key_path) = ca_paths(dir);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(TlsError::IncompleteDir(
            dir.to_path_buf(),
            "client TLS certificates need the cluster CA (ca.pem/ca.key) first".into(),
        ));
    }
    let cluster_ca = load_ca(&ca_cert_path, &ca_key_path)?;
    publish_missing_pair(dir, CLIENT_PORT_CERT_NAME, || {
        let material = cluster_ca.issue_as("ringkv client port", CertificateRole::ClientPort)?;
        Ok((material.cert_pem, material.key_pem))
    })?;
    publish_missing_pair(dir, CLIENT_CA_NAME, || {
        let client_ca = CertificateAuthority::generate("ringkv client CA")?;
        Ok((client_ca.cert_pem, client_ca.key_pem))
    })?;
    // Whichever process published client-ca, its pair is the one on disk now.
    let (client_ca_cert_path, client_ca_key_path) = named_paths(dir, CLIENT_CA_NAME);
    let client_ca = load_ca(&client_ca_cert_path, &client_ca_key_path)?;
    publish_missing_pair(dir, CLIENT_CERT_NAME, || {
        let material = client_ca.issue_as("ringkv client", CertificateRole::Client)?;
        Ok((material.cert_pem, material.key_pem))
    })
}

/// Publishes `NAME.pem`/`NAME.key` made by `make` (certificate PEM, key PEM) unless both exist.
fn publish_missing_pair(
    dir: &Path,
    name: &str,
    make: impl FnOnce() -> Result<(String, String)>,
) -> Result<()> {
    let (cert_path, key_path) = named_paths(dir, name);
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    let (cert_pem, key_pem) = make()?;
    publish_pair(dir, &cert_pem, &key_pem, &cert_path, &key_path)
}

fn named_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn load_ca(cert_path: &Path, key_path: &Path) -> Result<CertificateAuthority> {
    CertificateAuthority::from_pem(
        &std::fs::read_to_string(cert_path).map_err(io_error(cert_path))?,
        &std::fs::read_to_string(key_path).map_err(io_error(key_path))?,
    )
}

/// Reads back what [`write_certs_dir`] wrote for one node.
pub fn load_node_material(dir: &Path, node_id: u64) -> Result<TlsMaterial> {
    let (ca_cert_path, _) = ca_paths(dir);
    let (cert_path, key_path) = node_paths(dir, node_id);
    TlsMaterial::from_files(&ca_cert_path, &cert_path, &key_path)
}

/// Reads `ca.pem` plus `{name}.pem` / `{name}.key` from `dir` (e.g. `name` = `node-2`).
pub fn load_named_material(dir: &Path, name: &str) -> Result<TlsMaterial> {
    let (ca_cert_path, _) = ca_paths(dir);
    let (cert_path, key_path) = named_paths(dir, name);
    TlsMaterial::from_files(&ca_cert_path, &cert_path, &key_path)
}

fn node_name(node_id: u64) -> String {
    format!("ringkv-node-{node_id}")
}

fn dir_is_missing_or_empty(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(TlsError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A name no other process (or thread of this one) will pick.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{count}", std::process::id())
}

/// Builds the whole directory beside `dir` and renames it into place; losing the race is fine.
fn create_dir_atomically(dir: &Path, node_ids: &[u64]) -> Result<()> {
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let dir_name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "certs".into());
    let staging = parent.join(format!(".{dir_name}.tmp-{}", unique_suffix()));
    let built = build_dir(&staging, node_ids).and_then(|()| {
        match std::fs::rename(&staging, dir) {
            Ok(()) => sync_dir(&parent),
            // Another process renamed its complete directory first (or the directory gained
            // files meanwhile); its CA is the cluster's CA now.
            Err(error) if dir_is_missing_or_empty(dir).ok() == Some(false) => {
                tracing::debug!(%error, dir = %dir.display(), "lost the certificate directory race");
                Ok(())
            }
            Err(source) => Err(TlsError::Io {
                path: dir.to_path_buf(),
                source,
            }),
        }
    });
    if staging.exists() {
        // Best effort: a leftover staging directory is harmless and hidden.
        let _ = std::fs::remove_dir_all(&staging);
    }
    built
}

fn build_dir(staging: &Path, node_ids: &[u64]) -> Result<()> {
    std::fs::create_dir(staging).map_err(io_error(staging))?;
    let ca = CertificateAuthority::generate("ringkv cluster CA")?;
    let (ca_cert_path, ca_key_path) = ca_paths(staging);
    write_file_synced(&ca_key_path, ca.key_pem(), true)?;
    write_file_synced(&ca_cert_path, ca.cert_pem(), false)?;
    for &node_id in node_ids {
        let material = ca.issue(&node_name(node_id))?;
        let (cert_path, key_path) = node_paths(staging, node_id);
        write_file_synced(&key_path, &material.key_pem, true)?;
        write_file_synced(&cert_path, &material.cert_pem, false)?;
    }
    sync_dir(staging)
}

/// Publishes a key/certificate pair into an existing directory without ever exposing a
/// mismatched pair: whoever links the key first owns the pair; others wait for its certificate.
fn publish_pair(
    dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    let suffix = unique_suffix();
    let staged_key = dir.join(format!(".key.tmp-{suffix}"));
    let staged_cert = dir.join(format!(".pem.tmp-{suffix}"));
    let published = write_file_synced(&staged_key, key_pem, true)
        .and_then(|()| write_file_synced(&staged_cert, cert_pem, false))
        .and_then(|()| match std::fs::hard_link(&staged_key, key_path) {
            Ok(()) => std::fs::hard_link(&staged_cert, cert_path)
                .map_err(io_error(cert_path))
                .and_then(|()| sync_dir(dir)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                wait_for_file(cert_path, dir)
            }
            Err(source) => Err(TlsError::Io {
                path: key_path.to_path_buf(),
                source,
            }),
        });
    // Best effort: the staged names are hidden, and the published names are separate links.
    let _ = std::fs::remove_file(&staged_key);
    let _ = std::fs::remove_file(&staged_cert);
    published
}

fn wait_for_file(path: &Path, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + PUBLISH_WAIT;
    while !path.exists() {
        if std::time::Instant::now() >= deadline {
            return Err(TlsError::IncompleteDir(
                dir.to_path_buf(),
                format!("{} has a key but no certificate", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn write_file_synced(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_material_builds_quinn_configs() {
        let ca = CertificateAuthority::generate("test CA").expect("generate CA");
        let material = ca.issue("node-1").expect("issue node cert");
        quinn_server_config(&material).expect("server config");
        quinn_client_config(&material).expect("client config");
    }

    #[test]
    fn ca_reloaded_from_pem_issues_certificates_under_the_same_name() {
        let ca = CertificateAuthority::generate("test CA").expect("generate CA");
        let reloaded =
            CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload CA");
        let material = reloaded.issue("node-2").expect("issue");
        assert_eq!(material.ca_cert_pem, ca.cert_pem());
        quinn_client_config(&material).expect("client config");
    }

    #[test]
    fn certs_dir_is_idempotent_and_keeps_existing_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("certs");
        write_certs_dir(&dir, &[1, 2]).expect("first run");
        let ca_before = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        let node_before = load_node_material(&dir, 1).expect("node 1");

        write_certs_dir(&dir, &[1, 2, 3]).expect("second run");
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem"),
            ca_before,
            "an existing CA must be reused"
        );
        let node_after = load_node_material(&dir, 1).expect("node 1");
        assert_eq!(
            node_after.cert_pem, node_before.cert_pem,
            "existing node cert kept"
        );
        let node3 = load_node_material(&dir, 3).expect("node 3 added");
        assert_eq!(node3.ca_cert_pem, ca_before);
    }

    /// The client certificate `ringkv certs --client-tls` makes must not be a raft credential:
    /// the store transport refuses it, and it chains only to `client-ca.pem`.
    #[test]
    fn client_tls_certs_are_kept_and_client_certs_cannot_pass_as_stores() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("certs");
        write_certs_dir(&dir, &[1]).expect("cluster certificates");
        write_client_tls_certs(&dir).expect("first run");
        let client = load_named_material(&dir, CLIENT_CERT_NAME).expect("client pair");
        write_client_tls_certs(&dir).expect("second run");
        let again = load_named_material(&dir, CLIENT_CERT_NAME).expect("client pair");
        assert_eq!(client.cert_pem, again.cert_pem, "existing files are kept");

        let verify = |ca_pem: &str| {
            let roots = parse_trust_roots(ca_pem, "CA").expect("roots");
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, ring_provider())
                .build()
                .expect("verifier");
            let chain = parse_cert_chain(&client.cert_pem, "client").expect("chain");
            verifier.verify_client_cert(&chain[0], &[], rustls::pki_types::UnixTime::now())
        };
        let cluster_ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        assert!(
            verify(&cluster_ca).is_err(),
            "a client certificate must not be accepted by the store transport's verifier"
        );
        let client_ca = std::fs::read_to_string(dir.join("client-ca.pem")).expect("client-ca");
        verify(&client_ca).expect("client-ca.pem verifies the client certificate");
        quinn_server_config(&load_named_material(&dir, CLIENT_PORT_CERT_NAME).expect("pair"))
            .expect("the client port's key matches its certificate");
    }

    #[test]
    fn concurrent_certs_dir_creation_agrees_on_one_ca() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("certs");
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || write_certs_dir(&dir, &[1, 2, 3]))
            })
            .collect();
        for writer in writers {
            writer.join().expect("thread").expect("write_certs_dir");
        }
        let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
        for node_id in 1..=3 {
            let material = load_node_material(&dir, node_id).expect("node material");
            assert_eq!(material.ca_cert_pem, ca);
            quinn_server_config(&material).expect("key and certificate must match");
        }
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .expect("read root")
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name() != "certs")
            .collect();
        assert!(leftovers.is_empty(), "staging directories left behind");
    }
}
