//! What the benchmark tools ([`crate::feedbench`], [`crate::fleetbench`]) report alike: where and when a run
//! happened ([`Machine`]), nearest-rank percentile summaries ([`Summary`]), and the number formats of their
//! tables (milliseconds, MiB, ratios against a baseline).

use serde_json::{json, Value};

use crate::loadgen::percentiles;

/// Where and when it ran.
#[derive(Debug, Clone)]
pub struct Machine {
    pub started: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// `/proc/loadavg`'s three averages, at the start and at the end.
    pub load_start: String,
    pub load_end: String,
    pub seconds: f64,
}

impl Machine {
    /// This machine, now: the start of a run ([`Machine::finish`] ends it).
    pub fn now() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| Some(l.strip_prefix("model name")?.trim_start_matches([' ', '\t', ':']).to_string()))
            })
            .unwrap_or_default();
        Machine {
            started: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            load_start: load_average(),
            load_end: String::new(),
            seconds: 0.0,
        }
    }

    /// Records the end of the run, `seconds` after its start.
    pub fn finish(&mut self, seconds: f64) {
        self.load_end = load_average();
        self.seconds = seconds;
    }

    pub fn to_json(&self) -> Value {
        json!({
            "started": self.started, "cpus": self.cpus, "cpu_model": self.cpu_model, "kernel": self.kernel,
            "load_start": self.load_start, "load_end": self.load_end, "seconds": self.seconds,
        })
    }

    /// The two header lines of a table: `<tool> <start>: N CPUs (...)`, and the load averages.
    pub fn header(&self, tool: &str) -> String {
        format!(
            "{tool} {}: {} CPUs ({}), Linux {}\nload average {} at the start, {} at the end; {:.0} s\n",
            self.started, self.cpus, self.cpu_model, self.kernel, self.load_start, self.load_end, self.seconds
        )
    }
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// p50 / p99 / max (nearest rank) of a set of milliseconds; all zero when `n` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &mut [f64]) -> Summary {
        match percentiles(values) {
            Some((p50, p99, max)) => Summary { n: values.len(), p50, p99, max },
            None => Summary::default(),
        }
    }

    /// `{"n", "p50_ms", "p99_ms", "max_ms"}`, or null when empty.
    pub fn to_json(self) -> Value {
        if self.n == 0 {
            return Value::Null;
        }
        json!({"n": self.n, "p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }

    /// `p50 / p99` in ms, or `n/a`.
    pub fn p50_p99(self) -> String {
        if self.n == 0 {
            "n/a".into()
        } else {
            format!("{} / {}", fmt_ms(self.p50), fmt_ms(self.p99))
        }
    }
}

/// Milliseconds with 3 significant digits or so.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// KiB (as /proc reports them) in MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `a / b`, or `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// `1.23×`, `45×`, or `—` for no ratio.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".into(), |r| if r >= 10.0 { format!("{r:.0}×") } else { format!("{r:.2}×") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_ratios() {
        let cases: [(&[f64], Summary); 3] = [
            (&[], Summary::default()),
            (&[5.0], Summary { n: 1, p50: 5.0, p99: 5.0, max: 5.0 }),
            (&[4.0, 1.0, 3.0, 2.0], Summary { n: 4, p50: 2.0, p99: 4.0, max: 4.0 }),
        ];
        for (values, want) in cases {
            assert_eq!(Summary::of(&mut values.to_vec()), want, "{values:?}");
        }
        assert_eq!(fmt_ratio(ratio(1.0, 0.0)), "—");
        assert_eq!(fmt_ratio(ratio(3.0, 2.0)), "1.50×");
        assert_eq!(fmt_ratio(ratio(50.0, 2.0)), "25×");
        assert_eq!(Summary::default().p50_p99(), "n/a");
    }
}
