//! The peer port's handshake, keys and framing, end to end over loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::raft::{
    FRAME_HEADER_BYTES, Hello, PEER_WIRE_VERSION, PeerRequest, PeerResponse, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::server::{Dispatch, RpcHandler, serve};
use super::{PeerAt, PeerClient, PeerError, PeerStream, accept_handshake};
use crate::crypto::{ClusterKey, PeerKey, TAG_BYTES};

/// Answers read-index requests with 7.
struct Answer;

impl RpcHandler for Answer {
    async fn handle(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::ReadIndex => PeerResponse::ReadIndex { index: Some(7) },
            _ => PeerResponse::Error("unexpected".to_string()),
        }
    }
}

fn key(byte: u8) -> Option<PeerKey> {
    Some(PeerKey::new(&ClusterKey::from_bytes([byte; 32])))
}

/// A peer server named "server" on a free port with `key`, answering with [`Answer`]; returns its
/// address.
async fn server(
    key: Option<PeerKey>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> SocketAddr {
    server_with(Answer, key, tasks, shutdown).await
}

/// A peer server named "server" on a free port with `key`, answering with `handler`; returns its
/// address.
pub(crate) async fn server_with<R: RpcHandler>(
    handler: R,
    key: Option<PeerKey>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hello = Hello {
        wire_version: PEER_WIRE_VERSION,
        cluster_id: "demo".to_string(),
        from_name: "server".to_string(),
    };
    tasks.spawn(serve(
        listener,
        Dispatch::new(Arc::new(handler)),
        hello,
        key,
        shutdown.clone(),
        tasks.clone(),
    ));
    addr
}

/// The test server as a member to call.
pub(crate) fn the_server(addr: SocketAddr) -> PeerAt {
    PeerAt {
        addr,
        name: "server".to_string(),
    }
}

async fn read_index(client: &PeerClient, addr: SocketAddr) -> Result<PeerResponse, PeerError> {
    client
        .call(
            &the_server(addr),
            &PeerRequest::ReadIndex,
            Duration::from_secs(5),
        )
        .await
}

#[tokio::test]
async fn only_peers_with_the_same_key_get_in() {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let keyed = server(key(1), &tasks, &shutdown).await;
    let open = server(None, &tasks, &shutdown).await;

    let right = PeerClient::new("demo", "right", key(1));
    for _ in 0..3 {
        // Pooled after the first call: the ciphers keep counting on the same connection.
        let answer = read_index(&right, keyed).await.expect("same key");
        assert!(matches!(answer, PeerResponse::ReadIndex { index: Some(7) }));
    }

    let wrong = PeerClient::new("demo", "wrong", key(2));
    let err = read_index(&wrong, keyed).await.expect_err("another key");
    assert!(
        matches!(err, PeerError::Unauthenticated { .. }),
        "{err}: the client sees the server fail to prove the key"
    );
    assert!(err.to_string().contains(&keyed.to_string()), "{err}");

    let keyless = PeerClient::new("demo", "keyless", None);
    assert!(read_index(&keyless, keyed).await.is_err());

    // A keyed client does not talk to a server without the key either.
    assert!(read_index(&right, open).await.is_err());
    // Without keys on either side, nothing changed.
    assert!(read_index(&keyless, open).await.is_ok());

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

/// Lets `client` try a call against a server holding key 1; returns the server's refusal.
async fn refusal_by_keyed_server(client: PeerClient) -> PeerError {
    let key = key(1).expect("key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hello = Hello {
        wire_version: PEER_WIRE_VERSION,
        cluster_id: "demo".to_string(),
        from_name: "server".to_string(),
    };
    let accept = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.expect("accept");
        let mut stream = PeerStream::new(stream);
        accept_handshake(&mut stream, peer, &hello, Some(&key)).await
    });
    assert!(read_index(&client, addr).await.is_err());
    accept.await.expect("join").expect_err("refused")
}

#[tokio::test]
async fn server_refuses_a_client_without_the_key() {
    let err = refusal_by_keyed_server(PeerClient::new("demo", "keyless", None)).await;
    let text = err.to_string();
    assert!(matches!(err, PeerError::Unauthenticated { .. }), "{text}");
    assert!(
        text.contains("keyless") && text.contains("cluster key"),
        "{text}"
    );
}

#[tokio::test]
async fn server_refuses_a_client_with_another_key() {
    let err = refusal_by_keyed_server(PeerClient::new("demo", "wrong", key(9))).await;
    let text = err.to_string();
    assert!(matches!(err, PeerError::Unauthenticated { .. }), "{text}");
    assert!(text.contains("another one"), "{text}");
}

#[tokio::test]
async fn a_tampered_frame_ends_the_connection() {
    let tasks = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let addr = server(key(1), &tasks, &shutdown).await;
    let client = PeerClient::new("demo", "client", key(1));
    let mut stream = client.connect(addr).await.expect("handshake");

    let mut frame = encode_frame(&PeerRequest::ReadIndex).expect("frame");
    let sealed_len = (frame.len() - FRAME_HEADER_BYTES + TAG_BYTES) as u32;
    let header = sealed_len.to_be_bytes();
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
    let (sending, _) = stream.ciphers.as_mut().expect("ciphers");
    sending
        .seal(&header, &mut frame, FRAME_HEADER_BYTES)
        .expect("seal");
    let last = frame.len() - 1;
    frame[last] ^= 1;
    stream.stream.write_all(&frame).await.expect("write");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.stream.read(&mut buf))
        .await
        .expect("server reacts");
    assert!(matches!(read, Ok(0) | Err(_)), "connection closed");

    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
