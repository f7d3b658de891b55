//! A MISP emulator: an axum server that answers the REST calls fortimisp makes the way MISP 2.5 does, with
//! hooks for tests to seed data, inspect what arrived and inject faults.
//!
//! Start one per test on an ephemeral loopback port ([`MispEmulator::start`] or [`MispEmulator::builder`]),
//! point the client at [`MispEmulator::url`], and drop it to stop it. The `misp-emulator` binary wraps the same
//! type for the lab and docker compose.
//!
//! # What is faithful (see `shared/reference/misp-rest.md`)
//! - Auth: `Authorization` or `X-MISP-AUTH` holding one of the keys (`^[a-zA-Z0-9]{40}$`, comma lists tried in
//!   order, `Basic ...` ignored); failure is HTTP 403 with MISP's JSON body.
//! - `/attributes/restSearch`: see [`store`] for matching; the `{"response": {"Attribute": [...]}}` envelope with
//!   string ids and timestamps; `X-Result-Count`, `X-Skipped-Elements-Count`, `X-Export-Module-Used`,
//!   `X-Response-Format`; per-role rate limit (429 + `X-Rate-Limit-*`, 405 when `rate_limit_count = 0`).
//! - Feeds (site admin): `{"result": "Pull queued for background execution."}`, `"No feed enabled."`, inline
//!   `"Fetching the feed has successfully completed."`; 404 `Invalid feed.`.
//! - `/sightings/add` (perm_sighting): `{"Sighting": {...}}`, or HTTP 200 `{"message": "Could not add the
//!   Sighting. Reason: ..."}`.
//! - `/warninglists/checkValue`: `{value: [{"id","name","matched"}]}`, `[]` when nothing hits.
//! - What PyMISP reads at start and in its feed and sighting calls (shapes in `views`): `/users/view/me` with the
//!   full `User`, `Role`, `UserSetting` and `Organisation`; `/attributes/describeTypes.json`; `/feeds/index`
//!   (and `GET /feeds`), `/feeds/view/{id}` (404 `Invalid Feed.`), `/feeds/cacheFeeds/{all|freetext|csv|misp|id}`
//!   (site admin); `/sightings/index`.
//! - Roles ([`Role`]): no `perm_auth` refuses the key (403 as for a wrong key), no `perm_sighting` refuses
//!   sightings, no `perm_site_admin` refuses the feed actions (403 "You do not have permission ..."),
//!   `rate_limit_count = 0` with `enforce_rate_limit` refuses restSearch (405).
//!
//! # Not emulated
//! Other export formats, events/restSearch, objects, sharing groups, distribution, sync. Without `order`, rows
//! come back in id order (real MISP has no defined order then).

mod routes;
pub mod seed;
pub mod store;
pub mod tls;
mod views;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use seed::{Role, Seed};
pub use store::{Attribute, AttributeSpec, Event, Feed, SightingRecord};
pub use tls::TlsMaterial;

/// The key tests use unless they set their own (40 alphanumeric characters, as MISP requires).
pub const DEFAULT_KEY: &str = "0123456789abcdefghijABCDEFGHIJ0123456789";

/// How many requests [`MispEmulator::requests`] keeps (the oldest are dropped; counts are never dropped).
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// A way to fail a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Any status with a body and content type.
    Status { status: u16, content_type: String, body: String },
    /// Answer `200` with a truncated JSON body.
    InvalidJson,
    /// Close the connection without answering.
    Drop,
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer 403 "Authentication failed" whatever the key.
    AuthFailure,
}

impl Fault {
    /// PHP's HTML error page (`500`, or a proxy's `502`/`504`).
    pub fn html(status: u16) -> Self {
        Fault::Status {
            status,
            content_type: "text/html; charset=UTF-8".into(),
            body: format!(
                "<!DOCTYPE html>\n<html><head><title>{status} Error</title></head><body><h1>Error {status}</h1>\
                 <p>The server encountered an internal error.</p></body></html>\n"
            ),
        }
    }

    /// MISP's JSON error (`{"name":"An Internal Error Has Occurred.",...}` for 500).
    pub fn json_error(status: u16, path: &str) -> Self {
        let text = if status == 500 { "An Internal Error Has Occurred." } else { "Error." };
        Fault::Status {
            status,
            content_type: "application/json".into(),
            body: serde_json::json!({"name": text, "message": text, "url": path}).to_string(),
        }
    }
}

/// When a [`Fault`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Route name (`attributes/restSearch`, `sightings/add`, `feeds/fetchFromFeed`, ...); `None` = any.
    pub route: Option<String>,
    /// Only restSearch requests for this `page`.
    pub page: Option<u64>,
    /// How many requests it hits; `None` = every matching request until cleared.
    pub times: Option<u32>,
    pub fault: Fault,
}

/// One request as the emulator saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Route name, e.g. `attributes/restSearch`.
    pub route: String,
    pub path: String,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
    pub authorized: bool,
}

/// A feed fetch the emulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedFetch {
    /// `None` for fetchFromAllFeeds.
    pub feed_id: Option<u64>,
    /// The `result` text returned.
    pub result: String,
}

#[derive(Debug)]
struct RateWindow {
    started: tokio::time::Instant,
    count: u64,
}

/// Shared mutable state behind one lock (the emulator is for tests and the lab, not for contention).
#[derive(Debug)]
pub(crate) struct Inner {
    pub store: store::Store,
    pub keys: Vec<String>,
    pub role: Role,
    pub version: String,
    pub background_jobs: bool,
    pub faults: Vec<FaultRule>,
    pub latency: Option<Duration>,
    pub counts: HashMap<String, u64>,
    pub log: VecDeque<RecordedRequest>,
    pub feed_fetches: Vec<FeedFetch>,
    rate: Option<RateWindow>,
}

pub(crate) type Shared = Arc<Mutex<Inner>>;

/// The rate-limit window MISP uses (15 minutes).
const RATE_WINDOW: Duration = Duration::from_secs(900);

pub(crate) enum RateCheck {
    NotLimited,
    Allowed { limit: u64, remaining: u64, reset: u64 },
    Exceeded { limit: u64, reset: u64 },
    Forbidden,
}

impl Inner {
    pub(crate) fn rate_check(&mut self) -> RateCheck {
        if !self.role.enforce_rate_limit {
            return RateCheck::NotLimited;
        }
        let limit = self.role.rate_limit_count;
        if limit == 0 {
            return RateCheck::Forbidden;
        }
        let now = tokio::time::Instant::now();
        let window = match &mut self.rate {
            Some(w) if now.duration_since(w.started) < RATE_WINDOW => w,
            _ => self.rate.insert(RateWindow { started: now, count: 0 }),
        };
        let reset = RATE_WINDOW.saturating_sub(now.duration_since(window.started)).as_secs().max(1);
        if window.count >= limit {
            return RateCheck::Exceeded { limit, reset };
        }
        window.count += 1;
        RateCheck::Allowed { limit, remaining: limit - window.count, reset }
    }
}

/// Builds an emulator: TLS or not, keys, seed data, listen address.
#[derive(Debug, Default)]
pub struct Builder {
    listen: Option<SocketAddr>,
    tls: Option<TlsMaterial>,
    generate_tls: bool,
    keys: Vec<String>,
    seed: Option<Seed>,
}

impl Builder {
    /// Listen here instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Serve HTTPS with a freshly generated CA ([`MispEmulator::ca_pem`]).
    pub fn tls(mut self) -> Self {
        self.generate_tls = true;
        self
    }

    /// Serve HTTPS with this material.
    pub fn tls_material(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// Accept this key (may be called several times). Default: [`DEFAULT_KEY`].
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Load this seed at start.
    pub fn seed(mut self, seed: Seed) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Binds and starts serving in a background task.
    pub async fn start(self) -> std::io::Result<MispEmulator> {
        let tls = match (self.tls, self.generate_tls) {
            (Some(material), _) => Some(material),
            (None, true) => Some(TlsMaterial::generate(&[])?),
            (None, false) => None,
        };
        let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let keys = if self.keys.is_empty() { vec![DEFAULT_KEY.to_string()] } else { self.keys };
        let inner = Inner {
            store: store::Store::default(),
            keys,
            role: Role::default(),
            version: "2.5.1".into(),
            background_jobs: true,
            faults: Vec::new(),
            latency: None,
            counts: HashMap::new(),
            log: VecDeque::new(),
            feed_fetches: Vec::new(),
            rate: None,
        };
        let shared: Shared = Arc::new(Mutex::new(inner));
        let emulator = MispEmulator {
            shared: Arc::clone(&shared),
            url: format!("{}://{}", if tls.is_some() { "https" } else { "http" }, display_addr(addr)),
            addr,
            ca_pem: tls.as_ref().map(|t| t.ca_pem.clone()),
            shutdown: CancellationToken::new(),
        };
        if let Some(seed) = self.seed {
            emulator.seed(seed);
        }
        let config = tls.as_ref().map(TlsMaterial::server_config).transpose()?;
        tokio::spawn(serve(listener, shared, config, emulator.shutdown.clone()));
        Ok(emulator)
    }
}

fn display_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// Lets a handler kill its own connection (the [`Fault::Drop`] fault).
#[derive(Clone)]
pub(crate) struct ConnKill(pub Arc<Notify>);

async fn serve(
    listener: TcpListener,
    shared: Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let router = routes::router(shared);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let router = router.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    // A client that rejects our certificate fails the handshake here; nothing to report.
                    if let Ok(tls_stream) = acceptor.accept(stream).await {
                        serve_connection(tls_stream, router, shutdown).await;
                    }
                }
                None => serve_connection(stream, router, shutdown).await,
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, router: axum::Router, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let conn_kill = ConnKill(Arc::clone(&kill));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(conn_kill.clone());
        router.clone().oneshot(request)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    // Dropping the connection future closes the socket without a response.
    tokio::select! {
        _ = connection => {}
        _ = kill.notified() => {}
        _ = shutdown.cancelled() => {}
    }
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct MispEmulator {
    shared: Shared,
    url: String,
    addr: SocketAddr,
    ca_pem: Option<String>,
    shutdown: CancellationToken,
}

impl Drop for MispEmulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl MispEmulator {
    /// Plain HTTP on `127.0.0.1:0`, key [`DEFAULT_KEY`], no data.
    pub async fn start() -> std::io::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The first accepted key.
    pub fn key(&self) -> String {
        self.lock().keys.first().cloned().unwrap_or_default()
    }

    /// The CA certificate (PEM) a client must trust, when serving TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Stops serving (also done on drop).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock only happens in a failing test; keep serving the data.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // ---- seeding --------------------------------------------------------------------------------------------

    /// Loads a seed (keys replace the current ones when given).
    pub fn seed(&self, seed: Seed) {
        let mut inner = self.lock();
        if !seed.keys.is_empty() {
            inner.keys = seed.keys;
        }
        if let Some(role) = seed.role {
            inner.role = role;
        }
        if let Some(jobs) = seed.background_jobs {
            inner.background_jobs = jobs;
        }
        for event in seed.events {
            let id = inner.store.add_event(&event.info, event.published, event.tags);
            for attribute in event.attributes {
                inner.store.add_attribute(id, attribute);
            }
        }
        for list in seed.warninglists {
            inner.store.add_warninglist(&list.name, &list.kind, list.entries, list.enabled);
        }
        for feed in seed.feeds {
            let id = inner.store.add_feed(&feed.name, feed.enabled);
            if let Some(stored) = inner.store.feeds.iter_mut().find(|f| f.id == id) {
                stored.provider = feed.provider.unwrap_or(stored.provider.clone());
                stored.url = feed.url.unwrap_or(stored.url.clone());
                stored.source_format = feed.source_format.unwrap_or(stored.source_format.clone());
                stored.caching_enabled = feed.caching_enabled;
            }
        }
    }

    /// Creates an event; returns its id.
    pub fn add_event(&self, info: &str, published: bool, tags: &[&str]) -> u64 {
        self.lock().store.add_event(info, published, tags.iter().map(|t| t.to_string()).collect())
    }

    /// Adds an attribute to `event_id` (created if missing); returns the attribute id.
    pub fn add_attribute(&self, event_id: u64, spec: AttributeSpec) -> u64 {
        self.lock().store.add_attribute(event_id, spec)
    }

    /// Adds `n` live `to_ids` `ip-dst` attributes with consecutive IPv4 values from `first`, spread over events
    /// of 10 000 attributes, timestamps `base_ts + i`. For load tests and benchmarks.
    pub fn add_synthetic(&self, n: u64, first: std::net::Ipv4Addr, base_ts: i64) {
        self.add_synthetic_every(n, first, 1, base_ts);
    }

    /// [`add_synthetic`](Self::add_synthetic) with the values `stride` addresses apart (`first`, `first +
    /// stride`, ...). With a stride of 2 from an odd address no two values share a /31, so a feed cannot
    /// aggregate them into CIDRs. A stride of 0 counts as 1.
    pub fn add_synthetic_every(&self, n: u64, first: std::net::Ipv4Addr, stride: u32, base_ts: i64) {
        let mut inner = self.lock();
        let start = u32::from(first);
        let stride = stride.max(1);
        let mut event = 0;
        for i in 0..n {
            if i % 10_000 == 0 {
                event = inner.store.add_event(&format!("synthetic {}", i / 10_000), true, Vec::new());
            }
            let ip = std::net::Ipv4Addr::from(start.wrapping_add((i as u32).wrapping_mul(stride)));
            let spec = AttributeSpec::new("ip-dst", ip.to_string()).timestamp(base_ts + i as i64);
            inner.store.add_attribute(event, spec);
        }
    }

    pub fn attribute(&self, id: u64) -> Option<Attribute> {
        self.lock().store.attribute(id).cloned()
    }

    pub fn attribute_count(&self) -> usize {
        self.lock().store.attribute_count()
    }

    /// Soft delete: `deleted = true` and a bumped timestamp. False if no such attribute.
    pub fn soft_delete(&self, attribute_id: u64) -> bool {
        self.lock().store.soft_delete(attribute_id)
    }

    /// Sets `to_ids` (and bumps the timestamp). False if no such attribute.
    pub fn set_to_ids(&self, attribute_id: u64, to_ids: bool) -> bool {
        self.lock().store.set_to_ids(attribute_id, to_ids)
    }

    /// Publishes or unpublishes an event (no attribute timestamp changes, as in MISP).
    pub fn set_published(&self, event_id: u64, published: bool) -> bool {
        self.lock().store.set_published(event_id, published)
    }

    /// Adds a warninglist (`kind`: `cidr` or `string`); returns its id.
    pub fn add_warninglist(&self, name: &str, kind: &str, entries: &[&str]) -> u64 {
        let entries = entries.iter().map(|e| e.to_string()).collect();
        self.lock().store.add_warninglist(name, kind, entries, true)
    }

    pub fn set_warninglist_enabled(&self, id: u64, enabled: bool) -> bool {
        self.lock().store.set_warninglist_enabled(id, enabled)
    }

    /// Adds a feed; returns its id.
    pub fn add_feed(&self, name: &str, enabled: bool) -> u64 {
        self.lock().store.add_feed(name, enabled)
    }

    /// Lets `/feeds/cacheFeeds` cache this feed (or not).
    pub fn set_feed_caching(&self, feed_id: u64, enabled: bool) {
        if let Some(feed) = self.lock().store.feeds.iter_mut().find(|f| f.id == feed_id) {
            feed.caching_enabled = enabled;
        }
    }

    /// The feeds as stored (with their cache timestamps).
    pub fn feeds(&self) -> Vec<store::Feed> {
        self.lock().store.feeds.clone()
    }

    /// With background jobs (default) fetches answer "queued"; without, they run inline.
    pub fn set_background_jobs(&self, enabled: bool) {
        self.lock().background_jobs = enabled;
    }

    /// Makes an inline fetch of this feed fail ("Fetching the feed has failed.").
    pub fn set_feed_fails(&self, feed_id: u64, fails: bool) {
        if let Some(feed) = self.lock().store.feeds.iter_mut().find(|f| f.id == feed_id) {
            feed.fails = fails;
        }
    }

    /// Fixes the emulator's clock (epoch seconds) for timestamps it assigns; `None` = system clock.
    pub fn set_now(&self, now: Option<i64>) {
        self.lock().store.now_override = now;
    }

    // ---- users, keys, limits --------------------------------------------------------------------------------

    pub fn set_role(&self, role: Role) {
        self.lock().role = role;
    }

    pub fn role(&self) -> Role {
        self.lock().role.clone()
    }

    /// Replaces every key by `new_key` (the old one now gets 403).
    pub fn rotate_key(&self, new_key: &str) {
        self.lock().keys = vec![new_key.to_string()];
    }

    /// Enforces a per-role rate limit of `count` restSearch calls per 15 minutes (`Some(0)` = 405), or none.
    pub fn set_rate_limit(&self, count: Option<u64>) {
        let mut inner = self.lock();
        inner.role.enforce_rate_limit = count.is_some();
        inner.role.rate_limit_count = count.unwrap_or(0);
        inner.rate = None;
    }

    /// Starts a fresh rate-limit window.
    pub fn reset_rate_limit(&self) {
        self.lock().rate = None;
    }

    // ---- faults ---------------------------------------------------------------------------------------------

    pub fn inject(&self, rule: FaultRule) {
        self.lock().faults.push(rule);
    }

    /// The next `times` requests (any route) fail with `fault`.
    pub fn fail_next(&self, times: u32, fault: Fault) {
        self.inject(FaultRule { route: None, page: None, times: Some(times), fault });
    }

    /// The next `times` requests to `route` fail with `fault`.
    pub fn fail_route(&self, route: &str, times: u32, fault: Fault) {
        self.inject(FaultRule { route: Some(route.into()), page: None, times: Some(times), fault });
    }

    /// The next `times` restSearch requests for `page` fail with `fault`.
    pub fn fail_page(&self, page: u64, times: u32, fault: Fault) {
        let route = Some("attributes/restSearch".to_string());
        self.inject(FaultRule { route, page: Some(page), times: Some(times), fault });
    }

    /// Every request waits this long first (`None` = no added latency).
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.lock().latency = latency;
    }

    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.faults.clear();
        inner.latency = None;
    }

    // ---- inspection -----------------------------------------------------------------------------------------

    /// Sightings saved so far.
    pub fn sightings(&self) -> Vec<SightingRecord> {
        self.lock().store.sightings.clone()
    }

    /// Feed fetch calls answered so far.
    pub fn feed_fetches(&self) -> Vec<FeedFetch> {
        self.lock().feed_fetches.clone()
    }

    /// Requests received for `route` (counted before auth and faults, so retries show up).
    pub fn request_count(&self, route: &str) -> u64 {
        self.lock().counts.get(route).copied().unwrap_or(0)
    }

    /// Requests received, all routes.
    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// The last [`REQUEST_LOG_CAPACITY`] requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.iter().cloned().collect()
    }

    /// Forgets counts, the request log, sightings and feed fetches (data stays).
    pub fn reset_records(&self) {
        let mut inner = self.lock();
        inner.counts.clear();
        inner.log.clear();
        inner.feed_fetches.clear();
        inner.store.sightings.clear();
    }
}
