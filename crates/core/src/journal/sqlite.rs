//! The SQLite store: one connection, one transaction per write, and degraded mode. When the file refuses a write
//! the store logs loudly, buffers the write ([`super::shadow`]) and serves the pending queue from memory; it
//! writes the buffer back on a later write once [`RETRY_INTERVAL`] has passed, or on `flush`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior};
use tracing::{error, info, warn};

use super::schema::{self, file_id, is_unavailable, ts, FileId};
use super::shadow::{self, Applied, Op, Shadow};
use super::store::Store;
use super::{actions, decisions, ledger};
use super::{
    ActionId, BlockRecord, Decision, Error, NewAction, Outcome, PendingAction, PendingQuery, Pruned,
    MAX_BUFFERED_DECISIONS, RETRY_INTERVAL,
};

/// While degraded, the loud error is repeated at most this often (with the number of buffered entries).
const LOUD_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) struct SqliteStore {
    /// `None` only when the file never opened (see `Journal::open_or_memory`) or was lost.
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

impl SqliteStore {
    /// Opens the file at `path` (see `Journal::open`).
    pub(super) fn open(path: &Path) -> Result<SqliteStore, Error> {
        let conn = schema::open_file(path)?;
        let rows = actions::load_pending(&conn).map_err(|source| schema::sql_error(path, source))?;
        let mut store = SqliteStore::new(Some(conn), Some(path.to_owned()));
        store.shadow = Shadow::from_rows(rows);
        Ok(store)
    }

    /// Nothing but memory until `path` can be opened (see `Journal::open_or_memory`).
    pub(super) fn unopened(path: &Path) -> SqliteStore {
        let mut store = SqliteStore::new(None, Some(path.to_owned()));
        store.degraded = true;
        store.last_loud = Some(Instant::now());
        store.last_retry = Some(Instant::now());
        store
    }

    /// An in-memory database (see `Journal::in_memory`).
    #[cfg(test)]
    pub(super) fn memory() -> SqliteStore {
        match schema::open_memory() {
            Ok(conn) => SqliteStore::new(Some(conn), None),
            Err(error) => {
                // Only out-of-memory gets here; the buffers still work.
                error!(message = "In-memory journal cannot be created; using plain buffers.", %error);
                let mut store = SqliteStore::new(None, None);
                store.degraded = true;
                store
            }
        }
    }

    fn new(db: Option<Connection>, path: Option<PathBuf>) -> SqliteStore {
        SqliteStore {
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

    fn resolve(&self, id: ActionId) -> i64 {
        self.remap.get(&id.0).copied().unwrap_or(id.0)
    }

    /// Writes `ops` in one transaction. `Ok(None)`: the file refused, the store is now degraded and the caller
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
                applied.push(shadow::apply(&tx, op, &|id| id)?);
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

    /// Logs the loud error: at once when the store turns degraded, then at most every [`LOUD_INTERVAL`].
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
            let _ = self.flush_buffer();
        }
    }

    /// Opens the file if needed, replays the buffer in one transaction, and reloads the shadow from the file.
    fn flush_buffer(&mut self) -> Result<usize, Error> {
        if !self.degraded {
            return Ok(0);
        }
        self.last_retry = Some(Instant::now());
        if self.db.is_none() {
            let Some(path) = self.path.clone() else {
                return Err(Error::Unavailable { path: self.display_path() });
            };
            match schema::open_file(&path) {
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
        let result = shadow::replay(db, &restore, &self.backlog, &self.remap, &mut skipped);
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

    /// The latest `limit` decisions, newest first, buffered ones included.
    #[cfg(test)]
    pub(super) fn recent_decisions(&self, limit: usize) -> Result<Vec<super::Decision>, Error> {
        let mut newest: Vec<super::Decision> = self
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
            newest.extend(self.read_base(|db| decisions::load_recent(db, rest))?);
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
    }

    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        self.db.as_ref().expect("test journal has a connection")
    }
}

impl Store for SqliteStore {
    fn enqueue(&mut self, action: &NewAction) -> Result<ActionId, Error> {
        let op = Op::Enqueue { mem_id: 0, action: action.clone() };
        match self.try_db(std::slice::from_ref(&op))? {
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
        if self.degraded {
            return Ok(self.shadow.list_where(query));
        }
        let Some(db) = self.db.as_ref() else {
            return Ok(self.shadow.list_where(query));
        };
        match actions::load_pending_where(db, query) {
            Ok(rows) => {
                self.shadow.refresh(query, rows.clone());
                Ok(rows)
            }
            Err(error) if is_unavailable(&error) => {
                warn!(message = "Journal cannot be read; serving the pending queue from memory.", %error);
                Ok(self.shadow.list_where(query))
            }
            Err(source) => Err(self.sql_error(source)),
        }
    }

    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Error> {
        let all = PendingQuery { limit: None, ..query.clone() };
        if self.degraded || self.db.is_none() {
            return Ok(self.shadow.list_where(&all).len());
        }
        let db = self.db.as_ref().expect("checked above");
        match actions::count_pending(db, &all) {
            Ok(n) => Ok(n),
            Err(error) if is_unavailable(&error) => Ok(self.shadow.list_where(&all).len()),
            Err(source) => Err(self.sql_error(source)),
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
        let base = self.read_base(ledger::load_active)?;
        Ok(shadow::active_blocks(base, &self.backlog))
    }

    fn prune(&mut self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        let cutoff = ts(&older_than);
        if self.file_moved() {
            self.lose_file();
        }
        let path = self.display_path();
        let db = self.db.as_mut().ok_or_else(|| Error::Unavailable { path: path.clone() })?;
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pruned = Pruned {
                decisions: decisions::prune(&tx, &cutoff)?,
                actions: actions::prune(&tx, &cutoff)?,
                blocks: ledger::prune(&tx, &cutoff)?,
            };
            tx.commit()?;
            Ok(pruned)
        })();
        result.map_err(|source| Error::Sqlite { path, source })
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
                path = %self.display_path().display(),
                lost = self.backlog.len(),
            );
        }
    }

    #[cfg(test)]
    fn as_sqlite(&mut self) -> Option<&mut SqliteStore> {
        Some(self)
    }
}
