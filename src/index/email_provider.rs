//! An EmailProvider in the runtime: [`ProviderConfig`], the org's SMTP
//! server with its password resolved (or why it cannot be), and the
//! provider's [`ObjectState`].

use serde::Serialize;

use super::{ObjectState, Secret, Secrets, resolve};
use crate::resources::{EmailProvider, TlsMode, parse_duration_millis, reason};

/// The org's SMTP provider.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderConfig {
    pub name: String,
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub username: String,
    /// The password, or why it cannot be read (the Secret or its key is
    /// missing). Without it the provider still holds the org's mail while
    /// enabled: the mail waits for the Secret, never going to the default
    /// provider, and nothing connects.
    #[serde(serialize_with = "password_state")]
    pub password: Result<Secret, String>,
    pub tls: TlsMode,
    pub max_attempts: u32,
    pub initial_delay_millis: u64,
    pub multiplier: u32,
    pub max_delay_millis: u64,
}

fn password_state<S: serde::Serializer>(
    password: &Result<Secret, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match password {
        Ok(v) => v.serialize(s),
        Err(reason) => s.serialize_str(&format!("<unavailable: {reason}>")),
    }
}

/// The provider's runtime form and its state. A provider always has a
/// runtime form: without its password it still holds the org's mail.
pub(super) fn from_resource(
    provider: &EmailProvider,
    namespace: &str,
    secrets: &Secrets,
) -> (ProviderConfig, ObjectState) {
    let config = provider_config(provider, namespace, secrets);
    let state = match (config.password.as_ref().err(), config.enabled) {
        (Some(msg), true) => ObjectState::new(
            true,
            false,
            None,
            reason::SECRET_NOT_FOUND,
            format!(
                "{msg}; the org's mail waits for it (never the default provider while this one is enabled)"
            ),
        ),
        (Some(msg), false) => {
            ObjectState::new(true, false, None, reason::SECRET_NOT_FOUND, msg.clone())
        }
        (None, true) => ObjectState::new(
            true,
            true,
            None,
            reason::READY,
            "the org's mail goes through this provider",
        ),
        (None, false) => ObjectState::new(
            true,
            true,
            None,
            reason::DEACTIVATED,
            "enabled: false; the org's mail goes through the default provider",
        ),
    };
    (config, state)
}

fn provider_config(p: &EmailProvider, namespace: &str, secrets: &Secrets) -> ProviderConfig {
    let spec = &p.spec;
    let password = resolve(secrets, namespace, &p.password_secret());
    ProviderConfig {
        name: p.metadata.name.clone().unwrap_or_default(),
        enabled: spec.enabled,
        host: spec.host.clone(),
        port: u16::try_from(spec.port).unwrap_or(25),
        username: spec.username.clone(),
        password,
        tls: spec.tls,
        max_attempts: spec.retry.max_attempts,
        initial_delay_millis: parse_duration_millis(&spec.retry.initial_delay).unwrap_or(60_000),
        multiplier: spec.retry.multiplier,
        max_delay_millis: parse_duration_millis(&spec.retry.max_delay).unwrap_or(3_600_000),
    }
}
