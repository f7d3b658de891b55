//! The threat-feed backend's live side: [`serve`] is the HTTPS listener the FortiGate pulls its feeds from.

pub mod serve;
