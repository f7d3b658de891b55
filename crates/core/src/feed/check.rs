//! What `integration validate` proves about the threat feeds (`backend = "threat-feed"`), one
//! [`Check`](crate::preflight::Check) per line: each feed object exists on the FortiGate with `type address`, set up
//! for the configured update method (pull: its URL points at our listener, `/feeds/<name>.txt`, with our user;
//! push: `update-method push`); the FortiGate's entry-list status can be read (and what it loaded); with push, an
//! `add` of no entry proves the token may push without changing the feed.
//!
//! The decisions are pure ([`object_check`]); [`checks`] does the I/O. fortimisp never creates or edits the feed
//! objects: the operator does (docs/production.md), as for the deny policy that references them.

use crate::config::Feed;
use crate::fortigate::{self, ExternalResource, PushCommand, Transport};
use crate::preflight::{Check, Status};

/// The path a feed is served under.
pub fn served_path(name: &str) -> String {
    format!("/feeds/{name}.txt")
}

/// Every feed check, in order of [`crate::feed::Names::all`].
pub async fn checks(transport: &Transport, cfg: &Feed) -> Vec<Check> {
    let mut out = Vec::new();
    for name in cfg.names().all() {
        out.push(object_check(cfg, &name, transport.external_resource(&name).await));
        out.push(match transport.feed_status(&name).await {
            Ok(status) => {
                let loaded = status.loaded.map_or_else(|| "unknown".to_string(), |n| n.to_string());
                let limit = status.limit.map_or_else(|| "unknown".to_string(), |n| n.to_string());
                let overflow = if status.overflow == Some(true) { ", OVERFLOW: entries dropped" } else { "" };
                let level = if status.overflow == Some(true) { Status::Warn } else { Status::Ok };
                Check::new(
                    level,
                    format!("fortigate: feed {name}: status readable ({loaded} loaded, limit {limit}{overflow})"),
                )
            }
            Err(error) => failure(&name, "status (entry-list)", &error),
        });
    }
    if cfg.push {
        let first = cfg.names().all().into_iter().next().unwrap_or_default();
        out.push(match transport.push_feed(&first, PushCommand::Add, &[]).await {
            Ok(()) => Check::new(Status::Ok, format!("fortigate: feed {first}: push allowed (an add of nothing)")),
            Err(error) => failure(&first, "push", &error),
        });
    }
    out
}

fn failure(name: &str, what: &str, error: &fortigate::Error) -> Check {
    match error {
        fortigate::Error::Forbidden { .. } => Check::new(
            Status::Missing,
            format!(
                "fortigate: feed {name}: {what}: permission denied; give the API profile read-write on \
                     system (sysgrp), which holds external-resource"
            ),
        ),
        other => Check::new(Status::Fail, format!("fortigate: feed {name}: {what}: {other}")),
    }
}

/// The feed object `name` as read (`Ok(None)`: there is none) against what `cfg` needs.
pub fn object_check(cfg: &Feed, name: &str, read: Result<Option<ExternalResource>, fortigate::Error>) -> Check {
    let fail = |why: String| Check::new(Status::Fail, format!("fortigate: feed {name}: {why}"));
    let object = match read {
        Ok(Some(object)) => object,
        Ok(None) => {
            return fail(
                "missing: create it (config system external-resource, type address; docs/production.md)".into(),
            )
        }
        Err(error) => return failure(name, "object", &error),
    };
    if object.kind != "address" {
        return fail(format!("type is {:?}, must be \"address\"", object.kind));
    }
    if object.status.as_deref() == Some("disable") {
        return fail("status is disable: the FortiGate ignores it".into());
    }
    let method = object.update_method.as_deref().unwrap_or("feed");
    match (cfg.pull(), cfg.push, method) {
        (_, true, "push") => {}
        (false, true, other) => return fail(format!("update-method is {other:?}: set update-method push")),
        (true, _, "feed") => {
            let path = served_path(name);
            let points_here = match &cfg.url {
                Some(url) => object.resource == format!("{}{path}", url.as_str().trim_end_matches('/')),
                None => {
                    let port = cfg.serve.as_ref().map(|s| s.listen.port()).unwrap_or_default();
                    url::Url::parse(&object.resource).is_ok_and(|u| {
                        u.scheme() == "https" && u.port_or_known_default() == Some(port) && u.path() == path
                    })
                }
            };
            if !points_here {
                let expected = match &cfg.url {
                    Some(url) => format!("{}{path}", url.as_str().trim_end_matches('/')),
                    None => format!("https://<this host>:<feed.listen port>{path}"),
                };
                return fail(format!("resource is {:?}, must be {expected:?}", object.resource));
            }
            let user = cfg.serve.as_ref().map(|s| s.username.as_str()).unwrap_or_default();
            if object.username.as_deref() != Some(user) {
                return fail(format!("username is {:?}, must be {user:?} (feed.username)", object.username));
            }
        }
        (true, _, other) => return fail(format!("update-method is {other:?}: set update-method feed to pull")),
        (false, false, _) => unreachable!("config validation requires pull or push"),
    }
    let how = if method == "push" { "push".to_string() } else { format!("pulls {}", object.resource) };
    Check::new(Status::Ok, format!("fortigate: feed {name}: type address, {how}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawFeed;

    fn feed(extra: &str) -> Feed {
        let raw: RawFeed = toml::from_str(extra).unwrap();
        raw.validate(&|name| (name == crate::config::ENV_FEED_PASSWORD).then(|| "a long enough password".into()))
            .unwrap()
    }

    fn object(kind: &str, resource: &str, method: Option<&str>, user: Option<&str>) -> ExternalResource {
        ExternalResource {
            name: "fortimisp-block".into(),
            kind: kind.into(),
            resource: resource.into(),
            update_method: method.map(str::to_string),
            status: Some("enable".into()),
            username: user.map(str::to_string),
            refresh_rate: Some(5),
        }
    }

    #[test]
    fn each_mismatch_fails_with_what_to_set() {
        let pull = feed("listen = \"0.0.0.0:8514\"\ntls_cert = \"c\"\ntls_key = \"k\"");
        let pull_url = feed("url = \"https://fm.example.org:8514\"\ntls_cert = \"c\"\ntls_key = \"k\"");
        let push = feed("update = [\"push\"]");
        let good = "https://fm.example.org:8514/feeds/fortimisp-block.txt";
        type Read = Result<Option<ExternalResource>, fortigate::Error>;
        let cases: Vec<(&Feed, Read, Status, &str)> = vec![
            (&pull, Ok(Some(object("address", good, Some("feed"), Some("fortigate")))), Status::Ok, "pulls"),
            (&pull, Ok(Some(object("address", good, None, Some("fortigate")))), Status::Ok, "pulls"),
            (&pull_url, Ok(Some(object("address", good, Some("feed"), Some("fortigate")))), Status::Ok, "pulls"),
            (&pull, Ok(None), Status::Fail, "missing"),
            (&pull, Ok(Some(object("domain", good, Some("feed"), Some("fortigate")))), Status::Fail, "type"),
            (
                &pull,
                Ok(Some(object(
                    "address",
                    "https://fm.example.org:9999/feeds/fortimisp-block.txt",
                    Some("feed"),
                    Some("fortigate"),
                ))),
                Status::Fail,
                "resource",
            ),
            (
                &pull_url,
                Ok(Some(object(
                    "address",
                    "https://other.example.org:8514/feeds/fortimisp-block.txt",
                    Some("feed"),
                    Some("fortigate"),
                ))),
                Status::Fail,
                "resource",
            ),
            (&pull, Ok(Some(object("address", good, Some("feed"), Some("admin")))), Status::Fail, "username"),
            (&pull, Ok(Some(object("address", good, Some("push"), Some("fortigate")))), Status::Fail, "update-method"),
            (
                &push,
                Ok(Some(object("address", "https://placeholder.invalid/", Some("push"), None))),
                Status::Ok,
                "push",
            ),
            (&push, Ok(Some(object("address", good, Some("feed"), None))), Status::Fail, "set update-method push"),
            (&push, Err(fortigate::Error::Forbidden { status: 403, code: None }), Status::Missing, "sysgrp"),
        ];
        for (i, (cfg, read, status, words)) in cases.into_iter().enumerate() {
            let check = object_check(cfg, "fortimisp-block", read);
            assert_eq!(check.status, status, "case {i}: {}", check.text);
            assert!(check.text.contains(words), "case {i}: {:?} lacks {words:?}", check.text);
        }
    }
}
