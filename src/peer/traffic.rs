//! Counters of peer-port traffic: frames and bytes both ways, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Peer-port traffic of this process (both directions: Raft, forwarded writes, hop channels, hellos
/// included).
///
/// Process-wide rather than per node: a process runs one node, and counting in the frame functions
/// keeps every call site as it is.
#[derive(Debug, Default)]
pub struct PeerTraffic {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
}

/// The counters of this process.
pub static PEER_TRAFFIC: PeerTraffic = PeerTraffic {
    bytes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    frames_sent: AtomicU64::new(0),
    frames_received: AtomicU64::new(0),
};

impl PeerTraffic {
    /// Counts `frames` sent, `bytes` in all (headers included).
    pub(crate) fn record_sent(&self, bytes: usize, frames: u64) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_sent.fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts `frames` received, `bytes` in all (headers included).
    pub(crate) fn record_received(&self, bytes: usize, frames: u64) {
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.frames_received.fetch_add(frames, Ordering::Relaxed);
    }

    /// `(bytes sent, bytes received, frames sent, frames received)` since start.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.bytes_sent.load(Ordering::Relaxed),
            self.bytes_received.load(Ordering::Relaxed),
            self.frames_sent.load(Ordering::Relaxed),
            self.frames_received.load(Ordering::Relaxed),
        )
    }
}
