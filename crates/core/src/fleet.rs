//! Which FortiGate targets act on a log line: pure code.
//!
//! A target is known by its index in `Config::targets`. [`TargetSet`] is a fixed-size bit set of them, `Copy`,
//! so a candidate address carries its targets through the pipeline without an allocation. [`Claims`] turns a
//! line's device (`devid`, `devname`) and VDOM (`vd`) into the set of targets that act on it under
//! `blocking.scope`: under `origin` the targets claiming the device, under `fleet` every target, but only for a
//! line some target claims (a line from a device nobody claims is dropped either way).

use std::collections::HashSet;

use crate::config::{FortiGate, Scope};

/// Targets one config may name at most.
pub const MAX_TARGETS: usize = 256;

/// A set of target indexes (below [`MAX_TARGETS`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TargetSet([u64; MAX_TARGETS / 64]);

impl TargetSet {
    pub const EMPTY: TargetSet = TargetSet([0; MAX_TARGETS / 64]);

    /// The set holding only `index`.
    pub fn single(index: usize) -> TargetSet {
        let mut set = TargetSet::EMPTY;
        set.insert(index);
        set
    }

    /// Targets `0..n`.
    pub fn first(n: usize) -> TargetSet {
        let mut set = TargetSet::EMPTY;
        for i in 0..n.min(MAX_TARGETS) {
            set.insert(i);
        }
        set
    }

    pub fn insert(&mut self, index: usize) {
        assert!(index < MAX_TARGETS, "target index {index} out of range");
        self.0[index / 64] |= 1 << (index % 64);
    }

    pub fn contains(&self, index: usize) -> bool {
        index < MAX_TARGETS && self.0[index / 64] & (1 << (index % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn union(self, other: TargetSet) -> TargetSet {
        let mut out = self;
        for (o, w) in out.0.iter_mut().zip(other.0) {
            *o |= w;
        }
        out
    }

    /// The targets of `self` that are not in `other`.
    pub fn minus(self, other: TargetSet) -> TargetSet {
        let mut out = self;
        for (o, w) in out.0.iter_mut().zip(other.0) {
            *o &= !w;
        }
        out
    }

    pub fn is_subset(&self, other: &TargetSet) -> bool {
        self.minus(*other).is_empty()
    }

    /// The indexes, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_TARGETS).filter(|i| self.contains(*i))
    }
}

impl std::fmt::Debug for TargetSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<usize> for TargetSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = TargetSet::EMPTY;
        for i in iter {
            set.insert(i);
        }
        set
    }
}

/// What one target claims.
#[derive(Debug, Clone)]
struct Claim {
    /// `devid` or `devname` values; empty: every device.
    devices: HashSet<String>,
    /// `vd` values; empty: every VDOM.
    vdoms: HashSet<String>,
}

impl Claim {
    fn claims(&self, devid: Option<&str>, devname: Option<&str>, vd: Option<&str>) -> bool {
        let device = self.devices.is_empty()
            || devid.is_some_and(|d| self.devices.contains(d))
            || devname.is_some_and(|d| self.devices.contains(d));
        let vdom = self.vdoms.is_empty() || vd.is_some_and(|v| self.vdoms.contains(v));
        device && vdom
    }
}

/// The targets' claims and the scope: from a line's device to the targets that block what it names.
#[derive(Debug, Clone)]
pub struct Claims {
    claims: Vec<Claim>,
    scope: Scope,
    all: TargetSet,
    /// Every target claims every line (no `devices`, no `vdoms` anywhere): the common single-FortiGate case.
    claims_everything: bool,
}

impl Claims {
    /// The claims of the config's targets.
    pub fn of_targets(targets: &[FortiGate], scope: Scope) -> Claims {
        Claims::new(targets.iter().map(|t| (t.devices.as_slice(), t.vdoms.as_slice())), scope)
    }

    /// The claims of targets given as their (`devices`, `vdoms`), in order.
    pub fn new<'a>(targets: impl IntoIterator<Item = (&'a [String], &'a [String])>, scope: Scope) -> Claims {
        let claims: Vec<Claim> = targets
            .into_iter()
            .map(|(devices, vdoms)| Claim {
                devices: devices.iter().cloned().collect(),
                vdoms: vdoms.iter().cloned().collect(),
            })
            .collect();
        let claims_everything = claims.iter().all(|c| c.devices.is_empty() && c.vdoms.is_empty());
        Claims { all: TargetSet::first(claims.len()), claims, scope, claims_everything }
    }

    /// Every target.
    pub fn all(&self) -> TargetSet {
        self.all
    }

    /// The targets that act on a line from this device and VDOM; empty when no target claims it.
    pub fn of(&self, devid: Option<&str>, devname: Option<&str>, vd: Option<&str>) -> TargetSet {
        if self.claims_everything {
            return self.all;
        }
        let claimed: TargetSet =
            self.claims.iter().enumerate().filter(|(_, c)| c.claims(devid, devname, vd)).map(|(i, _)| i).collect();
        match self.scope {
            Scope::Fleet if !claimed.is_empty() => self.all,
            _ => claimed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(devices: &[&str], vdoms: &[&str]) -> FortiGate {
        let text = format!(
            "[misp]\nurl = \"https://misp\"\napi_key = \"k\"\n[fortigate]\nurl = \"https://fg\"\napi_key = \"k\"\n\
             devices = {devices:?}\nvdoms = {vdoms:?}\n"
        );
        let config = crate::config::RawConfig::parse(&text).unwrap().validate(&|_| None).unwrap();
        config.targets.into_iter().next().unwrap()
    }

    impl Claims {
        fn of_test(targets: &[FortiGate], scope: Scope) -> Claims {
            Claims::of_targets(targets, scope)
        }
    }

    #[test]
    fn origin_scope_picks_the_claiming_targets_and_fleet_scope_all_of_them() {
        let targets = [target(&["FGA", "edge-a"], &[]), target(&["FGB"], &["root"]), target(&["FGB"], &["dmz"])];
        let origin = Claims::of_test(&targets, Scope::Origin);
        assert_eq!(origin.of(Some("FGA"), None, Some("x")), TargetSet::single(0));
        assert_eq!(origin.of(None, Some("edge-a"), None), TargetSet::single(0), "devname claims too");
        assert_eq!(origin.of(Some("FGB"), None, Some("dmz")), TargetSet::single(2));
        assert_eq!(origin.of(Some("FGB"), None, None), TargetSet::EMPTY, "a target with vdoms needs a vd");
        assert_eq!(origin.of(Some("FGZ"), None, Some("root")), TargetSet::EMPTY);
        let fleet = Claims::of_test(&targets, Scope::Fleet);
        assert_eq!(fleet.of(Some("FGA"), None, None), TargetSet::first(3));
        assert_eq!(fleet.of(Some("FGZ"), None, None), TargetSet::EMPTY, "unclaimed stays unclaimed");
    }

    #[test]
    fn a_target_without_devices_claims_every_line() {
        let claims = Claims::of_test(&[target(&[], &[])], Scope::Origin);
        assert_eq!(claims.of(None, None, None), TargetSet::single(0));
        let claims = Claims::of_test(&[target(&["FGA"], &[]), target(&[], &[])], Scope::Origin);
        assert_eq!(claims.of(Some("FGA"), None, None), TargetSet::first(2));
        assert_eq!(claims.of(Some("FGQ"), None, None), TargetSet::single(1));
    }

    proptest! {
        #[test]
        fn set_operations_agree_with_a_hash_set(a in proptest::collection::vec(0usize..MAX_TARGETS, 0..20),
                                                b in proptest::collection::vec(0usize..MAX_TARGETS, 0..20)) {
            let (sa, sb): (TargetSet, TargetSet) = (a.iter().copied().collect(), b.iter().copied().collect());
            let (ha, hb): (HashSet<usize>, HashSet<usize>) = (a.into_iter().collect(), b.into_iter().collect());
            let mut union: Vec<usize> = ha.union(&hb).copied().collect();
            union.sort();
            prop_assert_eq!(sa.union(sb).iter().collect::<Vec<_>>(), union);
            let mut minus: Vec<usize> = ha.difference(&hb).copied().collect();
            minus.sort();
            prop_assert_eq!(sa.minus(sb).iter().collect::<Vec<_>>(), minus);
            prop_assert_eq!(sa.len(), ha.len());
            prop_assert_eq!(sa.is_subset(&sb), ha.is_subset(&hb));
        }
    }
}
