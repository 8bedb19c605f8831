//! The enrollment policy engine: at each sign-in, which authenticators the
//! user must enroll, may enroll, or may not use, and whether to prompt now.
//!
//! It owns the rules of the product document (policy and rule selection,
//! the password, the email, the phone's SMS and voice, the password policy's
//! recovery, the first sign-in, the app's needs), the form of a policy it
//! evaluates ([`PolicyConfig`]), the per-org index that makes an evaluation
//! cheap ([`EnrollmentEngine`]), the detection of policies that can never
//! apply ([`shadowed`]), a plain-text rendering ([`explain_table`]) and its
//! route ([`routes`]). The engine is pure: no I/O, no clock. It does not
//! validate policies (the validator does) or print anything; see
//! `docs/enrollment.md` for the rules, examples and every decision taken
//! where the rules were silent.

mod authenticator;
mod engine;
mod evaluation;
mod explain;
mod group_index;
mod network;
mod openapi;
mod policy;
mod request;
mod routes;
mod shadowed;

pub use authenticator::{Authenticator, Authenticators, AuthenticatorsIter, PhoneMethod};
pub use engine::EnrollmentEngine;
pub use evaluation::{AppOutcome, Evaluation, Reason, RuleId};
pub use explain::explain_table;
pub use network::{Cidr, client_address};
pub use openapi::operations;
pub use policy::PolicyConfig;
pub use request::{
    AppNeeds, ClientNetwork, EnrolledAuthenticator, EvaluationRequest, RecoveryAuthenticator,
    SignInUser,
};
pub use routes::{Engines, routes};
pub use shadowed::{Shadowed, shadowed};

/// A request the engine cannot evaluate. Each message names the field.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EvaluateError {
    /// No active policy lists the user's groups and the org has no default
    /// policy. Refused, not answered with the password alone: that answer
    /// would let the user in without the MFA the org meant to require.
    #[error(
        "user.groups: no active EnrollmentPolicy lists any of the user's groups and the org has no default EnrollmentPolicy (spec.default: true); refused rather than answered with the password alone"
    )]
    NoDefaultPolicy,
    #[error("user.id: must not be empty")]
    EmptyUserId,
    #[error("{field}: unknown authenticator key \"{key}\"")]
    UnknownAuthenticator { field: String, key: String },
    #[error("{field}: unknown phone method \"{method}\"; use sms or voice")]
    UnknownPhoneMethod { field: String, method: String },
    #[error("{field}: only phone_number takes methods, not {key}")]
    MethodsNotForKey { field: String, key: Authenticator },
    #[error("{field}: okta_password is not a recovery authenticator")]
    PasswordNotRecovery { field: String },
    #[error("network.ip: \"{value}\" is not an IP address")]
    InvalidIp { value: String },
}
