//! The threat-feed HTTPS listener: the FortiGate pulls `GET /feeds/<name>.txt` here every `refresh-rate`, with
//! HTTP basic auth (the only thing FortiOS sends).
//!
//! [`bind`] opens the socket and loads the certificate (errors name `feed.listen`, `feed.tls_cert`,
//! `feed.tls_key`); [`Bound::serve`] runs the accept loop until the shutdown token fires. What a feed holds comes
//! from a [`Source`], asked once per request; the answer is a [`Snapshot`] whose body is sent as is (its `Bytes`
//! are shared, never copied), so a fetch always gets one whole version of the feed, even while a newer one
//! replaces it.
//!
//! Each request is checked in this order (the first that fails answers):
//! 1. the client address (IPv4-mapped IPv6 judged as IPv4) is outside a non-empty `allowed_clients`: 403, with
//!    no challenge and no hint of the list;
//! 2. basic auth missing or wrong: 401 with `WWW-Authenticate: Basic realm="fortimisp"` (user and password are
//!    compared together, in constant time);
//! 3. a path other than `/feeds/<name>.txt`: 404; a method other than `GET`/`HEAD`: 405; an unknown feed: 404;
//! 4. `If-None-Match` matching the ETag (or `*`), or else `If-Modified-Since` at or after the build time: 304;
//! 5. otherwise 200 with `ETag`, `Last-Modified`, `Cache-Control: no-cache` and `Content-Length`.
//!
//! A 403 or 401 closes the connection after the answer: a refused client gets one try per TLS handshake. A
//! [`Source`] that panics gets the request a 500, logged at error and not counted.
//!
//! Limits, so that a scanner or a slow client cannot hold the listener: at most [`MAX_CONNECTIONS`] connections
//! at once, a further one waits in the accept backlog until one closes (the FortiGate's next pull gets through
//! as soon as a slot frees, where closing would refuse it); the TLS handshake must end within
//! [`HANDSHAKE_TIMEOUT`]; each request's headers, and the next request on an idle keep-alive connection, must
//! arrive within [`HEADER_TIMEOUT`]; no connection lasts longer than [`MAX_CONNECTION_TIME`].
//!
//! Observability: every answer and every failed handshake is counted in `fortimisp_feed_requests_total{result}`,
//! the bytes of the bodies sent in `fortimisp_feed_served_bytes_total`. A failed handshake is logged at debug
//! only (scanners make many); a refused client or bad credentials at warn, at most once a minute per reason,
//! with the peer and how many were not logged since.
//!
//! Design: hyper's HTTP/1.1 server directly rather than a router, because the checks above cut across routing
//! (a client outside the list gets 403, not 404, for any path) and there is one route.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fortimisp_core::config;
use fortimisp_core::feed::Snapshot;
use fortimisp_core::metrics::Metrics;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::listen::{tls_server_config, TlsError, TlsKeys};

/// Connections served at once; beyond it, a new connection waits in the accept backlog until one closes.
pub const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake not done by then is dropped (counted `tls_error`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers, or the next request on an idle keep-alive connection, must arrive within this; else the
/// connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lasts, however busy: a feed of 128 MB at 1 MB/s takes about two minutes.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(600);
/// On shutdown (or at [`MAX_CONNECTION_TIME`]) a connection may finish the answer it is sending for this long.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A refusal of one reason is logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The realm of the basic-auth challenge.
const REALM: &str = "Basic realm=\"fortimisp\"";

/// The config keys of the listener's TLS files.
const TLS_KEYS: TlsKeys = TlsKeys { cert: "feed.tls_cert", key: "feed.tls_key" };

/// Where the served feeds come from.
pub trait Source: Send + Sync + 'static {
    /// The current snapshot of feed `name`, `None` if there is no such feed. Asked once per request, on a
    /// blocking thread: it may build the snapshot lazily, and should be cheap when nothing changed.
    fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>>;
}

/// Why the listener cannot start. Each names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("feed.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `feed.tls_cert` or `feed.tls_key` cannot be read or used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The listener's limits; the constants of this module, shorter in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    handshake_timeout: Duration,
    header_timeout: Duration,
    max_connection_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_timeout: HEADER_TIMEOUT,
            max_connection_time: MAX_CONNECTION_TIME,
        }
    }
}

/// A bound, not yet serving, listener: the socket, the TLS acceptor and who may fetch.
pub struct Bound {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    access: Access,
    limits: Limits,
}

/// Binds `cfg.listen` and loads the TLS certificate and key.
///
/// # Errors
/// [`ServeError::Listen`] naming `feed.listen`; [`ServeError::Tls`] naming `feed.tls_cert` or `feed.tls_key`.
pub async fn bind(cfg: &config::Serve) -> Result<Bound, ServeError> {
    let mut tls = tls_server_config(TLS_KEYS, &cfg.tls_cert, &cfg.tls_key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener =
        TcpListener::bind(cfg.listen).await.map_err(|source| ServeError::Listen { addr: cfg.listen, source })?;
    Ok(Bound {
        listener,
        acceptor: TlsAcceptor::from(Arc::new(tls)),
        access: Access::new(&cfg.username, cfg.password.expose(), cfg.allowed_clients.clone()),
        limits: Limits::default(),
    })
}

impl Bound {
    /// The address the socket is bound to (the port, when `feed.listen` asked for 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`: stops accepting at once, lets each open connection finish the answer it is
    /// sending for up to [`SHUTDOWN_GRACE`], then returns. Shared, so a restarted task serves the same socket.
    pub async fn serve(self: Arc<Self>, source: Arc<dyn Source>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let (listener, acceptor, limits) = (&self.listener, &self.acceptor, self.limits);
        // The alert on refused fetches compares these: each exists from the start, at 0.
        Metrics::start_at_zero(
            &metrics.feed_requests,
            &["served", "not_modified", "unauthorized", "forbidden", "not_found", "tls_error"],
        );
        let access = self.access.clone();
        let shared = Arc::new(Shared { source, metrics, access, refusals: RefusalLog::default() });
        // Held by each connection for its whole life: when none is left, accepting waits (see MAX_CONNECTIONS).
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let connections = TaskTracker::new();
        if let Ok(addr) = listener.local_addr() {
            info!(message = "Threat-feed listener serving.", listen = %addr);
        }
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("invariant: the semaphore is never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning on the error.
                        warn!(message = "Threat-feed accept failed.", %error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let span = tracing::debug_span!("feed_connection", %peer);
            let connection = connection(tcp, peer, acceptor.clone(), shared.clone(), limits, shutdown.clone());
            connections.spawn(
                async move {
                    let _permit = permit;
                    connection.await;
                }
                .instrument(span),
            );
        }
        connections.close();
        connections.wait().await;
        info!(message = "Threat-feed listener stopped.");
    }
}

/// What every connection shares.
struct Shared {
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
    access: Access,
    refusals: RefusalLog,
}

/// One connection: TLS handshake, then HTTP/1.1 requests until the client closes, a timeout, or shutdown.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // Fallible: on failure the socket comes back, so it closes only after the failure is counted.
    let handshake = acceptor.accept(tcp).into_fallible();
    tokio::pin!(handshake);
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        done = tokio::time::timeout(limits.handshake_timeout, &mut handshake) => done,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err((error, _tcp))) => {
            Metrics::inc(&shared.metrics.feed_requests, "tls_error");
            debug!(message = "TLS handshake failed.", %error);
            return;
        }
        Err(_) => {
            Metrics::inc(&shared.metrics.feed_requests, "tls_error");
            debug!(message = "TLS handshake timed out.");
            return;
        }
    };
    let allowed = shared.access.allows(peer.ip());
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(shared.answer(request, peer, allowed).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(error) = done {
                debug!(message = "Connection ended with an error.", %error);
            }
            return;
        }
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(limits.max_connection_time) => debug!(message = "Connection open too long; closing."),
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

impl Shared {
    /// Answers one request, counting and (rate-limited) logging it.
    async fn answer(&self, request: Request<Incoming>, peer: SocketAddr, allowed: bool) -> Response<Whole> {
        let auth = request.headers().get(header::AUTHORIZATION);
        let name = match route(&self.access, allowed, request.method(), request.uri().path(), auth) {
            Ok(name) => name.to_string(),
            Err(refusal) => {
                Metrics::inc(&self.metrics.feed_requests, refusal.result());
                self.refusals.note(refusal, peer, Instant::now());
                return refusal.response();
            }
        };
        let source = self.source.clone();
        let snapshot = match tokio::task::spawn_blocking(move || source.snapshot(&name)).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                Metrics::inc(&self.metrics.feed_requests, Refusal::NotFound.result());
                return Refusal::NotFound.response();
            }
            Err(error) => {
                error!(message = "The feed source failed; answering 500.", %error);
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        };
        let head = request.method() == Method::HEAD;
        let (response, result) = respond(&snapshot, head, request.headers(), SystemTime::now());
        Metrics::inc(&self.metrics.feed_requests, result);
        if let Some(body) = &response.body().0 {
            self.metrics.feed_served_bytes.inc_by(body.len() as u64);
        }
        response
    }
}

/// Who may fetch: the allowed networks and the expected `Authorization: Basic` token.
#[derive(Clone)]
struct Access {
    /// Empty: any client.
    allowed: Vec<IpNet>,
    /// `base64(username ":" password)`, what a right `Authorization: Basic` header carries. Never logged.
    token: Vec<u8>,
}

impl Access {
    fn new(username: &str, password: &str, allowed: Vec<IpNet>) -> Self {
        Access { allowed, token: base64(format!("{username}:{password}").as_bytes()).into_bytes() }
    }

    /// Whether `peer` is in `allowed_clients` (an IPv4-mapped IPv6 address is judged as the IPv4 one).
    fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&peer))
    }

    /// What the `Authorization` header is worth.
    fn credentials(&self, header: Option<&HeaderValue>) -> Credentials {
        let Some(value) = header else { return Credentials::Missing };
        let value = value.as_bytes();
        let (scheme, token) = match value.iter().position(|&b| b == b' ') {
            Some(at) => (&value[..at], value[at + 1..].trim_ascii()),
            None => (value, &[][..]),
        };
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Credentials::Missing;
        }
        if same_bytes(token, &self.token) {
            Credentials::Right
        } else {
            Credentials::Wrong
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    Right,
    /// No `Authorization` header, or not `Basic`.
    Missing,
    Wrong,
}

/// Why a request is not served. Each maps to one status and one `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client is outside `allowed_clients`.
    Forbidden,
    /// No basic-auth credentials (or another scheme).
    NoCredentials,
    /// Basic-auth credentials that are not the configured user and password.
    BadCredentials,
    /// Another path, or a feed the source does not know.
    NotFound,
    /// A method other than `GET` and `HEAD` on a feed path.
    MethodNotAllowed,
}

impl Refusal {
    /// The `result` label of `fortimisp_feed_requests_total`.
    fn result(self) -> &'static str {
        match self {
            Refusal::Forbidden => "forbidden",
            Refusal::NoCredentials | Refusal::BadCredentials => "unauthorized",
            Refusal::NotFound | Refusal::MethodNotAllowed => "not_found",
        }
    }

    fn response(self) -> Response<Whole> {
        let mut response = match self {
            Refusal::Forbidden => plain(StatusCode::FORBIDDEN, "forbidden\n"),
            Refusal::NoCredentials | Refusal::BadCredentials => {
                let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
                response
            }
            Refusal::NotFound => plain(StatusCode::NOT_FOUND, "not found\n"),
            Refusal::MethodNotAllowed => {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            }
        };
        if matches!(self, Refusal::Forbidden | Refusal::NoCredentials | Refusal::BadCredentials) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The feed a request asks for, or why it is refused, in the order of the module doc.
fn route<'a>(
    access: &Access,
    allowed: bool,
    method: &Method,
    path: &'a str,
    authorization: Option<&HeaderValue>,
) -> Result<&'a str, Refusal> {
    if !allowed {
        return Err(Refusal::Forbidden);
    }
    match access.credentials(authorization) {
        Credentials::Right => {}
        Credentials::Missing => return Err(Refusal::NoCredentials),
        Credentials::Wrong => return Err(Refusal::BadCredentials),
    }
    let name = path.strip_prefix("/feeds/").and_then(|rest| rest.strip_suffix(".txt")).ok_or(Refusal::NotFound)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err(Refusal::NotFound);
    }
    if method != Method::GET && method != Method::HEAD {
        return Err(Refusal::MethodNotAllowed);
    }
    Ok(name)
}

/// The answer to a `GET` (or `HEAD`) of `snapshot`, and its `result` label: 304 when the request's validators
/// say the client has this version, else 200 with the whole body.
fn respond(snapshot: &Snapshot, head: bool, request: &HeaderMap, now: SystemTime) -> (Response<Whole>, &'static str) {
    let fresh = not_modified(request, &snapshot.etag, snapshot.built_at, now);
    let (status, body, result) = if fresh {
        (StatusCode::NOT_MODIFIED, None, "not_modified")
    } else if head {
        (StatusCode::OK, None, "served")
    } else {
        (StatusCode::OK, Some(snapshot.body.clone()), "served")
    };
    let mut response = Response::new(Whole(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    match HeaderValue::from_str(&snapshot.etag) {
        Ok(etag) => {
            headers.insert(header::ETAG, etag);
        }
        Err(_) => debug!(message = "Snapshot ETag is not a valid header value; sent without.", feed = %snapshot.name),
    }
    if let Ok(date) = HeaderValue::from_str(&http_date(snapshot.built_at)) {
        headers.insert(header::LAST_MODIFIED, date);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if status == StatusCode::OK {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(snapshot.body.len() as u64));
    }
    (response, result)
}

/// Whether the client already holds the version `etag` built at `built_at` (RFC 9110 §13.1): `If-None-Match`
/// decides when present (weak comparison, `*` matches); else `If-Modified-Since`, if it is a valid date not in the
/// future, at or after the build time (to the second).
fn not_modified(request: &HeaderMap, etag: &str, built_at: SystemTime, now: SystemTime) -> bool {
    let mut none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if none_match.peek().is_some() {
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        let ours = opaque(etag);
        return none_match
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|tag| tag.trim() == "*" || opaque(tag) == ours);
    }
    let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(|v| v.to_str().ok()).and_then(parse_http_date)
    else {
        return false;
    };
    since <= unix_seconds(now) && unix_seconds(built_at) <= since
}

fn unix_seconds(t: SystemTime) -> i64 {
    chrono::DateTime::<chrono::Utc>::from(t).timestamp()
}

/// `t` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form `Last-Modified` takes.
fn http_date(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The Unix time of an IMF-fixdate; `None` for anything else (the obsolete RFC 850 and asctime forms too, so such
/// a request gets the full answer).
fn parse_http_date(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc2822(text.trim()).ok().map(|t| t.timestamp())
}

/// A short plain-text answer.
fn plain(status: StatusCode, text: &'static str) -> Response<Whole> {
    let mut response = Response::new(Whole(Some(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A response body sent in one piece: the snapshot's `Bytes` (a reference to the one buffer every fetch shares,
/// kept alive by this body until it is written), or nothing.
struct Whole(Option<Bytes>);

impl hyper::body::Body for Whole {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |bytes| bytes.len() as u64))
    }
}

/// Whether two byte strings are equal, in a time that depends on their lengths only, not on where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut difference = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        difference |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// Standard base64 with padding (RFC 4648 §4), as basic auth encodes `user:password`.
fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Refusals logged at most once per [`REFUSAL_LOG_INTERVAL`] per reason, so a scanner cannot flood the log.
#[derive(Default)]
struct RefusalLog {
    forbidden: Mutex<Throttle>,
    no_credentials: Mutex<Throttle>,
    bad_credentials: Mutex<Throttle>,
}

impl RefusalLog {
    fn note(&self, refusal: Refusal, peer: SocketAddr, now: Instant) {
        let throttle = match refusal {
            Refusal::Forbidden => &self.forbidden,
            Refusal::NoCredentials => &self.no_credentials,
            Refusal::BadCredentials => &self.bad_credentials,
            Refusal::NotFound | Refusal::MethodNotAllowed => return,
        };
        // The throttle is two plain fields updated in one call: a panic elsewhere cannot leave it half-written.
        let admitted =
            throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).admit(now, REFUSAL_LOG_INTERVAL);
        let Some(not_logged) = admitted else { return };
        let peer = peer.ip().to_canonical();
        match refusal {
            Refusal::Forbidden => {
                warn!(message = "Threat-feed request from a client outside feed.allowed_clients refused.", %peer, not_logged)
            }
            Refusal::NoCredentials => warn!(
                message = "Threat-feed request without basic-auth credentials refused; check the external resource's username and password.",
                %peer,
                not_logged
            ),
            Refusal::BadCredentials => warn!(
                message = "Threat-feed request with wrong credentials refused; check the external resource's username and password against feed.username and feed.password.",
                %peer,
                not_logged
            ),
            Refusal::NotFound | Refusal::MethodNotAllowed => {}
        }
    }
}

/// Admits one event per interval and counts the ones it held back.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(held back since the last admitted)` when the event at `now` should be logged.
    fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < interval => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use fortimisp_core::secret::ApiKey;
    use fortimisp_testkit::tls::TestCa;
    use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const USER: &str = "fortigate";
    const PASSWORD: &str = "correct horse battery";
    /// Every wait in these tests is bounded by this; none is expected to come near it.
    const BOUND: Duration = Duration::from_secs(20);

    fn snapshot(name: &str, body: impl Into<Bytes>, etag: &str, built_at: SystemTime) -> Arc<Snapshot> {
        let body = body.into();
        let entries = body.iter().filter(|&&b| b == b'\n').count();
        Arc::new(Snapshot { name: name.into(), body, etag: etag.into(), built_at, entries })
    }

    /// One fixed feed, `blocked`.
    struct Fixed(Arc<Snapshot>);

    impl Source for Fixed {
        fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
            (name == self.0.name).then(|| self.0.clone())
        }
    }

    fn built_at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn blocked() -> Arc<dyn Source> {
        Arc::new(Fixed(snapshot("blocked", "# fortimisp\n198.51.100.7\n203.0.113.0/24\n", "\"abc\"", built_at())))
    }

    /// A listener on 127.0.0.1:0 with a throw-away CA's certificate, and a client trusting that CA.
    struct Server {
        base: String,
        addr: SocketAddr,
        ca: TestCa,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Server {
        async fn start(source: Arc<dyn Source>, allowed: &[&str]) -> Server {
            Server::start_with(source, allowed, |_| {}).await
        }

        async fn start_with(source: Arc<dyn Source>, allowed: &[&str], limits: impl FnOnce(&mut Limits)) -> Server {
            let ca = TestCa::new();
            let dir = tempfile::tempdir().unwrap();
            ca.issue_server_cert().write_to_dir(dir.path()).unwrap();
            let cfg = config::Serve {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls_cert: dir.path().join("cert.pem"),
                tls_key: dir.path().join("key.pem"),
                username: USER.into(),
                password: ApiKey::new(PASSWORD),
                allowed_clients: allowed.iter().map(|net| net.parse().unwrap()).collect(),
            };
            let mut bound = bind(&cfg).await.unwrap();
            limits(&mut bound.limits);
            let addr = bound.local_addr().unwrap();
            let metrics = Arc::new(Metrics::new());
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(Arc::new(bound).serve(source, metrics.clone(), shutdown.clone()));
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
                .timeout(BOUND)
                .build()
                .unwrap();
            Server { base: format!("https://{addr}"), addr, ca, client, metrics, shutdown, task, _dir: dir }
        }

        fn get(&self, path: &str) -> reqwest::RequestBuilder {
            self.client.get(format!("{}{path}", self.base)).basic_auth(USER, Some(PASSWORD))
        }

        fn count(&self, result: &'static str) -> u64 {
            Metrics::count(&self.metrics.feed_requests, result)
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(BOUND, self.task).await.expect("serve returns after shutdown").unwrap();
        }
    }

    #[tokio::test]
    async fn serves_the_whole_body_with_its_validators() {
        let server = Server::start(blocked(), &[]).await;
        let response = server.get("/feeds/blocked.txt").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers[ETAG], "\"abc\"");
        assert_eq!(headers[LAST_MODIFIED], "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(headers[header::CACHE_CONTROL.as_str()], "no-cache");
        assert_eq!(headers[header::CONTENT_TYPE.as_str()], "text/plain; charset=utf-8");
        assert_eq!(headers[header::CONTENT_LENGTH.as_str()], "40");
        assert_eq!(response.text().await.unwrap(), "# fortimisp\n198.51.100.7\n203.0.113.0/24\n");

        let head = server.client.head(format!("{}/feeds/blocked.txt", server.base)).basic_auth(USER, Some(PASSWORD));
        let head = head.send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()[header::CONTENT_LENGTH.as_str()], "40");
        assert_eq!(head.headers()[ETAG], "\"abc\"");
        assert!(head.bytes().await.unwrap().is_empty());

        assert_eq!(server.count("served"), 2);
        assert_eq!(server.metrics.feed_served_bytes.get(), 40, "HEAD sends no body");
        server.stop().await;
    }

    #[tokio::test]
    async fn validators_that_match_answer_304() {
        let server = Server::start(blocked(), &[]).await;
        let status = |response: reqwest::Response| response.status().as_u16();
        let feed = "/feeds/blocked.txt";
        assert_eq!(status(server.get(feed).header(IF_NONE_MATCH, "\"abc\"").send().await.unwrap()), 304);
        assert_eq!(status(server.get(feed).header(IF_NONE_MATCH, "W/\"x\", W/\"abc\"").send().await.unwrap()), 304);
        assert_eq!(status(server.get(feed).header(IF_NONE_MATCH, "*").send().await.unwrap()), 304);
        assert_eq!(status(server.get(feed).header(IF_NONE_MATCH, "\"old\"").send().await.unwrap()), 200);
        let built = "Tue, 14 Nov 2023 22:13:20 GMT";
        let before = "Tue, 14 Nov 2023 22:13:19 GMT";
        assert_eq!(status(server.get(feed).header(IF_MODIFIED_SINCE, built).send().await.unwrap()), 304);
        assert_eq!(status(server.get(feed).header(IF_MODIFIED_SINCE, before).send().await.unwrap()), 200);
        // If-None-Match decides when both are sent.
        let both = server.get(feed).header(IF_NONE_MATCH, "\"old\"").header(IF_MODIFIED_SINCE, built);
        let response = both.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let not_modified = server.get(feed).header(IF_NONE_MATCH, "\"abc\"").send().await.unwrap();
        assert_eq!(not_modified.headers()[ETAG], "\"abc\"");
        assert!(not_modified.bytes().await.unwrap().is_empty());
        assert_eq!(server.count("not_modified"), 5);
        assert_eq!(server.count("served"), 3);
        server.stop().await;
    }

    #[tokio::test]
    async fn missing_or_wrong_credentials_get_a_challenge() {
        let server = Server::start(blocked(), &[]).await;
        let url = format!("{}/feeds/blocked.txt", server.base);
        let attempts = [
            server.client.get(&url),
            server.client.get(&url).basic_auth(USER, Some("wrong password!")),
            server.client.get(&url).basic_auth("admin", Some(PASSWORD)),
            server.client.get(&url).basic_auth(USER, None::<&str>),
            server.client.get(&url).bearer_auth(PASSWORD),
        ];
        for attempt in attempts {
            let response = attempt.send().await.unwrap();
            assert_eq!(response.status(), 401);
            assert_eq!(response.headers()[header::WWW_AUTHENTICATE.as_str()], "Basic realm=\"fortimisp\"");
            assert!(!response.text().await.unwrap().contains("198.51.100.7"));
        }
        // Also for a feed that does not exist: who is asking is checked before what.
        assert_eq!(server.client.get(format!("{}/feeds/nope.txt", server.base)).send().await.unwrap().status(), 401);
        assert_eq!(server.count("unauthorized"), 6);
        assert_eq!(server.count("served"), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_client_outside_allowed_clients_is_refused_even_with_the_right_credentials() {
        let server = Server::start(blocked(), &["192.0.2.0/24"]).await;
        let response = server.get("/feeds/blocked.txt").send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert!(response.headers().get(header::WWW_AUTHENTICATE.as_str()).is_none());
        let text = response.text().await.unwrap();
        assert!(!text.contains("192.0.2") && !text.contains("198.51.100.7"), "{text}");
        let unauthenticated = server.client.get(format!("{}/other", server.base)).send().await.unwrap();
        assert_eq!(unauthenticated.status(), 403);
        assert_eq!(server.count("forbidden"), 2);
        assert_eq!(server.count("unauthorized"), 0);
        server.stop().await;

        let server = Server::start(blocked(), &["192.0.2.0/24", "127.0.0.0/8"]).await;
        assert_eq!(server.get("/feeds/blocked.txt").send().await.unwrap().status(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_feeds_other_paths_and_methods() {
        let server = Server::start(blocked(), &[]).await;
        for path in ["/feeds/nope.txt", "/feeds/blocked", "/blocked.txt", "/feeds/.txt", "/feeds/a/b.txt", "/"] {
            assert_eq!(server.get(path).send().await.unwrap().status(), 404, "{path}");
        }
        let post = server.client.post(format!("{}/feeds/blocked.txt", server.base)).basic_auth(USER, Some(PASSWORD));
        let post = post.send().await.unwrap();
        assert_eq!(post.status(), 405);
        assert_eq!(post.headers()[header::ALLOW.as_str()], "GET, HEAD");
        assert_eq!(server.count("not_found"), 7);
        assert_eq!(server.count("served"), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_failed_handshake_is_counted() {
        let server = Server::start(blocked(), &[]).await;
        let mut plain_http = TcpStream::connect(server.addr).await.unwrap();
        plain_http.write_all(b"GET /feeds/blocked.txt HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        // The server counts, then closes: once the stream ends, the count is there.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(BOUND, plain_http.read_to_end(&mut rest)).await.expect("the server closes");
        assert_eq!(server.count("tls_error"), 1);
        assert_eq!(server.count("served"), 0);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_handshake_and_header_timeouts() {
        let short = |limits: &mut Limits| {
            limits.handshake_timeout = Duration::from_millis(200);
            limits.header_timeout = Duration::from_millis(200);
        };
        let server = Server::start_with(blocked(), &[], short).await;
        // Connects and never says hello.
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(BOUND, silent.read_to_end(&mut rest)).await.expect("closed at the timeout");
        assert_eq!(server.count("tls_error"), 1);

        // Shakes hands and never sends a request.
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut server.ca.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await.expect("closed at the timeout");
        server.stop().await;
    }

    #[tokio::test]
    async fn beyond_the_connection_cap_a_client_waits_for_a_free_slot() {
        let server = Server::start_with(blocked(), &[], |limits| limits.max_connections = 1).await;
        // Holds the only slot (the handshake timeout is 10 s).
        let holder = TcpStream::connect(server.addr).await.unwrap();
        let fetch = server.get("/feeds/blocked.txt").send();
        tokio::pin!(fetch);
        // Not served while the slot is taken. (A broken cap fails here; a slow machine can only make it pass.)
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut fetch).await.is_err());
        drop(holder);
        let response = tokio::time::timeout(BOUND, fetch).await.expect("served once the slot is free").unwrap();
        assert_eq!(response.status(), 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_ends_idle_keep_alive_connections() {
        // Far beyond BOUND: only the shutdown can close the idle connection in time.
        let server =
            Server::start_with(blocked(), &[], |limits| limits.header_timeout = Duration::from_secs(3600)).await;
        // reqwest keeps the connection open in its pool after this.
        assert_eq!(server.get("/feeds/blocked.txt").send().await.unwrap().status(), 200);
        server.stop().await;
    }

    /// Swaps between two versions on every call, each built afresh (the old one is dropped by the source): N
    /// lines all equal to the version number, an ETag naming it.
    struct Swapping {
        calls: AtomicU64,
        current: Mutex<Arc<Snapshot>>,
    }

    const LINES: [usize; 2] = [20_000, 30_000];

    fn version(v: usize) -> Arc<Snapshot> {
        let body = format!("{v}\n").repeat(LINES[v - 1]);
        snapshot("swap", body.into_bytes(), &format!("\"v{v}\""), SystemTime::now())
    }

    impl Source for Swapping {
        fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
            if name != "swap" {
                return None;
            }
            let v = (self.calls.fetch_add(1, Ordering::Relaxed) % 2 + 1) as usize;
            let mut current = self.current.lock().unwrap();
            *current = version(v);
            Some(current.clone())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_fetch_is_one_whole_version_while_the_source_swaps() {
        let source = Arc::new(Swapping { calls: AtomicU64::new(0), current: Mutex::new(version(1)) });
        let server = Arc::new(Server::start(source, &[]).await);
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let server = server.clone();
            clients.spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..10 {
                    let response = server.get("/feeds/swap.txt").send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let etag = response.headers()[ETAG].to_str().unwrap().to_string();
                    let body = response.text().await.unwrap();
                    let v: usize = body.lines().next().unwrap().parse().unwrap();
                    assert!(body.lines().all(|line| line == v.to_string()), "a body mixes versions");
                    assert_eq!(body.lines().count(), LINES[v - 1], "version {v} whole");
                    assert_eq!(etag, format!("\"v{v}\""), "the ETag is the body's");
                    seen.push(v);
                }
                seen
            });
        }
        let mut seen = Vec::new();
        while let Some(done) = clients.join_next().await {
            seen.extend(done.unwrap());
        }
        assert_eq!(seen.len(), 80);
        assert!(seen.contains(&1) && seen.contains(&2), "both versions were served");
        let bytes: u64 = seen.iter().map(|&v| (LINES[v - 1] * 2) as u64).sum();
        assert_eq!(server.metrics.feed_served_bytes.get(), bytes);
        Arc::into_inner(server).expect("every client is done").stop().await;
    }

    fn check_route(allowed: bool, method: Method, path: &str, auth: Option<&str>) -> Result<String, Refusal> {
        let access = Access::new(USER, PASSWORD, Vec::new());
        let auth = auth.map(|a| HeaderValue::from_str(a).unwrap());
        route(&access, allowed, &method, path, auth.as_ref()).map(str::to_string)
    }

    #[test]
    fn route_checks_in_order() {
        let right = format!("Basic {}", base64(format!("{USER}:{PASSWORD}").as_bytes()));
        let lower = format!("basic  {}", base64(format!("{USER}:{PASSWORD}").as_bytes()));
        let wrong = format!("Basic {}", base64(format!("{USER}:{PASSWORD}x").as_bytes()));
        // (client allowed, method, path, Authorization, expected)
        type Case<'a> = (bool, Method, &'a str, Option<&'a str>, Result<&'a str, Refusal>);
        let cases: &[Case] = &[
            (true, Method::GET, "/feeds/a-b_c.1.txt", Some(&right), Ok("a-b_c.1")),
            (true, Method::HEAD, "/feeds/a.txt", Some(&lower), Ok("a")),
            (false, Method::GET, "/feeds/a.txt", Some(&right), Err(Refusal::Forbidden)),
            (false, Method::POST, "/x", None, Err(Refusal::Forbidden)),
            (true, Method::GET, "/feeds/a.txt", None, Err(Refusal::NoCredentials)),
            (true, Method::GET, "/feeds/a.txt", Some("Bearer abc"), Err(Refusal::NoCredentials)),
            (true, Method::GET, "/feeds/a.txt", Some(&wrong), Err(Refusal::BadCredentials)),
            (true, Method::GET, "/x", Some(&wrong), Err(Refusal::BadCredentials)),
            (true, Method::GET, "/feeds/a%20b.txt", Some(&right), Err(Refusal::NotFound)),
            (true, Method::POST, "/feeds/a.txt", Some(&right), Err(Refusal::MethodNotAllowed)),
            (true, Method::POST, "/x", Some(&right), Err(Refusal::NotFound)),
        ];
        for (allowed, method, path, auth, expected) in cases {
            let got = check_route(*allowed, method.clone(), path, *auth);
            assert_eq!(got.as_deref().map_err(|r| *r), *expected, "{method} {path} {auth:?}");
        }
    }

    #[test]
    fn ipv4_mapped_peers_are_judged_as_ipv4() {
        let access =
            Access::new(USER, PASSWORD, vec!["192.0.2.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
        for (peer, allowed) in
            [("192.0.2.9", true), ("::ffff:192.0.2.9", true), ("::ffff:198.51.100.1", false), ("2001:db8::1", true)]
        {
            assert_eq!(access.allows(peer.parse().unwrap()), allowed, "{peer}");
        }
        assert!(Access::new(USER, PASSWORD, Vec::new()).allows("::ffff:198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn same_bytes_needs_equal_length_and_content() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(same_bytes(b"", b""));
        for other in [&b"abd"[..], b"ab", b"abc\0", b"", b"xbc"] {
            assert!(!same_bytes(b"abc", other), "{other:?}");
        }
    }

    #[test]
    fn if_modified_since_in_the_future_or_unreadable_is_ignored() {
        let now = built_at() + Duration::from_secs(3600);
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MODIFIED_SINCE, HeaderValue::from_str(value).unwrap());
            not_modified(&headers, "\"abc\"", built_at(), now)
        };
        assert!(check("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert!(check("Tue, 14 Nov 2023 23:13:20 GMT"), "now");
        assert!(!check("Tue, 14 Nov 2023 23:13:21 GMT"), "the future");
        assert!(!check("Tuesday, 14-Nov-23 22:13:20 GMT"), "RFC 850 form");
        assert!(!check("yesterday"));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\"", built_at(), now));
    }

    #[test]
    fn the_throttle_admits_one_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut throttle = Throttle::default();
        assert_eq!(throttle.admit(start, minute), Some(0));
        assert_eq!(throttle.admit(start + Duration::from_secs(1), minute), None);
        assert_eq!(throttle.admit(start + Duration::from_secs(59), minute), None);
        assert_eq!(throttle.admit(start + minute, minute), Some(2));
        assert_eq!(throttle.admit(start + minute, minute), None);
        assert_eq!(throttle.admit(start + 2 * minute, minute), Some(1));
    }

    #[tokio::test]
    async fn bind_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        ca.issue_server_cert().write_to_dir(dir.path()).unwrap();
        let cfg = |listen: &str, cert: &str, key: &str| config::Serve {
            listen: listen.parse().unwrap(),
            tls_cert: dir.path().join(cert),
            tls_key: dir.path().join(key),
            username: USER.into(),
            password: ApiKey::new(PASSWORD),
            allowed_clients: Vec::new(),
        };
        let message = |cfg: config::Serve| async move { bind(&cfg).await.err().expect("an error").to_string() };
        assert!(message(cfg("127.0.0.1:0", "missing.pem", "key.pem")).await.starts_with("feed.tls_cert: "));
        assert!(message(cfg("127.0.0.1:0", "cert.pem", "missing.pem")).await.starts_with("feed.tls_key: "));
        assert!(message(cfg("127.0.0.1:0", "cert.pem", "cert.pem")).await.starts_with("feed.tls_key: "));
        let taken = bind(&cfg("127.0.0.1:0", "cert.pem", "key.pem")).await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let error = message(cfg(&addr, "cert.pem", "key.pem")).await;
        assert!(error.starts_with(&format!("feed.listen: cannot listen on {addr}: ")), "{error}");
    }
}
