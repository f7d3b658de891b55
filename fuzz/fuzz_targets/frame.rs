//! Any bytes through the TCP `FrameDecoder`, fed in two reads split at a fuzzer-chosen point: no panic, every
//! message within the limit, and the decoder never holds more than the limit plus a length prefix.
#![no_main]

use bytes::BytesMut;
use fortimisp_core::syslog::FrameDecoder;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let mut decoder = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(msg)) => assert!(msg.len() <= MAX),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        assert!(buf.len() <= MAX + 21, "decoder kept {} bytes", buf.len());
    }
    if let Ok(Some(msg)) = decoder.decode_eof(&mut buf) {
        assert!(msg.len() <= MAX);
    }
});
