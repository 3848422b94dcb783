//! The broker's outbox: the tasks this node took from a broker and has not finished.
//!
//! The [`TaskStore`] keeps their state as it keeps every task's and tells the outbox of
//! each `RETRY` and final change ([`TaskStore::on_change`]); the outbox picks out the
//! broker's tasks and sends their views, in order, to the node's result writer
//! (`node::consumer`), which puts them in the result backend. It also keeps their inputs,
//! for Celery's `inspect active` and `inspect reserved`.
//!
//! A task leaves the outbox when it reaches a final state (its view is the last sent),
//! or when its message goes back to the broker's queue ([`Outbox::detach`],
//! [`Outbox::give_back`]): what this node still does with it is then not written, so
//! the node that takes it next owns its result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::store::{TaskId, TaskState, TaskStore, TaskView};

/// A task this node took from a broker and has not finished ([`Outbox::taken`]).
#[derive(Debug, Clone)]
pub struct Taken {
    /// Its id.
    pub id: TaskId,
    /// Its name.
    pub task: Arc<str>,
    /// `PENDING` (waiting for a worker of this node) or `STARTED` (running).
    pub state: TaskState,
    /// When a worker started it.
    pub started_at: Option<SystemTime>,
    /// Its input (once bound).
    pub input: Option<Arc<Value>>,
}

/// Where the outbox sends views: the result writer's channel, and the count of views
/// sent and not yet written (the writer decrements it).
struct Writer {
    tx: UnboundedSender<TaskView>,
    pending: Arc<AtomicUsize>,
}

/// The broker's tasks in this node; see the module doc.
pub struct Outbox {
    store: Arc<TaskStore>,
    /// The tasks held, with their inputs.
    held: Mutex<HashMap<TaskId, Option<Arc<Value>>>>,
    writer: OnceLock<Writer>,
}

impl Outbox {
    /// An empty outbox over `store`. With `broker`, the store tells it of every change
    /// from now on; a node without a broker never holds a task, so its store's changes
    /// do not pass through here at all.
    pub fn new(store: Arc<TaskStore>, broker: bool) -> Arc<Self> {
        let outbox = Arc::new(Outbox {
            store: store.clone(),
            held: Mutex::new(HashMap::new()),
            writer: OnceLock::new(),
        });
        if !broker {
            return outbox;
        }
        let weak = Arc::downgrade(&outbox);
        store.on_change(move |id, state, view| {
            if let Some(outbox) = weak.upgrade() {
                outbox.changed(id, state, view);
            }
        });
        outbox
    }

    /// Sends the views of the tasks held to `tx` from now on; `pending` counts those
    /// sent and not yet written. Set once; later calls are ignored.
    pub fn write_to(&self, tx: UnboundedSender<TaskView>, pending: Arc<AtomicUsize>) {
        let _ = self.writer.set(Writer { tx, pending });
    }

    /// Called by the store, under the lock of `id`'s record (so the views of one task
    /// are sent in the order of its changes): sends the view of a task held, and lets
    /// go of it once final.
    fn changed(&self, id: &TaskId, state: TaskState, view: &dyn Fn() -> TaskView) {
        {
            let mut held = self.held.lock();
            if state.is_final() {
                if held.remove(id).is_none() {
                    return;
                }
            } else if !held.contains_key(id) {
                return;
            }
        }
        if let Some(w) = self.writer.get() {
            w.pending.fetch_add(1, Ordering::SeqCst);
            if w.tx.send(view()).is_err() {
                w.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Records a task taken from a broker under its own id, for pool `pool`: `PENDING`
    /// in the store (the pool starts it), submitted at `submitted_at`, after `retries`
    /// earlier deliveries, and held here. The store keeps no copy of its final record:
    /// its result lives in the result backend.
    pub fn take(
        &self,
        id: TaskId,
        task: Arc<str>,
        pool: usize,
        submitted_at: SystemTime,
        retries: u32,
    ) {
        self.held.lock().insert(id, None);
        self.store
            .insert_with_id(id, task, pool, submitted_at, retries, Duration::ZERO);
    }

    /// Keeps the input of a task held, for [`Outbox::taken`].
    pub fn set_input(&self, id: &TaskId, input: Arc<Value>) {
        if let Some(slot) = self.held.lock().get_mut(id) {
            *slot = Some(input);
        }
    }

    /// The tasks held that are not final (for Celery's `inspect`).
    pub fn taken(&self) -> Vec<Taken> {
        // Copied out first: the store calls into the outbox under its own locks.
        let held: Vec<(TaskId, Option<Arc<Value>>)> = self
            .held
            .lock()
            .iter()
            .map(|(id, input)| (*id, input.clone()))
            .collect();
        held.into_iter()
            .filter_map(|(id, input)| {
                let now = self.store.progress(&id)?;
                (!now.state.is_final()).then_some(Taken {
                    id,
                    task: now.task,
                    state: now.state,
                    started_at: now.started_at,
                    input,
                })
            })
            .collect()
    }

    /// Lets go of `ids`: their messages went back to the broker's queue (at shutdown,
    /// or when a submit found the pool gone); what this node still does with them is
    /// not written.
    pub fn detach(&self, ids: &[TaskId]) {
        let mut held = self.held.lock();
        for id in ids {
            held.remove(id);
        }
    }

    /// Lets go of task `id` and deletes its record, if it is held and not final: its
    /// message is to go back to the broker's queue, for a node that can run it (the
    /// caller hands it back). False, and nothing done, otherwise.
    pub fn give_back(&self, id: &TaskId) -> bool {
        // Decided under the record's lock, so no change slips between the check and
        // the removal.
        self.store.remove_if(id, |state| {
            !state.is_final() && self.held.lock().remove(id).is_some()
        })
    }

    /// How many tasks are held.
    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> (
        Arc<TaskStore>,
        Arc<Outbox>,
        tokio::sync::mpsc::UnboundedReceiver<TaskView>,
    ) {
        let store = Arc::new(TaskStore::new(Duration::from_secs(60)));
        let outbox = Outbox::new(store.clone(), true);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        outbox.write_to(tx, Arc::new(AtomicUsize::new(0)));
        (store, outbox, rx)
    }

    #[test]
    fn a_taken_task_sends_its_retry_and_final_views_then_leaves() {
        let (store, outbox, mut rx) = outbox();
        let id = uuid::Uuid::new_v4();
        outbox.take(id, "t".into(), 0, SystemTime::now(), 0);
        let local = store.insert("t".into(), 0);
        outbox.set_input(&id, Arc::new(serde_json::json!({"x": 1})));
        let (a, _) = store.start(&id).unwrap();
        store.start(&local).unwrap();
        assert_eq!(outbox.taken()[0].state, TaskState::Started);
        assert_eq!(
            outbox.taken()[0].input.as_deref(),
            Some(&serde_json::json!({"x": 1}))
        );
        store.requeue_or_fail(&id, a, 3, "lost");
        let (a, _) = store.start(&id).unwrap();
        store.finish(&id, a, Ok(serde_json::json!(7))).unwrap();
        let retry = rx.try_recv().unwrap();
        assert_eq!((retry.task_id, retry.state), (id, TaskState::Retry));
        let done = rx.try_recv().unwrap();
        assert_eq!(done.state, TaskState::Success);
        assert_eq!(done.result, Some(serde_json::json!(7)));
        assert!(outbox.is_empty() && outbox.taken().is_empty());
        // A local task's changes are not the broker's, and a broker's final record is
        // not kept.
        store.fail(&local, None, "x".into()).unwrap();
        assert!(rx.try_recv().is_err());
        assert!(store.get(&id).is_none());
        assert!(store.get(&local).is_some());
    }

    #[test]
    fn a_detached_task_is_no_longer_written() {
        let (store, outbox, mut rx) = outbox();
        let id = uuid::Uuid::new_v4();
        outbox.take(id, "t".into(), 0, SystemTime::now(), 0);
        outbox.detach(&[id]);
        store.fail(&id, None, "stopping".into()).unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn give_back_takes_only_unfinished_broker_tasks() {
        let (store, outbox, _rx) = outbox();
        let local = store.insert("t".into(), 0);
        assert!(
            !outbox.give_back(&local),
            "a local task is not the broker's"
        );
        let id = uuid::Uuid::new_v4();
        outbox.take(id, "t".into(), 0, SystemTime::now(), 0);
        assert!(outbox.give_back(&id));
        assert!(store.get(&id).is_none() && outbox.is_empty());
        // Taken again (the same id, redelivered) and finished: nothing to give back.
        outbox.take(id, "t".into(), 0, SystemTime::now(), 0);
        store.revoke(&id).unwrap();
        assert!(!outbox.give_back(&id));
    }
}
