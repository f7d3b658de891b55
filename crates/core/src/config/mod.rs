//! The operator contract's `config.toml`: parsed, then validated into a [`Config`].
//!
//! Two steps, as in rathole: [`RawConfig`] mirrors the TOML one to one (`deny_unknown_fields` everywhere, durations
//! as humantime strings, closed choices as enums), then [`RawConfig::validate`] resolves secrets (environment over
//! `api_key` over `api_key_file`), parses CIDRs and checks the rules that involve several keys. Later code only
//! ever sees a [`Config`].
//!
//! Every error names the full key path (`misp.timeout: invalid value ...`) on one line and never contains a
//! secret. Problems that are not fatal (a file holding an inline `api_key` that others can read, `verify_tls =
//! false`) are returned in [`Config::warnings`] so the binary reports them once at start.
//!
//! Field names match the TOML keys, which match `../shared/contract.md`: extend, never rename.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::secret::ApiKey;

/// Environment variable that overrides `misp.api_key` / `misp.api_key_file`.
pub const ENV_MISP_API_KEY: &str = "FORTIMISP_MISP_API_KEY";
/// Environment variable that overrides `fortigate.api_key` / `fortigate.api_key_file`.
pub const ENV_FORTIGATE_API_KEY: &str = "FORTIMISP_FORTIGATE_API_KEY";
/// Environment variable holding the PostgreSQL journal's password (wins over `state.password_file`).
pub const ENV_STATE_PASSWORD: &str = "FORTIMISP_STATE_PASSWORD";
/// Environment variable naming the config file when `--config` is not given.
pub const ENV_CONFIG: &str = "FORTIMISP_CONFIG";
/// The config file used when neither `--config` nor `$FORTIMISP_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fortimisp/config.toml";

/// A config problem: the key at fault and what is wrong with it. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl Error {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { key: key.into(), message: message.into() }
    }

    /// The key path at fault (`misp.url`), or `config` for a file that cannot be read.
    pub fn key(&self) -> &str {
        match self {
            Error::Read { .. } => "config",
            Error::Invalid { key, .. } => key,
        }
    }
}

mod feed;
mod target;

pub use feed::{Contents, Feed, RawFeed, Serve, UpdateMethod, ENV_FEED_PASSWORD, FALLBACK_LIMIT, MAX_FEED_NAME};
pub use target::{env_api_key, FortiGate, RawFortiGate, RawTargets, DEFAULT_TARGET, MAX_TARGETS, MAX_TARGET_NAME};

// ---------------------------------------------------------------------------------------------------------------
// Raw: the TOML as written.
// ---------------------------------------------------------------------------------------------------------------

/// The config file as written, before validation. See `config/config.toml` for every key with its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub misp: RawMisp,
    /// `[fortigate]` (one target) or `[[fortigate]]` (a fleet).
    pub fortigate: RawTargets,
    #[serde(default)]
    pub syslog: Syslog,
    #[serde(default)]
    pub trigger: Vec<TriggerRule>,
    #[serde(default)]
    pub blocking: RawBlocking,
    #[serde(default)]
    pub housekeeping: Housekeeping,
    #[serde(default)]
    pub state: State,
    /// Read with `state.url`: several instances on one PostgreSQL journal.
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub log: Log,
    /// Read when `fortigate.backend = "threat-feed"`.
    pub feed: Option<RawFeed>,
}

/// `[misp]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMisp {
    /// Base URL of the MISP server, `https://misp.example.org`.
    pub url: String,
    /// The MISP auth key (40 characters). Prefer `api_key_file` or the environment.
    pub api_key: Option<String>,
    /// A file holding the MISP auth key.
    pub api_key_file: Option<PathBuf>,
    /// Extra trust root (PEM) on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `false` disables TLS verification, with a loud warning at start.
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// Request timeout.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attribute types that count as a hit.
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Only attributes with the IDS flag count.
    #[serde(default = "yes")]
    pub to_ids_only: bool,
    /// Only attributes of published events count.
    #[serde(default)]
    pub published_only: bool,
    /// Attributes on an enabled MISP warninglist never count.
    #[serde(default = "yes")]
    pub enforce_warninglist: bool,
    /// A hit needs one of these tags (empty: any).
    #[serde(default)]
    pub tags_include: Vec<String>,
    /// A hit must carry none of these tags.
    #[serde(default)]
    pub tags_exclude: Vec<String>,
    /// Local indicator mirror refresh (incremental); `0s` = on-demand lookups only.
    #[serde(default = "d_5m", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Full mirror resync (drops hard-deleted and unpublished indicators). Extension of the contract.
    #[serde(default = "d_24h", with = "humantime_serde")]
    pub full_sync_interval: Duration,
    /// How long on-demand answers (hit and miss) are cached.
    #[serde(default = "d_10m", with = "humantime_serde")]
    pub lookup_cache_ttl: Duration,
    /// Housekeeping asks MISP to fetch its feeds this often; `0s` (the default) disables. Off by default because
    /// MISP lets only site admins fetch feeds, and the recommended key is unprivileged.
    #[serde(default, with = "humantime_serde")]
    pub feed_update_interval: Duration,
    /// Add a MISP sighting when an IP is blocked.
    #[serde(default)]
    pub sightings: bool,
    /// CIDR indicators wider than this (IPv4) are ignored and reported.
    #[serde(default = "d_16")]
    pub min_prefix_v4: u8,
    /// CIDR indicators wider than this (IPv6) are ignored and reported.
    #[serde(default = "d_48")]
    pub min_prefix_v6: u8,
}

/// How the daemon changes the FortiGate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Address objects in a block group referenced by a deny policy.
    AddressGroup,
    /// The banned-IP (quarantine) monitor API, with native expiry.
    BannedIp,
    /// Entries of FortiGate external threat feeds (`[feed]`), served for pulls and/or pushed.
    ThreatFeed,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::AddressGroup => "address-group",
            Backend::BannedIp => "banned-ip",
            Backend::ThreatFeed => "threat-feed",
        })
    }
}

/// `[syslog]`: the listeners. Used as is after validation of the addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Syslog {
    /// UDP listen address; `""` disables.
    #[serde(default = "default_udp")]
    pub udp: String,
    /// TCP listen address (RFC 6587 octet counting and LF framing); `""` disables.
    #[serde(default)]
    pub tcp: String,
    /// Syslog over TLS listen address; needs `tls_cert` and `tls_key`; `""` disables.
    #[serde(default)]
    pub tls: String,
    /// PEM certificate chain for the TLS listener.
    #[serde(default)]
    pub tls_cert: String,
    /// PEM private key for the TLS listener.
    #[serde(default)]
    pub tls_key: String,
    /// CIDRs allowed to send; empty: any sender.
    #[serde(default)]
    pub allowed_senders: Vec<String>,
    /// A message longer than this is counted and dropped, never truncated.
    #[serde(default = "d_65535")]
    pub max_message_bytes: usize,
    /// UDP socket receive buffer (SO_RCVBUF) requested at start. Extension of the contract.
    #[serde(default = "d_rcvbuf")]
    pub recv_buffer_bytes: usize,
}

impl Default for Syslog {
    fn default() -> Self {
        Syslog {
            udp: default_udp(),
            tcp: String::new(),
            tls: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            allowed_senders: Vec::new(),
            max_message_bytes: d_65535(),
            recv_buffer_bytes: d_rcvbuf(),
        }
    }
}

/// Which address of a matching line is looked up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    #[default]
    Src,
    Dst,
    Both,
}

/// One `[[trigger]]` table. A line triggers a lookup if it matches any rule; every key set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// FortiGate `policyid`.
    pub policy_id: Option<u64>,
    /// FortiGate `action` (accept, deny, close, timeout, server-rst, ...): one value or a list of alternatives.
    pub action: Option<OneOrMany>,
    /// FortiGate `type` (traffic, utm, event ...).
    #[serde(rename = "type")]
    pub log_type: Option<String>,
    /// FortiGate `subtype` (forward, local ...).
    pub subtype: Option<String>,
    /// FortiGate `srcintf`.
    pub srcintf: Option<String>,
    /// Which address to look up.
    #[serde(default)]
    pub check: Check,
}

/// A trigger value written as one string or a list of alternatives (`action = ["close", "timeout"]`); matched
/// without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "OneOrManyText")]
pub struct OneOrMany(Vec<String>);

#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum OneOrManyText {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrManyText> for OneOrMany {
    fn from(text: OneOrManyText) -> Self {
        match text {
            OneOrManyText::One(one) => OneOrMany(vec![one]),
            OneOrManyText::Many(many) => OneOrMany(many),
        }
    }
}

impl OneOrMany {
    pub fn values(&self) -> &[String] {
        &self.0
    }

    /// Whether `have` is one of the values (ASCII case-insensitive).
    pub fn matches(&self, have: &str) -> bool {
        self.0.iter().any(|want| want.eq_ignore_ascii_case(have))
    }
}

impl<S: Into<String>> FromIterator<S> for OneOrMany {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        OneOrMany(iter.into_iter().map(Into::into).collect())
    }
}

impl std::fmt::Display for OneOrMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `[blocking]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlocking {
    /// CIDRs or IPs never blocked, on top of the built-in reserved ranges.
    #[serde(default)]
    pub never_block: Vec<String>,
    /// Decide and log, change nothing on the FortiGate.
    #[serde(default)]
    pub dry_run: bool,
    /// Beyond this, new blocks wait in the journal and an alert metric is set.
    #[serde(default = "d_600")]
    pub max_blocks_per_minute: u32,
    /// Which targets block an address a line names: those claiming the line's device, or all of them.
    #[serde(default)]
    pub scope: Scope,
    /// Share of the targets that must be reachable for `/healthz` to answer 200 (fleet extension).
    #[serde(default = "d_half")]
    pub healthy_share: f64,
}

impl Default for RawBlocking {
    fn default() -> Self {
        RawBlocking {
            never_block: Vec::new(),
            dry_run: false,
            max_blocks_per_minute: d_600(),
            scope: Scope::default(),
            healthy_share: d_half(),
        }
    }
}

/// `blocking.scope`: where a decision to block lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// On the targets that claim the line's device (`devices`, `vdoms`).
    #[default]
    Origin,
    /// On every target.
    Fleet,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Origin => "origin",
            Scope::Fleet => "fleet",
        })
    }
}

/// `[housekeeping]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Housekeeping {
    /// Blocks older than this are removed.
    #[serde(default = "d_90d", with = "humantime_serde")]
    pub max_age: Duration,
    /// How often the prune pass runs.
    #[serde(default = "d_1h", with = "humantime_serde")]
    pub interval: Duration,
    /// Also remove blocks whose indicator is gone from MISP.
    #[serde(default = "yes")]
    pub unblock_revoked: bool,
    /// Also prune block-group members whose comment is a bare timestamp (the earlier Python service).
    #[serde(default)]
    pub adopt_legacy: bool,
    /// A revocation pass that would remove more than this share of blocks stops and alerts instead.
    #[serde(default = "d_half")]
    pub max_unblock_fraction: f64,
    /// Feed ids to fetch one by one; empty: fetchFromAllFeeds.
    #[serde(default)]
    pub feeds: Vec<u64>,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            max_age: d_90d(),
            interval: d_1h(),
            unblock_revoked: true,
            adopt_legacy: false,
            max_unblock_fraction: d_half(),
            feeds: Vec::new(),
        }
    }
}

/// `[state]`: where the journal is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The SQLite journal: pending actions and audit trail. Unused when `url` is set.
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// A PostgreSQL journal instead of the file: `postgres://user@host:5432/db`, optionally with
    /// `?sslmode=require` or `verify-full` (TLS through rustls). Never with a password.
    #[serde(default)]
    pub url: Option<String>,
    /// The PostgreSQL password, in a file; `$FORTIMISP_STATE_PASSWORD` wins over it.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed PostgreSQL's certificate, for `sslmode=require|verify-full`; the system's roots
    /// without it.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The connection `url` describes, resolved by validation (password included); `None` for SQLite.
    #[serde(skip)]
    pub postgres: Option<crate::journal::PostgresTarget>,
}

impl Default for State {
    fn default() -> Self {
        State { path: default_state_path(), url: None, password_file: None, ca_file: None, postgres: None }
    }
}

impl State {
    /// Resolves `url` and the password into [`State::postgres`]; warns about a plain connection to another host.
    fn resolve(&mut self, env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> Result<(), Error> {
        if self.path.as_os_str().is_empty() {
            return Err(Error::invalid("state.path", "must not be empty"));
        }
        let Some(url) = self.url.as_deref() else {
            for (key, set) in
                [("state.password_file", self.password_file.is_some()), ("state.ca_file", self.ca_file.is_some())]
            {
                if set {
                    return Err(Error::invalid(key, "only applies with state.url (PostgreSQL)"));
                }
            }
            return Ok(());
        };
        let password = match (env(ENV_STATE_PASSWORD).filter(|v| !v.trim().is_empty()), &self.password_file) {
            (Some(value), _) => Some(ApiKey::new(value)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::invalid("state.password_file", format!("cannot read {}: {e}", path.display()))
                })?;
                Some(ApiKey::new(text))
            }
            (None, None) => None,
        };
        check_ca("state.ca_file", self.ca_file.as_deref())?;
        let target = crate::journal::PostgresTarget::new(url, password.as_ref(), self.ca_file.clone())
            .map_err(|message| Error::invalid("state.url", message))?;
        let host = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let loopback = host == "localhost"
            || host.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !target.is_tls() && !loopback {
            warnings.push(format!(
                "state.url: the connection to {host} is not encrypted; add ?sslmode=verify-full (and state.ca_file)"
            ));
        }
        self.postgres = Some(target);
        Ok(())
    }
}

/// `[cluster]` as written: how this instance takes part in a cluster on a PostgreSQL journal (`state.url`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// This instance's name in `integration cluster status` and the logs; the host name by default.
    pub name: Option<String>,
    /// How long a target's lease holds without renewal, on PostgreSQL's clock.
    #[serde(default, with = "humantime_serde")]
    pub lease_ttl: Option<Duration>,
    /// How often the leader renews and the others ask.
    #[serde(default, with = "humantime_serde")]
    pub renew_every: Option<Duration>,
}

impl RawCluster {
    /// The validated cluster settings, for a PostgreSQL journal.
    fn validate(self) -> Result<Cluster, Error> {
        let name = match self.name {
            Some(name) => name,
            None => host_name(),
        };
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid("cluster.name", "must be 1 to 64 characters, without spaces"));
        }
        let defaults = crate::lease::Timings::default();
        let ttl = self.lease_ttl.unwrap_or(defaults.ttl);
        let renew_every = self.renew_every.unwrap_or(defaults.renew_every);
        let timings = crate::lease::Timings::scaled(ttl, renew_every);
        timings.check().map_err(|message| {
            let key = if self.renew_every.is_some() { "cluster.renew_every" } else { "cluster.lease_ttl" };
            Error::invalid(key, message)
        })?;
        Ok(Cluster { name, timings })
    }
}

/// This host's name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`), or `fortimisp`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "fortimisp".to_owned())
}

/// `[cluster]`, validated: present whenever the journal is PostgreSQL (a cluster of one is a cluster).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub timings: crate::lease::Timings,
}

/// `[metrics]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Prometheus text at /metrics, liveness at /healthz (integration daemon); `""` disables.
    #[serde(default = "default_metrics")]
    pub listen: String,
    /// The same for the housekeeping daemon, which may run on the same host. Extension of the contract.
    #[serde(default = "default_hk_metrics")]
    pub housekeeping_listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics { listen: default_metrics(), housekeeping_listen: default_hk_metrics() }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `pretty` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `fortimisp_core=debug,info` ...
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: LogFormat::Pretty, level: default_level() }
    }
}

impl Log {
    /// `level` as the filter the logging setup installs ([`crate::process::init_logging`]). Validation builds the
    /// same filter, so the two accept exactly the same strings: levels (`info`), `target=level` pairs, and bare
    /// targets (`fortimisp_core`: every level of that target).
    ///
    /// # Errors
    /// `log.level` naming the directive that does not parse, or an empty filter.
    pub fn filter(&self) -> Result<tracing_subscriber::EnvFilter, Error> {
        if self.level.trim().is_empty() {
            return Err(Error::invalid("log.level", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|error| Error::invalid("log.level", format!("`{}`: {error}", self.level)))
    }

    /// A filter with no bare level (`fortimisp_core`, `integration=debug`) logs nothing from any other target,
    /// which is legal but easy to write by mistake (`loud` for a level).
    fn warning(&self) -> Option<String> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let has_default = self.level.split(',').any(|d| LEVELS.contains(&d.trim().to_ascii_lowercase().as_str()));
        (!has_default).then(|| {
            format!(
                "log.level `{}` sets no default level: events of other targets are not logged (add one, e.g. `info,{}`)",
                self.level, self.level
            )
        })
    }
}

fn yes() -> bool {
    true
}
fn d_10s() -> Duration {
    Duration::from_secs(10)
}
fn d_5m() -> Duration {
    Duration::from_secs(300)
}
fn d_10m() -> Duration {
    Duration::from_secs(600)
}
fn d_1h() -> Duration {
    Duration::from_secs(3600)
}
fn d_24h() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_90d() -> Duration {
    Duration::from_secs(90 * 86400)
}
fn d_16() -> u8 {
    16
}
fn d_48() -> u8 {
    48
}
fn d_600() -> u32 {
    600
}
fn d_10f() -> f64 {
    10.0
}
fn d_half() -> f64 {
    0.5
}
fn d_65535() -> usize {
    65535
}
fn d_rcvbuf() -> usize {
    8 * 1024 * 1024
}
fn default_types() -> Vec<String> {
    ["ip-src", "ip-dst", "ip-src|port", "ip-dst|port"].map(String::from).to_vec()
}
fn default_vdom() -> String {
    "root".into()
}
fn default_backend() -> Backend {
    Backend::AddressGroup
}
fn default_group() -> String {
    "MISP_BLOCK".into()
}
fn default_group6() -> String {
    "MISP_BLOCK6".into()
}
fn default_prefix() -> String {
    "misp-".into()
}
fn default_udp() -> String {
    "0.0.0.0:514".into()
}
fn default_state_path() -> PathBuf {
    PathBuf::from("/var/lib/fortimisp/state.db")
}
fn default_metrics() -> String {
    "127.0.0.1:9514".into()
}
fn default_hk_metrics() -> String {
    "127.0.0.1:9515".into()
}
/// `[log] level` when the key is absent.
pub const DEFAULT_LOG_LEVEL: &str = "info";

fn default_level() -> String {
    DEFAULT_LOG_LEVEL.into()
}

// ---------------------------------------------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------------------------------------------

/// A validated configuration: secrets resolved, addresses and CIDRs parsed, cross-key rules checked.
#[derive(Debug)]
pub struct Config {
    pub misp: Misp,
    /// The FortiGate targets, in the config's order (one, `default`, for a single `[fortigate]` table).
    pub targets: Vec<FortiGate>,
    pub syslog: Listeners,
    pub trigger: Vec<TriggerRule>,
    pub blocking: Blocking,
    pub housekeeping: Housekeeping,
    pub state: State,
    /// `[cluster]`: `Some` exactly when the journal is PostgreSQL.
    pub cluster: Option<Cluster>,
    pub metrics: Metrics,
    pub log: Log,
    /// `[feed]`, present when `fortigate.backend = "threat-feed"`.
    pub feed: Option<Feed>,
    /// Non-fatal problems the binary logs once at start (never containing a secret).
    pub warnings: Vec<String>,
}

/// `[misp]`, validated.
#[derive(Debug, Clone)]
pub struct Misp {
    pub url: url::Url,
    pub api_key: ApiKey,
    pub ca_file: Option<PathBuf>,
    pub verify_tls: bool,
    pub timeout: Duration,
    pub types: Vec<String>,
    pub to_ids_only: bool,
    pub published_only: bool,
    pub enforce_warninglist: bool,
    pub tags_include: Vec<String>,
    pub tags_exclude: Vec<String>,
    /// `None`: no local mirror, on-demand lookups only.
    pub sync_interval: Option<Duration>,
    pub full_sync_interval: Duration,
    pub lookup_cache_ttl: Duration,
    /// `None`: feed updates disabled.
    pub feed_update_interval: Option<Duration>,
    pub sightings: bool,
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
}

/// `[syslog]`, validated: each listener present only when enabled.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<TlsListener>,
    /// Empty: any sender.
    pub allowed_senders: Vec<IpNet>,
    pub max_message_bytes: usize,
    pub recv_buffer_bytes: usize,
}

/// The syslog-over-TLS listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[blocking]`, validated.
#[derive(Debug, Clone)]
pub struct Blocking {
    pub never_block: Vec<IpNet>,
    pub dry_run: bool,
    /// Per target: each target has its own safety rail.
    pub max_blocks_per_minute: u32,
    pub scope: Scope,
    /// `/healthz` stays 200 while at least this share of the targets answers.
    pub healthy_share: f64,
}

/// `[metrics]`, validated. `None`: no metrics server.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub listen: Option<SocketAddr>,
    pub housekeeping_listen: Option<SocketAddr>,
}

impl Config {
    /// Reads, parses and validates the config file at `path`, reading secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, Error> {
        Self::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// As [`Config::load`], with the environment given as a function (for tests).
    pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let raw = RawConfig::parse(&text)?;
        // Only a file that holds a key is worth protecting: the shipped config points at key files and may stay
        // world-readable (docs/production.md).
        let holds_key = raw.misp.api_key.is_some() || raw.fortigate.tables().iter().any(|t| t.api_key.is_some());
        let mut config = raw.validate(env)?;
        if let Some(warning) = holds_key.then(|| permission_warning(path)).flatten() {
            config.warnings.push(warning);
        }
        Ok(config)
    }

    /// Checks that the syslog TLS certificate and key files exist. Only the integration daemon listens for syslog,
    /// so only it calls this: housekeeping shares the config file but not those files (a systemd unit's
    /// credentials directory or a volume mounted into the integration container only).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `syslog.tls_cert` or `syslog.tls_key`.
    pub fn check_syslog_files(&self) -> Result<(), Error> {
        let Some(tls) = &self.syslog.tls else { return Ok(()) };
        for (key, path) in [("syslog.tls_cert", &tls.cert), ("syslog.tls_key", &tls.key)] {
            std::fs::metadata(path).map_err(|e| Error::invalid(key, format!("cannot read {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// The config file to use: `--config`, then `$FORTIMISP_CONFIG`, then [`DEFAULT_CONFIG_PATH`].
    pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
        cli.or_else(|| std::env::var_os(ENV_CONFIG).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }
}

/// A config file holding a secret (an inline `api_key`; the caller checks) should not be readable by others.
#[cfg(unix)]
fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "config: {} holds an api_key and is readable by other users (mode {:o}); run chmod o-r on it, or move \
             the key to api_key_file",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(not(unix))]
fn permission_warning(_path: &Path) -> Option<String> {
    None
}

impl RawConfig {
    /// Parses TOML text. Errors name the key path (`misp.timeout`) and fit on one line.
    pub fn parse(text: &str) -> Result<RawConfig, Error> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            // toml's message carries a multi-line source snippet; keep its first line of substance.
            let message = inner.message().lines().next().unwrap_or("invalid value").to_string();
            let key = if path == "." || path.is_empty() { "config".to_string() } else { path };
            // serde_path_to_error stops at the table for unknown and missing fields: name the field itself.
            let key = match field_in_message(&message) {
                Some(field) if !message.starts_with("unknown variant") && !key.ends_with(&field) => {
                    if key == "config" {
                        field
                    } else {
                        format!("{key}.{field}")
                    }
                }
                _ => key,
            };
            Error::invalid(key, message)
        })
    }

    /// Resolves secrets and checks every rule. `env` reads an environment variable.
    pub fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let mut warnings = Vec::new();

        let misp_url = parse_url("misp.url", &self.misp.url)?;
        let misp_key = resolve_key(
            "misp",
            ENV_MISP_API_KEY,
            self.misp.api_key.as_deref(),
            self.misp.api_key_file.as_deref(),
            env,
        )?;
        check_ca("misp.ca_file", self.misp.ca_file.as_deref())?;
        if !self.misp.verify_tls {
            warnings.push("misp.verify_tls is false: the MISP server's certificate is NOT verified".into());
        }
        if self.misp.types.is_empty() {
            return Err(Error::invalid("misp.types", "at least one attribute type is required"));
        }
        if self.misp.min_prefix_v4 > 32 {
            return Err(Error::invalid("misp.min_prefix_v4", "must be between 0 and 32"));
        }
        if self.misp.min_prefix_v6 > 128 {
            return Err(Error::invalid("misp.min_prefix_v6", "must be between 0 and 128"));
        }
        if self.misp.timeout.is_zero() {
            return Err(Error::invalid("misp.timeout", "must be greater than 0s"));
        }
        if self.misp.lookup_cache_ttl.is_zero() {
            return Err(Error::invalid("misp.lookup_cache_ttl", "must be greater than 0s"));
        }
        if self.misp.full_sync_interval.is_zero() {
            return Err(Error::invalid("misp.full_sync_interval", "must be greater than 0s"));
        }
        let non_zero = |d: Duration| (!d.is_zero()).then_some(d);

        let targets = self.fortigate.validate(env, &mut warnings)?;

        let syslog = validate_syslog(self.syslog)?;

        for (i, rule) in self.trigger.iter().enumerate() {
            if rule.action.as_ref().is_some_and(|a| a.values().is_empty()) {
                return Err(Error::invalid(format!("trigger[{i}].action"), "an empty list matches no line"));
            }
            if rule.policy_id.is_none()
                && rule.action.is_none()
                && rule.log_type.is_none()
                && rule.subtype.is_none()
                && rule.srcintf.is_none()
            {
                warnings.push(format!("trigger[{i}]: no condition set, every log line matches this rule"));
            }
        }

        let never_block = self
            .blocking
            .never_block
            .iter()
            .enumerate()
            .map(|(i, s)| parse_net(&format!("blocking.never_block[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.0..=1.0).contains(&self.blocking.healthy_share) {
            return Err(Error::invalid("blocking.healthy_share", "must be between 0.0 and 1.0"));
        }
        if self.blocking.max_blocks_per_minute == 0 {
            return Err(Error::invalid("blocking.max_blocks_per_minute", "must be at least 1"));
        }

        let hk = &self.housekeeping;
        if hk.max_age.is_zero() {
            return Err(Error::invalid("housekeeping.max_age", "must be greater than 0s"));
        }
        if hk.interval.is_zero() {
            return Err(Error::invalid("housekeeping.interval", "must be greater than 0s"));
        }
        if !(0.0..=1.0).contains(&hk.max_unblock_fraction) {
            return Err(Error::invalid("housekeeping.max_unblock_fraction", "must be between 0.0 and 1.0"));
        }

        let mut state = self.state;
        state.resolve(env, &mut warnings)?;
        let cluster = match (self.cluster, state.postgres.is_some()) {
            (raw, true) => Some(raw.unwrap_or_default().validate()?),
            (Some(_), false) => {
                return Err(Error::invalid("cluster", "only applies with state.url (a PostgreSQL journal)"))
            }
            (None, false) => None,
        };

        let metrics = Metrics {
            listen: parse_listen("metrics.listen", &self.metrics.listen)?,
            housekeeping_listen: parse_listen("metrics.housekeeping_listen", &self.metrics.housekeeping_listen)?,
        };
        self.log.filter()?;
        warnings.extend(self.log.warning());

        // A `[feed]` table is checked whatever the backend (a typo is caught before the switch), and kept only
        // for the threat-feed backend, which cannot run without one.
        let threat_feed = targets.iter().any(|t| t.backend == Backend::ThreatFeed);
        let feed = match (self.feed.map(|raw| raw.validate(env)).transpose()?, threat_feed) {
            (Some(feed), true) => Some(feed),
            (None, true) => return Err(Error::invalid("feed", "required when a target's backend = \"threat-feed\"")),
            (_, false) => None,
        };
        if feed.as_ref().is_some_and(|f| f.contents == Contents::Indicators) && self.misp.sync_interval.is_zero() {
            return Err(Error::invalid(
                "feed.contents",
                "\"indicators\" serves the local mirror: misp.sync_interval must be greater than 0s",
            ));
        }

        Ok(Config {
            misp: Misp {
                url: misp_url,
                api_key: misp_key,
                ca_file: self.misp.ca_file,
                verify_tls: self.misp.verify_tls,
                timeout: self.misp.timeout,
                types: self.misp.types,
                to_ids_only: self.misp.to_ids_only,
                published_only: self.misp.published_only,
                enforce_warninglist: self.misp.enforce_warninglist,
                tags_include: self.misp.tags_include,
                tags_exclude: self.misp.tags_exclude,
                sync_interval: non_zero(self.misp.sync_interval),
                full_sync_interval: self.misp.full_sync_interval,
                lookup_cache_ttl: self.misp.lookup_cache_ttl,
                feed_update_interval: non_zero(self.misp.feed_update_interval),
                sightings: self.misp.sightings,
                min_prefix_v4: self.misp.min_prefix_v4,
                min_prefix_v6: self.misp.min_prefix_v6,
            },
            targets,
            syslog,
            trigger: self.trigger,
            blocking: Blocking {
                never_block,
                dry_run: self.blocking.dry_run,
                max_blocks_per_minute: self.blocking.max_blocks_per_minute,
                scope: self.blocking.scope,
                healthy_share: self.blocking.healthy_share,
            },
            housekeeping: self.housekeeping,
            state,
            cluster,
            metrics,
            log: self.log,
            feed,
            warnings,
        })
    }
}

/// Pulls the field name out of serde's "unknown field `x`" / "missing field `x`" messages.
fn field_in_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_string())
}

fn parse_url(key: &str, value: &str) -> Result<url::Url, Error> {
    let url = url::Url::parse(value).map_err(|e| Error::invalid(key, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::invalid(key, "scheme must be https (or http for a lab)"));
    }
    if url.host_str().is_none() {
        return Err(Error::invalid(key, "has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(key, "must not carry credentials; use api_key_file"));
    }
    Ok(url)
}

/// Environment wins, then `api_key`, then `api_key_file`.
fn resolve_key(
    section: &str,
    env_name: &str,
    inline: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiKey, Error> {
    let key = if let Some(value) = env(env_name).filter(|v| !v.trim().is_empty()) {
        ApiKey::new(value)
    } else if let Some(value) = inline {
        ApiKey::new(value)
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("{section}.api_key_file"), format!("cannot read {}: {e}", path.display()))
        })?;
        ApiKey::new(text)
    } else {
        return Err(Error::invalid(
            format!("{section}.api_key"),
            format!("required: set api_key, api_key_file or ${env_name}"),
        ));
    };
    if key.is_empty() {
        return Err(Error::invalid(format!("{section}.api_key"), "is empty"));
    }
    if key.expose().chars().any(|c| c.is_control() || c == ' ') {
        return Err(Error::invalid(
            format!("{section}.api_key"),
            "contains spaces or control characters (value not shown)",
        ));
    }
    Ok(key)
}

fn check_ca(key: &str, path: Option<&Path>) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    let bytes = std::fs::read(path).map_err(|e| Error::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(bytes.as_slice());
    let certs: Vec<_> = rustls_pemfile::certs(&mut reader)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::invalid(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::invalid(key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(())
}

/// FortiOS names, by the one definition in `fortigate::objects`: a group name leaves room for its overflow
/// suffix, a prefix for the longest IP address, neither holds `/` or a character FortiOS refuses.
fn check_object_name(key: &str, name: &str, prefix: bool) -> Result<(), Error> {
    use crate::fortigate::{objects, Error as FgError};
    let checked = if prefix { objects::check_prefix(name) } else { objects::check_group_name(name) };
    match checked {
        Err(FgError::InvalidName { reason: "empty", .. }) => Err(Error::invalid(key, "must not be empty")),
        Err(FgError::InvalidName { reason, .. }) => Err(Error::invalid(key, reason)),
        Err(other) => Err(Error::invalid(key, other.to_string())),
        Ok(()) => Ok(()),
    }
}

fn parse_net(key: &str, value: &str) -> Result<IpNet, Error> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| Error::invalid(key, format!("`{value}` is not an IP address or CIDR")))
}

fn parse_listen(key: &str, value: &str) -> Result<Option<SocketAddr>, Error> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    value
        .trim()
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| Error::invalid(key, format!("`{value}` is not an address:port (\"\" disables)")))
}

fn validate_syslog(raw: Syslog) -> Result<Listeners, Error> {
    let udp = parse_listen("syslog.udp", &raw.udp)?;
    let tcp = parse_listen("syslog.tcp", &raw.tcp)?;
    let tls = match parse_listen("syslog.tls", &raw.tls)? {
        None => None,
        Some(listen) => {
            if raw.tls_cert.is_empty() {
                return Err(Error::invalid("syslog.tls_cert", "required when syslog.tls is set"));
            }
            if raw.tls_key.is_empty() {
                return Err(Error::invalid("syslog.tls_key", "required when syslog.tls is set"));
            }
            Some(TlsListener { listen, cert: PathBuf::from(raw.tls_cert), key: PathBuf::from(raw.tls_key) })
        }
    };
    if udp.is_none() && tcp.is_none() && tls.is_none() {
        return Err(Error::invalid("syslog.udp", "no listener enabled: set syslog.udp, syslog.tcp or syslog.tls"));
    }
    let allowed_senders = raw
        .allowed_senders
        .iter()
        .enumerate()
        .map(|(i, s)| parse_net(&format!("syslog.allowed_senders[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    if !(480..=1024 * 1024).contains(&raw.max_message_bytes) {
        return Err(Error::invalid("syslog.max_message_bytes", "must be between 480 and 1048576"));
    }
    if raw.recv_buffer_bytes < 65536 {
        return Err(Error::invalid("syslog.recv_buffer_bytes", "must be at least 65536"));
    }
    Ok(Listeners {
        udp,
        tcp,
        tls,
        allowed_senders,
        max_message_bytes: raw.max_message_bytes,
        recv_buffer_bytes: raw.recv_buffer_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[misp]
url = "https://misp.example.org"
api_key = "0123456789012345678901234567890123456789"
[fortigate]
url = "https://fortigate.example.org"
api_key = "fgtoken"
[[trigger]]
policy_id = 7
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn check_ok(text: &str) -> Config {
        RawConfig::parse(text)
            .and_then(|raw| raw.validate(&no_env))
            .unwrap_or_else(|e| panic!("expected a valid config, got: {e}"))
    }

    /// Each case: a change to the minimal config and the start of the expected one-line error.
    fn check_err(text: &str, expected: &str) {
        let err = match RawConfig::parse(text).and_then(|raw| raw.validate(&no_env)) {
            Ok(_) => panic!("expected an error starting with {expected:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with(expected), "error {err:?} should start with {expected:?}");
        assert!(!err.contains('\n'), "error must be one line: {err:?}");
        assert!(!err.contains("0123456789012345678901234567890123456789"), "secret leaked: {err}");
    }

    #[test]
    fn minimal_config_gets_the_contract_defaults() {
        let c = check_ok(MINIMAL);
        assert_eq!(c.misp.timeout, Duration::from_secs(10));
        assert_eq!(c.misp.sync_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.misp.types, default_types());
        assert!(c.misp.to_ids_only && c.misp.enforce_warninglist && !c.misp.published_only);
        assert_eq!((c.misp.min_prefix_v4, c.misp.min_prefix_v6), (16, 48));
        assert_eq!(c.targets[0].block_group, "MISP_BLOCK");
        assert_eq!(c.targets[0].block_group6, "MISP_BLOCK6");
        assert_eq!(c.targets[0].backend, Backend::AddressGroup);
        assert_eq!(c.targets[0].object_prefix, "misp-");
        assert_eq!(c.syslog.udp, Some("0.0.0.0:514".parse().unwrap()));
        assert_eq!(c.housekeeping.max_age, Duration::from_secs(90 * 86400));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9514".parse().unwrap()));
        // Feed fetches need a site admin key; the recommended key is unprivileged, so they are opt-in.
        assert_eq!(c.misp.feed_update_interval, None);
        assert_eq!(c.trigger[0].check, Check::Src);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn zero_durations_disable() {
        let c = check_ok(
            &MINIMAL.replace("[fortigate]", "sync_interval = \"0s\"\nfeed_update_interval = \"0s\"\n[fortigate]"),
        );
        assert_eq!(c.misp.sync_interval, None);
        assert_eq!(c.misp.feed_update_interval, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[misp]", "[misp]\nbogus = 1", "misp.bogus: unknown field"),
            ("[misp]", "[misp]\ntimeout = \"ten\"", "misp.timeout:"),
            ("[misp]", "[misp]\ntimeout = 10", "misp.timeout:"),
            ("url = \"https://misp.example.org\"", "url = \"misp\"", "misp.url: not a URL"),
            ("url = \"https://misp.example.org\"", "url = \"ftp://misp\"", "misp.url: scheme"),
            ("[misp]", "[misp]\nmin_prefix_v4 = 33", "misp.min_prefix_v4:"),
            ("[misp]", "[misp]\nmin_prefix_v6 = 300", "misp.min_prefix_v6:"),
            ("[misp]", "[misp]\ntypes = []", "misp.types:"),
            ("[misp]", "[misp]\nca_file = \"/nonexistent/ca.pem\"", "misp.ca_file: cannot read"),
            ("api_key = \"fgtoken\"", "", "fortigate.api_key: required"),
            ("api_key = \"fgtoken\"", "api_key_file = \"/nonexistent/key\"", "fortigate.api_key_file: cannot read"),
            ("[fortigate]", "[fortigate]\nbackend = \"acl\"", "fortigate.backend:"),
            ("[fortigate]", "[fortigate]\nblock_group = \"a/b\"", "fortigate.block_group:"),
            ("[fortigate]", "[fortigate]\nblock_group6 = \"MISP_BLOCK\"", "fortigate.block_group6:"),
            ("[fortigate]", "[fortigate]\nmax_group_members = 0", "fortigate.max_group_members:"),
            ("[fortigate]", "[fortigate]\nmax_group_members = -1", "fortigate.max_group_members:"),
            ("[fortigate]", "[fortigate]\nrequests_per_second = 0", "fortigate.requests_per_second:"),
            ("[fortigate]", "[fortigate]\nobject_prefix = \"\"", "fortigate.object_prefix:"),
            ("[fortigate]", "[fortigate]\nvdom = \"\"", "fortigate.vdom:"),
            ("policy_id = 7", "policy_id = \"seven\"", "trigger[0].policy_id:"),
            ("policy_id = 7", "check = \"srcdst\"", "trigger[0].check:"),
            ("policy_id = 7", "port = 7", "trigger[0].port: unknown field"),
            ("[[trigger]]", "[syslog]\nudp = \"nope\"\n[[trigger]]", "syslog.udp:"),
            ("[[trigger]]", "[syslog]\nudp = \"\"\n[[trigger]]", "syslog.udp: no listener"),
            ("[[trigger]]", "[syslog]\ntls = \"127.0.0.1:6514\"\n[[trigger]]", "syslog.tls_cert: required"),
            ("[[trigger]]", "[syslog]\nallowed_senders = [\"10.0.0.0/33\"]\n[[trigger]]", "syslog.allowed_senders[0]:"),
            ("[[trigger]]", "[syslog]\nmax_message_bytes = 10\n[[trigger]]", "syslog.max_message_bytes:"),
            ("[[trigger]]", "[blocking]\nnever_block = [\"x\"]\n[[trigger]]", "blocking.never_block[0]:"),
            ("[[trigger]]", "[blocking]\nmax_blocks_per_minute = 0\n[[trigger]]", "blocking.max_blocks_per_minute:"),
            ("[[trigger]]", "[housekeeping]\nmax_age = \"0s\"\n[[trigger]]", "housekeeping.max_age:"),
            (
                "[[trigger]]",
                "[housekeeping]\nmax_unblock_fraction = 1.5\n[[trigger]]",
                "housekeeping.max_unblock_fraction:",
            ),
            ("[[trigger]]", "[housekeeping]\nfeeds = [\"a\"]\n[[trigger]]", "housekeeping.feeds[0]:"),
            ("[[trigger]]", "[metrics]\nlisten = \"localhost\"\n[[trigger]]", "metrics.listen:"),
            ("[[trigger]]", "[log]\nformat = \"xml\"\n[[trigger]]", "log.format:"),
            ("[[trigger]]", "[log]\nlevel = \"integration=loud\"\n[[trigger]]", "log.level: `integration=loud`"),
            ("[[trigger]]", "[log]\nlevel = \" \"\n[[trigger]]", "log.level: must not be empty"),
            ("[[trigger]]", "[state]\npath = \"\"\n[[trigger]]", "state.path:"),
            (
                "[[trigger]]",
                "[state]\nurl = \"postgres://u:hunter2@db/j\"\n[[trigger]]",
                "state.url: must not carry a password",
            ),
            ("[[trigger]]", "[state]\nurl = \"mysql://db/j\"\n[[trigger]]", "state.url: scheme must be postgres"),
            (
                "[[trigger]]",
                "[state]\nurl = \"postgres://u@db/j?sslmode=prefer\"\n[[trigger]]",
                "state.url: sslmode=prefer",
            ),
            ("[[trigger]]", "[state]\npassword_file = \"/p\"\n[[trigger]]", "state.password_file: only applies"),
            (
                "[[trigger]]",
                "[state]\nurl = \"postgres://u@db/j\"\npassword_file = \"/nonexistent/p\"\n[[trigger]]",
                "state.password_file: cannot read",
            ),
            ("[[trigger]]", "[bogus]\n[[trigger]]", "bogus: unknown field"),
            ("[misp]\nurl = \"https://misp.example.org\"", "[misp]", "misp.url: missing field"),
        ];
        for (from, to, expected) in cases {
            assert!(MINIMAL.contains(from), "case {expected}: {from:?} not in the minimal config");
            check_err(&MINIMAL.replacen(from, to, 1), expected);
        }
    }

    /// `[state] url` picks PostgreSQL: the password from `$FORTIMISP_STATE_PASSWORD` over `password_file`, never
    /// shown; a plain connection to another host warns, a loopback one or TLS does not.
    #[test]
    fn state_url_selects_postgres_with_the_password_from_env_or_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "from-file\n").expect("write");
        let with = |state: &str| MINIMAL.replace("[[trigger]]", &format!("[state]\n{state}\n[[trigger]]"));
        let text = with(&format!(
            "url = \"postgres://fortimisp@db.example.org:5432/journal\"\npassword_file = {:?}",
            file.display().to_string()
        ));
        let env = |name: &str| (name == ENV_STATE_PASSWORD).then(|| "from-env".to_owned());
        type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
        let cases: [(Env, &str); 2] = [(&no_env, "from-file"), (&env, "from-env")];
        for (env, expected) in cases {
            let config = RawConfig::parse(&text).and_then(|raw| raw.validate(env)).expect("valid");
            let target = config.state.postgres.as_ref().expect("a PostgreSQL journal");
            assert_eq!(target.location(), "postgres://fortimisp@db.example.org:5432/journal");
            assert_eq!(target.password_for_tests(), Some(expected));
            assert!(!format!("{:?}", config.state).contains(expected), "the password is never printed");
            assert!(config
                .warnings
                .iter()
                .any(|w| w.starts_with("state.url: the connection to db.example.org is not encrypted")));
        }
        for (url, warns) in [
            ("postgres://u@127.0.0.1/j", false),
            ("postgres://u@localhost/j", false),
            ("postgres://u@db.example.org/j?sslmode=verify-full", false),
            ("postgres://u@db.example.org/j?sslmode=disable", true),
        ] {
            let config = check_ok(&with(&format!("url = {url:?}")));
            assert!(config.state.postgres.is_some());
            assert_eq!(config.warnings.iter().any(|w| w.starts_with("state.url:")), warns, "{url}");
        }
        assert!(check_ok(MINIMAL).state.postgres.is_none(), "SQLite by default");
    }

    /// `[cluster]` comes with a PostgreSQL journal (defaults: the host name, 10 s ttl, 2 s renewal); it is refused
    /// without one, and timings that leave a leader no window name their key.
    #[test]
    fn cluster_settings_come_with_a_postgres_journal() {
        let pg = |cluster: &str| {
            MINIMAL
                .replace("[[trigger]]", &format!("[state]\nurl = \"postgres://u@127.0.0.1/j\"\n{cluster}\n[[trigger]]"))
        };
        let defaults = check_ok(&pg("")).cluster.expect("a PostgreSQL journal is a cluster of one or more");
        assert_eq!(defaults.timings, crate::lease::Timings::default());
        assert!(!defaults.name.is_empty());
        let set =
            check_ok(&pg("[cluster]\nname = \"fw-a\"\nlease_ttl = \"5s\"\nrenew_every = \"1s\"")).cluster.unwrap();
        assert_eq!(
            (set.name.as_str(), set.timings.ttl, set.timings.failover_bound()),
            ("fw-a", Duration::from_secs(5), Duration::from_secs(6))
        );
        assert!(check_ok(MINIMAL).cluster.is_none(), "SQLite: no cluster");
        check_err(
            &MINIMAL.replace("[[trigger]]", "[cluster]\nname = \"a\"\n[[trigger]]"),
            "cluster: only applies with state.url",
        );
        check_err(&pg("[cluster]\nrenew_every = \"6s\""), "cluster.renew_every:");
        check_err(&pg("[cluster]\nlease_ttl = \"3s\""), "cluster.lease_ttl:");
        check_err(&pg("[cluster]\nname = \"a b\""), "cluster.name:");
        check_err(&pg("[cluster]\nlease = \"3s\""), "cluster.lease: unknown field");
    }

    /// `log.level` passes validation exactly when the logging setup can install it (`EnvFilter::try_new`), bare
    /// targets included; a filter without a default level is accepted with a warning.
    #[test]
    fn log_level_validation_agrees_with_the_logging_setup() {
        let cases = [
            ("info", true, false),
            ("info,fortimisp_core=debug", true, false),
            ("integration=debug", true, true),
            ("fortimisp_core", true, true),
            ("warn,fortimisp_core::journal", true, false),
            ("loud", true, true),
            ("integration=loud", false, false),
            ("info,[bad", false, false),
            ("", false, false),
        ];
        for (level, valid, warned) in cases {
            let text = MINIMAL.replacen("[[trigger]]", &format!("[log]\nlevel = {level:?}\n[[trigger]]"), 1);
            let result = RawConfig::parse(&text).and_then(|raw| raw.validate(&no_env));
            let installable = !level.trim().is_empty() && tracing_subscriber::EnvFilter::try_new(level).is_ok();
            assert_eq!(result.is_ok(), installable, "{level:?}: validation and the logging setup disagree");
            assert_eq!(result.is_ok(), valid, "{level:?}: {result:?}");
            if let Ok(config) = result {
                assert!(config.log.filter().is_ok(), "{level:?}");
                assert_eq!(config.warnings.iter().any(|w| w.starts_with("log.level")), warned, "{level:?}");
            }
        }
    }

    #[test]
    fn environment_wins_over_inline_and_file() {
        let env = |name: &str| (name == ENV_FORTIGATE_API_KEY).then(|| "from-env".to_string());
        let c = RawConfig::parse(MINIMAL).unwrap().validate(&env).unwrap();
        assert_eq!(c.targets[0].api_key.expose(), "from-env");
        assert_eq!(c.misp.api_key.expose(), "0123456789012345678901234567890123456789");
    }

    #[test]
    fn key_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fg.key");
        std::fs::write(&path, "tok-from-file\n").unwrap();
        let text =
            MINIMAL.replace("api_key = \"fgtoken\"", &format!("api_key_file = {:?}", path.display().to_string()));
        assert_eq!(check_ok(&text).targets[0].api_key.expose(), "tok-from-file");
    }

    #[test]
    fn disabled_verification_is_a_warning() {
        let c = check_ok(&MINIMAL.replace("[fortigate]", "[fortigate]\nverify_tls = false"));
        assert!(c.warnings.iter().any(|w| w.starts_with("fortigate.verify_tls")));
    }

    #[test]
    fn never_block_accepts_ips_and_cidrs() {
        let c = check_ok(&MINIMAL.replace(
            "[[trigger]]",
            "[blocking]\nnever_block = [\"198.51.100.7\", \"203.0.113.9/24\", \"2001:db8::/48\"]\n[[trigger]]",
        ));
        let nets: Vec<String> = c.blocking.never_block.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["198.51.100.7/32", "203.0.113.0/24", "2001:db8::/48"]);
    }

    /// A world-readable file is a warning only when it holds a key inline: the shipped config reads its keys from
    /// files and may stay world-readable.
    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_a_warning_only_when_it_holds_a_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "fgtoken\n").unwrap();
        let from_file =
            MINIMAL.replace("api_key = \"fgtoken\"", &format!("api_key_file = {:?}", key_file.display().to_string()));
        let keys_from_env = MINIMAL
            .replace("api_key = \"fgtoken\"", "")
            .replace("api_key = \"0123456789012345678901234567890123456789\"", "");
        let env =
            |name: &str| (name == ENV_MISP_API_KEY || name == ENV_FORTIGATE_API_KEY).then(|| "from-env".to_string());
        // (config text, mode, warned)
        let cases = [
            (MINIMAL, 0o644, true),
            (MINIMAL, 0o640, false),
            (MINIMAL, 0o600, false),
            (from_file.as_str(), 0o600, false),
            // Still holds the MISP key inline.
            (from_file.as_str(), 0o644, true),
            (keys_from_env.as_str(), 0o644, false),
        ];
        for (i, (text, mode, warned)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("config-{i}.toml"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let c = Config::load_with_env(&path, &env).unwrap();
            let warnings: Vec<_> = c.warnings.iter().filter(|w| w.contains("readable by other users")).collect();
            assert_eq!(warnings.len(), usize::from(warned), "case {i} (mode {mode:o}): {:?}", c.warnings);
        }
    }

    /// The name rules agree: whatever `[fortigate]` names validation accepts, the client builds, and every object
    /// and overflow group name it derives is a valid `ObjectName`; the limits are the reference's.
    #[test]
    fn names_that_validate_make_valid_object_names() {
        use crate::fortigate::{objects, ObjectName, MAX_OVERFLOW_GROUPS};
        // fortios-rest.md §4: keep names <= 63 (addrgrp on 6.0), comment <= 255.
        assert_eq!((objects::MAX_NAME_LEN, objects::MAX_COMMENT_LEN), (63, 255));
        assert_eq!((objects::MAX_PREFIX_LEN, objects::MAX_GROUP_NAME_LEN), (24, 59));
        let longest_ip: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let validate = |key: &str, value: &str| {
            let text = MINIMAL.replacen("[fortigate]", &format!("[fortigate]\n{key} = \"{value}\""), 1);
            RawConfig::parse(&text).and_then(|raw| raw.validate(&no_env))
        };
        for len in 1..=80 {
            let prefix = "p".repeat(len);
            match validate("object_prefix", &prefix) {
                Ok(config) => {
                    assert!(len <= objects::MAX_PREFIX_LEN, "prefix of {len} accepted");
                    ObjectName::for_ip(&prefix, longest_ip).expect("prefix + the longest IP");
                    ObjectName::parse(&format!("{prefix}placeholder6")).expect("placeholder");
                    crate::clients::fortigate(&config.targets[0]).expect("the client builds");
                }
                Err(e) => {
                    assert!(len > objects::MAX_PREFIX_LEN, "prefix of {len} refused: {e}");
                    assert!(e.to_string().starts_with("fortigate.object_prefix: longer than 24"), "{e}");
                }
            }
            let group = "G".repeat(len);
            match validate("block_group", &group) {
                Ok(config) => {
                    assert!(len <= objects::MAX_GROUP_NAME_LEN, "group of {len} accepted");
                    ObjectName::parse(&format!("{group}-{}", MAX_OVERFLOW_GROUPS + 1)).expect("last overflow group");
                    crate::clients::fortigate(&config.targets[0]).expect("the client builds");
                }
                Err(e) => assert!(len > objects::MAX_GROUP_NAME_LEN, "group of {len} refused: {e}"),
            }
        }
    }

    /// Names with a character FortiOS refuses in text fields are refused at validation, naming the key.
    #[test]
    fn names_with_refused_characters_are_refused() {
        for c in crate::fortigate::objects::REFUSED_CHARS {
            let value = format!("a{c}b").replace('\\', "\\\\").replace('"', "\\\"");
            for key in ["block_group", "object_prefix"] {
                check_err(
                    &MINIMAL.replacen("[fortigate]", &format!("[fortigate]\n{key} = \"{value}\""), 1),
                    &format!("fortigate.{key}: contains a character FortiOS refuses"),
                );
            }
        }
    }
}
