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

    /// Removes comments and the contents of string and char literals from Rust source, so that
    /// only code is left (`"openraft=warn"` in a log filter names no type).
    fn code_only(source: &str) -> String {
        let chars: Vec<char> = source.chars().collect();
        let mut code = String::with_capacity(source.len());
        let mut i = 0;
        while i < chars.len() {
            let rest = &chars[i..];
            match rest {
                ['/', '/', ..] => {
                    while i < chars.len() && chars[i] != '\n' {
                        i += 1;
                    }
                }
                ['/', '*', ..] => {
                    let mut depth = 0;
                    while i < chars.len() {
                        if chars[i..].starts_with(&['/', '*']) {
                            depth += 1;
                            i += 2;
                        } else if chars[i..].starts_with(&['*', '/']) {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
                ['r', '#' | '"', ..] if i == 0 || !chars[i - 1].is_alphanumeric() => {
                    let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
                    if rest.get(1 + hashes) != Some(&'"') {
                        code.push('r');
                        i += 1;
                        continue;
                    }
                    i += 2 + hashes;
                    while i < chars.len() {
                        if chars[i] == '"'
                            && chars[i + 1..]
                                .iter()
                                .take(hashes)
                                .filter(|c| **c == '#')
                                .count()
                                == hashes
                        {
                            i += 1 + hashes;
                            break;
                        }
                        i += 1;
                    }
                    code.push_str("\"\"");
                }
                ['"', ..] => {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                    code.push_str("\"\"");
                }
                // A char literal ('x', '\n'); a lifetime ('a) has no closing quote.
                ['\'', '\\', ..] => {
                    i += 2;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                }
                ['\'', _, '\'', ..] => i += 3,
                [c, ..] => {
                    code.push(*c);
                    i += 1;
                }
                [] => break,
            }
        }
        code
    }

    #[test]
    fn code_only_drops_comments_and_literals() {
        let source = "use a; // openraft::X\n/* openraft */ let s = \"openraft=warn\"; \
                      let r = r#\"openraft\"#; let c = '\"'; fn f<'a>() {} openraft::Raft";
        let code = code_only(source);
        assert_eq!(code.matches("openraft").count(), 1, "{code}");
        assert!(code.contains("fn f<'a>()"), "{code}");
    }

    /// Only `raft` names openraft: the rest of the node reads [`status::RaftStatus`], so an openraft
    /// upgrade changes this module only.
    #[test]
    fn nothing_outside_raft_names_openraft() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let raft = src.join("raft");
        let mut pending = vec![src];
        let mut offenders = Vec::new();
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("dir entry").path();
                if path.starts_with(&raft) {
                    continue;
                }
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    let source = std::fs::read_to_string(&path).expect("read source");
                    let code = code_only(&source);
                    let named = code.match_indices("openraft").any(|(at, _)| {
                        let before = code[..at].chars().next_back();
                        let after = code[at + "openraft".len()..].chars().next();
                        let ident =
                            |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                        !ident(before) && !ident(after)
                    });
                    if named {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "openraft named outside src/raft/ in {offenders:?}"
        );
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
