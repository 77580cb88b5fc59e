//! micro-tomcat: a clustered HTTP application server.
//!
//! Nodes find each other by gossip ([`membership`]), and answer for the whole cluster over HTTP
//! ([`http`]). [`node::run`] wires one node together; `main.rs` only parses flags and calls it.

/// Implements `tokio::io::AsyncWrite` for a stream wrapper by handing every call to its `inner`
/// field, for wrappers that only watch reads or the connection (defined before the modules that use it).
macro_rules! forward_async_write {
    ($wrapper:ty) => {
        impl tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.inner), cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                tokio::io::AsyncWrite::poll_write_vectored(
                    std::pin::Pin::new(&mut self.inner),
                    cx,
                    bufs,
                )
            }

            fn is_write_vectored(&self) -> bool {
                tokio::io::AsyncWrite::is_write_vectored(&self.inner)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.inner), cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.inner), cx)
            }
        }
    };
}

pub mod apps;
pub mod balancer;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod events;
pub mod http;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod peer;
pub mod pid_file;
pub mod proxy;
pub mod raft;
pub mod routing;
pub mod session;
