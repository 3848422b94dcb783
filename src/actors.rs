//! The actor tree: a [`supervisor::Supervisor`] that links one [`pool::Pool`] actor per
//! pool, each of which links its [`worker::Worker`]s. The messages between them are on
//! one page, [`protocol`]; the autoscaler's decision is a pure function in
//! [`autoscale`].

pub mod autoscale;
pub mod pool;
pub mod protocol;
pub mod supervisor;
pub mod worker;
