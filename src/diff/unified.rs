//! The text of a compared object (YAML, keys sorted, a Secret's values as
//! placeholders) and the unified diff of two texts (`similar`), as lines
//! tagged with what they are, for the CLI to colour and print.

use std::collections::BTreeMap;

use serde_json::Value;
use similar::{ChangeTag, TextDiff};

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// What a Secret's value is shown as: never the value.
pub const HIDDEN: &str = "(value hidden)";
/// A Secret's value that the manifest changes.
pub const CHANGED: &str = "changed (value hidden)";
/// A Secret's key that only the manifest has.
pub const ADDED: &str = "added (value hidden)";

/// The kind of a line of a unified diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// `--- live ...`
    OldHeader,
    /// `+++ manifest ...`
    NewHeader,
    /// `@@ -a,b +c,d @@`
    Hunk,
    Context,
    Removed,
    Added,
}

/// One line of a unified diff, with its prefix, without its newline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub kind: LineKind,
    pub text: String,
}

/// The YAML text of an object, keys sorted at every level (whatever order
/// the JSON maps keep), with a Secret's keys given their placeholders.
pub fn text(shown: &Value, secret: Option<&BTreeMap<String, &'static str>>) -> String {
    let mut value = shown.clone();
    if let (Some(placeholders), Some(object)) = (secret, value.as_object_mut()) {
        let data: serde_json::Map<String, Value> = placeholders
            .iter()
            .map(|(k, p)| (k.clone(), Value::String((*p).to_string())))
            .collect();
        if !data.is_empty() {
            object.insert("data".into(), Value::Object(data));
        }
    }
    serde_yaml::to_string(&sorted(&value)).unwrap_or_default()
}

fn sorted(value: &Value) -> serde_yaml::Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_yaml::Mapping::new();
            for k in keys {
                out.insert(serde_yaml::Value::String(k.clone()), sorted(&map[k]));
            }
            serde_yaml::Value::Mapping(out)
        }
        Value::Array(items) => serde_yaml::Value::Sequence(items.iter().map(sorted).collect()),
        other => serde_yaml::to_value(other).unwrap_or(serde_yaml::Value::Null),
    }
}

/// The unified diff of `old` and `new` under the two headers; no lines
/// when the texts are equal.
pub fn unified(old: &str, new: &str, old_header: &str, new_header: &str) -> Vec<Line> {
    let diff = TextDiff::from_lines(old, new);
    let mut lines = Vec::new();
    for hunk in diff.unified_diff().context_radius(CONTEXT).iter_hunks() {
        if lines.is_empty() {
            lines.push(Line {
                kind: LineKind::OldHeader,
                text: format!("--- {old_header}"),
            });
            lines.push(Line {
                kind: LineKind::NewHeader,
                text: format!("+++ {new_header}"),
            });
        }
        lines.push(Line {
            kind: LineKind::Hunk,
            text: hunk.header().to_string(),
        });
        for change in hunk.iter_changes() {
            let (kind, prefix) = match change.tag() {
                ChangeTag::Equal => (LineKind::Context, ' '),
                ChangeTag::Delete => (LineKind::Removed, '-'),
                ChangeTag::Insert => (LineKind::Added, '+'),
            };
            let body = change.value().trim_end_matches('\n');
            lines.push(Line {
                kind,
                text: format!("{prefix}{body}"),
            });
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_secret_values_are_placeholders() {
        let mut shown = serde_json::Map::new();
        shown.insert("kind".into(), json!("Secret"));
        shown.insert("apiVersion".into(), json!("v1"));
        let placeholders = BTreeMap::from([("b".to_string(), CHANGED), ("a".to_string(), HIDDEN)]);
        assert_eq!(
            text(&Value::Object(shown), Some(&placeholders)),
            "apiVersion: v1\ndata:\n  a: (value hidden)\n  b: changed (value hidden)\nkind: Secret\n"
        );
    }

    #[test]
    fn a_change_gets_headers_a_hunk_and_context() {
        let old = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\n";
        let new = old.replace("b: 2", "b: 20");
        let lines = unified(old, &new, "live X", "manifest X");
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "--- live X",
                "+++ manifest X",
                "@@ -1,5 +1,5 @@",
                " a: 1",
                "-b: 2",
                "+b: 20",
                " c: 3",
                " d: 4",
                " e: 5"
            ]
        );
        assert_eq!(lines[4].kind, LineKind::Removed);
        assert_eq!(lines[5].kind, LineKind::Added);
        assert!(unified(old, old, "a", "b").is_empty());
    }

    #[test]
    fn a_new_object_is_all_added() {
        let lines = unified(
            "",
            "a: 1\nb: 2\n",
            "live X (would be created)",
            "manifest X",
        );
        assert_eq!(lines[2].text, "@@ -0,0 +1,2 @@");
        assert!(lines[3..].iter().all(|l| l.kind == LineKind::Added));
    }
}
