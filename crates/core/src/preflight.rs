//! What `integration validate` proves: that MISP and the FortiGate are reachable with the configured keys, and that
//! each permission the configuration needs is there, checked against the live servers without changing anything
//! lasting. One [`Check`] per line of output: `ok`, `warn` (works, but look), `MISSING` (a permission is absent:
//! the line says what to grant or which key to change) or `FAIL` (unreachable, refused, unexpected).
//!
//! - MISP ([`misp`]): `servers/getVersion` (URL and key), `users/view/me` (the role), one restSearch for a
//!   documentation address (proves searches are allowed: a role with `rate_limit_count = 0` gets 405), then the
//!   role's `perm_sighting` when `sightings = true` and `perm_site_admin` when `feed_update_interval` is not `0s`
//!   ([`role_checks`]).
//! - FortiGate ([`fortigate`]): `monitor/system/status` (URL, token, VDOM), then per backend:
//!   - `address-group`: both block groups read with their reference count (a group no policy references blocks
//!     nothing), and a probe address object created, read back and deleted ([`crate::fortigate::WriteProbe`]);
//!   - `banned-ip`: the banned list read, and `add_users` with an empty list;
//!   - `threat-feed`: the feed objects, status and push permission ([`crate::feed::check`]).
//!
//! The decisions (which status, which words) are pure functions of what the servers answered, tested as tables;
//! only [`misp`] and [`fortigate`] do I/O.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::config::{self, Backend};
use crate::fortigate::{self, Family, GroupMeta, WriteProbe};
use crate::misp::{self, RoleInfo, SearchQuery};

/// The address the restSearch probe asks about (TEST-NET-1, RFC 5737): any answer, hit or not, proves the search.
const SEARCH_PROBE: &str = "192.0.2.1";

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but the operator should look (e.g. a block group no policy uses).
    Warn,
    /// A permission the configuration needs is absent.
    Missing,
    /// Unreachable, refused, or an answer that makes no sense.
    Fail,
}

impl Status {
    /// The label printed in front of the line.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "MISSING",
            Status::Fail => "FAIL",
        }
    }

    /// Whether `validate` may still exit 0.
    pub fn passes(self) -> bool {
        matches!(self, Status::Ok | Status::Warn)
    }
}

/// One line of `validate`'s output: a status and a sentence starting with `misp:` or `fortigate:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    pub text: String,
}

impl Check {
    pub fn new(status: Status, text: impl Into<String>) -> Check {
        Check { status, text: text.into() }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The width of `validate`'s other lines (`ok    config: ...`); MISSING sticks out on purpose.
        write!(f, "{:<5} {}", self.status.label(), self.text)
    }
}

/// The MISP checks; see the module docs.
pub async fn misp(client: &misp::Client, cfg: &config::Misp) -> Vec<Check> {
    let url = client.url();
    let version = match client.version().await {
        Ok(v) => v,
        Err(error) => return vec![misp_unreachable(url, &error)],
    };
    let mut checks = vec![Check::new(Status::Ok, format!("misp: {url} (version {})", version.version))];
    let user = match client.me().await {
        Ok(user) => user,
        Err(error) => {
            checks.push(Check::new(Status::Fail, format!("misp: cannot read the key's user and role: {error}")));
            return checks;
        }
    };
    let search = client.search(&SearchQuery::new().values([SEARCH_PROBE])).await.map(drop);
    checks.push(search_check(&user.role, search));
    checks.extend(role_checks(&user.role, cfg.sightings, cfg.feed_update_interval.is_some()));
    checks
}

fn misp_unreachable(url: &str, error: &misp::Error) -> Check {
    let hint = match error {
        misp::Error::Unauthorized { .. } => {
            ": check the key, its Allowed IPs, and that the user's role has Auth key access (perm_auth)"
        }
        _ => "",
    };
    Check::new(Status::Fail, format!("misp: {url}: {error}{hint}"))
}

/// The restSearch probe's answer, read with the role that made it.
pub fn search_check(role: &RoleInfo, answer: Result<(), misp::Error>) -> Check {
    let limit = match (role.enforce_rate_limit, role.rate_limit_count) {
        (true, Some(n)) => format!("rate limit {n} searches per 15 minutes"),
        _ => "no rate limit".to_string(),
    };
    match answer {
        Ok(()) => Check::new(Status::Ok, format!("misp: restSearch allowed (role {:?}, {limit})", role.name)),
        Err(misp::Error::NotAllowed { .. }) => Check::new(
            Status::Missing,
            format!(
                "misp: role {:?} may not search (restSearch answered 405, rate_limit_count 0): give the role a rate \
                 limit above 0 or turn enforce_rate_limit off",
                role.name
            ),
        ),
        Err(error @ misp::Error::Forbidden { .. }) => {
            Check::new(Status::Missing, format!("misp: role {:?} may not use restSearch: {error}", role.name))
        }
        Err(error @ misp::Error::RateLimited { .. }) => {
            Check::new(Status::Warn, format!("misp: restSearch is rate limited right now ({limit}): {error}"))
        }
        Err(error) => Check::new(Status::Fail, format!("misp: restSearch failed: {error}")),
    }
}

/// The role's permissions against what the configuration needs: `perm_sighting` when `sightings`, site admin
/// when `feeds` (a feed update interval other than `0s`). One line each, needed or not.
pub fn role_checks(role: &RoleInfo, sightings: bool, feeds: bool) -> Vec<Check> {
    let name = &role.name;
    let sighting = match (sightings, role.perm_sighting) {
        (false, _) => Check::new(Status::Ok, "misp: perm_sighting not needed (sightings = false)"),
        (true, true) => Check::new(Status::Ok, format!("misp: role {name:?} may add sightings (perm_sighting)")),
        (true, false) => Check::new(
            Status::Missing,
            format!(
                "misp: sightings = true but role {name:?} lacks perm_sighting: grant Sighting creator, or set \
                 [misp] sightings = false"
            ),
        ),
    };
    let site_admin = match (feeds, role.perm_site_admin) {
        (false, _) => Check::new(Status::Ok, "misp: site admin not needed (feed_update_interval = \"0s\")"),
        (true, true) => Check::new(Status::Ok, format!("misp: role {name:?} may fetch feeds (site admin)")),
        (true, false) => Check::new(
            Status::Missing,
            format!(
                "misp: feed updates need a site admin key but role {name:?} is not site admin: set [misp] \
                 feed_update_interval = \"0s\" (and fetch feeds on the MISP host), or use a site admin key"
            ),
        ),
    };
    vec![sighting, site_admin]
}

/// The FortiGate checks for the configured backend; see the module docs. `now` dates the probe object.
pub async fn fortigate(client: &fortigate::Client, cfg: &config::FortiGate, now: DateTime<Utc>) -> Vec<Check> {
    let url = cfg.url.as_str().trim_end_matches('/');
    let status = match client.system_status().await {
        Ok(status) => status,
        Err(error) => return vec![Check::new(Status::Fail, format!("fortigate: {url}: {error}"))],
    };
    let mut checks =
        vec![Check::new(Status::Ok, format!("fortigate: {url} (version {}, vdom {})", status.version, cfg.vdom))];
    match cfg.backend {
        Backend::AddressGroup => {
            for (family, group) in [(Family::V4, &cfg.block_group), (Family::V6, &cfg.block_group6)] {
                checks.push(group_check(group, client.block_group_meta(family).await));
            }
            let nonce = rand::random::<u32>();
            checks.push(write_probe_check(&client.probe_address_write(now, nonce).await));
        }
        Backend::BannedIp => {
            checks.push(banned_read_check(client.list_banned().await.map(|list| list.len())));
            checks.push(ban_check(client.probe_ban().await));
        }
        // The feed objects are checked by `feed::check::checks`, which needs `[feed]`.
        Backend::ThreatFeed => {}
    }
    checks
}

fn is_forbidden(error: &fortigate::Error) -> bool {
    matches!(error, fortigate::Error::Forbidden { .. })
}

/// A 403 in a few words: `http 403` (and FortiOS's error number when it sent one).
fn refusal(error: &fortigate::Error) -> String {
    match error {
        fortigate::Error::Forbidden { status, code: Some(code) } => format!("http {status}, error {code}"),
        fortigate::Error::Forbidden { status, code: None } => format!("http {status}"),
        other => other.to_string(),
    }
}

/// A block group read with its reference count.
pub fn group_check(group: &str, answer: Result<Option<GroupMeta>, fortigate::Error>) -> Check {
    match answer {
        Ok(Some(GroupMeta { group: g, references: Some(0) })) => Check::new(
            Status::Warn,
            format!(
                "fortigate: block group {group} ({} members) is referenced by no policy: blocks have no effect until \
                 a deny policy uses it",
                g.members.len()
            ),
        ),
        Ok(Some(GroupMeta { group: g, references })) => Check::new(
            Status::Ok,
            format!(
                "fortigate: block group {group} readable ({} members{})",
                g.members.len(),
                references.map(|n| format!(", referenced by {n}")).unwrap_or_default()
            ),
        ),
        Ok(None) => Check::new(
            Status::Warn,
            format!(
                "fortigate: block group {group} does not exist yet: fortimisp creates it at start; then make a deny \
                 policy use it"
            ),
        ),
        Err(error) if is_forbidden(&error) => Check::new(
            Status::Missing,
            format!(
                "fortigate: cannot read address group {group} ({}): the admin profile needs firewall address \
                 read-write",
                refusal(&error)
            ),
        ),
        Err(error) => Check::new(Status::Fail, format!("fortigate: cannot read address group {group}: {error}")),
    }
}

/// What the address write probe found.
pub fn write_probe_check(probe: &WriteProbe) -> Check {
    match probe {
        WriteProbe::Proven { name } => Check::new(
            Status::Ok,
            format!("fortigate: may create and delete address objects (probe {name} created, read back, deleted)"),
        ),
        WriteProbe::Refused { name, error } if is_forbidden(error) => Check::new(
            Status::Missing,
            format!(
                "fortigate: the token may not create address objects ({}): give the admin profile firewall address \
                 read-write (probe {name} not created)",
                refusal(error)
            ),
        ),
        WriteProbe::Refused { name, error } => {
            Check::new(Status::Fail, format!("fortigate: creating the probe object {name} failed: {error}"))
        }
        WriteProbe::Failed { name, error } => Check::new(
            Status::Fail,
            format!("fortigate: the probe object {name} was created and deleted, but reading it back failed: {error}"),
        ),
        WriteProbe::LeftBehind { name, error, cause } => {
            let status = if is_forbidden(error) { Status::Missing } else { Status::Fail };
            let before = cause.as_ref().map(|c| format!(" (after: {})", refusal(c))).unwrap_or_default();
            Check::new(
                status,
                format!(
                    "fortigate: the probe object {name} may still be on the FortiGate: deleting it failed: \
                     {}{before}; delete it by hand (config firewall address, delete {name})",
                    refusal(error)
                ),
            )
        }
    }
}

/// Reading the banned-IP list (`Ok` holds the number of entries).
pub fn banned_read_check(answer: Result<usize, fortigate::Error>) -> Check {
    match answer {
        Ok(n) => Check::new(Status::Ok, format!("fortigate: may read the banned-IP list ({n} entries)")),
        Err(error) if is_forbidden(&error) => Check::new(
            Status::Missing,
            format!(
                "fortigate: cannot read the banned-IP list ({}): the admin profile needs User & Authentication \
                 (authgrp) read-write",
                refusal(&error)
            ),
        ),
        Err(error) => Check::new(Status::Fail, format!("fortigate: cannot read the banned-IP list: {error}")),
    }
}

/// `add_users` with an empty list. FortiOS checks the permission before the input, so an input error (a 4xx with
/// an error number) still proves the permission; 403 is the missing permission.
pub fn ban_check(answer: Result<(), fortigate::Error>) -> Check {
    match answer {
        Ok(()) => Check::new(Status::Ok, "fortigate: may ban addresses (add_users with an empty list accepted)"),
        Err(error) if is_forbidden(&error) => Check::new(
            Status::Missing,
            format!(
                "fortigate: the token may not ban addresses ({}): the admin profile needs User & Authentication \
                 (authgrp) read-write",
                refusal(&error)
            ),
        ),
        Err(fortigate::Error::Api { status, code: Some(code), .. }) if (400..500).contains(&status) => Check::new(
            Status::Ok,
            format!(
                "fortigate: may ban addresses (add_users refused the empty list as input, http {status} error \
                 {code}, not 403)"
            ),
        ),
        Err(error) => Check::new(Status::Fail, format!("fortigate: add_users failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fortigate::{Group, ObjectName};

    fn role(sighting: bool, site_admin: bool) -> RoleInfo {
        RoleInfo {
            name: "r".into(),
            perm_sighting: sighting,
            perm_site_admin: site_admin,
            enforce_rate_limit: false,
            rate_limit_count: None,
        }
    }

    #[test]
    fn role_permissions_against_the_config() {
        use Status::{Missing, Ok};
        // (perm_sighting, site admin, sightings on, feed updates on) -> (sighting line, site admin line)
        let cases = [
            ((false, false, false, false), (Ok, Ok)),
            ((true, true, true, true), (Ok, Ok)),
            ((false, true, true, true), (Missing, Ok)),
            ((true, false, true, true), (Ok, Missing)),
            ((false, false, true, true), (Missing, Missing)),
            ((false, false, false, true), (Ok, Missing)),
        ];
        for ((sighting, admin, sightings, feeds), (want_s, want_a)) in cases {
            let checks = role_checks(&role(sighting, admin), sightings, feeds);
            let got: Vec<Status> = checks.iter().map(|c| c.status).collect();
            assert_eq!(got, [want_s, want_a], "{checks:?}");
            for c in checks.iter().filter(|c| c.status == Missing) {
                assert!(c.text.contains("sightings = false") || c.text.contains("feed_update_interval"), "{c}");
            }
        }
    }

    #[test]
    fn search_answers() {
        let path = || "/attributes/restSearch".to_string();
        let cases: Vec<(Result<(), misp::Error>, Status)> = vec![
            (Ok(()), Status::Ok),
            (Err(misp::Error::NotAllowed { path: path(), reason: "no".into() }), Status::Missing),
            (Err(misp::Error::Forbidden { path: path(), reason: "no".into() }), Status::Missing),
            (Err(misp::Error::RateLimited { path: path(), reset: None }), Status::Warn),
            (Err(misp::Error::Timeout { path: path() }), Status::Fail),
        ];
        for (answer, want) in cases {
            assert_eq!(search_check(&role(true, true), answer).status, want);
        }
    }

    fn forbidden() -> fortigate::Error {
        fortigate::Error::Forbidden { status: 403, code: None }
    }

    #[test]
    fn fortigate_answers() {
        let name = || ObjectName::parse("misp-validate-0000002a").expect("name");
        let group = |refs| {
            Ok(Some(GroupMeta {
                group: Group { name: "G".into(), members: vec![], comment: "".into() },
                references: refs,
            }))
        };
        let cases: Vec<(Check, Status, &str)> = vec![
            (group_check("G", group(Some(1))), Status::Ok, "referenced by 1"),
            (group_check("G", group(None)), Status::Ok, "readable"),
            (group_check("G", group(Some(0))), Status::Warn, "no policy"),
            (group_check("G", Ok(None)), Status::Warn, "does not exist yet"),
            (group_check("G", Err(forbidden())), Status::Missing, "firewall address read-write"),
            (group_check("G", Err(fortigate::Error::Timeout)), Status::Fail, "timed out"),
            (write_probe_check(&WriteProbe::Proven { name: name() }), Status::Ok, "deleted"),
            (
                write_probe_check(&WriteProbe::Refused { name: name(), error: forbidden() }),
                Status::Missing,
                "read-write",
            ),
            (
                write_probe_check(&WriteProbe::Refused {
                    name: name(),
                    error: fortigate::Error::Full { name: "t".into(), code: -4 },
                }),
                Status::Fail,
                "failed",
            ),
            (
                write_probe_check(&WriteProbe::Failed { name: name(), error: fortigate::Error::Timeout }),
                Status::Fail,
                "reading it back",
            ),
            (
                write_probe_check(&WriteProbe::LeftBehind {
                    name: name(),
                    error: fortigate::Error::Timeout,
                    cause: Some(fortigate::Error::Http { status: 502 }),
                }),
                Status::Fail,
                "delete it by hand (config firewall address, delete misp-validate-0000002a)",
            ),
            (banned_read_check(Ok(3)), Status::Ok, "3 entries"),
            (banned_read_check(Err(forbidden())), Status::Missing, "authgrp"),
            (ban_check(Ok(())), Status::Ok, "may ban"),
            (ban_check(Err(forbidden())), Status::Missing, "authgrp"),
            (
                ban_check(Err(fortigate::Error::Api { status: 424, code: Some(-651), name: None, cli_error: None })),
                Status::Ok,
                "not 403",
            ),
            (ban_check(Err(fortigate::Error::Http { status: 500 })), Status::Fail, "add_users failed"),
        ];
        for (check, status, words) in cases {
            assert_eq!(check.status, status, "{check}");
            assert!(check.text.starts_with("fortigate: ") && check.text.contains(words), "{check}");
        }
    }

    #[test]
    fn a_403_reads_as_a_status_not_a_debug_value() {
        let line = write_probe_check(&WriteProbe::Refused {
            name: ObjectName::parse("misp-validate-0000002a").expect("name"),
            error: forbidden(),
        });
        assert!(line.text.contains("(http 403)") && !line.text.contains("None"), "{line}");
        let coded = fortigate::Error::Forbidden { status: 403, code: Some(-37) };
        assert!(ban_check(Err(coded)).text.contains("(http 403, error -37)"));
    }

    #[test]
    fn lines_are_aligned() {
        assert_eq!(Check::new(Status::Ok, "misp: x").to_string(), "ok    misp: x");
        assert_eq!(Check::new(Status::Fail, "misp: x").to_string(), "FAIL  misp: x");
        assert_eq!(Check::new(Status::Missing, "misp: x").to_string(), "MISSING misp: x");
        assert!(!Status::Missing.passes() && !Status::Fail.passes() && Status::Warn.passes());
    }
}
