//! An emulated FortiGate REST API (FortiOS 7.x cmdb + monitor), faithful to `/work/shared/reference/fortios-rest.md`,
//! for tests, the lab and docker compose.
//!
//! [`FortiGateEmulator::start`] binds `127.0.0.1:0` (plain HTTP) or [`FortiGateEmulator::start_tls`] (rustls, a cert
//! from [`crate::tls`]) and returns a handle whose [`url`](FortiGateEmulator::url) the client is pointed at. The
//! handle is also the test hook: seed objects, inspect state, inject faults, count requests by route. Dropping it
//! stops the server.
//!
//! # What is emulated
//! - `/api/v2/cmdb/firewall/{address,address6,addrgrp,addrgrp6}[/{name}[/member[/{member}]]]`, GET/POST/PUT/DELETE,
//!   names percent-decoded per path segment (an unencoded `/` in a name gives 400), one name space across the
//!   four tables, `filter=` (`==`, `!=`, `=@`, `!@`; repeated = AND, comma = OR), `format=a|b`, `start`/`count`.
//! - The envelope (`http_method`, `revision`, `results` array, `vdom`, `path`, `name`, `mkey`, `status`,
//!   `http_status`, `error`, `cli_error`, `serial`, `version`, `build`). GET of a missing mkey is the recorded 404
//!   body (no `error` field); DELETE of a missing entry is 404 with -3.
//! - Error numbers: -5 duplicate (HTTP 500 or 424, see [`EmulatorConfig::duplicate_status`]), -3 missing member
//!   reference (424), -23 delete of a referenced entry (500), -52 group member limit (500), -4 table full (500),
//!   -163 name clash address/addrgrp (500), -651 invalid input: a `name` or `comment` holding a character FortiOS
//!   refuses in text fields (`"` `'` `<` `>` `&` `#` `(` `)`, reference §6c) answers 424 with -651, on POST and PUT.
//! - `DELETE` on a collection purges every unreferenced entry (so a test can prove the client never sends it).
//! - Auth: `Authorization: Bearer` (`?access_token=` only before 7.4.5 / 7.6.1); bad/revoked token or untrusted host -> 401 HTML page with
//!   `WWW-Authenticate: error="invalid_token"`; after [`EmulatorConfig::lockout_threshold`] failures the source IP
//!   gets 429 for [`EmulatorConfig::lockout_duration`], doubling on each further lockout; calls during the lockout
//!   are refused without checking the token; a success resets the counter.
//! - Entries as FortiOS shows them: a GET returns the uuid (assigned at creation, kept for the entry's life) and the
//!   table's default fields under the ones written (`schema::defaults`, reference §6c); `q_origin_key` on each
//!   result; `with_meta=1` adds the meta fields (`q_ref`: how many groups and policies reference the entry).
//!   `?action=schema` on a table answers its description (`name`, `category`, `mkey`, `children` with each
//!   field's type, help, size or options), `?action=default` a new entry's defaults.
//! - Admin profiles ([`EmulatorConfig::profile`], [`AdminProfile`]): a token whose profile lacks `address`
//!   read(-write) or `authgrp` (the banned-IP monitor) gets HTTP 403 with the envelope (`status: error`,
//!   `http_status: 403`, no `error` number) on the calls that need it.
//! - Older FortiOS refusing empty groups ([`EmulatorConfig::refuse_empty_groups`]).
//! - Monitor: `GET /api/v2/monitor/system/status`, `GET /api/v2/monitor/user/banned`,
//!   `POST …/banned/{add_users,clear_users,clear_all}`.
//! - External threat feeds (reference §6, §6b):
//!   - `/api/v2/cmdb/system/external-resource[/{name}]`, GET/POST/PUT/DELETE with the same envelope, `filter=`,
//!     `format=`, `with_meta=1`, `?action=schema|default`; fields checked as FortiOS does (name 35, `resource`
//!     required and 511, closed choices for `type`, `status`, `update-method`, `server-identity-check`,
//!     `refresh-rate` 1–43200): a bad value answers 424 with -651, a duplicate -5; the password is write-only
//!     (`ENC XXXX`). See `resource.rs`.
//!   - Push API (7.2.1+): `POST /api/v2/monitor/system/external-resource/dynamic`, `add`/`remove`/`snapshot` as set
//!     operations on a feed with `update-method push`.
//!   - `GET /api/v2/monitor/system/external-resource/entry-list?mkey=<feed>[&status_only=true]`: the feed's status
//!     object, shaped like a recorded FortiOS 7.4.2 answer (`status: "success"`, `resource_file_status`
//!     `not-fetched|downloaded|fetch-failed`, `last_content_update_time`, `conn_attempt_time`,
//!     `http_status_code`, `valid_count`, `invalid_count`, `overflow`, `entries` of `{entry, valid: bool}`) plus the
//!     device `limit` ([`EmulatorConfig::feed_entry_limit`]).
//!   - The box's own fetches of `update-method feed` resources ([`FortiGateEmulator::pull_now`], or on a schedule
//!     with [`EmulatorConfig::feed_polling`]): HTTP basic auth, HTTPS verified against
//!     [`EmulatorConfig::feed_ca_pem`], one entry per line, the entry limit applied from the end of the file, the
//!     last list kept in force when a fetch fails. See `feed.rs` and `puller.rs`.
//!   - Feed events (logid 0100022220 updated, 22222 loaded, 22224 overflow) in the default `key=value` syslog
//!     format, over UDP to [`EmulatorConfig::event_syslog`]; the field names beyond `logid`, `type`, `subtype`,
//!     `level`, `name` are the emulator's (see `feed.rs`).
//!   - Admin profiles: the external-resource table and both monitor calls need [`AdminProfile::sysgrp`]
//!     (read for GETs, read-write for writes and pushes).
//!
//! Emulator choices where the reference is silent: an unknown `vdom` answers 404 without `error`; a missing
//! permission is 403 without `error` (FortiOS's behaviour; the reference lists 403 and -14/-37 without a body);
//! an empty group refusal is -651; -163 is used for an address/group name clash; banned entries list as
//! `{ip_address, ipv6, created, expires, source}` with Unix seconds (`expires` 0 = never). For feeds: an unknown
//! feed on a monitor call answers 404 with -3; a push to a feed whose `update-method` is not `push`, or a malformed
//! push body, answers 400 with -651 (nothing of that body is applied); the entry limit applies to each feed on its
//! own; a push leaves `resource_file_status` alone (nothing was fetched).

mod feed;
mod puller;
mod resource;
mod schema;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use feed::DEFAULT_LIMIT as DEFAULT_FEED_ENTRY_LIMIT;
pub use puller::{FeedPolling, PullError, PullOutcome};
use resource::Resources;
pub use state::{normalise_subnet, BannedEntry, Table, REFUSED_IN_TEXT};
use state::{Db, Filter, Outcome, Rules};

/// The box's host name: `hostname` in `monitor/system/status`, `devname` in its logs.
const HOSTNAME: &str = "fortigate-emulator";

/// One permission of an admin profile (`config system accprofile`): `none`, `read` or `read-write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    ReadWrite,
}

impl Access {
    fn allows(self, write: bool) -> bool {
        match self {
            Access::None => false,
            Access::Read => !write,
            Access::ReadWrite => true,
        }
    }
}

/// The REST API admin's profile, as far as fortimisp's calls go. A call the profile does not allow answers HTTP 403
/// with the envelope and no `error` number (reference §3: 403 = the profile lacks a permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminProfile {
    /// `fwgrp-permission address`: the `firewall/address`, `address6`, `addrgrp`, `addrgrp6` tables and their
    /// member child tables (GET needs read, POST/PUT/DELETE read-write).
    pub address: Access,
    /// `authgrp` (User & Authentication): the banned-IP monitor, `monitor/user/banned` (GET needs read, the
    /// `add_users`/`clear_users`/`clear_all` actions read-write).
    pub authgrp: Access,
    /// `sysgrp` (System), where FortiOS puts `config system external-resource`: the `system/external-resource`
    /// table and the feed monitor calls (GET and `entry-list` need read; writes and the push API read-write).
    pub sysgrp: Access,
}

impl AdminProfile {
    /// Everything fortimisp can use (the default).
    pub const FULL: AdminProfile =
        AdminProfile { address: Access::ReadWrite, authgrp: Access::ReadWrite, sysgrp: Access::ReadWrite };
    /// Firewall addresses, the banned list and the threat feeds read-only (listing works; the first block, ban or
    /// push answers 403).
    pub const READ_ONLY: AdminProfile =
        AdminProfile { address: Access::Read, authgrp: Access::Read, sysgrp: Access::Read };
    /// The minimal address-group profile of docs/production.md: addresses read-write, no User & Authentication
    /// group and no System group, so the banned-IP monitor and the threat feeds answer 403.
    pub const NO_MONITOR: AdminProfile =
        AdminProfile { address: Access::ReadWrite, authgrp: Access::None, sysgrp: Access::None };
}

impl Default for AdminProfile {
    fn default() -> Self {
        AdminProfile::FULL
    }
}

/// How the emulated box is set up. `Default` is a FortiOS v7.4.4 VM with generous limits.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The REST API admin token accepted as `Authorization: Bearer`.
    pub token: String,
    /// Reported `version`, e.g. `v7.4.4`.
    pub version: String,
    pub build: u64,
    pub serial: String,
    /// VDOMs that exist; `vdom=` naming another answers 404.
    pub vdoms: Vec<String>,
    /// Entries per group; one more answers -52 with HTTP 500.
    pub group_member_limit: usize,
    /// Entries per address table; one more answers -4 with HTTP 500.
    pub table_limit: usize,
    /// Emulate an older FortiOS that refuses a group with no member.
    pub refuse_empty_groups: bool,
    /// HTTP status sent with error -5 (500 on some builds, 424 on others).
    pub duplicate_status: u16,
    /// Failed logins (per source IP) before a lockout.
    pub lockout_threshold: u32,
    /// First lockout length; doubles on each further lockout of the same IP.
    pub lockout_duration: Duration,
    /// What the token's admin profile allows ([`AdminProfile::FULL`] by default).
    pub profile: AdminProfile,
    /// Entries one external threat feed may hold (the entry-list `limit`); entries beyond it are dropped from the
    /// end at each load or push (log id 22224). Default [`DEFAULT_FEED_ENTRY_LIMIT`].
    pub feed_entry_limit: usize,
    /// When pulled feeds are fetched on their own ([`FeedPolling::Off`] by default: only
    /// [`FortiGateEmulator::pull_now`] fetches).
    pub feed_polling: FeedPolling,
    /// PEM of the CA(s) the feed fetches trust; `None`: the usual web roots.
    pub feed_ca_pem: Option<Vec<u8>>,
    /// Where the feed events go (UDP syslog, default format); `None`: nowhere (they are still kept, see
    /// [`FortiGateEmulator::feed_events`]).
    pub event_syslog: Option<SocketAddr>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            token: "fortimisp-emulator-token".into(),
            version: "v7.4.4".into(),
            build: 2662,
            serial: "FGVMEVEMULATOR01".into(),
            vdoms: vec!["root".into()],
            group_member_limit: 2500,
            table_limit: 50_000,
            refuse_empty_groups: false,
            duplicate_status: 500,
            lockout_threshold: 3,
            lockout_duration: Duration::from_secs(60),
            profile: AdminProfile::FULL,
            feed_entry_limit: feed::DEFAULT_LIMIT,
            feed_polling: FeedPolling::Off,
            feed_ca_pem: None,
            event_syslog: None,
        }
    }
}

/// A fault to inject; see [`FortiGateEmulator::inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a plain-text body (a proxy or httpsd failing: 500, 502, 503).
    Status(u16),
    /// Answer 429 (no token check).
    TooManyRequests,
    /// Close the connection without an answer.
    Drop,
    /// Process the request, then hold the answer back this long (the change is already made).
    SlowAnswer(Duration),
    /// Hold the request, unprocessed, until the [`Gate`] opens: a slow box, without a clock.
    Hold(Gate),
}

/// Holds [`Fault::Hold`] requests until [`open`](Gate::open): lets a test see a request in flight and act while it
/// is held. Clones share one gate.
#[derive(Debug, Clone)]
pub struct Gate {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.open, &other.open)
    }
}

impl Eq for Gate {}

impl Gate {
    pub fn new() -> Gate {
        Gate { open: Arc::new(tokio::sync::watch::channel(false).0), held: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    /// Lets every held request (and every later one) through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Requests that have arrived at the gate so far (held or let through).
    pub fn arrived(&self) -> usize {
        *self.held.borrow()
    }

    /// Waits until `n` requests have arrived at the gate.
    pub async fn wait_arrived(&self, n: usize) {
        let mut rx = self.held.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    async fn pass(&self) {
        let mut rx = self.open.subscribe();
        self.held.send_modify(|n| *n += 1);
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Raw path, still percent-encoded.
    pub path: String,
    pub query: Option<String>,
    /// Method + path template, e.g. `DELETE /api/v2/cmdb/firewall/addrgrp/{name}/member/{member}`.
    pub route: String,
    pub body: String,
    /// Arrival order, from 1 (kept across [`FortiGateEmulator::reset_requests`]).
    pub seq: u64,
    /// When the request arrived (for rate checks).
    pub at: std::time::Instant,
    /// The HTTP status answered; `None` while in flight or when the connection was dropped (fault).
    pub status: Option<u16>,
    /// The token presented (`Authorization: Bearer`, else `?access_token=`): which client wrote.
    pub token: Option<String>,
}

/// One external threat feed as a test sees it: [`FortiGateEmulator::feed`].
#[derive(Debug, Clone, PartialEq)]
pub struct FeedView {
    /// The `system/external-resource` entry as a GET shows it (password masked).
    pub config: Value,
    /// The entries the feed holds, in order, after the limit.
    pub entries: Vec<String>,
    pub valid_count: usize,
    pub invalid_count: usize,
    /// Entries were dropped beyond the limit at the last load or push.
    pub overflow: bool,
    /// How many.
    pub dropped: usize,
    /// `not-fetched`, `downloaded` or `fetch-failed`.
    pub resource_file_status: String,
    /// Unix seconds of the last content change; 0 before the first load or push.
    pub last_content_update_time: i64,
    /// HTTP status of the last fetch (0: none, or no answer).
    pub http_status_code: u16,
    /// Fetch attempts made.
    pub fetches: u64,
    /// Why the last fetch failed (`None` once one succeeds).
    pub last_error: Option<String>,
}

struct FaultRule {
    route: Option<String>,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct LockState {
    failures: u32,
    lockouts: u32,
    locked_until: Option<Instant>,
}

struct Inner {
    config: EmulatorConfig,
    db: Db,
    latency: Duration,
    faults: VecDeque<FaultRule>,
    token_revoked: bool,
    /// More tokens accepted besides `config.token` (other REST API admins of the same box).
    more_tokens: Vec<String>,
    untrusted: bool,
    locks: BTreeMap<IpAddr, LockState>,
    counts: BTreeMap<String, u64>,
    log: Vec<RecordedRequest>,
    /// TCP connections accepted (to check the client reuses connections).
    connections: u64,
    /// Last [`RecordedRequest::seq`] given.
    seq: u64,
    /// `system/external-resource` and what each feed holds.
    resources: Resources,
    /// Wakes the feed poller when the feeds or the polling change (a permit is kept if it is busy fetching).
    feed_wake: Arc<Notify>,
    /// Held across one fetch: fetches are serialised device-wide.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
    /// Fetches completed so far; `wait_feed_fetches` waits on it. Sent to with the state lock released.
    fetched: Arc<tokio::sync::watch::Sender<u64>>,
    /// Every feed event line produced, in order (sent to `event_syslog` or not).
    event_log: Vec<String>,
    /// Event lines waiting to be sent once the state lock is released.
    outbox: Vec<String>,
}

impl Inner {
    fn rules(&self) -> Rules {
        Rules {
            group_member_limit: self.config.group_member_limit,
            table_limit: self.config.table_limit,
            refuse_empty_groups: self.config.refuse_empty_groups,
            duplicate_status: self.config.duplicate_status,
        }
    }

    fn take_fault(&mut self, route: &str) -> Option<Fault> {
        let rule = self.faults.iter_mut().find(|r| r.remaining > 0 && r.route.iter().all(|want| want == route))?;
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        self.faults.retain(|r| r.remaining > 0);
        Some(fault)
    }
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-connection context handed to the handler: the peer and a way to drop the connection.
#[derive(Clone)]
struct Conn {
    peer: IpAddr,
    kill: Arc<Notify>,
}

/// A running emulator. Dropping it stops the listener and all connections.
pub struct FortiGateEmulator {
    url: String,
    addr: SocketAddr,
    shared: Shared,
    cancel: CancellationToken,
}

impl Drop for FortiGateEmulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FortiGateEmulator {
    /// Plain HTTP on an ephemeral loopback port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().expect("invariant: literal address"), config, None).await
    }

    /// HTTPS on an ephemeral loopback port.
    pub async fn start_tls(config: EmulatorConfig, tls: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::bind("127.0.0.1:0".parse().expect("invariant: literal address"), config, Some(tls)).await
    }

    /// Binds `addr` (HTTPS when `tls` is given) and serves until dropped.
    pub async fn bind(
        addr: SocketAddr,
        config: EmulatorConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let shared = Shared(Arc::new(Mutex::new(Inner {
            config,
            db: Db::default(),
            latency: Duration::ZERO,
            faults: VecDeque::new(),
            token_revoked: false,
            more_tokens: Vec::new(),
            untrusted: false,
            locks: BTreeMap::new(),
            counts: BTreeMap::new(),
            log: Vec::new(),
            connections: 0,
            seq: 0,
            resources: Resources::default(),
            feed_wake: Arc::new(Notify::new()),
            fetch_lock: Arc::new(tokio::sync::Mutex::new(())),
            fetched: Arc::new(tokio::sync::watch::channel(0).0),
            event_log: Vec::new(),
            outbox: Vec::new(),
        })));
        let cancel = CancellationToken::new();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(accept_loop(listener, app, acceptor, shared.clone(), cancel.clone()));
        tokio::spawn(puller::poll_loop(shared.clone(), cancel.clone()));
        Ok(FortiGateEmulator { url, addr, shared, cancel })
    }

    /// `http://127.0.0.1:PORT` or `https://…`, no trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token the emulator currently accepts.
    pub fn token(&self) -> String {
        self.shared.lock().config.token.clone()
    }

    // ---- state inspection ----

    /// An object of any table with its fields as the API would return them.
    pub fn object(&self, name: &str) -> Option<(Table, Value)> {
        self.shared.lock().db.get(name).map(|(t, e)| (*t, Value::Object(e.clone())))
    }

    /// Names in one table, sorted.
    pub fn names(&self, table: Table) -> Vec<String> {
        self.shared.lock().db.names(table)
    }

    /// Member names of a group (`None` if no such group).
    pub fn members(&self, group: &str) -> Option<Vec<String>> {
        self.shared.lock().db.members(group)
    }

    /// Current banned-IP entries.
    pub fn banned(&self) -> Vec<BannedEntry> {
        self.shared.lock().db.banned.clone()
    }

    // ---- seeding ----

    /// Seeds an IPv4 address (`subnet` as CIDR or dotted mask) with no API checks.
    pub fn seed_address(&self, name: &str, subnet: &str, comment: &str) {
        self.seed(Table::Address, json!({"name": name, "type": "ipmask", "subnet": subnet, "comment": comment}));
    }

    /// Seeds an IPv6 address.
    pub fn seed_address6(&self, name: &str, ip6: &str, comment: &str) {
        self.seed(Table::Address6, json!({"name": name, "type": "ipprefix", "ip6": ip6, "comment": comment}));
    }

    /// Seeds a group (`Table::Addrgrp` or `Table::Addrgrp6`) with members; members are not checked.
    pub fn seed_group(&self, table: Table, name: &str, members: &[&str], comment: &str) {
        let member: Vec<Value> = members.iter().map(|m| json!({"name": m})).collect();
        self.seed(table, json!({"name": name, "member": member, "comment": comment}));
    }

    /// Seeds any entry (must be a JSON object with `name`).
    pub fn seed(&self, table: Table, entry: Value) {
        if let Value::Object(m) = entry {
            self.shared.lock().db.seed(table, m);
        }
    }

    /// Marks `name` as referenced by a firewall policy (deleting it then answers -23).
    pub fn reference_by_policy(&self, name: &str) {
        self.shared.lock().db.add_policy_ref(name);
    }

    /// Seeds a banned-IP entry.
    pub fn seed_banned(&self, ip: IpAddr, expiry_secs: u64) {
        let now = unix_now();
        let expires = if expiry_secs == 0 { 0 } else { now + expiry_secs as i64 };
        self.shared.lock().db.banned.push(BannedEntry { ip, created: now, expires });
    }

    // ---- behaviour switches ----

    pub fn set_group_member_limit(&self, n: usize) {
        self.shared.lock().config.group_member_limit = n;
    }

    pub fn set_table_limit(&self, n: usize) {
        self.shared.lock().config.table_limit = n;
    }

    pub fn set_refuse_empty_groups(&self, refuse: bool) {
        self.shared.lock().config.refuse_empty_groups = refuse;
    }

    pub fn set_duplicate_status(&self, status: u16) {
        self.shared.lock().config.duplicate_status = status;
    }

    /// Changes what the token's admin profile allows (takes effect on the next request).
    pub fn set_profile(&self, profile: AdminProfile) {
        self.shared.lock().config.profile = profile;
    }

    // ---- faults ----

    /// Every answer waits this long first (0 = none).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// The next `times` requests (matching `route`, e.g. `POST /api/v2/cmdb/firewall/address`, or any) get `fault`.
    /// Rules fire in the order injected.
    pub fn inject(&self, route: Option<&str>, fault: Fault, times: usize) {
        self.shared.lock().faults.push_back(FaultRule { route: route.map(str::to_string), fault, remaining: times });
    }

    /// The next `n` requests answer `status` (plain text body).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.inject(None, Fault::Status(status), n);
    }

    /// The next `n` requests answer 429.
    pub fn throttle_next(&self, n: usize) {
        self.inject(None, Fault::TooManyRequests, n);
    }

    /// The next `n` requests get their connection closed without an answer.
    pub fn drop_next(&self, n: usize) {
        self.inject(None, Fault::Drop, n);
    }

    pub fn clear_faults(&self) {
        let mut inner = self.shared.lock();
        inner.faults.clear();
        inner.latency = Duration::ZERO;
    }

    /// The token stops working (401) until [`set_token`](Self::set_token).
    pub fn revoke_token(&self) {
        self.shared.lock().token_revoked = true;
    }

    /// Accept a new token (and un-revoke).
    pub fn set_token(&self, token: &str) {
        let mut inner = self.shared.lock();
        inner.config.token = token.to_string();
        inner.token_revoked = false;
    }

    /// Accepts `token` too, as the box accepts the token of each of its REST API admins (one per instance of a
    /// cluster, say); [`RecordedRequest::token`] tells the requests apart. Revoking stops them all.
    pub fn add_token(&self, token: &str) {
        self.shared.lock().more_tokens.push(token.to_string());
    }

    /// When false, every request is refused as if the token were bad (source not in trusted hosts).
    pub fn set_trusted_host(&self, trusted: bool) {
        self.shared.lock().untrusted = !trusted;
    }

    // ---- external threat feeds ----

    /// An external resource as the API shows it, with what it holds and how its fetches went.
    pub fn feed(&self, name: &str) -> Option<FeedView> {
        let inner = self.shared.lock();
        let resource = inner.resources.get(name)?;
        let state = &resource.state;
        Some(FeedView {
            config: Value::Object(resource.shown()),
            entries: state.list.entries().to_vec(),
            valid_count: state.list.valid_count(),
            invalid_count: state.list.invalid_count(),
            overflow: state.list.dropped() > 0,
            dropped: state.list.dropped(),
            resource_file_status: state.file_status.as_str().to_string(),
            last_content_update_time: state.last_content_update,
            http_status_code: state.http_status,
            fetches: state.fetches,
            last_error: state.last_error.clone(),
        })
    }

    /// Names of the external resources, sorted.
    pub fn feed_names(&self) -> Vec<String> {
        self.shared.lock().resources.names()
    }

    /// Fetches of `name`'s resource so far (0 for an unknown feed).
    pub fn feed_fetches(&self, name: &str) -> u64 {
        self.shared.lock().resources.get(name).map_or(0, |r| r.state.fetches)
    }

    /// Waits until `name` has been fetched at least `n` times (put a timeout around it).
    pub async fn wait_feed_fetches(&self, name: &str, n: u64) {
        let mut rx = self.shared.lock().fetched.subscribe();
        while self.feed_fetches(name) < n {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Fetches `name`'s resource once and loads it, as the FortiGate does every `refresh-rate`; returns when done.
    ///
    /// # Errors
    /// [`PullError`]: no such feed, a feed the box does not pull (push or disabled), or a failed fetch (the feed's
    /// status records it and the previous list stays).
    pub async fn pull_now(&self, name: &str) -> Result<PullOutcome, PullError> {
        puller::pull(&self.shared, name).await
    }

    /// Entries one feed may hold from the next load or push on.
    pub fn set_feed_limit(&self, n: usize) {
        self.shared.lock().config.feed_entry_limit = n;
    }

    /// Fetch pulled feeds every `interval`, whatever their `refresh-rate` (`Duration::ZERO`: stop polling).
    pub fn set_feed_poll_interval(&self, interval: Duration) {
        let polling = if interval.is_zero() { FeedPolling::Off } else { FeedPolling::Every(interval) };
        self.set_feed_polling(polling);
    }

    /// When pulled feeds are fetched on their own.
    pub fn set_feed_polling(&self, polling: FeedPolling) {
        let inner = &mut *self.shared.lock();
        inner.config.feed_polling = polling;
        inner.feed_wake.notify_one();
    }

    /// The CA (PEM, one or more certificates) feed fetches trust from now on, instead of the web roots.
    pub fn set_feed_ca(&self, pem: &[u8]) {
        self.shared.lock().config.feed_ca_pem = Some(pem.to_vec());
    }

    /// Send feed events to this UDP syslog collector from now on.
    pub fn set_event_syslog(&self, addr: SocketAddr) {
        self.shared.lock().config.event_syslog = Some(addr);
    }

    /// Every feed event line produced so far, in order (whether sent to a collector or not).
    pub fn feed_events(&self) -> Vec<String> {
        self.shared.lock().event_log.clone()
    }

    // ---- request log ----

    /// Requests seen for a route (`"METHOD /path/{template}"`).
    pub fn route_count(&self, route: &str) -> u64 {
        self.shared.lock().counts.get(route).copied().unwrap_or(0)
    }

    /// All route counters.
    pub fn route_counts(&self) -> BTreeMap<String, u64> {
        self.shared.lock().counts.clone()
    }

    /// Every request seen, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().log.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    pub fn total_requests(&self) -> u64 {
        self.shared.lock().counts.values().sum()
    }

    pub fn reset_requests(&self) {
        let mut inner = self.shared.lock();
        inner.counts.clear();
        inner.log.clear();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Shared,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            res = listener.accept() => match res {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(message = "Emulator accept failed.", %error);
                    continue;
                }
            },
        };
        shared.lock().connections += 1;
        tokio::spawn(serve_conn(tcp, peer, app.clone(), tls.clone(), cancel.clone()));
    }
}

async fn serve_conn(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) {
    let conn = Conn { peer: peer.ip(), kill: Arc::new(Notify::new()) };
    match tls {
        Some(acceptor) => {
            // A client that refuses our certificate ends the handshake; nothing to serve.
            if let Ok(stream) = acceptor.accept(tcp).await {
                serve_io(stream, app, conn, cancel).await;
            }
        }
        None => serve_io(tcp, app, conn, cancel).await,
    }
}

async fn serve_io<I>(io: I, app: Router, conn: Conn, cancel: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = conn.kill.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(conn.clone());
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(req.map(Body::new)).await.unwrap_or_else(|e| match e {})) }
    });
    let serving = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = serving => {}
        _ = kill.notified() => {}
        _ = cancel.cancelled() => {}
    }
}

/// Which endpoint a path is, and its template for counting.
enum Route {
    Collection(Table),
    Entry(Table, String),
    Members(Table, String),
    Member(Table, String, String),
    Status,
    Banned,
    BannedAction(&'static str),
    /// `cmdb/system/external-resource`
    Resources,
    /// `cmdb/system/external-resource/{name}`
    Resource(String),
    /// `monitor/system/external-resource/dynamic` (push API)
    FeedPush,
    /// `monitor/system/external-resource/entry-list`
    FeedEntryList,
    BadPath,
    Unknown,
}

const CMDB: &str = "/api/v2/cmdb/firewall/";
const RESOURCES: &str = "/api/v2/cmdb/system/external-resource";

fn decode(seg: &str) -> String {
    percent_decode_str(seg).decode_utf8_lossy().into_owned()
}

fn classify(path: &str) -> (Route, String) {
    if let Some(rest) = path.strip_prefix(CMDB) {
        let segs: Vec<&str> = rest.split('/').collect();
        let Some(table) = segs.first().and_then(|s| Table::from_segment(s)) else {
            return (Route::Unknown, path.to_string());
        };
        let base = format!("{CMDB}{}", table.as_str());
        return match segs.as_slice() {
            [_] | [_, ""] => (Route::Collection(table), base),
            [_, name] => (Route::Entry(table, decode(name)), format!("{base}/{{name}}")),
            [_, g, "member"] if table.is_group() => {
                (Route::Members(table, decode(g)), format!("{base}/{{name}}/member"))
            }
            [_, g, "member", m] if table.is_group() && !m.is_empty() => {
                (Route::Member(table, decode(g), decode(m)), format!("{base}/{{name}}/member/{{member}}"))
            }
            _ => (Route::BadPath, format!("{base}/<bad path>")),
        };
    }
    if let Some(rest) = path.strip_prefix(RESOURCES) {
        return match rest.strip_prefix('/').map(|r| r.split('/').collect::<Vec<_>>()).as_deref() {
            None if rest.is_empty() => (Route::Resources, RESOURCES.to_string()),
            Some([""]) => (Route::Resources, RESOURCES.to_string()),
            Some([name]) => (Route::Resource(decode(name)), format!("{RESOURCES}/{{name}}")),
            Some(_) => (Route::BadPath, format!("{RESOURCES}/<bad path>")),
            None => (Route::Unknown, path.to_string()),
        };
    }
    let route = match path {
        "/api/v2/monitor/system/external-resource/dynamic" => Route::FeedPush,
        "/api/v2/monitor/system/external-resource/entry-list" => Route::FeedEntryList,
        "/api/v2/monitor/system/status" => Route::Status,
        "/api/v2/monitor/user/banned" => Route::Banned,
        "/api/v2/monitor/user/banned/add_users" => Route::BannedAction("add_users"),
        "/api/v2/monitor/user/banned/clear_users" => Route::BannedAction("clear_users"),
        "/api/v2/monitor/user/banned/clear_all" => Route::BannedAction("clear_all"),
        _ => Route::Unknown,
    };
    (route, path.to_string())
}

/// Query pairs, `+` as space, percent-decoded, repeated keys kept.
fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn unauthorized() -> Response {
    let body = "<html><head><title>401 Unauthorized</title></head><body><h1>Unauthorized</h1>\
                <p>This server could not verify that you are authorized to access the document requested.</p>\
                </body></html>";
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, HeaderValue::from_static("error=\"invalid_token\"")),
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html")),
        ],
        body,
    )
        .into_response()
}

/// FortiOS 7.4.5+ (and 7.6.1+) refuse the token in the URL by default.
fn url_token_disabled(version: &str) -> bool {
    let v: Vec<u32> = version.trim_start_matches('v').split('.').map(|p| p.parse().unwrap_or(0)).collect();
    let v = (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0), v.get(2).copied().unwrap_or(0));
    v >= (7, 6, 1) || ((7, 4, 5)..(7, 6, 0)).contains(&v)
}

fn plain(status: u16, text: &'static str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))], text).into_response()
}

/// The token a request presents, for the request log (whether it is accepted is [`authenticate`]'s business).
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let query = query_pairs(query);
    bearer(headers).or(url_token(&query)).map(str::to_owned)
}

/// The `Authorization: Bearer` token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The `?access_token=` token.
fn url_token(query: &[(String, String)]) -> Option<&str> {
    query.iter().find(|(k, _)| k == "access_token").map(|(_, v)| v.as_str())
}

/// Checks the token and the lockout for `peer`; `Some(response)` refuses the request.
fn authenticate(inner: &mut Inner, headers: &HeaderMap, query: &[(String, String)], peer: IpAddr) -> Option<Response> {
    let now = Instant::now();
    let threshold = inner.config.lockout_threshold.max(1);
    let base = inner.config.lockout_duration;
    // `?access_token=` is refused from 7.4.5 / 7.6.1 on (rest-api-key-url-query disabled by default).
    let url_token = url_token(query).filter(|_| !url_token_disabled(&inner.config.version));
    let token_ok = !inner.token_revoked
        && !inner.untrusted
        && bearer(headers)
            .or(url_token)
            .is_some_and(|t| t == inner.config.token || inner.more_tokens.iter().any(|m| m == t));
    let lock = inner.locks.entry(peer).or_default();
    if lock.locked_until.is_some_and(|until| now < until) {
        return Some(plain(429, "Access temporarily blocked - maximum failed authentications reached"));
    }
    if token_ok {
        lock.failures = 0;
        return None;
    }
    lock.failures += 1;
    if lock.failures >= threshold {
        lock.failures = 0;
        lock.locked_until = Some(now + base * 2u32.saturating_pow(lock.lockouts.min(16)));
        lock.lockouts += 1;
    }
    Some(unauthorized())
}

async fn handle(axum::extract::State(shared): axum::extract::State<Shared>, req: Request) -> Response {
    let (response, seq) = record_and_answer(&shared, req).await;
    // Feed events a push produced go out once the state lock is released.
    puller::flush_events(&shared);
    let mut inner = shared.lock();
    if let Some(entry) = inner.log.iter_mut().rev().find(|e| e.seq == seq) {
        entry.status = Some(response.status().as_u16());
    }
    response
}

/// Records the request (returning its `seq`) and answers it: latency, fault, then the endpoint.
async fn record_and_answer(shared: &Shared, req: Request) -> (Response, u64) {
    let (parts, body) = req.into_parts();
    let conn = parts.extensions.get::<Conn>().cloned();
    let body = axum::body::to_bytes(body, 4 << 20).await.unwrap_or_default();
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();
    let (route, template) = classify(&path);
    let route_key = format!("{method} {template}");

    let (latency, fault, seq) = {
        let mut inner = shared.lock();
        *inner.counts.entry(route_key.clone()).or_default() += 1;
        inner.seq += 1;
        let seq = inner.seq;
        inner.log.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: parts.uri.query().map(str::to_string),
            route: route_key.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            seq,
            at: std::time::Instant::now(),
            status: None,
            token: presented_token(&parts.headers, parts.uri.query()),
        });
        (inner.latency, inner.take_fault(&route_key), seq)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = match fault {
        Some(Fault::Drop) => {
            if let Some(conn) = &conn {
                conn.kill.notify_one();
            }
            return std::future::pending().await;
        }
        Some(Fault::Status(s)) => plain(s, "Service Unavailable"),
        Some(Fault::TooManyRequests) => plain(429, "Too Many Requests"),
        Some(Fault::SlowAnswer(delay)) => {
            let response = respond(shared, &parts, &body, route, conn);
            tokio::time::sleep(delay).await;
            response
        }
        Some(Fault::Hold(gate)) => {
            gate.pass().await;
            respond(shared, &parts, &body, route, conn)
        }
        None => respond(shared, &parts, &body, route, conn),
    };
    (response, seq)
}

/// Authentication, then the endpoint itself, under one lock.
fn respond(
    shared: &Shared,
    parts: &axum::http::request::Parts,
    body: &[u8],
    route: Route,
    conn: Option<Conn>,
) -> Response {
    let method = parts.method.clone();
    let mut inner = shared.lock();
    let peer = conn.map(|c| c.peer).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let query = query_pairs(parts.uri.query());
    if let Some(refusal) = authenticate(&mut inner, &parts.headers, &query, peer) {
        return refusal;
    }
    let vdom = query.iter().find(|(k, _)| k == "vdom").map(|(_, v)| v.clone()).unwrap_or_else(|| "root".into());
    let ctx = EnvelopeCtx {
        method: method.as_str().to_string(),
        vdom: vdom.clone(),
        serial: inner.config.serial.clone(),
        version: inner.config.version.clone(),
        build: inner.config.build,
    };
    if !inner.config.vdoms.contains(&vdom) {
        return ctx.reply(&inner.db, "", "", None, None, state::bare(404));
    }
    let json_body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return ctx.reply(&inner.db, "", "", None, None, state::err(400, -651, "body is not valid JSON")),
        }
    };
    if let Some((path, name, action)) = forbidden(&route, &method, inner.config.profile) {
        return ctx.reply(&inner.db, path, name, None, action, state::bare(403));
    }
    let rules = inner.rules();
    let with_meta = query.iter().any(|(k, v)| k == "with_meta" && v != "0");
    let action = query.iter().find(|(k, _)| k == "action").map(|(_, v)| v.as_str());
    let route = match feed_route(&mut inner, route, &method, &json_body, &query, action, with_meta, &ctx) {
        Ok(response) => return response,
        Err(route) => route,
    };
    let db = &mut inner.db;
    match (route, &method) {
        (Route::Collection(t), &Method::GET) if action == Some("schema") => {
            let outcome = Outcome::Ok { results: Some(schema::schema(t)) };
            ctx.reply(db, "firewall", t.as_str(), None, None, outcome)
        }
        (Route::Collection(t), &Method::GET) if action == Some("default") => {
            let outcome = Outcome::Ok { results: Some(Db::default_entry(t)) };
            ctx.reply(db, "firewall", t.as_str(), None, None, outcome)
        }
        (Route::Collection(t), &Method::GET) => {
            let outcome = add_meta(db, t, list(db, t, &query), with_meta);
            ctx.reply(db, "firewall", t.as_str(), None, None, outcome)
        }
        (Route::Collection(t), &Method::POST) => {
            let outcome = db.create(t, &json_body, &rules);
            let mkey = json_body.get("name").cloned();
            ctx.reply(db, "firewall", t.as_str(), mkey, None, outcome)
        }
        (Route::Collection(t), &Method::DELETE) => {
            let outcome = db.purge(t);
            ctx.reply(db, "firewall", t.as_str(), None, None, outcome)
        }
        (Route::Entry(t, name), &Method::GET) => {
            let outcome = add_meta(db, t, db.get_entry(t, &name), with_meta);
            let outcome = project_outcome(outcome, &query);
            ctx.reply(db, "firewall", t.as_str(), Some(name.into()), None, outcome)
        }
        (Route::Entry(t, name), &Method::PUT) => {
            let outcome = db.update(t, &name, &json_body, &rules);
            ctx.reply(db, "firewall", t.as_str(), Some(name.into()), None, outcome)
        }
        (Route::Entry(t, name), &Method::DELETE) => {
            let outcome = db.delete(t, &name);
            ctx.reply(db, "firewall", t.as_str(), Some(name.into()), None, outcome)
        }
        (Route::Members(t, g), &Method::GET) => {
            let outcome = db.get_members(t, &g);
            ctx.reply(db, "firewall", t.as_str(), Some(g.into()), None, outcome)
        }
        (Route::Members(t, g), &Method::POST) => {
            let outcome = db.add_member(t, &g, &json_body, &rules);
            let mkey = json_body.get("name").cloned();
            ctx.reply(db, "firewall", t.as_str(), mkey, None, outcome)
        }
        (Route::Member(t, g, m), &Method::GET) => {
            let outcome = db.get_member(t, &g, &m);
            ctx.reply(db, "firewall", t.as_str(), Some(m.into()), None, outcome)
        }
        (Route::Member(t, g, m), &Method::DELETE) => {
            let outcome = db.remove_member(t, &g, &m, &rules);
            ctx.reply(db, "firewall", t.as_str(), Some(m.into()), None, outcome)
        }
        (Route::Status, &Method::GET) => {
            let results = json!({
                "model_name": "FortiGate",
                "model_number": "VM64",
                "model": "FGVM64",
                "hostname": HOSTNAME,
                "log_disk_status": "available",
            });
            ctx.reply(db, "system", "status", None, Some(""), Outcome::Ok { results: Some(results) })
        }
        (Route::Banned, &Method::GET) => {
            let now = unix_now();
            db.banned.retain(|b| b.expires == 0 || b.expires > now);
            let results = Value::Array(
                db.banned
                    .iter()
                    .map(|b| {
                        json!({"ip_address": b.ip.to_string(), "ipv6": b.ip.is_ipv6(), "created": b.created,
                               "expires": b.expires, "source": "rest-api"})
                    })
                    .collect(),
            );
            ctx.reply(db, "user", "banned", None, Some("select"), Outcome::Ok { results: Some(results) })
        }
        (Route::BannedAction(action), &Method::POST) => {
            let outcome = banned_action(db, action, &json_body);
            ctx.reply(db, "user", "banned", None, Some(action), outcome)
        }
        (Route::BadPath, _) => ctx.reply(db, "firewall", "", None, None, state::bare(400)),
        (Route::Unknown, _) => ctx.reply(db, "", "", None, None, state::bare(404)),
        _ => ctx.reply(db, "", "", None, None, state::bare(405)),
    }
}

/// The external-resource table and the feed monitor calls; `Err(route)` hands any other route back.
#[allow(clippy::too_many_arguments)]
fn feed_route(
    inner: &mut Inner,
    route: Route,
    method: &Method,
    body: &Value,
    query: &[(String, String)],
    action: Option<&str>,
    with_meta: bool,
    ctx: &EnvelopeCtx,
) -> Result<Response, Route> {
    const PATH: &str = "system";
    const NAME: &str = "external-resource";
    let wrote = |inner: &mut Inner, outcome: &Outcome| {
        if matches!(outcome, Outcome::Ok { .. }) {
            inner.db.revision += 1;
            inner.feed_wake.notify_one();
        }
    };
    let (mkey, action, outcome) = match (route, method) {
        (Route::Resources, &Method::GET) if action == Some("schema") => {
            (None, None, Outcome::Ok { results: Some(schema::resource_schema()) })
        }
        (Route::Resources, &Method::GET) if action == Some("default") => {
            (None, None, Outcome::Ok { results: Some(Resources::default_entry()) })
        }
        (Route::Resources, &Method::GET) => {
            let outcome = list_entries(inner.resources.entries(), query);
            (None, None, add_meta_for(PATH, NAME, outcome, with_meta))
        }
        (Route::Resources, &Method::POST) => {
            let outcome = inner.resources.create(body, inner.config.duplicate_status);
            wrote(inner, &outcome);
            (body.get("name").cloned(), None, outcome)
        }
        (Route::Resources, &Method::DELETE) => {
            let outcome = inner.resources.purge();
            wrote(inner, &outcome);
            (None, None, outcome)
        }
        (Route::Resource(name), &Method::GET) => {
            let outcome = add_meta_for(PATH, NAME, inner.resources.get_entry(&name), with_meta);
            (Some(name.into()), None, project_outcome(outcome, query))
        }
        (Route::Resource(name), &Method::PUT) => {
            let outcome = inner.resources.update(&name, body);
            wrote(inner, &outcome);
            (Some(name.into()), None, outcome)
        }
        (Route::Resource(name), &Method::DELETE) => {
            let outcome = inner.resources.delete(&name);
            wrote(inner, &outcome);
            (Some(name.into()), None, outcome)
        }
        (Route::FeedPush, &Method::POST) => {
            let limit = inner.config.feed_entry_limit;
            let outcome = match inner.resources.push(body, limit, unix_now()) {
                Ok(events) => {
                    puller::emit(inner, &events);
                    Outcome::Ok { results: Some(json!({})) }
                }
                Err(refusal) => refusal,
            };
            (None, Some("dynamic"), outcome)
        }
        (Route::FeedEntryList, &Method::GET) => {
            let param = |key: &str| query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            let status_only = param("status_only").is_some_and(|v| v == "true" || v == "1");
            let outcome = match param("mkey").map(|mkey| (mkey, inner.resources.get(mkey))) {
                None => state::err(400, -651, "mkey: required"),
                Some((_, None)) => state::err(404, -3, "Entry not found."),
                Some((_, Some(r))) => {
                    Outcome::Ok { results: Some(r.state.entry_list(inner.config.feed_entry_limit, status_only)) }
                }
            };
            (param("mkey").map(Value::from), Some("entry-list"), outcome)
        }
        (Route::Resources | Route::Resource(_) | Route::FeedPush | Route::FeedEntryList, _) => {
            (None, None, state::bare(405))
        }
        (route, _) => return Err(route),
    };
    Ok(ctx.reply(&inner.db, PATH, NAME, mkey, action, outcome))
}

/// The 403 a call gets when the profile lacks its permission: `Some((path, name, action))` for the envelope.
fn forbidden(
    route: &Route,
    method: &Method,
    profile: AdminProfile,
) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    let write = *method != Method::GET;
    match route {
        Route::Collection(t) | Route::Entry(t, _) | Route::Members(t, _) | Route::Member(t, _, _)
            if !profile.address.allows(write) =>
        {
            Some(("firewall", t.as_str(), None))
        }
        Route::Banned if !profile.authgrp.allows(false) => Some(("user", "banned", Some("select"))),
        Route::BannedAction(action) if !profile.authgrp.allows(true) => Some(("user", "banned", Some(action))),
        Route::Resources | Route::Resource(_) if !profile.sysgrp.allows(write) => {
            Some(("system", "external-resource", None))
        }
        Route::FeedPush if !profile.sysgrp.allows(true) => Some(("system", "external-resource", Some("dynamic"))),
        Route::FeedEntryList if !profile.sysgrp.allows(false) => {
            Some(("system", "external-resource", Some("entry-list")))
        }
        _ => None,
    }
}

/// `with_meta=1` on a table nothing references in the emulator: `q_ref` 0.
fn add_meta_for(path: &str, name: &str, outcome: Outcome, with_meta: bool) -> Outcome {
    with_meta_fields(outcome, with_meta, |_| schema::meta_for(path, name, 0))
}

/// `with_meta=1`: each result gets FortiOS's meta fields, `q_ref` counting the objects that reference it.
fn add_meta(db: &Db, table: Table, outcome: Outcome, with_meta: bool) -> Outcome {
    with_meta_fields(outcome, with_meta, |entry| {
        let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
        schema::meta(table, db.references(name))
    })
}

/// Adds `meta(entry)` to each object of a successful list answer when `with_meta` is set.
fn with_meta_fields<M>(outcome: Outcome, with_meta: bool, meta: impl Fn(&Map<String, Value>) -> M) -> Outcome
where
    M: IntoIterator<Item = (String, Value)>,
{
    match outcome {
        Outcome::Ok { results: Some(Value::Array(items)) } if with_meta => {
            let items = items
                .into_iter()
                .map(|item| match item {
                    Value::Object(mut entry) => {
                        let fields = meta(&entry);
                        entry.extend(fields);
                        Value::Object(entry)
                    }
                    other => other,
                })
                .collect();
            Outcome::Ok { results: Some(Value::Array(items)) }
        }
        other => other,
    }
}

fn banned_action(db: &mut Db, action: &str, body: &Value) -> Outcome {
    if action == "clear_all" {
        db.banned.clear();
        return Outcome::Ok { results: Some(json!({})) };
    }
    let Some(list) = body.get("ip_addresses").and_then(Value::as_array) else {
        return state::err(400, -651, "ip_addresses: required");
    };
    let mut ips = Vec::new();
    for v in list {
        match v.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
            Some(ip) => ips.push(ip),
            None => return state::err(400, -651, "ip_addresses: invalid"),
        }
    }
    let now = unix_now();
    db.banned.retain(|b| !ips.contains(&b.ip));
    if action == "add_users" {
        let expiry = body.get("expiry").and_then(Value::as_i64).unwrap_or(0);
        for ip in ips {
            db.banned.push(BannedEntry { ip, created: now, expires: if expiry <= 0 { 0 } else { now + expiry } });
        }
    }
    Outcome::Ok { results: Some(json!({})) }
}

fn format_fields(query: &[(String, String)]) -> Option<Vec<String>> {
    query.iter().find(|(k, _)| k == "format").map(|(_, v)| v.split('|').map(str::to_string).collect())
}

fn project_outcome(outcome: Outcome, query: &[(String, String)]) -> Outcome {
    let fields = format_fields(query);
    match outcome {
        Outcome::Ok { results: Some(Value::Array(items)) } => Outcome::Ok {
            results: Some(Value::Array(items.into_iter().map(|e| state::project(e, fields.as_deref())).collect())),
        },
        other => other,
    }
}

fn list(db: &Db, table: Table, query: &[(String, String)]) -> Outcome {
    list_entries(db.entries(table), query)
}

/// A collection GET over `entries`: `filter=` groups, `start`/`count`, `format=`.
fn list_entries(entries: Vec<Map<String, Value>>, query: &[(String, String)]) -> Outcome {
    let mut groups = Vec::new();
    for (_, v) in query.iter().filter(|(k, _)| k == "filter") {
        let mut any = Vec::new();
        for expr in v.split(',') {
            match Filter::parse(expr) {
                Some(f) => any.push(f),
                None => return state::err(400, -651, "invalid filter"),
            }
        }
        groups.push(any);
    }
    let num = |key: &str| query.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse::<usize>().ok());
    let start = num("start").unwrap_or(0);
    let count = num("count").unwrap_or(usize::MAX);
    let fields = format_fields(query);
    let items: Vec<Value> = state::listing(entries.into_iter().filter(|e| state::matches_all(&groups, e)).collect())
        .into_iter()
        .skip(start)
        .take(count)
        .map(|e| state::project(e, fields.as_deref()))
        .collect();
    Outcome::Ok { results: Some(Value::Array(items)) }
}

struct EnvelopeCtx {
    method: String,
    vdom: String,
    serial: String,
    version: String,
    build: u64,
}

impl EnvelopeCtx {
    fn reply(
        &self,
        db: &Db,
        path: &str,
        name: &str,
        mkey: Option<Value>,
        action: Option<&str>,
        outcome: Outcome,
    ) -> Response {
        let mut env = Map::new();
        env.insert("http_method".into(), self.method.clone().into());
        let revision = format!("{:032x}", db.revision);
        let mut http = 200u16;
        match outcome {
            Outcome::Ok { results } => {
                if let Some(r) = results {
                    env.insert("results".into(), r);
                }
                if self.method != "GET" && action.is_none() {
                    env.insert("revision".into(), revision.into());
                    env.insert("revision_changed".into(), true.into());
                    env.insert("old_revision".into(), format!("{:032x}", db.revision.saturating_sub(1)).into());
                } else {
                    env.insert("revision".into(), revision.into());
                }
                env.insert("vdom".into(), self.vdom.clone().into());
                env.insert("path".into(), path.into());
                env.insert("name".into(), name.into());
                if let Some(a) = action {
                    env.insert("action".into(), a.into());
                }
                if let Some(m) = mkey {
                    env.insert("mkey".into(), m);
                }
                env.insert("status".into(), "success".into());
            }
            Outcome::Err { http: h, code, cli_error } => {
                http = h;
                env.insert("revision".into(), revision.into());
                env.insert("status".into(), "error".into());
                if let Some(c) = code {
                    env.insert("error".into(), c.into());
                }
                if let Some(c) = cli_error {
                    env.insert("cli_error".into(), c.into());
                }
                env.insert("vdom".into(), self.vdom.clone().into());
                env.insert("path".into(), path.into());
                env.insert("name".into(), name.into());
                if let Some(m) = mkey {
                    env.insert("mkey".into(), m);
                }
            }
        }
        env.insert("http_status".into(), http.into());
        env.insert("serial".into(), self.serial.clone().into());
        env.insert("version".into(), self.version.clone().into());
        env.insert("build".into(), self.build.into());
        let status = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(Value::Object(env))).into_response()
    }
}
