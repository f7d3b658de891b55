//! Permission probes for `integration validate`: prove, against the live box, that the token may do what the
//! configured backend does, without leaving anything behind.
//!
//! - [`Client::probe_address_write`]: creates a uniquely named address object (`<object_prefix>validate-<8 hex>`,
//!   [`PROBE_IP`], a comment saying it is a validate probe), reads it back and deletes it. The probe is deleted
//!   whatever failed in between; if the delete itself fails, [`WriteProbe::LeftBehind`] names the object so the
//!   operator can remove it. The ownership rule holds: an existing object with the probe's name and another
//!   comment is never touched.
//! - [`Client::probe_ban`]: `add_users` with an empty list (bans nobody).
//! - [`Client::block_group_meta`]: a block group with its reference count, to see a policy uses it.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};

use super::api::{Change, GroupMeta};
use super::objects::{Comment, Family, ObjectName};
use super::{Client, Error};

/// The probe's address: TEST-NET-1's second-to-last address (RFC 5737), documentation only. The probe is never a
/// member of a group, so it blocks nothing either way.
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

/// What [`Client::probe_address_write`] found.
#[derive(Debug)]
pub enum WriteProbe {
    /// Created, read back, deleted: the token may write address objects.
    Proven { name: ObjectName },
    /// The box refused the create; nothing was created (or the name belongs to an object that is not ours, which
    /// was left alone).
    Refused { name: ObjectName, error: Error },
    /// The probe is gone again, but a step before the delete failed (`error`).
    Failed { name: ObjectName, error: Error },
    /// The probe may still be on the box: the delete (or the read that would tell) failed with `error`. `cause`
    /// is what failed before, if anything.
    LeftBehind { name: ObjectName, error: Error, cause: Option<Error> },
}

/// Whether the box may have acted on a request that failed this way (no answer, or a 5xx without an envelope),
/// as opposed to an answer that refused it.
fn ambiguous(error: &Error) -> bool {
    error.is_retryable() && !matches!(error, Error::TooManyRequests { .. })
}

impl Client {
    /// The name of a probe object: `<object_prefix>validate-<nonce as 8 hex digits>` (at most 24 + 17 characters).
    pub fn probe_name(&self, nonce: u32) -> ObjectName {
        ObjectName::parse(&format!("{}validate-{nonce:08x}", self.group_options().object_prefix))
            .expect("invariant: a checked object_prefix plus 17 safe characters is a valid name")
    }

    /// Creates, reads back and deletes the probe object `probe_name(nonce)`; see the module docs.
    pub async fn probe_address_write(&self, created_at: DateTime<Utc>, nonce: u32) -> WriteProbe {
        let name = self.probe_name(nonce);
        let comment = Comment::probe(created_at);
        let transport = self.transport();
        let (created, mut cause) = match transport.create_address(&name, IpAddr::V4(PROBE_IP), &comment).await {
            Ok(Change::Applied) => (true, None),
            // -5: an object of that name exists; the read below tells whether it is our own (a retried POST).
            Ok(Change::Unchanged) => (false, None),
            Err(error) if ambiguous(&error) => (false, Some(error)),
            Err(error) => return WriteProbe::Refused { name, error },
        };
        match transport.get_address(Family::V4, name.as_str()).await {
            Ok(Some(entry)) if entry.comment == comment.as_str() => {}
            Ok(Some(entry)) if !created => {
                let error = Error::Foreign { name: name.to_string(), comment: entry.comment };
                return WriteProbe::Refused { name, error };
            }
            Ok(Some(_)) => {}
            Ok(None) if created => cause = Some(Error::NotFound { name: name.to_string() }),
            Ok(None) => {
                let error = cause.unwrap_or(Error::NotFound { name: name.to_string() });
                return WriteProbe::Refused { name, error };
            }
            Err(error) if created => cause = cause.or(Some(error)),
            Err(error) => return WriteProbe::LeftBehind { name, error, cause },
        }
        match transport.delete_address(Family::V4, name.as_str()).await {
            Ok(_) => match cause {
                None => WriteProbe::Proven { name },
                Some(error) => WriteProbe::Failed { name, error },
            },
            Err(error) => WriteProbe::LeftBehind { name, error, cause },
        }
    }

    /// `add_users` with an empty list: `Ok` (or an input error other than 401/403) means the profile may ban.
    pub async fn probe_ban(&self) -> Result<(), Error> {
        self.transport().ban_nobody().await
    }

    /// The block group of `family` read with its reference count; `None` if it does not exist.
    pub async fn block_group_meta(&self, family: Family) -> Result<Option<GroupMeta>, Error> {
        let options = self.group_options();
        let name = match family {
            Family::V4 => &options.block_group,
            Family::V6 => &options.block_group6,
        };
        self.transport().group_with_meta(family, name).await
    }
}
