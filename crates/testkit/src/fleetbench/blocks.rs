//! Many new blocks fanned out: `blocks` triggering lines, each from a new indicator address, sent at `send_rate`
//! lines per second; the part ends when the daemon counts every (target, block) as blocked with nothing pending
//! (`fortimisp_blocks_total{outcome="blocked"}`, `fortimisp_pending_actions`). The total time runs from the first
//! line to the last write any emulator received; each target's request rate comes from its request log and is
//! set against its `requests_per_second`, and the time floor that rate implies is requests per target ÷ rps.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use fortimisp_core::config::Scope;
use serde_json::{json, Value};

use super::lab::{indicator, FleetLab};
use super::requests::{spread, TargetRequests};

/// What to send.
#[derive(Debug, Clone)]
pub struct BlocksOptions {
    /// New blocks (lines, each from a new indicator address).
    pub blocks: u32,
    /// Lines per second.
    pub send_rate: u32,
    /// The first indicator used (the latency part's come before).
    pub first: u32,
}

/// The blocks part's figures.
#[derive(Debug, Clone)]
pub struct BlocksFigures {
    pub blocks: u32,
    /// Each target's `requests_per_second`.
    pub rps: u32,
    /// Seconds spent sending the lines.
    pub send_s: f64,
    /// First line → the last write on any target, seconds.
    pub total_s: f64,
    /// First line → the daemon reporting every block done, seconds (polled every 250 ms).
    pub done_s: f64,
    /// Each target's requests in this part.
    pub requests: Vec<TargetRequests>,
    /// The daemon's user + system CPU seconds from the first line to the end of the part.
    pub daemon_cpu_s: f64,
    /// The most `misp-` members a target holds short of what it should (0: every target has every block).
    pub missing_max: usize,
}

impl BlocksFigures {
    /// The slowest target's floor: its requests ÷ rps, seconds.
    pub fn floor_s(&self) -> f64 {
        let most = self.requests.iter().map(|r| r.requests).max().unwrap_or(0);
        most as f64 / f64::from(self.rps.max(1))
    }

    pub fn to_json(&self) -> Value {
        let (min_rate, mean_rate, max_rate) = spread(&self.requests, TargetRequests::mean_rate);
        let most_in_a_second = self.requests.iter().map(|r| r.max_per_second).max().unwrap_or(0);
        json!({
            "blocks": self.blocks, "rps": self.rps, "send_s": self.send_s, "total_s": self.total_s,
            "done_s": self.done_s, "floor_s": self.floor_s(), "total_over_floor": self.total_s / self.floor_s(),
            "mean_rate_min": min_rate, "mean_rate_mean": mean_rate, "mean_rate_max": max_rate,
            "max_requests_in_one_second": most_in_a_second, "missing_max": self.missing_max,
            "daemon_cpu_s": self.daemon_cpu_s,
            "targets": self.requests.iter().map(TargetRequests::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Sends indicators `first..first + blocks` and waits until every target made its blocks, `within` at most.
/// `before` is how many blocks each target already holds (earlier parts).
pub async fn measure(
    lab: &mut FleetLab,
    scope: Scope,
    rps: u32,
    opts: &BlocksOptions,
    before: &[usize],
    within: Duration,
) -> Result<BlocksFigures> {
    let n = lab.fleet.targets.len();
    let mut expected = vec![0u32; n];
    for k in 0..opts.blocks {
        for i in lab.targets_of(scope, k) {
            expected[i] += 1;
        }
    }
    let want: f64 = before.iter().map(|b| *b as f64).sum::<f64>() + expected.iter().map(|e| f64::from(*e)).sum::<f64>();
    let cpu_before = lab.cpu_seconds();
    let start = Instant::now();
    // 100 pacing steps a second.
    let per_step = (opts.send_rate / 100).max(1);
    for k in 0..opts.blocks {
        if k % per_step == 0 {
            tokio::time::sleep_until((start + Duration::from_millis(10) * (k / per_step)).into()).await;
        }
        let device = lab.device_of(scope, k).clone();
        lab.send(&device, indicator(opts.first + k))?;
    }
    let send_s = start.elapsed().as_secs_f64();
    let deadline = start + within;
    let done_s = loop {
        let blocked = lab.metric("fortimisp_blocks_total{outcome=\"blocked\"}").await;
        if blocked >= want && lab.metric("fortimisp_pending_actions").await == 0.0 {
            break start.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            bail!("{blocked} of {want} blocks after {within:?}; daemon log:\n{}", lab.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let daemon_cpu_s = lab.cpu_seconds() - cpu_before;
    let mut requests = Vec::new();
    let mut missing_max = 0;
    for (i, target) in lab.fleet.targets.iter().enumerate() {
        requests.push(TargetRequests::from_log(&target.name, expected[i], &target.fortigate.requests(), start));
        let should = before[i] + expected[i] as usize;
        missing_max = missing_max.max(should.saturating_sub(lab.blocked_on(i)));
    }
    let last_write = requests.iter().filter_map(|r| r.last_write).max();
    let total_s = last_write.map_or(done_s, |t| t.duration_since(start).as_secs_f64());
    Ok(BlocksFigures { blocks: opts.blocks, rps, send_s, total_s, done_s, requests, daemon_cpu_s, missing_max })
}
