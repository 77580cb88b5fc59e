//! Deferred deletion of purged log chunk files.
//!
//! After a snapshot, openraft purges the log and `raft-log` deletes the chunk files it no longer
//! needs, on the same worker thread that syncs every append. Freeing a 64 MiB file took ~60 ms on
//! this project's test machine, and every write waited behind it. So before each purge the closed
//! chunk files get a second name (a hard link) in `<data_dir>/raft-log-trash/`: `raft-log`'s unlink
//! then only removes a directory entry, and the blocks are freed here, on a low-priority thread,
//! by truncating each file a few MiB at a time before unlinking it (as RocksDB's `DeleteScheduler`
//! does with its trash directory). A file is freed only once `raft-log` has let go of it (its link
//! count is 1); one it still uses stays until a later purge. Any failure here only means the file is
//! deleted the slow way, by `raft-log`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

/// Name of the trash directory, next to the log directory.
const TRASH_DIR: &str = "raft-log-trash";
/// A file in the trash is shortened by this much at a time.
const TRUNCATE_STEP_BYTES: u64 = 4 * 1024 * 1024;
/// Pause between two steps, so the file system's own work is spread out too.
const STEP_PAUSE: Duration = Duration::from_millis(2);
/// How long after a purge the trash is collected: `raft-log` unlinks the purged files only after
/// the purge record is synced.
pub(super) const COLLECT_AFTER: Duration = Duration::from_secs(1);

/// The trash of one log directory.
#[derive(Debug)]
pub(super) struct ChunkTrash {
    log_dir: PathBuf,
    trash_dir: PathBuf,
    collecting: AtomicBool,
}

impl ChunkTrash {
    /// The trash next to `log_dir`; files left from a previous run are freed in the background.
    pub(super) fn open(log_dir: &Path) -> Arc<ChunkTrash> {
        let trash_dir = log_dir.with_file_name(TRASH_DIR);
        if let Err(err) = std::fs::create_dir_all(&trash_dir) {
            warn!(dir = %trash_dir.display(), error = %err, "cannot create the log chunk trash; purged chunks are deleted in place");
        }
        let trash = Arc::new(ChunkTrash {
            log_dir: log_dir.to_path_buf(),
            trash_dir,
            collecting: AtomicBool::new(false),
        });
        trash.clone().collect_later(Duration::ZERO);
        trash
    }

    /// Gives every closed chunk file (all but the newest) a second name in the trash.
    pub(super) fn keep_aside(&self) {
        let mut chunks: Vec<PathBuf> = match std::fs::read_dir(&self.log_dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
                .collect(),
            Err(err) => {
                debug!(dir = %self.log_dir.display(), error = %err, "cannot list log chunks");
                return;
            }
        };
        chunks.sort();
        chunks.pop(); // the newest is still being written
        for chunk in chunks {
            let Some(name) = chunk.file_name() else {
                continue;
            };
            let link = self.trash_dir.join(name);
            if link.exists() {
                continue;
            }
            if let Err(err) = std::fs::hard_link(&chunk, &link) {
                debug!(chunk = %chunk.display(), error = %err, "cannot keep log chunk aside");
            }
        }
    }

    /// Frees, after `delay`, the trash files `raft-log` has let go of; one collector at a time.
    pub(super) fn collect_later(self: Arc<Self>, delay: Duration) {
        if self.collecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("log-trash".to_string())
            .spawn(move || {
                super::state_machine::lower_this_threads_priority();
                std::thread::sleep(delay);
                self.collect();
                self.collecting.store(false, Ordering::Release);
            });
        if let Err(err) = spawned {
            warn!(error = %err, "cannot start the log chunk trash collector");
        }
    }

    fn collect(&self) {
        let Ok(entries) = std::fs::read_dir(&self.trash_dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            // Still linked from the log directory: raft-log may read it; keep it for later.
            if entry.metadata().map_or(true, |meta| meta.nlink() > 1) {
                continue;
            }
            if let Err(err) = free_slowly(&path) {
                warn!(file = %path.display(), error = %err, "cannot delete a purged log chunk");
            }
        }
    }
}

/// Shortens the file step by step, then unlinks it.
fn free_slowly(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > 0 {
        len = len.saturating_sub(TRUNCATE_STEP_BYTES);
        file.set_len(len)?;
        std::thread::sleep(STEP_PAUSE);
    }
    drop(file);
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purged_chunks_are_freed_here_and_live_ones_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path();
        let log_dir = dir.join("raft-log");
        std::fs::create_dir_all(&log_dir).expect("mkdir");
        for name in ["r-1.wal", "r-2.wal", "r-3.wal"] {
            std::fs::write(log_dir.join(name), vec![7u8; 10 * 1024 * 1024]).expect("chunk");
        }
        let trash = ChunkTrash::open(&log_dir);
        trash.keep_aside();
        let trash_dir = dir.join(TRASH_DIR);
        // The newest chunk is not kept aside; the closed ones are, once.
        assert!(trash_dir.join("r-1.wal").exists() && trash_dir.join("r-2.wal").exists());
        assert!(!trash_dir.join("r-3.wal").exists());
        trash.keep_aside();
        // raft-log purges the first chunk: it only loses its name there.
        std::fs::remove_file(log_dir.join("r-1.wal")).expect("unlink");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while trash.collecting.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "start-up collection hangs"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        trash.collect();
        assert!(!trash_dir.join("r-1.wal").exists(), "freed");
        assert!(trash_dir.join("r-2.wal").exists(), "still in the log: kept");
        assert_eq!(
            std::fs::read(log_dir.join("r-2.wal"))
                .expect("live chunk")
                .len(),
            10 * 1024 * 1024
        );
    }
}
