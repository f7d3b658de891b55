//! Every metric follows the Prometheus naming conventions, and the README's metrics reference lists every metric
//! the daemons export, no more and no less.
//!
//! Conventions (prometheus.io, "Metric and label naming"): one `fortimisp_` prefix, snake_case, counters end in
//! `_total`, nothing else does, a histogram of a quantity names its base unit (`_seconds`, `_bytes`), and a Unix
//! time is `_timestamp_seconds`.

use std::collections::BTreeSet;

use fortimisp_core::metrics::Metrics;

const README: &str = include_str!("../../../README.md");

/// `(exposed name, type)` of every registered metric, from the `# TYPE` lines of a scrape. A counter is exposed
/// with `_total` appended to its family name.
fn exported() -> Vec<(String, String)> {
    let text = Metrics::new().render();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("`# TYPE name type`");
            let exposed = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            (exposed, kind.to_string())
        })
        .collect()
}

#[test]
fn metric_names_follow_prometheus_conventions() {
    let metrics = exported();
    assert!(metrics.len() >= 25, "every family is described even before it has a sample: {metrics:?}");
    for (name, kind) in &metrics {
        let rest = name.strip_prefix("fortimisp_").unwrap_or_else(|| panic!("{name}: one `fortimisp_` prefix"));
        assert!(
            rest.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') && !rest.contains("__"),
            "{name}: snake_case"
        );
        match kind.as_str() {
            "counter" => assert!(rest.ends_with("_total") && !rest.ends_with("_total_total"), "{name}"),
            "gauge" | "histogram" => assert!(!rest.ends_with("_total"), "{name}: only counters end in _total"),
            other => panic!("{name}: unexpected type {other}"),
        }
        if kind == "histogram" {
            assert!(rest.ends_with("_seconds") || rest.ends_with("_bytes"), "{name}: a histogram names its base unit");
        }
        if rest.contains("timestamp") || rest.contains("last_") {
            assert!(rest.ends_with("_timestamp_seconds"), "{name}: a Unix time is _timestamp_seconds");
        }
        for unit in ["_ms", "_millis", "milliseconds", "_minutes", "_hours", "_kb", "_mb"] {
            assert!(!rest.contains(unit), "{name}: base units only (seconds, bytes)");
        }
    }
}

#[test]
fn readme_metrics_table_lists_every_metric() {
    let metrics = exported();
    let exported: BTreeSet<String> = metrics.iter().map(|(name, _)| name.clone()).collect();
    let documented: BTreeSet<String> = README
        .lines()
        .filter_map(|line| line.strip_prefix("| `fortimisp_"))
        .map(|rest| format!("fortimisp_{}", rest.split('`').next().unwrap_or_default()))
        .collect();
    let missing: Vec<&String> = exported.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&exported).collect();
    assert!(missing.is_empty(), "README's metrics table lacks {missing:?}");
    assert!(stale.is_empty(), "README's metrics table names metrics that do not exist: {stale:?}");
    // And the table gives each one's type as the scrape does.
    for (name, kind) in &metrics {
        let row = README.lines().find(|l| l.starts_with(&format!("| `{name}` "))).expect("documented above");
        assert!(row.contains(&format!("| {kind} |")), "README gives {name} the type {kind}: {row}");
    }
}
