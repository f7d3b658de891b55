//! Resident memory of an `IndicatorSet` with 10 k, 100 k and 1 M indicators (criterion cannot measure memory).
//!
//! Each size is built in a fresh child process (this same executable, re-run with `--size N`), so allocator
//! reuse from a previous size cannot hide or inflate anything. The figure is VmRSS after building minus VmRSS
//! before, read from /proc/self/status; it also prints the build time (what a full sync spends inserting).
//!
//! Run: `cargo bench -p fortimisp-core --bench indicator_memory`.

use std::time::Instant;

#[path = "support/indicator_data.rs"]
mod indicator_data;

fn vm(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn measure(n: u64) {
    let before = vm("VmRSS:");
    let start = Instant::now();
    let (set, probes) = indicator_data::build(n, 16);
    let built = start.elapsed();
    let after = vm("VmRSS:");
    let hwm = vm("VmHWM:");
    std::hint::black_box(set.lookup(probes[0]));
    println!(
        "| {n:>9} | {:>9} | {:>8.1} | {:>8.1} | {:>8.1} | {:>7.0} |",
        set.len(),
        (after - before) as f64 / 1024.0,
        hwm as f64 / 1024.0,
        built.as_secs_f64() * 1000.0,
        (after - before) as f64 * 1024.0 / n as f64,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--size") {
        let n = args[i + 1].parse().expect("--size takes a number");
        measure(n);
        return;
    }
    // `cargo bench --no-run` builds this; `cargo test --benches` would run it with `--test`: do nothing then.
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    println!("| indicators | entries | RSS Δ MiB | peak RSS MiB | build ms | bytes/indicator |");
    println!("|-----------:|--------:|----------:|-------------:|---------:|----------------:|");
    let exe = std::env::current_exe().expect("the process knows its own path");
    for n in [10_000u64, 100_000, 1_000_000] {
        let status = std::process::Command::new(&exe).args(["--size", &n.to_string()]).status().expect("re-run self");
        assert!(status.success(), "size {n} failed");
    }
}
