//! `[fortigate]` and `[[fortigate]]`: the FortiGate targets fortimisp blocks on.
//!
//! A single `[fortigate]` table (the contract's first form) is one target named [`DEFAULT_TARGET`]; an array of
//! tables is a fleet, each table a target with its own `name`, URL, token, backend, groups and rate, and the
//! devices (`devid`/`devname`) and VDOMs (`vd`) whose log lines it acts on. Errors name the key as written:
//! `fortigate.url` for the single table, `fortigate[1].url` for the second target of an array.
//!
//! Secrets: the single table reads `$FORTIMISP_FORTIGATE_API_KEY`; each target of an array reads its own
//! `$FORTIMISP_FORTIGATE_<NAME>_API_KEY` (the name upper-cased, `-` as `_`), so one variable never feeds
//! several FortiGates.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{
    check_ca, check_object_name, d_10f, d_10s, d_600, default_backend, default_group, default_group6, default_prefix,
    default_vdom, parse_url, resolve_key, yes, Backend, Error, ENV_FORTIGATE_API_KEY,
};
use crate::secret::ApiKey;

/// The name of the target a single `[fortigate]` table describes.
pub const DEFAULT_TARGET: &str = "default";
/// Targets one config may name at most (the pipeline carries a target set as a fixed-size bit set).
pub const MAX_TARGETS: usize = crate::fleet::MAX_TARGETS;
/// Longest target name (it appears in metric labels, log fields and an environment variable's name).
pub const MAX_TARGET_NAME: usize = 32;

/// `[fortigate]` or `[[fortigate]]` as written.
#[derive(Debug)]
pub enum RawTargets {
    /// A single `[fortigate]` table: the target [`DEFAULT_TARGET`].
    One(Box<RawFortiGate>),
    /// `[[fortigate]]`: a fleet.
    Many(Vec<RawFortiGate>),
}

impl RawTargets {
    /// Every target as written, in order.
    pub fn tables(&self) -> Vec<&RawFortiGate> {
        match self {
            RawTargets::One(t) => vec![t],
            RawTargets::Many(ts) => ts.iter().collect(),
        }
    }
}

impl<'de> Deserialize<'de> for RawTargets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetsVisitor;
        impl<'de> Visitor<'de> for TargetsVisitor {
            type Value = RawTargets;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [fortigate] table or [[fortigate]] tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTargets, A::Error> {
                RawFortiGate::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| RawTargets::One(t.into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawTargets, A::Error> {
                Vec::<RawFortiGate>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(RawTargets::Many)
            }
        }
        deserializer.deserialize_any(TargetsVisitor)
    }
}

/// One `[fortigate]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFortiGate {
    /// The target's name; required in `[[fortigate]]`, [`DEFAULT_TARGET`] for the single table.
    pub name: Option<String>,
    /// Base URL of the FortiGate management interface.
    pub url: String,
    /// REST API admin token, sent as `Authorization: Bearer`.
    pub api_key: Option<String>,
    /// A file holding the REST API token.
    pub api_key_file: Option<PathBuf>,
    /// Extra trust root (PEM) on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `false` disables TLS verification, with a loud warning at start.
    #[serde(default = "yes")]
    pub verify_tls: bool,
    /// Request timeout. Extension of the contract.
    #[serde(default = "d_10s", with = "humantime_serde")]
    pub timeout: Duration,
    /// The VDOM every call targets.
    #[serde(default = "default_vdom")]
    pub vdom: String,
    /// `address-group`, `banned-ip` or `threat-feed`.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// IPv4 address group referenced by a deny policy; created if missing.
    #[serde(default = "default_group")]
    pub block_group: String,
    /// IPv6 address group; created if missing.
    #[serde(default = "default_group6")]
    pub block_group6: String,
    /// Members per group before overflowing into `<group>-2`, `<group>-3` ...
    #[serde(default = "d_600")]
    pub max_group_members: u32,
    /// Client-side rate limit.
    #[serde(default = "d_10f")]
    pub requests_per_second: f64,
    /// Name prefix of created address objects: prefix + IP.
    #[serde(default = "default_prefix")]
    pub object_prefix: String,
    /// Further management URLs of the same FortiGate (an HA cluster's units), tried in order when `url` does not
    /// answer.
    #[serde(default)]
    pub urls: Vec<String>,
    /// `devid` or `devname` values of the log lines this target acts on; empty: every device.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `vd` values of the log lines this target acts on; empty: every VDOM.
    #[serde(default)]
    pub vdoms: Vec<String>,
}

/// One FortiGate target, validated.
#[derive(Debug, Clone)]
pub struct FortiGate {
    /// The target's name: `default` for a single `[fortigate]` table.
    pub name: String,
    pub url: url::Url,
    pub api_key: ApiKey,
    pub ca_file: Option<PathBuf>,
    pub verify_tls: bool,
    pub timeout: Duration,
    pub vdom: String,
    pub backend: Backend,
    pub block_group: String,
    pub block_group6: String,
    pub max_group_members: u32,
    pub requests_per_second: f64,
    pub object_prefix: String,
    /// Further management URLs, tried in order when the current one does not answer.
    pub urls: Vec<url::Url>,
    /// `devid`/`devname` values this target claims; empty: every device.
    pub devices: Vec<String>,
    /// `vd` values this target claims; empty: every VDOM.
    pub vdoms: Vec<String>,
}

/// The environment variable holding a fleet target's token: `FORTIMISP_FORTIGATE_<NAME>_API_KEY`.
pub fn env_api_key(name: &str) -> String {
    format!("FORTIMISP_FORTIGATE_{}_API_KEY", name.to_ascii_uppercase().replace('-', "_"))
}

impl RawTargets {
    /// Validates every target. `warnings` collects what is worth a line at start.
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<FortiGate>, Error> {
        match self {
            RawTargets::One(raw) => {
                if let Some(name) = raw.name.as_deref().filter(|n| *n != DEFAULT_TARGET) {
                    check_name("fortigate.name", name)?;
                }
                let name = raw.name.clone().unwrap_or_else(|| DEFAULT_TARGET.to_string());
                Ok(vec![raw.validate("fortigate", name, ENV_FORTIGATE_API_KEY, env, warnings)?])
            }
            RawTargets::Many(raws) => {
                if raws.is_empty() {
                    return Err(Error::invalid("fortigate", "at least one [[fortigate]] target is required"));
                }
                if raws.len() > MAX_TARGETS {
                    return Err(Error::invalid("fortigate", format!("at most {MAX_TARGETS} targets")));
                }
                let mut targets: Vec<FortiGate> = Vec::with_capacity(raws.len());
                for (i, raw) in raws.into_iter().enumerate() {
                    let section = format!("fortigate[{i}]");
                    let Some(name) = raw.name.clone() else {
                        return Err(Error::invalid(format!("{section}.name"), "required in [[fortigate]]"));
                    };
                    check_name(&format!("{section}.name"), &name)?;
                    if targets.iter().any(|t| t.name == name) {
                        return Err(Error::invalid(format!("{section}.name"), format!("`{name}` is used twice")));
                    }
                    let env_name = env_api_key(&name);
                    let target = raw.validate(&section, name, &env_name, env, warnings)?;
                    if target.backend == Backend::ThreatFeed && targets.iter().any(|t| t.backend == Backend::ThreatFeed)
                    {
                        return Err(Error::invalid(
                            format!("{section}.backend"),
                            "threat-feed on one target only (there is one [feed] table)",
                        ));
                    }
                    if let Some(same) = targets.iter().find(|t| t.url == target.url && t.vdom == target.vdom) {
                        return Err(Error::invalid(
                            format!("{section}.url"),
                            format!("target `{}` already writes to this FortiGate and VDOM", same.name),
                        ));
                    }
                    targets.push(target);
                }
                Ok(targets)
            }
        }
    }
}

/// Target names: lowercase letters, digits and `-`, starting with a letter or digit.
fn check_name(key: &str, name: &str) -> Result<(), Error> {
    let ok_chars = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || name.len() > MAX_TARGET_NAME || !ok_chars || name.starts_with('-') {
        return Err(Error::invalid(
            key,
            format!("`{name}`: 1 to {MAX_TARGET_NAME} lowercase letters, digits or '-', not starting with '-'"),
        ));
    }
    Ok(())
}

impl RawFortiGate {
    fn validate(
        self,
        section: &str,
        name: String,
        env_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
        warnings: &mut Vec<String>,
    ) -> Result<FortiGate, Error> {
        let key = |k: &str| format!("{section}.{k}");
        let url = parse_url(&key("url"), &self.url)?;
        let urls = self
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let k = format!("{section}.urls[{i}]");
                let parsed = parse_url(&k, u)?;
                if parsed == url {
                    return Err(Error::invalid(k, format!("repeats {section}.url")));
                }
                Ok(parsed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let api_key = resolve_key(section, env_name, self.api_key.as_deref(), self.api_key_file.as_deref(), env)?;
        check_ca(&key("ca_file"), self.ca_file.as_deref())?;
        if !self.verify_tls {
            warnings.push(format!("{section}.verify_tls is false: the FortiGate's certificate is NOT verified"));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid(key("timeout"), "must be greater than 0s"));
        }
        if self.vdom.is_empty() {
            return Err(Error::invalid(key("vdom"), "must not be empty"));
        }
        check_object_name(&key("block_group"), &self.block_group, false)?;
        check_object_name(&key("block_group6"), &self.block_group6, false)?;
        if self.block_group == self.block_group6 {
            return Err(Error::invalid(
                key("block_group6"),
                format!("must differ from {section}.block_group (names are one namespace on FortiOS)"),
            ));
        }
        check_object_name(&key("object_prefix"), &self.object_prefix, true)?;
        if self.object_prefix.is_empty() {
            return Err(Error::invalid(key("object_prefix"), "must not be empty: it tells fortimisp's objects apart"));
        }
        if self.max_group_members < 2 {
            return Err(Error::invalid(key("max_group_members"), "must be at least 2"));
        }
        let rps = self.requests_per_second;
        if !(rps.is_finite() && rps > 0.0) {
            return Err(Error::invalid(key("requests_per_second"), "must be a number greater than 0"));
        }
        for (field, values) in [("devices", &self.devices), ("vdoms", &self.vdoms)] {
            for (i, value) in values.iter().enumerate() {
                if value.trim().is_empty() || value.trim() != value {
                    return Err(Error::invalid(format!("{section}.{field}[{i}]"), "empty or padded with spaces"));
                }
            }
        }
        Ok(FortiGate {
            name,
            url,
            api_key,
            ca_file: self.ca_file,
            verify_tls: self.verify_tls,
            timeout: self.timeout,
            vdom: self.vdom,
            backend: self.backend,
            block_group: self.block_group,
            block_group6: self.block_group6,
            max_group_members: self.max_group_members,
            requests_per_second: rps,
            object_prefix: self.object_prefix,
            urls,
            devices: self.devices,
            vdoms: self.vdoms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    const MISP: &str = "[misp]\nurl = \"https://misp.example.org\"\napi_key = \"k\"\n";

    fn load(fortigate: &str, env: &[(&str, &str)]) -> Result<Vec<FortiGate>, Error> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        RawConfig::parse(&format!("{MISP}{fortigate}"))?.validate(&lookup).map(|c| c.targets)
    }

    fn error(fortigate: &str) -> String {
        load(fortigate, &[]).expect_err("must be refused").to_string()
    }

    const TWO: &str = "[[fortigate]]\nname = \"edge-a\"\nurl = \"https://192.0.2.1\"\napi_key = \"ka\"\n\
                       devices = [\"FGA\"]\n\
                       [[fortigate]]\nname = \"edge-b\"\nurl = \"https://192.0.2.2\"\ndevices = [\"FGB\"]\n\
                       vdoms = [\"root\"]\nbackend = \"banned-ip\"\n";

    #[test]
    fn a_single_table_is_the_default_target() {
        let targets = load("[fortigate]\nurl = \"https://fg\"\n", &[(ENV_FORTIGATE_API_KEY, "env-key")]).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].name, DEFAULT_TARGET);
        assert_eq!(targets[0].api_key.expose(), "env-key");
        assert!(targets[0].devices.is_empty() && targets[0].vdoms.is_empty());
    }

    #[test]
    fn an_array_is_a_fleet_each_with_its_own_key_and_claims() {
        let targets = load(TWO, &[("FORTIMISP_FORTIGATE_EDGE_B_API_KEY", "kb"), (ENV_FORTIGATE_API_KEY, "no")])
            .expect("a valid fleet");
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["edge-a", "edge-b"]);
        assert_eq!(targets[0].api_key.expose(), "ka", "the shared variable feeds no target of a fleet");
        assert_eq!(targets[1].api_key.expose(), "kb");
        assert_eq!(targets[1].backend, Backend::BannedIp);
        assert_eq!((targets[1].devices.clone(), targets[1].vdoms.clone()), (vec!["FGB".into()], vec!["root".into()]));
        assert_eq!(env_api_key("edge-b"), "FORTIMISP_FORTIGATE_EDGE_B_API_KEY");
    }

    /// Each mistake is refused at start with one line naming the key as written.
    #[test]
    fn fleet_mistakes_name_their_key() {
        let a = "[[fortigate]]\nname = \"a\"\nurl = \"https://192.0.2.1\"\napi_key = \"k\"\n";
        let cases = [
            (TWO.to_string(), "fortigate[1].api_key: required"),
            (
                format!("{a}[[fortigate]]\nurl = \"https://192.0.2.2\"\napi_key = \"k\"\n"),
                "fortigate[1].name: required",
            ),
            (format!("{a}{a}"), "fortigate[1].name: `a` is used twice"),
            (a.replace("name = \"a\"", "name = \"Edge_A\""), "fortigate[0].name: `Edge_A`"),
            (format!("{a}{}", a.replace("name = \"a\"", "name = \"b\"")), "fortigate[1].url: target `a` already"),
            (
                format!(
                    "{a}backend = \"threat-feed\"\n{}",
                    a.replace("\"a\"", "\"b\"").replace(".1\"", ".2\"") + "backend = \"threat-feed\"\n"
                ),
                "fortigate[1].backend: threat-feed on one target only",
            ),
            (a.replace("url = \"https://192.0.2.1\"", "url = \"ftp://x\""), "fortigate[0].url:"),
            (format!("{a}devices = [\" FGA\"]\n"), "fortigate[0].devices[0]:"),
            (format!("{a}block_group = \"a/b\"\n"), "fortigate[0].block_group:"),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.starts_with(expected), "{expected:?} for:\n{text}\ngot: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn an_empty_fleet_is_refused() {
        let raw = RawConfig::parse(&format!("fortigate = []\n{MISP}")).unwrap();
        let error = raw.validate(&|_| None).unwrap_err().to_string();
        assert!(error.starts_with("fortigate: at least one"), "{error}");
    }

    #[test]
    fn scope_and_healthy_share_are_read_and_checked() {
        let text = format!("{MISP}[fortigate]\nurl = \"https://fg\"\napi_key = \"k\"\n[blocking]\nscope = \"fleet\"\n");
        let config = RawConfig::parse(&text).unwrap().validate(&|_| None).unwrap();
        assert_eq!(config.blocking.scope, crate::config::Scope::Fleet);
        let bad = text.replace("scope = \"fleet\"", "healthy_share = 1.5");
        let error = RawConfig::parse(&bad).unwrap().validate(&|_| None).unwrap_err().to_string();
        assert!(error.starts_with("blocking.healthy_share:"), "{error}");
        let bad = text.replace("\"fleet\"", "\"everywhere\"");
        let error = RawConfig::parse(&bad).map(|_| ()).unwrap_err().to_string();
        assert!(error.starts_with("blocking.scope:"), "{error}");
    }
}
