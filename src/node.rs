//! The node's services around the broker: what a node does with the Celery client
//! ([`crate::broker`]) once its pools run. They sit above the actors and the broker
//! client and use both; the client knows nothing of them.
//!
//! - [`consumer`]: takes messages for pools with idle workers, hands them to the pool
//!   actors, writes results back, renews leases and restores expired ones.
//! - [`control`]: Celery's remote control (`celery inspect`, `control`) and events.

pub mod consumer;
pub mod control;
