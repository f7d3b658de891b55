//! Every metric fortimisp exports, in one place, and the tiny HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! [`Metrics`] holds the counters, gauges and histograms of both daemons (a daemon leaves the other's at zero) and
//! the [`Registry`] they are registered in. Names follow `fortimisp_<noun>_<unit|total>`; label values come from
//! small closed sets (`stage`, `reason`, `outcome`, `server`, `result`), never an IP, object name or event id.
//!
//! The metric types are atomics: the hot path (one log line) bumps a counter without a lock.
//!
//! A labelled series appears once it has counted something, except the series an alert rule watches
//! (`deploy/prometheus/fortimisp-rules.yml`): the task that does the work creates those at 0 when it starts
//! ([`Metrics::requests`], [`Metrics::start_at_zero`]). A counter that appears with the value 1 has no increase
//! in Prometheus, so the first failure would never fire an alert.
//!
//! [`Health`] is what `/healthz` reports: each supervised task's state, the mirror's age, and whether the daemon
//! is alive (200) or has lost a task for good or begun shutting down (503). It is a liveness endpoint: a slow or
//! unreachable MISP or FortiGate never makes it unhealthy, since a restart would not fix them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// An `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// A `stage` label (queue depths).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: &'static str,
}

/// A `listener` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Listener {
    pub listener: &'static str,
}

/// A `result` label (threat-feed requests).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestResult {
    pub result: &'static str,
}

/// Label sets made of one static string, so [`Metrics::inc`] and [`Metrics::count`] serve every family.
pub trait OneLabel: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static {
    fn of(value: &'static str) -> Self;
}

macro_rules! one_label {
    ($($t:ident => $f:ident),*) => {$(
        impl OneLabel for $t {
            fn of(value: &'static str) -> Self {
                $t { $f: value }
            }
        }
    )*};
}
one_label!(Reason => reason, Outcome => outcome, Stage => stage, Listener => listener, RequestResult => result);

/// A `feed` label: a threat feed's name, from `[feed]` (a closed set: the names `core::feed::Names` derives).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedLabel {
    pub feed: String,
}

/// A `target` label: a FortiGate target's name (a closed set: the config's targets).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

/// `target` and `outcome` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetOutcome {
    pub target: String,
    pub outcome: &'static str,
}

/// `target` and `reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetReason {
    pub target: String,
    pub reason: &'static str,
}

/// The metrics of one FortiGate target: every series it touches carries its `target` label, created at 0 when
/// the handle is made (the alert rules watch them). Cheap to clone: the series share their values.
#[derive(Clone)]
pub struct TargetMetrics {
    metrics: std::sync::Arc<Metrics>,
    target: String,
    /// `fortimisp_pending_actions{target}`.
    pub pending: Gauge,
    /// `fortimisp_block_rate_limited{target}`: 1 while `max_blocks_per_minute` holds this target's blocks back.
    pub rate_limited: Gauge,
    /// `fortimisp_fortigate_unauthorized{target}`: 1 while this FortiGate refuses the token.
    pub unauthorized: Gauge,
    latency: Histogram,
    leader: Gauge,
    epoch: Gauge,
}

impl std::fmt::Debug for TargetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMetrics").field("target", &self.target).finish()
    }
}

impl TargetMetrics {
    pub fn new(metrics: std::sync::Arc<Metrics>, target: &str) -> TargetMetrics {
        let label = TargetLabel { target: target.to_owned() };
        let pending = metrics.pending_actions.get_or_create(&label).clone();
        let rate_limited = metrics.block_rate_limited.get_or_create(&label).clone();
        let unauthorized = metrics.fortigate_unauthorized.get_or_create(&label).clone();
        let latency = metrics.block_latency_seconds.get_or_create(&label).clone();
        let leader = metrics.lease_leader.get_or_create(&label).clone();
        let epoch = metrics.lease_epoch.get_or_create(&label).clone();
        TargetMetrics {
            metrics,
            target: target.to_owned(),
            pending,
            rate_limited,
            unauthorized,
            latency,
            leader,
            epoch,
        }
    }

    /// Shows whether this instance writes to the target now (`fortimisp_lease_leader`, `fortimisp_lease_epoch`).
    pub fn set_role(&self, window: crate::cluster::Window) {
        use crate::cluster::Window;
        self.leader.set(i64::from(window.allows_writes()));
        self.epoch.set(match window {
            Window::Leader { epoch, .. } => epoch,
            Window::Solo | Window::Follower => 0,
        });
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The daemon's metrics (the series without a target).
    pub fn all(&self) -> &std::sync::Arc<Metrics> {
        &self.metrics
    }

    /// Counts a block action's outcome.
    pub fn block(&self, outcome: &'static str) {
        self.metrics.blocks.get_or_create(&TargetOutcome { target: self.target.clone(), outcome }).inc();
    }

    /// The count of a block outcome so far.
    pub fn blocks(&self, outcome: &'static str) -> u64 {
        self.metrics.blocks.get_or_create(&TargetOutcome { target: self.target.clone(), outcome }).get()
    }

    pub fn block_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The housekeeping counter of `reason` for this target (`pruned`: blocks removed; else failures).
    pub fn pruned(&self, reason: &'static str) -> Counter {
        self.metrics.hk_pruned.get_or_create(&TargetReason { target: self.target.clone(), reason }).clone()
    }

    pub fn failure(&self, reason: &'static str) -> Counter {
        self.metrics.hk_failures.get_or_create(&TargetReason { target: self.target.clone(), reason }).clone()
    }
}

/// `command` and `outcome` labels of a threat-feed push.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub command: &'static str,
    pub outcome: &'static str,
}

/// A `family` label (`ipv4`, `ipv6`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: &'static str,
}

/// `server` and `outcome` labels of a request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub server: &'static str,
    pub outcome: &'static str,
}

/// The histogram family of `fortimisp_request_duration_seconds`.
type RequestFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Times every HTTP request to one server into `fortimisp_request_duration_seconds{server, outcome}`. The MISP
/// client and the FortiGate transport hold one and observe each request they send (each retry is a request);
/// the time a request waits for the client-side rate limit is not part of it. Made by [`Metrics::requests`].
#[derive(Clone, Debug)]
pub struct RequestObserver {
    family: RequestFamily,
    server: &'static str,
}

impl RequestObserver {
    /// Records one request: `failed` when the server gave no usable answer (`outcome="error"`), else `ok`.
    pub fn observe(&self, failed: bool, elapsed: Duration) {
        let outcome = if failed { "error" } else { "ok" };
        self.family.get_or_create(&RequestLabels { server: self.server, outcome }).observe(elapsed.as_secs_f64());
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~41 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics of both daemons. Cheap to share behind an `Arc`.
pub struct Metrics {
    pub registry: Registry,
    // Ingest.
    /// Messages received, by listener (`udp`, `tcp`, `tls`, `replay`).
    pub received: Family<Listener, Counter>,
    /// Messages dropped before parsing, by reason (`sender_not_allowed`, `oversize`, `queue_full`, `framing`,
    /// `tls_handshake`, `kernel_rcvbuf`: UDP datagrams the kernel dropped because the receive buffer was full).
    pub dropped: Family<Reason, Counter>,
    /// Messages that are not FortiGate logs, by error kind.
    pub parse_errors: Family<Reason, Counter>,
    /// Parsed lines that matched a trigger rule.
    pub triggered: Counter,
    /// Parsed lines that matched no trigger rule (dropped early).
    pub untriggered: Counter,
    /// Candidate addresses by what happened to them (`never_block`, `recent` (handed over within the last second),
    /// `known_blocked`, `known_clean`, `in_flight`, `mirror` (answered by the local mirror), `queued` (for an
    /// on-demand MISP lookup), `repeated` (seen again while waiting for its lookup: moved ahead of first
    /// sightings), `waiting` (seen again after that), `queue_full`, `evicted`).
    pub candidates: Family<Outcome, Counter>,
    // Decision.
    /// Lookups by source and result (`mirror_hit`, `mirror_miss`, `cache_hit`, `cache_miss`, `misp_hit`,
    /// `misp_miss`, `misp_error`).
    pub lookups: Family<Outcome, Counter>,
    /// MISP restSearch requests sent for on-demand lookups.
    pub misp_lookup_requests: Counter,
    /// Addresses waiting for an on-demand MISP lookup (bounded by the decision stage's `max_waiting`).
    pub lookup_waiting: Gauge,
    /// Addresses shed from a full on-demand lookup queue, unanswered; each is asked again on its next line.
    pub lookups_shed: Counter,
    /// Addresses the decision stage holds state for (bounded by its `max_tracked`).
    pub decide_tracked: Gauge,
    /// Indicators in the local mirror.
    pub mirror_indicators: Gauge,
    /// Unix time of the last successful mirror sync.
    pub mirror_last_sync: Gauge,
    /// Mirror syncs by outcome (`full_ok`, `incremental_ok`, `error`).
    pub mirror_syncs: Family<Outcome, Counter>,
    /// CIDR indicators ignored as wider than min_prefix.
    pub mirror_rejected_wide: Gauge,
    // Blocking.
    /// Block actions by outcome (`blocked`, `already_blocked`, `dry_run`, `failed`, `retry`, `foreign`).
    pub blocks: Family<TargetOutcome, Counter>,
    /// Actions waiting in the journal, per target.
    pub pending_actions: Family<TargetLabel, Gauge>,
    /// 1 while new blocks are held back by `max_blocks_per_minute`, per target.
    pub block_rate_limited: Family<TargetLabel, Gauge>,
    /// 1 while the FortiGate rejects the token (401): writes stopped, operator must act. Per target.
    pub fortigate_unauthorized: Family<TargetLabel, Gauge>,
    /// 1 while this instance may write to the target: it leads it in a cluster, or there is no cluster.
    pub lease_leader: Family<TargetLabel, Gauge>,
    /// The epoch of the target's lease this instance holds (0 without a cluster or a lease).
    pub lease_epoch: Family<TargetLabel, Gauge>,
    /// 1 while the journal file cannot be written (actions kept in memory).
    pub journal_degraded: Gauge,
    /// Queue depth between stages, by stage.
    pub queue_depth: Family<Stage, Gauge>,
    /// Latency of every HTTP request, by server (`misp`, `fortigate`) and outcome (`ok`; `error`: no usable
    /// answer), observed by the clients through a [`RequestObserver`].
    pub request_seconds: RequestFamily,
    /// Time from receipt of the first triggering line to the block being in place, per target.
    pub block_latency_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
    // Housekeeping.
    /// Owned objects examined by prune passes.
    pub hk_examined: Counter,
    /// Blocks removed, by reason (`max_age`, `revoked`, `legacy`).
    pub hk_pruned: Family<TargetReason, Counter>,
    /// Prune failures, by reason (`in_use`, `error`, `safety_rail`, `misp_unavailable`, `panic`).
    pub hk_failures: Family<TargetReason, Counter>,
    /// Feed updates by outcome (`queued`, `completed`, `no_feed_enabled`, `other`: MISP answered; `feed_disabled`,
    /// `failed`: MISP refused or failed; `error`: no answer).
    pub feed_updates: Family<Outcome, Counter>,
    /// Unix time of the last successful prune pass.
    pub hk_last_success: Gauge,
    /// Unix time of the last successful feed update.
    pub feed_last_success: Gauge,
    // Threat feeds (`backend = "threat-feed"`).
    /// Entries each threat feed serves (pull) or was last pushed (push).
    pub tf_entries: Family<FeedLabel, Gauge>,
    /// Entries left out of the threat feeds (beyond `max_entries` × `max_feeds`), by address family.
    pub tf_left_out: Family<FamilyLabel, Gauge>,
    /// The per-feed entry cap in use (from `max_entries`, or the FortiGate's reported limit).
    pub tf_limit: Gauge,
    /// Threat-feed contents built (one per change of the blocks or the mirror, at most).
    pub tf_builds: Counter,
    /// Push API commands, by command (`add`, `remove`, `snapshot`) and outcome (`ok`, `error`).
    pub tf_pushes: Family<PushLabels, Counter>,
    /// Entries the FortiGate reports loaded, per feed (entry-list status, or the 22222 event).
    pub tf_loaded: Family<FeedLabel, Gauge>,
    /// Unix time the FortiGate last loaded each feed.
    pub tf_last_loaded: Family<FeedLabel, Gauge>,
    /// 1 while the FortiGate reports that a feed overflowed its limit (entries dropped).
    pub tf_overflow: Family<FeedLabel, Gauge>,
    /// Threat-feed event lines on the syslog stream, by event (`updated`, `loaded`, `overflow`).
    pub tf_events: Family<Reason, Counter>,
    // Threat feeds (the FortiGate pulling from our listener).
    /// Threat-feed requests by result (`served`, `not_modified`, `unauthorized`, `forbidden`, `not_found`:
    /// unknown feed, other path or method; `tls_error`: the handshake failed or timed out).
    pub feed_requests: Family<RequestResult, Counter>,
    /// Bytes of threat-feed bodies sent (200 answers to `GET`).
    pub feed_served_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fortimisp");
        let m = Metrics {
            received: Family::default(),
            dropped: Family::default(),
            parse_errors: Family::default(),
            triggered: Counter::default(),
            untriggered: Counter::default(),
            candidates: Family::default(),
            lookups: Family::default(),
            misp_lookup_requests: Counter::default(),
            lookup_waiting: Gauge::default(),
            lookups_shed: Counter::default(),
            decide_tracked: Gauge::default(),
            mirror_indicators: Gauge::default(),
            mirror_last_sync: Gauge::default(),
            mirror_syncs: Family::default(),
            mirror_rejected_wide: Gauge::default(),
            blocks: Family::default(),
            pending_actions: Family::default(),
            block_rate_limited: Family::default(),
            fortigate_unauthorized: Family::default(),
            lease_leader: Family::default(),
            lease_epoch: Family::default(),
            journal_degraded: Gauge::default(),
            queue_depth: Family::default(),
            request_seconds: Family::new_with_constructor(histogram),
            block_latency_seconds: Family::new_with_constructor(latency_histogram),
            hk_examined: Counter::default(),
            hk_pruned: Family::default(),
            hk_failures: Family::default(),
            feed_updates: Family::default(),
            hk_last_success: Gauge::default(),
            feed_last_success: Gauge::default(),
            tf_entries: Family::default(),
            tf_left_out: Family::default(),
            tf_limit: Gauge::default(),
            tf_builds: Counter::default(),
            tf_pushes: Family::default(),
            tf_loaded: Family::default(),
            tf_last_loaded: Family::default(),
            tf_overflow: Family::default(),
            tf_events: Family::default(),
            feed_requests: Family::default(),
            feed_served_bytes: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("messages_received", "Syslog messages received, by listener", m.received.clone());
        r.register("messages_dropped", "Messages dropped before parsing, by reason", m.dropped.clone());
        r.register("parse_errors", "Messages that are not FortiGate logs, by kind", m.parse_errors.clone());
        r.register("lines_triggered", "Parsed lines that matched a trigger rule", m.triggered.clone());
        r.register("lines_untriggered", "Parsed lines that matched no trigger rule", m.untriggered.clone());
        r.register("candidates", "Candidate addresses by outcome", m.candidates.clone());
        r.register("lookups", "Indicator lookups by source and result", m.lookups.clone());
        r.register(
            "misp_lookup_requests",
            "MISP restSearch requests for on-demand lookups",
            m.misp_lookup_requests.clone(),
        );
        r.register("lookup_waiting", "Addresses waiting for an on-demand MISP lookup", m.lookup_waiting.clone());
        r.register(
            "lookups_shed",
            "Addresses shed from a full on-demand lookup queue, asked again on their next line",
            m.lookups_shed.clone(),
        );
        r.register("decide_tracked", "Addresses the decision stage holds state for", m.decide_tracked.clone());
        r.register("mirror_indicators", "Indicators in the local mirror", m.mirror_indicators.clone());
        r.register(
            "mirror_last_sync_timestamp_seconds",
            "Unix time of the last good mirror sync",
            m.mirror_last_sync.clone(),
        );
        r.register("mirror_syncs", "Mirror syncs by outcome", m.mirror_syncs.clone());
        r.register(
            "mirror_rejected_wide",
            "CIDR indicators wider than min_prefix, ignored",
            m.mirror_rejected_wide.clone(),
        );
        r.register("blocks", "Block actions by outcome", m.blocks.clone());
        r.register("pending_actions", "Actions waiting in the journal", m.pending_actions.clone());
        r.register(
            "block_rate_limited",
            "1 while max_blocks_per_minute holds blocks back",
            m.block_rate_limited.clone(),
        );
        r.register(
            "fortigate_unauthorized",
            "1 while the FortiGate rejects the API token",
            m.fortigate_unauthorized.clone(),
        );
        r.register(
            "lease_leader",
            "1 while this instance writes to the target (its leader in a cluster)",
            m.lease_leader.clone(),
        );
        r.register("lease_epoch", "The epoch of the target's lease this instance holds", m.lease_epoch.clone());
        r.register("journal_degraded", "1 while the journal cannot be written", m.journal_degraded.clone());
        r.register("queue_depth", "Messages waiting between stages", m.queue_depth.clone());
        r.register("request_duration_seconds", "REST request latency by server and outcome", m.request_seconds.clone());
        r.register(
            "block_latency_seconds",
            "From the first triggering line to the block in place",
            m.block_latency_seconds.clone(),
        );
        r.register("housekeeping_examined", "Owned objects examined by prune passes", m.hk_examined.clone());
        r.register("housekeeping_pruned", "Blocks removed, by reason", m.hk_pruned.clone());
        r.register("housekeeping_failures", "Prune failures, by reason", m.hk_failures.clone());
        r.register("feed_updates", "MISP feed updates by outcome", m.feed_updates.clone());
        r.register(
            "housekeeping_last_success_timestamp_seconds",
            "Unix time of the last good prune pass",
            m.hk_last_success.clone(),
        );
        r.register(
            "feed_last_success_timestamp_seconds",
            "Unix time of the last good feed update",
            m.feed_last_success.clone(),
        );
        r.register("feed_entries", "Entries each threat feed serves or was last pushed", m.tf_entries.clone());
        r.register(
            "feed_left_out",
            "Entries left out of the threat feeds by the cap, by address family",
            m.tf_left_out.clone(),
        );
        r.register("feed_entry_limit", "Per-feed entry cap in use", m.tf_limit.clone());
        r.register("feed_builds", "Threat-feed contents built", m.tf_builds.clone());
        r.register("feed_pushes", "Threat-feed push API commands by command and outcome", m.tf_pushes.clone());
        r.register("feed_loaded_entries", "Entries the FortiGate reports loaded, per feed", m.tf_loaded.clone());
        r.register(
            "feed_last_loaded_timestamp_seconds",
            "Unix time the FortiGate last loaded each feed",
            m.tf_last_loaded.clone(),
        );
        r.register(
            "feed_overflow",
            "1 while the FortiGate reports a feed beyond its entry limit",
            m.tf_overflow.clone(),
        );
        r.register("feed_events", "Threat-feed event lines received on syslog, by event", m.tf_events.clone());
        r.register("feed_requests", "Threat-feed requests by result", m.feed_requests.clone());
        r.register("feed_served_bytes", "Bytes of threat-feed bodies sent", m.feed_served_bytes.clone());
        Metrics { registry, ..m }
    }

    /// Bumps a labelled counter.
    pub fn inc<L: OneLabel>(family: &Family<L, Counter>, label: &'static str) {
        family.get_or_create(&L::of(label)).inc();
    }

    /// The observer of `server`'s requests, for its client; its `ok` and `error` series start at 0 (the alert on
    /// an unreachable MISP compares them).
    pub fn requests(&self, server: &'static str) -> RequestObserver {
        for outcome in ["ok", "error"] {
            drop(self.request_seconds.get_or_create(&RequestLabels { server, outcome }));
        }
        RequestObserver { family: self.request_seconds.clone(), server }
    }

    /// Creates the series `labels` of `family` at 0, so an alert sees their first increase. Called by the task
    /// that counts them, when it starts: a series exists only in a daemon that does that work.
    pub fn start_at_zero<L: OneLabel>(family: &Family<L, Counter>, labels: &[&'static str]) {
        for label in labels {
            drop(family.get_or_create(&L::of(label)));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The value of a labelled counter (for tests, the lab, `loadgen` and `replay`'s summary).
    pub fn count<L: OneLabel>(family: &Family<L, Counter>, label: &'static str) -> u64 {
        family.get_or_create(&L::of(label)).get()
    }

    /// Messages that were not FortiGate logs, every kind together.
    pub fn parse_errors_total(&self) -> u64 {
        crate::syslog::ErrorKind::ALL.iter().map(|kind| Self::count(&self.parse_errors, kind.as_str())).sum()
    }
}

/// What one supervised task is doing, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Running (or, for a housekeeping job, between two runs of a timer that is alive).
    Running,
    /// Died (panicked or ended early) and is waiting out its backoff before it runs again. Still healthy: the
    /// supervisor is bringing it back.
    Restarting,
    /// Died for good: a task that owns state the daemon cannot rebuild. Unhealthy; the daemon shuts down.
    Failed,
    /// Ended because the daemon is shutting down.
    Stopped,
}

/// One task's line in the `/healthz` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TaskHealth {
    pub state: TaskState,
    /// How often the supervisor has restarted it since start.
    pub restarts: u32,
}

/// The `/healthz` body: overall status, each task's state, and the age of the MISP mirror.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthReport {
    /// `ok`, `failed` (a task died for good) or `stopping` (shutdown began).
    pub status: &'static str,
    pub tasks: std::collections::BTreeMap<&'static str, TaskHealth>,
    /// Seconds since the last good mirror sync; `null` when there is no mirror or it has not synced yet. Reported,
    /// never a reason to be unhealthy: a stale mirror means MISP is down, which a restart does not fix.
    pub mirror_age_seconds: Option<i64>,
}

impl HealthReport {
    /// 200 for `ok`, 503 otherwise.
    pub fn is_healthy(&self) -> bool {
        self.status == "ok"
    }
}

#[derive(Default)]
struct HealthState {
    stopping: bool,
    tasks: std::collections::BTreeMap<&'static str, TaskHealth>,
}

/// Liveness as `/healthz` reports it: healthy while no task has died for good and shutdown has not begun. The
/// supervisor ([`crate::supervise`]) records each task's state here; a task waiting to be restarted does not make
/// the daemon unhealthy.
#[derive(Clone, Default)]
pub struct Health {
    state: Arc<Mutex<HealthState>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // The state is a plain map updated in one statement: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `task`'s state; [`TaskState::Restarting`] also counts a restart.
    pub fn set_task(&self, task: &'static str, state: TaskState) {
        let mut guard = self.lock();
        let entry = guard.tasks.entry(task).or_insert(TaskHealth { state, restarts: 0 });
        if state == TaskState::Restarting {
            entry.restarts += 1;
        }
        entry.state = state;
    }

    /// Shutdown began: unhealthy from now on (a load balancer stops sending before the sockets close).
    pub fn set_stopping(&self) {
        self.lock().stopping = true;
    }

    pub fn is_healthy(&self) -> bool {
        let guard = self.lock();
        !guard.stopping && guard.tasks.values().all(|t| t.state != TaskState::Failed)
    }

    /// The `/healthz` body. `mirror_last_sync` is the Unix time of the last good mirror sync (0: never), `now` the
    /// current Unix time.
    pub fn report(&self, mirror_last_sync: i64, now: i64) -> HealthReport {
        let guard = self.lock();
        let status = if guard.tasks.values().any(|t| t.state == TaskState::Failed) {
            "failed"
        } else if guard.stopping {
            "stopping"
        } else {
            "ok"
        };
        HealthReport {
            status,
            tasks: guard.tasks.clone(),
            mirror_age_seconds: (mirror_last_sync > 0).then(|| (now - mirror_last_sync).max(0)),
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` fires. `/healthz` answers the JSON
/// [`HealthReport`] with 200 when healthy, 503 when not; `/readyz` the [`crate::ready::ReadyReport`], 200 when
/// ready, 503 when not.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    readiness: crate::ready::Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()) }
            }),
        )
        .route(
            "/readyz",
            get({
                let m = metrics.clone();
                move || {
                    let report = readiness.report(&m, chrono::Utc::now().timestamp());
                    async move {
                        let status = if report.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                        (status, axum::Json(report))
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let report = health.report(metrics.mirror_last_sync.get(), chrono::Utc::now().timestamp());
                async move {
                    let status = if report.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, axum::Json(report))
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_prefixed_names_and_labels() {
        let m = Metrics::new();
        Metrics::inc(&m.dropped, "queue_full");
        m.triggered.inc();
        m.requests("misp").observe(false, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("fortimisp_messages_dropped_total{reason=\"queue_full\"} 1"), "{text}");
        assert!(text.contains("fortimisp_lines_triggered_total 1"), "{text}");
        assert!(text.contains("fortimisp_request_duration_seconds_count{server=\"misp\",outcome=\"ok\"} 1"), "{text}");
        assert_eq!(Metrics::count(&m.dropped, "queue_full"), 1);
    }

    /// The series an alert watches exist at 0 before the first event, only where they were started.
    #[test]
    fn watched_series_start_at_zero() {
        let m = Metrics::new();
        assert!(!m.render().contains("reason=\"safety_rail\""));
        let shared = std::sync::Arc::new(m);
        let target = TargetMetrics::new(shared.clone(), "default");
        drop((target.failure("safety_rail"), target.failure("error")));
        let m = &*shared;
        let observer = m.requests("fortigate");
        let text = m.render();
        for sample in [
            "fortimisp_housekeeping_failures_total{target=\"default\",reason=\"safety_rail\"} 0",
            "fortimisp_housekeeping_failures_total{target=\"default\",reason=\"error\"} 0",
            "fortimisp_request_duration_seconds_count{server=\"fortigate\",outcome=\"ok\"} 0",
            "fortimisp_request_duration_seconds_count{server=\"fortigate\",outcome=\"error\"} 0",
        ] {
            assert!(text.contains(sample), "{sample} in\n{text}");
        }
        assert!(!text.contains("server=\"misp\""), "only the servers asked for: {text}");
        observer.observe(true, Duration::from_millis(5));
        assert!(m
            .render()
            .contains("fortimisp_request_duration_seconds_count{server=\"fortigate\",outcome=\"error\"} 1"));
    }
}
