//! Built-in tasks for demos, tests and load tests: `noop`, `debug.echo`,
//! `debug.sleep`, `debug.fail`, `debug.panic`, `debug.crash_worker`, and for
//! `processes` pools `debug.abort`, `debug.pid`, `debug.spin` and `debug.alloc`; and
//! the test hook `debug.panic_pool`. Enabled by registering them in config (see
//! `config/debug.toml`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{LoadError, Param, Params, Task, TaskError, TaskFactory, WorkerContext, no_model};
use crate::config::{Config, TaskSpec};

/// Longest `debug.sleep` accepted: one hour.
pub const MAX_SLEEP_MS: u64 = 3_600_000;

/// A factory whose instances are a plain function of the input.
struct FnFactory {
    validate: fn(&Value) -> Result<(), String>,
    run: fn(&Value) -> Result<Value, TaskError>,
    /// Whether it takes batches (its batch entry point maps `run` over them).
    batching: bool,
    /// Its parameters, for Celery's positional arguments.
    params: Params,
}

struct FnTask(fn(&Value) -> Result<Value, TaskError>);

impl Task for FnTask {
    fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
        (self.0)(input)
    }
}

impl TaskFactory for FnFactory {
    fn validate(&self, input: &Value) -> Result<(), String> {
        (self.validate)(input)
    }

    fn build(&self, _: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        Ok(Box::new(FnTask(self.run)))
    }

    fn batching(&self) -> bool {
        self.batching
    }

    fn params(&self) -> Params {
        self.params
    }
}

fn factory(
    name: &str,
    spec: &TaskSpec,
    params: Params,
    validate: fn(&Value) -> Result<(), String>,
    run: fn(&Value) -> Result<Value, TaskError>,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(FnFactory {
        validate,
        run,
        batching: false,
        params,
    }))
}

/// `{"ms": N}`: `debug.sleep` and `debug.spin`'s first parameter.
const MS: Param = Param::required("ms");
/// `debug.fail`'s error text.
const MESSAGE: Param = Param::optional("message");
/// `debug.crash_worker`'s count of failing starts.
const FAILED_STARTS: Param = Param::optional("failed_starts");
/// `debug.spin`'s "only SIGKILL stops me".
const IGNORE_SIGTERM: Param = Param::optional("ignore_sigterm");
/// `debug.alloc`'s MiB.
const MB: Param = Param::required("mb");

fn any_input(_: &Value) -> Result<(), String> {
    Ok(())
}

/// `debug.echo`: returns its input. Takes batches (in pools that allow them), so it
/// also exercises the batching path.
pub fn echo(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(FnFactory {
        validate: any_input,
        run: |input| Ok(input.clone()),
        batching: true,
        params: Params::Any,
    }))
}

fn sleep_ms(input: &Value) -> Result<u64, String> {
    let ms = input
        .get("ms")
        .ok_or("debug.sleep takes {\"ms\": N}: field `ms` is missing")?;
    let ms = ms
        .as_u64()
        .ok_or_else(|| format!("`ms` must be a non-negative integer, got {ms}"))?;
    if ms > MAX_SLEEP_MS {
        return Err(format!("`ms` must be at most {MAX_SLEEP_MS}, got {ms}"));
    }
    Ok(ms)
}

/// `debug.sleep`: sleeps `{"ms": N}` milliseconds on the worker's thread.
pub fn sleep(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(
        name,
        spec,
        Params::Fields(&[MS]),
        |input| sleep_ms(input).map(drop),
        |input| {
            let ms = sleep_ms(input).map_err(TaskError)?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!({ "slept_ms": ms }))
        },
    )
}

/// `debug.fail`: returns an error (`{"message": "..."}` sets its text).
pub fn fail(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(name, spec, Params::Fields(&[MESSAGE]), any_input, |input| {
        let message = input
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("debug.fail: failing as asked");
        Err(TaskError(message.to_string()))
    })
}

/// Most `failed_starts` a `debug.crash_worker` task may ask for.
pub const MAX_FAILED_STARTS: u64 = 1000;

fn failed_starts(input: &Value) -> Result<u64, String> {
    match input.get("failed_starts") {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= MAX_FAILED_STARTS)
            .ok_or_else(|| {
                format!("`failed_starts` must be an integer from 0 to {MAX_FAILED_STARTS}, got {v}")
            }),
    }
}

/// `debug.crash_worker`: breaks its worker the way a lost device would. It panics, and
/// then the next `{"failed_starts": N}` + 1 builds of this task fail: the instance
/// rebuild after the panic (so the worker is lost), then N starts of its replacement
/// (so back-off and the restart budget apply). Builds succeed again after that.
pub fn crash_worker(
    name: &str,
    spec: &TaskSpec,
    _: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(CrashFactory {
        task: name.to_string(),
        failing_builds: Arc::new(AtomicU64::new(0)),
    }))
}

struct CrashFactory {
    task: String,
    /// Builds left to fail, shared with every instance.
    failing_builds: Arc<AtomicU64>,
}

struct CrashTask(Arc<AtomicU64>);

impl TaskFactory for CrashFactory {
    fn validate(&self, input: &Value) -> Result<(), String> {
        failed_starts(input).map(drop)
    }

    fn params(&self) -> Params {
        Params::Fields(&[FAILED_STARTS])
    }

    fn build(&self, _: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        let took = self
            .failing_builds
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match took {
            Ok(left) => Err(LoadError {
                task: self.task.clone(),
                message: format!(
                    "debug.crash_worker: failing this build as asked ({} more to fail)",
                    left - 1
                ),
            }),
            Err(_) => Ok(Box::new(CrashTask(self.failing_builds.clone()))),
        }
    }
}

impl Task for CrashTask {
    fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
        let n = failed_starts(input).map_err(TaskError)?;
        self.0.store(n + 1, Ordering::Release);
        panic!("debug.crash_worker: breaking the worker as asked")
    }
}

/// `debug.panic`: panics inside the worker; that task fails, and the worker rebuilds
/// its instance and goes on.
pub fn panic(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(name, spec, Params::Any, any_input, |_| {
        panic!("debug.panic: panicking inside the worker as asked")
    })
}

/// `noop`: does nothing and returns `null`, for the seed app's `POST /noop` and for
/// measuring the plumbing. Takes no arguments, as the seed's `noop()`.
pub fn noop(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(FnFactory {
        validate: |input| match input {
            Value::Null => Ok(()),
            Value::Object(m) if m.is_empty() => Ok(()),
            other => Err(format!("noop takes no input, got {other}")),
        },
        run: |_| Ok(Value::Null),
        batching: true,
        params: Params::Fields(&[]),
    }))
}

/// `debug.panic_pool`: a test hook that makes the *pool actor* panic when a job of this
/// task reaches it (not a worker: that is `debug.panic`), to prove that the supervisor
/// contains the failure to the pool. The job itself fails with the pool's restart.
/// Never registered by the shipped configs.
pub fn panic_pool(
    name: &str,
    spec: &TaskSpec,
    _: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(PanicPoolFactory))
}

struct PanicPoolFactory;

impl TaskFactory for PanicPoolFactory {
    fn validate(&self, _: &Value) -> Result<(), String> {
        Ok(())
    }

    fn build(&self, _: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        Ok(Box::new(FnTask(|_| Ok(Value::Null))))
    }

    fn breaks_pool(&self) -> bool {
        true
    }
}

/// `debug.abort`: calls `std::process::abort()`, as a crash in native code would. Only
/// in a pool of kind `processes`, where it takes down its child process alone; routing
/// it to a `threads` or `solo` pool (whose worker is the server itself) is a start-up
/// error, and outside a child it refuses to run.
pub fn abort(
    name: &str,
    spec: &TaskSpec,
    config: &Config,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    let kind = config.pools.get(&spec.pool).map(|p| p.kind);
    if kind != Some(crate::config::PoolKind::Processes) {
        return Err(LoadError {
            task: name.into(),
            message: format!(
                "kind `debug.abort` aborts the process it runs in: route it to a pool of kind \"processes\" (pool `{}` is {})",
                spec.pool,
                kind.map_or("not defined", |k| k.as_str())
            ),
        });
    }
    factory(name, spec, Params::Any, any_input, |_| {
        if !crate::task::in_child_process() {
            return Err(TaskError(
                "debug.abort runs only in a child process of a `processes` pool".into(),
            ));
        }
        std::process::abort()
    })
}

/// `debug.pid`: returns `{"pid": N}`, the id of the process that ran it (a child's for
/// `processes` pools, the server's otherwise).
pub fn pid(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(name, spec, Params::Any, any_input, |_| {
        Ok(json!({ "pid": std::process::id() }))
    })
}

/// `debug.spin`: keeps a core busy for `{"ms": N}` milliseconds (a runaway task, for
/// time limits). With `"ignore_sigterm": true` (only in a `processes` child) its process
/// ignores SIGTERM first, so only SIGKILL stops it.
pub fn spin(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(
        name,
        spec,
        Params::Fields(&[MS, IGNORE_SIGTERM]),
        |input| sleep_ms(input).map(drop),
        |input| {
            let ms = sleep_ms(input).map_err(TaskError)?;
            if input.get("ignore_sigterm") == Some(&Value::Bool(true)) {
                if !crate::task::in_child_process() {
                    return Err(TaskError(
                        "`ignore_sigterm` is only for a child process of a `processes` pool".into(),
                    ));
                }
                // SAFETY: sets this child process's SIGTERM disposition to "ignore";
                // no handler code runs, so nothing can be interrupted unsafely.
                unsafe {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                }
            }
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut spins = 0u64;
            while std::time::Instant::now() < until {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
            Ok(json!({ "spun_ms": ms }))
        },
    )
}

/// Most MiB one `debug.alloc` may ask for.
pub const MAX_ALLOC_MB: u64 = 1024;

fn alloc_mb(input: &Value) -> Result<u64, String> {
    let mb = input
        .get("mb")
        .ok_or("debug.alloc takes {\"mb\": N}: field `mb` is missing")?;
    mb.as_u64()
        .filter(|n| *n <= MAX_ALLOC_MB)
        .ok_or_else(|| format!("`mb` must be an integer from 0 to {MAX_ALLOC_MB}, got {mb}"))
}

/// `debug.alloc`: allocates `{"mb": N}` MiB, touches every page and keeps it for the
/// life of its task instance (a leak, for recycling by memory).
pub fn alloc(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(AllocFactory))
}

struct AllocFactory;

/// What a `debug.alloc` instance holds on to.
struct AllocTask(Vec<Vec<u8>>);

impl TaskFactory for AllocFactory {
    fn validate(&self, input: &Value) -> Result<(), String> {
        alloc_mb(input).map(drop)
    }

    fn params(&self) -> Params {
        Params::Fields(&[MB])
    }

    fn build(&self, _: &WorkerContext) -> Result<Box<dyn Task>, LoadError> {
        Ok(Box::new(AllocTask(Vec::new())))
    }
}

impl Task for AllocTask {
    fn run(&mut self, input: &Value) -> Result<Value, TaskError> {
        let mb = alloc_mb(input).map_err(TaskError)?;
        // Non-zero bytes, so every page is really backed.
        self.0.push(vec![1u8; (mb as usize) << 20]);
        let held: usize = self.0.iter().map(Vec::len).sum();
        Ok(json!({ "held_mb": held >> 20 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> WorkerContext {
        WorkerContext {
            pool: "p".into(),
            device: crate::config::DeviceSpec::Cpu,
            intra_op_threads: 1,
            name: "test".into(),
            nice: 0,
            warm_up: true,
            max_batch_size: 32,
            max_batch_tokens: 0,
        }
    }

    fn spec(kind: &str) -> TaskSpec {
        TaskSpec {
            pool: "p".into(),
            kind: kind.into(),
            model: None,
            precision: Default::default(),
            kernels: None,
            queue: None,
            normalize: None,
            dimensions: None,
            max_length: None,
        }
    }

    #[test]
    fn sleep_validates_its_input() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let f = sleep("debug.sleep", &spec("debug.sleep"), &cfg).unwrap();
        assert!(f.validate(&json!({"ms": 5})).is_ok());
        assert!(f.validate(&json!({})).unwrap_err().contains("missing"));
        assert!(f.validate(&json!({"ms": -1})).is_err());
        assert!(f.validate(&json!({"ms": "5"})).is_err());
        assert!(f.validate(&json!({"ms": MAX_SLEEP_MS + 1})).is_err());
        let mut t = f.build(&ctx()).unwrap();
        assert_eq!(t.run(&json!({"ms": 1})).unwrap(), json!({"slept_ms": 1}));
    }

    #[test]
    fn echo_and_fail() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let mut e = echo("e", &spec("debug.echo"), &cfg)
            .unwrap()
            .build(&ctx())
            .unwrap();
        assert_eq!(e.run(&json!({"a": [1, 2]})).unwrap(), json!({"a": [1, 2]}));
        let mut f = fail("f", &spec("debug.fail"), &cfg)
            .unwrap()
            .build(&ctx())
            .unwrap();
        assert_eq!(f.run(&json!({"message": "nope"})).unwrap_err().0, "nope");
    }

    #[test]
    fn crash_worker_fails_the_asked_number_of_builds() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let f = crash_worker("c", &spec("debug.crash_worker"), &cfg).unwrap();
        assert!(f.validate(&json!({"failed_starts": 2})).is_ok());
        assert!(f.validate(&json!({"failed_starts": -1})).is_err());
        assert!(
            f.validate(&json!({"failed_starts": MAX_FAILED_STARTS + 1}))
                .is_err()
        );
        let mut t = f.build(&ctx()).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = t.run(&json!({"failed_starts": 1}));
        }));
        assert!(panicked.is_err());
        assert!(f.build(&ctx()).is_err(), "the rebuild fails");
        assert!(f.build(&ctx()).is_err(), "one start fails");
        assert!(f.build(&ctx()).is_ok(), "then builds succeed again");
    }

    #[test]
    fn process_killers_are_refused_outside_a_child() {
        let cfg = Config::from_toml("[pools.p]\n", std::path::Path::new(".")).unwrap();
        let err = abort("a", &spec("debug.abort"), &cfg).err().unwrap();
        assert!(err.to_string().contains("\"processes\""), "{err}");
        // Even in a processes pool's config, this process is not a child: refused.
        let cfg = Config::from_toml(
            "[pools.p]\nkind = \"processes\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let mut t = abort("a", &spec("debug.abort"), &cfg)
            .unwrap()
            .build(&ctx())
            .unwrap();
        assert!(t.run(&json!({})).unwrap_err().0.contains("child process"));
        let mut s = spin("s", &spec("debug.spin"), &cfg)
            .unwrap()
            .build(&ctx())
            .unwrap();
        let err = s
            .run(&json!({"ms": 1, "ignore_sigterm": true}))
            .unwrap_err()
            .0;
        assert!(err.contains("ignore_sigterm"), "{err}");
        assert_eq!(s.run(&json!({"ms": 1})).unwrap(), json!({"spun_ms": 1}));
    }

    #[test]
    fn alloc_holds_what_it_allocates() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let f = alloc("m", &spec("debug.alloc"), &cfg).unwrap();
        assert!(f.validate(&json!({"mb": MAX_ALLOC_MB + 1})).is_err());
        assert!(f.validate(&json!({})).is_err());
        let mut t = f.build(&ctx()).unwrap();
        assert_eq!(t.run(&json!({"mb": 1})).unwrap(), json!({"held_mb": 1}));
        assert_eq!(t.run(&json!({"mb": 2})).unwrap(), json!({"held_mb": 3}));
    }

    #[test]
    fn debug_kinds_refuse_a_model() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let mut s = spec("debug.echo");
        s.model = Some("models/x".into());
        let err = echo("e", &s, &cfg).err().unwrap();
        assert!(err.to_string().contains("tasks.\"e\".model"));
    }
}
