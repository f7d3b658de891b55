//! Pure decisions that need no I/O: which log lines trigger a lookup and which addresses may never be blocked.
//!
//! - [`Triggers`] matches the facts of a parsed line ([`LineFacts`]) against the operator's `[[trigger]]` rules
//!   and says which addresses to look up.
//! - [`NeverBlock`] holds the IANA special-purpose ranges plus the operator's `never_block` list. It is consulted
//!   on every path that can block (daemon, `block` by hand, `replay`), and again in the FortiGate client's caller
//!   right before a write, so no code path can block a reserved address.
//!
//! Architecture invariant: the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
//! 2001:db8::/32) are deliberately *not* reserved here, so operators can test the loop end to end with addresses
//! that route nowhere. Put them in `never_block` to protect them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::{Check, TriggerRule};
use crate::syslog::LogRecord;

/// The fields of a log line the trigger rules look at. Borrowed from the parsed record.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineFacts<'a> {
    pub policyid: Option<u64>,
    pub action: Option<&'a str>,
    pub log_type: Option<&'a str>,
    pub subtype: Option<&'a str>,
    pub srcintf: Option<&'a str>,
    pub srcip: Option<IpAddr>,
    pub dstip: Option<IpAddr>,
}

impl<'a> LineFacts<'a> {
    /// The facts of a parsed log line (FortiOS 4 names resolve through the record's accessors).
    pub fn of(record: &'a LogRecord<'_>) -> Self {
        LineFacts {
            policyid: record.policyid().map(u64::from),
            action: record.action(),
            log_type: record.log_type(),
            subtype: record.subtype(),
            srcintf: record.srcintf(),
            srcip: record.srcip(),
            dstip: record.dstip(),
        }
    }
}

/// The operator's `[[trigger]]` rules.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    rules: Vec<TriggerRule>,
}

/// Which addresses of a line to look up; empty when no rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.src.is_none() && self.dst.is_none()
    }

    /// The addresses to look up, source first, without repeats.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        let dst = self.dst.filter(|d| Some(*d) != self.src);
        self.src.into_iter().chain(dst)
    }
}

impl Triggers {
    pub fn new(rules: Vec<TriggerRule>) -> Self {
        Triggers { rules }
    }

    pub fn rules(&self) -> &[TriggerRule] {
        &self.rules
    }

    /// Index of the first rule the line matches.
    pub fn first_match(&self, facts: &LineFacts<'_>) -> Option<usize> {
        self.rules.iter().position(|rule| rule_matches(rule, facts))
    }

    /// The addresses to look up for this line: the union over every matching rule's `check`.
    pub fn targets(&self, facts: &LineFacts<'_>) -> Targets {
        let mut targets = Targets::default();
        for rule in self.rules.iter().filter(|rule| rule_matches(rule, facts)) {
            if matches!(rule.check, Check::Src | Check::Both) {
                targets.src = targets.src.or(facts.srcip);
            }
            if matches!(rule.check, Check::Dst | Check::Both) {
                targets.dst = targets.dst.or(facts.dstip);
            }
        }
        targets
    }
}

fn rule_matches(rule: &TriggerRule, facts: &LineFacts<'_>) -> bool {
    fn eq(want: &Option<String>, have: Option<&str>) -> bool {
        match want {
            None => true,
            Some(want) => have.is_some_and(|have| have.eq_ignore_ascii_case(want)),
        }
    }
    rule.policy_id.is_none_or(|id| facts.policyid == Some(id))
        && rule.action.as_ref().is_none_or(|want| facts.action.is_some_and(|have| want.matches(have)))
        && eq(&rule.log_type, facts.log_type)
        && eq(&rule.subtype, facts.subtype)
        && eq(&rule.srcintf, facts.srcintf)
}

/// Why an address must not be blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protected {
    /// An IANA special-purpose range; the name says which.
    Reserved { range: IpNet, name: &'static str },
    /// The operator's `never_block` list.
    Configured { range: IpNet },
}

impl std::fmt::Display for Protected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protected::Reserved { range, name } => write!(f, "reserved range {range} ({name})"),
            Protected::Configured { range } => write!(f, "never_block {range}"),
        }
    }
}

/// IANA IPv4 special-purpose ranges that are not globally reachable (RFC 6890 registry), minus documentation.
const RESERVED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared CGNAT"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private"),
    (Ipv4Addr::new(192, 175, 48, 0), 24, "direct delegation AS112"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast"),
];

/// IANA IPv6 special-purpose ranges that are not globally reachable, minus documentation.
const RESERVED_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    (Ipv6Addr::LOCALHOST, 128, "loopback"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, "IPv4-mapped"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use IPv4/IPv6 translation"),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only"),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, "IETF protocol assignments"),
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, "segment routing SIDs"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local (deprecated)"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Addresses that must never be blocked: built-in reserved ranges plus the operator's list.
#[derive(Debug, Clone)]
pub struct NeverBlock {
    reserved: Vec<(IpNet, &'static str)>,
    configured: Vec<IpNet>,
}

impl NeverBlock {
    pub fn new(configured: Vec<IpNet>) -> Self {
        let v4 = RESERVED_V4.iter().map(|&(addr, len, name)| {
            let net = Ipv4Net::new(addr, len).expect("built-in IPv4 prefix lengths are at most 32");
            (IpNet::V4(net), name)
        });
        let v6 = RESERVED_V6.iter().map(|&(addr, len, name)| {
            let net = Ipv6Net::new(addr, len).expect("built-in IPv6 prefix lengths are at most 128");
            (IpNet::V6(net), name)
        });
        NeverBlock { reserved: v4.chain(v6).collect(), configured }
    }

    /// Why `ip` must not be blocked, or `None` if it may be. An IPv4-mapped IPv6 address is judged as IPv4
    /// (and as the reserved IPv4-mapped range).
    pub fn check(&self, ip: IpAddr) -> Option<Protected> {
        let candidates = [Some(ip), ipv4_of_mapped(ip)];
        for ip in candidates.into_iter().flatten() {
            if let Some(range) = self.configured.iter().find(|net| net.contains(&ip)) {
                return Some(Protected::Configured { range: *range });
            }
        }
        self.reserved
            .iter()
            .find(|(net, _)| candidates.iter().flatten().any(|ip| net.contains(ip)))
            .map(|&(range, name)| Protected::Reserved { range, name })
    }

    /// Every protected range: the built-in reserved ones, then the configured ones (the feed cuts them all out).
    pub fn ranges(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.reserved.iter().map(|&(net, _)| net).chain(self.configured.iter().copied())
    }

    /// Whether `ip` is in a built-in reserved range (which even `block --force` may not override).
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        matches!(self.check(ip), Some(Protected::Reserved { .. }))
            || self
                .reserved
                .iter()
                .any(|(net, _)| [Some(ip), ipv4_of_mapped(ip)].iter().flatten().any(|ip| net.contains(ip)))
    }
}

fn ipv4_of_mapped(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_and_configured_ranges() {
        let nb = NeverBlock::new(vec!["8.8.8.0/24".parse().unwrap(), "2606:4700::/32".parse().unwrap()]);
        // (address, protected?, by configuration?)
        let cases: &[(&str, bool, bool)] = &[
            ("10.1.2.3", true, false),
            ("172.31.255.255", true, false),
            ("172.32.0.1", false, false),
            ("192.168.1.1", true, false),
            ("127.0.0.1", true, false),
            ("0.0.0.0", true, false),
            ("100.64.0.1", true, false),
            ("100.128.0.1", false, false),
            ("169.254.169.254", true, false),
            ("224.0.0.251", true, false),
            ("239.255.255.250", true, false),
            ("240.0.0.1", true, false),
            ("255.255.255.255", true, false),
            ("198.18.0.1", true, false),
            ("192.0.0.9", true, false),
            ("192.0.2.1", false, false),
            ("198.51.100.7", false, false),
            ("203.0.113.5", false, false),
            ("1.1.1.1", false, false),
            ("8.8.8.8", true, true),
            ("::", true, false),
            ("::1", true, false),
            ("fe80::1", true, false),
            ("fd00::1", true, false),
            ("ff02::1", true, false),
            ("::ffff:10.0.0.1", true, false),
            ("::ffff:8.8.8.8", true, true),
            ("2001:db8::7", false, false),
            ("2001:4860:4860::8888", false, false),
            ("2606:4700::1111", true, true),
            ("2a00:1450::1", false, false),
        ];
        for &(addr, protected, configured) in cases {
            let got = nb.check(ip(addr));
            assert_eq!(got.is_some(), protected, "{addr}: {got:?}");
            assert_eq!(matches!(got, Some(Protected::Configured { .. })), configured, "{addr}: {got:?}");
        }
        assert!(nb.is_reserved(ip("::ffff:10.0.0.1")));
        assert!(!nb.is_reserved(ip("8.8.8.8")));
    }

    fn rule(policy: Option<u64>, action: Option<&str>, check: Check) -> TriggerRule {
        TriggerRule {
            policy_id: policy,
            action: action.map(|a| [a].into_iter().collect()),
            check,
            ..TriggerRule::default()
        }
    }

    #[test]
    fn triggers_match_every_set_key_and_union_targets() {
        let facts = LineFacts {
            policyid: Some(7),
            action: Some("accept"),
            log_type: Some("traffic"),
            subtype: Some("forward"),
            srcintf: Some("wan1"),
            srcip: Some(ip("198.51.100.7")),
            dstip: Some(ip("203.0.113.9")),
        };
        let cases: &[(Vec<TriggerRule>, Targets)] = &[
            (vec![rule(Some(7), Some("accept"), Check::Src)], Targets { src: facts.srcip, dst: None }),
            (vec![rule(Some(7), Some("ACCEPT"), Check::Dst)], Targets { src: None, dst: facts.dstip }),
            (vec![rule(Some(8), None, Check::Src)], Targets::default()),
            (vec![rule(Some(7), Some("deny"), Check::Src)], Targets::default()),
            (
                vec![TriggerRule {
                    action: Some(["close", "Accept", "timeout"].into_iter().collect()),
                    ..TriggerRule::default()
                }],
                Targets { src: facts.srcip, dst: None },
            ),
            (
                vec![TriggerRule {
                    action: Some(["close", "timeout"].into_iter().collect()),
                    ..TriggerRule::default()
                }],
                Targets::default(),
            ),
            (vec![rule(None, None, Check::Both)], Targets { src: facts.srcip, dst: facts.dstip }),
            (
                vec![rule(Some(7), None, Check::Src), rule(None, Some("accept"), Check::Dst)],
                Targets { src: facts.srcip, dst: facts.dstip },
            ),
            (vec![TriggerRule { srcintf: Some("lan".into()), ..TriggerRule::default() }], Targets::default()),
            (
                vec![TriggerRule {
                    log_type: Some("traffic".into()),
                    subtype: Some("forward".into()),
                    srcintf: Some("wan1".into()),
                    ..TriggerRule::default()
                }],
                Targets { src: facts.srcip, dst: None },
            ),
        ];
        for (rules, expected) in cases {
            let triggers = Triggers::new(rules.clone());
            assert_eq!(triggers.targets(&facts), *expected, "rules {rules:?}");
            assert_eq!(triggers.first_match(&facts).is_some(), !expected.is_empty());
        }
        let missing = LineFacts { policyid: None, ..facts };
        assert!(Triggers::new(vec![rule(Some(7), None, Check::Src)]).targets(&missing).is_empty());
    }

    #[test]
    fn targets_iterate_without_repeats() {
        let same = Targets { src: Some(ip("1.1.1.1")), dst: Some(ip("1.1.1.1")) };
        assert_eq!(same.iter().count(), 1);
    }
}
