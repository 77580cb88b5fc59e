//! [`HttpClient`]: the pooled HTTP/1 client for the CLI, alert webhooks and forwarded admin calls.
//!
//! These are small, whole-body exchanges with a deadline over the request and the answer together.
//! The proxy keeps its own clients (`proxy::Proxy`): one pool per member, a reloadable connect
//! timeout, `TCP_NODELAY`, streamed bodies; nothing of that fits a webhook or a `status` call.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a bodiless call waits for its answer: the CLI's `status` and node actions, and a drain
/// forwarded to the member it names.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`HttpClient::call`] got no answer (the texts the CLI has always printed).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not an http:// URL (most come from the CLI's `--node`, hence the flag's name).
    #[error("--node {url:?}: expected an http:// URL such as http://127.0.0.1:8081")]
    BadUrl {
        /// What was given.
        url: String,
    },
    /// The node did not answer.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why an exchange did not produce a whole answer; callers word it for their users.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request was not answered: no connection, or it broke before the response head.
    #[error(transparent)]
    Send(#[from] hyper_util::client::legacy::Error),
    /// The answer's head arrived (`status`), its body did not.
    #[error("{source}")]
    Body {
        /// The status the answer had.
        status: StatusCode,
        /// What broke while reading the body.
        source: hyper::Error,
    },
    /// Nothing whole within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pooled client: clones share the connections.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client with a pool of its own.
    pub fn new() -> HttpClient {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The process's client. A server or CLI process runs one Tokio runtime, which drives the
    /// pooled connections; a connection whose runtime is gone is closed and so never handed out.
    pub fn shared() -> &'static HttpClient {
        static SHARED: OnceLock<HttpClient> = OnceLock::new();
        SHARED.get_or_init(HttpClient::new)
    }

    /// One request to `url` with extra `headers` and `body`; returns the status and the raw body,
    /// whatever the status, all within `timeout`.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let bad_url = || CallError::BadUrl {
            url: url.to_string(),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad_url())?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(bad_url());
        }
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).map_err(|_| bad_url())?;
        let unreachable = |reason: String| CallError::Unreachable {
            url: url.to_string(),
            reason,
        };
        self.exchange(request, timeout)
            .await
            .map_err(|err| match err {
                ExchangeError::Send(err) => unreachable(error_chain(&err)),
                ExchangeError::Body { source, .. } => unreachable(source.to_string()),
                ExchangeError::Timeout(_) => unreachable(format!("no answer within {timeout:?}")),
            })
    }

    /// Sends `request` and reads the whole answer, all within `timeout`.
    pub async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let exchange = async {
            let response = self.inner.request(request).await?;
            let status = response.status();
            // Read to the end, which also lets the connection go back to the pool.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| ExchangeError::Body { status, source })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout(timeout))?
    }
}

/// `err` and its sources, `: `-separated on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuses_its_connection_and_names_what_failed() {
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = connections.clone();
        tokio::spawn(async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let client = HttpClient::new();
        for _ in 0..3 {
            let request = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let (status, body) = client
                .exchange(request, Duration::from_secs(5))
                .await
                .expect("answer");
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"hi"[..]));
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        let request = Request::get(format!("http://{gone}/"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let err = client
            .exchange(request, Duration::from_secs(5))
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, ExchangeError::Send(_)), "{err:?}");
    }
}
