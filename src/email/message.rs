//! An email as the API takes it: parsing and the checks that give clear 400s
//! (pure), and turning an accepted message into the MIME message sent over
//! SMTP. Where a message is stored or how it is delivered is not here.

use std::str::FromStr;

use lettre::message::{Mailbox, MultiPart, SinglePart, header};
use serde::{Deserialize, Serialize};

/// Recipients in `to` and `cc` together, at most.
pub const MAX_RECIPIENTS: usize = 50;
/// Longest address, in bytes (RFC 5321 path limit plus a display name).
pub const MAX_ADDRESS_BYTES: usize = 320;
/// Longest subject, in characters (RFC 5322 line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// `text` and `html` together, in bytes.
pub const MAX_CONTENT_BYTES: usize = 192 * 1024;
/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// `to`: one address or a list.
#[derive(Clone, Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand, for a clear 400: serde's untagged enums only say that the data
/// "did not match any variant".
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let kind = |v: &Value| match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        };
        match Value::deserialize(d)? {
            Value::String(one) => Ok(Self::One(one)),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "must be an address or a list of addresses; [{i}] is {}, not an address",
                        kind(&other)
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Self::Many),
            other => Err(D::Error::custom(format!(
                "must be an address or a list of addresses, not {}",
                kind(&other)
            ))),
        }
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// The body of `POST /v1/orgs/{org}/emails`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendRequest {
    pub to: OneOrMany,
    #[serde(default)]
    pub cc: Option<OneOrMany>,
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The message content as stored: what the sender and recipients see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// A request that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub content: Content,
    pub brand: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Why a request is refused (a 400 with `code`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

fn check_address(field: &str, index: usize, raw: &str) -> Result<String, Invalid> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(invalid(
            "invalid_address",
            format!("{field}[{index}] is empty"),
        ));
    }
    if value.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(
            "invalid_address",
            format!("{field}[{index}] is longer than {MAX_ADDRESS_BYTES} bytes"),
        ));
    }
    Mailbox::from_str(value).map_err(|e| {
        invalid(
            "invalid_address",
            format!(
                "{field}[{index}] {value:?} is not an email address ({e}); use user@example.com or \"Name <user@example.com>\""
            ),
        )
    })?;
    Ok(value.to_string())
}

/// Checks a request; every refusal names the field and the limit.
pub fn check(request: SendRequest) -> Result<Checked, Invalid> {
    let to = request.to.into_vec();
    let cc = request.cc.map(OneOrMany::into_vec).unwrap_or_default();
    if to.is_empty() {
        return Err(invalid(
            "missing_recipient",
            "to must name at least one address",
        ));
    }
    if to.len() + cc.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "too_many_recipients",
            format!(
                "to and cc name {} addresses; at most {MAX_RECIPIENTS} per message",
                to.len() + cc.len()
            ),
        ));
    }
    let to = to
        .iter()
        .enumerate()
        .map(|(i, a)| check_address("to", i, a))
        .collect::<Result<Vec<_>, _>>()?;
    let cc = cc
        .iter()
        .enumerate()
        .map(|(i, a)| check_address("cc", i, a))
        .collect::<Result<Vec<_>, _>>()?;
    let subject = request.subject.unwrap_or_default();
    if subject.trim().is_empty() {
        return Err(invalid("invalid_subject", "subject is required"));
    }
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(invalid(
            "invalid_subject",
            format!("subject is longer than {MAX_SUBJECT_CHARS} characters"),
        ));
    }
    if subject.contains(['\r', '\n']) {
        return Err(invalid(
            "invalid_subject",
            "subject may not contain line breaks",
        ));
    }
    let text = request.text.filter(|t| !t.is_empty());
    let html = request.html.filter(|t| !t.is_empty());
    if text.is_none() && html.is_none() {
        return Err(invalid("missing_content", "give text, html or both"));
    }
    let size = text.as_ref().map_or(0, String::len) + html.as_ref().map_or(0, String::len);
    if size > MAX_CONTENT_BYTES {
        return Err(invalid(
            "content_too_large",
            format!("text and html are {size} bytes together; at most {MAX_CONTENT_BYTES}"),
        ));
    }
    let brand = request.brand.filter(|b| !b.is_empty());
    if brand.as_ref().is_some_and(|b| b.len() > 253) {
        return Err(invalid("invalid_brand", "brand is longer than 253 bytes"));
    }
    let idempotency_key = match request.idempotency_key {
        None => None,
        Some(k) if k.is_empty() || k.len() > MAX_KEY_BYTES => {
            return Err(invalid(
                "invalid_idempotency_key",
                format!("idempotencyKey must be 1 to {MAX_KEY_BYTES} bytes"),
            ));
        }
        Some(k) if k.chars().any(|c| c.is_control()) => {
            return Err(invalid(
                "invalid_idempotency_key",
                "idempotencyKey may not contain control characters",
            ));
        }
        Some(k) => Some(k),
    };
    Ok(Checked {
        content: Content {
            to,
            cc,
            subject,
            text,
            html,
        },
        brand,
        idempotency_key,
    })
}

/// Checks a sender given on the command line or in a test request.
pub fn parse_mailbox(value: &str) -> Result<Mailbox, String> {
    Mailbox::from_str(value.trim()).map_err(|e| format!("{value:?} is not an email address ({e})"))
}

/// The MIME message for an accepted email. The Message-ID is derived from
/// the idplane id, so a receiver can drop the duplicate that an at-least-once
/// retry may produce.
pub fn build(id: &str, from: &str, content: &Content) -> Result<lettre::Message, String> {
    let from = parse_mailbox(from)?;
    let domain = from.email.domain().to_string();
    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(content.subject.clone())
        .message_id(Some(format!("<{id}@{domain}>")));
    for to in &content.to {
        builder = builder.to(parse_mailbox(to)?);
    }
    for cc in &content.cc {
        builder = builder.cc(parse_mailbox(cc)?);
    }
    let built = match (&content.text, &content.html) {
        (Some(text), Some(html)) => builder.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(header::ContentType::TEXT_PLAIN)
                        .body(text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(header::ContentType::TEXT_HTML)
                        .body(html.clone()),
                ),
        ),
        (Some(text), None) => builder
            .header(header::ContentType::TEXT_PLAIN)
            .body(text.clone()),
        (None, Some(html)) => builder
            .header(header::ContentType::TEXT_HTML)
            .body(html.clone()),
        (None, None) => builder
            .header(header::ContentType::TEXT_PLAIN)
            .body(String::new()),
    };
    built.map_err(|e| format!("cannot build the message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recipients_of_the_wrong_type_are_named() {
        let parse = |body: serde_json::Value| {
            serde_json::from_value::<SendRequest>(body).map_err(|e| e.to_string())
        };
        assert_eq!(
            parse(json!({"to": 5, "subject": "s", "text": "t"})).unwrap_err(),
            "must be an address or a list of addresses, not a number"
        );
        assert_eq!(
            parse(json!({"to": "a@x.example", "cc": ["b@x.example", {"x": 1}]})).unwrap_err(),
            "must be an address or a list of addresses; [1] is an object, not an address"
        );
        let ok = parse(json!({"to": ["a@x.example", "b@x.example"], "cc": "c@x.example"})).unwrap();
        assert_eq!(ok.to.into_vec(), ["a@x.example", "b@x.example"]);
        assert_eq!(ok.cc.unwrap().into_vec(), ["c@x.example"]);
    }

    fn request(v: serde_json::Value) -> SendRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn refusals_name_the_field() {
        let long = "x".repeat(MAX_CONTENT_BYTES + 1);
        let many: Vec<String> = (0..51).map(|i| format!("u{i}@example.com")).collect();
        let cases = [
            (
                json!({"to": [], "subject": "s", "text": "t"}),
                "missing_recipient",
            ),
            (
                json!({"to": "not-an-address", "subject": "s", "text": "t"}),
                "invalid_address",
            ),
            (
                json!({"to": ["a@example.com"], "cc": ["@x"], "subject": "s", "text": "t"}),
                "invalid_address",
            ),
            (
                json!({"to": many, "subject": "s", "text": "t"}),
                "too_many_recipients",
            ),
            (
                json!({"to": "a@example.com", "text": "t"}),
                "invalid_subject",
            ),
            (
                json!({"to": "a@example.com", "subject": "a\r\nBcc: x@y", "text": "t"}),
                "invalid_subject",
            ),
            (
                json!({"to": "a@example.com", "subject": "s"}),
                "missing_content",
            ),
            (
                json!({"to": "a@example.com", "subject": "s", "text": long}),
                "content_too_large",
            ),
            (
                json!({"to": "a@example.com", "subject": "s", "text": "t", "idempotencyKey": ""}),
                "invalid_idempotency_key",
            ),
        ];
        for (body, code) in cases {
            let err = check(request(body.clone())).unwrap_err();
            assert_eq!(err.code, code, "{body}: {err}");
        }
        let err = check(request(
            json!({"to": ["a@example.com", "bad"], "subject": "s", "text": "t"}),
        ))
        .unwrap_err();
        assert!(err.message.starts_with("to[1] \"bad\""), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<SendRequest, _> =
            serde_json::from_value(json!({"to": "a@example.com", "subjet": "typo"}));
        assert!(r.unwrap_err().to_string().contains("subjet"));
    }

    #[test]
    fn builds_alternative_with_stable_message_id() {
        let checked = check(request(json!({
            "to": ["Ann <ann@example.com>"], "cc": "bob@example.com",
            "subject": "Hello", "text": "plain", "html": "<p>html</p>"
        })))
        .unwrap();
        let message = build("em-1", "Acme <noreply@acme.example>", &checked.content).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("Message-ID: <em-1@acme.example>"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Cc: bob@example.com"), "{raw}");
        let envelope = message.envelope();
        assert_eq!(envelope.to().len(), 2);
    }
}
