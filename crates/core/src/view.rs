//! A complete view of MISP's blocking IP indicators, as `[misp]` defines "blocking".
//!
//! Both daemons need the same answer to "does MISP still list this address as something to block?": the
//! integration daemon's mirror and housekeeping's revocation check. This module holds that definition once:
//! [`base_query`] (the restSearch filters), [`is_blocking`] (the same filters applied to one attribute) and
//! [`full`] (every page, into an [`IndicatorSet`]).
//!
//! Invariant: [`full`] returns a set only when every page arrived. A caller that gets an error has no view, and
//! must not act on the absence of an indicator (housekeeping never unblocks on a partial view).

use crate::config::Misp as MispConfig;
use crate::indicators::{parse_uuid, Entry, IndicatorSet, Inserted};
use crate::misp::{self, Indicator, SearchQuery};

/// The restSearch filters of `[misp]` (for full syncs and lookups).
pub fn base_query(cfg: &MispConfig) -> SearchQuery {
    let mut q = SearchQuery::new()
        .types(cfg.types.iter().cloned())
        .enforce_warninglist(cfg.enforce_warninglist)
        .tags(cfg.tags_include.iter().cloned())
        .exclude_tags(cfg.tags_exclude.iter().cloned());
    if cfg.to_ids_only {
        q = q.to_ids(true);
    }
    if cfg.published_only {
        q = q.published(true);
    }
    q
}

/// Whether an attribute counts as blocking under `[misp]` (the server filtered already; this re-checks what an
/// incremental sync deliberately asks wider).
pub fn is_blocking(cfg: &MispConfig, ind: &Indicator) -> bool {
    !ind.deleted
        && (!cfg.to_ids_only || ind.to_ids)
        && cfg.types.iter().any(|t| t == ind.kind.as_str())
        && !ind.tags.iter().any(|t| cfg.tags_exclude.contains(t))
        && (cfg.tags_include.is_empty() || ind.tags.iter().any(|t| cfg.tags_include.contains(t)))
}

/// Every blocking indicator, all pages, into a new set. Returns the set and the highest attribute timestamp.
///
/// # Errors
/// The first MISP error after the client's retries; no partial set is returned.
pub async fn full(client: &misp::Client, cfg: &MispConfig) -> Result<(IndicatorSet, i64), misp::Error> {
    let mut set = IndicatorSet::new(cfg.min_prefix_v4, cfg.min_prefix_v6);
    let mut max_ts = 0i64;
    let mut pages = client.pages(base_query(cfg));
    while let Some(page) = pages.next_page().await {
        let page = page?;
        max_ts = max_ts.max(page.max_timestamp.unwrap_or(0));
        for ind in page.indicators {
            if is_blocking(cfg, &ind) {
                insert(&mut set, &ind);
            }
        }
    }
    Ok((set, max_ts))
}

/// Adds one attribute to a set, keyed by its uuid.
pub fn insert(set: &mut IndicatorSet, ind: &Indicator) -> Inserted {
    set.insert(ind.network, Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid) })
}
