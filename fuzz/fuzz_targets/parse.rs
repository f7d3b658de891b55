//! Any bytes through `syslog::parse` and `describe_line`: no panic, and the description is always valid JSON
//! (checked cheaply: it starts with `{"line":` and ends with `}`).
#![no_main]

use fortimisp_core::syslog::{describe_line, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = parse(data) {
        let _ = (record.srcip(), record.dstip(), record.srcport(), record.policyid(), record.action());
        let _ = (record.log_type(), record.subtype(), record.srcintf(), record.duplicate_keys());
        for (key, value) in record.fields() {
            assert_eq!(record.get(key), Some(value));
        }
    }
    let line = describe_line(7, data);
    assert!(line.starts_with("{\"line\":7,") && line.ends_with('}'));
});
