//! Built-in tasks for demos, tests and load tests: `debug.echo`, `debug.sleep`,
//! `debug.fail` and `debug.panic`. Enabled by registering them in config (see
//! `config/debug.toml`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{LoadError, Task, TaskError, TaskFactory, WorkerContext, no_model};
use crate::config::{Config, TaskSpec};

/// Longest `debug.sleep` accepted: one hour.
pub const MAX_SLEEP_MS: u64 = 3_600_000;

/// A factory whose instances are a plain function of the input.
struct FnFactory {
    validate: fn(&Value) -> Result<(), String>,
    run: fn(&Value) -> Result<Value, TaskError>,
    /// Whether it takes batches (its batch entry point maps `run` over them).
    batching: bool,
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
}

fn factory(
    name: &str,
    spec: &TaskSpec,
    validate: fn(&Value) -> Result<(), String>,
    run: fn(&Value) -> Result<Value, TaskError>,
) -> Result<Arc<dyn TaskFactory>, LoadError> {
    no_model(name, spec)?;
    Ok(Arc::new(FnFactory {
        validate,
        run,
        batching: false,
    }))
}

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
    factory(name, spec, any_input, |input| {
        let message = input
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("debug.fail: failing as asked");
        Err(TaskError(message.to_string()))
    })
}

/// `debug.panic`: panics inside the worker, which the supervisor then rebuilds.
pub fn panic(name: &str, spec: &TaskSpec, _: &Config) -> Result<Arc<dyn TaskFactory>, LoadError> {
    factory(name, spec, any_input, |_| {
        panic!("debug.panic: panicking inside the worker as asked")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> WorkerContext {
        WorkerContext {
            device: crate::config::DeviceSpec::Cpu,
            intra_op_threads: 1,
            name: "test".into(),
            nice: 0,
        }
    }

    fn spec(kind: &str) -> TaskSpec {
        TaskSpec {
            pool: "p".into(),
            kind: kind.into(),
            model: None,
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
    fn debug_kinds_refuse_a_model() {
        let cfg = Config::from_toml("", std::path::Path::new(".")).unwrap();
        let mut s = spec("debug.echo");
        s.model = Some("models/x".into());
        let err = echo("e", &s, &cfg).err().unwrap();
        assert!(err.to_string().contains("tasks.\"e\".model"));
    }
}
