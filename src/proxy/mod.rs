//! Forwards a request to another member: over pooled keep-alive HTTP/1.1 connections (`http`: one
//! pool per member), or over the member's hop channel ([`hop`]) when the request is held in memory.
//!
//! What is the same whichever way a request travels lives here: the head rewrite (hop-by-hop fields,
//! `X-Forwarded-For`, the hop header), the classification of failures into [`ProxyError`] (whose
//! fault, whether a retry is safe) and the failure count that ejects a member. Bodies stream both
//! ways; nothing is buffered unless the caller asks for it with [`buffer_for_retry`].
//!
//! Retries are the caller's loop over the balancer's candidates. A request can only be sent twice if it
//! is still in hand: [`buffer_for_retry`] keeps requests whose body has a known length ≤ a limit
//! ([`RETRY_BUFFER_LIMIT`] by default; bodiless requests always qualify) in memory; larger or chunked
//! bodies are forwarded once, streaming, and a failure is answered with an error instead of a retry.
//! Upgrades (WebSocket) are not proxied: `Upgrade` is a hop-by-hop header and is removed.

pub mod hop;
mod http;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, Version};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;

use crate::balancer::Target;
use crate::balancer::health::Ejections;
use crate::crypto::HopToken;
use http::{HttpFailure, HttpPools};

/// Set on proxied requests: the receiver must serve locally, never proxy again. The value is the
/// forwarding node's name and its [`HopToken`] (`node-1 0123…`); the receiver honours it only from a
/// hop channel or with the token a live member gossips, and hands the application the name alone.
pub const HOP_HEADER: &str = "x-micro-tomcat-hop";
/// How long opening a connection to a member may take, unless `<balancer connect-timeout-ms>` says otherwise.
pub const CONNECT_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_CONNECT_TIMEOUT_MS);
/// How long a member may take to send response headers, counted from the start of the exchange,
/// unless `<balancer response-timeout-ms>` says otherwise.
pub const RESPONSE_TIMEOUT: Duration =
    Duration::from_millis(crate::config::DEFAULT_RESPONSE_TIMEOUT_MS);
/// Consecutive failures after which a member is ejected from balancing.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long an ejected member gets no work before it is tried again.
pub const EJECTION_WINDOW: Duration = Duration::from_secs(5);
/// Bodies up to this size are kept in memory so the request can be retried on another member.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// Timeouts and ejection policy; [`Default`] uses the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// How long opening a connection may take (at first: [`Proxy::set_connect_timeout`] changes it).
    pub connect_timeout: Duration,
    /// How long until the response headers arrive ([`Proxy::forward_within`] takes another).
    pub response_timeout: Duration,
    /// Consecutive failures that eject a member.
    pub eject_after_failures: u32,
    /// How long an ejection lasts.
    pub ejection_window: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: CONNECT_TIMEOUT,
            response_timeout: RESPONSE_TIMEOUT,
            eject_after_failures: EJECT_AFTER_FAILURES,
            ejection_window: EJECTION_WINDOW,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection could be opened; the request never left this node.
    #[error("could not connect to member {target}")]
    Connect {
        /// The member's name.
        target: String,
        /// What the client reported.
        source: BoxError,
    },
    /// The member answered that it did not serve the request (it is shutting down, say); it may
    /// be sent elsewhere whatever its method.
    #[error("member {target} refused the request: {reason}")]
    Refused {
        /// The member's name.
        target: String,
        /// Why.
        reason: String,
    },
    /// The connection failed after the request was (partly) written, before response headers arrived.
    #[error("member {target} failed before responding")]
    BeforeResponse {
        /// The member's name.
        target: String,
        /// What the client reported.
        source: BoxError,
        /// Whether any of the request body had been handed to the connection.
        body_sent: bool,
    },
    /// No response headers within the response timeout.
    #[error("member {target} sent no response within the timeout")]
    Timeout {
        /// The member's name.
        target: String,
    },
    /// The request's URI cannot be pointed at the member (e.g. a `CONNECT` authority-form target).
    #[error("cannot forward request URI to member {target}")]
    InvalidUri {
        /// The member's name.
        target: String,
        /// Why the URI was rejected.
        source: axum::http::uri::InvalidUriParts,
    },
    /// Reading the client's request body failed; not the member's fault, answer 400.
    #[error("reading the client's request body failed")]
    ClientBody {
        /// What went wrong while reading.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ProxyError {
    /// Whether the request may be sent to another member (given the caller still holds it):
    /// a connect failure always; a failure after sending only for an `idempotent` request.
    pub fn is_retryable(&self, idempotent: bool) -> bool {
        match self {
            ProxyError::Connect { .. } | ProxyError::Refused { .. } => true,
            ProxyError::BeforeResponse { .. } | ProxyError::Timeout { .. } => idempotent,
            ProxyError::InvalidUri { .. } | ProxyError::ClientBody { .. } => false,
        }
    }

    /// The member the failure is about, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            ProxyError::Connect { target, .. }
            | ProxyError::Refused { target, .. }
            | ProxyError::BeforeResponse { target, .. }
            | ProxyError::Timeout { target }
            | ProxyError::InvalidUri { target, .. } => Some(target),
            ProxyError::ClientBody { .. } => None,
        }
    }
}

/// Marks a response that came over a hop channel (for the per-member counters in status).
#[derive(Debug, Clone, Copy)]
pub struct OverHop;

/// Whether sending `method` twice has the effect of sending it once (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

/// A request held in memory, so it can be sent to one member after another.
#[derive(Debug, Clone)]
pub struct ReplayableRequest {
    parts: Parts,
    body: Bytes,
}

impl ReplayableRequest {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// A fresh copy of the request, ready for [`Proxy::forward`].
    pub fn to_request(&self) -> Request {
        Request::from_parts(self.parts.clone(), Body::from(self.body.clone()))
    }
}

/// A request made ready for forwarding by [`buffer_for_retry`].
#[derive(Debug)]
pub enum PreparedRequest {
    /// Held in memory: may be sent again after a retryable failure.
    Replayable(ReplayableRequest),
    /// Too large or of unknown length: forwarded once, streaming.
    Streaming(Request),
}

/// Keeps `request` in memory when its body's length is known and at most `limit` bytes (bodiless
/// requests always qualify); otherwise hands it back untouched for a single streaming attempt.
pub async fn buffer_for_retry(
    request: Request,
    limit: usize,
) -> Result<PreparedRequest, ProxyError> {
    let fits = request
        .body()
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= limit as u64);
    if !fits {
        return Ok(PreparedRequest::Streaming(request));
    }
    let (parts, body) = request.into_parts();
    // Nothing to read (a GET, say): no buffering at all.
    if body.is_end_stream() {
        return Ok(PreparedRequest::Replayable(ReplayableRequest {
            parts,
            body: Bytes::new(),
        }));
    }
    // Limited guards against a body that sends more than its declared length.
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|source| ProxyError::ClientBody { source })?
        .to_bytes();
    Ok(PreparedRequest::Replayable(ReplayableRequest {
        parts,
        body,
    }))
}

/// Forwards requests to other members and tracks which of them keep failing.
pub struct Proxy {
    self_name: String,
    /// This node's proof of membership in the hop header; `None` only if the system's random
    /// number generator failed, and then members route what this node proxies over HTTP again.
    hop_token: Option<HopToken>,
    hop_value: HeaderValue,
    settings: ProxySettings,
    /// One pooled HTTP client per member.
    http: HttpPools,
    /// Who keeps failing, and who is ejected for it.
    ejections: Ejections,
    /// Hop channels for requests held in memory, when enabled.
    hop: Option<hop::HopClient>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("self_name", &self.self_name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy for the node named `self_name`, with the default timeouts and ejection policy.
    pub fn new(self_name: &str) -> Proxy {
        Proxy::with_settings(self_name, ProxySettings::default())
    }

    /// A proxy with explicit timeouts and ejection policy.
    pub fn with_settings(self_name: &str, settings: ProxySettings) -> Proxy {
        let hop_token = match HopToken::generate() {
            Ok(token) => Some(token),
            Err(err) => {
                tracing::warn!(node = %self_name, error = %err, "no hop token: members will route this node's proxied HTTP requests again");
                None
            }
        };
        let hop_text = match &hop_token {
            Some(token) => format!("{self_name} {}", token.to_wire()),
            None => self_name.to_owned(),
        };
        Proxy {
            self_name: self_name.to_owned(),
            // Node names are validated config, but never trust them into a header blindly.
            hop_value: HeaderValue::from_str(&hop_text).unwrap_or(HeaderValue::from_static("1")),
            hop_token,
            settings,
            http: HttpPools::new(settings.connect_timeout),
            ejections: Ejections::new(settings.eject_after_failures, settings.ejection_window),
            hop: None,
        }
    }

    /// The token this node sends in the hop header (to be published in gossip).
    pub fn hop_token(&self) -> Option<&HopToken> {
        self.hop_token.as_ref()
    }

    /// Forgets member `name`: closes its idle pooled connections and its failure history. Call it when
    /// the member goes down or leaves.
    pub fn drop_pool(&self, name: &str) {
        self.http.forget(name);
        self.ejections.forget(name);
        if let Some(hop) = &self.hop {
            hop.forget(name);
        }
    }

    /// Changes the connect timeout. A member's client keeps the timeout it was built with, so the
    /// pools are dropped (idle connections closed) when it changes; requests in flight are not touched.
    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.http.set_connect_timeout(timeout);
    }

    /// The connect timeout of connections opened from now on.
    pub fn connect_timeout(&self) -> Duration {
        self.http.connect_timeout()
    }

    /// Sends `request` to `target` and returns its response, whose body streams from the member.
    /// Records the outcome for ejection; a failure of the client's own body is not held against the member.
    pub async fn forward(
        &self,
        target: &Target,
        request: Request,
        client_ip: IpAddr,
    ) -> Result<Response, ProxyError> {
        self.forward_within(target, request, client_ip, self.settings.response_timeout)
            .await
    }

    /// [`Proxy::forward`] with this response timeout (the caller's live setting).
    pub async fn forward_within(
        &self,
        target: &Target,
        request: Request,
        client_ip: IpAddr,
        response_timeout: Duration,
    ) -> Result<Response, ProxyError> {
        let (mut parts, body) = request.into_parts();
        self.prepare_head(&mut parts, client_ip);
        let name = || target.name.clone();
        let error = match self.http.send(target, parts, body, response_timeout).await {
            Ok(mut response) => {
                self.record_success(&target.name);
                remove_hop_by_hop(response.headers_mut());
                return Ok(response);
            }
            Err(HttpFailure::InvalidUri(source)) => {
                return Err(ProxyError::InvalidUri {
                    target: name(),
                    source,
                });
            }
            Err(HttpFailure::ClientBody(source)) => {
                return Err(ProxyError::ClientBody {
                    source: Box::new(source),
                });
            }
            Err(HttpFailure::ClientBodyTimeout) => {
                return Err(ProxyError::ClientBody {
                    source: Box::new(ClientBodyTimeout),
                });
            }
            Err(HttpFailure::Connect(source)) => ProxyError::Connect {
                target: name(),
                source: Box::new(source),
            },
            Err(HttpFailure::BeforeResponse { source, body_sent }) => ProxyError::BeforeResponse {
                target: name(),
                source: Box::new(source),
                body_sent,
            },
            Err(HttpFailure::Timeout) => ProxyError::Timeout { target: name() },
        };
        tracing::debug!(node = %self.self_name, peer = %target.name, error = %error, "proxy attempt failed");
        self.record_failure(&target.name);
        Err(error)
    }

    /// Rewrites a request head for the member: HTTP/1.1, hop-by-hop fields removed, the client named
    /// in `X-Forwarded-For`, and the hop header that makes the member serve it itself.
    fn prepare_head(&self, parts: &mut Parts, client_ip: IpAddr) {
        // The pool speaks HTTP/1.1 whatever the client spoke to us.
        parts.version = Version::HTTP_11;
        remove_hop_by_hop(&mut parts.headers);
        append_forwarded_for(&mut parts.headers, client_ip);
        if !parts.headers.contains_key(X_FORWARDED_PROTO) {
            parts
                .headers
                .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        parts
            .headers
            .insert(HeaderName::from_static(HOP_HEADER), self.hop_value.clone());
    }

    /// Sends hop-eligible requests over hop channels opened with `client` (see [`hop`]).
    pub fn with_hop(mut self, client: hop::HopClient) -> Proxy {
        self.hop = Some(client);
        self
    }

    /// Whether requests held in memory go over hop channels.
    pub fn uses_hop(&self) -> bool {
        self.hop.is_some()
    }

    /// [`Proxy::forward_within`] for a request held in memory: over the member's hop channel when
    /// this proxy has them and the member takes them, else over HTTP.
    pub async fn forward_replayable(
        &self,
        target: &Target,
        request: &ReplayableRequest,
        client_ip: IpAddr,
        response_timeout: Duration,
    ) -> Result<Response, ProxyError> {
        // A member reached over HTTP for now answers `Unsupported` at once, before anything is sent.
        if let (Some(hop), Some(cluster_addr)) = (&self.hop, target.cluster_addr) {
            let mut parts = request.parts.clone();
            self.prepare_head(&mut parts, client_ip);
            let sent = hop
                .send(
                    &target.name,
                    cluster_addr,
                    &parts,
                    &request.body,
                    self.connect_timeout(),
                    response_timeout,
                )
                .await;
            let name = || target.name.clone();
            let error = match sent {
                Ok(mut response) => {
                    self.record_success(&target.name);
                    remove_hop_by_hop(response.headers_mut());
                    response.extensions_mut().insert(OverHop);
                    return Ok(response);
                }
                Err(hop::HopError::Unsupported) => None,
                Err(hop::HopError::Connect(source)) => Some(ProxyError::Connect {
                    target: name(),
                    source: Box::new(source),
                }),
                Err(hop::HopError::Refused(reason)) => Some(ProxyError::Refused {
                    target: name(),
                    reason,
                }),
                Err(hop::HopError::Lost(reason)) => Some(ProxyError::BeforeResponse {
                    target: name(),
                    source: reason.into(),
                    body_sent: true,
                }),
                Err(hop::HopError::Timeout(_)) => Some(ProxyError::Timeout { target: name() }),
            };
            if let Some(error) = error {
                tracing::debug!(node = %self.self_name, peer = %target.name, error = %error, "proxy attempt failed");
                self.record_failure(&target.name);
                return Err(error);
            }
        }
        self.forward_within(target, request.to_request(), client_ip, response_timeout)
            .await
    }

    /// Counts a failed exchange with `name`; the threshold-th consecutive one ejects it, and so does any
    /// failure of the trial request after an ejection ends.
    pub fn record_failure(&self, name: &str) {
        if let Some(failures) = self.ejections.record_failure(name) {
            tracing::warn!(
                node = %self.self_name,
                peer = %name,
                failures,
                window_ms = self.settings.ejection_window.as_millis() as u64,
                "member ejected from balancing"
            );
        }
    }

    /// Counts a successful exchange with `name`: clears its failures and any ejection.
    pub fn record_success(&self, name: &str) {
        if self.ejections.record_success(name) {
            tracing::info!(node = %self.self_name, peer = %name, "member back in balancing");
        }
    }

    /// Members ejected now (≥ the failure threshold in a row, ejection window not yet over).
    pub fn ejected(&self) -> HashSet<String> {
        self.ejections.ejected()
    }

    /// The ejection bookkeeping, to be told when the ejected set changes.
    pub fn ejections(&self) -> &Ejections {
        &self.ejections
    }

    /// Whether member `name` is ejected now.
    pub fn is_ejected(&self, name: &str) -> bool {
        self.ejections.is_ejected(name)
    }
}

/// The client had not sent the rest of its request body when the response timeout ran out.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client did not send its request body in time")]
pub struct ClientBodyTimeout;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1), including
/// any the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
}

/// Appends `client_ip` to `X-Forwarded-For`, folding earlier values into one comma-separated line.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: IpAddr) {
    let client = client_ip.to_canonical().to_string();
    let mut value: Vec<u8> = Vec::new();
    for earlier in headers.get_all(&X_FORWARDED_FOR) {
        value.extend_from_slice(earlier.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(client.as_bytes());
    let value = HeaderValue::from_bytes(&value)
        .or_else(|_| HeaderValue::from_str(&client))
        .unwrap_or(HeaderValue::from_static("unknown"));
    headers.insert(X_FORWARDED_FOR, value);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::Frame;

    use axum::Router;
    use axum::routing::any;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    async fn serve(router: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn target(name: &str, http_addr: SocketAddr) -> Target {
        Target {
            name: name.to_owned(),
            http_addr,
            cluster_addr: None,
        }
    }

    /// A port nothing listens on: bound, then released.
    async fn dead_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("local addr")
    }

    /// A member that accepts connections and never answers; returns its address.
    async fn silent_member() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket); // never answers
            }
        });
        addr
    }

    /// Answers with what it received: method, URI, headers and body as JSON.
    fn inspector() -> Router {
        Router::new().fallback(any(|request: Request| async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: HashMap<String, Vec<String>> = parts
                .headers
                .keys()
                .map(|name| {
                    let values = parts
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (name.to_string(), values)
                })
                .collect();
            let json = serde_json::json!({
                "method": parts.method.as_str(),
                "uri": parts.uri.to_string(),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .status(201)
                .header("x-served-by", "node-2")
                .header("keep-alive", "timeout=5")
                .header("connection", "x-private")
                .header("x-private", "secret")
                .header("proxy-authenticate", "Basic")
                .body(Body::from(json.to_string()))
                .expect("response")
        }))
    }

    async fn body_bytes(response: Response) -> Bytes {
        response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes()
    }

    #[tokio::test]
    async fn forwards_request_and_rewrites_headers() {
        let addr = serve(inspector()).await;
        let proxy = Proxy::new("node-1");
        let request = Request::builder()
            .method(Method::POST)
            .uri("/app/echo?x=1&y=two")
            .header("host", "entry.example:8080")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-custom", "kept")
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "1")
            .header("keep-alive", "300")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic Zm9v")
            .header("upgrade", "h2c")
            .body(Body::from("hello body"))
            .expect("request");

        let response = proxy
            .forward(&target("node-2", addr), request, CLIENT)
            .await
            .expect("forwarded");

        assert_eq!(response.status(), 201);
        let headers = response.headers();
        assert_eq!(headers["x-served-by"], "node-2");
        for removed in [
            "keep-alive",
            "connection",
            "x-private",
            "proxy-authenticate",
        ] {
            assert!(!headers.contains_key(removed), "response kept {removed}");
        }
        let seen: serde_json::Value =
            serde_json::from_slice(&body_bytes(response).await).expect("json");
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["uri"], "/app/echo?x=1&y=two");
        assert_eq!(seen["body"], "hello body");
        let header = |name: &str| seen["headers"][name].clone();
        assert_eq!(
            header("x-forwarded-for"),
            serde_json::json!(["203.0.113.9, 198.51.100.7"])
        );
        assert_eq!(header("x-forwarded-proto"), serde_json::json!(["http"]));
        // The forwarding node's name and the token it gossips, which proves it a member.
        let token = proxy.hop_token().expect("a token").to_wire();
        assert_eq!(
            header(HOP_HEADER),
            serde_json::json!([format!("node-1 {token}")])
        );
        assert_eq!(header("x-custom"), serde_json::json!(["kept"]));
        assert_eq!(header("host"), serde_json::json!(["entry.example:8080"]));
        assert_eq!(header("content-length"), serde_json::json!(["10"]));
        for removed in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(
                seen["headers"].get(removed).is_none(),
                "request kept {removed}"
            );
        }
        assert!(proxy.ejected().is_empty());
    }

    #[tokio::test]
    async fn keeps_an_existing_forwarded_proto() {
        let addr = serve(inspector()).await;
        let proxy = Proxy::new("node-1");
        let request = Request::builder()
            .uri("/")
            .header("x-forwarded-proto", "https")
            .body(Body::empty())
            .expect("request");
        let response = proxy
            .forward(
                &target("node-2", addr),
                request,
                IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, 1]),
            )
            .await
            .expect("forwarded");
        let seen: serde_json::Value =
            serde_json::from_slice(&body_bytes(response).await).expect("json");
        assert_eq!(
            seen["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
        // An IPv4 client seen on a dual-stack socket is written as IPv4.
        assert_eq!(
            seen["headers"]["x-forwarded-for"],
            serde_json::json!(["10.0.0.1"])
        );
        assert_eq!(seen["method"], "GET");
    }

    /// A request body fed chunk by chunk from the test.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl hyper::body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn streams_five_mebibytes_both_ways_in_lockstep() {
        // The echo answers with the request body itself, so each chunk can come back only if neither
        // direction buffers: the next chunk is sent only after the previous one returned.
        let echo = Router::new().fallback(any(|request: Request| async move {
            Response::new(request.into_body())
        }));
        let addr = serve(echo).await;
        let proxy = Proxy::new("node-1");
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/upload")
            .body(Body::new(ChannelBody(rx)))
            .expect("request");

        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 80; // 5 MiB
        let exchange = async {
            let response = proxy
                .forward(&target("node-2", addr), request, CLIENT)
                .await
                .expect("forwarded");
            let mut body = response.into_body();
            let mut received = Vec::with_capacity(CHUNK * CHUNKS);
            let mut tx = Some(tx);
            for i in 0..CHUNKS {
                let sender = tx.as_ref().expect("sender");
                sender
                    .send(Bytes::from(vec![i as u8; CHUNK]))
                    .await
                    .expect("send");
                if i + 1 == CHUNKS {
                    tx = None; // end of the request body
                }
                while received.len() < (i + 1) * CHUNK {
                    let frame = body.frame().await.expect("more body").expect("frame");
                    if let Ok(data) = frame.into_data() {
                        received.extend_from_slice(&data);
                    }
                }
            }
            drop(tx);
            assert!(body.frame().await.is_none(), "body ends with the request");
            received
        };
        let received = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("streaming must not stall");
        assert_eq!(received.len(), CHUNK * CHUNKS);
        for (i, chunk) in received.chunks(CHUNK).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i} corrupted");
        }
    }

    /// A request body that sends one chunk, then fails like a client hanging up mid-upload.
    struct FailingBody(bool);

    impl hyper::body::Body for FailingBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(Some(Err(std::io::Error::other("client hung up"))))
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
            }
        }
    }

    #[tokio::test]
    async fn a_failing_client_body_is_not_blamed_on_the_member() {
        let addr = serve(inspector()).await;
        let proxy = Proxy::new("node-1");
        for _ in 0..EJECT_AFTER_FAILURES {
            let request = Request::builder()
                .method(Method::PUT)
                .uri("/upload")
                .body(Body::new(FailingBody(false)))
                .expect("request");
            let error = proxy
                .forward(&target("node-2", addr), request, CLIENT)
                .await
                .expect_err("body fails");
            assert!(matches!(error, ProxyError::ClientBody { .. }), "{error:?}");
            assert!(!error.is_retryable(true));
        }
        assert!(proxy.ejected().is_empty());
    }

    /// A client body that sends one piece and then nothing, ever.
    struct StalledBody(bool);

    impl hyper::body::Body for StalledBody {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first piece")))))
            }
        }
    }

    #[tokio::test]
    async fn a_client_too_slow_with_its_body_is_not_blamed_on_the_member() {
        let addr = serve(inspector()).await;
        let settings = ProxySettings {
            response_timeout: Duration::from_millis(200),
            ..ProxySettings::default()
        };
        let proxy = Proxy::with_settings("node-1", settings);
        for _ in 0..EJECT_AFTER_FAILURES {
            let request = Request::builder()
                .method(Method::PUT)
                .uri("/upload")
                .body(Body::new(StalledBody(false)))
                .expect("request");
            let error = proxy
                .forward(&target("node-2", addr), request, CLIENT)
                .await
                .expect_err("times out");
            let ProxyError::ClientBody { source } = &error else {
                panic!("not the client's fault: {error:?}");
            };
            assert!(source.is::<ClientBodyTimeout>(), "{source:?}");
        }
        assert!(proxy.ejected().is_empty());
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error_and_retryable() {
        let proxy = Proxy::new("node-1");
        let dead = target("node-3", dead_port().await);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/x")
            .body(Body::from("payload"))
            .expect("request");
        let error = proxy
            .forward(&dead, request, CLIENT)
            .await
            .expect_err("dead port");
        assert!(
            matches!(error, ProxyError::Connect { ref target, .. } if target == "node-3"),
            "{error:?}"
        );
        assert!(error.is_retryable(false));
        assert!(error.is_retryable(true));
        assert_eq!(error.target(), Some("node-3"));
    }

    #[tokio::test]
    async fn failure_after_connect_is_retryable_only_when_idempotent() {
        // Accepts, reads the request, hangs up without a response.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
            }
        });
        let proxy = Proxy::new("node-1");
        let request = Request::builder()
            .uri("/x")
            .body(Body::empty())
            .expect("request");
        let error = proxy
            .forward(&target("node-2", addr), request, CLIENT)
            .await
            .expect_err("hang-up");
        assert!(
            matches!(
                error,
                ProxyError::BeforeResponse {
                    body_sent: false,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!error.is_retryable(false));
        assert!(error.is_retryable(true));
    }

    #[tokio::test]
    async fn silent_member_times_out() {
        let addr = silent_member().await;
        let settings = ProxySettings {
            response_timeout: Duration::from_millis(200),
            ..ProxySettings::default()
        };
        let proxy = Proxy::with_settings("node-1", settings);
        let request = Request::builder()
            .uri("/x")
            .body(Body::empty())
            .expect("request");
        let started = std::time::Instant::now();
        let error = proxy
            .forward(&target("node-2", addr), request, CLIENT)
            .await
            .expect_err("timeout");
        assert!(matches!(error, ProxyError::Timeout { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.is_retryable(true));
        assert!(!error.is_retryable(false));
    }

    #[tokio::test]
    async fn the_callers_response_timeout_wins_and_a_new_connect_timeout_reopens_pools() {
        let addr = silent_member().await;
        // The default is 30 s; the live setting passed in is what counts.
        let proxy = Proxy::new("node-1");
        let request = Request::builder()
            .uri("/x")
            .body(Body::empty())
            .expect("request");
        let error = proxy
            .forward_within(
                &target("node-2", addr),
                request,
                CLIENT,
                Duration::from_millis(200),
            )
            .await
            .expect_err("timeout");
        assert!(matches!(error, ProxyError::Timeout { .. }), "{error:?}");
        assert_eq!(proxy.http.pooled().len(), 1);
        proxy.set_connect_timeout(CONNECT_TIMEOUT);
        assert_eq!(proxy.http.pooled().len(), 1, "unchanged: pools kept");
        proxy.set_connect_timeout(Duration::from_millis(250));
        assert!(proxy.http.pooled().is_empty(), "changed: pools reopened");
        assert_eq!(proxy.http.connect_timeout_nanos(), 250_000_000);
    }

    #[tokio::test]
    async fn three_failed_forwards_eject_a_member() {
        let proxy = Proxy::new("node-1");
        let dead = target("node-3", dead_port().await);
        for attempt in 1..=3 {
            let request = Request::builder()
                .uri("/")
                .body(Body::empty())
                .expect("request");
            let _ = proxy.forward(&dead, request, CLIENT).await;
            assert_eq!(
                proxy.is_ejected("node-3"),
                attempt == 3,
                "after {attempt} failures"
            );
        }
        assert_eq!(proxy.ejected(), HashSet::from(["node-3".to_owned()]));
        proxy.drop_pool("node-3");
        assert!(proxy.ejected().is_empty());
        assert!(!proxy.http.pooled().contains(&"node-3".to_owned()));
    }

    #[tokio::test]
    async fn buffered_request_is_retried_on_the_next_member() {
        let live = serve(inspector()).await;
        let proxy = Proxy::new("node-1");
        let request = Request::builder()
            .method(Method::POST)
            .uri("/orders")
            .body(Body::from("order-42"))
            .expect("request");
        let PreparedRequest::Replayable(replayable) = buffer_for_retry(request, RETRY_BUFFER_LIMIT)
            .await
            .expect("buffer")
        else {
            panic!("a small body is buffered");
        };
        assert_eq!(replayable.method(), Method::POST);

        let dead = target("node-3", dead_port().await);
        let error = proxy
            .forward(&dead, replayable.to_request(), CLIENT)
            .await
            .expect_err("dead");
        assert!(error.is_retryable(is_idempotent(replayable.method())));
        let response = proxy
            .forward(&target("node-2", live), replayable.to_request(), CLIENT)
            .await
            .expect("retried");
        let seen: serde_json::Value =
            serde_json::from_slice(&body_bytes(response).await).expect("json");
        assert_eq!(seen["body"], "order-42");
    }

    #[tokio::test]
    async fn large_or_unsized_bodies_are_not_buffered() {
        let big = Request::builder()
            .body(Body::from(vec![7u8; RETRY_BUFFER_LIMIT + 1]))
            .expect("request");
        let PreparedRequest::Streaming(big) = buffer_for_retry(big, RETRY_BUFFER_LIMIT)
            .await
            .expect("prepare")
        else {
            panic!("over the limit");
        };
        assert_eq!(
            body_bytes(Response::new(big.into_body())).await.len(),
            RETRY_BUFFER_LIMIT + 1
        );

        let (_tx, rx) = mpsc::channel::<Bytes>(1);
        let unsized_body = Request::builder()
            .body(Body::new(ChannelBody(rx)))
            .expect("request");
        assert!(matches!(
            buffer_for_retry(unsized_body, RETRY_BUFFER_LIMIT).await,
            Ok(PreparedRequest::Streaming(_))
        ));

        let empty = Request::builder().body(Body::empty()).expect("request");
        assert!(matches!(
            buffer_for_retry(empty, 0).await,
            Ok(PreparedRequest::Replayable(_))
        ));
    }

    #[test]
    fn idempotent_methods() {
        for method in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            assert!(is_idempotent(
                &Method::from_bytes(method.as_bytes()).expect("method")
            ));
        }
        for method in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(
                &Method::from_bytes(method.as_bytes()).expect("method")
            ));
        }
    }
}
