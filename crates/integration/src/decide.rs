//! The decision stage: one task that owns what the daemon knows about each candidate address and turns
//! candidates into block requests.
//!
//! Input: [`Candidate`]s from the listeners (a triggering line's address, already past the never-block check).
//! Output: [`BlockRequest`]s to the blocker. In between, for each address:
//!
//! 1. Dedup: an address already blocked, being blocked, being looked up, or recently found clean is dropped here
//!    and costs no lookup and no API call ([`IpState`]). With a fleet, each candidate names the targets that act
//!    on its line; the decision is made once per address, whatever the targets: an address blocked on A that
//!    shows up in B's logs is blocked on B with the hit already known (no second lookup), and the targets of the
//!    lines that arrive while a lookup is pending are gathered into its one answer.
//! 2. Local mirror: when the mirror has completed a sync it answers hits and misses itself.
//! 3. Otherwise an on-demand MISP lookup: the address waits in [`Waiting`] until a batch is sent, one request in
//!    flight per address, answers (hits and misses) cached for `lookup_cache_ttl`.
//!
//! Design decision: the state lives in this one task, not behind a lock; lookups run in spawned tasks that report
//! back on a channel. Single ownership gives single-flight per address for free and keeps the hot path lock-free
//! but for the read lock on the mirror.
//!
//! Under a backlog (no mirror yet, or `sync_interval = "0s"`, and more new addresses than MISP answers):
//! - A lookup task is spawned only once it holds one of the `max_concurrent_lookups` permits; the addresses wait
//!   here, not in tasks queued on a semaphore.
//! - A batch takes everything waiting, up to `max_batch` (one restSearch), so batches grow with the backlog. Below
//!   `batch_size` waiting, a batch lingers for `linger` to gather company.
//! - An address seen again while it waits goes ahead of every first sighting: a scan sends each source once, an
//!   attacker keeps coming back.
//! - At most `max_waiting` addresses wait. Beyond that the oldest first sightings are shed (counted in
//!   `fortimisp_lookups_shed_total`) and forgotten, not cached: a shed address is asked again on its next line.
//!
//! Memory is bounded: the state map holds at most `max_tracked` addresses; beyond that, expired and then clean
//! entries are evicted (counted), never pending ones, and a new address that still finds no room is shed. Only a
//! block decided by the mirror is recorded regardless, so that no block is lost.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fortimisp_core::fleet::TargetSet;
use fortimisp_core::indicators::{Hit, IndicatorSet};
use fortimisp_core::metrics::Metrics;
use fortimisp_core::misp;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
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
    /// The targets that act on the line (`blocking.scope`).
    pub targets: TargetSet,
}

/// A decision to block, sent to the blocker (which fans it out to each target's own blocker).
#[derive(Debug, Clone)]
pub struct BlockRequest {
    pub ip: IpAddr,
    /// The targets to block it on.
    pub targets: TargetSet,
    pub hit: Hit,
    pub rule: Option<usize>,
    pub received: Instant,
    /// Free text added to the comment (`block --comment`).
    pub note: Option<String>,
}

/// Why an on-demand lookup has no answer. Nothing is cached from it: the addresses are asked again on their next
/// line.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// MISP did not answer the restSearch, after the client's retries.
    #[error("misp lookup failed: {0}")]
    Misp(#[from] misp::Error),
}

/// An on-demand lookup of many addresses at once. Returns the hits; an address not returned is clean.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, ips: Vec<IpAddr>) -> impl Future<Output = Result<Vec<(IpAddr, Hit)>, LookupError>> + Send;
}

/// The mirror shared with the sync task: `None` until the first full sync has completed.
pub type SharedMirror = Arc<RwLock<Option<IndicatorSet>>>;

/// What the decision stage knows about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IpState {
    /// Blocked (or its block is queued) on some targets; rechecked after `until` so a block housekeeping removed
    /// can return. Boxed: rarer than the other states, and bigger.
    Blocked(Box<Blocked>),
    /// Waiting in [`Waiting`] for a lookup since its first line was received, for `targets` (the union of its
    /// lines' targets). `repeated`: a later line came meanwhile, so it waits in the queue that goes first.
    Waiting { since: Instant, repeated: bool, targets: TargetSet },
    /// A lookup for it is in flight; further lines for it wait for that answer, adding their targets.
    InFlight { targets: TargetSet },
    /// MISP does not list it (or not as blocking), as of `until - ttl`.
    Clean { until: Instant },
}

/// What the decision stage knows about a blocked address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blocked {
    until: Instant,
    /// The targets it is blocked on (or queued for).
    on: TargetSet,
    /// The indicator that decided it; `None` for a block read from a FortiGate at start (a line from another
    /// target then goes through a lookup).
    hit: Option<Hit>,
}

impl IpState {
    fn blocked(until: Instant, on: TargetSet, hit: Option<Hit>) -> IpState {
        IpState::Blocked(Box::new(Blocked { until, on, hit }))
    }
}

/// Tuning of the decision stage.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache_ttl: Duration,
    /// Addresses waiting that make a batch worth sending at once; fewer wait up to `linger` for company.
    pub batch_size: usize,
    /// Addresses per on-demand MISP request at most: under a backlog a batch takes this many (one restSearch).
    pub max_batch: usize,
    /// How long a partial batch waits for company before it is sent.
    pub linger: Duration,
    /// On-demand requests in flight at once (permits; a lookup task is spawned holding one).
    pub max_concurrent_lookups: usize,
    /// Addresses waiting for a lookup at most. When full, the oldest first sighting is shed for a new one.
    pub max_waiting: usize,
    /// Addresses tracked at most (memory bound). Must exceed `max_waiting` plus the addresses in flight
    /// (`max_concurrent_lookups × max_batch`), which are never evicted.
    pub max_tracked: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_ttl: Duration::from_secs(600),
            batch_size: 200,
            max_batch: misp::client::MAX_VALUES_PER_SEARCH,
            linger: Duration::from_millis(20),
            max_concurrent_lookups: 4,
            // 5 s of a 20 000 new sources a second scan; about 10 MiB with the state entries.
            max_waiting: 100_000,
            max_tracked: 1_000_000,
        }
    }
}

/// Answer of one on-demand batch, sent back to the decision task.
struct BatchAnswer {
    batch: Vec<Candidate>,
    result: Result<Vec<(IpAddr, Hit)>, LookupError>,
}

/// Addresses waiting for an on-demand lookup, in two queues. An entry is current while the address's state is
/// `Waiting` with the matching `repeated`; entries left behind by a move to `repeated` are skipped when reached
/// (and dropped when `first` outgrows twice the bound).
#[derive(Default)]
struct Waiting {
    /// First sightings, oldest first: sent in this order, and shed from the front when full.
    first: VecDeque<Candidate>,
    /// Addresses seen again while they waited: sent before any first sighting, never shed for a new address.
    repeated: VecDeque<Candidate>,
    /// Distinct addresses waiting (current entries of both queues).
    len: usize,
}

/// The decision task. Build with [`Decider::new`], then [`Decider::run`].
pub struct Decider<L: Lookup> {
    settings: Settings,
    mirror: SharedMirror,
    lookup: Arc<L>,
    metrics: Arc<Metrics>,
    state: HashMap<IpAddr, IpState>,
    waiting: Waiting,
    /// When the waiting queue last went from empty to not empty (start of the linger).
    waiting_since: Option<Instant>,
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
            waiting: Waiting::default(),
            waiting_since: None,
            permits,
        }
    }

    /// Marks addresses already blocked on a target's FortiGate (read at start), so they cost nothing.
    pub fn seed_blocked(&mut self, target: usize, ips: impl IntoIterator<Item = IpAddr>) {
        let until = Instant::now() + self.settings.cache_ttl;
        for ip in ips {
            match self.state.get_mut(&ip) {
                Some(IpState::Blocked(b)) => b.on.insert(target),
                _ => {
                    self.state.insert(ip, IpState::blocked(until, TargetSet::single(target), None));
                }
            }
        }
    }

    /// Runs until `input` is closed or `shutdown` fires; then sends one more round of batches (as many as there are
    /// free permits), waits for every lookup in flight and returns. Addresses still waiting then are dropped: they
    /// are asked again on their next line.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<Candidate>,
        output: mpsc::Sender<BlockRequest>,
        shutdown: CancellationToken,
    ) {
        // A task gives its permit back before it sends its answer, and answers are taken before new candidates
        // (`biased`): at most `max_concurrent_lookups` tasks hold a permit, and one waiting to send holds none.
        let (answers_tx, mut answers) = mpsc::channel::<BatchAnswer>(self.settings.max_concurrent_lookups.max(1) * 2);
        let mut in_flight = 0usize;
        loop {
            let linger_deadline = self.linger_deadline();
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
                    }
                    None => break,
                },
                _ = sleep_until_opt(linger_deadline) => {}
            }
            in_flight += self.dispatch(&answers_tx, false);
            self.report();
        }
        // Drain: send what the free permits allow and wait (bounded by the caller's shutdown timeout) for the
        // answers, so a hit found during shutdown still reaches the blocker (which journals it).
        in_flight += self.dispatch(&answers_tx, true);
        if self.waiting.len > 0 {
            debug!(
                message = "Addresses still waiting for a lookup at shutdown are dropped.",
                addresses = self.waiting.len
            );
        }
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
        self.report();
    }

    /// When the linger of a partial batch ends, if a permit is free to send it then (no timer otherwise: the
    /// answer that frees a permit wakes the task).
    fn linger_deadline(&self) -> Option<Instant> {
        if self.waiting.len == 0 || self.permits.available_permits() == 0 {
            return None;
        }
        self.waiting_since.map(|t| t + self.settings.linger)
    }

    fn report(&self) {
        self.metrics.lookup_waiting.set(self.waiting.len as i64);
        self.metrics.decide_tracked.set(self.state.len() as i64);
    }

    async fn on_candidate(&mut self, c: Candidate, output: &mpsc::Sender<BlockRequest>) {
        let now = Instant::now();
        match self.state.get_mut(&c.ip) {
            Some(IpState::Blocked(b)) if b.until > now => {
                let new = c.targets.minus(b.on);
                match b.hit {
                    _ if new.is_empty() => Metrics::inc(&self.metrics.candidates, "known_blocked"),
                    Some(hit) => {
                        // Known to MISP already: block on the new targets with the same hit, no second lookup.
                        b.on = b.on.union(new);
                        Metrics::inc(&self.metrics.candidates, "new_target");
                        self.send(BlockRequest { targets: new, ..request(&c, hit) }, output).await;
                    }
                    None => {
                        // Read from a FortiGate at start, not decided here: look it up for the new targets.
                        self.state.remove(&c.ip);
                        Metrics::inc(&self.metrics.lookups, "cache_miss");
                        self.decide_fresh(Candidate { targets: new, ..c }, now, output).await;
                    }
                }
                return;
            }
            Some(IpState::InFlight { targets }) => {
                *targets = targets.union(c.targets);
                Metrics::inc(&self.metrics.candidates, "in_flight");
                return;
            }
            Some(IpState::Waiting { since, repeated: repeated @ false, targets }) => {
                Metrics::inc(&self.metrics.candidates, "repeated");
                *repeated = true;
                *targets = targets.union(c.targets);
                let since = *since;
                self.waiting.repeated.push_back(Candidate { received: since, ..c });
                return;
            }
            Some(IpState::Waiting { repeated: true, targets, .. }) => {
                *targets = targets.union(c.targets);
                Metrics::inc(&self.metrics.candidates, "waiting");
                return;
            }
            Some(IpState::Clean { until }) if *until > now => {
                Metrics::inc(&self.metrics.candidates, "known_clean");
                Metrics::inc(&self.metrics.lookups, "cache_hit");
                return;
            }
            _ => {}
        }
        self.decide_fresh(c, now, output).await;
    }

    /// An address with no current state: the mirror decides, or it waits for an on-demand lookup.
    async fn decide_fresh(&mut self, c: Candidate, now: Instant, output: &mpsc::Sender<BlockRequest>) {
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
                self.enqueue(c, now);
            }
        }
    }

    /// Puts a first sighting in the waiting queue, shedding the oldest first sighting when the queue is full, or
    /// this one when there is none to shed or no room to track it.
    fn enqueue(&mut self, c: Candidate, now: Instant) {
        // An expired entry of this address is replaced, not added.
        self.state.remove(&c.ip);
        if self.waiting.len >= self.settings.max_waiting && !self.shed_oldest_first() {
            self.metrics.lookups_shed.inc();
            return;
        }
        if self.state.len() >= self.settings.max_tracked {
            self.evict();
            if self.state.len() >= self.settings.max_tracked {
                self.metrics.lookups_shed.inc();
                return;
            }
        }
        self.state.insert(c.ip, IpState::Waiting { since: c.received, repeated: false, targets: c.targets });
        self.waiting.first.push_back(c);
        self.waiting.len += 1;
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        if self.waiting.first.len() > 2 * self.settings.max_waiting.max(1) {
            let state = &self.state;
            self.waiting.first.retain(|c| matches!(state.get(&c.ip), Some(IpState::Waiting { repeated: false, .. })));
        }
    }

    /// Sheds the oldest address waiting on its first sighting. Returns false when there is none.
    fn shed_oldest_first(&mut self) -> bool {
        while let Some(c) = self.waiting.first.pop_front() {
            if matches!(self.state.get(&c.ip), Some(IpState::Waiting { repeated: false, .. })) {
                self.state.remove(&c.ip);
                self.waiting.len -= 1;
                self.metrics.lookups_shed.inc();
                return true;
            }
        }
        false
    }

    /// Takes up to `n` waiting addresses, repeated ones first, and marks them in flight.
    fn take_batch(&mut self, n: usize) -> Vec<Candidate> {
        let mut batch = Vec::with_capacity(n.min(self.waiting.len));
        for repeated in [true, false] {
            let queue = if repeated { &mut self.waiting.repeated } else { &mut self.waiting.first };
            while batch.len() < n {
                let Some(c) = queue.pop_front() else { break };
                if let Some(s) = self.state.get_mut(&c.ip) {
                    if let IpState::Waiting { repeated: r, targets, .. } = s {
                        if *r == repeated {
                            let targets = *targets;
                            *s = IpState::InFlight { targets };
                            batch.push(c);
                        }
                    }
                }
            }
        }
        self.waiting.len -= batch.len();
        if self.waiting.len == 0 {
            self.waiting_since = None;
        }
        batch
    }

    async fn decide_block(&mut self, c: Candidate, hit: Hit, output: &mpsc::Sender<BlockRequest>) {
        self.track(c.ip, IpState::blocked(Instant::now() + self.settings.cache_ttl, c.targets, Some(hit)));
        self.send(request(&c, hit), output).await;
    }

    async fn send(&self, request: BlockRequest, output: &mpsc::Sender<BlockRequest>) {
        let ip = request.ip;
        if output.send(request).await.is_err() {
            warn!(message = "Blocker is gone; block request not delivered.", %ip);
        }
    }

    /// Sends batches while a permit is free and a batch is due (full enough, lingered long enough, or `force`).
    /// Each task is spawned holding its permit. Returns how many tasks were started.
    fn dispatch(&mut self, answers: &mpsc::Sender<BatchAnswer>, force: bool) -> usize {
        let mut started = 0;
        while self.waiting.len > 0 {
            let lingered = self.waiting_since.is_some_and(|t| Instant::now() >= t + self.settings.linger);
            if !(force || lingered || self.waiting.len >= self.settings.batch_size) {
                break;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { break };
            let batch = self.take_batch(self.settings.max_batch.max(1));
            if batch.is_empty() {
                break;
            }
            self.spawn_lookup(batch, permit, answers.clone());
            started += 1;
        }
        started
    }

    fn spawn_lookup(&self, batch: Vec<Candidate>, permit: OwnedSemaphorePermit, answers: mpsc::Sender<BatchAnswer>) {
        let lookup = self.lookup.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let ips: Vec<IpAddr> = batch.iter().map(|c| c.ip).collect();
            metrics.misp_lookup_requests.inc();
            let result = lookup.lookup(ips).await;
            drop(permit);
            // The receiver lives as long as the decision task, which waits for every answer.
            let _ = answers.send(BatchAnswer { batch, result }).await;
        });
    }

    async fn on_answer(&mut self, answer: BatchAnswer, output: &mpsc::Sender<BlockRequest>) {
        match answer.result {
            Ok(hits) => {
                let hits: HashMap<IpAddr, Hit> = hits.into_iter().collect();
                let until = Instant::now() + self.settings.cache_ttl;
                for mut candidate in answer.batch {
                    // The lines that came while the lookup ran added their targets to the state.
                    if let Some(IpState::InFlight { targets }) = self.state.get(&candidate.ip) {
                        candidate.targets = *targets;
                    }
                    match hits.get(&candidate.ip) {
                        Some(hit) => {
                            Metrics::inc(&self.metrics.lookups, "misp_hit");
                            self.decide_block(candidate, *hit, output).await;
                        }
                        None => {
                            Metrics::inc(&self.metrics.lookups, "misp_miss");
                            self.track(candidate.ip, IpState::Clean { until });
                        }
                    }
                }
            }
            Err(error) => {
                // The client already retried with backoff. Forget the addresses so the next line for them asks
                // again: nothing is cached from a failed lookup.
                warn!(message = "MISP lookup failed; addresses will be looked up again on their next line.", %error,
                      addresses = answer.batch.len());
                for candidate in answer.batch {
                    Metrics::inc(&self.metrics.lookups, "misp_error");
                    self.state.remove(&candidate.ip);
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

    /// Frees room: expired entries first, then clean ones. Waiting, in-flight and blocked entries stay.
    fn evict(&mut self) {
        let now = Instant::now();
        let before = self.state.len();
        self.state.retain(|_, s| match s {
            IpState::Blocked(b) => b.until > now,
            IpState::Clean { until } => *until > now,
            IpState::Waiting { .. } | IpState::InFlight { .. } => true,
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

/// The block request a candidate's hit makes.
fn request(c: &Candidate, hit: Hit) -> BlockRequest {
    BlockRequest { ip: c.ip, targets: c.targets, hit, rule: Some(c.rule), received: c.received, note: None }
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

    /// A MISP stand-in: knows a fixed set of hits, records every batch it is asked and how many lookups ran at
    /// once; with a `gate`, each lookup first waits for one of its permits.
    #[derive(Default)]
    struct FakeLookup {
        hits: HashMap<IpAddr, Hit>,
        calls: Mutex<Vec<Vec<IpAddr>>>,
        fail: AtomicUsize,
        /// Every lookup fails until then (an outage).
        down_until: Mutex<Option<Instant>>,
        gate: Option<Semaphore>,
        running: AtomicUsize,
        most_running: AtomicUsize,
    }

    impl FakeLookup {
        fn gated() -> Self {
            FakeLookup { gate: Some(Semaphore::new(0)), ..FakeLookup::default() }
        }

        fn open_gate(&self) {
            self.gate.as_ref().expect("a gated lookup").add_permits(Semaphore::MAX_PERMITS / 2);
        }

        fn calls(&self) -> Vec<Vec<IpAddr>> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn misp_down() -> LookupError {
        LookupError::Misp(misp::Error::Timeout { path: "/attributes/restSearch".into() })
    }

    impl Lookup for FakeLookup {
        async fn lookup(&self, ips: Vec<IpAddr>) -> Result<Vec<(IpAddr, Hit)>, LookupError> {
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(running, Ordering::SeqCst);
            self.calls.lock().unwrap().push(ips.clone());
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("the gate is never closed").forget();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.down_until.lock().unwrap().is_some_and(|until| Instant::now() < until) {
                return Err(misp_down());
            }
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(misp_down());
            }
            Ok(ips.into_iter().filter_map(|ip| self.hits.get(&ip).map(|h| (ip, *h))).collect())
        }
    }

    /// Waits (in paused time, so instantly) until `done` holds; panics after a minute of virtual time.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Address number `i` of a flood (192.0.2.0/24 and up).
    fn nth(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200u32 + i))
    }

    async fn flood(rig: &Rig, range: std::ops::Range<u32>) {
        for i in range {
            rig.input
                .send(Candidate { ip: nth(i), rule: 0, received: Instant::now(), targets: TargetSet::single(0) })
                .await
                .unwrap();
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hit(net: &str, event_id: u64) -> Hit {
        Hit { network: net.parse().unwrap(), entry: Entry { event_id, uuid: event_id as u128, timestamp: 0 } }
    }

    fn candidate(s: &str) -> Candidate {
        Candidate { ip: ip(s), rule: 0, received: Instant::now(), targets: TargetSet::single(0) }
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

    /// A fleet: the lines that come while an address's lookup runs add their targets to its one answer; a line
    /// from another target after the block is blocked there with the known hit, and a target that already has
    /// the block costs nothing. One lookup throughout.
    #[tokio::test(start_paused = true)]
    async fn one_decision_per_address_whatever_the_targets() {
        let mut lookup = FakeLookup::gated();
        lookup.hits.insert(ip("198.51.100.7"), hit("198.51.100.7/32", 42));
        let mut rig = start(None, lookup, Settings::default());
        let from = |target: usize| Candidate { targets: TargetSet::single(target), ..candidate("198.51.100.7") };
        rig.input.send(from(0)).await.unwrap();
        until("the lookup is asked", || !rig.lookup.calls().is_empty()).await;
        rig.input.send(from(2)).await.unwrap();
        rig.input.send(from(0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        rig.lookup.open_gate();
        let first = rig.output.recv().await.unwrap();
        assert_eq!(first.targets, [0, 2].into_iter().collect::<TargetSet>(), "the waiting lines' targets joined");
        rig.input.send(from(1)).await.unwrap();
        let second = rig.output.recv().await.unwrap();
        assert_eq!((second.targets, second.hit.entry.event_id), (TargetSet::single(1), 42), "the known hit");
        rig.input.send(from(2)).await.unwrap();
        rig.input.send(Candidate { targets: TargetSet::first(3), ..from(0) }).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rig.output.try_recv().is_err(), "blocked on every target already");
        assert_eq!(rig.lookup.calls().len(), 1, "one lookup");
        assert_eq!(Metrics::count(&rig.metrics.candidates, "new_target"), 1);
        rig.shutdown.cancel();
        rig.task.await.unwrap();
    }

    /// A block read from a FortiGate at start has no hit: a line from another target is looked up (for that
    /// target only), a line from the seeded target costs nothing.
    #[tokio::test(start_paused = true)]
    async fn a_seeded_block_is_looked_up_for_another_target_only() {
        let mut lookup = FakeLookup::default();
        lookup.hits.insert(ip("198.51.100.9"), hit("198.51.100.9/32", 7));
        let lookup = Arc::new(lookup);
        let metrics = Arc::new(Metrics::new());
        let mut decider =
            Decider::new(Settings::default(), Arc::new(RwLock::new(None)), lookup.clone(), metrics.clone());
        decider.seed_blocked(0, [ip("198.51.100.9")]);
        let (input, rx) = mpsc::channel(16);
        let (tx, mut output) = mpsc::channel(16);
        let task = tokio::spawn(decider.run(rx, tx, CancellationToken::new()));
        let seen = Candidate { targets: TargetSet::single(0), ..candidate("198.51.100.9") };
        input.send(seen).await.unwrap();
        input.send(Candidate { targets: TargetSet::first(2), ..seen }).await.unwrap();
        let request = output.recv().await.unwrap();
        assert_eq!(request.targets, TargetSet::single(1), "not again on the target that has it");
        assert_eq!(lookup.calls().len(), 1);
        drop(input);
        task.await.unwrap();
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
        set.insert("198.51.100.0/24".parse().unwrap(), Entry { event_id: 9, uuid: 1, timestamp: 0 });
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

    /// A flood faster than MISP answers: the state map never holds more than `max_tracked` addresses and the
    /// queue never more than `max_waiting`, checked after every step and every millisecond while it drains.
    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_a_flood_of_distinct_addresses() {
        let settings = Settings {
            max_tracked: 100,
            max_waiting: 40,
            batch_size: 20,
            max_batch: 20,
            max_concurrent_lookups: 2,
            cache_ttl: Duration::from_secs(3600),
            ..Settings::default()
        };
        let rig = start(None, FakeLookup::default(), settings);
        let tracked = || rig.metrics.decide_tracked.get();
        let waiting = || rig.metrics.lookup_waiting.get();
        for step in 0..5u32 {
            flood(&rig, step * 200..step * 200 + 200).await;
            let queued = u64::from(step * 200 + 200);
            until("the step is queued", || Metrics::count(&rig.metrics.candidates, "queued") == queued).await;
            for _ in 0..200 {
                assert!(tracked() <= 100, "tracked {} > max_tracked", tracked());
                assert!(waiting() <= 40, "waiting {} > max_waiting", waiting());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert_eq!(waiting(), 0);
        // Each step of 200: 40 go out in two batches, 40 wait, 120 are shed.
        assert_eq!(rig.metrics.lookups_shed.get(), 5 * 120);
        let evicted =
            rig.metrics.candidates.get_or_create(&fortimisp_core::metrics::Outcome { outcome: "evicted" }).get();
        assert!(evicted > 0, "clean entries were evicted to stay under max_tracked");
    }

    /// Permits are taken before a task is spawned: with every lookup stuck, two permits mean two tasks, and the
    /// 3000 other addresses wait in the decider, not in tasks queued on the semaphore.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_task_is_spawned_only_holding_a_permit() {
        let settings = Settings { max_concurrent_lookups: 2, ..Settings::default() };
        let rig = start(None, FakeLookup::gated(), settings);
        let alive_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        flood(&rig, 0..5000).await;
        until("every address is queued", || Metrics::count(&rig.metrics.candidates, "queued") == 5000).await;
        until("two lookups run", || rig.lookup.calls().len() == 2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let alive = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        assert_eq!(alive - alive_before, 2, "one task per permit, none waiting for one");
        assert_eq!(rig.lookup.calls().len(), 2);
        rig.lookup.open_gate();
        until("every address is answered", || Metrics::count(&rig.metrics.lookups, "misp_miss") == 5000).await;
        assert_eq!(rig.lookup.most_running.load(Ordering::SeqCst), 2, "never more lookups than permits");
        assert_eq!(rig.lookup.calls().iter().map(Vec::len).sum::<usize>(), 5000);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_grow_with_the_backlog() {
        let settings = Settings { max_concurrent_lookups: 1, batch_size: 200, max_batch: 1000, ..Settings::default() };
        let rig = start(None, FakeLookup::default(), settings);
        flood(&rig, 0..3000).await;
        until("every address is answered", || Metrics::count(&rig.metrics.lookups, "misp_miss") == 3000).await;
        let sizes: Vec<usize> = rig.lookup.calls().iter().map(Vec::len).collect();
        // The first batch leaves as soon as it is worth sending; the backlog behind it goes 1000 at a time.
        assert_eq!(sizes, [200, 1000, 1000, 800]);
        assert_eq!(rig.metrics.misp_lookup_requests.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_addresses_are_bounded_and_a_shed_one_is_asked_again() {
        let settings = Settings {
            max_concurrent_lookups: 1,
            batch_size: 100,
            max_batch: 100,
            max_waiting: 500,
            ..Settings::default()
        };
        let rig = start(None, FakeLookup::gated(), settings);
        flood(&rig, 0..1000).await;
        until("every address is queued", || Metrics::count(&rig.metrics.candidates, "queued") == 1000).await;
        // 0..100 are in flight; of the 900 after them, the 400 oldest were shed for newer ones.
        assert_eq!(rig.metrics.lookup_waiting.get(), 500);
        assert_eq!(rig.metrics.lookups_shed.get(), 400);
        assert_eq!(rig.metrics.decide_tracked.get(), 600);
        rig.lookup.open_gate();
        until("every address kept is answered", || Metrics::count(&rig.metrics.lookups, "misp_miss") == 600).await;
        let asked: Vec<IpAddr> = rig.lookup.calls().concat();
        let kept: Vec<IpAddr> = (0..100).chain(500..1000).map(nth).collect();
        assert_eq!(asked, kept, "the oldest first sightings were shed, the rest asked in order");
        // A shed address was not cached as clean: its next line asks MISP.
        flood(&rig, 150..151).await;
        until("the shed address is answered", || Metrics::count(&rig.metrics.lookups, "misp_miss") == 601).await;
        assert_eq!(rig.lookup.calls().last().unwrap(), &vec![nth(150)]);
        assert_eq!(Metrics::count(&rig.metrics.candidates, "known_clean"), 0);
        // An address that was answered is cached.
        flood(&rig, 600..601).await;
        until("the repeat is counted", || Metrics::count(&rig.metrics.candidates, "known_clean") == 1).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_seen_again_while_waiting_goes_first() {
        let settings = Settings { max_concurrent_lookups: 1, batch_size: 100, max_batch: 100, ..Settings::default() };
        let rig = start(None, FakeLookup::gated(), settings);
        flood(&rig, 0..300).await;
        flood(&rig, 250..251).await;
        until("every line is counted", || Metrics::count(&rig.metrics.candidates, "repeated") == 1).await;
        rig.lookup.open_gate();
        until("every address is answered", || Metrics::count(&rig.metrics.lookups, "misp_miss") == 300).await;
        let calls = rig.lookup.calls();
        let expected: Vec<IpAddr> = std::iter::once(250).chain(100..199).map(nth).collect();
        assert_eq!(calls[1], expected, "the repeated address leads the next batch");
        let expected: Vec<IpAddr> = (199..250).chain(251..300).map(nth).collect();
        assert_eq!(calls[2], expected, "and is asked once");
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
