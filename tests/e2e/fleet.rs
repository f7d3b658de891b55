//! Fleets (issue 15): one daemon, three emulated FortiGates (targets `a`, `b`, `c`, each claiming its own device,
//! `FG100FTK2000000N` / `FGT-N`), one MISP. What lands where is read from each emulator's state and request log,
//! the lookups from MISP's request log. The single-`[fortigate]` form is what every other module runs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fortimisp_core::config::Scope;
use fortimisp_e2e::fortimisp_testkit::fleet::{Device, Fleet, FleetOptions, FleetTarget};
use fortimisp_e2e::fortimisp_testkit::fortigate::{Fault, Table};
use fortimisp_e2e::fortimisp_testkit::harness::{self, Binaries, ConfigDoc, Listen};
use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::{eventually, objects_created, own_comment, scrape, send_udp, Daemon};

const WAIT: Duration = Duration::from_secs(30);

/// A fleet of three, a work directory and a config for it.
struct FleetEnv {
    dir: tempfile::TempDir,
    fleet: Fleet,
    listen: Listen,
    scope: Scope,
}

impl FleetEnv {
    async fn start(scope: Scope) -> FleetEnv {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::start(FleetOptions::of(3), dir.path()).await.unwrap_or_else(|e| panic!("{e:#}"));
        FleetEnv { dir, fleet, listen: Listen::free(), scope }
    }

    fn target(&self, name: &str) -> &FleetTarget {
        self.fleet.target(name)
    }

    /// The harness's template as a fleet of three with `scope`, and one trigger (policy 7, accept).
    fn write_config(&self) -> PathBuf {
        let state = self.dir.path().join("state.db");
        let mut doc = ConfigDoc::template();
        doc.endpoints(&self.fleet.endpoints(), &self.listen, &state).fleet(&self.fleet).scope(self.scope);
        let text = format!("{}\n[[trigger]]\npolicy_id = 7\naction = \"accept\"\n", doc.render());
        let path = self.dir.path().join("config.toml");
        harness::write_private(&path, &text).unwrap_or_else(|e| panic!("{e:#}"));
        path
    }

    /// `integration --config <config> ARGS...` as a daemon, healthy.
    async fn integration(&self, args: &[&str]) -> Daemon {
        let config = self.write_config();
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let daemon = Daemon::spawn("integration", &all, self.dir.path());
        daemon.wait_healthy(self.listen.metrics).await;
        daemon
    }

    /// `housekeeping --config <config> --once`, to completion.
    fn housekeeping_once(&self) -> std::process::Output {
        let config = self.write_config();
        let bins = Binaries::locate().expect("the test knows its own path");
        let mut cmd = bins.command("housekeeping");
        cmd.arg("--config").arg(&config).arg("--once");
        tokio::task::block_in_place(|| cmd.output()).unwrap()
    }

    /// `integration --config <config> ARGS...` run by hand, to completion: (success, stdout, stderr).
    fn command(&self, args: &[&str]) -> (bool, String, String) {
        let config = self.write_config();
        let bins = Binaries::locate().expect("the test knows its own path");
        let mut cmd = bins.command("integration");
        cmd.arg("--config").arg(&config).args(args);
        let out = tokio::task::block_in_place(|| cmd.output()).unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    async fn metric(&self, sample: &str) -> f64 {
        scrape(self.listen.metrics, sample).await
    }

    fn udp(&self) -> SocketAddr {
        self.listen.udp
    }

    /// One published MISP event with an `ip-src` IDS attribute per address.
    fn add_hits(&self, ips: &[&str]) {
        let event = self.fleet.misp.add_event("fleet", true, &[]);
        for a in ips {
            self.fleet.misp.add_attribute(event, AttributeSpec::new("ip-src", *a));
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A triggering line (policy 7, accept) with `src` from `device`.
fn hit_from(device: &Device, src: &str) -> String {
    device.traffic_line(ip(src), ip("203.0.113.1"), 7, "accept")
}

/// Whether `target` blocks `addr`: the object exists and is a member of `MISP_BLOCK`.
fn blocks(target: &FleetTarget, addr: &str) -> bool {
    let name = format!("misp-{addr}");
    target.fortigate.object(&name).is_some()
        && target.fortigate.members("MISP_BLOCK").unwrap_or_default().contains(&name)
}

/// Object creations `target` answered with success, per object name: 1 each when nothing was duplicated.
fn created(target: &FleetTarget) -> std::collections::BTreeMap<String, usize> {
    objects_created(&target.fortigate)
}

/// Requests `target` refused for the token (401): failed logins, as the box counts them towards a lockout.
fn failed_logins(target: &FleetTarget) -> usize {
    target.fortigate.requests().iter().filter(|r| r.status == Some(401)).count()
}

/// Waits until the daemon has nothing pending (for any target) and has counted `blocked` blocks in all.
async fn settled(env: &FleetEnv, blocked: f64) {
    eventually(WAIT, &format!("{blocked} blocks done, nothing pending"), || async {
        let text = harness::metrics_text(env.listen.metrics).await;
        harness::sample_sum(&text, "fortimisp_blocks_total{outcome=\"blocked\"}") == blocked
            && harness::sample_sum(&text, "fortimisp_pending_actions") == 0.0
    })
    .await;
}

/// Origin scope: a line from B's device blocks on B only, and a line from a device no target claims is counted
/// and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_scope_blocks_on_the_line_device_only() {
    let env = FleetEnv::start(Scope::Origin).await;
    env.add_hits(&["198.51.100.10", "198.51.100.11"]);
    let _daemon = env.integration(&[]).await;
    let b = env.target("b");
    send_udp(env.udp(), &[hit_from(&b.device, "198.51.100.10")]);
    eventually(WAIT, "198.51.100.10 blocked on b", || async { blocks(b, "198.51.100.10") }).await;
    // By devname too: the target's `devices` name both.
    let by_name = Device { devid: "FGVMEVUNKNOWN001".into(), ..b.device.clone() };
    let stranger = Device::numbered(9);
    send_udp(env.udp(), &[hit_from(&by_name, "198.51.100.11"), hit_from(&stranger, "198.51.100.12")]);
    eventually(WAIT, "198.51.100.11 blocked on b", || async { blocks(b, "198.51.100.11") }).await;
    eventually(WAIT, "the stranger's line dropped as unclaimed", || async {
        env.metric("fortimisp_messages_dropped_total{reason=\"unclaimed_device\"}").await == 1.0
    })
    .await;
    settled(&env, 2.0).await;
    assert_eq!(env.metric("fortimisp_blocks_total{target=\"b\",outcome=\"blocked\"}").await, 2.0);
    for other in ["a", "c"] {
        let t = env.target(other);
        assert!(created(t).is_empty(), "{other} got blocks: {:?}", t.fortigate.route_counts());
        assert_eq!(env.metric(&format!("fortimisp_blocks_total{{target=\"{other}\",outcome=\"blocked\"}}")).await, 0.0);
    }
    assert_eq!(created(b).values().copied().collect::<Vec<_>>(), [1, 1], "{:?}", created(b));
}

/// Fleet scope: a line from B's device blocks on all three, with one MISP lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_scope_blocks_on_every_target_with_one_lookup() {
    let env = FleetEnv::start(Scope::Fleet).await;
    env.add_hits(&["198.51.100.20"]);
    let _daemon = env.integration(&[]).await;
    env.fleet.misp.reset_records();
    send_udp(env.udp(), &[hit_from(&env.target("b").device, "198.51.100.20")]);
    for t in &env.fleet.targets {
        eventually(WAIT, &format!("198.51.100.20 blocked on {}", t.name), || async { blocks(t, "198.51.100.20") })
            .await;
    }
    settled(&env, 3.0).await;
    for t in &env.fleet.targets {
        assert_eq!(created(t).get("misp-198.51.100.20"), Some(&1), "{}: {:?}", t.name, t.fortigate.route_counts());
        let sample = format!("fortimisp_blocks_total{{target=\"{}\",outcome=\"blocked\"}}", t.name);
        assert_eq!(env.metric(&sample).await, 1.0, "{sample}");
    }
    // The lookups of this address (the daemon's CIDR-indicator fetch, `value: ["%/%"]`, names no address).
    let requests = env.fleet.misp.requests();
    let lookups: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r.route == "attributes/restSearch")
        .map(|r| &r.body)
        .filter(|body| body["value"].as_array().is_some_and(|v| v.iter().any(|v| v == "198.51.100.20")))
        .collect();
    assert_eq!(lookups.len(), 1, "one lookup for three targets: {lookups:?}");
}

/// Isolation: C answers 500, then refuses the token (401), then recovers. A and B get every block while C is
/// down; C gets all of them once it is back, each once; C sees at most 2 failed logins (no lockout: the emulator,
/// like FortiOS, locks out after 3).
///
/// The scenario has a 60 s 500 phase; this one lasts 10 s (and at least until A and B hold every block):
/// long enough for several retries with backoff, short enough for CI. The daemon runs with `--fatal-pause 5s`
/// (debug builds) instead of the 5 minutes it waits after a 401 in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_holds_up_no_other() {
    const PHASE_500: Duration = Duration::from_secs(10);
    let addrs = ["198.51.100.30", "198.51.100.31", "198.51.100.32", "198.51.100.33"];
    let env = FleetEnv::start(Scope::Fleet).await;
    env.add_hits(&addrs);
    let _daemon = env.integration(&["--fatal-pause", "5s"]).await;
    let (a, b, c) = (env.target("a"), env.target("b"), env.target("c"));

    // Phase 1: C answers 500 to everything.
    let phase_end = tokio::time::Instant::now() + PHASE_500;
    c.fortigate.inject(None, Fault::Status(500), usize::MAX);
    let lines: Vec<String> = addrs[..3].iter().map(|x| hit_from(&a.device, x)).collect();
    send_udp(env.udp(), &lines);
    for t in [a, b] {
        for x in &addrs[..3] {
            eventually(WAIT, &format!("{x} blocked on {} while c fails", t.name), || async { blocks(t, x) }).await;
        }
    }
    assert!(created(c).is_empty(), "c answered 500 to everything: {:?}", c.fortigate.route_counts());
    let errors_500 = c.fortigate.requests().iter().filter(|r| r.status == Some(500)).count();
    assert!(errors_500 >= 1, "the daemon tried c: {:?}", c.fortigate.route_counts());
    eventually(WAIT, "c's blocks wait in the journal", || async {
        env.metric("fortimisp_pending_actions{target=\"c\"}").await == 3.0
    })
    .await;
    tokio::time::sleep_until(phase_end).await;

    // Phase 2: C refuses the token. One 401 stops its writes (alert), a new block reaches A and B regardless.
    c.fortigate.clear_faults();
    c.fortigate.revoke_token();
    eventually(WAIT, "c's refused token is reported", || async {
        env.metric("fortimisp_fortigate_unauthorized{target=\"c\"}").await == 1.0
    })
    .await;
    send_udp(env.udp(), &[hit_from(&b.device, addrs[3])]);
    for t in [a, b] {
        eventually(WAIT, &format!("{} blocked on {} while c refuses", addrs[3], t.name), || async {
            blocks(t, addrs[3])
        })
        .await;
    }
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized{target=\"a\"}").await, 0.0);
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized{target=\"b\"}").await, 0.0);

    // Phase 3: the operator fixes C's token; after the pause C gets every block.
    c.fortigate.set_token(&c.fortigate.token());
    for x in &addrs {
        eventually(WAIT, &format!("{x} blocked on c after it recovered"), || async { blocks(c, x) }).await;
    }
    settled(&env, 12.0).await;
    assert_eq!(env.metric("fortimisp_fortigate_unauthorized{target=\"c\"}").await, 0.0);
    for t in [a, b, c] {
        let made = created(t);
        assert_eq!(made.len(), 4, "{}: {made:?}", t.name);
        assert!(made.values().all(|n| *n == 1), "{}: an object created twice: {made:?}", t.name);
        let members = t.fortigate.members("MISP_BLOCK").unwrap_or_default();
        for x in &addrs {
            let name = format!("misp-{x}");
            assert_eq!(members.iter().filter(|m| **m == name).count(), 1, "{}: {members:?}", t.name);
        }
    }
    assert!(failed_logins(c) <= 2, "c saw {} failed logins (3 lock the admin out)", failed_logins(c));
    assert_eq!(failed_logins(a) + failed_logins(b), 0);
}

/// Housekeeping prunes each target's blocks on their own: A's and B's old blocks go, C's young block of the same
/// address as A's stays (ages are per target, not per address), B's foreign object stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_prunes_each_target_independently() {
    let env = FleetEnv::start(Scope::Origin).await;
    let old = chrono::Utc::now() - chrono::Duration::days(120);
    let young = chrono::Utc::now() - chrono::Duration::days(10);
    // Known to MISP, so the revocation check keeps what age does not remove.
    env.add_hits(&["198.51.100.40", "198.51.100.41"]);
    let seed = |t: &FleetTarget, addr: &str, at: chrono::DateTime<chrono::Utc>, extra: &[&str]| {
        let name = format!("misp-{addr}");
        t.fortigate.seed_address(&name, &format!("{addr}/32"), &own_comment(at, "1"));
        let mut members = vec![name.as_str()];
        members.extend_from_slice(extra);
        t.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &members, "deny policy fortimisp-block-in");
    };
    let (a, b, c) = (env.target("a"), env.target("b"), env.target("c"));
    seed(a, "198.51.100.40", old, &[]);
    b.fortigate.seed_address("partner-blocklist-1", "192.0.2.200/32", "added by hand by the network team");
    seed(b, "198.51.100.41", old, &["partner-blocklist-1"]);
    seed(c, "198.51.100.40", young, &[]);
    let foreign_before = b.fortigate.object("partner-blocklist-1");

    let out = env.housekeeping_once();
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "housekeeping --once failed:\n{log}");
    assert!(a.fortigate.object("misp-198.51.100.40").is_none(), "a's old block stays:\n{log}");
    assert!(b.fortigate.object("misp-198.51.100.41").is_none(), "b's old block stays:\n{log}");
    assert!(blocks(c, "198.51.100.40"), "c's young block was pruned:\n{log}");
    assert_eq!(b.fortigate.object("partner-blocklist-1"), foreign_before, "the foreign object changed");
    assert_eq!(b.fortigate.members("MISP_BLOCK").unwrap_or_default(), ["partner-blocklist-1"]);
    for t in [a, b, c] {
        let deletes: u64 =
            t.fortigate.route_counts().iter().filter(|(r, _)| r.starts_with("DELETE ")).map(|(_, n)| n).sum();
        assert_eq!(deletes, if t.name == "c" { 0 } else { 2 }, "{}: {:?}", t.name, t.fortigate.route_counts());
    }
}

/// The hand-run commands act per target: `block`/`unblock --target NAME|all`, `list` with a TARGET column and
/// `--target`, an unknown target refused by name, and `validate` reporting each target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_run_commands_take_a_target() {
    let env = FleetEnv::start(Scope::Origin).await;
    let (a, b, c) = (env.target("a"), env.target("b"), env.target("c"));

    let (ok, out, err) = env.command(&["block", "198.51.100.20", "--target", "b"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("on b"), "the sentence names the target: {out}");
    assert!(blocks(b, "198.51.100.20") && !blocks(a, "198.51.100.20") && !blocks(c, "198.51.100.20"));

    let (ok, out, err) = env.command(&["block", "198.51.100.21"]);
    assert!(ok, "{out}{err}");
    assert!([a, b, c].iter().all(|t| blocks(t, "198.51.100.21")), "no --target: every target");

    let (ok, out, _) = env.command(&["unblock", "198.51.100.21", "--target", "c"]);
    assert!(ok && out.contains("unblocked 198.51.100.21 on c"), "{out}");
    assert!(!blocks(c, "198.51.100.21") && blocks(a, "198.51.100.21") && blocks(b, "198.51.100.21"));

    let (ok, out, _) = env.command(&["list"]);
    assert!(ok && out.starts_with("TARGET"), "{out}");
    let rows: Vec<(String, String)> = out
        .lines()
        .skip(1)
        .map(|l| {
            let mut cells = l.split_whitespace();
            (cells.next().unwrap().to_string(), cells.next().unwrap().to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [("a", "198.51.100.21"), ("b", "198.51.100.20"), ("b", "198.51.100.21")]
        .iter()
        .map(|(t, ip)| (t.to_string(), ip.to_string()))
        .collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{out}");

    let (ok, out, _) = env.command(&["list", "--target", "c"]);
    assert!(ok && out.contains("no blocks"), "{out}");
    let (ok, _, err) = env.command(&["list", "--target", "nope"]);
    assert!(!ok && err.contains("no target named `nope` (targets: a, b, c)"), "{err}");

    let (ok, out, err) = env.command(&["validate"]);
    for name in ["a", "b", "c"] {
        assert!(out.contains(&format!("target {name} (https://")), "validate reports target {name}:\n{out}{err}");
    }
    assert!(ok, "every target of the fleet passes:\n{out}{err}");
}
