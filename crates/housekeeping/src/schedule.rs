//! The daemon's two timers: a prune pass every `housekeeping.interval` and a feed update every
//! `misp.feed_update_interval`, each on its own fixed grid.
//!
//! [`schedule`] takes the two jobs as closures that return futures, so tests drive it with paused time and
//! counters instead of a FortiGate and a MISP.
//!
//! Each timer is a `tokio::time::interval` with `MissedTickBehavior::Skip`. Rules, each tested below:
//! - A job first runs at once, then at `start + k·period`: the grid never moves, so the schedule does not drift
//!   by the length of the runs.
//! - A run that overruns its period does not cause a burst of catch-up runs: the slots it missed collapse into one
//!   run, right after it returns, and the job is back on its grid from the next slot on.
//! - The two timers are independent: a slow prune pass does not delay the feed update, and the reverse.
//! - Once `shutdown` is cancelled no run starts; a run under way gets the token itself (the jobs capture it) and
//!   decides how to stop (the prune pass stops between two removals).

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often each job runs. `feed: None` disables the feed update (`feed_update_interval = "0s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    pub prune: Duration,
    pub feed: Option<Duration>,
}

/// Runs `prune` and `feed` on their grids until `shutdown` is cancelled and the runs under way have returned.
pub async fn schedule<P, PF, F, FF>(prune: P, feed: F, intervals: Intervals, shutdown: &CancellationToken)
where
    P: FnMut() -> PF,
    PF: Future<Output = ()>,
    F: FnMut() -> FF,
    FF: Future<Output = ()>,
{
    let feed_timer = async {
        if let Some(period) = intervals.feed {
            every(period, feed, shutdown).await;
        }
    };
    tokio::join!(every(intervals.prune, prune, shutdown), feed_timer);
}

/// One timer: runs `job` at once, then on the grid `start + k·period`, skipping the slots a long run missed.
async fn every<J, Fut>(period: Duration, mut job: J, shutdown: &CancellationToken)
where
    J: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    // A zero period would panic in `interval`; the config refuses it, this keeps the function total.
    let mut timer = tokio::time::interval(period.max(Duration::from_millis(1)));
    timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
        job().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Start times of a job's runs, in hours since the schedule started (fractions kept).
    #[derive(Clone, Default)]
    struct Runs(Arc<Mutex<Vec<f64>>>);

    impl Runs {
        fn note(&self, start: Instant) {
            self.0.lock().unwrap().push(start.elapsed().as_secs_f64() / 3600.0);
        }
        fn get(&self) -> Vec<f64> {
            self.0.lock().unwrap().clone()
        }
    }

    /// Runs the schedule for `run_for`, each job sleeping for its `took(run index)`; returns the run start times.
    async fn check(
        intervals: Intervals,
        prune_took: fn(usize) -> Duration,
        feed_took: fn(usize) -> Duration,
        run_for: Duration,
    ) -> (Vec<f64>, Vec<f64>) {
        let (prunes, feeds) = (Runs::default(), Runs::default());
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let task = {
            let (prunes, feeds, shutdown) = (prunes.clone(), feeds.clone(), shutdown.clone());
            tokio::spawn(async move {
                let (p, f) = (prunes.clone(), feeds.clone());
                schedule(
                    move || {
                        let p = p.clone();
                        async move {
                            let n = p.get().len();
                            p.note(start);
                            tokio::time::sleep(prune_took(n)).await;
                        }
                    },
                    move || {
                        let f = f.clone();
                        async move {
                            let n = f.get().len();
                            f.note(start);
                            tokio::time::sleep(feed_took(n)).await;
                        }
                    },
                    intervals,
                    &shutdown,
                )
                .await;
            })
        };
        tokio::time::sleep(run_for).await;
        shutdown.cancel();
        task.await.expect("schedule task does not panic");
        (prunes.get(), feeds.get())
    }

    fn instant(_: usize) -> Duration {
        Duration::ZERO
    }

    fn hours(n: usize) -> Vec<f64> {
        (0..n).map(|h| h as f64).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_job_runs_once_per_interval_from_the_start() {
        let intervals = Intervals { prune: HOUR, feed: Some(12 * HOUR) };
        // Just under two days: 48 prune slots (0 h .. 47 h), 4 feed slots (0, 12, 24, 36 h).
        let (prunes, feeds) = check(intervals, instant, instant, 48 * HOUR - Duration::from_secs(1)).await;
        assert_eq!(prunes, hours(48));
        assert_eq!(feeds, vec![0.0, 12.0, 24.0, 36.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_do_not_drift_by_their_length() {
        let intervals = Intervals { prune: HOUR, feed: Some(HOUR) };
        let twenty_minutes = |_| Duration::from_secs(1200);
        let (prunes, feeds) = check(intervals, twenty_minutes, twenty_minutes, 10 * HOUR - HOUR / 2).await;
        assert_eq!(prunes, hours(10));
        assert_eq!(feeds, hours(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_pass_skips_missed_slots_without_a_burst_or_delaying_the_feed() {
        let intervals = Intervals { prune: HOUR, feed: Some(HOUR) };
        // The first pass takes 2.5 h: slots 1 h and 2 h collapse into one run at 2.5 h, then the grid (3 h, ...).
        let slow_first = |n| if n == 0 { HOUR * 5 / 2 } else { Duration::ZERO };
        let (prunes, feeds) = check(intervals, slow_first, instant, 6 * HOUR - HOUR / 2).await;
        assert_eq!(prunes, vec![0.0, 2.5, 3.0, 4.0, 5.0]);
        assert_eq!(feeds, hours(6), "the feed timer is not held up by the prune pass");
    }

    #[tokio::test(start_paused = true)]
    async fn a_very_long_pass_is_followed_by_one_run_not_a_burst() {
        let intervals = Intervals { prune: HOUR, feed: None };
        // Ten missed slots: one run when the long pass returns, none of the others.
        let very_slow_first = |n| if n == 0 { HOUR * 21 / 2 } else { Duration::ZERO };
        let (prunes, _) = check(intervals, very_slow_first, instant, 13 * HOUR - HOUR / 2).await;
        assert_eq!(prunes, vec![0.0, 10.5, 11.0, 12.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_ending_exactly_on_a_slot_keeps_that_slot() {
        let intervals = Intervals { prune: HOUR, feed: None };
        let one_hour = |n| if n == 0 { HOUR } else { Duration::ZERO };
        let (prunes, feeds) = check(intervals, one_hour, instant, 3 * HOUR - HOUR / 2).await;
        assert_eq!(prunes, vec![0.0, 1.0, 2.0]);
        assert!(feeds.is_empty(), "feed_update_interval = 0s disables the feed update");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_starts_no_new_run_and_waits_for_the_one_under_way() {
        let shutdown = CancellationToken::new();
        let runs = Runs::default();
        let start = Instant::now();
        let task = {
            let (runs, shutdown) = (runs.clone(), shutdown.clone());
            tokio::spawn(async move {
                let token = shutdown.clone();
                schedule(
                    || {
                        let (runs, token) = (runs.clone(), token.clone());
                        async move {
                            runs.note(start);
                            // A pass that notices the token and stops early, as the prune pass does.
                            tokio::select! {
                                _ = token.cancelled() => tokio::time::sleep(Duration::from_secs(2)).await,
                                _ = tokio::time::sleep(HOUR / 2) => {}
                            }
                        }
                    },
                    || async {},
                    Intervals { prune: HOUR, feed: Some(HOUR) },
                    &shutdown,
                )
                .await;
                start.elapsed()
            })
        };
        tokio::time::sleep(HOUR + Duration::from_secs(60)).await;
        shutdown.cancel();
        let stopped_after = task.await.expect("schedule task does not panic");
        assert_eq!(runs.get(), vec![0.0, 1.0]);
        assert_eq!(stopped_after, HOUR + Duration::from_secs(62), "returns when the run under way has stopped");
    }
}
