//! Findings placed in the manifest files they came from (file, line and
//! column), and the one-line tally of problems and warnings: what
//! `idplane validate`, `run --check` and `run --manifests` print.

use serde::Serialize;

use super::manifest::Document;
use crate::validate::{Finding, Report, Severity};

/// A finding with where it is in the files.
#[derive(Debug, Serialize)]
pub struct Located<'a> {
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    #[serde(flatten)]
    pub finding: &'a Finding,
}

impl std::fmt::Display for Located<'_> {
    /// `FILE:LINE:COL: KIND NAMESPACE/NAME: FIELD: message`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let finding = self.finding;
        let level = match finding.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}:{}: {}{}: {}: {}",
            self.file,
            self.line,
            self.column,
            level,
            finding.object,
            finding.field,
            finding.message
        )
    }
}

/// "N problems", with ", M warnings" when there are any: a warning does
/// not fail validation, so it is not counted as a problem.
pub fn tally(problems: usize, warnings: usize) -> String {
    match warnings {
        0 => format!("{problems} problems"),
        1 => format!("{problems} problems, 1 warning"),
        n => format!("{problems} problems, {n} warnings"),
    }
}

/// [`tally`] of a report: its errors as problems, and its warnings.
pub fn report_tally(report: &Report) -> String {
    let warnings = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    tally(report.findings.len() - warnings, warnings)
}

/// Places findings in the documents they came from.
pub fn locate<'a>(documents: &'a [Document], report: &'a Report) -> Vec<Located<'a>> {
    report
        .findings
        .iter()
        .map(|finding| {
            let doc = &documents[finding.input];
            let pos = doc.position_of(&finding.field);
            Located {
                file: &doc.file,
                line: pos.line,
                column: pos.col,
                finding,
            }
        })
        .collect()
}
