//! Monitoring: the shipped alert rules (`deploy/prometheus/fortimisp-rules.yml`) and Grafana dashboard
//! (`deploy/grafana/fortimisp.json`), checked with the real Prometheus tools rather than by eye.
//!
//! - `promtool check rules` and `promtool test rules` pass, and every alert has unit tests where it fires and where
//!   it stays quiet, in the test file of its group, and a runbook heading in docs/production.md.
//! - A real Prometheus scrapes both daemons running the lab's data (`config/lab.toml`, `lab/seed.json`,
//!   `lab/sample.log`): every panel of the dashboard returns data (no panel names a metric that does not exist),
//!   every series an alert reads exists, no alert fires on the healthy run, and the alert on the FortiGate refusing
//!   the token fires once the emulator answers 401.
//!
//! The tools are the `prometheus` and `promtool` binaries (Debian: `apt-get install prometheus`). Without them
//! the tests skip with a line on stderr; with `FORTIMISP_REQUIRE_PROMETHEUS=1` (set by `.ci/run`) they fail.
//!
//! `FORTIMISP_DASHBOARD_DATA=FILE` makes the lab run a few minutes of steady traffic first
//! (`FORTIMISP_DASHBOARD_SECONDS`, default 240) and write every panel's range query to FILE, which
//! `deploy/grafana/plot.py` draws: the picture in docs/.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fortimisp_e2e::fortimisp_testkit::fortigate::Table;
use fortimisp_e2e::fortimisp_testkit::harness::{self, ConfigDoc, Listen, ServerOptions, Servers};
use fortimisp_e2e::fortimisp_testkit::{free_port, lab, misp::Seed};
use fortimisp_e2e::{eventually, scrape, Daemon};
use serde_json::{json, Value};
use serde_norway::Value as Yaml;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const RULES: &str = "deploy/prometheus/fortimisp-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests";
const DASHBOARD: &str = "deploy/grafana/fortimisp.json";
/// What the panels' `$__rate_interval` becomes here (Grafana computes it from the scrape interval).
const RATE_INTERVAL: &str = "5m";
/// The alert the test makes fire.
const REFUSAL_ALERT: &str = "FortimispFortiGateRefusing";
const WAIT: Duration = Duration::from_secs(60);

/// `name` from `PATH`, or `None` after saying on stderr that `test` is skipped and how to get the tool. With
/// `FORTIMISP_REQUIRE_PROMETHEUS=1`, a missing tool fails the test instead.
fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()));
    if found.is_none() {
        let missing = format!(
            "`{name}` is not in PATH; install Prometheus, which ships `prometheus` and `promtool` \
             (Debian/Ubuntu: `apt-get install prometheus`)"
        );
        if std::env::var("FORTIMISP_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1") {
            panic!("{missing}. FORTIMISP_REQUIRE_PROMETHEUS=1 makes a missing tool a failure.");
        }
        // Straight to the process's stderr: libtest captures `eprintln!` of a passing test.
        let line =
            format!("SKIPPED monitoring::{test}: {missing}; FORTIMISP_REQUIRE_PROMETHEUS=1 makes this a failure.\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    found
}

fn read_yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seq(value: &Yaml) -> &[Yaml] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn string(value: &Yaml) -> String {
    value.as_str().map(str::to_string).unwrap_or_default()
}

/// One alert rule of the shipped file.
struct Alert {
    group: String,
    name: String,
    expr: String,
    severity: String,
    runbook: String,
}

fn alerts() -> Vec<Alert> {
    let rules = read_yaml(&repo().join(RULES));
    let mut out = Vec::new();
    for group in seq(&rules["groups"]) {
        for rule in seq(&group["rules"]) {
            out.push(Alert {
                group: string(&group["name"]),
                name: string(&rule["alert"]),
                expr: string(&rule["expr"]),
                severity: string(&rule["labels"]["severity"]),
                runbook: string(&rule["annotations"]["runbook"]),
            });
        }
    }
    out
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_has_a_firing_and_a_quiet_test() {
    let Some(promtool) = tool("promtool", "alert_rules_pass_promtool") else { return };
    let rules = repo().join(RULES);
    let checked = run(std::process::Command::new(&promtool).arg("check").arg("rules").arg(&rules));
    let alerts = alerts();
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{checked}");

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(RULE_TESTS))
        .expect("deploy/prometheus/tests exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    run(std::process::Command::new(&promtool).arg("test").arg("rules").args(&files));

    // One test file per group, `fortimisp-NAME` in `tests/NAME.yml`, testing exactly the alerts of that group, each
    // at least once firing (`exp_alerts` not empty) and once quiet (`exp_alerts: []`).
    let groups: BTreeSet<&str> = alerts.iter().map(|a| a.group.as_str()).collect();
    let names: BTreeSet<String> = files.iter().map(|f| f.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let expected: BTreeSet<String> = groups
        .iter()
        .map(|g| g.strip_prefix("fortimisp-").expect("groups are named fortimisp-*").to_string())
        .collect();
    assert_eq!(names, expected, "one test file per alert group");
    for file in &files {
        let doc = read_yaml(file);
        let group = format!("fortimisp-{}", file.file_stem().unwrap().to_string_lossy());
        assert_eq!(seq(&doc["rule_files"]).iter().map(string).collect::<Vec<_>>(), ["../fortimisp-rules.yml"]);
        let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for test in seq(&doc["tests"]) {
            for case in seq(&test["alert_rule_test"]) {
                let entry = cases.entry(string(&case["alertname"])).or_default();
                if seq(&case["exp_alerts"]).is_empty() {
                    entry.1 += 1;
                } else {
                    entry.0 += 1;
                }
            }
        }
        let in_group: BTreeSet<String> = alerts.iter().filter(|a| a.group == group).map(|a| a.name.clone()).collect();
        assert_eq!(cases.keys().cloned().collect::<BTreeSet<_>>(), in_group, "{}", file.display());
        for (alert, (firing, quiet)) in cases {
            assert!(firing > 0 && quiet > 0, "{alert}: {firing} firing and {quiet} quiet cases in {}", file.display());
        }
    }

    // Every alert has a severity and a runbook that exists.
    let production = std::fs::read_to_string(repo().join("docs/production.md")).unwrap();
    for alert in &alerts {
        assert!(["critical", "warning"].contains(&alert.severity.as_str()), "{}: severity", alert.name);
        assert_eq!(alert.runbook, format!("docs/production.md#{}", alert.name.to_lowercase()), "{}", alert.name);
        assert!(
            production.lines().any(|l| l.starts_with('#') && l.trim_start_matches('#').trim() == alert.name),
            "docs/production.md has no runbook heading `{}`",
            alert.name
        );
    }
}

// ---- a real Prometheus --------------------------------------------------------------------------------------

/// A Prometheus server on a loopback port, with its data in a temporary directory; killed when dropped.
struct Prometheus {
    process: harness::Daemon,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (`(job, address)`) every second, evaluating `rules` every second.
    async fn start(binary: &Path, dir: &Path, targets: &[(&str, SocketAddr)], rules: &Path) -> Prometheus {
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        config.push_str(&format!("rule_files:\n  - {}\nscrape_configs:\n", rules.display()));
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={listen}"),
        ];
        let process = harness::Daemon::spawn(binary, &args, dir.join("prometheus.log")).expect("prometheus starts");
        let prometheus = Prometheus { process, url: format!("http://{listen}"), http: reqwest::Client::new() };
        let ready = format!("{}/-/ready", prometheus.url);
        let http = prometheus.http.clone();
        prometheus
            .process
            .wait_until("prometheus to be ready", WAIT, || async {
                http.get(&ready).send().await.is_ok_and(|r| r.status().is_success())
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        prometheus
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let response = self.http.get(format!("{}/api/v1/{path}", self.url)).query(params).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// The series of an instant query at now: `(labels, value)`.
    async fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api("query", &[("query", expr.to_string())]).await;
        let value = |v: &Value| v[1].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(f64::NAN);
        match data["resultType"].as_str() {
            Some("scalar") => vec![(Value::Null, value(&data["result"]))],
            _ => data["result"].as_array().unwrap().iter().map(|s| (s["metric"].clone(), value(&s["value"]))).collect(),
        }
    }

    /// The active alerts: `(name, state)`.
    async fn alerts(&self) -> Vec<(String, String)> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["labels"]["alertname"].as_str().unwrap().into(), a["state"].as_str().unwrap().into()))
            .collect()
    }
}

/// The panels' queries: `(panel title, panel, expression with the Grafana variables replaced)`.
fn panel_queries(dashboard: &Value, rate_interval: &str) -> Vec<(String, Value, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let expr = target["expr"].as_str().expect("a Prometheus target has an expr");
            let expr = expr.replace("$__rate_interval", rate_interval);
            assert!(
                !expr.contains('$'),
                "panel {:?}: a Grafana variable this test does not know: {expr}",
                panel["title"]
            );
            out.push((panel["title"].as_str().unwrap().to_string(), panel.clone(), expr));
        }
    }
    out
}

/// Metric selectors in a PromQL expression (`up{...}`, `fortimisp_...{...}`).
fn selectors(expr: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\b(?:up|fortimisp_[a-z0-9_]+)(?:\{[^}]*\})?").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// A copy of the shipped rules with every `for:` set to 0s, so an alert fires as soon as its condition holds.
fn rules_without_for(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(RULES)).unwrap();
    let re = regex::Regex::new(r"(?m)^(\s+)for: \S+$").unwrap();
    assert!(re.is_match(&text), "the rules have `for:` durations");
    let path = dir.join("fortimisp-rules.yml");
    std::fs::write(&path, re.replace_all(&text, "${1}for: 0s").as_ref()).unwrap();
    path
}

/// Panels that show nothing but zeros on a healthy lab run (all their series exist, checked above).
const QUIET_WHEN_HEALTHY: &[&str] = &[
    "Needs attention (0 = fine)",
    "On-demand lookups",
    "Journal: pending actions and state",
    "Failed requests, share by server",
    "Prune failures per hour, by reason",
];

/// The threat-feed panels read series only a `backend = "threat-feed"` daemon exports; the lab runs the
/// address-group backend (tests/e2e/feeds.rs checks those series).
fn is_threat_feed_panel(title: &str) -> bool {
    title.starts_with("Threat feeds") || title.starts_with("Threat-feed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_panels_have_data_and_the_refusal_alert_fires_in_a_real_prometheus() {
    let test = "dashboard_panels_have_data_and_the_refusal_alert_fires";
    let Some(prometheus_bin) = tool("prometheus", test) else { return };
    let dump = std::env::var_os("FORTIMISP_DASHBOARD_DATA").map(PathBuf::from);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // The lab's data: its MISP seed, its config, its sample, one 120-day-old block for housekeeping to remove.
    let seed: Seed = serde_json::from_str(lab::SEED_JSON).unwrap();
    let opts = ServerOptions { tls: true, misp_seed: Some(seed), ..ServerOptions::default() };
    let servers = Servers::start(opts, dir).await.unwrap();
    let listen = Listen::free();
    let mut doc = ConfigDoc::parse(lab::LAB_TOML).unwrap();
    doc.endpoints(&servers.endpoints(), &listen, &dir.join("state.db"));
    // Housekeeping, the feed update and the mirror run every few seconds rather than hourly, so that their panels
    // show increases within the test.
    let mut text = doc.render();
    for (from, to) in [
        ("\ninterval = \"1h\"", "\ninterval = \"5s\""),
        ("\nfeed_update_interval = \"12h\"", "\nfeed_update_interval = \"5s\""),
        ("\nsync_interval = \"1m\"", "\nsync_interval = \"5s\""),
    ] {
        assert!(text.contains(from), "config/lab.toml has {from:?}");
        text = text.replacen(from, to, 1);
    }
    let config = dir.join("config.toml");
    harness::write_private(&config, &text).unwrap();
    let old = chrono::Utc::now() - chrono::Duration::days(120);
    let comment = fortimisp_core::fortigate::Comment::new(old, "1", "seeded 120 days ago");
    servers.fortigate.seed_address("misp-198.51.100.66", "198.51.100.66/32", comment.as_str());
    servers.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &["misp-198.51.100.66"], "deny policy");

    let config_arg = config.to_str().unwrap();
    let mut integration = Daemon::spawn("integration", &["--config", config_arg], dir);
    integration.wait_healthy(listen.metrics).await;
    let hk_metrics = listen.housekeeping_metrics.unwrap();
    let mut housekeeping = Daemon::spawn("housekeeping", &["--config", config_arg], dir);
    housekeeping.wait_healthy(hk_metrics).await;

    let rules = rules_without_for(dir);
    let targets = [("fortimisp-integration", listen.metrics), ("fortimisp-housekeeping", hk_metrics)];
    let prometheus = Prometheus::start(&prometheus_bin, dir, &targets, &rules).await;
    let started = chrono::Utc::now().timestamp();
    eventually(WAIT, "the mirror's first full sync", || async {
        scrape(listen.metrics, "fortimisp_mirror_syncs_total{outcome=\"full_ok\"}").await >= 1.0
    })
    .await;

    // Traffic: the lab's sample, a line that is no FortiGate log, a datagram from a sender not allowed. First one
    // line of each, so that Prometheus has seen the labelled counters before the rest arrives (a series that
    // appears with its final value has no rate).
    let sample: Vec<String> = lab::SAMPLE_LOG.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("the whole of 127.0.0.0/8 is loopback");
    let send = |lines: &[String]| {
        fortimisp_e2e::send_udp(listen.udp, lines);
        fortimisp_e2e::send_udp(listen.udp, &["<14>hello, this is not a FortiGate log".to_string()]);
        stranger.send_to(lines[0].as_bytes(), listen.udp).unwrap();
    };
    send(&sample[..1]);
    eventually(WAIT, "Prometheus to see the first block and drops", || async {
        let seen = prometheus.query("sum(fortimisp_blocks_total) and sum(fortimisp_parse_errors_total) and sum(fortimisp_messages_dropped_total{reason=\"sender_not_allowed\"})").await;
        !seen.is_empty()
    })
    .await;
    send(&sample);
    if let Some(seconds) = dump.as_ref().map(|_| dump_seconds()) {
        steady_traffic(listen.udp, &sample[0], Duration::from_secs(seconds), 0).await;
    }

    // Prometheus has the result: the six blocks of the lab, housekeeping's removal, and a second pass, feed update
    // and mirror sync.
    eventually(WAIT, "six blocks, one removal and the periodic jobs' increases in Prometheus", || async {
        let expectations = [
            ("sum(fortimisp_blocks_total{outcome=\"blocked\"})", 6.0),
            ("sum(fortimisp_housekeeping_pruned_total{reason=\"max_age\"})", 1.0),
            ("sum(increase(fortimisp_housekeeping_examined_total[5m]))", 0.5),
            ("sum(increase(fortimisp_feed_updates_total[5m]))", 0.5),
            ("sum(increase(fortimisp_mirror_syncs_total[5m]))", 0.5),
        ];
        for (expr, at_least) in expectations {
            if !prometheus.query(expr).await.first().is_some_and(|s| s.1 >= at_least) {
                return false;
            }
        }
        true
    })
    .await;

    // Every panel returns data; the panels about traffic show some.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo().join(DASHBOARD)).unwrap()).unwrap();
    let queries = panel_queries(&dashboard, RATE_INTERVAL);
    let mut empty = Vec::new();
    let mut panel_has_value: BTreeMap<String, bool> = BTreeMap::new();
    for (title, _, expr) in &queries {
        let series = prometheus.query(expr).await;
        if series.is_empty() && !is_threat_feed_panel(title) {
            empty.push(format!("{title}: {expr}"));
        }
        let some = series.iter().any(|(_, v)| v.is_finite() && *v != 0.0);
        *panel_has_value.entry(title.clone()).or_default() |= some;
    }
    assert!(empty.is_empty(), "panel queries without data:\n{}", empty.join("\n"));
    let flat: Vec<&String> = panel_has_value
        .iter()
        .filter(|(t, some)| !**some && !QUIET_WHEN_HEALTHY.contains(&t.as_str()) && !is_threat_feed_panel(t))
        .map(|(t, _)| t)
        .collect();
    assert!(flat.is_empty(), "panels with only zeros after the lab's traffic: {flat:?}");
    assert!(queries.len() >= 30, "the dashboard has its panels: {}", queries.len());

    // Every series an alert reads exists, and none fires on this healthy run (pending actions come and go).
    // The threat-feed alerts read series only a `backend = "threat-feed"` daemon exports (the lab runs the
    // address-group backend); tests/e2e/feeds.rs checks those series.
    for alert in alerts().into_iter().filter(|a| a.group != "fortimisp-threat-feeds") {
        for selector in selectors(&alert.expr) {
            assert!(!prometheus.query(&selector).await.is_empty(), "{}: no series {selector}", alert.name);
        }
    }
    let firing: Vec<(String, String)> = prometheus
        .alerts()
        .await
        .into_iter()
        .filter(|(name, state)| state == "firing" && name != "FortimispBlocksPending")
        .collect();
    assert!(firing.is_empty(), "alerts firing on a healthy run: {firing:?}");

    // The FortiGate starts refusing the token; an indicator seen now makes the daemon try a write.
    servers.fortigate.revoke_token();
    let revoked_at = chrono::Utc::now().timestamp();
    let line = sample[0].replace("srcip=203.0.113.45 ", "srcip=203.0.113.46 ");
    assert_ne!(line, sample[0], "the sample's first line names 203.0.113.45");
    fortimisp_e2e::send_udp(listen.udp, &[line]);
    let asked = Instant::now();
    eventually(WAIT, "FortimispFortiGateRefusing firing in Prometheus", || async {
        prometheus.alerts().await.iter().any(|(name, state)| name == REFUSAL_ALERT && state == "firing")
    })
    .await;
    eprintln!("{REFUSAL_ALERT} fired {:?} after the refused write was triggered", asked.elapsed());
    let refusing = prometheus.query("fortimisp_fortigate_unauthorized == 1").await;
    assert_eq!(refusing.len(), 1, "only the integration daemon: {refusing:?}");
    assert_eq!(refusing[0].0["job"], "fortimisp-integration");

    if let Some(path) = dump {
        steady_traffic(listen.udp, &sample[0], Duration::from_secs(45), 1_000).await;
        write_dump(&prometheus, &dashboard, started, revoked_at, &path).await;
    }
    integration.stop_cleanly();
    housekeeping.stop_cleanly();
}

// ---- the picture's data -------------------------------------------------------------------------------------

fn dump_seconds() -> u64 {
    std::env::var("FORTIMISP_DASHBOARD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(240)
}

/// Sends lines shaped like `template` (the sample's first line, `srcip=203.0.113.45`) at a changing rate for
/// `how_long`: repeats of a blocked address, new unknown IPv6 addresses, private ones, and now and then an
/// address of the lab's indicator range 203.0.113.128/26 (a new block). `offset` keeps later calls on new
/// addresses.
async fn steady_traffic(to: SocketAddr, template: &str, how_long: Duration, offset: u32) {
    let with = |ip: IpAddr| template.replace("srcip=203.0.113.45 ", &format!("srcip={ip} "));
    let end = Instant::now() + how_long;
    let mut tick: u32 = offset;
    while Instant::now() < end {
        tick += 1;
        let mut lines = vec![template.to_string(), with(IpAddr::from([10, 20, (tick % 200) as u8, 7]))];
        // Busier and quieter stretches, a minute or so each.
        let unknown = 2 + (tick / 40) % 4 * 3 + tick % 3;
        for i in 0..unknown {
            lines.push(with(format!("2001:db8:1::{:x}", tick * 16 + i).parse().unwrap()));
        }
        if tick.is_multiple_of(8) {
            lines.push(with(IpAddr::from([203, 0, 113, 128 + ((tick / 8) % 64) as u8])));
        }
        fortimisp_e2e::send_udp(to, &lines);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes each panel's range query over the run for `deploy/grafana/plot.py`.
async fn write_dump(prometheus: &Prometheus, dashboard: &Value, start: i64, revoked_at: i64, path: &Path) {
    let end = chrono::Utc::now().timestamp();
    let rate_interval = "30s";
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let mut targets = Vec::new();
        for target in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", rate_interval);
            let params = [
                ("query", expr.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", "5".to_string()),
            ];
            let data = prometheus.api("query_range", &params).await;
            targets.push(json!({"expr": expr, "legend": target["legendFormat"], "series": data["result"]}));
        }
        panels.push(json!({
            "title": panel["title"], "type": panel["type"], "gridPos": panel["gridPos"],
            "unit": panel["fieldConfig"]["defaults"]["unit"], "targets": targets,
        }));
    }
    let doc = json!({
        "dashboard": dashboard["title"], "rate_interval": rate_interval, "start": start, "end": end,
        "revoked_at": revoked_at, "panels": panels,
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    eprintln!("dashboard data written to {}", path.display());
}
