//! Several instances on one PostgreSQL journal (issue 16): which instance may write to each FortiGate target,
//! and which one runs a cluster-wide job. The rules are [`crate::lease`] (pure); this module holds the state the
//! daemons read and the thread that talks to PostgreSQL.
//!
//! Every instance receives every line, decides and journals (the store deduplicates: one pending action per
//! target, kind and address). Only the *leader* of a target executes that target's actions: its blocker asks
//! [`Gate::window`] before starting each FortiGate write, and gives the write no longer than the window left.
//!
//! # Layout
//! - here: [`Leadership`], the handle the daemons hold (a solo journal on SQLite has one that always allows
//!   writes), [`Gate`] per target, [`JobGuard`] for a cluster-wide job, and [`Window`].
//! - `keeper`: the thread that owns a connection of its own (a lease renewal never waits behind journal writes),
//!   grants and renews the leases every `renew_every`, keeps this instance's row in `instances`, and releases
//!   everything at shutdown so a stopped leader's targets move at once.
//! - `status`: what `integration cluster status` reads.

mod keeper;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config;
use crate::journal::PostgresTarget;
use crate::lease::{Lease, Timings};

/// Whether this instance may start a write to a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// No cluster (a SQLite journal): this instance is the only writer.
    Solo,
    /// This instance leads the target: a write may start, and must end within `left`. No write may start after
    /// `closes_in` (then less than the shortest write window is left): the blocker looks again at that moment.
    Leader { epoch: i64, left: Duration, closes_in: Duration },
    /// Another instance leads it, or this one's lease ran out: no write.
    Follower,
}

impl Window {
    /// True when a write may start.
    pub fn allows_writes(self) -> bool {
        !matches!(self, Window::Follower)
    }

    /// How long until this window closes by itself (`None`: not a leader's window); a cut-off leader's role
    /// changes then, with no answer from the store to wake it.
    pub fn closes_in(self) -> Option<Duration> {
        match self {
            Window::Leader { closes_in, .. } => Some(closes_in),
            Window::Solo | Window::Follower => None,
        }
    }

    /// The longest a write started now may take (`None`: no limit).
    pub fn limit(self) -> Option<Duration> {
        match self {
            Window::Leader { left, .. } => Some(left),
            Window::Solo | Window::Follower => None,
        }
    }
}

/// Who this instance is in the cluster: its row in `instances` and the holder of its leases.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Unique per process: `name:pid:random`.
    pub id: String,
    pub name: String,
    /// `integration` or `housekeeping`.
    pub role: &'static str,
}

impl Identity {
    pub fn new(name: &str, role: &'static str) -> Identity {
        let id = format!("{name}:{}:{:08x}", std::process::id(), rand::random::<u32>());
        Identity { id, name: name.to_owned(), role }
    }
}

/// The leases this instance holds or asks for, shared between the keeper thread and the daemon's tasks.
struct Shared {
    identity: Identity,
    timings: Timings,
    leases: Mutex<HashMap<String, Lease>>,
    /// Bumped by the keeper after each round of answers (a gate wakes up and looks again).
    rounds: watch::Sender<u64>,
    requests: std::sync::mpsc::Sender<keeper::Request>,
}

impl Shared {
    fn window(&self, name: &str) -> Window {
        let leases = self.leases.lock().expect("lease map lock");
        match leases.get(name).and_then(|lease| lease.write_window(Instant::now())) {
            Some((epoch, left)) => {
                Window::Leader { epoch, left, closes_in: left.saturating_sub(self.timings.min_window) }
            }
            None => Window::Follower,
        }
    }
}

/// The handle the daemons hold: cheap to clone. Solo (no cluster) or backed by a keeper thread.
#[derive(Clone)]
pub struct Leadership {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.shared {
            None => f.write_str("Leadership::Solo"),
            Some(shared) => f.debug_struct("Leadership").field("id", &shared.identity.id).finish(),
        }
    }
}

impl Leadership {
    /// No cluster: every window is [`Window::Solo`] and every job runs.
    pub fn solo() -> Leadership {
        Leadership { shared: None }
    }

    /// The leadership `[state]` and `[cluster]` call for: solo on SQLite, else a keeper thread on PostgreSQL
    /// asking for the leases of `targets` (the names of the FortiGate targets this process writes to; none for
    /// housekeeping, which takes job leases only).
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    pub fn from_config(
        state: &config::State,
        cluster: Option<&config::Cluster>,
        role: &'static str,
        targets: Vec<String>,
    ) -> Leadership {
        match (&state.postgres, cluster) {
            (Some(target), Some(cluster)) => {
                Leadership::start(target.clone(), Identity::new(&cluster.name, role), cluster.timings, targets)
            }
            _ => Leadership::solo(),
        }
    }

    /// Starts the keeper thread for `identity` on the database `target` names.
    ///
    /// # Panics
    /// If the operating system refuses to start a thread.
    pub fn start(target: PostgresTarget, identity: Identity, timings: Timings, targets: Vec<String>) -> Leadership {
        let (requests, inbox) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            identity,
            timings,
            leases: Mutex::new(targets.iter().map(|t| (t.clone(), Lease::new(timings))).collect()),
            rounds: watch::channel(0).0,
            requests,
        });
        let keeper = keeper::Keeper::new(target, shared.clone(), targets);
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || keeper.run(inbox))
            .expect("the cluster keeper thread starts");
        Leadership { shared: Some(shared) }
    }

    /// True on a PostgreSQL journal.
    pub fn is_clustered(&self) -> bool {
        self.shared.is_some()
    }

    /// This instance's identity (`None` when solo).
    pub fn identity(&self) -> Option<&Identity> {
        self.shared.as_ref().map(|s| &s.identity)
    }

    /// Whether a write to `name` may start now.
    pub fn window(&self, name: &str) -> Window {
        match &self.shared {
            None => Window::Solo,
            Some(shared) => shared.window(name),
        }
    }

    /// The gate of one target, for its blocker.
    pub fn gate(&self, name: &str) -> Gate {
        Gate {
            name: Arc::from(name),
            rounds: self.shared.as_ref().map(|s| s.rounds.subscribe()),
            leadership: self.clone(),
        }
    }

    /// Waits until the keeper has had its first round of answers (or `timeout`), so that start-up work meant
    /// for the leader only (creating the block groups) knows who leads. Solo: at once.
    pub async fn settled(&self, timeout: Duration) {
        let Some(shared) = &self.shared else { return };
        let mut rounds = shared.rounds.subscribe();
        let _ = tokio::time::timeout(timeout, rounds.wait_for(|n| *n > 0)).await;
    }

    /// Takes the cluster-wide job `name` (`job:prune`, `job:feeds`) if no instance holds it and none started it
    /// within `min_gap`: the timers of several instances then run it once per cycle. Solo: always granted.
    /// `None`: another instance has it (or ran it lately), or PostgreSQL did not answer (then nobody can be
    /// granted it either, and the next cycle tries again).
    pub async fn job(&self, name: &str, min_gap: Duration) -> Option<JobGuard> {
        let Some(shared) = &self.shared else {
            return Some(JobGuard { name: name.to_owned(), leadership: self.clone() });
        };
        let (reply, answer) = oneshot::channel();
        let request = keeper::Request::Job { name: name.to_owned(), min_gap, reply };
        shared.requests.send(request).ok()?;
        answer.await.ok()?.then(|| JobGuard { name: name.to_owned(), leadership: self.clone() })
    }

    /// Gives every lease up (the blockers have stopped) and removes this instance from `instances`, so another
    /// instance leads at its next renewal instead of after the ttl. Waits at most `timeout`.
    pub async fn release(&self, timeout: Duration) {
        let Some(shared) = &self.shared else { return };
        let (reply, done) = oneshot::channel();
        if shared.requests.send(keeper::Request::Release { reply }).is_ok() {
            let _ = tokio::time::timeout(timeout, done).await;
        }
    }
}

/// One target's view of the leadership, for its blocker.
pub struct Gate {
    name: Arc<str>,
    leadership: Leadership,
    rounds: Option<watch::Receiver<u64>>,
}

impl Gate {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn window(&self) -> Window {
        self.leadership.window(&self.name)
    }

    pub fn is_clustered(&self) -> bool {
        self.leadership.is_clustered()
    }

    /// Resolves after the keeper's next round of answers; never when solo.
    pub async fn next_round(&mut self) {
        match &mut self.rounds {
            Some(rounds) => {
                if rounds.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// A cluster-wide job this instance runs; dropping it gives the job's lease up (the `min_gap` still holds).
pub struct JobGuard {
    name: String,
    leadership: Leadership,
}

impl JobGuard {
    /// Whether the job's lease still holds (a pass checks it before each write; solo: always).
    pub fn holds(&self) -> bool {
        self.leadership.window(&self.name).allows_writes()
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(shared) = &self.leadership.shared {
            let _ = shared.requests.send(keeper::Request::Drop { name: std::mem::take(&mut self.name) });
        }
    }
}

#[cfg(test)]
mod tests;
