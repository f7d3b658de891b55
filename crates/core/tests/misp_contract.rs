//! Contract tests: the emulator's raw responses checked against the shapes recorded in
//! `shared/reference/misp-rest.md` (taken from MISP 2.5 source). If MISP's real answers are what the reference
//! says, and the emulator answers the same, the client tests against the emulator mean something.
//!
//! These use bare `reqwest`, not `misp::Client`, so they test the wire, not our parsing.

use fortimisp_testkit::misp::{AttributeSpec, Fault, MispEmulator, Role, DEFAULT_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const AUTH_FAILED: &str = "Authentication failed. Please make sure you pass the API key of an API enabled user \
                           along in the Authorization header.";

struct Raw {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not json ({e}): {}", self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn call(
    emulator: &MispEmulator,
    method: Method,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> Raw {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{}", emulator.url(), path))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json");
    if let Some((name, value)) = auth {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("request reaches the emulator");
    Raw { status: response.status(), headers: response.headers().clone(), text: response.text().await.expect("body") }
}

async fn post(emulator: &MispEmulator, path: &str, body: Value) -> Raw {
    call(emulator, Method::POST, path, Some(("Authorization", DEFAULT_KEY)), Some(&body.to_string())).await
}

async fn seeded() -> MispEmulator {
    let emulator = MispEmulator::start().await.expect("emulator");
    let event = emulator.add_event("c2", true, &["tlp:white"]);
    emulator.add_attribute(event, AttributeSpec::new("ip-src|port", "198.51.100.7|443").timestamp(1617875568));
    emulator.add_attribute(event, AttributeSpec::new("domain|ip", "Evil.Example|198.51.100.7"));
    emulator.add_attribute(event, AttributeSpec::new("ip-dst", "198.51.100.0/24"));
    emulator.add_attribute(event, AttributeSpec::new("ip-dst", "2001:db8::7"));
    emulator
}

#[tokio::test]
async fn rest_search_envelope_fields_and_headers() {
    let emulator = seeded().await;
    let raw = post(&emulator, "/attributes/restSearch", json!({"value": "198.51.100.7", "returnFormat": "json"})).await;
    assert_eq!(raw.status, StatusCode::OK);
    assert!(raw.text.starts_with(r#"{"response": {"Attribute": ["#), "{}", raw.text);
    let body = raw.json();
    let attributes = body["response"]["Attribute"].as_array().expect("response.Attribute list");
    assert_eq!(attributes.len(), 2, "both composites match by their IP half");
    let first = &attributes[0];
    for field in ["id", "event_id", "timestamp", "type", "category", "uuid", "value", "object_id", "distribution"] {
        assert!(first[field].is_string(), "{field} is a string: {first}");
    }
    for field in ["to_ids", "deleted"] {
        assert!(first[field].is_boolean(), "{field} is a boolean: {first}");
    }
    assert_eq!(first["value"], "198.51.100.7|443");
    assert_eq!(first["timestamp"], "1617875568");
    assert!(first["Event"]["uuid"].is_string() && first["Event"]["id"].is_string());
    assert_eq!(raw.header("x-result-count"), Some("2"));
    assert_eq!(raw.header("x-skipped-elements-count"), Some("0"));
    assert_eq!(raw.header("x-export-module-used"), Some("json"));
    assert_eq!(raw.header("x-response-format"), Some("json"));
    assert!(raw.header("content-type").is_some_and(|c| c.starts_with("application/json")));
}

#[tokio::test]
async fn rest_search_value_semantics() {
    let emulator = seeded().await;
    let cases: Vec<(Value, usize, &str)> = vec![
        (json!({"value": "198.51.100.7|443"}), 0, "the full composite value finds nothing (MISP#8527)"),
        (json!({"value": "198.51.100.9"}), 0, "no CIDR containment (MISP#7212)"),
        (json!({"value": "198.51.100.0/24"}), 1, "a CIDR matches only the identical CIDR attribute"),
        (json!({"value": "198.51.100.0/25"}), 0, "a CIDR does not return what lies inside it"),
        (json!({"value": "%/%"}), 1, "LIKE"),
        (json!({"value": "evil.example"}), 1, "case-insensitive, either half"),
        (json!({"value": "2001:0DB8:0000::0007"}), 1, "IPv6 compressed before matching"),
        (json!({"request": {"value": ["198.51.100.7", "2001:db8::7"]}}), 3, "list, wrapped in request"),
        (json!({"value": {"OR": ["198.51.100.7"], "NOT": ["evil.example"]}}), 1, "OR/NOT dict, NOT on either half"),
        (json!({"value": "198.51.100.7&&!evil.%"}), 1, "&& and ! syntax"),
        (json!({"type": ["ip-dst"], "limit": 1, "page": 2, "order": "Attribute.id asc"}), 1, "limit/page"),
        (json!({"type": ["ip-dst"], "limit": 1, "page": 3}), 0, "past the end"),
    ];
    for (filters, count, name) in cases {
        let raw = post(&emulator, "/attributes/restSearch", filters).await;
        assert_eq!(raw.status, StatusCode::OK, "{name}");
        let got = raw.json()["response"]["Attribute"].as_array().map_or(usize::MAX, Vec::len);
        assert_eq!(got, count, "{name}");
        assert_eq!(raw.header("x-result-count"), Some(count.to_string().as_str()), "{name}");
    }
}

#[tokio::test]
async fn rest_search_bad_requests_are_400() {
    let emulator = seeded().await;
    let auth = Some(("Authorization", DEFAULT_KEY));
    let cases = [
        (Method::POST, None, "Either specify the search terms"),
        (Method::POST, Some("{}"), "Either specify the search terms"),
        (Method::GET, None, "Restsearch queries using GET and no parameters are not allowed"),
    ];
    for (method, body, message) in cases {
        let raw = call(&emulator, method.clone(), "/attributes/restSearch", auth, body).await;
        assert_eq!(raw.status, StatusCode::BAD_REQUEST, "{method} {body:?}");
        assert!(raw.json()["message"].as_str().is_some_and(|m| m.starts_with(message)), "{}", raw.text);
    }
}

#[tokio::test]
async fn auth_failure_is_403_with_misp_body() {
    let emulator = seeded().await;
    let wrong = "Z".repeat(40);
    let basic = format!("Basic {DEFAULT_KEY}");
    let bearer = format!("Bearer {DEFAULT_KEY}");
    let list = format!("{wrong},{DEFAULT_KEY}");
    let cases: Vec<(Option<(&str, &str)>, StatusCode)> = vec![
        (None, StatusCode::FORBIDDEN),
        (Some(("Authorization", wrong.as_str())), StatusCode::FORBIDDEN),
        (Some(("Authorization", basic.as_str())), StatusCode::FORBIDDEN),
        (Some(("Authorization", bearer.as_str())), StatusCode::FORBIDDEN),
        (Some(("Authorization", list.as_str())), StatusCode::OK),
        (Some(("X-MISP-AUTH", DEFAULT_KEY)), StatusCode::OK),
    ];
    for (auth, status) in cases {
        let raw = call(&emulator, Method::GET, "/servers/getVersion", auth, None).await;
        assert_eq!(raw.status, status, "{auth:?}");
        if status == StatusCode::FORBIDDEN {
            assert_eq!(raw.json(), json!({"name": AUTH_FAILED, "message": AUTH_FAILED, "url": "/servers/getVersion"}));
        }
    }
}

#[tokio::test]
async fn version_and_me_shapes() {
    let emulator = seeded().await;
    let auth = Some(("Authorization", DEFAULT_KEY));
    let version = call(&emulator, Method::GET, "/servers/getVersion", auth, None).await.json();
    for key in ["version", "pymisp_recommended_version", "perm_sync", "perm_sighting", "perm_galaxy_editor"] {
        assert!(version.get(key).is_some(), "{key}: {version}");
    }
    let me = call(&emulator, Method::GET, "/users/view/me", auth, None).await.json();
    for key in ["perm_sighting", "perm_site_admin", "enforce_rate_limit", "rate_limit_count"] {
        assert!(me["Role"].get(key).is_some(), "Role.{key}: {me}");
    }
    assert!(me["User"]["id"].is_string() && me["UserSetting"].is_array());
}

#[tokio::test]
async fn feeds_results() {
    let emulator = seeded().await;
    type Prepare = Box<dyn Fn(&MispEmulator)>;
    let cases: Vec<(&str, Prepare, StatusCode, Value)> = vec![
        ("/feeds/fetchFromAllFeeds", Box::new(|_| {}), StatusCode::OK, json!({"result": "No feed enabled."})),
        (
            "/feeds/fetchFromAllFeeds",
            Box::new(|e| {
                e.add_feed("osint", true);
            }),
            StatusCode::OK,
            json!({"result": "Pull queued for background execution."}),
        ),
        (
            "/feeds/fetchFromFeed/1",
            Box::new(|_| {}),
            StatusCode::OK,
            json!({"result": "Pull queued for background execution."}),
        ),
        (
            "/feeds/fetchFromFeed/1",
            Box::new(|e| e.set_background_jobs(false)),
            StatusCode::OK,
            json!({"result": "Fetching the feed has successfully completed."}),
        ),
        (
            "/feeds/fetchFromFeed/7",
            Box::new(|_| {}),
            StatusCode::NOT_FOUND,
            json!({"name": "Invalid feed.", "message": "Invalid feed.", "url": "/feeds/fetchFromFeed/7"}),
        ),
    ];
    for (path, prepare, status, body) in cases {
        prepare(&emulator);
        let raw = post(&emulator, path, json!({})).await;
        assert_eq!((raw.status, raw.json()), (status, body), "{path}");
    }
}

#[tokio::test]
async fn sightings_fail_with_http_200() {
    let emulator = seeded().await;
    let miss = post(&emulator, "/sightings/add", json!({"value": "192.0.2.1", "source": "t"})).await;
    assert_eq!(miss.status, StatusCode::OK);
    assert_eq!(
        miss.json(),
        json!({"message": "Could not add the Sighting. Reason: No valid attributes found that match the criteria."})
    );
    let hit = post(&emulator, "/sightings/add", json!({"Sighting": {"values": ["198.51.100.7"], "source": "t"}})).await;
    assert_eq!(hit.status, StatusCode::OK);
    let sighting = &hit.json()["Sighting"];
    for field in ["id", "attribute_id", "event_id", "org_id", "date_sighting", "type", "source", "uuid"] {
        assert!(sighting[field].is_string(), "{field}: {sighting}");
    }
    assert_eq!(emulator.sightings().len(), 2, "every attribute with that value (either half) gets one");
}

#[tokio::test]
async fn check_value_answers_empty_array_for_no_hits() {
    let emulator = seeded().await;
    emulator.add_warninglist("RFC 1918", "cidr", &["10.0.0.0/8"]);
    let miss = post(&emulator, "/warninglists/checkValue", json!(["198.51.100.7"])).await;
    assert_eq!((miss.status, miss.text.as_str()), (StatusCode::OK, "[]"));
    let hit = post(&emulator, "/warninglists/checkValue", json!(["10.1.2.3", "198.51.100.7"])).await;
    assert_eq!(hit.json(), json!({"10.1.2.3": [{"id": "1", "name": "RFC 1918", "matched": "10.0.0.0/8"}]}));
}

#[tokio::test]
async fn rate_limit_and_server_errors() {
    let emulator = seeded().await;
    emulator.set_rate_limit(Some(1));
    let ok = post(&emulator, "/attributes/restSearch", json!({"value": "x"})).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-rate-limit-limit"), Some("1"));
    assert_eq!(ok.header("x-rate-limit-remaining"), Some("0"));
    let limited = post(&emulator, "/attributes/restSearch", json!({"value": "x"})).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.json()["name"], "Rate limit exceeded.");
    let reset: u64 = limited.header("x-rate-limit-reset").and_then(|r| r.parse().ok()).expect("reset header");
    assert!((1..=900).contains(&reset));
    // Other routes are not rate limited.
    assert_eq!(post(&emulator, "/warninglists/checkValue", json!(["x"])).await.status, StatusCode::OK);
    emulator.set_rate_limit(Some(0));
    let denied = post(&emulator, "/attributes/restSearch", json!({"value": "x"})).await;
    assert_eq!(denied.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(denied.json()["message"], "API searches are not allowed for this user role.");
    emulator.set_rate_limit(None);

    emulator.fail_next(1, Fault::html(500));
    let html = post(&emulator, "/attributes/restSearch", json!({"value": "x"})).await;
    assert_eq!(html.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(html.header("content-type").is_some_and(|c| c.starts_with("text/html")) && html.text.contains("<html>"));
    emulator.fail_next(1, Fault::json_error(500, "/attributes/restSearch"));
    let json500 = post(&emulator, "/attributes/restSearch", json!({"value": "x"})).await;
    assert_eq!(json500.json()["name"], "An Internal Error Has Occurred.");

    emulator.set_role(Role { perm_sighting: false, perm_site_admin: false, ..Role::default() });
    for path in ["/sightings/add", "/feeds/fetchFromAllFeeds"] {
        let raw = post(&emulator, path, json!({"value": "198.51.100.7"})).await;
        assert_eq!(raw.status, StatusCode::FORBIDDEN, "{path}");
    }
}

fn object_keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

/// `users/view/me` as MISP 2.5.1 answers it (`UsersController::view`): the whole `User` row (no `authkey`, no
/// `server_id`, `password`/`totp` masked), the whole `Role` (no `perm_full`), `UserSetting` and `Organisation`.
#[tokio::test]
async fn me_has_the_full_user_role_and_organisation() {
    let emulator = seeded().await;
    let me = call(&emulator, Method::GET, "/users/view/me", Some(("Authorization", DEFAULT_KEY)), None).await.json();
    assert_eq!(object_keys(&me).len(), 4, "{me}");
    let user = &me["User"];
    for key in ["id", "org_id", "email", "role_id", "disabled", "termsaccepted", "change_pw", "last_api_access"] {
        assert!(user.get(key).is_some(), "User.{key}: {user}");
    }
    assert!(user.get("authkey").is_none() && user.get("server_id").is_none(), "{user}");
    assert_eq!((user["password"].as_str(), user["id"].as_str()), (Some("*****"), Some("1")));
    assert_eq!(user["disabled"], false);
    let role = &me["Role"];
    assert!(object_keys(role).len() >= 35, "every role column: {role}");
    for key in ["perm_auth", "perm_sighting", "perm_site_admin", "perm_add", "permission", "rate_limit_count"] {
        assert!(role.get(key).is_some(), "Role.{key}: {role}");
    }
    assert!(role.get("perm_full").is_none());
    assert!(role["rate_limit_count"].is_string() && role["perm_auth"].is_boolean());
    let org = &me["Organisation"];
    assert_eq!(org["id"], user["org_id"]);
    assert!(org["uuid"].is_string() && org["name"].is_string() && org["local"] == true, "{org}");
    assert_eq!(me["UserSetting"], json!([]));

    emulator.set_role(Role::read_only("fortimisp"));
    let me = call(&emulator, Method::GET, "/users/view/me", Some(("Authorization", DEFAULT_KEY)), None).await.json();
    assert_eq!((me["Role"]["name"].as_str(), me["Role"]["permission"].as_str()), (Some("fortimisp"), Some("0")));
    assert_eq!(me["Role"]["perm_sighting"], false);
}

/// A role without "Auth key access" cannot use its key: MISP answers as for a wrong key.
#[tokio::test]
async fn a_role_without_auth_key_access_is_refused() {
    let emulator = seeded().await;
    emulator.set_role(Role { perm_auth: false, ..Role::default() });
    let raw = call(&emulator, Method::GET, "/servers/getVersion", Some(("Authorization", DEFAULT_KEY)), None).await;
    assert_eq!(raw.status, StatusCode::FORBIDDEN);
    assert_eq!(raw.json()["message"], AUTH_FAILED);
}

/// `attributes/describeTypes.json` (PyMISP reads it at every start and logs an ERROR when it is missing).
#[tokio::test]
async fn describe_types_shape() {
    let emulator = seeded().await;
    for path in ["/attributes/describeTypes.json", "/attributes/describeTypes"] {
        let raw = call(&emulator, Method::GET, path, Some(("Authorization", DEFAULT_KEY)), None).await;
        assert_eq!(raw.status, StatusCode::OK, "{path}");
        let result = &raw.json()["result"];
        assert_eq!(object_keys(result).len(), 4, "{result}");
        let types = result["types"].as_array().expect("types");
        assert!(types.contains(&json!("ip-src")) && types.contains(&json!("ip-dst|port")), "{types:?}");
        assert_eq!(result["sane_defaults"]["ip-dst"], json!({"default_category": "Network activity", "to_ids": 1}));
        assert!(result["categories"].as_array().expect("categories").contains(&json!("Network activity")));
        let network = result["category_type_mappings"]["Network activity"].as_array().expect("mapping");
        assert!(network.contains(&json!("ip-src")));
    }
}

/// Feeds index, view and cache (`FeedsController`, MISP 2.5.1): `[{"Feed": {...}}]` with string ids, boolean
/// flags and `cache_timestamp` (`false` until cached); view 404 `Invalid Feed.`; cacheFeeds is site admin only and
/// answers `saveSuccessResponse`.
#[tokio::test]
async fn feeds_index_view_and_cache() {
    let emulator = seeded().await;
    let osint = emulator.add_feed("osint", true);
    let other = emulator.add_feed("other", false);
    emulator.set_feed_caching(osint, true);
    let auth = Some(("Authorization", DEFAULT_KEY));
    for path in ["/feeds/index", "/feeds"] {
        let index = call(&emulator, Method::GET, path, auth, None).await.json();
        let feeds = index.as_array().unwrap_or_else(|| panic!("{path}: array: {index}"));
        assert_eq!(feeds.len(), 2, "{path}");
        let first = &feeds[0]["Feed"];
        assert_eq!((first["id"].as_str(), first["name"].as_str()), (Some("1"), Some("osint")), "{path}");
        for key in ["provider", "url", "source_format", "enabled", "caching_enabled", "distribution", "settings"] {
            assert!(first.get(key).is_some(), "{path}: Feed.{key}");
        }
        assert_eq!((first["enabled"].as_bool(), first["cache_timestamp"].as_bool()), (Some(true), Some(false)));
    }
    let view = call(&emulator, Method::GET, &format!("/feeds/view/{other}"), auth, None).await;
    assert_eq!(view.status, StatusCode::OK);
    let view = view.json();
    assert_eq!((view["Feed"]["name"].as_str(), view["Feed"]["enabled"].as_bool()), (Some("other"), Some(false)));
    assert!(view["Feed"]["coverage_by_other_feeds"].is_string());
    let missing = call(&emulator, Method::GET, "/feeds/view/99", auth, None).await;
    assert_eq!((missing.status, missing.json()["message"].clone()), (StatusCode::NOT_FOUND, json!("Invalid Feed.")));

    let cache = post(&emulator, "/feeds/cacheFeeds/all", json!({})).await;
    assert_eq!(
        (cache.status, cache.json()),
        (
            StatusCode::OK,
            json!({"saved": true, "success": true, "name": "Feed caching job initiated.",
                   "message": "Feed caching job initiated.", "url": "/feeds/cacheFeed"})
        )
    );
    let index = call(&emulator, Method::GET, "/feeds/index", auth, None).await.json();
    assert!(index[0]["Feed"]["cache_timestamp"].is_i64(), "cached: {}", index[0]);
    assert_eq!(index[1]["Feed"]["cache_timestamp"], false, "caching disabled: not cached");

    emulator.set_role(Role::read_only("fortimisp"));
    let refused = post(&emulator, "/feeds/cacheFeeds/freetext", json!({})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["message"], "You do not have permission to use this functionality.");
    let index = call(&emulator, Method::GET, "/feeds/index", auth, None).await;
    assert_eq!(index.status, StatusCode::OK, "the index is open to every role");
}

/// `/sightings/index`: a flat list of the sightings, each with its attribute's uuid and the organisation.
#[tokio::test]
async fn sightings_index_lists_what_was_added() {
    let emulator = seeded().await;
    let empty = post(&emulator, "/sightings/index", json!({})).await;
    assert_eq!((empty.status, empty.json()), (StatusCode::OK, json!([])));
    let added = post(&emulator, "/sightings/add", json!({"value": "2001:db8::7", "source": "fortimisp"})).await;
    let added = added.json()["Sighting"].clone();
    let index = post(&emulator, "/sightings/index", json!({})).await.json();
    let list = index.as_array().expect("array");
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(
        (&s["id"], &s["attribute_id"], &s["source"]),
        (&added["id"], &added["attribute_id"], &json!("fortimisp"))
    );
    let attribute_id: u64 = s["attribute_id"].as_str().and_then(|v| v.parse().ok()).expect("attribute id");
    let attribute = emulator.attribute(attribute_id).expect("attribute");
    assert_eq!(s["attribute_uuid"], attribute.uuid().as_ref());
    assert!(s["Organisation"]["name"].is_string() && s.get("Sighting").is_none(), "{s}");
}
