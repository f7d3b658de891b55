//! The lab (`lab --headless --json`): its report must agree with what is really on the emulated FortiGate and in
//! the journal, checked over the FortiGate's REST API and by opening the journal, while the lab keeps running.

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
