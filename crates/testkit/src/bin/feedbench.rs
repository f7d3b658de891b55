//! `feedbench`: the threat-feed figures of BENCHMARKS.md ("Threat feeds"), each with its baseline in the same run
//! (see [`fortimisp_testkit::feedbench`]).
//!
//! ```text
//! feedbench                                   # everything, the defaults below (release build: about 2.5 minutes)
//! feedbench --parts serving --entries 300000 --duration 10s --clients 1,4
//! feedbench --parts latency --lines 50 --gap 200ms --misp-latency 50ms --fortigate-latency 50ms
//! feedbench --parts memory --memory-indicators 1000000
//! ```
//!
//! Prints a table, then the same figures as one JSON line (prefixed `JSON `).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use fortimisp_testkit::feedbench::{
    self, baseline::BaselineCommand, latency::LatencyOptions, memory::MemoryOptions, serving::ServingOptions, Options,
    ServingRun,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Serving,
    Latency,
    Memory,
}

#[derive(Debug, Parser)]
#[command(name = "feedbench", about = "Threat-feed benchmarks of the fortimisp integration daemon")]
struct Args {
    /// Which parts to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Serving, Part::Latency, Part::Memory])]
    parts: Vec<Part>,
    /// The integration binary [default: $FORTIMISP_BIN_DIR/integration, else next to this executable].
    #[arg(long)]
    daemon: Option<PathBuf>,

    /// Serving: MISP indicators, all in the one feed served (`max_entries` = this).
    #[arg(long, default_value_t = 300_000)]
    entries: u32,
    /// Serving: sequential fetches for the timings.
    #[arg(long, default_value_t = 50)]
    fetches: usize,
    /// Serving: how long each rate runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Serving: concurrent clients, one rate each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4])]
    clients: Vec<usize>,
    /// Serving: no baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Serving: the Python interpreter of the baseline.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Serving: the baseline script [default: this repository's bench/feed_baseline.py].
    #[arg(long)]
    baseline_script: Option<PathBuf>,

    /// Latency: triggering lines, one new indicator each.
    #[arg(long, default_value_t = 50)]
    lines: u32,
    /// Latency: time between two lines.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// Latency: after the last line, wait at most this long for the last entry.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Latency: added to every MISP emulator answer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    misp_latency: Duration,
    /// Latency: added to every FortiGate emulator answer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    fortigate_latency: Duration,

    /// Memory: MISP indicators (the mirror).
    #[arg(long, default_value_t = 1_000_000)]
    memory_indicators: u64,
    /// Memory: `[feed] max_entries` (FortiOS before 7.4.4: 131 072 per feed).
    #[arg(long, default_value_t = 131_072)]
    memory_max_entries: u32,
    /// Memory: `[feed] max_feeds` (8 × 131 072 holds 1 M).
    #[arg(long, default_value_t = 8)]
    memory_max_feeds: u32,
    /// Memory: idle time before the second RSS reading.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    memory_settle: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let daemon = match args.daemon.clone() {
        Some(daemon) => daemon,
        None => fortimisp_testkit::harness::Binaries::locate()?.path("integration"),
    };
    let baseline = (!args.no_baseline).then(|| {
        let default = BaselineCommand::default_in_repo();
        BaselineCommand { python: args.python.clone(), script: args.baseline_script.clone().unwrap_or(default.script) }
    });
    let opts = Options {
        daemon,
        serving: args.parts.contains(&Part::Serving).then(|| ServingRun {
            entries: args.entries,
            options: ServingOptions { fetches: args.fetches, duration: args.duration, clients: args.clients.clone() },
            baseline,
        }),
        latency: args.parts.contains(&Part::Latency).then_some(LatencyOptions {
            lines: args.lines,
            gap: args.gap,
            settle: args.settle,
            misp_latency: args.misp_latency,
            fortigate_latency: args.fortigate_latency,
        }),
        memory: args.parts.contains(&Part::Memory).then_some(MemoryOptions {
            indicators: args.memory_indicators,
            max_entries: args.memory_max_entries,
            max_feeds: args.memory_max_feeds,
            settle: args.memory_settle,
        }),
    };
    let report = feedbench::run(&opts).await?;
    println!("{report}");
    println!("JSON {}", report.to_json());
    Ok(())
}
