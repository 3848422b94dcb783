//! A worker: one unit of concurrency, with its own instance of every task routed to its
//! pool.
//!
//! Kind `threads`: the actor owns an OS thread that builds the task instances and runs
//! every batch, fed by a channel, so inference never blocks the async runtime. Kind
//! `solo`: the actor runs batches inline, in `block_in_place`. Kind `processes`: the
//! actor's OS thread starts a child process that builds the task instances, hands it
//! each batch and records its answers ([`child`]); a child that dies takes only its
//! batch with it, and the actor kills its child when the pool stops it for a time limit.
//!
//! A task that panics fails that task alone (`FAILURE` with the panic message); the
//! worker rebuilds that task's instance (the weights are shared, so this costs
//! microseconds) and goes on. When a batch panics, its jobs are run again one at a
//! time, so only the poison input fails. The worker itself fails only when an instance
//! cannot be rebuilt; its pool then replaces it.

pub mod child;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::protocol::{PoolMessage, StartedJob, WorkerId, WorkerMessage};
use crate::config::PoolKind;
use crate::pool_shared::PoolShared;
use crate::store::TaskStore;
use crate::task::{LoadError, Prepared, Registered, Task, WorkerContext};

/// The worker actor.
pub struct Worker;

/// What a worker is built from.
pub struct WorkerArgs {
    /// Unique for the life of the process (a replacement worker gets a new one).
    pub id: WorkerId,
    /// The pool's settings, and its busy-time metric.
    pub shared: Arc<PoolShared>,
    /// Its device and thread budget.
    pub context: WorkerContext,
    /// The tasks routed to its pool.
    pub tasks: Vec<Registered>,
    /// Where answers are written.
    pub store: Arc<TaskStore>,
    /// Where it reports `Ready`.
    pub pool: ActorRef<PoolMessage>,
    /// Its batches, for kinds `threads` and `processes` (the pool holds the sending
    /// side).
    pub batches: Option<mpsc::Receiver<Vec<StartedJob>>>,
    /// The whole configuration, for kind `processes`: a child builds its tasks from it.
    pub config: Arc<crate::config::Config>,
}

/// A worker's state.
pub struct WorkerState {
    id: WorkerId,
    /// The task instances, for `solo` workers (a `threads` worker's live on its thread).
    inline: Option<Runner>,
    /// The child process of a `processes` worker, killed if the actor stops while it
    /// runs a batch (a time limit).
    child: Option<Arc<child::ChildSlot>>,
    pool: ActorRef<PoolMessage>,
}

/// The task instances of one worker, and how they run a batch: in this process (kinds
/// `threads` and `solo`, through [`Runner`]) or in a child process (kind `processes`,
/// through [`child`]).
pub(crate) struct Instances {
    registered: Vec<Registered>,
    context: WorkerContext,
    tasks: HashMap<Arc<str>, Box<dyn Task>>,
}

impl Instances {
    pub(crate) fn build(
        registered: Vec<Registered>,
        context: WorkerContext,
    ) -> Result<Self, LoadError> {
        let mut tasks = HashMap::new();
        for t in &registered {
            tasks.insert(t.name.clone(), t.factory.build(&context)?);
        }
        Ok(Instances {
            registered,
            context,
            tasks,
        })
    }

    /// Runs every instance's warm-up when the pool asks for it (`warm_up`); an error
    /// (or a panic) names the task and the device.
    pub(crate) fn warm_up(&mut self) -> Result<(), LoadError> {
        for (name, task) in &mut self.tasks {
            warm_up(&self.context, name, task.as_mut())?;
        }
        Ok(())
    }

    /// Replaces the instance of `name` after it panicked (its state may be broken).
    fn rebuild(&mut self, name: &Arc<str>) -> Result<(), String> {
        let reg = self
            .registered
            .iter()
            .find(|r| r.name == *name)
            .expect("jobs are routed to pools that run their task. This is a bug.");
        let built = std::panic::catch_unwind(AssertUnwindSafe(|| reg.factory.build(&self.context)))
            .map_err(|payload| panic_message(payload.as_ref()))
            .and_then(|b| b.map_err(|e| e.to_string()));
        let mut task = built.map_err(|e| {
            format!("could not rebuild the instance of `{name}` after a task panicked: {e}")
        })?;
        warm_up(&self.context, name, task.as_mut())
            .map_err(|e| format!("the rebuilt instance of `{name}` failed to warm up: {e}"))?;
        self.tasks.insert(name.clone(), task);
        Ok(())
    }

    fn task(&mut self, name: &Arc<str>) -> &mut Box<dyn Task> {
        self.tasks
            .get_mut(name)
            .expect("jobs are routed to pools that run their task. This is a bug.")
    }

    /// Runs one input; a panic becomes its error, and the instance is rebuilt.
    fn run_one(
        &mut self,
        name: &Arc<str>,
        input: &Value,
        prepared: Option<&Prepared>,
        panics: &mut u32,
    ) -> Result<Result<Value, String>, String> {
        let task = self.task(name);
        let run = || match prepared {
            None => task.run(input),
            Some(_) => task
                .run_prepared(&[input], &[prepared])
                .pop()
                .unwrap_or_else(|| Err(crate::task::TaskError("no answer".into()))),
        };
        match std::panic::catch_unwind(AssertUnwindSafe(run)) {
            Ok(outcome) => Ok(outcome.map_err(|e| e.0)),
            Err(payload) => {
                *panics += 1;
                self.rebuild(name)?;
                Ok(Err(panic_message(payload.as_ref())))
            }
        }
    }

    /// Runs a batch of inputs of task `name` (with what was prepared of each at submit
    /// time, where at hand: `prepared` is empty or one per input) and hands each
    /// answer to `answer` with its index. Several inputs go through the task's batch entry point at once; if that
    /// panics, they are run again one at a time so only the input that panics fails.
    /// Returns how many instances were rebuilt after a panic; an error only when an
    /// instance could not be rebuilt (the answers given until then stand).
    pub(crate) fn run(
        &mut self,
        name: &Arc<str>,
        inputs: &[&Value],
        prepared: &[Option<&Prepared>],
        answer: &mut dyn FnMut(usize, Result<Value, String>),
    ) -> Result<u32, String> {
        let mut panics = 0;
        let prepared_of = |i: usize| prepared.get(i).copied().flatten();
        if let [input] = inputs {
            answer(0, self.run_one(name, input, prepared_of(0), &mut panics)?);
            return Ok(panics);
        }
        let task = self.task(name);
        let run = || {
            if prepared.len() == inputs.len() {
                task.run_prepared(inputs, prepared)
            } else {
                task.run_batch(inputs)
            }
        };
        match std::panic::catch_unwind(AssertUnwindSafe(run)) {
            Ok(out) if out.len() == inputs.len() => {
                for (i, o) in out.into_iter().enumerate() {
                    answer(i, o.map_err(|e| e.0));
                }
            }
            Ok(out) => {
                let why = format!(
                    "task `{name}` answered {} times for a batch of {} inputs",
                    out.len(),
                    inputs.len()
                );
                for i in 0..inputs.len() {
                    answer(i, Err(why.clone()));
                }
            }
            Err(payload) => {
                panics += 1;
                self.rebuild(name)?;
                tracing::warn!(
                    task = %name,
                    jobs = inputs.len(),
                    "a batch panicked ({}); running its jobs one at a time",
                    panic_message(payload.as_ref())
                );
                // Each answer is handed on as it comes, so if an instance cannot be
                // rebuilt, the jobs already answered keep their answers.
                for (i, input) in inputs.iter().enumerate() {
                    answer(i, self.run_one(name, input, prepared_of(i), &mut panics)?);
                }
            }
        }
        Ok(panics)
    }
}

/// A worker's task instances in this process, and where their answers go.
struct Runner {
    instances: Instances,
    store: Arc<TaskStore>,
    pool: Arc<PoolShared>,
}

impl Runner {
    fn build(
        registered: Vec<Registered>,
        context: WorkerContext,
        store: Arc<TaskStore>,
        pool: Arc<PoolShared>,
    ) -> Result<Self, LoadError> {
        Ok(Runner {
            instances: Instances::build(registered, context)?,
            store,
            pool,
        })
    }

    /// Runs a batch (always of one task) and records each answer (see
    /// [`Instances::run`]). Returns how many instances were rebuilt after a panic; an
    /// error only when an instance could not be rebuilt.
    fn run_batch(&mut self, batch: Vec<StartedJob>) -> Result<u32, String> {
        let Some(first) = batch.first() else {
            return Ok(0);
        };
        let name = first.job.task.clone();
        let t0 = std::time::Instant::now();
        let inputs: Vec<&Value> = batch.iter().map(|s| &*s.job.input).collect();
        let prepared: Vec<Option<&Prepared>> =
            batch.iter().map(|s| s.job.prepared.as_ref()).collect();
        let store = &self.store;
        let panics = self
            .instances
            .run(&name, &inputs, &prepared, &mut |i, outcome| {
                record(store, &batch[i], outcome)
            })?;
        crate::metrics::ran_batch(&self.pool, &name, batch.len(), t0.elapsed());
        Ok(panics)
    }
}

/// Runs a freshly built instance's warm-up when the pool asks for it (`warm_up`), logs
/// and records how long it took. A panic in it is an error, as a failed warm-up is.
fn warm_up(context: &WorkerContext, name: &Arc<str>, task: &mut dyn Task) -> Result<(), LoadError> {
    if !context.warm_up {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let passes = std::panic::catch_unwind(AssertUnwindSafe(|| task.warm_up()))
        .map_err(|payload| panic_message(payload.as_ref()))
        .and_then(|r| r.map_err(|e| e.0))
        .map_err(|e| LoadError {
            task: name.to_string(),
            message: format!("warm-up on {} failed: {e}", context.device),
        })?;
    if passes > 0 {
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            worker = %context.name,
            task = %name,
            device = %context.device,
            passes,
            seconds,
            "warmed up"
        );
        crate::metrics::warmed_up(&context.pool, name, seconds);
    }
    Ok(())
}

/// Writes a job's answer, if its attempt is still the current one.
fn record(store: &TaskStore, started: &StartedJob, outcome: Result<Value, String>) {
    store.finish(&started.job.id, started.attempt, outcome);
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    format!("task panicked: {text}")
}

/// A worker thread's loop: runs each batch the pool sends and tells the pool when it is
/// ready again. A runner failure (or a panic `run` did not catch) is reported to the
/// worker actor and ends the loop. Returns true when the pool closed the channel (the
/// worker was let go), false after a failure.
fn serve_batches(
    rx: &mpsc::Receiver<Vec<StartedJob>>,
    id: WorkerId,
    ready_to: &ActorRef<PoolMessage>,
    me: &ActorRef<WorkerMessage>,
    mut run: impl FnMut(Vec<StartedJob>) -> Result<u32, String>,
) -> bool {
    while let Ok(batch) = rx.recv() {
        // `run` catches task panics; this catches the rest, so the thread never ends
        // without telling its actor.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(batch)))
            .unwrap_or_else(|p| Err(panic_message(p.as_ref())));
        match outcome {
            Ok(panics) => {
                let _ = ready_to.cast(PoolMessage::Ready { worker: id, panics });
            }
            Err(why) => {
                let _ = me.cast(WorkerMessage::Died(why));
                return false;
            }
        }
    }
    true
}

/// Starts a worker's own thread (kinds `threads` and `processes`): `build` makes its
/// runner there, and its outcome comes back before this returns; then `serve` runs the
/// runner on that thread until the pool lets the worker go. `Err` when the thread could
/// not start or exited before it said how the build went.
async fn start_thread<R, E: Send + 'static>(
    name: String,
    build: impl FnOnce() -> Result<R, E> + Send + 'static,
    serve: impl FnOnce(R) + Send + 'static,
) -> Result<Result<(), E>, String> {
    let (built_tx, built_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || match build() {
            Ok(runner) => {
                let _ = built_tx.send(Ok(()));
                serve(runner);
            }
            Err(e) => {
                let _ = built_tx.send(Err(e));
            }
        })
        .map_err(|e| format!("could not start thread {name}: {e}"))?;
    built_rx
        .await
        .map_err(|_| format!("worker thread {name} exited while building its tasks"))
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
            shared,
            context,
            tasks,
            store,
            pool,
            batches,
            config,
        } = args;
        let mut child = None;
        let inline = match (shared.config.kind, batches) {
            (PoolKind::Solo, _) => Some(tokio::task::block_in_place(|| {
                let mut runner = Runner::build(tasks, context, store, shared)?;
                runner.instances.warm_up()?;
                Ok::<_, LoadError>(runner)
            })?),
            (PoolKind::Threads, Some(rx)) => {
                let me = myself.clone();
                let ready_to = pool.clone();
                let nice = context.nice;
                let name = format!("celeriac-{}-{id}", shared.name);
                let build = move || {
                    crate::task::set_thread_nice(nice);
                    Runner::build(tasks, context, store, shared)
                };
                let serve = move |mut runner: Runner| {
                    // Warm up off the pool actor's path: the pool hands this worker
                    // work once it says `Warmed`.
                    if runner.instances.context.warm_up {
                        if let Err(e) = runner.instances.warm_up() {
                            let _ = me.cast(WorkerMessage::Died(e.to_string()));
                            return;
                        }
                        let _ = ready_to.cast(PoolMessage::Warmed { worker: id });
                    }
                    serve_batches(&rx, id, &ready_to, &me, |b| runner.run_batch(b));
                };
                start_thread(name, build, serve)
                    .await?
                    .map_err(|e| e.to_string())?;
                None
            }
            (PoolKind::Processes, Some(rx)) => {
                let slot = Arc::new(child::ChildSlot::new(crate::config::secs(
                    config.supervisor.child_kill_grace_ms as f64 / 1e3,
                )));
                child = Some(slot.clone());
                let me = myself.clone();
                let ready_to = pool.clone();
                let init = child::Init::new(&config, &shared.name, context);
                let name = format!("celeriac-{}-{id}", shared.name);
                let build = move || child::ChildRunner::start(init, slot, store, shared);
                let serve = move |mut runner: child::ChildRunner| {
                    if serve_batches(&rx, id, &ready_to, &me, |b| runner.run_batch(b)) {
                        // The pool let the worker go: the child exits when its input
                        // closes.
                        runner.close();
                    }
                };
                start_thread(name, build, serve)
                    .await?
                    .map_err(|e| format!("child process failed to start: {e}"))?;
                None
            }
            (PoolKind::Threads | PoolKind::Processes, None) => {
                return Err(
                    "a worker with its own thread needs its batch channel. This is a bug.".into(),
                );
            }
        };
        Ok(WorkerState {
            id,
            inline,
            child,
            pool,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped while its child runs a batch: the pool wrote the worker off (a time
        // limit). An idle child exits by itself when the pool drops its channel.
        if let Some(slot) = &state.child {
            slot.terminate_if_busy();
        }
        Ok(())
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
                let panics = tokio::task::block_in_place(|| runner.run_batch(batch))?;
                state.pool.cast(PoolMessage::Ready {
                    worker: state.id,
                    panics,
                })?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::actors::protocol::Job;
    use crate::store::TaskState;
    use crate::task::{TaskError, TaskFactory};

    /// Echoes its input, panics on `"poison"` (in a batch too); counts its builds and
    /// fails every build after `builds_ok`.
    struct Poisonable {
        builds: Arc<AtomicUsize>,
        builds_ok: usize,
    }

    struct PoisonableTask;

    impl Task for PoisonableTask {
        fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
            assert_ne!(input, "poison", "poisoned");
            Ok(input.clone())
        }

        fn run_batch(&mut self, inputs: &[&Value]) -> Vec<Result<Value, TaskError>> {
            assert!(inputs.iter().all(|i| *i != "poison"), "poisoned batch");
            inputs.iter().map(|i| Ok((*i).clone())).collect()
        }
    }

    impl TaskFactory for Poisonable {
        fn validate(&self, _: &Value) -> Result<(), String> {
            Ok(())
        }

        fn build(&self, _: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
            if self.builds.fetch_add(1, Ordering::AcqRel) < self.builds_ok {
                Ok(Box::new(PoisonableTask))
            } else {
                Err(LoadError {
                    task: "t".into(),
                    message: "device gone".into(),
                })
            }
        }

        fn batching(&self) -> bool {
            true
        }
    }

    fn runner(builds_ok: usize) -> (Runner, Arc<TaskStore>, Arc<AtomicUsize>) {
        let builds = Arc::new(AtomicUsize::new(0));
        let registered = vec![Registered {
            name: Arc::from("t"),
            pool: 0,
            factory: Arc::new(Poisonable {
                builds: builds.clone(),
                builds_ok,
            }),
        }];
        let store = Arc::new(TaskStore::new(std::time::Duration::from_secs(60)));
        let context = WorkerContext {
            device: crate::config::DeviceSpec::Cpu,
            intra_op_threads: 1,
            name: "t-1".into(),
            pool: "p".into(),
            nice: 0,
            warm_up: true,
            max_batch_size: 32,
            max_batch_tokens: 0,
        };
        let pool = PoolShared::new("p".into(), toml::from_str("").unwrap());
        let r = Runner::build(registered, context, store.clone(), pool).unwrap();
        (r, store, builds)
    }

    fn started(store: &TaskStore, inputs: &[Value]) -> Vec<StartedJob> {
        inputs
            .iter()
            .map(|input| {
                let id = store.insert(Arc::from("t"), 0);
                let (attempt, _) = store.start(&id).unwrap();
                StartedJob {
                    job: Job {
                        id,
                        task: Arc::from("t"),
                        input: Arc::new(input.clone()),
                        enqueued: std::time::Instant::now(),
                        prepared: None,
                    },
                    attempt,
                }
            })
            .collect()
    }

    #[test]
    fn a_poison_input_in_a_batch_fails_alone_and_the_instance_is_rebuilt() {
        let (mut r, store, builds) = runner(usize::MAX);
        let batch = started(&store, &[json!(1), json!("poison"), json!(3)]);
        let ids: Vec<_> = batch.iter().map(|s| s.job.id).collect();
        // The batch panics, then the poison panics again when run alone.
        assert_eq!(r.run_batch(batch), Ok(2));
        assert_eq!(
            builds.load(Ordering::Acquire),
            3,
            "built, then rebuilt twice"
        );
        let views: Vec<_> = ids.iter().map(|id| store.get(id).unwrap()).collect();
        assert_eq!(views[0].state, TaskState::Success);
        assert_eq!(views[0].result, Some(json!(1)));
        assert_eq!(views[1].state, TaskState::Failure);
        let err = views[1].error.as_deref().unwrap();
        assert!(
            err.contains("task panicked") && err.contains("poisoned"),
            "{err}"
        );
        assert_eq!(views[2].result, Some(json!(3)));
        // The rebuilt instance serves the next batch.
        let batch = started(&store, &[json!("a"), json!("b")]);
        assert_eq!(r.run_batch(batch), Ok(0));
    }

    #[test]
    fn a_worker_whose_instance_cannot_be_rebuilt_gives_up() {
        let (mut r, store, _) = runner(1);
        let batch = started(&store, &[json!("poison")]);
        let id = batch[0].job.id;
        let err = r.run_batch(batch).unwrap_err();
        assert!(err.contains("device gone"), "{err}");
        // The job is left STARTED for the pool to settle as a lost worker's.
        assert_eq!(store.get(&id).unwrap().state, TaskState::Started);
    }
}
