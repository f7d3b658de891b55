//! End-to-end tests: the real `integration` and `housekeeping` binaries against the testkit emulators (HTTPS with
//! private CAs), fed with real FortiGate log lines over UDP and TCP. One test binary, one module per area.

/// Several instances on one PostgreSQL: no duplicates, a killed leader, PostgreSQL restarted, a network cut.
mod cluster;
/// The real clients (PyMISP, fortigate-api) against the emulators; skipped loudly without them.
mod contract;
/// The fault matrix: MISP and FortiGate failures, an unwritable journal, floods and hostile datagrams.
mod faults;
/// The threat-feed backend: pull (TLS, basic auth, allowed clients), push, indicators mode, consistency.
mod feeds;
/// Fleets: three emulated FortiGates, origin and fleet scope, failure isolation, per-target housekeeping.
mod fleet;
/// The housekeeping daemon: pruning by age, revocation and legacy adoption, safety rails, feed updates, scale.
mod housekeeping;
/// The integration daemon: what gets blocked, what never does, repeats, outages, restarts.
mod integration;
/// `integration journal export/import`: a SQLite journal moved to PostgreSQL.
mod journal;
/// The lab: its report agrees with the emulated FortiGate and the journal.
mod lab;
/// The Grafana dashboard and the Prometheus alert rules, against promtool and a real Prometheus.
mod monitoring;
/// Keys never leak, TLS fails closed, protected addresses are never blocked, loose config permissions warn.
mod security;
/// Supervision: a restartable task comes back, a fatal one turns /healthz 503 and exits non-zero.
mod supervision;
/// `integration validate` against admin profiles and MISP roles that lack each permission.
mod validate;
