//! The local set of blocking indicators: which IPs and networks MISP lists, answered in well under a microsecond.
//!
//! [`IndicatorSet`] is a pure data structure (no I/O); the mirror fills it from MISP's restSearch and the
//! decision stage reads it. It owns three rules:
//!
//! - Containment: a CIDR indicator matches every address inside it, the longest prefix wins. MISP itself does no
//!   CIDR containment on restSearch, so this is the only place it happens.
//! - Width limit: a CIDR wider than `min_prefix_v4` / `min_prefix_v6` is refused (counted in
//!   [`IndicatorSet::rejected_wide`]) so one bad attribute like `0.0.0.0/1` cannot block half the internet.
//! - Identity: entries are keyed by attribute uuid, so an update or a deletion of one attribute removes exactly
//!   that attribute even when several attributes carry the same value.
//!
//! Layout and why: single addresses (nearly all indicators) live in a hash map keyed by the address as an
//! integer; networks live in one hash map per prefix length, probed longest first. A lookup is one probe plus one
//! per prefix length actually present, with no pointer chasing. An entry (uuid, event id, attribute timestamp) is
//! stored in 24 bytes, so a host bucket is 48 bytes: 1 M entries take about 146 MiB (measured with
//! `--bench indicator_memory`, timestamps included; see BENCHMARKS.md).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// One attribute as the set stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// MISP event id.
    pub event_id: u64,
    /// MISP attribute uuid (as a 128-bit number; [`format_uuid`] prints it back).
    pub uuid: u128,
    /// `Attribute.timestamp`, Unix seconds (the feed orders its entries newest first by it).
    pub timestamp: i64,
}

/// A lookup answer: the indicator that matched and the network it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub network: IpNet,
    pub entry: Entry,
}

/// What [`IndicatorSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The uuid was present (maybe with another value): replaced.
    Updated,
    /// Wider than the configured minimum prefix: ignored.
    TooWide,
}

/// A slot for one network value: a representative attribute, plus the others carrying the same value.
///
/// Layout matters at 1 M indicators: no field is 16-byte aligned ([`Key`] and [`Stored`] split the u128s), the
/// representative is compact ([`Stored`]), and the rare extra attributes sit behind one pointer, so a host map
/// bucket is 48 bytes instead of the 96 of a plain `(u128, Entry, Vec<Entry>)`.
#[derive(Debug, Clone)]
struct Slot {
    first: Stored,
    /// Further attributes with the same value (rare: the same IP in several events).
    // Boxed on purpose: 8 bytes in every slot instead of an inline Vec's 24, for a list nearly always absent.
    #[allow(clippy::box_collection)]
    more: Option<Box<Vec<Entry>>>,
}

/// An [`Entry`] in 24 bytes instead of 48: no 16-byte alignment (the uuid is a [`Key`]), and the event id and
/// timestamp as u32s, which hold every real value (MISP stores both as 32-bit integers). An entry whose event id
/// or timestamp does not fit is stored with event id [`WIDE`] and kept whole in [`IndicatorSet::wide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    uuid: Key,
    event_id: u32,
    timestamp: u32,
}

/// The event id of a [`Stored`] whose entry lives in [`IndicatorSet::wide`].
const WIDE: u32 = u32::MAX;

impl Stored {
    /// The compact form, or `None` when a field does not fit.
    fn compact(entry: Entry) -> Option<Stored> {
        let event_id = u32::try_from(entry.event_id).ok().filter(|&id| id != WIDE)?;
        let timestamp = u32::try_from(entry.timestamp).ok()?;
        Some(Stored { uuid: Key::from(entry.uuid), event_id, timestamp })
    }

    /// A stand-in for an entry kept in [`IndicatorSet::wide`].
    fn wide(entry: Entry) -> Stored {
        Stored { uuid: Key::from(entry.uuid), event_id: WIDE, timestamp: 0 }
    }
}

/// One address family: exact hosts, and networks by prefix length. Keys are the masked address as a u128
/// (IPv4 widened), so both families share one code path.
#[derive(Debug, Clone, Default)]
struct Family {
    hosts: HashMap<Key, Slot>,
    /// Sorted by prefix length, longest first.
    nets: Vec<(u8, HashMap<Key, Slot>)>,
}

/// The set of indicators the daemon blocks on.
#[derive(Debug, Clone)]
pub struct IndicatorSet {
    v4: Family,
    v6: Family,
    by_uuid: HashMap<Key, IpNet>,
    /// The entries too wide for [`Stored`] (an event id or timestamp beyond u32), by uuid: empty in practice.
    wide: HashMap<Key, Entry>,
    min_prefix_v4: u8,
    min_prefix_v6: u8,
    rejected_wide: u64,
}

impl Default for IndicatorSet {
    fn default() -> Self {
        IndicatorSet::new(16, 48)
    }
}

impl IndicatorSet {
    pub fn new(min_prefix_v4: u8, min_prefix_v6: u8) -> Self {
        IndicatorSet {
            v4: Family::default(),
            v6: Family::default(),
            by_uuid: HashMap::new(),
            wide: HashMap::new(),
            min_prefix_v4,
            min_prefix_v6,
            rejected_wide: 0,
        }
    }

    /// Number of attributes held.
    pub fn len(&self) -> usize {
        self.by_uuid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uuid.is_empty()
    }

    /// CIDR indicators refused for being wider than the minimum prefix, since creation.
    pub fn rejected_wide(&self) -> u64 {
        self.rejected_wide
    }

    /// Adds (or replaces, by uuid) one attribute. Host bits of a network are cleared.
    pub fn insert(&mut self, network: IpNet, entry: Entry) -> Inserted {
        let network = network.trunc();
        let too_wide = match network {
            IpNet::V4(n) => n.prefix_len() < self.min_prefix_v4,
            IpNet::V6(n) => n.prefix_len() < self.min_prefix_v6,
        };
        if too_wide {
            self.rejected_wide += 1;
            // A uuid whose new value is too wide must not keep blocking under its old value.
            self.remove(entry.uuid);
            return Inserted::TooWide;
        }
        let updated = match self.by_uuid.get(&Key::from(entry.uuid)) {
            Some(_) => {
                self.remove(entry.uuid);
                true
            }
            None => false,
        };
        self.by_uuid.insert(Key::from(entry.uuid), network);
        let compact = Stored::compact(entry);
        let slots = self.slots_mut(network);
        match slots.get_mut(&key_of(network)) {
            Some(slot) => slot.more.get_or_insert_with(Default::default).push(entry),
            None => {
                let first = compact.unwrap_or_else(|| Stored::wide(entry));
                slots.insert(key_of(network), Slot { first, more: None });
                if compact.is_none() {
                    self.wide.insert(Key::from(entry.uuid), entry);
                }
            }
        }
        if updated {
            Inserted::Updated
        } else {
            Inserted::New
        }
    }

    /// Removes the attribute with this uuid; returns the network it covered.
    pub fn remove(&mut self, uuid: u128) -> Option<IpNet> {
        let network = self.by_uuid.remove(&Key::from(uuid))?;
        if !self.wide.is_empty() {
            self.wide.remove(&Key::from(uuid));
        }
        let key = key_of(network);
        let mut promoted_wide = None;
        let slots = self.slots_mut(network);
        if let Some(slot) = slots.get_mut(&key) {
            if slot.first.uuid.get() == uuid {
                match slot.more.as_mut().filter(|more| !more.is_empty()) {
                    Some(more) => {
                        let next = more.swap_remove(0);
                        slot.first = Stored::compact(next).unwrap_or_else(|| {
                            promoted_wide = Some(next);
                            Stored::wide(next)
                        });
                        if more.is_empty() {
                            slot.more = None;
                        }
                    }
                    None => {
                        slots.remove(&key);
                    }
                }
            } else if let Some(more) = slot.more.as_mut() {
                more.retain(|e| e.uuid != uuid);
                if more.is_empty() {
                    slot.more = None;
                }
            }
        }
        if let Some(entry) = promoted_wide {
            self.wide.insert(Key::from(entry.uuid), entry);
        }
        self.drop_empty_lengths();
        Some(network)
    }

    /// The most specific indicator covering `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<Hit> {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let addr = u32::from(v4);
                if let Some(slot) = self.v4.hosts.get(&Key::from(addr as u128)) {
                    return Some(Hit { network: IpNet::from(IpAddr::V4(v4)), entry: self.entry(slot.first) });
                }
                self.v4.nets.iter().find_map(|(len, map)| {
                    let masked = addr & mask32(*len);
                    map.get(&Key::from(masked as u128)).map(|slot| Hit {
                        network: IpNet::new(IpAddr::V4(masked.into()), *len).expect("len <= 32 by construction"),
                        entry: self.entry(slot.first),
                    })
                })
            }
            IpAddr::V6(v6) => {
                let addr = u128::from(v6);
                if let Some(slot) = self.v6.hosts.get(&Key::from(addr)) {
                    return Some(Hit { network: IpNet::from(IpAddr::V6(v6)), entry: self.entry(slot.first) });
                }
                self.v6.nets.iter().find_map(|(len, map)| {
                    let masked = addr & mask128(*len);
                    map.get(&Key::from(masked)).map(|slot| Hit {
                        network: IpNet::new(IpAddr::V6(masked.into()), *len).expect("len <= 128 by construction"),
                        entry: self.entry(slot.first),
                    })
                })
            }
        }
    }

    /// Whether the attribute with this uuid is present.
    pub fn contains_uuid(&self, uuid: u128) -> bool {
        self.by_uuid.contains_key(&Key::from(uuid))
    }

    /// Every uuid held (for a full resync to find what disappeared).
    pub fn uuids(&self) -> impl Iterator<Item = u128> + '_ {
        self.by_uuid.keys().map(|k| k.get())
    }

    /// Every stored network with the newest timestamp among its attributes: IPv4 then IPv6, otherwise in no
    /// particular order. Each network once, however many attributes carry it.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, i64)> + '_ {
        let newest = move |slot: &Slot| {
            let more = slot.more.iter().flat_map(|more| more.iter().map(|e| e.timestamp));
            more.fold(self.entry(slot.first).timestamp, i64::max)
        };
        fn family<'s>(
            f: &'s Family,
            v4: bool,
            newest: impl Fn(&Slot) -> i64 + 's,
        ) -> impl Iterator<Item = (IpNet, i64)> + 's {
            let host_len = if v4 { 32 } else { 128 };
            let hosts = f.hosts.iter().map(move |(k, slot)| (host_len, k, slot));
            let nets = f.nets.iter().flat_map(|(len, map)| map.iter().map(move |(k, slot)| (*len, k, slot)));
            hosts.chain(nets).map(move |(len, k, slot)| {
                let addr = if v4 { IpAddr::V4((k.get() as u32).into()) } else { IpAddr::V6(k.get().into()) };
                (IpNet::new(addr, len).expect("stored prefix lengths fit their family"), newest(slot))
            })
        }
        family(&self.v4, true, newest).chain(family(&self.v6, false, newest))
    }

    /// The whole entry behind a stored one.
    #[inline]
    fn entry(&self, stored: Stored) -> Entry {
        if stored.event_id == WIDE {
            if let Some(entry) = self.wide.get(&stored.uuid) {
                return *entry;
            }
        }
        Entry { event_id: u64::from(stored.event_id), uuid: stored.uuid.get(), timestamp: i64::from(stored.timestamp) }
    }

    /// The map that holds `network`: the family's host map for a full-length prefix, else the map of its length.
    fn slots_mut(&mut self, network: IpNet) -> &mut HashMap<Key, Slot> {
        let (family, len, host_len) = match network {
            IpNet::V4(n) => (&mut self.v4, n.prefix_len(), 32),
            IpNet::V6(n) => (&mut self.v6, n.prefix_len(), 128),
        };
        if len == host_len {
            return &mut family.hosts;
        }
        let at = match family.nets.iter().position(|(l, _)| *l <= len) {
            Some(i) if family.nets[i].0 == len => i,
            Some(i) => {
                family.nets.insert(i, (len, HashMap::new()));
                i
            }
            None => {
                family.nets.push((len, HashMap::new()));
                family.nets.len() - 1
            }
        };
        &mut family.nets[at].1
    }

    fn drop_empty_lengths(&mut self) {
        self.v4.nets.retain(|(_, map)| !map.is_empty());
        self.v6.nets.retain(|(_, map)| !map.is_empty());
    }
}

/// A u128 (address or uuid) as two u64s: 8-byte aligned, so map buckets carry no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    hi: u64,
    lo: u64,
}

impl Key {
    fn from(v: u128) -> Key {
        Key { hi: (v >> 64) as u64, lo: v as u64 }
    }

    fn get(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }
}

fn key_of(network: IpNet) -> Key {
    Key::from(match network.network() {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    })
}

/// IPv4-mapped IPv6 addresses are looked up as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// Parses a MISP uuid into 128 bits; a value that is not a uuid is hashed so it still identifies the attribute.
pub fn parse_uuid(s: &str) -> u128 {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32 {
        if let Ok(v) = u128::from_str_radix(&hex, 16) {
            return v;
        }
    }
    // FNV-1a over 128 bits: stable across runs, unlike the std hasher.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

/// Prints a 128-bit uuid in the 8-4-4-4-12 form.
pub fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).unwrap()
    }

    fn entry(event_id: u64, uuid: u128) -> Entry {
        Entry { event_id, uuid, timestamp: 1_700_000_000 + event_id as i64 }
    }

    fn check(set: &IndicatorSet, ip: &str, expected: Option<(&str, u64)>) {
        let got = set.lookup(ip.parse().unwrap()).map(|h| (h.network.to_string(), h.entry.event_id));
        let expected = expected.map(|(n, e)| (net(n).to_string(), e));
        assert_eq!(got, expected, "lookup {ip}");
    }

    #[test]
    fn hosts_and_networks_longest_prefix_first() {
        let mut set = IndicatorSet::new(16, 48);
        assert_eq!(set.insert(net("198.51.100.7"), entry(1, 1)), Inserted::New);
        assert_eq!(set.insert(net("198.51.100.0/24"), entry(2, 2)), Inserted::New);
        assert_eq!(set.insert(net("198.51.0.0/16"), entry(3, 3)), Inserted::New);
        assert_eq!(set.insert(net("198.51.100.128/25"), entry(4, 4)), Inserted::New);
        assert_eq!(set.insert(net("2001:db8::7"), entry(5, 5)), Inserted::New);
        assert_eq!(set.insert(net("2001:db8:1::/48"), entry(6, 6)), Inserted::New);
        assert_eq!(set.insert(net("10.0.0.0/8"), entry(7, 7)), Inserted::TooWide);
        assert_eq!(set.insert(net("2001:db8::/32"), entry(8, 8)), Inserted::TooWide);
        assert_eq!(set.rejected_wide(), 2);
        assert_eq!(set.len(), 6);
        let cases: &[(&str, Option<(&str, u64)>)] = &[
            ("198.51.100.7", Some(("198.51.100.7/32", 1))),
            ("198.51.100.8", Some(("198.51.100.0/24", 2))),
            ("198.51.100.200", Some(("198.51.100.128/25", 4))),
            ("198.51.7.7", Some(("198.51.0.0/16", 3))),
            ("198.52.0.1", None),
            ("10.1.1.1", None),
            ("::ffff:198.51.100.7", Some(("198.51.100.7/32", 1))),
            ("2001:db8::7", Some(("2001:db8::7/128", 5))),
            ("2001:db8::8", None),
            ("2001:db8:1:ffff::1", Some(("2001:db8:1::/48", 6))),
        ];
        for (ip, expected) in cases {
            check(&set, ip, *expected);
        }
    }

    #[test]
    fn removal_is_by_uuid_and_keeps_other_attributes_with_the_same_value() {
        let mut set = IndicatorSet::default();
        set.insert(net("203.0.113.9"), entry(1, 10));
        set.insert(net("203.0.113.9"), entry(2, 11));
        set.insert(net("203.0.113.0/24"), entry(3, 12));
        check(&set, "203.0.113.9", Some(("203.0.113.9", 1)));
        assert_eq!(set.remove(10), Some(net("203.0.113.9")));
        check(&set, "203.0.113.9", Some(("203.0.113.9", 2)));
        set.remove(11);
        check(&set, "203.0.113.9", Some(("203.0.113.0/24", 3)));
        set.remove(12);
        check(&set, "203.0.113.9", None);
        assert!(set.is_empty());
        assert_eq!(set.remove(12), None);
        assert!(set.v4.nets.is_empty(), "empty prefix maps are dropped");
    }

    #[test]
    fn update_moves_a_uuid_to_its_new_value() {
        let mut set = IndicatorSet::default();
        set.insert(net("198.51.100.1"), entry(1, 7));
        assert_eq!(set.insert(net("198.51.100.2"), entry(1, 7)), Inserted::Updated);
        check(&set, "198.51.100.1", None);
        check(&set, "198.51.100.2", Some(("198.51.100.2", 1)));
        // Widened beyond the limit: the old value must stop matching too.
        assert_eq!(set.insert(net("198.0.0.0/8"), entry(1, 7)), Inserted::TooWide);
        check(&set, "198.51.100.2", None);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn iter_gives_each_network_once_with_its_newest_timestamp() {
        let mut set = IndicatorSet::default();
        let at = |event_id, uuid, timestamp| Entry { event_id, uuid, timestamp };
        set.insert(net("203.0.113.9"), at(1, 1, 100));
        set.insert(net("203.0.113.9"), at(2, 2, 300));
        set.insert(net("203.0.113.9"), at(3, 3, 200));
        set.insert(net("203.0.113.0/24"), at(4, 4, 50));
        set.insert(net("2001:db8::7"), at(5, 5, 70));
        set.insert(net("2001:db8:1::/48"), at(6, 6, 80));
        let mut got: Vec<(String, i64)> = set.iter().map(|(n, ts)| (n.to_string(), ts)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("2001:db8:1::/48".to_string(), 80),
                ("2001:db8::7/128".to_string(), 70),
                ("203.0.113.0/24".to_string(), 50),
                ("203.0.113.9/32".to_string(), 300),
            ]
        );
        set.remove(2);
        assert!(set.iter().any(|(n, ts)| n == net("203.0.113.9") && ts == 200));
    }

    #[test]
    fn entries_beyond_u32_are_kept_whole() {
        let mut set = IndicatorSet::default();
        let wide = [
            Entry { event_id: u64::MAX, uuid: 1, timestamp: 5 },
            Entry { event_id: u64::from(u32::MAX), uuid: 2, timestamp: 5 },
            Entry { event_id: 3, uuid: 3, timestamp: -1 },
            Entry { event_id: 4, uuid: 4, timestamp: i64::MAX },
        ];
        for (i, entry) in wide.iter().enumerate() {
            let ip = format!("198.51.100.{i}");
            set.insert(net(&ip), *entry);
            assert_eq!(set.lookup(ip.parse().unwrap()).unwrap().entry, *entry, "{entry:?}");
        }
        let mut stamps: Vec<i64> = set.iter().map(|(_, ts)| ts).collect();
        stamps.sort();
        assert_eq!(stamps, vec![-1, 5, 5, i64::MAX]);
        // A wide entry promoted from the extra list, then removed: nothing left behind.
        set.insert(net("203.0.113.1"), entry(7, 10));
        set.insert(net("203.0.113.1"), Entry { event_id: 1 << 40, uuid: 11, timestamp: 9 });
        set.remove(10);
        assert_eq!(set.lookup("203.0.113.1".parse().unwrap()).unwrap().entry.event_id, 1 << 40);
        for uuid in [1, 2, 3, 4, 11] {
            set.remove(uuid);
        }
        assert!(set.is_empty() && set.wide.is_empty());
    }

    #[test]
    fn a_host_bucket_stays_48_bytes() {
        assert_eq!(std::mem::size_of::<Stored>(), 24);
        assert_eq!(std::mem::size_of::<(Key, Slot)>(), 48);
    }

    #[test]
    fn uuids_round_trip() {
        let u = "5f9c3a6e-1b2d-4c3e-9f8a-0123456789ab";
        assert_eq!(format_uuid(parse_uuid(u)), u);
        assert_ne!(parse_uuid("not-a-uuid"), parse_uuid("not-a-uuid2"));
        assert_eq!(parse_uuid("not-a-uuid"), parse_uuid("not-a-uuid"));
    }
}
