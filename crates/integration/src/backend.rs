//! Adapters from the core clients to the blocking stage's seams: the two FortiGate backends and MISP sightings.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fortimisp_core::fortigate::{self, BlockOutcome, Comment};
use fortimisp_core::misp::{self, SightingOutcome};

use crate::block::{Applied, Backend, Sighter};

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

/// Either backend, chosen by `fortigate.backend`.
pub enum AnyBackend {
    AddressGroup(AddressGroup),
    BannedIp(BannedIp),
}

impl Backend for AnyBackend {
    async fn block(&self, ip: IpAddr, comment: &Comment) -> Result<Applied, fortigate::Error> {
        match self {
            AnyBackend::AddressGroup(b) => b.block(ip, comment).await,
            AnyBackend::BannedIp(b) => b.block(ip, comment).await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::AddressGroup(b) => b.name(),
            AnyBackend::BannedIp(b) => b.name(),
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
