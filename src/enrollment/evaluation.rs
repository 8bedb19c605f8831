//! The answer to one sign-in: which policy and rule applied, and which
//! authenticators the user must, may or may not enroll, with the reason
//! for each.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::authenticator::{Authenticator, Authenticators, PhoneMethod};
use crate::resources::{Enrollment, RuleEnroll};

/// Which numbered rule of the product document decided something.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleId {
    /// The applied policy's own setting (or its silence: not allowed).
    #[serde(rename = "rule-1-policy")]
    Policy,
    #[serde(rename = "rule-2-password")]
    Password,
    #[serde(rename = "rule-3-email")]
    Email,
    #[serde(rename = "rule-4-phone")]
    Phone,
    #[serde(rename = "rule-5-recovery")]
    Recovery,
    #[serde(rename = "rule-6-first-sign-in")]
    FirstSignIn,
    #[serde(rename = "rule-7-app")]
    App,
}

impl RuleId {
    /// The id as serialized, for example `rule-2-password`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "rule-1-policy",
            Self::Password => "rule-2-password",
            Self::Email => "rule-3-email",
            Self::Phone => "rule-4-phone",
            Self::Recovery => "rule-5-recovery",
            Self::FirstSignIn => "rule-6-first-sign-in",
            Self::App => "rule-7-app",
        }
    }
}

/// Why an authenticator got its decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    pub authenticator: Authenticator,
    pub decision: Enrollment,
    /// The rule that decided last.
    pub rule: RuleId,
    pub message: Cow<'static, str>,
    /// A recovery authenticator that is not SSO-enabled: the enrollment
    /// policy does not display it, yet the decision above holds (rule 5).
    /// Serialized only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub not_displayed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How the app's needs (rule 7) are met.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppOutcome {
    /// The user has enrolled (or is auto-enrolled in) an allowed
    /// authenticator the app accepts.
    pub satisfied: bool,
    /// That authenticator, the first in Okta's order.
    pub satisfied_by: Option<Authenticator>,
    /// When not satisfied: the allowed authenticators the user may enroll
    /// to satisfy the app; enrolling any one of them is enough.
    pub enroll_one_of: Authenticators,
    pub message: Cow<'static, str>,
}

/// The answer for one sign-in. It borrows names from the engine and the
/// request (`'a`) so that evaluating does not copy them; see
/// [`Evaluation::into_owned`] to keep one longer. Deserializing gives an
/// `Evaluation<'static>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation<'a> {
    /// The policy that applies. The engine always names one (without a
    /// policy it refuses: [`super::EvaluateError::NoDefaultPolicy`]); `None`
    /// only in answers read from elsewhere.
    pub policy: Option<Cow<'a, str>>,
    /// That policy's priority.
    pub priority: Option<i32>,
    /// The user's group through which the policy applies (the smallest name
    /// when several do); `None` for the default policy.
    pub matched_group: Option<Cow<'a, str>>,
    /// Why this policy (or none) applies.
    pub policy_reason: Cow<'static, str>,
    /// The first rule of the policy whose conditions match.
    pub rule: Option<Cow<'a, str>>,
    /// That rule's setting: LOGIN, CHALLENGE or NEVER.
    pub rule_enroll: Option<RuleEnroll>,
    /// Why this rule (or none) decides.
    pub rule_reason: Cow<'static, str>,
    /// Whether the user is prompted to enroll missing required
    /// authenticators at this sign-in.
    pub prompt: bool,
    pub required: Authenticators,
    pub optional: Authenticators,
    pub not_allowed: Authenticators,
    /// Required authenticators the user has not enrolled, the
    /// automatically enrolled email aside, whether or not they are prompted.
    pub missing: Authenticators,
    /// What the user enrolls now: `missing` when the rule prompts, else
    /// nothing.
    pub enroll_now: Authenticators,
    /// Enrolled for the user without a prompt (the email, rule 3).
    pub auto_enrolled: Authenticators,
    /// How the phone may be enrolled and verified when it is allowed (both
    /// methods, whatever the policy's per-method values: rule 4).
    pub phone_methods: Cow<'static, [PhoneMethod]>,
    /// The app's needs, when the request names an app.
    pub app_requirement: Option<AppOutcome>,
    /// One per authenticator in `required`, `optional` or `notAllowed`.
    pub reasons: Vec<Reason>,
    /// Everything else worth knowing: federation, recovery authenticators
    /// the enrollment policy does not display, skipped zone rules.
    pub notes: Vec<Cow<'static, str>>,
}

fn owned(text: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    text.map(|t| Cow::Owned(t.into_owned()))
}

impl Evaluation<'_> {
    /// The same answer, owning its names.
    pub fn into_owned(self) -> Evaluation<'static> {
        Evaluation {
            policy: owned(self.policy),
            priority: self.priority,
            matched_group: owned(self.matched_group),
            policy_reason: self.policy_reason,
            rule: owned(self.rule),
            rule_enroll: self.rule_enroll,
            rule_reason: self.rule_reason,
            prompt: self.prompt,
            required: self.required,
            optional: self.optional,
            not_allowed: self.not_allowed,
            missing: self.missing,
            enroll_now: self.enroll_now,
            auto_enrolled: self.auto_enrolled,
            phone_methods: self.phone_methods,
            app_requirement: self.app_requirement,
            reasons: self.reasons,
            notes: self.notes,
        }
    }

    /// The decision about one authenticator, if it is in any list.
    pub fn decision(&self, a: Authenticator) -> Option<Enrollment> {
        self.reasons
            .iter()
            .find(|r| r.authenticator == a)
            .map(|r| r.decision)
    }

    /// The reason recorded for one authenticator.
    pub fn reason(&self, a: Authenticator) -> Option<&Reason> {
        self.reasons.iter().find(|r| r.authenticator == a)
    }
}
