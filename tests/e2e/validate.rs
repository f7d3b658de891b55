//! `integration validate` proves each permission the configured backend needs against the emulators' admin
//! profiles and MISP roles: one line per check, exit 1 naming what is missing, and nothing left behind on the
//! FortiGate (the write check creates and deletes one probe object).

use fortimisp_e2e::fortimisp_testkit::fortigate::{Access, AdminProfile, EmulatorConfig, Table};
use fortimisp_e2e::fortimisp_testkit::misp::Role;
use fortimisp_e2e::{fortigate_writes, Env};

fn run(env: &Env) -> (Option<i32>, String) {
    let out = env.integration_cmd(&["validate"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The line of `text` that mentions `words`, with its status label.
fn line<'t>(text: &'t str, words: &str) -> &'t str {
    text.lines().find(|l| l.contains(words)).unwrap_or_else(|| panic!("no line with {words:?}:\n{text}"))
}

fn status_of<'t>(text: &'t str, words: &str) -> &'t str {
    line(text, words).split_whitespace().next().expect("a status label")
}

fn with_profile(profile: AdminProfile) -> EmulatorConfig {
    EmulatorConfig { profile, ..EmulatorConfig::default() }
}

/// A full profile and an admin role pass, one line per check, and the FortiGate holds exactly what it held before
/// (the probe was created and deleted: two writes, no object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_profile_passes_and_leaves_nothing_behind() {
    let env = Env::start().await;
    env.fortigate.seed_address("ops-server", "10.9.9.9/32", "ops");
    let (code, text) = run(&env);
    assert_eq!(code, Some(0), "{text}");
    for (words, status) in [
        ("misp: https://", "ok"),
        ("misp: restSearch allowed", "ok"),
        ("perm_sighting not needed", "ok"),
        ("may fetch feeds", "ok"),
        ("fortigate: https://", "ok"),
        ("block group MISP_BLOCK does not exist yet", "warn"),
        ("block group MISP_BLOCK6 does not exist yet", "warn"),
        ("may create and delete address objects", "ok"),
    ] {
        assert_eq!(status_of(&text, words), status, "{words}:\n{text}");
    }
    assert!(!text.contains("MISSING") && !text.contains("FAIL"), "{text}");
    assert_eq!(env.fortigate.names(Table::Address), ["ops-server"], "the probe is gone, the rest untouched");
    assert_eq!(fortigate_writes(&env), 2, "one create and one delete: {:?}", env.fortigate.route_counts());
    let probe = line(&text, "may create and delete").split("probe ").nth(1).expect("the probe is named");
    assert!(probe.starts_with("misp-validate-"), "{probe}");

    // With the groups in place and a policy using the IPv4 one: ok for it, a warning for the unused IPv6 group.
    env.fortigate.seed_address("misp-placeholder", "192.0.2.255/32", "fortimisp placeholder");
    env.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &["misp-placeholder"], "");
    env.fortigate.seed_group(Table::Addrgrp6, "MISP_BLOCK6", &[], "");
    env.fortigate.reference_by_policy("MISP_BLOCK");
    let (code, text) = run(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(status_of(&text, "block group MISP_BLOCK readable"), "ok", "{text}");
    assert!(line(&text, "block group MISP_BLOCK readable").contains("referenced by 1"), "{text}");
    assert_eq!(status_of(&text, "MISP_BLOCK6 (0 members) is referenced by no policy"), "warn", "{text}");
}

/// A read-only token can list but not write: validate fails naming the write permission, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_fails_naming_the_write_permission() {
    let env = Env::start_with(with_profile(AdminProfile::READ_ONLY)).await;
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    let missing = line(&text, "may not create address objects");
    assert!(missing.starts_with("MISSING fortigate:") && missing.contains("firewall address read-write"), "{text}");
    assert!(env.fortigate.names(Table::Address).is_empty());
    assert_eq!(status_of(&text, "misp: restSearch allowed"), "ok", "MISP is still checked: {text}");

    // No address permission at all: the groups cannot even be read.
    env.fortigate.set_profile(AdminProfile { address: Access::None, ..AdminProfile::FULL });
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(status_of(&text, "cannot read address group MISP_BLOCK "), "MISSING", "{text}");
}

/// `backend = "banned-ip"`: a token without the monitor permission fails on reading and on banning; with it,
/// validate passes and bans nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_ip_needs_the_monitor_permission() {
    let mut env = Env::start_with(with_profile(AdminProfile::NO_MONITOR)).await;
    env.tweak("vdom = \"root\"", "vdom = \"root\"\nbackend = \"banned-ip\"");
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    for words in ["cannot read the banned-IP list", "may not ban addresses"] {
        let missing = line(&text, words);
        assert!(missing.starts_with("MISSING fortigate:") && missing.contains("authgrp"), "{words}: {text}");
    }
    assert!(!text.contains("address objects"), "banned-ip does not probe address objects: {text}");

    env.fortigate.set_profile(AdminProfile::FULL);
    let (code, text) = run(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(status_of(&text, "may ban addresses"), "ok", "{text}");
    assert!(env.fortigate.banned().is_empty(), "the probe bans nobody");
    assert!(env.fortigate.names(Table::Address).is_empty());
}

/// MISP roles: without perm_sighting, validate fails only when sightings are on; without site admin, only while
/// feed updates are on; a role that may not search, or may not use its key, fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_roles_against_what_the_config_needs() {
    let mut env = Env::start().await;
    env.misp.set_role(Role { perm_sighting: false, ..Role::default() });
    let (code, text) = run(&env);
    assert_eq!(code, Some(0), "sightings are off by default: {text}");
    assert_eq!(status_of(&text, "perm_sighting not needed"), "ok", "{text}");

    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"12h\"\nsightings = true");
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    let missing = line(&text, "lacks perm_sighting");
    assert!(missing.starts_with("MISSING misp: sightings = true"), "{text}");

    env.misp.set_role(Role { perm_site_admin: false, ..Role::default() });
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    assert!(line(&text, "is not site admin").starts_with("MISSING misp: feed updates need a site admin key"), "{text}");
    env.tweak("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\"");
    let (code, text) = run(&env);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(status_of(&text, "site admin not needed"), "ok", "{text}");

    env.misp.set_rate_limit(Some(0));
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(status_of(&text, "may not search"), "MISSING", "{text}");

    env.misp.set_rate_limit(None);
    env.misp.set_role(Role { perm_auth: false, ..Role::default() });
    let (code, text) = run(&env);
    assert_eq!(code, Some(1), "{text}");
    let refused = line(&text, "refused the api key");
    assert!(refused.starts_with("FAIL  misp:") && refused.contains("Auth key access"), "{text}");
}
