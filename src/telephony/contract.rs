//! Okta's telephony inline hook contract: the request idplane sends to a
//! hook and how it judges the answer. Pure: building and judging take plain
//! data, so a service written for Okta works unchanged and every rule here
//! is tested without a network.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest hook answer read, in bytes; a longer body is a failure.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The command type a hook answers with.
pub const ACTION_COMMAND: &str = "com.okta.telephony.action";

/// How the code reaches the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Sms,
    Voice,
}

impl Channel {
    /// Okta's `deliveryChannel`.
    pub fn delivery_channel(self) -> &'static str {
        match self {
            Self::Sms => "SMS",
            Self::Voice => "CALL",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
        }
    }
}

/// Why the code is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RequestType {
    Enrollment,
    #[default]
    Verification,
    AccountUnlock,
    PasswordReset,
}

impl RequestType {
    /// Okta's `requestType`.
    pub fn okta(self) -> &'static str {
        match self {
            Self::Enrollment => "com.okta.user.telephony.pre-enrollment",
            Self::Verification => "com.okta.user.telephony.mfa-verification",
            Self::AccountUnlock => "com.okta.user.telephony.account-unlock",
            Self::PasswordReset => "com.okta.user.telephony.password-reset",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrollment => "enrollment",
            Self::Verification => "verification",
            Self::AccountUnlock => "account-unlock",
            Self::PasswordReset => "password-reset",
        }
    }
}

/// The user the code is for, as the caller describes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserInfo {
    pub id: String,
    pub login: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
}

/// Where the caller's own request came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallerContext {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// Everything one hook request is built from.
pub struct RequestParts<'a> {
    pub event_id: &'a str,
    pub event_time: &'a str,
    /// Identifies the sender (org and hook).
    pub source: &'a str,
    /// The idplane endpoint that caused the call (`data.context.request.url`).
    pub url_path: &'a str,
    pub request_type: RequestType,
    pub channel: Channel,
    pub phone_number: &'a str,
    pub code: &'a str,
    pub otp_expires: &'a str,
    pub message_template: &'a str,
    pub locale: &'a str,
    pub user: &'a UserInfo,
    pub context: &'a CallerContext,
}

/// The body Okta sends to a telephony inline hook.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest<'a> {
    event_id: &'a str,
    event_time: &'a str,
    event_type: &'static str,
    event_type_version: &'static str,
    content_type: &'static str,
    cloud_event_version: &'static str,
    source: &'a str,
    request_type: &'static str,
    data: HookData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HookData<'a> {
    context: HookContext<'a>,
    user_profile: UserProfile<'a>,
    message_profile: MessageProfile<'a>,
}

#[derive(Serialize)]
struct HookContext<'a> {
    request: ContextRequest<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContextRequest<'a> {
    id: &'a str,
    method: &'static str,
    url: UrlValue<'a>,
    ip_address: &'a str,
}

#[derive(Serialize)]
struct UrlValue<'a> {
    value: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserProfile<'a> {
    first_name: &'a str,
    last_name: &'a str,
    login: &'a str,
    user_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageProfile<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_template: Option<String>,
    phone_number: &'a str,
    otp_expires: &'a str,
    delivery_channel: &'static str,
    otp_code: &'a str,
    locale: &'a str,
}

/// The placeholder of a message template.
pub const CODE_PLACEHOLDER: &str = "${otpCode}";

impl<'a> HookRequest<'a> {
    /// The request for one hook call. The SMS text is the hook's template
    /// with the code filled in; a voice call carries no text (Okta's rule).
    pub fn new(p: &RequestParts<'a>) -> Self {
        let msg_template = (p.channel == Channel::Sms)
            .then(|| p.message_template.replace(CODE_PLACEHOLDER, p.code));
        Self {
            event_id: p.event_id,
            event_time: p.event_time,
            event_type: "com.okta.telephony.provider",
            event_type_version: "1.0",
            content_type: "application/json",
            cloud_event_version: "0.1",
            source: p.source,
            request_type: p.request_type.okta(),
            data: HookData {
                context: HookContext {
                    request: ContextRequest {
                        id: p.context.request_id.as_deref().unwrap_or(p.event_id),
                        method: "POST",
                        url: UrlValue { value: p.url_path },
                        ip_address: p.context.ip.as_deref().unwrap_or(""),
                    },
                },
                user_profile: UserProfile {
                    first_name: &p.user.first_name,
                    last_name: &p.user.last_name,
                    login: &p.user.login,
                    user_id: &p.user.id,
                },
                message_profile: MessageProfile {
                    msg_template,
                    phone_number: p.phone_number,
                    otp_expires: p.otp_expires,
                    delivery_channel: p.channel.delivery_channel(),
                    otp_code: p.code,
                    locale: p.locale,
                },
            },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a hook request serializes")
    }
}

/// A delivered status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeliveryStatus {
    Successful,
    Pending,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Successful => "SUCCESSFUL",
            Self::Pending => "PENDING",
        }
    }
}

/// What a hook said when it took the message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub status: DeliveryStatus,
    pub provider: Option<String>,
    pub provider_transaction_id: Option<String>,
    pub transaction_metadata: Option<Value>,
}

/// The kinds of failure, each with a stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// No complete answer within the hook's timeout.
    Timeout,
    /// The connection could not be made or broke.
    Connection,
    /// A status other than 2xx (redirects are not followed).
    HttpStatus,
    /// The body is not the contract's JSON.
    InvalidResponse,
    /// No `com.okta.telephony.action` command with a value.
    MissingCommand,
    /// The command's status is `FAILED`.
    ProviderFailed,
    /// The answer carries an `error` object.
    HookError,
    /// The body is over [`MAX_RESPONSE_BYTES`].
    BodyTooLarge,
    /// The hook's configuration cannot make a request (a header value).
    InvalidConfig,
    /// The egress rule refuses the address the hook's URL leads to.
    EgressRefused,
}

impl FailureKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection_error",
            Self::HttpStatus => "http_status",
            Self::InvalidResponse => "invalid_response",
            Self::MissingCommand => "missing_command",
            Self::ProviderFailed => "provider_failed",
            Self::HookError => "hook_error",
            Self::BodyTooLarge => "body_too_large",
            Self::InvalidConfig => "invalid_config",
            Self::EgressRefused => "egress_refused",
        }
    }

    /// Only a timeout or a connection error is tried a second time.
    pub fn is_retried(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection)
    }
}

/// Why a hook call did not deliver.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
    /// The provider, when the hook named one.
    pub provider: Option<String>,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            provider: None,
        }
    }

    /// `code: detail`, as events and status show it.
    pub fn reason(&self) -> String {
        format!("{}: {}", self.kind.code(), self.detail)
    }
}

/// How idplane judges one answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Delivered(Delivery),
    Failed(Failure),
}

impl Verdict {
    pub fn provider(&self) -> Option<&str> {
        match self {
            Self::Delivered(d) => d.provider.as_deref(),
            Self::Failed(f) => f.provider.as_deref(),
        }
    }

    /// One line for a person: `SUCCESSFUL (provider twilio)` or the reason.
    pub fn summary(&self) -> String {
        match self {
            Self::Delivered(d) => match &d.provider {
                Some(p) => format!("{} (provider {p})", d.status.as_str()),
                None => d.status.as_str().to_string(),
            },
            Self::Failed(f) => format!("FAILED {}", f.reason()),
        }
    }
}

#[derive(Deserialize)]
struct HookResponse {
    #[serde(default)]
    commands: Option<Vec<Command>>,
    #[serde(default)]
    error: Option<HookErrorBody>,
}

#[derive(Deserialize)]
struct Command {
    #[serde(rename = "type", default)]
    type_: Option<String>,
    #[serde(default)]
    value: Option<OneOrMany>,
}

/// Okta documents `value` as an array; services often send one object.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<ActionValue>),
    One(ActionValue),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionValue {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    transaction_metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookErrorBody {
    #[serde(default)]
    error_summary: Option<String>,
    #[serde(default)]
    error_causes: Option<Vec<Value>>,
}

/// Longest text kept from a hook's answer in a reason.
const MAX_DETAIL: usize = 200;

fn clip(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(MAX_DETAIL) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// Judges a complete answer: the HTTP status, the `Location` header (for
/// the reason of a redirect) and the body. The body's own text is never
/// copied into a reason, only the fields the contract defines.
pub fn judge(status: u16, location: Option<&str>, body: &[u8]) -> Verdict {
    if !(200..300).contains(&status) {
        let detail = match location {
            Some(to) if (300..400).contains(&status) => {
                format!(
                    "HTTP {status}; redirects are not followed (Location: {})",
                    clip(to)
                )
            }
            _ => format!("HTTP {status}"),
        };
        return Verdict::Failed(Failure::new(FailureKind::HttpStatus, detail));
    }
    let response: HookResponse = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let what = if serde_json::from_slice::<Value>(body).is_ok() {
                format!("the body is JSON but not the telephony hook answer: {e}")
            } else {
                format!("the body is not JSON: {e}")
            };
            return Verdict::Failed(Failure::new(FailureKind::InvalidResponse, clip(&what)));
        }
    };
    if let Some(error) = response.error {
        let mut detail = error
            .error_summary
            .unwrap_or_else(|| "the hook answered with an error".into());
        let causes: Vec<String> = error
            .error_causes
            .unwrap_or_default()
            .iter()
            .filter_map(|c| {
                c.get("errorSummary")
                    .or_else(|| c.get("reason"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        if !causes.is_empty() {
            detail = format!("{detail} ({})", causes.join("; "));
        }
        return Verdict::Failed(Failure::new(FailureKind::HookError, clip(&detail)));
    }
    let Some(commands) = response.commands else {
        return Verdict::Failed(Failure::new(
            FailureKind::MissingCommand,
            "the answer has no commands",
        ));
    };
    let Some(command) = commands
        .into_iter()
        .find(|c| c.type_.as_deref() == Some(ACTION_COMMAND))
    else {
        return Verdict::Failed(Failure::new(
            FailureKind::MissingCommand,
            format!("no command of type {ACTION_COMMAND}"),
        ));
    };
    let value = match command.value {
        Some(OneOrMany::One(v)) => Some(v),
        Some(OneOrMany::Many(list)) => list.into_iter().next(),
        None => None,
    };
    let Some(value) = value else {
        return Verdict::Failed(Failure::new(
            FailureKind::MissingCommand,
            format!("the {ACTION_COMMAND} command has no value"),
        ));
    };
    let status = match value
        .status
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("SUCCESSFUL") => DeliveryStatus::Successful,
        Some("PENDING") => DeliveryStatus::Pending,
        Some("FAILED") => {
            let detail = match &value.provider {
                Some(p) => format!("the hook answered FAILED (provider {})", clip(p)),
                None => "the hook answered FAILED".to_string(),
            };
            let mut failure = Failure::new(FailureKind::ProviderFailed, detail);
            failure.provider = value.provider;
            return Verdict::Failed(failure);
        }
        Some(other) => {
            return Verdict::Failed(Failure::new(
                FailureKind::InvalidResponse,
                format!(
                    "unknown status \"{}\"; expected SUCCESSFUL, PENDING or FAILED",
                    clip(other)
                ),
            ));
        }
        None => {
            return Verdict::Failed(Failure::new(
                FailureKind::InvalidResponse,
                "the command's value has no status",
            ));
        }
    };
    Verdict::Delivered(Delivery {
        status,
        provider: value.provider,
        provider_transaction_id: value.transaction_id,
        transaction_metadata: value.transaction_metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts<'a>(channel: Channel, user: &'a UserInfo, ctx: &'a CallerContext) -> RequestParts<'a> {
        RequestParts {
            event_id: "ev-1",
            event_time: "2026-01-02T03:04:05.000Z",
            source: "urn:idplane:acme:telephonyhook:primary",
            url_path: "/v1/orgs/acme/otp/send",
            request_type: RequestType::Enrollment,
            channel,
            phone_number: "+14155550123",
            code: "123456",
            otp_expires: "2026-01-02T03:09:05.000Z",
            message_template: "Acme: ${otpCode}. Again: ${otpCode}",
            locale: "EN-US",
            user,
            context: ctx,
        }
    }

    #[test]
    fn request_follows_oktas_contract() {
        let user = UserInfo {
            id: "u1".into(),
            login: "ada@example.com".into(),
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
        };
        let ctx = CallerContext {
            ip: Some("203.0.113.9".into()),
            request_id: Some("req-7".into()),
        };
        let body: Value =
            serde_json::from_slice(&HookRequest::new(&parts(Channel::Sms, &user, &ctx)).to_bytes())
                .unwrap();
        assert_eq!(
            body,
            json!({
                "eventId": "ev-1",
                "eventTime": "2026-01-02T03:04:05.000Z",
                "eventType": "com.okta.telephony.provider",
                "eventTypeVersion": "1.0",
                "contentType": "application/json",
                "cloudEventVersion": "0.1",
                "source": "urn:idplane:acme:telephonyhook:primary",
                "requestType": "com.okta.user.telephony.pre-enrollment",
                "data": {
                    "context": {"request": {"id": "req-7", "method": "POST",
                        "url": {"value": "/v1/orgs/acme/otp/send"}, "ipAddress": "203.0.113.9"}},
                    "userProfile": {"firstName": "Ada", "lastName": "Lovelace",
                        "login": "ada@example.com", "userId": "u1"},
                    "messageProfile": {
                        "msgTemplate": "Acme: 123456. Again: 123456",
                        "phoneNumber": "+14155550123",
                        "otpExpires": "2026-01-02T03:09:05.000Z",
                        "deliveryChannel": "SMS",
                        "otpCode": "123456",
                        "locale": "EN-US"
                    }
                }
            })
        );
    }

    #[test]
    fn voice_has_no_text_and_request_types_map() {
        let user = UserInfo::default();
        let ctx = CallerContext::default();
        let body: Value = serde_json::from_slice(
            &HookRequest::new(&parts(Channel::Voice, &user, &ctx)).to_bytes(),
        )
        .unwrap();
        let profile = &body["data"]["messageProfile"];
        assert_eq!(profile["deliveryChannel"], "CALL");
        assert!(profile.get("msgTemplate").is_none());
        assert_eq!(body["data"]["context"]["request"]["id"], "ev-1");
        for (t, okta) in [
            (
                RequestType::Enrollment,
                "com.okta.user.telephony.pre-enrollment",
            ),
            (
                RequestType::Verification,
                "com.okta.user.telephony.mfa-verification",
            ),
            (
                RequestType::AccountUnlock,
                "com.okta.user.telephony.account-unlock",
            ),
            (
                RequestType::PasswordReset,
                "com.okta.user.telephony.password-reset",
            ),
        ] {
            assert_eq!(t.okta(), okta);
            let parsed: RequestType = serde_json::from_value(json!(t.as_str())).unwrap();
            assert_eq!(parsed, t);
        }
    }

    fn verdict(status: u16, body: Value) -> Verdict {
        judge(status, None, body.to_string().as_bytes())
    }

    fn kind(v: &Verdict) -> Option<FailureKind> {
        match v {
            Verdict::Failed(f) => Some(f.kind),
            Verdict::Delivered(_) => None,
        }
    }

    #[test]
    fn answers_are_judged() {
        let ok = |status: &str| {
            json!({"commands": [{"type": ACTION_COMMAND, "value": [
                {"status": status, "provider": "twilio", "transactionId": "SM1",
                 "transactionMetadata": {"segments": 1}}]}]})
        };
        assert_eq!(
            verdict(200, ok("SUCCESSFUL")),
            Verdict::Delivered(Delivery {
                status: DeliveryStatus::Successful,
                provider: Some("twilio".into()),
                provider_transaction_id: Some("SM1".into()),
                transaction_metadata: Some(json!({"segments": 1})),
            })
        );
        let pending = verdict(202, ok("PENDING"));
        assert!(
            matches!(pending, Verdict::Delivered(ref d) if d.status == DeliveryStatus::Pending)
        );
        let failed = verdict(200, ok("FAILED"));
        assert_eq!(kind(&failed), Some(FailureKind::ProviderFailed));
        assert_eq!(failed.provider(), Some("twilio"));
        // A single object instead of an array.
        let single = json!({"commands": [{"type": ACTION_COMMAND,
            "value": {"status": "SUCCESSFUL", "provider": "p"}}]});
        assert!(matches!(verdict(200, single), Verdict::Delivered(_)));

        let table: Vec<(u16, Value, FailureKind, &str)> = vec![
            (500, ok("SUCCESSFUL"), FailureKind::HttpStatus, "HTTP 500"),
            (401, json!({}), FailureKind::HttpStatus, "HTTP 401"),
            (
                200,
                json!({"error": {"errorSummary": "No credit",
                "errorCauses": [{"errorSummary": "Account suspended"}]}}),
                FailureKind::HookError,
                "No credit (Account suspended)",
            ),
            (200, json!({}), FailureKind::MissingCommand, "no commands"),
            (
                200,
                json!({"commands": []}),
                FailureKind::MissingCommand,
                "no command of type",
            ),
            (
                200,
                json!({"commands": [{"type": "com.okta.other", "value": []}]}),
                FailureKind::MissingCommand,
                "no command of type",
            ),
            (
                200,
                json!({"commands": [{"type": ACTION_COMMAND, "value": []}]}),
                FailureKind::MissingCommand,
                "has no value",
            ),
            (
                200,
                json!({"commands": [{"type": ACTION_COMMAND}]}),
                FailureKind::MissingCommand,
                "has no value",
            ),
            (
                200,
                json!({"commands": [{"type": ACTION_COMMAND, "value": [{"status": "MAYBE"}]}]}),
                FailureKind::InvalidResponse,
                "unknown status \"MAYBE\"",
            ),
            (
                200,
                json!({"commands": [{"type": ACTION_COMMAND, "value": [{}]}]}),
                FailureKind::InvalidResponse,
                "no status",
            ),
            (
                200,
                json!({"commands": {"type": ACTION_COMMAND}}),
                FailureKind::InvalidResponse,
                "not the telephony hook answer",
            ),
            (
                200,
                json!([1, 2]),
                FailureKind::InvalidResponse,
                "not the telephony hook answer",
            ),
        ];
        for (status, body, expected, needle) in table {
            let v = verdict(status, body.clone());
            assert_eq!(kind(&v), Some(expected), "{status} {body}");
            let Verdict::Failed(f) = v else {
                unreachable!()
            };
            assert!(f.reason().contains(needle), "{}: {needle}", f.reason());
        }
        let v = judge(200, None, b"{not json");
        assert_eq!(kind(&v), Some(FailureKind::InvalidResponse));
        assert!(v.summary().contains("not JSON"), "{}", v.summary());
    }

    #[test]
    fn redirects_fail_and_name_the_target() {
        let v = judge(302, Some("https://elsewhere.example/x"), b"");
        let Verdict::Failed(f) = v else { panic!() };
        assert_eq!(f.kind, FailureKind::HttpStatus);
        assert!(f.detail.contains("not followed") && f.detail.contains("elsewhere.example"));
    }

    #[test]
    fn error_wins_over_a_command_and_long_text_is_clipped() {
        let long = "x".repeat(1000);
        let body = json!({"error": {"errorSummary": long},
            "commands": [{"type": ACTION_COMMAND, "value": [{"status": "SUCCESSFUL"}]}]});
        let Verdict::Failed(f) = verdict(200, body) else {
            panic!()
        };
        assert_eq!(f.kind, FailureKind::HookError);
        assert!(f.detail.len() < 210);
        assert!(FailureKind::Timeout.is_retried() && FailureKind::Connection.is_retried());
        assert!(!FailureKind::HttpStatus.is_retried() && !FailureKind::ProviderFailed.is_retried());
        // Asking again goes to the same refused address.
        assert!(!FailureKind::EgressRefused.is_retried());
    }
}
