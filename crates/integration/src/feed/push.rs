//! The pusher (`update` has `push`, FortiOS 7.2.1+): keeps each feed on the FortiGate equal to [`FeedState`]'s
//! contents through the push API.
//!
//! It wakes on every change of the state (or on the snapshot timer), takes the current contents, and sends per
//! feed the `remove` and `add` that turn what it last pushed into them, so blocks that arrive together go out in
//! one request. Its first round, and one every `snapshot_interval`, sends a `snapshot` of every feed instead:
//! that repairs any drift (an entry removed by hand, a FortiGate restored from backup, a hand-run `integration
//! block` that pushed to the family's first feed), and so does a round after the transport switched to another
//! management URL (an HA cluster's other unit).
//!
//! Waiters: [`PushWait::until`] is how the blocker learns that a block's generation reached the FortiGate (its
//! journal action completes only then). A failure is published to the waiters: a retryable one (timeout, 5xx) is
//! retried here with backoff and the waiters keep waiting up to their own timeout; a 401/403 stops the pusher for
//! [`REFUSED_PAUSE`] (each refused request counts toward an admin lockout), and every waiter gets the refusal at
//! once, so its block stays pending in the journal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::backoff::Backoff;
use fortimisp_core::cluster::Leadership;
use fortimisp_core::feed::diff;
use fortimisp_core::fortigate::{self, PushCommand, Transport};
use fortimisp_core::metrics::{Metrics, PushLabels, TargetMetrics};
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::state::FeedState;

/// Entries per push request. A snapshot larger than this goes out as a `snapshot` of the first entries and `add`s
/// of the rest, so no request body grows with the feed (300 000 entries would be a 6 MB body; FortiOS documents
/// no limit for the push API, and its other request bodies are small). Between those requests the feed holds only
/// the chunks sent so far: the blocks first, as the layout orders them.
pub const PUSH_CHUNK: usize = 10_000;

/// How long the pusher stays quiet after the FortiGate refused the token or its profile.
pub const REFUSED_PAUSE: Duration = Duration::from_secs(300);

/// What the waiters see.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every generation up to this one is on the FortiGate.
    pushed: u64,
    /// The last round's failure, until a round succeeds.
    failure: Option<Arc<fortigate::Error>>,
}

/// The waiters' side of a pusher.
#[derive(Clone)]
pub struct PushWait {
    progress: watch::Receiver<Progress>,
}

impl PushWait {
    /// Returns once generation `generation` is on the FortiGate. Fails at once with the refusal when the
    /// FortiGate refuses the token (401/403), and with [`fortigate::Error::NotConfirmed`] (retryable) after
    /// `timeout` or when the pusher stopped.
    pub async fn until(&self, generation: u64, timeout: Duration) -> Result<(), fortigate::Error> {
        let mut progress = self.progress.clone();
        let wait = async {
            progress
                .wait_for(|p| p.pushed >= generation || p.failure.as_ref().is_some_and(|e| e.is_fatal()))
                .await
                .map(|p| p.clone())
        };
        let waited = tokio::time::timeout(timeout, wait).await;
        match waited {
            Ok(Ok(p)) if p.pushed >= generation => Ok(()),
            Ok(Ok(p)) => Err(p.failure.as_ref().map_or(fortigate::Error::Unauthorized, |e| e.for_waiter())),
            Ok(Err(_)) => Err(fortigate::Error::NotConfirmed { detail: "the pusher stopped".into() }),
            Err(_) => {
                let last = self.progress.borrow().failure.as_ref().map(|e| e.to_string());
                Err(fortigate::Error::NotConfirmed {
                    detail: last.unwrap_or_else(|| format!("no push confirmed within {timeout:?}")),
                })
            }
        }
    }
}

/// See the module docs.
pub struct Pusher {
    pub transport: Arc<Transport>,
    pub state: Arc<FeedState>,
    pub metrics: Arc<Metrics>,
    /// The target's `fortimisp_fortigate_unauthorized` series.
    unauthorized: fortimisp_core::metrics::Gauge,
    pub snapshot_interval: Duration,
    progress: watch::Sender<Progress>,
    /// In a cluster, only the feed target's leader pushes (the lease of `lease`).
    leadership: Leadership,
    lease: String,
}

impl Pusher {
    /// A pusher writing to `target`'s FortiGate through `transport`.
    pub fn new(
        transport: Arc<Transport>,
        state: Arc<FeedState>,
        target: &TargetMetrics,
        snapshot_interval: Duration,
    ) -> Pusher {
        Pusher {
            transport,
            state,
            metrics: target.all().clone(),
            unauthorized: target.unauthorized.clone(),
            snapshot_interval,
            progress: watch::channel(Progress::default()).0,
            leadership: Leadership::solo(),
            lease: String::new(),
        }
    }

    /// Pushes only while this instance leads `target` (a snapshot first, each time it starts leading).
    pub fn with_leadership(mut self, leadership: Leadership, target: &str) -> Pusher {
        self.leadership = leadership;
        self.lease = target.to_owned();
        self
    }

    pub fn waiter(&self) -> PushWait {
        PushWait { progress: self.progress.subscribe() }
    }

    /// Runs until `shutdown`. Restartable: a new run starts with a snapshot round.
    pub async fn run(&self, shutdown: CancellationToken) {
        for command in ["add", "remove", "snapshot"] {
            for outcome in ["ok", "error"] {
                drop(self.metrics.tf_pushes.get_or_create(&PushLabels { command, outcome }));
            }
        }
        let mut changes = self.state.subscribe();
        // Nothing is pushed before the contents are complete: a snapshot of a partial list withdraws blocks.
        while !self.state.is_ready() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
        let mut pushed: HashMap<String, Vec<IpNet>> = HashMap::new();
        let mut snapshot_due = true;
        let mut snapshot_timer = tokio::time::interval(self.snapshot_interval);
        snapshot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        snapshot_timer.reset();
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let mut attempt = 0;
        let mut unit = self.transport.base().to_string();
        let mut gate = self.leadership.gate(&self.lease);
        loop {
            let window = gate.window();
            if !window.allows_writes() {
                // Another instance pushes; what the FortiGate holds when this one leads again is unknown.
                snapshot_due = true;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = gate.next_round() => {}
                }
                continue;
            }
            changes.borrow_and_update();
            // Another unit of an HA cluster answers now: what it holds is unknown, so it gets a snapshot.
            if self.transport.base() != unit {
                unit = self.transport.base().to_string();
                snapshot_due = true;
            }
            let built = self.state.current();
            let round = async {
                if snapshot_due {
                    self.snapshot_round(&built, &mut pushed).await
                } else {
                    self.diff_round(&built, &mut pushed).await
                }
            };
            // A leader's round must end before its lease can pass to another instance.
            let result = match window.limit() {
                Some(limit) => tokio::time::timeout(limit, round).await.unwrap_or_else(|_| {
                    Err(fortigate::Error::NotConfirmed { detail: "the lease window ended before the push did".into() })
                }),
                None => round.await,
            };
            let wait = match result {
                Ok(()) => {
                    attempt = 0;
                    if snapshot_due {
                        info!(
                            message = "Threat feeds pushed in full (snapshot).",
                            generation = built.generation,
                            feeds = pushed.len()
                        );
                    }
                    snapshot_due = false;
                    self.progress.send_modify(|p| {
                        p.pushed = p.pushed.max(built.generation);
                        p.failure = None;
                    });
                    None
                }
                Err(failure) => {
                    attempt += 1;
                    let pause = if failure.is_fatal() {
                        self.unauthorized.set(1);
                        error!(message = "FortiGate refused the push; pushing pauses. Check the API token, its profile (external-resource write) and trusted hosts.",
                               error = %failure, pause = ?REFUSED_PAUSE);
                        REFUSED_PAUSE
                    } else {
                        let delay = backoff.delay(attempt);
                        warn!(message = "Threat-feed push failed; retrying.", error = %failure, retry_in = ?delay);
                        delay
                    };
                    // What was half applied is unknown: the next round repairs with a snapshot.
                    snapshot_due = true;
                    self.progress.send_modify(|p| p.failure = Some(Arc::new(failure)));
                    Some(pause)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed(), if wait.is_none() => {}
                _ = snapshot_timer.tick(), if wait.is_none() => snapshot_due = true,
                _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
        }
    }

    async fn snapshot_round(
        &self,
        built: &super::state::Built,
        pushed: &mut HashMap<String, Vec<IpNet>>,
    ) -> Result<(), fortigate::Error> {
        for content in &built.layout.feeds {
            self.send(&content.name, PushCommand::Snapshot, &content.entries).await?;
            pushed.insert(content.name.clone(), content.entries.clone());
        }
        Ok(())
    }

    async fn diff_round(
        &self,
        built: &super::state::Built,
        pushed: &mut HashMap<String, Vec<IpNet>>,
    ) -> Result<(), fortigate::Error> {
        for content in &built.layout.feeds {
            let before = pushed.get(&content.name).map_or(&[][..], Vec::as_slice);
            let change = diff(before, &content.entries);
            if !change.remove.is_empty() {
                self.send(&content.name, PushCommand::Remove, &change.remove).await?;
            }
            if !change.add.is_empty() {
                self.send(&content.name, PushCommand::Add, &change.add).await?;
            }
            pushed.insert(content.name.clone(), content.entries.clone());
        }
        Ok(())
    }

    /// One command, in requests of at most [`PUSH_CHUNK`] entries (a snapshot's later chunks are `add`s).
    async fn send(&self, feed: &str, command: PushCommand, entries: &[IpNet]) -> Result<(), fortigate::Error> {
        if entries.is_empty() {
            return self.send_one(feed, command, entries).await;
        }
        for (i, chunk) in entries.chunks(PUSH_CHUNK).enumerate() {
            let command = if i > 0 && command == PushCommand::Snapshot { PushCommand::Add } else { command };
            self.send_one(feed, command, chunk).await?;
        }
        Ok(())
    }

    async fn send_one(&self, feed: &str, command: PushCommand, entries: &[IpNet]) -> Result<(), fortigate::Error> {
        let result = self.transport.push_feed(feed, command, entries).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.tf_pushes.get_or_create(&PushLabels { command: command.as_str(), outcome }).inc();
        if result.is_ok() {
            self.unauthorized.set(0);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::config::RawFeed;
    use fortimisp_core::fortigate::ClientOptions;
    use fortimisp_core::secret::ApiKey;
    use fortimisp_testkit::fortigate::{EmulatorConfig, FortiGateEmulator};
    use std::net::IpAddr;

    async fn push_feed(emu: &FortiGateEmulator, name: &str) {
        let body = serde_json::json!({"name": name, "type": "address", "update-method": "push",
                                      "resource": "https://fortimisp.invalid/push-only"});
        let response = reqwest::Client::new()
            .post(format!("{}/api/v2/cmdb/system/external-resource?vdom=root", emu.url()))
            .bearer_auth(emu.token())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn setup() -> (FortiGateEmulator, Arc<FeedState>, Arc<Pusher>) {
        let emu = FortiGateEmulator::start(EmulatorConfig::default()).await.unwrap();
        push_feed(&emu, "fortimisp-block").await;
        push_feed(&emu, "fortimisp-block6").await;
        let mut options = ClientOptions::new(emu.url(), ApiKey::new(emu.token()));
        options.requests_per_second = 0.0;
        let transport = Arc::new(Transport::new(options.transport_options()).unwrap());
        let metrics = Arc::new(Metrics::new());
        let raw: RawFeed = toml::from_str("update = [\"push\"]").unwrap();
        let state = Arc::new(FeedState::new(&raw.validate(&|_| None).unwrap(), metrics.clone()));
        let pusher = Arc::new(Pusher::new(
            transport,
            state.clone(),
            &TargetMetrics::new(metrics, "default"),
            Duration::from_secs(3600),
        ));
        (emu, state, pusher)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_block_waits_for_its_push_and_blocks_together_share_a_request() {
        let (emu, state, pusher) = setup().await;
        // Someone else's entry in our feed: the first round's snapshot replaces the whole list.
        state.replace_blocked(HashMap::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (pusher, stop) = (pusher.clone(), stop.clone());
            async move { pusher.run(stop).await }
        });
        let wait = pusher.waiter();
        let generation = state.add_blocked(ip("198.51.100.7"), 1);
        wait.until(generation, Duration::from_secs(10)).await.expect("pushed");
        assert_eq!(emu.feed("fortimisp-block").unwrap().entries, ["198.51.100.7"]);
        let before = emu.route_count("POST /api/v2/monitor/system/external-resource/dynamic");
        state.add_blocked(ip("198.51.100.8"), 2);
        let last = state.add_blocked(ip("198.51.100.9"), 3);
        wait.until(last, Duration::from_secs(10)).await.expect("pushed");
        let mut entries = emu.feed("fortimisp-block").unwrap().entries;
        entries.sort();
        assert_eq!(entries, ["198.51.100.7", "198.51.100.8", "198.51.100.9"]);
        let requests = emu.route_count("POST /api/v2/monitor/system/external-resource/dynamic") - before;
        assert!(requests <= 2, "two blocks, {requests} requests");
        // The ledger shows the three, then housekeeping closes one: pushed as `remove`.
        state.replace_blocked(HashMap::from([
            (ip("198.51.100.7"), 1),
            (ip("198.51.100.8"), 2),
            (ip("198.51.100.9"), 3),
        ]));
        let removed = state.replace_blocked(HashMap::from([(ip("198.51.100.7"), 1), (ip("198.51.100.9"), 3)]));
        wait.until(removed, Duration::from_secs(10)).await.expect("pushed");
        let mut entries = emu.feed("fortimisp-block").unwrap().entries;
        entries.sort();
        assert_eq!(entries, ["198.51.100.7", "198.51.100.9"]);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_large_snapshot_goes_out_in_chunks_and_arrives_whole() {
        let (emu, state, pusher) = setup().await;
        let many: HashMap<IpAddr, i64> = (0..(PUSH_CHUNK as u32 * 2 + 5))
            .map(|i| (IpAddr::V4(std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(11, 0, 0, 0)) + i)), 1))
            .collect();
        let generation = state.replace_blocked(many);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (pusher, stop) = (pusher.clone(), stop.clone());
            async move { pusher.run(stop).await }
        });
        pusher.waiter().until(generation, Duration::from_secs(30)).await.expect("pushed");
        assert_eq!(emu.feed("fortimisp-block").unwrap().entries.len(), PUSH_CHUNK * 2 + 5);
        let snapshots =
            pusher.metrics.tf_pushes.get_or_create(&PushLabels { command: "snapshot", outcome: "ok" }).get();
        let adds = pusher.metrics.tf_pushes.get_or_create(&PushLabels { command: "add", outcome: "ok" }).get();
        // One snapshot per feed (the IPv6 one empty), and the two further chunks as adds.
        assert_eq!((snapshots, adds), (2, 2));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_token_fails_the_waiters_at_once() {
        let (emu, state, pusher) = setup().await;
        state.replace_blocked(HashMap::new());
        emu.revoke_token();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (pusher, stop) = (pusher.clone(), stop.clone());
            async move { pusher.run(stop).await }
        });
        let generation = state.add_blocked(ip("198.51.100.7"), 1);
        let started = tokio::time::Instant::now();
        let result = pusher.waiter().until(generation, Duration::from_secs(20)).await;
        assert!(matches!(result, Err(fortigate::Error::Unauthorized)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "not a timeout");
        assert_eq!(pusher.unauthorized.get(), 1);
        stop.cancel();
        task.await.unwrap();
    }
}
