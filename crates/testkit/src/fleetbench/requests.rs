//! What one target's emulator was asked during a part of the run, from its request log: requests and writes per
//! block, and the request rate against the target's configured `requests_per_second`: the mean between its first
//! and its last request, and the most requests that arrived within any one second. Pure functions of the log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fortigate::RecordedRequest;

/// One target's requests in one part.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRequests {
    pub name: String,
    /// Blocks the target was expected to make in the part.
    pub blocks: u32,
    pub requests: u64,
    /// POST, PUT and DELETE requests.
    pub writes: u64,
    /// Seconds from the first request to the last.
    pub span_s: f64,
    /// Most requests arriving within any one second.
    pub max_per_second: usize,
    /// When the last write arrived (`None`: no write).
    pub last_write: Option<Instant>,
}

impl TargetRequests {
    /// From the requests that arrived at or after `since` (a log may hold an earlier part's).
    pub fn from_log(name: &str, blocks: u32, log: &[RecordedRequest], since: Instant) -> TargetRequests {
        let mut times: Vec<Instant> = Vec::new();
        let mut writes = 0;
        let mut last_write = None;
        for r in log.iter().filter(|r| r.at >= since) {
            times.push(r.at);
            if matches!(r.method.as_str(), "POST" | "PUT" | "DELETE") {
                writes += 1;
                last_write = last_write.max(Some(r.at));
            }
        }
        times.sort();
        let span_s = match (times.first(), times.last()) {
            (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
            _ => 0.0,
        };
        TargetRequests {
            name: name.to_string(),
            blocks,
            requests: times.len() as u64,
            writes,
            span_s,
            max_per_second: max_in_window(&times, Duration::from_secs(1)),
            last_write,
        }
    }

    pub fn per_block(&self) -> f64 {
        if self.blocks == 0 {
            0.0
        } else {
            self.requests as f64 / f64::from(self.blocks)
        }
    }

    pub fn writes_per_block(&self) -> f64 {
        if self.blocks == 0 {
            0.0
        } else {
            self.writes as f64 / f64::from(self.blocks)
        }
    }

    /// Requests per second between the first request and the last (the first opens the span: n − 1 intervals).
    pub fn mean_rate(&self) -> f64 {
        if self.span_s > 0.0 {
            (self.requests.saturating_sub(1)) as f64 / self.span_s
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.name, "blocks": self.blocks, "requests": self.requests, "writes": self.writes,
            "requests_per_block": self.per_block(), "writes_per_block": self.writes_per_block(),
            "span_s": self.span_s, "mean_rate": self.mean_rate(), "max_per_second": self.max_per_second,
        })
    }
}

/// The most of `times` (sorted) within any half-open window `[t, t + window)`.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while t.duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// min / mean / max of `f` over the targets (zeros for none).
pub fn spread(targets: &[TargetRequests], f: impl Fn(&TargetRequests) -> f64) -> (f64, f64, f64) {
    if targets.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let values: Vec<f64> = targets.iter().map(f).collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, values.iter().sum::<f64>() / values.len() as f64, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, at: Instant) -> RecordedRequest {
        RecordedRequest {
            method: method.into(),
            path: "/api/v2/cmdb/firewall/address".into(),
            query: None,
            route: format!("{method} /api/v2/cmdb/firewall/address"),
            body: String::new(),
            seq: 0,
            at,
            status: Some(200),
            token: None,
        }
    }

    #[test]
    fn windows_count_what_falls_within_one_second() {
        let t0 = Instant::now();
        let ms = |v: &[u64]| v.iter().map(|m| t0 + Duration::from_millis(*m)).collect::<Vec<_>>();
        let cases: [(&[u64], usize); 5] =
            [(&[], 0), (&[0], 1), (&[0, 999], 2), (&[0, 1000], 1), (&[0, 100, 200, 1100, 1150, 1190, 1199], 5)];
        for (times, want) in cases {
            assert_eq!(max_in_window(&ms(times), Duration::from_secs(1)), want, "{times:?}");
        }
    }

    /// 2 blocks; a GET, then two writes per block, 20 ms apart (50 rps); one request of an earlier part left out.
    #[test]
    fn a_log_gives_requests_per_block_and_the_rate() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = vec![request("GET", t0 - Duration::from_secs(1)), request("GET", at(0))];
        log.extend((1..=4).map(|i| request("POST", at(20 * i))));
        let r = TargetRequests::from_log("a", 2, &log, t0);
        assert_eq!((r.requests, r.writes), (5, 4));
        assert_eq!((r.per_block(), r.writes_per_block()), (2.5, 2.0));
        assert!((r.mean_rate() - 50.0).abs() < 1e-6, "{}", r.mean_rate());
        assert_eq!(r.max_per_second, 5);
        assert_eq!(r.last_write, Some(at(80)));
        assert_eq!(
            spread(&[r.clone(), TargetRequests { blocks: 1, ..r }], TargetRequests::per_block),
            (2.5, 3.75, 5.0)
        );
    }
}
