//! Adapters from the core clients to the blocking stage's seams: the FortiGate backends (address group, banned IP,
//! threat feed) and MISP sightings.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::feed::Names;
use fortimisp_core::fortigate::{self, BlockOutcome, Comment};
use fortimisp_core::misp::{self, SightingOutcome};

use crate::block::{Applied, Backend, Sighter};
use crate::feed::push::PushWait;
use crate::feed::state::FeedState;

/// `backend = "address-group"`: an address object per IP, member of the block group.
pub struct AddressGroup(pub Arc<fortigate::Client>);

impl Backend for AddressGroup {
    async fn block(&self, ip: IpAddr, comment: &Comment) -> Result<Applied, fortigate::Error> {
        Ok(match self.0.block(ip, comment).await? {
            BlockOutcome::Blocked { name, group } => Applied::Blocked { object: name.to_string(), group: Some(group) },
            BlockOutcome::AlreadyBlocked { name, group } => {
                Applied::AlreadyBlocked { object: name.to_string(), group: Some(group) }
            }
        })
    }

    fn name(&self) -> &'static str {
        "address-group"
    }
}

/// `backend = "banned-ip"`: the quarantine monitor API, expiring after `housekeeping.max_age`.
pub struct BannedIp {
    pub client: Arc<fortigate::Client>,
    pub expiry: Duration,
}

impl Backend for BannedIp {
    async fn block(&self, ip: IpAddr, _comment: &Comment) -> Result<Applied, fortigate::Error> {
        self.client.ban(ip, Some(self.expiry)).await?;
        Ok(Applied::Blocked { object: ip.to_string(), group: None })
    }

    fn name(&self) -> &'static str {
        "banned-ip"
    }
}

/// `backend = "threat-feed"` in the daemon: the address joins [`FeedState`] (served at the next pull); with push,
/// the block waits until the pusher has the FortiGate confirm it (or the push fails: the block stays pending).
pub struct ThreatFeed {
    pub state: Arc<FeedState>,
    pub push: Option<PushWait>,
}

/// How long a block waits for the pusher before it counts as not done yet (retried from the journal).
pub const PUSH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

impl Backend for ThreatFeed {
    async fn block(&self, ip: IpAddr, _comment: &Comment) -> Result<Applied, fortigate::Error> {
        let generation = self.state.add_blocked(ip, chrono::Utc::now().timestamp());
        if let Some(push) = &self.push {
            push.until(generation, PUSH_CONFIRM_TIMEOUT).await?;
        }
        Ok(Applied::Blocked { object: self.state.names().first_of(ip), group: None })
    }

    fn name(&self) -> &'static str {
        crate::feed::BACKEND
    }
}

/// `backend = "threat-feed"` in a hand-run command (`integration block`), where no daemon state runs: with push,
/// one `add` to the family's first feed (the daemon's next snapshot puts it where its layout wants); without,
/// nothing on the FortiGate: the ledger entry the executor writes is what the daemon serves within seconds.
pub struct ThreatFeedDirect {
    pub transport: Arc<fortigate::Transport>,
    pub names: Names,
    pub push: bool,
}

impl Backend for ThreatFeedDirect {
    async fn block(&self, ip: IpAddr, _comment: &Comment) -> Result<Applied, fortigate::Error> {
        let feed = self.names.first_of(ip);
        if self.push {
            self.transport.push_feed(&feed, fortigate::PushCommand::Add, &[ipnet::IpNet::from(ip)]).await?;
        }
        Ok(Applied::Blocked { object: feed, group: None })
    }

    fn name(&self) -> &'static str {
        crate::feed::BACKEND
    }
}

/// Either backend, chosen by `fortigate.backend`.
pub enum AnyBackend {
    AddressGroup(AddressGroup),
    BannedIp(BannedIp),
    ThreatFeed(ThreatFeed),
    ThreatFeedDirect(ThreatFeedDirect),
}

impl Backend for AnyBackend {
    async fn block(&self, ip: IpAddr, comment: &Comment) -> Result<Applied, fortigate::Error> {
        match self {
            AnyBackend::AddressGroup(b) => b.block(ip, comment).await,
            AnyBackend::BannedIp(b) => b.block(ip, comment).await,
            AnyBackend::ThreatFeed(b) => b.block(ip, comment).await,
            AnyBackend::ThreatFeedDirect(b) => b.block(ip, comment).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::AddressGroup(b) => b.name(),
            AnyBackend::BannedIp(b) => b.name(),
            AnyBackend::ThreatFeed(b) => b.name(),
            AnyBackend::ThreatFeedDirect(b) => b.name(),
        }
    }
}

/// Adds a sighting (type 0, source `fortimisp`) to every attribute carrying the blocked IP.
pub struct MispSighter(pub Arc<misp::Client>);

impl Sighter for MispSighter {
    async fn sight(&self, ip: IpAddr) -> Result<(), String> {
        match self.0.add_sighting(ip, "fortimisp").await {
            Ok(SightingOutcome::Added { .. }) => Ok(()),
            Ok(SightingOutcome::NotAdded { message }) => Err(message),
            Err(error) => Err(error.to_string()),
        }
    }
}
