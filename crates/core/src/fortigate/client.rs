//! Transport and REST operations: the only code that knows FortiOS paths, percent-encoding and the envelope.
//!
//! Every request goes through [`Client::call`]: DELETE guard, rate limit, one attempt, envelope classification,
//! bounded retry. The typed operations below it turn "already exists" / "already gone" into [`Change::Unchanged`]
//! rather than errors.

use std::net::IpAddr;
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::groups::GroupCache;
use super::objects::{Comment, Family, ObjectName};
use super::{ClientOptions, Error, RetryPolicy};

/// Python `quote(s, safe='')` / Go `url.QueryEscape`: everything but `A-Za-z0-9-_.~` is encoded, so
/// `198.51.100.7/32` becomes `198.51.100.7%2F32`.
const MKEY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Query values: like [`MKEY`] but FortiOS's filter/format syntax stays readable (`filter=comment=@fortimisp%20`,
/// `format=name|comment|subnet`), as in Fortinet's examples.
const QUERY_VALUE: &AsciiSet = &MKEY.remove(b'=').remove(b'@').remove(b'!').remove(b'|').remove(b',').remove(b':');

/// Page size of collection GETs.
const PAGE: usize = 1000;

/// Result of an idempotent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The box changed.
    Applied,
    /// Nothing to do: already exists / already gone / already a member / not a member.
    Unchanged,
}

/// `GET /api/v2/monitor/system/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemStatus {
    /// E.g. `v7.4.4`.
    pub version: String,
    pub build: Option<u64>,
    pub serial: Option<String>,
    pub hostname: Option<String>,
}

impl SystemStatus {
    /// `v7.4.4` -> `(7, 4, 4)`, for feature detection.
    pub fn version_triple(&self) -> Option<(u32, u32, u32)> {
        let mut parts = self.version.trim_start_matches('v').split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
    }
}

/// An address or address6 entry as read from the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressEntry {
    pub name: String,
    pub family: Family,
    /// `subnet` (dotted mask or CIDR) or `ip6`, if the entry has one that parses.
    pub network: Option<IpNet>,
    pub comment: String,
}

/// An addrgrp / addrgrp6 entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub comment: String,
}

/// One banned-IP (quarantine) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BannedIp {
    pub ip: IpAddr,
    pub created: Option<DateTime<Utc>>,
    /// `None` = never expires.
    pub expires: Option<DateTime<Utc>>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Address,
    Address6,
    Addrgrp,
    Addrgrp6,
}

impl Table {
    fn as_str(self) -> &'static str {
        match self {
            Table::Address => "address",
            Table::Address6 => "address6",
            Table::Addrgrp => "addrgrp",
            Table::Addrgrp6 => "addrgrp6",
        }
    }

    pub(crate) fn addresses(family: Family) -> Table {
        match family {
            Family::V4 => Table::Address,
            Family::V6 => Table::Address6,
        }
    }

    pub(crate) fn groups(family: Family) -> Table {
        match family {
            Family::V4 => Table::Addrgrp,
            Family::V6 => Table::Addrgrp6,
        }
    }
}

/// The endpoints we call. Names are raw here and percent-encoded when the URL is built.
enum Endpoint<'a> {
    Collection(Table),
    Entry(Table, &'a str),
    Members(Table, &'a str),
    Member(Table, &'a str, &'a str),
    Monitor(&'static str),
}

/// The FortiOS response envelope (fields we read).
#[derive(Debug, Default, serde::Deserialize)]
struct Envelope {
    status: Option<String>,
    http_status: Option<u16>,
    error: Option<Value>,
    cli_error: Option<String>,
    #[serde(default)]
    results: Value,
    version: Option<String>,
    build: Option<u64>,
    serial: Option<String>,
}

/// Requests-per-second limit: each attempt takes the next slot, `1/rps` apart.
struct RateLimiter {
    interval: Option<Duration>,
    next: StdMutex<Option<Instant>>,
}

impl RateLimiter {
    fn new(rps: f64) -> Self {
        let interval = (rps.is_finite() && rps > 0.0).then(|| Duration::from_secs_f64(1.0 / rps));
        RateLimiter { interval, next: StdMutex::new(None) }
    }

    async fn acquire(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// A FortiGate REST client. Cheap to share (`Arc<Client>`); one connection pool, one rate limit.
pub struct Client {
    http: reqwest::Client,
    base: String,
    auth: HeaderValue,
    vdom: String,
    limiter: RateLimiter,
    retry: RetryPolicy,
    pub(crate) opts: ClientOptions,
    pub(crate) cache_v4: tokio::sync::Mutex<GroupCache>,
    pub(crate) cache_v6: tokio::sync::Mutex<GroupCache>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.base).field("vdom", &self.vdom).finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client (no request is sent).
    ///
    /// # Errors
    /// [`Error::CaFile`] if `ca_file` cannot be read or holds no certificate, [`Error::InvalidName`] for a prefix
    /// or group name that cannot be used, [`Error::InvalidOption`] for `max_group_members = 0` or equal group names, [`Error::Build`] if the TLS stack cannot be set up.
    pub fn new(opts: ClientOptions) -> Result<Client, Error> {
        if opts.max_group_members == 0 {
            return Err(Error::InvalidOption { key: "max_group_members", reason: "must be at least 1" });
        }
        if opts.block_group == opts.block_group6 {
            return Err(Error::InvalidOption {
                key: "block_group6",
                reason: "must differ from block_group (one name space on FortiOS)",
            });
        }
        ObjectName::parse(&format!("{}placeholder6", opts.object_prefix))?;
        for g in [&opts.block_group, &opts.block_group6] {
            ObjectName::parse(&format!("{g}-99"))?;
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!("fortimisp/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path).map_err(|e| Error::CaFile { path: path.clone(), detail: e.to_string() })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::CaFile { path: path.clone(), detail: e.to_string() })?;
            if certs.is_empty() {
                return Err(Error::CaFile { path: path.clone(), detail: "no certificate found".into() });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if !opts.verify_tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(Error::Build)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", opts.api_key.expose()))
            .map_err(|_| Error::InvalidOption { key: "api_key", reason: "not a valid http header value" })?;
        auth.set_sensitive(true);
        Ok(Client {
            http,
            base: opts.url.trim_end_matches('/').to_string(),
            auth,
            vdom: opts.vdom.clone(),
            limiter: RateLimiter::new(opts.requests_per_second),
            retry: opts.retry,
            cache_v4: tokio::sync::Mutex::new(GroupCache::default()),
            cache_v6: tokio::sync::Mutex::new(GroupCache::default()),
            opts,
        })
    }

    fn url(&self, endpoint: &Endpoint<'_>, query: &[(&str, &str)]) -> String {
        let enc = |s: &str| utf8_percent_encode(s, MKEY).to_string();
        let path = match endpoint {
            Endpoint::Collection(t) => format!("/api/v2/cmdb/firewall/{}", t.as_str()),
            Endpoint::Entry(t, n) => format!("/api/v2/cmdb/firewall/{}/{}", t.as_str(), enc(n)),
            Endpoint::Members(t, g) => {
                format!("/api/v2/cmdb/firewall/{}/{}/member", t.as_str(), enc(g))
            }
            Endpoint::Member(t, g, m) => {
                format!("/api/v2/cmdb/firewall/{}/{}/member/{}", t.as_str(), enc(g), enc(m))
            }
            Endpoint::Monitor(p) => format!("/api/v2/monitor/{p}"),
        };
        let value = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
        let mut url = format!("{}{path}?vdom={}", self.base, value(&self.vdom));
        for (k, v) in query {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.push_str(&value(v));
        }
        url
    }

    /// The one function that sends requests: guard, rate limit, attempt, classify, retry.
    async fn call(
        &self,
        method: Method,
        endpoint: Endpoint<'_>,
        query: &[(&str, &str)],
        body: Option<&Value>,
        name: Option<&str>,
    ) -> Result<Envelope, Error> {
        let names_ok = match &endpoint {
            Endpoint::Entry(_, n) | Endpoint::Members(_, n) => !n.trim().is_empty(),
            Endpoint::Member(_, g, m) => !g.trim().is_empty() && !m.trim().is_empty(),
            Endpoint::Collection(_) => method != Method::DELETE,
            Endpoint::Monitor(_) => true,
        };
        if !names_ok {
            return Err(if method == Method::DELETE {
                Error::EmptyMkey
            } else {
                Error::InvalidName { name: String::new(), reason: "empty" }
            });
        }
        let url = self.url(&endpoint, query);
        let mut attempt = 1;
        loop {
            let result = self.attempt(&method, &url, body, name).await;
            match result {
                Err(error) if error.is_retryable() && attempt < self.retry.max_attempts => {
                    let delay = self.backoff(attempt, &error);
                    tracing::warn!(message = "FortiGate request failed, retrying.", %error, %method,
                        attempt, delay_ms = delay.as_millis() as u64);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, attempt: u32, error: &Error) -> Duration {
        let delay = self.retry.backoff().delay(attempt);
        match error {
            Error::TooManyRequests { retry_after: Some(after) } => delay.max(*after),
            _ => delay,
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        name: Option<&str>,
    ) -> Result<Envelope, Error> {
        self.limiter.acquire().await;
        let mut request = self.http.request(method.clone(), url).header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(transport)?;
        classify(status, retry_after, &bytes, name)
    }

    // ---- typed cmdb operations ----

    /// `GET /api/v2/monitor/system/status`: version for feature detection (also a cheap auth check).
    pub async fn system_status(&self) -> Result<SystemStatus, Error> {
        let env = self.call(Method::GET, Endpoint::Monitor("system/status"), &[], None, None).await?;
        let version =
            env.version.clone().ok_or_else(|| Error::Protocol { detail: "system status without version".into() })?;
        Ok(SystemStatus {
            version,
            build: env.build,
            serial: env.serial.clone(),
            hostname: env.results.get("hostname").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// One address (v4) or address6 entry by name (any name, legacy `a.b.c.d/32` included).
    pub async fn get_address(&self, family: Family, name: &str) -> Result<Option<AddressEntry>, Error> {
        let endpoint = Endpoint::Entry(Table::addresses(family), name);
        match self.call(Method::GET, endpoint, &[], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|e| address_entry(family, e))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` an address (`/32`, type `ipmask`) or address6 (`/128`, type `ipprefix`) named `name`.
    /// -5 (already exists) is [`Change::Unchanged`]; the caller decides whether the existing object is ours.
    pub async fn create_address(&self, name: &ObjectName, ip: IpAddr, comment: &Comment) -> Result<Change, Error> {
        let family = Family::of(ip);
        let body = match ip {
            IpAddr::V4(v4) => {
                json!({"name": name.as_str(), "type": "ipmask", "subnet": format!("{v4}/32"),
                                     "comment": comment.as_str()})
            }
            IpAddr::V6(v6) => {
                json!({"name": name.as_str(), "type": "ipprefix", "ip6": format!("{v6}/128"),
                                     "comment": comment.as_str()})
            }
        };
        self.create(Table::addresses(family), name.as_str(), &body).await
    }

    /// `POST` to a collection; -5 = [`Change::Unchanged`].
    async fn create(&self, table: Table, name: &str, body: &Value) -> Result<Change, Error> {
        match self.call(Method::POST, Endpoint::Collection(table), &[], Some(body), Some(name)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::AlreadyExists { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// `DELETE` one address entry by name. -3/404 = [`Change::Unchanged`]; -23 = [`Error::InUse`].
    /// Does not check ownership: the domain operations do.
    pub async fn delete_address(&self, family: Family, name: &str) -> Result<Change, Error> {
        self.delete(Table::addresses(family), name).await
    }

    async fn delete(&self, table: Table, name: &str) -> Result<Change, Error> {
        match self.call(Method::DELETE, Endpoint::Entry(table, name), &[], None, Some(name)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::NotFound { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    /// All entries of the address (v4) or address6 table matching `filter` (FortiOS syntax, e.g.
    /// `comment=@fortimisp `), only the fields `name|comment|subnet` (or `ip6`), paged with `start`/`count`.
    pub(crate) async fn list_addresses(
        &self,
        family: Family,
        filter: Option<&str>,
    ) -> Result<Vec<AddressEntry>, Error> {
        let format = match family {
            Family::V4 => "name|comment|subnet",
            Family::V6 => "name|comment|ip6",
        };
        let mut out = Vec::new();
        let mut start = 0usize;
        loop {
            let (start_s, count_s) = (start.to_string(), PAGE.to_string());
            let mut query = vec![("format", format), ("start", start_s.as_str()), ("count", count_s.as_str())];
            if let Some(f) = filter {
                query.push(("filter", f));
            }
            let env =
                self.call(Method::GET, Endpoint::Collection(Table::addresses(family)), &query, None, None).await?;
            let page = env
                .results
                .as_array()
                .ok_or_else(|| Error::Protocol { detail: "collection results is not an array".into() })?;
            out.extend(page.iter().map(|e| address_entry(family, e)));
            if page.len() < PAGE {
                return Ok(out);
            }
            start += page.len();
        }
    }

    /// One group (`None` if missing).
    pub async fn get_group(&self, family: Family, name: &str) -> Result<Option<Group>, Error> {
        let endpoint = Endpoint::Entry(Table::groups(family), name);
        match self.call(Method::GET, endpoint, &[], None, Some(name)).await {
            Ok(env) => Ok(first_result(&env).map(|g| Group {
                name: str_field(g, "name").unwrap_or(name).to_string(),
                members: member_names(g.get("member")),
                comment: str_field(g, "comment").unwrap_or_default().to_string(),
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST` a group with initial members; -5 = [`Change::Unchanged`].
    pub async fn create_group(
        &self,
        family: Family,
        name: &str,
        members: &[&str],
        comment: &str,
    ) -> Result<Change, Error> {
        let member: Vec<Value> = members.iter().map(|m| json!({"name": m})).collect();
        let body = json!({"name": name, "member": member, "comment": comment});
        self.create(Table::groups(family), name, &body).await
    }

    /// Member names of a group via the child table (`GET …/addrgrp/{g}/member`).
    pub async fn group_members(&self, family: Family, group: &str) -> Result<Vec<String>, Error> {
        let env =
            self.call(Method::GET, Endpoint::Members(Table::groups(family), group), &[], None, Some(group)).await?;
        Ok(member_names(Some(&env.results)))
    }

    /// Whether `member` is in `group` (`GET …/member/{m}`, 404 = no).
    pub async fn is_member(&self, family: Family, group: &str, member: &str) -> Result<bool, Error> {
        let endpoint = Endpoint::Member(Table::groups(family), group, member);
        match self.call(Method::GET, endpoint, &[], None, Some(member)).await {
            Ok(env) => Ok(first_result(&env).is_some()),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Child-table add (`POST …/addrgrp/{g}/member {"name": m}`). -5 = [`Change::Unchanged`]; -4/-52 =
    /// [`Error::Full`] naming the group; a missing group or member = [`Error::NotFound`].
    pub async fn add_member(&self, family: Family, group: &str, member: &str) -> Result<Change, Error> {
        let body = json!({"name": member});
        let endpoint = Endpoint::Members(Table::groups(family), group);
        match self.call(Method::POST, endpoint, &[], Some(&body), Some(member)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::AlreadyExists { .. }) => Ok(Change::Unchanged),
            Err(Error::Full { code, .. }) => Err(Error::Full { name: group.to_string(), code }),
            Err(e) => Err(e),
        }
    }

    /// Child-table remove (`DELETE …/addrgrp/{g}/member/{m}`). -3/404 = [`Change::Unchanged`].
    pub async fn remove_member(&self, family: Family, group: &str, member: &str) -> Result<Change, Error> {
        let endpoint = Endpoint::Member(Table::groups(family), group, member);
        match self.call(Method::DELETE, endpoint, &[], None, Some(member)).await {
            Ok(_) => Ok(Change::Applied),
            Err(Error::NotFound { .. }) => Ok(Change::Unchanged),
            Err(e) => Err(e),
        }
    }

    // ---- banned-IP (quarantine) backend ----

    /// `POST /api/v2/monitor/user/banned/add_users`; `expiry` `None` = no expiry (0).
    pub async fn ban(&self, ip: IpAddr, expiry: Option<Duration>) -> Result<(), Error> {
        let secs = expiry.map_or(0, |d| d.as_secs().max(1));
        let body = json!({"ip_addresses": [ip.to_string()], "expiry": secs});
        self.banned_action("user/banned/add_users", ip, &body).await
    }

    /// `POST /api/v2/monitor/user/banned/clear_users`.
    pub async fn unban(&self, ip: IpAddr) -> Result<(), Error> {
        let body = json!({"ip_addresses": [ip.to_string()]});
        self.banned_action("user/banned/clear_users", ip, &body).await
    }

    async fn banned_action(&self, action: &'static str, ip: IpAddr, body: &Value) -> Result<(), Error> {
        let ip = ip.to_string();
        self.call(Method::POST, Endpoint::Monitor(action), &[], Some(body), Some(&ip)).await.map(drop)
    }

    /// `GET /api/v2/monitor/user/banned`.
    pub async fn list_banned(&self) -> Result<Vec<BannedIp>, Error> {
        let env = self.call(Method::GET, Endpoint::Monitor("user/banned"), &[], None, None).await?;
        let epoch = |v: Option<&Value>| {
            v.and_then(Value::as_i64).filter(|s| *s > 0).and_then(|s| DateTime::from_timestamp(s, 0))
        };
        Ok(env
            .results
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|b| {
                        Some(BannedIp {
                            ip: str_field(b, "ip_address")?.parse().ok()?,
                            created: epoch(b.get("created")),
                            expires: epoch(b.get("expires")),
                            source: str_field(b, "source").map(str::to_string),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else {
        Error::Transport(e)
    }
}

/// Turns one HTTP answer into the envelope or a typed error. Decided on the FortiOS `error` code first; the HTTP
/// status only where there is no code.
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8], name: Option<&str>) -> Result<Envelope, Error> {
    match status {
        401 => return Err(Error::Unauthorized),
        429 => return Err(Error::TooManyRequests { retry_after }),
        _ => {}
    }
    let envelope: Option<Envelope> = match serde_json::from_slice::<Value>(body) {
        // Global scope answers an array of per-VDOM envelopes; we use one VDOM.
        Ok(Value::Array(items)) => items.into_iter().next().and_then(|v| serde_json::from_value(v).ok()),
        Ok(v @ Value::Object(_)) => serde_json::from_value(v).ok(),
        _ => None,
    };
    let Some(env) = envelope else {
        return Err(match status {
            403 => Error::Forbidden { status, code: None },
            200..=299 => Error::Protocol { detail: format!("http {status} without a json envelope") },
            _ => Error::Http { status },
        });
    };
    let code = env.error.as_ref().and_then(|e| match e {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let success = match env.status.as_deref() {
        Some(s) => s == "success",
        None => code.is_none() && (200..300).contains(&status),
    };
    if success && code.is_none() {
        return Ok(env);
    }
    let name = name.unwrap_or_default().to_string();
    let http = env.http_status.unwrap_or(status);
    Err(match code {
        Some(-5) => Error::AlreadyExists { name },
        Some(-3) => Error::NotFound { name },
        Some(-23) => Error::InUse { name },
        Some(c @ (-4 | -52)) => Error::Full { name, code: c },
        Some(c @ (-14 | -37)) => Error::Forbidden { status: http, code: Some(c) },
        Some(c @ (-163 | -164)) => Error::NameClash { name, code: Some(c) },
        None if http == 404 || status == 404 => Error::NotFound { name },
        None if http == 403 || status == 403 => Error::Forbidden { status: http, code: None },
        code => Error::Api { status: http, code, name: (!name.is_empty()).then_some(name), cli_error: env.cli_error },
    })
}

/// Reads one answer as every request does (classification, then the typed readers on success). For the fuzz
/// targets and the bad-input tests; re-exported as `fortigate::classify_response`.
pub(crate) fn read_response(status: u16, body: &[u8]) -> Result<usize, Error> {
    let env = classify(status, None, body, Some("fuzz"))?;
    let mut seen = member_names(Some(&env.results)).len();
    if let Some(first) = first_result(&env) {
        for family in [Family::V4, Family::V6] {
            seen += usize::from(address_entry(family, first).network.is_some());
        }
        seen += member_names(first.get("member")).len();
    }
    Ok(seen)
}

fn first_result(env: &Envelope) -> Option<&Value> {
    match &env.results {
        Value::Array(items) => items.first(),
        Value::Object(_) => Some(&env.results),
        _ => None,
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn member_names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|e| str_field(e, "name").map(str::to_string)).collect())
        .unwrap_or_default()
}

/// `a.b.c.d m.m.m.m` (what FortiOS returns), `a.b.c.d/len`, or an `ip6` prefix.
pub(crate) fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Some((ip, mask)) = s.split_once(' ') {
        let ip: IpAddr = ip.parse().ok()?;
        let mask: IpAddr = mask.trim().parse().ok()?;
        return IpNet::with_netmask(ip, mask).ok();
    }
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn address_entry(family: Family, e: &Value) -> AddressEntry {
    let field = match family {
        Family::V4 => "subnet",
        Family::V6 => "ip6",
    };
    AddressEntry {
        name: str_field(e, "name").unwrap_or_default().to_string(),
        family,
        network: str_field(e, field).and_then(parse_network),
        comment: str_field(e, "comment").unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_error_code_not_status() {
        let env = |status: &str, http: u16, code: Option<i64>| {
            let mut v = json!({"http_method": "POST", "status": status, "http_status": http, "vdom": "root"});
            if let Some(c) = code {
                v["error"] = c.into();
            }
            serde_json::to_vec(&v).expect("json")
        };
        type Check = fn(&Result<Envelope, Error>) -> bool;
        let cases: Vec<(u16, Vec<u8>, Check)> = vec![
            (200, env("success", 200, None), |r| r.is_ok()),
            (500, env("error", 500, Some(-5)), |r| matches!(r, Err(Error::AlreadyExists { .. }))),
            (424, env("error", 424, Some(-5)), |r| matches!(r, Err(Error::AlreadyExists { .. }))),
            (404, env("error", 404, Some(-3)), |r| matches!(r, Err(Error::NotFound { .. }))),
            (404, env("error", 404, None), |r| matches!(r, Err(Error::NotFound { .. }))),
            (500, env("error", 500, Some(-23)), |r| matches!(r, Err(Error::InUse { .. }))),
            (500, env("error", 500, Some(-52)), |r| matches!(r, Err(Error::Full { code: -52, .. }))),
            (500, env("error", 500, Some(-4)), |r| matches!(r, Err(Error::Full { code: -4, .. }))),
            (403, env("error", 403, Some(-14)), |r| matches!(r, Err(Error::Forbidden { .. }))),
            (500, env("error", 500, Some(-163)), |r| matches!(r, Err(Error::NameClash { .. }))),
            (
                500,
                env("error", 500, Some(-651)),
                |r| matches!(r, Err(e @ Error::Api { code: Some(-651), .. }) if !e.is_retryable()),
            ),
            (401, b"<html>401</html>".to_vec(), |r| matches!(r, Err(Error::Unauthorized))),
            (401, env("error", 401, None), |r| matches!(r, Err(Error::Unauthorized))),
            (429, Vec::new(), |r| matches!(r, Err(e @ Error::TooManyRequests { .. }) if e.is_retryable())),
            (
                503,
                b"Service Unavailable".to_vec(),
                |r| matches!(r, Err(e @ Error::Http { status: 503 }) if e.is_retryable()),
            ),
            (500, env("error", 500, None), |r| matches!(r, Err(e @ Error::Api { .. }) if e.is_retryable())),
            (200, b"not json".to_vec(), |r| matches!(r, Err(Error::Protocol { .. }))),
            (200, br#"[{"status":"success","results":[]}]"#.to_vec(), |r| r.is_ok()),
            (200, br#"{"status":"error","error":"-5"}"#.to_vec(), |r| matches!(r, Err(Error::AlreadyExists { .. }))),
        ];
        for (i, (status, body, check)) in cases.into_iter().enumerate() {
            let r = classify(status, None, &body, Some("n"));
            assert!(check(&r), "case {i}: status {status}: {:?}", r.as_ref().err());
        }
    }

    #[test]
    fn networks_parse_in_both_forms() {
        let cases = [
            ("198.51.100.7 255.255.255.255", Some("198.51.100.7/32")),
            ("10.0.0.0 255.0.0.0", Some("10.0.0.0/8")),
            ("198.51.100.7/32", Some("198.51.100.7/32")),
            ("2001:db8::7/128", Some("2001:db8::7/128")),
            ("10.0.0.0 255.0.255.0", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_network(s).map(|n| n.to_string()).as_deref(), want, "{s:?}");
        }
    }

    #[test]
    fn mkeys_encode_with_no_safe_characters() {
        let cases = [
            ("198.51.100.7/32", "198.51.100.7%2F32"),
            ("misp-198.51.100.7", "misp-198.51.100.7"),
            ("misp-2001:db8::7", "misp-2001%3Adb8%3A%3A7"),
            ("a b", "a%20b"),
        ];
        for (raw, want) in cases {
            assert_eq!(utf8_percent_encode(raw, MKEY).to_string(), want);
        }
    }

    #[test]
    fn versions_parse() {
        let s = |v: &str| SystemStatus { version: v.into(), build: None, serial: None, hostname: None };
        assert_eq!(s("v7.4.4").version_triple(), Some((7, 4, 4)));
        assert_eq!(s("v6.2").version_triple(), Some((6, 2, 0)));
        assert_eq!(s("garbage").version_triple(), None);
    }
}
