//! Whether the FortiGate actually loaded what fortimisp serves or pushes, and when: from its feed events on the
//! syslog stream (logid 22220 updated, 22222 loaded, 22224 overflow) and from the entry-list status it reports
//! over REST every `status_interval`.
//!
//! Both end in the same metrics (`fortimisp_feed_loaded_entries`, `fortimisp_feed_last_loaded_timestamp_seconds`,
//! `fortimisp_feed_overflow`); an overflow is logged at ERROR once per change. The status poll also hands the
//! device's limit to [`FeedState`] (used as the cap when `max_entries = 0`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fortimisp_core::feed::event::{EventKind, FeedEvent};
use fortimisp_core::fortigate::{FeedStatus, Transport};
use fortimisp_core::metrics::{FeedLabel, Metrics};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::state::FeedState;

/// Applies feed events and status reads to the metrics.
pub struct Confirm {
    pub state: Arc<FeedState>,
    pub metrics: Arc<Metrics>,
}

impl Confirm {
    /// Reads events until the channel closes or `shutdown`.
    pub async fn events(&self, events: &mut mpsc::Receiver<FeedEvent>, shutdown: CancellationToken) {
        Metrics::start_at_zero(&self.metrics.tf_events, &["updated", "loaded", "overflow"]);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event { Some(e) => e, None => return },
            };
            self.apply_event(&event, Utc::now().timestamp());
        }
    }

    /// One event. Events for feeds that are not ours (other threat feeds of the same FortiGate) are counted and
    /// otherwise ignored.
    pub fn apply_event(&self, event: &FeedEvent, now: i64) {
        let kind = match event.kind {
            EventKind::Updated => "updated",
            EventKind::Loaded => "loaded",
            EventKind::Overflow => "overflow",
        };
        Metrics::inc(&self.metrics.tf_events, kind);
        let Some(feed) = event.feed.as_deref().filter(|f| self.is_ours(f)) else { return };
        let label = FeedLabel { feed: feed.to_string() };
        match event.kind {
            EventKind::Updated => {}
            EventKind::Loaded => {
                self.metrics.tf_last_loaded.get_or_create(&label).set(now);
                if let Some(count) = event.count {
                    self.metrics.tf_loaded.get_or_create(&label).set(count as i64);
                }
                info!(message = "FortiGate loaded the threat feed.", feed, entries = ?event.count);
            }
            EventKind::Overflow => {
                self.overflow(feed, true, event.count, event.limit);
                if let Some(limit) = event.limit {
                    self.state.set_device_limit(limit);
                }
            }
        }
    }

    fn is_ours(&self, feed: &str) -> bool {
        self.state.names().all().iter().any(|n| n == feed)
    }

    fn overflow(&self, feed: &str, overflow: bool, loaded: Option<u64>, limit: Option<u64>) {
        let gauge = self.metrics.tf_overflow.get_or_create(&FeedLabel { feed: feed.to_string() });
        let before = gauge.get();
        gauge.set(i64::from(overflow));
        if overflow && before == 0 {
            error!(message = "The FortiGate dropped threat-feed entries beyond its limit. Lower max_entries (or raise \
                              max_feeds and create the extra feeds), or narrow the MISP filters.",
                   feed, loaded = ?loaded, limit = ?limit);
        }
    }

    /// Polls each feed's entry-list status every `every` until `shutdown`.
    pub async fn poll(&self, transport: &Transport, every: Duration, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
            }
            for feed in self.state.names().all() {
                match transport.feed_status(&feed).await {
                    Ok(status) => {
                        failing = false;
                        self.apply_status(&feed, &status);
                    }
                    Err(error) if error.is_fatal() => {
                        // The readiness probe and the pusher report the token; polling stops until the next tick.
                        warn!(message = "FortiGate refused the threat-feed status read.", %error, feed);
                        break;
                    }
                    Err(error) => {
                        if !failing {
                            warn!(message = "Could not read the threat feed's status from the FortiGate.", %error, feed);
                        }
                        failing = true;
                    }
                }
            }
        }
    }

    /// One status read.
    pub fn apply_status(&self, feed: &str, status: &FeedStatus) {
        let label = FeedLabel { feed: feed.to_string() };
        if let Some(loaded) = status.loaded {
            self.metrics.tf_loaded.get_or_create(&label).set(loaded as i64);
        }
        if let Some(at) = status.last_update {
            self.metrics.tf_last_loaded.get_or_create(&label).set(at.timestamp());
        }
        if let Some(overflow) = status.overflow {
            self.overflow(feed, overflow, status.loaded, status.limit);
        }
        if let Some(limit) = status.limit.filter(|l| *l > 0) {
            self.state.set_device_limit(limit);
        }
    }
}
