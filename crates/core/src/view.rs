//! A complete view of MISP's blocking IP indicators, as `[misp]` defines "blocking".
//!
//! Both daemons need the same answer to "does MISP still list this address as something to block?": the
//! integration daemon's mirror and housekeeping's revocation check. This module holds that definition once:
//! [`base_query`] (the restSearch filters), [`is_blocking`] (the same filters applied to one attribute; [`exclusion`]
//! says which filter leaves an attribute out, for `integration lookup`) and [`full`] (every page, into an
//! [`IndicatorSet`]).
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
    exclusion(cfg, ind).is_none()
}

/// Which `[misp]` filter leaves an attribute out, the first that does; `None`: it is blocking. (The warninglist
/// and `published_only` are the server's filters, on the address and the event: not checked here.)
pub fn exclusion<'a>(cfg: &MispConfig, ind: &'a Indicator) -> Option<Exclusion<'a>> {
    if ind.deleted {
        return Some(Exclusion::Deleted);
    }
    if cfg.to_ids_only && !ind.to_ids {
        return Some(Exclusion::NotIds);
    }
    if !cfg.types.iter().any(|t| t == ind.kind.as_str()) {
        return Some(Exclusion::Type(ind.kind.as_str()));
    }
    if let Some(tag) = ind.tags.iter().find(|t| cfg.tags_exclude.contains(t)) {
        return Some(Exclusion::TagExcluded(tag));
    }
    if !cfg.tags_include.is_empty() && !ind.tags.iter().any(|t| cfg.tags_include.contains(t)) {
        return Some(Exclusion::NoIncludedTag);
    }
    None
}

/// Why `[misp]` leaves an attribute out; displays as a short reason naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion<'a> {
    /// Soft-deleted in MISP.
    Deleted,
    /// The IDS flag is off and `misp.to_ids_only` is on.
    NotIds,
    /// A type `misp.types` does not list.
    Type(&'a str),
    /// Tagged with a tag in `misp.tags_exclude`.
    TagExcluded(&'a str),
    /// `misp.tags_include` is set and the attribute has none of its tags.
    NoIncludedTag,
}

impl std::fmt::Display for Exclusion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Deleted => f.write_str("deleted in MISP"),
            Exclusion::NotIds => f.write_str("to_ids is off (misp.to_ids_only)"),
            Exclusion::Type(kind) => write!(f, "type {kind} is not in misp.types"),
            Exclusion::TagExcluded(tag) => write!(f, "tagged {tag} (misp.tags_exclude)"),
            Exclusion::NoIncludedTag => f.write_str("none of the misp.tags_include tags"),
        }
    }
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
        .map(|ind| Hit {
            network: ind.network,
            entry: Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid), timestamp: ind.timestamp },
        });
    match (best_exact, cidrs.lookup(ip)) {
        (Some(a), Some(b)) if b.network.prefix_len() > a.network.prefix_len() => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// Whether a network is no wider than `min_prefix_v4`/`min_prefix_v6` allow.
fn within_limits(cfg: &MispConfig, net: &ipnet::IpNet) -> bool {
    match net {
        ipnet::IpNet::V4(n) => n.prefix_len() >= cfg.min_prefix_v4,
        ipnet::IpNet::V6(n) => n.prefix_len() >= cfg.min_prefix_v6,
    }
}

/// Adds one attribute to a set, keyed by its uuid.
pub fn insert(set: &mut IndicatorSet, ind: &Indicator) -> Inserted {
    set.insert(ind.network, Entry { event_id: ind.event_id, uuid: parse_uuid(&ind.uuid), timestamp: ind.timestamp })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::misp::AttributeKind;

    fn config(misp_extra: &str) -> MispConfig {
        let text = format!(
            "[misp]\nurl = \"https://misp.example.org\"\napi_key = \"k\"\n{misp_extra}\n\
             [fortigate]\nurl = \"https://fortigate.example.org\"\napi_key = \"t\"\n[[trigger]]\npolicy_id = 7\n"
        );
        crate::config::RawConfig::parse(&text).and_then(|raw| raw.validate(&|_| None)).expect("valid config").misp
    }

    fn attribute(kind: &str, to_ids: bool, deleted: bool, tags: &[&str]) -> Indicator {
        Indicator {
            network: "198.51.100.7/32".parse().unwrap(),
            kind: AttributeKind::from_misp_type(kind),
            attribute_id: 1,
            event_id: 1,
            uuid: "5f0c0000-0000-4000-8000-000000000001".into(),
            to_ids,
            deleted,
            timestamp: 0,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Each filter names itself; `is_blocking` is exactly "no exclusion".
    #[test]
    fn exclusion_names_the_filter() {
        let tagged = "tags_include = [\"tlp:white\"]\ntags_exclude = [\"false-positive\"]";
        // (misp config, attribute, expected reason or None)
        let cases = [
            ("", attribute("ip-src", true, false, &[]), None),
            ("", attribute("ip-src", true, true, &[]), Some("deleted in MISP")),
            ("", attribute("ip-dst", false, false, &[]), Some("to_ids is off (misp.to_ids_only)")),
            ("to_ids_only = false", attribute("ip-dst", false, false, &[]), None),
            ("", attribute("domain|ip", true, false, &[]), Some("type domain|ip is not in misp.types")),
            (
                tagged,
                attribute("ip-src", true, false, &["tlp:white", "false-positive"]),
                Some("tagged false-positive (misp.tags_exclude)"),
            ),
            (tagged, attribute("ip-src", true, false, &["tlp:green"]), Some("none of the misp.tags_include tags")),
            (tagged, attribute("ip-src", true, false, &["tlp:white"]), None),
        ];
        for (extra, ind, expected) in cases {
            let cfg = config(extra);
            let got = exclusion(&cfg, &ind).map(|e| e.to_string());
            assert_eq!(got.as_deref(), expected, "{extra:?} {ind:?}");
            assert_eq!(is_blocking(&cfg, &ind), expected.is_none());
        }
    }

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
    #[test]
    fn an_exact_answer_and_the_cidr_indicators_give_the_mirrors_answer() {
        let cfg = config("");
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
