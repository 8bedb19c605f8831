//! The description of an operation of the runtime API, for `/openapi.json`:
//! what it takes and every answer it gives, with the JSON Schemas that
//! several modules' operations share. Each module describes its own
//! operations with it; `api::openapi` assembles the document.

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
    pub fn with_common_answers(self) -> Self {
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
                "Not served now: not_ready before the first full sync of objects and Secrets (Retry-After: 1), too_many_connections over --http-max-connections or --http-max-connections-per-client (Retry-After: 1, the connection closes), auth_unavailable when the apiserver cannot check the token, store_unavailable when the database cannot be reached (Retry-After: 1; nothing was recorded, the call may be repeated)",
                &["not_ready", "too_many_connections", "auth_unavailable", "store_unavailable"],
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

    pub fn to_json(&self) -> Value {
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
