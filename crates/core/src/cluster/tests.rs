//! The keeper against a real PostgreSQL (the journal's test databases): one leader per target, failover after a
//! release or a cut, jobs once per gap, and the status read. Skipped loudly without a server.

use std::time::Duration;

use super::*;
use crate::journal::testdb::{Proxy, TestDatabase};
use crate::journal::Journal;

/// Short timings so the tests fail over in about a second: ttl 1.5 s, renewal every 250 ms.
fn fast() -> Timings {
    Timings::scaled(Duration::from_millis(1500), Duration::from_millis(250))
}

/// A fresh database with the journal's schema (the cluster tables included).
fn database(test: &str) -> Option<TestDatabase> {
    let db = TestDatabase::create(test)?;
    drop(Journal::open_postgres(&db.target).expect("migrates"));
    Some(db)
}

fn member(target: &PostgresTarget, name: &str, targets: &[&str]) -> Leadership {
    let targets = targets.iter().map(|t| t.to_string()).collect();
    Leadership::start(target.clone(), Identity::new(name, "integration"), fast(), targets)
}

fn leads(l: &Leadership, target: &str) -> bool {
    matches!(l.window(target), Window::Leader { .. })
}

/// Polls until `check` holds, at most `within` (a bound on liveness, not a speed assertion).
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_target_and_a_released_target_moves_to_another_instance() {
    let Some(db) = database("cluster::one_leader") else { return };
    let a = member(&db.target, "a", &["fg1", "fg2"]);
    a.settled(Duration::from_secs(5)).await;
    let b = member(&db.target, "b", &["fg1", "fg2"]);
    b.settled(Duration::from_secs(5)).await;
    assert!(leads(&a, "fg1") && leads(&a, "fg2"), "the first instance takes the free targets");
    // Several rounds later, still one writer per target.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for t in ["fg1", "fg2"] {
            assert!(!(leads(&a, t) && leads(&b, t)), "two writers on {t}");
        }
        assert!(!leads(&b, "fg1"));
    }
    let status = {
        let target = db.target.clone();
        std::thread::spawn(move || status::read(&target)).join().unwrap().expect("status reads")
    };
    assert_eq!(status.instances.len(), 2, "{status:?}");
    let a_id = a.identity().unwrap().id.clone();
    let fg1 = status.leases.iter().find(|l| l.name == "fg1").expect("a lease row per target");
    assert_eq!(fg1.holder, a_id);
    assert!(status::Status::is_held(fg1));

    a.release(Duration::from_secs(5)).await;
    assert!(!leads(&a, "fg1"), "a released lease stops writes at once");
    // A release expires the rows: the other instance takes them at its next renewal, well before the ttl.
    assert!(eventually(Duration::from_secs(5), || leads(&b, "fg1") && leads(&b, "fg2")).await);
    let instances = {
        let target = db.target.clone();
        std::thread::spawn(move || status::read(&target)).join().unwrap().expect("status reads").instances
    };
    assert_eq!(instances.len(), 1, "a released instance leaves the list");
    b.release(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_store_stops_writing_before_another_is_granted() {
    let Some(db) = database("cluster::cut") else { return };
    let proxy = Proxy::start(db.server_addr());
    let a = member(&db.via(proxy.addr), "a", &["fg"]);
    a.settled(Duration::from_secs(5)).await;
    assert!(leads(&a, "fg"));
    let epoch_a = match a.window("fg") {
        Window::Leader { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    let b = member(&db.target, "b", &["fg"]);
    b.settled(Duration::from_secs(5)).await;
    assert!(!leads(&b, "fg"));

    proxy.set_cut(true);
    // Sample both views until b leads: never both at once, and a stopped first.
    let mut a_stopped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leads(&b, "fg") {
        assert!(tokio::time::Instant::now() < deadline, "b never took over");
        let a_leads = leads(&a, "fg");
        a_stopped |= !a_leads;
        assert!(!(a_leads && leads(&b, "fg")), "two writers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a_stopped && !leads(&a, "fg"));
    match b.window("fg") {
        Window::Leader { epoch, .. } => assert!(epoch > epoch_a, "a takeover bumps the epoch"),
        other => panic!("{other:?}"),
    }
    // The cut heals: a reconnects and follows, b keeps the target.
    proxy.set_cut(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(leads(&b, "fg") && !leads(&a, "fg"));
    b.release(Duration::from_secs(5)).await;
    a.release(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_once_per_gap_whichever_instance_asks() {
    let Some(db) = database("cluster::jobs") else { return };
    let a = member(&db.target, "a", &[]);
    let b = member(&db.target, "b", &[]);
    let gap = Duration::from_secs(3600);
    let guard = a.job("job:prune", gap).await.expect("a free job is granted");
    assert!(guard.holds());
    assert!(b.job("job:prune", gap).await.is_none(), "held by a");
    drop(guard);
    // Released, but started within the gap: not again this cycle, by anyone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.job("job:prune", gap).await.is_none(), "ran within the gap");
    // Another job is independent, and with no gap the next asker gets it once released.
    let feeds = b.job("job:feeds", Duration::ZERO).await.expect("granted");
    // Renewed while held: it outlives its ttl.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(feeds.holds(), "a held job is renewed");
    assert!(a.job("job:feeds", Duration::ZERO).await.is_none());
    drop(feeds);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.job("job:feeds", Duration::ZERO).await.is_some(), "released: the next asker gets it");
    // Solo: every job runs.
    assert!(Leadership::solo().job("job:prune", gap).await.is_some_and(|g| g.holds()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_shown_gone_then_forgotten() {
    let Some(db) = database("cluster::forgotten") else { return };
    // Two instances that died without releasing: one silent for a minute, one for longer than the limit.
    let silent = |id: &str, secs: u64| {
        format!(
            "INSERT INTO instances (id, name, role, host, pid, version, started_at, seen_at)
             VALUES ('{id}', '{id}', 'integration', 'h', 1, 'v', now(), now() - make_interval(secs => {secs}))"
        )
    };
    db.execute(&silent("recent:1:0", 60));
    db.execute(&silent("old:1:0", keeper::INSTANCE_FORGOTTEN_AFTER.as_secs() + 60));
    let a = member(&db.target, "a", &["fg"]);
    a.settled(Duration::from_secs(5)).await;
    let target = db.target.clone();
    let status = std::thread::spawn(move || status::read(&target)).join().unwrap().expect("status reads");
    let mut names: Vec<&str> = status.instances.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "recent:1:0"], "the one silent past the limit is deleted, the recent one kept");
    let recent = status.instances.iter().find(|i| i.name == "recent:1:0").unwrap();
    assert!(recent.seen_seconds_ago >= 59.0, "{recent:?}");
    a.release(Duration::from_secs(5)).await;
}
