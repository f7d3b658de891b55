//! What the hand-run subcommands print, as pure functions of what they found: the sentence `block` ends with,
//! `lookup`'s lines and its one decision with its reason, and `list`'s table. The commands in [`crate::commands`]
//! gather the facts (I/O) and print these; nothing here talks to MISP, the FortiGate or the journal.
//!
//! Design: every line is meant for a person (no `Debug` structs, no counter names); [`lookup_decision`] is the only
//! place that turns `lookup`'s facts into a decision, so the reason printed is the reason decided.

use std::fmt;
use std::net::IpAddr;

use fortimisp_core::config::Misp as MispConfig;
use fortimisp_core::misp::Indicator;
use fortimisp_core::policy::Protected;
use fortimisp_core::view;

use crate::block::Applied;

/// The sentence `integration block IP` prints when the FortiGate took the block (as `unblock` prints
/// `unblocked IP`).
pub fn block_sentence(ip: IpAddr, applied: &Applied, backend: &str) -> String {
    if backend == crate::feed::BACKEND {
        return match applied {
            Applied::Blocked { object, .. } => format!("blocked {ip}: entry of threat feed {object}"),
            Applied::AlreadyBlocked { object, .. } => {
                format!("{ip} was already blocked: entry of threat feed {object}")
            }
        };
    }
    match applied {
        Applied::Blocked { object, group: Some(group) } => {
            format!("blocked {ip}: address object {object} in group {group}")
        }
        Applied::Blocked { group: None, .. } => format!("banned {ip}"),
        Applied::AlreadyBlocked { object, group: Some(group) } => {
            format!("{ip} was already blocked: address object {object} in group {group}")
        }
        Applied::AlreadyBlocked { group: None, .. } => format!("{ip} was already banned"),
    }
}

/// One MISP attribute in `lookup`'s output, with whether `[misp]` keeps it and, if not, which filter leaves it
/// out.
pub fn attribute_line(cfg: &MispConfig, ind: &Indicator) -> String {
    let verdict = match view::exclusion(cfg, ind) {
        None => "passes the [misp] filters".to_string(),
        Some(why) => format!("filtered out: {why}"),
    };
    format!(
        "misp: event {} attribute {} type {} value {} to_ids={} deleted={} tags=[{}] -> {verdict}",
        ind.event_id,
        ind.uuid,
        ind.kind,
        ind.network,
        ind.to_ids,
        ind.deleted,
        ind.tags.join(",")
    )
}

/// `lookup`'s warninglist line. `lists`: the warninglists the address is on; `None`: the check failed.
pub fn warninglist_line(lists: Result<&[String], &str>, enforced: bool) -> String {
    match lists {
        Err(error) => format!("warninglists: check failed: {error}"),
        Ok([]) => "warninglists: none".to_string(),
        Ok(lists) if enforced => {
            format!("warninglists: {} (misp.enforce_warninglist: MISP leaves the address out)", quoted(lists))
        }
        Ok(lists) => format!("warninglists: {} (not enforced)", quoted(lists)),
    }
}

/// What the daemon would decide for an address, with the reason; displays as `lookup`'s one decision line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A built-in reserved range or `never_block`: never blocked, whatever MISP says.
    Protected(Protected),
    /// MISP lists it as a blocking indicator under `[misp]`.
    Block,
    /// A blocking attribute, but the address is on a warninglist and `misp.enforce_warninglist` is on.
    Warninglisted(Vec<String>),
    /// A blocking attribute, but MISP's filtered search leaves it out for a reason MISP applies itself (an
    /// unpublished event with `published_only`, or a warninglist the check could not confirm).
    LeftOut,
    /// MISP has attributes for it, none of which passes the `[misp]` filters.
    Filtered,
    /// MISP has nothing for it.
    NotListed,
}

/// The one place `lookup` decides. `hit`: whether the search the daemon makes (the `[misp]` filters) found a
/// blocking indicator for the address; `attributes`: everything MISP holds for the value, unfiltered;
/// `warninglists`: the lists the address is on (`None`: the check failed).
pub fn lookup_decision(
    protected: Option<Protected>,
    hit: bool,
    attributes: &[Indicator],
    cfg: &MispConfig,
    warninglists: Option<&[String]>,
) -> Decision {
    if let Some(protected) = protected {
        return Decision::Protected(protected);
    }
    if hit {
        return Decision::Block;
    }
    if attributes.is_empty() {
        return Decision::NotListed;
    }
    if !attributes.iter().any(|ind| view::is_blocking(cfg, ind)) {
        return Decision::Filtered;
    }
    match warninglists {
        Some(lists) if cfg.enforce_warninglist && !lists.is_empty() => Decision::Warninglisted(lists.to_vec()),
        _ => Decision::LeftOut,
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Protected(p @ Protected::Reserved { .. }) => {
                write!(f, "never blocked: {p}; nothing overrides the reserved ranges")
            }
            Decision::Protected(p @ Protected::Configured { .. }) => {
                write!(f, "not blocked: {p} (integration block --force overrides it)")
            }
            Decision::Block => f.write_str("would block: MISP lists it as a blocking indicator"),
            Decision::Warninglisted(lists) => {
                write!(f, "would not block: on MISP warninglist {} (misp.enforce_warninglist)", quoted(lists))
            }
            Decision::LeftOut => f.write_str(
                "would not block: MISP leaves it out of the [misp] search (an unpublished event with \
                 misp.published_only, or a warninglist)",
            ),
            Decision::Filtered => {
                f.write_str("would not block: MISP has it, but no attribute passes the [misp] filters")
            }
            Decision::NotListed => f.write_str("would not block: MISP has no blocking indicator for it"),
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// One block in `integration list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRow {
    /// The target's name (shown for a fleet).
    pub target: String,
    pub ip: IpAddr,
    /// The address object, or `(banned ip)`.
    pub object: String,
    /// Since the block was made; `None` when unknown.
    pub age: Option<chrono::Duration>,
    /// The MISP event id, or `manual`, or `-`.
    pub event: String,
    /// The comment after fortimisp's marker (the operator's `--comment` for a manual block), or a note.
    pub comment: String,
}

/// `integration list`'s table: sorted by address (numerically, IPv4 before IPv6), each column as wide as its
/// widest cell, two spaces between columns, no trailing blanks.
pub fn list_table(mut rows: Vec<ListRow>, with_target: bool) -> String {
    if rows.is_empty() {
        return "fortimisp has no blocks on the FortiGate\n".to_string();
    }
    rows.sort_by(|a, b| (a.ip, &a.target, &a.object).cmp(&(b.ip, &b.target, &b.object)));
    let cells = rows.into_iter().map(|r| {
        [r.target, r.ip.to_string(), r.object, r.age.map_or_else(|| "-".to_string(), format_age), r.event, r.comment]
    });
    if with_target {
        let header = ["TARGET", "IP", "OBJECT", "AGE", "EVENT", "COMMENT"].map(String::from);
        let cells: Vec<[String; 6]> = std::iter::once(header).chain(cells).collect();
        columns(&cells, [false, false, false, true, false, false])
    } else {
        let header = ["IP", "OBJECT", "AGE", "EVENT", "COMMENT"].map(String::from);
        let cells: Vec<[String; 5]> = std::iter::once(header)
            .chain(cells.map(|[_, ip, object, age, event, comment]| [ip, object, age, event, comment]))
            .collect();
        columns(&cells, [false, false, true, false, false])
    }
}

/// Rows as columns: each as wide as its widest cell (right-aligned where `right`), two spaces between columns, the
/// last column unpadded, no trailing blanks.
fn columns<const N: usize>(cells: &[[String; N]], right: [bool; N]) -> String {
    let widths: Vec<usize> =
        (0..N).map(|col| cells.iter().map(|row| row[col].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in cells {
        let mut line = String::new();
        for (col, cell) in row.iter().enumerate() {
            let pad = if col + 1 == N { 0 } else { widths[col].saturating_sub(cell.chars().count()) };
            if col > 0 {
                line.push_str("  ");
            }
            if right[col] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One threat feed in `integration list --feeds`.
pub struct FeedRow {
    pub name: String,
    /// Entries fortimisp serves or pushes.
    pub served: usize,
    /// What the FortiGate reports, or why it could not be read.
    pub status: Result<fortimisp_core::fortigate::FeedStatus, String>,
}

/// `integration list --feeds`'s table: per feed, entries served, entries the FortiGate loaded, the last load's
/// age, overflow; then what the cap left out.
pub fn feeds_table(rows: Vec<FeedRow>, left_out: u64, cap: usize, now: chrono::DateTime<chrono::Utc>) -> String {
    let header = ["FEED", "SERVED", "LOADED", "LAST LOAD", "OVERFLOW", "FORTIGATE"].map(String::from);
    let cells: Vec<[String; 6]> = std::iter::once(header)
        .chain(rows.into_iter().map(|r| {
            let dash = || "-".to_string();
            match r.status {
                Ok(s) => [
                    r.name,
                    r.served.to_string(),
                    s.loaded.map_or_else(dash, |n| n.to_string()),
                    s.last_update.map_or_else(|| "never".to_string(), |at| format!("{} ago", format_age(now - at))),
                    s.overflow.map_or_else(dash, |o| if o { "YES".to_string() } else { "no".to_string() }),
                    s.file_status.unwrap_or_else(dash),
                ],
                Err(error) => [r.name, r.served.to_string(), dash(), dash(), dash(), format!("unreadable: {error}")],
            }
        }))
        .collect();
    let mut out = columns(&cells, [false, true, true, false, false, false]);
    if left_out > 0 {
        out.push_str(&format!("{left_out} entries left out: the feeds are full (cap {cap} per feed)\n"));
    }
    out
}

/// `integration cluster status`: the instances, the leases (targets and jobs) with their holders' names, and each
/// target's queue. An instance not heard from within `ttl` is marked `GONE?` (dead, or cut off from the store).
pub fn cluster_tables(status: &fortimisp_core::cluster::status::Status, ttl: std::time::Duration) -> String {
    use fortimisp_core::cluster::status::Status;
    let secs = |s: f64| format!("{s:.1}s");
    let name_of = |id: &str| {
        status
            .instances
            .iter()
            .find(|i| i.id == id)
            .map_or_else(|| id.to_string(), |i| format!("{} ({})", i.name, i.role))
    };
    let mut out = String::from("INSTANCES\n");
    let header = ["NAME", "ROLE", "HOST", "PID", "VERSION", "LAST SEEN", "STATE"].map(String::from);
    let cells: Vec<[String; 7]> = std::iter::once(header)
        .chain(status.instances.iter().map(|i| {
            let state = if i.seen_seconds_ago <= ttl.as_secs_f64() { "up" } else { "GONE?" };
            [
                i.name.clone(),
                i.role.clone(),
                i.host.clone(),
                i.pid.to_string(),
                i.version.clone(),
                format!("{} ago", secs(i.seen_seconds_ago)),
                state.to_string(),
            ]
        }))
        .collect();
    out.push_str(&columns(&cells, [false, false, false, true, false, true, false]));
    out.push_str("\nLEASES\n");
    let header = ["LEASE", "LEADER", "EPOCH", "EXPIRES IN"].map(String::from);
    let cells: Vec<[String; 4]> = std::iter::once(header)
        .chain(status.leases.iter().map(|l| {
            let held = Status::is_held(l);
            [
                l.name.clone(),
                if held { name_of(&l.holder) } else { "-".to_string() },
                l.epoch.to_string(),
                if held { l.expires_in.map_or_else(|| "-".to_string(), secs) } else { "expired".to_string() },
            ]
        }))
        .collect();
    out.push_str(&columns(&cells, [false, false, true, true]));
    out.push_str("\nQUEUE\n");
    if status.lag.is_empty() {
        out.push_str("no pending actions\n");
    } else {
        let header = ["TARGET", "PENDING", "OLDEST"].map(String::from);
        let cells: Vec<[String; 3]> = std::iter::once(header)
            .chain(status.lag.iter().map(|l| [l.target.clone(), l.pending.to_string(), secs(l.oldest_seconds)]))
            .collect();
        out.push_str(&columns(&cells, [false, true, true]));
    }
    out
}

/// An age in whole days, hours or minutes (`3d`, `5h`, `12m`).
pub fn format_age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0);
    if secs >= 86400 {
        format!("{}d", secs / 86400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", secs / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::misp::AttributeKind;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn misp_config(extra: &str) -> MispConfig {
        let text = format!(
            "[misp]\nurl = \"https://misp.example.org\"\napi_key = \"k\"\n{extra}\n\
             [fortigate]\nurl = \"https://fortigate.example.org\"\napi_key = \"t\"\n[[trigger]]\npolicy_id = 7\n"
        );
        fortimisp_core::config::RawConfig::parse(&text).and_then(|raw| raw.validate(&|_| None)).unwrap().misp
    }

    fn attribute(to_ids: bool) -> Indicator {
        Indicator {
            network: "192.0.2.53/32".parse().unwrap(),
            kind: AttributeKind::IpSrc,
            attribute_id: 11,
            event_id: 4,
            uuid: "5f0c0000-0000-4000-8000-00000000000b".into(),
            to_ids,
            deleted: false,
            timestamp: 0,
            tags: vec!["tlp:white".into()],
        }
    }

    #[test]
    fn block_prints_a_sentence() {
        let object = || "misp-203.0.113.7".to_string();
        let group = || Some("MISP_BLOCK".to_string());
        let cases = [
            (
                Applied::Blocked { object: object(), group: group() },
                "blocked 203.0.113.7: address object misp-203.0.113.7 in group MISP_BLOCK",
            ),
            (
                Applied::AlreadyBlocked { object: object(), group: group() },
                "203.0.113.7 was already blocked: address object misp-203.0.113.7 in group MISP_BLOCK",
            ),
            (Applied::Blocked { object: "203.0.113.7".into(), group: None }, "banned 203.0.113.7"),
            (Applied::AlreadyBlocked { object: "203.0.113.7".into(), group: None }, "203.0.113.7 was already banned"),
        ];
        for (applied, expected) in cases {
            assert_eq!(block_sentence(ip("203.0.113.7"), &applied, "address-group"), expected);
        }
        let fed = Applied::Blocked { object: "fortimisp-block".into(), group: None };
        assert_eq!(
            block_sentence(ip("203.0.113.7"), &fed, "threat-feed"),
            "blocked 203.0.113.7: entry of threat feed fortimisp-block"
        );
    }

    /// One decision per address, with its reason; the protected check comes first, a hit next.
    #[test]
    fn lookup_gives_one_decision_with_its_reason() {
        let cfg = misp_config("");
        let not_enforced = misp_config("enforce_warninglist = false");
        let dns = vec!["Public DNS resolvers".to_string()];
        let reserved = Protected::Reserved { range: "10.0.0.0/8".parse().unwrap(), name: "private" };
        let configured = Protected::Configured { range: "198.51.100.53/32".parse().unwrap() };
        let blocking = [attribute(true)];
        let not_ids = [attribute(false)];
        /// The one caller of `lookup_decision` here: its facts, and the line it must print.
        fn check(
            protected: Option<Protected>,
            hit: bool,
            attributes: &[Indicator],
            cfg: &MispConfig,
            lists: Option<&[String]>,
            expected: &str,
        ) {
            let decision = lookup_decision(protected, hit, attributes, cfg, lists);
            assert_eq!(decision.to_string(), expected, "{decision:?}");
        }
        let block = "would block: MISP lists it as a blocking indicator";
        check(
            Some(reserved),
            true,
            &blocking,
            &cfg,
            Some(&[]),
            "never blocked: reserved range 10.0.0.0/8 (private); nothing overrides the reserved ranges",
        );
        check(
            Some(configured),
            true,
            &blocking,
            &cfg,
            Some(&[]),
            "not blocked: never_block 198.51.100.53/32 (integration block --force overrides it)",
        );
        check(None, true, &blocking, &cfg, Some(&[]), block);
        // A CIDR indicator: a hit with no exact attribute.
        check(None, true, &[], &cfg, Some(&[]), block);
        check(
            None,
            false,
            &blocking,
            &cfg,
            Some(&dns),
            "would not block: on MISP warninglist \"Public DNS resolvers\" (misp.enforce_warninglist)",
        );
        check(None, true, &blocking, &not_enforced, Some(&dns), block);
        check(
            None,
            false,
            &blocking,
            &cfg,
            None,
            "would not block: MISP leaves it out of the [misp] search (an unpublished event with \
             misp.published_only, or a warninglist)",
        );
        check(
            None,
            false,
            &not_ids,
            &cfg,
            Some(&dns),
            "would not block: MISP has it, but no attribute passes the [misp] filters",
        );
        check(None, false, &[], &cfg, Some(&[]), "would not block: MISP has no blocking indicator for it");
    }

    #[test]
    fn lookup_lines_name_the_filter_and_the_warninglist() {
        let cfg = misp_config("");
        assert!(attribute_line(&cfg, &attribute(true)).ends_with(" tags=[tlp:white] -> passes the [misp] filters"));
        assert!(attribute_line(&cfg, &attribute(false)).ends_with(" -> filtered out: to_ids is off (misp.to_ids_only)"));
        let dns = ["Public DNS resolvers".to_string()];
        let cases = [
            (
                Ok(&dns[..]),
                true,
                "warninglists: \"Public DNS resolvers\" (misp.enforce_warninglist: MISP leaves the address out)",
            ),
            (Ok(&dns[..]), false, "warninglists: \"Public DNS resolvers\" (not enforced)"),
            (Ok(&[][..]), true, "warninglists: none"),
            (Err("HTTP 500"), true, "warninglists: check failed: HTTP 500"),
        ];
        for (lists, enforced, expected) in cases {
            assert_eq!(warninglist_line(lists, enforced), expected);
        }
    }

    fn row(ip_text: &str, comment: &str) -> ListRow {
        ListRow {
            target: "default".into(),
            ip: ip(ip_text),
            object: format!("misp-{ip_text}"),
            age: Some(chrono::Duration::hours(5)),
            event: "12".into(),
            comment: comment.into(),
        }
    }

    /// Sorted by address, not as text (203.0.113.45 after 203.0.113.7, IPv6 last); columns as wide as their
    /// content; the comment shown as written.
    #[test]
    fn list_sorts_by_address_and_sizes_columns_to_content() {
        let mut manual = row("203.0.113.7", "ticket 42");
        manual.event = "manual".into();
        manual.age = None;
        let rows = vec![
            row("2001:db8::5", "indicator=2001:db8::5/128 rule=0"),
            row("203.0.113.45", "indicator=203.0.113.45/32 rule=0"),
            manual,
            row("198.51.100.23", "indicator=198.51.100.0/24 rule=1"),
        ];
        let expected = "\
IP             OBJECT              AGE  EVENT   COMMENT
198.51.100.23  misp-198.51.100.23   5h  12      indicator=198.51.100.0/24 rule=1
203.0.113.7    misp-203.0.113.7      -  manual  ticket 42
203.0.113.45   misp-203.0.113.45    5h  12      indicator=203.0.113.45/32 rule=0
2001:db8::5    misp-2001:db8::5     5h  12      indicator=2001:db8::5/128 rule=0
";
        assert_eq!(list_table(rows.clone(), false), expected);
        assert_eq!(list_table(Vec::new(), false), "fortimisp has no blocks on the FortiGate\n");
        let mut fleet = rows;
        fleet[0].target = "edge-b".into();
        let table = list_table(fleet, true);
        assert!(table.starts_with("TARGET   IP "), "{table}");
        assert!(table.contains("\nedge-b   2001:db8::5 "), "{table}");
    }

    #[test]
    fn ages_in_the_largest_whole_unit() {
        let cases = [(0, "0m"), (59, "0m"), (3599, "59m"), (3600, "1h"), (86399, "23h"), (86400, "1d"), (-5, "0m")];
        for (secs, expected) in cases {
            assert_eq!(format_age(chrono::Duration::seconds(secs)), expected);
        }
    }

    #[test]
    fn feeds_table_shows_served_next_to_loaded_and_what_was_left_out() {
        use fortimisp_core::fortigate::FeedStatus;
        let now: chrono::DateTime<chrono::Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let rows = vec![
            FeedRow {
                name: "fortimisp-block".into(),
                served: 1200,
                status: Ok(FeedStatus {
                    loaded: Some(1150),
                    overflow: Some(false),
                    last_update: Some(now - chrono::Duration::minutes(3)),
                    file_status: Some("downloaded".into()),
                    ..FeedStatus::default()
                }),
            },
            FeedRow { name: "fortimisp-block6".into(), served: 3, status: Err("http 403".into()) },
        ];
        let table = feeds_table(rows, 7, 50_000, now);
        assert_eq!(
            table,
            "FEED              SERVED  LOADED  LAST LOAD  OVERFLOW  FORTIGATE\n\
             fortimisp-block     1200    1150  3m ago     no        downloaded\n\
             fortimisp-block6       3       -  -          -         unreadable: http 403\n\
             7 entries left out: the feeds are full (cap 50000 per feed)\n"
        );
    }
}
