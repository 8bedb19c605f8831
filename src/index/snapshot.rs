//! The index's read side: the immutable [`Snapshot`] that readers get from
//! the writer's watch channel, the view of each object in it, and the
//! [`Change`]s the sources send to the writer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::{ObjectState, OrgConfig};
use crate::resources::{Kind, ObjectKey};
use crate::validate::{Checked, SecretData};

/// One change to the world the index describes.
#[derive(Clone, Debug)]
pub enum Change {
    /// An idplane object was created or changed (the whole object as JSON).
    Upsert(Value),
    /// An idplane object was deleted.
    Delete(ObjectKey),
    /// A referenced Secret changed; `None` when it does not exist.
    Secret {
        namespace: String,
        name: String,
        data: Option<SecretData>,
    },
    /// The watches of idplane's kinds delivered their first full listing
    /// (Secrets follow; see [`Referenced::complete`]).
    Listed,
    /// Every source, Secrets included, has delivered its first full listing.
    Synced,
    /// Replace everything with this set of objects (manifest reloads). Secrets
    /// among them are taken as the only Secrets.
    ReplaceAll(Vec<Value>),
}

/// What readers see of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectView {
    pub generation: Option<i64>,
    pub uid: Option<String>,
    pub state: ObjectState,
    /// The status the object carried when last seen (cluster mode), used to
    /// skip writes that would change nothing.
    pub observed_status: Option<Arc<Value>>,
    /// Whether a last valid version is in use while the current one is invalid.
    pub serving_last_good: bool,
}

/// An immutable view of the whole index.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub version: u64,
    /// Whether the first full sync is done (readiness).
    pub synced: bool,
    /// Orgs by namespace.
    pub orgs: BTreeMap<String, Arc<OrgConfig>>,
    /// Every idplane object's view.
    pub objects: ObjectViews,
    /// What each org was built from, by namespace (see [`OrgSources`]).
    pub sources: BTreeMap<String, Arc<OrgSources>>,
}

/// What one org's configuration was built from: read by the admission
/// webhook, which checks a candidate object against the live org with the
/// same cross-object rules.
#[derive(Clone, Debug, Default)]
pub struct OrgSources {
    /// Every object of the org as validated, in key order; an object whose
    /// current version is invalid appears as its last valid version, as
    /// the build uses it.
    pub objects: Vec<Arc<Checked>>,
    /// The org's Secrets that idplane holds (those its objects reference
    /// and that exist), by name, with their key names: never their values.
    pub secret_keys: BTreeMap<String, BTreeSet<String>>,
}

/// Object views by org, shared between snapshots: publishing a snapshot
/// copies pointers to unchanged orgs, not their objects.
#[derive(Clone, Debug, Default)]
pub struct ObjectViews(BTreeMap<String, Arc<BTreeMap<ObjectKey, ObjectView>>>);

impl ObjectViews {
    /// Puts one org's views in (the writer, when it publishes).
    pub(super) fn insert_org(&mut self, org: String, views: Arc<BTreeMap<ObjectKey, ObjectView>>) {
        self.0.insert(org, views);
    }

    /// Each org's views. An org that did not change keeps the same `Arc`
    /// from one snapshot to the next (`Arc::ptr_eq` tells a reader to skip it).
    pub fn orgs(&self) -> impl Iterator<Item = (&String, &Arc<BTreeMap<ObjectKey, ObjectView>>)> {
        self.0.iter()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&ObjectView> {
        self.0.get(&key.namespace)?.get(key)
    }

    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &ObjectView)> {
        self.0.values().flat_map(|org| org.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.iter().map(|(k, _)| k)
    }

    /// The views of one org.
    pub fn org(&self, org: &str) -> impl Iterator<Item = (&ObjectKey, &ObjectView)> {
        self.0.get(org).into_iter().flat_map(|o| o.iter())
    }

    pub fn len(&self) -> usize {
        self.0.values().map(|o| o.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::ops::Index<&ObjectKey> for ObjectViews {
    type Output = ObjectView;

    fn index(&self, key: &ObjectKey) -> &ObjectView {
        self.get(key).expect("no such object in the snapshot")
    }
}

impl Snapshot {
    pub fn org(&self, org: &str) -> Option<&Arc<OrgConfig>> {
        self.orgs.get(org)
    }

    /// How many objects of each of idplane's kinds the snapshot holds, in
    /// [`Kind::ALL`] order, zeros included (for the metrics).
    pub fn objects_by_kind(&self) -> Vec<(&'static str, usize)> {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                (
                    kind.as_str(),
                    self.objects.keys().filter(|k| k.is(kind)).count(),
                )
            })
            .collect()
    }
}

/// The Secrets the objects reference, for the Secret watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Referenced {
    /// Whether the objects' first full listing is in: only then is the set
    /// complete enough to declare the first sync done.
    pub complete: bool,
    /// (namespace, name) pairs.
    pub secrets: BTreeSet<(String, String)>,
}
