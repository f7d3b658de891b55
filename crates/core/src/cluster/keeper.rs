//! The keeper: one thread with its own PostgreSQL connection that grants and renews this instance's leases.
//!
//! Every `renew_every` it sends one transaction: this instance's heartbeat in `instances` (and the removal of rows
//! silent for [`INSTANCE_FORGOTTEN_AFTER`]), then one `UPDATE` of
//! every lease it wants (its targets, and the jobs it holds) that succeeds for the rows it already holds or whose
//! holder's lease expired, on the store's clock. The rows the update returns are granted (an expired or foreign
//! row gets a new epoch); the others are held by someone else. No answer (a cut, a restart, a timeout) changes
//! nothing: a lease held runs out on its own deadline ([`crate::lease`]), before another instance can get it.
//!
//! Requests from the daemon (take a job, drop a job, release all at shutdown) arrive on a channel the loop waits
//! on between rounds.

use std::collections::BTreeSet;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Shared;
use crate::journal::PostgresTarget;
use crate::lease::{Answer, Lease};

/// How long after its last heartbeat an instance's row is deleted by the others (a killed instance never deletes
/// its own); until then `cluster status` shows it as gone.
pub(super) const INSTANCE_FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

/// What the daemon asks of the keeper.
pub(super) enum Request {
    /// Take job `name` if free and not started within `min_gap`; answers whether it was granted.
    Job { name: String, min_gap: Duration, reply: oneshot::Sender<bool> },
    /// Give job `name` up.
    Drop { name: String },
    /// Give everything up and end.
    Release { reply: oneshot::Sender<()> },
}

pub(super) struct Keeper {
    target: PostgresTarget,
    shared: Arc<Shared>,
    /// The targets' leases: always wanted.
    targets: Vec<String>,
    /// The jobs held: renewed until dropped.
    jobs: BTreeSet<String>,
    client: Option<Client>,
    /// The last failure was logged (one warning per outage, one note when it ends).
    failing: bool,
}

impl Keeper {
    pub(super) fn new(target: PostgresTarget, shared: Arc<Shared>, targets: Vec<String>) -> Keeper {
        Keeper { target, shared, targets, jobs: BTreeSet::new(), client: None, failing: false }
    }

    pub(super) fn run(mut self, inbox: Receiver<Request>) {
        let mut next = Instant::now();
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Request::Job { name, min_gap, reply }) => {
                    let granted = self.take_job(&name, min_gap);
                    let _ = reply.send(granted);
                }
                Ok(Request::Drop { name }) => {
                    self.jobs.remove(&name);
                    self.forget(&name);
                    self.give_up(&[name]);
                }
                Ok(Request::Release { reply }) => {
                    self.release_all();
                    let _ = reply.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let sent = Instant::now();
                    self.round(sent);
                    next = sent + self.shared.timings.renew_every;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.release_all();
                    return;
                }
            }
        }
    }

    /// One round: heartbeat, then grant or renew every lease wanted; the answers go to the shared map.
    fn round(&mut self, sent: Instant) {
        let wanted: Vec<String> = self.targets.iter().chain(&self.jobs).cloned().collect();
        let identity = self.shared.identity.clone();
        let ttl = self.shared.timings.ttl.as_secs_f64();
        let result = self.with_client(|client| {
            let mut tx = client.transaction()?;
            tx.execute(
                "INSERT INTO instances (id, name, role, host, pid, version, started_at, seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6, now(), now())
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                &[
                    &identity.id,
                    &identity.name,
                    &identity.role,
                    &host(),
                    &i64::from(std::process::id()),
                    &env!("CARGO_PKG_VERSION"),
                ],
            )?;
            // An instance that was killed never deletes its row: shown as gone in `cluster status`, then removed.
            tx.execute(
                "DELETE FROM instances WHERE seen_at < now() - make_interval(secs => $1)",
                &[&INSTANCE_FORGOTTEN_AFTER.as_secs_f64()],
            )?;
            tx.execute("INSERT INTO leases (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", &[&wanted])?;
            let rows = tx.query(
                "UPDATE leases SET holder = $1,
                     epoch = CASE WHEN holder = $1 AND expires_at >= now() THEN epoch ELSE epoch + 1 END,
                     expires_at = now() + make_interval(secs => $3), renewed_at = now()
                 WHERE name = ANY($2) AND (holder = $1 OR expires_at < now())
                 RETURNING name, epoch",
                &[&identity.id, &wanted, &ttl],
            )?;
            tx.commit()?;
            rows.iter().map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?))).collect()
        });
        let granted: Vec<(String, i64)> = match result {
            Ok(granted) => granted,
            Err(()) => {
                self.answer_all(&wanted, Answer::Unknown, sent);
                return;
            }
        };
        let mut changes = Vec::new();
        {
            let mut leases = self.shared.leases.lock().expect("lease map lock");
            let now = Instant::now();
            for name in &wanted {
                let answer = match granted.iter().find(|(n, _)| n == name) {
                    Some((_, epoch)) => Answer::Granted { epoch: *epoch },
                    None => Answer::Held,
                };
                let lease = leases.entry(name.clone()).or_insert_with(|| Lease::new(self.shared.timings));
                let was = lease.is_leader(now);
                lease.on_answer(answer, sent);
                if was != lease.is_leader(now) {
                    changes.push((name.clone(), !was, answer));
                }
            }
        }
        for (name, leads, answer) in changes {
            if leads {
                let epoch = match answer {
                    Answer::Granted { epoch } => epoch,
                    _ => 0,
                };
                info!(message = "Leading.", lease = %name, epoch, instance = %self.shared.identity.id);
            } else {
                info!(message = "Following: another instance leads.", lease = %name);
            }
        }
        self.shared.rounds.send_modify(|n| *n += 1);
    }

    /// Tries to take job `name`; on success it joins the leases renewed each round.
    fn take_job(&mut self, name: &str, min_gap: Duration) -> bool {
        let identity = self.shared.identity.id.clone();
        let ttl = self.shared.timings.ttl.as_secs_f64();
        let gap = min_gap.as_secs_f64();
        let sent = Instant::now();
        let result = self.with_client(|client| {
            client.execute("INSERT INTO leases (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&name])?;
            let row = client.query_opt(
                "UPDATE leases SET holder = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $3),
                     renewed_at = now(), started_at = now()
                 WHERE name = $2 AND expires_at < now()
                   AND (started_at IS NULL OR started_at <= now() - make_interval(secs => $4))
                 RETURNING epoch",
                &[&identity, &name, &ttl, &gap],
            )?;
            row.map(|row| row.try_get::<_, i64>(0)).transpose()
        });
        let answer = match result {
            Ok(Some(epoch)) => Answer::Granted { epoch },
            Ok(None) => Answer::Held,
            Err(()) => Answer::Unknown,
        };
        let mut leases = self.shared.leases.lock().expect("lease map lock");
        let lease = leases.entry(name.to_owned()).or_insert_with(|| Lease::new(self.shared.timings));
        lease.on_answer(answer, sent);
        let granted = matches!(answer, Answer::Granted { .. });
        drop(leases);
        if granted {
            self.jobs.insert(name.to_owned());
        }
        granted
    }

    /// Stops writing under every lease, then tells the store so the next instance need not wait for the ttl.
    fn release_all(&mut self) {
        let names: Vec<String> = self.targets.iter().chain(&self.jobs).cloned().collect();
        for name in &names {
            self.forget(name);
        }
        self.give_up(&names);
        let id = self.shared.identity.id.clone();
        let _ = self.with_client(|client| client.execute("DELETE FROM instances WHERE id = $1", &[&id]).map(drop));
        self.shared.rounds.send_modify(|n| *n += 1);
    }

    /// This instance stops counting on `name` (before the store hears of it).
    fn forget(&self, name: &str) {
        self.shared.leases.lock().expect("lease map lock").insert(name.to_owned(), Lease::new(self.shared.timings));
    }

    /// Expires the rows of `names` that this instance holds.
    fn give_up(&mut self, names: &[String]) {
        let id = self.shared.identity.id.clone();
        let _ = self.with_client(|client| {
            client
                .execute(
                    "UPDATE leases SET expires_at = '-infinity' WHERE holder = $1 AND name = ANY($2)",
                    &[&id, &names],
                )
                .map(drop)
        });
    }

    fn answer_all(&self, names: &[String], answer: Answer, sent: Instant) {
        let mut leases = self.shared.leases.lock().expect("lease map lock");
        for name in names {
            leases.entry(name.clone()).or_insert_with(|| Lease::new(self.shared.timings)).on_answer(answer, sent);
        }
    }

    /// Runs `call` on the connection (connecting first); a failure drops the connection and is logged once per
    /// outage. `Err(())`: no answer.
    fn with_client<T>(&mut self, call: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> Result<T, ()> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            match self.target.connect() {
                Ok(client) => self.client = Some(client),
                Err(error) => {
                    self.report(&error.to_string());
                    return Err(());
                }
            }
        }
        let client = self.client.as_mut().expect("connected above");
        match call(client) {
            Ok(value) => {
                if std::mem::take(&mut self.failing) {
                    info!(message = "Cluster store reachable again; leases renewed.");
                }
                Ok(value)
            }
            Err(error) => {
                self.client = None;
                let error = crate::journal::Error::Postgres { at: self.target.location().to_owned(), source: error };
                self.report(&error.to_string());
                Err(())
            }
        }
    }

    fn report(&mut self, error: &str) {
        if !std::mem::replace(&mut self.failing, true) {
            warn!(
                message = "Cluster store unreachable: leases are not renewed, so this instance stops writing to the FortiGates when they run out.",
                error,
            );
        }
    }
}

/// This host's name, for `instances`.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}
