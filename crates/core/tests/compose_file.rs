//! `docker-compose.yml` is how most operators run fortimisp, so its promises are tested here, together with the
//! Dockerfiles and `config/config.toml` it relies on:
//!
//! - services: `integration` and `housekeeping` always; `fortigate-emulator`, `misp-emulator` and `lab` only in the
//!   `lab` profile; `prometheus` and `grafana` only in the `monitoring` profile; `integration-b` and `postgres` only
//!   in the `ha` profile;
//! - the ha profile: a second integration instance built, hardened and probed like the first, on its own syslog
//!   ports and state volume, with the PostgreSQL password as a secret; PostgreSQL reads that password from the same
//!   secret and is not published;
//! - the monitoring profile: Prometheus scrapes both daemons on the ports `config.toml` names, with the alert rules
//!   loaded; Grafana gets Prometheus as its data source and the dashboard; both are published on loopback only;
//! - `integration` publishes 514/udp and 514/tcp onto the port `config.toml` listens on, as a non-root user;
//! - both daemons share one named state volume holding `state.path`, read the config from a read-only bind mount,
//!   and get their API keys as compose secrets at the paths `config.toml` names (never inline);
//! - restart policies, hardening, and healthchecks identical to the images' `HEALTHCHECK` on `/readyz` (healthy
//!   means working);
//! - the setup steps (this file's header, the README, production.md §3.1) run `validate` before `up`, and their
//!   commands, run in a directory laid out like a fresh clone, create every file the services mount;
//! - the images ship binaries stripped by `scripts/split-debuginfo`, whose debug information a `symbols` stage holds;
//! - the README's Quick start warns, before its commands run, that the first build needs the network and disk.

use std::collections::BTreeSet;
use std::time::Duration;

use fortimisp_core::config::RawConfig;
use serde_norway::Value;

const COMPOSE: &str = include_str!("../../../docker-compose.yml");
const CONFIG: &str = include_str!("../../../config/config.toml");
const DOCKERIGNORE: &str = include_str!("../../../.dockerignore");
/// Each Dockerfile a service builds from, with its text.
const DOCKERFILES: &[(&str, &str)] = &[
    ("Dockerfile.integration", include_str!("../../../Dockerfile.integration")),
    ("Dockerfile.housekeeping", include_str!("../../../Dockerfile.housekeeping")),
    ("Dockerfile.testkit", include_str!("../../../Dockerfile.testkit")),
];

const DAEMONS: [&str; 2] = ["integration", "housekeeping"];
const LAB: [&str; 3] = ["fortigate-emulator", "misp-emulator", "lab"];
const MONITORING: [&str; 2] = ["prometheus", "grafana"];
const HA: [&str; 2] = ["integration-b", "postgres"];
const PROMETHEUS_YML: &str = include_str!("../../../deploy/prometheus/prometheus.yml");
const GRAFANA_DATASOURCE: &str = include_str!("../../../deploy/grafana/provisioning/datasources/prometheus.yml");
const GRAFANA_DASHBOARDS: &str = include_str!("../../../deploy/grafana/provisioning/dashboards/fortimisp.yml");
const SECRETS: [&str; 3] = ["misp_api_key", "fortigate_api_key", "postgres_password"];

fn compose() -> Value {
    serde_norway::from_str(COMPOSE).unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"))
}

fn config() -> RawConfig {
    RawConfig::parse(CONFIG).unwrap_or_else(|e| panic!("config/config.toml does not parse: {e}"))
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A sequence of scalars (missing: empty).
fn list(value: Option<&Value>) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items.iter().map(text).collect(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

/// A mapping of scalars, or a `KEY=value` list as compose also accepts for `environment`.
fn map(value: Option<&Value>) -> Vec<(String, String)> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Mapping(m)) => {
            m.iter().map(|(k, v)| (text(k), if v.is_null() { String::new() } else { text(v) })).collect()
        }
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Some(other) => panic!("expected a mapping, got {other:?}"),
    }
}

/// One published port: (host port, container port, protocol).
fn ports(service: &Value) -> Vec<(u16, u16, String)> {
    let Some(Value::Sequence(items)) = service.get("ports") else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Value::Mapping(_) => (
                text(&item["published"]).parse().expect("ports[].published is a port"),
                text(&item["target"]).parse().expect("ports[].target is a port"),
                item.get("protocol").map(text).unwrap_or_else(|| "tcp".into()),
            ),
            short => {
                // "[host-ip:]published:target[/protocol]"
                let short = text(short);
                let (mapping, protocol) = short.split_once('/').unwrap_or((&short, "tcp"));
                let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
                assert!(parts.len() >= 2, "port `{short}` must name both the host and the container port");
                (
                    parts[1].parse().unwrap_or_else(|_| panic!("port `{short}`: bad host port")),
                    parts[0].parse().unwrap_or_else(|_| panic!("port `{short}`: bad container port")),
                    protocol.to_string(),
                )
            }
        })
        .collect()
}

/// One mount: (type, source, target, read only), from the long or the short syntax.
#[derive(Debug, PartialEq)]
struct Mount {
    kind: String,
    source: String,
    target: String,
    read_only: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
    let Some(Value::Sequence(items)) = service.get("volumes") else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Value::Mapping(_) => Mount {
                kind: text(&item["type"]),
                source: text(&item["source"]),
                target: text(&item["target"]),
                read_only: item.get("read_only").is_some_and(|v| v.as_bool() == Some(true)),
            },
            short => {
                let short = text(short);
                let parts: Vec<&str> = short.split(':').collect();
                let source = parts[0].to_string();
                let kind = if source.starts_with('.') || source.starts_with('/') { "bind" } else { "volume" };
                Mount {
                    kind: kind.into(),
                    source,
                    target: parts.get(1).expect("a mount names its target").to_string(),
                    read_only: parts.get(2).is_some_and(|o| o.split(',').any(|o| o == "ro")),
                }
            }
        })
        .collect()
}

/// The secrets a service uses, short (`- name`) or long (`- source: name`) syntax.
fn used_secrets(service: &Value) -> Vec<String> {
    let Some(Value::Sequence(items)) = service.get("secrets") else { return Vec::new() };
    items
        .iter()
        .map(|item| match item {
            Value::Mapping(_) => {
                assert!(item.get("target").is_none(), "keep secrets at /run/secrets/<name>, where config.toml looks");
                text(&item["source"])
            }
            short => text(short),
        })
        .collect()
}

/// The instructions of a Dockerfile's final stage, continuation lines joined, comments dropped.
fn final_stage(dockerfile: &str) -> Vec<String> {
    stages(dockerfile).pop().expect("a Dockerfile has a FROM")
}

/// Every stage of a Dockerfile, each starting with its `FROM`, continuation lines joined, comments dropped.
fn stages(dockerfile: &str) -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    for instruction in instructions(dockerfile) {
        match stages.last_mut() {
            Some(stage) if !instruction.starts_with("FROM ") => stage.push(instruction),
            _ => stages.push(vec![instruction]),
        }
    }
    stages
}

/// A Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

fn instruction<'a>(stage: &'a [String], name: &str) -> Option<&'a str> {
    stage.iter().rev().find_map(|i| i.strip_prefix(name).filter(|rest| rest.starts_with(' ')).map(str::trim))
}

fn dockerfile(name: &str) -> &'static str {
    DOCKERFILES.iter().find(|(n, _)| *n == name).map(|(_, text)| *text).unwrap_or_else(|| panic!("no {name}"))
}

/// The exec-form command of the final stage's `HEALTHCHECK ... CMD [...]`.
fn healthcheck_command(dockerfile: &str) -> Vec<String> {
    let stage = final_stage(dockerfile);
    let healthcheck = instruction(&stage, "HEALTHCHECK").expect("the image has a HEALTHCHECK");
    let (_, json) = healthcheck.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(json.trim()).expect("HEALTHCHECK uses the exec form (a JSON array)")
}

fn port_of(listen: &str) -> u16 {
    listen.parse::<std::net::SocketAddr>().unwrap_or_else(|_| panic!("`{listen}` is not address:port")).port()
}

#[test]
fn services_and_profiles() {
    let c = compose();
    let names: BTreeSet<String> = match &c["services"] {
        Value::Mapping(m) => m.keys().map(text).collect(),
        other => panic!("services must be a mapping, got {other:?}"),
    };
    let expected: BTreeSet<String> =
        DAEMONS.iter().chain(LAB.iter()).chain(MONITORING.iter()).chain(HA.iter()).map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
    for name in DAEMONS {
        assert!(
            list(service(&c, name).get("profiles")).is_empty(),
            "{name} must start with a plain `docker compose up`"
        );
    }
    for name in LAB {
        assert_eq!(list(service(&c, name).get("profiles")), ["lab"], "{name} must only run with `--profile lab`");
    }
    for name in MONITORING {
        assert_eq!(
            list(service(&c, name).get("profiles")),
            ["monitoring"],
            "{name} must only run with `--profile monitoring`"
        );
    }
    for name in HA {
        assert_eq!(list(service(&c, name).get("profiles")), ["ha"], "{name} must only run with `--profile ha`");
    }
    assert_eq!(list(service(&c, "lab").get("command")), ["lab", "--config", "/etc/fortimisp/lab.toml"]);
    for (name, binary) in [("fortigate-emulator", "fortigate-emulator"), ("misp-emulator", "misp-emulator")] {
        assert_eq!(list(service(&c, name).get("command")).first().map(String::as_str), Some(binary));
    }
}

#[test]
fn integration_publishes_syslog_514_over_udp_and_tcp() {
    let c = compose();
    let published = ports(service(&c, "integration"));
    // The container side must be the port config.toml listens on (and the TCP listener, when enabled, the same).
    let listen = port_of(&config().syslog.udp);
    for protocol in ["udp", "tcp"] {
        assert!(
            published.contains(&(514, listen, protocol.to_string())),
            "integration must publish 514/{protocol} onto container port {listen}: {published:?}"
        );
    }
    // The daemon runs as uid 10001 and binds the port itself: unprivileged binds must reach down to it.
    let sysctls = map(service(&c, "integration").get("sysctls"));
    let start = sysctls
        .iter()
        .find(|(k, _)| k == "net.ipv4.ip_unprivileged_port_start")
        .map(|(_, v)| v.parse::<u16>().expect("a port number"))
        .expect("integration sets net.ipv4.ip_unprivileged_port_start");
    assert!(start <= listen, "ip_unprivileged_port_start {start} does not allow binding {listen} without a capability");
    for name in ["housekeeping"].iter().chain(LAB.iter()) {
        assert!(ports(service(&c, name)).is_empty(), "{name} must not publish ports");
    }
}

#[test]
fn both_daemons_share_the_state_volume() {
    let c = compose();
    let state_path = config().state.path;
    let mut sources = BTreeSet::new();
    for name in DAEMONS {
        let state: Vec<Mount> =
            mounts(service(&c, name)).into_iter().filter(|m| m.target == "/var/lib/fortimisp").collect();
        assert_eq!(state.len(), 1, "{name} mounts /var/lib/fortimisp once");
        assert_eq!(state[0].kind, "volume", "{name}: the state is a named volume");
        assert!(!state[0].read_only, "{name}: the state volume is writable");
        assert!(c["volumes"].get(state[0].source.as_str()).is_some(), "volume `{}` is not declared", state[0].source);
        sources.insert(state[0].source.clone());
    }
    assert_eq!(sources.len(), 1, "both daemons share one state volume: {sources:?}");
    assert!(state_path.starts_with("/var/lib/fortimisp"), "state.path {state_path:?} must be on the state volume");
}

#[test]
fn config_is_mounted_read_only() {
    let c = compose();
    for name in DAEMONS {
        let expected = Mount {
            kind: "bind".into(),
            source: "./config/config.toml".into(),
            target: "/etc/fortimisp/config.toml".into(),
            read_only: true,
        };
        assert!(mounts(service(&c, name)).contains(&expected), "{name} mounts config/config.toml read-only");
        for (key, value) in map(service(&c, name).get("environment")) {
            if key == "FORTIMISP_CONFIG" {
                assert_eq!(value, "/etc/fortimisp/config.toml", "{name}: FORTIMISP_CONFIG points at the mount");
            }
        }
    }
}

#[test]
fn api_keys_are_compose_secrets() {
    let c = compose();
    let declared: BTreeSet<String> = match c.get("secrets") {
        Some(Value::Mapping(m)) => m.keys().map(text).collect(),
        other => panic!("top-level secrets must be a mapping, got {other:?}"),
    };
    assert_eq!(declared, SECRETS.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    for name in SECRETS {
        let secret = &c["secrets"][name];
        assert_eq!(secret.get("file").map(text), Some(format!("./secrets/{name}")), "secret {name} comes from a file");
        assert!(secret.get("environment").is_none(), "secret {name} must not come from an environment variable");
    }
    let mut used = BTreeSet::new();
    for name in DAEMONS.iter().chain(LAB.iter()).chain(HA.iter()) {
        for secret in used_secrets(service(&c, name)) {
            assert!(declared.contains(&secret), "{name} uses undeclared secret {secret}");
            used.insert(secret);
        }
        for (key, _) in map(service(&c, name).get("environment")) {
            assert!(!key.contains("API_KEY"), "{name}: {key} would put a key in the compose file or the shell");
        }
    }
    assert_eq!(used, declared, "every declared secret is used");
    for name in DAEMONS {
        let mut secrets = used_secrets(service(&c, name));
        secrets.sort();
        assert_eq!(secrets, ["fortigate_api_key", "misp_api_key"], "{name} needs both API keys");
    }
    let mut secrets = used_secrets(service(&c, "integration-b"));
    secrets.sort();
    assert_eq!(secrets, ["fortigate_api_key", "misp_api_key", "postgres_password"], "integration-b: keys and journal");
    // config.toml reads them where compose puts them.
    let raw = config();
    assert_eq!(raw.misp.api_key_file, Some("/run/secrets/misp_api_key".into()));
    assert_eq!(raw.fortigate.tables()[0].api_key_file, Some("/run/secrets/fortigate_api_key".into()));
    assert!(raw.misp.api_key.is_none() && raw.fortigate.tables()[0].api_key.is_none(), "no inline key in config.toml");
    // Keys must never be baked into an image.
    assert!(
        DOCKERIGNORE.lines().any(|l| l.trim().trim_end_matches('/') == "secrets"),
        ".dockerignore excludes secrets/"
    );
}

/// The ha profile's second instance is the first one again (image, config, hardening, probe, stop), on other host
/// ports and its own state volume; PostgreSQL takes its password from the secret the instances read, keeps its data
/// in a named volume and is reached on the compose network only.
#[test]
fn ha_profile_is_a_second_instance_and_postgres() {
    let c = compose();
    let (a, b) = (service(&c, "integration"), service(&c, "integration-b"));
    for key in ["build", "image", "sysctls", "environment", "read_only", "tmpfs", "cap_drop", "security_opt"] {
        assert_eq!(a.get(key), b.get(key), "integration-b: `{key}` differs from integration's");
    }
    for key in ["healthcheck", "stop_signal", "stop_grace_period", "restart", "logging"] {
        assert_eq!(a.get(key), b.get(key), "integration-b: `{key}` differs from integration's");
    }
    let (ports_a, ports_b) = (ports(a), ports(b));
    assert_eq!(ports_b.len(), ports_a.len(), "integration-b publishes syslog as integration does");
    for (host, container, protocol) in &ports_b {
        assert!(ports_a.iter().all(|(h, _, p)| (h, p) != (host, protocol)), "integration-b reuses host port {host}");
        assert!(
            ports_a.iter().any(|(_, c, p)| (c, p) == (container, protocol)),
            "integration-b: {container}/{protocol}"
        );
    }
    let state = |s: &Value| mounts(s).into_iter().find(|m| m.target == "/var/lib/fortimisp").map(|m| m.source);
    assert_ne!(state(a), state(b), "each instance keeps its own state directory");
    assert!(mounts(b).iter().any(|m| m.target == "/etc/fortimisp/config.toml" && m.read_only), "same config file");
    assert_ne!(a.get("hostname"), b.get("hostname"), "[cluster] name defaults to the host name: they must differ");

    let pg = service(&c, "postgres");
    assert_eq!(used_secrets(pg), ["postgres_password"]);
    let env = map(pg.get("environment"));
    assert!(env.contains(&("POSTGRES_PASSWORD_FILE".into(), "/run/secrets/postgres_password".into())), "{env:?}");
    assert!(ports(pg).is_empty(), "PostgreSQL is reached on the compose network only");
    let data = mounts(pg).into_iter().find(|m| m.target == "/var/lib/postgresql/data").expect("a data volume");
    assert!(data.kind == "volume" && c["volumes"].get(data.source.as_str()).is_some(), "a declared named volume");
    assert!(pg.get("healthcheck").is_some(), "integration-b waits for a healthy PostgreSQL");
}

#[test]
fn restart_policies() {
    let c = compose();
    for name in DAEMONS.iter().chain(&["fortigate-emulator", "misp-emulator"]) {
        assert_eq!(service(&c, name).get("restart").map(text).as_deref(), Some("unless-stopped"), "{name}");
    }
    assert_eq!(service(&c, "lab").get("restart").map(text).as_deref(), Some("no"), "lab is a one-shot");
}

#[test]
fn daemons_are_hardened_and_stop_in_time() {
    let c = compose();
    for name in DAEMONS {
        let s = service(&c, name);
        assert_eq!(s.get("read_only").and_then(Value::as_bool), Some(true), "{name}: read-only root filesystem");
        assert_eq!(list(s.get("cap_drop")), ["ALL"], "{name}: drop every capability");
        assert!(list(s.get("security_opt")).contains(&"no-new-privileges:true".to_string()), "{name}");
        let grace = s.get("stop_grace_period").map(text).expect("stop_grace_period is set");
        let grace = humantime::parse_duration(&grace).expect("stop_grace_period is a duration");
        // The contract promises exit within 10 s of SIGTERM; give it that plus margin before SIGKILL.
        assert!(grace > Duration::from_secs(10), "{name}: stop_grace_period {grace:?} must exceed 10 s");
    }
}

#[test]
fn healthchecks_probe_readyz_like_the_images() {
    let c = compose();
    let cfg = config();
    let ports = [port_of(&cfg.metrics.listen), port_of(&cfg.metrics.housekeeping_listen)];
    for ((name, file), metrics_port) in
        [("integration", "Dockerfile.integration"), ("housekeeping", "Dockerfile.housekeeping")].into_iter().zip(ports)
    {
        let s = service(&c, name);
        assert_eq!(s.get("build").and_then(|b| b.get("dockerfile")).map(text).as_deref(), Some(file));
        let test = list(s.get("healthcheck").and_then(|h| h.get("test")));
        assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: exec-form healthcheck");
        let command = &test[1..];
        let joined = command.join(" ");
        assert!(joined.contains("GET /readyz "), "{name}: the healthcheck GETs /readyz (ready, not only alive)");
        assert!(joined.contains(&format!("/dev/tcp/127.0.0.1/{metrics_port}")), "{name}: probes [metrics] listen");
        // Compose would interpolate a `$` (and silently drop the variable).
        assert!(!joined.contains('$'), "{name}: `$` in a compose healthcheck is interpolated by compose");
        assert_eq!(command, healthcheck_command(dockerfile(file)), "{name}: same probe as the {file} HEALTHCHECK");
    }
}

#[test]
fn images_run_unprivileged_binaries() {
    let c = compose();
    for (file, text) in DOCKERFILES {
        let stage = final_stage(text);
        let user = instruction(&stage, "USER").unwrap_or_else(|| panic!("{file}: the final stage sets USER"));
        let uid = user.split(':').next().unwrap_or_default();
        assert!(!matches!(uid, "" | "0" | "root"), "{file}: runs as root ({user})");
        assert!(instruction(&stage, "FROM").is_some_and(|from| from.starts_with("debian:bookworm-slim")), "{file}");
    }
    for (name, binary) in [("integration", "integration"), ("housekeeping", "housekeeping")] {
        let file = text(&service(&c, name)["build"]["dockerfile"]);
        let stage = final_stage(dockerfile(&file));
        let entrypoint = instruction(&stage, "ENTRYPOINT").expect("an ENTRYPOINT");
        assert_eq!(entrypoint, format!("[\"/usr/local/bin/{binary}\"]"), "{file}");
    }
    for name in LAB {
        assert_eq!(text(&service(&c, name)["build"]["dockerfile"]), "Dockerfile.testkit", "{name}");
    }
    for ignored in ["target", ".git", "secrets"] {
        assert!(DOCKERIGNORE.lines().any(|l| l.trim().trim_end_matches('/') == ignored), ".dockerignore: {ignored}/");
    }
}

// ---- setup steps: validate before up, every mounted file created ------------------------------------------------

const README: &str = include_str!("../../../README.md");
const PRODUCTION: &str = include_str!("../../../docs/production.md");
const SECRETS_GITIGNORE: &str = include_str!("../../../secrets/.gitignore");

/// The comment block at the top of docker-compose.yml.
fn compose_header() -> Vec<&'static str> {
    COMPOSE.lines().take_while(|l| l.starts_with('#')).collect()
}

/// The `sh` block of a Markdown document that starts the services (`docker compose up`): the setup steps.
fn setup_block(name: &str, markdown: &'static str) -> Vec<&'static str> {
    let mut blocks = markdown.split("```").skip(1).step_by(2);
    let block = blocks
        .find(|b| b.starts_with("sh\n") && b.contains("docker compose up"))
        .unwrap_or_else(|| panic!("{name}: no ```sh block with `docker compose up`"));
    block.lines().skip(1).collect()
}

/// Index of the first line containing `needle`.
fn position(lines: &[&str], needle: &str) -> Option<usize> {
    lines.iter().position(|l| l.contains(needle))
}

#[test]
fn setup_steps_validate_before_up() {
    for (name, lines) in [
        ("docker-compose.yml (header)", compose_header()),
        ("README.md", setup_block("README.md", README)),
        ("docs/production.md", setup_block("docs/production.md", PRODUCTION)),
    ] {
        let validate = position(&lines, "docker compose run --rm integration validate");
        let up = position(&lines, "docker compose up");
        match (validate, up) {
            (Some(validate), Some(up)) => assert!(validate < up, "{name}: `validate` must come before `up`"),
            _ => panic!("{name}: the steps must name `integration validate` ({validate:?}) and `up` ({up:?})"),
        }
    }
}

/// Commands of the setup steps the test cannot run: they need root, a container engine, an editor or the network.
fn runnable(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    !matches!(first, "sudo" | "docker" | "git" | "cd" | "$EDITOR")
}

/// Every file a service bind-mounts or a secret reads, as written (`./config/config.toml`).
fn mounted_files(c: &Value) -> BTreeSet<String> {
    let Value::Mapping(services) = &c["services"] else { panic!("services must be a mapping") };
    let mut files: BTreeSet<String> =
        services.values().flat_map(mounts).filter(|m| m.kind == "bind").map(|m| m.source).collect();
    let Value::Mapping(secrets) = &c["secrets"] else { panic!("top-level secrets must be a mapping") };
    files.extend(secrets.values().map(|s| text(&s["file"])));
    files
}

/// A fresh clone has no key files (`secrets/` ignores everything but its `.gitignore`) and every other mounted file
/// is in the repository. The key-file commands of each setup (the README's, production.md §3.1's, this file's
/// header), run with `sh` in a directory laid out like that clone, must create every mounted file, private (0600),
/// so no `docker compose` command meets a missing bind source. Skipped: `sudo`, `docker`, `git`, `cd`, `$EDITOR`.
#[cfg(unix)]
#[test]
fn setup_steps_create_every_mounted_file() {
    use std::os::unix::fs::PermissionsExt;
    let ignored: Vec<&str> = SECRETS_GITIGNORE.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(ignored, ["*", "!.gitignore"], "secrets/.gitignore keeps every key file out of git");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = mounted_files(&compose());
    assert!(files.iter().any(|f| f.starts_with("./secrets/")), "the key files are among the mounts: {files:?}");
    let header_steps: Vec<&str> =
        compose_header().into_iter().filter(|l| l.starts_with("#        ")).map(|l| &l[1..]).collect();
    for (name, lines) in [
        ("README.md", setup_block("README.md", README)),
        ("docs/production.md", setup_block("docs/production.md", PRODUCTION)),
        ("docker-compose.yml (header)", header_steps),
    ] {
        let clone = tempfile::tempdir().unwrap();
        std::fs::create_dir(clone.path().join("secrets")).unwrap();
        for file in files.iter().filter(|f| !f.starts_with("./secrets/")) {
            let (from, to) = (repo.join(file), clone.path().join(file));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            copy_tree(&from, &to).unwrap_or_else(|e| panic!("{file} is mounted but not in the repository: {e}"));
        }
        let script: String = lines.iter().filter(|l| runnable(l)).map(|l| format!("{l}\n")).collect();
        let out = std::process::Command::new("sh")
            .args(["-eu", "-c", &script])
            .current_dir(clone.path())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{name}: the steps fail:\n{script}\n{}", String::from_utf8_lossy(&out.stderr));
        for file in &files {
            let path = clone.path().join(file);
            let meta = std::fs::metadata(&path)
                .unwrap_or_else(|_| panic!("{name}: after the steps, `{file}` (mounted by compose) does not exist"));
            assert!(meta.is_dir() || meta.len() > 0, "{name}: `{file}` is empty");
            if file.starts_with("./secrets/") {
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}: `{file}` must be private");
            }
        }
    }
}

/// Copies a file, or a directory with everything in it (the monitoring profile mounts directories).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

// ---- stripped binaries ----------------------------------------------------------------------------------------

/// The script every image strips its binaries with.
const SPLIT: &str = "scripts/split-debuginfo";

/// Each image's build stage installs binaries into /out and passes every one to `scripts/split-debuginfo /symbols`;
/// a `symbols` stage (not the last, so compose builds the runtime image) holds only the debug files; the final stage
/// copies the stripped binaries and never the debug files.
#[test]
fn images_ship_stripped_binaries_and_a_symbols_stage() {
    for (file, text) in DOCKERFILES {
        let stages = stages(text);
        let build = stages
            .iter()
            .find(|s| s[0].starts_with("FROM rust:") && s[0].ends_with(" AS build"))
            .unwrap_or_else(|| panic!("{file}: no `FROM rust:... AS build` stage"));
        let run = build
            .iter()
            .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
            .unwrap_or_else(|| panic!("{file}: the build stage runs no cargo build"));
        let installed: BTreeSet<&str> =
            run.split_whitespace().filter_map(|w| w.strip_prefix("target/release/")).collect();
        assert!(!installed.is_empty(), "{file}: no target/release/<binary> installed");
        let (_, after) =
            run.split_once(SPLIT).unwrap_or_else(|| panic!("{file}: the binaries are not run through {SPLIT}"));
        let args: Vec<&str> = after.split("&&").next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(args.first(), Some(&"/symbols"), "{file}: {SPLIT} writes the debug files to /symbols");
        let stripped: BTreeSet<&str> = args[1..]
            .iter()
            .map(|a| a.strip_prefix("/out/").unwrap_or_else(|| panic!("{file}: {SPLIT} argument {a} is not in /out")))
            .collect();
        assert_eq!(stripped, installed, "{file}: every binary installed into /out is stripped");

        let symbols = stages
            .iter()
            .position(|s| s[0] == "FROM scratch AS symbols")
            .unwrap_or_else(|| panic!("{file}: no `FROM scratch AS symbols` stage"));
        assert_eq!(stages[symbols][1..], ["COPY --from=build /symbols/ /"], "{file}: the symbols stage");
        assert!(symbols + 1 < stages.len(), "{file}: the symbols stage must not be the last (compose builds the last)");
        let copies: Vec<&String> =
            stages.last().expect("a final stage").iter().filter(|i| i.starts_with("COPY --from=build ")).collect();
        assert!(!copies.is_empty(), "{file}: the final stage copies the binaries");
        for copy in copies {
            let source = copy.split_whitespace().nth(2).unwrap_or_default();
            assert!(source.starts_with("/out/"), "{file}: the final stage copies {source}, not a stripped binary");
        }
    }
    for command in ["--target symbols", "readelf -n"] {
        assert!(README.contains(command), "the README says how to get the symbols (`{command}`)");
    }
}

/// `scripts/split-debuginfo`, on a copy of this (debug-built) test executable: the binary loses its debug sections
/// but keeps its symbol table, its mode and a `.gnu_debuglink`; the `.debug` file holds the debug sections.
#[cfg(target_os = "linux")]
#[test]
fn split_debuginfo_strips_the_binary_and_keeps_the_symbols_aside() {
    use std::os::unix::fs::PermissionsExt;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("bin/app");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(&binary).unwrap().len();
    let out = std::process::Command::new("sh")
        .arg(repo.join(SPLIT))
        .arg(tmp.path().join("symbols"))
        .arg(&binary)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{SPLIT} failed: {}", String::from_utf8_lossy(&out.stderr));
    let sections = |path: &std::path::Path| {
        let out = std::process::Command::new("readelf").args(["-S", "-W"]).arg(path).output().expect("readelf runs");
        assert!(out.status.success(), "readelf {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (stripped, debug) = (sections(&binary), sections(&tmp.path().join("symbols/app.debug")));
    assert!(!stripped.contains(".debug_info"), "the binary still has .debug_info:\n{stripped}");
    assert!(stripped.contains(".symtab") && stripped.contains(".gnu_debuglink"), "symbols and debuglink:\n{stripped}");
    assert!(debug.contains(".debug_info"), "the .debug file has no .debug_info:\n{debug}");
    let after = std::fs::metadata(&binary).unwrap();
    assert!(after.len() < before / 2, "{before} bytes before, {} after", after.len());
    assert_eq!(after.permissions().mode() & 0o777, 0o755, "still executable");
}

// ---- the README's Quick start ---------------------------------------------------------------------------------

/// A new user learns, before the Quick start's commands are explained, that the first build downloads crates
/// (network access) and how much disk `target/` takes (a figure in GB), and how to work offline and get it back.
#[test]
fn quick_start_warns_about_network_and_disk() {
    let start = README.find("## Quick start").expect("README has a Quick start");
    let section = &README[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
    let before_the_tour = &section[..section.find("Then the lab:").expect("the Quick start explains the lab")];
    for needed in ["crates.io", "network", "cargo fetch", "--offline", "target/", "cargo clean"] {
        assert!(before_the_tour.contains(needed), "the Quick start must mention `{needed}` before the lab's tour");
    }
    let disk = regex::Regex::new(r"`target/` grows to about (\d+) GB").unwrap();
    let gb: u32 = disk.captures(before_the_tour).expect("a disk figure for target/ in GB")[1].parse().unwrap();
    assert!((1..100).contains(&gb), "{gb} GB");
}

// ---- the monitoring profile ----------------------------------------------------------------------------------

/// The bind mount of `service` whose target is `target`: its source, read-only.
fn bind_source(service: &Value, target: &str) -> String {
    let mount =
        mounts(service).into_iter().find(|m| m.target == target).unwrap_or_else(|| panic!("no mount at {target}"));
    assert_eq!(mount.kind, "bind", "{target} is a bind mount of a file of the repository");
    assert!(mount.read_only, "{target} is mounted read-only");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(&mount.source);
    assert!(path.exists(), "{} (mounted at {target}) exists", mount.source);
    mount.source
}

fn yaml(text: &str, name: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"))
}

#[test]
fn monitoring_profile_scrapes_both_daemons_with_the_rules() {
    let c = compose();
    let cfg = config();
    let prometheus = service(&c, "prometheus");
    assert_eq!(bind_source(prometheus, "/etc/prometheus/prometheus.yml"), "./deploy/prometheus/prometheus.yml");
    assert_eq!(
        bind_source(prometheus, "/etc/prometheus/fortimisp-rules.yml"),
        "./deploy/prometheus/fortimisp-rules.yml"
    );
    assert!(
        list(prometheus.get("command")).contains(&"--config.file=/etc/prometheus/prometheus.yml".to_string()),
        "prometheus reads the mounted config"
    );
    let p = yaml(PROMETHEUS_YML, "deploy/prometheus/prometheus.yml");
    assert_eq!(list(p.get("rule_files")), ["/etc/prometheus/fortimisp-rules.yml"], "the alert rules are loaded");
    // Each daemon is scraped on the compose network at the port config.toml serves its metrics on, in a job the
    // rules recognise (`up{job=~"fortimisp.*"}`).
    let Some(Value::Sequence(jobs)) = p.get("scrape_configs") else { panic!("scrape_configs is a list") };
    let mut scraped = BTreeSet::new();
    for job in jobs {
        let name = text(&job["job_name"]);
        assert!(name.starts_with("fortimisp"), "job {name}: the alert rules match job=~\"fortimisp.*\"");
        let Some(Value::Sequence(statics)) = job.get("static_configs") else { panic!("{name}: static_configs") };
        for s in statics {
            scraped.extend(list(s.get("targets")));
        }
    }
    let expected: BTreeSet<String> = [
        format!("integration:{}", port_of(&cfg.metrics.listen)),
        format!("housekeeping:{}", port_of(&cfg.metrics.housekeeping_listen)),
    ]
    .into();
    assert_eq!(scraped, expected, "both daemons, by service name, on their [metrics] ports");
}

#[test]
fn monitoring_profile_provisions_grafana_and_stays_on_loopback() {
    let c = compose();
    let grafana = service(&c, "grafana");
    assert_eq!(bind_source(grafana, "/etc/grafana/provisioning"), "./deploy/grafana/provisioning");
    assert_eq!(bind_source(grafana, "/etc/grafana/dashboards/fortimisp.json"), "./deploy/grafana/fortimisp.json");
    let datasources = yaml(GRAFANA_DATASOURCE, "the Grafana data source");
    let source = &datasources["datasources"][0];
    assert_eq!(text(&source["type"]), "prometheus");
    let port = ports(service(&c, "prometheus")).first().map(|p| p.1).expect("prometheus publishes its port");
    assert_eq!(text(&source["url"]), format!("http://prometheus:{port}"), "Grafana reaches the prometheus service");
    let providers = yaml(GRAFANA_DASHBOARDS, "the Grafana dashboard provider");
    assert_eq!(
        text(&providers["providers"][0]["options"]["path"]),
        "/etc/grafana/dashboards",
        "where the JSON is mounted"
    );
    // Published on this host's loopback only; the daemons' metrics ports not at all.
    for name in MONITORING {
        let Some(Value::Sequence(items)) = service(&c, name).get("ports") else { panic!("{name} publishes a port") };
        for item in items {
            assert!(text(item).starts_with("127.0.0.1:"), "{name}: publish on 127.0.0.1 only, not {}", text(item));
        }
    }
    for name in DAEMONS {
        let metrics = [port_of(&config().metrics.listen), port_of(&config().metrics.housekeeping_listen)];
        assert!(
            ports(service(&c, name)).iter().all(|(_, target, _)| !metrics.contains(target)),
            "{name}: the metrics ports stay on the compose network"
        );
    }
}
