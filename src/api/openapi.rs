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

/// One route of a module's own table: method, path, summary. The
/// modules keep naming their routes with it; the document
/// describes each of them with an [`Operation`].
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
}

/// One answer of an operation.
struct Answer {
    status: u16,
    description: String,
    /// Error codes, for an error answer (its body is then the error schema).
    codes: Vec<&'static str>,
    /// The body's schema; for errors, extra properties beside code and message.
    schema: Value,
    /// `Some(required)`: the answer carries `Retry-After`.
    retry_after: Option<bool>,
    links: Map<String, Value>,
}

/// One operation of the document: what it takes and every answer it gives.
pub struct Operation {
    pub id: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub summary: String,
    description: Option<&'static str>,
    path_schemas: Map<String, Value>,
    query: Vec<Value>,
    request: Option<Value>,
    answers: Vec<Answer>,
}

impl Operation {
    pub fn new(method: &'static str, path: &'static str, id: &'static str, summary: &str) -> Self {
        Self {
            id,
            method,
            path,
            summary: summary.to_string(),
            description: None,
            path_schemas: Map::new(),
            query: Vec::new(),
            request: None,
            answers: Vec::new(),
        }
    }

    pub fn get(path: &'static str, id: &'static str, summary: &str) -> Self {
        Self::new("get", path, id, summary)
    }

    pub fn post(path: &'static str, id: &'static str, summary: &str) -> Self {
        Self::new("post", path, id, summary)
    }

    /// An operation for a route of a module's table (its method, path and
    /// summary); the module's `openapi_endpoints` describes the rest.
    pub fn from_endpoint(e: &Endpoint, id: &'static str) -> Self {
        Self::new(e.method, e.path, id, e.summary)
    }

    pub fn description(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    /// The schema of a `{name}` of the path (a string of one character or
    /// more unless given).
    pub fn path_param(mut self, name: &str, schema: Value) -> Self {
        self.path_schemas.insert(name.to_string(), schema);
        self
    }

    /// An optional query parameter.
    pub fn query(mut self, name: &str, description: &str, schema: Value) -> Self {
        self.query.push(json!({
            "name": name, "in": "query", "required": false,
            "description": description, "schema": schema,
        }));
        self
    }

    /// The JSON body, required.
    pub fn body(mut self, schema: Value) -> Self {
        self.request = Some(schema);
        self
    }

    /// A successful answer with its body.
    pub fn answer(mut self, status: u16, description: &str, schema: Value) -> Self {
        self.answers.push(Answer {
            status,
            description: description.to_string(),
            codes: Vec::new(),
            schema,
            retry_after: None,
            links: Map::new(),
        });
        self
    }

    /// An error answer with the codes it carries for this operation.
    pub fn error(self, status: u16, description: &str, codes: &[&'static str]) -> Self {
        self.error_with(status, description, codes, json!({}))
    }

    /// An error answer whose body has `extra` properties beside `code` and
    /// `message` (each present only with some of the codes).
    pub fn error_with(
        mut self,
        status: u16,
        description: &str,
        codes: &[&'static str],
        extra: Value,
    ) -> Self {
        if let Some(a) = self.answers.iter_mut().find(|a| a.status == status) {
            a.description = format!("{}; {description}", a.description);
            for c in codes {
                if !a.codes.contains(c) {
                    a.codes.push(c);
                }
            }
            if let (Some(into), Value::Object(more)) = (a.schema.as_object_mut(), extra) {
                into.extend(more);
            }
        } else {
            self.answers.push(Answer {
                status,
                description: description.to_string(),
                codes: codes.to_vec(),
                schema: extra,
                retry_after: None,
                links: Map::new(),
            });
        }
        self
    }

    /// The answer `status` carries a `Retry-After` header (always, when
    /// `required`; with some of its codes otherwise).
    pub fn retry_after(mut self, status: u16, required: bool) -> Self {
        if let Some(a) = self.answers.iter_mut().find(|a| a.status == status) {
            a.retry_after = Some(a.retry_after.unwrap_or(false) || required);
        }
        self
    }

    /// An OpenAPI link from the answer `status` to another operation.
    pub fn link(mut self, status: u16, name: &str, link: Value) -> Self {
        if let Some(a) = self.answers.iter_mut().find(|a| a.status == status) {
            a.links.insert(name.to_string(), link);
        }
        self
    }

    fn has_body(&self) -> bool {
        self.request.is_some()
    }

    /// The answers every `/v1/orgs/{org}/…` call can get besides its own.
    fn with_common_answers(self) -> Self {
        let body = self.has_body();
        let mut op = self
            .error(
                400,
                "The request is refused: a path or query that does not parse",
                &["invalid_request"],
            )
            .error(
                401,
                "No bearer token, or one that is not valid",
                &["unauthorized"],
            )
            .error(
                403,
                "The token may not call this org",
                &["forbidden"],
            )
            .error(
                404,
                "No such endpoint (a path with an empty segment, say)",
                &["not_found"],
            )
            .error(
                413,
                "The body is larger than 256 KiB (refused before it is read when Content-Length says so)",
                &["body_too_large"],
            )
            .error(500, "An unexpected failure (the store)", &["internal"])
            .error(
                503,
                "Not served now: not_ready before the first full sync of objects and Secrets (Retry-After: 1), too_many_connections over --http-max-connections or --http-max-connections-per-client (Retry-After: 1, the connection closes), auth_unavailable when the apiserver cannot check the token",
                &["not_ready", "too_many_connections", "auth_unavailable"],
            )
            .retry_after(503, false);
        if body {
            op = op
                .error(
                    400,
                    "the body is not JSON (invalid_json), not of the schema's shape: a missing or unknown field, a wrong type (invalid_request), or could not be read (invalid_body)",
                    &["invalid_json", "invalid_request", "invalid_body"],
                )
                .error(
                    415,
                    "The body is not sent as Content-Type: application/json",
                    &["unsupported_media_type"],
                );
        }
        op
    }

    fn parameters(&self) -> Value {
        let mut params: Vec<Value> = self
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let schema = self
                    .path_schemas
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "string", "minLength": 1}));
                let (description, example) = match name {
                    "org" => ("The org: a Kubernetes namespace", Some("acme")),
                    "id" => ("The email's id, as POST /v1/orgs/{org}/emails answered it", None),
                    "name" => ("The TelephonyHook's name", Some("primary")),
                    _ => ("Object name", None),
                };
                let mut param = json!({"name": name, "in": "path", "required": true, "schema": schema, "description": description});
                if let Some(example) = example {
                    param["example"] = json!(example);
                }
                param
            })
            .collect();
        params.extend(self.query.iter().cloned());
        Value::Array(params)
    }

    fn to_json(&self) -> Value {
        let mut responses = Map::new();
        let mut answers: Vec<&Answer> = self.answers.iter().collect();
        answers.sort_by_key(|a| a.status);
        for a in answers {
            let schema = if a.codes.is_empty() {
                a.schema.clone()
            } else {
                error_schema(&a.codes, &a.schema)
            };
            let mut response = json!({
                "description": a.description,
                "content": {"application/json": {"schema": schema}},
            });
            if let Some(required) = a.retry_after {
                response["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "required": required,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }});
            }
            if !a.links.is_empty() {
                response["links"] = Value::Object(a.links.clone());
            }
            responses.insert(a.status.to_string(), response);
        }
        let mut op = json!({
            "operationId": self.id,
            "summary": self.summary,
            "security": [{"bearer": []}],
            "parameters": self.parameters(),
            "responses": responses,
        });
        if let Some(d) = self.description {
            op["description"] = json!(d);
        }
        if let Some(schema) = &self.request {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        op
    }
}

/// The body of every error: a stable `code` (one of `codes`), a human
/// `message`, and `extra` properties for some codes.
fn error_schema(codes: &[&str], extra: &Value) -> Value {
    let mut properties = json!({
        "code": {"type": "string", "enum": codes, "description": "Stable machine-readable code"},
        "message": {"type": "string", "description": "What went wrong, for a person"},
    });
    if let (Some(into), Some(more)) = (properties.as_object_mut(), extra.as_object()) {
        into.extend(more.clone());
    }
    json!({"type": "object", "required": ["code", "message"], "properties": properties})
}

/// A JSON Schema that also admits `null` (OpenAPI 3.0's `nullable`).
pub fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

/// An RFC 3339 time, as idplane writes them.
pub fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

/// An E.164 phone number, as `PhoneNumber::parse` accepts it.
pub fn e164() -> Value {
    json!({"type": "string", "pattern": "^\\+[1-9][0-9]{6,14}$",
        "description": "E.164: + then 7 to 15 digits, the first not 0 (for example +14155550123)"})
}

/// Unicode White_Space, which Rust's `str::trim` removes, as a character
/// class body (Python's `\s` is wider: it also takes U+001C to U+001F).
const WHITE_SPACE: &str = "\\t\\n\\u000b\\u000c\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// A string with something besides white space.
pub fn not_blank() -> Value {
    json!({"type": "string", "pattern": format!("[^{WHITE_SPACE}]")})
}

/// An email address idplane accepts: `user@domain`, the user of dot-separated
/// letters, digits and `_+-`, the domain of labels (a conservative part of
/// what the server parses; it also takes `Name <user@domain>`).
pub fn address() -> Value {
    json!({
        "type": "string",
        "maxLength": 320,
        "pattern": "^[A-Za-z0-9_+-]{1,15}(\\.[A-Za-z0-9_+-]{1,15}){0,3}@[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?){1,3}$",
        "description": "An email address, user@example.com (or \"Name <user@example.com>\"); at most 320 bytes",
    })
}

/// An event of an org's system log.
pub fn event_schema() -> Value {
    json!({"type": "object", "required": ["id", "type", "outcome", "time", "subject", "detail"], "properties": {
        "id": {"type": "integer", "description": "Increasing; the cursor of the next page"},
        "type": {"type": "string", "description": "e.g. telephony.send, telephony.preview, email.delivery, email.test, email.sender"},
        "outcome": {"type": "string", "pattern": "^[A-Z_]{1,32}$", "description": "SUCCESS, FAILURE, WARNING..."},
        "time": time(),
        "subject": {"type": "string", "description": "What it is about: TelephonyHook/NAME, an email id..."},
        "detail": {"description": "Fields of the event, by type"},
    }})
}

/// Authenticator keys, as the enrollment engine names them.
fn authenticator_keys() -> impl Iterator<Item = &'static str> {
    crate::enrollment::Authenticator::ALL
        .into_iter()
        .map(crate::enrollment::Authenticator::as_str)
}

fn authenticator() -> Value {
    json!({"type": "string", "enum": authenticator_keys().collect::<Vec<_>>()})
}

fn authenticators() -> Value {
    json!({"type": "array", "items": authenticator(), "uniqueItems": true})
}

/// Every `/v1` operation.
pub fn operations() -> Vec<Operation> {
    let mut list = vec![
        config_operation(),
        status_operation(),
        events_operation(),
        evaluate_operation(),
    ];
    list.extend(crate::telephony::openapi_endpoints());
    list.extend(crate::email::openapi_endpoints());
    list
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
                "kind": {"type": "string", "enum": crate::resources::KINDS},
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

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in operations() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_describes_its_answers() {
        let doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_string()), "{id} twice");
                let responses = op["responses"].as_object().unwrap();
                let ok: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
                assert_eq!(ok.len(), 1, "{method} {path}: {ok:?}");
                let schema = &responses[ok[0].as_str()]["content"]["application/json"]["schema"];
                assert_ne!(schema, &json!({"type": "object"}), "{method} {path}");
                for status in ["400", "401", "403", "404", "413", "500", "503"] {
                    let codes = &responses[status]["content"]["application/json"]["schema"]["properties"]
                        ["code"]["enum"];
                    assert!(
                        codes.as_array().is_some_and(|c| !c.is_empty()),
                        "{method} {path} {status}"
                    );
                }
                assert_eq!(
                    op["requestBody"].is_object(),
                    responses.contains_key("415"),
                    "{method} {path}"
                );
            }
        }
    }
}
