//! The seed file (`misp-emulator --seed FILE.json`, [`super::MispEmulator::seed`]).
//!
//! ```json
//! {
//!   "keys": ["<40 alphanumeric chars>"],
//!   "role": {"name": "Org Admin", "perm_sighting": true, "perm_site_admin": true, "perm_auth": true,
//!            "perm_add": true, "perm_modify": true, "perm_publish": true,
//!            "enforce_rate_limit": false, "rate_limit_count": 0},
//!   "background_jobs": true,
//!   "events": [{"info": "C2 servers", "published": true, "tags": ["tlp:white"],
//!               "attributes": [{"type": "ip-dst", "value": "198.51.100.7", "to_ids": true, "tags": [],
//!                               "timestamp": 1700000000, "deleted": false, "uuid": "...", "comment": ""}]}],
//!   "warninglists": [{"name": "RFC 1918", "type": "cidr", "entries": ["10.0.0.0/8"], "enabled": true}],
//!   "feeds": [{"name": "CIRCL OSINT", "enabled": true, "provider": "CIRCL", "source_format": "misp",
//!              "url": "https://www.circl.lu/doc/misp/feed-osint", "caching_enabled": true}]
//! }
//! ```
//! Every key is optional; attribute fields other than `type` and `value` too (`to_ids` defaults to true,
//! `timestamp` to now). Unknown keys are rejected. A fuller example for the lab: `seed-example.json` next to this
//! file (a unit test keeps it valid).

use serde::Deserialize;

use super::store::AttributeSpec;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub background_jobs: Option<bool>,
    #[serde(default)]
    pub events: Vec<SeedEvent>,
    #[serde(default)]
    pub warninglists: Vec<SeedWarninglist>,
    #[serde(default)]
    pub feeds: Vec<SeedFeed>,
}

/// The key's role, as `/users/view/me` reports it. Every field is optional in a seed (the default is MISP's
/// `admin` role).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Role {
    pub name: String,
    /// Needed for `/sightings/add`.
    pub perm_sighting: bool,
    /// Needed for the feed actions (fetch, cache).
    pub perm_site_admin: bool,
    /// "Auth key access": without it MISP refuses the key (403, as for a wrong key).
    pub perm_auth: bool,
    pub perm_add: bool,
    pub perm_modify: bool,
    pub perm_publish: bool,
    /// With `rate_limit_count`: restSearch calls per 15 minutes; 0 forbids API searches (405).
    pub enforce_rate_limit: bool,
    pub rate_limit_count: u64,
}

impl Default for Role {
    fn default() -> Self {
        Role {
            name: "admin".into(),
            perm_sighting: true,
            perm_site_admin: true,
            perm_auth: true,
            perm_add: true,
            perm_modify: true,
            perm_publish: true,
            enforce_rate_limit: false,
            rate_limit_count: 0,
        }
    }
}

impl Role {
    /// The role docs/production.md recommends for fortimisp: auth key access, nothing else.
    pub fn read_only(name: &str) -> Role {
        Role {
            name: name.into(),
            perm_sighting: false,
            perm_site_admin: false,
            perm_add: false,
            perm_modify: false,
            perm_publish: false,
            ..Role::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedEvent {
    #[serde(default)]
    pub info: String,
    #[serde(default = "yes")]
    pub published: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub attributes: Vec<AttributeSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedWarninglist {
    pub name: String,
    #[serde(rename = "type", default = "cidr")]
    pub kind: String,
    #[serde(default)]
    pub entries: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFeed {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default `emulator`.
    #[serde(default)]
    pub provider: Option<String>,
    /// Default `https://feeds.example.org/<id>`.
    #[serde(default)]
    pub url: Option<String>,
    /// `misp` (default), `freetext` or `csv`.
    #[serde(default)]
    pub source_format: Option<String>,
    /// Whether `/feeds/cacheFeeds` caches it (default false).
    #[serde(default)]
    pub caching_enabled: bool,
}

fn yes() -> bool {
    true
}

fn cidr() -> String {
    "cidr".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_unknown_keys_fail() {
        let example = r#"{
          "keys": ["0123456789abcdefghijABCDEFGHIJ0123456789"],
          "role": {"name": "Org Admin", "perm_sighting": true, "perm_site_admin": true, "perm_auth": true,
                   "perm_add": true, "perm_modify": true, "perm_publish": true,
                   "enforce_rate_limit": false, "rate_limit_count": 0},
          "background_jobs": true,
          "events": [{"info": "C2 servers", "published": true, "tags": ["tlp:white"],
                      "attributes": [{"type": "ip-dst", "value": "198.51.100.7", "to_ids": true, "tags": [],
                                      "timestamp": 1700000000, "deleted": false, "uuid": "u", "comment": ""}]}],
          "warninglists": [{"name": "RFC 1918", "type": "cidr", "entries": ["10.0.0.0/8"], "enabled": true}],
          "feeds": [{"name": "CIRCL OSINT", "enabled": true, "provider": "CIRCL", "source_format": "misp",
                     "url": "https://www.circl.lu/doc/misp/feed-osint", "caching_enabled": true}]
        }"#;
        let cases: [(&str, bool); 4] = [
            (example, true),
            ("{}", true),
            (r#"{"events": [{"attributes": [{"type": "ip-src", "value": "192.0.2.1"}]}]}"#, true),
            (r#"{"event": []}"#, false),
        ];
        for (text, ok) in cases {
            assert_eq!(serde_json::from_str::<Seed>(text).is_ok(), ok, "{text}");
        }
        let lab: Seed = serde_json::from_str(include_str!("seed-example.json")).expect("seed-example.json parses");
        assert_eq!((lab.events.len(), lab.warninglists.len(), lab.feeds.len()), (2, 2, 2));
        let seed: Seed = serde_json::from_str(example).expect("example");
        assert_eq!(seed.events[0].attributes[0].timestamp, Some(1_700_000_000));
        assert_eq!(seed.role.map(|r| r.name), Some("Org Admin".to_string()));
    }
}
