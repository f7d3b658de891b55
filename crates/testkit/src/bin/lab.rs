//! `lab`: the whole fortimisp loop on one machine: emulated FortiGate and MISP, the real daemons, a replayed
//! sample of FortiGate logs, live progress, and a final table of what was blocked and why.
//!
//! ```text
//! cargo run -p fortimisp-testkit --bin lab                 # the README's first command
//! lab [--config config/lab.toml] [--seed lab/seed.json] [--sample lab/sample.log] [--rate 10]
//!     [--backend address-group|threat-feed] [--update pull|push|both] [--fleet N]
//!     [--headless] [--json] [--keep-running] [--bin-dir DIR] [--no-build] [--dir DIR]
//! ```
//! Exits 0 when every expected block landed and nothing else was blocked, 1 otherwise. This file parses the
//! command line, turns SIGINT/SIGTERM into a clean stop and prints; the lab itself is [`fortimisp_testkit::lab`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fortimisp_core::config::Backend;
use fortimisp_testkit::lab::{self, FeedUpdate, Options};

#[derive(Parser, Debug)]
#[command(
    name = "lab",
    about = "Runs the real integration and housekeeping daemons against the FortiGate and MISP emulators, replays \
             sample FortiGate logs and shows what was blocked and why"
)]
struct Args {
    /// Config in the production format [default: config/lab.toml, compiled in]. The lab replaces only the
    /// emulator URLs and CA files, the listen ports and state.path.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MISP emulator seed (events, attributes, warninglists) [default: lab/seed.json, compiled in].
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// FortiGate log lines replayed over UDP [default: lab/sample.log, compiled in].
    #[arg(long, value_name = "FILE")]
    sample: Option<PathBuf>,
    /// The backend the daemons run: address-group or threat-feed [default: the config's; lab.toml's is
    /// address-group]. threat-feed: the blocks are entries of the emulated FortiGate's external threat feeds.
    #[arg(long, value_name = "BACKEND", value_parser = parse_backend)]
    backend: Option<Backend>,
    /// With the threat-feed backend, how the FortiGate gets the feeds: pull (it fetches them from the daemon over
    /// HTTPS), push (the daemon pushes them) or both (pushed, and served too) [default: the config's feed.update,
    /// else pull].
    #[arg(long, value_name = "METHOD")]
    update: Option<FeedUpdate>,
    /// Run N emulated FortiGates (targets a, b, c ...; the config's [fortigate] becomes one [[fortigate]] per
    /// emulator, each claiming its own device); the sample's lines rotate over the devices and the report shows
    /// the blocks per target. Address-group backend only.
    #[arg(long, value_name = "N")]
    fleet: Option<usize>,
    /// Lines per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// No live progress (for tests and CI).
    #[arg(long)]
    headless: bool,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// After the report, leave the emulators and the daemon running until Ctrl-C, to try the subcommands.
    #[arg(long)]
    keep_running: bool,
    /// Directory holding the `integration` and `housekeeping` binaries [default: next to this executable;
    /// $FORTIMISP_BIN_DIR].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Do not run `cargo build` for the daemons (done by default when the lab is started by cargo).
    #[arg(long)]
    no_build: bool,
    /// Work directory for the config, CA files, journal and logs [default: a new one under $TMPDIR].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `--backend`: the backends the lab knows how to check.
fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "address-group" => Ok(Backend::AddressGroup),
        "threat-feed" => Ok(Backend::ThreatFeed),
        other => Err(format!("`{other}`: expected address-group or threat-feed")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        config: args.config,
        seed: args.seed,
        sample: args.sample,
        bin_dir: args.bin_dir,
        no_build: args.no_build,
        dir: args.dir,
        rate: args.rate,
        headless: args.headless,
        backend: args.backend,
        update: args.update,
        fleet: args.fleet,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Dropping the lab future on a signal kills the daemon it started.
        let running = tokio::select! {
            result = lab::run(&opts, args.keep_running) => result,
            () = fortimisp_core::process::shutdown_signal() => {
                eprintln!("\n[lab] interrupted");
                return ExitCode::from(130);
            }
        };
        let running = match running {
            Ok(running) => running,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let report = &running.report;
        if args.json {
            println!("{}", lab::render_json(report));
        } else {
            print!("{}", lab::render_table(report));
        }
        let code = if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        if args.keep_running {
            let config = report.config_path.display();
            let bins = report.bin_dir.display();
            eprintln!("[lab] still running; try, in another terminal:");
            eprintln!("[lab]   {bins}/integration --config {config} list");
            if report.feeds.is_some() {
                eprintln!("[lab]   {bins}/integration --config {config} list --feeds");
            }
            eprintln!("[lab]   {bins}/integration --config {config} lookup 192.0.2.53");
            eprintln!("[lab]   {bins}/integration --config {config} block 203.0.113.7");
            eprintln!("[lab]   {bins}/housekeeping --config {config} --once --dry-run");
            eprintln!("[lab] Ctrl-C stops the daemon and the emulators.");
            fortimisp_core::process::shutdown_signal().await;
        }
        running.stop();
        code
    })
}
