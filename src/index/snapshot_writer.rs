//! The single writer of the runtime index. It receives changes (objects and
//! Secrets, from the apiserver or a manifest directory), re-validates only
//! what changed, rebuilds only the orgs that changed, and publishes an
//! immutable [`Snapshot`] that readers get through a watch channel.
//!
//! An object whose new version is invalid keeps its last valid version in
//! the configuration; its state says what is wrong with the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::snapshot::{Change, ObjectView, OrgSources, Referenced, Snapshot};
use super::{ObjectState, OrgConfig, Secrets, build};
use crate::resources::ObjectKey;
use crate::resources::reason;
use crate::validate::{Checked, Options, OwnFinding, Typed, check_one, finish};

/// What the writer keeps of an object: the validation result and a few
/// fields, not the object itself (memory stays small with many objects).
struct Entry {
    /// Hash of what decides validation (spec, generation, creation time).
    identity: u64,
    /// Hash of the spec alone (file generations).
    spec_hash: u64,
    generation: Option<i64>,
    uid: Option<String>,
    status: Option<Arc<Value>>,
    checked: Arc<Checked>,
    own: Vec<OwnFinding>,
    /// The last valid version; the same allocation as `checked` while valid.
    last_good: Option<Arc<Checked>>,
}

/// A hash of a JSON value (of its text), for cheap "did it change" checks.
pub fn hash_of(value: Option<&Value>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.map(Value::to_string).hash(&mut h);
    h.finish()
}

/// One org's configuration, object views and sources, as last built.
type BuiltOrg = (
    Arc<OrgConfig>,
    Arc<BTreeMap<ObjectKey, ObjectView>>,
    Arc<OrgSources>,
);

/// State owned by the writer task.
pub struct IndexWriter {
    options: Options,
    /// Objects by namespace.
    orgs: BTreeMap<String, BTreeMap<ObjectKey, Entry>>,
    secrets: Secrets,
    dirty: BTreeSet<String>,
    built: BTreeMap<String, BuiltOrg>,
    synced: bool,
    listed: bool,
    version: u64,
}

fn meta_i64(value: &Value, field: &str) -> Option<i64> {
    value.get("metadata")?.get(field)?.as_i64()
}

fn meta_str(value: &Value, field: &str) -> Option<String> {
    Some(value.get("metadata")?.get(field)?.as_str()?.to_string())
}

/// The part of an object that decides validation: a status-only change
/// needs no re-check.
fn spec_identity(value: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = value.get("metadata");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hash_of(value.get("spec")).hash(&mut h);
    meta.and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .hash(&mut h);
    meta.and_then(|m| m.get("creationTimestamp"))
        .and_then(Value::as_str)
        .hash(&mut h);
    h.finish()
}

impl IndexWriter {
    pub fn new(options: Options) -> Self {
        Self {
            options,
            orgs: BTreeMap::new(),
            secrets: Secrets::new(),
            dirty: BTreeSet::new(),
            built: BTreeMap::new(),
            synced: false,
            listed: false,
            version: 0,
        }
    }

    /// Applies one change; the affected orgs are rebuilt by [`Self::publish`].
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Upsert(value) => self.upsert(value),
            Change::Delete(key) => {
                if let Some(org) = self.orgs.get_mut(&key.namespace) {
                    org.remove(&key);
                }
                self.dirty.insert(key.namespace);
            }
            Change::Secret {
                namespace,
                name,
                data,
            } => {
                let key = (namespace.clone(), name);
                let changed = match data {
                    Some(d) => self.secrets.insert(key, d.clone()).as_ref() != Some(&d),
                    None => self.secrets.remove(&key).is_some(),
                };
                if changed {
                    self.dirty.insert(namespace);
                }
            }
            Change::Listed => self.listed = true,
            Change::Synced => self.synced = true,
            Change::ReplaceAll(values) => {
                self.dirty.extend(self.orgs.keys().cloned());
                let previous = std::mem::take(&mut self.orgs);
                self.secrets.clear();
                for value in values {
                    let (checked, _) = check_one(&value, &self.options);
                    if let Some(Typed::Secret(s)) = checked.typed {
                        self.secrets
                            .insert((checked.key.namespace.clone(), checked.key.name.clone()), s);
                        self.dirty.insert(checked.key.namespace);
                        continue;
                    }
                    // Keep each object's last good version across reloads.
                    let before = previous
                        .get(&checked.key.namespace)
                        .and_then(|o| o.get(&checked.key));
                    let last_good = before.and_then(|e| e.last_good.clone());
                    let value =
                        with_file_generation(value, before.map(|e| (e.generation, e.spec_hash)));
                    self.insert_entry(value, last_good);
                }
                self.listed = true;
                self.synced = true;
            }
        }
    }

    fn upsert(&mut self, value: Value) {
        let key = crate::validate::object_key(&value, &self.options.default_namespace);
        let org = self.orgs.entry(key.namespace.clone()).or_default();
        if let Some(entry) = org.get_mut(&key)
            && entry.identity == spec_identity(&value)
        {
            // Only status or bookkeeping changed: keep the validation result.
            entry.status = value.get("status").cloned().map(Arc::new);
            entry.uid = meta_str(&value, "uid");
            // Nothing to rebuild (the echo of each status write comes this
            // way): the org's built view takes the status as it is.
            if !self.dirty.contains(&key.namespace)
                && let Some((_, views, _)) = self.built.get_mut(&key.namespace)
                && let Some(view) = Arc::make_mut(views).get_mut(&key)
            {
                view.observed_status = entry.status.clone();
                view.uid = entry.uid.clone();
                return;
            }
            self.dirty.insert(key.namespace);
            return;
        }
        let last_good = org.get(&key).and_then(|e| e.last_good.clone());
        self.insert_entry(value, last_good);
    }

    fn insert_entry(&mut self, value: Value, last_good: Option<Arc<Checked>>) {
        let (checked, own) = check_one(&value, &self.options);
        if checked.key.owned_kind().is_none() {
            return;
        }
        let checked = Arc::new(checked);
        let last_good = if checked.typed.is_some() {
            Some(checked.clone())
        } else {
            last_good
        };
        let ns = checked.key.namespace.clone();
        self.dirty.insert(ns.clone());
        self.orgs.entry(ns).or_default().insert(
            checked.key.clone(),
            Entry {
                identity: spec_identity(&value),
                spec_hash: hash_of(value.get("spec")),
                generation: meta_i64(&value, "generation"),
                uid: meta_str(&value, "uid"),
                status: value.get("status").cloned().map(Arc::new),
                checked,
                own,
                last_good,
            },
        );
    }

    /// Secrets referenced by the current objects, as (namespace, name).
    pub fn referenced_secrets(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (ns, org) in &self.orgs {
            for entry in org.values() {
                let typed = entry
                    .checked
                    .typed
                    .as_ref()
                    .or(entry.last_good.as_ref().and_then(|c| c.typed.as_ref()));
                for reference in typed.map(Typed::secret_references).unwrap_or_default() {
                    out.insert((ns.clone(), reference.secret.name.clone()));
                }
            }
        }
        out
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.orgs.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rebuilds the orgs that changed and returns the new snapshot.
    pub fn publish(&mut self) -> Snapshot {
        let dirty = std::mem::take(&mut self.dirty);
        for ns in dirty {
            match self.orgs.get(&ns) {
                Some(org) if !org.is_empty() => {
                    let built = build_org(&ns, org, &self.secrets);
                    self.built.insert(ns, built);
                }
                _ => {
                    self.orgs.remove(&ns);
                    self.built.remove(&ns);
                }
            }
        }
        self.version += 1;
        let mut snapshot = Snapshot {
            version: self.version,
            synced: self.synced,
            ..Default::default()
        };
        for (ns, (config, views, sources)) in &self.built {
            snapshot.orgs.insert(ns.clone(), config.clone());
            snapshot.objects.insert_org(ns.clone(), views.clone());
            snapshot.sources.insert(ns.clone(), sources.clone());
        }
        snapshot
    }
}

/// Files carry no `metadata.generation`; give them one that grows by one
/// whenever the spec changes, so status can say which version it describes.
fn with_file_generation(mut value: Value, before: Option<(Option<i64>, u64)>) -> Value {
    if meta_i64(&value, "generation").is_some() {
        return value;
    }
    let generation = match before {
        None => 1,
        Some((g, spec_hash)) => {
            let g = g.unwrap_or(1);
            if spec_hash == hash_of(value.get("spec")) {
                g
            } else {
                g + 1
            }
        }
    };
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("generation".into(), Value::from(generation));
    }
    value
}

fn build_org(ns: &str, org: &BTreeMap<ObjectKey, Entry>, secrets: &Secrets) -> BuiltOrg {
    let mut used = Vec::with_capacity(org.len());
    let mut own = Vec::with_capacity(org.len());
    let mut substituted = BTreeMap::new();
    for (key, entry) in org {
        match (&entry.checked.typed, &entry.last_good) {
            (None, Some(good)) => {
                substituted.insert(key.clone(), &entry.own);
                used.push(good.clone());
                own.push(Vec::new());
            }
            _ => {
                used.push(entry.checked.clone());
                own.push(entry.own.clone());
            }
        }
    }
    let checked = used.iter().map(|c| (**c).clone()).collect();
    let report = finish(checked, own);
    let secrets_here: Secrets = secrets
        .range((ns.to_string(), String::new())..)
        .take_while(|((n, _), _)| n == ns)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sources = OrgSources {
        objects: used,
        secret_keys: secrets_here
            .iter()
            .map(|((_, name), data)| (name.clone(), data.keys.keys().cloned().collect()))
            .collect(),
    };
    let (mut config, states) = build(&report, &secrets_here);
    let org_config = config.remove(ns).unwrap_or_default();
    let mut views = BTreeMap::new();
    for (key, entry) in org {
        let mut state = states.get(key).cloned().unwrap_or_else(|| {
            ObjectState::new(false, false, None, reason::INVALID, "not validated")
        });
        let serving_last_good = substituted.contains_key(key);
        if let Some(problems) = substituted.get(key) {
            let text: Vec<String> = problems
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect();
            state.accepted = false;
            state.reason = reason::INVALID.into();
            state.message = format!("{}; the last valid version stays in use", text.join("; "));
        }
        views.insert(
            key.clone(),
            ObjectView {
                generation: entry.generation,
                uid: entry.uid.clone(),
                state,
                observed_status: entry.status.clone(),
                serving_last_good,
            },
        );
    }
    (Arc::new(org_config), Arc::new(views), Arc::new(sources))
}

/// The least time between two snapshots. Every reader makes a pass over a
/// new snapshot (the status writer, the runtime modules' status fields) and
/// the writer rebuilds each changed org: during a large apply, with the
/// echoes of status writes, one snapshot per few changes made that work
/// grow with the square of the objects. An isolated change is published at
/// once; under a burst, changes gather for this long, or for
/// [`PUBLISH_SPACING`] times what the last publication took, whichever is
/// longer: with many objects its rebuilds take at most a fifth of a core,
/// and the readers' passes fall with them.
const MIN_PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
const PUBLISH_SPACING: u32 = 4;

/// Runs the writer: applies changes as they come (in batches), publishes a
/// snapshot after each batch (at most one per [`MIN_PUBLISH_INTERVAL`]),
/// and reports which Secrets are referenced.
pub async fn run(
    mut writer: IndexWriter,
    mut changes: mpsc::Receiver<Change>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    referenced: watch::Sender<Referenced>,
    metrics: Arc<crate::telemetry::Metrics>,
) {
    // When the last snapshot went out, and how long building it took.
    let mut last_publish: Option<(tokio::time::Instant, std::time::Duration)> = None;
    while let Some(first) = changes.recv().await {
        let mut applied = 1;
        writer.apply(first);
        if let Some((last, took)) = last_publish {
            let until = last + MIN_PUBLISH_INTERVAL.max(took * PUBLISH_SPACING);
            while let Ok(Some(next)) = tokio::time::timeout_at(until, changes.recv()).await {
                writer.apply(next);
                applied += 1;
            }
        }
        let started = Instant::now();
        // One span per batch: the changes waiting are applied together.
        let span = tracing::info_span!(
            "index_batch",
            changes = tracing::field::Empty,
            orgs_changed = tracing::field::Empty,
            version = tracing::field::Empty,
        );
        let _entered = span.enter();
        while let Ok(next) = changes.try_recv() {
            writer.apply(next);
            applied += 1;
        }
        span.record("changes", applied);
        span.record("orgs_changed", writer.dirty.len());
        let snapshot = writer.publish();
        span.record("version", snapshot.version);
        tracing::debug!(orgs = snapshot.orgs.len(), "snapshot published");
        metrics.observe_rebuild(
            started.elapsed(),
            &snapshot.objects_by_kind(),
            snapshot.orgs.len(),
        );
        referenced.send_if_modified(|current| {
            let now = Referenced {
                complete: writer.listed,
                secrets: writer.referenced_secrets(),
            };
            if *current != now {
                *current = now;
                true
            } else {
                false
            }
        });
        snapshots.send_replace(Arc::new(snapshot));
        last_publish = Some((tokio::time::Instant::now(), started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::SecretData;
    use serde_json::json;

    fn hook(name: &str, generation: i64, url: &str, created: &str) -> Value {
        json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "TelephonyHook",
            "metadata": {"name": name, "namespace": "acme", "generation": generation, "creationTimestamp": created},
            "spec": {"url": url, "auth": {"header": "X-Key", "secretRef": {"name": "s", "key": "k"}}}
        })
    }

    fn secret() -> Change {
        Change::Secret {
            namespace: "acme".into(),
            name: "s".into(),
            data: Some(SecretData {
                keys: BTreeMap::from([("k".to_string(), b"v1".to_vec())]),
                version: "1".into(),
            }),
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(crate::resources::Kind::TelephonyHook, "acme", name)
    }

    #[test]
    fn invalid_change_keeps_last_good_configuration() {
        let mut w = IndexWriter::new(Options::default());
        w.apply(secret());
        w.apply(Change::Upsert(hook(
            "a",
            1,
            "https://one.example",
            "2024-01-01T00:00:00Z",
        )));
        let s = w.publish();
        assert_eq!(s.orgs["acme"].hooks["a"].url, "https://one.example");
        w.apply(Change::Upsert(hook(
            "a",
            2,
            "ftp://bad",
            "2024-01-01T00:00:00Z",
        )));
        let s = w.publish();
        assert_eq!(s.orgs["acme"].hooks["a"].url, "https://one.example");
        let view = &s.objects[&key("a")];
        assert!(!view.state.accepted && view.serving_last_good);
        assert!(
            view.state.message.contains("spec.url"),
            "{}",
            view.state.message
        );
        assert_eq!(view.generation, Some(2));
        // What the admission webhook reads: the object as the build used
        // it, and the Secrets' key names, never their values.
        let sources = &s.sources["acme"];
        match &sources.objects[..] {
            [only] => match &only.typed {
                Some(Typed::TelephonyHook(h)) => assert_eq!(h.spec.url, "https://one.example"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(sources.secret_keys["s"], BTreeSet::from(["k".to_string()]));
        w.apply(Change::Delete(key("a")));
        assert!(!w.publish().sources.contains_key("acme"));
    }

    #[test]
    fn a_status_only_change_reaches_the_view_without_a_rebuild() {
        let mut w = IndexWriter::new(Options::default());
        w.apply(secret());
        let created = "2024-01-01T00:00:00Z";
        w.apply(Change::Upsert(hook("a", 1, "https://one.example", created)));
        let before = w.publish();
        let mut echoed = hook("a", 1, "https://one.example", created);
        echoed["status"] = json!({"observedGeneration": 1});
        w.apply(Change::Upsert(echoed));
        let after = w.publish();
        let view = &after.objects[&key("a")];
        assert_eq!(
            view.observed_status.as_deref(),
            Some(&json!({"observedGeneration": 1}))
        );
        assert_eq!(view.state, before.objects[&key("a")].state);
        assert!(
            Arc::ptr_eq(&before.orgs["acme"], &after.orgs["acme"]),
            "the org's configuration was rebuilt"
        );
        // The snapshot before keeps what it showed.
        assert_eq!(before.objects[&key("a")].observed_status, None);
    }

    #[test]
    fn conflict_fails_over_when_the_winner_goes() {
        let mut w = IndexWriter::new(Options::default());
        w.apply(secret());
        w.apply(Change::Upsert(hook(
            "old",
            1,
            "https://old.example",
            "2024-01-01T00:00:00Z",
        )));
        w.apply(Change::Upsert(hook(
            "new",
            1,
            "https://new.example",
            "2024-02-01T00:00:00Z",
        )));
        let s = w.publish();
        assert_eq!(s.orgs["acme"].active_hook.as_deref(), Some("old"));
        assert_eq!(s.objects[&key("new")].state.reason, "Conflict");
        w.apply(Change::Delete(key("old")));
        let s = w.publish();
        assert_eq!(s.orgs["acme"].active_hook.as_deref(), Some("new"));
        assert_eq!(s.objects[&key("new")].state.reason, "Activated");
    }

    #[test]
    fn missing_secret_then_rotation() {
        let mut w = IndexWriter::new(Options::default());
        w.apply(Change::Upsert(hook(
            "a",
            1,
            "https://one.example",
            "2024-01-01T00:00:00Z",
        )));
        let s = w.publish();
        assert_eq!(s.objects[&key("a")].state.reason, "SecretNotFound");
        assert!(
            s.objects[&key("a")]
                .state
                .message
                .contains("Secret acme/s not found")
        );
        assert!(
            w.referenced_secrets()
                .contains(&("acme".into(), "s".into()))
        );
        w.apply(secret());
        let s = w.publish();
        assert_eq!(s.orgs["acme"].hooks["a"].auth_secret.as_text(), "v1");
        w.apply(Change::Secret {
            namespace: "acme".into(),
            name: "s".into(),
            data: Some(SecretData {
                keys: BTreeMap::from([("k".to_string(), b"v2".to_vec())]),
                version: "2".into(),
            }),
        });
        let s = w.publish();
        assert_eq!(s.orgs["acme"].hooks["a"].auth_secret.as_text(), "v2");
    }
}
