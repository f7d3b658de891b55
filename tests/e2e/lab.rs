//! The lab (`lab --headless --json`): its report must agree with what is really on the emulated FortiGate and in
//! the journal, checked over the FortiGate's REST API and by opening the journal, while the lab keeps running; and
//! `lab --config` runs the shipped production config with its credentials replaced by the lab's.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fortimisp_core::journal::Journal;
use fortimisp_e2e::bin;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_report_matches_the_fortigate_and_the_journal() {
    let work = tempfile::tempdir().unwrap();
    let bin_dir = bin("integration").parent().unwrap().to_path_buf();
    let mut lab = Command::new(bin("lab"))
        .args(["--headless", "--json", "--keep-running", "--no-build", "--rate", "100"])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--dir")
        .arg(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(lab.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let stop = |lab: &mut std::process::Child| {
        fortimisp_e2e::fortimisp_testkit::child::sigterm(lab);
        lab.wait().unwrap()
    };
    let report: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        stop(&mut lab);
        panic!("lab printed no JSON report ({e}): {line:?}")
    });
    assert_eq!(report["ok"], true, "lab reported problems: {:#}", report["problems"]);

    let fg = &report["fortigate"];
    let url = fg["url"].as_str().unwrap();
    let token = fg["token"].as_str().unwrap();
    let ca = std::fs::read(fg["ca_file"].as_str().unwrap()).unwrap();
    let client =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap()).build().unwrap();
    let get = |path: String| {
        let request = client.get(format!("{url}/api/v2/cmdb/firewall/{path}?vdom=root")).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let blocked = report["blocked"].as_array().unwrap();
    let kinds: Vec<&str> =
        report["not_blocked"].as_array().unwrap().iter().map(|n| n["why"].as_str().unwrap()).collect();
    for kind in ["never-block", "allowlisted", "warninglisted", "unknown", "no-trigger"] {
        assert!(kinds.contains(&kind), "the lab shows a `{kind}` case: {kinds:?}");
    }
    assert!(blocked.len() >= 5, "the sample blocks IPv4, IPv6, CIDR and destination indicators: {blocked:?}");
    for b in blocked {
        let (object, group) = (b["object"].as_str().unwrap(), b["group"].as_str().unwrap());
        let v6 = b["ip"].as_str().unwrap().contains(':');
        let (status, body) = get(format!("{}/{object}", if v6 { "address6" } else { "address" })).await;
        assert_eq!(status, 200, "{object} reported blocked but absent: {body}");
        let comment = body["results"][0]["comment"].as_str().unwrap_or_default().to_string();
        let event = b["event_id"].as_u64().unwrap();
        assert!(comment.starts_with("fortimisp ") && comment.contains(&format!("misp-event={event}")), "{comment}");
        let (_, body) = get(format!("{}/{group}", if v6 { "addrgrp6" } else { "addrgrp" })).await;
        let members: Vec<&str> =
            body["results"][0]["member"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
        assert!(members.contains(&object), "{object} is not a member of {group}: {members:?}");
    }
    for n in report["not_blocked"].as_array().unwrap() {
        let ip = n["ip"].as_str().unwrap();
        let table = if ip.contains(':') { "address6" } else { "address" };
        let (status, _) = get(format!("{table}/misp-{ip}")).await;
        assert_eq!(status, 404, "{ip} is reported not blocked ({}) but has an object", n["why"]);
    }

    // The journal's ledger holds exactly the reported blocks.
    let journal = Journal::open(&work.path().join("state.db")).unwrap();
    let mut ledger: Vec<String> = journal.active_blocks().await.unwrap().iter().map(|b| b.ip.to_string()).collect();
    let mut reported: Vec<String> = blocked.iter().map(|b| b["ip"].as_str().unwrap().to_string()).collect();
    ledger.sort();
    reported.sort();
    assert_eq!(ledger, reported);
    drop(journal);

    // `replay --dry-run` of the same sample with the same config and MISP decides the same blocks as the daemon
    // (restSearch does not return a CIDR that contains an address: the on-demand path must still see it).
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lab/sample.log");
    let out = Command::new(bin("integration"))
        .arg("--config")
        .arg(work.path().join("config.toml"))
        .arg("replay")
        .arg(&sample)
        .arg("--dry-run")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay --dry-run failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains(&format!("dry run {},", blocked.len())),
        "replay decides as the lab did ({}): {text}",
        blocked.len()
    );

    let status = tokio::time::timeout(Duration::from_secs(20), tokio::task::spawn_blocking(move || stop(&mut lab)))
        .await
        .expect("lab stops within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "lab exit status {status}");
}

/// The shipped production config.
const PRODUCTION_CONFIG: &str = include_str!("../../config/config.toml");

/// `lab --config` with a production config: the MISP key from an `api_key_file` that does not exist, the FortiGate
/// token from `FORTIMISP_FORTIGATE_API_KEY` only (no key in the file). The lab replaces every credential as it
/// replaces the URLs, so it runs with the variables unset, and with both set to keys the emulators refuse (which
/// would win over any key in the file if they reached the daemons). Neither the key file path nor those keys end up
/// in the lab's config or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_runs_a_production_config_with_its_credentials_replaced() {
    use fortimisp_core::config::{ENV_FORTIGATE_API_KEY, ENV_MISP_API_KEY};
    use fortimisp_e2e::fortimisp_testkit::lab::lab_keys;

    let input = tempfile::tempdir().unwrap();
    let missing_key_file = input.path().join("no-such-dir/misp_api_key");
    let (misp_line, fortigate_line) =
        ("api_key_file = \"/run/secrets/misp_api_key\"", "api_key_file = \"/run/secrets/fortigate_api_key\"\n");
    assert!(PRODUCTION_CONFIG.contains(misp_line) && PRODUCTION_CONFIG.contains(fortigate_line));
    let production = PRODUCTION_CONFIG
        .replace(misp_line, &format!("api_key_file = {:?}", missing_key_file.display().to_string()))
        .replace(fortigate_line, "");
    let config = input.path().join("production.toml");
    std::fs::write(&config, production).unwrap();
    let bin_dir = bin("integration").parent().unwrap().to_path_buf();
    let refused =
        [(ENV_MISP_API_KEY, "refused-misp-key-0123456789abcdef0123456789"), (ENV_FORTIGATE_API_KEY, "refused-token")];

    for env in [&[][..], &refused[..]] {
        let work = tempfile::tempdir().unwrap();
        let mut lab = Command::new(bin("lab"));
        lab.args(["--headless", "--json", "--no-build", "--rate", "100", "--config"])
            .arg(&config)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--dir")
            .arg(work.path())
            .env_remove(ENV_MISP_API_KEY)
            .env_remove(ENV_FORTIGATE_API_KEY);
        lab.envs(env.iter().copied());
        let out = tokio::task::spawn_blocking(move || lab.output().unwrap()).await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let case = if env.is_empty() { "variables unset" } else { "variables set to refused keys" };
        assert!(out.status.success(), "{case}: lab exited {}\n{stderr}\n{stdout}", out.status);
        let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{case}: {e}: {stdout}"));
        assert_eq!(report["ok"], true, "{case}: {:#}", report["problems"]);
        assert!(!report["blocked"].as_array().unwrap().is_empty(), "{case}: the shipped [[trigger]] blocks something");

        let keys = lab_keys();
        assert_eq!(
            report["fortigate"]["token"],
            keys.fortigate.as_str(),
            "{case}: the emulator accepts the lab's token"
        );
        let written = std::fs::read_to_string(work.path().join("config.toml")).unwrap();
        let raw = fortimisp_core::config::RawConfig::parse(&written).unwrap();
        assert_eq!(raw.misp.api_key.as_deref(), Some(keys.misp.as_str()), "{case}");
        assert_eq!(raw.fortigate.api_key.as_deref(), Some(keys.fortigate.as_str()), "{case}");
        assert!(raw.misp.api_key_file.is_none() && raw.fortigate.api_key_file.is_none(), "{case}: {written}");
        for file in ["config.toml", "integration.log", "housekeeping.log"] {
            let text = std::fs::read_to_string(work.path().join(file)).unwrap_or_default();
            assert!(!text.contains("no-such-dir"), "{case}: {file} names the production key file");
            for (_, key) in refused {
                assert!(!text.contains(key), "{case}: {file} holds a key from the environment");
            }
        }
    }
}
