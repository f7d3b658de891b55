//! `housekeeping`: removes the blocks fortimisp created once they are too old or their indicator was revoked,
//! and asks MISP to fetch its feeds on a timer.
//!
//! This file parses the command line, loads the config (one line naming the key on error, exit 2), sets up
//! logging and signals, and hands the two jobs to [`schedule::schedule`]. A prune pass is [`pass::Pass`] (I/O)
//! around [`plan::plan`] (pure); the feed update is [`feeds::update`]. `--once` prints the pass's
//! [`summary::summary`] on stdout; the daemon logs each pass's numbers. An error that ends the process is reported
//! once ([`fortimisp_core::process::report_failure`]).
//!
//! Supervision: a pass or feed update that panics is caught ([`Supervisor::pass`]), logged at `error`, counted
//! (`housekeeping_failures_total{reason="panic"}`, `feed_updates_total{outcome="error"}`) and run again at its
//! timer's next slot; a pass reads everything afresh, and a removal it left half-done is pending in the journal.
//! The metrics server's death is fatal: `/healthz` answers 503 and the daemon stops with exit code 1.
//!
//! Cluster: on a PostgreSQL journal several housekeeping processes may run; each timer's run first takes the
//! cluster-wide lease `job:prune` or `job:feeds` ([`Leadership::job`]), granted to one instance per half period,
//! so the cluster prunes and fetches feeds once per cycle. A run stops between two removals if its lease lapses.

mod feeds;
mod pass;
mod plan;
mod schedule;
mod summary;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use fortimisp_core::clients;
use fortimisp_core::cluster::Leadership;
use fortimisp_core::config::Config;
use fortimisp_core::journal::Journal;
use fortimisp_core::metrics::{self, Health, Metrics, TargetMetrics};
use fortimisp_core::process;
use fortimisp_core::ready::{self, Readiness};
use fortimisp_core::supervise::{Faults, Supervisor};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// After SIGTERM, how long a run under way may take to stop (it stops between two removals) before the daemon
/// exits anyway; within the contract's 10 s. A removal cut short here is still pending in the journal and the next
/// pass plans it again.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// How often a run under a job lease checks that the lease still holds.
const JOB_LEASE_CHECK: Duration = Duration::from_millis(250);

#[derive(Parser, Debug)]
#[command(
    name = "housekeeping",
    version,
    about = "fortimisp housekeeping: prune old and revoked blocks, refresh MISP feeds"
)]
struct Cli {
    /// Config file [default: $FORTIMISP_CONFIG, then /etc/fortimisp/config.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run one prune pass and one feed update, then exit (0 on success).
    #[arg(long)]
    once: bool,
    /// Print what would be removed; change nothing (no feed update either).
    #[arg(long)]
    dry_run: bool,
    /// Proceed with a revocation that the max_unblock_fraction safety rail would hold back (the daemon: its first
    /// pass only).
    #[arg(long)]
    force: bool,
    /// Test hook, debug builds only: the job NAME (`prune`, `feed`) panics when the file DIR/panic-NAME appears.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true, value_name = "DIR")]
    panic_trigger_dir: Option<PathBuf>,
}

impl Cli {
    /// The test hook the daemon runs with: none in release builds, which have no such option.
    fn faults(&self) -> Faults {
        #[cfg(debug_assertions)]
        if let Some(dir) = &self.panic_trigger_dir {
            return Faults::panic_on_file(dir.clone());
        }
        Faults::none()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match process::start(cli.config.clone(), process::Daemon::Housekeeping, process::Warnings::Log) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log = config.log.clone();
    let role = if cli.once || cli.dry_run { process::Role::Command } else { process::Role::Daemon };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    match runtime.block_on(run(config, cli, shutdown)) {
        Ok(code) => code,
        Err(error) => {
            process::report_failure(role, &log, &error);
            ExitCode::FAILURE
        }
    }
}

struct Daemon {
    supervisor: Supervisor,
    config: Config,
    /// The FortiGate targets; each client is shared with the readiness probe, so a FortiGate sees one client and
    /// one request rate.
    targets: Vec<pass::HkTarget>,
    misp: Arc<fortimisp_core::misp::Client>,
    journal: Journal,
    metrics: Arc<Metrics>,
    /// In a cluster (a PostgreSQL journal), each timer's run takes a cluster-wide job lease first.
    leadership: Leadership,
}

/// Where a pass's report goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReportTo {
    /// `--once`: the summary, on stdout, for the person who ran it.
    Summary,
    /// The daemon's timer: one log line with the numbers.
    Log,
}

impl Daemon {
    /// One cycle: a pass per target, one after the other, each with its own safety rail; they share one read of
    /// MISP. A target that fails does not stop the others. True when every pass succeeded.
    async fn prune(&self, dry_run: bool, force: bool, shutdown: &CancellationToken, report_to: ReportTo) -> bool {
        let view = pass::MispView::new();
        let mut all_ok = true;
        for target in &self.targets {
            if shutdown.is_cancelled() {
                break;
            }
            all_ok &= self.prune_target(target, &view, dry_run, force, shutdown, report_to).await;
        }
        if all_ok && !dry_run {
            self.metrics.hk_last_success.set(chrono::Utc::now().timestamp());
        }
        all_ok
    }

    async fn prune_target(
        &self,
        target: &pass::HkTarget,
        view: &pass::MispView,
        dry_run: bool,
        force: bool,
        shutdown: &CancellationToken,
        report_to: ReportTo,
    ) -> bool {
        let pass = pass::Pass {
            config: &self.config,
            target,
            misp: &self.misp,
            view,
            journal: &self.journal,
            metrics: &self.metrics,
            dry_run,
            force,
        };
        let name = target.config.name.as_str();
        let started = std::time::Instant::now();
        let Ok(result) = self.supervisor.pass("prune", pass.run(shutdown)).await else {
            target.metrics.failure("panic").inc();
            return false;
        };
        match result {
            Ok(report) => {
                match report_to {
                    ReportTo::Summary => {
                        let hk = &self.config.housekeeping;
                        let settings = summary::Settings {
                            dry_run,
                            max_age: hk.max_age,
                            unblock_revoked: hk.unblock_revoked,
                            max_unblock_fraction: hk.max_unblock_fraction,
                        };
                        if self.targets.len() > 1 {
                            println!("target {name}:");
                        }
                        println!("{}", summary::summary(&report, &settings));
                    }
                    ReportTo::Log => {
                        info!(message = "Prune pass done.", target = name, examined = report.examined,
                              removed = report.removed.total(), failed = report.failed, readded = report.readded,
                              dangling = report.dangling, revocation = report.revocation(), took = ?started.elapsed());
                    }
                }
                // The FortiGate answered the listing: refused again only if a removal was refused.
                target.metrics.unauthorized.set(i64::from(report.refused));
                report.is_success()
            }
            Err(error) => {
                if error.is_fatal() {
                    target.metrics.unauthorized.set(1);
                }
                target.metrics.failure("error").inc();
                error!(message = "Prune pass failed: cannot read the FortiGate.", %error, target = name);
                false
            }
        }
    }

    /// Runs `job` if this instance gets the cluster-wide lease `name` for this cycle (always without a cluster):
    /// with several instances on one journal, their timers run each job once per cycle. `job` gets a token that
    /// is cancelled when the lease stops holding (the store unreachable), so a pass stops between two removals.
    async fn as_job<F: Future<Output = bool>>(
        &self,
        name: &str,
        period: Duration,
        shutdown: &CancellationToken,
        job: impl FnOnce(CancellationToken) -> F,
    ) {
        let Some(guard) = self.leadership.job(name, period / 2).await else {
            info!(
                message = "Skipped: another instance runs this job this cycle, or the cluster store did not answer.",
                job = name
            );
            return;
        };
        let stop = shutdown.child_token();
        let watch = async {
            while guard.holds() {
                tokio::time::sleep(JOB_LEASE_CHECK).await;
            }
            warn!(message = "Lost the job's lease (cluster store unreachable); stopping the run.", job = name);
            stop.cancel();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = job(stop.clone()) => {}
            _ = watch => {}
        }
    }

    async fn feed_update(&self, shutdown: &CancellationToken) -> bool {
        let update = feeds::update(&self.misp, &self.config.housekeeping.feeds, &self.metrics, shutdown);
        self.supervisor.pass("feed", update).await.unwrap_or_else(|_| {
            Metrics::inc(&self.metrics.feed_updates, "error");
            false
        })
    }
}

async fn run(config: Config, cli: Cli, shutdown: CancellationToken) -> Result<ExitCode> {
    let metrics = Arc::new(Metrics::new());
    let targets = config
        .targets
        .iter()
        .map(|t| {
            let client = clients::fortigate_timed(t, &metrics).with_context(|| format!("fortigate {}", t.name))?;
            let target_metrics = TargetMetrics::new(metrics.clone(), &t.name);
            // The series the alert rules watch start at 0, so their first increase is seen.
            for reason in ["in_use", "error", "safety_rail", "misp_unavailable", "panic"] {
                drop(target_metrics.failure(reason));
            }
            Ok(pass::HkTarget { config: t.clone(), client: Arc::new(client), metrics: target_metrics })
        })
        .collect::<Result<Vec<_>>>()?;
    if config.misp.feed_update_interval.is_some() {
        Metrics::start_at_zero(&metrics.feed_updates, &["error", "failed", "feed_disabled"]);
    }
    let (journal, journal_error) = Journal::open_config(&config.state);
    if let Some(error) = journal_error {
        error!(
            message = "Journal cannot be opened; removals are not recorded durably. Fix state.path or state.url.",
            %error
        );
        metrics.journal_degraded.set(1);
    }
    let supervisor = Supervisor::new(Health::default(), cli.faults());
    // A hand-run pass (`--once`, `--dry-run`) is the operator's act: it takes no job lease.
    let leadership = if cli.once || cli.dry_run {
        Leadership::solo()
    } else {
        Leadership::from_config(&config.state, config.cluster.as_ref(), "housekeeping", Vec::new())
    };
    let daemon = Daemon {
        leadership,
        supervisor: supervisor.clone(),
        targets,
        misp: Arc::new(clients::misp_timed(&config.misp, &metrics).context("misp")?),
        journal,
        metrics: metrics.clone(),
        config,
    };
    tokio::spawn(fortimisp_core::process::cancel_on_signal(shutdown.clone()));

    if cli.once || cli.dry_run {
        let pruned = daemon.prune(cli.dry_run, cli.force, &shutdown, ReportTo::Summary).await;
        let fed = match (cli.dry_run, &daemon.config.misp.feed_update_interval) {
            (false, Some(_)) => daemon.feed_update(&shutdown).await,
            _ => true,
        };
        flush_journal(&daemon.journal).await;
        return Ok(if pruned && fed { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }

    // The metrics server outlives the timers, so `/healthz` answers 503 while a pass is stopping.
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = daemon.config.metrics.housekeeping_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.housekeeping_listen: cannot listen on {addr}"))?;
        let names = daemon.targets.iter().map(|t| t.config.name.clone()).collect();
        let readiness = Readiness::new(names, daemon.config.blocking.healthy_share);
        let (m, h, r, stop) = (metrics.clone(), supervisor.health().clone(), readiness.clone(), metrics_stop.clone());
        tokio::spawn(supervisor.fatal("metrics", async move {
            if let Err(error) = metrics::serve(listener, m, h, r, stop).await {
                error!(message = "Metrics server failed.", %error);
            }
        }));
        let probed: Vec<ready::ProbedTarget> = daemon
            .targets
            .iter()
            .map(|t| ready::ProbedTarget { client: t.client.clone(), metrics: t.metrics.clone() })
            .collect();
        let (misp, stop) = (daemon.misp.clone(), metrics_stop.clone());
        tokio::spawn(supervisor.restarting("readiness", metrics_stop.clone(), move || {
            ready::probe(misp.clone(), probed.clone(), readiness.clone(), stop.clone())
        }));
    }
    // A fatal death stops the timers the way SIGTERM does; either way `/healthz` turns 503 at once.
    {
        let (supervisor, shutdown) = (supervisor.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = supervisor.failed() => shutdown.cancel(),
                _ = shutdown.cancelled() => {}
            }
            supervisor.begin_shutdown();
        });
    }
    supervisor.health().set_task("prune", fortimisp_core::metrics::TaskState::Running);
    if daemon.config.misp.feed_update_interval.is_some() {
        supervisor.health().set_task("feed", fortimisp_core::metrics::TaskState::Running);
    }
    info!(message = "fortimisp housekeeping running.", interval = ?daemon.config.housekeeping.interval,
          max_age = ?daemon.config.housekeeping.max_age, feed_update_interval = ?daemon.config.misp.feed_update_interval);

    let intervals = schedule::Intervals {
        prune: daemon.config.housekeeping.interval,
        feed: daemon.config.misp.feed_update_interval,
    };
    // --force overrides the safety rail once, not for the life of the daemon.
    let force_next = AtomicBool::new(cli.force);
    let (d, stop, force) = (&daemon, &shutdown, &force_next);
    let timers = schedule::schedule(
        move || async move {
            d.as_job("job:prune", intervals.prune, stop, |stop| async move {
                d.prune(false, force.swap(false, Ordering::Relaxed), &stop, ReportTo::Log).await
            })
            .await;
        },
        move || async move {
            let period = intervals.feed.unwrap_or_default();
            d.as_job("job:feeds", period, stop, |stop| async move { d.feed_update(&stop).await }).await;
        },
        intervals,
        &shutdown,
    );
    tokio::select! {
        _ = timers => {}
        _ = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            warn!(message = "A run did not stop within the shutdown grace; exiting anyway. The journal keeps what was pending.",
                  grace = ?SHUTDOWN_GRACE);
        }
    }
    supervisor.begin_shutdown();
    metrics_stop.cancel();
    daemon.leadership.release(Duration::from_secs(2)).await;
    flush_journal(&daemon.journal).await;
    info!(message = "Stopped.");
    Ok(if supervisor.failed_task().is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Writes back what the journal buffered in memory while the file refused writes (nothing when healthy).
async fn flush_journal(journal: &Journal) {
    if let Err(error) = journal.flush().await {
        error!(message = "Journal entries buffered in memory could not be written before exit.", %error);
    }
}
