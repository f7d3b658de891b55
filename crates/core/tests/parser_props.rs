//! Property tests for the syslog parser and framer (proptest). Case counts add up to 170 000 per run (60k + 60k + 4 × 10k +
//! 10k); the suite takes 7 s in a debug build on the 2-core dev machine (23 s with three other builds running).
//!
//! - arbitrary bytes, and corpus lines with random edits, never panic; `describe_line` always prints valid JSON;
//! - generated records written as default key=value (under each header), csv, CEF and JSON parse back to the same
//!   fields;
//! - a stream of octet-counted and LF frames, cut into random reads, decodes to the same messages.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::BytesMut;
use fortimisp_core::syslog::{describe_line, parse, Format, FrameDecoder};
use proptest::prelude::*;

fn corpus() -> &'static [Vec<u8>] {
    static LINES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(fortimisp_testkit::corpus::lines)
}

/// Parse and describe must not panic, and the description must be JSON.
fn exercise(input: &[u8]) {
    if let Ok(record) = parse(input) {
        let _ = (record.srcip(), record.dstip(), record.policyid(), record.action(), record.duplicate_keys());
        let _ = record.fields().count();
    }
    let line = describe_line(1, input);
    serde_json::from_str::<serde_json::Value>(&line).expect("describe_line prints valid JSON");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60_000))]
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        exercise(&input);
        let mut decoder = FrameDecoder::new(64);
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) | Err(_) = decoder.decode(&mut buf) {}
        let _ = decoder.decode_eof(&mut buf);
    }
}

/// Bytes that steer a mutation towards the parser's decision points.
const INTERESTING: &[u8] = b"<>=\" \\,|:{}[]-\r\n\0\xff\xc3CEF01";

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![prop::sample::select(INTERESTING), any::<u8>()];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60_000))]
    #[test]
    fn mutated_corpus_lines_never_panic(index in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let lines = corpus();
        let mut line = lines[index % lines.len()].clone();
        for e in edits {
            let n = line.len().max(1);
            match e {
                Edit::Replace(i, b) => if !line.is_empty() { line[i % n] = b },
                Edit::Insert(i, b) => line.insert(i % (line.len() + 1), b),
                Edit::Delete(i) => if !line.is_empty() { line.remove(i % n); },
                Edit::Truncate(i) => line.truncate(i % (line.len() + 1)),
            }
        }
        exercise(&line);
    }
}

// ---- round trips

const VALUE_CHARS: &[char] =
    &['a', 'Z', '0', '9', '.', ':', '/', '-', '_', ' ', '=', ',', '"', '\\', '|', '\'', '(', ')', 'é', '€'];

fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(VALUE_CHARS), 0..16).prop_map(String::from_iter)
}

/// Unique keys with values; always carries `type=traffic` first so the line is recognisably FortiGate's.
fn record() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[a-z][a-z0-9_]{0,10}", value(), 0..12).prop_map(|m: BTreeMap<String, String>| {
        let mut pairs = vec![("type".to_string(), "traffic".to_string())];
        pairs.extend(m.into_iter().filter(|(k, _)| k != "type"));
        pairs
    })
}

fn as_map<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// FortiOS quoting: bare when safe, else `"..."` with `\"` and `\\`.
fn kv_value(v: &str) -> String {
    let bare = !v.is_empty() && !v.contains([' ', '"', '\\', ',', '=', '\t']);
    if bare {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn write_kv(pairs: &[(String, String)], sep: &str) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", kv_value(v))).collect::<Vec<_>>().join(sep)
}

const HEADERS: &[(&str, Format)] = &[
    ("", Format::Default),
    ("<189>", Format::Default),
    ("Dec 23 11:13:03 ", Format::Rfc3164),
    ("<134>Mar  2 09:01:00 fw-1 ", Format::Rfc3164),
    ("2018 Apr 09 16:03:37 relay->10.0.0.1 ", Format::Rfc3164),
    ("2026-04-03T00:33:02.518842+00:00 192.168.2.1 ", Format::Rfc3164),
    ("<165>1 2022-11-14T06:54:03Z fw - - - - ", Format::Rfc5424),
    ("<165>1 2022-11-14T06:54:03Z fw app 12 ID [a b=\"c\"] ", Format::Rfc5424),
];

/// CEF extension escaping: `\` `=` and line breaks.
fn cef_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('=', "\\=").replace('\n', "\\n").replace('\r', "\\r")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn default_round_trip(pairs in record(), header in 0..HEADERS.len(), spaces in 1..3usize) {
        let (prefix, format) = HEADERS[header];
        let line = format!("{prefix}{}", write_kv(&pairs, &" ".repeat(spaces)));
        let record = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(record.format(), format, "{}", line);
        prop_assert_eq!(as_map(record.fields()), as_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))), "{}", line);
    }

    #[test]
    fn csv_round_trip(pairs in record(), pri in any::<bool>()) {
        let line = format!("{}{}", if pri { "<189>" } else { "" }, write_kv(&pairs, ","));
        let record = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        let want_format = if pairs.len() > 1 { Format::Csv } else { Format::Default };
        prop_assert_eq!(record.format(), want_format, "{}", line);
        prop_assert_eq!(as_map(record.fields()), as_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))), "{}", line);
    }

    #[test]
    fn cef_round_trip(pairs in record(), marker in any::<bool>()) {
        // CEF values are trimmed at their ends (the space before the next key is a separator).
        let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k, v.trim().to_string())).collect();
        let ext = pairs.iter().map(|(k, v)| format!("FTNTFGT{k}={}", cef_value(v))).collect::<Vec<_>>().join(" ");
        let line = format!("{}0|Fortinet|Fortigate|v7.2.8|00013|traffic:forward close|3|{ext}", if marker { "CEF:" } else { "" });
        let record = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(record.format(), Format::Cef, "{}", line);
        prop_assert_eq!(as_map(record.fields()), as_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))), "{}", line);
    }

    #[test]
    fn json_round_trip(pairs in record(), number in any::<u32>()) {
        let mut object = serde_json::Map::new();
        for (k, v) in &pairs {
            object.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        object.insert("srcport".into(), serde_json::Value::from(number));
        let line = format!("<189>{}", serde_json::Value::Object(object));
        let record = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {line}")))?;
        prop_assert_eq!(record.format(), Format::Json, "{}", line);
        let mut want = as_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        want.insert("srcport".into(), number.to_string());
        prop_assert_eq!(as_map(record.fields()), want, "{}", line);
    }
}

// ---- framing

fn message() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop::sample::select(&b"abc=\" <>0123\n"[..]), 1..40).prop_map(|mut m| {
        // A syslog message starts with `<`; trailers at the end are not part of it.
        m.insert(0, b'<');
        while m.last().is_some_and(|c| *c == b'\n') {
            m.pop();
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]
    #[test]
    fn framing_survives_any_read_sizes(
        frames in proptest::collection::vec((message(), any::<bool>()), 0..8),
        cuts in proptest::collection::vec(1..24usize, 0..40),
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (msg, octet) in &frames {
            if *octet {
                stream.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                stream.extend_from_slice(msg);
                want.push(msg.clone());
            } else {
                // LF framing cannot carry a newline inside a message.
                let line: Vec<u8> = msg.iter().copied().filter(|&c| c != b'\n').collect();
                stream.extend_from_slice(&line);
                stream.push(b'\n');
                want.push(line);
            }
        }
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut cuts = cuts.into_iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(msg) = decoder.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(msg.to_vec());
            }
        }
        if let Some(msg) = decoder.decode_eof(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
            got.push(msg.to_vec());
        }
        prop_assert_eq!(got, want);
    }
}
