//! [`Indicator`]: one MISP attribute reduced to the network it names, and [`AttributeKind`].
//!
//! Conversion never fails loudly: an attribute whose value holds no IP (a `domain|ip` with a bad IP half, a
//! sanitised `comment`) yields `None` and the caller counts it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The MISP attribute type, reduced to the ones fortimisp understands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeKind {
    /// `ip-src`
    IpSrc,
    /// `ip-dst`
    IpDst,
    /// `ip-src|port` (value `IP|port`)
    IpSrcPort,
    /// `ip-dst|port` (value `IP|port`)
    IpDstPort,
    /// `domain|ip` (value `domain|IP`)
    DomainIp,
    /// Any other type, kept by name.
    Other(String),
}

impl AttributeKind {
    /// The four IP types fortimisp treats as hits by default (the contract's `types` default).
    pub const DEFAULT_IP_TYPES: [&'static str; 4] = ["ip-src", "ip-dst", "ip-src|port", "ip-dst|port"];

    /// Maps a MISP type name.
    pub fn from_misp_type(misp_type: &str) -> Self {
        match misp_type {
            "ip-src" => AttributeKind::IpSrc,
            "ip-dst" => AttributeKind::IpDst,
            "ip-src|port" => AttributeKind::IpSrcPort,
            "ip-dst|port" => AttributeKind::IpDstPort,
            "domain|ip" => AttributeKind::DomainIp,
            other => AttributeKind::Other(other.to_string()),
        }
    }

    /// The MISP type name.
    pub fn as_str(&self) -> &str {
        match self {
            AttributeKind::IpSrc => "ip-src",
            AttributeKind::IpDst => "ip-dst",
            AttributeKind::IpSrcPort => "ip-src|port",
            AttributeKind::IpDstPort => "ip-dst|port",
            AttributeKind::DomainIp => "domain|ip",
            AttributeKind::Other(name) => name,
        }
    }

    /// The part of a value that holds the IP, for this kind. `None` when the value lacks it.
    pub fn ip_part<'v>(&self, value: &'v str) -> Option<&'v str> {
        match self {
            AttributeKind::IpSrc | AttributeKind::IpDst => Some(value),
            // `IP|port`: the IP never contains '|'.
            AttributeKind::IpSrcPort | AttributeKind::IpDstPort => value.split_once('|').map(|(ip, _)| ip),
            AttributeKind::DomainIp => value.split_once('|').map(|(_, ip)| ip),
            // Unknown types: only a bare IP or network counts.
            AttributeKind::Other(_) => Some(value),
        }
    }
}

impl fmt::Display for AttributeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A MISP attribute that names an IP address or network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indicator {
    /// The IP (as a /32 or /128) or the CIDR network. Host bits of a CIDR are cleared.
    pub network: IpNet,
    /// The attribute type.
    pub kind: AttributeKind,
    /// `Attribute.id`, used as the stable paging cursor.
    pub attribute_id: u64,
    /// `Attribute.event_id`.
    pub event_id: u64,
    /// `Attribute.uuid`: the key of the local mirror (values can be rewritten on delete).
    pub uuid: String,
    /// Whether the attribute is marked for detection.
    pub to_ids: bool,
    /// Soft-deleted. Incremental syncs see these and treat them as removals.
    pub deleted: bool,
    /// `Attribute.timestamp`, epoch seconds (bumped on edit and on soft delete).
    pub timestamp: i64,
    /// Attribute tags plus inherited event tags, by name.
    pub tags: Vec<String>,
}

impl Indicator {
    /// Whether this is a single address rather than a wider network.
    pub fn is_single(&self) -> bool {
        self.network.prefix_len() == self.network.max_prefix_len()
    }
}

/// Parses `198.51.100.7`, `2001:db8::7`, `198.51.100.0/24`, `198.51.100.7/32` into a network.
/// `/32` and `/128` become single addresses; a CIDR keeps its prefix with host bits cleared.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(ip) = IpAddr::from_str(text) {
        return Some(IpNet::from(ip));
    }
    IpNet::from_str(text).ok().map(|net| net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_part_and_parse() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("ip-src", "198.51.100.7", Some("198.51.100.7/32")),
            ("ip-dst", "198.51.100.7/32", Some("198.51.100.7/32")),
            ("ip-dst", "198.51.100.9/24", Some("198.51.100.0/24")),
            ("ip-dst", "2001:db8::7", Some("2001:db8::7/128")),
            ("ip-dst", "2001:db8::/48", Some("2001:db8::/48")),
            ("ip-src|port", "198.51.100.7|443", Some("198.51.100.7/32")),
            ("ip-dst|port", "2001:db8::7|8080", Some("2001:db8::7/128")),
            ("domain|ip", "evil.example|203.0.113.5", Some("203.0.113.5/32")),
            ("domain|ip", "evil.example", None),
            ("ip-src|port", "198.51.100.7", None),
            ("ip-src", "not-an-ip", None),
            ("comment", "deleted", None),
            ("other-type", "192.0.2.1", Some("192.0.2.1/32")),
        ];
        for (misp_type, value, expected) in cases {
            let kind = AttributeKind::from_misp_type(misp_type);
            assert_eq!(kind.as_str(), *misp_type);
            let got = kind.ip_part(value).and_then(parse_network).map(|n| n.to_string());
            assert_eq!(got.as_deref(), *expected, "{misp_type} {value}");
        }
    }
}
