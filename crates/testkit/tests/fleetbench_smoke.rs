//! The fleet benchmark at a tiny size: 3 targets, 3 latency lines and 20 blocks against the real `integration`
//! binary, fleet scope, no added latency. Checks the report's structure and that every target got every block
//! (each line reached every target, each target's requests cover its blocks, no target misses one); benchmarks
//! are not tests, so nothing here asserts on times or rates.
//!
//! The daemon binary is the one `cargo test --workspace` builds into the target directory; `FORTIMISP_BIN_DIR`
//! overrides where it is looked for, as in the end-to-end tests.

use std::time::Duration;

use fortimisp_core::config::Scope;
use fortimisp_testkit::fleetbench::{self, latency::LatencyOptions, Options};
use fortimisp_testkit::harness::Binaries;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetbench_blocks_everything_on_every_target() {
    let bins = Binaries::locate().expect("the test knows its own path");
    bins.require(&["integration"]).unwrap_or_else(|e| panic!("{e:#}; run the tests with `cargo test --workspace`"));
    let opts = Options {
        daemon: bins.path("integration"),
        targets: 3,
        baseline_targets: Some(1),
        scope: Scope::Fleet,
        fortigate_latency: Duration::ZERO,
        rps: 200,
        max_blocks_per_minute: 100_000,
        latency: LatencyOptions { lines: 3, gap: Duration::from_millis(50), settle: Duration::from_secs(30) },
        blocks: 20,
        send_rate: 200,
    };
    let report = fleetbench::run(&opts).await.unwrap_or_else(|e| panic!("fleetbench failed: {e:#}"));
    println!("{report}");
    let json = report.to_json();
    assert!(json["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{json}");
    assert_eq!(json["options"]["scope"], "fleet", "{json}");

    for (fleet, targets) in [(&report.fleet, 3), (report.baseline.as_ref().expect("a baseline ran"), 1)] {
        let latency = &fleet.latency;
        assert_eq!(fleet.targets, targets, "{json}");
        assert_eq!(latency.complete, 3, "every line reached all {targets} targets: {json}");
        assert_eq!((latency.to_last.n, latency.to_first.n), (3, 3), "{json}");
        assert!(latency.to_first.max <= latency.to_last.max, "the first target is never later than the last");
        assert_eq!(latency.requests.len(), targets, "{json}");
        for t in &latency.requests {
            assert_eq!(t.blocks, 3, "{json}");
            assert!(t.writes >= 6, "{}: an object and a member per block: {json}", t.name);
        }
        assert!(fleet.rss_after_latency_kib > 0 && fleet.hwm_kib >= fleet.rss_end_kib, "{json}");
    }
    assert!(report.baseline.as_ref().is_some_and(|b| b.blocks.is_none()), "the baseline runs the latency part only");

    let blocks = report.fleet.blocks.as_ref().expect("the blocks part ran");
    assert_eq!(blocks.missing_max, 0, "every target holds every block: {json}");
    assert_eq!(blocks.requests.len(), 3, "{json}");
    for t in &blocks.requests {
        assert_eq!(t.blocks, 20, "{json}");
        assert!(t.writes >= 40, "{}: an object and a member per block: {json}", t.name);
        assert!(t.max_per_second > 0 && t.last_write.is_some(), "{json}");
    }
    let fleet = &json["fleet"];
    for key in ["total_s", "floor_s", "total_over_floor", "mean_rate_max", "max_requests_in_one_second"] {
        assert!(fleet["blocks"][key].is_number(), "fleet.blocks.{key}: {json}");
    }
    assert!(fleet["requests_per_block_per_target"]["mean"].as_f64().unwrap_or(0.0) >= 2.0, "{json}");
    let table = report.to_string();
    for heading in ["== Line to block", "line → last target", "== 20 new blocks to 3 targets", "total ÷ floor"] {
        assert!(table.contains(heading), "{heading:?} in the table:\n{table}");
    }
}
