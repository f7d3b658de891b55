//! `storebench`: how many block decisions per second the journal store sustains (issue 16), PostgreSQL against the
//! SQLite baseline in the same run.
//!
//! One decision is what the daemon journals for a new block before any FortiGate call: the pending action
//! (`enqueue`) and the decision row (`record_decision`). Each simulated instance is a `Journal` of its own (its
//! writer thread and connection, as in a daemon) with `--tasks` callers at once; `--instances` of them share the
//! store, each deciding its own addresses (SQLite: one instance, a file in a temporary directory).
//!
//! Usage: `storebench --url postgres://postgres@127.0.0.1:5432/storebench [--per-instance 3000] [--tasks 8]`. The
//! database must exist and be empty (a fresh one per run).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Parser;
use fortimisp_core::journal::{ActionKind, Decision, Journal, NewAction, PostgresTarget};

#[derive(Parser)]
struct Args {
    /// An empty PostgreSQL database.
    #[arg(long)]
    url: String,
    /// Decisions each instance makes.
    #[arg(long, default_value_t = 3_000)]
    per_instance: u32,
    /// Callers at once per instance.
    #[arg(long, default_value_t = 8)]
    tasks: u32,
}

/// Journals `n` decisions from `tasks` callers, addresses from `base`; returns the time taken.
async fn decide(journal: &Journal, base: u32, n: u32, tasks: u32) -> Result<Duration> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let journal = journal.clone();
        set.spawn(async move {
            let mut i = t;
            while i < n {
                let ip = IpAddr::V4(Ipv4Addr::from(base + i));
                let action = NewAction {
                    target: "default".into(),
                    kind: ActionKind::Block,
                    ip,
                    reason: "misp-event=1 rule=0".into(),
                    event_id: Some(1),
                    rule: Some(0),
                    comment: Some("fortimisp storebench".into()),
                    requested_at: Utc::now(),
                };
                journal.enqueue(&action).await?;
                let decision = Decision {
                    at: Utc::now(),
                    target: Some("default".into()),
                    ip,
                    verdict: "block".into(),
                    detail: "misp-event=1 rule=0".into(),
                    event_id: Some(1),
                    rule: Some(0),
                };
                journal.record_decision(&decision).await?;
                i += tasks;
            }
            Ok::<(), fortimisp_core::journal::Error>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.context("a caller panicked")??;
    }
    Ok(started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let sqlite = Journal::open(&dir.path().join("journal.db"))?;
    let took = decide(&sqlite, 0x2d00_0000, args.per_instance, args.tasks).await?;
    let baseline = f64::from(args.per_instance) / took.as_secs_f64();
    println!("sqlite      1 instance : {baseline:8.0} decisions/s ({} in {took:.2?})", args.per_instance);
    let target = PostgresTarget::new(&args.url, None, None).map_err(anyhow::Error::msg)?;
    for instances in [1u32, 3] {
        let journals: Vec<Journal> =
            (0..instances).map(|_| Journal::open_postgres(&target)).collect::<Result<_, _>>()?;
        let started = Instant::now();
        let runs = journals.iter().enumerate().map(|(k, j)| {
            let base = 0x2e00_0000 + (instances * 10 + k as u32) * 0x0010_0000;
            decide(j, base, args.per_instance, args.tasks)
        });
        for took in futures::future::join_all(runs).await {
            took?;
        }
        let took = started.elapsed();
        let total = args.per_instance * instances;
        let rate = f64::from(total) / took.as_secs_f64();
        println!(
            "postgresql {instances} instance{}: {rate:8.0} decisions/s ({total} in {took:.2?}), {:.2}x SQLite",
            if instances == 1 { " " } else { "s" },
            rate / baseline
        );
    }
    Ok(())
}
