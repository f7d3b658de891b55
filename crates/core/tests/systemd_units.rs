//! The systemd units in `config/systemd/` against what the daemons and `config.toml` expect: the shared dynamic
//! user and state directory, capabilities (port 514 for `integration` only), the stop contract (SIGTERM, exit within
//! 10 s), the hardening baseline, and API keys passed from `LoadCredential=` in the environment variables core reads.
//! The install commands at the top of `fortimisp-integration.service` are run in a temporary root and must put
//! every file where the units look for it.

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

/// Commands of the install steps that need root and a running systemd; the test skips them and nothing else.
const NEEDS_ROOT: [&str; 4] = ["systemctl", "useradd", "chown", "sudo"];

/// The install steps at the top of a unit: the first run of comment lines indented as commands (`#   ...`),
/// without the `#`.
fn header_commands(unit: &str) -> Vec<&str> {
    unit.lines()
        .take_while(|l| l.starts_with('#'))
        .skip_while(|l| !l.starts_with("#   "))
        .take_while(|l| l.starts_with("#   "))
        .map(|l| &l[1..])
        .collect()
}

/// `line` with every absolute path (a word starting with `/`, after a blank or a redirection) moved under `root`,
/// as `DESTDIR` does.
fn under_root(line: &str, root: &std::path::Path) -> String {
    let root = root.to_str().expect("a UTF-8 temporary directory");
    let mut out = String::new();
    let mut previous = ' ';
    for c in line.chars() {
        if c == '/' && matches!(previous, ' ' | '\t' | '>') {
            out.push_str(root);
        }
        out.push(c);
        previous = c;
    }
    out
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn header_commands_read_the_indented_block_only() {
    let unit =
        "# title\n# prose\n#\n#   install a b\n#   (umask 077; x\n#        y)\n#\n#   not = \"a command\"\n[Unit]\n";
    assert_eq!(header_commands(unit), ["   install a b", "   (umask 077; x", "        y)"]);
    let root = std::path::Path::new("/tmp/r");
    assert_eq!(
        under_root("install -D -t /usr/bin a/b > /etc/x 'k' >/etc/y", root),
        "install -D -t /tmp/r/usr/bin a/b > /tmp/r/etc/x 'k' >/tmp/r/etc/y"
    );
}

/// The header's install steps, run with `sh -eu` in an empty temporary root (`DESTDIR`-style: absolute paths moved
/// under it) from a stand-in checkout (the real `config/` and `scripts/`, a debug-built executable as each release
/// binary), must succeed and leave each file where the units read it: the binaries `ExecStart` runs, the config at
/// the default path, the credentials `LoadCredential=` loads (0600 in a 0700 directory), both unit files, and the
/// split-off debug information where gdb looks for it. Skipped: only `systemctl` (needs root and a running
/// systemd); `objcopy` comes with the C toolchain the build needs.
#[cfg(target_os = "linux")]
#[test]
fn the_install_steps_work_in_an_empty_root() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository");
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (root, checkout) = (tmp.path().join("root"), tmp.path().join("checkout"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(checkout.join("target/release")).unwrap();
    for dir in ["config", "scripts"] {
        std::os::unix::fs::symlink(repo.join(dir), checkout.join(dir)).unwrap();
    }
    // Any ELF executable with debug information stands in for a release binary.
    let stand_in = std::env::current_exe().expect("the test executable");
    for (_, binary, _) in UNITS {
        std::fs::copy(&stand_in, checkout.join("target/release").join(binary)).unwrap();
    }

    let mut script = String::new();
    let mut skipped = Vec::new();
    for line in header_commands(INTEGRATION) {
        match line.split_whitespace().next() {
            Some(word) if NEEDS_ROOT.contains(&word) => skipped.push(line.trim()),
            _ => script.push_str(&format!("{}\n", under_root(line, &root))),
        }
    }
    assert!(script.contains("install"), "no install step found in the header of {}", UNITS[0].0);
    assert!(skipped.iter().all(|l| l.starts_with("systemctl")), "only systemctl may be skipped: {skipped:?}");
    let out =
        std::process::Command::new("sh").args(["-eu", "-c", &script]).current_dir(&checkout).output().expect("sh runs");
    assert!(
        out.status.success(),
        "the install steps fail in an empty root:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let at = |path: &str| root.join(path.trim_start_matches('/'));
    for (file, binary, unit) in UNITS {
        let installed = at(&format!("/usr/local/bin/{binary}"));
        assert!(value(file, unit, "ExecStart").contains(&format!("exec /usr/local/bin/{binary} ")), "{file}");
        assert_eq!(mode(&installed), 0o755, "{}", installed.display());
        let (full, stripped) =
            (std::fs::metadata(&stand_in).unwrap().len(), std::fs::metadata(&installed).unwrap().len());
        assert!(stripped < full / 2, "{binary} is not stripped of its debug information ({stripped} of {full} bytes)");
        let symbols = at(&format!("/usr/lib/debug/usr/local/bin/{binary}.debug"));
        assert!(symbols.is_file(), "{}: the debug information of {binary} is not where gdb looks", symbols.display());
        for credential in values(unit, "LoadCredential") {
            let (_, source) = credential.split_once(':').expect("LoadCredential=name:path");
            let path = at(source);
            assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 0), "{file}: {source} is not created");
            assert_eq!(mode(&path), 0o600, "{source}");
            assert_eq!(mode(path.parent().unwrap()), 0o700, "the directory of {source}");
        }
        let unit_file = at(&format!("/etc/systemd/system/{file}"));
        assert_eq!(
            std::fs::read_to_string(&unit_file).ok().as_deref(),
            Some(unit),
            "{} installed",
            unit_file.display()
        );
    }
    let config = at(DEFAULT_CONFIG_PATH);
    assert_eq!(std::fs::read_to_string(&config).ok().as_deref(), Some(CONFIG), "{} installed", config.display());
    assert_eq!(mode(&config), 0o644, "{DEFAULT_CONFIG_PATH}");
}
