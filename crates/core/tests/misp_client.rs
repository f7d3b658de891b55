//! Every `misp::Client` operation against the testkit MISP emulator: happy paths, each error path, retries
//! and backoff (paused tokio time: the clock jumps when the runtime is idle, so no test really sleeps), TLS.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use fortimisp_core::misp::{
    AttributeKind, Client, ClientOptions, Deleted, Error, FeedOutcome, Indicator, RetryPolicy, SearchQuery,
    SightingOutcome,
};
use fortimisp_core::secret::ApiKey;
use fortimisp_testkit::misp::{AttributeSpec, Fault, MispEmulator, Role, DEFAULT_KEY};
use tokio::time::Instant;

const SEARCH: &str = "attributes/restSearch";

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_rate_limit_wait: Duration::from_secs(60),
    }
}

fn options(emulator: &MispEmulator) -> ClientOptions {
    let mut options = ClientOptions::new(emulator.url(), ApiKey::new(DEFAULT_KEY));
    options.timeout = Duration::from_secs(30);
    options.retry = retry();
    options
}

fn client(emulator: &MispEmulator) -> Client {
    Client::new(options(emulator)).expect("client builds")
}

async fn setup() -> (MispEmulator, Client) {
    let emulator = MispEmulator::start().await.expect("emulator starts");
    let client = client(&emulator);
    (emulator, client)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn nets(indicators: &[Indicator]) -> BTreeSet<String> {
    indicators.iter().map(|i| format!("{} {}", i.kind, i.network)).collect()
}

// ---- connection check ---------------------------------------------------------------------------------------

#[tokio::test]
async fn version_me_and_check() {
    let (emulator, client) = setup().await;
    let version = client.version().await.expect("version");
    assert_eq!(version.version, "2.5.1");
    assert!(version.perm_sighting);
    let me = client.me().await.expect("me");
    assert!(me.role.perm_sighting && me.role.perm_site_admin);
    assert_eq!(me.id, 1);
    client.check(true, true).await.expect("all permissions present");

    emulator.set_role(Role { perm_sighting: false, perm_site_admin: false, ..Role::default() });
    let cases: [(bool, bool, Option<&str>); 3] =
        [(false, false, None), (true, false, Some("perm_sighting")), (false, true, Some("perm_site_admin"))];
    for (need_sighting, need_admin, missing) in cases {
        match (client.check(need_sighting, need_admin).await, missing) {
            (Ok(_), None) => {}
            (Err(Error::MissingPermission { permission, .. }), Some(expected)) => {
                assert_eq!(permission, expected)
            }
            (other, _) => panic!("check({need_sighting}, {need_admin}): {other:?}"),
        }
    }
}

#[tokio::test]
async fn wrong_key_and_key_rotation_are_fatal_and_not_retried() {
    let (emulator, client) = setup().await;
    let mut other = options(&emulator);
    other.api_key = ApiKey::new("X".repeat(40));
    let bad = Client::new(other).expect("client builds");
    let error = bad.version().await.expect_err("wrong key refused");
    assert!(matches!(error, Error::Unauthorized { status: 403, .. }), "{error:?}");
    assert!(error.is_fatal() && !error.is_retryable());
    assert_eq!(emulator.request_count("servers/getVersion"), 1);

    client.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect("key valid before rotation");
    emulator.rotate_key(&"Y".repeat(40));
    let error = client.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect_err("old key refused");
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert_eq!(emulator.request_count(SEARCH), 2, "403 is not retried");
    // The key never shows in errors.
    assert!(!format!("{error} {error:?}").contains(DEFAULT_KEY));
}

// ---- restSearch ---------------------------------------------------------------------------------------------

/// One event per situation the lookups must get right.
fn seed_lookup_data(emulator: &MispEmulator) {
    let live = emulator.add_event("live", true, &["tlp:white"]);
    for spec in [
        AttributeSpec::new("ip-src", "198.51.100.7").tags(["kill-chain:c2"]),
        AttributeSpec::new("ip-dst|port", "198.51.100.8|443"),
        AttributeSpec::new("domain|ip", "Evil.Example|198.51.100.9"),
        AttributeSpec::new("ip-dst", "203.0.113.0/24"),
        AttributeSpec::new("ip-dst", "198.51.100.20/32"),
        AttributeSpec::new("ip-dst", "2001:0db8:0000:0000:0000:0000:0000:0007"),
        AttributeSpec::new("ip-dst", "198.51.100.10").deleted(true),
        AttributeSpec::new("ip-dst", "198.51.100.11").to_ids(false),
        AttributeSpec::new("ip-dst", "10.1.2.3"),
        AttributeSpec::new("domain", "evil.example"),
    ] {
        emulator.add_attribute(live, spec);
    }
    let unpublished = emulator.add_event("draft", false, &["fp"]);
    emulator.add_attribute(unpublished, AttributeSpec::new("ip-src", "198.51.100.12"));
    emulator.add_warninglist("RFC 1918", "cidr", &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
}

#[tokio::test]
async fn search_values_matches_like_misp() {
    let (emulator, client) = setup().await;
    seed_lookup_data(&emulator);
    let all_ips = [
        "198.51.100.7",
        "198.51.100.8",
        "198.51.100.9",
        "203.0.113.5",
        "203.0.113.0",
        "198.51.100.20",
        "2001:db8::7",
        "198.51.100.10",
        "198.51.100.11",
        "198.51.100.12",
        "10.1.2.3",
    ]
    .map(ip);
    let unknown = [ip("192.0.2.99")];
    let ip_types = AttributeKind::DEFAULT_IP_TYPES.iter().copied().chain(["domain|ip"]);
    let cases: Vec<(&str, SearchQuery, &[IpAddr], &[&str])> = vec![
        (
            "defaults: live only, either half of composites, no CIDR containment, /32 normalised, IPv6 compressed",
            SearchQuery::new(),
            &all_ips,
            &[
                "ip-src 198.51.100.7/32",
                "ip-dst|port 198.51.100.8/32",
                "domain|ip 198.51.100.9/32",
                "ip-dst 198.51.100.20/32",
                "ip-dst 2001:db8::7/128",
                "ip-dst 198.51.100.11/32",
                "ip-src 198.51.100.12/32",
                "ip-dst 10.1.2.3/32",
            ],
        ),
        (
            "to_ids, published, warninglist enforced",
            SearchQuery::new().types(ip_types.clone()).to_ids(true).published(true).enforce_warninglist(true),
            &all_ips,
            &[
                "ip-src 198.51.100.7/32",
                "ip-dst|port 198.51.100.8/32",
                "domain|ip 198.51.100.9/32",
                "ip-dst 198.51.100.20/32",
                "ip-dst 2001:db8::7/128",
            ],
        ),
        (
            "type filter",
            SearchQuery::new().types(["ip-src"]),
            &all_ips,
            &["ip-src 198.51.100.7/32", "ip-src 198.51.100.12/32"],
        ),
        ("deleted only", SearchQuery::new().deleted(Deleted::Only), &all_ips, &["ip-dst 198.51.100.10/32"]),
        ("tag include", SearchQuery::new().tags(["kill-chain:c2"]), &all_ips, &["ip-src 198.51.100.7/32"]),
        (
            "event tag exclude",
            SearchQuery::new().types(["ip-src"]).exclude_tags(["FP"]),
            &all_ips,
            &["ip-src 198.51.100.7/32"],
        ),
        ("unknown IP", SearchQuery::new(), &unknown, &[]),
    ];
    for (name, query, ips, expected) in cases {
        let found = client.search_values(&query, ips).await.expect(name);
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(nets(&found), expected, "{name}");
    }
}

#[tokio::test]
async fn indicator_fields_and_tags() {
    let (emulator, client) = setup().await;
    let event = emulator.add_event("tagged", true, &["tlp:amber"]);
    let id = emulator.add_attribute(
        event,
        AttributeSpec::new("ip-src|port", "198.51.100.7|8080").tags(["c2"]).timestamp(1_700_000_000).uuid("u-1"),
    );
    let query = SearchQuery::new().include_event_tags(true);
    let found = client.search_values(&query, &[ip("198.51.100.7")]).await.expect("search");
    assert_eq!(
        found,
        vec![Indicator {
            network: "198.51.100.7/32".parse().expect("net"),
            kind: AttributeKind::IpSrcPort,
            attribute_id: id,
            event_id: event,
            uuid: "u-1".into(),
            to_ids: true,
            deleted: false,
            timestamp: 1_700_000_000,
            tags: vec!["c2".into(), "tlp:amber".into()],
        }]
    );
    assert!(found[0].is_single());
}

#[tokio::test]
async fn cidr_pull_with_like_keeps_networks_and_counts_non_ips() {
    let (emulator, client) = setup().await;
    seed_lookup_data(&emulator);
    let event = emulator.add_event("odd", true, &[]);
    emulator.add_attribute(event, AttributeSpec::new("ip-dst", "not-an-ip/8"));
    emulator.add_attribute(event, AttributeSpec::new("ip-dst", "2001:db8:1::/48"));
    let page = client.search(&SearchQuery::new().values(["%/%"])).await.expect("like search");
    assert_eq!(nets(&page.indicators), ["ip-dst 203.0.113.0/24", "ip-dst 2001:db8:1::/48"].map(String::from).into());
    assert_eq!((page.returned, page.skipped), (3, 1));
    assert!(page.indicators.iter().all(|i| !i.is_single()));
}

#[tokio::test]
async fn search_values_batches_and_dedups() {
    let emulator = MispEmulator::start().await.expect("emulator");
    let mut opts = options(&emulator);
    opts.batch_size = 2;
    let client = Client::new(opts).expect("client");
    emulator.add_synthetic(5, "11.0.0.1".parse().expect("ip"), 1_000);
    let ips: Vec<IpAddr> = ["11.0.0.1", "11.0.0.2", "11.0.0.3", "11.0.0.4", "11.0.0.5", "11.0.0.1"].map(ip).into();
    let found = client.search_values(&SearchQuery::new(), &ips).await.expect("search");
    assert_eq!(found.len(), 5);
    let bodies: Vec<usize> = emulator
        .requests()
        .iter()
        .filter(|r| r.route == SEARCH)
        .map(|r| r.body["value"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(bodies, vec![2, 2, 1]);
    assert!(client.search_values(&SearchQuery::new(), &[]).await.expect("empty").is_empty());
    assert_eq!(emulator.request_count(SEARCH), 3, "no request for no values");
}

// ---- paged and incremental sync -----------------------------------------------------------------------------

async fn sync_all(client: &Client, query: SearchQuery) -> (Vec<Indicator>, Vec<usize>) {
    let mut pager = client.pages(query);
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    while let Some(page) = pager.next_page().await {
        let page = page.expect("page");
        sizes.push(page.returned);
        all.extend(page.indicators);
    }
    (all, sizes)
}

#[tokio::test]
async fn paged_full_sync_uses_stable_order_and_stops_on_short_page() {
    let cases: [(u64, &[usize]); 3] = [(25, &[10, 10, 5]), (20, &[10, 10, 0]), (0, &[0])];
    for (n, expected_sizes) in cases {
        let emulator = MispEmulator::start().await.expect("emulator");
        emulator.add_synthetic(n, "11.0.0.1".parse().expect("ip"), 1_000);
        let mut opts = options(&emulator);
        opts.page_size = 10;
        let client = Client::new(opts).expect("client");
        let (all, sizes) = sync_all(&client, SearchQuery::new().types(["ip-dst"]).to_ids(true)).await;
        assert_eq!(sizes, expected_sizes, "{n} attributes");
        let ids: Vec<u64> = all.iter().map(|i| i.attribute_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending ids");
        assert_eq!(all.len() as u64, n);
        for (i, request) in emulator.requests().iter().enumerate() {
            assert_eq!(request.body["order"], "Attribute.id asc");
            assert_eq!(request.body["limit"], 10);
            assert_eq!(request.body["page"], i as u64 + 1);
        }
    }
}

#[tokio::test]
async fn warninglist_short_pages_do_not_end_the_sync() {
    let emulator = MispEmulator::start().await.expect("emulator");
    let mut opts = options(&emulator);
    opts.page_size = 10;
    let client = Client::new(opts).expect("client");
    emulator.add_synthetic(25, "11.0.0.1".parse().expect("ip"), 1_000);
    emulator.add_warninglist("lab", "cidr", &["11.0.0.3/32", "11.0.0.15/32"]);
    let mut pager = client.pages(SearchQuery::new().enforce_warninglist(true));
    let mut seen = Vec::new();
    while let Some(page) = pager.next_page().await {
        let page = page.expect("page");
        seen.push((page.returned, page.skipped_by_server, page.is_last));
    }
    assert_eq!(seen, vec![(9, 1, false), (9, 1, false), (5, 0, true)]);
}

#[tokio::test]
async fn incremental_sync_sees_soft_deletes_and_to_ids_changes() {
    let (emulator, client) = setup().await;
    emulator.set_now(Some(2_000_000));
    emulator.add_synthetic(5, "11.0.0.1".parse().expect("ip"), 1_000_000);
    let full = client.search_page(&SearchQuery::new().to_ids(true), 1).await.expect("full");
    assert_eq!(full.indicators.len(), 5);
    let since = full.max_timestamp.expect("timestamps");
    let (deleted_id, demoted_id) = (full.indicators[1].attribute_id, full.indicators[3].attribute_id);
    assert!(emulator.soft_delete(deleted_id));
    assert!(emulator.set_to_ids(demoted_id, false));

    let incremental = SearchQuery::new().since(since + 1).deleted(Deleted::Both);
    let page = client.search_page(&incremental, 1).await.expect("incremental");
    let changes: Vec<(u64, bool, bool)> =
        page.indicators.iter().map(|i| (i.attribute_id, i.deleted, i.to_ids)).collect();
    assert_eq!(changes, vec![(deleted_id, true, true), (demoted_id, false, false)]);
    assert!(page.indicators.iter().all(|i| i.timestamp >= 2_000_000));
    // The default (live only) no longer returns the deleted one.
    let live = client.search_values(&SearchQuery::new(), &[full.indicators[1].network.addr()]).await.expect("live");
    assert!(live.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failing_page_is_retried_then_reported_and_resumable() {
    let emulator = MispEmulator::start().await.expect("emulator");
    let mut opts = options(&emulator);
    opts.page_size = 10;
    let client = Client::new(opts).expect("client");
    emulator.add_synthetic(25, "11.0.0.1".parse().expect("ip"), 1_000);

    emulator.fail_page(2, 1, Fault::html(502));
    let (all, _) = sync_all(&client, SearchQuery::new()).await;
    assert_eq!(all.len(), 25);
    assert_eq!(emulator.request_count(SEARCH), 4, "page 2 asked twice");

    emulator.fail_page(2, 3, Fault::json_error(500, "/attributes/restSearch"));
    let mut pager = client.pages(SearchQuery::new());
    assert!(pager.next_page().await.expect("page 1").is_ok());
    let error = pager.next_page().await.expect("page 2").expect_err("retries exhausted");
    assert!(
        matches!(&error, Error::Server { status: 500, message: Some(m), .. } if m == "An Internal Error Has Occurred.")
    );
    assert_eq!(pager.next_page_number(), 2, "a failed page is not skipped");
    let page = pager.next_page().await.expect("page 2 again").expect("fault used up");
    assert_eq!(page.page, 2);
}

// ---- retries, backoff, rate limit, timeouts ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_bounded_backoff() {
    let faults: Vec<(&str, Fault)> = vec![
        ("html 500", Fault::html(500)),
        ("json 500", Fault::json_error(500, "/attributes/restSearch")),
        ("html 504", Fault::html(504)),
        ("invalid json", Fault::InvalidJson),
        ("dropped connection", Fault::Drop),
    ];
    for (name, fault) in faults {
        let (emulator, client) = setup().await;
        emulator.add_synthetic(1, "11.0.0.1".parse().expect("ip"), 1_000);
        emulator.fail_route(SEARCH, 2, fault.clone());
        let started = Instant::now();
        let page = client.search(&SearchQuery::new()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let waited = started.elapsed();
        assert_eq!(page.indicators.len(), 1, "{name}");
        assert_eq!(emulator.request_count(SEARCH), 3, "{name}");
        // Backoffs: [50,100] ms then [100,200] ms.
        assert!(waited >= Duration::from_millis(150) && waited <= Duration::from_millis(320), "{name}: {waited:?}");

        emulator.fail_route(SEARCH, 3, fault);
        let error = client.search(&SearchQuery::new()).await.expect_err(name);
        assert!(error.is_retryable(), "{name}: {error:?}");
        assert_eq!(emulator.request_count(SEARCH), 6, "{name}: max_attempts bounds the retries");
        match name {
            "invalid json" => assert!(matches!(error, Error::Decode { .. }), "{error:?}"),
            "dropped connection" => assert!(matches!(error, Error::Transport { .. }), "{error:?}"),
            _ => assert!(matches!(error, Error::Server { .. }), "{name}: {error:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried_then_reported() {
    let emulator = MispEmulator::start().await.expect("emulator");
    let mut opts = options(&emulator);
    opts.timeout = Duration::from_secs(5);
    let client = Client::new(opts).expect("client");
    emulator.set_latency(Some(Duration::from_secs(60)));
    let started = Instant::now();
    let error = client.version().await.expect_err("slow server");
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert_eq!(emulator.request_count("servers/getVersion"), 3);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(15) && waited < Duration::from_secs(16), "{waited:?}");

    emulator.set_latency(None);
    emulator.fail_route("servers/getVersion", 1, Fault::Delay(Duration::from_secs(6)));
    client.version().await.expect("one slow answer, then a fast one");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_429_waits_for_reset_within_the_cap() {
    let emulator = MispEmulator::start().await.expect("emulator");
    emulator.set_rate_limit(Some(2));
    // Cap below MISP's 900 s window: fail fast with the reset time.
    let client = client(&emulator);
    for _ in 0..2 {
        client.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect("within limit");
    }
    let error = client.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect_err("limited");
    match &error {
        Error::RateLimited { reset: Some(reset), .. } => assert!(*reset > Duration::from_secs(800)),
        other => panic!("{other:?}"),
    }
    assert!(error.is_retryable());
    assert_eq!(emulator.request_count(SEARCH), 3, "reset beyond the cap: no retry");

    // Cap above the window: sleep until the reset, then succeed.
    let mut opts = options(&emulator);
    opts.retry.max_rate_limit_wait = Duration::from_secs(1000);
    let patient = Client::new(opts).expect("client");
    let started = Instant::now();
    patient.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect("after reset");
    assert!(started.elapsed() >= Duration::from_secs(800), "{:?}", started.elapsed());
    assert_eq!(emulator.request_count(SEARCH), 5);

    emulator.set_rate_limit(Some(0));
    let error = client.search(&SearchQuery::new().values(["192.0.2.1"])).await.expect_err("405");
    assert!(matches!(error, Error::NotAllowed { .. }) && !error.is_retryable(), "{error:?}");
    assert_eq!(emulator.request_count(SEARCH), 6);
}

#[tokio::test(start_paused = true)]
async fn writes_are_not_resent_after_the_server_may_have_acted() {
    let (emulator, client) = setup().await;
    emulator.add_attribute(1, AttributeSpec::new("ip-src", "198.51.100.7"));
    emulator.add_feed("osint", true);
    let cases: Vec<(&str, Fault)> = vec![("sightings/add", Fault::html(500)), ("sightings/add", Fault::Drop)];
    for (route, fault) in cases {
        emulator.reset_records();
        emulator.fail_route(route, 1, fault);
        let error = client.add_sighting(ip("198.51.100.7"), "fortimisp").await.expect_err("write failed");
        assert!(error.is_retryable());
        assert_eq!(emulator.request_count(route), 1, "{error:?}");
    }
    emulator.reset_records();
    emulator.fail_route("feeds/fetchFromAllFeeds", 1, Fault::html(503));
    assert!(client.fetch_all_feeds().await.is_err());
    assert_eq!(emulator.request_count("feeds/fetchFromAllFeeds"), 1);
    assert!(emulator.sightings().is_empty());
}

// ---- feeds, sightings, warninglists -------------------------------------------------------------------------

#[tokio::test]
async fn feeds() {
    let (emulator, client) = setup().await;
    assert_eq!(client.fetch_all_feeds().await.expect("no feeds"), FeedOutcome::NoFeedEnabled);
    let osint = emulator.add_feed("osint", true);
    let disabled = emulator.add_feed("old", false);
    assert_eq!(client.fetch_all_feeds().await.expect("queued"), FeedOutcome::Queued);
    assert_eq!(client.fetch_feed(osint).await.expect("queued"), FeedOutcome::Queued);
    assert_eq!(client.fetch_feed(disabled).await.expect("disabled"), FeedOutcome::FeedDisabled);
    emulator.set_background_jobs(false);
    assert_eq!(client.fetch_all_feeds().await.expect("inline"), FeedOutcome::Completed);
    emulator.set_feed_fails(osint, true);
    assert_eq!(client.fetch_feed(osint).await.expect("inline failure"), FeedOutcome::Failed);
    let error = client.fetch_feed(99).await.expect_err("unknown feed");
    assert!(matches!(error, Error::NotFound { .. }) && !error.is_retryable(), "{error:?}");
    let ids: Vec<Option<u64>> = emulator.feed_fetches().iter().map(|f| f.feed_id).collect();
    assert_eq!(ids, vec![None, None, Some(osint), Some(disabled), None, Some(osint)]);

    emulator.set_role(Role { perm_site_admin: false, ..Role::default() });
    let error = client.fetch_all_feeds().await.expect_err("not admin");
    assert!(matches!(error, Error::Forbidden { .. }) && error.is_fatal(), "{error:?}");
    assert_eq!(emulator.request_count("feeds/fetchFromAllFeeds"), 4);
}

#[tokio::test]
async fn sightings() {
    let (emulator, client) = setup().await;
    let event = emulator.add_event("e", true, &[]);
    let plain = emulator.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.7"));
    let composite = emulator.add_attribute(event, AttributeSpec::new("ip-dst|port", "198.51.100.8|443"));
    emulator.add_attribute(event, AttributeSpec::new("ip-dst", "198.51.100.9").deleted(true));

    let cases: [(&str, Option<u64>); 3] =
        [("198.51.100.7", Some(plain)), ("198.51.100.8", Some(composite)), ("198.51.100.9", None)];
    for (value, attribute) in cases {
        let outcome = client.add_sighting(ip(value), "fortimisp fw01").await.expect(value);
        match (outcome, attribute) {
            (SightingOutcome::Added { attribute_id, event_id, sighting_id }, Some(expected)) => {
                assert_eq!((attribute_id, event_id), (Some(expected), Some(event)));
                assert!(sighting_id.is_some());
            }
            (SightingOutcome::NotAdded { message }, None) => {
                assert!(message.starts_with("Could not add the Sighting. Reason: No valid attributes"), "{message}")
            }
            (other, _) => panic!("{value}: {other:?}"),
        }
    }
    let recorded: Vec<(u64, String, String)> =
        emulator.sightings().into_iter().map(|s| (s.attribute_id, s.source, s.kind)).collect();
    assert_eq!(
        recorded,
        vec![(plain, "fortimisp fw01".into(), "0".into()), (composite, "fortimisp fw01".into(), "0".into())]
    );

    emulator.set_role(Role { perm_sighting: false, ..Role::default() });
    let error = client.add_sighting(ip("198.51.100.7"), "x").await.expect_err("no perm_sighting");
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
}

#[tokio::test]
async fn warninglists() {
    let (emulator, client) = setup().await;
    let rfc1918 = emulator.add_warninglist("RFC 1918", "cidr", &["10.0.0.0/8", "192.168.0.0/16"]);
    emulator.add_warninglist("resolvers", "string", &["8.8.8.8"]);
    let hits = client.check_warninglist(&[ip("10.1.2.3"), ip("8.8.8.8"), ip("198.51.100.7")]).await.expect("check");
    assert_eq!(hits.len(), 2);
    let ten = &hits[&ip("10.1.2.3")];
    assert_eq!(
        (ten[0].id, ten[0].name.as_str(), ten[0].matched.as_deref()),
        (Some(rfc1918), "RFC 1918", Some("10.0.0.0/8"))
    );
    assert_eq!(hits[&ip("8.8.8.8")][0].name, "resolvers");
    // No hit: MISP answers `[]`.
    assert!(client.check_warninglist(&[ip("198.51.100.7")]).await.expect("miss").is_empty());
    emulator.set_warninglist_enabled(rfc1918, false);
    assert!(client.check_warninglist(&[ip("10.1.2.3")]).await.expect("disabled").is_empty());
    assert!(client.check_warninglist(&[]).await.expect("nothing to ask").is_empty());
    assert_eq!(emulator.request_count("warninglists/checkValue"), 3);
}

// ---- construction and TLS -----------------------------------------------------------------------------------

#[tokio::test]
async fn tls_verifies_with_the_ca_file_and_fails_closed_without_it() {
    let emulator = MispEmulator::builder().tls().start().await.expect("tls emulator");
    assert!(emulator.url().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, emulator.ca_pem().expect("ca")).expect("write ca");

    let mut with_ca = options(&emulator);
    with_ca.ca_file = Some(ca_file.clone());
    Client::new(with_ca).expect("client").version().await.expect("trusted via ca_file");

    let without = Client::new(options(&emulator)).expect("client");
    let error = without.version().await.expect_err("unknown CA");
    assert!(matches!(error, Error::Tls { .. }) && error.is_fatal(), "{error:?}");
    assert_eq!(emulator.request_count("servers/getVersion"), 1, "a failed handshake reaches no handler");

    let mut insecure = options(&emulator);
    insecure.verify_tls = false;
    Client::new(insecure).expect("client").version().await.expect("verify_tls = false");

    let other = MispEmulator::builder().tls().start().await.expect("second CA");
    let mut wrong_ca = options(&other);
    wrong_ca.ca_file = Some(ca_file);
    let error = Client::new(wrong_ca).expect("client").version().await.expect_err("other CA");
    assert!(matches!(error, Error::Tls { .. }), "{error:?}");
}

#[test]
fn construction_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let with = |url: &str, ca: Option<std::path::PathBuf>| {
        let mut o = ClientOptions::new(url, ApiKey::new(DEFAULT_KEY));
        o.ca_file = ca;
        Client::new(o)
    };
    let cases: Vec<(Result<Client, Error>, &str)> = vec![
        (with("not a url", None), "InvalidUrl"),
        (with("ftp://misp.example", None), "InvalidUrl"),
        (with("https://misp.example", Some(dir.path().join("missing.pem"))), "CaFileRead"),
        (with("https://misp.example", Some(garbage)), "CaFileInvalid"),
    ];
    for (result, expected) in cases {
        let error = result.expect_err(expected);
        assert!(format!("{error:?}").starts_with(expected), "{error:?}");
        assert!(error.is_fatal());
    }
    let client = with("https://misp.example/misp/", None).expect("path prefix kept");
    assert_eq!(client.url(), "https://misp.example/misp");
}

// ---- odd answers ----------------------------------------------------------------------------------------------

fn status(code: u16, content_type: &str, body: &str) -> Fault {
    Fault::Status { status: code, content_type: content_type.into(), body: body.into() }
}

#[tokio::test]
async fn unexpected_answers_map_to_non_retryable_errors() {
    let (emulator, client) = setup().await;
    emulator.add_feed("osint", true);
    let json = "application/json";
    let cases: Vec<(&str, Fault, &str)> = vec![
        (SEARCH, status(200, json, r#"{"unexpected": true}"#), "InvalidResponse"),
        (SEARCH, status(200, json, r#"{"response": {"Attribute": {"id": "1"}}}"#), "InvalidResponse"),
        (SEARCH, status(400, json, r#"{"name": "Bad", "message": "Bad", "url": "/"}"#), "Rejected"),
        (SEARCH, status(302, "text/html", ""), "Rejected"),
        (SEARCH, status(404, "text/html", "<html>nginx</html>"), "NotFound"),
        (SEARCH, status(401, json, r#"{"message": "no"}"#), "Unauthorized"),
        ("feeds/fetchFromAllFeeds", status(200, json, r#"{"saved": true}"#), "InvalidResponse"),
        ("sightings/add", status(200, json, r#"{"saved": true}"#), "InvalidResponse"),
        ("servers/getVersion", status(200, json, r#"{"no_version": 1}"#), "InvalidResponse"),
    ];
    for (route, fault, expected) in cases {
        emulator.reset_records();
        emulator.fail_route(route, 1, fault);
        let error = match route {
            SEARCH => client.search(&SearchQuery::new().values(["x"])).await.map(|_| ()),
            "feeds/fetchFromAllFeeds" => client.fetch_all_feeds().await.map(|_| ()),
            "sightings/add" => client.add_sighting(ip("192.0.2.1"), "t").await.map(|_| ()),
            _ => client.version().await.map(|_| ()),
        }
        .expect_err(expected);
        assert!(format!("{error:?}").starts_with(expected), "{route}: {error:?}");
        assert!(!error.is_retryable(), "{error:?}");
        assert_eq!(emulator.request_count(route), 1, "{route}: not retried");
    }
}

#[tokio::test]
async fn malformed_attributes_are_skipped_not_fatal() {
    let (emulator, client) = setup().await;
    let body = r#"{"response": {"Attribute": [
        {"id": "1", "event_id": "1", "type": "ip-src", "value": "198.51.100.7", "uuid": "a", "to_ids": true,
         "deleted": false, "timestamp": "1700000000"},
        {"id": "not-a-number", "event_id": "1", "type": "ip-src", "value": "198.51.100.8"},
        {"id": "3", "event_id": "1", "type": "ip-dst", "value": "198.51.100.0/24", "timestamp": 1700000001}
    ]}}"#;
    let cases: Vec<(&str, usize, usize, usize)> =
        vec![(body, 3, 2, 1), (r#"{"response": []}"#, 0, 0, 0), (r#"{"response": {"Attribute": []}}"#, 0, 0, 0)];
    for (body, returned, indicators, skipped) in cases {
        emulator.fail_route(SEARCH, 1, status(200, "application/json", body));
        let page = client.search(&SearchQuery::new().values(["x"])).await.expect("lenient parse");
        assert_eq!((page.returned, page.indicators.len(), page.skipped), (returned, indicators, skipped), "{body}");
    }
}

#[tokio::test]
async fn pager_as_stream() {
    use futures::StreamExt;
    let emulator = MispEmulator::start().await.expect("emulator");
    let mut opts = options(&emulator);
    opts.page_size = 4;
    let client = Client::new(opts).expect("client");
    emulator.add_synthetic(10, "11.0.0.1".parse().expect("ip"), 1_000);
    let sizes: Vec<usize> =
        client.pages(SearchQuery::new()).into_stream().map(|p| p.expect("page").returned).collect().await;
    assert_eq!(sizes, vec![4, 4, 2]);
    emulator.fail_page(2, 5, Fault::html(500));
    let results: Vec<bool> = client.pages(SearchQuery::new()).into_stream().map(|p| p.is_ok()).collect().await;
    assert_eq!(results, vec![true, false], "the stream ends after an error");
}

// ---- request timing -----------------------------------------------------------------------------------------

/// `fortimisp_request_duration_seconds_count{server, outcome}` as scraped.
fn timed(metrics: &fortimisp_core::metrics::Metrics, server: &str, outcome: &str) -> u64 {
    let sample = format!("fortimisp_request_duration_seconds_count{{server=\"{server}\",outcome=\"{outcome}\"}} ");
    let text = metrics.render();
    text.lines().find_map(|l| l.strip_prefix(&sample)).map_or(0, |v| v.parse().expect("a count"))
}

/// With an observer every HTTP request is timed, each retry on its own: a 500 then an answer are one `error` and
/// one `ok`; a refused key (not retried) is one more `error`. Nothing else is counted.
#[tokio::test(start_paused = true)]
async fn every_request_is_timed_retries_included() {
    let emulator = MispEmulator::start().await.expect("emulator starts");
    let metrics = fortimisp_core::metrics::Metrics::new();
    let mut opts = options(&emulator);
    opts.requests = Some(metrics.requests("misp"));
    let client = Client::new(opts).expect("client builds");
    assert_eq!((timed(&metrics, "misp", "ok"), timed(&metrics, "misp", "error")), (0, 0), "both start at 0");

    emulator.fail_next(1, Fault::html(500));
    client.version().await.expect("answered after one retry");
    assert_eq!((timed(&metrics, "misp", "ok"), timed(&metrics, "misp", "error")), (1, 1));

    emulator.fail_next(1, Fault::AuthFailure);
    client.version().await.expect_err("the key is refused");
    assert_eq!((timed(&metrics, "misp", "ok"), timed(&metrics, "misp", "error")), (1, 2));
    assert_eq!(emulator.total_requests(), 3, "one observation per request");
    assert!(!metrics.render().contains("server=\"fortigate\""), "only this client's server");
}
