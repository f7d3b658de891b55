//! Security properties of the real binaries: API keys never reach logs (even at `trace`), metrics or command
//! output; TLS verification fails closed against a server signed by another CA; a config file readable by others
//! is warned about; the never-block list and the reserved ranges can never be blocked, by the daemon, `replay` or
//! `block` by hand (`--force` lifts `never_block` only, never the reserved ranges).

use std::time::Duration;

use fortimisp_e2e::fortimisp_testkit::fortigate::Table;
use fortimisp_e2e::fortimisp_testkit::tls::TestCa;
use fortimisp_e2e::{eventually, send_udp, Daemon, Env};

use crate::faults::{add_hits, audit, hit_line, is_blocked, start, wait_blocked, WAIT};

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Both keys, through every path that prints something: `validate` (good and refused keys), the daemon at
/// `level = "trace"` doing a block, a 401 and a 403, and the metrics page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_appear_in_logs_metrics_or_output() {
    let mut env = Env::start().await;
    env.tweak("level = \"info,fortimisp_core=debug\"", "level = \"trace\"");
    let misp_key = env.misp.key();
    let fg_key = env.fortigate.token();
    let leaks = |text: &str, what: &str| {
        assert!(!text.contains(&misp_key), "the MISP key leaked into {what}:\n{text}");
        assert!(!text.contains(&fg_key), "the FortiGate key leaked into {what}:\n{text}");
    };
    add_hits(&env, &["198.51.100.150", "198.51.100.151"]);
    let out = env.integration_cmd(&["validate"]);
    assert!(out.status.success(), "{}", output_text(&out));
    leaks(&output_text(&out), "validate");

    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.150")]);
    wait_blocked(&env, &["198.51.100.150"]).await;
    env.fortigate.revoke_token();
    send_udp(env.udp, &[hit_line("198.51.100.151")]);
    eventually(WAIT, "the 401 is reported", || async { env.metric("fortimisp_fortigate_unauthorized").await == 1.0 })
        .await;
    env.misp.rotate_key("ROTATEDkey0123456789abcdefghijABCDEFGHIJ");
    send_udp(env.udp, &[hit_line("198.51.100.152")]);
    eventually(WAIT, "the 403 is reported", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", env.metrics)).await.unwrap().text().await.unwrap();
    leaks(&metrics, "/metrics");
    daemon.sigterm();
    assert!(daemon.wait_exit(Duration::from_secs(10)).is_some());
    let log = daemon.log_text();
    assert!(log.contains("TRACE"), "the daemon did not log at trace level");
    leaks(&log, "the daemon log");

    // `validate` with both keys refused (the config now holds the rotated MISP key: check that one too).
    let rotated = env.misp.key();
    let out = env.integration_cmd(&["validate"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    leaks(&text, "validate with refused keys");
    assert!(!text.contains(&rotated), "the rotated MISP key leaked into validate:\n{text}");
}

/// A config file holding a key (the harness's template has both inline) and readable by other users gets a
/// warning in the daemon's log, and once in `validate`'s report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_config_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start().await;
    let config = env.write_config();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let daemon = Daemon::spawn("integration", &["--config", config.to_str().unwrap()], env.dir.path());
    daemon.wait_healthy(env.metrics).await;
    eventually(WAIT, "the warning is logged", || async {
        let log = daemon.log_text();
        log.contains("WARN") && log.contains("readable by other users")
    })
    .await;
    drop(daemon);
    let out = std::process::Command::new(fortimisp_e2e::bin("integration"))
        .args(["--config", config.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    assert_eq!(output_text(&out).matches("readable by other users").count(), 1, "{}", output_text(&out));
}

/// Both servers present certificates from a CA the config does not trust: `validate` fails for both, naming the
/// certificate problem; the daemon starts, blocks nothing, sends no HTTP request to either server, and logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_fails_closed_with_a_wrong_ca() {
    let env = Env::start().await;
    add_hits(&env, &["198.51.100.153"]);
    let other = TestCa::new();
    other.write_ca_file(&env.dir.path().join("misp-ca.pem")).unwrap();
    other.write_ca_file(&env.dir.path().join("fortigate-ca.pem")).unwrap();

    let out = env.integration_cmd(&["validate"]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  misp") && text.contains("FAIL  fortigate"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "validate does not say it is a certificate problem:\n{text}");

    let mut daemon = start(&env).await;
    send_udp(env.udp, &[hit_line("198.51.100.153")]);
    eventually(WAIT, "the lookup fails", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_error\"}").await >= 1.0
    })
    .await;
    assert!(!is_blocked(&env, "198.51.100.153"));
    assert_eq!(env.fortigate.total_requests(), 0, "a request reached the FortiGate over unverified TLS");
    assert_eq!(env.misp.total_requests(), 0, "a request reached MISP over unverified TLS");
    let log = daemon.log_text().to_lowercase();
    assert!(log.contains("certificate"), "the log does not name the certificate problem:\n{log}");
    audit(&env, &mut daemon, &[], &[]);
}

/// Reserved ranges (v4, v6, v4-mapped v6) and `never_block` entries: `block` refuses them (`--force` lifts only
/// `never_block`, even when `never_block` also covers a reserved range); `replay` of lines MISP lists them in
/// blocks none of them; the FortiGate never sees a write for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_addresses_are_never_blocked() {
    let mut env = Env::start().await;
    env.tweak("never_block = [\"198.51.100.250\"]", "never_block = [\"198.51.100.250\", \"10.0.0.0/8\"]");
    let reserved = [
        "10.1.2.3",
        "127.0.0.1",
        "0.0.0.0",
        "169.254.1.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ];
    for a in reserved {
        for force in [false, true] {
            let mut args = vec!["block", a];
            if force {
                args.push("--force");
            }
            let out = env.integration_cmd(&args);
            let text = output_text(&out);
            assert!(!out.status.success(), "block {a} (force {force}) succeeded:\n{text}");
            let reason = text.contains("reserved") || text.contains("protected");
            let reason = reason || (!force && text.contains("blocking.never_block"));
            assert!(reason, "block {a} (force {force}): no reason given:\n{text}");
        }
    }
    let out = env.integration_cmd(&["block", "198.51.100.250"]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("--force"), "{}", output_text(&out));
    assert_eq!(
        env.fortigate.route_count("POST /api/v2/cmdb/firewall/address"),
        0,
        "a protected address reached the box"
    );
    let out = env.integration_cmd(&["block", "198.51.100.250", "--force"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(is_blocked(&env, "198.51.100.250"), "--force blocks a never_block address");

    // MISP lists every protected address; a replay of lines from each blocks none of them.
    let listed: Vec<&str> = reserved.iter().copied().filter(|a| !a.starts_with("::ffff:")).collect();
    add_hits(&env, &listed);
    let event = env.misp.add_event("wide", true, &[]);
    env.misp
        .add_attribute(event, fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec::new("ip-src", "192.168.0.0/16"));
    let lines: Vec<String> = reserved.iter().map(|a| hit_line(a)).collect();
    let file = env.dir.path().join("protected.log");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = env.integration_cmd(&["replay", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let objects = env.fortigate.names(Table::Address);
    let objects6 = env.fortigate.names(Table::Address6);
    for a in reserved {
        let name = format!("misp-{a}");
        assert!(!objects.contains(&name) && !objects6.contains(&name), "{a} was blocked: {objects:?} {objects6:?}");
    }
    for r in env.fortigate.requests() {
        for a in reserved {
            assert!(!r.body.contains(&format!("\"misp-{a}\"")), "a write for {a} reached the box: {r:?}");
        }
    }
}
