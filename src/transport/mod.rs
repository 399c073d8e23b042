//! Store-to-store transport: raft messages, snapshots and forwarded client requests over QUIC
//! with mutual TLS.
//!
//! One quinn endpoint per store is both server and client. Outgoing traffic to each remote store
//! goes over one connection that this store dials (the remote dials its own connection back):
//! - raft messages are queued per destination store (bounded) and written by one sender task as
//!   [`RaftMessageBatch`](crate::proto::raft_serverpb::RaftMessageBatch) frames on one
//!   long-lived unidirectional stream — many regions per frame (`sender.rs`);
//! - snapshots travel on their own bidirectional stream, file data in chunks, acknowledged by
//!   the receiver only after the file is verified and durable (`snapshot.rs`);
//! - forwarded client requests use one bidirectional stream per request (`receiver.rs` serves
//!   them, [`Transport::forward`] sends them).
//!
//! Nothing here blocks raft: a full queue or an unreachable store drops the message and tells
//! raft through [`RaftInbox::report_unreachable`]; raft retransmits. The transport sits above
//! `proto` and below the server; it knows nothing about regions beyond the ids it reports.
//!
//! Every stream opened by a store starts with one `StreamKind` byte so the receiver can
//! dispatch it without guessing from contents.

pub mod frame;
mod receiver;
mod sender;
mod snapshot;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::proto::raft_serverpb::{ForwardRequest, ForwardResponse, RaftMessage};

/// How long a store has to complete a QUIC + TLS handshake before we call it unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Outgoing snapshots streamed at once; more wait their turn (raft keeps at most one pending
/// snapshot per follower, so the waiting set is bounded by the number of peers).
const MAX_CONCURRENT_OUTGOING_SNAPSHOTS: usize = 4;
/// Incoming snapshots written at once; further senders wait under QUIC flow control.
const MAX_CONCURRENT_INCOMING_SNAPSHOTS: usize = 4;
/// How long `shutdown` lets the endpoint tell peers it is closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The first byte of every stream: what the stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum StreamKind {
    /// Unidirectional: a sequence of `RaftMessageBatch` frames.
    RaftBatches = 1,
    /// Bidirectional: a `RaftMessage` frame, the raw file bytes, then a 1-byte ack back.
    Snapshot = 2,
    /// Bidirectional: one `ForwardRequest` frame, one `ForwardResponse` frame back.
    Forward = 3,
}

impl StreamKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::RaftBatches),
            2 => Some(Self::Snapshot),
            3 => Some(Self::Forward),
            _ => None,
        }
    }
}

/// Everything the transport of one store needs.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub store_id: u64,
    pub listen_addr: SocketAddr,
    /// Address of every store, this one included.
    pub store_addrs: HashMap<u64, SocketAddr>,
    pub tls: tls::TlsMaterial,
    /// Snapshot files live here: the sender reads `snap_dir/<file_name>`, the receiver writes
    /// the same name under its own `snap_dir`.
    pub snap_dir: PathBuf,
    /// Raft messages queued per remote store before `send` starts dropping (e.g. 8192).
    pub queue_capacity: usize,
}

/// Implemented by the raftstore's router. Called from tokio tasks, and `report_unreachable` also
/// from inside [`Transport::send`] on the caller's thread; must not block.
pub trait RaftInbox: Send + Sync + 'static {
    /// An incoming raft message for a local peer.
    fn deliver(&self, msg: RaftMessage);
    /// A message to `to_peer_id` was dropped; raft should probe that peer again.
    fn report_unreachable(&self, region_id: u64, to_peer_id: u64);
    /// An outgoing snapshot finished: `ok` only once the receiver has the file durably.
    fn report_snapshot(&self, region_id: u64, to_peer_id: u64, ok: bool);
}

/// Implemented by the server: executes a client request forwarded by another store.
pub trait ForwardHandler: Send + Sync + 'static {
    fn handle(&self, req: ForwardRequest) -> Pin<Box<dyn Future<Output = ForwardResponse> + Send>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
    #[error("Transport::start must run inside a tokio runtime")]
    NoRuntime,
    #[error("cannot bind the QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("store {0} is not in the address book")]
    UnknownStore(u64),
    #[error("cannot start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream read failed: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    #[error("stream already closed: {0}")]
    StreamClosed(#[from] quinn::ClosedStream),
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error("peer finished the stream without {0}")]
    MissingFrame(&'static str),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("snapshot {file_name:?}: {reason}")]
    Snapshot { file_name: String, reason: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the transport is shut down")]
    Shutdown,
    /// The request may have reached the other store (and been executed there), but no answer
    /// came back: for a write, the outcome is unknown.
    #[error("sent, but no answer: {0}")]
    Unanswered(Box<TransportError>),
}

impl TransportError {
    /// True when a forwarded request may have been executed despite this error.
    pub fn maybe_delivered(&self) -> bool {
        matches!(self, TransportError::Unanswered(_))
    }
}

/// The store's transport. Cheap to clone; all clones share one endpoint and one set of queues.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

/// State shared by the public handle and every task.
struct Shared {
    store_id: u64,
    /// Where each store listens; grows and changes as placement reports stores.
    store_addrs: parking_lot::RwLock<HashMap<u64, SocketAddr>>,
    snap_dir: PathBuf,
    queue_capacity: usize,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    /// Lets `send` spawn tasks from threads outside the runtime (the raftstore pollers).
    runtime: tokio::runtime::Handle,
    inbox: Arc<dyn RaftInbox>,
    forward_handler: Arc<dyn ForwardHandler>,
    queues: parking_lot::Mutex<Queues>,
    /// The one outgoing connection per remote store, shared by batches, snapshots and forwards.
    /// The async mutex per store makes concurrent users wait for one handshake, not start many.
    connections:
        parking_lot::Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    outgoing_snapshot_slots: Arc<Semaphore>,
    incoming_snapshot_slots: Arc<Semaphore>,
    /// Snapshots being streamed out: (region, to peer) → (bytes sent, file size).
    snapshot_progress: parking_lot::Mutex<HashMap<(u64, u64), (u64, u64)>>,
}

#[derive(Default)]
struct Queues {
    by_store: HashMap<u64, mpsc::Sender<RaftMessage>>,
    /// Unknown destinations already warned about, so a misrouted region logs once, not per message.
    warned_unknown: HashSet<u64>,
    closed: bool,
}

/// What `try_enqueue` did with a message. Dropped messages are reported unreachable by the
/// caller, after the queue lock is released.
enum Enqueued {
    Queued,
    /// The queue is full, the store unknown, or the transport shut down.
    Dropped(RaftMessage),
}

impl Transport {
    /// Binds the QUIC endpoint and spawns the accept loop on the current tokio runtime.
    pub async fn start(
        cfg: TransportConfig,
        inbox: Arc<dyn RaftInbox>,
        forward: Arc<dyn ForwardHandler>,
    ) -> Result<Transport, TransportError> {
        if cfg.queue_capacity == 0 {
            return Err(TransportError::InvalidConfig(
                "queue_capacity must be at least 1".into(),
            ));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let server_config = tls::quinn_server_config(&cfg.tls)?;
        let client_config = tls::quinn_client_config(&cfg.tls)?;
        let bind_error = |source| TransportError::Bind {
            addr: cfg.listen_addr,
            source,
        };
        let mut endpoint =
            quinn::Endpoint::server(server_config, cfg.listen_addr).map_err(bind_error)?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr().map_err(bind_error)?;

        let shared = Arc::new(Shared {
            store_id: cfg.store_id,
            store_addrs: parking_lot::RwLock::new(cfg.store_addrs),
            snap_dir: cfg.snap_dir,
            queue_capacity: cfg.queue_capacity,
            local_addr,
            endpoint,
            runtime,
            inbox,
            forward_handler: forward,
            queues: parking_lot::Mutex::new(Queues::default()),
            connections: parking_lot::Mutex::new(HashMap::new()),
            outgoing_snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_OUTGOING_SNAPSHOTS)),
            incoming_snapshot_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_INCOMING_SNAPSHOTS)),
            snapshot_progress: parking_lot::Mutex::new(HashMap::new()),
        });
        shared
            .runtime
            .spawn(receiver::accept_loop(Arc::clone(&shared)));
        tracing::info!(store_id = shared.store_id, %local_addr, "transport listening");
        Ok(Transport { shared })
    }

    /// Queues `msg` for `msg.to_peer.store_id` without blocking; callable from any thread.
    ///
    /// A full queue, an unknown store or a shut-down transport drops the message and calls
    /// `report_unreachable` (raft retransmits). Snapshot messages bypass the queue and stream on
    /// their own; their outcome arrives through `report_snapshot`.
    pub fn send(&self, msg: RaftMessage) {
        let store_id = msg.to_peer.as_ref().map_or(0, |peer| peer.store_id);
        if snapshot::is_snapshot(&msg) {
            let shared = Arc::clone(&self.shared);
            self.shared
                .runtime
                .spawn(snapshot::send_snapshot(shared, store_id, msg));
            return;
        }
        if let Enqueued::Dropped(msg) = self.try_enqueue(store_id, msg) {
            self.shared.report_unreachable(&msg);
        }
    }

    fn try_enqueue(&self, store_id: u64, msg: RaftMessage) -> Enqueued {
        let mut queues = self.shared.queues.lock();
        if queues.closed {
            return Enqueued::Dropped(msg);
        }
        let Some(queue) = queues.by_store.get(&store_id) else {
            return self.start_queue(&mut queues, store_id, msg);
        };
        match queue.try_send(msg) {
            Ok(()) => Enqueued::Queued,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                // Per message, so trace only: a full queue shows up as raft probing the peer.
                tracing::trace!(
                    store_id,
                    region_id = msg.region_id,
                    "send queue full; dropped"
                );
                Enqueued::Dropped(msg)
            }
            // The sender task is gone (it only ends on shutdown); start a fresh one.
            Err(mpsc::error::TrySendError::Closed(msg)) => {
                queues.by_store.remove(&store_id);
                self.start_queue(&mut queues, store_id, msg)
            }
        }
    }

    /// Creates the queue and sender task of a store on its first message.
    fn start_queue(&self, queues: &mut Queues, store_id: u64, msg: RaftMessage) -> Enqueued {
        if !self.shared.store_addrs.read().contains_key(&store_id) {
            if queues.warned_unknown.insert(store_id) {
                tracing::warn!(
                    store_id,
                    region_id = msg.region_id,
                    "raft message for a store with no known address; dropping"
                );
            }
            return Enqueued::Dropped(msg);
        }
        let (queue, receiver) = mpsc::channel(self.shared.queue_capacity);
        // Cannot fail: the channel is new, has capacity >= 1, and its receiver is alive.
        if let Err(error) = queue.try_send(msg) {
            return Enqueued::Dropped(error.into_inner());
        }
        queues.by_store.insert(store_id, queue);
        let shared = Arc::clone(&self.shared);
        self.shared
            .runtime
            .spawn(sender::run(shared, store_id, receiver));
        Enqueued::Queued
    }

    /// Sends a client request to another store's [`ForwardHandler`] and waits for its answer,
    /// at most `timeout` in total (connecting included).
    pub async fn forward(
        &self,
        store_id: u64,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, TransportError> {
        // Set once any byte of the request may have left: from then on a failure does not
        // prove the request was not executed.
        let mut sent = false;
        let exchange = async {
            let connection = self.shared.connection_to(store_id).await?;
            let (mut send, mut recv) = connection.open_bi().await?;
            sent = true;
            send.write_all(&[StreamKind::Forward as u8]).await?;
            frame::write_frame(&mut send, &req).await?;
            send.finish()?;
            frame::read_frame::<ForwardResponse, _>(&mut recv)
                .await?
                .ok_or(TransportError::MissingFrame("a ForwardResponse"))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(timeout)),
        };
        result.map_err(|error| {
            if sent {
                TransportError::Unanswered(Box::new(error))
            } else {
                error
            }
        })
    }

    /// Learns (or updates) where `store_id` listens. A changed address drops the cached
    /// connection, so the next use dials the new one.
    pub fn set_store_addr(&self, store_id: u64, addr: SocketAddr) {
        let previous = self.shared.store_addrs.write().insert(store_id, addr);
        if previous == Some(addr) {
            return;
        }
        tracing::info!(store_id, %addr, "store address learned");
        self.shared.queues.lock().warned_unknown.remove(&store_id);
        if previous.is_some() {
            self.shared.connections.lock().remove(&store_id);
        }
    }

    /// The snapshots of `region_id` being streamed right now: (to peer, bytes sent, total).
    pub fn snapshot_progress(&self, region_id: u64) -> Vec<(u64, u64, u64)> {
        self.shared
            .snapshot_progress
            .lock()
            .iter()
            .filter(|((region, _), _)| *region == region_id)
            .map(|((_, peer), (sent, total))| (*peer, *sent, *total))
            .collect()
    }

    /// True when the transport knows where `store_id` listens.
    pub fn knows_store(&self, store_id: u64) -> bool {
        self.shared.store_addrs.read().contains_key(&store_id)
    }

    /// The address the endpoint is bound to (resolves port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Closes the endpoint and stops all tasks: sender tasks end when their queues close,
    /// everything else when its connection or stream fails.
    pub async fn shutdown(&self) {
        let queues = {
            let mut queues = self.shared.queues.lock();
            queues.closed = true;
            std::mem::take(&mut queues.by_store)
        };
        drop(queues);
        self.shared.outgoing_snapshot_slots.close();
        self.shared.incoming_snapshot_slots.close();
        self.shared
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutdown");
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!(
                store_id = self.shared.store_id,
                "endpoint not idle after grace period"
            );
        }
        tracing::info!(store_id = self.shared.store_id, "transport shut down");
    }
}

impl Shared {
    /// The live outgoing connection to `store_id`, dialing it if there is none.
    async fn connection_to(&self, store_id: u64) -> Result<quinn::Connection, TransportError> {
        let addr = *self
            .store_addrs
            .read()
            .get(&store_id)
            .ok_or(TransportError::UnknownStore(store_id))?;
        let slot = Arc::clone(self.connections.lock().entry(store_id).or_default());
        let mut cached = slot.lock().await;
        if let Some(connection) = cached.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connecting = self.endpoint.connect(addr, tls::SERVER_NAME)?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| TransportError::Timeout(CONNECT_TIMEOUT))??;
        *cached = Some(connection.clone());
        Ok(connection)
    }

    fn report_unreachable(&self, msg: &RaftMessage) {
        metrics::counter!("ringkv_transport_messages_dropped_total").increment(1);
        let to_peer_id = msg.to_peer.as_ref().map_or(0, |peer| peer.id);
        self.inbox.report_unreachable(msg.region_id, to_peer_id);
    }
}

#[cfg(test)]
mod tests;
