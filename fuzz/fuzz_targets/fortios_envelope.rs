//! Any HTTP status and body as a FortiOS REST answer, read as the client reads every answer (error code first,
//! then the typed readers): no panic. The first two bytes pick the status.
#![no_main]

use fortimisp_core::fortigate::classify_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = u16::from_be_bytes(*status) % 600;
    let _ = classify_response(status, body);
});
