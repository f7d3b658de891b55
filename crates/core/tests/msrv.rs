//! The workspace's `rust-version` is the real minimum: no crate that Cargo.lock pins asks for a newer Rust.
//!
//! Installing an older toolchain is not possible here (no network beyond the package registries), so this reads
//! the `rust-version` of every locked crate from the sources cargo has extracted for this build (`$CARGO_HOME`
//! registry) and compares. A locked crate whose sources are not there fails the test: after a build they all are.

use std::path::{Path, PathBuf};

fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u64>().unwrap_or_else(|_| panic!("bad version {text:?}")));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cargo"))
}

#[test]
fn no_locked_crate_needs_a_newer_rust_than_the_workspace_declares() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let declared = manifest["workspace"]["package"]["rust-version"].as_str().expect("workspace rust-version");
    let declared_v = version(declared);

    let lock: toml::Table = std::fs::read_to_string(root.join("Cargo.lock")).unwrap().parse().unwrap();
    let sources: Vec<PathBuf> = std::fs::read_dir(cargo_home().join("registry/src"))
        .expect("cargo's registry sources (run after a build)")
        .map(|e| e.unwrap().path())
        .collect();
    let mut newer = Vec::new();
    let mut missing = Vec::new();
    let mut checked = 0;
    for package in lock["package"].as_array().unwrap() {
        if package.get("source").and_then(|s| s.as_str()).is_none_or(|s| !s.starts_with("registry+")) {
            continue;
        }
        let dir = format!("{}-{}", package["name"].as_str().unwrap(), package["version"].as_str().unwrap());
        let Some(path) = sources.iter().map(|s| s.join(&dir).join("Cargo.toml")).find(|p| p.exists()) else {
            missing.push(dir);
            continue;
        };
        checked += 1;
        let crate_manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        if let Some(needed) = crate_manifest.get("package").and_then(|p| p.get("rust-version")).and_then(|v| v.as_str())
        {
            if version(needed) > declared_v {
                newer.push(format!("{dir} needs {needed}"));
            }
        }
    }
    // Crates locked for another platform (windows-*, wasm) are never downloaded here; the rest must be.
    missing.retain(|d| {
        !["windows", "wasm", "js-sys", "web-sys", "wasi", "hermit", "redox", "libredox"]
            .iter()
            .any(|p| d.starts_with(p))
    });
    assert!(checked > 100, "only {checked} locked crates found in {}", cargo_home().display());
    assert!(newer.is_empty(), "rust-version {declared} is too old: {newer:?}");
    assert!(missing.len() * 10 < checked, "sources missing for {missing:?}");
}
