//! A load generator for the integration daemon: real FortiGate lines at a fixed rate (or flat out), and a report
//! of what the daemon and the emulated servers made of them.
//!
//! Pieces, each usable on its own:
//! - [`Corpus`]: the shared FortiGate corpus (`tests/data/corpus/*.log`) turned into templates. A template whose
//!   `srcip` the core parser finds is split around that value so the generator can write any address into it;
//!   lines without one are sent unchanged (they still cost a parse).
//! - [`Pool`]: the source addresses. Index `k` is an indicator when `k % indicator_every == 0` (then it is
//!   `first_indicator + k / indicator_every`, the value [`crate::misp::MispEmulator::add_synthetic`] gives the same
//!   index), else a clean address from `12.0.0.1` up. The pool is revealed over `ramp`, so new addresses (and new
//!   blocks) arrive at a steady rate instead of all in the first second.
//! - [`send`]: the sender thread (UDP datagrams, or LF-framed TCP), paced in 200 µs steps. It records when each
//!   indicator was first sent on a triggering line, which is where block latency starts.
//! - [`Watcher`]: polls the emulated FortiGate's block groups every 5 ms and records when each `misp-<ip>` member
//!   appears, which is where block latency ends.
//! - [`Lab`]: both emulators in this process (plain HTTP, optional latency) and the real `integration` binary as a
//!   child process, all started through [`crate::harness`] (its config template with the settings of
//!   [`LabOptions`]). With [`LabOptions::feed`] the daemon runs the threat-feed backend ([`LabFeed`]: the lab
//!   makes the listener's certificate and creates the feed objects on the emulated FortiGate; [`FeedAccess`]
//!   says how to fetch the feeds). Used by [`crate::feedbench`] too.
//! - [`Flood`]: the scan scenario instead of the pool: every line triggers and comes from a new source, and a few
//!   indicators among them are each sent a few times. Reports when the last indicator was blocked after the end
//!   of the flood, what the daemon shed, and its RSS at start, peak and end ([`FloodReport`]).
//! - [`naive`]: the baseline the issue asks for, the earlier service's shape: one thread, one blocking restSearch
//!   per received line.
//!
//! Loss is computed from both ends, because the daemon cannot see kernel drops: `sent − received` (the daemon's
//! `fortimisp_messages_received_total`) and the system-wide `Udp: RcvbufErrors` of `/proc/net/snmp`.
//!
//! Nothing here asserts on timing: benchmarks report, the smoke test only checks that traffic flowed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{Check, Contents, TriggerRule, UpdateMethod};
use fortimisp_core::feed::Names;

use crate::fortigate::{EmulatorConfig, FortiGateEmulator, Table};
use crate::harness::{self, ConfigDoc, Daemon, FeedKeys, Listen, ServerOptions, Servers};
use crate::misp::MispEmulator;
use crate::tls::TestCa;

/// The address written into templates to find out whether the parser sees the rewritten `srcip`.
const PROBE: Ipv4Addr = Ipv4Addr::new(45, 33, 32, 156);
/// First clean pool address.
const FIRST_CLEAN: Ipv4Addr = Ipv4Addr::new(12, 0, 0, 1);
/// Default first indicator address (the `misp-emulator --synthetic-from` default).
pub const FIRST_INDICATOR: Ipv4Addr = Ipv4Addr::new(11, 0, 0, 1);
/// How often the watcher polls the FortiGate's groups.
const WATCH_EVERY: Duration = Duration::from_millis(5);

// ---- corpus -----------------------------------------------------------------------------------------------

/// One corpus line: either fixed text, or text around a `srcip` value.
#[derive(Debug, Clone)]
pub struct Template {
    head: String,
    /// `None`: the line has no rewritable srcip and is sent as is.
    tail: Option<String>,
    /// The line is a `type=traffic` log with a rewritable srcip (what the lab's trigger rule matches).
    pub triggering: bool,
}

impl Template {
    /// Writes the line for `ip` into `out` (cleared first).
    pub fn render(&self, ip: IpAddr, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.head.as_bytes());
        if let Some(tail) = &self.tail {
            write!(out, "{ip}").expect("writing to a Vec cannot fail");
            out.extend_from_slice(tail.as_bytes());
        }
    }

    pub fn rewritable(&self) -> bool {
        self.tail.is_some()
    }
}

/// The corpus as templates, in file order.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub templates: Vec<Template>,
}

impl Corpus {
    /// Loads every `*.log` in `dir` (one message per line; empty lines skipped).
    pub fn load(dir: &Path) -> Result<Corpus> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read corpus directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.sort();
        let mut templates = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            templates.extend(text.lines().filter(|l| !l.trim().is_empty()).map(template));
        }
        if !templates.iter().any(|t| t.triggering) {
            bail!("no type=traffic line with a srcip in {}", dir.display());
        }
        Ok(Corpus { templates })
    }

    /// The corpus of this repository (`tests/data/corpus`, found from this crate's manifest directory).
    pub fn default_dir() -> PathBuf {
        crate::corpus::dir()
    }

    pub fn triggering(&self) -> usize {
        self.templates.iter().filter(|t| t.triggering).count()
    }
}

/// Splits a line around its srcip value, kept only if the core parser reads the rewritten value back.
fn template(line: &str) -> Template {
    let fixed = Template { head: line.to_string(), tail: None, triggering: false };
    let Some(at) = line.find("srcip=") else { return fixed };
    let start = at + "srcip=".len();
    let quoted = line[start..].starts_with('"');
    let value_start = if quoted { start + 1 } else { start };
    let end = line[value_start..]
        .find(|c: char| if quoted { c == '"' } else { c == ' ' || c == ',' || c == '"' })
        .map(|i| value_start + i)
        .unwrap_or(line.len());
    let head = &line[..value_start];
    let tail = &line[end..];
    let probe = format!("{head}{PROBE}{tail}");
    let Ok(record) = fortimisp_core::syslog::parse(probe.as_bytes()) else { return fixed };
    if record.srcip_str() != Some(&PROBE.to_string()) {
        return fixed;
    }
    let triggering = record.get("type") == Some("traffic");
    Template { head: head.to_string(), tail: Some(tail.to_string()), triggering }
}

// ---- address pool -----------------------------------------------------------------------------------------

/// The source addresses written into the lines.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// Distinct addresses.
    pub size: u32,
    /// Every `indicator_every`-th address is an indicator (1 = all, 0 = none).
    pub indicator_every: u32,
    pub first_indicator: Ipv4Addr,
}

impl Pool {
    /// `fraction` of the pool are indicators (rounded to one in N).
    pub fn new(size: u32, fraction: f64, first_indicator: Ipv4Addr) -> Pool {
        let indicator_every = if fraction <= 0.0 { 0 } else { (1.0 / fraction).round().max(1.0) as u32 };
        Pool { size: size.max(1), indicator_every, first_indicator }
    }

    /// How many indicators the pool holds (what MISP must know).
    pub fn indicators(&self) -> u32 {
        if self.indicator_every == 0 {
            0
        } else {
            self.size.div_ceil(self.indicator_every)
        }
    }

    /// Address `k`, and its indicator index when it is one.
    pub fn addr(&self, k: u32) -> (IpAddr, Option<u32>) {
        if self.indicator_every != 0 && k.is_multiple_of(self.indicator_every) {
            let j = k / self.indicator_every;
            (IpAddr::V4(Ipv4Addr::from(u32::from(self.first_indicator).wrapping_add(j))), Some(j))
        } else {
            (IpAddr::V4(Ipv4Addr::from(u32::from(FIRST_CLEAN).wrapping_add(k))), None)
        }
    }

    /// The indicator index of `ip`, if it is one of the pool's indicators.
    pub fn indicator_index(&self, ip: IpAddr) -> Option<u32> {
        let IpAddr::V4(v4) = ip else { return None };
        let j = u32::from(v4).checked_sub(u32::from(self.first_indicator))?;
        (j < self.indicators()).then_some(j)
    }
}

// ---- sender -----------------------------------------------------------------------------------------------

/// How lines reach the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    /// One connection, LF framing.
    Tcp,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct SendPlan {
    pub target: SocketAddr,
    pub transport: Transport,
    /// Lines per second; `None` = as fast as possible.
    pub rate: Option<u64>,
    pub duration: Duration,
    pub pool: Pool,
    /// The pool is revealed linearly over this time (zero = all from the start).
    pub ramp: Duration,
    /// Send a scan instead of the pool's addresses (needs a `rate`; `pool` then holds the flood's indicators).
    pub flood: Option<Flood>,
}

/// A scan from new sources: line `n` is a triggering line from the clean address `12.0.0.1 + n`, except that the
/// pool's indicators (`pool.indicators()` of them, spread evenly over the flood) each replace `repeats` lines,
/// `gap` apart. The gap should exceed the daemon's one-second recently-queued filter, or the repeats never reach
/// the decision stage.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub repeats: u32,
    pub gap: Duration,
}

impl Flood {
    /// Line number → indicator index, for `lines` lines at `rate` lines/s.
    fn schedule(&self, pool: &Pool, lines: u64, rate: u64) -> HashMap<u64, u32> {
        let indicators = u64::from(pool.indicators());
        let mut at = HashMap::new();
        if indicators == 0 || lines == 0 {
            return at;
        }
        let repeats = u64::from(self.repeats.max(1));
        let gap = (self.gap.as_secs_f64() * rate as f64) as u64;
        let span = lines.saturating_sub((repeats - 1) * gap).max(1);
        for j in 0..indicators {
            let first = j * span / indicators + span / (2 * indicators);
            for r in 0..repeats {
                let mut n = first + r * gap;
                while at.contains_key(&n) {
                    n += 1;
                }
                at.insert(n.min(lines.saturating_sub(1)), j as u32);
            }
        }
        at
    }
}

/// What the sender did.
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub lines: u64,
    pub bytes: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
    /// Lines that matched the lab's trigger rule (type=traffic with a srcip).
    pub triggering: u64,
    /// Distinct addresses sent on triggering lines.
    pub distinct_triggering: u64,
    /// Distinct indicators sent on triggering lines.
    pub distinct_indicators: u64,
    /// When each indicator was first sent on a triggering line (index = indicator index).
    pub first_sent: Vec<Option<Instant>>,
}

/// Sends for `plan.duration` on the calling thread. `stop` ends it early.
pub fn send(plan: &SendPlan, corpus: &Corpus, stop: &AtomicBool) -> Result<Sent> {
    let mut out = match plan.transport {
        Transport::Udp => {
            let bind: SocketAddr =
                if plan.target.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            let socket = UdpSocket::bind(bind).context("cannot bind the sending UDP socket")?;
            socket.connect(plan.target).with_context(|| format!("cannot connect to {}", plan.target))?;
            Out::Udp(socket)
        }
        Transport::Tcp => {
            let stream =
                TcpStream::connect(plan.target).with_context(|| format!("cannot connect to {}", plan.target))?;
            stream.set_nodelay(true).ok();
            Out::Tcp(std::io::BufWriter::with_capacity(64 * 1024, stream))
        }
    };
    let pool = plan.pool;
    let mut sent = Sent { first_sent: vec![None; pool.indicators() as usize], ..Sent::default() };
    let mut seen = vec![false; if plan.flood.is_some() { 0 } else { pool.size as usize }];
    let (flood, triggering_templates): (HashMap<u64, u32>, Vec<&Template>) = match (plan.flood, plan.rate) {
        (Some(flood), Some(rate)) => (
            flood.schedule(&pool, (plan.duration.as_secs_f64() * rate as f64) as u64, rate),
            corpus.templates.iter().filter(|t| t.triggering).collect(),
        ),
        (Some(_), None) => bail!("a flood needs a rate"),
        (None, _) => (HashMap::new(), Vec::new()),
    };
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(4096);
    let templates = &corpus.templates;
    let start = Instant::now();
    let mut next_template = 0usize;
    'outer: loop {
        let elapsed = start.elapsed();
        if elapsed >= plan.duration || stop.load(Ordering::Relaxed) {
            break;
        }
        let due = match plan.rate {
            Some(rate) => (elapsed.as_secs_f64() * rate as f64) as u64,
            None => sent.lines + 256,
        };
        if sent.lines >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let eligible = if plan.ramp.is_zero() || elapsed >= plan.ramp {
            pool.size
        } else {
            ((pool.size as f64 * elapsed.as_secs_f64() / plan.ramp.as_secs_f64()) as u32).clamp(1, pool.size)
        };
        while sent.lines < due {
            if plan.flood.is_some() {
                let template = triggering_templates[next_template % triggering_templates.len()];
                next_template = next_template.wrapping_add(1);
                let (ip, indicator) = match flood.get(&sent.lines) {
                    Some(&j) => (pool.addr(j).0, Some(j)),
                    None => (IpAddr::V4(Ipv4Addr::from(u32::from(FIRST_CLEAN).wrapping_add(sent.lines as u32))), None),
                };
                template.render(ip, &mut buf);
                sent.triggering += 1;
                match indicator {
                    None => sent.distinct_triggering += 1,
                    Some(j) => {
                        let slot = &mut sent.first_sent[j as usize];
                        if slot.is_none() {
                            *slot = Some(Instant::now());
                            sent.distinct_indicators += 1;
                            sent.distinct_triggering += 1;
                        }
                    }
                }
                if !send_line(&mut out, &mut buf, &mut sent) {
                    break 'outer;
                }
                continue;
            }
            let template = &templates[next_template];
            next_template = (next_template + 1) % templates.len();
            // xorshift64*: cheap and good enough to spread addresses.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = ((rng >> 32) % u64::from(eligible)) as u32;
            let (ip, indicator) = pool.addr(k);
            template.render(ip, &mut buf);
            if template.triggering {
                sent.triggering += 1;
                if !seen[k as usize] {
                    seen[k as usize] = true;
                    sent.distinct_triggering += 1;
                }
                if let Some(j) = indicator {
                    let slot = &mut sent.first_sent[j as usize];
                    if slot.is_none() {
                        *slot = Some(Instant::now());
                        sent.distinct_indicators += 1;
                    }
                }
            }
            if !send_line(&mut out, &mut buf, &mut sent) {
                break 'outer;
            }
        }
    }
    if let Out::Tcp(mut writer) = out {
        writer.flush().ok();
    }
    sent.elapsed = start.elapsed();
    Ok(sent)
}

/// Where [`send`] writes.
enum Out {
    Udp(UdpSocket),
    Tcp(std::io::BufWriter<TcpStream>),
}

/// Sends one line and counts it; false when the TCP connection is gone.
fn send_line(out: &mut Out, buf: &mut Vec<u8>, sent: &mut Sent) -> bool {
    let ok = match out {
        Out::Udp(socket) => socket.send(buf).is_ok(),
        Out::Tcp(writer) => {
            buf.push(b'\n');
            if writer.write_all(buf).is_err() {
                sent.send_errors += 1;
                return false;
            }
            true
        }
    };
    if ok {
        sent.lines += 1;
        sent.bytes += buf.len() as u64;
    } else {
        sent.send_errors += 1;
        // A refused datagram (nobody listening yet, ENOBUFS) still counts toward the schedule.
        sent.lines += 1;
    }
    true
}

// ---- kernel counters --------------------------------------------------------------------------------------

/// `Udp: InErrors` and `RcvbufErrors` from /proc/net/snmp (system-wide; zero where unavailable).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpCounters {
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
}

impl UdpCounters {
    pub fn read() -> UdpCounters {
        let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return UdpCounters::default() };
        let map: HashMap<&str, u64> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        UdpCounters {
            in_errors: map.get("InErrors").copied().unwrap_or(0),
            rcvbuf_errors: map.get("RcvbufErrors").copied().unwrap_or(0),
        }
    }

    pub fn since(self, before: UdpCounters) -> UdpCounters {
        UdpCounters {
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
        }
    }
}

// ---- daemon metrics ---------------------------------------------------------------------------------------

/// One scrape of a Prometheus text endpoint: sample (name with labels) → value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub HashMap<String, f64>);

impl Scrape {
    /// Plain HTTP/1.0 GET of `/metrics` (no client library: this runs on plain threads too).
    pub fn fetch(addr: SocketAddr) -> Result<Scrape> {
        let body = http_get(addr, "/metrics")?;
        let mut map = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    map.insert(name.to_string(), v);
                }
            }
        }
        Ok(Scrape(map))
    }

    /// One sample, 0 if absent.
    pub fn get(&self, sample: &str) -> f64 {
        // Every target's series of it (`fortimisp_blocks_total{outcome="blocked"}` sums the targets).
        self.0.iter().filter(|(k, _)| crate::harness::series_matches(k, sample)).map(|(_, v)| v).sum()
    }

    /// The sum of every sample of a family (`name` or `name{...}`).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || (k.starts_with(name) && k[name.len()..].starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path} on {addr}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

// ---- FortiGate watcher ------------------------------------------------------------------------------------

/// Records when each indicator became a member of a block group on the emulated FortiGate.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<HashMap<u32, Instant>>>,
}

impl Watcher {
    /// Polls every 5 ms every IPv4 group named `group` or `group-N` for `prefix<ip>` members of `pool`.
    pub fn start(fortigate: Arc<FortiGateEmulator>, group: String, prefix: String, pool: Pool) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut seen: HashMap<u32, Instant> = HashMap::new();
            let mut sizes: HashMap<String, usize> = HashMap::new();
            while !flag.load(Ordering::Relaxed) {
                let now = Instant::now();
                for name in block_groups(&fortigate, &group) {
                    let members = fortigate.members(&name).unwrap_or_default();
                    if sizes.get(&name) == Some(&members.len()) {
                        continue;
                    }
                    sizes.insert(name.clone(), members.len());
                    for member in members {
                        let ip = member.strip_prefix(&prefix).and_then(|s| s.parse::<IpAddr>().ok());
                        if let Some(j) = ip.and_then(|ip| pool.indicator_index(ip)) {
                            seen.entry(j).or_insert(now);
                        }
                    }
                }
                std::thread::sleep(WATCH_EVERY);
            }
            seen
        });
        Watcher { stop, handle: Some(handle) }
    }

    /// Stops polling; returns indicator index → when it was first seen blocked.
    pub fn finish(mut self) -> HashMap<u32, Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

/// The IPv4 address groups on `fortigate` named `group` or `group-N` (the overflow groups the daemon adds when
/// one is full).
pub fn block_groups(fortigate: &FortiGateEmulator, group: &str) -> Vec<String> {
    let mut names = fortigate.names(Table::Addrgrp);
    names.retain(|name| name == group || name.strip_prefix(group).is_some_and(|s| s.starts_with('-')));
    names
}

/// `a - b` in seconds, negative when `a` is earlier.
fn signed_secs(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_secs_f64(),
        None => -b.duration_since(a).as_secs_f64(),
    }
}

/// Samples a process's RSS every 50 ms and keeps the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    /// The highest RSS seen, in KiB.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// p50 and p99 (nearest rank) of `values`, in milliseconds.
pub fn percentiles(values: &mut [f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Some((rank(0.50), rank(0.99), values[values.len() - 1]))
}

// ---- lab --------------------------------------------------------------------------------------------------

/// How to set up the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The `integration` binary.
    pub daemon: PathBuf,
    pub misp_latency: Duration,
    pub fortigate_latency: Duration,
    /// Indicators MISP holds (`add_synthetic_every` from `first_indicator`, `indicator_stride` apart).
    pub indicators: u64,
    pub first_indicator: Ipv4Addr,
    /// Addresses between two indicators (1: consecutive; 2: no two in one /31, so a feed cannot aggregate them).
    pub indicator_stride: u32,
    /// Sync a local mirror (`sync_interval = "5m"`) instead of asking MISP per address (`"0s"`).
    pub mirror: bool,
    /// `[fortigate] requests_per_second`.
    pub fortigate_rps: u32,
    /// `[blocking] max_blocks_per_minute`.
    pub max_blocks_per_minute: u32,
    /// `[syslog] recv_buffer_bytes`.
    pub recv_buffer_bytes: usize,
    /// `[log] level` of the daemon.
    pub log_level: String,
    /// The threat-feed backend instead of address groups.
    pub feed: Option<LabFeed>,
    /// `[state] url`: the journal in this PostgreSQL database instead of the lab directory's SQLite file.
    pub state_url: Option<String>,
}

/// The lab daemon's threat-feed backend (`backend = "threat-feed"`, a `[feed]` table). The lab makes the
/// listener's certificate (its own CA, which the emulated FortiGate trusts for its pulls), picks the port, and
/// creates every feed object on the emulated FortiGate before the daemon starts, as an operator does: pulled
/// ones pointing at the listener, or push ones when `update` has push.
#[derive(Debug, Clone)]
pub struct LabFeed {
    pub update: Vec<UpdateMethod>,
    /// `indicators` needs [`LabOptions::mirror`].
    pub contents: Contents,
    /// Entries per feed (0: the FortiGate's limit).
    pub max_entries: u32,
    pub max_feeds: u32,
}

/// How to reach the lab daemon's threat feeds.
#[derive(Debug, Clone)]
pub struct FeedAccess {
    /// The HTTPS listener (`None`: push only).
    pub listen: Option<SocketAddr>,
    /// The CA that issued the listener's certificate (PEM).
    pub ca_pem: String,
    /// The listener's certificate chain and key (PEM), for a baseline server that serves with the same one.
    pub cert_pem: String,
    pub key_pem: String,
    pub username: String,
    pub password: String,
    pub names: Names,
}

impl FeedAccess {
    /// `https://<listen>/feeds/<name>.txt` (`None`: push only).
    pub fn url(&self, name: &str) -> Option<String> {
        self.listen.map(|addr| format!("https://{addr}/feeds/{name}.txt"))
    }
}

/// The basic-auth user and password of the lab's feed listener.
const LAB_FEED_USER: &str = "fortigate";
const LAB_FEED_PASSWORD: &str = "lab feed password, not a secret";

impl LabOptions {
    pub fn new(daemon: PathBuf) -> LabOptions {
        LabOptions {
            daemon,
            misp_latency: Duration::ZERO,
            fortigate_latency: Duration::ZERO,
            indicators: 0,
            first_indicator: FIRST_INDICATOR,
            indicator_stride: 1,
            mirror: false,
            fortigate_rps: 10,
            max_blocks_per_minute: 600,
            recv_buffer_bytes: 8 << 20,
            log_level: "warn".into(),
            feed: None,
            state_url: None,
        }
    }
}

/// Both emulators in this process and the daemon as a child process. Dropping it stops the daemon (SIGTERM, then
/// SIGKILL after 10 s) and removes its directory.
pub struct Lab {
    pub misp: MispEmulator,
    pub fortigate: Arc<FortiGateEmulator>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    /// Set with [`LabOptions::feed`].
    pub feed: Option<FeedAccess>,
    daemon: Daemon,
}

static LAB_SEQ: AtomicU64 = AtomicU64::new(0);

/// How long the daemon may take to serve `/healthz`, and then to load the mirror.
const READY_WITHIN: Duration = Duration::from_secs(120);

impl Lab {
    /// Starts the emulators (plain HTTP on loopback), writes the config (the harness's template with the
    /// settings of `opts`), starts the daemon and waits until it serves `/healthz` (and, with a mirror, until the
    /// first full sync is in).
    pub async fn start(opts: &LabOptions) -> Result<Lab> {
        let dir = std::env::temp_dir().join(format!(
            "fortimisp-loadgen-{}-{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let fortigate = EmulatorConfig { table_limit: 1_000_000, ..EmulatorConfig::default() };
        let servers = Servers::start(ServerOptions { fortigate, ..ServerOptions::default() }, &dir).await?;
        if opts.indicators > 0 {
            let base_ts = chrono::Utc::now().timestamp() - 86_400;
            servers.misp.add_synthetic_every(opts.indicators, opts.first_indicator, opts.indicator_stride, base_ts);
        }
        let listen = Listen { housekeeping_metrics: None, ..Listen::free() };
        let mut config = ConfigDoc::template();
        config
            .endpoints(&servers.endpoints(), &listen, &dir.join("state.db"))
            .timeout(Duration::from_secs(10))
            .sync_interval(if opts.mirror { Duration::from_secs(300) } else { Duration::ZERO })
            .enforce_warninglist(true)
            .requests_per_second(opts.fortigate_rps)
            .recv_buffer_bytes(opts.recv_buffer_bytes)
            .max_blocks_per_minute(opts.max_blocks_per_minute)
            .log_level(&opts.log_level)
            .triggers(&[TriggerRule { log_type: Some("traffic".into()), check: Check::Src, ..TriggerRule::default() }]);
        if let Some(url) = &opts.state_url {
            config.state_url(url);
        }
        let feed = match &opts.feed {
            Some(lab_feed) => {
                let access = feed_access(lab_feed, &dir)?;
                config.backend(fortimisp_core::config::Backend::ThreatFeed).feed(&FeedKeys {
                    listen: access.listen,
                    tls_cert: dir.join("feed.crt"),
                    tls_key: dir.join("feed.key"),
                    password: access.password.clone(),
                    update: lab_feed.update.clone(),
                    contents: lab_feed.contents,
                    max_entries: lab_feed.max_entries,
                    max_feeds: lab_feed.max_feeds,
                    status_interval: Duration::from_secs(60),
                });
                create_feed_objects(&servers.fortigate, &access, lab_feed.update.contains(&UpdateMethod::Push)).await?;
                servers.fortigate.set_feed_ca(access.ca_pem.as_bytes());
                servers.fortigate.set_event_syslog(listen.udp);
                Some(access)
            }
            None => None,
        };
        let config_path = dir.join("config.toml");
        harness::write_private(&config_path, &config.render())?;
        let args = [OsStr::new("--config"), config_path.as_os_str()];
        let daemon = Daemon::spawn(&opts.daemon, &args, dir.join("daemon.log"))?;
        let Servers { fortigate, misp, .. } = servers;
        let tcp = listen.tcp.expect("Listen::free sets every address");
        let fortigate = Arc::new(fortigate);
        let lab = Lab { misp, fortigate, udp: listen.udp, tcp, metrics: listen.metrics, dir, feed, daemon };
        lab.wait_ready(opts).await?;
        // Latency applies to traffic from now on, not to the start-up checks and the first sync.
        lab.misp.set_latency((!opts.misp_latency.is_zero()).then_some(opts.misp_latency));
        lab.fortigate.set_latency(opts.fortigate_latency);
        lab.misp.reset_records();
        lab.fortigate.reset_requests();
        Ok(lab)
    }

    async fn wait_ready(&self, opts: &LabOptions) -> Result<()> {
        self.daemon.wait_healthy(self.metrics, READY_WITHIN).await?;
        if opts.mirror {
            let (metrics, indicators) = (self.metrics, opts.indicators as f64);
            let synced = || async move {
                Scrape::fetch(metrics).map(|s| s.get("fortimisp_mirror_indicators") >= indicators).unwrap_or(false)
            };
            self.daemon.wait_until("the mirror's first full sync", READY_WITHIN, synced).await?;
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }

    /// The daemon's syslog address for `transport`.
    pub fn udp_or_tcp(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
        }
    }

    /// The daemon's process id (for RSS and CPU figures).
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.daemon.stop(Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The listener's certificate (a fresh CA) written to `dir` as `feed.crt`/`feed.key`, a free port when pulled.
fn feed_access(feed: &LabFeed, dir: &Path) -> Result<FeedAccess> {
    let ca = TestCa::new();
    let cert = ca.issue_server_cert();
    std::fs::write(dir.join("feed.crt"), &cert.cert_pem).context("cannot write feed.crt")?;
    harness::write_private(&dir.join("feed.key"), &cert.key_pem)?;
    let pull = feed.update.contains(&UpdateMethod::Pull);
    Ok(FeedAccess {
        listen: pull.then(|| SocketAddr::from(([127, 0, 0, 1], crate::free_port()))),
        ca_pem: ca.ca_pem.clone(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        username: LAB_FEED_USER.into(),
        password: LAB_FEED_PASSWORD.into(),
        names: Names::new("fortimisp-block", true, feed.max_feeds),
    })
}

/// Creates every feed of `access.names` on the emulated FortiGate through its REST API: push feeds, or pulled
/// ones pointing at the listener with its credentials.
async fn create_feed_objects(fortigate: &FortiGateEmulator, access: &FeedAccess, push: bool) -> Result<()> {
    let http = reqwest::Client::new();
    for name in access.names.all() {
        let body = match access.url(&name) {
            Some(url) if !push => serde_json::json!({
                "name": name, "type": "address", "resource": url, "username": access.username,
                "password": access.password, "server-identity-check": "full", "refresh-rate": 5,
            }),
            _ => serde_json::json!({
                "name": name, "type": "address", "update-method": "push",
                "resource": "https://fortimisp.invalid/push-only",
            }),
        };
        let response = http
            .post(format!("{}/api/v2/cmdb/system/external-resource?vdom=root", fortigate.url()))
            .bearer_auth(fortigate.token())
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot create feed {name} on the FortiGate emulator"))?;
        if !response.status().is_success() {
            bail!("creating feed {name}: {} {}", response.status(), response.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here index 11 and 12 (state is index 0).
    (ticks(11) + ticks(12)) / 100.0
}

// ---- naive baseline ---------------------------------------------------------------------------------------

/// The earlier service's pipeline, as the baseline: one thread; receive a datagram, regex the srcip, one
/// blocking restSearch to MISP for that address, wait for the answer, next datagram.
pub mod naive {
    use super::*;

    /// A running baseline: counts datagrams received and lines fully processed.
    pub struct Naive {
        pub addr: SocketAddr,
        pub received: Arc<AtomicU64>,
        pub lookups: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        handle: Option<std::thread::JoinHandle<()>>,
    }

    impl Naive {
        /// Binds a UDP socket on loopback with `recv_buffer` bytes (as the daemon asks) and starts the loop.
        pub fn start(misp: SocketAddr, key: String, recv_buffer: usize) -> Result<Naive> {
            use socket2::{Domain, Protocol, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_recv_buffer_size(recv_buffer).ok();
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
            let socket: UdpSocket = socket.into();
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let addr = socket.local_addr()?;
            let received = Arc::new(AtomicU64::new(0));
            let lookups = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (r, l, s) = (Arc::clone(&received), Arc::clone(&lookups), Arc::clone(&stop));
            let handle = std::thread::spawn(move || run(socket, misp, key, r, l, s));
            Ok(Naive { addr, received, lookups, stop, handle: Some(handle) })
        }

        pub fn stop(mut self) -> (u64, u64) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
            (self.received.load(Ordering::Relaxed), self.lookups.load(Ordering::Relaxed))
        }
    }

    fn run(
        socket: UdpSocket,
        misp: SocketAddr,
        key: String,
        received: Arc<AtomicU64>,
        lookups: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) {
        let srcip = regex::Regex::new(r#"srcip="?([0-9A-Fa-f:.]+)"#).expect("a valid regex");
        let mut buf = vec![0u8; 65536];
        let mut conn: Option<BufReader<TcpStream>> = None;
        while !stop.load(Ordering::Relaxed) {
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            received.fetch_add(1, Ordering::Relaxed);
            let line = String::from_utf8_lossy(&buf[..n]);
            let Some(ip) = srcip.captures(&line).map(|c| c[1].to_string()) else { continue };
            if lookup(&mut conn, misp, &key, &ip).is_ok() {
                lookups.fetch_add(1, Ordering::Relaxed);
            } else {
                conn = None;
            }
        }
    }

    /// One blocking restSearch on a kept-alive HTTP/1.1 connection.
    fn lookup(conn: &mut Option<BufReader<TcpStream>>, misp: SocketAddr, key: &str, ip: &str) -> Result<()> {
        if conn.is_none() {
            let stream = TcpStream::connect(misp)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_nodelay(true)?;
            *conn = Some(BufReader::new(stream));
        }
        let reader = conn.as_mut().expect("connected just above");
        let body = format!(r#"{{"returnFormat":"json","value":"{ip}","type":["ip-src","ip-dst"],"to_ids":1}}"#);
        write!(
            reader.get_mut(),
            "POST /attributes/restSearch HTTP/1.1\r\nHost: misp\r\nAuthorization: {key}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        Ok(())
    }
}

// ---- one run ----------------------------------------------------------------------------------------------

/// Which pipeline receives the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// The `integration` daemon.
    Daemon,
    /// [`naive`]: one blocking lookup per line.
    Naive,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Daemon => "daemon",
            System::Naive => "naive",
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub system: &'static str,
    pub transport: &'static str,
    pub rate: Option<u64>,
    pub duration: Duration,
    pub sent: u64,
    pub send_errors: u64,
    pub send_rate: f64,
    /// Messages the receiver counted (daemon metric, or the baseline's counter).
    pub received: u64,
    /// Lines the naive baseline finished (looked up); the daemon's are `received`.
    pub processed: u64,
    pub loss: u64,
    pub kernel_rcvbuf_errors: u64,
    pub parse_errors: u64,
    pub dropped: u64,
    pub queue_full: u64,
    pub triggered: u64,
    pub lookups: u64,
    pub misp_requests: u64,
    pub fortigate_requests: u64,
    /// FortiGate requests by route (`METHOD /path/{template}`).
    pub fortigate_routes: Vec<(String, u64)>,
    pub blocks: u64,
    pub distinct_triggering: u64,
    pub distinct_indicators: u64,
    pub blocked_indicators: u64,
    /// p50, p99, max block latency in ms (first triggering line → group member).
    pub latency_ms: Option<(f64, f64, f64)>,
    pub daemon_rss_kib: u64,
    pub daemon_hwm_kib: u64,
    /// Daemon CPU use during the run, in cores (1.0 = one core busy).
    pub daemon_cpu: f64,
    /// Set for a [`Flood`] run.
    pub flood: Option<FloodReport>,
}

/// What a [`Flood`] run adds to the report.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    /// Seconds from the last line sent to the last indicator blocked (negative: before the end of the flood);
    /// `None` when not every indicator sent was blocked within the settle time.
    pub last_block_after_end: Option<f64>,
    /// Addresses the daemon shed from its lookup queue (`fortimisp_lookups_shed_total`; 0 where it has none).
    pub shed: u64,
    /// Daemon RSS before the first line, highest until the report (sampled every 50 ms, and VmHWM), and at the
    /// report.
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
}

impl Report {
    pub fn misp_per_distinct_ip(&self) -> f64 {
        self.misp_requests as f64 / self.distinct_triggering.max(1) as f64
    }

    pub fn fortigate_per_block(&self) -> f64 {
        self.fortigate_requests as f64 / self.blocked_indicators.max(1) as f64
    }

    /// Loss in percent of sent.
    pub fn loss_pct(&self) -> f64 {
        100.0 * self.loss as f64 / self.sent.max(1) as f64
    }

    /// One JSON object (for scripts).
    pub fn to_json(&self) -> serde_json::Value {
        let (p50, p99, max) = self.latency_ms.map_or((None, None, None), |(a, b, c)| (Some(a), Some(b), Some(c)));
        serde_json::json!({
            "system": self.system, "transport": self.transport, "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(), "sent": self.sent, "send_errors": self.send_errors,
            "send_rate": self.send_rate, "received": self.received, "processed": self.processed,
            "loss": self.loss, "loss_pct": self.loss_pct(), "kernel_rcvbuf_errors": self.kernel_rcvbuf_errors,
            "parse_errors": self.parse_errors, "dropped": self.dropped, "queue_full": self.queue_full,
            "triggered": self.triggered, "lookups": self.lookups, "misp_requests": self.misp_requests,
            "fortigate_requests": self.fortigate_requests, "fortigate_routes": self.fortigate_routes,
            "blocks": self.blocks,
            "distinct_triggering_ips": self.distinct_triggering, "distinct_indicators": self.distinct_indicators,
            "blocked_indicators": self.blocked_indicators, "block_latency_p50_ms": p50,
            "block_latency_p99_ms": p99, "block_latency_max_ms": max,
            "misp_requests_per_distinct_ip": self.misp_per_distinct_ip(),
            "fortigate_requests_per_block": self.fortigate_per_block(),
            "daemon_rss_mib": self.daemon_rss_kib as f64 / 1024.0, "daemon_hwm_mib": self.daemon_hwm_kib as f64 / 1024.0,
            "daemon_cpu_cores": self.daemon_cpu,
            "flood": self.flood.as_ref().map(|f| serde_json::json!({
                "last_block_after_end_s": f.last_block_after_end,
                "shed": f.shed,
                "rss_start_mib": f.rss_start_kib as f64 / 1024.0,
                "rss_peak_mib": f.rss_peak_kib as f64 / 1024.0,
                "rss_end_mib": f.rss_end_kib as f64 / 1024.0,
            })),
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.rate.map_or("max".to_string(), |r| r.to_string());
        writeln!(
            f,
            "{} over {} at {rate} lines/s for {:.1} s",
            self.system,
            self.transport,
            self.duration.as_secs_f64()
        )?;
        writeln!(
            f,
            "  sent        {:>10}  ({:.0} lines/s, {} send errors)",
            self.sent, self.send_rate, self.send_errors
        )?;
        writeln!(
            f,
            "  received    {:>10}  loss {} ({:.3} %), kernel RcvbufErrors +{}",
            self.received,
            self.loss,
            self.loss_pct(),
            self.kernel_rcvbuf_errors
        )?;
        if self.system == "naive" {
            writeln!(f, "  processed   {:>10}  (lines looked up before the end)", self.processed)?;
        }
        writeln!(
            f,
            "  parsed      parse errors {}, dropped {} (queue_full {}), triggered {}",
            self.parse_errors, self.dropped, self.queue_full, self.triggered
        )?;
        writeln!(
            f,
            "  lookups     {:>10}  MISP requests {} for {} distinct triggering IPs ({:.3}/IP)",
            self.lookups,
            self.misp_requests,
            self.distinct_triggering,
            self.misp_per_distinct_ip()
        )?;
        writeln!(
            f,
            "  blocks      {:>10}  of {} indicators sent; FortiGate requests {} ({:.2}/block)",
            self.blocked_indicators,
            self.distinct_indicators,
            self.fortigate_requests,
            self.fortigate_per_block()
        )?;
        for (route, count) in &self.fortigate_routes {
            writeln!(f, "              {count:>6}  {route}")?;
        }
        match self.latency_ms {
            Some((p50, p99, max)) => writeln!(
                f,
                "  latency     p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (first line → group member)"
            )?,
            None => writeln!(f, "  latency     n/a")?,
        }
        if self.daemon_rss_kib > 0 {
            writeln!(
                f,
                "  daemon      RSS {:.1} MiB (peak {:.1} MiB), CPU {:.2} cores",
                self.daemon_rss_kib as f64 / 1024.0,
                self.daemon_hwm_kib as f64 / 1024.0,
                self.daemon_cpu
            )?;
        }
        if let Some(flood) = &self.flood {
            let last = flood.last_block_after_end.map_or_else(
                || format!("not all blocked ({} of {})", self.blocked_indicators, self.distinct_indicators),
                |s| format!("{s:.2} s"),
            );
            let mib = |kib: u64| kib as f64 / 1024.0;
            writeln!(
                f,
                "  flood       last indicator blocked {last} after the end; shed {}; RSS start {:.1} MiB, peak {:.1} \
                 MiB, end {:.1} MiB",
                flood.shed,
                mib(flood.rss_start_kib),
                mib(flood.rss_peak_kib),
                mib(flood.rss_end_kib)
            )?;
        }
        Ok(())
    }
}

/// A run's settings besides the send plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub plan: SendPlan,
    /// After sending: how long to wait at most for the receiver to drain and the last blocks to land.
    pub settle: Duration,
}

/// Sends `opts.plan` to the lab's daemon and reports (the lab must hold `plan.pool`'s indicators).
pub async fn run_daemon(lab: &Lab, corpus: &Corpus, opts: &RunOptions) -> Result<Report> {
    let plan = opts.plan.clone();
    let before = Scrape::fetch(lab.metrics)?;
    let kernel_before = UdpCounters::read();
    let pid = lab.daemon_pid();
    let cpu_before = cpu_seconds(pid);
    let watcher = Watcher::start(Arc::clone(&lab.fortigate), "MISP_BLOCK".into(), "misp-".into(), plan.pool);
    let rss_start = rss_kib(pid).0;
    let rss_sampler = RssSampler::start(pid);
    let sent = send_blocking(plan.clone(), corpus.clone()).await?;
    let send_done = Instant::now();
    // Drain: until `received` stops moving and every indicator sent is blocked (or the settle time is up).
    let mut last = -1.0;
    let deadline = Instant::now() + opts.settle;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Scrape::fetch(lab.metrics)?;
        let received = now.sum("fortimisp_messages_received_total");
        let blocked = now.get("fortimisp_blocks_total{outcome=\"blocked\"}")
            - before.get("fortimisp_blocks_total{outcome=\"blocked\"}");
        if (received == last && blocked as u64 >= sent.distinct_indicators) || Instant::now() > deadline {
            break;
        }
        last = received;
    }
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = sent.elapsed + send_done.elapsed();
    let blocked_at = watcher.finish();
    let rss_peak = rss_sampler.finish();
    let after = Scrape::fetch(lab.metrics)?;
    let kernel = UdpCounters::read().since(kernel_before);
    let delta = |name: &str| (after.sum(name) - before.sum(name)).max(0.0) as u64;
    let sample = |name: &str| (after.get(name) - before.get(name)).max(0.0) as u64;
    let received = delta("fortimisp_messages_received_total");
    let mut latencies: Vec<f64> = blocked_at
        .iter()
        .filter_map(|(j, at)| {
            let first = sent.first_sent.get(*j as usize).copied().flatten()?;
            Some(at.saturating_duration_since(first).as_secs_f64() * 1000.0)
        })
        .collect();
    let (rss, hwm) = rss_kib(pid);
    let flood = plan.flood.map(|_| FloodReport {
        last_block_after_end: (blocked_at.len() as u64 >= sent.distinct_indicators)
            .then(|| blocked_at.values().max().map(|&at| signed_secs(at, send_done)))
            .flatten(),
        shed: delta("fortimisp_lookups_shed_total"),
        rss_start_kib: rss_start,
        // VmHWM as well: a peak between two samples is not missed (the start-up before it is lower).
        rss_peak_kib: rss_peak.max(hwm),
        rss_end_kib: rss,
    });
    Ok(Report {
        system: System::Daemon.as_str(),
        transport: transport_name(plan.transport),
        rate: plan.rate,
        duration: sent.elapsed,
        sent: sent.lines,
        send_errors: sent.send_errors,
        send_rate: sent.lines as f64 / sent.elapsed.as_secs_f64(),
        received,
        processed: received,
        loss: sent.lines.saturating_sub(received),
        kernel_rcvbuf_errors: kernel.rcvbuf_errors,
        parse_errors: delta("fortimisp_parse_errors_total"),
        dropped: delta("fortimisp_messages_dropped_total"),
        queue_full: sample("fortimisp_candidates_total{outcome=\"queue_full\"}")
            + sample("fortimisp_messages_dropped_total{reason=\"queue_full\"}"),
        triggered: delta("fortimisp_lines_triggered_total"),
        lookups: delta("fortimisp_lookups_total"),
        misp_requests: lab.misp.total_requests(),
        fortigate_requests: lab.fortigate.total_requests(),
        fortigate_routes: lab.fortigate.route_counts().into_iter().collect(),
        blocks: sample("fortimisp_blocks_total{outcome=\"blocked\"}"),
        distinct_triggering: sent.distinct_triggering,
        distinct_indicators: sent.distinct_indicators,
        blocked_indicators: latencies.len() as u64,
        latency_ms: percentiles(&mut latencies),
        daemon_rss_kib: rss,
        daemon_hwm_kib: hwm,
        daemon_cpu: cpu / wall.as_secs_f64(),
        flood,
    })
}

/// Sends `opts.plan` to the naive baseline, which asks `misp` (the lab's emulator) once per line.
pub async fn run_naive(misp: &MispEmulator, corpus: &Corpus, opts: &RunOptions, recv_buffer: usize) -> Result<Report> {
    let baseline = naive::Naive::start(misp.addr(), misp.key(), recv_buffer)?;
    let mut plan = opts.plan.clone();
    plan.target = baseline.addr;
    plan.transport = Transport::Udp;
    let kernel_before = UdpCounters::read();
    misp.reset_records();
    let sent = send_blocking(plan.clone(), corpus.clone()).await?;
    // What the baseline has not taken off the socket by now is backlog it would need minutes for; a short grace
    // lets it finish the line in hand.
    tokio::time::sleep(Duration::from_millis(500).min(opts.settle)).await;
    let kernel = UdpCounters::read().since(kernel_before);
    let (received, processed) = baseline.stop();
    Ok(Report {
        system: System::Naive.as_str(),
        transport: "udp",
        rate: plan.rate,
        duration: sent.elapsed,
        sent: sent.lines,
        send_errors: sent.send_errors,
        send_rate: sent.lines as f64 / sent.elapsed.as_secs_f64(),
        received,
        processed,
        loss: sent.lines.saturating_sub(received),
        kernel_rcvbuf_errors: kernel.rcvbuf_errors,
        triggered: sent.triggering,
        lookups: processed,
        misp_requests: misp.total_requests(),
        distinct_triggering: sent.distinct_triggering,
        distinct_indicators: sent.distinct_indicators,
        ..Report::default()
    })
}

async fn send_blocking(plan: SendPlan, corpus: Corpus) -> Result<Sent> {
    tokio::task::spawn_blocking(move || send(&plan, &corpus, &AtomicBool::new(false)))
        .await
        .context("the sender thread panicked")?
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}
