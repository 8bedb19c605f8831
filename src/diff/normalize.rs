//! An object as `idplane diff` compares it: without what the apiserver
//! writes itself, with the defaults of its CRD filled in, and, for a
//! Secret, with each value reduced to a keyed digest the moment it is read.
//! Owns the one definition of that digest, shared by `idplane diff` and
//! the `GET /v1/orgs/{org}/objects` answer of `idplane run`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::resources::ObjectKey;
use crate::validate::{apply_defaults, check_secret, object_key};

/// Metadata the apiserver writes: never in a manifest, never a difference.
const SERVER_METADATA: [&str; 8] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The annotation client-side `kubectl apply` writes: a copy of the
/// manifest (a Secret's values included), so never shown and never compared.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The type the apiserver gives a Secret that names none.
const DEFAULT_SECRET_TYPE: &str = "Opaque";

/// An object as `idplane diff` compares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparable {
    pub key: ObjectKey,
    /// The object without server-managed fields, with its CRD's defaults;
    /// a Secret without `data` and `stringData`.
    pub shown: Value,
    /// A Secret's keys (`data` and `stringData` merged, as the apiserver
    /// stores them), each with the digest of its value; `None` for other
    /// kinds.
    pub secret: Option<BTreeMap<String, String>>,
}

/// Whether a value is a v1 Secret.
pub fn is_secret(value: &Value) -> bool {
    value.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && value.get("kind").and_then(Value::as_str) == Some("Secret")
}

/// The digest of one Secret value: HMAC-SHA256 keyed with `salt`, in hex.
/// Equal values give equal digests under one salt; a new salt per answer
/// keeps two answers from being compared with each other.
pub fn digest(salt: &[u8], value: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(value);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Leaves out what the apiserver writes (status, server-managed metadata,
/// kubectl's last-applied copy), fills in the namespace, drops empty
/// label and annotation maps, and gives a Secret its default type.
pub fn strip_server_fields(value: &mut Value, namespace: &str) {
    let secret = is_secret(value);
    let Some(object) = value.as_object_mut() else {
        return;
    };
    object.remove("status");
    if secret && !object.contains_key("type") {
        object.insert("type".into(), DEFAULT_SECRET_TYPE.into());
    }
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    for field in SERVER_METADATA {
        metadata.remove(field);
    }
    metadata.insert("namespace".into(), namespace.into());
    if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
        annotations.remove(LAST_APPLIED);
    }
    for map in ["labels", "annotations"] {
        let empty = metadata
            .get(map)
            .is_some_and(|m| m.is_null() || m.as_object().is_some_and(Map::is_empty));
        if empty {
            metadata.remove(map);
        }
    }
}

/// The object as compared, from its full content (a manifest, or a live
/// object read from the apiserver). A Secret's values are digested with
/// `salt` and dropped here; they go no further.
pub fn comparable(value: &Value, default_namespace: &str, salt: &[u8]) -> Comparable {
    let key = object_key(value, default_namespace);
    let mut shown = value.clone();
    let secret = secret_digests(value, salt);
    if let Some(object) = shown.as_object_mut()
        && secret.is_some()
    {
        object.remove("data");
        object.remove("stringData");
    }
    strip_server_fields(&mut shown, &key.namespace);
    apply_defaults(&mut shown);
    Comparable { key, shown, secret }
}

/// A Secret's values as their [`digest`]s under `salt`, by key; `None`
/// for anything but a Secret.
fn secret_digests(value: &Value, salt: &[u8]) -> Option<BTreeMap<String, String>> {
    is_secret(value).then(|| {
        let keys = check_secret(value).map(|s| s.keys).unwrap_or_default();
        keys.iter()
            .map(|(k, v)| (k.clone(), digest(salt, v)))
            .collect()
    })
}

/// The objects of `org` among those `idplane run` loaded, as `GET
/// /v1/orgs/{org}/objects` serves them: idplane's kinds and v1 Secrets
/// (other kinds are left out), each without server-managed fields and with
/// its namespace; a Secret's `data` holds each key's [`digest`] under
/// `salt` instead of its value (`stringData` merged in, as the apiserver
/// would store it).
pub fn served(loaded: &[Value], org: &str, default_namespace: &str, salt: &[u8]) -> Vec<Value> {
    loaded
        .iter()
        .filter_map(|value| {
            let key = object_key(value, default_namespace);
            let ours = key.owned_kind().is_some()
                && value.get("apiVersion").and_then(Value::as_str)
                    == Some(crate::resources::API_VERSION);
            if key.namespace != org || !(ours || is_secret(value)) {
                return None;
            }
            let mut out = value.clone();
            if let (Some(digests), Some(object)) =
                (secret_digests(value, salt), out.as_object_mut())
            {
                object.remove("stringData");
                let data: Map<String, Value> = digests
                    .iter()
                    .map(|(k, d)| (k.clone(), Value::String(d.clone())))
                    .collect();
                object.insert("data".into(), Value::Object(data));
            }
            strip_server_fields(&mut out, &key.namespace);
            Some(out)
        })
        .collect()
}

/// An object as [`served`] gave it: a Secret's `data` holds digests
/// already (under the answer's salt), which are taken as they are.
pub fn from_served(value: &Value, default_namespace: &str) -> Comparable {
    let key = object_key(value, default_namespace);
    let mut shown = value.clone();
    let mut secret = None;
    if is_secret(value)
        && let Some(object) = shown.as_object_mut()
    {
        let data = object.remove("data");
        object.remove("stringData");
        let digests = data
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, d)| (k.clone(), d.as_str().unwrap_or_default().to_string()))
            .collect();
        secret = Some(digests);
    }
    strip_server_fields(&mut shown, &key.namespace);
    apply_defaults(&mut shown);
    Comparable { key, shown, secret }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SALT: &[u8] = b"salt";

    fn live_secret() -> Value {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "smtp", "namespace": "acme", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{\"stringData\":{\"password\":\"hunter2\"}}"}},
            "type": "Opaque",
            // "hunter2", "user"
            "data": {"password": "aHVudGVyMg==", "user": "dXNlcg=="}})
    }

    #[test]
    fn server_fields_and_secret_values_are_left_out() {
        let live = comparable(&live_secret(), "default", SALT);
        assert_eq!(
            live.shown,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "smtp", "namespace": "acme"}})
        );
        let text = format!("{live:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("aHVudGVyMg"),
            "{text}"
        );
        // The manifest says the same with stringData, no type, no namespace.
        let manifest = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smtp"},
            "stringData": {"password": "hunter2"}, "data": {"user": "dXNlcg=="}});
        assert_eq!(comparable(&manifest, "acme", SALT), live);
        let changed = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smtp"},
            "stringData": {"password": "hunter3", "user": "user"}});
        let changed = comparable(&changed, "acme", SALT);
        assert_eq!(changed.shown, live.shown);
        assert_ne!(changed.secret, live.secret);
    }

    #[test]
    fn defaults_of_the_crd_are_filled_in() {
        let policy = json!({"apiVersion": "idplane.dev/v1alpha1", "kind": "EnrollmentPolicy",
            "metadata": {"name": "everyone", "labels": {}},
            "spec": {"priority": 100, "default": true, "rules": [{"name": "default", "enroll": "LOGIN"}]},
            "status": {"conditions": []}});
        let c = comparable(&policy, "acme", SALT);
        assert_eq!(
            c.key,
            ObjectKey::new(crate::resources::Kind::EnrollmentPolicy, "acme", "everyone")
        );
        assert_eq!(c.shown["spec"]["active"], json!(true));
        assert_eq!(c.shown["spec"]["authenticators"], json!([]));
        assert_eq!(
            c.shown["metadata"],
            json!({"name": "everyone", "namespace": "acme"})
        );
        assert!(c.shown.get("status").is_none());
        assert_eq!(c.secret, None);
    }

    #[test]
    fn served_secrets_carry_digests_that_compare_with_the_manifest() {
        let loaded = vec![
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smtp"},
                "stringData": {"password": "hunter2"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "elsewhere", "namespace": "other"}}),
        ];
        let served = served(&loaded, "acme", "acme", SALT);
        assert_eq!(served.len(), 1, "{served:?}");
        let text = served[0].to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            served[0]["data"]["password"],
            json!(digest(SALT, b"hunter2"))
        );
        let manifest = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "smtp"},
            "data": {"password": "aHVudGVyMg=="}});
        assert_eq!(
            from_served(&served[0], "x"),
            comparable(&manifest, "acme", SALT)
        );
    }

    #[test]
    fn a_digest_depends_on_the_salt() {
        assert_eq!(digest(b"a", b"v"), digest(b"a", b"v"));
        assert_ne!(digest(b"a", b"v"), digest(b"b", b"v"));
        assert_eq!(digest(b"a", b"v").len(), 64);
    }
}
