//! The PostgreSQL schema: versioned migrations recorded in `schema_migrations`, applied in one transaction under
//! an advisory lock, so several instances starting together migrate once and the others wait, then find the
//! work done. A database migrated by a newer build is refused, as SQLite refuses a newer file.
//!
//! Times are `timestamptz` (microseconds, as in SQLite's text), IPs text in Rust's canonical form (as in SQLite),
//! so both stores hold the same values and `journal export` reads the same from either.

use postgres::Client;

use super::super::Error;

/// The advisory lock key under which migrations run (`fortimisp` in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x666f_7274_696d_6973;

/// Schema migrations; `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Append, never edit. Version 1
/// is SQLite's schema 2 (fleets included). Version 2 adds the cluster's tables ([`crate::cluster`]), which SQLite
/// has no use for: a SQLite journal serves one instance.
pub(super) const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE actions (
        id              BIGSERIAL PRIMARY KEY,
        target          TEXT NOT NULL DEFAULT 'default',
        kind            TEXT NOT NULL CHECK (kind IN ('block', 'unblock')),
        ip              TEXT NOT NULL,
        reason          TEXT NOT NULL,
        event_id        BIGINT,
        rule            BIGINT,
        comment         TEXT,
        requested_at    TIMESTAMPTZ NOT NULL,
        attempts        BIGINT NOT NULL DEFAULT 0,
        last_error      TEXT,
        last_attempt_at TIMESTAMPTZ,
        state           TEXT NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
        outcome         TEXT,
        finished_at     TIMESTAMPTZ
    );
    CREATE UNIQUE INDEX actions_one_pending ON actions (target, kind, ip) WHERE state = 'pending';
    CREATE INDEX actions_queue ON actions (target, requested_at, id) WHERE state = 'pending';
    CREATE INDEX actions_finished ON actions (finished_at) WHERE state <> 'pending';

    CREATE TABLE decisions (
        id       BIGSERIAL PRIMARY KEY,
        target   TEXT,
        at       TIMESTAMPTZ NOT NULL,
        last_at  TIMESTAMPTZ NOT NULL,
        repeats  BIGINT NOT NULL DEFAULT 0,
        ip       TEXT NOT NULL,
        verdict  TEXT NOT NULL,
        detail   TEXT NOT NULL,
        event_id BIGINT,
        rule     BIGINT
    );
    CREATE INDEX decisions_ip ON decisions (ip, id);
    CREATE INDEX decisions_last_at ON decisions (last_at);

    -- object, reason, blocked_at and backend are NULL only for a removal of a block the ledger never saw.
    CREATE TABLE blocks (
        id             BIGSERIAL PRIMARY KEY,
        target         TEXT NOT NULL DEFAULT 'default',
        ip             TEXT NOT NULL,
        object         TEXT,
        grp            TEXT,
        event_id       BIGINT,
        rule           BIGINT,
        reason         TEXT,
        blocked_at     TIMESTAMPTZ,
        backend        TEXT,
        unblocked_at   TIMESTAMPTZ,
        unblock_reason TEXT
    );
    CREATE UNIQUE INDEX blocks_active ON blocks (target, ip) WHERE unblocked_at IS NULL;
    CREATE INDEX blocks_closed ON blocks (unblocked_at) WHERE unblocked_at IS NOT NULL;
    ",
    "
    -- One row per FortiGate target (its name) or cluster-wide job (`job:...`): who may write, until when.
    CREATE TABLE leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL DEFAULT '',
        epoch      BIGINT NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
        renewed_at TIMESTAMPTZ,
        started_at TIMESTAMPTZ
    );
    -- Every running instance, refreshed with its leases: `integration cluster status`.
    CREATE TABLE instances (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL,
        host       TEXT NOT NULL,
        pid        BIGINT NOT NULL,
        version    TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        seen_at    TIMESTAMPTZ NOT NULL
    );
    ",
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the missing migrations; refuses a database whose schema is newer than this build's.
pub(super) fn migrate(client: &mut Client, at: &str) -> Result<(), Error> {
    let sql_error = |source| Error::Postgres { at: at.to_owned(), source };
    let mut tx = client.transaction().map_err(sql_error)?;
    // Waits for another instance's migration; released at commit.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(sql_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .map_err(sql_error)?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
        .and_then(|row| row.try_get(0))
        .map_err(sql_error)?;
    if found > SCHEMA_VERSION {
        return Err(Error::TooNewDatabase { at: at.to_owned(), found, supported: SCHEMA_VERSION });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(sql).map_err(sql_error)?;
        let version = i64::try_from(index + 1).expect("a handful of migrations");
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).map_err(sql_error)?;
    }
    tx.commit().map_err(sql_error)
}
