//! Line to the last target: for each of `lines` triggering lines (`gap` apart, each from a new indicator
//! address), the time from sending it to the moment the last target that should block it holds `misp-<ip>` in a
//! block group, and to the first such target. A probe thread polls every emulator's block groups every
//! [`PROBE_EVERY`] (the emulators' state, not the daemon's `fortimisp_block_latency_seconds` histograms, so the
//! figure ends where the FortiGate has the block). Then each target's requests per block, from its request log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use fortimisp_core::config::Scope;
use serde_json::{json, Value};

use super::lab::{indicator, FleetLab, BLOCK_GROUP, PREFIX};
use super::requests::TargetRequests;
use crate::bench::Summary;
use crate::fleet::Fleet;
use crate::loadgen::block_groups;

/// How often the probe looks at every emulator.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);

/// What to send.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Triggering lines, one new indicator each.
    pub lines: u32,
    /// Time between two lines.
    pub gap: Duration,
    /// After the last line, how long to wait at most for its blocks.
    pub settle: Duration,
}

/// The latency part's figures for one fleet.
#[derive(Debug, Clone)]
pub struct LatencyFigures {
    pub lines: u32,
    /// Lines that reached every target they should before the settle time ran out.
    pub complete: u32,
    /// Line → the first target holding its block, ms (complete lines).
    pub to_first: Summary,
    /// Line → the last target holding its block, ms (complete lines).
    pub to_last: Summary,
    /// The first line's time to the last target, ms: it pays for the daemon's first reads of every FortiGate.
    pub first_line_ms: Option<f64>,
    /// The highest time to the last target of the other lines, ms.
    pub others_max_ms: Option<f64>,
    /// Each target's requests while the lines were blocked.
    pub requests: Vec<TargetRequests>,
}

impl LatencyFigures {
    pub fn to_json(&self) -> Value {
        json!({
            "lines": self.lines, "complete": self.complete, "to_first_target": self.to_first.to_json(),
            "to_last_target": self.to_last.to_json(), "first_line_to_last_ms": self.first_line_ms,
            "others_max_to_last_ms": self.others_max_ms,
            "targets": self.requests.iter().map(TargetRequests::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Sends indicators `0..lines` and measures.
pub async fn measure(lab: &mut FleetLab, scope: Scope, opts: &LatencyOptions) -> Result<LatencyFigures> {
    let n = lab.fleet.targets.len();
    let expected: Vec<Vec<usize>> = (0..opts.lines).map(|k| lab.targets_of(scope, k)).collect();
    let wanted = expected.iter().map(Vec::len).sum();
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (fleet, stop, lines) = (Arc::clone(&lab.fleet), Arc::clone(&stop), opts.lines);
        std::thread::spawn(move || probe(&fleet, lines, wanted, &stop))
    };
    let since = Instant::now();
    let mut sent = Vec::new();
    for k in 0..opts.lines {
        tokio::time::sleep_until((since + opts.gap * k).into()).await;
        let device = lab.device_of(scope, k).clone();
        sent.push(Instant::now());
        lab.send(&device, indicator(k))?;
    }
    let deadline = Instant::now() + opts.settle;
    while !probe.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = probe.join().unwrap_or_default();

    let (mut to_first, mut to_last, mut complete) = (Vec::new(), Vec::new(), 0);
    let (mut first_line_ms, mut others_max_ms) = (None, None::<f64>);
    for (k, targets) in expected.iter().enumerate() {
        let times: Option<Vec<Instant>> = targets.iter().map(|i| seen.get(&(*i, k as u32)).copied()).collect();
        let Some(times) = times.filter(|t| !t.is_empty()) else { continue };
        let ms = |t: &Instant| t.saturating_duration_since(sent[k]).as_secs_f64() * 1000.0;
        let last = times.iter().map(ms).fold(0.0, f64::max);
        to_first.push(times.iter().map(ms).fold(f64::INFINITY, f64::min));
        to_last.push(last);
        complete += 1;
        if k == 0 {
            first_line_ms = Some(last);
        } else {
            others_max_ms = Some(others_max_ms.map_or(last, |m| m.max(last)));
        }
    }
    let requests = (0..n)
        .map(|i| {
            let target = &lab.fleet.targets[i];
            let blocks = expected.iter().filter(|t| t.contains(&i)).count() as u32;
            TargetRequests::from_log(&target.name, blocks, &target.fortigate.requests(), since)
        })
        .collect();
    Ok(LatencyFigures {
        lines: opts.lines,
        complete,
        to_first: Summary::of(&mut to_first),
        to_last: Summary::of(&mut to_last),
        first_line_ms,
        others_max_ms,
        requests,
    })
}

/// Polls every target's block groups until `wanted` (target, line) blocks showed or `stop`; returns when each
/// showed. Line `k` is indicator `k`.
fn probe(fleet: &Fleet, lines: u32, wanted: usize, stop: &AtomicBool) -> HashMap<(usize, u32), Instant> {
    let index: HashMap<IpAddr, u32> = (0..lines).map(|k| (indicator(k), k)).collect();
    let mut seen = HashMap::new();
    let mut sizes: HashMap<(usize, String), usize> = HashMap::new();
    while seen.len() < wanted && !stop.load(Ordering::Relaxed) {
        for (i, target) in fleet.targets.iter().enumerate() {
            let now = Instant::now();
            for group in block_groups(&target.fortigate, BLOCK_GROUP) {
                let members = target.fortigate.members(&group).unwrap_or_default();
                let size = sizes.entry((i, group)).or_default();
                if *size == members.len() {
                    continue;
                }
                *size = members.len();
                for member in members {
                    let ip = member.strip_prefix(PREFIX).and_then(|s| s.parse::<IpAddr>().ok());
                    if let Some(k) = ip.and_then(|ip| index.get(&ip)) {
                        seen.entry((i, *k)).or_insert(now);
                    }
                }
            }
        }
        std::thread::sleep(PROBE_EVERY);
    }
    seen
}
