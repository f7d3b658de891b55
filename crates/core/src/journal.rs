//! The journal: fortimisp's durable memory, one SQLite file (`[state] path`) shared by both daemons.
//!
//! It owns three tables and nothing else:
//! - `actions`, the work queue. Every block and unblock is [enqueued](Journal::enqueue) *before* it is attempted
//!   and [completed](Journal::complete) with an [`Outcome`] after. [`Journal::pending`] is what a restart resumes
//!   (after SIGKILL, a FortiGate outage, or a `max_blocks_per_minute` backlog). Finished rows stay as the record of
//!   what was done until [`Journal::prune`].
//! - `decisions`, the audit trail of verdicts: one row per distinct decision. A decision identical to the latest
//!   one for the same IP (verdict, detail, event, rule) bumps that row's `repeats` and `last_at` instead.
//! - `blocks`, the ledger of blocks fortimisp made: opened by [`Journal::record_block`], closed by
//!   [`Journal::record_unblock`]. [`Journal::active_blocks`] feeds `list` and housekeeping.
//!
//! It does not talk to MISP or the FortiGate, decide, retry on a timer or rate-limit: the daemons enqueue, execute
//! and complete; the journal remembers.
//!
//! # Invariants
//! - At most one *pending* action per (kind, IP), enforced by a partial unique index, so [`Journal::enqueue`] is
//!   idempotent across restarts and across the two processes.
//! - A write is never dropped silently. When SQLite refuses a write (disk full, permissions, file deleted or
//!   replaced, lock held longer than [`BUSY_TIMEOUT`]) the journal turns *degraded*: it logs one loud error (then at
//!   most one every minute while it lasts), keeps the write in memory, and keeps serving enqueue, pending and
//!   complete from its in-memory shadow of the pending queue. Every [`RETRY_INTERVAL`] (or on [`Journal::flush`])
//!   it writes the buffered entries back, in order, in one transaction. Only a crash while degraded loses them.
//! - Times are RFC 3339 UTC text with microseconds (fixed width, so text order is time order; sub-microsecond
//!   precision is dropped). IPs are text in Rust's canonical form. `sqlite3 state.db` is readable by an operator.
//!
//! # Design
//! The API is synchronous: one connection per process behind a mutex; the daemons call it from `spawn_blocking` or
//! a dedicated thread. The two daemons share the file through WAL mode and a busy timeout (SQLite serialises
//! writers). `synchronous = NORMAL` in WAL mode means a committed write survives a process crash (SIGKILL); only
//! an OS crash or power loss can drop the last transactions, a trade made to keep writes cheap.
//! The schema version lives in `PRAGMA user_version`; [`Journal::open`] applies the missing [`MIGRATIONS`] in
//! order and refuses a file written by a newer build.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, ToSql, TransactionBehavior};
use serde::Serialize;
use tracing::{error, info, warn};

/// How long a write waits for the other daemon's write lock. Longer counts as "unavailable": the write is
/// buffered in memory (degraded mode) rather than stalling the blocker. Kept well under the 10 s SIGTERM budget:
/// the writes of the two daemons take milliseconds, so a lock held this long means something is wrong.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(3);

/// While degraded, a write or `pending()` tries to write the buffered entries back at most this often.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// While degraded, the loud error is repeated at most this often (with the number of buffered entries).
const LOUD_INTERVAL: Duration = Duration::from_secs(60);

/// While degraded, at most this many decisions are buffered; further ones are counted and dropped (they are audit,
/// not work). Actions and ledger entries are never dropped: they are bounded by the block rate.
pub const MAX_BUFFERED_DECISIONS: usize = 10_000;

/// Prepared statements kept per connection; more than the journal's distinct statements, so none is re-prepared.
const STATEMENT_CACHE: usize = 32;

/// Schema migrations; `MIGRATIONS[i]` takes `user_version` from `i` to `i + 1`. Append, never edit.
pub const MIGRATIONS: &[&str] = &[
    // 1: actions, decisions, blocks.
    "
    CREATE TABLE actions (
        id           INTEGER PRIMARY KEY,
        kind         TEXT NOT NULL CHECK (kind IN ('block', 'unblock')),
        ip           TEXT NOT NULL,
        reason       TEXT NOT NULL,
        event_id     INTEGER,
        rule         INTEGER,
        comment      TEXT,
        requested_at TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        last_attempt_at TEXT,
        state        TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
        outcome      TEXT,
        finished_at  TEXT
    );
    CREATE UNIQUE INDEX actions_one_pending ON actions (kind, ip) WHERE state = 'pending';
    CREATE INDEX actions_queue ON actions (requested_at, id) WHERE state = 'pending';
    CREATE INDEX actions_finished ON actions (finished_at) WHERE state <> 'pending';

    CREATE TABLE decisions (
        id       INTEGER PRIMARY KEY,
        at       TEXT NOT NULL,
        last_at  TEXT NOT NULL,
        repeats  INTEGER NOT NULL DEFAULT 0,
        ip       TEXT NOT NULL,
        verdict  TEXT NOT NULL,
        detail   TEXT NOT NULL,
        event_id INTEGER,
        rule     INTEGER
    );
    CREATE INDEX decisions_ip ON decisions (ip);
    CREATE INDEX decisions_last_at ON decisions (last_at);

    -- object, reason, blocked_at and backend are NULL only for a removal of a block the ledger never saw.
    CREATE TABLE blocks (
        id             INTEGER PRIMARY KEY,
        ip             TEXT NOT NULL,
        object         TEXT,
        grp            TEXT,
        event_id       INTEGER,
        rule           INTEGER,
        reason         TEXT,
        blocked_at     TEXT,
        backend        TEXT,
        unblocked_at   TEXT,
        unblock_reason TEXT
    );
    CREATE UNIQUE INDEX blocks_active ON blocks (ip) WHERE unblocked_at IS NULL;
    CREATE INDEX blocks_closed ON blocks (unblocked_at) WHERE unblocked_at IS NOT NULL;
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What can go wrong with the journal. Writes refused by the disk are not errors (they degrade, see the module
/// doc); these are the failures the caller has to know about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal {}: cannot create its directory: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("journal {}: {source}", path.display())]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("journal {}: schema version {found} is newer than this build understands ({supported})", path.display())]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("journal {}: not open (degraded, working from memory)", path.display())]
    Unavailable { path: PathBuf },
    #[error("journal {}: the file was deleted or replaced while open", path.display())]
    Moved { path: PathBuf },
    #[error("journal: no action with id {0}")]
    UnknownAction(ActionId),
}

/// The id of a queued action. Ids of actions buffered in memory while degraded are negative; they stay valid after
/// the buffer is written back (the journal translates them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ActionId(i64);

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Block,
    Unblock,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Block => "block",
            ActionKind::Unblock => "unblock",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A block or unblock to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewAction {
    pub kind: ActionKind,
    pub ip: IpAddr,
    /// Why, for the operator: `misp-event=1234 rule=0`, `max_age`, `revoked`, `manual`.
    pub reason: String,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
    /// The FortiGate object comment to write, if the caller fixed it at decision time.
    pub comment: Option<String>,
    pub requested_at: DateTime<Utc>,
}

/// A queued action not yet completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingAction {
    pub id: ActionId,
    pub kind: ActionKind,
    pub ip: IpAddr,
    pub reason: String,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
    pub comment: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

impl PendingAction {
    fn new(id: i64, a: &NewAction) -> PendingAction {
        PendingAction {
            id: ActionId(id),
            kind: a.kind,
            ip: a.ip,
            reason: a.reason.clone(),
            event_id: a.event_id,
            rule: a.rule,
            comment: a.comment.clone(),
            requested_at: a.requested_at,
            attempts: 0,
            last_error: None,
        }
    }
}

/// How an action ended. All three are final: a completed action is never returned by `pending()` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Outcome {
    Done,
    /// Gave up (e.g. the FortiGate rejected it as invalid); not retried.
    Failed {
        reason: String,
    },
    /// Deliberately not done (never-block, dry run, already gone).
    Skipped {
        reason: String,
    },
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Done => None,
            Outcome::Failed { reason } | Outcome::Skipped { reason } => Some(reason),
        }
    }
}

/// One verdict about one IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub ip: IpAddr,
    /// `block`, `clean`, `never-block`, `warninglisted`, `dry-run`, ...
    pub verdict: String,
    pub detail: String,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
}

/// A block fortimisp made on the FortiGate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockRecord {
    pub ip: IpAddr,
    /// The address object name (`misp-198.51.100.7`), or the IP for the banned-ip backend.
    pub object: String,
    pub group: Option<String>,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
    pub reason: String,
    pub blocked_at: DateTime<Utc>,
    /// `address-group` or `banned-ip`.
    pub backend: String,
}

/// Rows removed by [`Journal::prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub decisions: usize,
    pub actions: usize,
    pub blocks: usize,
}

/// Handle on the journal. Cloning is cheap and shares the one connection; `Send + Sync`.
///
/// When the last clone is dropped while degraded, it makes one last attempt to write the buffer back and logs
/// how many entries are lost if that fails.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Journal")
            .field("path", &inner.path)
            .field("degraded", &inner.degraded)
            .field("buffered", &inner.backlog.len())
            .finish()
    }
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`: parent directory, WAL, busy timeout, schema migrations.
    ///
    /// # Errors
    /// Any failure, naming `path`: the directory cannot be created, the file cannot be opened or written (a
    /// read-only file fails here, not at the first write), or its schema is newer than this build.
    pub fn open(path: &Path) -> Result<Journal, Error> {
        let conn = open_file(path)?;
        let mut inner = Inner::new(Some(conn), Some(path.to_owned()));
        let rows = load_pending(inner.conn()?).map_err(|source| sql_error(path, source))?;
        inner.shadow = Shadow::from_rows(rows);
        Ok(Journal::wrap(inner))
    }

    /// Opens `path`, or, if that fails, starts degraded with nothing but memory and keeps trying to open `path`
    /// every [`RETRY_INTERVAL`]; once it opens, what was buffered is written to it. The error is returned (and
    /// already logged loudly) so the daemon can decide to start anyway.
    pub fn open_or_memory(path: &Path) -> (Journal, Option<Error>) {
        match Journal::open(path) {
            Ok(journal) => (journal, None),
            Err(error) => {
                error!(
                    message = "Journal cannot be opened; pending actions are kept in memory only until it can.",
                    %error,
                    path = %path.display(),
                );
                let mut inner = Inner::new(None, Some(path.to_owned()));
                inner.degraded = true;
                inner.last_loud = Some(Instant::now());
                inner.last_retry = Some(Instant::now());
                (Journal::wrap(inner), Some(error))
            }
        }
    }

    /// A journal in an in-memory SQLite database, for tests and hand-run commands that must not touch the file.
    pub fn in_memory() -> Journal {
        let conn = Connection::open_in_memory().and_then(|mut conn| {
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            migrate(&mut conn)?;
            Ok(conn)
        });
        match conn {
            Ok(conn) => Journal::wrap(Inner::new(Some(conn), None)),
            Err(error) => {
                // Only out-of-memory gets here; the buffers still work.
                error!(message = "In-memory journal cannot be created; using plain buffers.", %error);
                let mut inner = Inner::new(None, None);
                inner.degraded = true;
                Journal::wrap(inner)
            }
        }
    }

    fn wrap(inner: Inner) -> Journal {
        Journal { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state consistent (every mutation is one step), so carry on.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an action. Idempotent: if an action of the same kind for the same IP is already pending, its id is
    /// returned and nothing is added.
    pub fn enqueue(&self, action: &NewAction) -> Result<ActionId, Error> {
        let mut ids = self.lock().enqueue_many(std::slice::from_ref(action))?;
        Ok(ids.pop().expect("enqueue_many returns one id per action"))
    }

    /// Queues several actions in one transaction (one lock, one commit), ids in the same order.
    pub fn enqueue_many(&self, actions: &[NewAction]) -> Result<Vec<ActionId>, Error> {
        self.lock().enqueue_many(actions)
    }

    /// The pending queue, oldest first (by `requested_at`, then id): what a restart resumes. Healthy, it reads the
    /// file, so it includes what the other daemon queued; degraded, it is this process's in-memory view.
    pub fn pending(&self) -> Result<Vec<PendingAction>, Error> {
        self.lock().pending()
    }

    /// [`Journal::pending`] restricted to one kind (the integration daemon resumes blocks, housekeeping unblocks).
    pub fn pending_of(&self, kind: ActionKind) -> Result<Vec<PendingAction>, Error> {
        let mut all = self.pending()?;
        all.retain(|a| a.kind == kind);
        Ok(all)
    }

    /// Notes a failed attempt: `attempts += 1`, `last_error = error`. The action stays pending. A no-op on an
    /// action already completed.
    ///
    /// # Errors
    /// [`Error::UnknownAction`] if the id was never queued.
    pub fn record_attempt(&self, id: ActionId, error: &str) -> Result<(), Error> {
        self.lock().record_attempt(id, error, Utc::now())
    }

    /// Closes an action with its outcome; it leaves the pending queue for good. A no-op on an action already
    /// completed (the first outcome stays).
    ///
    /// # Errors
    /// [`Error::UnknownAction`] if the id was never queued.
    pub fn complete(&self, id: ActionId, outcome: &Outcome) -> Result<(), Error> {
        self.lock().complete(id, outcome, Utc::now())
    }

    /// Adds a decision to the audit trail; a repeat of the latest decision for the same IP only bumps its counter.
    pub fn record_decision(&self, d: &Decision) -> Result<(), Error> {
        self.lock().write_simple(Op::Decision(d.clone())).map(drop)
    }

    /// Opens a ledger entry for a completed block. If the IP already has an open entry, it is replaced: the
    /// caller's record is the latest truth (e.g. the object was recreated with a new comment).
    pub fn record_block(&self, b: &BlockRecord) -> Result<(), Error> {
        self.lock().write_simple(Op::Block(b.clone())).map(drop)
    }

    /// Closes the open ledger entry for `ip`. A removal of a block the ledger never saw (made before the journal,
    /// adopted from the legacy service, or lost while degraded) is still recorded, as a closed entry.
    pub fn record_unblock(&self, ip: IpAddr, reason: &str, at: DateTime<Utc>) -> Result<(), Error> {
        let op = Op::Unblock { ip, reason: reason.to_owned(), at };
        self.lock().write_simple(op).map(drop)
    }

    /// Open ledger entries, oldest block first.
    pub fn active_blocks(&self) -> Result<Vec<BlockRecord>, Error> {
        self.lock().active_blocks()
    }

    /// The latest `limit` decisions, newest first.
    pub fn recent_decisions(&self, limit: usize) -> Result<Vec<Decision>, Error> {
        self.lock().recent_decisions(limit)
    }

    /// Deletes decisions last seen before `older_than`; returns how many.
    pub fn prune_decisions(&self, older_than: DateTime<Utc>) -> Result<usize, Error> {
        Ok(self.lock().prune(older_than, false)?.decisions)
    }

    /// Deletes history older than `older_than`: decisions last seen before it, actions finished before it and
    /// ledger entries closed before it. Pending actions and open blocks are never pruned. The daemon calls this
    /// daily; freed pages are reused, so the file stops growing.
    ///
    /// # Errors
    /// When the file cannot be written (nothing is buffered: pruning can wait for the next day).
    pub fn prune(&self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        self.lock().prune(older_than, true)
    }

    /// True while writes are kept in memory because the file refuses them.
    pub fn is_degraded(&self) -> bool {
        self.lock().degraded
    }

    /// Number of entries buffered in memory, waiting to be written (0 when healthy). For a metric.
    pub fn buffered(&self) -> usize {
        self.lock().backlog.len()
    }

    /// Tries now to write what is buffered (and to open the file if it never opened). Returns how many entries
    /// were written. The daemons call it on shutdown; while running, writes retry every [`RETRY_INTERVAL`].
    pub fn flush(&self) -> Result<usize, Error> {
        self.lock().flush()
    }

    #[cfg(test)]
    fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> T {
        let inner = self.lock();
        let conn = inner.db.as_ref().expect("test journal has a connection");
        f(conn).expect("test statement runs")
    }

    #[cfg(test)]
    fn set_retry_interval(&self, every: Duration) {
        self.lock().retry_interval = every;
    }
}

/// A write, as kept in memory while degraded and replayed in order when the file is writable again.
#[derive(Debug, Clone)]
enum Op {
    /// `mem_id`: the negative id handed out while degraded; 0 when written directly.
    Enqueue {
        mem_id: i64,
        action: NewAction,
    },
    Attempt {
        id: i64,
        error: String,
        at: DateTime<Utc>,
    },
    Complete {
        id: i64,
        outcome: Outcome,
        at: DateTime<Utc>,
    },
    Decision(Decision),
    Block(BlockRecord),
    Unblock {
        ip: IpAddr,
        reason: String,
        at: DateTime<Utc>,
    },
}

/// What an [`Op`] did to the file.
#[derive(Debug)]
enum Applied {
    Enqueued(PendingAction),
    Written,
    /// Attempt/complete on an id that is not in the file at all.
    NoSuchAction,
}

/// The in-memory shadow of the pending queue: the rows last read from the file plus this process's writes since.
#[derive(Debug, Default)]
struct Shadow {
    by_id: BTreeMap<i64, PendingAction>,
    by_key: HashMap<(ActionKind, IpAddr), i64>,
}

impl Shadow {
    fn from_rows(rows: Vec<PendingAction>) -> Shadow {
        let mut shadow = Shadow::default();
        for row in rows {
            shadow.insert(row);
        }
        shadow
    }

    fn insert(&mut self, p: PendingAction) {
        self.by_key.entry((p.kind, p.ip)).or_insert(p.id.0);
        self.by_id.entry(p.id.0).or_insert(p);
    }

    fn find(&self, kind: ActionKind, ip: IpAddr) -> Option<ActionId> {
        self.by_key.get(&(kind, ip)).map(|id| ActionId(*id))
    }

    fn remove(&mut self, id: i64) -> bool {
        match self.by_id.remove(&id) {
            Some(p) => {
                if self.by_key.get(&(p.kind, p.ip)) == Some(&id) {
                    self.by_key.remove(&(p.kind, p.ip));
                }
                true
            }
            None => false,
        }
    }

    fn attempt(&mut self, id: i64, error: &str) -> bool {
        match self.by_id.get_mut(&id) {
            Some(p) => {
                p.attempts = p.attempts.saturating_add(1);
                p.last_error = Some(error.to_owned());
                true
            }
            None => false,
        }
    }

    fn list(&self) -> Vec<PendingAction> {
        let mut all: Vec<PendingAction> = self.by_id.values().cloned().collect();
        all.sort_by_key(|p| (p.requested_at, p.id.0.unsigned_abs()));
        all
    }
}

struct Inner {
    /// `None` only when the file never opened (see [`Journal::open_or_memory`]).
    db: Option<Connection>,
    /// `None` for an in-memory journal.
    path: Option<PathBuf>,
    /// Identity of the file `db` has open, to notice it being deleted or replaced: in WAL mode SQLite would
    /// otherwise keep writing, successfully, into the unlinked file.
    file_id: Option<FileId>,
    /// The connection was dropped because its file went away: on reopen, write the shadow queue into the new file.
    reseed: bool,
    shadow: Shadow,
    /// Writes the file refused, oldest first. Non-empty implies `degraded`.
    backlog: Vec<Op>,
    buffered_decisions: usize,
    dropped_decisions: u64,
    /// Memory id → file id, for ids handed out while degraded.
    remap: HashMap<i64, i64>,
    next_mem_id: i64,
    degraded: bool,
    last_loud: Option<Instant>,
    suppressed: u64,
    last_retry: Option<Instant>,
    retry_interval: Duration,
}

impl Inner {
    fn new(db: Option<Connection>, path: Option<PathBuf>) -> Inner {
        Inner {
            file_id: path.as_deref().and_then(file_id),
            db,
            path,
            reseed: false,
            shadow: Shadow::default(),
            backlog: Vec::new(),
            buffered_decisions: 0,
            dropped_decisions: 0,
            remap: HashMap::new(),
            next_mem_id: -1,
            degraded: false,
            last_loud: None,
            suppressed: 0,
            last_retry: None,
            retry_interval: RETRY_INTERVAL,
        }
    }

    fn display_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from(":memory:"))
    }

    fn sql_error(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite { path: self.display_path(), source }
    }

    fn conn(&self) -> Result<&Connection, Error> {
        self.db.as_ref().ok_or_else(|| Error::Unavailable { path: self.display_path() })
    }

    fn resolve(&self, id: ActionId) -> i64 {
        self.remap.get(&id.0).copied().unwrap_or(id.0)
    }

    /// Writes `ops` in one transaction. `Ok(None)`: the file refused, the journal is now degraded and the caller
    /// must buffer. While degraded, first tries to write the buffer back if a retry is due.
    fn try_db(&mut self, ops: &[Op]) -> Result<Option<Vec<Applied>>, Error> {
        if self.degraded {
            self.retry_if_due();
            if self.degraded {
                return Ok(None);
            }
        }
        if self.file_moved() {
            self.lose_file();
            return Ok(None);
        }
        let Some(db) = self.db.as_mut() else {
            return Ok(None);
        };
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                applied.push(apply(&tx, op, &|id| id)?);
            }
            tx.commit()?;
            Ok(applied)
        })();
        match result {
            Ok(applied) => Ok(Some(applied)),
            Err(source) if is_unavailable(&source) => {
                self.note_failure(&source);
                Ok(None)
            }
            Err(source) => Err(self.sql_error(source)),
        }
    }

    /// True if the path no longer names the file the connection has open.
    fn file_moved(&self) -> bool {
        match (&self.path, self.file_id, &self.db) {
            (Some(path), Some(id), Some(_)) => file_id(path) != Some(id),
            _ => false,
        }
    }

    /// Drops the connection to a file that is gone; the shadow queue is written to the next file opened at path.
    fn lose_file(&mut self) {
        let error = Error::Moved { path: self.display_path() };
        self.note_failure(&error);
        self.db = None;
        self.file_id = None;
        self.reseed = true;
    }

    fn buffer(&mut self, op: Op) {
        if let Op::Decision(_) = op {
            if self.buffered_decisions >= MAX_BUFFERED_DECISIONS {
                self.dropped_decisions += 1;
                return;
            }
            self.buffered_decisions += 1;
        }
        self.backlog.push(op);
    }

    /// Logs the loud error: at once when the journal turns degraded, then at most every [`LOUD_INTERVAL`].
    fn note_failure(&mut self, source: &dyn std::error::Error) {
        let now = Instant::now();
        self.last_retry = Some(now);
        let path = self.display_path();
        if !self.degraded {
            self.degraded = true;
            self.last_loud = Some(now);
            error!(
                message = "Journal is not writable; keeping pending actions in memory until it is.",
                error = %source,
                path = %path.display(),
            );
        } else if !matches!(self.last_loud, Some(t) if now.duration_since(t) < LOUD_INTERVAL) {
            self.last_loud = Some(now);
            error!(
                message = "Journal is still not writable; pending actions are in memory only.",
                error = %source,
                path = %path.display(),
                buffered = self.backlog.len(),
                dropped_decisions = self.dropped_decisions,
                suppressed = self.suppressed,
            );
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn retry_if_due(&mut self) {
        let due = !matches!(self.last_retry, Some(t) if t.elapsed() < self.retry_interval);
        if due && (self.path.is_some() || self.db.is_some()) {
            // The failure is logged (rate-limited) inside.
            let _ = self.flush();
        }
    }

    /// Opens the file if needed, replays the buffer in one transaction, and reloads the shadow from the file.
    fn flush(&mut self) -> Result<usize, Error> {
        if !self.degraded {
            return Ok(0);
        }
        self.last_retry = Some(Instant::now());
        if self.db.is_none() {
            let Some(path) = self.path.clone() else {
                return Err(Error::Unavailable { path: self.display_path() });
            };
            match open_file(&path) {
                Ok(conn) => {
                    self.db = Some(conn);
                    self.file_id = file_id(&path);
                }
                Err(error) => {
                    self.note_failure(&error);
                    return Err(error);
                }
            }
        }
        let Some(db) = self.db.as_mut() else {
            return Err(Error::Unavailable { path: self.display_path() });
        };
        // Actions the lost file held (positive ids) go first, under their old ids, so ids callers hold stay valid.
        let restore: Vec<PendingAction> =
            if self.reseed { self.shadow.by_id.values().filter(|p| p.id.0 > 0).cloned().collect() } else { Vec::new() };
        let mut skipped = Vec::new();
        let result = replay(db, &restore, &self.backlog, &self.remap, &mut skipped);
        for (op, problem) in skipped {
            warn!(message = "Buffered journal entry could not be written; skipped.", entry = ?op, error = %problem);
        }
        match result {
            Ok((remap, pending)) => {
                let flushed = self.backlog.len();
                self.remap.extend(remap);
                self.backlog.clear();
                self.buffered_decisions = 0;
                self.shadow = Shadow::from_rows(pending);
                self.degraded = false;
                self.reseed = false;
                info!(
                    message = "Journal is writable again; buffered entries written.",
                    path = %self.display_path().display(),
                    flushed,
                    dropped_decisions = self.dropped_decisions,
                );
                self.dropped_decisions = 0;
                self.suppressed = 0;
                Ok(flushed)
            }
            Err(source) => {
                self.note_failure(&source);
                Err(self.sql_error(source))
            }
        }
    }

    fn enqueue_many(&mut self, actions: &[NewAction]) -> Result<Vec<ActionId>, Error> {
        let ops: Vec<Op> = actions.iter().map(|a| Op::Enqueue { mem_id: 0, action: a.clone() }).collect();
        let mut ids = Vec::with_capacity(actions.len());
        match self.try_db(&ops)? {
            Some(applied) => {
                for a in applied {
                    if let Applied::Enqueued(row) = a {
                        ids.push(row.id);
                        self.shadow.insert(row);
                    }
                }
            }
            None => {
                for op in ops {
                    let Op::Enqueue { action, .. } = op else { continue };
                    if let Some(id) = self.shadow.find(action.kind, action.ip) {
                        ids.push(id);
                        continue;
                    }
                    let id = self.next_mem_id;
                    self.next_mem_id -= 1;
                    self.shadow.insert(PendingAction::new(id, &action));
                    self.buffer(Op::Enqueue { mem_id: id, action });
                    ids.push(ActionId(id));
                }
            }
        }
        Ok(ids)
    }

    fn record_attempt(&mut self, id: ActionId, error: &str, at: DateTime<Utc>) -> Result<(), Error> {
        let raw = self.resolve(id);
        let op = Op::Attempt { id: raw, error: error.to_owned(), at };
        if !self.write_action_op(id, op)? {
            return Err(Error::UnknownAction(id));
        }
        self.shadow.attempt(raw, error);
        Ok(())
    }

    fn complete(&mut self, id: ActionId, outcome: &Outcome, at: DateTime<Utc>) -> Result<(), Error> {
        let raw = self.resolve(id);
        let op = Op::Complete { id: raw, outcome: outcome.clone(), at };
        if !self.write_action_op(id, op)? {
            return Err(Error::UnknownAction(id));
        }
        self.shadow.remove(raw);
        Ok(())
    }

    /// Writes an attempt/complete; false if the id is unknown. While degraded, an id the shadow does not know is
    /// accepted when positive (the other daemon may have queued it) and rejected when negative.
    fn write_action_op(&mut self, id: ActionId, op: Op) -> Result<bool, Error> {
        match self.try_db(std::slice::from_ref(&op))? {
            Some(applied) => Ok(!matches!(applied.first(), Some(Applied::NoSuchAction))),
            None => {
                let raw = self.resolve(id);
                if raw < 0 && !self.shadow.by_id.contains_key(&raw) {
                    return Ok(false);
                }
                self.buffer(op);
                Ok(true)
            }
        }
    }

    fn write_simple(&mut self, op: Op) -> Result<(), Error> {
        if self.try_db(std::slice::from_ref(&op))?.is_none() {
            self.buffer(op);
        }
        Ok(())
    }

    fn pending(&mut self) -> Result<Vec<PendingAction>, Error> {
        if self.degraded {
            self.retry_if_due();
        }
        if self.degraded {
            return Ok(self.shadow.list());
        }
        let Some(db) = self.db.as_ref() else {
            return Ok(self.shadow.list());
        };
        match load_pending(db) {
            Ok(rows) => {
                self.shadow = Shadow::from_rows(rows.clone());
                Ok(rows)
            }
            Err(error) if is_unavailable(&error) => {
                warn!(message = "Journal cannot be read; serving the pending queue from memory.", %error);
                Ok(self.shadow.list())
            }
            Err(source) => Err(self.sql_error(source)),
        }
    }

    /// Reads from the file, or, when degraded and the read fails, from nothing; buffered entries come on top.
    fn read_base<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<Vec<T>>) -> Result<Vec<T>, Error> {
        match self.db.as_ref() {
            None => Ok(Vec::new()),
            Some(db) => match read(db) {
                Ok(rows) => Ok(rows),
                Err(error) if self.degraded && is_unavailable(&error) => Ok(Vec::new()),
                Err(source) => Err(self.sql_error(source)),
            },
        }
    }

    fn active_blocks(&self) -> Result<Vec<BlockRecord>, Error> {
        let mut blocks = self.read_base(load_active_blocks)?;
        for op in &self.backlog {
            match op {
                Op::Block(b) => {
                    blocks.retain(|x| x.ip != b.ip);
                    blocks.push(b.clone());
                }
                Op::Unblock { ip, .. } => blocks.retain(|x| x.ip != *ip),
                _ => {}
            }
        }
        Ok(blocks)
    }

    fn recent_decisions(&self, limit: usize) -> Result<Vec<Decision>, Error> {
        let mut newest: Vec<Decision> = self
            .backlog
            .iter()
            .rev()
            .filter_map(|op| match op {
                Op::Decision(d) => Some(d.clone()),
                _ => None,
            })
            .take(limit)
            .collect();
        let rest = limit - newest.len();
        if rest > 0 {
            newest.extend(self.read_base(|db| load_recent_decisions(db, rest))?);
        }
        Ok(newest)
    }

    fn prune(&mut self, older_than: DateTime<Utc>, everything: bool) -> Result<Pruned, Error> {
        let cutoff = ts(&older_than);
        if self.file_moved() {
            self.lose_file();
        }
        let path = self.display_path();
        let db = self.db.as_mut().ok_or_else(|| Error::Unavailable { path: path.clone() })?;
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut pruned = Pruned {
                decisions: tx.prepare_cached("DELETE FROM decisions WHERE last_at < ?1")?.execute([&cutoff])?,
                ..Pruned::default()
            };
            if everything {
                pruned.actions = tx
                    .prepare_cached("DELETE FROM actions WHERE state <> 'pending' AND finished_at < ?1")?
                    .execute([&cutoff])?;
                pruned.blocks = tx
                    .prepare_cached("DELETE FROM blocks WHERE unblocked_at IS NOT NULL AND unblocked_at < ?1")?
                    .execute([&cutoff])?;
            }
            tx.commit()?;
            Ok(pruned)
        })();
        result.map_err(|source| Error::Sqlite { path, source })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        if self.flush().is_err() {
            error!(
                message = "Journal closed while not writable; buffered entries are lost.",
                path = %self.display_path().display(),
                lost = self.backlog.len(),
            );
        }
    }
}

/// Replays `backlog` in one transaction, translating memory ids. Returns the new memory → file ids and the
/// pending queue as the file now has it. Entries the file rejects for their content (not for being unwritable)
/// are skipped and reported in `skipped`, so one bad entry cannot keep the journal degraded forever.
fn replay(
    db: &mut Connection,
    restore: &[PendingAction],
    backlog: &[Op],
    known: &HashMap<i64, i64>,
    skipped: &mut Vec<(Op, String)>,
) -> rusqlite::Result<(HashMap<i64, i64>, Vec<PendingAction>)> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for p in restore {
        // Ignored if the id or a pending (kind, IP) is already there (the same file came back).
        tx.prepare_cached(
            "INSERT OR IGNORE INTO actions
               (id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            p.id.0,
            p.kind,
            p.ip.to_string(),
            p.reason,
            p.event_id,
            p.rule,
            p.comment,
            ts(&p.requested_at),
            p.attempts,
            p.last_error
        ])?;
    }
    let mut remap: HashMap<i64, i64> = HashMap::new();
    for op in backlog {
        let translate = |id: i64| remap.get(&id).or_else(|| known.get(&id)).copied().unwrap_or(id);
        match apply(&tx, op, &translate) {
            Ok(Applied::Enqueued(row)) => {
                if let Op::Enqueue { mem_id, .. } = op {
                    remap.insert(*mem_id, row.id.0);
                }
            }
            Ok(Applied::Written) => {}
            Ok(Applied::NoSuchAction) => skipped.push((op.clone(), "no such action".to_owned())),
            Err(error) if is_unavailable(&error) => return Err(error),
            Err(error) => skipped.push((op.clone(), error.to_string())),
        }
    }
    let pending = load_pending(&tx)?;
    tx.commit()?;
    Ok((remap, pending))
}

/// (device, inode) of the file at `path`, if there is one.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<FileId> {
    None
}

fn sql_error(path: &Path, source: rusqlite::Error) -> Error {
    Error::Sqlite { path: path.to_owned(), source }
}

/// True for errors that mean "the file cannot take writes now" (degrade and buffer), as opposed to errors about
/// the write itself (a bug; returned to the caller).
fn is_unavailable(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::PermissionDenied
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::NoLargeFileSupport
                | ErrorCode::OutOfMemory
        )
    )
}

fn open_file(path: &Path) -> Result<Connection, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir { path: path.to_owned(), source })?;
    }
    let mut conn = Connection::open(path).map_err(|source| sql_error(path, source))?;
    configure(&mut conn).map_err(|source| sql_error(path, source))?;
    let found: i64 =
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|source| sql_error(path, source))?;
    if found > SCHEMA_VERSION {
        return Err(Error::TooNew { path: path.to_owned(), found, supported: SCHEMA_VERSION });
    }
    migrate(&mut conn).map_err(|source| sql_error(path, source))?;
    Ok(conn)
}

fn configure(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(message = "Journal is not in WAL mode; the two daemons will wait on each other more.", mode);
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
}

/// Applies the missing migrations under the write lock, so two daemons starting together migrate once. Taking the
/// write lock also proves the file is writable, so `open` fails early on a read-only file.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found < SCHEMA_VERSION {
        let from = usize::try_from(found).unwrap_or(0);
        for sql in &MIGRATIONS[from..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A column holding an IP as text.
struct SqlIp(IpAddr);

impl FromSql for SqlIp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map(SqlIp).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A column holding an RFC 3339 time as text.
struct SqlTime(DateTime<Utc>);

impl FromSql for SqlTime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        DateTime::parse_from_rfc3339(value.as_str()?)
            .map(|t| SqlTime(t.with_timezone(&Utc)))
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl FromSql for ActionKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "block" => Ok(ActionKind::Block),
            "unblock" => Ok(ActionKind::Unblock),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

impl ToSql for ActionKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

const PENDING_COLUMNS: &str =
    "SELECT id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error FROM actions";

fn pending_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingAction> {
    Ok(PendingAction {
        id: ActionId(row.get(0)?),
        kind: row.get(1)?,
        ip: row.get::<_, SqlIp>(2)?.0,
        reason: row.get(3)?,
        event_id: row.get(4)?,
        rule: row.get(5)?,
        comment: row.get(6)?,
        requested_at: row.get::<_, SqlTime>(7)?.0,
        attempts: row.get(8)?,
        last_error: row.get(9)?,
    })
}

fn load_pending(db: &Connection) -> rusqlite::Result<Vec<PendingAction>> {
    let mut stmt =
        db.prepare_cached(&format!("{PENDING_COLUMNS} WHERE state = 'pending' ORDER BY requested_at, id"))?;
    let rows = stmt.query_map([], pending_row)?;
    rows.collect()
}

fn load_active_blocks(db: &Connection) -> rusqlite::Result<Vec<BlockRecord>> {
    let mut stmt = db.prepare_cached(
        "SELECT ip, object, grp, event_id, rule, reason, blocked_at, backend FROM blocks
         WHERE unblocked_at IS NULL ORDER BY blocked_at, id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(BlockRecord {
            ip: row.get::<_, SqlIp>(0)?.0,
            object: row.get(1)?,
            group: row.get(2)?,
            event_id: row.get(3)?,
            rule: row.get(4)?,
            reason: row.get(5)?,
            blocked_at: row.get::<_, SqlTime>(6)?.0,
            backend: row.get(7)?,
        })
    })?;
    rows.collect()
}

fn load_recent_decisions(db: &Connection, limit: usize) -> rusqlite::Result<Vec<Decision>> {
    let mut stmt =
        db.prepare_cached("SELECT at, ip, verdict, detail, event_id, rule FROM decisions ORDER BY id DESC LIMIT ?1")?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map([limit], |row| {
        Ok(Decision {
            at: row.get::<_, SqlTime>(0)?.0,
            ip: row.get::<_, SqlIp>(1)?.0,
            verdict: row.get(2)?,
            detail: row.get(3)?,
            event_id: row.get(4)?,
            rule: row.get(5)?,
        })
    })?;
    rows.collect()
}

/// Applies one write; `translate` maps memory ids to file ids. Runs inside the caller's transaction.
fn apply(db: &Connection, op: &Op, translate: &dyn Fn(i64) -> i64) -> rusqlite::Result<Applied> {
    match op {
        Op::Enqueue { action: a, .. } => {
            let ip = a.ip.to_string();
            let existing = db
                .prepare_cached(&format!("{PENDING_COLUMNS} WHERE state = 'pending' AND kind = ?1 AND ip = ?2"))?
                .query_row(params![a.kind, ip], pending_row)
                .optional()?;
            if let Some(row) = existing {
                return Ok(Applied::Enqueued(row));
            }
            db.prepare_cached(
                "INSERT INTO actions (kind, ip, reason, event_id, rule, comment, requested_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![a.kind, ip, a.reason, a.event_id, a.rule, a.comment, ts(&a.requested_at)])?;
            Ok(Applied::Enqueued(PendingAction::new(db.last_insert_rowid(), a)))
        }
        Op::Attempt { id, error, at } => {
            let id = translate(*id);
            let n = db
                .prepare_cached(
                    "UPDATE actions SET attempts = attempts + 1, last_error = ?2, last_attempt_at = ?3
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![id, error, ts(at)])?;
            action_written(db, id, n)
        }
        Op::Complete { id, outcome, at } => {
            let id = translate(*id);
            let n = db
                .prepare_cached(
                    "UPDATE actions SET state = ?2, outcome = ?3, finished_at = ?4
                     WHERE id = ?1 AND state = 'pending'",
                )?
                .execute(params![id, outcome.state(), outcome.reason(), ts(at)])?;
            action_written(db, id, n)
        }
        Op::Decision(d) => {
            let ip = d.ip.to_string();
            let at = ts(&d.at);
            let repeated = db
                .prepare_cached(
                    "UPDATE decisions SET repeats = repeats + 1, last_at = max(last_at, ?1)
                     WHERE id = (SELECT max(id) FROM decisions WHERE ip = ?2)
                       AND verdict = ?3 AND detail = ?4 AND event_id IS ?5 AND rule IS ?6",
                )?
                .execute(params![at, ip, d.verdict, d.detail, d.event_id, d.rule])?;
            if repeated == 0 {
                db.prepare_cached(
                    "INSERT INTO decisions (at, last_at, ip, verdict, detail, event_id, rule)
                     VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![at, ip, d.verdict, d.detail, d.event_id, d.rule])?;
            }
            Ok(Applied::Written)
        }
        Op::Block(b) => {
            db.prepare_cached(
                "INSERT INTO blocks (ip, object, grp, event_id, rule, reason, blocked_at, backend)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (ip) WHERE unblocked_at IS NULL DO UPDATE SET
                   object = excluded.object, grp = excluded.grp, event_id = excluded.event_id,
                   rule = excluded.rule, reason = excluded.reason, blocked_at = excluded.blocked_at,
                   backend = excluded.backend",
            )?
            .execute(params![
                b.ip.to_string(),
                b.object,
                b.group,
                b.event_id,
                b.rule,
                b.reason,
                ts(&b.blocked_at),
                b.backend
            ])?;
            Ok(Applied::Written)
        }
        Op::Unblock { ip, reason, at } => {
            let ip = ip.to_string();
            let at = ts(at);
            let closed = db
                .prepare_cached(
                    "UPDATE blocks SET unblocked_at = ?2, unblock_reason = ?3 WHERE ip = ?1 AND unblocked_at IS NULL",
                )?
                .execute(params![ip, at, reason])?;
            if closed == 0 {
                db.prepare_cached("INSERT INTO blocks (ip, unblocked_at, unblock_reason) VALUES (?1, ?2, ?3)")?
                    .execute(params![ip, at, reason])?;
            }
            Ok(Applied::Written)
        }
    }
}

/// After an UPDATE on `actions` that changed `n` rows: an id that exists but is finished is fine (idempotent).
fn action_written(db: &Connection, id: i64, n: usize) -> rusqlite::Result<Applied> {
    if n > 0 {
        return Ok(Applied::Written);
    }
    let exists = db.prepare_cached("SELECT 1 FROM actions WHERE id = ?1")?.exists([id])?;
    Ok(if exists { Applied::Written } else { Applied::NoSuchAction })
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).single().expect("valid test time")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid test IP")
    }

    fn block(addr: &str, secs: i64) -> NewAction {
        NewAction {
            kind: ActionKind::Block,
            ip: ip(addr),
            reason: "misp-event=1234 rule=0".to_owned(),
            event_id: Some(1234),
            rule: Some(0),
            comment: Some(format!("fortimisp {} misp-event=1234", ts(&at(secs)))),
            requested_at: at(secs),
        }
    }

    fn unblock(addr: &str, secs: i64) -> NewAction {
        NewAction {
            kind: ActionKind::Unblock,
            reason: "max_age".to_owned(),
            event_id: None,
            rule: None,
            comment: None,
            ..block(addr, secs)
        }
    }

    fn record(addr: &str, secs: i64) -> BlockRecord {
        BlockRecord {
            ip: ip(addr),
            object: format!("misp-{addr}"),
            group: Some("MISP_BLOCK".to_owned()),
            event_id: Some(1234),
            rule: Some(0),
            reason: "misp-event=1234 rule=0".to_owned(),
            blocked_at: at(secs),
            backend: "address-group".to_owned(),
        }
    }

    fn decision(addr: &str, secs: i64, verdict: &str) -> Decision {
        Decision {
            at: at(secs),
            ip: ip(addr),
            verdict: verdict.to_owned(),
            detail: format!("{verdict} detail"),
            event_id: None,
            rule: None,
        }
    }

    fn ips(pending: &[PendingAction]) -> Vec<String> {
        pending.iter().map(|p| format!("{} {}", p.kind, p.ip)).collect()
    }

    fn file_journal() -> (tempfile::TempDir, PathBuf, Journal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("state.db");
        let journal = Journal::open(&path).expect("journal opens");
        (dir, path, journal)
    }

    /// Simulates the file refusing writes (as root, chmod does not): the connection goes read-only.
    fn refuse_writes(journal: &Journal, refuse: bool) {
        journal.with_conn(|c| c.pragma_update(None, "query_only", refuse));
    }

    /// One step of a queue scenario and the pending queue expected after it.
    enum Step {
        Enqueue(NewAction),
        Attempt(usize, &'static str),
        Complete(usize, Outcome),
        Reopen,
    }

    /// Runs `steps` against a file journal (ids are referred to by enqueue order), checking the pending queue after
    /// each step, and again after a reopen (a restart).
    fn check_queue(steps: Vec<(Step, &[&str])>) {
        let (_dir, path, mut journal) = file_journal();
        let mut ids = Vec::new();
        for (n, (step, expected)) in steps.into_iter().enumerate() {
            match step {
                Step::Enqueue(a) => ids.push(journal.enqueue(&a).expect("enqueue")),
                Step::Attempt(i, e) => journal.record_attempt(ids[i], e).expect("attempt"),
                Step::Complete(i, o) => journal.complete(ids[i], &o).expect("complete"),
                Step::Reopen => {
                    drop(journal);
                    journal = Journal::open(&path).expect("reopen");
                }
            }
            let pending = journal.pending().expect("pending");
            assert_eq!(ips(&pending), expected.to_vec(), "after step {n}");
        }
        let reopened = Journal::open(&path).expect("reopen");
        assert_eq!(reopened.pending().expect("pending"), journal.pending().expect("pending"));
    }

    #[test]
    fn queue_scenarios() {
        use Step::*;
        let done = || Outcome::Done;
        let cases: Vec<Vec<(Step, &[&str])>> = vec![
            // enqueue → pending → complete
            vec![(Enqueue(block("198.51.100.7", 0)), &["block 198.51.100.7"]), (Complete(0, done()), &[])],
            // idempotent: same kind + IP while pending is one action; a different kind is another
            vec![
                (Enqueue(block("198.51.100.7", 0)), &["block 198.51.100.7"]),
                (Enqueue(block("198.51.100.7", 5)), &["block 198.51.100.7"]),
                (Enqueue(unblock("198.51.100.7", 6)), &["block 198.51.100.7", "unblock 198.51.100.7"]),
                (Complete(1, done()), &["unblock 198.51.100.7"]),
                // once completed, the same block can be queued again
                (Enqueue(block("198.51.100.7", 9)), &["unblock 198.51.100.7", "block 198.51.100.7"]),
            ],
            // oldest first by requested_at, whatever the enqueue order; IPv6 round-trips
            vec![
                (Enqueue(block("2001:db8::7", 20)), &["block 2001:db8::7"]),
                (Enqueue(block("198.51.100.8", 10)), &["block 198.51.100.8", "block 2001:db8::7"]),
            ],
            // survives a restart; attempts stay pending; every outcome is final
            vec![
                (Enqueue(block("198.51.100.1", 1)), &["block 198.51.100.1"]),
                (Enqueue(block("198.51.100.2", 2)), &["block 198.51.100.1", "block 198.51.100.2"]),
                (
                    Enqueue(block("198.51.100.3", 3)),
                    &["block 198.51.100.1", "block 198.51.100.2", "block 198.51.100.3"],
                ),
                (Reopen, &["block 198.51.100.1", "block 198.51.100.2", "block 198.51.100.3"]),
                (Attempt(0, "fortigate: 503"), &["block 198.51.100.1", "block 198.51.100.2", "block 198.51.100.3"]),
                (
                    Complete(0, Outcome::Failed { reason: "invalid".into() }),
                    &["block 198.51.100.2", "block 198.51.100.3"],
                ),
                (Complete(1, Outcome::Skipped { reason: "never-block".into() }), &["block 198.51.100.3"]),
                (Complete(1, done()), &["block 198.51.100.3"]),
                (Reopen, &["block 198.51.100.3"]),
            ],
        ];
        for steps in cases {
            check_queue(steps);
        }
    }

    #[test]
    fn attempts_and_outcomes_are_stored() {
        let (_dir, path, journal) = file_journal();
        let id = journal.enqueue(&block("198.51.100.7", 0)).expect("enqueue");
        journal.record_attempt(id, "timeout").expect("attempt");
        journal.record_attempt(id, "fortigate: 503").expect("attempt");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        let pending = journal.pending().expect("pending");
        assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("fortigate: 503")));
        journal.complete(id, &Outcome::Failed { reason: "object name rejected".into() }).expect("complete");
        let row: (String, Option<String>, u32) = journal.with_conn(|c| {
            c.query_row("SELECT state, outcome, attempts FROM actions WHERE id = ?1", [id.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        });
        assert_eq!(row, ("failed".to_owned(), Some("object name rejected".to_owned()), 2));
        assert!(matches!(journal.complete(ActionId(999), &Outcome::Done), Err(Error::UnknownAction(ActionId(999)))));
        assert!(matches!(journal.record_attempt(ActionId(999), "x"), Err(Error::UnknownAction(_))));
    }

    #[test]
    fn enqueue_many_is_one_batch_and_idempotent() {
        let journal = Journal::in_memory();
        let batch = [block("198.51.100.1", 1), block("198.51.100.2", 2), block("198.51.100.1", 3)];
        let ids = journal.enqueue_many(&batch).expect("enqueue_many");
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ips(&journal.pending().expect("pending")), ["block 198.51.100.1", "block 198.51.100.2"]);
        assert_eq!(ips(&journal.pending_of(ActionKind::Unblock).expect("pending_of")), Vec::<String>::new());
    }

    #[test]
    fn two_processes_share_the_file() {
        let (_dir, path, integration) = file_journal();
        let housekeeping = Journal::open(&path).expect("second open");
        let b = integration.enqueue(&block("198.51.100.7", 0)).expect("enqueue");
        let u = housekeeping.enqueue(&unblock("198.51.100.9", 1)).expect("enqueue");
        // each sees the other's queue, and enqueue stays idempotent across them
        assert_eq!(housekeeping.enqueue(&block("198.51.100.7", 2)).expect("enqueue"), b);
        assert_eq!(ips(&integration.pending().expect("pending")), ["block 198.51.100.7", "unblock 198.51.100.9"]);
        assert_eq!(ips(&housekeeping.pending_of(ActionKind::Unblock).expect("pending")), ["unblock 198.51.100.9"]);
        housekeeping.complete(u, &Outcome::Done).expect("complete");
        housekeeping.record_unblock(ip("198.51.100.9"), "max_age", at(3)).expect("unblock");
        integration.record_block(&record("198.51.100.7", 4)).expect("block");
        assert_eq!(ips(&integration.pending().expect("pending")), ["block 198.51.100.7"]);
        assert_eq!(housekeeping.active_blocks().expect("active"), vec![record("198.51.100.7", 4)]);
        integration.record_decision(&decision("198.51.100.7", 5, "block")).expect("decision");
        assert_eq!(housekeeping.recent_decisions(10).expect("decisions"), vec![decision("198.51.100.7", 5, "block")]);
    }

    #[test]
    fn two_processes_writing_at_once_wait_for_each_other() {
        let (_dir, path, integration) = file_journal();
        let housekeeping = Journal::open(&path).expect("second open");
        let writers: Vec<_> = [(integration.clone(), 1u8), (housekeeping.clone(), 2u8)]
            .into_iter()
            .map(|(journal, net)| {
                std::thread::spawn(move || {
                    for host in 0..100u8 {
                        let addr = format!("10.{net}.0.{host}");
                        let id = journal.enqueue(&block(&addr, i64::from(host))).expect("enqueue");
                        journal.record_decision(&decision(&addr, i64::from(host), "block")).expect("decision");
                        if host % 2 == 0 {
                            journal.complete(id, &Outcome::Done).expect("complete");
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer thread");
        }
        assert!(!integration.is_degraded() && !housekeeping.is_degraded());
        assert_eq!(integration.pending().expect("pending").len(), 100);
        assert_eq!(housekeeping.recent_decisions(1000).expect("decisions").len(), 200);
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![b'x'; 4096]).expect("write");
        let newer = dir.path().join("newer.db");
        Connection::open(&newer)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("newer file");
        let cases: Vec<(PathBuf, &str)> = vec![
            (file.join("state.db"), "cannot create its directory"),
            (dir.path().to_owned(), "unable to open"),
            (garbage.clone(), "not a database"),
            (newer.clone(), "is newer than this build"),
        ];
        for (path, fragment) in cases {
            let message = Journal::open(&path).expect_err("open fails").to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(fragment), "{message}");
        }
    }

    #[test]
    fn migrations_are_applied_once_and_recorded() {
        let (_dir, path, journal) = file_journal();
        let (version, mode): (i64, String) = journal.with_conn(|c| {
            Ok((
                c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
            ))
        });
        assert_eq!((version, mode.as_str()), (SCHEMA_VERSION, "wal"));
        drop(journal);
        Journal::open(&path).expect("reopen of a current file");
    }

    #[test]
    fn block_ledger_opens_and_closes() {
        let journal = Journal::in_memory();
        journal.record_block(&record("198.51.100.1", 1)).expect("block");
        journal.record_block(&record("2001:db8::2", 2)).expect("block");
        // a re-block replaces the open entry
        let reblocked = BlockRecord { reason: "misp-event=99".into(), ..record("198.51.100.1", 3) };
        journal.record_block(&reblocked).expect("block");
        assert_eq!(journal.active_blocks().expect("active"), vec![record("2001:db8::2", 2), reblocked.clone()]);
        journal.record_unblock(ip("2001:db8::2"), "max_age", at(4)).expect("unblock");
        // a removal the ledger never saw is still recorded, closed
        journal.record_unblock(ip("198.51.100.77"), "adopt_legacy", at(5)).expect("unblock");
        assert_eq!(journal.active_blocks().expect("active"), vec![reblocked]);
        let closed: Vec<(String, String)> = journal.with_conn(|c| {
            let mut s =
                c.prepare("SELECT ip, unblock_reason FROM blocks WHERE unblocked_at IS NOT NULL ORDER BY id")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        });
        assert_eq!(
            closed,
            [("2001:db8::2".to_owned(), "max_age".to_owned()), ("198.51.100.77".to_owned(), "adopt_legacy".to_owned())]
        );
    }

    #[test]
    fn decisions_dedupe_and_prune() {
        let journal = Journal::in_memory();
        for d in [
            decision("198.51.100.1", 0, "block"),
            decision("198.51.100.1", 10, "block"), // repeat: counted, not a new row
            decision("198.51.100.2", 20, "clean"),
            decision("198.51.100.1", 30, "never-block"), // changed verdict: new row
            decision("198.51.100.2", 100, "clean"),      // repeat much later keeps the row alive
        ] {
            journal.record_decision(&d).expect("decision");
        }
        let verdicts = |j: &Journal| {
            j.recent_decisions(10)
                .expect("recent")
                .into_iter()
                .map(|d| format!("{} {}", d.ip, d.verdict))
                .collect::<Vec<_>>()
        };
        assert_eq!(verdicts(&journal), ["198.51.100.1 never-block", "198.51.100.2 clean", "198.51.100.1 block"]);
        assert_eq!(journal.recent_decisions(1).expect("recent").len(), 1);
        assert_eq!(journal.prune_decisions(at(25)).expect("prune"), 1);
        assert_eq!(verdicts(&journal), ["198.51.100.1 never-block", "198.51.100.2 clean"]);

        // prune() also drops finished actions and closed ledger rows, never pending ones or open blocks
        let old = journal.enqueue(&block("198.51.100.1", 0)).expect("enqueue");
        journal.enqueue(&block("198.51.100.3", 0)).expect("enqueue");
        journal.complete(old, &Outcome::Done).expect("complete");
        journal.record_block(&record("198.51.100.4", 0)).expect("block");
        journal.record_block(&record("198.51.100.5", 0)).expect("block");
        journal.record_unblock(ip("198.51.100.5"), "max_age", at(1)).expect("unblock");
        let future = Utc::now() + chrono::Duration::days(1);
        let pruned = journal.prune(future).expect("prune");
        assert_eq!(pruned, Pruned { decisions: 2, actions: 1, blocks: 1 });
        assert_eq!(ips(&journal.pending().expect("pending")), ["block 198.51.100.3"]);
        assert_eq!(journal.active_blocks().expect("active"), vec![record("198.51.100.4", 0)]);
    }

    #[test]
    fn degraded_keeps_working_in_memory_and_flushes_back() {
        let (_dir, path, journal) = file_journal();
        let before = journal.enqueue(&block("198.51.100.1", 1)).expect("enqueue");
        refuse_writes(&journal, true);

        // writes succeed from memory; ids stay stable; idempotency holds across file and memory
        let during = journal.enqueue(&block("198.51.100.2", 2)).expect("enqueue while degraded");
        assert!(journal.is_degraded());
        assert!(during.0 < 0, "memory id {during}");
        assert_eq!(journal.enqueue(&block("198.51.100.2", 3)).expect("enqueue"), during);
        assert_eq!(journal.enqueue(&block("198.51.100.1", 3)).expect("enqueue"), before);
        journal.record_attempt(during, "fortigate: 503").expect("attempt");
        journal.complete(before, &Outcome::Done).expect("complete while degraded");
        journal.record_block(&record("198.51.100.1", 4)).expect("block while degraded");
        journal.record_decision(&decision("198.51.100.2", 5, "block")).expect("decision while degraded");
        let pending = journal.pending().expect("pending while degraded");
        assert_eq!(ips(&pending), ["block 198.51.100.2"]);
        assert_eq!(pending[0].attempts, 1);
        assert_eq!(journal.active_blocks().expect("active"), vec![record("198.51.100.1", 4)]);
        assert_eq!(journal.recent_decisions(5).expect("recent"), vec![decision("198.51.100.2", 5, "block")]);
        assert_eq!(journal.buffered(), 5);
        assert!(journal.flush().is_err(), "still refused");

        // the file takes writes again: the buffer lands there and the memory id keeps working
        refuse_writes(&journal, false);
        assert_eq!(journal.flush().expect("flush"), 5);
        assert!(!journal.is_degraded());
        journal.record_attempt(during, "timeout").expect("attempt by memory id after flush");
        let other = Journal::open(&path).expect("another process");
        let pending = other.pending().expect("pending");
        assert_eq!(ips(&pending), ["block 198.51.100.2"]);
        assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("timeout")));
        assert_eq!(other.active_blocks().expect("active"), vec![record("198.51.100.1", 4)]);
        assert_eq!(other.recent_decisions(5).expect("recent"), vec![decision("198.51.100.2", 5, "block")]);
        journal.complete(during, &Outcome::Done).expect("complete by memory id");
        assert_eq!(other.pending().expect("pending"), vec![]);
    }

    #[test]
    fn degraded_flushes_on_a_later_write() {
        let (_dir, path, journal) = file_journal();
        journal.set_retry_interval(Duration::ZERO);
        refuse_writes(&journal, true);
        journal.enqueue(&block("198.51.100.1", 1)).expect("enqueue");
        assert!(journal.is_degraded());
        refuse_writes(&journal, false);
        journal.enqueue(&block("198.51.100.2", 2)).expect("enqueue");
        assert!(!journal.is_degraded());
        let other = Journal::open(&path).expect("another process");
        assert_eq!(ips(&other.pending().expect("pending")), ["block 198.51.100.1", "block 198.51.100.2"]);
    }

    #[test]
    fn file_deleted_or_replaced_degrades_then_moves_to_the_new_file() {
        // Works as root: the journal notices the path no longer names its file (WAL mode alone would keep writing
        // into the unlinked file and lose everything at exit).
        let (_dir, path, journal) = file_journal();
        let first = journal.enqueue(&block("198.51.100.1", 1)).expect("enqueue");
        let second = journal.enqueue(&block("198.51.100.3", 3)).expect("enqueue");
        journal.record_attempt(second, "timeout").expect("attempt");
        let state_dir = path.parent().expect("parent");
        std::fs::remove_dir_all(state_dir).expect("remove");
        std::fs::create_dir_all(&path).expect("directory where the file was");

        let id = journal.enqueue(&block("198.51.100.2", 2)).expect("enqueue while degraded");
        assert!(journal.is_degraded());
        let expected = ["block 198.51.100.1", "block 198.51.100.2", "block 198.51.100.3"];
        assert_eq!(ips(&journal.pending().expect("pending")), expected);
        journal.complete(id, &Outcome::Done).expect("complete while degraded");
        journal.complete(first, &Outcome::Done).expect("complete of a lost-file id while degraded");
        assert_eq!(ips(&journal.pending().expect("pending")), ["block 198.51.100.3"]);
        assert!(journal.flush().is_err(), "a directory is in the way");

        // the operator fixes it: the queue moves to the new file, old ids still work
        std::fs::remove_dir(&path).expect("remove directory");
        assert_eq!(journal.flush().expect("flush"), 3);
        let other = Journal::open(&path).expect("new file");
        let pending = other.pending().expect("pending");
        assert_eq!(ips(&pending), ["block 198.51.100.3"]);
        assert_eq!((pending[0].id, pending[0].attempts), (second, 1));
        journal.complete(second, &Outcome::Done).expect("complete by old id");
        assert_eq!(other.pending().expect("pending"), vec![]);
        let next = journal.enqueue(&block("198.51.100.4", 4)).expect("enqueue");
        assert!(next > second, "new ids do not reuse old ones");
    }

    #[test]
    fn open_or_memory_starts_degraded_and_adopts_the_file_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("state");
        std::fs::write(&blocker, b"a file where the directory should be").expect("write");
        let path = blocker.join("state.db");
        let (journal, error) = Journal::open_or_memory(&path);
        let message = error.expect("open failed").to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(journal.is_degraded());
        let id = journal.enqueue(&block("198.51.100.1", 1)).expect("enqueue in memory");
        journal.enqueue(&block("198.51.100.2", 2)).expect("enqueue in memory");
        journal.complete(id, &Outcome::Done).expect("complete in memory");
        assert_eq!(ips(&journal.pending().expect("pending")), ["block 198.51.100.2"]);
        assert!(journal.flush().is_err(), "path still blocked");

        std::fs::remove_file(&blocker).expect("unblock the path");
        assert_eq!(journal.flush().expect("flush"), 3);
        assert!(!journal.is_degraded());
        let reopened = Journal::open(&path).expect("file now exists");
        assert_eq!(ips(&reopened.pending().expect("pending")), ["block 198.51.100.2"]);
    }

    #[test]
    fn buffered_decisions_are_capped_actions_are_not() {
        let (_dir, _path, journal) = file_journal();
        refuse_writes(&journal, true);
        for n in 0..=MAX_BUFFERED_DECISIONS {
            let addr = format!("10.0.{}.{}", n / 256 % 256, n % 256);
            journal.record_decision(&decision(&addr, 0, "clean")).expect("decision");
        }
        journal.enqueue(&block("198.51.100.1", 1)).expect("enqueue");
        assert_eq!(journal.buffered(), MAX_BUFFERED_DECISIONS + 1);
        refuse_writes(&journal, false);
        assert_eq!(journal.flush().expect("flush"), MAX_BUFFERED_DECISIONS + 1);
        assert_eq!(journal.recent_decisions(usize::MAX).expect("decisions").len(), MAX_BUFFERED_DECISIONS);
        assert_eq!(ips(&journal.pending().expect("pending")), ["block 198.51.100.1"]);
    }

    #[test]
    fn in_memory_journal_works() {
        let journal = Journal::in_memory();
        let id = journal.enqueue(&unblock("2001:db8::1", 0)).expect("enqueue");
        assert_eq!(ips(&journal.pending().expect("pending")), ["unblock 2001:db8::1"]);
        journal.complete(id, &Outcome::Done).expect("complete");
        assert!(journal.pending().expect("pending").is_empty());
        assert!(!journal.is_degraded());
    }

    #[test]
    fn journal_is_send_sync_and_clone_shares() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Journal>();
        let journal = Journal::in_memory();
        let clone = journal.clone();
        let handle = std::thread::spawn(move || clone.enqueue(&block("198.51.100.1", 0)).expect("enqueue"));
        let id = handle.join().expect("thread");
        assert_eq!(journal.pending().expect("pending")[0].id, id);
    }

    #[test]
    fn times_are_fixed_width_text() {
        let cases = [
            (at(0), "2026-09-21T14:13:20.000000Z"),
            (at(0) + chrono::Duration::microseconds(1), "2026-09-21T14:13:20.000001Z"),
        ];
        for (t, text) in cases {
            assert_eq!(ts(&t), text);
        }
    }
}
