//! The `--http` accept loop: every connection is bounded in count and in time.
//!
//! - Count: above `<http max-connections>` a new connection is accepted and closed at once (counted),
//!   so the backlog never fills with clients nobody will serve.
//! - Time: a connection must deliver each request head within `header-timeout-ms` (counted from the
//!   accept, or from the first byte of a later request), and may wait at most `idle-timeout-ms` for
//!   its next request. A request in progress (the handler runs or its response is being sent) and an
//!   upgraded connection are not timed here.
//! - Accept failures are counted and logged at most once per 10 s. Those of the port itself (out of
//!   file descriptors or memory, or unknown) are backed off and make the node not ready for
//!   [`NOT_READY_AFTER_FAILURE`] ([`AcceptHealth`]); those of one client's connection are not.
//!
//! Why not hyper's `header_read_timeout`: hyper 1.12 starts that timer whenever it begins waiting for
//! a head, which on a kept-alive connection is right after the previous response, so it would also
//! close idle connections after `header-timeout-ms` and `idle-timeout-ms` could never be longer.
//! The two phases are told apart here instead, by the first byte read while idle.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::Response;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

use crate::config::HttpConfig;
use crate::logging::LogThrottle;
use crate::metrics::http::{AcceptError, ConnectionTimeout, CountedStream, HttpMetrics};

/// How long the node stays not ready after an accept failed for lack of file descriptors or memory
/// (or for a reason we do not know):
/// long enough that a balancer polling every second sees it, short enough to come back by itself.
pub const NOT_READY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Pause after an accept failure: the next accept would fail the same way at once (the pending
/// connection stays in the backlog), so retrying without a pause would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

static ACCEPT_ERROR_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Whether the port can accept connections, as last seen by the accept loop.
#[derive(Debug)]
pub struct AcceptHealth {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last failure for lack of resources, plus one; 0 for none.
    last_exhaustion_ms: AtomicU64,
    /// The last such failure in words.
    last_error: Mutex<String>,
}

impl Default for AcceptHealth {
    fn default() -> Self {
        AcceptHealth {
            epoch: Instant::now(),
            last_exhaustion_ms: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }
}

impl AcceptHealth {
    fn exhausted(&self, err: &std::io::Error) {
        let since = self.epoch.elapsed().as_millis() as u64 + 1;
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = err.to_string();
        self.last_exhaustion_ms.store(since, Ordering::Relaxed);
    }

    /// `Err(reason)` while the last accept that failed for lack of resources is less than
    /// [`NOT_READY_AFTER_FAILURE`] old.
    pub fn check(&self) -> Result<(), String> {
        let last = self.last_exhaustion_ms.load(Ordering::Relaxed);
        if last == 0 {
            return Ok(());
        }
        let age = Duration::from_millis((self.epoch.elapsed().as_millis() as u64 + 1) - last);
        if age >= NOT_READY_AFTER_FAILURE {
            return Ok(());
        }
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Err(format!(
            "cannot accept HTTP connections: {error} ({} ms ago)",
            age.as_millis()
        ))
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets every connection finish its request in
/// progress and returns once all are closed. `bounds` is read at each accept, so a reload applies to
/// the connections that follow. Dropping the future closes every connection at once.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    bounds: impl Fn() -> HttpConfig,
    metrics: &'static HttpMetrics,
    health: Arc<AcceptHealth>,
    shutdown: CancellationToken,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let connections = TaskTracker::new();
    // Cancelled when this future ends or is dropped (the caller gave up on draining).
    let force = CancellationToken::new();
    let _force_on_drop = force.clone().drop_guard();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // No hyper timer: the timeouts are ours (see the module comment), and with a timer hyper would
    // also turn on its own 30 s default header timeout.
    http1.header_read_timeout(None);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                let kind = AcceptError::of(&err);
                metrics.accept_failed(kind);
                if let Some(held_back) = ACCEPT_ERROR_LOG.allow() {
                    warn!(
                        error = %err,
                        kind = kind.as_str(),
                        held_back,
                        "cannot accept an HTTP connection ({held_back} more failures since the last such line)"
                    );
                }
                if kind.is_exhaustion() {
                    health.exhausted(&err);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                // A failure of one client's connection (it left before the accept): the next
                // accept is another connection, so no pause.
                continue;
            }
        };
        let bounds = bounds();
        if metrics.connections_open() >= bounds.max_connections as u64 {
            // Closed at once, not left in the backlog: the client learns now, and the kernel's
            // queue stays free for when connections are released.
            metrics.refused_connection();
            drop(stream);
            continue;
        }
        // Responses are small writes answered by a read; Nagle would hold each for the peer's ACK.
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(ConnectionClock::new(&bounds));
        let io = BoundedStream {
            inner: metrics.count_connection(stream),
            clock: clock.clone(),
            metrics,
        };
        let service = TowerToHyperService::new(ConnectionService {
            app: app.clone(),
            remote,
            clock,
        });
        let connection = http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let drain = shutdown.clone();
        let force = force.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(%remote, error = %err, "HTTP connection ended with an error");
                    }
                }
                _ = drain.cancelled() => {
                    // Finishes the request in progress, then closes; an idle connection closes now.
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = force.cancelled() => {}
                    }
                }
                _ = force.cancelled() => {}
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// What a connection is doing, packed with the time it started doing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head = 0,
    /// A request is being handled or its response sent.
    Request = 1,
    /// Kept alive, waiting for the first byte of the next request.
    Idle = 2,
    /// Handed over to an upgrade (WebSocket): its handler bounds it.
    Upgraded = 3,
}

/// The phase of one connection and since when, shared by its stream (which enforces the deadline on
/// each read that would wait) and its service (which sees requests start and responses end).
#[derive(Debug)]
struct ConnectionClock {
    started: Instant,
    /// `milliseconds since started << 2 | phase`, one atomic so that a phase and its start always
    /// agree.
    state: AtomicU64,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// The deadline's timer and the connection task's waker. Only that task touches it (its reads,
    /// and hyper dropping a response body), so the lock is never contended.
    timer: Mutex<Timer>,
}

/// The timer of one connection, allocated on its first wait and reset rather than re-created.
#[derive(Debug, Default)]
struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The task, as of its last read that waited.
    waker: Option<Waker>,
}

impl Timer {
    /// Polls the timer for `deadline` on behalf of `cx`'s task: `Ready` once it has passed.
    ///
    /// The timer is moved only to an earlier deadline. A later one (each response pushes the idle
    /// deadline on) keeps the timer where it is, and when that fires early it is set to the real
    /// deadline then: so a busy keep-alive connection re-arms its timer about once per timeout, not
    /// once per request (a reset reinserts it in the runtime's timer wheel).
    fn poll(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            empty => empty.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        sleep.as_mut().reset(deadline);
        // Registers the waker for the real deadline.
        sleep.as_mut().poll(cx)
    }

    fn remember(&mut self, waker: &Waker) {
        if !self
            .waker
            .as_ref()
            .is_some_and(|known| known.will_wake(waker))
        {
            self.waker = Some(waker.clone());
        }
    }
}

impl ConnectionClock {
    fn new(bounds: &HttpConfig) -> ConnectionClock {
        ConnectionClock {
            started: Instant::now(),
            state: AtomicU64::new(Phase::Head as u64),
            header_timeout: bounds.header_timeout,
            idle_timeout: bounds.idle_timeout,
            timer: Mutex::new(Timer::default()),
        }
    }

    fn pack(&self, phase: Phase) -> u64 {
        (self.started.elapsed().as_millis() as u64) << 2 | phase as u64
    }

    fn phase(state: u64) -> Phase {
        match state & 3 {
            0 => Phase::Head,
            1 => Phase::Request,
            2 => Phase::Idle,
            _ => Phase::Upgraded,
        }
    }

    /// Moves to `to` only from `from`, so that a late event cannot undo a later phase; whether it
    /// moved.
    fn shift(&self, from: Phase, to: Phase) -> bool {
        self.state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                (Self::phase(state) == from).then(|| self.pack(to))
            })
            .is_ok()
    }

    fn request_started(&self) {
        // From `Head`, or from `Idle` when a pipelined request was already buffered.
        let _ = self.shift(Phase::Head, Phase::Request) || self.shift(Phase::Idle, Phase::Request);
    }

    /// Ends the request: the idle deadline starts. hyper goes idle without reading again (its last
    /// read, during the request, found nothing), so the timer must be armed here, not by the next
    /// read, which may not come until the client sends something. With `cx` (the body's last frame
    /// was just taken, on the connection's task) the timer is armed directly; without (the body is
    /// dropped, possibly while the runtime shuts down, where a timer must not be polled) the task is
    /// woken to read again, at the cost of one more poll.
    fn request_finished(&self, cx: Option<&mut Context<'_>>) {
        if !self.shift(Phase::Request, Phase::Idle) {
            return;
        }
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        match (cx, self.deadline()) {
            (Some(cx), Some((deadline, _))) => {
                timer.remember(cx.waker());
                if timer.poll(deadline, cx).is_ready() {
                    // Already due: the next read reports it.
                    cx.waker().wake_by_ref();
                }
            }
            _ => {
                if let Some(waker) = &timer.waker {
                    waker.wake_by_ref();
                }
            }
        }
    }

    /// Waits for the current phase's deadline on behalf of `cx`'s task: `Ready` with the bound
    /// once it has passed.
    fn poll_deadline(&self, cx: &mut Context<'_>) -> Poll<ConnectionTimeout> {
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        timer.remember(cx.waker());
        match self.deadline() {
            None => Poll::Pending,
            Some((deadline, bound)) => timer.poll(deadline, cx).map(|()| bound),
        }
    }

    fn upgraded(&self) {
        self.state
            .store(self.pack(Phase::Upgraded), Ordering::Relaxed);
    }

    fn bytes_arrived(&self) {
        let _ = self.shift(Phase::Idle, Phase::Head);
    }

    /// When the current phase must end, and which bound that is.
    fn deadline(&self) -> Option<(Instant, ConnectionTimeout)> {
        let state = self.state.load(Ordering::Relaxed);
        let since = self.started + Duration::from_millis(state >> 2);
        match Self::phase(state) {
            Phase::Head => Some((since + self.header_timeout, ConnectionTimeout::Header)),
            Phase::Idle => Some((since + self.idle_timeout, ConnectionTimeout::Idle)),
            Phase::Request | Phase::Upgraded => None,
        }
    }
}

/// The connection's socket: counted open (for the metric and `max-connections`) and failing a read
/// that would wait past the phase's deadline, which ends the connection.
struct BoundedStream {
    inner: CountedStream,
    clock: Arc<ConnectionClock>,
    metrics: &'static HttpMetrics,
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match self.clock.poll_deadline(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(bound) => {
                    self.metrics.connection_timed_out(bound);
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no {} in time", bound.as_str()),
                    )))
                }
            },
        }
    }
}

// Writes are not timed here: a response being sent is a request in progress.
forward_async_write!(BoundedStream);

/// The application as one connection sees it: `ConnectInfo` set on every request, and the clock
/// told when a request starts and when its response has been sent.
#[derive(Clone)]
struct ConnectionService<S> {
    app: S,
    remote: SocketAddr,
    clock: Arc<ConnectionClock>,
}

impl<S> Service<axum::http::Request<Incoming>> for ConnectionService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = axum::http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = ConnectionFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<Incoming>) -> Self::Future {
        self.clock.request_started();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.remote));
        ConnectionFuture {
            inner: self.app.call(request),
            request: Some(RequestInProgress(self.clock.clone())),
        }
    }
}

/// Ends the clock's `Request` phase when dropped: with the response body once it has been sent, or
/// with the handler's future if the connection ends first.
struct RequestInProgress(Arc<ConnectionClock>);

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.request_finished(None);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ConnectionService`].
    struct ConnectionFuture<F> {
        #[pin]
        inner: F,
        request: Option<RequestInProgress>,
    }
}

impl<F> Future for ConnectionFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<axum::http::Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(request) = this.request.as_ref()
        {
            request.0.upgraded();
        }
        let request = this.request.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, request })))
    }
}

/// A response body that keeps its request in progress until hyper is done with it.
struct TrackedBody {
    inner: Body,
    request: Option<RequestInProgress>,
}

impl HttpBody for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        // The last frame: hyper writes it and goes idle without polling again.
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            if let Some(request) = self.request.take() {
                request.0.request_finished(Some(cx));
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> ConnectionClock {
        ConnectionClock::new(&HttpConfig {
            max_connections: 1,
            header_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(2_000),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn phases_pick_the_deadline_and_late_events_do_not_undo_them() {
        let clock = clock();
        let start = clock.started;
        // A new connection must send its first head within the header timeout.
        assert_eq!(
            clock.deadline(),
            Some((
                start + Duration::from_millis(500),
                ConnectionTimeout::Header
            ))
        );
        clock.bytes_arrived();
        assert_eq!(
            clock.deadline().map(|(at, _)| at),
            Some(start + Duration::from_millis(500)),
            "bytes of the first head do not extend it"
        );
        clock.request_started();
        assert_eq!(clock.deadline(), None);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        clock.request_finished(None);
        assert_eq!(
            clock.deadline(),
            Some((
                start + Duration::from_millis(3_000),
                ConnectionTimeout::Idle
            ))
        );
        tokio::time::advance(Duration::from_millis(700)).await;
        clock.bytes_arrived();
        assert_eq!(
            clock.deadline(),
            Some((
                start + Duration::from_millis(2_200),
                ConnectionTimeout::Header
            ))
        );
        clock.request_started();
        clock.upgraded();
        clock.request_finished(None);
        assert_eq!(
            clock.deadline(),
            None,
            "an upgraded connection stays untimed"
        );
    }

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serves `router` with short timeouts on a free port: the address, the shutdown token and the
    /// server's task.
    async fn start(router: Router) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let metrics: &'static HttpMetrics = Box::leak(Box::default());
        let bounds = || HttpConfig {
            max_connections: 100,
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
        };
        let server = tokio::spawn(serve(
            listener,
            router,
            bounds,
            metrics,
            Arc::new(AcceptHealth::default()),
            shutdown.clone(),
        ));
        (addr, shutdown, server)
    }

    /// Reads one response with a `content-length` body; `None` at EOF.
    async fn response(stream: &mut TcpStream) -> Option<String> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= length {
                    return Some(text);
                }
            }
            let read = stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..read]);
        }
    }

    #[tokio::test]
    async fn handlers_see_the_peer_and_a_drain_finishes_the_request_in_progress() {
        let router = Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }),
            );
        let (addr, shutdown, server) = start(router).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let me = client.local_addr().expect("local address").to_string();
        client
            .write_all(b"GET /peer HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        let answer = response(&mut client).await.expect("answer");
        assert!(answer.ends_with(&me), "{answer}");
        // Kept alive: the slow request goes on the same connection, and is in progress (longer
        // than the idle timeout) when the drain starts.
        client
            .write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        let answer = response(&mut client)
            .await
            .expect("the request in progress finishes");
        assert!(answer.ends_with("done"), "{answer}");
        assert_eq!(response(&mut client).await, None, "closed after it");
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the server ends once drained")
            .expect("server task");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no new connections"
        );
    }

    #[tokio::test]
    async fn an_upgraded_connection_is_not_timed() {
        let router = Router::new().route(
            "/echo",
            get(|mut request: Request| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut chunk = [0u8; 64];
                        while let Ok(read) = io.read(&mut chunk).await {
                            if read == 0 || io.write_all(&chunk[..read]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(Body::empty())
                    .unwrap_or_default()
            }),
        );
        let (addr, shutdown, _server) = start(router).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(
                b"GET /echo HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            )
            .await
            .expect("write");
        let answer = response(&mut client).await.expect("101");
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        // Past both timeouts (300 ms), then half a line: an HTTP connection would be closed by now.
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.write_all(b"still here").await.expect("write");
        let mut echoed = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&echoed, b"still here");
        shutdown.cancel();
    }

    #[test]
    fn accept_health_turns_bad_on_exhaustion_only_for_a_while() {
        let health = AcceptHealth::default();
        assert_eq!(health.check(), Ok(()));
        health.exhausted(&std::io::Error::from_raw_os_error(libc::EMFILE));
        let reason = health.check().expect_err("not ready right after");
        assert!(
            reason.starts_with("cannot accept HTTP connections: Too many open files"),
            "{reason}"
        );
        assert_eq!(
            AcceptError::of(&std::io::Error::from_raw_os_error(libc::ENFILE)),
            AcceptError::FileDescriptors
        );
        assert!(
            !AcceptError::of(&std::io::Error::from_raw_os_error(libc::ECONNABORTED))
                .is_exhaustion()
        );
        assert!(AcceptError::of(&std::io::Error::from_raw_os_error(libc::EINVAL)).is_exhaustion());
    }
}
