//! fortimisp-testkit: emulators of the servers fortimisp talks to, for tests, the lab and benchmarks.
//!
//! # Layout
//! - [`fortigate`]: an axum FortiGate REST emulator (cmdb address/addrgrp, members, banned IPs) with test hooks.
//! - [`tls`]: a throw-away rcgen CA issuing loopback server certificates, and the rustls server config.
//! - [`misp`]: an axum MISP emulator (restSearch, feeds, sightings, warninglists) with test hooks.
//! - [`lab`]: the lab behind the `lab` binary: both emulators, the real daemons, a replayed sample, a report.
//! - [`loadgen`]: corpus lines at a fixed rate into the daemon (or a naive baseline), and the report (the
//!   `loadgen` binary and the benchmarks).
//!
//! Never a dependency of the daemons.

pub mod fortigate;
pub mod lab;
pub mod loadgen;
pub mod misp;
pub mod tls;
