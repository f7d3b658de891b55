//! Feed names, the layout of entries into feeds under a cap, the served text and push diffs.

use std::net::IpAddr;
use std::time::SystemTime;

use bytes::Bytes;
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
    pub fn new(base: &str, split_families: bool, max_feeds: u32) -> Names {
        let _ = (base, split_families, max_feeds);
        todo!("task B")
    }

    /// Every feed name that may be used, IPv4 (or combined) first, each family in overflow order.
    pub fn all(&self) -> Vec<String> {
        todo!("task B")
    }

    /// The feed of `family` (ignored unless split) and overflow `index` (0 = the first feed).
    pub fn name(&self, family: Family, index: u32) -> String {
        let _ = (family, index);
        todo!("task B")
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
pub fn layout(names: &Names, blocked: &[(IpAddr, i64)], indicators: &[(IpNet, i64)], cap: usize) -> Layout {
    let _ = (names, blocked, indicators, cap);
    todo!("task B")
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
pub fn render(content: &FeedContent, built_at: SystemTime, note: &str) -> Snapshot {
    let _ = (content, built_at, note);
    todo!("task B")
}

/// What a push sends to turn `old` into `new`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diff {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

/// The set difference both ways, each side in the order of its input.
pub fn diff(old: &[IpNet], new: &[IpNet]) -> Diff {
    let _ = (old, new);
    todo!("task B")
}
