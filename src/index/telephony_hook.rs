//! A TelephonyHook in the runtime: [`HookConfig`], the hook ready to be
//! called with its Secrets resolved, and the hook's [`ObjectState`].
//! Which hook is the org's active one, and which fallbacks resolve, is
//! decided across hooks by [`super::build`].

use serde::Serialize;

use super::{ObjectState, Secret, Secrets, resolve};
use crate::resources::{DEFAULT_MESSAGE_TEMPLATE, TelephonyHook, parse_duration_millis, reason};

/// A header sent to a hook.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderConfig {
    pub name: String,
    /// Literal header values are shown; values from Secrets are redacted.
    pub value: HeaderValue,
}

/// A header's value: literal, or from a Secret.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum HeaderValue {
    Literal(String),
    Secret(Secret),
}

impl HeaderValue {
    pub fn as_text(&self) -> String {
        match self {
            Self::Literal(s) => s.clone(),
            Self::Secret(s) => s.as_text(),
        }
    }
}

/// A telephony hook ready to be called.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookConfig {
    pub name: String,
    /// Shown with its userinfo (a credential) redacted.
    #[serde(serialize_with = "crate::egress::serialize_redacted_url")]
    pub url: String,
    pub insecure_http: bool,
    pub auth_header: String,
    pub auth_secret: Secret,
    pub headers: Vec<HeaderConfig>,
    pub timeout_millis: u64,
    pub message_template: String,
    /// Name of the hook tried when this one fails.
    pub fallback: Option<String>,
}

/// The hook's runtime form and its state. A hook whose Secrets cannot be
/// resolved is accepted but has no runtime form.
pub(super) fn from_resource(
    hook: &TelephonyHook,
    namespace: &str,
    secrets: &Secrets,
) -> (Option<HookConfig>, ObjectState) {
    let config = match hook_config(hook, namespace, secrets) {
        Ok(config) => config,
        Err(msg) => {
            let state = ObjectState::new(true, false, Some(false), reason::SECRET_NOT_FOUND, msg);
            return (None, state);
        }
    };
    let state = match (hook.spec.active, config.insecure_http) {
        (true, true) => ObjectState::new(
            true,
            true,
            Some(true),
            reason::INSECURE_HTTP,
            "in service for the org, over plain http:// (allowInsecureHttp)",
        ),
        (true, false) => ObjectState::new(
            true,
            true,
            Some(true),
            reason::ACTIVATED,
            "in service for the org",
        ),
        (false, _) => ObjectState::new(
            true,
            true,
            Some(false),
            reason::DEACTIVATED,
            "active: false; used only as a fallback or for previews",
        ),
    };
    (Some(config), state)
}

/// The hook with its Secrets resolved, or why one cannot be.
fn hook_config(
    hook: &TelephonyHook,
    namespace: &str,
    secrets: &Secrets,
) -> Result<HookConfig, String> {
    let spec = &hook.spec;
    let auth_secret = resolve(secrets, namespace, &hook.auth_secret())?;
    let mut headers = Vec::new();
    for (i, header) in spec.headers.iter().enumerate() {
        let value = match (&header.value, hook.header_secret(i)) {
            (Some(v), _) => HeaderValue::Literal(v.clone()),
            (None, Some(reference)) => {
                HeaderValue::Secret(resolve(secrets, namespace, &reference)?)
            }
            (None, None) => HeaderValue::Literal(String::new()),
        };
        headers.push(HeaderConfig {
            name: header.name.clone(),
            value,
        });
    }
    Ok(HookConfig {
        name: hook.metadata.name.clone().unwrap_or_default(),
        url: spec.url.clone(),
        insecure_http: spec.url.starts_with("http://"),
        auth_header: spec.auth.header.clone(),
        auth_secret,
        headers,
        timeout_millis: parse_duration_millis(&spec.timeout).unwrap_or(3_000),
        message_template: spec
            .message_template
            .clone()
            .unwrap_or_else(|| DEFAULT_MESSAGE_TEMPLATE.to_string()),
        fallback: spec.fallback.as_ref().map(|f| f.hook_ref.clone()),
    })
}
