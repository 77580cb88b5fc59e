//! postcard encoding with errors instead of panics for untrusted bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes that are not a valid message of the expected type.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {type_name}: {source}")]
pub struct DecodeError {
    /// The Rust type that was expected.
    pub type_name: &'static str,
    /// What postcard reported.
    #[source]
    pub source: postcard::Error,
}

/// Encodes a message with postcard.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing our own in-memory types cannot fail: postcard only errors on unsupported serde
    // features (maps with non-string keys are fine, `deserialize_any` is not used when encoding).
    postcard::to_allocvec(message).unwrap_or_default()
}

/// Like [`encode`], into a buffer allocated once with room for `capacity` bytes: for large messages
/// whose size the caller can estimate, so the buffer is not regrown (and copied) as it fills.
pub fn encode_with_capacity<T: Serialize>(message: &T, capacity: usize) -> Vec<u8> {
    postcard::to_extend(message, Vec::with_capacity(capacity)).unwrap_or_default()
}

/// Decodes a message, rejecting trailing bytes. Never panics; lengths inside the bytes are checked
/// against the remaining input by postcard before anything is allocated.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (message, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|source| DecodeError {
        type_name: std::any::type_name::<T>(),
        source,
    })?;
    if rest.is_empty() {
        Ok(message)
    } else {
        Err(DecodeError {
            type_name: std::any::type_name::<T>(),
            source: postcard::Error::DeserializeBadEncoding,
        })
    }
}
