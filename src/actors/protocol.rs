//! The actor protocol on one page: what travels between the HTTP side, the pool actors
//! and the workers. Every actor module imports from here, and from nowhere else in
//! `actors`, so there are no import cycles between them.
//!
//! ```text
//!  HTTP ──Submit──▶ Pool ──batch (Inbox)──▶ Worker
//!  HTTP ──Resize──▶ Pool ◀──Ready────────── Worker
//!                   Pool ◀──ActorFailed / ActorTerminated (linked)
//! ```

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use ractor::{ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::pool_shared::PoolShared;
use crate::store::{TaskId, TaskStore};

/// A worker's id, unique for the life of the process.
pub type WorkerId = u64;

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
    pub enqueued: Instant,
    /// What the task's factory made of the input at submit time
    /// ([`crate::task::TaskFactory::prepare`]): its tokens, for `max_batch_tokens`.
    pub prepared: Option<crate::task::Prepared>,
}

impl Job {
    /// The tokens it costs a batch (0 for a task that counts none).
    pub fn tokens(&self) -> usize {
        self.prepared.as_ref().map_or(0, |p| p.tokens)
    }
}

/// A job handed to a worker, with the attempt number its answer must carry.
#[derive(Debug, Clone)]
pub struct StartedJob {
    /// The job.
    pub job: Job,
    /// From [`crate::store::TaskStore::start`].
    pub attempt: u64,
}

/// Messages to a pool actor, the one owner of a pool's queue and workers.
pub enum PoolMessage {
    /// New jobs, already recorded `PENDING` and admitted (see
    /// [`crate::pool_shared::PoolShared::try_admit`]).
    Submit(Vec<Job>),
    /// A worker finished what it was handed and wants more.
    Ready {
        /// Its id.
        worker: WorkerId,
        /// Task instances it rebuilt after a task panicked while running the batch.
        panics: u32,
    },
    /// A `threads` worker finished warming its tasks up and takes work from now on.
    Warmed {
        /// Its id.
        worker: WorkerId,
    },
    /// Change the pool's size or autoscale bounds; answers once new workers run (a
    /// worker that warms up takes work once it sent `Warmed`) and retired ones were
    /// told to stop.
    Resize {
        /// The change.
        change: Resize,
        /// The outcome.
        reply: RpcReplyPort<Result<(), ResizeError>>,
    },
    /// Start a worker in a slot whose previous start failed (sent to itself after the
    /// back-off).
    Restart {
        /// The slot.
        slot: usize,
        /// Which scheduled try this is; a stale one (the slot was removed, reused and
        /// scheduled again meanwhile) is ignored.
        generation: u64,
    },
    /// Periodic: enforce time limits, measure the oldest queued job's age, autoscale.
    Tick,
    /// A batch-fill wait ran out: dispatch what is queued.
    Flush,
    /// Stop replacing workers: the process is shutting down.
    ShuttingDown,
}

/// How long a resize may take to answer: starting workers loads their models.
pub const RESIZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Every pool's actor, by pool index: where submits and resizes go. The supervisor
/// puts a new actor in place when it restarts a pool whose actor failed, so callers
/// look the actor up at each use and never keep it.
#[derive(Clone, Default)]
pub struct PoolActors(Arc<Vec<parking_lot::RwLock<ActorRef<PoolMessage>>>>);

impl PoolActors {
    /// The pools' first actors, by index.
    pub fn new(actors: Vec<ActorRef<PoolMessage>>) -> Self {
        PoolActors(Arc::new(
            actors.into_iter().map(parking_lot::RwLock::new).collect(),
        ))
    }

    /// The current actor of pool `index`.
    pub fn get(&self, index: usize) -> ActorRef<PoolMessage> {
        self.0[index].read().clone()
    }

    /// Puts `actor` in place for pool `index` (the supervisor, after a restart).
    pub fn set(&self, index: usize, actor: ActorRef<PoolMessage>) {
        *self.0[index].write() = actor;
    }

    /// Hands admitted jobs (recorded in `store`, their places taken in `pool`) to pool
    /// `index`'s actor. If the actor is gone (the process is stopping, or the supervisor
    /// is restarting the pool), undoes both and gives back the jobs' ids.
    pub fn submit(
        &self,
        index: usize,
        jobs: Vec<Job>,
        store: &TaskStore,
        pool: &PoolShared,
    ) -> Result<(), Vec<TaskId>> {
        let ids: Vec<TaskId> = jobs.iter().map(|j| j.id).collect();
        if self.get(index).cast(PoolMessage::Submit(jobs)).is_ok() {
            return Ok(());
        }
        for id in &ids {
            store.remove(id);
        }
        pool.release(ids.len());
        Err(ids)
    }

    /// Asks pool `index`'s actor to resize and waits for the outcome (new workers can
    /// take a while to load their models: up to [`RESIZE_TIMEOUT`]). `Err` when the
    /// actor did not answer.
    pub async fn resize(
        &self,
        index: usize,
        change: Resize,
    ) -> Result<Result<(), ResizeError>, String> {
        ractor::call_t!(
            self.get(index),
            |reply| PoolMessage::Resize { change, reply },
            RESIZE_TIMEOUT.as_millis() as u64
        )
        .map_err(|e| e.to_string())
    }

    /// How many pools.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A change of a pool's size or autoscale bounds.
#[derive(Debug, Clone, PartialEq)]
pub enum Resize {
    /// Set the size; within the autoscale bounds when autoscaling.
    Concurrency(usize),
    /// Autoscale between bounds (the size is clamped into them at once), or stop
    /// autoscaling (`None`) at the current size.
    Autoscale(Option<AutoscaleUpdate>),
}

/// Autoscale bounds from the admin API, and optionally the autoscaler's tuning; a tuning
/// field left out keeps the pool's `[pools.NAME.autoscale]` value, else the default.
// Its docs are the OpenAPI descriptions; the tuning fields are those of
// `crate::config::AutoscaleConfig`, and their ranges (in the document too) its `TUNING`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleUpdate {
    /// Fewest workers.
    pub min: usize,
    /// Most workers.
    pub max: usize,
    /// Grow by one worker per this many queued tasks. Default: the pool's
    /// `[pools.NAME.autoscale]` value, else 4.
    #[serde(default)]
    pub scale_up_queue_depth: Option<usize>,
    /// ...or grow when the oldest queued task waited this long. Default: the file's
    /// value, else 500.
    #[serde(default)]
    pub scale_up_wait_ms: Option<u64>,
    /// At most one grow per this long. Default: the file's value, else 1.0.
    #[serde(default)]
    pub scale_up_cooldown_seconds: Option<f64>,
    /// Shrink by one after this long with an idle worker and no queue. Default: the
    /// file's value, else 30.0.
    #[serde(default)]
    pub scale_down_idle_seconds: Option<f64>,
    /// How often the autoscaler looks. Default: the file's value, else 200.
    #[serde(default)]
    pub check_interval_ms: Option<u64>,
}

impl AutoscaleUpdate {
    /// Bounds only, with the pool's tuning.
    pub fn bounds(min: usize, max: usize) -> Self {
        AutoscaleUpdate {
            min,
            max,
            scale_up_queue_depth: None,
            scale_up_wait_ms: None,
            scale_up_cooldown_seconds: None,
            scale_down_idle_seconds: None,
            check_interval_ms: None,
        }
    }
}

/// Why a resize was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResizeError {
    /// The request is out of range; the message says which bound.
    #[error("{0}")]
    Invalid(String),
    /// A new worker failed to start.
    #[error("a new worker failed to start: {0}")]
    Spawn(String),
}

/// Messages to a worker actor.
pub enum WorkerMessage {
    /// Jobs to run inline (`solo` workers only).
    Run(Vec<StartedJob>),
    /// The worker's thread cannot go on (its tasks could not be rebuilt, or its child
    /// process died); the worker fails with this message and its pool replaces it.
    Died(String),
}

/// How a pool hands a batch to one of its workers.
pub enum Inbox {
    /// The worker's own thread, through a channel (`threads`; `processes`, whose thread
    /// hands the batch on to its child process).
    Thread(mpsc::Sender<Vec<StartedJob>>),
    /// The worker actor itself, which runs jobs inline (`solo`).
    Inline(ActorRef<WorkerMessage>),
}

impl Inbox {
    /// Hands a batch over; gives it back if the worker is gone.
    pub fn send(&self, batch: Vec<StartedJob>) -> Result<(), Vec<StartedJob>> {
        match self {
            Inbox::Thread(tx) => tx.send(batch).map_err(|e| e.0),
            Inbox::Inline(actor) => actor.cast(WorkerMessage::Run(batch)).map_err(|e| match e {
                ractor::MessagingErr::SendErr(WorkerMessage::Run(b)) => b,
                _ => Vec::new(),
            }),
        }
    }
}
