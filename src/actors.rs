//! The actor tree: a [`supervisor::Supervisor`] that links one [`pool::Pool`] actor per
//! pool, each of which links its [`worker::Worker`]s. The messages between them are on
//! one page, [`protocol`]. What the pool actor decides is in pure, unit-tested types it
//! wires: batches ([`batching`]), failed-start back-off ([`restarts`]) and autoscaling
//! ([`autoscale`]).

pub mod autoscale;
pub mod batching;
pub mod pool;
pub mod protocol;
pub mod restarts;
pub mod supervisor;
pub mod worker;
