//! The statements of the three tables in PostgreSQL's dialect, with the same semantics as SQLite's (`actions`,
//! `decisions`, `ledger`): enqueue is idempotent per pending (target, kind, IP) even between instances (the
//! partial unique index decides, `ON CONFLICT DO NOTHING` waits for the other writer), a repeated decision bumps
//! the latest row, the ledger keeps one open entry per (target, IP). Plus export and import.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use postgres::{GenericClient, Row as PgRow};

use super::super::shadow::{Applied, Op};
use super::super::transfer::{ActionRow, BlockRow, DecisionRow, Row};
use super::super::{
    ActionId, ActionKind, BlockRecord, Decision, NewAction, Outcome, PendingAction, PendingQuery, Pruned,
};

type Result<T> = std::result::Result<T, postgres::Error>;

const PENDING_COLUMNS: &str =
    "SELECT id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error, target,
     kind = 'block' AND EXISTS (SELECT 1 FROM blocks b
         WHERE b.target = actions.target AND b.ip = actions.ip AND b.unblocked_at IS NULL)
     FROM actions";

fn num(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn index(n: Option<usize>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// A text column that must hold a value this build writes; anything else is a conversion error.
fn parsed<T: std::str::FromStr>(row: &PgRow, column: usize) -> Result<T>
where
    T::Err: std::error::Error + Sync + Send + 'static,
{
    let text: &str = row.try_get(column)?;
    // A column of ours that does not parse is a bug or a hand edit; surface it as the client's own error type.
    text.parse::<T>().map_err(|_| row.try_get::<_, i32>(column).expect_err("a text column is not an int4"))
}

fn kind(row: &PgRow, column: usize) -> Result<ActionKind> {
    match row.try_get::<_, &str>(column)? {
        "unblock" => Ok(ActionKind::Unblock),
        _ => Ok(ActionKind::Block),
    }
}

fn pending_row(row: &PgRow) -> Result<PendingAction> {
    Ok(PendingAction {
        id: ActionId(row.try_get(0)?),
        kind: kind(row, 1)?,
        ip: parsed::<IpAddr>(row, 2)?,
        reason: row.try_get(3)?,
        event_id: row.try_get::<_, Option<i64>>(4)?.and_then(|n| u64::try_from(n).ok()),
        rule: row.try_get::<_, Option<i64>>(5)?.and_then(|n| usize::try_from(n).ok()),
        comment: row.try_get(6)?,
        requested_at: row.try_get(7)?,
        attempts: u32::try_from(row.try_get::<_, i64>(8)?).unwrap_or(u32::MAX),
        last_error: row.try_get(9)?,
        target: row.try_get(10)?,
        ledger_open: row.try_get(11)?,
    })
}

/// The pending actions `query` selects, oldest first.
pub(super) fn load_pending(db: &mut impl GenericClient, query: &PendingQuery) -> Result<Vec<PendingAction>> {
    let kind = query.kind.map(ActionKind::as_str);
    let limit = index(query.limit);
    let rows = db.query(
        &format!(
            "{PENDING_COLUMNS} WHERE state = 'pending' AND ($1::text IS NULL OR kind = $1)
             AND ($2::text IS NULL OR target = $2) ORDER BY requested_at, id LIMIT $3"
        ),
        &[&kind, &query.target, &limit],
    )?;
    rows.iter().map(pending_row).collect()
}

/// How many pending actions `query` selects (its limit ignored).
pub(super) fn count_pending(db: &mut impl GenericClient, query: &PendingQuery) -> Result<usize> {
    let kind = query.kind.map(ActionKind::as_str);
    let row = db.query_one(
        "SELECT count(*) FROM actions WHERE state = 'pending' AND ($1::text IS NULL OR kind = $1)
         AND ($2::text IS NULL OR target = $2)",
        &[&kind, &query.target],
    )?;
    Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// Applies one write; `translate` maps memory ids to database ids. Runs inside the caller's transaction.
pub(super) fn apply(db: &mut impl GenericClient, op: &Op, translate: &dyn Fn(i64) -> i64) -> Result<Applied> {
    match op {
        Op::Enqueue { action, .. } => enqueue(db, action),
        Op::Attempt { id, error, at } => attempt(db, translate(*id), error, at),
        Op::Complete { id, outcome, at } => complete(db, translate(*id), outcome, at),
        Op::Decision(d) => decide(db, d).map(|()| Applied::Written),
        Op::Block(b) => open_block(db, b).map(|()| Applied::Written),
        Op::Unblock { target, ip, reason, at } => close_block(db, target, *ip, reason, at).map(|()| Applied::Written),
    }
}

/// Queues `a`, or returns the pending action of the same target, kind and IP.
fn enqueue(db: &mut impl GenericClient, a: &NewAction) -> Result<Applied> {
    let ip = a.ip.to_string();
    loop {
        let inserted = db.query_opt(
            "INSERT INTO actions (kind, ip, reason, event_id, rule, comment, requested_at, target)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (target, kind, ip) WHERE state = 'pending' DO NOTHING RETURNING id",
            &[
                &a.kind.as_str(),
                &ip,
                &a.reason,
                &num(a.event_id),
                &index(a.rule),
                &a.comment,
                &a.requested_at,
                &a.target,
            ],
        )?;
        if let Some(row) = inserted {
            return Ok(Applied::Enqueued(PendingAction::new(row.try_get(0)?, a)));
        }
        let existing = db.query_opt(
            &format!("{PENDING_COLUMNS} WHERE state = 'pending' AND target = $1 AND kind = $2 AND ip = $3"),
            &[&a.target, &a.kind.as_str(), &ip],
        )?;
        // None: the conflicting action was completed in between; insert again.
        if let Some(row) = existing {
            return Ok(Applied::Enqueued(pending_row(&row)?));
        }
    }
}

/// Re-inserts an action a lost store held, under its old id (ignored if the id or a pending key is there).
pub(super) fn restore(db: &mut impl GenericClient, p: &PendingAction) -> Result<()> {
    db.execute(
        "INSERT INTO actions (id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error, target)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        &[
            &p.id.0,
            &p.kind.as_str(),
            &p.ip.to_string(),
            &p.reason,
            &num(p.event_id),
            &index(p.rule),
            &p.comment,
            &p.requested_at,
            &i64::from(p.attempts),
            &p.last_error,
            &p.target,
        ],
    )?;
    Ok(())
}

/// Moves each table's id sequence past the ids written explicitly (restore, import).
pub(super) fn bump_sequences(db: &mut impl GenericClient) -> Result<()> {
    for table in ["actions", "decisions", "blocks"] {
        db.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
            ),
            &[],
        )?;
    }
    Ok(())
}

fn attempt(db: &mut impl GenericClient, id: i64, error: &str, at: &DateTime<Utc>) -> Result<Applied> {
    let n = db.execute(
        "UPDATE actions SET attempts = attempts + 1, last_error = $2, last_attempt_at = $3
         WHERE id = $1 AND state = 'pending'",
        &[&id, &error, at],
    )?;
    written(db, id, n)
}

fn complete(db: &mut impl GenericClient, id: i64, outcome: &Outcome, at: &DateTime<Utc>) -> Result<Applied> {
    let n = db.execute(
        "UPDATE actions SET state = $2, outcome = $3, finished_at = $4 WHERE id = $1 AND state = 'pending'",
        &[&id, &outcome.state(), &outcome.reason(), at],
    )?;
    written(db, id, n)
}

/// After an UPDATE on `actions` that changed `n` rows: an id that exists but is finished is fine (idempotent).
fn written(db: &mut impl GenericClient, id: i64, n: u64) -> Result<Applied> {
    if n > 0 {
        return Ok(Applied::Written);
    }
    let exists = db.query_opt("SELECT 1 FROM actions WHERE id = $1", &[&id])?.is_some();
    Ok(if exists { Applied::Written } else { Applied::NoSuchAction })
}

/// The first key of the decision locks (`dc` in ASCII); the second is the hash of the target and IP.
const DECISION_LOCK: i32 = 0x6463;

fn decide(db: &mut impl GenericClient, d: &Decision) -> Result<()> {
    let ip = d.ip.to_string();
    let (event, rule) = (num(d.event_id), index(d.rule));
    // Instances sharing the store decide the same lines: the repeat rule runs under a lock per (target, IP), held
    // to the commit, so two identical decisions make one row with a repeat, not two rows.
    db.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || coalesce($3, '')))",
        &[&DECISION_LOCK, &ip, &d.target],
    )?;
    let repeated = db.execute(
        "UPDATE decisions SET repeats = repeats + 1, last_at = greatest(last_at, $1)
         WHERE id = (SELECT max(id) FROM decisions WHERE ip = $2 AND target IS NOT DISTINCT FROM $7)
           AND verdict = $3 AND detail = $4 AND event_id IS NOT DISTINCT FROM $5 AND rule IS NOT DISTINCT FROM $6",
        &[&d.at, &ip, &d.verdict, &d.detail, &event, &rule, &d.target],
    )?;
    if repeated == 0 {
        db.execute(
            "INSERT INTO decisions (at, last_at, ip, verdict, detail, event_id, rule, target)
             VALUES ($1, $1, $2, $3, $4, $5, $6, $7)",
            &[&d.at, &ip, &d.verdict, &d.detail, &event, &rule, &d.target],
        )?;
    }
    Ok(())
}

/// Opens a ledger entry; an open entry for the same target and IP is replaced.
fn open_block(db: &mut impl GenericClient, b: &BlockRecord) -> Result<()> {
    db.execute(
        "INSERT INTO blocks (ip, object, grp, event_id, rule, reason, blocked_at, backend, target)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (target, ip) WHERE unblocked_at IS NULL DO UPDATE SET
           object = excluded.object, grp = excluded.grp, event_id = excluded.event_id,
           rule = excluded.rule, reason = excluded.reason, blocked_at = excluded.blocked_at,
           backend = excluded.backend",
        &[
            &b.ip.to_string(),
            &b.object,
            &b.group,
            &num(b.event_id),
            &index(b.rule),
            &b.reason,
            &b.blocked_at,
            &b.backend,
            &b.target,
        ],
    )?;
    Ok(())
}

/// Closes the open entry for `ip` on `target`, or records a closed one if the ledger never saw the block.
fn close_block(db: &mut impl GenericClient, target: &str, ip: IpAddr, reason: &str, at: &DateTime<Utc>) -> Result<()> {
    let ip = ip.to_string();
    let closed = db.execute(
        "UPDATE blocks SET unblocked_at = $2, unblock_reason = $3 WHERE ip = $1 AND target = $4 AND unblocked_at IS NULL",
        &[&ip, at, &reason, &target],
    )?;
    if closed == 0 {
        db.execute(
            "INSERT INTO blocks (ip, unblocked_at, unblock_reason, target) VALUES ($1, $2, $3, $4)",
            &[&ip, at, &reason, &target],
        )?;
    }
    Ok(())
}

/// Open ledger entries, oldest block first.
pub(super) fn load_active(db: &mut impl GenericClient) -> Result<Vec<BlockRecord>> {
    let rows = db.query(
        "SELECT ip, object, grp, event_id, rule, reason, blocked_at, backend, target FROM blocks
         WHERE unblocked_at IS NULL ORDER BY blocked_at, id",
        &[],
    )?;
    rows.iter()
        .map(|row| {
            Ok(BlockRecord {
                ip: parsed::<IpAddr>(row, 0)?,
                object: row.try_get(1)?,
                group: row.try_get(2)?,
                event_id: row.try_get::<_, Option<i64>>(3)?.and_then(|n| u64::try_from(n).ok()),
                rule: row.try_get::<_, Option<i64>>(4)?.and_then(|n| usize::try_from(n).ok()),
                reason: row.try_get(5)?,
                blocked_at: row.try_get(6)?,
                backend: row.try_get(7)?,
                target: row.try_get(8)?,
            })
        })
        .collect()
}

/// Deletes history older than `cutoff`; pending actions and open blocks are never pruned.
pub(super) fn prune(db: &mut impl GenericClient, cutoff: DateTime<Utc>) -> Result<Pruned> {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(Pruned {
        decisions: count(db.execute("DELETE FROM decisions WHERE last_at < $1", &[&cutoff])?),
        actions: count(db.execute("DELETE FROM actions WHERE state <> 'pending' AND finished_at < $1", &[&cutoff])?),
        blocks: count(
            db.execute("DELETE FROM blocks WHERE unblocked_at IS NOT NULL AND unblocked_at < $1", &[&cutoff])?,
        ),
    })
}

/// The latest `limit` decisions, newest first.
#[cfg(test)]
pub(super) fn load_recent(db: &mut impl GenericClient, limit: usize) -> Result<Vec<Decision>> {
    let rows = db.query(
        "SELECT at, ip, verdict, detail, event_id, rule, target FROM decisions ORDER BY id DESC LIMIT $1",
        &[&index(Some(limit))],
    )?;
    rows.iter()
        .map(|row| {
            Ok(Decision {
                at: row.try_get(0)?,
                ip: parsed::<IpAddr>(row, 1)?,
                verdict: row.try_get(2)?,
                detail: row.try_get(3)?,
                event_id: row.try_get::<_, Option<i64>>(4)?.and_then(|n| u64::try_from(n).ok()),
                rule: row.try_get::<_, Option<i64>>(5)?.and_then(|n| usize::try_from(n).ok()),
                target: row.try_get(6)?,
            })
        })
        .collect()
}

/// Rows in the three tables.
pub(super) fn row_count(db: &mut impl GenericClient) -> Result<i64> {
    db.query_one(
        "SELECT (SELECT count(*) FROM actions) + (SELECT count(*) FROM decisions) + (SELECT count(*) FROM blocks)",
        &[],
    )?
    .try_get(0)
}

/// Every row of the three tables, each table by id.
pub(super) fn export_rows(db: &mut impl GenericClient) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for r in db.query(
        "SELECT id, target, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error,
                last_attempt_at, state, outcome, finished_at FROM actions ORDER BY id",
        &[],
    )? {
        out.push(Row::Action(ActionRow {
            id: r.try_get(0)?,
            target: r.try_get(1)?,
            kind: kind(&r, 2)?,
            ip: parsed::<IpAddr>(&r, 3)?,
            reason: r.try_get(4)?,
            event_id: r.try_get(5)?,
            rule: r.try_get(6)?,
            comment: r.try_get(7)?,
            requested_at: r.try_get(8)?,
            attempts: u32::try_from(r.try_get::<_, i64>(9)?).unwrap_or(u32::MAX),
            last_error: r.try_get(10)?,
            last_attempt_at: r.try_get(11)?,
            state: r.try_get(12)?,
            outcome: r.try_get(13)?,
            finished_at: r.try_get(14)?,
        }));
    }
    for r in db.query(
        "SELECT id, target, at, last_at, repeats, ip, verdict, detail, event_id, rule FROM decisions ORDER BY id",
        &[],
    )? {
        out.push(Row::Decision(DecisionRow {
            id: r.try_get(0)?,
            target: r.try_get(1)?,
            at: r.try_get(2)?,
            last_at: r.try_get(3)?,
            repeats: r.try_get(4)?,
            ip: parsed::<IpAddr>(&r, 5)?,
            verdict: r.try_get(6)?,
            detail: r.try_get(7)?,
            event_id: r.try_get(8)?,
            rule: r.try_get(9)?,
        }));
    }
    for r in db.query(
        "SELECT id, target, ip, object, grp, event_id, rule, reason, blocked_at, backend, unblocked_at,
                unblock_reason FROM blocks ORDER BY id",
        &[],
    )? {
        out.push(Row::Block(BlockRow {
            id: r.try_get(0)?,
            target: r.try_get(1)?,
            ip: parsed::<IpAddr>(&r, 2)?,
            object: r.try_get(3)?,
            group: r.try_get(4)?,
            event_id: r.try_get(5)?,
            rule: r.try_get(6)?,
            reason: r.try_get(7)?,
            blocked_at: r.try_get(8)?,
            backend: r.try_get(9)?,
            unblocked_at: r.try_get(10)?,
            unblock_reason: r.try_get(11)?,
        }));
    }
    Ok(out)
}

pub(super) fn import_row(db: &mut impl GenericClient, row: &Row) -> Result<()> {
    match row {
        Row::Action(a) => db.execute(
            "INSERT INTO actions (id, target, kind, ip, reason, event_id, rule, comment, requested_at, attempts,
                                  last_error, last_attempt_at, state, outcome, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                &a.id,
                &a.target,
                &a.kind.as_str(),
                &a.ip.to_string(),
                &a.reason,
                &a.event_id,
                &a.rule,
                &a.comment,
                &a.requested_at,
                &i64::from(a.attempts),
                &a.last_error,
                &a.last_attempt_at,
                &a.state,
                &a.outcome,
                &a.finished_at,
            ],
        ),
        Row::Decision(d) => db.execute(
            "INSERT INTO decisions (id, target, at, last_at, repeats, ip, verdict, detail, event_id, rule)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &d.id,
                &d.target,
                &d.at,
                &d.last_at,
                &d.repeats,
                &d.ip.to_string(),
                &d.verdict,
                &d.detail,
                &d.event_id,
                &d.rule,
            ],
        ),
        Row::Block(b) => db.execute(
            "INSERT INTO blocks (id, target, ip, object, grp, event_id, rule, reason, blocked_at, backend,
                                 unblocked_at, unblock_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &b.id,
                &b.target,
                &b.ip.to_string(),
                &b.object,
                &b.group,
                &b.event_id,
                &b.rule,
                &b.reason,
                &b.blocked_at,
                &b.backend,
                &b.unblocked_at,
                &b.unblock_reason,
            ],
        ),
    }
    .map(|_| ())
}
