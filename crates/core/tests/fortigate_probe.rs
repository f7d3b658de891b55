//! The permission probes `integration validate` runs (`fortigate::Client::probe_address_write`, `probe_ban`,
//! `block_group_meta`) against the FortiGate emulator: what they prove with each admin profile, and that the probe
//! object never stays behind, whatever fails in the middle, unless the delete itself fails (and then it is named).

use std::time::Duration;

use chrono::{TimeZone, Utc};
use fortimisp_core::fortigate::{Client, ClientOptions, Error, Family, RetryPolicy, WriteProbe, PROBE_IP};
use fortimisp_core::secret::ApiKey;
use fortimisp_testkit::fortigate::{AdminProfile, EmulatorConfig, Fault, FortiGateEmulator, Table};

const ADDR: &str = "/api/v2/cmdb/firewall/address";
const NONCE: u32 = 0x2a;
const PROBE: &str = "misp-validate-0000002a";

async fn start(profile: AdminProfile) -> (FortiGateEmulator, Client) {
    let emu = FortiGateEmulator::start(EmulatorConfig { profile, ..EmulatorConfig::default() }).await.expect("emu");
    let mut o = ClientOptions::new(emu.url(), ApiKey::new(emu.token()));
    o.requests_per_second = 0.0;
    o.retry =
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(5), max_delay: Duration::from_millis(20) };
    let client = Client::new(o).expect("client");
    (emu, client)
}

async fn probe(client: &Client) -> WriteProbe {
    let at = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).single().expect("time");
    client.probe_address_write(at, NONCE).await
}

/// (method, route) of every request after the status call, to see exactly what the probe did.
fn calls(emu: &FortiGateEmulator) -> Vec<String> {
    emu.requests().into_iter().map(|r| format!("{} {}", r.method, r.path)).collect()
}

#[tokio::test]
async fn a_full_profile_proves_the_write_and_leaves_nothing() {
    let (emu, client) = start(AdminProfile::FULL).await;
    assert_eq!(client.probe_name(NONCE).as_str(), PROBE);
    match probe(&client).await {
        WriteProbe::Proven { name } => assert_eq!(name.as_str(), PROBE),
        other => panic!("{other:?}"),
    }
    assert!(emu.names(Table::Address).is_empty(), "the probe is gone");
    let path = format!("{ADDR}/{PROBE}");
    assert_eq!(calls(&emu), [format!("POST {ADDR}"), format!("GET {path}"), format!("DELETE {path}")]);
    let body: serde_json::Value = serde_json::from_str(&emu.requests()[0].body).expect("json body");
    assert_eq!(body["subnet"], format!("{PROBE_IP}/32"));
    let comment = body["comment"].as_str().expect("comment");
    assert!(comment.starts_with("fortimisp validate probe 2025-06-01T12:00:00Z") && comment.contains("safe to delete"));
}

#[tokio::test]
async fn a_read_only_profile_is_refused_with_403_and_nothing_is_created() {
    let (emu, client) = start(AdminProfile::READ_ONLY).await;
    match probe(&client).await {
        WriteProbe::Refused { error: Error::Forbidden { status: 403, .. }, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(emu.names(Table::Address).is_empty());
    assert_eq!(calls(&emu), [format!("POST {ADDR}")], "nothing to read back or delete");
}

#[tokio::test]
async fn a_failed_read_back_still_deletes_the_probe() {
    let (emu, client) = start(AdminProfile::FULL).await;
    emu.inject(Some("GET /api/v2/cmdb/firewall/address/{name}"), Fault::Status(503), 3);
    match probe(&client).await {
        WriteProbe::Failed { error: Error::Http { status: 503 }, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(emu.names(Table::Address).is_empty(), "deleted although the read failed");
}

#[tokio::test]
async fn a_failed_delete_names_the_probe_left_behind() {
    let (emu, client) = start(AdminProfile::FULL).await;
    emu.inject(Some("DELETE /api/v2/cmdb/firewall/address/{name}"), Fault::Status(503), 3);
    match probe(&client).await {
        WriteProbe::LeftBehind { name, error: Error::Http { status: 503 }, cause: None } => {
            assert_eq!(name.as_str(), PROBE)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.names(Table::Address), [PROBE], "it really is still there");
}

#[tokio::test]
async fn a_lost_create_answer_is_checked_and_nothing_is_deleted_blindly() {
    let (emu, client) = start(AdminProfile::FULL).await;
    emu.inject(Some("POST /api/v2/cmdb/firewall/address"), Fault::Status(502), 3);
    match probe(&client).await {
        WriteProbe::Refused { error: Error::Http { status: 502 }, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(emu.names(Table::Address).is_empty());
    assert!(!calls(&emu).iter().any(|c| c.starts_with("DELETE")), "no delete of an object that was never made");
}

#[tokio::test]
async fn an_object_of_someone_else_with_the_probe_name_is_left_alone() {
    let (emu, client) = start(AdminProfile::FULL).await;
    emu.seed_address(PROBE, "10.0.0.1/32", "ops: do not touch");
    match probe(&client).await {
        WriteProbe::Refused { error: Error::Foreign { comment, .. }, .. } => assert_eq!(comment, "ops: do not touch"),
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.object(PROBE).expect("kept").1["comment"], "ops: do not touch");
    assert!(!calls(&emu).iter().any(|c| c.starts_with("DELETE")));
}

#[tokio::test]
async fn ban_probe_and_group_references_follow_the_profile() {
    let (emu, client) = start(AdminProfile::NO_MONITOR).await;
    assert!(matches!(client.probe_ban().await, Err(Error::Forbidden { status: 403, .. })));
    assert!(matches!(client.list_banned().await, Err(Error::Forbidden { .. })));
    emu.set_profile(AdminProfile::FULL);
    client.probe_ban().await.expect("an empty add_users is accepted");
    assert!(emu.banned().is_empty(), "nobody banned");

    assert_eq!(client.block_group_meta(Family::V4).await.expect("read"), None);
    client.ensure_groups().await.expect("groups");
    let meta = client.block_group_meta(Family::V4).await.expect("read").expect("exists");
    assert_eq!((meta.group.name.as_str(), meta.references), ("MISP_BLOCK", Some(0)));
    emu.reference_by_policy("MISP_BLOCK6");
    let meta6 = client.block_group_meta(Family::V6).await.expect("read").expect("exists");
    assert_eq!(meta6.references, Some(1));
    emu.set_profile(AdminProfile { address: fortimisp_testkit::fortigate::Access::None, ..AdminProfile::FULL });
    assert!(matches!(client.block_group_meta(Family::V4).await, Err(Error::Forbidden { .. })));
}
