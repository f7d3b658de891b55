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
    let attrs =
        ips.iter().map(|ip| env.misp.add_attribute(event, AttributeSpec::new("ip-src", ip.to_string()))).collect();
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
    env.fortigate.seed_address("note-198.51.100.6", "198.51.100.6/32", "fortimisp trial 2024-01-01T00:00:00Z, keep");
    env.fortigate.seed_address6("legacy-2001:db8::3", "2001:db8::3/128", &legacy_comment(days_ago(400)));
    let v4: Vec<String> =
        [&old4, &fresh4, "legacy-198.51.100.3", "admin-198.51.100.4", "misp-198.51.100.5", "note-198.51.100.6"]
            .map(String::from)
            .into();
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
    let kept4 = ["admin-198.51.100.4", "legacy-198.51.100.3", &fresh4, "misp-198.51.100.5", "note-198.51.100.6"];
    assert_eq!(block_members(&env, "MISP_BLOCK"), kept4.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(block_members(&env, "MISP_BLOCK6"), vec!["legacy-2001:db8::3".to_string(), fresh6.clone()]);
    assert_eq!(members(&env, "MISP_BLOCK6-2"), vec!["misp-placeholder6".to_string()]);
    for kept in kept4.iter().chain([&fresh6.as_str(), &"legacy-2001:db8::3"]) {
        assert!(env.fortigate.object(kept).is_some(), "{kept} must stay");
    }
    assert!(members(&env, "MISP_BLOCK").contains(&"misp-placeholder".to_string()));
    assert!(members(&env, "MISP_BLOCK6").contains(&"misp-placeholder6".to_string()));
    let foreign =
        ["legacy-198.51.100.3", "admin-198.51.100.4", "misp-198.51.100.5", "note-198.51.100.6", "legacy-2001:db8::3"];
    for w in writes(&env) {
        assert!(!foreign.iter().any(|f| targets(&w, f)), "a foreign object was touched: {} {}", w.method, w.path);
        assert_ne!(w.method, "PUT", "member lists are never rewritten: {}", w.path);
    }
    let failed: Vec<_> = env.fortigate.requests().into_iter().filter(|r| r.status.is_none_or(|s| s >= 400)).collect();
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

/// A token whose profile may read but not write (or that the FortiGate stops accepting mid-pass): the first
/// refused removal stops the pass. Each further request would be refused as well and count toward an admin
/// lockout that would also stop the integration daemon. The removals stay for the next pass, the summary says why,
/// and the exit status is non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_removal_stops_the_pass_at_once() {
    use fortimisp_e2e::fortimisp_testkit::fortigate::AdminProfile;
    let env = Env::start().await;
    let (event, _) = misp_event(&env, &[]);
    let old: Vec<String> =
        (1..=5).map(|n| seed_own(&env, ip(&format!("198.51.100.{n}")), days_ago(100), &event.to_string())).collect();
    seed_block_groups(&env, &old, &[], 10);
    env.fortigate.set_profile(AdminProfile::READ_ONLY);
    env.fortigate.reset_requests();

    let out = env.housekeeping_run(&["--once"]);
    assert!(!out.status.success(), "a refused pass fails: {}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("stopped: the FortiGate refused the API token or its profile"),
        "{}",
        text(&out.stdout)
    );
    let refused: Vec<_> =
        env.fortigate.requests().into_iter().filter(|r| r.status.is_some_and(|s| s == 401 || s == 403)).collect();
    assert_eq!(refused.len(), 1, "one refused request, then the pass stops: {refused:?}");
    for name in &old {
        assert!(env.fortigate.object(name).is_some(), "{name} stays for the next pass");
    }
}

/// With `adopt_legacy`, old members of the block groups whose comment is the legacy bare timestamp are pruned
/// (names with a `/` included); a legacy-commented object outside the block groups, a fresh legacy member and a
/// foreign member stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_legacy_prunes_legacy_members_of_the_block_groups_only() {
    let mut env = Env::start().await;
    env.tweak("adopt_legacy = false", "adopt_legacy = true");
    let old = legacy_comment(days_ago(120));
    env.fortigate.seed_address("198.51.100.7/32", "198.51.100.7/32", &old);
    env.fortigate.seed_address("legacy-198.51.100.8", "198.51.100.8 255.255.255.255", &old);
    env.fortigate.seed_address6("2001:db8::8/128", "2001:db8::8/128", &old);
    env.fortigate.seed_address("198.51.100.9/32", "198.51.100.9/32", &old); // in no group
    env.fortigate.seed_address("198.51.100.10/32", "198.51.100.10/32", &legacy_comment(days_ago(3)));
    env.fortigate.seed_address("198.51.100.11/32", "198.51.100.11/32", &old); // in another group only
    env.fortigate.seed_address("admin-198.51.100.12", "198.51.100.12/32", "blocked by the SOC");
    env.fortigate.seed_group(Table::Addrgrp, "SOC_WATCH", &["198.51.100.11/32"], "not ours");
    let v4: Vec<String> =
        ["198.51.100.7/32", "legacy-198.51.100.8", "198.51.100.10/32", "admin-198.51.100.12"].map(String::from).into();
    seed_block_groups(&env, &v4, &["2001:db8::8/128".to_string()], 600);

    let out = env.housekeeping_run(&["--once"]);
    assert_ok(&out);

    for gone in ["198.51.100.7/32", "legacy-198.51.100.8", "2001:db8::8/128"] {
        assert!(env.fortigate.object(gone).is_none(), "{gone} must be pruned");
        let (member, object) = removal_order(&env, gone);
        assert!(member < object, "{gone}: member first");
    }
    for kept in ["198.51.100.9/32", "198.51.100.10/32", "198.51.100.11/32", "admin-198.51.100.12"] {
        assert!(env.fortigate.object(kept).is_some(), "{kept} must stay");
    }
    assert_eq!(block_members(&env, "MISP_BLOCK"), ["198.51.100.10/32", "admin-198.51.100.12"]);
    assert_eq!(block_members(&env, "MISP_BLOCK6"), Vec::<String>::new());
    assert_eq!(members(&env, "SOC_WATCH"), ["198.51.100.11/32"]);
    for w in writes(&env) {
        assert!(
            !["198.51.100.9/32", "198.51.100.10/32", "198.51.100.11/32", "admin-198.51.100.12", "SOC_WATCH"]
                .iter()
                .any(|f| targets(&w, f)),
            "touched: {} {}",
            w.method,
            w.path
        );
    }
    let reasons: BTreeSet<_> = unblock_actions(&env).into_iter().map(|(ip, reason, _)| (ip, reason)).collect();
    assert_eq!(
        reasons,
        [("198.51.100.7", "legacy"), ("198.51.100.8", "legacy"), ("2001:db8::8", "legacy")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into()
    );

    // Without adopt_legacy the same layout is left alone.
    let env2 = Env::start().await;
    env2.fortigate.seed_address("198.51.100.7/32", "198.51.100.7/32", &old);
    seed_block_groups(&env2, &["198.51.100.7/32".to_string()], &[], 600);
    assert_ok(&env2.housekeeping_run(&["--once"]));
    assert!(env2.fortigate.object("198.51.100.7/32").is_some());
    assert!(writes(&env2).iter().all(|w| !targets(w, "198.51.100.7/32")));
}

/// Ten fresh blocks of one MISP event, seeded in the block group.
fn ten_listed_blocks(env: &Env, first: u8) -> (Vec<IpAddr>, Vec<u64>, Vec<String>) {
    let ips: Vec<IpAddr> = (first..first + 10).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    let (event, attrs) = misp_event(env, &ips);
    let names: Vec<String> = ips.iter().map(|ip| seed_own(env, *ip, days_ago(2), &event.to_string())).collect();
    (ips, attrs, names)
}

/// An indicator deleted, flagged off for IDS or warninglisted in MISP is unblocked on the next pass with
/// `unblock_revoked`, and kept without it; a manual block is never revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_indicators_are_unblocked_only_with_unblock_revoked() {
    let mut env = Env::start().await;
    let (ips, attrs, mut names) = ten_listed_blocks(&env, 20);
    names.push(seed_own(&env, ip("198.51.100.99"), days_ago(2), "manual"));
    seed_block_groups(&env, &names, &[], 600);
    assert!(env.misp.soft_delete(attrs[0]));
    assert!(env.misp.set_to_ids(attrs[1], false));
    env.misp.add_warninglist("Known good", "cidr", &[&format!("{}/32", ips[2])]);

    env.tweak("unblock_revoked = true", "unblock_revoked = false");
    assert_ok(&env.housekeeping_run(&["--once"]));
    assert!(writes(&env).is_empty(), "without unblock_revoked nothing is removed: {:?}", writes(&env));
    assert_eq!(block_members(&env, "MISP_BLOCK").len(), 11);

    env.tweaks.clear();
    assert_ok(&env.housekeeping_run(&["--once"]));
    let revoked: BTreeSet<String> = names[..3].iter().cloned().collect();
    let remaining: BTreeSet<String> = block_members(&env, "MISP_BLOCK").into_iter().collect();
    let all: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(remaining, all.difference(&revoked).cloned().collect(), "exactly the three revoked go");
    for gone in &revoked {
        assert!(env.fortigate.object(gone).is_none());
    }
    let actions = unblock_actions(&env);
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions.iter().all(|(_, reason, state)| reason == "revoked" && state == "done"), "{actions:?}");
}

/// No complete view of MISP, no revocation: MISP unreachable, or one page of the sync failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_complete_misp_view_unblocks_nothing() {
    let mut env = Env::start().await;
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let (_, attrs, names) = ten_listed_blocks(&env, 20);
    let expired = seed_own(&env, ip("198.51.100.98"), days_ago(365), "3");
    let mut all = names.clone();
    all.push(expired.clone());
    seed_block_groups(&env, &all, &[], 600);
    assert!(env.misp.soft_delete(attrs[0]));
    // Enough indicators for a second page (pages of 5000); page 2 keeps failing.
    env.misp.add_synthetic(6000, "100.64.0.1".parse().unwrap(), 1_700_000_000);
    env.misp.fail_page(2, 100, Fault::html(500));
    let partial = env.housekeeping_run(&["--once"]);
    assert!(env.fortigate.object(&names[0]).is_some(), "a partial view must not revoke");
    assert!(env.fortigate.object(&expired).is_none(), "age needs no MISP view");
    assert!(!partial.status.success(), "a pass without its MISP view is reported as failed");

    env.misp.clear_faults();
    env.misp.shutdown();
    let down = env.housekeeping_run(&["--once"]);
    assert!(!down.status.success(), "MISP down: the pass fails");
    assert!(env.fortigate.object(&names[0]).is_some(), "MISP down must not revoke");
    assert_eq!(block_members(&env, "MISP_BLOCK").len(), 10);
}

/// Revoking 80 % of the indicators at once holds the pass back (non-zero exit, metric) until `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_revocation_trips_the_safety_rail_unless_forced() {
    let mut env = Env::start().await;
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let (_, attrs, names) = ten_listed_blocks(&env, 20);
    seed_block_groups(&env, &names, &[], 600);
    for a in &attrs[..8] {
        assert!(env.misp.soft_delete(*a));
    }

    let held = env.housekeeping_run(&["--once"]);
    assert!(!held.status.success(), "the rail must fail --once:\n{}", text(&held.stderr));
    assert!(writes(&env).is_empty(), "nothing removed while held back");

    let daemon = env.housekeeping(&[]).await;
    eventually(WAIT, "the safety rail metric", || async {
        env.hk_metric("fortimisp_housekeeping_failures_total{reason=\"safety_rail\"}").await >= 1.0
    })
    .await;
    assert!(writes(&env).is_empty(), "the daemon holds back too");
    drop(daemon);

    assert_ok(&env.housekeeping_run(&["--once", "--force"]));
    assert_eq!(block_members(&env, "MISP_BLOCK"), names[8..].to_vec());
    assert_eq!(unblock_actions(&env).len(), 8);
}

/// `--dry-run` changes nothing and prints exactly what the following real pass removes, then a summary in words
/// (what would be removed and why; after the real pass, that nothing is due).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_lists_what_a_real_pass_removes() {
    let mut env = Env::start().await;
    env.tweak("adopt_legacy = false", "adopt_legacy = true");
    let (_, attrs, mut v4) = ten_listed_blocks(&env, 20);
    assert!(env.misp.soft_delete(attrs[3]));
    v4.push(seed_own(&env, ip("198.51.100.90"), days_ago(100), "4"));
    v4.push(seed_own(&env, ip("198.51.100.91"), days_ago(95), "4"));
    env.fortigate.seed_address("198.51.100.92/32", "198.51.100.92/32", &legacy_comment(days_ago(150)));
    v4.push("198.51.100.92/32".into());
    let v6 = vec![seed_own(&env, ip("2001:db8::90"), days_ago(100), "4")];
    seed_block_groups(&env, &v4, &v6, 600);
    let before = (env.fortigate.names(Table::Address), env.fortigate.names(Table::Address6));

    let dry = env.housekeeping_run(&["--once", "--dry-run"]);
    assert_ok(&dry);
    assert!(writes(&env).is_empty(), "dry run wrote: {:?}", writes(&env));
    assert_eq!((env.fortigate.names(Table::Address), env.fortigate.names(Table::Address6)), before);
    assert!(env.misp.feed_fetches().is_empty(), "dry run asks MISP for nothing");
    let listed: BTreeSet<String> = text(&dry.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("would remove "))
        .map(|l| l.split(" (").next().unwrap().to_string())
        .collect();

    let why = "5: 3 older than max_age (90d), 1 revoked in MISP, 1 legacy member older than max_age (90d)";
    let summary = |out: &Output| text(&out.stdout).lines().last().unwrap_or_default().to_string();
    assert_eq!(summary(&dry), format!("dry run, nothing changed: examined 13 blocks; would remove {why}"));

    let real = env.housekeeping_run(&["--once"]);
    assert_ok(&real);
    assert_eq!(text(&real.stdout), format!("examined 13 blocks; removed {why}\n"), "the summary alone on stdout");
    let after: BTreeSet<String> =
        env.fortigate.names(Table::Address).into_iter().chain(env.fortigate.names(Table::Address6)).collect();
    let removed: BTreeSet<String> = before.0.into_iter().chain(before.1).filter(|n| !after.contains(n)).collect();
    assert_eq!(listed, removed, "dry run listed:\n{}", text(&dry.stdout));
    assert_eq!(removed.len(), 5, "{removed:?}");

    let idle = env.housekeeping_run(&["--once", "--dry-run"]);
    assert_ok(&idle);
    assert_eq!(
        text(&idle.stdout),
        "dry run, nothing changed: examined 9 blocks; nothing is due (none older than max_age (90d), none revoked \
         in MISP)\n",
        "nothing due is said in words, on stdout"
    );
}

/// `--once` asks MISP to fetch all feeds and reports "No feed enabled."; the daemon counts it in
/// `feed_updates_total`; a failed call is retried with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_update_reports_no_feed_enabled_and_retries_failures() {
    let env = Env::start().await;
    let out = env.housekeeping_run(&["--once"]);
    assert_ok(&out);
    let fetches = env.misp.feed_fetches();
    assert_eq!(fetches.len(), 1, "{fetches:?}");
    assert_eq!((fetches[0].feed_id, fetches[0].result.as_str()), (None, "No feed enabled."));
    assert!(text(&out.stderr).to_lowercase().contains("no feed enabled"), "reported:\n{}", text(&out.stderr));

    env.misp.reset_records();
    env.misp.fail_route("feeds/fetchFromAllFeeds", 1, Fault::html(503));
    let daemon = env.housekeeping(&[]).await;
    eventually(WAIT, "the retried feed update is counted", || async {
        env.hk_metric("fortimisp_feed_updates_total{outcome=\"no_feed_enabled\"}").await >= 1.0
    })
    .await;
    assert_eq!(env.misp.request_count("feeds/fetchFromAllFeeds"), 2, "one failure, one retry");
    assert!(env.hk_metric("fortimisp_housekeeping_last_success_timestamp_seconds").await > 0.0);
    drop(daemon);
}

/// `feeds = [ids]` fetches each feed by id, in order, and a feed MISP says is disabled fails `--once`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_ids_are_fetched_one_by_one() {
    let mut env = Env::start().await;
    let a = env.misp.add_feed("CIRCL OSINT", true);
    let b = env.misp.add_feed("abuse.ch", true);
    let off = env.misp.add_feed("disabled one", false);
    env.tweak("max_unblock_fraction = 0.5", &format!("max_unblock_fraction = 0.5\nfeeds = [{a}, {b}]"));
    assert_ok(&env.housekeeping_run(&["--once"]));
    let ids: Vec<Option<u64>> = env.misp.feed_fetches().iter().map(|f| f.feed_id).collect();
    assert_eq!(ids, [Some(a), Some(b)]);

    env.misp.reset_records();
    env.tweaks.clear();
    env.tweak("max_unblock_fraction = 0.5", &format!("max_unblock_fraction = 0.5\nfeeds = [{a}, {off}, {b}]"));
    let out = env.housekeeping_run(&["--once"]);
    assert!(!out.status.success(), "a disabled feed fails the update:\n{}", text(&out.stderr));
    let ids: Vec<Option<u64>> = env.misp.feed_fetches().iter().map(|f| f.feed_id).collect();
    assert_eq!(ids, [Some(a), Some(off), Some(b)], "every feed is still tried");
}

/// 5 000 expired blocks (v4 and v6, spread over overflow groups as fortimisp lays them out) go in one pass, within
/// `requests_per_second`, without a single failed request, each recorded in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_expired_blocks_go_in_one_pass_within_the_rate_limit() {
    // Below what the debug-built emulator can serve (about 300 a second here), so the limit is what binds.
    const RPS: usize = 250;
    let mut env = Env::start().await;
    env.tweak("requests_per_second = 200", &format!("requests_per_second = {RPS}"));
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let created = days_ago(100);
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in 0..4000u32 {
        let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i);
        v4.push(seed_own(&env, IpAddr::V4(addr), created, "7"));
    }
    for i in 0..1000u32 {
        v6.push(seed_own(&env, ip(&format!("2001:db8:1::{:x}", i + 1)), created, "7"));
    }
    seed_block_groups(&env, &v4, &v6, 600);
    let fresh = seed_own(&env, ip("198.51.100.1"), days_ago(1), "manual");
    let mut with_fresh = block_members(&env, "MISP_BLOCK");
    with_fresh.push(fresh.clone());
    seed_block_groups(&env, &with_fresh, &v6, 600);

    let started = std::time::Instant::now();
    let out = env.housekeeping_run(&["--once"]);
    let took = started.elapsed();
    assert_ok(&out);
    let log = env.fortigate.requests();
    eprintln!("5000-object pass: {took:?}, {} requests, {:?}", log.len(), env.fortigate.route_counts());

    assert_eq!(block_members(&env, "MISP_BLOCK"), [fresh]);
    assert!(block_members(&env, "MISP_BLOCK6").is_empty());
    assert_eq!(env.fortigate.names(Table::Address), ["misp-198.51.100.1", "misp-placeholder"]);
    assert_eq!(env.fortigate.names(Table::Address6), ["misp-placeholder6"]);
    let failed: Vec<_> = log.iter().filter(|r| r.status.is_none_or(|s| s >= 400)).collect();
    assert!(failed.is_empty(), "{} requests failed, first: {:?}", failed.len(), failed.first());
    // Within the limit: no window of one second holds more than RPS + 1 requests.
    let times: Vec<std::time::Instant> = log.iter().map(|r| r.at).collect();
    let mut lo = 0;
    let mut busiest = 0;
    for hi in 0..times.len() {
        while times[hi].duration_since(times[lo]) >= Duration::from_secs(1) {
            lo += 1;
        }
        busiest = busiest.max(hi - lo + 1);
    }
    eprintln!("busiest second: {busiest} requests");
    assert!(busiest <= RPS + 1, "{busiest} requests in one second, limit {RPS}");
    let done = env.journal_rows("SELECT count(*) FROM actions WHERE kind = 'unblock' AND state = 'done'");
    assert_eq!(done[0][0], "5000");
}

/// An expired object FortiOS refuses to delete because a policy references it (-23) is reported and left; the
/// pass tries it once, not in a loop, and the next pass reports it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_in_use_is_reported_and_left_without_looping() {
    let mut env = Env::start().await;
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let used = seed_own(&env, ip("198.51.100.1"), days_ago(100), "5");
    let other = seed_own(&env, ip("198.51.100.2"), days_ago(100), "5");
    seed_block_groups(&env, &[used.clone(), other.clone()], &[], 600);
    env.fortigate.reference_by_policy(&used);

    let deletes = |env: &Env| {
        env.fortigate
            .requests()
            .iter()
            .filter(|r| r.method == "DELETE" && r.route.ends_with("address/{name}") && targets(r, &used))
            .count()
    };
    let out = env.housekeeping_run(&["--once"]);
    assert!(!out.status.success(), "an object left in place fails --once");
    assert!(env.fortigate.object(&used).is_some(), "the referenced object stays");
    assert!(env.fortigate.object(&other).is_none(), "the others still go");
    assert_eq!(deletes(&env), 1, "tried once");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&used) && stderr.contains("-23"), "reported:\n{stderr}");

    let daemon = env.housekeeping(&[]).await;
    eventually(WAIT, "the failure metric", || async {
        env.hk_metric("fortimisp_housekeeping_failures_total{reason=\"in_use\"}").await >= 1.0
    })
    .await;
    drop(daemon);
    assert_eq!(deletes(&env), 2, "one try per pass");
    let actions = unblock_actions(&env);
    assert!(actions.contains(&("198.51.100.1".into(), "max_age".into(), "failed".into())), "{actions:?}");
}

/// An own, still valid object taken out of its group by hand is put back; an expired one is just deleted; a
/// second pass changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_readds_valid_objects_and_is_idempotent() {
    let mut env = Env::start().await;
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let (_, _, names) = ten_listed_blocks(&env, 20);
    let v6_ip = ip("2001:db8::20");
    let (event6, _) = misp_event(&env, &[v6_ip]);
    let v6 = seed_own(&env, v6_ip, days_ago(3), &event6.to_string());
    let expired = seed_own(&env, ip("198.51.100.97"), days_ago(100), "4");
    let manual = seed_own(&env, ip("198.51.100.98"), days_ago(5), "manual");
    // names[0], the manual block, the IPv6 object and the expired one are in no group.
    seed_block_groups(&env, &names[1..], &[], 600);

    assert_ok(&env.housekeeping_run(&["--once"]));
    let mut expected = names.clone();
    expected.push(manual);
    assert_eq!(block_members(&env, "MISP_BLOCK"), expected, "the manual block is valid too");
    assert_eq!(block_members(&env, "MISP_BLOCK6"), [v6]);
    assert!(env.fortigate.object(&expired).is_none());
    assert!(writes(&env).iter().all(|w| w.method != "PUT"));

    env.fortigate.reset_requests();
    assert_ok(&env.housekeeping_run(&["--once"]));
    assert!(writes(&env).is_empty(), "second pass: {:?}", writes(&env));
}

/// SIGTERM during a long pass: the daemon stops between two removals and exits 0 within 10 s; no object is left
/// half removed and no unblock stays pending in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_pass_cleanly() {
    let mut env = Env::start().await;
    env.tweak("requests_per_second = 200", "requests_per_second = 50");
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let names: Vec<String> =
        (1..=200u8).map(|i| seed_own(&env, ip(&format!("198.51.100.{i}")), days_ago(100), "1")).collect();
    seed_block_groups(&env, &names, &[], 600);
    let mut daemon = env.housekeeping(&[]).await;
    eventually(WAIT, "the pass is under way", || async {
        env.hk_metric("fortimisp_housekeeping_pruned_total{reason=\"max_age\"}").await >= 5.0
    })
    .await;
    daemon.stop_cleanly();
    let in_group: BTreeSet<String> = block_members(&env, "MISP_BLOCK").into_iter().collect();
    let left: Vec<&String> = names.iter().filter(|n| env.fortigate.object(n).is_some()).collect();
    assert!(!left.is_empty(), "the pass was interrupted");
    for name in &names {
        assert_eq!(env.fortigate.object(name).is_some(), in_group.contains(name), "{name} half removed");
    }
    let pending = env.journal_rows("SELECT ip FROM actions WHERE state = 'pending'");
    assert!(pending.is_empty(), "pending after SIGTERM: {pending:?}");
}

/// A feed update that keeps failing is retried with backoff (3 calls) and then counted as an error; the last
/// successful feed update time stays unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_feed_update_is_retried_then_shows_in_metrics() {
    let env = Env::start().await;
    env.misp.fail_route("feeds/fetchFromAllFeeds", 3, Fault::html(503));
    let daemon = env.housekeeping(&[]).await;
    eventually(Duration::from_secs(60), "the failed feed update is counted", || async {
        env.hk_metric("fortimisp_feed_updates_total{outcome=\"error\"}").await >= 1.0
    })
    .await;
    assert_eq!(env.misp.request_count("feeds/fetchFromAllFeeds"), 3, "three attempts, then the next interval");
    assert_eq!(env.hk_metric("fortimisp_feed_last_success_timestamp_seconds").await, 0.0);
    assert!(env.misp.feed_fetches().is_empty());
    drop(daemon);
}

/// On a terminal, a pass that removes many blocks shows its progress (`script` gives the binary a pty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_shown_on_a_terminal() {
    if !std::path::Path::new("/usr/bin/script").exists() {
        eprintln!("skipped: /usr/bin/script (util-linux) is not installed");
        return;
    }
    let mut env = Env::start().await;
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let names: Vec<String> = (0..250u32)
        .map(|i| {
            let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + i);
            seed_own(&env, IpAddr::V4(addr), days_ago(100), "1")
        })
        .collect();
    seed_block_groups(&env, &names, &[], 600);
    let config = env.write_config();
    let command = format!("{} --config {} --once", fortimisp_e2e::bin("housekeeping").display(), config.display());
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("/usr/bin/script").args(["-qec", &command, "/dev/null"]).output().unwrap()
    });
    assert_ok(&out);
    let shown = text(&out.stdout);
    assert!(shown.contains("pruned 100/250") && shown.contains("pruned 250/250"), "terminal output:\n{shown}");
    assert!(block_members(&env, "MISP_BLOCK").is_empty());

    // Not a terminal: no progress lines in the captured stderr.
    let names: Vec<String> = (0..150u32)
        .map(|i| {
            let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 65, 0, 0)) + i);
            seed_own(&env, IpAddr::V4(addr), days_ago(100), "1")
        })
        .collect();
    seed_block_groups(&env, &names, &[], 600);
    let out = env.housekeeping_run(&["--once"]);
    assert_ok(&out);
    assert!(!text(&out.stderr).contains("pruned 100/"), "progress only on a terminal");
}

/// `backend = "banned-ip"`: a ban fortimisp made whose indicator MISP no longer lists is revoked through the
/// core's unblock path, journalled (an `unblock` action, done, and the ledger closed); a ban still listed and a
/// manual ban stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_bans_are_journalled() {
    use fortimisp_core::journal::BlockRecord;
    let mut env = Env::start().await;
    env.tweak("requests_per_second = 200", "requests_per_second = 200\nbackend = \"banned-ip\"");
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let (listed, revoked, manual) = (ip("198.51.100.61"), ip("198.51.100.62"), ip("198.51.100.63"));
    misp_event(&env, &[listed]);
    let journal = fortimisp_e2e::journal(&env);
    for (addr, event_id) in [(listed, Some(7)), (revoked, Some(7)), (manual, None)] {
        env.fortigate.seed_banned(addr, 86_400);
        let record = BlockRecord {
            target: "default".into(),
            ip: addr,
            object: addr.to_string(),
            group: None,
            event_id,
            rule: None,
            reason: "seeded".into(),
            blocked_at: days_ago(1),
            backend: "banned-ip".into(),
        };
        journal.record_block(&record).await.expect("ledger entry");
    }
    drop(journal);

    assert_ok(&env.housekeeping_run(&["--once"]));
    let banned: BTreeSet<IpAddr> = env.fortigate.banned().iter().map(|b| b.ip).collect();
    assert_eq!(banned, [listed, manual].into(), "only the revoked ban is lifted");
    assert_eq!(
        unblock_actions(&env),
        [(revoked.to_string(), "revoked".to_string(), "done".to_string())].into(),
        "the revocation is journalled"
    );
    let closed = env.journal_rows("SELECT ip, unblock_reason FROM blocks WHERE unblocked_at IS NOT NULL");
    assert_eq!(closed, [[revoked.to_string(), "revoked".to_string()]]);
}
