//! Any text as `config.toml`: parsing and validation never panic, and every error is one line that names a key.
//! File paths the input names (`api_key_file`, `ca_file`) are dropped before validation: the fuzzer must not read
//! the machine's files (nor `/dev/zero`).
#![no_main]

use fortimisp_core::config::RawConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut raw = match RawConfig::parse(text) {
        Ok(raw) => raw,
        Err(error) => {
            let line = error.to_string();
            assert!(!line.contains('\n'), "a parse error spans lines: {line:?}");
            assert!(!error.key().is_empty());
            return;
        }
    };
    raw.misp.api_key_file = None;
    raw.misp.ca_file = None;
    raw.fortigate.api_key_file = None;
    raw.fortigate.ca_file = None;
    if let Err(error) = raw.validate(&|_| None) {
        let line = error.to_string();
        assert!(!line.contains('\n'), "a validation error spans lines: {line:?}");
        assert!(line.starts_with(error.key()), "the error does not start with its key: {line:?}");
    }
});
