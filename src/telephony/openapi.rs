//! The telephony operations of `/openapi.json`: each route of the
//! module's table ([`super::routes::endpoints`]) with every answer it gives.

use crate::http::operation::{e164, nullable, time};
use crate::http::{Endpoint, Operation};
use serde_json::json;

use super::routes;

/// The module's operations, for `/openapi.json`: each route of the
/// module's table, described with every answer it gives.
pub fn operations() -> Vec<Operation> {
    routes::endpoints()
        .iter()
        .map(|route| match route.path {
            "/v1/orgs/{org}/otp/send" => otp_send_operation(route),
            "/v1/orgs/{org}/otp/verify" => otp_verify_operation(route),
            "/v1/orgs/{org}/telephony-hooks/{name}/preview" => preview_operation(route),
            _ => Operation::from_endpoint(route, "undescribedTelephonyRoute"),
        })
        .collect()
}

const REQUEST_TYPES: [&str; 4] = [
    "enrollment",
    "verification",
    "account-unlock",
    "password-reset",
];

/// `user` of a send or preview body. The caller's strings are passed to
/// the hook as they are.
fn openapi_user(non_empty: bool) -> serde_json::Value {
    let id = if non_empty {
        json!({"type": "string", "minLength": 1})
    } else {
        json!({"type": "string"})
    };
    json!({"type": "object", "required": ["id", "login"], "additionalProperties": false, "properties": {
        "id": id.clone(), "login": id,
        "firstName": {"type": "string"}, "lastName": {"type": "string"}}})
}

fn openapi_context() -> serde_json::Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "ip": nullable(json!({"type": "string", "description": "The end user's IP address, passed to the hook"})),
        "requestId": nullable(json!({"type": "string", "description": "The caller's request id, passed to the hook"}))}})
}

/// The answer when the store cannot be reached: nothing was recorded
/// (send, verify, and preview through the shared abuse guard).
fn openapi_store(op: Operation) -> Operation {
    op.error(
        503,
        "store_unavailable (Retry-After): the store cannot be reached now; nothing was recorded (a send's passcode is not valid, an attempt is not counted). Try again, on this replica or another",
        &["store_unavailable"],
    )
    .retry_after(503, true)
}

/// A send's over-limit and refused-country answers (send and preview).
fn openapi_guard(op: Operation) -> Operation {
    let op = op.error_with(
        403,
        "country_not_allowed: the number's country calling code is not in the org's --otp-allowed-country-codes",
        &["country_not_allowed"],
        json!({"allowedCountryCodes": {"type": "array", "items": {"type": "string", "pattern": "^\\+[1-9][0-9]{0,2}$"}}}),
    )
    .error_with(
        429,
        "Over the abuse guard's limits: sends per phone number per --otp-phone-window (phone_rate_limited), per org per --otp-org-window (org_rate_limited)",
        &["phone_rate_limited", "org_rate_limited"],
        json!({"retryAfterSeconds": {"type": "integer", "minimum": 0}}),
    )
    .retry_after(429, true);
    openapi_store(op)
}

fn otp_send_operation(route: &Endpoint) -> Operation {
    let body = json!({"type": "object", "required": ["phoneNumber", "channel", "requestType", "user"],
        "additionalProperties": false,
        "properties": {
            "phoneNumber": e164(),
            "channel": {"type": "string", "enum": ["sms", "voice"]},
            "requestType": {"type": "string", "enum": REQUEST_TYPES},
            "user": openapi_user(true),
            "locale": nullable(json!({"type": "string", "description": "Passed to the hook; EN-US when absent"})),
            "context": openapi_context()}});
    let attempt = json!({"type": "object",
        "required": ["hook", "via", "reasonCode", "reason", "requests", "durationMillis"], "properties": {
            "hook": {"type": "string"},
            "via": {"type": "string", "enum": ["primary", "fallback"]},
            "reasonCode": {"type": "string", "enum": ["timeout", "connection_error", "http_status", "invalid_response",
                "missing_command", "provider_failed", "hook_error", "body_too_large", "invalid_config", "egress_refused"]},
            "reason": {"type": "string"},
            "requests": {"type": "integer", "minimum": 0, "maximum": 2},
            "durationMillis": {"type": "integer", "minimum": 0}}});
    let op = Operation::from_endpoint(route, "sendOtp")
        .description("The org's active TelephonyHook is called with Okta's telephony inline hook contract; when it does not deliver, its fallback. Only a delivered passcode is stored (and can be verified).")
        .body(body)
        .answer(200, "Delivered (or accepted for delivery, PENDING) by a hook", json!({"type": "object",
            "required": ["transactionId", "status", "provider", "providerTransactionId", "via", "hook", "expiresAt"],
            "properties": {
                "transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "The passcode's id, for verify"},
                "status": {"type": "string", "enum": ["SUCCESSFUL", "PENDING"]},
                "provider": nullable(json!({"type": "string"})),
                "providerTransactionId": nullable(json!({"type": "string"})),
                "via": {"type": "string", "enum": ["primary", "fallback"]},
                "hook": {"type": "string", "description": "The hook that delivered"},
                "expiresAt": time()}}))
        .link(200, "VerifyThePasscode", json!({
            "operationId": "verifyOtp",
            "parameters": {"path.org": "$request.path.org"},
            "requestBody": {"transactionId": "$response.body#/transactionId", "code": "000000"},
        }))
        .error(400, "phoneNumber is not E.164 (invalid_phone_number), user.id or user.login is empty (invalid_request)", &["invalid_phone_number", "invalid_request"])
        .error(409, "The org has no active TelephonyHook that is ready", &["no_active_hook"])
        .error_with(
            502,
            "No hook delivered (the active one, then its fallback); the passcode is not valid. attempts lists each hook's failure",
            &["delivery_failed"],
            json!({"transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                "attempts": {"type": "array", "minItems": 1, "maxItems": 2, "items": attempt}}),
        );
    openapi_guard(op)
}

fn otp_verify_operation(route: &Endpoint) -> Operation {
    let op = Operation::from_endpoint(route, "verifyOtp")
        .body(json!({"type": "object", "required": ["transactionId", "code"], "additionalProperties": false,
            "properties": {
                "transactionId": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                    "description": "The transactionId a send answered (the server takes 1 to 128 characters and answers 404 for one it did not issue)"},
                "code": {"type": "string", "minLength": 1, "maxLength": 32,
                    "description": "The passcode the user typed; a wrong one costs an attempt"}}}))
        .answer(200, "The verdict: verified, or why not", json!({"type": "object",
            "required": ["transactionId", "result", "attemptsRemaining"], "properties": {
                "transactionId": {"type": "string"},
                "result": {"type": "string", "enum": ["verified", "invalid", "expired", "locked"]},
                "reason": {"type": "string", "enum": ["already_used", "too_many_attempts", "wrong_code"]},
                "attemptsRemaining": {"type": "integer", "minimum": 0}}}))
        .error(400, "transactionId is not 1 to 128 characters, or code not 1 to 32", &["invalid_request"])
        .error(404, "No passcode with this transactionId in this org (never delivered, or expired more than a day ago)", &["unknown_transaction"]);
    openapi_store(op)
}

fn preview_operation(route: &Endpoint) -> Operation {
    use serde_json::Value;
    let request = json!({"type": "object",
        "description": "The whole body to send instead of the built one; when it is sent it must carry data.messageProfile.phoneNumber"});
    let sendable = json!({"type": "object", "required": ["data"], "properties": {
        "data": {"type": "object", "required": ["messageProfile"], "properties": {
            "messageProfile": {"type": "object", "required": ["phoneNumber"], "properties": {"phoneNumber": e164()}}}}}});
    let body = json!({"type": "object",
    "description": "Fields besides these are ignored. Either phoneNumber (the request is built as a send builds it) or request (sent as it is); with request, phoneNumber is not used.",
    "properties": {
        "phoneNumber": nullable(json!({"type": "string", "description": "E.164; required unless request is given"})),
        "channel": {"type": "string", "enum": ["sms", "voice"], "default": "sms"},
        "requestType": {"type": "string", "enum": REQUEST_TYPES, "default": "verification"},
        "user": openapi_user(false),
        "locale": nullable(json!({"type": "string"})),
        "context": openapi_context(),
        "request": nullable(request),
        "send": {"type": "boolean", "default": true, "description": "false: only build and show the request"}},
    "anyOf": [
        {"required": ["phoneNumber"], "properties": {"phoneNumber": e164(), "request": {"nullable": true, "enum": [Value::Null]}}},
        {"required": ["request"], "properties": {"request": sendable, "send": {"type": "boolean", "enum": [true]}}},
        {"required": ["request", "send"], "properties": {"request": {"type": "object"}, "send": {"type": "boolean", "enum": [false]}}},
    ]});
    let shown = json!({"type": "object", "required": ["httpStatus", "contentType", "body"], "properties": {
        "httpStatus": nullable(json!({"type": "integer", "minimum": 100, "maximum": 599})),
        "contentType": nullable(json!({"type": "string", "maxLength": 100})),
        "body": {"description": "The hook's answer when it is JSON, else null"},
        "length": {"type": "integer", "minimum": 0},
        "bodySummary": {"type": "string", "description": "An answer that is not JSON: status, content type and length"}}});
    let judgement = json!({"type": "object", "required": ["delivered", "status", "provider"], "properties": {
        "delivered": {"type": "boolean"},
        "status": {"type": "string", "enum": ["SUCCESSFUL", "PENDING", "FAILED"]},
        "provider": nullable(json!({"type": "string"})),
        "providerTransactionId": nullable(json!({"type": "string"})),
        "reasonCode": {"type": "string"},
        "reason": {"type": "string"}}});
    let op = Operation::from_endpoint(route, "previewTelephonyHook")
        .description("Builds the request a send would make to this hook (active or not), shows it with its secrets redacted and, unless send is false, sends it and shows the answer with idplane's judgement. A hook that does not deliver is still a 200 (judgement.delivered false). The preview's code is never stored.")
        .body(body)
        .answer(200, "The request, and when sent the answer and its judgement", json!({"type": "object",
            "required": ["org", "hook", "active", "method", "url", "headers", "request", "sent", "note"], "properties": {
                "org": {"type": "string"},
                "hook": {"type": "string"},
                "active": {"type": "boolean"},
                "method": {"type": "string", "enum": ["POST"]},
                "url": {"type": "string", "description": "The hook's URL, userinfo redacted"},
                "headers": {"type": "array", "items": {"type": "object", "required": ["name", "value"], "properties": {
                    "name": {"type": "string"}, "value": {"type": "string"}}}},
                "request": {"type": "object"},
                "sent": {"type": "boolean"},
                "note": {"type": "string"},
                "response": shown,
                "judgement": judgement,
                "attempts": {"type": "integer", "minimum": 0, "maximum": 2},
                "durationMillis": {"type": "integer", "minimum": 0},
                "summary": {"type": "string"}}}))
        .error(400, "Neither phoneNumber nor request, a phoneNumber that is not E.164 (invalid_phone_number), a request that is not an object or has no data.messageProfile.phoneNumber (invalid_request)", &["invalid_request", "invalid_phone_number"])
        .error(404, "The org has no usable TelephonyHook of this name", &["unknown_hook"]);
    openapi_guard(op)
}
