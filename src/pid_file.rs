//! `<data-dir>/micro-tomcat.pid`: the running node's process id, so tools (scripts/cluster.sh `down`)
//! find a node however it was started.
//!
//! Written atomically (a temporary file, then a rename) once the node has its HTTP port, removed when
//! the process ends in order. A `kill -9` leaves it behind: a reader must check that the pid still
//! names a `micro-tomcat` process with this data dir before signalling it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the data dir.
pub const PID_FILE_NAME: &str = "micro-tomcat.pid";

/// Why the pid file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the pid file {path}: {source}")]
pub struct PidFileError {
    /// The file that could not be written.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// The pid file of this process; removed on drop if it still holds this process's id.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes `<data_dir>/micro-tomcat.pid` with this process's id, creating `data_dir` if needed.
    pub fn create(data_dir: &Path) -> Result<PidFile, PidFileError> {
        PidFile::create_for(data_dir, std::process::id())
    }

    fn create_for(data_dir: &Path, pid: u32) -> Result<PidFile, PidFileError> {
        let path = data_dir.join(PID_FILE_NAME);
        let temp = data_dir.join(format!(".{PID_FILE_NAME}.{pid}.tmp"));
        let failed = |source| PidFileError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(failed)?;
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            writeln!(file, "{pid}")?;
            file.sync_all()
        });
        if let Err(source) = written.and_then(|()| std::fs::rename(&temp, &path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(failed(source));
        }
        Ok(PidFile { path, pid })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another process may have taken the data dir over since (and written its own pid): leave
        // its file alone.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == self.pid.to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_with_the_pid_and_removed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data").join("node-1");
        let file = PidFile::create(&data).expect("pid file");
        assert_eq!(file.path(), data.join(PID_FILE_NAME));
        let text = std::fs::read_to_string(file.path()).expect("read");
        assert_eq!(text, format!("{}\n", std::process::id()));
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .expect("list")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(PID_FILE_NAME)]);
        drop(file);
        assert!(!data.join(PID_FILE_NAME).exists());
    }

    #[test]
    fn another_process_file_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = PidFile::create_for(dir.path(), 4_000_000).expect("pid file");
        std::fs::write(file.path(), "12345\n").expect("overwrite");
        let path = file.path().to_path_buf();
        drop(file);
        assert_eq!(std::fs::read_to_string(path).expect("kept"), "12345\n");
    }

    #[test]
    fn an_unwritable_dir_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "not a dir").expect("write");
        let err = PidFile::create(&blocker.join("node-1")).expect_err("cannot create");
        assert!(err.to_string().contains("micro-tomcat.pid"), "{err}");
    }
}
