//! `tower_sessions::SessionStore` backed by the Raft-replicated session store.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proto::raft::{CommandResponse, SessionCommand, SessionId};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, Result};
use tower_sessions::{SessionStore, cookie::time::OffsetDateTime};

use super::quota::CreateRate;
use crate::clock::now_ms;
use crate::http::error::ApiError;
use crate::raft::replica::Replica;

/// The cluster's session store: every node reads and writes the same sessions.
#[derive(Clone)]
pub struct ClusterStore {
    replica: Arc<Replica>,
    max_bytes: usize,
    /// `<sessions ttl-seconds>` in ms, shared with the config reloader: a reload applies to the next
    /// write, whatever expiry the cookie layer computed when it was built.
    ttl_ms: Arc<std::sync::atomic::AtomicU64>,
    /// `<sessions create-rate-per-ip>`, shared with the reloader and the metrics.
    rate: Arc<CreateRate>,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// tower-sessions ids and ours are both 128 bits: the same session under two spellings.
pub fn to_session_id(id: &Id) -> SessionId {
    SessionId::from_bytes(id.0.to_le_bytes())
}

/// The tower-sessions id of a session.
pub fn to_tower_id(id: &SessionId) -> Id {
    Id(i128::from_le_bytes(*id.as_bytes()))
}

/// A hidden entry of a loaded record: the version it was loaded at. `save` removes it and writes
/// only if the session still has that version, so a request that read an older state (one left
/// running on the far side of a partition, or overtaken by its own retry elsewhere) cannot
/// overwrite a newer one. The application never sees it in the stored data.
pub const LOADED_VERSION_KEY: &str = "__micro_tomcat_loaded_version";

fn backend(err: impl std::fmt::Display) -> Error {
    Error::Backend(err.to_string())
}

/// Why the session layer's save after a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SaveFailure {
    /// Another request changed the session since this one loaded it; nothing was written.
    Conflict(String),
    /// The store could not take the write (no leader, say, or the cluster holds `max-active`).
    Unavailable(String),
    /// This client created sessions faster than `create-rate-per-ip`; retry after this long.
    RateLimited(Duration),
}

tokio::task_local! {
    /// Set around each request by [`explain_save_failures`].
    static SAVE_FAILURE: std::cell::RefCell<Option<SaveFailure>>;
    /// The client the request is for, set by [`explain_save_failures`]: the session layer calls the
    /// store without the request, and the creation rate is counted per client.
    static CLIENT: Option<IpAddr>;
}

/// The client a request is for: the connection's peer, or, for a request a member proxied here (it
/// carries the hop header, which routing lets through only from members), the address that member
/// appended to `X-Forwarded-For`.
pub fn client_addr(request: &axum::extract::Request) -> Option<IpAddr> {
    let headers = request.headers();
    if headers.contains_key(crate::proxy::HOP_HEADER)
        && let Some(forwarded) = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
    {
        return Some(forwarded);
    }
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Records why a save failed, for [`explain_save_failures`] (nothing happens outside its scope).
fn note_save_failure(failure: SaveFailure) {
    let _ = SAVE_FAILURE.try_with(|slot| {
        slot.borrow_mut().get_or_insert(failure);
    });
}

/// Middleware around the session layer. tower-sessions answers a failed save (after the handler ran)
/// with an empty 500; this answers 409 with the reason when another request changed the session
/// meanwhile (nothing was written), or 503 with the reason when the store was unavailable.
pub async fn explain_save_failures(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let client = client_addr(&request);
    let (response, failure) = CLIENT
        .scope(
            client,
            SAVE_FAILURE.scope(std::cell::RefCell::new(None), async {
                let response = next.run(request).await;
                (response, SAVE_FAILURE.with(|slot| slot.borrow_mut().take()))
            }),
        )
        .await;
    if response.status() != axum::http::StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (status, reason) = match failure {
        Some(SaveFailure::Conflict(reason)) => (axum::http::StatusCode::CONFLICT, reason),
        Some(SaveFailure::Unavailable(reason)) => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason)
        }
        Some(SaveFailure::RateLimited(wait)) => {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "session not created: this client creates sessions faster than \
                 <sessions create-rate-per-ip> allows; retry later",
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            )
            .into_response();
        }
        None => return response,
    };
    ApiError::new(status, format!("session not saved: {reason}")).into_response()
}

impl ClusterStore {
    /// A store writing through `replica`, refusing sessions larger than `max_bytes`, giving every
    /// session the idle TTL in `ttl_ms`.
    pub fn new(
        replica: Arc<Replica>,
        max_bytes: usize,
        ttl_ms: Arc<std::sync::atomic::AtomicU64>,
        rate: Arc<CreateRate>,
    ) -> ClusterStore {
        ClusterStore {
            replica,
            max_bytes,
            ttl_ms,
            rate,
        }
    }

    fn ttl(&self) -> u64 {
        self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn encode(&self, record: &Record) -> Result<(String, Option<u64>)> {
        encode(record, self.max_bytes)
    }

    /// Writes `record` over the version it was loaded at (compare-and-set); see [`SessionStore::save`].
    async fn save_record(&self, record: &Record) -> Result<()> {
        let (data, loaded) = self.encode(record)?;

        let id = to_session_id(&record.id);
        let ttl = self.ttl();
        let put = SessionCommand::Put {
            id,
            data: data.clone(),
            expected_version: loaded,
            ttl_ms: Some(ttl),
            now_ms: now_ms(),
        };
        match self.replica.write(put).await.map_err(backend)?.1 {
            CommandResponse::Updated(_) => Ok(()),
            // Expired (or deleted) meanwhile: the client still holds the cookie, so bring it back.
            CommandResponse::NotFound => {
                let create = SessionCommand::Create {
                    id,
                    data,
                    ttl_ms: ttl,
                    now_ms: now_ms(),
                };
                match self.replica.write(create).await.map_err(backend)?.1 {
                    CommandResponse::Created(_) | CommandResponse::AlreadyExists => Ok(()),
                    CommandResponse::TooManySessions { max_active } => {
                        Err(cluster_full(max_active))
                    }
                    other => Err(backend(format!("unexpected answer to create: {other:?}"))),
                }
            }
            CommandResponse::VersionMismatch { current } => {
                let reason = format!(
                    "session {id} was changed by another request meanwhile (now version {current}, \
                     this request read version {}); nothing written",
                    loaded.unwrap_or_default()
                );
                note_save_failure(SaveFailure::Conflict(reason.clone()));
                Err(backend(reason))
            }
            other => Err(backend(format!("unexpected answer to save: {other:?}"))),
        }
    }
}

/// A create the state machine refused because the cluster holds `max_active` sessions: answered
/// 503 with the reason (like Tomcat's `maxActiveSessions`).
fn cluster_full(max_active: u64) -> Error {
    let reason = format!(
        "the cluster holds {max_active} sessions, its limit (<sessions max-active>); \
         try again once some expire"
    );
    note_save_failure(SaveFailure::Unavailable(reason.clone()));
    backend(reason)
}

/// The record's data as stored (JSON, without [`LOADED_VERSION_KEY`]) and the version it was loaded
/// at, if it was loaded from the store; refused above `max_bytes`.
fn encode(record: &Record, max_bytes: usize) -> Result<(String, Option<u64>)> {
    let loaded = record
        .data
        .get(LOADED_VERSION_KEY)
        .and_then(serde_json::Value::as_u64);
    let stored: HashMap<&String, &serde_json::Value> = record
        .data
        .iter()
        .filter(|(key, _)| key.as_str() != LOADED_VERSION_KEY)
        .collect();
    let data = serde_json::to_string(&stored).map_err(|err| Error::Encode(err.to_string()))?;
    if data.len() > max_bytes {
        return Err(Error::Encode(format!(
            "session of {} bytes exceeds the limit of {} bytes",
            data.len(),
            max_bytes
        )));
    }
    Ok((data, loaded))
}

#[async_trait]
impl SessionStore for ClusterStore {
    async fn create(&self, record: &mut Record) -> Result<()> {
        let (data, _) = self.encode(record)?;
        if let Some(client) = CLIENT.try_with(|client| *client).ok().flatten()
            && let Err(wait) = self.rate.try_take(client)
        {
            note_save_failure(SaveFailure::RateLimited(wait));
            return Err(backend(format!(
                "{client} creates sessions faster than <sessions create-rate-per-ip>"
            )));
        }
        loop {
            let id = SessionId::generate();
            let command = SessionCommand::Create {
                id,
                data: data.clone(),
                ttl_ms: self.ttl(),
                now_ms: now_ms(),
            };
            match self.replica.write(command).await.map_err(backend)?.1 {
                CommandResponse::Created(_) => {
                    record.id = to_tower_id(&id);
                    return Ok(());
                }
                CommandResponse::AlreadyExists => continue,
                CommandResponse::TooManySessions { max_active } => {
                    return Err(cluster_full(max_active));
                }
                other => return Err(backend(format!("unexpected answer to create: {other:?}"))),
            }
        }
    }

    async fn save(&self, record: &Record) -> Result<()> {
        let saved = self.save_record(record).await;
        if let Err(err) = &saved {
            note_save_failure(SaveFailure::Unavailable(err.to_string()));
        }
        saved
    }

    async fn load(&self, id: &Id) -> Result<Option<Record>> {
        self.replica.linearizable_barrier().await.map_err(backend)?;
        let session_id = to_session_id(id);
        let now = now_ms();
        // Expiry is the leader's decision; this node's clock may be off (see the session API).
        let Some(stored) = self.replica.reader().get(&session_id) else {
            return Ok(None);
        };
        self.replica.touch(session_id);
        let mut data: HashMap<String, serde_json::Value> =
            serde_json::from_str(&stored.data).map_err(|err| Error::Decode(err.to_string()))?;
        data.insert(LOADED_VERSION_KEY.to_string(), stored.version.into());
        let expires_in = Duration::from_millis(stored.expires_at_ms().saturating_sub(now));
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date: OffsetDateTime::now_utc() + expires_in,
        }))
    }

    async fn delete(&self, id: &Id) -> Result<()> {
        let command = SessionCommand::Delete {
            id: to_session_id(id),
        };
        self.replica.write(command).await.map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_version_is_taken_out_of_the_stored_data() {
        let mut record = Record {
            id: Id(7),
            data: HashMap::from([("count".to_string(), serde_json::json!(5))]),
            expiry_date: OffsetDateTime::now_utc(),
        };
        // A new session (never loaded): written without a condition.
        assert_eq!(
            encode(&record, 1024).expect("encode"),
            (r#"{"count":5}"#.to_string(), None)
        );
        // A loaded one: written only over the version it was read at, and the key is not stored.
        record
            .data
            .insert(LOADED_VERSION_KEY.to_string(), serde_json::json!(12));
        assert_eq!(
            encode(&record, 1024).expect("encode"),
            (r#"{"count":5}"#.to_string(), Some(12))
        );
        assert!(matches!(encode(&record, 5), Err(Error::Encode(_))));
    }

    #[tokio::test]
    async fn a_failed_save_is_answered_with_its_reason() {
        use axum::http::StatusCode;
        use tower::ServiceExt;
        async fn answer(
            status: StatusCode,
            failure: Option<SaveFailure>,
        ) -> (StatusCode, serde_json::Value) {
            let app = axum::Router::new()
                .route(
                    "/",
                    axum::routing::get(move || async move {
                        // What the session layer does after the handler: save, and on failure 500.
                        if let Some(failure) = failure {
                            note_save_failure(failure);
                        }
                        status
                    }),
                )
                .layer(axum::middleware::from_fn(explain_save_failures));
            let request = axum::http::Request::new(axum::body::Body::empty());
            let response = app.oneshot(request).await.expect("response");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            )
        }
        let conflict =
            SaveFailure::Conflict("session x was changed by another request meanwhile".into());
        let (status, body) =
            answer(StatusCode::INTERNAL_SERVER_ERROR, Some(conflict.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("changed by another request"))
        );
        let down = SaveFailure::Unavailable("no Raft leader".into());
        let (status, body) = answer(StatusCode::INTERNAL_SERVER_ERROR, Some(down)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("no Raft leader"))
        );
        // A 500 that is not a failed save, and a noted failure the handler answered itself, pass.
        let (status, _) = answer(StatusCode::INTERNAL_SERVER_ERROR, None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let (status, _) = answer(StatusCode::OK, Some(conflict)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn ids_map_both_ways() {
        let ours = SessionId::generate();
        assert_eq!(to_session_id(&to_tower_id(&ours)), ours);
        let theirs = Id(-42);
        assert_eq!(to_tower_id(&to_session_id(&theirs)), theirs);
    }
}
