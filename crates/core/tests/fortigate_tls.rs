//! The client over TLS against the emulator with a throw-away rcgen CA: verification succeeds with the CA file,
//! fails closed without it (and is not retried), and `verify_tls = false` accepts the certificate.

use std::time::Duration;

use fortimisp_core::fortigate::{Client, ClientOptions, Error, RetryPolicy};
use fortimisp_core::secret::ApiKey;
use fortimisp_testkit::fortigate::{EmulatorConfig, FortiGateEmulator};
use fortimisp_testkit::tls::{server_config, TestCa};

async fn tls_emulator(ca: &TestCa) -> FortiGateEmulator {
    let cert = ca.issue_server_cert();
    FortiGateEmulator::start_tls(EmulatorConfig::default(), server_config(&cert)).await.expect("start")
}

fn options(emu: &FortiGateEmulator) -> ClientOptions {
    let mut o = ClientOptions::new(emu.url(), ApiKey::new(emu.token()));
    o.requests_per_second = 0.0;
    o.timeout = Duration::from_secs(5);
    o.retry =
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) };
    o
}

#[tokio::test]
async fn verification_succeeds_with_the_ca_file() {
    let ca = TestCa::new();
    let emu = tls_emulator(&ca).await;
    assert!(emu.url().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    ca.write_ca_file(&ca_file).expect("write ca");
    let mut o = options(&emu);
    o.ca_file = Some(ca_file);
    let c = Client::new(o).expect("client");
    assert_eq!(c.system_status().await.expect("status").version, "v7.4.4");
    c.block("198.51.100.7".parse().expect("ip"), &fortimisp_core::fortigate::Comment::new(chrono::Utc::now(), "1", ""))
        .await
        .expect("block over tls");
}

#[tokio::test]
async fn verification_fails_closed_without_the_ca_or_with_another_ca() {
    let ca = TestCa::new();
    let emu = tls_emulator(&ca).await;
    let other = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let other_file = dir.path().join("other.pem");
    other.write_ca_file(&other_file).expect("write");
    for ca_file in [None, Some(other_file)] {
        let mut o = options(&emu);
        o.ca_file = ca_file.clone();
        let c = Client::new(o).expect("client");
        match c.system_status().await {
            Err(e @ Error::Transport(_)) => {
                let mut chain = format!("{e:?}");
                let mut s: Option<&dyn std::error::Error> = Some(&e);
                while let Some(x) = s {
                    chain.push_str(&format!(" / {x}"));
                    s = x.source();
                }
                assert!(!e.is_retryable(), "{ca_file:?}: certificate errors are not retried: {chain}")
            }
            other => panic!("{ca_file:?}: expected a transport error, got {other:?}"),
        }
    }
    assert_eq!(emu.total_requests(), 0, "no request reached the server");
}

#[tokio::test]
async fn verify_tls_false_accepts_the_certificate() {
    let ca = TestCa::new();
    let emu = tls_emulator(&ca).await;
    let mut o = options(&emu);
    o.verify_tls = false;
    Client::new(o).expect("client").system_status().await.expect("status");
}

#[tokio::test]
async fn unreadable_or_empty_ca_files_are_setup_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    for path in [dir.path().join("missing.pem"), empty] {
        let mut o = ClientOptions::new("https://127.0.0.1:1", ApiKey::new("t"));
        o.ca_file = Some(path.clone());
        assert!(matches!(Client::new(o), Err(Error::CaFile { .. })), "{path:?}");
    }
}
