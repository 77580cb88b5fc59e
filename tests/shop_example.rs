//! examples/shop.rs's own unit tests (its node supervision), compiled here as a module of an
//! integration test. `cargo test` builds an example with `test = true` only as a test harness and then
//! leaves out the runnable `target/debug/examples/shop` that tests/hosting.rs starts, so the example
//! stays a plain example and its tests run from this file.

#[allow(dead_code)]
#[path = "../examples/shop.rs"]
mod shop;
