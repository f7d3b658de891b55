//! Degraded mode, once for every store: [`Buffered`] wraps a [`Backend`] (the SQLite file, a PostgreSQL database)
//! and implements [`Store`] on top of it. When the backend refuses a write because it is unavailable (a file that
//! is read-only, full or gone; a database that is down, restarting or unreachable) it logs loudly, keeps the write
//! in memory ([`super::shadow`]) and serves the pending queue from memory; it writes the buffer back on a later
//! write or read of the pending queue once the retry interval has passed (growing up to [`Backend::MAX_RETRY`]
//! while failures last), or on `flush`.
//!
//! A backend only knows its own SQL: it applies writes in one transaction, replays a buffer, reads, prunes, and
//! says whether a failure means "unavailable" ([`Failure::Unavailable`]: degrade and buffer) or is about the write
//! itself ([`Failure::Fatal`]: returned to the caller).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

use super::shadow::{self, Applied, Op, Shadow};
use super::store::Store;
use super::transfer::{Imported, Row};
use super::{
    ActionId, BlockRecord, Decision, Error, NewAction, Outcome, PendingAction, PendingQuery, Pruned,
    MAX_BUFFERED_DECISIONS, RETRY_INTERVAL,
};

/// While degraded, the loud error is repeated at most this often (with the number of buffered entries).
const LOUD_INTERVAL: Duration = Duration::from_secs(60);

/// Why a backend call failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The store cannot take the call now (degrade and buffer; retry later).
    Unavailable(Error),
    /// The call itself is wrong (a bug, a constraint): returned to the caller.
    Fatal(Error),
}

impl Failure {
    pub(super) fn into_error(self) -> Error {
        match self {
            Failure::Unavailable(e) | Failure::Fatal(e) => e,
        }
    }
}

/// What the rest of the pending queue is, after a replay: memory id → store id, and the queue as the store has it.
pub(super) type Replayed = (HashMap<i64, i64>, Vec<PendingAction>);

/// A journal store's own SQL, without degraded mode. Every method is called on the writer thread.
pub(super) trait Backend: Send {
    /// How long the retry interval may grow while the store stays unavailable. SQLite keeps
    /// [`RETRY_INTERVAL`] (a local file costs nothing to try); a database backs off, since each try may wait
    /// for a connect timeout.
    const MAX_RETRY: Duration;

    /// Where the journal lives, for messages: a path, or a database URL (never with a password).
    fn location(&self) -> String;
    /// True when a connection is open.
    fn is_open(&self) -> bool;
    /// True if [`Backend::open`] can ever succeed (false for an in-memory database that failed to start).
    fn can_open(&self) -> bool;
    /// Opens the store (a file, a connection), with its migrations.
    fn open(&mut self) -> Result<(), Error>;
    /// Called before each write: false when the store was lost under us (SQLite: the file was deleted or
    /// replaced). The backend has closed it; the pending queue in memory is restored into the next one opened.
    fn still_there(&mut self) -> bool {
        true
    }
    /// Applies `ops` in one transaction.
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Applied>, Failure>;
    /// Writes `restore` (actions a lost store held, under their ids) then `backlog` in one transaction; entries
    /// rejected for their content go to `skipped`. See [`shadow::replay_ops`].
    fn replay(
        &mut self,
        restore: &[PendingAction],
        backlog: &[Op],
        known: &HashMap<i64, i64>,
        skipped: &mut Vec<(Op, String)>,
    ) -> Result<Replayed, Failure>;
    fn load_pending(&mut self, query: &PendingQuery) -> Result<Vec<PendingAction>, Failure>;
    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Failure>;
    fn load_active(&mut self) -> Result<Vec<BlockRecord>, Failure>;
    fn prune(&mut self, cutoff: DateTime<Utc>) -> Result<Pruned, Error>;
    /// Every row of the three tables, for `integration journal export`.
    fn export(&mut self) -> Result<Vec<Row>, Error>;
    /// Writes exported rows into an empty journal in one transaction (refused if it is not empty).
    fn import(&mut self, rows: &[Row]) -> Result<Imported, Error>;
    /// The latest `limit` decisions, newest first.
    #[cfg(test)]
    fn recent_decisions(&mut self, limit: usize) -> Result<Vec<Decision>, Error>;
}

/// A [`Backend`] with degraded mode: the [`Store`] the writer runs.
pub(crate) struct Buffered<B> {
    pub(super) backend: B,
    /// The store was lost (see [`Backend::still_there`]): on reopen, write the shadow queue into the new one.
    reseed: bool,
    shadow: Shadow,
    /// Writes the store refused, oldest first. Non-empty implies `degraded`.
    backlog: Vec<Op>,
    buffered_decisions: usize,
    dropped_decisions: u64,
    /// Memory id → store id, for ids handed out while degraded.
    remap: HashMap<i64, i64>,
    next_mem_id: i64,
    degraded: bool,
    last_loud: Option<Instant>,
    suppressed: u64,
    last_retry: Option<Instant>,
    retry_interval: Duration,
    /// The current wait between retries: `retry_interval`, doubled after each failed retry up to `B::MAX_RETRY`.
    backoff: Duration,
}

impl<B: Backend> Buffered<B> {
    /// An open backend, with the pending queue it holds.
    pub(super) fn open(mut backend: B) -> Result<Buffered<B>, Error> {
        let rows = backend.load_pending(&PendingQuery::default()).map_err(Failure::into_error)?;
        let mut store = Buffered::new(backend);
        store.shadow = Shadow::from_rows(rows);
        Ok(store)
    }

    /// A backend that could not be opened: nothing but memory until it can (see `Journal::open_or_memory`).
    pub(super) fn unopened(backend: B) -> Buffered<B> {
        let mut store = Buffered::new(backend);
        store.degraded = true;
        store.last_loud = Some(Instant::now());
        store.last_retry = Some(Instant::now());
        store
    }

    pub(super) fn new(backend: B) -> Buffered<B> {
        Buffered {
            backend,
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
            backoff: RETRY_INTERVAL,
        }
    }

    fn resolve(&self, id: ActionId) -> i64 {
        self.remap.get(&id.0).copied().unwrap_or(id.0)
    }

    /// Writes `ops` in one transaction. `Ok(None)`: the store refused, it is now degraded and the caller must
    /// buffer. While degraded, first tries to write the buffer back if a retry is due.
    fn try_store(&mut self, ops: &[Op]) -> Result<Option<Vec<Applied>>, Error> {
        if self.degraded {
            self.retry_if_due();
            if self.degraded {
                return Ok(None);
            }
        }
        if !self.backend.still_there() {
            self.lose_store();
            return Ok(None);
        }
        match self.backend.apply(ops) {
            Ok(applied) => Ok(Some(applied)),
            Err(Failure::Unavailable(error)) => {
                self.note_failure(&error);
                Ok(None)
            }
            Err(Failure::Fatal(error)) => Err(error),
        }
    }

    /// The backend lost its store; the shadow queue is written to the next one opened.
    fn lose_store(&mut self) {
        let error = Error::Moved { at: self.backend.location() };
        self.note_failure(&error);
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

    /// Logs the loud error: at once when the store turns degraded, then at most every [`LOUD_INTERVAL`].
    fn note_failure(&mut self, source: &dyn std::error::Error) {
        let now = Instant::now();
        self.last_retry = Some(now);
        let location = self.backend.location();
        if !self.degraded {
            self.degraded = true;
            self.backoff = self.retry_interval;
            self.last_loud = Some(now);
            error!(
                message = "Journal is not writable; keeping pending actions in memory until it is.",
                error = %source,
                journal = %location,
            );
        } else if !matches!(self.last_loud, Some(t) if now.duration_since(t) < LOUD_INTERVAL) {
            self.last_loud = Some(now);
            error!(
                message = "Journal is still not writable; pending actions are in memory only.",
                error = %source,
                journal = %location,
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
        let due = !matches!(self.last_retry, Some(t) if t.elapsed() < self.backoff);
        if due && (self.backend.can_open() || self.backend.is_open()) {
            // The failure is logged (rate-limited) inside.
            if self.flush_buffer().is_err() {
                self.backoff = (self.backoff * 2).min(B::MAX_RETRY.max(self.retry_interval));
            }
        }
    }

    /// Opens the store if needed, replays the buffer in one transaction, and reloads the shadow from the store.
    fn flush_buffer(&mut self) -> Result<usize, Error> {
        if !self.degraded {
            return Ok(0);
        }
        self.last_retry = Some(Instant::now());
        if !self.backend.is_open() {
            if !self.backend.can_open() {
                return Err(Error::Unavailable { at: self.backend.location() });
            }
            if let Err(error) = self.backend.open() {
                self.note_failure(&error);
                return Err(error);
            }
        }
        // Actions the lost store held (positive ids) go first, under their old ids, so ids callers hold stay valid.
        let restore: Vec<PendingAction> =
            if self.reseed { self.shadow.by_id.values().filter(|p| p.id.0 > 0).cloned().collect() } else { Vec::new() };
        let mut skipped = Vec::new();
        let result = self.backend.replay(&restore, &self.backlog, &self.remap, &mut skipped);
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
                self.backoff = self.retry_interval;
                info!(
                    message = "Journal is writable again; buffered entries written.",
                    journal = %self.backend.location(),
                    flushed,
                    dropped_decisions = self.dropped_decisions,
                );
                self.dropped_decisions = 0;
                self.suppressed = 0;
                Ok(flushed)
            }
            Err(failure) => {
                let error = failure.into_error();
                self.note_failure(&error);
                Err(error)
            }
        }
    }

    /// Writes an attempt/complete; false if the id is unknown. While degraded, an id the shadow does not know is
    /// accepted when positive (another process may have queued it) and rejected when negative.
    fn write_action_op(&mut self, id: ActionId, op: Op) -> Result<bool, Error> {
        match self.try_store(std::slice::from_ref(&op))? {
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
        if self.try_store(std::slice::from_ref(&op))?.is_none() {
            self.buffer(op);
        }
        Ok(())
    }

    /// True when reads should come from memory only: degraded, or nothing open and nothing to open.
    fn memory_only(&self) -> bool {
        self.degraded || (!self.backend.is_open() && !self.backend.can_open())
    }

    /// The latest `limit` decisions, newest first, buffered ones included.
    #[cfg(test)]
    pub(super) fn recent_decisions(&mut self, limit: usize) -> Result<Vec<Decision>, Error> {
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
        if rest > 0 && self.backend.is_open() {
            match self.backend.recent_decisions(rest) {
                Ok(rows) => newest.extend(rows),
                Err(_) if self.degraded => {}
                Err(error) => return Err(error),
            }
        }
        Ok(newest)
    }

    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.backlog.len()
    }

    #[cfg(test)]
    pub(super) fn set_retry_interval(&mut self, every: Duration) {
        self.retry_interval = every;
        self.backoff = every;
    }
}

impl<B: Backend + 'static> Store for Buffered<B> {
    fn enqueue(&mut self, action: &NewAction) -> Result<ActionId, Error> {
        let op = Op::Enqueue { mem_id: 0, action: action.clone() };
        match self.try_store(std::slice::from_ref(&op))? {
            Some(applied) => match applied.into_iter().next() {
                Some(Applied::Enqueued(row)) => {
                    let id = row.id;
                    self.shadow.insert(row);
                    Ok(id)
                }
                other => unreachable!("an enqueue applies as Enqueued, not {other:?}"),
            },
            None => {
                if let Some(id) = self.shadow.find(&action.target, action.kind, action.ip) {
                    return Ok(id);
                }
                let id = self.next_mem_id;
                self.next_mem_id -= 1;
                self.shadow.insert(PendingAction::new(id, action));
                self.buffer(Op::Enqueue { mem_id: id, action: action.clone() });
                Ok(ActionId(id))
            }
        }
    }

    fn pending(&mut self, query: &PendingQuery) -> Result<Vec<PendingAction>, Error> {
        if self.degraded {
            self.retry_if_due();
        }
        if self.memory_only() {
            return Ok(self.shadow.list_where(query));
        }
        match self.backend.load_pending(query) {
            Ok(rows) => {
                self.shadow.refresh(query, rows.clone());
                Ok(rows)
            }
            Err(Failure::Unavailable(error)) => {
                warn!(message = "Journal cannot be read; serving the pending queue from memory.", %error);
                Ok(self.shadow.list_where(query))
            }
            Err(Failure::Fatal(error)) => Err(error),
        }
    }

    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Error> {
        let all = PendingQuery { limit: None, ..query.clone() };
        // A reader retries too: a cluster's follower only counts the queue, and what it buffered while the store
        // was away must reach the store (and the leader) without waiting for its next write.
        if self.degraded {
            self.retry_if_due();
        }
        if self.memory_only() {
            return Ok(self.shadow.list_where(&all).len());
        }
        match self.backend.count_pending(&all) {
            Ok(n) => Ok(n),
            Err(Failure::Unavailable(_)) => Ok(self.shadow.list_where(&all).len()),
            Err(Failure::Fatal(error)) => Err(error),
        }
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

    fn record_decision(&mut self, decision: &Decision) -> Result<(), Error> {
        self.write_simple(Op::Decision(decision.clone()))
    }

    fn record_block(&mut self, block: &BlockRecord) -> Result<(), Error> {
        self.write_simple(Op::Block(block.clone()))
    }

    fn record_unblock(&mut self, target: &str, ip: IpAddr, reason: &str, at: DateTime<Utc>) -> Result<(), Error> {
        self.write_simple(Op::Unblock { target: target.to_owned(), ip, reason: reason.to_owned(), at })
    }

    fn active_blocks(&mut self) -> Result<Vec<BlockRecord>, Error> {
        let base = if !self.memory_only() || self.backend.is_open() {
            match self.backend.load_active() {
                Ok(rows) => rows,
                Err(Failure::Unavailable(_)) if self.degraded => Vec::new(),
                Err(failure) => return Err(failure.into_error()),
            }
        } else {
            Vec::new()
        };
        Ok(shadow::active_blocks(base, &self.backlog))
    }

    fn prune(&mut self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        if !self.backend.still_there() {
            self.lose_store();
        }
        if !self.backend.is_open() {
            return Err(Error::Unavailable { at: self.backend.location() });
        }
        self.backend.prune(older_than)
    }

    fn flush(&mut self) -> Result<usize, Error> {
        self.flush_buffer()
    }

    fn is_degraded(&self) -> bool {
        self.degraded
    }

    fn close(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        if self.flush_buffer().is_err() {
            error!(
                message = "Journal closed while not writable; buffered entries are lost.",
                journal = %self.backend.location(),
                lost = self.backlog.len(),
            );
        }
    }

    fn start(&mut self) -> Result<(), Error> {
        if self.backend.is_open() {
            return Ok(());
        }
        let opened = self
            .backend
            .open()
            .and_then(|()| self.backend.load_pending(&PendingQuery::default()).map_err(Failure::into_error));
        match opened {
            Ok(rows) => {
                self.shadow = Shadow::from_rows(rows);
                Ok(())
            }
            Err(error) => {
                let now = Instant::now();
                self.degraded = true;
                self.last_loud = Some(now);
                self.last_retry = Some(now);
                Err(error)
            }
        }
    }

    fn export(&mut self) -> Result<Vec<Row>, Error> {
        if self.degraded {
            return Err(Error::Unavailable { at: self.backend.location() });
        }
        self.backend.export()
    }

    fn import(&mut self, rows: &[Row]) -> Result<Imported, Error> {
        if self.degraded {
            return Err(Error::Unavailable { at: self.backend.location() });
        }
        let imported = self.backend.import(rows)?;
        let pending = self.backend.load_pending(&PendingQuery::default()).map_err(Failure::into_error)?;
        self.shadow = Shadow::from_rows(pending);
        Ok(imported)
    }

    #[cfg(test)]
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
