//! Hop channel: application requests proxied between members over the peer port.
//!
//! A node that forwards a request to the member owning it opens one peer connection to that member
//! (hellos and, with a cluster key, the authenticated and sealed handshake, as for Raft) and asks for
//! a hop channel with [`crate::raft::PeerRequest::OpenHop`]. From then on the connection carries
//! many requests at once: each is a [`HopUp::Request`] with a stream number chosen by the sender,
//! answered by one [`HopDown::Head`] and, when the body does not fit in it, [`HopDown::Data`] frames,
//! in any order across streams. Frames are the peer port's frames (length header, postcard body,
//! sealed when keyed), written back to back so that one system call carries many of them.
//!
//! Response bodies are flow-controlled per stream: the serving member sends at most
//! [`STREAM_WINDOW_BYTES`] of body that the forwarding node has not yet acknowledged with
//! [`HopUp::Credit`], so a slow client never makes the forwarding node buffer a large download.

use serde::{Deserialize, Serialize};

/// Body bytes a serving member may send on one stream ahead of the forwarding node's credit.
pub const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// Largest body chunk in one [`HopDown::Data`] (or carried by a [`HopDown::Head`]).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// One header field; the value is bytes (HTTP allows non-UTF-8 values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopHeader {
    /// Lower-case field name.
    pub name: String,
    /// Field value.
    #[serde(with = "as_bytes")]
    pub value: Vec<u8>,
}

/// A forwarded request, complete with its body (only requests held in memory use a hop channel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopRequest {
    /// Stream number, unique among the sender's open streams on this connection.
    pub stream: u64,
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/app/hello?x=1`.
    pub target: String,
    /// Header fields in order (hop-by-hop ones already removed).
    pub headers: Vec<HopHeader>,
    /// The whole request body.
    #[serde(with = "as_bytes")]
    pub body: Vec<u8>,
}

/// From the forwarding node to the serving member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HopUp {
    /// Serve this request.
    Request(HopRequest),
    /// The forwarding node no longer wants the response (its client left, or it timed out).
    Cancel {
        /// The stream.
        stream: u64,
    },
    /// The forwarding node passed this many more body bytes of `stream` on to its client.
    Credit {
        /// The stream.
        stream: u64,
        /// Bytes acknowledged.
        bytes: u32,
    },
}

/// From the serving member to the forwarding node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HopDown {
    /// The response head, with the start of the body (all of it when `end`).
    Head {
        /// The stream.
        stream: u64,
        /// HTTP status code.
        status: u16,
        /// Header fields in order.
        headers: Vec<HopHeader>,
        /// The first body bytes.
        #[serde(with = "as_bytes")]
        body: Vec<u8>,
        /// Whether the body is complete.
        end: bool,
    },
    /// More body.
    Data {
        /// The stream.
        stream: u64,
        /// Body bytes.
        #[serde(with = "as_bytes")]
        chunk: Vec<u8>,
        /// Whether the body is complete after this chunk.
        end: bool,
    },
    /// The response body failed after the head was sent; the stream is over.
    Reset {
        /// The stream.
        stream: u64,
        /// Why.
        reason: String,
    },
    /// The request was not served at all (the member is shutting down or not ready): it is safe to
    /// send it to another member, whatever its method.
    Refused {
        /// The stream.
        stream: u64,
        /// Why.
        reason: String,
    },
}

/// Byte vectors as one length-prefixed run of bytes, not a sequence of numbers.
mod as_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
                Ok(bytes.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(bytes)
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}
