//! A UDP relay the harness puts on every directed node-to-node path, so a test can drop,
//! delay, duplicate or cut the packets of one link while QUIC passes through untouched.
//!
//! Node `i` is told that node `j` lives at the relay `i → j`'s front address. The relay learns
//! node `i`'s address from the first datagram, forwards datagrams to node `j` from a socket
//! of its own, and sends node `j`'s answers back to node `i`. The faults of a link apply to
//! both directions of that relay, i.e. to node `i`'s connection to `j` (its raft messages,
//! snapshots and forwarded requests to `j`, and `j`'s answers on that connection).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng as _;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Largest datagram relayed (QUIC stays well below; loopback allows 64 KiB).
const MAX_DATAGRAM: usize = 65_536;

/// What a link does to the datagrams passing it. The default passes everything at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Drop everything.
    pub cut: bool,
    /// Probability that a datagram is dropped.
    pub drop_rate: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate_rate: f64,
    /// Every datagram waits this long, plus up to `jitter` more (so datagrams reorder).
    pub delay: Duration,
    pub jitter: Duration,
}

/// One directed link's relay; stops when dropped.
pub struct Relay {
    front_addr: SocketAddr,
    faults: Arc<Mutex<LinkFaults>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Binds a relay in front of `target` on loopback. Must run inside a tokio runtime.
    pub fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let bind = |addr: &str| -> std::io::Result<Arc<UdpSocket>> {
            let socket = std::net::UdpSocket::bind(addr)?;
            socket.set_nonblocking(true)?;
            Ok(Arc::new(UdpSocket::from_std(socket)?))
        };
        let front = bind("127.0.0.1:0")?;
        let back = bind("127.0.0.1:0")?;
        let front_addr = front.local_addr()?;
        let faults = Arc::new(Mutex::new(LinkFaults::default()));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));

        let outbound = {
            let (front, back, faults, client) =
                (front.clone(), back.clone(), faults.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let Ok((len, from)) = front.recv_from(&mut buf).await else {
                        continue;
                    };
                    *lock(&client) = Some(from);
                    pass(&faults, &back, target, &buf[..len]);
                }
            })
        };
        let inbound = {
            let (front, back, faults, client) = (front, back, faults.clone(), client);
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let Ok((len, from)) = back.recv_from(&mut buf).await else {
                        continue;
                    };
                    let to = *lock(&client);
                    if let (true, Some(to)) = (from == target, to) {
                        pass(&faults, &front, to, &buf[..len]);
                    }
                }
            })
        };
        Ok(Relay {
            front_addr,
            faults,
            tasks: vec![outbound, inbound],
        })
    }

    /// The address the sending node is given for the target.
    pub fn addr(&self) -> SocketAddr {
        self.front_addr
    }

    pub fn set(&self, faults: LinkFaults) {
        *lock(&self.faults) = faults;
    }

    pub fn faults(&self) -> LinkFaults {
        lock(&self.faults).clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `datagram` from `socket` to `to` as the link's faults say.
fn pass(faults: &Mutex<LinkFaults>, socket: &Arc<UdpSocket>, to: SocketAddr, datagram: &[u8]) {
    let faults = lock(faults).clone();
    if faults.cut {
        return;
    }
    let mut rng = rand::rng();
    if faults.drop_rate > 0.0 && rng.random_bool(faults.drop_rate.min(1.0)) {
        return;
    }
    let copies = if faults.duplicate_rate > 0.0 && rng.random_bool(faults.duplicate_rate.min(1.0)) {
        2
    } else {
        1
    };
    if faults.delay.is_zero() && faults.jitter.is_zero() {
        for _ in 0..copies {
            // A full socket buffer drops the datagram, as a real network would.
            let _ = socket.try_send_to(datagram, to);
        }
        return;
    }
    let jitter_ns = faults.jitter.as_nanos() as u64;
    for _ in 0..copies {
        let wait = faults.delay
            + Duration::from_nanos(if jitter_ns == 0 {
                0
            } else {
                rng.random_range(0..jitter_ns)
            });
        let (socket, datagram) = (socket.clone(), datagram.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = socket.send_to(&datagram, to).await;
        });
    }
}
