//! Line to entry: how long after a triggering syslog line its address is an entry the FortiGate can use (push:
//! in the emulated FortiGate's feed) or could load (pull: in the file fortimisp serves), against the
//! address-group backend (the `misp-<ip>` object in a block group), with the same emulator latencies.
//!
//! One lab per system (the harness's [`Lab`]: both emulators in this process, the real daemon as a child, on-demand
//! MISP lookups as in loadgen). MISP holds one indicator per line, two addresses apart so that no two blocks
//! aggregate into one CIDR entry. The lines are sent one at a time, `gap` apart, each from a new indicator
//! address; a probe task looks every [`PROBE_EVERY`] at what the FortiGate holds (or at the served file, with
//! a kept-alive conditional GET) and records when each address first shows. For a fetch, the time recorded is
//! the moment the request was sent: the daemon answers with the contents in force when it arrives.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{Contents, UpdateMethod};
use fortimisp_core::feed::Family;
use tokio::time::Instant;

use super::Summary;
use crate::fortigate::{FortiGateEmulator, Table};
use crate::loadgen::{Corpus, FeedAccess, Lab, LabFeed, LabOptions, Scrape, FIRST_INDICATOR};

/// How often the probe looks.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long a lab may take to push its first snapshot or serve its first file.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// What to send.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Triggering lines, one new indicator each.
    pub lines: u32,
    /// Time between two lines.
    pub gap: Duration,
    /// After the last line, how long to wait at most for the last entry.
    pub settle: Duration,
    /// Added to every answer of each emulator once the daemon is up.
    pub misp_latency: Duration,
    pub fortigate_latency: Duration,
}

/// Which backend, and where its entries show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// `misp-<ip>` members of the block groups.
    AddressGroup,
    /// Entries of the emulated FortiGate's push feed.
    Push,
    /// Lines of the feed file fortimisp serves.
    Pull,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::AddressGroup => "address-group",
            System::Push => "threat-feed push",
            System::Pull => "threat-feed pull (served)",
        }
    }
}

/// One system's line-to-entry latencies.
#[derive(Debug, Clone)]
pub struct LatencyFigures {
    pub system: System,
    pub sent: u32,
    /// Addresses that showed before the settle time ran out.
    pub seen: u32,
    pub ms: Summary,
    /// The first line's latency, ms. It is sent right after the daemon is healthy and may wait for one-off work
    /// (a MISP request more; with address groups, the start-up reads of the FortiGate).
    pub first_ms: Option<f64>,
    /// The highest latency of the other lines, ms.
    pub others_max_ms: Option<f64>,
}

/// Runs `opts` against one system.
pub async fn measure(daemon: &Path, system: System, opts: &LatencyOptions) -> Result<LatencyFigures> {
    let mut lab_opts = LabOptions::new(daemon.to_path_buf());
    lab_opts.misp_latency = opts.misp_latency;
    lab_opts.fortigate_latency = opts.fortigate_latency;
    lab_opts.indicators = u64::from(opts.lines);
    lab_opts.indicator_stride = 2;
    lab_opts.fortigate_rps = 50;
    let update = match system {
        System::AddressGroup => None,
        System::Push => Some(UpdateMethod::Push),
        System::Pull => Some(UpdateMethod::Pull),
    };
    lab_opts.feed =
        update.map(|u| LabFeed { update: vec![u], contents: Contents::Blocked, max_entries: 0, max_feeds: 1 });
    let lab = Lab::start(&lab_opts).await?;
    let result = run(&lab, system, opts).await;
    result.inspect_err(|_| eprintln!("daemon log:\n{}", lab.log_text()))
}

async fn run(lab: &Lab, system: System, opts: &LatencyOptions) -> Result<LatencyFigures> {
    let probe = match (system, &lab.feed) {
        (System::AddressGroup, _) => Probe::Groups(Arc::clone(&lab.fortigate)),
        (System::Push, Some(access)) => {
            let feeds = access.names.all().len() as f64;
            let metrics = lab.metrics;
            let pushed = || async move {
                Scrape::fetch(metrics)
                    .map(|s| s.get("fortimisp_feed_pushes_total{command=\"snapshot\",outcome=\"ok\"}") >= feeds)
                    .unwrap_or(false)
            };
            wait_for("the first snapshot pushed", pushed).await?;
            Probe::PushedFeed(Arc::clone(&lab.fortigate), access.names.name(Family::V4, 0))
        }
        (System::Pull, Some(access)) => {
            let served = ServedProbe::new(access)?;
            wait_for("the feed served", || served.ready()).await?;
            Probe::Served(served)
        }
        _ => bail!("the lab has no threat feeds"),
    };
    let addresses: Vec<IpAddr> =
        (0..opts.lines).map(|k| IpAddr::V4(Ipv4Addr::from(u32::from(FIRST_INDICATOR) + 2 * k))).collect();
    let targets: HashSet<String> = addresses.iter().map(IpAddr::to_string).collect();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(probe.run(targets, Arc::clone(&seen), Arc::clone(&stop)));

    let corpus = Corpus::load(&Corpus::default_dir())?;
    let template = corpus.templates.iter().find(|t| t.triggering).context("a triggering corpus line")?;
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket")?;
    let mut sent_at = HashMap::new();
    let mut line = Vec::new();
    let start = Instant::now();
    for (k, ip) in addresses.iter().enumerate() {
        tokio::time::sleep_until(start + opts.gap * k as u32).await;
        template.render(*ip, &mut line);
        socket.send_to(&line, lab.udp).context("cannot send a syslog line")?;
        sent_at.insert(ip.to_string(), Instant::now());
    }
    let deadline = Instant::now() + opts.settle;
    while Instant::now() < deadline && seen.lock().map_or(0, |s| s.len()) < addresses.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await.context("the probe task panicked")??;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let latency = |ip: &String| Some(seen.get(ip)?.saturating_duration_since(*sent_at.get(ip)?).as_secs_f64() * 1000.0);
    let first = addresses.first().map(IpAddr::to_string);
    let first_ms = first.as_ref().and_then(latency);
    let others_max_ms =
        seen.keys().filter(|ip| Some(*ip) != first.as_ref()).filter_map(latency).max_by(|a, b| a.total_cmp(b));
    let mut ms: Vec<f64> = seen.keys().filter_map(latency).collect();
    let ms = Summary::of(&mut ms);
    Ok(LatencyFigures { system, sent: opts.lines, seen: ms.n as u32, ms, first_ms, others_max_ms })
}

/// Polls `check` every 50 ms until it holds, [`READY_WITHIN`] at most.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_WITHIN;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out after {READY_WITHIN:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Where the probe looks.
enum Probe {
    Groups(Arc<FortiGateEmulator>),
    PushedFeed(Arc<FortiGateEmulator>, String),
    Served(ServedProbe),
}

impl Probe {
    /// Until `stop`: records in `seen` when each of `targets` first shows.
    async fn run(
        mut self,
        targets: HashSet<String>,
        seen: Arc<Mutex<HashMap<String, Instant>>>,
        stop: Arc<AtomicBool>,
    ) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let visible = self.visible().await?;
            if let Ok(mut seen) = seen.lock() {
                for entry in visible.iter().map(|e| e.trim_end_matches("/32")).filter(|e| targets.contains(*e)) {
                    seen.entry(entry.to_string()).or_insert(now);
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        Ok(())
    }

    /// The addresses in force now.
    async fn visible(&mut self) -> Result<Vec<String>> {
        Ok(match self {
            Probe::Groups(fortigate) => fortigate
                .names(Table::Addrgrp)
                .into_iter()
                .filter(|g| g == "MISP_BLOCK" || g.starts_with("MISP_BLOCK-"))
                .flat_map(|g| fortigate.members(&g).unwrap_or_default())
                .filter_map(|m| m.strip_prefix("misp-").map(str::to_string))
                .collect(),
            Probe::PushedFeed(fortigate, name) => fortigate.feed(name).map(|f| f.entries).unwrap_or_default(),
            Probe::Served(served) => served.poll().await?,
        })
    }
}

/// Conditional GETs of the served IPv4 feed on a kept-alive connection.
struct ServedProbe {
    http: reqwest::Client,
    url: String,
    user: String,
    password: String,
    etag: Option<String>,
    entries: Vec<String>,
}

impl ServedProbe {
    fn new(access: &FeedAccess) -> Result<ServedProbe> {
        let url = access.url(&access.names.name(Family::V4, 0)).context("a pulled feed has a listener")?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(access.ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(ServedProbe {
            http,
            url,
            user: access.username.clone(),
            password: access.password.clone(),
            etag: None,
            entries: Vec::new(),
        })
    }

    async fn ready(&self) -> bool {
        let response = self.http.get(&self.url).basic_auth(&self.user, Some(&self.password)).send().await;
        response.is_ok_and(|r| r.status() == 200)
    }

    async fn poll(&mut self) -> Result<Vec<String>> {
        let mut request = self.http.get(&self.url).basic_auth(&self.user, Some(&self.password));
        if let Some(etag) = &self.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await.context("fetching the served feed")?;
        match response.status().as_u16() {
            304 => {}
            200 => {
                self.etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
                let body = response.text().await.context("reading the served feed")?;
                self.entries =
                    body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(String::from).collect();
            }
            status => bail!("the served feed answered {status}"),
        }
        Ok(self.entries.clone())
    }
}
