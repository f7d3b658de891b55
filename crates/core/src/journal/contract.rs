//! The journal contract: the same tests against both stores, SQLite (a temporary file) and PostgreSQL (a fresh
//! database per test, see [`super::testdb`]). Each `async fn` below takes a [`Fixture`] and runs once per store
//! (`contract::sqlite::<name>`, `contract::postgres::<name>`). Degraded mode of each store has tests of its own
//! (`shadow.rs` for the file; `postgres_only` here for an unreachable server).

use std::time::Duration;

use chrono::Utc;

use super::testdb::{Fixture, Kind, Proxy, TestDatabase};
use super::testutil::*;
use super::transfer::Row;
use super::{ActionId, ActionKind, BlockRecord, Error, Journal, Outcome, PendingQuery, Pruned};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::Fixture::new(super::Kind::Sqlite, stringify!($name)).expect("SQLite");
                    super::$name(&fixture).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let test = concat!("journal::contract::postgres::", stringify!($name));
                    if let Some(fixture) = super::Fixture::new(super::Kind::Postgres, test) {
                        super::$name(&fixture).await;
                    }
                }
            )*
        }
    };
}

contract!(
    enqueue_is_idempotent_and_survives_a_restart,
    attempts_and_outcomes_are_kept,
    two_processes_share_the_journal,
    two_processes_writing_at_once,
    instances_deciding_the_same_lines_make_one_row_per_decision,
    decisions_repeat_and_prune,
    the_ledger_opens_and_closes,
    a_pending_block_shows_whether_its_ledger_entry_is_open,
    targets_keep_their_own_queues_and_ledgers,
    export_then_import_into_an_empty_journal,
);

async fn enqueue_is_idempotent_and_survives_a_restart(fixture: &Fixture) {
    let journal = fixture.open();
    let first = journal.enqueue(&block("198.51.100.7", 0)).await.expect("enqueue");
    assert_eq!(journal.enqueue(&block("198.51.100.7", 5)).await.expect("enqueue"), first, "same kind and IP");
    let unblock_id = journal.enqueue(&unblock("198.51.100.7", 6)).await.expect("enqueue");
    assert_ne!(unblock_id, first, "another kind is another action");
    journal.enqueue(&block("2001:db8::7", 7)).await.expect("enqueue");
    assert_eq!(
        ips(&journal.pending().await.expect("pending")),
        ["block 198.51.100.7", "unblock 198.51.100.7", "block 2001:db8::7"]
    );
    journal.complete(first, &Outcome::Done).await.expect("complete");
    journal.complete(first, &Outcome::Failed { reason: "late".into() }).await.expect("a second outcome is a no-op");
    let again = journal.enqueue(&block("198.51.100.7", 9)).await.expect("enqueue after completion");
    assert!(again > first, "a completed action can be queued again, as a new one");
    drop(journal);
    let restarted = fixture.open();
    assert_eq!(
        ips(&restarted.pending().await.expect("pending")),
        ["unblock 198.51.100.7", "block 2001:db8::7", "block 198.51.100.7"]
    );
    assert_eq!(ips(&restarted.pending_of(ActionKind::Unblock).await.expect("pending")), ["unblock 198.51.100.7"]);
    assert!(!restarted.is_degraded());
}

async fn attempts_and_outcomes_are_kept(fixture: &Fixture) {
    let journal = fixture.open();
    let id = journal.enqueue(&block("198.51.100.7", 0)).await.expect("enqueue");
    journal.record_attempt(id, "timeout").await.expect("attempt");
    journal.record_attempt(id, "fortigate: 503").await.expect("attempt");
    let other = fixture.open();
    let pending = other.pending().await.expect("pending");
    assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("fortigate: 503")));
    journal.complete(id, &Outcome::Failed { reason: "object name rejected".into() }).await.expect("complete");
    journal.record_attempt(id, "late").await.expect("an attempt on a completed action is a no-op");
    let rows = other.export().await.expect("export");
    let Some(Row::Action(row)) = rows.first() else { panic!("an action row: {rows:?}") };
    assert_eq!(
        (row.state.as_str(), row.outcome.as_deref(), row.attempts, row.finished_at.is_some()),
        ("failed", Some("object name rejected"), 2, true)
    );
    let unknown = journal.complete(ActionId(999_999), &Outcome::Done).await;
    assert!(matches!(unknown, Err(Error::UnknownAction(ActionId(999_999)))), "{unknown:?}");
    assert!(matches!(journal.record_attempt(ActionId(999_999), "x").await, Err(Error::UnknownAction(_))));
}

async fn two_processes_share_the_journal(fixture: &Fixture) {
    let integration = fixture.open();
    let housekeeping = fixture.open();
    let b = integration.enqueue(&block("198.51.100.7", 0)).await.expect("enqueue");
    let u = housekeeping.enqueue(&unblock("198.51.100.9", 1)).await.expect("enqueue");
    assert_eq!(housekeeping.enqueue(&block("198.51.100.7", 2)).await.expect("enqueue"), b, "idempotent across both");
    assert_eq!(ips(&integration.pending().await.expect("pending")), ["block 198.51.100.7", "unblock 198.51.100.9"]);
    housekeeping.complete(u, &Outcome::Done).await.expect("complete");
    housekeeping.record_unblock("default", ip("198.51.100.9"), "max_age", at(3)).await.expect("unblock");
    integration.record_block(&record("198.51.100.7", 4)).await.expect("block");
    assert_eq!(ips(&integration.pending().await.expect("pending")), ["block 198.51.100.7"]);
    assert_eq!(housekeeping.active_blocks().await.expect("active"), vec![record("198.51.100.7", 4)]);
    integration.record_decision(&decision("198.51.100.7", 5, "block")).await.expect("decision");
    assert_eq!(recent_decisions(&housekeeping, 10).await, vec![decision("198.51.100.7", 5, "block")]);
}

async fn two_processes_writing_at_once(fixture: &Fixture) {
    let writers: Vec<_> = [(fixture.open(), 1u8), (fixture.open(), 2u8)]
        .into_iter()
        .map(|(journal, net)| {
            tokio::spawn(async move {
                for host in 0..50u8 {
                    let addr = format!("10.{net}.0.{host}");
                    let id = journal.enqueue(&block(&addr, i64::from(host))).await.expect("enqueue");
                    // Both processes also queue the same shared address: one pending action in the end.
                    journal.enqueue(&block("198.51.100.1", 0)).await.expect("enqueue shared");
                    journal.record_decision(&decision(&addr, i64::from(host), "block")).await.expect("decision");
                    if host % 2 == 0 {
                        journal.complete(id, &Outcome::Done).await.expect("complete");
                    }
                }
                assert!(!journal.is_degraded());
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let journal = fixture.open();
    assert_eq!(journal.pending().await.expect("pending").len(), 51);
    assert_eq!(recent_decisions(&journal, 1000).await.len(), 100);
}

/// Instances of a cluster receive the same lines and reach the same decisions at the same moment: the store
/// keeps one row per decision, with the others counted as repeats.
async fn instances_deciding_the_same_lines_make_one_row_per_decision(fixture: &Fixture) {
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let journal = fixture.open();
            tokio::spawn(async move {
                for host in 0..40u8 {
                    let d = decision(&format!("203.0.113.{host}"), i64::from(host), "block");
                    journal.record_decision(&d).await.expect("decision");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let rows: Vec<i64> = fixture
        .open()
        .export()
        .await
        .expect("export")
        .into_iter()
        .filter_map(|r| match r {
            Row::Decision(d) => Some(d.repeats),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 40, "one row per address");
    assert!(rows.iter().all(|&r| r == 2), "the two other instances' decisions are repeats: {rows:?}");
}

async fn decisions_repeat_and_prune(fixture: &Fixture) {
    let journal = fixture.open();
    for d in [
        decision("198.51.100.1", 0, "block"),
        decision("198.51.100.1", 10, "block"), // repeat: counted, not a new row
        decision("198.51.100.2", 20, "clean"),
        decision("198.51.100.1", 30, "never-block"), // changed verdict: new row
        decision("198.51.100.2", 100, "clean"),      // repeat much later keeps the row alive
    ] {
        journal.record_decision(&d).await.expect("decision");
    }
    let mut per_target = decision("198.51.100.2", 101, "clean");
    per_target.target = Some("edge-b".into());
    journal.record_decision(&per_target).await.expect("another target's decision is its own row");
    let verdicts = |decisions: Vec<crate::journal::Decision>| {
        decisions.into_iter().map(|d| format!("{} {}", d.ip, d.verdict)).collect::<Vec<_>>()
    };
    assert_eq!(
        verdicts(recent_decisions(&journal, 10).await),
        ["198.51.100.2 clean", "198.51.100.1 never-block", "198.51.100.2 clean", "198.51.100.1 block"]
    );
    let repeats: Vec<i64> = journal
        .export()
        .await
        .expect("export")
        .into_iter()
        .filter_map(|r| match r {
            Row::Decision(d) => Some(d.repeats),
            _ => None,
        })
        .collect();
    assert_eq!(repeats, [1, 1, 0, 0]);
    assert_eq!(journal.prune(at(25)).await.expect("prune"), Pruned { decisions: 1, actions: 0, blocks: 0 });

    let old = journal.enqueue(&block("198.51.100.1", 0)).await.expect("enqueue");
    journal.enqueue(&block("198.51.100.3", 0)).await.expect("enqueue");
    journal.complete(old, &Outcome::Done).await.expect("complete");
    journal.record_block(&record("198.51.100.4", 0)).await.expect("block");
    journal.record_block(&record("198.51.100.5", 0)).await.expect("block");
    journal.record_unblock("default", ip("198.51.100.5"), "max_age", at(1)).await.expect("unblock");
    let future = Utc::now() + chrono::Duration::days(1);
    assert_eq!(journal.prune(future).await.expect("prune"), Pruned { decisions: 3, actions: 1, blocks: 1 });
    assert_eq!(ips(&journal.pending().await.expect("pending")), ["block 198.51.100.3"]);
    assert_eq!(journal.active_blocks().await.expect("active"), vec![record("198.51.100.4", 0)]);
}

async fn the_ledger_opens_and_closes(fixture: &Fixture) {
    let journal = fixture.open();
    journal.record_block(&record("198.51.100.1", 1)).await.expect("block");
    journal.record_block(&record("2001:db8::2", 2)).await.expect("block");
    let reblocked = BlockRecord { reason: "misp-event=99".into(), ..record("198.51.100.1", 3) };
    journal.record_block(&reblocked).await.expect("a re-block replaces the open entry");
    assert_eq!(journal.active_blocks().await.expect("active"), vec![record("2001:db8::2", 2), reblocked.clone()]);
    journal.record_unblock("default", ip("2001:db8::2"), "max_age", at(4)).await.expect("unblock");
    journal.record_unblock("default", ip("198.51.100.77"), "adopt_legacy", at(5)).await.expect("unseen unblock");
    assert_eq!(journal.active_blocks().await.expect("active"), vec![reblocked]);
    let closed: Vec<(String, Option<String>)> = journal
        .export()
        .await
        .expect("export")
        .into_iter()
        .filter_map(|r| match r {
            Row::Block(b) if b.unblocked_at.is_some() => Some((b.ip.to_string(), b.unblock_reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closed,
        [
            ("2001:db8::2".to_owned(), Some("max_age".to_owned())),
            ("198.51.100.77".to_owned(), Some("adopt_legacy".to_owned()))
        ]
    );
}

/// A block another instance completed after this one's request was queued: the pending row says so, so the leader
/// completes it with no FortiGate call. Per target, per address, blocks only, open entries only.
async fn a_pending_block_shows_whether_its_ledger_entry_is_open(fixture: &Fixture) {
    let journal = fixture.open();
    let late = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
    journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue");
    journal.enqueue(&unblock("198.51.100.3", 3)).await.expect("enqueue");
    journal.enqueue(&block("198.51.100.4", 4)).await.expect("enqueue");
    journal.record_block(&record("198.51.100.1", 5)).await.expect("block");
    journal.record_block(&record("198.51.100.3", 5)).await.expect("block");
    journal.record_block(&BlockRecord { target: "edge-b".into(), ..record("198.51.100.2", 5) }).await.expect("block");
    journal.record_block(&record("198.51.100.4", 5)).await.expect("block");
    journal.record_unblock("default", ip("198.51.100.4"), "max_age", at(6)).await.expect("unblock");
    let open: Vec<(String, bool)> = journal
        .pending()
        .await
        .expect("pending")
        .iter()
        .map(|p| (format!("{} {}", p.kind.as_str(), p.ip), p.ledger_open))
        .collect();
    assert_eq!(
        open,
        [
            ("block 198.51.100.1".to_owned(), true),
            ("block 198.51.100.2".to_owned(), false),
            ("unblock 198.51.100.3".to_owned(), false),
            ("block 198.51.100.4".to_owned(), false),
        ]
    );
    journal.complete(late, &Outcome::Done).await.expect("complete");
}

async fn targets_keep_their_own_queues_and_ledgers(fixture: &Fixture) {
    let journal = fixture.open();
    let on = |target: &str, addr: &str, secs: i64| {
        let mut a = block(addr, secs);
        a.target = target.to_owned();
        a
    };
    let a = journal.enqueue(&on("default", "198.51.100.7", 1)).await.expect("enqueue");
    let b = journal.enqueue(&on("edge-b", "198.51.100.7", 2)).await.expect("enqueue");
    assert_ne!(a, b, "one pending action per target");
    journal.enqueue(&on("edge-b", "198.51.100.8", 3)).await.expect("enqueue");
    journal.enqueue(&on("edge-b", "198.51.100.9", 4)).await.expect("enqueue");
    let mut u = unblock("198.51.100.7", 5);
    u.target = "edge-b".into();
    journal.enqueue(&u).await.expect("enqueue");
    let query = PendingQuery::blocks_of("edge-b", 2);
    let oldest_two = journal.pending_where(query.clone()).await.expect("pending");
    assert_eq!(ips(&oldest_two), ["block 198.51.100.7", "block 198.51.100.8"]);
    assert!(oldest_two.iter().all(|p| p.target == "edge-b"));
    assert_eq!(journal.count_pending(query).await.expect("count"), 3, "the limit is ignored");
    assert_eq!(journal.count_pending(PendingQuery::default()).await.expect("count"), 5);
    let mut other = record("198.51.100.7", 6);
    other.target = "edge-b".into();
    journal.record_block(&record("198.51.100.7", 6)).await.expect("block");
    journal.record_block(&other).await.expect("block on another target");
    assert_eq!(journal.active_blocks().await.expect("ledger").len(), 2);
    journal.record_unblock("default", ip("198.51.100.7"), "max_age", at(7)).await.expect("unblock");
    assert_eq!(journal.active_blocks().await.expect("ledger"), vec![other.clone()]);
    assert_eq!(journal.active_blocks_of("edge-b").await.expect("ledger"), vec![other]);
}

/// Fills a journal with one of everything: pending and finished actions, a repeated decision, open and closed
/// ledger entries.
async fn fill(journal: &Journal) {
    let done = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
    journal.record_attempt(done, "timeout").await.expect("attempt");
    journal.complete(done, &Outcome::Skipped { reason: "never-block".into() }).await.expect("complete");
    journal.enqueue(&unblock("2001:db8::9", 2)).await.expect("enqueue");
    journal.record_decision(&decision("198.51.100.1", 3, "block")).await.expect("decision");
    journal.record_decision(&decision("198.51.100.1", 4, "block")).await.expect("repeat");
    journal.record_block(&record("198.51.100.2", 5)).await.expect("block");
    journal.record_unblock("default", ip("198.51.100.3"), "adopt_legacy", at(6)).await.expect("unblock");
}

async fn export_then_import_into_an_empty_journal(fixture: &Fixture) {
    let source = fixture.open();
    fill(&source).await;
    let rows = source.export().await.expect("export");
    assert_eq!(rows.len(), 2 + 1 + 2, "actions, decisions, ledger rows");
    let refused = source.import(rows.clone()).await;
    assert!(matches!(refused, Err(Error::NotEmpty { rows: 5, .. })), "{refused:?}");

    let kind = if matches!(fixture, Fixture::Sqlite { .. }) { Kind::Sqlite } else { Kind::Postgres };
    let Some(empty) = Fixture::new(kind, "export_then_import_into_an_empty_journal (target)") else { return };
    let target = empty.open();
    let imported = target.import(rows.clone()).await.expect("import");
    assert_eq!((imported.actions, imported.decisions, imported.blocks), (2, 1, 2));
    assert_eq!(target.export().await.expect("export"), rows, "the same rows, ids kept");
    assert_eq!(target.pending().await.expect("pending"), source.pending().await.expect("pending"));
    let next = target.enqueue(&block("198.51.100.50", 9)).await.expect("enqueue after import");
    assert!(next.to_string().parse::<i64>().expect("an id") > 2, "new ids come after the imported ones");
}

/// What only a database server can do: go away, restart, be migrated by several instances at once.
mod postgres_only {
    use super::*;

    fn database(test: &str) -> Option<TestDatabase> {
        TestDatabase::create(&format!("journal::contract::postgres_only::{test}"))
    }

    #[tokio::test]
    async fn an_unreachable_server_degrades_to_memory_and_is_written_back() {
        let Some(db) = database("an_unreachable_server_degrades_to_memory_and_is_written_back") else { return };
        let proxy = Proxy::start(db.server_addr());
        let journal = Journal::open_postgres(&db.via(proxy.addr)).expect("connects through the proxy");
        let before = journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");

        proxy.set_cut(true);
        let during = journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue while unreachable");
        assert!(journal.is_degraded());
        assert!(during.to_string().starts_with('-'), "a memory id: {during}");
        assert_eq!(journal.enqueue(&block("198.51.100.2", 3)).await.expect("enqueue"), during, "idempotent");
        journal.record_attempt(during, "fortigate: 503").await.expect("attempt while degraded");
        journal.complete(before, &Outcome::Done).await.expect("complete while degraded");
        journal.record_block(&record("198.51.100.1", 4)).await.expect("block while degraded");
        journal.record_decision(&decision("198.51.100.2", 5, "block")).await.expect("decision while degraded");
        assert_eq!(ips(&journal.pending().await.expect("pending from memory")), ["block 198.51.100.2"]);
        assert_eq!(journal.active_blocks().await.expect("active"), vec![record("198.51.100.1", 4)]);
        assert!(journal.flush().await.is_err(), "still unreachable");
        assert!(journal.export().await.is_err(), "no export from memory");

        proxy.set_cut(false);
        assert_eq!(journal.flush().await.expect("written back"), 5);
        assert!(!journal.is_degraded());
        journal.record_attempt(during, "timeout").await.expect("the memory id still works");
        let other = Journal::open_postgres(&db.target).expect("direct");
        let pending = other.pending().await.expect("pending");
        assert_eq!(ips(&pending), ["block 198.51.100.2"]);
        assert_eq!((pending[0].attempts, pending[0].last_error.as_deref()), (2, Some("timeout")));
        assert_eq!(other.active_blocks().await.expect("active"), vec![record("198.51.100.1", 4)]);
        assert_eq!(recent_decisions(&other, 5).await, vec![decision("198.51.100.2", 5, "block")]);
        journal.complete(during, &Outcome::Done).await.expect("complete by memory id");
        assert_eq!(other.pending().await.expect("pending"), vec![]);
    }

    #[tokio::test]
    async fn a_terminated_session_reconnects_without_losing_a_write() {
        let Some(db) = database("a_terminated_session_reconnects_without_losing_a_write") else { return };
        let journal = Journal::open_postgres(&db.target).expect("connects");
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue");
        assert!(db.terminate_sessions() >= 1, "the writer's session is ended");
        // The first write after may find the connection closed (reconnect at once) or fail on it (degrade, then
        // write back on flush); either way nothing is lost.
        journal.enqueue(&block("198.51.100.2", 2)).await.expect("enqueue after the restart");
        journal.flush().await.expect("flush");
        assert!(!journal.is_degraded());
        let other = Journal::open_postgres(&db.target).expect("direct");
        assert_eq!(ips(&other.pending().await.expect("pending")), ["block 198.51.100.1", "block 198.51.100.2"]);
    }

    #[tokio::test]
    async fn a_server_that_never_answered_is_adopted_later() {
        let Some(db) = database("a_server_that_never_answered_is_adopted_later") else { return };
        let proxy = Proxy::start(db.server_addr());
        proxy.set_cut(true);
        let state = crate::config::State { postgres: Some(db.via(proxy.addr)), ..Default::default() };
        let (journal, error) = Journal::open_config(&state);
        assert!(error.expect("cannot connect").to_string().contains(&proxy.addr.to_string()));
        assert!(journal.is_degraded());
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue in memory");
        proxy.set_cut(false);
        assert_eq!(journal.flush().await.expect("connects and writes back"), 1);
        let other = Journal::open_postgres(&db.target).expect("direct");
        assert_eq!(ips(&other.pending().await.expect("pending")), ["block 198.51.100.1"]);
    }

    #[tokio::test]
    async fn instances_starting_together_migrate_once_and_a_newer_schema_is_refused() {
        let Some(db) = database("instances_starting_together_migrate_once") else { return };
        let target = db.target.clone();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let target = target.clone();
                std::thread::spawn(move || Journal::open_postgres(&target).map(|_| ()))
            })
            .collect();
        for open in opens {
            open.join().expect("thread").expect("every instance opens");
        }
        let versions = std::thread::spawn(move || {
            let mut client = target.connect().expect("connect");
            client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).expect("versions").len()
        })
        .join()
        .expect("thread");
        assert_eq!(versions, super::super::postgres::SCHEMA_VERSION_FOR_TESTS as usize);
        db.execute("INSERT INTO schema_migrations (version) VALUES (999)");
        let error = Journal::open_postgres(&db.target).expect_err("newer schema").to_string();
        assert!(error.contains("schema version 999 is newer"), "{error}");
        assert!(error.contains(&db.name), "names the database: {error}");
    }

    /// `sslmode=verify-full` speaks TLS and verifies the certificate: against `ca_file` it connects (and the
    /// session is encrypted), against another CA it is refused (never a silent fall-back to plain TCP). Needs the
    /// test server to serve TLS with Debian's snakeoil certificate for `localhost`; skipped otherwise.
    #[tokio::test]
    async fn tls_verifies_the_server_certificate() {
        let Some(db) = database("tls_verifies_the_server_certificate") else { return };
        let ca = std::path::PathBuf::from("/etc/ssl/certs/ssl-cert-snakeoil.pem");
        let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        let addr = db.server_addr();
        let Some(other_ca) = bundle.split_inclusive("-----END CERTIFICATE-----\n").next().filter(|_| ca.exists())
        else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP tls_verifies_the_server_certificate: no snakeoil certificate");
            return;
        };
        let url = format!("postgres://postgres@localhost:{}/{}?sslmode=verify-full", addr.port(), db.name);
        let trusted = crate::journal::PostgresTarget::new(&url, None, Some(ca)).expect("valid");
        assert!(trusted.is_tls());
        let journal = Journal::open_postgres(&trusted).expect("TLS with the server's CA");
        journal.enqueue(&block("198.51.100.1", 1)).await.expect("enqueue over TLS");
        let encrypted = std::thread::spawn(move || {
            let mut client = trusted.connect().expect("connect");
            let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).expect("query");
            row.get::<_, bool>(0)
        })
        .join()
        .expect("thread");
        assert!(encrypted, "the session is encrypted");
        let dir = tempfile::tempdir().expect("tempdir");
        let wrong = dir.path().join("other-ca.pem");
        std::fs::write(&wrong, other_ca).expect("write");
        let untrusted = crate::journal::PostgresTarget::new(&url, None, Some(wrong)).expect("valid");
        let error = Journal::open_postgres(&untrusted).expect_err("another CA's server is refused").to_string();
        assert!(error.contains("certificate") || error.contains("issuer"), "{error}");
    }

    /// An operator moves a SQLite journal to PostgreSQL: export from the file, import into the database.
    #[tokio::test]
    async fn a_sqlite_journal_moves_to_postgres() {
        let Some(db) = database("a_sqlite_journal_moves_to_postgres") else { return };
        let file = Fixture::new(Kind::Sqlite, "a_sqlite_journal_moves_to_postgres").expect("SQLite");
        let sqlite = file.open();
        fill(&sqlite).await;
        let rows = sqlite.export().await.expect("export");
        let postgres = Journal::open_postgres(&db.target).expect("connects");
        postgres.import(rows.clone()).await.expect("import");
        assert_eq!(postgres.export().await.expect("export"), rows);
        assert_eq!(postgres.pending().await.expect("pending"), sqlite.pending().await.expect("pending"));
        assert_eq!(postgres.active_blocks().await.expect("ledger"), sqlite.active_blocks().await.expect("ledger"));
        let _ = Duration::ZERO;
    }
}
