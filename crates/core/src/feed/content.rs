//! The mirror's indicators as feed entries: never-block ranges cut out, CIDR-aggregated, newest first.
//!
//! Everything runs on address intervals (IPv4 widened to `u128`), one family at a time: each stored network is
//! checked against the protected ranges (a binary search; the rare network that touches one is cut around it),
//! then the family is sorted once, adjacent and nested networks are merged into runs, and each run is split back
//! into the fewest CIDRs. That is what `ipnet`'s `aggregate` does, done here by hand because the merge must also
//! carry timestamps: every input network ends up inside exactly one output CIDR (the CIDRs of a run are maximal
//! aligned blocks, and an aligned block inside the run cannot straddle two of them), so a sweep over the sorted
//! inputs gives each output the newest timestamp it covers. No allocation per entry: two vectors per family.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::indicators::IndicatorSet;
use crate::policy::NeverBlock;

/// `::ffff:0:0/96`: where IPv4-mapped IPv6 addresses live.
const MAPPED: u128 = 0xffff << 32;

/// Every network of `set` with the newest attribute timestamp it covers, minus the never-block ranges
/// (built-in and configured; a network that contains one is split around it), aggregated (adjacent and nested
/// networks merged, the merged entry keeps the newest timestamp), ordered newest first, ties by address.
///
/// IPv4-mapped IPv6 networks are judged as [`NeverBlock::check`] judges a mapped address: an IPv4 range also
/// protects its mapped image (and the built-in reserved ranges hold all of `::ffff:0:0/96`).
pub fn entries(set: &IndicatorSet, never: &NeverBlock) -> Vec<(IpNet, i64)> {
    let holes = Holes::of(never.ranges());
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (net, ts) in set.iter() {
        let (items, holes, bits) = match net {
            IpNet::V4(_) => (&mut v4, &holes.v4, 32),
            IpNet::V6(_) => (&mut v6, &holes.v6, 128),
        };
        let (start, len) = interval_of(net);
        let end = start | host_mask(bits, len);
        if overlaps(holes, start, end) {
            cut(start, end, holes, bits, |start, len| items.push(Item { start, len, ts }));
        } else {
            items.push(Item { start, len, ts });
        }
    }
    let mut out = Vec::with_capacity(v4.len() + v6.len());
    aggregate(&mut v4, 32, &mut out);
    aggregate(&mut v6, 128, &mut out);
    out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// `net` minus every range of `holes`, as the fewest CIDRs, in address order.
///
/// A hole of the other family does not apply, except that an IPv4 hole also cuts its IPv4-mapped image out of
/// an IPv6 `net` (as [`NeverBlock`] judges a mapped address as IPv4). Host bits of `net` are ignored.
pub fn subtract(net: IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    let holes = Holes::of(holes.iter().copied());
    let (start, len) = interval_of(net.trunc());
    let (holes, bits) = match net {
        IpNet::V4(_) => (&holes.v4, 32),
        IpNet::V6(_) => (&holes.v6, 128),
    };
    let mut out = Vec::new();
    cut(start, start | host_mask(bits, len), holes, bits, |start, len| out.push(to_net(bits, start, len)));
    out
}

/// One network (or piece of one) of a family, with its timestamp. 32 bytes.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: u128,
    ts: i64,
    len: u8,
}

/// The protected ranges per family as sorted, disjoint, non-adjacent inclusive intervals.
struct Holes {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl Holes {
    fn of(ranges: impl Iterator<Item = IpNet>) -> Holes {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in ranges {
            let net = net.trunc();
            let (start, len) = interval_of(net);
            match net {
                IpNet::V4(_) => {
                    let end = start | host_mask(32, len);
                    v4.push((start, end));
                    v6.push((MAPPED | start, MAPPED | end));
                }
                IpNet::V6(_) => v6.push((start, start | host_mask(128, len))),
            }
        }
        Holes { v4: merged(v4), v6: merged(v6) }
    }
}

/// Sorts intervals and merges the overlapping and adjacent ones.
fn merged(mut intervals: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    intervals.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(intervals.len());
    for (start, end) in intervals {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// Whether `[start, end]` meets one of `holes` (sorted, disjoint).
fn overlaps(holes: &[(u128, u128)], start: u128, end: u128) -> bool {
    let i = holes.partition_point(|&(_, hole_end)| hole_end < start);
    holes.get(i).is_some_and(|&(hole_start, _)| hole_start <= end)
}

/// Emits `[start, end]` minus `holes` (sorted, disjoint) as the fewest CIDRs, in address order.
fn cut(start: u128, end: u128, holes: &[(u128, u128)], bits: u32, mut emit: impl FnMut(u128, u8)) {
    let mut from = start;
    let first = holes.partition_point(|&(_, hole_end)| hole_end < start);
    for &(hole_start, hole_end) in &holes[first..] {
        if hole_start > end {
            break;
        }
        if hole_start > from {
            cidrs(from, hole_start - 1, bits, &mut emit);
        }
        if hole_end >= end {
            return;
        }
        from = hole_end + 1;
    }
    cidrs(from, end, bits, &mut emit);
}

/// Emits `[start, end]` as the fewest CIDRs, in address order: at each step the largest block aligned at the
/// current address that stays inside the interval.
fn cidrs(mut start: u128, end: u128, bits: u32, emit: &mut impl FnMut(u128, u8)) {
    loop {
        let mut host_bits = start.trailing_zeros().min(bits);
        while span(host_bits) > end - start {
            host_bits -= 1;
        }
        emit(start, (bits - host_bits) as u8);
        let last = start + span(host_bits);
        if last >= end {
            return;
        }
        start = last + 1;
    }
}

/// Merges one family's items (sorted here) into CIDRs, each with the newest timestamp it covers, onto `out`.
fn aggregate(items: &mut [Item], bits: u32, out: &mut Vec<(IpNet, i64)>) {
    items.sort_unstable_by_key(|item| (item.start, item.len));
    let end_of = |item: &Item| item.start | host_mask(bits, item.len);
    let mut i = 0;
    while i < items.len() {
        let run_start = items[i].start;
        let mut run_end = end_of(&items[i]);
        let mut j = i + 1;
        while j < items.len() && items[j].start <= run_end.saturating_add(1) {
            run_end = run_end.max(end_of(&items[j]));
            j += 1;
        }
        // Items i..j, sorted by start, each inside exactly one CIDR of the run: those starting within a CIDR
        // are the ones it covers.
        let mut k = i;
        cidrs(run_start, run_end, bits, &mut |start, len| {
            let last = start | host_mask(bits, len);
            let mut ts = i64::MIN;
            while k < j && items[k].start <= last {
                ts = ts.max(items[k].ts);
                k += 1;
            }
            out.push((to_net(bits, start, len), ts));
        });
        i = j;
    }
}

/// The network address (IPv4 widened) and prefix length.
fn interval_of(net: IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(n) => (u128::from(u32::from(n.network())), n.prefix_len()),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

fn to_net(bits: u32, start: u128, len: u8) -> IpNet {
    if bits == 32 {
        let addr = Ipv4Addr::from(start as u32);
        IpNet::V4(Ipv4Net::new(addr, len).expect("IPv4 prefix lengths are at most 32 by construction"))
    } else {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(start), len).expect("IPv6 prefix lengths are at most 128 by construction"),
        )
    }
}

/// The host part of a `len`-bit prefix in a `bits`-bit family.
fn host_mask(bits: u32, len: u8) -> u128 {
    span(bits - u32::from(len))
}

/// `2^host_bits - 1`.
fn span(host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::indicators::Entry;

    use crate::feed::testutil::{net, nets};

    #[test]
    fn subtract_splits_around_holes_into_the_fewest_cidrs() {
        // (network, holes, expected)
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("198.51.100.0/24", &[], &["198.51.100.0/24"]),
            ("198.51.100.0/24", &["203.0.113.0/24", "2001:db8::/32"], &["198.51.100.0/24"]),
            ("198.51.100.0/24", &["198.51.0.0/16"], &[]),
            ("198.51.100.0/24", &["198.51.100.0/24"], &[]),
            ("198.51.100.7", &["198.51.100.7"], &[]),
            (
                "198.51.100.0/24",
                &["198.51.100.7"],
                &[
                    "198.51.100.0/30",
                    "198.51.100.4/31",
                    "198.51.100.6/32",
                    "198.51.100.8/29",
                    "198.51.100.16/28",
                    "198.51.100.32/27",
                    "198.51.100.64/26",
                    "198.51.100.128/25",
                ],
            ),
            ("198.51.100.0/24", &["198.51.100.0/25"], &["198.51.100.128/25"]),
            ("198.51.100.0/24", &["198.51.100.128/25", "198.51.100.0/26"], &["198.51.100.64/26"]),
            // Overlapping and adjacent holes.
            ("198.51.100.0/24", &["198.51.100.0/26", "198.51.100.32/27", "198.51.100.64/26"], &["198.51.100.128/25"]),
            ("0.0.0.0/0", &["0.0.0.0/1"], &["128.0.0.0/1"]),
            (
                "0.0.0.0/0",
                &["255.255.255.255"],
                &[
                    "0.0.0.0/1",
                    "128.0.0.0/2",
                    "192.0.0.0/3",
                    "224.0.0.0/4",
                    "240.0.0.0/5",
                    "248.0.0.0/6",
                    "252.0.0.0/7",
                    "254.0.0.0/8",
                    "255.0.0.0/9",
                    "255.128.0.0/10",
                    "255.192.0.0/11",
                    "255.224.0.0/12",
                    "255.240.0.0/13",
                    "255.248.0.0/14",
                    "255.252.0.0/15",
                    "255.254.0.0/16",
                    "255.255.0.0/17",
                    "255.255.128.0/18",
                    "255.255.192.0/19",
                    "255.255.224.0/20",
                    "255.255.240.0/21",
                    "255.255.248.0/22",
                    "255.255.252.0/23",
                    "255.255.254.0/24",
                    "255.255.255.0/25",
                    "255.255.255.128/26",
                    "255.255.255.192/27",
                    "255.255.255.224/28",
                    "255.255.255.240/29",
                    "255.255.255.248/30",
                    "255.255.255.252/31",
                    "255.255.255.254/32",
                ],
            ),
            ("::/0", &["::/1"], &["8000::/1"]),
            ("2001:db8::/127", &["2001:db8::1"], &["2001:db8::/128"]),
            // An IPv4 hole cuts its mapped image; an IPv6 hole never cuts IPv4.
            ("::ffff:198.51.100.0/120", &["198.51.100.0/25"], &["::ffff:198.51.100.128/121"]),
            ("198.51.100.0/24", &["::ffff:198.51.100.0/120"], &["198.51.100.0/24"]),
            // Host bits are ignored.
            ("198.51.100.77/24", &["198.51.100.0/25"], &["198.51.100.128/25"]),
        ];
        for (input, holes, expected) in cases {
            assert_eq!(subtract(net(input), &nets(holes)), nets(expected), "{input} minus {holes:?}");
        }
    }

    /// (network, timestamp) indicators → expected entries, never-blocking 8.8.8.0/24 besides the reserved ranges.
    fn check(indicators: &[(&str, i64)], expected: &[(&str, i64)]) {
        let mut set = IndicatorSet::new(8, 32);
        for (i, (n, ts)) in indicators.iter().enumerate() {
            set.insert(net(n), Entry { event_id: 1, uuid: i as u128, timestamp: *ts });
        }
        let never = NeverBlock::new(vec![net("8.8.8.0/24")]);
        let got: Vec<(String, i64)> = entries(&set, &never).into_iter().map(|(n, ts)| (n.to_string(), ts)).collect();
        let expected: Vec<(String, i64)> = expected.iter().map(|(n, ts)| (net(n).to_string(), *ts)).collect();
        assert_eq!(got, expected, "entries of {indicators:?}");
    }

    #[test]
    fn entries_aggregate_cut_and_order() {
        check(&[], &[]);
        // Newest first, ties by address (IPv4 before IPv6).
        check(
            &[("203.0.113.9", 5), ("198.51.100.7", 5), ("2001:db8::1", 5), ("192.0.2.1", 9)],
            &[("192.0.2.1", 9), ("198.51.100.7", 5), ("203.0.113.9", 5), ("2001:db8::1", 5)],
        );
        // Adjacent hosts merge; the merged entry keeps the newest timestamp.
        check(&[("198.51.100.6", 1), ("198.51.100.7", 3)], &[("198.51.100.6/31", 3)]);
        // Adjacent but not aligned: no merge, each keeps its own.
        check(&[("198.51.100.7", 1), ("198.51.100.8", 3)], &[("198.51.100.8", 3), ("198.51.100.7", 1)]);
        // Nested: the outer network absorbs the inner one's timestamp.
        check(&[("198.51.100.0/24", 1), ("198.51.100.7", 4)], &[("198.51.100.0/24", 4)]);
        // Two halves merge into a /24; a run that is not one CIDR splits, each part with what it covers.
        check(&[("198.51.100.0/25", 1), ("198.51.100.128/25", 2)], &[("198.51.100.0/24", 2)]);
        check(
            &[("198.51.100.64/26", 7), ("198.51.100.128/26", 2), ("198.51.100.130", 3)],
            &[("198.51.100.64/26", 7), ("198.51.100.128/26", 3)],
        );
        // Reserved and configured ranges cut out; a network around one is split.
        check(&[("10.1.2.3", 5), ("8.8.8.8", 5), ("8.8.8.0/24", 5), ("127.0.0.1", 5), ("fe80::1", 5)], &[]);
        check(&[("8.8.0.0/20", 6)], &[("8.8.0.0/21", 6), ("8.8.9.0/24", 6), ("8.8.10.0/23", 6), ("8.8.12.0/22", 6)]);
        check(&[("8.8.8.0/21", 6), ("8.8.9.1", 8)], &[("8.8.9.0/24", 8), ("8.8.10.0/23", 6), ("8.8.12.0/22", 6)]);
        // IPv4-mapped IPv6 is never served (the whole ::ffff:0:0/96 is reserved); its IPv4 twin is.
        check(&[("::ffff:198.51.100.7", 5), ("198.51.100.7", 4)], &[("198.51.100.7", 4)]);
        // IPv6: a reserved /48 cut out of a /46.
        check(&[("64:ff9b::/46", 2)], &[("64:ff9b::/48", 2), ("64:ff9b:2::/47", 2)]);
    }
}
