//! The threat-feed benchmark runs, at small sizes: every part against the real `integration` binary (and the
//! Python baseline when `python3` is there; a `SKIP` line on stderr otherwise). Checks only that each part
//! produced figures (fetches answered, every line's entry seen, memory read); benchmarks are not tests, so nothing
//! here asserts on rates, latencies or sizes.
//!
//! The daemon binary is the one `cargo test --workspace` builds into the target directory; `FORTIMISP_BIN_DIR`
//! overrides where it is looked for, as in the end-to-end tests.

use std::time::Duration;

use fortimisp_testkit::feedbench::baseline::BaselineCommand;
use fortimisp_testkit::feedbench::latency::LatencyOptions;
use fortimisp_testkit::feedbench::memory::MemoryOptions;
use fortimisp_testkit::feedbench::serving::ServingOptions;
use fortimisp_testkit::feedbench::{self, Options, ServingRun};
use fortimisp_testkit::harness::Binaries;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedbench_measures_every_part() {
    let bins = Binaries::locate().expect("the test knows its own path");
    bins.require(&["integration"]).unwrap_or_else(|e| panic!("{e:#}; run the tests with `cargo test --workspace`"));
    let baseline = BaselineCommand::default_in_repo();
    let baseline = if baseline.available() {
        Some(baseline)
    } else {
        eprintln!("SKIP the serving baseline: {} does not run", baseline.python.display());
        None
    };
    let with_baseline = baseline.is_some();
    let opts = Options {
        daemon: bins.path("integration"),
        serving: Some(ServingRun {
            entries: 2_000,
            options: ServingOptions { fetches: 3, duration: Duration::from_millis(300), clients: vec![2] },
            baseline,
        }),
        latency: Some(LatencyOptions {
            lines: 3,
            gap: Duration::from_millis(50),
            settle: Duration::from_secs(20),
            misp_latency: Duration::ZERO,
            fortigate_latency: Duration::ZERO,
        }),
        memory: Some(MemoryOptions {
            indicators: 3_000,
            max_entries: 1_000,
            max_feeds: 2,
            settle: Duration::from_millis(100),
        }),
    };
    let report = feedbench::run(&opts).await.unwrap_or_else(|e| panic!("feedbench failed: {e:#}"));
    println!("{report}");
    let json = report.to_json();
    assert!(json["machine"]["cpus"].as_u64().unwrap_or(0) > 0, "{json}");

    let serving = report.serving.as_ref().expect("the serving part ran");
    assert_eq!(serving.fortimisp.entries, Some(2_000), "the feed holds every indicator: {json}");
    assert_eq!(serving.fortimisp.total_ms.n, 3, "every sequential fetch was timed: {json}");
    assert_eq!(serving.fortimisp.rates.len(), 2, "a fetch rate and a 304 rate: {json}");
    for rate in &serving.fortimisp.rates {
        assert!(rate.answers > 0, "fortimisp answered nothing: {json}");
        assert_eq!(rate.errors, 0, "fortimisp failed fetches: {json}");
    }
    match &serving.baseline {
        Some(base) => {
            assert_eq!(base.body_bytes, serving.fortimisp.body_bytes, "the baseline serves the same bytes");
            assert!(base.rates.iter().all(|r| r.answers > 0 && r.errors == 0), "the baseline's rates: {json}");
        }
        None => assert!(!with_baseline, "the baseline was asked for: {json}"),
    }

    let latency = report.latency.as_ref().expect("the latency part ran");
    for figures in [&latency.address_group, &latency.push, &latency.pull] {
        assert_eq!(figures.seen, 3, "{}: every line's entry showed: {json}", figures.system.as_str());
    }

    let memory = report.memory.as_ref().expect("the memory part ran");
    assert_eq!(memory.address_group.mirror_indicators, 3_000, "{json}");
    assert_eq!(memory.feeds.served_entries, 2_000, "two feeds of 1 000 (the cap): {json}");
    assert!(memory.address_group.rss_kib > 0 && memory.feeds.rss_kib > 0, "{json}");
}
