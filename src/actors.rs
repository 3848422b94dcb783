//! The actor tree: a [`supervisor::Supervisor`] that links a
//! [`dispatcher::Dispatcher`] and every pool's [`worker::Worker`]s.

pub mod dispatcher;
pub mod supervisor;
pub mod worker;

/// A worker's id, unique for the life of the process.
pub type WorkerId = u64;
