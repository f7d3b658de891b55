//! The feed update: ask MISP to fetch its feeds, all at once or one by one, and report each answer.
//!
//! With `feeds = []`, one `feeds/fetchFromAllFeeds`; with `feeds = [ids]`, one `feeds/fetchFromFeed/ID` each,
//! so a failing feed is named. A transport failure is retried with backoff (a few attempts within the pass);
//! every outcome is logged with MISP's own words and counted in `fortimisp_feed_updates_total{outcome}`.

use std::time::Duration;

use fortimisp_core::metrics::Metrics;
use fortimisp_core::misp::{self, FeedOutcome};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Attempts per feed call when MISP cannot be reached.
const ATTEMPTS: u32 = 3;

/// Runs one feed update. Returns whether every call got an answer MISP considers a success.
pub async fn update(client: &misp::Client, feeds: &[u64], metrics: &Metrics, shutdown: &CancellationToken) -> bool {
    let targets: Vec<Option<u64>> =
        if feeds.is_empty() { vec![None] } else { feeds.iter().copied().map(Some).collect() };
    let mut all_ok = true;
    for feed in targets {
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let result = match feed {
                None => client.fetch_all_feeds().await,
                Some(id) => client.fetch_feed(id).await,
            };
            match result {
                Ok(outcome) => break Ok(outcome),
                Err(error) if attempt < ATTEMPTS && !error.is_fatal() => {
                    let wait = Duration::from_secs(5) * 2u32.pow(attempt - 1);
                    warn!(message = "Feed update failed; retrying.", %error, feed = ?feed, attempt, retry_in = ?wait);
                    tokio::select! {
                        _ = shutdown.cancelled() => break Err(error),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(error) => break Err(error),
            }
        };
        let feed_label = feed.map(|f| f.to_string()).unwrap_or_else(|| "all".into());
        match outcome {
            Ok(FeedOutcome::Queued) => {
                Metrics::inc(&metrics.feed_updates, "queued");
                info!(message = "MISP queued the feed fetch.", feed = %feed_label);
            }
            Ok(FeedOutcome::Completed) => {
                Metrics::inc(&metrics.feed_updates, "completed");
                info!(message = "MISP fetched the feed.", feed = %feed_label);
            }
            Ok(FeedOutcome::NoFeedEnabled) => {
                Metrics::inc(&metrics.feed_updates, "no_feed_enabled");
                warn!(message = "MISP has no feed enabled: nothing to fetch. Enable feeds in MISP or set misp.feed_update_interval = \"0s\".",
                      feed = %feed_label);
            }
            Ok(FeedOutcome::FeedDisabled) => {
                all_ok = false;
                Metrics::inc(&metrics.feed_updates, "feed_disabled");
                warn!(message = "MISP says this feed is not enabled.", feed = %feed_label);
            }
            Ok(FeedOutcome::Failed) => {
                all_ok = false;
                Metrics::inc(&metrics.feed_updates, "failed");
                warn!(message = "MISP says fetching the feed failed.", feed = %feed_label);
            }
            Ok(FeedOutcome::Other(text)) => {
                Metrics::inc(&metrics.feed_updates, "other");
                info!(message = "MISP answered the feed fetch.", feed = %feed_label, answer = %text);
            }
            Err(error) => {
                all_ok = false;
                Metrics::inc(&metrics.feed_updates, "error");
                warn!(message = "Feed update failed.", feed = %feed_label, %error);
            }
        }
    }
    if all_ok {
        metrics.feed_last_success.set(chrono::Utc::now().timestamp());
    }
    all_ok
}
