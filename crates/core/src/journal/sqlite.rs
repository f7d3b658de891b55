//! The SQLite store: one file, one connection, one transaction per write. [`SqliteFile`] is its [`Backend`];
//! degraded mode (a file that refuses writes, or was deleted or replaced) is [`super::buffered`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, TransactionBehavior};
#[cfg(test)]
use tracing::error;

use super::buffered::{Backend, Buffered, Failure, Replayed};
use super::schema::{self, file_id, is_unavailable, ts, FileId, SqlIp, SqlTime};
use super::shadow::{self, Applied, Op};
use super::transfer::{ActionRow, BlockRow, DecisionRow, Imported, Row};
use super::{actions, decisions, ledger};
use super::{BlockRecord, Error, PendingAction, PendingQuery, Pruned, RETRY_INTERVAL};

/// The SQLite journal with its degraded mode.
pub(crate) type SqliteStore = Buffered<SqliteFile>;

pub(crate) struct SqliteFile {
    /// `None` when the file never opened (see `Journal::open_or_memory`) or was lost.
    db: Option<Connection>,
    /// `None` for an in-memory journal.
    path: Option<PathBuf>,
    /// Identity of the file `db` has open, to notice it being deleted or replaced: in WAL mode SQLite would
    /// otherwise keep writing, successfully, into the unlinked file.
    file_id: Option<FileId>,
}

impl SqliteStore {
    /// Opens the file at `path` (see `Journal::open`).
    pub(super) fn open_file(path: &Path) -> Result<SqliteStore, Error> {
        let conn = schema::open_file(path)?;
        Buffered::open(SqliteFile { file_id: file_id(path), db: Some(conn), path: Some(path.to_owned()) })
    }

    /// Nothing but memory until `path` can be opened (see `Journal::open_or_memory`).
    pub(super) fn unopened_file(path: &Path) -> SqliteStore {
        Buffered::unopened(SqliteFile { db: None, path: Some(path.to_owned()), file_id: None })
    }

    /// An in-memory database (see `Journal::in_memory`).
    #[cfg(test)]
    pub(super) fn memory() -> SqliteStore {
        match schema::open_memory() {
            Ok(conn) => Buffered::new(SqliteFile { db: Some(conn), path: None, file_id: None }),
            Err(error) => {
                // Only out-of-memory gets here; the buffers still work.
                error!(message = "In-memory journal cannot be created; using plain buffers.", %error);
                Buffered::unopened(SqliteFile { db: None, path: None, file_id: None })
            }
        }
    }

    #[cfg(test)]
    pub(super) fn connection(&self) -> &Connection {
        self.backend.db.as_ref().expect("test journal has a connection")
    }
}

impl SqliteFile {
    fn display_path(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from(":memory:"))
    }

    fn sql_error(&self, source: rusqlite::Error) -> Error {
        Error::Sqlite { path: self.display_path(), source }
    }

    fn failure(&self, source: rusqlite::Error) -> Failure {
        if is_unavailable(&source) {
            Failure::Unavailable(self.sql_error(source))
        } else {
            Failure::Fatal(self.sql_error(source))
        }
    }

    fn db(&mut self) -> Result<&mut Connection, Failure> {
        let at = self.display_path().display().to_string();
        self.db.as_mut().ok_or(Failure::Unavailable(Error::Unavailable { at }))
    }

    fn read<T>(&mut self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, Failure> {
        let result = read(self.db()?);
        result.map_err(|source| self.failure(source))
    }
}

/// Applies one write; `translate` maps memory ids to file ids. Runs inside the caller's transaction.
fn apply(db: &Connection, op: &Op, translate: &dyn Fn(i64) -> i64) -> rusqlite::Result<Applied> {
    match op {
        Op::Enqueue { action, .. } => actions::enqueue(db, action),
        Op::Attempt { id, error, at } => actions::attempt(db, translate(*id), error, &ts(at)),
        Op::Complete { id, outcome, at } => actions::complete(db, translate(*id), outcome, &ts(at)),
        Op::Decision(d) => decisions::write(db, d).map(|()| Applied::Written),
        Op::Block(b) => ledger::open(db, b).map(|()| Applied::Written),
        Op::Unblock { target, ip, reason, at } => {
            ledger::close(db, target, *ip, reason, &ts(at)).map(|()| Applied::Written)
        }
    }
}

impl Backend for SqliteFile {
    const MAX_RETRY: Duration = RETRY_INTERVAL;

    fn location(&self) -> String {
        self.display_path().display().to_string()
    }

    fn is_open(&self) -> bool {
        self.db.is_some()
    }

    fn can_open(&self) -> bool {
        self.path.is_some()
    }

    fn open(&mut self) -> Result<(), Error> {
        let Some(path) = self.path.clone() else {
            return Err(Error::Unavailable { at: self.location() });
        };
        self.db = Some(schema::open_file(&path)?);
        self.file_id = file_id(&path);
        Ok(())
    }

    /// False if the path no longer names the file the connection has open; the connection is dropped.
    fn still_there(&mut self) -> bool {
        let moved = match (&self.path, self.file_id, &self.db) {
            (Some(path), Some(id), Some(_)) => file_id(path) != Some(id),
            _ => false,
        };
        if moved {
            self.db = None;
            self.file_id = None;
        }
        !moved
    }

    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Applied>, Failure> {
        let db = self.db()?;
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut applied = Vec::with_capacity(ops.len());
            for op in ops {
                applied.push(apply(&tx, op, &|id| id)?);
            }
            tx.commit()?;
            Ok(applied)
        })();
        result.map_err(|source| self.failure(source))
    }

    fn replay(
        &mut self,
        restore: &[PendingAction],
        backlog: &[Op],
        known: &HashMap<i64, i64>,
        skipped: &mut Vec<(Op, String)>,
    ) -> Result<Replayed, Failure> {
        let db = self.db()?;
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for p in restore {
                actions::restore(&tx, p)?;
            }
            let remap = shadow::replay_ops(backlog, known, skipped, |op, tr| apply(&tx, op, tr), is_unavailable)?;
            let pending = actions::load_pending(&tx)?;
            tx.commit()?;
            Ok((remap, pending))
        })();
        result.map_err(|source| self.failure(source))
    }

    fn load_pending(&mut self, query: &PendingQuery) -> Result<Vec<PendingAction>, Failure> {
        self.read(|db| actions::load_pending_where(db, query))
    }

    fn count_pending(&mut self, query: &PendingQuery) -> Result<usize, Failure> {
        self.read(|db| actions::count_pending(db, query))
    }

    fn load_active(&mut self) -> Result<Vec<BlockRecord>, Failure> {
        self.read(ledger::load_active)
    }

    fn prune(&mut self, older_than: DateTime<Utc>) -> Result<Pruned, Error> {
        let cutoff = ts(&older_than);
        let db = self.db().map_err(Failure::into_error)?;
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
        result.map_err(|source| self.sql_error(source))
    }

    fn export(&mut self) -> Result<Vec<Row>, Error> {
        let result = self.read(export_rows);
        result.map_err(Failure::into_error)
    }

    fn import(&mut self, rows: &[Row]) -> Result<Imported, Error> {
        let at = self.location();
        let db = self.db().map_err(Failure::into_error)?;
        let result = (|| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: i64 = tx.query_row(
                "SELECT (SELECT count(*) FROM actions) + (SELECT count(*) FROM decisions) + (SELECT count(*) FROM blocks)",
                [],
                |r| r.get(0),
            )?;
            if existing > 0 {
                return Ok(Err(Error::NotEmpty { at: at.clone(), rows: existing }));
            }
            let mut imported = Imported::default();
            for row in rows {
                import_row(&tx, row)?;
                imported.count(row);
            }
            tx.commit()?;
            Ok(Ok(imported))
        })();
        result.map_err(|source| self.sql_error(source))?
    }

    #[cfg(test)]
    fn recent_decisions(&mut self, limit: usize) -> Result<Vec<super::Decision>, Error> {
        self.read(|db| decisions::load_recent(db, limit)).map_err(Failure::into_error)
    }
}

fn opt_time(t: Option<SqlTime>) -> Option<DateTime<Utc>> {
    t.map(|t| t.0)
}

/// Every row of the three tables, each table by id.
fn export_rows(db: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut stmt = db.prepare(
        "SELECT id, target, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error,
                last_attempt_at, state, outcome, finished_at FROM actions ORDER BY id",
    )?;
    let actions = stmt.query_map([], |r| {
        Ok(Row::Action(ActionRow {
            id: r.get(0)?,
            target: r.get(1)?,
            kind: r.get(2)?,
            ip: r.get::<_, SqlIp>(3)?.0,
            reason: r.get(4)?,
            event_id: r.get(5)?,
            rule: r.get(6)?,
            comment: r.get(7)?,
            requested_at: r.get::<_, SqlTime>(8)?.0,
            attempts: r.get(9)?,
            last_error: r.get(10)?,
            last_attempt_at: opt_time(r.get(11)?),
            state: r.get(12)?,
            outcome: r.get(13)?,
            finished_at: opt_time(r.get(14)?),
        }))
    })?;
    for row in actions {
        rows.push(row?);
    }
    let mut stmt = db.prepare(
        "SELECT id, target, at, last_at, repeats, ip, verdict, detail, event_id, rule FROM decisions ORDER BY id",
    )?;
    let decisions = stmt.query_map([], |r| {
        Ok(Row::Decision(DecisionRow {
            id: r.get(0)?,
            target: r.get(1)?,
            at: r.get::<_, SqlTime>(2)?.0,
            last_at: r.get::<_, SqlTime>(3)?.0,
            repeats: r.get(4)?,
            ip: r.get::<_, SqlIp>(5)?.0,
            verdict: r.get(6)?,
            detail: r.get(7)?,
            event_id: r.get(8)?,
            rule: r.get(9)?,
        }))
    })?;
    for row in decisions {
        rows.push(row?);
    }
    let mut stmt = db.prepare(
        "SELECT id, target, ip, object, grp, event_id, rule, reason, blocked_at, backend, unblocked_at,
                unblock_reason FROM blocks ORDER BY id",
    )?;
    let blocks = stmt.query_map([], |r| {
        Ok(Row::Block(BlockRow {
            id: r.get(0)?,
            target: r.get(1)?,
            ip: r.get::<_, SqlIp>(2)?.0,
            object: r.get(3)?,
            group: r.get(4)?,
            event_id: r.get(5)?,
            rule: r.get(6)?,
            reason: r.get(7)?,
            blocked_at: opt_time(r.get(8)?),
            backend: r.get(9)?,
            unblocked_at: opt_time(r.get(10)?),
            unblock_reason: r.get(11)?,
        }))
    })?;
    for row in blocks {
        rows.push(row?);
    }
    Ok(rows)
}

fn import_row(db: &Connection, row: &Row) -> rusqlite::Result<()> {
    let ts_opt = |t: &Option<DateTime<Utc>>| t.as_ref().map(ts);
    match row {
        Row::Action(a) => db.execute(
            "INSERT INTO actions (id, target, kind, ip, reason, event_id, rule, comment, requested_at, attempts,
                                  last_error, last_attempt_at, state, outcome, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                a.id,
                a.target,
                a.kind,
                a.ip.to_string(),
                a.reason,
                a.event_id,
                a.rule,
                a.comment,
                ts(&a.requested_at),
                a.attempts,
                a.last_error,
                ts_opt(&a.last_attempt_at),
                a.state,
                a.outcome,
                ts_opt(&a.finished_at)
            ],
        ),
        Row::Decision(d) => db.execute(
            "INSERT INTO decisions (id, target, at, last_at, repeats, ip, verdict, detail, event_id, rule)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                d.id,
                d.target,
                ts(&d.at),
                ts(&d.last_at),
                d.repeats,
                d.ip.to_string(),
                d.verdict,
                d.detail,
                d.event_id,
                d.rule
            ],
        ),
        Row::Block(b) => db.execute(
            "INSERT INTO blocks (id, target, ip, object, grp, event_id, rule, reason, blocked_at, backend,
                                 unblocked_at, unblock_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                b.id,
                b.target,
                b.ip.to_string(),
                b.object,
                b.group,
                b.event_id,
                b.rule,
                b.reason,
                ts_opt(&b.blocked_at),
                b.backend,
                ts_opt(&b.unblocked_at),
                b.unblock_reason
            ],
        ),
    }
    .map(|_| ())
}
