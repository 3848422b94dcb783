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

use crate::pool::PoolShared;

/// Workers by pool and state (`starting`, `idle`, `busy`, `stopping`).
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
/// Autoscale bounds (min and max), when autoscaling.
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
/// Workers rebuilt after a loss.
pub const RESTARTS: &str = "celeriac_worker_restarts_total";
/// Jobs per batch handed to a worker.
pub const BATCH_SIZE: &str = "celeriac_batch_size";
/// Padded tokens / real tokens of model batches (1.0 = no padding).
pub const PADDING_RATIO: &str = "celeriac_batch_padding_ratio";
/// Seconds to load a model onto a device.
pub const MODEL_LOAD: &str = "celeriac_model_load_seconds";
/// HTTP requests by route, method and status.
pub const HTTP_REQUESTS: &str = "celeriac_http_requests_total";
/// HTTP request durations by route and method.
pub const HTTP_DURATION: &str = "celeriac_http_request_duration_seconds";

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
    BATCH_SIZE,
    PADDING_RATIO,
    MODEL_LOAD,
    HTTP_REQUESTS,
    HTTP_DURATION,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
const RATIO_BUCKETS: &[f64] = &[1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let mut b = PrometheusBuilder::new();
        for name in [QUEUE_WAIT, RUN_TIME, LATENCY, HTTP_DURATION] {
            b = b
                .set_buckets_for_metric(Matcher::Full(name.into()), LATENCY_BUCKETS)
                .expect("non-empty buckets");
        }
        b = b
            .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
            .expect("non-empty buckets")
            .set_buckets_for_metric(Matcher::Full(PADDING_RATIO.into()), RATIO_BUCKETS)
            .expect("non-empty buckets");
        let handle = b
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe_gauge!(
            WORKERS,
            "Workers by pool and state (starting, idle, busy, stopping)."
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
            "Autoscale lower bound (absent when not autoscaling)."
        );
        describe_gauge!(
            AUTOSCALE_MAX,
            "Autoscale upper bound (absent when not autoscaling)."
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
        describe_counter!(RESTARTS, "Workers rebuilt after a loss.");
        describe_histogram!(BATCH_SIZE, "Jobs per batch handed to a worker.");
        describe_histogram!(
            PADDING_RATIO,
            "Padded tokens over real tokens of model batches."
        );
        describe_gauge!(MODEL_LOAD, "Seconds to load the model onto a device.");
        describe_counter!(HTTP_REQUESTS, "HTTP requests by route, method and status.");
        describe_histogram!(HTTP_DURATION, "HTTP request durations by route and method.");
        handle
    })
}

/// Sets the pool gauges from the live counters and renders the text format.
pub fn render(pools: &[std::sync::Arc<PoolShared>]) -> String {
    let handle = install();
    for p in pools {
        let pool = p.name.clone();
        let live = p.live.load(Ordering::Acquire);
        let busy = p.busy.load(Ordering::Acquire);
        let stopping = p.stopping.load(Ordering::Acquire);
        let starting = p.starting.load(Ordering::Acquire);
        let idle = live.saturating_sub(busy + stopping);
        for (state, n) in [
            ("starting", starting),
            ("idle", idle),
            ("busy", busy),
            ("stopping", stopping),
        ] {
            gauge!(WORKERS, "pool" => pool.clone(), "state" => state).set(n as f64);
        }
        let size = p.target.load(Ordering::Acquire);
        gauge!(POOL_SIZE, "pool" => pool.clone()).set(size as f64);
        gauge!(POOL_UTILIZATION, "pool" => pool.clone()).set(if size == 0 {
            0.0
        } else {
            busy as f64 / size as f64
        });
        gauge!(QUEUE_DEPTH, "pool" => pool.clone()).set(p.queued.load(Ordering::Acquire) as f64);
        gauge!(QUEUE_CAPACITY, "pool" => pool.clone()).set(p.config.queue_capacity as f64);
        if let Some((min, max)) = p.autoscale() {
            gauge!(AUTOSCALE_MIN, "pool" => pool.clone()).set(min as f64);
            gauge!(AUTOSCALE_MAX, "pool" => pool.clone()).set(max as f64);
        }
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
            p.name
        ));
    }
    text
}

/// A task was accepted.
pub fn submitted(task: &str, n: usize) {
    counter!(TASKS_SUBMITTED, "task" => task.to_string()).increment(n as u64);
}

/// A task reached a final state.
pub fn finished(f: &crate::store::Finished) {
    counter!(TASKS_FINISHED, "task" => f.task.to_string(), "state" => f.state.as_str())
        .increment(1);
    histogram!(LATENCY, "task" => f.task.to_string()).record(f.latency.as_secs_f64());
}

/// A worker started a task after it waited `waited` in the queue.
pub fn started(task: &str, waited: Duration) {
    histogram!(QUEUE_WAIT, "task" => task.to_string()).record(waited.as_secs_f64());
}

/// A worker ran a batch of `jobs` jobs for `elapsed`.
pub fn ran_batch(pool: &PoolShared, task: &str, jobs: usize, elapsed: Duration) {
    pool.busy_nanos
        .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    let pool = &pool.name;
    histogram!(BATCH_SIZE, "pool" => pool.to_string()).record(jobs as f64);
    let each = elapsed.as_secs_f64() / jobs.max(1) as f64;
    let h = histogram!(RUN_TIME, "task" => task.to_string());
    for _ in 0..jobs {
        h.record(each);
    }
}

/// A model batch was padded to `padded` tokens for `real` tokens.
pub fn padding(task: &str, padded: usize, real: usize) {
    histogram!(PADDING_RATIO, "task" => task.to_string())
        .record(padded as f64 / real.max(1) as f64);
}

/// A request was refused with this error code.
pub fn rejected(code: &'static str) {
    counter!(REJECTIONS, "reason" => code).increment(1);
}

/// A worker was rebuilt.
pub fn restarted(pool: &str) {
    counter!(RESTARTS, "pool" => pool.to_string()).increment(1);
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

/// The route template of a path, for the `route` label (never the raw path).
pub fn route_of(method: &str, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("POST", ["v1", "tasks", _]) => "/v1/tasks/:task",
        ("POST", ["v1", "tasks", _, "batch"]) => "/v1/tasks/:task/batch",
        (_, ["v1", "tasks", _]) => "/v1/tasks/:id",
        (_, ["v1", "admin", "pools"]) => "/v1/admin/pools",
        (_, ["v1", "admin", "pools", _]) => "/v1/admin/pools/:pool",
        (_, ["metrics"]) => "/metrics",
        (_, ["health", "live"]) => "/health/live",
        (_, ["health", "ready"]) => "/health/ready",
        (_, ["openapi.json"]) => "/openapi.json",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_routes_are_templates() {
        for n in ALL {
            assert!(n.starts_with("celeriac_"), "{n}");
        }
        assert_eq!(
            route_of("POST", "/v1/tasks/spam.predict"),
            "/v1/tasks/:task"
        );
        assert_eq!(route_of("GET", "/v1/tasks/0f0e"), "/v1/tasks/:id");
        assert_eq!(
            route_of("POST", "/v1/tasks/x/batch"),
            "/v1/tasks/:task/batch"
        );
        assert_eq!(
            route_of("GET", "/v1/admin/pools/default"),
            "/v1/admin/pools/:pool"
        );
        assert_eq!(route_of("GET", "/some/random/path"), "other");
    }
}
