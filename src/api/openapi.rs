//! The OpenAPI 3 document of the runtime API, written by hand from one table
//! of endpoints so that `/openapi.json` and the router are checked against
//! each other by a test.

use serde_json::{Map, Value, json};

/// One endpoint: method, path, summary, request schema, answers.
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub request: Option<fn() -> Value>,
}

fn error_schema() -> Value {
    json!({"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "description": "Stable machine-readable code"},
        "message": {"type": "string", "description": "What went wrong, for a person"}}})
}

/// Every `/v1` endpoint.
pub fn endpoints() -> Vec<Endpoint> {
    let mut list = vec![
        Endpoint {
            method: "get",
            path: "/v1/orgs/{org}/config",
            summary: "The org's effective runtime configuration, secrets redacted",
            request: None,
        },
        Endpoint {
            method: "get",
            path: "/v1/orgs/{org}/status",
            summary: "Every idplane object of the org with its status",
            request: None,
        },
        Endpoint {
            method: "get",
            path: "/v1/orgs/{org}/events",
            summary: "The org's system log; query: type, outcome (e.g. FAILURE), after (cursor), limit (1-1000)",
            request: None,
        },
    ];
    list.push(Endpoint {
        method: "post",
        path: "/v1/orgs/{org}/enrollment/evaluate",
        summary: "Which authenticators the user must, may or may not enroll at this sign-in, and why",
        request: Some(evaluation_request_schema),
    });
    list.extend(extra_endpoints());
    list
}

fn evaluation_request_schema() -> Value {
    let keys = json!({"type": "string", "description": "An authenticator key, e.g. okta_email, phone_number, webauthn"});
    json!({"type": "object", "required": ["user"], "properties": {
        "user": {"type": "object", "required": ["id"], "properties": {
            "id": {"type": "string"},
            "groups": {"type": "array", "items": {"type": "string"}},
            "enrolled": {"type": "array", "items": {"oneOf": [keys, {"type": "object", "properties": {
                "key": {"type": "string"}, "methods": {"type": "array", "items": {"type": "string", "enum": ["sms", "voice"]}}}}]}},
            "federated": {"type": "boolean", "description": "Signed in through social auth or an inbound identity provider"}}},
        "firstSignIn": {"type": "boolean"},
        "recovery": {"type": "array", "items": {"type": "object", "properties": {
            "key": {"type": "string"}, "ssoEnabled": {"type": "boolean"}}}},
        "app": {"type": "object", "properties": {
            "possession": {"type": "boolean"}, "authenticators": {"type": "array", "items": {"type": "string"}}}},
        "network": {"type": "object", "properties": {"ip": {"type": "string"}}}}})
}

/// Endpoints of the runtime modules, registered here so the document stays whole.
fn extra_endpoints() -> Vec<Endpoint> {
    let mut list = crate::telephony::openapi_endpoints();
    list.extend(crate::email::openapi_endpoints());
    list
}

/// The `{...}` parameters of a path.
fn path_parameters(path: &str) -> Value {
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let description = if name == "org" { "The org (Kubernetes namespace)" } else { "Object name" };
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
        })
        .collect();
    Value::Array(params)
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for e in endpoints() {
        let mut op = json!({
            "summary": e.summary,
            "security": [{"bearer": []}],
            "parameters": path_parameters(e.path),
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"description": "Invalid request", "content": {"application/json": {"schema": error_schema()}}},
                "401": {"description": "No or invalid bearer token", "content": {"application/json": {"schema": error_schema()}}},
                "403": {"description": "The token may not call this org", "content": {"application/json": {"schema": error_schema()}}}
            }
        });
        if let Some(schema) = e.request {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "idplane runtime API", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}
