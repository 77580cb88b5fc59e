//! The cluster's cryptography: the cluster key and its sub-keys, gossip sealing, the peer
//! handshake's proofs and frame ciphers, and the tokens compared in constant time.
//!
//! This module owns the crypto crates (`chacha20poly1305`, `hmac`, `sha2`, `subtle`, `base64`); the
//! rest of the node sees [`ClusterKey`], [`GossipSeal`], [`PeerKey`], [`FrameCipher`], [`AdminToken`]
//! and [`HopToken`]. No secret is ever logged or displayed: their `Debug` prints `ClusterKey(..)`.
//! It reads no file and no variable (that is `config::secrets`) and knows nothing of HTTP (that is
//! `http::guards`).

use std::fmt;

use base64::Engine;
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of the cluster key in bytes (base64 of 32 random bytes, e.g. `openssl rand -base64 32`).
pub const CLUSTER_KEY_BYTES: usize = 32;
/// Shortest admin token accepted: a guessable token guards nothing.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Longest admin token accepted (it travels in a header).
pub const MAX_ADMIN_TOKEN_LEN: usize = 1024;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const TOKEN: &str = "0123456789abcdef-token";

    fn key_bytes() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn key_from_base64_and_errors_never_quote_it() {
        let key = ClusterKey::from_base64(&format!("  {KEY_B64}\n")).expect("valid");
        assert_eq!(key, ClusterKey::from_bytes(key_bytes()));
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
        assert_eq!(key.fingerprint().len(), 16);
        assert_ne!(
            key.fingerprint(),
            ClusterKey::from_bytes([9; 32]).fingerprint()
        );

        let secret_looking = "c2VjcmV0LXNlY3JldC1zZWNyZXQ";
        for bad in [secret_looking, "not base64 at all!", "", "AAAA"] {
            let err = ClusterKey::from_base64(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err}");
            if !bad.is_empty() {
                assert!(!err.contains(bad), "{err} quotes the input");
            }
        }
        let short = ClusterKey::from_base64("AAECAwQFBgcICQoLDA0ODw==").expect_err("16 bytes");
        assert!(short.contains("16 bytes"), "{short}");
    }

    #[test]
    fn admin_token_rules_and_matching() {
        let token = AdminToken::new(&format!("{TOKEN}\n")).expect("valid");
        assert!(token.matches(TOKEN));
        assert!(!token.matches("0123456789abcdef-tokeN"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space inside it").is_err());
        assert!(AdminToken::new(&"x".repeat(MAX_ADMIN_TOKEN_LEN + 1)).is_err());
        assert!(AdminToken::new("naïve-token-with-accents").is_err());
    }

    #[test]
    fn gossip_seal_round_trip_and_refusals() {
        let seal = GossipSeal::new(&ClusterKey::from_bytes(key_bytes()));
        let other = GossipSeal::new(&ClusterKey::from_bytes([1; 32]));
        let mut sealed = Vec::new();
        let mut opened = Vec::new();
        seal.seal(b"hello gossip", &mut sealed).expect("seal");
        assert_eq!(sealed.len(), b"hello gossip".len() + SEAL_OVERHEAD);
        assert!(
            !sealed.windows(5).any(|w| w == b"hello"),
            "plaintext visible"
        );
        seal.open(&sealed, &mut opened).expect("open");
        assert_eq!(opened, b"hello gossip");

        // Two seals of one message differ (fresh nonce).
        let mut again = Vec::new();
        seal.seal(b"hello gossip", &mut again).expect("seal");
        assert_ne!(sealed, again);

        assert_eq!(other.open(&sealed, &mut opened), Err(OpenError::Forged));
        assert!(opened.is_empty());
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert_eq!(seal.open(&tampered, &mut opened), Err(OpenError::Forged));
        }
        assert_eq!(
            seal.open(&sealed[..SEAL_OVERHEAD - 1], &mut opened),
            Err(OpenError::TooShort {
                len: SEAL_OVERHEAD - 1
            })
        );
        // An empty message seals and opens too.
        seal.seal(b"", &mut sealed).expect("seal");
        seal.open(&sealed, &mut opened).expect("open");
        assert!(opened.is_empty());
    }

    fn transcript() -> PeerTranscript<'static> {
        PeerTranscript {
            wire_version: 1,
            cluster_id: "demo",
            client_name: "node-1",
            server_name: "node-2",
            client_nonce: [1; PEER_NONCE_BYTES],
            server_nonce: [2; PEER_NONCE_BYTES],
        }
    }

    #[test]
    fn peer_proofs_bind_key_role_and_transcript() {
        let key = PeerKey::new(&ClusterKey::from_bytes(key_bytes()));
        let wrong = PeerKey::new(&ClusterKey::from_bytes([3; 32]));
        let t = transcript();
        let proof = key.proof(PeerRole::Client, &t);
        assert!(key.verify(PeerRole::Client, &t, &proof));
        assert!(!wrong.verify(PeerRole::Client, &t, &proof));
        // A client's proof is no server's proof (no reflection).
        assert!(!key.verify(PeerRole::Server, &t, &proof));
        let mut other = t.clone();
        other.server_nonce[0] ^= 1;
        assert!(!key.verify(PeerRole::Client, &other, &proof));
        let renamed = PeerTranscript {
            client_name: "node-1x",
            ..t.clone()
        };
        assert!(!key.verify(PeerRole::Client, &renamed, &proof));
        assert!(!key.verify(PeerRole::Client, &t, &proof[..31]));
    }

    #[test]
    fn frame_ciphers_pair_up_and_refuse_replays() {
        let key = PeerKey::new(&ClusterKey::from_bytes(key_bytes()));
        let t = transcript();
        let (mut client_send, mut client_recv) = key.frame_ciphers(PeerRole::Client, &t);
        let (mut server_send, mut server_recv) = key.frame_ciphers(PeerRole::Server, &t);

        let mut frame = b"HDR!request body".to_vec();
        client_send.seal(b"HDR!", &mut frame, 4).expect("seal");
        assert_eq!(&frame[..4], b"HDR!");
        let mut body = frame[4..].to_vec();
        server_recv.open(b"HDR!", &mut body).expect("open");
        assert_eq!(body, b"request body");

        let mut reply = b"response".to_vec();
        server_send.seal(b"", &mut reply, 0).expect("seal");
        let mut replayed = reply.clone();
        client_recv.open(b"", &mut reply).expect("open");
        assert_eq!(reply, b"response");
        // The same bytes again are a replay: the counter moved on.
        assert_eq!(client_recv.open(b"", &mut replayed), Err(FrameAuthError));

        // Wrong associated data (a changed length header) fails.
        let mut frame = b"body".to_vec();
        client_send.seal(b"aaaa", &mut frame, 0).expect("seal");
        assert_eq!(server_recv.open(b"bbbb", &mut frame), Err(FrameAuthError));
    }

    #[test]
    fn hop_tokens_round_trip_match_only_themselves_and_never_display() {
        let token = HopToken::generate().expect("random");
        let wire = token.to_wire();
        assert_eq!(wire.len(), 2 * HOP_TOKEN_BYTES);
        assert_eq!(HopToken::from_wire(&wire), Some(token.clone()));
        assert!(token.matches(&wire));
        let other = HopToken::generate().expect("random");
        assert_ne!(token, other);
        assert!(!token.matches(&other.to_wire()));
        for bad in [
            "",
            "1",
            &wire[..31],
            &format!("{wire}0"),
            &wire.to_uppercase(),
            "zz",
        ] {
            assert!(!token.matches(bad) || bad == wire, "{bad:?}");
        }
        for bad in ["", "xyz", &wire[1..], "é0000000000000000000000000000000"] {
            assert_eq!(HopToken::from_wire(bad), None, "{bad:?}");
        }
        assert_eq!(format!("{token:?}"), "HopToken(..)");
    }

    proptest! {
        /// Fuzz: arbitrary datagrams never panic the opener and never authenticate.
        #[test]
        fn fuzz_gossip_open_arbitrary_datagrams(datagram in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let seal = GossipSeal::new(&ClusterKey::from_bytes(key_bytes()));
            let mut out = Vec::new();
            prop_assert!(seal.open(&datagram, &mut out).is_err());
        }

        /// Fuzz: a sealed datagram with any bytes changed, cut or extended never authenticates.
        #[test]
        fn fuzz_gossip_open_mutated_datagrams(
            plaintext in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            extra in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let seal = GossipSeal::new(&ClusterKey::from_bytes(key_bytes()));
            let mut sealed = Vec::new();
            seal.seal(&plaintext, &mut sealed).expect("seal");
            let pristine = sealed.clone();
            for (at, mask) in &flips {
                let i = at.index(sealed.len());
                sealed[i] ^= mask;
            }
            if let Some(cut) = cut {
                let len = cut.index(sealed.len());
                sealed.truncate(len);
            }
            sealed.extend_from_slice(&extra);
            let mut out = Vec::new();
            let result = seal.open(&sealed, &mut out);
            if sealed == pristine {
                prop_assert!(result.is_ok());
                prop_assert_eq!(&out, &plaintext);
            } else {
                prop_assert!(result.is_err());
            }
        }

        /// Fuzz: key and token loaders take any text without panicking; errors are one line.
        #[test]
        fn fuzz_secret_parsers(text in ".{0,120}") {
            if let Err(err) = ClusterKey::from_base64(&text) {
                prop_assert!(!err.contains('\n'));
            }
            if let Err(err) = AdminToken::new(&text) {
                prop_assert!(!err.contains('\n'));
            }
        }
    }
}
