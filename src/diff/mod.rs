//! What `idplane diff` decides, pure: each object as compared
//! ([`normalize`]: server-managed fields left out, the CRD's defaults
//! filled in, a Secret's values reduced to digests), which objects the
//! manifests change, would create or (with `--prune`) would delete, and the
//! unified diff of each ([`unified`]). Reading the manifests, the cluster
//! or a running idplane, colours and exit statuses are the CLI's
//! (`cli/diff.rs`).

pub mod normalize;
pub mod unified;

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::ObjectKey;
pub use normalize::{Comparable, comparable, digest, from_served, served};
pub use unified::{Line, LineKind};

/// What applying the manifests would do to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unchanged,
    Changed,
    /// In the manifests, not live.
    Created,
    /// Live, of idplane's kinds, in none of the manifests (`--prune`).
    Deleted,
}

/// One object compared: what changes, and the two texts (empty for the
/// side that has no object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: ObjectKey,
    pub change: Change,
    pub live: String,
    pub manifest: String,
}

impl Entry {
    /// The unified diff of the entry, headed `--- live KIND NS/NAME` and
    /// `+++ manifest KIND NS/NAME`, the manifest's `place` (FILE:LINE) in
    /// brackets; no lines when it is unchanged.
    pub fn lines(&self, place: Option<&str>) -> Vec<Line> {
        let old = match self.change {
            Change::Created => format!("live {} (would be created)", self.key),
            _ => format!("live {}", self.key),
        };
        let new = match (self.change, place) {
            (Change::Deleted, _) => format!("manifest {} (would be deleted)", self.key),
            (_, Some(place)) => format!("manifest {} ({place})", self.key),
            (_, None) => format!("manifest {}", self.key),
        };
        unified::unified(&self.live, &self.manifest, &old, &new)
    }
}

/// Pairs each manifest object with its live version, in the manifests'
/// order: unchanged, changed or created. With `prune`, the live objects of
/// idplane's kinds that no manifest names follow, as deleted, in key order.
pub fn compare(
    manifests: &[Comparable],
    live: &BTreeMap<ObjectKey, Comparable>,
    prune: bool,
) -> Vec<Entry> {
    let mut entries: Vec<Entry> = manifests
        .iter()
        .map(|m| pair(m, live.get(&m.key)))
        .collect();
    if prune {
        let named: BTreeSet<&ObjectKey> = manifests.iter().map(|m| &m.key).collect();
        for (key, object) in live {
            if key.owned_kind().is_some() && !named.contains(key) {
                entries.push(Entry {
                    key: key.clone(),
                    change: Change::Deleted,
                    live: unified::text(&object.shown, None),
                    manifest: String::new(),
                });
            }
        }
    }
    entries
}

fn pair(manifest: &Comparable, live: Option<&Comparable>) -> Entry {
    let (live_marks, manifest_marks) = placeholders(
        live.and_then(|l| l.secret.as_ref()),
        manifest.secret.as_ref(),
    );
    let manifest_text = unified::text(&manifest.shown, manifest_marks.as_ref());
    let Some(live) = live else {
        return Entry {
            key: manifest.key.clone(),
            change: Change::Created,
            live: String::new(),
            manifest: manifest_text,
        };
    };
    let change = if live.shown == manifest.shown && live.secret == manifest.secret {
        Change::Unchanged
    } else {
        Change::Changed
    };
    Entry {
        key: manifest.key.clone(),
        change,
        live: unified::text(&live.shown, live_marks.as_ref()),
        manifest: manifest_text,
    }
}

type Marks = BTreeMap<String, &'static str>;

/// What each side shows of a Secret's keys: the live side "(value
/// hidden)" for every key; the manifest side the same for a value it
/// keeps, "changed (value hidden)" for one it changes, "added (value
/// hidden)" for a key the live Secret lacks (nothing on a side that is no
/// Secret).
fn placeholders(
    live: Option<&BTreeMap<String, String>>,
    manifest: Option<&BTreeMap<String, String>>,
) -> (Option<Marks>, Option<Marks>) {
    let live_marks = live.map(|l| l.keys().map(|k| (k.clone(), unified::HIDDEN)).collect());
    let manifest_marks = manifest.map(|m| {
        m.iter()
            .map(|(k, digest)| {
                let mark = match live.map(|l| l.get(k)) {
                    None => unified::HIDDEN,
                    Some(None) => unified::ADDED,
                    Some(Some(d)) if d == digest => unified::HIDDEN,
                    Some(Some(_)) => unified::CHANGED,
                };
                (k.clone(), mark)
            })
            .collect()
    });
    (live_marks, manifest_marks)
}

/// How many objects of each [`Change`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub changed: usize,
    pub created: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

impl Tally {
    pub fn of(entries: &[Entry]) -> Self {
        let mut t = Self::default();
        for e in entries {
            match e.change {
                Change::Unchanged => t.unchanged += 1,
                Change::Changed => t.changed += 1,
                Change::Created => t.created += 1,
                Change::Deleted => t.deleted += 1,
            }
        }
        t
    }

    /// Whether applying the manifests would change anything.
    pub fn differs(&self) -> bool {
        self.changed + self.created + self.deleted > 0
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changed, {} would be created, {} would be deleted, {} unchanged",
            self.changed, self.created, self.deleted, self.unchanged
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SALT: &[u8] = b"s";

    fn hook(name: &str, url: &str) -> Value {
        json!({"apiVersion": "idplane.dev/v1alpha1", "kind": "TelephonyHook",
            "metadata": {"name": name},
            "spec": {"active": false, "url": url, "auth": {"header": "X-Key", "secretRef": {"name": "s", "key": "k"}}}})
    }

    fn secret(values: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": values})
    }

    fn live(objects: &[Value]) -> BTreeMap<ObjectKey, Comparable> {
        objects
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v["metadata"]["resourceVersion"] = json!("42");
                v["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
                let c = comparable(&v, "acme", SALT);
                (c.key.clone(), c)
            })
            .collect()
    }

    fn manifests(objects: &[Value]) -> Vec<Comparable> {
        objects
            .iter()
            .map(|v| comparable(v, "acme", SALT))
            .collect()
    }

    fn all_text(entries: &[Entry]) -> String {
        entries
            .iter()
            .flat_map(|e| e.lines(Some("f.yaml:1")))
            .map(|l| l.text + "\n")
            .collect()
    }

    /// A case's name, live objects, manifests, prune, and the changes in order.
    type Case = (&'static str, Vec<Value>, Vec<Value>, bool, Vec<Change>);

    /// Each case: live objects, manifests, prune → the changes in order.
    #[test]
    fn changes_by_case() {
        let a = hook("a", "https://a.example/t");
        let a2 = hook("a", "https://a2.example/t");
        let b = hook("b", "https://b.example/t");
        let cases: Vec<Case> = vec![
            (
                "same",
                vec![a.clone()],
                vec![a.clone()],
                false,
                vec![Change::Unchanged],
            ),
            (
                "changed",
                vec![a.clone()],
                vec![a2.clone()],
                false,
                vec![Change::Changed],
            ),
            (
                "created",
                vec![],
                vec![a.clone()],
                false,
                vec![Change::Created],
            ),
            (
                "not pruned",
                vec![a.clone(), b.clone()],
                vec![a.clone()],
                false,
                vec![Change::Unchanged],
            ),
            (
                "pruned",
                vec![a.clone(), b.clone()],
                vec![a.clone()],
                true,
                vec![Change::Unchanged, Change::Deleted],
            ),
            (
                "secret kept",
                vec![secret(json!({"k": "v1"}))],
                vec![secret(json!({"k": "v1"}))],
                false,
                vec![Change::Unchanged],
            ),
            (
                "secret changed",
                vec![secret(json!({"k": "v1"}))],
                vec![secret(json!({"k": "v2"}))],
                false,
                vec![Change::Changed],
            ),
            (
                // A live Secret in no manifest is never pruned: idplane
                // prunes its own kinds only.
                "secret not pruned",
                vec![secret(json!({"k": "v1"}))],
                vec![],
                true,
                vec![],
            ),
        ];
        for (name, live_objects, manifest_objects, prune, expected) in cases {
            let entries = compare(&manifests(&manifest_objects), &live(&live_objects), prune);
            let changes: Vec<Change> = entries.iter().map(|e| e.change).collect();
            assert_eq!(changes, expected, "{name}");
            let tally = Tally::of(&entries);
            assert_eq!(
                tally.differs(),
                expected.iter().any(|c| *c != Change::Unchanged),
                "{name}"
            );
        }
    }

    #[test]
    fn a_changed_field_is_the_only_difference_shown() {
        let entries = compare(
            &manifests(&[hook("a", "https://a2.example/t")]),
            &live(&[hook("a", "https://a.example/t")]),
            false,
        );
        let text = all_text(&entries);
        assert!(
            text.starts_with(
                "--- live TelephonyHook acme/a\n+++ manifest TelephonyHook acme/a (f.yaml:1)\n@@ "
            ),
            "{text}"
        );
        let changed: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(['-', '+']) && !l.starts_with("---") && !l.starts_with("+++"))
            .collect();
        assert_eq!(
            changed,
            [
                "-  url: https://a.example/t",
                "+  url: https://a2.example/t"
            ],
            "{text}"
        );
        for hidden in ["resourceVersion", "status", "Ready"] {
            assert!(!text.contains(hidden), "{hidden} in {text}");
        }
    }

    #[test]
    fn secret_keys_say_what_changed_never_the_value() {
        let entries = compare(
            &manifests(&[secret(
                json!({"k": "new-value", "kept": "same", "extra": "more"}),
            )]),
            &live(&[secret(
                json!({"k": "old-value", "kept": "same", "gone": "bye"}),
            )]),
            false,
        );
        let text = all_text(&entries);
        for value in ["new-value", "old-value", "same", "more", "bye"] {
            assert!(!text.contains(value), "{value} in {text}");
        }
        for line in [
            "-  k: (value hidden)",
            "+  k: changed (value hidden)",
            "+  extra: added (value hidden)",
            "-  gone: (value hidden)",
            "   kept: (value hidden)",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn created_and_deleted_headers() {
        let entries = compare(
            &manifests(&[hook("new", "https://n.example/t")]),
            &live(&[hook("old", "https://o.example/t")]),
            true,
        );
        let text = all_text(&entries);
        assert!(
            text.contains("--- live TelephonyHook acme/new (would be created)\n"),
            "{text}"
        );
        assert!(
            text.contains("+++ manifest TelephonyHook acme/old (would be deleted)\n"),
            "{text}"
        );
        assert_eq!(
            Tally::of(&entries).to_string(),
            "0 changed, 1 would be created, 1 would be deleted, 0 unchanged"
        );
    }
}
