//! `loadgen`: FortiGate corpus lines into the integration daemon at a fixed rate, and what came of them.
//!
//! By default it builds a lab in this process: the MISP emulator (holding the pool's indicators) and the FortiGate
//! emulator, both with optional latency, plus the real `integration` binary started as a child with a generated
//! config. It then sends for `--duration`, waits for the daemon to drain, and prints the report (see
//! [`fortimisp_testkit::loadgen`]). `--system naive` sends the same lines to the naive baseline instead, and
//! `--system both` runs the daemon and then the baseline at the same rate, in the same invocation.
//!
//! ```text
//! loadgen --rate 50000 --duration 60s --misp-latency 50ms --fortigate-latency 50ms --system both
//! loadgen --target 127.0.0.1:5514 --metrics 127.0.0.1:9090 --rate 1000   # an already running daemon
//! loadgen --flood-indicators 50 --rate 20000 --duration 10s --misp-latency 1s --settle 60s   # a scan
//! ```
//!
//! `--flood-indicators N` sends a scan instead of the pool: every line triggers and comes from a new source, and
//! N indicators among them are each sent `--flood-repeats` times, `--flood-gap` apart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use fortimisp_testkit::loadgen::{
    self, Corpus, Flood, Lab, LabOptions, Pool, Report, RunOptions, Scrape, SendPlan, Transport, UdpCounters,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SystemArg {
    Daemon,
    Naive,
    Both,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
}

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for the fortimisp integration daemon")]
struct Args {
    /// Lines per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// Distinct source addresses.
    #[arg(long, default_value_t = 30_000)]
    pool: u32,
    /// Fraction of the pool that are MISP indicators.
    #[arg(long, default_value_t = 0.005)]
    indicator_fraction: f64,
    /// Reveal the pool over this time (new addresses at a steady rate); default: the whole --duration.
    #[arg(long, value_parser = humantime::parse_duration)]
    ramp: Option<Duration>,
    /// After sending, wait at most this long for the daemon to drain and the last blocks.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Which pipeline to load.
    #[arg(long, value_enum, default_value = "daemon")]
    system: SystemArg,
    /// Corpus directory (*.log).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// The integration binary [default: $FORTIMISP_BIN_DIR/integration, else next to this executable].
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Latency added to every MISP emulator answer.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    misp_latency: Duration,
    /// Latency added to every FortiGate emulator answer.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    fortigate_latency: Duration,
    /// Let the daemon sync a local mirror (sync_interval 5m) instead of asking MISP per address.
    #[arg(long)]
    mirror: bool,
    /// Extra synthetic MISP indicators beyond the pool's (mirror size), placed after them.
    #[arg(long, default_value_t = 0)]
    extra_indicators: u64,
    /// `[fortigate] requests_per_second` of the lab daemon.
    #[arg(long, default_value_t = 50)]
    fortigate_rps: u32,
    /// `[blocking] max_blocks_per_minute` of the lab daemon.
    #[arg(long, default_value_t = 600)]
    max_blocks_per_minute: u32,
    /// `[syslog] recv_buffer_bytes` (the kernel caps it at net.core.rmem_max).
    #[arg(long, default_value_t = 8 << 20)]
    recv_buffer: usize,
    /// No lab: send to this running daemon (UDP or TCP address) ...
    #[arg(long)]
    target: Option<SocketAddr>,
    /// ... and read its metrics here.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// A scan: every line a new triggering source, with this many indicators among them (replaces the pool).
    #[arg(long)]
    flood_indicators: Option<u32>,
    /// How many lines each indicator of the scan sends.
    #[arg(long, default_value_t = 3)]
    flood_repeats: u32,
    /// Time between two lines of one indicator of the scan (over the daemon's one-second recently-queued filter).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    flood_gap: Duration,
    /// Also print each report as one JSON line (prefixed `JSON `).
    #[arg(long)]
    json: bool,
    /// The daemon's journal in this PostgreSQL database (`[state] url`, e.g.
    /// `postgres://postgres@127.0.0.1:5432/loadgen`, created beforehand) instead of a SQLite file.
    #[arg(long)]
    state_url: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let corpus = Corpus::load(&args.corpus.clone().unwrap_or_else(Corpus::default_dir))?;
    let pool = match args.flood_indicators {
        Some(n) => Pool { size: n, indicator_every: 1, first_indicator: loadgen::FIRST_INDICATOR },
        None => Pool::new(args.pool, args.indicator_fraction, loadgen::FIRST_INDICATOR),
    };
    let flood = args.flood_indicators.map(|_| Flood { repeats: args.flood_repeats, gap: args.flood_gap });
    let transport = match args.transport {
        TransportArg::Udp => Transport::Udp,
        TransportArg::Tcp => Transport::Tcp,
    };
    eprintln!(
        "loadgen: {} templates ({} rewritable, {} triggering), pool {} addresses ({} indicators)",
        corpus.templates.len(),
        corpus.templates.iter().filter(|t| t.rewritable()).count(),
        corpus.triggering(),
        pool.size,
        pool.indicators()
    );
    let plan = |target: SocketAddr| SendPlan {
        target,
        transport,
        rate: (args.rate > 0).then_some(args.rate),
        duration: args.duration,
        pool,
        ramp: args.ramp.unwrap_or(args.duration),
        flood,
    };

    if let Some(target) = args.target {
        return external(&args, &corpus, plan(target));
    }

    let daemon = match args.daemon.clone() {
        Some(daemon) => daemon,
        None => fortimisp_testkit::harness::Binaries::locate()?.path("integration"),
    };
    let mut lab_opts = LabOptions::new(daemon);
    lab_opts.state_url = args.state_url.clone();
    lab_opts.misp_latency = args.misp_latency;
    lab_opts.fortigate_latency = args.fortigate_latency;
    lab_opts.indicators = u64::from(pool.indicators()) + args.extra_indicators;
    lab_opts.mirror = args.mirror;
    lab_opts.fortigate_rps = args.fortigate_rps;
    lab_opts.max_blocks_per_minute = args.max_blocks_per_minute;
    lab_opts.recv_buffer_bytes = args.recv_buffer;

    if matches!(args.system, SystemArg::Daemon | SystemArg::Both) {
        let lab = Lab::start(&lab_opts).await?;
        let report = loadgen::run_daemon(
            &lab,
            &corpus,
            &RunOptions { plan: plan(lab.udp_or_tcp(transport)), settle: args.settle },
        )
        .await
        .inspect_err(|_| eprintln!("daemon log:\n{}", lab.log_text()))?;
        print(&report, args.json);
    }
    if matches!(args.system, SystemArg::Naive | SystemArg::Both) {
        // Only the MISP emulator is needed: the baseline's per-line lookup is all it does.
        let misp = fortimisp_testkit::misp::MispEmulator::start().await.context("cannot start the MISP emulator")?;
        misp.add_synthetic(lab_opts.indicators, loadgen::FIRST_INDICATOR, chrono::Utc::now().timestamp() - 86_400);
        misp.set_latency((!args.misp_latency.is_zero()).then_some(args.misp_latency));
        let target: SocketAddr = "127.0.0.1:9".parse().expect("a valid address");
        let report = loadgen::run_naive(
            &misp,
            &corpus,
            &RunOptions { plan: plan(target), settle: args.settle },
            args.recv_buffer,
        )
        .await?;
        print(&report, args.json);
    }
    Ok(())
}

fn print(report: &Report, json: bool) {
    println!("{report}");
    if json {
        println!("JSON {}", report.to_json());
    }
}

/// Sends to a daemon started elsewhere; only its metrics and the kernel counters are read.
fn external(args: &Args, corpus: &Corpus, plan: SendPlan) -> Result<()> {
    let before = args.metrics.map(Scrape::fetch).transpose()?;
    let kernel_before = UdpCounters::read();
    let sent = loadgen::send(&plan, corpus, &std::sync::atomic::AtomicBool::new(false))?;
    std::thread::sleep(Duration::from_secs(2).min(args.settle));
    let kernel = UdpCounters::read().since(kernel_before);
    println!(
        "sent {} lines in {:.1} s ({:.0}/s), {} send errors, kernel RcvbufErrors +{}",
        sent.lines,
        sent.elapsed.as_secs_f64(),
        sent.lines as f64 / sent.elapsed.as_secs_f64(),
        sent.send_errors,
        kernel.rcvbuf_errors
    );
    if let (Some(addr), Some(before)) = (args.metrics, before) {
        let after = Scrape::fetch(addr)?;
        let d = |name: &str| after.sum(name) - before.sum(name);
        let received = d("fortimisp_messages_received_total");
        println!(
            "received {received} (loss {}), parse errors {}, dropped {}, triggered {}, lookups {}, blocks {}",
            sent.lines as f64 - received,
            d("fortimisp_parse_errors_total"),
            d("fortimisp_messages_dropped_total"),
            d("fortimisp_lines_triggered_total"),
            d("fortimisp_lookups_total"),
            d("fortimisp_blocks_total"),
        );
    }
    Ok(())
}
