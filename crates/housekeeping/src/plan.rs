//! What a prune pass removes, decided without I/O.
//!
//! [`plan`] takes what the FortiGate holds (objects fortimisp owns, and with `adopt_legacy` the legacy members of
//! the block groups; with `backend = "banned-ip"` or `"threat-feed"`, the bans or feed entries the journal says fortimisp made), the clock, and — only when a complete view of MISP could be read — which owned addresses
//! MISP still lists as blocking. It returns the removals with their reason, and whether the revocation safety rail
//! tripped.
//!
//! Invariants, each tested below:
//! - only objects in `owned` (our comment marker), `legacy` (block-group members with the legacy timestamp) or
//!   `banned` (our bans) can ever be in the plan; nothing else is given to this function, so nothing else can be
//!   removed;
//! - bans are never aged out here (they expire on the FortiGate), only revoked; threat-feed entries (ledger blocks
//!   with a block time) age out by `max_age` like objects;
//! - without a MISP view (`still_listed == None`: MISP down, a page failed) nothing is removed for revocation;
//! - a manual block (`misp-event=manual`) is never revoked, only aged out;
//! - a revocation that would remove more than `max_unblock_fraction` of the blocks is held back (unless forced).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fortimisp_core::fortigate::{LegacyMember, OwnedObject};

/// Why a block is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Older than `max_age`.
    MaxAge,
    /// MISP no longer lists the indicator as blocking (deleted, IDS flag off, warninglisted, filtered out).
    Revoked,
    /// A legacy member older than `max_age`.
    Legacy,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MaxAge => "max_age",
            Reason::Revoked => "revoked",
            Reason::Legacy => "legacy",
        }
    }
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Owned {
        object: OwnedObject,
        reason: Reason,
    },
    Legacy {
        member: LegacyMember,
    },
    /// A block the journal's ledger holds (banned-ip: MISP no longer lists it; threat-feed: too old, or revoked).
    Ledger {
        ip: IpAddr,
        reason: Reason,
    },
}

/// A block known from the journal's ledger only: a ban (the FortiGate's ban list carries no comment) or a
/// threat-feed entry (a feed has no comments at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub ip: IpAddr,
    /// Made by `integration block` (no MISP event): never revoked.
    pub manual: bool,
    /// When it was made, for `max_age`; `None` for a ban, which expires on the FortiGate by itself.
    pub aged_from: Option<DateTime<Utc>>,
}

impl Removal {
    pub fn reason(&self) -> Reason {
        match self {
            Removal::Owned { reason, .. } => *reason,
            Removal::Legacy { .. } => Reason::Legacy,
            Removal::Ledger { reason, .. } => *reason,
        }
    }

    /// The object name, or the address of a ban.
    pub fn name(&self) -> String {
        match self {
            Removal::Owned { object, .. } => object.name.to_string(),
            Removal::Legacy { member } => member.name.clone(),
            Removal::Ledger { ip, .. } => ip.to_string(),
        }
    }
}

/// The rule inputs of a pass.
#[derive(Debug, Clone)]
pub struct Rules {
    pub max_age: Duration,
    pub unblock_revoked: bool,
    pub max_unblock_fraction: f64,
    pub force: bool,
}

/// The outcome of planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub removals: Vec<Removal>,
    /// Revocations held back by the safety rail: (would remove, out of).
    pub held_back: Option<(usize, usize)>,
    /// Owned objects and bans examined.
    pub examined: usize,
}

/// Decides the removals of one pass. `still_listed`: the owned addresses (and bans) MISP still lists as
/// blocking, or `None` when no complete view of MISP could be read.
pub fn plan(
    now: DateTime<Utc>,
    owned: &[OwnedObject],
    legacy: &[LegacyMember],
    banned: &[Ban],
    still_listed: Option<&HashSet<IpAddr>>,
    rules: &Rules,
) -> Plan {
    let max_age = chrono::Duration::from_std(rules.max_age).unwrap_or(chrono::Duration::MAX);
    let expired = |created: DateTime<Utc>| now.signed_duration_since(created) > max_age;
    let blocks = owned.len() + banned.len();
    let mut plan = Plan { examined: blocks, ..Plan::default() };
    let mut revoked = Vec::new();
    for object in owned {
        if expired(object.comment.created_at) {
            plan.removals.push(Removal::Owned { object: object.clone(), reason: Reason::MaxAge });
        } else if rules.unblock_revoked && !is_manual(object) {
            if let Some(listed) = still_listed {
                if !listed.contains(&object.ip) {
                    revoked.push(Removal::Owned { object: object.clone(), reason: Reason::Revoked });
                }
            }
        }
    }
    let mut live = Vec::new();
    for ban in banned {
        if ban.aged_from.is_some_and(expired) {
            plan.removals.push(Removal::Ledger { ip: ban.ip, reason: Reason::MaxAge });
        } else {
            live.push(ban);
        }
    }
    if let (true, Some(listed)) = (rules.unblock_revoked, still_listed) {
        let gone = live.into_iter().filter(|b| !b.manual && !listed.contains(&b.ip));
        revoked.extend(gone.map(|b| Removal::Ledger { ip: b.ip, reason: Reason::Revoked }));
    }
    if !revoked.is_empty() {
        let fraction = revoked.len() as f64 / blocks.max(1) as f64;
        if fraction > rules.max_unblock_fraction && !rules.force {
            plan.held_back = Some((revoked.len(), blocks));
        } else {
            plan.removals.extend(revoked);
        }
    }
    for member in legacy {
        if expired(member.created_at) {
            plan.removals.push(Removal::Legacy { member: member.clone() });
        }
    }
    plan
}

/// A block made by hand (`misp-event=manual`, or no event id): never revoked, only aged out.
pub fn is_manual(object: &OwnedObject) -> bool {
    object.comment.event_id.as_deref().is_none_or(|e| e == "manual")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fortimisp_core::fortigate::{Family, Marker, ObjectName};

    fn now() -> DateTime<Utc> {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }

    fn owned(ip: &str, age_days: i64, event: &str) -> OwnedObject {
        let ip: IpAddr = ip.parse().unwrap();
        OwnedObject {
            name: ObjectName::for_ip("misp-", ip).unwrap(),
            ip,
            comment: Marker {
                created_at: now() - chrono::Duration::days(age_days),
                event_id: Some(event.to_string()),
                rest: String::new(),
            },
        }
    }

    fn legacy(name: &str, age_days: i64) -> LegacyMember {
        LegacyMember {
            name: name.to_string(),
            family: Family::V4,
            group: "MISP_BLOCK".into(),
            network: name.parse().ok(),
            created_at: now() - chrono::Duration::days(age_days),
        }
    }

    fn rules() -> Rules {
        Rules {
            max_age: Duration::from_secs(90 * 86400),
            unblock_revoked: true,
            max_unblock_fraction: 0.5,
            force: false,
        }
    }

    fn names(plan: &Plan) -> Vec<(String, &'static str)> {
        plan.removals.iter().map(|r| (r.name(), r.reason().as_str())).collect()
    }

    #[test]
    fn ages_out_old_blocks_and_legacy_members_only() {
        let objs = [owned("198.51.100.1", 91, "1"), owned("198.51.100.2", 89, "1"), owned("2001:db8::1", 100, "2")];
        let leg = [legacy("198.51.100.7/32", 120), legacy("198.51.100.8/32", 10)];
        let listed: HashSet<IpAddr> = objs.iter().map(|o| o.ip).collect();
        let plan = plan(now(), &objs, &leg, &[], Some(&listed), &rules());
        assert_eq!(
            names(&plan),
            [
                ("misp-198.51.100.1".to_string(), "max_age"),
                ("misp-2001:db8::1".to_string(), "max_age"),
                ("198.51.100.7/32".to_string(), "legacy")
            ]
        );
        assert_eq!(plan.held_back, None);
        assert_eq!(plan.examined, 3);
    }

    #[test]
    fn revocation_needs_a_complete_view_and_respects_the_rail() {
        let objs: Vec<_> = (1..=10).map(|i| owned(&format!("198.51.100.{i}"), 1, "5")).collect();
        let mut listed: HashSet<IpAddr> = objs.iter().map(|o| o.ip).collect();
        // No view: nothing revoked.
        assert!(plan(now(), &objs, &[], &[], None, &rules()).removals.is_empty());
        // Two revoked: under the 50 % rail.
        listed.remove(&objs[0].ip);
        listed.remove(&objs[1].ip);
        let p = plan(now(), &objs, &[], &[], Some(&listed), &rules());
        assert_eq!(p.removals.len(), 2);
        assert!(p.removals.iter().all(|r| r.reason() == Reason::Revoked));
        // Eight revoked (80 %): held back, unless forced.
        let few: HashSet<IpAddr> = objs[8..].iter().map(|o| o.ip).collect();
        let p = plan(now(), &objs, &[], &[], Some(&few), &rules());
        assert!(p.removals.is_empty());
        assert_eq!(p.held_back, Some((8, 10)));
        let forced = plan(now(), &objs, &[], &[], Some(&few), &Rules { force: true, ..rules() });
        assert_eq!(forced.removals.len(), 8);
        // Without unblock_revoked nothing is revoked.
        let off = plan(now(), &objs, &[], &[], Some(&few), &Rules { unblock_revoked: false, ..rules() });
        assert!(off.removals.is_empty() && off.held_back.is_none());
    }

    #[test]
    fn manual_blocks_are_never_revoked() {
        let objs = [owned("198.51.100.1", 1, "manual"), owned("198.51.100.2", 1, "7"), owned("198.51.100.3", 1, "7")];
        let listed: HashSet<IpAddr> = [objs[2].ip].into_iter().collect();
        let p = plan(now(), &objs, &[], &[], Some(&listed), &rules());
        assert_eq!(names(&p), [("misp-198.51.100.2".to_string(), "revoked")]);
    }

    /// Bans follow the same rules as objects: a complete view, the rail, manual never revoked, no ageing.
    #[test]
    fn bans_are_revoked_under_the_same_rail() {
        let ban = |i: u8, manual| Ban { ip: format!("198.51.100.{i}").parse().unwrap(), manual, aged_from: None };
        let bans: Vec<Ban> = (1..=10).map(|i| ban(i, i == 10)).collect();
        let listed = |from: usize| -> HashSet<IpAddr> { bans[from..].iter().map(|b| b.ip).collect() };
        let check = |listed: Option<&HashSet<IpAddr>>, rules: &Rules| {
            let p = plan(now(), &[], &[], &bans, listed, rules);
            (names(&p), p.held_back, p.examined)
        };
        // No view: nothing revoked.
        assert_eq!(check(None, &rules()), (vec![], None, 10));
        // Two revoked of ten: under the 50 % rail.
        let two = vec![("198.51.100.1".to_string(), "revoked"), ("198.51.100.2".to_string(), "revoked")];
        assert_eq!(check(Some(&listed(2)), &rules()), (two, None, 10));
        // Nothing listed: nine revocable of ten (the manual ban is never revoked), held back unless forced.
        assert_eq!(check(Some(&HashSet::new()), &rules()), (vec![], Some((9, 10)), 10));
        let (forced, held, _) = check(Some(&HashSet::new()), &Rules { force: true, ..rules() });
        assert_eq!((forced.len(), held), (9, None));
        assert!(!forced.iter().any(|(name, _)| name == "198.51.100.10"), "manual ban kept: {forced:?}");
        // Without unblock_revoked nothing is revoked.
        assert_eq!(check(Some(&HashSet::new()), &Rules { unblock_revoked: false, ..rules() }), (vec![], None, 10));
    }

    /// Threat-feed entries (ledger blocks with a block time) age out like objects, manual ones included, and are
    /// revoked under the same rail; a ban (no block time) never ages out here.
    #[test]
    fn ledger_blocks_with_a_time_age_out_and_are_revoked() {
        let at = |days: i64| Some(now() - chrono::Duration::days(days));
        let blocks = [
            Ban { ip: "198.51.100.1".parse().unwrap(), manual: false, aged_from: at(91) },
            Ban { ip: "198.51.100.2".parse().unwrap(), manual: true, aged_from: at(91) },
            Ban { ip: "198.51.100.3".parse().unwrap(), manual: false, aged_from: at(5) },
            Ban { ip: "198.51.100.4".parse().unwrap(), manual: false, aged_from: at(5) },
            Ban { ip: "198.51.100.5".parse().unwrap(), manual: false, aged_from: None },
        ];
        let listed: HashSet<IpAddr> = ["198.51.100.4", "198.51.100.5"].iter().map(|s| s.parse().unwrap()).collect();
        let p = plan(now(), &[], &[], &blocks, Some(&listed), &rules());
        assert_eq!(
            names(&p),
            [
                ("198.51.100.1".to_string(), "max_age"),
                ("198.51.100.2".to_string(), "max_age"),
                ("198.51.100.3".to_string(), "revoked")
            ]
        );
        // Without a view of MISP only the ageing happens.
        assert_eq!(plan(now(), &[], &[], &blocks, None, &rules()).removals.len(), 2);
    }
}
