//! [`Client`]: the MISP REST client.
//!
//! One `reqwest` client per [`Client`], JSON in and out, `Authorization: <key>` on every request. Each public
//! operation is one MISP call (or one call per batch/page) wrapped in the retry loop of [`Client::send`]:
//! retryable errors ([`Error::is_retryable`]) are retried up to [`RetryPolicy::max_attempts`] with jittered
//! exponential backoff; a 429 waits for `X-Rate-Limit-Reset` when that is within
//! [`RetryPolicy::max_rate_limit_wait`] and fails fast otherwise. Writes (sightings, feed fetches) are only
//! resent when the server certainly did not act on them ([`Error::request_not_processed`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::error::Error;
use super::indicator::{parse_network, AttributeKind, Indicator};
use super::query::SearchQuery;
use super::wire;
use crate::metrics::RequestObserver;
use crate::secret::ApiKey;

/// How the client retries. `Default` suits production; tests shrink the delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// A 429 whose `X-Rate-Limit-Reset` is longer than this fails with [`Error::RateLimited`] instead of waiting.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..Self::default() }
    }

    /// The delay after failed attempt number `attempt` (1-based): `initial · 2^(attempt-1)`, capped at
    /// `max_backoff`, then a uniform draw from its upper half ("equal jitter") so clients do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::Backoff::new(self.initial_backoff, self.max_backoff).delay(attempt)
    }
}

/// Everything needed to build a [`Client`]; mirrors the `[misp]` config keys it uses.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://misp.example.org` (a path prefix is kept).
    pub url: String,
    /// The MISP auth key.
    pub api_key: ApiKey,
    /// Extra PEM trust roots on top of the system roots (`misp.ca_file`).
    pub ca_file: Option<PathBuf>,
    /// `false` accepts any certificate (`misp.verify_tls`); the caller logs the warning.
    pub verify_tls: bool,
    /// Whole-request timeout (`misp.timeout`).
    pub timeout: Duration,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Values per restSearch in [`Client::search_values`] (MISP turns the list into one SQL `IN`); default
    /// [`MAX_VALUES_PER_SEARCH`].
    pub batch_size: usize,
    /// `limit` of paged syncs.
    pub page_size: u32,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Times every request (`fortimisp_request_duration_seconds{server="misp"}`); `None`: not timed (the
    /// hand-run commands).
    pub requests: Option<RequestObserver>,
}

/// Values per restSearch in [`Client::search_values`] by default. It is also the largest on-demand batch of the
/// decision stage, so that one batch is one request: run one after the other, smaller chunks would multiply the
/// time a batch takes by their number (eight seconds for 2000 values with MISP answering in one). MISP turns the
/// list into one SQL `IN` on the indexed `value1`/`value2` columns; lists in the thousands have timed out
/// (MISP/MISP#8267) or exceeded `max_allowed_packet` (MISP/MISP#2365), hence a thousand and not more.
pub const MAX_VALUES_PER_SEARCH: usize = 1000;

impl ClientOptions {
    /// Options with the defaults: verify TLS, 10 s timeout, batches of [`MAX_VALUES_PER_SEARCH`] values, pages of
    /// 5000.
    pub fn new(url: impl Into<String>, api_key: ApiKey) -> Self {
        ClientOptions {
            url: url.into(),
            api_key,
            ca_file: None,
            verify_tls: true,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            batch_size: MAX_VALUES_PER_SEARCH,
            page_size: 5000,
            retry: RetryPolicy::default(),
            requests: None,
        }
    }
}

/// `GET /servers/getVersion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// e.g. `2.5.1`.
    pub version: String,
    pub pymisp_recommended_version: Option<String>,
    pub perm_sync: bool,
    pub perm_sighting: bool,
}

/// The role of the key's user (`GET /users/view/me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    pub name: String,
    /// Needed for `/sightings/add`.
    pub perm_sighting: bool,
    /// Needed for feed actions.
    pub perm_site_admin: bool,
    pub enforce_rate_limit: bool,
    /// restSearch calls per 15 minutes when `enforce_rate_limit`.
    pub rate_limit_count: Option<u64>,
}

/// The key's user (`GET /users/view/me`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub id: u64,
    pub email: String,
    pub org_id: Option<u64>,
    pub role: RoleInfo,
}

/// Result of the start-up check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: VersionInfo,
    pub user: UserInfo,
}

/// One restSearch answer (a page of a sync, or a batch of a lookup).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    /// The 1-based page number (0 for unpaged searches).
    pub page: u32,
    /// Attributes that named an IP or network.
    pub indicators: Vec<Indicator>,
    /// Attributes MISP returned.
    pub returned: usize,
    /// Returned attributes with no usable IP (bad value, non-IP type, malformed entry).
    pub skipped: usize,
    /// `X-Skipped-Elements-Count`: attributes MISP dropped after paging (warninglists).
    pub skipped_by_server: u64,
    /// `X-Result-Count`, if sent.
    pub result_count: Option<u64>,
    /// Highest `Attribute.id` seen.
    pub max_id: Option<u64>,
    /// Highest `Attribute.timestamp` seen (the next incremental sync starts from here minus an overlap).
    pub max_timestamp: Option<i64>,
    /// No page follows.
    pub is_last: bool,
}

/// Outcome of `feeds/fetchFromAllFeeds` or `feeds/fetchFromFeed/{id}` (MISP's `result` text, classified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOutcome {
    /// "Pull queued for background execution."
    Queued,
    /// "No feed enabled."
    NoFeedEnabled,
    /// "Fetching the feed has successfully completed." (no background workers: ran inline)
    Completed,
    /// "Feed is currently not enabled. Make sure you enable it." (single feed)
    FeedDisabled,
    /// "Fetching the feed has failed." (single feed, inline)
    Failed,
    /// Any other `result` text.
    Other(String),
}

impl FeedOutcome {
    fn from_result(text: &str) -> Self {
        let t = text.trim();
        if t.starts_with("Pull queued") {
            FeedOutcome::Queued
        } else if t.starts_with("No feed enabled") {
            FeedOutcome::NoFeedEnabled
        } else if t.starts_with("Fetching the feed has successfully completed") {
            FeedOutcome::Completed
        } else if t.starts_with("Feed is currently not enabled") {
            FeedOutcome::FeedDisabled
        } else if t.starts_with("Fetching the feed has failed") {
            FeedOutcome::Failed
        } else {
            FeedOutcome::Other(t.to_string())
        }
    }
}

/// Outcome of `/sightings/add`. MISP answers HTTP 200 either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SightingOutcome {
    /// A `Sighting` came back (the last one saved when several attributes matched).
    Added { sighting_id: Option<String>, attribute_id: Option<u64>, event_id: Option<u64> },
    /// No `Sighting` key: MISP's message, e.g. "Could not add the Sighting. Reason: No valid attributes found
    /// that match the criteria."
    NotAdded { message: String },
}

/// A warninglist that matched a value in `/warninglists/checkValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarninglistHit {
    pub id: Option<u64>,
    pub name: String,
    /// The entry that matched (e.g. `10.0.0.0/8`), on MISP versions that send it.
    pub matched: Option<String>,
}

/// Whether a request may be resent after any retryable error, or only when the server did not act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
}

struct Reply {
    headers: HeaderMap,
    /// A body already checked to be JSON.
    bytes: bytes::Bytes,
}

impl Reply {
    fn json(&self, path: &str) -> Result<Value, Error> {
        serde_json::from_slice(&self.bytes).map_err(|e| Error::Decode { path: path.into(), reason: e.to_string() })
    }
}

/// The MISP REST client. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    batch_size: usize,
    page_size: u32,
    retry: RetryPolicy,
    requests: Option<RequestObserver>,
}

impl Client {
    /// Builds the client: validates the URL, loads `ca_file`, applies `verify_tls`. Makes no request.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], [`Error::CaFileRead`], [`Error::CaFileInvalid`], [`Error::Build`].
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        let parsed = url::Url::parse(&options.url)
            .map_err(|e| Error::InvalidUrl { url: options.url.clone(), reason: e.to_string() })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::InvalidUrl { url: options.url.clone(), reason: "scheme must be http or https".into() });
        }
        let mut key = HeaderValue::from_str(options.api_key.expose()).map_err(|_| Error::InvalidUrl {
            url: options.url.clone(),
            reason: "the api key holds characters not allowed in an http header".into(),
        })?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, key);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .default_headers(headers)
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fortimisp/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|source| Error::CaFileRead { path: path.clone(), source })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| Error::CaFileInvalid { path: path.clone() })?;
            if certs.is_empty() {
                return Err(Error::CaFileInvalid { path: path.clone() });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if !options.verify_tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(Error::Build)?;
        Ok(Client {
            http,
            base: options.url.trim_end_matches('/').to_string(),
            batch_size: options.batch_size.max(1),
            page_size: options.page_size.max(1),
            retry: options.retry,
            requests: options.requests,
        })
    }

    /// The base URL (never holds the key).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /servers/getVersion`: proves the URL and the key.
    pub async fn version(&self) -> Result<VersionInfo, Error> {
        let path = "/servers/getVersion";
        let reply = self.send(Method::GET, path, None, Effect::Read).await?;
        let v: wire::WireVersion = decode(path, reply.json(path)?)?;
        Ok(VersionInfo {
            version: v.version,
            pymisp_recommended_version: v.pymisp_recommended_version,
            perm_sync: v.perm_sync,
            perm_sighting: v.perm_sighting,
        })
    }

    /// `GET /users/view/me`: the user and role permissions of the key.
    pub async fn me(&self) -> Result<UserInfo, Error> {
        let path = "/users/view/me";
        let reply = self.send(Method::GET, path, None, Effect::Read).await?;
        let me: wire::WireMe = decode(path, reply.json(path)?)?;
        Ok(UserInfo {
            id: me.user.id,
            email: me.user.email,
            org_id: me.user.org_id,
            role: RoleInfo {
                name: me.role.name,
                perm_sighting: me.role.perm_sighting,
                perm_site_admin: me.role.perm_site_admin,
                enforce_rate_limit: me.role.enforce_rate_limit,
                rate_limit_count: me.role.rate_limit_count,
            },
        })
    }

    /// The start-up check: [`Client::version`] then [`Client::me`]; fails with [`Error::MissingPermission`] when
    /// `need_sighting` (config `sightings = true`) and the role lacks `perm_sighting`, or `need_site_admin`
    /// (feed updates) and it lacks `perm_site_admin`.
    pub async fn check(&self, need_sighting: bool, need_site_admin: bool) -> Result<ServerInfo, Error> {
        let version = self.version().await?;
        let user = self.me().await?;
        if need_sighting && !user.role.perm_sighting {
            return Err(Error::MissingPermission { role: user.role.name, permission: "perm_sighting" });
        }
        if need_site_admin && !user.role.perm_site_admin {
            return Err(Error::MissingPermission { role: user.role.name, permission: "perm_site_admin" });
        }
        Ok(ServerInfo { version, user })
    }

    /// One restSearch with the query as given (no paging added).
    pub async fn search(&self, query: &SearchQuery) -> Result<Page, Error> {
        self.search_body(query.to_body(None), 0, None).await
    }

    /// Looks up IPs: batches of `batch_size` values, one restSearch each, run one after the other. Returns the
    /// indicators whose network contains one of `ips` (composites match by their IP half; no CIDR containment
    /// happens on the server, so CIDR indicators come from the mirror, not from here).
    pub async fn search_values(&self, base: &SearchQuery, ips: &[IpAddr]) -> Result<Vec<Indicator>, Error> {
        let mut seen = HashSet::new();
        let unique: Vec<IpAddr> = ips.iter().copied().filter(|ip| seen.insert(*ip)).collect();
        let mut out = Vec::new();
        for chunk in unique.chunks(self.batch_size) {
            // Display of Ipv6Addr is the RFC 5952 compressed form, which is what MISP stores and matches.
            let query = base.clone().values(chunk.iter().map(IpAddr::to_string));
            let page = self.search(&query).await?;
            out.extend(page.indicators.into_iter().filter(|ind| chunk.iter().any(|ip| ind.network.contains(ip))));
        }
        Ok(out)
    }

    /// Page `page` (1-based) of a sync with `limit = page_size` and a stable order (default `Attribute.id asc`).
    pub async fn search_page(&self, query: &SearchQuery, page: u32) -> Result<Page, Error> {
        let page = page.max(1);
        self.search_body(query.to_body(Some((self.page_size, page))), page, Some(self.page_size)).await
    }

    /// All pages of `query`, one request per [`Pager::next_page`] call.
    pub fn pages(&self, query: SearchQuery) -> Pager<'_> {
        Pager { client: self, query, next: 1, done: false }
    }

    /// `POST /feeds/fetchFromAllFeeds` (site admin). Not resent after a timeout: the pull may be running.
    pub async fn fetch_all_feeds(&self) -> Result<FeedOutcome, Error> {
        self.feed_call("/feeds/fetchFromAllFeeds".to_string()).await
    }

    /// `POST /feeds/fetchFromFeed/{id}` (site admin). An unknown id is [`Error::NotFound`].
    pub async fn fetch_feed(&self, feed_id: u64) -> Result<FeedOutcome, Error> {
        self.feed_call(format!("/feeds/fetchFromFeed/{feed_id}")).await
    }

    async fn feed_call(&self, path: String) -> Result<FeedOutcome, Error> {
        let reply = self.send(Method::POST, &path, Some(&json!({})), Effect::Write).await?;
        match reply.json(&path)?.get("result") {
            Some(Value::String(text)) => Ok(FeedOutcome::from_result(text)),
            _ => Err(Error::InvalidResponse { path, reason: "no \"result\" text".into() }),
        }
    }

    /// `POST /sightings/add` with `{"value": ip, "type": "0", "source": source}`: one sighting on every attribute
    /// whose value (either half) is `ip`. Success is decided by the `Sighting` key, not the HTTP status.
    pub async fn add_sighting(&self, ip: IpAddr, source: &str) -> Result<SightingOutcome, Error> {
        let path = "/sightings/add";
        let body = json!({"value": ip.to_string(), "type": "0", "source": source});
        let reply = self.send(Method::POST, path, Some(&body), Effect::Write).await?;
        let body = reply.json(path)?;
        if let Some(sighting) = body.get("Sighting") {
            // One object, or a list when several were saved: report the last one.
            let last = match sighting {
                Value::Array(list) => list.last().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            let s: wire::WireSighting = if last.is_null() {
                wire::WireSighting { id: None, attribute_id: None, event_id: None }
            } else {
                decode(path, last)?
            };
            return Ok(SightingOutcome::Added {
                sighting_id: s.id,
                attribute_id: s.attribute_id,
                event_id: s.event_id,
            });
        }
        let message =
            ["message", "errors", "name"].iter().find_map(|k| body.get(*k).and_then(Value::as_str)).map(str::to_string);
        match message {
            Some(message) => Ok(SightingOutcome::NotAdded { message }),
            None => {
                Err(Error::InvalidResponse { path: path.into(), reason: "neither \"Sighting\" nor \"message\"".into() })
            }
        }
    }

    /// `POST /warninglists/checkValue`: which of `ips` hit an enabled warninglist. Misses are absent from the map.
    pub async fn check_warninglist(&self, ips: &[IpAddr]) -> Result<HashMap<IpAddr, Vec<WarninglistHit>>, Error> {
        let path = "/warninglists/checkValue";
        if ips.is_empty() {
            return Ok(HashMap::new());
        }
        let values: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let reply = self.send(Method::POST, path, Some(&json!(values)), Effect::Read).await?;
        let parsed: wire::WireCheckValue = decode(path, reply.json(path)?)?;
        let mut out = HashMap::new();
        if let wire::WireCheckValue::Hits(map) = parsed {
            for (value, hits) in map {
                let Some(ip) = value.parse::<IpAddr>().ok() else {
                    debug!(message = "Ignoring a checkValue key that is not an IP.", value = %value);
                    continue;
                };
                let hits =
                    hits.into_iter().map(|h| WarninglistHit { id: h.id, name: h.name, matched: h.matched }).collect();
                out.insert(ip, hits);
            }
        }
        Ok(out)
    }

    async fn search_body(&self, body: Value, page: u32, limit: Option<u32>) -> Result<Page, Error> {
        let path = "/attributes/restSearch";
        let reply = self.send(Method::POST, path, Some(&body), Effect::Read).await?;
        let result_count = header_u64(&reply.headers, "x-result-count");
        let skipped_by_server = header_u64(&reply.headers, "x-skipped-elements-count").unwrap_or(0);
        let mut out =
            page_from_body(path, &reply.bytes, Page { page, skipped_by_server, result_count, ..Page::default() })?;
        out.is_last = match limit {
            // enforceWarninglist drops rows after LIMIT: count them as part of the page.
            Some(limit) => (out.returned as u64).saturating_add(skipped_by_server) < u64::from(limit),
            None => true,
        };
        Ok(out)
    }

    /// Sends one request with the retry policy applied.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>, effect: Effect) -> Result<Reply, Error> {
        let mut attempt = 1u32;
        loop {
            let started = std::time::Instant::now();
            let result = self.send_once(method.clone(), path, body).await;
            if let Some(requests) = &self.requests {
                // Every error answer counts: MISP answers nothing but 2xx in normal work.
                requests.observe(result.is_err(), started.elapsed());
            }
            let error = match result {
                Ok(reply) => return Ok(reply),
                Err(error) => error,
            };
            let may_retry = match effect {
                Effect::Read => error.is_retryable(),
                Effect::Write => error.request_not_processed(),
            };
            if !may_retry || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            let delay = match &error {
                Error::RateLimited { reset: Some(reset), .. } if !reset.is_zero() => {
                    if *reset > self.retry.max_rate_limit_wait {
                        return Err(error);
                    }
                    *reset
                }
                _ => self.retry.backoff(attempt),
            };
            warn!(
                message = "MISP request failed, retrying.",
                error = %error,
                path = path,
                attempt = attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, Error> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            // serde_json::to_vec of a Value cannot fail (string keys only).
            request = request.body(serde_json::to_vec(body).unwrap_or_default());
        }
        let response = request.send().await.map_err(|e| transport_error(path, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport_error(path, e))?;
        if status.is_success() {
            // Validate without building a tree; operations parse into their own types afterwards.
            return match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => Ok(Reply { headers, bytes }),
                Err(_) => Err(Error::Decode { path: path.into(), reason: body_hint(&bytes) }),
            };
        }
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        Err(status_error(path, status, &headers, json.as_ref(), &bytes))
    }
}

/// Iterates the pages of a sync. Stops after the last page or the first error (the client already retried).
#[derive(Debug)]
pub struct Pager<'c> {
    client: &'c Client,
    query: SearchQuery,
    next: u32,
    done: bool,
}

impl<'c> Pager<'c> {
    /// The next page, or `None` after the last one. After an error, calling again retries the same page.
    pub async fn next_page(&mut self) -> Option<Result<Page, Error>> {
        if self.done {
            return None;
        }
        let result = self.client.search_page(&self.query, self.next).await;
        if let Ok(page) = &result {
            self.done = page.is_last;
            self.next += 1;
        }
        Some(result)
    }

    /// The page number the next call will ask for.
    pub fn next_page_number(&self) -> u32 {
        self.next
    }

    /// The pages as a `Stream` (ends after the last page; an error is yielded, then the stream ends).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Page, Error>> + 'c {
        futures::stream::unfold(Some(self), |pager| async move {
            let mut pager = pager?;
            let item = pager.next_page().await?;
            let next = if item.is_ok() { Some(pager) } else { None };
            Some((item, next))
        })
    }
}

/// Reads a restSearch answer body into `out`. Fast path: one typed pass. A page with a malformed attribute (or
/// `{"response": []}`) takes the lenient path, which parses attribute by attribute and skips the bad ones.
fn page_from_body(path: &str, bytes: &[u8], mut out: Page) -> Result<Page, Error> {
    let attributes: Vec<Result<wire::WireAttribute, serde_json::Error>> =
        match serde_json::from_slice::<wire::SearchEnvelope>(bytes) {
            Ok(envelope) => envelope.response.attribute.into_iter().map(Ok).collect(),
            Err(_) => {
                let body: Value = serde_json::from_slice(bytes)
                    .map_err(|e| Error::Decode { path: path.into(), reason: e.to_string() })?;
                lenient_attributes(path, body)?.into_iter().map(serde_json::from_value).collect()
            }
        };
    out.returned = attributes.len();
    out.indicators.reserve(attributes.len());
    for attr in attributes {
        let attr = match attr {
            Ok(attr) => attr,
            Err(error) => {
                debug!(message = "Skipping a malformed attribute.", error = %error);
                out.skipped += 1;
                continue;
            }
        };
        out.max_id = out.max_id.max(Some(attr.id));
        out.max_timestamp = out.max_timestamp.max(Some(attr.timestamp));
        match indicator_from(attr) {
            Some(ind) => out.indicators.push(ind),
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// Decodes a restSearch answer body the way [`Client::search_page`] does (paging fields left at their defaults).
/// For the fuzz targets and the bad-input tests.
#[doc(hidden)]
pub fn decode_search_body(bytes: &[u8]) -> Result<Page, Error> {
    page_from_body("/attributes/restSearch", bytes, Page::default())
}

fn indicator_from(attr: wire::WireAttribute) -> Option<Indicator> {
    let kind = AttributeKind::from_misp_type(&attr.kind);
    let network = kind.ip_part(&attr.value).and_then(parse_network)?;
    let mut tags: Vec<String> = attr.tag.into_iter().map(|t| t.name).collect();
    for event_tag in attr.event_tag {
        if let Some(tag) = event_tag.tag {
            if !tags.contains(&tag.name) {
                tags.push(tag.name);
            }
        }
    }
    Some(Indicator {
        network,
        kind,
        attribute_id: attr.id,
        event_id: attr.event_id,
        uuid: attr.uuid,
        to_ids: attr.to_ids,
        deleted: attr.deleted,
        timestamp: attr.timestamp,
        tags,
    })
}

/// `response.Attribute` as raw values; `{"response": []}` (some versions, empty result) is an empty list.
fn lenient_attributes(path: &str, body: Value) -> Result<Vec<Value>, Error> {
    match body {
        Value::Object(mut top) => match top.remove("response") {
            Some(Value::Object(mut response)) => match response.remove("Attribute") {
                Some(Value::Array(list)) => Ok(list),
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(_) => Err(invalid(path, "response.Attribute is not a list")),
            },
            Some(Value::Array(list)) if list.is_empty() => Ok(Vec::new()),
            _ => Err(invalid(path, "no \"response\" object")),
        },
        _ => Err(invalid(path, "body is not an object")),
    }
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, body: Value) -> Result<T, Error> {
    serde_json::from_value(body).map_err(|e| invalid(path, &e.to_string()))
}

fn invalid(path: &str, reason: &str) -> Error {
    Error::InvalidResponse { path: path.into(), reason: reason.into() }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A short, safe description of a non-JSON body (its start, at most 80 chars, one line).
fn body_hint(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text.chars().filter(|c| !c.is_control()).take(80).collect();
    if line.is_empty() {
        "empty body".into()
    } else {
        format!("body starts {line:?}")
    }
}

/// MISP's error text: `message`, else `name`, else a hint of the raw body.
fn error_text(json: Option<&Value>, bytes: &[u8]) -> String {
    json.and_then(|j| j.get("message").or_else(|| j.get("name")).or_else(|| j.get("errors")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body_hint(bytes))
}

fn status_error(path: &str, status: StatusCode, headers: &HeaderMap, json: Option<&Value>, bytes: &[u8]) -> Error {
    let path = path.to_string();
    let code = status.as_u16();
    match code {
        429 => Error::RateLimited { path, reset: header_u64(headers, "x-rate-limit-reset").map(Duration::from_secs) },
        401 => Error::Unauthorized { path, status: code, reason: error_text(json, bytes) },
        403 => {
            let reason = error_text(json, bytes);
            // MISP uses 403 both for a refused key and for a missing permission; only the text tells them apart.
            let lower = reason.to_ascii_lowercase();
            if lower.contains("authentication failed") || lower.contains("auth key") || lower.contains("authkey") {
                Error::Unauthorized { path, status: code, reason }
            } else {
                Error::Forbidden { path, reason }
            }
        }
        404 => Error::NotFound { path, reason: error_text(json, bytes) },
        405 => Error::NotAllowed { path, reason: error_text(json, bytes) },
        300..=399 => {
            let location = headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or("?");
            Error::Rejected {
                path,
                status: code,
                reason: format!("redirected to {location}: check misp.url and the api key"),
            }
        }
        500..=599 => Error::Server {
            path,
            status: code,
            message: json.and_then(|j| j.get("message")).and_then(Value::as_str).map(str::to_string),
        },
        _ => Error::Rejected { path, status: code, reason: error_text(json, bytes) },
    }
}

fn transport_error(path: &str, error: reqwest::Error) -> Error {
    if error.is_timeout() {
        return Error::Timeout { path: path.into() };
    }
    if let Some(reason) = tls_reason(&error) {
        return Error::Tls { reason };
    }
    Error::Transport { path: path.into(), source: error }
}

/// Finds a rustls error in the source chain. `io::Error` hides its payload from `source()`, so step into it.
fn tls_reason(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        current = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_rate_limit_wait: Duration::from_secs(5),
        };
        let cases = [(1, 50, 100), (2, 100, 200), (3, 200, 400), (4, 400, 800), (5, 500, 1000), (30, 500, 1000)];
        for (attempt, min_ms, max_ms) in cases {
            for _ in 0..50 {
                let d = policy.backoff(attempt).as_millis() as u64;
                assert!((min_ms..=max_ms).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
    }

    #[test]
    fn feed_outcomes() {
        let cases = [
            ("Pull queued for background execution.", FeedOutcome::Queued),
            ("No feed enabled.", FeedOutcome::NoFeedEnabled),
            ("Fetching the feed has successfully completed. Downloaded 2 new event(s).", FeedOutcome::Completed),
            ("Feed is currently not enabled. Make sure you enable it.", FeedOutcome::FeedDisabled),
            ("Fetching the feed has failed.", FeedOutcome::Failed),
            ("Something else.", FeedOutcome::Other("Something else.".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(FeedOutcome::from_result(text), expected, "{text}");
        }
    }
}
