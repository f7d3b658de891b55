//! fortimisp-core: everything the two daemons share.
//!
//! # Layout
//! - [`syslog`]: framing (UDP datagram, RFC 6587 octet counting, LF) and the pure FortiGate log parser that turns
//!   one message into a borrowed [`syslog::LogRecord`]. No I/O.
//! - [`misp`]: the MISP REST client (restSearch, feeds, sightings, warninglists) and the [`misp::Indicator`] type.
//!   Only this module knows MISP's URLs and JSON.
//! - [`fortigate`]: the FortiOS REST client (address objects, groups, child-table members, banned IPs). Only this
//!   module knows FortiOS paths, percent-encoding and the response envelope.
//! - [`backoff`]: the one capped, jittered exponential backoff behind every retry.
//! - [`clients`]: the MISP and FortiGate clients built from the validated config.
//! - [`config`]: the operator contract's `config.toml`, parsed then validated into a [`config::Config`].
//! - [`indicators`]: the local set of blocking IPs and networks (longest-prefix match, keyed by uuid).
//! - [`metrics`]: every exported metric, and the `/metrics` + `/healthz` server.
//! - [`policy`]: pure decisions: trigger rules, the never-block ranges.
//! - [`preflight`]: what `integration validate` proves: reachability and every permission the config needs,
//!   against the live servers, without changing anything lasting.
//! - [`process`]: logging setup and SIGTERM/SIGINT handling shared by both binaries.
//! - [`view`]: a complete view of the blocking indicators in MISP (shared by the mirror and housekeeping).
//! - [`ready`]: readiness (`/readyz`): MISP and the FortiGate answer, the journal writes, the mirror is fresh.
//! - [`supervise`]: no task dies silently: restarts with backoff, or a fatal death that turns `/healthz` 503.
//! - [`secret`]: [`secret::ApiKey`], a key that prints as `***`.
//! - [`journal`]: the SQLite journal (`[state] path`) both daemons share: the durable queue of pending actions, the
//!   audit trail of decisions and the ledger of blocks; keeps working from memory when the file refuses writes.
//! - [`unblock`]: the one path that removes a block (journal pending, FortiGate, journal outcome), for
//!   `integration unblock` and housekeeping alike.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod feed;
pub mod fleet;
pub mod fortigate;
pub mod indicators;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod misp;
pub mod policy;
pub mod preflight;
pub mod process;
pub mod ready;
pub mod secret;
pub mod supervise;
pub mod syslog;
pub mod unblock;
pub mod view;
