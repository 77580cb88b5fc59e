//! Hop channels: proxied requests to a member over its peer port, many at a time on one connection.
//!
//! Forwarding a request over HTTP/1.1 costs each side a parse, a serialization and a few system
//! calls per request, and every request waits for a connection of its own. A hop channel is one
//! peer connection per member (the peer port's handshake, so a cluster key authenticates and seals
//! it) on which requests and responses travel as postcard frames ([`proto::hop`]), tagged with a
//! stream number. A writer task sends every frame queued since its last write with one system call,
//! and a reader reads many with one: under load, one call carries the work of many requests.
//!
//! Only requests already held in memory take this path (bodiless ones and those kept for a retry);
//! streaming request bodies go over HTTP. Response bodies stream back in chunks, each stream with its
//! own window ([`proto::hop::STREAM_WINDOW_BYTES`]) so a slow client cannot make the forwarding node
//! buffer a large body. A member that does not speak hop channels (an older build) is used over
//! HTTP for [`HTTP_FALLBACK`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use proto::hop::{HopDown, HopHeader, HopRequest, HopUp, MAX_CHUNK_BYTES, STREAM_WINDOW_BYTES};
use proto::raft::FRAME_HEADER_BYTES;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::crypto::{FrameCipher, TAG_BYTES};
use crate::peer::server::HopHandler;
use crate::peer::{PEER_TRAFFIC, PeerClient, PeerError, PeerStream};

/// Largest hop frame body: a request held for retry (64 KiB) or a body chunk, plus headers.
const MAX_HOP_FRAME_BYTES: usize = 1024 * 1024;
/// Requests served at once on one hop channel; more are refused (the sender retries elsewhere). A
/// node accepts at most `<http max-connections>` client connections, so a member forwards far fewer.
const MAX_STREAMS_PER_CHANNEL: usize = 16_384;
/// Most credit a stream's window holds, whatever the peer sends.
const MAX_WINDOW_BYTES: usize = 16 * STREAM_WINDOW_BYTES as usize;
/// Malformed hop requests (anyone can open a hop channel without a cluster key) are logged at most
/// this often.
static MALFORMED_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(std::time::Duration::from_secs(10));
/// Read buffer of a hop connection: one read takes in many frames.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A writer stops gathering frames at this many bytes and writes them.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A member that refused a hop channel (it does not know them) is reached over HTTP this long
/// before it is asked again.
pub const HTTP_FALLBACK: Duration = Duration::from_secs(60);
/// Credit for a response body is returned in steps of at least this many bytes.
const CREDIT_STEP_BYTES: u32 = STREAM_WINDOW_BYTES / 4;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its map consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- framing

/// Reads hop frames from a buffered socket, opening them when the connection is sealed.
struct FrameReader {
    read: BufReader<OwnedReadHalf>,
    cipher: Option<FrameCipher>,
    addr: SocketAddr,
    body: Vec<u8>,
}

impl FrameReader {
    /// The next message, or `None` when the peer closed the connection between frames.
    async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, PeerError> {
        let addr = self.addr;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(PeerError::Io { addr, source }),
        }
        let len = u32::from_be_bytes(header) as usize;
        let limit = MAX_HOP_FRAME_BYTES + if self.cipher.is_some() { TAG_BYTES } else { 0 };
        if len > limit {
            return Err(PeerError::Protocol {
                addr,
                reason: format!("hop frame of {len} bytes exceeds {limit} bytes"),
            });
        }
        // Bounded by the limit just checked, so allocating the announced length is safe.
        self.body.clear();
        self.body.resize(len, 0);
        self.read
            .read_exact(&mut self.body)
            .await
            .map_err(|source| PeerError::Io { addr, source })?;
        PEER_TRAFFIC.record_received(FRAME_HEADER_BYTES + len, 1);
        if let Some(cipher) = &mut self.cipher {
            cipher
                .open(&header, &mut self.body)
                .map_err(|err| PeerError::Protocol {
                    addr,
                    reason: err.to_string(),
                })?;
        }
        proto::raft::decode_frame_body(&self.body)
            .map(Some)
            .map_err(|err| PeerError::Protocol {
                addr,
                reason: err.to_string(),
            })
    }
}

/// Gathers hop frames in a buffer (sealing each when the connection is keyed) and writes them at once.
struct FrameWriter {
    write: OwnedWriteHalf,
    cipher: Option<FrameCipher>,
    addr: SocketAddr,
    buf: Vec<u8>,
    frames: u64,
}

impl FrameWriter {
    fn push<T: Serialize>(&mut self, message: &T) -> Result<(), PeerError> {
        let addr = self.addr;
        let start = self.buf.len();
        let protocol = |reason: String| PeerError::Protocol { addr, reason };
        self.buf = proto::raft::encode_frame_into(message, std::mem::take(&mut self.buf))
            .map_err(|err| protocol(err.to_string()))?;
        if let Some(cipher) = &mut self.cipher {
            let sealed_len = self.buf.len() - start - FRAME_HEADER_BYTES + TAG_BYTES;
            let header = u32::try_from(sealed_len)
                .map_err(|_| protocol(format!("frame of {sealed_len} bytes is too large")))?
                .to_be_bytes();
            self.buf[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header);
            cipher
                .seal(&header, &mut self.buf, start + FRAME_HEADER_BYTES)
                .map_err(|err| protocol(err.to_string()))?;
        }
        self.frames += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PeerError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write
            .write_all(&self.buf)
            .await
            .map_err(|source| PeerError::Io {
                addr: self.addr,
                source,
            })?;
        PEER_TRAFFIC.record_sent(self.buf.len(), self.frames);
        self.frames = 0;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BATCH_BYTES {
            self.buf.shrink_to(WRITE_BATCH_BYTES);
        }
        Ok(())
    }
}

/// Splits a handshaken peer connection into its framed halves.
fn split(stream: PeerStream, addr: SocketAddr) -> (FrameReader, FrameWriter) {
    let (socket, ciphers) = stream.into_parts();
    let (sending, receiving) = match ciphers {
        Some((sending, receiving)) => (Some(sending), Some(receiving)),
        None => (None, None),
    };
    let (read, write) = socket.into_split();
    (
        FrameReader {
            read: BufReader::with_capacity(READ_BUFFER_BYTES, read),
            cipher: receiving,
            addr,
            body: Vec::new(),
        },
        FrameWriter {
            write,
            cipher: sending,
            addr,
            buf: Vec::with_capacity(WRITE_BATCH_BYTES),
            frames: 0,
        },
    )
}

/// Writes what `outgoing` delivers until it closes or a write fails; each write carries every frame
/// queued by then.
async fn write_loop<T: Serialize>(
    mut writer: FrameWriter,
    mut outgoing: mpsc::UnboundedReceiver<T>,
) -> Result<(), PeerError> {
    while let Some(message) = outgoing.recv().await {
        writer.push(&message)?;
        // Let the tasks that are ready to run (other requests, other responses) queue their
        // frames first: under load one write then carries many, and when nothing else is ready
        // this costs one trip through the scheduler.
        tokio::task::yield_now().await;
        while writer.buf.len() < WRITE_BATCH_BYTES {
            match outgoing.try_recv() {
                Ok(message) => writer.push(&message)?,
                Err(_) => break,
            }
        }
        writer.flush().await?;
    }
    Ok(())
}

fn headers_to_wire(headers: &axum::http::HeaderMap) -> Vec<HopHeader> {
    headers
        .iter()
        .map(|(name, value)| HopHeader {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

fn headers_from_wire(
    fields: Vec<HopHeader>,
    into: &mut axum::http::HeaderMap,
) -> Result<(), String> {
    into.reserve(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", field.name))?;
        let value = HeaderValue::from_bytes(&field.value)
            .map_err(|_| format!("invalid value of header {name}"))?;
        into.append(name, value);
    }
    Ok(())
}

// ---------------------------------------------------------------- forwarding side

/// Why a request sent over a hop channel got no response.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    /// The member does not serve hop channels: send the request over HTTP.
    #[error("member does not serve hop channels")]
    Unsupported,
    /// No channel could be opened; the request never left this node.
    #[error("cannot open a hop channel: {0}")]
    Connect(#[source] PeerError),
    /// The member refused the request without serving it; safe to send elsewhere.
    #[error("member refused the request: {0}")]
    Refused(String),
    /// The channel broke after the request was handed to it, before the response head arrived.
    #[error("hop channel lost: {0}")]
    Lost(String),
    /// No response head within the response timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// The response head and first body bytes, as the reader task hands them to the waiting request.
struct Head {
    status: u16,
    headers: Vec<HopHeader>,
    body: Vec<u8>,
    /// The rest of the body, when the head did not carry all of it.
    rest: Option<BodyReceiver>,
}

type BodyReceiver = mpsc::UnboundedReceiver<Result<Bytes, String>>;

enum StreamState {
    /// Waiting for the response head.
    Waiting(oneshot::Sender<Result<Head, HopError>>),
    /// Head delivered; body chunks go to the response body.
    Body(mpsc::UnboundedSender<Result<Bytes, String>>),
}

/// One open hop channel to a member.
struct Channel {
    outgoing: mpsc::UnboundedSender<HopUp>,
    streams: Mutex<HashMap<u64, StreamState>>,
    next_stream: AtomicU64,
    closed: AtomicBool,
    /// Wakes the reader when the channel is closed or dropped on this side.
    close: Arc<Notify>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close.notify_one();
    }
}

impl Channel {
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Ends the channel: every stream still open learns why.
    fn fail(&self, reason: &str) {
        self.closed.store(true, Ordering::Release);
        self.close.notify_one();
        let streams = std::mem::take(&mut *lock(&self.streams));
        for (_, state) in streams {
            match state {
                StreamState::Waiting(tx) => {
                    let _ = tx.send(Err(HopError::Lost(reason.to_owned())));
                }
                StreamState::Body(tx) => {
                    let _ = tx.send(Err(format!("hop channel lost: {reason}")));
                }
            }
        }
    }

    /// Hands one frame from the member to the stream it belongs to.
    fn deliver(&self, frame: HopDown) {
        match frame {
            HopDown::Head {
                stream,
                status,
                headers,
                body,
                end,
            } => {
                let mut streams = lock(&self.streams);
                let Some(StreamState::Waiting(tx)) = streams.remove(&stream) else {
                    return;
                };
                let rest = if end {
                    None
                } else {
                    let (body_tx, body_rx) = mpsc::unbounded_channel();
                    streams.insert(stream, StreamState::Body(body_tx));
                    Some(body_rx)
                };
                drop(streams);
                let head = Head {
                    status,
                    headers,
                    body,
                    rest,
                };
                // A receiver that is gone was dropped with its guard, which removes the stream
                // and asks the member to stop.
                let _ = tx.send(Ok(head));
            }
            HopDown::Data { stream, chunk, end } => {
                let mut streams = lock(&self.streams);
                if let Some(StreamState::Body(tx)) = streams.get(&stream) {
                    let _ = tx.send(Ok(Bytes::from(chunk)));
                    if end {
                        streams.remove(&stream);
                    }
                }
            }
            HopDown::Reset { stream, reason } => {
                if let Some(state) = lock(&self.streams).remove(&stream) {
                    match state {
                        StreamState::Waiting(tx) => {
                            let _ = tx.send(Err(HopError::Lost(reason)));
                        }
                        StreamState::Body(tx) => {
                            let _ = tx.send(Err(reason));
                        }
                    }
                }
            }
            HopDown::Refused { stream, reason } => {
                if let Some(StreamState::Waiting(tx)) = lock(&self.streams).remove(&stream) {
                    let _ = tx.send(Err(HopError::Refused(reason)));
                }
            }
        }
    }
}

/// While a request's stream is open on this side: dropping it early (the client left, the response
/// timed out, the body was abandoned) forgets the stream and tells the member to stop.
struct StreamGuard {
    channel: Arc<Channel>,
    stream: u64,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.done && lock(&self.channel.streams).remove(&self.stream).is_some() {
            let _ = self.channel.outgoing.send(HopUp::Cancel {
                stream: self.stream,
            });
        }
    }
}

/// A response body arriving over a hop channel, chunk by chunk; consuming it returns credit.
struct HopBody {
    /// Body bytes that came with the head (outside the window: not credited back).
    first: Option<Bytes>,
    chunks: BodyReceiver,
    guard: StreamGuard,
    /// Bytes passed on and not yet credited back.
    uncredited: u32,
}

impl hyper::body::Body for HopBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match this.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.uncredited = this
                    .uncredited
                    .saturating_add(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
                if this.uncredited >= CREDIT_STEP_BYTES {
                    let _ = this.guard.channel.outgoing.send(HopUp::Credit {
                        stream: this.guard.stream,
                        bytes: std::mem::take(&mut this.uncredited),
                    });
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(reason))) => {
                this.guard.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(reason))))
            }
            Poll::Ready(None) => {
                this.guard.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A member's hop channel: the open one, if any, and how to get a new one.
struct MemberChannel {
    /// The member's peer address (a member that moves gets a new entry).
    addr: SocketAddr,
    current: ArcSwapOption<Channel>,
    /// Held while a channel is being opened, so concurrent requests wait for one connection.
    opening: tokio::sync::Mutex<()>,
    /// Until when the member is reached over HTTP (it refused a hop channel).
    http_until: Mutex<Option<Instant>>,
}

impl MemberChannel {
    /// False while the member is reached over HTTP (it refused a hop channel lately).
    fn usable(&self) -> bool {
        lock(&self.http_until).is_none_or(|until| until <= Instant::now())
    }
}

/// Opens and keeps one hop channel per member, and sends requests over them.
pub struct HopClient {
    peers: PeerClient,
    members: Mutex<HashMap<String, Arc<MemberChannel>>>,
}

impl std::fmt::Debug for HopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopClient").finish_non_exhaustive()
    }
}

impl HopClient {
    /// Hop channels opened with `peers`' identity (cluster id, name, key).
    pub fn new(peers: PeerClient) -> HopClient {
        HopClient {
            peers,
            members: Mutex::new(HashMap::new()),
        }
    }

    fn member(&self, name: &str, addr: SocketAddr) -> Arc<MemberChannel> {
        let mut members = lock(&self.members);
        if let Some(member) = members.get(name)
            && member.addr == addr
        {
            return member.clone();
        }
        let member = Arc::new(MemberChannel {
            addr,
            current: ArcSwapOption::empty(),
            opening: tokio::sync::Mutex::new(()),
            http_until: Mutex::new(None),
        });
        // A channel to the old address is only forgotten: requests in flight on it finish there,
        // and it closes when the last of them is done.
        members.insert(name.to_owned(), member.clone());
        member
    }

    /// Whether requests to member `name` (peer port `addr`) should try a hop channel now.
    pub fn usable(&self, name: &str, addr: SocketAddr) -> bool {
        self.member(name, addr).usable()
    }

    /// Forgets the channel to member `name` (it went down or left): new requests open another, and
    /// the old one closes once the requests in flight on it are done. A member that leaves finishes
    /// those; for one that is down, the router abandons them itself (and its connection fails).
    pub fn forget(&self, name: &str) {
        lock(&self.members).remove(name);
    }

    /// The open channel to member `name`, opening one within `connect_timeout` if needed;
    /// [`HopError::Unsupported`] while the member is reached over HTTP.
    async fn channel(
        &self,
        name: &str,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Arc<Channel>, HopError> {
        let member = self.member(name, addr);
        if !member.usable() {
            return Err(HopError::Unsupported);
        }
        if let Some(channel) = member.current.load_full().filter(|c| c.is_open()) {
            return Ok(channel);
        }
        let _opening = member.opening.lock().await;
        if let Some(channel) = member.current.load_full().filter(|c| c.is_open()) {
            return Ok(channel);
        }
        let stream = match tokio::time::timeout(connect_timeout, self.peers.open_hop(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err @ (PeerError::Connect { .. } | PeerError::Timeout { .. }))) => {
                return Err(HopError::Connect(err));
            }
            // It answered but would not (or could not) open a channel: an older build, say.
            Ok(Err(err)) => {
                warn!(peer = %addr, error = %err, "no hop channel to this member; proxying to it over HTTP for {}s", HTTP_FALLBACK.as_secs());
                *lock(&member.http_until) = Some(Instant::now() + HTTP_FALLBACK);
                return Err(HopError::Unsupported);
            }
            Err(_) => {
                return Err(HopError::Connect(PeerError::Timeout {
                    addr,
                    timeout: connect_timeout,
                }));
            }
        };
        let channel = open_channel(stream, addr);
        member.current.store(Some(channel.clone()));
        debug!(peer = %addr, "hop channel open");
        Ok(channel)
    }

    /// Sends a request (head in `parts`, whole body in `body`) to member `name`, whose peer port is
    /// `addr`, and waits up to `response_timeout` for the response head; the body then streams.
    pub async fn send(
        &self,
        name: &str,
        addr: SocketAddr,
        parts: &Parts,
        body: &Bytes,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Response, HopError> {
        let started = Instant::now();
        let channel = self.channel(name, addr, connect_timeout).await?;
        let stream = channel.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&channel.streams).insert(stream, StreamState::Waiting(tx));
        let mut guard = StreamGuard {
            channel: channel.clone(),
            stream,
            done: false,
        };
        let request = HopUp::Request(HopRequest {
            stream,
            method: parts.method.as_str().to_owned(),
            target: parts
                .uri
                .path_and_query()
                .map_or("/", |target| target.as_str())
                .to_owned(),
            headers: headers_to_wire(&parts.headers),
            body: body.to_vec(),
        });
        if channel.outgoing.send(request).is_err() || !channel.is_open() {
            guard.done = true;
            lock(&channel.streams).remove(&stream);
            // The writer was gone before it could take the request: it was never sent.
            return Err(HopError::Connect(PeerError::Io {
                addr,
                source: std::io::Error::other("hop channel closed"),
            }));
        }
        let remaining = response_timeout.saturating_sub(started.elapsed());
        let head = match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(Ok(head))) => head,
            Ok(Ok(Err(err))) => {
                guard.done = true;
                return Err(err);
            }
            Ok(Err(_)) => {
                guard.done = true;
                return Err(HopError::Lost("hop channel closed".to_owned()));
            }
            Err(_) => return Err(HopError::Timeout(response_timeout)),
        };
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::from_u16(head.status)
            .map_err(|_| HopError::Lost(format!("member answered with status {}", head.status)))?;
        headers_from_wire(head.headers, response.headers_mut()).map_err(HopError::Lost)?;
        *response.body_mut() = match head.rest {
            None => {
                guard.done = true;
                Body::from(head.body)
            }
            Some(chunks) => Body::new(HopBody {
                first: (!head.body.is_empty()).then(|| Bytes::from(head.body)),
                chunks,
                guard,
                uncredited: 0,
            }),
        };
        Ok(response)
    }
}

/// Starts the reader and writer tasks of a freshly opened channel.
fn open_channel(stream: PeerStream, addr: SocketAddr) -> Arc<Channel> {
    let (mut reader, writer) = split(stream, addr);
    let (outgoing, queue) = mpsc::unbounded_channel();
    let channel = Arc::new(Channel {
        outgoing,
        streams: Mutex::new(HashMap::new()),
        next_stream: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        close: Arc::new(Notify::new()),
    });
    let weak = Arc::downgrade(&channel);
    tokio::spawn(async move {
        // Ends when every sender is gone (the channel was dropped) or a write fails.
        if let Err(err) = write_loop(writer, queue).await
            && let Some(channel) = weak.upgrade()
        {
            debug!(peer = %addr, error = %err, "hop channel write failed");
            channel.fail(&err.to_string());
        }
    });
    let weak = Arc::downgrade(&channel);
    let close = channel.close.clone();
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = reader.next::<HopDown>() => frame,
                () = close.notified() => return,
            };
            let Some(channel) = weak.upgrade() else {
                return;
            };
            match frame {
                Ok(Some(frame)) => channel.deliver(frame),
                Ok(None) => {
                    channel.fail("the member closed the connection");
                    return;
                }
                Err(err) => {
                    debug!(peer = %addr, error = %err, "hop channel read failed");
                    channel.fail(&err.to_string());
                    return;
                }
            }
        }
    });
    channel
}

// ---------------------------------------------------------------- serving side

impl HopHandler for HopServer {
    fn serve_hop(
        self: Arc<Self>,
        stream: PeerStream,
        addr: SocketAddr,
    ) -> BoxFuture<'static, Result<(), PeerError>> {
        Box::pin(self.serve_channel(stream, addr))
    }
}

/// What serves the requests arriving on hop channels: the node's whole application, as its HTTP
/// listener would.
pub struct HopService(Box<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>);

impl HopService {
    /// Serves with `serve`.
    pub fn new(
        serve: impl Fn(Request) -> BoxFuture<'static, Response> + Send + Sync + 'static,
    ) -> HopService {
        HopService(Box::new(serve))
    }
}

/// Serves hop channels opened to this node's peer port.
pub struct HopServer {
    service: ArcSwapOption<HopService>,
    closing: AtomicBool,
    in_flight: AtomicU64,
    idle: Notify,
}

impl std::fmt::Debug for HopServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopServer")
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts one request in flight for as long as it lives (an aborted request included).
struct InFlight(Arc<HopServer>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl HopServer {
    /// A server that refuses every request until [`HopServer::set_service`] is called.
    pub fn new() -> Arc<HopServer> {
        Arc::new(HopServer {
            service: ArcSwapOption::empty(),
            closing: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
        })
    }

    /// Serves requests with `service` from now on.
    pub fn set_service(&self, service: HopService) {
        self.service.store(Some(Arc::new(service)));
    }

    /// Refuses new requests from now on (the node is leaving); requests in flight go on.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no request is being served.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Serves one hop channel until the forwarding node closes it or it breaks; requests still
    /// being served when it ends are stopped (their responses could not be delivered).
    pub(crate) async fn serve_channel(
        self: Arc<Self>,
        stream: PeerStream,
        addr: SocketAddr,
    ) -> Result<(), PeerError> {
        let (mut reader, writer) = split(stream, addr);
        let (outgoing, queue) = mpsc::unbounded_channel::<HopDown>();
        let writing = tokio::spawn(write_loop(writer, queue));
        let mut requests: JoinSet<u64> = JoinSet::new();
        let mut streams: HashMap<u64, (tokio::task::AbortHandle, Arc<Semaphore>)> = HashMap::new();
        let result = loop {
            // Reaped between frames: a read is never interrupted, so no frame is cut in two.
            while let Some(done) = requests.try_join_next() {
                if let Ok(stream) = done {
                    streams.remove(&stream);
                }
            }
            let frame = match reader.next::<HopUp>().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            };
            match frame {
                HopUp::Request(request) => {
                    let stream = request.stream;
                    let service = self.service.load_full();
                    let refusal = if self.closing.load(Ordering::Acquire) {
                        Some("the member is shutting down")
                    } else if service.is_none() {
                        Some("the member is not serving yet")
                    } else if streams.len() >= MAX_STREAMS_PER_CHANNEL {
                        // Whoever sends requests without reading the answers (without a cluster
                        // key, anyone can open a channel) holds no more than this many at once.
                        Some("too many requests in flight on this hop channel")
                    } else {
                        None
                    };
                    let (Some(service), None) = (service, refusal) else {
                        let reason = refusal.unwrap_or_default().to_owned();
                        let _ = outgoing.send(HopDown::Refused { stream, reason });
                        continue;
                    };
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    let in_flight = InFlight(self.clone());
                    let window = Arc::new(Semaphore::new(STREAM_WINDOW_BYTES as usize));
                    let task = serve_request(
                        service,
                        request,
                        addr,
                        window.clone(),
                        outgoing.clone(),
                        in_flight,
                    );
                    let handle = requests.spawn(task);
                    streams.insert(stream, (handle, window));
                }
                HopUp::Cancel { stream } => {
                    if let Some((handle, _)) = streams.remove(&stream) {
                        handle.abort();
                    }
                }
                HopUp::Credit { stream, bytes } => {
                    // A window never grows past a few times its size, however much credit a
                    // peer sends (the semaphore would panic past its maximum).
                    if let Some((_, window)) = streams.get(&stream)
                        && window.available_permits() <= MAX_WINDOW_BYTES
                    {
                        window.add_permits((bytes as usize).min(MAX_WINDOW_BYTES));
                    }
                }
            }
        };
        requests.abort_all();
        drop(outgoing);
        // The writer ends once the aborted requests drop their senders.
        let _ = writing.await;
        result
    }
}

/// Serves one request from a hop channel and sends its response back on `outgoing`.
async fn serve_request(
    service: Arc<HopService>,
    request: HopRequest,
    peer: SocketAddr,
    window: Arc<Semaphore>,
    outgoing: mpsc::UnboundedSender<HopDown>,
    _in_flight: InFlight,
) -> u64 {
    let stream = request.stream;
    let request = match to_http_request(request, peer) {
        Ok(request) => request,
        Err(reason) => {
            // Whoever can open a hop channel can send these at any rate: one line per 10 s.
            if let Some(held_back) = MALFORMED_LOG.allow() {
                let reason = crate::logging::escape_for_log(&reason.to_string());
                warn!(peer = %peer, %reason, held_back, "malformed request on a hop channel");
            }
            let _ = outgoing.send(HopDown::Head {
                stream,
                status: StatusCode::BAD_REQUEST.as_u16(),
                headers: Vec::new(),
                body: reason.into_bytes(),
                end: true,
            });
            return stream;
        }
    };
    let response = (service.0)(request).await;
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let headers = headers_to_wire(&parts.headers);
    // A small body of known length travels in the head: one frame per request.
    if body
        .size_hint()
        .exact()
        .is_some_and(|len| len <= MAX_CHUNK_BYTES as u64)
    {
        let frame = match body.collect().await {
            Ok(collected) => HopDown::Head {
                stream,
                status,
                headers,
                body: collected.to_bytes().to_vec(),
                end: true,
            },
            Err(err) => HopDown::Reset {
                stream,
                reason: format!("response body failed: {err}"),
            },
        };
        let _ = outgoing.send(frame);
        return stream;
    }
    let head = HopDown::Head {
        stream,
        status,
        headers,
        body: Vec::new(),
        end: false,
    };
    if outgoing.send(head).is_err() {
        return stream;
    }
    loop {
        let frame = match body.frame().await {
            None => HopDown::Data {
                stream,
                chunk: Vec::new(),
                end: true,
            },
            Some(Err(err)) => HopDown::Reset {
                stream,
                reason: format!("response body failed: {err}"),
            },
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                for piece in data.chunks(MAX_CHUNK_BYTES) {
                    // Within the window the forwarding node granted; closed only if it is gone.
                    let Ok(permit) = window.acquire_many(piece.len() as u32).await else {
                        return stream;
                    };
                    permit.forget();
                    let chunk = HopDown::Data {
                        stream,
                        chunk: piece.to_vec(),
                        end: false,
                    };
                    if outgoing.send(chunk).is_err() {
                        return stream;
                    }
                }
                continue;
            }
        };
        let _ = outgoing.send(frame);
        return stream;
    }
}

/// The HTTP request a hop request stands for, as if it had arrived from `peer` over HTTP/1.1.
fn to_http_request(request: HopRequest, peer: SocketAddr) -> Result<Request, String> {
    let method = Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", request.method))?;
    let uri: Uri = request
        .target
        .parse()
        .map_err(|_| format!("invalid request target {:?}", request.target))?;
    let mut http = Request::new(Body::from(request.body));
    *http.method_mut() = method;
    *http.uri_mut() = uri;
    headers_from_wire(request.headers, http.headers_mut())?;
    http.extensions_mut().insert(ConnectInfo(peer));
    http.extensions_mut().insert(ArrivedOverHopChannel);
    Ok(http)
}

/// Marks a request served from a hop channel: only a member (with a cluster key, one that proved it
/// holds the key) opens those, so its hop header is honoured without a token. Extensions never
/// come from the wire, so no client can set it.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedOverHopChannel;

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::routing::{get, post};
    use futures_util::StreamExt;
    use proto::raft::{Hello, PEER_WIRE_VERSION, PeerRequest, PeerResponse};
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::crypto::{ClusterKey, PeerKey};
    use crate::peer::server::{Dispatch, RpcHandler, serve};

    /// A member's answer to every request that is not a hop channel.
    struct Member;

    impl RpcHandler for Member {
        async fn handle(&self, _request: PeerRequest) -> PeerResponse {
            PeerResponse::Error("unexpected".to_string())
        }
    }

    /// Counts bytes a streaming response produced and requests that were dropped unfinished.
    #[derive(Default)]
    struct Probe {
        produced: AtomicUsize,
        dropped: AtomicUsize,
    }

    struct DropCount(Arc<Probe>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    const BIG_CHUNKS: usize = 32;

    fn app(probe: Arc<Probe>) -> Router {
        let big_probe = probe.clone();
        Router::new()
            .route(
                "/echo",
                post(
                    |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                     headers: axum::http::HeaderMap,
                     body: Bytes| async move {
                        let tag = headers.get("x-tag").map(|v| v.as_bytes().to_vec());
                        let mut response = Response::new(Body::from(body));
                        if let Some(tag) = tag {
                            response
                                .headers_mut()
                                .insert("x-tag", HeaderValue::from_bytes(&tag).expect("tag"));
                        }
                        response.headers_mut().insert(
                            "x-peer-ip",
                            HeaderValue::from_str(&peer.ip().to_string()).expect("ip"),
                        );
                        response
                    },
                ),
            )
            .route(
                "/big",
                get(move || async move {
                    // 32 chunks of 64 KiB, each counted when the body is asked for it.
                    let stream = futures_util::stream::iter(0..BIG_CHUNKS).map(move |i| {
                        big_probe
                            .produced
                            .fetch_add(MAX_CHUNK_BYTES, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; MAX_CHUNK_BYTES]))
                    });
                    Body::from_stream(stream)
                }),
            )
            .route(
                "/slow",
                get(
                    move |axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                        let _count = DropCount(probe);
                        // `?ms=N` answers after N ms; otherwise after 30 s.
                        let ms = query
                            .and_then(|q| q.strip_prefix("ms=").and_then(|n| n.parse().ok()))
                            .unwrap_or(30_000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        "late"
                    },
                ),
            )
    }

    struct Harness {
        addr: SocketAddr,
        hop: Arc<HopServer>,
        probe: Arc<Probe>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    }

    impl Harness {
        async fn start(serves_hop: bool, key: Option<PeerKey>) -> Harness {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let probe = Arc::new(Probe::default());
            let hop = HopServer::new();
            let router = app(probe.clone());
            hop.set_service(HopService::new(move |request| {
                let mut router = router.clone();
                Box::pin(async move {
                    match tower_service::Service::call(&mut router, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                })
            }));
            // Serves hop channels with `hop`, or refuses them.
            let mut dispatch = Dispatch::new(Arc::new(Member));
            if serves_hop {
                dispatch = dispatch.hop(hop.clone());
            }
            let hello = Hello {
                wire_version: PEER_WIRE_VERSION,
                cluster_id: "demo".to_string(),
                from_name: "member".to_string(),
            };
            let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
            tokio::spawn(serve(
                listener,
                dispatch,
                hello,
                key,
                shutdown.clone(),
                tasks.clone(),
            ));
            Harness {
                addr,
                hop,
                probe,
                shutdown,
                tasks,
            }
        }

        async fn stop(&self) {
            self.shutdown.cancel();
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    fn key(byte: u8) -> Option<PeerKey> {
        Some(PeerKey::new(&ClusterKey::from_bytes([byte; 32])))
    }

    fn head(method: Method, target: &str, tag: &[u8]) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = target.parse().expect("uri");
        request
            .headers_mut()
            .insert("x-tag", HeaderValue::from_bytes(tag).expect("tag"));
        request.into_parts().0
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// A client that forwards to the test member, without a cluster key.
    fn forwarder() -> HopClient {
        HopClient::new(PeerClient::new("demo", "forwarder", None))
    }

    /// Sends a request with a fixed tag to the test member.
    async fn ask(
        client: &HopClient,
        addr: SocketAddr,
        method: Method,
        target: &str,
        body: &'static [u8],
        response_timeout: Duration,
    ) -> Result<Response, HopError> {
        let head = head(method, target, b"t");
        let body = Bytes::from_static(body);
        client
            .send("member", addr, &head, &body, SECOND, response_timeout)
            .await
    }

    /// A slow `GET target` sent in the background, answered within `response_timeout`.
    fn ask_in_background(
        client: &Arc<HopClient>,
        addr: SocketAddr,
        target: &'static str,
        response_timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<Response, HopError>> {
        let client = client.clone();
        tokio::spawn(
            async move { ask(&client, addr, Method::GET, target, b"", response_timeout).await },
        )
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn concurrent_echoes(client: Arc<HopClient>, addr: SocketAddr, count: usize) {
        let mut requests = JoinSet::new();
        for i in 0..count {
            let client = client.clone();
            requests.spawn(async move {
                // Values that are not UTF-8 must survive as they are.
                let tag = [b'x', 0xff, b'a' + (i % 26) as u8];
                let body = Bytes::from(format!("body of request {i} ").repeat(i % 50 + 1));
                let response = client
                    .send(
                        "member",
                        addr,
                        &head(Method::POST, "/echo?i=1", &tag),
                        &body,
                        SECOND,
                        10 * SECOND,
                    )
                    .await
                    .expect("response");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["x-tag"].as_bytes(), tag);
                assert_eq!(response.headers()["x-peer-ip"], "127.0.0.1");
                let got = response.into_body().collect().await.expect("body");
                assert_eq!(got.to_bytes(), body, "request {i} got another's body");
            });
        }
        while let Some(done) = requests.join_next().await {
            done.expect("request task");
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_channel_and_each_gets_its_own_response() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        concurrent_echoes(client.clone(), member.addr, 200).await;
        assert_eq!(lock(&client.members).len(), 1);
        assert_eq!(member.hop.in_flight(), 0);
        member.stop().await;
    }

    #[tokio::test]
    async fn a_keyed_cluster_seals_its_hop_channels() {
        let member = Harness::start(true, key(3)).await;
        let client = Arc::new(HopClient::new(PeerClient::new("demo", "forwarder", key(3))));
        concurrent_echoes(client, member.addr, 20).await;
        // Without the key the channel cannot even be opened, and nothing was served.
        let stranger = HopClient::new(PeerClient::new("demo", "stranger", key(4)));
        let refused = ask(&stranger, member.addr, Method::GET, "/echo", b"", SECOND).await;
        assert!(
            matches!(refused, Err(HopError::Unsupported | HopError::Connect(_))),
            "{refused:?}"
        );
        member.stop().await;
    }

    #[tokio::test]
    async fn a_large_body_streams_within_the_window_of_what_the_client_took() {
        let member = Harness::start(true, None).await;
        let client = forwarder();
        let response = ask(&client, member.addr, Method::GET, "/big", b"", 10 * SECOND)
            .await
            .expect("response");
        // Nobody reads the body yet: the member stops at the window (plus the chunk it holds).
        let probe = member.probe.clone();
        let window = STREAM_WINDOW_BYTES as usize;
        wait_until("the member fills the window", || {
            probe.produced.load(Ordering::SeqCst) >= window
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let produced = probe.produced.load(Ordering::SeqCst);
        assert!(
            produced <= window + 2 * MAX_CHUNK_BYTES,
            "{produced} bytes produced ahead of a client that took nothing"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), BIG_CHUNKS * MAX_CHUNK_BYTES);
        for (i, chunk) in body.chunks(MAX_CHUNK_BYTES).enumerate() {
            assert!(
                chunk.iter().all(|b| *b == i as u8),
                "chunk {i} out of order"
            );
        }
        member.stop().await;
    }

    #[tokio::test]
    async fn a_response_timeout_cancels_the_request_on_the_member() {
        let member = Harness::start(true, None).await;
        let client = forwarder();
        let result = ask(
            &client,
            member.addr,
            Method::GET,
            "/slow",
            b"",
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(result, Err(HopError::Timeout(_))), "{result:?}");
        let (hop, probe) = (member.hop.clone(), member.probe.clone());
        wait_until("the member stops the abandoned request", || {
            hop.in_flight() == 0 && probe.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
        member.stop().await;
    }

    #[tokio::test]
    async fn a_closing_member_refuses_and_a_dead_one_fails_what_it_held() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        let slow = ask_in_background(&client, member.addr, "/slow", 30 * SECOND);
        let hop = member.hop.clone();
        wait_until("the slow request is being served", || hop.in_flight() == 1).await;
        member.hop.close();
        let refused = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND).await;
        assert!(matches!(refused, Err(HopError::Refused(_))), "{refused:?}");
        // The member goes away with the slow request still open: its client learns at once.
        member.stop().await;
        let lost = tokio::time::timeout(5 * SECOND, slow)
            .await
            .expect("the waiting request ends")
            .expect("task");
        assert!(matches!(lost, Err(HopError::Lost(_))), "{lost:?}");
        assert_eq!(member.hop.in_flight(), 0);
        // Nobody listens any more: the next request cannot connect (and was never sent).
        let refused = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND).await;
        assert!(matches!(refused, Err(HopError::Connect(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_forgotten_channel_finishes_what_is_in_flight_then_closes() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        let slow = ask_in_background(&client, member.addr, "/slow?ms=300", 10 * SECOND);
        let hop = member.hop.clone();
        wait_until("the slow request is being served", || hop.in_flight() == 1).await;
        // The member announced it is leaving: the router forgets its channel.
        client.forget("member");
        let done = tokio::time::timeout(5 * SECOND, slow)
            .await
            .expect("the request ends")
            .expect("task")
            .expect("answered on the forgotten channel");
        assert_eq!(done.status(), StatusCode::OK);
        let body = done.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"late");
        // Nothing is left running on the member for it.
        let server_side = Arc::clone(&member.hop);
        wait_until("the member finished", || server_side.in_flight() == 0).await;
        // The next request opens a new channel.
        let again = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND)
            .await
            .expect("a new channel");
        assert_eq!(again.status(), StatusCode::OK);
        member.stop().await;
    }

    #[tokio::test]
    async fn a_member_without_hop_channels_is_reached_over_http_for_a_while() {
        let member = Harness::start(false, None).await;
        let client = forwarder();
        assert!(client.usable("member", member.addr));
        let result = ask(&client, member.addr, Method::GET, "/echo", b"", SECOND).await;
        assert!(matches!(result, Err(HopError::Unsupported)), "{result:?}");
        assert!(!client.usable("member", member.addr));
        member.stop().await;
    }

    #[tokio::test]
    async fn garbage_on_a_hop_channel_ends_that_channel_only() {
        let member = Harness::start(true, None).await;
        let peers = PeerClient::new("demo", "forwarder", None);
        // A length far over the limit; then a frame whose bytes are no message at all.
        for garbage in [
            &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3][..],
            &[0, 0, 0, 3, 9, 9, 9],
        ] {
            let (mut socket, _) = peers
                .open_hop(member.addr)
                .await
                .expect("open")
                .into_parts();
            socket.write_all(garbage).await.expect("write");
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(5 * SECOND, socket.read_to_end(&mut rest)).await;
            assert!(matches!(closed, Ok(Ok(0))), "{garbage:?}: {closed:?}");
        }
        // The member serves the next channel as if nothing happened.
        let client = Arc::new(HopClient::new(peers));
        concurrent_echoes(client, member.addr, 5).await;
        member.stop().await;
    }
}
