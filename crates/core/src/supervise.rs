//! Supervision of a daemon's long-running tasks: no task dies silently.
//!
//! A task that panics or returns before shutdown began has *died*. What happens then is decided per task, when it
//! is spawned:
//! - [`Supervisor::restarting`]: tasks that hold nothing the daemon cannot rebuild (a syslog listener, the mirror,
//!   journal pruning) are run again after a capped, jittered backoff ([`RESTART_BACKOFF`]), logged at `error`
//!   with the task's name and counted as a restart in [`Health`]. The daemon stays healthy meanwhile.
//! - [`Supervisor::fatal`]: tasks that own state (the decider's per-address state, the blocker's queue) are not
//!   restarted: their death is logged at `error` naming the task, marks the task `failed` in [`Health`]
//!   (`/healthz` answers 503), and fires [`Supervisor::failed`], on which the daemon runs its orderly shutdown
//!   and exits non-zero. Whatever was pending stays in the journal for the next start.
//! - [`Supervisor::pass`]: one run of a periodic job (housekeeping's prune pass, feed update). A panic is caught,
//!   logged and counted as a restart; the job's timer runs it again at its next slot.
//!
//! [`Faults`] is a test hook that exists in debug builds only (`cfg(debug_assertions)`; release builds have
//! neither the hook nor the option that sets it): it makes a named task panic on demand, when a file
//! `panic-<task>` appears in a directory given on the command line. The supervisor injects the panic around the
//! task's future, so the task's own code carries no test branch.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::backoff::Backoff;
use crate::metrics::{Health, TaskState};

/// Wait before restarting a task that died: 1 s, doubling up to 60 s, jittered.
pub const RESTART_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// A task that ran this long before dying starts its backoff afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(300);

/// Why a task died.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Death {
    /// It panicked; the panic's message.
    #[error("panicked: {0}")]
    Panicked(String),
    /// It returned although shutdown had not begun.
    #[error("ended before shutdown")]
    EndedEarly,
}

/// Spawns nothing itself: it wraps task futures so their death is seen, reported and acted on. Cheap to clone;
/// every clone shares the same health and the same "a fatal task died" signal.
#[derive(Clone)]
pub struct Supervisor {
    health: Health,
    faults: Faults,
    /// Cancelled when shutdown begins: a task that returns after this has not died.
    stopping: CancellationToken,
    /// Cancelled when a fatal task dies.
    failed: CancellationToken,
    first_failed: Arc<Mutex<Option<&'static str>>>,
}

impl Supervisor {
    pub fn new(health: Health, faults: Faults) -> Supervisor {
        Supervisor {
            health,
            faults,
            stopping: CancellationToken::new(),
            failed: CancellationToken::new(),
            first_failed: Arc::new(Mutex::new(None)),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Shutdown began: `/healthz` turns 503 and tasks that return from now on have not died.
    pub fn begin_shutdown(&self) {
        self.health.set_stopping();
        self.stopping.cancel();
    }

    /// Resolves once a fatal task has died, with its name (the first one, if several did).
    pub async fn failed(&self) -> &'static str {
        self.failed.cancelled().await;
        self.failed_task().expect("the failed token is cancelled only after the task is recorded")
    }

    /// The first fatal task that died, if any.
    pub fn failed_task(&self) -> Option<&'static str> {
        *self.first_failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wraps a task whose death is fatal. The future yields the task's output, or `None` when it panicked.
    pub fn fatal<T, F>(&self, name: &'static str, task: F) -> impl Future<Output = Option<T>> + Send + 'static
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        self.health.set_task(name, TaskState::Running);
        let this = self.clone();
        async move {
            let outcome = guarded(name, task, &this.faults).await;
            match outcome {
                Ok(value) if this.stopping.is_cancelled() || this.failed.is_cancelled() => {
                    // Ending in shutdown, or because another fatal task died first (its input closed): not a
                    // death of its own.
                    this.health.set_task(name, TaskState::Stopped);
                    Some(value)
                }
                Ok(value) => {
                    this.fail(name, Death::EndedEarly);
                    Some(value)
                }
                Err(death) => {
                    this.fail(name, death);
                    None
                }
            }
        }
    }

    fn fail(&self, name: &'static str, death: Death) {
        error!(message = "Task died; shutting down. Pending actions stay in the journal for the next start.",
               task = name, reason = %death);
        self.health.set_task(name, TaskState::Failed);
        self.first_failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(name);
        self.failed.cancel();
    }

    /// Wraps a task that is run again, after [`RESTART_BACKOFF`], whenever it dies, until `stop` is cancelled or
    /// shutdown begins. `make` builds a fresh run of the task each time; the task watches `stop` itself (so it
    /// can end cleanly) and its return after `stop` is not a death.
    pub fn restarting<F, Fut>(
        &self,
        name: &'static str,
        stop: CancellationToken,
        mut make: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.health.set_task(name, TaskState::Running);
        let this = self.clone();
        async move {
            let mut attempt = 0u32;
            loop {
                let started = Instant::now();
                let outcome = guarded(name, make(), &this.faults).await;
                if stop.is_cancelled() || this.stopping.is_cancelled() {
                    this.health.set_task(name, TaskState::Stopped);
                    return;
                }
                let death = outcome.err().unwrap_or(Death::EndedEarly);
                attempt = if started.elapsed() >= STABLE_AFTER { 1 } else { attempt + 1 };
                let wait = RESTART_BACKOFF.delay(attempt);
                error!(message = "Task died; restarting it.", task = name, reason = %death, restart_in = ?wait);
                this.health.set_task(name, TaskState::Restarting);
                tokio::select! {
                    _ = stop.cancelled() => {
                        this.health.set_task(name, TaskState::Stopped);
                        return;
                    }
                    _ = this.stopping.cancelled() => {
                        this.health.set_task(name, TaskState::Stopped);
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                this.health.set_task(name, TaskState::Running);
            }
        }
    }

    /// Runs one pass of a periodic job. A panic is caught and logged, counted as a restart in [`Health`], and
    /// returned as `Err`: the job's timer runs it again at its next slot.
    ///
    /// # Errors
    /// [`Death::Panicked`] when the pass panicked.
    pub async fn pass<T, F>(&self, name: &'static str, pass: F) -> Result<T, Death>
    where
        F: Future<Output = T>,
    {
        match guarded(name, pass, &self.faults).await {
            Ok(value) => {
                self.health.set_task(name, TaskState::Running);
                Ok(value)
            }
            Err(death) => {
                error!(message = "Job panicked; it runs again at its next slot.", task = name, reason = %death);
                self.health.set_task(name, TaskState::Restarting);
                Err(death)
            }
        }
    }
}

/// Runs `task` to completion, catching a panic (and, in debug builds, injecting one on demand).
async fn guarded<T, F: Future<Output = T>>(name: &'static str, task: F, faults: &Faults) -> Result<T, Death> {
    let task = faults.inject(name, task);
    AssertUnwindSafe(task).catch_unwind().await.map_err(|payload| Death::Panicked(panic_message(&*payload)))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Test hook: makes a named task panic on demand. Does nothing in release builds, where it cannot be set.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    #[cfg(debug_assertions)]
    dir: Option<std::path::PathBuf>,
}

impl Faults {
    /// No faults: what the daemons run with unless a debug build is given the option.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Debug builds only: a task named `NAME` panics once file `dir/panic-NAME` exists (the file is removed
    /// first, so it panics once per file written).
    #[cfg(debug_assertions)]
    pub fn panic_on_file(dir: std::path::PathBuf) -> Faults {
        Faults { dir: Some(dir) }
    }

    #[cfg(not(debug_assertions))]
    fn inject<F: Future>(&self, _name: &'static str, task: F) -> impl Future<Output = F::Output> {
        task
    }

    #[cfg(debug_assertions)]
    fn inject<F: Future>(&self, name: &'static str, task: F) -> impl Future<Output = F::Output> {
        let trigger = self.dir.as_ref().map(|dir| dir.join(format!("panic-{name}")));
        async move {
            let Some(trigger) = trigger else { return task.await };
            let fired = async {
                let mut every = tokio::time::interval(Duration::from_millis(50));
                loop {
                    every.tick().await;
                    if std::fs::remove_file(&trigger).is_ok() {
                        return;
                    }
                }
            };
            tokio::select! {
                biased;
                () = fired => panic!("injected panic in task {name} (test hook)"),
                value = task => value,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::TaskHealth;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn state(s: &Supervisor, name: &str) -> Option<TaskHealth> {
        s.health().report(0, 0).tasks.get(name).copied()
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_comes_back_after_a_panic_or_an_early_end() {
        let s = Supervisor::new(Health::default(), Faults::none());
        let runs = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = {
            let (runs, own_stop) = (runs.clone(), stop.clone());
            tokio::spawn(s.restarting("udp", stop.clone(), move || {
                let (runs, tx, own_stop) = (runs.clone(), tx.clone(), own_stop.clone());
                async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst);
                    tx.send(n).unwrap();
                    match n {
                        0 => panic!("boom"),
                        1 => {} // ends early
                        _ => own_stop.cancelled().await,
                    }
                }
            }))
        };
        for want in 0..3 {
            assert_eq!(rx.recv().await, Some(want));
        }
        assert_eq!(state(&s, "udp"), Some(TaskHealth { state: TaskState::Running, restarts: 2 }));
        assert!(s.health().is_healthy(), "a restarted task keeps the daemon healthy");
        assert!(s.failed_task().is_none());
        stop.cancel();
        task.await.unwrap();
        assert_eq!(state(&s, "udp").map(|t| t.state), Some(TaskState::Stopped));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarting_task_waits_out_its_backoff() {
        let s = Supervisor::new(Health::default(), Faults::none());
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let stop = CancellationToken::new();
        let starts2 = starts.clone();
        let task = tokio::spawn(s.restarting("mirror", stop.clone(), move || {
            starts2.lock().unwrap().push(t0.elapsed());
            async {}
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
        task.await.unwrap();
        let starts = starts.lock().unwrap().clone();
        // Waits of [0.5, 1], [1, 2], [2, 4], [4, 8] s: at most five runs in ten seconds, not a spin.
        assert!((4..=5).contains(&starts.len()), "{starts:?}");
        for (i, pair) in starts.windows(2).enumerate() {
            let ceiling = RESTART_BACKOFF.ceiling(i as u32 + 1);
            let gap = pair[1] - pair[0];
            assert!(gap >= ceiling / 2 && gap <= ceiling, "restart {i}: {gap:?}");
        }
    }

    #[tokio::test]
    async fn a_fatal_task_that_dies_turns_unhealthy_and_fires_failed() {
        let s = Supervisor::new(Health::default(), Faults::none());
        let blocker = tokio::spawn(s.fatal("blocker", std::future::pending::<()>()));
        let decider = tokio::spawn(s.fatal("decider", async { panic!("boom") }));
        assert_eq!(s.failed().await, "decider");
        assert_eq!(decider.await.unwrap(), None);
        assert!(!s.health().is_healthy());
        let report = s.health().report(0, 0);
        assert_eq!(report.status, "failed");
        assert_eq!(report.tasks["decider"].state, TaskState::Failed);
        assert_eq!(report.tasks["blocker"].state, TaskState::Running);
        blocker.abort();
    }

    #[tokio::test]
    async fn a_fatal_task_ending_early_is_a_death_but_not_in_shutdown() {
        let s = Supervisor::new(Health::default(), Faults::none());
        assert_eq!(s.fatal("decider", async { 7 }).await, Some(7));
        assert_eq!(s.failed_task(), Some("decider"));
        assert_eq!(s.health().report(0, 0).tasks["decider"].state, TaskState::Failed);

        let s = Supervisor::new(Health::default(), Faults::none());
        s.begin_shutdown();
        assert_eq!(s.fatal("decider", async { 7 }).await, Some(7));
        assert_eq!(s.failed_task(), None);
        let report = s.health().report(0, 0);
        assert_eq!((report.status, report.tasks["decider"].state), ("stopping", TaskState::Stopped));
    }

    #[tokio::test]
    async fn a_panicking_pass_is_reported_and_the_next_one_runs() {
        let s = Supervisor::new(Health::default(), Faults::none());
        let first: Result<(), Death> = s.pass("prune", async { panic!("bad row") }).await;
        assert_eq!(first, Err(Death::Panicked("bad row".into())));
        assert_eq!(s.pass("prune", async { 3 }).await, Ok(3));
        assert_eq!(state(&s, "prune"), Some(TaskHealth { state: TaskState::Running, restarts: 1 }));
        assert!(s.health().is_healthy());
    }

    #[cfg(debug_assertions)]
    #[tokio::test]
    async fn the_test_hook_panics_the_named_task_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Supervisor::new(Health::default(), Faults::panic_on_file(dir.path().to_path_buf()));
        std::fs::write(dir.path().join("panic-decider"), "").unwrap();
        let other = s.pass("prune", async { 1 }).await;
        assert_eq!(other, Ok(1), "another task is not touched");
        let hit = s.fatal("decider", std::future::pending::<()>()).await;
        assert_eq!(hit, None);
        assert!(!dir.path().join("panic-decider").exists(), "the trigger is consumed");
    }

    #[test]
    fn mirror_age_is_reported_not_judged() {
        let h = Health::default();
        h.set_task("mirror", TaskState::Running);
        let report = h.report(1_000, 4_600);
        assert_eq!(report.mirror_age_seconds, Some(3_600));
        assert!(report.is_healthy(), "a stale mirror is not a reason to restart the daemon");
        assert_eq!(h.report(0, 4_600).mirror_age_seconds, None, "never synced");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "ok", "tasks": {"mirror": {"state": "running", "restarts": 0}},
                               "mirror_age_seconds": 3600})
        );
    }
}
