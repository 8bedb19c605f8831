//! A directory of manifests as the source of truth (`idplane run
//! --manifests DIR`): read at start, and again whenever a file changes
//! (polled, so it works on every filesystem). Problems are printed with file
//! and line; a file that cannot be parsed keeps the last loaded state.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::located::{locate, tally};
use super::manifest::{is_manifest_file, read_paths};
use crate::index::Change;
use crate::validate::{Options, validate};

/// A cheap fingerprint of a directory tree: every manifest's path, size and
/// modification time.
pub fn fingerprint(root: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if dir.is_file() {
            if let Ok(m) = dir.metadata() {
                out.push((dir.clone(), m.len(), m.modified().ok()));
            }
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_manifest_file(&path)
                && let Ok(m) = entry.metadata()
            {
                out.push((path, m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Reads the directory, prints what it found, and sends the objects.
/// Returns false when the files could not be read (nothing sent).
pub async fn load_once(root: &Path, options: &Options, changes: &mpsc::Sender<Change>) -> bool {
    let documents = match read_paths(&[root.to_path_buf()]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}; keeping the last loaded configuration");
            return false;
        }
    };
    let values: Vec<serde_json::Value> = documents.iter().map(|d| d.value.clone()).collect();
    let report = validate(&values, options);
    for located in locate(&documents, &report) {
        eprintln!("{located}");
    }
    let ours = report.checked.iter().filter(|c| c.typed.is_some()).count();
    let (problems, warnings) = counts(&report);
    eprintln!(
        "loaded {} from {}: {} objects and Secrets accepted, {}",
        documents.len(),
        root.display(),
        ours,
        tally(problems, warnings)
    );
    changes.send(Change::ReplaceAll(values)).await.is_ok()
}

/// (errors, warnings) among the findings.
fn counts(report: &crate::validate::Report) -> (usize, usize) {
    let warnings = report
        .findings
        .iter()
        .filter(|f| f.severity == crate::validate::Severity::Warning)
        .count();
    (report.findings.len() - warnings, warnings)
}

/// Loads the directory, then reloads it whenever a file changes.
pub async fn watch_directory(
    root: PathBuf,
    options: Options,
    changes: mpsc::Sender<Change>,
    every: Duration,
) {
    let mut last = fingerprint(&root);
    load_once(&root, &options, &changes).await;
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&root);
        if now != last {
            last = now;
            eprintln!("change detected under {}; reloading", root.display());
            if changes.is_closed() {
                return;
            }
            load_once(&root, &options, &changes).await;
        }
    }
}
