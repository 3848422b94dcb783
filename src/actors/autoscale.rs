//! The autoscaler's decision, as a pure function of a pool's state: grow when work
//! waits, shrink after an unbroken idle period, never cross the bounds.
//!
//! The pool actor calls [`Autoscaler::decide`] on every tick with the state it owns,
//! whether the bounds came from `[pools.NAME.autoscale]` or from the admin API (then
//! with the default tuning).

use std::time::{Duration, Instant};

use crate::config::{AutoscaleConfig, secs};

/// What the autoscaler looks at.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// The pool's size now.
    pub size: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// How long the oldest of them has waited.
    pub oldest_wait: Duration,
    /// Workers waiting for work.
    pub idle: usize,
}

/// The autoscaler's memory for one pool.
#[derive(Debug, Default)]
pub struct Autoscaler {
    last_grow: Option<Instant>,
    /// Since when the pool has had an idle worker and an empty queue, unbroken.
    idle_since: Option<Instant>,
}

impl Autoscaler {
    /// The size the pool should have now, between `min` and `max`. Grows by one worker
    /// per `scale_up_queue_depth` queued jobs (at least one) when enough jobs wait or the
    /// oldest waited long enough, at most once per cool-down; shrinks by one after
    /// `scale_down_idle_seconds` with an idle worker and an empty queue.
    pub fn decide(
        &mut self,
        (min, max): (usize, usize),
        tuning: &AutoscaleConfig,
        load: Load,
        now: Instant,
    ) -> usize {
        let size = load.size;
        let cooled = self
            .last_grow
            .is_none_or(|t| now - t >= secs(tuning.scale_up_cooldown_seconds));
        let pressure = load.queued >= tuning.scale_up_queue_depth
            || (load.queued > 0
                && load.oldest_wait >= Duration::from_millis(tuning.scale_up_wait_ms));
        let mut target = size.clamp(min, max);
        if pressure && cooled && size < max {
            let step = (load.queued / tuning.scale_up_queue_depth.max(1)).max(1);
            target = (size + step).min(max);
            self.last_grow = Some(now);
            self.idle_since = None;
        } else if load.queued == 0 && load.idle > 0 {
            let since = *self.idle_since.get_or_insert(now);
            if now - since >= secs(tuning.scale_down_idle_seconds) && size > min {
                target = target.min(size - 1);
                // The next shrink needs another full idle period.
                self.idle_since = Some(now);
            }
        } else {
            self.idle_since = None;
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> AutoscaleConfig {
        let mut t = AutoscaleConfig::with_bounds(1, 4);
        t.scale_up_queue_depth = 4;
        t.scale_up_wait_ms = 500;
        t.scale_up_cooldown_seconds = 1.0;
        t.scale_down_idle_seconds = 2.0;
        t
    }

    fn load(size: usize, queued: usize, wait_ms: u64, idle: usize) -> Load {
        Load {
            size,
            queued,
            oldest_wait: Duration::from_millis(wait_ms),
            idle,
        }
    }

    #[test]
    fn grows_by_queue_depth_within_max_and_respects_the_cooldown() {
        let (t, mut a, t0) = (tuning(), Autoscaler::default(), Instant::now());
        assert_eq!(
            a.decide((1, 4), &t, load(1, 9, 0, 0), t0),
            3,
            "9/4 = 2 more"
        );
        let soon = t0 + Duration::from_millis(500);
        assert_eq!(
            a.decide((1, 4), &t, load(3, 40, 0, 0), soon),
            3,
            "cooling down"
        );
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(a.decide((1, 4), &t, load(3, 40, 0, 0), later), 4, "max");
        // A short queue that waited long enough also grows.
        let mut b = Autoscaler::default();
        assert_eq!(b.decide((1, 4), &t, load(1, 1, 600, 0), t0), 2);
        assert_eq!(
            Autoscaler::default().decide((1, 4), &t, load(1, 1, 10, 0), t0),
            1
        );
    }

    #[test]
    fn shrinks_one_at_a_time_after_an_unbroken_idle_period_down_to_min() {
        let (t, mut a, t0) = (tuning(), Autoscaler::default(), Instant::now());
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(a.decide((1, 4), &t, load(3, 0, 0, 3), at(0)), 3);
        assert_eq!(a.decide((1, 4), &t, load(3, 0, 0, 3), at(1000)), 3);
        // Work arrives: the idle period starts again.
        assert_eq!(a.decide((1, 4), &t, load(3, 1, 0, 2), at(1500)), 3);
        assert_eq!(a.decide((1, 4), &t, load(3, 0, 0, 3), at(1600)), 3);
        assert_eq!(a.decide((1, 4), &t, load(3, 0, 0, 3), at(3700)), 2);
        assert_eq!(a.decide((1, 4), &t, load(2, 0, 0, 2), at(4000)), 2);
        assert_eq!(a.decide((1, 4), &t, load(2, 0, 0, 2), at(5800)), 1);
        assert_eq!(a.decide((1, 4), &t, load(1, 0, 0, 1), at(9000)), 1, "min");
    }

    #[test]
    fn a_size_outside_new_bounds_is_clamped() {
        let (t, mut a, t0) = (tuning(), Autoscaler::default(), Instant::now());
        assert_eq!(a.decide((2, 3), &t, load(1, 0, 0, 0), t0), 2);
        assert_eq!(a.decide((2, 3), &t, load(6, 0, 0, 0), t0), 3);
    }
}
