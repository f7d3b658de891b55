//! Wiring of the daemon: builds each stage from the validated config, joins them with bounded channels, and runs
//! them until shutdown.
//!
//! ```text
//! listeners ──Candidate──▶ decider ──BlockRequest──▶ fan-out ──▶ blocker (one per target) ──▶ FortiGate
//!  (udp/tcp/tls,           (dedup, mirror,           (by the      (journal first,
//!   parse, triggers,        on-demand MISP;           request's    rate limit, retries,
//!   device → targets,       one decision per          targets)     pause on 401)
//!   never-block)            address)
//! ```
//!
//! Shutdown order (SIGTERM/SIGINT): listeners stop first; the decider drains what it holds and closes its output;
//! the fan-out hands on what it holds; each blocker journals everything it received, lets running executions
//! finish, and returns. The whole sequence
//! is bounded by [`SHUTDOWN_BUDGET`], inside the contract's 10 s.
//!
//! Supervision ([`Supervisor`]): every task runs under it, so none dies silently. The listeners, the mirror and
//! journal pruning are restarted with backoff when they panic or end early (each listener's socket stays bound
//! across restarts, so datagrams wait in the kernel meanwhile). The decider and the blocker own state and the
//! metrics server reports liveness: their death is fatal: `/healthz` answers 503, an `error` names the task, the
//! rest shuts down in the order above and [`run`] returns an error (exit code 1). Blocks the blocker journalled
//! stay pending for the next start.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use fortimisp_core::clients;
use fortimisp_core::cluster::Leadership;
use fortimisp_core::config::{Backend as BackendKind, Config, FortiGate};
use fortimisp_core::fleet::Claims;
use fortimisp_core::journal::Journal;
use fortimisp_core::metrics::{self, Health, Metrics, TargetMetrics};
use fortimisp_core::policy::{NeverBlock, Triggers};
use fortimisp_core::supervise::{Faults, Supervisor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

use crate::backend::{AddressGroup, AnyBackend, BannedIp, MispSighter, ThreatFeed, ThreatFeedDirect};
use crate::block::{Blocker, Executor};
use crate::decide::{self, Decider, SharedMirror};
use crate::feed::{self, confirm::Confirm, push::Pusher, state::FeedState};
use crate::ingest::Ingest;
use crate::listen;
use crate::mirror::{CidrIndicators, Mirror, MispLookup};
use fortimisp_core::ready::{self, Readiness};
use fortimisp_core::view;

/// Candidates waiting for the decision stage. When full, UDP drops (counted) and TCP/TLS senders wait.
pub const CANDIDATE_QUEUE: usize = 65_536;
/// Block requests waiting for the blocker (which journals them on receipt). When full, the decider waits.
pub const BLOCK_QUEUE: usize = 4_096;
/// How often the journal's audit trail is pruned, and how long it is kept.
const JOURNAL_PRUNE_EVERY: Duration = Duration::from_secs(86_400);
const JOURNAL_KEEP_DAYS: i64 = 365;
/// Threat-feed events (logid 2222x) waiting for the confirmation task; beyond, dropped (the status poll covers).
const FEED_EVENT_QUEUE: usize = 256;
/// Time allowed for the whole shutdown sequence.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

/// Everything the daemon and the hand-run subcommands share.
pub struct Parts {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub journal: Journal,
    /// The FortiGate targets, in the config's order (index = the target's bit in a `TargetSet`).
    pub targets: Vec<TargetParts>,
    pub misp: Arc<fortimisp_core::misp::Client>,
    pub never_block: NeverBlock,
    /// The threat-feed backend's live state, in the daemon only (hand-run commands block directly).
    pub feed: Option<FeedParts>,
}

/// One FortiGate target: its settings, its client (own transport, rate limit and failover) and its metrics.
pub struct TargetParts {
    pub config: FortiGate,
    pub client: Arc<fortimisp_core::fortigate::Client>,
    pub metrics: TargetMetrics,
}

impl TargetParts {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// The daemon's threat-feed state and pusher (`backend = "threat-feed"`).
pub struct FeedParts {
    pub state: Arc<FeedState>,
    pub pusher: Option<Arc<Pusher>>,
}

impl Parts {
    /// Builds the clients and opens the journal. A journal that cannot be opened is reported and replaced by an
    /// in-memory one, so blocking goes on.
    pub fn build(config: Config) -> Result<Parts> {
        let metrics = Arc::new(Metrics::new());
        let (journal, journal_error) = Journal::open_config(&config.state);
        if let Some(error) = journal_error {
            error!(message = "Journal cannot be opened; keeping actions in memory only. Fix state.path or state.url.",
                   %error, journal = %journal.location());
            metrics.journal_degraded.set(1);
        }
        let targets = config
            .targets
            .iter()
            .map(|t| {
                let client = clients::fortigate_timed(t, &metrics).with_context(|| format!("fortigate {}", t.name))?;
                Ok(TargetParts {
                    config: t.clone(),
                    client: Arc::new(client),
                    metrics: TargetMetrics::new(metrics.clone(), &t.name),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let misp = Arc::new(clients::misp_timed(&config.misp, &metrics).context("misp")?);
        let never_block = NeverBlock::new(config.blocking.never_block.clone());
        Ok(Parts { config, metrics, journal, targets, misp, never_block, feed: None })
    }

    /// The targets `selector` names: every target for `None` or `all`, else the one of that name.
    pub fn select(&self, selector: Option<&str>) -> Result<Vec<usize>> {
        match selector {
            None | Some("all") => Ok((0..self.targets.len()).collect()),
            Some(name) => match self.targets.iter().position(|t| t.name() == name) {
                Some(i) => Ok(vec![i]),
                None => {
                    let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
                    anyhow::bail!("no target named `{name}` (targets: {})", names.join(", "))
                }
            },
        }
    }

    /// The target whose backend is the threat feed (at most one, config validation sees to it).
    pub fn feed_target(&self) -> Option<&TargetParts> {
        self.targets.iter().find(|t| t.config.backend == BackendKind::ThreatFeed)
    }

    pub fn backend_of(&self, target: usize) -> AnyBackend {
        let t = &self.targets[target];
        match t.config.backend {
            BackendKind::AddressGroup => AnyBackend::AddressGroup(AddressGroup(t.client.clone())),
            BackendKind::BannedIp => {
                AnyBackend::BannedIp(BannedIp { client: t.client.clone(), expiry: self.config.housekeeping.max_age })
            }
            BackendKind::ThreatFeed => match &self.feed {
                Some(feed) => AnyBackend::ThreatFeed(ThreatFeed {
                    state: feed.state.clone(),
                    push: feed.pusher.as_ref().map(|p| p.waiter()),
                }),
                None => {
                    let cfg = self.config.feed.as_ref().expect("config validation requires [feed] for threat-feed");
                    AnyBackend::ThreatFeedDirect(ThreatFeedDirect {
                        transport: t.client.transport().clone(),
                        names: cfg.names(),
                        push: cfg.push,
                    })
                }
            },
        }
    }

    pub fn executor_of(&self, target: usize, dry_run: bool) -> Executor<AnyBackend, MispSighter> {
        Executor {
            backend: self.backend_of(target),
            // One sighting per decision: the executor of its first target adds it (`Job::sights`).
            sighter: self.config.misp.sightings.then(|| Arc::new(MispSighter(self.misp.clone()))),
            index: target,
            background_sightings: false,
            journal: self.journal.clone(),
            never_block: self.never_block.clone(),
            dry_run: dry_run || self.config.blocking.dry_run,
            target: self.targets[target].metrics.clone(),
        }
    }

    pub fn decider(&self, mirror: SharedMirror) -> Decider<MispLookup> {
        let lookup = MispLookup {
            client: self.misp.clone(),
            query: view::base_query(&self.config.misp),
            config: self.config.misp.clone(),
            cidrs: Arc::new(CidrIndicators::new(self.config.misp.lookup_cache_ttl)),
        };
        let settings = decide::Settings { cache_ttl: self.config.misp.lookup_cache_ttl, ..decide::Settings::default() };
        Decider::new(settings, mirror, Arc::new(lookup), self.metrics.clone())
    }

    pub fn ingest(&self, out: mpsc::Sender<decide::Candidate>) -> Ingest {
        Ingest::new(
            Triggers::new(self.config.trigger.clone()),
            Claims::of_targets(&self.config.targets, self.config.blocking.scope),
            self.never_block.clone(),
            self.config.syslog.allowed_senders.clone(),
            self.metrics.clone(),
            out,
        )
    }

    /// Reads the blocks already on a target's FortiGate (ours), so the decider does not redo them. Best effort.
    pub async fn known_blocks(&self, target: usize) -> Vec<IpAddr> {
        let t = &self.targets[target];
        let result = match t.config.backend {
            BackendKind::AddressGroup => member_objects(&t.client).await,
            BackendKind::BannedIp => t.client.list_banned().await.map(|b| b.into_iter().map(|b| b.ip).collect()),
            BackendKind::ThreatFeed => self
                .journal
                .active_blocks_of(t.name())
                .await
                .map(|ledger| ledger.into_iter().filter(|b| b.backend == feed::BACKEND).map(|b| b.ip).collect())
                .map_err(|error| fortimisp_core::fortigate::Error::NotConfirmed {
                    detail: format!("journal: {error}"),
                }),
        };
        match result {
            Ok(ips) => ips,
            Err(error) => {
                warn!(message = "Could not list existing blocks at start; repeats will cost an API call each.", %error,
                      target = t.name());
                Vec::new()
            }
        }
    }
}

/// Our objects that are members of a block group. An object of ours outside every group (left by a run that
/// stopped between the create and the member add, or by a block that failed on a full group) blocks nothing,
/// so it must not be taken as blocked: the next line for it goes through the blocker, which adopts it.
async fn member_objects(
    client: &fortimisp_core::fortigate::Client,
) -> Result<Vec<IpAddr>, fortimisp_core::fortigate::Error> {
    use fortimisp_core::fortigate::Family;
    let owned = client.list_owned().await?;
    let mut members = std::collections::HashSet::new();
    for family in [Family::V4, Family::V6] {
        for group in client.block_groups(family).await? {
            members.extend(client.group_members(family, &group).await?);
        }
    }
    Ok(owned.into_iter().filter(|o| members.contains(o.name.as_str())).map(|o| o.ip).collect())
}

/// Hands each block request to the blocker of every target it names. A blocker journals on receipt, so a
/// target that is down or slow does not hold this up (its blocks wait in the journal).
pub async fn fan_out(
    mut input: mpsc::Receiver<decide::BlockRequest>,
    blockers: Vec<mpsc::Sender<decide::BlockRequest>>,
) {
    while let Some(request) = input.recv().await {
        for target in request.targets.iter() {
            let Some(blocker) = blockers.get(target) else { continue };
            if blocker.send(request.clone()).await.is_err() {
                warn!(message = "A target's blocker is gone; block request not delivered.", ip = %request.ip, target);
            }
        }
    }
}

/// Runs the daemon until `shutdown` fires, or until a task whose death is fatal dies (then: an error). `faults`
/// is the debug builds' test hook ([`Faults::none`] otherwise).
pub async fn run(config: Config, shutdown: CancellationToken, faults: Faults, fatal_pause: Duration) -> Result<()> {
    let mut parts = Parts::build(config)?;
    // In a cluster (a PostgreSQL journal) the lease keeper starts here; see `Leadership`.
    let leadership = Leadership::from_config(
        &parts.config.state,
        parts.config.cluster.as_ref(),
        "integration",
        parts.targets.iter().map(|t| t.name().to_owned()).collect(),
    );
    if let (Some(feed_cfg), Some(target)) = (&parts.config.feed, parts.feed_target()) {
        let state = Arc::new(FeedState::new(feed_cfg, parts.metrics.clone()));
        let transport = target.client.transport().clone();
        let pusher = feed_cfg.push.then(|| {
            let pusher = Pusher::new(transport, state.clone(), &target.metrics, feed_cfg.snapshot_interval);
            Arc::new(pusher.with_leadership(leadership.clone(), target.name()))
        });
        parts.feed = Some(FeedParts { state, pusher });
    }
    let cfg = &parts.config;
    let supervisor = Supervisor::new(Health::default(), faults);
    let tracker = TaskTracker::new();

    // Bind everything first so a bad address fails at start, naming its key.
    let udp = match cfg.syslog.udp {
        Some(addr) => Some(Arc::new(
            listen::bind_udp(addr, cfg.syslog.recv_buffer_bytes)
                .with_context(|| format!("syslog.udp: cannot listen on {addr}"))?,
        )),
        None => None,
    };
    let tcp = match cfg.syslog.tcp {
        Some(addr) => Some(Arc::new(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("syslog.tcp: cannot listen on {addr}"))?,
        )),
        None => None,
    };
    let tls = match &cfg.syslog.tls {
        Some(t) => {
            let acceptor = listen::tls_acceptor(&t.cert, &t.key)?;
            let listener = tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("syslog.tls: cannot listen on {}", t.listen))?;
            Some((Arc::new(listener), acceptor))
        }
        None => None,
    };
    let feed_server = match cfg.feed.as_ref().and_then(|f| f.serve.as_ref()) {
        Some(serve) => Some(feed::serve::bind(serve).await?),
        None => None,
    };
    let metrics_listener = match cfg.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?,
        ),
        None => None,
    };

    // Read syslog from here on. Everything below may wait on MISP or the FortiGate (start-up checks with retries,
    // the journal replay, the listing of our blocks: seconds when they are slow or down); lines that arrive
    // meanwhile wait in the bounded candidate queue (counted `queue_full` if it fills), not in the kernel's
    // receive buffer, which overflows within a fraction of a second at high rates.
    // Not a child of `shutdown`: the listeners stop in the shutdown sequence, after the supervisor knows that
    // shutdown began (else the decider, whose input they close, would look as if it died).
    let listeners_stop = CancellationToken::new();
    let (candidate_tx, candidate_rx) = mpsc::channel(CANDIDATE_QUEUE);
    let (block_tx, block_rx) = mpsc::channel(BLOCK_QUEUE);
    let (target_txs, target_rxs): (Vec<_>, Vec<_>) = parts.targets.iter().map(|_| mpsc::channel(BLOCK_QUEUE)).unzip();

    let (feed_event_tx, feed_event_rx) = mpsc::channel(FEED_EVENT_QUEUE);
    let mut ingest = parts.ingest(candidate_tx);
    if parts.feed.is_some() {
        ingest = ingest.with_feed_events(feed_event_tx);
    } else {
        drop(feed_event_tx);
    }
    let ingest = Arc::new(ingest);
    let max = cfg.syslog.max_message_bytes;
    let listeners = TaskTracker::new();
    // Each restart of a listener runs on the same socket (an `Arc` the closure keeps), so nothing is rebound.
    if let Some(socket) = udp {
        info!(message = "Listening for syslog.", listener = "udp", addr = %socket.local_addr()?);
        let (ingest, stop) = (ingest.clone(), listeners_stop.clone());
        listeners.spawn(supervisor.restarting("udp", listeners_stop.clone(), move || {
            listen::run_udp(socket.clone(), ingest.clone(), max, stop.clone())
        }));
    }
    if let Some(listener) = tcp {
        info!(message = "Listening for syslog.", listener = "tcp", addr = %listener.local_addr()?);
        let (ingest, stop) = (ingest.clone(), listeners_stop.clone());
        listeners.spawn(supervisor.restarting("tcp", listeners_stop.clone(), move || {
            listen::run_stream(listener.clone(), None, ingest.clone(), max, stop.clone())
        }));
    }
    if let Some((listener, acceptor)) = tls {
        info!(message = "Listening for syslog.", listener = "tls", addr = %listener.local_addr()?);
        let (ingest, stop) = (ingest.clone(), listeners_stop.clone());
        listeners.spawn(supervisor.restarting("tls", listeners_stop.clone(), move || {
            listen::run_stream(listener.clone(), Some(acceptor.clone()), ingest.clone(), max, stop.clone())
        }));
    }
    drop(ingest);
    listeners.close();

    // In a cluster, the keeper's first round tells which targets this instance leads: only their leader creates
    // the block groups below, and only it executes blocks and pushes threat feeds.
    leadership.settled(Duration::from_secs(5)).await;

    // Start-up checks are reported, never fatal: MISP or the FortiGate may come back later.
    match parts.misp.check(cfg.misp.sightings, false).await {
        Ok(info) => info!(message = "MISP reachable.", version = %info.version.version),
        Err(error) => warn!(message = "MISP not reachable at start; lookups retry as lines arrive.", %error),
    }
    // A refused token at start is reported once and the token is not tried again before the first block:
    // FortiOS locks the source address out after a few failed logins (3 by default). The targets are checked
    // together: one slow or unreachable FortiGate does not delay the others.
    let refused_at_start: Vec<bool> = futures::future::join_all(parts.targets.iter().map(|t| async {
        if t.config.backend != BackendKind::AddressGroup || cfg.blocking.dry_run {
            return false;
        }
        if !leadership.window(t.name()).allows_writes() {
            info!(message = "Another instance leads this target; it executes the blocks.", target = t.name());
            return false;
        }
        match t.client.ensure_groups().await {
            Ok(()) => false,
            Err(error) if error.is_fatal() => {
                error!(message = "FortiGate refused our credentials at start. Check the API token and trusted hosts.",
                       %error, target = t.name());
                t.metrics.unauthorized.set(1);
                true
            }
            Err(error) => {
                warn!(message = "Could not ensure the block groups at start; each block retries it.", %error,
                      target = t.name());
                false
            }
        }
    }))
    .await;

    let decider_stop = CancellationToken::new();
    let blocker_stop = CancellationToken::new();
    let aux_stop = CancellationToken::new();

    // Readiness: MISP and the FortiGate probed, the journal, and the mirror's age (three sync intervals, at least
    // ten minutes, cover a slow full sync).
    let target_names = parts.targets.iter().map(|t| t.name().to_string()).collect();
    let mut readiness = Readiness::new(target_names, cfg.blocking.healthy_share);
    if let Some(interval) = cfg.misp.sync_interval {
        readiness = readiness.with_mirror((interval * 3).max(Duration::from_secs(600)));
    }
    // The metrics server is fatal when it dies: without it nothing reports liveness, and a prober would restart
    // the daemon anyway.
    if let Some(listener) = metrics_listener {
        let (m, h, r, stop) = (parts.metrics.clone(), supervisor.health().clone(), readiness.clone(), aux_stop.clone());
        tracker.spawn(supervisor.fatal("metrics", async move {
            if let Err(error) = metrics::serve(listener, m, h, r, stop).await {
                error!(message = "Metrics server failed.", %error);
            }
        }));
        let probed: Vec<ready::ProbedTarget> = parts
            .targets
            .iter()
            .map(|t| ready::ProbedTarget { client: t.client.clone(), metrics: t.metrics.clone() })
            .collect();
        let (misp, stop) = (parts.misp.clone(), aux_stop.clone());
        tracker.spawn(supervisor.restarting("readiness", aux_stop.clone(), move || {
            ready::probe(misp.clone(), probed.clone(), readiness.clone(), stop.clone())
        }));
    }

    let shared_mirror: SharedMirror = Arc::new(RwLock::new(None));
    let mirror_changed = Arc::new(tokio::sync::watch::channel(0u64).0);
    if let Some(interval) = cfg.misp.sync_interval {
        // A restarted mirror starts with a full sync; the shared set keeps its last good state meanwhile.
        let mirror = Mirror {
            client: parts.misp.clone(),
            config: cfg.misp.clone(),
            shared: shared_mirror.clone(),
            metrics: parts.metrics.clone(),
            changed: mirror_changed.clone(),
        };
        let stop = aux_stop.clone();
        tracker.spawn(supervisor.restarting("mirror", aux_stop.clone(), move || {
            mirror.clone().run(interval, stop.clone()).instrument(tracing::info_span!("mirror"))
        }));
    }

    // Daily journal pruning ([`prune_journal`]).
    {
        let journal = parts.journal.clone();
        let stop = aux_stop.clone();
        tracker.spawn(supervisor.restarting("journal_prune", aux_stop.clone(), move || {
            let (journal, stop) = (journal.clone(), stop.clone());
            prune_journal(journal, stop)
        }));
    }

    if let (Some(feed_parts), Some(feed_cfg)) = (&parts.feed, &cfg.feed) {
        start_feeds(
            &parts,
            feed_parts,
            feed_cfg,
            FeedTasks {
                server: feed_server,
                events: feed_event_rx,
                mirror: shared_mirror.clone(),
                mirror_changed: mirror_changed.subscribe(),
            },
            &supervisor,
            &tracker,
            &aux_stop,
        )
        .await;
    }

    // One blocker per target: a target that is down, slow or refusing the token holds only its own blocks.
    let mut blocker_tasks = Vec::with_capacity(parts.targets.len());
    for (i, rx) in target_rxs.into_iter().enumerate() {
        let executor = Executor { background_sightings: true, ..parts.executor_of(i, false) };
        let name = parts.targets[i].name();
        let mut blocker = Blocker::new(executor, cfg.blocking.max_blocks_per_minute)
            .with_fatal_pause(fatal_pause)
            .with_gate(leadership.gate(name));
        blocker.resume_pending().await;
        // A task's name lives as long as the process (the supervisor's health map keys on it); one per target.
        let task: &'static str =
            if parts.targets.len() == 1 { "blocker" } else { Box::leak(format!("blocker:{name}").into_boxed_str()) };
        let span = tracing::info_span!("blocker", target = %name);
        blocker_tasks.push(tokio::spawn(
            supervisor.fatal(task, blocker.run(rx, blocker_stop.clone(), Duration::from_secs(3)).instrument(span)),
        ));
    }
    let fan_out_task = tokio::spawn(supervisor.fatal("fan_out", fan_out(block_rx, target_txs)));

    let mut decider = parts.decider(shared_mirror.clone());
    let parts_ref = &parts;
    let unrefused = (0..parts.targets.len()).filter(|i| !refused_at_start[*i]);
    let known = futures::future::join_all(unrefused.map(|i| async move { (i, parts_ref.known_blocks(i).await) })).await;
    for (i, ips) in known {
        decider.seed_blocked(i, ips);
    }
    let decider_task = tokio::spawn(supervisor.fatal(
        "decider",
        decider.run(candidate_rx, block_tx, decider_stop.clone()).instrument(tracing::info_span!("decider")),
    ));
    let backends: Vec<String> = parts.targets.iter().map(|t| format!("{}={}", t.name(), t.config.backend)).collect();
    info!(message = "fortimisp integration running.", targets = %backends.join(","), scope = %cfg.blocking.scope,
          dry_run = cfg.blocking.dry_run, triggers = cfg.trigger.len(), mirror = cfg.misp.sync_interval.is_some());

    let failed = tokio::select! {
        _ = shutdown.cancelled() => None,
        task = supervisor.failed() => Some(task),
    };
    info!(message = "Shutting down.");
    supervisor.begin_shutdown();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
    // 1. Listeners stop (stream connections end with them); their Ingest handles drop, closing the candidate queue.
    listeners_stop.cancel();
    let _ = tokio::time::timeout_at(deadline, listeners.wait()).await;
    // 2. The decider drains its queue and in-flight lookups, then drops its output.
    let decider_deadline = deadline - Duration::from_secs(4);
    if tokio::time::timeout_at(decider_deadline, decider_task).await.is_err() {
        warn!(message = "Decision stage did not drain in time; its undecided candidates are dropped.");
        decider_stop.cancel();
    }
    // 3. The fan-out hands on what it holds (the blockers journal on receipt), then each blocker journals what
    // it received and lets running executions finish.
    let _ = tokio::time::timeout_at(decider_deadline + Duration::from_secs(1), fan_out_task).await;
    blocker_stop.cancel();
    let mut left = 0;
    for task in blocker_tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Some(n))) => left += n,
            Ok(_) => {}
            Err(_) => warn!(message = "A blocker did not stop in time; its pending actions are in the journal."),
        }
    }
    if left > 0 {
        info!(message = "Blocks left pending in the journal for the next start.", count = left);
    }
    // The blockers have stopped writing: the leases go at once, so another instance leads without waiting for
    // them to expire.
    leadership.release(Duration::from_secs(2)).await;
    aux_stop.cancel();
    // A journal running from memory gets one last chance to reach the file.
    if let Err(error) = parts.journal.flush().await {
        error!(message = "Journal entries buffered in memory could not be written before exit.", %error);
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
    info!(message = "Stopped.");
    match failed {
        Some(task) => anyhow::bail!("task {task} died; see the log above"),
        None => Ok(()),
    }
}

/// What [`start_feeds`] runs besides the state: the bound server, the events from ingest, the mirror to follow.
struct FeedTasks {
    server: Option<feed::serve::Bound>,
    events: mpsc::Receiver<fortimisp_core::feed::event::FeedEvent>,
    mirror: SharedMirror,
    mirror_changed: tokio::sync::watch::Receiver<u64>,
}

/// The threat-feed backend's tasks, all restarted when they die (each rebuilds from the shared state): the ledger
/// reader (seeded once before anything is served or pushed), the mirror follower (indicators mode), the HTTPS
/// server (pull), the pusher (push), and the confirmation from the FortiGate (events, entry-list status).
async fn start_feeds(
    parts: &Parts,
    feed_parts: &FeedParts,
    cfg: &fortimisp_core::config::Feed,
    tasks: FeedTasks,
    supervisor: &Supervisor,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    let state = feed_parts.state.clone();
    let feed_target = parts.feed_target().expect("feeds run for the threat-feed target");
    match parts.journal.active_blocks_of(feed_target.name()).await {
        Ok(ledger) => {
            let open =
                ledger.into_iter().filter(|b| b.backend == feed::BACKEND).map(|b| (b.ip, b.blocked_at.timestamp()));
            state.replace_blocked(open.collect());
        }
        Err(error) => warn!(message = "Journal cannot be read at start; the threat feeds wait for it.", %error),
    }
    {
        let (journal, state, stop2) = (parts.journal.clone(), state.clone(), stop.clone());
        let target = feed_target.name().to_string();
        tracker.spawn(supervisor.restarting("feed_ledger", stop.clone(), move || {
            feed::follow_ledger(journal.clone(), target.clone(), state.clone(), feed::LEDGER_EVERY, stop2.clone())
        }));
    }
    {
        let (state, stop2) = (state.clone(), stop.clone());
        tracker.spawn(
            supervisor.restarting("feed_builder", stop.clone(), move || feed::keep_built(state.clone(), stop2.clone())),
        );
    }
    if cfg.contents == fortimisp_core::config::Contents::Indicators {
        let (mirror, changed, never, state, stop2) =
            (tasks.mirror, tasks.mirror_changed, parts.never_block.clone(), state.clone(), stop.clone());
        tracker.spawn(supervisor.restarting("feed_indicators", stop.clone(), move || {
            feed::follow_mirror(mirror.clone(), changed.clone(), never.clone(), state.clone(), stop2.clone())
        }));
    }
    if let Some(server) = tasks.server {
        if let Ok(addr) = server.local_addr() {
            info!(message = "Serving threat feeds.", %addr, feeds = ?state.names().all());
        }
        let server = Arc::new(server);
        let source: Arc<dyn feed::serve::Source> = state.clone();
        let (metrics, stop2) = (parts.metrics.clone(), stop.clone());
        tracker.spawn(supervisor.restarting("feed_server", stop.clone(), move || {
            server.clone().serve(source.clone(), metrics.clone(), stop2.clone())
        }));
    }
    if let Some(pusher) = &feed_parts.pusher {
        let (pusher, stop2) = (pusher.clone(), stop.clone());
        tracker.spawn(supervisor.restarting("feed_pusher", stop.clone(), move || {
            let (pusher, stop) = (pusher.clone(), stop2.clone());
            async move { pusher.run(stop).await }
        }));
    }
    let confirm = Arc::new(Confirm { state: state.clone(), metrics: parts.metrics.clone() });
    {
        // One receiver for every run of the task (a tokio mutex: a panic releases it, and the restart locks it again).
        let events = Arc::new(tokio::sync::Mutex::new(tasks.events));
        let (confirm, stop2) = (confirm.clone(), stop.clone());
        tracker.spawn(supervisor.restarting("feed_events", stop.clone(), move || {
            let (confirm, events, stop) = (confirm.clone(), events.clone(), stop2.clone());
            async move { confirm.events(&mut *events.lock().await, stop).await }
        }));
    }
    {
        let (confirm, transport, every, stop2) =
            (confirm.clone(), feed_target.client.transport().clone(), cfg.status_interval, stop.clone());
        tracker.spawn(supervisor.restarting("feed_status", stop.clone(), move || {
            let (confirm, transport, stop) = (confirm.clone(), transport.clone(), stop2.clone());
            async move { confirm.poll(&transport, every, stop).await }
        }));
    }
}

/// The audit trail would grow forever: once a day, forget finished actions and decisions older than a year
/// (pending actions and open blocks are never pruned).
async fn prune_journal(journal: Journal, stop: CancellationToken) {
    let mut daily = tokio::time::interval(JOURNAL_PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = daily.tick() => {}
        }
        let cutoff = chrono::Utc::now() - chrono::Duration::days(JOURNAL_KEEP_DAYS);
        match journal.prune(cutoff).await {
            Ok(pruned) => info!(
                message = "Journal pruned.",
                decisions = pruned.decisions,
                actions = pruned.actions,
                blocks = pruned.blocks
            ),
            Err(error) => warn!(message = "Journal pruning failed.", %error),
        }
    }
}
