//! Several instances on one PostgreSQL (issue 16): three `integration` daemons (or three `housekeeping`), one
//! PostgreSQL database of the test's own, two emulated FortiGates (targets `a` and `b`; fleet scope, so every hit
//! is blocked on both) and one MISP. Every line goes to all three instances.
//!
//! Each instance authenticates with a token of its own (the emulators accept all three, as a FortiGate accepts the
//! token of each of its REST API admins), so a FortiGate's request log tells the writers apart. The lease timings
//! are the defaults: a dead leader's targets are taken over within `lease_ttl + renew_every` = 12 s, the bound
//! docs/production.md §10 documents.
//!
//! Needs PostgreSQL: the machine's server (127.0.0.1:5432) for a database per test, and its binaries for the one
//! test that restarts a private server ([`PgServer`]). Without them each test prints a loud `SKIP` line and passes,
//! unless `FORTIMISP_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fortimisp_core::config::Scope;
use fortimisp_e2e::fortimisp_testkit::cut::CutProxy;
use fortimisp_e2e::fortimisp_testkit::fleet::{Fleet, FleetOptions, FleetTarget};
use fortimisp_e2e::fortimisp_testkit::fortigate::{RecordedRequest, Table};
use fortimisp_e2e::fortimisp_testkit::harness::{self, ConfigDoc, Listen};
use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::fortimisp_testkit::pg::PgServer;
use fortimisp_e2e::{eventually, objects_created, own_comment, query_text, scrape, send_tcp, Daemon, Database};

/// A hang guard for what must happen (not a speed check).
const WAIT: Duration = Duration::from_secs(90);
/// The documented failover bound with the default timings: `lease_ttl` (10 s) + `renew_every` (2 s).
const FAILOVER_BOUND: Duration = Duration::from_secs(12);
/// The default `lease_ttl`: the longest a lease granted before a cut can hold on PostgreSQL's clock.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long after a SIGKILL a request the killed process had already sent may still be read.
const GRACE: Duration = Duration::from_secs(1);
/// Instances per cluster.
const INSTANCES: usize = 3;

/// Where the instances' journal is.
enum Store {
    /// A database on the machine's server.
    Shared(Database),
    /// A private server the test can restart.
    Private { server: Arc<PgServer>, db: String },
}

impl Store {
    fn url(&self) -> String {
        match self {
            Store::Shared(db) => db.url.clone(),
            Store::Private { server, db } => server.url(db),
        }
    }
}

/// One instance: its name (its token's suffix), listen addresses, and the daemon once started.
struct Instance {
    name: String,
    listen: Listen,
    /// The URL it reaches PostgreSQL at (through its own [`CutProxy`] in the network-cut test).
    state_url: String,
    daemon: Option<Daemon>,
}

/// Two FortiGates, one MISP, one store, three instances. Fields drop in order: the daemons first, then the
/// store (a private server's directory is inside `dir`), the emulators, and the directory last.
struct Cluster {
    instances: Vec<Instance>,
    store: Store,
    fleet: Fleet,
    /// Text replacements made in every instance's rendered config (`from`, `to`; `from` must be there).
    tweaks: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `None` (after a `SKIP` line) without PostgreSQL; `private`: a private server the test can restart.
    async fn start(test: &str, private: bool) -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let store = if private {
            let server = PgServer::start(dir.path()).unwrap_or_else(|e| panic!("{e}"))?;
            server.create_database("cluster").unwrap_or_else(|e| panic!("{e}"));
            Store::Private { server: Arc::new(server), db: "cluster".into() }
        } else {
            Store::Shared(Database::create(test)?)
        };
        let fleet = Fleet::start(FleetOptions::of(2), dir.path()).await.unwrap_or_else(|e| panic!("{e:#}"));
        let url = store.url();
        let instances = (1..=INSTANCES)
            .map(|n| Instance {
                name: format!("node-{n}"),
                listen: Listen::free(),
                state_url: url.clone(),
                daemon: None,
            })
            .collect::<Vec<_>>();
        for target in &fleet.targets {
            for i in &instances {
                target.fortigate.add_token(&token_of(target, &i.name));
            }
        }
        Some(Cluster { instances, store, fleet, tweaks: Vec::new(), dir })
    }

    fn target(&self, name: &str) -> &FleetTarget {
        self.fleet.targets.iter().find(|t| t.name == name).expect("a target of the fleet")
    }

    /// Instance `i`'s config: the harness's template as a fleet of two in fleet scope, one trigger (policy 7,
    /// accept), the shared store, `[cluster] name`, and each target's token made the instance's own.
    fn write_config(&self, i: usize) -> PathBuf {
        let instance = &self.instances[i];
        let mut doc = ConfigDoc::template();
        let state = self.dir.path().join(format!("{}.db", instance.name));
        doc.endpoints(&self.fleet.endpoints(), &instance.listen, &state).fleet(&self.fleet).scope(Scope::Fleet);
        let mut text = doc.render();
        for target in &self.fleet.targets {
            let shared = format!("api_key = \"{}\"", target.fortigate.token());
            let own = format!("api_key = \"{}\"", token_of(target, &instance.name));
            assert!(text.contains(&shared), "the config names {}'s token", target.name);
            text = text.replace(&shared, &own);
        }
        text = text.replace("[state]\n", &format!("[state]\nurl = \"{}\"\n", instance.state_url));
        for (from, to) in &self.tweaks {
            assert!(text.contains(from.as_str()), "the config has `{from}`");
            text = text.replace(from.as_str(), to);
        }
        text.push_str(&format!(
            "\n[cluster]\nname = \"{}\"\n\n[[trigger]]\npolicy_id = 7\naction = \"accept\"\n",
            instance.name
        ));
        let path = self.dir.path().join(format!("{}.toml", instance.name));
        harness::write_private(&path, &text).unwrap_or_else(|e| panic!("{e:#}"));
        path
    }

    /// Starts every instance's `binary` at once (so their timers start together), then waits until each is
    /// healthy and every target has a leader.
    async fn start_all(&mut self, binary: &str) {
        for i in 0..self.instances.len() {
            let config = self.write_config(i);
            let daemon = Daemon::spawn(binary, &["--config", config.to_str().unwrap()], self.dir.path());
            self.instances[i].daemon = Some(daemon);
        }
        for instance in &self.instances {
            let metrics = if binary == "housekeeping" {
                instance.listen.housekeeping_metrics.expect("a housekeeping metrics address")
            } else {
                instance.listen.metrics
            };
            instance.daemon.as_ref().unwrap().wait_healthy(metrics).await;
        }
        if binary == "integration" {
            for target in ["a", "b"] {
                eventually(WAIT, &format!("a leader for {target}"), || async {
                    self.leader_of(target).await.is_some()
                })
                .await;
            }
        }
    }

    /// The instance (index) whose metrics say it leads `target`; `None` unless exactly one does.
    async fn leader_of(&self, target: &str) -> Option<usize> {
        let mut leaders = Vec::new();
        for (n, i) in self.instances.iter().enumerate() {
            if i.daemon.is_some()
                && scrape(i.listen.metrics, &format!("fortimisp_lease_leader{{target=\"{target}\"}}")).await == 1.0
            {
                leaders.push(n);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// One published MISP event with an `ip-src` IDS attribute per address.
    fn add_hits(&self, ips: &[IpAddr]) {
        let event = self.fleet.misp.add_event("cluster", true, &[]);
        for a in ips {
            self.fleet.misp.add_attribute(event, AttributeSpec::new("ip-src", a.to_string()));
        }
    }

    /// Sends a triggering line per address to every running instance (from target a's device), over TCP (RFC 6587
    /// octet counting) so that no line is lost on a busy machine.
    fn send_to_all(&self, ips: &[IpAddr]) {
        let device = &self.target("a").device;
        let lines: Vec<String> =
            ips.iter().map(|ip| device.traffic_line(*ip, "203.0.113.1".parse().unwrap(), 7, "accept")).collect();
        for instance in self.instances.iter().filter(|i| i.daemon.is_some()) {
            send_tcp(instance.listen.tcp.expect("a TCP listener"), &lines, true);
        }
    }

    /// Waits until every address of `ips` is blocked on both targets.
    async fn all_blocked(&self, ips: &[IpAddr], what: &str) {
        for target in &self.fleet.targets {
            eventually(WAIT, &format!("{what}: {} blocks on {}", ips.len(), target.name), || async {
                let members: BTreeSet<String> =
                    target.fortigate.members("MISP_BLOCK").unwrap_or_default().into_iter().collect();
                ips.iter().all(|ip| members.contains(&format!("misp-{ip}")))
            })
            .await;
        }
    }

    /// Waits until no instance's store holds a pending action.
    async fn nothing_pending(&self) {
        let url = self.store.url();
        eventually(WAIT, "no pending action in the store", || {
            let url = url.clone();
            async move { query_text(&url, "SELECT count(*) FROM actions WHERE state = 'pending'")[0][0] == "0" }
        })
        .await;
    }

    /// Waits until every address of `ips` is blocked on both targets and nothing is pending, then asserts each was
    /// created once on every target.
    async fn landed_once(&self, ips: &[IpAddr], what: &str) {
        self.all_blocked(ips, what).await;
        self.nothing_pending().await;
        each_created_once(self, ips);
    }

    /// Write requests (anything but GET) the FortiGates have seen, all targets together.
    fn writes(&self) -> usize {
        self.fleet.targets.iter().map(|t| t.fortigate.requests().iter().filter(|r| is_write(r)).count()).sum()
    }

    fn kill(&mut self, i: usize) {
        self.instances[i].daemon.as_mut().expect("running").sigkill();
        self.instances[i].daemon = None;
    }
}

/// Instance `name`'s token on `target`.
fn token_of(target: &FleetTarget, name: &str) -> String {
    format!("{}-{name}", target.fortigate.token())
}

/// Which instance sent a request (by its token): `node-N`, or `?`.
fn writer(target: &FleetTarget, r: &RecordedRequest) -> String {
    let base = format!("{}-", target.fortigate.token());
    r.token.as_deref().and_then(|t| t.strip_prefix(&base)).unwrap_or("?").to_owned()
}

fn is_write(r: &RecordedRequest) -> bool {
    r.method != "GET"
}

/// Successful object creations on `target`, per object name (the daemons' start-up placeholders left out).
fn created(target: &FleetTarget) -> BTreeMap<String, usize> {
    objects_created(&target.fortigate)
}

/// Asserts each of `ips` was created once on every target, and nothing else was.
fn each_created_once(cluster: &Cluster, ips: &[IpAddr]) {
    let expected: BTreeMap<String, usize> = ips.iter().map(|ip| (format!("misp-{ip}"), 1)).collect();
    for target in &cluster.fleet.targets {
        let made = created(target);
        let twice: Vec<_> = made.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{}: objects created more than once: {twice:?}", target.name);
        assert_eq!(made, expected, "{}: one creation per address", target.name);
    }
}

/// `n` public addresses, distinct from one test to the next by `base` (45.base.x.y; no traffic goes to them).
fn addresses(base: u8, n: usize) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::new(45, base, (i / 250) as u8, (i % 250) as u8 + 1))).collect()
}

/// No duplicates: 60 hits, each line to all three instances, are blocked exactly once per target, and each
/// target's writes all come from one instance (its leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_sees_every_line_and_each_block_is_made_once_by_one_writer() {
    let Some(mut cluster) = Cluster::start("e2e cluster::no_duplicates", false).await else { return };
    let ips = addresses(1, 60);
    cluster.add_hits(&ips);
    cluster.start_all("integration").await;
    cluster.send_to_all(&ips);
    cluster.all_blocked(&ips, "one burst").await;
    cluster.nothing_pending().await;
    // Lines repeated later (every instance already decided them) cost no FortiGate write.
    let before = cluster.writes();
    cluster.send_to_all(&ips[..10]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nothing_pending().await;
    let after = cluster.writes();
    assert_eq!(after, before, "repeated lines wrote to a FortiGate again");

    each_created_once(&cluster, &ips);
    for target in &cluster.fleet.targets {
        let writers: BTreeSet<String> =
            target.fortigate.requests().iter().filter(|r| is_write(r)).map(|r| writer(target, r)).collect();
        assert_eq!(writers.len(), 1, "{}: writes from {writers:?}", target.name);
        let leader = cluster.leader_of(&target.name).await.expect("a leader");
        assert_eq!(
            writers.into_iter().next().unwrap(),
            cluster.instances[leader].name,
            "{}: the writer leads",
            target.name
        );
    }
    // The store holds one decision row per target and address (the instances' repeats counted in it).
    let rows = query_text(
        &cluster.store.url(),
        "SELECT target, ip, count(*) FROM decisions WHERE verdict = 'block' GROUP BY 1, 2 HAVING count(*) > 1",
    );
    assert!(rows.is_empty(), "a decision recorded twice: {rows:?}");
    // `integration cluster status` lists the three instances and who holds each target.
    let bins = harness::Binaries::locate().unwrap();
    let config = cluster.write_config(0);
    let out =
        bins.command("integration").args(["--config", config.to_str().unwrap(), "cluster", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cluster status: {text}{}", String::from_utf8_lossy(&out.stderr));
    for i in &cluster.instances {
        assert!(text.contains(&i.name), "cluster status lists {}:\n{text}", i.name);
    }
}

/// Leader killed: SIGKILL the leader of target a in the middle of a burst of 500 blocks. Another instance takes
/// a over within the failover bound, every block lands, none twice, and nothing comes from the dead instance after
/// it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_burst_is_replaced_within_the_bound_and_nothing_is_lost_or_doubled() {
    let Some(mut cluster) = Cluster::start("e2e cluster::leader_killed", false).await else { return };
    let ips = addresses(2, 500);
    cluster.add_hits(&ips);
    cluster.start_all("integration").await;
    let leader = cluster.leader_of("a").await.expect("a leads");
    let dead = cluster.instances[leader].name.clone();
    cluster.send_to_all(&ips);
    eventually(WAIT, "the burst under way on a", || async { created(cluster.target("a")).len() >= 50 }).await;
    let killed_at = Instant::now();
    cluster.kill(leader);
    let a = cluster.target("a");
    cluster.landed_once(&ips, "after the kill").await;
    for target in &cluster.fleet.targets {
        let requests = target.fortigate.requests();
        // A request the dead leader had sent may be read a moment after the kill; its lease ran 8 s longer.
        let late: Vec<&RecordedRequest> =
            requests.iter().filter(|r| writer(target, r) == dead && r.at > killed_at + GRACE).collect();
        assert!(late.is_empty(), "{}: requests from the dead leader after its death: {late:?}", target.name);
        // Who wrote after the kill: one instance per target.
        let after: BTreeSet<String> = requests
            .iter()
            .filter(|r| is_write(r) && r.at > killed_at && writer(target, r) != dead)
            .map(|r| writer(target, r))
            .collect();
        assert!(after.len() <= 1, "{}: writers after the kill: {after:?}", target.name);
    }
    let a_requests = a.fortigate.requests();
    let resumed = a_requests
        .iter()
        .filter(|r| is_write(r) && r.at > killed_at && writer(a, r) != dead)
        .map(|r| r.at.duration_since(killed_at))
        .min()
        .expect("another instance wrote to a after the kill");
    // The takeover itself (a correctness bound of the lease, with a second for the first request's latency).
    assert!(resumed <= FAILOVER_BOUND + Duration::from_secs(1), "a resumed {resumed:?} after the kill");
    eprintln!("leader killed: writes to a resumed {resumed:?} after the kill (bound {FAILOVER_BOUND:?})");
}

/// PostgreSQL restarted in the middle of a burst: nothing is lost, nothing is doubled, and every instance is
/// back (its journal out of degraded mode, its heartbeat renewed after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_mid_burst_loses_nothing_and_every_instance_reconnects() {
    let Some(mut cluster) = Cluster::start("e2e cluster::postgresql_restarted", true).await else { return };
    let ips = addresses(3, 500);
    cluster.add_hits(&ips);
    cluster.start_all("integration").await;
    cluster.send_to_all(&ips);
    let a = cluster.target("a");
    eventually(WAIT, "the burst under way on a", || async { created(a).len() >= 50 }).await;
    let Store::Private { server, .. } = &cluster.store else { unreachable!("a private server") };
    let server = server.clone();
    tokio::task::spawn_blocking(move || server.restart(Duration::from_secs(2))).await.unwrap().expect("restart");
    let restarted = chrono::Utc::now();
    cluster.landed_once(&ips, "after the restart").await;
    for i in &cluster.instances {
        eventually(WAIT, &format!("{}'s journal out of degraded mode", i.name), || async {
            scrape(i.listen.metrics, "fortimisp_journal_degraded").await == 0.0
        })
        .await;
    }
    let url = cluster.store.url();
    eventually(WAIT, "every instance's heartbeat renewed after the restart", || {
        let url = url.clone();
        async move {
            let sql = format!(
                "SELECT count(*) FROM instances WHERE role = 'integration' AND seen_at > '{}'::timestamptz",
                restarted.to_rfc3339()
            );
            query_text(&url, &sql)[0][0] == INSTANCES.to_string()
        }
    })
    .await;
    for target in ["a", "b"] {
        assert!(cluster.leader_of(target).await.is_some(), "{target} has a leader again");
    }
}

/// Network cut: the leader of target a loses PostgreSQL (its connections held open, nothing answered). It stops
/// writing before its lease can expire, its role turns follower, and the others carry on with new blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_postgresql_stops_writing_and_the_others_carry_on() {
    let Some(mut cluster) = Cluster::start("e2e cluster::network_cut", false).await else { return };
    let upstream = (Ipv4Addr::LOCALHOST, 5432).into();
    let mut proxies = Vec::new();
    for i in 0..INSTANCES {
        let proxy = CutProxy::start(upstream).await.expect("proxy");
        let url = cluster.store.url().replace("127.0.0.1:5432", &proxy.addr().to_string());
        assert_ne!(url, cluster.store.url(), "the test database is on 127.0.0.1:5432");
        cluster.instances[i].state_url = url;
        proxies.push(proxy);
    }
    let first = addresses(4, 20);
    let second = addresses(5, 100);
    cluster.add_hits(&first);
    cluster.add_hits(&second);
    cluster.start_all("integration").await;
    cluster.send_to_all(&first);
    cluster.all_blocked(&first, "before the cut").await;
    let leader = cluster.leader_of("a").await.expect("a leads");
    let cut_off = cluster.instances[leader].name.clone();
    let cut_at = Instant::now();
    proxies[leader].cut();

    let metrics = cluster.instances[leader].listen.metrics;
    eventually(WAIT, "the cut-off instance turns follower", || async {
        scrape(metrics, "fortimisp_lease_leader{target=\"a\"}").await == 0.0
            && scrape(metrics, "fortimisp_lease_leader{target=\"b\"}").await == 0.0
    })
    .await;
    assert!(cut_at.elapsed() <= LEASE_TTL, "the cut-off instance led for {:?} after the cut", cut_at.elapsed());
    cluster.send_to_all(&second);
    cluster.all_blocked(&second, "during the cut").await;
    for target in &cluster.fleet.targets {
        let requests = target.fortigate.requests();
        let late: Vec<&RecordedRequest> =
            requests.iter().filter(|r| writer(target, r) == cut_off && r.at > cut_at + LEASE_TTL).collect();
        assert!(late.is_empty(), "{}: the cut-off instance wrote after its lease could expire: {late:?}", target.name);
        let others: BTreeSet<String> =
            requests.iter().filter(|r| is_write(r) && r.at > cut_at + LEASE_TTL).map(|r| writer(target, r)).collect();
        assert_eq!(others.len(), 1, "{}: one writer during the cut: {others:?}", target.name);
        assert!(!others.contains(&cut_off), "{}", target.name);
    }
    // Healed, the instance comes back as a follower or a leader, and nothing it journaled meanwhile is lost.
    proxies[leader].heal();
    cluster.nothing_pending().await;
    eventually(WAIT, "the healed instance's journal out of degraded mode", || async {
        scrape(metrics, "fortimisp_journal_degraded").await == 0.0
    })
    .await;
    let mut all = first.clone();
    all.extend_from_slice(&second);
    each_created_once(&cluster, &all);
}

/// Housekeeping with three instances prunes once per cycle: one pass per `interval` cluster-wide (counted by the
/// objects the passes examined), and the old block removed once per target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_housekeepers_prune_once_per_cycle() {
    let Some(mut cluster) = Cluster::start("e2e cluster::housekeeping", false).await else { return };
    let old = chrono::Utc::now() - chrono::Duration::days(100);
    let young = chrono::Utc::now() - chrono::Duration::days(1);
    for target in &cluster.fleet.targets {
        for (addr, at) in [("45.6.0.1", old), ("45.6.0.2", young)] {
            target.fortigate.seed_address(&format!("misp-{addr}"), &format!("{addr}/32"), &own_comment(at, "1"));
        }
        target.fortigate.seed_group(Table::Addrgrp, "MISP_BLOCK", &["misp-45.6.0.1", "misp-45.6.0.2"], "deny");
    }
    // A cycle of 4 s; the prune timer only (no feed updates), revocation off (the emulated MISP has no event 1).
    let period = Duration::from_secs(4);
    for (from, to) in [
        ("interval = \"1h\"", "interval = \"4s\""),
        ("unblock_revoked = true", "unblock_revoked = false"),
        ("feed_update_interval = \"12h\"", "feed_update_interval = \"0s\""),
    ] {
        cluster.tweaks.push((from.to_owned(), to.to_owned()));
    }
    let started = Instant::now();
    cluster.start_all("housekeeping").await;
    tokio::time::sleep(5 * period).await;
    let mut examined = 0.0;
    for i in &cluster.instances {
        examined += scrape(i.listen.housekeeping_metrics.unwrap(), "fortimisp_housekeeping_examined_total").await;
    }
    let elapsed = started.elapsed();
    // Each pass examines the owned objects of both targets: the old one (first pass only) and the young one.
    let passes = ((examined - 2.0) / 2.0).round() as u64;
    let cycles = elapsed.as_secs_f64() / period.as_secs_f64();
    assert!(passes >= 2, "{passes} passes in {elapsed:?} (examined {examined})");
    assert!(
        passes as f64 <= cycles.ceil() + 1.0,
        "{passes} passes in {elapsed:?}: more than one per {period:?} cycle (three instances would make ~{:.0})",
        3.0 * cycles
    );
    for target in &cluster.fleet.targets {
        assert!(target.fortigate.object("misp-45.6.0.1").is_none(), "{}: the old block stays", target.name);
        assert!(target.fortigate.object("misp-45.6.0.2").is_some(), "{}: the young block went", target.name);
        let deletes =
            target.fortigate.requests().iter().filter(|r| r.method == "DELETE" && r.status == Some(200)).count();
        assert!(deletes <= 2, "{}: the old block removed more than once: {deletes} deletes", target.name);
    }
    eprintln!("housekeeping: {passes} passes in {elapsed:?} ({cycles:.1} cycles of {period:?}) with three instances");
}
