//! From an object's state to the status it should carry: conditions with
//! `observedGeneration`, and `lastTransitionTime` kept while a condition's
//! status does not flip. Pure.
//!
//! The conditions follow kstatus, which Flux, `kubectl wait` and idplane's
//! Argo CD health checks (`docs/argocd/health.lua`) read: `Ready` says
//! whether the object's current generation is in effect as its spec asks
//! (an object switched off by its spec is Ready: off is what it asks for);
//! `Reconciling` and `Stalled` appear only while True ("abnormal-true"),
//! never both. [`health`] decides them for every kind and state; the table
//! is in `docs/health.md`.

use serde_json::{Map, Value, json};

use crate::index::ObjectView;
use crate::resources::{Kind, ObjectKey, ValidationStatus};
use crate::resources::{condition_type as ct, reason, status as st};

/// A condition before its transition time is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
    /// The generation the condition describes when it is not the object's
    /// current one: a verification finished for an earlier generation.
    pub observed_generation: Option<i64>,
}

fn cond(type_: &'static str, ok: bool, reason: &str, message: &str) -> Desired {
    Desired {
        type_,
        status: if ok { st::TRUE } else { st::FALSE },
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: None,
    }
}

/// `Ready`, and `Reconciling` or `Stalled` while one of them holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub ready: Desired,
    /// `Reconciling=True` or `Stalled=True`; `None` when the object is
    /// Ready.
    pub abnormal: Option<Desired>,
}

impl Health {
    fn current(reason: &str, message: &str) -> Self {
        Self {
            ready: cond(ct::READY, true, reason, message),
            abnormal: None,
        }
    }

    /// Not Ready yet, and getting there without a change by the user.
    fn reconciling(reason: &str, message: &str) -> Self {
        Self {
            ready: cond(ct::READY, false, reason, message),
            abnormal: Some(cond(ct::RECONCILING, true, reason, message)),
        }
    }

    /// Not Ready, and not getting there until the user changes something.
    fn stalled(reason: &str, message: &str) -> Self {
        Self {
            ready: cond(ct::READY, false, reason, message),
            abnormal: Some(cond(ct::STALLED, true, reason, message)),
        }
    }
}

/// What the runtime found out about an object outside the index: the
/// `Verified` condition (an EmailProvider's SMTP server, an EmailDomain's
/// DNS record) and a domain's `validationStatus`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Verification<'a> {
    /// `None` while nothing was found out for the current generation.
    pub verified: Option<&'a Desired>,
    pub validation: Option<ValidationStatus>,
}

/// `Ready`, `Reconciling` and `Stalled` for an object in the given state.
pub fn health(kind: Option<Kind>, view: &ObjectView, found: Verification) -> Health {
    let s = &view.state;
    if !s.accepted {
        let mut h = Health::stalled(reason::INVALID, &s.message);
        if view.serving_last_good {
            h.ready.reason = reason::LAST_VALID_VERSION_IN_USE.into();
        }
        return h;
    }
    match s.reason.as_str() {
        reason::CONFLICT => return Health::stalled(reason::CONFLICT, &s.message),
        // Secrets may come later (External Secrets, a later sync wave).
        reason::SECRET_NOT_FOUND => {
            return Health::reconciling(reason::SECRET_NOT_FOUND, &s.message);
        }
        _ => {}
    }
    let off = s.reason == reason::DEACTIVATED;
    match kind {
        Some(Kind::TelephonyHook) if s.active == Some(false) => {
            Health::current(reason::STANDBY, &s.message)
        }
        Some(Kind::EmailProvider) if !off => match found.verified {
            Some(v) if v.status == st::TRUE => Health::current(reason::READY, &s.message),
            // Verification is tried again when the spec or the Secret changes.
            Some(v) if v.status == st::FALSE => Health::stalled(&v.reason, &v.message),
            _ => Health::reconciling(
                reason::VERIFYING,
                "verifying the SMTP server: connection, TLS and credentials",
            ),
        },
        Some(Kind::EmailDomain) => {
            let (why, message) = found.verified.map_or(
                (reason::VERIFYING, "waiting for the first DNS lookup"),
                |v| (v.reason.as_str(), v.message.as_str()),
            );
            match found.validation {
                Some(ValidationStatus::Verified) => Health::current(reason::READY, message),
                // Polling goes on, but only a new DNS record or spec helps.
                Some(ValidationStatus::Error) => Health::stalled(why, message),
                _ => Health::reconciling(why, message),
            }
        }
        _ if off => Health::current(reason::DEACTIVATED, &s.message),
        _ => Health::current(reason::READY, &s.message),
    }
}

/// The conditions an object should carry, given the extra conditions the
/// runtime reported (`Verified`, `Shadowed`, `DefaultPolicy`) and the
/// domain's `validationStatus`.
pub fn desired_conditions(
    key: &ObjectKey,
    view: &ObjectView,
    extras: &[Desired],
    validation: Option<ValidationStatus>,
) -> Vec<Desired> {
    let s = &view.state;
    let mut out = Vec::new();
    let accepted_reason = if s.accepted {
        reason::VALID
    } else {
        reason::INVALID
    };
    let accepted_message = if s.accepted {
        "the spec passed validation"
    } else {
        s.message.as_str()
    };
    out.push(cond(
        ct::ACCEPTED,
        s.accepted,
        accepted_reason,
        accepted_message,
    ));
    if key.is(Kind::TelephonyHook) {
        let active = s.active.unwrap_or(false);
        let message = if view.serving_last_good {
            "the last valid version stays in service"
        } else {
            s.message.as_str()
        };
        let r = if view.serving_last_good && active {
            reason::ACTIVATED.to_string()
        } else {
            s.reason.clone()
        };
        out.push(cond(ct::ACTIVE, active, &r, message));
    }
    let verified = extras.iter().find(|d| d.type_ == ct::VERIFIED).filter(|d| {
        d.observed_generation
            .is_none_or(|g| Some(g) == view.generation)
    });
    let found = Verification {
        verified,
        validation,
    };
    let health = health(key.owned_kind(), view, found);
    out.push(health.ready);
    out.extend(health.abnormal);
    out.extend(extras.iter().cloned());
    out
}

/// Turns desired conditions into status conditions, keeping each one's
/// `lastTransitionTime` from `previous` when its status did not change.
pub fn settle(
    desired: &[Desired],
    previous: Option<&Value>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Value> {
    let previous = previous_conditions(previous);
    desired
        .iter()
        .map(|d| {
            let before = previous
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(d.type_));
            let time = match before {
                Some(b) if b.get("status").and_then(Value::as_str) == Some(d.status) => b
                    .get("lastTransitionTime")
                    .and_then(Value::as_str)
                    .unwrap_or(now)
                    .to_string(),
                _ => now.to_string(),
            };
            let mut c = json!({
                "type": d.type_,
                "status": d.status,
                "reason": d.reason,
                "message": d.message,
                "lastTransitionTime": time,
            });
            if let Some(g) = d.observed_generation.or(generation) {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect()
}

fn previous_conditions(previous: Option<&Value>) -> Vec<&Value> {
    previous
        .and_then(|p| p.get("conditions"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The whole status an object should carry: conditions, observedGeneration,
/// and the extra fields other parts publish (metrics, summaries, ...).
/// `previous` is the status last written or observed.
pub fn desired_status(
    key: &ObjectKey,
    view: &ObjectView,
    extra: Option<&Map<String, Value>>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let mut extras: Vec<Desired> = Vec::new();
    let mut status = Map::new();
    for extra in [Some(&view.state.extra), extra].into_iter().flatten() {
        for (k, v) in extra {
            if k == "conditions" {
                // Extra conditions (Verified, Shadowed, DefaultPolicy, ...) come
                // as a list.
                for c in v.as_array().into_iter().flatten() {
                    if let Some(d) = extra_condition(c) {
                        extras.retain(|x| x.type_ != d.type_);
                        extras.push(d);
                    }
                }
            } else {
                status.insert(k.clone(), v.clone());
            }
        }
    }
    carry_verification(view, previous, &mut extras, &mut status);
    let validation = status
        .get("validationStatus")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let desired = desired_conditions(key, view, &extras, validation);
    status.insert(
        "conditions".into(),
        Value::Array(settle(&desired, previous, view.generation, now)),
    );
    if let Some(g) = view.generation {
        status.insert("observedGeneration".into(), json!(g));
    }
    Value::Object(status)
}

/// Status fields that come from a verification (an EmailDomain's DNS check).
const VERIFICATION_FIELDS: [&str; 2] = ["validationStatus", "dnsValidationRecords"];

/// A process that has not verified yet (just started, or just took the
/// Lease) keeps the verification the status shows for this generation, so
/// that `Ready` does not flap at every restart.
fn carry_verification(
    view: &ObjectView,
    previous: Option<&Value>,
    extras: &mut Vec<Desired>,
    status: &mut Map<String, Value>,
) {
    let Some(previous) = previous.filter(|p| {
        view.generation.is_some()
            && p.get("observedGeneration").and_then(Value::as_i64) == view.generation
    }) else {
        return;
    };
    if !extras.iter().any(|d| d.type_ == ct::VERIFIED) {
        let kept = previous_conditions(Some(previous))
            .into_iter()
            .filter_map(extra_condition)
            .find(|d| d.type_ == ct::VERIFIED && d.observed_generation == view.generation);
        extras.extend(kept);
    }
    for field in VERIFICATION_FIELDS {
        if let (false, Some(v)) = (status.contains_key(field), previous.get(field)) {
            status.insert(field.to_string(), v.clone());
        }
    }
}

fn extra_condition(c: &Value) -> Option<Desired> {
    let type_ = match c.get("type")?.as_str()? {
        "Verified" => ct::VERIFIED,
        "Shadowed" => ct::SHADOWED,
        "DefaultPolicy" => ct::DEFAULT_POLICY,
        _ => return None,
    };
    let status = match c.get("status")?.as_str()? {
        "True" => st::TRUE,
        "False" => st::FALSE,
        _ => st::UNKNOWN,
    };
    Some(Desired {
        type_,
        status,
        reason: c.get("reason")?.as_str()?.to_string(),
        message: c
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        observed_generation: c.get("observedGeneration").and_then(Value::as_i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectState;

    fn view(ready: bool, reason: &str) -> ObjectView {
        ObjectView {
            generation: Some(3),
            uid: None,
            state: ObjectState {
                extra: Map::new(),
                accepted: true,
                ready,
                active: Some(ready),
                reason: reason.into(),
                message: "m".into(),
            },
            observed_status: None,
            serving_last_good: false,
        }
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::TelephonyHook, "n", "h")
    }

    #[test]
    fn transition_time_kept_until_status_flips() {
        let first = desired_status(&key(), &view(true, "Activated"), None, None, "T1");
        let again = desired_status(&key(), &view(true, "Activated"), None, Some(&first), "T2");
        assert_eq!(first, again, "nothing changed, nothing to write");
        let flipped = desired_status(&key(), &view(false, "Conflict"), None, Some(&again), "T3");
        let ready = flipped["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["lastTransitionTime"], "T3");
        assert_eq!(ready["observedGeneration"], 3);
        let accepted = flipped["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Accepted")
            .unwrap();
        assert_eq!(accepted["lastTransitionTime"], "T1");
    }

    #[test]
    fn extras_are_merged() {
        let mut extra = Map::new();
        extra.insert("metrics".into(), json!({"executions": 4}));
        extra.insert(
            "conditions".into(),
            json!([{"type": "Verified", "status": "False", "reason": "AuthFailed", "message": "535"}]),
        );
        let s = desired_status(&key(), &view(true, "Activated"), Some(&extra), None, "T");
        assert_eq!(s["metrics"]["executions"], 4);
        assert!(
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Verified" && c["reason"] == "AuthFailed")
        );
    }

    /// One state of one kind, as the index and the runtime report it.
    struct Case {
        kind: Kind,
        accepted: bool,
        active: Option<bool>,
        reason: &'static str,
        last_good: bool,
        /// The runtime's `Verified` condition: status, reason.
        verified: Option<(&'static str, &'static str)>,
        validation: Option<ValidationStatus>,
    }

    fn case(kind: Kind, reason: &'static str) -> Case {
        Case {
            kind,
            accepted: true,
            active: None,
            reason,
            last_good: false,
            verified: None,
            validation: None,
        }
    }

    fn health_of(c: &Case) -> Health {
        let view = ObjectView {
            generation: Some(3),
            uid: None,
            state: ObjectState::new(c.accepted, false, c.active, c.reason, "m"),
            observed_status: None,
            serving_last_good: c.last_good,
        };
        let verified = c.verified.map(|(status, why)| Desired {
            type_: ct::VERIFIED,
            status,
            reason: why.into(),
            message: "v".into(),
            observed_generation: None,
        });
        let found = Verification {
            verified: verified.as_ref(),
            validation: c.validation,
        };
        health(Some(c.kind), &view, found)
    }

    /// Every state of every kind: Ready (status, reason) and the abnormal
    /// condition (type, reason), as the table in docs/health.md says.
    #[test]
    fn health_of_every_state() {
        use Kind::*;
        use ValidationStatus as V;
        let hook = |active, reason| Case {
            active: Some(active),
            ..case(TelephonyHook, reason)
        };
        let invalid = |kind| Case {
            accepted: false,
            ..case(kind, "Invalid")
        };
        let provider = |verified| Case {
            verified,
            ..case(EmailProvider, "Ready")
        };
        let domain = |validation, verified| Case {
            validation,
            verified,
            ..case(EmailDomain, "Ready")
        };
        let stalled = Some("Stalled");
        let reconciling = Some("Reconciling");
        let table: Vec<(Case, &str, &str, Option<&str>, &str)> = vec![
            (hook(true, "Activated"), "True", "Ready", None, ""),
            (hook(true, "InsecureHttp"), "True", "Ready", None, ""),
            (hook(false, "Deactivated"), "True", "Standby", None, ""),
            (
                hook(false, "Conflict"),
                "False",
                "Conflict",
                stalled,
                "Conflict",
            ),
            (
                hook(false, "SecretNotFound"),
                "False",
                "SecretNotFound",
                reconciling,
                "SecretNotFound",
            ),
            (
                invalid(TelephonyHook),
                "False",
                "Invalid",
                stalled,
                "Invalid",
            ),
            (
                Case {
                    last_good: true,
                    ..invalid(TelephonyHook)
                },
                "False",
                "LastValidVersionInUse",
                stalled,
                "Invalid",
            ),
            (case(EnrollmentPolicy, "Ready"), "True", "Ready", None, ""),
            (
                case(EnrollmentPolicy, "Deactivated"),
                "True",
                "Deactivated",
                None,
                "",
            ),
            (
                case(EnrollmentPolicy, "Conflict"),
                "False",
                "Conflict",
                stalled,
                "Conflict",
            ),
            (
                invalid(EnrollmentPolicy),
                "False",
                "Invalid",
                stalled,
                "Invalid",
            ),
            (
                provider(None),
                "False",
                "Verifying",
                reconciling,
                "Verifying",
            ),
            (
                provider(Some(("Unknown", "Verifying"))),
                "False",
                "Verifying",
                reconciling,
                "Verifying",
            ),
            (
                provider(Some(("True", "Verified"))),
                "True",
                "Ready",
                None,
                "",
            ),
            (
                provider(Some(("False", "AuthFailed"))),
                "False",
                "AuthFailed",
                stalled,
                "AuthFailed",
            ),
            (
                case(EmailProvider, "Deactivated"),
                "True",
                "Deactivated",
                None,
                "",
            ),
            (
                Case {
                    verified: Some(("False", "SecretNotFound")),
                    ..case(EmailProvider, "SecretNotFound")
                },
                "False",
                "SecretNotFound",
                reconciling,
                "SecretNotFound",
            ),
            (
                case(EmailProvider, "Conflict"),
                "False",
                "Conflict",
                stalled,
                "Conflict",
            ),
            (
                invalid(EmailProvider),
                "False",
                "Invalid",
                stalled,
                "Invalid",
            ),
            (
                domain(None, None),
                "False",
                "Verifying",
                reconciling,
                "Verifying",
            ),
            (
                domain(Some(V::Polling), Some(("False", "Polling"))),
                "False",
                "Polling",
                reconciling,
                "Polling",
            ),
            (
                domain(Some(V::Polling), Some(("False", "DnsLookupFailed"))),
                "False",
                "DnsLookupFailed",
                reconciling,
                "DnsLookupFailed",
            ),
            (
                domain(Some(V::Verified), Some(("True", "Verified"))),
                "True",
                "Ready",
                None,
                "",
            ),
            (
                domain(Some(V::Error), Some(("False", "DnsRecordMismatch"))),
                "False",
                "DnsRecordMismatch",
                stalled,
                "DnsRecordMismatch",
            ),
            (
                case(EmailDomain, "Conflict"),
                "False",
                "Conflict",
                stalled,
                "Conflict",
            ),
            (invalid(EmailDomain), "False", "Invalid", stalled, "Invalid"),
        ];
        for (c, ready, ready_reason, abnormal, abnormal_reason) in table {
            let h = health_of(&c);
            let what = format!("{:?} {}", c.kind, c.reason);
            assert_eq!(
                (h.ready.status, h.ready.reason.as_str()),
                (ready, ready_reason),
                "{what}"
            );
            let got = h.abnormal.as_ref().map(|a| (a.type_, a.reason.as_str()));
            assert_eq!(got, abnormal.map(|t| (t, abnormal_reason)), "{what}");
            assert!(
                h.abnormal.is_none_or(|a| a.status == st::TRUE),
                "abnormal conditions are present only while True"
            );
        }
    }

    fn provider_view() -> (ObjectKey, ObjectView) {
        let key = ObjectKey::new(Kind::EmailProvider, "n", "corp");
        let mut v = view(true, "Ready");
        v.state.active = None;
        (key, v)
    }

    fn find<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
    }

    fn verified_extra(status: &str, generation: i64) -> Map<String, Value> {
        let mut extra = Map::new();
        extra.insert(
            "conditions".into(),
            json!([{"type": "Verified", "status": status, "reason": "Verified",
                    "message": "ok", "observedGeneration": generation}]),
        );
        extra
    }

    #[test]
    fn a_verification_of_an_earlier_generation_is_not_ready() {
        let (key, view) = provider_view();
        let stale = desired_status(&key, &view, Some(&verified_extra("True", 2)), None, "T");
        assert_eq!(find(&stale, "Ready").unwrap()["status"], "False");
        assert_eq!(find(&stale, "Reconciling").unwrap()["reason"], "Verifying");
        let verified = find(&stale, "Verified").unwrap();
        assert_eq!(
            (&verified["observedGeneration"], &verified["status"]),
            (&json!(2), &json!("True")),
            "the condition says which generation it describes"
        );
        let fresh = desired_status(&key, &view, Some(&verified_extra("True", 3)), None, "T");
        assert_eq!(find(&fresh, "Ready").unwrap()["status"], "True");
        assert!(find(&fresh, "Reconciling").is_none(), "{fresh}");
        assert!(find(&fresh, "Stalled").is_none(), "{fresh}");
    }

    #[test]
    fn a_restart_keeps_the_verification_of_the_same_generation() {
        let (key, view) = provider_view();
        let before = desired_status(&key, &view, Some(&verified_extra("True", 3)), None, "T1");
        let after = desired_status(&key, &view, None, Some(&before), "T2");
        assert_eq!(before, after, "nothing to write after a restart");
        let mut newer = view.clone();
        newer.generation = Some(4);
        let changed = desired_status(&key, &newer, None, Some(&before), "T3");
        assert_eq!(find(&changed, "Ready").unwrap()["status"], "False");
        assert!(find(&changed, "Verified").is_none(), "{changed}");
    }

    #[test]
    fn a_domain_keeps_its_validation_across_a_restart() {
        let key = ObjectKey::new(Kind::EmailDomain, "n", "acme");
        let mut view = view(true, "Ready");
        view.state.active = None;
        let mut extra = Map::new();
        extra.insert(
            "conditions".into(),
            json!([{"type": "Verified", "status": "True", "reason": "Verified", "message": "ok"}]),
        );
        extra.insert("validationStatus".into(), json!("VERIFIED"));
        let before = desired_status(&key, &view, Some(&extra), None, "T1");
        assert_eq!(find(&before, "Ready").unwrap()["status"], "True");
        let after = desired_status(&key, &view, None, Some(&before), "T2");
        assert_eq!(before, after);
    }
}
