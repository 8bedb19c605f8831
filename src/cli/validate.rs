//! `idplane validate` and the manifest half of `idplane run`: read and
//! validate; `source::located` places the findings in the files.

use std::path::PathBuf;

use crate::source::manifest::{Document, read_paths};
use crate::validate::{Options, Report, validate};

/// Reads and validates paths.
pub fn load(paths: &[PathBuf], options: &Options) -> anyhow::Result<(Vec<Document>, Report)> {
    let documents = read_paths(paths)?;
    let values: Vec<serde_json::Value> = documents.iter().map(|d| d.value.clone()).collect();
    let report = validate(&values, options);
    Ok((documents, report))
}
