//! `lab --fleet N`: the lab against N emulated FortiGates ([`crate::fleet::Fleet`]), targets `a`, `b`, `c` ...
//! each claiming its own device (`FG100FTK2000000N`, `FGT-N`).
//!
//! The config is the lab's (or `--config`'s) with its `[fortigate]` table turned into one `[[fortigate]]` table
//! per emulator ([`ConfigDoc::fleet`]); `blocking.scope` is the config's. The sample's lines rotate over the
//! devices (line 1 from target `a`'s device, line 2 from `b`'s ...), so with the origin scope each target is
//! expected to block the addresses of its own lines, with the fleet scope every expected address. Every emulator
//! gets the lab's 120-day-old block and foreign object, and `housekeeping --once` must age out each target's old
//! block and leave each foreign object alone. The report adds a PER TARGET part, read from each emulator and from
//! the journal's ledger for that target.
//!
//! Address groups only: a fleet has at most one threat-feed target, and the lab's feed checks are for one box.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{Backend, Config, RawConfig, Scope, MAX_TARGETS};
use fortimisp_core::journal::{BlockRecord, Journal};

use super::{
    config_name, lab_keys, locate_binaries, object_name, read_or, replay, run_once, seed_fortigate, stop_unless_kept,
    Emulators, Housekeeping, Options, Plan, Report, Running, Target, FOREIGN_OBJECT, LAB_TOML, OLD_BLOCK, SAMPLE_LOG,
    SEED_JSON, WAIT,
};
use crate::fleet::{Fleet, FleetOptions, FleetTarget};
use crate::fortigate::EmulatorConfig;
use crate::harness::{self, ConfigDoc, Daemon, Listen};
use crate::misp::Seed;

/// What one target of the fleet holds at the end of the run.
#[derive(Debug, Clone)]
pub struct TargetBlocks {
    pub name: String,
    /// The device whose lines it claims: `devid`, `devname`.
    pub devid: String,
    pub devname: String,
    pub url: String,
    /// Addresses it should block (scope and the sample's rotation).
    pub expected: Vec<IpAddr>,
    /// Addresses it blocks (object in its block group), read from the emulator.
    pub on_fortigate: Vec<IpAddr>,
    /// Blocks the journal's ledger records for it.
    pub in_journal: usize,
    /// Housekeeping removed its old block and left its foreign object alone.
    pub housekeeping_ok: bool,
}

/// Runs the lab with a fleet of `opts.fleet` FortiGates.
pub(super) async fn run(opts: &Options, keep_running: bool) -> Result<Running> {
    let say = |text: &str| {
        if !opts.headless {
            eprintln!("[lab] {text}");
        }
    };
    let n = opts.fleet.unwrap_or(1);
    if !(1..=MAX_TARGETS).contains(&n) {
        bail!("--fleet: 1 to {MAX_TARGETS} FortiGates");
    }
    if opts.backend == Some(Backend::ThreatFeed) || opts.update.is_some() {
        bail!("--fleet runs the address-group backend only");
    }
    let lab_toml = read_or(&opts.config, LAB_TOML)?;
    let raw = RawConfig::parse(&lab_toml).map_err(|e| anyhow::anyhow!("{}: {e}", config_name(opts)))?;
    if raw.fortigate.tables()[0].backend != Backend::AddressGroup {
        bail!("--fleet runs the address-group backend only ({} has another)", config_name(opts));
    }
    let seed: Seed = serde_json::from_str(&read_or(&opts.seed, SEED_JSON)?).context("the MISP seed")?;
    let sample = read_or(&opts.sample, SAMPLE_LOG)?;
    let bins = locate_binaries(opts, &say)?;
    let dir = match &opts.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fortimisp-lab-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }

    let keys = lab_keys();
    let events: Vec<String> = seed.events.iter().map(|e| e.info.clone()).collect();
    let fleet_options = FleetOptions {
        size: n,
        fortigate: EmulatorConfig { token: keys.fortigate, ..EmulatorConfig::default() },
        misp_key: Some(keys.misp),
        misp_seed: Some(seed),
        ..FleetOptions::default()
    };
    let fleet = Fleet::start(fleet_options, &dir).await?;
    for t in &fleet.targets {
        say(&format!("FortiGate {} ({} / {}) {}", t.name, t.device.devid, t.device.devname, t.fortigate.url()));
    }
    say(&format!("MISP emulator {} ({} events)", fleet.misp.url(), events.len()));

    let listen = Listen { tcp: None, ..Listen::free() };
    let config_path = dir.join("config.toml");
    let mut doc = ConfigDoc::parse(&lab_toml).with_context(|| config_name(opts))?;
    doc.endpoints(&fleet.endpoints(), &listen, &dir.join("state.db")).fleet(&fleet);
    let text = format!(
        "# Written by `lab --fleet {n}` from {}: misp url, api_key and ca_file, one [[fortigate]] per emulated \
         FortiGate (url, api_key, ca_file, name, devices), syslog, metrics and state.path replaced.\n{}",
        config_name(opts),
        doc.render()
    );
    harness::write_private(&config_path, &text)?;
    let config = Config::load_with_env(&config_path, &harness::env_without_credentials)
        .map_err(|e| anyhow::anyhow!("derived config: {e}"))?;
    say(&format!("config {} (scope {})", config_path.display(), config.blocking.scope));
    for t in &fleet.targets {
        seed_fortigate(&t.fortigate, &config);
    }

    // The sample, line i from the device of target i mod N.
    let lines: Vec<String> = sample
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| fleet.targets[i % n].device.stamp(l))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let plan = Plan::build(&config, &refs, &events).await?;
    let expected: Vec<Vec<IpAddr>> = (0..n).map(|t| expected_on(&plan, config.blocking.scope, n, t)).collect();

    let config_arg = config_path.as_os_str();
    let mut daemon =
        Daemon::spawn(&bins.path("integration"), &[OsStr::new("--config"), config_arg], dir.join("integration.log"))?;
    daemon.wait_healthy(listen.metrics, WAIT).await?;
    if config.misp.sync_interval.is_some() {
        let metrics = listen.metrics;
        daemon
            .wait_until("the mirror's first full sync", WAIT, || async {
                let text = harness::metrics_text(metrics).await;
                super::sum(&text, "fortimisp_mirror_syncs_total", Some("full_ok")) >= 1
            })
            .await?;
    }
    say(&format!("integration running (pid {}), syslog udp {}", daemon.pid(), listen.udp));
    let landed = || fleet.targets.iter().zip(&expected).all(|(t, ips)| ips.iter().all(|ip| holds(t, &config, *ip)));
    let progress = replay(opts, &lines, listen.udp, listen.metrics, &landed, &mut daemon).await?;

    let hk = tokio::task::block_in_place(|| run_once(&bins, &config_path, &dir))?;
    say(&format!("housekeeping --once exited {}", hk.code().map_or("by signal".into(), |c| c.to_string())));
    let old_block: IpAddr = OLD_BLOCK.parse().expect("invariant: OLD_BLOCK is an address");
    let hk_ok: Vec<bool> = fleet.targets.iter().map(|t| housekeeping_ok(t, &config, old_block)).collect();

    let mut problems = Vec::new();
    let daemon = stop_unless_kept(daemon, keep_running, &mut problems);

    let journal = Journal::open_strict(&config.state).context("the journal")?;
    let ledger = journal.active_blocks().await.context("the journal")?;
    // One row per address in BLOCKED, checked on the first target the ledger names for it.
    let mut seen = BTreeSet::new();
    let mut blocked = Vec::new();
    for record in ledger.iter().filter(|b| seen.insert(b.ip)) {
        let t = fleet.targets.iter().find(|t| t.name == record.target).unwrap_or(&fleet.targets[0]);
        let target = Target::Groups { fortigate: &t.fortigate, config: &config };
        blocked.extend(plan.blocked(&config, std::slice::from_ref(record), &target, &events));
    }
    let not_blocked = plan.not_blocked(&ledger);
    problems.extend(plan.problems(&blocked));
    let mut targets = Vec::new();
    for ((t, expected), housekeeping_ok) in fleet.targets.iter().zip(expected).zip(hk_ok) {
        let row = target_blocks(t, &config, expected, &ledger, housekeeping_ok);
        problems.extend(row.problems());
        targets.push(row);
    }
    if hk.code() != Some(0) {
        problems.push(format!("housekeeping --once exited with {:?}", hk.code()));
    }
    let housekeeping = Housekeeping {
        exit_code: hk.code(),
        old_block_removed: targets.iter().all(|t| t.housekeeping_ok),
        foreign_untouched: Some(targets.iter().all(|t| t.housekeeping_ok)),
        old_block: None,
    };
    let first = &fleet.targets[0];
    let report = Report {
        dir,
        bin_dir: bins.dir.clone(),
        config_path,
        backend: Backend::AddressGroup,
        fortigate_url: first.fortigate.url().to_string(),
        fortigate_token: first.fortigate.token(),
        fortigate_ca: fleet.fortigate_ca.clone(),
        progress,
        blocked,
        not_blocked,
        housekeeping,
        feeds: None,
        targets: Some(targets),
        problems,
    };
    Ok(Running { report, servers: Emulators::Fleet(fleet), daemon })
}

/// The expected addresses target `t` (of `n`) must block: with the fleet scope all of them, with the origin scope
/// those named by a triggering line of its device (sample line `l`, from 1, comes from target `(l - 1) % n`).
fn expected_on(plan: &Plan, scope: Scope, n: usize, t: usize) -> Vec<IpAddr> {
    plan.expected
        .iter()
        .copied()
        .filter(|ip| {
            scope == Scope::Fleet
                || plan.looked_up.get(ip).is_some_and(|(_, lines)| lines.iter().any(|l| (l - 1) % n == t))
        })
        .collect()
}

/// Whether `t` blocks `ip`: its object is a member of its block group.
fn holds(t: &FleetTarget, config: &Config, ip: IpAddr) -> bool {
    Target::Groups { fortigate: &t.fortigate, config }.holding(ip, None).is_some()
}

/// `t`'s old block is gone and its foreign object is still in the block group.
fn housekeeping_ok(t: &FleetTarget, config: &Config, old_block: IpAddr) -> bool {
    let members = t.fortigate.members(&config.targets[0].block_group).unwrap_or_default();
    t.fortigate.object(&object_name(config, old_block)).is_none()
        && t.fortigate.object(FOREIGN_OBJECT).is_some()
        && members.iter().any(|m| m == FOREIGN_OBJECT)
}

fn target_blocks(
    t: &FleetTarget,
    config: &Config,
    expected: Vec<IpAddr>,
    ledger: &[BlockRecord],
    housekeeping_ok: bool,
) -> TargetBlocks {
    let in_ledger: Vec<IpAddr> = ledger.iter().filter(|b| b.target == t.name).map(|b| b.ip).collect();
    // What the emulator holds, for every address anyone expected or the journal names.
    let candidates: BTreeSet<IpAddr> = expected.iter().chain(&in_ledger).copied().collect();
    let on_fortigate = candidates.into_iter().filter(|ip| holds(t, config, *ip)).collect();
    TargetBlocks {
        name: t.name.clone(),
        devid: t.device.devid.clone(),
        devname: t.device.devname.clone(),
        url: t.fortigate.url().to_string(),
        expected,
        on_fortigate,
        in_journal: in_ledger.len(),
        housekeeping_ok,
    }
}

impl TargetBlocks {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ip in self.expected.iter().filter(|ip| !self.on_fortigate.contains(ip)) {
            out.push(format!("{ip} should have been blocked on target {} and was not", self.name));
        }
        for ip in self.on_fortigate.iter().filter(|ip| !self.expected.contains(ip)) {
            out.push(format!("{ip} was blocked on target {} although its scope did not call for it", self.name));
        }
        if !self.housekeeping_ok {
            out.push(format!("target {}: the old block stayed or the foreign object changed", self.name));
        }
        out
    }
}

/// The PER TARGET part of the table.
pub(super) fn render(targets: &[TargetBlocks]) -> String {
    let mut rows = vec![[
        "TARGET".to_string(),
        "DEVICE".into(),
        "URL".into(),
        "EXPECTED".into(),
        "ON FORTIGATE".into(),
        "IN JOURNAL".into(),
        "HOUSEKEEPING".into(),
    ]];
    for t in targets {
        rows.push([
            t.name.clone(),
            format!("{} {}", t.devid, t.devname),
            t.url.clone(),
            t.expected.len().to_string(),
            t.on_fortigate.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(" "),
            t.in_journal.to_string(),
            if t.housekeeping_ok { "ok" } else { "FAILED" }.to_string(),
        ]);
    }
    format!("\nPER TARGET ({})\n{}", targets.len(), super::columns(&rows))
}

/// The `targets` array of the JSON report.
pub(super) fn json(targets: &[TargetBlocks]) -> serde_json::Value {
    serde_json::Value::Array(
        targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "devid": t.devid, "devname": t.devname, "url": t.url,
                    "expected": t.expected.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                    "on_fortigate": t.on_fortigate.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                    "in_journal": t.in_journal, "housekeeping_ok": t.housekeeping_ok,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(expected: &[&str], on: &[&str], hk: bool) -> TargetBlocks {
        let ips = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
        TargetBlocks {
            name: "b".into(),
            devid: "FG100FTK20000002".into(),
            devname: "FGT-2".into(),
            url: "https://127.0.0.1:1".into(),
            expected: ips(expected),
            on_fortigate: ips(on),
            in_journal: on.len(),
            housekeeping_ok: hk,
        }
    }

    #[test]
    fn a_target_row_names_what_is_missing_and_what_is_extra() {
        assert!(row(&["198.51.100.1"], &["198.51.100.1"], true).problems().is_empty());
        let problems = row(&["198.51.100.1"], &["198.51.100.2"], false).problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("198.51.100.1 should have been blocked on target b"), "{problems:?}");
        assert!(problems[1].contains("198.51.100.2 was blocked on target b"), "{problems:?}");
    }

    #[test]
    fn the_per_target_table_has_a_row_per_target() {
        let text = render(&[row(&["198.51.100.1"], &["198.51.100.1"], true)]);
        assert!(text.contains("PER TARGET (1)") && text.contains("FG100FTK20000002 FGT-2"), "{text}");
        assert!(text.lines().any(|l| l.trim_start().starts_with("b ") && l.ends_with("ok")), "{text}");
        assert_eq!(json(&[row(&[], &[], true)])[0]["name"], "b");
    }
}
