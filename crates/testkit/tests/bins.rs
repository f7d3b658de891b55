//! The testkit binaries start and say where they are. Also makes `cargo test --workspace` build them (cargo builds
//! a package's binaries for its integration tests), so the e2e tests find `lab` and the emulators in target/.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Starts an emulator binary on an ephemeral port and returns the URL it prints first.
fn first_line(bin: &str, args: &[&str]) -> String {
    let mut child = Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line.trim().to_string()
}

#[test]
fn emulators_print_their_url() {
    let fg = first_line(env!("CARGO_BIN_EXE_fortigate-emulator"), &["--listen", "127.0.0.1:0"]);
    assert!(fg.starts_with("http://127.0.0.1:"), "fortigate-emulator printed {fg:?}");
    let misp = first_line(env!("CARGO_BIN_EXE_misp-emulator"), &["--listen", "127.0.0.1:0"]);
    assert!(misp.starts_with("http://127.0.0.1:"), "misp-emulator printed {misp:?}");
}

/// `--profile read-only`: reads work, writes answer 403 (what `integration validate` must catch).
#[tokio::test]
async fn fortigate_emulator_takes_an_admin_profile() {
    let (url, _emulator) = first_line_alive(
        env!("CARGO_BIN_EXE_fortigate-emulator"),
        &["--listen", "127.0.0.1:0", "--profile", "read-only"],
    );
    let http = reqwest::Client::new();
    let path = format!("{url}/api/v2/cmdb/firewall/address");
    let read = http.get(&path).bearer_auth("fortimisp-emulator-token").send().await.expect("answer");
    assert_eq!(read.status().as_u16(), 200);
    let body = serde_json::json!({"name": "x", "subnet": "192.0.2.1/32"});
    let write = http.post(&path).bearer_auth("fortimisp-emulator-token").json(&body).send().await.expect("answer");
    assert_eq!(write.status().as_u16(), 403);
}

/// The threat-feed flags reach the emulator: the entry limit shows in the entry-list status; a bad polling value
/// is refused.
#[tokio::test]
async fn fortigate_emulator_takes_the_feed_flags() {
    let (url, _emulator) = first_line_alive(
        env!("CARGO_BIN_EXE_fortigate-emulator"),
        &["--listen", "127.0.0.1:0", "--feed-entry-limit", "7", "--feed-poll-interval", "refresh-rate"],
    );
    let http = reqwest::Client::new();
    let feed = serde_json::json!({"name": "f", "type": "address", "update-method": "push",
                                  "resource": "https://127.0.0.1/placeholder"});
    let created = http
        .post(format!("{url}/api/v2/cmdb/system/external-resource"))
        .bearer_auth("fortimisp-emulator-token")
        .json(&feed)
        .send()
        .await
        .expect("answer");
    assert_eq!(created.status().as_u16(), 200);
    let status: serde_json::Value = http
        .get(format!("{url}/api/v2/monitor/system/external-resource/entry-list?mkey=f&status_only=true"))
        .bearer_auth("fortimisp-emulator-token")
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(status["results"]["limit"], 7, "{status}");

    let refused = Command::new(env!("CARGO_BIN_EXE_fortigate-emulator"))
        .args(["--listen", "127.0.0.1:0", "--feed-poll-interval", "sometimes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!refused.success());
}

/// Like [`first_line`], but the emulator keeps running until the returned guard is dropped.
fn first_line_alive(bin: &str, args: &[&str]) -> (String, Kill) {
    let mut child = Command::new(bin).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (line.trim().to_string(), Kill(child))
}

/// Kills the child when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lab_documents_its_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_lab")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in ["--config", "--headless", "--json", "--keep-running", "--bin-dir"] {
        assert!(help.contains(option), "lab --help lacks {option}:\n{help}");
    }
}
