//! Feed names, the layout of entries into feeds under a cap, the served text and push diffs.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::SystemTime;

use bytes::Bytes;

use crate::fortigate::EntryText;
use ipnet::IpNet;

/// An address family, when the families are split into separate feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

/// The feeds' names, derived from `[feed] name`: `name` (IPv4, or both families), `name6` (IPv6 when split),
/// and beyond the cap `name-2` .. `name-<max_feeds>` (`name6-2` ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    base: String,
    split_families: bool,
    max_feeds: u32,
}

impl Names {
    /// `max_feeds` below 1 counts as 1 (config validation refuses 0).
    pub fn new(base: &str, split_families: bool, max_feeds: u32) -> Names {
        Names { base: base.to_string(), split_families, max_feeds: max_feeds.max(1) }
    }

    /// Every feed name that may be used, IPv4 (or combined) first, each family in overflow order.
    pub fn all(&self) -> Vec<String> {
        let families: &[Family] = if self.split_families { &[Family::V4, Family::V6] } else { &[Family::V4] };
        families.iter().flat_map(|&family| (0..self.max_feeds).map(move |i| self.name(family, i))).collect()
    }

    /// The feed of `family` (ignored unless split) and overflow `index` (0 = the first feed).
    pub fn name(&self, family: Family, index: u32) -> String {
        let six = if self.split_families && family == Family::V6 { "6" } else { "" };
        match index {
            0 => format!("{}{six}", self.base),
            _ => format!("{}{six}-{}", self.base, index + 1),
        }
    }

    /// Feeds per family (or in all, when the families share them).
    pub fn max_feeds(&self) -> u32 {
        self.max_feeds
    }

    /// Whether the families go to separate feeds.
    pub fn split_families(&self) -> bool {
        self.split_families
    }
}

/// One feed's entries, in the order they are served (most important first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedContent {
    pub name: String,
    pub entries: Vec<IpNet>,
}

/// Every feed of [`Names::all`] (possibly empty), and what did not fit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub feeds: Vec<FeedContent>,
    /// Entries beyond `cap * max_feeds`, per family (combined feeds count under their address family).
    pub left_out_v4: u64,
    pub left_out_v6: u64,
}

/// Lays entries out into feeds: `blocked` (log-triggered addresses with their block time, newest first) go first,
/// then `indicators` (already in [`content::entries`](super::content::entries) order) without the exact
/// duplicates of a blocked address; each feed holds at most `cap` entries, a family spills into its next feed,
/// and what is beyond the last feed is counted, not served.
///
/// An IPv4-mapped blocked address is served as IPv4; a blocked address listed twice is served once. `blocked` is
/// sorted here (newest first, stable), so a caller's order only breaks ties.
pub fn layout(names: &Names, blocked: &[(IpAddr, i64)], indicators: &[(IpNet, i64)], cap: usize) -> Layout {
    let mut hosts: Vec<(IpNet, i64)> = blocked.iter().map(|&(ip, ts)| (IpNet::from(canonical(ip)), ts)).collect();
    hosts.sort_by_key(|&(_, ts)| Reverse(ts));
    let mut seen = HashSet::with_capacity(hosts.len());
    hosts.retain(|(net, _)| seen.insert(*net));
    // Exact duplicates only: a blocked host inside an indicator network is served twice, which is harmless.
    let fresh = indicators.iter().filter(|(net, _)| !(is_host(net) && seen.contains(net)));
    let ordered = hosts.iter().chain(fresh).map(|&(net, _)| net);

    let mut out = Layout {
        feeds: names.all().into_iter().map(|name| FeedContent { name, entries: Vec::new() }).collect(),
        ..Layout::default()
    };
    let per_family = names.max_feeds as usize;
    // Feeds of one stream: the next entry goes to `feeds[first + filled / cap]`.
    let fill = |feeds: &mut [FeedContent], first: usize, filled: &mut usize, net: IpNet| -> bool {
        // cap 0: nothing fits.
        let at = filled.checked_div(cap).unwrap_or(per_family);
        if at >= per_family {
            return false;
        }
        feeds[first + at].entries.push(net);
        *filled += 1;
        true
    };
    let (mut filled_v4, mut filled_v6) = (0, 0);
    for net in ordered {
        let v4 = matches!(net, IpNet::V4(_));
        let served = if names.split_families && !v4 {
            fill(&mut out.feeds, per_family, &mut filled_v6, net)
        } else {
            fill(&mut out.feeds, 0, &mut filled_v4, net)
        };
        if !served {
            if v4 {
                out.left_out_v4 += 1;
            } else {
                out.left_out_v6 += 1;
            }
        }
    }
    out
}

fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// IPv4-mapped IPv6 addresses are IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One feed as served: the complete body, built once, shared by every fetch until the next change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    /// `# fortimisp ...` header lines, then one entry per line, `\n` terminated.
    pub body: Bytes,
    /// A strong ETag (quoted) of the entries alone: the same entries give the same tag after a rebuild.
    pub etag: String,
    pub built_at: SystemTime,
    pub entries: usize,
}

/// Renders one feed. `note` is an extra header comment (e.g. what was left out), may be empty.
///
/// The body is written into one buffer (no allocation per line): `# fortimisp threat feed <name>`,
/// `# <n> entries, built <RFC 3339 UTC>`, the note's lines (each behind `# `) when not empty, then one entry per
/// line, a host as its bare address (`198.51.100.7`), any other network as CIDR. The ETag is FNV-1a 64 of the
/// entry lines: stable across processes and Rust versions, so a restart serves the same tag for the same
/// entries, and the build time or note alone never changes it (the FortiGate then keeps its copy).
pub fn render(content: &FeedContent, built_at: SystemTime, note: &str) -> Snapshot {
    use std::io::Write;

    let built = chrono::DateTime::<chrono::Utc>::from(built_at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let n = content.entries.len();
    // About 16 bytes per IPv4 line; IPv6 lines are longer and grow the buffer once or twice.
    let mut body = Vec::with_capacity(128 + note.len() + n * 16);
    // Writing into a Vec cannot fail.
    let _ = writeln!(body, "# fortimisp threat feed {}", content.name);
    let _ = writeln!(body, "# {n} entries, built {built}");
    for line in note.lines().filter(|line| !line.trim().is_empty()) {
        let _ = writeln!(body, "# {}", line.trim_end());
    }
    let header = body.len();
    for net in &content.entries {
        let _ = writeln!(body, "{}", EntryText(*net));
    }
    let etag = format!("\"{:016x}\"", fnv1a64(&body[header..]));
    Snapshot { name: content.name.clone(), body: Bytes::from(body), etag, built_at, entries: n }
}

/// FNV-1a, 64 bits: a fixed, documented function (unlike `std`'s hashers, whose output may change between
/// releases), fast enough for a few MiB of feed text.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What a push sends to turn `old` into `new`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

/// The set difference both ways, each side in the order of its input.
/// An entry listed twice on one side appears once in the result.
pub fn diff(old: &[IpNet], new: &[IpNet]) -> Diff {
    let old_set: HashSet<IpNet> = old.iter().copied().collect();
    let new_set: HashSet<IpNet> = new.iter().copied().collect();
    let only = |list: &[IpNet], other: &HashSet<IpNet>| {
        let mut seen = HashSet::new();
        list.iter().copied().filter(|net| !other.contains(net) && seen.insert(*net)).collect::<Vec<_>>()
    };
    Diff { add: only(new, &old_set), remove: only(old, &new_set) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::feed::testutil::nets;

    #[test]
    fn names_per_family_and_overflow() {
        // (split, max_feeds, expected all())
        let cases: &[(bool, u32, &[&str])] = &[
            (true, 1, &["fmb", "fmb6"]),
            (false, 1, &["fmb"]),
            (true, 3, &["fmb", "fmb-2", "fmb-3", "fmb6", "fmb6-2", "fmb6-3"]),
            (false, 2, &["fmb", "fmb-2"]),
            (false, 0, &["fmb"]),
        ];
        for (split, max_feeds, expected) in cases {
            let names = Names::new("fmb", *split, *max_feeds);
            assert_eq!(names.all(), expected.to_vec(), "split {split}, max_feeds {max_feeds}");
            assert_eq!(names.split_families(), *split);
        }
        let combined = Names::new("fmb", false, 2);
        assert_eq!(combined.name(Family::V6, 1), "fmb-2", "unsplit: the family is ignored");
        assert_eq!(Names::new("fmb", true, 12).name(Family::V6, 11), "fmb6-12");
    }

    type Case<'a> = (&'a [(&'a str, i64)], &'a [&'a str], &'a [(&'a str, &'a [&'a str])], (u64, u64));

    /// (blocked, indicators, expected feeds by name, expected left out (v4, v6)) under `names` and `cap`.
    fn check(names: &Names, cap: usize, (blocked, indicators, feeds, left_out): Case<'_>) {
        let blocked: Vec<(IpAddr, i64)> = blocked.iter().map(|(ip, ts)| (ip.parse().unwrap(), *ts)).collect();
        let indicators: Vec<(IpNet, i64)> = nets(indicators).into_iter().map(|n| (n, 1)).collect();
        let got = layout(names, &blocked, &indicators, cap);
        let expected = Layout {
            feeds: feeds.iter().map(|(name, e)| FeedContent { name: name.to_string(), entries: nets(e) }).collect(),
            left_out_v4: left_out.0,
            left_out_v6: left_out.1,
        };
        assert_eq!(got, expected, "blocked {blocked:?}, indicators {indicators:?}, cap {cap}");
    }

    #[test]
    fn layout_blocked_first_capped_spilled_and_counted() {
        let split = Names::new("f", true, 2);
        let cases: &[Case<'_>] = &[
            (&[], &[], &[("f", &[]), ("f-2", &[]), ("f6", &[]), ("f6-2", &[])], (0, 0)),
            // Blocked newest first, then indicators without the exact duplicate; families apart.
            (
                &[("198.51.100.1", 5), ("2001:db8::1", 6), ("198.51.100.2", 9), ("::ffff:198.51.100.3", 7)],
                &["198.51.100.1", "198.51.100.0/24", "2001:db8::/64", "2001:db8::1"],
                &[
                    ("f", &["198.51.100.2", "198.51.100.3"]),
                    ("f-2", &["198.51.100.1", "198.51.100.0/24"]),
                    ("f6", &["2001:db8::1", "2001:db8::/64"]),
                    ("f6-2", &[]),
                ],
                (0, 0),
            ),
            // Beyond the last feed: counted per family, not served.
            (
                &[("198.51.100.9", 1), ("198.51.100.9", 1)],
                &["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "2001:db8::2"],
                &[
                    ("f", &["198.51.100.9", "192.0.2.1"]),
                    ("f-2", &["192.0.2.2", "192.0.2.3"]),
                    ("f6", &["2001:db8::2"]),
                    ("f6-2", &[]),
                ],
                (1, 0),
            ),
        ];
        for case in cases {
            check(&split, 2, *case);
        }
        // Shared feeds: blocked of both families first, then indicators in their order.
        let combined = Names::new("f", false, 2);
        check(
            &combined,
            2,
            (
                &[("2001:db8::1", 6), ("198.51.100.2", 9)],
                &["192.0.2.1", "2001:db8::/64", "192.0.2.2"],
                &[("f", &["198.51.100.2", "2001:db8::1"]), ("f-2", &["192.0.2.1", "2001:db8::/64"])],
                (1, 0),
            ),
        );
        check(&combined, 0, (&[("2001:db8::1", 6)], &["192.0.2.1"], &[("f", &[]), ("f-2", &[])], (1, 1)));
    }

    #[test]
    fn render_prints_hosts_bare_and_tags_the_entries_only() {
        let content =
            FeedContent { name: "f".into(), entries: nets(&["198.51.100.7", "2001:db8::7", "203.0.113.0/24"]) };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_292_000);
        let snap = render(&content, at, "3 entries left out\nsecond line");
        let body = std::str::from_utf8(&snap.body).unwrap();
        assert_eq!(
            body,
            "# fortimisp threat feed f\n# 3 entries, built 2026-12-03T10:00:00Z\n# 3 entries left out\n# second line\n\
             198.51.100.7\n2001:db8::7\n203.0.113.0/24\n"
        );
        assert_eq!(snap.entries, 3);
        assert!(snap.etag.starts_with('"') && snap.etag.ends_with('"') && snap.etag.len() == 18, "{}", snap.etag);
        let later = render(&content, at + Duration::from_secs(60), "");
        assert_eq!(later.etag, snap.etag, "time and note do not change the tag");
        assert_eq!(std::str::from_utf8(&later.body).unwrap().lines().filter(|l| l.starts_with('#')).count(), 2);
        let fewer = FeedContent { name: "f".into(), entries: content.entries[..2].to_vec() };
        assert_ne!(render(&fewer, at, "").etag, snap.etag);
        // Fixed across processes and releases: FNV-1a 64 of the entry lines.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let empty = render(&FeedContent { name: "f".into(), entries: vec![] }, at, "");
        assert_eq!(empty.etag, "\"cbf29ce484222325\"");
        assert_eq!(
            std::str::from_utf8(&empty.body).unwrap(),
            "# fortimisp threat feed f\n# 0 entries, built 2026-12-03T10:00:00Z\n"
        );
    }

    #[test]
    fn diff_both_ways_in_input_order() {
        type Lists<'a> = &'a [&'a str];
        // (old, new, add, remove)
        let cases: &[(Lists<'_>, Lists<'_>, Lists<'_>, Lists<'_>)] = &[
            (&[], &[], &[], &[]),
            (&[], &["192.0.2.2", "192.0.2.1"], &["192.0.2.2", "192.0.2.1"], &[]),
            (&["192.0.2.2", "192.0.2.1"], &[], &[], &["192.0.2.2", "192.0.2.1"]),
            (
                &["192.0.2.1", "192.0.2.0/24", "2001:db8::1"],
                &["2001:db8::2", "192.0.2.1", "192.0.2.9", "2001:db8::2"],
                &["2001:db8::2", "192.0.2.9"],
                &["192.0.2.0/24", "2001:db8::1"],
            ),
        ];
        for (old, new, add, remove) in cases {
            assert_eq!(
                diff(&nets(old), &nets(new)),
                Diff { add: nets(add), remove: nets(remove) },
                "{old:?} -> {new:?}"
            );
        }
    }
}
