//! The decision stage: one task that owns what the daemon knows about each candidate address and turns
//! candidates into block requests.
//!
//! Input: [`Candidate`]s from the listeners (a triggering line's address, already past the never-block check).
//! Output: [`BlockRequest`]s to the blocker. In between, for each address:
//!
//! 1. Dedup: an address already blocked, being blocked, being looked up, or recently found clean is dropped here
//!    and costs no lookup and no API call ([`IpState`]).
//! 2. Local mirror: when the mirror has completed a sync it answers hits and misses itself.
//! 3. Otherwise an on-demand MISP lookup: addresses are batched (up to `batch_size`, or after `linger`), one
//!    request in flight per address, answers (hits and misses) cached for `lookup_cache_ttl`.
//!
//! Design decision: the state lives in this one task, not behind a lock; lookups run in spawned tasks that report
//! back on a channel. Single ownership gives single-flight per address for free and keeps the hot path lock-free
//! but for the read lock on the mirror.
//!
//! Memory is bounded: the state map holds at most `max_tracked` addresses; beyond that, expired and then clean
//! entries are evicted (counted), never pending ones.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fortimisp_core::indicators::{Hit, IndicatorSet};
use fortimisp_core::metrics::Metrics;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A triggering line's address, on its way to a decision.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub ip: IpAddr,
    /// Index of the `[[trigger]]` rule that matched.
    pub rule: usize,
    /// When the line was received (for block latency).
    pub received: Instant,
}

/// A decision to block, sent to the blocker.
#[derive(Debug, Clone)]
pub struct BlockRequest {
    pub ip: IpAddr,
    pub hit: Hit,
    pub rule: Option<usize>,
    pub received: Instant,
    /// Free text added to the comment (`block --comment`).
    pub note: Option<String>,
}

/// An on-demand lookup of many addresses at once. Returns the hits; an address not returned is clean.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, ips: Vec<IpAddr>) -> impl Future<Output = Result<Vec<(IpAddr, Hit)>, String>> + Send;
}

/// The mirror shared with the sync task: `None` until the first full sync has completed.
pub type SharedMirror = Arc<RwLock<Option<IndicatorSet>>>;

/// What the decision stage knows about one address.
#[derive(Debug, Clone, Copy)]
enum IpState {
    /// Blocked (or its block is queued); rechecked after `until` so a block housekeeping removed can return.
    Blocked { until: Instant },
    /// A lookup for it is in flight; further lines for it wait for that answer.
    InFlight,
    /// MISP does not list it (or not as blocking), as of `until - ttl`.
    Clean { until: Instant },
}

/// Tuning of the decision stage.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache_ttl: Duration,
    /// Addresses per on-demand MISP request.
    pub batch_size: usize,
    /// How long a partial batch waits for company before it is sent.
    pub linger: Duration,
    /// On-demand requests in flight at once.
    pub max_concurrent_lookups: usize,
    /// Addresses tracked at most (memory bound).
    pub max_tracked: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_ttl: Duration::from_secs(600),
            batch_size: 200,
            linger: Duration::from_millis(20),
            max_concurrent_lookups: 4,
            max_tracked: 1_000_000,
        }
    }
}

/// Answer of one on-demand batch, sent back to the decision task.
struct BatchAnswer {
    batch: Vec<(IpAddr, Candidate)>,
    result: Result<Vec<(IpAddr, Hit)>, String>,
}

/// The decision task. Build with [`Decider::new`], then [`Decider::run`].
pub struct Decider<L: Lookup> {
    settings: Settings,
    mirror: SharedMirror,
    lookup: Arc<L>,
    metrics: Arc<Metrics>,
    state: HashMap<IpAddr, IpState>,
    batch: Vec<(IpAddr, Candidate)>,
    batch_started: Option<Instant>,
    permits: Arc<Semaphore>,
}

impl<L: Lookup> Decider<L> {
    pub fn new(settings: Settings, mirror: SharedMirror, lookup: Arc<L>, metrics: Arc<Metrics>) -> Self {
        let permits = Arc::new(Semaphore::new(settings.max_concurrent_lookups.max(1)));
        Decider {
            settings,
            mirror,
            lookup,
            metrics,
            state: HashMap::new(),
            batch: Vec::new(),
            batch_started: None,
            permits,
        }
    }

    /// Marks addresses already blocked on the FortiGate (read at start), so they cost nothing.
    pub fn seed_blocked(&mut self, ips: impl IntoIterator<Item = IpAddr>) {
        let until = Instant::now() + self.settings.cache_ttl;
        for ip in ips {
            self.state.insert(ip, IpState::Blocked { until });
        }
    }

    /// Runs until `input` is closed or `shutdown` fires; then flushes what it holds and returns.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<Candidate>,
        output: mpsc::Sender<BlockRequest>,
        shutdown: CancellationToken,
    ) {
        // Answers come back from at most `max_concurrent_lookups` tasks: bounded by the semaphore.
        let (answers_tx, mut answers) = mpsc::channel::<BatchAnswer>(self.settings.max_concurrent_lookups.max(1) * 2);
        let mut in_flight = 0usize;
        loop {
            let linger_deadline = self.batch_started.map(|t| t + self.settings.linger);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(answer) = answers.recv() => {
                    in_flight -= 1;
                    self.on_answer(answer, &output).await;
                }
                candidate = input.recv() => match candidate {
                    Some(c) => {
                        self.metrics.queue_depth.get_or_create(&fortimisp_core::metrics::Stage { stage: "decide" })
                            .set(input.len() as i64);
                        self.on_candidate(c, &output).await;
                        if self.batch.len() >= self.settings.batch_size {
                            in_flight += self.flush(&answers_tx);
                        }
                    }
                    None => break,
                },
                _ = sleep_until_opt(linger_deadline) => {
                    in_flight += self.flush(&answers_tx);
                }
            }
        }
        // Drain: send what is batched and wait (bounded by the caller's shutdown timeout) for the answers, so a
        // hit found during shutdown still reaches the blocker (which journals it).
        in_flight += self.flush(&answers_tx);
        drop(answers_tx);
        while in_flight > 0 {
            match answers.recv().await {
                Some(answer) => {
                    in_flight -= 1;
                    self.on_answer(answer, &output).await;
                }
                None => break,
            }
        }
    }

    async fn on_candidate(&mut self, c: Candidate, output: &mpsc::Sender<BlockRequest>) {
        let now = Instant::now();
        match self.state.get(&c.ip) {
            Some(IpState::Blocked { until }) if *until > now => {
                Metrics::inc(&self.metrics.candidates, "known_blocked");
                return;
            }
            Some(IpState::InFlight) => {
                Metrics::inc(&self.metrics.candidates, "in_flight");
                return;
            }
            Some(IpState::Clean { until }) if *until > now => {
                Metrics::inc(&self.metrics.candidates, "known_clean");
                Metrics::inc(&self.metrics.lookups, "cache_hit");
                return;
            }
            _ => {}
        }
        // The mirror, when it has completed a sync, is authoritative for hits and misses.
        let mirror_answer = {
            let guard = self.mirror.read().expect("mirror lock is never held across a panic");
            guard.as_ref().map(|set| set.lookup(c.ip))
        };
        match mirror_answer {
            Some(Some(hit)) => {
                Metrics::inc(&self.metrics.lookups, "mirror_hit");
                Metrics::inc(&self.metrics.candidates, "mirror");
                self.decide_block(c, hit, output).await;
            }
            Some(None) => {
                // Not cached: the mirror answers again in well under a microsecond, and caching every clean
                // address of a flood would only cost memory.
                Metrics::inc(&self.metrics.lookups, "mirror_miss");
                Metrics::inc(&self.metrics.candidates, "mirror");
                self.state.remove(&c.ip);
            }
            None => {
                Metrics::inc(&self.metrics.lookups, "cache_miss");
                Metrics::inc(&self.metrics.candidates, "queued");
                self.track(c.ip, IpState::InFlight);
                if self.batch.is_empty() {
                    self.batch_started = Some(now);
                }
                self.batch.push((c.ip, c));
            }
        }
    }

    async fn decide_block(&mut self, c: Candidate, hit: Hit, output: &mpsc::Sender<BlockRequest>) {
        self.track(c.ip, IpState::Blocked { until: Instant::now() + self.settings.cache_ttl });
        let request = BlockRequest { ip: c.ip, hit, rule: Some(c.rule), received: c.received, note: None };
        if output.send(request).await.is_err() {
            warn!(message = "Blocker is gone; block request not delivered.", ip = %c.ip);
        }
    }

    /// Sends the current batch to MISP in a task of its own. Returns how many tasks were started (0 or 1).
    fn flush(&mut self, answers: &mpsc::Sender<BatchAnswer>) -> usize {
        self.batch_started = None;
        if self.batch.is_empty() {
            return 0;
        }
        let batch = std::mem::take(&mut self.batch);
        let lookup = self.lookup.clone();
        let permits = self.permits.clone();
        let answers = answers.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let ips: Vec<IpAddr> = batch.iter().map(|(ip, _)| *ip).collect();
            metrics.misp_lookup_requests.inc();
            let started = std::time::Instant::now();
            let result = lookup.lookup(ips).await;
            metrics.observe_request("misp", result.is_ok(), started.elapsed());
            // The receiver lives as long as the decision task, which waits for every answer.
            let _ = answers.send(BatchAnswer { batch, result }).await;
        });
        1
    }

    async fn on_answer(&mut self, answer: BatchAnswer, output: &mpsc::Sender<BlockRequest>) {
        match answer.result {
            Ok(hits) => {
                let hits: HashMap<IpAddr, Hit> = hits.into_iter().collect();
                let until = Instant::now() + self.settings.cache_ttl;
                for (ip, candidate) in answer.batch {
                    match hits.get(&ip) {
                        Some(hit) => {
                            Metrics::inc(&self.metrics.lookups, "misp_hit");
                            self.decide_block(candidate, *hit, output).await;
                        }
                        None => {
                            Metrics::inc(&self.metrics.lookups, "misp_miss");
                            self.track(ip, IpState::Clean { until });
                        }
                    }
                }
            }
            Err(error) => {
                // The client already retried with backoff. Forget the addresses so the next line for them asks
                // again: nothing is cached from a failed lookup.
                warn!(message = "MISP lookup failed; addresses will be looked up again on their next line.", %error,
                      addresses = answer.batch.len());
                for (ip, _) in answer.batch {
                    Metrics::inc(&self.metrics.lookups, "misp_error");
                    self.state.remove(&ip);
                }
            }
        }
    }

    fn track(&mut self, ip: IpAddr, state: IpState) {
        if self.state.len() >= self.settings.max_tracked && !self.state.contains_key(&ip) {
            self.evict();
        }
        self.state.insert(ip, state);
    }

    /// Frees room: expired entries first, then clean ones. In-flight and blocked entries stay.
    fn evict(&mut self) {
        let now = Instant::now();
        let before = self.state.len();
        self.state.retain(|_, s| match s {
            IpState::Blocked { until } | IpState::Clean { until } => *until > now,
            IpState::InFlight => true,
        });
        if self.state.len() >= self.settings.max_tracked {
            self.state.retain(|_, s| !matches!(s, IpState::Clean { .. }));
        }
        let evicted = before - self.state.len();
        debug!(message = "Evicted tracked addresses.", evicted);
        self.metrics
            .candidates
            .get_or_create(&fortimisp_core::metrics::Outcome { outcome: "evicted" })
            .inc_by(evicted as u64);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::indicators::Entry;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A MISP stand-in: knows a fixed set of hits, records every batch it is asked.
    #[derive(Default)]
    struct FakeLookup {
        hits: HashMap<IpAddr, Hit>,
        calls: Mutex<Vec<Vec<IpAddr>>>,
        fail: AtomicUsize,
        /// Every lookup fails until then (an outage).
        down_until: Mutex<Option<Instant>>,
    }

    impl Lookup for FakeLookup {
        async fn lookup(&self, ips: Vec<IpAddr>) -> Result<Vec<(IpAddr, Hit)>, String> {
            self.calls.lock().unwrap().push(ips.clone());
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down_until.lock().unwrap().is_some_and(|until| Instant::now() < until) {
                return Err("MISP unreachable".into());
            }
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err("MISP down".into());
            }
            Ok(ips.into_iter().filter_map(|ip| self.hits.get(&ip).map(|h| (ip, *h))).collect())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hit(net: &str, event_id: u64) -> Hit {
        Hit { network: net.parse().unwrap(), entry: Entry { event_id, uuid: event_id as u128 } }
    }

    fn candidate(s: &str) -> Candidate {
        Candidate { ip: ip(s), rule: 0, received: Instant::now() }
    }

    struct Rig {
        input: mpsc::Sender<Candidate>,
        output: mpsc::Receiver<BlockRequest>,
        lookup: Arc<FakeLookup>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(mirror: Option<IndicatorSet>, lookup: FakeLookup, settings: Settings) -> Rig {
        let lookup = Arc::new(lookup);
        let metrics = Arc::new(Metrics::new());
        let decider = Decider::new(settings, Arc::new(RwLock::new(mirror)), lookup.clone(), metrics.clone());
        let (input, rx) = mpsc::channel(1024);
        let (tx, output) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(decider.run(rx, tx, shutdown.clone()));
        Rig { input, output, lookup, metrics, shutdown, task }
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_of_one_address_cost_one_lookup_and_one_block() {
        let mut lookup = FakeLookup::default();
        lookup.hits.insert(ip("198.51.100.7"), hit("198.51.100.7/32", 42));
        let mut rig = start(None, lookup, Settings::default());
        for _ in 0..200 {
            rig.input.send(candidate("198.51.100.7")).await.unwrap();
            rig.input.send(candidate("198.51.100.8")).await.unwrap();
        }
        let request = rig.output.recv().await.unwrap();
        assert_eq!(request.ip, ip("198.51.100.7"));
        assert_eq!(request.hit.entry.event_id, 42);
        // More repeats after the answer: still nothing new.
        for _ in 0..50 {
            rig.input.send(candidate("198.51.100.7")).await.unwrap();
            rig.input.send(candidate("198.51.100.8")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rig.output.try_recv().is_err(), "one block request only");
        let calls = rig.lookup.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "one MISP request for the batch: {calls:?}");
        assert_eq!(calls[0].len(), 2);
        assert_eq!(Metrics::count(&rig.metrics.lookups, "misp_miss"), 1);
        rig.shutdown.cancel();
        rig.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_expire_after_the_ttl() {
        let settings = Settings { cache_ttl: Duration::from_secs(60), ..Settings::default() };
        let rig = start(None, FakeLookup::default(), settings);
        rig.input.send(candidate("203.0.113.1")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.input.send(candidate("203.0.113.1")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rig.lookup.calls.lock().unwrap().len(), 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        rig.input.send(candidate("203.0.113.1")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rig.lookup.calls.lock().unwrap().len(), 2, "asked again after the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_lookups_are_not_cached() {
        let lookup = FakeLookup { fail: AtomicUsize::new(1), ..FakeLookup::default() };
        let rig = start(None, lookup, Settings::default());
        rig.input.send(candidate("203.0.113.2")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        rig.input.send(candidate("203.0.113.2")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rig.lookup.calls.lock().unwrap().len(), 2);
        assert_eq!(Metrics::count(&rig.metrics.lookups, "misp_error"), 1);
        assert_eq!(Metrics::count(&rig.metrics.lookups, "misp_miss"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_synced_mirror_answers_without_misp() {
        let mut set = IndicatorSet::new(16, 48);
        set.insert("198.51.100.0/24".parse().unwrap(), Entry { event_id: 9, uuid: 1 });
        let mut rig = start(Some(set), FakeLookup::default(), Settings::default());
        rig.input.send(candidate("198.51.100.77")).await.unwrap();
        rig.input.send(candidate("192.0.2.1")).await.unwrap();
        let request = rig.output.recv().await.unwrap();
        assert_eq!(request.ip, ip("198.51.100.77"), "the observed IP is blocked, not the range");
        assert_eq!(request.hit.network.to_string(), "198.51.100.0/24");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rig.lookup.calls.lock().unwrap().is_empty());
        assert_eq!(Metrics::count(&rig.metrics.lookups, "mirror_miss"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_a_flood_of_distinct_addresses() {
        let settings = Settings { max_tracked: 100, cache_ttl: Duration::from_secs(3600), ..Settings::default() };
        let rig = start(None, FakeLookup::default(), settings);
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0xC633_6400u32 + i);
            rig.input.send(Candidate { ip: IpAddr::V4(a), rule: 0, received: Instant::now() }).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let evicted =
            rig.metrics.candidates.get_or_create(&fortimisp_core::metrics::Outcome { outcome: "evicted" }).get();
        assert!(evicted > 0, "clean entries were evicted to stay under max_tracked");
    }

    /// Issue 8's "MISP down for 2 minutes mid-run", in paused time: the FortiGate logs the address every 10 s;
    /// during the outage each line costs one failed lookup (nothing cached, nothing blocked, no pile-up of
    /// requests), and the first line after it blocks.
    #[tokio::test(start_paused = true)]
    async fn a_two_minute_misp_outage_loses_no_block() {
        let mut lookup = FakeLookup::default();
        lookup.hits.insert(ip("198.51.100.7"), hit("198.51.100.7/32", 7));
        *lookup.down_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(120));
        let mut rig = start(None, lookup, Settings::default());
        let mut lines = 0;
        while rig.output.try_recv().is_err() {
            assert!(lines < 20, "no block 70 s after the outage ended");
            rig.input.send(candidate("198.51.100.7")).await.unwrap();
            rig.input.send(candidate("198.51.100.8")).await.unwrap();
            lines += 1;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // Lines at 0, 10, ..., 110 s fail (12), the one at 120 s blocks.
        assert_eq!(lines, 13, "the first line after the outage blocks");
        let calls = rig.lookup.calls.lock().unwrap().len();
        assert_eq!(calls, 13, "one request per line, no retry storm");
        assert_eq!(Metrics::count(&rig.metrics.lookups, "misp_error"), 24);
        // The clean address is cached once MISP answers again.
        rig.input.send(candidate("198.51.100.8")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rig.lookup.calls.lock().unwrap().len(), 13);
        rig.shutdown.cancel();
        rig.task.await.unwrap();
    }
}
