//! The `actions` table, the durable work queue: enqueue (idempotent per pending kind and IP), attempts,
//! completion, and the pending queue a restart resumes.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use super::schema::{ts, SqlIp, SqlTime};
use super::shadow::Applied;
use super::{ActionId, ActionKind, NewAction, Outcome, PendingAction, PendingQuery};

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
    "SELECT id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error, target,
     kind = 'block' AND EXISTS (SELECT 1 FROM blocks b
         WHERE b.target = actions.target AND b.ip = actions.ip AND b.unblocked_at IS NULL)
     FROM actions";

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
        target: row.get(10)?,
        ledger_open: row.get(11)?,
    })
}

/// The pending queue, oldest first.
pub(super) fn load_pending(db: &Connection) -> rusqlite::Result<Vec<PendingAction>> {
    load_pending_where(db, &PendingQuery::default())
}

/// The pending actions `query` selects, oldest first.
pub(super) fn load_pending_where(db: &Connection, query: &PendingQuery) -> rusqlite::Result<Vec<PendingAction>> {
    let mut stmt = db.prepare_cached(&format!(
        "{PENDING_COLUMNS} WHERE state = 'pending' AND (?1 IS NULL OR kind = ?1) AND (?2 IS NULL OR target = ?2)
         ORDER BY requested_at, id LIMIT ?3"
    ))?;
    let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)).unwrap_or(-1);
    let rows = stmt.query_map(params![query.kind, query.target, limit], pending_row)?;
    rows.collect()
}

/// How many pending actions `query` selects (its limit ignored).
pub(super) fn count_pending(db: &Connection, query: &PendingQuery) -> rusqlite::Result<usize> {
    db.prepare_cached(
        "SELECT count(*) FROM actions WHERE state = 'pending' AND (?1 IS NULL OR kind = ?1)
         AND (?2 IS NULL OR target = ?2)",
    )?
    .query_row(params![query.kind, query.target], |row| row.get::<_, i64>(0))
    .map(|n| usize::try_from(n).unwrap_or(0))
}

/// Queues `a`, or returns the pending action of the same kind and IP.
pub(super) fn enqueue(db: &Connection, a: &NewAction) -> rusqlite::Result<Applied> {
    let ip = a.ip.to_string();
    let existing = db
        .prepare_cached(&format!(
            "{PENDING_COLUMNS} WHERE state = 'pending' AND target = ?3 AND kind = ?1 AND ip = ?2"
        ))?
        .query_row(params![a.kind, ip, a.target], pending_row)
        .optional()?;
    if let Some(row) = existing {
        return Ok(Applied::Enqueued(row));
    }
    db.prepare_cached(
        "INSERT INTO actions (kind, ip, reason, event_id, rule, comment, requested_at, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![a.kind, ip, a.reason, a.event_id, a.rule, a.comment, ts(&a.requested_at), a.target])?;
    Ok(Applied::Enqueued(PendingAction::new(db.last_insert_rowid(), a)))
}

/// Re-inserts an action a lost file held, under its old id (ignored if the id or a pending (kind, IP) is there).
pub(super) fn restore(db: &Connection, p: &PendingAction) -> rusqlite::Result<()> {
    db.prepare_cached(
        "INSERT OR IGNORE INTO actions
           (id, kind, ip, reason, event_id, rule, comment, requested_at, attempts, last_error, target)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
        p.last_error,
        p.target
    ])?;
    Ok(())
}

pub(super) fn attempt(db: &Connection, id: i64, error: &str, at: &str) -> rusqlite::Result<Applied> {
    let n = db
        .prepare_cached(
            "UPDATE actions SET attempts = attempts + 1, last_error = ?2, last_attempt_at = ?3
             WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![id, error, at])?;
    written(db, id, n)
}

pub(super) fn complete(db: &Connection, id: i64, outcome: &Outcome, at: &str) -> rusqlite::Result<Applied> {
    let n = db
        .prepare_cached(
            "UPDATE actions SET state = ?2, outcome = ?3, finished_at = ?4
             WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![id, outcome.state(), outcome.reason(), at])?;
    written(db, id, n)
}

/// Deletes actions finished before `cutoff`; pending ones are never pruned.
pub(super) fn prune(db: &Connection, cutoff: &str) -> rusqlite::Result<usize> {
    db.prepare_cached("DELETE FROM actions WHERE state <> 'pending' AND finished_at < ?1")?.execute([cutoff])
}

/// After an UPDATE on `actions` that changed `n` rows: an id that exists but is finished is fine (idempotent).
fn written(db: &Connection, id: i64, n: usize) -> rusqlite::Result<Applied> {
    if n > 0 {
        return Ok(Applied::Written);
    }
    let exists = db.prepare_cached("SELECT 1 FROM actions WHERE id = ?1")?.exists([id])?;
    Ok(if exists { Applied::Written } else { Applied::NoSuchAction })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::*;
    use crate::journal::{Error, Journal};

    /// One step of a queue scenario and the pending queue expected after it.
    enum Step {
        Enqueue(NewAction),
        Attempt(usize, &'static str),
        Complete(usize, Outcome),
        Reopen,
    }

    /// Runs `steps` against a file journal (ids are referred to by enqueue order), checking the pending queue after
    /// each step, and again after a reopen (a restart).
    async fn check_queue(steps: Vec<(Step, &[&str])>) {
        let (_dir, path, mut journal) = file_journal();
        let mut ids = Vec::new();
        for (n, (step, expected)) in steps.into_iter().enumerate() {
            match step {
                Step::Enqueue(a) => ids.push(journal.enqueue(&a).await.expect("enqueue")),
                Step::Attempt(i, e) => journal.record_attempt(ids[i], e).await.expect("attempt"),
                Step::Complete(i, o) => journal.complete(ids[i], &o).await.expect("complete"),
                Step::Reopen => {
                    drop(journal);
                    journal = Journal::open(&path).expect("reopen");
                }
            }
            let pending = journal.pending().await.expect("pending");
            assert_eq!(ips(&pending), expected.to_vec(), "after step {n}");
        }
        let reopened = Journal::open(&path).expect("reopen");
        assert_eq!(reopened.pending().await.expect("pending"), journal.pending().await.expect("pending"));
    }

    #[tokio::test]
    async fn queue_scenarios() {
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
            check_queue(steps).await;
        }
    }

    #[tokio::test]
    async fn attempts_and_outcomes_are_stored() {
        let (_dir, path, journal) = file_journal();
        let id = journal.enqueue(&block("198.51.100.7", 0)).await.expect("enqueue");
        journal.record_attempt(id, "timeout").await.expect("attempt");
        journal.record_attempt(id, "fortigate: 503").await.expect("attempt");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        let pending = journal.pending().await.expect("pending");
        assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("fortigate: 503")));
        journal.complete(id, &Outcome::Failed { reason: "object name rejected".into() }).await.expect("complete");
        let row: (String, Option<String>, u32) = with_conn(&journal, move |c| {
            c.query_row("SELECT state, outcome, attempts FROM actions WHERE id = ?1", [id.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
        })
        .await;
        assert_eq!(row, ("failed".to_owned(), Some("object name rejected".to_owned()), 2));
        let unknown = journal.complete(ActionId(999), &Outcome::Done).await;
        assert!(matches!(unknown, Err(Error::UnknownAction(ActionId(999)))), "{unknown:?}");
        assert!(matches!(journal.record_attempt(ActionId(999), "x").await, Err(Error::UnknownAction(_))));
        assert_eq!(ips(&journal.pending_of(ActionKind::Unblock).await.expect("pending_of")), Vec::<String>::new());
    }

    #[tokio::test]
    async fn two_processes_share_the_file() {
        let (_dir, path, integration) = file_journal();
        let housekeeping = Journal::open(&path).expect("second open");
        let b = integration.enqueue(&block("198.51.100.7", 0)).await.expect("enqueue");
        let u = housekeeping.enqueue(&unblock("198.51.100.9", 1)).await.expect("enqueue");
        // each sees the other's queue, and enqueue stays idempotent across them
        assert_eq!(housekeeping.enqueue(&block("198.51.100.7", 2)).await.expect("enqueue"), b);
        assert_eq!(ips(&integration.pending().await.expect("pending")), ["block 198.51.100.7", "unblock 198.51.100.9"]);
        assert_eq!(
            ips(&housekeeping.pending_of(ActionKind::Unblock).await.expect("pending")),
            ["unblock 198.51.100.9"]
        );
        housekeeping.complete(u, &Outcome::Done).await.expect("complete");
        housekeeping.record_unblock("default", ip("198.51.100.9"), "max_age", at(3)).await.expect("unblock");
        integration.record_block(&record("198.51.100.7", 4)).await.expect("block");
        assert_eq!(ips(&integration.pending().await.expect("pending")), ["block 198.51.100.7"]);
        assert_eq!(housekeeping.active_blocks().await.expect("active"), vec![record("198.51.100.7", 4)]);
        integration.record_decision(&decision("198.51.100.7", 5, "block")).await.expect("decision");
        assert_eq!(recent_decisions(&housekeeping, 10).await, vec![decision("198.51.100.7", 5, "block")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_writing_at_once_wait_for_each_other() {
        let (_dir, path, integration) = file_journal();
        let housekeeping = Journal::open(&path).expect("second open");
        let writers: Vec<_> = [(integration.clone(), 1u8), (housekeeping.clone(), 2u8)]
            .into_iter()
            .map(|(journal, net)| {
                tokio::spawn(async move {
                    for host in 0..100u8 {
                        let addr = format!("10.{net}.0.{host}");
                        let id = journal.enqueue(&block(&addr, i64::from(host))).await.expect("enqueue");
                        journal.record_decision(&decision(&addr, i64::from(host), "block")).await.expect("decision");
                        if host % 2 == 0 {
                            journal.complete(id, &Outcome::Done).await.expect("complete");
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer task");
        }
        assert!(!integration.is_degraded() && !housekeeping.is_degraded());
        assert_eq!(integration.pending().await.expect("pending").len(), 100);
        assert_eq!(recent_decisions(&housekeeping, 1000).await.len(), 200);
    }

    #[tokio::test]
    async fn in_memory_journal_works() {
        let journal = Journal::in_memory();
        let id = journal.enqueue(&unblock("2001:db8::1", 0)).await.expect("enqueue");
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["unblock 2001:db8::1"]);
        journal.complete(id, &Outcome::Done).await.expect("complete");
        assert!(journal.pending().await.expect("pending").is_empty());
        assert!(!journal.is_degraded());
    }
}
