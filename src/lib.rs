//! micro-tomcat: a clustered HTTP application server.
//!
//! Nodes find each other by gossip ([`membership`]), and answer for the whole cluster over HTTP
//! ([`http`]). [`node::run`] wires one node together; `main.rs` only parses flags and calls it.

pub mod alerts;
pub mod apps;
pub mod backup;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod pid_file;
pub mod proxy;
pub mod raft;
pub mod reload;
pub mod routing;
pub mod security;
pub mod session;
