//! `[feed]`: the threat-feed backend's keys (`fortigate.backend = "threat-feed"`), as written and validated.
//!
//! The table is read only when the backend is `threat-feed`; with another backend it may be absent or present
//! (and is still checked, so a typo is caught before the switch). The rules that need several keys at once live
//! in [`RawFeed::validate`]: pull needs a listener, TLS files and a password; feed names must fit FortiOS's
//! external-resource names with their suffixes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{parse_listen, parse_net, Error};
use crate::secret::ApiKey;

/// The environment variable that holds the feed's basic-auth password (wins over `password`/`password_file`).
pub const ENV_FEED_PASSWORD: &str = "FORTIMISP_FEED_PASSWORD";

/// FortiOS's limit on an external-resource name (`config system external-resource`, `name` size 35).
pub const MAX_FEED_NAME: usize = 35;

/// How the FortiGate receives a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMethod {
    /// The FortiGate fetches `GET /feeds/<name>.txt` from our HTTPS listener every `refresh-rate`.
    Pull,
    /// fortimisp sends `add`/`remove`/`snapshot` commands to the push API (FortiOS 7.2.1+).
    Push,
}

/// What a feed holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Contents {
    /// The log-triggered blocks (the set the address-group backend would hold).
    Blocked,
    /// Every actionable IP indicator of the mirror, aggregated, newest first; the log-triggered blocks go first.
    Indicators,
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Contents::Blocked => "blocked",
            Contents::Indicators => "indicators",
        })
    }
}

/// `[feed]` as written. See `config/config.toml` for every key with its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    /// HTTPS listener for FortiGate pulls; `""` when only push is used.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL the FortiGate pulls from, e.g. `https://fortimisp.example.org:8514` (validate checks the feed
    /// objects point to it). Empty: only the port and path are checked. Extension of the contract.
    #[serde(default)]
    pub url: String,
    /// Certificate chain (PEM) of the listener.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the listener.
    pub tls_key: Option<PathBuf>,
    /// Basic-auth user the FortiGate sends.
    #[serde(default = "default_username")]
    pub username: String,
    /// Basic-auth password, inline. Prefer `password_file` or `$FORTIMISP_FEED_PASSWORD`.
    pub password: Option<String>,
    /// A file holding the basic-auth password.
    pub password_file: Option<PathBuf>,
    /// CIDRs allowed to fetch; empty: any client with the credentials.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// `pull`, `push` or both.
    #[serde(default = "default_update")]
    pub update: Vec<UpdateMethod>,
    /// `blocked` or `indicators`.
    #[serde(default = "default_contents")]
    pub contents: Contents,
    /// The external-resource name on the FortiGate (IPv6: name + "6" when `split_families`).
    #[serde(default = "default_name")]
    pub name: String,
    /// IPv4 and IPv6 in separate feeds.
    #[serde(default = "super::yes")]
    pub split_families: bool,
    /// 0: read the device's limit; else this cap per feed.
    #[serde(default)]
    pub max_entries: u32,
    /// Feeds per family beyond the cap (`name`, `name-2`, ...); what does not fit is left out and reported.
    /// Extension of the contract.
    #[serde(default = "d_1")]
    pub max_feeds: u32,
    /// Push: a full snapshot this often, to repair drift.
    #[serde(default = "super::d_10m", with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// How often the FortiGate's entry-list status is read (what it loaded, its limit). Extension.
    #[serde(default = "d_1m", with = "humantime_serde")]
    pub status_interval: Duration,
}

impl Default for RawFeed {
    fn default() -> Self {
        RawFeed {
            listen: default_listen(),
            url: String::new(),
            tls_cert: None,
            tls_key: None,
            username: default_username(),
            password: None,
            password_file: None,
            allowed_clients: Vec::new(),
            update: default_update(),
            contents: default_contents(),
            name: default_name(),
            split_families: true,
            max_entries: 0,
            max_feeds: d_1(),
            snapshot_interval: super::d_10m(),
            status_interval: d_1m(),
        }
    }
}

/// The device limit assumed when `max_entries = 0` and the FortiGate's entry-list status cannot be read: the
/// per-resource limit of FortiOS before 7.4.4 (reference §6).
pub const FALLBACK_LIMIT: u32 = 131_072;

/// `[feed]`, validated.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The HTTPS listener, when pull is on.
    pub serve: Option<Serve>,
    /// Where the FortiGate pulls from (validate's check); `None`: port and path only.
    pub url: Option<url::Url>,
    pub push: bool,
    pub contents: Contents,
    pub name: String,
    pub split_families: bool,
    /// `None`: the device's limit.
    pub max_entries: Option<u32>,
    pub max_feeds: u32,
    pub snapshot_interval: Duration,
    pub status_interval: Duration,
}

/// The pull listener.
#[derive(Debug, Clone)]
pub struct Serve {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub username: String,
    pub password: ApiKey,
    /// Empty: any client.
    pub allowed_clients: Vec<IpNet>,
}

impl Feed {
    /// Whether the FortiGate pulls the feed from our listener.
    pub fn pull(&self) -> bool {
        self.serve.is_some()
    }

    /// The feeds' names.
    pub fn names(&self) -> crate::feed::Names {
        crate::feed::Names::new(&self.name, self.split_families, self.max_feeds)
    }

    /// The feeds a removal of `ip` sends `remove` to: with push, every feed of its family; without, none (the
    /// integration daemon stops serving it once the ledger closes).
    pub fn push_targets(&self, ip: std::net::IpAddr) -> Vec<String> {
        if self.push {
            self.names().of_family(crate::feed::Family::of(ip))
        } else {
            Vec::new()
        }
    }
}

impl RawFeed {
    /// Checks every rule of `[feed]`. `env` reads an environment variable.
    pub fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Feed, Error> {
        if self.update.is_empty() {
            return Err(Error::invalid("feed.update", "at least one of \"pull\", \"push\""));
        }
        let pull = self.update.contains(&UpdateMethod::Pull);
        let push = self.update.contains(&UpdateMethod::Push);
        check_feed_name(&self.name, self.split_families, self.max_feeds)?;
        if self.max_feeds == 0 {
            return Err(Error::invalid("feed.max_feeds", "must be at least 1"));
        }
        if push && self.snapshot_interval.is_zero() {
            return Err(Error::invalid("feed.snapshot_interval", "must be greater than 0s"));
        }
        if self.status_interval.is_zero() {
            return Err(Error::invalid("feed.status_interval", "must be greater than 0s"));
        }
        let url = if self.url.trim().is_empty() {
            None
        } else {
            let url = super::parse_url("feed.url", self.url.trim())?;
            if url.scheme() != "https" {
                return Err(Error::invalid(
                    "feed.url",
                    "must be https: FortiOS sends the password in the clear otherwise",
                ));
            }
            Some(url)
        };
        let allowed_clients = self
            .allowed_clients
            .iter()
            .enumerate()
            .map(|(i, s)| parse_net(&format!("feed.allowed_clients[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        let serve = if pull {
            let listen = parse_listen("feed.listen", &self.listen)?
                .ok_or_else(|| Error::invalid("feed.listen", "required when feed.update has \"pull\""))?;
            let tls_cert = self
                .tls_cert
                .ok_or_else(|| Error::invalid("feed.tls_cert", "required when feed.update has \"pull\""))?;
            let tls_key =
                self.tls_key.ok_or_else(|| Error::invalid("feed.tls_key", "required when feed.update has \"pull\""))?;
            if self.username.is_empty() || self.username.contains(':') {
                return Err(Error::invalid("feed.username", "must be non-empty and hold no ':' (HTTP basic auth)"));
            }
            let password = resolve_password(self.password.as_deref(), self.password_file.as_deref(), env)?;
            Some(Serve { listen, tls_cert, tls_key, username: self.username, password, allowed_clients })
        } else {
            None
        };
        Ok(Feed {
            serve,
            url,
            push,
            contents: self.contents,
            name: self.name,
            split_families: self.split_families,
            max_entries: (self.max_entries != 0).then_some(self.max_entries),
            max_feeds: self.max_feeds,
            snapshot_interval: self.snapshot_interval,
            status_interval: self.status_interval,
        })
    }
}

/// The longest name we derive must fit: `name` + `6` + `-<max_feeds>`.
fn check_feed_name(name: &str, split: bool, max_feeds: u32) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid("feed.name", "must not be empty"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(Error::invalid(
            "feed.name",
            format!("`{c}` is not allowed: use letters, digits, '-', '_' or '.' (the name is also a URL path)"),
        ));
    }
    let suffix = usize::from(split) + if max_feeds > 1 { 1 + max_feeds.to_string().len() } else { 0 };
    if name.len() + suffix > MAX_FEED_NAME {
        return Err(Error::invalid(
            "feed.name",
            format!(
                "too long: with its suffixes (IPv6 `6`, overflow `-{max_feeds}`) it must fit FortiOS's {MAX_FEED_NAME} characters"
            ),
        ));
    }
    Ok(())
}

/// Environment wins, then `password`, then `password_file`.
fn resolve_password(
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiKey, Error> {
    let password = if let Some(value) = env(ENV_FEED_PASSWORD).filter(|v| !v.trim().is_empty()) {
        ApiKey::new(value)
    } else if let Some(value) = inline {
        ApiKey::new(value)
    } else if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("feed.password_file", format!("cannot read {}: {e}", path.display())))?;
        ApiKey::new(text)
    } else {
        return Err(Error::invalid(
            "feed.password",
            format!("required for pull: set password, password_file or ${ENV_FEED_PASSWORD}"),
        ));
    };
    if password.expose().len() < 12 {
        return Err(Error::invalid("feed.password", "must be at least 12 characters (value not shown)"));
    }
    if password.expose().chars().any(|c| c.is_control()) {
        return Err(Error::invalid("feed.password", "contains control characters (value not shown)"));
    }
    Ok(password)
}

fn default_listen() -> String {
    "0.0.0.0:8514".into()
}
fn default_username() -> String {
    "fortigate".into()
}
fn default_update() -> Vec<UpdateMethod> {
    vec![UpdateMethod::Pull]
}
fn default_contents() -> Contents {
    Contents::Blocked
}
fn default_name() -> String {
    "fortimisp-block".into()
}
fn d_1() -> u32 {
    1
}
fn d_1m() -> Duration {
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    fn raw(text: &str) -> RawFeed {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn push_only_needs_no_listener_nor_password() {
        let feed = raw(r#"update = ["push"]"#).validate(&env_none).unwrap();
        assert!(feed.push && !feed.pull());
        assert_eq!(feed.max_entries, None);
    }

    #[test]
    fn pull_names_each_missing_key() {
        let err = raw("").validate(&env_none).unwrap_err();
        assert_eq!(err.key(), "feed.tls_cert");
        let err = raw(r#"tls_cert = "c"
tls_key = "k""#)
        .validate(&env_none)
        .unwrap_err();
        assert_eq!(err.key(), "feed.password");
        let err = raw(r#"tls_cert = "c"
tls_key = "k"
password = "short""#)
        .validate(&env_none)
        .unwrap_err();
        assert_eq!(err.key(), "feed.password");
        let err = raw(r#"listen = ""
tls_cert = "c"
tls_key = "k"
password = "long enough password""#)
        .validate(&env_none)
        .unwrap_err();
        assert_eq!(err.key(), "feed.listen");
    }

    #[test]
    fn the_environment_password_wins_and_is_never_shown() {
        let env = |name: &str| (name == ENV_FEED_PASSWORD).then(|| "from the environment".to_string());
        let feed = raw(r#"tls_cert = "c"
tls_key = "k"
password = "inline password 1""#)
        .validate(&env)
        .unwrap();
        let serve = feed.serve.unwrap();
        assert_eq!(serve.password.expose(), "from the environment");
        assert!(!format!("{serve:?}").contains("environment"));
    }

    #[test]
    fn names_must_fit_fortios_with_their_suffixes() {
        let long = "a".repeat(35);
        let err = raw(&format!("update = [\"push\"]\nname = \"{long}\"")).validate(&env_none).unwrap_err();
        assert_eq!(err.key(), "feed.name");
        raw(&format!("update = [\"push\"]\nname = \"{long}\"\nsplit_families = false")).validate(&env_none).unwrap();
        let err = raw("update = [\"push\"]\nname = \"a b\"").validate(&env_none).unwrap_err();
        assert_eq!(err.key(), "feed.name");
        let err = raw("update = [\"push\"]\nmax_feeds = 0").validate(&env_none).unwrap_err();
        assert_eq!(err.key(), "feed.max_feeds");
        let err = raw(&format!("update = [\"push\"]\nname = \"{}\"\nmax_feeds = 10", "a".repeat(32)))
            .validate(&env_none)
            .unwrap_err();
        assert_eq!(err.key(), "feed.name");
    }

    #[test]
    fn the_pull_url_must_be_https() {
        let err = raw("update = [\"push\"]\nurl = \"http://x.example:8514\"").validate(&env_none).unwrap_err();
        assert_eq!(err.key(), "feed.url");
    }
}
