//! Policies that can never apply because higher-priority policies take
//! every group they list. Pure; the status controller turns the result into
//! the `Shadowed` condition.

use std::collections::HashMap;

use serde::Serialize;

use super::policy::PolicyConfig;

/// A policy that never applies, and the policies that apply first.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Shadowed {
    pub policy: String,
    /// The policies that take its groups first, in evaluation order.
    pub hidden_by: Vec<String>,
    /// For example `never applies: every group it lists is matched first by
    /// admins (priority 1)`.
    pub message: String,
}

/// The active, non-default policies that can never apply: each group they
/// list is listed by an active policy evaluated before them (a lower
/// priority number; on equal priorities, the smaller name). A non-default
/// policy listing no group never applies either (`hidden_by` is then
/// empty). Inactive policies hide nothing and are not reported.
pub fn shadowed(policies: &[PolicyConfig]) -> Vec<Shadowed> {
    let mut active: Vec<&PolicyConfig> = policies
        .iter()
        .filter(|p| p.spec.active && !p.is_default)
        .collect();
    active.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    // Group to the position in `active` of the first policy listing it.
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (position, p) in active.iter().enumerate() {
        if p.groups.is_empty() {
            out.push(Shadowed {
                policy: p.name.clone(),
                hidden_by: Vec::new(),
                message: "never applies: it lists no groups and is not the default policy"
                    .to_string(),
            });
            continue;
        }
        let mut hiders: Vec<usize> = Vec::new();
        let mut hidden = true;
        for g in &p.groups {
            match first.get(g.as_str()) {
                Some(&h) if h != position => hiders.push(h),
                _ => hidden = false,
            }
        }
        if hidden {
            hiders.sort_unstable();
            hiders.dedup();
            let by: Vec<String> = hiders
                .iter()
                .map(|&h| format!("{} (priority {})", active[h].name, active[h].priority))
                .collect();
            out.push(Shadowed {
                policy: p.name.clone(),
                hidden_by: hiders.iter().map(|&h| active[h].name.clone()).collect(),
                message: format!(
                    "never applies: every group it lists is matched first by {}",
                    by.join(", ")
                ),
            });
        } else {
            for g in &p.groups {
                first.entry(g.as_str()).or_insert(position);
            }
        }
    }
    out
}
