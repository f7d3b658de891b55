//! Long-run robustness of the syslog parser on the stable toolchain (the cargo-fuzz targets need nightly).
//!
//! Ignored by default. Run it with
//! `cargo test --release -p fortimisp-core --test parser_longrun -- --ignored --nocapture`
//! (`FORTIMISP_LONGRUN_INPUTS` sets how many inputs, default 10 000 000; `FORTIMISP_LONGRUN_SEED` the seed).
//!
//! Inputs are mutations of the shared corpus (`tests/data/corpus/*.log`: every format FortiOS sends) mixed with
//! synthetic lines and random bytes: byte flips, insertions of syntax characters (`"`, `=`, `<`, `>`, `|`, `\`,
//! `{`, `}`, NUL, invalid UTF-8), truncations, splices of two lines, duplicated keys, huge values. For every input:
//! - [`parse`] returns (no panic), and on success every typed accessor returns;
//! - [`describe_line`] (what `integration parse` prints) is one line of valid JSON with the contract's keys;
//! - [`datagram`] and [`FrameDecoder`] (fed in random chunks) never panic, never return more bytes than they got,
//!   and every frame fits `max_message_bytes`.
//!
//! A short version of the same loop (2 000 inputs) runs by default so the generator itself stays tested.

use std::time::Instant;

use bytes::BytesMut;
use fortimisp_core::syslog::{datagram, describe_line, parse, FrameDecoder};

/// xorshift64*: fast, deterministic, good enough for mutation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn corpus() -> Vec<Vec<u8>> {
    let mut lines = fortimisp_testkit::corpus::lines();
    // Synthetic lines cover what the corpus may lack.
    lines.extend(
        [
            &br#"<189>date=2024-05-01 time=10:00:00 devname="fw1" devid="FGT60E" logid="0000000013" type="traffic" subtype="forward" level="notice" vd="root" srcip=198.51.100.7 srcport=51234 dstip=203.0.113.5 dstport=443 proto=6 action="accept" policyid=7"#[..],
            br#"<189>1 2024-05-01T10:00:00Z fw1 - - - - date=2024-05-01 srcip=2001:db8::7 dstip=2001:db8::1 policyid=7 action=deny"#,
            br#"<134>May  1 10:00:00 fw1 CEF:0|Fortinet|Fortigate|v7.4.4|00013|traffic:forward accept|3|src=198.51.100.7 dst=203.0.113.5 spt=1 dpt=2 act=accept FTNTFGTpolicyid=7"#,
            br#"<189>{"date":"2024-05-01","srcip":"198.51.100.7","policyid":7,"action":"accept","devname":"fw1"}"#,
            br#"<189>"date=2024-05-01","time=10:00:00","devname=fw1","srcip=198.51.100.7","policyid=7""#,
            b"<189>date=2024-05-01 devname=fw msg=\"a \\\"quoted\\\" value\" srcip=198.51.100.7",
        ]
        .iter()
        .map(|l| l.to_vec()),
    );
    lines
}

const SPECIAL: &[u8] = b"\"'=<>|\\{}[],: \t\r\n\0\xff\xfe\xc3\xe2\x80-0123456789.";

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    match rng.below(20) {
        // Pure random bytes.
        0 => {
            let n = rng.below(300);
            out.extend((0..n).map(|_| rng.next() as u8));
        }
        // Random bytes from the syntax alphabet after a PRI.
        1 => {
            out.extend_from_slice(b"<189>");
            let n = rng.below(200);
            out.extend((0..n).map(|_| SPECIAL[rng.below(SPECIAL.len())]));
        }
        // Splice two corpus lines.
        2 => {
            let a = &corpus[rng.below(corpus.len())];
            let b = &corpus[rng.below(corpus.len())];
            out.extend_from_slice(&a[..rng.below(a.len() + 1)]);
            out.extend_from_slice(&b[rng.below(b.len() + 1)..]);
        }
        // A corpus line with a huge value or many keys.
        3 => {
            out.extend_from_slice(&corpus[rng.below(corpus.len())]);
            // Huge lines are rare: each costs as much as a thousand ordinary ones. (`describe_line` lists keys
            // first-wins, quadratic in their number, so lines with thousands of keys are left to the e2e test.)
            if rng.below(10) == 0 {
                out.extend_from_slice(b" msg=\"");
                out.resize(out.len() + rng.below(70_000), b'A');
            } else {
                for i in 0..rng.below(300) {
                    out.extend_from_slice(format!(" k{i}=v").as_bytes());
                }
            }
        }
        // A corpus line with a few byte-level mutations.
        _ => {
            out.extend_from_slice(&corpus[rng.below(corpus.len())]);
            for _ in 0..1 + rng.below(6) {
                let pos = rng.below(out.len() + 1);
                match rng.below(6) {
                    0 if pos < out.len() => out[pos] = SPECIAL[rng.below(SPECIAL.len())],
                    1 if pos < out.len() => out[pos] = rng.next() as u8,
                    2 => out.insert(pos, SPECIAL[rng.below(SPECIAL.len())]),
                    3 => out.truncate(pos),
                    4 if pos < out.len() => {
                        let end = (pos + rng.below(40)).min(out.len());
                        let chunk = out[pos..end].to_vec();
                        out.splice(pos..pos, chunk);
                    }
                    _ if pos < out.len() => {
                        let end = (pos + rng.below(40)).min(out.len());
                        out.drain(pos..end);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Runs every check on one input. Panics (with the input) on a broken property.
fn check(input: &[u8], rng: &mut Rng, max: usize) {
    if let Ok(record) = parse(input) {
        let _ = (record.format(), record.pri(), record.header(), record.cef_header(), record.len());
        let _ = (record.srcip(), record.dstip(), record.srcport(), record.dstport(), record.proto());
        let _ = (record.policyid(), record.action(), record.log_type(), record.subtype(), record.devname());
        let _ = (record.devid(), record.vd(), record.srcintf(), record.dstintf(), record.logid());
        let _ = (record.duplicate_keys(), record.is_lossy(), record.has_unterminated_quote(), record.get("msg"));
        for field in record.fields() {
            let _ = field;
        }
    }
    let described = describe_line(1, input);
    assert!(!described.contains('\n'), "describe_line printed more than one line for {input:?}");
    let value: serde_json::Value = serde_json::from_str(&described)
        .unwrap_or_else(|e| panic!("describe_line is not JSON ({e}): {described} for {input:?}"));
    assert!(value.get("line").is_some() && (value.get("fields").is_some() || value.get("error").is_some()));

    match datagram(input, max) {
        Ok(message) => assert!(message.len() <= input.len() && message.len() <= max),
        Err(_) => assert!(input.len() > max, "datagram refused a message within max_message_bytes"),
    }
    // Stream framing, fed in random chunks.
    let mut decoder = FrameDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut produced = 0;
    while fed < input.len() {
        let take = (1 + rng.below(input.len() - fed)).min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + take]);
        fed += take;
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            assert!(frame.len() <= max, "a frame longer than max_message_bytes");
            produced += frame.len();
        }
    }
    if let Ok(Some(frame)) = decoder.decode_eof(&mut buf) {
        produced += frame.len();
    }
    assert!(produced <= input.len(), "frames hold more bytes than were fed");
}

fn run(inputs: u64, seed: u64) {
    let corpus = corpus();
    assert!(corpus.len() > 6, "the corpus was not found");
    let mut rng = Rng(seed | 1);
    let mut input = Vec::with_capacity(80_000);
    let started = Instant::now();
    let mut bytes = 0u64;
    for i in 0..inputs {
        mutate(&mut rng, &corpus, &mut input);
        bytes += input.len() as u64;
        let max = if i % 7 == 0 { 480 } else { 65_535 };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input, &mut rng, max)));
        if outcome.is_err() {
            panic!("input #{i} (seed {seed}) broke a property: {:?}", String::from_utf8_lossy(&input));
        }
    }
    eprintln!(
        "parser long run: {inputs} inputs ({:.1} MB) from {} corpus lines, seed {seed}, 0 panics, {:.1?}",
        bytes as f64 / 1e6,
        corpus.len(),
        started.elapsed()
    );
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn parser_short_run() {
    run(2_000, 0x5eed);
}

#[test]
#[ignore = "long run: cargo test --release -p fortimisp-core --test parser_longrun -- --ignored"]
fn parser_long_run() {
    run(env_u64("FORTIMISP_LONGRUN_INPUTS", 10_000_000), env_u64("FORTIMISP_LONGRUN_SEED", 0xF0F1_5EED));
}
