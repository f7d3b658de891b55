//! The lab with `backend = "threat-feed"` (`lab --backend threat-feed [--update pull|push|both]`): the daemon's
//! threat-feed listener and the emulated FortiGate's feed objects, set up as an operator does, and the report's
//! "FortiGate feeds" part read back from both sides.
//!
//! Owns: the listener's throw-away CA, certificate and key in the work directory ([`Listener`]); the `[feed]`
//! edits of the lab's config ([`configure`], through [`ConfigDoc`]'s typed setters); the feed objects created on
//! the emulator through its REST API, exactly as docs/production.md §1.4 writes them (pull: `resource` pointing at
//! the listener, basic auth, `server-identity-check full`; push: `update-method push`); the emulator told to trust
//! the lab CA, to send its feed events to the daemon's syslog port and to pull every [`POLL`]
//! ([`Feeds::set_up`], [`Feeds::start_polling`]); the 120-day-old block seeded in the journal's ledger
//! ([`seed_old_block`]), since feeds hold no comments and the ledger is what fortimisp owns. It does not decide
//! what should be blocked (the lab's `Plan` does, for every backend).
//!
//! "On the FortiGate" means an entry of the emulator's *loaded* feed list ([`Feeds::holding`]), never what the
//! daemon says it serves: the report checks the daemon against the FortiGate, and the served files (fetched over
//! HTTPS with the credentials, as the FortiGate does) against what the FortiGate loaded.
//!
//! `--update both` runs the daemon with `update = ["pull", "push"]`: the feed objects take pushes (a feed object has
//! one update method) and the listener serves the same feeds, which the lab fetches and compares. The default is
//! `pull`, the method every FortiOS with threat feeds supports: it is the one that exercises the FortiGate's side
//! (its fetch over HTTPS against the lab CA with basic auth, its polling, its 22222 "loaded" events).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use fortimisp_core::config::{Backend, Config, Contents, UpdateMethod};
use fortimisp_core::feed::check::served_path;
use fortimisp_core::journal::{BlockRecord, Journal};
use ipnet::IpNet;
use serde_json::json;

use super::sum;
use crate::fortigate::FortiGateEmulator;
use crate::harness::{self, ConfigDoc};
use crate::tls::TestCa;

/// The basic-auth password of the lab's feeds (at least 12 characters, as `[feed] password` requires). Like the
/// emulators' lab keys it is not a secret: it opens nothing but the lab's own listener on loopback.
pub const FEED_PASSWORD: &str = "fortimisp-lab-feed-password";
/// How often the emulated FortiGate pulls during the lab, and how often the daemon reads its entry-list status.
pub const POLL: Duration = Duration::from_secs(2);
/// File names of the listener's CA certificate, certificate and key in the work directory.
pub const FEED_CA: &str = "feed-ca.pem";
const FEED_CERT: &str = "feed.crt";
const FEED_KEY: &str = "feed.key";
/// `backend` of a ledger entry made by the threat-feed backend.
const BACKEND: &str = "threat-feed";
/// Upper bound for the daemon and the FortiGate to agree after a change (the daemon rereads the ledger every 5 s,
/// the FortiGate pulls and the daemon reads its status every [`POLL`]).
const SETTLE: Duration = Duration::from_secs(30);
/// How often the settling waits look again.
const LOOK: Duration = Duration::from_millis(200);

/// `lab --update`: how the emulated FortiGate gets the feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedUpdate {
    /// The FortiGate pulls `https://<listener>/feeds/<name>.txt` (`update = ["pull"]`).
    Pull,
    /// The daemon pushes to feed objects with `update-method push` (`update = ["push"]`, no listener).
    Push,
    /// `update = ["pull", "push"]`: pushed to the feed objects, and served by the listener too.
    Both,
}

impl FeedUpdate {
    /// `[feed] update`.
    pub fn methods(self) -> Vec<UpdateMethod> {
        match self {
            FeedUpdate::Pull => vec![UpdateMethod::Pull],
            FeedUpdate::Push => vec![UpdateMethod::Push],
            FeedUpdate::Both => vec![UpdateMethod::Pull, UpdateMethod::Push],
        }
    }

    /// What a config's `[feed] update` amounts to (`None` when empty, which validation refuses anyway).
    pub fn of(methods: &[UpdateMethod]) -> Option<FeedUpdate> {
        match (methods.contains(&UpdateMethod::Pull), methods.contains(&UpdateMethod::Push)) {
            (true, false) => Some(FeedUpdate::Pull),
            (false, true) => Some(FeedUpdate::Push),
            (true, true) => Some(FeedUpdate::Both),
            (false, false) => None,
        }
    }

    /// The daemon's listener serves the feeds.
    pub fn serves(self) -> bool {
        self != FeedUpdate::Push
    }

    /// The FortiGate fetches the feeds (its objects are `update-method feed`); otherwise they take pushes.
    pub fn fortigate_pulls(self) -> bool {
        self == FeedUpdate::Pull
    }
}

impl fmt::Display for FeedUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedUpdate::Pull => "pull",
            FeedUpdate::Push => "push",
            FeedUpdate::Both => "both",
        })
    }
}

impl FromStr for FeedUpdate {
    type Err = String;

    fn from_str(s: &str) -> Result<FeedUpdate, String> {
        match s {
            "pull" => Ok(FeedUpdate::Pull),
            "push" => Ok(FeedUpdate::Push),
            "both" => Ok(FeedUpdate::Both),
            other => Err(format!("`{other}`: expected pull, push or both")),
        }
    }
}

/// The daemon's threat-feed listener as the lab sets it up: a free loopback port and a certificate from a
/// throw-away CA, all written to the work directory.
#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA certificate (PEM) the FortiGate and the lab's own fetches trust.
    pub ca_pem: String,
    pub ca_file: PathBuf,
}

impl Listener {
    /// A new CA and a certificate for `127.0.0.1`/`localhost` in `dir` ([`FEED_CA`], `feed.crt`, `feed.key`
    /// readable by its owner only), and a free loopback port.
    pub fn create(dir: &Path) -> Result<Listener> {
        let ca = TestCa::new();
        let cert = ca.issue_server_cert();
        let (ca_file, cert_file, key_file) = (dir.join(FEED_CA), dir.join(FEED_CERT), dir.join(FEED_KEY));
        ca.write_ca_file(&ca_file).with_context(|| format!("cannot write {}", ca_file.display()))?;
        std::fs::write(&cert_file, &cert.cert_pem).with_context(|| format!("cannot write {}", cert_file.display()))?;
        harness::write_private(&key_file, &cert.key_pem)?;
        Ok(Listener {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::free_port())),
            cert: cert_file,
            key: key_file,
            ca_pem: ca.ca_pem.clone(),
            ca_file,
        })
    }
}

/// Writes the lab's `[feed]` settings: `update`, the listener (pull or both; `listen = ""` for push only), the
/// lab's password (any `password_file` removed), loopback as the only allowed client, and the FortiGate's status
/// read every [`POLL`]. Everything else of a given `[feed]` (name, contents, split, caps) is used as written.
pub fn configure(doc: &mut ConfigDoc, listener: &Listener, update: FeedUpdate) {
    let served = update.serves().then_some((listener.listen, listener.cert.as_path(), listener.key.as_path()));
    let loopback: IpNet = "127.0.0.0/8".parse().expect("invariant: a literal network");
    doc.feed_update(&update.methods())
        .feed_listener(served)
        .feed_password(FEED_PASSWORD)
        .feed_allowed_clients(&[loopback])
        .feed_status_interval(POLL);
}

/// Seeds the ledger with a block of `ip` made `age` ago by the threat-feed backend (in the family's first feed,
/// as the executor records it), before the daemon starts: housekeeping must age it out.
pub async fn seed_old_block(config: &Config, ip: IpAddr, age: chrono::Duration, note: &str) -> Result<()> {
    let feed = config.feed.as_ref().context("backend = \"threat-feed\" without [feed]")?;
    let journal = Journal::open_strict(&config.state).context("the journal")?;
    let target = config.targets.iter().find(|t| t.backend == Backend::ThreatFeed).context("no threat-feed target")?;
    let record = BlockRecord {
        target: target.name.clone(),
        ip,
        object: feed.names().first_of(ip),
        group: None,
        event_id: Some(1),
        rule: None,
        reason: note.to_string(),
        blocked_at: Utc::now() - age,
        backend: BACKEND.into(),
    };
    journal.record_block(&record).await.context("seeding the journal's ledger")?;
    journal.flush().await.context("seeding the journal's ledger")?;
    Ok(())
}

/// Whether a feed entry (an address or a CIDR, as a feed file holds them) covers `ip`.
pub fn entry_holds(entry: &str, ip: IpAddr) -> bool {
    let entry = entry.trim();
    match entry.parse::<IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => entry.parse::<IpAddr>().is_ok_and(|addr| addr == ip),
    }
}

/// The entries of a served feed file: every line but the `#` header and blank lines.
fn file_entries(body: &str) -> Vec<String> {
    body.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

/// The lab's threat feeds: their names, how the FortiGate gets them, and a client for the listener.
pub struct Feeds {
    /// Every feed the config may use ([`fortimisp_core::feed::Names::all`]); each exists on the FortiGate.
    pub names: Vec<String>,
    pub update: FeedUpdate,
    pub contents: Contents,
    pub username: String,
    /// `https://<listen>` when the listener serves.
    pub url: Option<String>,
    pub ca_file: PathBuf,
    ca_pem: String,
    http: reqwest::Client,
}

impl Feeds {
    /// The feeds of the derived `config` (whose `[feed]` [`configure`] wrote).
    pub fn new(config: &Config, listener: &Listener, update: FeedUpdate) -> Result<Feeds> {
        let feed = config.feed.as_ref().context("backend = \"threat-feed\" without [feed]")?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(listener.ca_pem.as_bytes())?)
            .timeout(Duration::from_secs(10))
            .build()
            .context("the feed client")?;
        Ok(Feeds {
            names: feed.names().all(),
            update,
            contents: feed.contents,
            username: feed.serve.as_ref().map_or_else(|| "fortigate".into(), |s| s.username.clone()),
            url: update.serves().then(|| format!("https://{}", listener.listen)),
            ca_file: listener.ca_file.clone(),
            ca_pem: listener.ca_pem.clone(),
            http,
        })
    }

    /// Creates every feed object on the FortiGate through its REST API, as the operator does (docs/production.md
    /// §1.4); makes it trust the lab CA for its fetches and send its feed events to the daemon's `syslog` port.
    pub async fn set_up(
        &self,
        fortigate: &FortiGateEmulator,
        fortigate_ca: &Path,
        vdom: &str,
        syslog: SocketAddr,
    ) -> Result<()> {
        let ca = std::fs::read(fortigate_ca).with_context(|| format!("cannot read {}", fortigate_ca.display()))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .build()
            .context("the FortiGate client")?;
        let url = format!("{}/api/v2/cmdb/system/external-resource", fortigate.url());
        for name in &self.names {
            let body = match (&self.url, self.update.fortigate_pulls()) {
                (Some(base), true) => json!({
                    "name": name, "type": "address", "resource": format!("{base}{}", served_path(name)),
                    "username": self.username, "password": FEED_PASSWORD, "server-identity-check": "full",
                    "refresh-rate": 1,
                }),
                _ => json!({
                    "name": name, "type": "address", "update-method": "push",
                    "resource": "https://fortimisp.invalid/push-only",
                }),
            };
            let response = client
                .post(&url)
                .query(&[("vdom", vdom)])
                .bearer_auth(fortigate.token())
                .json(&body)
                .send()
                .await
                .with_context(|| format!("creating feed {name} on the FortiGate emulator"))?;
            if !response.status().is_success() {
                let status = response.status();
                bail!("creating feed {name} on the FortiGate emulator: {status} {}", response.text().await?);
            }
        }
        fortigate.set_feed_ca(self.ca_pem.as_bytes());
        fortigate.set_event_syslog(syslog);
        Ok(())
    }

    /// The FortiGate pulls every [`POLL`] from now on (pull only; the pushed feeds need no polling).
    pub fn start_polling(&self, fortigate: &FortiGateEmulator) {
        if self.update.fortigate_pulls() {
            fortigate.set_feed_poll_interval(POLL);
        }
    }

    /// The feed whose loaded entries (on the FortiGate) hold `ip`.
    pub fn holding(&self, fortigate: &FortiGateEmulator, ip: IpAddr) -> Option<String> {
        self.names
            .iter()
            .find(|name| fortigate.feed(name).is_some_and(|f| f.entries.iter().any(|e| entry_holds(e, ip))))
            .cloned()
    }

    /// Fetches one served feed over HTTPS with the FortiGate's credentials: its entries.
    pub async fn served(&self, name: &str) -> Result<Vec<String>> {
        let base = self.url.as_deref().context("no listener: nothing is served")?;
        let url = format!("{base}{}", served_path(name));
        let response = self
            .http
            .get(&url)
            .basic_auth(&self.username, Some(FEED_PASSWORD))
            .send()
            .await
            .with_context(|| format!("fetching {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("fetching {url}: {status}");
        }
        Ok(file_entries(&response.text().await.with_context(|| format!("reading {url}"))?))
    }

    /// Every served feed, or nothing when the listener is off.
    async fn all_served(&self) -> Result<Option<BTreeMap<String, Vec<String>>>> {
        if self.url.is_none() {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for name in &self.names {
            out.insert(name.clone(), self.served(name).await?);
        }
        Ok(Some(out))
    }

    /// After `housekeeping --once` closed the old block of `ip` in the ledger: waits until the daemon stops
    /// serving it (it rereads the ledger every 5 s; with push, housekeeping's `remove` already reached the
    /// FortiGate), and says whether it is still served. `None`: not applicable (nothing served, the ledger entry
    /// still open, or `contents = "indicators"`, which serves every MISP indicator, this one included).
    pub async fn wait_unserved(&self, ip: IpAddr, ledger_closed: bool) -> Option<bool> {
        if !ledger_closed || self.url.is_none() || self.contents == Contents::Indicators {
            return None;
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let held = match self.all_served().await {
                Ok(Some(served)) => served.values().flatten().any(|e| entry_holds(e, ip)),
                _ => true,
            };
            if !held || Instant::now() > deadline {
                return Some(held);
            }
            tokio::time::sleep(LOOK).await;
        }
    }

    /// The report's "FortiGate feeds" part, read while the daemon runs: a last pull of every pulled feed (so the
    /// FortiGate holds what is served now), then, once the daemon's metrics caught up with the FortiGate's feed
    /// status or [`SETTLE`] passed, per feed what is served, what the FortiGate loaded and what the daemon counted.
    pub async fn report(&self, fortigate: &FortiGateEmulator, metrics: SocketAddr) -> FeedsReport {
        let mut problems = Vec::new();
        if self.update.fortigate_pulls() {
            for name in &self.names {
                if let Err(error) = fortigate.pull_now(name).await {
                    problems.push(format!("the FortiGate's last pull of {name} failed: {error}"));
                }
            }
        }
        let deadline = Instant::now() + SETTLE;
        let (feeds, events) = loop {
            let served = self.all_served().await;
            let text = harness::metrics_text(metrics).await;
            let feeds = self.rows(fortigate, &text, served.as_ref().ok().and_then(Option::as_ref));
            let agreed = feeds.iter().all(FeedRow::agrees);
            if (agreed && served.is_ok()) || Instant::now() > deadline {
                if let Err(error) = served {
                    problems.push(format!("the served feeds could not be fetched: {error:#}"));
                }
                break (feeds, by_label(&text, "fortimisp_feed_events_total", "reason"));
            }
            tokio::time::sleep(LOOK).await;
        };
        for row in &feeds {
            problems.extend(row.problems());
        }
        FeedsReport {
            update: self.update,
            contents: self.contents,
            url: self.url.clone(),
            username: self.username.clone(),
            password: FEED_PASSWORD.into(),
            ca_file: self.ca_file.clone(),
            feeds,
            events,
            problems,
        }
    }

    fn rows(
        &self,
        fortigate: &FortiGateEmulator,
        metrics: &str,
        served: Option<&BTreeMap<String, Vec<String>>>,
    ) -> Vec<FeedRow> {
        self.names
            .iter()
            .map(|name| {
                let view = fortigate.feed(name);
                let label = format!("feed=\"{name}\"");
                let gauge = |metric: &str| sum(metrics, metric, Some(&label));
                FeedRow {
                    name: name.clone(),
                    method: if self.update.fortigate_pulls() { "pull" } else { "push" },
                    served: served.and_then(|s| s.get(name).cloned()),
                    loaded: view.as_ref().map(|v| v.entries.clone()).unwrap_or_default(),
                    last_load: view.as_ref().map_or(0, |v| v.last_content_update_time),
                    overflow: view.as_ref().is_some_and(|v| v.overflow),
                    dropped: view.as_ref().map_or(0, |v| v.dropped),
                    daemon: DaemonView {
                        entries: gauge("fortimisp_feed_entries"),
                        loaded: gauge("fortimisp_feed_loaded_entries"),
                        last_loaded: gauge("fortimisp_feed_last_loaded_timestamp_seconds"),
                        overflow: gauge("fortimisp_feed_overflow") > 0,
                    },
                }
            })
            .collect()
    }
}

/// The samples of one metric by the value of one label (`fortimisp_feed_events_total` by `reason`).
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let Some(value) = value.trim().parse::<f64>().ok() else { continue };
        let key = format!("{label}=\"");
        let Some(start) = labels.find(&key).map(|i| i + key.len()) else { continue };
        let Some(len) = labels[start..].find('"') else { continue };
        *out.entry(labels[start..start + len].to_string()).or_default() += value as u64;
    }
    out
}

/// The "FortiGate feeds" part of the report.
#[derive(Debug, Clone)]
pub struct FeedsReport {
    pub update: FeedUpdate,
    pub contents: Contents,
    /// The listener (`https://<listen>`, feeds under `/feeds/<name>.txt`); `None`: push only.
    pub url: Option<String>,
    /// What a client sends to fetch a served feed (the lab's own, not secrets), and the CA to trust.
    pub username: String,
    pub password: String,
    pub ca_file: PathBuf,
    pub feeds: Vec<FeedRow>,
    /// `fortimisp_feed_events_total` by event (`updated`, `loaded`, `overflow`): the FortiGate's event lines the
    /// daemon received on its syslog port.
    pub events: BTreeMap<String, u64>,
    /// Disagreements between what is served, what the FortiGate loaded and what the daemon counted.
    pub problems: Vec<String>,
}

impl FeedsReport {
    /// Whether any feed the FortiGate loaded holds `ip`.
    pub fn loaded_anywhere(&self, ip: IpAddr) -> bool {
        self.feeds.iter().any(|f| f.loaded.iter().any(|e| entry_holds(e, ip)))
    }
}

/// One feed, from both sides.
#[derive(Debug, Clone)]
pub struct FeedRow {
    pub name: String,
    /// How the FortiGate gets it: `pull` (it fetches the served file) or `push`.
    pub method: &'static str,
    /// The entries served (fetched over HTTPS with the credentials); `None`: no listener (push only).
    pub served: Option<Vec<String>>,
    /// The entries the FortiGate loaded (after its limit).
    pub loaded: Vec<String>,
    /// Unix seconds of the FortiGate's last load (or pushed change) of the list; 0: never.
    pub last_load: i64,
    /// The FortiGate dropped entries beyond its limit; how many.
    pub overflow: bool,
    pub dropped: usize,
    pub daemon: DaemonView,
}

/// One feed as the daemon's `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonView {
    /// `fortimisp_feed_entries`: entries it serves (pull) or last pushed.
    pub entries: u64,
    /// `fortimisp_feed_loaded_entries`: entries the FortiGate reported loaded (22222 event or entry-list status).
    pub loaded: u64,
    /// `fortimisp_feed_last_loaded_timestamp_seconds`.
    pub last_loaded: u64,
    /// `fortimisp_feed_overflow`.
    pub overflow: bool,
}

impl FeedRow {
    /// The served file (if any) is what the FortiGate loaded, and the daemon's view of the FortiGate agrees.
    fn agrees(&self) -> bool {
        self.problems().is_empty()
    }

    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(served) = &self.served {
            let mut s = served.clone();
            let mut l = self.loaded.clone();
            s.sort();
            l.sort();
            if s != l {
                out.push(format!(
                    "{}: the {} entries the FortiGate loaded differ from the {} fortimisp serves",
                    self.name,
                    self.loaded.len(),
                    served.len()
                ));
            }
        }
        if self.daemon.loaded != self.loaded.len() as u64 {
            out.push(format!(
                "{}: fortimisp_feed_loaded_entries says {}, the FortiGate holds {}",
                self.name,
                self.daemon.loaded,
                self.loaded.len()
            ));
        }
        if self.overflow {
            out.push(format!("{}: the FortiGate dropped {} entries beyond its limit", self.name, self.dropped));
        }
        out
    }
}

/// How the seeded old block's removal was checked (threat-feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldBlock {
    /// A feed the FortiGate loaded held it before housekeeping ran (the daemon served or pushed the seeded ledger
    /// entry); `None`: not looked at (`contents = "indicators"`, which holds it as a MISP indicator anyway).
    pub loaded_before: Option<bool>,
    /// Its ledger entry is closed.
    pub ledger_closed: bool,
    /// Still in a served feed; `None`: not applicable (nothing served, the ledger entry still open, or
    /// `contents = "indicators"`).
    pub served: Option<bool>,
    /// Still in a feed the FortiGate loaded; `None`: not applicable (`contents = "indicators"`).
    pub loaded: Option<bool>,
}

impl OldBlock {
    /// It was on the FortiGate, and no check finds it any more.
    pub fn removed(&self) -> bool {
        self.loaded_before != Some(false)
            && self.ledger_closed
            && self.served != Some(true)
            && self.loaded != Some(true)
    }

    /// In words, for the table.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.loaded_before {
            Some(true) => parts.push("loaded by the FortiGate before".to_string()),
            Some(false) => parts.push("NEVER LOADED by the FortiGate before housekeeping".to_string()),
            None => {}
        }
        parts.push(if self.ledger_closed { "ledger closed" } else { "ledger entry STILL OPEN" }.to_string());
        match self.served {
            Some(true) => parts.push("STILL SERVED".into()),
            Some(false) => parts.push("no longer served".into()),
            None => {}
        }
        match self.loaded {
            Some(true) => parts.push("STILL LOADED by the FortiGate".into()),
            Some(false) => parts.push("not in the FortiGate's loaded entries".into()),
            None => parts.push("still a MISP indicator (contents = \"indicators\")".into()),
        }
        parts.join(", ")
    }
}

/// Whether the journal's ledger still holds an open entry for `ip` (read while the daemon runs: SQLite serves
/// both processes).
pub async fn ledger_open(state: &Path, ip: IpAddr) -> Result<bool> {
    let journal = Journal::open(state).context("the journal")?;
    Ok(journal.active_blocks().await.context("the journal")?.iter().any(|b| b.ip == ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_addresses_and_networks() {
        let cases = [
            ("198.51.100.7", "198.51.100.7", true),
            ("198.51.100.7", "198.51.100.8", false),
            ("203.0.113.128/26", "203.0.113.140", true),
            ("203.0.113.128/26", "203.0.113.1", false),
            ("2001:db8:bad::5", "2001:db8:bad::5", true),
            (" 2001:db8::/32 ", "2001:db8:bad::5", true),
            ("not an entry", "198.51.100.7", false),
        ];
        for (entry, ip, want) in cases {
            assert_eq!(entry_holds(entry, ip.parse().unwrap()), want, "{entry} holds {ip}");
        }
    }

    #[test]
    fn served_files_are_read_without_their_header() {
        let body =
            "# fortimisp threat feed x\n# 2 entries, built 2026-01-01T00:00:00Z\n198.51.100.7\n\n2001:db8::/32\n";
        assert_eq!(file_entries(body), ["198.51.100.7", "2001:db8::/32"]);
    }

    #[test]
    fn update_methods_round_trip() {
        for update in [FeedUpdate::Pull, FeedUpdate::Push, FeedUpdate::Both] {
            assert_eq!(FeedUpdate::of(&update.methods()), Some(update));
            assert_eq!(update.to_string().parse::<FeedUpdate>(), Ok(update));
        }
        assert!("pulls".parse::<FeedUpdate>().is_err());
        assert!(FeedUpdate::Both.serves() && !FeedUpdate::Both.fortigate_pulls());
    }

    #[test]
    fn metrics_by_label() {
        let text = "# TYPE fortimisp_feed_events_total counter\nfortimisp_feed_events_total{reason=\"loaded\"} 4\n\
                    fortimisp_feed_events_total{reason=\"updated\"} 2\nfortimisp_feed_events_totalx{reason=\"x\"} 9\n";
        let got = by_label(text, "fortimisp_feed_events_total", "reason");
        assert_eq!(got, BTreeMap::from([("loaded".to_string(), 4), ("updated".to_string(), 2)]));
    }

    #[test]
    fn a_feed_row_names_each_disagreement() {
        let row = FeedRow {
            name: "f".into(),
            method: "pull",
            served: Some(vec!["198.51.100.1".into(), "198.51.100.2".into()]),
            loaded: vec!["198.51.100.2".into(), "198.51.100.1".into()],
            last_load: 1,
            overflow: false,
            dropped: 0,
            daemon: DaemonView { entries: 2, loaded: 2, last_loaded: 1, overflow: false },
        };
        assert!(row.agrees(), "order does not matter: {:?}", row.problems());
        let stale = FeedRow { loaded: vec!["198.51.100.1".into()], ..row.clone() };
        assert_eq!(stale.problems().len(), 2, "{:?}", stale.problems());
        let push = FeedRow { served: None, overflow: true, dropped: 3, ..row };
        assert_eq!(push.problems(), ["f: the FortiGate dropped 3 entries beyond its limit"]);
    }

    #[test]
    fn the_old_block_is_removed_only_when_every_check_says_so() {
        let gone =
            OldBlock { loaded_before: Some(true), ledger_closed: true, served: Some(false), loaded: Some(false) };
        assert!(gone.removed());
        assert!(!OldBlock { loaded_before: Some(false), ..gone }.removed(), "never there: nothing was removed");
        assert!(OldBlock { served: None, ..gone }.removed());
        assert!(!OldBlock { ledger_closed: false, ..gone }.removed());
        assert!(!OldBlock { served: Some(true), ..gone }.removed());
        assert!(!OldBlock { loaded: Some(true), ..gone }.removed());
    }
}
