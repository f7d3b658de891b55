//! The `integration` binary's command line: `parse` needs no config; a bad config fails at start with one line
//! naming the key and exit code 2; what a person reads on stderr (one `error:` line, colours on a terminal only,
//! the config warning only for a file holding a key). (Also makes `cargo test` build the binary the end-to-end
//! tests run.)

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

#[cfg(unix)]
/// A config in `dir` with `text`, its state file in `dir` too, with the given mode.
fn config_file(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("config.toml");
    let state = dir.join("state.db");
    std::fs::write(&path, text.replace("/tmp/fortimisp-cli-test.db", &state.display().to_string())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[cfg(unix)]
/// `block` of a reserved address fails before any request: a quick command with a log line (the config warning
/// of a world-readable file holding a key) and an error.
fn refused_block(config: &std::path::Path) -> Command {
    let mut cmd = integration();
    cmd.arg("--config").arg(config).args(["block", "10.1.2.3"]).stdin(Stdio::null());
    cmd
}

const REFUSED: &str = "10.1.2.3 is in the reserved range 10.0.0.0/8 (private); it can never be blocked";

#[cfg(unix)]
/// Stderr redirected (a pipe here, a file or journald in production): the error is printed once, as the
/// `error:` line, and no log line carries an ANSI escape.
#[test]
fn an_error_is_printed_once_and_a_redirected_log_has_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), MINIMAL, 0o644);
    let out = refused_block(&config).env_remove("NO_COLOR").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!out.stderr.contains(&0x1b), "ANSI escape in redirected stderr: {stderr:?}");
    let mentions: Vec<&str> = stderr.lines().filter(|l| l.contains(REFUSED)).collect();
    assert_eq!(mentions, [format!("error: {REFUSED}")], "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("readable by other users")).count(), 1, "{stderr}");
}

/// The same command with stderr on a terminal: coloured, unless `NO_COLOR` is set.
#[cfg(unix)]
#[test]
fn colour_on_a_terminal_only_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), MINIMAL, 0o644);
    let mut plain = refused_block(&config);
    plain.env_remove("NO_COLOR");
    let coloured = stderr_on_a_terminal(plain);
    assert!(coloured.contains(&0x1b), "no colour on a terminal: {:?}", String::from_utf8_lossy(&coloured));
    let mut no_color = refused_block(&config);
    no_color.env("NO_COLOR", "1");
    let text = stderr_on_a_terminal(no_color);
    assert!(!text.contains(&0x1b), "colour despite NO_COLOR: {:?}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("readable by other users"), "the log line is there");
}

/// Runs `cmd` with stderr on a new pseudo-terminal and returns what it wrote there (a few lines: more than the
/// terminal's buffer would block the child, as nothing reads until it exits).
#[cfg(unix)]
fn stderr_on_a_terminal(mut cmd: Command) -> Vec<u8> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("a pseudo-terminal");
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new().read(true).write(true).open(name.to_str().unwrap()).unwrap();
    let status = cmd.stdout(Stdio::null()).stderr(terminal).status().unwrap();
    assert_eq!(status.code(), Some(1));
    // The command holds the terminal's other end until dropped; reading ends (EIO) once no one holds it.
    drop(cmd);
    let mut master = std::fs::File::from(master);
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(5) => break,
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
    out
}

#[cfg(unix)]
/// The world-readable warning is for a file that holds a key, and `validate` shows it once (in its report, not
/// also as a log line).
#[test]
fn the_config_warning_needs_a_key_and_validate_shows_it_once() {
    const WARNING: &str = "readable by other users";
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("misp"), "0123456789012345678901234567890123456789\n").unwrap();
    std::fs::write(keys.join("fortigate"), "secret-fortigate-token\n").unwrap();
    let key_files = MINIMAL
        .replace(
            "api_key = \"0123456789012345678901234567890123456789\"",
            &format!("api_key_file = \"{}\"", keys.join("misp").display()),
        )
        .replace(
            "api_key = \"secret-fortigate-token\"",
            &format!("api_key_file = \"{}\"", keys.join("fortigate").display()),
        );
    // (config, mode, warned)
    for (text, mode, warned) in [(MINIMAL, 0o644, true), (MINIMAL, 0o600, false), (key_files.as_str(), 0o644, false)] {
        let config = config_file(dir.path(), text, mode);
        let out = refused_block(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches(WARNING).count(), usize::from(warned), "mode {mode:o}: {stderr}");
    }

    let config = config_file(dir.path(), MINIMAL, 0o644);
    let out = integration().arg("--config").arg(&config).arg("validate").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches(WARNING).count() + stderr.matches(WARNING).count(), 1, "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("warn  config:") && l.contains(WARNING)), "{stdout}");
}
