//! # celeriac
//!
//! A model-serving runtime: submit a prediction, get a task id, poll for the result,
//! with a supervised pool of model workers behind it, in one binary.
//!
//! # Layout
//!
//! - [`config`]: the configuration tree, defaults, environment overrides, validation.
//! - [`app`]: wiring; starts the actor tree, serves HTTP, drains on shutdown.
//! - [`actors`]: the supervisor, the dispatcher (queues, pull-based hand-out, acks-late)
//!   and the workers (task instances on their own threads).
//! - [`pool`]: what HTTP and actors share about a pool: settings, counters, jobs.
//! - [`store`]: task records, states, timings, TTL and long-poll wake-ups.
//! - [`task`]: the `Task` trait, factories, the registry, the built-in tasks and the
//!   text classifier task.
//! - [`model`]: model manifests, the BERT encoder on candle, the classifier, head training.
//! - [`http`]: warp routes, JSON errors, the rejection handler.
//! - [`error`]: the API error table (status and code per error).
//! - [`metrics`]: every Prometheus metric name, its help, buckets and helpers.
#![warn(missing_docs)]

pub mod actors;
pub mod app;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod pool;
pub mod store;
pub mod task;
