//! Parser throughput over the shared corpus (`tests/data/corpus`), against a baseline in the same run: the
//! regex-per-field approach of the Python service fortimisp replaces (one regex per field of interest, each
//! searched over the whole line).
//!
//! A third measurement, `structural_floor`, is not a parser: it is the least work any parser that reads the whole
//! line must do (classify every byte with SIMD, resolve quoted regions, list where tokens start), so that the
//! 20× target can be checked against what one core can do at all (BENCHMARKS.md, "Why not 20×").
//!
//! Run: `cargo bench -p fortimisp-core --bench parser`. Figures go to BENCHMARKS.md ("Parser").

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use fortimisp_core::syslog::{parse, Format};
use regex::Regex;
use wide::{i8x16, CmpEq};

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

/// The structural floor of one line, simdjson-style with safe 16-byte vectors (SSE2 on x86_64): per 64-byte
/// block, bitmasks of `"`, space and backslash/tab; quoted regions by prefix XOR of the quote mask; token starts
/// (a non-separator after a separator outside quotes) written to `starts`. No key is read and no value is cut:
/// a parser does all of this and more. Returns the number of tokens.
fn structural_floor(line: &[u8], starts: &mut Vec<u32>) -> usize {
    fn prefix_xor(mut x: u64) -> u64 {
        for shift in [1, 2, 4, 8, 16, 32] {
            x ^= x << shift;
        }
        x
    }
    let (quote, space, backslash, tab) =
        (i8x16::splat(b'"' as i8), i8x16::splat(b' ' as i8), i8x16::splat(b'\\' as i8), i8x16::splat(b'\t' as i8));
    starts.clear();
    let (mut in_quote, mut after_sep, mut escapes) = (0u64, 1u64, 0u64);
    for (index, block) in line.chunks(64).enumerate() {
        let mut padded = [0u8; 64];
        let full: &[u8] = if block.len() == 64 {
            block
        } else {
            padded[..block.len()].copy_from_slice(block);
            &padded
        };
        let (mut q, mut sp) = (0u64, 0u64);
        for (k, lane) in full.chunks_exact(16).enumerate() {
            let bytes: [u8; 16] = lane.try_into().expect("16-byte lane");
            let v = i8x16::from(bytes.map(|b| b as i8));
            q |= u64::from(v.cmp_eq(quote).move_mask() as u16) << (16 * k);
            sp |= u64::from(v.cmp_eq(space).move_mask() as u16) << (16 * k);
            escapes |= u64::from((v.cmp_eq(backslash) | v.cmp_eq(tab)).move_mask() as u16);
        }
        let valid = if block.len() == 64 { u64::MAX } else { (1u64 << block.len()) - 1 };
        let quoted = prefix_xor(q) ^ in_quote;
        in_quote = 0u64.wrapping_sub(quoted >> 63);
        let sep = sp & !quoted;
        let mut token_starts = !sep & ((sep << 1) | after_sep) & valid;
        after_sep = sep >> 63;
        let base = (index * 64) as u32;
        while token_starts != 0 {
            starts.push(base + token_starts.trailing_zeros());
            token_starts &= token_starts - 1;
        }
    }
    starts.len() + usize::from(escapes != 0)
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
        let mut starts = Vec::with_capacity(256);
        group.bench_function("structural_floor", |b| {
            b.iter(|| black_box(set).iter().map(|l| structural_floor(l, &mut starts)).sum::<usize>())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);

/// `PARSER_BENCH_PASSES=N [PARSER_BENCH_SET=default|mix] [PARSER_BENCH_IMPL=ours|regex|floor]` runs N plain passes and
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
        } else if std::env::var("PARSER_BENCH_IMPL").as_deref() == Ok("floor") {
            let mut starts = Vec::with_capacity(256);
            (0..passes).map(|_| black_box(&set).iter().map(|l| structural_floor(l, &mut starts)).sum::<usize>()).sum()
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
