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
