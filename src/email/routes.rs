//! The email routes: accept (`POST /v1/orgs/{org}/emails`), look up
//! (`GET /v1/orgs/{org}/emails/{id}`) and the provider test
//! (`POST /v1/orgs/{org}/email-provider/test`).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::EmailService;
use super::dns::choose_sender;
use super::message::{self, SendRequest};
use super::queue::{Inserted, LogEntry, NewMessage, QueueError};
use super::smtp::StepError;
use super::worker::Via;
use super::worker::{self, Route, now_millis, rfc3339};
use crate::http::{ApiError, Endpoint, JsonBody, Routes};
use crate::index::OrgConfig;
use crate::resources::{Kind, ObjectKey};

/// The module's routes and their descriptions.
pub fn routes(service: Arc<EmailService>) -> Routes {
    Routes {
        router: router(service),
        operations: super::openapi::operations(),
    }
}

fn router(service: Arc<EmailService>) -> Router {
    Router::new()
        .route("/v1/orgs/{org}/emails", post(accept))
        .route("/v1/orgs/{org}/emails/{id}", get(show))
        .route("/v1/orgs/{org}/email-provider/test", post(test_email))
        .layer(Extension(service))
}

/// The module's endpoints, for `/openapi.json`.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            method: "post",
            path: "/v1/orgs/{org}/emails",
            summary: "Accept an email for delivery; 202 with its id once it is committed (503 when the org has no provider, or the store is full or cannot be reached)",
        },
        Endpoint {
            method: "get",
            path: "/v1/orgs/{org}/emails/{id}",
            summary: "An email's state (queued, sending, retrying, sent, failed), its attempts with SMTP replies, and its events",
        },
        Endpoint {
            method: "post",
            path: "/v1/orgs/{org}/email-provider/test",
            summary: "Send one test email synchronously through the org's provider and report the SMTP outcome (written to status.lastTest)",
        },
    ]
}

/// A 503 with the reason; a full store says so, and asks for a longer
/// wait (space comes back as queued mail is sent).
fn store_error(e: QueueError) -> ApiError {
    let message = format!("the email was not accepted: {e}");
    let (mut err, retry_after) = match e {
        QueueError::Full(_) => (
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_full", message),
            30,
        ),
        _ => (ApiError::store_unavailable(message), STORE_RETRY_AFTER_SECS),
    };
    err.retry_after = Some(retry_after);
    err
}

/// `Retry-After` of a 503 `store_unavailable`.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// A read that failed: 503 `store_unavailable` while the database cannot
/// be reached (the caller tries again), else 500.
fn read_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Unavailable(_) => {
            let mut err = ApiError::store_unavailable(format!("the email cannot be read now: {e}"));
            err.retry_after = Some(STORE_RETRY_AFTER_SECS);
            err
        }
        _ => ApiError::internal(e.to_string()),
    }
}

fn no_provider(org: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_email_provider",
        format!(
            "org {org} has no enabled EmailProvider and this installation has no default email provider (--smtp-host); configure one of them"
        ),
    )
}

/// The default sender, or the org provider's username when it is an address.
fn default_sender(service: &EmailService, org: Option<&OrgConfig>) -> Option<String> {
    service.default_sender.clone().or_else(|| {
        org.and_then(|o| o.email_provider.as_ref())
            .filter(|p| p.enabled && message::parse_mailbox(&p.username).is_ok())
            .map(|p| p.username.clone())
    })
}

/// A message id: `em-`, the accept time in milliseconds (12 hex digits),
/// then 80 random bits. Ids of later messages sort later, so the store's
/// indexes keyed by message id (the messages, their attempts, their log
/// entries) grow at one end instead of touching a random page per message;
/// random ids cost a disk page written per index per message.
pub fn message_id(now_millis: i64) -> String {
    let random = rand::random::<u128>() & ((1u128 << 80) - 1);
    format!("em-{:012x}{random:020x}", now_millis.max(0))
}

async fn accept(
    Extension(service): Extension<Arc<EmailService>>,
    Path(org): Path<String>,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let checked = message::check(request).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let snapshot = service.snapshots.borrow().clone();
    let config = snapshot.org(&org).map(|c| c.as_ref());
    if worker::route(config, service.default.as_ref()).is_none() {
        return Err(no_provider(&org));
    }
    let fallback = default_sender(&service, config);
    let choice = choose_sender(
        checked.brand.as_deref(),
        config,
        |d| service.domains.status(&org, d),
        fallback.as_deref(),
    )
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_sender",
            "no sender address: give the message a brand with a verified EmailDomain, or start idplane with --email-default-sender",
        )
    })?;
    let now = now_millis();
    let id = message_id(now);
    let log = choice.warning.as_ref().map(|w| LogEntry {
        org: org.clone(),
        type_: "email.sender".into(),
        outcome: "WARNING".into(),
        time: rfc3339(now),
        subject: id.clone(),
        detail: json!({"messageId": id, "brand": checked.brand, "sender": choice.sender, "message": w}),
    });
    let inserted = service
        .queue
        .insert(NewMessage {
            id,
            org: org.clone(),
            idempotency_key: checked.idempotency_key,
            sender: choice.sender.clone(),
            brand: checked.brand,
            content: checked.content,
            now,
            log,
        })
        .await
        .map_err(store_error)?;
    match inserted {
        Inserted::New(id) => {
            service.wake.notify_one();
            service.stats.accepted(&org);
            let mut body = json!({"id": id, "state": "queued", "from": choice.sender});
            if let Some(w) = choice.warning {
                body["warning"] = json!(w);
            }
            Ok((StatusCode::ACCEPTED, Json(body)))
        }
        Inserted::Existing(id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "duplicate": true})),
        )),
    }
}

async fn show(
    Extension(service): Extension<Arc<EmailService>>,
    Path((org, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let m = service
        .queue
        .get(&org, &id)
        .await
        .map_err(read_error)?
        .ok_or_else(|| {
            ApiError::not_found("email_not_found", format!("org {org} has no email {id}"))
        })?;
    let events = service
        .queue
        .events_about(&org, &id)
        .await
        .map_err(read_error)?;
    let attempts: Vec<Value> = m
        .attempts
        .iter()
        .map(|a| {
            json!({
                "number": a.number,
                "startedAt": rfc3339(a.started_at),
                "finishedAt": a.finished_at.map(rfc3339),
                "outcome": a.outcome.as_deref().unwrap_or("running"),
                "reply": a.reply,
                "provider": a.provider,
            })
        })
        .collect();
    let content = m.content.as_ref().ok();
    let mut body = json!({
        "id": m.id,
        "org": m.org,
        "state": m.state,
        "from": m.sender,
        "to": content.map(|c| &c.to),
        "cc": content.map(|c| &c.cc),
        "brand": m.brand,
        "subject": content.map(|c| &c.subject),
        "idempotencyKey": m.idempotency_key,
        "createdAt": rfc3339(m.created_at),
        "attempts": attempts,
        "lastReply": m.last_reply,
        "provider": m.provider,
        "events": events,
    });
    if let Err(reason) = &m.content {
        body["contentError"] = json!(reason);
    }
    if m.state == "retrying" || m.state == "queued" {
        body["nextAttemptAt"] = json!(rfc3339(m.next_attempt_at));
    }
    if let Some(t) = m.finished_at {
        body["finishedAt"] = json!(rfc3339(t));
    }
    Ok(Json(body))
}

/// The body of `POST /v1/orgs/{org}/email-provider/test`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    pub from: String,
    pub to: String,
}

/// The test route: the org's EmailProvider even when disabled (to try it
/// before switching it on), else the default provider.
fn test_route(service: &EmailService, org: Option<&OrgConfig>) -> Option<Route> {
    if let Some(p) = org.and_then(|o| o.email_provider.as_ref()) {
        return Some(worker::provider_route(p));
    }
    worker::route(None, service.default.as_ref())
}

/// Sends the test email; `Ok(reply)` or the failed step. Shared with the CLI.
pub async fn send_test(
    smtp: &super::smtp::SmtpClient,
    route: &Route,
    org: &str,
    from: &str,
    to: &str,
) -> Result<String, StepError> {
    if let Some(why) = &route.blocked {
        return Err(StepError {
            step: super::smtp::Step::Credentials,
            message: why.clone(),
            permanent: false,
        });
    }
    let bad = |m: String| StepError {
        step: super::smtp::Step::Send,
        message: m,
        permanent: true,
    };
    let content = message::Content {
        to: vec![to.to_string()],
        cc: Vec::new(),
        subject: "idplane test email".into(),
        text: Some(format!(
            "This is a test email from idplane for org {org}, sent through {} ({:?}) at {}.",
            route.via.label(),
            route.endpoint,
            rfc3339(now_millis())
        )),
        html: None,
    };
    let id = format!("test-{:032x}", rand::random::<u128>());
    let email = message::build(&id, from, &content).map_err(bad)?;
    smtp.send_once(&route.endpoint, &email).await
}

/// A provider's `status.lastTest`, from the test email's log entry (also
/// how it is restored at start).
pub fn last_test_status(log: &LogEntry) -> Value {
    let reply = log.detail["reply"].as_str().unwrap_or_default();
    json!({
        "time": log.time,
        "to": log.detail["to"],
        "result": format!("{}: {reply}", log.outcome),
    })
}

async fn test_email(
    Extension(service): Extension<Arc<EmailService>>,
    Path(org): Path<String>,
    JsonBody(request): JsonBody<TestRequest>,
) -> Result<Json<Value>, ApiError> {
    message::parse_mailbox(&request.from)
        .map_err(|e| ApiError::bad_request("invalid_address", format!("from: {e}")))?;
    message::parse_mailbox(&request.to)
        .map_err(|e| ApiError::bad_request("invalid_address", format!("to: {e}")))?;
    let snapshot = service.snapshots.borrow().clone();
    let config = snapshot.org(&org).map(|c| c.as_ref());
    let route = test_route(&service, config).ok_or_else(|| no_provider(&org))?;
    let result = send_test(&service.smtp, &route, &org, &request.from, &request.to).await;
    let now = now_millis();
    let (outcome, text) = match &result {
        Ok(reply) => ("SUCCESS", reply.clone()),
        Err(e) => ("FAILURE", format!("{}: {}", e.step.reason(), e.message)),
    };
    let log = LogEntry {
        org: org.clone(),
        type_: "email.test".into(),
        outcome: outcome.into(),
        time: rfc3339(now),
        subject: route.via.label(),
        detail: json!({"from": request.from, "to": request.to, "reply": text}),
    };
    if let Via::Custom(name) = &route.via {
        let key = ObjectKey::new(Kind::EmailProvider, org.clone(), name.clone());
        service
            .module_fields
            .set(&key, "lastTest", last_test_status(&log));
    }
    if let Err(e) = service.queue.log(&log).await {
        tracing::warn!(error = %e, "cannot log the test email");
    }
    match result {
        Ok(reply) => Ok(Json(json!({
            "result": "SUCCESS",
            "provider": route.via.label(),
            "reply": reply,
            "time": rfc3339(now),
        }))),
        Err(e) => {
            // No server was asked when the provider's Secret is missing or
            // the egress rule refuses its address.
            let unasked = matches!(
                e.step,
                super::smtp::Step::Credentials | super::smtp::Step::Egress
            );
            let (status, code, what) = if unasked {
                (StatusCode::CONFLICT, "provider_unusable", "was not sent")
            } else {
                (StatusCode::BAD_GATEWAY, "smtp_failed", "was not accepted")
            };
            Err(ApiError::new(
                status,
                code,
                format!("the test email {what}: {}", e.message),
            )
            .with_details(json!({
                "result": "FAILURE",
                "provider": route.via.label(),
                "step": e.step.reason(),
                "reply": e.message,
                "time": rfc3339(now),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::message_id;

    #[test]
    fn message_ids_sort_by_time_and_differ() {
        let a = message_id(1_795_000_000_000);
        let b = message_id(1_795_000_000_001);
        let c = message_id(1_795_000_000_001);
        assert_eq!(a.len(), 3 + 32);
        assert!(a.starts_with("em-01a1e"), "{a}");
        assert!(a < b && a < c, "{a} {b} {c}");
        assert_ne!(b, c);
    }
}
