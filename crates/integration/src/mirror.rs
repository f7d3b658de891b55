//! The local mirror of MISP's IP indicators, and the on-demand lookup used when the mirror cannot answer.
//!
//! [`Mirror::run`] does a full paged sync at start, an incremental sync every `sync_interval` (attributes whose
//! timestamp moved since the last sync, deleted ones included, applied as inserts and removals by uuid) and a
//! full resync every `full_sync_interval`, which is what drops hard-deleted attributes and unpublished events.
//!
//! Invariant: a sync that fails halfway changes nothing. A full sync builds a new [`IndicatorSet`] off to the side
//! and swaps it in only when every page arrived; an incremental sync applies its changes only when complete.
//! Until the first full sync completes the shared mirror is `None` and the decision stage asks MISP on demand.
//!
//! Filters come from `[misp]`: types, to_ids, published, tags, enforceWarninglist. The incremental query leaves out
//! the to_ids filter so an attribute whose IDS flag was turned off is seen (and removed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::config::Misp as MispConfig;
use fortimisp_core::indicators::{parse_uuid, Entry, Hit, IndicatorSet};
use fortimisp_core::metrics::Metrics;
use fortimisp_core::misp::{self, Deleted, Indicator, SearchQuery};
use fortimisp_core::view::{self, base_query, is_blocking};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::decide::{Lookup, LookupError, SharedMirror};

/// Overlap of incremental syncs: attributes edited within this window before the last sync are fetched again,
/// which covers clock skew and edits committed during the previous sync.
const OVERLAP_SECONDS: i64 = 120;

/// Keeps the shared mirror in sync with MISP. Cloned for each (re)start of the sync task.
#[derive(Clone)]
pub struct Mirror {
    pub client: Arc<misp::Client>,
    pub config: MispConfig,
    pub shared: SharedMirror,
    pub metrics: Arc<Metrics>,
}

impl Mirror {
    /// Full sync: every page, into a new set (see [`view::full`]).
    pub async fn full_sync(&self) -> Result<(IndicatorSet, i64), misp::Error> {
        view::full(&self.client, &self.config).await
    }

    /// Incremental sync since `since`: applies inserts and removals to the shared set once every page arrived.
    pub async fn incremental_sync(&self, since: i64) -> Result<(usize, i64), misp::Error> {
        let mut query = base_query(&self.config).since(since.saturating_sub(OVERLAP_SECONDS)).deleted(Deleted::Both);
        if self.config.to_ids_only {
            // Ask wider so attributes whose IDS flag was turned off come back, as removals.
            query = SearchQuery::new()
                .types(self.config.types.iter().cloned())
                .enforce_warninglist(self.config.enforce_warninglist)
                .tags(self.config.tags_include.iter().cloned())
                .exclude_tags(self.config.tags_exclude.iter().cloned())
                .since(since.saturating_sub(OVERLAP_SECONDS))
                .deleted(Deleted::Both);
            if self.config.published_only {
                query = query.published(true);
            }
        }
        let mut changes = Vec::new();
        let mut max_ts = since;
        let mut pages = self.client.pages(query);
        while let Some(page) = pages.next_page().await {
            let page = page?;
            max_ts = max_ts.max(page.max_timestamp.unwrap_or(0));
            changes.extend(page.indicators);
        }
        let n = changes.len();
        let mut guard = self.shared.write().expect("mirror lock is never held across a panic");
        if let Some(set) = guard.as_mut() {
            for ind in &changes {
                if is_blocking(&self.config, ind) {
                    view::insert(set, ind);
                } else {
                    set.remove(parse_uuid(&ind.uuid));
                }
            }
            self.publish(set);
        }
        Ok((n, max_ts))
    }

    fn publish(&self, set: &IndicatorSet) {
        self.metrics.mirror_indicators.set(set.len() as i64);
        self.metrics.mirror_rejected_wide.set(set.rejected_wide() as i64);
        self.metrics.mirror_last_sync.set(chrono::Utc::now().timestamp());
    }

    /// Runs the sync schedule until `shutdown`. `interval` is `sync_interval` (the caller does not start the
    /// mirror when it is `0s`).
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let full_every = self.config.full_sync_interval;
        let mut last_full: Option<Instant> = None;
        let mut since = 0i64;
        let mut retry = Duration::from_secs(5);
        loop {
            let due_full = last_full.is_none_or(|t| t.elapsed() >= full_every);
            let started = Instant::now();
            let result = if due_full {
                match self.full_sync().await {
                    Ok((set, max_ts)) => {
                        let count = set.len();
                        let wide = set.rejected_wide();
                        self.publish(&set);
                        *self.shared.write().expect("mirror lock is never held across a panic") = Some(set);
                        since = max_ts;
                        last_full = Some(started);
                        Metrics::inc(&self.metrics.mirror_syncs, "full_ok");
                        info!(message = "Mirror full sync done.", indicators = count, rejected_too_wide = wide,
                              took = ?started.elapsed());
                        if wide > 0 {
                            warn!(
                                message = "Some CIDR indicators are wider than min_prefix and are ignored.",
                                count = wide
                            );
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                match self.incremental_sync(since).await {
                    Ok((changes, max_ts)) => {
                        since = max_ts;
                        Metrics::inc(&self.metrics.mirror_syncs, "incremental_ok");
                        if changes > 0 {
                            info!(message = "Mirror incremental sync applied.", changes);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            let wait = match result {
                Ok(()) => {
                    retry = Duration::from_secs(5);
                    interval
                }
                Err(error) => {
                    Metrics::inc(&self.metrics.mirror_syncs, "error");
                    warn!(message = "Mirror sync failed; the mirror keeps its last good state.", %error,
                          full = due_full, retry_in = ?retry);
                    let wait = retry.min(interval);
                    retry = (retry * 2).min(Duration::from_secs(300));
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// On-demand lookups through MISP restSearch: one value list per batch (the decision stage's batches are at most
/// the client's `batch_size`, [`misp::client::MAX_VALUES_PER_SEARCH`]).
pub struct MispLookup {
    pub client: Arc<misp::Client>,
    pub query: SearchQuery,
    pub config: MispConfig,
}

impl Lookup for MispLookup {
    async fn lookup(&self, ips: Vec<IpAddr>) -> Result<Vec<(IpAddr, Hit)>, LookupError> {
        let found = self.client.search_values(&self.query, &ips).await?;
        let mut hits = Vec::new();
        for ip in ips {
            // The most specific blocking indicator for this address.
            let best = found
                .iter()
                .filter(|ind| is_blocking(&self.config, ind) && ind.network.contains(&ip))
                .filter(|ind| within_limits(&self.config, ind))
                .max_by_key(|ind| ind.network.prefix_len());
            if let Some(ind) = best {
                hits.push((
                    ip,
                    Hit { network: ind.network, entry: Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid) } },
                ));
            }
        }
        Ok(hits)
    }
}

fn within_limits(cfg: &MispConfig, ind: &Indicator) -> bool {
    match ind.network {
        ipnet::IpNet::V4(n) => n.prefix_len() >= cfg.min_prefix_v4,
        ipnet::IpNet::V6(n) => n.prefix_len() >= cfg.min_prefix_v6,
    }
}
