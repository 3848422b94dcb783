//! What the HTTP side reads about a pool: its settings, the status its pool actor
//! publishes, and the admission gate of its queue.
//!
//! One actor owns a pool's workers and queue ([`crate::actors::pool`]); it publishes a
//! [`PoolStatus`] snapshot after every change, and everyone else reads that snapshot.
//! The one number written from two sides is the admission gate: a submit reserves queue
//! places at once (so a full queue is a 429 without a round trip to the actor), and the
//! pool actor gives them back as jobs leave its queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::PoolConfig;

/// A pool's state as its actor last published it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The configured size: worker slots, as set by the config, the admin API or the
    /// autoscaler.
    pub size: usize,
    /// Slots waiting to start a worker (after a failed start).
    pub starting: usize,
    /// Workers started and warming up their tasks; they take work once warm.
    pub warming: usize,
    /// Workers waiting for work.
    pub idle: usize,
    /// Workers running a batch.
    pub busy: usize,
    /// Workers chosen by a shrink that finish what they hold, then stop.
    pub stopping: usize,
    /// Slots left down because the restart budget for failed starts was spent.
    pub parked: usize,
    /// Jobs in the queue, not yet handed to a worker.
    pub queued: usize,
    /// Age of the oldest queued job, in ms, as of the last tick.
    pub oldest_wait_ms: u64,
    /// Autoscale bounds `(min, max)`, when autoscaling.
    pub autoscale: Option<(usize, usize)>,
    /// Workers replaced after a loss (time limit, crash), since start.
    pub replaced: u64,
    /// Task instances rebuilt after a task panicked, since start.
    pub panics: u64,
    /// Failed worker starts, since start.
    pub failed_starts: u64,
}

impl PoolStatus {
    /// Workers that take or hold work.
    pub fn live(&self) -> usize {
        self.idle + self.busy + self.stopping
    }

    /// Whether no worker is left and none will come back (every slot parked).
    pub fn is_dead(&self) -> bool {
        self.live() == 0 && self.size > 0 && self.parked >= self.size
    }

    /// The fewest live workers the pool needs to be ready: its autoscale lower bound,
    /// else one.
    pub fn minimum(&self) -> usize {
        self.autoscale.map_or(1, |(min, _)| min)
    }
}

/// One pool, as the HTTP side and the metrics see it.
#[derive(Debug)]
pub struct PoolShared {
    /// The pool's name in config.
    pub name: String,
    /// Its settings.
    pub config: PoolConfig,
    /// Queue places reserved by submits and not yet given back by the pool actor.
    admitted: AtomicUsize,
    /// Written only by the pool actor.
    status: watch::Sender<PoolStatus>,
    /// Nanoseconds workers spent running tasks, since start (a metric, added to by the
    /// workers).
    pub busy_nanos: AtomicU64,
    /// With a broker: messages waiting in the pool's Redis queue (for every node), as
    /// last read. The autoscaler counts them with the local queue.
    backlog: AtomicUsize,
    /// With a broker: tasks this pool took and cannot run (every slot parked), to be
    /// put back in the broker's queue.
    given_back: parking_lot::Mutex<Vec<crate::store::TaskId>>,
    /// Restarts of the pool's actor after it failed (see `crate::actors::supervisor`).
    actor_restarts: AtomicU64,
}

impl PoolShared {
    /// A pool with no workers yet.
    pub fn new(name: String, config: PoolConfig) -> Arc<Self> {
        let autoscale = config.autoscale.as_ref().map(|a| (a.min, a.max));
        let size = match autoscale {
            Some((min, max)) => config.size().clamp(min, max),
            None => config.size(),
        };
        let (status, _) = watch::channel(PoolStatus {
            size,
            autoscale,
            ..PoolStatus::default()
        });
        Arc::new(PoolShared {
            name,
            config,
            admitted: AtomicUsize::new(0),
            status,
            busy_nanos: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            given_back: parking_lot::Mutex::new(Vec::new()),
            actor_restarts: AtomicU64::new(0),
        })
    }

    /// The last published status.
    pub fn status(&self) -> PoolStatus {
        self.status.borrow().clone()
    }

    /// Whether the pool is dead ([`PoolStatus::is_dead`]), without copying the status.
    pub fn is_dead(&self) -> bool {
        self.status.borrow().is_dead()
    }

    /// Waits for the next published change.
    pub fn subscribe(&self) -> watch::Receiver<PoolStatus> {
        self.status.subscribe()
    }

    /// Publishes a new status (the pool actor only).
    pub(crate) fn publish(&self, status: PoolStatus) {
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }

    /// Hands a broker's task back, for [`PoolShared::take_given_back`].
    pub(crate) fn give_back(&self, id: crate::store::TaskId) {
        self.given_back.lock().push(id);
    }

    /// The tasks handed back since the last call.
    pub fn take_given_back(&self) -> Vec<crate::store::TaskId> {
        std::mem::take(&mut *self.given_back.lock())
    }

    /// Records the depth of the pool's broker queue (see `backlog`).
    pub fn set_backlog(&self, n: usize) {
        self.backlog.store(n, Ordering::Relaxed);
    }

    /// The depth of the pool's broker queue as last read; 0 without a broker.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Reserves `n` queue places, or none if that would pass the capacity. (Sequentially
    /// consistent, like the app's `accepting` flag, so a submit racing the start of a
    /// drain is either refused or seen by the drain.)
    pub fn try_admit(&self, n: usize) -> bool {
        let cap = self.config.queue_capacity;
        self.admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q + n <= cap).then_some(q + n)
            })
            .is_ok()
    }

    /// Gives back `n` queue places: the jobs left the queue, or were never sent.
    /// Saturates at zero: after a pool restart, a submit that raced it may give back
    /// a place the restart already gave back.
    pub fn release(&self, n: usize) {
        let _ = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Counts a restart of the pool's actor (the supervisor).
    pub(crate) fn count_actor_restart(&self) {
        self.actor_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// How often the pool's actor failed and was restarted, since start.
    pub fn actor_restarts(&self) -> u64 {
        self.actor_restarts.load(Ordering::Relaxed)
    }

    /// Takes one place for a job put back in the queue (a retry after a lost worker),
    /// even past the capacity: an admitted task is never dropped.
    pub(crate) fn readmit(&self) {
        self.admitted.fetch_add(1, Ordering::SeqCst);
    }

    /// Jobs admitted and not yet handed to a worker (those on their way to the pool
    /// actor included).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    /// Whether nothing is admitted, queued or running.
    pub fn is_drained(&self) -> bool {
        let s = self.status.borrow();
        self.admitted() == 0 && s.busy == 0 && s.stopping == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_respects_capacity() {
        let cfg: PoolConfig = toml::from_str("queue_capacity = 3").unwrap();
        let p = PoolShared::new("p".into(), cfg);
        assert!(p.try_admit(2));
        assert!(!p.try_admit(2), "all or nothing");
        assert!(p.try_admit(1));
        assert!(!p.try_admit(1));
        p.readmit();
        assert_eq!(p.admitted(), 4, "a retry is taken back even past capacity");
        p.release(4);
        assert!(p.is_drained());
    }

    #[test]
    fn a_pool_is_dead_only_when_every_slot_is_parked() {
        let mut s = PoolStatus {
            size: 2,
            parked: 1,
            ..PoolStatus::default()
        };
        assert!(!s.is_dead());
        s.parked = 2;
        assert!(s.is_dead());
        s.idle = 1;
        assert!(!s.is_dead());
    }
}
