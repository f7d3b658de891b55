//! `fleetbench`: the fleet figures of BENCHMARKS.md ("Fleet"), each with its baseline in the same run (see
//! [`fortimisp_testkit::fleetbench`]).
//!
//! ```text
//! fleetbench                                  # 50 targets at 50 ms, 50 lines, 1 000 blocks at 50 rps (~2 min)
//! fleetbench --blocks 10000                   # the BENCHMARKS.md run (~9 min on 2 cores, CPU-bound)
//! fleetbench --targets 3 --blocks 20 --latency 0s --baseline-targets 0
//! ```
//!
//! Prints a table; `--json` adds the same figures as one JSON line (prefixed `JSON `).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use fortimisp_core::config::Scope;
use fortimisp_testkit::fleetbench::{self, latency::LatencyOptions, Options};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScopeArg {
    Fleet,
    Origin,
}

#[derive(Debug, Parser)]
#[command(name = "fleetbench", about = "Fleet benchmarks of the fortimisp integration daemon")]
struct Args {
    /// The integration binary [default: $FORTIMISP_BIN_DIR/integration, else next to this executable].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Emulated FortiGates (targets).
    #[arg(long, default_value_t = 50)]
    targets: usize,
    /// Targets of the baseline fleet (the latency part only); 0: no baseline.
    #[arg(long, default_value_t = 1)]
    baseline_targets: usize,
    /// Added to every FortiGate emulator answer.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// `[blocking] scope`.
    #[arg(long, value_enum, default_value_t = ScopeArg::Fleet)]
    scope: ScopeArg,
    /// Each target's `requests_per_second`.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// `[blocking] max_blocks_per_minute` (per target; high, so that the rate limit binds).
    #[arg(long, default_value_t = 100_000)]
    max_blocks_per_minute: u32,
    /// Latency part: triggering lines, one new indicator each.
    #[arg(long, default_value_t = 50)]
    lines: u32,
    /// Latency part: time between two lines.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// Latency part: after the last line, wait at most this long for its blocks.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Blocks part: new blocks fanned out (0: no blocks part).
    #[arg(long, default_value_t = 1_000)]
    blocks: u32,
    /// Blocks part: lines per second.
    #[arg(long, default_value_t = 2_000)]
    send_rate: u32,
    /// Also print the figures as one JSON line.
    #[arg(long)]
    json: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let daemon = match args.daemon.clone() {
        Some(daemon) => daemon,
        None => fortimisp_testkit::harness::Binaries::locate()?.path("integration"),
    };
    let opts = Options {
        daemon,
        targets: args.targets,
        baseline_targets: (args.baseline_targets > 0).then_some(args.baseline_targets),
        scope: match args.scope {
            ScopeArg::Fleet => Scope::Fleet,
            ScopeArg::Origin => Scope::Origin,
        },
        fortigate_latency: args.latency,
        rps: args.rps,
        max_blocks_per_minute: args.max_blocks_per_minute,
        latency: LatencyOptions { lines: args.lines, gap: args.gap, settle: args.settle },
        blocks: args.blocks,
        send_rate: args.send_rate,
    };
    let report = fleetbench::run(&opts).await?;
    println!("{report}");
    if args.json {
        println!("JSON {}", report.to_json());
    }
    Ok(())
}
