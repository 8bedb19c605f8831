//! The runtime configuration: per org (namespace), the objects that passed
//! validation, with Secrets resolved, conflicts settled and policies sorted.
//! Building it is pure ([`build`]); one task owns the current snapshot and
//! publishes it to readers: [`snapshot_writer`] applies the changes the
//! sources send, [`snapshot`] is what readers get.
//!
//! Alongside the configuration, [`build`] says for every idplane object what
//! became of it ([`ObjectState`]): that is what status conditions show.
//!
//! Each kind has its own module that turns one valid object into its
//! runtime form and its state ([`telephony_hook`], [`enrollment_policy`],
//! [`email_provider`], [`email_domain`]); [`build`] decides what spans
//! objects: the active hook and its fallbacks, the order of the policies,
//! the default policy and shadowed policies.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::enrollment::{EnrollmentEngine, PolicyConfig, shadowed};
use crate::resources::{Kind, ObjectKey};
use crate::resources::{SecretReference, reason};
use crate::secret::Secret;
use crate::validate::{Checked, Finding, Report, Rule, SecretData, Typed};

mod email_domain;
mod email_provider;
mod enrollment_policy;
pub mod snapshot;
pub mod snapshot_writer;
mod telephony_hook;

pub use email_domain::DomainConfig;
pub use email_provider::ProviderConfig;
pub use enrollment_policy::policy_summary;
pub use snapshot::{Change, ObjectView, ObjectViews, OrgSources, Referenced, Snapshot};
pub use snapshot_writer::IndexWriter;
pub use telephony_hook::{HeaderConfig, HeaderValue, HookConfig};

/// Everything the runtime needs for one org.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgConfig {
    /// The active hook, if any (the winner when several are active).
    pub active_hook: Option<String>,
    /// Every usable hook by name: the active one, fallbacks, and inactive
    /// ones (for previews).
    pub hooks: BTreeMap<String, HookConfig>,
    /// Active policies by priority, the default policy last.
    pub policies: Vec<PolicyConfig>,
    pub email_provider: Option<ProviderConfig>,
    /// Sender domains by brand.
    pub email_domains: BTreeMap<String, DomainConfig>,
    /// The enrollment engine over `policies`, built once per change.
    #[serde(skip)]
    pub enrollment: Option<Arc<EnrollmentEngine>>,
}

/// The whole runtime configuration: orgs by namespace.
pub type RuntimeConfig = BTreeMap<String, OrgConfig>;

/// What became of one idplane object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectState {
    /// The spec passed its own checks and the cross-object rules.
    pub accepted: bool,
    /// The runtime uses the object (or could, for an inactive hook).
    pub ready: bool,
    /// For hooks: the active one of its org.
    pub active: Option<bool>,
    /// CamelCase reason of the decisive condition.
    pub reason: String,
    /// What a person needs to know; never secret values.
    pub message: String,
    /// Extra status fields computed from the configuration (a policy's
    /// `summary`, a `Shadowed` condition), merged into the status.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ObjectState {
    /// A state without extra status fields.
    pub fn new(
        accepted: bool,
        ready: bool,
        active: Option<bool>,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            extra: serde_json::Map::new(),
            accepted,
            ready,
            active,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Secrets available to resolve references: (namespace, name) -> data.
pub type Secrets = BTreeMap<(String, String), SecretData>;

/// Collects the Secrets found among checked objects (manifest mode).
pub fn secrets_from(checked: &[Checked]) -> Secrets {
    checked
        .iter()
        .filter_map(|c| match &c.typed {
            Some(Typed::Secret(s)) => {
                Some(((c.key.namespace.clone(), c.key.name.clone()), s.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The value a Secret reference names, or why it cannot be read.
fn resolve(
    secrets: &Secrets,
    namespace: &str,
    reference: &SecretReference,
) -> Result<Secret, String> {
    let SecretReference { field, secret: r } = reference;
    match secrets.get(&(namespace.to_string(), r.name.clone())) {
        None => Err(format!("{field}: Secret {namespace}/{} not found", r.name)),
        Some(s) => match s.keys.get(&r.key) {
            None => Err(format!(
                "{field}: Secret {namespace}/{} has no key \"{}\"",
                r.name, r.key
            )),
            Some(v) => Ok(Secret::from_secret(v, &s.version)),
        },
    }
}

/// Builds the runtime configuration and every object's state from a
/// validation report. Objects with error findings are left out of the
/// configuration (the caller keeps their last good version, if any).
pub fn build(
    report: &Report,
    secrets: &Secrets,
) -> (RuntimeConfig, BTreeMap<ObjectKey, ObjectState>) {
    let mut config = RuntimeConfig::new();
    let mut states = BTreeMap::new();
    // Accepted policies by org: (name, default, active).
    let mut roles: BTreeMap<String, Vec<(String, bool, bool)>> = BTreeMap::new();
    for (input, checked) in report.checked.iter().enumerate() {
        let Some(typed) = &checked.typed else {
            if let Some(f) = report.errors_for(input).next() {
                let is_ours = checked.key.owned_kind().is_some();
                if is_ours {
                    states.insert(checked.key.clone(), invalid_state(report, input, f));
                }
            }
            continue;
        };
        if matches!(typed, Typed::Secret(_)) {
            continue;
        }
        let ns = &checked.key.namespace;
        let name = checked.key.name.clone();
        // Warnings (an org without a default policy) do not keep an object
        // out; the status shows them in their own condition.
        if let Some(f) = report.errors_for(input).next() {
            states.insert(checked.key.clone(), invalid_state(report, input, f));
            continue;
        }
        let org = config.entry(ns.clone()).or_default();
        let st = match typed {
            Typed::TelephonyHook(h) => {
                let (hook, st) = telephony_hook::from_resource(h, ns, secrets);
                if let Some(hook) = hook {
                    org.hooks.insert(name.clone(), hook);
                    if h.spec.active {
                        org.active_hook = Some(name.clone());
                    }
                }
                st
            }
            Typed::EnrollmentPolicy(p) => {
                roles.entry(ns.clone()).or_default().push((
                    name.clone(),
                    p.spec.is_default,
                    p.spec.active,
                ));
                let (policy, st) = enrollment_policy::from_resource(p);
                org.policies.extend(policy);
                st
            }
            Typed::EmailProvider(p) => {
                let (provider, st) = email_provider::from_resource(p, ns, secrets);
                org.email_provider = Some(provider);
                st
            }
            Typed::EmailDomain(d) => {
                let (domain, st) = email_domain::from_resource(d);
                org.email_domains.insert(domain.brand.clone(), domain);
                st
            }
            Typed::Secret(_) => continue,
        };
        states.insert(checked.key.clone(), st);
    }
    for (ns, org) in config.iter_mut() {
        // Default policy last; otherwise by priority, then name.
        org.policies.sort_by(|a, b| {
            (a.is_default, a.priority, &a.name).cmp(&(b.is_default, b.priority, &b.name))
        });
        org.enrollment = Some(Arc::new(EnrollmentEngine::new(&org.policies)));
        mark_shadowed(ns, &org.policies, &mut states);
        if let Some(roles) = roles.get(ns) {
            mark_default_policy(ns, roles, &mut states);
        }
        // A fallback that could not be resolved is dropped from the chain.
        let names: Vec<String> = org.hooks.keys().cloned().collect();
        for hook in org.hooks.values_mut() {
            if hook.fallback.as_ref().is_some_and(|f| !names.contains(f)) {
                hook.fallback = None;
            }
        }
    }
    (config, states)
}

/// Adds a condition to the extra conditions of an object's state.
fn push_condition(st: &mut ObjectState, condition: serde_json::Value) {
    match st.extra.get_mut("conditions") {
        Some(serde_json::Value::Array(list)) => list.push(condition),
        _ => {
            st.extra.insert(
                "conditions".into(),
                serde_json::Value::Array(vec![condition]),
            );
        }
    }
}

/// Gives every accepted policy of the org a `DefaultPolicy` condition:
/// False (`NoDefaultPolicy`) when the org has no active default policy, so
/// that whoever looks at any of its policies sees that users in none of
/// their groups are refused at sign-in; True naming the default otherwise.
/// `Ready` is left alone: each policy still works for its own groups.
fn mark_default_policy(
    ns: &str,
    roles: &[(String, bool, bool)],
    states: &mut BTreeMap<ObjectKey, ObjectState>,
) {
    use crate::resources::{condition_type, reason as r};
    use crate::validate::cross::{PolicyRole, missing_default_policy};
    let list: Vec<PolicyRole> = roles
        .iter()
        .map(|(name, is_default, active)| PolicyRole {
            name,
            is_default: *is_default,
            active: *active,
        })
        .collect();
    let condition = match missing_default_policy(ns, &list) {
        Some(missing) => serde_json::json!({
            "type": condition_type::DEFAULT_POLICY, "status": "False",
            "reason": r::NO_DEFAULT_POLICY, "message": missing.message,
        }),
        None => {
            let name = list
                .iter()
                .find(|p| p.is_default && p.active)
                .map_or("", |p| p.name);
            serde_json::json!({
                "type": condition_type::DEFAULT_POLICY, "status": "True",
                "reason": r::DEFAULT_POLICY_ACTIVE,
                "message": format!("users in none of the groups the org's policies list get the default policy {name}"),
            })
        }
    };
    for (name, _, _) in roles {
        let key = ObjectKey::new(Kind::EnrollmentPolicy, ns.to_string(), name.clone());
        if let Some(st) = states.get_mut(&key) {
            push_condition(st, condition.clone());
        }
    }
}

/// Gives every active policy a `Shadowed` condition: True, naming the
/// policies that hide it, when it can never apply.
fn mark_shadowed(
    ns: &str,
    policies: &[PolicyConfig],
    states: &mut BTreeMap<ObjectKey, ObjectState>,
) {
    let hidden: BTreeMap<String, String> = shadowed(policies)
        .into_iter()
        .map(|s| (s.policy, s.message))
        .collect();
    for p in policies {
        let key = ObjectKey::new(Kind::EnrollmentPolicy, ns.to_string(), p.name.clone());
        let Some(st) = states.get_mut(&key) else {
            continue;
        };
        let condition = match hidden.get(&p.name) {
            Some(message) => {
                serde_json::json!({"type": "Shadowed", "status": "True", "reason": "Shadowed", "message": message})
            }
            None => {
                serde_json::json!({"type": "Shadowed", "status": "False", "reason": "Reachable", "message": "some users can match this policy"})
            }
        };
        push_condition(st, condition);
    }
}

fn invalid_state(report: &Report, input: usize, first: &Finding) -> ObjectState {
    let all: Vec<String> = report
        .errors_for(input)
        .map(|f| {
            if f.field.is_empty() {
                f.message.clone()
            } else {
                format!("{}: {}", f.field, f.message)
            }
        })
        .collect();
    let (accepted, r) = match &first.rule {
        Rule::Conflict { .. } => (true, reason::CONFLICT),
        _ => (false, reason::INVALID),
    };
    let active = (first.object.is(Kind::TelephonyHook)).then_some(false);
    ObjectState::new(accepted, false, active, r, all.join("; "))
}
