//! Which status transitions deserve an Event (`events.k8s.io/v1`; in run
//! mode a line of the org's system log), and which are noise. Pure.
//!
//! Every Event is one more write to the apiserver and one more object in
//! etcd: one per created object would double the writes of a large apply.
//! So an Event says only what a person should hear about:
//! - `Warning` when an object's problem appears or changes: it is invalid
//!   (`Invalid`), it lost a one-per-org rule (`Conflict`), or a Secret it
//!   references is missing (`SecretNotFound`);
//! - `Normal` when a TelephonyHook's `Active` condition flips: `Activated`
//!   (also a standby hook taking over when the active one goes) or
//!   `Deactivated`: which hook sends the org's passcodes changed.
//!
//! Everything else is noise: the first `Ready` of a valid object, a
//! recovery, metrics, test results, summaries.
//!
//! The decision compares the status the object showed (run mode: the one
//! stored) with the one about to be written, not what this process saw
//! before: a restart or a new Lease holder repeats no Event for what the
//! objects already show.

use serde_json::Value;

use crate::resources::{condition_type as ct, reason, status as st};

/// The type of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event to publish for a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub severity: Severity,
    /// CamelCase, as the condition's reason.
    pub reason: String,
    /// The condition's message (never a secret value: conditions hold none).
    pub message: String,
}

/// Reasons that ask the user to act.
const PROBLEMS: [&str; 3] = [reason::INVALID, reason::CONFLICT, reason::SECRET_NOT_FOUND];

/// A condition of a status by type.
fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn text<'a>(condition: &'a Value, field: &str) -> &'a str {
    condition.get(field).and_then(Value::as_str).unwrap_or("")
}

/// The problem a status shows, as (reason, message): the first of
/// `Accepted`, `Active` and `Ready` that is False for one of [`PROBLEMS`].
fn problem(status: &Value) -> Option<(&str, &str)> {
    [ct::ACCEPTED, ct::ACTIVE, ct::READY]
        .into_iter()
        .filter_map(|type_| condition(status, type_))
        .find(|c| text(c, "status") == st::FALSE && PROBLEMS.contains(&text(c, "reason")))
        .map(|c| (text(c, "reason"), text(c, "message")))
}

/// A hook's `Active` condition: whether it is True, and its message.
fn active(status: &Value) -> Option<(bool, &str)> {
    let c = condition(status, ct::ACTIVE)?;
    Some((text(c, "status") == st::TRUE, text(c, "message")))
}

/// The Event, if any, for an object whose status goes from `before` (what
/// it showed; `None` for a new object) to `after`.
pub fn notice(before: Option<&Value>, after: &Value) -> Option<Notice> {
    let was = before.and_then(problem);
    let now = problem(after);
    if let Some((reason, message)) = now
        && was != now
    {
        return Some(Notice {
            severity: Severity::Warning,
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }
    let was_active = before.and_then(active).is_some_and(|(on, _)| on);
    match active(after) {
        Some((true, message)) if !was_active => Some(Notice {
            severity: Severity::Normal,
            reason: reason::ACTIVATED.into(),
            message: message.to_string(),
        }),
        // A hook that stopped being active for a problem got its Warning
        // above; one switched off by its spec (`active: false`) gets this.
        Some((false, message)) if was_active && now.is_none() => Some(Notice {
            severity: Severity::Normal,
            reason: reason::DEACTIVATED.into(),
            message: message.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A status with these conditions, each (type, status, reason, message).
    fn status(conditions: &[(&str, &str, &str, &str)]) -> Value {
        let conditions: Vec<Value> = conditions
            .iter()
            .map(|(t, s, r, m)| {
                json!({"type": t, "status": s, "reason": r, "message": m,
                       "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1})
            })
            .collect();
        json!({"observedGeneration": 1, "conditions": conditions})
    }

    const VALID: (&str, &str, &str, &str) = ("Accepted", "True", "Valid", "ok");

    fn ready() -> Value {
        status(&[VALID, ("Ready", "True", "Ready", "in use")])
    }

    fn hook_active() -> Value {
        status(&[
            VALID,
            ("Active", "True", "Activated", "in service for the org"),
            ("Ready", "True", "Ready", "in service for the org"),
        ])
    }

    fn hook_standby() -> Value {
        status(&[
            VALID,
            ("Active", "False", "Deactivated", "active: false"),
            ("Ready", "True", "Ready", "active: false"),
        ])
    }

    fn hook_conflict(winner: &str) -> Value {
        let message = format!("the org's active hook is {winner}");
        status(&[
            VALID,
            ("Active", "False", "Conflict", &message),
            ("Ready", "False", "Conflict", &message),
        ])
    }

    fn invalid(message: &str) -> Value {
        status(&[
            ("Accepted", "False", "Invalid", message),
            ("Ready", "False", "Invalid", message),
        ])
    }

    fn secret_missing() -> Value {
        status(&[
            VALID,
            (
                "Ready",
                "False",
                "SecretNotFound",
                "Secret sms has no key token",
            ),
        ])
    }

    fn provider_conflict() -> Value {
        status(&[
            VALID,
            ("Ready", "False", "Conflict", "the org's provider is first"),
        ])
    }

    fn with_metrics(mut s: Value) -> Value {
        s["metrics"] = json!({"executions": 4});
        s
    }

    fn warning(reason: &str, message: &str) -> Option<Notice> {
        Some(Notice {
            severity: Severity::Warning,
            reason: reason.into(),
            message: message.into(),
        })
    }

    fn normal(reason: &str, message: &str) -> Option<Notice> {
        Some(Notice {
            severity: Severity::Normal,
            reason: reason.into(),
            message: message.into(),
        })
    }

    #[test]
    fn which_transitions_deserve_an_event() {
        let cases: Vec<(&str, Option<Value>, Value, Option<Notice>)> = vec![
            // Noise.
            ("a new valid object", None, ready(), None),
            ("unchanged", Some(ready()), ready(), None),
            (
                "a metrics update",
                Some(ready()),
                with_metrics(ready()),
                None,
            ),
            ("a new standby hook", None, hook_standby(), None),
            (
                "recovery from a missing Secret",
                Some(secret_missing()),
                ready(),
                None,
            ),
            (
                "recovery from invalid",
                Some(invalid("spec.port: at most 65535")),
                ready(),
                None,
            ),
            (
                "the same problem again",
                Some(provider_conflict()),
                with_metrics(provider_conflict()),
                None,
            ),
            // Warnings.
            (
                "a new invalid object",
                None,
                invalid("spec.port: at most 65535"),
                warning("Invalid", "spec.port: at most 65535"),
            ),
            (
                "an object turning invalid",
                Some(ready()),
                invalid("spec.fallback: no hook b"),
                warning("Invalid", "spec.fallback: no hook b"),
            ),
            (
                "another problem of an invalid object",
                Some(invalid("spec.fallback: no hook b")),
                invalid("spec.fallback: no hook c"),
                warning("Invalid", "spec.fallback: no hook c"),
            ),
            (
                "a Secret gone",
                Some(ready()),
                secret_missing(),
                warning("SecretNotFound", "Secret sms has no key token"),
            ),
            (
                "a second provider",
                None,
                provider_conflict(),
                warning("Conflict", "the org's provider is first"),
            ),
            (
                "a hook losing to an older one",
                Some(hook_active()),
                hook_conflict("alpha"),
                warning("Conflict", "the org's active hook is alpha"),
            ),
            (
                "a conflict with another winner",
                Some(hook_conflict("alpha")),
                hook_conflict("gamma"),
                warning("Conflict", "the org's active hook is gamma"),
            ),
            // Activation changes of hooks.
            (
                "a new active hook",
                None,
                hook_active(),
                normal("Activated", "in service for the org"),
            ),
            (
                "a hook switched on",
                Some(hook_standby()),
                hook_active(),
                normal("Activated", "in service for the org"),
            ),
            (
                "a hook taking over when the active one goes",
                Some(hook_conflict("alpha")),
                hook_active(),
                normal("Activated", "in service for the org"),
            ),
            (
                "a hook switched off",
                Some(hook_active()),
                hook_standby(),
                normal("Deactivated", "active: false"),
            ),
            (
                "an active hook's metrics",
                Some(hook_active()),
                with_metrics(hook_active()),
                None,
            ),
        ];
        for (what, before, after, want) in cases {
            assert_eq!(notice(before.as_ref(), &after), want, "{what}");
        }
    }
}
