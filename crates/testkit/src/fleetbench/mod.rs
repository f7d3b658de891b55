//! Fleet benchmarks (issue 15), behind the `fleetbench` binary: the real `integration` daemon against N emulated
//! FortiGates ([`crate::fleet::Fleet`]), each figure next to a baseline from the same run.
//!
//! Parts, run on one daemon in this order:
//! - [`latency`]: triggering lines a gap apart; line → the first and the last target holding the block (polled
//!   on the emulators), and each target's requests per block. Baseline: the same lines against a fleet of one.
//! - [`blocks`]: thousands of new blocks fanned out to every target: the total time, and each target's request
//!   rate from its emulator's log against its `requests_per_second`. Baseline: the time floor that rate limit
//!   implies (requests per target ÷ rps).
//! - The daemon's RSS (`/proc/<pid>/status`) after each part, and its peak.
//!
//! [`lab`] starts the fleet and the daemon; [`requests`] reads a target's request log. [`run`] returns a
//! [`Report`], printed as a table ([`std::fmt::Display`]) and as JSON ([`Report::to_json`]). Nothing here asserts
//! on timings; the smoke test (`tests/fleetbench_smoke.rs`) checks the structure and that every block landed.

pub mod blocks;
pub mod lab;
pub mod latency;
pub mod requests;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fortimisp_core::config::Scope;
use serde_json::{json, Value};

use crate::bench::{fmt_ms, fmt_ratio, mib, ratio, Machine, Summary};
use blocks::{BlocksFigures, BlocksOptions};
use lab::{FleetLab, LabOptions};
use latency::{LatencyFigures, LatencyOptions};
use requests::{spread, TargetRequests};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `integration` binary.
    pub daemon: PathBuf,
    pub targets: usize,
    /// The fleet size of the baseline (latency part only); `None`: no baseline.
    pub baseline_targets: Option<usize>,
    pub scope: Scope,
    /// Every emulator's added latency.
    pub fortigate_latency: Duration,
    /// Each target's `requests_per_second`.
    pub rps: u32,
    /// `[blocking] max_blocks_per_minute`, high by default so that the rate limit is what binds.
    pub max_blocks_per_minute: u32,
    pub latency: LatencyOptions,
    /// New blocks of the blocks part (0: no blocks part).
    pub blocks: u32,
    /// Lines per second of the blocks part.
    pub send_rate: u32,
}

/// One fleet's figures.
#[derive(Debug, Clone)]
pub struct FleetFigures {
    pub targets: usize,
    pub latency: LatencyFigures,
    pub rss_after_latency_kib: u64,
    pub blocks: Option<BlocksFigures>,
    pub rss_end_kib: u64,
    pub hwm_kib: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    pub options: Options,
    pub fleet: FleetFigures,
    pub baseline: Option<FleetFigures>,
}

/// Runs the baseline (if any), then the fleet.
pub async fn run(opts: &Options) -> Result<Report> {
    let mut machine = Machine::now();
    let start = Instant::now();
    let baseline = match opts.baseline_targets.filter(|b| *b != opts.targets) {
        Some(b) => Some(measure(opts, b, 0).await.context("the baseline fleet")?),
        None => None,
    };
    let fleet = measure(opts, opts.targets, opts.blocks).await.context("the fleet")?;
    machine.finish(start.elapsed().as_secs_f64());
    Ok(Report { machine, options: opts.clone(), fleet, baseline })
}

/// One daemon against `targets` emulators: the latency part, then `blocks` new blocks.
async fn measure(opts: &Options, targets: usize, blocks: u32) -> Result<FleetFigures> {
    let lab_opts = LabOptions {
        daemon: opts.daemon.clone(),
        targets,
        scope: opts.scope,
        fortigate_latency: opts.fortigate_latency,
        rps: opts.rps,
        max_blocks_per_minute: opts.max_blocks_per_minute,
        indicators: opts.latency.lines + blocks,
    };
    let mut lab = FleetLab::start(&lab_opts).await?;
    let latency = latency::measure(&mut lab, opts.scope, &opts.latency).await?;
    let rss_after_latency_kib = lab.rss_kib().0;
    let blocks = if blocks > 0 {
        let before: Vec<usize> = (0..targets).map(|i| lab.blocked_on(i)).collect();
        let part = BlocksOptions { blocks, send_rate: opts.send_rate, first: opts.latency.lines };
        // Two writes per block at `rps`, three times over, and two minutes.
        let within = Duration::from_secs_f64(f64::from(blocks) * 2.0 / f64::from(opts.rps.max(1)) * 3.0 + 120.0);
        Some(blocks::measure(&mut lab, opts.scope, opts.rps, &part, &before, within).await?)
    } else {
        None
    };
    let (rss_end_kib, hwm_kib) = lab.rss_kib();
    Ok(FleetFigures { targets, latency, rss_after_latency_kib, blocks, rss_end_kib, hwm_kib })
}

// ---- report -----------------------------------------------------------------------------------------------

impl FleetFigures {
    fn to_json(&self) -> Value {
        let (rpb_min, rpb_mean, rpb_max) = spread(&self.latency.requests, TargetRequests::per_block);
        json!({
            "targets": self.targets, "latency": self.latency.to_json(),
            "requests_per_block_per_target": {"min": rpb_min, "mean": rpb_mean, "max": rpb_max},
            "rss_after_latency_mib": mib(self.rss_after_latency_kib),
            "blocks": self.blocks.as_ref().map(BlocksFigures::to_json),
            "rss_end_mib": mib(self.rss_end_kib), "hwm_mib": mib(self.hwm_kib),
        })
    }
}

impl Report {
    /// One JSON object (for scripts and BENCHMARKS.md).
    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "machine": self.machine.to_json(),
            "options": {
                "targets": o.targets, "baseline_targets": o.baseline_targets, "scope": o.scope.to_string(),
                "fortigate_latency_ms": o.fortigate_latency.as_secs_f64() * 1000.0, "rps": o.rps,
                "max_blocks_per_minute": o.max_blocks_per_minute, "lines": o.latency.lines,
                "gap_ms": o.latency.gap.as_secs_f64() * 1000.0,
                "probe_every_ms": latency::PROBE_EVERY.as_secs_f64() * 1000.0,
                "blocks": o.blocks, "send_rate": o.send_rate,
            },
            "fleet": self.fleet.to_json(),
            "baseline": self.baseline.as_ref().map(FleetFigures::to_json),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.machine.header("fleetbench"))?;
        f.write_str(&latency_table(self))?;
        if let Some(b) = &self.fleet.blocks {
            f.write_str(&blocks_table(self, b))?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The latency part: the fleet, the baseline, and fleet ÷ baseline.
fn latency_table(r: &Report) -> String {
    let o = &r.options;
    let (fleet, base) = (&r.fleet, r.baseline.as_ref());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== Line to block: {} lines {} ms apart, FortiGate latency {} ms, {} rps per target, scope {}, \
         emulators polled every {} ms",
        o.latency.lines,
        o.latency.gap.as_millis(),
        o.fortigate_latency.as_millis(),
        o.rps,
        o.scope,
        latency::PROBE_EVERY.as_millis()
    );
    let head = |n: usize| format!("{n} target{}", plural(n));
    let _ = writeln!(
        out,
        "{:<44} {:>18} {:>18} {:>10}",
        "figure",
        head(fleet.targets),
        base.map_or_else(|| "—".into(), |b| head(b.targets)),
        "ratio*"
    );
    let mut row = |label: &str, a: String, b: Option<String>, ratio: Option<f64>| {
        let _ = writeln!(out, "{label:<44} {a:>18} {:>18} {:>10}", b.unwrap_or_else(|| "—".into()), fmt_ratio(ratio));
    };
    let timing = [
        ("line → last target, p50 / p99 ms", fleet.latency.to_last, base.map(|b| b.latency.to_last)),
        ("line → first target, p50 / p99 ms", fleet.latency.to_first, base.map(|b| b.latency.to_first)),
    ];
    for (label, a, b) in timing {
        row(label, a.p50_p99(), b.map(Summary::p50_p99), b.and_then(|b| ratio(a.p50, b.p50)));
    }
    type Get = fn(&FleetFigures) -> Option<f64>;
    let firsts: [(&str, Get); 2] = [
        ("first line → last target, ms", |x| x.latency.first_line_ms),
        ("other lines → last target, max ms", |x| x.latency.others_max_ms),
    ];
    for (label, get) in firsts {
        row(
            label,
            get(fleet).map_or_else(|| "—".into(), fmt_ms),
            base.and_then(get).map(fmt_ms),
            get(fleet).zip(base.and_then(get)).and_then(|(a, b)| ratio(a, b)),
        );
    }
    let complete = |x: &FleetFigures| format!("{}/{}", x.latency.complete, x.latency.lines);
    row("lines blocked on every target", complete(fleet), base.map(complete), None);
    let per_block = |x: &FleetFigures| spread(&x.latency.requests, TargetRequests::per_block);
    let show = |(min, mean, max): (f64, f64, f64)| format!("{min:.2}/{mean:.2}/{max:.2}");
    row(
        "requests per block per target, min/mean/max",
        show(per_block(fleet)),
        base.map(|b| show(per_block(b))),
        base.and_then(|b| ratio(per_block(fleet).1, per_block(b).1)),
    );
    let writes = |x: &FleetFigures| spread(&x.latency.requests, TargetRequests::writes_per_block).1;
    row(
        "writes per block per target, mean",
        format!("{:.2}", writes(fleet)),
        base.map(|b| format!("{:.2}", writes(b))),
        base.and_then(|b| ratio(writes(fleet), writes(b))),
    );
    row(
        "daemon RSS after the lines, MiB",
        format!("{:.1}", mib(fleet.rss_after_latency_kib)),
        base.map(|b| format!("{:.1}", mib(b.rss_after_latency_kib))),
        base.and_then(|b| ratio(fleet.rss_after_latency_kib as f64, b.rss_after_latency_kib as f64)),
    );
    let _ =
        writeln!(out, "(* {} ÷ {} targets; of the p50s for p50 / p99)", fleet.targets, base.map_or(0, |b| b.targets));
    out
}

/// The blocks part: the time against the rate limit's floor, each target's rate against its rps.
fn blocks_table(r: &Report, b: &BlocksFigures) -> String {
    let fleet = &r.fleet;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== {} new blocks to {} target{} ({} rps each, max_blocks_per_minute {}), lines sent at {}/s in {:.1} s",
        b.blocks,
        fleet.targets,
        plural(fleet.targets),
        b.rps,
        r.options.max_blocks_per_minute,
        r.options.send_rate,
        b.send_s
    );
    let (rq_min, _, rq_max) = spread(&b.requests, |t| t.requests as f64);
    let (pb_min, pb_mean, pb_max) = spread(&b.requests, TargetRequests::per_block);
    let (rate_min, rate_mean, rate_max) = spread(&b.requests, TargetRequests::mean_rate);
    let most = b.requests.iter().map(|t| t.max_per_second).max().unwrap_or(0);
    let rows = [
        ("first line → last write on any target", format!("{:.1} s", b.total_s)),
        ("first line → daemon reports all done", format!("{:.1} s", b.done_s)),
        ("floor: most requests per target ÷ rps", format!("{:.1} s", b.floor_s())),
        ("total ÷ floor", fmt_ratio(ratio(b.total_s, b.floor_s()))),
        ("requests per target, min / max", format!("{rq_min:.0} / {rq_max:.0}")),
        ("requests per block per target, min/mean/max", format!("{pb_min:.2}/{pb_mean:.2}/{pb_max:.2}")),
        ("request rate per target, min/mean/max", format!("{rate_min:.1}/{rate_mean:.1}/{rate_max:.1} /s")),
        ("most requests in any 1 s, any target", format!("{most} (rps {})", b.rps)),
        ("blocks missing on the worst target", b.missing_max.to_string()),
        ("daemon CPU, s (cores while blocking)", format!("{:.1} ({:.2})", b.daemon_cpu_s, b.daemon_cpu_s / b.total_s)),
        ("daemon RSS at the end / peak, MiB", format!("{:.1} / {:.1}", mib(fleet.rss_end_kib), mib(fleet.hwm_kib))),
    ];
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<44} {value:>22}");
    }
    out
}
