//! Builds the two REST clients from the validated config, so both daemons and every subcommand configure them
//! the same way. The daemons' clients also time every request (`fortimisp_request_duration_seconds`):
//! [`fortigate_timed`], [`misp_timed`].

use crate::config;
use crate::fortigate;
use crate::metrics::Metrics;
use crate::misp;

/// The FortiGate client of `[fortigate]`.
pub fn fortigate(cfg: &config::FortiGate) -> Result<fortigate::Client, fortigate::Error> {
    fortigate::Client::new(fortigate_options(cfg))
}

/// The FortiGate client of `[fortigate]`, each request timed into `metrics`.
pub fn fortigate_timed(cfg: &config::FortiGate, metrics: &Metrics) -> Result<fortigate::Client, fortigate::Error> {
    let mut opts = fortigate_options(cfg);
    opts.requests = Some(metrics.requests("fortigate"));
    fortigate::Client::new(opts)
}

fn fortigate_options(cfg: &config::FortiGate) -> fortigate::ClientOptions {
    let mut opts = fortigate::ClientOptions::new(cfg.url.as_str().trim_end_matches('/'), cfg.api_key.clone());
    opts.fallback_urls = cfg.urls.iter().map(|u| u.as_str().trim_end_matches('/').to_string()).collect();
    opts.vdom = cfg.vdom.clone();
    opts.ca_file = cfg.ca_file.clone();
    opts.verify_tls = cfg.verify_tls;
    opts.timeout = cfg.timeout;
    opts.requests_per_second = cfg.requests_per_second;
    opts.block_group = cfg.block_group.clone();
    opts.block_group6 = cfg.block_group6.clone();
    opts.max_group_members = cfg.max_group_members as usize;
    opts.object_prefix = cfg.object_prefix.clone();
    opts
}

/// The MISP client of `[misp]`.
pub fn misp(cfg: &config::Misp) -> Result<misp::Client, misp::Error> {
    misp::Client::new(misp_options(cfg))
}

/// The MISP client of `[misp]`, each request timed into `metrics`.
pub fn misp_timed(cfg: &config::Misp, metrics: &Metrics) -> Result<misp::Client, misp::Error> {
    let mut opts = misp_options(cfg);
    opts.requests = Some(metrics.requests("misp"));
    misp::Client::new(opts)
}

fn misp_options(cfg: &config::Misp) -> misp::ClientOptions {
    let mut opts = misp::ClientOptions::new(cfg.url.as_str().trim_end_matches('/'), cfg.api_key.clone());
    opts.ca_file = cfg.ca_file.clone();
    opts.verify_tls = cfg.verify_tls;
    opts.timeout = cfg.timeout;
    opts
}
