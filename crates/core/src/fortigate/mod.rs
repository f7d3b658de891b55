//! The FortiGate side of fortimisp: a FortiOS REST client that blocks an IP by putting an address object into a
//! block group that a deny policy references, and undoes it; plus the banned-IP (quarantine) backend.
//!
//! # Layout
//! - [`objects`]: pure domain types: [`ObjectName`] (`object_prefix + IP`, never a `/`), [`Comment`] (the
//!   `fortimisp <RFC 3339 UTC> misp-event=<id> …` marker) and [`CommentKind`] (ours / placeholder / legacy /
//!   foreign).
//! - `transport`: [`Transport`]: HTTP (reqwest + rustls, `Authorization: Bearer`, `vdom=`), the rate limit,
//!   retries, the FortiOS envelope and error codes. Knows nothing of block groups.
//! - `api`: one typed method per REST call on [`Transport`] (address and addrgrp tables, system status, banned
//!   IPs). With `transport`, the only code that knows FortiOS paths, percent-encoding and the envelope.
//! - `groups`: [`Client`], the block-groups layer over an `Arc<Transport>`: it owns the group cache and the
//!   idempotent domain operations the daemons call: [`Client::ensure_groups`], [`Client::block`],
//!   [`Client::unblock`], [`Client::list_owned`], [`Client::legacy_members`], [`Client::unblock_legacy`]. The
//!   dependency runs one way, groups -> api -> transport; several layers (one [`Client`] per set of block groups,
//!   later other backends) can share one transport and its rate limit.
//! - `feeds`: the threat-feed calls on [`Transport`]: [`Transport::push_feed`] (`add`/`remove`/`snapshot`),
//!   [`Transport::feed_status`] (the entry-list status, [`FeedStatus`]), [`Transport::external_resource`].
//! - `probe`: what `integration validate` uses to prove the token's permissions without leaving anything behind:
//!   [`Client::probe_address_write`] (create, read back and delete a probe object, [`WriteProbe`]),
//!   [`Client::probe_ban`], [`Client::block_group_meta`] (a block group and how many objects reference it).
//!
//! # Invariants
//! - Errors are decided on the envelope's `error` code, never on message text, and on the HTTP status only where
//!   there is no code (404, 401, 429, 5xx without a JSON body). -5 is "already exists" whether it comes with 500 or
//!   424.
//! - A DELETE is never sent without a non-empty object name: `DELETE …/firewall/address` purges the table. The
//!   check sits in the one function that sends requests.
//! - Group membership changes only through the child-table calls (`POST …/addrgrp/{g}/member`,
//!   `DELETE …/member/{m}`); the member list is never PUT (two writers would drop each other's members).
//! - Only objects whose comment is our marker are ever deleted; an existing object with any other comment is a
//!   [`Error::Foreign`] conflict and is left untouched.
//! - `requests_per_second` is enforced in exactly one place (before every attempt, retries included).
//! - 401 is [`Error::Unauthorized`]: fatal, never retried (FortiOS locks the source IP out after a few failures,
//!   doubling each time). 429, 5xx, timeouts and dropped connections are retried with bounded exponential
//!   backoff and jitter ([`RetryPolicy`]).
//!
//! # Design decisions
//! - **Placeholder member.** Older FortiOS refuses an address group without members, so the last real member
//!   could not be removed. [`Client::ensure_groups`] creates each missing group with one permanent member:
//!   `<prefix>placeholder` (`192.0.2.255/32`, TEST-NET-1) in the IPv4 groups and `<prefix>placeholder6`
//!   (`2001:db8::ffff:ffff/128`, documentation prefix) in the IPv6 groups, commented `fortimisp placeholder`.
//!   That comment is not a marker ([`CommentKind::Placeholder`]), so housekeeping never prunes it. Blocking
//!   TEST-NET addresses is harmless.
//! - **Overflow.** When a group holds `max_group_members` blocked addresses (placeholder and nested groups not
//!   counted), or FortiOS answers "full" (-4 or -52), the next group `NAME-2`, `NAME-3`, … is used, created on
//!   demand with the placeholder, and added **once as a nested member of the base group**, so the operator's deny
//!   policy keeps referencing only `block_group`/`block_group6`. The base group therefore holds the placeholder
//!   plus one member per overflow group on top of its addresses: keep `max_group_members` a few entries below the
//!   model's per-group limit. If the box's own limit fills the base group first (so the overflow group cannot be
//!   nested), one of our addresses is moved from the base group into the new overflow group to free the slot
//!   (that address is unblocked for the duration of one request); if none can be moved, `block` returns
//!   [`Error::Full`] naming the base group (lower `max_group_members`).
//! - **No lock across a request.** The group cache is a `std::sync::Mutex` locked between requests only, so a slow
//!   or retried call delays its own block and no other. Concurrent `block`s of one IP are single-flighted per
//!   object (one object, one membership); two blocks racing for a group's last slot reserve it in the cache
//!   first, and a "full" answer from the box moves the loser on (see `groups`).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), fortimisp_core::fortigate::Error> {
//! use fortimisp_core::fortigate::{Client, ClientOptions, Comment};
//! use fortimisp_core::secret::ApiKey;
//! let client = Client::new(ClientOptions::new("https://fw.example.org", ApiKey::new("token")))?;
//! client.ensure_groups().await?;
//! let comment = Comment::new(chrono::Utc::now(), "1234", "ip-src");
//! client.block("198.51.100.7".parse().unwrap(), &comment).await?;
//! # Ok(()) }
//! ```

mod api;
mod feeds;
mod groups;
pub mod objects;
mod probe;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

pub use api::{AddressEntry, BannedIp, Change, Group, GroupMeta, SystemStatus};
pub use feeds::{entry_text, EntryText, ExternalResource, FeedStatus, PushCommand};
pub use groups::{BlockOutcome, Client, GroupOptions, LegacyMember, OwnedObject, UnblockOutcome};
pub use objects::{Comment, CommentKind, Family, Marker, ObjectName};
pub use probe::{WriteProbe, PROBE_IP};
pub use transport::{Transport, TransportOptions};

use crate::secret::ApiKey;

/// Overflow groups per family beyond which `block` answers [`Error::Full`] instead of creating more (a runaway
/// guard: 200 × 600 addresses is far beyond any FortiGate address table).
pub const MAX_OVERFLOW_GROUPS: usize = 200;
/// Reads one FortiOS answer (`status`, `body`) the way every request does: the envelope's error code first, then
/// the typed readers. For the fuzz targets and the bad-input tests.
#[doc(hidden)]
pub fn classify_response(status: u16, body: &[u8]) -> Result<usize, Error> {
    api::read_response(status, body)
}

/// Everything needed to build a [`Client`] and its [`Transport`]. Field names follow `[fortigate]` in config.toml.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://fortigate.example.org` (no path).
    pub url: String,
    /// Further management URLs of the same FortiGate, tried in order when the current one does not answer.
    pub fallback_urls: Vec<String>,
    /// REST API admin token, sent as `Authorization: Bearer`.
    pub api_key: ApiKey,
    /// VDOM sent as `vdom=` on every call.
    pub vdom: String,
    /// Extra PEM trust roots (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// `false` accepts any certificate; the caller logs the warning.
    pub verify_tls: bool,
    /// Per-request timeout (connect included).
    pub timeout: Duration,
    /// Client-side rate limit for all requests of this client; 0 = unlimited.
    pub requests_per_second: f64,
    /// IPv4 block group referenced by the deny policy.
    pub block_group: String,
    /// IPv6 block group.
    pub block_group6: String,
    /// Blocked addresses per group before overflowing to `NAME-2`, `NAME-3`, … (at least 1; at most
    /// [`MAX_OVERFLOW_GROUPS`] overflow groups are created).
    pub max_group_members: usize,
    /// Prefix of created object names.
    pub object_prefix: String,
    /// Retry policy for retryable errors.
    pub retry: RetryPolicy,
    /// Times every request (`fortimisp_request_duration_seconds{server="fortigate"}`); `None`: not timed (the
    /// hand-run commands).
    pub requests: Option<crate::metrics::RequestObserver>,
}

impl ClientOptions {
    /// The transport's part.
    pub fn transport_options(&self) -> TransportOptions {
        TransportOptions {
            url: self.url.clone(),
            fallback_urls: self.fallback_urls.clone(),
            api_key: self.api_key.clone(),
            vdom: self.vdom.clone(),
            ca_file: self.ca_file.clone(),
            verify_tls: self.verify_tls,
            timeout: self.timeout,
            requests_per_second: self.requests_per_second,
            retry: self.retry,
            requests: self.requests.clone(),
        }
    }

    /// The block groups' part.
    pub fn group_options(&self) -> GroupOptions {
        GroupOptions {
            block_group: self.block_group.clone(),
            block_group6: self.block_group6.clone(),
            max_group_members: self.max_group_members,
            object_prefix: self.object_prefix.clone(),
        }
    }

    /// Options with the contract's defaults (`vdom = "root"`, `MISP_BLOCK`/`MISP_BLOCK6`, 600 members, 10 rps,
    /// `misp-` prefix, 10 s timeout, TLS verified).
    pub fn new(url: impl Into<String>, api_key: ApiKey) -> Self {
        ClientOptions {
            url: url.into(),
            fallback_urls: Vec::new(),
            api_key,
            vdom: "root".into(),
            ca_file: None,
            verify_tls: true,
            timeout: Duration::from_secs(10),
            requests_per_second: 10.0,
            block_group: "MISP_BLOCK".into(),
            block_group6: "MISP_BLOCK6".into(),
            max_group_members: 600,
            object_prefix: "misp-".into(),
            retry: RetryPolicy::default(),
            requests: None,
        }
    }
}

/// Bounded exponential backoff with jitter: attempt `n` (1-based) waits a random time in
/// `[d/2, d]` where `d = min(max_delay, base_delay * 2^(n-1))`; a 429's `Retry-After` is a lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after failed attempt `attempt` (1-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.backoff().ceiling(attempt)
    }

    /// The formula, shared with every other retry ([`crate::backoff`]).
    pub fn backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::new(self.base_delay, self.max_delay)
    }
}

/// Errors of the FortiGate boundary. Each carries what an operator needs (status, FortiOS code, object name).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: bad or revoked token, or this host is not a trusted host. Fatal: retrying extends the lockout.
    #[error("fortigate refused the api token (http 401): bad or revoked token, or source not a trusted host")]
    Unauthorized,
    /// 429: rate limited, or this source IP is locked out after failed logins.
    #[error("fortigate answered http 429 (rate limited or source locked out)")]
    TooManyRequests { retry_after: Option<Duration> },
    /// 403 / -14 / -37: the admin profile lacks a permission.
    #[error("permission denied (http {status}, error {code:?})")]
    Forbidden { status: u16, code: Option<i64> },
    /// 404 or -3 on an entry.
    #[error("{name}: not found")]
    NotFound { name: String },
    /// -5.
    #[error("{name}: already exists")]
    AlreadyExists { name: String },
    /// -23: still referenced by a group or a policy. Report; do not retry in a loop.
    #[error("{name}: in use by a group or policy (error -23)")]
    InUse { name: String },
    /// -3 on a member add: the object to add does not exist (or has the wrong family).
    #[error("{name}: references a missing entry (error -3)")]
    MissingReference { name: String },
    /// -4 (table full) or -52 (group member limit).
    #[error("{name}: table or group is full (error {code})")]
    Full { name: String, code: i64 },
    /// -163/-164 or an object of another type with our name.
    #[error("{name}: name clashes with an object of another type (error {code:?})")]
    NameClash { name: String, code: Option<i64> },
    /// The object exists but its comment is not our marker; nothing was changed.
    #[error("{name}: exists on the fortigate and is not fortimisp's (comment {comment:?})")]
    Foreign { name: String, comment: String },
    /// Any other FortiOS error.
    #[error("fortigate error {code:?} (http {status}) on {name:?}: {cli_error:?}")]
    Api { status: u16, code: Option<i64>, name: Option<String>, cli_error: Option<String> },
    /// An HTTP error status without a FortiOS envelope (a 5xx page from httpsd or a proxy).
    #[error("fortigate answered http {status} without a json envelope")]
    Http { status: u16 },
    #[error("request timed out")]
    Timeout,
    /// A change handed to a background sender (the threat-feed pusher) that the FortiGate has not confirmed yet:
    /// it stays pending and is tried again.
    #[error("not confirmed by the fortigate yet: {detail}")]
    NotConfirmed { detail: String },
    /// Connection refused/reset/closed, TLS failure (including certificate verification).
    #[error("connection to fortigate failed")]
    Transport(#[source] reqwest::Error),
    /// A 2xx answer we cannot read.
    #[error("unexpected fortigate response: {detail}")]
    Protocol { detail: String },
    /// A [`ClientOptions`] value that cannot work.
    #[error("fortigate.{key}: {reason}")]
    InvalidOption { key: &'static str, reason: &'static str },
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// Guard: a DELETE without an object name would purge the whole table.
    #[error("refusing to send a delete without an object name")]
    EmptyMkey,
    #[error("ca_file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot build the http client")]
    Build(#[source] reqwest::Error),
}

impl Error {
    /// Worth retrying later: timeouts, dropped connections, 5xx without a FortiOS code, 429.
    /// Never: 401/403, validation, conflicts, anything FortiOS answered with an error code.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::TooManyRequests { .. } | Error::Timeout | Error::NotConfirmed { .. } => true,
            Error::Transport(e) => !is_certificate_error(e),
            Error::Http { status } => *status >= 500,
            Error::Api { status, code, .. } => code.is_none() && *status >= 500,
            _ => false,
        }
    }

    /// The request got no usable answer: a timeout, a connection or TLS failure, an HTTP error without an envelope
    /// (5xx from a proxy), 429, 401/403, or a body we cannot read. The answers FortiOS gives in normal work (404 for
    /// an object that is not there, -5 already exists, -23 in use, ...) are answers. This is `outcome="error"` of
    /// `fortimisp_request_duration_seconds`.
    pub fn is_request_failure(&self) -> bool {
        self.is_retryable()
            || self.is_fatal()
            || matches!(self, Error::Transport(_) | Error::Http { .. } | Error::Protocol { .. })
    }

    /// The request reached no FortiGate: a timeout or a connection that failed (not a TLS verification failure:
    /// another URL of the same box presents the same certificate). What makes a transport try its next URL.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Timeout => true,
            Error::Transport(e) => !is_certificate_error(e),
            _ => false,
        }
    }

    /// The operator must act (token, trusted hosts, profile permissions); the daemon should alert and stop calling.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Unauthorized | Error::Forbidden { .. })
    }

    /// A copy for a second reader (errors hold a `reqwest::Error`, which does not clone): the fatal ones keep their
    /// kind; any other becomes [`Error::NotConfirmed`] with its message (to be tried again).
    pub fn for_waiter(&self) -> Error {
        match self {
            Error::Unauthorized => Error::Unauthorized,
            Error::Forbidden { status, code } => Error::Forbidden { status: *status, code: *code },
            other => Error::NotConfirmed { detail: other.to_string() },
        }
    }
}

/// A TLS verification failure will not heal by retrying.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return true;
        }
        // io::Error::source() skips the wrapped error itself; descend through get_ref() instead.
        source = match s.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    false
}
