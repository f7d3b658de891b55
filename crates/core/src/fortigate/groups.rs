//! The domain operations the daemons call: ensure the block groups, block, unblock, list what we own, find and
//! remove legacy members. Idempotent: each can be repeated or raced and ends in the same state.
//!
//! Group bookkeeping ([`GroupCache`]) is per address family and per [`Client`]: the known groups (base first,
//! then the overflow groups nested in it, in number order) and how many blocked addresses each holds. It is
//! loaded from the box on first use and on [`Client::ensure_groups`]; a group the box calls full is skipped until
//! the next reload.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::client::{Change, Client};
use super::objects::{Comment, CommentKind, Family, Marker, ObjectName};
use super::Error;

/// Server-side filter for our objects; matches the placeholder too, so results are re-checked client-side.
const OWNED_FILTER: &str = "comment=@fortimisp ";
const PLACEHOLDER_V4: &str = "192.0.2.255";
const PLACEHOLDER_V6: &str = "2001:db8::ffff:ffff";

/// What [`Client::block`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The object was created and/or made a member of `group`.
    Blocked { name: ObjectName, group: String },
    /// Object and membership were already there.
    AlreadyBlocked { name: ObjectName, group: String },
}

/// What [`Client::unblock`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnblockOutcome {
    /// Membership removed and object deleted.
    Unblocked,
    /// No such object (already gone).
    NotBlocked,
}

/// An address object fortimisp owns (its comment is our marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedObject {
    pub name: ObjectName,
    pub ip: IpAddr,
    /// The parsed marker: creation time, MISP event id, free text.
    pub comment: Marker,
}

/// A member of a block group whose comment is the earlier Python service's bare timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyMember {
    /// The object name as found (may contain `/`, e.g. `198.51.100.7/32`).
    pub name: String,
    pub family: Family,
    /// One block group it is a member of.
    pub group: String,
    pub network: Option<IpNet>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct GroupCache {
    loaded: bool,
    /// Base group first, then its nested overflow groups by number.
    known: Vec<String>,
    /// Blocked addresses per group (placeholder and nested groups not counted).
    counts: HashMap<String, usize>,
    /// Groups the box answered "full" (-4/-52) for since the last load.
    full: HashSet<String>,
    /// Objects this client made members of a group (object -> group), so a concurrent `block` of the same IP that
    /// created the object does not add it to a second group when the first one just filled up. A hint only: it is
    /// verified with a GET before use. Cleared when it reaches [`RECENT_CAPACITY`].
    recent: HashMap<String, String>,
}

/// Bound of [`GroupCache::recent`]; reaching it clears the map (it is only a hint).
const RECENT_CAPACITY: usize = 4096;

impl GroupCache {
    fn remember(&mut self, object: &str, group: &str) {
        if self.recent.len() >= RECENT_CAPACITY {
            self.recent.clear();
        }
        self.recent.insert(object.to_string(), group.to_string());
    }
}

impl Client {
    fn base_group(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.opts.block_group,
            Family::V6 => &self.opts.block_group6,
        }
    }

    fn placeholder(&self, family: Family) -> (String, IpAddr) {
        let prefix = &self.opts.object_prefix;
        match family {
            Family::V4 => (format!("{prefix}placeholder"), PLACEHOLDER_V4.parse().expect("invariant: literal IPv4")),
            Family::V6 => (format!("{prefix}placeholder6"), PLACEHOLDER_V6.parse().expect("invariant: literal IPv6")),
        }
    }

    fn cache(&self, family: Family) -> &tokio::sync::Mutex<GroupCache> {
        match family {
            Family::V4 => &self.cache_v4,
            Family::V6 => &self.cache_v6,
        }
    }

    /// `base-N` names nested in the base group.
    fn overflow_number(&self, family: Family, member: &str) -> Option<u32> {
        member.strip_prefix(self.base_group(family))?.strip_prefix('-')?.parse().ok().filter(|n| *n >= 2)
    }

    fn count_blocked(&self, family: Family, members: &[String]) -> usize {
        let (placeholder, _) = self.placeholder(family);
        members.iter().filter(|m| **m != placeholder && self.overflow_number(family, m).is_none()).count()
    }

    /// Creates the missing block groups (`block_group`, `block_group6`), each with its placeholder member, and
    /// reloads the group bookkeeping (call it at start and once per pass). Existing groups are left as they are.
    ///
    /// # Errors
    /// [`Error::Foreign`] if a placeholder name is taken by an object that is not ours; transport/API errors.
    pub async fn ensure_groups(&self) -> Result<(), Error> {
        for family in [Family::V4, Family::V6] {
            let mut cache = self.cache(family).lock().await;
            self.ensure_base(family).await?;
            cache.loaded = false;
            self.load(family, &mut cache).await?;
        }
        Ok(())
    }

    /// The block groups of one family: the base group, then the overflow groups nested in it.
    pub async fn block_groups(&self, family: Family) -> Result<Vec<String>, Error> {
        let mut cache = self.cache(family).lock().await;
        self.load(family, &mut cache).await?;
        Ok(cache.known.clone())
    }

    async fn ensure_placeholder(&self, family: Family) -> Result<String, Error> {
        let (name, ip) = self.placeholder(family);
        let object = ObjectName::parse(&name)?;
        if self.create_address(&object, ip, &Comment::placeholder()).await? == Change::Unchanged {
            let existing = self.get_address(family, &name).await?;
            match existing {
                Some(e) if Comment::parse(&e.comment) == CommentKind::Placeholder => {}
                Some(e) => return Err(Error::Foreign { name, comment: e.comment }),
                None => return Err(Error::NameClash { name, code: None }),
            }
        }
        Ok(name)
    }

    async fn ensure_base(&self, family: Family) -> Result<(), Error> {
        let base = self.base_group(family);
        if self.get_group(family, base).await?.is_some() {
            return Ok(());
        }
        let placeholder = self.ensure_placeholder(family).await?;
        let change = self.create_group(family, base, &[&placeholder], "fortimisp block group").await?;
        if change == Change::Applied {
            tracing::info!(message = "Created block group.", group = %base);
        }
        Ok(())
    }

    /// Loads the groups of one family unless loaded: base group, overflow groups found among its members.
    async fn load(&self, family: Family, cache: &mut GroupCache) -> Result<(), Error> {
        if cache.loaded {
            return Ok(());
        }
        let base = self.base_group(family).to_string();
        let mut fresh = GroupCache { loaded: true, recent: std::mem::take(&mut cache.recent), ..GroupCache::default() };
        if let Some(group) = self.get_group(family, &base).await? {
            let mut overflow: Vec<(u32, String)> =
                group.members.iter().filter_map(|m| self.overflow_number(family, m).map(|n| (n, m.clone()))).collect();
            overflow.sort();
            fresh.counts.insert(base.clone(), self.count_blocked(family, &group.members));
            fresh.known.push(base);
            for (_, name) in overflow {
                if let Some(g) = self.get_group(family, &name).await? {
                    fresh.counts.insert(name.clone(), self.count_blocked(family, &g.members));
                    fresh.known.push(name);
                }
            }
        }
        *cache = fresh;
        Ok(())
    }

    /// Blocks `ip`: creates `object_prefix + ip` with `comment` (or finds it, if it is ours), then makes it a member
    /// of the first block group with room (overflow groups created on demand). Idempotent and race-safe within
    /// one client.
    ///
    /// # Errors
    /// [`Error::Foreign`] if an object of that name exists with a comment that is not our marker (nothing is
    /// touched); [`Error::NameClash`]; [`Error::Full`] if no overflow group can be nested in the base group;
    /// [`Error::Unauthorized`] and other transport/API errors.
    pub async fn block(&self, ip: IpAddr, comment: &Comment) -> Result<BlockOutcome, Error> {
        let family = Family::of(ip);
        let name = ObjectName::for_ip(&self.opts.object_prefix, ip)?;
        let mut created = None;
        // Twice: the object may be deleted (by housekeeping) between our POST's -5 and our GET.
        for _ in 0..2 {
            if self.create_address(&name, ip, comment).await? == Change::Applied {
                created = Some(true);
                break;
            }
            if let Some(existing) = self.get_address(family, name.as_str()).await? {
                if !Comment::parse(&existing.comment).is_ours() {
                    return Err(Error::Foreign { name: name.to_string(), comment: existing.comment });
                }
                created = Some(false);
                break;
            }
        }
        let Some(created) = created else {
            // -5 on create but nothing of that name in our table: a group or another object type holds it.
            return Err(Error::NameClash { name: name.to_string(), code: None });
        };
        let (group, change) = self.join_group(family, &name, created).await?;
        if created || change == Change::Applied {
            tracing::debug!(message = "Address object in block group.", %ip, object = %name, %group);
            Ok(BlockOutcome::Blocked { name, group })
        } else {
            Ok(BlockOutcome::AlreadyBlocked { name, group })
        }
    }

    async fn join_group(&self, family: Family, name: &ObjectName, fresh: bool) -> Result<(String, Change), Error> {
        let mut cache = self.cache(family).lock().await;
        self.load(family, &mut cache).await?;
        if cache.known.is_empty() {
            self.ensure_base(family).await?;
            cache.loaded = false;
            self.load(family, &mut cache).await?;
        }
        if fresh {
            // Another task of this client may have added the object (it saw our -5) while we waited for the lock.
            if let Some(group) = cache.recent.get(name.as_str()).cloned() {
                if self.is_member(family, &group, name.as_str()).await? {
                    return Ok((group, Change::Unchanged));
                }
            }
        } else {
            for group in cache.known.clone() {
                if self.is_member(family, &group, name.as_str()).await? {
                    return Ok((group, Change::Unchanged));
                }
            }
        }
        let max = self.opts.max_group_members;
        let mut reloaded = false;
        let mut idx = 0;
        loop {
            if idx >= cache.known.len() {
                if !reloaded {
                    // Counts may be stale (housekeeping removes members): look again before growing.
                    reloaded = true;
                    cache.loaded = false;
                    self.load(family, &mut cache).await?;
                    idx = 0;
                    continue;
                }
                self.add_overflow_group(family, &mut cache).await?;
            }
            let group = cache.known[idx].clone();
            let count = cache.counts.get(&group).copied().unwrap_or(0);
            if cache.full.contains(&group) || count >= max {
                idx += 1;
                continue;
            }
            match self.add_member(family, &group, name.as_str()).await {
                Ok(change) => {
                    if change == Change::Applied {
                        cache.counts.insert(group.clone(), count + 1);
                    }
                    cache.remember(name.as_str(), &group);
                    return Ok((group, change));
                }
                Err(Error::Full { .. }) => {
                    tracing::warn!(message = "Block group is full, trying the next one.", %group);
                    cache.full.insert(group);
                    idx += 1;
                }
                Err(Error::NotFound { .. }) => {
                    cache.loaded = false;
                    return Err(if self.get_group(family, &group).await?.is_some() {
                        Error::MissingReference { name: name.to_string() }
                    } else {
                        Error::NotFound { name: group }
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates `base-N` (placeholder inside) and nests it in the base group.
    async fn add_overflow_group(&self, family: Family, cache: &mut GroupCache) -> Result<(), Error> {
        let base = self.base_group(family).to_string();
        if cache.known.len() > super::MAX_OVERFLOW_GROUPS {
            return Err(Error::Full { name: base, code: -52 });
        }
        let name = format!("{base}-{}", cache.known.len() + 1);
        let placeholder = self.ensure_placeholder(family).await?;
        let comment = format!("fortimisp overflow of {base}");
        if self.create_group(family, &name, &[&placeholder], &comment).await? == Change::Unchanged
            && self.get_group(family, &name).await?.is_none()
        {
            return Err(Error::NameClash { name, code: None });
        }
        match self.add_member(family, &base, &name).await {
            Ok(_) => {}
            Err(Error::Full { code, .. }) => {
                self.make_room_in_base(family, &base, &name, code).await?;
                if let Some(c) = cache.counts.get_mut(&base) {
                    *c = c.saturating_sub(1);
                }
            }
            Err(e) => return Err(e),
        }
        let members = self.group_members(family, &name).await?;
        cache.counts.insert(name.clone(), self.count_blocked(family, &members));
        tracing::info!(message = "Created overflow block group.", group = %name, %base);
        cache.known.push(name);
        Ok(())
    }

    /// The box's own limit filled the base group, so the new overflow group cannot be nested: move one of our
    /// addresses from the base group into the (not yet nested) overflow group, then nest it in the freed slot.
    /// That address is unblocked for the one request between its removal and the nesting.
    async fn make_room_in_base(&self, family: Family, base: &str, overflow: &str, code: i64) -> Result<(), Error> {
        let full = || Error::Full { name: base.to_string(), code };
        let (placeholder, _) = self.placeholder(family);
        let members = self.group_members(family, base).await?;
        let candidates = members.iter().filter(|m| {
            **m != placeholder
                && self.overflow_number(family, m).is_none()
                && m.starts_with(&self.opts.object_prefix)
                && ObjectName::parse(m).is_ok()
        });
        for candidate in candidates {
            let ours = self.get_address(family, candidate).await?.is_some_and(|e| Comment::parse(&e.comment).is_ours());
            if !ours {
                continue;
            }
            self.add_member(family, overflow, candidate).await?;
            self.remove_member(family, base, candidate).await?;
            return match self.add_member(family, base, overflow).await {
                Ok(_) => {
                    tracing::warn!(message = "Base block group hit the FortiGate member limit; moved one address to make room for an overflow group.", group = %base, object = %candidate, overflow = %overflow);
                    Ok(())
                }
                Err(Error::Full { .. }) => Err(full()),
                Err(e) => Err(e),
            };
        }
        Err(full())
    }

    /// Unblocks `ip`: removes `object_prefix + ip` from every block group, then deletes it, only if its comment is
    /// our marker.
    ///
    /// # Errors
    /// [`Error::Foreign`] if the object is not ours (nothing touched); [`Error::InUse`] if something else (a
    /// policy, a foreign group) still references it: report it, do not retry in a loop.
    pub async fn unblock(&self, ip: IpAddr) -> Result<UnblockOutcome, Error> {
        let family = Family::of(ip);
        let name = ObjectName::for_ip(&self.opts.object_prefix, ip)?;
        let Some(entry) = self.get_address(family, name.as_str()).await? else {
            return Ok(UnblockOutcome::NotBlocked);
        };
        if !Comment::parse(&entry.comment).is_ours() {
            return Err(Error::Foreign { name: name.to_string(), comment: entry.comment });
        }
        self.remove_object(family, name.as_str()).await
    }

    /// Member first, then object (FortiOS refuses to delete a referenced address with -23).
    async fn remove_object(&self, family: Family, name: &str) -> Result<UnblockOutcome, Error> {
        {
            let mut cache = self.cache(family).lock().await;
            self.load(family, &mut cache).await?;
            cache.recent.remove(name);
            for group in cache.known.clone() {
                if self.remove_member(family, &group, name).await? == Change::Applied {
                    if let Some(c) = cache.counts.get_mut(&group) {
                        *c = c.saturating_sub(1);
                    }
                    cache.full.remove(&group);
                }
            }
        }
        let outcome = match self.delete_address(family, name).await? {
            Change::Applied => UnblockOutcome::Unblocked,
            Change::Unchanged => UnblockOutcome::NotBlocked,
        };
        tracing::debug!(message = "Address object removed.", object = %name, ?outcome);
        Ok(outcome)
    }

    /// Every address/address6 object fortimisp owns: server-side filter on the marker (so a box with 20 k objects
    /// is not paged through), re-checked client-side; placeholders and foreign objects are never returned.
    pub async fn list_owned(&self) -> Result<Vec<OwnedObject>, Error> {
        let mut owned = Vec::new();
        for family in [Family::V4, Family::V6] {
            for entry in self.list_addresses(family, Some(OWNED_FILTER)).await? {
                let CommentKind::Ours(marker) = Comment::parse(&entry.comment) else {
                    continue;
                };
                let (Ok(name), Some(net)) = (ObjectName::parse(&entry.name), entry.network) else {
                    continue;
                };
                if net.prefix_len() != net.max_prefix_len() {
                    continue;
                }
                owned.push(OwnedObject { name, ip: net.addr(), comment: marker });
            }
        }
        Ok(owned)
    }

    /// Members of the block groups whose comment is the legacy bare timestamp (housekeeping's `adopt_legacy`).
    /// Reads the group member lists, then the address tables with `format=name|comment|…`.
    pub async fn legacy_members(&self) -> Result<Vec<LegacyMember>, Error> {
        let mut legacy = Vec::new();
        for family in [Family::V4, Family::V6] {
            let groups = self.block_groups(family).await?;
            let mut member_of: HashMap<String, String> = HashMap::new();
            for group in groups {
                for member in self.group_members(family, &group).await? {
                    member_of.entry(member).or_insert_with(|| group.clone());
                }
            }
            if member_of.is_empty() {
                continue;
            }
            for entry in self.list_addresses(family, None).await? {
                let Some(group) = member_of.get(&entry.name) else {
                    continue;
                };
                if let CommentKind::Legacy { created_at } = Comment::parse(&entry.comment) {
                    legacy.push(LegacyMember {
                        name: entry.name,
                        family,
                        group: group.clone(),
                        network: entry.network,
                        created_at,
                    });
                }
            }
        }
        Ok(legacy)
    }

    /// Removes a legacy member from the block groups and deletes it, if its comment is still the legacy timestamp.
    ///
    /// # Errors
    /// [`Error::Foreign`] if the comment changed; [`Error::InUse`] as for [`Client::unblock`].
    pub async fn unblock_legacy(&self, member: &LegacyMember) -> Result<UnblockOutcome, Error> {
        let Some(entry) = self.get_address(member.family, &member.name).await? else {
            return Ok(UnblockOutcome::NotBlocked);
        };
        if !matches!(Comment::parse(&entry.comment), CommentKind::Legacy { .. }) {
            return Err(Error::Foreign { name: member.name.clone(), comment: entry.comment });
        }
        self.remove_object(member.family, &member.name).await
    }
}
