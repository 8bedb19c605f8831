//! Rules that span objects, checked per namespace (org) over the objects
//! that passed their own checks: one active TelephonyHook, one
//! EmailProvider, one EmailDomain per brand, unique EnrollmentPolicy
//! priorities, at most one default policy, fallbacks that resolve without
//! cycles, and Secret keys that exist when the Secret is at hand. One rule
//! only warns: an org with policies but no active default policy.
//!
//! Where "one per org" is broken, the oldest object (creationTimestamp,
//! then name) wins and every other one gets a `Conflict` finding naming the
//! winner: the same choice the controller makes on live objects.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Checked, Finding, ObjectKey, Rule, SecretData, Severity, Typed};
use crate::resources::SecretReference;

/// A candidate for a "one per org" rule.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub input: usize,
    pub name: &'a str,
    pub created: Option<&'a str>,
}

/// The winner among candidates: the oldest creationTimestamp, then the
/// smallest name. Objects without a timestamp (files) sort after those with.
pub fn winner<'a>(candidates: &[Candidate<'a>]) -> Option<Candidate<'a>> {
    candidates
        .iter()
        .min_by(|a, b| {
            (a.created.is_none(), a.created, a.name).cmp(&(b.created.is_none(), b.created, b.name))
        })
        .copied()
}

/// What the default-policy rule needs to know of one EnrollmentPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRole<'a> {
    pub name: &'a str,
    pub is_default: bool,
    pub active: bool,
}

/// An org whose policies leave some users without a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingDefault<'a> {
    /// A default policy that exists but is not active, if any: the one to fix.
    pub inactive_default: Option<&'a str>,
    /// What is wrong and what it does at sign-in.
    pub message: String,
}

/// Whether an org has EnrollmentPolicies but no active default one. Then a
/// user in none of the groups its policies list gets an error at sign-in
/// (enrollment fails closed), never an answer: worth a warning wherever the
/// org's policies are shown. `None` when an active default exists or the
/// org has no policy at all.
pub fn missing_default_policy<'a>(
    namespace: &str,
    policies: &[PolicyRole<'a>],
) -> Option<MissingDefault<'a>> {
    if policies.is_empty() || policies.iter().any(|p| p.is_default && p.active) {
        return None;
    }
    let effect = "a user in none of the groups its active policies list gets the error no_default_policy at sign-in, not an answer";
    let inactive_default = policies.iter().find(|p| p.is_default).map(|p| p.name);
    let message = match inactive_default {
        Some(name) => format!(
            "the default EnrollmentPolicy {name} of org {namespace} is not active (spec.active: false), so the org has no default policy: {effect}; activate it"
        ),
        None => format!(
            "org {namespace} has EnrollmentPolicies but no default one (spec.default: true): {effect}; add a default policy"
        ),
    };
    Some(MissingDefault {
        inactive_default,
        message,
    })
}

struct Org<'a> {
    hooks: Vec<(usize, &'a Checked, &'a crate::resources::TelephonyHook)>,
    policies: Vec<(usize, &'a Checked, &'a crate::resources::EnrollmentPolicy)>,
    providers: Vec<(usize, &'a Checked, &'a crate::resources::EmailProvider)>,
    domains: Vec<(usize, &'a Checked, &'a crate::resources::EmailDomain)>,
    secrets: HashMap<&'a str, &'a SecretData>,
    /// Names of every TelephonyHook in the input, valid or not.
    hook_names: BTreeSet<&'a str>,
}

fn candidate<'a>(input: usize, checked: &'a Checked) -> Candidate<'a> {
    Candidate {
        input,
        name: &checked.key.name,
        created: checked.created.as_deref(),
    }
}

/// All cross-object findings for the checked objects, owned or borrowed
/// (the admission webhook checks the index's objects without copying them).
pub fn check<C: Borrow<Checked>>(checked: &[C]) -> Vec<Finding> {
    let checked: Vec<&Checked> = checked.iter().map(Borrow::borrow).collect();
    let mut findings = Vec::new();
    let mut seen: HashMap<&ObjectKey, usize> = HashMap::new();
    let mut orgs: BTreeMap<&str, Org> = BTreeMap::new();
    for (input, &c) in checked.iter().enumerate() {
        let is_hook = c.key.is(crate::resources::Kind::TelephonyHook);
        if c.typed.is_none() && !is_hook {
            continue;
        }
        if c.typed.is_some() {
            if let Some(first) = seen.get(&c.key) {
                findings.push(error(
                    input,
                    c,
                    "metadata.name",
                    format!(
                        "{} is defined twice; the first definition (input #{}) is used",
                        c.key,
                        first + 1
                    ),
                    Rule::Duplicate,
                ));
                continue;
            }
            seen.insert(&c.key, input);
        }
        let org = orgs.entry(&c.key.namespace).or_insert_with(|| Org {
            hooks: Vec::new(),
            policies: Vec::new(),
            providers: Vec::new(),
            domains: Vec::new(),
            secrets: HashMap::new(),
            hook_names: BTreeSet::new(),
        });
        if is_hook {
            org.hook_names.insert(&c.key.name);
        }
        match &c.typed {
            Some(Typed::TelephonyHook(h)) => org.hooks.push((input, c, h)),
            Some(Typed::EnrollmentPolicy(p)) => org.policies.push((input, c, p)),
            Some(Typed::EmailProvider(p)) => org.providers.push((input, c, p)),
            Some(Typed::EmailDomain(d)) => org.domains.push((input, c, d)),
            Some(Typed::Secret(s)) => {
                org.secrets.insert(&c.key.name, s);
            }
            None => {}
        }
    }
    for (namespace, org) in &orgs {
        check_org(namespace, org, &checked, &mut findings);
    }
    findings
}

fn error(input: usize, c: &Checked, field: &str, message: String, rule: Rule) -> Finding {
    Finding {
        input,
        object: c.key.clone(),
        field: field.to_string(),
        message,
        severity: Severity::Error,
        rule,
    }
}

/// Reports every candidate but the winner as a conflict.
fn one_per_org(
    candidates: &[Candidate],
    checked: &[&Checked],
    field: &str,
    what: &str,
    findings: &mut Vec<Finding>,
) {
    let Some(win) = winner(candidates) else {
        return;
    };
    for c in candidates.iter().filter(|c| c.input != win.input) {
        findings.push(error(
            c.input,
            checked[c.input],
            field,
            format!(
                "{what} {} wins (the oldest, then by name); this one is not used",
                win.name
            ),
            Rule::Conflict {
                winner: win.name.to_string(),
            },
        ));
    }
}

fn check_org(namespace: &str, org: &Org, checked: &[&Checked], findings: &mut Vec<Finding>) {
    let active: Vec<Candidate> = org
        .hooks
        .iter()
        .filter(|(_, _, h)| h.spec.active)
        .map(|(i, c, _)| candidate(*i, c))
        .collect();
    one_per_org(
        &active,
        checked,
        "spec.active",
        &format!("only one TelephonyHook may be active in org {namespace}: active hook"),
        findings,
    );

    let providers: Vec<Candidate> = org
        .providers
        .iter()
        .map(|(i, c, _)| candidate(*i, c))
        .collect();
    one_per_org(
        &providers,
        checked,
        "metadata.name",
        &format!("only one EmailProvider may exist in org {namespace}: provider"),
        findings,
    );

    let mut by_brand: BTreeMap<&str, Vec<Candidate>> = BTreeMap::new();
    for (i, c, d) in &org.domains {
        by_brand
            .entry(&d.spec.brand)
            .or_default()
            .push(candidate(*i, c));
    }
    for (brand, candidates) in &by_brand {
        one_per_org(
            candidates,
            checked,
            "spec.brand",
            &format!("brand {brand} already has a sender domain in org {namespace}: EmailDomain"),
            findings,
        );
    }

    let mut by_priority: BTreeMap<i32, Vec<Candidate>> = BTreeMap::new();
    for (i, c, p) in &org.policies {
        by_priority
            .entry(p.spec.priority)
            .or_default()
            .push(candidate(*i, c));
    }
    for (priority, candidates) in &by_priority {
        one_per_org(
            candidates,
            checked,
            "spec.priority",
            &format!("priority {priority} must be unique in org {namespace}: EnrollmentPolicy"),
            findings,
        );
    }
    let defaults: Vec<Candidate> = org
        .policies
        .iter()
        .filter(|(_, _, p)| p.spec.is_default)
        .map(|(i, c, _)| candidate(*i, c))
        .collect();
    one_per_org(
        &defaults,
        checked,
        "spec.default",
        &format!("only one default EnrollmentPolicy may exist in org {namespace}: default policy"),
        findings,
    );

    check_default_policy(namespace, org, findings);
    check_fallbacks(namespace, org, findings);
    check_secret_refs(org, checked, findings);
}

/// One warning per org without an active default policy: on the inactive
/// default policy if there is one (`spec.active`), else on the org's first
/// policy in input order (`spec.default`).
fn check_default_policy(namespace: &str, org: &Org, findings: &mut Vec<Finding>) {
    let roles: Vec<PolicyRole> = org
        .policies
        .iter()
        .map(|(_, c, p)| PolicyRole {
            name: &c.key.name,
            is_default: p.spec.is_default,
            active: p.spec.active,
        })
        .collect();
    let Some(missing) = missing_default_policy(namespace, &roles) else {
        return;
    };
    let (field, at) = match missing.inactive_default {
        Some(name) => (
            "spec.active",
            org.policies.iter().find(|(_, c, _)| c.key.name == name),
        ),
        None => ("spec.default", org.policies.first()),
    };
    if let Some((input, c, _)) = at {
        findings.push(Finding {
            input: *input,
            object: c.key.clone(),
            field: field.to_string(),
            message: missing.message,
            severity: Severity::Warning,
            rule: Rule::NoDefaultPolicy,
        });
    }
}

fn check_fallbacks(namespace: &str, org: &Org, findings: &mut Vec<Finding>) {
    let next: HashMap<&str, &str> = org
        .hooks
        .iter()
        .filter_map(|(_, c, h)| {
            h.spec
                .fallback
                .as_ref()
                .map(|f| (c.key.name.as_str(), f.hook_ref.as_str()))
        })
        .collect();
    for (input, c, h) in &org.hooks {
        let Some(fallback) = &h.spec.fallback else {
            continue;
        };
        let field = "spec.fallback.hookRef";
        let target = fallback.hook_ref.as_str();
        if target == c.key.name {
            findings.push(error(
                *input,
                c,
                field,
                "a hook may not be its own fallback".into(),
                Rule::Reference,
            ));
        } else if !org.hook_names.contains(target) {
            findings.push(error(
                *input,
                c,
                field,
                format!("TelephonyHook {namespace}/{target} does not exist"),
                Rule::Reference,
            ));
        } else {
            let mut chain = vec![c.key.name.as_str(), target];
            let mut current = target;
            while let Some(&n) = next.get(current) {
                if n == c.key.name {
                    chain.push(n);
                    findings.push(error(
                        *input,
                        c,
                        field,
                        format!("fallbacks form a cycle: {}", chain.join(" -> ")),
                        Rule::Reference,
                    ));
                    break;
                }
                if chain.contains(&n) {
                    break; // a cycle further down, reported on its own members
                }
                chain.push(n);
                current = n;
            }
        }
    }
}

/// A Secret key that a hook or provider names must exist when the Secret
/// is at hand (a missing Secret is the index's `SecretNotFound`).
fn check_secret_refs(org: &Org, checked: &[&Checked], findings: &mut Vec<Finding>) {
    let hooks = org
        .hooks
        .iter()
        .map(|(i, _, h)| (*i, h.secret_references()));
    let providers = org
        .providers
        .iter()
        .map(|(i, _, p)| (*i, p.secret_references()));
    for (input, references) in hooks.chain(providers) {
        for SecretReference { field, secret: r } in references {
            let Some(secret) = org.secrets.get(r.name.as_str()) else {
                continue;
            };
            if secret.keys.contains_key(&r.key) {
                continue;
            }
            let keys: Vec<&str> = secret.keys.keys().map(String::as_str).collect();
            findings.push(error(
                input,
                checked[input],
                &format!("{field}.key"),
                format!(
                    "Secret {} has no key \"{}\" (it has: {})",
                    r.name,
                    r.key,
                    if keys.is_empty() {
                        "no keys".to_string()
                    } else {
                        keys.join(", ")
                    }
                ),
                Rule::Reference,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_org_without_an_active_default_policy_is_reported() {
        let role = |name, is_default, active| PolicyRole {
            name,
            is_default,
            active,
        };
        assert_eq!(missing_default_policy("acme", &[]), None, "no policy");
        assert_eq!(
            missing_default_policy(
                "acme",
                &[role("admins", false, true), role("everyone", true, true)]
            ),
            None
        );
        assert_eq!(
            missing_default_policy("acme", &[role("admins", false, true)]),
            Some(MissingDefault {
                inactive_default: None,
                message: "org acme has EnrollmentPolicies but no default one (spec.default: true): a user in none of the groups its active policies list gets the error no_default_policy at sign-in, not an answer; add a default policy".into(),
            })
        );
        let inactive = missing_default_policy(
            "acme",
            &[role("admins", false, true), role("everyone", true, false)],
        )
        .unwrap();
        assert_eq!(inactive.inactive_default, Some("everyone"));
        assert!(
            inactive.message.starts_with(
                "the default EnrollmentPolicy everyone of org acme is not active (spec.active: false)"
            ),
            "{}",
            inactive.message
        );
    }

    #[test]
    fn oldest_then_name_wins() {
        let c = |input, name, created| Candidate {
            input,
            name,
            created,
        };
        let w = winner(&[
            c(0, "b", Some("2024-01-02T00:00:00Z")),
            c(1, "a", Some("2024-01-02T00:00:00Z")),
            c(2, "c", Some("2024-01-03T00:00:00Z")),
        ]);
        assert_eq!(w.unwrap().name, "a");
        let w = winner(&[c(0, "z", Some("2024-01-01T00:00:00Z")), c(1, "a", None)]);
        assert_eq!(w.unwrap().name, "z");
        assert!(winner(&[]).is_none());
    }
}
