//! The restart budget and back-off of a pool's failed worker starts, as a pure type the
//! pool actor applies ([`super::pool`]): a slot whose worker failed to start tries again
//! after an exponential back-off, while the pool's failed starts within the window stay
//! under the budget; past it the slot is parked until the pool is resized.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::SupervisorConfig;

/// What to do with a slot after a failed start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this long.
    After(Duration),
    /// The budget is spent: park the slot (`failed` starts within `window`).
    Park {
        /// Failed starts counted in the window.
        failed: usize,
        /// The window.
        window: Duration,
    },
}

/// A pool's failed starts within the budget window, and the back-off settings.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    window: Duration,
    budget: usize,
    initial: Duration,
    max: Duration,
    failed: VecDeque<Instant>,
}

impl RestartBudget {
    /// Empty, with the `[supervisor]` settings.
    pub fn new(config: &SupervisorConfig) -> Self {
        RestartBudget {
            window: crate::config::secs(config.restart_window_seconds),
            budget: config.restart_budget as usize,
            initial: Duration::from_millis(config.backoff_initial_ms),
            max: Duration::from_millis(config.backoff_max_ms),
            failed: VecDeque::new(),
        }
    }

    /// After the `failures`-th consecutive failed start of a slot, at `now`: the
    /// back-off before its next try (doubling from `backoff_initial_ms` up to
    /// `backoff_max_ms`), counted against the budget; or `Park` once the pool's failed
    /// starts within the window reach the budget.
    pub fn after_failure(&mut self, failures: u32, now: Instant) -> Retry {
        while self
            .failed
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.failed.pop_front();
        }
        if self.failed.len() >= self.budget {
            return Retry::Park {
                failed: self.failed.len(),
                window: self.window,
            };
        }
        self.failed.push_back(now);
        let doubling = 1u32 << failures.saturating_sub(1).min(20);
        Retry::After(self.initial.saturating_mul(doubling).min(self.max))
    }

    /// Forgets the failed starts: a resize gives parked slots a new budget.
    pub fn reset(&mut self) {
        self.failed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(n: u32) -> RestartBudget {
        let mut c: SupervisorConfig = toml::from_str("").expect("every field has a default");
        c.backoff_initial_ms = 100;
        c.backoff_max_ms = 1000;
        c.restart_budget = n;
        c.restart_window_seconds = 60.0;
        RestartBudget::new(&c)
    }

    #[test]
    fn the_back_off_doubles_up_to_its_maximum() {
        let mut b = budget(100);
        let t = Instant::now();
        let ms = |r| match r {
            Retry::After(d) => d.as_millis(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ms(b.after_failure(1, t)), 100);
        assert_eq!(ms(b.after_failure(2, t)), 200);
        assert_eq!(ms(b.after_failure(4, t)), 800);
        assert_eq!(ms(b.after_failure(5, t)), 1000);
        assert_eq!(ms(b.after_failure(u32::MAX, t)), 1000, "no overflow");
    }

    #[test]
    fn the_budget_parks_within_its_window_and_recovers_after_it_or_a_reset() {
        let mut b = budget(2);
        let t = Instant::now();
        assert!(matches!(b.after_failure(1, t), Retry::After(_)));
        assert!(matches!(b.after_failure(1, t), Retry::After(_)));
        assert_eq!(
            b.after_failure(1, t + Duration::from_secs(1)),
            Retry::Park {
                failed: 2,
                window: Duration::from_secs(60)
            }
        );
        assert!(
            matches!(
                b.after_failure(1, t + Duration::from_secs(61)),
                Retry::After(_)
            ),
            "the window moved past both"
        );
        b.reset();
        assert!(matches!(
            b.after_failure(1, t + Duration::from_secs(62)),
            Retry::After(_)
        ));
    }
}
