//! Scale check (ignored by default; run with `--ignored --nocapture`): a full paged sync of 1 M attributes from
//! the emulator, as the mirror's benchmark will do. Prints the time of seeding, the first page and the whole sync.

use std::time::{Duration, Instant};

use fortimisp_core::misp::{Client, ClientOptions, SearchQuery};
use fortimisp_core::secret::ApiKey;
use fortimisp_testkit::misp::{MispEmulator, DEFAULT_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: 1 M attributes"]
async fn full_sync_of_one_million_attributes() {
    let n: u64 = std::env::var("MISP_SCALE_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let emulator = MispEmulator::start().await.expect("emulator");
    let started = Instant::now();
    emulator.add_synthetic(n, "11.0.0.1".parse().expect("ip"), 1_600_000_000);
    println!("seeded {n} attributes in {:?}", started.elapsed());

    let mut options = ClientOptions::new(emulator.url(), ApiKey::new(DEFAULT_KEY));
    options.page_size = 5000;
    options.timeout = Duration::from_secs(120);
    let client = Client::new(options).expect("client");
    let started = Instant::now();
    let mut pager = client.pages(SearchQuery::new().types(["ip-src", "ip-dst"]).to_ids(true));
    let mut total = 0usize;
    let mut first = None;
    while let Some(page) = pager.next_page().await {
        total += page.expect("page").indicators.len();
        first.get_or_insert(started.elapsed());
    }
    println!("first page after {:?}; {total} indicators in {:?}", first, started.elapsed());
    assert_eq!(total as u64, n);

    let started = Instant::now();
    let ips: Vec<std::net::IpAddr> =
        (0..1000u32).map(|i| std::net::Ipv4Addr::from(0x0b00_0001 + i * 997).into()).collect();
    let found = client.search_values(&SearchQuery::new(), &ips).await.expect("lookups");
    println!("1000 value lookups in 4 batches: {} found in {:?}", found.len(), started.elapsed());
}
