//! What the HTTP side and the actors share about a pool: its settings and live counters.
//!
//! The counters are atomics so a submit can be admitted or refused (429) at once,
//! without a round trip to the dispatcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;

use crate::config::PoolConfig;
use crate::store::TaskId;

/// A unit of work on its way to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task's id in the store.
    pub id: TaskId,
    /// The registered task name.
    pub task: Arc<str>,
    /// The validated input.
    pub input: Arc<Value>,
}

/// A job handed to a worker, with the attempt number its answer must carry.
#[derive(Debug, Clone)]
pub struct StartedJob {
    /// The job.
    pub job: Job,
    /// From [`crate::store::TaskStore::start`].
    pub attempt: u32,
}

/// One pool's settings and counters.
#[derive(Debug)]
pub struct PoolShared {
    /// The pool's name in config.
    pub name: String,
    /// Its settings.
    pub config: PoolConfig,
    /// Jobs queued and not yet handed to a worker (revoked ones included until skipped).
    pub queued: AtomicUsize,
    /// Workers registered with the dispatcher.
    pub live: AtomicUsize,
    /// Workers running a batch.
    pub busy: AtomicUsize,
    /// Worker slots left down because the restart budget was spent.
    pub parked: AtomicUsize,
    /// Workers rebuilt after a loss, since start.
    pub restarts: AtomicU64,
}

impl PoolShared {
    /// A pool with no workers yet.
    pub fn new(name: String, config: PoolConfig) -> Arc<Self> {
        Arc::new(PoolShared {
            name,
            config,
            queued: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            restarts: AtomicU64::new(0),
        })
    }

    /// Reserves `n` queue places, or none if that would pass the capacity.
    pub fn try_reserve(&self, n: usize) -> bool {
        let cap = self.config.queue_capacity;
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= cap).then_some(q + n)
            })
            .is_ok()
    }

    /// Gives back `n` queue places.
    pub fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether no worker is left and none will come back (every slot parked).
    pub fn is_dead(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
            && self.parked.load(Ordering::Acquire) >= self.config.size()
    }

    /// Whether nothing is queued or running.
    pub fn is_drained(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0 && self.busy.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_capacity() {
        let cfg: PoolConfig = toml::from_str("queue_capacity = 3").unwrap();
        let p = PoolShared::new("p".into(), cfg);
        assert!(p.try_reserve(2));
        assert!(!p.try_reserve(2), "all or nothing");
        assert!(p.try_reserve(1));
        assert!(!p.try_reserve(1));
        p.release(3);
        assert!(p.is_drained());
    }
}
