//! Applications served by every node.

pub mod demo;
pub mod static_files;
pub mod upstream;
