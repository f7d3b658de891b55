//! Readiness (`/readyz`): whether the daemon can do its job now, which liveness (`/healthz`) does not say.
//!
//! A daemon is *alive* when none of its tasks died for good; it is *ready* when, in addition:
//! - `misp`: MISP answered the last probe (`/servers/getVersion`), and that probe is recent;
//! - `fortigate`: the FortiGate answered the last probe (`monitor/system/status`) with our token accepted, and no
//!   write was refused with 401/403 since (then writes are paused, see the blocker). With a fleet, each target is
//!   probed and reported under `targets`, and the check passes while at least `blocking.healthy_share` of them
//!   pass: one branch firewall down must not take the others' fortimisp out of a load balancer;
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
    /// Each FortiGate target's own check, by name.
    pub targets: BTreeMap<String, CheckReport>,
}

impl ReadyReport {
    pub fn is_ready(&self) -> bool {
        self.failing.is_empty()
    }
}

/// What `/readyz` reports; shared by the probe task and the metrics server.
#[derive(Clone, Default)]
pub struct Readiness {
    /// MISP's probe, and each target's.
    probes: Arc<Mutex<BTreeMap<String, Probe>>>,
    /// With a mirror: the oldest last sync that still counts as fresh.
    mirror_max_age: Option<Duration>,
    /// The FortiGate targets by name (a probe not answered yet fails the target).
    targets: Vec<String>,
    /// Share of the targets that must pass for the `fortigate` check to pass.
    healthy_share: f64,
}

/// The key of MISP's probe (target names are lowercase letters, digits and '-': no clash).
const MISP: &str = "MISP";

impl Readiness {
    /// Readiness over MISP, the FortiGate targets and the journal.
    pub fn new(targets: Vec<String>, healthy_share: f64) -> Self {
        Readiness { targets, healthy_share, ..Readiness::default() }
    }

    /// Adds the mirror check: its last good sync must be at most `max_age` old.
    pub fn with_mirror(mut self, max_age: Duration) -> Self {
        self.mirror_max_age = Some(max_age);
        self
    }

    /// Records MISP's probe answer at Unix time `at`.
    pub fn record_misp(&self, ok: bool, detail: impl Into<String>, at: i64) {
        self.record(MISP.to_owned(), ok, detail.into(), at);
    }

    /// Records a target's probe answer at Unix time `at`.
    pub fn record_target(&self, target: &str, ok: bool, detail: impl Into<String>, at: i64) {
        self.record(target.to_owned(), ok, detail.into(), at);
    }

    fn record(&self, key: String, ok: bool, detail: String, at: i64) {
        self.probes.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Probe { ok, detail, at });
    }

    /// The `/readyz` body at Unix time `now`, from the probes and the metrics (journal degraded, mirror last sync,
    /// FortiGate refusal).
    pub fn report(&self, metrics: &Metrics, now: i64) -> ReadyReport {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let probe = |key: &str| match probes.get(key) {
            None => CheckReport { ok: false, detail: "not checked yet".into() },
            Some(p) if now - p.at > STALE_AFTER.as_secs() as i64 => {
                CheckReport { ok: false, detail: format!("no probe answer for {}s", now - p.at) }
            }
            Some(p) => CheckReport { ok: p.ok, detail: p.detail.clone() },
        };
        let mut checks = BTreeMap::new();
        checks.insert("misp", probe(MISP));
        let mut targets = BTreeMap::new();
        for target in &self.targets {
            let refused = metrics
                .fortigate_unauthorized
                .get_or_create(&crate::metrics::TargetLabel { target: target.clone() })
                .get()
                != 0;
            let check = if refused {
                CheckReport {
                    ok: false,
                    detail: "the FortiGate refused our token (401/403); writes are paused. Check the API token and \
                             trusted hosts"
                        .into(),
                }
            } else {
                probe(target)
            };
            targets.insert(target.clone(), check);
        }
        checks.insert("fortigate", self.fleet_check(&targets));
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
        ReadyReport { status: if failing.is_empty() { "ready" } else { "not_ready" }, failing, checks, targets }
    }

    /// The `fortigate` check: one target's own, or for a fleet, whether enough of them pass.
    fn fleet_check(&self, targets: &BTreeMap<String, CheckReport>) -> CheckReport {
        if targets.len() == 1 {
            return targets.values().next().expect("one target").clone();
        }
        let passing = targets.values().filter(|c| c.ok).count();
        let needed = (self.healthy_share * targets.len() as f64).ceil() as usize;
        let failing: Vec<String> =
            targets.iter().filter(|(_, c)| !c.ok).map(|(name, c)| format!("{name}: {}", c.detail)).collect();
        let mut detail = format!("{passing} of {} targets answer (at least {needed} needed)", targets.len());
        if !failing.is_empty() {
            detail.push_str("; ");
            detail.push_str(&failing.join("; "));
        }
        CheckReport { ok: passing >= needed && (passing > 0 || needed == 0), detail }
    }
}

/// One FortiGate target as the probe sees it.
#[derive(Clone)]
pub struct ProbedTarget {
    pub client: Arc<fortigate::Client>,
    pub metrics: crate::metrics::TargetMetrics,
}

/// Probes MISP and every target every [`PROBE_EVERY`] until `shutdown`, recording each answer.
pub async fn probe(
    misp: Arc<misp::Client>,
    targets: Vec<ProbedTarget>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let mut next = vec![tokio::time::Instant::now(); targets.len()];
    loop {
        let now = || chrono::Utc::now().timestamp();
        match misp.version().await {
            Ok(v) => readiness.record_misp(true, format!("version {}", v.version), now()),
            Err(error) => readiness.record_misp(false, error.to_string(), now()),
        }
        // A token a FortiGate refused (here or on a write) is not tried again before the pause ends. The targets
        // are probed together: one slow box does not delay the others' answers.
        let probes = targets.iter().zip(next.iter_mut()).map(|(target, next)| {
            let readiness = &readiness;
            async move {
                if target.metrics.unauthorized.get() != 0 || tokio::time::Instant::now() < *next {
                    return;
                }
                let name = target.metrics.target();
                match target.client.system_status().await {
                    Ok(status) => readiness.record_target(name, true, format!("version {}", status.version), now()),
                    Err(error) => {
                        if error.is_fatal() {
                            *next = tokio::time::Instant::now() + REFUSED_PAUSE;
                        }
                        readiness.record_target(name, false, error.to_string(), now());
                    }
                }
            }
        });
        futures::future::join_all(probes).await;
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
        let ready = Readiness::new(vec!["default".into()], 0.5).with_mirror(Duration::from_secs(600));
        assert_eq!(names(&ready.report(&metrics, now)), ["fortigate", "mirror", "misp"], "nothing probed yet");

        ready.record_misp(true, "version 2.5", now);
        ready.record_target("default", true, "version v7.4.4", now);
        metrics.mirror_last_sync.set(now - 60);
        let report = ready.report(&metrics, now);
        assert!(report.is_ready(), "{report:?}");
        assert_eq!(report.status, "ready");

        ready.record_misp(false, "connection refused", now);
        assert_eq!(names(&ready.report(&metrics, now)), ["misp"]);
        assert_eq!(ready.report(&metrics, now).checks["misp"].detail, "connection refused");
        ready.record_misp(true, "version 2.5", now);

        let label = crate::metrics::TargetLabel { target: "default".into() };
        metrics.fortigate_unauthorized.get_or_create(&label).set(1);
        assert_eq!(names(&ready.report(&metrics, now)), ["fortigate"]);
        metrics.fortigate_unauthorized.get_or_create(&label).set(0);

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
        let ready = Readiness::new(vec!["default".into()], 0.5);
        ready.record_misp(true, "", 5);
        ready.record_target("default", true, "", 5);
        let report = ready.report(&metrics, 5);
        assert!(report.is_ready());
        assert!(!report.checks.contains_key("mirror"));
    }

    /// A fleet is ready while the configured share of its targets answers; each target is reported.
    #[test]
    fn a_fleet_is_ready_while_enough_targets_answer() {
        let metrics = Metrics::new();
        let ready = Readiness::new(vec!["a".into(), "b".into(), "c".into()], 0.5);
        ready.record_misp(true, "", 5);
        ready.record_target("a", true, "", 5);
        ready.record_target("b", true, "", 5);
        ready.record_target("c", false, "connection refused", 5);
        let report = ready.report(&metrics, 5);
        assert!(report.is_ready(), "{report:?}");
        assert!(!report.targets["c"].ok);
        assert!(report.checks["fortigate"].detail.contains("c: connection refused"), "{report:?}");
        ready.record_target("b", false, "timeout", 5);
        assert_eq!(names(&ready.report(&metrics, 5)), ["fortigate"], "1 of 3 is below half");
        let strict = Readiness::new(vec!["a".into(), "b".into()], 1.0);
        strict.record_misp(true, "", 5);
        strict.record_target("a", true, "", 5);
        assert_eq!(names(&strict.report(&metrics, 5)), ["fortigate"], "b not probed yet");
    }
}
