//! Every type that crosses the network or lands on disk, in one place.
//!
//! Gossip carries plain strings (chitchat key/values); the keys and the value formats are fixed here so
//! that two versions of the binary agree on them. Binary messages (peer RPC, Raft log entries and
//! snapshots) are postcard-encoded, and every message type has a golden file under `tests/golden/`.

pub mod gossip;
pub mod hop;
pub mod raft;
pub mod wire;

pub use wire::{DecodeError, decode, encode, encode_with_capacity};
