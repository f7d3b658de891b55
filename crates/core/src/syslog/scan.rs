//! Byte search tuned for FortiGate lines: most keys and values are under 16 bytes, where a `memchr` call costs
//! more than it saves. These look 8 bytes at a time with plain integer arithmetic (SWAR) for the first
//! [`SWAR_BYTES`], then hand long values (messages, URLs) to `memchr`'s vector code.

use memchr::{memchr, memchr2};

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;
/// Beyond this many bytes a value is long: switch to `memchr`.
const SWAR_BYTES: usize = 32;

#[inline(always)]
fn splat(b: u8) -> u64 {
    LO * u64::from(b)
}

/// High bit set in each zero byte of `x`. The lowest set bit is exact (borrows only create false hits above it).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

#[inline(always)]
fn word(hay: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&hay[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Index of the first `a` at or after `from`, or `hay.len()`.
#[inline]
pub(crate) fn find1(hay: &[u8], from: usize, a: u8) -> usize {
    let sa = splat(a);
    let mut i = from;
    let limit = hay.len().min(from + SWAR_BYTES);
    while i + 8 <= limit {
        let m = zero_bytes(word(hay, i) ^ sa);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i >= hay.len() {
        return hay.len();
    }
    memchr(a, &hay[i..]).map_or(hay.len(), |off| i + off)
}

/// Index of the first `a` or `b` at or after `from`, or `hay.len()`.
#[inline]
pub(crate) fn find2(hay: &[u8], from: usize, a: u8, b: u8) -> usize {
    let (sa, sb) = (splat(a), splat(b));
    let mut i = from;
    let limit = hay.len().min(from + SWAR_BYTES);
    while i + 8 <= limit {
        let w = word(hay, i);
        let m = zero_bytes(w ^ sa) | zero_bytes(w ^ sb);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    if i >= hay.len() {
        return hay.len();
    }
    memchr2(a, b, &hay[i..]).map_or(hay.len(), |off| i + off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_naive_search() {
        let hay: Vec<u8> = (0..200u32).map(|i| b"ab= \"\\xyz\x80\xff"[(i * 7 % 11) as usize]).collect();
        for from in 0..hay.len() {
            for (a, b) in [(b'=', b' '), (b'"', b'\\'), (b'q', b'\xff'), (b'\x80', b'z')] {
                let naive1 = hay[from..].iter().position(|&c| c == a).map_or(hay.len(), |p| from + p);
                let naive2 = hay[from..].iter().position(|&c| c == a || c == b).map_or(hay.len(), |p| from + p);
                assert_eq!(find1(&hay, from, a), naive1, "find1 {from} {a}");
                assert_eq!(find2(&hay, from, a, b), naive2, "find2 {from} {a} {b}");
            }
        }
    }
}
