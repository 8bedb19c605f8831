//! Okta's "Preview" tab: build the exact request for one hook (active or
//! not), show it with its secrets redacted, optionally replace it, send it,
//! and show the answer with idplane's judgement. Shared by the API
//! (`POST .../telephony-hooks/{name}/preview`) and `idplane preview
//! telephony`. A preview's code is random, never stored and never valid.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::caller::{Exchange, HookCaller};
use super::code::{OtpCode, random_uuid};
use super::contract::{
    CallerContext, Channel, HookRequest, RequestParts, RequestType, UserInfo, Verdict,
};
use crate::index::{HeaderValue, HookConfig};

/// Shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// What a preview request is built from (the API's body, the CLI's flags).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewInput {
    #[serde(default)]
    pub phone_number: Option<String>,
    #[serde(default)]
    pub channel: Channel,
    #[serde(default)]
    pub request_type: RequestType,
    #[serde(default, deserialize_with = "crate::http::wire::object")]
    pub user: UserInfo,
    #[serde(default)]
    pub locale: Option<String>,
    #[serde(default, deserialize_with = "crate::http::wire::object")]
    pub context: CallerContext,
}

/// `data.context.request.url` and `source` of a request from idplane.
pub fn source(org: &str, hook: &str) -> String {
    format!("urn:idplane:{org}:telephonyhook:{hook}")
}

/// The request a send to `phone` would carry, with a throw-away code.
pub fn build_request(
    org: &str,
    hook: &HookConfig,
    input: &PreviewInput,
    phone: &str,
    lifetime: std::time::Duration,
    code_length: usize,
) -> Value {
    let now = chrono::Utc::now();
    let expires =
        now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::minutes(5));
    let code = OtpCode::generate(code_length);
    let event_id = random_uuid();
    let time = rfc3339_millis(now);
    let expires = rfc3339_millis(expires);
    let source = source(org, &hook.name);
    let url_path = format!("/v1/orgs/{org}/telephony-hooks/{}/preview", hook.name);
    let request = HookRequest::new(&RequestParts {
        event_id: &event_id,
        event_time: &time,
        source: &source,
        url_path: &url_path,
        request_type: input.request_type,
        channel: input.channel,
        phone_number: phone,
        code: code.expose(),
        otp_expires: &expires,
        message_template: &hook.message_template,
        locale: input.locale.as_deref().unwrap_or(DEFAULT_LOCALE),
        user: &input.user,
        context: &input.context,
    });
    serde_json::to_value(&request).expect("a hook request serializes")
}

/// Okta's default `locale`.
pub const DEFAULT_LOCALE: &str = "EN-US";

/// RFC 3339 with milliseconds and `Z`, as Okta writes times.
pub fn rfc3339_millis(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The headers a request to `hook` carries, secrets redacted.
pub fn redacted_headers(hook: &HookConfig) -> Vec<(String, String)> {
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Accept".to_string(), "application/json".to_string()),
        (hook.auth_header.clone(), REDACTED.to_string()),
    ];
    for h in &hook.headers {
        let value = match &h.value {
            HeaderValue::Literal(v) => v.clone(),
            HeaderValue::Secret(_) => REDACTED.to_string(),
        };
        headers.push((h.name.clone(), value));
    }
    headers
}

/// The phone number a (possibly hand-written) request goes to.
pub fn phone_of(request: &Value) -> Option<&str> {
    request
        .pointer("/data/messageProfile/phoneNumber")
        .and_then(Value::as_str)
}

/// What a sent preview came to.
pub struct PreviewOutcome {
    pub exchange: Exchange,
}

/// Sends `request` to `hook` the way a real send does (timeout, retry,
/// bounded answer), keeping the answer's body for display.
pub async fn send(caller: &HookCaller, hook: &HookConfig, request: &Value) -> PreviewOutcome {
    let body = serde_json::to_vec(request).expect("JSON serializes");
    PreviewOutcome {
        exchange: caller.call(hook, body, true).await,
    }
}

impl PreviewOutcome {
    /// The one line kept in the hook's `status.lastPreview.result`.
    pub fn summary(&self) -> String {
        format!(
            "{} in {} ms",
            self.exchange.verdict.summary(),
            self.exchange.took.as_millis()
        )
    }

    /// The answer and its judgement as JSON.
    pub fn to_json(&self) -> Value {
        let ex = &self.exchange;
        let response = shown_response(
            ex.http_status,
            ex.content_type.as_deref(),
            ex.body.as_deref(),
        );
        let judgement = match &ex.verdict {
            Verdict::Delivered(d) => json!({
                "delivered": true,
                "status": d.status.as_str(),
                "provider": d.provider,
                "providerTransactionId": d.provider_transaction_id,
            }),
            Verdict::Failed(f) => json!({
                "delivered": false,
                "status": "FAILED",
                "provider": f.provider,
                "reasonCode": f.kind.code(),
                "reason": f.reason(),
            }),
        };
        json!({
            "response": response,
            "judgement": judgement,
            "attempts": ex.attempts,
            "durationMillis": ex.took.as_millis() as u64,
            "summary": self.summary(),
        })
    }
}

/// Longest `Content-Type` shown: it is whatever the server said.
const MAX_CONTENT_TYPE: usize = 100;

/// An answer as a preview shows it: the body only when it is JSON (what
/// the contract asks of a hook); any other body is summarised (status,
/// content type, length) and not shown, so that a preview reads no page
/// of whatever answers at a URL.
pub fn shown_response(
    status: Option<u16>,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Value {
    let content_type = content_type.map(|t| {
        t.chars()
            .filter(|c| !c.is_control())
            .take(MAX_CONTENT_TYPE)
            .collect::<String>()
    });
    let mut shown = json!({"httpStatus": status, "contentType": content_type, "body": null});
    let Some(body) = body else {
        return shown;
    };
    shown["length"] = json!(body.len());
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => shown["body"] = value,
        Err(_) => {
            let status = status.map_or("no status".to_string(), |s| format!("HTTP {s}"));
            let kind = content_type.as_deref().unwrap_or("no content type");
            shown["bodySummary"] = json!(format!(
                "{status}, {kind}, {} bytes: not JSON, not shown",
                body.len()
            ));
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::HeaderConfig;
    use crate::secret::Secret;

    pub(crate) fn hook() -> HookConfig {
        HookConfig {
            name: "primary".into(),
            url: "http://127.0.0.1:1/telephony".into(),
            insecure_http: true,
            auth_header: "Authorization".into(),
            auth_secret: Secret::from_secret(b"s3cret", "1"),
            headers: vec![
                HeaderConfig {
                    name: "X-Org".into(),
                    value: HeaderValue::Literal("acme".into()),
                },
                HeaderConfig {
                    name: "X-Tenant".into(),
                    value: HeaderValue::Secret(Secret::from_secret(b"tenant-secret", "1")),
                },
            ],
            timeout_millis: 3000,
            message_template: "Code ${otpCode}".into(),
            fallback: None,
        }
    }

    #[test]
    fn only_json_answers_are_shown() {
        let json_body = br#"{"commands": []}"#;
        let shown = shown_response(Some(200), Some("application/json"), Some(json_body));
        assert_eq!(shown["body"], json!({"commands": []}));
        assert_eq!(shown["length"], 16);
        let page = b"<html><body>internal admin page</body></html>";
        let shown = shown_response(Some(200), Some("text/html\r\nX: y"), Some(page));
        assert_eq!(shown["body"], Value::Null);
        assert_eq!(shown["contentType"], "text/htmlX: y");
        assert_eq!(
            shown["bodySummary"],
            format!(
                "HTTP 200, text/htmlX: y, {} bytes: not JSON, not shown",
                page.len()
            )
        );
        assert!(!shown.to_string().contains("admin page"));
        let none = shown_response(None, None, None);
        assert_eq!(
            none,
            json!({"httpStatus": null, "contentType": null, "body": null})
        );
    }

    #[test]
    fn headers_are_redacted_and_request_is_complete() {
        let h = hook();
        let headers = redacted_headers(&h);
        let text = format!("{headers:?}");
        assert!(!text.contains("s3cret") && !text.contains("tenant-secret"));
        assert!(headers.contains(&("X-Org".into(), "acme".into())));
        assert!(headers.contains(&("Authorization".into(), REDACTED.into())));
        let input = PreviewInput {
            request_type: RequestType::PasswordReset,
            ..Default::default()
        };
        let req = build_request(
            "acme",
            &h,
            &input,
            "+14155550123",
            std::time::Duration::from_secs(300),
            6,
        );
        assert_eq!(phone_of(&req), Some("+14155550123"));
        assert_eq!(req["requestType"], "com.okta.user.telephony.password-reset");
        let code = req["data"]["messageProfile"]["otpCode"].as_str().unwrap();
        assert_eq!(
            req["data"]["messageProfile"]["msgTemplate"],
            format!("Code {code}")
        );
        assert_eq!(req["source"], "urn:idplane:acme:telephonyhook:primary");
    }
}
