//! The `system/external-resource` cmdb table (external threat feeds), pure: entries as FortiOS stores and shows
//! them, the field rules (name 35, resource 511, closed choices, `refresh-rate` 1–43200), the write-only
//! password, each feed's runtime [`FeedState`], and the push API's commands applied to them.
//!
//! A separate name space from the four firewall tables of `state.rs`. Every operation returns an
//! [`Outcome`] the HTTP layer turns into an envelope; the caller bumps the config revision on a successful write.
//!
//! # Emulator choices where the reference is silent
//! - The password is never shown: a GET answers `ENC XXXX` when one is set, `""` when none. Writing back a value
//!   starting with `ENC ` (a client PUTting what it read) keeps the stored password.
//! - At most [`MAX_FEEDS`] entries (reference §6b: 256 per VDOM); one more answers -4 with HTTP 500.
//! - Invalid field values answer HTTP 424 with -651, as the address tables do.
//! - Push: the whole body is checked before any command is applied (all or nothing). A malformed body or command
//!   answers 400 with -651; an unknown feed 404 with -3; a feed whose `update-method` is not `push` 400 with -651.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::feed::{FeedEvent, FeedState, PushOp};
use super::schema;
use super::state::{bare, err, Outcome, REFUSED_IN_TEXT};

/// Feeds per VDOM (reference §6b); one more answers -4.
pub const MAX_FEEDS: usize = 256;

/// What a GET shows for a password that is set.
pub const MASKED_PASSWORD: &str = "ENC XXXX";

/// `name` size in FortiOS's schema.
const NAME_MAX: usize = 35;

/// Text fields and their sizes.
const SIZES: &[(&str, usize)] =
    &[("resource", 511), ("username", 64), ("password", 128), ("comments", 255), ("user-agent", 255)];

/// One external resource: its configuration and what it holds.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The entry as stored, `password` always `""` here (the secret is kept apart).
    entry: Map<String, Value>,
    password: String,
    /// What the feed holds and how its fetches went.
    pub state: FeedState,
}

impl Resource {
    /// The entry as a GET shows it: the password masked.
    pub fn shown(&self) -> Map<String, Value> {
        let mut entry = self.entry.clone();
        let masked = if self.password.is_empty() { "" } else { MASKED_PASSWORD };
        entry.insert("password".into(), masked.into());
        entry
    }

    fn text(&self, key: &str) -> &str {
        self.entry.get(key).and_then(Value::as_str).unwrap_or_default()
    }

    /// `resource`: the URL fetched.
    pub fn url(&self) -> &str {
        self.text("resource")
    }

    /// HTTP basic auth, when `username` is set.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        let user = self.text("username");
        (!user.is_empty()).then_some((user, self.password.as_str()))
    }

    /// `update-method feed` and `status enable`: the FortiGate pulls this one.
    pub fn is_pulled(&self) -> bool {
        self.text("update-method") == "feed" && self.text("status") == "enable"
    }

    pub fn is_push(&self) -> bool {
        self.text("update-method") == "push"
    }

    /// `server-identity-check`: `none`, `basic` or `full`.
    pub fn identity_check(&self) -> &str {
        self.text("server-identity-check")
    }

    /// `user-agent`, when set.
    pub fn user_agent(&self) -> Option<&str> {
        Some(self.text("user-agent")).filter(|ua| !ua.is_empty())
    }

    /// `refresh-rate`, minutes.
    pub fn refresh_minutes(&self) -> u64 {
        self.entry.get("refresh-rate").and_then(Value::as_u64).unwrap_or(5)
    }
}

/// The table: name -> resource.
#[derive(Debug, Default)]
pub struct Resources {
    feeds: BTreeMap<String, Resource>,
    /// Entries created so far (each gets a uuid of its number, apart from the address tables' ones).
    created: u64,
}

/// Integers FortiOS also takes as digit strings.
fn normalise_integers(entry: &mut Map<String, Value>) {
    for key in ["refresh-rate", "category"] {
        if let Some(Value::String(s)) = entry.get(key) {
            if let Ok(n) = s.trim().parse::<u64>() {
                entry.insert(key.into(), n.into());
            }
        }
    }
}

/// The -651 answer for the first field of `entry` FortiOS would refuse.
fn check(entry: &Map<String, Value>) -> Option<Outcome> {
    let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() || name.chars().count() > NAME_MAX {
        return Some(err(424, -651, "name: invalid length"));
    }
    for key in ["name", "comments"] {
        if entry.get(key).and_then(Value::as_str).is_some_and(|v| v.contains(REFUSED_IN_TEXT)) {
            return Some(err(424, -651, "name/comments: invalid characters"));
        }
    }
    for (key, size) in SIZES {
        match entry.get(*key) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v.chars().count() <= *size => {}
            Some(_) => return Some(err(424, -651, "text field: invalid value or too long")),
        }
    }
    if entry.get("resource").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Some(err(424, -651, "resource: required"));
    }
    for (key, allowed) in schema::RESOURCE_OPTIONS {
        if let Some(v) = entry.get(*key) {
            if !v.as_str().is_some_and(|v| allowed.contains(&v)) {
                return Some(err(424, -651, "option: invalid value"));
            }
        }
    }
    if !entry.get("refresh-rate").and_then(Value::as_u64).is_some_and(|m| (1..=43_200).contains(&m)) {
        return Some(err(424, -651, "refresh-rate: out of range (1-43200)"));
    }
    if !entry.get("category").is_some_and(Value::is_u64) {
        return Some(err(424, -651, "category: not an integer"));
    }
    None
}

/// Takes `password` out of the written fields: `Some(new)` to store, `None` to keep the old one (absent, or the
/// masked value read back).
fn take_password(written: &mut Map<String, Value>) -> Result<Option<String>, Outcome> {
    match written.remove("password") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if p.starts_with("ENC ") => Ok(None),
        Some(Value::String(p)) if p.chars().count() <= 128 => Ok(Some(p)),
        Some(_) => Err(err(424, -651, "password: invalid value or too long")),
    }
}

impl Resources {
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.feeds.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Resource> {
        self.feeds.get_mut(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.feeds.keys().cloned().collect()
    }

    /// Every entry as a GET shows it, by name.
    pub fn entries(&self) -> Vec<Map<String, Value>> {
        self.feeds.values().map(Resource::shown).collect()
    }

    /// `?action=default`: a new entry before anything is written.
    pub fn default_entry() -> Value {
        let mut entry = schema::resource_defaults();
        entry.insert("name".into(), "".into());
        entry.insert("uuid".into(), "00000000-0000-0000-0000-000000000000".into());
        Value::Object(entry)
    }

    /// `GET /cmdb/system/external-resource/{name}` (the missing one is the bare 404).
    pub fn get_entry(&self, name: &str) -> Outcome {
        match self.feeds.get(name) {
            Some(r) => Outcome::Ok { results: Some(Value::Array(super::state::listing(vec![r.shown()]))) },
            None => bare(404),
        }
    }

    pub fn create(&mut self, body: &Value, duplicate_status: u16) -> Outcome {
        let Some(mut written) = body.as_object().cloned() else {
            return err(400, -651, "body is not a JSON object");
        };
        let Some(name) = written.get("name").and_then(Value::as_str).map(str::to_string) else {
            return err(424, -651, "name: missing");
        };
        if self.feeds.contains_key(&name) {
            return err(duplicate_status, -5, "A duplicate entry already exists.");
        }
        if self.feeds.len() >= MAX_FEEDS {
            return err(500, -4, "Maximum number of entries has been reached.");
        }
        let password = match take_password(&mut written) {
            Ok(p) => p.unwrap_or_default(),
            Err(refusal) => return refusal,
        };
        let mut entry = schema::resource_defaults();
        entry.insert("uuid".into(), schema::uuid_for((1 << 32) + self.created + 1).into());
        entry.extend(written.into_iter().filter(|(k, _)| !k.starts_with("q_")));
        normalise_integers(&mut entry);
        if let Some(refusal) = check(&entry) {
            return refusal;
        }
        self.created += 1;
        self.feeds.insert(name, Resource { entry, password, state: FeedState::default() });
        Outcome::Ok { results: None }
    }

    /// PUT: merges the written fields (the name is the path's); the feed keeps what it holds.
    pub fn update(&mut self, name: &str, body: &Value) -> Outcome {
        let Some(mut written) = body.as_object().cloned() else {
            return err(400, -651, "body is not a JSON object");
        };
        let Some(existing) = self.feeds.get(name) else {
            return err(404, -3, "Entry not found.");
        };
        let password = match take_password(&mut written) {
            Ok(p) => p.unwrap_or_else(|| existing.password.clone()),
            Err(refusal) => return refusal,
        };
        let mut entry = existing.entry.clone();
        entry.extend(written.into_iter().filter(|(k, _)| k != "name" && !k.starts_with("q_")));
        normalise_integers(&mut entry);
        if let Some(refusal) = check(&entry) {
            return refusal;
        }
        if let Some(r) = self.feeds.get_mut(name) {
            r.entry = entry;
            r.password = password;
        }
        Outcome::Ok { results: None }
    }

    pub fn delete(&mut self, name: &str) -> Outcome {
        match self.feeds.remove(name) {
            Some(_) => Outcome::Ok { results: None },
            None => err(404, -3, "Entry not found."),
        }
    }

    /// `DELETE` on the collection: every feed goes (nothing references them in the emulator).
    pub fn purge(&mut self) -> Outcome {
        self.feeds.clear();
        Outcome::Ok { results: None }
    }

    /// `POST monitor/system/external-resource/dynamic`: checks every command, then applies them in order at `now`
    /// (Unix seconds) under `limit`; returns the events they produce.
    pub fn push(&mut self, body: &Value, limit: usize, now: i64) -> Result<Vec<FeedEvent>, Outcome> {
        let Some(commands) = body.get("commands").and_then(Value::as_array) else {
            return Err(err(400, -651, "commands: required"));
        };
        let mut parsed = Vec::with_capacity(commands.len());
        for command in commands {
            let name = command.get("name").and_then(Value::as_str);
            let op = command.get("command").and_then(Value::as_str).and_then(PushOp::parse);
            let entries: Option<Vec<String>> = match command.get("entries") {
                None | Some(Value::Null) => Some(Vec::new()),
                Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(str::to_string)).collect(),
                Some(_) => None,
            };
            let (Some(name), Some(op), Some(entries)) = (name, op, entries) else {
                return Err(err(400, -651, "commands: each needs name, command (add|remove|snapshot), entries"));
            };
            match self.feeds.get(name) {
                None => return Err(err(404, -3, "Entry not found.")),
                Some(r) if !r.is_push() => return Err(err(400, -651, "update-method is not push")),
                Some(_) => {}
            }
            parsed.push((name.to_string(), op, entries));
        }
        let mut events = Vec::new();
        for (name, op, entries) in parsed {
            if let Some(r) = self.feeds.get_mut(&name) {
                events.extend(r.state.pushed(&name, op, &entries, limit, now));
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn feed(name: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "type": "address", "resource": "https://127.0.0.1/feed.txt"});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
            b.extend(extra);
        }
        body
    }

    fn code(outcome: &Outcome) -> Option<(u16, Option<i64>)> {
        match outcome {
            Outcome::Err { http, code, .. } => Some((*http, *code)),
            Outcome::Ok { .. } => None,
        }
    }

    #[test]
    fn a_new_feed_has_fortios_defaults_and_its_fields() {
        let mut table = Resources::default();
        assert_eq!(code(&table.create(&feed("misp", json!({"refresh-rate": "60"})), 500)), None);
        let shown = table.get("misp").expect("created").shown();
        assert_eq!(shown["type"], "address");
        assert_eq!(shown["refresh-rate"], 60);
        assert_eq!(shown["update-method"], "feed");
        assert_eq!(shown["server-identity-check"], "none");
        assert_eq!(shown["status"], "enable");
        assert_eq!(shown["password"], "");
        assert_eq!(shown["uuid"].as_str().map(str::len), Some(36));
        let default = table.create(&json!({"name": "cat", "resource": "https://127.0.0.1/c"}), 500);
        assert_eq!(code(&default), None);
        assert_eq!(table.get("cat").expect("created").shown()["type"], "category");
        assert_ne!(table.get("cat").unwrap().shown()["uuid"], shown["uuid"]);
    }

    #[test]
    fn bad_values_are_refused_with_651_and_duplicates_with_5() {
        let mut table = Resources::default();
        let bad = [
            feed("", json!({})),
            feed(&"n".repeat(36), json!({})),
            feed("a\"b", json!({})),
            json!({"name": "x"}),
            feed("x", json!({"resource": ""})),
            feed("x", json!({"resource": "h".repeat(512)})),
            feed("x", json!({"type": "ipmask"})),
            feed("x", json!({"update-method": "pull"})),
            feed("x", json!({"server-identity-check": "strict"})),
            feed("x", json!({"status": "on"})),
            feed("x", json!({"refresh-rate": 0})),
            feed("x", json!({"refresh-rate": 43_201})),
            feed("x", json!({"category": "abc"})),
            feed("x", json!({"password": 7})),
        ];
        for body in bad {
            assert_eq!(code(&table.create(&body, 500)), Some((424, Some(-651))), "{body}");
        }
        assert!(table.names().is_empty());
        assert_eq!(code(&table.create(&feed(&"n".repeat(35), json!({"refresh-rate": 43_200})), 500)), None);
        assert_eq!(code(&table.create(&feed(&"n".repeat(35), json!({})), 424)), Some((424, Some(-5))));
        assert_eq!(code(&table.update(&"n".repeat(35), &json!({"type": "bogus"}))), Some((424, Some(-651))));
        assert_eq!(code(&table.update("missing", &json!({}))), Some((404, Some(-3))));
        assert_eq!(code(&table.delete("missing")), Some((404, Some(-3))));
    }

    #[test]
    fn the_password_is_write_only() {
        let mut table = Resources::default();
        table.create(&feed("f", json!({"username": "fgt", "password": "s3cret"})), 500);
        let shown = table.get("f").unwrap().shown();
        assert_eq!(shown["password"], MASKED_PASSWORD);
        assert!(!Value::Object(shown.clone()).to_string().contains("s3cret"));
        assert_eq!(table.get("f").unwrap().credentials(), Some(("fgt", "s3cret")));
        // PUT of what a GET returned keeps the password; a new one replaces it.
        table.update("f", &Value::Object(shown));
        assert_eq!(table.get("f").unwrap().credentials(), Some(("fgt", "s3cret")));
        table.update("f", &json!({"password": "other"}));
        assert_eq!(table.get("f").unwrap().credentials(), Some(("fgt", "other")));
    }

    #[test]
    fn push_applies_to_push_feeds_only_and_all_or_nothing() {
        let mut table = Resources::default();
        table.create(&feed("pushed", json!({"update-method": "push"})), 500);
        table.create(&feed("pulled", json!({})), 500);
        let add = json!({"commands": [{"name": "pushed", "command": "add", "entries": ["192.0.2.1", "192.0.2.2"]}]});
        let events = table.push(&add, 10, 100).expect("pushed");
        assert_eq!(events, [FeedEvent::Updated { feed: "pushed".into(), count: 2 }]);
        let refusals = [
            (json!({}), (400, Some(-651))),
            (json!({"commands": [{"name": "pushed", "command": "append", "entries": []}]}), (400, Some(-651))),
            (json!({"commands": [{"name": "pushed", "command": "add", "entries": [1]}]}), (400, Some(-651))),
            (json!({"commands": [{"name": "pulled", "command": "add", "entries": ["192.0.2.9"]}]}), (400, Some(-651))),
            (json!({"commands": [{"name": "nope", "command": "add", "entries": ["192.0.2.9"]}]}), (404, Some(-3))),
            // A good command before a bad one is not applied either.
            (
                json!({"commands": [{"name": "pushed", "command": "snapshot", "entries": []},
                                     {"name": "nope", "command": "add", "entries": []}]}),
                (404, Some(-3)),
            ),
        ];
        for (body, want) in refusals {
            let refusal = table.push(&body, 10, 200).expect_err("refused");
            assert_eq!(code(&refusal), Some(want), "{body}");
        }
        let held = table.get("pushed").unwrap().state.list.entries().to_vec();
        assert_eq!(held, ["192.0.2.1", "192.0.2.2"]);
        assert!(table.get("pulled").unwrap().state.list.entries().is_empty());
    }
}
