//! Builds the two REST clients from the validated config, so both daemons and every subcommand configure them
//! the same way.

use crate::config;
use crate::fortigate;
use crate::misp;

/// The FortiGate client of `[fortigate]`.
pub fn fortigate(cfg: &config::FortiGate) -> Result<fortigate::Client, fortigate::Error> {
    let mut opts = fortigate::ClientOptions::new(cfg.url.as_str().trim_end_matches('/'), cfg.api_key.clone());
    opts.vdom = cfg.vdom.clone();
    opts.ca_file = cfg.ca_file.clone();
    opts.verify_tls = cfg.verify_tls;
    opts.timeout = cfg.timeout;
    opts.requests_per_second = cfg.requests_per_second;
    opts.block_group = cfg.block_group.clone();
    opts.block_group6 = cfg.block_group6.clone();
    opts.max_group_members = cfg.max_group_members as usize;
    opts.object_prefix = cfg.object_prefix.clone();
    fortigate::Client::new(opts)
}

/// The MISP client of `[misp]`.
pub fn misp(cfg: &config::Misp) -> Result<misp::Client, misp::Error> {
    let mut opts = misp::ClientOptions::new(cfg.url.as_str().trim_end_matches('/'), cfg.api_key.clone());
    opts.ca_file = cfg.ca_file.clone();
    opts.verify_tls = cfg.verify_tls;
    opts.timeout = cfg.timeout;
    misp::Client::new(opts)
}
