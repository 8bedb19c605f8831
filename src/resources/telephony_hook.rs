//! `TelephonyHook`: an external web service that delivers SMS and voice
//! one-time passcodes, called the way Okta calls a telephony inline hook.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretKeyRef, SecretReference};

fn default_true() -> bool {
    true
}

fn default_timeout() -> String {
    "3s".to_string()
}

/// Default SMS text when a hook sets no `messageTemplate`.
pub const DEFAULT_MESSAGE_TEMPLATE: &str = "Your verification code is ${otpCode}";

/// Headers idplane sets itself; a custom header may not use these names.
pub const RESERVED_HEADERS: [&str; 4] = ["host", "content-type", "content-length", "accept"];

/// An external web service that sends SMS and voice one-time passcodes for
/// the org (the namespace). At most one hook is active per org; another hook
/// can serve as its fallback.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idplane.dev",
    version = "v1alpha1",
    kind = "TelephonyHook",
    plural = "telephonyhooks",
    singular = "telephonyhook",
    shortname = "th",
    shortname = "hook",
    category = "idplane",
    namespaced,
    status = "TelephonyHookStatus",
    doc = "An external web service that delivers SMS and voice one-time passcodes for the org (namespace), called with Okta's telephony inline hook contract.",
    printcolumn(
        name = "Active",
        type_ = "boolean",
        json_path = ".spec.active",
        description = "Whether this hook is meant to be in service"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the runtime can use this hook now"
    ),
    printcolumn(
        name = "Executions",
        type_ = "integer",
        json_path = ".status.metrics.executions",
        description = "Executions over the last 30 days"
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.metrics.failures",
        description = "Failed executions over the last 30 days"
    ),
    printcolumn(
        name = "Avg-ms",
        type_ = "integer",
        json_path = ".status.metrics.averageSuccessMillis",
        description = "Average duration of successful executions, milliseconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!self.url.startsWith('http://') || self.allowInsecureHttp").message("http:// is accepted only with allowInsecureHttp: true (loopback development); use https://").field_path(".url"))]
#[x_kube(validation = Rule::new("!has(self.headers) || self.headers.all(h, h.name.lowerAscii() != self.auth.header.lowerAscii())").message("a custom header may not repeat the auth header").field_path(".headers"))]
#[serde(rename_all = "camelCase")]
pub struct TelephonyHookSpec {
    /// Whether this hook is in service. At most one hook per org may be
    /// active; when two are, the oldest wins and the others report a Conflict.
    #[serde(default = "default_true")]
    pub active: bool,
    /// The invoke URL of the external service: `https://` only (at most 1024
    /// characters, no whitespace), or `http://` with `allowInsecureHttp`.
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// Accept an `http://` URL. Meant for a service on loopback during
    /// development; the status says when a hook runs without TLS.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// How the service recognises idplane: a header carrying a secret.
    pub auth: HookAuth,
    /// Extra headers sent with every request, each a literal value or a
    /// value read from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<HookHeader>,
    /// How long to wait for the service, as a duration (`500ms`, `3s`).
    /// Default `3s`, at most `10s`.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('10s')").message("timeout must be more than 0s and at most 10s"))]
    pub timeout: String,
    /// Another TelephonyHook in the same namespace to try when this one
    /// fails to deliver. It need not be active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<HookFallback>,
    /// SMS text sent to the user, with `${otpCode}` where the code goes.
    /// Default: `Your verification code is ${otpCode}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 640))]
    #[x_kube(validation = Rule::new("self.contains('${otpCode}')").message("messageTemplate must contain the ${otpCode} placeholder"))]
    pub message_template: Option<String>,
}

/// The authentication of requests to the hook (Okta's "authentication
/// field" and "authentication secret").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookAuth {
    /// Name of the header that carries the secret, for example
    /// `Authorization` or `X-Api-Key` (Okta's "authentication field").
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: String,
    /// The Secret key holding the header's value (Okta's "authentication
    /// secret", the client token).
    pub secret_ref: SecretKeyRef,
}

/// One custom header sent with every request to the hook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)").message("set exactly one of value and valueFrom"))]
#[x_kube(validation = Rule::new("!(self.name.lowerAscii() in ['host', 'content-type', 'content-length', 'accept'])").message("this header is reserved: idplane sets Host, Content-Type, Content-Length and Accept itself").field_path(".name"))]
#[serde(rename_all = "camelCase")]
pub struct HookHeader {
    /// Header name (an HTTP token). Host, Content-Type, Content-Length,
    /// Accept and the auth header are reserved.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Read the value from a Secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<HeaderValueSource>,
}

/// Where a header value comes from when it is not literal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValueSource {
    /// The Secret key holding the header value.
    pub secret_key_ref: SecretKeyRef,
}

/// The hook used when this one fails.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookFallback {
    /// Name of another TelephonyHook in the same namespace. It may not be
    /// this hook, and fallbacks may not form a cycle.
    #[schemars(length(min = 1, max = 253))]
    pub hook_ref: String,
}

impl TelephonyHook {
    /// The Secret key holding the auth header's value.
    pub fn auth_secret(&self) -> SecretReference<'_> {
        SecretReference {
            field: "spec.auth.secretRef".into(),
            secret: &self.spec.auth.secret_ref,
        }
    }

    /// The Secret key the header at `index` reads its value from, if any.
    pub fn header_secret(&self, index: usize) -> Option<SecretReference<'_>> {
        let from = self.spec.headers.get(index)?.value_from.as_ref()?;
        Some(SecretReference {
            field: format!("spec.headers[{index}].valueFrom.secretKeyRef"),
            secret: &from.secret_key_ref,
        })
    }

    /// Every Secret key the hook references: the auth secret, then the
    /// headers' in order.
    pub fn secret_references(&self) -> Vec<SecretReference<'_>> {
        let headers = (0..self.spec.headers.len()).filter_map(|i| self.header_secret(i));
        std::iter::once(self.auth_secret()).chain(headers).collect()
    }
}

/// What idplane observed about the hook.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelephonyHookStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Active`, `Ready`, and `Reconciling` or `Stalled` while
    /// True (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Execution numbers over a rolling window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<HookMetrics>,
    /// The last preview sent to this hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_preview: Option<HookPreviewResult>,
}

/// Execution numbers of a hook over the last `windowDays` days.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookMetrics {
    /// Length of the rolling window in days (30).
    pub window_days: u32,
    /// Calls made to the hook in the window.
    pub executions: u64,
    /// Calls the hook answered with a delivered status.
    pub successes: u64,
    /// Calls that failed (timeout, error, FAILED status, bad response).
    pub failures: u64,
    /// Average duration of successful calls, milliseconds.
    pub average_success_millis: u64,
    /// When the hook was last called (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_time: Option<String>,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
}

/// When something failed and why (never containing secrets or codes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// When it failed (RFC 3339).
    pub time: String,
    /// Why it failed.
    pub reason: String,
}

/// The outcome of the last preview request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookPreviewResult {
    /// When the preview was sent (RFC 3339).
    pub time: String,
    /// How idplane judged the hook's answer.
    pub result: String,
}

#[cfg(test)]
mod tests {
    use super::TelephonyHook;

    #[test]
    fn secret_references_name_their_fields_in_order() {
        let hook: TelephonyHook = serde_yaml::from_str(
            "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata: {name: h}\n\
             spec:\n  url: https://hook.example\n  auth: {header: X-Key, secretRef: {name: auth, key: k}}\n  \
             headers:\n  - {name: X-Org, value: acme}\n  - {name: X-Tenant, valueFrom: {secretKeyRef: {name: tenant, key: t}}}\n",
        )
        .unwrap();
        let refs: Vec<(String, &str)> = hook
            .secret_references()
            .into_iter()
            .map(|r| (r.field, r.secret.name.as_str()))
            .collect();
        assert_eq!(
            refs,
            [
                ("spec.auth.secretRef".to_string(), "auth"),
                (
                    "spec.headers[1].valueFrom.secretKeyRef".to_string(),
                    "tenant"
                ),
            ]
        );
        assert!(hook.header_secret(0).is_none());
    }
}
