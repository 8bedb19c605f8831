//! A structural OpenAPI v3 schema check, as the apiserver does it before
//! storing a custom resource: types, enums, patterns, ranges, lengths,
//! required fields, unknown fields, and defaulting. It walks the same schema
//! that `idplane crds` prints, so the CLI and the apiserver agree.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::Value;

use super::field_path::{join_index, join_key};

/// One problem at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, `spec.auth.header`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A hook that may replace the generic message of a refused enum value with
/// one that explains why (for example `okta_password`).
pub type EnumHint = fn(field: &str, value: &str) -> Option<&'static str>;

/// Checks `value` against `schema`, filling in defaults in place. Returns
/// every problem found; an empty list means the value conforms.
pub fn check(schema: &Value, value: &mut Value, path: &str, hint: EnumHint) -> Vec<FieldError> {
    let mut errors = Vec::new();
    walk(schema, value, path, hint, &mut errors);
    errors
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn article(type_: &str) -> &'static str {
    match type_ {
        "integer" | "array" | "object" => "an",
        _ => "a",
    }
}

/// A short rendering of a value for messages (strings quoted, long ones cut).
fn show(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// A compiled pattern, from a cache: compiling one costs more than
/// checking a whole object.
pub(crate) fn regex(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(compiled) = cache.get(pattern) {
        return compiled.clone();
    }
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).ok())
        .clone()
}

fn walk(
    schema: &Value,
    value: &mut Value,
    path: &str,
    hint: EnumHint,
    errors: &mut Vec<FieldError>,
) {
    if value.is_null() {
        if let Some(default) = schema.get("default") {
            *value = default.clone();
        } else if schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let matches = actual == expected || (expected == "number" && actual == "integer");
        if !matches {
            errors.push(FieldError::new(
                path,
                format!(
                    "must be {} {expected}, not {} {actual} ({})",
                    article(expected),
                    article(actual),
                    show(value)
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let custom = value.as_str().and_then(|v| hint(path, v));
        let message = match custom {
            Some(m) => m.to_string(),
            None => format!(
                "unsupported value {}: supported values are {}",
                show(value),
                allowed
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(show)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        errors.push(FieldError::new(path, message));
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => check_number(schema, n, path, errors),
        Value::Array(items) => {
            check_count(
                schema,
                items.len(),
                "minItems",
                "maxItems",
                "items",
                path,
                errors,
            );
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &join_index(path, i), hint, errors);
                }
            }
        }
        Value::Object(map) => {
            check_count(
                schema,
                map.len(),
                "minProperties",
                "maxProperties",
                "fields",
                path,
                errors,
            );
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(props) = properties {
                for (name, prop_schema) in props {
                    if !map.contains_key(name)
                        && let Some(default) = prop_schema.get("default")
                    {
                        map.insert(name.clone(), default.clone());
                    }
                }
            }
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(name) {
                        errors.push(FieldError::new(
                            join_key(path, name),
                            "required field is missing",
                        ));
                    }
                }
            }
            let additional = schema.get("additionalProperties");
            for (name, child) in map.iter_mut() {
                let child_path = join_key(path, name);
                if let Some(prop_schema) = properties.and_then(|p| p.get(name)) {
                    walk(prop_schema, child, &child_path, hint, errors);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    walk(add, child, &child_path, hint, errors);
                } else if !preserve && properties.is_some() {
                    let known: Vec<&str> = properties
                        .into_iter()
                        .flat_map(|p| p.keys())
                        .map(String::as_str)
                        .collect();
                    errors.push(FieldError::new(
                        child_path,
                        format!(
                            "unknown field \"{name}\"; known fields here: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let len = s.chars().count();
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && (len as u64) < min
    {
        let message = if len == 0 {
            "must not be empty".to_string()
        } else {
            format!("must be at least {min} characters long, is {len}")
        };
        errors.push(FieldError::new(path, message));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && (len as u64) > max
    {
        errors.push(FieldError::new(
            path,
            format!("must be at most {max} characters long, is {len}"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && let Some(re) = regex(pattern)
        && !re.is_match(s)
    {
        errors.push(FieldError::new(
            path,
            format!(
                "{} does not match the pattern {pattern}",
                show(&Value::String(s.to_string()))
            ),
        ));
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, path: &str, errors: &mut Vec<FieldError>) {
    let Some(v) = n.as_f64() else { return };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && v < min
    {
        errors.push(FieldError::new(
            path,
            format!("must be at least {min}, is {n}"),
        ));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && v > max
    {
        errors.push(FieldError::new(
            path,
            format!("must be at most {max}, is {n}"),
        ));
    }
}

fn check_count(
    schema: &Value,
    len: usize,
    min_key: &str,
    max_key: &str,
    noun: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
        && (len as u64) < min
    {
        errors.push(FieldError::new(
            path,
            format!("must have at least {min} {noun}, has {len}"),
        ));
    }
    if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
        && (len as u64) > max
    {
        errors.push(FieldError::new(
            path,
            format!("must have at most {max} {noun}, has {len}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_hint(_: &str, _: &str) -> Option<&'static str> {
        None
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["port"],
            "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "tls": {"type": "string", "enum": ["starttls", "none"], "default": "starttls"},
                "host": {"type": "string", "minLength": 1, "pattern": "^[a-z.]+$"},
                "list": {"type": "array", "maxItems": 1, "items": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        })
    }

    #[test]
    fn accepts_and_defaults() {
        let mut v = json!({"port": 25, "free": {"anything": 1}});
        assert!(check(&schema(), &mut v, "spec", no_hint).is_empty());
        assert_eq!(v["tls"], "starttls");
    }

    #[test]
    fn reports_each_problem_with_its_field() {
        let mut v =
            json!({"port": "25", "tls": "ssl", "host": "A!", "list": ["a", "b"], "hots": 1});
        let errors = check(&schema(), &mut v, "spec", no_hint);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.host",
                "spec.hots",
                "spec.list",
                "spec.port",
                "spec.tls"
            ],
            "{errors:?}"
        );
        assert!(
            errors[3]
                .message
                .contains("must be an integer, not a string"),
            "{errors:?}"
        );
        assert!(errors[1].message.contains("unknown field \"hots\""));
    }

    #[test]
    fn missing_required_and_ranges() {
        let mut v = json!({});
        let errors = check(&schema(), &mut v, "spec", no_hint);
        assert_eq!(
            errors,
            vec![FieldError::new("spec.port", "required field is missing")]
        );
        let mut v = json!({"port": 70000});
        let errors = check(&schema(), &mut v, "spec", no_hint);
        assert_eq!(errors[0].message, "must be at most 65535, is 70000");
    }
}
