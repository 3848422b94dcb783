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

/// Whether this process is a `processes` pool's child (set by its `main`).
static IN_CHILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a `processes` pool's child: tasks that must not run in the
/// server itself, like `debug.abort`, check it.
pub fn in_child_process() -> bool {
    IN_CHILD.load(std::sync::atomic::Ordering::Relaxed)
}

/// Marks this process as a `processes` pool's child (the child's `main`, first thing).
pub fn mark_child_process() {
    IN_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
}

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

impl WorkerContext {
    /// The worker's intra-op thread pool for a model task: `intra_op_threads` threads
    /// named after the worker, at the pool's niceness.
    pub fn intra_op_pool(&self, task: &str) -> Result<rayon::ThreadPool, LoadError> {
        let name = self.name.clone();
        let nice = self.nice;
        rayon::ThreadPoolBuilder::new()
            .num_threads(self.intra_op_threads)
            .thread_name(move |i| format!("{name}-op{i}"))
            .start_handler(move |_| set_thread_nice(nice))
            .build()
            .map_err(|e| LoadError {
                task: task.to_string(),
                message: format!("starting {} intra-op threads: {e}", self.intra_op_threads),
            })
    }
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

/// One parameter of a task, as Celery callers pass it (positionally or by keyword).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    /// The input field it fills.
    pub name: &'static str,
    /// Whether a call must give it.
    pub required: bool,
}

impl Param {
    /// A parameter every call gives.
    pub const fn required(name: &'static str) -> Param {
        Param {
            name,
            required: true,
        }
    }

    /// A parameter a call may leave out.
    pub const fn optional(name: &'static str) -> Param {
        Param {
            name,
            required: false,
        }
    }
}

/// A task's parameters in order: how Celery's positional and keyword arguments
/// (`predict.delay(text)`, `apply_async(args=..., kwargs=...)`) map onto its input
/// object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// Named fields, in order: positional arguments fill them in turn, keyword
    /// arguments by name, as Python binds a call.
    Fields(&'static [Param]),
    /// Any input (`(*args, **kwargs)`): keyword arguments are the input object, one
    /// positional argument is the input itself, several are a list.
    Any,
}

impl Params {
    /// The signature as Celery's `inspect registered` and Python show it:
    /// `spam.predict(text)`, `debug.spin(ms, ignore_sigterm=None)`,
    /// `debug.echo(*args, **kwargs)`.
    pub fn signature(&self, task: &str) -> String {
        let params = match self {
            Params::Any => "*args, **kwargs".to_string(),
            Params::Fields(fields) => fields
                .iter()
                .map(|p| {
                    if p.required {
                        p.name.to_string()
                    } else {
                        format!("{}=None", p.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        format!("{task}({params})")
    }

    /// Binds a call's arguments to the task's input object, as Python binds them to a
    /// function's parameters. A bad call is an error in Python's words, prefixed with
    /// `TypeError: ` (Celery reports it as that exception).
    pub fn bind(
        &self,
        task: &str,
        args: &[Value],
        kwargs: &serde_json::Map<String, Value>,
    ) -> Result<Value, String> {
        let fields = match self {
            Params::Any => {
                return match (args, kwargs.is_empty()) {
                    ([], _) => Ok(Value::Object(kwargs.clone())),
                    ([one], true) => Ok(one.clone()),
                    (many, true) => Ok(Value::Array(many.to_vec())),
                    (_, false) => Err(format!(
                        "TypeError: {task}() takes either positional or keyword arguments, not both"
                    )),
                };
            }
            Params::Fields(fields) => fields,
        };
        let type_error = |m: String| Err(format!("TypeError: {task}() {m}"));
        if args.len() > fields.len() {
            let required = fields.iter().filter(|p| p.required).count();
            let takes = match (required, fields.len()) {
                (r, n) if r == n => format!("{n}"),
                (r, n) => format!("from {r} to {n}"),
            };
            let plural = if fields.len() == 1 && required == 1 {
                "argument"
            } else {
                "arguments"
            };
            let were = if args.len() == 1 { "was" } else { "were" };
            return type_error(format!(
                "takes {takes} positional {plural} but {} {were} given",
                args.len()
            ));
        }
        let mut input = serde_json::Map::new();
        for (p, v) in fields.iter().zip(args) {
            input.insert(p.name.to_string(), v.clone());
        }
        for (k, v) in kwargs {
            if !fields.iter().any(|p| p.name == k) {
                return type_error(format!("got an unexpected keyword argument '{k}'"));
            }
            if input.contains_key(k) {
                return type_error(format!("got multiple values for argument '{k}'"));
            }
            input.insert(k.clone(), v.clone());
        }
        let missing: Vec<String> = fields
            .iter()
            .filter(|p| p.required && !input.contains_key(p.name))
            .map(|p| format!("'{}'", p.name))
            .collect();
        if !missing.is_empty() {
            let names = match missing.as_slice() {
                [one] => one.clone(),
                [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
                [] => unreachable!("checked non-empty"),
            };
            let s = if missing.len() == 1 { "" } else { "s" };
            return type_error(format!(
                "missing {} required positional argument{s}: {names}",
                missing.len()
            ));
        }
        Ok(Value::Object(input))
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

    /// The tokens of `input`'s longest sequence before truncation, and the most the
    /// model reads (its maximum input length), for a caller that refuses a long input
    /// rather than truncate it (TEI's `truncate: false`). `None` (the default): the task
    /// reads no tokens, or `input` is not one it accepts (its validation says why). It
    /// tokenizes the input once more, without truncation: only that caller pays for it.
    fn length_before_truncation(&self, input: &Value) -> Option<(usize, usize)> {
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

    /// Its parameters in order, for Celery's positional arguments. Every kind says;
    /// the default takes any input.
    fn params(&self) -> Params {
        Params::Any
    }

    /// Test hook (kind `debug.panic_pool` only): whether a job of this task makes its
    /// pool actor panic when it arrives, to prove that the supervisor contains it.
    fn breaks_pool(&self) -> bool {
        false
    }

    /// Text for token ids of the task's own vocabulary (OpenAI's `input` may be token
    /// ids): decoded with its tokenizer, to be tokenized again at submit. The default:
    /// the task takes no token ids.
    fn detokenize(&self, ids: &[u32]) -> Result<String, String> {
        let _ = ids;
        Err("this task takes text, not token ids".into())
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
        ("debug.panic_pool", debug::panic_pool),
        ("noop", debug::noop),
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

    /// Whether every task routed to `pool` takes batches: then a worker of the pool
    /// takes up to `max_batch_size` jobs at once, and the broker consumer takes that
    /// many messages per idle worker.
    pub fn pool_batches(&self, pool: usize) -> bool {
        let tasks = self.for_pool(pool);
        !tasks.is_empty() && tasks.len() == batching(&tasks).len()
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<_> = self.tasks.keys().map(String::as_str).collect();
        v.sort();
        v
    }
}

/// The names of `tasks` that take batches (the one place that asks).
pub fn batching(tasks: &[Registered]) -> std::collections::HashSet<Arc<str>> {
    tasks
        .iter()
        .filter(|t| t.factory.batching())
        .map(|t| t.name.clone())
        .collect()
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

#[cfg(test)]
mod params_tests {
    use super::*;
    use serde_json::json;

    const TEXT: Param = Param::required("text");
    const MS: Param = Param::required("ms");
    const FLAG: Param = Param::optional("ignore_sigterm");
    const PREDICT: Params = Params::Fields(&[TEXT]);
    const SPIN: Params = Params::Fields(&[MS, FLAG]);

    fn bind(p: Params, args: Value, kwargs: Value) -> Result<Value, String> {
        let args = args.as_array().unwrap().clone();
        p.bind("t", &args, kwargs.as_object().unwrap())
    }

    #[test]
    fn positional_and_keyword_arguments_bind_as_in_python() {
        assert_eq!(
            bind(PREDICT, json!(["hi"]), json!({})),
            Ok(json!({"text": "hi"}))
        );
        assert_eq!(
            bind(PREDICT, json!([]), json!({"text": "hi"})),
            Ok(json!({"text": "hi"}))
        );
        assert_eq!(
            bind(SPIN, json!([5]), json!({"ignore_sigterm": true})),
            Ok(json!({"ms": 5, "ignore_sigterm": true}))
        );
        assert_eq!(bind(SPIN, json!([5]), json!({})), Ok(json!({"ms": 5})));
        let err = |p, a, k| bind(p, a, k).unwrap_err();
        assert_eq!(
            err(PREDICT, json!(["a", "b"]), json!({})),
            "TypeError: t() takes 1 positional argument but 2 were given"
        );
        assert_eq!(
            err(SPIN, json!([1, 2, 3]), json!({})),
            "TypeError: t() takes from 1 to 2 positional arguments but 3 were given"
        );
        assert_eq!(
            err(PREDICT, json!(["a"]), json!({"text": "b"})),
            "TypeError: t() got multiple values for argument 'text'"
        );
        assert_eq!(
            err(PREDICT, json!([]), json!({})),
            "TypeError: t() missing 1 required positional argument: 'text'"
        );
        assert_eq!(
            err(PREDICT, json!([]), json!({"txt": "a"})),
            "TypeError: t() got an unexpected keyword argument 'txt'"
        );
        let none = Params::Fields(&[]);
        assert_eq!(
            err(none, json!([1]), json!({})),
            "TypeError: t() takes 0 positional arguments but 1 was given"
        );
        assert_eq!(bind(none, json!([]), json!({})), Ok(json!({})));
        assert_eq!(PREDICT.signature("spam.predict"), "spam.predict(text)");
        assert_eq!(SPIN.signature("s"), "s(ms, ignore_sigterm=None)");
    }

    #[test]
    fn any_input_takes_what_it_is_given() {
        assert_eq!(
            bind(Params::Any, json!([]), json!({"a": 1})),
            Ok(json!({"a": 1}))
        );
        assert_eq!(bind(Params::Any, json!([7]), json!({})), Ok(json!(7)));
        assert_eq!(
            bind(Params::Any, json!([1, 2]), json!({})),
            Ok(json!([1, 2]))
        );
        assert!(bind(Params::Any, json!([1]), json!({"a": 1})).is_err());
        assert_eq!(Params::Any.signature("e"), "e(*args, **kwargs)");
    }
}
