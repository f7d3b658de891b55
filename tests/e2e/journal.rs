//! `integration journal export` and `import`: how an operator moves a SQLite journal to PostgreSQL, with the real
//! binary. Needs PostgreSQL (`$FORTIMISP_TEST_POSTGRES_URL`, default the CI's on 127.0.0.1:5432); without it the
//! test prints a loud `SKIP` line and passes, unless `FORTIMISP_REQUIRE_POSTGRES=1`.

use fortimisp_e2e::{Database, Env};

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_journal_moves_to_postgres_with_export_and_import() {
    let Some(db) = Database::create("e2e journal::a_sqlite_journal_moves_to_postgres_with_export_and_import") else {
        return;
    };
    let mut env = Env::start().await;
    // Real rows, written by the daemon's own path: two blocks, one removed again.
    for ip in ["198.51.100.61", "2001:db8::62"] {
        let out = env.integration_cmd(&["block", ip]);
        assert!(out.status.success(), "block {ip}: {}", output_text(&out));
    }
    let out = env.integration_cmd(&["unblock", "2001:db8::62"]);
    assert!(out.status.success(), "unblock: {}", output_text(&out));

    let dump = env.dir.path().join("journal.jsonl");
    let out = env.integration_cmd(&["journal", "export", dump.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "export from SQLite: {}", output_text(&out));
    let exported = std::fs::read_to_string(&dump).expect("the export");
    let tables: Vec<&str> = exported
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            match row["table"].as_str() {
                Some("actions") => "actions",
                Some("decisions") => "decisions",
                Some("blocks") => "blocks",
                other => panic!("unknown table {other:?}"),
            }
        })
        .collect();
    for table in ["actions", "blocks"] {
        assert!(tables.contains(&table), "{table} exported:\n{exported}");
    }

    // The same config, pointed at PostgreSQL.
    env.tweak("[state]\n", &format!("[state]\nurl = \"{}\"\n", db.url));
    let out = env.integration_cmd(&["journal", "import", dump.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "import into PostgreSQL: {}", output_text(&out));
    assert!(output_text(&out).contains(&db.name), "names the database: {}", output_text(&out));
    let out = env.integration_cmd(&["journal", "import", dump.to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "a second import is refused");
    assert!(output_text(&out).contains("not empty"), "{}", output_text(&out));

    let out = env.integration_cmd(&["journal", "export", "-"]);
    assert!(out.status.success(), "export from PostgreSQL: {}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), exported, "PostgreSQL holds exactly what the file held");

    // The daemon's own commands read the moved journal: removing the remaining block finds its ledger entry.
    let out = env.integration_cmd(&["unblock", "198.51.100.61"]);
    assert!(out.status.success(), "unblock against PostgreSQL: {}", output_text(&out));
    let out = env.integration_cmd(&["journal", "export", "-"]);
    let after = String::from_utf8_lossy(&out.stdout);
    assert!(after.lines().count() > exported.lines().count(), "the unblock was journaled in PostgreSQL");
}
