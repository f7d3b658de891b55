//! The blocking stage: journal first, then the FortiGate, retried until done.
//!
//! One [`Blocker`] per FortiGate target, each with its own executor, rate rail, retries and pause, so a target
//! that is down, slow or refusing the token holds only its own blocks (they wait in the journal under its name).
//!
//! Every [`BlockRequest`] is written to the journal as a pending action *before* any FortiGate call, so a crash,
//! a SIGKILL or an outage loses nothing: at start the [`Blocker`] resumes every pending block from the journal.
//!
//! [`Executor::execute`] is the one code path that changes the FortiGate for a block; the daemon's [`Blocker`]
//! task and the hand-run `integration block` both call it. It re-checks the never-block list right before the
//! write (defence in depth), honours `dry_run` (the decision is journaled, but no action is enqueued, and none a
//! real run left pending is resumed, so none is completed as skipped), and classifies the outcome:
//! - done (created, or already there) → journal `done`, block ledger, optional MISP sighting;
//! - retryable (timeouts, 5xx, 429) → stays pending, retried with capped exponential backoff;
//! - fatal (401/403: token revoked, not a trusted host) → every write pauses for [`FATAL_PAUSE`], an alert
//!   metric is set, actions stay pending in the journal;
//! - permanent (a foreign object with our name, an invalid name) → journal `failed` with the reason.
//!
//! `max_blocks_per_minute` is a token bucket in front of the executor; what exceeds it waits in the queue (and
//! the journal) and sets the `block_rate_limited` alert metric.
//!
//! In a cluster (a PostgreSQL journal shared by several instances) the [`Blocker`] of every instance journals
//! what its decider sends, but only the target's leader executes: the blocker asks its [`Gate`] before each
//! execution and gives it no longer than the lease window left. A follower holds nothing in memory; the leader
//! reads the target's pending queue from the store at each lease round, so it also executes what only another
//! instance decided.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fortimisp_core::cluster::{Gate, Leadership, Window};
use fortimisp_core::fortigate::{self, Comment, CommentKind};
use fortimisp_core::indicators::{format_uuid, Hit};
use fortimisp_core::journal::{
    ActionId, ActionKind, BlockRecord, Decision, Journal, NewAction, Outcome, PendingAction, PendingQuery,
};
use fortimisp_core::metrics::{Stage, TargetMetrics};
use fortimisp_core::policy::NeverBlock;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::delay_queue::{DelayQueue, Expired};
use tracing::{error, info, warn};

use crate::decide::BlockRequest;
use fortimisp_core::fleet::TargetSet;

/// How long every write pauses after the FortiGate refused the token (retrying sooner extends its lockout).
pub const FATAL_PAUSE: Duration = Duration::from_secs(300);
/// Block executions in flight at once (the FortiGate client's own rate limit applies below this).
pub const MAX_IN_FLIGHT: usize = 8;
/// Block jobs held in memory at once (ready, waiting for a retry, running); the rest wait in the journal.
pub const WINDOW: usize = 1_024;
/// Longest wait between two attempts of one action.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// What a backend did for one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Blocked { object: String, group: Option<String> },
    AlreadyBlocked { object: String, group: Option<String> },
}

/// The FortiGate side of a block: address-group or banned-ip.
pub trait Backend: Send + Sync + 'static {
    fn block(&self, ip: IpAddr, comment: &Comment) -> impl Future<Output = Result<Applied, fortigate::Error>> + Send;
    /// `address-group` or `banned-ip`.
    fn name(&self) -> &'static str;
}

/// Adds a MISP sighting after a block (best effort).
pub trait Sighter: Send + Sync + 'static {
    fn sight(&self, ip: IpAddr) -> impl Future<Output = Result<(), String>> + Send;
}

/// One block to carry out.
#[derive(Debug, Clone)]
pub struct Job {
    /// The journal's id; `None` in a dry run, or if even the journal's memory fallback refused it.
    pub action: Option<ActionId>,
    pub ip: IpAddr,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
    pub comment: Comment,
    pub reason: String,
    pub received: Option<Instant>,
    pub attempts: u32,
    /// Whether this target adds the MISP sighting: one per decision, by its first target (a block read back from
    /// the journal or made by hand: the first target of the config).
    pub sights: Option<bool>,
    /// Read back from the journal with the address's block open in the ledger (another instance of a cluster
    /// did it after this one was decided, or a crash lost its completion).
    pub ledger_open: bool,
}

impl Job {
    /// A block read back from the journal: the comment decided at the time (creation time, event, indicator) is
    /// rebuilt from its stored text.
    fn resumed(p: PendingAction) -> Job {
        let event = p.event_id.map(|e| e.to_string()).unwrap_or_else(|| "manual".into());
        let comment = match p.comment.as_deref().map(Comment::parse) {
            Some(CommentKind::Ours(m)) => Comment::new(m.created_at, m.event_id.as_deref().unwrap_or(&event), &m.rest),
            _ => Comment::new(p.requested_at, &event, "resumed"),
        };
        Job {
            action: Some(p.id),
            ip: p.ip,
            event_id: p.event_id,
            rule: p.rule,
            comment,
            reason: p.reason,
            received: None,
            attempts: p.attempts,
            sights: None,
            ledger_open: p.ledger_open,
        }
    }
}

/// How one execution ended.
#[derive(Debug)]
pub enum Executed {
    Done(Applied),
    /// Already in the ledger (done under another request): no FortiGate call.
    Taken,
    DryRun,
    Protected(String),
    Retry(String),
    Fatal(String),
    Failed(String),
}

/// Carries out blocks. Shared by the daemon and the `block` subcommand.
pub struct Executor<B: Backend, S: Sighter> {
    pub backend: B,
    pub sighter: Option<Arc<S>>,
    /// The target's index in the config (`TargetSet` bit): which executor adds a decision's sighting.
    pub index: usize,
    /// Sightings run in a task of their own (the daemon: a slow MISP must not hold a block slot); otherwise they
    /// are awaited (hand-run commands, which exit right after).
    pub background_sightings: bool,
    pub journal: Journal,
    pub never_block: NeverBlock,
    pub dry_run: bool,
    /// The target it writes to: its name and its metrics.
    pub target: TargetMetrics,
}

impl<B: Backend, S: Sighter> Executor<B, S> {
    /// Journals a new block decision as pending (not in a dry run) and returns the job to execute.
    pub async fn enqueue(&self, request: &BlockRequest) -> Job {
        let event_id = (request.hit.entry.event_id != 0).then_some(request.hit.entry.event_id);
        let more = match &request.note {
            Some(note) => note.clone(),
            None => format!(
                "indicator={} attr={} rule={}",
                request.hit.network,
                format_uuid(request.hit.entry.uuid),
                request.rule.map(|r| r.to_string()).unwrap_or_else(|| "-".into())
            ),
        };
        let event_label = event_id.map(|e| e.to_string()).unwrap_or_else(|| "manual".into());
        let comment = Comment::new(Utc::now(), &event_label, &more);
        let reason = match (event_id, request.rule) {
            (Some(e), Some(r)) => format!("misp-event={e} rule={r}"),
            (Some(e), None) => format!("misp-event={e}"),
            (None, _) => "manual".to_string(),
        };
        // A dry run changes nothing, the journal's work queue included: enqueueing would hand back (and then
        // complete as skipped) a real block another run left pending for the same address. `execute` journals
        // the decision only.
        let id = if self.dry_run {
            None
        } else {
            self.journal_action(request.ip, &reason, event_id, request.rule, &comment).await
        };
        Job {
            action: id,
            ip: request.ip,
            event_id,
            rule: request.rule,
            comment,
            reason,
            received: Some(request.received),
            attempts: 0,
            sights: request.targets.iter().next().map(|first| first == self.index),
            ledger_open: false,
        }
    }

    /// Queues the block as pending in the journal; `None` only if even the journal's memory fallback refused it.
    async fn journal_action(
        &self,
        ip: IpAddr,
        reason: &str,
        event_id: Option<u64>,
        rule: Option<usize>,
        comment: &Comment,
    ) -> Option<ActionId> {
        let action = NewAction {
            target: self.target.target().to_string(),
            kind: ActionKind::Block,
            ip,
            reason: reason.to_string(),
            event_id,
            rule,
            comment: Some(comment.as_str().to_string()),
            requested_at: Utc::now(),
        };
        match self.journal.enqueue(&action).await {
            Ok(id) => Some(id),
            Err(error) => {
                // The journal keeps a memory copy when the file fails; an error here means even that failed.
                error!(message = "Journal refused a block; executing without a durable record.", %error, %ip);
                None
            }
        }
    }

    /// Executes one block and journals its outcome. The caller reports it (the daemon's [`Blocker`] logs it,
    /// `integration block` prints it), so a hand-run block prints its outcome once, not as a log line too.
    pub async fn execute(&self, job: &Job) -> Executed {
        if let Some(protected) = self.never_block.check(job.ip) {
            let reason = format!("protected: {protected}");
            self.finish(job, Outcome::Skipped { reason: reason.clone() }, "never-block", &reason).await;
            return Executed::Protected(reason);
        }
        // A decided block the ledger already holds (every instance of a cluster decides each line; the leader
        // did it under another instance's request): completed without a second FortiGate call. A hand-run block
        // (no event) is always carried out: it is how an operator repairs an object deleted on the FortiGate.
        if job.ledger_open && job.event_id.is_some() && !self.dry_run {
            self.target.block("already_blocked");
            self.finish(job, Outcome::Done, "block", &job.reason).await;
            return Executed::Taken;
        }
        if self.dry_run {
            self.target.block("dry_run");
            self.finish(job, Outcome::Skipped { reason: "dry_run".into() }, "dry-run", &job.reason).await;
            return Executed::DryRun;
        }
        let result = self.backend.block(job.ip, &job.comment).await;
        match result {
            Ok(applied) => {
                let (outcome, object, group) = match &applied {
                    Applied::Blocked { object, group } => ("blocked", object.clone(), group.clone()),
                    Applied::AlreadyBlocked { object, group } => ("already_blocked", object.clone(), group.clone()),
                };
                self.target.block(outcome);
                if let Some(received) = job.received {
                    self.target.block_latency(received.elapsed().as_secs_f64());
                }
                let record = BlockRecord {
                    target: self.target.target().to_string(),
                    ip: job.ip,
                    object,
                    group,
                    event_id: job.event_id,
                    rule: job.rule,
                    reason: job.reason.clone(),
                    blocked_at: Utc::now(),
                    backend: self.backend.name().to_string(),
                };
                if let Err(error) = self.journal.record_block(&record).await {
                    warn!(message = "Could not record the block in the journal ledger.", %error, ip = %job.ip);
                }
                self.finish(job, Outcome::Done, "block", &job.reason).await;
                let sights = job.sights.unwrap_or(self.index == 0);
                if let (Some(sighter), Applied::Blocked { .. }, true) = (&self.sighter, &applied, sights) {
                    let (sighter, ip) = (sighter.clone(), job.ip);
                    let sight = async move {
                        if let Err(error) = sighter.sight(ip).await {
                            warn!(message = "MISP sighting failed.", %error, %ip);
                        }
                    };
                    if self.background_sightings {
                        tokio::spawn(sight);
                    } else {
                        sight.await;
                    }
                }
                Executed::Done(applied)
            }
            Err(error) if error.is_fatal() => Executed::Fatal(error.to_string()),
            Err(error) if error.is_retryable() => {
                self.target.block("retry");
                let text = error.to_string();
                if let Some(id) = job.action {
                    if let Err(error) = self.journal.record_attempt(id, &text).await {
                        warn!(message = "Could not journal a failed attempt.", %error, ip = %job.ip);
                    }
                }
                Executed::Retry(text)
            }
            Err(error) => {
                let outcome = if matches!(error, fortigate::Error::Foreign { .. }) { "foreign" } else { "failed" };
                self.target.block(outcome);
                let reason = error.to_string();
                self.finish(job, Outcome::Failed { reason: reason.clone() }, "failed", &reason).await;
                Executed::Failed(reason)
            }
        }
    }

    async fn finish(&self, job: &Job, outcome: Outcome, verdict: &str, detail: &str) {
        let decision = Decision {
            at: Utc::now(),
            target: Some(self.target.target().to_string()),
            ip: job.ip,
            verdict: verdict.to_string(),
            detail: detail.to_string(),
            event_id: job.event_id,
            rule: job.rule,
        };
        let result = match self.journal.record_decision(&decision).await {
            Ok(()) => match job.action {
                Some(id) => self.journal.complete(id, &outcome).await,
                None => Ok(()),
            },
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            warn!(message = "Could not journal an outcome.", %error, ip = %job.ip);
        }
    }
}

/// The token bucket behind `max_blocks_per_minute`, kept as a theoretical arrival time (GCRA) in integer time:
/// a full bucket of `per_minute` tokens, one more every `60 s / per_minute`. No floating point, so the time of the
/// next token is always strictly later than a refused take (a float bucket could sit at 0.999… tokens and ask to
/// be woken 0 ns later, forever).
#[derive(Debug)]
struct RateLimit {
    /// Time between two tokens.
    interval: Duration,
    /// How far ahead of now the arrival time may run: `(per_minute - 1) × interval` (the burst).
    burst: Duration,
    /// When the bucket will be full again (the theoretical arrival time of the next take).
    tat: Instant,
}

impl RateLimit {
    fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        RateLimit { interval, burst: interval * (per_minute - 1), tat: Instant::now() }
    }

    fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let tat = self.tat.max(now);
        if tat.duration_since(now) <= self.burst {
            self.tat = tat + self.interval;
            true
        } else {
            false
        }
    }

    /// When the next token will be there (strictly after a refused [`try_take`](Self::try_take)).
    fn next_token(&self) -> Instant {
        self.tat - self.burst
    }
}

/// The wait before the next attempt of an action that failed `attempts` times.
fn backoff(attempts: u32) -> Duration {
    fortimisp_core::backoff::Backoff::new(Duration::from_secs(1), MAX_BACKOFF).delay(attempts)
}

/// The daemon's blocking task.
///
/// It holds at most [`WINDOW`] jobs in memory (ready, waiting for a retry, or running). Every request is
/// journaled on receipt; one that finds the window full (or older blocks still waiting in the journal) stays in
/// the journal only and is read back, oldest first, as room frees up. So a campaign of a hundred thousand hits, a
/// long FortiGate outage or the `max_blocks_per_minute` rail costs journal rows, not memory. The input channel is
/// bounded too ([`crate::run::BLOCK_QUEUE`]): while the blocker is busy journaling, the decider waits on it.
pub struct Blocker<B: Backend, S: Sighter> {
    executor: Arc<Executor<B, S>>,
    rate: RateLimit,
    /// Jobs due now, waiting for an execution slot or a rate token, oldest first.
    ready: VecDeque<Job>,
    /// Jobs waiting for their retry time (a timer wheel: no scan of the queue per event).
    retries: DelayQueue<Job>,
    /// Executions in flight (at most [`MAX_IN_FLIGHT`]).
    running: JoinSet<(Job, Executed)>,
    /// The addresses of every job held in memory (and, in hand-run mode, of those given up): a pending block in
    /// the journal for one of them is not read back a second time.
    held: HashSet<IpAddr>,
    /// Pending blocks may wait in the journal that are not held in memory.
    more_in_journal: bool,
    /// How many, as of the last read of the journal plus those deferred since (for the gauge).
    in_journal: usize,
    paused_until: Option<Instant>,
    /// Hand-run mode ([`Blocker::leaving_failures_pending`]): what cannot be done now is not retried here.
    leave_failures_pending: bool,
    /// How long writes pause after the FortiGate refused the token ([`FATAL_PAUSE`]; tests shorten it).
    fatal_pause: Duration,
    /// The jobs held, as last added to the shared `queue_depth{stage="block"}` gauge (every target's blocker
    /// adds its own share).
    published_held: i64,
    /// Blocks given up by this run and left pending in the journal (hand-run mode).
    left_pending: usize,
    /// Whether this instance may write to the target now (always, without a cluster).
    gate: Gate,
}

impl<B: Backend, S: Sighter> Blocker<B, S> {
    pub fn new(executor: Executor<B, S>, max_blocks_per_minute: u32) -> Self {
        Blocker {
            executor: Arc::new(executor),
            rate: RateLimit::new(max_blocks_per_minute),
            ready: VecDeque::new(),
            retries: DelayQueue::new(),
            running: JoinSet::new(),
            held: HashSet::new(),
            more_in_journal: false,
            in_journal: 0,
            paused_until: None,
            leave_failures_pending: false,
            left_pending: 0,
            fatal_pause: FATAL_PAUSE,
            published_held: 0,
            gate: Leadership::solo().gate(""),
        }
    }

    /// Executes only while `gate` opens a write window (the target's lease in a cluster).
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = gate;
        self
    }

    /// The write window now: a dry run writes nothing, so it never waits for a lease.
    fn window(&self) -> Window {
        if self.executor.dry_run {
            Window::Solo
        } else {
            self.gate.window()
        }
    }

    /// Lost the lease (or never had it): the ready jobs go back to the journal, where the leader finds them; they
    /// are read again if this instance leads later. A job waiting for its retry time comes back through `ready`
    /// when it is due; running executions end within their window.
    fn step_down(&mut self) {
        if self.ready.iter().all(|j| j.action.is_none()) {
            return;
        }
        // Only jobs the journal holds can be left to it (a job without an action id stays).
        let (journaled, kept): (VecDeque<Job>, VecDeque<Job>) = self.ready.drain(..).partition(|j| j.action.is_some());
        self.ready = kept;
        for job in journaled {
            self.held.remove(&job.ip);
        }
        self.more_in_journal = true;
    }

    /// Pauses this long after a refused token instead of [`FATAL_PAUSE`] (the debug builds' test hook).
    pub fn with_fatal_pause(mut self, pause: Duration) -> Self {
        self.fatal_pause = pause;
        self
    }

    /// Hand-run mode (`replay`): a block that cannot be done now (a retryable error, or a refused token) is not
    /// retried here but left pending in the journal, where the daemon resumes it; so [`Blocker::run`] ends once
    /// its input is closed and every block was tried, instead of retrying through an outage forever.
    pub fn leaving_failures_pending(mut self) -> Self {
        self.leave_failures_pending = true;
        self
    }

    /// Reads the blocks a previous run left pending in the journal (the first [`WINDOW`] of them; the rest are
    /// read as room frees up). Returns how many are pending. In a dry run nothing is resumed: those blocks stay
    /// pending for a run that may change the FortiGate.
    pub async fn resume_pending(&mut self) -> usize {
        if self.executor.dry_run {
            return 0;
        }
        self.more_in_journal = true;
        let n = self.read_journal().await;
        if n > 0 {
            info!(message = "Resuming pending blocks from the journal.", count = n);
        }
        n
    }

    /// Jobs held in memory.
    fn held_jobs(&self) -> usize {
        self.ready.len() + self.retries.len() + self.running.len()
    }

    /// Moves the oldest pending blocks that are not held yet from the journal into the window. Returns how many
    /// were pending outside memory before the read.
    async fn read_journal(&mut self) -> usize {
        let room = WINDOW.saturating_sub(self.held_jobs());
        // This target's oldest pending blocks: the held ones are among them, and `room` more are wanted.
        let target = self.executor.target.target();
        let journal = &self.executor.journal;
        let query = PendingQuery::blocks_of(target, self.held.len() + room);
        let (pending, count) = match (journal.pending_where(query.clone()).await, journal.count_pending(query).await) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(error), _) | (_, Err(error)) => {
                // Left for the next turn: `more_in_journal` stays set.
                error!(message = "Could not read pending actions from the journal.", %error, target);
                return 0;
            }
        };
        let held_pending = pending.iter().filter(|p| self.held.contains(&p.ip)).count();
        let waiting: Vec<PendingAction> = pending.into_iter().filter(|p| !self.held.contains(&p.ip)).collect();
        let total = count.saturating_sub(held_pending).max(waiting.len());
        for p in waiting.into_iter().take(room) {
            self.held.insert(p.ip);
            self.ready.push_back(Job::resumed(p));
        }
        self.in_journal = total.saturating_sub(room);
        self.more_in_journal = self.in_journal > 0;
        total
    }

    /// Journals a new request and holds it if the window has room and nothing older waits in the journal.
    async fn receive(&mut self, request: BlockRequest) {
        let job = self.executor.enqueue(&request).await;
        if self.held.contains(&job.ip) {
            // Already held (the journal keeps one pending block per address): nothing more to do.
            return;
        }
        // A job the journal could not record (a dry run, or even its memory copy failed) cannot be read back
        // later, so it is held whatever the window says.
        let leads = self.window().allows_writes();
        if job.action.is_none() || (leads && !self.more_in_journal && self.held_jobs() < WINDOW) {
            self.held.insert(job.ip);
            self.ready.push_back(job);
        } else {
            self.more_in_journal = true;
            // A follower's count comes from the store at each round (another instance may have done it already).
            if leads {
                self.in_journal += 1;
            }
        }
    }

    /// A follower's view of the target's queue: how many actions wait in the store (for the pending gauge).
    async fn count_journal(&mut self) {
        let target = self.executor.target.target();
        match self.executor.journal.count_pending(PendingQuery::blocks_of(target, 0)).await {
            Ok(n) => self.in_journal = n,
            Err(error) => warn!(message = "Could not count pending actions in the journal.", %error, target),
        }
    }

    /// Runs until the input closes (and every job is done) or `shutdown` fires; then lets in-flight executions
    /// finish (bounded by `drain`). Whatever is still queued stays pending in the journal for the next start.
    /// Returns how many blocks it leaves pending in the journal.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<BlockRequest>,
        shutdown: CancellationToken,
        drain: Duration,
    ) -> usize {
        let mut input_open = true;
        let clustered = self.gate.is_clustered() && !self.executor.dry_run;
        let mut round_passed = false;
        loop {
            let window = self.window();
            self.executor.target.set_role(window);
            let round = std::mem::take(&mut round_passed);
            if window.allows_writes() {
                // What other instances decided is read from the store.
                self.more_in_journal |= round;
            } else {
                self.step_down();
                if round {
                    self.count_journal().await;
                }
            }
            // Refill from the journal in pages, not per completion: one read serves a quarter of the window.
            if window.allows_writes() && self.more_in_journal && self.held_jobs() + WINDOW / 4 <= WINDOW {
                self.read_journal().await;
            }
            let dispatched = if window.allows_writes() { self.dispatch(window) } else { None };
            // A leader looks again when its window closes: cut off from the store, no round would wake it, and its
            // role (the gauge) must turn follower when its writes stop.
            let closes = window.closes_in().map(|d| Instant::now() + d + Duration::from_millis(1));
            let wake = [dispatched, closes].into_iter().flatten().min();
            self.publish_gauges();
            // Checked after dispatch: in hand-run mode it may just have given up the whole queue.
            if !input_open && self.held_jobs() == 0 && !self.more_in_journal {
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    let (job, executed) = joined.expect("block executions do not panic");
                    self.on_executed(job, executed);
                }
                Some(expired) = next_expired(&mut self.retries), if !self.retries.is_empty() => {
                    self.ready.push_back(expired.into_inner());
                }
                request = input.recv(), if input_open => match request {
                    Some(request) => self.receive(request).await,
                    None => input_open = false,
                },
                _ = sleep_until_opt(wake) => {}
                // Each lease round: a leader looks at the store's queue (what other instances decided), a
                // follower checks whether it leads now.
                _ = self.gate.next_round(), if clustered => round_passed = true,
            }
        }
        // Shutdown: no new executions; the running ones finish (each is journaled either way).
        let deadline = Instant::now() + drain;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(Ok((job, executed)))) => self.on_executed(job, executed),
                Ok(_) => break,
                Err(_) => {
                    warn!(
                        message = "Shutdown deadline reached; unfinished blocks stay pending in the journal.",
                        running = self.running.len()
                    );
                    self.left_pending += self.running.len();
                    self.running.abort_all();
                    break;
                }
            }
        }
        // Requests that reached the channel but not the journal yet are journaled now, so nothing is lost.
        input.close();
        while let Ok(request) = input.try_recv() {
            self.executor.enqueue(&request).await;
            self.left_pending += 1;
        }
        self.publish_gauges();
        self.left_pending + self.ready.len() + self.retries.len() + self.in_journal
    }

    /// Starts what can start now. Returns when the loop must look again if nothing else happens (the end of a
    /// pause, or the next rate token), or `None`.
    fn dispatch(&mut self, window: Window) -> Option<Instant> {
        let now = Instant::now();
        if let Some(until) = self.paused_until.filter(|until| *until > now) {
            if self.leave_failures_pending && (!self.ready.is_empty() || !self.retries.is_empty()) {
                let count = self.ready.len() + self.retries.len();
                warn!(
                    message = "FortiGate writes are paused; blocks left pending in the journal for the daemon.",
                    count
                );
                self.left_pending += count;
                self.ready.clear();
                self.retries.clear();
            }
            return Some(until);
        }
        if self.paused_until.take().is_some() {
            self.executor.target.unauthorized.set(0);
            info!(message = "Resuming FortiGate writes after the pause.", target = self.executor.target.target());
        }
        let mut limited = false;
        while self.running.len() < MAX_IN_FLIGHT {
            let Some(job) = self.ready.pop_front() else { break };
            // Retries of an already-counted action do not take a new token.
            if job.attempts == 0 && !self.rate.try_take() {
                limited = true;
                self.ready.push_front(job);
                break;
            }
            let executor = self.executor.clone();
            let limit = window.limit();
            self.running.spawn(async move {
                let executed = match limit {
                    // A leader's write must end before its lease can pass to another instance.
                    Some(limit) => tokio::time::timeout(limit, executor.execute(&job))
                        .await
                        .unwrap_or_else(|_| Executed::Retry("the lease window ended before the write did".into())),
                    None => executor.execute(&job).await,
                };
                (job, executed)
            });
        }
        // Logged on the transition only: this runs on every loop turn.
        let was_limited = self.executor.target.rate_limited.get() == 1;
        self.executor.target.rate_limited.set(i64::from(limited));
        if limited && !was_limited {
            warn!(
                message = "max_blocks_per_minute reached; further blocks wait in the journal.",
                waiting = self.ready.len() + self.in_journal,
                target = self.executor.target.target()
            );
        }
        limited.then(|| self.rate.next_token())
    }

    fn on_executed(&mut self, mut job: Job, executed: Executed) {
        match executed {
            Executed::Done(applied) => {
                let (outcome, object, group) = match &applied {
                    Applied::Blocked { object, group } => ("blocked", object, group),
                    Applied::AlreadyBlocked { object, group } => ("already_blocked", object, group),
                };
                info!(message = "Blocked.", ip = %job.ip, %object, group = group.as_deref().unwrap_or("-"),
                      reason = %job.reason, outcome);
                // The FortiGate took a write: whatever refused the token before (at start) is fixed.
                self.executor.target.unauthorized.set(0);
                self.held.remove(&job.ip);
            }
            Executed::Taken => {
                info!(message = "Already blocked (the journal's ledger has it): no FortiGate call.", ip = %job.ip,
                      reason = %job.reason);
                self.held.remove(&job.ip);
            }
            Executed::DryRun => {
                info!(message = "Dry run: would block.", ip = %job.ip, reason = %job.reason);
                self.held.remove(&job.ip);
            }
            Executed::Protected(reason) => {
                warn!(message = "Refusing to block a protected address.", ip = %job.ip, %reason);
                self.held.remove(&job.ip);
            }
            Executed::Failed(error) => {
                error!(message = "Block failed and will not be retried.", ip = %job.ip, %error);
                self.held.remove(&job.ip);
            }
            Executed::Retry(error) if self.leave_failures_pending => {
                warn!(message = "Block failed; left pending in the journal for the daemon.", ip = %job.ip, %error);
                self.left_pending += 1;
            }
            Executed::Retry(error) => {
                job.attempts += 1;
                let wait = backoff(job.attempts);
                warn!(message = "Block failed; will retry.", ip = %job.ip, %error, attempts = job.attempts,
                      retry_in = ?wait);
                self.retries.insert(job, wait);
            }
            Executed::Fatal(error) => {
                if self.paused_until.is_none() {
                    error!(message = "FortiGate refused our credentials; pausing its writes. Check the API token and trusted hosts.",
                           %error, pause = ?self.fatal_pause, target = self.executor.target.target());
                }
                self.executor.target.unauthorized.set(1);
                self.paused_until = Some(Instant::now() + self.fatal_pause);
                self.ready.push_front(job);
            }
        }
    }

    fn publish_gauges(&mut self) {
        let target = &self.executor.target;
        target.pending.set((self.ready.len() + self.retries.len() + self.in_journal) as i64);
        let held = self.held_jobs() as i64;
        target.all().queue_depth.get_or_create(&Stage { stage: "block" }).inc_by(held - self.published_held);
        self.published_held = held;
        target.all().journal_degraded.set(i64::from(self.executor.journal.is_degraded()));
    }
}

/// The next retry whose time has come.
async fn next_expired(retries: &mut DelayQueue<Job>) -> Option<Expired<Job>> {
    std::future::poll_fn(|cx| retries.poll_expired(cx)).await
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A block request made by hand (`integration block IP`): no MISP hit behind it (event id 0 marks it manual).
pub fn manual_request(ip: IpAddr, note: String) -> BlockRequest {
    use fortimisp_core::indicators::Entry;
    let hit = Hit { network: ip.into(), entry: Entry { event_id: 0, uuid: 0, timestamp: 0 } };
    BlockRequest { ip, targets: TargetSet::EMPTY, hit, rule: None, received: Instant::now(), note: Some(note) }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use fortimisp_core::metrics::Metrics;

    use super::*;

    /// A FortiGate that takes every block, recording the order, and fails the first `failures` calls per address.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<IpAddr>>,
        failures: u32,
    }

    impl Backend for Arc<Fake> {
        async fn block(&self, ip: IpAddr, _comment: &Comment) -> Result<Applied, fortigate::Error> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(ip);
            let attempts = calls.iter().filter(|c| **c == ip).count() as u32;
            if attempts <= self.failures {
                return Err(fortigate::Error::Http { status: 503 });
            }
            Ok(Applied::Blocked { object: format!("misp-{ip}"), group: None })
        }
        fn name(&self) -> &'static str {
            "address-group"
        }
    }

    struct NoSightings;
    impl Sighter for NoSightings {
        async fn sight(&self, _ip: IpAddr) -> Result<(), String> {
            Ok(())
        }
    }

    fn blocker(
        fake: &Arc<Fake>,
        journal: &Journal,
        per_minute: u32,
    ) -> (Blocker<Arc<Fake>, NoSightings>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let executor = Executor {
            backend: fake.clone(),
            sighter: None,
            index: 0,
            background_sightings: false,
            journal: journal.clone(),
            never_block: NeverBlock::new(Vec::new()),
            dry_run: false,
            target: TargetMetrics::new(metrics.clone(), "default"),
        };
        (Blocker::new(executor, per_minute), metrics)
    }

    /// Distinct public addresses (45.0.0.0/8; no traffic is sent).
    fn ip(n: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x2d00_0000u32 + n as u32))
    }

    async fn pending_blocks(journal: &Journal) -> usize {
        journal.pending_of(ActionKind::Block).await.unwrap().len()
    }

    fn journal() -> (Journal, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Journal::open(&dir.path().join("journal.db")).unwrap(), dir)
    }

    fn held(metrics: &Metrics) -> i64 {
        metrics.queue_depth.get_or_create(&Stage { stage: "block" }).get()
    }

    /// The bucket lets a burst of `per_minute` through, then one per interval; a refused take always names a
    /// later time (a float bucket stuck at 0.999… tokens asked to be woken 0 ns later, forever, and this test hung).
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_gives_a_burst_then_one_per_interval_and_always_a_later_wake() {
        for per_minute in [1, 7, 60, 600, 1_000_000] {
            let mut rate = RateLimit::new(per_minute);
            let burst = (0..per_minute + 5).take_while(|_| rate.try_take()).count();
            assert_eq!(burst, per_minute as usize, "burst at {per_minute}/min");
            let start = Instant::now();
            let mut taken = 0;
            while Instant::now() < start + Duration::from_secs(60) {
                if rate.try_take() {
                    taken += 1;
                    continue;
                }
                let wake = rate.next_token();
                assert!(wake > Instant::now(), "a refused take must wake later ({per_minute}/min)");
                tokio::time::sleep_until(wake).await;
            }
            // Within one token, or 0.01 % where the timer's 1 ms granularity ends the minute between tokens.
            let (expected, slack) = (per_minute as i64, (per_minute as i64 / 10_000).max(1));
            assert!((taken as i64 - expected).abs() <= slack, "{taken} takes in a minute at {per_minute}/min");
        }
    }

    /// Three windows' worth of hits against a rate limit that lets one through: memory holds at most a window,
    /// the rest wait in the journal, and once the limit allows, every block is done exactly once, oldest first.
    #[tokio::test(start_paused = true)]
    async fn memory_holds_one_window_the_rest_waits_in_the_journal_and_all_are_done_in_order() {
        let fake = Arc::new(Fake::default());
        let (journal, _dir) = journal();
        let (blocker, metrics) = blocker(&fake, &journal, 60);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(blocker.run(rx, CancellationToken::new(), Duration::from_secs(1)));
        let total = 3 * WINDOW;
        let mut max_held = 0;
        for n in 0..total {
            tx.send(manual_request(ip(n), "test".into())).await.unwrap();
            max_held = max_held.max(held(&metrics));
        }
        // Everything sent is in the journal before the channel drains; memory never held more than the window.
        while pending_blocks(&journal).await + fake.calls.lock().unwrap().len() < total {
            tokio::task::yield_now().await;
        }
        max_held = max_held.max(held(&metrics));
        assert!(max_held <= WINDOW as i64, "held {max_held} jobs in memory, window is {WINDOW}");
        assert!(pending_blocks(&journal).await > WINDOW, "the overflow waits in the journal");
        drop(tx);
        let left = task.await.unwrap();
        assert_eq!(left, 0);
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls, (0..total).map(ip).collect::<Vec<_>>(), "each block once, in arrival order");
        assert_eq!(pending_blocks(&journal).await, 0);
        assert_eq!(TargetMetrics::new(metrics.clone(), "default").pending.get(), 0);
    }

    /// Retries wait on their own timers until done (the journal's writer thread runs in real time while this
    /// test's clock is paused, so the order of first attempts and retries is not asserted).
    #[tokio::test(start_paused = true)]
    async fn failed_blocks_are_retried_on_timers_without_holding_back_the_queue() {
        let fake = Arc::new(Fake { failures: 2, ..Fake::default() });
        let (journal, _dir) = journal();
        let (blocker, metrics) = blocker(&fake, &journal, 600);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(blocker.run(rx, CancellationToken::new(), Duration::from_secs(1)));
        for n in 0..50 {
            tx.send(manual_request(ip(n), "test".into())).await.unwrap();
        }
        drop(tx);
        assert_eq!(task.await.unwrap(), 0);
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 150, "two failures and one success per address");
        let distinct: HashSet<IpAddr> = calls.iter().copied().collect();
        assert_eq!(distinct.len(), 50);
        assert_eq!(pending_blocks(&journal).await, 0);
        assert_eq!(TargetMetrics::new(metrics.clone(), "default").blocks("retry"), 100);
    }

    /// A second request for an address already held is not a second job.
    #[tokio::test(start_paused = true)]
    async fn a_repeated_request_for_a_held_address_is_one_job() {
        let fake = Arc::new(Fake { failures: 1, ..Fake::default() });
        let (journal, _dir) = journal();
        let (blocker, _) = blocker(&fake, &journal, 600);
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(blocker.run(rx, CancellationToken::new(), Duration::from_secs(1)));
        for _ in 0..5 {
            tx.send(manual_request(ip(1), "test".into())).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(fake.calls.lock().unwrap().len(), 2, "one failure, one success: one job");
    }

    /// A decided block that another instance of a cluster completed meanwhile (its ledger entry is open) is
    /// completed from the journal with no FortiGate call; a hand-run one (no event) is carried out all the same.
    #[tokio::test(start_paused = true)]
    async fn a_pending_block_already_in_the_ledger_costs_no_fortigate_call_unless_hand_run() {
        let fake = Arc::new(Fake::default());
        let (journal, _dir) = journal();
        for (n, event_id) in [(1, Some(7)), (2, None), (3, Some(7))] {
            let action = NewAction {
                target: "default".into(),
                kind: ActionKind::Block,
                ip: ip(n),
                reason: "misp-event=7".into(),
                event_id,
                rule: Some(0),
                comment: None,
                requested_at: Utc::now(),
            };
            journal.enqueue(&action).await.unwrap();
            if n != 3 {
                let record = BlockRecord {
                    target: "default".into(),
                    ip: ip(n),
                    object: format!("misp-{}", ip(n)),
                    group: None,
                    event_id,
                    rule: Some(0),
                    reason: "misp-event=7".into(),
                    blocked_at: Utc::now(),
                    backend: "address-group".into(),
                };
                journal.record_block(&record).await.unwrap();
            }
        }
        let (mut blocker, metrics) = blocker(&fake, &journal, 600);
        assert_eq!(blocker.resume_pending().await, 3);
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        assert_eq!(blocker.run(rx, CancellationToken::new(), Duration::from_secs(1)).await, 0);
        assert_eq!(fake.calls.lock().unwrap().clone(), [ip(2), ip(3)], "the hand-run one and the new one");
        assert_eq!(pending_blocks(&journal).await, 0, "all three completed");
        assert_eq!(TargetMetrics::new(metrics, "default").blocks("already_blocked"), 1);
    }
}
