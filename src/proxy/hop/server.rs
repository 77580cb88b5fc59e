//! The serving side of hop channels: [`HopServer`] serves the streams a member opens to this
//! node's peer port with the node's application, and refuses them while the node is closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use proto::hop::{HopDown, HopRequest, HopUp, MAX_CHUNK_BYTES, STREAM_WINDOW_BYTES};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::warn;

use super::frame::{MAX_WINDOW_BYTES, headers_from_wire, headers_to_wire, split, write_loop};
use crate::peer::server::HopHandler;
use crate::peer::{PeerError, PeerStream};

/// Requests served at once on one hop channel; more are refused (the sender retries elsewhere). A
/// node accepts at most `<http max-connections>` client connections, so a member forwards far fewer.
const MAX_STREAMS_PER_CHANNEL: usize = 16_384;
/// Malformed hop requests (anyone can open a hop channel without a cluster key) are logged at most
/// this often.
static MALFORMED_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(std::time::Duration::from_secs(10));

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
