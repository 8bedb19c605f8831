//! The runtime configuration: per org (namespace), the objects that passed
//! validation, with Secrets resolved, conflicts settled and policies sorted.
//! Building it is pure ([`build`]); one task owns the current snapshot and
//! publishes it to readers: [`snapshot_writer`] applies the changes the
//! sources send, [`snapshot`] is what readers get.
//!
//! Alongside the configuration, [`build`] says for every idplane object what
//! became of it ([`ObjectState`]): that is what status conditions show.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::resources::{
    DEFAULT_MESSAGE_TEMPLATE, EmailDomain, EmailProvider, EnrollmentPolicy, SecretKeyRef,
    TelephonyHook, TlsMode, parse_duration_millis, reason,
};
use crate::secret::Secret;
use crate::validate::{Checked, Finding, ObjectKey, Report, Rule, SecretData, Typed};

/// A header sent to a hook.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderConfig {
    pub name: String,
    /// Literal header values are shown; values from Secrets are redacted.
    pub value: HeaderValue,
}

/// A header's value: literal, or from a Secret.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Literal(String),
    Secret(Secret),
}

impl HeaderValue {
    pub fn as_text(&self) -> String {
        match self {
            Self::Literal(s) => s.clone(),
            Self::Secret(s) => s.as_text(),
        }
    }
}

/// A telephony hook ready to be called.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookConfig {
    pub name: String,
    /// Shown with its userinfo (a credential) redacted.
    #[serde(serialize_with = "crate::egress::serialize_redacted_url")]
    pub url: String,
    pub insecure_http: bool,
    pub auth_header: String,
    pub auth_secret: Secret,
    pub headers: Vec<HeaderConfig>,
    pub timeout_millis: u64,
    pub message_template: String,
    /// Name of the hook tried when this one fails.
    pub fallback: Option<String>,
}

/// An enrollment policy, as evaluated.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConfig {
    pub name: String,
    pub priority: i32,
    pub is_default: bool,
    pub groups: Vec<String>,
    pub spec: crate::resources::EnrollmentPolicySpec,
}

/// The org's SMTP provider.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    pub name: String,
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The password, or why it cannot be read (the Secret or its key is
    /// missing). Without it the provider still holds the org's mail while
    /// enabled: the mail waits for the Secret, never going to the default
    /// provider, and nothing connects.
    #[serde(serialize_with = "password_state")]
    pub password: Result<Secret, String>,
    pub tls: TlsMode,
    pub max_attempts: u32,
    pub initial_delay_millis: u64,
    pub multiplier: u32,
    pub max_delay_millis: u64,
}

fn password_state<S: serde::Serializer>(
    password: &Result<Secret, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match password {
        Ok(v) => v.serialize(s),
        Err(reason) => s.serialize_str(&format!("<unavailable: {reason}>")),
    }
}

/// A brand's sender.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainConfig {
    pub name: String,
    pub brand: String,
    pub domain: String,
    pub user_name: String,
    pub display_name: String,
    pub validation_subdomain: String,
}

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
    pub enrollment: Option<Arc<crate::enrollment::EnrollmentEngine>>,
}

/// The whole runtime configuration: orgs by namespace.
pub type RuntimeConfig = BTreeMap<String, OrgConfig>;

pub mod snapshot;
pub mod snapshot_writer;
pub use snapshot::{Change, ObjectView, ObjectViews, Referenced, Snapshot};
pub use snapshot_writer::IndexWriter;

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

/// The one-line summary of a policy, e.g. `required: email, phone; optional: webauthn`.
/// It states the effect, so an optional email reads as required (the email
/// authenticator is always enrolled automatically).
pub fn policy_summary(spec: &crate::resources::EnrollmentPolicySpec) -> String {
    use crate::resources::Enrollment;
    let mut groups: [Vec<&str>; 3] = Default::default();
    for a in &spec.authenticators {
        let value = match (&a.enroll, &a.methods) {
            (Some(e), _) => *e,
            (None, Some(m)) => match (m.sms, m.voice) {
                (Enrollment::Required, _) | (_, Enrollment::Required) => Enrollment::Required,
                (Enrollment::Optional, _) | (_, Enrollment::Optional) => Enrollment::Optional,
                _ => Enrollment::NotAllowed,
            },
            (None, None) => continue,
        };
        // Email set to optional is required in effect (enrolled automatically).
        let value = if a.key == crate::resources::AuthenticatorKey::OktaEmail
            && value == Enrollment::Optional
        {
            Enrollment::Required
        } else {
            value
        };
        let slot = match value {
            Enrollment::Required => 0,
            Enrollment::Optional => 1,
            Enrollment::NotAllowed => 2,
        };
        groups[slot].push(a.key.short_name());
    }
    let parts: Vec<String> = ["required", "optional", "not allowed"]
        .iter()
        .zip(groups.iter())
        .filter(|(_, names)| !names.is_empty())
        .map(|(label, names)| format!("{label}: {}", names.join(", ")))
        .collect();
    if parts.is_empty() {
        "no authenticators (password only)".into()
    } else {
        parts.join("; ")
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

fn resolve(
    secrets: &Secrets,
    namespace: &str,
    r: &SecretKeyRef,
    field: &str,
) -> Result<Secret, String> {
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

fn hook_config(
    h: &TelephonyHook,
    namespace: &str,
    secrets: &Secrets,
) -> Result<HookConfig, String> {
    let spec = &h.spec;
    let auth_secret = resolve(
        secrets,
        namespace,
        &spec.auth.secret_ref,
        "spec.auth.secretRef",
    )?;
    let mut headers = Vec::new();
    for (i, header) in spec.headers.iter().enumerate() {
        let value = match (&header.value, &header.value_from) {
            (Some(v), _) => HeaderValue::Literal(v.clone()),
            (None, Some(from)) => HeaderValue::Secret(resolve(
                secrets,
                namespace,
                &from.secret_key_ref,
                &format!("spec.headers[{i}].valueFrom.secretKeyRef"),
            )?),
            (None, None) => HeaderValue::Literal(String::new()),
        };
        headers.push(HeaderConfig {
            name: header.name.clone(),
            value,
        });
    }
    Ok(HookConfig {
        name: h.metadata.name.clone().unwrap_or_default(),
        url: spec.url.clone(),
        insecure_http: spec.url.starts_with("http://"),
        auth_header: spec.auth.header.clone(),
        auth_secret,
        headers,
        timeout_millis: parse_duration_millis(&spec.timeout).unwrap_or(3_000),
        message_template: spec
            .message_template
            .clone()
            .unwrap_or_else(|| DEFAULT_MESSAGE_TEMPLATE.to_string()),
        fallback: spec.fallback.as_ref().map(|f| f.hook_ref.clone()),
    })
}

fn provider_config(p: &EmailProvider, namespace: &str, secrets: &Secrets) -> ProviderConfig {
    let spec = &p.spec;
    let password = resolve(
        secrets,
        namespace,
        &spec.password_secret_ref,
        "spec.passwordSecretRef",
    );
    ProviderConfig {
        name: p.metadata.name.clone().unwrap_or_default(),
        enabled: spec.enabled,
        host: spec.host.clone(),
        port: u16::try_from(spec.port).unwrap_or(25),
        username: spec.username.clone(),
        password,
        tls: spec.tls,
        max_attempts: spec.retry.max_attempts,
        initial_delay_millis: parse_duration_millis(&spec.retry.initial_delay).unwrap_or(60_000),
        multiplier: spec.retry.multiplier,
        max_delay_millis: parse_duration_millis(&spec.retry.max_delay).unwrap_or(3_600_000),
    }
}

fn domain_config(d: &EmailDomain) -> DomainConfig {
    DomainConfig {
        name: d.metadata.name.clone().unwrap_or_default(),
        brand: d.spec.brand.clone(),
        domain: d.spec.domain.clone(),
        user_name: d.spec.user_name.clone(),
        display_name: d.spec.display_name.clone(),
        validation_subdomain: d.spec.validation_subdomain.clone(),
    }
}

fn policy_config(p: &EnrollmentPolicy) -> PolicyConfig {
    PolicyConfig {
        name: p.metadata.name.clone().unwrap_or_default(),
        priority: p.spec.priority,
        is_default: p.spec.is_default,
        groups: p.spec.groups.clone(),
        spec: p.spec.clone(),
    }
}

fn state(
    accepted: bool,
    ready: bool,
    active: Option<bool>,
    reason: &str,
    message: impl Into<String>,
) -> ObjectState {
    ObjectState {
        extra: serde_json::Map::new(),
        accepted,
        ready,
        active,
        reason: reason.to_string(),
        message: message.into(),
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
                let is_ours = crate::resources::KINDS.contains(&checked.key.kind.as_str());
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
            Typed::TelephonyHook(h) => match hook_config(h, ns, secrets) {
                Err(msg) => state(true, false, Some(false), reason::SECRET_NOT_FOUND, msg),
                Ok(hc) => {
                    let insecure = hc.insecure_http;
                    org.hooks.insert(name.clone(), hc);
                    if h.spec.active {
                        org.active_hook = Some(name.clone());
                        let msg = if insecure {
                            "in service for the org, over plain http:// (allowInsecureHttp)"
                        } else {
                            "in service for the org"
                        };
                        let r = if insecure {
                            reason::INSECURE_HTTP
                        } else {
                            reason::ACTIVATED
                        };
                        state(true, true, Some(true), r, msg)
                    } else {
                        state(
                            true,
                            true,
                            Some(false),
                            reason::DEACTIVATED,
                            "active: false; used only as a fallback or for previews",
                        )
                    }
                }
            },
            Typed::EnrollmentPolicy(p) => {
                roles.entry(ns.clone()).or_default().push((
                    name.clone(),
                    p.spec.is_default,
                    p.spec.active,
                ));
                let mut st = if p.spec.active {
                    org.policies.push(policy_config(p));
                    state(
                        true,
                        true,
                        None,
                        reason::READY,
                        "evaluated for the org's users",
                    )
                } else {
                    state(
                        true,
                        false,
                        None,
                        reason::DEACTIVATED,
                        "active: false; not evaluated",
                    )
                };
                st.extra.insert(
                    "summary".into(),
                    serde_json::Value::String(policy_summary(&p.spec)),
                );
                st
            }
            Typed::EmailProvider(p) => {
                let pc = provider_config(p, ns, secrets);
                let enabled = pc.enabled;
                let missing = pc.password.as_ref().err().cloned();
                org.email_provider = Some(pc);
                match missing {
                    Some(msg) if enabled => state(
                        true,
                        false,
                        None,
                        reason::SECRET_NOT_FOUND,
                        format!(
                            "{msg}; the org's mail waits for it (never the default provider while this one is enabled)"
                        ),
                    ),
                    Some(msg) => state(true, false, None, reason::SECRET_NOT_FOUND, msg),
                    None if enabled => state(
                        true,
                        true,
                        None,
                        reason::READY,
                        "the org's mail goes through this provider",
                    ),
                    None => state(
                        true,
                        true,
                        None,
                        reason::DEACTIVATED,
                        "enabled: false; the org's mail goes through the default provider",
                    ),
                }
            }
            Typed::EmailDomain(d) => {
                org.email_domains
                    .insert(d.spec.brand.clone(), domain_config(d));
                state(
                    true,
                    true,
                    None,
                    reason::READY,
                    "sender for its brand once the domain is verified",
                )
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
        org.enrollment = Some(Arc::new(crate::enrollment::EnrollmentEngine::new(
            &org.policies,
        )));
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
        let key = ObjectKey {
            kind: "EnrollmentPolicy".into(),
            namespace: ns.to_string(),
            name: name.clone(),
        };
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
    let hidden: BTreeMap<String, String> = crate::enrollment::shadowed(policies)
        .into_iter()
        .map(|s| (s.policy, s.message))
        .collect();
    for p in policies {
        let key = ObjectKey {
            kind: "EnrollmentPolicy".into(),
            namespace: ns.to_string(),
            name: p.name.clone(),
        };
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
    let active = (first.object.kind == "TelephonyHook").then_some(false);
    state(accepted, false, active, r, all.join("; "))
}

#[cfg(test)]
mod tests {
    use super::policy_summary;
    use crate::resources::EnrollmentPolicySpec;

    #[test]
    fn summary_groups_authenticators_by_value() {
        let spec: EnrollmentPolicySpec = serde_yaml::from_str(
            "priority: 1\ngroups: [a]\nauthenticators:\n- {key: okta_email, enroll: REQUIRED}\n\
             - {key: phone_number, methods: {sms: REQUIRED, voice: NOT_ALLOWED}}\n- {key: webauthn, enroll: OPTIONAL}\n\
             - {key: duo, enroll: NOT_ALLOWED}\n",
        )
        .unwrap();
        assert_eq!(
            policy_summary(&spec),
            "required: email, phone; optional: webauthn; not allowed: duo"
        );
    }
}
