//! The load generator runs: emulators in this process, the real `integration` binary as a child, three seconds of
//! corpus lines over UDP. Checks only that traffic flowed (sent > 0, the daemon received > 0); benchmarks are not
//! tests, so nothing here asserts on rates or latency.
//!
//! The daemon binary is the one `cargo test --workspace` builds into the target directory (the `integration`
//! package has integration tests of its own, so cargo builds its binary first); `FORTIMISP_BIN_DIR` overrides
//! where it is looked for, as in the end-to-end tests.

use std::path::PathBuf;
use std::time::Duration;

use fortimisp_testkit::harness::Binaries;
use fortimisp_testkit::loadgen::{self, Corpus, Lab, LabOptions, Pool, RunOptions, SendPlan, Transport};

fn daemon_bin() -> PathBuf {
    let bins = Binaries::locate().expect("the test knows its own path");
    bins.require(&["integration"]).unwrap_or_else(|e| panic!("{e:#}; run the tests with `cargo test --workspace`"));
    bins.path("integration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_drives_the_daemon() {
    let corpus = Corpus::load(&Corpus::default_dir()).expect("the corpus loads");
    assert!(corpus.triggering() > 0, "the corpus has triggering lines");
    let pool = Pool::new(1_000, 0.01, loadgen::FIRST_INDICATOR);
    let mut opts = LabOptions::new(daemon_bin());
    opts.indicators = u64::from(pool.indicators());
    opts.fortigate_rps = 100;
    let lab = Lab::start(&opts).await.expect("the lab starts");
    let plan = SendPlan {
        target: lab.udp,
        transport: Transport::Udp,
        rate: Some(2_000),
        duration: Duration::from_secs(3),
        pool,
        ramp: Duration::from_secs(1),
        flood: None,
    };
    let report = loadgen::run_daemon(&lab, &corpus, &RunOptions { plan, settle: Duration::from_secs(5) })
        .await
        .unwrap_or_else(|error| panic!("loadgen run failed: {error:#}\ndaemon log:\n{}", lab.log_text()));
    println!("{report}");
    assert!(report.sent > 0, "loadgen sent nothing: {report}");
    assert!(report.received > 0, "the daemon received nothing: {report}\ndaemon log:\n{}", lab.log_text());
}
