//! What the caller tells the engine about one sign-in, as received (keys are
//! strings so that an unknown one is reported with its field), and the
//! checked form the engine works on.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::EvaluateError;
use super::authenticator::{Authenticator, Authenticators, PhoneMethod};
use super::network::client_address;

/// One sign-in to evaluate: the body of
/// `POST /v1/orgs/{org}/enrollment/evaluate`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluationRequest {
    /// Who signs in.
    #[serde(deserialize_with = "crate::http::wire::object")]
    pub user: SignInUser,
    /// The user's first sign-in: the enrollment policy's and the recovery's
    /// authenticators are enrolled together (rule 6).
    #[serde(default)]
    pub first_sign_in: bool,
    /// The recovery authenticators of the password policy that applies to
    /// the user.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::http::wire::objects"
    )]
    pub recovery: Vec<RecoveryAuthenticator>,
    /// What the app being signed in to asks for, if anything (rule 7).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::wire::optional_object"
    )]
    pub app: Option<AppNeeds>,
    /// Where the client connects from, for rules with a network zone.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::http::wire::optional_object"
    )]
    pub network: Option<ClientNetwork>,
}

/// The user who signs in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignInUser {
    /// The user id, matched against rules' `people.users.exclude`.
    pub id: String,
    /// Names of the user's groups, in any order.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Authenticators the user has enrolled, the password included.
    #[serde(default)]
    pub enrolled: Vec<EnrolledAuthenticator>,
    /// Signs in through social auth or inbound federation: no password.
    #[serde(default)]
    pub federated: bool,
}

/// An enrolled authenticator: a plain key (`"okta_email"`) or a key with
/// the phone's methods (`{"key": "phone_number", "methods": ["sms"]}`).
/// Either phone method counts as the phone being enrolled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum EnrolledAuthenticator {
    Key(String),
    WithMethods {
        key: String,
        #[serde(default)]
        methods: Vec<String>,
    },
}

impl EnrolledAuthenticator {
    /// The authenticator key, whichever the form.
    pub fn key(&self) -> &str {
        match self {
            Self::Key(key) | Self::WithMethods { key, .. } => key,
        }
    }
}

impl From<&str> for EnrolledAuthenticator {
    fn from(key: &str) -> Self {
        Self::Key(key.to_string())
    }
}

/// A recovery authenticator of the password policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoveryAuthenticator {
    pub key: String,
    /// Also usable to sign in. The enrollment policy does not display
    /// recovery authenticators that are not, but rule 5 holds for them all.
    /// Absent means false.
    #[serde(default)]
    pub sso_enabled: bool,
}

/// What the app asks of the sign-in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppNeeds {
    /// The app needs a possession factor (see [`Authenticator::POSSESSION`]).
    #[serde(default)]
    pub possession: bool,
    /// The app accepts any one of these; empty means any authenticator.
    #[serde(default)]
    pub authenticators: Vec<String>,
}

/// Where the client connects from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientNetwork {
    /// The client's IPv4 or IPv6 address, without a port.
    pub ip: String,
}

/// A request with its keys parsed: what evaluation works on.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CheckedRequest {
    pub(crate) enrolled: Authenticators,
    /// SSO-enabled recovery authenticators.
    pub(crate) recovery: Authenticators,
    /// Recovery authenticators that are not SSO-enabled: rule 5 holds for
    /// them, rule 6 does not, and the enrollment policy does not display
    /// them.
    pub(crate) recovery_hidden: Authenticators,
    /// (needs possession, accepted authenticators); `None` without an app.
    pub(crate) app: Option<(bool, Authenticators)>,
    pub(crate) ip: Option<IpAddr>,
}

fn key(text: &str, field: impl FnOnce() -> String) -> Result<Authenticator, EvaluateError> {
    Authenticator::parse(text).ok_or_else(|| EvaluateError::UnknownAuthenticator {
        field: field(),
        key: text.to_string(),
    })
}

impl EvaluationRequest {
    /// Parses every key and the client address; the first problem found is
    /// returned, naming its field.
    pub(crate) fn check(&self) -> Result<CheckedRequest, EvaluateError> {
        let mut checked = CheckedRequest::default();
        if self.user.id.is_empty() {
            return Err(EvaluateError::EmptyUserId);
        }
        for (i, enrolled) in self.user.enrolled.iter().enumerate() {
            let a = match enrolled {
                EnrolledAuthenticator::Key(text) => key(text, || format!("user.enrolled[{i}]"))?,
                EnrolledAuthenticator::WithMethods { key: text, methods } => {
                    let a = key(text, || format!("user.enrolled[{i}].key"))?;
                    if !methods.is_empty() && a != Authenticator::PhoneNumber {
                        return Err(EvaluateError::MethodsNotForKey {
                            field: format!("user.enrolled[{i}].methods"),
                            key: a,
                        });
                    }
                    for (j, method) in methods.iter().enumerate() {
                        if PhoneMethod::parse(method).is_none() {
                            return Err(EvaluateError::UnknownPhoneMethod {
                                field: format!("user.enrolled[{i}].methods[{j}]"),
                                method: method.clone(),
                            });
                        }
                    }
                    a
                }
            };
            checked.enrolled.insert(a);
        }
        for (i, recovery) in self.recovery.iter().enumerate() {
            let a = key(&recovery.key, || format!("recovery[{i}].key"))?;
            if a == Authenticator::OktaPassword {
                return Err(EvaluateError::PasswordNotRecovery {
                    field: format!("recovery[{i}].key"),
                });
            }
            if recovery.sso_enabled {
                checked.recovery.insert(a);
            } else {
                checked.recovery_hidden.insert(a);
            }
        }
        // An entry that is SSO-enabled anywhere in the list is not hidden.
        checked.recovery_hidden = checked.recovery_hidden.minus(checked.recovery);
        if let Some(app) = &self.app {
            let mut accepted = Authenticators::default();
            for (i, text) in app.authenticators.iter().enumerate() {
                accepted.insert(key(text, || format!("app.authenticators[{i}]"))?);
            }
            checked.app = Some((app.possession, accepted));
        }
        if let Some(network) = &self.network {
            checked.ip =
                Some(
                    client_address(&network.ip).ok_or_else(|| EvaluateError::InvalidIp {
                        value: network.ip.clone(),
                    })?,
                );
        }
        Ok(checked)
    }
}
