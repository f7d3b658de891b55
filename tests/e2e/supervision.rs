//! Supervision: no task dies silently. The daemons are debug builds started with the test hook
//! `--panic-trigger-dir DIR` (absent from release builds): writing `DIR/panic-NAME` makes task NAME panic.
//! A restartable task comes back and keeps working; a fatal one turns `/healthz` 503 and the process exits
//! non-zero, with its pending blocks kept in the journal.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use fortimisp_e2e::fortimisp_testkit::fortigate::Fault;
use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::{eventually, members, pending_blocks, send_udp, traffic_line, Daemon, Env};

const WAIT: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `/healthz`: status code and JSON body (`None` when it does not answer).
async fn healthz(metrics: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("http://{metrics}/healthz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Starts `binary --config CONFIG --panic-trigger-dir DIR` and waits until `/healthz` answers 200.
async fn start_with_hook(env: &Env, binary: &str, metrics: SocketAddr) -> Daemon {
    let config = env.write_config();
    let dir = env.dir.path();
    let args = ["--config", config.to_str().unwrap(), "--panic-trigger-dir", dir.to_str().unwrap()];
    let daemon = Daemon::spawn(binary, &args, dir);
    daemon.wait_healthy(metrics).await;
    daemon
}

fn trigger(dir: &Path, task: &str) {
    std::fs::write(dir.join(format!("panic-{task}")), "").unwrap();
}

/// A panicking UDP listener is restarted on the same socket: `/healthz` stays 200 and counts the restart, and
/// a line sent afterwards is still read and blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_is_restarted_and_keeps_blocking() {
    let env = Env::start().await;
    let event = env.misp.add_event("C2", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.41"));
    let daemon = start_with_hook(&env, "integration", env.metrics).await;

    trigger(env.dir.path(), "udp");
    eventually(WAIT, "the udp listener to be restarted", || async {
        healthz(env.metrics).await.is_some_and(|(code, body)| {
            code == 200 && body["tasks"]["udp"]["restarts"] == 1 && body["tasks"]["udp"]["state"] == "running"
        })
    })
    .await;
    assert!(!env.dir.path().join("panic-udp").exists(), "the hook fired");

    send_udp(env.udp, &[traffic_line(ip("198.51.100.41"), ip("203.0.113.1"), 7, "accept")]);
    eventually(WAIT, "the block after the restart", || async {
        members(&env, "MISP_BLOCK").contains(&"misp-198.51.100.41".to_string())
    })
    .await;
    let (code, body) = healthz(env.metrics).await.expect("healthz answers");
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")), "{body}; log:\n{}", daemon.log_text());
}

/// The decider panics while the blocker is in the middle of a block (the FortiGate holds its answer): `/healthz`
/// turns 503 naming the failed task, the process exits 1, and the block stays pending in the journal; the next
/// start completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_decider_turns_unhealthy_exits_non_zero_and_keeps_pending_blocks() {
    let env = Env::start().await;
    let event = env.misp.add_event("C2", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.42"));
    let mut daemon = start_with_hook(&env, "integration", env.metrics).await;
    // The decider is spawned last in the start-up sequence: once /healthz lists it, start-up is over.
    eventually(WAIT, "the decider to run", || async {
        healthz(env.metrics).await.is_some_and(|(_, body)| body["tasks"]["decider"]["state"] == "running")
    })
    .await;

    let before = env.fortigate.total_requests();
    env.fortigate.inject(None, Fault::SlowAnswer(Duration::from_secs(60)), 1);
    send_udp(env.udp, &[traffic_line(ip("198.51.100.42"), ip("203.0.113.1"), 7, "accept")]);
    eventually(WAIT, "the block to be journalled and under way", || async {
        pending_blocks(&env).contains(&ip("198.51.100.42")) && env.fortigate.total_requests() > before
    })
    .await;

    trigger(env.dir.path(), "decider");
    eventually(WAIT, "/healthz to answer 503 for the dead decider", || async {
        healthz(env.metrics).await.is_some_and(|(code, body)| {
            code == 503 && body["status"] == "failed" && body["tasks"]["decider"]["state"] == "failed"
        })
    })
    .await;
    let status = daemon.wait_exit(Duration::from_secs(15)).expect("the daemon exits after a fatal death");
    assert_eq!(status.code(), Some(1), "log:\n{}", daemon.log_text());
    assert!(pending_blocks(&env).contains(&ip("198.51.100.42")), "the block is pending for the next start");

    let _restarted = env.integration().await;
    eventually(WAIT, "the pending block to be completed by the next start", || async {
        members(&env, "MISP_BLOCK").contains(&"misp-198.51.100.42".to_string())
    })
    .await;
}

/// A housekeeping prune pass that panics is counted and logged, `/healthz` stays 200, and the next pass runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_prune_pass_is_counted_and_the_next_pass_runs() {
    let mut env = Env::start().await;
    env.tweak("interval = \"1h\"", "interval = \"1s\"");
    trigger(env.dir.path(), "prune");
    let daemon = start_with_hook(&env, "housekeeping", env.hk_metrics).await;

    eventually(WAIT, "a good pass after the panicking one", || async {
        env.hk_metric("fortimisp_housekeeping_failures_total{reason=\"panic\"}").await == 1.0
            && env.hk_metric("fortimisp_housekeeping_last_success_timestamp_seconds").await > 0.0
    })
    .await;
    let (code, body) = healthz(env.hk_metrics).await.expect("healthz answers");
    assert_eq!(code, 200, "{body}; log:\n{}", daemon.log_text());
    assert_eq!(body["tasks"]["prune"]["restarts"], 1, "{body}");
    assert_eq!(body["tasks"]["prune"]["state"], "running", "{body}");
}

/// `/readyz`: body of a readiness probe (status code and JSON).
async fn readyz(metrics: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let response = reqwest::get(format!("http://{metrics}/readyz")).await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.json().await.ok()?))
}

/// `/healthz` is liveness, `/readyz` says whether the daemon can do its job: ready with both servers answering;
/// 503 naming `fortigate` once a write is refused (401), while `/healthz` stays 200; 503 naming `misp` for a
/// daemon started while MISP is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_what_fails_while_healthz_stays_alive() {
    let env = Env::start().await;
    let event = env.misp.add_event("Readiness", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.77"));
    let daemon = env.integration().await;
    eventually(WAIT, "ready with both servers answering", || async {
        readyz(env.metrics).await.is_some_and(|(code, body)| code == 200 && body["status"] == "ready")
    })
    .await;
    let (_, body) = readyz(env.metrics).await.unwrap();
    for check in ["misp", "fortigate", "journal"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }
    assert!(body["checks"].get("mirror").is_none(), "no mirror configured: {body}");

    env.fortigate.revoke_token();
    send_udp(env.udp, &[traffic_line(ip("198.51.100.77"), ip("203.0.113.1"), 7, "accept")]);
    eventually(WAIT, "not ready, naming the FortiGate", || async {
        readyz(env.metrics).await.is_some_and(|(code, body)| {
            code == 503 && body["failing"].as_array().is_some_and(|f| f.iter().any(|c| c == "fortigate"))
        })
    })
    .await;
    assert_eq!(healthz(env.metrics).await.map(|(code, _)| code), Some(200), "still alive");
    drop(daemon);

    let env = Env::start().await;
    env.misp.shutdown();
    let _daemon = env.integration().await;
    eventually(WAIT, "not ready, naming MISP", || async {
        readyz(env.metrics).await.is_some_and(|(code, body)| {
            code == 503 && body["failing"] == serde_json::json!(["misp"]) && body["checks"]["misp"]["ok"] == false
        })
    })
    .await;
}
