//! Threat-feed benchmarks (issue 14), behind the `feedbench` binary: the real `integration` daemon against the
//! emulators, through the harness's [`Lab`] as loadgen runs it, each figure next to a baseline measured in the
//! same run.
//!
//! Parts, each usable on its own:
//! - [`serving`]: one feed of N indicators (`contents = "indicators"`, two addresses apart so nothing
//!   aggregates) served over HTTPS with basic auth: body bytes, time to first byte and to the last byte, fetches
//!   per second and 304s per second with 1..n clients, the server's CPU per answer. Baseline: [`baseline`], the
//!   same bytes from a file through Python's `http.server` with the same certificate and credentials.
//! - [`latency`]: triggering line → entry, for push (the emulated FortiGate's feed) and pull (the served file),
//!   against the address-group backend (object in a block group) with the same emulator latencies.
//! - [`memory`]: the daemon's RSS with N indicators in `contents = "indicators"` mode, against the same daemon
//!   and data with the address-group backend (the mirror alone).
//! - [`client`]: the HTTPS client of the serving and memory parts: a new connection and a full TLS handshake per
//!   fetch, as a FortiGate's pulls minutes apart, with the phases timed.
//!
//! [`run`] runs the parts asked for and returns a [`Report`], printed as a table ([`std::fmt::Display`]) and
//! as JSON ([`Report::to_json`]). Nothing here asserts on timings: benchmarks report; the smoke test
//! (`tests/feedbench_smoke.rs`) checks only that every part produced figures.

pub mod baseline;
pub mod client;
pub mod latency;
pub mod memory;
pub mod serving;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{Contents, UpdateMethod};
use fortimisp_core::feed::Family;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::bench::{fmt_ms, fmt_ratio, mib, ratio};
pub use crate::bench::{Machine, Summary};
use crate::loadgen::{Lab, LabFeed, LabOptions};
use baseline::{Baseline, BaselineCommand, BaselineFiles};
use client::FeedClient;
use latency::{LatencyFigures, LatencyOptions};
use memory::{MemoryFigures, MemoryOptions};
use serving::{ServingFigures, ServingOptions};

/// How long the serving lab may take to serve its feed once the mirror synced.
const SERVED_WITHIN: Duration = Duration::from_secs(300);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `integration` binary.
    pub daemon: PathBuf,
    pub serving: Option<ServingRun>,
    pub latency: Option<LatencyOptions>,
    pub memory: Option<MemoryOptions>,
}

/// The serving part: the feed's size, how to fetch it, and the baseline (`None`: none).
#[derive(Debug, Clone)]
pub struct ServingRun {
    pub entries: u32,
    pub options: ServingOptions,
    pub baseline: Option<BaselineCommand>,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    pub serving: Option<ServingReport>,
    pub latency: Option<LatencyReport>,
    pub memory: Option<MemoryReport>,
}

/// The serving part's figures.
#[derive(Debug, Clone)]
pub struct ServingReport {
    pub entries: u32,
    pub options: ServingOptions,
    pub fortimisp: ServingFigures,
    pub baseline: Option<ServingFigures>,
}

/// The latency part's figures.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    pub options: LatencyOptions,
    pub address_group: LatencyFigures,
    pub push: LatencyFigures,
    pub pull: LatencyFigures,
}

/// The memory part's figures.
#[derive(Debug, Clone)]
pub struct MemoryReport {
    pub options: MemoryOptions,
    pub address_group: MemoryFigures,
    pub feeds: MemoryFigures,
}

/// Runs the parts `opts` asks for, in order: serving, latency, memory.
pub async fn run(opts: &Options) -> Result<Report> {
    let mut machine = Machine::now();
    let start = Instant::now();
    let serving = match &opts.serving {
        Some(run) => Some(serve(opts, run).await.context("serving")?),
        None => None,
    };
    let latency = match &opts.latency {
        Some(lat) => {
            let address_group = latency::measure(&opts.daemon, latency::System::AddressGroup, lat).await?;
            let push = latency::measure(&opts.daemon, latency::System::Push, lat).await?;
            let pull = latency::measure(&opts.daemon, latency::System::Pull, lat).await?;
            Some(LatencyReport { options: lat.clone(), address_group, push, pull })
        }
        None => None,
    };
    let memory = match &opts.memory {
        Some(mem) => {
            let (address_group, feeds) = memory::measure(&opts.daemon, mem).await.context("memory")?;
            Some(MemoryReport { options: mem.clone(), address_group, feeds })
        }
        None => None,
    };
    machine.finish(start.elapsed().as_secs_f64());
    Ok(Report { machine, serving, latency, memory })
}

/// The serving part: the daemon's feed, then the baseline serving the same bytes.
async fn serve(opts: &Options, run: &ServingRun) -> Result<ServingReport> {
    let mut lab_opts = LabOptions::new(opts.daemon.clone());
    lab_opts.indicators = u64::from(run.entries);
    lab_opts.indicator_stride = 2;
    lab_opts.mirror = true;
    lab_opts.feed = Some(LabFeed {
        update: vec![UpdateMethod::Pull],
        contents: Contents::Indicators,
        max_entries: run.entries.max(1),
        max_feeds: 1,
    });
    let lab = Lab::start(&lab_opts).await?;
    let access = lab.feed.clone().context("the lab has threat feeds")?;
    let name = access.names.name(Family::V4, 0);
    let path = format!("/feeds/{name}.txt");
    let listen = access.listen.context("a pulled feed has a listener")?;
    let client = FeedClient::new(listen, &path, &access.ca_pem, &access.username, &access.password)?;
    let synced = Instant::now();
    loop {
        let fetch = client.fetch(None, true).await;
        let served = fetch.as_ref().ok().filter(|f| f.status == 200).and_then(|f| f.body.as_deref());
        if served.and_then(serving::announced_entries) == Some(u64::from(run.entries)) {
            break;
        }
        if synced.elapsed() > SERVED_WITHIN {
            bail!("the feed was not served in full within {SERVED_WITHIN:?}; log:\n{}", lab.log_text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (fortimisp, body) = serving::measure("fortimisp", &client, lab.daemon_pid(), &run.options)
        .await
        .inspect_err(|_| eprintln!("daemon log:\n{}", lab.log_text()))?;
    drop(lab);

    let baseline = match &run.baseline {
        Some(command) => {
            let dir = std::env::temp_dir().join(format!("fortimisp-feedbench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let files = BaselineFiles {
                file_name: &format!("{name}.txt"),
                body: &body,
                cert_pem: &access.cert_pem,
                key_pem: &access.key_pem,
                user: &access.username,
                password: &access.password,
            };
            let result = async {
                let server = Baseline::start(command, &dir, &files)?;
                let client = FeedClient::new(server.addr, &path, &access.ca_pem, &access.username, &access.password)?;
                let (figures, _) = serving::measure("python http.server", &client, server.pid(), &run.options).await?;
                Ok::<_, anyhow::Error>(figures)
            }
            .await;
            let _ = std::fs::remove_dir_all(&dir);
            Some(result.context("the baseline")?)
        }
        None => None,
    };
    Ok(ServingReport { entries: run.entries, options: run.options.clone(), fortimisp, baseline })
}

// ---- report -----------------------------------------------------------------------------------------------

impl ServingFigures {
    fn to_json(&self) -> Value {
        json!({
            "system": self.system, "body_bytes": self.body_bytes, "entries": self.entries,
            "handshake": self.handshake_ms.to_json(), "first_byte": self.headers_ms.to_json(),
            "full_body": self.total_ms.to_json(),
            "rates": self.rates.iter().map(|r| json!({
                "clients": r.clients, "if_none_match": r.conditional, "answers": r.answers, "errors": r.errors,
                "seconds": r.seconds, "per_second": r.per_second(), "bytes": r.bytes,
                "server_cpu_s": r.server_cpu_s, "server_cores": r.server_cores(),
                "server_cpu_ms_per_answer": r.cpu_ms_per_answer(),
            })).collect::<Vec<_>>(),
            "rss_mib": mib(self.rss_kib), "hwm_mib": mib(self.hwm_kib),
        })
    }

    fn rate(&self, clients: usize, conditional: bool) -> Option<&serving::Rate> {
        self.rates.iter().find(|r| r.clients == clients && r.conditional == conditional)
    }
}

impl LatencyFigures {
    fn to_json(&self) -> Value {
        json!({
            "system": self.system.as_str(), "sent": self.sent, "seen": self.seen, "latency": self.ms.to_json(),
            "first_line_ms": self.first_ms, "others_max_ms": self.others_max_ms,
        })
    }
}

impl MemoryFigures {
    fn to_json(&self) -> Value {
        json!({
            "system": self.system, "mirror_indicators": self.mirror_indicators,
            "served_entries": self.served_entries, "served_bytes": self.served_bytes,
            "served_after_sync_s": self.served_after_sync_s,
            "rss_mib": mib(self.rss_kib), "rss_settled_mib": mib(self.rss_settled_kib),
            "hwm_mib": mib(self.hwm_kib),
        })
    }
}

impl Report {
    /// One JSON object (for scripts and BENCHMARKS.md).
    pub fn to_json(&self) -> Value {
        json!({
            "machine": self.machine.to_json(),
            "serving": self.serving.as_ref().map(|s| json!({
                "entries": s.entries, "sequential_fetches": s.options.fetches,
                "rate_seconds": s.options.duration.as_secs_f64(),
                "fortimisp": s.fortimisp.to_json(),
                "baseline": s.baseline.as_ref().map(ServingFigures::to_json),
            })),
            "latency": self.latency.as_ref().map(|l| json!({
                "lines": l.options.lines, "gap_ms": l.options.gap.as_secs_f64() * 1000.0,
                "misp_latency_ms": l.options.misp_latency.as_secs_f64() * 1000.0,
                "fortigate_latency_ms": l.options.fortigate_latency.as_secs_f64() * 1000.0,
                "probe_every_ms": latency::PROBE_EVERY.as_secs_f64() * 1000.0,
                "address_group": l.address_group.to_json(), "push": l.push.to_json(), "pull": l.pull.to_json(),
            })),
            "memory": self.memory.as_ref().map(|mem| json!({
                "indicators": mem.options.indicators, "max_entries": mem.options.max_entries,
                "max_feeds": mem.options.max_feeds, "settle_s": mem.options.settle.as_secs_f64(),
                "address_group": mem.address_group.to_json(), "threat_feed": mem.feeds.to_json(),
                "difference_rss_mib": mib(mem.feeds.rss_kib) - mib(mem.address_group.rss_kib),
                "difference_rss_settled_mib": mib(mem.feeds.rss_settled_kib) - mib(mem.address_group.rss_settled_kib),
                "difference_hwm_mib": mib(mem.feeds.hwm_kib) - mib(mem.address_group.hwm_kib),
            })),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.machine.header("feedbench"))?;
        if let Some(s) = &self.serving {
            f.write_str(&serving_table(s))?;
        }
        if let Some(l) = &self.latency {
            writeln!(
                f,
                "\n== Triggering line to entry: {} lines {} ms apart, MISP {} ms, FortiGate {} ms, polled every {} ms",
                l.options.lines,
                l.options.gap.as_millis(),
                l.options.misp_latency.as_millis(),
                l.options.fortigate_latency.as_millis(),
                latency::PROBE_EVERY.as_millis()
            )?;
            writeln!(
                f,
                "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12} {:>14}",
                "system", "seen", "p50 ms", "p99 ms", "max ms", "first ms", "others max", "p50 ÷ addr-grp"
            )?;
            for fig in [&l.address_group, &l.push, &l.pull] {
                let r = ratio(fig.ms.p50, l.address_group.ms.p50);
                writeln!(
                    f,
                    "{:<28} {:>6} {:>10} {:>10} {:>10} {:>10} {:>12} {:>14}",
                    fig.system.as_str(),
                    format!("{}/{}", fig.seen, fig.sent),
                    fmt_ms(fig.ms.p50),
                    fmt_ms(fig.ms.p99),
                    fmt_ms(fig.ms.max),
                    fig.first_ms.map_or_else(|| "—".into(), fmt_ms),
                    fig.others_max_ms.map_or_else(|| "—".into(), fmt_ms),
                    fmt_ratio(r)
                )?;
            }
            writeln!(f, "(pull: the FortiGate loads the served file at its next refresh-rate, minutes later)")?;
        }
        if let Some(mem) = &self.memory {
            writeln!(
                f,
                "\n== Memory with {} MISP indicators (feeds: max_entries {}, max_feeds {})",
                mem.options.indicators, mem.options.max_entries, mem.options.max_feeds
            )?;
            let settled = format!("RSS +{} s", mem.options.settle.as_secs());
            writeln!(
                f,
                "{:<38} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "system", "mirror", "served", "RSS MiB", settled, "peak MiB"
            )?;
            for fig in [&mem.address_group, &mem.feeds] {
                writeln!(
                    f,
                    "{:<38} {:>10} {:>10} {:>10.1} {:>10.1} {:>10.1}",
                    fig.system,
                    fig.mirror_indicators,
                    fig.served_entries,
                    mib(fig.rss_kib),
                    mib(fig.rss_settled_kib),
                    mib(fig.hwm_kib)
                )?;
            }
            let d = |get: fn(&MemoryFigures) -> u64| mib(get(&mem.feeds)) - mib(get(&mem.address_group));
            writeln!(
                f,
                "{:<38} {:>10} {:>10} {:>+10.1} {:>+10.1} {:>+10.1}",
                "difference",
                "",
                "",
                d(|m| m.rss_kib),
                d(|m| m.rss_settled_kib),
                d(|m| m.hwm_kib)
            )?;
            writeln!(
                f,
                "(feeds served in full {:.1} s after the mirror synced, {} bytes in all)",
                mem.feeds.served_after_sync_s, mem.feeds.served_bytes
            )?;
        }
        Ok(())
    }
}

/// The serving part as a table: fortimisp, the baseline, and fortimisp ÷ baseline.
fn serving_table(s: &ServingReport) -> String {
    let mut out = String::new();
    let ours = &s.fortimisp;
    let base = s.baseline.as_ref();
    let _ = writeln!(
        out,
        "\n== Serving a {}-entry feed over HTTPS + basic auth, a new TLS connection per fetch ({} sequential fetches, \
         rates over {:.0} s)",
        s.entries,
        s.options.fetches,
        s.options.duration.as_secs_f64()
    );
    let _ = writeln!(out, "{:<34} {:>16} {:>20} {:>12}", "figure", "fortimisp", "python http.server", "fortimisp ÷");
    let mut row = |label: &str, a: String, b: Option<String>, r: Option<f64>| {
        let _ = writeln!(out, "{label:<34} {a:>16} {:>20} {:>12}", b.unwrap_or_else(|| "—".into()), fmt_ratio(r));
    };
    row(
        "body bytes",
        ours.body_bytes.to_string(),
        base.map(|b| b.body_bytes.to_string()),
        base.and_then(|b| ratio(ours.body_bytes as f64, b.body_bytes as f64)),
    );
    let timings = [
        ("handshake p50 / p99 ms", ours.handshake_ms, base.map(|b| b.handshake_ms)),
        ("first byte p50 / p99 ms", ours.headers_ms, base.map(|b| b.headers_ms)),
        ("full body p50 / p99 ms", ours.total_ms, base.map(|b| b.total_ms)),
    ];
    for (label, a, b) in timings {
        row(label, a.p50_p99(), b.map(Summary::p50_p99), b.and_then(|b| ratio(a.p50, b.p50)));
    }
    for r in &ours.rates {
        let kind = if r.conditional { "304s/s" } else { "fetches/s" };
        let theirs = base.and_then(|b| b.rate(r.clients, r.conditional));
        row(
            &format!("{kind}, {} client{}", r.clients, if r.clients == 1 { "" } else { "s" }),
            format!("{:.1}", r.per_second()),
            theirs.map(|t| format!("{:.1}", t.per_second())),
            theirs.and_then(|t| ratio(r.per_second(), t.per_second())),
        );
        row(
            "  server CPU ms per answer",
            format!("{:.2}", r.cpu_ms_per_answer()),
            theirs.map(|t| format!("{:.2}", t.cpu_ms_per_answer())),
            theirs.and_then(|t| ratio(r.cpu_ms_per_answer(), t.cpu_ms_per_answer())),
        );
        if r.errors > 0 || theirs.is_some_and(|t| t.errors > 0) {
            row("  errors", r.errors.to_string(), theirs.map(|t| t.errors.to_string()), None);
        }
    }
    // What one FortiGate pulling the full feed every 5 minutes costs the server, from the 1-client fetch rate.
    let pull_share = |x: &ServingFigures| x.rate(1, false).map(|r| r.cpu_ms_per_answer() / 300_000.0 * 100.0);
    row(
        "a full pull every 5 min, % of a core",
        pull_share(ours).map_or_else(|| "—".into(), |p| format!("{p:.4}")),
        base.and_then(pull_share).map(|p| format!("{p:.4}")),
        pull_share(ours).zip(base.and_then(pull_share)).and_then(|(a, b)| ratio(a, b)),
    );
    // Not comparable (the daemon also holds the mirror), so no ratio.
    row(
        "server RSS after, MiB",
        format!("{:.1}", mib(ours.rss_kib)),
        base.map(|b| format!("{:.1}", mib(b.rss_kib))),
        None,
    );
    out
}
