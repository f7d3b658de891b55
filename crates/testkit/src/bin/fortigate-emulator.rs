//! `fortigate-emulator`: the FortiGate REST emulator as a process, for the lab and docker compose.
//!
//! ```text
//! fortigate-emulator --listen 127.0.0.1:8443 [--tls-dir DIR] [--token T] [--version v7.4.4]
//!                    [--tls-name fortigate]... [--group-member-limit N] [--refuse-empty-groups]
//!                    [--duplicate-status 500|424] [--seed objects.json] [--profile full|read-only|no-monitor]
//!                    [--feed-poll-interval off|refresh-rate|10s] [--feed-ca ca.pem] [--feed-entry-limit N]
//!                    [--event-syslog 127.0.0.1:5514]
//! ```
//! Prints its URL on the first line of stdout, then serves until SIGINT/SIGTERM. With `--tls-dir`, `cert.pem` and
//! `key.pem` there are used; if absent, a throw-away CA is generated and `ca.pem`, `cert.pem`, `key.pem` are written
//! there (point the client's `ca_file` at `ca.pem`).
//!
//! External threat feeds (`system/external-resource`) are served always; the box fetches pulled feeds on its own
//! only with `--feed-poll-interval` (`refresh-rate`: each feed's own minutes, as FortiOS; a duration: every feed at
//! that interval; `off`, the default: never), trusting `--feed-ca` (else the web roots), and sends its feed
//! events (logid 0100022220/22222/22224) to `--event-syslog` over UDP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fortimisp_testkit::fortigate::{
    AdminProfile, EmulatorConfig, FeedPolling, FortiGateEmulator, Table, DEFAULT_FEED_ENTRY_LIMIT,
};
use fortimisp_testkit::tls;

#[derive(Parser, Debug)]
#[command(
    name = "fortigate-emulator",
    about = "Emulated FortiGate REST API (cmdb address/addrgrp, members, banned IPs, external threat feeds)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Serve HTTPS with cert.pem/key.pem from this directory (generated with ca.pem when missing).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Extra DNS names / IPs for the generated certificate (e.g. the compose service name); repeatable.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Accepted REST API token.
    #[arg(long, env = "FORTIGATE_EMULATOR_TOKEN", default_value = "fortimisp-emulator-token")]
    token: String,
    /// Reported FortiOS version.
    #[arg(long, default_value = "v7.4.4")]
    version: String,
    /// Entries per address group before -52.
    #[arg(long, default_value_t = 2500)]
    group_member_limit: usize,
    /// JSON file of objects to seed: `[{"table": "address", "name": "198.51.100.7/32", "subnet": "…", "comment": "…"}, …]`
    /// (`table` is address, address6, addrgrp or addrgrp6; the rest is the entry as the API returns it).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Emulate an older FortiOS that refuses empty groups.
    #[arg(long)]
    refuse_empty_groups: bool,
    /// HTTP status sent with error -5 (duplicate).
    #[arg(long, default_value_t = 500)]
    duplicate_status: u16,
    /// The token's admin profile: `full`; `read-only` (firewall addresses, the banned list and the threat feeds
    /// read-only: writes answer 403); `no-monitor` (addresses read-write, no banned-IP monitor and no System group:
    /// their calls, threat feeds included, answer 403).
    #[arg(long, value_enum, default_value_t = Profile::Full)]
    profile: Profile,
    /// When pulled threat feeds are fetched: `off` (only on request), `refresh-rate` (each feed's own minutes), or
    /// a duration such as `10s` (every feed at that interval).
    #[arg(long, default_value = "off", value_parser = parse_polling)]
    feed_poll_interval: FeedPolling,
    /// PEM file of the CA(s) trusted when fetching threat feeds (default: the web roots).
    #[arg(long)]
    feed_ca: Option<PathBuf>,
    /// Entries one threat feed may hold (the entry-list `limit`); the rest of a file is dropped (log id 22224).
    #[arg(long, default_value_t = DEFAULT_FEED_ENTRY_LIMIT)]
    feed_entry_limit: usize,
    /// UDP syslog collector for the threat-feed events (default: none).
    #[arg(long)]
    event_syslog: Option<SocketAddr>,
}

fn parse_polling(s: &str) -> Result<FeedPolling, String> {
    match s {
        "off" => Ok(FeedPolling::Off),
        "refresh-rate" => Ok(FeedPolling::RefreshRate),
        _ => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Ok(FeedPolling::Every(d)),
            Ok(_) => Ok(FeedPolling::Off),
            Err(e) => Err(format!("expected off, refresh-rate or a duration such as 10s: {e}")),
        },
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Profile {
    Full,
    ReadOnly,
    NoMonitor,
}

impl From<Profile> for AdminProfile {
    fn from(p: Profile) -> AdminProfile {
        match p {
            Profile::Full => AdminProfile::FULL,
            Profile::ReadOnly => AdminProfile::READ_ONLY,
            Profile::NoMonitor => AdminProfile::NO_MONITOR,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let feed_ca_pem = match &args.feed_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("--feed-ca {}", path.display()))?),
        None => None,
    };
    let config = EmulatorConfig {
        token: args.token,
        version: args.version,
        group_member_limit: args.group_member_limit,
        refuse_empty_groups: args.refuse_empty_groups,
        duplicate_status: args.duplicate_status,
        profile: args.profile.into(),
        feed_entry_limit: args.feed_entry_limit,
        feed_polling: args.feed_poll_interval,
        feed_ca_pem,
        event_syslog: args.event_syslog,
        ..EmulatorConfig::default()
    };
    let tls_config = match &args.tls_dir {
        None => None,
        Some(dir) => {
            Some(load_or_create_tls(dir, &args.tls_names).with_context(|| format!("--tls-dir {}", dir.display()))?)
        }
    };
    let emulator = FortiGateEmulator::bind(args.listen, config, tls_config)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    if let Some(path) = &args.seed {
        seed(&emulator, path).with_context(|| format!("--seed {}", path.display()))?;
    }
    println!("{}", emulator.url());
    fortimisp_core::process::shutdown_signal().await;
    drop(emulator);
    Ok(())
}

fn load_or_create_tls(
    dir: &std::path::Path,
    extra_names: &[String],
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(dir)?;
        let ca = tls::TestCa::new();
        ca.write_ca_file(&dir.join("ca.pem"))?;
        let mut names = vec!["127.0.0.1", "::1", "localhost"];
        names.extend(extra_names.iter().map(String::as_str));
        ca.issue_server_cert_for(&names).write_to_dir(dir)?;
    }
    Ok(tls::server_config_from_pem(&std::fs::read(&cert)?, &std::fs::read(&key)?)?)
}

fn seed(emulator: &FortiGateEmulator, path: &std::path::Path) -> anyhow::Result<()> {
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(path)?)?;
    for mut entry in entries {
        let table = entry
            .as_object_mut()
            .and_then(|o| o.remove("table"))
            .and_then(|t| t.as_str().and_then(Table::from_segment))
            .context("each entry needs \"table\": address|address6|addrgrp|addrgrp6")?;
        emulator.seed(table, entry);
    }
    Ok(())
}
