//! The FortiGate emulator's external threat feeds end to end: the emulator over TLS, a feed object created through
//! its REST API, a feed file served by a tiny HTTPS server with basic auth (a private CA from `testkit::tls`), the
//! box's fetch (`pull_now`), the entry-list status, the entry limit, the feed events on a UDP socket (parsed with
//! the daemon's own syslog parser), the push API, and the admin-profile permission.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fortimisp_testkit::fortigate::{
    Access, AdminProfile, EmulatorConfig, FortiGateEmulator, PullError, PullOutcome, DEFAULT_FEED_ENTRY_LIMIT,
};
use fortimisp_testkit::tls::{self, TestCa};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, UdpSocket};
use tower::ServiceExt;

/// `Authorization` the feed server expects: basic `fortigate:feed-secret`.
const BASIC: &str = "Basic Zm9ydGlnYXRlOmZlZWQtc2VjcmV0";
const WAIT: Duration = Duration::from_secs(10);

/// The feed file and its version (the ETag), what the tiny feed server serves.
#[derive(Default)]
struct FeedFile {
    body: String,
    version: u64,
    /// Requests answered 200 or 304 (authorised ones).
    served: u64,
}

#[derive(Clone, Default)]
struct FeedServer(Arc<Mutex<FeedFile>>);

impl FeedServer {
    fn set(&self, body: &str) {
        let mut file = self.0.lock().unwrap();
        file.body = body.to_string();
        file.version += 1;
    }
}

async fn serve_feed(State(server): State<FeedServer>, headers: HeaderMap) -> Response {
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(BASIC) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"feed\"")], "").into_response();
    }
    let mut file = server.0.lock().unwrap();
    file.served += 1;
    let etag = format!("\"v{}\"", file.version);
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (StatusCode::OK, [(header::ETAG, etag), (header::CONTENT_TYPE, "text/plain".into())], file.body.clone())
        .into_response()
}

/// Serves `/feed.txt` over HTTPS with `cert` until the test ends; returns its URL.
async fn start_feed_server(cert: &tls::ServerCert, server: FeedServer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/feed.txt", axum::routing::get(serve_feed)).with_state(server);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(cert));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    format!("https://{addr}/feed.txt")
}

/// The emulator over TLS, a REST client trusting its CA, a feed server with its file, and a syslog socket.
struct Lab {
    emu: FortiGateEmulator,
    http: reqwest::Client,
    feed: FeedServer,
    feed_url: String,
    syslog: UdpSocket,
    ca_pem: String,
}

impl Lab {
    async fn start() -> Lab {
        let ca = TestCa::new();
        let emu = FortiGateEmulator::start_tls(EmulatorConfig::default(), tls::server_config(&ca.issue_server_cert()))
            .await
            .unwrap();
        let feed = FeedServer::default();
        let feed_url = start_feed_server(&ca.issue_server_cert(), feed.clone()).await;
        let syslog = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        emu.set_feed_ca(ca.ca_pem.as_bytes());
        emu.set_event_syslog(syslog.local_addr().unwrap());
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Lab { emu, http, feed, feed_url, syslog, ca_pem: ca.ca_pem.clone() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.emu.url())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(self.emu.token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the emulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON envelope"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// Creates the pulled feed `name` on the served file, with the server's credentials.
    async fn create_pulled(&self, name: &str) {
        let body = json!({"name": name, "type": "address", "resource": self.feed_url, "refresh-rate": 5,
                          "username": "fortigate", "password": "feed-secret", "server-identity-check": "full"});
        let (status, env) = self.post("/api/v2/cmdb/system/external-resource", body).await;
        assert_eq!((status, &env["status"]), (200, &json!("success")), "{env}");
    }

    async fn entry_list(&self, name: &str, status_only: bool) -> Value {
        let suffix = if status_only { "&status_only=true" } else { "" };
        let (status, env) =
            self.get(&format!("/api/v2/monitor/system/external-resource/entry-list?mkey={name}{suffix}")).await;
        assert_eq!(status, 200, "{env}");
        env["results"].clone()
    }

    async fn push(&self, commands: Value) -> (u16, Value) {
        self.post("/api/v2/monitor/system/external-resource/dynamic", json!({"commands": commands})).await
    }

    /// The next `n` syslog datagrams (bounded wait).
    async fn events(&self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 4096];
        while lines.len() < n {
            let len = tokio::time::timeout(WAIT, self.syslog.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no feed event after {lines:?}"))
                .unwrap();
            lines.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        lines
    }
}

/// The fields of a feed event the daemon reads, through the daemon's own parser.
fn parsed(line: &str) -> Vec<(String, Option<String>)> {
    let record = fortimisp_core::syslog::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
    ["logid", "type", "subtype", "level", "name", "count", "dropped", "limit"]
        .iter()
        .map(|k| (k.to_string(), record.get(k).map(str::to_string)))
        .collect()
}

fn field(line: &str, key: &str) -> Option<String> {
    parsed(line).into_iter().find(|(k, _)| k == key).and_then(|(_, v)| v)
}

fn entries(results: &Value) -> Vec<(String, bool)> {
    results["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| (e["entry"].as_str().unwrap().to_string(), e["valid"].as_bool().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_pulled_feed_loads_over_https_with_basic_auth_and_reports_its_entries() {
    let lab = Lab::start().await;
    lab.feed.set("# fortimisp\r\n198.51.100.7\r\n203.0.113.0/24\r\n\r\nnot-an-address\r\n2001:db8::1\r\n");
    lab.create_pulled("misp-block").await;

    // The object reads back with FortiOS's defaults and no clear-text password.
    let (status, env) = lab.get("/api/v2/cmdb/system/external-resource/misp-block").await;
    assert_eq!(status, 200);
    let object = &env["results"][0];
    assert_eq!((object["type"].as_str(), object["update-method"].as_str()), (Some("address"), Some("feed")));
    assert_eq!(object["password"], "ENC XXXX");
    assert!(!env.to_string().contains("feed-secret"), "{env}");

    let before = lab.entry_list("misp-block", true).await;
    assert_eq!(before["resource_file_status"], "not-fetched");
    assert_eq!(before["last_content_update_time"], 0);

    let outcome = lab.emu.pull_now("misp-block").await.expect("fetched");
    assert_eq!(outcome, PullOutcome::Loaded { count: 4, dropped: 0, changed: true });
    let results = lab.entry_list("misp-block", false).await;
    assert_eq!(results["resource_file_status"], "downloaded");
    assert_eq!((results["valid_count"].as_u64(), results["invalid_count"].as_u64()), (Some(3), Some(1)));
    assert_eq!(results["limit"].as_u64(), Some(DEFAULT_FEED_ENTRY_LIMIT as u64));
    assert_eq!(results["overflow"], false);
    assert!(results["last_content_update_time"].as_i64().unwrap() > 0);
    assert_eq!(
        entries(&results),
        [
            ("198.51.100.7".to_string(), true),
            ("203.0.113.0/24".to_string(), true),
            ("not-an-address".to_string(), false),
            ("2001:db8::1".to_string(), true)
        ]
    );
    assert!(lab.entry_list("misp-block", true).await.get("entries").is_none());

    // Updated (new content) then loaded, both readable by the daemon's parser.
    let lines = lab.events(2).await;
    assert_eq!(field(&lines[0], "logid").as_deref(), Some("0100022220"), "{lines:?}");
    assert_eq!(field(&lines[1], "logid").as_deref(), Some("0100022222"), "{lines:?}");
    for line in &lines {
        assert_eq!(field(line, "type").as_deref(), Some("event"), "{line}");
        assert_eq!(field(line, "subtype").as_deref(), Some("system"), "{line}");
        assert_eq!(field(line, "name").as_deref(), Some("misp-block"), "{line}");
        assert_eq!(field(line, "count").as_deref(), Some("4"), "{line}");
    }

    // Unchanged file: the ETag comes back, 304, the list stays and nothing is logged.
    assert_eq!(lab.emu.pull_now("misp-block").await, Ok(PullOutcome::NotModified));
    let view = lab.emu.feed("misp-block").expect("feed");
    assert_eq!((view.fetches, view.http_status_code, view.entries.len()), (2, 304, 4));
    assert_eq!(lab.emu.feed_fetches("misp-block"), 2);
    assert_eq!(lab.emu.feed_events().len(), 2, "no event for a 304");
}

#[tokio::test]
async fn entries_beyond_the_limit_are_dropped_from_the_end_and_logged_as_overflow() {
    let lab = Lab::start().await;
    lab.feed.set("192.0.2.1\n192.0.2.2\n192.0.2.3\n192.0.2.4\n192.0.2.5\n");
    lab.create_pulled("small").await;
    lab.emu.set_feed_limit(3);
    assert_eq!(lab.emu.pull_now("small").await, Ok(PullOutcome::Loaded { count: 3, dropped: 2, changed: true }));
    let results = lab.entry_list("small", false).await;
    assert_eq!(results["overflow"], true);
    assert_eq!(results["limit"], 3);
    let held: Vec<String> = entries(&results).into_iter().map(|(e, _)| e).collect();
    assert_eq!(held, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);

    let lines = lab.events(3).await;
    let ids: Vec<Option<String>> = lines.iter().map(|l| field(l, "logid")).collect();
    assert_eq!(ids, [Some("0100022220".into()), Some("0100022222".into()), Some("0100022224".into())]);
    let overflow = &lines[2];
    assert_eq!(field(overflow, "level").as_deref(), Some("warning"));
    assert_eq!(field(overflow, "count").as_deref(), Some("3"));
    assert_eq!(field(overflow, "dropped").as_deref(), Some("2"));
    assert_eq!(field(overflow, "limit").as_deref(), Some("3"));
    assert_eq!(field(overflow, "name").as_deref(), Some("small"));
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_list_in_force() {
    let lab = Lab::start().await;
    lab.feed.set("198.51.100.7\n198.51.100.8\n");
    lab.create_pulled("kept").await;
    lab.emu.pull_now("kept").await.expect("first load");
    let loaded_at = lab.entry_list("kept", true).await["last_content_update_time"].clone();

    // Wrong password: 401 from the server; the status says so and the previous entries stay.
    let (status, env) = lab.put("/api/v2/cmdb/system/external-resource/kept", json!({"password": "wrong"})).await;
    assert_eq!(status, 200, "{env}");
    lab.feed.set("192.0.2.99\n");
    match lab.emu.pull_now("kept").await {
        Err(PullError::Fetch { status: Some(401), .. }) => {}
        other => panic!("expected a 401 failure, got {other:?}"),
    }
    let results = lab.entry_list("kept", false).await;
    assert_eq!(results["resource_file_status"], "fetch-failed");
    assert_eq!(results["http_status_code"], 401);
    assert_eq!(results["last_content_update_time"], loaded_at);
    let held: Vec<String> = entries(&results).into_iter().map(|(e, _)| e).collect();
    assert_eq!(held, ["198.51.100.7", "198.51.100.8"]);
    let view = lab.emu.feed("kept").unwrap();
    assert!(view.last_error.is_some());
    assert_eq!(view.fetches, 2);

    // The right password again: the new file loads.
    lab.put("/api/v2/cmdb/system/external-resource/kept", json!({"password": "feed-secret"})).await;
    assert_eq!(lab.emu.pull_now("kept").await, Ok(PullOutcome::Loaded { count: 1, dropped: 0, changed: true }));
    assert_eq!(lab.emu.feed("kept").unwrap().resource_file_status, "downloaded");
}

#[tokio::test]
async fn the_feed_server_certificate_is_verified_against_the_given_ca() {
    let lab = Lab::start().await;
    lab.feed.set("198.51.100.7\n");
    lab.create_pulled("tls").await;
    // A CA that did not issue the feed server's certificate: the handshake fails, nothing is served.
    lab.emu.set_feed_ca(TestCa::new().ca_pem.as_bytes());
    match lab.emu.pull_now("tls").await {
        Err(PullError::Fetch { status: None, .. }) => {}
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(lab.feed.0.lock().unwrap().served, 0);
    assert_eq!(lab.emu.feed("tls").unwrap().resource_file_status, "fetch-failed");
    lab.emu.set_feed_ca(lab.ca_pem.as_bytes());
    assert!(lab.emu.pull_now("tls").await.is_ok());
}

#[tokio::test]
async fn the_poller_fetches_pulled_feeds_at_the_interval_set() {
    let lab = Lab::start().await;
    lab.feed.set("198.51.100.7\n");
    lab.create_pulled("polled").await;
    let (_, env) = lab
        .post(
            "/api/v2/cmdb/system/external-resource",
            json!({"name": "off", "type": "address", "resource": lab.feed_url, "status": "disable"}),
        )
        .await;
    assert_eq!(env["status"], "success");
    assert_eq!(lab.emu.feed_fetches("polled"), 0, "polling is off by default");
    lab.emu.set_feed_poll_interval(Duration::from_millis(20));
    tokio::time::timeout(WAIT, lab.emu.wait_feed_fetches("polled", 3)).await.expect("three polls");
    assert_eq!(lab.emu.feed("polled").unwrap().entries, ["198.51.100.7"]);
    assert_eq!(lab.emu.feed_fetches("off"), 0, "a disabled feed is not fetched");
    lab.emu.set_feed_poll_interval(Duration::ZERO);
}

#[tokio::test]
async fn push_commands_add_remove_and_replace_entries() {
    let lab = Lab::start().await;
    let body = json!({"name": "pushed", "type": "address", "update-method": "push",
                      "resource": "https://127.0.0.1/placeholder"});
    let (status, env) = lab.post("/api/v2/cmdb/system/external-resource", body).await;
    assert_eq!(status, 200, "{env}");
    let held = |results: Value| -> Vec<String> { entries(&results).into_iter().map(|(e, _)| e).collect() };

    let add = json!([{"name": "pushed", "command": "add", "entries": ["198.51.100.7", "203.0.113.0/24", "bogus"]}]);
    let (status, env) = lab.push(add).await;
    assert_eq!((status, env["status"].as_str()), (200, Some("success")), "{env}");
    let results = lab.entry_list("pushed", false).await;
    assert_eq!(held(results.clone()), ["198.51.100.7", "203.0.113.0/24", "bogus"]);
    assert_eq!((results["valid_count"].as_u64(), results["invalid_count"].as_u64()), (Some(2), Some(1)));
    assert!(results["last_content_update_time"].as_i64().unwrap() > 0);

    let remove = json!([{"name": "pushed", "command": "remove", "entries": ["bogus", "192.0.2.200"]}]);
    assert_eq!(lab.push(remove).await.0, 200);
    assert_eq!(held(lab.entry_list("pushed", false).await), ["198.51.100.7", "203.0.113.0/24"]);

    let snapshot = json!([{"name": "pushed", "command": "snapshot", "entries": ["2001:db8::7"]}]);
    assert_eq!(lab.push(snapshot).await.0, 200);
    assert_eq!(held(lab.entry_list("pushed", false).await), ["2001:db8::7"]);

    // Each change is a 0100022220 on the syslog stream.
    let lines = lab.events(3).await;
    for line in &lines {
        assert_eq!(field(line, "logid").as_deref(), Some("0100022220"), "{line}");
        assert_eq!(field(line, "name").as_deref(), Some("pushed"), "{line}");
    }
    assert_eq!(field(&lines[2], "count").as_deref(), Some("1"));

    // An unknown feed, a pulled feed, a bad command: refused, nothing applied.
    let (status, env) = lab.push(json!([{"name": "nope", "command": "add", "entries": ["192.0.2.1"]}])).await;
    assert_eq!((status, env["error"].as_i64()), (404, Some(-3)), "{env}");
    lab.create_pulled("pulled").await;
    let (status, env) = lab.push(json!([{"name": "pulled", "command": "add", "entries": ["192.0.2.1"]}])).await;
    assert_eq!((status, env["error"].as_i64()), (400, Some(-651)), "{env}");
    let (status, _) = lab.push(json!([{"name": "pushed", "command": "append", "entries": []}])).await;
    assert_eq!(status, 400);
    assert_eq!(held(lab.entry_list("pushed", false).await), ["2001:db8::7"]);
    assert!(lab.emu.feed("pulled").unwrap().entries.is_empty());
}

#[tokio::test]
async fn the_table_follows_fortios_rules_and_answers_schema_and_defaults() {
    let lab = Lab::start().await;
    lab.create_pulled("dup").await;
    let body = json!({"name": "dup", "type": "address", "resource": lab.feed_url});
    let (status, env) = lab.post("/api/v2/cmdb/system/external-resource", body).await;
    assert_eq!((status, env["error"].as_i64()), (500, Some(-5)), "{env}");
    let bad = json!({"name": "bad", "type": "ipmask", "resource": lab.feed_url});
    let (status, env) = lab.post("/api/v2/cmdb/system/external-resource", bad).await;
    assert_eq!((status, env["error"].as_i64()), (424, Some(-651)), "{env}");
    let (_, env) = lab.get("/api/v2/cmdb/system/external-resource?action=schema").await;
    assert_eq!(env["results"]["children"]["name"]["size"], 35);
    let (_, env) = lab.get("/api/v2/cmdb/system/external-resource?action=default").await;
    assert_eq!(env["results"]["refresh-rate"], 5);
    assert_eq!(env["results"]["type"], "category");
    let (status, env) = lab.get("/api/v2/cmdb/system/external-resource/missing").await;
    assert_eq!((status, env.get("error")), (404, None));
    let (status, env) = lab.get("/api/v2/monitor/system/external-resource/entry-list?mkey=missing").await;
    assert_eq!((status, env["error"].as_i64()), (404, Some(-3)));
    let (status, env) = lab.call(reqwest::Method::DELETE, "/api/v2/cmdb/system/external-resource/dup", None).await;
    assert_eq!(status, 200, "{env}");
    assert!(lab.emu.feed("dup").is_none());
}

#[tokio::test]
async fn a_profile_without_the_system_group_gets_403() {
    let lab = Lab::start().await;
    lab.create_pulled("guarded").await;
    let push = json!([{"name": "guarded", "command": "add", "entries": ["192.0.2.1"]}]);
    let body = json!({"name": "other", "type": "address", "resource": lab.feed_url});

    lab.emu.set_profile(AdminProfile { sysgrp: Access::None, ..AdminProfile::FULL });
    assert_eq!(lab.get("/api/v2/cmdb/system/external-resource").await.0, 403);
    assert_eq!(lab.get("/api/v2/monitor/system/external-resource/entry-list?mkey=guarded").await.0, 403);
    let (status, env) = lab.push(push.clone()).await;
    assert_eq!((status, env["http_status"].as_u64(), env.get("error")), (403, Some(403), None), "{env}");
    // The address tables do not need it.
    assert_eq!(lab.get("/api/v2/cmdb/firewall/address").await.0, 200);

    lab.emu.set_profile(AdminProfile::READ_ONLY);
    assert_eq!(lab.get("/api/v2/cmdb/system/external-resource").await.0, 200);
    assert_eq!(lab.get("/api/v2/monitor/system/external-resource/entry-list?mkey=guarded").await.0, 200);
    assert_eq!(lab.post("/api/v2/cmdb/system/external-resource", body.clone()).await.0, 403);
    assert_eq!(lab.push(push).await.0, 403);

    lab.emu.set_profile(AdminProfile::FULL);
    assert_eq!(lab.post("/api/v2/cmdb/system/external-resource", body).await.0, 200);
}

/// The event collector may be any address; nothing is sent (and nothing fails) without one.
#[tokio::test]
async fn events_are_kept_without_a_collector() {
    let emu = FortiGateEmulator::start(EmulatorConfig::default()).await.unwrap();
    let addr: SocketAddr = emu.addr();
    let http = reqwest::Client::new();
    let create = json!({"name": "p", "type": "address", "update-method": "push", "resource": "http://127.0.0.1/x"});
    let url = format!("http://{addr}/api/v2/cmdb/system/external-resource");
    let response = http.post(url).bearer_auth(emu.token()).json(&create).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let push = json!({"commands": [{"name": "p", "command": "add", "entries": ["192.0.2.1"]}]});
    let url = format!("http://{addr}/api/v2/monitor/system/external-resource/dynamic");
    let response = http.post(url).bearer_auth(emu.token()).json(&push).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let events = emu.feed_events();
    assert_eq!(events.len(), 1);
    assert_eq!(field(&events[0], "logid").as_deref(), Some("0100022220"));
}
