//! Synthetic indicator sets shared by the indicator benchmarks: a deterministic mix like a real MISP instance's
//! IP attributes (80 % IPv4 /32, 10 % IPv6 /128, 10 % networks: IPv4 /20–/30 and IPv6 /48–/64), and probe
//! addresses of which about half fall in the set.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fortimisp_core::indicators::{Entry, IndicatorSet};
use ipnet::IpNet;

/// xorshift64*: deterministic and cheap.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Public-looking IPv4 (first octet 1..=223 but not 10 or 127).
fn v4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let a = rng.next() as u32;
        let first = a >> 24;
        if (1..=223).contains(&first) && first != 10 && first != 127 {
            return Ipv4Addr::from(a);
        }
    }
}

fn v6(rng: &mut Rng) -> Ipv6Addr {
    let hi = (0x2001_0db8u128 << 96) | (u128::from(rng.next()) << 32);
    Ipv6Addr::from(hi | u128::from(rng.next() as u32))
}

/// The `i`-th network of the mix.
pub fn network(rng: &mut Rng, i: u64) -> IpNet {
    match i % 10 {
        0..=7 => IpNet::from(IpAddr::V4(v4(rng))),
        8 => IpNet::from(IpAddr::V6(v6(rng))),
        _ if i % 20 == 9 => IpNet::new(IpAddr::V4(v4(rng)), 20 + (rng.next() % 11) as u8).unwrap().trunc(),
        _ => IpNet::new(IpAddr::V6(v6(rng)), 48 + (rng.next() % 17) as u8).unwrap().trunc(),
    }
}

/// A set of `n` indicators and `probes` lookup addresses (about half inside the set).
pub fn build(n: u64, probes: usize) -> (IndicatorSet, Vec<IpAddr>) {
    let mut rng = Rng::new(0x5eed ^ n);
    let mut set = IndicatorSet::new(16, 48);
    let mut members = Vec::with_capacity(probes);
    for i in 0..n {
        let net = network(&mut rng, i);
        let entry = Entry {
            event_id: 1 + i / 10_000,
            uuid: u128::from(i) << 64 | u128::from(rng.next()),
            // From `i`, not the generator: the networks and probes stay those of earlier runs.
            timestamp: 1_700_000_000 + (i * 7_919 % 31_536_000) as i64,
        };
        set.insert(net, entry);
        if members.len() < probes && rng.next().is_multiple_of((n / probes as u64).max(1)) {
            // An address inside this network.
            let ip = match net {
                IpNet::V4(n) => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | (rng.next() as u32 & !u32::from(n.netmask()))))
                }
                IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(n.network()) | (u128::from(rng.next()) & !u128::from(n.netmask())),
                )),
            };
            members.push(ip);
        }
    }
    let mut out = Vec::with_capacity(probes);
    for i in 0..probes {
        if i % 2 == 0 && !members.is_empty() {
            out.push(members[i / 2 % members.len()]);
        } else if i % 10 == 9 {
            out.push(IpAddr::V6(v6(&mut rng)));
        } else {
            out.push(IpAddr::V4(v4(&mut rng)));
        }
    }
    (set, out)
}
