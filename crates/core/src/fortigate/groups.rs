//! The block-groups layer: [`Client`], over a shared [`Transport`], owns the block groups of one FortiGate and
//! the idempotent domain operations the daemons call: ensure the groups, block, unblock, list what we own, find
//! and remove legacy members. Each can be repeated or raced and ends in the same state. The dependency runs one
//! way: this module calls `transport`/`api`, never the reverse.
//!
//! # The cache, and why no lock is held across a request
//! Per address family, a [`Cache`] holds the known groups (base first, then the overflow groups nested in it, in
//! number order), how many blocked addresses each holds, the slots reserved by requests in flight, the groups the
//! box called full, and which block groups each member is in. It is loaded from the box on first use, on
//! [`Client::ensure_groups`] and when it looks stale. It sits behind a `std::sync::Mutex` locked only between
//! requests, never across one: a slow or retried call (a 5xx storm) delays its own block only.
//!
//! - **Racing for the last slot.** A block reserves a slot (`counts + reserved < max_group_members`) before its
//!   member add, and gives it back when the answer is in; a second block sees the slot taken and uses the next
//!   group. If the box answers "full" (-52/-4) anyway (its own limit, or members added by someone else), the group
//!   is marked full and the block moves on. A retried add that already landed answers -5: unchanged, not twice.
//! - **One object, one membership.** Concurrent blocks of one address are single-flighted per object name: one
//!   task joins it to a group, the others wait for that task (not for a lock) and then find its membership.
//!   Growing an overflow group and loading the cache are single-flighted the same way.
//! - **Membership without probing.** The cache knows each member's groups from the lists it loaded and from its
//!   own adds, so an unblock removes the member from those groups only (or from the caller's `hint`). If the box
//!   then refuses the delete as still referenced (-23), the groups are read again and the member removed from the
//!   ones found; a remaining -23 is a policy or a foreign group, reported as [`Error::InUse`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::watch;

use super::api::{AddressEntry, BannedIp, Change, SystemStatus};
use super::objects::{self, Comment, CommentKind, Family, Marker, ObjectName};
use super::transport::Transport;
use super::{ClientOptions, Error, MAX_OVERFLOW_GROUPS};

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

/// What the block-groups layer needs besides a transport. Field names follow `[fortigate]` in config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    /// IPv4 block group referenced by the deny policy.
    pub block_group: String,
    /// IPv6 block group.
    pub block_group6: String,
    /// Blocked addresses per group before overflowing to `NAME-2`, `NAME-3`, … (at least 1).
    pub max_group_members: usize,
    /// Prefix of created object names.
    pub object_prefix: String,
}

impl GroupOptions {
    fn check(&self) -> Result<(), Error> {
        if self.max_group_members == 0 {
            return Err(Error::InvalidOption { key: "max_group_members", reason: "must be at least 1" });
        }
        if self.block_group == self.block_group6 {
            return Err(Error::InvalidOption {
                key: "block_group6",
                reason: "must differ from block_group (one name space on FortiOS)",
            });
        }
        objects::check_prefix(&self.object_prefix)?;
        objects::check_group_name(&self.block_group)?;
        objects::check_group_name(&self.block_group6)
    }
}

/// What one family's groups look like, as far as this client knows. See the module docs.
#[derive(Debug, Default)]
struct Cache {
    loaded: bool,
    /// Base group first, then its nested overflow groups by number.
    known: Vec<String>,
    /// Blocked addresses per group (placeholder and nested groups not counted).
    counts: HashMap<String, usize>,
    /// Slots taken by member adds in flight.
    reserved: HashMap<String, usize>,
    /// Groups the box answered "full" (-4/-52) for since the last load.
    full: HashSet<String>,
    /// Member name -> the block groups it is in.
    member_of: HashMap<String, Vec<String>>,
    /// Work in progress by one task that the others wait for instead of repeating it.
    flights: HashMap<FlightKey, watch::Receiver<()>>,
}

impl Cache {
    /// Takes a slot in the first group with room, if any.
    fn reserve(&mut self, max: usize) -> Option<String> {
        let group = self
            .known
            .iter()
            .find(|g| {
                let taken = self.counts.get(*g).copied().unwrap_or(0) + self.reserved.get(*g).copied().unwrap_or(0);
                !self.full.contains(*g) && taken < max
            })?
            .clone();
        *self.reserved.entry(group.clone()).or_default() += 1;
        Some(group)
    }

    fn joined(&mut self, member: &str, group: &str, applied: bool) {
        if applied {
            *self.counts.entry(group.to_string()).or_default() += 1;
        }
        let groups = self.member_of.entry(member.to_string()).or_default();
        if !groups.iter().any(|g| g == group) {
            groups.push(group.to_string());
        }
    }

    fn left(&mut self, member: &str, group: &str, applied: bool) {
        if applied {
            if let Some(c) = self.counts.get_mut(group) {
                *c = c.saturating_sub(1);
            }
            self.full.remove(group);
        }
        if let Some(groups) = self.member_of.get_mut(member) {
            groups.retain(|g| g != group);
            if groups.is_empty() {
                self.member_of.remove(member);
            }
        }
    }
}

/// What the groups of one family look like on the box, read in one go.
struct Snapshot {
    known: Vec<String>,
    counts: HashMap<String, usize>,
    member_of: HashMap<String, Vec<String>>,
}

/// Work one task does for all: join one object to a group, grow an overflow group, load the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FlightKey {
    Join(String),
    Grow,
    Load,
}

/// The leader's turn at a [`FlightKey`]. Dropping it (done, failed or cancelled) removes the key and wakes the
/// waiters, who then look at the cache again.
struct Flight<'a> {
    cache: &'a Mutex<Cache>,
    key: FlightKey,
    _done: watch::Sender<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(self.cache).flights.remove(&self.key);
    }
}

enum Turn<'a> {
    Lead(Flight<'a>),
    Wait(watch::Receiver<()>),
}

/// A reserved slot in a group; dropping it gives the slot back.
struct Slot<'a> {
    cache: &'a Mutex<Cache>,
    group: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(self.cache).reserved.get_mut(&self.group) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The cache is only ever locked between requests, for a few map operations; a panic there leaves it usable.
fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

fn turn<'a>(cache: &'a Mutex<Cache>, key: FlightKey) -> Turn<'a> {
    let mut c = lock(cache);
    if let Some(rx) = c.flights.get(&key) {
        return Turn::Wait(rx.clone());
    }
    let (tx, rx) = watch::channel(());
    c.flights.insert(key.clone(), rx);
    Turn::Lead(Flight { cache, key, _done: tx })
}

/// Waits until the leader's [`Flight`] is dropped (the sender is never used to send).
async fn landed(mut rx: watch::Receiver<()>) {
    while rx.changed().await.is_ok() {}
}

/// The FortiGate client the daemons use: the block groups of one FortiGate over a [`Transport`], plus the
/// banned-IP calls. Cheap to share (`Arc<Client>`); several clients may share one transport.
pub struct Client {
    transport: Arc<Transport>,
    opts: GroupOptions,
    v4: Mutex<Cache>,
    v6: Mutex<Cache>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("transport", &self.transport).field("groups", &self.opts).finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the transport and the client (no request is sent).
    ///
    /// # Errors
    /// [`Error::CaFile`] if `ca_file` cannot be read or holds no certificate, [`Error::InvalidName`] for a prefix
    /// or group name that cannot be used, [`Error::InvalidOption`] for `max_group_members = 0` or equal group
    /// names, [`Error::Build`] if the TLS stack cannot be set up.
    pub fn new(opts: ClientOptions) -> Result<Client, Error> {
        let groups = opts.group_options();
        groups.check()?;
        Client::over(Arc::new(Transport::new(opts.transport_options())?), groups)
    }

    /// The block groups `groups` over an existing transport (one FortiGate, several layers).
    ///
    /// # Errors
    /// As [`Client::new`], for the group options.
    pub fn over(transport: Arc<Transport>, groups: GroupOptions) -> Result<Client, Error> {
        groups.check()?;
        Ok(Client { transport, opts: groups, v4: Mutex::default(), v6: Mutex::default() })
    }

    /// The transport under this client, for the raw REST calls.
    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// The block groups and object prefix this client works with.
    pub fn group_options(&self) -> &GroupOptions {
        &self.opts
    }

    fn cache(&self, family: Family) -> &Mutex<Cache> {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

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

    /// `base-N` names nested in the base group.
    fn overflow_number(&self, family: Family, member: &str) -> Option<u32> {
        member.strip_prefix(self.base_group(family))?.strip_prefix('-')?.parse().ok().filter(|n| *n >= 2)
    }

    fn is_block_group(&self, family: Family, name: &str) -> bool {
        name == self.base_group(family) || self.overflow_number(family, name).is_some()
    }

    /// Members that count towards `max_group_members`: not the placeholder, not a nested group.
    fn blocked_members<'m>(&self, family: Family, members: &'m [String]) -> Vec<&'m String> {
        let (placeholder, _) = self.placeholder(family);
        members.iter().filter(|m| **m != placeholder && self.overflow_number(family, m).is_none()).collect()
    }

    // ---- the raw calls callers use, passed through to the transport ----

    /// `GET /api/v2/monitor/system/status` (also a cheap auth check).
    pub async fn system_status(&self) -> Result<SystemStatus, Error> {
        self.transport.system_status().await
    }

    /// One address (v4) or address6 entry by name (any name, legacy `a.b.c.d/32` included).
    pub async fn get_address(&self, family: Family, name: &str) -> Result<Option<AddressEntry>, Error> {
        self.transport.get_address(family, name).await
    }

    /// Deletes one address entry by name, without the ownership check (see [`Client::unblock`]).
    pub async fn delete_address(&self, family: Family, name: &str) -> Result<Change, Error> {
        self.transport.delete_address(family, name).await
    }

    /// Member names of any group.
    pub async fn group_members(&self, family: Family, group: &str) -> Result<Vec<String>, Error> {
        self.transport.group_members(family, group).await
    }

    /// Child-table remove from any group. -3/404 = [`Change::Unchanged`].
    pub async fn remove_member(&self, family: Family, group: &str, member: &str) -> Result<Change, Error> {
        let change = self.transport.remove_member(family, group, member).await?;
        lock(self.cache(family)).left(member, group, change == Change::Applied);
        Ok(change)
    }

    /// Banned-IP backend: `add_users`; `expiry` `None` = no expiry.
    pub async fn ban(&self, ip: IpAddr, expiry: Option<std::time::Duration>) -> Result<(), Error> {
        self.transport.ban(ip, expiry).await
    }

    /// Banned-IP backend: `clear_users`.
    pub async fn unban(&self, ip: IpAddr) -> Result<(), Error> {
        self.transport.unban(ip).await
    }

    /// Banned-IP backend: the current list.
    pub async fn list_banned(&self) -> Result<Vec<BannedIp>, Error> {
        self.transport.list_banned().await
    }

    // ---- the block groups ----

    /// Creates the missing block groups (`block_group`, `block_group6`), each with its placeholder member, and
    /// reloads the group bookkeeping (call it at start and once per pass). Existing groups are left as they are.
    ///
    /// # Errors
    /// [`Error::Foreign`] if a placeholder name is taken by an object that is not ours; transport/API errors.
    pub async fn ensure_groups(&self) -> Result<(), Error> {
        for family in [Family::V4, Family::V6] {
            self.ensure_base(family).await?;
            self.reload(family).await?;
        }
        Ok(())
    }

    /// The block groups of one family: the base group, then the overflow groups nested in it.
    pub async fn block_groups(&self, family: Family) -> Result<Vec<String>, Error> {
        self.ensure_loaded(family).await?;
        Ok(lock(self.cache(family)).known.clone())
    }

    async fn ensure_placeholder(&self, family: Family) -> Result<String, Error> {
        let (name, ip) = self.placeholder(family);
        let object = ObjectName::parse(&name)?;
        if self.transport.create_address(&object, ip, &Comment::placeholder()).await? == Change::Unchanged {
            let existing = self.transport.get_address(family, &name).await?;
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
        if self.transport.get_group(family, base).await?.is_some() {
            return Ok(());
        }
        let placeholder = self.ensure_placeholder(family).await?;
        let change = self.transport.create_group(family, base, &[&placeholder], "fortimisp block group").await?;
        if change == Change::Applied {
            tracing::info!(message = "Created block group.", group = %base);
        }
        Ok(())
    }

    /// Loads the cache of one family unless loaded; one task loads, the others wait for it.
    async fn ensure_loaded(&self, family: Family) -> Result<(), Error> {
        loop {
            if lock(self.cache(family)).loaded {
                return Ok(());
            }
            match turn(self.cache(family), FlightKey::Load) {
                Turn::Wait(rx) => landed(rx).await,
                Turn::Lead(_flight) => return self.reload(family).await,
            }
        }
    }

    /// Reads the groups of one family from the box (base group, the overflow groups among its members) into the
    /// cache. Reservations and flights in progress are kept.
    async fn reload(&self, family: Family) -> Result<(), Error> {
        let snapshot = self.read_groups(family).await?;
        let mut c = lock(self.cache(family));
        c.known = snapshot.known;
        c.counts = snapshot.counts;
        c.member_of = snapshot.member_of;
        c.full.clear();
        c.loaded = true;
        Ok(())
    }

    async fn read_groups(&self, family: Family) -> Result<Snapshot, Error> {
        let mut snapshot = Snapshot { known: Vec::new(), counts: HashMap::new(), member_of: HashMap::new() };
        let base = self.base_group(family).to_string();
        let Some(group) = self.transport.get_group(family, &base).await? else {
            return Ok(snapshot);
        };
        let mut overflow: Vec<(u32, String)> =
            group.members.iter().filter_map(|m| self.overflow_number(family, m).map(|n| (n, m.clone()))).collect();
        overflow.sort();
        let note = |snapshot: &mut Snapshot, name: String, members: &[String]| {
            let mut count = 0;
            for member in self.blocked_members(family, members) {
                count += 1;
                snapshot.member_of.entry(member.clone()).or_default().push(name.clone());
            }
            snapshot.counts.insert(name.clone(), count);
            snapshot.known.push(name);
        };
        note(&mut snapshot, base, &group.members);
        for (_, name) in overflow {
            if let Some(g) = self.transport.get_group(family, &name).await? {
                note(&mut snapshot, name, &g.members);
            }
        }
        Ok(snapshot)
    }

    /// Blocks `ip`: creates `object_prefix + ip` with `comment` (or finds it, if it is ours), then makes it a member
    /// of the first block group with room (overflow groups created on demand). Idempotent and race-safe within
    /// one client; concurrent blocks of different addresses proceed independently.
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
            if self.transport.create_address(&name, ip, comment).await? == Change::Applied {
                created = Some(true);
                break;
            }
            if let Some(existing) = self.transport.get_address(family, name.as_str()).await? {
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

    /// Makes `name` a member of one block group, unless it is one already. `fresh`: we just created the object.
    async fn join_group(&self, family: Family, name: &ObjectName, fresh: bool) -> Result<(String, Change), Error> {
        let cache = self.cache(family);
        let _flight = loop {
            match turn(cache, FlightKey::Join(name.as_str().to_string())) {
                Turn::Wait(rx) => landed(rx).await,
                Turn::Lead(flight) => break flight,
            }
        };
        self.ensure_loaded(family).await?;
        if lock(cache).known.is_empty() {
            self.ensure_base(family).await?;
            self.reload(family).await?;
        }
        // The membership the cache knows (another task's add, or the box's lists), checked with one GET; an
        // object we did not create may also be in a group the cache has not seen, so then every group is asked.
        let listed = lock(cache).member_of.get(name.as_str()).cloned().unwrap_or_default();
        let others: Vec<String> = if fresh {
            Vec::new()
        } else {
            lock(cache).known.iter().filter(|g| !listed.contains(g)).cloned().collect()
        };
        for group in listed.iter().chain(&others) {
            if self.transport.is_member(family, group, name.as_str()).await? {
                lock(cache).joined(name.as_str(), group, false);
                return Ok((group.clone(), Change::Unchanged));
            }
            lock(cache).left(name.as_str(), group, false);
        }
        let max = self.opts.max_group_members;
        let mut reloaded = false;
        loop {
            let Some(group) = lock(cache).reserve(max) else {
                if !reloaded {
                    // Counts may be stale (housekeeping removes members): look again before growing.
                    reloaded = true;
                    self.reload(family).await?;
                } else {
                    self.grow(family).await?;
                }
                continue;
            };
            let slot = Slot { cache, group };
            let result = self.transport.add_member(family, &slot.group, name.as_str()).await;
            match result {
                Ok(change) => {
                    lock(cache).joined(name.as_str(), &slot.group, change == Change::Applied);
                    return Ok((slot.group.clone(), change));
                }
                Err(Error::Full { .. }) => {
                    tracing::warn!(message = "Block group is full, trying the next one.", group = %slot.group);
                    lock(cache).full.insert(slot.group.clone());
                }
                Err(Error::NotFound { .. }) => {
                    lock(cache).loaded = false;
                    return Err(if self.transport.get_group(family, &slot.group).await?.is_some() {
                        Error::MissingReference { name: name.to_string() }
                    } else {
                        Error::NotFound { name: slot.group.clone() }
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Adds the next overflow group, or waits for the task that is adding one.
    async fn grow(&self, family: Family) -> Result<(), Error> {
        match turn(self.cache(family), FlightKey::Grow) {
            Turn::Wait(rx) => {
                landed(rx).await;
                Ok(())
            }
            Turn::Lead(_flight) => self.add_overflow_group(family).await,
        }
    }

    /// Creates `base-N` (placeholder inside) and nests it in the base group.
    async fn add_overflow_group(&self, family: Family) -> Result<(), Error> {
        let base = self.base_group(family).to_string();
        let known = lock(self.cache(family)).known.len();
        if known > MAX_OVERFLOW_GROUPS {
            return Err(Error::Full { name: base, code: -52 });
        }
        let name = format!("{base}-{}", known + 1);
        let placeholder = self.ensure_placeholder(family).await?;
        let comment = format!("fortimisp overflow of {base}");
        if self.transport.create_group(family, &name, &[&placeholder], &comment).await? == Change::Unchanged
            && self.transport.get_group(family, &name).await?.is_none()
        {
            return Err(Error::NameClash { name, code: None });
        }
        match self.transport.add_member(family, &base, &name).await {
            Ok(_) => {}
            Err(Error::Full { code, .. }) => {
                let moved = self.make_room_in_base(family, &base, &name, code).await?;
                lock(self.cache(family)).left(&moved, &base, true);
            }
            Err(e) => return Err(e),
        }
        let members = self.transport.group_members(family, &name).await?;
        let mut c = lock(self.cache(family));
        c.counts.insert(name.clone(), 0);
        for member in self.blocked_members(family, &members) {
            c.joined(member, &name, true);
        }
        if !c.known.contains(&name) {
            c.known.push(name.clone());
        }
        drop(c);
        tracing::info!(message = "Created overflow block group.", group = %name, %base);
        Ok(())
    }

    /// The box's own limit filled the base group, so the new overflow group cannot be nested: move one of our
    /// addresses from the base group into the (not yet nested) overflow group, then nest it in the freed slot.
    /// That address is unblocked for the one request between its removal and the nesting. Returns the address
    /// moved.
    async fn make_room_in_base(&self, family: Family, base: &str, overflow: &str, code: i64) -> Result<String, Error> {
        let full = || Error::Full { name: base.to_string(), code };
        let (placeholder, _) = self.placeholder(family);
        let members = self.transport.group_members(family, base).await?;
        let candidates = members.iter().filter(|m| {
            **m != placeholder
                && self.overflow_number(family, m).is_none()
                && m.starts_with(&self.opts.object_prefix)
                && ObjectName::parse(m).is_ok()
        });
        for candidate in candidates {
            let ours = self
                .transport
                .get_address(family, candidate)
                .await?
                .is_some_and(|e| Comment::parse(&e.comment).is_ours());
            if !ours {
                continue;
            }
            self.transport.add_member(family, overflow, candidate).await?;
            self.transport.remove_member(family, base, candidate).await?;
            return match self.transport.add_member(family, base, overflow).await {
                Ok(_) => {
                    tracing::warn!(message = "Base block group hit the FortiGate member limit; moved one address to make room for an overflow group.", group = %base, object = %candidate, overflow = %overflow);
                    Ok(candidate.clone())
                }
                Err(Error::Full { .. }) => Err(full()),
                Err(e) => Err(e),
            };
        }
        Err(full())
    }

    /// Unblocks `ip`: removes `object_prefix + ip` from its block groups, then deletes it, only if its comment is
    /// our marker. `hint`: the block groups the caller saw it in (others are ignored); then nothing is probed
    /// and the removal costs three requests (read, remove member, delete). Without a hint the cache says which
    /// groups; if the box still calls the object referenced, the groups are read again and the removal retried
    /// once.
    ///
    /// # Errors
    /// [`Error::Foreign`] if the object is not ours (nothing touched); [`Error::InUse`] if something else (a
    /// policy, a foreign group) still references it: report it, do not retry in a loop.
    pub async fn unblock(&self, ip: IpAddr, hint: Option<&[String]>) -> Result<UnblockOutcome, Error> {
        let family = Family::of(ip);
        let name = ObjectName::for_ip(&self.opts.object_prefix, ip)?;
        let Some(entry) = self.transport.get_address(family, name.as_str()).await? else {
            return Ok(UnblockOutcome::NotBlocked);
        };
        if !Comment::parse(&entry.comment).is_ours() {
            return Err(Error::Foreign { name: name.to_string(), comment: entry.comment });
        }
        self.remove_object(family, name.as_str(), hint).await
    }

    /// Member first, then object (FortiOS refuses to delete a referenced address with -23).
    async fn remove_object(
        &self,
        family: Family,
        name: &str,
        hint: Option<&[String]>,
    ) -> Result<UnblockOutcome, Error> {
        let groups: Vec<String> = match hint {
            Some(groups) => groups.iter().filter(|g| self.is_block_group(family, g)).cloned().collect(),
            None => {
                self.ensure_loaded(family).await?;
                lock(self.cache(family)).member_of.get(name).cloned().unwrap_or_default()
            }
        };
        self.leave(family, name, &groups).await?;
        let deleted = match self.transport.delete_address(family, name).await {
            Err(Error::InUse { .. }) => {
                // A membership neither the hint nor the cache knew: read the groups again, leave those found.
                self.reload(family).await?;
                let more = lock(self.cache(family)).member_of.get(name).cloned().unwrap_or_default();
                if more.is_empty() {
                    return Err(Error::InUse { name: name.to_string() });
                }
                self.leave(family, name, &more).await?;
                self.transport.delete_address(family, name).await?
            }
            other => other?,
        };
        let outcome = match deleted {
            Change::Applied => UnblockOutcome::Unblocked,
            Change::Unchanged => UnblockOutcome::NotBlocked,
        };
        tracing::debug!(message = "Address object removed.", object = %name, ?outcome);
        Ok(outcome)
    }

    async fn leave(&self, family: Family, name: &str, groups: &[String]) -> Result<(), Error> {
        for group in groups {
            let change = self.transport.remove_member(family, group, name).await?;
            lock(self.cache(family)).left(name, group, change == Change::Applied);
        }
        Ok(())
    }

    /// Every address/address6 object fortimisp owns: server-side filter on the marker (so a box with 20 k objects
    /// is not paged through), re-checked client-side; placeholders and foreign objects are never returned.
    pub async fn list_owned(&self) -> Result<Vec<OwnedObject>, Error> {
        let mut owned = Vec::new();
        for family in [Family::V4, Family::V6] {
            for entry in self.transport.list_addresses(family, Some(OWNED_FILTER)).await? {
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
                for member in self.transport.group_members(family, &group).await? {
                    member_of.entry(member).or_insert_with(|| group.clone());
                }
            }
            if member_of.is_empty() {
                continue;
            }
            for entry in self.transport.list_addresses(family, None).await? {
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
    /// `hint` as for [`Client::unblock`].
    ///
    /// # Errors
    /// [`Error::Foreign`] if the comment changed; [`Error::InUse`] as for [`Client::unblock`].
    pub async fn unblock_legacy(
        &self,
        member: &LegacyMember,
        hint: Option<&[String]>,
    ) -> Result<UnblockOutcome, Error> {
        let Some(entry) = self.transport.get_address(member.family, &member.name).await? else {
            return Ok(UnblockOutcome::NotBlocked);
        };
        if !matches!(Comment::parse(&entry.comment), CommentKind::Legacy { .. }) {
            return Err(Error::Foreign { name: member.name.clone(), comment: entry.comment });
        }
        self.remove_object(member.family, &member.name, hint).await
    }
}
