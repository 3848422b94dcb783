//! # celeriac
//!
//! A model-serving runtime: submit a prediction, get a task id, poll for the result,
//! with a supervised pool of model workers behind it, in one binary.
//!
//! # Layout
//!
//! Imports run one way, top to bottom (`tests/layers.rs` checks it): `app` → `http`,
//! `node` → `state` → `backend` → `broker`, `actors` → `task` → `metrics` →
//! `pool_shared`, `model` → `error` → `outbox` → `config`, `store`.
//!
//! - [`config`]: the configuration tree, defaults, environment overrides, validation;
//!   the range of every numeric setting (`config::limit`), shared with the admin API and
//!   the OpenAPI document; broker URLs (`config::broker_url`); kernels and precision.
//! - [`app`]: wiring; starts the actor tree, picks the task backend, serves HTTP,
//!   drains on shutdown.
//! - [`state`]: what the HTTP handlers share (config, backend, store, registry, pools).
//! - [`backend`]: the one way every door submits, reads, waits for and revokes tasks:
//!   this node's pools (`Local`) or the broker (`Remote`), chosen once.
//! - [`actors`]: the supervisor; one pool actor per pool, the sole owner of its queue,
//!   workers, size and autoscaling (pull-based hand-out, batching, acks-late, time
//!   limits); the workers (task instances on their own threads, or in child processes
//!   for pool kind `processes`); the pure parts the pool actor wires (batch rules,
//!   restart budget, the autoscaler's decision); the messages between them on one page
//!   (`actors::protocol`).
//! - [`pool_shared`]: what the HTTP side reads about a pool: settings, the status its
//!   actor publishes, the queue's admission gate.
//! - [`broker`]: the Celery client: Redis as broker and result backend in Celery's wire
//!   format (several nodes, Python Celery clients): submit, take, leases, restores,
//!   results; the wire format (`broker::celery`) and the Lua scripts (`broker::scripts`,
//!   one `.lua` file each). It knows nothing of actors or the node.
//! - [`node`]: the node's services on the broker: the consumer (taking work for idle
//!   workers, writing results) and Celery's remote control (one type per command) and
//!   events.
//! - [`store`]: task records, states, timings, TTL and long-poll wake-ups; it tells one
//!   observer of every final state (the metrics) and one of every `RETRY` and final
//!   change (the outbox).
//! - [`outbox`]: the tasks this node took from a broker and has not finished: their
//!   changes go, in order, to the consumer's result writer; their inputs answer
//!   Celery's `inspect`.
//! - [`task`]: the `Task` trait, factories, the registry, the built-in tasks, the
//!   text classifier task on a `model.toml` directory, and the task kinds on Hugging
//!   Face checkpoints (`text_classifier`, `embeddings`, `reranker`, `token_classifier`).
//! - [`model`]: loading checkpoints (directories, the hub cache), the encoder families
//!   behind one trait (the BERT family on packed CPU kernels; DeBERTa-v2 and ModernBERT
//!   on candle-transformers; BERT on candle for CUDA), the heads, model manifests, the
//!   spam classifier, head training.
//! - [`http`]: warp routes (tasks, `/v1/models`, health, admin; OpenAI's
//!   `/v1/embeddings` and TEI's `/embed`, `/rerank`, `/predict`, `/`, `/info` as
//!   synchronous calls over the task backend, `http::call`; their bodies read as JSON
//!   means them, `http::body`), JSON errors, API keys, the rejection handler.
//! - [`error`]: the API error table (status and code per error).
//! - [`metrics`]: every Prometheus metric name, its help, buckets and helpers.
#![warn(missing_docs)]

pub mod actors;
pub mod app;
pub mod backend;
pub mod broker;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod node;
pub mod outbox;
pub mod pool_shared;
pub mod state;
pub mod store;
pub mod task;
