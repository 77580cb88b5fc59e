//! Upstream mode: requests this node serves are forwarded to its local application, in any language.
//!
//! The application gets the session id and the node in headers and reads or writes the session through
//! the node's `/api/sessions`. The node watches the upstream: while it does not answer, the node says it
//! is not ready (in gossip and on `/readyz`), so the balancer sends its keys to the next member.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::balancer::Target;
use crate::http::error::ApiError;
use crate::membership::Membership;
use crate::proxy::Proxy;

/// Header carrying the session id (the session cookie's value) to the upstream.
pub const SESSION_HEADER: &str = "x-micro-tomcat-session";
/// Header naming the node that forwarded the request.
pub const NODE_HEADER: &str = "x-micro-tomcat-node";
/// Header with the base URL of the node's session API, e.g. `http://127.0.0.1:8081/api/sessions`.
pub const SESSION_API_HEADER: &str = "x-micro-tomcat-session-api";
/// Set on a response when this node cannot serve the request because its upstream is down: the
/// routing layer of the entry node treats it like a failed member and tries the next one.
pub const UNAVAILABLE_HEADER: &str = "x-micro-tomcat-unavailable";
/// How often the upstream is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The local application behind this node.
pub struct Upstream {
    target: Target,
    proxy: Proxy,
    cookie: String,
    node: HeaderValue,
    session_api: HeaderValue,
    healthy: AtomicBool,
}

impl Upstream {
    /// An upstream at `addr`, for node `node` serving HTTP on `http`.
    pub fn new(addr: SocketAddr, node: &str, http: SocketAddr, cookie: &str) -> Arc<Upstream> {
        let api = format!("http://{http}/api/sessions");
        Arc::new(Upstream {
            target: Target {
                name: format!("{node}-upstream"),
                http_addr: addr,
                cluster_addr: None,
            },
            proxy: Proxy::new(node),
            cookie: cookie.to_string(),
            node: HeaderValue::from_str(node).unwrap_or(HeaderValue::from_static("?")),
            session_api: HeaderValue::from_str(&api).unwrap_or(HeaderValue::from_static("")),
            healthy: AtomicBool::new(true),
        })
    }

    /// Whether the upstream answered the last probe.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Probes the upstream until `shutdown`, publishing readiness when it changes.
    pub async fn watch(self: Arc<Self>, membership: Arc<Membership>, shutdown: CancellationToken) {
        let mut published = true;
        loop {
            let up = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(self.target.http_addr))
                    .await,
                Ok(Ok(_))
            );
            self.set_healthy(up);
            if up != published {
                published = up;
                if up {
                    info!(upstream = %self.target.http_addr, "upstream answers again; ready");
                } else {
                    warn!(upstream = %self.target.http_addr, "upstream does not answer; not ready, routing elsewhere");
                }
                membership.set_ready(up).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }

    /// The router forwarding everything to the upstream.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(forward).with_state(self)
    }
}

fn unavailable(message: String) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        .with_header(
            HeaderName::from_static(UNAVAILABLE_HEADER),
            HeaderValue::from_static("upstream"),
        )
        .into_response()
}

async fn forward(State(upstream): State<Arc<Upstream>>, mut request: Request) -> Response {
    if !upstream.is_healthy() {
        return unavailable("this node's application is down".to_string());
    }
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let session = crate::routing::session_cookie(request.headers(), &upstream.cookie);
    let headers = request.headers_mut();
    headers.remove(SESSION_HEADER);
    if let Some(value) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert(HeaderName::from_static(SESSION_HEADER), value);
    }
    headers.insert(HeaderName::from_static(NODE_HEADER), upstream.node.clone());
    headers.insert(
        HeaderName::from_static(SESSION_API_HEADER),
        upstream.session_api.clone(),
    );
    match upstream
        .proxy
        .forward(&upstream.target, request, client)
        .await
    {
        Ok(response) => response,
        Err(err) => {
            if err.is_retryable(false) && upstream.set_healthy(false) {
                warn!(error = %err, "upstream refused a connection; not ready until it answers");
            }
            unavailable(format!("this node's application failed: {err}"))
        }
    }
}
