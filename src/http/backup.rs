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
use proto::raft::{CommandResponse, SessionCommand, decode_backup_file, encode_backup_file};
use serde_json::json;
use tracing::{info, warn};

use crate::events::now_ms;
use crate::node::NodeContext;
use crate::security::RequireAdmin;

/// A backup accepted by `/cluster/restore` may be this many times `<sessions max-bytes>` long (256 MiB
/// with the default 1 MiB). The file is decoded whole, so a restore holds the body and the decoded
/// sessions at once, about twice the limit: the bound keeps that well inside a node's memory while
/// leaving room for a quarter-million sessions of 1 KiB. A larger backup needs a larger `max-bytes`
/// on the node it is restored through.
pub const RESTORE_LIMIT_IN_MAX_SESSIONS: usize = 256;
/// The least a restore may send, whatever `max-bytes` says.
const MIN_RESTORE_BYTES: usize = 16 * 1024 * 1024;
/// A restore whose body sends nothing for this long is refused (408), freeing the restore slot.
const RESTORE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// One restore at a time per node: each may hold about twice its limit, so several at once would
/// multiply that (and restores are rare operator actions, not traffic).
static RESTORING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
/// Refused restores are logged at most this often (anyone can send one when no admin token is set).
static REFUSED_LOG: crate::security::LogThrottle =
    crate::security::LogThrottle::new(Duration::from_secs(10));
/// Sessions per `Import` entry: large enough to restore quickly, small enough to replicate smoothly.
const IMPORT_BATCH: usize = 500;

/// The backup routes.
pub fn routes() -> Router<NodeContext> {
    Router::new()
        .route("/cluster/backup", get(backup))
        .route("/cluster/restore", post(restore))
}

/// The largest restore body a node with these `<sessions max-bytes>` accepts.
pub fn restore_limit(session_max_bytes: usize) -> usize {
    session_max_bytes
        .saturating_mul(RESTORE_LIMIT_IN_MAX_SESSIONS)
        .max(MIN_RESTORE_BYTES)
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
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn backup(State(context): State<NodeContext>, _admin: RequireAdmin) -> Response {
    match crate::backup::take(&context).await {
        Ok(backup) => {
            info!(
                sessions = backup.sessions.len(),
                index = backup.log_index,
                "backup taken"
            );
            let name = format!(
                "attachment; filename=\"{}\"",
                crate::backup::file_name(&backup)
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
    State(context): State<NodeContext>,
    _admin: RequireAdmin,
    request: Request,
) -> Response {
    let Ok(_restoring) = RESTORING.try_acquire() else {
        if let Some(held_back) = REFUSED_LOG.allow() {
            warn!(held_back, "refused a restore while another one runs");
        }
        return error(
            StatusCode::CONFLICT,
            "another restore is running on this node; try again when it has finished".to_string(),
        );
    };
    let limit = restore_limit(context.config().cluster.sessions.max_bytes);
    let body = match read_bounded(request.into_body(), limit).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let decoded = decode_backup_file(&body);
    // The raw file is not needed once decoded: free it before the (long) import.
    drop(body);
    let mut backup = match decoded {
        Ok(backup) => backup,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let total = backup.sessions.len();
    let (mut imported, mut skipped, mut last_index) = (0, 0, 0);
    // Moved into the batches rather than copied, so each imported batch's memory is freed.
    let mut sessions = std::mem::take(&mut backup.sessions).into_iter();
    loop {
        let records: Vec<_> = sessions.by_ref().take(IMPORT_BATCH).collect();
        if records.is_empty() {
            break;
        }
        let command = SessionCommand::Import {
            records,
            now_ms: now_ms(),
        };
        match context.replica().write(command).await {
            Ok((log_id, CommandResponse::Imported { count, skipped: s })) => {
                imported += count;
                skipped += s;
                last_index = log_id.index;
            }
            Ok((_, other)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer to import: {other:?}"),
                );
            }
            Err(err) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("restore stopped after {imported} of {total} sessions: {err}"),
                );
            }
        }
    }
    info!(
        imported,
        skipped,
        from = %backup.cluster_id,
        taken_at_index = backup.log_index,
        "restored a backup"
    );
    axum::Json(json!({
        "imported": imported,
        "skipped": skipped,
        "sessions_in_backup": total,
        "from_cluster": backup.cluster_id,
        "taken_at_index": backup.log_index,
        "log_index": last_index,
    }))
    .into_response()
}
