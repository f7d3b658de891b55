//! The lab (`lab --headless --json`): its report must agree with what is really on the emulated FortiGate and in
//! the journal, checked over the FortiGate's REST API and by opening the journal, while the lab keeps running (with
//! the address-group backend, and with `--backend threat-feed`, where the FortiGate's feeds, the served files and
//! the daemon's metrics are checked too); and `lab --config` runs the shipped production config with its
//! credentials replaced by the lab's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fortimisp_core::journal::Journal;
use fortimisp_e2e::{bin, scrape};
use serde_json::Value;

/// A `lab --keep-running` child and its JSON report (the first line it prints). Dropped, it gets SIGTERM and is
/// waited for (killed after 20 s), so a failing assertion never leaves the lab and its daemon running, holding the
/// test's output pipe open.
struct KeptLab {
    child: Option<std::process::Child>,
}

impl KeptLab {
    /// Starts `lab ARGS --headless --json --keep-running --no-build --rate 100 --bin-dir <the daemons> --dir DIR`
    /// and reads its report.
    fn start(args: &[&str], dir: &std::path::Path) -> (KeptLab, Value) {
        let bin_dir = bin("integration").parent().unwrap().to_path_buf();
        let mut child = Command::new(bin("lab"))
            .args(["--headless", "--json", "--keep-running", "--no-build", "--rate", "100"])
            .args(args)
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lab = KeptLab { child: Some(child) };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let report =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("lab printed no JSON report ({e}): {line:?}"));
        (lab, report)
    }

    /// SIGTERM, then its exit status: it must stop within 20 s.
    async fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let wait = tokio::task::spawn_blocking(move || {
            fortimisp_e2e::fortimisp_testkit::child::sigterm(&child);
            let status = fortimisp_e2e::fortimisp_testkit::child::wait_timeout(&mut child, Duration::from_secs(20));
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            status
        });
        wait.await.unwrap().expect("lab stops within 20 s of SIGTERM")
    }
}

impl Drop for KeptLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            fortimisp_e2e::fortimisp_testkit::child::sigterm(&child);
            if fortimisp_e2e::fortimisp_testkit::child::wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_report_matches_the_fortigate_and_the_journal() {
    let work = tempfile::tempdir().unwrap();
    let (lab, report) = KeptLab::start(&[], work.path());
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

    let status = lab.stop().await;
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
        assert_eq!(raw.fortigate.tables()[0].api_key.as_deref(), Some(keys.fortigate.as_str()), "{case}");
        assert!(
            raw.misp.api_key_file.is_none() && raw.fortigate.tables()[0].api_key_file.is_none(),
            "{case}: {written}"
        );
        for file in ["config.toml", "integration.log", "housekeeping.log"] {
            let text = std::fs::read_to_string(work.path().join(file)).unwrap_or_default();
            assert!(!text.contains("no-such-dir"), "{case}: {file} names the production key file");
            for (_, key) in refused {
                assert!(!text.contains(key), "{case}: {file} holds a key from the environment");
            }
        }
    }
}

/// `lab --backend threat-feed` (pull, the default): its report must agree with the emulated FortiGate's feeds (their
/// entry-list over its REST API), with the files the daemon serves (fetched over HTTPS with the report's
/// credentials and CA, as the FortiGate fetches them), with the daemon's metrics and with the journal, while the lab
/// keeps running. The seeded 120-day-old block is closed in the ledger and gone from both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_threat_feed_report_matches_the_feeds_and_the_journal() {
    const OLD_BLOCK: &str = "198.51.100.66";
    let work = tempfile::tempdir().unwrap();
    let (lab, report) = KeptLab::start(&["--backend", "threat-feed"], work.path());
    assert_eq!(report["ok"], true, "lab reported problems: {:#}", report["problems"]);
    assert_eq!(report["backend"], "threat-feed");

    // The FortiGate's side: each feed's entry-list over its REST API.
    let fg = &report["fortigate"];
    let (url, token) = (fg["url"].as_str().unwrap(), fg["token"].as_str().unwrap());
    let ca = std::fs::read(fg["ca_file"].as_str().unwrap()).unwrap();
    let client =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap()).build().unwrap();
    let feeds = &report["feeds"];
    assert_eq!((feeds["update"].as_str(), feeds["contents"].as_str()), (Some("pull"), Some("blocked")));
    let rows = feeds["feeds"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fortimisp-block", "fortimisp-block6"]);
    let mut loaded: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let response = client
            .get(format!("{url}/api/v2/monitor/system/external-resource/entry-list"))
            .query(&[("mkey", name), ("vdom", "root")])
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "entry-list of {name}");
        let body: Value = response.json().await.unwrap();
        let status = &body["results"];
        let entries: BTreeSet<String> = status["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("entry-list of {name}: {body}"))
            .iter()
            .map(|e| e["entry"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(status["resource_file_status"], "downloaded", "{name}: the FortiGate pulled it: {status}");
        assert_eq!(row["loaded"].as_u64(), Some(entries.len() as u64), "{name}: loaded");
        assert_eq!(row["loaded"], status["valid_count"], "{name}");
        assert_eq!(row["overflow"], status["overflow"], "{name}");
        assert_eq!(row["last_load"], status["last_content_update_time"], "{name}");
        assert_eq!(row["method"], "pull");
        loaded.insert(name.to_string(), entries);
    }

    // The daemon's side: the served files, with the FortiGate's credentials, and nothing without them.
    let feed_ca = std::fs::read(feeds["ca_file"].as_str().unwrap()).unwrap();
    let feed_client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&feed_ca).unwrap())
        .build()
        .unwrap();
    let (base, user, password) =
        (feeds["url"].as_str().unwrap(), feeds["username"].as_str().unwrap(), feeds["password"].as_str().unwrap());
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let response =
            feed_client.get(format!("{base}/feeds/{name}.txt")).basic_auth(user, Some(password)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let served: BTreeSet<String> = response
            .text()
            .await
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        assert_eq!(row["served"].as_u64(), Some(served.len() as u64), "{name}: served");
        assert_eq!(served, loaded[name], "{name}: the FortiGate holds what is served");
        let refused = feed_client
            .get(format!("{base}/feeds/{name}.txt"))
            .basic_auth(user, Some("not the password"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{name} without the password");
    }

    // The daemon's metrics say what the report says.
    let written = std::fs::read_to_string(work.path().join("config.toml")).unwrap();
    let raw = fortimisp_core::config::RawConfig::parse(&written).unwrap();
    let metrics: std::net::SocketAddr = raw.metrics.listen.parse().unwrap();
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let gauge = scrape(metrics, &format!("fortimisp_feed_loaded_entries{{feed=\"{name}\"}}")).await;
        assert_eq!(row["daemon"]["loaded_entries"].as_f64(), Some(gauge), "{name}");
        assert_eq!(gauge, loaded[name].len() as f64, "{name}: the daemon counted what the FortiGate loaded");
    }
    for (event, n) in feeds["events"].as_object().unwrap() {
        let counted = scrape(metrics, &format!("fortimisp_feed_events_total{{reason=\"{event}\"}}")).await;
        assert!(counted >= n.as_f64().unwrap(), "{event}: {counted} counted, {n} reported");
    }
    assert!(feeds["events"]["loaded"].as_u64().unwrap() >= 2, "each feed was loaded: {}", feeds["events"]);

    // Every reported block is in a feed the FortiGate loaded; nothing else is, and the old block is gone.
    let blocked = report["blocked"].as_array().unwrap();
    assert!(blocked.len() >= 5, "the sample blocks IPv4, IPv6, CIDR and destination indicators: {blocked:?}");
    for b in blocked {
        let (ip, feed) = (b["ip"].as_str().unwrap(), b["group"].as_str().unwrap());
        assert_eq!(b["on_fortigate"], true, "{ip}");
        assert!(loaded[feed].contains(ip), "{ip} reported in {feed}, which holds {:?}", loaded[feed]);
    }
    let all: BTreeSet<&String> = loaded.values().flatten().collect();
    assert_eq!(all.len(), blocked.len(), "the feeds hold the reported blocks and nothing else: {all:?}");
    for n in report["not_blocked"].as_array().unwrap() {
        assert!(!all.contains(&n["ip"].as_str().unwrap().to_string()), "{n} is in a feed");
    }
    assert!(!all.contains(&OLD_BLOCK.to_string()));
    let hk = &report["housekeeping"];
    assert_eq!((hk["exit_code"].as_i64(), hk["old_block_removed"].as_bool()), (Some(0), Some(true)), "{hk}");
    assert_eq!(hk["foreign_untouched"], Value::Null, "not applicable to feeds: {hk}");
    let checks = &hk["old_block_checks"];
    assert_eq!(
        [&checks["loaded_before"], &checks["ledger_closed"], &checks["served"], &checks["loaded"]],
        [&Value::Bool(true), &Value::Bool(true), &Value::Bool(false), &Value::Bool(false)],
        "{checks}"
    );

    // The journal: the open ledger holds exactly the reported blocks, each a threat-feed entry; the seeded block's
    // entry is closed by housekeeping.
    let journal = Journal::open(&work.path().join("state.db")).unwrap();
    let active = journal.active_blocks().await.unwrap();
    drop(journal);
    assert!(active.iter().all(|b| b.backend == "threat-feed" && b.group.is_none()), "{active:?}");
    let mut ledger: Vec<String> = active.iter().map(|b| b.ip.to_string()).collect();
    let mut reported: Vec<String> = blocked.iter().map(|b| b["ip"].as_str().unwrap().to_string()).collect();
    ledger.sort();
    reported.sort();
    assert_eq!(ledger, reported);
    let db =
        rusqlite::Connection::open_with_flags(work.path().join("state.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (backend, closed): (String, Option<String>) = db
        .query_row("SELECT backend, unblocked_at FROM blocks WHERE ip = ?1", [OLD_BLOCK], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(backend, "threat-feed");
    assert!(closed.is_some(), "housekeeping closed the seeded block's ledger entry");
    drop(db);

    let status = lab.stop().await;
    assert!(status.success(), "lab exit status {status}");
}

/// `lab --fleet 3`: every target's report agrees with the journal's ledger of that target, each target holds what
/// its devices' lines call for (origin scope: not all the same), and together they hold every blocked address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_fleet_report_matches_each_target_and_the_journal() {
    let work = tempfile::tempdir().unwrap();
    let (lab, report) = KeptLab::start(&["--fleet", "3"], work.path());
    assert_eq!(report["ok"], true, "lab reported problems: {:#}", report["problems"]);
    let targets = report["targets"].as_array().expect("a targets array");
    let names: Vec<&str> = targets.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);

    let journal = Journal::open(&work.path().join("state.db")).unwrap();
    let ledger = journal.active_blocks().await.unwrap();
    let list = |v: &Value| -> Vec<String> {
        let mut out: Vec<String> = v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        out.sort();
        out
    };
    let mut union = std::collections::BTreeSet::new();
    let mut per_target = Vec::new();
    for t in targets {
        let name = t["name"].as_str().unwrap();
        let (expected, on) = (list(&t["expected"]), list(&t["on_fortigate"]));
        assert_eq!(on, expected, "target {name}");
        let mut in_ledger: Vec<String> = ledger.iter().filter(|b| b.target == name).map(|b| b.ip.to_string()).collect();
        in_ledger.sort();
        assert_eq!(in_ledger, on, "target {name}: the journal's ledger and the FortiGate agree");
        union.extend(on.clone());
        per_target.push(on);
    }
    assert!(per_target.iter().any(|on| *on != per_target[0]), "origin scope: targets differ: {per_target:?}");
    let blocked: std::collections::BTreeSet<String> =
        report["blocked"].as_array().unwrap().iter().map(|b| b["ip"].as_str().unwrap().to_string()).collect();
    assert_eq!(union, blocked, "together the targets hold every blocked address");
    assert!(lab.stop().await.success());
}
