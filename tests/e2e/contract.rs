//! Contract tests with the real clients: PyMISP against the MISP emulator and fortigate-api against the FortiGate
//! emulator, both over TLS as the harness serves them. The Python scripts in `tests/contract/` make the calls and
//! check the answers through the clients' own parsing; this side seeds the emulators and checks what they saw and
//! hold afterwards.
//!
//! The clients come from PyPI (`pip install pymisp fortigate-api`). The python that has them is
//! `$FORTIMISP_PYTHON`, else `target/contract-venv/bin/python` (what `.ci/run` creates), else `python3`. Without
//! them the tests print one line to stderr saying what is missing and how to get it, and pass; with
//! `FORTIMISP_REQUIRE_CONTRACT=1` (set by `.ci/run`) a missing client fails the test instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fortimisp_e2e::fortimisp_testkit::fortigate::Table;
use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::Env;

/// Upper bound for one script (they take a second or two).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// The python that can import `module`, or `None` after saying loudly why the test skips. Panics instead when
/// `FORTIMISP_REQUIRE_CONTRACT=1`.
fn python_with(module: &str, test: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("FORTIMISP_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![repo_root().join("target/contract-venv/bin/python"), PathBuf::from("python3")],
    };
    let mut tried = Vec::new();
    for python in candidates {
        match std::process::Command::new(&python).args(["-c", &format!("import {module}")]).output() {
            Ok(out) if out.status.success() => return Some(python),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_string();
                tried.push(format!("{}: {why}", python.display()));
            }
            Err(error) => tried.push(format!("{}: {error}", python.display())),
        }
    }
    let message = format!(
        "the Python module `{module}` is missing ({}). To run it: `python3 -m venv target/contract-venv && \
         target/contract-venv/bin/pip install -r tests/contract/requirements.txt`, then `cargo test -p \
         fortimisp-e2e --test e2e contract` (or set FORTIMISP_PYTHON to a python that has them); `.ci/run` does this",
        tried.join("; ")
    );
    if std::env::var("FORTIMISP_REQUIRE_CONTRACT").is_ok_and(|v| v == "1") {
        panic!("contract::{test}: {message} (FORTIMISP_REQUIRE_CONTRACT=1: a missing client fails)");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP contract::{test}: {message}");
    None
}

/// Runs `tests/contract/<script>` with `python` and `env`; panics with its output unless it exits 0.
async fn run_script(python: &Path, script: &str, env: &[(&str, String)]) -> String {
    let path = repo_root().join("tests/contract").join(script);
    let mut command = tokio::process::Command::new(python);
    command.arg(&path).kill_on_drop(true).env("PYTHONDONTWRITEBYTECODE", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed ({}):\n{text}", out.status);
    text
}

/// PyMISP connects without logging a warning or an error (getVersion, users/view/me, describeTypes), searches,
/// adds sightings (by value and to one attribute) and lists them, lists, views and caches feeds.
#[tokio::test]
async fn pymisp_against_the_misp_emulator() {
    let Some(python) = python_with("pymisp", "pymisp_against_the_misp_emulator") else {
        return;
    };
    let env = Env::start().await;
    let event = env.misp.add_event("contract", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "198.51.100.77"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.78"));
    env.misp.add_feed("disabled feed", false);
    let feed = env.misp.add_feed("CIRCL OSINT Feed", true);
    env.misp.set_feed_caching(feed, true);
    let vars = [
        ("MISP_URL", env.misp.url().to_string()),
        ("MISP_KEY", env.misp.key()),
        ("MISP_CA", env.misp_ca().display().to_string()),
        ("MISP_IP", "198.51.100.77".to_string()),
        ("MISP_FEED_ID", feed.to_string()),
    ];
    let output = run_script(&python, "pymisp_contract.py", &vars).await;
    assert!(output.contains("pymisp contract: all checks passed"), "{output}");

    let sightings = env.misp.sightings();
    let sources: Vec<&str> = sightings.iter().map(|s| s.source.as_str()).collect();
    assert_eq!(sources, ["pymisp-contract", "pymisp-contract-2"], "the sightings PyMISP added are stored");
    assert!(sightings.iter().all(|s| s.value == "198.51.100.77"), "both on the seeded attribute: {sightings:?}");
    let cached: Vec<bool> = env.misp.feeds().iter().map(|f| f.cache_timestamp.is_some()).collect();
    assert_eq!(cached, [false, true], "only the caching-enabled feed was cached");
    for route in ["servers/getVersion", "users/view/me", "attributes/describeTypes", "feeds/index", "feeds/view"] {
        assert!(env.misp.request_count(route) >= 1, "PyMISP never called {route}");
    }
    assert_eq!(env.misp.request_count("feeds/cacheFeeds"), 4);
    assert!(env.misp.requests().iter().all(|r| r.authorized), "every request carried the key");
}

/// fortigate-api lists, gets, creates, updates and deletes addresses (v4 and v6) and groups, reads the uuid and
/// the default fields, gets -5/-23/-3/-651 where FortiOS answers them, reads the schema, and leaves nothing behind.
#[tokio::test]
async fn fortigate_api_against_the_fortigate_emulator() {
    let Some(python) = python_with("fortigate_api", "fortigate_api_against_the_fortigate_emulator") else {
        return;
    };
    let env = Env::start().await;
    env.fortigate.seed_address("ops-server", "10.9.9.9/32", "ops");
    let vars = [
        ("FGT_HOST", env.fortigate.addr().ip().to_string()),
        ("FGT_PORT", env.fortigate.addr().port().to_string()),
        ("FGT_TOKEN", env.fortigate.token()),
        ("REQUESTS_CA_BUNDLE", env.fortigate_ca().display().to_string()),
        ("FGT_SEEDED", "ops-server".to_string()),
    ];
    let output = run_script(&python, "fortigate_api_contract.py", &vars).await;
    assert!(output.contains("fortigate-api contract: all checks passed"), "{output}");

    assert_eq!(env.fortigate.names(Table::Address), ["ops-server"], "the script's objects are gone");
    assert!(env.fortigate.names(Table::Address6).is_empty() && env.fortigate.names(Table::Addrgrp).is_empty());
    let (_, seeded) = env.fortigate.object("ops-server").expect("the seeded object is untouched");
    assert_eq!(seeded["comment"], "ops");
    let requests = env.fortigate.requests();
    assert!(requests.iter().any(|r| r.query.as_deref().is_some_and(|q| q.contains("action=schema"))));
    assert!(
        requests.iter().all(|r| r.query.as_deref().is_some_and(|q| q.contains("vdom=root"))
            || r.path == "/api/v2/monitor/system/status"),
        "fortigate-api sends vdom= on every call"
    );
    let writes = requests.iter().filter(|r| r.method != "GET").count();
    assert!(writes >= 10, "{writes} writes");
}
