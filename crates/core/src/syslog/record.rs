//! [`LogRecord`]: one parsed FortiGate log message, borrowing from the input buffer.
//!
//! A record is a `Vec` of 16-byte pairs of spans into the message, in line order (duplicates kept, so parsing
//! never looks back), plus a small fixed table that remembers, for the keys the daemon reads on every line (srcip,
//! policyid, action, type, subtype, srcintf, ...), where their first occurrence sits. Those accessors are O(1); any
//! other key is a linear [`LogRecord::get`], fine for the ~50 keys of a FortiGate line.
//!
//! Design decision: spans, not a `Vec<(Cow, Cow)>`. A text is either a span of the message (`&'a str`, no copy) or
//! an index into a side table of `Cow<'a, str>` that holds the few texts that had to be unescaped (allocated), the
//! CEF names mapped to FortiGate's (`&'static str`), and lossy UTF-8 repairs. A 48-byte `(Cow, Cow)` per pair was
//! measured at half the throughput (store-forwarding stalls moving it into the vector).
//!
//! Duplicate keys: the first occurrence wins everywhere (`get`, the typed accessors, [`LogRecord::fields`]); the rest
//! are counted by [`LogRecord::duplicate_keys`] on demand.
//!
//! FortiOS 4 names resolve through the typed accessors: `src`→srcip, `dst`→dstip, `src_port`→srcport,
//! `dst_port`→dstport, `log_id`→logid, `device_id`→devid, `src_int`→srcintf, `dst_int`→dstintf, and `status`→action
//! but only on a legacy line (one with `log_id`/`device_id` and no `logid`), because FortiOS 5+ event logs carry
//! both `action=login` and `status=failed`. [`LogRecord::get`] never aliases: it returns what the line says.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

/// The wire format of a message, as `integration parse` prints it.
///
/// The body decides first (csv, cef, json); a `key=value` body is named after its syslog header: `rfc3164`
/// (a BSD or relay timestamp header), `rfc5424`, or `default` (nothing or only `<PRI>` before the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Default,
    Rfc3164,
    Rfc5424,
    Csv,
    Cef,
    Json,
}

impl Format {
    /// The contract's name: `default`, `rfc3164`, `rfc5424`, `csv`, `cef` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Default => "default",
            Format::Rfc3164 => "rfc3164",
            Format::Rfc5424 => "rfc5424",
            Format::Csv => "csv",
            Format::Cef => "cef",
            Format::Json => "json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded `<PRI>`: `facility * 8 + severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pri {
    /// 0..=23 (16..=23 are local0..local7; FortiGate's default is local7 = 23).
    pub facility: u8,
    /// 0 (emergency) ..= 7 (debug).
    pub severity: u8,
}

impl Pri {
    /// Splits a PRI value; `None` above 191.
    pub fn from_value(value: u8) -> Option<Pri> {
        (value <= 191).then_some(Pri { facility: value / 8, severity: value % 8 })
    }

    /// The PRI number again (`facility * 8 + severity`).
    pub fn value(self) -> u8 {
        self.facility * 8 + self.severity
    }

    /// The RFC 5424 severity keyword: `emerg`, `alert`, `crit`, `err`, `warning`, `notice`, `info`, `debug`.
    pub fn severity_name(self) -> &'static str {
        const NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];
        NAMES[usize::from(self.severity & 7)]
    }
}

/// The syslog header in front of the body, if any. Fields are as sent (`None` for RFC 5424's `-`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Header<'a> {
    /// Nothing, or only `<PRI>`, before the body (FortiOS "default", "csv" and "cef" formats).
    #[default]
    None,
    /// `Mmm dd hh:mm:ss [host] `, wazuh's `YYYY Mmm dd hh:mm:ss host->ip `, or a relay's
    /// `YYYY-MM-DDThh:mm:ss[.frac]TZ host `.
    Rfc3164 { timestamp: Cow<'a, str>, hostname: Option<Cow<'a, str>> },
    /// `VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA` (boxed: keeps the record small).
    Rfc5424(Box<Rfc5424Header<'a>>),
}

/// The fields of an RFC 5424 header, as sent; `None` for the NILVALUE `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc5424Header<'a> {
    pub version: u16,
    pub timestamp: Option<Cow<'a, str>>,
    pub hostname: Option<Cow<'a, str>>,
    pub app_name: Option<Cow<'a, str>>,
    pub procid: Option<Cow<'a, str>>,
    pub msgid: Option<Cow<'a, str>>,
    /// The raw structured data (`[id k="v"]...`), not interpreted.
    pub structured_data: Option<Cow<'a, str>>,
}

/// The CEF header fields (`CEF:Version|Vendor|Product|DeviceVersion|SignatureID|Name|Severity|`), unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CefHeader<'a> {
    pub version: Cow<'a, str>,
    pub vendor: Cow<'a, str>,
    pub product: Cow<'a, str>,
    pub device_version: Cow<'a, str>,
    pub signature_id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub severity: Cow<'a, str>,
}

/// A text of the record: `len` high bit clear = `message[start..start + len]`; set = `owned[start]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ref {
    start: u32,
    len: u32,
}

const OWNED: u32 = 1 << 31;

/// One `key=value` pair as two texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    key: Ref,
    value: Ref,
}

/// Largest message a record can index (spans are 31-bit); far above any `max_message_bytes`.
pub(crate) const MAX_MESSAGE: usize = (OWNED - 1) as usize;

/// Slots of the keys read on the hot path, by first occurrence. `u16::MAX` = absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Hot {
    SrcIp,
    DstIp,
    SrcPort,
    DstPort,
    Proto,
    PolicyId,
    Action,
    Type,
    Subtype,
    DevName,
    DevId,
    Vd,
    SrcIntf,
    DstIntf,
    LogId,
    // FortiOS 4 spellings.
    Src,
    Dst,
    SrcPortV4,
    DstPortV4,
    Status,
    LogIdV4,
    DeviceId,
    SrcInt,
    DstInt,
}

pub(crate) const HOT_COUNT: usize = Hot::DstInt as usize + 1;
const ABSENT: u16 = u16::MAX;

/// Typical number of pairs on a FortiGate line; the pair vector starts this large so it rarely regrows.
const TYPICAL_FIELDS: usize = 48;

/// What a key means to the parser: a hot slot, a key that only FortiGate uses (proof that a `key=value` body is a
/// FortiGate log), or nothing special.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyClass {
    Hot(Hot),
    Marker,
    Other,
}

/// Classifies a key. Called once per pair: dispatch on length first so most keys cost one or two compares.
#[inline]
pub(crate) fn classify(key: &[u8]) -> KeyClass {
    use Hot::*;
    use KeyClass::{Hot as H, Marker, Other};
    match key.len() {
        2 => match key {
            b"vd" => H(Vd),
            b"tz" => Marker,
            _ => Other,
        },
        3 => match key {
            b"src" => H(Src),
            b"dst" => H(Dst),
            _ => Other,
        },
        4 => match key {
            b"type" => H(Type),
            b"date" | b"time" => Marker,
            _ => Other,
        },
        5 => match key {
            b"srcip" => H(SrcIp),
            b"dstip" => H(DstIp),
            b"proto" => H(Proto),
            b"devid" => H(DevId),
            b"logid" => H(LogId),
            b"itime" => Marker,
            _ => Other,
        },
        6 => match key {
            b"action" => H(Action),
            b"status" => H(Status),
            b"log_id" => H(LogIdV4),
            b"logver" => Marker,
            _ => Other,
        },
        7 => match key {
            b"srcport" => H(SrcPort),
            b"dstport" => H(DstPort),
            b"subtype" => H(Subtype),
            b"devname" => H(DevName),
            b"srcintf" => H(SrcIntf),
            b"dstintf" => H(DstIntf),
            b"src_int" => H(SrcInt),
            b"dst_int" => H(DstInt),
            b"logdesc" => Marker,
            _ => Other,
        },
        8 => match key {
            b"policyid" => H(PolicyId),
            b"src_port" => H(SrcPortV4),
            b"dst_port" => H(DstPortV4),
            _ => Other,
        },
        9 => match key {
            b"device_id" => H(DeviceId),
            b"eventtime" | b"sessionid" => Marker,
            _ => Other,
        },
        _ => Other,
    }
}

/// One parsed FortiGate log message. Borrows from the message bytes (`'a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord<'a> {
    pub(crate) bytes: &'a [u8],
    /// The message as text, `None` if it is not valid UTF-8 (then every text is a lossy copy in `owned`).
    pub(crate) utf8: Option<&'a str>,
    pub(crate) format: Format,
    pub(crate) pri: Option<Pri>,
    pub(crate) header: Header<'a>,
    pub(crate) cef: Option<Box<CefHeader<'a>>>,
    pairs: Vec<Pair>,
    owned: Vec<Cow<'a, str>>,
    pub(crate) hot: [u16; HOT_COUNT],
    pub(crate) marker: bool,
    pub(crate) unterminated: bool,
    pub(crate) skipped: u32,
}

impl<'a> LogRecord<'a> {
    /// `bytes` must be at most [`MAX_MESSAGE`] long (checked by `parse`).
    pub(crate) fn new(bytes: &'a [u8], utf8: Option<&'a str>, pri: Option<Pri>, header: Header<'a>) -> Self {
        LogRecord {
            bytes,
            utf8,
            format: Format::Default,
            pri,
            header,
            cef: None,
            pairs: Vec::with_capacity(TYPICAL_FIELDS),
            owned: Vec::new(),
            hot: [ABSENT; HOT_COUNT],
            marker: false,
            unterminated: false,
            skipped: 0,
        }
    }

    /// The text `bytes[start..end]`: a span when the message is UTF-8 (the common case), else a lossy copy.
    #[inline]
    pub(crate) fn span(&mut self, start: usize, end: usize) -> Ref {
        if let Some(s) = self.utf8 {
            if start <= end && end <= s.len() && s.is_char_boundary(start) && s.is_char_boundary(end) {
                // Lossless: end <= len <= MAX_MESSAGE < 2^31.
                return Ref { start: start as u32, len: (end - start) as u32 };
            }
        }
        let text = match self.bytes.get(start..end) {
            Some(b) => String::from_utf8_lossy(b),
            None => Cow::Borrowed(""),
        };
        self.own(text)
    }

    /// A text that is not a span of the message (unescaped, mapped or repaired).
    pub(crate) fn own(&mut self, text: Cow<'a, str>) -> Ref {
        let index = self.owned.len();
        self.owned.push(text);
        Ref { start: u32::try_from(index).unwrap_or(u32::MAX), len: OWNED }
    }

    /// Unescaped bytes as an owned text (lossy if they are not UTF-8).
    pub(crate) fn own_bytes(&mut self, bytes: Vec<u8>) -> Ref {
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        self.own(Cow::Owned(text))
    }

    /// Splits a span at the first `sep` byte; `None` for owned texts or when `sep` is absent.
    pub(crate) fn split_span(&self, r: Ref, sep: u8) -> Option<(Ref, Ref)> {
        if r.len & OWNED != 0 {
            return None;
        }
        let start = r.start as usize;
        let off = self.bytes.get(start..start + r.len as usize)?.iter().position(|&c| c == sep)?;
        // Lossless: off < r.len < 2^31.
        let off = off as u32;
        Some((Ref { start: r.start, len: off }, Ref { start: r.start + off + 1, len: r.len - off - 1 }))
    }

    /// The text a [`Ref`] stands for.
    pub(crate) fn text_of(&self, r: Ref) -> &str {
        self.text(r)
    }

    #[inline]
    fn text(&self, r: Ref) -> &str {
        if r.len & OWNED != 0 {
            return self.owned.get(r.start as usize).map_or("", |c| c.as_ref());
        }
        let (start, end) = (r.start as usize, r.start as usize + r.len as usize);
        self.utf8.and_then(|s| s.get(start..end)).unwrap_or("")
    }

    /// Appends a pair; `class` is `classify(key)` (computed by the caller from the raw key bytes).
    #[inline]
    pub(crate) fn push(&mut self, class: KeyClass, key: Ref, value: Ref) {
        match class {
            KeyClass::Hot(slot) => {
                let index = self.pairs.len();
                let cell = &mut self.hot[slot as usize];
                if *cell == ABSENT && index < usize::from(ABSENT) {
                    // Lossless: index < u16::MAX was just checked.
                    *cell = index as u16;
                }
            }
            KeyClass::Marker => self.marker = true,
            KeyClass::Other => {}
        }
        self.pairs.push(Pair { key, value });
    }

    /// The wire format (see [`Format`]).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The decoded `<PRI>`, if the message had one.
    pub fn pri(&self) -> Option<Pri> {
        self.pri
    }

    /// The syslog header in front of the body.
    pub fn header(&self) -> &Header<'a> {
        &self.header
    }

    /// The CEF header, for CEF bodies.
    pub fn cef_header(&self) -> Option<&CefHeader<'a>> {
        self.cef.as_deref()
    }

    /// Number of pairs, duplicates included.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True if the body carried no pair at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Every `(key, value)` in line order, duplicates included (see [`LogRecord::fields`] for first-wins).
    pub fn raw_fields(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|p| (self.text(p.key), self.text(p.value)))
    }

    /// `(key, value)` in line order, each key once (its first occurrence). Keeps a set of the keys seen (linear in
    /// the number of pairs, allocates): for output and tests, not for the per-line hot path.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut seen = HashSet::with_capacity(self.pairs.len());
        self.pairs.iter().filter_map(move |p| {
            let key = self.text(p.key);
            seen.insert(key).then(|| (key, self.text(p.value)))
        })
    }

    /// How many pairs repeat a key seen earlier on the line (those values are ignored: the first one wins).
    pub fn duplicate_keys(&self) -> usize {
        let mut keys: Vec<&str> = self.pairs.iter().map(|p| self.text(p.key)).collect();
        keys.sort_unstable();
        keys.windows(2).filter(|w| w[0] == w[1]).count()
    }

    /// True if the message was not valid UTF-8: invalid bytes were replaced by U+FFFD in the texts that held them.
    pub fn is_lossy(&self) -> bool {
        self.utf8.is_none()
    }

    /// True if the last quoted value had no closing quote (the value runs to the end of the message).
    pub fn has_unterminated_quote(&self) -> bool {
        self.unterminated
    }

    /// Tokens that were not `key=value` pairs and were skipped (e.g. the `13:03` in FortiOS 4's `time=10: 13:03`).
    pub fn skipped_tokens(&self) -> u32 {
        self.skipped
    }

    /// The value of `key` as the line spells it (first occurrence, no aliasing), CEF keys already mapped.
    pub fn get(&self, key: &str) -> Option<&str> {
        if let KeyClass::Hot(slot) = classify(key.as_bytes()) {
            return self.slot(slot);
        }
        self.pairs.iter().find(|p| self.text(p.key) == key).map(|p| self.text(p.value))
    }

    #[inline]
    fn slot(&self, slot: Hot) -> Option<&str> {
        let index = self.hot[slot as usize];
        if index == ABSENT {
            return None;
        }
        self.pairs.get(usize::from(index)).map(|p| self.text(p.value))
    }

    #[inline]
    fn slot_or(&self, slot: Hot, alias: Hot) -> Option<&str> {
        self.slot(slot).or_else(|| self.slot(alias))
    }

    /// A FortiOS 4 line: `log_id`/`device_id` spelling and no `logid`.
    pub fn is_legacy(&self) -> bool {
        self.hot[Hot::LogId as usize] == ABSENT
            && (self.hot[Hot::LogIdV4 as usize] != ABSENT || self.hot[Hot::DeviceId as usize] != ABSENT)
    }

    /// `srcip` (or FortiOS 4 `src`) as written; may be a hostname in CEF (`src=example.com`).
    pub fn srcip_str(&self) -> Option<&str> {
        self.slot_or(Hot::SrcIp, Hot::Src)
    }

    /// `dstip` (or `dst`) as written.
    pub fn dstip_str(&self) -> Option<&str> {
        self.slot_or(Hot::DstIp, Hot::Dst)
    }

    /// `srcip` as an address (v4 or v6); `None` if absent or not an address (`N/A`, a hostname).
    pub fn srcip(&self) -> Option<IpAddr> {
        self.srcip_str().and_then(|s| s.parse().ok())
    }

    /// `dstip` as an address (v4 or v6).
    pub fn dstip(&self) -> Option<IpAddr> {
        self.dstip_str().and_then(|s| s.parse().ok())
    }

    /// `srcport` (or `src_port`).
    pub fn srcport(&self) -> Option<u16> {
        self.slot_or(Hot::SrcPort, Hot::SrcPortV4).and_then(|s| s.parse().ok())
    }

    /// `dstport` (or `dst_port`).
    pub fn dstport(&self) -> Option<u16> {
        self.slot_or(Hot::DstPort, Hot::DstPortV4).and_then(|s| s.parse().ok())
    }

    /// `proto`, the IP protocol number.
    pub fn proto(&self) -> Option<u8> {
        self.slot(Hot::Proto).and_then(|s| s.parse().ok())
    }

    /// `policyid`.
    pub fn policyid(&self) -> Option<u32> {
        self.slot(Hot::PolicyId).and_then(|s| s.parse().ok())
    }

    /// `action` (on a FortiOS 4 line: `status`).
    pub fn action(&self) -> Option<&str> {
        self.slot(Hot::Action).or_else(|| if self.is_legacy() { self.slot(Hot::Status) } else { None })
    }

    /// `type` (traffic, event, utm, anomaly, ...).
    pub fn log_type(&self) -> Option<&str> {
        self.slot(Hot::Type)
    }

    /// `subtype` (forward, local, system, ...).
    pub fn subtype(&self) -> Option<&str> {
        self.slot(Hot::Subtype)
    }

    /// `devname`.
    pub fn devname(&self) -> Option<&str> {
        self.slot(Hot::DevName)
    }

    /// `devid` (or `device_id`), the FortiGate serial number.
    pub fn devid(&self) -> Option<&str> {
        self.slot_or(Hot::DevId, Hot::DeviceId)
    }

    /// `vd`, the VDOM.
    pub fn vd(&self) -> Option<&str> {
        self.slot(Hot::Vd)
    }

    /// `srcintf` (or `src_int`).
    pub fn srcintf(&self) -> Option<&str> {
        self.slot_or(Hot::SrcIntf, Hot::SrcInt)
    }

    /// `dstintf` (or `dst_int`).
    pub fn dstintf(&self) -> Option<&str> {
        self.slot_or(Hot::DstIntf, Hot::DstInt)
    }

    /// `logid` (or `log_id`).
    pub fn logid(&self) -> Option<&str> {
        self.slot_or(Hot::LogId, Hot::LogIdV4)
    }
}
