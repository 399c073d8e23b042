//! TLS on the nodes' client port, against real `ringkv node` processes started with
//! `--client-tls-cert`/`--client-tls-key` (and `--client-tls-client-ca`), certificates from
//! `ringkv certs --client-tls`.
//!
//! With a client CA, only clients presenting a certificate it signed get in: plaintext,
//! certificate-less, foreign-CA and store (cluster-CA) certificates are refused at the
//! handshake, and each refusal is counted. HTTP/2 is negotiated over ALPN (gRPC will use it);
//! a plaintext port speaks HTTP/1.1 and h2c with prior knowledge.
//!
//! gRPC shares the port: the routing client reaches it over mutual TLS with a client-CA
//! certificate, and plaintext, certificate-less and foreign-CA gRPC clients are refused.

mod common;

use common::{
    client_tls_config, http_client, read_pem, run_serially, ClientPort, Cluster, ClusterOptions,
};
use std::time::Duration;

use reqwest::{Method, Version};
use ringkv::client::{Client, ClientConfig, ClientIdentity, ClientTls};
use ringkv::transport::tls::{load_node_material, CertificateAuthority, CertificateRole};

const HANDSHAKE_FAILURES: &str = "ringkv_client_tls_handshake_failures_total";

async fn start(client_port: ClientPort) -> Cluster {
    let cluster = Cluster::start(
        1,
        ClusterOptions {
            client_port,
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_ready().await;
    cluster
}

/// A PUT over plaintext HTTP to node 1's port must get no HTTP answer at all.
async fn assert_plaintext_refused(cluster: &Cluster) {
    let url = format!("http://{}/kv/plaintext-key", cluster.http_addr(1));
    let answer = http_client(None).put(&url).body("x").send().await;
    assert!(
        answer.is_err(),
        "a plaintext PUT to a TLS client port must fail before any HTTP answer, got {answer:?}"
    );
}

/// A PUT by a TLS client with `identity` (certificate PEM, key PEM; `None` = no certificate)
/// that trusts the cluster CA must fail before any HTTP answer.
async fn assert_refused(cluster: &Cluster, identity: Option<(&str, &str)>, who: &str) {
    let ca = read_pem(&cluster.certs_dir().join("ca.pem"));
    let tls = client_tls_config(&ca, identity, &[b"http/1.1"]);
    let client = cluster.client_using(1, http_client(Some(tls)));
    match client.put("refused-key", b"must not land").await {
        Err(error) => assert_eq!(
            error.status(),
            None,
            "{who} must be refused at the handshake, not answered: {error}"
        ),
        Ok(()) => panic!("{who} was allowed to write through the client port"),
    }
}

/// The value of `name{reason="REASON"}` in node 1's `/metrics`, 0 if absent.
async fn counter(cluster: &Cluster, name: &str, reason: &str) -> f64 {
    let reply = cluster
        .request(1, Method::GET, "/metrics", None)
        .await
        .expect("GET /metrics over TLS");
    let prefix = format!("{name}{{reason=\"{reason}\"}} ");
    reply
        .text()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{prefix}{value}: not a number: {e}"))
        })
        .unwrap_or(0.0)
}

#[test]
fn client_certificates_required_admits_only_certificates_of_the_client_ca() {
    run_serially(async {
        let cluster = start(ClientPort::MutualTls).await;

        assert_plaintext_refused(&cluster).await;
        assert_refused(&cluster, None, "a client without a certificate").await;
        let foreign_ca = CertificateAuthority::generate("foreign CA").expect("foreign CA");
        let intruder = foreign_ca
            .issue_as("intruder", CertificateRole::Client)
            .expect("foreign client certificate");
        assert_refused(
            &cluster,
            Some((&intruder.cert_pem, &intruder.key_pem)),
            "a client with a certificate from a foreign CA",
        )
        .await;
        let store = load_node_material(&cluster.certs_dir(), 1).expect("node-1 certificate");
        assert_refused(
            &cluster,
            Some((&store.cert_pem, &store.key_pem)),
            "a client with a store certificate (cluster CA, not the client CA)",
        )
        .await;

        // The harness's client trusts ca.pem and presents client.pem from the client CA.
        cluster.must_put(1, "tls-key", b"over TLS").await;
        assert_eq!(
            cluster.must_get(1, "tls-key").await,
            Some(b"over TLS".to_vec()),
            "a PUT over mutual TLS must read back over mutual TLS"
        );
        assert_eq!(
            cluster.must_get(1, "refused-key").await,
            None,
            "no refused client's write may have landed"
        );
        let failures = counter(&cluster, HANDSHAKE_FAILURES, "error").await;
        assert!(
            failures >= 4.0,
            "plaintext, no-certificate, foreign and store-certificate handshakes must each be \
             counted as failed; {HANDSHAKE_FAILURES}{{reason=\"error\"}} is {failures}"
        );
    });
}

#[test]
fn tls_port_negotiates_http2_over_alpn() {
    run_serially(async {
        let cluster = start(ClientPort::MutualTls).await;
        cluster.must_put(1, "h2-key", b"over h2").await;

        let certs = cluster.certs_dir();
        let tls = client_tls_config(
            &read_pem(&certs.join("ca.pem")),
            Some((
                &read_pem(&certs.join("client.pem")),
                &read_pem(&certs.join("client.key")),
            )),
            &[b"h2"],
        );
        let url = format!("https://{}/kv/h2-key", cluster.http_addr(1));
        let response = http_client(Some(tls))
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} over TLS with ALPN h2: {e:#}"));
        assert_eq!(
            response.version(),
            Version::HTTP_2,
            "the TLS client port must agree to h2 when the client offers only h2 (gRPC does)"
        );
        let body = response.bytes().await.expect("response body");
        assert_eq!(&body[..], b"over h2", "GET over HTTP/2 reads the value");
    });
}

#[test]
fn tls_without_client_ca_serves_clients_without_certificates() {
    run_serially(async {
        let cluster = start(ClientPort::Tls).await;
        assert_plaintext_refused(&cluster).await;

        let ca = read_pem(&cluster.certs_dir().join("ca.pem"));
        let anonymous = cluster.client_using(
            1,
            http_client(Some(client_tls_config(&ca, None, &[b"http/1.1"]))),
        );
        anonymous.must_put("anonymous-key", b"no client cert").await;
        assert_eq!(
            anonymous.must_get("anonymous-key").await,
            Some(b"no client cert".to_vec()),
            "without --client-tls-client-ca a client needs no certificate"
        );
    });
}

#[test]
fn plaintext_port_speaks_http1_and_h2c_with_prior_knowledge() {
    run_serially(async {
        let cluster = start(ClientPort::Plaintext).await;
        cluster.must_put(1, "h2c-key", b"over h2c").await;

        let url = format!("http://{}/kv/h2c-key", cluster.http_addr(1));
        let h2c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("h2c client");
        let response = h2c
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} with h2c prior knowledge: {e:#}"));
        assert_eq!(response.version(), Version::HTTP_2, "h2c prior knowledge");
        let body = response.bytes().await.expect("response body");
        assert_eq!(&body[..], b"over h2c");

        let response = http_client(None)
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} over HTTP/1.1: {e:#}"));
        assert_eq!(response.version(), Version::HTTP_11);
    });
}

/// A routing client (`ringkv::client`, gRPC) for the cluster's placement with `tls` towards
/// the nodes, and a short deadline (refusals must not take long to show).
async fn routing_client(cluster: &Cluster, tls: Option<ClientTls>) -> Client {
    let mut config = ClientConfig::new([cluster.placement_addr().to_string()]);
    config.tls = tls;
    config.timeout = Duration::from_secs(5);
    Client::connect(config).await.expect("placement answers")
}

fn client_tls(cluster: &Cluster, identity: Option<(String, String)>) -> ClientTls {
    ClientTls {
        ca_pem: read_pem(&cluster.certs_dir().join("ca.pem")).into_bytes(),
        identity: identity.map(|(cert, key)| ClientIdentity {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
        }),
        domain: "localhost".to_owned(),
    }
}

#[test]
fn grpc_over_mutual_tls_admits_only_client_ca_certificates() {
    run_serially(async {
        let cluster = Cluster::start(
            1,
            ClusterOptions {
                client_port: ClientPort::MutualTls,
                placement: true,
                ..ClusterOptions::default()
            },
        )
        .await;
        cluster.wait_ready().await;
        let certs = cluster.certs_dir();
        let proper = client_tls(
            &cluster,
            Some((
                read_pem(&certs.join("client.pem")),
                read_pem(&certs.join("client.key")),
            )),
        );
        let client = routing_client(&cluster, Some(proper)).await;
        client
            .put("grpc-tls", "over gRPC + mTLS")
            .await
            .expect("put over mTLS");
        client
            .batch_put(&[("grpc-a", "1"), ("grpc-b", "2")], None)
            .await
            .expect("batch put over mTLS");
        assert_eq!(
            client.get("grpc-tls").await.expect("get over mTLS"),
            Some(b"over gRPC + mTLS".to_vec())
        );
        assert_eq!(client.scan_all(b"grpc-").await.expect("scan").len(), 3);

        let foreign_ca = CertificateAuthority::generate("foreign CA").expect("foreign CA");
        let intruder = foreign_ca
            .issue_as("intruder", CertificateRole::Client)
            .expect("foreign client certificate");
        let refused = [
            ("plaintext", None),
            (
                "TLS without a certificate",
                Some(client_tls(&cluster, None)),
            ),
            (
                "a foreign CA's certificate",
                Some(client_tls(
                    &cluster,
                    Some((intruder.cert_pem, intruder.key_pem)),
                )),
            ),
        ];
        for (who, tls) in refused {
            let client = routing_client(&cluster, tls).await;
            let put = client.put("grpc-refused", "must not land").await;
            assert!(
                put.is_err(),
                "{who}: a gRPC put must be refused, got {put:?}"
            );
            let get = client.get("grpc-tls").await;
            assert!(
                get.is_err(),
                "{who}: a gRPC get must be refused, got {get:?}"
            );
        }
        assert_eq!(
            cluster.must_get(1, "grpc-refused").await,
            None,
            "no refused client's write may have landed"
        );
    });
}
