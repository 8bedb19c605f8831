//! The email operations of `/openapi.json`: each route of the module's
//! table ([`super::routes::endpoints`]) with every answer it gives.

use crate::http::operation::{address, event_schema, not_blank, nullable, time};
use crate::http::{Endpoint, Operation};

use super::{message, routes};

/// The module's operations, for `/openapi.json`: each route of the
/// module's table, described with every answer it gives.
pub fn operations() -> Vec<Operation> {
    routes::endpoints()
        .iter()
        .map(|route| match route.path {
            "/v1/orgs/{org}/emails" => openapi_accept(route),
            "/v1/orgs/{org}/emails/{id}" => openapi_show(route),
            "/v1/orgs/{org}/email-provider/test" => openapi_test(route),
            _ => Operation::from_endpoint(route, "undescribedEmailRoute"),
        })
        .collect()
}

/// `to` or `cc`: one address or a list.
fn openapi_addresses(min_items: usize) -> serde_json::Value {
    serde_json::json!({"oneOf": [
        address(),
        {"type": "array", "items": address(), "minItems": min_items, "maxItems": message::MAX_RECIPIENTS},
    ]})
}

/// At most `MAX_RECIPIENTS` in `to` and `cc` together (a single address
/// counts one): exactly the union of `to` at most j and `cc` at most
/// MAX - j, over j (`to` names one at least).
fn openapi_recipient_limit() -> Vec<serde_json::Value> {
    use serde_json::json;
    let max = message::MAX_RECIPIENTS;
    let mut branches: Vec<serde_json::Value> = (1..max)
        .map(|j| json!({"properties": {"to": {"maxItems": j}, "cc": {"maxItems": max - j}}}))
        .collect();
    branches.push(json!({"properties": {"to": {"maxItems": max},
        "cc": {"type": "array", "maxItems": 0, "nullable": true}}}));
    branches
}

fn openapi_accept(route: &Endpoint) -> Operation {
    use serde_json::json;
    let content = |name: &str| json!({"required": [name], "properties": {name: {"type": "string", "minLength": 1}}});
    let body = json!({
        "type": "object", "required": ["to", "subject"], "additionalProperties": false,
        "properties": {
            "to": openapi_addresses(1),
            "cc": nullable(openapi_addresses(0)),
            "brand": nullable(json!({"type": "string", "maxLength": 253,
                "description": "Sends from the brand's verified EmailDomain (else the default sender, with a warning)"})),
            "subject": {"allOf": [not_blank(), {"type": "string", "maxLength": message::MAX_SUBJECT_CHARS,
                "pattern": "^[^\\r\\n]*$", "description": "Required, one line"}]},
            "text": nullable(json!({"type": "string"})),
            "html": nullable(json!({"type": "string"})),
            "idempotencyKey": nullable(json!({"type": "string", "minLength": 1, "maxLength": message::MAX_KEY_BYTES,
                "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                "description": "1 to 255 bytes, no control characters. The same key within 24 hours returns the same id and sends once"})),
        },
        "allOf": [{"anyOf": [content("text"), content("html")]}, {"anyOf": openapi_recipient_limit()}],
        "description": format!(
            "At most {} recipients in to and cc together; text and html (at least one of them not empty) at most {} bytes together",
            message::MAX_RECIPIENTS, message::MAX_CONTENT_BYTES),
    });
    Operation::from_endpoint(route, "acceptEmail")
        .description("The email is committed to the durable queue before the answer; delivery is asynchronous, with retries (GET the id for its state).")
        .body(body)
        .answer(202, "Committed to the queue (or a duplicate of an idempotencyKey seen within 24 hours: its id, duplicate true)", json!({
            "type": "object", "required": ["id"], "properties": {
                "id": {"type": "string", "pattern": "^em-[0-9a-f]{32}$"},
                "state": {"type": "string", "enum": ["queued"]},
                "from": {"type": "string", "description": "The sender chosen"},
                "warning": {"type": "string", "description": "Why the brand's domain was not used"},
                "duplicate": {"type": "boolean", "enum": [true]}}}))
        .link(202, "GetTheEmail", json!({
            "operationId": "getEmail",
            "parameters": {"path.org": "$request.path.org", "path.id": "$response.body#/id"},
        }))
        .error(400, "A field's value is refused; the code names which", &[
            "invalid_address", "missing_recipient", "too_many_recipients", "invalid_subject",
            "missing_content", "content_too_large", "invalid_brand", "invalid_idempotency_key",
        ])
        .error(503, "no_email_provider: the org has no enabled EmailProvider and idplane no default provider (--smtp-host); no_sender: no sender address; store_full (Retry-After: 30) or store_unavailable (Retry-After: 5): the email was not accepted", &[
            "no_email_provider", "no_sender", "store_full", "store_unavailable",
        ])
}

fn openapi_show(route: &Endpoint) -> Operation {
    use serde_json::json;
    let text = json!({"type": "string"});
    let attempt = json!({"type": "object", "required": ["number", "startedAt", "finishedAt", "outcome", "reply", "provider"], "properties": {
        "number": {"type": "integer", "minimum": 1},
        "startedAt": time(),
        "finishedAt": nullable(time()),
        "outcome": {"type": "string", "description": "running, or how the attempt ended"},
        "reply": nullable(text.clone()),
        "provider": nullable(text.clone())}});
    let addresses = nullable(json!({"type": "array", "items": {"type": "string"}}));
    Operation::from_endpoint(route, "getEmail")
        .path_param("id", json!({"type": "string", "minLength": 1}))
        .answer(200, "The email: its state, attempts with the SMTP replies, and events", json!({
            "type": "object",
            "required": ["id", "org", "state", "from", "to", "cc", "brand", "subject", "idempotencyKey",
                "createdAt", "attempts", "lastReply", "provider", "events"],
            "properties": {
                "id": text.clone(),
                "org": text.clone(),
                "state": {"type": "string", "enum": ["queued", "sending", "retrying", "sent", "failed"]},
                "from": text.clone(),
                "to": addresses.clone(),
                "cc": addresses,
                "brand": nullable(text.clone()),
                "subject": nullable(text.clone()),
                "idempotencyKey": nullable(text.clone()),
                "createdAt": time(),
                "attempts": {"type": "array", "items": attempt},
                "lastReply": nullable(text.clone()),
                "provider": nullable(text.clone()),
                "events": {"type": "array", "items": event_schema()},
                "contentError": {"type": "string", "description": "The stored content could not be read"},
                "nextAttemptAt": time(),
                "finishedAt": time()}}))
        .error(404, "The org has no email with this id", &["email_not_found"])
        .error(503, "store_unavailable (Retry-After: 5): the database cannot be reached now", &["store_unavailable"])
}

fn openapi_test(route: &Endpoint) -> Operation {
    use serde_json::json;
    let outcome = json!({
        "result": {"type": "string", "enum": ["FAILURE"]},
        "provider": {"type": "string"},
        "step": {"type": "string", "description": "Where it failed: connect, tls, auth, send..."},
        "reply": {"type": "string"},
        "time": time()});
    Operation::from_endpoint(route, "testEmailProvider")
        .description("Sends one test email synchronously through the org's EmailProvider (even a disabled one), else the default provider, and reports the SMTP outcome; written to the provider's status.lastTest.")
        .body(json!({"type": "object", "required": ["from", "to"], "additionalProperties": false,
            "properties": {"from": address(), "to": address()}}))
        .answer(200, "The server accepted the test email", json!({"type": "object",
            "required": ["result", "provider", "reply", "time"], "properties": {
                "result": {"type": "string", "enum": ["SUCCESS"]},
                "provider": {"type": "string"},
                "reply": {"type": "string", "description": "The SMTP server's reply"},
                "time": time()}}))
        .error(400, "from or to is not an email address", &["invalid_address"])
        .error_with(409, "The provider cannot be used (its Secret is missing): nothing was sent", &["provider_unusable"], outcome.clone())
        .error_with(502, "The SMTP server refused the test email or could not be reached", &["smtp_failed"], outcome)
        .error(503, "The org has no EmailProvider and idplane no default provider (--smtp-host)", &["no_email_provider"])
}
