//! Types shared by every idplane resource: secret references (and the
//! fields that hold them), conditions, and the condition vocabulary.
//! Kubernetes-shaped, but free of client code.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every idplane resource.
pub const GROUP: &str = "idplane.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "idplane.dev/v1alpha1";

/// A reference to one key of a Secret in the same namespace. Secrets are only
/// ever referenced, never written inline into a resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of a Secret in the same namespace as this resource.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key inside the Secret's `data` (or `stringData`) whose value is used.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A field of an object that names a Secret key: one definition of which
/// fields reference Secrets, read by the validator (keys that exist), the
/// index (values resolved) and the Secret watches (which Secrets to watch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference<'a> {
    /// Path of the field from the object's root, e.g. `spec.auth.secretRef`.
    pub field: String,
    /// The Secret and key it names, in the object's namespace.
    pub secret: &'a SecretKeyRef,
}

/// One observation of the resource's state, in the shape Kubernetes uses
/// (`metav1.Condition`), so `kubectl wait --for=condition=Ready` works.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, for example `Accepted`, `Active` or `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why the condition has this status.
    pub reason: String,
    /// A human readable explanation; never contains secret values.
    pub message: String,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339). Unchanged while the status stays the same.
    pub last_transition_time: String,
}

/// The `status` value of a condition.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition types used across resources.
pub mod condition_type {
    /// The spec passed validation (schema, CEL and cross-object rules).
    pub const ACCEPTED: &str = "Accepted";
    /// The object is the one in service for its org (telephony hooks).
    pub const ACTIVE: &str = "Active";
    /// The object is usable by the runtime right now.
    pub const READY: &str = "Ready";
    /// The SMTP server accepted a connection, TLS and the credentials.
    pub const VERIFIED: &str = "Verified";
    /// A policy that can never apply because higher-priority policies hide it.
    pub const SHADOWED: &str = "Shadowed";
    /// Whether the policy's org has an active default policy; False means
    /// users in none of the org's groups get an error at sign-in.
    pub const DEFAULT_POLICY: &str = "DefaultPolicy";
    /// kstatus: present (True) only while work is under way that needs no
    /// change by the user: a Secret to appear, a verification to finish.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: present (True) only while nothing moves without a change by
    /// the user: an invalid spec, a lost conflict, a failed verification.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons used across resources.
pub mod reason {
    pub const VALID: &str = "Valid";
    pub const INVALID: &str = "Invalid";
    pub const CONFLICT: &str = "Conflict";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const DEACTIVATED: &str = "Deactivated";
    pub const ACTIVATED: &str = "Activated";
    pub const INSECURE_HTTP: &str = "InsecureHttp";
    pub const READY: &str = "Ready";
    /// `Ready` True for a hook with `active: false`: valid, its Secrets
    /// resolved, able to serve as a fallback or to take over.
    pub const STANDBY: &str = "Standby";
    /// `Ready` False, `Reconciling` True: the SMTP server or the DNS record
    /// has not been checked for this generation yet.
    pub const VERIFYING: &str = "Verifying";
    /// `Ready` False, `Stalled` True: the current generation is invalid and
    /// the last valid one stays in service.
    pub const LAST_VALID_VERSION_IN_USE: &str = "LastValidVersionInUse";
    /// `DefaultPolicy` True: the org has an active default policy.
    pub const DEFAULT_POLICY_ACTIVE: &str = "DefaultPolicyActive";
    /// `DefaultPolicy` False: the org has policies but no active default.
    pub const NO_DEFAULT_POLICY: &str = "NoDefaultPolicy";
}

/// A duration flag or field: `500ms`, `30s`, `5m`, `24h`, `1h30m`; the
/// message says what is expected.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    parse_duration_millis(text)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 5m or 24h"))
}

/// Parses a Kubernetes-style duration (`500ms`, `3s`, `1m30s`, `1h`) into
/// milliseconds. Only the units `ms`, `s`, `m` and `h` are accepted.
pub fn parse_duration_millis(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = if rest.starts_with("ms") {
            ("ms", 1)
        } else if rest.starts_with('s') {
            ("s", 1_000)
        } else if rest.starts_with('m') {
            ("m", 60_000)
        } else if rest.starts_with('h') {
            ("h", 3_600_000)
        } else {
            return None;
        };
        rest = &rest[unit.len()..];
        total = total.checked_add(value.checked_mul(scale)?)?;
    }
    Some(total)
}

/// The schema pattern matching what [`parse_duration_millis`] accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

#[cfg(test)]
mod tests {
    use super::parse_duration_millis;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_millis("3s"), Some(3_000));
        assert_eq!(parse_duration_millis("500ms"), Some(500));
        assert_eq!(parse_duration_millis("1m30s"), Some(90_000));
        assert_eq!(parse_duration_millis("1h"), Some(3_600_000));
        assert_eq!(parse_duration_millis(""), None);
        assert_eq!(parse_duration_millis("3"), None);
        assert_eq!(parse_duration_millis("3d"), None);
        assert_eq!(parse_duration_millis("s"), None);
    }
}
