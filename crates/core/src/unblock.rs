//! The one path that removes a block, shared by `integration unblock`, housekeeping's prune pass (expired,
//! revoked, legacy) and its revocation of banned IPs.
//!
//! [`Unblocker::unblock`] journals a pending `unblock` action *before* the FortiGate is touched, then removes the
//! block through [`fortigate::Client`] (`unblock`, `unblock_legacy` or `unban`), then completes the action and,
//! when the block is gone, closes the ledger entry. Every removal ends in one [`Unblocked`] classification, which
//! the callers turn into their output and metrics; none of them reads a `fortigate::Error` itself.
//!
//! It does not decide *what* to remove (housekeeping's `plan` does, or the operator), rate-limit, or retry:
//! a retryable failure stays pending in the journal, and the next pass (or the next `integration unblock`) finds
//! the same action again (enqueue is idempotent per kind and IP).

use std::net::IpAddr;

use chrono::Utc;
use tracing::{error, warn};

use crate::fortigate::{self, LegacyMember, UnblockOutcome};
use crate::journal::{ActionId, ActionKind, Journal, NewAction, Outcome};

/// What to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The address-group backend: the object `object_prefix + ip`, only while its comment is our marker.
    Address(IpAddr),
    /// A legacy member of the block groups (`adopt_legacy`), only while its comment is the legacy timestamp.
    Legacy(LegacyMember),
    /// The banned-IP backend.
    Banned(IpAddr),
    /// The threat-feed backend: the address leaves the served feeds once the ledger closes (the integration daemon
    /// rereads it), and each feed of `push_to` gets a `remove` at once (push API). Feed entries carry no owner
    /// marker: only addresses of fortimisp's own ledger are ever given here.
    Feed { ip: IpAddr, push_to: Vec<String> },
}

impl Target {
    /// The single address the journal records, if there is one (a legacy member may name a wider network: it is
    /// removed without a journal entry).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Target::Address(ip) | Target::Banned(ip) | Target::Feed { ip, .. } => Some(*ip),
            Target::Legacy(member) => member.network.filter(|n| n.prefix_len() == n.max_prefix_len()).map(|n| n.addr()),
        }
    }
}

/// One removal to carry out.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    /// Why, for the journal and the ledger: `manual`, `max_age`, `revoked`, `legacy`.
    pub reason: String,
    /// The block groups the caller already knows the object is in (housekeeping read them all); `None` lets the
    /// client find them.
    pub member_of: Option<Vec<String>>,
}

/// How a removal ended. Only [`Unblocked::Retryable`] leaves the journal's action pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unblocked {
    /// Removed; action done, ledger closed.
    Done,
    /// Nothing to remove (already gone); action skipped, ledger closed.
    NotThere,
    /// The object is not ours (any more): left untouched; action failed.
    Foreign(String),
    /// Still referenced by a policy or a foreign group (-23): left; action failed, not retried in a loop.
    InUse(String),
    /// Timeout, 5xx, 429, or the journal refused even its memory fallback: the action stays pending.
    Retryable(String),
    /// The FortiGate refused our credentials or permissions (401/403): the action stays pending. A caller with
    /// more removals to make stops: each further refused request counts toward an admin lockout, and a profile
    /// that may not delete one object may not delete the next.
    Refused(String),
    /// Refused for good (an invalid name, any other FortiOS error): action failed.
    Fatal(String),
}

impl Unblocked {
    /// The block is no longer on the FortiGate.
    pub fn is_gone(&self) -> bool {
        matches!(self, Unblocked::Done | Unblocked::NotThere)
    }

    /// A short label for metrics and messages: `done`, `not_there`, `foreign`, `in_use`, `retryable`, `refused`,
    /// `fatal`.
    pub fn label(&self) -> &'static str {
        match self {
            Unblocked::Done => "done",
            Unblocked::NotThere => "not_there",
            Unblocked::Foreign(_) => "foreign",
            Unblocked::InUse(_) => "in_use",
            Unblocked::Retryable(_) => "retryable",
            Unblocked::Refused(_) => "refused",
            Unblocked::Fatal(_) => "fatal",
        }
    }

    /// Classifies what the FortiGate answered.
    fn classify(result: Result<UnblockOutcome, fortigate::Error>) -> Unblocked {
        match result {
            Ok(UnblockOutcome::Unblocked) => Unblocked::Done,
            Ok(UnblockOutcome::NotBlocked) => Unblocked::NotThere,
            Err(e @ fortigate::Error::Foreign { .. }) => Unblocked::Foreign(e.to_string()),
            Err(e @ fortigate::Error::InUse { .. }) => Unblocked::InUse(e.to_string()),
            Err(e) if e.is_retryable() => Unblocked::Retryable(e.to_string()),
            Err(e) if e.is_fatal() => Unblocked::Refused(e.to_string()),
            Err(e) => Unblocked::Fatal(e.to_string()),
        }
    }

    /// The journal outcome; `None` while the action stays pending.
    fn outcome(&self) -> Option<Outcome> {
        match self {
            Unblocked::Done => Some(Outcome::Done),
            Unblocked::NotThere => Some(Outcome::Skipped { reason: "not on the fortigate".into() }),
            Unblocked::Foreign(reason) | Unblocked::InUse(reason) | Unblocked::Fatal(reason) => {
                Some(Outcome::Failed { reason: reason.clone() })
            }
            Unblocked::Retryable(_) | Unblocked::Refused(_) => None,
        }
    }
}

/// Removes blocks, journal first. Cheap to build per call site; holds only references.
#[derive(Debug, Clone, Copy)]
pub struct Unblocker<'a> {
    /// The name of the fleet target `fortigate` writes to (`default` for a single `[fortigate]` table).
    pub target_name: &'a str,
    pub fortigate: &'a fortigate::Client,
    pub journal: &'a Journal,
}

impl Unblocker<'_> {
    /// Journals the removal as pending, removes it from the FortiGate, and journals how it ended.
    pub async fn unblock(&self, request: &Request) -> Unblocked {
        let ip = request.target.ip();
        let action = match ip {
            Some(ip) => match self.journal_pending(ip, &request.reason).await {
                Ok(id) => Some(id),
                Err(error) => return Unblocked::Retryable(format!("journal: {error}")),
            },
            None => None,
        };
        let unblocked = Unblocked::classify(self.remove(request).await);
        if let (Some(ip), true) = (ip, unblocked.is_gone()) {
            if let Err(error) = self.journal.record_unblock(self.target_name, ip, &request.reason, Utc::now()).await {
                warn!(message = "Could not close the block in the journal ledger.", %error, %ip);
            }
        }
        if let Some(id) = action {
            let written = match unblocked.outcome() {
                Some(outcome) => self.journal.complete(id, &outcome).await,
                None => self.journal.record_attempt(id, unblocked_reason(&unblocked)).await,
            };
            if let Err(error) = written {
                warn!(message = "Could not journal the outcome of an unblock.", %error, ip = ?ip);
            }
        }
        unblocked
    }

    /// The pending `unblock` action. The journal keeps a memory copy when the file fails; an error here means
    /// even that failed, and the FortiGate is not touched without a record.
    async fn journal_pending(&self, ip: IpAddr, reason: &str) -> Result<ActionId, crate::journal::Error> {
        let action = NewAction {
            target: self.target_name.to_string(),
            kind: ActionKind::Unblock,
            ip,
            reason: reason.to_string(),
            event_id: None,
            rule: None,
            comment: None,
            requested_at: Utc::now(),
        };
        self.journal.enqueue(&action).await.inspect_err(|error| {
            error!(message = "Journal refused an unblock; the FortiGate is left untouched.", %error, %ip);
        })
    }

    async fn remove(&self, request: &Request) -> Result<UnblockOutcome, fortigate::Error> {
        let hint = request.member_of.as_deref();
        match &request.target {
            Target::Banned(ip) => self.fortigate.unban(*ip).await.map(|()| UnblockOutcome::Unblocked),
            Target::Address(ip) => self.fortigate.unblock(*ip, hint).await,
            Target::Legacy(member) => self.fortigate.unblock_legacy(member, hint).await,
            Target::Feed { ip, push_to } => {
                let entry = [ipnet::IpNet::from(*ip)];
                for feed in push_to {
                    self.fortigate.transport().push_feed(feed, fortigate::PushCommand::Remove, &entry).await?;
                }
                Ok(UnblockOutcome::Unblocked)
            }
        }
    }
}

fn unblocked_reason(unblocked: &Unblocked) -> &str {
    match unblocked {
        Unblocked::Foreign(r)
        | Unblocked::InUse(r)
        | Unblocked::Retryable(r)
        | Unblocked::Refused(r)
        | Unblocked::Fatal(r) => r,
        Unblocked::Done | Unblocked::NotThere => "",
    }
}
