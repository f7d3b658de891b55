//! The MISP REST client and the domain types it hands to the rest of fortimisp.
//!
//! Only this module knows MISP's URLs, its JSON envelopes and its quirks; everything else talks in
//! [`Indicator`], [`FeedOutcome`], [`SightingOutcome`] and [`Error`].
//!
//! # Layout
//! - [`client`]: [`Client`] built from [`ClientOptions`]: connection check (`/servers/getVersion`,
//!   `/users/view/me`), `attributes/restSearch` (value batches and paged syncs), feeds, sightings,
//!   warninglists. Retries with bounded, jittered exponential backoff live here and nowhere else.
//! - [`query`]: [`SearchQuery`], a builder for the restSearch filters fortimisp uses.
//! - [`indicator`]: [`Indicator`] and [`AttributeKind`]: a restSearch attribute reduced to the network it names.
//! - [`error`]: [`Error`], one enum for the MISP boundary, with [`Error::is_retryable`].
//! - `wire`: the response DTOs (MISP sends ids and timestamps as strings; booleans sometimes as `"0"`/`"1"`).
//!
//! # Facts this module is built around (see `shared/reference/misp-rest.md`)
//! - restSearch matches `value` exactly against either half of a composite (`ip-src|port`, `domain|ip`) and does
//!   no CIDR containment. A lookup therefore searches the bare IP and the local mirror keeps CIDR indicators as
//!   networks ([`Indicator::network`]) to do containment itself.
//! - Without `order`, MISP pages have no stable order: paged syncs always send one (`Attribute.id asc`).
//! - `enforceWarninglist` filters *after* MISP applied `limit`, so a page can come back short while more pages
//!   follow. A page is the last one only when returned + skipped (`X-Skipped-Elements-Count`) is below the limit.
//! - A failed sighting is an HTTP 200 without a `Sighting` key; a warninglist miss is `[]`, a hit is an object.
//! - Non-JSON bodies (HTML 500/502/504 from PHP or a proxy) are transient and retried.

pub mod client;
pub mod error;
pub mod indicator;
pub mod query;
mod wire;

pub use client::{
    Client, ClientOptions, FeedOutcome, Page, Pager, RetryPolicy, RoleInfo, ServerInfo,
    SightingOutcome, UserInfo, VersionInfo, WarninglistHit,
};
pub use error::Error;
pub use indicator::{AttributeKind, Indicator};
pub use query::{Deleted, SearchQuery};
