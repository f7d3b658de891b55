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
    let out = once_with_config(
        "[syslog]\ntls = \"127.0.0.1:6514\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\
         [housekeeping]\nmax_unblock_fraction = 2.0\n",
    );
    // Validation checks [syslog] before [housekeeping]: reaching the fraction means the TLS files were not checked.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: housekeeping.max_unblock_fraction"), "{stderr}");
}
