//! The `housekeeping` binary's command line: a bad config fails at start with one line naming the key, exit 2;
//! files only the integration daemon reads are not its concern.
//! (Also makes `cargo test` build the binary the end-to-end tests run.)

use std::process::{Command, Output};

/// The parts of a config that are valid and reach nothing (port 1).
const CLIENTS: &str = "[misp]\nurl = \"https://127.0.0.1:1\"\napi_key = \"k\"\n[fortigate]\nurl = \"https://127.0.0.1:1\"\napi_key = \"t\"\n";

/// Runs `housekeeping --config <CLIENTS + rest> --once`.
fn once_with_config(rest: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("{CLIENTS}{rest}")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_housekeeping")).arg("--config").arg(&path).arg("--once").output().unwrap()
}

#[test]
fn a_bad_config_fails_with_one_line_naming_the_key() {
    let out = once_with_config("[housekeeping]\nmax_age = \"ninety days\"\n");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: housekeeping.max_age"), "{stderr}");
}

/// The syslog TLS certificate and key are read by `integration` only: a systemd unit gets them in its own
/// credentials directory, a compose file may mount them into the integration container only. Housekeeping,
/// sharing the same config file, must not refuse to start because it cannot see them.
#[test]
fn the_syslog_tls_files_are_not_required() {
    // The first thing the daemon does after loading the config is bind its metrics listener: on a port already
    // taken, that fails at once with its own error (exit 1), which housekeeping reaches only if it accepted a
    // config whose syslog TLS files do not exist. Checking them would exit 2 naming syslog.tls_cert instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = daemon_with_config(
        dir.path(),
        &format!(
            "[syslog]\ntls = \"127.0.0.1:6514\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\
             [metrics]\nhousekeeping_listen = \"{addr}\"\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("syslog.tls"), "housekeeping checked the syslog TLS files:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: metrics.housekeeping_listen: cannot listen on"), "{stderr}");
    assert_eq!(stderr.matches("cannot listen on").count(), 1, "the error is printed once:\n{stderr}");
}

/// A daemon logging JSON reports the error that stops it once, as a JSON log event: every line of its stderr
/// stays JSON.
#[test]
fn a_json_logging_daemon_reports_its_failure_once_as_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = daemon_with_config(
        dir.path(),
        &format!("[metrics]\nhousekeeping_listen = \"{addr}\"\n[log]\nformat = \"json\"\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for line in stderr.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not JSON: {line:?}\n{stderr}");
    }
    let failures: Vec<&str> = stderr.lines().filter(|l| l.contains("cannot listen on")).collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    let event: serde_json::Value = serde_json::from_str(failures[0]).unwrap();
    assert_eq!(event["level"], "ERROR", "{event}");
}

/// `--once --dry-run` against a FortiGate that is not there: the failed pass is reported once, without colour in
/// the redirected stderr, and exit 1.
#[test]
fn once_reports_a_failed_pass_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("{CLIENTS}[state]\npath = \"{}\"\n", dir.path().join("state.db").display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_housekeeping"))
        .arg("--config")
        .arg(&path)
        .args(["--once", "--dry-run"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!out.stderr.contains(&0x1b), "ANSI escape in redirected stderr: {stderr:?}");
    assert_eq!(stderr.matches("Prune pass failed").count(), 1, "{stderr}");
    assert!(out.stdout.is_empty(), "no summary of a pass that could not run: {}", String::from_utf8_lossy(&out.stdout));
}

/// Runs `housekeeping --config <CLIENTS + rest>` as a daemon (its journal and stderr in `dir`) until it exits;
/// panics if it is still running after 30 s (it is meant to fail at start).
fn daemon_with_config(dir: &std::path::Path, rest: &str) -> Output {
    let (path, state, log) = (dir.join("config.toml"), dir.join("state.db"), dir.join("stderr.log"));
    std::fs::write(&path, format!("{CLIENTS}[state]\npath = \"{}\"\n{rest}", state.display())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_housekeeping"))
        .arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("housekeeping still running after 30 s; stderr:\n{}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: Vec::new(), stderr: std::fs::read(&log).unwrap() }
}
