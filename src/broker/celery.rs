//! Celery's wire format, as pure functions: task messages (protocol v2 on kombu's Redis
//! transport) and result-backend metas (`celery-task-meta-<id>`). See
//! `../shared/research/celery-redis-protocol.md` for where each field comes from.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::store::{TaskId, TaskState, TaskView};

/// The key of a task's result.
pub fn meta_key(id: &TaskId) -> String {
    format!("celery-task-meta-{id}")
}

/// kombu's Redis priority steps: the key of step 0 is the queue's name, the others
/// append `\x06\x16` and the step. Consumers read them in this order (0 first).
pub fn priority_keys(queue: &str) -> [String; 4] {
    [
        queue.to_string(),
        format!("{queue}\x06\x163"),
        format!("{queue}\x06\x166"),
        format!("{queue}\x06\x169"),
    ]
}

/// The member of `_kombu.binding.celery` that routes `queue`'s name to it on the default
/// exchange (`routing_key SEP pattern SEP queue`).
pub fn binding_member(queue: &str) -> String {
    format!("{queue}\x06\x16\x06\x16{queue}")
}

/// A celeriac task input as Celery arguments: a JSON object is the keyword arguments
/// (`send_task(name, kwargs={...})`), anything else the one positional argument.
pub fn to_arguments(input: &Value) -> (Value, Value) {
    match input {
        Value::Object(_) => (json!([]), input.clone()),
        other => (json!([other]), json!({})),
    }
}

/// A call's arguments: the positional ones and the keyword ones.
pub type Arguments = (Vec<Value>, serde_json::Map<String, Value>);

/// The body's `args` and `kwargs`, checked for their types; a task's
/// [`crate::task::Params::bind`] makes its input of them.
fn arguments(args: &Value, kwargs: &Value) -> Result<Arguments, String> {
    let args = match args {
        Value::Array(a) => a.clone(),
        Value::Null => Vec::new(),
        other => return Err(format!("`args` must be a list, got {other}")),
    };
    let kwargs = match kwargs {
        Value::Object(m) => m.clone(),
        Value::Null => serde_json::Map::new(),
        other => return Err(format!("`kwargs` must be a mapping, got {other}")),
    };
    Ok((args, kwargs))
}

/// What a task message says, once parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `headers.id`.
    pub id: TaskId,
    /// `headers.task`.
    pub task: String,
    /// The body's args and kwargs; an error says why it has none.
    pub arguments: Result<Arguments, String>,
    /// Why celeriac will not run it although it could read it: `Revoked` for a task
    /// past its `expires` (as Celery does), `Failure` for what celeriac does not
    /// implement (a future `eta`, canvas links), with the reason.
    pub refusal: Option<(TaskState, String)>,
}

/// A Celery timestamp (`2026-11-30T04:00:00.123456+00:00`, or with `Z`) as a time; other
/// offsets are not read (Celery sends UTC unless `enable_utc` is off).
fn timestamp(v: &Value) -> Option<std::time::SystemTime> {
    let s = v.as_str()?;
    let s = s
        .strip_suffix("+00:00")
        .map_or_else(|| s.to_string(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(&s).ok()
}

/// See [`Incoming::refusal`].
fn refusal(env: &Value, body: Option<&Value>) -> Option<(TaskState, String)> {
    let headers = &env["headers"];
    let now = std::time::SystemTime::now();
    if let Some(t) = timestamp(&headers["expires"])
        && t < now
    {
        return Some((
            TaskState::Revoked,
            format!(
                "expired: its `expires` ({}) had passed when a worker took it",
                headers["expires"].as_str().unwrap_or_default()
            ),
        ));
    }
    if let Some(t) = timestamp(&headers["eta"])
        && t > now
    {
        return Some((
            TaskState::Failure,
            "celeriac does not schedule tasks: send it without eta/countdown".into(),
        ));
    }
    let embed = body.and_then(|b| b.get(2));
    for link in ["callbacks", "errbacks", "chain", "chord"] {
        if embed.is_some_and(|e| !e[link].is_null() && e[link] != json!([])) {
            return Some((
                TaskState::Failure,
                format!(
                    "celeriac does not run Celery canvas links (`{link}`): call its tasks on their own"
                ),
            ));
        }
    }
    None
}

/// Parses a task message (protocol v2). `Err` when it is not one at all (no id).
pub fn parse_message(raw: &str) -> Result<Incoming, String> {
    let env: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let headers = &env["headers"];
    let id = headers["id"]
        .as_str()
        .ok_or("no headers.id: not a Celery protocol v2 message")?;
    let id: TaskId = id
        .parse()
        .map_err(|_| format!("headers.id `{id}` is not a UUID"))?;
    let task = headers["task"]
        .as_str()
        .ok_or("no headers.task: not a Celery protocol v2 message")?
        .to_string();
    let decoded = body(&env);
    let arguments = decoded.clone().and_then(|body| {
        let parts = body
            .as_array()
            .filter(|p| p.len() >= 2)
            .ok_or("the body is not [args, kwargs, embed] (protocol v2)")?;
        arguments(&parts[0], &parts[1])
    });
    let refusal = refusal(&env, decoded.as_ref().ok());
    Ok(Incoming {
        id,
        task,
        arguments,
        refusal,
    })
}

/// The decoded body of a message: base64 when `properties.body_encoding` says so.
pub fn body(env: &Value) -> Result<Value, String> {
    if env["content-type"]
        .as_str()
        .is_some_and(|t| t != "application/json")
    {
        return Err(format!(
            "content-type `{}`: celeriac reads JSON messages only (task_serializer='json')",
            env["content-type"].as_str().unwrap_or_default()
        ));
    }
    let text = env["body"].as_str().ok_or("the message has no body")?;
    let bytes = if env["properties"]["body_encoding"] == "base64" {
        B64.decode(text)
            .map_err(|e| format!("the body is not base64: {e}"))?
    } else {
        text.as_bytes().to_vec()
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the body is not JSON: {e}"))
}

/// A kombu message envelope around `body` (JSON, base64 encoded as kombu does), for
/// remote-control broadcasts, replies and events (`delivery_mode` 1, not persistent).
pub fn envelope(body: &Value, headers: Value, exchange: &str, routing_key: &str) -> String {
    json!({
        "body": B64.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}

/// A task message (protocol v2, kombu's Redis envelope) for `task` with `input`, to be
/// pushed on `queue`. `time_limit` is the hard limit in seconds (`headers.timelimit` is
/// `[hard, soft]`; None leaves the worker's own); `origin` names the sender.
pub fn task_message(
    id: &TaskId,
    task: &str,
    input: &Value,
    queue: &str,
    time_limit: Option<f64>,
    origin: &str,
) -> String {
    let (args, kwargs) = to_arguments(input);
    let argsrepr = args.to_string();
    let kwargsrepr = kwargs.to_string();
    let body =
        json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    let id = id.to_string();
    json!({
        "body": B64.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": id,
            "shadow": null,
            "eta": null,
            "expires": null,
            "group": null,
            "group_index": null,
            "retries": 0,
            "timelimit": [time_limit, null],
            "root_id": id,
            "parent_id": null,
            "argsrepr": argsrepr,
            "kwargsrepr": kwargsrepr,
            "origin": origin,
            "ignore_result": false,
            "replaced_task_nesting": 0,
            "stamped_headers": null,
            "stamps": {},
        },
        "properties": {
            "correlation_id": id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}

/// The prefix of a failure that Celery reports as Python's `TypeError` (a call whose
/// arguments do not fit the task, [`crate::task::Params::bind`]).
pub const TYPE_ERROR: &str = "TypeError: ";

/// The prefix of a failure that Celery reports as its `NotRegistered` (no pool of the
/// node runs that task name).
pub const NOT_REGISTERED: &str = "NotRegistered: ";

/// An error as Celery's result backend stores it, so Python's `get()` raises it:
/// `{"exc_type", "exc_message": [...], "exc_module"}`.
pub fn exception(state: TaskState, message: &str) -> Value {
    let (exc_type, module) = match state {
        TaskState::Revoked => ("TaskRevokedError", "celery.exceptions"),
        _ if message.starts_with("worker lost") => ("WorkerLostError", "billiard.exceptions"),
        _ if message.starts_with("time limit exceeded") => {
            ("TimeLimitExceeded", "billiard.exceptions")
        }
        _ if message.starts_with(TYPE_ERROR) => {
            let m = &message[TYPE_ERROR.len()..];
            return json!({"exc_type": "TypeError", "exc_message": [m], "exc_module": "builtins"});
        }
        _ if message.starts_with(NOT_REGISTERED) => {
            // Celery's NotRegistered takes the task name: Python shows "Task of kind
            // 'noop' never registered, please make sure it's imported."
            let m = &message[NOT_REGISTERED.len()..];
            let name = m.split('`').nth(1).unwrap_or(m);
            return json!({"exc_type": "NotRegistered", "exc_message": [name], "exc_module": "celery.exceptions"});
        }
        _ => ("TaskError", "celeriac.errors"),
    };
    json!({"exc_type": exc_type, "exc_message": [message], "exc_module": module})
}

/// The result-backend meta of a task as `view` shows it: Celery's fields (`status`,
/// `result`, `traceback`, `children`, `date_done`, `task_id`), its extended ones (`name`,
/// `retries`, `queue`, `worker`), and celeriac's timings (`date_submitted`,
/// `date_started`), which Python's client ignores.
pub fn meta(view: &TaskView, queue: &str, worker: &str) -> String {
    let result = match view.state {
        TaskState::Success => view.result.clone().unwrap_or(Value::Null),
        TaskState::Failure | TaskState::Revoked | TaskState::Retry => {
            exception(view.state, view.error.as_deref().unwrap_or("unknown error"))
        }
        TaskState::Started => json!({"pid": std::process::id(), "hostname": worker}),
        TaskState::Pending => Value::Null,
    };
    json!({
        "status": view.state.as_str(),
        "result": result,
        "traceback": null,
        "children": [],
        "date_done": view.finished_at,
        "task_id": view.task_id.to_string(),
        "name": &*view.task,
        "retries": view.retries,
        "queue": queue,
        "worker": worker,
        "date_submitted": view.submitted_at,
        "date_started": view.started_at,
    })
    .to_string()
}

/// A task's view from its result-backend meta, written by celeriac or by Python Celery.
/// `None` when the meta is not a JSON object with a known status.
pub fn view_from_meta(id: TaskId, raw: &[u8]) -> Option<TaskView> {
    let meta: Value = serde_json::from_slice(raw).ok()?;
    let state = match meta["status"].as_str()? {
        "PENDING" => TaskState::Pending,
        "RECEIVED" | "STARTED" => TaskState::Started,
        "SUCCESS" => TaskState::Success,
        "FAILURE" => TaskState::Failure,
        "RETRY" => TaskState::Retry,
        "REVOKED" => TaskState::Revoked,
        // A custom state set by a Python task (update_state): it is running.
        _ => TaskState::Started,
    };
    let text = |k: &str| meta[k].as_str().map(str::to_string);
    let error = match state {
        TaskState::Failure | TaskState::Revoked | TaskState::Retry => {
            Some(error_text(&meta["result"]))
        }
        _ => None,
    };
    let finished_at = if state.is_final() {
        text("date_done")
    } else {
        None
    };
    Some(TaskView {
        task_id: id,
        task: meta["name"].as_str().unwrap_or_default().into(),
        state,
        result: (state == TaskState::Success).then(|| meta["result"].clone()),
        error,
        submitted_at: text("date_submitted")
            .or_else(|| text("date_started"))
            .or_else(|| text("date_done"))
            .unwrap_or_else(|| {
                humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
            }),
        started_at: text("date_started"),
        finished_at,
        retries: meta["retries"].as_u64().unwrap_or(0) as u32,
    })
}

/// The message of a stored exception: celeriac's own errors as they were, others as
/// `Type: message`.
fn error_text(result: &Value) -> String {
    let message = match &result["exc_message"] {
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match result["exc_type"].as_str() {
        Some("TaskError" | "TaskRevokedError" | "WorkerLostError" | "TimeLimitExceeded") | None => {
            if message.is_empty() {
                result
                    .as_str()
                    .map_or_else(|| result.to_string(), str::to_string)
            } else {
                message
            }
        }
        Some(t) => format!("{t}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Params;

    /// The input a task that takes any input makes of a message's arguments.
    fn input(m: &Incoming) -> Result<Value, String> {
        m.arguments
            .clone()
            .and_then(|(args, kwargs)| Params::Any.bind("t", &args, &kwargs))
    }

    #[test]
    fn a_message_round_trips_its_input() {
        let id = uuid::Uuid::new_v4();
        for input in [
            json!({"text": "hi"}),
            json!("plain"),
            json!([1, 2]),
            json!({}),
        ] {
            let raw = task_message(
                &id,
                "spam.predict",
                &input,
                "celery",
                Some(60.0),
                "celeriac@h",
            );
            let m = parse_message(&raw).unwrap();
            assert_eq!((m.id, m.task.as_str()), (id, "spam.predict"));
            assert_eq!(super::tests::input(&m), Ok(input));
            let env: Value = serde_json::from_str(&raw).unwrap();
            assert!(
                env["properties"]["delivery_tag"].is_string(),
                "a Python worker drops a message without one"
            );
            assert_eq!(env["properties"]["delivery_info"]["routing_key"], "celery");
            assert_eq!(
                env["headers"]["timelimit"],
                json!([60.0, null]),
                "[hard, soft]"
            );
        }
    }

    #[test]
    fn a_python_message_is_read() {
        // As celery 5.7's send_task('spam.predict', kwargs={'text': 'win'}) writes it.
        let body = B64.encode(r#"[[], {"text": "win"}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#);
        let raw = format!(
            r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "application/json", "headers": {{"lang": "py", "task": "spam.predict", "id": "6f1c3a52-6f0e-4b0b-9f55-0d1f7f1d2b7e", "timelimit": [null, null]}}, "properties": {{"body_encoding": "base64", "delivery_tag": "x"}}}}"#
        );
        let m = parse_message(&raw).unwrap();
        assert_eq!(input(&m), Ok(json!({"text": "win"})));
        let both = B64.encode(r#"[[1], {"a": 2}, {}]"#);
        let raw = raw.replace(&body, &both);
        assert!(
            input(&parse_message(&raw).unwrap())
                .unwrap_err()
                .contains("not both")
        );
        assert!(parse_message("{}").unwrap_err().contains("headers.id"));
        assert_eq!(
            parse_message(&raw.replace(&both, &body)).unwrap().refusal,
            None
        );
        // Past `expires`: revoked, as Celery does; a future eta and canvas links: refused.
        let expired = raw.replace(
            r#""timelimit""#,
            r#""expires": "2020-01-01T00:00:00.000000+00:00", "timelimit""#,
        );
        let r = parse_message(&expired.replace(&both, &body))
            .unwrap()
            .refusal
            .unwrap();
        assert_eq!(r.0, TaskState::Revoked, "{r:?}");
        let eta = raw.replace(
            r#""timelimit""#,
            r#""eta": "2999-01-01T00:00:00+00:00", "timelimit""#,
        );
        assert!(
            parse_message(&eta.replace(&both, &body))
                .unwrap()
                .refusal
                .unwrap()
                .1
                .contains("eta")
        );
        let chained = B64.encode(r#"[[], {"text": "x"}, {"callbacks": null, "errbacks": null, "chain": [{"task": "next"}], "chord": null}]"#);
        assert!(
            parse_message(&raw.replace(&both, &chained))
                .unwrap()
                .refusal
                .unwrap()
                .1
                .contains("chain")
        );
        assert!(parse_message("nope").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn metas_carry_what_python_needs_and_read_back() {
        let id = uuid::Uuid::new_v4();
        let mut view = TaskView {
            task_id: id,
            task: "spam.predict".into(),
            state: TaskState::Failure,
            result: None,
            error: Some("model exploded".into()),
            submitted_at: "2026-11-30T04:00:00.000000Z".into(),
            started_at: Some("2026-11-30T04:00:00.100000Z".into()),
            finished_at: Some("2026-11-30T04:00:00.200000Z".into()),
            retries: 0,
        };
        let raw = meta(&view, "celery", "celeriac@h");
        let m: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            m["task_id"],
            id.to_string(),
            "the client routes PUBLISHes on it"
        );
        assert_eq!(
            m["result"],
            json!({"exc_type": "TaskError", "exc_message": ["model exploded"], "exc_module": "celeriac.errors"})
        );
        assert_eq!(
            view_from_meta(id, raw.as_bytes()).unwrap().error.as_deref(),
            Some("model exploded")
        );
        view.state = TaskState::Success;
        view.error = None;
        view.result = Some(json!({"label": "spam"}));
        let back = view_from_meta(id, meta(&view, "celery", "w").as_bytes()).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&view).unwrap()
        );
        // A Python worker's failure.
        let py = br#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["bad", 1], "exc_module": "builtins"}, "task_id": "x", "date_done": "2026-11-30T04:00:00+00:00"}"#;
        let v = view_from_meta(id, py).unwrap();
        assert_eq!(v.error.as_deref(), Some("ValueError: bad, 1"));
        assert_eq!(v.finished_at.as_deref(), Some("2026-11-30T04:00:00+00:00"));
        assert!(view_from_meta(id, b"[]").is_none());
    }
}
