//! A plain-text rendering of an [`Evaluation`], for people: what
//! `idplane explain enrollment` prints.

use std::fmt::Write;

use super::evaluation::Evaluation;
use crate::resources::RuleEnroll;

fn rule_enroll_text(enroll: RuleEnroll) -> &'static str {
    match enroll {
        RuleEnroll::Login => "LOGIN",
        RuleEnroll::Challenge => "CHALLENGE",
        RuleEnroll::Never => "NEVER",
    }
}

/// The evaluation as a table, one authenticator per row (authenticator |
/// decision | enroll now | why), under header lines naming the policy and
/// the rule, and followed by the app's needs and the notes.
///
/// The "enroll now" column says `yes` (prompted now), `auto` (enrolled
/// without a prompt), `no (not prompted)` (required, missing, but the rule
/// does not prompt) or `-`.
pub fn explain_table(evaluation: &Evaluation) -> String {
    let mut out = String::new();
    match &evaluation.policy {
        Some(name) => {
            let _ = write!(out, "policy: {name}");
            let mut details = Vec::new();
            if let Some(p) = evaluation.priority {
                details.push(format!("priority {p}"));
            }
            match &evaluation.matched_group {
                Some(g) => details.push(format!("through group {g}")),
                None => details.push("default".to_string()),
            }
            let _ = writeln!(
                out,
                " ({}): {}",
                details.join(", "),
                evaluation.policy_reason
            );
        }
        None => {
            let _ = writeln!(out, "policy: none: {}", evaluation.policy_reason);
        }
    }
    let prompt = if evaluation.prompt {
        "prompts"
    } else {
        "does not prompt"
    };
    match (&evaluation.rule, evaluation.rule_enroll) {
        (Some(rule), Some(enroll)) => {
            let _ = writeln!(
                out,
                "rule: {rule} ({}, {prompt}): {}",
                rule_enroll_text(enroll),
                evaluation.rule_reason
            );
        }
        _ => {
            let _ = writeln!(out, "rule: none ({prompt}): {}", evaluation.rule_reason);
        }
    }
    let header = ["authenticator", "decision", "enroll now", "why"];
    let rows: Vec<[String; 4]> = evaluation
        .reasons
        .iter()
        .map(|r| {
            let a = r.authenticator;
            let now = if evaluation.enroll_now.contains(a) {
                "yes"
            } else if evaluation.auto_enrolled.contains(a) {
                "auto"
            } else if evaluation.missing.contains(a) {
                "no (not prompted)"
            } else {
                "-"
            };
            [
                a.as_str().to_string(),
                r.decision.as_str().to_string(),
                now.to_string(),
                format!("{}: {}", r.rule.as_str(), r.message),
            ]
        })
        .collect();
    let mut widths = [0usize; 3];
    for (i, w) in widths.iter_mut().enumerate() {
        *w = rows
            .iter()
            .map(|r| r[i].len())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0);
    }
    let line = |out: &mut String, cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:w0$} | {:w1$} | {:w2$} | {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(&mut out, header);
    let _ = writeln!(
        out,
        "{}-+-{}-+-{}-+-{}",
        "-".repeat(widths[0]),
        "-".repeat(widths[1]),
        "-".repeat(widths[2]),
        "-".repeat(header[3].len())
    );
    for r in &rows {
        line(&mut out, [&r[0], &r[1], &r[2], &r[3]]);
    }
    if !evaluation.phone_methods.is_empty() {
        let methods: Vec<&str> = evaluation
            .phone_methods
            .iter()
            .map(|m| m.as_str())
            .collect();
        let _ = writeln!(out, "phone methods: {}", methods.join(", "));
    }
    if let Some(app) = &evaluation.app_requirement {
        let state = if app.satisfied {
            "satisfied"
        } else {
            "not satisfied"
        };
        let _ = write!(out, "app: {state}: {}", app.message);
        if let Some(a) = app.satisfied_by {
            let _ = write!(out, " ({a})");
        }
        if !app.enroll_one_of.is_empty() {
            let list: Vec<&str> = app.enroll_one_of.iter().map(|a| a.as_str()).collect();
            let _ = write!(out, ": {}", list.join(", "));
        }
        out.push('\n');
    }
    for note in &evaluation.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
