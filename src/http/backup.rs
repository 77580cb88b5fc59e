//! `GET /cluster/backup` and `POST /cluster/restore`: every session and the config at one log index.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::raft::{CommandResponse, SessionCommand, decode_backup_file, encode_backup_file};
use serde_json::json;
use tracing::info;

use crate::events::now_ms;
use crate::node::NodeContext;
use crate::security::RequireAdmin;

/// Largest backup accepted by `/cluster/restore`.
pub const MAX_RESTORE_BYTES: usize = 1024 * 1024 * 1024;
/// Sessions per `Import` entry: large enough to restore quickly, small enough to replicate smoothly.
const IMPORT_BATCH: usize = 500;

/// The backup routes.
pub fn routes() -> Router<NodeContext> {
    Router::new().route("/cluster/backup", get(backup)).route(
        "/cluster/restore",
        post(restore).layer(DefaultBodyLimit::max(MAX_RESTORE_BYTES)),
    )
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
    body: Bytes,
) -> Response {
    let backup = match decode_backup_file(&body) {
        Ok(backup) => backup,
        Err(err) => return error(StatusCode::BAD_REQUEST, err.to_string()),
    };
    let total = backup.sessions.len();
    let (mut imported, mut skipped, mut last_index) = (0, 0, 0);
    for batch in backup.sessions.chunks(IMPORT_BATCH) {
        let command = SessionCommand::Import {
            records: batch.to_vec(),
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
