//! Any bytes as a MISP `/attributes/restSearch` answer body, decoded as the client decodes a sync page: no panic,
//! and the counts add up (every attribute is an indicator or counted as skipped).
#![no_main]

use fortimisp_core::misp::client::decode_search_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = decode_search_body(data) {
        assert_eq!(page.indicators.len() + page.skipped, page.returned, "attributes lost in decoding");
    }
});
