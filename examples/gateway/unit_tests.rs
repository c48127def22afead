//! The gateway example's unit tests, as a test target of their own
//! (`[[test]] gateway_example` in Cargo.toml), so that `cargo test` runs
//! them while still building `target/debug/examples/gateway`, the plain
//! binary the process-level tests in `tests/gateway*.rs` start. (An
//! example marked `test = true` is built only as a test harness, and the
//! process tests would run a stale or missing binary.)
//!
//! Keep the module list the same as `main.rs`'s: a module missing here has
//! its tests skipped.

#![allow(dead_code, unused_imports)]

mod access_log;
mod admin;
mod app;
mod body_timeout;
mod cli;
mod config;
mod gateway;
mod metrics;
#[path = "../support/mock/mod.rs"]
mod mock;
mod model_check;
mod proxy;
mod proxy_only;
mod record;
mod routing;
mod server;
mod shutdown;
mod stack;
mod stores;
