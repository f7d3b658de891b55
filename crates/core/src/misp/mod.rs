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
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), fortimisp_core::misp::Error> {
//! use fortimisp_core::misp::{Client, ClientOptions, Deleted, SearchQuery};
//! use fortimisp_core::secret::ApiKey;
//!
//! let client = Client::new(ClientOptions::new("https://misp.example.org", ApiKey::new("...")))?;
//! client.check(true, false).await?; // sightings on: the role needs perm_sighting
//! let hits = SearchQuery::new().types(["ip-src", "ip-dst", "ip-src|port", "ip-dst|port"]).to_ids(true);
//! // On-demand lookup (batched):
//! let found = client.search_values(&hits, &["198.51.100.7".parse().expect("an IP")]).await?;
//! // Incremental sync: changed since the last high-water mark, removals included.
//! let mut pager = client.pages(hits.clone().since(1_700_000_000).deleted(Deleted::Both));
//! while let Some(page) = pager.next_page().await {
//!     for indicator in page?.indicators {
//!         let _remove = indicator.deleted || !indicator.to_ids;
//!     }
//! }
//! # let _ = found;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod error;
pub mod indicator;
pub mod query;
mod wire;

pub use client::{
    Client, ClientOptions, FeedOutcome, Page, Pager, RetryPolicy, RoleInfo, ServerInfo, SightingOutcome, UserInfo,
    VersionInfo, WarninglistHit,
};
pub use error::Error;
pub use indicator::{AttributeKind, Indicator};
pub use query::{Deleted, SearchQuery};
