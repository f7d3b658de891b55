//! Fleets for tests and the lab: N emulated FortiGates next to one MISP emulator, each FortiGate a named target
//! with the identity of the device whose log lines it acts on.
//!
//! - [`Device`]: a FortiGate's identity as its log lines carry it (`devid`, `devname`, `vd`), and the one writer
//!   of a forward-traffic line ([`Device::traffic_line`]) that the end-to-end tests (`tests/lib.rs`), the lab and
//!   these fleets share. [`Device::stamp`] gives an existing line (the lab's sample) another device.
//! - [`Fleet`]: the emulators, all over HTTPS with certificates of one throw-away CA (written once as
//!   [`FLEET_CA`]), each accepting its own token, so a key sent to the wrong target is refused.
//!   [`Fleet::endpoints`] is what [`ConfigDoc::endpoints`](crate::harness::ConfigDoc::endpoints) needs (MISP, and
//!   the first target in the single `[fortigate]` table); [`ConfigDoc::fleet`](crate::harness::ConfigDoc::fleet)
//!   then turns that table into the `[[fortigate]]` array, one table per target.
//!
//! Design decision: a target is a plain [`FortiGateEmulator`]; nothing here knows fleets beyond names, devices and
//! URLs, so the emulators' hooks (faults, seeding, request logs) work per target as they do for one FortiGate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::fortigate::{EmulatorConfig, FortiGateEmulator};
use crate::harness::{Endpoints, MISP_CA};
use crate::misp::{MispEmulator, Seed};
use crate::tls::{server_config, TestCa};

/// File name, in the work directory, of the CA certificate every emulated FortiGate of a [`Fleet`] is issued by
/// (each target's `ca_file`).
pub const FLEET_CA: &str = "fleet-ca.pem";

/// A FortiGate as its log lines name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `devid`: the serial number.
    pub devid: String,
    /// `devname`: the host name.
    pub devname: String,
    /// `vd`: the VDOM the line comes from.
    pub vd: String,
}

impl Device {
    /// The device of the corpus line [`Device::traffic_line`] is made from (elastic-beats.default.log line 5):
    /// `devname="firewall3" devid="oldfwid" vd="root"`. What a single-FortiGate test sends.
    pub fn corpus() -> Device {
        Device { devid: "oldfwid".into(), devname: "firewall3".into(), vd: "root".into() }
    }

    /// The `n`th device of a fleet (from 1): `FG100FTK2000000N` (zero-padded to 16 characters), `FGT-N`, `root`.
    pub fn numbered(n: usize) -> Device {
        Device { devid: format!("FG100FTK2{n:07}"), devname: format!("FGT-{n}"), vd: "root".into() }
    }

    /// A real FortiGate forward-traffic log line (from the corpus: elastic-beats.default.log line 5) from this
    /// device, with the addresses, policy id and action replaced.
    pub fn traffic_line(&self, src: IpAddr, dst: IpAddr, policyid: u32, action: &str) -> String {
        let Device { devid, devname, vd } = self;
        format!(
            r#"<189>date=2020-04-23 time=12:14:28 devname="{devname}" devid="{devid}" logid="0000000013" type="traffic" subtype="forward" level="notice" vd="{vd}" eventtime=1587230069291463928 tz="-0500" srcip={src} srcport=56603 srcintf="port1" srcintfrole="lan" dstip={dst} dstport=442 dstintf="wan1" dstintfrole="wan" sessionid=2345 proto=6 action="{action}" policyid={policyid} policytype="policy" service="HTTPS" dstcountry="Russian Federation" srccountry="United Kingdom" trandisp="snat" transip=175.16.199.1 transport=56603 duration=1 sentbyte=1234 rcvdbyte=5678 sentpkt=5 rcvdpkt=4 appcat="unscanned""#
        )
    }

    /// `line` (FortiOS `key=value` format) as if this device had logged it: its `devid`, `devname` and `vd`
    /// values replaced, or added after the `<PRI>` header (or at the start) where the line has none.
    pub fn stamp(&self, line: &str) -> String {
        let mut out = line.to_string();
        for (key, value) in [("vd", &self.vd), ("devname", &self.devname), ("devid", &self.devid)] {
            out = set_field(&out, key, value);
        }
        out
    }
}

/// `line` with `key`'s value set to `value` (quoted); the pair is added after the `<PRI>` header if missing.
fn set_field(line: &str, key: &str, value: &str) -> String {
    let pair = format!("{key}=\"{value}\"");
    // A key starts the line (after the header) or follows a space; `srcvd=` or `xdevid=` are other keys.
    let mut search = 0;
    while let Some(found) = line[search..].find(&format!("{key}=")) {
        let start = search + found;
        let boundary = start == 0 || line[..start].ends_with(' ') || line[..start].ends_with('>');
        if boundary {
            let rest = &line[start + key.len() + 1..];
            let len = if let Some(quoted) = rest.strip_prefix('"') {
                quoted.find('"').map_or(rest.len(), |end| end + 2)
            } else {
                rest.find(' ').unwrap_or(rest.len())
            };
            let end = start + key.len() + 1 + len;
            return format!("{}{pair}{}", &line[..start], &line[end..]);
        }
        search = start + key.len();
    }
    match line.strip_prefix('<').and_then(|l| l.find('>')) {
        Some(close) => format!("{} {pair} {}", &line[..close + 2], &line[close + 2..]).replace("  ", " "),
        None => format!("{pair} {line}"),
    }
}

/// How to start a [`Fleet`].
#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    /// The targets' names, in order; each gets [`Device::numbered`] by its position. Empty: `a`, `b`, `c` ...
    /// [`FleetOptions::size`] of them.
    pub names: Vec<String>,
    /// How many targets when `names` is empty.
    pub size: usize,
    /// Every emulator's setup; the token is made per target (`<token>-<name>`) so targets never share one.
    pub fortigate: EmulatorConfig,
    /// The key MISP accepts; `None`: the emulator's default.
    pub misp_key: Option<String>,
    /// Events, attributes and warninglists MISP holds at start.
    pub misp_seed: Option<Seed>,
}

impl FleetOptions {
    /// `n` targets named `a`, `b`, `c` ... (`t27`, `t28` ... beyond `z`).
    pub fn of(n: usize) -> FleetOptions {
        FleetOptions { size: n, ..FleetOptions::default() }
    }

    fn target_names(&self) -> Vec<String> {
        if !self.names.is_empty() {
            return self.names.clone();
        }
        (0..self.size)
            .map(|i| match u8::try_from(i).ok().filter(|i| *i < 26) {
                Some(i) => char::from(b'a' + i).to_string(),
                None => format!("t{}", i + 1),
            })
            .collect()
    }
}

/// One target of a [`Fleet`].
pub struct FleetTarget {
    /// `fortigate[i].name`.
    pub name: String,
    /// The device whose lines this target claims (`devices = [devid, devname]`).
    pub device: Device,
    pub fortigate: FortiGateEmulator,
}

/// N emulated FortiGates and one MISP, serving until dropped.
pub struct Fleet {
    pub targets: Vec<FleetTarget>,
    pub misp: MispEmulator,
    /// The CA every FortiGate's certificate comes from ([`FLEET_CA`] in the work directory).
    pub fortigate_ca: PathBuf,
    /// MISP's CA certificate ([`MISP_CA`] in the work directory).
    pub misp_ca: PathBuf,
}

impl Fleet {
    /// Starts the FortiGate emulators (HTTPS, one CA written to `dir` as [`FLEET_CA`]), then MISP (HTTPS, its CA
    /// written as [`MISP_CA`]), on ephemeral loopback ports.
    pub async fn start(opts: FleetOptions, dir: &Path) -> Result<Fleet> {
        let ca = TestCa::new();
        let fortigate_ca = dir.join(FLEET_CA);
        ca.write_ca_file(&fortigate_ca).with_context(|| format!("cannot write {}", fortigate_ca.display()))?;
        let tls = server_config(&ca.issue_server_cert());
        let mut targets = Vec::new();
        for (i, name) in opts.target_names().into_iter().enumerate() {
            let config = EmulatorConfig { token: format!("{}-{name}", opts.fortigate.token), ..opts.fortigate.clone() };
            let fortigate = FortiGateEmulator::start_tls(config, tls.clone())
                .await
                .with_context(|| format!("cannot start the FortiGate emulator of target {name}"))?;
            targets.push(FleetTarget { name, device: Device::numbered(i + 1), fortigate });
        }
        let mut builder = MispEmulator::builder().tls();
        if let Some(key) = opts.misp_key {
            builder = builder.key(key);
        }
        if let Some(seed) = opts.misp_seed {
            builder = builder.seed(seed);
        }
        let misp = builder.start().await.context("cannot start the MISP emulator")?;
        let misp_ca = dir.join(MISP_CA);
        let pem = misp.ca_pem().context("the MISP emulator serves HTTPS")?;
        std::fs::write(&misp_ca, pem).with_context(|| format!("cannot write {}", misp_ca.display()))?;
        Ok(Fleet { targets, misp, fortigate_ca, misp_ca })
    }

    /// The target named `name`.
    ///
    /// # Panics
    /// If there is none (a test names its own targets).
    pub fn target(&self, name: &str) -> &FleetTarget {
        self.targets.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target named {name}"))
    }

    /// MISP and the first target, for [`ConfigDoc::endpoints`](crate::harness::ConfigDoc::endpoints); write the
    /// whole fleet with [`ConfigDoc::fleet`](crate::harness::ConfigDoc::fleet) after it.
    ///
    /// # Panics
    /// If the fleet has no target.
    pub fn endpoints(&self) -> Endpoints<'_> {
        Endpoints {
            fortigate: &self.targets.first().expect("a fleet has at least one target").fortigate,
            fortigate_ca: Some(&self.fortigate_ca),
            misp: &self.misp,
            misp_ca: Some(&self.misp_ca),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::syslog;

    fn field(line: &str, key: &str) -> Option<String> {
        let record = syslog::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
        record.get(key).map(str::to_string)
    }

    #[test]
    fn numbered_devices_look_like_serials() {
        let d = Device::numbered(3);
        assert_eq!((d.devid.as_str(), d.devname.as_str(), d.vd.as_str()), ("FG100FTK20000003", "FGT-3", "root"));
        assert_eq!(Device::numbered(12).devid.len(), 16);
    }

    /// The line parses, and carries the device, addresses, policy and action it was given.
    #[test]
    fn a_traffic_line_names_its_device() {
        let device = Device { devid: "FG100FTK20000002".into(), devname: "FGT-2".into(), vd: "dmz".into() };
        let line = device.traffic_line("198.51.100.7".parse().unwrap(), "203.0.113.1".parse().unwrap(), 9, "deny");
        for (key, want) in [
            ("devid", "FG100FTK20000002"),
            ("devname", "FGT-2"),
            ("vd", "dmz"),
            ("srcip", "198.51.100.7"),
            ("dstip", "203.0.113.1"),
            ("policyid", "9"),
            ("action", "deny"),
        ] {
            assert_eq!(field(&line, key).as_deref(), Some(want), "{key} in {line}");
        }
    }

    /// Stamping replaces the three fields where a line has them, adds them where it does not, and leaves keys that
    /// merely end the same way (`srcvd`) alone.
    #[test]
    fn stamping_gives_a_line_another_device() {
        let device = Device::numbered(2);
        let with =
            Device::corpus().traffic_line("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap(), 7, "accept");
        let without = r#"<189>date=2019-05-15 time=18:03:41 logid="0000000013" type="traffic" srcvd="x" srcip=192.0.2.77 dstip=192.0.2.78 action="accept" policyid=7"#;
        let bare = r#"date=2019-05-15 time=18:03:41 devid=FGT60E devname=fw type="traffic" srcip=192.0.2.77 dstip=192.0.2.78 policyid=7"#;
        for line in [with.as_str(), without, bare] {
            let stamped = device.stamp(line);
            assert_eq!(field(&stamped, "devid").as_deref(), Some("FG100FTK20000002"), "{stamped}");
            assert_eq!(field(&stamped, "devname").as_deref(), Some("FGT-2"), "{stamped}");
            assert_eq!(field(&stamped, "vd").as_deref(), Some("root"), "{stamped}");
            assert_eq!(field(&stamped, "srcip"), field(line, "srcip"), "{stamped}");
            assert_eq!(stamped.matches("devid=").count(), 1, "{stamped}");
        }
        assert_eq!(field(&device.stamp(without), "srcvd").as_deref(), Some("x"));
    }

    #[tokio::test]
    async fn a_fleet_has_named_targets_with_their_own_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::start(FleetOptions::of(3), dir.path()).await.unwrap();
        let names: Vec<&str> = fleet.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(fleet.target("b").device, Device::numbered(2));
        let tokens: std::collections::BTreeSet<String> = fleet.targets.iter().map(|t| t.fortigate.token()).collect();
        assert_eq!(tokens.len(), 3, "one token per target");
        assert!(fleet.fortigate_ca.is_file() && fleet.misp_ca.is_file());
        assert!(fleet.targets.iter().all(|t| t.fortigate.url().starts_with("https://127.0.0.1:")));
    }
}
