//! `EnrollmentPolicy`: which authenticators the users of some groups must,
//! may, or may not enroll, evaluated in priority order (Okta's MFA
//! enrollment policy, called an authenticator enrollment policy there).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Condition;

fn default_true() -> bool {
    true
}

/// Which authenticators the users of some groups must, may, or may not
/// enroll. Policies are evaluated in `priority` order; the one with
/// `default: true` is the org's catch-all, evaluated last.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "idplane.dev",
    version = "v1alpha1",
    kind = "EnrollmentPolicy",
    plural = "enrollmentpolicies",
    singular = "enrollmentpolicy",
    shortname = "ep",
    category = "idplane",
    namespaced,
    status = "EnrollmentPolicyStatus",
    doc = "Which authenticators the users of some groups must, may, or may not enroll, in priority order.",
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        description = "Lower is evaluated first"
    ),
    printcolumn(
        name = "Default",
        type_ = "boolean",
        json_path = ".spec.default",
        description = "The org's catch-all policy"
    ),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".spec.active"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Summary",
        type_ = "string",
        json_path = ".status.summary",
        description = "What the policy asks of users"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!self.default || size(self.groups) == 0").message("the default policy applies to everyone and must not list groups").field_path(".groups"))]
#[x_kube(validation = Rule::new("self.default || size(self.groups) > 0").message("list at least one group, or set default: true").field_path(".groups"))]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentPolicySpec {
    /// Evaluation order, 1 first. Unique within the org.
    #[schemars(range(min = 1, max = 1000000))]
    pub priority: i32,
    /// Free text for people reading the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Whether the policy is evaluated at all.
    #[serde(default = "default_true")]
    pub active: bool,
    /// Marks the org's catch-all policy: it applies to everyone no other
    /// policy matched, is evaluated last, lists no groups, and there is at
    /// most one per org.
    #[serde(default, rename = "default")]
    pub is_default: bool,
    /// Names of the groups whose users this policy applies to.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    #[x_kube(validation = Rule::new("self.all(g, size(g) > 0)").message("group names may not be empty"))]
    pub groups: Vec<String>,
    /// The authenticators and whether users must, may or may not enroll them.
    /// Authenticators not listed are not allowed.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub authenticators: Vec<AuthenticatorSetting>,
    /// Ordered rules; the first one whose conditions match decides whether
    /// the user is prompted to enroll.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub rules: Vec<EnrollmentRule>,
}

/// Okta's authenticator keys that an enrollment policy can configure. The
/// password (`okta_password`) is not among them: it is always required
/// unless the user signs in through social auth or inbound federation.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum AuthenticatorKey {
    #[serde(rename = "okta_email")]
    OktaEmail,
    #[serde(rename = "phone_number")]
    PhoneNumber,
    #[serde(rename = "security_question")]
    SecurityQuestion,
    #[serde(rename = "webauthn")]
    Webauthn,
    #[serde(rename = "okta_verify")]
    OktaVerify,
    #[serde(rename = "google_otp")]
    GoogleOtp,
    #[serde(rename = "duo")]
    Duo,
    #[serde(rename = "rsa_token")]
    RsaToken,
    #[serde(rename = "symantec_vip")]
    SymantecVip,
    #[serde(rename = "yubikey_token")]
    YubikeyToken,
    #[serde(rename = "external_idp")]
    ExternalIdp,
}

impl AuthenticatorKey {
    /// Every configurable key, in Okta's order.
    pub const ALL: [AuthenticatorKey; 11] = [
        Self::OktaEmail,
        Self::PhoneNumber,
        Self::SecurityQuestion,
        Self::Webauthn,
        Self::OktaVerify,
        Self::GoogleOtp,
        Self::Duo,
        Self::RsaToken,
        Self::SymantecVip,
        Self::YubikeyToken,
        Self::ExternalIdp,
    ];

    /// Position in [`AuthenticatorKey::ALL`] (the declaration order).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The key as written in manifests and API calls (the serde names).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OktaEmail => "okta_email",
            Self::PhoneNumber => "phone_number",
            Self::SecurityQuestion => "security_question",
            Self::Webauthn => "webauthn",
            Self::OktaVerify => "okta_verify",
            Self::GoogleOtp => "google_otp",
            Self::Duo => "duo",
            Self::RsaToken => "rsa_token",
            Self::SymantecVip => "symantec_vip",
            Self::YubikeyToken => "yubikey_token",
            Self::ExternalIdp => "external_idp",
        }
    }

    /// A short human name, used in summaries.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::OktaEmail => "email",
            Self::PhoneNumber => "phone",
            Self::SecurityQuestion => "security question",
            Self::Webauthn => "webauthn",
            Self::OktaVerify => "okta verify",
            Self::GoogleOtp => "google authenticator",
            Self::Duo => "duo",
            Self::RsaToken => "rsa securid",
            Self::SymantecVip => "symantec vip",
            Self::YubikeyToken => "yubikey",
            Self::ExternalIdp => "idp",
        }
    }

    /// Parses a key as written in manifests.
    pub fn parse(text: &str) -> Option<Self> {
        // `==` on text compares lengths first: cheap enough for each request key.
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// Whether users must, may, or may not enroll an authenticator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Enrollment {
    Required,
    Optional,
    NotAllowed,
}

impl Enrollment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "REQUIRED",
            Self::Optional => "OPTIONAL",
            Self::NotAllowed => "NOT_ALLOWED",
        }
    }
}

/// One authenticator of the policy. `phone_number` carries `methods`
/// (SMS and voice are configured separately); every other key carries
/// `enroll`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.key == 'phone_number' ? (has(self.methods) && !has(self.enroll)) : (has(self.enroll) && !has(self.methods))").message("phone_number takes methods {sms, voice}; every other authenticator takes enroll"))]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorSetting {
    /// Okta's authenticator key: okta_email, phone_number,
    /// security_question, webauthn, okta_verify, google_otp, duo, rsa_token,
    /// symantec_vip, yubikey_token or external_idp. The password
    /// (okta_password) is not configurable here.
    pub key: AuthenticatorKey,
    /// REQUIRED, OPTIONAL or NOT_ALLOWED (every key but phone_number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<Enrollment>,
    /// For phone_number only: SMS and voice, each with its own value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<PhoneMethods>,
}

/// SMS and voice settings of the phone authenticator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhoneMethods {
    /// REQUIRED, OPTIONAL or NOT_ALLOWED for SMS.
    pub sms: Enrollment,
    /// REQUIRED, OPTIONAL or NOT_ALLOWED for voice calls.
    pub voice: Enrollment,
}

/// Whether a matching rule prompts the user to enroll.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RuleEnroll {
    /// Prompt at sign-in for any missing required authenticator.
    Login,
    /// Accepted as a synonym of LOGIN: enrolling at the first challenge and
    /// at sign-on are no longer different.
    Challenge,
    /// Never prompt.
    Never,
}

impl RuleEnroll {
    /// Whether the rule prompts the user (CHALLENGE means LOGIN).
    pub fn prompts(self) -> bool {
        !matches!(self, Self::Never)
    }
}

/// One rule of the policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentRule {
    /// Name of the rule, shown in evaluation results.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// LOGIN (prompt at sign-in), CHALLENGE (same as LOGIN) or NEVER.
    pub enroll: RuleEnroll,
    /// When the rule applies. No conditions: it applies to everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<RuleConditions>,
}

/// Conditions of a rule. Okta's app conditions are not supported in
/// enrollment policies: the policy is evaluated at every sign-in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.app)").message("app conditions are not supported in enrollment policies: the policy is evaluated at every sign-in, whatever the app").field_path(".app"))]
#[serde(rename_all = "camelCase")]
pub struct RuleConditions {
    /// Users the rule does not apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<PeopleCondition>,
    /// Network zones, as CIDRs, the client must (or must not) be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCondition>,
    /// Not supported: present only so that it is refused with a clear message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 0, "x-kubernetes-preserve-unknown-fields" = true))]
    pub app: Option<serde_json::Map<String, serde_json::Value>>,
}

/// People conditions of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeopleCondition {
    /// User conditions.
    #[serde(default)]
    pub users: UserCondition,
}

/// User conditions of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCondition {
    /// User ids the rule does not apply to.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub exclude: Vec<String>,
}

/// Network condition of a rule: where the client connects from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.connection == 'ANYWHERE' ? (size(self.include) == 0 && size(self.exclude) == 0) : (size(self.include) + size(self.exclude) > 0)").message("connection ZONE needs include or exclude CIDRs; ANYWHERE takes none"))]
#[serde(rename_all = "camelCase")]
pub struct NetworkCondition {
    /// ANYWHERE, or ZONE to use `include` / `exclude`.
    pub connection: NetworkConnection,
    /// CIDRs (for example 10.0.0.0/8 or 2001:db8::/32) the client IP must be in.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("each entry must be a CIDR such as 10.0.0.0/8"))]
    pub include: Vec<String>,
    /// CIDRs the client IP must not be in.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("each entry must be a CIDR such as 10.0.0.0/8"))]
    pub exclude: Vec<String>,
}

/// Where a client may connect from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NetworkConnection {
    Anywhere,
    Zone,
}

/// What idplane observed about the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Ready`, `Shadowed` when the policy can never apply, and
    /// `DefaultPolicy` (False when the org has no active default policy:
    /// users no policy covers are then refused enrollment answers), and
    /// `Stalled` while True (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One line, for example `required: email, phone; optional: webauthn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}
