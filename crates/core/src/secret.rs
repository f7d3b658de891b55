//! Secrets that must never reach a log line, a metric, a panic message or `validate` output.
//!
//! [`ApiKey`] owns the key bytes; its `Debug` and `Display` print `***`. The only way to read the key is
//! [`ApiKey::expose`], which the two HTTP clients call when they build the `Authorization` header.

use std::fmt;

/// An API key (MISP auth key or FortiGate REST token). Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; surrounding whitespace (a trailing newline from a key file) is trimmed.
    pub fn new(key: impl Into<String>) -> Self {
        let key: String = key.into();
        ApiKey(key.trim().to_string())
    }

    /// The key itself, for building an `Authorization` header. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_mask_the_key() {
        let key = ApiKey::new("0123456789abcdef0123456789abcdef01234567\n");
        assert_eq!(key.expose(), "0123456789abcdef0123456789abcdef01234567");
        assert!(!format!("{key:?}").contains("0123"));
        assert!(!format!("{key}").contains("0123"));
    }
}
