//! HTTP figures: requests by route class and status class, a latency histogram, bytes, requests in
//! flight, open connections and what the bounds of the port turned away.
//!
//! The hot path is a handful of relaxed atomic additions into fixed arrays (no map lookup, no lock);
//! buckets are kept per bucket and made cumulative only when scraped.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::response::Response;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

/// What kind of path a request was for: a small fixed set, so labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// The demo application, `/app/...`.
    App,
    /// The session REST API, `/api/sessions...`.
    SessionsApi,
    /// Cluster administration and status, `/cluster/...`.
    Cluster,
    /// `/ping`, `/livez`, `/readyz`.
    Probe,
    /// `/metrics`.
    Metrics,
    /// The web console, `/console...`.
    Console,
    /// Anything else (routed like an application request).
    Other,
}

impl RouteClass {
    /// Every class, in label order.
    pub const ALL: [RouteClass; 7] = [
        RouteClass::App,
        RouteClass::SessionsApi,
        RouteClass::Cluster,
        RouteClass::Probe,
        RouteClass::Metrics,
        RouteClass::Console,
        RouteClass::Other,
    ];

    /// The class of a request path.
    pub fn of(path: &str) -> RouteClass {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/app") {
            RouteClass::App
        } else if under("/api/sessions") {
            RouteClass::SessionsApi
        } else if under("/cluster") {
            RouteClass::Cluster
        } else if matches!(path, "/ping" | "/livez" | "/readyz") {
            RouteClass::Probe
        } else if path == "/metrics" {
            RouteClass::Metrics
        } else if under("/console") {
            RouteClass::Console
        } else {
            RouteClass::Other
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::App => "app",
            RouteClass::SessionsApi => "sessions_api",
            RouteClass::Cluster => "cluster",
            RouteClass::Probe => "probe",
            RouteClass::Metrics => "metrics",
            RouteClass::Console => "console",
            RouteClass::Other => "other",
        }
    }

    /// Whether requests of this class are work done for users (not probes or scrapes); in-node
    /// error-rate and latency alerts look at these only, so a busy scraper cannot dilute them.
    pub fn is_user_traffic(self) -> bool {
        !matches!(self, RouteClass::Probe | RouteClass::Metrics)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Status classes `1xx` to `5xx`, in label order.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`STATUS_CLASSES`]; hyper only produces codes 100 to 999, anything past 5xx counts as 5xx.
fn status_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Upper bounds of the latency buckets, in seconds (`+Inf` is implied). 0.5 s is a bound so the
/// p99 alert's threshold falls on one.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over atomics: per-bucket (not cumulative) counts and the sum; the count is
/// the buckets' total, so the two always agree.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One slot per bound plus one for `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A copy of a histogram at one instant, with cumulative buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative count at or below each bound of [`LATENCY_BUCKETS`], then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        // Nanoseconds in a u64 last for 584 years of summed latency.
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The histogram now, buckets made cumulative.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: running,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl HistogramSnapshot {
    /// Adds another snapshot's figures (same buckets) to this one.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.cumulative.len() < other.cumulative.len() {
            self.cumulative.resize(other.cumulative.len(), 0);
        }
        for (mine, theirs) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// What happened between `earlier` and this snapshot (counters only grow).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let cumulative = self
            .cumulative
            .iter()
            .enumerate()
            .map(|(i, now)| now.saturating_sub(earlier.cumulative.get(i).copied().unwrap_or(0)))
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.saturating_sub(earlier.count),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }

    /// `(upper bound, count in that bucket alone)` pairs, `+Inf` last: what the encoder takes.
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let mut previous = 0;
        bounds
            .zip(&self.cumulative)
            .map(|(bound, cumulative)| {
                let alone = cumulative.saturating_sub(previous);
                previous = *cumulative;
                (bound, alone)
            })
            .collect()
    }

    /// The `q` quantile (0..=1) in seconds, interpolated inside its bucket as Prometheus's
    /// `histogram_quantile` does; `None` without observations. Past the last bound it is that bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let below = self.cumulative.get(i).copied().unwrap_or(0) as f64;
            if below >= rank {
                let (lower, before) = match i {
                    0 => (0.0, 0.0),
                    _ => (
                        LATENCY_BUCKETS[i - 1],
                        self.cumulative.get(i - 1).copied().unwrap_or(0) as f64,
                    ),
                };
                let in_bucket = below - before;
                if in_bucket <= 0.0 {
                    return Some(*bound);
                }
                return Some(lower + (bound - lower) * (rank - before) / in_bucket);
            }
        }
        LATENCY_BUCKETS.last().copied()
    }
}

/// Requests of one route class.
#[derive(Debug, Default)]
struct RouteFigures {
    by_status: [AtomicU64; STATUS_CLASSES.len()],
    latency: LatencyHistogram,
}

/// Shards of the per-request counters: each thread writes its own, a scrape adds them up. Shared
/// counters would bounce their cache lines between cores on every request.
const SHARDS: usize = 16;

/// One thread's share of the per-request counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    routes: [RouteFigures; RouteClass::ALL.len()],
    /// Incremented and decremented on whatever thread runs the request: a shard may go negative,
    /// the sum does not.
    in_flight: AtomicI64,
    request_body_bytes: AtomicU64,
    response_body_bytes: AtomicU64,
}

/// The shard of the calling thread: threads take indexes in turn when they first count something.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|index| *index)
}

/// Every HTTP figure of one node.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    shards: [Shard; SHARDS],
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    timed_out: [AtomicU64; ConnectionTimeout::ALL.len()],
    accept_errors: [AtomicU64; AcceptError::ALL.len()],
}

/// Which bound closed a connection that took too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionTimeout {
    /// The request head did not arrive within `header-timeout-ms`.
    Header,
    /// No request came within `idle-timeout-ms` on a kept-alive connection.
    Idle,
}

impl ConnectionTimeout {
    /// Every kind, in label order.
    pub const ALL: [ConnectionTimeout; 2] = [ConnectionTimeout::Header, ConnectionTimeout::Idle];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionTimeout::Header => "header",
            ConnectionTimeout::Idle => "idle",
        }
    }
}

/// Why accepting a connection failed, in a few bounded kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptError {
    /// The process or the system is out of file descriptors (`EMFILE`, `ENFILE`).
    FileDescriptors,
    /// The kernel is out of memory for sockets (`ENOBUFS`, `ENOMEM`).
    Memory,
    /// One client's connection failed before it was accepted (`ECONNABORTED`, `ECONNRESET`,
    /// `EPROTO`, `EPERM` from a firewall): the next accept is another connection.
    Connection,
    /// Anything else: unknown, so taken as the port being unable to accept.
    Other,
}

impl AcceptError {
    /// Every kind, in label order.
    pub const ALL: [AcceptError; 4] = [
        AcceptError::FileDescriptors,
        AcceptError::Memory,
        AcceptError::Connection,
        AcceptError::Other,
    ];

    /// The kind of an accept error.
    pub fn of(err: &std::io::Error) -> AcceptError {
        match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => AcceptError::FileDescriptors,
            Some(libc::ENOBUFS | libc::ENOMEM) => AcceptError::Memory,
            Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM) => {
                AcceptError::Connection
            }
            _ => AcceptError::Other,
        }
    }

    /// Whether the port itself cannot accept (it would fail the next client too), rather than one
    /// client's connection having failed.
    pub fn is_exhaustion(self) -> bool {
        !matches!(self, AcceptError::Connection)
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptError::FileDescriptors => "file_descriptors",
            AcceptError::Memory => "memory",
            AcceptError::Connection => "connection",
            AcceptError::Other => "other",
        }
    }
}

/// Request totals of user traffic, for the in-node alerts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficTotals {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
    /// Their latency.
    pub latency: HistogramSnapshot,
}

impl HttpMetrics {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    fn sum(&self, read: impl Fn(&Shard) -> u64) -> u64 {
        self.shards.iter().map(read).sum()
    }

    /// Records one answered request.
    pub fn record(&self, class: RouteClass, status: u16, seconds: f64) {
        let route = &self.shard().routes[class.index()];
        route.by_status[status_index(status)].fetch_add(1, Ordering::Relaxed);
        route.latency.observe(seconds);
    }

    /// Requests answered for `class` with a status in `STATUS_CLASSES[status_class]`.
    pub fn requests(&self, class: RouteClass, status_class: usize) -> u64 {
        self.sum(|shard| {
            shard.routes[class.index()]
                .by_status
                .get(status_class)
                .map_or(0, |count| count.load(Ordering::Relaxed))
        })
    }

    /// Every request answered since start, all classes.
    pub fn requests_total(&self) -> u64 {
        self.sum(|shard| {
            shard
                .routes
                .iter()
                .flat_map(|route| route.by_status.iter())
                .map(|count| count.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// The latency histogram of `class`.
    pub fn latency(&self, class: RouteClass) -> HistogramSnapshot {
        let mut total = HistogramSnapshot::default();
        for shard in &self.shards {
            total.add(&shard.routes[class.index()].latency.snapshot());
        }
        total
    }

    /// Totals over user traffic (every class but probes and scrapes).
    pub fn user_traffic(&self) -> TrafficTotals {
        let mut totals = TrafficTotals::default();
        for class in RouteClass::ALL
            .into_iter()
            .filter(|class| class.is_user_traffic())
        {
            for status_class in 0..STATUS_CLASSES.len() {
                let count = self.requests(class, status_class);
                totals.requests += count;
                if status_class == 4 {
                    totals.errors += count;
                }
            }
            totals.latency.add(&self.latency(class));
        }
        totals
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> u64 {
        let total: i64 = self
            .shards
            .iter()
            .map(|shard| shard.in_flight.load(Ordering::Relaxed))
            .sum();
        total.max(0) as u64
    }

    /// HTTP connections open right now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed).max(0) as u64
    }

    /// HTTP connections accepted since start.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max-connections` were open.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Counts a connection closed at once because `max-connections` were open.
    pub fn refused_connection(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed by `timeout`.
    pub fn timed_out(&self, timeout: ConnectionTimeout) -> u64 {
        self.timed_out[timeout as usize].load(Ordering::Relaxed)
    }

    /// Counts a connection closed by `timeout`.
    pub fn connection_timed_out(&self, timeout: ConnectionTimeout) {
        self.timed_out[timeout as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed accepts of `kind`.
    pub fn accept_errors(&self, kind: AcceptError) -> u64 {
        self.accept_errors[kind as usize].load(Ordering::Relaxed)
    }

    /// Counts a failed accept.
    pub fn accept_failed(&self, kind: AcceptError) {
        self.accept_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `stream` open until it is dropped.
    pub fn count_connection(&'static self, stream: TcpStream) -> CountedStream {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        CountedStream {
            inner: stream,
            metrics: self,
        }
    }

    /// Request body bytes received (where the size was known).
    pub fn request_body_bytes(&self) -> u64 {
        self.sum(|shard| shard.request_body_bytes.load(Ordering::Relaxed))
    }

    /// Response body bytes sent (where the size was known).
    pub fn response_body_bytes(&self) -> u64 {
        self.sum(|shard| shard.response_body_bytes.load(Ordering::Relaxed))
    }
}

/// The node's whole HTTP service, measured: route class from the path, time until the response head
/// is ready (a streamed body, such as an event stream, is not waited for), body sizes where known.
///
/// A plain tower service around the router rather than an axum `from_fn` middleware: no allocation
/// and no extractor machinery per request. With `metrics` `None` (`<metrics enabled="false"/>`)
/// requests pass straight through, measured by nothing.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Option<&'static HttpMetrics>,
}

impl<S> Measured<S> {
    /// Measures every request to `inner` into `metrics`, if any.
    pub fn new(inner: S, metrics: Option<&'static HttpMetrics>) -> Measured<S> {
        Measured { inner, metrics }
    }
}

impl<S> Service<Request> for Measured<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let measurement = self.metrics.map(|metrics| {
            let shard = metrics.shard();
            if let Some(bytes) = request.body().size_hint().exact()
                && bytes > 0
            {
                shard.request_body_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            shard.in_flight.fetch_add(1, Ordering::Relaxed);
            Measurement {
                metrics,
                class: RouteClass::of(request.uri().path()),
                started: Instant::now(),
            }
        });
        MeasuredFuture {
            inner: self.inner.call(request),
            measurement,
        }
    }
}

/// One request being measured; leaving the in-flight count when dropped, even if the request is
/// abandoned half-way.
struct Measurement {
    metrics: &'static HttpMetrics,
    class: RouteClass,
    started: Instant,
}

impl Drop for Measurement {
    fn drop(&mut self) {
        self.metrics
            .shard()
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Measured`].
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        measurement: Option<Measurement>,
    }
}

impl<F, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(measurement)) = (&result, this.measurement.take()) {
            let metrics = measurement.metrics;
            metrics.record(
                measurement.class,
                response.status().as_u16(),
                measurement.started.elapsed().as_secs_f64(),
            );
            if let Some(bytes) = response.body().size_hint().exact()
                && bytes > 0
            {
                metrics
                    .shard()
                    .response_body_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
            }
        }
        Poll::Ready(result)
    }
}

/// A connection that is counted open until it is dropped.
pub struct CountedStream {
    inner: TcpStream,
    metrics: &'static HttpMetrics,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

// Writes go straight to the socket: only connections and reads are counted here.
forward_async_write!(CountedStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes_are_a_small_fixed_set() {
        for (path, class) in [
            ("/app/counter", RouteClass::App),
            ("/app", RouteClass::App),
            ("/apple", RouteClass::Other),
            ("/api/sessions", RouteClass::SessionsApi),
            ("/api/sessions/0123abcd", RouteClass::SessionsApi),
            ("/cluster/status", RouteClass::Cluster),
            ("/ping", RouteClass::Probe),
            ("/readyz", RouteClass::Probe),
            ("/metrics", RouteClass::Metrics),
            ("/console", RouteClass::Console),
            ("/console/app.js", RouteClass::Console),
            ("/", RouteClass::Other),
            ("/some/user/page", RouteClass::Other),
        ] {
            assert_eq!(RouteClass::of(path), class, "{path}");
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(STATUS_CLASSES[status_index(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_index(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_index(404)], "4xx");
        assert_eq!(STATUS_CLASSES[status_index(503)], "5xx");
        assert_eq!(STATUS_CLASSES[status_index(999)], "5xx");
        assert_eq!(STATUS_CLASSES[status_index(0)], "1xx");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_quantiles_interpolate() {
        let histogram = LatencyHistogram::default();
        for _ in 0..98 {
            histogram.observe(0.002);
        }
        histogram.observe(0.7);
        histogram.observe(20.0);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 100);
        assert_eq!(snapshot.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(snapshot.cumulative[0], 0); // ≤ 0.5 ms
        assert_eq!(snapshot.cumulative[2], 98); // ≤ 2.5 ms
        assert_eq!(snapshot.cumulative[9], 98); // ≤ 0.5 s
        assert_eq!(snapshot.cumulative[10], 99); // ≤ 1 s
        assert_eq!(*snapshot.cumulative.last().expect("+Inf"), 100);
        assert!((snapshot.sum_seconds - (98.0 * 0.002 + 20.7)).abs() < 1e-6);
        let p50 = snapshot.quantile(0.5).expect("p50");
        assert!(p50 > 0.001 && p50 <= 0.0025, "{p50}");
        let p99 = snapshot.quantile(0.99).expect("p99");
        assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
        assert_eq!(HistogramSnapshot::default().quantile(0.99), None);
        let later = {
            histogram.observe(0.002);
            histogram.snapshot()
        };
        let delta = later.since(&snapshot);
        assert_eq!(delta.count, 1);
        assert_eq!(delta.cumulative[2], 1);
    }

    #[tokio::test]
    async fn the_measured_router_counts_each_request_once() {
        use tower::ServiceExt as _;
        let router = axum::Router::new().route(
            "/app/fail",
            axum::routing::post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "nope") }),
        );
        let metrics: &'static HttpMetrics = Box::leak(Box::default());
        let service = Measured::new(router.clone(), Some(metrics));
        let request = axum::http::Request::post("/app/fail")
            .body(axum::body::Body::from("12345"))
            .expect("request");
        let response = service.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), 503);
        assert_eq!(metrics.requests(RouteClass::App, 4), 1);
        assert_eq!(metrics.requests_total(), 1);
        assert_eq!(metrics.latency(RouteClass::App).count, 1);
        assert_eq!(metrics.request_body_bytes(), 5);
        assert_eq!(metrics.response_body_bytes(), 4);
        assert_eq!(metrics.in_flight(), 0);

        // Turned off: the request passes, nothing is counted.
        let off = Measured::new(router, None);
        let request = axum::http::Request::post("/app/fail")
            .body(axum::body::Body::empty())
            .expect("request");
        assert_eq!(
            off.oneshot(request).await.expect("infallible").status(),
            503
        );
        assert_eq!(metrics.requests_total(), 1);
    }

    /// What measuring adds to a request, without the network: the same trivial route called through
    /// `Measured` with metrics on and off, on two threads at once (as on the two-core test machine).
    /// `cargo test --release --lib -- --ignored --nocapture measured_router_overhead`
    #[test]
    #[ignore = "a benchmark: run in release, see BENCHMARKS.md"]
    fn measured_router_overhead() {
        use tower::ServiceExt as _;
        const CALLS: usize = 200_000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let router =
            axum::Router::new().route("/app/hello", axum::routing::get(|| async { "hello" }));
        let metrics: &'static HttpMetrics = Box::leak(Box::default());
        let run = |measured: Option<&'static HttpMetrics>| {
            let service = Measured::new(router.clone(), measured);
            runtime.block_on(async {
                let started = Instant::now();
                let workers: Vec<_> = (0..2)
                    .map(|_| {
                        let service = service.clone();
                        tokio::spawn(async move {
                            for _ in 0..CALLS / 2 {
                                let request = axum::http::Request::get("/app/hello")
                                    .body(axum::body::Body::empty())
                                    .expect("request");
                                let response = service.clone().oneshot(request).await;
                                assert!(response.is_ok());
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.await.expect("worker");
                }
                started.elapsed().as_nanos() as f64 / CALLS as f64
            })
        };
        let (mut on, mut off) = (f64::MAX, f64::MAX);
        for _ in 0..7 {
            off = off.min(run(None));
            on = on.min(run(Some(metrics)));
        }
        println!(
            "per request (wall, 2 threads, best of 7): off {off:.0} ns, on {on:.0} ns, measuring adds {:.0} ns",
            on - off
        );
        assert_eq!(metrics.requests_total(), 7 * CALLS as u64);
    }

    #[test]
    fn user_traffic_leaves_out_probes_and_scrapes() {
        let metrics = HttpMetrics::default();
        metrics.record(RouteClass::App, 200, 0.001);
        metrics.record(RouteClass::App, 502, 0.001);
        metrics.record(RouteClass::SessionsApi, 201, 0.001);
        metrics.record(RouteClass::Metrics, 200, 0.001);
        metrics.record(RouteClass::Probe, 503, 0.001);
        let totals = metrics.user_traffic();
        assert_eq!((totals.requests, totals.errors), (3, 1));
        assert_eq!(totals.latency.count, 3);
        assert_eq!(metrics.requests_total(), 5);
        assert_eq!(metrics.requests(RouteClass::App, 4), 1);
    }
}
