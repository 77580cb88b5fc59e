//! Backups: every session and the config text at one applied log index, taken on demand
//! (`GET /cluster/backup`, `micro-tomcat backup`) or, with `<backup>`, written periodically into a
//! folder that keeps the newest `keep` files.
//!
//! Only the Raft leader writes periodic backups, so a cluster writes one per interval whatever its
//! size; a backup is due when the newest file of this cluster in the folder is `interval` old, so a
//! new leader (or a restarted one) carries on the schedule instead of starting it again. The settings
//! are read from the live configuration every second: a reload changes them at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use proto::raft::{Backup, encode_backup_file};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::clock::{now_ms, rfc3339};
use crate::config::BackupConfig;
use crate::ops::reload::LiveSettings;
use crate::raft::replica::Replica;

/// How often the periodic writer looks at its settings and the clock.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a failed periodic backup, the next attempt waits this long (or the interval, if shorter),
/// unless a reload changes `<backup>`.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);
/// The extension of backup files.
pub const FILE_EXTENSION: &str = "mtbackup";

/// What a backup is taken from.
#[derive(Clone)]
pub struct BackupSource {
    /// The sessions, read after a linearizable barrier.
    pub replica: Arc<Replica>,
    /// `id` of `<cluster>`.
    pub cluster_id: String,
    /// This node's name.
    pub node: String,
    /// The config file the node started with, whose text goes into the backup.
    pub config_file: Option<PathBuf>,
}

/// Takes a backup as of now: linearizable, so it holds every write acknowledged before the call.
pub async fn take(source: &BackupSource) -> Result<Backup, String> {
    let replica = &source.replica;
    replica
        .linearizable_barrier()
        .await
        .map_err(|err| err.to_string())?;
    let (index, sessions) = replica.reader().export();
    let config_xml = match &source.config_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?,
        None => String::new(),
    };
    Ok(Backup {
        cluster_id: source.cluster_id.clone(),
        node: source.node.clone(),
        log_index: index.unwrap_or(0),
        created_ms: now_ms(),
        config_xml,
        sessions,
    })
}

/// `micro-tomcat-demo-2026-01-31T12-34-56.789Z-1200.mtbackup`: the cluster, the UTC time (fixed width,
/// so names sort by time; no `:`, which some file systems refuse) and the log index.
pub fn file_name(backup: &Backup) -> String {
    let stamp = rfc3339(backup.created_ms).replace(':', "-");
    format!(
        "micro-tomcat-{}-{stamp}-{}.{FILE_EXTENSION}",
        backup.cluster_id, backup.log_index
    )
}

/// Whether `name` is a backup file of `cluster_id` as [`file_name`] writes them (and so one that
/// retention may delete; anything else in the folder is left alone).
fn is_backup_of(name: &str, cluster_id: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("micro-tomcat-")
        .and_then(|rest| rest.strip_prefix(cluster_id))
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(&format!(".{FILE_EXTENSION}")))
    else {
        return false;
    };
    // `YYYY-MM-DDTHH-MM-SS.mmmZ-<index>`; a longer cluster id that starts with ours fails here.
    let Some((stamp, index)) = rest.rsplit_once('-') else {
        return false;
    };
    let shape = "0000-00-00T00-00-00.000Z";
    stamp.len() == shape.len()
        && stamp.bytes().zip(shape.bytes()).all(|(byte, want)| {
            if want == b'0' {
                byte.is_ascii_digit()
            } else {
                byte == want
            }
        })
        && !index.is_empty()
        && index.bytes().all(|byte| byte.is_ascii_digit())
}

/// What periodic backups did, for `/metrics`.
#[derive(Debug, Default)]
pub struct BackupStats {
    written: AtomicU64,
    failed: AtomicU64,
    last_written_ms: AtomicU64,
}

impl BackupStats {
    /// Periodic backups this node wrote.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Periodic backups this node tried to write and could not.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Wall-clock ms of this node's last periodic backup, 0 before the first.
    pub fn last_written_ms(&self) -> u64 {
        self.last_written_ms.load(Ordering::Relaxed)
    }
}

/// What the periodic writer reads: where backups come from, its live settings, and its counters.
pub struct PeriodicBackups {
    /// What each backup is taken from.
    pub source: BackupSource,
    /// `<backup>`, read every second.
    pub live: Arc<LiveSettings>,
    /// What the writer did, for `/metrics`.
    pub stats: Arc<BackupStats>,
}

/// Starts the periodic writer on `tasks`; it stops on `shutdown`. Without `<backup>` it only checks,
/// once a second, whether a reload added one.
pub fn start(backups: PeriodicBackups, tasks: &TaskTracker, shutdown: CancellationToken) {
    tasks.spawn(write_periodically(backups, shutdown));
}

async fn write_periodically(backups: PeriodicBackups, shutdown: CancellationToken) {
    let me = backups.source.node.clone();
    let cluster_id = backups.source.cluster_id.clone();
    // After a failure: no attempt before this instant, unless a reload changed the settings.
    let mut backoff: Option<(tokio::time::Instant, BackupConfig)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let Some(settings) = backups.live.cluster.load().backup.clone() else {
            continue;
        };
        let waiting = backoff.as_ref().is_some_and(|(until, failed_with)| {
            tokio::time::Instant::now() < *until && *failed_with == settings
        });
        if waiting || !backups.source.replica.is_leader() {
            continue;
        }
        let dir = settings.dir.clone();
        let id = cluster_id.clone();
        let due = tokio::task::spawn_blocking(move || is_due(&dir, &id, settings.interval))
            .await
            .unwrap_or(Ok(true));
        match due {
            Ok(false) => continue,
            Ok(true) => {}
            // Writing will fail the same way and say so (once); try it.
            Err(err) => {
                debug!(node = %me, dir = %settings.dir.display(), "cannot list the backup folder: {err}");
            }
        }
        let stats = &backups.stats;
        match write_one(&backups.source, &settings).await {
            Ok(written) => {
                backoff = None;
                stats.written.fetch_add(1, Ordering::Relaxed);
                stats.last_written_ms.store(now_ms(), Ordering::Relaxed);
                info!(
                    node = %me,
                    sessions = written.sessions,
                    index = written.log_index,
                    bytes = written.bytes,
                    deleted = written.deleted,
                    "periodic backup written: {}",
                    written.path.display()
                );
            }
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let wait = RETRY_AFTER_FAILURE.min(settings.interval);
                backoff = Some((tokio::time::Instant::now() + wait, settings.clone()));
                warn!(
                    node = %me,
                    dir = %settings.dir.display(),
                    "periodic backup failed (next attempt in {}s): {err}",
                    wait.as_secs()
                );
            }
        }
    }
}

/// Whether the newest backup of `cluster_id` in `dir` is `interval` old (or there is none).
fn is_due(dir: &Path, cluster_id: &str, interval: Duration) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Created by the first write.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(err) => return Err(err),
    };
    let mut newest: Option<SystemTime> = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|name| is_backup_of(name, cluster_id))
        {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        newest = Some(newest.map_or(modified, |newest| newest.max(modified)));
    }
    Ok(match newest {
        None => true,
        Some(newest) => match SystemTime::now().duration_since(newest) {
            Ok(age) => age >= interval,
            // A file from the future: the clock went back. Wait for it unless that is over an interval.
            Err(ahead) => ahead.duration() > interval,
        },
    })
}

/// One periodic backup on disk.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    sessions: usize,
    log_index: u64,
    bytes: usize,
    deleted: usize,
}

/// Takes a backup and stores it in `settings.dir`, keeping the newest `settings.keep`.
async fn write_one(source: &BackupSource, settings: &BackupConfig) -> Result<Written, String> {
    let backup = take(source).await?;
    let name = file_name(&backup);
    let bytes = encode_backup_file(&backup);
    let (sessions, log_index, size) = (backup.sessions.len(), backup.log_index, bytes.len());
    drop(backup);
    let dir = settings.dir.clone();
    let keep = settings.keep;
    let cluster_id = source.cluster_id.clone();
    let stored = tokio::task::spawn_blocking(move || store(&dir, &name, &bytes, keep, &cluster_id))
        .await
        .map_err(|err| format!("the writer stopped: {err}"))?
        .map_err(|err| err.to_string())?;
    Ok(Written {
        path: stored.0,
        sessions,
        log_index,
        bytes: size,
        deleted: stored.1,
    })
}

/// Writes `bytes` as `dir/name` atomically (a hidden temporary file, synced, then renamed) and deletes
/// the oldest backups of `cluster_id` so that, the new one included, `keep` remain. Returns the path
/// and how many were deleted.
fn store(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    keep: usize,
    cluster_id: &str,
) -> std::io::Result<(PathBuf, usize)> {
    use std::io::Write;
    let context = |what: &str, path: &Path| {
        let what = what.to_string();
        let path = path.display().to_string();
        move |err: std::io::Error| std::io::Error::new(err.kind(), format!("{what} {path}: {err}"))
    };
    std::fs::create_dir_all(dir).map_err(context("cannot create", dir))?;
    let temp = dir.join(format!(".{name}.partial"));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(context("cannot write", &temp)(err));
    }
    // Make room before the rename, so the folder never holds more than `keep` backups (if the rename
    // then fails, it holds one fewer until the next backup).
    let mut existing: Vec<String> = std::fs::read_dir(dir)
        .map_err(context("cannot list", dir))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| is_backup_of(name, cluster_id))
        .collect();
    existing.sort();
    let excess = (existing.len() + 1).saturating_sub(keep);
    let mut deleted = 0;
    for old in existing.iter().take(excess) {
        match std::fs::remove_file(dir.join(old)) {
            Ok(()) => deleted += 1,
            Err(err) => warn!(
                "cannot delete old backup {}: {err}",
                dir.join(old).display()
            ),
        }
    }
    let path = dir.join(name);
    if let Err(err) = std::fs::rename(&temp, &path) {
        let _ = std::fs::remove_file(&temp);
        return Err(context("cannot rename into", &path)(err));
    }
    // The rename is durable once the folder is synced; not every file system allows it.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok((path, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(cluster_id: &str, created_ms: u64, log_index: u64) -> Backup {
        Backup {
            cluster_id: cluster_id.to_string(),
            node: "node-1".to_string(),
            log_index,
            created_ms,
            config_xml: String::new(),
            sessions: Vec::new(),
        }
    }

    #[test]
    fn names_sort_by_time_and_are_recognised_only_for_their_cluster() {
        let early = file_name(&backup("demo", 1_767_225_600_123, 900));
        let late = file_name(&backup("demo", 1_767_225_660_000, 12));
        assert_eq!(
            early,
            "micro-tomcat-demo-2026-01-01T00-00-00.123Z-900.mtbackup"
        );
        assert!(early < late, "{early} {late}");
        assert!(is_backup_of(&early, "demo"));
        assert!(!is_backup_of(&early, "dem"));
        assert!(!is_backup_of(&early, "demo-2"));
        let other = file_name(&backup("demo-2", 1_767_225_600_123, 900));
        assert!(!is_backup_of(&other, "demo"), "{other}");
        assert!(is_backup_of(&other, "demo-2"));
        for name in [
            "notes.txt",
            ".micro-tomcat-demo-2026-01-01T00-00-00.123Z-900.mtbackup.partial",
            "micro-tomcat-demo-2026-01-01T00-00-00.123Z-.mtbackup",
            "micro-tomcat-demo-2026-01-01T00:00:00.123Z-900.mtbackup",
            "micro-tomcat-demo-latest.mtbackup",
        ] {
            assert!(!is_backup_of(name, "demo"), "{name}");
        }
    }

    #[test]
    fn store_keeps_the_newest_and_leaves_other_files_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("nested/backups");
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(folder.join("notes.txt"), b"mine").expect("write");
        let foreign = file_name(&backup("other", 1_000, 1));
        std::fs::write(folder.join(&foreign), b"theirs").expect("write");
        let mut names = Vec::new();
        for step in 0..5u64 {
            let name = file_name(&backup("demo", 1_767_225_600_000 + step * 1_000, step));
            let (path, deleted) = store(&folder, &name, b"backup", 2, "demo").expect("stored");
            assert_eq!(path, folder.join(&name));
            assert_eq!(deleted, usize::from(step >= 2));
            names.push(name);
        }
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        left.sort();
        let mut expected = vec![
            names[3].clone(),
            names[4].clone(),
            foreign,
            "notes.txt".to_string(),
        ];
        expected.sort();
        assert_eq!(
            left, expected,
            "no temporary file, the two newest, others kept"
        );
        assert!(
            !is_due(&folder, "demo", Duration::from_secs(3600)).expect("list"),
            "just written"
        );
        assert!(is_due(&folder, "demo", Duration::ZERO).expect("list"));
        assert!(
            is_due(
                &dir.path().join("absent"),
                "demo",
                Duration::from_secs(3600)
            )
            .expect("absent")
        );
    }

    #[test]
    fn a_folder_that_cannot_be_created_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let err = store(&file.join("backups"), "b.mtbackup", b"x", 1, "demo")
            .expect_err("a file is in the way");
        assert!(err.to_string().contains("cannot create"), "{err}");
    }
}
