//! Log hygiene: the default filter, outside text escaped before it is logged, warnings that outside
//! input can trigger throttled (ours by a [`LogThrottle`] each, other crates' by
//! [`throttle_foreign_warnings`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Log filter when `RUST_LOG` is not set: our events at info; chitchat, openraft and raft-log only
/// when they warn; not openraft's core (one error per read while any follower is down) nor its
/// responder (one warning per write whose client went away); tower-sessions only on errors (it warns
/// once per request carrying a malformed session cookie, which any client can send).
pub const DEFAULT_LOG_FILTER: &str = "info,chitchat=warn,openraft=warn,raft_log=warn,\
    openraft::core::raft_core=off,openraft::raft::responder=error,tower_sessions=error";

/// Lets one warning through per interval and counts the rest, so that a flood of refused input
/// (forged datagrams, strangers on the peer port) costs one log line, not one per packet.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back since the last one.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

/// A per-layer log filter for warnings that outside input triggers inside crates we do not own:
/// chitchat warns once per gossip datagram it cannot decode (anyone can send those without a cluster
/// key). Such events pass at most once per 10 s; everything else passes as the level filter says.
pub fn throttle_foreign_warnings<S>() -> impl tracing_subscriber::layer::Filter<S> {
    static CHITCHAT_UDP: LogThrottle = LogThrottle::new(Duration::from_secs(10));
    static RAFT_REPLICATION: CallsiteThrottle = CallsiteThrottle::new(Duration::from_secs(60));
    tracing_subscriber::filter::dynamic_filter_fn(|meta: &tracing::Metadata<'_>, _| {
        if !meta.is_event() || *meta.level() > tracing::Level::WARN {
            return true;
        }
        let target = meta.target();
        if target.starts_with("chitchat::transport") {
            CHITCHAT_UDP.allow().is_some()
        } else if target.starts_with("openraft::replication")
            || target.starts_with("openraft::engine::handler::replication_handler")
        {
            // A leader retries a dead voter every 500 ms and openraft writes four lines each time,
            // naming raft ids; `raft::network` logs one line per peer per 10 s by name instead, with
            // the count held back, and these pass once per minute per kind.
            RAFT_REPLICATION.allow(meta.callsite())
        } else {
            true
        }
    })
}

/// At most one event per `interval` for each call site (each `warn!` in the source): a
/// [`LogThrottle`] per call site.
struct CallsiteThrottle {
    interval: Duration,
    by_callsite: Mutex<Option<HashMap<tracing::callsite::Identifier, LogThrottle>>>,
}

impl CallsiteThrottle {
    const fn new(interval: Duration) -> CallsiteThrottle {
        CallsiteThrottle {
            interval,
            by_callsite: Mutex::new(None),
        }
    }

    fn allow(&self, callsite: tracing::callsite::Identifier) -> bool {
        let mut by_callsite = self
            .by_callsite
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_callsite
            .get_or_insert_with(HashMap::new)
            .entry(callsite)
            .or_insert_with(|| LogThrottle::new(self.interval))
            .allow()
            .is_some()
    }
}

/// Longest piece of outside text a log line quotes; the rest is cut (and says so).
const MAX_LOGGED_CHARS: usize = 200;

/// `text` (from a peer or a client) made safe to put in a log line: every control character
/// (newline, carriage return, escape, and the rest of Unicode's `Cc`) is written as a Rust escape,
/// so outside input can neither start a forged line nor send terminal escapes, and the text is cut
/// at [`MAX_LOGGED_CHARS`] characters.
pub fn escape_for_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LOGGED_CHARS + 16));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_LOGGED_CHARS {
            out.push_str("...(cut)");
            break;
        }
        if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_escaped_before_it_is_logged() {
        let forged = "node-9\n2026-12-03T13:00:00Z  INFO forged line\u{1b}[31m\u{202e}";
        let escaped = escape_for_log(forged);
        assert!(
            !escaped.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{escaped:?}"
        );
        assert!(escaped.starts_with("node-9\\n2026"), "{escaped}");
        let long = escape_for_log(&"x".repeat(10_000));
        assert!(long.len() < 300 && long.ends_with("(cut)"), "{long}");
    }

    #[test]
    fn log_throttle_counts_what_it_holds_back() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        let open = LogThrottle::new(Duration::ZERO);
        assert_eq!(open.allow(), Some(0));
        assert_eq!(open.allow(), Some(0));
    }
}
