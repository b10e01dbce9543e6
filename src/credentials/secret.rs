//! Values that must never reach a log line by accident.

use std::fmt;

const REDACTED: &str = "[redacted]";

/// A secret string (token, password, key file): `Debug` and `Display` print
/// `[redacted]`; the value is only reachable through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call it only where the value leaves the process
    /// (a Secret's data, an HTTP body), never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Secret bytes (a whole `.dockerconfigjson`): `Debug` prints `[redacted]` and the
/// length; the bytes are only reachable through [`SecretBytes::expose`] or
/// [`SecretBytes::into_bytes`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wrap secret bytes.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    /// The bytes themselves, for where they leave the process.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The bytes themselves, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(value: Vec<u8>) -> Self {
        Self(value)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REDACTED} ({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_redacted_in_debug_display_and_nested_debug() {
        let s = Secret::new("t1.hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:#?}"), "[redacted]");
        assert!(!format!("{:?}", Some(vec![s.clone()])).contains("hunter2"));
        assert_eq!(s.expose(), "t1.hunter2");
    }

    #[test]
    fn secret_bytes_print_only_their_length() {
        let b = SecretBytes::new(b"{\"auths\":{}}".to_vec());
        assert_eq!(format!("{b:?}"), "[redacted] (12 bytes)");
        assert_eq!(b.expose(), b"{\"auths\":{}}");
        assert_eq!(b.len(), 12);
        assert!(!b.is_empty());
    }
}
