//! The FortiGate's I/O around external threat feeds: fetching a feed's `resource` (HTTP basic auth, HTTPS against
//! the CA a test gives), the polling task, and the feed events sent to a syslog collector over UDP.
//!
//! What a fetch *means* (load, limit, status, events) is pure and lives in [`super::feed`]; this module only moves
//! bytes: [`pull_now`](super::FortiGateEmulator::pull_now) copies what it needs out of the shared state, fetches without holding the lock, and hands the
//! answer back to [`FeedState::fetched`](super::feed::FeedState::fetched).
//!
//! # Emulator choices where the reference is silent
//! - Polling is off until a test or the lab turns it on ([`FeedPolling`]): a test drives fetches with
//!   [`FortiGateEmulator::pull_now`](super::FortiGateEmulator::pull_now) or sets a short interval. [`FeedPolling::RefreshRate`] uses each
//!   feed's `refresh-rate` minutes, as the real box does. A new feed (or one just enabled) is fetched as soon as
//!   the poller sees it, then at its interval.
//! - TLS: with a CA given (`set_feed_ca`) only that CA is trusted; without one, the usual web roots. The chain is
//!   always verified, `server-identity-check none` included (a real FortiGate then skips verification); `none`
//!   and `basic` skip the host-name check, `full` adds it.
//! - Conditional requests: the `ETag` / `Last-Modified` of the last file are sent back; a 304 keeps the list, counts
//!   as downloaded and logs nothing. A body over [`MAX_FILE_BYTES`] is a failed fetch.
//! - One fetch at a time, device-wide.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::feed::{event_line, Device, FeedEvent, Fetched};
use super::{unix_now, Inner, Shared, HOSTNAME};

/// Largest feed file accepted (the per-resource size limit of FortiOS before 7.4.4, reference §6).
pub const MAX_FILE_BYTES: usize = 10 << 20;

/// How long one fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// When the emulator fetches pulled feeds (`update-method feed`, `status enable`) on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedPolling {
    /// Never: only `pull_now` fetches (the default, so tests stay deterministic).
    #[default]
    Off,
    /// Every feed at this interval, whatever its `refresh-rate` (tests, the lab).
    Every(Duration),
    /// Each feed every `refresh-rate` minutes, as FortiOS does.
    RefreshRate,
}

/// What a successful [`pull_now`](super::FortiGateEmulator::pull_now) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// A file was loaded: `count` entries held, `dropped` beyond the limit, `changed` against the list before.
    Loaded { count: usize, dropped: usize, changed: bool },
    /// 304: the list in force stays.
    NotModified,
}

/// Why a [`pull_now`](super::FortiGateEmulator::pull_now) did not load a file. The feed's status records the failures too (`resource_file_status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("no external resource named {0}")]
    UnknownFeed(String),
    /// `update-method push`, or `status disable`: the FortiGate does not fetch it.
    #[error("external resource {0} is not a pulled, enabled feed")]
    NotPulled(String),
    /// The fetch failed; the previous list stays in force.
    #[error("fetch failed (HTTP status {status:?}): {error}")]
    Fetch { status: Option<u16>, error: String },
}

/// What a fetch needs, copied out of the shared state so no lock is held across it.
struct Target {
    url: String,
    credentials: Option<(String, String)>,
    check_host: bool,
    user_agent: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
    ca_pem: Option<Vec<u8>>,
}

/// Fetches `name` once and records the outcome; returns when done. Fetches are serialised device-wide.
pub(super) async fn pull(shared: &Shared, name: &str) -> Result<PullOutcome, PullError> {
    let fetch_lock = shared.lock().fetch_lock.clone();
    let _one_at_a_time = fetch_lock.lock().await;
    let target = {
        let inner = shared.lock();
        let resource = inner.resources.get(name).ok_or_else(|| PullError::UnknownFeed(name.to_string()))?;
        if !resource.is_pulled() {
            return Err(PullError::NotPulled(name.to_string()));
        }
        Target {
            url: resource.url().to_string(),
            credentials: resource.credentials().map(|(u, p)| (u.to_string(), p.to_string())),
            check_host: resource.identity_check() == "full",
            user_agent: resource.user_agent().map(str::to_string),
            etag: resource.state.etag.clone(),
            last_modified: resource.state.last_modified.clone(),
            ca_pem: inner.config.feed_ca_pem.clone(),
        }
    };
    let fetched = fetch(&target).await;
    let result = {
        let mut guard = shared.lock();
        let inner = &mut *guard;
        let limit = inner.config.feed_entry_limit;
        let resource = inner.resources.get_mut(name).ok_or_else(|| PullError::UnknownFeed(name.to_string()))?;
        let failure = match &fetched {
            Fetched::Failed { status, error } => Some(PullError::Fetch { status: *status, error: error.clone() }),
            _ => None,
        };
        let not_modified = fetched == Fetched::NotModified;
        let before = resource.state.list.entries().to_vec();
        let events = resource.state.fetched(name, fetched, limit, unix_now());
        let list = &resource.state.list;
        let result = match failure {
            Some(error) => Err(error),
            None if not_modified => Ok(PullOutcome::NotModified),
            None => Ok(PullOutcome::Loaded {
                count: list.entries().len(),
                dropped: list.dropped(),
                changed: list.entries() != before.as_slice(),
            }),
        };
        emit(inner, &events);
        result
    };
    flush_events(shared);
    let fetched_tx = shared.lock().fetched.clone();
    fetched_tx.send_modify(|n| *n += 1);
    result
}

fn client_for(target: &Target) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .danger_accept_invalid_hostnames(!target.check_host);
    if let Some(pem) = &target.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("feed CA: {e}"))?;
        if certs.is_empty() {
            return Err("feed CA: no certificate in the PEM".into());
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(ua) = &target.user_agent {
        builder = builder.user_agent(ua.clone());
    }
    builder.build().map_err(|e| format!("client: {e}"))
}

/// The error and its causes on one line (reqwest's own message names only the URL).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn fetch(target: &Target) -> Fetched {
    let client = match client_for(target) {
        Ok(c) => c,
        Err(error) => return Fetched::Failed { status: None, error },
    };
    let mut request = client.get(&target.url);
    if let Some((user, password)) = &target.credentials {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(etag) = &target.etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    if let Some(since) = &target.last_modified {
        request = request.header(header::IF_MODIFIED_SINCE, since);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Fetched::Failed { status: None, error: chain(&e) },
    };
    let status = response.status().as_u16();
    match status {
        200 => {
            let text = |name: header::HeaderName| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
            };
            let (etag, last_modified) = (text(header::ETAG), text(header::LAST_MODIFIED));
            match response.bytes().await {
                Ok(body) if body.len() > MAX_FILE_BYTES => Fetched::Failed {
                    status: Some(status),
                    error: format!("file of {} bytes is over the {MAX_FILE_BYTES}-byte limit", body.len()),
                },
                Ok(body) => Fetched::File { body: String::from_utf8_lossy(&body).into_owned(), etag, last_modified },
                Err(e) => Fetched::Failed { status: Some(status), error: chain(&e) },
            }
        }
        304 => Fetched::NotModified,
        _ => Fetched::Failed { status: Some(status), error: format!("HTTP {}", response.status()) },
    }
}

/// Renders `events` as syslog lines, keeps them in the emulator's event log and queues them for the collector.
pub(super) fn emit(inner: &mut Inner, events: &[FeedEvent]) {
    if events.is_empty() {
        return;
    }
    let device = Device { devname: HOSTNAME, devid: &inner.config.serial, vdom: "root" };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let lines: Vec<String> = events.iter().map(|e| event_line(e, &device, now)).collect();
    inner.event_log.extend(lines.iter().cloned());
    if inner.config.event_syslog.is_some() {
        inner.outbox.extend(lines);
    }
}

/// Sends the queued event lines, one UDP datagram each, outside the state lock.
pub(super) fn flush_events(shared: &Shared) {
    let (lines, target) = {
        let mut inner = shared.lock();
        (std::mem::take(&mut inner.outbox), inner.config.event_syslog)
    };
    let Some(target) = target.filter(|_| !lines.is_empty()) else { return };
    if let Err(error) = send_udp(target, &lines) {
        tracing::warn!(message = "Emulator could not send feed events.", %target, %error);
    }
}

fn send_udp(target: SocketAddr, lines: &[String]) -> std::io::Result<()> {
    let local: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = std::net::UdpSocket::bind(local)?;
    for line in lines {
        socket.send_to(line.as_bytes(), target)?;
    }
    Ok(())
}

/// Which pulled feeds are due at `now` given when each was last polled, and when the next one falls due.
fn schedule(inner: &Inner, last: &BTreeMap<String, Instant>, now: Instant) -> (Vec<String>, Option<Instant>) {
    let mut due = Vec::new();
    let mut next: Option<Instant> = None;
    for name in inner.resources.names() {
        let Some(resource) = inner.resources.get(&name).filter(|r| r.is_pulled()) else { continue };
        let interval = match inner.config.feed_polling {
            FeedPolling::Off => return (Vec::new(), None),
            FeedPolling::Every(d) => d,
            FeedPolling::RefreshRate => Duration::from_secs(resource.refresh_minutes() * 60),
        };
        match last.get(&name).map(|t| *t + interval) {
            Some(at) if at > now => next = Some(next.map_or(at, |n| n.min(at))),
            _ => due.push(name),
        }
    }
    (due, next)
}

/// Polls the pulled feeds per [`FeedPolling`] until `cancel`; woken early when the feeds or the polling change.
pub(super) async fn poll_loop(shared: Shared, cancel: CancellationToken) {
    let wake = shared.lock().feed_wake.clone();
    let mut last: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let (due, next) = {
            let inner = shared.lock();
            last.retain(|name, _| inner.resources.get(name).is_some());
            schedule(&inner, &last, Instant::now())
        };
        for name in &due {
            last.insert(name.clone(), Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => return,
                // Failures are recorded in the feed's status; the next poll tries again.
                _ = pull(&shared, name) => {}
            }
        }
        if !due.is_empty() {
            continue;
        }
        let until_next = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            _ = until_next => {}
        }
    }
}
