//! The result store: one record per task id, its state, timings and result.
//!
//! In memory, sharded by id so submits and polls on different tasks do not contend.
//! Every state change goes through a method here, which checks the transition is legal
//! (a late answer from an abandoned worker cannot overwrite a final state) and wakes
//! the long-polls waiting on that task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

/// A task's id: a random UUID, so ids cannot be guessed or enumerated.
pub type TaskId = Uuid;

/// Celery's task states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(
    description = "Celery's names. `PENDING` (queued) → `STARTED` (a worker took it) → \
                   `SUCCESS` | `FAILURE`; `RETRY`: back in the queue after its worker was lost \
                   (only when the pool's `max_retries` allows; a task that panics fails at \
                   once); `REVOKED`: cancelled before it started. `SUCCESS`, `FAILURE` and \
                   `REVOKED` are final."
)]
pub enum TaskState {
    /// Accepted and queued.
    Pending,
    /// A worker took it.
    Started,
    /// Finished with a result.
    Success,
    /// Finished with an error.
    Failure,
    /// Back in the queue after its worker was lost.
    Retry,
    /// Cancelled before it started.
    Revoked,
}

impl TaskState {
    /// Whether the task will never change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failure | TaskState::Revoked
        )
    }

    /// The name on the wire, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Started => "STARTED",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Retry => "RETRY",
            TaskState::Revoked => "REVOKED",
        }
    }
}

/// What a store call found when it could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No such id, or its record expired.
    NotFound,
    /// The task is in a state that does not allow the change.
    WrongState(TaskState),
}

/// The internal record of one task.
#[derive(Debug)]
struct TaskRecord {
    task: Arc<str>,
    /// The index of the pool that runs it (for the final-state metric).
    pool: usize,
    state: TaskState,
    result: Option<Value>,
    error: Option<String>,
    submitted_at: SystemTime,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    /// Re-queues after a lost worker.
    retries: u32,
    /// Set, from a store-wide counter, each time a worker starts the task; answers carry
    /// it so a stale answer is ignored: from a worker abandoned after a time limit, or
    /// from the worker of a pool restarted after its actor failed, whose task went back
    /// to the broker and was taken again under the same id (a per-task count would start
    /// again at 1 there and let the old run's answer through).
    attempt: u64,
    /// When a final record is deleted (monotonic, so `tokio::time::pause` drives it).
    expires_at: Option<Instant>,
    /// Created on the first long-poll; woken on every state change.
    notify: Option<Arc<Notify>>,
    /// How long its final record is kept (the store's TTL; zero for a broker's task,
    /// whose result lives in the result backend).
    keep_for: Duration,
}

/// A task, as the API shows it.
// Its docs are the OpenAPI descriptions. `deny_unknown_fields` only closes the OpenAPI
// schema (`additionalProperties: false`): this type is never deserialized.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "task_id": "2f6d4c1e-8a0b-4e5f-9c3d-1a2b3c4d5e6f",
    "task": "spam.predict",
    "state": "SUCCESS",
    "result": {"label": "spam", "probabilities": {"ham": 0.03, "spam": 0.97}},
    "submitted_at": "2026-11-25T20:01:02.123456Z",
    "started_at": "2026-11-25T20:01:02.123501Z",
    "finished_at": "2026-11-25T20:01:02.131277Z",
    "retries": 0
}))]
pub struct TaskView {
    /// The task id.
    #[schema(value_type = uuid::Uuid)]
    pub task_id: TaskId,
    /// The task name.
    #[schema(value_type = String)]
    pub task: Arc<str>,
    /// Current state.
    pub state: TaskState,
    /// The result (any JSON value); present on `SUCCESS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub result: Option<Value>,
    /// The error, on `FAILURE`; the reason, on `REVOKED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub error: Option<String>,
    /// RFC 3339, UTC, microseconds.
    #[schema(format = DateTime)]
    pub submitted_at: String,
    /// When a worker last started it; absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Option<String>,
    /// When it reached a final state; absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: Option<String>,
    /// How many times it was re-queued after a lost worker.
    pub retries: u32,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

impl TaskView {
    fn new(id: TaskId, r: &TaskRecord) -> Self {
        TaskView {
            task_id: id,
            task: r.task.clone(),
            state: r.state,
            result: r.result.clone(),
            error: r.error.clone(),
            submitted_at: rfc3339(r.submitted_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            retries: r.retries,
        }
    }
}

/// Where a task stands ([`TaskStore::progress`]).
#[derive(Debug, Clone)]
pub struct Progress {
    /// Its name.
    pub task: Arc<str>,
    /// Its state.
    pub state: TaskState,
    /// When a worker last started it.
    pub started_at: Option<SystemTime>,
}

/// The outcome of [`TaskStore::requeue_or_fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Put back in the queue as `RETRY`.
    Retry,
    /// Out of retries: now `FAILURE`.
    Failed,
    /// Not running under that attempt any more (already final): nothing to do.
    Stale,
}

/// A finished task: what a store transition to a final state reports, to its caller
/// and to the store's observer ([`TaskStore::on_final`], the metrics).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The task name.
    pub task: Arc<str>,
    /// The index of the pool that ran it.
    pub pool: usize,
    /// The final state.
    pub state: TaskState,
    /// Submit to final state.
    pub latency: Duration,
}

const SHARDS: usize = 32;

/// The in-memory result store.
pub struct TaskStore {
    shards: Vec<Mutex<HashMap<TaskId, TaskRecord>>>,
    ttl: Duration,
    /// Told of every change to `RETRY` or a final state (set once).
    on_change: std::sync::OnceLock<ChangeObserver>,
    /// The last attempt number handed out ([`TaskStore::start`]).
    attempts: std::sync::atomic::AtomicU64,
    /// Told of every task that reaches a final state here (set once).
    on_final: std::sync::OnceLock<FinalObserver>,
}

/// What [`TaskStore::on_final`] calls.
type FinalObserver = Box<dyn Fn(&Finished) + Send + Sync>;

/// What [`TaskStore::on_change`] calls: the task, its new state, and a function that
/// makes its view (made only when wanted).
type ChangeObserver = Box<dyn Fn(&TaskId, TaskState, &dyn Fn() -> TaskView) + Send + Sync>;

impl TaskStore {
    /// An empty store whose final records live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TaskStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
            on_change: std::sync::OnceLock::new(),
            attempts: std::sync::atomic::AtomicU64::new(0),
            on_final: std::sync::OnceLock::new(),
        }
    }

    /// Calls `observe` for every task that reaches a final state in this store, as it
    /// does (the app records the final-state metrics here, so that no transition goes
    /// uncounted or is counted twice). Set once; later calls are ignored.
    pub fn on_final(&self, observe: impl Fn(&Finished) + Send + Sync + 'static) {
        let _ = self.on_final.set(Box::new(observe));
    }

    /// Calls `observe` for every change of a task to `RETRY` or a final state, as it
    /// happens, under the lock of that task's record: the changes of one task reach it
    /// in order. `observe` must not call back into the store. Set once; later calls are
    /// ignored. (The broker's outbox watches here: `crate::outbox`.)
    pub fn on_change(
        &self,
        observe: impl Fn(&TaskId, TaskState, &dyn Fn() -> TaskView) + Send + Sync + 'static,
    ) {
        let _ = self.on_change.set(Box::new(observe));
    }

    fn changed(&self, id: &TaskId, r: &TaskRecord) {
        if let Some(observe) = self.on_change.get() {
            observe(id, r.state, &|| TaskView::new(*id, r));
        }
    }

    /// The tasks that are not final and whose name `pick` accepts, with their states
    /// (a pool's tasks, when its actor died).
    pub fn unfinished(&self, pick: impl Fn(&Arc<str>) -> bool) -> Vec<(TaskId, TaskState)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (id, r) in shard.lock().iter() {
                if !r.state.is_final() && pick(&r.task) {
                    out.push((*id, r.state));
                }
            }
        }
        out
    }

    /// Deletes task `id`'s record if `pick` (given its state, called under the record's
    /// lock) says so; whether it did.
    pub fn remove_if(&self, id: &TaskId, pick: impl FnOnce(TaskState) -> bool) -> bool {
        let mut shard = self.shard(id).lock();
        if shard.get(id).is_some_and(|r| pick(r.state)) {
            shard.remove(id);
            true
        } else {
            false
        }
    }

    /// Records a task that already has an id (taken from a broker) for pool `pool`:
    /// `PENDING` (the pool starts it), submitted at `submitted_at`, after `retries`
    /// earlier deliveries; its final record is kept for `keep_for`.
    pub fn insert_with_id(
        &self,
        id: TaskId,
        task: Arc<str>,
        pool: usize,
        submitted_at: SystemTime,
        retries: u32,
        keep_for: Duration,
    ) {
        let record = TaskRecord {
            task,
            pool,
            state: TaskState::Pending,
            result: None,
            error: None,
            submitted_at,
            started_at: None,
            finished_at: None,
            retries,
            attempt: 0,
            expires_at: None,
            notify: None,
            keep_for,
        };
        self.shard(&id).lock().insert(id, record);
    }

    fn shard(&self, id: &TaskId) -> &Mutex<HashMap<TaskId, TaskRecord>> {
        let b = id.as_bytes();
        &self.shards[(b[0] as usize ^ b[15] as usize) % SHARDS]
    }

    /// Records a new `PENDING` task for pool `pool` and returns its id.
    pub fn insert(&self, task: Arc<str>, pool: usize) -> TaskId {
        let id = Uuid::new_v4();
        self.insert_with_id(id, task, pool, SystemTime::now(), 0, self.ttl);
        id
    }

    /// Deletes a record outright (a submit that could not be queued after all).
    pub fn remove(&self, id: &TaskId) {
        self.shard(id).lock().remove(id);
    }

    /// The current view of a task; `None` for an unknown or expired id.
    pub fn get(&self, id: &TaskId) -> Option<TaskView> {
        let shard = self.shard(id).lock();
        let r = shard.get(id)?;
        if r.expires_at.is_some_and(|e| e <= Instant::now()) {
            return None;
        }
        Some(TaskView::new(*id, r))
    }

    /// A task's name, state and start time, if it exists.
    pub fn progress(&self, id: &TaskId) -> Option<Progress> {
        self.shard(id).lock().get(id).map(|r| Progress {
            task: r.task.clone(),
            state: r.state,
            started_at: r.started_at,
        })
    }

    /// The state of a task, if it exists.
    pub fn state(&self, id: &TaskId) -> Option<TaskState> {
        self.shard(id).lock().get(id).map(|r| r.state)
    }

    /// Waits until the task is final or `timeout` passes, then returns its view.
    /// Sleeps on a [`Notify`]; never polls.
    pub async fn wait_final(&self, id: &TaskId, timeout: Duration) -> Option<TaskView> {
        let deadline = Instant::now() + timeout;
        loop {
            let notify = {
                let mut shard = self.shard(id).lock();
                let r = shard.get_mut(id)?;
                if r.expires_at.is_some_and(|e| e <= Instant::now()) {
                    return None;
                }
                if r.state.is_final() || Instant::now() >= deadline {
                    return Some(TaskView::new(*id, r));
                }
                r.notify
                    .get_or_insert_with(|| Arc::new(Notify::new()))
                    .clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A change between the unlock above and `enable` is caught here.
            if self.state(id).is_none_or(|s| s.is_final()) {
                continue;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn wake(r: &TaskRecord) {
        if let Some(n) = &r.notify {
            n.notify_waiters();
        }
    }

    /// Moves a queued task (`PENDING`/`RETRY`) to `STARTED` and returns the attempt
    /// number the worker must answer with, plus how long it waited in the queue.
    /// `None` when it was revoked or expired meanwhile: skip it.
    pub fn start(&self, id: &TaskId) -> Option<(u64, Duration)> {
        let mut shard = self.shard(id).lock();
        let r = shard.get_mut(id)?;
        if !matches!(r.state, TaskState::Pending | TaskState::Retry) {
            return None;
        }
        let now = SystemTime::now();
        r.state = TaskState::Started;
        r.attempt = 1 + self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r.started_at = Some(now);
        let waited = now.duration_since(r.submitted_at).unwrap_or_default();
        Self::wake(r);
        Some((r.attempt, waited))
    }

    fn finalize(&self, id: &TaskId, r: &mut TaskRecord, state: TaskState) -> Finished {
        let now = SystemTime::now();
        r.state = state;
        r.finished_at = Some(now);
        r.expires_at = Some(Instant::now() + r.keep_for);
        Self::wake(r);
        self.changed(id, r);
        let finished = Finished {
            task: r.task.clone(),
            pool: r.pool,
            state,
            latency: now.duration_since(r.submitted_at).unwrap_or_default(),
        };
        if let Some(observe) = self.on_final.get() {
            observe(&finished);
        }
        finished
    }

    /// Records a worker's answer for `attempt`. Ignored (returns `None`) unless the
    /// task is still `STARTED` under that attempt.
    pub fn finish(
        &self,
        id: &TaskId,
        attempt: u64,
        outcome: Result<Value, String>,
    ) -> Option<Finished> {
        let mut shard = self.shard(id).lock();
        let r = shard.get_mut(id)?;
        if r.state != TaskState::Started || r.attempt != attempt {
            return None;
        }
        let state = match outcome {
            Ok(v) => {
                r.result = Some(v);
                TaskState::Success
            }
            Err(e) => {
                r.error = Some(e);
                TaskState::Failure
            }
        };
        Some(self.finalize(id, r, state))
    }

    /// Fails a task that is not final yet, whatever its state (no live worker, time
    /// limit, shutdown). `attempt` restricts it to one run when given.
    pub fn fail(&self, id: &TaskId, attempt: Option<u64>, error: String) -> Option<Finished> {
        let mut shard = self.shard(id).lock();
        let r = shard.get_mut(id)?;
        if r.state.is_final() || attempt.is_some_and(|a| a != r.attempt) {
            return None;
        }
        r.error = Some(error);
        Some(self.finalize(id, r, TaskState::Failure))
    }

    /// The worker running `attempt` was lost: re-queue as `RETRY` while retries remain,
    /// else fail with a "worker lost" error.
    pub fn requeue_or_fail(
        &self,
        id: &TaskId,
        attempt: u64,
        max_retries: u32,
        why: &str,
    ) -> (Requeue, Option<Finished>) {
        let mut shard = self.shard(id).lock();
        let Some(r) = shard.get_mut(id) else {
            return (Requeue::Stale, None);
        };
        if r.state != TaskState::Started || r.attempt != attempt {
            return (Requeue::Stale, None);
        }
        if r.retries < max_retries {
            r.retries += 1;
            r.state = TaskState::Retry;
            Self::wake(r);
            self.changed(id, r);
            (Requeue::Retry, None)
        } else {
            r.error = Some(format!("worker lost: {why} (after {} retries)", r.retries));
            let f = self.finalize(id, r, TaskState::Failure);
            (Requeue::Failed, Some(f))
        }
    }

    /// Revokes a task that has not started. A started or final task is left alone.
    pub fn revoke(&self, id: &TaskId) -> Result<(TaskView, Finished), StoreError> {
        self.revoke_with(id, "revoked before it started".into())
    }

    /// [`TaskStore::revoke`] with the reason to record.
    pub fn revoke_with(
        &self,
        id: &TaskId,
        why: String,
    ) -> Result<(TaskView, Finished), StoreError> {
        let mut shard = self.shard(id).lock();
        let r = shard.get_mut(id).ok_or(StoreError::NotFound)?;
        if r.expires_at.is_some_and(|e| e <= Instant::now()) {
            return Err(StoreError::NotFound);
        }
        if !matches!(r.state, TaskState::Pending | TaskState::Retry) {
            return Err(StoreError::WrongState(r.state));
        }
        r.error = Some(why);
        let f = self.finalize(id, r, TaskState::Revoked);
        Ok((TaskView::new(*id, r), f))
    }

    /// Deletes expired records; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, r| r.expires_at.is_none_or(|e| e > now));
            removed += before - shard.len();
        }
        removed
    }

    /// Number of records held (final ones included, until they expire).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lifecycle_and_stale_answers() {
        let s = TaskStore::new(Duration::from_secs(60));
        let id = s.insert("t".into(), 0);
        assert_eq!(s.state(&id), Some(TaskState::Pending));
        let (a1, _) = s.start(&id).unwrap();
        assert!(s.start(&id).is_none(), "a started task cannot start twice");
        assert_eq!(
            s.requeue_or_fail(&id, a1, 1, "boom").0,
            Requeue::Retry,
            "first loss re-queues"
        );
        assert_eq!(s.state(&id), Some(TaskState::Retry));
        let (a2, _) = s.start(&id).unwrap();
        assert!(
            s.finish(&id, a1, Ok(json!(1))).is_none(),
            "stale attempt ignored"
        );
        assert_eq!(s.requeue_or_fail(&id, a2, 1, "boom").0, Requeue::Failed);
        let v = s.get(&id).unwrap();
        assert_eq!(v.state, TaskState::Failure);
        assert_eq!(v.retries, 1);
        assert!(v.error.unwrap().contains("worker lost"));
        assert!(s.finish(&id, a2, Ok(json!(1))).is_none(), "final is final");
    }

    /// A broker task given back (pool restart) and taken again under the same id gets a
    /// new attempt number, so the abandoned run's answer cannot pass for the new one's.
    #[test]
    fn a_task_taken_again_ignores_its_earlier_run() {
        let s = TaskStore::new(Duration::from_secs(60));
        let id = uuid::Uuid::new_v4();
        let taken = |s: &TaskStore| {
            s.insert_with_id(id, "t".into(), 0, SystemTime::now(), 0, Duration::ZERO)
        };
        taken(&s);
        let (old, _) = s.start(&id).unwrap();
        assert!(s.remove_if(&id, |state| !state.is_final()));
        taken(&s);
        let (new, _) = s.start(&id).unwrap();
        assert_ne!(old, new);
        assert!(s.finish(&id, old, Ok(json!("stale"))).is_none());
        assert_eq!(s.get(&id).unwrap().state, TaskState::Started);
        // (A broker task's final record is the result backend's: it leaves the store.)
        let done = s.finish(&id, new, Ok(json!("fresh"))).unwrap();
        assert_eq!(done.state, TaskState::Success);
    }

    #[test]
    fn revoke_only_before_start() {
        let s = TaskStore::new(Duration::from_secs(60));
        let id = s.insert("t".into(), 0);
        assert!(s.revoke(&id).is_ok());
        assert!(s.start(&id).is_none(), "revoked tasks are skipped");
        let id2 = s.insert("t".into(), 0);
        s.start(&id2).unwrap();
        assert_eq!(
            s.revoke(&id2).unwrap_err(),
            StoreError::WrongState(TaskState::Started)
        );
        assert_eq!(s.revoke(&Uuid::new_v4()).unwrap_err(), StoreError::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn final_records_expire_after_ttl() {
        let s = TaskStore::new(Duration::from_secs(10));
        let id = s.insert("t".into(), 0);
        let (a, _) = s.start(&id).unwrap();
        s.finish(&id, a, Ok(json!("x"))).unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(s.get(&id).is_some());
        assert_eq!(s.sweep(), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.get(&id).is_none(), "expired records read as unknown");
        assert_eq!(s.sweep(), 1);
        assert!(s.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_final_wakes_on_finish_and_times_out() {
        let s = Arc::new(TaskStore::new(Duration::from_secs(10)));
        let id = s.insert("t".into(), 0);
        let v = s.wait_final(&id, Duration::from_secs(2)).await.unwrap();
        assert_eq!(
            v.state,
            TaskState::Pending,
            "times out with the current view"
        );
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait_final(&id, Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        let (a, _) = s.start(&id).unwrap();
        s.finish(&id, a, Ok(json!(7))).unwrap();
        let v = waiter.await.unwrap().unwrap();
        assert_eq!(v.state, TaskState::Success);
        assert_eq!(v.result, Some(json!(7)));
    }
}
