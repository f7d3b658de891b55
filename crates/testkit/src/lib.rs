//! fortimisp-testkit: emulators of the servers fortimisp talks to, for tests, the lab and benchmarks.
//!
//! # Layout
//! - [`corpus`]: the repository's FortiGate log corpus, line by line.
//! - [`fortigate`]: an axum FortiGate REST emulator (cmdb address/addrgrp, members, banned IPs, external threat
//!   feeds: the `system/external-resource` table, the push API, the entry-list status, the box's own fetches of a
//!   feed over HTTPS and its feed events to syslog) with test hooks.
//! - [`tls`]: a throw-away rcgen CA issuing loopback server certificates, and the rustls server config.
//! - [`misp`]: an axum MISP emulator (restSearch, feeds, sightings, warninglists) with test hooks.
//! - [`lab`]: the lab behind the `lab` binary: both emulators, the real daemons, a replayed sample, a report.
//! - [`harness`]: one way to start the emulators, write a production-format config for them and run the real
//!   daemons; used by the lab, loadgen and the end-to-end tests.
//! - [`fleet`]: N emulated FortiGates (named targets, each with its device's identity) next to one MISP, and the
//!   one writer of a FortiGate traffic log line for a given device.
//! - [`child`]: SIGTERM and a bounded wait for the child processes of the lab and the tests.
//! - [`loadgen`]: corpus lines at a fixed rate into the daemon (or a naive baseline), and the report (the
//!   `loadgen` binary and the benchmarks); its `Lab` runs the daemon with either backend.
//! - [`pg`]: a private PostgreSQL server for one test (initdb, start, stop, restart on a fixed port), for tests
//!   that must restart or lose PostgreSQL, which the machine's shared server never may.
//! - [`cut`]: a loopback TCP proxy a test can cut (a partition: nothing relayed, nothing closed), heal and reset,
//!   in front of such a server.
//! - [`bench`]: what the benchmark tools report alike (machine, percentiles, ratios).
//! - [`feedbench`]: the threat-feed benchmarks (serving a large feed, line-to-entry latency, memory), each
//!   against a baseline in the same run (the `feedbench` binary).
//! - [`fleetbench`]: the fleet benchmarks (block latency to the last of N targets, requests per block per target,
//!   RSS, N targets' rate limits under thousands of blocks), against one target and the rate limit's time floor
//!   (the `fleetbench` binary).
//!
//! Never a dependency of the daemons.

pub mod bench;
pub mod child;
pub mod corpus;
pub mod cut;
pub mod feedbench;
pub mod fleet;
pub mod fleetbench;
pub mod fortigate;
pub mod harness;
pub mod lab;
pub mod loadgen;
pub mod misp;
pub mod pg;
pub mod tls;

/// A loopback port, free for both TCP and UDP when this returns, for a daemon the caller is about to start.
///
/// Ports come from below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), so the
/// outgoing connections and `:0` listeners of parallel tests, which the kernel serves from that range, can never
/// take the port between this call and the daemon's bind; a process-wide counter keeps concurrent callers apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 { (10_000, ephemeral_low) } else { (ephemeral_low + 30_000, 65_000) };
    let span = high - low;
    let start = std::process::id() % span;
    loop {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}
