//! A backup file: every session and the configuration as of one applied index.

use serde::{Deserialize, Serialize};

use super::SessionRecord;

/// The first bytes of a backup file; a format change takes a new magic.
pub const BACKUP_FILE_MAGIC: [u8; 8] = *b"MTBACK01";

/// A backup: every session and the configuration, as of one applied log index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// `id` of `<cluster>` where it was taken.
    pub cluster_id: String,
    /// The node that wrote it.
    pub node: String,
    /// Applied log index the sessions are consistent with.
    pub log_index: u64,
    /// Wall-clock time it was taken, ms since the Unix epoch.
    pub created_ms: u64,
    /// The node's config file, verbatim (empty when it runs without one).
    pub config_xml: String,
    /// Every session.
    pub sessions: Vec<SessionRecord>,
}

/// A backup file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// Not a backup file (or a version we do not know).
    #[error("not a micro-tomcat backup (expected it to start with {:?})", String::from_utf8_lossy(&BACKUP_FILE_MAGIC))]
    BadMagic,
    /// The body does not decode.
    #[error("damaged backup: {0}")]
    Body(#[from] crate::DecodeError),
}

/// Encodes a backup file: the magic, then the postcard-encoded [`Backup`].
pub fn encode_backup_file(backup: &Backup) -> Vec<u8> {
    let mut bytes = BACKUP_FILE_MAGIC.to_vec();
    bytes.extend(crate::encode(backup));
    bytes
}

/// Decodes a backup file; never panics on damaged input.
pub fn decode_backup_file(bytes: &[u8]) -> Result<Backup, BackupFileError> {
    let body = bytes
        .strip_prefix(&BACKUP_FILE_MAGIC[..])
        .ok_or(BackupFileError::BadMagic)?;
    Ok(crate::decode(body)?)
}
