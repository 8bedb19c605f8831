//! The OpenAPI 3 document of the runtime API, written by hand from one table
//! of operations so that `/openapi.json` and the router are checked against
//! each other by a test, and fuzzed (schemathesis, `tests/openapi.rs`)
//! against the running binary.
//!
//! Each operation lists every status it answers with, each error status with
//! the exact `code`s it carries, and request schemas as strict as the server
//! (a body the schema refuses is refused by the server, and the other way
//! round). The answers every `/v1/orgs/{org}/…` call can get whatever the
//! route (authentication, the first sync, the HTTP server's own refusals)
//! are added to each operation by [`document`].

use serde_json::{Map, Value, json};

use crate::http::Operation;
use crate::http::operation::{event_schema, nullable, time};

/// The API's own `/v1` operations (the modules describe theirs).
pub fn operations() -> Vec<Operation> {
    vec![config_operation(), status_operation(), events_operation()]
}

fn config_operation() -> Operation {
    let object = json!({"type": "object", "additionalProperties": {"type": "object"}});
    Operation::get(
        "/v1/orgs/{org}/config",
        "getOrgConfig",
        "The org's effective runtime configuration, secrets redacted",
    )
    .answer(
        200,
        "The configuration the runtime uses (empty for an org idplane knows nothing of)",
        json!({"type": "object", "required": ["org", "snapshotVersion", "config"], "properties": {
            "org": {"type": "string"},
            "snapshotVersion": {"type": "integer", "minimum": 0, "description": "Grows with every change of the configuration"},
            "config": {"type": "object", "properties": {
                "activeHook": nullable(json!({"type": "string"})),
                "hooks": object.clone(),
                "policies": {"type": "array", "items": {"type": "object"}},
                "emailProvider": nullable(json!({"type": "object"})),
                "emailDomains": object,
            }},
        }}),
    )
}

fn status_operation() -> Operation {
    Operation::get(
        "/v1/orgs/{org}/status",
        "getOrgStatus",
        "Every idplane object of the org with its status",
    )
    .answer(
        200,
        "The org's objects (none for an org idplane knows nothing of)",
        json!({"type": "object", "required": ["org", "objects"], "properties": {
            "org": {"type": "string"},
            "objects": {"type": "array", "items": {"type": "object", "required": ["kind", "name", "generation", "status"], "properties": {
                "kind": {"type": "string", "enum": crate::resources::Kind::ALL.map(crate::resources::Kind::as_str)},
                "name": {"type": "string"},
                "generation": nullable(json!({"type": "integer"})),
                "status": {"type": "object", "required": ["conditions"], "properties": {
                    "conditions": {"type": "array", "items": {"type": "object", "required": ["type", "status"], "properties": {
                        "type": {"type": "string"},
                        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "lastTransitionTime": time(),
                    }}},
                    "observedGeneration": {"type": "integer"},
                }},
            }}},
        }}),
    )
}

fn events_operation() -> Operation {
    Operation::get(
        "/v1/orgs/{org}/events",
        "listOrgEvents",
        "The org's system log, oldest first, with cursor pagination",
    )
    .description("Filter by type and outcome, e.g. `type=email.delivery&outcome=FAILURE` for the org's failed mail. A page holds `limit` events; when it is full, `nextCursor` is the `after` of the next page.")
    .query("type", "Only events of this type, e.g. telephony.send or email.delivery", json!({"type": "string"}))
    .query(
        "outcome",
        "Only events with this outcome, in capitals: SUCCESS, FAILURE, WARNING...",
        json!({"type": "string", "pattern": "^[A-Z_]{1,32}$"}),
    )
    .query(
        "after",
        "The cursor: a nextCursor value (the events after it); none or empty for the first page",
        json!({"type": "string", "pattern": "^([+-]?0*[0-9]{1,18})?$"}),
    )
    .query(
        "limit",
        "Events per page (default 100)",
        json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
    )
    .answer(
        200,
        "A page of events",
        json!({"type": "object", "required": ["events", "nextCursor"], "properties": {
            "events": {"type": "array", "maxItems": 1000, "items": event_schema()},
            "nextCursor": nullable(json!({"type": "string", "pattern": "^-?[0-9]+$",
                "description": "The after of the next page; null on the last page"})),
        }}),
    )
    .error(
        400,
        "limit is not 1 to 1000 (invalid_limit), after is not a cursor (invalid_cursor), outcome is not in capitals (invalid_outcome)",
        &["invalid_limit", "invalid_cursor", "invalid_outcome"],
    )
}

/// The OpenAPI document of `operations`: the API's own and the modules'.
pub fn document(operations: Vec<Operation>) -> Value {
    let mut paths = Map::new();
    for op in operations {
        let op = if op.path.starts_with("/v1/orgs/{org}/") {
            op.with_common_answers()
        } else {
            op
        };
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = op.to_json();
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "idplane runtime API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Errors are JSON: {\"code\": string, \"message\": string, ...fields of some codes}. Any method a path does not list is answered 405 method_not_allowed (with Allow), any path not here 404 not_found.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}
