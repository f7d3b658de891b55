//! [`Error`]: everything that can go wrong talking to MISP, with the retry decision attached.

use std::path::PathBuf;
use std::time::Duration;

/// An error from the MISP boundary. Each variant carries what an operator needs (path, status, reason).
///
/// Expected outcomes are not errors: a sighting that matched nothing is [`super::SightingOutcome::NoMatch`], a
/// feed fetch with no feed enabled is [`super::FeedOutcome::NoFeedEnabled`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `misp.url` is not an absolute http(s) URL.
    #[error("misp.url {url:?} is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// `misp.ca_file` could not be read.
    #[error("cannot read misp.ca_file {path}: {source}")]
    CaFileRead { path: PathBuf, source: std::io::Error },
    /// `misp.ca_file` holds no usable PEM certificate.
    #[error("misp.ca_file {path} holds no usable PEM certificate")]
    CaFileInvalid { path: PathBuf },
    /// The HTTP client could not be built (TLS backend setup).
    #[error("cannot build the misp http client: {0}")]
    Build(#[source] reqwest::Error),
    /// The key was refused (HTTP 401, or 403 "Authentication failed"). Fatal: fix the key.
    #[error("misp refused the api key on {path} (http {status}): {reason}")]
    Unauthorized { path: String, status: u16, reason: String },
    /// The key is valid but the role lacks the permission for `path` (HTTP 403). Fatal.
    #[error("misp forbids {path} for this user: {reason}")]
    Forbidden { path: String, reason: String },
    /// The connection check found the role lacks a permission fortimisp needs (e.g. `perm_sighting`).
    #[error("misp role {role:?} lacks {permission}")]
    MissingPermission { role: String, permission: &'static str },
    /// HTTP 405, e.g. "API searches are not allowed for this user role." (`rate_limit_count = 0`).
    #[error("misp does not allow {path} (http 405): {reason}")]
    NotAllowed { path: String, reason: String },
    /// HTTP 404 (unknown feed id, wrong base URL).
    #[error("misp has no {path} (http 404): {reason}")]
    NotFound { path: String, reason: String },
    /// Another 4xx: the request itself is wrong; retrying will not help.
    #[error("misp rejected the request to {path} (http {status}): {reason}")]
    Rejected { path: String, status: u16, reason: String },
    /// HTTP 429. `reset` is `X-Rate-Limit-Reset` when the server sent it.
    #[error("misp rate limit exceeded on {path} (reset in {reset:?})")]
    RateLimited { path: String, reset: Option<Duration> },
    /// HTTP 5xx (PHP memory or time limit, a proxy's 502/504). `message` is MISP's JSON `message` if any.
    #[error("misp server error on {path} (http {status}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Server { path: String, status: u16, message: Option<String> },
    /// No complete answer within `misp.timeout`.
    #[error("misp request to {path} timed out")]
    Timeout { path: String },
    /// TLS verification failed (unknown CA, wrong name, expired). Fatal: fix `ca_file` or the certificate.
    #[error("tls verification of misp failed: {reason}")]
    Tls { reason: String },
    /// Could not connect, or the connection broke before a full response arrived.
    #[error("connection to misp failed on {path}: {source}")]
    Transport {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx body that is not JSON (truncated, or an HTML page from a proxy). Treated as transient.
    #[error("misp sent a body that is not json on {path}: {reason}")]
    Decode { path: String, reason: String },
    /// Valid JSON of an unexpected shape. Not transient: the server is not speaking the API we know.
    #[error("unexpected misp response on {path}: {reason}")]
    InvalidResponse { path: String, reason: String },
}

impl Error {
    /// Whether the same request may succeed later: timeouts, connection failures, 5xx, 429, non-JSON bodies.
    /// Authentication, permission, validation and shape errors are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server { .. }
                | Error::Timeout { .. }
                | Error::Transport { .. }
                | Error::Decode { .. }
        )
    }

    /// Whether the server certainly did not act on the request (so a write may be resent without doubling it).
    pub fn request_not_processed(&self) -> bool {
        match self {
            Error::RateLimited { .. } => true,
            Error::Transport { source, .. } => source.is_connect(),
            _ => false,
        }
    }

    /// Whether the error means the configuration or the key is wrong (stop, alert the operator).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::InvalidUrl { .. }
                | Error::CaFileRead { .. }
                | Error::CaFileInvalid { .. }
                | Error::Build(_)
                | Error::Unauthorized { .. }
                | Error::Forbidden { .. }
                | Error::MissingPermission { .. }
                | Error::Tls { .. }
        )
    }

    /// The HTTP status behind the error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unauthorized { status, .. } | Error::Rejected { status, .. } | Error::Server { status, .. } => {
                Some(*status)
            }
            Error::Forbidden { .. } => Some(403),
            Error::NotAllowed { .. } => Some(405),
            Error::NotFound { .. } => Some(404),
            Error::RateLimited { .. } => Some(429),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        let p = || "/x".to_string();
        let cases: Vec<(Error, bool, bool)> = vec![
            (Error::RateLimited { path: p(), reset: None }, true, false),
            (Error::Server { path: p(), status: 500, message: None }, true, false),
            (Error::Timeout { path: p() }, true, false),
            (Error::Decode { path: p(), reason: "x".into() }, true, false),
            (Error::Unauthorized { path: p(), status: 403, reason: "x".into() }, false, true),
            (Error::Forbidden { path: p(), reason: "x".into() }, false, true),
            (Error::NotAllowed { path: p(), reason: "x".into() }, false, false),
            (Error::NotFound { path: p(), reason: "x".into() }, false, false),
            (Error::Rejected { path: p(), status: 400, reason: "x".into() }, false, false),
            (Error::InvalidResponse { path: p(), reason: "x".into() }, false, false),
            (Error::Tls { reason: "x".into() }, false, true),
        ];
        for (error, retryable, fatal) in cases {
            assert_eq!(error.is_retryable(), retryable, "{error}");
            assert_eq!(error.is_fatal(), fatal, "{error}");
        }
    }
}
