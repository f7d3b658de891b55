//! The shared FortiGate corpus (`tests/data/corpus`, real lines from public repositories) through
//! `describe_line`, the function behind `integration parse`: every line of every `*.log` must give the `format` and
//! every field that `expected.jsonl` records. A non-null expected value must be printed exactly; a null one
//! ("the line does not carry it") must be absent from `fields`. No line is exempt.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fortimisp_core::syslog::{describe_line, parse};
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/corpus")
}

/// Lines of a .log file as bytes, split on `\n` only (a `\r` before it stays: the parser must cope).
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = bytes.split(|&c| c == b'\n').collect();
    if out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out
}

fn load_expected() -> BTreeMap<(String, u64), serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.jsonl")).expect("corpus expected.jsonl is readable");
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let Value::Object(obj) = serde_json::from_str::<Value>(line).expect("expected.jsonl line is JSON") else {
            panic!("expected.jsonl line {} is not an object", i + 1);
        };
        let file = obj["file"].as_str().expect("file is a string").to_string();
        let line_no = obj["line_no"].as_u64().expect("line_no is a number");
        map.insert((file, line_no), obj);
    }
    map
}

#[test]
fn every_corpus_line_matches_expected() {
    let expected = load_expected();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir is readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .log files in {}", corpus_dir().display());

    let mut checked_lines = 0;
    let mut checked_values = 0;
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 file name").to_string();
        let bytes = std::fs::read(path).expect("corpus file is readable");
        for (i, line) in lines(&bytes).into_iter().enumerate() {
            let line_no = i as u64 + 1;
            let Some(want) = expected.get(&(name.clone(), line_no)) else {
                failures.push(format!("{name}:{line_no}: no expected.jsonl record"));
                continue;
            };
            checked_lines += 1;
            let described = describe_line(i + 1, line);
            let got: Value = serde_json::from_str(&described)
                .unwrap_or_else(|e| panic!("{name}:{line_no}: describe_line printed invalid JSON ({e}): {described}"));
            assert_eq!(got["line"], Value::from(line_no), "{name}:{line_no}: line number");
            let mut diffs = Vec::new();
            if let Some(error) = got.get("error") {
                diffs.push(format!("  parse error: {error}"));
            } else {
                if got["format"] != want["format"] {
                    diffs.push(format!("  format: expected {} got {}", want["format"], got["format"]));
                }
                let fields = got["fields"].as_object().expect("fields is an object");
                for (key, want_value) in want {
                    if matches!(key.as_str(), "file" | "line_no" | "format") {
                        continue;
                    }
                    checked_values += 1;
                    let got_value = fields.get(key).cloned().unwrap_or(Value::Null);
                    if &got_value != want_value {
                        diffs.push(format!("  {key}: expected {want_value} got {got_value}"));
                    }
                }
            }
            // The typed accessors agree with the printed fields.
            if let Ok(record) = parse(line) {
                let fields = &got["fields"];
                if let Some(ip) = fields["srcip"].as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()) {
                    if record.srcip() != Some(ip) {
                        diffs.push(format!("  srcip(): {:?} vs field {ip}", record.srcip()));
                    }
                }
                if record.action().is_some() && fields["action"].is_string() {
                    assert_eq!(record.action(), fields["action"].as_str(), "{name}:{line_no}");
                }
                if let Some(p) = fields["policyid"].as_str().and_then(|s| s.parse::<u32>().ok()) {
                    assert_eq!(record.policyid(), Some(p), "{name}:{line_no}");
                }
            }
            if !diffs.is_empty() {
                let shown = String::from_utf8_lossy(&line[..line.len().min(300)]).into_owned();
                failures
                    .push(format!("{name}:{line_no}:\n{}\n  line: {shown}\n  printed: {described}", diffs.join("\n")));
            }
        }
    }
    assert_eq!(checked_lines, expected.len(), "every expected.jsonl record has a .log line");
    println!("corpus: {checked_lines} lines, {checked_values} expected values checked, {} failing", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {checked_lines} corpus lines differ from expected.jsonl:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
