//! Bad input at the config boundary, beyond the unit tests in `config.rs`: a wrong type or range for every key,
//! unknown keys in every section, unreadable key files, bad CA files, bad URLs, secrets that must not be echoed.
//! Each error is one line that starts with the full key path; no error and no `Debug` output holds a key.
//!
//! And the pure decoders that face the network with bytes nobody checked: the MISP restSearch body and the
//! FortiOS response envelope never panic on garbage.

use std::path::Path;

use fortimisp_core::config::{Config, RawConfig};

const MISP_KEY: &str = "SecretMispKey0123456789abcdefghijABCDEFG";
const FG_KEY: &str = "SecretFortiGateToken0123456789";

fn minimal() -> String {
    format!(
        r#"[misp]
url = "https://misp.example.org"
api_key = "{MISP_KEY}"

[fortigate]
url = "https://fortigate.example.org"
api_key = "{FG_KEY}"

[[trigger]]
policy_id = 7
"#
    )
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, String> {
    RawConfig::parse(text).and_then(|raw| raw.validate(&no_env)).map_err(|e| e.to_string())
}

/// The error for `text` starts with `expected`, is one line, and holds no key.
fn check_err(case: &str, text: &str, expected: &str) {
    let err = match load(text) {
        Ok(_) => panic!("{case}: expected an error starting with {expected:?}, the config was accepted"),
        Err(e) => e,
    };
    assert!(err.starts_with(expected), "{case}: error {err:?} should start with {expected:?}");
    assert!(!err.contains('\n'), "{case}: error must be one line: {err:?}");
    assert!(!err.contains(MISP_KEY) && !err.contains(FG_KEY), "{case}: a key leaked: {err}");
}

/// Inserts `line` right after the `[section]` header (appending the section if it is not in the base).
fn with(section: &str, line: &str) -> String {
    let base = minimal();
    let header = format!("[{section}]\n");
    if base.contains(&header) {
        base.replacen(&header, &format!("{header}{line}\n"), 1)
    } else {
        base.replacen("[[trigger]]", &format!("{header}{line}\n\n[[trigger]]"), 1)
    }
}

#[test]
fn the_base_config_is_valid() {
    let config = load(&minimal()).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains(MISP_KEY) && !debug.contains(FG_KEY), "Debug of Config shows a key: {debug}");
}

#[test]
fn wrong_types_and_ranges_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("misp", "verify_tls = \"yes\"", "misp.verify_tls:"),
        ("misp", "timeout = 10", "misp.timeout:"),
        ("misp", "timeout = \"-1s\"", "misp.timeout:"),
        ("misp", "timeout = \"0s\"", "misp.timeout:"),
        ("misp", "types = \"ip-src\"", "misp.types:"),
        ("misp", "types = [1]", "misp.types"),
        ("misp", "to_ids_only = 1", "misp.to_ids_only:"),
        ("misp", "published_only = \"no\"", "misp.published_only:"),
        ("misp", "enforce_warninglist = []", "misp.enforce_warninglist:"),
        ("misp", "tags_include = \"tlp:white\"", "misp.tags_include:"),
        ("misp", "tags_exclude = [true]", "misp.tags_exclude"),
        ("misp", "sync_interval = 300", "misp.sync_interval:"),
        ("misp", "sync_interval = \"5 parsecs\"", "misp.sync_interval:"),
        ("misp", "lookup_cache_ttl = \"0s\"", "misp.lookup_cache_ttl:"),
        ("misp", "full_sync_interval = \"0s\"", "misp.full_sync_interval:"),
        ("misp", "feed_update_interval = \"soon\"", "misp.feed_update_interval:"),
        ("misp", "sightings = \"true\"", "misp.sightings:"),
        ("misp", "min_prefix_v4 = -1", "misp.min_prefix_v4:"),
        ("misp", "min_prefix_v4 = \"16\"", "misp.min_prefix_v4:"),
        ("misp", "min_prefix_v4 = 33", "misp.min_prefix_v4:"),
        ("misp", "min_prefix_v6 = 129", "misp.min_prefix_v6:"),
        ("misp", "min_prefix_v6 = 1.5", "misp.min_prefix_v6:"),
        ("fortigate", "verify_tls = 0", "fortigate.verify_tls:"),
        ("fortigate", "timeout = \"0s\"", "fortigate.timeout:"),
        ("fortigate", "vdom = 1", "fortigate.vdom:"),
        ("fortigate", "backend = \"banned_ip\"", "fortigate.backend:"),
        ("fortigate", "block_group = \"\"", "fortigate.block_group:"),
        ("fortigate", "block_group = \"a\\\"b\"", "fortigate.block_group:"),
        (
            "fortigate",
            "block_group = \"MISP_BLOCK_WITH_A_NAME_FAR_TOO_LONG_FOR_FORTIOS_EVEN_WITH_THE_63_CHARACTER_LIMIT\"",
            "fortigate.block_group:",
        ),
        ("fortigate", "block_group6 = \"x/y\"", "fortigate.block_group6:"),
        ("fortigate", "max_group_members = 1", "fortigate.max_group_members:"),
        ("fortigate", "max_group_members = 99999999999", "fortigate.max_group_members:"),
        ("fortigate", "max_group_members = \"600\"", "fortigate.max_group_members:"),
        ("fortigate", "requests_per_second = -1", "fortigate.requests_per_second:"),
        ("fortigate", "requests_per_second = \"ten\"", "fortigate.requests_per_second:"),
        ("fortigate", "requests_per_second = nan", "fortigate.requests_per_second:"),
        ("fortigate", "requests_per_second = inf", "fortigate.requests_per_second:"),
        ("fortigate", "object_prefix = \"misp/\"", "fortigate.object_prefix:"),
        ("fortigate", "object_prefix = 1", "fortigate.object_prefix:"),
        ("syslog", "udp = 514", "syslog.udp:"),
        ("syslog", "udp = \"0.0.0.0\"", "syslog.udp:"),
        ("syslog", "tcp = \"0.0.0.0:99999\"", "syslog.tcp:"),
        ("syslog", "tls = \"nope\"", "syslog.tls:"),
        ("syslog", "allowed_senders = \"10.0.0.0/8\"", "syslog.allowed_senders:"),
        ("syslog", "allowed_senders = [\"10.0.0.300\"]", "syslog.allowed_senders[0]:"),
        ("syslog", "max_message_bytes = 10000000", "syslog.max_message_bytes:"),
        ("syslog", "max_message_bytes = -1", "syslog.max_message_bytes:"),
        ("syslog", "recv_buffer_bytes = 1", "syslog.recv_buffer_bytes:"),
        ("blocking", "never_block = \"10.0.0.0/8\"", "blocking.never_block:"),
        ("blocking", "never_block = [\"10.0.0.0/8\", \"bad\"]", "blocking.never_block[1]:"),
        ("blocking", "dry_run = \"no\"", "blocking.dry_run:"),
        ("blocking", "max_blocks_per_minute = -5", "blocking.max_blocks_per_minute:"),
        ("blocking", "max_blocks_per_minute = 0", "blocking.max_blocks_per_minute:"),
        ("housekeeping", "max_age = 90", "housekeeping.max_age:"),
        ("housekeeping", "interval = \"0s\"", "housekeeping.interval:"),
        ("housekeeping", "unblock_revoked = \"yes\"", "housekeeping.unblock_revoked:"),
        ("housekeeping", "adopt_legacy = 1", "housekeeping.adopt_legacy:"),
        ("housekeeping", "max_unblock_fraction = -0.1", "housekeeping.max_unblock_fraction:"),
        ("housekeeping", "max_unblock_fraction = \"half\"", "housekeeping.max_unblock_fraction:"),
        ("housekeeping", "feeds = 1", "housekeeping.feeds:"),
        ("housekeeping", "feeds = [-1]", "housekeeping.feeds[0]:"),
        ("state", "path = 1", "state.path:"),
        ("metrics", "listen = \"1.2.3.4\"", "metrics.listen:"),
        ("metrics", "housekeeping_listen = \"x\"", "metrics.housekeeping_listen:"),
        ("log", "format = 1", "log.format:"),
        ("log", "level = \"info,fortimisp=loud\"", "log.level:"),
        ("log", "level = 3", "log.level:"),
    ];
    for (section, line, expected) in cases {
        check_err(&format!("[{section}] {line}"), &with(section, line), expected);
    }
}

/// Missing syslog TLS files are not a config error for everyone: the integration daemon checks them at start
/// (`Config::check_syslog_files`, through `process::start`), housekeeping never reads them.
#[test]
fn syslog_tls_files_are_checked_by_the_integration_check_only() {
    let text = with(
        "syslog",
        "tls = \"127.0.0.1:6514\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"",
    );
    let config = load(&text).expect("validation alone does not read the TLS files");
    let err = config.check_syslog_files().expect_err("the integration check reads them").to_string();
    assert!(err.starts_with("syslog.tls_cert: cannot read /nonexistent/cert.pem"), "{err}");
    assert!(!err.contains('\n'), "one line: {err:?}");

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not read here, only looked up").unwrap();
    let text = text.replace("/nonexistent/cert.pem", cert.to_str().unwrap());
    let err = load(&text).unwrap().check_syslog_files().expect_err("the key is still missing").to_string();
    assert!(err.starts_with("syslog.tls_key: cannot read /nonexistent/key.pem"), "{err}");
}

#[test]
fn trigger_keys_have_types_too() {
    let cases: &[(&str, &str)] = &[
        ("policy_id = -1", "trigger[0].policy_id:"),
        ("policy_id = 1.5", "trigger[0].policy_id:"),
        ("action = 7", "trigger[0].action:"),
        ("type = []", "trigger[0].type:"),
        ("subtype = 1", "trigger[0].subtype:"),
        ("srcintf = false", "trigger[0].srcintf:"),
        ("check = 1", "trigger[0].check:"),
        ("check = \"source\"", "trigger[0].check:"),
        ("bogus = 1", "trigger[0].bogus: unknown field"),
    ];
    for (line, expected) in cases {
        let text = minimal().replace("policy_id = 7", line);
        check_err(line, &text, expected);
    }
    check_err("trigger not an array", &minimal().replace("[[trigger]]", "[trigger]"), "trigger:");
}

#[test]
fn unknown_keys_are_named_in_every_section() {
    for section in ["misp", "fortigate", "syslog", "blocking", "housekeeping", "state", "metrics", "log"] {
        check_err(section, &with(section, "colour = \"blue\""), &format!("{section}.colour: unknown field"));
    }
    check_err("top level", &format!("colour = \"blue\"\n{}", minimal()), "colour: unknown field");
    check_err("misspelt section", &minimal().replace("[fortigate]", "[fortigates]"), "fortigates: unknown field");
}

#[test]
fn broken_toml_is_one_line() {
    for (case, text) in [
        ("unclosed string", minimal().replace("\"https://misp.example.org\"", "\"https://misp.example.org")),
        ("unclosed table", minimal().replace("[misp]", "[misp")),
        ("duplicate key", minimal().replace("[misp]\n", "[misp]\nurl = \"https://a.example.org\"\n")),
        ("binary", "\u{0}\u{1}\u{2}".to_string()),
        ("empty", String::new()),
    ] {
        let err = load(&text).expect_err(case);
        assert!(!err.contains('\n'), "{case}: {err:?}");
        assert!(!err.contains(MISP_KEY) && !err.contains(FG_KEY), "{case}: {err}");
    }
}

#[test]
fn bad_urls_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("", "misp.url: not a URL"),
        ("misp.example.org", "misp.url: not a URL"),
        ("https://", "misp.url:"),
        ("ftp://misp.example.org", "misp.url: scheme"),
        ("file:///etc/passwd", "misp.url:"),
        ("javascript:alert(1)", "misp.url:"),
        ("https://user:secret@misp.example.org", "misp.url: must not carry credentials"),
        ("https://misp.example.org:99999", "misp.url:"),
        ("https://exa mple.org", "misp.url:"),
    ];
    for (url, expected) in cases {
        let text = minimal().replace("https://misp.example.org", url);
        check_err(url, &text, expected);
        let err = load(&text).unwrap_err();
        assert!(!err.contains("secret"), "the URL's password is echoed: {err}");
    }
    let text = minimal().replace("https://fortigate.example.org", "https://admin:pw@fortigate.example.org");
    check_err("fortigate credentials", &text, "fortigate.url: must not carry credentials");
}

fn key_file_case(dir: &Path, name: &str, content: Option<&[u8]>) -> String {
    let path = dir.join(name);
    match content {
        Some(bytes) => std::fs::write(&path, bytes).unwrap(),
        None => std::fs::create_dir_all(&path).unwrap(),
    }
    minimal().replace(&format!("api_key = \"{FG_KEY}\""), &format!("api_key_file = {:?}", path.display().to_string()))
}

#[test]
fn unreadable_or_bad_key_files() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot be read as a file, even by root (chmod 000 would not stop root).
    check_err("directory", &key_file_case(dir.path(), "keydir", None), "fortigate.api_key_file: cannot read");
    check_err(
        "missing",
        &minimal().replace(&format!("api_key = \"{FG_KEY}\""), "api_key_file = \"/nonexistent/k\""),
        "fortigate.api_key_file: cannot read",
    );
    check_err("empty", &key_file_case(dir.path(), "empty", Some(b"")), "fortigate.api_key:");
    check_err("blank", &key_file_case(dir.path(), "blank", Some(b"  \n\n")), "fortigate.api_key:");
    check_err("binary", &key_file_case(dir.path(), "bin", Some(b"\x00\xff\x01key")), "fortigate.api_key");
    check_err("two lines", &key_file_case(dir.path(), "two", Some(b"first\nsecond\n")), "fortigate.api_key:");
    // A key with a space or a control character is refused without echoing it.
    let text = minimal().replace(FG_KEY, &format!("{FG_KEY} {FG_KEY}"));
    check_err("space in key", &text, "fortigate.api_key: contains spaces");
    let text = minimal().replace(MISP_KEY, &format!("{MISP_KEY}\\t{MISP_KEY}"));
    check_err("tab in key", &text, "misp.api_key: contains spaces");
}

#[test]
fn bad_ca_files() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate").unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(&key_only, "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")
        .unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!not base64!!!!\n-----END CERTIFICATE-----\n").unwrap();
    let a_dir = dir.path().join("a-dir");
    std::fs::create_dir(&a_dir).unwrap();
    for (section, key) in [("misp", "misp.ca_file"), ("fortigate", "fortigate.ca_file")] {
        for path in [&garbage, &empty, &key_only, &broken, &a_dir] {
            let text = with(section, &format!("ca_file = {:?}", path.display().to_string()));
            check_err(&format!("{key} {}", path.display()), &text, &format!("{key}:"));
        }
        check_err(key, &with(section, "ca_file = \"/nonexistent/ca.pem\""), &format!("{key}: cannot read"));
    }
}

// ---- network decoders ------------------------------------------------------------------------------------------

/// Garbage bodies for the two decoders: truncated JSON, wrong types, deep nesting, huge numbers.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "",
        "null",
        "[]",
        "{}",
        "<html>500</html>",
        "{\"response\":",
        "{\"response\":[]}",
        "{\"response\":{}}",
        "{\"response\":{\"Attribute\":null}}",
        "{\"response\":{\"Attribute\":{}}}",
        "{\"response\":{\"Attribute\":[null,1,\"x\",[],{}]}}",
        "{\"response\":{\"Attribute\":[{\"id\":\"1\",\"event_id\":\"x\",\"type\":\"ip-src\",\"value\":\"1.2.3.4\"}]}}",
        "{\"response\":{\"Attribute\":[{\"id\":\"-1\",\"event_id\":\"99999999999999999999999\",\"type\":\"ip-src|port\",\"value\":\"|\",\"timestamp\":\"1e400\",\"to_ids\":\"maybe\",\"deleted\":2}]}}",
        "{\"response\":{\"Attribute\":[{\"id\":1,\"event_id\":1,\"type\":\"ip-dst\",\"value\":\"0.0.0.0/0\",\"timestamp\":1,\"uuid\":\"\",\"Tag\":\"x\"}]}}",
        "{\"status\":\"error\",\"error\":\"-5\"}",
        "{\"status\":\"success\",\"results\":5}",
        "{\"status\":null,\"http_status\":\"500\",\"error\":[1]}",
        "[{\"status\":\"error\",\"error\":-99999999999999999999999}]",
        "[1,2,3]",
        "{\"results\":[{\"name\":null,\"member\":7}]}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    bodies.push(format!("{{\"response\":{{\"Attribute\":{}}}}}", "[".repeat(50_000)).into_bytes());
    bodies.push(vec![0xff; 1000]);
    bodies
}

#[test]
fn misp_search_bodies_never_panic() {
    for body in hostile_bodies() {
        let _ = fortimisp_core::misp::client::decode_search_body(&body);
    }
}

#[test]
fn fortios_envelopes_never_panic() {
    for body in hostile_bodies() {
        for status in [200, 401, 403, 404, 424, 429, 500, 503, 0, 999] {
            let _ = fortimisp_core::fortigate::classify_response(status, &body);
        }
    }
}
