//! The integration tests, one binary: every file in `tests/` is a module of it (a test
//! that needs its own environment variables starts the real binary with them). Run one
//! file's tests with `cargo test --release --test suite -- broker::`.
//!
//! Tests of different files share this process: the Prometheus recorder is one per
//! process, so a test that reads a metric filters by a pool or task name no other test
//! uses, and a test that needs a fresh server's metrics starts the real binary.

mod admin;
mod api;
mod batching;
mod broker;
mod broker_scripts;
mod broker_urls;
mod checkpoint_server;
mod checkpoints;
mod client_apis;
mod common;
mod config_files;
mod fetch_model;
mod grafana;
mod layers;
mod minilm_embeddings;
mod model;
mod openapi;
mod processes;
mod seed;
mod shutdown;
mod supervision;
