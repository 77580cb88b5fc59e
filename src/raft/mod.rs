//! Durable Raft storage for the replicated session store.
//!
//! On disk, under a node's data dir:
//! - `raft-log/` — the Raft log and vote ([`LogStore`], the `raft-log` crate's chunk files);
//! - `raft-log-trash/` — second names of closed chunk files, freed in the background once purged
//!   (`trash`);
//! - `snapshot/current.snap` — the latest session snapshot ([`SessionStateMachine`]).
//!
//! openraft drives both through [`LogStore`] (`RaftLogStorage`) and [`SessionStateMachine`]
//! (`RaftStateMachine`); everything else reads sessions through a [`SessionReader`].

pub mod admission;
pub mod batch;
mod bootstrap;
pub mod durable;
mod housekeeping;
pub mod log_store;
pub mod network;
mod reconcile;
pub mod replica;
pub mod state_machine;
pub mod status;
mod trash;

use std::io;
use std::path::{Path, PathBuf};

pub use log_store::LogStore;
pub use state_machine::{ExpiredEvent, SessionReader, SessionSnapshotBuilder, SessionStateMachine};

/// Directory of the Raft log inside a data dir.
pub const LOG_DIR: &str = "raft-log";
/// Directory of the session snapshot inside a data dir.
pub const SNAPSHOT_DIR: &str = "snapshot";

/// Why the Raft storage of a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum RaftStorageError {
    /// A storage directory cannot be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The Raft log cannot be opened: damaged beyond a torn tail, unreadable, or locked.
    #[error(
        "cannot open the Raft log in {}: {source} (if another micro-tomcat uses this data dir, \
         stop it; if the log is damaged, move the data dir away and let the node rejoin as a new member)",
        path.display()
    )]
    OpenLog {
        /// The log directory.
        path: PathBuf,
        /// What raft-log reported.
        #[source]
        source: io::Error,
    },
    /// The snapshot file cannot be read.
    #[error("cannot read the session snapshot {}: {source}", path.display())]
    ReadSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The snapshot file is damaged or of another format version.
    #[error(
        "the session snapshot {} is damaged: {reason} (move the data dir away and let the node \
         rejoin as a new member)",
        path.display()
    )]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Opens the Raft log and the session state machine of `data_dir`, creating them if absent.
pub fn open_storage(data_dir: &Path) -> Result<(LogStore, SessionStateMachine), RaftStorageError> {
    let log = LogStore::open(&data_dir.join(LOG_DIR))?;
    let state_machine = SessionStateMachine::open(&data_dir.join(SNAPSHOT_DIR))?
        .apply_when_synced(log.durability());
    Ok((log, state_machine))
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};
    use proto::raft::TypeConfig;

    use super::*;

    struct TempStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, SessionStateMachine, tempfile::TempDir>
        for TempStoreBuilder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, SessionStateMachine), StorageError<u64>> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let (log, state_machine) =
                open_storage(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
            Ok((dir, log, state_machine))
        }
    }

    /// openraft's own storage conformance suite.
    #[test]
    fn openraft_storage_suite() {
        if let Err(e) = Suite::test_all(TempStoreBuilder) {
            panic!("openraft storage suite failed: {e}");
        }
    }

    #[test]
    fn open_storage_lays_out_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_log, _sm) = open_storage(dir.path()).expect("open");
        assert!(dir.path().join(LOG_DIR).is_dir());
        assert!(dir.path().join(SNAPSHOT_DIR).is_dir());
    }

    #[test]
    fn damaged_snapshot_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot_dir = dir.path().join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snapshot_dir).expect("mkdir");
        let path = snapshot_dir.join(state_machine::SNAPSHOT_FILE);
        std::fs::write(&path, b"MTSNAP01 not really").expect("write");
        let err = open_storage(dir.path()).expect_err("damaged snapshot");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("damaged"), "{text}");
    }
}
