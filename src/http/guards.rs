//! The HTTP guards: the admin token check (an extractor and a middleware) and the request-head
//! limit, in front of every handler.

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::crypto::AdminToken;
use crate::http::error::ApiError;
use crate::logging::LogThrottle;

/// Largest request head (request line and headers) a node accepts; above it, 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// The token in an `Authorization: Bearer <token>` value; `None` for any other scheme or shape.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Whether mutating admin calls need the token, and the check itself.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    token: Option<AdminToken>,
}

/// Why an admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRejection {
    /// No bearer token: 401 with `WWW-Authenticate: Bearer`.
    Missing,
    /// A bearer token that is not the admin token: 403.
    Wrong,
}

impl IntoResponse for AdminRejection {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AdminRejection::Missing => (
                StatusCode::UNAUTHORIZED,
                "this call needs the admin token: send Authorization: Bearer <token>",
            ),
            AdminRejection::Wrong => (StatusCode::FORBIDDEN, "the admin token is not valid"),
        };
        let mut error = ApiError::new(status, message);
        if self == AdminRejection::Missing {
            error = error.with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"micro-tomcat\""),
            );
        }
        error.into_response()
    }
}

impl AdminAuth {
    /// Admin calls need `token` when there is one.
    pub fn new(token: Option<AdminToken>) -> AdminAuth {
        AdminAuth { token }
    }

    /// Whether a token is configured.
    pub fn is_required(&self) -> bool {
        self.token.is_some()
    }

    /// Accepts a request when no token is configured or it carries the token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AdminRejection> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let presented = match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok().and_then(bearer_token),
            // None, or several: which one would count? Neither.
            _ => None,
        };
        match presented {
            None => Err(AdminRejection::Missing),
            Some(presented) if token.matches(presented) => Ok(()),
            Some(_) => {
                if let Some(held_back) = WRONG_TOKEN_LOG.allow() {
                    tracing::warn!(held_back, "admin call refused: wrong admin token");
                }
                Err(AdminRejection::Wrong)
            }
        }
    }
}

static WRONG_TOKEN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Extractor for handlers of mutating admin calls: rejects the request (401/403) unless it carries
/// the admin token, when one is configured. Needs `AdminAuth: FromRef<S>` for the router's state.
#[derive(Debug, Clone, Copy)]
pub struct RequireAdmin;

impl<S> FromRequestParts<S> for RequireAdmin
where
    AdminAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AdminRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AdminAuth::from_ref(state)
            .check(&parts.headers)
            .map(|()| RequireAdmin)
    }
}

/// The same check as a middleware, for whole routers:
/// `router.route_layer(axum::middleware::from_fn_with_state(auth, require_admin))`.
pub async fn require_admin(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// Refuses requests whose head (target and headers) exceeds [`MAX_REQUEST_HEAD_BYTES`] with 431,
/// so that no handler or upstream sees more (hyper itself stops at about 400 KiB and 100 headers).
pub async fn limit_request_head(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    let head = target
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_REQUEST_HEAD_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head is {head} bytes; at most {MAX_REQUEST_HEAD_BYTES} are accepted"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc  "), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Basic abc",
            "Bearer a b",
            "Bearerabc",
            "abc",
        ] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }

    fn admin_router(token: Option<&str>) -> Router {
        let auth = AdminAuth::new(token.map(|t| AdminToken::new(t).expect("token")));
        let with_extractor = Router::new()
            .route("/extractor", post(|_: RequireAdmin| async { "done" }))
            .with_state(auth.clone());
        let with_layer = Router::new()
            .route("/layer", post(|| async { "done" }))
            .route_layer(axum::middleware::from_fn_with_state(auth, require_admin));
        with_extractor.merge(with_layer)
    }

    async fn call(
        router: &Router,
        path: &str,
        authorization: &[&str],
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = axum::http::Request::post(path);
        for value in authorization {
            request = request.header(header::AUTHORIZATION, *value);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn admin_calls_need_the_token_when_one_is_set() {
        let open = admin_router(None);
        let guarded = admin_router(Some(TOKEN));
        for path in ["/extractor", "/layer"] {
            assert_eq!(call(&open, path, &[]).await.0, StatusCode::OK);

            let (status, headers, body) = call(&guarded, path, &[]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
            assert!(
                headers
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer"))
            );
            let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
            assert!(json["error"].as_str().is_some_and(|e| e.contains("Bearer")));

            let (status, _, body) = call(&guarded, path, &["Basic dXNlcjpwYXNz"]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            let (status, _, body) = call(&guarded, path, &["Bearer wrong-token-wrong-token"]).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
            assert!(!body.contains(TOKEN));
            let (status, _, _) = call(
                &guarded,
                path,
                &[&format!("Bearer {TOKEN}"), &format!("Bearer {TOKEN}")],
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "two Authorization headers"
            );
            let (status, _, body) = call(&guarded, path, &[&format!("Bearer {TOKEN}")]).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
        }
    }

    #[tokio::test]
    async fn oversized_request_heads_get_431() {
        let router = Router::new()
            .route("/", post(|| async { "ok" }))
            .layer(axum::middleware::from_fn(limit_request_head));
        let ok = axum::http::Request::post("/")
            .header("x-small", "a")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            router.clone().oneshot(ok).await.expect("ok").status(),
            StatusCode::OK
        );
        let big = axum::http::Request::post("/")
            .header("x-big", "a".repeat(MAX_REQUEST_HEAD_BYTES))
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            router.oneshot(big).await.expect("ok").status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    proptest! {
        /// Fuzz: the bearer parser takes any header text without panicking, and what it returns is a
        /// non-empty token without whitespace.
        #[test]
        fn fuzz_bearer_token(value in ".{0,200}") {
            if let Some(token) = bearer_token(&value) {
                prop_assert!(!token.is_empty());
                prop_assert!(!token.contains(char::is_whitespace));
            }
        }

        /// Fuzz: the admin check accepts exactly the right token, whatever else arrives.
        #[test]
        fn fuzz_admin_check(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let auth = AdminAuth::new(Some(AdminToken::new(TOKEN).expect("token")));
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert(header::AUTHORIZATION, value);
            }
            let accepted = auth.check(&headers).is_ok();
            let exact = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
                == Some(TOKEN);
            prop_assert_eq!(accepted, exact);
        }

        /// Fuzz: arbitrary requests through an axum router guarded both ways (extractor, layer): only
        /// a request carrying exactly the token gets through, every refusal is a 401 or 403.
        #[test]
        fn fuzz_admin_router_oneshot(
            path in prop::sample::select(vec!["/extractor", "/layer"]),
            headers in proptest::collection::vec(
                (prop::sample::select(vec!["authorization", "Authorization", "x-other", "cookie"]),
                 proptest::collection::vec(any::<u8>(), 0..80)),
                0..4),
            use_token in any::<bool>(),
        ) {
            let router = admin_router(Some(TOKEN));
            let mut request = axum::http::Request::post(path);
            let mut authorizations = 0;
            let mut exact = false;
            if use_token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
                authorizations += 1;
                exact = true;
            }
            for (name, value) in &headers {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    if name.eq_ignore_ascii_case("authorization") {
                        authorizations += 1;
                        exact = value.to_str().ok().and_then(bearer_token) == Some(TOKEN);
                    }
                    request = request.header(*name, value);
                }
            }
            let request = request.body(Body::empty()).expect("request");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let status = runtime
                .block_on(router.oneshot(request))
                .expect("infallible")
                .status();
            if authorizations == 1 && exact {
                prop_assert_eq!(status, StatusCode::OK);
            } else {
                prop_assert!(
                    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                    "{}", status
                );
            }
        }
    }
}
