//! The journal: fortimisp's durable memory, shared by both daemons: one SQLite file (`[state] path`), or a
//! PostgreSQL database (`[state] url`) that several instances can share.
//!
//! It owns three tables and nothing else:
//! - `actions`, the work queue ([`actions`](self::actions)). Every block and unblock is
//!   [enqueued](Journal::enqueue) *before* it is attempted and [completed](Journal::complete) with an [`Outcome`]
//!   after. [`Journal::pending`] is what a restart resumes (after SIGKILL, a FortiGate outage, or a
//!   `max_blocks_per_minute` backlog). Finished rows stay as the record of what was done until [`Journal::prune`].
//! - `decisions`, the audit trail of verdicts: one row per distinct decision. A decision identical to the latest
//!   one for the same IP (verdict, detail, event, rule) bumps that row's `repeats` and `last_at` instead.
//! - `blocks`, the ledger of blocks fortimisp made: opened by [`Journal::record_block`], closed by
//!   [`Journal::record_unblock`]. [`Journal::active_blocks`] feeds `list` and housekeeping.
//!
//! It does not talk to MISP or the FortiGate, decide, retry on a timer or rate-limit: the daemons enqueue, execute
//! and complete (removals through [`crate::unblock`]); the journal remembers.
//!
//! # Layout
//! - `handle`: [`Journal`], the async handle every caller holds (cheap to clone).
//! - `writer`: the one thread that owns the store; requests arrive on a bounded channel and are answered on a
//!   oneshot each. `store`: the [`Store`](store::Store) trait the writer executes requests against.
//! - `buffered`: degraded mode, once for both stores: [`Buffered`](buffered::Buffered) wraps a
//!   [`Backend`](buffered::Backend) (one store's SQL) and is the `Store` the writer runs; the loud error, the
//!   retries with backoff, the write-back.
//! - `shadow`: the degraded mode's memory: the buffered writes, the shadow of the pending queue, and the order in
//!   which a store replays them.
//! - `sqlite`: the SQLite backend. `schema`: its migrations, opening and configuring the file, the text encodings
//!   of times and IPs. `actions`, `decisions`, `ledger`: its SQL of each table.
//! - `postgres`: the PostgreSQL backend ([`PostgresTarget`]: URL, password, TLS), its migrations and SQL.
//! - `transfer`: every row as JSON lines, the same from either store (`integration journal export`/`import`).
//! - `contract` (tests): one suite run against both stores; `testdb`: its fixtures.
//!
//! # Invariants
//! - At most one *pending* action per (target, kind, IP), enforced by a partial unique index in either store, so
//!   [`Journal::enqueue`] is idempotent across restarts and across processes (and instances sharing PostgreSQL).
//! - A write is never dropped silently. When the store refuses a write because it is unavailable (SQLite: disk
//!   full, permissions, file deleted or replaced, lock held longer than [`BUSY_TIMEOUT`]; PostgreSQL: refused,
//!   reset, restarting, a connect or statement timeout) the journal turns *degraded*: it logs one loud error (then at
//!   most one every minute while it lasts), keeps the write in memory, and keeps serving enqueue, pending and
//!   complete from its in-memory shadow of the pending queue. Every [`RETRY_INTERVAL`] (PostgreSQL: doubling up to
//!   a minute while it stays away), or on [`Journal::flush`], it tries to write the buffered entries back, in
//!   order, in one transaction. Only a crash while degraded loses them.
//! - Times are RFC 3339 UTC text with microseconds in SQLite (fixed width, so text order is time order;
//!   sub-microsecond precision is dropped), `timestamptz` (also microseconds) in PostgreSQL. IPs are text in Rust's
//!   canonical form in both. `sqlite3 state.db` and `psql` are readable by an operator.
//!
//! # Design
//! rusqlite is synchronous, so one writer thread per process owns the connection and the async API never blocks a
//! runtime worker: a caller sends a request and awaits its reply, and a lock the other daemon holds for seconds
//! stalls only the writer. [`Journal::is_degraded`] reads an atomic the writer keeps current, so any task can ask
//! at once. Nothing happens in `Drop`: the daemons call [`Journal::flush`] at shutdown, and when the last handle
//! goes the writer finishes the requests already queued (and makes one last attempt to write a degraded buffer
//! back) before it ends. The writer executes requests against a [`Store`](store::Store), so a second store can
//! sit behind the same handle.
//!
//! The two daemons share the file through WAL mode and a busy timeout (SQLite serialises writers).
//! `synchronous = NORMAL` in WAL mode means a committed write survives a process crash (SIGKILL); only an OS
//! crash or power loss can drop the last transactions, a trade made to keep writes cheap. The schema version lives
//! in `PRAGMA user_version`; [`Journal::open`] applies the missing migrations in order and refuses a file written
//! by a newer build.

mod actions;
mod buffered;
mod decisions;
mod handle;
mod ledger;
mod postgres;
mod schema;
mod shadow;
mod sqlite;
mod store;
pub mod transfer;
mod writer;

#[cfg(test)]
mod contract;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use handle::Journal;
pub use postgres::PostgresTarget;

/// How long a write waits for the other daemon's write lock. Longer counts as "unavailable": the write is
/// buffered in memory (degraded mode) rather than stalling the blocker. Kept well under the 10 s SIGTERM budget:
/// the writes of the two daemons take milliseconds, so a lock held this long means something is wrong.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(3);

/// While degraded, a write or `pending()` tries to write the buffered entries back at most this often.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// While degraded, at most this many decisions are buffered; further ones are counted and dropped (they are audit,
/// not work). Actions and ledger entries are never dropped: they are bounded by the block rate.
pub const MAX_BUFFERED_DECISIONS: usize = 10_000;

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
    #[error("journal {at}: not open (degraded, working from memory)")]
    Unavailable { at: String },
    #[error("journal {at}: the file was deleted or replaced while open")]
    Moved { at: String },
    /// A PostgreSQL journal's error; `at` is its URL (which never holds a password).
    #[error("journal {at}: {}", with_causes(source))]
    Postgres { at: String, source: ::postgres::Error },
    #[error("journal {at}: schema version {found} is newer than this build understands ({supported})")]
    TooNewDatabase { at: String, found: i64, supported: i64 },
    #[error("journal {at}: {message}")]
    Setup { at: String, message: String },
    #[error("journal {at}: not empty ({rows} rows); import only into an empty journal")]
    NotEmpty { at: String, rows: i64 },
    #[error("journal: no action with id {0}")]
    UnknownAction(ActionId),
    #[error("journal: cannot start its writer thread: {0}")]
    Spawn(std::io::Error),
    /// The writer thread is gone (it panicked); nothing more can be written by this process.
    #[error("journal: the writer thread stopped")]
    WriterGone,
}

/// An error and its causes on one line (`error performing TLS handshake: invalid peer certificate: UnknownIssuer`):
/// the client's own message often leaves the useful part to its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let more = next.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = next.source();
    }
    text
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
    /// The FortiGate target it is for (`default` for a single `[fortigate]` table).
    pub target: String,
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
    pub target: String,
    pub kind: ActionKind,
    pub ip: IpAddr,
    pub reason: String,
    pub event_id: Option<u64>,
    pub rule: Option<usize>,
    pub comment: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// A block whose target and address have an open entry in the ledger, as of the read: done already (by
    /// another instance of a cluster, or before a crash that lost the completion). A decided block then needs no
    /// FortiGate call. Always `false` for an action just enqueued.
    #[serde(skip_serializing)]
    pub ledger_open: bool,
}

impl PendingAction {
    fn new(id: i64, a: &NewAction) -> PendingAction {
        PendingAction {
            id: ActionId(id),
            target: a.target.clone(),
            kind: a.kind,
            ip: a.ip,
            reason: a.reason.clone(),
            event_id: a.event_id,
            rule: a.rule,
            comment: a.comment.clone(),
            requested_at: a.requested_at,
            attempts: 0,
            last_error: None,
            ledger_open: false,
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
    /// The target an execution's verdict is about; `None` for a verdict about the address alone.
    pub target: Option<String>,
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
    /// The FortiGate target the block is on.
    pub target: String,
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

/// Which pending actions [`Journal::pending_where`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingQuery {
    pub kind: Option<ActionKind>,
    pub target: Option<String>,
    /// The oldest this many at most.
    pub limit: Option<usize>,
}

impl PendingQuery {
    /// Pending blocks on `target`, the oldest `limit` at most.
    pub fn blocks_of(target: &str, limit: usize) -> PendingQuery {
        PendingQuery { kind: Some(ActionKind::Block), target: Some(target.to_owned()), limit: Some(limit) }
    }
}

impl PendingQuery {
    fn selects(&self, p: &PendingAction) -> bool {
        self.kind.is_none_or(|k| k == p.kind) && self.target.as_ref().is_none_or(|t| *t == p.target)
    }
}

/// Rows removed by [`Journal::prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub decisions: usize,
    pub actions: usize,
    pub blocks: usize,
}
