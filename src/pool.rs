//! What the HTTP side and the actors share about a pool: its settings and live counters.
//!
//! The counters are atomics so a submit can be admitted or refused (429) at once,
//! without a round trip to the dispatcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

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
    /// When it was queued (for the autoscaler's queue-wait signal).
    pub enqueued: std::time::Instant,
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
    /// Workers running a batch (those being drained for a shrink count as `stopping`).
    pub busy: AtomicUsize,
    /// Workers being built (their tasks and model instances).
    pub starting: AtomicUsize,
    /// Workers chosen by a shrink that finish what they hold, then stop.
    pub stopping: AtomicUsize,
    /// The configured size, as changed by the admin API or the autoscaler.
    pub target: AtomicUsize,
    /// Autoscale bounds `(min, max)`, when autoscaling.
    pub autoscale: Mutex<Option<(usize, usize)>>,
    /// Age of the oldest queued job, in ms (updated by the dispatcher).
    pub oldest_wait_ms: AtomicU64,
    /// Worker slots left down because the restart budget was spent.
    pub parked: AtomicUsize,
    /// Workers rebuilt after a loss, since start.
    pub restarts: AtomicU64,
    /// Nanoseconds workers spent running tasks, since start.
    pub busy_nanos: AtomicU64,
}

impl PoolShared {
    /// A pool with no workers yet.
    pub fn new(name: String, config: PoolConfig) -> Arc<Self> {
        let autoscale = config.autoscale.as_ref().map(|a| (a.min, a.max));
        let target = match autoscale {
            Some((min, max)) => config.size().clamp(min, max),
            None => config.size(),
        };
        Arc::new(PoolShared {
            name,
            config,
            queued: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            stopping: AtomicUsize::new(0),
            target: AtomicUsize::new(target),
            autoscale: Mutex::new(autoscale),
            parked: AtomicUsize::new(0),
            oldest_wait_ms: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
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
            && self.parked.load(Ordering::Acquire) >= self.target.load(Ordering::Acquire)
    }

    /// Whether nothing is queued or running.
    pub fn is_drained(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
            && self.busy.load(Ordering::Acquire) == 0
            && self.stopping.load(Ordering::Acquire) == 0
    }

    /// The autoscale bounds, when autoscaling.
    pub fn autoscale(&self) -> Option<(usize, usize)> {
        *self.autoscale.lock()
    }

    /// Workers idle and taking work.
    pub fn idle(&self) -> usize {
        self.live.load(Ordering::Acquire).saturating_sub(
            self.busy.load(Ordering::Acquire) + self.stopping.load(Ordering::Acquire),
        )
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
