//! The dispatcher: one bounded queue per pool; hands work only to idle workers.
//!
//! Workers pull: a worker is given a job only after it said it is idle (by registering
//! or by reporting `Ready`), so no job waits behind a busy worker while another sits
//! idle. The dispatcher remembers what each worker holds until the worker reports
//! `Ready` (acks-late): if the worker is lost first, the supervisor reports it and the
//! jobs are re-queued as `RETRY` or failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::WorkerId;
use super::worker::{Inbox, WorkerMessage};
use crate::pool::{Job, PoolShared, StartedJob};
use crate::store::{Requeue, TaskStore};

/// The dispatcher actor.
pub struct Dispatcher;

/// What the dispatcher starts with.
pub struct DispatcherArgs {
    /// Every pool, by index.
    pub pools: Vec<Arc<PoolShared>>,
    /// Task records.
    pub store: Arc<TaskStore>,
    /// How often running jobs are checked against their pool's time limit.
    pub time_limit_check: Duration,
    /// Per pool, the tasks that take batches.
    pub batching: Vec<HashSet<Arc<str>>>,
}

/// Messages to the dispatcher.
pub enum DispatcherMessage {
    /// New jobs, already recorded `PENDING` and counted in the pool's `queued`.
    Submit {
        /// Pool index.
        pool: usize,
        /// The jobs, in submit order.
        jobs: Vec<Job>,
    },
    /// A worker started and is idle.
    Register {
        /// Its id.
        worker: WorkerId,
        /// Its pool.
        pool: usize,
        /// Where its jobs go.
        inbox: Inbox,
        /// The actor, to stop it when its job runs past the time limit.
        actor: ActorRef<WorkerMessage>,
    },
    /// A worker finished what it held and wants more.
    Ready {
        /// Its id.
        worker: WorkerId,
    },
    /// The supervisor saw a worker exit: re-queue or fail what it held.
    WorkerLost {
        /// Its id.
        worker: WorkerId,
        /// Why, for the error message of tasks that run out of retries.
        why: String,
    },
    /// Every worker slot of a pool is parked: fail its queued jobs.
    PoolDead {
        /// Pool index.
        pool: usize,
    },
    /// Periodic: enforce time limits, publish the oldest queued job's age.
    Tick,
    /// A batch-fill wait of a pool ran out: dispatch what is queued.
    Flush {
        /// Pool index.
        pool: usize,
    },
    /// Answers once every message sent before it was handled (e.g. new workers'
    /// registrations), so a resize answers with the workers counted.
    Sync(RpcReplyPort<()>),
    /// A shrink: choose `count` workers of `pool` (idle ones first), give them nothing
    /// new, stop the idle ones now and the busy ones once they finish what they hold.
    Retire {
        /// Pool index.
        pool: usize,
        /// How many.
        count: usize,
        /// The chosen workers.
        reply: RpcReplyPort<Vec<WorkerId>>,
    },
}

struct Running {
    jobs: Vec<StartedJob>,
    since: Instant,
}

struct WorkerEntry {
    pool: usize,
    inbox: Inbox,
    actor: ActorRef<WorkerMessage>,
    running: Option<Running>,
    /// Chosen by a shrink: finishes what it holds, takes nothing new, then stops.
    stopping: bool,
}

impl WorkerEntry {
    /// Takes a worker that leaves the dispatcher out of its pool's counters: it is no
    /// longer live, nor stopping or busy.
    fn uncount(&self, shared: &PoolShared) {
        shared.live.fetch_sub(1, Ordering::AcqRel);
        if self.stopping {
            shared.stopping.fetch_sub(1, Ordering::AcqRel);
        } else if self.running.is_some() {
            shared.busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct PoolQueue {
    shared: Arc<PoolShared>,
    queue: VecDeque<Job>,
    /// Idle workers; the most recently idle is used first (warm caches).
    idle: Vec<WorkerId>,
    time_limit: Duration,
    /// Tasks of this pool that take batches.
    batching: HashSet<Arc<str>>,
    max_batch: usize,
    max_delay: Duration,
    /// A `Flush` is scheduled.
    flush_pending: bool,
}

/// The dispatcher's state.
pub struct DispatcherState {
    pools: Vec<PoolQueue>,
    workers: HashMap<WorkerId, WorkerEntry>,
    store: Arc<TaskStore>,
    /// To schedule its own `Flush`.
    myself: ActorRef<DispatcherMessage>,
}

impl Actor for Dispatcher {
    type Msg = DispatcherMessage;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        myself.send_interval(args.time_limit_check, || DispatcherMessage::Tick);
        Ok(DispatcherState {
            pools: args
                .pools
                .into_iter()
                .zip(args.batching)
                .map(|(shared, batching)| PoolQueue {
                    time_limit: crate::config::secs(shared.config.time_limit_seconds),
                    max_batch: shared.config.max_batch_size,
                    max_delay: Duration::from_secs_f64(shared.config.max_batch_delay_ms / 1e3),
                    batching,
                    flush_pending: false,
                    shared,
                    queue: VecDeque::new(),
                    idle: Vec::new(),
                })
                .collect(),
            workers: HashMap::new(),
            store: args.store,
            myself,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: DispatcherMessage,
        state: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatcherMessage::Submit { pool, jobs } => {
                state.pools[pool].queue.extend(jobs);
                if state.pools[pool].shared.is_dead() {
                    state.fail_queued(pool);
                }
                state.dispatch(pool);
            }
            DispatcherMessage::Register {
                worker,
                pool,
                inbox,
                actor,
            } => {
                state.workers.insert(
                    worker,
                    WorkerEntry {
                        pool,
                        inbox,
                        actor,
                        running: None,
                        stopping: false,
                    },
                );
                state.pools[pool].shared.live.fetch_add(1, Ordering::AcqRel);
                state.pools[pool].idle.push(worker);
                state.dispatch(pool);
            }
            DispatcherMessage::Ready { worker } => {
                // Unknown ids are workers already written off (time limit): ignore.
                if let Some(entry) = state.workers.get_mut(&worker)
                    && entry.running.take().is_some()
                {
                    let pool = entry.pool;
                    let shared = &state.pools[pool].shared;
                    if entry.stopping {
                        entry.uncount(shared);
                        let entry = state.workers.remove(&worker).expect("just found");
                        entry.actor.stop(Some("scaled down".into()));
                    } else {
                        shared.busy.fetch_sub(1, Ordering::AcqRel);
                        state.pools[pool].idle.push(worker);
                        state.dispatch(pool);
                    }
                }
            }
            DispatcherMessage::Flush { pool } => {
                state.pools[pool].flush_pending = false;
                state.dispatch(pool);
            }
            DispatcherMessage::Sync(reply) => {
                let _ = reply.send(());
            }
            DispatcherMessage::Retire { pool, count, reply } => {
                let _ = reply.send(state.retire(pool, count));
            }
            DispatcherMessage::WorkerLost { worker, why } => {
                if let Some(pool) = state.remove_worker(worker, &why) {
                    state.dispatch(pool);
                }
            }
            DispatcherMessage::PoolDead { pool } => {
                if state.pools[pool].shared.is_dead() {
                    state.fail_queued(pool);
                }
            }
            DispatcherMessage::Tick => {
                state.enforce_time_limits();
                for p in &state.pools {
                    let age = p
                        .queue
                        .front()
                        .map_or(0, |j| j.enqueued.elapsed().as_millis());
                    p.shared.oldest_wait_ms.store(age as u64, Ordering::Release);
                }
            }
        }
        Ok(())
    }
}

impl DispatcherState {
    /// Hands queued jobs to idle workers of `pool` until one side runs out. A job of a
    /// task that takes batches goes out with up to `max_batch_size - 1` more jobs of the
    /// same task from the front of the queue. While the queue is shorter than a batch and
    /// another worker is busy, it waits up to `max_batch_delay` for the batch to fill.
    fn dispatch(&mut self, pool: usize) {
        let p = &mut self.pools[pool];
        while !p.queue.is_empty() {
            let Some(&worker) = p.idle.last() else { break };
            if p.max_batch > 1 && p.queue.len() < p.max_batch && !p.max_delay.is_zero() {
                let front = p.queue.front().expect("not empty");
                let waited = front.enqueued.elapsed();
                let busy = p.shared.busy.load(Ordering::Acquire) > 0;
                if busy && waited < p.max_delay && p.batching.contains(&front.task) {
                    if !p.flush_pending {
                        p.flush_pending = true;
                        self.myself.send_after(p.max_delay - waited, move || {
                            DispatcherMessage::Flush { pool }
                        });
                    }
                    break;
                }
            }
            let mut batch: Vec<StartedJob> = Vec::new();
            while let Some(job) = p.queue.front() {
                let fits = match batch.first() {
                    None => true,
                    Some(first) => {
                        batch.len() < p.max_batch
                            && job.task == first.job.task
                            && p.batching.contains(&job.task)
                    }
                };
                if !fits {
                    break;
                }
                let job = p.queue.pop_front().expect("peeked");
                p.shared.release(1);
                // Revoked (or expired) while queued: skip it.
                if let Some((attempt, waited)) = self.store.start(&job.id) {
                    crate::metrics::started(&job.task, waited);
                    batch.push(StartedJob { job, attempt });
                }
            }
            if batch.is_empty() {
                continue;
            }
            p.idle.pop();
            let entry = self
                .workers
                .get_mut(&worker)
                .expect("idle workers are registered. This is a bug.");
            p.shared.busy.fetch_add(1, Ordering::AcqRel);
            entry.running = Some(Running {
                jobs: batch.clone(),
                since: Instant::now(),
            });
            if entry.inbox.send(batch).is_err() {
                // Its thread is gone; the supervisor will report the loss too, but the
                // jobs need not wait for that.
                self.remove_worker(worker, "worker thread exited");
                return self.dispatch(pool);
            }
        }
    }

    /// Forgets a worker; re-queues (front, in order) or fails the jobs it held.
    fn remove_worker(&mut self, worker: WorkerId, why: &str) -> Option<usize> {
        let entry = self.workers.remove(&worker)?;
        let p = &mut self.pools[entry.pool];
        p.idle.retain(|w| *w != worker);
        entry.uncount(&p.shared);
        if let Some(running) = entry.running {
            let max_retries = p.shared.config.max_retries;
            for started in running.jobs.into_iter().rev() {
                let (outcome, finished) =
                    self.store
                        .requeue_or_fail(&started.job.id, started.attempt, max_retries, why);
                if let Some(f) = finished {
                    crate::metrics::finished(&f);
                }
                if outcome == Requeue::Retry {
                    p.shared.queued.fetch_add(1, Ordering::AcqRel);
                    p.queue.push_front(started.job);
                }
            }
        }
        Some(entry.pool)
    }

    fn fail_queued(&mut self, pool: usize) {
        let p = &mut self.pools[pool];
        let why = format!(
            "no live worker in pool `{}`: its restart budget is spent",
            p.shared.name
        );
        for job in p.queue.drain(..) {
            p.shared.release(1);
            if let Some(f) = self.store.fail(&job.id, None, why.clone()) {
                crate::metrics::finished(&f);
            }
        }
    }

    fn retire(&mut self, pool: usize, count: usize) -> Vec<WorkerId> {
        let p = &mut self.pools[pool];
        let mut chosen = Vec::with_capacity(count);
        // Idle workers first: they stop at once.
        while chosen.len() < count {
            let Some(w) = p.idle.pop() else { break };
            let entry = self
                .workers
                .remove(&w)
                .expect("idle workers are registered");
            entry.uncount(&p.shared);
            entry.actor.stop(Some("scaled down".into()));
            chosen.push(w);
        }
        // Then busy ones, which stop once they report what they hold.
        let mut busy: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, e)| e.pool == pool && !e.stopping && e.running.is_some())
            .map(|(w, _)| *w)
            .collect();
        busy.sort_unstable_by(|a, b| b.cmp(a));
        for w in busy.into_iter().take(count - chosen.len()) {
            let e = self.workers.get_mut(&w).expect("listed above");
            e.stopping = true;
            p.shared.busy.fetch_sub(1, Ordering::AcqRel);
            p.shared.stopping.fetch_add(1, Ordering::AcqRel);
            chosen.push(w);
        }
        chosen
    }

    fn enforce_time_limits(&mut self) {
        let now = Instant::now();
        let over: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, e)| {
                e.running
                    .as_ref()
                    .is_some_and(|r| now - r.since > self.pools[e.pool].time_limit)
            })
            .map(|(w, _)| *w)
            .collect();
        for worker in over {
            let mut entry = self.workers.remove(&worker).expect("listed above");
            let p = &self.pools[entry.pool];
            entry.uncount(&p.shared);
            let running = entry.running.take().expect("filtered on running");
            let why = format!(
                "time limit exceeded: ran longer than {:?} (pools.{}.time_limit_seconds)",
                p.time_limit, p.shared.name
            );
            for started in &running.jobs {
                if let Some(f) =
                    self.store
                        .fail(&started.job.id, Some(started.attempt), why.clone())
                {
                    crate::metrics::finished(&f);
                }
            }
            tracing::warn!(pool = %p.shared.name, worker, "{why}; replacing the worker");
            entry.actor.stop(Some("time limit exceeded".into()));
        }
    }
}
