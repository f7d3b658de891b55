//! `config/config.toml` is the operator's reference copy of the contract, so it is tested like code:
//!
//! - it parses and validates (API keys come from the environment, so the key files need not exist);
//! - every contract key is shown (set or commented out) in its section, in the contract's order, and with a comment;
//! - every line ending in `# default: X` really sets the built-in default: deleting the line must leave the parsed
//!   [`RawConfig`] unchanged, and `X` must be the value the line sets;
//! - the commented-out examples are valid keys with valid types once uncommented;
//! - no API key is written inline.

use fortimisp_core::config::{RawConfig, ENV_FORTIGATE_API_KEY, ENV_MISP_API_KEY};

const EXAMPLE: &str = include_str!("../../../config/config.toml");

/// Every key of the contract (`../shared/contract.md`, plus the extensions `misp.full_sync_interval`,
/// `fortigate.timeout` and `syslog.recv_buffer_bytes`), by section, in the contract's order. Hard-coded on purpose:
/// the contract lives outside the repository, and a key added here is a key added to the operator interface.
const CONTRACT: &[(&str, &[&str])] = &[
    (
        "misp",
        &[
            "url",
            "api_key",
            "api_key_file",
            "ca_file",
            "verify_tls",
            "timeout",
            "types",
            "to_ids_only",
            "published_only",
            "enforce_warninglist",
            "tags_include",
            "tags_exclude",
            "sync_interval",
            "full_sync_interval",
            "lookup_cache_ttl",
            "feed_update_interval",
            "sightings",
            "min_prefix_v4",
            "min_prefix_v6",
        ],
    ),
    (
        "fortigate",
        &[
            "url",
            "api_key",
            "api_key_file",
            "ca_file",
            "verify_tls",
            "timeout",
            "vdom",
            "backend",
            "block_group",
            "block_group6",
            "max_group_members",
            "requests_per_second",
            "object_prefix",
            "urls",
            "devices",
            "vdoms",
            // The [[fortigate]] example's own key.
            "name",
        ],
    ),
    (
        "feed",
        &[
            "listen",
            "url",
            "tls_cert",
            "tls_key",
            "username",
            "password_file",
            "allowed_clients",
            "update",
            "contents",
            "name",
            "split_families",
            "max_entries",
            "max_feeds",
            "snapshot_interval",
            "status_interval",
        ],
    ),
    (
        "syslog",
        &["udp", "tcp", "tls", "tls_cert", "tls_key", "allowed_senders", "max_message_bytes", "recv_buffer_bytes"],
    ),
    ("trigger", &["policy_id", "action", "type", "subtype", "srcintf", "check"]),
    ("blocking", &["never_block", "dry_run", "max_blocks_per_minute", "scope", "healthy_share"]),
    ("housekeeping", &["max_age", "interval", "unblock_revoked", "adopt_legacy", "max_unblock_fraction", "feeds"]),
    ("state", &["path", "url", "password_file", "ca_file"]),
    // Extension (issue 16): several instances on one PostgreSQL journal.
    ("cluster", &["name", "lease_ttl", "renew_every"]),
    ("metrics", &["listen", "housekeeping_listen"]),
    ("log", &["format", "level"]),
];

/// The marker that claims a line sets the built-in default.
const DEFAULT_MARKER: &str = "# default:";

/// One `key = value` line of the example, set or commented out.
#[derive(Debug)]
struct KeyLine<'a> {
    /// 0-based index into `EXAMPLE.lines()`.
    index: usize,
    /// The table it belongs to (`misp`, `trigger`, ...), following commented-out headers too.
    section: String,
    key: &'a str,
    /// The TOML value as written, without the trailing comment.
    value: &'a str,
    /// The trailing comment, starting at its `#`.
    comment: Option<&'a str>,
    /// `false` for a commented-out example line.
    active: bool,
    /// The line above is a prose comment describing the key.
    described_above: bool,
}

/// Splits `text` at the first `#` outside a string.
fn split_comment(text: &str) -> (&str, Option<&str>) {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            '\\' if in_string && !escaped => {
                escaped = true;
                continue;
            }
            '"' if !escaped => in_string = !in_string,
            '#' if !in_string => return (text[..i].trim_end(), Some(text[i..].trim_end())),
            _ => {}
        }
        escaped = false;
    }
    (text.trim_end(), None)
}

/// `[name]` or `[[name]]` → `name`.
fn header(text: &str) -> Option<&str> {
    let (code, _) = split_comment(text);
    let inner = code.strip_prefix("[[").and_then(|s| s.strip_suffix("]]"));
    let inner = inner.or_else(|| code.strip_prefix('[').and_then(|s| s.strip_suffix(']')))?;
    Some(inner.trim())
}

/// `key = value [# comment]` → its parts; `None` for anything else (prose, blank, headers).
fn key_value(text: &str) -> Option<Parts<'_>> {
    let (code, comment) = split_comment(text);
    let (key, value) = code.split_once(" = ")?;
    let key = key.trim();
    let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (is_key && !value.trim().is_empty()).then(|| (key, value.trim(), comment))
}

/// What [`key_value`] reads from a line: key, value as written, trailing comment.
type Parts<'a> = (&'a str, &'a str, Option<&'a str>);

/// A commented-out line: the text after `#`.
fn uncommented(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix('#').map(str::trim_start)
}

fn key_lines() -> Vec<KeyLine<'static>> {
    let mut section = String::new();
    let mut prose_above = false;
    let mut out = Vec::new();
    for (index, line) in EXAMPLE.lines().enumerate() {
        let trimmed = line.trim();
        let (active, text) = match uncommented(trimmed) {
            Some(text) => (false, text),
            None => (true, trimmed),
        };
        if let Some(name) = header(text) {
            section = name.to_string();
            prose_above = false;
            continue;
        }
        if let Some((key, value, comment)) = key_value(text) {
            out.push(KeyLine {
                index,
                section: section.clone(),
                key,
                value,
                comment,
                active,
                described_above: prose_above,
            });
            prose_above = false;
            continue;
        }
        prose_above = !active && !text.is_empty();
    }
    out
}

fn env_with_keys(name: &str) -> Option<String> {
    match name {
        ENV_MISP_API_KEY => Some("0123456789abcdef0123456789abcdef01234567".into()),
        ENV_FORTIGATE_API_KEY => Some("example-fortigate-token".into()),
        _ => None,
    }
}

fn parse(text: &str) -> RawConfig {
    RawConfig::parse(text).unwrap_or_else(|e| panic!("config/config.toml (edited by the test) does not parse: {e}"))
}

/// Parses `v = <value>` so two spellings of one TOML value compare equal.
fn toml_value(value: &str) -> toml::Value {
    let table: toml::Table =
        toml::from_str(&format!("v = {value}")).unwrap_or_else(|e| panic!("`{value}` is not a TOML value: {e}"));
    table["v"].clone()
}

/// The first line where two pretty Debug dumps differ, for a readable failure.
fn first_difference(a: &str, b: &str) -> String {
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("with the line: {}\nwithout it:    {}", x.trim(), y.trim()))
        .unwrap_or_else(|| "the dumps differ in length".into())
}

#[test]
fn example_parses_and_validates() {
    let config =
        parse(EXAMPLE).validate(&env_with_keys).unwrap_or_else(|e| panic!("config/config.toml does not validate: {e}"));
    assert!(config.warnings.is_empty(), "the example must start without warnings: {:?}", config.warnings);
    assert!(!config.trigger.is_empty(), "the example must have one real [[trigger]]");
}

#[test]
fn every_default_claim_is_the_built_in_default() {
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let full = format!("{:#?}", parse(EXAMPLE));
    let mut checked = 0;
    for line in key_lines().iter().filter(|l| l.active) {
        let Some(claim) = line.comment.and_then(|c| c.strip_prefix(DEFAULT_MARKER)) else { continue };
        let where_ = format!("config/config.toml:{} ({}.{})", line.index + 1, line.section, line.key);
        assert_eq!(
            toml_value(line.value),
            toml_value(claim.trim()),
            "{where_}: the line sets `{}` but its comment claims the default is `{}`",
            line.value,
            claim.trim()
        );
        let without: String =
            lines.iter().enumerate().filter(|(i, _)| *i != line.index).map(|(_, l)| format!("{l}\n")).collect();
        let reparsed = format!("{:#?}", parse(&without));
        assert!(
            reparsed == full,
            "{where_}: marked `# default` but `{}` is not the built-in default\n{}",
            line.value,
            first_difference(&full, &reparsed)
        );
        checked += 1;
    }
    // Guards against a parser change that silently finds no marked lines.
    assert!(checked >= 40, "only {checked} lines marked `{DEFAULT_MARKER}` were found");
}

#[test]
fn every_contract_key_is_shown_in_contract_order() {
    let lines = key_lines();
    let mut sections: Vec<&str> = Vec::new();
    for line in &lines {
        if sections.last() != Some(&line.section.as_str()) && !sections.contains(&line.section.as_str()) {
            sections.push(&line.section);
        }
    }
    let expected_sections: Vec<&str> = CONTRACT.iter().map(|(s, _)| *s).collect();
    assert_eq!(sections, expected_sections, "sections must appear in the contract's order");

    for (section, keys) in CONTRACT {
        let mut seen: Vec<&str> = Vec::new();
        for line in lines.iter().filter(|l| l.section == *section) {
            assert!(
                keys.contains(&line.key),
                "config/config.toml:{}: `{}.{}` is not a contract key",
                line.index + 1,
                section,
                line.key
            );
            if !seen.contains(&line.key) {
                seen.push(line.key);
            }
        }
        assert_eq!(&seen, keys, "[{section}]: every key must be shown once, in the contract's order");
    }
}

#[test]
fn every_key_has_a_comment() {
    for line in key_lines() {
        let trailing_prose = line.comment.is_some_and(|c| !c.starts_with(DEFAULT_MARKER) && c.len() > 2);
        assert!(
            line.described_above || trailing_prose,
            "config/config.toml:{}: `{}.{}` needs a one-line comment above it (or after it, in an example)",
            line.index + 1,
            line.section,
            line.key
        );
    }
}

#[test]
fn commented_out_examples_are_valid_keys() {
    // Uncomment every example key and header at once: they must still be known keys with values of the right type.
    // The fleet example replaces the [fortigate] table, so it is left out here (`the_fleet_example_is_a_fleet`).
    let fleet = fleet_example_lines();
    let text: String = EXAMPLE
        .lines()
        .enumerate()
        .map(|(i, line)| match uncommented(line) {
            Some(text) if !fleet.contains(&i) && (header(text).is_some() || key_value(text).is_some()) => {
                format!("{text}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let raw = parse(&text);
    assert_eq!(raw.trigger.len(), 2, "the commented-out [[trigger]] example must become a second rule");
    assert!(raw.misp.api_key.is_some() && raw.misp.ca_file.is_some());
    assert!(raw.state.url.is_some() && raw.state.password_file.is_some() && raw.state.ca_file.is_some());
    assert!(raw.cluster.is_some_and(|c| c.name.is_some() && c.lease_ttl.is_some() && c.renew_every.is_some()));
}

/// The lines of the commented-out `[[fortigate]]` example: from its first header to the next blank line.
fn fleet_example_lines() -> std::ops::Range<usize> {
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let start = lines.iter().position(|l| l.trim() == "# [[fortigate]]").expect("a [[fortigate]] example");
    let end = (start..lines.len()).find(|i| lines[*i].trim().is_empty()).unwrap_or(lines.len());
    start..end
}

/// The commented-out fleet, uncommented in place of the `[fortigate]` table, is a valid two-target config.
#[test]
fn the_fleet_example_is_a_fleet() {
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    let table_start = lines.iter().position(|l| l.trim() == "[fortigate]").expect("a [fortigate] table");
    let table_end = (table_start..lines.len()).find(|i| lines[*i].trim().is_empty()).expect("its end");
    let fleet: String = fleet_example_lines()
        .map(|i| uncommented(lines[i]).unwrap_or(lines[i]))
        .filter(|l| header(l).is_some() || key_value(l).is_some())
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!("{}\n{fleet}\n{}", lines[..table_start].join("\n"), lines[table_end..].join("\n"));
    let env = |name: &str| match name {
        "FORTIMISP_FORTIGATE_EDGE_A_API_KEY" | "FORTIMISP_FORTIGATE_EDGE_B_API_KEY" => Some("token".to_string()),
        other => env_with_keys(other).filter(|_| other != ENV_FORTIGATE_API_KEY),
    };
    let config = parse(&text).validate(&env).unwrap_or_else(|e| panic!("the fleet example does not validate: {e}"));
    let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["edge-a", "edge-b"]);
    assert_eq!(config.targets[0].devices, ["FG100FTK20000001", "FGT-EDGE"]);
}

#[test]
fn no_api_key_is_inline() {
    for line in key_lines().iter().filter(|l| l.active) {
        assert_ne!(line.key, "api_key", "config/config.toml:{}: keep API keys out of the file", line.index + 1);
    }
    let raw = parse(EXAMPLE);
    assert_eq!(raw.misp.api_key_file.as_deref(), Some(std::path::Path::new("/run/secrets/misp_api_key")));
    assert_eq!(
        raw.fortigate.tables()[0].api_key_file.as_deref(),
        Some(std::path::Path::new("/run/secrets/fortigate_api_key"))
    );
}

#[test]
fn line_reader_handles_strings_and_comments() {
    let cases: &[(&str, Option<Parts>)] = &[
        ("a = 1", Some(("a", "1", None))),
        ("a = \"x # y\"   # default: \"x # y\"", Some(("a", "\"x # y\"", Some("# default: \"x # y\"")))),
        ("types = [\"ip-src|port\"] # c", Some(("types", "[\"ip-src|port\"]", Some("# c")))),
        ("A sentence = not a key", None),
        ("e.g. x = 1", None),
        ("[misp]", None),
        ("", None),
    ];
    for (input, expected) in cases {
        assert_eq!(key_value(input), *expected, "input {input:?}");
    }
    assert_eq!(header("[[trigger]]   # c"), Some("trigger"));
    assert_eq!(header("[log]"), Some("log"));
}

/// The docs recommend an unprivileged MISP key, with which MISP refuses feed fetches, and so `feed_update_interval
/// = "0s"`. The shipped file and the built-in default must be that recommendation, not a value the docs warn about.
#[test]
fn feed_updates_are_off_as_the_docs_recommend() {
    const DOCS: [(&str, &str); 3] = [
        ("README.md", include_str!("../../../README.md")),
        ("docs/production.md", include_str!("../../../docs/production.md")),
        ("SECURITY.md", include_str!("../../../SECURITY.md")),
    ];
    let shipped = parse(EXAMPLE).misp.feed_update_interval;
    let without_key: String = EXAMPLE
        .lines()
        .filter(|l| !l.trim_start().starts_with("feed_update_interval"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse(&without_key).misp.feed_update_interval, shipped, "the built-in default is the shipped value");
    let setting = regex::Regex::new(r#"feed_update_interval = "([^"]*)""#).unwrap();
    let mut recommendations = 0;
    for (file, text) in DOCS {
        for found in setting.captures_iter(text) {
            let value = humantime::parse_duration(&found[1]).unwrap_or_else(|e| panic!("{file}: {}: {e}", &found[0]));
            assert_eq!(value, shipped, "{file} recommends `{}`, config/config.toml ships {shipped:?}", &found[0]);
            recommendations += 1;
        }
    }
    assert!(recommendations >= 3, "the docs recommend a feed_update_interval ({recommendations} found)");
    assert!(shipped.is_zero(), "with the recommended unprivileged key, feed updates must be off: {shipped:?}");
}
