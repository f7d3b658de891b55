//! Parser throughput over the shared corpus (`tests/data/corpus`), against a baseline in the same run: the
//! regex-per-field approach of the Python service fortimisp replaces (one regex per field of interest, each
//! searched over the whole line).
//!
//! Run: `cargo bench -p fortimisp-core --bench parser`. Figures go to BENCHMARKS.md ("Parser").

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use fortimisp_core::syslog::{parse, Format};
use regex::Regex;

/// Fields the daemon reads on every line (the trigger keys plus the addresses and device identity).
const FIELDS: [&str; 13] = [
    "srcip", "dstip", "srcport", "dstport", "proto", "policyid", "action", "type", "subtype", "srcintf", "devname",
    "devid", "vd",
];

fn corpus_lines() -> Vec<Vec<u8>> {
    fortimisp_testkit::corpus::lines()
}

/// What the daemon does with a line: parse, then read the hot fields.
fn ours(lines: &[Vec<u8>]) -> usize {
    let mut hits = 0;
    for line in lines {
        if let Ok(r) = parse(line) {
            hits += usize::from(r.srcip().is_some())
                + usize::from(r.dstip().is_some())
                + usize::from(r.srcport().is_some())
                + usize::from(r.dstport().is_some())
                + usize::from(r.proto().is_some())
                + usize::from(r.policyid().is_some())
                + usize::from(r.action().is_some())
                + usize::from(r.log_type().is_some())
                + usize::from(r.subtype().is_some())
                + usize::from(r.srcintf().is_some())
                + usize::from(r.devname().is_some())
                + usize::from(r.devid().is_some())
                + usize::from(r.vd().is_some());
        }
    }
    hits
}

/// One regex per field: the key at a word start, an optional quote, the value.
fn baseline_regexes() -> Vec<Regex> {
    FIELDS
        .iter()
        .map(|f| Regex::new(&format!(r#"(?:^|[\s,]){f}="?([^"\s,]*)"#)).expect("baseline regex compiles"))
        .collect()
}

/// The baseline: one regex per field over the whole line.
fn regex_per_field(regexes: &[Regex], lines: &[String]) -> usize {
    let mut hits = 0;
    for line in lines {
        for re in regexes {
            if let Some(c) = re.captures(line) {
                hits += usize::from(c.get(1).is_some_and(|m| !m.as_str().is_empty()));
            }
        }
    }
    hits
}

fn bench(c: &mut Criterion) {
    let mix = corpus_lines();
    let default: Vec<Vec<u8>> =
        mix.iter().filter(|l| parse(l).is_ok_and(|r| r.format() == Format::Default)).cloned().collect();
    let regexes = baseline_regexes();
    let bytes = |set: &[Vec<u8>]| set.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "corpus mix: {} lines, {} bytes; default format: {} lines, {} bytes",
        mix.len(),
        bytes(&mix),
        default.len(),
        bytes(&default)
    );

    for (name, set) in [("corpus_mix", &mix), ("default_only", &default)] {
        let text: Vec<String> = set.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(set.len() as u64));
        group.sample_size(30);
        group.measurement_time(std::time::Duration::from_secs(4));
        group.bench_function("fortimisp_parse", |b| b.iter(|| ours(black_box(set))));
        group.bench_function("regex_per_field", |b| b.iter(|| regex_per_field(&regexes, black_box(&text))));
        group.finish();
    }
}

criterion_group!(benches, bench);

/// `PARSER_BENCH_PASSES=N [PARSER_BENCH_SET=default|mix] [PARSER_BENCH_IMPL=ours|regex]` runs N plain passes and
/// exits, for `perf stat`: its task-clock counts only the time this process was on a CPU, so lines per CPU-second
/// stay meaningful on a machine shared with other builds (criterion's wall-clock figures do not).
fn main() {
    if let Ok(passes) = std::env::var("PARSER_BENCH_PASSES") {
        let passes: usize = passes.parse().expect("PARSER_BENCH_PASSES is a number");
        let mix = corpus_lines();
        let set: Vec<Vec<u8>> = match std::env::var("PARSER_BENCH_SET").as_deref() {
            Ok("mix") => mix,
            _ => mix.into_iter().filter(|l| parse(l).is_ok_and(|r| r.format() == Format::Default)).collect(),
        };
        let started = std::time::Instant::now();
        let hits = if std::env::var("PARSER_BENCH_IMPL").as_deref() == Ok("regex") {
            let regexes = baseline_regexes();
            let text: Vec<String> = set.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
            (0..passes).map(|_| regex_per_field(&regexes, black_box(&text))).sum::<usize>()
        } else {
            (0..passes).map(|_| ours(black_box(&set))).sum::<usize>()
        };
        let lines = set.len() * passes;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{lines} lines in {secs:.3} s wall = {:.0} lines/s (hits {hits})", lines as f64 / secs);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
