//! The threat-feed backend end to end: the real daemons, the emulated FortiGate pulling fortimisp's HTTPS feeds
//! (basic auth, a private CA) or taking pushes, and its 2222x event lines coming back over syslog.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::fortimisp_testkit::tls::TestCa;
use fortimisp_e2e::{eventually, free_port, send_udp, traffic_line, Env};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery staple";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An [`Env`] with `backend = "threat-feed"`, a `[feed]` listener on a free port with a certificate from its own
/// CA (which the emulated FortiGate trusts for its pulls), and the emulator's feed events sent to the daemon's
/// syslog port.
struct Feeds {
    env: Env,
    port: u16,
    http: reqwest::Client,
}

impl Feeds {
    async fn start(feed_keys: &str) -> Feeds {
        let mut env = Env::start().await;
        let ca = TestCa::new();
        let cert = ca.issue_server_cert();
        std::fs::write(env.dir.path().join("feed.crt"), &cert.cert_pem).unwrap();
        std::fs::write(env.dir.path().join("feed.key"), &cert.key_pem).unwrap();
        let port = free_port();
        env.tweak("vdom = \"root\"", "vdom = \"root\"\nbackend = \"threat-feed\"");
        env.extra.push_str(&format!(
            "\n[feed]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{dir}/feed.crt\"\ntls_key = \"{dir}/feed.key\"\n\
             password = \"{PASSWORD}\"\nstatus_interval = \"1s\"\n{feed_keys}\n",
            dir = env.dir.path().display()
        ));
        env.fortigate.set_feed_ca(ca.ca_pem.as_bytes());
        env.fortigate.set_event_syslog(env.udp);
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Feeds { env, port, http }
    }

    fn url(&self, feed: &str) -> String {
        format!("https://127.0.0.1:{}/feeds/{feed}.txt", self.port)
    }

    /// Creates a feed object on the emulated FortiGate through its REST API, as the operator does.
    async fn create_feed(&self, name: &str, push: bool) {
        let body = if push {
            json!({"name": name, "type": "address", "update-method": "push", "resource": "https://fortimisp.invalid/push-only"})
        } else {
            json!({"name": name, "type": "address", "resource": self.url(name), "username": "fortigate",
                   "password": PASSWORD, "server-identity-check": "full", "refresh-rate": 5})
        };
        let fortigate_ca = std::fs::read(self.env.fortigate_ca()).unwrap();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&fortigate_ca).unwrap())
            .build()
            .unwrap();
        let response = client
            .post(format!("{}/api/v2/cmdb/system/external-resource?vdom=root", self.env.fortigate.url()))
            .bearer_auth(self.env.fortigate.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "creating feed {name}: {}", response.text().await.unwrap());
    }

    /// Fetches a served feed: (status, entries without comments, the `# N entries` header's N). A body that is not
    /// a 200's is returned as entries too, so a test can show it holds none of the addresses.
    async fn fetch(&self, feed: &str, user: &str, password: &str) -> (u16, Vec<String>, Option<usize>) {
        let response = self.http.get(self.url(feed)).basic_auth(user, Some(password)).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        let entries = body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(str::to_string);
        let announced = body.lines().find_map(|l| {
            let rest = l.strip_prefix("# ")?;
            rest.split_once(" entries")?.0.parse().ok()
        });
        (status, entries.collect(), announced)
    }

    fn loaded(&self, feed: &str) -> Vec<String> {
        self.env.fortigate.feed(feed).map(|f| f.entries).unwrap_or_default()
    }
}

/// Pull: a triggered block is served at once and loaded by the FortiGate at its next pull, which the FortiGate's
/// 22222 event confirms in the metrics; wrong credentials get 401 and never the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_serves_a_block_and_the_fortigate_loads_it() {
    let feeds = Feeds::start("update = [\"pull\"]\nallowed_clients = [\"127.0.0.0/8\"]").await;
    let env = &feeds.env;
    let event = env.misp.add_event("C2", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.10"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8::10"));
    feeds.create_feed("fortimisp-block", false).await;
    feeds.create_feed("fortimisp-block6", false).await;
    let _daemon = env.integration().await;

    send_udp(
        env.udp,
        &[
            traffic_line(ip("198.51.100.10"), ip("203.0.113.1"), 7, "accept"),
            traffic_line(ip("2001:db8::10"), ip("2001:db8::1"), 7, "accept"),
            traffic_line(ip("198.51.100.99"), ip("203.0.113.1"), 7, "accept"),
        ],
    );
    eventually(WAIT, "the IPv4 block is served", || async {
        feeds.fetch("fortimisp-block", "fortigate", PASSWORD).await.1 == ["198.51.100.10"]
    })
    .await;
    eventually(WAIT, "the IPv6 block is served in the IPv6 feed", || async {
        feeds.fetch("fortimisp-block6", "fortigate", PASSWORD).await.1 == ["2001:db8::10"]
    })
    .await;

    assert!(feeds.loaded("fortimisp-block").is_empty(), "nothing is loaded before the FortiGate pulls");
    env.fortigate.pull_now("fortimisp-block").await.expect("the FortiGate's pull succeeds");
    assert_eq!(feeds.loaded("fortimisp-block"), ["198.51.100.10"]);
    eventually(WAIT, "the FortiGate's 22222 event reaches the metrics", || async {
        env.metric("fortimisp_feed_loaded_entries{feed=\"fortimisp-block\"}").await == 1.0
            && env.metric("fortimisp_feed_last_loaded_timestamp_seconds{feed=\"fortimisp-block\"}").await > 0.0
            && env.metric("fortimisp_feed_events_total{reason=\"loaded\"}").await >= 1.0
    })
    .await;

    // Wrong password, wrong user, no credentials: 401 and an empty body.
    for (user, password) in [("fortigate", "wrong password!"), ("admin", PASSWORD)] {
        let (status, body, _) = feeds.fetch("fortimisp-block", user, password).await;
        assert_eq!(status, 401, "{user}");
        assert!(!body.iter().any(|l| l.contains("198.51.100.10")), "{user}: {body:?}");
    }
    let anonymous = feeds.http.get(feeds.url("fortimisp-block")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(!anonymous.text().await.unwrap().contains("198.51.100.10"));
    assert!(env.metric("fortimisp_feed_requests_total{result=\"unauthorized\"}").await >= 3.0);

    // The journal's ledger and `list` say the same.
    let list = env.integration_cmd(&["list"]);
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(stdout.contains("198.51.100.10") && stdout.contains("feed fortimisp-block"), "{stdout}");
    let list = env.integration_cmd(&["list", "--feeds"]);
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{stdout}{}", String::from_utf8_lossy(&list.stderr));
    let row = stdout.lines().find(|l| l.starts_with("fortimisp-block ")).expect("a row per feed");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["fortimisp-block", "1", "1"], "served 1, loaded 1: {stdout}");
}

/// A client outside `allowed_clients` gets 403 even with the right credentials, and so does the FortiGate's own
/// pull, which then keeps its last list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_allowed_networks_gets_403() {
    let feeds = Feeds::start("update = [\"pull\"]\nallowed_clients = [\"192.0.2.0/24\"]").await;
    let env = &feeds.env;
    feeds.create_feed("fortimisp-block", false).await;
    let _daemon = env.integration().await;
    let (status, body, _) = feeds.fetch("fortimisp-block", "fortigate", PASSWORD).await;
    assert_eq!(status, 403, "{body:?}");
    assert!(env.fortigate.pull_now("fortimisp-block").await.is_err(), "the FortiGate is refused too");
    assert_eq!(env.fortigate.feed("fortimisp-block").unwrap().resource_file_status, "fetch-failed");
    assert!(env.metric("fortimisp_feed_requests_total{result=\"forbidden\"}").await >= 2.0);
}

/// Push: the entry is on the FortiGate within a second of the triggering line (the mirror answers); housekeeping
/// removes it after `max_age`, and removes a revoked one, each with a push `remove`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_blocks_within_a_second_and_housekeeping_removes() {
    let mut feeds = Feeds::start("update = [\"push\"]").await;
    feeds.env.tweak("sync_interval = \"0s\"", "sync_interval = \"1s\"");
    let env = &feeds.env;
    let event = env.misp.add_event("C2", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.20"));
    let revoked = env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.21"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.22"));
    feeds.create_feed("fortimisp-block", true).await;
    feeds.create_feed("fortimisp-block6", true).await;
    let daemon = env.integration().await;
    eventually(WAIT, "the mirror is synced", || async { env.metric("fortimisp_mirror_indicators").await == 3.0 }).await;
    eventually(WAIT, "the first snapshot was pushed", || async {
        env.metric("fortimisp_feed_pushes_total{command=\"snapshot\",outcome=\"ok\"}").await >= 2.0
    })
    .await;

    let sent = Instant::now();
    send_udp(env.udp, &[traffic_line(ip("198.51.100.20"), ip("203.0.113.1"), 7, "accept")]);
    eventually(Duration::from_secs(1), "the pushed entry is on the FortiGate within 1 s", || async {
        feeds.loaded("fortimisp-block") == ["198.51.100.20"]
    })
    .await;
    let took = sent.elapsed();
    send_udp(
        env.udp,
        &[
            traffic_line(ip("198.51.100.21"), ip("203.0.113.1"), 7, "accept"),
            traffic_line(ip("198.51.100.22"), ip("203.0.113.1"), 7, "accept"),
        ],
    );
    eventually(WAIT, "all three are pushed", || async { feeds.loaded("fortimisp-block").len() == 3 }).await;
    eprintln!("push: triggering line to entry on the FortiGate in {took:?}");
    drop(daemon);

    // Revocation: one indicator deleted in MISP; housekeeping removes its entry (1 of 3: under the rail).
    assert!(env.misp.soft_delete(revoked));
    let pass = env.housekeeping_cmd(&["--once"]);
    assert!(pass.status.success(), "{}", String::from_utf8_lossy(&pass.stderr));
    let loaded: BTreeSet<String> = feeds.loaded("fortimisp-block").into_iter().collect();
    assert_eq!(loaded, ["198.51.100.20", "198.51.100.22"].map(String::from).into());

    // Ageing: with max_age 1s every remaining entry goes, each with a push `remove`.
    let removes = env.fortigate.route_count("POST /api/v2/monitor/system/external-resource/dynamic");
    let mut aged = feeds;
    aged.env.tweak("max_age = \"90d\"", "max_age = \"1s\"");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pass = aged.env.housekeeping_cmd(&["--once"]);
    assert!(pass.status.success(), "{}", String::from_utf8_lossy(&pass.stderr));
    assert!(aged.loaded("fortimisp-block").is_empty(), "{:?}", aged.loaded("fortimisp-block"));
    assert!(aged.env.fortigate.route_count("POST /api/v2/monitor/system/external-resource/dynamic") >= removes + 2);
    let open = aged.env.journal_rows("SELECT ip FROM blocks WHERE unblocked_at IS NULL");
    assert!(open.is_empty(), "the ledger is closed: {open:?}");
}

/// Indicators mode over 100 000 MISP indicators: the served feeds hold exactly the actionable, aggregated,
/// non-reserved set, newest first; a cap of 50 000 splits it across two feeds, or (with one feed) reports what was
/// left out; a FortiGate whose limit is below what it is sent drops the rest and its 22224 event raises the
/// overflow metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicators_mode_serves_the_aggregated_actionable_set() {
    let mut feeds = Feeds::start(
        "update = [\"pull\"]\ncontents = \"indicators\"\nmax_entries = 50000\nmax_feeds = 2\nsplit_families = true",
    )
    .await;
    feeds.env.tweak("sync_interval = \"0s\"", "sync_interval = \"5s\"");
    feeds.env.tweak("never_block = [\"198.51.100.250\"]", "never_block = [\"198.51.100.250\", \"13.0.5.0/24\"]");
    let env = &feeds.env;
    let misp = &env.misp;
    // 90 000 hosts, never adjacent (stride 2: nothing aggregates), newest last.
    let mut event = 0;
    for i in 0..90_000u32 {
        if i % 10_000 == 0 {
            event = misp.add_event(&format!("hosts {i}"), true, &[]);
        }
        let host = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(11, 0, 0, 0)) + 2 * i);
        misp.add_attribute(
            event,
            AttributeSpec::new("ip-dst", host.to_string()).timestamp(1_700_000_000 + i64::from(i)),
        );
    }
    // 5 000 /24 networks, not adjacent, and 1 000 hosts inside them (absorbed by aggregation).
    let nets = misp.add_event("networks", true, &[]);
    for k in 0..5_000u32 {
        let net = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(12, 0, 0, 0)) + k * 512);
        misp.add_attribute(nets, AttributeSpec::new("ip-dst", format!("{net}/24")).timestamp(1_600_000_000));
        if k < 1_000 {
            let inside = std::net::Ipv4Addr::from(u32::from(net) + 7);
            misp.add_attribute(nets, AttributeSpec::new("ip-src", inside.to_string()).timestamp(1_600_000_000));
        }
    }
    // Left out: 2 000 warninglisted, 1 000 private, one reserved network; one network around a never_block range.
    let other = misp.add_event("other", true, &[]);
    misp.add_warninglist("Known good", "cidr", &["14.0.0.0/16"]);
    for i in 0..2_000u32 {
        let listed = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(14, 0, 0, 0)) + i);
        misp.add_attribute(other, AttributeSpec::new("ip-src", listed.to_string()));
    }
    for i in 0..1_000u32 {
        let private = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 9, 0, 0)) + i);
        misp.add_attribute(other, AttributeSpec::new("ip-src", private.to_string()));
    }
    misp.add_attribute(other, AttributeSpec::new("ip-src", "192.168.0.0/16"));
    misp.add_attribute(other, AttributeSpec::new("ip-src", "13.0.0.0/16").timestamp(1_500_000_000));
    // 998 IPv6 hosts, not adjacent.
    for i in 0..998u16 {
        misp.add_attribute(other, AttributeSpec::new("ip-src", format!("2a00:1::{:x}", 2 * u32::from(i))));
    }
    feeds.create_feed("fortimisp-block", false).await;
    feeds.create_feed("fortimisp-block-2", false).await;
    feeds.create_feed("fortimisp-block6", false).await;
    feeds.create_feed("fortimisp-block6-2", false).await;
    let daemon = env.integration().await;

    // Expected: 90 000 hosts + 5 000 /24s + 13.0.0.0/16 minus 13.0.5.0/24 (8 networks) in IPv4, 998 in IPv6.
    let mut expected_v4: BTreeSet<String> = (0..90_000u32)
        .map(|i| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(11, 0, 0, 0)) + 2 * i).to_string())
        .collect();
    expected_v4.extend((0..5_000u32).map(|k| {
        format!("{}/24", std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(12, 0, 0, 0)) + k * 512))
    }));
    expected_v4.extend(
        [
            "13.0.0.0/22",
            "13.0.4.0/24",
            "13.0.6.0/23",
            "13.0.8.0/21",
            "13.0.16.0/20",
            "13.0.32.0/19",
            "13.0.64.0/18",
            "13.0.128.0/17",
        ]
        .map(String::from),
    );
    let expected_v6: BTreeSet<String> = (0..998u32).map(|i| ip(&format!("2a00:1::{:x}", 2 * i)).to_string()).collect();

    eventually(Duration::from_secs(120), "the mirror's indicators are served", || async {
        feeds.fetch("fortimisp-block", "fortigate", PASSWORD).await.0 == 200
    })
    .await;
    let (_, first, _) = feeds.fetch("fortimisp-block", "fortigate", PASSWORD).await;
    let (_, second, _) = feeds.fetch("fortimisp-block-2", "fortigate", PASSWORD).await;
    let (_, v6, _) = feeds.fetch("fortimisp-block6", "fortigate", PASSWORD).await;
    assert_eq!((first.len(), second.len()), (50_000, expected_v4.len() - 50_000), "split at the cap");
    let served_v4: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(served_v4.len(), first.len() + second.len(), "no entry is served twice");
    assert_eq!(
        served_v4.difference(&expected_v4).take(5).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "nothing unexpected"
    );
    assert_eq!(
        expected_v4.difference(&served_v4).take(5).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "nothing missing"
    );
    let served_v6: BTreeSet<String> = v6.iter().cloned().collect();
    let unexpected: Vec<_> = served_v6.difference(&expected_v6).take(5).collect();
    let missing: Vec<_> = expected_v6.difference(&served_v6).take(5).collect();
    assert!(unexpected.is_empty() && missing.is_empty(), "IPv6: unexpected {unexpected:?}, missing {missing:?}");
    // Newest first: the newest host opens the first feed, the oldest network is in the second.
    assert_eq!(
        first[0],
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(11, 0, 0, 0)) + 2 * 89_999).to_string()
    );
    assert!(second.iter().any(|e| e == "13.0.128.0/17"));
    assert_eq!(env.metric("fortimisp_feed_left_out{family=\"ipv4\"}").await, 0.0);

    // The FortiGate's own limit below what it is sent: it keeps 40 000, drops the rest, logs 22224.
    env.fortigate.set_feed_limit(40_000);
    env.fortigate.pull_now("fortimisp-block").await.expect("the pull succeeds");
    assert_eq!(feeds.loaded("fortimisp-block").len(), 40_000);
    eventually(WAIT, "the 22224 event raises the overflow metric", || async {
        env.metric("fortimisp_feed_overflow{feed=\"fortimisp-block\"}").await == 1.0
            && env.metric("fortimisp_feed_events_total{reason=\"overflow\"}").await >= 1.0
    })
    .await;
    drop(daemon);

    // One feed per family: what does not fit is left out and reported.
    let mut one = feeds;
    one.env.extra = one.env.extra.replace("max_feeds = 2", "max_feeds = 1");
    let _daemon = one.env.integration().await;
    eventually(Duration::from_secs(120), "the left-out entries are reported", || async {
        one.env.metric("fortimisp_feed_left_out{family=\"ipv4\"}").await == (expected_v4.len() - 50_000) as f64
    })
    .await;
    let (_, first, _) = one.fetch("fortimisp-block", "fortigate", PASSWORD).await;
    assert_eq!(first.len(), 50_000);
    let (status, _, _) = one.fetch("fortimisp-block-2", "fortigate", PASSWORD).await;
    assert_eq!(status, 404, "no second feed with max_feeds = 1");
}

/// A fetch while the set changes gets a whole list: each body holds exactly the entries its header announces, and
/// (blocks only being added) every fetch holds every entry of the fetch before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_during_changes_never_sees_a_partial_list() {
    let feeds = Feeds::start("update = [\"pull\"]").await;
    let env = &feeds.env;
    let event = env.misp.add_event("C2", true, &[]);
    let sources: Vec<IpAddr> = (1..=200u32)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(198, 51, (i / 250) as u8 + 100, (i % 250) as u8 + 1)))
        .collect();
    for src in &sources {
        env.misp.add_attribute(event, AttributeSpec::new("ip-src", src.to_string()));
    }
    let _daemon = env.integration().await;
    let lines: Vec<String> = sources.iter().map(|s| traffic_line(*s, ip("203.0.113.1"), 7, "accept")).collect();
    let sender = {
        let udp = env.udp;
        tokio::spawn(async move {
            for chunk in lines.chunks(10) {
                send_udp(udp, chunk);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut previous: BTreeSet<String> = BTreeSet::new();
    let mut fetches = 0;
    let deadline = Instant::now() + WAIT;
    while previous.len() < sources.len() {
        assert!(Instant::now() < deadline, "only {} of {} entries served", previous.len(), sources.len());
        let (status, entries, announced) = feeds.fetch("fortimisp-block", "fortigate", PASSWORD).await;
        assert_eq!(status, 200);
        assert_eq!(Some(entries.len()), announced, "the body holds what its header announces");
        let now: BTreeSet<String> = entries.into_iter().collect();
        assert!(now.is_superset(&previous), "a later fetch lost entries");
        previous = now;
        fetches += 1;
    }
    sender.await.unwrap();
    assert!(fetches > 5, "the fetches overlapped the changes ({fetches})");
}

/// A FortiGate pulling every second for a minute costs one contents build per change, not one per pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_every_second_cost_one_build_per_change() {
    let feeds = Feeds::start("update = [\"pull\"]\nsplit_families = false").await;
    let env = &feeds.env;
    let event = env.misp.add_event("C2", true, &[]);
    for i in 1..=3u8 {
        env.misp.add_attribute(event, AttributeSpec::new("ip-src", format!("198.51.100.{i}")));
    }
    feeds.create_feed("fortimisp-block", false).await;
    let _daemon = env.integration().await;
    env.fortigate.set_feed_poll_interval(Duration::from_secs(1));
    let start = Instant::now();
    let mut changes = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let second = start.elapsed().as_secs();
        if changes < 3 && second >= 10 * (changes + 1) {
            changes += 1;
            send_udp(env.udp, &[traffic_line(ip(&format!("198.51.100.{changes}")), ip("203.0.113.1"), 7, "accept")]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.fortigate.set_feed_poll_interval(Duration::ZERO);
    assert_eq!(feeds.loaded("fortimisp-block").len(), 3, "every change reached the FortiGate");
    let fetches = env.fortigate.feed_fetches("fortimisp-block");
    let builds = env.metric("fortimisp_feed_builds_total").await;
    eprintln!("pull robustness: {fetches} pulls in 60 s, {builds} builds for 3 changes");
    assert!(fetches >= 50, "the FortiGate pulled every second ({fetches})");
    // The first contents (the ledger read at start, then the FortiGate's limit read from its status: at most two
    // builds), then at most one per change.
    assert!(builds <= 2.0 + 3.0, "{builds} builds for 3 changes and {fetches} pulls");
    assert!(
        env.metric("fortimisp_feed_requests_total{result=\"not_modified\"}").await >= 40.0,
        "unchanged pulls get 304"
    );
}

/// `validate` reports each feed object: missing, then present and pointing at the listener; with push, the push
/// permission (an add of nothing), which a profile without `sysgrp` write lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_feed_objects() {
    let mut feeds = Feeds::start("update = [\"pull\"]").await;
    feeds.env.extra.push_str(&format!("url = \"https://127.0.0.1:{}\"\n", feeds.port));
    let run = |feeds: &Feeds| {
        let out = feeds.env.integration_cmd(&["validate"]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, text) = run(&feeds);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAIL  fortigate: feed fortimisp-block: missing"), "{text}");
    feeds.create_feed("fortimisp-block", false).await;
    feeds.create_feed("fortimisp-block6", false).await;
    let (code, text) = run(&feeds);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok    fortigate: feed fortimisp-block: type address, pulls https://127.0.0.1:"), "{text}");
    assert!(text.contains("ok    fortigate: feed fortimisp-block6: status readable"), "{text}");

    // A push config against the pulled feeds: each says what to set.
    feeds.env.extra = feeds.env.extra.replace("update = [\"pull\"]", "update = [\"push\"]");
    let (code, text) = run(&feeds);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("update-method is \"feed\": set update-method push"), "{text}");
}
