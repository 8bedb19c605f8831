//! Phone numbers: E.164 checking, masking for logs and events, and the
//! per-org allow-list of country calling codes. Pure.

use std::collections::BTreeMap;

/// A phone number in E.164 form: `+`, then 7 to 15 digits, the first not 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error(
        "phoneNumber must be in E.164 form: + then 7 to 15 digits, the first not 0, no spaces or punctuation (for example +14155550123)"
    )]
    NotE164,
}

impl PhoneNumber {
    pub fn parse(text: &str) -> Result<Self, PhoneError> {
        let digits = text.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        let ok = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(text.to_string()))
        } else {
            Err(PhoneError::NotE164)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with everything but the first and the last four digits
    /// hidden: `+14155550123` becomes `+1******0123`.
    pub fn masked(&self) -> String {
        let digits = &self.0[1..];
        let hidden = digits.len().saturating_sub(5);
        format!(
            "+{}{}{}",
            &digits[..1],
            "*".repeat(hidden),
            &digits[1 + hidden..]
        )
    }
}

/// Country calling codes allowed per org (`*` for every org not listed).
/// Orgs without an entry accept every number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountryAllowList {
    by_org: BTreeMap<String, Vec<String>>,
}

/// Why an allow-list setting could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--otp-allowed-country-codes: {0}; expected ORG=+CODE,+CODE;ORG2=+CODE (ORG may be * for every other org)"
)]
pub struct AllowListError(String);

impl std::str::FromStr for CountryAllowList {
    type Err = AllowListError;

    /// Reads `acme=+1,+44;globex=+33;*=+1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut by_org = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (org, codes) = entry
                .split_once('=')
                .ok_or_else(|| AllowListError(format!("\"{entry}\" has no ORG=")))?;
            let org = org.trim();
            if org.is_empty() {
                return Err(AllowListError(format!("\"{entry}\" names no org")));
            }
            let mut list = Vec::new();
            for code in codes.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let digits = code.strip_prefix('+').unwrap_or(code);
                if digits.is_empty()
                    || digits.len() > 3
                    || digits.starts_with('0')
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(AllowListError(format!(
                        "\"{code}\" is not a country calling code (+ and 1 to 3 digits)"
                    )));
                }
                list.push(format!("+{digits}"));
            }
            if list.is_empty() {
                return Err(AllowListError(format!("{org} lists no code")));
            }
            if by_org.insert(org.to_string(), list).is_some() {
                return Err(AllowListError(format!("{org} is listed twice")));
            }
        }
        Ok(Self { by_org })
    }
}

impl CountryAllowList {
    /// The codes allowed for `org`, or `None` when every number is.
    pub fn codes(&self, org: &str) -> Option<&[String]> {
        self.by_org
            .get(org)
            .or_else(|| self.by_org.get("*"))
            .map(Vec::as_slice)
    }

    /// Whether `org` may send to `phone`. Country calling codes form a
    /// prefix code (ITU-T E.164), so a prefix match is exact.
    pub fn allows(&self, org: &str, phone: &PhoneNumber) -> bool {
        self.codes(org)
            .is_none_or(|codes| codes.iter().any(|c| phone.as_str().starts_with(c.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_is_checked() {
        for ok in ["+14155550123", "+447700900123", "+3312345"] {
            assert!(PhoneNumber::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "14155550123",
            "+1 415 555 0123",
            "+1-415-555-0123",
            "+01234567",
            "+123456",
            "+1234567890123456",
            "+",
            "",
            "+1415555012a",
        ] {
            assert_eq!(PhoneNumber::parse(bad), Err(PhoneError::NotE164), "{bad}");
        }
    }

    #[test]
    fn masking_keeps_first_and_last_four_digits() {
        let cases = [
            ("+14155554567", "+1******4567"),
            ("+447700900123", "+4*******0123"),
            ("+1234567", "+1**4567"),
        ];
        for (number, masked) in cases {
            assert_eq!(PhoneNumber::parse(number).unwrap().masked(), masked);
        }
    }

    #[test]
    fn allow_list_by_org_with_default() {
        let list: CountryAllowList = "acme=+1,+44; globex=33; *=+49".parse().unwrap();
        let us = PhoneNumber::parse("+14155550123").unwrap();
        let uk = PhoneNumber::parse("+447700900123").unwrap();
        let fr = PhoneNumber::parse("+33612345678").unwrap();
        let de = PhoneNumber::parse("+4915112345678").unwrap();
        assert!(list.allows("acme", &us) && list.allows("acme", &uk));
        assert!(!list.allows("acme", &fr));
        assert!(list.allows("globex", &fr) && !list.allows("globex", &us));
        assert!(list.allows("other", &de) && !list.allows("other", &us));
        assert_eq!(list.codes("globex"), Some(&["+33".to_string()][..]));
        let open = CountryAllowList::default();
        assert!(open.allows("acme", &fr));
    }

    #[test]
    fn allow_list_errors_name_the_problem() {
        for (bad, needle) in [
            ("acme", "no ORG="),
            ("=+1", "names no org"),
            ("acme=+1x", "not a country calling code"),
            ("acme=+1234", "not a country calling code"),
            ("acme=", "lists no code"),
            ("acme=+1;acme=+44", "listed twice"),
        ] {
            let e = bad.parse::<CountryAllowList>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert_eq!(
            "".parse::<CountryAllowList>().unwrap(),
            CountryAllowList::default()
        );
    }
}
