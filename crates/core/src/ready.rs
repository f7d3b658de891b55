//! Readiness (`/readyz`): whether the daemon can do its job now, which liveness (`/healthz`) does not say.
//!
//! A daemon is *alive* when none of its tasks died for good; it is *ready* when, in addition:
//! - `misp`: MISP answered the last probe (`/servers/getVersion`), and that probe is recent;
//! - `fortigate`: the FortiGate answered the last probe (`monitor/system/status`) with our token accepted, and no
//!   write was refused with 401/403 since (then writes are paused, see the blocker);
//! - `journal`: the journal writes to its file (not degraded to memory);
//! - `mirror` (only with a mirror, `sync_interval` > 0): the mirror has synced, and not longer ago than
//!   [`Readiness::with_mirror`]'s bound.
//!
//! [`probe`] is the I/O: it asks both servers every [`PROBE_EVERY`], and backs off to [`REFUSED_PAUSE`] on a
//! FortiGate that refuses the token, so that readiness never adds to an admin lockout. [`Readiness::report`] is the
//! pure evaluation behind `/readyz`: JSON naming every check and what fails, 200 when all pass, 503 otherwise.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::{fortigate, misp};

/// How often MISP and the FortiGate are probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// A probe answer older than this no longer counts (the probe task is stuck or dead).
pub const STALE_AFTER: Duration = Duration::from_secs(120);
/// Wait after the FortiGate refused the token before probing it again (each refusal counts toward a lockout).
pub const REFUSED_PAUSE: Duration = Duration::from_secs(300);

/// One probe's last answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    ok: bool,
    detail: String,
    /// Unix time of the answer.
    at: i64,
}

/// One check in the `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    pub ok: bool,
    /// What was found; for a failing check, what fails.
    pub detail: String,
}

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadyReport {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Names of the failing checks, for a quick look.
    pub failing: Vec<&'static str>,
    pub checks: BTreeMap<&'static str, CheckReport>,
}

impl ReadyReport {
    pub fn is_ready(&self) -> bool {
        self.failing.is_empty()
    }
}

/// What `/readyz` reports; shared by the probe task and the metrics server.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Arc<Mutex<BTreeMap<&'static str, Probe>>>,
    /// With a mirror: the oldest last sync that still counts as fresh.
    mirror_max_age: Option<Duration>,
    /// Servers this daemon talks to (a probe not answered yet fails the check).
    servers: Vec<&'static str>,
}

impl Readiness {
    /// Readiness over MISP, the FortiGate and the journal.
    pub fn new() -> Self {
        Readiness { servers: vec!["misp", "fortigate"], ..Readiness::default() }
    }

    /// Adds the mirror check: its last good sync must be at most `max_age` old.
    pub fn with_mirror(mut self, max_age: Duration) -> Self {
        self.mirror_max_age = Some(max_age);
        self
    }

    /// Records a probe's answer at Unix time `at`.
    pub fn record(&self, server: &'static str, ok: bool, detail: impl Into<String>, at: i64) {
        let probe = Probe { ok, detail: detail.into(), at };
        self.probes.lock().unwrap_or_else(|p| p.into_inner()).insert(server, probe);
    }

    /// The `/readyz` body at Unix time `now`, from the probes and the metrics (journal degraded, mirror last sync,
    /// FortiGate refusal).
    pub fn report(&self, metrics: &Metrics, now: i64) -> ReadyReport {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut checks = BTreeMap::new();
        for server in &self.servers {
            let check = match probes.get(server) {
                None => CheckReport { ok: false, detail: "not checked yet".into() },
                Some(p) if now - p.at > STALE_AFTER.as_secs() as i64 => {
                    CheckReport { ok: false, detail: format!("no probe answer for {}s", now - p.at) }
                }
                Some(p) => CheckReport { ok: p.ok, detail: p.detail.clone() },
            };
            checks.insert(*server, check);
        }
        if metrics.fortigate_unauthorized.get() != 0 {
            checks.insert(
                "fortigate",
                CheckReport {
                    ok: false,
                    detail: "the FortiGate refused our token (401/403); writes are paused. Check the API token and \
                             trusted hosts"
                        .into(),
                },
            );
        }
        let degraded = metrics.journal_degraded.get() != 0;
        checks.insert(
            "journal",
            CheckReport {
                ok: !degraded,
                detail: if degraded {
                    "the journal file refuses writes; actions are kept in memory only".into()
                } else {
                    "writing to its file".into()
                },
            },
        );
        if let Some(max_age) = self.mirror_max_age {
            let last = metrics.mirror_last_sync.get();
            let check = if last <= 0 {
                CheckReport { ok: false, detail: "the first sync has not completed".into() }
            } else if now - last > max_age.as_secs() as i64 {
                CheckReport {
                    ok: false,
                    detail: format!("last good sync {}s ago (at most {}s)", now - last, max_age.as_secs()),
                }
            } else {
                CheckReport { ok: true, detail: format!("synced {}s ago", (now - last).max(0)) }
            };
            checks.insert("mirror", check);
        }
        let failing: Vec<&'static str> = checks.iter().filter(|(_, c)| !c.ok).map(|(name, _)| *name).collect();
        ReadyReport { status: if failing.is_empty() { "ready" } else { "not_ready" }, failing, checks }
    }
}

/// Probes MISP and the FortiGate every [`PROBE_EVERY`] until `shutdown`, recording each answer.
pub async fn probe(
    misp: Arc<misp::Client>,
    fortigate: Arc<fortigate::Client>,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut fortigate_next = tokio::time::Instant::now();
    loop {
        let now = || chrono::Utc::now().timestamp();
        match misp.version().await {
            Ok(v) => readiness.record("misp", true, format!("version {}", v.version), now()),
            Err(error) => readiness.record("misp", false, error.to_string(), now()),
        }
        // A token the FortiGate refused (here or on a write) is not tried again before the pause ends.
        if metrics.fortigate_unauthorized.get() == 0 && tokio::time::Instant::now() >= fortigate_next {
            match fortigate.system_status().await {
                Ok(status) => readiness.record("fortigate", true, format!("version {}", status.version), now()),
                Err(error) => {
                    if error.is_fatal() {
                        fortigate_next = tokio::time::Instant::now() + REFUSED_PAUSE;
                    }
                    readiness.record("fortigate", false, error.to_string(), now());
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(report: &ReadyReport) -> Vec<&'static str> {
        report.failing.clone()
    }

    /// Each check fails on its own cause and names it; all pass → ready.
    #[test]
    fn each_check_fails_on_its_own_cause() {
        let metrics = Metrics::new();
        let now = 1_000_000;
        let ready = Readiness::new().with_mirror(Duration::from_secs(600));
        assert_eq!(names(&ready.report(&metrics, now)), ["fortigate", "mirror", "misp"], "nothing probed yet");

        ready.record("misp", true, "version 2.5", now);
        ready.record("fortigate", true, "version v7.4.4", now);
        metrics.mirror_last_sync.set(now - 60);
        let report = ready.report(&metrics, now);
        assert!(report.is_ready(), "{report:?}");
        assert_eq!(report.status, "ready");

        ready.record("misp", false, "connection refused", now);
        assert_eq!(names(&ready.report(&metrics, now)), ["misp"]);
        assert_eq!(ready.report(&metrics, now).checks["misp"].detail, "connection refused");
        ready.record("misp", true, "version 2.5", now);

        metrics.fortigate_unauthorized.set(1);
        assert_eq!(names(&ready.report(&metrics, now)), ["fortigate"]);
        metrics.fortigate_unauthorized.set(0);

        metrics.journal_degraded.set(1);
        assert_eq!(names(&ready.report(&metrics, now)), ["journal"]);
        metrics.journal_degraded.set(0);

        metrics.mirror_last_sync.set(now - 601);
        assert_eq!(names(&ready.report(&metrics, now)), ["mirror"]);
        metrics.mirror_last_sync.set(now);

        // A probe answer that stopped coming is not an answer.
        let later = now + STALE_AFTER.as_secs() as i64 + 1;
        metrics.mirror_last_sync.set(later);
        assert_eq!(names(&ready.report(&metrics, later)), ["fortigate", "misp"]);
    }

    /// Without a mirror there is no mirror check.
    #[test]
    fn no_mirror_no_mirror_check() {
        let metrics = Metrics::new();
        let ready = Readiness::new();
        ready.record("misp", true, "", 5);
        ready.record("fortigate", true, "", 5);
        let report = ready.report(&metrics, 5);
        assert!(report.is_ready());
        assert!(!report.checks.contains_key("mirror"));
    }
}
