//! The fleet lab of the benchmarks: a [`Fleet`] of N emulated FortiGates and MISP (all in this process, over
//! HTTPS), MISP holding one synthetic `ip-dst` indicator per address the run will send, and the real
//! `integration` binary as a child process with a `[[fortigate]]` table per emulator (the harness's template,
//! [`ConfigDoc::fleet`]), the mirror on, and one trigger (`type = "traffic"`). Lines go in over syslog TCP (LF
//! framing, one connection), so none is lost and a run never waits on a dropped datagram.
//!
//! The emulators' latency is set once the daemon is up and the mirror synced, and their request logs are cleared
//! then: the figures count the blocks' requests, not the start-up checks.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fortimisp_core::config::{Check, Scope, TriggerRule};

use crate::fleet::{Device, Fleet, FleetOptions};
use crate::fortigate::EmulatorConfig;
use crate::harness::{self, ConfigDoc, Daemon, Listen};
use crate::loadgen::{block_groups, cpu_seconds, rss_kib, FIRST_INDICATOR};

/// The block group the template's `[fortigate]` table leaves at its default.
pub const BLOCK_GROUP: &str = "MISP_BLOCK";
/// The object name prefix, likewise.
pub const PREFIX: &str = "misp-";
/// How long the daemon may take to answer `/healthz` and then to load the mirror.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// How to set up one fleet lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub daemon: PathBuf,
    pub targets: usize,
    pub scope: Scope,
    /// Every FortiGate emulator answers this much later (set once the daemon is ready).
    pub fortigate_latency: Duration,
    /// Each target's `requests_per_second`.
    pub rps: u32,
    /// `[blocking] max_blocks_per_minute` (per target).
    pub max_blocks_per_minute: u32,
    /// Indicators MISP holds: [`indicator`] `0..indicators`.
    pub indicators: u32,
}

/// The fleet, the daemon, and where to send lines.
pub struct FleetLab {
    /// Shared with the latency part's probe thread.
    pub fleet: Arc<Fleet>,
    pub listen: Listen,
    tcp: TcpStream,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// Indicator `k`: `11.0.0.1 + k`.
pub fn indicator(k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(FIRST_INDICATOR).wrapping_add(k)))
}

impl FleetLab {
    /// Starts the fleet and the daemon, waits until the daemon is healthy and its mirror holds every indicator,
    /// then sets the emulators' latency and clears their request logs.
    pub async fn start(opts: &LabOptions) -> Result<FleetLab> {
        let dir = tempfile::Builder::new().prefix("fortimisp-fleetbench-").tempdir().context("a work directory")?;
        let fortigate = EmulatorConfig { table_limit: 1_000_000, ..EmulatorConfig::default() };
        let fleet = Fleet::start(FleetOptions { fortigate, ..FleetOptions::of(opts.targets) }, dir.path()).await?;
        let base_ts = chrono::Utc::now().timestamp() - 86_400;
        fleet.misp.add_synthetic_every(u64::from(opts.indicators), FIRST_INDICATOR, 1, base_ts);
        let listen = Listen { housekeeping_metrics: None, ..Listen::free() };
        let config = config(&fleet, &listen, &dir.path().join("state.db"), opts);
        let config_path = dir.path().join("config.toml");
        harness::write_private(&config_path, &config)?;
        let args = [std::ffi::OsStr::new("--config"), config_path.as_os_str()];
        let daemon = Daemon::spawn(&opts.daemon, &args, dir.path().join("daemon.log"))?;
        daemon.wait_healthy(listen.metrics, READY_WITHIN).await?;
        let (metrics, want) = (listen.metrics, f64::from(opts.indicators));
        let synced = || async move {
            harness::sample_sum(&harness::metrics_text(metrics).await, "fortimisp_mirror_indicators") >= want
        };
        daemon.wait_until("the mirror's first full sync", READY_WITHIN, synced).await?;
        for t in &fleet.targets {
            t.fortigate.set_latency(opts.fortigate_latency);
            t.fortigate.reset_requests();
        }
        let addr = listen.tcp.context("Listen::free sets a TCP listener")?;
        let tcp = TcpStream::connect(addr).with_context(|| format!("cannot connect to syslog TCP {addr}"))?;
        tcp.set_nodelay(true).ok();
        Ok(FleetLab { fleet: Arc::new(fleet), listen, tcp, daemon, _dir: dir })
    }

    /// Sends one traffic line (policy 7, accept, to 203.0.113.1) from `device` with source `src`.
    pub fn send(&mut self, device: &Device, src: IpAddr) -> Result<()> {
        let mut line = device.traffic_line(src, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 7, "accept");
        line.push('\n');
        self.tcp.write_all(line.as_bytes()).context("cannot send a syslog line over TCP")
    }

    /// The device line `k` of a run comes from: the first target's with the fleet scope (any device would do),
    /// the targets' in turn with the origin scope.
    pub fn device_of(&self, scope: Scope, k: u32) -> &Device {
        let i = match scope {
            Scope::Fleet => 0,
            Scope::Origin => k as usize % self.fleet.targets.len(),
        };
        &self.fleet.targets[i].device
    }

    /// The indexes of the targets that should block line `k`.
    pub fn targets_of(&self, scope: Scope, k: u32) -> Vec<usize> {
        match scope {
            Scope::Fleet => (0..self.fleet.targets.len()).collect(),
            Scope::Origin => vec![k as usize % self.fleet.targets.len()],
        }
    }

    /// The sum of the daemon's samples `query` selects (labels in any order).
    pub async fn metric(&self, query: &str) -> f64 {
        harness::sample_sum(&harness::metrics_text(self.listen.metrics).await, query)
    }

    /// `VmRSS` and `VmHWM` of the daemon, KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        rss_kib(self.daemon.pid())
    }

    /// User + system CPU seconds the daemon used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.daemon.pid())
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// How many `misp-<ip>` members target `i` holds over its block groups (the daemon's placeholder members,
    /// which keep a group from being empty, name no address).
    pub fn blocked_on(&self, i: usize) -> usize {
        let fortigate = &self.fleet.targets[i].fortigate;
        let is_block = |m: &String| m.strip_prefix(PREFIX).is_some_and(|ip| ip.parse::<IpAddr>().is_ok());
        block_groups(fortigate, BLOCK_GROUP)
            .iter()
            .map(|g| fortigate.members(g).unwrap_or_default().iter().filter(|m| is_block(m)).count())
            .sum()
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        let _ = self.daemon.stop(Duration::from_secs(10));
    }
}

/// The daemon's config: the harness's template with the fleet, the scope, the rate limits, the mirror and one
/// trigger. `[fortigate]` keys are set before [`ConfigDoc::fleet`] copies the table into every target.
fn config(fleet: &Fleet, listen: &Listen, state: &Path, opts: &LabOptions) -> String {
    let mut doc = ConfigDoc::template();
    doc.endpoints(&fleet.endpoints(), listen, state)
        .timeout(Duration::from_secs(10))
        .sync_interval(Duration::from_secs(300))
        .requests_per_second(opts.rps)
        .max_blocks_per_minute(opts.max_blocks_per_minute)
        .log_level("warn")
        .triggers(&[TriggerRule { log_type: Some("traffic".into()), check: Check::Src, ..TriggerRule::default() }])
        .fleet(fleet)
        .scope(opts.scope);
    doc.render()
}
