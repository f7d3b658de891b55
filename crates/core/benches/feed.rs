//! Threat-feed build cost: `feed::content::entries` over 1 M indicators (the mix of `support/indicator_data.rs`:
//! cut around the reserved ranges, aggregated, sorted newest first), `feed::layout` of the result, and
//! `feed::render` of one 300 000-entry feed (the FortiOS 7.4.4+ per-type limit).
//!
//! Run: `cargo bench -p fortimisp-core --bench feed` (add `-- --quick` for a rough figure).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fortimisp_core::feed::{content, layout, render, FeedContent, Names};
use fortimisp_core::policy::NeverBlock;

#[path = "support/indicator_data.rs"]
mod indicator_data;

const INDICATORS: u64 = 1_000_000;
const RENDERED: usize = 300_000;

fn feed(c: &mut Criterion) {
    let (set, _) = indicator_data::build(INDICATORS, 1);
    let never = NeverBlock::new(vec!["8.8.8.0/24".parse().expect("a valid CIDR")]);
    let entries = content::entries(&set, &never);
    eprintln!("feed: {} indicators give {} entries", set.len(), entries.len());

    let mut group = c.benchmark_group("feed");
    group.sample_size(10);
    group.throughput(Throughput::Elements(INDICATORS));
    group.bench_function("entries/1M", |b| b.iter(|| black_box(content::entries(&set, &never))));

    let names = Names::new("fortimisp-block", true, 4);
    let blocked: Vec<(IpAddr, i64)> =
        (0..1_000u32).map(|i| (IpAddr::from([198, 51, (i >> 8) as u8, i as u8]), 1)).collect();
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.bench_function("layout/1M", |b| b.iter(|| black_box(layout(&names, &blocked, &entries, RENDERED))));

    let content = FeedContent {
        name: "fortimisp-block".into(),
        entries: entries.iter().take(RENDERED).map(|(net, _)| *net).collect(),
    };
    let at = SystemTime::UNIX_EPOCH;
    let size = render(&content, at, "").body.len();
    eprintln!("feed: {} entries render to {size} bytes", content.entries.len());
    group.throughput(Throughput::Elements(content.entries.len() as u64));
    group.bench_function("render/300k", |b| b.iter(|| black_box(render(&content, at, ""))));
    group.finish();
}

criterion_group!(benches, feed);
criterion_main!(benches);
