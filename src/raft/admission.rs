//! What a session write must look like before this node proposes it, and the cluster-wide limits the
//! leader stamps on it.
//!
//! The HTTP layer checks what clients send (a JSON object within `max-bytes`, a TTL within a year),
//! but a write can also arrive on the peer port as a forwarded `ClientWrite`, and without a cluster
//! key anyone who reaches that port can send one. Such a write is checked here exactly as the HTTP
//! layer would have checked it, so nothing reaches the log that a client could not have written: the
//! log is replayed on every node at every restart, and an entry none of them can use would be there
//! for good.

use std::sync::atomic::{AtomicU64, Ordering};

use proto::raft::{SessionCommand, SessionRecord};

use super::batch::MAX_BATCH_COMMANDS;

/// Largest TTL a session may have: one year (also the REST API's limit).
pub const MAX_TTL_MS: u64 = 365 * 24 * 3600 * 1000;
/// Most records one `Import` may carry (restore sends 500 at a time).
pub const MAX_IMPORT_RECORDS: usize = 10_000;

/// The limits of session writes on this node; the leader's apply cluster-wide.
#[derive(Debug)]
pub struct WriteLimits {
    /// Largest session data in bytes (`<sessions max-bytes>`).
    max_bytes: usize,
    /// Most sessions the cluster may hold (`<sessions max-active>`); reloadable.
    max_active: AtomicU64,
}

impl WriteLimits {
    /// Limits from `<sessions max-bytes>` and `<sessions max-active>`.
    pub fn new(max_bytes: usize, max_active: u64) -> WriteLimits {
        WriteLimits {
            max_bytes,
            max_active: AtomicU64::new(max_active),
        }
    }

    /// The session limit the leader puts on the creates it proposes.
    pub fn max_active(&self) -> u64 {
        self.max_active.load(Ordering::Relaxed)
    }

    /// Applies a reloaded `<sessions max-active>`: creates proposed from now on carry it.
    pub fn set_max_active(&self, max_active: u64) {
        self.max_active.store(max_active, Ordering::Relaxed);
    }

    /// Checks a write that came from another node, as the HTTP layer checks a client's.
    pub fn check_forwarded(&self, command: &SessionCommand) -> Result<(), String> {
        match command {
            SessionCommand::Create { data, ttl_ms, .. }
            | SessionCommand::CreateWithin { data, ttl_ms, .. } => {
                self.check_data(data)?;
                check_ttl(*ttl_ms)
            }
            SessionCommand::Put { data, ttl_ms, .. } => {
                self.check_data(data)?;
                ttl_ms.map_or(Ok(()), check_ttl)
            }
            SessionCommand::Import { records, .. } => {
                if records.len() > MAX_IMPORT_RECORDS {
                    return Err(format!(
                        "an import of {} records exceeds the limit of {MAX_IMPORT_RECORDS}",
                        records.len()
                    ));
                }
                records
                    .iter()
                    .try_for_each(|record| self.check_record(record))
            }
            SessionCommand::Batch(commands) => {
                if commands.len() > MAX_BATCH_COMMANDS {
                    return Err(format!(
                        "a batch of {} commands exceeds the limit of {MAX_BATCH_COMMANDS}",
                        commands.len()
                    ));
                }
                commands.iter().try_for_each(|command| match command {
                    SessionCommand::Batch(_) => Err("a batch inside a batch".to_owned()),
                    command => self.check_forwarded(command),
                })
            }
            // Times are replaced by the leader's clock before proposing (`SessionCommand::stamp`),
            // so these can only touch or expire what the leader would.
            SessionCommand::Delete { .. }
            | SessionCommand::Touch { .. }
            | SessionCommand::Expire { .. } => Ok(()),
        }
    }

    fn check_record(&self, record: &SessionRecord) -> Result<(), String> {
        self.check_data(&record.data)?;
        check_ttl(record.ttl_ms)
    }

    /// Session data: the JSON text of an object, within `max-bytes`.
    fn check_data(&self, data: &str) -> Result<(), String> {
        if data.len() > self.max_bytes {
            return Err(format!(
                "session data of {} bytes exceeds the limit of {} bytes",
                data.len(),
                self.max_bytes
            ));
        }
        // serde_json refuses nesting deeper than 128 levels, so this cannot recurse without bound.
        match serde_json::from_str::<serde_json::Value>(data) {
            Ok(value) if value.is_object() => Ok(()),
            Ok(_) => Err("session data must be a JSON object".to_owned()),
            Err(err) => Err(format!("session data is not JSON: {err}")),
        }
    }
}

fn check_ttl(ttl_ms: u64) -> Result<(), String> {
    if (1_000..=MAX_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(format!(
            "a TTL of {ttl_ms} ms is outside 1 second to 1 year"
        ))
    }
}

#[cfg(test)]
mod tests {
    use proto::raft::SessionId;

    use super::*;

    fn create(data: &str, ttl_ms: u64) -> SessionCommand {
        SessionCommand::Create {
            id: SessionId::from_bytes([1; 16]),
            data: data.to_owned(),
            ttl_ms,
            now_ms: 1,
        }
    }

    #[test]
    fn forwarded_writes_are_checked_as_the_http_layer_checks_them() {
        let limits = WriteLimits::new(1024, 10);
        assert_eq!(limits.check_forwarded(&create("{\"a\":1}", 60_000)), Ok(()));
        let refused = [
            create("[1,2]", 60_000),
            create("not json", 60_000),
            create(&format!("{{\"a\":\"{}\"}}", "x".repeat(2000)), 60_000),
            create("{}", 0),
            create("{}", MAX_TTL_MS + 1),
            create(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)), 60_000),
        ];
        for command in &refused {
            assert!(limits.check_forwarded(command).is_err(), "{command:?}");
        }
        let batch = SessionCommand::Batch(vec![create("{}", 60_000), create("7", 60_000)]);
        assert!(limits.check_forwarded(&batch).is_err());
        let nested = SessionCommand::Batch(vec![SessionCommand::Batch(vec![])]);
        assert_eq!(
            limits.check_forwarded(&nested),
            Err("a batch inside a batch".to_owned())
        );
        let too_many = SessionCommand::Batch(vec![create("{}", 60_000); MAX_BATCH_COMMANDS + 1]);
        assert!(limits.check_forwarded(&too_many).is_err());
    }
}
