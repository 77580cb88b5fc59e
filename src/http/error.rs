//! [`ApiError`]: every JSON error the server answers with, `{"error": "..."}` plus optional fields.
//!
//! One type renders every error body so they cannot drift apart: clients (the CLI, the console, the
//! tests) read `error` from all of them alike. Bodies are `serde_json` maps, whose keys serialize in
//! sorted order (`current_version` before `error`, `error` before `reloaded`), as they always have.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// A failure with its HTTP status, a JSON body `{"error": "...", ...}` and any headers it needs
/// (`Retry-After`, `WWW-Authenticate`, ...).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    fields: Map<String, Value>,
    // A Vec, not a HeaderMap: errors travel in `Result`s, and a HeaderMap would make every one of
    // them large (clippy::result_large_err) for the one or two that carry a header.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// `{"error": message}` with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            fields: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds `key: value` to the body beside `error` (e.g. `current_version` on a version mismatch).
    pub fn with_field(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// Adds a response header (e.g. `Retry-After`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.fields;
        body.insert("error".to_string(), Value::String(self.message));
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use http_body_util::BodyExt;

    async fn body_of(response: Response) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn renders_the_bodies_the_handlers_always_wrote() {
        let plain = ApiError::new(StatusCode::NOT_FOUND, "no such session").into_response();
        assert_eq!(plain.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            plain.headers()[header::CONTENT_TYPE],
            HeaderValue::from_static("application/json")
        );
        assert_eq!(body_of(plain).await, r#"{"error":"no such session"}"#);

        // What `json!({"error": m})` + `body["current_version"] = ...` and
        // `json!({"reloaded": false, "error": m})` produced: keys in sorted order.
        let mismatch = ApiError::new(StatusCode::PRECONDITION_FAILED, "stale")
            .with_field("current_version", 7u64)
            .into_response();
        assert_eq!(
            body_of(mismatch).await,
            r#"{"current_version":7,"error":"stale"}"#
        );
        let reload = ApiError::new(StatusCode::BAD_REQUEST, "bad")
            .with_field("reloaded", false)
            .into_response();
        assert_eq!(body_of(reload).await, r#"{"error":"bad","reloaded":false}"#);
    }

    #[tokio::test]
    async fn carries_its_headers() {
        let limited = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "later")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("2"))
            .into_response();
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            limited.headers()[header::CONTENT_TYPE],
            HeaderValue::from_static("application/json")
        );
    }
}
