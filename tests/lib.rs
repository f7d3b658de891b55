//! Helpers for the end-to-end tests: an [`Env`] (both emulators over TLS with private CAs, a config, the real
//! `integration` / `housekeeping` binaries as child processes), syslog senders, metrics, waits on observable
//! state. Starting the servers, writing the config and running the daemons is `fortimisp_testkit::harness`, shared
//! with the lab and loadgen; this file adds what the tests need on top (panics instead of errors, text tweaks of
//! the config, seeding helpers).
//!
//! The binaries are the ones `cargo test` builds into the target directory (the `integration` and `housekeeping`
//! packages have integration tests of their own, so cargo builds their binaries before any test runs);
//! `FORTIMISP_BIN_DIR` overrides where they are looked for.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fortimisp_testkit::fleet::Device;
use fortimisp_testkit::fortigate::{EmulatorConfig, FortiGateEmulator};
use fortimisp_testkit::harness::{self, Binaries, ConfigDoc, Endpoints, Listen, ServerOptions, Servers};
use fortimisp_testkit::misp::MispEmulator;

pub use fortimisp_testkit;

/// How long a daemon may take to serve `/healthz`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// The directory of the built binaries ([`Binaries::locate`]).
fn binaries() -> Binaries {
    Binaries::locate().expect("the test knows its own path")
}

/// Where the built binaries are: `$FORTIMISP_BIN_DIR`, else the directory above this test executable's `deps/`.
pub fn bin(name: &str) -> PathBuf {
    let path = binaries().path(name);
    assert!(path.exists(), "{} not built: run the tests with `cargo test --workspace`", path.display());
    path
}

/// A free loopback port (bound then released; the daemon binds it right after).
pub fn free_port() -> u16 {
    fortimisp_testkit::free_port()
}

/// A free UDP port.
pub fn free_udp_port() -> u16 {
    fortimisp_testkit::free_port()
}

/// A test environment: both emulators over HTTPS (each with its own private CA), a temp dir, a config.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub fortigate: FortiGateEmulator,
    pub misp: MispEmulator,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub metrics: SocketAddr,
    pub hk_metrics: SocketAddr,
    pub state: PathBuf,
    /// `[[trigger]]` tables and other sections appended to the config.
    pub extra: String,
    /// Replacements applied to the base config (`(from, to)`).
    pub tweaks: Vec<(String, String)>,
    fortigate_ca: Option<PathBuf>,
    misp_ca: Option<PathBuf>,
}

impl Env {
    /// Starts the emulators with a default FortiGate.
    pub async fn start() -> Env {
        Self::start_with(EmulatorConfig::default()).await
    }

    pub async fn start_with(fg_config: EmulatorConfig) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let opts = ServerOptions { tls: true, fortigate: fg_config, ..ServerOptions::default() };
        let Servers { fortigate, misp, fortigate_ca, misp_ca } =
            Servers::start(opts, dir.path()).await.unwrap_or_else(|e| panic!("{e:#}"));
        let listen = Listen::free();
        Env {
            udp: listen.udp,
            tcp: listen.tcp.expect("Listen::free sets every address"),
            metrics: listen.metrics,
            hk_metrics: listen.housekeeping_metrics.expect("Listen::free sets every address"),
            state: dir.path().join("state.db"),
            dir,
            fortigate,
            misp,
            extra: "[[trigger]]\npolicy_id = 7\naction = \"accept\"\n".into(),
            tweaks: Vec::new(),
            fortigate_ca,
            misp_ca,
        }
    }

    /// The FortiGate emulator's CA certificate (PEM file).
    pub fn fortigate_ca(&self) -> &Path {
        self.fortigate_ca.as_deref().expect("Env serves HTTPS")
    }

    /// The MISP emulator's CA certificate (PEM file).
    pub fn misp_ca(&self) -> &Path {
        self.misp_ca.as_deref().expect("Env serves HTTPS")
    }

    /// Replaces `from` with `to` in the base config (e.g. `("sync_interval = \"0s\"", "sync_interval = \"1s\"")`).
    pub fn tweak(&mut self, from: &str, to: &str) -> &mut Self {
        self.tweaks.push((from.to_string(), to.to_string()));
        self
    }

    /// The config text: the harness's template with this environment's servers, ports and state path, then the
    /// tweaks, then `extra`.
    pub fn config_text(&self) -> String {
        let servers = Endpoints {
            fortigate: &self.fortigate,
            fortigate_ca: self.fortigate_ca.as_deref(),
            misp: &self.misp,
            misp_ca: self.misp_ca.as_deref(),
        };
        let listen = Listen {
            udp: self.udp,
            tcp: Some(self.tcp),
            metrics: self.metrics,
            housekeeping_metrics: Some(self.hk_metrics),
        };
        let mut text = ConfigDoc::template().endpoints(&servers, &listen, &self.state).render();
        for (from, to) in &self.tweaks {
            assert!(text.contains(from.as_str()), "tweak {from:?} does not apply to the base config");
            text = text.replacen(from.as_str(), to, 1);
        }
        text.push('\n');
        text.push_str(&self.extra);
        text
    }

    /// Writes the config (mode 0600) and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        harness::write_private(&path, &self.config_text()).unwrap_or_else(|e| panic!("{e:#}"));
        path
    }

    /// Starts `integration --config <config>` (the daemon) and waits until it serves /healthz.
    pub async fn integration(&self) -> Daemon {
        let config = self.write_config();
        let daemon = Daemon::spawn("integration", &["--config", config.to_str().unwrap()], self.dir.path());
        daemon.wait_healthy(self.metrics).await;
        daemon
    }

    /// Runs `integration --config <config> ARGS...` to completion.
    pub fn integration_cmd(&self, args: &[&str]) -> std::process::Output {
        let config = self.write_config();
        binaries().command("integration").arg("--config").arg(&config).args(args).output().unwrap()
    }

    /// Runs `housekeeping --config <config> ARGS...` to completion.
    pub fn housekeeping_cmd(&self, args: &[&str]) -> std::process::Output {
        let config = self.write_config();
        binaries().command("housekeeping").arg("--config").arg(&config).args(args).output().unwrap()
    }

    /// Scrapes one sample of the integration daemon's metrics (0 if absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        scrape(self.metrics, sample).await
    }
}

/// A daemon child process ([`harness::Daemon`]: `child`, `log`, `log_text`, `sigterm`, `wait_exit` ...), with
/// the tests' panicking waits; killed when dropped, its log printed if the test is failing.
pub struct Daemon(pub harness::Daemon);

impl Deref for Daemon {
    type Target = harness::Daemon;
    fn deref(&self) -> &harness::Daemon {
        &self.0
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut harness::Daemon {
        &mut self.0
    }
}

impl Daemon {
    /// Starts the built binary `name` with `args`; its stderr goes to a new log file in `dir`.
    pub fn spawn(name: &str, args: &[&str], dir: &Path) -> Daemon {
        let log = dir.join(format!("{name}-{}.log", Instant::now().elapsed().as_nanos() ^ rand_suffix()));
        Daemon(harness::Daemon::spawn(&bin(name), args, log).unwrap_or_else(|e| panic!("cannot start {name}: {e:#}")))
    }

    /// Waits (30 s at most) until `/healthz` answers 200; panics with the log if it does not or the daemon exits.
    pub async fn wait_healthy(&self, metrics: SocketAddr) {
        if let Err(error) = self.0.wait_healthy(metrics, HEALTHY_WITHIN).await {
            panic!("daemon not healthy: {error:#}");
        }
    }

    pub fn sigkill(&mut self) {
        self.0.kill();
    }

    /// SIGTERM, then the contract's promise: exit 0 within 10 s. Panics with the log otherwise; returns how long
    /// the exit took.
    pub fn stop_cleanly(&mut self) -> Duration {
        let asked = Instant::now();
        let status = self.0.stop(Duration::from_secs(10));
        let took = asked.elapsed();
        let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM; log:\n{}", self.log_text()));
        assert_eq!(status.code(), Some(0), "clean exit after SIGTERM ({took:?}); log:\n{}", self.log_text());
        took
    }

    pub fn is_running(&mut self) -> bool {
        !self.0.has_exited()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.0.kill();
        if std::thread::panicking() {
            eprintln!("---- daemon log {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

fn rand_suffix() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u128
}

/// Scrapes `sample` from a metrics endpoint: the sum of the series it selects (a name and the labels that must
/// match, in any order; `fortimisp_blocks_total{outcome="blocked"}` sums every target), 0 if none.
pub async fn scrape(metrics: SocketAddr, sample: &str) -> f64 {
    harness::sample_sum(&harness::metrics_text(metrics).await, sample)
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real FortiGate forward-traffic log line (from the corpus: elastic-beats.default.log line 5) with the
/// addresses, policy id and action replaced, from the corpus line's device ([`Device::corpus`]); a fleet test
/// names the device with [`Device::traffic_line`].
pub fn traffic_line(src: IpAddr, dst: IpAddr, policyid: u32, action: &str) -> String {
    Device::corpus().traffic_line(src, dst, policyid, action)
}

/// Sends each line as one UDP datagram.
pub fn send_udp(to: SocketAddr, lines: &[String]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for line in lines {
        socket.send_to(line.as_bytes(), to).unwrap();
    }
}

/// Sends lines over one TCP connection, RFC 6587 octet counting (`octets = true`) or LF-delimited.
pub fn send_tcp(to: SocketAddr, lines: &[String], octets: bool) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(to).unwrap();
    let mut buf = Vec::new();
    for line in lines {
        if octets {
            buf.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
        } else {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
    }
    stream.write_all(&buf).unwrap();
    stream.flush().unwrap();
}

/// The members of a group on the emulated FortiGate (empty if the group does not exist).
pub fn members(env: &Env, group: &str) -> Vec<String> {
    env.fortigate.members(group).unwrap_or_default()
}

// ---- housekeeping helpers ----

/// The comment fortimisp writes on an object it creates (`fortimisp <time> misp-event=<id> ip-src`).
pub fn own_comment(created_at: chrono::DateTime<chrono::Utc>, event_id: &str) -> String {
    fortimisp_core::fortigate::Comment::new(created_at, event_id, "ip-src").as_str().to_string()
}

/// Seeds an address object fortimisp owns for `ip` (`misp-<ip>`, our comment marker), without any group
/// membership; returns its name.
pub fn seed_own(env: &Env, ip: IpAddr, created_at: chrono::DateTime<chrono::Utc>, event_id: &str) -> String {
    let name = format!("misp-{ip}");
    let comment = own_comment(created_at, event_id);
    match ip {
        IpAddr::V4(v4) => env.fortigate.seed_address(&name, &format!("{v4}/32"), &comment),
        IpAddr::V6(v6) => env.fortigate.seed_address6(&name, &format!("{v6}/128"), &comment),
    }
    name
}

/// Seeds the block groups as fortimisp lays them out: `MISP_BLOCK` / `MISP_BLOCK6` with the placeholder member
/// (`misp-placeholder`, `misp-placeholder6`), then `members` in chunks of `per_group`, overflowing into `NAME-2`,
/// `NAME-3`, ... nested in the base group. Members are not checked (seed them with [`seed_own`] or by hand).
pub fn seed_block_groups(env: &Env, v4: &[String], v6: &[String], per_group: usize) {
    use fortimisp_testkit::fortigate::Table;
    env.fortigate.seed_address("misp-placeholder", "192.0.2.255/32", "fortimisp placeholder");
    env.fortigate.seed_address6("misp-placeholder6", "2001:db8::ffff:ffff/128", "fortimisp placeholder");
    for (table, base, placeholder, members) in [
        (Table::Addrgrp, "MISP_BLOCK", "misp-placeholder", v4),
        (Table::Addrgrp6, "MISP_BLOCK6", "misp-placeholder6", v6),
    ] {
        let chunks: Vec<&[String]> = members.chunks(per_group.max(1)).collect();
        let mut base_members: Vec<String> = vec![placeholder.to_string()];
        for (i, chunk) in chunks.iter().enumerate().skip(1) {
            let name = format!("{base}-{}", i + 1);
            let mut m: Vec<&str> = vec![placeholder];
            m.extend(chunk.iter().map(String::as_str));
            env.fortigate.seed_group(table, &name, &m, &format!("fortimisp overflow of {base}"));
            base_members.push(name);
        }
        if let Some(first) = chunks.first() {
            base_members.extend(first.iter().cloned());
        }
        let refs: Vec<&str> = base_members.iter().map(String::as_str).collect();
        env.fortigate.seed_group(table, base, &refs, "fortimisp block group");
    }
}

/// Every member of the block groups of one family (`MISP_BLOCK` or `MISP_BLOCK6` and their nested overflow
/// groups), placeholders and nested groups left out.
pub fn block_members(env: &Env, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in members(env, base) {
        if m.starts_with(&format!("{base}-")) {
            out.extend(members(env, &m));
        } else {
            out.push(m);
        }
    }
    out.retain(|m| !m.ends_with("placeholder") && !m.ends_with("placeholder6"));
    out.sort();
    out
}

impl Env {
    /// Starts `housekeeping --config <config> ARGS...` as a daemon and waits until it serves /healthz on
    /// `hk_metrics`.
    pub async fn housekeeping(&self, args: &[&str]) -> Daemon {
        let config = self.write_config();
        let mut all = vec!["--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let daemon = Daemon::spawn("housekeeping", &all, self.dir.path());
        daemon.wait_healthy(self.hk_metrics).await;
        daemon
    }

    /// [`Env::housekeeping_cmd`] from async code (the emulators keep running on the other worker threads).
    pub fn housekeeping_run(&self, args: &[&str]) -> std::process::Output {
        tokio::task::block_in_place(|| self.housekeeping_cmd(args))
    }

    /// Scrapes one sample of the housekeeping daemon's metrics (0 if absent).
    pub async fn hk_metric(&self, sample: &str) -> f64 {
        scrape(self.hk_metrics, sample).await
    }

    /// Rows of the journal (`state.path`), each column as text (NULL as ""): for audit-trail checks.
    pub fn journal_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let conn = rusqlite::Connection::open_with_flags(&self.state, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the journal file exists");
        let mut stmt = conn.prepare(sql).expect("valid SQL");
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..n)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => String::new(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Real(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                        })
                    })
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .expect("query runs");
        rows.map(|r| r.expect("row reads")).collect()
    }
}

/// A FortiOS mkey as it appears in a request path (percent-encoded, no safe characters but `-_.~`).
pub fn encode_mkey(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Requests that changed (or tried to change) something on the FortiGate: every route but GETs.
pub fn fortigate_writes(env: &Env) -> u64 {
    env.fortigate.route_counts().iter().filter(|(route, _)| !route.starts_with("GET ")).map(|(_, n)| n).sum()
}

/// A fresh handle on the daemon's journal (`state.path`); its `pending()` reads the file, so it sees what the
/// daemon wrote.
pub fn journal(env: &Env) -> fortimisp_core::journal::Journal {
    fortimisp_core::journal::Journal::open(&env.state).expect("the e2e journal opens")
}

/// The IPs with a block pending in the journal, read from the file.
pub fn pending_blocks(env: &Env) -> Vec<IpAddr> {
    let rows = env.journal_rows("SELECT ip FROM actions WHERE kind = 'block' AND state = 'pending'");
    let mut ips: Vec<IpAddr> = rows.iter().map(|r| r[0].parse().expect("an IP in the journal")).collect();
    ips.sort();
    ips
}

/// The latest `limit` decisions in the journal, newest first, read from the file; none if there is no file yet.
pub fn recent_decisions(env: &Env, limit: usize) -> Vec<fortimisp_core::journal::Decision> {
    if !env.state.exists() {
        return Vec::new();
    }
    let sql =
        format!("SELECT at, ip, verdict, detail, event_id, rule, target FROM decisions ORDER BY id DESC LIMIT {limit}");
    env.journal_rows(&sql)
        .into_iter()
        .map(|r| fortimisp_core::journal::Decision {
            at: r[0].parse().expect("an RFC 3339 time in the journal"),
            ip: r[1].parse().expect("an IP in the journal"),
            verdict: r[2].clone(),
            detail: r[3].clone(),
            event_id: r[4].parse().ok(),
            rule: r[5].parse().ok(),
            target: Some(r[6].clone()).filter(|t| !t.is_empty()),
        })
        .collect()
}

/// Sends lines over TCP (LF framing), tolerating a peer that closes the connection (e.g. a refused sender).
pub fn send_tcp_lossy(to: SocketAddr, lines: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(to)?;
    for line in lines {
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\n")?;
    }
    stream.flush()
}

/// Sends lines over TLS (RFC 6587 octet counting), trusting only `ca_pem`, then closes the connection cleanly.
pub async fn send_tls(to: SocketAddr, ca_pem: &str, lines: &[String]) {
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("test CA PEM parses")).expect("test CA is a valid root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(to).await.expect("TLS listener accepts");
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake with the daemon");
    let mut buf = Vec::new();
    for line in lines {
        buf.extend_from_slice(format!("{} {line}", line.len()).as_bytes());
    }
    tls.write_all(&buf).await.unwrap();
    tls.shutdown().await.unwrap();
}

impl Env {
    /// Runs `integration --config <config> ARGS...`; `None` (and the process killed) if it has not exited within
    /// `timeout`. Output goes through files, so a chatty process cannot block on a full pipe.
    pub fn integration_cmd_within(&self, args: &[&str], timeout: Duration) -> Option<std::process::Output> {
        let config = self.write_config();
        let n = rand_suffix();
        let (out_path, err_path) =
            (self.dir.path().join(format!("cmd-{n}.out")), self.dir.path().join(format!("cmd-{n}.err")));
        let mut child = binaries()
            .command("integration")
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let status = fortimisp_testkit::child::wait_timeout(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status.map(|status| std::process::Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        })
    }
}

/// A PostgreSQL database of the test's own on the machine's server (`$FORTIMISP_TEST_POSTGRES_URL`, default the
/// CI's `postgres://postgres@127.0.0.1:5432/postgres`), dropped at the end.
pub struct Database {
    admin: String,
    pub name: String,
    pub url: String,
}

impl Database {
    /// `None`, after a loud `SKIP` line naming `test`, when there is no PostgreSQL, unless
    /// `FORTIMISP_REQUIRE_POSTGRES=1` (then it panics).
    pub fn create(test: &str) -> Option<Database> {
        let admin = std::env::var("FORTIMISP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("fortimisp_test_{:016x}", (std::process::id() as u128 * 7919 + rand_suffix()) as u64);
        let created = admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        if let Err(error) = created {
            let required = std::env::var("FORTIMISP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(!required, "FORTIMISP_REQUIRE_POSTGRES=1 but PostgreSQL is not usable at {admin}: {error}");
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP {test}: no PostgreSQL at {admin} ({error})");
            return None;
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        Some(Database { admin, name, url })
    }

    /// Runs `sql` in this database and returns every row, each column as text (NULL as "").
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        query_text(&self.url, sql)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = admin_sql(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Runs one statement on the database of `url`, on a thread of its own (the synchronous client starts a runtime,
/// which must not happen inside the test's).
pub fn admin_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).map_err(|e| e.to_string())?;
        client.batch_execute(&sql).map_err(|e| e.to_string())
    })
    .join()
    .expect("the helper thread does not panic")
}

/// Every row `sql` returns from the database of `url`, each column cast to text by the query's caller (`::text`)
/// or read as text; NULL as "". Panics when the query fails.
pub fn query_text(url: &str, sql: &str) -> Vec<Vec<String>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
        let rows = client.simple_query(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).unwrap_or("").to_owned()).collect())
                }
                _ => None,
            })
            .collect()
    })
    .join()
    .expect("the helper thread does not panic")
}

/// Address objects `fortigate` created with success, per object name: 1 each when nothing was duplicated. The
/// daemon's own placeholders (created at start, so a block group is never empty) are no blocks and are left out.
pub fn objects_created(fortigate: &FortiGateEmulator) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in fortigate.requests() {
        if r.route == "POST /api/v2/cmdb/firewall/address" && r.status.is_some_and(|s| (200..300).contains(&s)) {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let name = body["name"].as_str().unwrap_or("?").to_string();
            if !name.ends_with("placeholder") {
                *out.entry(name).or_default() += 1;
            }
        }
    }
    out
}
