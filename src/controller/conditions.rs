//! From an object's state to the status it should carry: conditions with
//! `observedGeneration`, and `lastTransitionTime` kept while a condition's
//! status does not flip. Pure.

use serde_json::{Map, Value, json};

use crate::index::ObjectView;
use crate::resources::{Kind, ObjectKey};
use crate::resources::{condition_type as ct, reason, status as st};

/// A condition before its transition time is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

fn cond(type_: &'static str, ok: bool, reason: &str, message: &str) -> Desired {
    Desired {
        type_,
        status: if ok { st::TRUE } else { st::FALSE },
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

/// The conditions an object should carry.
pub fn desired_conditions(key: &ObjectKey, view: &ObjectView) -> Vec<Desired> {
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
    let ready_message = if view.serving_last_good {
        "the new version is invalid; the last valid version stays in use"
    } else {
        s.message.as_str()
    };
    let ready_reason = if s.ready && !view.serving_last_good {
        reason::READY.to_string()
    } else if view.serving_last_good {
        "LastValidVersionInUse".to_string()
    } else {
        s.reason.clone()
    };
    out.push(cond(ct::READY, s.ready, &ready_reason, ready_message));
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
    let previous: Vec<&Value> = previous
        .and_then(|p| p.get("conditions"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
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
            if let Some(g) = generation {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect()
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
    let mut desired = desired_conditions(key, view);
    let mut status = Map::new();
    for extra in [Some(&view.state.extra), extra].into_iter().flatten() {
        for (k, v) in extra {
            if k == "conditions" {
                // Extra conditions (Verified, Shadowed, DefaultPolicy, ...) come
                // as a list.
                for c in v.as_array().into_iter().flatten() {
                    if let Some(d) = extra_condition(c) {
                        desired.retain(|x| x.type_ != d.type_);
                        desired.push(d);
                    }
                }
            } else {
                status.insert(k.clone(), v.clone());
            }
        }
    }
    status.insert(
        "conditions".into(),
        Value::Array(settle(&desired, previous, view.generation, now)),
    );
    if let Some(g) = view.generation {
        status.insert("observedGeneration".into(), json!(g));
    }
    Value::Object(status)
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
}
