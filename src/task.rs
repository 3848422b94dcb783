//! Tasks: the [`Task`] trait, the factories that build them, and the registry.
//!
//! As with Celery's `@app.task`, a task is registered under a name. Each worker builds
//! its own [`Task`] instance, from the task's [`TaskFactory`], for every task routed to
//! its pool when it starts. A factory may hold state shared by all its instances (a
//! model's read-only weights, loaded once).

pub mod checkpoint;
pub mod debug;
pub mod text_classifier;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::config::Config;

/// An error a task returns; it becomes the task's `FAILURE` message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

/// Building a task (or its shared state) failed; the message names the model or setting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("task `{task}`: {message}")]
pub struct LoadError {
    /// The task name.
    pub task: String,
    /// What went wrong and what to change.
    pub message: String,
}

/// Where a worker runs: what a factory needs to build its instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerContext {
    /// The worker's device.
    pub device: crate::config::DeviceSpec,
    /// Threads its model code may use.
    pub intra_op_threads: usize,
    /// A name for threads and logs, e.g. `default-3`.
    pub name: String,
    /// The worker's pool, for metric labels.
    pub pool: String,
    /// Scheduling niceness of the worker's threads (`pools.NAME.nice`).
    pub nice: i32,
    /// Whether the worker runs [`Task::warm_up`] before it reports ready
    /// (`pools.NAME.warm_up`).
    #[serde(default)]
    pub warm_up: bool,
    /// The pool's `max_batch_size`: the largest batch a warm-up should try.
    #[serde(default)]
    pub max_batch_size: usize,
    /// The pool's `max_batch_tokens` (0: no limit).
    #[serde(default)]
    pub max_batch_tokens: usize,
}

/// Sets the calling thread's niceness (Linux: per thread). Model threads run a little
/// below the HTTP threads, so on a saturated machine requests and results still flow
/// and batches fill, instead of the I/O path starving behind the model. Best effort:
/// a failure (e.g. not permitted) is logged once and ignored.
pub fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!(nice, "could not set worker thread niceness"));
        }
    }
}

/// One worker's instance of a task. Runs on the worker's own thread.
pub trait Task: Send {
    /// Runs the task on one input that [`TaskFactory::validate`] accepted.
    fn run(&mut self, input: &Value) -> Result<Value, TaskError>;

    /// The batch entry point: one answer per input, in order. Called with several
    /// inputs only when the factory says [`TaskFactory::batching`]; the default runs
    /// them one by one.
    fn run_batch(&mut self, inputs: &[&Value]) -> Vec<Result<Value, TaskError>> {
        inputs.iter().map(|i| self.run(i)).collect()
    }

    /// [`Task::run_batch`] with what [`TaskFactory::prepare`] made of each input at
    /// submit time, where it is at hand (`None` where it is not: a `processes` child
    /// gets inputs only). The default ignores it.
    fn run_prepared(
        &mut self,
        inputs: &[&Value],
        prepared: &[Option<&Prepared>],
    ) -> Vec<Result<Value, TaskError>> {
        let _ = prepared;
        self.run_batch(inputs)
    }

    /// Runs the shapes the worker will meet before it reports ready, so the first
    /// request is as fast as the hundredth (kernels compiled and loaded, weights paged
    /// in). Returns how many forward passes it ran; the default runs none.
    fn warm_up(&mut self) -> Result<usize, TaskError> {
        Ok(0)
    }
}

/// What a factory made of an input at submit time, off the worker's thread: its cost
/// in tokens, for the pool's `max_batch_tokens`, and task-specific data (a text
/// classifier's token ids) that the worker then does not compute again.
#[derive(Clone)]
pub struct Prepared {
    /// Tokens the input costs a batch (truncation applied).
    pub tokens: usize,
    /// The task's own data, read back by its [`Task::run_prepared`].
    pub data: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Builds [`Task`] instances for one registered task name.
pub trait TaskFactory: Send + Sync {
    /// Checks an input at submit time, so bad input gets a 4xx instead of a queued
    /// task that fails later. The message says what is wrong.
    fn validate(&self, input: &Value) -> Result<(), String>;

    /// Prepares an input that [`TaskFactory::validate`] accepted, at submit time: a
    /// model task tokenizes it here. `None` (the default): nothing to prepare, and the
    /// input costs no tokens.
    fn prepare(&self, input: &Value) -> Option<Prepared> {
        let _ = input;
        None
    }

    /// Builds one worker's instance for the worker described by `ctx`.
    fn build(&self, ctx: &WorkerContext) -> Result<Box<dyn Task>, LoadError>;

    /// Whether instances gain from [`Task::run_batch`]: then the pool actor may hand a
    /// worker up to the pool's `max_batch_size` jobs of this task at once.
    fn batching(&self) -> bool {
        false
    }

    /// Whether its instances have a [`Task::warm_up`] worth waiting for: then a
    /// `threads` worker takes work only once it warmed up.
    fn warms_up(&self) -> bool {
        false
    }

    /// Whether its batches report a padding ratio (models that pad inputs to a common
    /// length), so the metric is registered from the start.
    fn pads_batches(&self) -> bool {
        false
    }
    /// What it serves, for `GET /v1/models`: kind, architecture, source, labels or
    /// dimensions, maximum length, precision, kernels. `None` (the default): a task
    /// that runs no model.
    fn describe(&self) -> Option<Value> {
        None
    }
}

/// Every registered task: name → factory and pool.
pub struct Registry {
    tasks: HashMap<String, Registered>,
}

/// One registered task.
#[derive(Clone)]
pub struct Registered {
    /// The name tasks are submitted under.
    pub name: Arc<str>,
    /// The pool it is routed to (index into the app's pool list).
    pub pool: usize,
    /// Builds its instances.
    pub factory: Arc<dyn TaskFactory>,
}

/// Builds a factory for a task kind from its spec; one entry per kind.
type KindBuilder =
    fn(&str, &crate::config::TaskSpec, &Config) -> Result<Arc<dyn TaskFactory>, LoadError>;

/// The task kinds this binary knows, by the `kind` written in config.
fn kinds() -> &'static [(&'static str, KindBuilder)] {
    &[
        ("debug.echo", debug::echo),
        ("debug.sleep", debug::sleep),
        ("debug.fail", debug::fail),
        ("debug.panic", debug::panic),
        ("debug.crash_worker", debug::crash_worker),
        ("debug.abort", debug::abort),
        ("debug.pid", debug::pid),
        ("debug.spin", debug::spin),
        ("debug.alloc", debug::alloc),
        ("text_classifier", text_classifier::factory),
        ("embeddings", checkpoint::embeddings),
        ("reranker", checkpoint::reranker),
        ("token_classifier", checkpoint::token_classifier),
    ]
}

impl Registry {
    /// Builds every task in the config. `pool_index` maps a pool name to its index.
    /// Loading errors name the task and the model or setting.
    pub fn from_config(
        config: &Config,
        pool_index: impl Fn(&str) -> usize,
    ) -> Result<Self, LoadError> {
        let mut tasks = HashMap::new();
        for (name, spec) in &config.tasks {
            if spec.queue.is_some() {
                // Run by other workers: nothing to build here.
                continue;
            }
            let Some((_, build)) = kinds().iter().find(|(k, _)| *k == spec.kind) else {
                return Err(LoadError {
                    task: name.clone(),
                    message: format!(
                        "unknown kind `{}` in tasks.\"{name}\".kind; known kinds: {}",
                        spec.kind,
                        kinds()
                            .iter()
                            .map(|(k, _)| *k)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            let factory = build(name, spec, config)?;
            tasks.insert(
                name.clone(),
                Registered {
                    name: Arc::from(name.as_str()),
                    pool: pool_index(&spec.pool),
                    factory,
                },
            );
        }
        Ok(Registry { tasks })
    }

    /// Looks a task up by name.
    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.tasks.get(name)
    }

    /// The tasks routed to one pool.
    pub fn for_pool(&self, pool: usize) -> Vec<Registered> {
        let mut v: Vec<_> = self
            .tasks
            .values()
            .filter(|t| t.pool == pool)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The names of the tasks routed to `pool` that take batches.
    pub fn batching_tasks(&self, pool: usize) -> std::collections::HashSet<Arc<str>> {
        self.for_pool(pool)
            .into_iter()
            .filter(|t| t.factory.batching())
            .map(|t| t.name)
            .collect()
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<_> = self.tasks.keys().map(String::as_str).collect();
        v.sort();
        v
    }
}

/// Rejects `model` and a `precision` other than `auto` on kinds that take no model, so a
/// typo is not ignored.
pub(crate) fn no_model(name: &str, spec: &crate::config::TaskSpec) -> Result<(), LoadError> {
    let setting = if spec.model.is_some() {
        "model"
    } else if spec.precision != crate::model::Precision::Auto {
        "precision"
    } else if spec.kernels.is_some() {
        "kernels"
    } else if spec.normalize.is_some() {
        "normalize"
    } else if spec.dimensions.is_some() {
        "dimensions"
    } else if spec.max_length.is_some() {
        "max_length"
    } else {
        return Ok(());
    };
    Err(LoadError {
        task: name.into(),
        message: format!(
            "kind `{}` takes no model; remove tasks.\"{name}\".{setting}",
            spec.kind
        ),
    })
}
