//! Restoring sessions from a backup: the decoded sessions go in as `Import` entries through the
//! write queue (as every session write does), in batches, one restore at a time per node.
//!
//! `POST /cluster/restore` (`http::backup`) reads and decodes the body and answers; this module
//! holds what a restore may take and how its sessions are written.

use proto::raft::{Backup, CommandResponse, SessionCommand};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::info;

use crate::clock::now_ms;
use crate::raft::replica::{ConsensusError, Replica};

/// A backup accepted by `/cluster/restore` may be this many times `<sessions max-bytes>` long (256 MiB
/// with the default 1 MiB). The file is decoded whole, so a restore holds the body and the decoded
/// sessions at once, about twice the limit: the bound keeps that well inside a node's memory while
/// leaving room for a quarter-million sessions of 1 KiB. A larger backup needs a larger `max-bytes`
/// on the node it is restored through.
pub const RESTORE_LIMIT_IN_MAX_SESSIONS: usize = 256;
/// The least a restore may send, whatever `max-bytes` says.
pub const MIN_RESTORE_BYTES: usize = 16 * 1024 * 1024;
/// Sessions per `Import` entry: large enough to restore quickly, small enough to replicate smoothly.
const IMPORT_BATCH: usize = 500;
/// One restore at a time per node: each may hold about twice its limit, so several at once would
/// multiply that (and restores are rare operator actions, not traffic).
static RESTORING: Semaphore = Semaphore::const_new(1);

/// The largest restore body a node with these `<sessions max-bytes>` accepts.
pub fn restore_limit(session_max_bytes: usize) -> usize {
    session_max_bytes
        .saturating_mul(RESTORE_LIMIT_IN_MAX_SESSIONS)
        .max(MIN_RESTORE_BYTES)
}

/// This node's one restore slot, held from before the body is read until the import ends.
pub struct RestoreSlot {
    _permit: SemaphorePermit<'static>,
}

/// Takes the restore slot; `None` while another restore runs on this node.
pub fn try_begin() -> Option<RestoreSlot> {
    RESTORING
        .try_acquire()
        .ok()
        .map(|permit| RestoreSlot { _permit: permit })
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Sessions inserted.
    pub imported: u64,
    /// Sessions skipped because a live session had the id.
    pub skipped: u64,
    /// Sessions the backup held.
    pub sessions_in_backup: usize,
    /// `id` of the cluster the backup was taken in.
    pub from_cluster: String,
    /// Applied log index the backup was taken at.
    pub taken_at_index: u64,
    /// Log index of the last `Import` entry (0 for an empty backup).
    pub log_index: u64,
}

/// Why a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// An `Import` was answered with something else (a bug, not a condition to retry).
    #[error("unexpected answer to import: {0:?}")]
    UnexpectedAnswer(CommandResponse),
    /// A write failed; the batches before it are in.
    #[error("restore stopped after {imported} of {total} sessions: {source}")]
    Stopped {
        /// Sessions inserted before the failure.
        imported: u64,
        /// Sessions the backup held.
        total: usize,
        /// Why the write failed.
        source: ConsensusError,
    },
}

/// Writes `backup`'s sessions through `replica`, [`IMPORT_BATCH`] per `Import` entry, in the order
/// the backup holds them; the caller holds the [`RestoreSlot`].
pub async fn restore(
    replica: &Replica,
    _slot: &RestoreSlot,
    mut backup: Backup,
) -> Result<Restored, RestoreError> {
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
        match replica.write(command).await {
            Ok((log_id, CommandResponse::Imported { count, skipped: s })) => {
                imported += count;
                skipped += s;
                last_index = log_id.index;
            }
            Ok((_, other)) => return Err(RestoreError::UnexpectedAnswer(other)),
            Err(source) => {
                return Err(RestoreError::Stopped {
                    imported,
                    total,
                    source,
                });
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
    Ok(Restored {
        imported,
        skipped,
        sessions_in_backup: total,
        from_cluster: backup.cluster_id,
        taken_at_index: backup.log_index,
        log_index: last_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_limit_scales_with_max_bytes_above_a_floor() {
        assert_eq!(restore_limit(1024 * 1024), 256 * 1024 * 1024);
        assert_eq!(restore_limit(1024), MIN_RESTORE_BYTES);
        assert_eq!(restore_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn one_restore_at_a_time() {
        let first = try_begin().expect("free slot");
        assert!(try_begin().is_none());
        drop(first);
        assert!(try_begin().is_some());
    }
}
