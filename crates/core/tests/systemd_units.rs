//! The systemd units in `config/systemd/` against what the daemons and `config.toml` expect: the shared dynamic
//! user and state directory, capabilities (port 514 for `integration` only), the stop contract (SIGTERM, exit within
//! 10 s), the hardening baseline, and API keys passed from `LoadCredential=` in the environment variables core reads.

use fortimisp_core::config::{RawConfig, DEFAULT_CONFIG_PATH, ENV_FORTIGATE_API_KEY, ENV_MISP_API_KEY};

const INTEGRATION: &str = include_str!("../../../config/systemd/fortimisp-integration.service");
const HOUSEKEEPING: &str = include_str!("../../../config/systemd/fortimisp-housekeeping.service");
const CONFIG: &str = include_str!("../../../config/config.toml");

const UNITS: [(&str, &str, &str); 2] = [
    ("fortimisp-integration.service", "integration", INTEGRATION),
    ("fortimisp-housekeeping.service", "housekeeping", HOUSEKEEPING),
];

/// Every value of `key=` in the unit, in order (systemd keys may repeat).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .collect()
}

/// The single value of `key=`.
fn value<'a>(file: &str, unit: &'a str, key: &str) -> &'a str {
    match values(unit, key).as_slice() {
        [one] => one,
        other => panic!("{file}: expected one {key}=, found {other:?}"),
    }
}

#[test]
fn both_units_share_the_user_and_the_state_directory() {
    let state_path = RawConfig::parse(CONFIG).expect("config/config.toml parses").state.path;
    for (file, _, unit) in UNITS {
        assert_eq!(value(file, unit, "DynamicUser"), "yes", "{file}");
        // The same name gives both units the same dynamic UID, so neither chowns the journal away from the other.
        assert_eq!(value(file, unit, "User"), "fortimisp", "{file}");
        assert_eq!(value(file, unit, "StateDirectory"), "fortimisp", "{file}");
    }
    assert!(state_path.starts_with("/var/lib/fortimisp"), "state.path {state_path:?} must be in StateDirectory");
}

#[test]
fn only_integration_may_bind_low_ports() {
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(value("integration", INTEGRATION, key), "CAP_NET_BIND_SERVICE", "integration {key}");
        assert_eq!(value("housekeeping", HOUSEKEEPING, key), "", "housekeeping {key} must be empty");
    }
}

#[test]
fn stop_and_restart_follow_the_contract() {
    for (file, _, unit) in UNITS {
        assert_eq!(value(file, unit, "KillSignal"), "SIGTERM", "{file}");
        // The daemons exit within 10 s of SIGTERM; systemd's SIGKILL must come later.
        let stop: u64 = value(file, unit, "TimeoutStopSec").parse().expect("TimeoutStopSec in seconds");
        assert!(stop > 10, "{file}: TimeoutStopSec={stop} must exceed the 10 s shutdown budget");
        assert_eq!(value(file, unit, "Restart"), "on-failure", "{file}");
        assert!(!values(unit, "StartLimitBurst").is_empty(), "{file}: a failing daemon must not restart forever");
    }
}

#[test]
fn hardening_baseline() {
    let expected = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ];
    for (file, _, unit) in UNITS {
        for (key, want) in expected {
            assert_eq!(value(file, unit, key), want, "{file}: {key}");
        }
        assert!(values(unit, "SystemCallFilter").contains(&"@system-service"), "{file}: SystemCallFilter");
    }
}

#[test]
fn keys_come_from_credentials_through_the_environment() {
    for (file, binary, unit) in UNITS {
        let credentials = values(unit, "LoadCredential");
        for (name, env) in [("misp_api_key", ENV_MISP_API_KEY), ("fortigate_api_key", ENV_FORTIGATE_API_KEY)] {
            assert!(
                credentials.contains(&format!("{name}:/etc/fortimisp/credentials/{name}").as_str()),
                "{file}: LoadCredential={name}:... missing from {credentials:?}"
            );
            let exec = value(file, unit, "ExecStart");
            // `$$` is systemd's escape for a literal `$`; `%d` is this unit's credentials directory.
            assert!(exec.contains(&format!("{env}=\"$$(cat %d/{name})\"")), "{file}: ExecStart must export {env}");
        }
        let exec = value(file, unit, "ExecStart");
        assert!(
            exec.contains(&format!("exec /usr/local/bin/{binary} --config {DEFAULT_CONFIG_PATH}")),
            "{file}: ExecStart must exec the daemon with the default config path"
        );
    }
}
