//! Applications served by every node.

pub mod demo;
