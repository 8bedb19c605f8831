//! The admission decision, pure: one create, update or delete of an
//! idplane object, and the live org it would land in (the index's
//! [`OrgSources`]), give allowed or refused, with a message that names the
//! field and the reason, and warnings.
//!
//! The candidate is checked by the one validator: on its own
//! ([`validate::check_one`]: metadata, schema, CEL, typed decode), then
//! with the rules that span objects ([`validate::cross`], oldest wins) over
//! the org's objects with the candidate in place of its old version. It is
//! refused when it would lose or break a rule; what the change does to the
//! *other* objects (a hook it displaces, a fallback it leaves dangling, an
//! org left without its active hook) is only warned about, since the
//! candidate itself is sound. Reading the request, looking Secrets up and
//! answering are the server's business ([`super::server`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::index::OrgSources;
use crate::resources::{Kind, ObjectKey};
use crate::validate::{
    self, Checked, Finding, Options, OwnFinding, Rule, SecretData, Severity, Typed,
};

/// What the apiserver asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }
}

/// One review request, reduced to what the decision reads.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub operation: Operation,
    /// `request.kind.kind`.
    pub kind: &'a str,
    pub namespace: &'a str,
    pub subresource: Option<&'a str>,
    /// The object as it would be stored (create, update).
    pub object: Option<&'a Value>,
    /// The object as it is stored (update, delete).
    pub old_object: Option<&'a Value>,
}

/// What became of a Secret that the index does not hold and the server
/// looked up for this review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretLookup {
    /// It exists, with these keys.
    Found(BTreeSet<String>),
    /// It does not exist.
    Missing,
    /// It could not be read (forbidden, apiserver unreachable, out of time).
    Unreadable(String),
}

/// What the webhook knows of the world when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Live<'a> {
    /// The index has its first full listing (objects and Secrets).
    pub synced: bool,
    /// idplane watches the request's namespace (`--namespaces`).
    pub watched: bool,
    /// The org as the index built it; `None` when it has no object yet.
    pub org: Option<&'a OrgSources>,
    /// Secrets looked up for this review, by name.
    pub looked_up: &'a BTreeMap<String, SecretLookup>,
}

/// One field-level reason of a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

/// Why a request is refused, in the shape of a Kubernetes `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 422 (`Invalid`) when the object breaks a rule, 503
    /// (`ServiceUnavailable`) while idplane is starting.
    pub code: u16,
    pub reason: &'static str,
    /// Every cause on one line, each naming the object and the field.
    pub message: String,
    pub causes: Vec<Cause>,
}

/// The answer to one review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// `None` when the request is allowed.
    pub refusal: Option<Refusal>,
    /// Printed by kubectl (`Warning: ...`), allowed or not.
    pub warnings: Vec<String>,
}

impl Decision {
    fn allow(warnings: Vec<String>) -> Self {
        Self {
            refusal: None,
            warnings,
        }
    }

    pub fn allowed(&self) -> bool {
        self.refusal.is_none()
    }

    /// For metrics and logs: `allowed`, `warned`, `refused` or `starting`.
    pub fn outcome(&self) -> &'static str {
        match &self.refusal {
            Some(r) if r.code == 503 => "starting",
            Some(_) => "refused",
            None if self.warnings.is_empty() => "allowed",
            None => "warned",
        }
    }
}

/// The message of a refusal while the index has not synced.
pub const STARTING: &str = "idplane is starting: its index of the cluster's idplane objects and Secrets is not complete yet, so the rules that span objects cannot be checked; retry in a few seconds";

/// The candidate object of a create or update, checked on its own once.
#[derive(Clone, Debug)]
struct Candidate {
    checked: Checked,
    own: Vec<OwnFinding>,
}

/// One review: the request and its candidate checked on its own. The
/// server asks which Secrets to look up ([`Review::unseen_secrets`]),
/// then for the decision ([`Review::decide`]).
#[derive(Clone, Debug)]
pub struct Review<'a> {
    request: Request<'a>,
    candidate: Option<Candidate>,
}

impl<'a> Review<'a> {
    pub fn new(request: Request<'a>) -> Self {
        let candidate = match (request.operation, request.object) {
            (Operation::Create | Operation::Update, Some(object)) if reviewed(&request) => {
                let options = Options {
                    default_namespace: request.namespace.to_string(),
                    ..Options::default()
                };
                let (checked, own) = validate::check_one(object, &options);
                Some(Candidate { checked, own })
            }
            _ => None,
        };
        Self { request, candidate }
    }

    /// The Secrets the candidate references that the index does not hold:
    /// either they do not exist, or no object referenced them until now
    /// (idplane reads only referenced Secrets). The server looks them up.
    pub fn unseen_secrets(&self, org: Option<&OrgSources>) -> BTreeSet<String> {
        let Some(typed) = self
            .candidate
            .as_ref()
            .and_then(|c| c.checked.typed.as_ref())
        else {
            return BTreeSet::new();
        };
        typed
            .secret_references()
            .into_iter()
            .map(|r| r.secret.name.clone())
            .filter(|name| org.is_none_or(|o| !o.secret_keys.contains_key(name)))
            .collect()
    }

    /// The decision.
    pub fn decide(&self, live: &Live<'_>) -> Decision {
        if !reviewed(&self.request) {
            return Decision::allow(Vec::new());
        }
        if self.request.operation == Operation::Delete {
            return self.deletion(live);
        }
        if !live.synced {
            return Decision {
                refusal: Some(Refusal {
                    code: 503,
                    reason: "ServiceUnavailable",
                    message: STARTING.into(),
                    causes: Vec::new(),
                }),
                warnings: Vec::new(),
            };
        }
        let Some(candidate) = &self.candidate else {
            return refuse(vec![Cause {
                field: String::new(),
                message: "the review carries no object".into(),
            }]);
        };
        let key = &candidate.checked.key;
        if !live.watched {
            return Decision::allow(vec![format!(
                "idplane does not watch namespace {} (--namespaces): {key} is not used",
                key.namespace
            )]);
        }
        if self
            .request
            .object
            .and_then(|o| o.pointer("/metadata/deletionTimestamp"))
            .is_some_and(|t| !t.is_null())
        {
            // Going away: finalizers must be able to come off.
            return Decision::allow(Vec::new());
        }
        if !candidate.own.is_empty() {
            let causes = candidate
                .own
                .iter()
                .map(|f| Cause {
                    field: f.field.clone(),
                    message: f.message.clone(),
                })
                .collect();
            return refuse(causes);
        }

        let secrets = secret_objects(&key.namespace, live);
        let others = live_objects(live.org, Some(key));
        let before = cross(&others, None, &secrets);
        let after = cross(&others, Some(&candidate.checked), &secrets);
        let mine = after.findings_of(key);

        let mut warnings: Vec<String> = mine
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect();
        warnings.extend(secret_warnings(candidate, live));
        warnings.extend(consequences(&before, &after, key, false));

        let mut errors: Vec<&Finding> = mine
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        // A change that would win a conflict (an older hook made active, an
        // older policy given a taken priority) breaks the rule as surely as
        // one that would lose it: it is refused too, naming the object it
        // would displace.
        let displaced = displaced(&before, &after, key);
        if errors.is_empty() && displaced.is_empty() {
            return Decision::allow(warnings);
        }
        errors.extend(displaced.iter().copied());
        if self.spec_unchanged() {
            // Labels, annotations, finalizers: never refused, so that an
            // object admitted before the webhook existed can be managed.
            warnings.extend(errors.iter().map(|f| {
                format!(
                    "{}: {} (not refused: this update leaves the spec unchanged)",
                    f.field, f.message
                )
            }));
            return Decision::allow(warnings);
        }
        let mut decision = refuse(
            errors
                .into_iter()
                .map(|f| Cause {
                    field: f.field.clone(),
                    message: if f.object == *key {
                        with_hint(f)
                    } else {
                        format!(
                            "this change would displace {}: {}; change {} first",
                            f.object, f.message, f.object
                        )
                    },
                })
                .collect(),
        );
        decision.warnings = warnings;
        decision
    }

    fn spec_unchanged(&self) -> bool {
        match (self.request.object, self.request.old_object) {
            (Some(new), Some(old)) if self.request.operation == Operation::Update => {
                new.get("spec") == old.get("spec")
            }
            _ => false,
        }
    }

    /// A delete is always allowed (and not refused while starting); it is
    /// warned about when it leaves the org without its active hook or its
    /// provider, or breaks another object.
    fn deletion(&self, live: &Live<'_>) -> Decision {
        let Some(old) = self.request.old_object else {
            return Decision::allow(Vec::new());
        };
        if !live.synced || !live.watched {
            return Decision::allow(Vec::new());
        }
        let key = validate::object_key(old, self.request.namespace);
        let secrets = secret_objects(&key.namespace, live);
        let before = cross(&live_objects(live.org, None), None, &secrets);
        let after = cross(&live_objects(live.org, Some(&key)), None, &secrets);
        Decision::allow(consequences(&before, &after, &key, true))
    }
}

/// Whether idplane reviews this request at all: one of its kinds, not a
/// subresource (status writes pass), not CONNECT.
fn reviewed(request: &Request<'_>) -> bool {
    request.subresource.is_none_or(str::is_empty)
        && Kind::parse(request.kind).is_some()
        && request.operation != Operation::Connect
}

fn refuse(causes: Vec<Cause>) -> Decision {
    let message = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    Decision {
        refusal: Some(Refusal {
            code: 422,
            reason: "Invalid",
            message,
            causes,
        }),
        warnings: Vec::new(),
    }
}

/// The org's objects as the index holds them, but the one with `except`'s key.
fn live_objects<'a>(org: Option<&'a OrgSources>, except: Option<&ObjectKey>) -> Vec<&'a Checked> {
    org.map(|o| {
        o.objects
            .iter()
            .map(|c| c.as_ref())
            .filter(|c| Some(&c.key) != except)
            .collect()
    })
    .unwrap_or_default()
}

/// The org's Secrets the index holds, and those looked up that exist, as
/// the validator takes them: key names only, with empty values (the rules
/// read the names alone).
fn secret_objects(namespace: &str, live: &Live<'_>) -> Vec<Checked> {
    let held = live.org.into_iter().flat_map(|o| o.secret_keys.iter());
    let found = live.looked_up.iter().filter_map(|(name, l)| match l {
        SecretLookup::Found(keys) => Some((name, keys)),
        _ => None,
    });
    let mut by_name: BTreeMap<&String, &BTreeSet<String>> = BTreeMap::new();
    by_name.extend(found);
    by_name.extend(held);
    by_name
        .into_iter()
        .map(|(name, keys)| Checked {
            key: ObjectKey {
                kind: "Secret".into(),
                namespace: namespace.to_string(),
                name: name.clone(),
            },
            typed: Some(Typed::Secret(SecretData {
                keys: keys.iter().map(|k| (k.clone(), Vec::new())).collect(),
                version: String::new(),
            })),
            created: None,
        })
        .collect()
}

/// The cross-object findings over `objects`, the candidate (if any) and
/// the Secrets; the objects are borrowed, not copied.
struct CrossReport<'a> {
    checked: Vec<&'a Checked>,
    findings: Vec<Finding>,
}

fn cross<'a>(
    objects: &[&'a Checked],
    candidate: Option<&'a Checked>,
    secrets: &'a [Checked],
) -> CrossReport<'a> {
    let mut checked: Vec<&Checked> = objects.to_vec();
    checked.extend(candidate);
    checked.extend(secrets);
    let findings = validate::cross::check(&checked);
    CrossReport { checked, findings }
}

impl CrossReport<'_> {
    fn findings_of(&self, key: &ObjectKey) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.object == *key).collect()
    }

    /// The org's active hook that nothing keeps out, if any.
    fn active_hook(&self) -> Option<&str> {
        self.checked.iter().find_map(|c| match &c.typed {
            Some(Typed::TelephonyHook(h)) if h.spec.active && self.clean(&c.key) => {
                Some(c.key.name.as_str())
            }
            _ => None,
        })
    }

    /// The org's EmailProvider that nothing keeps out, if any.
    fn provider(&self) -> Option<&str> {
        self.checked.iter().find_map(|c| match &c.typed {
            Some(Typed::EmailProvider(_)) if self.clean(&c.key) => Some(c.key.name.as_str()),
            _ => None,
        })
    }

    fn clean(&self, key: &ObjectKey) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.object == *key && f.severity == Severity::Error)
    }
}

/// The errors a change brings to other objects of the org (a conflict it
/// would win): the reasons to refuse it.
fn displaced<'a>(
    before: &CrossReport<'_>,
    after: &'a CrossReport<'a>,
    changed: &ObjectKey,
) -> Vec<&'a Finding> {
    brought(before, after, changed)
        .filter(|f| f.severity == Severity::Error)
        .collect()
}

/// The findings on other objects than `changed` that are in `after` and
/// not in `before`.
fn brought<'a>(
    before: &CrossReport<'_>,
    after: &'a CrossReport<'a>,
    changed: &ObjectKey,
) -> impl Iterator<Item = &'a Finding> {
    let had: BTreeSet<(ObjectKey, String, String)> = before
        .findings
        .iter()
        .map(|f| (f.object.clone(), f.field.clone(), f.message.clone()))
        .collect();
    let changed = changed.clone();
    after.findings.iter().filter(move |f| {
        f.object != changed
            && !had.contains(&(f.object.clone(), f.field.clone(), f.message.clone()))
    })
}

/// What a change does to the rest of the org: warnings on other objects
/// that it brings, and the org's active hook or provider that it takes
/// away. (Errors it brings are refusals on a create or update: [`displaced`].)
fn consequences(
    before: &CrossReport<'_>,
    after: &CrossReport<'_>,
    changed: &ObjectKey,
    errors_too: bool,
) -> Vec<String> {
    let mut out: Vec<String> = brought(before, after, changed)
        .filter(|f| errors_too || f.severity != Severity::Error)
        .map(|f| {
            format!(
                "after this change, {}: {}: {}",
                f.object, f.field, f.message
            )
        })
        .collect();
    let org = &changed.namespace;
    if let (Some(hook), None) = (before.active_hook(), after.active_hook()) {
        out.push(format!(
            "after this change org {org} has no active TelephonyHook (it was {hook}): one-time passcodes cannot be sent until a hook is active"
        ));
    }
    if let (Some(provider), None) = (before.provider(), after.provider()) {
        out.push(format!(
            "after this change org {org} has no EmailProvider (it was {provider}): its email is refused (no_email_provider) unless idplane has a default provider (--smtp-host)"
        ));
    }
    out
}

/// A warning for each Secret the candidate references that idplane does
/// not hold and that the lookup did not find with the key.
fn secret_warnings(candidate: &Candidate, live: &Live<'_>) -> Vec<String> {
    let Some(typed) = &candidate.checked.typed else {
        return Vec::new();
    };
    let ns = &candidate.checked.key.namespace;
    let held = |name: &str| live.org.is_some_and(|o| o.secret_keys.contains_key(name));
    let effect =
        "the object is admitted, and stays not Ready (SecretNotFound) until idplane can read it";
    typed
        .secret_references()
        .into_iter()
        .filter(|r| !held(&r.secret.name))
        .filter_map(|r| {
            let name = &r.secret.name;
            match live.looked_up.get(name) {
                Some(SecretLookup::Found(_)) => None,
                Some(SecretLookup::Missing) => Some(format!(
                    "{}: Secret {ns}/{name} does not exist (yet): {effect}",
                    r.field
                )),
                Some(SecretLookup::Unreadable(why)) => Some(format!(
                    "{}: idplane cannot read Secret {ns}/{name} ({why}): {effect}",
                    r.field
                )),
                None => Some(format!(
                    "{}: idplane has not read Secret {ns}/{name}: {effect}",
                    r.field
                )),
            }
        })
        .collect()
}

/// The validator's message, and what to do about it at admission.
fn with_hint(f: &Finding) -> String {
    let hint = match (&f.rule, f.object.owned_kind(), f.field.as_str()) {
        (Rule::Conflict { winner }, Some(Kind::TelephonyHook), _) => format!(
            "to make this hook the active one, first set spec.active: false on TelephonyHook {winner}; to keep this one as a standby, set spec.active: false on it"
        ),
        (Rule::Conflict { winner }, Some(Kind::EmailProvider), _) => format!(
            "an org has one EmailProvider: change EmailProvider {winner} instead, or delete it first"
        ),
        (Rule::Conflict { winner }, Some(Kind::EmailDomain), _) => format!(
            "change EmailDomain {winner} instead, or delete it first, or give this one another spec.brand"
        ),
        (Rule::Conflict { winner }, Some(Kind::EnrollmentPolicy), "spec.default") => {
            format!("set spec.default: false on this policy, or on EnrollmentPolicy {winner} first")
        }
        (Rule::Conflict { winner }, Some(Kind::EnrollmentPolicy), _) => format!(
            "give this policy a spec.priority that no other policy of the org uses (EnrollmentPolicy {winner} has it)"
        ),
        (Rule::Reference, _, "spec.fallback.hookRef") if f.message.contains("does not exist") => {
            "create the fallback hook first (it may be inactive), or remove spec.fallback".into()
        }
        (Rule::Reference, _, "spec.fallback.hookRef") if f.message.contains("cycle") => {
            "remove spec.fallback from one hook of the cycle".into()
        }
        (Rule::Reference, _, field) if field.ends_with(".key") => {
            "add the key to the Secret first, or name a key it has".into()
        }
        _ => return f.message.clone(),
    };
    format!("{}; {hint}", f.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    const NS: &str = "acme";
    const OLD: &str = "2024-01-01T00:00:00Z";
    const NEW: &str = "2024-06-01T00:00:00Z";

    fn hook(name: &str, active: bool, created: &str, fallback: Option<&str>) -> Value {
        let mut spec = json!({
            "url": format!("https://sms.example.com/{name}"),
            "active": active,
            "auth": {"header": "X-Key", "secretRef": {"name": "sms", "key": "token"}},
        });
        if let Some(f) = fallback {
            spec["fallback"] = json!({"hookRef": f});
        }
        json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "TelephonyHook",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created, "generation": 1},
            "spec": spec,
        })
    }

    fn provider(name: &str, created: &str) -> Value {
        json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "EmailProvider",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
            "spec": {"host": "smtp.example.com", "port": 587, "username": "u",
                     "passwordSecretRef": {"name": "smtp", "key": "password"}},
        })
    }

    fn policy(name: &str, priority: i32, default: bool, created: &str) -> Value {
        json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "EnrollmentPolicy",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
            "spec": {"priority": priority, "default": default, "groups": if default { json!([]) } else { json!(["staff"]) }},
        })
    }

    fn domain(name: &str, brand: &str, created: &str) -> Value {
        json!({
            "apiVersion": "idplane.dev/v1alpha1", "kind": "EmailDomain",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
            "spec": {"brand": brand, "domain": format!("{name}.example.com"), "userName": "noreply", "displayName": "Acme"},
        })
    }

    /// The org as the index would hold it, with Secret `sms` (key `token`)
    /// and `smtp` (key `password`).
    fn org(objects: &[Value]) -> OrgSources {
        let options = Options {
            default_namespace: NS.into(),
            ..Options::default()
        };
        OrgSources {
            objects: objects
                .iter()
                .map(|o| Arc::new(validate::check_one(o, &options).0))
                .collect(),
            secret_keys: BTreeMap::from([
                ("sms".into(), BTreeSet::from(["token".to_string()])),
                ("smtp".into(), BTreeSet::from(["password".to_string()])),
            ]),
        }
    }

    fn request<'a>(
        op: Operation,
        object: Option<&'a Value>,
        old: Option<&'a Value>,
    ) -> Request<'a> {
        let kind = object
            .or(old)
            .and_then(|o| o["kind"].as_str())
            .unwrap_or("TelephonyHook");
        Request {
            operation: op,
            kind,
            namespace: NS,
            subresource: None,
            object,
            old_object: old,
        }
    }

    fn decide(req: Request<'_>, org: &OrgSources) -> Decision {
        let none = BTreeMap::new();
        Review::new(req).decide(&Live {
            synced: true,
            watched: true,
            org: Some(org),
            looked_up: &none,
        })
    }

    /// Each create (candidate created now, after the live objects): refused
    /// with the field and the words, or allowed.
    #[test]
    fn creates_are_refused_when_the_candidate_loses_or_breaks_a_rule() {
        let now = "2025-01-01T00:00:00Z";
        /// Name, the live org, the candidate, and the refusal's field and words.
        type Case<'a> = (&'a str, Vec<Value>, Value, Option<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                "second active hook names the active one and what to do",
                vec![hook("primary", true, OLD, None)],
                hook("second", true, now, None),
                Some(("spec.active", "active hook primary wins")),
            ),
            (
                "second hook as standby",
                vec![hook("primary", true, OLD, None)],
                hook("standby", false, now, None),
                None,
            ),
            (
                "second provider",
                vec![provider("corp", OLD)],
                provider("other", now),
                Some(("metadata.name", "only one EmailProvider")),
            ),
            (
                "duplicate priority",
                vec![policy("staff", 10, false, OLD)],
                policy("admins", 10, false, now),
                Some(("spec.priority", "priority 10 must be unique")),
            ),
            (
                "second default policy",
                vec![policy("everyone", 100, true, OLD)],
                policy("fallback", 200, true, now),
                Some(("spec.default", "only one default EnrollmentPolicy")),
            ),
            (
                "second domain for a brand",
                vec![domain("a", "acme", OLD)],
                domain("b", "acme", now),
                Some(("spec.brand", "already has a sender domain")),
            ),
            (
                "fallback that does not exist",
                vec![],
                hook("a", true, now, Some("nowhere")),
                Some((
                    "spec.fallback.hookRef",
                    "TelephonyHook acme/nowhere does not exist",
                )),
            ),
            (
                "fallback to an inactive hook",
                vec![hook("standby", false, OLD, None)],
                hook("a", true, now, Some("standby")),
                None,
            ),
            (
                "own fallback",
                vec![],
                hook("a", true, now, Some("a")),
                Some(("spec.fallback.hookRef", "its own fallback")),
            ),
            (
                "fallback cycle",
                vec![hook("b", false, OLD, Some("a"))],
                hook("a", true, now, Some("b")),
                Some(("spec.fallback.hookRef", "cycle: a -> b -> a")),
            ),
            (
                "secret without the key",
                vec![hook("other", false, OLD, None)],
                {
                    let mut h = hook("a", true, now, None);
                    h["spec"]["auth"]["secretRef"]["key"] = json!("tokn");
                    h
                },
                Some((
                    "spec.auth.secretRef.key",
                    "has no key \"tokn\" (it has: token)",
                )),
            ),
            (
                "schema: bad url scheme",
                vec![],
                {
                    let mut h = hook("a", true, now, None);
                    h["spec"]["url"] = json!("ftp://x");
                    h
                },
                Some(("spec.url", "")),
            ),
        ];
        for (name, live, candidate, expected) in cases {
            let org = org(&live);
            let d = decide(request(Operation::Create, Some(&candidate), None), &org);
            match expected {
                None => assert!(d.allowed(), "{name}: {d:?}"),
                Some((field, words)) => {
                    let r = d
                        .refusal
                        .as_ref()
                        .unwrap_or_else(|| panic!("{name}: allowed"));
                    assert_eq!(r.code, 422, "{name}");
                    assert!(
                        r.causes
                            .iter()
                            .any(|c| c.field == field && c.message.contains(words)),
                        "{name}: {r:?}"
                    );
                    assert!(r.message.contains(field), "{name}: {}", r.message);
                }
            }
        }
    }

    #[test]
    fn the_refusal_of_a_second_hook_says_what_to_do() {
        let org = org(&[hook("primary", true, OLD, None)]);
        let second = hook("second", true, NEW, None);
        let d = decide(request(Operation::Create, Some(&second), None), &org);
        let message = d.refusal.unwrap().message;
        assert!(
            message.contains("first set spec.active: false on TelephonyHook primary"),
            "{message}"
        );
    }

    /// An older hook made active would win over the younger active one
    /// (oldest wins): that is a second active hook all the same, refused
    /// with the hook it would displace named.
    #[test]
    fn an_older_candidate_that_would_win_is_refused_too() {
        let old_version = hook("elder", false, OLD, None);
        let org = org(&[old_version.clone(), hook("younger", true, NEW, None)]);
        let elder = hook("elder", true, OLD, None);
        let d = decide(
            request(Operation::Update, Some(&elder), Some(&old_version)),
            &org,
        );
        let message = d.refusal.expect("refused").message;
        assert!(
            message.starts_with(
                "spec.active: this change would displace TelephonyHook acme/younger: only one TelephonyHook may be active"
            ),
            "{message}"
        );
        assert!(
            !d.warnings
                .iter()
                .any(|w| w.contains("acme/younger: spec.active")),
            "the refusal is not repeated as a warning: {:?}",
            d.warnings
        );
    }

    /// An update that leaves the spec alone is never refused, even for an
    /// object already in conflict; a spec change of that object is.
    #[test]
    fn metadata_only_updates_pass_spec_changes_do_not() {
        let loser = hook("second", true, NEW, None);
        let org = org(&[hook("primary", true, OLD, None), loser.clone()]);
        let mut labelled = loser.clone();
        labelled["metadata"]["labels"] = json!({"team": "sms"});
        let d = decide(
            request(Operation::Update, Some(&labelled), Some(&loser)),
            &org,
        );
        assert!(d.allowed(), "{d:?}");
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("not refused: this update leaves the spec unchanged")),
            "{:?}",
            d.warnings
        );
        let mut moved = loser.clone();
        moved["spec"]["url"] = json!("https://sms.example.com/moved");
        let d = decide(request(Operation::Update, Some(&moved), Some(&loser)), &org);
        assert!(!d.allowed());
        let mut standby = loser.clone();
        standby["spec"]["active"] = json!(false);
        let d = decide(
            request(Operation::Update, Some(&standby), Some(&loser)),
            &org,
        );
        assert!(d.allowed(), "{d:?}");
    }

    #[test]
    fn an_object_being_deleted_can_lose_its_finalizers() {
        let loser = hook("second", true, NEW, None);
        let org = org(&[hook("primary", true, OLD, None), loser.clone()]);
        let mut going = loser.clone();
        going["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        going["spec"]["url"] = json!("https://sms.example.com/other");
        assert!(decide(request(Operation::Update, Some(&going), Some(&loser)), &org).allowed());
    }

    #[test]
    fn secrets_idplane_does_not_hold_are_looked_up_and_warned_about() {
        let mut candidate = hook("a", true, NEW, None);
        candidate["spec"]["auth"]["secretRef"] = json!({"name": "later", "key": "token"});
        let req = request(Operation::Create, Some(&candidate), None);
        let org = org(&[]);
        let review = Review::new(req);
        assert_eq!(
            review.unseen_secrets(Some(&org)),
            BTreeSet::from(["later".to_string()])
        );
        let run = |lookup: Option<SecretLookup>| {
            let looked_up: BTreeMap<String, SecretLookup> = lookup
                .into_iter()
                .map(|l| ("later".to_string(), l))
                .collect();
            review.decide(&Live {
                synced: true,
                watched: true,
                org: Some(&org),
                looked_up: &looked_up,
            })
        };
        let cases = [
            (
                Some(SecretLookup::Missing),
                Some("Secret acme/later does not exist (yet)"),
                true,
            ),
            (
                Some(SecretLookup::Unreadable("forbidden".into())),
                Some("idplane cannot read Secret acme/later (forbidden)"),
                true,
            ),
            (None, Some("idplane has not read Secret acme/later"), true),
            (
                Some(SecretLookup::Found(BTreeSet::from(["token".to_string()]))),
                None,
                true,
            ),
            (
                Some(SecretLookup::Found(BTreeSet::from(["tokn".to_string()]))),
                None,
                false,
            ),
        ];
        for (lookup, warning, allowed) in cases {
            let d = run(lookup.clone());
            assert_eq!(d.allowed(), allowed, "{lookup:?}: {d:?}");
            match warning {
                Some(w) => assert!(
                    d.warnings
                        .iter()
                        .any(|x| x.starts_with("spec.auth.secretRef: ") && x.contains(w)),
                    "{lookup:?}: {:?}",
                    d.warnings
                ),
                None => assert!(d.warnings.is_empty(), "{lookup:?}: {:?}", d.warnings),
            }
        }
    }

    #[test]
    fn fail_closed_while_starting_and_open_for_what_is_not_reviewed() {
        let candidate = hook("a", true, NEW, None);
        let none = BTreeMap::new();
        let live = |synced, watched| Live {
            synced,
            watched,
            org: None,
            looked_up: &none,
        };
        let review = Review::new(request(Operation::Create, Some(&candidate), None));
        let d = review.decide(&live(false, true));
        let r = d.refusal.clone().unwrap();
        assert_eq!((r.code, r.reason), (503, "ServiceUnavailable"));
        assert!(r.message.starts_with("idplane is starting"));
        assert_eq!(d.outcome(), "starting");

        let d = review.decide(&live(true, false));
        assert!(d.allowed());
        assert!(
            d.warnings[0].contains("does not watch namespace acme"),
            "{d:?}"
        );

        let mut status = request(Operation::Update, Some(&candidate), Some(&candidate));
        status.subresource = Some("status");
        assert_eq!(
            Review::new(status).decide(&live(false, true)),
            Decision::allow(vec![])
        );
        let mut secret = request(Operation::Create, Some(&candidate), None);
        secret.kind = "Secret";
        assert!(Review::new(secret).decide(&live(false, true)).allowed());
        let delete = request(Operation::Delete, None, Some(&candidate));
        assert!(Review::new(delete).decide(&live(false, true)).allowed());
    }

    #[test]
    fn deletes_are_allowed_and_warned_about_when_they_leave_a_gap() {
        let primary = hook("primary", true, OLD, None);
        let standby = hook("standby", false, OLD, None);
        let fallback_user = hook("primary", true, OLD, Some("standby"));
        let cases: Vec<(&str, Vec<Value>, Value, Vec<&str>)> = vec![
            (
                "the only active hook",
                vec![primary.clone(), standby.clone()],
                primary.clone(),
                vec!["org acme has no active TelephonyHook (it was primary)"],
            ),
            (
                "a conflicting active hook takes over",
                vec![primary.clone(), hook("younger", true, NEW, None)],
                primary.clone(),
                vec![],
            ),
            (
                "a standby",
                vec![primary.clone(), standby.clone()],
                standby.clone(),
                vec![],
            ),
            (
                "a fallback in use",
                vec![fallback_user.clone(), standby.clone()],
                standby.clone(),
                // The index leaves a hook with a dangling fallback out.
                vec![
                    "after this change, TelephonyHook acme/primary: spec.fallback.hookRef: TelephonyHook acme/standby does not exist",
                    "org acme has no active TelephonyHook (it was primary)",
                ],
            ),
            (
                "the provider",
                vec![provider("corp", OLD)],
                provider("corp", OLD),
                vec!["org acme has no EmailProvider (it was corp)"],
            ),
            (
                "the default policy",
                vec![
                    policy("staff", 10, false, OLD),
                    policy("everyone", 100, true, OLD),
                ],
                policy("everyone", 100, true, OLD),
                vec![
                    "after this change, EnrollmentPolicy acme/staff: spec.default: org acme has EnrollmentPolicies but no default one",
                ],
            ),
        ];
        for (name, live, deleted, expected) in cases {
            let org = org(&live);
            let d = decide(request(Operation::Delete, None, Some(&deleted)), &org);
            assert!(d.allowed(), "{name}");
            assert_eq!(d.warnings.len(), expected.len(), "{name}: {:?}", d.warnings);
            for (w, e) in d.warnings.iter().zip(expected) {
                assert!(w.contains(e), "{name}: {w}");
            }
        }
    }

    #[test]
    fn outcomes_name_what_happened() {
        assert_eq!(Decision::allow(vec![]).outcome(), "allowed");
        assert_eq!(Decision::allow(vec!["w".into()]).outcome(), "warned");
        assert_eq!(refuse(vec![]).outcome(), "refused");
    }
}
