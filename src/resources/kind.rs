//! The kinds idplane owns, and the key that names any object, idplane's or
//! not (a manifest directory may hold other kinds, which validation
//! reports by their key).

/// One of the kinds idplane owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    TelephonyHook,
    EnrollmentPolicy,
    EmailProvider,
    EmailDomain,
}

impl Kind {
    /// Every kind, in a stable order (the CRDs', the watches').
    pub const ALL: [Kind; 4] = [
        Kind::TelephonyHook,
        Kind::EnrollmentPolicy,
        Kind::EmailProvider,
        Kind::EmailDomain,
    ];

    /// The kind as manifests and the apiserver write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::TelephonyHook => "TelephonyHook",
            Kind::EnrollmentPolicy => "EnrollmentPolicy",
            Kind::EmailProvider => "EmailProvider",
            Kind::EmailDomain => "EmailDomain",
        }
    }

    /// The kind named `kind`, if idplane owns it.
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies an object. The kind is text, for the key also names objects
/// of other kinds (Secrets, or whatever a manifest directory holds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of an object of one of idplane's kinds.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.as_str().to_string(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Whether the object is of `kind`.
    pub fn is(&self, kind: Kind) -> bool {
        self.kind == kind.as_str()
    }

    /// The object's kind, if idplane owns it.
    pub fn owned_kind(&self) -> Option<Kind> {
        Kind::parse(&self.kind)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert!(ObjectKey::new(kind, "acme", "x").is(kind));
        }
        assert_eq!(Kind::parse("Secret"), None);
        assert_eq!(Kind::parse("telephonyhook"), None);
    }
}
