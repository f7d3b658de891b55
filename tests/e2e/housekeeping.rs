//! The housekeeping daemon, end to end: the real binary prunes old, revoked and legacy blocks from the emulated
//! FortiGate, never touches anything else, holds back when MISP cannot be trusted, and asks MISP for feed updates.
//!
//! Objects are seeded straight into the emulator (our comment marker from `fortimisp_core`, the group layout
//! fortimisp itself creates), so a test can set any age. Assertions are on the emulator's state and its request
//! log (order, statuses, arrival times), the MISP emulator's feed log, the journal file and `/metrics`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fortimisp_e2e::fortimisp_testkit::fortigate::{EmulatorConfig, RecordedRequest, Table};
use fortimisp_e2e::fortimisp_testkit::misp::{AttributeSpec, Fault};
use fortimisp_e2e::{block_members, encode_mkey, eventually, members, seed_block_groups, seed_own, Env};

const WAIT: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

/// The legacy Python service's comment: a bare `%Y-%m-%d %H:%M:%S.%f` timestamp.
fn legacy_comment(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Panics with the whole output unless the run exited 0.
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "housekeeping failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn is_write(r: &RecordedRequest) -> bool {
    r.method != "GET"
}

/// Requests that changed (or tried to change) the box.
fn writes(env: &Env) -> Vec<RecordedRequest> {
    env.fortigate.requests().into_iter().filter(is_write).collect()
}

/// Whether request `r` targets `name` (as the entry, or as the member of a group).
fn targets(r: &RecordedRequest, name: &str) -> bool {
    r.path.ends_with(&format!("/{}", encode_mkey(name))) || r.body.contains(&format!("\"{name}\""))
}

/// Position in the request log of the member removal and of the object deletion of `name`.
fn removal_order(env: &Env, name: &str) -> (usize, usize) {
    let log = env.fortigate.requests();
    let suffix = format!("/{}", encode_mkey(name));
    let member = log
        .iter()
        .position(|r| r.method == "DELETE" && r.route.ends_with("/member/{member}") && r.path.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no member removal of {name}"));
    let object = log
        .iter()
        .position(|r| r.method == "DELETE" && r.route.ends_with("/{name}") && r.path.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no object deletion of {name}"));
    (member, object)
}

/// Seeds an event listing `ips` as `ip-src` indicators; returns (event id, attribute ids).
fn misp_event(env: &Env, ips: &[IpAddr]) -> (u64, Vec<u64>) {
    let event = env.misp.add_event("C2 servers", true, &[]);
    let attrs = ips.iter().map(|ip| env.misp.add_attribute(event, AttributeSpec::new("ip-src", ip.to_string()))).collect();
    (event, attrs)
}

/// Unblock actions in the journal: (ip, reason, state).
fn unblock_actions(env: &Env) -> BTreeSet<(String, String, String)> {
    env.journal_rows("SELECT ip, reason, state FROM actions WHERE kind = 'unblock'")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

/// Expired own v4 and v6 blocks go (member first, then object), fresh ones stay, foreign objects stay whatever
/// their comment, and the groups stay valid on a FortiOS that refuses empty groups. A second pass changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prunes_expired_blocks_member_first_and_nothing_else() {
    let env = Env::start_with(EmulatorConfig { refuse_empty_groups: true, ..EmulatorConfig::default() }).await;
    let fresh = [ip("198.51.100.2"), ip("2001:db8::2")];
    let (event, _) = misp_event(&env, &fresh);
    let old4 = seed_own(&env, ip("198.51.100.1"), days_ago(91), &event.to_string());
    let old6 = seed_own(&env, ip("2001:db8::1"), days_ago(200), &event.to_string());
    let fresh4 = seed_own(&env, fresh[0], days_ago(89), &event.to_string());
    // Foreign: a legacy timestamp (adopt_legacy is off), an admin's comment, and one named like ours.
    env.fortigate.seed_address("legacy-198.51.100.3", "198.51.100.3/32", &legacy_comment(days_ago(400)));
    env.fortigate.seed_address("admin-198.51.100.4", "198.51.100.4/32", "blocked by hand 2019-01-01 00:00:00");
    env.fortigate.seed_address("misp-198.51.100.5", "198.51.100.5/32", "do not touch");
    env.fortigate.seed_address6("legacy-2001:db8::3", "2001:db8::3/128", &legacy_comment(days_ago(400)));
    let v4: Vec<String> =
        [&old4, &fresh4, "legacy-198.51.100.3", "admin-198.51.100.4", "misp-198.51.100.5"].map(String::from).into();
    let fresh6 = seed_own(&env, fresh[1], days_ago(1), &event.to_string());
    let v6 = vec![fresh6.clone(), "legacy-2001:db8::3".to_string(), old6.clone()];
    // Two per group: the overflow group MISP_BLOCK6-2 loses its only real member and keeps its placeholder.
    seed_block_groups(&env, &v4, &v6, 2);

    let out = env.housekeeping_run(&["--once"]);
    assert_ok(&out);

    for gone in [&old4, &old6] {
        assert!(env.fortigate.object(gone).is_none(), "{gone} must be deleted");
        let (member, object) = removal_order(&env, gone);
        assert!(member < object, "{gone}: member removal (#{member}) must come before the deletion (#{object})");
    }
    let kept4 = ["admin-198.51.100.4", "legacy-198.51.100.3", &fresh4, "misp-198.51.100.5"];
    assert_eq!(block_members(&env, "MISP_BLOCK"), kept4.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(block_members(&env, "MISP_BLOCK6"), vec!["legacy-2001:db8::3".to_string(), fresh6.clone()]);
    assert_eq!(members(&env, "MISP_BLOCK6-2"), vec!["misp-placeholder6".to_string()]);
    for kept in kept4.iter().chain([&fresh6.as_str(), &"legacy-2001:db8::3"]) {
        assert!(env.fortigate.object(kept).is_some(), "{kept} must stay");
    }
    assert!(members(&env, "MISP_BLOCK").contains(&"misp-placeholder".to_string()));
    assert!(members(&env, "MISP_BLOCK6").contains(&"misp-placeholder6".to_string()));
    let foreign = ["legacy-198.51.100.3", "admin-198.51.100.4", "misp-198.51.100.5", "legacy-2001:db8::3"];
    for w in writes(&env) {
        assert!(!foreign.iter().any(|f| targets(&w, f)), "a foreign object was touched: {} {}", w.method, w.path);
        assert_ne!(w.method, "PUT", "member lists are never rewritten: {}", w.path);
    }
    let failed: Vec<_> = env.fortigate.requests().into_iter().filter(|r| r.status.unwrap_or(0) >= 500).collect();
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    assert_eq!(
        unblock_actions(&env),
        [("198.51.100.1", "max_age", "done"), ("2001:db8::1", "max_age", "done")]
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .into()
    );
    let closed = env.journal_rows("SELECT ip, unblock_reason FROM blocks WHERE unblocked_at IS NOT NULL");
    assert_eq!(closed.len(), 2, "ledger: {closed:?}");

    env.fortigate.reset_requests();
    let again = env.housekeeping_run(&["--once"]);
    assert_ok(&again);
    assert!(writes(&env).is_empty(), "a second pass changes nothing: {:?}", writes(&env));
}
