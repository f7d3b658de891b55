//! Every `fortigate::Client` operation against the testkit FortiGate emulator: the domain operations (groups,
//! block, unblock, overflow, listing, legacy members, banned IPs), every error path, and retry/backoff/rate-limit
//! behaviour with paused tokio time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fortimisp_core::fortigate::{
    BlockOutcome, Change, Client, ClientOptions, Comment, Error, Family, RetryPolicy, UnblockOutcome,
};
use fortimisp_core::secret::ApiKey;
use fortimisp_testkit::fortigate::{EmulatorConfig, Fault, FortiGateEmulator, Gate, Table, REFUSED_IN_TEXT};
use serde_json::{json, Value};
use tokio::time::Instant;

const ADDR: &str = "/api/v2/cmdb/firewall/address";
const ADDR6: &str = "/api/v2/cmdb/firewall/address6";
const GRP: &str = "/api/v2/cmdb/firewall/addrgrp";
const GRP6: &str = "/api/v2/cmdb/firewall/addrgrp6";

async fn emulator(config: EmulatorConfig) -> FortiGateEmulator {
    FortiGateEmulator::start(config).await.expect("emulator starts")
}

fn options(emu: &FortiGateEmulator) -> ClientOptions {
    let mut o = ClientOptions::new(emu.url(), ApiKey::new(emu.token()));
    o.requests_per_second = 0.0;
    o.timeout = Duration::from_secs(5);
    o.retry =
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) };
    o
}

fn client(emu: &FortiGateEmulator) -> Client {
    Client::new(options(emu)).expect("client builds")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

fn comment(event: &str) -> Comment {
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).single().expect("valid time");
    Comment::new(at, event, "ip-src")
}

fn field(emu: &FortiGateEmulator, name: &str, key: &str) -> Option<String> {
    emu.object(name).and_then(|(_, v)| v.get(key).and_then(Value::as_str).map(str::to_string))
}

/// The two requests the client must never send, and the one it must never use for members.
fn assert_nothing_dangerous(emu: &FortiGateEmulator) {
    for table in [ADDR, ADDR6, GRP, GRP6] {
        assert_eq!(emu.route_count(&format!("DELETE {table}")), 0, "DELETE on collection {table}");
        assert_eq!(emu.route_count(&format!("PUT {table}/{{name}}")), 0, "PUT on {table}");
    }
}

#[tokio::test]
async fn system_status_reports_version() {
    let emu = emulator(EmulatorConfig { version: "v7.2.8".into(), ..EmulatorConfig::default() }).await;
    let status = client(&emu).system_status().await.expect("status");
    assert_eq!(status.version, "v7.2.8");
    assert_eq!(status.version_triple(), Some((7, 2, 8)));
    assert_eq!(status.serial.as_deref(), Some("FGVMEVEMULATOR01"));
    assert_eq!(status.hostname.as_deref(), Some("fortigate-emulator"));
}

#[test]
fn unusable_options_are_rejected() {
    type Edit = fn(&mut ClientOptions);
    let cases: [(&str, Edit, &str); 5] = [
        ("zero members", |o| o.max_group_members = 0, "max_group_members"),
        ("same groups", |o| o.block_group6 = o.block_group.clone(), "block_group6"),
        ("slash prefix", |o| o.object_prefix = "a/b".into(), "contains '/'"),
        ("long group", |o| o.block_group = "G".repeat(70), "longer than 59"),
        ("newline token", |o| o.api_key = ApiKey::new("a\nb"), "api_key"),
    ];
    for (label, edit, want) in cases {
        let mut o = ClientOptions::new("http://127.0.0.1:1", ApiKey::new("t"));
        edit(&mut o);
        let err = Client::new(o).expect_err(label);
        assert!(err.to_string().contains(want), "{label}: {err}");
        assert!(!err.to_string().contains("a\nb"), "{label}: secret in message");
    }
}

#[tokio::test]
async fn connections_are_reused() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    for _ in 0..20 {
        c.system_status().await.expect("status");
    }
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    assert_eq!(emu.connections(), 1);
}

#[tokio::test]
async fn ensure_groups_creates_groups_with_placeholder_once() {
    for refuse_empty in [false, true] {
        let emu = emulator(EmulatorConfig { refuse_empty_groups: refuse_empty, ..EmulatorConfig::default() }).await;
        let c = client(&emu);
        c.ensure_groups().await.expect("ensure");
        c.ensure_groups().await.expect("ensure again");
        assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string()]));
        assert_eq!(emu.members("MISP_BLOCK6"), Some(vec!["misp-placeholder6".to_string()]));
        assert_eq!(field(&emu, "misp-placeholder", "subnet").as_deref(), Some("192.0.2.255 255.255.255.255"));
        assert_eq!(field(&emu, "misp-placeholder6", "ip6").as_deref(), Some("2001:db8::ffff:ffff/128"));
        assert_eq!(field(&emu, "misp-placeholder", "comment").as_deref(), Some("fortimisp placeholder"));
        assert_eq!(emu.route_count(&format!("POST {GRP}")), 1, "refuse_empty={refuse_empty}");
        assert_eq!(emu.route_count(&format!("POST {GRP6}")), 1);
        // The placeholder is not "ours" for housekeeping.
        assert!(c.list_owned().await.expect("list").is_empty());
        assert_eq!(c.block_groups(Family::V4).await.expect("groups"), vec!["MISP_BLOCK".to_string()]);
        assert_nothing_dangerous(&emu);
    }
}

#[tokio::test]
async fn ensure_groups_keeps_existing_groups_and_rejects_foreign_placeholder() {
    let emu = emulator(EmulatorConfig::default()).await;
    emu.seed_address("ops-host", "10.0.0.1/32", "");
    emu.seed_group(Table::Addrgrp, "MISP_BLOCK", &["ops-host"], "made by ops");
    emu.seed_address6("misp-placeholder6", "2001:db8::1/128", "someone else's");
    let c = client(&emu);
    match c.ensure_groups().await {
        Err(Error::Foreign { name, .. }) => assert_eq!(name, "misp-placeholder6"),
        other => panic!("expected Foreign, got {other:?}"),
    }
    assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["ops-host".to_string()]));
    assert_eq!(field(&emu, "misp-placeholder6", "comment").as_deref(), Some("someone else's"));
}

#[tokio::test]
async fn block_creates_object_and_membership_then_is_idempotent() {
    struct Case {
        ip: &'static str,
        name: &'static str,
        group: &'static str,
        key: &'static str,
        value: &'static str,
        encoded_member: &'static str,
    }
    let cases = [
        Case {
            ip: "198.51.100.7",
            name: "misp-198.51.100.7",
            group: "MISP_BLOCK",
            key: "subnet",
            value: "198.51.100.7 255.255.255.255",
            encoded_member: "/api/v2/cmdb/firewall/addrgrp/MISP_BLOCK/member/misp-198.51.100.7",
        },
        Case {
            ip: "2001:db8::7",
            name: "misp-2001:db8::7",
            group: "MISP_BLOCK6",
            key: "ip6",
            value: "2001:db8::7/128",
            encoded_member: "/api/v2/cmdb/firewall/addrgrp6/MISP_BLOCK6/member/misp-2001%3Adb8%3A%3A7",
        },
    ];
    for case in cases {
        let emu = emulator(EmulatorConfig::default()).await;
        let c = client(&emu);
        c.ensure_groups().await.expect("ensure");
        let first = c.block(ip(case.ip), &comment("42")).await.expect("block");
        match &first {
            BlockOutcome::Blocked { name, group } => {
                assert_eq!(name.as_str(), case.name);
                assert_eq!(group, case.group);
            }
            other => panic!("{other:?}"),
        }
        let second = c.block(ip(case.ip), &comment("43")).await.expect("block again");
        assert!(matches!(second, BlockOutcome::AlreadyBlocked { ref group, .. } if group == case.group));
        assert_eq!(field(&emu, case.name, case.key).as_deref(), Some(case.value));
        assert_eq!(
            field(&emu, case.name, "comment").as_deref(),
            Some(comment("42").as_str()),
            "the first comment stays"
        );
        let members = emu.members(case.group).expect("group");
        assert_eq!(members.iter().filter(|m| *m == case.name).count(), 1);
        // Membership was checked through the child table, with the name percent-encoded.
        assert!(emu.requests().iter().any(|r| r.path == case.encoded_member && r.method == "GET"));
        assert!(emu.requests().iter().all(|r| r.query.as_deref().unwrap_or("").starts_with("vdom=root")));
        assert_nothing_dangerous(&emu);
    }
}

#[tokio::test]
async fn block_creates_missing_groups_on_demand() {
    let emu = emulator(EmulatorConfig { refuse_empty_groups: true, ..EmulatorConfig::default() }).await;
    let c = client(&emu);
    c.block(ip("198.51.100.8"), &comment("1")).await.expect("block");
    assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string(), "misp-198.51.100.8".to_string()]));
}

#[tokio::test]
async fn block_refuses_foreign_objects_and_touches_nothing() {
    let foreign_comments = ["added by hand", "2023-05-06 07:08:09.123456", "fortimisp placeholder", ""];
    for foreign in foreign_comments {
        let emu = emulator(EmulatorConfig::default()).await;
        let c = client(&emu);
        c.ensure_groups().await.expect("ensure");
        emu.seed_address("misp-198.51.100.9", "198.51.100.9/32", foreign);
        emu.reset_requests();
        match c.block(ip("198.51.100.9"), &comment("5")).await {
            Err(e @ Error::Foreign { .. }) => {
                assert!(!e.is_retryable());
                if let Error::Foreign { name, comment } = e {
                    assert_eq!(name, "misp-198.51.100.9");
                    assert_eq!(comment, foreign);
                }
            }
            other => panic!("{foreign:?}: expected Foreign, got {other:?}"),
        }
        assert_eq!(field(&emu, "misp-198.51.100.9", "comment").as_deref(), Some(foreign));
        assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string()]));
        let writes: Vec<_> = emu.requests().into_iter().filter(|r| r.method != "GET" && r.method != "POST").collect();
        assert!(writes.is_empty(), "{writes:?}");
        assert_eq!(emu.route_count(&format!("POST {GRP}/{{name}}/member")), 0);
    }
}

#[tokio::test]
async fn duplicate_is_already_exists_whether_sent_with_500_or_424() {
    for status in [500, 424] {
        let emu = emulator(EmulatorConfig { duplicate_status: status, ..EmulatorConfig::default() }).await;
        let c = client(&emu);
        c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
        let again = c.block(ip("198.51.100.7"), &comment("1")).await.expect("again");
        assert!(matches!(again, BlockOutcome::AlreadyBlocked { .. }), "{status}");
        // Also the low-level calls: -5 on create and on member add are Unchanged.
        let name = fortimisp_core::fortigate::ObjectName::parse("misp-198.51.100.7").expect("name");
        assert_eq!(
            c.transport().create_address(&name, ip("198.51.100.7"), &comment("1")).await.expect("create"),
            Change::Unchanged
        );
        assert_eq!(
            c.transport().add_member(Family::V4, "MISP_BLOCK", "misp-198.51.100.7").await.expect("member"),
            Change::Unchanged
        );
    }
}

#[tokio::test]
async fn block_reports_name_clashes() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    emu.seed_group(Table::Addrgrp, "misp-198.51.100.10", &[], "");
    match c.block(ip("198.51.100.10"), &comment("1")).await {
        Err(Error::NameClash { name, code }) => {
            assert_eq!(name, "misp-198.51.100.10");
            assert_eq!(code, Some(-163));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unblock_removes_member_then_object() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    c.block(ip("2001:db8::7"), &comment("1")).await.expect("block6");
    emu.reset_requests();
    assert_eq!(c.unblock(ip("198.51.100.7"), None).await.expect("unblock"), UnblockOutcome::Unblocked);
    assert_eq!(c.unblock(ip("2001:db8::7"), None).await.expect("unblock6"), UnblockOutcome::Unblocked);
    let deletes: Vec<String> = emu.requests().into_iter().filter(|r| r.method == "DELETE").map(|r| r.path).collect();
    assert_eq!(
        deletes,
        vec![
            "/api/v2/cmdb/firewall/addrgrp/MISP_BLOCK/member/misp-198.51.100.7".to_string(),
            "/api/v2/cmdb/firewall/address/misp-198.51.100.7".to_string(),
            "/api/v2/cmdb/firewall/addrgrp6/MISP_BLOCK6/member/misp-2001%3Adb8%3A%3A7".to_string(),
            "/api/v2/cmdb/firewall/address6/misp-2001%3Adb8%3A%3A7".to_string(),
        ]
    );
    assert!(emu.object("misp-198.51.100.7").is_none());
    assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string()]));
    // Already gone: success-equivalent, and no DELETE is sent for it.
    emu.reset_requests();
    assert_eq!(c.unblock(ip("198.51.100.7"), None).await.expect("again"), UnblockOutcome::NotBlocked);
    assert!(emu.requests().iter().all(|r| r.method == "GET"));
    // Low level: -3/404 on delete is Unchanged.
    assert_eq!(c.delete_address(Family::V4, "misp-198.51.100.7").await.expect("delete"), Change::Unchanged);
    assert_eq!(
        c.remove_member(Family::V4, "MISP_BLOCK", "misp-198.51.100.7").await.expect("remove"),
        Change::Unchanged
    );
    assert_nothing_dangerous(&emu);
}

#[tokio::test]
async fn unblock_last_member_works_on_old_fortios_thanks_to_placeholder() {
    let emu = emulator(EmulatorConfig { refuse_empty_groups: true, ..EmulatorConfig::default() }).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    assert_eq!(c.unblock(ip("198.51.100.7"), None).await.expect("unblock"), UnblockOutcome::Unblocked);
    // Without the placeholder the emulated old FortiOS refuses to empty a group.
    emu.seed_address("x", "10.0.0.1", "");
    emu.seed_group(Table::Addrgrp, "G", &["x"], "");
    match c.remove_member(Family::V4, "G", "x").await {
        Err(Error::Api { code: Some(-651), .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unblock_refuses_foreign_objects() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    emu.seed_address("misp-198.51.100.9", "198.51.100.9/32", "keep me");
    assert!(matches!(c.unblock(ip("198.51.100.9"), None).await, Err(Error::Foreign { .. })));
    assert!(emu.object("misp-198.51.100.9").is_some());
    assert!(emu.requests().iter().all(|r| r.method != "DELETE"));
}

#[tokio::test]
async fn unblock_in_use_is_typed_and_not_retried() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    emu.reference_by_policy("misp-198.51.100.7");
    match c.unblock(ip("198.51.100.7"), None).await {
        Err(e @ Error::InUse { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("misp-198.51.100.7"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.route_count(&format!("DELETE {ADDR}/{{name}}")), 1);
    assert!(emu.object("misp-198.51.100.7").is_some());
}

#[tokio::test]
async fn fifty_concurrent_blocks_of_one_ip_leave_one_object_and_one_membership() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = Arc::new(client(&emu));
    c.ensure_groups().await.expect("ensure");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.spawn(async move { c.block(ip("198.51.100.77"), &comment(&i.to_string())).await });
    }
    let mut blocked = 0;
    while let Some(result) = tasks.join_next().await {
        match result.expect("task").expect("block") {
            BlockOutcome::Blocked { .. } => blocked += 1,
            BlockOutcome::AlreadyBlocked { .. } => {}
        }
    }
    assert!(blocked >= 1);
    assert_eq!(emu.names(Table::Address), vec!["misp-198.51.100.77", "misp-placeholder"]);
    assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string(), "misp-198.51.100.77".to_string()]));
    assert_eq!(emu.route_count(&format!("POST {ADDR}")), 50 + 1);
    assert_nothing_dangerous(&emu);
}

#[tokio::test(start_paused = true)]
async fn concurrent_blocks_at_the_overflow_boundary_leave_one_membership() {
    for round in 0..3 {
        let emu = emulator(EmulatorConfig::default()).await;
        let mut o = options(&emu);
        o.max_group_members = 1;
        let c = Arc::new(Client::new(o).expect("client"));
        c.ensure_groups().await.expect("ensure");
        // The creator's answer comes late: another task sees -5, finds the object ours and fills the group first.
        emu.inject(Some(&format!("POST {ADDR}")), Fault::SlowAnswer(Duration::from_millis(500)), 1);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.spawn(async move { c.block(ip("198.51.100.77"), &comment("1")).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.expect("task").expect("block");
        }
        let groups = c.block_groups(Family::V4).await.expect("groups");
        let memberships: usize = groups
            .iter()
            .map(|g| {
                let members = emu.members(g).expect("group");
                members.iter().filter(|m| *m == "misp-198.51.100.77").count()
            })
            .sum();
        assert_eq!(memberships, 1, "round {round}: {groups:?}");
        assert_eq!(groups, vec!["MISP_BLOCK".to_string()], "round {round}: no needless overflow");
    }
}

#[tokio::test]
async fn overflow_by_count_nests_new_groups_in_the_base_group() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut o = options(&emu);
    o.max_group_members = 2;
    let c = Client::new(o.clone()).expect("client");
    c.ensure_groups().await.expect("ensure");
    for i in 1..=5 {
        c.block(ip(&format!("198.51.100.{i}")), &comment("1")).await.expect("block");
    }
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        emu.members("MISP_BLOCK"),
        Some(names(&["misp-placeholder", "misp-198.51.100.1", "misp-198.51.100.2", "MISP_BLOCK-2", "MISP_BLOCK-3"]))
    );
    assert_eq!(
        emu.members("MISP_BLOCK-2"),
        Some(names(&["misp-placeholder", "misp-198.51.100.3", "misp-198.51.100.4"]))
    );
    assert_eq!(emu.members("MISP_BLOCK-3"), Some(names(&["misp-placeholder", "misp-198.51.100.5"])));
    assert_eq!(
        c.block_groups(Family::V4).await.expect("groups"),
        names(&["MISP_BLOCK", "MISP_BLOCK-2", "MISP_BLOCK-3"])
    );
    // A fresh client (a restarted daemon) finds the overflow groups through the nesting.
    let c2 = Client::new(o).expect("client");
    let again = c2.block(ip("198.51.100.4"), &comment("1")).await.expect("block");
    assert!(matches!(again, BlockOutcome::AlreadyBlocked { ref group, .. } if group == "MISP_BLOCK-2"));
    // Unblock finds the right group; the freed slot is reused.
    assert_eq!(c2.unblock(ip("198.51.100.3"), None).await.expect("unblock"), UnblockOutcome::Unblocked);
    match c2.block(ip("198.51.100.6"), &comment("1")).await.expect("block") {
        BlockOutcome::Blocked { group, .. } => assert_eq!(group, "MISP_BLOCK-2"),
        other => panic!("{other:?}"),
    }
    assert_nothing_dangerous(&emu);
}

#[tokio::test]
async fn overflow_when_the_box_answers_full() {
    let emu = emulator(EmulatorConfig { group_member_limit: 4, ..EmulatorConfig::default() }).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    let ips: Vec<IpAddr> = (1..=8).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    for addr in &ips {
        c.block(*addr, &comment("1")).await.expect("block");
    }
    let groups = c.block_groups(Family::V4).await.expect("groups");
    assert!(groups.len() >= 3, "{groups:?}");
    let base = emu.members("MISP_BLOCK").expect("base");
    for g in &groups {
        let members = emu.members(g).expect("group");
        assert!(members.len() <= 4, "{g}: {members:?}");
        assert!(members.contains(&"misp-placeholder".to_string()));
        if g != "MISP_BLOCK" {
            assert!(base.contains(g), "{g} nested in base");
        }
    }
    for addr in &ips {
        let name = format!("misp-{addr}");
        let count: usize =
            groups.iter().map(|g| emu.members(g).expect("group").iter().filter(|m| **m == name).count()).sum();
        assert_eq!(count, 1, "{name} is in exactly one group");
    }
    assert_nothing_dangerous(&emu);
}

#[tokio::test]
async fn full_errors_are_typed() {
    // Address table full (-4).
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    emu.set_table_limit(1);
    match c.block(ip("198.51.100.7"), &comment("1")).await {
        Err(e @ Error::Full { code: -4, .. }) => assert!(!e.is_retryable()),
        other => panic!("{other:?}"),
    }
    // Group full (-52) on a group the client does not manage.
    emu.set_table_limit(100);
    emu.seed_address("a", "10.0.0.1", "");
    emu.seed_address("b", "10.0.0.2", "");
    emu.seed_group(Table::Addrgrp, "G", &["a"], "");
    emu.set_group_member_limit(1);
    match c.transport().add_member(Family::V4, "G", "b").await {
        Err(Error::Full { name, code: -52 }) => assert_eq!(name, "G"),
        other => panic!("{other:?}"),
    }
    // Missing member reference (-3).
    emu.set_group_member_limit(100);
    assert!(matches!(c.transport().add_member(Family::V4, "G", "nope").await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn list_owned_filters_server_side_and_rechecks() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    for i in 0..20 {
        emu.seed_address(&format!("corp-{i}"), &format!("10.1.0.{i}/32"), "corporate");
    }
    emu.seed_address("198.51.100.7/32", "198.51.100.7/32", "2023-05-06 07:08:09.123456");
    emu.seed_address("sneaky", "10.9.9.9/32", "copied: fortimisp 2025-01-01T00:00:00Z misp-event=1");
    emu.seed_address("notime", "10.9.9.8/32", "fortimisp not-a-time");
    emu.seed_address("misp-10.0.0.0", "10.0.0.0/8", "fortimisp 2025-01-01T00:00:00Z misp-event=2");
    c.block(ip("198.51.100.7"), &comment("11")).await.expect("block");
    c.block(ip("203.0.113.5"), &comment("12")).await.expect("block");
    c.block(ip("2001:db8::7"), &comment("13")).await.expect("block6");
    emu.reset_requests();
    let mut owned = c.list_owned().await.expect("list");
    owned.sort_by(|a, b| a.name.cmp(&b.name));
    let got: Vec<(String, IpAddr, Option<String>)> =
        owned.iter().map(|o| (o.name.to_string(), o.ip, o.comment.event_id.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("misp-198.51.100.7".into(), ip("198.51.100.7"), Some("11".into())),
            ("misp-2001:db8::7".into(), ip("2001:db8::7"), Some("13".into())),
            ("misp-203.0.113.5".into(), ip("203.0.113.5"), Some("12".into())),
        ]
    );
    assert_eq!(owned[0].comment.created_at, Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap());
    let queries: Vec<String> = emu.requests().into_iter().filter_map(|r| r.query).collect();
    assert!(queries
        .iter()
        .any(|q| q.contains("filter=comment=@fortimisp%20") && q.contains("format=name|comment|subnet")));
    assert!(queries.iter().any(|q| q.contains("format=name|comment|ip6")));
}

#[tokio::test]
async fn list_owned_pages_through_large_tables() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    for i in 0..2500u32 {
        let addr = std::net::Ipv4Addr::from(0xC633_0000 + i); // 198.51.0.0 + i
        emu.seed_address(&format!("misp-{addr}"), &format!("{addr}/32"), comment("1").as_str());
    }
    let owned = c.list_owned().await.expect("list");
    assert_eq!(owned.len(), 2500);
    let starts: Vec<String> =
        emu.requests().into_iter().filter(|r| r.route == format!("GET {ADDR}")).filter_map(|r| r.query).collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts[1].contains("start=1000&count=1000"));
}

#[tokio::test]
async fn legacy_members_are_found_and_removed_with_encoded_names() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    emu.seed_address("198.51.100.7/32", "198.51.100.7/32", "2023-05-06 07:08:09.123456");
    emu.seed_address("198.51.100.8/32", "198.51.100.8/32", "2023-05-06 07:08:09.123456");
    emu.seed_address("ops", "10.0.0.1/32", "ops host");
    c.transport().add_member(Family::V4, "MISP_BLOCK", "198.51.100.7/32").await.expect("add legacy");
    c.transport().add_member(Family::V4, "MISP_BLOCK", "ops").await.expect("add ops");
    let legacy = c.legacy_members().await.expect("legacy");
    assert_eq!(legacy.len(), 1, "{legacy:?}");
    assert_eq!(legacy[0].name, "198.51.100.7/32");
    assert_eq!(legacy[0].group, "MISP_BLOCK");
    assert_eq!(legacy[0].network.map(|n| n.to_string()).as_deref(), Some("198.51.100.7/32"));
    assert!(c.group_members(Family::V4, "MISP_BLOCK").await.expect("members").contains(&"ops".to_string()));
    emu.reset_requests();
    assert_eq!(c.unblock_legacy(&legacy[0], None).await.expect("unblock"), UnblockOutcome::Unblocked);
    let paths: Vec<String> = emu.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/api/v2/cmdb/firewall/addrgrp/MISP_BLOCK/member/198.51.100.7%2F32".to_string()));
    assert!(paths.contains(&"/api/v2/cmdb/firewall/address/198.51.100.7%2F32".to_string()));
    assert!(emu.object("198.51.100.7/32").is_none());
    assert!(emu.object("198.51.100.8/32").is_some(), "not a member: untouched");
    assert!(emu.object("ops").is_some());
    // A legacy member whose comment changed meanwhile is left alone.
    emu.seed_address("198.51.100.8/32", "198.51.100.8/32", "now managed by ops");
    let mut stale = legacy[0].clone();
    stale.name = "198.51.100.8/32".into();
    assert!(matches!(c.unblock_legacy(&stale, None).await, Err(Error::Foreign { .. })));
    assert_nothing_dangerous(&emu);
}

#[tokio::test]
async fn delete_without_a_name_is_never_sent() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    for name in ["", " "] {
        assert!(matches!(c.delete_address(Family::V4, name).await, Err(Error::EmptyMkey)));
        assert!(matches!(c.delete_address(Family::V6, name).await, Err(Error::EmptyMkey)));
        assert!(matches!(c.remove_member(Family::V4, "MISP_BLOCK", name).await, Err(Error::EmptyMkey)));
        assert!(matches!(c.remove_member(Family::V4, name, "x").await, Err(Error::EmptyMkey)));
    }
    assert_eq!(emu.total_requests(), 0);
}

#[tokio::test]
async fn banned_ip_backend() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ban(ip("198.51.100.7"), Some(Duration::from_secs(3600))).await.expect("ban");
    c.ban(ip("2001:db8::7"), None).await.expect("ban6");
    let body = &emu.requests()[0].body;
    let body: Value = serde_json::from_str(body).expect("json body");
    assert_eq!(body, json!({"ip_addresses": ["198.51.100.7"], "expiry": 3600}));
    let mut banned = c.list_banned().await.expect("list");
    banned.sort_by_key(|b| b.ip);
    assert_eq!(banned.len(), 2);
    assert_eq!(banned[0].ip, ip("198.51.100.7"));
    let ttl = banned[0].expires.expect("expires") - banned[0].created.expect("created");
    assert_eq!(ttl.num_seconds(), 3600);
    assert_eq!(banned[1].expires, None, "no expiry");
    c.unban(ip("198.51.100.7")).await.expect("unban");
    let banned = c.list_banned().await.expect("list");
    assert_eq!(banned.iter().map(|b| b.ip).collect::<Vec<_>>(), vec![ip("2001:db8::7")]);
}

#[tokio::test]
async fn vdom_is_sent_on_every_call() {
    let emu = emulator(EmulatorConfig { vdoms: vec!["root".into(), "edge".into()], ..EmulatorConfig::default() }).await;
    let mut o = options(&emu);
    o.vdom = "edge".into();
    let c = Client::new(o).expect("client");
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    c.ban(ip("198.51.100.8"), None).await.expect("ban");
    assert!(emu.requests().iter().all(|r| r.query.as_deref().unwrap_or("").starts_with("vdom=edge")));
}

#[tokio::test]
async fn unauthorized_is_fatal_and_never_retried() {
    type Setup = fn(&FortiGateEmulator) -> ClientOptions;
    let cases: [(&str, Setup); 3] = [
        ("bad token", |emu| {
            let mut o = options(emu);
            o.api_key = ApiKey::new("wrong");
            o
        }),
        ("revoked token", |emu| {
            emu.revoke_token();
            options(emu)
        }),
        ("untrusted host", |emu| {
            emu.set_trusted_host(false);
            options(emu)
        }),
    ];
    for (label, setup) in cases {
        let emu = emulator(EmulatorConfig::default()).await;
        let c = Client::new(setup(&emu)).expect("client");
        match c.block(ip("198.51.100.7"), &comment("1")).await {
            Err(e @ Error::Unauthorized) => {
                assert!(e.is_fatal() && !e.is_retryable(), "{label}");
            }
            other => panic!("{label}: {other:?}"),
        }
        assert_eq!(emu.total_requests(), 1, "{label}: one request, no retry");
    }
}

#[tokio::test(start_paused = true)]
async fn lockout_429_is_retried_with_backoff_until_it_lifts() {
    let emu = emulator(EmulatorConfig {
        lockout_threshold: 3,
        lockout_duration: Duration::from_secs(2),
        ..EmulatorConfig::default()
    })
    .await;
    let mut bad = options(&emu);
    bad.api_key = ApiKey::new("wrong");
    let bad = Client::new(bad).expect("client");
    for _ in 0..3 {
        assert!(matches!(bad.system_status().await, Err(Error::Unauthorized)));
    }
    let mut o = options(&emu);
    o.retry =
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(10) };
    let good = Client::new(o).expect("client");
    let start = Instant::now();
    good.system_status().await.expect("succeeds once the lockout lifts");
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    assert!(emu.total_requests() >= 3 + 2);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_bounded_exponential_backoff() {
    let faults: [(&str, Fault); 3] =
        [("503", Fault::Status(503)), ("429", Fault::TooManyRequests), ("drop", Fault::Drop)];
    for (label, fault) in faults {
        let emu = emulator(EmulatorConfig::default()).await;
        let c = client(&emu);
        emu.inject(None, fault, 2);
        let start = Instant::now();
        c.system_status().await.expect(label);
        let elapsed = start.elapsed();
        assert_eq!(emu.total_requests(), 3, "{label}");
        // Attempt 1 waits in [100, 200] ms, attempt 2 in [200, 400] ms.
        assert!(elapsed >= Duration::from_millis(300), "{label}: {elapsed:?}");
        assert!(elapsed <= Duration::from_millis(650), "{label}: {elapsed:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    emu.fail_next(10, 500);
    match c.system_status().await {
        Err(e @ Error::Http { status: 500 }) => assert!(e.is_retryable()),
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.total_requests(), 4);
    // A FortiOS error code is an answer, not a transient failure: no retry.
    emu.clear_faults();
    emu.reset_requests();
    emu.reference_by_policy("misp-198.51.100.7");
    c.block(ip("198.51.100.7"), &comment("1")).await.expect("block");
    emu.reset_requests();
    assert!(matches!(c.unblock(ip("198.51.100.7"), None).await, Err(Error::InUse { .. })));
    assert_eq!(emu.route_count(&format!("DELETE {ADDR}/{{name}}")), 1);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retried_then_reported() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut o = options(&emu);
    o.timeout = Duration::from_secs(1);
    o.retry.max_attempts = 3;
    let c = Client::new(o).expect("client");
    emu.set_latency(Duration::from_secs(30));
    let start = Instant::now();
    match c.system_status().await {
        Err(e @ Error::Timeout) => assert!(e.is_retryable()),
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.total_requests(), 3);
    assert!(start.elapsed() >= Duration::from_secs(3));
    emu.set_latency(Duration::from_millis(100));
    c.system_status().await.expect("slow but within the timeout");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_all_requests() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut o = options(&emu);
    o.requests_per_second = 5.0;
    let c = Arc::new(Client::new(o).expect("client"));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let c = c.clone();
        tasks.spawn(async move { c.system_status().await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("status");
    }
    let elapsed = start.elapsed();
    // 10 requests at 5/s: the 10th leaves 9 intervals of 200 ms after the first.
    assert!(elapsed >= Duration::from_millis(1800), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    // Retries go through the same limit.
    emu.fail_next(1, 503);
    let start = Instant::now();
    c.system_status().await.expect("status");
    assert!(start.elapsed() >= Duration::from_millis(200));
}

const MEMBER_ADD: &str = "POST /api/v2/cmdb/firewall/addrgrp/{name}/member";

/// Upper bound for waits on observable state; never reached when the code is right.
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("{what}: still waiting after {PATIENCE:?}"))
}

/// Which block groups hold `member`.
fn groups_of(emu: &FortiGateEmulator, groups: &[String], member: &str) -> Vec<String> {
    groups.iter().filter(|g| emu.members(g).expect("group").iter().any(|m| m == member)).cloned().collect()
}

/// No lock is held across a request: while A's member add is held by the box (or failing with 503 and then
/// held on its retry), block B completes.
#[tokio::test]
async fn a_slow_or_failing_member_add_does_not_hold_up_another_block() {
    for faults in [vec![], vec![Fault::Status(503)]] {
        let emu = emulator(EmulatorConfig::default()).await;
        let c = Arc::new(client(&emu));
        c.ensure_groups().await.expect("ensure");
        let gate = Gate::new();
        for fault in &faults {
            emu.inject(Some(MEMBER_ADD), fault.clone(), 1);
        }
        emu.inject(Some(MEMBER_ADD), Fault::Hold(gate.clone()), 1);
        let a = tokio::spawn({
            let c = c.clone();
            async move { c.block(ip("198.51.100.1"), &comment("1")).await }
        });
        within("A's member add reaches the box", gate.wait_arrived(1)).await;
        let b = within("block B while A is held", c.block(ip("198.51.100.2"), &comment("2"))).await;
        assert!(matches!(b, Ok(BlockOutcome::Blocked { .. })), "{faults:?}: {b:?}");
        let members = emu.members("MISP_BLOCK").expect("base");
        assert!(members.contains(&"misp-198.51.100.2".to_string()), "{faults:?}: {members:?}");
        assert!(!members.contains(&"misp-198.51.100.1".to_string()), "A is still held");
        assert!(!a.is_finished());
        gate.open();
        within("A after the gate opens", a).await.expect("task").expect("block A");
        assert_eq!(emu.members("MISP_BLOCK").expect("base").len(), 3);
    }
}

/// Two blocks racing for the last slot of a group: the one whose add is in flight keeps the slot, the other
/// goes to an overflow group; each address ends in exactly one group and no group exceeds `max_group_members`.
#[tokio::test]
async fn two_blocks_racing_for_the_last_slot_end_in_one_group_each() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut o = options(&emu);
    o.max_group_members = 2;
    let c = Arc::new(Client::new(o).expect("client"));
    c.ensure_groups().await.expect("ensure");
    c.block(ip("198.51.100.1"), &comment("1")).await.expect("first");
    let gate = Gate::new();
    emu.inject(Some(MEMBER_ADD), Fault::Hold(gate.clone()), 1);
    let a = tokio::spawn({
        let c = c.clone();
        async move { c.block(ip("198.51.100.2"), &comment("1")).await }
    });
    within("A's add reaches the box", gate.wait_arrived(1)).await;
    let b = within("B", c.block(ip("198.51.100.3"), &comment("1"))).await.expect("B");
    assert!(matches!(b, BlockOutcome::Blocked { ref group, .. } if group == "MISP_BLOCK-2"), "{b:?}");
    gate.open();
    let a = within("A", a).await.expect("task").expect("A");
    assert!(matches!(a, BlockOutcome::Blocked { ref group, .. } if group == "MISP_BLOCK"), "{a:?}");
    let groups = c.block_groups(Family::V4).await.expect("groups");
    for i in 1..=3 {
        assert_eq!(groups_of(&emu, &groups, &format!("misp-198.51.100.{i}")).len(), 1, "{i}");
    }
    let base = emu.members("MISP_BLOCK").expect("base");
    assert_eq!(base.iter().filter(|m| m.starts_with("misp-198")).count(), 2, "{base:?}");
    assert_nothing_dangerous(&emu);
}

/// The cache thinks a group has room, the box does not (-52) because a concurrent add took the last entry: the
/// loser moves on to an overflow group; every address ends in exactly one group.
#[tokio::test]
async fn a_member_limit_answer_to_one_of_two_racing_blocks_moves_it_on() {
    // Placeholder + 2 entries per group on the box; the client's own limit is far away.
    let emu = emulator(EmulatorConfig { group_member_limit: 3, ..EmulatorConfig::default() }).await;
    let c = Arc::new(client(&emu));
    c.ensure_groups().await.expect("ensure");
    c.block(ip("198.51.100.1"), &comment("1")).await.expect("first");
    let gate = Gate::new();
    emu.inject(Some(MEMBER_ADD), Fault::Hold(gate.clone()), 1);
    let a = tokio::spawn({
        let c = c.clone();
        async move { c.block(ip("198.51.100.2"), &comment("1")).await }
    });
    within("A's add reaches the box", gate.wait_arrived(1)).await;
    within("B", c.block(ip("198.51.100.3"), &comment("1"))).await.expect("B");
    gate.open();
    within("A", a).await.expect("task").expect("A gets -52, then a slot elsewhere");
    let groups = c.block_groups(Family::V4).await.expect("groups");
    assert!(groups.len() >= 2, "{groups:?}");
    for i in 1..=3 {
        assert_eq!(groups_of(&emu, &groups, &format!("misp-198.51.100.{i}")).len(), 1, "{i}: {groups:?}");
    }
    for g in &groups {
        assert!(emu.members(g).expect("group").len() <= 3, "{g}");
    }
    assert_nothing_dangerous(&emu);
}

/// With nine block groups, an unblock with the caller's hint costs three requests (read, remove member,
/// delete); without a hint the cache knows the group, so it costs the same and probes nothing.
#[tokio::test]
async fn unblock_with_or_without_a_hint_probes_no_group() {
    let emu = emulator(EmulatorConfig::default()).await;
    let mut o = options(&emu);
    o.max_group_members = 1;
    let c = Client::new(o).expect("client");
    c.ensure_groups().await.expect("ensure");
    for i in 1..=9 {
        c.block(ip(&format!("198.51.100.{i}")), &comment("1")).await.expect("block");
    }
    assert_eq!(c.block_groups(Family::V4).await.expect("groups").len(), 9);
    let routes = |emu: &FortiGateEmulator| {
        let mut r: Vec<String> = emu.requests().into_iter().map(|r| r.route).collect();
        r.sort();
        r
    };
    let three = vec![
        "DELETE /api/v2/cmdb/firewall/address/{name}".to_string(),
        "DELETE /api/v2/cmdb/firewall/addrgrp/{name}/member/{member}".to_string(),
        "GET /api/v2/cmdb/firewall/address/{name}".to_string(),
    ];
    emu.reset_requests();
    let hint = ["MISP_BLOCK-5".to_string(), "ops-group".to_string()];
    assert_eq!(c.unblock(ip("198.51.100.5"), Some(&hint)).await.expect("hinted"), UnblockOutcome::Unblocked);
    assert_eq!(routes(&emu), three, "hinted: a group that is not a block group is never touched");
    emu.reset_requests();
    assert_eq!(c.unblock(ip("198.51.100.7"), None).await.expect("cached"), UnblockOutcome::Unblocked);
    assert_eq!(routes(&emu), three, "from the cache");
    assert!(emu.object("misp-198.51.100.5").is_none() && emu.object("misp-198.51.100.7").is_none());
    assert_nothing_dangerous(&emu);
}

/// A wrong hint, or a cache that missed a membership (another client added it), still ends unblocked: the box's
/// -23 makes the client read the groups again.
#[tokio::test]
async fn unblock_recovers_from_a_wrong_hint_or_a_stale_cache() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    c.ensure_groups().await.expect("ensure");
    let other = client(&emu);
    other.block(ip("198.51.100.8"), &comment("1")).await.expect("block elsewhere");
    other.block(ip("198.51.100.9"), &comment("1")).await.expect("block elsewhere");
    assert_eq!(c.unblock(ip("198.51.100.8"), None).await.expect("stale cache"), UnblockOutcome::Unblocked);
    let wrong = ["MISP_BLOCK-4".to_string()];
    assert_eq!(c.unblock(ip("198.51.100.9"), Some(&wrong)).await.expect("wrong hint"), UnblockOutcome::Unblocked);
    assert_eq!(emu.members("MISP_BLOCK"), Some(vec!["misp-placeholder".to_string()]));
    assert!(emu.object("misp-198.51.100.9").is_none());
    // A policy reference is still reported as in use.
    c.block(ip("198.51.100.10"), &comment("1")).await.expect("block");
    emu.reference_by_policy("misp-198.51.100.10");
    assert!(matches!(c.unblock(ip("198.51.100.10"), None).await, Err(Error::InUse { .. })));
}

/// Characters FortiOS refuses in comments (MISP data, an operator's text) are replaced before sending, so the
/// box (here the emulator, which refuses them like FortiOS) accepts the block.
#[tokio::test]
async fn refused_characters_in_comments_are_replaced_before_sending() {
    let emu = emulator(EmulatorConfig::default()).await;
    let c = client(&emu);
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).single().expect("valid time");
    let text = r#"say "hi" to <b>&'you' #1 (now)"#;
    c.block(ip("198.51.100.7"), &Comment::new(at, "1", text)).await.expect("block");
    let written = field(&emu, "misp-198.51.100.7", "comment").expect("comment");
    assert_eq!(written, "fortimisp 2025-06-01T12:00:00Z misp-event=1 say _hi_ to _b___you_ _1 _now_");
    for request in emu.requests().into_iter().filter(|r| !r.body.is_empty()) {
        let body: Value = serde_json::from_str(&request.body).expect("json body");
        for key in ["name", "comment"] {
            let text = body.get(key).and_then(Value::as_str).unwrap_or_default();
            assert!(!text.contains(REFUSED_IN_TEXT), "{key}: {text:?}");
        }
    }
}

// ---- request timing -----------------------------------------------------------------------------------------

/// `fortimisp_request_duration_seconds_count{server="fortigate", outcome}` as scraped.
fn timed(metrics: &fortimisp_core::metrics::Metrics, outcome: &str) -> u64 {
    let sample = format!("fortimisp_request_duration_seconds_count{{server=\"fortigate\",outcome=\"{outcome}\"}} ");
    let text = metrics.render();
    text.lines().find_map(|l| l.strip_prefix(&sample)).map_or(0, |v| v.parse().expect("a count"))
}

/// Every request of a block is timed, and the answers of normal work (a group not there yet: 404) are `ok`; a
/// refused token is an `error`, sent once.
#[tokio::test]
async fn every_request_is_timed_and_normal_answers_are_not_errors() {
    let emu = emulator(EmulatorConfig::default()).await;
    let metrics = fortimisp_core::metrics::Metrics::new();
    let mut o = options(&emu);
    o.requests = Some(metrics.requests("fortigate"));
    let client = Client::new(o).expect("client builds");

    client.block(ip("198.51.100.7"), &comment("1")).await.expect("blocked");
    let sent = emu.total_requests();
    assert!(sent >= 3, "groups checked, object created, member added: {:?}", emu.route_counts());
    assert_eq!((timed(&metrics, "ok"), timed(&metrics, "error")), (sent, 0));

    emu.revoke_token();
    client.block(ip("198.51.100.8"), &comment("1")).await.expect_err("the token is refused");
    assert_eq!(emu.total_requests(), sent + 1, "a 401 is not retried");
    assert_eq!((timed(&metrics, "ok"), timed(&metrics, "error")), (sent, 1));
}

// ---- HA cluster URLs ----------------------------------------------------------------------------------------

/// A URL that refuses connections: a port bound, then released.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("bound");
    drop(listener);
    format!("http://{addr}")
}

/// The current URL refuses connections: the call goes to the next URL at once, and so do the calls after it; a
/// unit that stops answering later is left the same way. Nothing is lost and nothing retried with backoff.
#[tokio::test]
async fn an_unreachable_url_fails_over_to_the_next_and_stays_there() {
    let second = emulator(EmulatorConfig::default()).await;
    let third = emulator(EmulatorConfig { token: second.token(), ..EmulatorConfig::default() }).await;
    let mut o = options(&second);
    o.url = dead_url();
    o.fallback_urls = vec![second.url().to_string(), third.url().to_string()];
    o.retry = RetryPolicy { max_attempts: 1, ..o.retry };
    let client = Client::new(o).expect("client builds");

    let started = Instant::now();
    client.block(ip("198.51.100.7"), &comment("1")).await.expect("blocked through the second URL");
    assert!(second.object("misp-198.51.100.7").is_some());
    assert_eq!(client.transport().base(), second.url().trim_end_matches('/'));
    let on_second = second.total_requests();
    client.block(ip("198.51.100.8"), &comment("1")).await.expect("blocked");
    assert!(second.total_requests() > on_second, "the second URL stays in use");
    assert!(started.elapsed() < Duration::from_secs(4), "no backoff between URLs: {:?}", started.elapsed());

    // The second unit goes away: the third takes over (it holds the synced configuration in a real cluster).
    drop(second);
    third.seed_group(Table::Addrgrp, "MISP_BLOCK", &[], "");
    third.seed_group(Table::Addrgrp6, "MISP_BLOCK6", &[], "");
    client.block(ip("198.51.100.9"), &comment("1")).await.expect("blocked through the third URL");
    assert!(third.object("misp-198.51.100.9").is_some());
    assert_eq!(client.transport().base(), third.url().trim_end_matches('/'));
}

/// A TLS verification failure is not a reason to try another URL: the same cluster shows the same certificate.
#[test]
fn certificate_failures_are_not_unreachable() {
    assert!(Error::Timeout.is_unreachable());
    assert!(!Error::Unauthorized.is_unreachable());
    assert!(!Error::Http { status: 503 }.is_unreachable());
}
