//! The `decisions` table, the audit trail of verdicts: a repeat of the latest decision for an IP bumps its
//! counter instead of adding a row.

use rusqlite::{params, Connection};

use super::schema::ts;
#[cfg(test)]
use super::schema::{SqlIp, SqlTime};
use super::Decision;

pub(super) fn write(db: &Connection, d: &Decision) -> rusqlite::Result<()> {
    let ip = d.ip.to_string();
    let at = ts(&d.at);
    let repeated = db
        .prepare_cached(
            "UPDATE decisions SET repeats = repeats + 1, last_at = max(last_at, ?1)
             WHERE id = (SELECT max(id) FROM decisions WHERE ip = ?2 AND target IS ?7)
               AND verdict = ?3 AND detail = ?4 AND event_id IS ?5 AND rule IS ?6",
        )?
        .execute(params![at, ip, d.verdict, d.detail, d.event_id, d.rule, d.target])?;
    if repeated == 0 {
        db.prepare_cached(
            "INSERT INTO decisions (at, last_at, ip, verdict, detail, event_id, rule, target)
             VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![at, ip, d.verdict, d.detail, d.event_id, d.rule, d.target])?;
    }
    Ok(())
}

/// Deletes decisions last seen before `cutoff`.
pub(super) fn prune(db: &Connection, cutoff: &str) -> rusqlite::Result<usize> {
    db.prepare_cached("DELETE FROM decisions WHERE last_at < ?1")?.execute([cutoff])
}

/// The latest `limit` decisions, newest first.
#[cfg(test)]
pub(super) fn load_recent(db: &Connection, limit: usize) -> rusqlite::Result<Vec<Decision>> {
    let mut stmt = db.prepare_cached(
        "SELECT at, ip, verdict, detail, event_id, rule, target FROM decisions ORDER BY id DESC LIMIT ?1",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map([limit], |row| {
        Ok(Decision {
            at: row.get::<_, SqlTime>(0)?.0,
            ip: row.get::<_, SqlIp>(1)?.0,
            verdict: row.get(2)?,
            detail: row.get(3)?,
            event_id: row.get(4)?,
            rule: row.get(5)?,
            target: row.get(6)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::journal::testutil::*;
    use crate::journal::{Journal, Outcome, Pruned};

    #[tokio::test]
    async fn decisions_dedupe_and_prune() {
        let journal = Journal::in_memory();
        for d in [
            decision("198.51.100.1", 0, "block"),
            decision("198.51.100.1", 10, "block"), // repeat: counted, not a new row
            decision("198.51.100.2", 20, "clean"),
            decision("198.51.100.1", 30, "never-block"), // changed verdict: new row
            decision("198.51.100.2", 100, "clean"),      // repeat much later keeps the row alive
        ] {
            journal.record_decision(&d).await.expect("decision");
        }
        let verdicts = |decisions: Vec<crate::journal::Decision>| {
            decisions.into_iter().map(|d| format!("{} {}", d.ip, d.verdict)).collect::<Vec<_>>()
        };
        assert_eq!(
            verdicts(recent_decisions(&journal, 10).await),
            ["198.51.100.1 never-block", "198.51.100.2 clean", "198.51.100.1 block"]
        );
        assert_eq!(recent_decisions(&journal, 1).await.len(), 1);
        // prune() drops decisions last seen before the cutoff, finished actions and closed ledger rows, never
        // pending ones or open blocks
        assert_eq!(journal.prune(at(25)).await.expect("prune"), Pruned { decisions: 1, actions: 0, blocks: 0 });
        assert_eq!(verdicts(recent_decisions(&journal, 10).await), ["198.51.100.1 never-block", "198.51.100.2 clean"]);

        let old = journal.enqueue(&block("198.51.100.1", 0)).await.expect("enqueue");
        journal.enqueue(&block("198.51.100.3", 0)).await.expect("enqueue");
        journal.complete(old, &Outcome::Done).await.expect("complete");
        journal.record_block(&record("198.51.100.4", 0)).await.expect("block");
        journal.record_block(&record("198.51.100.5", 0)).await.expect("block");
        journal.record_unblock("default", ip("198.51.100.5"), "max_age", at(1)).await.expect("unblock");
        let future = Utc::now() + chrono::Duration::days(1);
        let pruned = journal.prune(future).await.expect("prune");
        assert_eq!(pruned, Pruned { decisions: 2, actions: 1, blocks: 1 });
        assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.3"]);
        assert_eq!(journal.active_blocks().await.expect("active"), vec![record("198.51.100.4", 0)]);
    }
}
