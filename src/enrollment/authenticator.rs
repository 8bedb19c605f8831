//! The authenticators an evaluation talks about: the policy's configurable
//! keys plus the password, in Okta's order, with the facts the rules need
//! (which ones are possession factors, the phone's methods).

use serde::{Deserialize, Serialize};

use crate::resources::AuthenticatorKey;

/// An authenticator as it appears in an evaluation: every
/// [`AuthenticatorKey`] plus the password (`okta_password`), which policies
/// cannot configure.
/// Its name is the [`AuthenticatorKey`]'s (one list of names), the
/// password's [`PASSWORD`]; the variants after the password are in
/// [`AuthenticatorKey::ALL`]'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Authenticator {
    OktaPassword,
    OktaEmail,
    PhoneNumber,
    SecurityQuestion,
    Webauthn,
    OktaVerify,
    GoogleOtp,
    Duo,
    RsaToken,
    SymantecVip,
    YubikeyToken,
    ExternalIdp,
}

/// How many authenticators there are: the size of every per-authenticator
/// table in this module.
pub const COUNT: usize = 12;

impl Authenticator {
    /// Every authenticator in Okta's order, the password first. Every list of
    /// an evaluation is in this order.
    pub const ALL: [Authenticator; COUNT] = [
        Self::OktaPassword,
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

    /// Possession factors: what an app asking for "something the user has"
    /// accepts. Email, the password, the security question and external
    /// IdPs are not among them.
    pub const POSSESSION: [Authenticator; 8] = [
        Self::PhoneNumber,
        Self::Webauthn,
        Self::OktaVerify,
        Self::GoogleOtp,
        Self::Duo,
        Self::RsaToken,
        Self::SymantecVip,
        Self::YubikeyToken,
    ];

    /// Position in [`Authenticator::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// One bit per authenticator, at [`Authenticator::index`].
    pub const fn bit(self) -> u16 {
        1 << self.index()
    }

    /// The key as written in manifests and API calls.
    pub const fn as_str(self) -> &'static str {
        match self.policy_key() {
            Some(key) => key.as_str(),
            None => PASSWORD,
        }
    }

    /// Parses a key as written in API calls; `None` for an unknown key.
    pub fn parse(text: &str) -> Option<Self> {
        if text == PASSWORD {
            return Some(Self::OktaPassword);
        }
        AuthenticatorKey::parse(text).map(Self::from)
    }

    /// Whether an app asking for a possession factor accepts it.
    pub fn is_possession(self) -> bool {
        Self::POSSESSION.contains(&self)
    }

    /// The policy key, or `None` for the password (not configurable).
    pub const fn policy_key(self) -> Option<AuthenticatorKey> {
        match self.index() {
            0 => None,
            i => Some(AuthenticatorKey::ALL[i - 1]),
        }
    }
}

impl From<AuthenticatorKey> for Authenticator {
    fn from(key: AuthenticatorKey) -> Self {
        Self::ALL[key.index() + 1]
    }
}

/// The password's key: the one authenticator policies cannot configure.
pub const PASSWORD: &str = "okta_password";

/// Every key, in [`Authenticator::ALL`]'s order (for error messages).
const NAMES: [&str; COUNT] = {
    let mut names = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        names[i] = Authenticator::ALL[i].as_str();
        i += 1;
    }
    names
};

impl Serialize for Authenticator {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Authenticator {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, &NAMES))
    }
}

impl std::fmt::Display for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of authenticators, kept as one bit each and always listed in
/// Okta's order (the password first). Serialized as a JSON array of keys.
/// Every list of an [`Evaluation`](super::Evaluation) is one: no allocation.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Authenticators(u16);

impl Authenticators {
    /// No authenticator.
    pub const EMPTY: Authenticators = Authenticators(0);

    /// The set of the listed authenticators.
    pub const fn of(list: &[Authenticator]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Takes an authenticator or a reference to one.
    pub fn contains(&self, a: impl std::borrow::Borrow<Authenticator>) -> bool {
        self.0 & a.borrow().bit() != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Members in Okta's order.
    pub fn iter(&self) -> AuthenticatorsIter {
        AuthenticatorsIter(self.0)
    }

    /// The first member in Okta's order.
    pub fn first(&self) -> Option<Authenticator> {
        self.iter().next()
    }

    /// Members in Okta's order, as a list.
    pub fn to_vec(&self) -> Vec<Authenticator> {
        self.iter().collect()
    }

    pub(crate) fn insert(&mut self, a: Authenticator) {
        self.0 |= a.bit();
    }

    pub(crate) fn remove(&mut self, a: Authenticator) {
        self.0 &= !a.bit();
    }

    pub(crate) const fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub(crate) const fn or(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub(crate) const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// The members of an [`Authenticators`] set, in Okta's order.
#[derive(Clone, Debug)]
pub struct AuthenticatorsIter(u16);

impl Iterator for AuthenticatorsIter {
    type Item = Authenticator;

    fn next(&mut self) -> Option<Authenticator> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(Authenticator::ALL[i])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for AuthenticatorsIter {}

impl IntoIterator for Authenticators {
    type Item = Authenticator;
    type IntoIter = AuthenticatorsIter;

    fn into_iter(self) -> AuthenticatorsIter {
        self.iter()
    }
}

impl IntoIterator for &Authenticators {
    type Item = Authenticator;
    type IntoIter = AuthenticatorsIter;

    fn into_iter(self) -> AuthenticatorsIter {
        self.iter()
    }
}

impl FromIterator<Authenticator> for Authenticators {
    fn from_iter<I: IntoIterator<Item = Authenticator>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for a in iter {
            set.insert(a);
        }
        set
    }
}

impl std::fmt::Debug for Authenticators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Authenticators {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Authenticators {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Authenticator>::deserialize(d)?.into_iter().collect())
    }
}

/// A way to enroll and verify the phone authenticator.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum PhoneMethod {
    Sms,
    Voice,
}

impl PhoneMethod {
    /// The method as written in API calls.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
        }
    }

    /// Parses `sms` or `voice`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sms" => Some(Self::Sms),
            "voice" => Some(Self::Voice),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_follow_the_policy_keys() {
        for (i, a) in Authenticator::ALL.into_iter().enumerate() {
            assert_eq!(a.index(), i);
            assert_eq!(Authenticator::parse(a.as_str()), Some(a));
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.as_str())
            );
        }
        for (i, key) in AuthenticatorKey::ALL.into_iter().enumerate() {
            // The names are the policy keys' serde names, in one order.
            assert_eq!(key.index(), i);
            assert_eq!(
                serde_json::to_value(key).unwrap(),
                serde_json::json!(key.as_str())
            );
            let a = Authenticator::from(key);
            assert_eq!(a.as_str(), key.as_str());
            assert_eq!(a.policy_key(), Some(key));
            assert_eq!(
                serde_json::from_value::<Authenticator>(serde_json::json!(key.as_str())).unwrap(),
                a
            );
        }
        let unknown =
            serde_json::from_value::<Authenticator>(serde_json::json!("sms")).unwrap_err();
        assert!(unknown.to_string().contains("okta_password"), "{unknown}");
        assert_eq!(Authenticator::OktaPassword.policy_key(), None);
        for unknown in ["foo", "", "okta_passwore", "Okta_email", "duo ", "d"] {
            assert_eq!(Authenticator::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn sets_list_members_in_okta_order() {
        let set = Authenticators::of(&[
            Authenticator::Webauthn,
            Authenticator::OktaPassword,
            Authenticator::PhoneNumber,
        ]);
        assert_eq!(
            set.to_vec(),
            vec![
                Authenticator::OktaPassword,
                Authenticator::PhoneNumber,
                Authenticator::Webauthn
            ]
        );
        assert_eq!(set.len(), 3);
        assert_eq!(
            serde_json::to_value(set).unwrap(),
            serde_json::json!(["okta_password", "phone_number", "webauthn"])
        );
        let back: Authenticators = serde_json::from_value(serde_json::json!([
            "webauthn",
            "phone_number",
            "okta_password"
        ]))
        .unwrap();
        assert_eq!(back, set);
        assert_eq!(
            set.minus(Authenticators::of(&[Authenticator::OktaPassword]))
                .first(),
            Some(Authenticator::PhoneNumber)
        );
    }
}
