//! How a pool forms batches from its queue: the rules, as a pure type the pool actor
//! applies ([`super::pool`]). A batch is jobs of one task that takes batches, up to
//! `max_batch_size` jobs and `max_batch_tokens` tokens; a short queue may wait up to
//! `max_batch_delay_ms` for a fuller batch while another worker is busy.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::protocol::Job;
use crate::config::PoolConfig;

/// A pool's batching rules.
#[derive(Debug, Clone)]
pub struct BatchRules {
    max_jobs: usize,
    /// `usize::MAX` when unlimited.
    max_tokens: usize,
    max_delay: Duration,
    /// The pool's tasks that take batches ([`crate::task::batching`]).
    batching: HashSet<Arc<str>>,
}

impl BatchRules {
    /// The rules of a pool with `config` whose batching tasks are `batching`.
    pub fn new(config: &PoolConfig, batching: HashSet<Arc<str>>) -> Self {
        BatchRules {
            max_jobs: config.max_batch_size,
            max_tokens: match config.max_batch_tokens {
                0 => usize::MAX,
                n => n,
            },
            max_delay: crate::config::limit::millis(config.max_batch_delay_ms),
            batching,
        }
    }

    /// How long to hold `queue` for a fuller batch at `now`, or `None` to send what is
    /// there. It waits only while the queue is shorter than a batch, its front job takes
    /// batches and waited less than the delay, the queue's tokens do not already fill a
    /// batch, and another worker is `busy` (an idle pool sends at once).
    pub fn hold(&self, queue: &VecDeque<Job>, busy: bool, now: Instant) -> Option<Duration> {
        let front = queue.front()?;
        if self.max_jobs <= 1 || queue.len() >= self.max_jobs || self.max_delay.is_zero() {
            return None;
        }
        let waited = now.saturating_duration_since(front.enqueued);
        let tokens: usize = queue.iter().map(Job::tokens).sum();
        (busy
            && waited < self.max_delay
            && self.batching.contains(&front.task)
            && tokens < self.max_tokens)
            .then(|| self.max_delay - waited)
    }

    /// Whether `job` joins a batch whose first job is of task `first`, which holds `len`
    /// jobs of `tokens` tokens so far. The first job always starts a batch.
    pub fn fits(&self, first: Option<&str>, len: usize, tokens: usize, job: &Job) -> bool {
        let Some(first) = first else {
            return true;
        };
        len < self.max_jobs
            && *job.task == *first
            && self.batching.contains(&job.task)
            && tokens.saturating_add(job.tokens()) <= self.max_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Prepared;

    fn rules(max_jobs: usize, max_tokens: usize, delay_ms: f64) -> BatchRules {
        let mut config: PoolConfig = toml::from_str("").expect("every field has a default");
        config.max_batch_size = max_jobs;
        config.max_batch_tokens = max_tokens;
        config.max_batch_delay_ms = delay_ms;
        BatchRules::new(&config, HashSet::from([Arc::from("b")]))
    }

    fn job(task: &str, tokens: usize, enqueued: Instant) -> Job {
        Job {
            id: uuid::Uuid::new_v4(),
            task: task.into(),
            input: Arc::new(serde_json::Value::Null),
            enqueued,
            prepared: Some(Prepared {
                tokens,
                data: Arc::new(()),
            }),
        }
    }

    #[test]
    fn a_short_queue_waits_for_a_fuller_batch_only_while_another_worker_is_busy() {
        let r = rules(4, 0, 10.0);
        let t0 = Instant::now();
        let q = VecDeque::from([job("b", 5, t0)]);
        let at = t0 + Duration::from_millis(4);
        assert_eq!(r.hold(&q, true, at), Some(Duration::from_millis(6)));
        assert_eq!(r.hold(&q, false, at), None, "an idle pool sends at once");
        assert_eq!(
            r.hold(&q, true, t0 + Duration::from_millis(10)),
            None,
            "waited enough"
        );
        assert_eq!(r.hold(&VecDeque::new(), true, at), None);
    }

    #[test]
    fn a_full_queue_a_task_without_batches_or_no_delay_does_not_wait() {
        let t0 = Instant::now();
        let r = rules(2, 0, 10.0);
        let full = VecDeque::from([job("b", 1, t0), job("b", 1, t0)]);
        assert_eq!(r.hold(&full, true, t0), None);
        let single = VecDeque::from([job("s", 1, t0)]);
        assert_eq!(r.hold(&single, true, t0), None, "`s` takes no batches");
        assert_eq!(rules(4, 0, 0.0).hold(&single, true, t0), None);
        let tokens = rules(4, 8, 10.0);
        let heavy = VecDeque::from([job("b", 8, t0)]);
        assert_eq!(
            tokens.hold(&heavy, true, t0),
            None,
            "its tokens fill a batch"
        );
    }

    #[test]
    fn a_batch_holds_one_batching_task_within_its_jobs_and_tokens() {
        let t0 = Instant::now();
        let r = rules(3, 10, 0.0);
        let b = job("b", 4, t0);
        assert!(
            r.fits(None, 0, 0, &job("s", 4, t0)),
            "anything starts a batch"
        );
        assert!(r.fits(Some("b"), 1, 4, &b));
        assert!(!r.fits(Some("b"), 3, 4, &b), "three jobs at most");
        assert!(!r.fits(Some("b"), 2, 8, &b), "ten tokens at most");
        assert!(
            !r.fits(Some("s"), 1, 4, &job("s", 1, t0)),
            "`s` takes no batches"
        );
        assert!(!r.fits(Some("c"), 1, 4, &b), "one task per batch");
        assert!(
            rules(3, 0, 0.0).fits(Some("b"), 2, 1_000_000, &b),
            "0 tokens: no limit"
        );
    }
}
