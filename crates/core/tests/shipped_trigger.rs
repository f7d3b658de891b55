//! The `[[trigger]]` shipped in `config/config.toml` must fit real FortiGate logs: a FortiGate logs an accepted
//! session when it ends, with `action` = close, timeout, server-rst or client-rst, so a rule on `action = "accept"`
//! alone misses most traffic. The shipped config runs over the whole corpus (real lines from public sources) and
//! over the lab's sample; the lines it triggers on are counted against an independent count from the corpus's
//! `expected.jsonl` (forward traffic whose session was let through), line by line.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fortimisp_core::config::{RawConfig, ENV_FORTIGATE_API_KEY, ENV_MISP_API_KEY};
use fortimisp_core::policy::{LineFacts, Triggers};
use fortimisp_core::syslog::parse;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shipped_triggers() -> Triggers {
    let text = std::fs::read_to_string(root().join("config/config.toml")).unwrap();
    let env = |name: &str| (name == ENV_MISP_API_KEY || name == ENV_FORTIGATE_API_KEY).then(|| "k".repeat(40));
    let config = RawConfig::parse(&text).unwrap().validate(&env).unwrap();
    Triggers::new(config.trigger)
}

/// Actions that mean "the FortiGate let this session through" (ended, or logged at its start).
const PASSED: &[&str] = &["accept", "start", "close", "timeout", "server-rst", "client-rst"];

#[test]
fn the_shipped_trigger_fires_on_every_passed_forward_session_of_the_corpus_and_nothing_else() {
    let triggers = shipped_triggers();
    let corpus = root().join("tests/data/corpus");
    let expected = std::fs::read_to_string(corpus.join("expected.jsonl")).unwrap();
    let mut want = BTreeSet::new();
    let mut got = BTreeSet::new();
    let mut lines = 0;
    for row in expected.lines() {
        let row: Value = serde_json::from_str(row).unwrap();
        let (file, line_no) = (row["file"].as_str().unwrap().to_string(), row["line_no"].as_u64().unwrap());
        let passed = row["type"] == "traffic"
            && row["subtype"] == "forward"
            && row["action"].as_str().is_some_and(|a| PASSED.contains(&a))
            // A line must carry a source address to look up (one CEF sample has `src=hostname`).
            && row["srcip"].as_str().is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok());
        if passed {
            want.insert((file.clone(), line_no));
        }
        let text = std::fs::read(corpus.join(&file)).unwrap();
        let line = text.split(|b| *b == b'\n').nth(line_no as usize - 1).unwrap();
        lines += 1;
        if let Ok(record) = parse(line) {
            if !triggers.targets(&LineFacts::of(&record)).is_empty() {
                got.insert((file, line_no));
            }
        }
    }
    assert_eq!(got, want, "lines the shipped trigger fires on vs passed forward sessions");
    // The corpus holds 36 such sessions in 582 lines; a rule on "accept" alone fires on 10 of them.
    assert_eq!(got.len(), 36, "of {lines} corpus lines");
}

#[test]
fn the_shipped_trigger_fires_on_the_lab_samples_passed_sessions() {
    let triggers = shipped_triggers();
    let sample = std::fs::read_to_string(root().join("lab/sample.log")).unwrap();
    let mut fired = 0;
    let mut passed = 0;
    for line in sample.lines().filter(|l| !l.trim().is_empty()) {
        let record = parse(line.as_bytes()).unwrap();
        let facts = LineFacts::of(&record);
        let is_passed = facts.log_type == Some("traffic")
            && facts.subtype == Some("forward")
            && facts.action.is_some_and(|a| PASSED.contains(&a));
        passed += usize::from(is_passed);
        let fires = !triggers.targets(&facts).is_empty();
        assert_eq!(fires, is_passed, "{line}");
        fired += usize::from(fires);
    }
    assert!(fired >= 10, "the shipped trigger fires on {fired} of the lab's lines ({passed} passed sessions)");
}
