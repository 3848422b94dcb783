//! The configuration tree: one TOML file, validated at start-up.
//!
//! Every field has a named `default_x()` function so the file, the environment and the
//! CLI share one default. Every timing is a field, so tests can shrink it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod broker_url;
pub mod kernels;
pub mod limit;

pub use limit::Limit;
use limit::{DAY_SECONDS, MAX_SECONDS};

/// A configuration error; the message names the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file asked for.
        path: PathBuf,
        /// The parser's message, with the line and the key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// The dotted path of the setting, e.g. `pools.default.concurrency`.
        setting: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP server.
    #[serde(default)]
    pub server: ServerConfig,
    /// The result store.
    #[serde(default)]
    pub results: ResultsConfig,
    /// Restart policy of the supervisor.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// Worker pools by name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
    /// Registered tasks by name, each routed to one pool.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskSpec>,
    /// Redis as broker and result backend (several nodes, Celery clients); without a
    /// URL the queue and results stay in this process.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// Which task answers each route of the client APIs (OpenAI, TEI).
    #[serde(default)]
    pub api: ApiConfig,
    /// Directory that relative model paths are resolved against. Set by
    /// [`Config::from_file`] to the directory holding the file's `config/` folder;
    /// not read from the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[server]`: the HTTP listener and request limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `--listen` and `CELERIAC_LISTEN` override it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (413 above it).
    #[serde(default = "default_body_limit_bytes")]
    pub body_limit_bytes: u64,
    /// Cap on `?wait=SECONDS` for submit-and-wait and long polls.
    #[serde(default = "default_max_wait_seconds")]
    pub max_wait_seconds: f64,
    /// On SIGTERM/SIGINT, how long queued and running tasks may take to finish.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: f64,
    /// Bearer token of the admin API; `CELERIAC_ADMIN_TOKEN` overrides it.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// API keys: when any is set, the task routes, the OpenAI routes and the TEI routes
    /// answer only requests with `Authorization: Bearer KEY` for one of them (health,
    /// metrics and `/openapi.json` stay open; the admin API keeps its own token).
    /// `CELERIAC_API_KEYS` (comma-separated) overrides it. Never logged, never sent to
    /// a `processes` child.
    #[serde(default, skip_serializing)]
    pub api_keys: ApiKeys,
}

/// The API keys of `server.api_keys`: a list whose `Debug` says how many, never which.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ApiKeys(pub Vec<String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys([{} redacted])", self.0.len())
    }
}

impl ApiKeys {
    /// Whether keys are required at all.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }
}

/// `[api]`: the task that answers each route of the client APIs. Unset, a route is
/// answered by the only task of its kind (none, or several: the route answers 404
/// `not_served`, naming the setting).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// An `embeddings` task: TEI's `POST /embed`, and OpenAI's `POST /v1/embeddings`
    /// when the request's `model` names no task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<String>,
    /// A `reranker` task: TEI's `POST /rerank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<String>,
    /// A `text_classifier` task: TEI's `POST /predict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict: Option<String>,
    /// The route TEI's `POST /` answers as (`embed`, `rerank` or `predict`). Unset: the
    /// one of the three that has a task here; with several, `POST /` answers 404
    /// `not_served`, naming this setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<ApiRoute>,
    /// What TEI's routes do with an input over the model's maximum input length when
    /// the request has no `truncate` (TEI's `--auto-truncate`): true truncates it, as
    /// `/v1/tasks` does; false refuses it (413).
    #[serde(default = "default_auto_truncate")]
    pub auto_truncate: bool,
}

fn default_auto_truncate() -> bool {
    true
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            embed: None,
            rerank: None,
            predict: None,
            root: None,
            auto_truncate: default_auto_truncate(),
        }
    }
}

/// A route of the client APIs that one task answers ([`Config::api_task`]); in
/// `api.root`, its name without the slash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRoute {
    /// `POST /embed`, `POST /v1/embeddings`: kind `embeddings`.
    Embed,
    /// `POST /rerank`: kind `reranker`.
    Rerank,
    /// `POST /predict`: kind `text_classifier`.
    Predict,
}

impl ApiRoute {
    /// The `[api]` setting that names its task.
    pub fn setting(self) -> &'static str {
        match self {
            ApiRoute::Embed => "api.embed",
            ApiRoute::Rerank => "api.rerank",
            ApiRoute::Predict => "api.predict",
        }
    }

    /// Its path.
    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::Embed => "/embed",
            ApiRoute::Rerank => "/rerank",
            ApiRoute::Predict => "/predict",
        }
    }

    /// The task kind that answers it.
    pub fn kind(self) -> &'static str {
        match self {
            ApiRoute::Embed => "embeddings",
            ApiRoute::Rerank => "reranker",
            ApiRoute::Predict => "text_classifier",
        }
    }

    fn configured(self, api: &ApiConfig) -> Option<&str> {
        match self {
            ApiRoute::Embed => api.embed.as_deref(),
            ApiRoute::Rerank => api.rerank.as_deref(),
            ApiRoute::Predict => api.predict.as_deref(),
        }
    }
}

/// `[results]`: how long finished task records are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsConfig {
    /// A finished task's record is deleted this long after it finished (then 404).
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: f64,
    /// How often expired records are swept.
    #[serde(default = "default_sweep_interval_seconds")]
    pub sweep_interval_seconds: f64,
}

/// `[broker]`: Redis as broker and result backend, in Celery's wire format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `redis://[USER][:PASSWORD@]HOST:PORT/DB`, `rediss://...` with Celery's `ssl_*`
    /// options, or a Unix socket `redis+socket:///PATH` ([`broker_url`]);
    /// `CELERIAC_BROKER_URL` overrides it. Unset: the embedded in-memory queue and store.
    #[serde(default)]
    pub url: Option<String>,
    /// A message taken by a node that stops renewing its lease (the node died) goes back
    /// to its queue this long after the last renewal. Live nodes renew what they hold
    /// every quarter of this, so long tasks are never handed out twice. Python Celery
    /// workers on the same Redis restore with their own value: use one value everywhere.
    #[serde(default = "default_visibility_timeout_seconds")]
    pub visibility_timeout_seconds: f64,
    /// How often a node looks for expired leases to restore.
    #[serde(default = "default_restore_interval_seconds")]
    pub restore_interval_seconds: f64,
    /// The node's name in results and Celery's tooling; default `celeriac@HOSTNAME`.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Send Celery's task events (`task-received` ... `task-failed`), as Celery's `-E`
    /// / `worker_send_task_events`. Flower and `celery control enable_events` turn
    /// them on at run time too.
    #[serde(default)]
    pub task_events: bool,
}

/// `[supervisor]`: starting workers again.
///
/// A task that panics fails alone and its worker goes on with a fresh task instance; a
/// worker that is lost (time limit, crash) is replaced at once. Back-off and the budget
/// apply only to workers that fail to *start* (a model that will not load, a device that
/// is gone), so nothing a task does can take a pool down.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// First delay before a slot whose worker failed to start tries again; doubles on
    /// each consecutive failure of that slot.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Ceiling of that delay.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Most failed starts per pool within `restart_window_seconds`; past it the slot is
    /// parked (not tried again until the pool is resized) and readiness reports it.
    #[serde(default = "default_restart_budget")]
    pub restart_budget: u32,
    /// The window the restart budget counts over.
    #[serde(default = "default_restart_window_seconds")]
    pub restart_window_seconds: f64,
    /// How often each pool actor checks running tasks against the time limit (and
    /// publishes the age of its oldest queued task).
    #[serde(default = "default_time_limit_check_ms")]
    pub time_limit_check_ms: u64,
    /// Kind `processes`: a child killed for its time limit gets SIGTERM, then SIGKILL
    /// after this long; a child being recycled or stopped gets this long to exit after
    /// its input closes, then SIGKILL.
    #[serde(default = "default_child_kill_grace_ms")]
    pub child_kill_grace_ms: u64,
}

/// How a pool's workers run tasks (Celery's `--pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Each worker runs tasks on its own OS thread.
    Threads,
    /// One worker runs tasks inline; `concurrency` is ignored, as in Celery.
    Solo,
    /// Each worker runs tasks in a child process (the same binary): crash isolation,
    /// time limits that kill, recycling by task count or memory (Celery's prefork).
    Processes,
}

impl PoolKind {
    /// The name used in config and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Threads => "threads",
            PoolKind::Solo => "solo",
            PoolKind::Processes => "processes",
        }
    }
}

/// `[pools.NAME]`: one named worker pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `threads`, `solo` or `processes`.
    #[serde(default = "default_pool_kind")]
    pub kind: PoolKind,
    /// Number of workers (ignored by `solo`, which has one).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Queued (not yet started) tasks beyond which submits get 429 at once.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// A task running longer fails with `time limit exceeded`, and its worker is replaced.
    #[serde(default = "default_time_limit_seconds")]
    pub time_limit_seconds: f64,
    /// How many times a task is re-queued (`RETRY`) after its worker was lost (a
    /// crash, not a panic: a task that panics fails at once). 0, as in Celery, fails it
    /// with "worker lost"; more is Celery's `task_reject_on_worker_lost` with acks-late,
    /// bounded.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Devices the workers are spread over, round-robin: `cpu`, `cuda:0`, ...
    #[serde(default = "default_devices")]
    pub devices: Vec<DeviceSpec>,
    /// Threads each worker's model code may use; 0 fits the pool onto the machine's
    /// cores (cores / workers, at least 1).
    #[serde(default)]
    pub intra_op_threads: usize,
    /// Ceiling of the pool's size: the admin API and the autoscaler never go above it.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Kind `processes`: a child is replaced by a fresh one, between tasks, after it
    /// ran this many tasks (Celery's `worker_max_tasks_per_child`). 0: never.
    #[serde(default)]
    pub max_tasks_per_child: u64,
    /// Kind `processes`: a child whose resident memory passed this many MiB after a
    /// batch is replaced by a fresh one, between tasks (Celery's
    /// `worker_max_memory_per_child`). 0: never.
    #[serde(default)]
    pub max_memory_per_child_mb: u64,
    /// Optional autoscaling between bounds.
    #[serde(default)]
    pub autoscale: Option<AutoscaleConfig>,
    /// Niceness of the worker threads (Linux), relative to the HTTP threads: positive
    /// keeps requests and results flowing while the model saturates the cores.
    #[serde(default = "default_nice")]
    pub nice: i32,
    /// Most jobs handed to a worker at once, for tasks with a batch entry point
    /// (others always get one job at a time). 1 turns batching off.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: usize,
    /// How long a queue shorter than a batch may wait to fill one, in milliseconds;
    /// only while another worker of the pool is busy (an idle pool never waits).
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: f64,
    /// Most tokens (a model task's inputs, after truncation) handed to a worker at
    /// once; a batch closes before the job that would pass it (a job longer than the
    /// limit goes alone). 0: no limit, only `max_batch_size`. Size it for the device: a
    /// GPU takes thousands of tokens per batch, a CPU core a few hundred.
    #[serde(default)]
    pub max_batch_tokens: usize,
    /// Whether each worker runs its tasks' warm-up (a model forward at every length
    /// bucket) before it reports ready, so readiness means fast. Default true.
    #[serde(default = "default_true")]
    pub warm_up: bool,
    /// With a broker: the Redis queue (Celery's queue name) this pool consumes and its
    /// tasks are sent to. Default `celery` (Celery's default queue) for the pool named
    /// `default`, else the pool's name.
    #[serde(default)]
    pub queue: Option<String>,
}

/// `[pools.NAME.autoscale]`: grow when work queues, shrink after an idle cool-down.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleConfig {
    /// Fewest workers.
    pub min: usize,
    /// Most workers (at most `max_concurrency`).
    pub max: usize,
    /// Grow when at least this many tasks wait in the queue; grows by one worker per
    /// this many waiting tasks, up to `max`.
    #[serde(default = "default_scale_up_queue_depth")]
    pub scale_up_queue_depth: usize,
    /// ...or when the oldest queued task has waited this long.
    #[serde(default = "default_scale_up_wait_ms")]
    pub scale_up_wait_ms: u64,
    /// After a grow, no other grow for this long (lets new workers take the queue).
    #[serde(default = "default_scale_up_cooldown_seconds")]
    pub scale_up_cooldown_seconds: f64,
    /// Shrink by one worker after the pool had an idle worker and an empty queue for
    /// this long without a break (and at most once per this long).
    #[serde(default = "default_scale_down_idle_seconds")]
    pub scale_down_idle_seconds: f64,
    /// How often the autoscaler looks.
    #[serde(default = "default_autoscale_check_ms")]
    pub check_interval_ms: u64,
}

impl AutoscaleConfig {
    /// `min` and `max`, before the pool's `max_concurrency` caps them.
    pub const BOUNDS: Limit = Limit::int(1, PoolConfig::MAX_WORKERS, "workers");
    /// The tuning fields and their ranges, shared by the config file, the admin API
    /// and its OpenAPI document.
    pub const TUNING: [(&'static str, Limit); 5] = [
        (
            "scale_up_queue_depth",
            Limit::int(1, 10_000_000, "queued tasks"),
        ),
        ("scale_up_wait_ms", Limit::int(0, 86_400_000, "ms")),
        ("scale_up_cooldown_seconds", Limit::seconds(DAY_SECONDS)),
        ("scale_down_idle_seconds", Limit::seconds(DAY_SECONDS)),
        ("check_interval_ms", Limit::int(1, 3_600_000, "ms")),
    ];

    /// The range of the tuning field `field`.
    pub fn tuning_limit(field: &str) -> Option<Limit> {
        Self::TUNING
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, l)| *l)
    }

    /// The tuning fields' values, in [`AutoscaleConfig::TUNING`]'s order.
    fn tuning(&self) -> [f64; 5] {
        [
            self.scale_up_queue_depth as f64,
            self.scale_up_wait_ms as f64,
            self.scale_up_cooldown_seconds,
            self.scale_down_idle_seconds,
            self.check_interval_ms as f64,
        ]
    }

    /// Checks the bounds against `ceiling` (the pool's `max_concurrency`) and the
    /// tuning against [`AutoscaleConfig::TUNING`]; an error names the field (under
    /// `prefix`) and what is allowed.
    pub fn check(&self, prefix: &str, ceiling: usize) -> Result<(), ConfigError> {
        if self.min == 0 || self.min > self.max || self.max > ceiling {
            return Err(invalid(
                prefix,
                format!(
                    "need 1 <= min <= max <= max_concurrency ({ceiling}), got min {} max {}",
                    self.min, self.max
                ),
            ));
        }
        for ((field, limit), value) in Self::TUNING.iter().zip(self.tuning()) {
            within(format!("{prefix}.{field}"), *limit, value)?;
        }
        Ok(())
    }

    /// Bounds with the default tuning: what the admin API sets on a pool whose file
    /// has no `[pools.NAME.autoscale]` table.
    pub fn with_bounds(min: usize, max: usize) -> Self {
        AutoscaleConfig {
            min,
            max,
            scale_up_queue_depth: default_scale_up_queue_depth(),
            scale_up_wait_ms: default_scale_up_wait_ms(),
            scale_up_cooldown_seconds: default_scale_up_cooldown_seconds(),
            scale_down_idle_seconds: default_scale_down_idle_seconds(),
            check_interval_ms: default_autoscale_check_ms(),
        }
    }
}

/// A device a worker runs its model on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` cargo feature).
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        s.strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("unknown device `{s}`; use `cpu` or `cuda:N`"))
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire, a string as [`DeviceSpec`]'s `FromStr` reads it: `cpu` or `cuda:N`.
impl utoipa::PartialSchema for DeviceSpec {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(cpu|cuda:[0-9]+)$"))
            .into()
    }
}

impl utoipa::ToSchema for DeviceSpec {}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PoolConfig {
    /// The most workers a pool may have (`max_concurrency`).
    pub const MAX_WORKERS: u64 = 4096;
    /// `concurrency` and `max_concurrency`.
    pub const WORKERS: Limit = Limit::int(1, Self::MAX_WORKERS, "workers");
    /// `queue_capacity`.
    pub const QUEUE_CAPACITY: Limit = Limit::int(1, 10_000_000, "tasks");
    /// `time_limit_seconds`.
    pub const TIME_LIMIT_SECONDS: Limit = Limit::seconds(MAX_SECONDS);
    /// `max_retries`.
    pub const MAX_RETRIES: Limit = Limit::int(0, 1000, "retries");
    /// `intra_op_threads`.
    pub const INTRA_OP_THREADS: Limit = Limit::int(0, 1024, "threads");
    /// `max_tasks_per_child`.
    pub const MAX_TASKS_PER_CHILD: Limit = Limit::int(0, 1_000_000_000_000, "tasks");
    /// `max_memory_per_child_mb`.
    pub const MAX_MEMORY_PER_CHILD_MB: Limit = Limit::int(0, 1 << 24, "MiB");
    /// `nice`.
    pub const NICE: Limit = Limit::int(0, 19, "");
    /// `max_batch_size`.
    pub const MAX_BATCH_SIZE: Limit = Limit::int(1, 4096, "tasks");
    /// `max_batch_delay_ms`.
    pub const MAX_BATCH_DELAY_MS: Limit = Limit::number(0.0, 60_000.0, "ms");
    /// `max_batch_tokens`.
    pub const MAX_BATCH_TOKENS: Limit = Limit::int(0, 1 << 24, "tokens");

    /// Checks the pool named `name`; errors name the setting.
    fn check(&self, name: &str) -> Result<(), ConfigError> {
        let key = |field: &str| format!("pools.{name}.{field}");
        if self.kind != PoolKind::Solo {
            within(key("concurrency"), Self::WORKERS, self.concurrency as f64)?;
        }
        for (field, limit, value) in [
            (
                "max_concurrency",
                Self::WORKERS,
                self.max_concurrency as f64,
            ),
            (
                "queue_capacity",
                Self::QUEUE_CAPACITY,
                self.queue_capacity as f64,
            ),
            (
                "time_limit_seconds",
                Self::TIME_LIMIT_SECONDS,
                self.time_limit_seconds,
            ),
            ("max_retries", Self::MAX_RETRIES, self.max_retries as f64),
            (
                "intra_op_threads",
                Self::INTRA_OP_THREADS,
                self.intra_op_threads as f64,
            ),
            (
                "max_tasks_per_child",
                Self::MAX_TASKS_PER_CHILD,
                self.max_tasks_per_child as f64,
            ),
            (
                "max_memory_per_child_mb",
                Self::MAX_MEMORY_PER_CHILD_MB,
                self.max_memory_per_child_mb as f64,
            ),
            ("nice", Self::NICE, self.nice as f64),
            (
                "max_batch_size",
                Self::MAX_BATCH_SIZE,
                self.max_batch_size as f64,
            ),
            (
                "max_batch_delay_ms",
                Self::MAX_BATCH_DELAY_MS,
                self.max_batch_delay_ms,
            ),
            (
                "max_batch_tokens",
                Self::MAX_BATCH_TOKENS,
                self.max_batch_tokens as f64,
            ),
        ] {
            within(key(field), limit, value)?;
        }
        if self.max_concurrency < self.size() {
            return Err(invalid(
                key("max_concurrency"),
                format!("is below concurrency ({})", self.size()),
            ));
        }
        if self.kind != PoolKind::Processes {
            for (field, set) in [
                ("max_tasks_per_child", self.max_tasks_per_child > 0),
                ("max_memory_per_child_mb", self.max_memory_per_child_mb > 0),
            ] {
                if set {
                    return Err(invalid(
                        key(field),
                        format!(
                            "recycles child processes: only for kind = \"processes\" (this pool is `{}`); remove it or set 0",
                            self.kind.as_str()
                        ),
                    ));
                }
            }
        }
        if let Some(a) = &self.autoscale {
            if self.kind == PoolKind::Solo {
                return Err(invalid(
                    key("autoscale"),
                    "a solo pool has one worker: remove autoscale",
                ));
            }
            a.check(&key("autoscale"), self.max_concurrency)?;
        }
        self.check_devices(&key("devices"))
    }

    fn check_devices(&self, key: &str) -> Result<(), ConfigError> {
        if self.devices.is_empty() {
            return Err(invalid(key, "list at least one device, e.g. [\"cpu\"]"));
        }
        if !cfg!(feature = "cuda")
            && let Some(d) = self
                .devices
                .iter()
                .find(|d| matches!(d, DeviceSpec::Cuda(_)))
        {
            return Err(invalid(
                key,
                format!("`{d}` needs a build with CUDA: cargo build --release --features cuda"),
            ));
        }
        Ok(())
    }

    /// The broker queue of the pool named `pool` (see [`PoolConfig::queue`]).
    pub fn queue_name(&self, pool: &str) -> String {
        match &self.queue {
            Some(q) => q.clone(),
            None if pool == "default" => "celery".into(),
            None => pool.into(),
        }
    }

    /// The largest size the pool may be given (1 for `solo`).
    pub fn ceiling(&self) -> usize {
        match self.kind {
            PoolKind::Threads | PoolKind::Processes => self.max_concurrency,
            PoolKind::Solo => 1,
        }
    }

    /// Workers this pool starts with: `concurrency`, or 1 for `solo`.
    pub fn size(&self) -> usize {
        match self.kind {
            PoolKind::Threads | PoolKind::Processes => self.concurrency,
            PoolKind::Solo => 1,
        }
    }

    /// The device of the worker in `slot`: the devices in turn.
    pub fn device_for(&self, slot: usize) -> DeviceSpec {
        self.devices[slot % self.devices.len()]
    }

    /// Intra-op threads per worker: the setting, or the machine's cores shared by
    /// the workers on the CPU.
    pub fn threads_per_worker(&self) -> usize {
        if self.intra_op_threads > 0 {
            return self.intra_op_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_workers = (0..self.size())
            .filter(|s| self.device_for(*s) == DeviceSpec::Cpu)
            .count()
            .max(1);
        (cores / cpu_workers).max(1)
    }
}

/// `[tasks."NAME"]`: a registered task, its kind and the pool it is routed to; or,
/// with a broker, only a `queue` that other workers (Python Celery) serve.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The pool that runs it (Celery's `task_routes`); empty for a task with `queue`.
    #[serde(default)]
    pub pool: String,
    /// Which task implementation, from the registry (e.g. `debug.echo`); empty for a
    /// task with `queue`.
    #[serde(default)]
    pub kind: String,
    /// A task no pool of celeriac runs: the HTTP API sends it to this broker queue,
    /// where Python Celery workers registered for the name run it (a mixed fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Model directory, for model-backed kinds; relative paths are resolved against the
    /// project directory.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// For model-backed kinds on the CPU: the number format of the encoder's dense
    /// layers, `auto` (the default), `f32`, `bf16` or `int8` (README "Precision").
    #[serde(default)]
    pub precision: kernels::Precision,
    /// For model-backed kinds: which encoder implementation runs it, `packed` (CPU
    /// only) or `candle` (CPU or CUDA); unset, the device's default (packed on the CPU,
    /// candle on CUDA). README "Precision".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<kernels::Kernels>,
    /// Kind `embeddings`: whether embeddings are L2-normalised; unset, as the
    /// checkpoint's `modules.json` says (a `Normalize` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Kind `embeddings`: keep the first this many values of each embedding (Matryoshka
    /// models); unset, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Checkpoint kinds: truncate inputs at this many tokens; unset, the checkpoint's
    /// own maximum (`sentence_bert_config.json`, `tokenizer_config.json`, the position
    /// table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_body_limit_bytes() -> u64 {
    1024 * 1024
}
fn default_max_wait_seconds() -> f64 {
    60.0
}
fn default_drain_timeout_seconds() -> f64 {
    30.0
}
fn default_ttl_seconds() -> f64 {
    3600.0
}
fn default_sweep_interval_seconds() -> f64 {
    5.0
}
fn default_backoff_initial_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
fn default_restart_budget() -> u32 {
    100
}
fn default_restart_window_seconds() -> f64 {
    60.0
}
fn default_time_limit_check_ms() -> u64 {
    50
}
fn default_child_kill_grace_ms() -> u64 {
    1000
}
fn default_pool_kind() -> PoolKind {
    PoolKind::Threads
}
fn default_concurrency() -> usize {
    2
}
fn default_queue_capacity() -> usize {
    1000
}
fn default_time_limit_seconds() -> f64 {
    60.0
}
fn default_max_retries() -> u32 {
    0
}
fn default_nice() -> i32 {
    15
}
fn default_max_batch_size() -> usize {
    32
}
fn default_true() -> bool {
    true
}
fn default_max_batch_delay_ms() -> f64 {
    2.0
}
fn default_max_concurrency() -> usize {
    16
}
fn default_scale_up_queue_depth() -> usize {
    4
}
fn default_scale_up_wait_ms() -> u64 {
    500
}
fn default_scale_up_cooldown_seconds() -> f64 {
    1.0
}
fn default_scale_down_idle_seconds() -> f64 {
    30.0
}
fn default_autoscale_check_ms() -> u64 {
    200
}
fn default_visibility_timeout_seconds() -> f64 {
    3600.0
}
fn default_restore_interval_seconds() -> f64 {
    10.0
}
fn default_devices() -> Vec<DeviceSpec> {
    vec![DeviceSpec::Cpu]
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit_bytes: default_body_limit_bytes(),
            max_wait_seconds: default_max_wait_seconds(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            admin_token: None,
            api_keys: ApiKeys::default(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            visibility_timeout_seconds: default_visibility_timeout_seconds(),
            restore_interval_seconds: default_restore_interval_seconds(),
            node_name: None,
            task_events: false,
        }
    }
}

impl BrokerConfig {
    /// The node's name: `node_name`, else `celeriac@HOSTNAME`.
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("celeriac@{host}")
        })
    }
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: default_ttl_seconds(),
            sweep_interval_seconds: default_sweep_interval_seconds(),
        }
    }
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            restart_budget: default_restart_budget(),
            restart_window_seconds: default_restart_window_seconds(),
            time_limit_check_ms: default_time_limit_check_ms(),
            child_kill_grace_ms: default_child_kill_grace_ms(),
        }
    }
}

/// Seconds as a [`Duration`], through the one checked conversion ([`limit::duration`]):
/// `validate` has already checked the value, and it saturates besides.
pub fn secs(value: f64) -> Duration {
    limit::duration(value)
}

impl Config {
    /// The tasks routed to a broker queue that no pool of this node consumes (name,
    /// queue), for mixed fleets.
    pub fn remote_tasks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tasks
            .iter()
            .filter_map(|(n, t)| t.queue.as_deref().map(|q| (n.as_str(), q)))
    }

    /// Parses a TOML document; `base_dir` resolves relative model paths.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        config.base_dir = base_dir.to_path_buf();
        Ok(config)
    }

    /// Reads and parses a file. Relative model paths resolve against the parent of the
    /// file's directory when that directory is named `config` (the repository layout),
    /// else against the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let dir = if dir.file_name().is_some_and(|n| n == "config") {
            dir.parent().unwrap_or(Path::new("."))
        } else {
            dir
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        Self::from_toml(&text, dir).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Applies `CELERIAC_*` environment overrides (secrets and deployment settings).
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_from(|key| std::env::var(key).ok())
    }

    /// [`Config::apply_env`] with the environment given as a function, for tests.
    pub fn apply_env_from(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(token) = get("CELERIAC_ADMIN_TOKEN") {
            self.server.admin_token = Some(token);
        }
        if let Some(keys) = get("CELERIAC_API_KEYS") {
            self.server.api_keys = ApiKeys(
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from)
                    .collect(),
            );
        }
        if let Some(url) = get("CELERIAC_BROKER_URL") {
            self.broker.url = Some(url).filter(|u| !u.is_empty());
        }
        if let Some(listen) = get("CELERIAC_LISTEN") {
            self.server.listen = listen.parse().map_err(|e| {
                invalid(
                    "CELERIAC_LISTEN",
                    format!("`{listen}` is not an address: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Resolves a model path from a task spec against [`Config::base_dir`].
    pub fn model_dir(&self, model: &Path) -> PathBuf {
        if model.is_absolute() {
            model.to_path_buf()
        } else {
            self.base_dir.join(model)
        }
    }

    /// Checks ranges and cross-references; errors name the setting. Each section checks
    /// its own fields against the [`Limit`]s declared beside them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.check()?;
        self.results.check()?;
        self.supervisor.check()?;
        if self.pools.is_empty() {
            return Err(invalid("pools", "define at least one pool"));
        }
        for (name, pool) in &self.pools {
            pool.check(name)?;
        }
        if self.tasks.is_empty() {
            return Err(invalid("tasks", "register at least one task"));
        }
        self.broker.check()?;
        self.check_queues()?;
        for (name, task) in &self.tasks {
            task.check(name, self)?;
        }
        for route in [ApiRoute::Embed, ApiRoute::Rerank, ApiRoute::Predict] {
            if let Some(task) = route.configured(&self.api) {
                match self.tasks.get(task) {
                    Some(spec) if spec.kind == route.kind() => {}
                    Some(spec) => {
                        return Err(invalid(
                            route.setting(),
                            format!(
                                "task `{task}` is of kind `{}`; this route needs a task of kind `{}`",
                                spec.kind,
                                route.kind()
                            ),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            route.setting(),
                            format!("no task named `{task}` in [tasks]"),
                        ));
                    }
                }
            }
        }
        if let Some(route) = self.api.root {
            self.api_task(route).map_err(|why| {
                invalid(
                    "api.root",
                    format!("`POST /` answers as `{}`, but {why}", route.path()),
                )
            })?;
        }
        Ok(())
    }

    /// The task that answers `route`: the one `[api]` names, else the only task of the
    /// route's kind. The error says why none does, and which setting to change.
    pub fn api_task(&self, route: ApiRoute) -> Result<&str, String> {
        if let Some(task) = route.configured(&self.api) {
            return Ok(task);
        }
        let of_kind: Vec<&str> = self
            .tasks
            .iter()
            .filter(|(_, spec)| spec.kind == route.kind())
            .map(|(name, _)| name.as_str())
            .collect();
        match of_kind.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no task of kind `{}` serves this route",
                route.kind()
            )),
            several => Err(format!(
                "several tasks of kind `{}` ({}): name the one for this route in `{}`",
                route.kind(),
                several.join(", "),
                route.setting()
            )),
        }
    }

    /// Each pool consumes a broker queue of its own, with a plain name.
    fn check_queues(&self) -> Result<(), ConfigError> {
        let mut queues: BTreeMap<String, &str> = BTreeMap::new();
        for (name, pool) in &self.pools {
            let q = pool.queue_name(name);
            if !plain_queue(&q) {
                return Err(invalid(
                    format!("pools.{name}.queue"),
                    "must be a plain, non-empty name",
                ));
            }
            if let Some(other) = queues.insert(q.clone(), name) {
                return Err(invalid(
                    format!("pools.{name}.queue"),
                    format!(
                        "pool `{other}` consumes queue `{q}` too: give each pool its own queue"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A queue name kombu can route: non-empty, without its separator characters.
fn plain_queue(q: &str) -> bool {
    !q.is_empty() && !q.contains(['\x06', '\x16'])
}

/// Checks `value` of the setting `key` against `limit`.
fn within(key: impl Into<String>, limit: Limit, value: f64) -> Result<(), ConfigError> {
    limit.check(value).map_err(|m| invalid(key, m))
}

impl ServerConfig {
    /// `body_limit_bytes`.
    pub const BODY_LIMIT_BYTES: Limit = Limit::int(1, 1 << 30, "bytes");
    /// `max_wait_seconds`.
    pub const MAX_WAIT_SECONDS: Limit = Limit::seconds(DAY_SECONDS);
    /// `drain_timeout_seconds`.
    pub const DRAIN_TIMEOUT_SECONDS: Limit = Limit::seconds(DAY_SECONDS);

    fn check(&self) -> Result<(), ConfigError> {
        within(
            "server.max_wait_seconds",
            Self::MAX_WAIT_SECONDS,
            self.max_wait_seconds,
        )?;
        within(
            "server.drain_timeout_seconds",
            Self::DRAIN_TIMEOUT_SECONDS,
            self.drain_timeout_seconds,
        )?;
        within(
            "server.body_limit_bytes",
            Self::BODY_LIMIT_BYTES,
            self.body_limit_bytes as f64,
        )?;
        if self.api_keys.0.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid(
                "server.api_keys",
                "holds an empty key; remove it (an empty list turns keys off)",
            ));
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(invalid(
                "server.admin_token",
                "is empty; remove it to disable the admin API, or set a token",
            ));
        }
        Ok(())
    }
}

impl ResultsConfig {
    /// `ttl_seconds`.
    pub const TTL_SECONDS: Limit = Limit::seconds(MAX_SECONDS);
    /// `sweep_interval_seconds`.
    pub const SWEEP_INTERVAL_SECONDS: Limit = Limit::seconds(DAY_SECONDS);

    fn check(&self) -> Result<(), ConfigError> {
        within("results.ttl_seconds", Self::TTL_SECONDS, self.ttl_seconds)?;
        within(
            "results.sweep_interval_seconds",
            Self::SWEEP_INTERVAL_SECONDS,
            self.sweep_interval_seconds,
        )
    }
}

impl SupervisorConfig {
    /// `backoff_initial_ms` and `backoff_max_ms`.
    pub const BACKOFF_MS: Limit = Limit::int(1, 3_600_000, "ms");
    /// `restart_budget`.
    pub const RESTART_BUDGET: Limit = Limit::int(0, 1_000_000, "failed starts");
    /// `restart_window_seconds`.
    pub const RESTART_WINDOW_SECONDS: Limit = Limit::seconds(DAY_SECONDS);
    /// `time_limit_check_ms`.
    pub const TIME_LIMIT_CHECK_MS: Limit = Limit::int(1, 60_000, "ms");
    /// `child_kill_grace_ms`.
    pub const CHILD_KILL_GRACE_MS: Limit = Limit::int(0, 600_000, "ms");

    fn check(&self) -> Result<(), ConfigError> {
        let key = |field: &str| format!("supervisor.{field}");
        for (field, limit, value) in [
            (
                "backoff_initial_ms",
                Self::BACKOFF_MS,
                self.backoff_initial_ms as f64,
            ),
            (
                "backoff_max_ms",
                Self::BACKOFF_MS,
                self.backoff_max_ms as f64,
            ),
            (
                "restart_budget",
                Self::RESTART_BUDGET,
                self.restart_budget as f64,
            ),
            (
                "restart_window_seconds",
                Self::RESTART_WINDOW_SECONDS,
                self.restart_window_seconds,
            ),
            (
                "time_limit_check_ms",
                Self::TIME_LIMIT_CHECK_MS,
                self.time_limit_check_ms as f64,
            ),
            (
                "child_kill_grace_ms",
                Self::CHILD_KILL_GRACE_MS,
                self.child_kill_grace_ms as f64,
            ),
        ] {
            within(key(field), limit, value)?;
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                key("backoff_max_ms"),
                "need backoff_initial_ms <= backoff_max_ms",
            ));
        }
        Ok(())
    }
}

impl BrokerConfig {
    /// `visibility_timeout_seconds`.
    pub const VISIBILITY_TIMEOUT_SECONDS: Limit = Limit::seconds(7.0 * DAY_SECONDS);
    /// `restore_interval_seconds`.
    pub const RESTORE_INTERVAL_SECONDS: Limit = Limit::seconds(DAY_SECONDS);

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url
            && let Err(e) = broker_url::BrokerUrl::parse(url)
        {
            return Err(invalid("broker.url", e.to_string()));
        }
        within(
            "broker.visibility_timeout_seconds",
            Self::VISIBILITY_TIMEOUT_SECONDS,
            self.visibility_timeout_seconds,
        )?;
        within(
            "broker.restore_interval_seconds",
            Self::RESTORE_INTERVAL_SECONDS,
            self.restore_interval_seconds,
        )?;
        if self.node_name.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid(
                "broker.node_name",
                "is empty; remove it or name the node",
            ));
        }
        Ok(())
    }
}

impl TaskSpec {
    /// Checks the task named `name` against the rest of `config`.
    fn check(&self, name: &str, config: &Config) -> Result<(), ConfigError> {
        if !valid_task_name(name) {
            return Err(invalid(
                format!("tasks.{name}"),
                "task names use letters, digits, `.`, `_` and `-`",
            ));
        }
        let key = format!("tasks.\"{name}\"");
        if let Some(q) = &self.queue {
            if !self.pool.is_empty() || !self.kind.is_empty() {
                return Err(invalid(
                    format!("{key}.queue"),
                    "a task with `queue` runs on other workers: remove `pool` and `kind`",
                ));
            }
            if config.broker.url.is_none() {
                return Err(invalid(
                    format!("{key}.queue"),
                    "sending to a queue needs a broker: set [broker] url or CELERIAC_BROKER_URL",
                ));
            }
            if !plain_queue(q) {
                return Err(invalid(
                    format!("{key}.queue"),
                    "must be a plain, non-empty name",
                ));
            }
            if let Some(pool) = config.pools.iter().find(|(n, p)| p.queue_name(n) == *q) {
                return Err(invalid(
                    format!("{key}.queue"),
                    format!(
                        "queue `{q}` is consumed by pool `{}`: route the task to the pool instead",
                        pool.0
                    ),
                ));
            }
            return Ok(());
        }
        if self.kind.is_empty() {
            return Err(invalid(
                format!("{key}.kind"),
                "is missing: name the implementation (e.g. `text_classifier`), or give a `queue` for a task other workers run",
            ));
        }
        if !config.pools.contains_key(&self.pool) {
            return Err(invalid(
                format!("{key}.pool"),
                format!(
                    "no pool named `{}`; defined pools: {}",
                    self.pool,
                    config.pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if let Some(n) = self.max_length {
            within(format!("{key}.max_length"), Self::MAX_LENGTH, n as f64)?;
        }
        if let Some(n) = self.dimensions {
            within(format!("{key}.dimensions"), Self::DIMENSIONS, n as f64)?;
        }
        Ok(())
    }

    /// `max_length`: tokens per input (at most the model's own maximum, checked at load).
    pub const MAX_LENGTH: Limit = Limit::int(2, 1 << 20, "tokens");
    /// `dimensions`: values kept per embedding (at most the model's width, checked at
    /// load).
    pub const DIMENSIONS: Limit = Limit::int(1, 1 << 16, "dimensions");
}

/// Task names appear in URL paths and metric labels: keep them plain.
pub fn valid_task_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::from_toml(text, Path::new("."))?;
        c.validate()?;
        Ok(c)
    }

    const MINIMAL: &str = r#"
        [pools.p]
        [tasks."debug.echo"]
        kind = "debug.echo"
        pool = "p"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.pools["p"].concurrency, 2);
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(c.tasks["debug.echo"].pool, "p");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = parse(&format!("{MINIMAL}\n[server]\nlisten_addr = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn route_to_missing_pool_names_the_setting() {
        let err = parse(
            r#"
            [pools.p]
            [tasks."a"]
            kind = "debug.echo"
            pool = "q"
        "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tasks.\"a\".pool"), "{err}");
        // A task routed to a queue other workers serve: needs a broker, no pool or kind,
        // and a queue no pool of this node consumes.
        let base = "[pools.p]\n[tasks.\"t\"]\nkind = \"debug.echo\"\npool = \"p\"\n";
        let remote = "[tasks.\"py.x\"]\nqueue = \"pyq\"\n";
        let err = parse(&format!("{base}{remote}")).unwrap_err().to_string();
        assert!(err.contains("needs a broker"), "{err}");
        let broker = "[broker]\nurl = \"redis://127.0.0.1:6379/0\"\n";
        let c = parse(&format!("{broker}{base}{remote}")).unwrap();
        assert_eq!(c.remote_tasks().collect::<Vec<_>>(), [("py.x", "pyq")]);
        let err = parse(&format!("{broker}{base}[tasks.\"py.x\"]\nqueue = \"p\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("consumed by pool `p`"), "{err}");
        let err = parse(&format!(
            "{broker}{base}[tasks.\"py.x\"]\nqueue = \"q\"\nkind = \"debug.echo\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("remove `pool` and `kind`"), "{err}");
    }

    #[test]
    fn zero_concurrency_is_rejected_but_solo_ignores_it() {
        let err = parse(&MINIMAL.replace("[pools.p]", "[pools.p]\nconcurrency = 0")).unwrap_err();
        assert!(err.to_string().contains("pools.p.concurrency"), "{err}");
        let c = parse(&MINIMAL.replace("[pools.p]", "[pools.p]\nkind = \"solo\"\nconcurrency = 0"))
            .unwrap();
        assert_eq!(c.pools["p"].size(), 1);
    }

    #[test]
    fn recycling_settings_are_only_for_processes_pools() {
        for field in ["max_tasks_per_child = 10", "max_memory_per_child_mb = 512"] {
            let err = parse(&MINIMAL.replace("[pools.p]", &format!("[pools.p]\n{field}")))
                .unwrap_err()
                .to_string();
            let key = field.split(' ').next().unwrap();
            assert!(
                err.contains(&format!("pools.p.{key}")) && err.contains("\"processes\""),
                "{err}"
            );
            let c = parse(&MINIMAL.replace(
                "[pools.p]",
                &format!("[pools.p]\nkind = \"processes\"\n{field}"),
            ))
            .unwrap();
            assert_eq!(c.pools["p"].size(), 2, "sized like a threads pool");
        }
        let err = parse(&MINIMAL.replace(
            "[pools.p]",
            "[pools.p]\nkind = \"processes\"\nconcurrency = 0",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("pools.p.concurrency"), "{err}");
    }

    #[test]
    fn devices_parse_and_spread_round_robin() {
        let c = parse(&MINIMAL.replace(
            "[pools.p]",
            "[pools.p]\nconcurrency = 3\nintra_op_threads = 2\ndevices = [\"cpu\"]",
        ))
        .unwrap();
        assert_eq!(c.pools["p"].device_for(2), DeviceSpec::Cpu);
        assert_eq!(c.pools["p"].threads_per_worker(), 2);
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        let err =
            parse(&MINIMAL.replace("[pools.p]", "[pools.p]\ndevices = [\"tpu\"]")).unwrap_err();
        assert!(err.to_string().contains("unknown device `tpu`"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_startup_error() {
        let err =
            parse(&MINIMAL.replace("[pools.p]", "[pools.p]\ndevices = [\"cuda:0\"]")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("pools.p.devices") && msg.contains("--features cuda"),
            "{msg}"
        );
    }

    #[test]
    fn env_overrides_token_and_listen() {
        let mut c = parse(MINIMAL).unwrap();
        c.apply_env_from(|k| match k {
            "CELERIAC_ADMIN_TOKEN" => Some("s3cret".into()),
            "CELERIAC_LISTEN" => Some("0.0.0.0:9000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.server.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.server.listen.port(), 9000);
        let err = c
            .apply_env_from(|k| (k == "CELERIAC_LISTEN").then(|| "nope".into()))
            .unwrap_err();
        assert!(err.to_string().contains("CELERIAC_LISTEN"));
    }

    #[test]
    fn api_keys_come_from_the_file_or_the_env_and_are_never_shown() {
        let c = parse(&MINIMAL.replace(
            "[pools.p]",
            "[server]\napi_keys = [\"k-one\", \"k-two\"]\n[pools.p]",
        ))
        .unwrap();
        assert_eq!(c.server.api_keys.0, ["k-one", "k-two"]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("k-one") && shown.contains("2 redacted"),
            "{shown}"
        );
        let sent = serde_json::to_string(&c).unwrap();
        assert!(!sent.contains("k-one"), "{sent}");
        let mut c = parse(MINIMAL).unwrap();
        assert!(!c.server.api_keys.enabled());
        c.apply_env_from(|k| (k == "CELERIAC_API_KEYS").then(|| "a, b,,".into()))
            .unwrap();
        assert_eq!(c.server.api_keys.0, ["a", "b"]);
        let err = parse(&MINIMAL.replace("[pools.p]", "[server]\napi_keys = [\" \"]\n[pools.p]"))
            .unwrap_err();
        assert!(err.to_string().contains("server.api_keys"), "{err}");
    }

    #[test]
    fn api_routes_name_a_task_of_their_kind() {
        let two = MINIMAL.to_string()
            + "[tasks.\"e1\"]\nkind = \"debug.echo\"\npool = \"p\"\n"
            + "[tasks.\"e2\"]\nkind = \"debug.echo\"\npool = \"p\"\n";
        let c = parse(&two).unwrap();
        assert!(
            c.api_task(ApiRoute::Embed)
                .unwrap_err()
                .contains("no task of kind `embeddings`")
        );
        let err = parse(&format!("[api]\nembed = \"e1\"\n{two}")).unwrap_err();
        assert!(
            err.to_string().contains("api.embed") && err.to_string().contains("debug.echo"),
            "{err}"
        );
        let err = parse(&format!("[api]\nrerank = \"nope\"\n{two}")).unwrap_err();
        assert!(err.to_string().contains("api.rerank"), "{err}");
        let mut c = parse(&two).unwrap();
        for t in c.tasks.values_mut() {
            t.kind = "embeddings".into();
        }
        let err = c.api_task(ApiRoute::Embed).unwrap_err();
        assert!(err.contains("e1, e2") && err.contains("api.embed"), "{err}");
        c.api.embed = Some("e2".into());
        assert_eq!(c.api_task(ApiRoute::Embed), Ok("e2"));
    }

    #[test]
    fn api_root_names_a_served_route_and_auto_truncate_defaults_on() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.api.auto_truncate);
        assert_eq!(c.api.root, None);
        // No reranker here: `POST /` cannot answer as /rerank.
        let err = parse(&format!("[api]\nroot = \"rerank\"\n{MINIMAL}")).unwrap_err();
        assert!(
            err.to_string().contains("api.root") && err.to_string().contains("reranker"),
            "{err}"
        );
        assert!(parse(&format!("[api]\nroot = \"/embed\"\n{MINIMAL}")).is_err());
        let c = parse(&format!("[api]\nauto_truncate = false\n{MINIMAL}")).unwrap();
        assert!(!c.api.auto_truncate);
    }
}
