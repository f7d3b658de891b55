//! Properties of the threat-feed contents (`core::feed`), and one exact 100 000-indicator case.
//!
//! - `entries`: covers exactly the input's addresses minus the never-block ones (sampled addresses, range edges
//!   included), touches no protected range, is fully aggregated (`ipnet`'s `aggregate` as the oracle), each entry
//!   carries the newest timestamp it covers, newest first.
//! - `layout`: no feed beyond its cap, every distinct input served once or counted as left out.
//! - `render`: the body parses back to the entries; the ETag is equal iff the entries are.
//! - `diff`: applied to the old set it gives the new one.
//!
//! Networks are drawn from a few small neighbourhoods (next to reserved ranges, inside a configured one, IPv4-mapped
//! IPv6) so that overlaps, adjacency and cuts happen often.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use fortimisp_core::feed::{content, diff, layout, render, FeedContent, Names};
use fortimisp_core::indicators::{Entry, IndicatorSet};
use fortimisp_core::policy::NeverBlock;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

/// IPv4 neighbourhoods: next to 10/8, inside and around the configured 8.8.8.0/24, next to 172.16/12, plain.
const V4_BASES: [u32; 4] = [0x09ff_0000, 0x0808_0000, 0xac0f_0000, 0xc633_0000];
/// IPv6 neighbourhoods: `::` and `::1` (and `::ffff:0:0/96` above them), next to 64:ff9b:1::/48, IPv4-mapped
/// (8.8.0.0/16), and documentation (around the configured 2001:db8:0:1::/64).
const V6_BASES: [u128; 4] = [0, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 0xffff_0808_0000, 0x2001_0db8 << 96];

fn configured() -> Vec<IpNet> {
    vec!["8.8.8.0/24".parse().unwrap(), "2001:db8:0:1::/64".parse().unwrap()]
}

fn v4_net() -> impl Strategy<Value = IpNet> {
    (0..V4_BASES.len(), 0u32..0x2_0000, 16u8..=32).prop_map(|(base, offset, len)| {
        let addr = Ipv4Addr::from(V4_BASES[base].wrapping_add(offset));
        IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
    })
}

fn v6_net() -> impl Strategy<Value = IpNet> {
    (0..V6_BASES.len(), any::<u32>(), any::<bool>(), 32u8..=128).prop_map(|(base, offset, high, len)| {
        // Low bits for hosts and small networks, bits 64.. for /48s and wider.
        let offset = if high { u128::from(offset & 0xf) << 64 } else { u128::from(offset & 0x3_ffff) };
        let addr = Ipv6Addr::from(V6_BASES[base] | offset);
        IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
    })
}

/// The IPv4-mapped image of an IPv4 network (`::ffff:a.b.c.d/96+len`).
fn mapped(net: IpNet) -> Option<IpNet> {
    match net {
        IpNet::V4(n) => Some(IpNet::V6(Ipv6Net::new(n.network().to_ipv6_mapped(), 96 + n.prefix_len()).unwrap())),
        IpNet::V6(_) => None,
    }
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![6 => v4_net(), 2 => v6_net(), 1 => v4_net().prop_map(|n| mapped(n).unwrap())]
}

fn indicators() -> impl Strategy<Value = Vec<(IpNet, i64)>> {
    proptest::collection::vec((net(), 0i64..20), 0..60)
}

fn set_of(indicators: &[(IpNet, i64)]) -> IndicatorSet {
    let mut set = IndicatorSet::new(8, 32);
    for (i, (net, ts)) in indicators.iter().enumerate() {
        set.insert(*net, Entry { event_id: 1, uuid: i as u128, timestamp: *ts });
    }
    set
}

fn first(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.network())),
        IpNet::V6(n) => u128::from(n.network()),
    }
}

fn last(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::from(n.broadcast())),
        IpNet::V6(n) => u128::from(n.broadcast()),
    }
}

fn addr(v4: bool, value: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}

/// Each network's first and last address and their outside neighbours.
fn edges(nets: impl Iterator<Item = IpNet>, out: &mut Vec<IpAddr>) {
    for net in nets {
        let v4 = matches!(net, IpNet::V4(_));
        let max = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        let (a, b) = (first(&net), last(&net));
        out.extend([a, b].into_iter().map(|v| addr(v4, v)));
        if a > 0 {
            out.push(addr(v4, a - 1));
        }
        if b < max {
            out.push(addr(v4, b + 1));
        }
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn entries_cover_the_input_minus_never_block_exactly(
        input in indicators(),
        extra_never in proptest::collection::vec(net(), 0..3),
        probes in proptest::collection::vec(net(), 0..20),
    ) {
        let mut configured = configured();
        configured.extend(extra_never);
        let never = NeverBlock::new(configured);
        let set = set_of(&input);
        let stored: Vec<(IpNet, i64)> = set.iter().collect();
        let out = content::entries(&set, &never);
        let nets: Vec<IpNet> = out.iter().map(|(n, _)| *n).collect();

        // Sampled addresses: every edge of inputs, outputs and protected ranges, and random ones nearby.
        let mut samples = Vec::new();
        edges(stored.iter().map(|(n, _)| *n), &mut samples);
        edges(nets.iter().copied(), &mut samples);
        edges(never.ranges(), &mut samples);
        edges(never.ranges().filter_map(mapped), &mut samples);
        edges(probes.iter().copied(), &mut samples);
        for ip in samples {
            let served = nets.iter().any(|n| n.contains(&ip));
            let expected = stored.iter().any(|(n, _)| n.contains(&ip)) && never.check(ip).is_none();
            prop_assert_eq!(served, expected, "{}", ip);
        }

        for (net, ts) in &out {
            // No protected range touched (IPv4-mapped images included).
            for range in never.ranges() {
                prop_assert!(!overlap(net, &range), "{} overlaps {}", net, range);
            }
            // The newest timestamp among the stored networks it overlaps.
            let newest = stored.iter().filter(|(n, _)| overlap(n, net)).map(|(_, t)| *t).max();
            prop_assert_eq!(Some(*ts), newest, "timestamp of {}", net);
        }
        // Fully aggregated: ipnet's aggregate of the output is the output, and of the cut input too.
        let mut sorted = nets.clone();
        sorted.sort();
        prop_assert_eq!(IpNet::aggregate(&nets), sorted.clone());
        let holes: Vec<IpNet> = never.ranges().collect();
        let pieces: Vec<IpNet> = stored.iter().flat_map(|(n, _)| content::subtract(*n, &holes)).collect();
        prop_assert_eq!(IpNet::aggregate(&pieces), sorted);
        // Newest first, ties by address.
        for pair in out.windows(2) {
            prop_assert!(pair[0].1 > pair[1].1 || (pair[0].1 == pair[1].1 && pair[0].0 < pair[1].0), "{:?}", pair);
        }
    }

    #[test]
    fn subtract_leaves_no_hole_address_and_loses_no_other(
        net in net(),
        holes in proptest::collection::vec(net(), 0..4),
    ) {
        let pieces = content::subtract(net, &holes);
        let mut samples = Vec::new();
        let images = holes.iter().filter_map(|h| mapped(*h));
        edges(std::iter::once(net).chain(holes.iter().copied()).chain(pieces.iter().copied()).chain(images), &mut samples);
        for ip in samples {
            // An IPv4 hole also holds its IPv4-mapped image.
            let mapped = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                IpAddr::V4(_) => None,
            };
            let in_hole = [Some(ip), mapped].iter().flatten().any(|ip| holes.iter().any(|h| h.contains(ip)));
            let served = pieces.iter().any(|p| p.contains(&ip));
            prop_assert_eq!(served, net.contains(&ip) && !in_hole, "{}", ip);
        }
        let mut sorted = pieces.clone();
        sorted.sort();
        prop_assert_eq!(&sorted, &pieces, "address order");
        prop_assert_eq!(IpNet::aggregate(&pieces), pieces, "fewest CIDRs");
    }

    #[test]
    fn layout_respects_the_cap_and_accounts_for_every_entry(
        blocked in proptest::collection::vec((net(), 0i64..10), 0..12),
        indicators in proptest::collection::vec((net(), 0i64..10), 0..40),
        cap in 0usize..6,
        max_feeds in 1u32..4,
        split in any::<bool>(),
    ) {
        let names = Names::new("f", split, max_feeds);
        let blocked: Vec<(IpAddr, i64)> = blocked.iter().map(|(n, ts)| (n.addr(), *ts)).collect();
        let mut seen = HashSet::new();
        let indicators: Vec<(IpNet, i64)> = indicators.into_iter().filter(|(n, _)| seen.insert(*n)).collect();
        let got = layout(&names, &blocked, &indicators, cap);

        prop_assert_eq!(got.feeds.iter().map(|f| f.name.clone()).collect::<Vec<_>>(), names.all());
        let mut served = BTreeMap::new();
        for feed in &got.feeds {
            prop_assert!(feed.entries.len() <= cap, "{} holds {} > {}", feed.name, feed.entries.len(), cap);
            let v6_feed = split && feed.name.starts_with("f6");
            for net in &feed.entries {
                if split {
                    prop_assert_eq!(matches!(net, IpNet::V6(_)), v6_feed, "{} in {}", net, feed.name);
                }
                *served.entry(*net).or_insert(0) += 1;
            }
        }
        prop_assert!(served.values().all(|&n| n == 1), "served twice: {:?}", served);

        // Every distinct input: blocked hosts (IPv4-mapped as IPv4) and the indicators.
        let canonical = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let distinct: HashSet<IpNet> = blocked
            .iter()
            .map(|(ip, _)| IpNet::from(canonical(*ip)))
            .chain(indicators.iter().map(|(n, _)| *n))
            .collect();
        let (v4, v6) = distinct.iter().partition::<Vec<&IpNet>, _>(|n| matches!(n, IpNet::V4(_)));
        let served_v4 = served.keys().filter(|n| matches!(n, IpNet::V4(_))).count() as u64;
        let served_v6 = served.len() as u64 - served_v4;
        prop_assert!(served.keys().all(|n| distinct.contains(n)));
        prop_assert_eq!(served_v4 + got.left_out_v4, v4.len() as u64);
        prop_assert_eq!(served_v6 + got.left_out_v6, v6.len() as u64);
        // Something left out only when every feed it could go to is full.
        let full = |v6: bool| {
            got.feeds.iter().filter(|f| !split || f.name.starts_with("f6") == v6).all(|f| f.entries.len() == cap)
        };
        prop_assert!(got.left_out_v4 == 0 || full(false));
        prop_assert!(got.left_out_v6 == 0 || full(true));
    }

    #[test]
    fn render_parses_back_and_tags_equal_iff_entries_equal(
        a in proptest::collection::vec(net(), 0..30),
        b in proptest::collection::vec(net(), 0..30),
        secs in 0u64..4_000_000_000,
        note in "[a-z \n]{0,30}",
    ) {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let content = FeedContent { name: "f".into(), entries: a.clone() };
        let snap = render(&content, at, &note);
        prop_assert_eq!(snap.entries, a.len());
        let text = std::str::from_utf8(&snap.body).unwrap();
        prop_assert!(text.ends_with('\n'));
        let parsed: Vec<IpNet> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.parse::<IpNet>().or_else(|_| l.parse::<IpAddr>().map(IpNet::from)).unwrap())
            .collect();
        prop_assert_eq!(&parsed, &a);

        let other = render(&FeedContent { name: "g".into(), entries: b.clone() }, at + Duration::from_secs(1), "");
        prop_assert_eq!(other.etag == snap.etag, a == b);
        let again = render(&FeedContent { name: "f".into(), entries: a.clone() }, at + Duration::from_secs(9), "x");
        prop_assert_eq!(&again.etag, &snap.etag);
        if let Some((first, rest)) = a.split_first() {
            // One entry changed, or the order changed: another tag.
            let mut changed = a.clone();
            let (one, two): (IpNet, IpNet) = ("192.0.2.1/32".parse().unwrap(), "192.0.2.2/32".parse().unwrap());
            changed[0] = if *first == one { two } else { one };
            let changed = render(&FeedContent { name: "f".into(), entries: changed }, at, "");
            prop_assert_ne!(&changed.etag, &snap.etag);
            if rest.iter().any(|n| n != first) {
                let mut rotated = a.clone();
                rotated.rotate_left(1);
                let rotated = render(&FeedContent { name: "f".into(), entries: rotated }, at, "");
                prop_assert_ne!(&rotated.etag, &snap.etag);
            }
        }
    }

    #[test]
    fn diff_applied_to_old_gives_new(
        old in proptest::collection::vec(v4_net(), 0..30),
        new in proptest::collection::vec(v4_net(), 0..30),
    ) {
        let d = diff(&old, &new);
        let old_set: HashSet<IpNet> = old.iter().copied().collect();
        let new_set: HashSet<IpNet> = new.iter().copied().collect();
        let mut applied = old_set.clone();
        for net in &d.remove {
            prop_assert!(applied.remove(net), "removing {} which old lacks", net);
        }
        for net in &d.add {
            prop_assert!(applied.insert(*net), "adding {} which is there", net);
        }
        prop_assert_eq!(applied, new_set.clone());
        // Each side in input order.
        let order = |list: &[IpNet], part: &[IpNet]| {
            let at: Vec<usize> = part.iter().map(|n| list.iter().position(|m| m == n).unwrap()).collect();
            at.windows(2).all(|w| w[0] < w[1])
        };
        prop_assert!(order(&new, &d.add) && order(&old, &d.remove));
    }
}

/// 100 000 indicators whose feed is known by construction: merging pairs, isolated hosts, networks with hosts
/// inside, reserved and configured ranges, networks cut around a configured range, IPv6 and IPv4-mapped IPv6.
#[test]
fn a_hundred_thousand_indicators_give_exactly_the_expected_feed() {
    const T: i64 = 1_700_000_000;
    let v4 = |a: u32| IpNet::from(IpAddr::V4(Ipv4Addr::from(a)));
    let mut set = IndicatorSet::new(8, 32);
    let mut uuid = 0u128;
    let mut add = |set: &mut IndicatorSet, net: IpNet, ts: i64| {
        uuid += 1;
        set.insert(net, Entry { event_id: 1, uuid, timestamp: ts });
    };
    let mut expected: Vec<(IpNet, i64)> = Vec::new();
    let mut configured = Vec::new();

    // 40 000 hosts in 20 000 aligned pairs (45.0.0.0 + 4k, + 1): each pair one /31 with the newer time.
    for k in 0..20_000u32 {
        let base = 0x2d00_0000 + 4 * k;
        add(&mut set, v4(base), T + i64::from(k));
        add(&mut set, v4(base + 1), T + i64::from(k % 7) * 3_000);
        expected
            .push((IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 31).unwrap(), T + i64::from(k.max((k % 7) * 3_000))));
    }
    // 20 000 isolated hosts (46.0.0.0 + 2k).
    for k in 0..20_000u32 {
        add(&mut set, v4(0x2e00_0000 + 2 * k), T + i64::from(k % 1_000));
        expected.push((v4(0x2e00_0000 + 2 * k), T + i64::from(k % 1_000)));
    }
    // 10 000 /24s (every other one from 47.0.0.0), each with a host inside: the /24 with the newer time.
    for k in 0..10_000u32 {
        let base = 0x2f00_0000 + 512 * k;
        let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(base)), 24).unwrap();
        add(&mut set, net, T + 5);
        add(&mut set, v4(base + (k % 256)), T + i64::from(k % 11));
        expected.push((net, T + 5.max(i64::from(k % 11))));
    }
    // 8 800 hosts in reserved ranges (10/8, 192.168/16, 127/8, 100.64/10): none served.
    for k in 0..8_800u32 {
        let base = [0x0a00_0000, 0xc0a8_0000, 0x7f00_0000, 0x6440_0000][(k % 4) as usize];
        add(&mut set, v4(base + k), T + 99_999);
    }
    // 1 000 hosts inside a configured range (60.0.0.0/16): none served.
    configured.push("60.0.0.0/16".parse::<IpNet>().unwrap());
    for k in 0..1_000u32 {
        add(&mut set, v4(0x3c00_0000 + 7 * k), T + 99_999);
    }
    // 99 /16s around a configured /24 (61.k.7.0/24): 8 pieces each. And 172.0.0.0/10 around 172.16/12.
    for k in 0..99u32 {
        configured.push(IpNet::new(IpAddr::V4(Ipv4Addr::new(61, k as u8, 7, 0)), 24).unwrap());
        add(&mut set, IpNet::new(IpAddr::V4(Ipv4Addr::new(61, k as u8, 0, 0)), 16).unwrap(), T + 7);
        for (third, len) in [(0, 22), (4, 23), (6, 24), (8, 21), (16, 20), (32, 19), (64, 18), (128, 17)] {
            expected.push((IpNet::new(IpAddr::V4(Ipv4Addr::new(61, k as u8, third, 0)), len).unwrap(), T + 7));
        }
    }
    add(&mut set, "172.0.0.0/10".parse().unwrap(), T + 8);
    expected.push(("172.0.0.0/12".parse().unwrap(), T + 8));
    expected.push(("172.32.0.0/11".parse().unwrap(), T + 8));
    // 9 000 IPv6 hosts (2001:db8:0:k::1), isolated.
    for k in 0..9_000u128 {
        let net = IpNet::from(IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (k << 64) | 1)));
        add(&mut set, net, T + 3);
        expected.push((net, T + 3));
    }
    // 1 000 IPv4-mapped IPv6 hosts of served IPv4 addresses, and link-local ones: none served.
    for k in 0..1_000u32 {
        let mapped = Ipv4Addr::from(0x2e00_0000 + 2 * k).to_ipv6_mapped();
        add(&mut set, IpNet::from(IpAddr::V6(mapped)), T + 99_999);
    }
    for k in 0..100u128 {
        add(&mut set, IpNet::from(IpAddr::V6(Ipv6Addr::from((0xfe80u128 << 112) | k))), T + 99_999);
    }
    assert_eq!(set.len(), 100_000);

    let never = NeverBlock::new(configured);
    let got = content::entries(&set, &never);
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    assert_eq!(got.len(), expected.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!("entry {i}: got {:?}, expected {:?}", got[i], expected[i]);
    }
}
