//! The threat-feed backend (`fortigate.backend = "threat-feed"`): blocks are entries of FortiGate external threat
//! feeds that the FortiGate pulls from our HTTPS listener and/or that fortimisp pushes (FortiOS 7.2.1+).
//!
//! - [`state::FeedState`]: the feeds' inputs (log-triggered blocks, the mirror's indicators, the device's limit)
//!   and their contents, built once per change ([`fortimisp_core::feed`] decides what they hold).
//! - `serve`: the HTTPS listener the FortiGate pulls from (basic auth, allowed clients, ETag).
//! - [`push::Pusher`]: the push API client loop (diffs, periodic snapshots), and [`push::PushWait`], how a block
//!   waits for its confirmation.
//! - [`confirm::Confirm`]: what the FortiGate reports it loaded (syslog events, entry-list status).
//! - [`follow_ledger`], [`follow_mirror`]: the state's two outside inputs. The journal's ledger is the truth for
//!   the blocks (housekeeping and `integration unblock` close entries from other processes); the mirror is the
//!   truth for the indicators.

pub mod confirm;
pub mod push;
pub mod serve;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::feed::content;
use fortimisp_core::journal::Journal;
use fortimisp_core::policy::NeverBlock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::decide::SharedMirror;
use state::FeedState;

/// The ledger's backend name for blocks made by this backend.
pub const BACKEND: &str = "threat-feed";

/// How often the ledger is reread for removals made by other processes (housekeeping, `integration unblock`).
pub const LEDGER_EVERY: Duration = Duration::from_secs(5);

/// Rereads the ledger's open threat-feed blocks every `every` into `state`, until `stop`.
pub async fn follow_ledger(
    journal: Journal,
    target: String,
    state: Arc<FeedState>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        match journal.active_blocks_of(&target).await {
            Ok(blocks) => {
                failing = false;
                let open: HashMap<_, _> = blocks
                    .into_iter()
                    .filter(|b| b.backend == BACKEND)
                    .map(|b| (b.ip, b.blocked_at.timestamp()))
                    .collect();
                state.replace_blocked(open);
            }
            Err(error) => {
                if !failing {
                    warn!(message = "Journal cannot be read; the threat feeds keep their blocks until it can.", %error);
                }
                failing = true;
            }
        }
    }
}

/// Builds the contents after each change (at most once a second), so the `feed_*` metrics and the first fetch
/// after a change are current even when nobody fetches: still at most one build per change.
pub async fn keep_built(state: Arc<FeedState>, stop: CancellationToken) {
    let mut changes = state.subscribe();
    loop {
        if state.is_ready() {
            state.current();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        // Changes that arrive together (a burst of blocks, a mirror sync) make one build.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Recomputes the indicator entries after every mirror change (`contents = "indicators"`), off the async
/// threads: 1 M indicators take a noticeable fraction of a second.
pub async fn follow_mirror(
    mirror: SharedMirror,
    mut changed: watch::Receiver<u64>,
    never_block: NeverBlock,
    state: Arc<FeedState>,
    stop: CancellationToken,
) {
    loop {
        let (mirror, never_block) = (mirror.clone(), never_block.clone());
        let entries = tokio::task::spawn_blocking(move || {
            let guard = mirror.read().expect("mirror lock is never held across a panic");
            guard.as_ref().map(|set| content::entries(set, &never_block))
        })
        .await
        .expect("computing the feed entries does not panic");
        if let Some(entries) = entries {
            let count = entries.len();
            let before = state.generation();
            if state.set_indicators(entries) != before {
                info!(message = "Threat-feed indicators updated from the mirror.", entries = count);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changed.changed() => if changed.is_err() { return },
        }
    }
}
