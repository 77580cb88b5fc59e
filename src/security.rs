//! Secrets and what they guard: the cluster key seals every gossip datagram and authenticates (and
//! encrypts) peer RPC; the admin token guards mutating admin calls.
//!
//! This module owns the crypto crates (`chacha20poly1305`, `hmac`, `sha2`, `subtle`, `base64`); the
//! rest of the node sees [`ClusterKey`], [`GossipSeal`], [`PeerKey`], [`FrameCipher`] and
//! [`AdminAuth`]. No secret is ever logged or displayed: their `Debug` prints `ClusterKey(..)`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::SecurityConfig;

/// Environment variable holding the cluster key; overrides `<security gossip-key-file>`.
pub const GOSSIP_KEY_ENV: &str = "MICRO_TOMCAT_GOSSIP_KEY";
/// Environment variable holding the admin token; overrides `<security admin-token-file>`.
pub const ADMIN_TOKEN_ENV: &str = "MICRO_TOMCAT_ADMIN_TOKEN";
/// Length of the cluster key in bytes (base64 of 32 random bytes, e.g. `openssl rand -base64 32`).
pub const CLUSTER_KEY_BYTES: usize = 32;
/// Shortest admin token accepted: a guessable token guards nothing.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Longest admin token accepted (it travels in a header).
pub const MAX_ADMIN_TOKEN_LEN: usize = 1024;
/// Secret files larger than this are refused rather than read.
const MAX_SECRET_FILE_BYTES: u64 = 4096;
/// Associated data of every sealed gossip datagram; a format change takes a new context.
pub const GOSSIP_AAD: &[u8] = b"micro-tomcat gossip v1";
/// Bytes of the random nonce that prefixes a sealed datagram.
pub const GOSSIP_NONCE_BYTES: usize = 12;
/// Bytes of a Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a gossip datagram: the nonce in front, the tag behind.
pub const SEAL_OVERHEAD: usize = GOSSIP_NONCE_BYTES + TAG_BYTES;
/// Bytes of each side's nonce in the peer handshake.
pub const PEER_NONCE_BYTES: usize = 32;
/// Largest request head (request line and headers) a node accepts; above it, 431.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Sub-key labels: each use of the cluster key gets its own key, so no two uses can be confused.
const GOSSIP_KEY_LABEL: &[u8] = b"micro-tomcat gossip key v1";
const PEER_KEY_LABEL: &[u8] = b"micro-tomcat peer key v1";
const FINGERPRINT_LABEL: &[u8] = b"micro-tomcat key fingerprint v1";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn hmac_bytes(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    <[u8; N]>::try_generate().map_err(|_| RandomError)
}

/// The operating system's random number generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// The shared secret of a cluster: 32 bytes, given in base64.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; CLUSTER_KEY_BYTES],
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl PartialEq for ClusterKey {
    fn eq(&self, other: &ClusterKey) -> bool {
        self.bytes.ct_eq(&other.bytes).into()
    }
}

impl Eq for ClusterKey {}

impl ClusterKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; CLUSTER_KEY_BYTES]) -> ClusterKey {
        ClusterKey { bytes }
    }

    /// Decodes standard base64 (surrounding whitespace ignored). The error never quotes the input.
    pub fn from_base64(text: &str) -> Result<ClusterKey, String> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                format!(
                    "the gossip key is not valid base64; expected {CLUSTER_KEY_BYTES} random bytes in base64 \
                     (make one with `openssl rand -base64 {CLUSTER_KEY_BYTES}`)"
                )
            })?;
        let bytes: [u8; CLUSTER_KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| {
            format!(
                "the gossip key decodes to {} bytes; it must be {CLUSTER_KEY_BYTES} (make one with \
                 `openssl rand -base64 {CLUSTER_KEY_BYTES}`)",
                decoded.len()
            )
        })?;
        Ok(ClusterKey { bytes })
    }

    /// A short public name of the key (16 hex digits of a keyed hash), for checking that nodes share
    /// it without showing it.
    pub fn fingerprint(&self) -> String {
        let digest = hmac_bytes(&self.bytes, &[FINGERPRINT_LABEL]);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        hmac_bytes(&self.bytes, &[label])
    }
}

/// The admin token, kept only as its SHA-256 so that comparing takes the same time for any input.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &AdminToken) -> bool {
        self.digest.ct_eq(&other.digest).into()
    }
}

impl Eq for AdminToken {}

impl AdminToken {
    /// Checks and keeps a token (surrounding whitespace ignored). The error never quotes the input.
    pub fn new(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        let len = token.chars().count();
        if len < MIN_ADMIN_TOKEN_LEN {
            return Err(format!(
                "the admin token has {len} characters; use at least {MIN_ADMIN_TOKEN_LEN} \
                 (make one with `openssl rand -hex 32`)"
            ));
        }
        if len > MAX_ADMIN_TOKEN_LEN {
            return Err(format!(
                "the admin token has {len} characters; at most {MAX_ADMIN_TOKEN_LEN} are allowed"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the admin token must be printable ASCII without spaces (it is sent in a header)"
                    .to_string(),
            );
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The secrets a node runs with, loaded at start from the environment or the `<security>` files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Secrets {
    /// Seals gossip and authenticates peer RPC; `None` leaves both open (the default).
    pub gossip_key: Option<ClusterKey>,
    /// Where the key came from (the variable's name or the file), for the startup line.
    pub gossip_key_origin: Option<String>,
    /// Required by mutating admin calls; `None` leaves them open (the default).
    pub admin_token: Option<AdminToken>,
    /// Where the token came from, for the startup line.
    pub admin_token_origin: Option<String>,
}

impl Secrets {
    /// One line for the startup banner: what is protected and from where, never a secret.
    pub fn describe(&self) -> String {
        let gossip = match (&self.gossip_key, &self.gossip_key_origin) {
            (Some(key), Some(origin)) => format!(
                "gossip sealed and peer RPC authenticated with the cluster key from {origin} \
                 (fingerprint {})",
                key.fingerprint()
            ),
            _ => "no cluster key: gossip and peer RPC are open to the network, and the peer port \
                  takes session writes from anyone who can reach it"
                .to_string(),
        };
        let admin = match &self.admin_token_origin {
            Some(origin) if self.admin_token.is_some() => {
                format!("admin calls need the token from {origin}")
            }
            _ => "admin calls are open".to_string(),
        };
        format!("security: {gossip}; {admin}")
    }
}

/// A secret that cannot be loaded; displayed as one line naming where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file named in `<security>` cannot be read.
    #[error("{origin}: cannot read {what}: {source}")]
    Read {
        /// "the gossip key" or "the admin token".
        what: &'static str,
        /// The file and the attribute that named it.
        origin: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An admin token without a cluster key: the peer port would take session writes from anyone
    /// who reaches it, so the token would guard little. Allowed only when the operator says so.
    #[error(
        "{origin}: an admin token is set but no cluster key, so the peer port takes session writes \
         from anyone who can reach it and the token guards little; set a cluster key \
         (MICRO_TOMCAT_GOSSIP_KEY or <security gossip-key-file>; make one with \
         `openssl rand -base64 32`), or accept open peers with <security allow-open-peers=\"true\"/>"
    )]
    OpenPeers {
        /// Where the token came from.
        origin: String,
    },
    /// The secret is there but malformed.
    #[error("{origin}: {problem}")]
    Invalid {
        /// The variable or file it came from.
        origin: String,
        /// What is wrong (never the secret itself).
        problem: String,
    },
}

/// Loads the cluster key and the admin token: each from its environment variable if set, else from
/// its `<security>` file if named, else none. `env` reads a variable (`std::env::var_os` in a node).
pub fn load_secrets(
    security: &SecurityConfig,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Secrets, SecretError> {
    let mut secrets = Secrets::default();
    if let Some((text, origin)) = read_secret(
        "the gossip key",
        GOSSIP_KEY_ENV,
        security.gossip_key_file.as_deref(),
        "gossip-key-file",
        &env,
    )? {
        let key = ClusterKey::from_base64(&text).map_err(|problem| SecretError::Invalid {
            origin: origin.clone(),
            problem,
        })?;
        secrets.gossip_key = Some(key);
        secrets.gossip_key_origin = Some(origin);
    }
    if let Some((text, origin)) = read_secret(
        "the admin token",
        ADMIN_TOKEN_ENV,
        security.admin_token_file.as_deref(),
        "admin-token-file",
        &env,
    )? {
        let token = AdminToken::new(&text).map_err(|problem| SecretError::Invalid {
            origin: origin.clone(),
            problem,
        })?;
        secrets.admin_token = Some(token);
        secrets.admin_token_origin = Some(origin);
    }
    if let (Some(origin), None) = (&secrets.admin_token_origin, &secrets.gossip_key)
        && !security.allow_open_peers
    {
        return Err(SecretError::OpenPeers {
            origin: origin.clone(),
        });
    }
    Ok(secrets)
}

/// The secret's text and where it came from, or `None` when neither the variable nor a file is set.
fn read_secret(
    what: &'static str,
    variable: &str,
    file: Option<&Path>,
    attribute: &str,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<(String, String)>, SecretError> {
    if let Some(value) = env(variable) {
        let origin = variable.to_string();
        let text = value.into_string().map_err(|_| SecretError::Invalid {
            origin: origin.clone(),
            problem: format!("{what} is not UTF-8 text"),
        })?;
        if text.trim().is_empty() {
            return Err(SecretError::Invalid {
                origin,
                problem: format!("the variable is set but empty; unset it or give {what}"),
            });
        }
        return Ok(Some((text, origin)));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let origin = format!("{} (<security {attribute}>)", path.display()).replace(['\n', '\r'], " ");
    read_secret_file(what, path, origin).map(Some)
}

/// The text of a secret file (at most [`MAX_SECRET_FILE_BYTES`], UTF-8, not blank) and `origin`.
fn read_secret_file(
    what: &'static str,
    path: &Path,
    origin: String,
) -> Result<(String, String), SecretError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| SecretError::Read {
            what,
            origin: origin.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::Invalid {
            origin,
            problem: format!(
                "the file is larger than {MAX_SECRET_FILE_BYTES} bytes; is this the right file?"
            ),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretError::Invalid {
        origin: origin.clone(),
        problem: format!("{what} is not UTF-8 text"),
    })?;
    if text.trim().is_empty() {
        return Err(SecretError::Invalid {
            origin,
            problem: "the file is empty".to_string(),
        });
    }
    Ok((text, origin))
}

/// The admin token in `path` for a client command (`--token-file`), checked like a node checks its
/// own, without surrounding whitespace.
pub fn admin_token_from_file(path: &Path) -> Result<String, SecretError> {
    let origin = format!("{} (--token-file)", path.display()).replace(['\n', '\r'], " ");
    let (text, origin) = read_secret_file("the admin token", path, origin)?;
    AdminToken::new(&text).map_err(|problem| SecretError::Invalid { origin, problem })?;
    Ok(text.trim().to_string())
}

/// Seals and opens gossip datagrams with ChaCha20-Poly1305: `nonce (12) | ciphertext | tag (16)`,
/// a fresh random nonce per datagram and [`GOSSIP_AAD`] as associated data.
#[derive(Clone)]
pub struct GossipSeal {
    cipher: ChaCha20Poly1305,
}

impl fmt::Debug for GossipSeal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GossipSeal(..)")
    }
}

/// Why a datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a nonce and a tag.
    #[error("datagram of {len} bytes is too short to be sealed")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The tag does not match: another key, or tampered with.
    #[error("datagram failed authentication (another cluster key, or tampered with)")]
    Forged,
}

impl GossipSeal {
    /// A seal under (a sub-key of) `key`.
    pub fn new(key: &ClusterKey) -> GossipSeal {
        let sub_key = key.derive(GOSSIP_KEY_LABEL);
        GossipSeal {
            cipher: ChaCha20Poly1305::new(&sub_key.into()),
        }
    }

    /// Replaces `out` with the sealed form of `plaintext`.
    pub fn seal(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), RandomError> {
        let nonce: [u8; GOSSIP_NONCE_BYTES] = random_bytes()?;
        out.clear();
        out.reserve(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                GOSSIP_AAD,
                (&mut out[GOSSIP_NONCE_BYTES..]).into(),
            )
            // ChaCha20-Poly1305 only refuses messages of 256 GiB and more.
            .map_err(|_| RandomError)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Replaces `out` with the plaintext of `datagram` if it was sealed under this key.
    pub fn open(&self, datagram: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        if datagram.len() < SEAL_OVERHEAD {
            return Err(OpenError::TooShort {
                len: datagram.len(),
            });
        }
        let (nonce, rest) = datagram.split_at(GOSSIP_NONCE_BYTES);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| OpenError::Forged)?;
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Forged)?;
        out.clear();
        out.extend_from_slice(ciphertext);
        let opened =
            self.cipher
                .decrypt_inout_detached(&nonce, GOSSIP_AAD, out.as_mut_slice().into(), &tag);
        if opened.is_err() {
            out.clear();
            return Err(OpenError::Forged);
        }
        Ok(())
    }
}

/// Bytes of a [`HopToken`].
pub const HOP_TOKEN_BYTES: usize = 16;

/// A node's proof, in the hop header of the requests it proxies over HTTP, that it is a member: a
/// random value drawn at each start and published in gossip, so only those who read the cluster's
/// gossip know it (with a cluster key, only the members). Compared in constant time; never displayed.
#[derive(Clone, PartialEq, Eq)]
pub struct HopToken([u8; HOP_TOKEN_BYTES]);

impl fmt::Debug for HopToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HopToken(..)")
    }
}

impl HopToken {
    /// A fresh random token.
    pub fn generate() -> Result<HopToken, RandomError> {
        random_bytes().map(HopToken)
    }

    /// The token as it travels (in gossip and in the hop header): lowercase hex.
    pub fn to_wire(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The token in `text` ([`HopToken::to_wire`]'s form), if it is one.
    pub fn from_wire(text: &str) -> Option<HopToken> {
        let text = text.as_bytes();
        if text.len() != 2 * HOP_TOKEN_BYTES {
            return None;
        }
        let mut bytes = [0u8; HOP_TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(HopToken(bytes))
    }

    /// Whether `presented` (wire form) is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.to_wire();
        presented.len() == expected.len()
            && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Which end of a peer connection a proof or cipher belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The side that connected.
    Client,
    /// The side that accepted.
    Server,
}

impl PeerRole {
    fn label(self) -> &'static [u8] {
        match self {
            PeerRole::Client => b"client",
            PeerRole::Server => b"server",
        }
    }
}

/// Everything both sides of a peer handshake agree on; proofs and connection keys are bound to it.
#[derive(Debug, Clone)]
pub struct PeerTranscript<'a> {
    /// The peer wire version both spoke.
    pub wire_version: u32,
    /// The cluster id both announced.
    pub cluster_id: &'a str,
    /// The connecting node's name as it announced it.
    pub client_name: &'a str,
    /// The accepting node's name as it announced it.
    pub server_name: &'a str,
    /// The connecting side's random nonce.
    pub client_nonce: [u8; PEER_NONCE_BYTES],
    /// The accepting side's random nonce.
    pub server_nonce: [u8; PEER_NONCE_BYTES],
}

impl PeerTranscript<'_> {
    fn feed(&self, mac: &mut HmacSha256) {
        mac.update(&self.wire_version.to_be_bytes());
        // Length-prefixed, so that no two transcripts feed the same bytes.
        for text in [self.cluster_id, self.client_name, self.server_name] {
            mac.update(&(text.len() as u64).to_be_bytes());
            mac.update(text.as_bytes());
        }
        mac.update(&self.client_nonce);
        mac.update(&self.server_nonce);
    }
}

/// The peer RPC sub-key of the cluster key: proves possession in the handshake and keys connections.
#[derive(Clone)]
pub struct PeerKey {
    key: [u8; 32],
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

impl PeerKey {
    /// The peer sub-key of `key`.
    pub fn new(key: &ClusterKey) -> PeerKey {
        PeerKey {
            key: key.derive(PEER_KEY_LABEL),
        }
    }

    fn mac(&self, purpose: &[u8], role: PeerRole, transcript: &PeerTranscript<'_>) -> HmacSha256 {
        let mut mac = hmac(&self.key);
        mac.update(purpose);
        mac.update(role.label());
        transcript.feed(&mut mac);
        mac
    }

    /// HMAC-SHA256 proof that `role` holds the key, bound to this handshake.
    pub fn proof(&self, role: PeerRole, transcript: &PeerTranscript<'_>) -> [u8; 32] {
        self.mac(b"proof", role, transcript)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is `role`'s proof for this handshake (compared in constant time).
    pub fn verify(&self, role: PeerRole, transcript: &PeerTranscript<'_>, proof: &[u8]) -> bool {
        self.mac(b"proof", role, transcript)
            .verify_slice(proof)
            .is_ok()
    }

    /// The two frame ciphers of a connection, `(sending, receiving)` as seen by `me`: one key per
    /// direction, fresh for every connection because both nonces are.
    pub fn frame_ciphers(
        &self,
        me: PeerRole,
        transcript: &PeerTranscript<'_>,
    ) -> (FrameCipher, FrameCipher) {
        let direction_key = |sender: PeerRole| -> [u8; 32] {
            self.mac(b"frames", sender, transcript)
                .finalize()
                .into_bytes()
                .into()
        };
        let other = match me {
            PeerRole::Client => PeerRole::Server,
            PeerRole::Server => PeerRole::Client,
        };
        (
            FrameCipher::new(direction_key(me)),
            FrameCipher::new(direction_key(other)),
        )
    }
}

/// One direction of an encrypted peer connection: ChaCha20-Poly1305 with a frame counter as nonce.
pub struct FrameCipher {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl fmt::Debug for FrameCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameCipher(frame {})", self.counter)
    }
}

/// A frame that failed authentication, or a connection that ran out of nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame failed authentication")]
pub struct FrameAuthError;

impl FrameCipher {
    fn new(key: [u8; 32]) -> FrameCipher {
        FrameCipher {
            cipher: ChaCha20Poly1305::new(&key.into()),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, FrameAuthError> {
        let counter = self.counter;
        // A counter nonce must never repeat under one key; 2^64 frames will not happen, but if they
        // did the connection must end rather than wrap.
        self.counter = counter.checked_add(1).ok_or(FrameAuthError)?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        Ok(Nonce::from(nonce))
    }

    /// Encrypts `buf[start..]` in place and appends the tag; `aad` is authenticated, not encrypted.
    pub fn seal(
        &mut self,
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), FrameAuthError> {
        let nonce = self.next_nonce()?;
        let body = buf.get_mut(start..).ok_or(FrameAuthError)?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, body.into())
            .map_err(|_| FrameAuthError)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks and decrypts `buf` (ciphertext and tag) in place, leaving the plaintext.
    pub fn open(&mut self, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), FrameAuthError> {
        let nonce = self.next_nonce()?;
        let tagless = buf.len().checked_sub(TAG_BYTES).ok_or(FrameAuthError)?;
        let tag = Tag::try_from(&buf[tagless..]).map_err(|_| FrameAuthError)?;
        self.cipher
            .decrypt_inout_detached(&nonce, aad, (&mut buf[..tagless]).into(), &tag)
            .map_err(|_| FrameAuthError)?;
        buf.truncate(tagless);
        Ok(())
    }
}

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

/// The token in an `Authorization: Bearer <token>` value; `None` for any other scheme or shape.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Whether mutating admin calls need the token, and the check itself.
#[derive(Debug, Clone, Default)]
pub struct AdminAuth {
    token: Option<AdminToken>,
}

/// Why an admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRejection {
    /// No bearer token: 401 with `WWW-Authenticate: Bearer`.
    Missing,
    /// A bearer token that is not the admin token: 403.
    Wrong,
}

impl IntoResponse for AdminRejection {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AdminRejection::Missing => (
                StatusCode::UNAUTHORIZED,
                "this call needs the admin token: send Authorization: Bearer <token>",
            ),
            AdminRejection::Wrong => (StatusCode::FORBIDDEN, "the admin token is not valid"),
        };
        let mut response =
            (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if self == AdminRejection::Missing {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"micro-tomcat\""),
            );
        }
        response
    }
}

impl AdminAuth {
    /// Admin calls need `token` when there is one.
    pub fn new(token: Option<AdminToken>) -> AdminAuth {
        AdminAuth { token }
    }

    /// Whether a token is configured.
    pub fn is_required(&self) -> bool {
        self.token.is_some()
    }

    /// Accepts a request when no token is configured or it carries the token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AdminRejection> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let presented = match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok().and_then(bearer_token),
            // None, or several: which one would count? Neither.
            _ => None,
        };
        match presented {
            None => Err(AdminRejection::Missing),
            Some(presented) if token.matches(presented) => Ok(()),
            Some(_) => {
                if let Some(held_back) = WRONG_TOKEN_LOG.allow() {
                    tracing::warn!(held_back, "admin call refused: wrong admin token");
                }
                Err(AdminRejection::Wrong)
            }
        }
    }
}

static WRONG_TOKEN_LOG: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// Extractor for handlers of mutating admin calls: rejects the request (401/403) unless it carries
/// the admin token, when one is configured. Needs `AdminAuth: FromRef<S>` for the router's state.
#[derive(Debug, Clone, Copy)]
pub struct RequireAdmin;

impl<S> FromRequestParts<S> for RequireAdmin
where
    AdminAuth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AdminRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        AdminAuth::from_ref(state)
            .check(&parts.headers)
            .map(|()| RequireAdmin)
    }
}

/// The same check as a middleware, for whole routers:
/// `router.route_layer(axum::middleware::from_fn_with_state(auth, require_admin))`.
pub async fn require_admin(
    State(auth): State<AdminAuth>,
    request: Request,
    next: Next,
) -> Response {
    match auth.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// Refuses requests whose head (target and headers) exceeds [`MAX_REQUEST_HEAD_BYTES`] with 431,
/// so that no handler or upstream sees more (hyper itself stops at about 400 KiB and 100 headers).
pub async fn limit_request_head(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    let head = target
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head > MAX_REQUEST_HEAD_BYTES {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            axum::Json(serde_json::json!({
                "error": format!("the request head is {head} bytes; at most {MAX_REQUEST_HEAD_BYTES} are accepted")
            })),
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests;
