//! The fault matrix: the real `integration` binary against emulators told to fail (MISP down, slow, broken,
//! rotated key, a sync cut halfway; FortiGate 401, 429, 5xx, timeouts, resets, -5, -52, -23; an unwritable
//! journal; a UDP flood of garbage and hostile datagrams).
//!
//! Every case ends with the same audit ([`audit`]): every address the daemon decided to block is a member of a
//! block group or has a journaled failure with a reason (or is still pending in the journal, where a restart
//! resumes it), no object is a member twice, foreign objects are byte-for-byte unchanged, and the daemon is still
//! running.
//!
//! Outages are short (seconds, not the two minutes) to keep the suite fast; the retry loops under test do
//! not depend on the outage's length, only on it ending.

use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use fortimisp_core::journal::Journal;
use fortimisp_e2e::fortimisp_testkit::fortigate::{Fault as FgFault, Table};
use fortimisp_e2e::fortimisp_testkit::misp::{AttributeSpec, Fault, FaultRule};
use fortimisp_e2e::{eventually, journal, members, recent_decisions, send_udp, traffic_line, Daemon, Env};
use serde_json::Value;

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A forward-traffic line from `src` that matches the test trigger (policy 7, accept).
pub(crate) fn hit_line(src: &str) -> String {
    traffic_line(ip(src), ip("203.0.113.1"), 7, "accept")
}

/// One published event with an `ip-src` IDS attribute per address.
pub(crate) fn add_hits(env: &Env, ips: &[&str]) -> u64 {
    let event = env.misp.add_event("fault matrix", true, &[]);
    for a in ips {
        env.misp.add_attribute(event, AttributeSpec::new("ip-src", *a));
    }
    event
}

/// Every block group (base and overflow) with its members.
pub(crate) fn all_groups(env: &Env) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for table in [Table::Addrgrp, Table::Addrgrp6] {
        for g in env.fortigate.names(table) {
            out.insert(g.clone(), env.fortigate.members(&g).unwrap_or_default());
        }
    }
    out
}

/// Whether `name` is a member of any block group.
pub(crate) fn is_blocked(env: &Env, addr: &str) -> bool {
    let name = format!("misp-{addr}");
    all_groups(env).values().any(|m| m.contains(&name))
}

pub(crate) async fn wait_blocked(env: &Env, addrs: &[&str]) {
    for a in addrs {
        eventually(WAIT, &format!("{a} is blocked"), || async { is_blocked(env, a) }).await;
    }
}

/// A snapshot of objects that fortimisp must never touch.
pub(crate) fn snapshot(env: &Env, names: &[&str]) -> Vec<(String, Option<Value>)> {
    names.iter().map(|n| (n.to_string(), env.fortigate.object(n).map(|(_, v)| v))).collect()
}

/// The end-of-case audit (see the module doc). `decided` are the addresses the daemon was expected to decide to
/// block; each must be blocked, pending in the journal, or failed with a journaled reason.
pub(crate) fn audit(env: &Env, daemon: &mut Daemon, decided: &[&str], foreign: &[(String, Option<Value>)]) {
    assert!(daemon.is_running(), "the daemon died; log:\n{}", daemon.log_text());
    let groups = all_groups(env);
    for (group, m) in &groups {
        let mut seen = std::collections::HashSet::new();
        for name in m {
            assert!(seen.insert(name), "{name} is a member of {group} twice: {m:?}");
        }
    }
    // An address is a member of at most one block group.
    let mut where_: HashMap<&str, &str> = HashMap::new();
    for (group, m) in &groups {
        for name in m.iter().filter(|n| n.starts_with("misp-") && !n.starts_with("misp-placeholder")) {
            if let Some(other) = where_.insert(name, group) {
                panic!("{name} is in two block groups: {other} and {group}");
            }
        }
    }
    // No address has two objects of ours (whatever their names).
    let mut ips = HashMap::new();
    for (table, field) in [(Table::Address, "subnet"), (Table::Address6, "ip6")] {
        for name in env.fortigate.names(table) {
            let Some((_, object)) = env.fortigate.object(&name) else { continue };
            if !object["comment"].as_str().unwrap_or_default().starts_with("fortimisp 20") {
                continue;
            }
            let network = object[field].as_str().unwrap_or_default().to_string();
            if let Some(other) = ips.insert(network.clone(), name.clone()) {
                panic!("two objects for {network}: {other} and {name}");
            }
        }
    }
    for (name, before) in foreign {
        let now = env.fortigate.object(name).map(|(_, v)| v);
        assert_eq!(&now, before, "foreign object {name} was touched");
    }
    let decisions = recent_decisions(env, 10_000);
    let pending: Vec<IpAddr> = if env.state.exists() {
        env.journal_rows("SELECT ip FROM actions WHERE state = 'pending'").iter().map(|r| ip(&r[0])).collect()
    } else {
        Vec::new()
    };
    for a in decided {
        let addr = ip(a);
        if is_blocked(env, a) {
            let (_, object) = env.fortigate.object(&format!("misp-{a}")).expect("a member has an object");
            let comment = object["comment"].as_str().unwrap_or_default();
            assert!(comment.starts_with("fortimisp 20"), "{a}: comment is not our marker: {comment}");
            continue;
        }
        if pending.contains(&addr) {
            continue;
        }
        let failed = decisions.iter().find(|d| d.ip == addr && d.verdict == "failed");
        match failed {
            Some(d) => assert!(!d.detail.is_empty(), "{a}: failed without a reason"),
            None => panic!(
                "{a} was decided but is neither blocked, pending nor failed with a reason; decisions {:?}; log:\n{}",
                decisions.iter().filter(|d| d.ip == addr).collect::<Vec<_>>(),
                daemon.log_text()
            ),
        }
    }
}

/// Starts the daemon and waits until its start-up calls (MISP check, groups, existing blocks) are done, so faults
/// injected afterwards hit the stage under test. (`/healthz` answers as soon as the metrics server is up.)
pub(crate) async fn start(env: &Env) -> Daemon {
    let daemon = env.integration().await;
    eventually(WAIT, "the daemon finished starting", || async {
        daemon.log_text().contains("fortimisp integration running")
    })
    .await;
    daemon
}

/// VmRSS of a process in KiB.
pub(crate) fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// ---- MISP ------------------------------------------------------------------------------------------------------

/// MISP unreachable when the daemon starts (every connection closed without an answer): the daemon starts anyway,
/// counts the failed lookups, and blocks on the next line once MISP is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_down_at_start() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.60"]);
    env.misp.inject(FaultRule { route: None, page: None, times: None, fault: Fault::Drop });
    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.60")]);
    eventually(WAIT, "the failed lookup is counted", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    assert!(!is_blocked(&env, "198.51.100.60"));
    env.misp.clear_faults();
    // Nothing is cached from a failed lookup: the next line for the address asks again.
    send_udp(env.udp, &[hit_line("198.51.100.60")]);
    wait_blocked(&env, &["198.51.100.60"]).await;
    assert!(daemon.log_text().contains("MISP not reachable at start"), "start-up warning missing");
    audit(&env, &mut daemon, &["198.51.100.60"], &[]);
}

/// MISP goes away mid-run (a few seconds of 502 pages here; the decision stage's behaviour does not depend on the
/// length): blocks made before stay, lines during the outage are counted as failed lookups, the first line after
/// it blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_outage_mid_run() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.61", "198.51.100.62"]);
    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.61")]);
    wait_blocked(&env, &["198.51.100.61"]).await;
    env.misp.inject(FaultRule { route: None, page: None, times: None, fault: Fault::html(502) });
    send_udp(env.udp, &[hit_line("198.51.100.62")]);
    eventually(WAIT, "the lookup during the outage fails", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    assert!(!is_blocked(&env, "198.51.100.62"));
    env.misp.clear_faults();
    send_udp(env.udp, &[hit_line("198.51.100.62")]);
    wait_blocked(&env, &["198.51.100.62"]).await;
    assert!(is_blocked(&env, "198.51.100.61"), "a block made before the outage is still there");
    audit(&env, &mut daemon, &["198.51.100.61", "198.51.100.62"], &[]);
}

/// A MISP that takes 5 s per answer (under `misp.timeout`): lookups are slow, not failed; lines keep being read
/// meanwhile and the block lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_slow() {
    let mut env = Env::start().await;
    env.tweak("timeout = \"5s\"\nsync_interval", "timeout = \"10s\"\nsync_interval");
    add_hits(&env, &["198.51.100.63"]);
    let mut daemon = start(&env).await;
    env.misp.set_latency(Some(Duration::from_secs(5)));
    let started = Instant::now();
    send_udp(env.udp, &[hit_line("198.51.100.63")]);
    // While the lookup waits, the listener keeps reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_udp(env.udp, &[traffic_line(ip("198.51.100.99"), ip("203.0.113.1"), 8, "accept")]);
    eventually(WAIT, "the untriggered line was read during the slow lookup", || async {
        env.metric("fortimisp_lines_untriggered_total").await >= 1.0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "the listener waited for MISP");
    wait_blocked(&env, &["198.51.100.63"]).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await, 0.0);
    env.misp.clear_faults();
    audit(&env, &mut daemon, &["198.51.100.63"], &[]);
}

/// MISP answers 500 with PHP's HTML page, then 200 with truncated JSON: both are failed lookups (retried by the
/// client, then forgotten), nothing is blocked on a broken answer, and the next good answer blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_html_500_and_invalid_json() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.64"]);
    let mut daemon = start(&env).await;
    for fault in [Fault::html(500), Fault::InvalidJson] {
        env.misp.inject(FaultRule {
            route: Some("attributes/restSearch".into()),
            page: None,
            times: None,
            fault: fault.clone(),
        });
        let before = env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await;
        send_udp(env.udp, &[hit_line("198.51.100.64")]);
        eventually(WAIT, &format!("{fault:?} counted as a failed lookup"), || async {
            env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await > before
        })
        .await;
        assert!(!is_blocked(&env, "198.51.100.64"), "blocked on a broken answer ({fault:?})");
        env.misp.clear_faults();
    }
    assert!(daemon.is_running());
    send_udp(env.udp, &[hit_line("198.51.100.64")]);
    wait_blocked(&env, &["198.51.100.64"]).await;
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");
    audit(&env, &mut daemon, &["198.51.100.64"], &[]);
}

/// The MISP key is rotated under the daemon: 403 "Authentication failed" is not retried in a loop, nothing is
/// blocked, the error is logged; a restart with the new key blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_key_rotation() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.65"]);
    let mut daemon = start(&env).await;
    let new_key = "ROTATEDkey0123456789abcdefghijABCDEFGHIJ";
    env.misp.rotate_key(new_key);
    env.misp.reset_records();
    send_udp(env.udp, &[hit_line("198.51.100.65")]);
    eventually(WAIT, "the 403 is counted as a failed lookup", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    assert_eq!(env.misp.request_count("attributes/restSearch"), 1, "a refused key must not be retried");
    assert!(!is_blocked(&env, "198.51.100.65"));
    assert!(daemon.log_text().contains("MISP lookup failed"), "error not logged:\n{}", daemon.log_text());
    audit(&env, &mut daemon, &[], &[]);
    daemon.stop_cleanly();
    // The operator puts the new key in the config (the harness writes the emulator's current key) and restarts.
    assert_eq!(env.misp.key(), new_key);
    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.65")]);
    wait_blocked(&env, &["198.51.100.65"]).await;
    audit(&env, &mut daemon, &["198.51.100.65"], &[]);
}

/// The local mirror: a full sync (20 000 attributes in 4 pages of 5 000 — 1 M takes minutes in a debug build)
/// that fails on page 3 changes nothing: the mirror keeps answering from its last good state (the new attribute
/// is not in it yet), and takes the new state once a full sync completes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sync_interrupted_halfway_keeps_last_good_state() {
    let mut env = Env::start().await;
    env.tweak("sync_interval = \"0s\"", "sync_interval = \"1s\"\nfull_sync_interval = \"1s\"");
    env.misp.add_synthetic(20_000, "45.0.0.0".parse().unwrap(), 1_700_000_000);
    let mut daemon = start(&env).await;
    eventually(Duration::from_secs(60), "the first full sync completes", || async {
        env.metric("fortimisp_mirror_indicators").await == 20_000.0
    })
    .await;
    env.misp.fail_page(3, u32::MAX, Fault::html(500));
    let errors = env.metric("fortimisp_mirror_syncs_total{outcome=\"error\"}").await;
    add_hits(&env, &["198.51.100.66"]);
    eventually(Duration::from_secs(60), "two full syncs fail on page 3", || async {
        env.metric("fortimisp_mirror_syncs_total{outcome=\"error\"}").await >= errors + 2.0
    })
    .await;
    assert_eq!(env.metric("fortimisp_mirror_indicators").await, 20_000.0, "a failed sync changed the mirror");
    // The last good state still answers: an old indicator blocks, the new one is not known yet.
    send_udp(env.udp, &[hit_line("45.0.0.9"), hit_line("198.51.100.66")]);
    wait_blocked(&env, &["45.0.0.9"]).await;
    eventually(WAIT, "both lines were answered by the mirror", || async {
        env.metric("fortimisp_lookups_total{outcome=\"mirror_miss\"}").await >= 1.0
    })
    .await;
    assert!(!is_blocked(&env, "198.51.100.66"));
    assert_eq!(env.metric("fortimisp_misp_lookup_requests_total").await, 0.0, "the mirror answers alone");
    env.misp.clear_faults();
    eventually(Duration::from_secs(60), "a full sync completes again", || async {
        env.metric("fortimisp_mirror_indicators").await == 20_001.0
    })
    .await;
    send_udp(env.udp, &[hit_line("198.51.100.66")]);
    wait_blocked(&env, &["198.51.100.66"]).await;
    audit(&env, &mut daemon, &["45.0.0.9", "198.51.100.66"], &[]);
}

// ---- FortiGate -------------------------------------------------------------------------------------------------

/// The token is revoked: the first 401 stops every write (no retry, so the box never locks us out), the alert
/// gauge goes to 1, new decisions are journaled as pending; once the token works again a restart resumes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_401_stops_writes_alerts_and_keeps_journaling() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.70", "198.51.100.71"]);
    let mut daemon = start(&env).await;
    env.fortigate.revoke_token();
    env.fortigate.reset_requests();
    send_udp(env.udp, &[hit_line("198.51.100.70")]);
    eventually(WAIT, "fortimisp_fortigate_unauthorized = 1", || async {
        env.metric("fortimisp_fortigate_unauthorized").await == 1.0
    })
    .await;
    let after_401 = env.fortigate.total_requests();
    assert_eq!(after_401, 1, "a 401 must not be retried: {:?}", env.fortigate.route_counts());
    send_udp(env.udp, &[hit_line("198.51.100.71")]);
    eventually(WAIT, "both blocks wait in the journal", || async {
        env.metric("fortimisp_pending_actions").await == 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.fortigate.total_requests(), after_401, "writes continued after a 401");
    let pending: Vec<IpAddr> = journal(&env).pending().await.unwrap().iter().map(|p| p.ip).collect();
    assert!(pending.contains(&ip("198.51.100.70")) && pending.contains(&ip("198.51.100.71")), "{pending:?}");
    assert!(daemon.log_text().contains("FortiGate refused our credentials"), "no loud error");
    audit(&env, &mut daemon, &["198.51.100.70", "198.51.100.71"], &[]);
    // The operator fixes the token and restarts: nothing was lost.
    env.fortigate.set_token(&env.fortigate.token());
    daemon.stop_cleanly();
    let mut daemon = start(&env).await;
    wait_blocked(&env, &["198.51.100.70", "198.51.100.71"]).await;
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized").await, 0.0);
    audit(&env, &mut daemon, &["198.51.100.70", "198.51.100.71"], &[]);
}

/// 429 from the FortiGate: backed off and retried (client retries, then the blocker's own backoff), blocked in
/// the end, one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_429_backs_off() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.72"]);
    let mut daemon = start(&env).await;
    env.fortigate.reset_requests();
    // More than the client's 4 attempts: the blocker must come back to it.
    env.fortigate.throttle_next(6);
    let started = Instant::now();
    send_udp(env.udp, &[hit_line("198.51.100.72")]);
    wait_blocked(&env, &["198.51.100.72"]).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "no backoff between 429s");
    assert!(env.metric("fortimisp_blocks_total{outcome=\"retry\"}").await >= 1.0);
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized").await, 0.0, "429 is not an auth failure");
    audit(&env, &mut daemon, &["198.51.100.72"], &[]);
}

/// 5xx pages, connections closed without an answer, and answers slower than `fortigate.timeout`: all retried;
/// every address ends blocked exactly once (a timed-out create that did happen is adopted, not duplicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_5xx_resets_and_timeouts() {
    let mut env = Env::start().await;
    env.tweak("requests_per_second = 200\ntimeout = \"5s\"", "requests_per_second = 200\ntimeout = \"1s\"");
    let ips = ["198.51.100.73", "198.51.100.74", "198.51.100.75"];
    add_hits(&env, &ips);
    let mut daemon = start(&env).await;
    env.fortigate.inject(None, FgFault::Status(500), 2);
    env.fortigate.inject(None, FgFault::Status(503), 1);
    env.fortigate.inject(None, FgFault::Drop, 3);
    send_udp(env.udp, &[hit_line(ips[0])]);
    wait_blocked(&env, &ips[..1]).await;
    // Every answer now takes longer than the client's timeout, for a while.
    let retries = env.metric("fortimisp_blocks_total{outcome=\"retry\"}").await;
    env.fortigate.set_latency(Duration::from_millis(1500));
    send_udp(env.udp, &[hit_line(ips[1]), hit_line(ips[2])]);
    eventually(WAIT, "timeouts are retried", || async {
        env.metric("fortimisp_blocks_total{outcome=\"retry\"}").await > retries
    })
    .await;
    env.fortigate.clear_faults();
    wait_blocked(&env, &ips).await;
    assert_eq!(env.fortigate.names(Table::Address).iter().filter(|n| n.starts_with("misp-198.51.100.7")).count(), 3);
    audit(&env, &mut daemon, &ips, &[]);
}

/// -5 on create: an object of ours that already exists is adopted (made a member, left as it is); an object with
/// our name but someone else's comment is never touched and the block is reported failed with the reason; a
/// foreign member of the block group stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_exists_adopts_ours_and_leaves_foreign() {
    let env = Env::start().await;
    let ours = "fortimisp 2026-01-01T00:00:00Z misp-event=1 left over by an earlier run";
    env.fortigate.seed_address("misp-198.51.100.80", "198.51.100.80 255.255.255.255", ours);
    env.fortigate.seed_address("misp-198.51.100.81", "198.51.100.81 255.255.255.255", "web server, do not touch");
    env.fortigate.seed_address("admin-host", "192.0.2.10 255.255.255.255", "added by hand");
    add_hits(&env, &["198.51.100.80", "198.51.100.81", "198.51.100.82"]);
    let mut daemon = start(&env).await;
    let mut m = members(&env, "MISP_BLOCK");
    m.push("admin-host".into());
    let refs: Vec<&str> = m.iter().map(String::as_str).collect();
    env.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &refs, "fortimisp block group");
    let foreign = snapshot(&env, &["misp-198.51.100.81", "admin-host"]);
    send_udp(env.udp, &[hit_line("198.51.100.80"), hit_line("198.51.100.81"), hit_line("198.51.100.82")]);
    wait_blocked(&env, &["198.51.100.80", "198.51.100.82"]).await;
    eventually(WAIT, "the foreign object is reported", || async {
        env.metric("fortimisp_blocks_total{outcome=\"foreign\"}").await == 1.0
    })
    .await;
    let (_, adopted) = env.fortigate.object("misp-198.51.100.80").unwrap();
    assert_eq!(adopted["comment"], ours, "an adopted object is left as it is");
    assert!(!is_blocked(&env, "198.51.100.81"));
    assert!(members(&env, "MISP_BLOCK").contains(&"admin-host".to_string()), "a foreign member was removed");
    let decisions = recent_decisions(&env, 100);
    let failed = decisions.iter().find(|d| d.ip == ip("198.51.100.81")).expect("a journaled decision");
    assert_eq!(failed.verdict, "failed");
    assert!(failed.detail.contains("not fortimisp's"), "{failed:?}");
    audit(&env, &mut daemon, &["198.51.100.80", "198.51.100.81", "198.51.100.82"], &foreign);
}

/// Group limits: past `max_group_members` the next address goes to the overflow group `MISP_BLOCK-2`, nested in
/// `MISP_BLOCK`. When the box itself answers -52 because the base group has no slot left to nest the next overflow
/// group, the client moves one of its own addresses from the base group into the new overflow group to make room,
/// nests it, and the block lands: every address stays in exactly one block group, nothing retried in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_group_full_overflows_by_nesting() {
    let mut env = Env::start().await;
    env.tweak("vdom = \"root\"", "vdom = \"root\"\nmax_group_members = 2");
    let ips = ["198.51.100.83", "198.51.100.84", "198.51.100.85", "198.51.100.86", "198.51.100.87"];
    add_hits(&env, &ips);
    let mut daemon = start(&env).await;
    for a in &ips[..3] {
        send_udp(env.udp, &[hit_line(a)]);
        wait_blocked(&env, &[a]).await;
    }
    assert!(members(&env, "MISP_BLOCK").contains(&"MISP_BLOCK-2".to_string()), "overflow group not nested");
    assert!(members(&env, "MISP_BLOCK-2").contains(&"misp-198.51.100.85".to_string()));
    // The box now takes no more than 4 entries per group: MISP_BLOCK (placeholder, 2 addresses, MISP_BLOCK-2) is
    // full, MISP_BLOCK-2 takes one more; nesting MISP_BLOCK-3 answers -52 until an address moves out of the base.
    env.fortigate.set_group_member_limit(4);
    send_udp(env.udp, &[hit_line(ips[3])]);
    wait_blocked(&env, &ips[3..4]).await;
    send_udp(env.udp, &[hit_line(ips[4])]);
    wait_blocked(&env, &ips[4..5]).await;
    assert!(members(&env, "MISP_BLOCK").contains(&"MISP_BLOCK-3".to_string()), "MISP_BLOCK-3 nested");
    assert!(members(&env, "MISP_BLOCK-3").contains(&"misp-198.51.100.87".to_string()));
    assert!(members(&env, "MISP_BLOCK").len() <= 4, "the box's limit holds");
    assert_eq!(env.metric("fortimisp_blocks_total{outcome=\"failed\"}").await, 0.0);
    audit(&env, &mut daemon, &ips, &[]);
}

/// -23 on delete: `unblock` of an object a policy still references removes the membership, leaves the object,
/// and says why (exit 1, the FortiOS error named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_in_use_on_delete_is_left_and_reported() {
    let env = Env::start().await;
    let out = env.integration_cmd(&["block", "198.51.100.90"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_blocked(&env, "198.51.100.90"));
    env.fortigate.reference_by_policy("misp-198.51.100.90");
    let out = env.integration_cmd(&["unblock", "198.51.100.90"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("in use") && stderr.contains("-23"), "the reason is reported: {stderr}");
    assert!(env.fortigate.object("misp-198.51.100.90").is_some(), "the referenced object is left");
    assert_eq!(env.fortigate.route_count("DELETE /api/v2/cmdb/firewall/address/{name}"), 1, "no delete loop");
}

// ---- Process ---------------------------------------------------------------------------------------------------

/// The journal file cannot be opened (its directory is a regular file, which even root cannot get around): one
/// loud error, `fortimisp_journal_degraded` = 1, and blocking goes on from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_journal_keeps_blocking_in_memory() {
    let mut env = Env::start().await;
    let blocker = env.dir.path().join("not-a-directory");
    std::fs::write(&blocker, "a file where the state directory should be").unwrap();
    let bad = blocker.join("state.db");
    let from = format!("path = \"{}\"", env.state.display());
    env.tweak(&from, &format!("path = \"{}\"", bad.display()));
    add_hits(&env, &["198.51.100.91"]);
    let mut daemon = start(&env).await;
    assert_eq!(env.metric("fortimisp_journal_degraded").await, 1.0);
    let log = daemon.log_text();
    assert!(log.contains("ERROR") && log.contains("Journal cannot be opened"), "no loud error:\n{log}");
    send_udp(env.udp, &[hit_line("198.51.100.91")]);
    wait_blocked(&env, &["198.51.100.91"]).await;
    assert!(daemon.is_running());
    audit(&env, &mut daemon, &["198.51.100.91"], &[]);
}

// ---- Load and hostile datagrams --------------------------------------------------------------------------------

/// How long the garbage flood runs (the issue asks 30 s; 10 s keeps the suite fast, `FORTIMISP_FLOOD_SECS`
/// overrides).
fn flood_secs() -> u64 {
    std::env::var("FORTIMISP_FLOOD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10)
}

/// Datagrams queued in the kernel for a UDP port and dropped by it (receive buffer full), from /proc/net/udp.
fn kernel_udp_drops(port: u16) -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let want = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|local| local.ends_with(&want)))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

/// A UDP flood of garbage at full speed from one loopback sender, with triggering lines in between: every
/// datagram is accounted for in the daemon's metrics (received, or dropped by the kernel's full receive buffer:
/// `fortimisp_messages_dropped_total{reason="kernel_rcvbuf"}`, checked against /proc/net/udp), the daemon's
/// memory stays bounded, and every valid line it received is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flood_of_garbage() {
    let env = Env::start().await;
    let hits: Vec<String> = (1..=20).map(|i| format!("198.51.100.{}", 100 + i)).collect();
    let refs: Vec<&str> = hits.iter().map(String::as_str).collect();
    add_hits(&env, &refs);
    let mut daemon = start(&env).await;
    let pid = daemon.child.id();
    let rss_before = vm_rss_kib(pid);
    let target = env.udp;
    let secs = flood_secs();
    let lines: Vec<String> = hits.iter().map(|h| hit_line(h)).collect();
    let (sent, valid_sent) = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let garbage: Vec<Vec<u8>> = vec![
            b"\x00\xff\xfe garbage".to_vec(),
            b"<13>Nov 25 00:00:00 host not a fortigate line at all".to_vec(),
            b"<999>date=2024-05-01 srcip=198.51.100.7".to_vec(),
            vec![b'x'; 1400],
            b"<189>date=2024-05-01 time=10:00:00 devname=\"fw\" type=\"traffic\" policyid=8 srcip=198.51.100.9"
                .to_vec(),
        ];
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut sent, mut valid) = (0u64, 0usize);
        let mut next_valid = Instant::now();
        while Instant::now() < deadline {
            for g in &garbage {
                if socket.send_to(g, target).is_ok() {
                    sent += 1;
                }
            }
            if valid < lines.len() && Instant::now() >= next_valid {
                if socket.send_to(lines[valid].as_bytes(), target).is_ok() {
                    sent += 1;
                }
                valid += 1;
                next_valid = Instant::now() + Duration::from_millis(secs * 1000 / 25);
            }
        }
        (sent, valid)
    })
    .await
    .unwrap();
    assert_eq!(valid_sent, hits.len(), "every valid line was sent during the flood");
    let port = env.udp.port();
    let counted_drops = || env.metric("fortimisp_messages_dropped_total{reason=\"kernel_rcvbuf\"}");
    eventually(WAIT, "every datagram is received or counted in the daemon's metrics as dropped", || async {
        let received = env.metric("fortimisp_messages_received_total{listener=\"udp\"}").await as u64;
        received + counted_drops().await as u64 >= sent
    })
    .await;
    let received = env.metric("fortimisp_messages_received_total{listener=\"udp\"}").await as u64;
    let kernel = kernel_udp_drops(port);
    assert_eq!(counted_drops().await as u64, kernel, "the metric agrees with the kernel's counter");
    assert_eq!(received + kernel, sent, "every datagram is accounted for");
    let rss_after = vm_rss_kib(pid);
    eprintln!(
        "flood: {secs} s, {sent} datagrams sent, {received} received by the daemon, {kernel} dropped by the \
         kernel; VmRSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(rss_after < rss_before + 64 * 1024, "memory grew from {rss_before} KiB to {rss_after} KiB");
    // Every line the daemon read was parsed and counted; triggering ones were decided.
    let parsed_or_failed =
        env.metric("fortimisp_lines_triggered_total").await + env.metric("fortimisp_lines_untriggered_total").await;
    assert!(parsed_or_failed >= 1.0);
    // Each valid line carries a distinct listed address and no garbage line triggers, so every triggering line
    // the daemon read is one address to block: all of them must end blocked.
    let triggered = env.metric("fortimisp_lines_triggered_total").await as usize;
    assert!(triggered >= 1, "no valid line got through the flood");
    eventually(WAIT, "every valid line the daemon read is blocked", || async {
        refs.iter().filter(|a| is_blocked(&env, a)).count() == triggered
    })
    .await;
    let decided: Vec<&str> = refs.iter().copied().filter(|a| is_blocked(&env, a)).collect();
    eprintln!("flood: {triggered} of {} valid lines read and blocked", refs.len());
    if kernel == 0 {
        assert_eq!(triggered, refs.len());
    }
    // Whatever the kernel dropped, a valid line after the flood is still processed.
    env.misp.add_attribute(env.misp.add_event("after", true, &[]), AttributeSpec::new("ip-src", "198.51.100.121"));
    send_udp(env.udp, &[hit_line("198.51.100.121")]);
    wait_blocked(&env, &["198.51.100.121"]).await;
    audit(&env, &mut daemon, &decided, &[]);
}

/// Hostile datagrams through the real UDP listener: empty, the largest a UDP/IPv4 datagram can be (65 507 bytes),
/// NUL bytes, invalid UTF-8, PRI out of range, unterminated quotes, 10 000 keys. Each is counted, the daemon
/// stays up, and a valid line after them still blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_counted_and_harmless() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.92", "198.51.100.93", "198.51.100.94"]);
    let mut daemon = start(&env).await;
    let valid = hit_line("198.51.100.92");
    // Mutations of a triggering line whose address MISP does not list: whatever they parse to, nothing blocks.
    let probe = hit_line("198.51.100.95");
    let mut many_keys = String::from("<189>date=2024-05-01 time=10:00:00 devname=\"fw\" type=\"traffic\" ");
    for i in 0..10_000u32 {
        // Distinct base-36 keys of at most 3 characters, so 10 000 of them fit in one datagram.
        let (a, b, c) = (i / 1296, (i / 36) % 36, i % 36);
        let digit = |d: u32| char::from_digit(d, 36).unwrap();
        let key: String = match i {
            0..=35 => digit(c).to_string(),
            36..=1295 => [digit(b), digit(c)].iter().collect(),
            _ => [digit(a), digit(b), digit(c)].iter().collect(),
        };
        many_keys.push_str(&key);
        many_keys.push_str("=1 ");
    }
    many_keys.push_str("srcip=198.51.100.93 dstip=203.0.113.1 policyid=7 action=\"accept\"");
    assert!(many_keys.len() < 65_507, "{}", many_keys.len());
    let mut huge = hit_line("198.51.100.94");
    huge.push_str(" msg=\"");
    huge.push_str(&"A".repeat(65_507 - huge.len() - 1));
    huge.push('"');
    assert_eq!(huge.len(), 65_507);
    let datagrams: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0u8; 65_507],
        vec![b'\xff'; 65_507],
        b"\0\0\0<189>\0date=\0".to_vec(),
        probe.replace("srcport", "\0srcport").into_bytes(),
        [&b"<189>"[..], &[0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x28, 0x8c, 0xbc][..], b" srcip=1"].concat(),
        probe.replacen("<189>", "<192>", 1).into_bytes(),
        probe.replacen("<189>", "<99999999999999999999>", 1).into_bytes(),
        probe.replacen("<189>", "<-1>", 1).into_bytes(),
        probe.replacen("<189>", "<>", 1).into_bytes(),
        probe.replacen("<189>", "<189", 1).into_bytes(),
        b"<189>date=2024-05-01 devname=\"fw srcip=\"198.51.100.7 policyid=\"7".to_vec(),
        b"<189>date=\"".to_vec(),
        b"<189>".to_vec(),
        b"<".to_vec(),
        many_keys.clone().into_bytes(),
        huge.clone().into_bytes(),
    ];
    let n = datagrams.len() as f64;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in &datagrams {
        socket.send_to(d, env.udp).unwrap();
    }
    eventually(WAIT, "every hostile datagram is counted as received", || async {
        env.metric("fortimisp_messages_received_total{listener=\"udp\"}").await >= n
    })
    .await;
    let text = reqwest::get(format!("http://{}/metrics", env.metrics)).await.unwrap().text().await.unwrap();
    let sum = |prefix: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
    };
    let parse_errors = sum("fortimisp_parse_errors_total{");
    let accounted = parse_errors
        + sum("fortimisp_lines_triggered_total")
        + sum("fortimisp_lines_untriggered_total")
        + sum("fortimisp_messages_dropped_total{");
    eprintln!("hostile datagrams: {n} sent, {parse_errors} parse errors, {accounted} accounted for");
    assert_eq!(accounted, n, "every datagram ends in exactly one counter:\n{text}");
    assert!(parse_errors >= 8.0, "hostile datagrams not counted as parse errors ({parse_errors})");
    assert!(daemon.is_running());
    // 10 000 keys and a maximal datagram are still FortiGate lines: their addresses are looked up and blocked.
    wait_blocked(&env, &["198.51.100.93", "198.51.100.94"]).await;
    send_udp(env.udp, &[valid]);
    wait_blocked(&env, &["198.51.100.92"]).await;
    audit(&env, &mut daemon, &["198.51.100.92", "198.51.100.93", "198.51.100.94"], &[]);
}

// ---- Bad config through the binaries ---------------------------------------------------------------------------

/// A representative set of bad configs through both binaries (the daemon, `validate`, housekeeping): exit 2 and
/// one line on stderr naming the key, before anything is started. (`crates/core/tests/bad_input.rs` covers every
/// key; this proves the binaries report it the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_2_naming_the_key() {
    let fg_token = Env::start().await.fortigate.token();
    // `{dir}` is the test directory of each case.
    let cases: Vec<(String, String, &str)> = vec![
        ("allowed_senders = []".into(), "allowed_senders = []\ncolour = \"blue\"".into(), "syslog.colour"),
        (
            "max_blocks_per_minute = 600".into(),
            "max_blocks_per_minute = \"many\"".into(),
            "blocking.max_blocks_per_minute",
        ),
        ("requests_per_second = 200".into(), "requests_per_second = -3".into(), "fortigate.requests_per_second"),
        (
            format!("api_key = \"{fg_token}\""),
            "api_key_file = \"{dir}/key-is-a-directory\"".into(),
            "fortigate.api_key_file",
        ),
        ("misp-ca.pem\"".into(), "garbage-ca.pem\"".into(), "misp.ca_file"),
        ("url = \"https://".into(), "url = \"https://admin:pw@".into(), "misp.url"),
        (
            "never_block = [\"198.51.100.250\"]".into(),
            "never_block = [\"198.51.100.0/33\"]".into(),
            "blocking.never_block[0]",
        ),
    ];
    for (from, to, key) in cases {
        let mut env = Env::start().await;
        std::fs::create_dir(env.dir.path().join("key-is-a-directory")).unwrap();
        std::fs::write(env.dir.path().join("garbage-ca.pem"), "not a certificate").unwrap();
        let to = to.replace("{dir}", &env.dir.path().display().to_string());
        env.tweak(&from, &to);
        let config = env.write_config();
        let config = config.to_str().unwrap();
        for (bin, args) in [
            ("integration", vec!["--config", config]),
            ("integration", vec!["--config", config, "validate"]),
            ("housekeeping", vec!["--config", config, "--once"]),
        ] {
            let out = std::process::Command::new(fortimisp_e2e::bin(bin)).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bin} {args:?} with {key} broken: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{bin}: more than one line: {stderr}");
            assert!(stderr.contains(key), "{bin}: the line does not name {key}: {stderr}");
            assert!(!stderr.contains(&fg_token) && !stderr.contains(&env.misp.key()), "a key leaked: {stderr}");
        }
    }
}

/// A token already refused when the daemon starts: one loud error and the alert at start, and no more failed
/// logins than FortiOS tolerates before locking the host out (3 by default): the group check, then the first
/// block; the listing of existing blocks is skipped. Blocks wait in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_token_refused_at_start_does_not_lock_us_out() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.76"]);
    env.fortigate.revoke_token();
    let mut daemon = start(&env).await;
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized").await, 1.0, "no alert at start");
    send_udp(env.udp, &[hit_line("198.51.100.76")]);
    eventually(WAIT, "the block waits in the journal", || async {
        env.metric("fortimisp_pending_actions").await == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env.fortigate.total_requests() < 3,
        "{} refused logins: FortiOS would lock this host out: {:?}",
        env.fortigate.total_requests(),
        env.fortigate.route_counts()
    );
    audit(&env, &mut daemon, &["198.51.100.76"], &[]);
}

/// The journal file disappears under the running daemon and a directory takes its place (so SQLite cannot
/// recreate it): the daemon logs a loud error, raises `fortimisp_journal_degraded`, keeps blocking from memory,
/// and once the path is usable again writes what it buffered back: the ledger has the block made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_lost_mid_run_keeps_blocking_and_writes_back() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.95", "198.51.100.96", "198.51.100.97"]);
    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.95")]);
    wait_blocked(&env, &["198.51.100.95"]).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.state.display()));
    }
    std::fs::create_dir(&env.state).unwrap();
    send_udp(env.udp, &[hit_line("198.51.100.96")]);
    wait_blocked(&env, &["198.51.100.96"]).await;
    eventually(WAIT, "the journal is reported degraded", || async {
        env.metric("fortimisp_journal_degraded").await == 1.0
    })
    .await;
    let log = daemon.log_text();
    assert!(log.contains("ERROR") && log.to_lowercase().contains("journal"), "no loud error:\n{log}");
    std::fs::remove_dir(&env.state).unwrap();
    // The next write (at least RETRY_INTERVAL later) moves to the new file and writes the buffer back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    send_udp(env.udp, &[hit_line("198.51.100.97")]);
    wait_blocked(&env, &["198.51.100.97"]).await;
    eventually(WAIT, "the journal recovers", || async { env.metric("fortimisp_journal_degraded").await == 0.0 }).await;
    // (The ledger entry of 198.51.100.95 went with the deleted file; the blocks made while degraded come back.)
    eventually(WAIT, "the blocks made while degraded are in the new file", || async {
        let ledger = match Journal::open(&env.state) {
            Ok(journal) => journal.active_blocks().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        ["198.51.100.96", "198.51.100.97"].iter().all(|a| ledger.iter().any(|b| b.ip == ip(a)))
    })
    .await;
    audit(&env, &mut daemon, &["198.51.100.95", "198.51.100.96", "198.51.100.97"], &[]);
}

/// A slow FortiGate at start: the daemon ensures its block groups, replays its journal and lists its blocks on
/// the FortiGate (1.5 s an answer here), seconds in all. Lines sent meanwhile must be read at once and wait in the
/// candidate queue. When the listeners started only after all that, they waited in the kernel's receive buffer
/// instead, which holds a few hundred (`recv_buffer_bytes` is small here), and the rest were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_sent_while_a_slow_fortigate_is_listed_at_start_are_read() {
    let mut env = Env::start().await;
    env.tweak("allowed_senders = []", "allowed_senders = []\nrecv_buffer_bytes = 1048576");
    add_hits(&env, &["198.51.100.90"]);
    env.fortigate.set_latency(Duration::from_millis(1500));
    let config = env.write_config();
    let mut daemon = Daemon::spawn("integration", &["--config", config.to_str().unwrap()], env.dir.path());
    // Send as soon as the UDP listener says it reads, long before the start-up calls are done.
    eventually(WAIT, "the UDP listener is up", || async { daemon.log_text().contains("Listening for syslog.") }).await;
    let mut lines = vec![hit_line("198.51.100.90")];
    // Untriggered lines (policy 99): read and counted, nothing to look up.
    lines.extend(
        (0..3999).map(|i| traffic_line(ip(&format!("203.0.113.{}", i % 200 + 1)), ip("192.0.2.1"), 99, "deny")),
    );
    let sent = lines.len() as f64;
    for chunk in lines.chunks(20) {
        send_udp(env.udp, chunk);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !daemon.log_text().contains("fortimisp integration running"),
        "the start-up calls were over before the lines were sent: the test no longer covers its case"
    );
    // At least 95 %: a loaded test machine may leave the reader unscheduled for a moment, but the old order lost
    // everything beyond the receive buffer (a few hundred lines).
    eventually(WAIT, "the lines sent during the start-up calls are read", || async {
        env.metric("fortimisp_messages_received_total{listener=\"udp\"}").await >= 0.95 * sent
    })
    .await;
    env.fortigate.set_latency(Duration::ZERO);
    wait_blocked(&env, &["198.51.100.90"]).await;
    audit(&env, &mut daemon, &["198.51.100.90"], &[]);
}
