//! The transport layer: HTTP (reqwest + rustls), `Authorization: Bearer`, `vdom=`, the rate limit, the bounded
//! retry and the FortiOS envelope with its error codes. It knows FortiOS paths only as [`Endpoint`]s and nothing of
//! block groups; the typed REST calls are in `api`, the block groups in `groups`, both over this.
//!
//! Every request goes through [`Transport::call`]: DELETE guard, rate limit, one attempt, envelope
//! classification, bounded retry. Nothing here holds a lock across a request: concurrent callers share one
//! connection pool and one rate limit, and otherwise proceed independently.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::objects::Family;
use super::{Error, RetryPolicy};

/// Python `quote(s, safe='')` / Go `url.QueryEscape`: everything but `A-Za-z0-9-_.~` is encoded, so
/// `198.51.100.7/32` becomes `198.51.100.7%2F32`.
const MKEY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Query values: like [`MKEY`] but FortiOS's filter/format syntax stays readable (`filter=comment=@fortimisp%20`,
/// `format=name|comment|subnet`), as in Fortinet's examples.
const QUERY_VALUE: &AsciiSet = &MKEY.remove(b'=').remove(b'@').remove(b'!').remove(b'|').remove(b',').remove(b':');

/// The cmdb tables we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Address,
    Address6,
    Addrgrp,
    Addrgrp6,
    /// `system/external-resource`: the threat feeds.
    ExternalResource,
}

impl Table {
    /// The table's path under `/api/v2/cmdb/`.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Table::Address => "firewall/address",
            Table::Address6 => "firewall/address6",
            Table::Addrgrp => "firewall/addrgrp",
            Table::Addrgrp6 => "firewall/addrgrp6",
            Table::ExternalResource => "system/external-resource",
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
pub(crate) enum Endpoint<'a> {
    Collection(Table),
    Entry(Table, &'a str),
    Members(Table, &'a str),
    Member(Table, &'a str, &'a str),
    Monitor(&'static str),
}

/// The FortiOS response envelope (fields we read).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Envelope {
    status: Option<String>,
    http_status: Option<u16>,
    error: Option<Value>,
    cli_error: Option<String>,
    #[serde(default)]
    pub(crate) results: Value,
    pub(crate) version: Option<String>,
    pub(crate) build: Option<u64>,
    pub(crate) serial: Option<String>,
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

/// Everything the transport needs: where, which key, how to trust the box, how fast and how often to retry.
/// Field names follow `[fortigate]` in config.toml; [`super::ClientOptions`] carries the same fields.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Base URL, e.g. `https://fortigate.example.org` (no path).
    pub url: String,
    /// Further management URLs of the same FortiGate (an HA cluster's units), tried in order when the current one
    /// does not answer.
    pub fallback_urls: Vec<String>,
    /// REST API admin token, sent as `Authorization: Bearer`.
    pub api_key: crate::secret::ApiKey,
    /// VDOM sent as `vdom=` on every call.
    pub vdom: String,
    /// Extra PEM trust roots (added to the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// `false` accepts any certificate; the caller logs the warning.
    pub verify_tls: bool,
    /// Per-request timeout (connect included).
    pub timeout: Duration,
    /// Rate limit for all requests of this transport; 0 = unlimited.
    pub requests_per_second: f64,
    /// Retry policy for retryable errors.
    pub retry: RetryPolicy,
    /// Times every request (`fortimisp_request_duration_seconds{server="fortigate"}`); `None`: not timed.
    pub requests: Option<crate::metrics::RequestObserver>,
}

/// The FortiOS REST transport of one FortiGate (one VDOM). Cheap to share (`Arc<Transport>`): one connection
/// pool, one rate limit for every layer built over it (block groups, banned IPs, later threat feeds).
pub struct Transport {
    http: reqwest::Client,
    /// `url`, then the fallback URLs; `current` indexes the one in use (a failover moves it on, for every caller).
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    auth: HeaderValue,
    vdom: String,
    limiter: RateLimiter,
    retry: RetryPolicy,
    requests: Option<crate::metrics::RequestObserver>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("url", &self.base()).field("vdom", &self.vdom).finish_non_exhaustive()
    }
}

impl Transport {
    /// Builds the transport (no request is sent).
    ///
    /// # Errors
    /// [`Error::CaFile`] if `ca_file` cannot be read or holds no certificate, [`Error::InvalidOption`] for a key
    /// that is not a valid header value, [`Error::Build`] if the TLS stack cannot be set up.
    pub fn new(opts: TransportOptions) -> Result<Transport, Error> {
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
        let bases = std::iter::once(&opts.url)
            .chain(&opts.fallback_urls)
            .map(|url| url.trim_end_matches('/').to_string())
            .collect();
        Ok(Transport {
            http,
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            auth,
            vdom: opts.vdom,
            limiter: RateLimiter::new(opts.requests_per_second),
            retry: opts.retry,
            requests: opts.requests,
        })
    }

    fn url(&self, endpoint: &Endpoint<'_>, query: &[(&str, &str)]) -> String {
        let enc = |s: &str| utf8_percent_encode(s, MKEY).to_string();
        let path = match endpoint {
            Endpoint::Collection(t) => format!("/api/v2/cmdb/{}", t.path()),
            Endpoint::Entry(t, n) => format!("/api/v2/cmdb/{}/{}", t.path(), enc(n)),
            Endpoint::Members(t, g) => {
                format!("/api/v2/cmdb/{}/{}/member", t.path(), enc(g))
            }
            Endpoint::Member(t, g, m) => {
                format!("/api/v2/cmdb/{}/{}/member/{}", t.path(), enc(g), enc(m))
            }
            Endpoint::Monitor(p) => format!("/api/v2/monitor/{p}"),
        };
        let value = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
        let mut url = format!("{path}?vdom={}", value(&self.vdom));
        for (k, v) in query {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.push_str(&value(v));
        }
        url
    }

    /// The management URL in use (the first that answered since the last failover).
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    /// The one function that sends requests: guard, rate limit, attempt, classify, retry. `name` is the entry the
    /// errors name.
    pub(crate) async fn call(
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
        let path = self.url(&endpoint, query);
        let mut attempt = 1;
        let mut failovers = 0;
        loop {
            let base = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
            let url = format!("{}{path}", self.bases[base]);
            let result = self.attempt(&method, &url, body, name).await;
            match result {
                // Another management URL of the same FortiGate may answer: each is tried once per call, at once.
                Err(error) if error.is_unreachable() && failovers + 1 < self.bases.len() => {
                    failovers += 1;
                    let next = (base + 1) % self.bases.len();
                    let _ = self.current.compare_exchange(
                        base,
                        next,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tracing::warn!(message = "FortiGate URL does not answer; trying the next one.", %error,
                        from = %self.bases[base], to = %self.bases[next]);
                }
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
        let started = std::time::Instant::now();
        let result = async {
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
        .await;
        if let Some(requests) = &self.requests {
            requests.observe(result.as_ref().is_err_and(Error::is_request_failure), started.elapsed());
        }
        result
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
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    name: Option<&str>,
) -> Result<Envelope, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    /// What counts as a failed request in `fortimisp_request_duration_seconds`: no usable answer. FortiOS's
    /// answers of normal work (not found, already exists, in use, ...) do not.
    #[test]
    fn request_failures_are_the_answers_that_are_not_answers() {
        let env = |http: u16, code: i64| {
            serde_json::to_vec(&json!({"status": "error", "http_status": http, "error": code})).expect("json")
        };
        let cases: Vec<(u16, Vec<u8>, bool)> = vec![
            (200, br#"{"status":"success","results":[]}"#.to_vec(), false),
            (404, env(404, -3), false),
            (500, env(500, -5), false),
            (500, env(500, -23), false),
            (500, env(500, -52), false),
            (500, env(500, -651), false),
            (401, b"<html>401</html>".to_vec(), true),
            (403, env(403, -14), true),
            (429, Vec::new(), true),
            (503, b"Service Unavailable".to_vec(), true),
            (200, b"not json".to_vec(), true),
        ];
        for (status, body, failure) in cases {
            let failed = classify(status, None, &body, Some("n")).as_ref().is_err_and(Error::is_request_failure);
            assert_eq!(failed, failure, "status {status}, body {}", String::from_utf8_lossy(&body));
        }
        assert!(Error::Timeout.is_request_failure());
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
}
