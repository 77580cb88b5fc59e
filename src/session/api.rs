//! `/api/sessions`: create, read, compare-and-set, delete sessions over REST.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::raft::{CommandResponse, SessionCommand, SessionId, SessionRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::http::error::ApiError;
use crate::http::guards::{AdminAuth, RequireAdmin};
use crate::raft::replica::{ConsensusError, Replica};

/// Largest TTL a client may ask for: one year.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bodies up to this much above `max_bytes` are read and refused with a JSON 413 naming the limit;
/// larger ones are cut off while streaming (413 too), so no body is buffered past the limit.
const BODY_SLACK_BYTES: usize = 64 * 1024;

/// What the session API needs.
#[derive(Clone)]
pub struct SessionApi {
    /// The replicated store.
    pub replica: Arc<Replica>,
    /// TTL in ms when the client gives none; shared with the config reloader.
    pub default_ttl_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Largest session accepted (bytes of JSON).
    pub max_bytes: usize,
    /// Writes (create, replace, delete) need the admin token when one is set; reads do not.
    pub admin: AdminAuth,
}

impl FromRef<SessionApi> for AdminAuth {
    fn from_ref(api: &SessionApi) -> AdminAuth {
        api.admin.clone()
    }
}

impl From<ConsensusError> for ApiError {
    fn from(err: ConsensusError) -> ApiError {
        let status = match err {
            // The leader's limits differ from this node's (a config mismatch): the write is wrong
            // as it is, not the cluster unavailable.
            ConsensusError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    }
}

/// The routes under `/api/sessions`.
pub fn router(api: SessionApi) -> Router {
    let body_limit = DefaultBodyLimit::max(api.max_bytes.saturating_add(BODY_SLACK_BYTES));
    Router::new()
        .route("/api/sessions", post(create))
        .route("/api/sessions/{id}", get(read).put(update).delete(remove))
        .layer(body_limit)
        .with_state(api)
}

#[derive(Debug, Deserialize)]
struct TtlQuery {
    ttl: Option<u64>,
}

fn document(record: &SessionRecord) -> Value {
    let data: Value = serde_json::from_str(&record.data).unwrap_or(Value::Null);
    json!({
        "id": record.id.to_string(),
        "version": record.version,
        "data": data,
        "created_ms": record.created_ms,
        "expires_at_ms": record.expires_at_ms(),
    })
}

fn parse_id(text: &str) -> Result<SessionId, ApiError> {
    // A malformed id names no session: 404, like any unknown id.
    text.parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such session"))
}

impl SessionApi {
    fn ttl(&self, query: &TtlQuery) -> Result<u64, ApiError> {
        match query.ttl {
            None => Ok(self
                .default_ttl_ms
                .load(std::sync::atomic::Ordering::Relaxed)),
            Some(0) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ttl must be at least 1 second",
            )),
            Some(seconds) if Duration::from_secs(seconds) > MAX_TTL => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("ttl must be at most {} seconds", MAX_TTL.as_secs()),
            )),
            Some(seconds) => Ok(seconds * 1000),
        }
    }

    /// Checks size and shape: the body must be a JSON object no larger than the limit.
    fn data(&self, body: &Bytes) -> Result<String, ApiError> {
        if body.len() > self.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "session data of {} bytes exceeds the limit of {} bytes",
                    body.len(),
                    self.max_bytes
                ),
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|err| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("body is not JSON: {err}"))
        })?;
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "session data must be a JSON object",
            ));
        }
        // Store the compact form so sizes are what they look like.
        Ok(value.to_string())
    }
}

async fn create(
    _admin: RequireAdmin,
    State(api): State<SessionApi>,
    Query(query): Query<TtlQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ttl_ms = api.ttl(&query)?;
    let data = api.data(&body)?;
    loop {
        let id = SessionId::generate();
        let command = SessionCommand::Create {
            id,
            data: data.clone(),
            ttl_ms,
            now_ms: now_ms(),
        };
        match api.replica.write(command).await?.1 {
            CommandResponse::Created(record) => {
                let location = format!("/api/sessions/{}", record.id);
                return Ok((
                    StatusCode::CREATED,
                    [(header::LOCATION, location)],
                    axum::Json(document(&record)),
                )
                    .into_response());
            }
            CommandResponse::AlreadyExists => continue,
            CommandResponse::TooManySessions { max_active } => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the cluster holds {max_active} sessions, its limit \
                         (<sessions max-active>); try again once some expire"
                    ),
                ));
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer to create: {other:?}"),
                ));
            }
        }
    }
}

async fn read(State(api): State<SessionApi>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    api.replica.linearizable_barrier().await?;
    // Expiry is the leader's decision (an `Expire` entry, at most half a second late): judging it here
    // with this node's clock would make a node whose clock is off lose live sessions.
    let record = api
        .replica
        .reader()
        .get(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such session"))?;
    api.replica.touch(id);
    Ok((
        [(header::ETAG, format!("\"{}\"", record.version))],
        axum::Json(document(&record)),
    )
        .into_response())
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    if text == "*" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be a session version number",
        )
    })
}

async fn update(
    _admin: RequireAdmin,
    State(api): State<SessionApi>,
    Path(id): Path<String>,
    Query(query): Query<TtlQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let expected_version = if_match(&headers)?;
    let data = api.data(&body)?;
    let ttl_ms = match query.ttl {
        Some(_) => Some(api.ttl(&query)?),
        None => None,
    };
    let command = SessionCommand::Put {
        id,
        data,
        expected_version,
        ttl_ms,
        now_ms: now_ms(),
    };
    match api.replica.write(command).await?.1 {
        CommandResponse::Updated(record) => Ok((
            [(header::ETAG, format!("\"{}\"", record.version))],
            axum::Json(document(&record)),
        )
            .into_response()),
        CommandResponse::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "no such session")),
        CommandResponse::VersionMismatch { current } => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "version {} is stale; the session is at version {current}",
                expected_version.unwrap_or(0)
            ),
        )
        .with_field("current_version", current)),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer to put: {other:?}"),
        )),
    }
}

async fn remove(
    _admin: RequireAdmin,
    State(api): State<SessionApi>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match api.replica.write(SessionCommand::Delete { id }).await?.1 {
        CommandResponse::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        CommandResponse::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "no such session")),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer to delete: {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn with_if_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_MATCH,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(if_match(&with_if_match("3")).ok(), Some(Some(3)));
        assert_eq!(if_match(&with_if_match("\"3\"")).ok(), Some(Some(3)));
        assert_eq!(if_match(&with_if_match("W/\"3\"")).ok(), Some(Some(3)));
        assert_eq!(if_match(&with_if_match("*")).ok(), Some(None));
        for bad in ["", "x", "-1", "3,4", "18446744073709551616"] {
            let err = if_match(&with_if_match(bad)).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    proptest! {
        /// Fuzz: any If-Match bytes give a version, no condition, or a 400; never a panic.
        #[test]
        fn fuzz_if_match(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert(header::IF_MATCH, value);
            }
            if let Err(err) = if_match(&headers) {
                prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            }
        }
    }
}
