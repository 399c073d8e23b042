//! Serves an axum `Router` on a TCP listener, in plaintext or TLS, until shutdown.
//!
//! Every connection speaks HTTP/1.1 or HTTP/2, told apart by its first bytes (hyper-util's
//! auto builder): plaintext HTTP/2 is h2c with prior knowledge (what gRPC clients send), and
//! under TLS the port offers ALPN `h2` and `http/1.1`. With TLS, a connection that does not
//! complete a handshake within [`TLS_HANDSHAKE_TIMEOUT`] — a stuck client, or plaintext sent
//! to a TLS port — is closed, logged at debug and counted in
//! `ringkv_client_tls_handshake_failures_total{reason}`.
//!
//! Shutdown stops accepting at once, asks every open connection to finish its in-flight
//! requests (HTTP/2 GOAWAY, HTTP/1.1 closes after the current response), and cuts whatever is
//! still open after [`DRAIN_TIMEOUT`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to complete the TLS handshake after connecting.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest open connections are given to finish after shutdown starts. Below the 5 s
/// `Node::shutdown` waits for the server, so connections are cut by this module, not
/// abandoned with the task.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors): retrying at once would spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` completes, then drains open connections for at
/// most [`DRAIN_TIMEOUT`]. With `tls`, every connection must complete a TLS handshake under
/// that configuration (its client-certificate policy included) before a byte of HTTP is read.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_handshake_timeout(listener, app, tls, TLS_HANDSHAKE_TIMEOUT, shutdown).await
}

async fn serve_with_handshake_timeout(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let handshake = tls.map(|config| Handshake {
        acceptor: TlsAcceptor::from(config),
        timeout: handshake_timeout,
    });
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        stream,
                        peer,
                        handshake.clone(),
                        app.clone(),
                        graceful.watcher(),
                    ));
                }
                Err(err) if is_connection_error(&err) => {
                    tracing::debug!(%err, "client connection failed while being accepted");
                }
                Err(err) => {
                    tracing::warn!(%err, "accepting client connections failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let open = connections.len();
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            open,
            still_open = connections.len(),
            "client connections did not finish within the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
}

/// How TLS connections are accepted.
#[derive(Clone)]
struct Handshake {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

/// One accepted connection: the TLS handshake if any, then HTTP until the client or shutdown
/// ends it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    handshake: Option<Handshake>,
    app: axum::Router,
    watcher: Watcher,
) {
    // Requests and responses are small and latency-bound: don't let Nagle hold them back.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %err, "could not set TCP_NODELAY");
    }
    let Some(Handshake { acceptor, timeout }) = handshake else {
        return serve_http(stream, peer, app, watcher).await;
    };
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => serve_http(tls_stream, peer, app, watcher).await,
        Ok(Err(err)) => handshake_failed(peer, "error", &err),
        Err(_elapsed) => {
            handshake_failed(peer, "timeout", &format!("no handshake within {timeout:?}"))
        }
    }
}

fn handshake_failed(peer: SocketAddr, reason: &'static str, err: &dyn std::fmt::Display) {
    tracing::debug!(%peer, reason, %err, "client TLS handshake failed");
    metrics::counter!("ringkv_client_tls_handshake_failures_total", "reason" => reason)
        .increment(1);
}

async fn serve_http<S>(stream: S, peer: SocketAddr, app: axum::Router, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%peer, %err, "client connection ended with an error");
    }
}

/// Errors that concern only the connection being accepted; the listener itself is fine.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never sends a ClientHello is closed after the handshake timeout
    /// instead of holding its task forever.
    #[tokio::test]
    async fn silent_client_is_dropped_after_the_handshake_timeout() {
        const SHORT_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(200);
        let dir = tempfile::tempdir().expect("tempdir");
        crate::transport::tls::write_certs_dir(dir.path(), &[]).expect("CA");
        crate::transport::tls::write_client_tls_certs(dir.path()).expect("client TLS certs");
        let tls = crate::server::ClientTls::from_files(
            &dir.path().join("client-server.pem"),
            &dir.path().join("client-server.key"),
            None,
        )
        .expect("client TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_handshake_timeout(
            listener,
            axum::Router::new(),
            Some(tls.server_config()),
            SHORT_HANDSHAKE_TIMEOUT,
            async move {
                let _ = stopped.await;
            },
        ));

        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
        )
        .await
        .expect("the server must close a connection stuck before its handshake");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected EOF or reset, read {read:?}"
        );

        let _ = stop.send(());
        tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), server)
            .await
            .expect("serve returns within the drain timeout")
            .expect("serve task");
    }
}
