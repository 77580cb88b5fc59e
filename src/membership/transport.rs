//! The gossip transport: chitchat's messages over UDP, sealed under the cluster key when there is one,
//! with traffic counted for status, metrics and benchmarks.
//!
//! The socket is ours (bound by the node, or handed to it: [`CountingTransport::socket`]). Without a
//! key each datagram is chitchat's encoding, byte for byte what chitchat's own socket sends; what is
//! not a chitchat message is dropped and counted. With a key each datagram is
//! `nonce | ChaCha20-Poly1305(chitchat encoding) | tag` ([`GossipSeal`]): a datagram under another
//! key (or none), tampered with, or oversized is dropped and counted, so a node without the key can
//! neither join nor read.
//!
//! chitchat 0.13 keeps its message encoding private (`ChitchatEnvelope::serialize` is `pub(crate)`);
//! the one codec it exposes is its own `UdpSocket`. So our socket keeps two of those on private
//! loopback ports ([`LoopbackCodec`]): to encode, chitchat's socket sends the message to our relay
//! socket, which reads the bytes; to decode, the relay sends the opened bytes to chitchat's socket,
//! which parses them. Decoding runs in its own task, so chitchat cancelling `recv` (it does, every
//! gossip round) never leaves the codec half-way.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::crypto::{GOSSIP_NONCE_BYTES, GossipSeal, SEAL_OVERHEAD};
use crate::logging::LogThrottle;

/// Largest UDP payload (IPv4), as chitchat bounds its own datagrams; larger input is dropped.
pub const MAX_DATAGRAM_BYTES: usize = 65_507;
/// Accepted datagrams waiting for chitchat; more are dropped, as a full socket buffer would.
const RECEIVE_QUEUE: usize = 256;
/// How long a loopback codec round trip may take before the codec is rebuilt.
const CODEC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the nonce of an accepted sealed datagram is remembered, so that a copy of it is dropped.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// At most this many nonces are remembered (about 3 MiB); past it the oldest are forgotten first, which
/// only shortens the window. A node receives a few dozen datagrams a second even in a large cluster.
pub const REPLAY_CACHE_CAPACITY: usize = 65_536;

/// Gossip traffic of this node since start.
#[derive(Debug, Default)]
pub struct GossipTraffic {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    datagrams_sent: AtomicU64,
    datagrams_received: AtomicU64,
    datagrams_rejected: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrafficSnapshot {
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// UDP payload bytes received (accepted datagrams only).
    pub bytes_received: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams accepted.
    pub datagrams_received: u64,
    /// Datagrams dropped: not chitchat, oversized, and with a cluster key also those under another
    /// key (or none), tampered with or replayed.
    pub datagrams_rejected: u64,
}

impl GossipTraffic {
    /// The counters now.
    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            datagrams_sent: self.datagrams_sent.load(Ordering::Relaxed),
            datagrams_received: self.datagrams_received.load(Ordering::Relaxed),
            datagrams_rejected: self.datagrams_rejected.load(Ordering::Relaxed),
        }
    }

    fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.datagrams_sent.fetch_add(1, Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.datagrams_received.fetch_add(1, Ordering::Relaxed);
    }
}

/// UDP transport that seals (with a key) and counts what passes.
pub struct CountingTransport {
    /// Where the counts go.
    pub traffic: Arc<GossipTraffic>,
    /// Seals every datagram; `None` sends chitchat's encoding as it is.
    pub seal: Option<GossipSeal>,
    /// The socket to gossip on, bound by the caller; the first `open` takes it. Without one, `open`
    /// binds the address chitchat asks for.
    pub socket: std::sync::Mutex<Option<std::net::UdpSocket>>,
    /// Owns the socket's receiving task.
    pub tasks: TaskTracker,
    /// Stops that task.
    pub shutdown: CancellationToken,
}

#[async_trait]
impl Transport for CountingTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let given = self
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let socket = match given {
            Some(socket) => {
                socket
                    .set_nonblocking(true)
                    .context("cannot make the gossip socket non-blocking")?;
                UdpSocket::from_std(socket).context("cannot use the gossip socket")?
            }
            None => UdpSocket::bind(listen_addr)
                .await
                .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?,
        };
        let socket = GossipSocket::open(
            socket,
            self.seal.clone(),
            self.traffic.clone(),
            &self.tasks,
            self.shutdown.clone(),
        )
        .await?;
        Ok(Box::new(socket))
    }
}

/// Refused datagrams are logged at most this often (with the number held back).
static REJECTED_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));
/// Messages too large to send sealed are logged at most this often.
static OVERSIZED_SEND_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

fn reject(traffic: &GossipTraffic, from: SocketAddr, len: usize, why: &str) {
    traffic.datagrams_rejected.fetch_add(1, Ordering::Relaxed);
    if let Some(held_back) = REJECTED_LOG.allow() {
        warn!(peer = %from, bytes = len, held_back, "dropped gossip datagram: {why}");
    }
}

/// The nonces of the sealed datagrams accepted within the last [`REPLAY_WINDOW`] (at most
/// [`REPLAY_CACHE_CAPACITY`]): a datagram carrying one of them again is a copy, not a new message.
///
/// Senders draw every nonce at random (96 bits) and the nonce is authenticated with the datagram, so
/// two authentic datagrams with one nonce are one datagram sent twice. Only authenticated datagrams
/// are remembered, so forged ones cannot crowd out the real. The wire format carries no authenticated
/// time, so a copy replayed after its nonce was forgotten is accepted again (once per window).
#[derive(Debug)]
pub struct ReplayCache {
    window: Duration,
    capacity: usize,
    seen: HashSet<[u8; GOSSIP_NONCE_BYTES]>,
    order: VecDeque<(tokio::time::Instant, [u8; GOSSIP_NONCE_BYTES])>,
}

impl ReplayCache {
    /// A cache remembering nonces for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> ReplayCache {
        ReplayCache {
            window,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records the nonce of an authenticated `datagram` seen at `now`; `false` when it was seen already.
    pub fn first_sight(&mut self, datagram: &[u8], now: tokio::time::Instant) -> bool {
        let Some(nonce) = datagram
            .get(..GOSSIP_NONCE_BYTES)
            .and_then(|nonce| <[u8; GOSSIP_NONCE_BYTES]>::try_from(nonce).ok())
        else {
            return false;
        };
        while let Some((at, old)) = self.order.front() {
            if now.duration_since(*at) < self.window && self.order.len() < self.capacity {
                break;
            }
            self.seen.remove(old);
            self.order.pop_front();
        }
        if !self.seen.insert(nonce) {
            return false;
        }
        self.order.push_back((now, nonce));
        true
    }
}

/// A gossip socket: chitchat's messages, sealed under the cluster key when there is one, counted.
struct GossipSocket {
    socket: Arc<UdpSocket>,
    seal: Option<GossipSeal>,
    encoder: LoopbackCodec,
    traffic: Arc<GossipTraffic>,
    encoded: Vec<u8>,
    sealed: Vec<u8>,
    received: mpsc::Receiver<RecvOutcome>,
}

impl GossipSocket {
    async fn open(
        socket: UdpSocket,
        seal: Option<GossipSeal>,
        traffic: Arc<GossipTraffic>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<GossipSocket> {
        let socket = Arc::new(socket);
        let encoder = LoopbackCodec::open().await?;
        let decoder = LoopbackCodec::open().await?;
        let (tx, received) = mpsc::channel(RECEIVE_QUEUE);
        tasks.spawn(receive_loop(
            socket.clone(),
            seal.clone(),
            decoder,
            traffic.clone(),
            tx,
            shutdown,
        ));
        Ok(GossipSocket {
            socket,
            seal,
            encoder,
            traffic,
            encoded: Vec::new(),
            sealed: Vec::new(),
            received,
        })
    }
}

#[async_trait]
impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("failed to get the gossip socket's address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if let Err(err) = self.encoder.encode(envelope, &mut self.encoded).await {
            // Out of step or timed out: start over with fresh loopback sockets.
            self.encoder = LoopbackCodec::open().await?;
            return Err(err.context("cannot encode a gossip message"));
        }
        let datagram = match &self.seal {
            None => &self.encoded,
            Some(seal) => {
                if self.encoded.len() + SEAL_OVERHEAD > MAX_DATAGRAM_BYTES {
                    // chitchat fills a datagram up to the UDP limit only when it has that much state to
                    // send (hundreds of members); sealed it would not fit, so it is not sent.
                    if let Some(held_back) = OVERSIZED_SEND_LOG.allow() {
                        warn!(
                            peer = %to,
                            bytes = self.encoded.len(),
                            held_back,
                            "gossip message too large to send sealed; dropped"
                        );
                    }
                    return Ok(SendOutcome { num_bytes_sent: 0 });
                }
                seal.seal(&self.encoded, &mut self.sealed)?;
                &self.sealed
            }
        };
        let sent = self
            .socket
            .send_to(datagram, to)
            .await
            .context("failed to send a gossip datagram")?;
        self.traffic.sent(sent);
        Ok(SendOutcome {
            num_bytes_sent: sent,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        // Cancel-safe: a message stays in the channel until taken.
        match self.received.recv().await {
            Some(outcome) => Ok(outcome),
            None => bail!("the gossip receiver stopped"),
        }
    }
}

/// Receives, opens (with a key) and decodes datagrams for a [`GossipSocket`] until shutdown or until the socket
/// is dropped.
async fn receive_loop(
    socket: Arc<UdpSocket>,
    seal: Option<GossipSeal>,
    mut decoder: LoopbackCodec,
    traffic: Arc<GossipTraffic>,
    tx: mpsc::Sender<RecvOutcome>,
    shutdown: CancellationToken,
) {
    // One byte more than the largest datagram accepted, so an oversized one is seen, not cut.
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
    let mut opened = Vec::new();
    let mut replays = ReplayCache::new(REPLAY_WINDOW, REPLAY_CACHE_CAPACITY);
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from_addr) = match received {
            Ok(received) => received,
            Err(err) if is_transient_io_error(&err) => {
                debug!(error = %err, "transient UDP receive error on the gossip socket");
                continue;
            }
            Err(err) => {
                warn!(error = %err, "fatal UDP receive error on the gossip socket; gossip stops");
                break;
            }
        };
        if len > MAX_DATAGRAM_BYTES {
            reject(&traffic, from_addr, len, "oversized");
            continue;
        }
        let payload = match &seal {
            None => &buf[..len],
            Some(seal) => {
                if let Err(err) = seal.open(&buf[..len], &mut opened) {
                    reject(&traffic, from_addr, len, &err.to_string());
                    continue;
                }
                if !replays.first_sight(&buf[..len], tokio::time::Instant::now()) {
                    reject(
                        &traffic,
                        from_addr,
                        len,
                        "a copy of a datagram already received (replayed)",
                    );
                    continue;
                }
                &opened[..]
            }
        };
        match decoder.decode(payload).await {
            Ok(Some(envelope)) => {
                traffic.received(len);
                let outcome = RecvOutcome {
                    from_addr,
                    envelope,
                    num_bytes_received: len,
                };
                if tx.try_send(outcome).is_err() {
                    debug!(peer = %from_addr, "gossip receive queue full; datagram dropped");
                }
            }
            Ok(None) => reject(
                &traffic,
                from_addr,
                len,
                if seal.is_some() {
                    "sealed, but not a chitchat message"
                } else {
                    "not a chitchat message"
                },
            ),
            Err(err) => {
                warn!(error = %format!("{err:#}"), "gossip decoder out of step; restarting it");
                match LoopbackCodec::open().await {
                    Ok(fresh) => decoder = fresh,
                    Err(err) => {
                        warn!(error = %format!("{err:#}"), "cannot restart the gossip decoder; gossip stops");
                        break;
                    }
                }
            }
        }
    }
}

fn is_transient_io_error(err: &io::Error) -> bool {
    // As chitchat's own socket: a peer that went away can fail a receive on some systems.
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// chitchat's magic number, little-endian, at the start of every message.
const CHITCHAT_MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
/// chitchat's message type code of `BadCluster`.
const BAD_CLUSTER_CODE: u8 = 3;
/// A `BadCluster` message (protocol version 0): the end marker the decoder sends after each payload.
const END_MARKER: [u8; 4] = [CHITCHAT_MAGIC[0], CHITCHAT_MAGIC[1], 0, BAD_CLUSTER_CODE];

/// chitchat's encoding through chitchat's own `UdpSocket` on a private loopback port.
///
/// The relay socket is connected to chitchat's, so it hears nothing else; what chitchat's socket
/// hears from anyone but the relay is ignored. Every exchange is in lock step: encode is one message
/// there and its bytes back; decode is the payload and an end marker there, and what chitchat made
/// of them back. A payload chitchat cannot parse is dropped inside its socket, so the end marker
/// arrives first: that is how a bad payload shows.
struct LoopbackCodec {
    chitchat: chitchat::transport::UdpSocket,
    relay: UdpSocket,
    relay_addr: SocketAddr,
    buf: Vec<u8>,
}

impl LoopbackCodec {
    async fn open() -> anyhow::Result<LoopbackCodec> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let chitchat = chitchat::transport::UdpSocket::open(loopback).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let relay = UdpSocket::bind(loopback)
            .await
            .context("cannot bind the gossip codec's loopback socket")?;
        relay
            .connect(chitchat_addr)
            .await
            .context("cannot connect the gossip codec's loopback socket")?;
        let relay_addr = relay.local_addr()?;
        Ok(LoopbackCodec {
            chitchat,
            relay,
            relay_addr,
            buf: vec![0u8; MAX_DATAGRAM_BYTES + 1],
        })
    }

    /// Replaces `out` with chitchat's encoding of `envelope`.
    async fn encode(
        &mut self,
        envelope: ChitchatEnvelope,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        // Anything left over from an exchange that was cut short would be taken for this answer.
        while self.relay.try_recv(&mut self.buf).is_ok() {}
        self.chitchat.send(self.relay_addr, envelope).await?;
        let len = tokio::time::timeout(CODEC_TIMEOUT, self.relay.recv(&mut self.buf))
            .await
            .context("gossip encoder timed out")??;
        out.clear();
        out.extend_from_slice(&self.buf[..len]);
        Ok(())
    }

    /// chitchat's reading of `payload`: `None` when it is not a valid message.
    async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        // `BadCluster` is the end marker, so one is never sent through; it has no body to parse.
        if payload.get(..2) == Some(&CHITCHAT_MAGIC[..])
            && payload.get(3) == Some(&BAD_CLUSTER_CODE)
        {
            let version = ProtocolVersion::from_code(payload[2]);
            return Ok(version
                .filter(|_| payload.len() == 4)
                .map(|version| ChitchatEnvelope {
                    version,
                    message: ChitchatMessage::BadCluster,
                }));
        }
        self.relay.send(payload).await?;
        self.relay.send(&END_MARKER).await?;
        let first = self.next_from_relay().await?;
        if first.message == ChitchatMessage::BadCluster {
            return Ok(None);
        }
        let marker = self.next_from_relay().await?;
        if marker.message != ChitchatMessage::BadCluster {
            bail!("expected the end marker, got another message");
        }
        Ok(Some(first))
    }

    async fn next_from_relay(&mut self) -> anyhow::Result<ChitchatEnvelope> {
        let relay_addr = self.relay_addr;
        let chitchat = &mut self.chitchat;
        tokio::time::timeout(CODEC_TIMEOUT, async move {
            loop {
                let outcome = chitchat.recv().await?;
                if outcome.from_addr == relay_addr {
                    return Ok::<_, anyhow::Error>(outcome.envelope);
                }
            }
        })
        .await
        .context("gossip decoder timed out")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ClusterKey;

    fn syn(cluster_id: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id: cluster_id.to_string(),
                digest: Default::default(),
            },
        }
    }

    async fn open(
        seal: Option<GossipSeal>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> (Box<dyn Socket>, Arc<GossipTraffic>) {
        let traffic = Arc::new(GossipTraffic::default());
        let transport = CountingTransport {
            traffic: traffic.clone(),
            seal,
            socket: std::sync::Mutex::new(None),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        };
        let socket = transport
            .open(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind");
        (socket, traffic)
    }

    async fn recv_within(socket: &mut Box<dyn Socket>, ms: u64) -> Option<RecvOutcome> {
        tokio::time::timeout(Duration::from_millis(ms), socket.recv())
            .await
            .ok()
            .and_then(Result::ok)
    }

    fn seal(byte: u8) -> GossipSeal {
        GossipSeal::new(&ClusterKey::from_bytes([byte; 32]))
    }

    #[tokio::test]
    async fn codec_round_trips_and_spots_garbage() {
        let mut codec = LoopbackCodec::open().await.expect("codec");
        let mut bytes = Vec::new();
        for envelope in [
            syn("demo"),
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::BadCluster,
            },
        ] {
            let expected = format!("{envelope:?}");
            codec.encode(envelope, &mut bytes).await.expect("encode");
            let decoded = codec.decode(&bytes).await.expect("decode");
            assert_eq!(format!("{decoded:?}"), format!("Some({expected})"));
        }
        for garbage in [&b""[..], b"junk", &END_MARKER[..3], &[0xd3, 0xb0, 0, 3, 9]] {
            assert_eq!(codec.decode(garbage).await.expect("in step"), None);
        }
        // Still in step after the garbage.
        codec.encode(syn("x"), &mut bytes).await.expect("encode");
        let decoded = codec.decode(&bytes).await.expect("decode");
        assert_eq!(decoded, Some(syn("x")));
    }

    #[tokio::test]
    async fn same_key_talks_other_key_and_plain_are_rejected() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (mut a, a_traffic) = open(Some(seal(1)), &tasks, &shutdown).await;
        let (mut b, b_traffic) = open(Some(seal(1)), &tasks, &shutdown).await;
        let (mut stranger, _) = open(Some(seal(2)), &tasks, &shutdown).await;
        let (mut plain, _) = open(None, &tasks, &shutdown).await;
        let b_addr = b.local_addr().expect("addr");

        a.send(b_addr, syn("demo")).await.expect("send");
        let got = recv_within(&mut b, 2_000).await.expect("b hears a");
        assert_eq!(got.envelope, syn("demo"));
        assert_eq!(got.from_addr, a.local_addr().expect("addr"));

        stranger.send(b_addr, syn("demo")).await.expect("send");
        plain.send(b_addr, syn("demo")).await.expect("send");
        assert!(recv_within(&mut b, 300).await.is_none());
        let counts = b_traffic.snapshot();
        assert_eq!(counts.datagrams_received, 1);
        assert_eq!(counts.datagrams_rejected, 2);

        // A node without the key cannot read sealed gossip either.
        let plain_addr = plain.local_addr().expect("addr");
        a.send(plain_addr, syn("demo")).await.expect("send");
        assert!(recv_within(&mut plain, 300).await.is_none());
        assert_eq!(a_traffic.snapshot().datagrams_sent, 2);

        // And b still hears a after all that.
        a.send(b_addr, syn("again")).await.expect("send");
        let got = recv_within(&mut b, 2_000).await.expect("b hears a again");
        assert_eq!(got.envelope, syn("again"));

        shutdown.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("receivers stop on shutdown");
    }

    #[tokio::test]
    async fn without_a_key_a_handed_in_socket_talks_chitchat_and_counts_garbage() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (mut a, _) = open(None, &tasks, &shutdown).await;
        // b gossips on a socket bound by its caller.
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b_addr = bound.local_addr().expect("addr");
        let b_traffic = Arc::new(GossipTraffic::default());
        let transport = CountingTransport {
            traffic: b_traffic.clone(),
            seal: None,
            socket: std::sync::Mutex::new(Some(bound)),
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        };
        let mut b = transport.open(b_addr).await.expect("open");
        assert_eq!(b.local_addr().expect("addr"), b_addr);

        a.send(b_addr, syn("demo")).await.expect("send");
        let got = recv_within(&mut b, 2_000).await.expect("b hears a");
        assert_eq!(got.envelope, syn("demo"));
        let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        raw.send_to(b"not gossip", b_addr).await.expect("send");
        assert!(recv_within(&mut b, 300).await.is_none());
        let counts = b_traffic.snapshot();
        assert_eq!(
            (counts.datagrams_received, counts.datagrams_rejected),
            (1, 1)
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_replayed_sealed_datagram_is_dropped_and_counted() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (mut a, _) = open(Some(seal(1)), &tasks, &shutdown).await;
        let (mut b, b_traffic) = open(Some(seal(1)), &tasks, &shutdown).await;
        let b_addr = b.local_addr().expect("addr");
        // Someone on the path records a's datagram to b...
        let sniffer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        a.send(sniffer.local_addr().expect("addr"), syn("demo"))
            .await
            .expect("send");
        let mut captured = vec![0u8; MAX_DATAGRAM_BYTES];
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(2), sniffer.recv_from(&mut captured))
                .await
                .expect("captured in time")
                .expect("captured");
        captured.truncate(len);
        // ...and delivers it, then replays it: the first copy is heard, the others dropped.
        for _ in 0..3 {
            sniffer.send_to(&captured, b_addr).await.expect("send");
        }
        let got = recv_within(&mut b, 2_000)
            .await
            .expect("b hears the first copy");
        assert_eq!(got.envelope, syn("demo"));
        assert!(recv_within(&mut b, 300).await.is_none());
        let counts = b_traffic.snapshot();
        assert_eq!(
            (counts.datagrams_received, counts.datagrams_rejected),
            (1, 2)
        );
        // a's next datagram (a fresh nonce) still gets through.
        a.send(b_addr, syn("next")).await.expect("send");
        let got = recv_within(&mut b, 2_000).await.expect("b hears a");
        assert_eq!(got.envelope, syn("next"));
        shutdown.cancel();
    }

    #[test]
    fn the_replay_cache_forgets_after_its_window_and_past_its_capacity() {
        let start = tokio::time::Instant::now();
        let datagram = |n: u8| [n; SEAL_OVERHEAD];
        let mut cache = ReplayCache::new(Duration::from_secs(60), 3);
        assert!(cache.first_sight(&datagram(1), start));
        assert!(!cache.first_sight(&datagram(1), start + Duration::from_secs(59)));
        // Once the window is over the nonce is forgotten (the honest limit of a cache).
        assert!(cache.first_sight(&datagram(1), start + Duration::from_secs(61)));
        let later = start + Duration::from_secs(70);
        for n in 2..=4 {
            assert!(cache.first_sight(&datagram(n), later));
        }
        // Capacity 3: 1 (the oldest) made room for 4; the others are still remembered.
        assert_eq!(cache.seen.len(), 3);
        assert!(cache.first_sight(&datagram(1), later));
        assert!(!cache.first_sight(&datagram(4), later));
        assert!(
            !cache.first_sight(&[0u8; 3], later),
            "too short to carry a nonce"
        );
    }

    #[tokio::test]
    async fn oversized_and_short_datagrams_are_rejected() {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (mut b, b_traffic) = open(Some(seal(1)), &tasks, &shutdown).await;
        let b_addr = b.local_addr().expect("addr");
        let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        raw.send_to(&vec![7u8; MAX_DATAGRAM_BYTES], b_addr)
            .await
            .expect("send");
        raw.send_to(&[1, 2, 3], b_addr).await.expect("send");
        assert!(recv_within(&mut b, 300).await.is_none());
        assert_eq!(b_traffic.snapshot().datagrams_rejected, 2);
        shutdown.cancel();
    }
}
