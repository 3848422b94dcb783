//! A worker: one unit of concurrency, with its own instance of every task routed to its
//! pool.
//!
//! Kind `threads`: the actor owns an OS thread that builds the task instances and runs
//! every job, fed by a channel, so inference never blocks the async runtime. Kind
//! `solo`: the actor runs jobs inline, in `block_in_place`. Either way a panic in a task
//! takes the worker down, and the supervisor rebuilds it.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::WorkerId;
use super::dispatcher::DispatcherMessage;
use crate::config::PoolKind;
use crate::pool::{PoolShared, StartedJob};
use crate::store::TaskStore;
use crate::task::{LoadError, Registered, Task, WorkerContext};

/// The worker actor.
pub struct Worker;

/// What a worker is built from.
pub struct WorkerArgs {
    /// Unique for the life of the process (a restarted worker gets a new one).
    pub id: WorkerId,
    /// Pool index.
    pub pool: usize,
    /// The pool's shared counters.
    pub shared: Arc<PoolShared>,
    /// How it runs tasks.
    pub kind: PoolKind,
    /// Its device and thread budget.
    pub context: WorkerContext,
    /// The tasks routed to its pool.
    pub tasks: Vec<Registered>,
    /// Where answers are written.
    pub store: Arc<TaskStore>,
    /// Where it reports `Ready`.
    pub dispatcher: ActorRef<DispatcherMessage>,
}

/// Messages to a worker.
pub enum WorkerMessage {
    /// Jobs to run inline (`solo` workers only).
    Run(Vec<StartedJob>),
    /// The worker's thread died (a task panicked); the worker fails with this message.
    Died(String),
}

/// How the dispatcher reaches a worker.
pub enum Inbox {
    /// The worker's thread, through a channel.
    Thread(mpsc::Sender<Vec<StartedJob>>),
    /// The worker actor itself (`solo`).
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

/// A worker's state.
pub struct WorkerState {
    id: WorkerId,
    /// The task instances, for `solo` workers (a `threads` worker's live on its thread).
    inline: Option<Runner>,
    dispatcher: ActorRef<DispatcherMessage>,
}

/// The task instances of one worker, and how it runs a batch.
struct Runner {
    tasks: HashMap<Arc<str>, Box<dyn Task>>,
    store: Arc<TaskStore>,
    pool: Arc<PoolShared>,
}

impl Runner {
    fn build(
        tasks: &[Registered],
        ctx: &WorkerContext,
        store: Arc<TaskStore>,
        pool: Arc<PoolShared>,
    ) -> Result<Self, LoadError> {
        let mut built = HashMap::new();
        for t in tasks {
            built.insert(t.name.clone(), t.factory.build(ctx)?);
        }
        Ok(Runner {
            tasks: built,
            store,
            pool,
        })
    }

    /// Runs a batch and records each answer. Several jobs (always of one task) go
    /// through the task's batch entry point at once. On a panic, stops and returns its
    /// message; unanswered jobs stay `STARTED` for the dispatcher to re-queue.
    fn run_batch(&mut self, batch: Vec<StartedJob>) -> Result<(), String> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let name = first.job.task.clone();
        let task = self
            .tasks
            .get_mut(&name)
            .expect("jobs are routed to pools that run their task. This is a bug.");
        let t0 = std::time::Instant::now();
        let outcomes = if batch.len() == 1 {
            let input = &first.job.input;
            vec![
                std::panic::catch_unwind(AssertUnwindSafe(|| task.run(input)))
                    .map_err(|payload| panic_message(payload.as_ref()))?,
            ]
        } else {
            let inputs: Vec<&serde_json::Value> = batch.iter().map(|s| &*s.job.input).collect();
            std::panic::catch_unwind(AssertUnwindSafe(|| task.run_batch(&inputs)))
                .map_err(|payload| panic_message(payload.as_ref()))?
        };
        if outcomes.len() != batch.len() {
            // A broken task: treat like a panic, so the jobs are retried elsewhere.
            return Err(format!(
                "task `{name}` answered {} times for {} inputs",
                outcomes.len(),
                batch.len()
            ));
        }
        crate::metrics::ran_batch(&self.pool, &name, batch.len(), t0.elapsed());
        for (started, outcome) in batch.iter().zip(outcomes) {
            if let Some(f) =
                self.store
                    .finish(&started.job.id, started.attempt, outcome.map_err(|e| e.0))
            {
                crate::metrics::finished(&f);
            }
        }
        Ok(())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    format!("task panicked: {text}")
}

impl Actor for Worker {
    type Msg = WorkerMessage;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let WorkerArgs {
            id,
            pool,
            shared,
            kind,
            context,
            tasks,
            store,
            dispatcher,
        } = args;
        let (inbox, inline) = match kind {
            PoolKind::Solo => {
                let runner =
                    tokio::task::block_in_place(|| Runner::build(&tasks, &context, store, shared))?;
                (Inbox::Inline(myself.clone()), Some(runner))
            }
            PoolKind::Threads => {
                let (tx, rx) = mpsc::channel::<Vec<StartedJob>>();
                let (built_tx, built_rx) = tokio::sync::oneshot::channel();
                let me = myself.clone();
                let ready_to = dispatcher.clone();
                std::thread::Builder::new()
                    .name(format!("celeriac-{}-{id}", shared.name))
                    .spawn(move || {
                        crate::task::set_thread_nice(context.nice);
                        let mut runner = match Runner::build(&tasks, &context, store, shared) {
                            Ok(r) => {
                                let _ = built_tx.send(Ok(()));
                                r
                            }
                            Err(e) => {
                                let _ = built_tx.send(Err(e));
                                return;
                            }
                        };
                        while let Ok(batch) = rx.recv() {
                            if let Err(msg) = runner.run_batch(batch) {
                                let _ = me.cast(WorkerMessage::Died(msg));
                                return;
                            }
                            let _ = ready_to.cast(DispatcherMessage::Ready { worker: id });
                        }
                    })?;
                built_rx
                    .await
                    .map_err(|_| "worker thread exited while building its tasks")??;
                (Inbox::Thread(tx), None)
            }
        };
        dispatcher.cast(DispatcherMessage::Register {
            worker: id,
            pool,
            inbox,
            actor: myself,
        })?;
        Ok(WorkerState {
            id,
            inline,
            dispatcher,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: WorkerMessage,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMessage::Died(why) => Err(why.into()),
            WorkerMessage::Run(batch) => {
                let runner = state
                    .inline
                    .as_mut()
                    .expect("only solo workers get Run. This is a bug.");
                tokio::task::block_in_place(|| runner.run_batch(batch))?;
                state
                    .dispatcher
                    .cast(DispatcherMessage::Ready { worker: state.id })?;
                Ok(())
            }
        }
    }
}
