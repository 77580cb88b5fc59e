//! `GET /cluster/backup` and `POST /cluster/restore`: every session and the config at one log index.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use proto::raft::{decode_backup_file, encode_backup_file};
use serde_json::json;
use tracing::{info, warn};

use crate::http::SharedState;
use crate::http::error::ApiError;
use crate::http::guards::RequireAdmin;
use crate::session::restore::{
    self, MIN_RESTORE_BYTES, RESTORE_LIMIT_IN_MAX_SESSIONS, RestoreError, restore_limit,
};

/// A restore whose body sends nothing for this long is refused (408), freeing the restore slot.
const RESTORE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused restores are logged at most this often (anyone can send one when no admin token is set).
static REFUSED_LOG: crate::logging::LogThrottle =
    crate::logging::LogThrottle::new(Duration::from_secs(10));

/// The backup routes.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/cluster/backup", get(backup))
        .route("/cluster/restore", post(restore))
}

/// Reads `body` into memory, at most `limit` bytes: refused with 413 before reading anything when its
/// declared length is larger, and as soon as more arrives when it declared none (or lied).
async fn read_bounded(body: Body, limit: usize) -> Result<Vec<u8>, Response> {
    let too_large = || {
        if let Some(held_back) = REFUSED_LOG.allow() {
            warn!(limit, held_back, "refused a restore larger than the limit");
        }
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a restore may send at most {limit} bytes ({RESTORE_LIMIT_IN_MAX_SESSIONS} x <sessions max-bytes>)"
            ),
        )
    };
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(too_large());
    }
    // Sized from what the client declared, but not beyond 16 MiB before that much has arrived.
    let mut bytes = Vec::with_capacity((declared as usize).min(MIN_RESTORE_BYTES));
    let mut body = body;
    loop {
        // A client that stops sending would hold the one restore slot forever.
        let Ok(next) = tokio::time::timeout(RESTORE_IDLE_TIMEOUT, body.frame()).await else {
            if let Some(held_back) = REFUSED_LOG.allow() {
                warn!(held_back, "refused a restore whose body stopped arriving");
            }
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the backup stopped arriving: nothing for {}s",
                    RESTORE_IDLE_TIMEOUT.as_secs()
                ),
            ));
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|err| {
            error(
                StatusCode::BAD_REQUEST,
                format!("reading the backup failed: {err}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if bytes.len() + data.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

fn error(status: StatusCode, message: String) -> Response {
    ApiError::new(status, message).into_response()
}

async fn backup(State(context): State<SharedState>, _admin: RequireAdmin) -> Response {
    match crate::ops::backup::take(&context.backup).await {
        Ok(backup) => {
            info!(
                sessions = backup.sessions.len(),
                index = backup.log_index,
                "backup taken"
            );
            let name = format!(
                "attachment; filename=\"{}\"",
                crate::ops::backup::file_name(&backup)
            );
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (header::CONTENT_DISPOSITION, name),
                ],
                encode_backup_file(&backup),
            )
                .into_response()
        }
        Err(message) => error(StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

async fn restore(
    State(context): State<SharedState>,
    _admin: RequireAdmin,
    request: Request,
) -> Response {
    let Some(slot) = restore::try_begin() else {
        if let Some(held_back) = REFUSED_LOG.allow() {
            warn!(held_back, "refused a restore while another one runs");
        }
        return error(
            StatusCode::CONFLICT,
            "another restore is running on this node; try again when it has finished".to_string(),
        );
    };
    let limit = restore_limit(context.session_max_bytes);
    let body = match read_bounded(request.into_body(), limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let decoded = decode_backup_file(&body);
    // The raw file is not needed once decoded: free it before the (long) import.
    drop(body);
    let backup = match decoded {
        Ok(backup) => backup,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    match restore::restore(&context.replica, &slot, backup).await {
        Ok(restored) => axum::Json(json!({
            "imported": restored.imported,
            "skipped": restored.skipped,
            "sessions_in_backup": restored.sessions_in_backup,
            "from_cluster": restored.from_cluster,
            "taken_at_index": restored.taken_at_index,
            "log_index": restored.log_index,
        }))
        .into_response(),
        Err(err @ RestoreError::UnexpectedAnswer(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
        }
        Err(err @ RestoreError::Stopped { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        }
    }
}
