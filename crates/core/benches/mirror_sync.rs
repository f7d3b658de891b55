//! Mirror full-sync time: `view::full` (what the integration daemon's mirror runs at start and every
//! `full_sync_interval`) against the MISP emulator holding 1 M synthetic `ip-dst` attributes, over loopback HTTP,
//! with the daemon's client settings (pages of 5000). Prints the wall time, pages/s, attributes/s, and the
//! resident memory the finished set added.
//!
//! The emulator runs in this process on its own runtime thread; its share (filtering 1 M attributes per page
//! and serialising JSON) is included in the time, so the figure is an upper bound for the client side.
//!
//! Run: `cargo bench -p fortimisp-core --bench mirror_sync` (`-- N` for another size).

use std::net::Ipv4Addr;
use std::time::Instant;

use fortimisp_core::config::RawConfig;
use fortimisp_core::{clients, view};
use fortimisp_testkit::misp::MispEmulator;

fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn config(misp_url: &str, key: &str) -> fortimisp_core::config::Config {
    let text = format!(
        r#"[misp]
url = "{misp_url}"
api_key = "{key}"
timeout = "120s"

[fortigate]
url = "http://127.0.0.1:9"
api_key = "unused-token"

[[trigger]]
type = "traffic"
"#
    );
    RawConfig::parse(&text).expect("bench config parses").validate(&|_| None).expect("bench config is valid")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    // The emulator gets its own runtime (a second thread), as a separate server would.
    let server = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let emulator = server.block_on(MispEmulator::start()).expect("emulator starts");
    let seeded = Instant::now();
    emulator.add_synthetic(n, Ipv4Addr::new(11, 0, 0, 1), 1_700_000_000);
    eprintln!("mirror_sync: seeded {n} attributes in {:.1} s", seeded.elapsed().as_secs_f64());
    let cfg = config(emulator.url(), &emulator.key());
    let client = clients::misp(&cfg.misp).expect("client builds");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = rss_kib();
    let start = Instant::now();
    let (set, max_ts) = runtime.block_on(view::full(&client, &cfg.misp)).expect("full sync succeeds");
    let took = start.elapsed();
    let added = rss_kib().saturating_sub(before);
    let pages = emulator.request_count("attributes/restSearch").max(n.div_ceil(5000));
    println!("| attributes | indicators | pages | full sync s | attributes/s | set RSS Δ MiB |");
    println!("|-----------:|-----------:|------:|------------:|-------------:|--------------:|");
    println!(
        "| {n:>10} | {:>10} | {pages:>5} | {:>11.2} | {:>12.0} | {:>13.1} |",
        set.len(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        added as f64 / 1024.0
    );
    assert_eq!(set.len() as u64, n, "every attribute is in the set (max timestamp {max_ts})");
}
