//! The lab: the whole loop on one machine, with the real daemons and emulated servers.
//!
//! [`run`] starts the FortiGate and MISP emulators over HTTPS (each with a throw-away CA written to the work
//! directory), seeds MISP from `lab/seed.json` and the FortiGate with one 120-day-old fortimisp block and one
//! object that belongs to somebody else, writes a config derived from `config/lab.toml`, spawns the real
//! `integration` daemon, replays `lab/sample.log` over UDP while showing the daemon's own metrics, runs
//! `housekeeping --once`, stops the daemon with SIGTERM and returns a [`Report`]: what was blocked and why (MISP
//! event, trigger rule), and what was deliberately not blocked and why.
//!
//! Design decision: the lab is a config plus emulators, never a second code path. The daemons are the shipped
//! binaries, started as child processes with a config in the production format, all through
//! [`crate::harness`] as the end-to-end tests and loadgen start them; the lab only replaces the addresses,
//! credentials, CA files and state path of `lab.toml` (see its header). The credentials are always the lab's own
//! ([`lab_keys`]): a production config given with `--config` keeps its `api_key`, `api_key_file` and
//! `FORTIMISP_*_API_KEY` out of the lab, so its key files need not exist and its keys never reach the emulators or
//! the work directory. What the lab *expects* is computed with
//! fortimisp-core's own definitions (`policy::Triggers`, `policy::NeverBlock`, `view::full` against the MISP
//! emulator), and what it *reports* is read back from the FortiGate emulator and the journal, so the report
//! checks the daemon rather than repeating it.
//!
//! The lab data is compiled in (`config/lab.toml`, `lab/seed.json`, `lab/sample.log`), so the binary runs from
//! any directory and in a container; `--config`, `--seed` and `--sample` replace them.
//!
//! Backends: the config's (`address-group` for `lab.toml`), or `--backend`. With `threat-feed` (`lab/feeds.rs`) the
//! blocks are entries of the emulated FortiGate's external threat feeds: the lab sets up the daemon's feed listener
//! and the feed objects, the 120-day-old block is seeded in the journal's ledger instead of as an address object,
//! "on the FortiGate" means in a feed the FortiGate loaded, the foreign-object check does not apply (reported as
//! such), and the report gains a "FortiGate feeds" part.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use fortimisp_core::config::{Backend, Check, Config, Contents, RawConfig, TriggerRule};
use fortimisp_core::fortigate::Comment;
use fortimisp_core::indicators::IndicatorSet;
use fortimisp_core::journal::{BlockRecord, Journal};
use fortimisp_core::misp::SearchQuery;
use fortimisp_core::policy::{LineFacts, NeverBlock, Protected, Triggers};
use fortimisp_core::{clients, syslog, view};

use crate::fleet::Fleet;
use crate::fortigate::{EmulatorConfig, FortiGateEmulator, Table};
use crate::harness::{self, Binaries, ConfigDoc, Daemon, Listen, ServerOptions, Servers};
use crate::misp::Seed;

mod feeds;
mod fleet;

use feeds::Feeds;
pub use feeds::{DaemonView, FeedRow, FeedUpdate, FeedsReport, OldBlock, FEED_PASSWORD};
pub use fleet::TargetBlocks;

/// `config/lab.toml`, compiled in.
pub const LAB_TOML: &str = include_str!("../../../config/lab.toml");
/// `lab/seed.json`, compiled in.
pub const SEED_JSON: &str = include_str!("../../../lab/seed.json");
/// `lab/sample.log`, compiled in.
pub const SAMPLE_LOG: &str = include_str!("../../../lab/sample.log");

/// The address of the pre-seeded block that housekeeping must age out (an indicator of seed event 1).
const OLD_BLOCK: &str = "198.51.100.66";
/// How old that block is made to look.
const OLD_BLOCK_AGE_DAYS: i64 = 120;
/// An object in the block group that fortimisp did not create: it must survive everything.
const FOREIGN_OBJECT: &str = "partner-blocklist-1";
const FOREIGN_SUBNET: &str = "192.0.2.200/32";
/// Upper bound for the daemon to become healthy, for the mirror's first sync, and for the replay to settle.
const WAIT: Duration = Duration::from_secs(60);

/// What to run; see `lab --help`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A config in the production format; `None`: the compiled-in `config/lab.toml`.
    pub config: Option<PathBuf>,
    /// A MISP emulator seed; `None`: the compiled-in `lab/seed.json`.
    pub seed: Option<PathBuf>,
    /// Log lines to replay; `None`: the compiled-in `lab/sample.log`.
    pub sample: Option<PathBuf>,
    /// Where `integration` and `housekeeping` are; `None`: next to the running executable.
    pub bin_dir: Option<PathBuf>,
    /// Never run `cargo build` for the daemons, even when started by cargo.
    pub no_build: bool,
    /// Work directory (config, CA files, journal, daemon logs); `None`: a new one under the temp dir.
    pub dir: Option<PathBuf>,
    /// Lines sent per second.
    pub rate: f64,
    /// No live progress.
    pub headless: bool,
    /// `fortigate.backend` to run (`address-group` or `threat-feed`); `None`: the config's.
    pub backend: Option<Backend>,
    /// With `threat-feed`: how the FortiGate gets the feeds; `None`: the config's `[feed] update`, else pull.
    pub update: Option<FeedUpdate>,
    /// Run a fleet of this many emulated FortiGates (`lab/fleet.rs`); `None`: one.
    pub fleet: Option<usize>,
}

/// Everything the lab found, printed as a table or JSON.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    /// Where the daemons that ran are.
    pub bin_dir: PathBuf,
    pub config_path: PathBuf,
    /// The backend that ran.
    pub backend: Backend,
    pub fortigate_url: String,
    pub fortigate_token: String,
    pub fortigate_ca: PathBuf,
    pub progress: Progress,
    pub blocked: Vec<Blocked>,
    pub not_blocked: Vec<NotBlocked>,
    pub housekeeping: Housekeeping,
    /// The "FortiGate feeds" part (threat-feed only).
    pub feeds: Option<FeedsReport>,
    /// Blocks per target (`--fleet` only).
    pub targets: Option<Vec<TargetBlocks>>,
    /// Expected blocks that did not land, and blocks nobody expected: empty when the loop worked.
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One block on the FortiGate, as the journal explains it.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub ip: IpAddr,
    /// The address object (threat-feed: the feed the journal names).
    pub object: String,
    /// Its block group (threat-feed: the feed the FortiGate loaded it in, else the journal's).
    pub group: String,
    pub event_id: Option<u64>,
    pub event_info: String,
    /// The MISP indicator that matched (an address, or the CIDR containing it).
    pub indicator: String,
    pub rule: Option<usize>,
    pub rule_text: String,
    /// Line numbers of the sample that named this address.
    pub lines: Vec<usize>,
    /// The object exists on the FortiGate and is a member of `group` (threat-feed: a feed the FortiGate loaded
    /// holds the address).
    pub on_fortigate: bool,
}

/// An address from the sample that was deliberately not blocked.
#[derive(Debug, Clone)]
pub struct NotBlocked {
    pub ip: IpAddr,
    /// `never-block`, `allowlisted`, `warninglisted`, `not-ids`, `unknown` or `no-trigger`.
    pub kind: &'static str,
    pub why: String,
    pub lines: Vec<usize>,
}

/// What `housekeeping --once` did with the pre-seeded objects.
#[derive(Debug, Clone, Default)]
pub struct Housekeeping {
    pub exit_code: Option<i32>,
    pub old_block_removed: bool,
    /// `None`: not applicable (threat feeds hold only fortimisp's entries: there is no foreign object to seed).
    pub foreign_untouched: Option<bool>,
    /// Threat-feed: how the old block's removal was checked (ledger, served feeds, the FortiGate's loaded lists).
    pub old_block: Option<OldBlock>,
}

/// Where a block lands on the FortiGate, for the backend that runs.
enum Target<'a> {
    /// An address object that is a member of its block group.
    Groups { fortigate: &'a FortiGateEmulator, config: &'a Config },
    /// An entry of a feed the FortiGate loaded.
    Feeds { fortigate: &'a FortiGateEmulator, feeds: &'a Feeds },
}

impl Target<'_> {
    /// Where `ip` is blocked on the FortiGate, if it is: its group, or the feed that holds it. `record`: what the
    /// journal says (object and group names), when it has the block.
    fn holding(&self, ip: IpAddr, record: Option<&BlockRecord>) -> Option<String> {
        match self {
            Target::Groups { fortigate, config } => {
                let object = record.map_or_else(|| object_name(config, ip), |b| b.object.clone());
                let group = record.and_then(|b| b.group.clone()).unwrap_or_else(|| group_of(config, ip).to_string());
                let member = fortigate.members(&group).unwrap_or_default().contains(&object);
                (fortigate.object(&object).is_some() && member).then_some(group)
            }
            Target::Feeds { fortigate, feeds } => feeds.holding(fortigate, ip),
        }
    }
}

/// The daemon's counters, scraped from its `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub sent: u64,
    pub total: u64,
    pub received: u64,
    pub triggered: u64,
    /// Candidate addresses dropped as never-block (private/reserved or `never_block`).
    pub never_block: u64,
    pub lookups: u64,
    pub blocks: u64,
    pub dropped: u64,
    pub pending: u64,
}

impl Progress {
    fn from_metrics(text: &str, sent: u64, total: u64) -> Progress {
        Progress {
            sent,
            total,
            received: sum(text, "fortimisp_messages_received_total", None),
            triggered: sum(text, "fortimisp_lines_triggered_total", None),
            never_block: sum(text, "fortimisp_candidates_total", Some("outcome=\"never_block\"")),
            lookups: sum(text, "fortimisp_lookups_total", None),
            blocks: sum(text, "fortimisp_blocks_total", Some("outcome=\"blocked\"")),
            dropped: sum(text, "fortimisp_messages_dropped_total", None),
            pending: sum(text, "fortimisp_pending_actions", None),
        }
    }

    /// One status line.
    pub fn line(&self) -> String {
        format!(
            "lines {}/{}  received {}  triggered {}  never-block {}  lookups {}  blocks {}  dropped {}",
            self.sent,
            self.total,
            self.received,
            self.triggered,
            self.never_block,
            self.lookups,
            self.blocks,
            self.dropped
        )
    }
}

/// Sums the samples of one metric (optionally only those whose labels contain `label`).
/// Keeps the daemon for `--keep-running`, or stops it (SIGTERM), noting in `problems` an exit that is not clean.
fn stop_unless_kept(mut daemon: Daemon, keep_running: bool, problems: &mut Vec<String>) -> Option<Daemon> {
    if keep_running {
        return Some(daemon);
    }
    match tokio::task::block_in_place(|| daemon.stop(Duration::from_secs(10))) {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!("integration exited with {status} after SIGTERM")),
        None => problems.push("integration did not exit within 10 s of SIGTERM".into()),
    }
    None
}

fn sum(text: &str, name: &str, label: Option<&str>) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            if label.is_some_and(|label| !rest.contains(label)) {
                return None;
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

/// The parts of a run that outlive [`run`] when the caller keeps the lab up (`--keep-running`).
pub struct Running {
    pub report: Report,
    servers: Emulators,
    /// Killed when dropped, so an error or Ctrl-C never leaves a daemon behind.
    daemon: Option<Daemon>,
}

impl Running {
    /// Stops the daemon (SIGTERM) and the emulators.
    pub fn stop(mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.stop(Duration::from_secs(10));
        }
        match &self.servers {
            Emulators::One(servers) => servers.misp.shutdown(),
            Emulators::Fleet(fleet) => fleet.misp.shutdown(),
        }
        drop(self.servers);
    }
}

/// What serves the daemon: one FortiGate and MISP, or a fleet.
enum Emulators {
    One(Servers),
    Fleet(Fleet),
}

/// Runs the lab. With `keep_running`, the daemon is left running (for the operator to try the subcommands);
/// otherwise it is stopped with SIGTERM and its clean exit is part of the report.
pub async fn run(opts: &Options, keep_running: bool) -> Result<Running> {
    let say = |text: &str| {
        if !opts.headless {
            eprintln!("[lab] {text}");
        }
    };
    if opts.fleet.is_some() {
        return fleet::run(opts, keep_running).await;
    }
    let lab_toml = read_or(&opts.config, LAB_TOML)?;
    // The file must be a valid config on its own (same parser as the daemons), not a template.
    let raw = RawConfig::parse(&lab_toml).map_err(|e| anyhow::anyhow!("{}: {e}", config_name(opts)))?;
    let backend = opts.backend.unwrap_or(raw.fortigate.tables()[0].backend);
    let base_update = raw.feed.as_ref().and_then(|f| FeedUpdate::of(&f.update));
    if opts.update.is_some() && backend != Backend::ThreatFeed {
        bail!("--update applies to the threat-feed backend only (--backend threat-feed)");
    }
    let seed: Seed = serde_json::from_str(&read_or(&opts.seed, SEED_JSON)?).context("the MISP seed")?;
    let sample = read_or(&opts.sample, SAMPLE_LOG)?;
    let lines: Vec<&str> = sample.lines().filter(|l| !l.trim().is_empty()).collect();
    let bins = locate_binaries(opts, &say)?;

    let dir = match &opts.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fortimisp-lab-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A reused --dir starts from an empty journal.
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }

    // The emulators, over HTTPS with their own CAs, accepting the lab's keys (never the given config's).
    let keys = lab_keys();
    let fortigate_config = EmulatorConfig { token: keys.fortigate, ..EmulatorConfig::default() };
    let events: Vec<String> = seed.events.iter().map(|e| e.info.clone()).collect();
    let server_options =
        ServerOptions { tls: true, fortigate: fortigate_config, misp_key: Some(keys.misp), misp_seed: Some(seed) };
    let servers = Servers::start(server_options, &dir).await?;
    let (fortigate, misp) = (&servers.fortigate, &servers.misp);
    say(&format!("FortiGate emulator {}  MISP emulator {} ({} events)", fortigate.url(), misp.url(), events.len()));

    // The config: lab.toml with the emulators' addresses and free loopback ports filled in; for threat feeds (or a
    // config that has a [feed] table, which is checked whatever the backend) the lab's listener and password.
    let listen = Listen { tcp: None, ..Listen::free() };
    let (udp, metrics_addr) = (listen.udp, listen.metrics);
    let config_path = dir.join("config.toml");
    let mut doc = ConfigDoc::parse(&lab_toml).with_context(|| config_name(opts))?;
    doc.endpoints(&servers.endpoints(), &listen, &dir.join("state.db"));
    if opts.backend.is_some() {
        doc.backend(backend);
    }
    let update = opts.update.or(base_update).unwrap_or(FeedUpdate::Pull);
    let listener = if backend == Backend::ThreatFeed || raw.feed.is_some() {
        let listener = feeds::Listener::create(&dir)?;
        feeds::configure(&mut doc, &listener, update);
        Some(listener)
    } else {
        None
    };
    let text = format!(
        "# Written by `lab` from {}: misp/fortigate url, api_key (the lab's; api_key_file removed) and ca_file, \
         syslog, metrics and state.path replaced{}.\n{}",
        config_name(opts),
        match (opts.backend, &listener) {
            (Some(_), Some(_)) => "; fortigate.backend and [feed] (update, listener, password) set",
            (Some(_), None) => "; fortigate.backend set",
            (None, Some(_)) => "; [feed] update, listener, password, allowed_clients and status_interval replaced",
            (None, None) => "",
        },
        doc.render()
    );
    harness::write_private(&config_path, &text)?;
    let config = Config::load_with_env(&config_path, &harness::env_without_credentials)
        .map_err(|e| anyhow::anyhow!("derived config: {e}"))?;
    say(&format!("config {}", config_path.display()));
    let old_block: IpAddr = OLD_BLOCK.parse().expect("invariant: OLD_BLOCK is an address");
    let feeds = match (config.targets[0].backend, &listener) {
        (Backend::ThreatFeed, Some(listener)) => {
            let feeds = Feeds::new(&config, listener, update)?;
            let fortigate_ca = servers.fortigate_ca.as_deref().context("the FortiGate emulator serves HTTPS")?;
            feeds.set_up(fortigate, fortigate_ca, &config.targets[0].vdom, udp).await?;
            let age = chrono::Duration::days(OLD_BLOCK_AGE_DAYS);
            feeds::seed_old_block(&config, old_block, age, &format!("indicator={OLD_BLOCK}/32 seeded by the lab"))
                .await?;
            say(&format!(
                "threat feeds {} ({update}{})",
                feeds.names.join(", "),
                feeds.url.as_ref().map_or(String::new(), |u| format!(", served at {u}/feeds/<name>.txt"))
            ));
            Some(feeds)
        }
        _ => {
            seed_fortigate(fortigate, &config);
            None
        }
    };
    let target = match &feeds {
        Some(feeds) => Target::Feeds { fortigate, feeds },
        None => Target::Groups { fortigate, config: &config },
    };

    // What fortimisp-core says should happen to each address of the sample.
    let plan = Plan::build(&config, &lines, &events).await?;

    // The real daemon.
    let config_arg = config_path.as_os_str();
    let mut daemon =
        Daemon::spawn(&bins.path("integration"), &[OsStr::new("--config"), config_arg], dir.join("integration.log"))?;
    daemon.wait_healthy(metrics_addr, WAIT).await?;
    if config.misp.sync_interval.is_some() {
        daemon
            .wait_until("the mirror's first full sync", WAIT, || async {
                let text = harness::metrics_text(metrics_addr).await;
                sum(&text, "fortimisp_mirror_syncs_total", Some("full_ok")) >= 1
            })
            .await?;
    }
    if let Some(feeds) = &feeds {
        feeds.start_polling(fortigate);
    }
    say(&format!(
        "integration running (pid {}), syslog udp {udp}, metrics http://{metrics_addr}/metrics",
        daemon.pid()
    ));

    // Replay, with live progress.
    let landed = || plan.expected.iter().all(|ip| target.holding(*ip, None).is_some());
    let progress = replay(opts, &lines, udp, metrics_addr, &landed, &mut daemon).await?;

    // One housekeeping pass: ages out the 120-day-old block, leaves everything else alone.
    let indicators = feeds.as_ref().is_some_and(|f| f.contents == Contents::Indicators);
    let old_loaded_before = feeds.as_ref().filter(|_| !indicators).map(|f| f.holding(fortigate, old_block).is_some());
    let hk = tokio::task::block_in_place(|| run_once(&bins, &config_path, &dir))?;
    say(&format!("housekeeping --once exited {}", hk.code().map_or("by signal".into(), |c| c.to_string())));
    let (housekeeping, feeds_report) = match &feeds {
        None => {
            let housekeeping = Housekeeping {
                exit_code: hk.code(),
                old_block_removed: fortigate.object(&object_name(&config, old_block)).is_none(),
                foreign_untouched: Some(
                    fortigate.object(FOREIGN_OBJECT).is_some()
                        && fortigate
                            .members(&config.targets[0].block_group)
                            .unwrap_or_default()
                            .iter()
                            .any(|m| m == FOREIGN_OBJECT),
                ),
                old_block: None,
            };
            (housekeeping, None)
        }
        Some(feeds) => {
            // Read while the daemon runs: what it serves and what its metrics say go with it.
            let ledger_closed = !feeds::ledger_open(&config.state.path, old_block).await?;
            let served = feeds.wait_unserved(old_block, ledger_closed).await;
            let report = feeds.report(fortigate, metrics_addr).await;
            let loaded = (!indicators).then(|| report.loaded_anywhere(old_block));
            let old = OldBlock { loaded_before: old_loaded_before, ledger_closed, served, loaded };
            let housekeeping = Housekeeping {
                exit_code: hk.code(),
                old_block_removed: old.removed(),
                foreign_untouched: None,
                old_block: Some(old),
            };
            (housekeeping, Some(report))
        }
    };

    let mut problems = Vec::new();
    let daemon = stop_unless_kept(daemon, keep_running, &mut problems);

    let journal = Journal::open_strict(&config.state).context("the journal")?;
    let mut ledger = journal.active_blocks().await.context("the journal")?;
    if feeds.is_some() {
        // The seeded block is housekeeping's case (reported there), not one of the sample's.
        ledger.retain(|b| b.ip != old_block);
    }
    let blocked = plan.blocked(&config, &ledger, &target, &events);
    let not_blocked = plan.not_blocked(&ledger);
    problems.extend(plan.problems(&blocked));
    if housekeeping.exit_code != Some(0) {
        problems.push(format!("housekeeping --once exited with {:?}", housekeeping.exit_code));
    }
    if !housekeeping.old_block_removed {
        let how = housekeeping.old_block.map(|o| format!(" ({})", o.describe())).unwrap_or_default();
        problems.push(format!("the {OLD_BLOCK_AGE_DAYS}-day-old block of {OLD_BLOCK} was not aged out{how}"));
    }
    if housekeeping.foreign_untouched == Some(false) {
        problems.push(format!("the foreign object {FOREIGN_OBJECT} was modified or removed"));
    }
    if let Some(report) = &feeds_report {
        problems.extend(report.problems.iter().cloned());
    }
    let report = Report {
        dir,
        bin_dir: bins.dir.clone(),
        config_path,
        backend: config.targets[0].backend,
        fortigate_url: fortigate.url().to_string(),
        fortigate_token: fortigate.token(),
        fortigate_ca: servers.fortigate_ca.clone().unwrap_or_default(),
        progress,
        blocked,
        not_blocked,
        housekeeping,
        feeds: feeds_report,
        targets: None,
        problems,
    };
    Ok(Running { report, servers: Emulators::One(servers), daemon })
}

/// The keys the emulators accept in the lab, whatever config is given: `config/lab.toml`'s own (compiled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabKeys {
    pub misp: String,
    pub fortigate: String,
}

/// `config/lab.toml`'s `misp.api_key` and `fortigate.api_key`.
pub fn lab_keys() -> LabKeys {
    let raw = RawConfig::parse(LAB_TOML).expect("invariant: config/lab.toml parses (tested)");
    LabKeys {
        misp: raw.misp.api_key.expect("invariant: config/lab.toml sets misp.api_key (tested)"),
        fortigate: raw.fortigate.tables()[0]
            .api_key
            .clone()
            .expect("invariant: config/lab.toml sets fortigate.api_key (tested)"),
    }
}

fn config_name(opts: &Options) -> String {
    opts.config.as_ref().map_or("config/lab.toml (built in)".into(), |p| p.display().to_string())
}

fn read_or(path: &Option<PathBuf>, builtin: &str) -> Result<String> {
    match path {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display())),
        None => Ok(builtin.to_string()),
    }
}

/// One fortimisp block made 120 days ago and one object somebody else put in the block group.
fn seed_fortigate(fortigate: &FortiGateEmulator, config: &Config) {
    let created = Utc::now() - chrono::Duration::days(OLD_BLOCK_AGE_DAYS);
    let comment = Comment::new(created, "1", &format!("indicator={OLD_BLOCK}/32 seeded by the lab"));
    let name = object_name(config, OLD_BLOCK.parse().expect("OLD_BLOCK is an address"));
    fortigate.seed_address(&name, &format!("{OLD_BLOCK}/32"), comment.as_str());
    fortigate.seed_address(FOREIGN_OBJECT, FOREIGN_SUBNET, "added by hand by the network team");
    let group = &config.targets[0].block_group;
    fortigate.seed_group(Table::Addrgrp, group, &[&name, FOREIGN_OBJECT], "deny policy fortimisp-block-in");
}

fn object_name(config: &Config, ip: IpAddr) -> String {
    format!("{}{ip}", config.targets[0].object_prefix)
}

/// Where the daemons are, built first by cargo when the lab itself was started by cargo.
fn locate_binaries(opts: &Options, say: &dyn Fn(&str)) -> Result<Binaries> {
    let explicit = opts.bin_dir.is_some() || std::env::var_os("FORTIMISP_BIN_DIR").is_some();
    let bins = match &opts.bin_dir {
        Some(dir) => Binaries::new(dir),
        None => Binaries::locate()?,
    };
    if let (false, false, Some(cargo)) = (explicit, opts.no_build, std::env::var_os("CARGO")) {
        // `cargo run --bin lab` builds the lab only; build the daemons with the same profile, so the lab always
        // runs the daemons of this checkout. A no-op when they are up to date.
        let profile = bins.dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_string();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "integration", "-p", "housekeeping"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        say(&format!("building integration and housekeeping ({profile}) ..."));
        let status = cmd.status().context("cannot run cargo build")?;
        if !status.success() {
            bail!("cargo build -p integration -p housekeeping failed ({status})");
        }
    }
    bins.require(&["integration", "housekeeping"]).context("the daemons are missing (or pass --bin-dir DIR)")?;
    Ok(bins)
}

fn run_once(bins: &Binaries, config: &Path, dir: &Path) -> Result<ExitStatus> {
    let log = dir.join("housekeeping.log");
    let out = std::fs::File::create(&log)?;
    let status = bins
        .command("housekeeping")
        .arg("--config")
        .arg(config)
        .arg("--once")
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("cannot run housekeeping --once")?;
    Ok(status)
}

/// Sends the lines over UDP at `opts.rate`, drawing progress; returns once the daemon has settled: every line
/// received, every expected block on the FortiGate (`landed`), nothing pending, and the counters still for a moment.
async fn replay<S: AsRef<str>>(
    opts: &Options,
    lines: &[S],
    udp: SocketAddr,
    metrics: SocketAddr,
    landed: &dyn Fn() -> bool,
    daemon: &mut Daemon,
) -> Result<Progress> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let tty = std::io::stderr().is_terminal();
    let mut shown = String::new();
    let show = |p: &Progress, shown: &mut String, last: bool| {
        if opts.headless {
            return;
        }
        let line = p.line();
        if tty {
            eprint!("\r[lab] {line}\x1b[K{}", if last { "\n" } else { "" });
            let _ = std::io::stderr().flush();
        } else if line != *shown {
            eprintln!("[lab] {line}");
        }
        *shown = line;
    };
    let total = lines.len() as u64;
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.1));
    let mut next_draw = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        socket.send_to(line.as_ref().as_bytes(), udp).context("sending syslog")?;
        if Instant::now() >= next_draw || i + 1 == lines.len() {
            show(
                &Progress::from_metrics(&harness::metrics_text(metrics).await, i as u64 + 1, total),
                &mut shown,
                false,
            );
            next_draw = Instant::now() + Duration::from_millis(200);
        }
        tokio::time::sleep(interval).await;
    }
    let deadline = Instant::now() + WAIT;
    let mut last = Progress::default();
    let mut still = 0;
    loop {
        let p = Progress::from_metrics(&harness::metrics_text(metrics).await, total, total);
        show(&p, &mut shown, false);
        still = if p == last { still + 1 } else { 0 };
        if p.received + p.dropped >= total && landed() && p.pending == 0 && still >= 3 {
            show(&p, &mut shown, true);
            return Ok(p);
        }
        if let Some(status) = daemon.exit_status() {
            bail!("integration exited ({status}) during the replay; its log:\n{}", daemon.log_tail());
        }
        if Instant::now() > deadline {
            show(&p, &mut shown, true);
            // Report what is there: the table will name what is missing.
            return Ok(p);
        }
        last = p;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn group_of(config: &Config, ip: IpAddr) -> &str {
    match ip {
        IpAddr::V4(_) => &config.targets[0].block_group,
        IpAddr::V6(_) => &config.targets[0].block_group6,
    }
}

fn rule_text(rule: &TriggerRule) -> String {
    let mut parts = Vec::new();
    if let Some(id) = rule.policy_id {
        parts.push(format!("policy_id={id}"));
    }
    if let Some(action) = &rule.action {
        parts.push(format!("action={action}"));
    }
    for (key, value) in [("type", &rule.log_type), ("subtype", &rule.subtype), ("srcintf", &rule.srcintf)] {
        if let Some(value) = value {
            parts.push(format!("{key}={value}"));
        }
    }
    parts.push(
        match rule.check {
            Check::Src => "check=src",
            Check::Dst => "check=dst",
            Check::Both => "check=both",
        }
        .to_string(),
    );
    parts.join(" ")
}

/// What fortimisp-core's definitions say should happen to each address of the sample, before the daemon runs.
struct Plan {
    /// Addresses a trigger rule hands to the daemon: first rule, sample line numbers.
    looked_up: BTreeMap<IpAddr, (usize, Vec<usize>)>,
    /// Addresses MISP knows that appear only in lines no trigger matches.
    untriggered: BTreeMap<IpAddr, Vec<usize>>,
    /// Looked-up addresses that must end up blocked.
    expected: Vec<IpAddr>,
    /// Why each other looked-up address must not be blocked: (kind, explanation).
    reasons: BTreeMap<IpAddr, (&'static str, String)>,
    /// The blocking indicators, as the daemon's mirror sees them.
    view: IndicatorSet,
    rules: Vec<TriggerRule>,
}

impl Plan {
    async fn build(config: &Config, lines: &[&str], events: &[String]) -> Result<Plan> {
        let triggers = Triggers::new(config.trigger.clone());
        let never = NeverBlock::new(config.blocking.never_block.clone());
        let mut looked_up: BTreeMap<IpAddr, (usize, Vec<usize>)> = BTreeMap::new();
        let mut seen_untriggered: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
        for (i, line) in lines.iter().enumerate() {
            let Ok(record) = syslog::parse(line.as_bytes()) else { continue };
            let facts = LineFacts::of(&record);
            match triggers.first_match(&facts) {
                Some(rule) => {
                    for ip in triggers.targets(&facts).iter() {
                        looked_up.entry(ip).or_insert_with(|| (rule, Vec::new())).1.push(i + 1);
                    }
                }
                None => {
                    for ip in [facts.srcip, facts.dstip].into_iter().flatten() {
                        seen_untriggered.entry(ip).or_default().push(i + 1);
                    }
                }
            }
        }
        let client = clients::misp(&config.misp).context("MISP client")?;
        let (view, _) = view::full(&client, &config.misp).await.context("reading the MISP emulator")?;
        let all: Vec<IpAddr> = looked_up.keys().chain(seen_untriggered.keys()).copied().collect();
        let known = client.search_values(&SearchQuery::new(), &all).await.context("reading the MISP emulator")?;
        let warned = client.check_warninglist(&all).await.context("reading the MISP emulator")?;
        let event = |id: u64| (id as usize).checked_sub(1).and_then(|i| events.get(i)).cloned().unwrap_or_default();

        let mut expected = Vec::new();
        let mut reasons = BTreeMap::new();
        for &ip in looked_up.keys() {
            let reason = match never.check(ip) {
                Some(Protected::Reserved { range, name }) => {
                    Some(("never-block", format!("{name} range {range} (built in)")))
                }
                Some(Protected::Configured { range }) => {
                    Some(("allowlisted", format!("[blocking] never_block {range}")))
                }
                None if view.lookup(ip).is_some() => None,
                None => Some(match (warned.get(&ip), known.iter().find(|k| k.network.contains(&ip))) {
                    (Some(lists), _) if config.misp.enforce_warninglist => {
                        let names: Vec<&str> = lists.iter().map(|l| l.name.as_str()).collect();
                        ("warninglisted", format!("on MISP warninglist \"{}\"", names.join("\", \"")))
                    }
                    (_, Some(ind)) if !ind.to_ids && config.misp.to_ids_only => (
                        "not-ids",
                        format!("in MISP event {} \"{}\" with to_ids off", ind.event_id, event(ind.event_id)),
                    ),
                    (_, Some(ind)) => ("filtered", format!("in MISP event {} but filtered by [misp]", ind.event_id)),
                    _ => ("unknown", "no MISP indicator".to_string()),
                }),
            };
            match reason {
                None => expected.push(ip),
                Some(reason) => {
                    reasons.insert(ip, reason);
                }
            }
        }
        let untriggered = seen_untriggered
            .into_iter()
            .filter(|(ip, _)| !looked_up.contains_key(ip) && known.iter().any(|k| k.network.contains(ip)))
            .collect();
        Ok(Plan { looked_up, untriggered, expected, reasons, view, rules: config.trigger.clone() })
    }

    fn blocked(&self, config: &Config, ledger: &[BlockRecord], target: &Target<'_>, events: &[String]) -> Vec<Blocked> {
        ledger
            .iter()
            .map(|b| {
                let holding = target.holding(b.ip, Some(b));
                let on_fortigate = holding.is_some();
                let group = match target {
                    Target::Groups { .. } => b.group.clone().unwrap_or_else(|| group_of(config, b.ip).to_string()),
                    Target::Feeds { .. } => holding.unwrap_or_else(|| b.object.clone()),
                };
                Blocked {
                    ip: b.ip,
                    object: b.object.clone(),
                    group,
                    event_id: b.event_id,
                    event_info: b
                        .event_id
                        .and_then(|id| (id as usize).checked_sub(1).and_then(|i| events.get(i)).cloned())
                        .unwrap_or_default(),
                    indicator: self.view.lookup(b.ip).map(|h| h.network.to_string()).unwrap_or_else(|| "-".into()),
                    rule: b.rule,
                    rule_text: b.rule.and_then(|r| self.rules.get(r)).map(rule_text).unwrap_or_else(|| "-".into()),
                    lines: self.looked_up.get(&b.ip).map(|(_, l)| l.clone()).unwrap_or_default(),
                    on_fortigate,
                }
            })
            .collect()
    }

    fn not_blocked(&self, ledger: &[BlockRecord]) -> Vec<NotBlocked> {
        let mut rows: Vec<NotBlocked> = self
            .reasons
            .iter()
            .filter(|(ip, _)| !ledger.iter().any(|b| b.ip == **ip))
            .map(|(ip, (kind, why))| NotBlocked {
                ip: *ip,
                kind,
                why: why.clone(),
                lines: self.looked_up.get(ip).map(|(_, l)| l.clone()).unwrap_or_default(),
            })
            .collect();
        rows.extend(self.untriggered.iter().map(|(ip, lines)| NotBlocked {
            ip: *ip,
            kind: "no-trigger",
            why: "in MISP, but its line matches no [[trigger]]".into(),
            lines: lines.clone(),
        }));
        let order = ["never-block", "allowlisted", "warninglisted", "not-ids", "filtered", "unknown", "no-trigger"];
        rows.sort_by_key(|r| (order.iter().position(|k| *k == r.kind), r.ip));
        rows
    }

    fn problems(&self, blocked: &[Blocked]) -> Vec<String> {
        let mut problems = Vec::new();
        for ip in &self.expected {
            match blocked.iter().find(|b| b.ip == *ip) {
                None => problems.push(format!("{ip} should have been blocked and was not")),
                Some(b) if !b.on_fortigate => {
                    problems.push(format!("{ip}: the journal records a block the FortiGate does not have"))
                }
                Some(_) => {}
            }
        }
        for b in blocked {
            if !self.expected.contains(&b.ip) {
                problems.push(format!("{} was blocked although nothing called for it", b.ip));
            }
        }
        problems
    }
}

/// The final table, as printed at the end of a run.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let p = &report.progress;
    out.push_str(&format!(
        "\nReplayed {} lines: {} received{}, {} triggered, {} never-block, {} lookups, {} blocked, {} dropped.\n",
        p.total,
        p.received,
        if report.feeds.is_some() { " (with the FortiGate's feed events)" } else { "" },
        p.triggered,
        p.never_block,
        p.lookups,
        p.blocks,
        p.dropped
    ));
    out.push_str(&format!("\nBLOCKED ({})\n", report.blocked.len()));
    // What every backend shows: MISP event, indicator, trigger, lines.
    let why = |b: &Blocked| {
        [
            match b.event_id {
                Some(id) => format!("#{id} {}", b.event_info),
                None => "manual".into(),
            },
            b.indicator.clone(),
            match b.rule {
                Some(r) => format!("#{r} {}", b.rule_text),
                None => "-".into(),
            },
            join_lines(&b.lines),
        ]
    };
    let why_header = ["MISP EVENT".to_string(), "INDICATOR".into(), "TRIGGER".into(), "LINES".into()];
    if report.feeds.is_some() {
        let mut rows = vec![["IP".to_string(), "FEED".into()]];
        rows.extend(report.blocked.iter().map(|b| {
            [
                b.ip.to_string(),
                format!("{}{}", b.group, if b.on_fortigate { "" } else { " (NOT LOADED by the FortiGate)" }),
            ]
        }));
        let rows: Vec<[String; 6]> = rows
            .into_iter()
            .zip(std::iter::once(why_header).chain(report.blocked.iter().map(why)))
            .map(|([a, b], [c, d, e, f])| [a, b, c, d, e, f])
            .collect();
        out.push_str(&columns(&rows));
    } else {
        let mut rows = vec![["IP".to_string(), "OBJECT".into(), "GROUP".into()]];
        rows.extend(report.blocked.iter().map(|b| {
            [
                b.ip.to_string(),
                format!("{}{}", b.object, if b.on_fortigate { "" } else { " (MISSING on FortiGate)" }),
                b.group.clone(),
            ]
        }));
        let rows: Vec<[String; 7]> = rows
            .into_iter()
            .zip(std::iter::once(why_header).chain(report.blocked.iter().map(why)))
            .map(|([a, b, c], [d, e, f, g])| [a, b, c, d, e, f, g])
            .collect();
        out.push_str(&columns(&rows));
    }
    out.push_str(&format!("\nNOT BLOCKED ({})\n", report.not_blocked.len()));
    let mut rows = vec![["IP".to_string(), "WHY".into(), "DETAIL".into(), "LINES".into()]];
    for n in &report.not_blocked {
        rows.push([n.ip.to_string(), n.kind.to_string(), n.why.clone(), join_lines(&n.lines)]);
    }
    out.push_str(&columns(&rows));
    if let Some(feeds) = &report.feeds {
        out.push_str(&render_feeds(feeds));
    }
    if let Some(targets) = &report.targets {
        out.push_str(&fleet::render(targets));
    }
    let hk = &report.housekeeping;
    let removed = if hk.old_block_removed { "removed" } else { "STILL THERE" };
    let old = match &hk.old_block {
        Some(how) => format!("{removed} ({})", how.describe()),
        None => removed.to_string(),
    };
    let foreign = match hk.foreign_untouched {
        Some(true) => format!("{FOREIGN_OBJECT} (in the block group, not fortimisp's): untouched"),
        Some(false) => format!("{FOREIGN_OBJECT} (in the block group, not fortimisp's): MODIFIED"),
        None => "foreign objects: not applicable (a threat feed holds only fortimisp's entries)".to_string(),
    };
    out.push_str(&format!(
        "\nHOUSEKEEPING (--once, exit {})\n  {OLD_BLOCK} (blocked {OLD_BLOCK_AGE_DAYS} days ago, older than max_age): \
         {old}\n  {foreign}\n",
        hk.exit_code.map_or("-".into(), |c| c.to_string()),
    ));
    if report.ok() {
        out.push_str("\nOK: every expected block landed, nothing else was blocked.\n");
    } else {
        out.push_str("\nFAILED:\n");
        for p in &report.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out.push_str(&format!(
        "Work directory: {} (config.toml, state.db, integration.log, housekeeping.log)\n",
        report.dir.display()
    ));
    out
}

/// The "FortiGate feeds" part of the table.
fn render_feeds(feeds: &FeedsReport) -> String {
    let served_at = match &feeds.url {
        Some(url) => format!("; served at {url}/feeds/<name>.txt"),
        None => "; nothing served (push only)".into(),
    };
    let mut out = format!("\nFORTIGATE FEEDS (update {}, contents {}{served_at})\n", feeds.update, feeds.contents);
    let mut rows = vec![[
        "FEED".to_string(),
        "METHOD".into(),
        "SERVED".into(),
        "LOADED".into(),
        "LAST LOAD".into(),
        "OVERFLOW".into(),
        "DAEMON: LOADED".into(),
        "DAEMON: LAST LOAD".into(),
    ]];
    for f in &feeds.feeds {
        rows.push([
            f.name.clone(),
            f.method.to_string(),
            f.served.as_ref().map_or_else(|| "-".into(), |s| s.len().to_string()),
            f.loaded.len().to_string(),
            unix_time(f.last_load),
            if f.overflow { format!("YES ({} dropped)", f.dropped) } else { "no".into() },
            f.daemon.loaded.to_string(),
            unix_time(i64::try_from(f.daemon.last_loaded).unwrap_or(0)),
        ]);
    }
    out.push_str(&columns(&rows));
    let events: Vec<String> = feeds.events.iter().map(|(event, n)| format!("{event} {n}")).collect();
    out.push_str(&format!(
        "  Feed events the daemon received (fortimisp_feed_events_total): {}\n",
        if events.is_empty() { "none".to_string() } else { events.join(", ") }
    ));
    out
}

/// Unix seconds as RFC 3339 (UTC); `-` for 0 (never).
fn unix_time(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) if secs > 0 => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        _ => "-".into(),
    }
}

fn join_lines(lines: &[usize]) -> String {
    lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
}

fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < N {
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The report as one JSON object (for tests and scripts).
pub fn render_json(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let p = &report.progress;
    json!({
        "ok": report.ok(),
        "problems": report.problems,
        "dir": report.dir,
        "config": report.config_path,
        "backend": report.backend.to_string(),
        "fortigate": {"url": report.fortigate_url, "token": report.fortigate_token, "ca_file": report.fortigate_ca},
        "progress": {"lines": p.total, "received": p.received, "triggered": p.triggered, "never_block": p.never_block,
                     "lookups": p.lookups, "blocks": p.blocks, "dropped": p.dropped},
        "blocked": report.blocked.iter().map(|b| json!({
            "ip": b.ip.to_string(), "object": b.object, "group": b.group, "event_id": b.event_id,
            "event": b.event_info, "indicator": b.indicator, "rule": b.rule, "trigger": b.rule_text,
            "lines": b.lines, "on_fortigate": b.on_fortigate,
        })).collect::<Vec<_>>(),
        "not_blocked": report.not_blocked.iter().map(|n| json!({
            "ip": n.ip.to_string(), "why": n.kind, "detail": n.why, "lines": n.lines,
        })).collect::<Vec<_>>(),
        "housekeeping": housekeeping_json(&report.housekeeping),
        "feeds": report.feeds.as_ref().map(feeds_json),
        "targets": report.targets.as_deref().map(fleet::json),
    })
}

fn housekeeping_json(hk: &Housekeeping) -> serde_json::Value {
    use serde_json::json;
    let mut out = json!({
        "exit_code": hk.exit_code,
        "old_block": OLD_BLOCK,
        "old_block_removed": hk.old_block_removed,
        "foreign_untouched": hk.foreign_untouched,
    });
    if hk.foreign_untouched.is_none() {
        out["foreign_check"] = "not applicable: a threat feed holds only fortimisp's entries".into();
    }
    if let Some(old) = &hk.old_block {
        out["old_block_checks"] = json!({
            "loaded_before": old.loaded_before, "ledger_closed": old.ledger_closed, "served": old.served,
            "loaded": old.loaded,
        });
    }
    out
}

fn feeds_json(feeds: &FeedsReport) -> serde_json::Value {
    use serde_json::json;
    json!({
        "update": feeds.update.to_string(),
        "contents": feeds.contents.to_string(),
        "url": feeds.url,
        "username": feeds.username,
        "password": feeds.password,
        "ca_file": feeds.ca_file,
        "events": feeds.events,
        "feeds": feeds.feeds.iter().map(|f| json!({
            "name": f.name, "method": f.method, "served": f.served.as_ref().map(Vec::len), "loaded": f.loaded.len(),
            "last_load": f.last_load, "overflow": f.overflow, "dropped": f.dropped,
            "daemon": {"entries": f.daemon.entries, "loaded_entries": f.daemon.loaded,
                       "last_loaded": f.daemon.last_loaded, "overflow": f.daemon.overflow},
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_lab_files_are_valid() {
        RawConfig::parse(LAB_TOML).expect("config/lab.toml is a valid config");
        let keys = lab_keys();
        assert!(!keys.misp.is_empty() && !keys.fortigate.is_empty());
        let seed: Seed = serde_json::from_str(SEED_JSON).expect("lab/seed.json is a valid seed");
        assert!(!seed.events.is_empty());
        for (i, line) in SAMPLE_LOG.lines().enumerate() {
            syslog::parse(line.as_bytes()).unwrap_or_else(|e| panic!("lab/sample.log line {}: {e}", i + 1));
        }
    }

    #[test]
    fn sums_metric_samples() {
        let text = "# HELP x\nfortimisp_lookups_total{outcome=\"mirror_hit\"} 3\nfortimisp_lookups_total{outcome=\"mirror_miss\"} 4\nfortimisp_lookups_totalx 9\nfortimisp_blocks_total{outcome=\"blocked\"} 2\nfortimisp_blocks_total{outcome=\"retry\"} 1\n";
        assert_eq!(sum(text, "fortimisp_lookups_total", None), 7);
        assert_eq!(sum(text, "fortimisp_blocks_total", Some("outcome=\"blocked\"")), 2);
        assert_eq!(sum(text, "fortimisp_missing_total", None), 0);
    }
}
