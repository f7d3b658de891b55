//! Threat-feed contents, pure: which entries each FortiGate external threat feed holds, the text served for a
//! pull, the commands a push sends, and the FortiGate's feed events on the syslog stream.
//!
//! Nothing here does I/O or reads a clock. The integration daemon owns the live state (`integration::feed`):
//! it hands the log-triggered blocks and the mirror's indicators to [`layout`], [`render`]s what it serves and
//! [`diff`]s what it pushes.
//!
//! - [`content`]: the mirror's indicators as feed entries: never-block ranges cut out, CIDR-aggregated, newest
//!   first.
//! - [`Names`]: the feeds' names (`name`, `name6` when the families are split, `name-2`, ... beyond the cap).
//! - [`layout`]: entries into feeds under a cap, blocked addresses first; what does not fit is counted.
//! - [`render`] / [`Snapshot`]: one feed's text (`#` header, one address or CIDR per line) and its ETag.
//! - [`diff`]: the `add`/`remove` between two versions of a feed.
//! - [`check`]: what `integration validate` proves about the feed objects on the FortiGate.
//! - [`event`]: logid 0100022220/22222/22224 lines (updated, loaded, overflow).

pub mod check;
pub mod content;
pub mod event;
mod layout;

pub use layout::{diff, layout, render, Diff, Family, FeedContent, Layout, Names, Snapshot};

impl Family {
    /// The family of an address.
    pub fn of(ip: std::net::IpAddr) -> Family {
        match ip {
            std::net::IpAddr::V4(_) => Family::V4,
            std::net::IpAddr::V6(_) => Family::V6,
        }
    }
}

impl Names {
    /// The first feed an address of `ip`'s family goes to.
    pub fn first_of(&self, ip: std::net::IpAddr) -> String {
        self.name(Family::of(ip), 0)
    }

    /// Every feed that may hold an address of `family` (all of them when the families share feeds).
    pub fn of_family(&self, family: Family) -> Vec<String> {
        let all = self.all();
        (0..all.len() as u32).map(|i| self.name(family, i)).filter(|name| all.contains(name)).collect()
    }
}

/// Networks from text, for the tests of this module's files.
#[cfg(test)]
pub(crate) mod testutil {
    use ipnet::IpNet;
    use std::net::IpAddr;

    /// `198.51.100.0/24` or a bare address (a host network).
    pub fn net(s: &str) -> IpNet {
        s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).unwrap()
    }

    pub fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }
}
