//! The harness: one way to run the real daemons against the emulators, shared by the end-to-end tests
//! (`tests/lib.rs`, its `Env`), the lab ([`crate::lab`]) and the load generator ([`crate::loadgen`]).
//!
//! Pieces, in the order a user needs them:
//! - [`Servers`]: the FortiGate and MISP emulators on loopback, each over HTTPS with its own throw-away CA (the CA
//!   certificates are written to the work directory as `fortigate-ca.pem` and `misp-ca.pem`) or over plain HTTP.
//! - [`Listen`]: free loopback addresses for the daemon's syslog listeners and both metrics servers.
//! - [`ConfigDoc`]: a config in the production format. The base is [`TEMPLATE`] or a file of the user's (the lab's
//!   `config/lab.toml`, or a production config given to `lab --config`); [`ConfigDoc::endpoints`] writes in the
//!   servers' URLs, keys and CA files (replacing `api_key_file` too), the listen addresses and the state path, and
//!   typed setters change the keys a user varies. Edits keep the document's key order, layout and comments, so a
//!   rendered template is plain text a test can still read and edit.
//! - [`Binaries`]: where `integration` and `housekeeping` are.
//! - [`Daemon`]: one daemon as a child process, its stderr in a log file; waited on until ready (failing early,
//!   with the log, if it exits), stopped with SIGTERM and a bounded wait ([`crate::child`]); killed when dropped,
//!   so an error or a panic never leaves one behind.
//! - Every binary runs without the [`CREDENTIAL_ENV`] variables: they win over the config's keys (and the threat
//!   feed's password), so an operator's real secret in the environment would otherwise reach the emulators in place
//!   of the one the harness wrote.
//!
//! Design decision: the daemons are the shipped binaries and the config is the production format, so nothing here
//! is a second code path. What differs between the users is data (which base document, which overrides), never
//! how the servers, the config or the daemons are started.

use std::ffi::OsStr;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{
    Backend, Check, Contents, Scope, TriggerRule, UpdateMethod, ENV_FEED_PASSWORD, ENV_FORTIGATE_API_KEY,
    ENV_MISP_API_KEY,
};
use ipnet::IpNet;
use toml_edit::{value, DocumentMut, Item, Table};

use crate::fleet::Fleet;
use crate::fortigate::{EmulatorConfig, FortiGateEmulator};
use crate::misp::{MispEmulator, Seed};
use crate::tls::{server_config, TestCa};

/// The environment variables that override the config's API keys and the threat feed's password. The harness
/// removes them from every binary it starts ([`Binaries::command`], [`Daemon::spawn`]) and reads configs without
/// them ([`env_without_credentials`]): the secrets are the ones [`ConfigDoc::endpoints`] and
/// [`ConfigDoc::feed_password`] wrote.
pub const CREDENTIAL_ENV: [&str; 3] = [ENV_MISP_API_KEY, ENV_FORTIGATE_API_KEY, ENV_FEED_PASSWORD];

/// Whether `name` overrides a credential: one of [`CREDENTIAL_ENV`], or a fleet target's own
/// `FORTIMISP_FORTIGATE_<NAME>_API_KEY` ([`fortimisp_core::config::env_api_key`]).
pub fn is_credential_env(name: &str) -> bool {
    CREDENTIAL_ENV.contains(&name)
        || name.strip_prefix("FORTIMISP_FORTIGATE_").is_some_and(|rest| rest.ends_with("_API_KEY"))
}

/// The process environment as the harness's binaries see it: without the credential variables
/// ([`is_credential_env`]). For `Config::load_with_env`.
pub fn env_without_credentials(name: &str) -> Option<String> {
    if is_credential_env(name) {
        None
    } else {
        std::env::var(name).ok()
    }
}

/// File name of the FortiGate emulator's CA certificate in the work directory (`fortigate.ca_file`).
pub const FORTIGATE_CA: &str = "fortigate-ca.pem";
/// File name of the MISP emulator's CA certificate in the work directory (`misp.ca_file`).
pub const MISP_CA: &str = "misp-ca.pem";

// ---- servers ----------------------------------------------------------------------------------------------

/// How to start the emulators.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// HTTPS with a throw-away CA per emulator; plain HTTP otherwise.
    pub tls: bool,
    pub fortigate: EmulatorConfig,
    /// The key MISP accepts; `None`: the emulator's default.
    pub misp_key: Option<String>,
    /// Events, attributes and warninglists MISP holds at start.
    pub misp_seed: Option<Seed>,
}

/// Both emulators, serving until dropped.
pub struct Servers {
    pub fortigate: FortiGateEmulator,
    pub misp: MispEmulator,
    /// The FortiGate's CA certificate (HTTPS only).
    pub fortigate_ca: Option<PathBuf>,
    /// MISP's CA certificate (HTTPS only).
    pub misp_ca: Option<PathBuf>,
}

impl Servers {
    /// Starts the FortiGate emulator, then MISP, on ephemeral loopback ports; with `tls`, writes their CA
    /// certificates into `dir` ([`FORTIGATE_CA`], [`MISP_CA`]).
    pub async fn start(opts: ServerOptions, dir: &Path) -> Result<Servers> {
        let (fortigate, fortigate_ca) = if opts.tls {
            let ca = TestCa::new();
            let path = dir.join(FORTIGATE_CA);
            ca.write_ca_file(&path).with_context(|| format!("cannot write {}", path.display()))?;
            let fortigate = FortiGateEmulator::start_tls(opts.fortigate, server_config(&ca.issue_server_cert())).await;
            (fortigate.context("cannot start the FortiGate emulator")?, Some(path))
        } else {
            (FortiGateEmulator::start(opts.fortigate).await.context("cannot start the FortiGate emulator")?, None)
        };
        let mut builder = MispEmulator::builder();
        if opts.tls {
            builder = builder.tls();
        }
        if let Some(key) = opts.misp_key {
            builder = builder.key(key);
        }
        if let Some(seed) = opts.misp_seed {
            builder = builder.seed(seed);
        }
        let misp = builder.start().await.context("cannot start the MISP emulator")?;
        let misp_ca = match misp.ca_pem() {
            Some(pem) => {
                let path = dir.join(MISP_CA);
                std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        Ok(Servers { fortigate, misp, fortigate_ca, misp_ca })
    }

    /// What a config needs to know about them ([`ConfigDoc::endpoints`]).
    pub fn endpoints(&self) -> Endpoints<'_> {
        Endpoints {
            fortigate: &self.fortigate,
            fortigate_ca: self.fortigate_ca.as_deref(),
            misp: &self.misp,
            misp_ca: self.misp_ca.as_deref(),
        }
    }
}

/// The running servers as a config names them: URL and key read when the config is written (a test may have
/// changed the key meanwhile), CA file if they serve HTTPS.
#[derive(Clone, Copy)]
pub struct Endpoints<'a> {
    pub fortigate: &'a FortiGateEmulator,
    pub fortigate_ca: Option<&'a Path>,
    pub misp: &'a MispEmulator,
    pub misp_ca: Option<&'a Path>,
}

// ---- listen addresses -------------------------------------------------------------------------------------

/// Where the daemons listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// `syslog.udp`.
    pub udp: SocketAddr,
    /// `syslog.tcp`; `None`: off.
    pub tcp: Option<SocketAddr>,
    /// `metrics.listen` (integration).
    pub metrics: SocketAddr,
    /// `metrics.housekeeping_listen`; `None`: the key is left out.
    pub housekeeping_metrics: Option<SocketAddr>,
}

impl Listen {
    /// Free loopback ports for all four ([`crate::free_port`]).
    pub fn free() -> Listen {
        let port = || SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
        Listen { udp: port(), tcp: Some(port()), metrics: port(), housekeeping_metrics: Some(port()) }
    }
}

// ---- config -----------------------------------------------------------------------------------------------

/// The base config of the e2e tests and loadgen, in the production format (`config/config.toml`'s keys). The
/// endpoints are placeholders for [`ConfigDoc::endpoints`]; there is no `[[trigger]]`, each user adds its own.
/// The e2e tests edit the rendered text by exact lines (`Env::tweak`), so change a line here only together with
/// the tests that name it.
pub const TEMPLATE: &str = r#"[misp]
url = "https://127.0.0.1:1"
api_key = "placeholder"
ca_file = "misp-ca.pem"
timeout = "5s"
sync_interval = "0s"
lookup_cache_ttl = "10m"
feed_update_interval = "12h"
min_prefix_v4 = 16
min_prefix_v6 = 48

[fortigate]
url = "https://127.0.0.1:1"
api_key = "placeholder"
ca_file = "fortigate-ca.pem"
vdom = "root"
requests_per_second = 200
timeout = "5s"

[syslog]
udp = "127.0.0.1:1"
tcp = "127.0.0.1:1"
allowed_senders = []

[blocking]
never_block = ["198.51.100.250"]
dry_run = false
max_blocks_per_minute = 600

[housekeeping]
max_age = "90d"
interval = "1h"
unblock_revoked = true
adopt_legacy = false
max_unblock_fraction = 0.5

[state]
path = "state.db"

[metrics]
listen = "127.0.0.1:1"
housekeeping_listen = "127.0.0.1:1"

[log]
level = "info,fortimisp_core=debug"
"#;

/// A config document: a base (the [`TEMPLATE`] or a user's file) and the harness's edits to it.
#[derive(Debug, Clone)]
pub struct ConfigDoc {
    doc: DocumentMut,
}

impl ConfigDoc {
    /// The [`TEMPLATE`].
    pub fn template() -> ConfigDoc {
        ConfigDoc::parse(TEMPLATE).expect("invariant: the template is valid TOML")
    }

    /// A user's config text (TOML; the daemons validate it when they load it).
    pub fn parse(text: &str) -> Result<ConfigDoc> {
        Ok(ConfigDoc { doc: text.parse::<DocumentMut>().context("not a TOML document")? })
    }

    /// Writes in what the harness decides: both servers' URL, key and CA file (`ca_file` removed for plain HTTP;
    /// `api_key_file` removed, so a production config's key files are never read), the listen addresses
    /// (`syslog.tls` turned off where the base sets it: the harness has no certificate for it) and `state.path`.
    /// Everything else is left as the base has it.
    pub fn endpoints(&mut self, servers: &Endpoints<'_>, listen: &Listen, state: &Path) -> &mut Self {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let misp = self.section("misp");
        misp["url"] = value(servers.misp.url());
        misp.remove("api_key_file");
        misp["api_key"] = value(servers.misp.key());
        match servers.misp_ca {
            Some(ca) => misp["ca_file"] = value(path(ca)),
            None => drop(misp.remove("ca_file")),
        }
        let fortigate = self.section("fortigate");
        fortigate["url"] = value(servers.fortigate.url());
        fortigate.remove("api_key_file");
        fortigate["api_key"] = value(servers.fortigate.token());
        match servers.fortigate_ca {
            Some(ca) => fortigate["ca_file"] = value(path(ca)),
            None => drop(fortigate.remove("ca_file")),
        }
        let syslog = self.section("syslog");
        syslog["udp"] = value(listen.udp.to_string());
        syslog["tcp"] = value(listen.tcp.map(|a| a.to_string()).unwrap_or_default());
        if syslog.contains_key("tls") {
            syslog["tls"] = value("");
        }
        let metrics = self.section("metrics");
        metrics["listen"] = value(listen.metrics.to_string());
        match listen.housekeeping_metrics {
            Some(addr) => metrics["housekeeping_listen"] = value(addr.to_string()),
            None => drop(metrics.remove("housekeeping_listen")),
        }
        self.section("state")["path"] = value(path(state));
        self
    }

    /// `state.url`: the journal in PostgreSQL (`state.path` stays, unused).
    pub fn state_url(&mut self, url: &str) -> &mut Self {
        self.section("state")["url"] = value(url);
        self
    }

    /// `misp.timeout` and `fortigate.timeout`.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.section("misp")["timeout"] = value(duration(timeout));
        self.section("fortigate")["timeout"] = value(duration(timeout));
        self
    }

    /// `misp.sync_interval` (zero: no mirror, on-demand lookups only).
    pub fn sync_interval(&mut self, interval: Duration) -> &mut Self {
        self.section("misp")["sync_interval"] = value(duration(interval));
        self
    }

    /// `misp.enforce_warninglist`.
    pub fn enforce_warninglist(&mut self, on: bool) -> &mut Self {
        self.section("misp")["enforce_warninglist"] = value(on);
        self
    }

    /// `fortigate.requests_per_second`.
    pub fn requests_per_second(&mut self, n: u32) -> &mut Self {
        self.section("fortigate")["requests_per_second"] = value(i64::from(n));
        self
    }

    /// `syslog.recv_buffer_bytes`.
    pub fn recv_buffer_bytes(&mut self, bytes: usize) -> &mut Self {
        self.section("syslog")["recv_buffer_bytes"] = value(i64::try_from(bytes).unwrap_or(i64::MAX));
        self
    }

    /// `blocking.max_blocks_per_minute`.
    pub fn max_blocks_per_minute(&mut self, n: u32) -> &mut Self {
        self.section("blocking")["max_blocks_per_minute"] = value(i64::from(n));
        self
    }

    /// `log.level`.
    pub fn log_level(&mut self, level: &str) -> &mut Self {
        self.section("log")["level"] = value(level);
        self
    }

    /// `fortigate.backend`.
    pub fn backend(&mut self, backend: Backend) -> &mut Self {
        self.section("fortigate")["backend"] = value(backend.to_string());
        self
    }

    /// `feed.update`.
    pub fn feed_update(&mut self, methods: &[UpdateMethod]) -> &mut Self {
        let names = methods.iter().map(|m| match m {
            UpdateMethod::Pull => "pull",
            UpdateMethod::Push => "push",
        });
        self.section("feed")["update"] = value(names.collect::<toml_edit::Array>());
        self
    }

    /// The threat-feed listener: `feed.listen`, `feed.tls_cert`, `feed.tls_key` and `feed.url`
    /// (`https://<listen>`). `None`: no listener (`listen = ""`, push only; the other three keys removed).
    pub fn feed_listener(&mut self, listener: Option<(SocketAddr, &Path, &Path)>) -> &mut Self {
        let feed = self.section("feed");
        match listener {
            Some((listen, cert, key)) => {
                feed["listen"] = value(listen.to_string());
                feed["tls_cert"] = value(cert.to_string_lossy().into_owned());
                feed["tls_key"] = value(key.to_string_lossy().into_owned());
                feed["url"] = value(format!("https://{listen}"));
            }
            None => {
                feed["listen"] = value("");
                for key in ["tls_cert", "tls_key", "url"] {
                    feed.remove(key);
                }
            }
        }
        self
    }

    /// `feed.password`, with `feed.password_file` removed (so a production config's file is never read).
    pub fn feed_password(&mut self, password: &str) -> &mut Self {
        let feed = self.section("feed");
        feed.remove("password_file");
        feed["password"] = value(password);
        self
    }

    /// `feed.allowed_clients`.
    pub fn feed_allowed_clients(&mut self, clients: &[IpNet]) -> &mut Self {
        let clients = clients.iter().map(|c| c.to_string());
        self.section("feed")["allowed_clients"] = value(clients.collect::<toml_edit::Array>());
        self
    }

    /// `feed.status_interval`.
    pub fn feed_status_interval(&mut self, interval: Duration) -> &mut Self {
        self.section("feed")["status_interval"] = value(duration(interval));
        self
    }

    /// Writes the `[feed]` keys of `keys` (the threat-feed backend; set [`backend`](Self::backend) too) through the
    /// setters above. Keys `keys` does not name keep what the base has, or their defaults.
    pub fn feed(&mut self, keys: &FeedKeys) -> &mut Self {
        self.feed_listener(keys.listen.map(|listen| (listen, keys.tls_cert.as_path(), keys.tls_key.as_path())))
            .feed_password(&keys.password)
            .feed_update(&keys.update)
            .feed_status_interval(keys.status_interval);
        let feed = self.section("feed");
        feed["contents"] = value(keys.contents.to_string());
        feed["max_entries"] = value(i64::from(keys.max_entries));
        feed["max_feeds"] = value(i64::from(keys.max_feeds));
        self
    }

    /// Turns the `[fortigate]` table (or the first `[[fortigate]]` table of the base) into one `[[fortigate]]`
    /// table per target of `fleet`, in its place: each keeps the base's other keys (backend, group names, rate ...)
    /// and gets the target's `name`, `url`, `api_key` (`api_key_file` removed), `ca_file` and
    /// `devices = [devid, devname]`; `vdoms` and `urls` are removed (every VDOM, one URL). Call it after
    /// [`endpoints`](Self::endpoints), which writes the single table it starts from.
    pub fn fleet(&mut self, fleet: &Fleet) -> &mut Self {
        let base = match self.doc.get("fortigate") {
            Some(Item::Table(t)) => t.clone(),
            Some(Item::ArrayOfTables(a)) => a.get(0).cloned().unwrap_or_default(),
            _ => Table::new(),
        };
        let position = base.position();
        let mut tables = toml_edit::ArrayOfTables::new();
        for target in &fleet.targets {
            // `name` first, as an operator writes it; the other keys as the base has them (with their comments).
            let mut t = Table::new();
            t["name"] = value(target.name.as_str());
            for (key, item) in base.iter().filter_map(|(k, _)| base.get_key_value(k)).filter(|(k, _)| k.get() != "name")
            {
                t.insert_formatted(key, item.clone());
            }
            t["url"] = value(target.fortigate.url());
            t.remove("api_key_file");
            t["api_key"] = value(target.fortigate.token());
            t["ca_file"] = value(fleet.fortigate_ca.to_string_lossy().into_owned());
            t["devices"] = value(toml_edit::Array::from_iter([&target.device.devid, &target.device.devname]));
            t.remove("vdoms");
            t.remove("urls");
            if let Some(p) = position {
                t.set_position(p);
            }
            tables.push(t);
        }
        if let Some(first) = tables.get_mut(0) {
            *first.decor_mut() = base.decor().clone();
        }
        self.doc.remove("fortigate");
        self.doc.insert("fortigate", Item::ArrayOfTables(tables));
        self
    }

    /// `blocking.scope`.
    pub fn scope(&mut self, scope: Scope) -> &mut Self {
        self.section("blocking")["scope"] = value(scope.to_string());
        self
    }

    /// Replaces every `[[trigger]]` with `rules`.
    pub fn triggers(&mut self, rules: &[TriggerRule]) -> &mut Self {
        let mut tables = toml_edit::ArrayOfTables::new();
        for rule in rules {
            let mut t = Table::new();
            if let Some(id) = rule.policy_id {
                t["policy_id"] = value(i64::try_from(id).unwrap_or(i64::MAX));
            }
            if let Some(action) = &rule.action {
                t["action"] = value(action.values().iter().map(String::as_str).collect::<toml_edit::Array>());
            }
            for (key, v) in [("type", &rule.log_type), ("subtype", &rule.subtype), ("srcintf", &rule.srcintf)] {
                if let Some(v) = v {
                    t[key] = value(v.as_str());
                }
            }
            t["check"] = value(match rule.check {
                Check::Src => "src",
                Check::Dst => "dst",
                Check::Both => "both",
            });
            tables.push(t);
        }
        self.doc.remove("trigger");
        self.doc.insert("trigger", Item::ArrayOfTables(tables));
        self
    }

    /// The document as TOML text.
    pub fn render(&self) -> String {
        self.doc.to_string()
    }

    /// A top-level table, created (at the end) when the base lacks it.
    fn section(&mut self, name: &str) -> &mut Table {
        self.doc
            .entry(name)
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("[{name}] of the config is a table"))
    }
}

/// The `[feed]` keys [`ConfigDoc::feed`] writes.
#[derive(Debug, Clone)]
pub struct FeedKeys {
    /// `listen`; `None`: `""` (push only).
    pub listen: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Written inline (`password`); any `password_file` of the base is removed.
    pub password: String,
    pub update: Vec<UpdateMethod>,
    pub contents: Contents,
    /// 0: the FortiGate's limit.
    pub max_entries: u32,
    pub max_feeds: u32,
    pub status_interval: Duration,
}

/// A duration as the config writes it (`"10s"`, `"5m"`, `"0s"`).
fn duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Writes a config readable by its owner only (mode 0600), as the daemons expect of a file holding keys.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

// ---- binaries ---------------------------------------------------------------------------------------------

/// The directory holding the daemon binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    pub fn new(dir: impl Into<PathBuf>) -> Binaries {
        Binaries { dir: dir.into() }
    }

    /// `$FORTIMISP_BIN_DIR`, else the directory of the running executable, or the one above it for a test
    /// executable (`target/<profile>/deps`): where cargo puts the daemons of the same build.
    pub fn locate() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("FORTIMISP_BIN_DIR") {
            return Ok(Binaries::new(dir));
        }
        let exe = std::env::current_exe().context("cannot find the running executable")?;
        let mut dir = exe.parent().context("the running executable has no directory")?;
        if dir.file_name() == Some(OsStr::new("deps")) {
            dir = dir.parent().context("deps/ has no parent")?;
        }
        Ok(Binaries::new(dir))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Fails, saying how to build them, unless every binary of `names` is there.
    pub fn require(&self, names: &[&str]) -> Result<()> {
        for name in names {
            if !self.path(name).is_file() {
                bail!(
                    "{name} not found in {}: build it (`cargo build -p {name}`), or set FORTIMISP_BIN_DIR",
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    /// A command for `name` as the harness runs every binary: no stdin, `NO_COLOR` (logs are read as text), no
    /// [`CREDENTIAL_ENV`].
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.path(name));
        cmd.stdin(Stdio::null()).env("NO_COLOR", "1");
        without_credentials(&mut cmd);
        cmd
    }
}

/// Removes the credential variables ([`is_credential_env`]: [`CREDENTIAL_ENV`] and every target's own) from what
/// `cmd` inherits.
fn without_credentials(cmd: &mut Command) {
    for name in CREDENTIAL_ENV {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_credential_env) {
            cmd.env_remove(name);
        }
    }
}

// ---- daemons ----------------------------------------------------------------------------------------------

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// How many lines of the log an error quotes.
const LOG_TAIL: usize = 30;

/// A daemon child process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// The binary's file name, for messages.
    pub name: String,
    /// Its stderr (the daemons log there).
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `binary ARGS...` with stdout discarded, stderr written to `log` (created or truncated), and no
    /// [`CREDENTIAL_ENV`].
    pub fn spawn<S: AsRef<OsStr>>(binary: &Path, args: &[S], log: PathBuf) -> Result<Daemon> {
        let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).env("NO_COLOR", "1");
        without_credentials(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let name = binary.file_name().map_or_else(|| "daemon".into(), |n| n.to_string_lossy().into_owned());
        Ok(Daemon { child, name, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }

    /// Whether the process has exited, without collecting its status ([`crate::child::has_exited`]).
    pub fn has_exited(&self) -> bool {
        crate::child::has_exited(&self.child)
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `check` until it is true, for `timeout` at most; fails early, quoting the log, if the daemon exits.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if check().await {
                return Ok(());
            }
            if self.has_exited() {
                bail!("{} exited while waiting for {what}; its log:\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; {} log:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `/healthz` on `metrics` answers 200 (the daemon has started), for `timeout` at most.
    pub async fn wait_healthy(&self, metrics: SocketAddr, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::new();
        let url = format!("http://{metrics}/healthz");
        let what = format!("{} to serve {url}", self.name);
        self.wait_until(&what, timeout, || async {
            client.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await
    }

    /// SIGTERM, as `docker stop` and systemd send it.
    pub fn sigterm(&self) {
        crate::child::sigterm(&self.child);
    }

    /// Waits for the exit, `timeout` at most: the status, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::child::wait_timeout(&mut self.child, timeout)
    }

    /// SIGTERM, then waits for the exit, `timeout` at most (the contract promises 10 s). `None`: still running
    /// (it is killed when dropped).
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.sigterm();
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scrape of a daemon's `/metrics` as text (empty when it does not answer).
/// Whether the series `series` (`name{a="x",b="y"}` as exposed) is selected by `query`: the same name, and every
/// label the query names with the same value (a query without labels selects every series of the name). So
/// `fortimisp_blocks_total{outcome="blocked"}` selects that outcome on every target.
pub fn series_matches(series: &str, query: &str) -> bool {
    let split = |s: &str| -> (String, Vec<String>) {
        match s.split_once('{') {
            Some((name, labels)) => (
                name.to_string(),
                labels.trim_end_matches('}').split("\",").map(|l| l.trim_end_matches('"').to_string()).collect(),
            ),
            None => (s.to_string(), Vec::new()),
        }
    };
    let ((name, labels), (want_name, wanted)) = (split(series), split(query));
    name == want_name && wanted.iter().filter(|w| !w.is_empty()).all(|w| labels.contains(w))
}

/// The sum of the samples of a Prometheus text exposition that `query` selects ([`series_matches`]); 0 if none.
pub fn sample_sum(text: &str, query: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            series_matches(series, query).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub async fn metrics_text(metrics: SocketAddr) -> String {
    match reqwest::get(format!("http://{metrics}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::config::RawConfig;

    #[test]
    fn a_query_selects_series_by_name_and_the_labels_it_names() {
        let text = "# HELP x\nfortimisp_blocks_total{target=\"a\",outcome=\"blocked\"} 2\n\
                    fortimisp_blocks_total{target=\"b\",outcome=\"blocked\"} 3\n\
                    fortimisp_blocks_total{target=\"b\",outcome=\"retry\"} 7\nfortimisp_blocks_totalx 9\n\
                    fortimisp_journal_degraded 1\n";
        assert_eq!(sample_sum(text, "fortimisp_blocks_total{outcome=\"blocked\"}"), 5.0);
        assert_eq!(sample_sum(text, "fortimisp_blocks_total{target=\"b\",outcome=\"blocked\"}"), 3.0);
        assert_eq!(sample_sum(text, "fortimisp_blocks_total{outcome=\"blocked\",target=\"b\"}"), 3.0);
        assert_eq!(sample_sum(text, "fortimisp_blocks_total"), 12.0);
        assert_eq!(sample_sum(text, "fortimisp_journal_degraded"), 1.0);
        assert_eq!(sample_sum(text, "fortimisp_blocks_total{outcome=\"dry_run\"}"), 0.0);
    }

    /// A document with the endpoints and every typed override written in parses as a config, and the edits land
    /// where the daemons read them.
    #[tokio::test]
    async fn the_template_with_overrides_is_a_valid_config() {
        let dir = std::env::temp_dir().join(format!("fortimisp-harness-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for tls in [true, false] {
            let servers = Servers::start(ServerOptions { tls, ..ServerOptions::default() }, &dir).await.unwrap();
            let listen = Listen { tcp: None, housekeeping_metrics: None, ..Listen::free() };
            let mut doc = ConfigDoc::template();
            doc.endpoints(&servers.endpoints(), &listen, &dir.join("state.db"))
                .timeout(Duration::from_secs(10))
                .sync_interval(Duration::from_secs(300))
                .enforce_warninglist(true)
                .requests_per_second(7)
                .recv_buffer_bytes(1 << 20)
                .max_blocks_per_minute(9)
                .log_level("warn")
                .triggers(&[TriggerRule { log_type: Some("traffic".into()), ..TriggerRule::default() }]);
            let text = doc.render();
            let raw = RawConfig::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let config = raw.validate(&|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.misp.url.as_str().trim_end_matches('/'), servers.misp.url());
            assert_eq!(config.targets[0].requests_per_second, 7.0);
            assert_eq!(config.misp.sync_interval, Some(Duration::from_secs(300)));
            assert_eq!(config.syslog.udp, Some(listen.udp));
            assert_eq!(config.syslog.tcp, None);
            assert_eq!(config.trigger.len(), 1);
            assert_eq!(text.contains("ca_file"), tls, "{text}");
            assert!(!text.contains("housekeeping_listen"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The threat-feed keys land where the daemon reads them, and the document still validates (a pulled feed needs
    /// the listener, TLS files and the password together).
    #[tokio::test]
    async fn the_feed_keys_make_a_valid_threat_feed_config() {
        let dir = tempfile::tempdir().unwrap();
        let servers = Servers::start(ServerOptions::default(), dir.path()).await.unwrap();
        let listen = Listen::free();
        let mut doc = ConfigDoc::template();
        doc.endpoints(&servers.endpoints(), &listen, &dir.path().join("state.db"))
            .sync_interval(Duration::from_secs(300))
            .backend(Backend::ThreatFeed)
            .feed(&FeedKeys {
                listen: Some(listen.metrics),
                tls_cert: dir.path().join("feed.crt"),
                tls_key: dir.path().join("feed.key"),
                password: "twelve chars or more".into(),
                update: vec![UpdateMethod::Pull, UpdateMethod::Push],
                contents: Contents::Indicators,
                max_entries: 1000,
                max_feeds: 3,
                status_interval: Duration::from_secs(5),
            });
        let text = doc.render();
        let config = RawConfig::parse(&text).unwrap().validate(&|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.targets[0].backend, fortimisp_core::config::Backend::ThreatFeed, "{text}");
        let feed = config.feed.expect("[feed] is read with the threat-feed backend");
        let serve = feed.serve.expect("pull has a listener");
        assert_eq!(serve.listen, listen.metrics);
        assert_eq!(serve.password.expose(), "twelve chars or more");
        assert!(feed.push);
        assert_eq!(feed.contents, Contents::Indicators);
        assert_eq!((feed.max_entries, feed.max_feeds), (Some(1000), 3));
        assert_eq!(feed.status_interval, Duration::from_secs(5));
    }

    /// A production config's credentials (key files that do not exist here, no inline key) are replaced by the
    /// emulators' keys: the result validates without the files and without the environment.
    #[tokio::test]
    async fn endpoints_replace_every_credential() {
        let dir = tempfile::tempdir().unwrap();
        let servers = Servers::start(ServerOptions::default(), dir.path()).await.unwrap();
        let production = TEMPLATE
            .replace(
                "api_key = \"placeholder\"\nca_file = \"misp-ca.pem\"",
                "api_key_file = \"/nonexistent/misp_api_key\"",
            )
            .replace(
                "api_key = \"placeholder\"\nca_file = \"fortigate-ca.pem\"",
                "api_key_file = \"/nonexistent/fg_key\"",
            );
        assert_eq!(production.matches("api_key_file").count(), 2, "{production}");
        let mut doc = ConfigDoc::parse(&production).unwrap();
        doc.endpoints(&servers.endpoints(), &Listen::free(), &dir.path().join("state.db"));
        let text = doc.render();
        assert!(!text.contains("api_key_file") && !text.contains("/nonexistent/"), "{text}");
        let config = RawConfig::parse(&text).unwrap().validate(&|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.misp.api_key.expose(), servers.misp.key());
        assert_eq!(config.targets[0].api_key.expose(), servers.fortigate.token());
    }

    /// The variables that would override the written keys never reach a binary the harness starts, nor a config the
    /// harness reads.
    #[test]
    fn binaries_run_without_the_credential_variables() {
        let cmd = Binaries::new("/nonexistent").command("integration");
        let removed: Vec<&OsStr> = cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k).collect();
        for name in CREDENTIAL_ENV {
            assert!(removed.contains(&OsStr::new(name)), "{name} is not removed: {removed:?}");
            assert_eq!(env_without_credentials(name), None);
        }
        assert_eq!(env_without_credentials("PATH"), std::env::var("PATH").ok(), "other variables are read");
    }

    /// The threat-feed setters turn a production `[feed]` (a password file that does not exist, a listener on
    /// every interface with the production certificate) into the lab's, for pull and push alike.
    #[tokio::test]
    async fn the_feed_setters_write_a_valid_feed_table() {
        let dir = tempfile::tempdir().unwrap();
        let servers = Servers::start(ServerOptions::default(), dir.path()).await.unwrap();
        let production = format!(
            "{TEMPLATE}\n[feed]\nlisten = \"0.0.0.0:8514\"\ntls_cert = \"/etc/fortimisp/feed.crt\"\n\
             tls_key = \"/etc/fortimisp/feed.key\"\npassword_file = \"/nonexistent/feed_password\"\n\
             allowed_clients = [\"10.0.0.1/32\"]\n"
        );
        let (cert, key) = (dir.path().join("feed.crt"), dir.path().join("feed.key"));
        let listen: SocketAddr = "127.0.0.1:18514".parse().unwrap();
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        for (methods, listener) in [
            (&[UpdateMethod::Pull, UpdateMethod::Push][..], Some((listen, cert.as_path(), key.as_path()))),
            (&[UpdateMethod::Push][..], None),
        ] {
            let mut doc = ConfigDoc::parse(&production).unwrap();
            doc.endpoints(&servers.endpoints(), &Listen::free(), &dir.path().join("state.db"))
                .backend(Backend::ThreatFeed)
                .feed_update(methods)
                .feed_listener(listener)
                .feed_password("correct horse battery staple")
                .feed_allowed_clients(&[loopback])
                .feed_status_interval(Duration::from_secs(2));
            let text = doc.render();
            assert!(!text.contains("/nonexistent/") && !text.contains("/etc/fortimisp/"), "{text}");
            let config = RawConfig::parse(&text).unwrap().validate(&|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(config.targets[0].backend, Backend::ThreatFeed);
            let feed = config.feed.expect("[feed]");
            assert_eq!(feed.push, methods.contains(&UpdateMethod::Push));
            assert_eq!(feed.status_interval, Duration::from_secs(2));
            match (feed.serve, listener) {
                (Some(serve), Some(_)) => {
                    assert_eq!(serve.listen, listen);
                    assert_eq!((serve.tls_cert, serve.tls_key), (cert.clone(), key.clone()));
                    assert_eq!(serve.password.expose(), "correct horse battery staple");
                    assert_eq!(serve.allowed_clients, [loopback]);
                    assert_eq!(feed.url.map(|u| u.to_string()), Some("https://127.0.0.1:18514/".to_string()));
                }
                (None, None) => assert!(text.contains("listen = \"\"") && !text.contains("tls_cert"), "{text}"),
                (serve, _) => panic!("listener {serve:?} for {methods:?}\n{text}"),
            }
        }
    }

    /// `fleet` writes one `[[fortigate]]` table per target in place of `[fortigate]`, keeping the base's other
    /// keys in each; the result validates as a fleet whose targets claim their devices, and `scope` lands.
    #[tokio::test]
    async fn the_fleet_config_has_one_target_per_emulator() {
        use crate::fleet::{Fleet, FleetOptions};
        use fortimisp_core::config::Scope;
        let parse = |text: &str| RawConfig::parse(text).and_then(|raw| raw.validate(&|_| None));
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::start(FleetOptions::of(3), dir.path()).await.unwrap();
        let base = TEMPLATE.replace(
            "vdom = \"root\"\n",
            "vdom = \"root\"\nblock_group = \"EDGE_BLOCK\"\nobject_prefix = \"fm-\"\nurls = [\"https://192.0.2.9\"]\n",
        );
        let mut doc = ConfigDoc::parse(&base).unwrap();
        doc.endpoints(&fleet.endpoints(), &Listen::free(), &dir.path().join("state.db"))
            .fleet(&fleet)
            .scope(Scope::Fleet);
        let text = doc.render();
        assert_eq!(text.matches("[[fortigate]]").count(), 3, "{text}");
        assert!(!text.contains("\n[fortigate]"), "{text}");
        assert!(text.find("[[fortigate]]") < text.find("[syslog]"), "the targets stay where [fortigate] was:\n{text}");
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.blocking.scope, Scope::Fleet);
        assert_eq!(config.targets.len(), 3);
        for (target, emulator) in config.targets.iter().zip(&fleet.targets) {
            assert_eq!(target.name, emulator.name);
            assert_eq!(target.url.as_str().trim_end_matches('/'), emulator.fortigate.url());
            assert_eq!(target.api_key.expose(), emulator.fortigate.token());
            assert_eq!(target.ca_file.as_deref(), Some(fleet.fortigate_ca.as_path()));
            assert_eq!(target.devices, [emulator.device.devid.clone(), emulator.device.devname.clone()]);
            assert!(target.vdoms.is_empty() && target.urls.is_empty(), "{text}");
            // The base's other keys, in every target.
            assert_eq!((target.block_group.as_str(), target.object_prefix.as_str()), ("EDGE_BLOCK", "fm-"));
            assert_eq!(target.requests_per_second, 200.0);
        }
        // Again on the result (a fleet base, as `lab --fleet --config fleet.toml` has): same targets.
        let again = ConfigDoc::parse(&text).unwrap().fleet(&fleet).render();
        assert_eq!(again.matches("[[fortigate]]").count(), 3, "{again}");
        assert_eq!(parse(&again).unwrap_or_else(|e| panic!("{e}\n{again}")).targets.len(), 3);
    }

    #[test]
    fn every_target_key_variable_is_a_credential() {
        assert!(is_credential_env("FORTIMISP_FORTIGATE_EDGE_A_API_KEY"));
        assert!(is_credential_env(ENV_FORTIGATE_API_KEY));
        assert!(!is_credential_env("FORTIMISP_CONFIG"));
        assert!(is_credential_env(&fortimisp_core::config::env_api_key("b")));
    }

    #[test]
    fn durations_are_written_as_the_config_reads_them() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_secs(10)), "10s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
    }
}
