//! A directory of manifests as the source of truth (`idplane run
//! --manifests DIR`): read at start, and again whenever a file changes
//! (polled, so it works on every filesystem). Problems are printed with file
//! and line; a file that cannot be parsed keeps the last loaded state.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::located::{locate, report_tally};
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

/// Every document of the last successful read, as read: what `GET
/// /v1/orgs/{org}/objects` serves (`api::objects`).
pub type Loaded = watch::Sender<Arc<Vec<serde_json::Value>>>;

/// Reads the directory, prints what it found, publishes the documents on
/// `loaded` and sends the objects. Returns false when the files could not
/// be read (nothing sent, nothing published).
pub async fn load_once(
    root: &Path,
    options: &Options,
    changes: &mpsc::Sender<Change>,
    loaded: &Loaded,
) -> bool {
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
    eprintln!(
        "loaded {} from {}: {} objects and Secrets accepted, {}",
        documents.len(),
        root.display(),
        ours,
        report_tally(&report)
    );
    loaded.send_replace(Arc::new(documents.into_iter().map(|d| d.value).collect()));
    changes.send(Change::ReplaceAll(values)).await.is_ok()
}

/// Loads the directory, then reloads it whenever a file changes.
pub async fn watch_directory(
    root: PathBuf,
    options: Options,
    changes: mpsc::Sender<Change>,
    every: Duration,
    loaded: Loaded,
) {
    let mut last = fingerprint(&root);
    load_once(&root, &options, &changes, &loaded).await;
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&root);
        if now != last {
            last = now;
            eprintln!("change detected under {}; reloading", root.display());
            if changes.is_closed() {
                return;
            }
            load_once(&root, &options, &changes, &loaded).await;
        }
    }
}
