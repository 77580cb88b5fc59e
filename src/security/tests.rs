use std::collections::HashMap;
use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use proptest::prelude::*;
use tower::ServiceExt;

use super::*;

const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const TOKEN: &str = "0123456789abcdef-token";

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.get(name).map(OsString::from)
}

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
fn secrets_come_from_env_then_files_else_none() {
    let none = load_secrets(&SecurityConfig::default(), env(&[])).expect("nothing set");
    assert_eq!(none, Secrets::default());
    assert!(none.describe().contains("open"));

    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("gossip.key");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&key_file, format!("{KEY_B64}\n")).expect("write");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let files = SecurityConfig {
        gossip_key_file: Some(key_file.clone()),
        admin_token_file: Some(token_file.clone()),
        allow_open_peers: false,
    };
    let from_files = load_secrets(&files, env(&[])).expect("files");
    assert_eq!(
        from_files.gossip_key,
        Some(ClusterKey::from_bytes(key_bytes()))
    );
    assert!(
        from_files
            .admin_token
            .as_ref()
            .is_some_and(|t| t.matches(TOKEN))
    );
    let line = from_files.describe();
    assert!(line.contains("gossip.key"), "{line}");
    assert!(!line.contains(KEY_B64) && !line.contains(TOKEN), "{line}");

    // The environment overrides the files.
    let other_key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    let from_env = load_secrets(
        &files,
        env(&[
            (GOSSIP_KEY_ENV, other_key),
            (ADMIN_TOKEN_ENV, "another-token-of-enough-length"),
        ]),
    )
    .expect("env");
    assert_eq!(from_env.gossip_key, Some(ClusterKey::from_bytes([7; 32])));
    assert_eq!(from_env.gossip_key_origin.as_deref(), Some(GOSSIP_KEY_ENV));
    assert!(
        from_env
            .admin_token
            .as_ref()
            .is_some_and(|t| t.matches("another-token-of-enough-length"))
    );
}

#[test]
fn an_admin_token_without_a_cluster_key_is_refused_unless_allowed() {
    let token = [(ADMIN_TOKEN_ENV, TOKEN)];
    let err = load_secrets(&SecurityConfig::default(), env(&token)).expect_err("open peers");
    let text = err.to_string();
    assert!(!text.contains('\n') && !text.contains(TOKEN), "{text}");
    for needle in [
        ADMIN_TOKEN_ENV,
        "no cluster key",
        "gossip-key-file",
        "allow-open-peers",
    ] {
        assert!(text.contains(needle), "{text} does not name {needle}");
    }
    let allowed = SecurityConfig {
        allow_open_peers: true,
        ..SecurityConfig::default()
    };
    let secrets = load_secrets(&allowed, env(&token)).expect("allowed explicitly");
    assert!(secrets.admin_token.is_some() && secrets.gossip_key.is_none());
    let both = [(ADMIN_TOKEN_ENV, TOKEN), (GOSSIP_KEY_ENV, KEY_B64)];
    load_secrets(&SecurityConfig::default(), env(&both)).expect("token and key");
}

#[test]
fn outside_text_is_escaped_before_it_is_logged() {
    let forged = "node-9\n2026-12-03T13:00:00Z  INFO forged line\u{1b}[31m\u{202e}";
    let escaped = crate::security::escape_for_log(forged);
    assert!(
        !escaped.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{escaped:?}"
    );
    assert!(escaped.starts_with("node-9\\n2026"), "{escaped}");
    let long = crate::security::escape_for_log(&"x".repeat(10_000));
    assert!(long.len() < 300 && long.ends_with("(cut)"), "{long}");
}

#[test]
fn bad_secrets_are_one_line_errors_naming_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = SecurityConfig {
        gossip_key_file: Some(dir.path().join("nope.key")),
        ..SecurityConfig::default()
    };
    let err = load_secrets(&missing, env(&[])).expect_err("missing file");
    let text = err.to_string();
    assert!(
        text.contains("nope.key") && text.contains("gossip-key-file"),
        "{text}"
    );

    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![(GOSSIP_KEY_ENV, "dG9vIHNob3J0")], GOSSIP_KEY_ENV),
        (vec![(GOSSIP_KEY_ENV, "###")], GOSSIP_KEY_ENV),
        (vec![(GOSSIP_KEY_ENV, "  ")], GOSSIP_KEY_ENV),
        (vec![(ADMIN_TOKEN_ENV, "tiny")], ADMIN_TOKEN_ENV),
    ];
    for (vars, origin) in cases {
        let err = load_secrets(&SecurityConfig::default(), env(&vars)).expect_err(origin);
        let text = err.to_string();
        assert!(text.starts_with(origin), "{text}");
        assert!(!text.contains('\n'), "{text}");
        for (_, value) in &vars {
            if value.trim().len() > 3 {
                assert!(!text.contains(value), "{text} quotes the secret");
            }
        }
    }

    let big = dir.path().join("big.key");
    std::fs::write(&big, vec![b'A'; 10_000]).expect("write");
    let err = load_secrets(
        &SecurityConfig {
            gossip_key_file: Some(big),
            ..SecurityConfig::default()
        },
        env(&[]),
    )
    .expect_err("big file");
    assert!(err.to_string().contains("larger than"), "{err}");

    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").expect("write");
    let err = load_secrets(
        &SecurityConfig {
            admin_token_file: Some(PathBuf::from(&empty)),
            ..SecurityConfig::default()
        },
        env(&[]),
    )
    .expect_err("empty file");
    assert!(err.to_string().contains("empty"), "{err}");
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
fn bearer_parsing() {
    assert_eq!(bearer_token("Bearer abc"), Some("abc"));
    assert_eq!(bearer_token("bearer   abc  "), Some("abc"));
    assert_eq!(bearer_token("BEARER abc"), Some("abc"));
    for bad in [
        "",
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer a b",
        "Bearerabc",
        "abc",
    ] {
        assert_eq!(bearer_token(bad), None, "{bad:?}");
    }
}

fn admin_router(token: Option<&str>) -> Router {
    let auth = AdminAuth::new(token.map(|t| AdminToken::new(t).expect("token")));
    let with_extractor = Router::new()
        .route("/extractor", post(|_: RequireAdmin| async { "done" }))
        .with_state(auth.clone());
    let with_layer = Router::new()
        .route("/layer", post(|| async { "done" }))
        .route_layer(axum::middleware::from_fn_with_state(auth, require_admin));
    with_extractor.merge(with_layer)
}

async fn call(
    router: &Router,
    path: &str,
    authorization: &[&str],
) -> (StatusCode, HeaderMap, String) {
    let mut request = axum::http::Request::post(path);
    for value in authorization {
        request = request.header(header::AUTHORIZATION, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn admin_calls_need_the_token_when_one_is_set() {
    let open = admin_router(None);
    let guarded = admin_router(Some(TOKEN));
    for path in ["/extractor", "/layer"] {
        assert_eq!(call(&open, path, &[]).await.0, StatusCode::OK);

        let (status, headers, body) = call(&guarded, path, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Bearer"))
        );
        let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("Bearer")));

        let (status, _, body) = call(&guarded, path, &["Basic dXNlcjpwYXNz"]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, _, body) = call(&guarded, path, &["Bearer wrong-token-wrong-token"]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(!body.contains(TOKEN));
        let (status, _, _) = call(
            &guarded,
            path,
            &[&format!("Bearer {TOKEN}"), &format!("Bearer {TOKEN}")],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "two Authorization headers"
        );
        let (status, _, body) = call(&guarded, path, &[&format!("Bearer {TOKEN}")]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
    }
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let router = Router::new()
        .route("/", post(|| async { "ok" }))
        .layer(axum::middleware::from_fn(limit_request_head));
    let ok = axum::http::Request::post("/")
        .header("x-small", "a")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        router.clone().oneshot(ok).await.expect("ok").status(),
        StatusCode::OK
    );
    let big = axum::http::Request::post("/")
        .header("x-big", "a".repeat(MAX_REQUEST_HEAD_BYTES))
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        router.oneshot(big).await.expect("ok").status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
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

    /// Fuzz: the bearer parser takes any header text without panicking, and what it returns is a
    /// non-empty token without whitespace.
    #[test]
    fn fuzz_bearer_token(value in ".{0,200}") {
        if let Some(token) = bearer_token(&value) {
            prop_assert!(!token.is_empty());
            prop_assert!(!token.contains(char::is_whitespace));
        }
    }

    /// Fuzz: the admin check accepts exactly the right token, whatever else arrives.
    #[test]
    fn fuzz_admin_check(value in proptest::collection::vec(any::<u8>(), 0..200)) {
        let auth = AdminAuth::new(Some(AdminToken::new(TOKEN).expect("token")));
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(header::AUTHORIZATION, value);
        }
        let accepted = auth.check(&headers).is_ok();
        let exact = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            == Some(TOKEN);
        prop_assert_eq!(accepted, exact);
    }

    /// Fuzz: arbitrary requests through an axum router guarded both ways (extractor, layer): only
    /// a request carrying exactly the token gets through, every refusal is a 401 or 403.
    #[test]
    fn fuzz_admin_router_oneshot(
        path in prop::sample::select(vec!["/extractor", "/layer"]),
        headers in proptest::collection::vec(
            (prop::sample::select(vec!["authorization", "Authorization", "x-other", "cookie"]),
             proptest::collection::vec(any::<u8>(), 0..80)),
            0..4),
        use_token in any::<bool>(),
    ) {
        let router = admin_router(Some(TOKEN));
        let mut request = axum::http::Request::post(path);
        let mut authorizations = 0;
        let mut exact = false;
        if use_token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
            authorizations += 1;
            exact = true;
        }
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                if name.eq_ignore_ascii_case("authorization") {
                    authorizations += 1;
                    exact = value.to_str().ok().and_then(bearer_token) == Some(TOKEN);
                }
                request = request.header(*name, value);
            }
        }
        let request = request.body(Body::empty()).expect("request");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let status = runtime
            .block_on(router.oneshot(request))
            .expect("infallible")
            .status();
        if authorizations == 1 && exact {
            prop_assert_eq!(status, StatusCode::OK);
        } else {
            prop_assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                "{}", status
            );
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
