//! Hop frames on the wire: length-prefixed postcard messages ([`proto::hop`]), sealed when the
//! connection is keyed, gathered into one write and read many at a time; their size limits; the
//! credit steps of a stream's window; and headers to and from their wire form.

use std::net::SocketAddr;

use axum::http::{HeaderName, HeaderValue};
use proto::hop::{HopHeader, STREAM_WINDOW_BYTES};
use proto::raft::FRAME_HEADER_BYTES;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::crypto::{FrameCipher, TAG_BYTES};
use crate::peer::{PEER_TRAFFIC, PeerError, PeerStream};

/// Largest hop frame body: a request held for retry (64 KiB) or a body chunk, plus headers.
pub(super) const MAX_HOP_FRAME_BYTES: usize = 1024 * 1024;
/// Most credit a stream's window holds, whatever the peer sends.
pub(super) const MAX_WINDOW_BYTES: usize = 16 * STREAM_WINDOW_BYTES as usize;
/// Read buffer of a hop connection: one read takes in many frames.
pub(super) const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A writer stops gathering frames at this many bytes and writes them.
pub(super) const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Credit for a response body is returned in steps of at least this many bytes.
pub(super) const CREDIT_STEP_BYTES: u32 = STREAM_WINDOW_BYTES / 4;

/// Reads hop frames from a buffered socket, opening them when the connection is sealed.
pub(super) struct FrameReader {
    read: BufReader<OwnedReadHalf>,
    cipher: Option<FrameCipher>,
    addr: SocketAddr,
    body: Vec<u8>,
}

impl FrameReader {
    /// The next message, or `None` when the peer closed the connection between frames.
    pub(super) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, PeerError> {
        let addr = self.addr;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(PeerError::Io { addr, source }),
        }
        let len = u32::from_be_bytes(header) as usize;
        let limit = MAX_HOP_FRAME_BYTES + if self.cipher.is_some() { TAG_BYTES } else { 0 };
        if len > limit {
            return Err(PeerError::Protocol {
                addr,
                reason: format!("hop frame of {len} bytes exceeds {limit} bytes"),
            });
        }
        // Bounded by the limit just checked, so allocating the announced length is safe.
        self.body.clear();
        self.body.resize(len, 0);
        self.read
            .read_exact(&mut self.body)
            .await
            .map_err(|source| PeerError::Io { addr, source })?;
        PEER_TRAFFIC.record_received(FRAME_HEADER_BYTES + len, 1);
        if let Some(cipher) = &mut self.cipher {
            cipher
                .open(&header, &mut self.body)
                .map_err(|err| PeerError::Protocol {
                    addr,
                    reason: err.to_string(),
                })?;
        }
        proto::raft::decode_frame_body(&self.body)
            .map(Some)
            .map_err(|err| PeerError::Protocol {
                addr,
                reason: err.to_string(),
            })
    }
}

/// Gathers hop frames in a buffer (sealing each when the connection is keyed) and writes them at once.
pub(super) struct FrameWriter {
    write: OwnedWriteHalf,
    cipher: Option<FrameCipher>,
    addr: SocketAddr,
    buf: Vec<u8>,
    frames: u64,
}

impl FrameWriter {
    fn push<T: Serialize>(&mut self, message: &T) -> Result<(), PeerError> {
        let addr = self.addr;
        let start = self.buf.len();
        let protocol = |reason: String| PeerError::Protocol { addr, reason };
        self.buf = proto::raft::encode_frame_into(message, std::mem::take(&mut self.buf))
            .map_err(|err| protocol(err.to_string()))?;
        if let Some(cipher) = &mut self.cipher {
            let sealed_len = self.buf.len() - start - FRAME_HEADER_BYTES + TAG_BYTES;
            let header = u32::try_from(sealed_len)
                .map_err(|_| protocol(format!("frame of {sealed_len} bytes is too large")))?
                .to_be_bytes();
            self.buf[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header);
            cipher
                .seal(&header, &mut self.buf, start + FRAME_HEADER_BYTES)
                .map_err(|err| protocol(err.to_string()))?;
        }
        self.frames += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), PeerError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.write
            .write_all(&self.buf)
            .await
            .map_err(|source| PeerError::Io {
                addr: self.addr,
                source,
            })?;
        PEER_TRAFFIC.record_sent(self.buf.len(), self.frames);
        self.frames = 0;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BATCH_BYTES {
            self.buf.shrink_to(WRITE_BATCH_BYTES);
        }
        Ok(())
    }
}

/// Splits a handshaken peer connection into its framed halves.
pub(super) fn split(stream: PeerStream, addr: SocketAddr) -> (FrameReader, FrameWriter) {
    let (socket, ciphers) = stream.into_parts();
    let (sending, receiving) = match ciphers {
        Some((sending, receiving)) => (Some(sending), Some(receiving)),
        None => (None, None),
    };
    let (read, write) = socket.into_split();
    (
        FrameReader {
            read: BufReader::with_capacity(READ_BUFFER_BYTES, read),
            cipher: receiving,
            addr,
            body: Vec::new(),
        },
        FrameWriter {
            write,
            cipher: sending,
            addr,
            buf: Vec::with_capacity(WRITE_BATCH_BYTES),
            frames: 0,
        },
    )
}

/// Writes what `outgoing` delivers until it closes or a write fails; each write carries every frame
/// queued by then.
pub(super) async fn write_loop<T: Serialize>(
    mut writer: FrameWriter,
    mut outgoing: mpsc::UnboundedReceiver<T>,
) -> Result<(), PeerError> {
    while let Some(message) = outgoing.recv().await {
        writer.push(&message)?;
        // Let the tasks that are ready to run (other requests, other responses) queue their
        // frames first: under load one write then carries many, and when nothing else is ready
        // this costs one trip through the scheduler.
        tokio::task::yield_now().await;
        while writer.buf.len() < WRITE_BATCH_BYTES {
            match outgoing.try_recv() {
                Ok(message) => writer.push(&message)?,
                Err(_) => break,
            }
        }
        writer.flush().await?;
    }
    Ok(())
}

pub(super) fn headers_to_wire(headers: &axum::http::HeaderMap) -> Vec<HopHeader> {
    headers
        .iter()
        .map(|(name, value)| HopHeader {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

pub(super) fn headers_from_wire(
    fields: Vec<HopHeader>,
    into: &mut axum::http::HeaderMap,
) -> Result<(), String> {
    into.reserve(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", field.name))?;
        let value = HeaderValue::from_bytes(&field.value)
            .map_err(|_| format!("invalid value of header {name}"))?;
        into.append(name, value);
    }
    Ok(())
}
