//! `EmailProvider`: the org's custom SMTP server (at most one per org), and
//! `EmailDomain`: the sender address of one brand.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretKeyRef, SecretReference};
use super::telephony_hook::FailureRecord;

/// The org's custom SMTP server. While `enabled`, all of the org's mail goes
/// through it and never falls back to the installation's default provider.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idplane.dev",
    version = "v1alpha1",
    kind = "EmailProvider",
    plural = "emailproviders",
    singular = "emailprovider",
    shortname = "smtp",
    category = "idplane",
    namespaced,
    status = "EmailProviderStatus",
    doc = "The org's custom SMTP server (at most one per org, namespace).",
    printcolumn(
        name = "Enabled",
        type_ = "boolean",
        json_path = ".spec.enabled",
        description = "Whether the org's mail uses this provider"
    ),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Sent", type_ = "integer", json_path = ".status.metrics.sent"),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.metrics.failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.tls != 'none' || self.allowInsecure").message("tls: none sends the password in clear text; it needs allowInsecure: true").field_path(".tls"))]
#[serde(rename_all = "camelCase")]
pub struct EmailProviderSpec {
    /// A name for people, for example `Corporate SMTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub alias: Option<String>,
    /// The "use custom email provider" switch. Off: the org's mail goes
    /// through the installation's default provider.
    #[serde(default)]
    pub enabled: bool,
    /// Host name or IP address of the SMTP server, for example `smtp.example.com`.
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$|^[0-9A-Fa-f:.]+$"
        )
    )]
    pub host: String,
    /// TCP port of the SMTP server, a number (587 for STARTTLS, 465 for
    /// implicit TLS, 25 for relays).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// SMTP username.
    #[schemars(length(min = 1, max = 255))]
    pub username: String,
    /// The Secret key holding the SMTP password (for Google Workspace, an
    /// app password).
    pub password_secret_ref: SecretKeyRef,
    /// `starttls` (default), `implicit` (TLS from the first byte, port 465),
    /// or `none` (only with `allowInsecure`).
    #[serde(default)]
    pub tls: TlsMode,
    /// Accept `tls: none`. For test servers on loopback only.
    #[serde(default)]
    pub allow_insecure: bool,
    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// How the connection to the SMTP server is secured.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Implicit,
    /// No TLS at all.
    None,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_delay() -> String {
    "1m".into()
}
fn default_multiplier() -> u32 {
    4
}
fn default_max_delay() -> String {
    "1h".into()
}

/// Retry of transient failures: the n-th retry waits
/// `initialDelay × multiplier^(n−1)`, capped at `maxDelay`, with jitter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.initialDelay) <= duration(self.maxDelay)").message("initialDelay may not be longer than maxDelay").field_path(".initialDelay"))]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Delivery attempts in all, the first included (default 5).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 50))]
    pub max_attempts: u32,
    /// Wait before the first retry (default `1m`).
    #[serde(default = "default_initial_delay")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub initial_delay: String,
    /// Growth of the wait from one retry to the next (default 4).
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1, max = 100))]
    pub multiplier: u32,
    /// Longest wait between two attempts (default `1h`).
    #[serde(default = "default_max_delay")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub max_delay: String,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_delay: default_initial_delay(),
            multiplier: default_multiplier(),
            max_delay: default_max_delay(),
        }
    }
}

impl EmailProvider {
    /// The Secret key holding the SMTP password.
    pub fn password_secret(&self) -> SecretReference<'_> {
        SecretReference {
            field: "spec.passwordSecretRef".into(),
            secret: &self.spec.password_secret_ref,
        }
    }

    /// Every Secret key the provider references.
    pub fn secret_references(&self) -> Vec<SecretReference<'_>> {
        vec![self.password_secret()]
    }
}

/// What idplane observed about the provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailProviderStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Verified`, `Ready`, and `Reconciling` or `Stalled`
    /// while True (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Delivery numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MailMetrics>,
    /// The last test email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_test: Option<TestEmailResult>,
}

/// Delivery numbers of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MailMetrics {
    /// Messages delivered.
    pub sent: u64,
    /// Attempts that failed transiently and were retried.
    pub retried: u64,
    /// Messages given up on.
    pub failed: u64,
    /// Messages waiting for delivery now.
    pub queued: u64,
    /// Average time from accept to delivery, milliseconds.
    pub average_delivery_millis: u64,
    /// When a message was last delivered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_time: Option<String>,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
}

/// The outcome of the last test email.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestEmailResult {
    /// When the test was sent (RFC 3339).
    pub time: String,
    /// The recipient.
    pub to: String,
    /// The SMTP outcome.
    pub result: String,
}

fn default_validation_subdomain() -> String {
    "mail".into()
}

/// The sender address of one brand: mail for that brand goes out as
/// `displayName <userName@domain>` once the domain is verified in DNS.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "idplane.dev",
    version = "v1alpha1",
    kind = "EmailDomain",
    plural = "emaildomains",
    singular = "emaildomain",
    shortname = "edom",
    category = "idplane",
    namespaced,
    status = "EmailDomainStatus",
    doc = "The sender address of one brand, verified through a DNS TXT record.",
    printcolumn(name = "Brand", type_ = "string", json_path = ".spec.brand"),
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(
        name = "Sender",
        type_ = "string",
        json_path = ".spec.userName",
        description = "Local part of the sender address"
    ),
    printcolumn(
        name = "Validation",
        type_ = "string",
        json_path = ".status.validationStatus"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EmailDomainSpec {
    /// The brand whose mail uses this sender.
    #[schemars(length(min = 1, max = 253))]
    pub brand: String,
    /// The sender's domain, for example `example.com`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub domain: String,
    /// Local part of the sender address, for example `noreply`.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
    )]
    pub user_name: String,
    /// The sender's name shown in the inbox, for example `Acme Support`.
    #[schemars(length(min = 1, max = 255))]
    pub display_name: String,
    /// Subdomain under which the verification TXT record is published
    /// (default `mail`, giving `_idplane.mail.example.com`).
    #[serde(default = "default_validation_subdomain")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub validation_subdomain: String,
}

/// Where the domain's DNS verification stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationStatus {
    #[default]
    NotStarted,
    Polling,
    Verified,
    Error,
}

/// A DNS record to publish so that the domain can be verified.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Fully qualified name of the record.
    pub fqdn: String,
    /// Record type, `TXT`.
    pub record_type: String,
    /// The value the record must hold.
    pub verification_value: String,
}

/// What idplane observed about the domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmailDomainStatus {
    /// NOT_STARTED, POLLING, VERIFIED or ERROR.
    #[serde(default)]
    pub validation_status: ValidationStatus,
    /// The records to publish in DNS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_validation_records: Vec<DnsRecord>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Verified` (the DNS record), `Ready`, and `Reconciling`
    /// or `Stalled` while True (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
