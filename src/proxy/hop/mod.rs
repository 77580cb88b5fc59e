//! Hop channels: proxied requests to a member over its peer port, many at a time on one connection.
//!
//! Forwarding a request over HTTP/1.1 costs each side a parse, a serialization and a few system
//! calls per request, and every request waits for a connection of its own. A hop channel is one
//! peer connection per member (the peer port's handshake, so a cluster key authenticates and seals
//! it) on which requests and responses travel as postcard frames ([`proto::hop`]), tagged with a
//! stream number. A writer task sends every frame queued since its last write with one system call,
//! and a reader reads many with one: under load, one call carries the work of many requests.
//!
//! Only requests already held in memory take this path (bodiless ones and those kept for a retry);
//! streaming request bodies go over HTTP. Response bodies stream back in chunks, each stream with its
//! own window ([`proto::hop::STREAM_WINDOW_BYTES`]) so a slow client cannot make the forwarding node
//! buffer a large body. A member that does not speak hop channels (an older build) is used over
//! HTTP for [`HTTP_FALLBACK`].
//!
//! `frame` is the wire (frames, sealing, batching, limits), `client` the forwarding side
//! ([`HopClient`]), `server` the serving side ([`HopServer`], which the peer listener hands hop
//! connections to).

mod client;
mod frame;
mod server;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use client::{HTTP_FALLBACK, HopClient, HopError};
pub use server::{ArrivedOverHopChannel, HopServer, HopService};

/// Locks `mutex` whatever a panic left behind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its map consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    //! End to end: a [`HopClient`] against a [`HopServer`] behind a real peer listener, since
    //! what they promise (one channel, per-stream windows, cancellation) needs both sides.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{ConnectInfo, Request};
    use axum::http::request::Parts;
    use axum::http::{HeaderValue, Method, StatusCode};
    use axum::response::Response;
    use axum::routing::{get, post};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    use proto::hop::{MAX_CHUNK_BYTES, STREAM_WINDOW_BYTES};
    use proto::raft::{Hello, PEER_WIRE_VERSION, PeerRequest, PeerResponse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::crypto::{ClusterKey, PeerKey};
    use crate::peer::PeerClient;
    use crate::peer::server::{Dispatch, RpcHandler, serve};

    /// A member's answer to every request that is not a hop channel.
    struct Member;

    impl RpcHandler for Member {
        async fn handle(&self, _request: PeerRequest) -> PeerResponse {
            PeerResponse::Error("unexpected".to_string())
        }
    }

    /// Counts bytes a streaming response produced and requests that were dropped unfinished.
    #[derive(Default)]
    struct Probe {
        produced: AtomicUsize,
        dropped: AtomicUsize,
    }

    struct DropCount(Arc<Probe>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    const BIG_CHUNKS: usize = 32;

    fn app(probe: Arc<Probe>) -> Router {
        let big_probe = probe.clone();
        Router::new()
            .route(
                "/echo",
                post(
                    |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                     headers: axum::http::HeaderMap,
                     body: Bytes| async move {
                        let tag = headers.get("x-tag").map(|v| v.as_bytes().to_vec());
                        let mut response = Response::new(Body::from(body));
                        if let Some(tag) = tag {
                            response
                                .headers_mut()
                                .insert("x-tag", HeaderValue::from_bytes(&tag).expect("tag"));
                        }
                        response.headers_mut().insert(
                            "x-peer-ip",
                            HeaderValue::from_str(&peer.ip().to_string()).expect("ip"),
                        );
                        response
                    },
                ),
            )
            .route(
                "/big",
                get(move || async move {
                    // 32 chunks of 64 KiB, each counted when the body is asked for it.
                    let stream = futures_util::stream::iter(0..BIG_CHUNKS).map(move |i| {
                        big_probe
                            .produced
                            .fetch_add(MAX_CHUNK_BYTES, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(Bytes::from(vec![i as u8; MAX_CHUNK_BYTES]))
                    });
                    Body::from_stream(stream)
                }),
            )
            .route(
                "/slow",
                get(
                    move |axum::extract::RawQuery(query): axum::extract::RawQuery| async move {
                        let _count = DropCount(probe);
                        // `?ms=N` answers after N ms; otherwise after 30 s.
                        let ms = query
                            .and_then(|q| q.strip_prefix("ms=").and_then(|n| n.parse().ok()))
                            .unwrap_or(30_000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        "late"
                    },
                ),
            )
    }

    struct Harness {
        addr: SocketAddr,
        hop: Arc<HopServer>,
        probe: Arc<Probe>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    }

    impl Harness {
        async fn start(serves_hop: bool, key: Option<PeerKey>) -> Harness {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let probe = Arc::new(Probe::default());
            let hop = HopServer::new();
            let router = app(probe.clone());
            hop.set_service(HopService::new(move |request| {
                let mut router = router.clone();
                Box::pin(async move {
                    match tower_service::Service::call(&mut router, request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                })
            }));
            // Serves hop channels with `hop`, or refuses them.
            let mut dispatch = Dispatch::new(Arc::new(Member));
            if serves_hop {
                dispatch = dispatch.hop(hop.clone());
            }
            let hello = Hello {
                wire_version: PEER_WIRE_VERSION,
                cluster_id: "demo".to_string(),
                from_name: "member".to_string(),
            };
            let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
            tokio::spawn(serve(
                listener,
                dispatch,
                hello,
                key,
                shutdown.clone(),
                tasks.clone(),
            ));
            Harness {
                addr,
                hop,
                probe,
                shutdown,
                tasks,
            }
        }

        async fn stop(&self) {
            self.shutdown.cancel();
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    fn key(byte: u8) -> Option<PeerKey> {
        Some(PeerKey::new(&ClusterKey::from_bytes([byte; 32])))
    }

    fn head(method: Method, target: &str, tag: &[u8]) -> Parts {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = target.parse().expect("uri");
        request
            .headers_mut()
            .insert("x-tag", HeaderValue::from_bytes(tag).expect("tag"));
        request.into_parts().0
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// A client that forwards to the test member, without a cluster key.
    fn forwarder() -> HopClient {
        HopClient::new(
            PeerClient::new("demo", "forwarder", None),
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    /// Sends a request with a fixed tag to the test member.
    async fn ask(
        client: &HopClient,
        addr: SocketAddr,
        method: Method,
        target: &str,
        body: &'static [u8],
        response_timeout: Duration,
    ) -> Result<Response, HopError> {
        let head = head(method, target, b"t");
        let body = Bytes::from_static(body);
        client
            .send("member", addr, &head, &body, SECOND, response_timeout)
            .await
    }

    /// A slow `GET target` sent in the background, answered within `response_timeout`.
    fn ask_in_background(
        client: &Arc<HopClient>,
        addr: SocketAddr,
        target: &'static str,
        response_timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<Response, HopError>> {
        let client = client.clone();
        tokio::spawn(
            async move { ask(&client, addr, Method::GET, target, b"", response_timeout).await },
        )
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn concurrent_echoes(client: Arc<HopClient>, addr: SocketAddr, count: usize) {
        let mut requests = JoinSet::new();
        for i in 0..count {
            let client = client.clone();
            requests.spawn(async move {
                // Values that are not UTF-8 must survive as they are.
                let tag = [b'x', 0xff, b'a' + (i % 26) as u8];
                let body = Bytes::from(format!("body of request {i} ").repeat(i % 50 + 1));
                let response = client
                    .send(
                        "member",
                        addr,
                        &head(Method::POST, "/echo?i=1", &tag),
                        &body,
                        SECOND,
                        10 * SECOND,
                    )
                    .await
                    .expect("response");
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.headers()["x-tag"].as_bytes(), tag);
                assert_eq!(response.headers()["x-peer-ip"], "127.0.0.1");
                let got = response.into_body().collect().await.expect("body");
                assert_eq!(got.to_bytes(), body, "request {i} got another's body");
            });
        }
        while let Some(done) = requests.join_next().await {
            done.expect("request task");
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_channel_and_each_gets_its_own_response() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        concurrent_echoes(client.clone(), member.addr, 200).await;
        assert_eq!(client.channels(), 1);
        assert_eq!(member.hop.in_flight(), 0);
        member.stop().await;
    }

    #[tokio::test]
    async fn the_tasks_of_open_channels_stop_with_the_node() {
        let member = Harness::start(true, None).await;
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let client = Arc::new(HopClient::new(
            PeerClient::new("demo", "forwarder", None),
            tasks.clone(),
            stop.clone(),
        ));
        concurrent_echoes(client.clone(), member.addr, 10).await;
        // The channel stays open for the next request: its reader and writer are running.
        assert_eq!(client.channels(), 1);
        assert_eq!(tasks.len(), 2);
        stop.cancel();
        tasks.close();
        tokio::time::timeout(5 * SECOND, tasks.wait())
            .await
            .expect("the channel's tasks end when the node stops");
        member.stop().await;
    }

    #[tokio::test]
    async fn a_keyed_cluster_seals_its_hop_channels() {
        let member = Harness::start(true, key(3)).await;
        let client = Arc::new(HopClient::new(
            PeerClient::new("demo", "forwarder", key(3)),
            TaskTracker::new(),
            CancellationToken::new(),
        ));
        concurrent_echoes(client, member.addr, 20).await;
        // Without the key the channel cannot even be opened, and nothing was served.
        let stranger = HopClient::new(
            PeerClient::new("demo", "stranger", key(4)),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let refused = ask(&stranger, member.addr, Method::GET, "/echo", b"", SECOND).await;
        assert!(
            matches!(refused, Err(HopError::Unsupported | HopError::Connect(_))),
            "{refused:?}"
        );
        member.stop().await;
    }

    #[tokio::test]
    async fn a_large_body_streams_within_the_window_of_what_the_client_took() {
        let member = Harness::start(true, None).await;
        let client = forwarder();
        let response = ask(&client, member.addr, Method::GET, "/big", b"", 10 * SECOND)
            .await
            .expect("response");
        // Nobody reads the body yet: the member stops at the window (plus the chunk it holds).
        let probe = member.probe.clone();
        let window = STREAM_WINDOW_BYTES as usize;
        wait_until("the member fills the window", || {
            probe.produced.load(Ordering::SeqCst) >= window
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let produced = probe.produced.load(Ordering::SeqCst);
        assert!(
            produced <= window + 2 * MAX_CHUNK_BYTES,
            "{produced} bytes produced ahead of a client that took nothing"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), BIG_CHUNKS * MAX_CHUNK_BYTES);
        for (i, chunk) in body.chunks(MAX_CHUNK_BYTES).enumerate() {
            assert!(
                chunk.iter().all(|b| *b == i as u8),
                "chunk {i} out of order"
            );
        }
        member.stop().await;
    }

    #[tokio::test]
    async fn a_response_timeout_cancels_the_request_on_the_member() {
        let member = Harness::start(true, None).await;
        let client = forwarder();
        let result = ask(
            &client,
            member.addr,
            Method::GET,
            "/slow",
            b"",
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(result, Err(HopError::Timeout(_))), "{result:?}");
        let (hop, probe) = (member.hop.clone(), member.probe.clone());
        wait_until("the member stops the abandoned request", || {
            hop.in_flight() == 0 && probe.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
        member.stop().await;
    }

    #[tokio::test]
    async fn a_closing_member_refuses_and_a_dead_one_fails_what_it_held() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        let slow = ask_in_background(&client, member.addr, "/slow", 30 * SECOND);
        let hop = member.hop.clone();
        wait_until("the slow request is being served", || hop.in_flight() == 1).await;
        member.hop.close();
        let refused = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND).await;
        assert!(matches!(refused, Err(HopError::Refused(_))), "{refused:?}");
        // The member goes away with the slow request still open: its client learns at once.
        member.stop().await;
        let lost = tokio::time::timeout(5 * SECOND, slow)
            .await
            .expect("the waiting request ends")
            .expect("task");
        assert!(matches!(lost, Err(HopError::Lost(_))), "{lost:?}");
        assert_eq!(member.hop.in_flight(), 0);
        // Nobody listens any more: the next request cannot connect (and was never sent).
        let refused = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND).await;
        assert!(matches!(refused, Err(HopError::Connect(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_forgotten_channel_finishes_what_is_in_flight_then_closes() {
        let member = Harness::start(true, None).await;
        let client = Arc::new(forwarder());
        let slow = ask_in_background(&client, member.addr, "/slow?ms=300", 10 * SECOND);
        let hop = member.hop.clone();
        wait_until("the slow request is being served", || hop.in_flight() == 1).await;
        // The member announced it is leaving: the router forgets its channel.
        client.forget("member");
        let done = tokio::time::timeout(5 * SECOND, slow)
            .await
            .expect("the request ends")
            .expect("task")
            .expect("answered on the forgotten channel");
        assert_eq!(done.status(), StatusCode::OK);
        let body = done.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"late");
        // Nothing is left running on the member for it.
        let server_side = Arc::clone(&member.hop);
        wait_until("the member finished", || server_side.in_flight() == 0).await;
        // The next request opens a new channel.
        let again = ask(&client, member.addr, Method::POST, "/echo", b"x", SECOND)
            .await
            .expect("a new channel");
        assert_eq!(again.status(), StatusCode::OK);
        member.stop().await;
    }

    #[tokio::test]
    async fn a_member_without_hop_channels_is_reached_over_http_for_a_while() {
        let member = Harness::start(false, None).await;
        let client = forwarder();
        assert!(client.usable("member", member.addr));
        let result = ask(&client, member.addr, Method::GET, "/echo", b"", SECOND).await;
        assert!(matches!(result, Err(HopError::Unsupported)), "{result:?}");
        assert!(!client.usable("member", member.addr));
        member.stop().await;
    }

    #[tokio::test]
    async fn garbage_on_a_hop_channel_ends_that_channel_only() {
        let member = Harness::start(true, None).await;
        let peers = PeerClient::new("demo", "forwarder", None);
        // A length far over the limit; then a frame whose bytes are no message at all.
        for garbage in [
            &[0xff, 0xff, 0xff, 0xf0, 1, 2, 3][..],
            &[0, 0, 0, 3, 9, 9, 9],
        ] {
            let (mut socket, _) = peers
                .open_hop(member.addr)
                .await
                .expect("open")
                .into_parts();
            socket.write_all(garbage).await.expect("write");
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(5 * SECOND, socket.read_to_end(&mut rest)).await;
            assert!(matches!(closed, Ok(Ok(0))), "{garbage:?}: {closed:?}");
        }
        // The member serves the next channel as if nothing happened.
        let client = Arc::new(HopClient::new(
            peers,
            TaskTracker::new(),
            CancellationToken::new(),
        ));
        concurrent_echoes(client, member.addr, 5).await;
        member.stop().await;
    }
}
