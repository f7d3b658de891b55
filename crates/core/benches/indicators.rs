//! Indicator decision cost: `IndicatorSet::lookup` with 10 k, 100 k and 1 M indicators (see `support/indicator_data.rs`
//! for the mix), over 4096 probe addresses of which about half hit. Reported per lookup.
//!
//! Run: `cargo bench -p fortimisp-core --bench indicators`. Memory and the mirror's full-sync time are separate
//! (`--bench indicator_memory`, `--bench mirror_sync`): criterion measures time only.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "support/indicator_data.rs"]
mod indicator_data;

const PROBES: usize = 4096;

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("indicator_lookup");
    group.throughput(Throughput::Elements(PROBES as u64));
    for n in [10_000u64, 100_000, 1_000_000] {
        let (set, probes) = indicator_data::build(n, PROBES);
        let hits = probes.iter().filter(|ip| set.lookup(**ip).is_some()).count();
        eprintln!("indicator_lookup/{n}: {} entries, {hits}/{PROBES} probes hit", set.len());
        group.bench_with_input(BenchmarkId::from_parameter(n), &probes, |b, probes| {
            b.iter(|| {
                let mut found = 0usize;
                for ip in probes {
                    found += set.lookup(black_box(*ip)).is_some() as usize;
                }
                black_box(found)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
