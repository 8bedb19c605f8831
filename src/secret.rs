//! The one type for a secret value (a hook's auth header or header from a
//! Secret, an SMTP password, the HMAC key of stored passcodes): it never
//! prints, logs or serializes its value. `Debug` shows `<redacted>`; a
//! secret read from a Kubernetes Secret serializes as the version of that
//! Secret, so a configuration dump says which version is in use without
//! saying what it holds. The value is read only through [`Secret::as_bytes`]
//! and [`Secret::as_text`], where it is sent.
//!
//! A leaf: imports nothing from the crate.

use std::sync::Arc;

/// A secret value. Two secrets are equal (and hash alike) when their
/// values are: where one came from does not change what it opens, so a
/// Secret rewritten with the same password keeps an SMTP endpoint's pooled
/// connections.
#[derive(Clone)]
pub struct Secret {
    value: Arc<[u8]>,
    /// The resourceVersion (or `manifest`) of the Kubernetes Secret it was
    /// read from; `None` for a flag, a file or the environment.
    version: Option<Arc<str>>,
}

impl Secret {
    /// A secret given to idplane directly (a flag, a file, the environment).
    pub fn new(value: impl AsRef<[u8]>) -> Self {
        Self {
            value: Arc::from(value.as_ref()),
            version: None,
        }
    }

    /// A value read from a Kubernetes Secret of this version.
    pub fn from_secret(value: impl AsRef<[u8]>, version: &str) -> Self {
        Self {
            value: Arc::from(value.as_ref()),
            version: Some(Arc::from(version)),
        }
    }

    /// The version of the Kubernetes Secret it came from, if it came from one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The value, for the one place that sends or keys with it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.value
    }

    /// The value as text (secrets used in headers and SMTP AUTH are text).
    pub fn as_text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Secret {}

impl std::hash::Hash for Secret {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A command-line value (`--otp-hash-key`).
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(text))
    }
}

/// Only where the value came from: `<redacted; Secret version N>`, or
/// `<redacted>` for a value not read from a Kubernetes Secret.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.version {
            Some(version) => s.serialize_str(&format!("<redacted; Secret version {version}>")),
            None => s.serialize_str("<redacted>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_never_shown() {
        let from_secret = Secret::from_secret(b"hunter22", "42");
        assert_eq!(format!("{from_secret:?}"), "<redacted>");
        assert_eq!(
            serde_json::to_value(&from_secret).unwrap(),
            "<redacted; Secret version 42>"
        );
        let from_flag: Secret = "hunter22".parse().unwrap();
        assert_eq!(format!("{:?}", Some(&from_flag)), "Some(<redacted>)");
        assert_eq!(serde_json::to_value(&from_flag).unwrap(), "<redacted>");
        assert_eq!(from_flag.as_text(), "hunter22");
    }

    #[test]
    fn secrets_are_equal_by_value() {
        assert_eq!(
            Secret::from_secret("pw", "1"),
            Secret::from_secret("pw", "2")
        );
        assert_eq!(Secret::new("pw"), Secret::from_secret("pw", "1"));
        assert_ne!(Secret::new("one"), Secret::new("two"));
    }
}
