//! The integration daemon, end to end: syslog in, MISP lookups, blocks on the FortiGate.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fortimisp_e2e::fortimisp_testkit::fortigate::{Fault, Table};
use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::fortimisp_testkit::tls::TestCa;
use fortimisp_e2e::{
    eventually, fortigate_writes, journal, members, pending_blocks, recent_decisions, send_tcp, send_tcp_lossy,
    send_tls, send_udp, traffic_line, Env,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const WAIT: Duration = Duration::from_secs(20);

/// Every kind of indicator that must block, each seen as the source of a triggering line, over UDP and TCP; and
/// every case that must not, with garbage in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_indicators_and_nothing_else() {
    let env = Env::start().await;
    let event = env.misp.add_event("C2 servers", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.10"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "198.51.100.11"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src|port", "198.51.100.12|443"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8::12"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.20").to_ids(false));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.21"));
    env.misp.add_warninglist("Known good", "cidr", &["198.51.100.21/32"]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "10.1.2.3"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.250"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.30"));
    let daemon = env.integration().await;

    let dst = ip("203.0.113.1");
    let mut udp_lines = vec![];
    for src in [
        "198.51.100.10",
        "198.51.100.11",
        "198.51.100.20",
        "198.51.100.21",
        "10.1.2.3",
        "198.51.100.250",
        "198.51.100.99",
    ] {
        udp_lines.push(traffic_line(ip(src), dst, 7, "accept"));
        udp_lines.push("\u{0}\u{ff}garbage <999> not a log".to_string());
    }
    // Policy 8 is no trigger: this indicator must not be blocked.
    udp_lines.push(traffic_line(ip("198.51.100.30"), dst, 8, "accept"));
    send_udp(env.udp, &udp_lines);
    // Over TCP, both framings.
    send_tcp(env.tcp, &[traffic_line(ip("198.51.100.12"), dst, 7, "accept")], true);
    send_tcp(env.tcp, &[traffic_line(ip("2001:db8::12"), ip("2001:db8::1"), 7, "accept")], false);

    let expect_v4 = ["misp-198.51.100.10", "misp-198.51.100.11", "misp-198.51.100.12"];
    eventually(WAIT, "the three IPv4 indicators are members of MISP_BLOCK", || async {
        let m = members(&env, "MISP_BLOCK");
        expect_v4.iter().all(|n| m.iter().any(|x| x == n))
    })
    .await;
    eventually(WAIT, "the IPv6 indicator is a member of MISP_BLOCK6", || async {
        members(&env, "MISP_BLOCK6").iter().any(|x| x == "misp-2001:db8::12")
    })
    .await;
    // Let the rest of the lines be fully processed before asserting what is absent.
    eventually(WAIT, "every triggering line was looked up", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_miss\"}").await >= 3.0
    })
    .await;
    let v4 = members(&env, "MISP_BLOCK");
    for never in [
        "misp-198.51.100.20",
        "misp-198.51.100.21",
        "misp-10.1.2.3",
        "misp-198.51.100.250",
        "misp-198.51.100.99",
        "misp-198.51.100.30",
    ] {
        assert!(!v4.iter().any(|m| m == never), "{never} must not be blocked: {v4:?}");
        assert!(env.fortigate.object(never).is_none(), "{never} must not exist");
    }
    let (_, object) = env.fortigate.object("misp-198.51.100.10").unwrap();
    let comment = object["comment"].as_str().unwrap();
    assert!(comment.starts_with("fortimisp 20"), "comment marker: {comment}");
    assert!(comment.contains(&format!("misp-event={event}")), "event id in comment: {comment}");
    assert!(
        env.metric("fortimisp_parse_errors_total{reason=\"not_fortigate\"}").await
            + env.metric("fortimisp_parse_errors_total{reason=\"bad_pri\"}").await
            >= 1.0
    );
    assert!(env.metric("fortimisp_candidates_total{outcome=\"never_block\"}").await >= 2.0);
    assert!(env.metric("fortimisp_lines_untriggered_total").await >= 1.0);
    drop(daemon);
}

/// A triggering line (policy 7, accept) from `src`.
fn hit_line(src: &str) -> String {
    let dst = if src.contains(':') { ip("2001:db8::1") } else { ip("203.0.113.1") };
    traffic_line(ip(src), dst, 7, "accept")
}

fn name(src: &str) -> String {
    format!("misp-{src}")
}

/// The `misp-` address objects on the emulated FortiGate, both families, sorted.
fn misp_objects(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = [Table::Address, Table::Address6]
        .into_iter()
        .flat_map(|t| env.fortigate.names(t))
        .filter(|n| n.starts_with("misp-") && !n.contains("placeholder"))
        .collect();
    names.sort();
    names
}

fn is_member(env: &Env, src: &str) -> bool {
    let group = if src.contains(':') { "MISP_BLOCK6" } else { "MISP_BLOCK" };
    members(env, group).contains(&name(src))
}

/// Waits until every address in `srcs` is a member of its block group.
async fn all_blocked(env: &Env, srcs: &[&str], timeout: Duration) {
    eventually(timeout, &format!("{srcs:?} are members of the block groups"), || async {
        srcs.iter().all(|s| is_member(env, s))
    })
    .await;
}

/// `sync_interval = "1s"`: the mirror is on.
fn with_mirror(env: &mut Env) {
    env.tweak("sync_interval = \"0s\"", "sync_interval = \"1s\"");
}

async fn mirror_synced(env: &Env) {
    eventually(WAIT, "the mirror completed a full sync", || async {
        env.metric("fortimisp_mirror_syncs_total{outcome=\"full_ok\"}").await >= 1.0
    })
    .await;
}

/// With the mirror on: an address inside a CIDR indicator is blocked as itself (not the range), a CIDR wider than
/// `min_prefix_v4` is ignored and reported, and the exact indicators of every type still block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_blocks_the_observed_address_of_a_cidr_and_ignores_wide_ones() {
    let mut env = Env::start().await;
    with_mirror(&mut env);
    let event = env.misp.add_event("Botnet", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.0/24"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "45.0.0.0/8"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "192.0.2.11"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src|port", "192.0.2.12|8080"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst|port", "192.0.2.13|53"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "2001:db8::/64"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8::/32"));
    let _daemon = env.integration().await;
    mirror_synced(&env).await;
    assert_eq!(env.metric("fortimisp_mirror_rejected_wide").await, 2.0, "45.0.0.0/8 and 2001:db8::/32: too wide");

    let blocked = ["198.51.100.77", "192.0.2.11", "192.0.2.12", "192.0.2.13", "2001:db8::77"];
    let mut lines: Vec<String> = blocked.iter().map(|s| hit_line(s)).collect();
    lines.push(hit_line("45.1.2.3"));
    lines.push(hit_line("2001:db8:1::1"));
    send_udp(env.udp, &lines);
    all_blocked(&env, &blocked, WAIT).await;
    eventually(WAIT, "every line was answered by the mirror", || async {
        env.metric("fortimisp_lookups_total{outcome=\"mirror_hit\"}").await
            + env.metric("fortimisp_lookups_total{outcome=\"mirror_miss\"}").await
            >= 7.0
    })
    .await;
    let expected: Vec<String> = {
        let mut v: Vec<String> = blocked.iter().map(|s| name(s)).collect();
        v.sort();
        v
    };
    assert_eq!(misp_objects(&env), expected, "the observed addresses, never a range nor the too-wide /8");
    let (_, object) = env.fortigate.object("misp-198.51.100.77").unwrap();
    assert_eq!(object["subnet"].as_str().unwrap(), "198.51.100.77 255.255.255.255", "a /32, not the /24");
    let (_, object) = env.fortigate.object("misp-2001:db8::77").unwrap();
    assert_eq!(object["ip6"].as_str().unwrap(), "2001:db8::77/128");
    assert_eq!(
        env.metric("fortimisp_misp_lookup_requests_total").await,
        0.0,
        "a synced mirror answers; no on-demand lookups"
    );
}

/// The values each on-demand restSearch asked for, from the MISP emulator's request log.
fn searched_values(env: &Env) -> Vec<String> {
    env.misp
        .requests()
        .into_iter()
        .filter(|r| r.route == "attributes/restSearch")
        .flat_map(|r| match r.body.get("value") {
            Some(serde_json::Value::Array(values)) => {
                values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect::<Vec<_>>()
            }
            Some(serde_json::Value::String(v)) => vec![v.clone()],
            _ => Vec::new(),
        })
        .collect()
}

/// 200 copies of each line, from 50 concurrent UDP senders: one address object per indicator, one MISP question
/// per address, and at most two FortiGate writes per new block (object, then membership).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_from_concurrent_senders_cost_one_lookup_and_one_block_per_address() {
    let env = Env::start().await;
    let event = env.misp.add_event("Scanners", true, &[]);
    let bad: Vec<String> =
        (1..=8).map(|i| format!("198.51.100.{i}")).chain(["2001:db8::a".into(), "2001:db8::b".into()]).collect();
    let clean: Vec<String> = (101..=110).map(|i| format!("198.51.100.{i}")).collect();
    let marker = "192.0.2.99";
    for b in bad.iter().map(String::as_str).chain([marker]) {
        env.misp.add_attribute(event, AttributeSpec::new("ip-src", b));
    }
    let _daemon = env.integration().await;
    // Group setup is done at start; count from here.
    env.fortigate.reset_requests();
    env.misp.reset_records();

    let lines: Vec<String> = bad.iter().chain(&clean).map(|s| hit_line(s)).collect();
    let senders: Vec<_> = (0..50)
        .map(|_| {
            let lines = lines.clone();
            let to = env.udp;
            std::thread::spawn(move || {
                for _ in 0..4 {
                    send_udp(to, &lines);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    // UDP keeps order per socket queue: once the marker (sent after every sender finished) is blocked, every earlier
    // datagram the kernel delivered has been through the decision stage. Re-sent in case the burst overflowed the
    // receive buffer; repeats cost nothing, which is the point.
    let marker_line = vec![hit_line(marker)];
    eventually(WAIT, "the marker sent after the flood is blocked", || async {
        send_udp(env.udp, &marker_line);
        is_member(&env, marker)
    })
    .await;
    let distinct = (bad.len() + clean.len() + 1) as f64;
    eventually(WAIT, "every distinct address got its answer from MISP", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_hit\"}").await
            + env.metric("fortimisp_lookups_total{outcome=\"misp_miss\"}").await
            >= distinct
    })
    .await;
    let bad_refs: Vec<&str> = bad.iter().map(String::as_str).collect();
    all_blocked(&env, &bad_refs, WAIT).await;

    let mut expected: Vec<String> = bad.iter().map(|s| name(s)).chain([name(marker)]).collect();
    expected.sort();
    assert_eq!(misp_objects(&env), expected, "one object per indicator, none for clean addresses");
    let mut asked: BTreeMap<String, usize> = BTreeMap::new();
    for value in searched_values(&env) {
        *asked.entry(value).or_default() += 1;
    }
    for ip in bad.iter().chain(&clean).map(String::as_str).chain([marker]) {
        assert_eq!(asked.get(ip).copied(), Some(1), "{ip} asked of MISP exactly once: {asked:?}");
    }
    let searches = env.misp.request_count("attributes/restSearch");
    assert!(searches as f64 <= distinct, "at most one restSearch per address, got {searches}");
    let writes = fortigate_writes(&env);
    let blocks = expected.len() as u64;
    assert!(
        writes <= 2 * blocks,
        "at most two FortiGate writes per new block: {writes} for {blocks}: {:?}",
        env.fortigate.route_counts()
    );
    assert_eq!(env.metric("fortimisp_blocks_total{outcome=\"blocked\"}").await, blocks as f64);
    let (sum, count) = (
        env.metric("fortimisp_block_latency_seconds_sum").await,
        env.metric("fortimisp_block_latency_seconds_count").await,
    );
    eprintln!("block latency under the flood: mean {:.3} s over {count} blocks", sum / count);
}

/// Adds an `ip-src` indicator for each address to one event.
fn indicators(env: &Env, srcs: &[&str]) -> u64 {
    let event = env.misp.add_event("Indicators", true, &[]);
    for s in srcs {
        env.misp.add_attribute(event, AttributeSpec::new("ip-src", *s));
    }
    event
}

/// The FortiGate answers 500 to everything until [`FortiGateEmulator::clear_faults`].
fn fortigate_down(env: &Env) {
    env.fortigate.fail_next(usize::MAX / 2, 500);
}

/// Successful-or-not `POST firewall/address{,6}` requests naming `object`.
fn create_requests(env: &Env, object: &str) -> usize {
    let needle = format!("\"name\":\"{object}\"");
    env.fortigate
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST" && (r.path.ends_with("/firewall/address") || r.path.ends_with("/firewall/address6"))
        })
        .filter(|r| r.body.replace(' ', "").contains(&needle))
        .count()
}

/// The FortiGate answers 500 for 20 s while indicators are seen, starting after the daemon did or before it
/// (so the block groups do not exist yet either); when it recovers, every block lands (retried from the queue
/// with backoff, nothing dropped). Both cases run at once to keep the wall time at one outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fortigate_outage_delays_blocks_and_loses_none() {
    tokio::join!(outage_then_recovery(false), outage_then_recovery(true));
}

async fn outage_then_recovery(down_at_start: bool) {
    let env = Env::start().await;
    let srcs = ["198.51.100.41", "198.51.100.42", "2001:db8::42"];
    indicators(&env, &srcs);
    let outage = Instant::now();
    if down_at_start {
        fortigate_down(&env);
    }
    let _daemon = env.integration().await;
    fortigate_down(&env);
    send_udp(env.udp, &srcs.iter().map(|s| hit_line(s)).collect::<Vec<_>>());
    eventually(Duration::from_secs(40), "20 s of outage, each block retried", || async {
        outage.elapsed() >= Duration::from_secs(20)
            && env.metric("fortimisp_blocks_total{outcome=\"retry\"}").await >= srcs.len() as f64
    })
    .await;
    assert!(misp_objects(&env).is_empty(), "nothing can land during the outage");
    assert_eq!(pending_blocks(&env).len(), srcs.len(), "the blocks wait in the journal");
    env.fortigate.clear_faults();
    let recovered = Instant::now();
    // The blocker backs off 1, 2, 4, 8 s (+25 % jitter) on top of the client's own retries.
    all_blocked(&env, &srcs, Duration::from_secs(60)).await;
    eprintln!(
        "outage (down at start: {down_at_start}): every block landed {:?} after the FortiGate recovered",
        recovered.elapsed()
    );
    eventually(WAIT, "nothing pending", || async { pending_blocks(&env).is_empty() }).await;
    for s in srcs {
        assert!(env.fortigate.object(&name(s)).is_some());
    }
    assert_eq!(env.metric("fortimisp_blocks_total{outcome=\"blocked\"}").await, srcs.len() as f64);
}

/// How the FortiGate fails while blocks are pending.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// Every request answers 500: nothing is created.
    Everything,
    /// Only the member adds answer 500: the objects exist, the blocks are half done.
    MemberAdds,
}

/// SIGKILL while blocks are pending, then a restart with the same state: the journal completes every block, each
/// exactly once (an object created before the kill is reused, not recreated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_pending_at_sigkill_complete_after_restart() {
    for outage in [Outage::Everything, Outage::MemberAdds] {
        let env = Env::start().await;
        let srcs = ["198.51.100.51", "198.51.100.52", "2001:db8::52"];
        indicators(&env, &srcs);
        let mut daemon = env.integration().await;
        match outage {
            Outage::Everything => fortigate_down(&env),
            Outage::MemberAdds => {
                for group in ["addrgrp", "addrgrp6"] {
                    let route = format!("POST /api/v2/cmdb/firewall/{group}/{{name}}/member");
                    env.fortigate.inject(Some(&route), Fault::Status(500), usize::MAX / 2);
                }
            }
        }
        send_tcp(env.tcp, &srcs.iter().map(|s| hit_line(s)).collect::<Vec<_>>(), true);
        let mut expected: Vec<IpAddr> = srcs.iter().map(|s| ip(s)).collect();
        expected.sort();
        eventually(WAIT, "the three blocks are pending in the journal", || async {
            pending_blocks(&env) == expected && env.metric("fortimisp_blocks_total{outcome=\"retry\"}").await >= 1.0
        })
        .await;
        daemon.sigkill();
        match outage {
            Outage::Everything => assert!(misp_objects(&env).is_empty(), "{outage:?}"),
            Outage::MemberAdds => {
                eventually(WAIT, "the objects were created before the kill", || async {
                    misp_objects(&env).len() == srcs.len()
                })
                .await
            }
        }
        assert!(srcs.iter().all(|s| !is_member(&env, s)), "{outage:?}: no membership yet");
        let before: Vec<_> = srcs.iter().map(|s| env.fortigate.object(&name(s))).collect();
        env.fortigate.clear_faults();
        env.fortigate.reset_requests();

        let _daemon = env.integration().await;
        all_blocked(&env, &srcs, WAIT).await;
        eventually(WAIT, "nothing pending", || async { pending_blocks(&env).is_empty() }).await;
        for (s, before) in srcs.iter().zip(before) {
            match outage {
                Outage::Everything => {
                    assert_eq!(create_requests(&env, &name(s)), 1, "{s} created exactly once after the restart")
                }
                Outage::MemberAdds => {
                    assert_eq!(env.fortigate.object(&name(s)), before, "{s}: the object made before the kill is kept")
                }
            }
        }
        let member_adds: u64 = ["addrgrp", "addrgrp6"]
            .iter()
            .map(|g| env.fortigate.route_count(&format!("POST /api/v2/cmdb/firewall/{g}/{{name}}/member")))
            .sum();
        assert_eq!(member_adds, srcs.len() as u64, "{outage:?}: one member add per block after the restart");
        let active = journal(&env).active_blocks().await.unwrap();
        assert_eq!(active.len(), srcs.len(), "{outage:?}: one ledger entry per block: {active:?}");
    }
}

/// SIGTERM exits 0 within the contract's 10 s, and what was in flight (lines read, blocks not yet on the
/// FortiGate) is in the journal and lands after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_within_10s_and_loses_nothing() {
    let env = Env::start().await;
    let srcs = ["198.51.100.61", "198.51.100.62", "2001:db8::62"];
    indicators(&env, &srcs);
    let mut daemon = env.integration().await;
    fortigate_down(&env);
    // Slow MISP answers: at SIGTERM the lookups are still in flight, so the decision stage has to drain them.
    env.misp.set_latency(Some(Duration::from_millis(1500)));
    send_tcp(env.tcp, &srcs.iter().map(|s| hit_line(s)).collect::<Vec<_>>(), false);
    eventually(WAIT, "the lines were read", || async {
        env.metric("fortimisp_lines_triggered_total").await >= srcs.len() as f64
    })
    .await;
    let took = daemon.stop_cleanly();
    eprintln!("SIGTERM with blocks and lookups in flight: exited after {took:?}");
    let mut expected: Vec<IpAddr> = srcs.iter().map(|s| ip(s)).collect();
    expected.sort();
    assert_eq!(pending_blocks(&env), expected, "in-flight blocks are journaled (stopped after {took:?})");

    env.fortigate.clear_faults();
    env.misp.set_latency(None);
    let mut idle = env.integration().await;
    all_blocked(&env, &srcs, WAIT).await;

    // An idle daemon stops quickly too.
    idle.stop_cleanly();
}

/// With the mirror on, an indicator soft-deleted in MISP, or whose to_ids flag is turned off, stops blocking at
/// the next (incremental) sync; an untouched one still blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_stops_blocking_deleted_and_non_ids_indicators() {
    let mut env = Env::start().await;
    with_mirror(&mut env);
    let event = env.misp.add_event("Revoked later", true, &[]);
    let deleted = env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.71"));
    let not_ids = env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.72"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.73"));
    let _daemon = env.integration().await;
    mirror_synced(&env).await;
    eventually(WAIT, "the mirror holds the three indicators", || async {
        env.metric("fortimisp_mirror_indicators").await == 3.0
    })
    .await;

    assert!(env.misp.soft_delete(deleted));
    assert!(env.misp.set_to_ids(not_ids, false));
    // Two incremental syncs after the change: at least one started after it.
    let synced = env.metric("fortimisp_mirror_syncs_total{outcome=\"incremental_ok\"}").await;
    eventually(WAIT, "two incremental syncs after the change", || async {
        env.metric("fortimisp_mirror_syncs_total{outcome=\"incremental_ok\"}").await >= synced + 2.0
    })
    .await;
    assert_eq!(env.metric("fortimisp_mirror_indicators").await, 1.0, "the mirror dropped both");

    send_udp(env.udp, &["198.51.100.71", "198.51.100.72", "198.51.100.73"].map(hit_line));
    all_blocked(&env, &["198.51.100.73"], WAIT).await;
    eventually(WAIT, "the mirror answered the other two", || async {
        env.metric("fortimisp_lookups_total{outcome=\"mirror_miss\"}").await >= 2.0
    })
    .await;
    assert_eq!(misp_objects(&env), vec![name("198.51.100.73")], "the deleted and non-IDS indicators do not block");
}

/// Syslog over TLS (octet counting) with the operator's certificate: lines arrive and block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_accepts_octet_counted_lines() {
    let mut env = Env::start().await;
    let ca = TestCa::new();
    let cert = ca.issue_server_cert();
    cert.write_to_dir(env.dir.path()).unwrap();
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], fortimisp_e2e::free_port()));
    let (cert_path, key_path) = (env.dir.path().join("cert.pem"), env.dir.path().join("key.pem"));
    env.tweak(
        "allowed_senders = []",
        &format!(
            "tls = \"{tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nallowed_senders = []",
            cert_path.display(),
            key_path.display()
        ),
    );
    let srcs = ["198.51.100.81", "2001:db8::81"];
    indicators(&env, &srcs);
    let _daemon = env.integration().await;
    send_tls(tls, &ca.ca_pem, &srcs.map(hit_line)).await;
    all_blocked(&env, &srcs, WAIT).await;
    assert_eq!(env.metric("fortimisp_messages_received_total{listener=\"tls\"}").await, 2.0);
}

/// A sender outside `allowed_senders` is dropped and counted, over UDP and TCP; an allowed one blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_outside_the_allowlist_are_dropped_and_counted() {
    for (allowed, blocks) in [("10.0.0.0/8", false), ("127.0.0.1/32", true)] {
        let mut env = Env::start().await;
        env.tweak("allowed_senders = []", &format!("allowed_senders = [\"{allowed}\"]"));
        let srcs = ["198.51.100.91", "198.51.100.92"];
        indicators(&env, &srcs);
        let _daemon = env.integration().await;
        send_udp(env.udp, &[hit_line(srcs[0])]);
        // The refused connection may be reset under our feet; that is the daemon's right.
        let _ = send_tcp_lossy(env.tcp, &[hit_line(srcs[1])]);
        if blocks {
            all_blocked(&env, &srcs, WAIT).await;
            assert_eq!(env.metric("fortimisp_messages_dropped_total{reason=\"sender_not_allowed\"}").await, 0.0);
        } else {
            eventually(WAIT, "both senders refused and counted", || async {
                env.metric("fortimisp_messages_dropped_total{reason=\"sender_not_allowed\"}").await >= 2.0
            })
            .await;
            assert_eq!(env.metric("fortimisp_lines_triggered_total").await, 0.0, "nothing was parsed");
            assert_eq!(env.misp.request_count("attributes/restSearch"), 0, "nothing was looked up");
            assert!(misp_objects(&env).is_empty(), "nothing was blocked");
        }
    }
}

/// Queues a block in the journal as an earlier run would have left it (e.g. during an outage).
async fn leave_pending(env: &Env, address: IpAddr) {
    use fortimisp_core::journal::{ActionKind, NewAction};
    let action = NewAction {
        target: "default".into(),
        kind: ActionKind::Block,
        ip: address,
        reason: "misp-event=1 rule=0".into(),
        event_id: Some(1),
        rule: Some(0),
        comment: None,
        requested_at: chrono::Utc::now(),
    };
    journal(env).enqueue(&action).await.unwrap();
}

/// `dry_run = true`: the decision is logged and journaled, nothing at all is written to the FortiGate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_decides_and_journals_but_changes_nothing() {
    let mut env = Env::start().await;
    env.tweak("dry_run = false", "dry_run = true");
    let srcs = ["198.51.100.95", "2001:db8::95"];
    indicators(&env, &srcs);
    // A real block of an earlier run, still pending: a dry run must leave it for a run that can do it.
    leave_pending(&env, ip(srcs[0])).await;
    let daemon = env.integration().await;
    send_udp(env.udp, &srcs.map(hit_line));
    eventually(WAIT, "both decisions made", || async {
        env.metric("fortimisp_blocks_total{outcome=\"dry_run\"}").await >= 2.0
    })
    .await;
    assert_eq!(fortigate_writes(&env), 0, "no write at all: {:?}", env.fortigate.route_counts());
    assert!(misp_objects(&env).is_empty());
    let decisions = recent_decisions(&env, 10);
    for s in srcs {
        assert!(
            decisions.iter().any(|d| d.ip == ip(s) && d.verdict == "dry-run"),
            "{s} dry-run decision journaled: {decisions:?}"
        );
    }
    assert_eq!(pending_blocks(&env), vec![ip(srcs[0])], "the earlier run's pending block is left alone");
    assert!(daemon.log_text().contains("Dry run: would block."), "decision logged");
}

/// `backend = "banned-ip"`: blocks go to the quarantine list with an expiry, no address objects are made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banned_ip_backend_quarantines() {
    let mut env = Env::start().await;
    env.tweak("requests_per_second = 200", "requests_per_second = 200\nbackend = \"banned-ip\"");
    let srcs = ["198.51.100.97", "2001:db8::97"];
    indicators(&env, &srcs);
    let _daemon = env.integration().await;
    send_udp(env.udp, &srcs.map(hit_line));
    eventually(WAIT, "both addresses banned", || async {
        let banned = env.fortigate.banned();
        srcs.iter().all(|s| banned.iter().any(|b| b.ip == ip(s)))
    })
    .await;
    for b in env.fortigate.banned() {
        assert!(b.expires > b.created, "banned with an expiry (housekeeping.max_age): {b:?}");
    }
    assert!(misp_objects(&env).is_empty(), "no address objects with banned-ip");
    assert_eq!(env.fortigate.route_count("POST /api/v2/cmdb/firewall/address"), 0);

    // By hand: list shows the bans, unblock lifts one.
    let out = env.integration_cmd(&["list"]);
    assert!(out.status.success(), "{}", output_text(&out));
    for s in srcs {
        assert!(stdout(&out).contains(s), "list shows {s}: {}", output_text(&out));
    }
    let out = env.integration_cmd(&["unblock", srcs[0]]);
    assert!(out.status.success(), "{}", output_text(&out));
    let banned: Vec<IpAddr> = env.fortigate.banned().iter().map(|b| b.ip).collect();
    assert_eq!(banned, vec![ip(srcs[1])], "only the unblocked address left the list");
}

/// `sightings = true`: a block adds a sighting (source fortimisp) to the indicator in MISP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_adds_a_misp_sighting() {
    let mut env = Env::start().await;
    env.tweak("sync_interval = \"0s\"", "sync_interval = \"0s\"\nsightings = true");
    let src = "198.51.100.98";
    indicators(&env, &[src]);
    let _daemon = env.integration().await;
    send_udp(env.udp, &[hit_line(src)]);
    all_blocked(&env, &[src], WAIT).await;
    eventually(WAIT, "a sighting for the blocked address", || async {
        env.misp.sightings().iter().any(|s| s.value == src && s.source == "fortimisp" && s.kind == "0")
    })
    .await;
    assert_eq!(env.misp.sightings().len(), 1, "one sighting per block");
}

/// An object that already has our name but not our comment is never touched (the block fails, is reported and
/// is not retried); a legacy `IP/32` member of the block group stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_legacy_objects_are_never_touched() {
    let env = Env::start().await;
    env.fortigate.seed_address("misp-198.51.100.66", "198.51.100.66/32", "hand-made by the firewall team");
    env.fortigate.seed_address("198.51.100.7/32", "198.51.100.7/32", "2023-03-01 10:00:00.123456");
    env.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &["198.51.100.7/32"], "legacy group");
    let foreign_before = env.fortigate.object("misp-198.51.100.66").unwrap();
    let legacy_before = env.fortigate.object("198.51.100.7/32").unwrap();
    indicators(&env, &["198.51.100.66", "198.51.100.7"]);
    let _daemon = env.integration().await;
    send_udp(env.udp, &["198.51.100.66", "198.51.100.7"].map(hit_line));
    all_blocked(&env, &["198.51.100.7"], WAIT).await;
    eventually(WAIT, "the foreign object is reported", || async {
        env.metric("fortimisp_blocks_total{outcome=\"foreign\"}").await >= 1.0
    })
    .await;
    assert_eq!(env.fortigate.object("misp-198.51.100.66").unwrap(), foreign_before, "foreign object untouched");
    assert_eq!(env.fortigate.object("198.51.100.7/32").unwrap(), legacy_before, "legacy object untouched");
    let group = members(&env, "MISP_BLOCK");
    assert!(group.contains(&"198.51.100.7/32".to_string()), "legacy member stays: {group:?}");
    assert!(!group.contains(&"misp-198.51.100.66".to_string()), "foreign object not made a member: {group:?}");
    let changed: Vec<_> = env
        .fortigate
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" || r.method == "DELETE")
        .map(|r| r.path)
        .collect();
    assert!(changed.is_empty(), "no PUT or DELETE ever: {changed:?}");
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output_text(out: &std::process::Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", out.status, stdout(out), String::from_utf8_lossy(&out.stderr))
}

/// `block`, `unblock` and `list` by hand: the daemon's path, the never-block rules (`--force` overrides the
/// operator's list, never the reserved ranges), and foreign objects refused and untouched. Each prints a sentence
/// a person reads on success, and its error once (one `error:` line, no log line repeating it) on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_unblock_and_list_by_hand() {
    let env = Env::start().await;
    env.fortigate.seed_address("misp-198.51.100.66", "198.51.100.66/32", "hand-made by the firewall team");
    let foreign_before = env.fortigate.object("misp-198.51.100.66").unwrap();

    /// The command line, whether it exits 0, whether `misp-<address>` is blocked afterwards, and what it says:
    /// stdout when it succeeds, the one error line when it fails.
    struct Case {
        args: &'static [&'static str],
        ok: bool,
        blocked: Option<(&'static str, bool)>,
        says: &'static str,
    }
    let case = |args, ok, blocked, says| Case { args, ok, blocked, says };
    let cases = [
        case(
            &["block", "198.51.100.40", "--comment", "ticket 42"],
            true,
            Some(("198.51.100.40", true)),
            "blocked 198.51.100.40: address object misp-198.51.100.40 in group MISP_BLOCK",
        ),
        case(
            &["block", "2001:db8::40"],
            true,
            Some(("2001:db8::40", true)),
            "blocked 2001:db8::40: address object misp-2001:db8::40 in group MISP_BLOCK6",
        ),
        case(
            &["block", "2001:db8::40"],
            true,
            Some(("2001:db8::40", true)),
            "2001:db8::40 was already blocked: address object misp-2001:db8::40 in group MISP_BLOCK6",
        ),
        case(
            &["block", "198.51.100.250"],
            false,
            Some(("198.51.100.250", false)),
            "error: 198.51.100.250 is in blocking.never_block (198.51.100.250/32); add --force to block it anyway",
        ),
        case(
            &["block", "198.51.100.250", "--force"],
            true,
            Some(("198.51.100.250", true)),
            "blocked 198.51.100.250: address object misp-198.51.100.250 in group MISP_BLOCK",
        ),
        case(
            &["block", "10.1.2.3", "--force"],
            false,
            Some(("10.1.2.3", false)),
            "error: 10.1.2.3 is in the reserved range 10.0.0.0/8 (private); it can never be blocked",
        ),
        case(
            &["block", "127.0.0.1", "--force"],
            false,
            Some(("127.0.0.1", false)),
            "error: 127.0.0.1 is in the reserved range",
        ),
        case(&["block", "198.51.100.66"], false, None, "error: not blocked: "),
        case(&["unblock", "198.51.100.40"], true, Some(("198.51.100.40", false)), "unblocked 198.51.100.40"),
        case(&["unblock", "198.51.100.66"], false, None, "error: FortiGate: not unblocked: "),
        // For the listing: numeric order puts .9 before .10 and .250, and the comment is the operator's.
        case(
            &["block", "198.51.100.10", "--comment", "ticket 43"],
            true,
            Some(("198.51.100.10", true)),
            "blocked 198.51.100.10",
        ),
        case(&["block", "198.51.100.9"], true, Some(("198.51.100.9", true)), "blocked 198.51.100.9"),
    ];
    for Case { args, ok, blocked, says } in cases {
        let out = env.integration_cmd(args);
        assert_eq!(out.status.success(), ok, "{args:?}: {}", output_text(&out));
        if ok {
            assert!(stdout(&out).starts_with(says), "{args:?}: want {says:?}: {}", output_text(&out));
            assert_eq!(stdout(&out).lines().count(), 1, "{args:?}: one sentence: {}", output_text(&out));
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let error = stderr.lines().find(|l| l.starts_with(says));
            let error = error.unwrap_or_else(|| panic!("{args:?}: want {says:?}: {}", output_text(&out)));
            let detail = error.rsplit(": ").next().unwrap();
            assert_eq!(stderr.matches(detail).count(), 1, "{args:?}: the error once: {}", output_text(&out));
        }
        if let Some((src, exists)) = blocked {
            assert_eq!(env.fortigate.object(&name(src)).is_some(), exists, "{args:?}: object {src}");
            assert_eq!(is_member(&env, src), exists, "{args:?}: membership of {src}");
        }
    }
    let (_, object) = env.fortigate.object("misp-2001:db8::40").unwrap();
    assert!(object["comment"].as_str().unwrap().starts_with("fortimisp 20"), "our marker: {object}");
    assert_eq!(env.fortigate.object("misp-198.51.100.66").unwrap(), foreign_before, "foreign object untouched");

    let out = env.integration_cmd(&["list"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let listing = stdout(&out);
    let lines: Vec<&str> = listing.lines().collect();
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split_whitespace().collect()).collect();
    let ips: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(
        ips,
        ["198.51.100.9", "198.51.100.10", "198.51.100.250", "2001:db8::40"],
        "sorted by address:\n{listing}"
    );
    // Columns as wide as their content: the widest IP, then two spaces.
    let widest = ips.iter().map(|ip| ip.len()).max().unwrap();
    assert_eq!(widest, "198.51.100.250".len());
    assert_eq!(lines[0].find("OBJECT"), Some(widest + 2), "{listing}");
    let ticket = lines.iter().find(|l| l.starts_with("198.51.100.10 ")).unwrap();
    assert!(ticket.ends_with("  manual  ticket 43"), "the operator's comment:\n{listing}");
    assert!(!listing.contains("misp-event="), "no repeated event:\n{listing}");
    for hidden in ["misp-198.51.100.40", "misp-198.51.100.66"] {
        assert!(!listing.contains(hidden), "list hides {hidden}:\n{listing}");
    }
}

/// `integration block --comment` with characters FortiOS refuses in comments (`"` `'` `<` `>` `&` `#` `(` `)`):
/// they are replaced by `_` as the README says, and the block goes through (the emulator refuses them like FortiOS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_comment_with_refused_characters_is_replaced() {
    let env = Env::start().await;
    let out = env.integration_cmd(&["block", "198.51.100.41", "--comment", r#"ticket "42" <urgent> & (ops) #7 'x'"#]);
    assert!(out.status.success(), "{}", output_text(&out));
    let (_, object) = env.fortigate.object("misp-198.51.100.41").expect("blocked");
    let comment = object["comment"].as_str().expect("comment");
    assert!(comment.ends_with(" misp-event=manual ticket _42_ _urgent_ _ _ops_ _7 _x_"), "{comment}");
    assert!(is_member(&env, "198.51.100.41"));
}

/// `lookup` prints one decision, with its reason, without changing anything; `validate` exits 0 against healthy
/// emulators and 1 when the FortiGate refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_and_validate() {
    let env = Env::start().await;
    let event = env.misp.add_event("Lookups", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.31"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.32").to_ids(false));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.250"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.34"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "10.1.2.3"));
    env.misp.add_warninglist("Known good", "cidr", &["198.51.100.34/32"]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "203.0.113.128/26"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8:77::/64"));
    let cases = [
        ("198.51.100.31", "would block: MISP lists it as a blocking indicator"),
        ("203.0.113.130", "would block: MISP lists it as a blocking indicator"),
        ("2001:db8:77::9", "would block: MISP lists it as a blocking indicator"),
        ("203.0.113.127", "would not block: MISP has no blocking indicator for it"),
        ("198.51.100.32", "would not block: MISP has it, but no attribute passes the [misp] filters"),
        ("198.51.100.33", "would not block: MISP has no blocking indicator for it"),
        ("198.51.100.34", "would not block: on MISP warninglist \"Known good\" (misp.enforce_warninglist)"),
        ("198.51.100.250", "not blocked: never_block 198.51.100.250/32 (integration block --force overrides it)"),
        ("10.1.2.3", "never blocked: reserved range 10.0.0.0/8 (private); nothing overrides the reserved ranges"),
    ];
    for (address, expected) in cases {
        let out = env.integration_cmd(&["lookup", address]);
        assert!(out.status.success(), "lookup {address}: {}", output_text(&out));
        let text = stdout(&out);
        let decisions: Vec<&str> = text.lines().filter(|l| l.starts_with("decision:")).collect();
        assert_eq!(decisions, [format!("decision: {expected}")], "lookup {address}: {}", output_text(&out));
        assert!(!text.contains("counts as a hit"), "lookup {address}: {}", output_text(&out));
    }
    assert_eq!(fortigate_writes(&env), 0, "lookup changes nothing");

    let out = env.integration_cmd(&["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    env.fortigate.revoke_token();
    let out = env.integration_cmd(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(stdout(&out).contains("FAIL  fortigate"), "{}", output_text(&out));
}

/// On-demand lookups (no mirror: the test config's `sync_interval = "0s"`) see CIDR indicators, which an exact
/// restSearch never returns; both families; the CIDR set is loaded once, not per lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_lookups_see_cidr_indicators() {
    let env = Env::start().await;
    let event = env.misp.add_event("Scanners", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "203.0.113.128/26"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8:77::/64"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.64/26").to_ids(false));
    let _daemon = env.integration().await;
    let srcs = ["203.0.113.130", "203.0.113.190", "2001:db8:77::9"];
    send_tcp(env.tcp, &srcs.map(hit_line), false);
    all_blocked(&env, &srcs, WAIT).await;
    send_tcp(env.tcp, &[hit_line("198.51.100.70"), hit_line("203.0.113.127")], false);
    eventually(WAIT, "the two clean lines were looked up", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_miss\"}").await >= 2.0
    })
    .await;
    assert!(!is_member(&env, "198.51.100.70"), "a CIDR without to_ids does not block");
    assert!(!is_member(&env, "203.0.113.127"), "outside the CIDR");
    let cidr_loads = env
        .misp
        .requests()
        .iter()
        .filter(|r| r.route == "attributes/restSearch" && r.body.to_string().contains("%/%"))
        .count();
    assert_eq!(cidr_loads, 1, "one load of the CIDR indicators serves every lookup (within lookup_cache_ttl)");
}

/// `replay FILE` blocks from a file of lines through the daemon's stages; `--dry-run` changes nothing, not even
/// the blocks another run left pending in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_blocks_from_a_file_and_dry_run_changes_nothing() {
    let env = Env::start().await;
    let srcs = ["198.51.100.35", "2001:db8::35"];
    indicators(&env, &srcs);
    // A block the daemon left pending (e.g. during an outage) must survive a dry run.
    let pending = ip("198.51.100.36");
    leave_pending(&env, pending).await;
    let file = env.dir.path().join("replay.log");
    let mut lines: Vec<String> = srcs.iter().map(|s| hit_line(s)).collect();
    lines.push(hit_line("198.51.100.37"));
    lines.push("not a log line".into());
    lines.push(hit_line(srcs[0]));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.to_str().unwrap();

    let out = env.integration_cmd(&["replay", file, "--dry-run"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stdout(&out).contains("dry run 2"), "summary counts the two decisions: {}", output_text(&out));
    assert_eq!(fortigate_writes(&env), 0, "dry run writes nothing: {:?}", env.fortigate.route_counts());
    assert_eq!(pending_blocks(&env), vec![pending], "the pending block is left for the daemon");

    let out = env.integration_cmd(&["replay", file]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(stdout(&out).contains("lines 5"), "{}", output_text(&out));
    all_blocked(&env, &srcs, WAIT).await;
    assert!(env.fortigate.object("misp-198.51.100.37").is_none(), "a clean address is not blocked");
}

/// SIGTERM while MISP hangs and the FortiGate fails: the daemon still exits 0 within the contract's 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_10s_even_when_misp_hangs() {
    let env = Env::start().await;
    let srcs = ["198.51.100.63", "198.51.100.64"];
    indicators(&env, &srcs);
    let mut daemon = env.integration().await;
    fortigate_down(&env);
    env.misp.set_latency(Some(Duration::from_secs(60)));
    send_tcp(env.tcp, &srcs.map(hit_line), false);
    eventually(WAIT, "the lines were read", || async {
        env.metric("fortimisp_lines_triggered_total").await >= srcs.len() as f64
    })
    .await;
    let took = daemon.stop_cleanly();
    eprintln!("SIGTERM with MISP hanging: exited after {took:?}");
}

/// `max_blocks_per_minute`: beyond it, blocks wait in the journal and the alert metric is set; they survive a
/// restart and land once the rail allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_beyond_max_blocks_per_minute_wait_in_the_journal() {
    let mut env = Env::start().await;
    env.tweak("max_blocks_per_minute = 600", "max_blocks_per_minute = 1");
    let srcs = ["198.51.100.131", "198.51.100.132", "198.51.100.133"];
    indicators(&env, &srcs);
    let mut daemon = env.integration().await;
    send_udp(env.udp, &srcs.map(hit_line));
    eventually(WAIT, "one block made, the rail up, two waiting in the journal", || async {
        env.metric("fortimisp_block_rate_limited").await == 1.0
            && misp_objects(&env).len() == 1
            && pending_blocks(&env).len() == 2
    })
    .await;
    assert_eq!(env.metric("fortimisp_pending_actions").await, 2.0);
    daemon.stop_cleanly();
    assert_eq!(pending_blocks(&env).len(), 2, "the waiting blocks stay in the journal");

    env.tweak("max_blocks_per_minute = 1", "max_blocks_per_minute = 600");
    let _daemon = env.integration().await;
    all_blocked(&env, &srcs, WAIT).await;
    assert_eq!(env.metric("fortimisp_block_rate_limited").await, 0.0);
}

/// `replay` while the FortiGate fails (500s, or the token refused): the command ends (non-zero), leaving the
/// blocks pending in the journal for the daemon, which completes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_during_an_outage_ends_and_leaves_the_blocks_to_the_daemon() {
    for revoked in [false, true] {
        let env = Env::start().await;
        let srcs = ["198.51.100.141", "2001:db8::141"];
        indicators(&env, &srcs);
        let file = env.dir.path().join("replay.log");
        std::fs::write(&file, srcs.map(hit_line).join("\n")).unwrap();
        if revoked {
            env.fortigate.revoke_token();
        } else {
            fortigate_down(&env);
        }
        let out =
            env.integration_cmd_within(&["replay", file.to_str().unwrap()], Duration::from_secs(40)).unwrap_or_else(
                || panic!("replay ends within 40 s although the FortiGate keeps failing (revoked: {revoked})"),
            );
        assert!(!out.status.success(), "blocks not done: {}", output_text(&out));
        assert!(stdout(&out).contains("left pending 2"), "{}", output_text(&out));
        let mut expected: Vec<IpAddr> = srcs.iter().map(|s| ip(s)).collect();
        expected.sort();
        assert_eq!(pending_blocks(&env), expected, "left pending in the journal: {}", output_text(&out));

        env.fortigate.clear_faults();
        env.fortigate.set_token(&env.fortigate.token());
        let _daemon = env.integration().await;
        all_blocked(&env, &srcs, WAIT).await;
    }
}

/// MISP failing during on-demand lookups: nothing is blocked or cached from a failed answer, and the next line
/// for the address, once MISP answers again, blocks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_outage_is_not_cached_and_the_next_line_blocks() {
    use fortimisp_e2e::fortimisp_testkit::misp::{Fault as MispFault, FaultRule};
    let env = Env::start().await;
    let src = "198.51.100.151";
    indicators(&env, &[src]);
    let _daemon = env.integration().await;
    env.misp.inject(FaultRule {
        route: Some("attributes/restSearch".into()),
        page: None,
        times: None,
        fault: MispFault::html(500),
    });
    send_udp(env.udp, &[hit_line(src)]);
    eventually(WAIT, "the lookup failed", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    assert!(misp_objects(&env).is_empty());
    env.misp.clear_faults();
    send_udp(env.udp, &[hit_line(src)]);
    all_blocked(&env, &[src], WAIT).await;
}

/// `unblock IP` also closes a block of that address still pending in the journal, so the daemon's next start does
/// not undo the operator's decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_unblock_cancels_a_pending_block() {
    let env = Env::start().await;
    let (kept, unblocked) = (ip("198.51.100.97"), ip("198.51.100.98"));
    leave_pending(&env, kept).await;
    leave_pending(&env, unblocked).await;
    let out = env.integration_cmd(&["unblock", "198.51.100.98"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled 1 pending block"));
    assert_eq!(pending_blocks(&env), [kept]);
    // The daemon resumes only the other one.
    let _daemon = env.integration().await;
    eventually(WAIT, "the kept block lands", || async { is_member(&env, "198.51.100.97") }).await;
    eventually(WAIT, "nothing is left pending", || async { pending_blocks(&env).is_empty() }).await;
    assert!(env.fortigate.object(&name("198.51.100.98")).is_none(), "the unblocked address stays unblocked");
}

/// `unblock IP` journals the pending unblock before it touches the FortiGate: when the FortiGate keeps refusing
/// the delete (503), the command fails and the unblock stays pending in the journal with the error; run again once
/// the FortiGate answers, the same action completes and the ledger closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_unblock_is_journalled_before_the_fortigate_is_touched() {
    let env = Env::start().await;
    let out = env.integration_cmd(&["block", "198.51.100.71"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let delete = "DELETE /api/v2/cmdb/firewall/address/{name}";
    env.fortigate.inject(Some(delete), Fault::Status(503), 100);

    let out = env.integration_cmd(&["unblock", "198.51.100.71"]);
    assert!(!out.status.success(), "a refused delete fails the command: {}", output_text(&out));
    assert!(env.fortigate.route_count(delete) >= 1, "the delete was tried");
    let unblocks = |env: &Env| {
        env.journal_rows("SELECT id, ip, reason, state, attempts, last_error FROM actions WHERE kind = 'unblock'")
    };
    let rows = unblocks(&env);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let [id, addr, reason, state, attempts, last_error] = rows[0].clone().try_into().expect("six columns");
    assert_eq!(
        (addr.as_str(), reason.as_str(), state.as_str(), attempts.as_str()),
        ("198.51.100.71", "manual", "pending", "1")
    );
    assert!(last_error.contains("503"), "{last_error}");

    env.fortigate.clear_faults();
    let out = env.integration_cmd(&["unblock", "198.51.100.71"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(env.fortigate.object(&name("198.51.100.71")).is_none());
    let rows = unblocks(&env);
    assert_eq!((rows.len(), rows[0][0].as_str(), rows[0][3].as_str()), (1, id.as_str(), "done"), "{rows:?}");
    let ledger = env.journal_rows("SELECT unblock_reason FROM blocks WHERE ip = '198.51.100.71'");
    assert_eq!(ledger, [["manual".to_string()]]);
}
