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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::config::Misp as MispConfig;
use fortimisp_core::indicators::{parse_uuid, Hit, IndicatorSet};
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
    /// Bumped after every sync that changed the shared set (the threat feed's indicators follow it).
    pub changed: Arc<tokio::sync::watch::Sender<u64>>,
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
        if n > 0 {
            self.changed.send_modify(|g| *g += 1);
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
        // The mirror-stale alert looks for these series: they exist only where a mirror runs.
        Metrics::start_at_zero(&self.metrics.mirror_syncs, &["full_ok", "incremental_ok", "error"]);
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
                        self.changed.send_modify(|g| *g += 1);
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

/// The CIDR-valued blocking indicators, for answers that do not come from the full mirror (before its first sync,
/// with `sync_interval = "0s"`, and in `lookup`/`replay`): an exact restSearch does not return a network that
/// contains the address, so an on-demand answer is the exact lookup combined with this set ([`view::hit`]).
///
/// Loaded on first use and reloaded when older than `refresh` (one paged restSearch, `value` LIKE `%/%`; usually
/// a few pages). Until a first load succeeds there is no answer: a lookup fails (nothing cached, the address is
/// asked again) rather than missing an address inside a CIDR. A failed reload keeps the last good set, loudly.
pub struct CidrIndicators {
    refresh: Duration,
    current: tokio::sync::Mutex<Option<(Arc<IndicatorSet>, Instant)>>,
}

impl CidrIndicators {
    pub fn new(refresh: Duration) -> Self {
        CidrIndicators { refresh, current: tokio::sync::Mutex::new(None) }
    }

    /// The set, reloaded first if it is missing or older than `refresh`. Concurrent callers share one load.
    pub async fn get(&self, client: &misp::Client, cfg: &MispConfig) -> Result<Arc<IndicatorSet>, misp::Error> {
        let mut current = self.current.lock().await;
        if let Some((set, loaded)) = current.as_ref() {
            if loaded.elapsed() < self.refresh {
                return Ok(set.clone());
            }
        }
        match view::cidrs(client, cfg).await {
            Ok(set) => {
                let set = Arc::new(set);
                *current = Some((set.clone(), Instant::now()));
                Ok(set)
            }
            Err(error) => match current.as_mut() {
                Some((set, loaded)) => {
                    warn!(message = "Could not reload the CIDR indicators; keeping the last good set.", %error,
                          age = ?loaded.elapsed());
                    // Tried again after another `refresh`, not on every lookup.
                    *loaded = Instant::now();
                    Ok(set.clone())
                }
                None => Err(error),
            },
        }
    }
}

/// On-demand lookups through MISP restSearch: one value list per batch (the decision stage's batches are at most
/// the client's `batch_size`, [`misp::client::MAX_VALUES_PER_SEARCH`]), combined with the CIDR indicators so the
/// answer is the one the full mirror would give.
pub struct MispLookup {
    pub client: Arc<misp::Client>,
    pub query: SearchQuery,
    pub config: MispConfig,
    pub cidrs: Arc<CidrIndicators>,
}

impl Lookup for MispLookup {
    async fn lookup(&self, ips: Vec<IpAddr>) -> Result<Vec<(IpAddr, Hit)>, LookupError> {
        let cidrs = self.cidrs.get(&self.client, &self.config).await?;
        // An exact search returns attributes whose value is one of the addresses: group them by address.
        let mut exact: HashMap<IpAddr, Vec<Indicator>> = HashMap::new();
        for ind in self.client.search_values(&self.query, &ips).await? {
            exact.entry(ind.network.addr()).or_default().push(ind);
        }
        Ok(ips
            .into_iter()
            .filter_map(|ip| {
                let exact = exact.get(&ip).map(Vec::as_slice).unwrap_or_default();
                view::hit(&self.config, ip, exact, &cidrs).map(|hit| (ip, hit))
            })
            .collect())
    }
}
