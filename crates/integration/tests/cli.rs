//! The `integration` binary's command line: `parse` needs no config; a bad config fails at start with one line
//! naming the key and exit code 2. (Also makes `cargo test` build the binary the end-to-end tests run.)

use std::io::Write;
use std::process::{Command, Stdio};

fn integration() -> Command {
    Command::new(env!("CARGO_BIN_EXE_integration"))
}

#[test]
fn parse_prints_one_json_object_per_line() {
    let mut child = integration()
        .args(["parse", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let input = concat!(
        "<189>date=2024-05-01 time=10:00:00 devname=\"fw1\" type=\"traffic\" subtype=\"forward\" srcip=198.51.100.7 policyid=7 action=\"accept\"\n",
        "\u{1}\u{2} not a log\n",
        "CEF:0|Fortinet|Fortigate|v6.2.9|00013|traffic:forward accept|3|src=198.51.100.9 dst=203.0.113.1 act=accept\n",
    );
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["format"], "default");
    assert_eq!(lines[0]["fields"]["srcip"], "198.51.100.7");
    assert_eq!(lines[0]["fields"]["policyid"], "7");
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    assert_eq!(lines[2]["format"], "cef");
    assert_eq!(lines[2]["fields"]["srcip"], "198.51.100.9");
    assert_eq!(lines[2]["fields"]["action"], "accept");
}

const MINIMAL: &str = r#"
[misp]
url = "https://127.0.0.1:1"
api_key = "0123456789012345678901234567890123456789"
[fortigate]
url = "https://127.0.0.1:1"
api_key = "secret-fortigate-token"
[syslog]
udp = "127.0.0.1:0"
[metrics]
listen = ""
[state]
path = "/tmp/fortimisp-cli-test.db"
[[trigger]]
policy_id = 7
"#;

/// Runs `integration --config <text> validate` and returns (exit code, stderr).
fn with_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = integration().arg("--config").arg(&path).arg("validate").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_config_fails_with_one_line_naming_the_key() {
    let cases = [
        ("[misp]\n", "[misp]\ntimeout = \"soon\"\n", "misp.timeout"),
        ("api_key = \"secret-fortigate-token\"", "", "fortigate.api_key"),
        ("[syslog]\n", "[syslog]\nallowed_senders = [\"not-a-net\"]\n", "syslog.allowed_senders[0]"),
        ("policy_id = 7", "policy_id = 7\ncheck = \"sideways\"", "trigger[0].check"),
        ("[fortigate]\n", "[fortigate]\nbackend = \"iptables\"\n", "fortigate.backend"),
        ("[misp]\n", "[misp]\nunknown_key = 1\n", "misp.unknown_key"),
        (
            "[syslog]\n",
            "[syslog]\ntls = \"127.0.0.1:6514\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "syslog.tls_cert",
        ),
    ];
    for (from, to, key) in cases {
        let (code, stderr) = with_config(&MINIMAL.replacen(from, to, 1));
        assert_eq!(code, 2, "{key}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{key}: one line expected, got {stderr:?}");
        assert!(lines[0].starts_with(&format!("error: {key}")), "{key}: {stderr}");
        assert!(!stderr.contains("0123456789012345678901234567890123456789"), "secret in {stderr}");
    }
}

#[test]
fn a_missing_config_file_names_the_path() {
    let out = integration().args(["--config", "/nonexistent/fortimisp.toml", "validate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fortimisp.toml"));
}
