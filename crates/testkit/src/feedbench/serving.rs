//! Serving one large feed, measured the same way for any server: the body's size; sequential fetches (handshake,
//! time to first byte, time to the last byte); then, for each client count, fetches per second and `304`s per
//! second (`If-None-Match` with the current ETag) over a fixed time, with the server process's CPU per answer
//! (from `/proc/<pid>/stat`). Every fetch is a new connection and TLS handshake ([`FeedClient`]).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::FeedClient;
use super::Summary;
use crate::loadgen::{cpu_seconds, rss_kib};

/// How much to fetch.
#[derive(Debug, Clone)]
pub struct ServingOptions {
    /// Sequential fetches for the timings.
    pub fetches: usize,
    /// How long each rate measurement runs.
    pub duration: Duration,
    /// Concurrent clients, one rate measurement each (and one for 304s).
    pub clients: Vec<usize>,
}

/// What one server did.
#[derive(Debug, Clone)]
pub struct ServingFigures {
    pub system: String,
    pub body_bytes: u64,
    /// The `# N entries` header of the body, when it has one.
    pub entries: Option<u64>,
    /// Milliseconds from the connect to: the end of the handshake, the end of the headers, the last body byte.
    pub handshake_ms: Summary,
    pub headers_ms: Summary,
    pub total_ms: Summary,
    pub rates: Vec<Rate>,
    /// The server's RSS and peak RSS after the rates, KiB.
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Answers per second with `clients` clients fetching back to back.
#[derive(Debug, Clone)]
pub struct Rate {
    pub clients: usize,
    /// `If-None-Match` with the current ETag: the answers counted are 304s.
    pub conditional: bool,
    /// Answers with the expected status (200, or 304 when conditional).
    pub answers: u64,
    /// Failed fetches or another status.
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// CPU seconds the server process used meanwhile.
    pub server_cpu_s: f64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.answers as f64 / self.seconds.max(f64::EPSILON)
    }

    /// The server's CPU time per answer, in milliseconds.
    pub fn cpu_ms_per_answer(&self) -> f64 {
        1000.0 * self.server_cpu_s / self.answers.max(1) as f64
    }

    /// The server's CPU use meanwhile, in cores.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu_s / self.seconds.max(f64::EPSILON)
    }
}

/// Measures the server behind `client` (process `pid`). Returns the figures and the body of the first fetch.
pub async fn measure(
    system: &str,
    client: &FeedClient,
    pid: u32,
    opts: &ServingOptions,
) -> Result<(ServingFigures, Vec<u8>)> {
    let first = client.fetch(None, true).await.with_context(|| format!("{system}: the first fetch"))?;
    if first.status != 200 {
        bail!("{system}: the first fetch answered {}", first.status);
    }
    let etag = first.etag.clone().with_context(|| format!("{system}: no ETag"))?;
    let body = first.body.unwrap_or_default();
    let (mut handshake, mut headers, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.fetches {
        let fetch = client.fetch(None, false).await.with_context(|| format!("{system}: sequential fetch {i}"))?;
        if fetch.status != 200 || fetch.body_bytes != body.len() as u64 {
            bail!("{system}: fetch {i} answered {} with {} bytes", fetch.status, fetch.body_bytes);
        }
        handshake.push(ms(fetch.handshake));
        headers.push(ms(fetch.headers));
        total.push(ms(fetch.total));
    }
    let mut rates = Vec::new();
    for &clients in &opts.clients {
        for conditional in [false, true] {
            let etag = conditional.then_some(etag.as_str());
            rates.push(rate(client, clients, etag, opts.duration, pid).await);
        }
    }
    let (rss_kib, hwm_kib) = rss_kib(pid);
    let figures = ServingFigures {
        system: system.to_string(),
        body_bytes: body.len() as u64,
        entries: announced_entries(&body),
        handshake_ms: Summary::of(&mut handshake),
        headers_ms: Summary::of(&mut headers),
        total_ms: Summary::of(&mut total),
        rates,
        rss_kib,
        hwm_kib,
    };
    Ok((figures, body))
}

/// `clients` tasks fetching back to back for `duration` (a fetch under way at the end is finished and counted).
async fn rate(client: &FeedClient, clients: usize, etag: Option<&str>, duration: Duration, pid: u32) -> Rate {
    let expected = if etag.is_some() { 304 } else { 200 };
    let cpu_before = cpu_seconds(pid);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..clients.max(1) {
        let client = client.clone();
        let etag = etag.map(str::to_string);
        tasks.spawn(async move {
            let (mut answers, mut errors, mut bytes) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                match client.fetch(etag.as_deref(), false).await {
                    Ok(fetch) if fetch.status == expected => {
                        answers += 1;
                        bytes += fetch.body_bytes;
                    }
                    _ => errors += 1,
                }
            }
            (answers, errors, bytes)
        });
    }
    let mut rate = Rate {
        clients: clients.max(1),
        conditional: etag.is_some(),
        answers: 0,
        errors: 0,
        bytes: 0,
        seconds: 0.0,
        server_cpu_s: 0.0,
    };
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((answers, errors, bytes)) => {
                rate.answers += answers;
                rate.errors += errors;
                rate.bytes += bytes;
            }
            Err(_) => rate.errors += 1,
        }
    }
    rate.seconds = start.elapsed().as_secs_f64();
    rate.server_cpu_s = cpu_seconds(pid) - cpu_before;
    rate
}

/// `N` of the `# N entries, built ...` header line fortimisp writes.
pub fn announced_entries(body: &[u8]) -> Option<u64> {
    let head = &body[..body.len().min(4096)];
    String::from_utf8_lossy(head)
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# ")?.split_once(" entries")?.0.parse().ok())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_count_is_read_from_the_header() {
        let body = b"# fortimisp threat feed fortimisp-block\n# 3 entries, built 2026-01-01T00:00:00Z\n11.0.0.1\n";
        assert_eq!(announced_entries(body), Some(3));
        assert_eq!(announced_entries(b"11.0.0.1\n# 3 entries\n"), None, "only the leading comments count");
    }

    #[test]
    fn rates_divide_by_what_was_measured() {
        let rate = Rate {
            clients: 4,
            conditional: false,
            answers: 200,
            errors: 0,
            bytes: 0,
            seconds: 10.0,
            server_cpu_s: 5.0,
        };
        assert_eq!(rate.per_second(), 20.0);
        assert_eq!(rate.cpu_ms_per_answer(), 25.0);
        assert_eq!(rate.server_cores(), 0.5);
    }
}
