//! From one syslog message to at most two candidate addresses, on the listener's own task.
//!
//! Sender allowlist → parse → trigger rules → the targets that claim the line's device → never-block. Every step that drops a message counts it in the
//! metrics, by reason; nothing here waits on MISP or the FortiGate, and nothing allocates for a line that does not
//! trigger (the record borrows from the receive buffer).
//!
//! The parse-and-decide part ([`Ingest::evaluate`]) is pure and is what `replay` and the tests call; the
//! listeners call [`Ingest::offer_nowait`] (UDP: drop and count when the next stage is full) or [`Ingest::offer`]
//! (TCP/TLS: wait, which pushes back on the sender).

use std::net::IpAddr;
use std::sync::Arc;

use fortimisp_core::metrics::Metrics;
use fortimisp_core::policy::{LineFacts, NeverBlock, Triggers};
use fortimisp_core::syslog;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use crate::decide::Candidate;
use fortimisp_core::feed::event::FeedEvent;
use fortimisp_core::fleet::{Claims, TargetSet};

/// What one message turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluation {
    /// Not a FortiGate log line: what was wrong with it.
    Unparsed(syslog::ErrorKind),
    /// Parsed, matched no trigger rule.
    Untriggered,
    /// Matched a rule, but no target claims the line's device (`devid`/`devname`, `vd`).
    Unclaimed,
    /// Matched rule `rule`; up to two addresses to look up (protected ones already removed), for `targets`.
    Triggered { rule: usize, ips: [Option<IpAddr>; 2], targets: TargetSet },
}

/// The ingest stage's settings and its handle on the next stage.
pub struct Ingest {
    triggers: Triggers,
    claims: Claims,
    never_block: NeverBlock,
    allowed_senders: Vec<IpNet>,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<Candidate>,
    recent: Recent,
    /// The threat-feed backend's confirmation task: the FortiGate's feed events (22220/22222/22224).
    feed_events: Option<mpsc::Sender<FeedEvent>>,
}

/// Slots of the recently-queued filter (a direct-mapped cache: a collision only costs a redundant candidate).
const RECENT_SLOTS: usize = 4096;
/// An address handed to the decision stage this recently is not handed over again.
const RECENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Addresses recently handed to the decision stage, so that a flood of lines from a few addresses costs one
/// candidate per address per second instead of filling the queue and crowding out first sightings. Only a
/// successful hand-over is remembered: a candidate dropped for a full queue is offered again on its next line.
/// An address is "seen" only for the targets it was handed over for: a line from another device goes through.
struct Recent {
    slots: std::sync::Mutex<Vec<Option<(IpAddr, TargetSet, Instant)>>>,
}

impl Recent {
    fn new() -> Self {
        Recent { slots: std::sync::Mutex::new(vec![None; RECENT_SLOTS]) }
    }

    fn slot(ip: &IpAddr) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut h);
        (h.finish() as usize) % RECENT_SLOTS
    }

    /// Whether `ip` was handed over for (at least) `targets` within the window.
    fn seen(&self, ip: IpAddr, targets: TargetSet, now: Instant) -> bool {
        let slots = self.slots.lock().expect("the recent filter is never held across a panic");
        matches!(slots[Self::slot(&ip)], Some((seen, for_targets, at))
            if seen == ip && targets.is_subset(&for_targets) && now.duration_since(at) < RECENT_WINDOW)
    }

    fn remember(&self, ip: IpAddr, targets: TargetSet, now: Instant) {
        let mut slots = self.slots.lock().expect("the recent filter is never held across a panic");
        slots[Self::slot(&ip)] = Some((ip, targets, now));
    }
}

impl Ingest {
    pub fn new(
        triggers: Triggers,
        claims: Claims,
        never_block: NeverBlock,
        allowed_senders: Vec<IpNet>,
        metrics: Arc<Metrics>,
        out: mpsc::Sender<Candidate>,
    ) -> Self {
        Ingest {
            triggers,
            claims,
            never_block,
            allowed_senders,
            metrics,
            out,
            recent: Recent::new(),
            feed_events: None,
        }
    }

    /// Hands the FortiGate's threat-feed events to `events` (without waiting: a full queue drops the event, the
    /// entry-list status poll covers for it).
    pub fn with_feed_events(mut self, events: mpsc::Sender<FeedEvent>) -> Self {
        self.feed_events = Some(events);
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether `peer` may send logs (an empty allowlist allows everyone). Counts a refusal.
    pub fn sender_allowed(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        let ok = self.allowed_senders.is_empty() || self.allowed_senders.iter().any(|n| n.contains(&peer));
        if !ok {
            Metrics::inc(&self.metrics.dropped, "sender_not_allowed");
        }
        ok
    }

    /// Parses one message and applies the trigger rules and the never-block list. Counts what it drops.
    pub fn evaluate(&self, message: &[u8]) -> Evaluation {
        let record = match syslog::parse(message) {
            Ok(record) => record,
            Err(error) => {
                Metrics::inc(&self.metrics.parse_errors, error.kind.as_str());
                return Evaluation::Unparsed(error.kind);
            }
        };
        if let Some(events) = &self.feed_events {
            if let Some(event) = fortimisp_core::feed::event::of(&record) {
                let _ = events.try_send(event);
            }
        }
        let facts = LineFacts::of(&record);
        let Some(rule) = self.triggers.first_match(&facts) else {
            self.metrics.untriggered.inc();
            return Evaluation::Untriggered;
        };
        self.metrics.triggered.inc();
        let targets = self.claims.of(record.devid(), record.devname(), record.vd());
        if targets.is_empty() {
            Metrics::inc(&self.metrics.dropped, "unclaimed_device");
            return Evaluation::Unclaimed;
        }
        let mut ips = [None, None];
        for (slot, ip) in ips.iter_mut().zip(self.triggers.targets(&facts).iter()) {
            match self.never_block.check(ip) {
                Some(protected) => {
                    Metrics::inc(&self.metrics.candidates, "never_block");
                    debug!(message = "Address is protected, not looked up.", %ip, %protected);
                }
                None => *slot = Some(ip),
            }
        }
        Evaluation::Triggered { rule, ips, targets }
    }

    /// UDP path: evaluate and hand over without waiting. A full queue drops the candidate and counts it.
    pub fn offer_nowait(&self, message: &[u8], received: Instant) {
        if let Evaluation::Triggered { rule, ips, targets } = self.evaluate(message) {
            for ip in ips.into_iter().flatten() {
                if self.recent.seen(ip, targets, received) {
                    Metrics::inc(&self.metrics.candidates, "recent");
                    continue;
                }
                match self.out.try_send(Candidate { ip, rule, received, targets }) {
                    Ok(()) => self.recent.remember(ip, targets, received),
                    Err(_) => Metrics::inc(&self.metrics.candidates, "queue_full"),
                }
            }
        }
    }

    /// TCP/TLS path: evaluate and wait for room in the next stage (back-pressure on the sender).
    /// Returns `false` once the next stage is gone (shutdown).
    pub async fn offer(&self, message: &[u8], received: Instant) -> bool {
        if let Evaluation::Triggered { rule, ips, targets } = self.evaluate(message) {
            for ip in ips.into_iter().flatten() {
                if self.out.send(Candidate { ip, rule, received, targets }).await.is_err() {
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::config::{Check, Scope, TriggerRule};

    fn ingest(rules: Vec<TriggerRule>, never: &[&str], allowed: &[&str]) -> (Ingest, mpsc::Receiver<Candidate>) {
        let (tx, rx) = mpsc::channel(2);
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        let ingest = Ingest::new(
            Triggers::new(rules),
            Claims::new([(&[][..], &[][..])], Scope::Origin),
            NeverBlock::new(nets(never)),
            nets(allowed),
            Arc::new(Metrics::new()),
            tx,
        );
        (ingest, rx)
    }

    fn rule7(check: Check) -> TriggerRule {
        TriggerRule {
            policy_id: Some(7),
            action: Some(["accept"].into_iter().collect()),
            check,
            ..TriggerRule::default()
        }
    }

    const LINE: &[u8] = br#"<189>date=2024-05-01 time=10:00:00 devname="fw1" type="traffic" subtype="forward" srcip=198.51.100.7 dstip=10.0.0.5 srcintf="wan1" policyid=7 action="accept""#;

    #[test]
    fn evaluation_table() {
        let (ing, _rx) = ingest(vec![rule7(Check::Both)], &["203.0.113.0/24"], &[]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let one = TargetSet::single(0);
        let cases: Vec<(Vec<u8>, Evaluation)> = vec![
            (LINE.to_vec(), Evaluation::Triggered { rule: 0, ips: [ip("198.51.100.7"), None], targets: one }),
            (
                String::from_utf8_lossy(LINE).replace("dstip=10.0.0.5", "dstip=192.0.2.9").into_bytes(),
                Evaluation::Triggered { rule: 0, ips: [ip("198.51.100.7"), ip("192.0.2.9")], targets: one },
            ),
            (
                String::from_utf8_lossy(LINE).replace("srcip=198.51.100.7", "srcip=203.0.113.5").into_bytes(),
                Evaluation::Triggered { rule: 0, ips: [None, None], targets: one },
            ),
            (String::from_utf8_lossy(LINE).replace("policyid=7", "policyid=8").into_bytes(), Evaluation::Untriggered),
        ];
        for (line, expected) in cases {
            assert_eq!(ing.evaluate(&line), expected, "{}", String::from_utf8_lossy(&line));
        }
        assert!(matches!(ing.evaluate(b"\x00\xff garbage"), Evaluation::Unparsed(_)));
        assert_eq!(ing.metrics().untriggered.get(), 1);
        assert_eq!(Metrics::count(&ing.metrics().candidates, "never_block"), 3, "10.0.0.5 twice and 203.0.113.5");
    }

    /// A line is handed over for the targets claiming its device; a device nobody claims is counted and dropped;
    /// the one-second filter does not hide a second device's line for the same address.
    #[tokio::test(start_paused = true)]
    async fn lines_go_to_the_targets_that_claim_their_device() {
        let (tx, mut rx) = mpsc::channel(8);
        let devices = [vec!["fw1".to_string()], vec!["FGT-B".to_string()]];
        let claims = Claims::new(devices.iter().map(|d| (d.as_slice(), &[][..])), Scope::Origin);
        let ing = Ingest::new(
            Triggers::new(vec![rule7(Check::Src)]),
            claims,
            NeverBlock::new(vec![]),
            vec![],
            Arc::new(Metrics::new()),
            tx,
        );
        let from = |dev: &str| String::from_utf8_lossy(LINE).replace("devname=\"fw1\"", &format!("devname=\"{dev}\""));
        ing.offer_nowait(from("fw1").as_bytes(), Instant::now());
        ing.offer_nowait(from("FGT-B").as_bytes(), Instant::now());
        ing.offer_nowait(from("FGT-B").as_bytes(), Instant::now());
        ing.offer_nowait(from("FGT-Z").as_bytes(), Instant::now());
        assert_eq!(rx.try_recv().unwrap().targets, TargetSet::single(0));
        assert_eq!(rx.try_recv().unwrap().targets, TargetSet::single(1), "B's line is not hidden by A's");
        assert!(rx.try_recv().is_err(), "B's repeat is, and Z's line is dropped");
        assert_eq!(Metrics::count(&ing.metrics().dropped, "unclaimed_device"), 1);
    }

    #[test]
    fn allowlist() {
        let (ing, _rx) = ingest(vec![], &[], &["192.0.2.0/24", "2001:db8::/32"]);
        assert!(ing.sender_allowed("192.0.2.10".parse().unwrap()));
        assert!(ing.sender_allowed("::ffff:192.0.2.10".parse().unwrap()));
        assert!(ing.sender_allowed("2001:db8::1".parse().unwrap()));
        assert!(!ing.sender_allowed("198.51.100.1".parse().unwrap()));
        assert_eq!(Metrics::count(&ing.metrics().dropped, "sender_not_allowed"), 1);
        let (open, _rx) = ingest(vec![], &[], &[]);
        assert!(open.sender_allowed("198.51.100.1".parse().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_a_second_are_handed_over_once() {
        let (ing, mut rx) = ingest(vec![rule7(Check::Src)], &[], &[]);
        for _ in 0..100 {
            ing.offer_nowait(LINE, Instant::now());
        }
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "one candidate for 100 lines");
        assert_eq!(Metrics::count(&ing.metrics().candidates, "recent"), 99);
        tokio::time::advance(RECENT_WINDOW).await;
        ing.offer_nowait(LINE, Instant::now());
        assert!(rx.try_recv().is_ok(), "offered again once the window passed");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (ing, mut rx) = ingest(vec![rule7(Check::Src)], &[], &[]);
        let line =
            |i: u8| String::from_utf8_lossy(LINE).replace("198.51.100.7", &format!("198.51.100.{i}")).into_bytes();
        for i in 1..=5 {
            ing.offer_nowait(&line(i), Instant::now());
        }
        assert_eq!(Metrics::count(&ing.metrics().candidates, "queue_full"), 3);
        assert_eq!(rx.recv().await.map(|c| c.ip), Some("198.51.100.1".parse().unwrap()));
        // A dropped candidate is not remembered: its next line gets through.
        ing.offer_nowait(&line(5), Instant::now());
        assert_eq!(Metrics::count(&ing.metrics().candidates, "queue_full"), 3);
    }
}
