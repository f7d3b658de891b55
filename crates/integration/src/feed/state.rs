//! [`FeedState`]: what the threat feeds hold right now, shared by the blocker (adds), the ledger reader
//! (housekeeping's and `integration unblock`'s removals, which happen in other processes), the mirror (indicators
//! mode), the HTTPS server (pulls) and the pusher.
//!
//! Inputs change under a short `std::sync::Mutex`; every change bumps a generation and wakes the pusher. The
//! contents ([`Built`]: the layout and one [`Snapshot`] per feed) are built lazily, at most once per generation,
//! by whoever asks first (a fetch or the pusher) under a second lock, so a FortiGate that pulls every second costs
//! one build per change, and a fetch during a change gets the previous whole snapshot or the next whole one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fortimisp_core::config::{self, Contents};
use fortimisp_core::feed::{self, Layout, Names, Snapshot};
use fortimisp_core::metrics::{FamilyLabel, FeedLabel, Metrics};
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::error;

/// How long a block added by this process is kept while the ledger does not show it.
pub const LEDGER_GRACE: Duration = Duration::from_secs(60);

/// The contents of every feed for one generation of the inputs.
#[derive(Debug)]
pub struct Built {
    pub generation: u64,
    pub layout: Layout,
    /// The per-feed cap this was built with.
    pub cap: usize,
    pub snapshots: HashMap<String, Arc<Snapshot>>,
}

impl Built {
    /// The entries of feed `name` (empty for an unknown name).
    pub fn entries(&self, name: &str) -> &[IpNet] {
        self.layout.feeds.iter().find(|f| f.name == name).map_or(&[], |f| f.entries.as_slice())
    }
}

/// The inputs.
#[derive(Default)]
struct Inputs {
    /// Log-triggered blocks: address -> block time (Unix seconds).
    blocked: HashMap<IpAddr, i64>,
    /// Blocks added here that the ledger may not show yet (the blocker records the ledger entry after the block):
    /// kept through [`LEDGER_GRACE`] of ledger reads.
    local: HashMap<IpAddr, (i64, Instant)>,
    /// The mirror's entries (`contents = "indicators"`), already in [`feed::content::entries`] order.
    indicators: Arc<Vec<(IpNet, i64)>>,
    /// The limit the FortiGate reports, when `max_entries = 0`.
    device_limit: Option<u64>,
    generation: u64,
    /// The ledger was read once.
    ledger_read: bool,
    /// The mirror's indicators arrived once (indicators mode).
    indicators_read: bool,
}

/// See the module docs.
pub struct FeedState {
    names: Names,
    contents: Contents,
    max_entries: Option<u32>,
    inputs: Mutex<Inputs>,
    built: Mutex<Option<Arc<Built>>>,
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl FeedState {
    pub fn new(cfg: &config::Feed, metrics: Arc<Metrics>) -> FeedState {
        FeedState {
            names: cfg.names(),
            contents: cfg.contents,
            max_entries: cfg.max_entries,
            inputs: Mutex::new(Inputs::default()),
            built: Mutex::new(None),
            generation: watch::channel(0).0,
            metrics,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Adds a log-triggered block; the generation that holds it.
    pub fn add_blocked(&self, ip: IpAddr, at: i64) -> u64 {
        self.change(|inputs| {
            inputs.local.insert(ip, (at, Instant::now()));
            inputs.blocked.insert(ip, at).is_none_or(|before| before != at)
        })
    }

    /// Replaces the blocks with the ledger's (the truth, which other processes also change), keeping this
    /// process's own blocks of the last [`LEDGER_GRACE`] that the ledger does not show yet. Bumps the generation
    /// only when something differs.
    pub fn replace_blocked(&self, mut blocked: HashMap<IpAddr, i64>) -> u64 {
        self.change(|inputs| {
            let now = Instant::now();
            inputs
                .local
                .retain(|ip, (_, added)| !blocked.contains_key(ip) && now.duration_since(*added) < LEDGER_GRACE);
            for (ip, (at, _)) in &inputs.local {
                blocked.insert(*ip, *at);
            }
            // An address already held keeps its time (the ledger's may differ from this process's by a second):
            // only a change of the set is a change.
            for (ip, at) in blocked.iter_mut() {
                if let Some(held) = inputs.blocked.get(ip) {
                    *at = *held;
                }
            }
            let first = !std::mem::replace(&mut inputs.ledger_read, true);
            if inputs.blocked == blocked {
                return first;
            }
            inputs.blocked = blocked;
            true
        })
    }

    /// Replaces the indicator entries (indicators mode).
    pub fn set_indicators(&self, entries: Vec<(IpNet, i64)>) -> u64 {
        self.change(|inputs| {
            let first = !std::mem::replace(&mut inputs.indicators_read, true);
            if *inputs.indicators == entries {
                return first;
            }
            inputs.indicators = Arc::new(entries);
            true
        })
    }

    /// Records the limit the FortiGate reports (used when `max_entries = 0`).
    pub fn set_device_limit(&self, limit: u64) -> u64 {
        self.change(|inputs| inputs.device_limit.replace(limit) != Some(limit))
    }

    /// Whether the contents are complete: the ledger was read and, in indicators mode, the mirror's entries
    /// arrived. Before that nothing is served or pushed: a partial list would withdraw blocks from the FortiGate
    /// (which keeps its last list while a fetch fails).
    pub fn is_ready(&self) -> bool {
        let inputs = self.inputs.lock().expect("feed inputs lock is never held across a panic");
        inputs.ledger_read && (inputs.indicators_read || self.contents == Contents::Blocked)
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn change(&self, apply: impl FnOnce(&mut Inputs) -> bool) -> u64 {
        let mut inputs = self.inputs.lock().expect("feed inputs lock is never held across a panic");
        if apply(&mut inputs) {
            inputs.generation += 1;
            self.generation.send_replace(inputs.generation);
        }
        inputs.generation
    }

    /// The per-feed cap: `max_entries`, else the FortiGate's limit, else the pre-7.4.4 per-resource limit.
    fn cap(&self, device_limit: Option<u64>) -> usize {
        match (self.max_entries, device_limit) {
            (Some(cap), _) => cap as usize,
            (None, Some(limit)) if limit > 0 => limit as usize,
            _ => config::FALLBACK_LIMIT as usize,
        }
    }

    /// The contents for the current inputs, built now if they changed since the last build.
    pub fn current(&self) -> Arc<Built> {
        let mut built = self.built.lock().expect("feed build lock is never held across a panic");
        let (generation, blocked, indicators, device_limit) = {
            let inputs = self.inputs.lock().expect("feed inputs lock is never held across a panic");
            if let Some(b) = built.as_ref().filter(|b| b.generation == inputs.generation) {
                return b.clone();
            }
            let mut blocked: Vec<(IpAddr, i64)> = inputs.blocked.iter().map(|(ip, at)| (*ip, *at)).collect();
            blocked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (inputs.generation, blocked, inputs.indicators.clone(), inputs.device_limit)
        };
        let cap = self.cap(device_limit);
        let indicators: &[(IpNet, i64)] = match self.contents {
            Contents::Indicators => &indicators,
            Contents::Blocked => &[],
        };
        let layout = feed::layout(&self.names, &blocked, indicators, cap);
        let now = SystemTime::now();
        let note = left_out_note(&layout, cap);
        let snapshots = layout
            .feeds
            .iter()
            .map(|content| (content.name.clone(), Arc::new(feed::render(content, now, &note))))
            .collect();
        self.publish(&layout, cap);
        let fresh = Arc::new(Built { generation, layout, cap, snapshots });
        *built = Some(fresh.clone());
        fresh
    }

    fn publish(&self, layout: &Layout, cap: usize) {
        let m = &self.metrics;
        m.tf_builds.inc();
        m.tf_limit.set(cap as i64);
        for content in &layout.feeds {
            m.tf_entries.get_or_create(&FeedLabel { feed: content.name.clone() }).set(content.entries.len() as i64);
        }
        let previous_v4 = m.tf_left_out.get_or_create(&FamilyLabel { family: "ipv4" }).get();
        let previous_v6 = m.tf_left_out.get_or_create(&FamilyLabel { family: "ipv6" }).get();
        m.tf_left_out.get_or_create(&FamilyLabel { family: "ipv4" }).set(layout.left_out_v4 as i64);
        m.tf_left_out.get_or_create(&FamilyLabel { family: "ipv6" }).set(layout.left_out_v6 as i64);
        let left_out = layout.left_out_v4 + layout.left_out_v6;
        if left_out > 0 && (previous_v4 + previous_v6) as u64 != left_out {
            error!(
                message = "Threat feeds are full: entries are left out. Raise max_entries/max_feeds (and create the \
                           extra feeds on the FortiGate) or narrow the MISP filters.",
                left_out_v4 = layout.left_out_v4,
                left_out_v6 = layout.left_out_v6,
                cap
            );
        }
    }
}

/// The header note of every feed: what did not fit, if anything.
fn left_out_note(layout: &Layout, cap: usize) -> String {
    let left_out = layout.left_out_v4 + layout.left_out_v6;
    if left_out == 0 {
        String::new()
    } else {
        format!("{left_out} entries left out (cap {cap} per feed)")
    }
}

impl super::serve::Source for FeedState {
    /// Nothing before the contents are complete (see [`FeedState::is_ready`]): the FortiGate keeps its last list
    /// while a fetch fails.
    fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
        if !self.is_ready() {
            return None;
        }
        self.current().snapshots.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::config::RawFeed;

    fn state(extra: &str) -> FeedState {
        let raw: RawFeed = toml::from_str(&format!("update = [\"push\"]\n{extra}")).unwrap();
        FeedState::new(&raw.validate(&|_| None).unwrap(), Arc::new(Metrics::new()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contents_are_built_once_per_change_and_ready_only_after_the_ledger() {
        let s = state("");
        assert!(!s.is_ready(), "nothing is served before the ledger was read");
        s.replace_blocked(HashMap::new());
        assert!(s.is_ready());
        let first = s.current();
        assert!(Arc::ptr_eq(&first, &s.current()), "no change, no build");
        assert_eq!(s.metrics.tf_builds.get(), 1);
        let generation = s.add_blocked(ip("198.51.100.7"), 100);
        let second = s.current();
        assert_eq!(second.generation, generation);
        assert_eq!(second.entries("fortimisp-block"), ["198.51.100.7/32".parse::<IpNet>().unwrap()]);
        assert_eq!(s.metrics.tf_builds.get(), 2);
        assert_eq!(s.current().snapshots["fortimisp-block"].entries, 1);
    }

    #[test]
    fn the_ledger_is_the_truth_but_fresh_local_blocks_wait_for_it() {
        let s = state("");
        s.replace_blocked(HashMap::new());
        let added = s.add_blocked(ip("198.51.100.7"), 100);
        // The ledger does not show it yet: kept.
        assert_eq!(s.replace_blocked(HashMap::new()), added);
        assert_eq!(s.current().entries("fortimisp-block").len(), 1);
        // The ledger shows it one second later: the same set, no change.
        assert_eq!(s.replace_blocked(HashMap::from([(ip("198.51.100.7"), 101)])), added);
        // Housekeeping closed it in the ledger: gone.
        assert!(s.replace_blocked(HashMap::new()) > added);
        assert!(s.current().entries("fortimisp-block").is_empty());
        // Another process's block appears.
        s.replace_blocked(HashMap::from([(ip("2001:db8::7"), 5)]));
        assert_eq!(s.current().entries("fortimisp-block6"), ["2001:db8::7/128".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn the_cap_is_max_entries_else_the_device_limit_else_the_old_per_feed_limit() {
        let s = state("contents = \"indicators\"");
        s.replace_blocked(HashMap::new());
        assert!(!s.is_ready(), "indicators mode waits for the mirror");
        let nets: Vec<(IpNet, i64)> = (0..10u8).map(|i| (format!("198.51.100.{i}/32").parse().unwrap(), 0)).collect();
        s.set_indicators(nets.clone());
        assert!(s.is_ready());
        assert_eq!(s.current().cap, config::FALLBACK_LIMIT as usize);
        s.set_device_limit(4);
        let built = s.current();
        assert_eq!((built.cap, built.entries("fortimisp-block").len(), built.layout.left_out_v4), (4, 4, 6));
        assert_eq!(s.metrics.tf_left_out.get_or_create(&FamilyLabel { family: "ipv4" }).get(), 6);
        let capped = state("contents = \"indicators\"\nmax_entries = 8\nmax_feeds = 2");
        capped.replace_blocked(HashMap::new());
        capped.set_indicators(nets);
        capped.set_device_limit(4);
        let built = capped.current();
        assert_eq!(
            (built.cap, built.entries("fortimisp-block").len(), built.entries("fortimisp-block-2").len()),
            (8, 8, 2)
        );
    }
}
