//! The file: schema migrations, opening and configuring a connection, and the text encodings of times and IPs
//! that every table shares.

use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tracing::warn;

use super::{Error, BUSY_TIMEOUT};

/// Prepared statements kept per connection; more than the journal's distinct statements, so none is re-prepared.
const STATEMENT_CACHE: usize = 32;

/// Schema migrations; `MIGRATIONS[i]` takes `user_version` from `i` to `i + 1`. Append, never edit.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2: fleets. Every action, decision and ledger entry belongs to a target; rows written before are the single
    // `[fortigate]` table's, the target named `default`. One pending action per (target, kind, IP), one open
    // block per (target, IP).
    "
    ALTER TABLE actions ADD COLUMN target TEXT NOT NULL DEFAULT 'default';
    DROP INDEX actions_one_pending;
    CREATE UNIQUE INDEX actions_one_pending ON actions (target, kind, ip) WHERE state = 'pending';
    DROP INDEX actions_queue;
    CREATE INDEX actions_queue ON actions (target, requested_at, id) WHERE state = 'pending';

    ALTER TABLE decisions ADD COLUMN target TEXT;

    ALTER TABLE blocks ADD COLUMN target TEXT NOT NULL DEFAULT 'default';
    DROP INDEX blocks_active;
    CREATE UNIQUE INDEX blocks_active ON blocks (target, ip) WHERE unblocked_at IS NULL;
    ",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) the file at `path`: parent directory, WAL, busy timeout, migrations.
pub(super) fn open_file(path: &Path) -> Result<Connection, Error> {
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

/// An in-memory database with the schema, for tests.
#[cfg(test)]
pub(super) fn open_memory() -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    migrate(&mut conn)?;
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

pub(super) fn sql_error(path: &Path, source: rusqlite::Error) -> Error {
    Error::Sqlite { path: path.to_owned(), source }
}

/// True for errors that mean "the file cannot take writes now" (degrade and buffer), as opposed to errors about
/// the write itself (a bug; returned to the caller).
pub(super) fn is_unavailable(error: &rusqlite::Error) -> bool {
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

/// (device, inode) of the file at `path`, if there is one.
pub(super) type FileId = (u64, u64);

#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
pub(super) fn file_id(_path: &Path) -> Option<FileId> {
    None
}

/// A time as stored: RFC 3339 UTC with microseconds, fixed width.
pub(super) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A column holding an IP as text.
pub(super) struct SqlIp(pub(super) IpAddr);

impl FromSql for SqlIp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map(SqlIp).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A column holding an RFC 3339 time as text.
pub(super) struct SqlTime(pub(super) DateTime<Utc>);

impl FromSql for SqlTime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        DateTime::parse_from_rfc3339(value.as_str()?)
            .map(|t| SqlTime(t.with_timezone(&Utc)))
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::journal::testutil::*;
    use crate::journal::Journal;

    /// A journal written before fleets (schema 1) opens as the `default` target's: its pending actions and open
    /// blocks are kept, and the uniqueness rules now hold per target.
    #[tokio::test]
    async fn a_journal_from_before_fleets_becomes_the_default_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("schema 1");
            conn.pragma_update(None, "user_version", 1).expect("version");
            conn.execute_batch(
                "INSERT INTO actions (kind, ip, reason, requested_at) VALUES ('block', '198.51.100.7', 'm', '2026-01-01T00:00:00.000000Z');
                 INSERT INTO blocks (ip, object, reason, blocked_at, backend)
                 VALUES ('198.51.100.8', 'misp-198.51.100.8', 'm', '2026-01-01T00:00:00.000000Z', 'address-group');",
            )
            .expect("rows of schema 1");
        }
        let journal = Journal::open(&path).expect("migrated");
        let pending = journal.pending().await.expect("pending");
        assert_eq!((pending.len(), pending[0].target.as_str()), (1, "default"));
        let active = journal.active_blocks().await.expect("ledger");
        assert_eq!((active.len(), active[0].target.as_str()), (1, "default"));
        // The same address may now be pending and open on another target.
        let mut other = block("198.51.100.7", 5);
        other.target = "edge-b".into();
        let id = journal.enqueue(&other).await.expect("enqueue");
        assert_ne!(id, pending[0].id, "a second pending action, for the other target");
        let mut record = record("198.51.100.8", 6);
        record.target = "edge-b".into();
        journal.record_block(&record).await.expect("ledger");
        assert_eq!(journal.active_blocks().await.expect("ledger").len(), 2);
        assert_eq!(journal.active_blocks_of("edge-b").await.expect("ledger").len(), 1);
        let query = crate::journal::PendingQuery::blocks_of("edge-b", 10);
        assert_eq!(journal.pending_where(query.clone()).await.expect("pending").len(), 1);
        assert_eq!(journal.count_pending(query).await.expect("count"), 1);
        journal.record_unblock("default", ip("198.51.100.8"), "max_age", at(7)).await.expect("unblock");
        let left = journal.active_blocks().await.expect("ledger");
        assert_eq!((left.len(), left[0].target.as_str()), (1, "edge-b"), "only the default target's entry closed");
    }

    #[tokio::test]
    async fn open_errors_name_the_path() {
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

    #[tokio::test]
    async fn migrations_are_applied_once_and_recorded() {
        let (_dir, path, journal) = file_journal();
        let (version, mode): (i64, String) = with_conn(&journal, |c| {
            Ok((
                c.pragma_query_value(None, "user_version", |r| r.get(0))?,
                c.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
            ))
        })
        .await;
        assert_eq!((version, mode.as_str()), (SCHEMA_VERSION, "wal"));
        drop(journal);
        Journal::open(&path).expect("reopen of a current file");
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
