//! The forwarding side of hop channels: one channel per member, opened on first use, on which
//! requests are multiplexed as numbered streams; a member that refuses channels is reached over
//! HTTP for [`HTTP_FALLBACK`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use proto::hop::{HopDown, HopHeader, HopRequest, HopUp};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::frame::{CREDIT_STEP_BYTES, headers_from_wire, headers_to_wire, split, write_loop};
use super::lock;
use crate::peer::{PeerClient, PeerError, PeerStream};

/// A member that refused a hop channel (it does not know them) is reached over HTTP this long
/// before it is asked again.
pub const HTTP_FALLBACK: Duration = Duration::from_secs(60);

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
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl std::fmt::Debug for HopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HopClient").finish_non_exhaustive()
    }
}

impl HopClient {
    /// Hop channels opened with `peers`' identity (cluster id, name, key). Each channel's reader and
    /// writer run on `tasks` and end when the connection closes or `stop` is cancelled.
    pub fn new(peers: PeerClient, tasks: TaskTracker, stop: CancellationToken) -> HopClient {
        HopClient {
            peers,
            members: Mutex::new(HashMap::new()),
            tasks,
            stop,
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

    /// Members this client keeps a channel (or a fallback to HTTP) for; tests look at it.
    #[cfg(test)]
    pub(super) fn channels(&self) -> usize {
        lock(&self.members).len()
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
        let channel = open_channel(stream, addr, &self.tasks, &self.stop);
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

/// Starts the reader and writer tasks of a freshly opened channel on `tasks`; both end at `stop`.
fn open_channel(
    stream: PeerStream,
    addr: SocketAddr,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Arc<Channel> {
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
    let writer_stop = stop.clone();
    tasks.spawn(async move {
        // Ends when every sender is gone (the channel was dropped), a write fails, or the node stops.
        let written = tokio::select! {
            written = write_loop(writer, queue) => written,
            () = writer_stop.cancelled() => return,
        };
        if let Err(err) = written
            && let Some(channel) = weak.upgrade()
        {
            debug!(peer = %addr, error = %err, "hop channel write failed");
            channel.fail(&err.to_string());
        }
    });
    let weak = Arc::downgrade(&channel);
    let close = channel.close.clone();
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = reader.next::<HopDown>() => frame,
                () = close.notified() => return,
                () = stop.cancelled() => {
                    if let Some(channel) = weak.upgrade() {
                        channel.fail("this node is stopping");
                    }
                    return;
                }
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
