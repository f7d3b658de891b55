//! The daemon's memory with a large mirror: the same data (N MISP indicators, two addresses apart so nothing
//! aggregates) and the same daemon, once with the address-group backend (the mirror alone) and once with the
//! threat-feed backend in `contents = "indicators"` mode. Each is measured after the mirror's first full sync
//! and, for the feeds, once every IPv4 feed served all its entries to one fetch: `VmRSS` then and again after
//! `settle` idle seconds (what was freed by then, e.g. the sync's buffers, is gone in both runs), and `VmHWM`
//! (the peak since the start, sync included).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fortimisp_core::config::{Contents, UpdateMethod};
use fortimisp_core::feed::Family;
use tokio::time::Instant;

use super::client::FeedClient;
use super::serving::announced_entries;
use crate::loadgen::{rss_kib, FeedAccess, Lab, LabFeed, LabOptions, Scrape};

/// How long the feeds may take to serve every entry after the mirror synced.
const SERVED_WITHIN: Duration = Duration::from_secs(300);

/// The data and the feed layout.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// MISP indicators (the mirror's size).
    pub indicators: u64,
    /// `[feed] max_entries` and `max_feeds` of the threat-feed run.
    pub max_entries: u32,
    pub max_feeds: u32,
    /// Idle time between the first RSS reading and the second.
    pub settle: Duration,
}

impl MemoryOptions {
    /// Entries the IPv4 feeds serve in all: every indicator, up to the feeds' capacity.
    pub fn expected_entries(&self) -> u64 {
        self.indicators.min(u64::from(self.max_entries) * u64::from(self.max_feeds))
    }
}

/// One daemon's memory.
#[derive(Debug, Clone)]
pub struct MemoryFigures {
    pub system: &'static str,
    /// `fortimisp_mirror_indicators` when measured.
    pub mirror_indicators: u64,
    /// Entries the feeds served (threat feed only).
    pub served_entries: u64,
    /// Bytes of the feed bodies fetched (threat feed only).
    pub served_bytes: u64,
    /// Seconds from the mirror synced to every entry served (threat feed only).
    pub served_after_sync_s: f64,
    /// `VmRSS` when measured, then after [`MemoryOptions::settle`]; `VmHWM` then, all KiB.
    pub rss_kib: u64,
    pub rss_settled_kib: u64,
    pub hwm_kib: u64,
}

/// The address-group run, then the threat-feed run.
pub async fn measure(daemon: &Path, opts: &MemoryOptions) -> Result<(MemoryFigures, MemoryFigures)> {
    let mut lab_opts = LabOptions::new(daemon.to_path_buf());
    lab_opts.indicators = opts.indicators;
    lab_opts.indicator_stride = 2;
    lab_opts.mirror = true;
    let mirror_only = {
        let lab = Lab::start(&lab_opts).await?;
        let rss = rss_kib(lab.daemon_pid()).0;
        tokio::time::sleep(opts.settle).await;
        let (rss_settled_kib, hwm_kib) = rss_kib(lab.daemon_pid());
        MemoryFigures {
            system: "address-group (mirror only)",
            mirror_indicators: mirror_indicators(&lab),
            served_entries: 0,
            served_bytes: 0,
            served_after_sync_s: 0.0,
            rss_kib: rss,
            rss_settled_kib,
            hwm_kib,
        }
    };
    lab_opts.feed = Some(LabFeed {
        update: vec![UpdateMethod::Pull],
        contents: Contents::Indicators,
        max_entries: opts.max_entries,
        max_feeds: opts.max_feeds,
    });
    let lab = Lab::start(&lab_opts).await?;
    let synced = Instant::now();
    let access = lab.feed.clone().context("the lab has threat feeds")?;
    let expected = opts.expected_entries();
    let (served_entries, served_bytes) = loop {
        let (entries, bytes) = fetch_all(&access).await?;
        if entries >= expected {
            break (entries, bytes);
        }
        if synced.elapsed() > SERVED_WITHIN {
            bail!("after {SERVED_WITHIN:?} the feeds served {entries} of {expected} entries; log:\n{}", lab.log_text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let served_after_sync_s = synced.elapsed().as_secs_f64();
    let rss = rss_kib(lab.daemon_pid()).0;
    tokio::time::sleep(opts.settle).await;
    let (rss_settled_kib, hwm_kib) = rss_kib(lab.daemon_pid());
    let feeds = MemoryFigures {
        system: "threat-feed, contents = indicators",
        mirror_indicators: mirror_indicators(&lab),
        served_entries,
        served_bytes,
        served_after_sync_s,
        rss_kib: rss,
        rss_settled_kib,
        hwm_kib,
    };
    Ok((mirror_only, feeds))
}

/// One fetch of every IPv4 feed: the entries their headers announce and their bytes (a feed not served yet
/// counts 0).
async fn fetch_all(access: &FeedAccess) -> Result<(u64, u64)> {
    let listen = access.listen.context("a pulled feed has a listener")?;
    let (mut entries, mut bytes) = (0, 0);
    for index in 0..access.names.max_feeds() {
        let name = access.names.name(Family::V4, index);
        let path = format!("/feeds/{name}.txt");
        let client = FeedClient::new(listen, &path, &access.ca_pem, &access.username, &access.password)?;
        let fetch = client.fetch(None, true).await?;
        if fetch.status == 200 {
            entries += fetch.body.as_deref().and_then(announced_entries).unwrap_or(0);
            bytes += fetch.body_bytes;
        }
    }
    Ok((entries, bytes))
}

fn mirror_indicators(lab: &Lab) -> u64 {
    Scrape::fetch(lab.metrics).map(|s| s.get("fortimisp_mirror_indicators") as u64).unwrap_or(0)
}
