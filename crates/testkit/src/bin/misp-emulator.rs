//! `misp-emulator`: the testkit MISP emulator as a process, for the lab and docker compose.
//!
//! Prints its URL on the first stdout line, then serves until SIGINT/SIGTERM.
//!
//! ```text
//! misp-emulator --listen 127.0.0.1:8443 --tls-dir /tmp/misp-tls --key <40 chars> --seed seed.json
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use fortimisp_testkit::misp::{MispEmulator, Role, Seed, TlsMaterial};

#[derive(Debug, Parser)]
#[command(name = "misp-emulator", about = "A MISP REST emulator for tests and the lab")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS; reuse ca.pem/server.pem/server-key.pem from DIR or create them there.
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Extra DNS names or IPs for the server certificate (repeatable), e.g. the compose service name.
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// Accepted API key (repeatable; 40 alphanumeric characters). Default: the testkit's DEFAULT_KEY.
    #[arg(long = "key", value_name = "K", env = "MISP_EMULATOR_KEY")]
    keys: Vec<String>,
    /// JSON seed file (events, attributes, warninglists, feeds, role).
    #[arg(long, value_name = "FILE.json")]
    seed: Option<PathBuf>,
    /// Add N synthetic ip-dst attributes (consecutive IPv4 from --synthetic-from).
    #[arg(long, value_name = "N", default_value_t = 0)]
    synthetic: u64,
    /// First address of the synthetic attributes.
    #[arg(long, default_value = "11.0.0.1")]
    synthetic_from: Ipv4Addr,
    /// Enforce a restSearch rate limit of N calls per 15 minutes (0 = searches not allowed, 405).
    #[arg(long, value_name = "N")]
    rate_limit: Option<u64>,
    /// The role lacks perm_sighting.
    #[arg(long)]
    no_sighting_perm: bool,
    /// The role is not site admin (feed actions get 403).
    #[arg(long)]
    no_site_admin: bool,
    /// No background workers: feed fetches run inline ("Fetching the feed has successfully completed.").
    #[arg(long)]
    no_background_jobs: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut builder = MispEmulator::builder().listen(args.listen);
    for key in &args.keys {
        builder = builder.key(key.clone());
    }
    if let Some(dir) = &args.tls_dir {
        let material = TlsMaterial::load_or_generate(dir, &args.tls_names)
            .with_context(|| format!("cannot prepare TLS material in {}", dir.display()))?;
        builder = builder.tls_material(material);
    }
    if let Some(path) = &args.seed {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let seed: Seed = serde_json::from_str(&text).with_context(|| format!("invalid seed {}", path.display()))?;
        builder = builder.seed(seed);
    }
    let emulator = builder.start().await.with_context(|| format!("cannot listen on {}", args.listen))?;
    if args.synthetic > 0 {
        emulator.add_synthetic(args.synthetic, args.synthetic_from, chrono::Utc::now().timestamp() - 86_400);
    }
    let role = emulator.role();
    emulator.set_role(Role {
        perm_sighting: role.perm_sighting && !args.no_sighting_perm,
        perm_site_admin: role.perm_site_admin && !args.no_site_admin,
        ..role
    });
    if args.rate_limit.is_some() {
        emulator.set_rate_limit(args.rate_limit);
    }
    if args.no_background_jobs {
        emulator.set_background_jobs(false);
    }
    println!("{}", emulator.url());
    eprintln!(
        "misp-emulator: {} attributes, key {}...",
        emulator.attribute_count(),
        &emulator.key().chars().take(4).collect::<String>()
    );

    fortimisp_core::process::shutdown_signal().await;
    emulator.shutdown();
    Ok(())
}
