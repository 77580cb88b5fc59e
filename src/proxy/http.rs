//! The HTTP transport to members: one hyper client (and so one connection pool) per member, so a
//! member that goes down or leaves has its pool dropped without touching the others. Bodies stream
//! both ways; what went wrong is reported as an [`HttpFailure`] for the proxy to classify.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, Error as ClientError};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balancer::Target;

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type PoolClient = Client<HttpConnector, Body>;

/// The pooled client of one member and the authority its requests are addressed to.
struct Member {
    client: PoolClient,
    addr: SocketAddr,
    authority: Authority,
}

/// Why an exchange over HTTP produced no response.
#[derive(Debug)]
pub(super) enum HttpFailure {
    /// The request's URI cannot be pointed at the member.
    InvalidUri(axum::http::uri::InvalidUriParts),
    /// Reading the client's request body failed.
    ClientBody(ClientError),
    /// The response timeout ran out while the client's next piece of body was awaited.
    ClientBodyTimeout,
    /// No connection could be opened.
    Connect(ClientError),
    /// The connection failed after the request was (partly) written, before response headers.
    BeforeResponse {
        /// What the client reported.
        source: ClientError,
        /// Whether any of the request body had been handed to the connection.
        body_sent: bool,
    },
    /// No response headers within the response timeout.
    Timeout,
}

/// One pooled client per member, created on first use.
pub(super) struct HttpPools {
    /// The connect timeout of connections opened from now on, in nanoseconds; read only when a
    /// member's client is created.
    connect_timeout_nanos: AtomicU64,
    clients: Mutex<HashMap<String, Member>>,
}

impl HttpPools {
    /// No pools yet; connections will be opened within `connect_timeout`.
    pub(super) fn new(connect_timeout: Duration) -> HttpPools {
        HttpPools {
            connect_timeout_nanos: AtomicU64::new(nanos(connect_timeout)),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Drops member `name`'s pool, closing its idle connections.
    pub(super) fn forget(&self, name: &str) {
        lock(&self.clients).remove(name);
    }

    /// Changes the connect timeout. A member's client keeps the timeout it was built with, so the
    /// pools are dropped (idle connections closed) when it changes; requests in flight are not touched.
    pub(super) fn set_connect_timeout(&self, timeout: Duration) {
        let wanted = nanos(timeout);
        // Under the pools' lock, so no client is built with the old value after the clear.
        let mut clients = lock(&self.clients);
        if self.connect_timeout_nanos.swap(wanted, Ordering::Relaxed) != wanted {
            clients.clear();
        }
    }

    /// The connect timeout of connections opened from now on.
    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout_nanos.load(Ordering::Relaxed))
    }

    /// Sends the request of head `parts` (already prepared for the member, apart from its URI) and
    /// `body` to `target`, waiting at most `response_timeout` for the response headers; the
    /// response body streams from the member.
    pub(super) async fn send(
        &self,
        target: &Target,
        mut parts: Parts,
        body: Body,
        response_timeout: Duration,
    ) -> Result<Response, HttpFailure> {
        let (client, authority) = self.member(target);
        parts.uri = member_uri(authority, &parts.uri).map_err(HttpFailure::InvalidUri)?;

        // Retry safety depends on whether the body was consumed, and blame on who failed: watch both.
        let body_sent = Arc::new(AtomicBool::new(false));
        let client_failed = Arc::new(AtomicBool::new(false));
        let awaiting_client = Arc::new(AtomicBool::new(false));
        let body = Body::new(WatchedBody {
            inner: body,
            body_sent: Arc::clone(&body_sent),
            client_failed: Arc::clone(&client_failed),
            awaiting_client: Arc::clone(&awaiting_client),
        });

        let exchange = client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(response_timeout, exchange).await {
            Ok(Ok(response)) => {
                let (parts, incoming) = response.into_parts();
                Ok(Response::from_parts(parts, Body::new(incoming)))
            }
            Ok(Err(source)) if client_failed.load(Ordering::Relaxed) => {
                Err(HttpFailure::ClientBody(source))
            }
            Ok(Err(source)) if source.is_connect() => Err(HttpFailure::Connect(source)),
            Ok(Err(source)) => Err(HttpFailure::BeforeResponse {
                source,
                body_sent: body_sent.load(Ordering::Relaxed),
            }),
            // Still waiting for the client's next piece of body: the client is slow, not the member
            // (a member slow to read would leave the body waiting on the connection instead).
            Err(_elapsed) if awaiting_client.load(Ordering::Relaxed) => {
                Err(HttpFailure::ClientBodyTimeout)
            }
            Err(_elapsed) => Err(HttpFailure::Timeout),
        }
    }

    /// The pooled client for `target` and its authority, created on first use (and again if the
    /// member now serves at another address).
    fn member(&self, target: &Target) -> (PoolClient, Authority) {
        let mut clients = lock(&self.clients);
        if let Some(member) = clients.get(&target.name)
            && member.addr == target.http_addr
        {
            return (member.client.clone(), member.authority.clone());
        }
        let mut connector = HttpConnector::new();
        let timeout = self.connect_timeout_nanos.load(Ordering::Relaxed);
        connector.set_connect_timeout(Some(Duration::from_nanos(timeout)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        // A socket address always makes a valid authority.
        let authority = Authority::try_from(target.http_addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("invalid"));
        clients.insert(
            target.name.clone(),
            Member {
                client: client.clone(),
                addr: target.http_addr,
                authority: authority.clone(),
            },
        );
        (client, authority)
    }

    /// Members with a pool now; tests look at it.
    #[cfg(test)]
    pub(super) fn pooled(&self) -> Vec<String> {
        lock(&self.clients).keys().cloned().collect()
    }

    /// The connect timeout in nanoseconds, as stored; tests look at it.
    #[cfg(test)]
    pub(super) fn connect_timeout_nanos(&self) -> u64 {
        self.connect_timeout_nanos.load(Ordering::Relaxed)
    }
}

/// A request body that notes whether any of it was handed over, whether reading it failed and
/// whether it is waiting for the client right now, keeping its size hint so a known length still
/// goes out as `Content-Length`.
struct WatchedBody {
    inner: Body,
    body_sent: Arc<AtomicBool>,
    client_failed: Arc<AtomicBool>,
    awaiting_client: Arc<AtomicBool>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.awaiting_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.body_sent.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Err(_))) => self.client_failed.store(true, Ordering::Relaxed),
            Poll::Ready(None) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A timeout in nanoseconds, saturated (u64 nanoseconds last 584 years).
fn nanos(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
}

/// Locks `mutex`; the maps it guards are valid after any panic, so poison is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `uri`'s path and query, addressed to the member at `authority`.
fn member_uri(authority: Authority, uri: &Uri) -> Result<Uri, axum::http::uri::InvalidUriParts> {
    let mut parts = axum::http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_uri_keeps_path_and_query() {
        let authority =
            |addr: SocketAddr| Authority::try_from(addr.to_string()).expect("authority");
        let addr = SocketAddr::from(([127, 0, 0, 1], 8082));
        let uri = member_uri(
            authority(addr),
            &Uri::from_static("http://entry:8080/a/b?c=d"),
        )
        .expect("uri");
        assert_eq!(uri, "http://127.0.0.1:8082/a/b?c=d");
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9000));
        let uri = member_uri(authority(v6), &Uri::from_static("/")).expect("uri");
        assert_eq!(uri, "http://[::1]:9000/");
    }
}
