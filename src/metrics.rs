//! Every metric celeriac exports: names, help texts, buckets and the helpers call sites
//! use. Prefix `celeriac_`; labels stay low-cardinality (pool, task, state, reason,
//! route, method, status), never a task id or a text.
//!
//! Pool gauges (workers by state, queue depth, utilization) are set from the pools'
//! live counters when `/metrics` is scraped, so they can never drift from the truth.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::pool_shared::PoolShared;

/// Workers by pool and state (`starting`, `warming`, `idle`, `busy`, `stopping`; `parked`: slots
/// whose workers failed to start past the restart budget).
pub const WORKERS: &str = "celeriac_workers";
/// Configured (target) pool size.
pub const POOL_SIZE: &str = "celeriac_pool_size";
/// Busy workers / configured size.
pub const POOL_UTILIZATION: &str = "celeriac_pool_utilization";
/// Seconds workers spent running tasks; `rate()` of it / size is utilization.
pub const POOL_BUSY_SECONDS: &str = "celeriac_pool_busy_seconds_total";
/// Tasks waiting for a worker.
pub const QUEUE_DEPTH: &str = "celeriac_queue_depth";
/// Queue capacity (429 beyond it).
pub const QUEUE_CAPACITY: &str = "celeriac_queue_capacity";
/// Autoscale bounds (min and max); a pool that does not autoscale reports its fixed
/// size as both.
pub const AUTOSCALE_MIN: &str = "celeriac_autoscale_min_workers";
/// See [`AUTOSCALE_MIN`].
pub const AUTOSCALE_MAX: &str = "celeriac_autoscale_max_workers";
/// Tasks accepted.
pub const TASKS_SUBMITTED: &str = "celeriac_tasks_submitted_total";
/// Tasks that reached a final state, by state.
pub const TASKS_FINISHED: &str = "celeriac_tasks_finished_total";
/// Time from submit to a worker starting the task.
pub const QUEUE_WAIT: &str = "celeriac_task_queue_wait_seconds";
/// Time a worker spent on the task (its share of a batch).
pub const RUN_TIME: &str = "celeriac_task_run_seconds";
/// Time from submit to the final state.
pub const LATENCY: &str = "celeriac_task_latency_seconds";
/// Requests refused, by reason (the error code).
pub const REJECTIONS: &str = "celeriac_rejections_total";
/// Workers replaced (reason `lost`, `time_limit`), task instances rebuilt after a
/// panic (reason `panic`), or `processes` children recycled (reason `recycled`).
pub const RESTARTS: &str = "celeriac_worker_restarts_total";
/// Pool actors restarted after they failed (a bug contained to its pool: the pool's
/// queued and running tasks were given back to the broker or failed).
pub const POOL_RESTARTS: &str = "celeriac_pool_restarts_total";
/// Jobs per batch handed to a worker.
pub const BATCH_SIZE: &str = "celeriac_batch_size";
/// Padded tokens / real tokens of model batches (1.0 = no padding).
pub const PADDING_RATIO: &str = "celeriac_batch_padding_ratio";
/// Seconds to load a model onto a device.
pub const MODEL_LOAD: &str = "celeriac_model_load_seconds";
/// Real tokens (after truncation, before padding) per model batch.
pub const BATCH_TOKENS: &str = "celeriac_batch_tokens";
/// Seconds a model batch spent on its device (forward pass and copy back), by device.
pub const DEVICE_BATCH_SECONDS: &str = "celeriac_batch_device_seconds";
/// Gauge{device}: bytes in use on a CUDA device (every process's), read after batches
/// at most once a second.
pub const DEVICE_MEMORY: &str = "celeriac_device_memory_used_bytes";
/// Seconds a worker's warm-up took, before it reported ready.
pub const WARMUP: &str = "celeriac_worker_warmup_seconds";
/// HTTP requests by route, method and status.
pub const HTTP_REQUESTS: &str = "celeriac_http_requests_total";
/// HTTP request durations by route and method.
pub const HTTP_DURATION: &str = "celeriac_http_request_duration_seconds";
/// Gauge: 1 while the broker is reachable (with a broker only).
pub const BROKER_UP: &str = "celeriac_broker_up";
/// Gauge{pool,queue}: messages in the pool's Redis queue.
pub const BROKER_QUEUE_DEPTH: &str = "celeriac_broker_queue_depth";
/// Counter: messages taken that another node had held.
pub const BROKER_REDELIVERIES: &str = "celeriac_broker_redeliveries_total";
/// Counter: messages put back after their lease expired.
pub const BROKER_RESTORED: &str = "celeriac_broker_restored_total";
/// Gauge: messages this node holds.
pub const BROKER_HELD: &str = "celeriac_broker_held_messages";

/// Every name above, for tests and the dashboard check.
pub const ALL: &[&str] = &[
    WORKERS,
    POOL_SIZE,
    POOL_UTILIZATION,
    POOL_BUSY_SECONDS,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    AUTOSCALE_MIN,
    AUTOSCALE_MAX,
    TASKS_SUBMITTED,
    TASKS_FINISHED,
    QUEUE_WAIT,
    RUN_TIME,
    LATENCY,
    REJECTIONS,
    RESTARTS,
    POOL_RESTARTS,
    BATCH_SIZE,
    PADDING_RATIO,
    MODEL_LOAD,
    BATCH_TOKENS,
    DEVICE_BATCH_SECONDS,
    DEVICE_MEMORY,
    WARMUP,
    HTTP_REQUESTS,
    HTTP_DURATION,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
const RATIO_BUCKETS: &[f64] = &[1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0];
const TOKEN_BUCKETS: &[f64] = &[
    16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut b = PrometheusBuilder::new();
        for name in [
            QUEUE_WAIT,
            RUN_TIME,
            LATENCY,
            HTTP_DURATION,
            DEVICE_BATCH_SECONDS,
            WARMUP,
        ] {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS)
                .expect("non-empty buckets");
        }
        b = b
            .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
            .expect("non-empty buckets")
            .set_buckets_for_metric(Matcher::Full(PADDING_RATIO.into()), RATIO_BUCKETS)
            .expect("non-empty buckets")
            .set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), TOKEN_BUCKETS)
            .expect("non-empty buckets");
        let handle = b
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe_gauge!(
            WORKERS,
            "Workers by pool and state (starting, warming, idle, busy, stopping; parked: slots whose workers failed to start past the restart budget)."
        );
        describe_gauge!(
            POOL_SIZE,
            "Configured (target) number of workers of the pool."
        );
        describe_gauge!(
            POOL_UTILIZATION,
            "Busy workers divided by the configured size."
        );
        describe_counter!(
            POOL_BUSY_SECONDS,
            "Seconds the pool's workers spent running tasks."
        );
        describe_gauge!(QUEUE_DEPTH, "Tasks queued and not yet handed to a worker.");
        describe_gauge!(QUEUE_CAPACITY, "Queue capacity; submits beyond it get 429.");
        describe_gauge!(
            AUTOSCALE_MIN,
            "Autoscale lower bound (the fixed size when not autoscaling)."
        );
        describe_gauge!(
            AUTOSCALE_MAX,
            "Autoscale upper bound (the fixed size when not autoscaling)."
        );
        describe_counter!(TASKS_SUBMITTED, "Tasks accepted.");
        describe_counter!(
            TASKS_FINISHED,
            "Tasks that reached a final state, by state."
        );
        describe_histogram!(
            QUEUE_WAIT,
            "Seconds from submit to a worker starting the task."
        );
        describe_histogram!(RUN_TIME, "Seconds a worker spent on the task.");
        describe_histogram!(LATENCY, "Seconds from submit to the final state.");
        describe_counter!(REJECTIONS, "Requests refused, by reason (the error code).");
        describe_counter!(
            RESTARTS,
            "Workers replaced (reason lost, time_limit), task instances rebuilt after a panic (reason panic), or child processes recycled (reason recycled)."
        );
        describe_counter!(
            POOL_RESTARTS,
            "Pool actors restarted after they failed; the pool's unfinished tasks went back to the broker or failed."
        );
        describe_histogram!(BATCH_SIZE, "Jobs per batch handed to a worker.");
        describe_histogram!(
            PADDING_RATIO,
            "Padded tokens over real tokens of model batches."
        );
        describe_gauge!(MODEL_LOAD, "Seconds to load the model onto a device.");
        describe_histogram!(
            BATCH_TOKENS,
            "Real tokens (truncated, unpadded) per model batch."
        );
        describe_histogram!(
            DEVICE_BATCH_SECONDS,
            "Seconds a model batch spent on its device (forward and copy back)."
        );
        describe_gauge!(
            DEVICE_MEMORY,
            "Bytes in use on a CUDA device (all processes), read after batches."
        );
        describe_histogram!(
            WARMUP,
            "Seconds a worker's warm-up took before it reported ready."
        );
        describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status.");
        describe_histogram!(HTTP_DURATION, "HTTP request durations by route and method.");
        handle
    })
}

/// Why a worker was replaced or a task instance rebuilt (the `reason` label of
/// [`RESTARTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// A task panicked; its worker rebuilt the task instance and went on.
    Panic,
    /// A worker was lost (crashed) and replaced.
    Lost,
    /// A task ran past the time limit; its worker was abandoned (kind `processes`:
    /// its child killed) and replaced.
    TimeLimit,
    /// A `processes` worker replaced its child between tasks (`max_tasks_per_child`,
    /// `max_memory_per_child_mb`); nothing was lost.
    Recycled,
}

impl Restart {
    /// Every reason, for registering the counters at zero.
    pub const ALL: [Restart; 4] = [
        Restart::Panic,
        Restart::Lost,
        Restart::TimeLimit,
        Restart::Recycled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Panic => "panic",
            Restart::Lost => "lost",
            Restart::TimeLimit => "time_limit",
            Restart::Recycled => "recycled",
        }
    }
}

/// The final states a task can reach (the `state` label of [`TASKS_FINISHED`]).
const FINAL_STATES: [crate::store::TaskState; 3] = [
    crate::store::TaskState::Success,
    crate::store::TaskState::Failure,
    crate::store::TaskState::Revoked,
];

/// A task's series, for [`register`].
pub struct TaskSeries<'a> {
    /// The task's name.
    pub task: &'a str,
    /// Its pool.
    pub pool: &'a str,
    /// Whether it runs a model (padded batches, tokens, device time).
    pub model: bool,
    /// Its pool's devices.
    pub devices: &'a [crate::config::DeviceSpec],
}

/// Registers, at zero, every series whose labels are known from the config, so that
/// a fresh server exports every metric the dashboard uses and `increase()` sees the
/// first event.
pub fn register(pools: &[&str], tasks: &[TaskSeries]) {
    install();
    for pool in pools {
        let pool = pool.to_string();
        for r in Restart::ALL {
            counter!(RESTARTS, "pool" => pool.clone(), "reason" => r.as_str()).absolute(0);
        }
        counter!(POOL_RESTARTS, "pool" => pool.clone()).absolute(0);
        let _ = histogram!(BATCH_SIZE, "pool" => pool.clone());
    }
    for t in tasks {
        let (task, pool) = (t.task.to_string(), t.pool.to_string());
        counter!(TASKS_SUBMITTED, "pool" => pool.clone(), "task" => task.clone()).absolute(0);
        for state in FINAL_STATES {
            counter!(TASKS_FINISHED, "pool" => pool.clone(), "task" => task.clone(), "state" => state.as_str())
                .absolute(0);
        }
        for name in [QUEUE_WAIT, RUN_TIME, LATENCY] {
            let _ = histogram!(name, "pool" => pool.clone(), "task" => task.clone());
        }
        if t.model {
            for name in [PADDING_RATIO, BATCH_TOKENS, WARMUP] {
                let _ = histogram!(name, "pool" => pool.clone(), "task" => task.clone());
            }
            for device in t.devices {
                let _ = histogram!(DEVICE_BATCH_SECONDS, "pool" => pool.clone(), "task" => task.clone(), "device" => device.to_string());
            }
        }
    }
    for code in crate::error::ApiError::CODES {
        counter!(REJECTIONS, "reason" => *code).absolute(0);
    }
}

/// Registers, at zero, the HTTP series of every route (its method and path template),
/// with the status each answers when all goes well (202 for a submit, else 200).
pub fn register_http(routes: impl IntoIterator<Item = (&'static str, &'static str)>) {
    install();
    for (method, route) in routes {
        let status = if method == "POST" { "202" } else { "200" };
        counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
            .absolute(0);
        let _ = histogram!(HTTP_DURATION, "route" => route, "method" => method);
    }
}

/// Escapes a label value for the Prometheus text format.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Sets the pool gauges from each pool's published status and renders the text format.
pub fn render(pools: &[std::sync::Arc<PoolShared>]) -> String {
    let handle = install();
    for p in pools {
        let pool = p.name.clone();
        let s = p.status();
        for (state, n) in [
            ("starting", s.starting),
            ("warming", s.warming),
            ("idle", s.idle),
            ("busy", s.busy),
            ("stopping", s.stopping),
            ("parked", s.parked),
        ] {
            gauge!(WORKERS, "pool" => pool.clone(), "state" => state).set(n as f64);
        }
        gauge!(POOL_SIZE, "pool" => pool.clone()).set(s.size as f64);
        gauge!(POOL_UTILIZATION, "pool" => pool.clone()).set(if s.size == 0 {
            0.0
        } else {
            s.busy as f64 / s.size as f64
        });
        gauge!(QUEUE_DEPTH, "pool" => pool.clone()).set(s.queued as f64);
        gauge!(QUEUE_CAPACITY, "pool" => pool.clone()).set(p.config.queue_capacity as f64);
        // A pool that does not autoscale has its fixed size as both bounds.
        let (min, max) = s.autoscale.unwrap_or((s.size, s.size));
        gauge!(AUTOSCALE_MIN, "pool" => pool.clone()).set(min as f64);
        gauge!(AUTOSCALE_MAX, "pool" => pool.clone()).set(max as f64);
    }
    handle.run_upkeep();
    let mut text = handle.render();
    // A float counter, which the `metrics` facade (integer counters) cannot express.
    text.push_str(&format!(
        "# HELP {POOL_BUSY_SECONDS} Seconds the pool's workers spent running tasks.\n# TYPE {POOL_BUSY_SECONDS} counter\n"
    ));
    for p in pools {
        let secs = p.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        text.push_str(&format!(
            "{POOL_BUSY_SECONDS}{{pool=\"{}\"}} {secs}\n",
            escape_label(&p.name)
        ));
    }
    text
}

/// What the broker's series show, read from the broker client when `/metrics` is
/// scraped.
pub struct BrokerSeries<'a> {
    /// Whether Redis is reachable.
    pub up: bool,
    /// Each pool's name, its queue's name and the queue's depth as last read.
    pub queues: Vec<(&'a str, &'a str, u64)>,
    /// Messages this node took that another node had held.
    pub redeliveries: u64,
    /// Messages this node put back after their lease expired.
    pub restored: u64,
    /// Messages this node holds.
    pub held: usize,
}

/// The broker's metrics, in Prometheus text: whether Redis is reachable, each pool's
/// queue depth as read from Redis, and messages redelivered and restored.
pub fn render_broker(b: &BrokerSeries) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# HELP {BROKER_UP} 1 while the node reaches its Redis broker, else 0.\n# TYPE {BROKER_UP} gauge\n{BROKER_UP} {}",
        u8::from(b.up)
    );
    let _ = writeln!(
        t,
        "# HELP {BROKER_QUEUE_DEPTH} Messages waiting in the pool's Redis queue (all nodes), read every second.\n# TYPE {BROKER_QUEUE_DEPTH} gauge"
    );
    for (pool, queue, depth) in &b.queues {
        let _ = writeln!(
            t,
            "{BROKER_QUEUE_DEPTH}{{pool=\"{}\",queue=\"{}\"}} {depth}",
            escape_label(pool),
            escape_label(queue),
        );
    }
    let _ = writeln!(
        t,
        "# HELP {BROKER_REDELIVERIES} Messages this node took that another node had held (it died or stopped renewing its lease).\n# TYPE {BROKER_REDELIVERIES} counter\n{BROKER_REDELIVERIES} {}",
        b.redeliveries
    );
    let _ = writeln!(
        t,
        "# HELP {BROKER_RESTORED} Messages this node put back in their queue after their lease expired.\n# TYPE {BROKER_RESTORED} counter\n{BROKER_RESTORED} {}",
        b.restored
    );
    let _ = writeln!(
        t,
        "# HELP {BROKER_HELD} Messages this node holds (taken, not yet acknowledged).\n# TYPE {BROKER_HELD} gauge\n{BROKER_HELD} {}",
        b.held
    );
    t
}

/// Tasks were accepted.
pub fn submitted(pool: &str, task: &str, n: usize) {
    counter!(TASKS_SUBMITTED, "pool" => pool.to_string(), "task" => task.to_string())
        .increment(n as u64);
}

/// A task reached a final state.
pub fn finished(pool: &str, f: &crate::store::Finished) {
    counter!(TASKS_FINISHED, "pool" => pool.to_string(), "task" => f.task.to_string(), "state" => f.state.as_str())
        .increment(1);
    histogram!(LATENCY, "pool" => pool.to_string(), "task" => f.task.to_string())
        .record(f.latency.as_secs_f64());
}

/// A worker started a task after it waited `waited` in the queue.
pub fn started(pool: &str, task: &str, waited: Duration) {
    histogram!(QUEUE_WAIT, "pool" => pool.to_string(), "task" => task.to_string())
        .record(waited.as_secs_f64());
}

/// A worker ran a batch of `jobs` jobs for `elapsed`.
pub fn ran_batch(pool: &PoolShared, task: &str, jobs: usize, elapsed: Duration) {
    pool.busy_nanos
        .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    let pool = &pool.name;
    histogram!(BATCH_SIZE, "pool" => pool.to_string()).record(jobs as f64);
    let each = elapsed.as_secs_f64() / jobs.max(1) as f64;
    let h = histogram!(RUN_TIME, "pool" => pool.to_string(), "task" => task.to_string());
    for _ in 0..jobs {
        h.record(each);
    }
}

/// A model batch was padded to `padded` tokens for `real` tokens.
pub fn padding(pool: &str, task: &str, padded: usize, real: usize) {
    histogram!(PADDING_RATIO, "pool" => pool.to_string(), "task" => task.to_string())
        .record(padded as f64 / real.max(1) as f64);
}

/// A model batch of `tokens` real tokens ran on `device` for `elapsed`.
pub fn model_batch(
    pool: &str,
    task: &str,
    device: crate::config::DeviceSpec,
    tokens: usize,
    elapsed: Duration,
) {
    histogram!(BATCH_TOKENS, "pool" => pool.to_string(), "task" => task.to_string())
        .record(tokens as f64);
    histogram!(DEVICE_BATCH_SECONDS, "pool" => pool.to_string(), "task" => task.to_string(), "device" => device.to_string())
        .record(elapsed.as_secs_f64());
}

/// `bytes` are in use on `device`.
pub fn device_memory(device: crate::config::DeviceSpec, bytes: u64) {
    gauge!(DEVICE_MEMORY, "device" => device.to_string()).set(bytes as f64);
}

/// A worker of `pool` warmed `task` up in `seconds`.
pub fn warmed_up(pool: &str, task: &str, seconds: f64) {
    histogram!(WARMUP, "pool" => pool.to_string(), "task" => task.to_string()).record(seconds);
}

/// A request was refused with this error code.
pub fn rejected(code: &'static str) {
    counter!(REJECTIONS, "reason" => code).increment(1);
}

/// `n` workers were replaced, or task instances rebuilt, for `reason`.
pub fn restarted(pool: &str, reason: Restart, n: u32) {
    counter!(RESTARTS, "pool" => pool.to_string(), "reason" => reason.as_str())
        .increment(u64::from(n));
}

/// The actor of `pool` failed and was restarted.
pub fn pool_restarted(pool: &str) {
    counter!(POOL_RESTARTS, "pool" => pool.to_string()).increment(1);
}

/// A model was loaded in `seconds`.
pub fn model_loaded(task: &str, seconds: f64) {
    gauge!(MODEL_LOAD, "task" => task.to_string()).set(seconds);
}

/// An HTTP request finished.
pub fn http(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let method = match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "OTHER",
    };
    counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route, "method" => method).record(elapsed.as_secs_f64());
}

/// One metric update made in a `processes` child (by task code: a batch's padding
/// ratio, a model's load time), captured there and applied here by [`apply_remote`]. A
/// child has no exporter of its own: this is how its figures reach `/metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemoteUpdate {
    /// The metric's name (one of this module's).
    pub name: String,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// What was done to it.
    pub op: RemoteOp,
}

/// What a [`RemoteUpdate`] does.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RemoteOp {
    /// Counter: add.
    Increment(u64),
    /// Counter: set.
    Absolute(u64),
    /// Gauge: add (negative to subtract).
    Add(f64),
    /// Gauge: set.
    Set(f64),
    /// Histogram: record.
    Record(f64),
}

/// Updates captured since the last [`take_captured`] (in a child, where
/// [`install_capture`] made them go here).
static CAPTURED: parking_lot::Mutex<Vec<RemoteUpdate>> = parking_lot::Mutex::new(Vec::new());

/// In a `processes` child: every metric update goes to a buffer that
/// [`take_captured`] empties, to be sent to the server with the child's answers.
pub fn install_capture() {
    let _ = metrics::set_global_recorder(Capture);
}

/// The updates captured since the last call.
pub fn take_captured() -> Vec<RemoteUpdate> {
    std::mem::take(&mut *CAPTURED.lock())
}

/// Applies updates a child captured, as if they had been made here.
pub fn apply_remote(updates: Vec<RemoteUpdate>) {
    for u in updates {
        let labels: Vec<metrics::Label> = u
            .labels
            .into_iter()
            .map(|(k, v)| metrics::Label::new(k, v))
            .collect();
        match u.op {
            RemoteOp::Increment(v) => counter!(u.name, labels).increment(v),
            RemoteOp::Absolute(v) => counter!(u.name, labels).absolute(v),
            RemoteOp::Add(v) => gauge!(u.name, labels).increment(v),
            RemoteOp::Set(v) => gauge!(u.name, labels).set(v),
            RemoteOp::Record(v) => histogram!(u.name, labels).record(v),
        }
    }
}

/// The recorder of a child: records nothing itself, captures every update.
struct Capture;

/// One captured metric: its name and labels.
struct Captured {
    name: String,
    labels: Vec<(String, String)>,
}

impl Captured {
    fn new(key: &metrics::Key) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Captured {
            name: key.name().to_string(),
            labels: key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect(),
        })
    }

    fn push(&self, op: RemoteOp) {
        CAPTURED.lock().push(RemoteUpdate {
            name: self.name.clone(),
            labels: self.labels.clone(),
            op,
        });
    }
}

impl metrics::CounterFn for Captured {
    fn increment(&self, value: u64) {
        self.push(RemoteOp::Increment(value));
    }
    fn absolute(&self, value: u64) {
        self.push(RemoteOp::Absolute(value));
    }
}

impl metrics::GaugeFn for Captured {
    fn increment(&self, value: f64) {
        self.push(RemoteOp::Add(value));
    }
    fn decrement(&self, value: f64) {
        self.push(RemoteOp::Add(-value));
    }
    fn set(&self, value: f64) {
        self.push(RemoteOp::Set(value));
    }
}

impl metrics::HistogramFn for Captured {
    fn record(&self, value: f64) {
        self.push(RemoteOp::Record(value));
    }
}

impl metrics::Recorder for Capture {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Captured::new(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Captured::new(key))
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(Captured::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed() {
        for n in ALL {
            assert!(n.starts_with("celeriac_"), "{n}");
        }
    }

    #[test]
    fn a_childs_updates_are_captured_for_the_server() {
        metrics::with_local_recorder(&Capture, || {
            padding("p", "t", 30, 20);
            model_loaded("t", 0.25);
        });
        let got: Vec<RemoteUpdate> = take_captured()
            .into_iter()
            .filter(|u| u.labels.iter().any(|(_, v)| v == "t"))
            .collect();
        assert_eq!(
            got,
            [
                RemoteUpdate {
                    name: PADDING_RATIO.into(),
                    labels: vec![("pool".into(), "p".into()), ("task".into(), "t".into())],
                    op: RemoteOp::Record(1.5),
                },
                RemoteUpdate {
                    name: MODEL_LOAD.into(),
                    labels: vec![("task".into(), "t".into())],
                    op: RemoteOp::Set(0.25),
                },
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
