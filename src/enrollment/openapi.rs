//! The enrollment operation of `/openapi.json`: the evaluation request and
//! answer schemas, with the authenticator keys the engine knows.

use serde_json::{Value, json};

use crate::http::Operation;
use crate::http::operation::nullable;

/// The module's operations, for `/openapi.json`.
pub fn operations() -> Vec<Operation> {
    vec![evaluate_operation()]
}

/// `POST /v1/orgs/{org}/enrollment/evaluate`, with every answer it gives.
fn evaluate_operation() -> Operation {
    Operation::post(
        "/v1/orgs/{org}/enrollment/evaluate",
        "evaluateEnrollment",
        "Which authenticators the user must, may or may not enroll at this sign-in, and why",
    )
    .description("The org is checked before the body: an org idplane knows no object of is 404 org_not_found whatever the body. Every object of the body refuses fields it does not define.")
    .body(evaluation_request_schema())
    .answer(200, "The evaluation", evaluation_schema())
    .error(
        400,
        "a field's value is refused (an unknown authenticator key, methods for another key than phone_number, okta_password as a recovery authenticator, an empty user.id, an ip that is not an address); the message names the field",
        &["invalid_request"],
    )
    .error(404, "idplane knows no object in this org", &["org_not_found"])
    .error(
        409,
        "No active EnrollmentPolicy lists any of the user's groups and the org has no default policy (spec.default: true): refused rather than answered with the password alone",
        &["no_default_policy"],
    )
}

fn evaluation_request_schema() -> Value {
    let others: Vec<&str> = authenticator_keys()
        .filter(|a| *a != "phone_number")
        .collect();
    let methods = json!({"type": "array", "items": {"type": "string", "enum": ["sms", "voice"]}});
    let enrolled = json!({"oneOf": [
        authenticator(),
        {"type": "object", "required": ["key"], "additionalProperties": false, "properties": {
            "key": {"type": "string", "enum": ["phone_number"]}, "methods": methods}},
        {"type": "object", "required": ["key"], "additionalProperties": false, "properties": {
            "key": {"type": "string", "enum": others},
            "methods": {"type": "array", "maxItems": 0, "description": "Methods are for phone_number only"}}},
    ]});
    let recovery_keys: Vec<&str> = authenticator_keys()
        .filter(|a| *a != "okta_password")
        .collect();
    json!({"type": "object", "required": ["user"], "additionalProperties": false, "properties": {
        "user": {"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
            "id": {"type": "string", "minLength": 1, "description": "Matched against rules' people.users.exclude"},
            "groups": {"type": "array", "items": {"type": "string"}},
            "enrolled": {"type": "array", "items": enrolled,
                "description": "Enrolled authenticators, the password included: a key, or a key with the phone's methods"},
            "federated": {"type": "boolean", "description": "Signed in through social auth or an inbound identity provider"}}},
        "firstSignIn": {"type": "boolean"},
        "recovery": {"type": "array", "items": {"type": "object", "required": ["key"], "additionalProperties": false, "properties": {
            "key": {"type": "string", "enum": recovery_keys}, "ssoEnabled": {"type": "boolean"}}}},
        "app": nullable(json!({"type": "object", "additionalProperties": false, "properties": {
            "possession": {"type": "boolean"}, "authenticators": {"type": "array", "items": authenticator()}}})),
        "network": nullable(json!({"type": "object", "required": ["ip"], "additionalProperties": false, "properties": {
            "ip": {"type": "string", "oneOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                "description": "The client's IPv4 or IPv6 address, without a port"}}})),
    }})
}

fn evaluation_schema() -> Value {
    let text = json!({"type": "string"});
    json!({"type": "object", "required": [
        "policy", "priority", "matchedGroup", "policyReason", "rule", "ruleEnroll", "ruleReason",
        "prompt", "required", "optional", "notAllowed", "missing", "enrollNow", "autoEnrolled",
        "phoneMethods", "appRequirement", "reasons", "notes"],
    "properties": {
        "policy": nullable(text.clone()),
        "priority": nullable(json!({"type": "integer"})),
        "matchedGroup": nullable(text.clone()),
        "policyReason": text,
        "rule": nullable(json!({"type": "string"})),
        "ruleEnroll": nullable(json!({"type": "string", "enum": ["LOGIN", "CHALLENGE", "NEVER"]})),
        "ruleReason": {"type": "string"},
        "prompt": {"type": "boolean"},
        "required": authenticators(),
        "optional": authenticators(),
        "notAllowed": authenticators(),
        "missing": authenticators(),
        "enrollNow": authenticators(),
        "autoEnrolled": authenticators(),
        "phoneMethods": {"type": "array", "items": {"type": "string", "enum": ["sms", "voice"]}},
        "appRequirement": nullable(json!({"type": "object", "required": ["satisfied", "satisfiedBy", "enrollOneOf", "message"], "properties": {
            "satisfied": {"type": "boolean"},
            "satisfiedBy": nullable(authenticator()),
            "enrollOneOf": authenticators(),
            "message": {"type": "string"}}})),
        "reasons": {"type": "array", "items": {"type": "object", "required": ["authenticator", "decision", "rule", "message"], "properties": {
            "authenticator": authenticator(),
            "decision": {"type": "string", "enum": ["REQUIRED", "OPTIONAL", "NOT_ALLOWED"]},
            "rule": {"type": "string", "enum": ["rule-1-policy", "rule-2-password", "rule-3-email", "rule-4-phone", "rule-5-recovery", "rule-6-first-sign-in", "rule-7-app"]},
            "message": {"type": "string"},
            "notDisplayed": {"type": "boolean", "description": "A recovery authenticator the policy does not display (present only when true)"}}}},
        "notes": {"type": "array", "items": {"type": "string"}},
    }})
}

/// Authenticator keys, as the enrollment engine names them.
fn authenticator_keys() -> impl Iterator<Item = &'static str> {
    super::Authenticator::ALL
        .into_iter()
        .map(super::Authenticator::as_str)
}

fn authenticator() -> Value {
    json!({"type": "string", "enum": authenticator_keys().collect::<Vec<_>>()})
}

fn authenticators() -> Value {
    json!({"type": "array", "items": authenticator(), "uniqueItems": true})
}
