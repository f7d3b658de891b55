//! One prune pass against the FortiGate: read, plan ([`crate::plan`]), reconcile, remove, journal.
//!
//! Every removal goes through [`fortimisp_core::unblock::Unblocker`], the core's one path that removes a block:
//! the journal gets a pending `unblock` action, then the object is read again (it must still carry our marker, or
//! the legacy timestamp for a legacy member), removed from the block groups the pass saw it in (member first), and
//! deleted; then the action is completed and the block ledger closed. That is three requests per block whatever
//! the number of overflow groups: the pass already read every group's members and passes them on, so nothing
//! probes each group (with 5 000 blocks in 9 groups that was 11 requests a block, 8 of them 404s). An object still
//! referenced elsewhere (-23, or a group joined since the pass read them) is reported and its action completed as
//! failed: it is not retried in a loop; the next pass sees it again (with its new membership) and tries again. A
//! timeout or 5xx leaves the action pending; the next pass that plans the same removal picks up the same action.
//!
//! Reconciliation: an owned object that is not a member of any block group (an admin edited the group) is
//! reported and, when it is still valid (neither expired nor revoked; manual blocks are never revoked), added back;
//! a block-group member named like ours whose object is gone is reported.
//!
//! With `backend = "banned-ip"` the pass reads the bans the journal's ledger says fortimisp made, and `plan()`
//! decides the revocations under the same safety rail; each goes through the same `Unblocker`. With
//! `backend = "threat-feed"` the ledger's feed entries are planned the same way, and also age out.
//!
//! A pass is one target's: with a fleet, the daemon runs one per target per cycle, each with its own safety rail
//! and its own failures; they share one read of MISP ([`MispView`]).

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::Utc;
use fortimisp_core::config::{Backend, Config, FortiGate};
use fortimisp_core::fortigate::{self, Comment, Family, OwnedObject};
use fortimisp_core::indicators::IndicatorSet;
use fortimisp_core::journal::Journal;
use fortimisp_core::metrics::{Metrics, TargetMetrics};
use fortimisp_core::unblock::{self, Target, Unblocked, Unblocker};
use fortimisp_core::{misp, view};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::plan::{self, Ban, Plan, Removal, Rules};

/// What a pass did, for `--once`'s exit code and summary ([`crate::summary`]) and the daemon's log.
#[derive(Debug, Default)]
pub struct Report {
    pub examined: usize,
    /// Removals done; in a dry run, the removals that would be done.
    pub removed: Removed,
    pub failed: usize,
    pub held_back: Option<(usize, usize)>,
    pub misp_view: bool,
    pub readded: usize,
    pub dangling: usize,
    pub interrupted: bool,
    /// The FortiGate refused our credentials or permissions (401/403) on a removal: the pass stopped there.
    pub refused: bool,
    /// Revocation was due but MISP could not be read completely: the pass did only half its job.
    pub misp_unavailable: bool,
}

/// Removals by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub max_age: usize,
    pub revoked: usize,
    pub legacy: usize,
}

impl Removed {
    pub fn add(&mut self, reason: plan::Reason) {
        match reason {
            plan::Reason::MaxAge => self.max_age += 1,
            plan::Reason::Revoked => self.revoked += 1,
            plan::Reason::Legacy => self.legacy += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.max_age + self.revoked + self.legacy
    }
}

impl Report {
    /// A pass fails when a removal failed, the safety rail tripped or revocation could not be checked: the
    /// operator must look.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.held_back.is_none() && !self.interrupted && !self.refused && !self.misp_unavailable
    }

    /// What became of revocation this pass, for the daemon's log: `held_back` (the safety rail),
    /// `misp_unavailable`, `checked`, or `not_checked` (`unblock_revoked` off, or no block to check).
    pub fn revocation(&self) -> &'static str {
        if self.held_back.is_some() {
            "held_back"
        } else if self.misp_unavailable {
            "misp_unavailable"
        } else if self.misp_view {
            "checked"
        } else {
            "not_checked"
        }
    }
}

/// Which block groups each member name is in (names are one namespace across both families).
type MemberOf = HashMap<String, Vec<String>>;

/// One FortiGate target as housekeeping sees it.
pub struct HkTarget {
    pub config: FortiGate,
    pub client: Arc<fortigate::Client>,
    pub metrics: TargetMetrics,
}

/// MISP's complete view of the blocking indicators, read at most once per cycle whatever the number of targets;
/// `None` when it could not be read.
pub type MispView = tokio::sync::OnceCell<Option<Arc<IndicatorSet>>>;

/// The shared handles of a pass.
pub struct Pass<'a> {
    pub config: &'a Config,
    pub target: &'a HkTarget,
    pub misp: &'a misp::Client,
    pub view: &'a MispView,
    pub journal: &'a Journal,
    pub metrics: &'a Arc<Metrics>,
    pub dry_run: bool,
    pub force: bool,
}

impl Pass<'_> {
    /// Runs one pass. Errors reading the FortiGate fail the pass; everything after is per object.
    pub async fn run(&self, shutdown: &CancellationToken) -> Result<Report, fortigate::Error> {
        match self.target.config.backend {
            Backend::BannedIp => return self.run_banned(shutdown).await,
            Backend::ThreatFeed => return self.run_feed(shutdown).await,
            Backend::AddressGroup => {}
        }
        if !self.dry_run {
            // Keeps the groups (and their placeholders) valid, whatever an admin did since the last pass.
            self.target.client.ensure_groups().await?;
        }
        let owned = self.target.client.list_owned().await?;
        let legacy =
            if self.config.housekeeping.adopt_legacy { self.target.client.legacy_members().await? } else { Vec::new() };
        let still_listed = self.misp_view(&owned).await;
        let misp_unavailable = self.config.housekeeping.unblock_revoked && !owned.is_empty() && still_listed.is_none();
        let rules = self.rules();
        let plan = plan::plan(Utc::now(), &owned, &legacy, &[], still_listed.as_ref(), &rules);
        let mut report = self.report(&plan, still_listed.is_some(), misp_unavailable);
        let member_of = self.reconcile(&owned, &plan, still_listed.as_ref(), &mut report).await?;
        self.remove(plan, &member_of, shutdown, &mut report).await;
        Ok(report)
    }

    fn rules(&self) -> Rules {
        Rules {
            max_age: self.config.housekeeping.max_age,
            unblock_revoked: self.config.housekeeping.unblock_revoked,
            max_unblock_fraction: self.config.housekeeping.max_unblock_fraction,
            force: self.force,
        }
    }

    /// The report of a planned pass; counts what it examined and reports a tripped safety rail.
    fn report(&self, plan: &Plan, misp_view: bool, misp_unavailable: bool) -> Report {
        self.metrics.hk_examined.inc_by(plan.examined as u64);
        let mut report = Report { examined: plan.examined, misp_view, misp_unavailable, ..Report::default() };
        if let Some((would, of)) = plan.held_back {
            self.target.metrics.failure("safety_rail").inc();
            error!(message = "Revocation held back: it would remove more than max_unblock_fraction of the blocks. Check MISP; rerun with --force to proceed.",
                   would_remove = would, blocks = of, max_unblock_fraction = self.config.housekeeping.max_unblock_fraction,
                   target = self.target.metrics.target());
            report.held_back = Some((would, of));
        }
        report
    }

    /// The owned addresses MISP still lists as blocking, or `None` if no complete view could be read.
    async fn misp_view(&self, owned: &[OwnedObject]) -> Option<HashSet<IpAddr>> {
        if !self.config.housekeeping.unblock_revoked || owned.is_empty() {
            return None;
        }
        match self.misp_set().await {
            Some(set) => Some(owned.iter().map(|o| o.ip).filter(|ip| set.lookup(*ip).is_some()).collect()),
            None => {
                self.target.metrics.failure("misp_unavailable").inc();
                None
            }
        }
    }

    /// MISP's view, read by the first pass of the cycle that needs it.
    async fn misp_set(&self) -> Option<Arc<IndicatorSet>> {
        self.view
            .get_or_init(|| async {
                match view::full(self.misp, &self.config.misp).await {
                    Ok((set, _)) => Some(Arc::new(set)),
                    Err(error) => {
                        warn!(message = "No complete view of MISP; nothing is unblocked for revocation this cycle.",
                              %error);
                        None
                    }
                }
            })
            .await
            .clone()
    }

    async fn reconcile(
        &self,
        owned: &[OwnedObject],
        plan: &Plan,
        still_listed: Option<&HashSet<IpAddr>>,
        report: &mut Report,
    ) -> Result<MemberOf, fortigate::Error> {
        let mut members = MemberOf::new();
        for family in [Family::V4, Family::V6] {
            for group in self.target.client.block_groups(family).await? {
                for member in self.target.client.group_members(family, &group).await? {
                    members.entry(member).or_default().push(group.clone());
                }
            }
        }
        let leaving: HashSet<String> = plan.removals.iter().map(Removal::name).collect();
        for object in owned {
            if members.contains_key(object.name.as_str()) || leaving.contains(object.name.as_str()) {
                continue;
            }
            // The plan's rule: a manual block is never revoked; without a view, nothing counts as revoked.
            let valid = plan::is_manual(object) || still_listed.is_none_or(|l| l.contains(&object.ip));
            warn!(message = "Owned object is not in any block group (edited by hand?).", object = %object.name,
                  readd = valid && !self.dry_run);
            if valid && !self.dry_run {
                let comment = Comment::new(
                    object.comment.created_at,
                    object.comment.event_id.as_deref().unwrap_or("manual"),
                    &object.comment.rest,
                );
                match self.target.client.block(object.ip, &comment).await {
                    Ok(_) => report.readded += 1,
                    Err(error) => warn!(message = "Could not re-add the object to a block group.", %error,
                                        object = %object.name),
                }
            }
        }
        let names: HashSet<&str> = owned.iter().map(|o| o.name.as_str()).collect();
        let prefix = &self.target.config.object_prefix;
        for member in members.keys() {
            if member.starts_with(prefix.as_str())
                && !names.contains(member.as_str())
                && !member.ends_with("placeholder")
                && !member.ends_with("placeholder6")
                && member.parse::<IpAddr>().is_err()
                && member[prefix.len()..].parse::<IpAddr>().is_ok()
            {
                report.dangling += 1;
                warn!(message = "Block-group member named like ours has no owned object (comment changed or object replaced).",
                      member = %member);
            }
        }
        Ok(members)
    }

    async fn remove(&self, plan: Plan, member_of: &MemberOf, shutdown: &CancellationToken, report: &mut Report) {
        let total = plan.removals.len();
        let progress = total >= 100 && std::io::stderr().is_terminal();
        let unblocker =
            Unblocker { target_name: &self.target.config.name, fortigate: &self.target.client, journal: self.journal };
        for (i, removal) in plan.removals.into_iter().enumerate() {
            if shutdown.is_cancelled() {
                report.interrupted = true;
                info!(message = "Shutdown requested; the pass stops between two removals.", done = i, total);
                break;
            }
            let why = removal.reason();
            let reason = why.as_str();
            let name = removal.name();
            if self.dry_run {
                println!("would remove {name} ({reason})");
                report.removed.add(why);
                continue;
            }
            let groups = || Some(member_of.get(&name).cloned().unwrap_or_default());
            let (target, member_of) = match removal {
                Removal::Owned { object, .. } => (Target::Address(object.ip), groups()),
                Removal::Legacy { member } => (Target::Legacy(member), groups()),
                Removal::Ledger { ip, .. } if self.target.config.backend == Backend::ThreatFeed => {
                    let push_to = self.config.feed.as_ref().map_or_else(Vec::new, |f| f.push_targets(ip));
                    (Target::Feed { ip, push_to }, None)
                }
                Removal::Ledger { ip, .. } => (Target::Banned(ip), None),
            };
            let request = unblock::Request { target, reason: reason.to_string(), member_of };
            match unblocker.unblock(&request).await {
                Unblocked::Done | Unblocked::NotThere => {
                    report.removed.add(why);
                    self.target.metrics.pruned(reason).inc();
                    info!(message = "Removed block.", object = %name, reason, target = self.target.metrics.target());
                }
                Unblocked::Refused(error) => {
                    // Every further request would be refused too, and each refusal counts toward an admin lockout
                    // that would also stop the integration daemon's blocks: the pass stops here.
                    report.failed += 1;
                    report.refused = true;
                    self.target.metrics.failure("error").inc();
                    error!(message = "FortiGate refused our credentials; the pass stops so as not to extend an admin lockout. Check the API token, its profile and trusted hosts.",
                           object = %name, %error, left = total - i - 1);
                    break;
                }
                failed => {
                    report.failed += 1;
                    let label = if matches!(failed, Unblocked::InUse(_)) { "in_use" } else { "error" };
                    self.target.metrics.failure(label).inc();
                    let error = match &failed {
                        Unblocked::Foreign(e)
                        | Unblocked::InUse(e)
                        | Unblocked::Retryable(e)
                        | Unblocked::Refused(e)
                        | Unblocked::Fatal(e) => e.as_str(),
                        Unblocked::Done | Unblocked::NotThere => "",
                    };
                    warn!(message = "Could not remove block; left in place.", object = %name, %error,
                          outcome = failed.label());
                }
            }
            if progress && (i + 1) % 100 == 0 {
                eprint!("\rpruned {}/{total}", i + 1);
            }
        }
        if progress {
            eprintln!("\rpruned {total}/{total}");
        }
    }

    /// `backend = "banned-ip"`: bans expire natively; only revocations are removed, and only bans the journal
    /// says fortimisp made. `plan()` decides, under the same safety rail as address objects.
    async fn run_banned(&self, shutdown: &CancellationToken) -> Result<Report, fortigate::Error> {
        let ledger = match self.journal.active_blocks_of(&self.target.config.name).await {
            Ok(ledger) => ledger,
            Err(error) => {
                warn!(message = "Journal cannot be read; no ban is examined this pass.", %error);
                Vec::new()
            }
        };
        let ours: HashMap<IpAddr, bool> =
            ledger.into_iter().filter(|b| b.backend == "banned-ip").map(|b| (b.ip, b.event_id.is_none())).collect();
        let banned: Vec<Ban> = self
            .target
            .client
            .list_banned()
            .await?
            .into_iter()
            .filter_map(|b| ours.get(&b.ip).map(|manual| Ban { ip: b.ip, manual: *manual, aged_from: None }))
            .collect();
        self.run_ledger(&banned, shutdown).await
    }

    /// `backend = "threat-feed"`: the feeds hold no comments, so the ledger is what fortimisp owns; entries age
    /// out by `max_age` and are revoked under the same rail as objects. A removal closes the ledger entry (the
    /// integration daemon stops serving it within seconds) and, with push, sends `remove` at once.
    async fn run_feed(&self, shutdown: &CancellationToken) -> Result<Report, fortigate::Error> {
        let ledger = match self.journal.active_blocks_of(&self.target.config.name).await {
            Ok(ledger) => ledger,
            Err(error) => {
                warn!(message = "Journal cannot be read; no feed entry is examined this pass.", %error);
                Vec::new()
            }
        };
        let blocks: Vec<Ban> = ledger
            .into_iter()
            .filter(|b| b.backend == "threat-feed")
            .map(|b| Ban { ip: b.ip, manual: b.event_id.is_none(), aged_from: Some(b.blocked_at) })
            .collect();
        self.run_ledger(&blocks, shutdown).await
    }

    /// Plans and removes ledger-only blocks (bans, feed entries).
    async fn run_ledger(&self, blocks: &[Ban], shutdown: &CancellationToken) -> Result<Report, fortigate::Error> {
        let mut still_listed = None;
        let mut misp_unavailable = false;
        if self.config.housekeeping.unblock_revoked && !blocks.is_empty() {
            match self.misp_set().await {
                Some(set) => {
                    still_listed = Some(blocks.iter().map(|b| b.ip).filter(|ip| set.lookup(*ip).is_some()).collect());
                }
                None => {
                    self.target.metrics.failure("misp_unavailable").inc();
                    misp_unavailable = true;
                }
            }
        }
        let plan = plan::plan(Utc::now(), &[], &[], blocks, still_listed.as_ref(), &self.rules());
        let mut report = self.report(&plan, still_listed.is_some(), misp_unavailable);
        self.remove(plan, &MemberOf::new(), shutdown, &mut report).await;
        Ok(report)
    }
}
