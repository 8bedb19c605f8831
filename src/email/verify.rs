//! Provider verification: whenever an org's EmailProvider spec or its
//! Secret changes, connect, negotiate TLS, authenticate and quit, and set
//! the `Verified` condition (the server's reply on failure, never the
//! password). Also drops pooled connections of endpoints no longer in use.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::watch;

use super::queue::{LogEntry, Queue};
use super::smtp::{Endpoint, SmtpClient, Step, StepError};
use super::status_metrics::DeliveryStats;
use super::worker::{DefaultProvider, now_millis, provider_route, rfc3339};
use crate::controller::module_fields::ModuleFields;
use crate::index::Snapshot;
use crate::resources::{Kind, ObjectKey};

/// What a verification is about: the endpoint (credentials included), the
/// Secret's version and the object's generation. Any change re-verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Subject {
    endpoint: Endpoint,
    /// The Secret's version, or why the password cannot be read (then the
    /// provider is not contacted, and `Verified` says why).
    secret: Result<String, String>,
    generation: Option<i64>,
}

/// The `Verified` condition as a status extra, with the generation it was
/// found for when known: the status then tells a verification of an
/// earlier generation from one of the current spec.
pub fn verified_condition(
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> serde_json::Value {
    let mut condition = json!({
        "type": "Verified",
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
    });
    if let Some(g) = generation {
        condition["observedGeneration"] = json!(g);
    }
    json!([condition])
}

/// Watches snapshots until the channel closes.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    smtp: Arc<SmtpClient>,
    default: Option<DefaultProvider>,
    module_fields: Arc<ModuleFields>,
    queue: Queue,
    stats: Arc<DeliveryStats>,
) {
    let mut seen: HashMap<ObjectKey, Subject> = HashMap::new();
    let current: Arc<Mutex<HashMap<ObjectKey, u64>>> = Arc::default();
    let mut round: u64 = 0;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let mut live: HashSet<Endpoint> = default.iter().map(|d| d.endpoint.clone()).collect();
        let mut present = HashSet::new();
        for (org, config) in &snapshot.orgs {
            let Some(p) = &config.email_provider else {
                continue;
            };
            let key = ObjectKey::new(Kind::EmailProvider, org.clone(), p.name.clone());
            let route = provider_route(p);
            let subject = Subject {
                endpoint: route.endpoint,
                secret: match route.blocked {
                    Some(why) => Err(why),
                    None => Ok(p
                        .password
                        .as_ref()
                        .map_or("", |v| v.version().unwrap_or_default())
                        .to_string()),
                },
                generation: snapshot.objects.get(&key).and_then(|v| v.generation),
            };
            live.insert(subject.endpoint.clone());
            present.insert(key.clone());
            if seen.get(&key) == Some(&subject) {
                continue;
            }
            seen.insert(key.clone(), subject.clone());
            stats.touch(org);
            round += 1;
            current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), round);
            let (smtp, module_fields, queue, current) = (
                smtp.clone(),
                module_fields.clone(),
                queue.clone(),
                current.clone(),
            );
            let this_round = round;
            tokio::spawn(async move {
                let result = match &subject.secret {
                    Err(why) => Err(StepError {
                        step: Step::Credentials,
                        message: why.clone(),
                        permanent: false,
                    }),
                    Ok(_) => smtp.verify(&subject.endpoint).await,
                };
                let still_current = || {
                    current.lock().unwrap_or_else(|e| e.into_inner()).get(&key) == Some(&this_round)
                };
                if !still_current() {
                    return;
                }
                let (ok, reason, message) = match &result {
                    Ok(summary) => (true, "Verified", summary.clone()),
                    Err(e) => (false, e.step.reason(), e.message.clone()),
                };
                let log = LogEntry {
                    org: key.namespace.clone(),
                    type_: "email.verify".into(),
                    outcome: if ok { "SUCCESS" } else { "FAILURE" }.into(),
                    time: rfc3339(now_millis()),
                    subject: format!("EmailProvider/{}", key.name),
                    detail: json!({"reason": reason, "message": message}),
                };
                // The event first: whoever sees the condition finds it. A
                // newer round may have begun meanwhile: it decides then.
                if let Err(e) = queue.log(&log).await {
                    tracing::warn!(error = %e, "cannot log the verification");
                }
                if still_current() {
                    let condition = verified_condition(ok, reason, &message, subject.generation);
                    module_fields.set(&key, "conditions", condition);
                }
            });
        }
        seen.retain(|k, _| present.contains(k));
        current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| present.contains(k));
        smtp.retain(&live);
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
