//! The invalid manifests under `tests/fixtures/invalid/GROUP/`, each with
//! the field and message a refusal must name (its header lines), and the
//! example org copied with a test's edits.

use std::path::{Path, PathBuf};

use super::process::root;

/// The fixtures of `tests/fixtures/invalid/GROUP/`, sorted: each file with
/// its `# expect-field:` and `# expect-message:` header lines.
pub fn invalid_fixtures(group: &str) -> Vec<(PathBuf, String, String)> {
    let dir = root().join("tests/fixtures/invalid").join(group);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap_or_else(|| panic!("{} lacks # {key}", path.display()))
                .to_string()
        };
        let (field, message) = (header("expect-field"), header("expect-message"));
        out.push((path, field, message));
    }
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

/// The example org's manifests (`examples/org/`) copied into `dir`, each
/// `(file, from, to)` edit made once in its file; panics when an edit's
/// text is no longer there.
pub fn copy_example_org(dir: &Path, edits: &[(&str, &str, &str)]) {
    for entry in std::fs::read_dir(root().join("examples/org")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (file, from, to) in edits.iter().filter(|e| e.0 == name) {
            assert!(text.contains(from), "{file} no longer has {from}");
            text = text.replacen(from, to, 1);
        }
        std::fs::write(dir.join(name), text).unwrap();
    }
}
