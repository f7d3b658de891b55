//! A complete view of MISP's blocking IP indicators, as `[misp]` defines "blocking".
//!
//! Both daemons need the same answer to "does MISP still list this address as something to block?": the
//! integration daemon's mirror and housekeeping's revocation check. This module holds that definition once:
//! [`base_query`] (the restSearch filters), [`is_blocking`] (the same filters applied to one attribute) and
//! [`full`] (every page, into an [`IndicatorSet`]).
//!
//! MISP's restSearch matches values exactly: a lookup of `203.0.113.130` does not return the attribute
//! `203.0.113.128/26`. So every answer that does not come from the full mirror combines an exact lookup with
//! [`cidrs`] (every CIDR-valued blocking indicator, usually few) through [`hit`]: the answer the mirror would give.
//!
//! Invariant: [`full`] returns a set only when every page arrived. A caller that gets an error has no view, and
//! must not act on the absence of an indicator (housekeeping never unblocks on a partial view).

use std::net::IpAddr;

use crate::config::Misp as MispConfig;
use crate::indicators::{parse_uuid, Entry, Hit, IndicatorSet, Inserted};
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

/// Every blocking indicator whose value is a network (`value` LIKE `%/%`), all pages, into a new set: what an
/// exact restSearch cannot see. Same filters and prefix limits as [`full`].
///
/// # Errors
/// The first MISP error after the client's retries; no partial set is returned.
pub async fn cidrs(client: &misp::Client, cfg: &MispConfig) -> Result<IndicatorSet, misp::Error> {
    let mut set = IndicatorSet::new(cfg.min_prefix_v4, cfg.min_prefix_v6);
    let mut pages = client.pages(base_query(cfg).values(["%/%"]));
    while let Some(page) = pages.next_page().await {
        for ind in page?.indicators {
            if is_blocking(cfg, &ind) && !ind.is_single() {
                insert(&mut set, &ind);
            }
        }
    }
    Ok(set)
}

/// The mirror's answer for `ip` from an exact restSearch's answer (`exact`, as returned for `ip`) and the CIDR
/// indicators ([`cidrs`]): the most specific blocking indicator within the prefix limits, or `None`.
pub fn hit(cfg: &MispConfig, ip: IpAddr, exact: &[Indicator], cidrs: &IndicatorSet) -> Option<Hit> {
    let best_exact = exact
        .iter()
        .filter(|ind| is_blocking(cfg, ind) && ind.network.contains(&ip) && within_limits(cfg, &ind.network))
        .max_by_key(|ind| ind.network.prefix_len())
        .map(|ind| Hit { network: ind.network, entry: Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid) } });
    match (best_exact, cidrs.lookup(ip)) {
        (Some(a), Some(b)) if b.network.prefix_len() > a.network.prefix_len() => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// Whether a network is no wider than `min_prefix_v4`/`min_prefix_v6` allow.
pub fn within_limits(cfg: &MispConfig, net: &ipnet::IpNet) -> bool {
    match net {
        ipnet::IpNet::V4(n) => n.prefix_len() >= cfg.min_prefix_v4,
        ipnet::IpNet::V6(n) => n.prefix_len() >= cfg.min_prefix_v6,
    }
}

/// Adds one attribute to a set, keyed by its uuid.
pub fn insert(set: &mut IndicatorSet, ind: &Indicator) -> Inserted {
    set.insert(ind.network, Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::misp::AttributeKind;

    fn indicator(value: &str, uuid: u128, to_ids: bool) -> Indicator {
        Indicator {
            network: crate::misp::indicator::parse_network(value).unwrap(),
            kind: AttributeKind::IpSrc,
            attribute_id: uuid as u64,
            event_id: 7,
            uuid: crate::indicators::format_uuid(uuid),
            to_ids,
            deleted: false,
            timestamp: 0,
            tags: Vec::new(),
        }
    }

    /// The answer off the mirror is the mirror's: an address inside a CIDR indicator is a hit even though the
    /// exact lookup found nothing; the most specific indicator wins; filters and prefix limits apply to both.
    fn misp_config() -> MispConfig {
        let text = "[misp]\nurl = \"https://misp.example.org\"\napi_key = \"k\"\n\
                    [fortigate]\nurl = \"https://fortigate.example.org\"\napi_key = \"k\"\n[[trigger]]\npolicy_id = 7\n";
        crate::config::RawConfig::parse(text).unwrap().validate(&|_| None).unwrap().misp
    }

    #[test]
    fn an_exact_answer_and_the_cidr_indicators_give_the_mirrors_answer() {
        let cfg = misp_config();
        let all = [
            indicator("203.0.113.128/26", 1, true),
            indicator("203.0.113.130", 2, true),
            indicator("198.51.100.0/24", 3, true),
            indicator("198.51.100.0/25", 4, false),
            indicator("10.0.0.0/4", 5, true),
        ];
        let mut mirror = IndicatorSet::new(cfg.min_prefix_v4, cfg.min_prefix_v6);
        let mut cidr_set = IndicatorSet::new(cfg.min_prefix_v4, cfg.min_prefix_v6);
        for ind in all.iter().filter(|i| is_blocking(&cfg, i)) {
            insert(&mut mirror, ind);
            if !ind.is_single() {
                insert(&mut cidr_set, ind);
            }
        }
        for probe in ["203.0.113.130", "203.0.113.131", "198.51.100.9", "192.0.2.1", "16.0.0.1"] {
            let ip: IpAddr = probe.parse().unwrap();
            // What an exact restSearch of `ip` returns: attributes whose value is `ip` itself.
            let exact: Vec<Indicator> =
                all.iter().filter(|i| i.is_single() && i.network.contains(&ip)).cloned().collect();
            assert_eq!(hit(&cfg, ip, &exact, &cidr_set), mirror.lookup(ip), "{probe}");
            assert_eq!(
                hit(&cfg, ip, &exact, &IndicatorSet::new(8, 32)).is_some(),
                !exact.is_empty() && probe.ends_with("130")
            );
        }
        let ip: IpAddr = "203.0.113.131".parse().unwrap();
        assert_eq!(hit(&cfg, ip, &[], &cidr_set).unwrap().network.to_string(), "203.0.113.128/26");
    }
}
